//! A counting resolver, a recording dialer and an in-process proxy built on
//! them, so every proxy test can prove what was (and was not) looked up or
//! dialled; and raw HTTP/1.1 reading helpers.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_sandbox::ask::{ask_fn, AskAnswer, AskRequest};
use agent_sandbox::intercept::Interceptor;
use agent_sandbox::policy::Policy;
use agent_sandbox::proxy::{
    AuditEvent, BoxFuture, Dialer, Limits, Listen, Proxy, ProxyBuilder, ProxyHandle, Resolver,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A resolver with fixed answers that counts lookups. A name with several
/// answer sets returns them in turn (for rebinding tests).
#[derive(Clone, Default)]
pub struct CountingResolver {
    pub answers: Arc<Mutex<HashMap<String, Vec<Vec<IpAddr>>>>>,
    pub lookups: Arc<Mutex<Vec<String>>>,
    pub hang: bool,
}

impl CountingResolver {
    pub fn answer(self, name: &str, addrs: &[&str]) -> Self {
        let addrs = addrs.iter().map(|a| a.parse().unwrap()).collect();
        self.answers
            .lock()
            .unwrap()
            .entry(name.to_owned())
            .or_default()
            .push(addrs);
        self
    }

    pub fn lookups(&self) -> usize {
        self.lookups.lock().unwrap().len()
    }
}

impl Resolver for CountingResolver {
    fn resolve<'a>(&'a self, name: &'a str, _port: u16) -> BoxFuture<'a, io::Result<Vec<IpAddr>>> {
        Box::pin(async move {
            self.lookups.lock().unwrap().push(name.to_owned());
            if self.hang {
                std::future::pending::<()>().await;
            }
            let mut answers = self.answers.lock().unwrap();
            match answers.get_mut(name) {
                Some(list) if list.len() > 1 => Ok(list.remove(0)),
                Some(list) => Ok(list[0].clone()),
                None => Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    "no such name (test resolver)",
                )),
            }
        })
    }
}

/// Records every dial and refuses to dial anything but loopback, so a bug
/// can never send test traffic off this machine.
#[derive(Clone, Default)]
pub struct RecordingDialer {
    pub dialled: Arc<Mutex<Vec<SocketAddr>>>,
}

impl RecordingDialer {
    pub fn dialled(&self) -> Vec<SocketAddr> {
        self.dialled.lock().unwrap().clone()
    }
}

impl Dialer for RecordingDialer {
    fn dial(&self, addr: SocketAddr) -> BoxFuture<'_, io::Result<TcpStream>> {
        Box::pin(async move {
            self.dialled.lock().unwrap().push(addr);
            if !addr.ip().is_loopback() {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    "test dialer only dials loopback",
                ));
            }
            TcpStream::connect(addr).await
        })
    }
}

/// A proxy under test with its seams and collected events.
pub struct TestProxy {
    pub handle: ProxyHandle,
    pub addr: SocketAddr,
    pub resolver: CountingResolver,
    pub dialer: RecordingDialer,
    pub events: Arc<Mutex<Vec<AuditEvent>>>,
}

impl TestProxy {
    pub async fn start(policy: Policy, resolver: CountingResolver) -> TestProxy {
        Self::start_with(policy, resolver, Limits::default()).await
    }

    pub async fn start_with(
        policy: Policy,
        resolver: CountingResolver,
        limits: Limits,
    ) -> TestProxy {
        Self::start_full(policy, resolver, limits, |b| b).await
    }

    /// A proxy that asks `f` about misses, waiting at most `timeout`.
    pub async fn asking<F, Fut>(policy: Policy, timeout: Duration, f: F) -> TestProxy
    where
        F: Fn(AskRequest) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = AskAnswer> + Send + 'static,
    {
        Self::start_full(
            policy,
            CountingResolver::default(),
            Limits::default(),
            move |b| b.on_ask(ask_fn(f), timeout),
        )
        .await
    }

    /// A proxy that intercepts what `icp` wants.
    pub async fn intercepting(policy: Policy, icp: Arc<Interceptor>) -> TestProxy {
        Self::start_full(
            policy,
            CountingResolver::default(),
            Limits::default(),
            |b| b.intercept(icp),
        )
        .await
    }

    pub async fn start_full(
        policy: Policy,
        resolver: CountingResolver,
        limits: Limits,
        configure: impl FnOnce(ProxyBuilder) -> ProxyBuilder,
    ) -> TestProxy {
        let dialer = RecordingDialer::default();
        let events = Arc::new(Mutex::new(Vec::new()));
        let ev = events.clone();
        let handle = configure(Proxy::builder(policy))
            .resolver(resolver.clone())
            .dialer(dialer.clone())
            .limits(limits)
            .sandbox_id("test-sandbox")
            .on_event(move |e| ev.lock().unwrap().push(e.clone()))
            .start(&Listen::parse("127.0.0.1:0").unwrap())
            .await
            .unwrap();
        let addr = handle.local_addr().tcp().unwrap();
        TestProxy {
            handle,
            addr,
            resolver,
            dialer,
            events,
        }
    }

    pub fn events(&self) -> Vec<AuditEvent> {
        self.events.lock().unwrap().clone()
    }

    /// Waits (bounded) until `n` events arrived; allowed events arrive when
    /// their connection ends.
    pub async fn wait_events(&self, n: usize) -> Vec<AuditEvent> {
        for _ in 0..200 {
            if self.events.lock().unwrap().len() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.events()
    }

    pub async fn connect(&self) -> TcpStream {
        TcpStream::connect(self.addr).await.unwrap()
    }

    /// Opens a CONNECT tunnel to `authority` and asserts the 200.
    pub async fn tunnel(&self, authority: &str) -> TcpStream {
        let mut s = self.connect().await;
        let req = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let head = read_head(&mut s).await;
        assert_eq!(status_of(&head), 200, "{head}");
        s
    }

    /// Sends raw bytes and reads until the proxy closes (bounded by 5 s).
    pub async fn exchange(&self, raw: &[u8]) -> String {
        let mut s = self.connect().await;
        s.write_all(raw).await.unwrap();
        read_to_close(&mut s).await
    }
}

/// Reads until EOF; panics if the peer keeps the connection open for 5 s.
pub async fn read_to_close(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("the proxy did not close the connection")
        .ok();
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads one response head (up to the blank line).
pub async fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut byte))
            .await
            .expect("head timed out")
            .unwrap();
        assert!(
            n > 0,
            "connection closed mid-head: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

pub fn status_of(resp: &str) -> u16 {
    resp.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

pub fn header_of<'a>(resp: &'a str, name: &str) -> Option<&'a str> {
    resp.split("\r\n\r\n").next()?.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}
