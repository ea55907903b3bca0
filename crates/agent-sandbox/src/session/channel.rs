//! The host side of init's exec channel (the frames are `agent_sandbox_wire`'s,
//! shared with init).

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::oneshot;

use agent_sandbox_wire::{frame, payload_len, tag, Request, MAX_FRAME_TO_HOST};

use crate::command::Ended;
use crate::Error;

fn io_err(e: std::io::Error) -> Error {
    Error::engine("talk to the sandbox's exec channel", e.to_string())
}

/// Runs `argv` through the channel at `socket`, feeding `stdin`, calling
/// `on_output(is_stderr, bytes)` for every chunk, sending each signal that
/// arrives on `signals` to the command's process group, and killing the
/// process group at `deadline`.
pub(crate) async fn exec(
    stream: UnixStream,
    request: &Request,
    stdin: Option<&[u8]>,
    deadline: Option<Instant>,
    signals: Option<tokio::sync::mpsc::UnboundedReceiver<i32>>,
    mut on_output: impl FnMut(bool, &[u8]),
) -> Result<Ended, Error> {
    let (mut r, mut w) = stream.into_split();
    let mut out = frame(tag::REQUEST, &request.encode());
    if let Some(data) = stdin {
        for chunk in data.chunks(1 << 20) {
            out.extend_from_slice(&frame(tag::STDIN, chunk));
        }
    }
    out.extend_from_slice(&frame(tag::STDIN, &[]));
    // Stdin is written from its own task so a command that prints before
    // reading cannot deadlock against us.
    let writer = AbortOnDrop(tokio::spawn(async move {
        let _ = w.write_all(&out).await;
        if let Some(mut signals) = signals {
            while let Some(s) = signals.recv().await {
                if w.write_all(&frame(tag::SIGNAL, &s.to_be_bytes()))
                    .await
                    .is_err()
                {
                    break;
                }
            }
        }
        // Keep the write half open until the exec ends: closing it would
        // tell init the host went away.
        std::future::pending::<()>().await;
        drop(w);
    }));
    let mut head = [0u8; 5];
    let mut oom_killed = false;
    loop {
        let read = async {
            r.read_exact(&mut head).await?;
            let mut payload = vec![0u8; payload_len(&head, MAX_FRAME_TO_HOST)?];
            r.read_exact(&mut payload).await?;
            Ok::<_, std::io::Error>((head[0], payload))
        };
        let next = match deadline {
            Some(d) => match tokio::time::timeout_at(d.into(), read).await {
                Ok(r) => r,
                Err(_) => {
                    // Hanging up makes init SIGKILL the command's process group.
                    drop(writer);
                    return Ok(Ended {
                        code: 137,
                        timed_out: true,
                        oom_killed: false,
                    });
                }
            },
            None => read.await,
        };
        let (kind, payload) = next.map_err(|_| Error::SessionClosed)?;
        match kind {
            tag::STDOUT => on_output(false, &payload),
            tag::STDERR | tag::FAILURE => on_output(true, &payload),
            tag::OOM => oom_killed = true,
            tag::EXIT if payload.len() == 4 => {
                drop(writer);
                let code = i32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
                return Ok(Ended {
                    code: i64::from(code),
                    timed_out: false,
                    oom_killed,
                });
            }
            _ => {}
        }
    }
}

/// Asks init to connect to `port` on the sandbox's loopback over `stream`
/// (a fresh exec connection); on success the stream carries that TCP
/// connection's bytes. `Err` says why not (nothing listening, ...).
pub(crate) async fn forward(mut stream: UnixStream, port: u16) -> Result<UnixStream, String> {
    stream
        .write_all(&frame(tag::FORWARD, &port.to_be_bytes()))
        .await
        .map_err(|e| e.to_string())?;
    match read_small_frame(&mut stream).await {
        Ok((tag::FORWARD, _)) => Ok(stream),
        Ok((tag::FAILURE, text)) => Err(String::from_utf8_lossy(&text).into_owned()),
        Ok(_) => Err("the sandbox's init does not forward ports (an older init?)".into()),
        Err(e) => Err(format!("the sandbox closed the connection: {e}")),
    }
}

/// Aborts the task when dropped: if the exec's future is dropped (a caller's
/// cancellation, Ctrl-C in Python), the write half closes with it, and init
/// kills the command.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How long to wait for a new session's init to open its exec socket.
pub(crate) const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Connections to the exec socket that may be between accept and their
/// first frame at once (init needs one per exec starting; more are a flood).
const MAX_HANDSHAKES: usize = 64;

