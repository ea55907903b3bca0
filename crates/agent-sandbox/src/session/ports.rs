//! Exposed ports: a listener on the host's loopback whose connections init
//! carries to a port inside the sandbox, over the exec channel. The
//! sandbox still has no network: only the host opens these connections.

use std::net::SocketAddr;

use tokio::net::TcpListener;

use crate::Error;

/// Connections one exposed port carries at once; more are reset.
const MAX_FORWARDED: usize = 64;

impl super::Session {
    /// Opens a listener on the host's `127.0.0.1` (port `host_port`, or a
    /// free one) that forwards each connection to `port` on the sandbox's
    /// loopback (a dev server started with [`spawn`](super::Session::spawn)).
    /// Returns the host address. A connection made while nothing listens
    /// inside (after init's retries for a server still starting, about
    /// 1 s) is reset. Exposing a port again returns the same
    /// address; the listener closes with [`unexpose`](super::Session::unexpose)
    /// or the session.
    ///
    /// # Errors
    /// [`Error::SessionClosed`], [`Error::InvalidArgument`] (port 0),
    /// [`Error::Bind`] (the host port is taken).
    pub async fn expose(&self, port: u16, host_port: Option<u16>) -> Result<SocketAddr, Error> {
        let _busy = self.busy()?;
        if port == 0 {
            return Err(Error::invalid("port", "0 is not a port to expose"));
        }
        if let Some((addr, _)) = self.exposed_entry(port) {
            return Ok(addr);
        }
        let want = SocketAddr::from(([127, 0, 0, 1], host_port.unwrap_or(0)));
        let listener = TcpListener::bind(want)
            .await
            .map_err(|source| Error::Bind {
                addr: want.to_string(),
                source,
            })?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::io("read the address of", want.to_string(), e))?;
        let hub = self.inner.hub.clone();
        // Anything on the host (a browser tab too) can connect: a bound on
        // connections at once keeps the sandbox's threads and pids for it.
        let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_FORWARDED));
        let task = tokio::spawn(async move {
            // The connections live in this task's set: aborting the task
            // (unexpose, close) ends them too.
            let mut open = tokio::task::JoinSet::new();
            loop {
                while open.try_join_next().is_some() {}
                let Ok((mut tcp, _)) = listener.accept().await else {
                    // Out of descriptors: try again shortly.
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    continue;
                };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    let _ = tcp.set_zero_linger();
                    continue;
                };
                let hub = hub.clone();
                open.spawn(async move {
                    let _slot = slot;
                    let inside = match hub.open().await {
                        Ok(stream) => super::channel::forward(stream, port).await.ok(),
                        Err(_) => None,
                    };
                    match inside {
                        Some(mut inside) => {
                            let _ = tokio::io::copy_bidirectional(&mut tcp, &mut inside).await;
                        }
                        // Nothing listens inside: a reset, the nearest thing
                        // to "connection refused" after an accept (a plain
                        // close can race a client's first write: Node's
                        // fetch then waits forever).
                        None => {
                            let _ = tcp.set_zero_linger();
                        }
                    }
                });
            }
        });
        let mut map = self
            .inner
            .exposed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if self.is_closed() {
            task.abort();
            return Err(Error::SessionClosed);
        }
        if let Some((first, _)) = map.get(&port) {
            // Exposed twice at once: keep the first.
            task.abort();
            return Ok(*first);
        }
        map.insert(port, (addr, task.abort_handle()));
        Ok(addr)
    }

    fn exposed_entry(&self, port: u16) -> Option<(SocketAddr, tokio::task::AbortHandle)> {
        self.inner.exposed.lock().ok()?.get(&port).cloned()
    }

    /// Closes the host listener of an exposed `port` and the connections
    /// it carries. Whether it was exposed.
    pub fn unexpose(&self, port: u16) -> bool {
        let entry = self
            .inner
            .exposed
            .lock()
            .ok()
            .and_then(|mut m| m.remove(&port));
        entry.map(|(_, task)| task.abort()).is_some()
    }

    /// The exposed ports: `(port inside, host address)`, by port.
    #[must_use]
    pub fn exposed(&self) -> Vec<(u16, SocketAddr)> {
        let mut list: Vec<_> = self
            .inner
            .exposed
            .lock()
            .map(|m| m.iter().map(|(p, (a, _))| (*p, *a)).collect())
            .unwrap_or_default();
        list.sort_unstable();
        list
    }
}