/// The host end of a session's exec channel. The host listens (in the
/// read-only directory it shares with the container, beside the proxy
/// socket); init connects once for control, and once more per exec when
/// asked. So the container never gets a writable host directory (no host
/// disk to fill, no symlink for the host to follow).
///
/// Control frames: init says `C` once; the host sends `N` + u64 id per exec;
/// init connects again and says `A` + the same id, then that connection
/// carries the exec (see `exec`). `T` from the host makes init kill every
/// process and exit; the control connection's EOF confirms it.
pub(crate) struct ExecHub {
    control: tokio::sync::Mutex<Option<OwnedWriteHalf>>,
    /// Becomes true when init's control connection closes (init is gone).
    init_gone: tokio::sync::watch::Sender<bool>,
    pending: Mutex<HashMap<u64, oneshot::Sender<UnixStream>>>,
    next: AtomicU64,
    /// Exec ids are keyed hashes of a counter: a process in the sandbox can
    /// connect to the socket too, and must not be able to guess the id of
    /// another exec's connection and take it.
    id_key: std::collections::hash_map::RandomState,
    accept: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Init's capture ports: the latest list, and whether init has it yet.
    ports: Mutex<(Vec<u16>, bool)>,
    rt: tokio::runtime::Handle,
}

async fn read_small_frame(s: &mut UnixStream) -> std::io::Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 5];
    s.read_exact(&mut head).await?;
    let mut payload = vec![0u8; payload_len(&head, 64)?];
    s.read_exact(&mut payload).await?;
    Ok((head[0], payload))
}

impl ExecHub {
    /// Binds the socket and starts accepting. The future resolves when
    /// init's control connection has arrived.
    /// `ports`: the capture ports init starts with.
    pub(crate) fn listen(
        path: &Path,
        ports: Vec<u16>,
    ) -> Result<(Arc<ExecHub>, oneshot::Receiver<()>), Error> {
        let listener = UnixListener::bind(path).map_err(io_err)?;
        let hub = Arc::new(ExecHub {
            ports: Mutex::new((ports, true)),
            rt: tokio::runtime::Handle::current(),
            control: tokio::sync::Mutex::new(None),
            init_gone: tokio::sync::watch::channel(false).0,
            pending: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
            id_key: std::collections::hash_map::RandomState::new(),
            accept: Mutex::new(None),
        });
        let (ready_tx, ready_rx) = oneshot::channel();
        let weak = Arc::downgrade(&hub);
        let task = tokio::spawn(async move {
            let ready_tx = Arc::new(Mutex::new(Some(ready_tx)));
            // Handshakes in flight: each in its own task (an idle connection
            // from inside cannot hold up the others), at most this many.
            let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
            loop {
                let mut conn = match listener.accept().await {
                    Ok((c, _)) => c,
                    Err(_) => {
                        // EMFILE and the like: back off and go on; an exec
                        // hub that stopped accepting would fail the session
                        // for good.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if weak.strong_count() == 0 {
                    return;
                }
                // Past the bound, a connection gets only a moment to say
                // its frame: init writes it as it connects, so init's
                // connections pass, and a flood of idle ones is shed fast.
                let permit = handshakes.clone().try_acquire_owned().ok();
                let patience = if permit.is_some() {
                    Duration::from_secs(1)
                } else {
                    Duration::from_millis(50)
                };
                let (weak, ready_tx) = (weak.clone(), ready_tx.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    let Ok(Ok((kind, payload))) =
                        tokio::time::timeout(patience, read_small_frame(&mut conn)).await
                    else {
                        return;
                    };
                    let Some(hub) = weak.upgrade() else { return };
                    hub.handshake(kind, payload, conn, &ready_tx).await;
                });
            }
        });
        if let Ok(mut a) = hub.accept.lock() {
            *a = Some(task);
        }
        Ok((hub, ready_rx))
    }

    /// What a new connection said first: `C` (init's control connection,
    /// the first one only) or `A id` (the connection for a pending exec).
    async fn handshake(
        &self,
        kind: u8,
        payload: Vec<u8>,
        conn: UnixStream,
        ready_tx: &Mutex<Option<oneshot::Sender<()>>>,
    ) {
        match (kind, payload.len()) {
            (tag::CONNECTED, 0) => {
                let mut control = self.control.lock().await;
                if control.is_none() {
                    let (r, w) = conn.into_split();
                    // The read half is kept only to notice init going away.
                    let gone = self.init_gone.clone();
                    tokio::spawn(async move {
                        let mut r = r;
                        let mut b = [0u8; 64];
                        while matches!(r.read(&mut b).await, Ok(n) if n > 0) {}
                        gone.send_replace(true);
                    });
                    *control = Some(w);
                    if let Some(tx) = ready_tx.lock().ok().and_then(|mut t| t.take()) {
                        let _ = tx.send(());
                    }
                }
            }
            (tag::ACCEPT, 8) => {
                let id = u64::from_be_bytes(payload.try_into().unwrap_or_default());
                let waiter = self.pending.lock().ok().and_then(|mut p| p.remove(&id));
                if let Some(tx) = waiter {
                    let _ = tx.send(conn);
                }
            }
            _ => {}
        }
    }

    /// Tells init the capture ports of a changed policy (at once, in the
    /// background; an exec opened after this call finds them in place,
    /// since control frames are read in order).
    pub(crate) fn set_ports(self: &Arc<Self>, ports: Vec<u16>) {
        match self.ports.lock() {
            Ok(mut p) if p.0 != ports => *p = (ports, false),
            _ => return,
        }
        let hub = self.clone();
        self.rt.spawn(async move {
            let mut control = hub.control.lock().await;
            hub.flush_ports(&mut control).await;
        });
    }

    async fn flush_ports(&self, control: &mut Option<OwnedWriteHalf>) {
        let ports = match self.ports.lock() {
            Ok(mut p) if !p.1 => {
                p.1 = true;
                p.0.clone()
            }
            _ => return,
        };
        if let Some(w) = control.as_mut() {
            let _ = w
                .write_all(&frame(
                    tag::PORTS,
                    &agent_sandbox_wire::encode_ports(&ports),
                ))
                .await;
        }
    }

    /// Asks init for a new exec connection.
    pub(crate) async fn open(&self) -> Result<UnixStream, Error> {
        let id = {
            use std::hash::BuildHasher;
            self.id_key
                .hash_one(self.next.fetch_add(1, Ordering::Relaxed))
        };
        let (tx, rx) = oneshot::channel();
        if let Ok(mut p) = self.pending.lock() {
            p.insert(id, tx);
        }
        let sent = {
            let mut control = self.control.lock().await;
            self.flush_ports(&mut control).await;
            match control.as_mut() {
                Some(w) => w
                    .write_all(&frame(tag::NEW, &id.to_be_bytes()))
                    .await
                    .is_ok(),
                None => false,
            }
        };
        let got = if sent {
            tokio::time::timeout(READY_TIMEOUT, rx)
                .await
                .ok()
                .and_then(Result::ok)
        } else {
            None
        };
        if let Ok(mut p) = self.pending.lock() {
            p.remove(&id);
        }
        got.ok_or(Error::SessionClosed)
    }

    /// Whether init's control connection is still open.
    pub(crate) fn init_alive(&self) -> bool {
        !*self.init_gone.borrow()
    }

    /// Asks init to kill every process in the sandbox and exit, and waits
    /// (up to `limit`) for its control connection to close. `true` means
    /// init is gone, so nothing in the container runs any more.
    pub(crate) async fn end_sandbox(&self, limit: Duration) -> bool {
        let mut gone = self.init_gone.subscribe();
        let sent = {
            let mut control = self.control.lock().await;
            match control.as_mut() {
                Some(w) => w.write_all(&frame(tag::TERMINATE, &[])).await.is_ok(),
                None => false,
            }
        };
        sent && tokio::time::timeout(limit, gone.wait_for(|g| *g))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Stops accepting (the socket file goes with the sandbox directory).
    pub(crate) fn stop(&self) {
        if let Some(task) = self.accept.lock().ok().and_then(|mut a| a.take()) {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn send(s: &mut UnixStream, t: u8, payload: &[u8]) {
        s.write_all(&frame(t, payload)).await.unwrap();
    }

    /// A process in the sandbox can connect to the exec socket too. It must
    /// not be able to claim an exec's connection by guessing its id, even
    /// when it answers before init does.
    #[tokio::test]
    async fn a_guessed_exec_id_does_not_take_the_connection() {
        let dir = std::env::temp_dir().join(format!("as-hub-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("exec.sock");
        let (hub, ready) = ExecHub::listen(&path, vec![]).unwrap();
        let mut control = UnixStream::connect(&path).await.unwrap();
        send(&mut control, tag::CONNECTED, &[]).await;
        ready.await.unwrap();
        let opening = tokio::spawn({
            let hub = hub.clone();
            async move { hub.open().await }
        });
        // Init learns the id from the control connection...
        let (t, id) = read_small_frame(&mut control).await.unwrap();
        assert_eq!(t, tag::NEW);
        // ...but the attacker races it with every small id first.
        let mut attackers = Vec::new();
        for guess in 0u64..2000 {
            let mut a = UnixStream::connect(&path).await.unwrap();
            send(&mut a, tag::ACCEPT, &guess.to_be_bytes()).await;
            attackers.push(a);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut real = UnixStream::connect(&path).await.unwrap();
        send(&mut real, tag::ACCEPT, &id).await;
        let mut got = opening.await.unwrap().unwrap();
        // The connection handed to the exec is the one that said the real id.
        real.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(5), got.read_exact(&mut buf))
            .await
            .expect("the exec got an attacker's connection")
            .unwrap();
        assert_eq!(&buf, b"ping");
        hub.stop();
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A process inside can say a `W` frame (forward a port) on the exec
    /// socket too, first or after guessing an exec id. The hub takes
    /// nothing but `C` and `A`: the connection is dropped, nothing is
    /// forwarded, and execs go on.
    #[tokio::test]
    async fn a_forward_frame_from_inside_is_dropped() {
        let dir = std::env::temp_dir().join(format!("as-hub-w-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("exec.sock");
        let (hub, ready) = ExecHub::listen(&path, vec![]).unwrap();
        let mut control = UnixStream::connect(&path).await.unwrap();
        send(&mut control, tag::CONNECTED, &[]).await;
        ready.await.unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut attacker = UnixStream::connect(&path).await.unwrap();
        send(&mut attacker, tag::FORWARD, &port.to_be_bytes()).await;
        let mut rest = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(5), attacker.read_to_end(&mut rest))
            .await
            .expect("the hub closes a connection that said W")
            .unwrap_or(0);
        assert_eq!(n, 0, "nothing answered: {rest:?}");
        // A second control connection saying W after C is not init's.
        let mut second = UnixStream::connect(&path).await.unwrap();
        send(&mut second, tag::CONNECTED, &[]).await;
        send(&mut second, tag::FORWARD, &port.to_be_bytes()).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(listener.accept().is_err(), "nothing dialled the port");
        // The real control connection still opens execs.
        let opening = tokio::spawn({
            let hub = hub.clone();
            async move { hub.open().await }
        });
        let (t, id) = read_small_frame(&mut control).await.unwrap();
        assert_eq!(t, tag::NEW);
        let mut real = UnixStream::connect(&path).await.unwrap();
        send(&mut real, tag::ACCEPT, &id).await;
        assert!(opening.await.unwrap().is_ok());
        hub.stop();
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Finding: the hub's accept loop ended at its first error, so one
    /// moment of descriptor exhaustion (`EMFILE`, another sandbox holding
    /// connections) failed the session for good. Run in a child process of
    /// this test binary, which uses up every descriptor it has.
    #[test]
    fn the_accept_loop_survives_running_out_of_descriptors() {
        const CHILD: &str = "AGENT_SANDBOX_EMFILE_CHILD";
        if std::env::var_os(CHILD).is_none() {
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "session::channel::tests::the_accept_loop_survives_running_out_of_descriptors",
                    "--nocapture",
                ])
                .env(CHILD, "1")
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{text}");
            // Control: the child really ran the scenario and met EMFILE.
            assert!(
                text.contains("accept failed with EMFILE, then served"),
                "{text}"
            );
            return;
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let dir = std::env::temp_dir().join(format!("as-hub-emfile-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join("exec.sock");
            let (hub, ready) = ExecHub::listen(&path, vec![]).unwrap();
            // Use up every descriptor but one, which the client takes: the
            // hub's accept then has none for the connection.
            let mut hoard = Vec::new();
            while let Ok(f) = std::fs::File::open("/dev/null") {
                hoard.push(f);
            }
            hoard.pop();
            let std_client = std::os::unix::net::UnixStream::connect(&path).unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
            assert!(
                std::fs::File::open("/dev/null").is_err(),
                "control: no descriptor left while the hub accepts"
            );
            drop(hoard);
            drop(std_client);
            // The same hub serves the next connection.
            let mut control = UnixStream::connect(&path).await.unwrap();
            send(&mut control, tag::CONNECTED, &[]).await;
            tokio::time::timeout(Duration::from_secs(5), ready)
                .await
                .expect("the hub stopped accepting after EMFILE")
                .unwrap();
            println!("accept failed with EMFILE, then served");
            hub.stop();
            let _ = std::fs::remove_dir_all(&dir);
        });
    }
}
