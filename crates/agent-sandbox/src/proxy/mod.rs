//! The allowlist proxy: HTTP/1.1 forwarding of absolute-URI requests and
//! `CONNECT` tunnels, each destination checked against a [`Policy`].
//!
//! For every request: parse strictly and canonicalise once; check the name
//! before any lookup; resolve once through the [`Resolver`]; check every
//! address; dial a checked address through the [`Dialer`]. Any refusal is
//! answered (403 for policy, 400 for malformed, 502/504 for upstream
//! failures, 503 over the connection cap) with an `X-Agent-Sandbox-Denied`
//! header naming the rule or reason, and the connection is closed.

mod connect;
mod event;
mod forward;
mod intercept;
mod listen;
mod resolve;

pub use event::{AuditEvent, EventSink, Verdict, Via};
pub use listen::{Listen, ListenAddr};
pub use resolve::{BoxFuture, Dialer, Resolver, SystemResolver, TcpDialer};

use std::collections::HashSet;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONNECTION, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{watch, Semaphore};

use crate::ask::{AskFn, AskRequest, Asker, Outcome};
use crate::intercept::Interceptor;
use crate::policy::{Denial, Host, HttpDenial, Policy, PolicyBuilder, RuleError};
use crate::Error;
use event::EventGuard;

/// The header that names why a request was refused.
pub const DENIED_HEADER: &str = "x-agent-sandbox-denied";

type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// Bounds on what one proxy accepts. Every field has a default.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Limits {
    /// Largest request head (request line plus headers). Default 16 KiB
    /// (hyper's floor is 8 KiB).
    pub max_header_bytes: usize,
    /// Time allowed to send a complete request head. Default 10 s.
    pub header_read_timeout: Duration,
    /// Time allowed for resolving plus connecting upstream. Default 10 s.
    pub connect_timeout: Duration,
    /// A tunnel or forwarded exchange with no bytes either way for this long
    /// is closed. Default 300 s.
    pub idle_timeout: Duration,
    /// Connections served at once; more get 503. Default 1024 (a sandbox
    /// also caps it at a thirty-second of the process's open-files limit).
    pub max_connections: usize,
    /// New connections accepted per second, with a burst of as many; past
    /// it the proxy stops accepting for a moment (clients wait in the
    /// listen queue), so a sandbox that opens connections in a loop cannot
    /// make the host spend without bound on refusals and their events.
    /// Default 200.
    pub new_connections_per_second: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: 16 * 1024,
            header_read_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            max_connections: 1024,
            new_connections_per_second: 200,
        }
    }
}

/// Configures a proxy. Defaults: the system resolver, plain TCP, no event
/// sink, [`Limits::default`], no sandbox id.
#[must_use]
pub struct ProxyBuilder {
    policy: Policy,
    resolver: Arc<dyn Resolver>,
    dialer: Arc<dyn Dialer>,
    sink: Option<EventSink>,
    limits: Limits,
    sandbox_id: Option<String>,
    host_addrs: Option<HashSet<IpAddr>>,
    intercept: Option<Arc<Interceptor>>,
    asker: Option<Arc<Asker>>,
}

/// The allowlist proxy. Start one with [`Proxy::builder`].
#[derive(Debug)]
pub struct Proxy;

impl Proxy {
    /// A builder for a proxy enforcing `policy`.
    pub fn builder(policy: Policy) -> ProxyBuilder {
        ProxyBuilder {
            policy,
            resolver: Arc::new(SystemResolver),
            dialer: Arc::new(TcpDialer),
            sink: None,
            limits: Limits::default(),
            sandbox_id: None,
            host_addrs: None,
            intercept: None,
            asker: None,
        }
    }
}

impl ProxyBuilder {
    /// Replaces the resolver (tests count lookups through this seam).
    pub fn resolver(mut self, r: impl Resolver) -> Self {
        self.resolver = Arc::new(r);
        self
    }

    /// Replaces the dialer.
    pub fn dialer(mut self, d: impl Dialer) -> Self {
        self.dialer = Arc::new(d);
        self
    }

    /// Calls `f` for every audit event. It runs on the proxy's tasks: keep it quick.
    pub fn on_event(mut self, f: impl Fn(&AuditEvent) + Send + Sync + 'static) -> Self {
        self.sink = Some(Arc::new(f));
        self
    }

    /// Sets the limits.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Tags every event with this sandbox id.
    pub fn sandbox_id(mut self, id: impl Into<String>) -> Self {
        self.sandbox_id = Some(id.into());
        self
    }

    /// Overrides the set of the host's own addresses, which are refused
    /// unless a CIDR rule allows them. Default: read from the interfaces at start.
    pub fn host_addrs(mut self, addrs: HashSet<IpAddr>) -> Self {
        self.host_addrs = Some(addrs);
        self
    }

    /// Intercepts TLS for the hosts `i` wants (a secret or an HTTP rule
    /// names them): see [`Interceptor`]. Without it, HTTP rules still apply
    /// to plain-HTTP requests, and a CONNECT to a host they name is refused
    /// (a tunnel would let every request through unread).
    pub fn intercept(mut self, i: Arc<Interceptor>) -> Self {
        self.intercept = Some(i);
        self
    }

    /// Asks `f` about requests that match no rule, waiting at most
    /// `timeout` for its answer (see [`crate::ask`]).
    pub fn on_ask(mut self, f: AskFn, timeout: Duration) -> Self {
        self.asker = Some(Arc::new(Asker::new(f, timeout)));
        self
    }

    /// Binds the listener and starts serving in the background.
    ///
    /// # Errors
    /// [`Error::Bind`] if the address cannot be bound (busy port, missing
    /// directory), [`Error::SocketPathInUse`] if a unix path exists and is
    /// not a socket.
    pub async fn start(self, listen: &Listen) -> Result<ProxyHandle, Error> {
        let listener = listen.bind().await?;
        let local_addr = listener.local_addr().map_err(|source| Error::Bind {
            addr: format!("{listen:?}"),
            source,
        })?;
        let host_addrs = self.host_addrs.unwrap_or_else(own_addrs);
        let (tx, rx) = watch::channel(false);
        let policy = Arc::new(watch::Sender::new(Arc::new(self.policy)));
        let live = Arc::new(());
        let shared = Arc::new(Shared {
            policy: policy.clone(),
            resolver: self.resolver,
            dialer: self.dialer,
            sink: self.sink,
            sem: Arc::new(Semaphore::new(self.limits.max_connections)),
            limits: self.limits,
            sandbox_id: self.sandbox_id,
            host_addrs,
            shutdown: rx,
            live: live.clone(),
            intercept: self.intercept,
            asker: self.asker,
        });
        let task = tokio::spawn(accept_loop(listener, shared));
        Ok(ProxyHandle {
            local_addr,
            shutdown: tx,
            task: Some(task),
            policy,
            live,
        })
    }
}

/// A running proxy. Dropping it stops the proxy.
#[derive(Debug)]
pub struct ProxyHandle {
    local_addr: ListenAddr,
    shutdown: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
    policy: Arc<watch::Sender<Arc<Policy>>>,
    /// Held by every connection and tunnel (through `Shared` or a clone):
    /// shutdown waits until this is the last one, so every event is out.
    live: Arc<()>,
}

impl ProxyHandle {
    /// Where the proxy listens (the real port when asked for port 0).
    #[must_use]
    pub fn local_addr(&self) -> &ListenAddr {
        &self.local_addr
    }

    /// Replaces the policy. New requests are decided by it; connections and
    /// tunnels already open are not cut.
    pub fn set_policy(&self, policy: Policy) {
        self.policy.send_replace(Arc::new(policy));
    }

    /// Replaces the policy with what `f` makes of the one in force, as one
    /// step (a rule an ask adds meanwhile is not lost).
    ///
    /// # Errors
    /// `f`'s error; the policy is then unchanged.
    pub fn update_policy<E>(&self, f: impl FnOnce(&Policy) -> Result<Policy, E>) -> Result<(), E> {
        update(&self.policy, f)
    }

    /// The policy in force.
    #[must_use]
    pub fn policy(&self) -> Arc<Policy> {
        self.policy.borrow().clone()
    }

    /// Sees every change of the policy (an ask's rule included).
    #[must_use]
    pub fn watch_policy(&self) -> watch::Receiver<Arc<Policy>> {
        self.policy.subscribe()
    }

    /// Stops accepting, closes open connections and tunnels, and removes a
    /// unix socket file.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        // Open connections and tunnels close on the same signal; wait (up
        // to 5 s) until they have, so each has delivered its event.
        for _ in 0..1000 {
            if Arc::strong_count(&self.live) == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.local_addr.cleanup();
    }
}

impl Drop for ProxyHandle {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        if self.task.is_some() {
            self.local_addr.cleanup();
        }
    }
}

fn update<E>(
    policy: &watch::Sender<Arc<Policy>>,
    f: impl FnOnce(&Policy) -> Result<Policy, E>,
) -> Result<(), E> {
    let mut result = Ok(());
    let mut f = Some(f);
    policy.send_if_modified(|p| match f.take().map(|f| f(p)) {
        Some(Ok(next)) => {
            *p = Arc::new(next);
            true
        }
        Some(Err(e)) => {
            result = Err(e);
            false
        }
        None => false,
    });
    result
}

fn own_addrs() -> HashSet<IpAddr> {
    if_addrs::get_if_addrs()
        .map(|ifs| ifs.into_iter().map(|i| i.ip().to_canonical()).collect())
        .unwrap_or_default()
}

pub(crate) struct Shared {
    policy: Arc<watch::Sender<Arc<Policy>>>,
    resolver: Arc<dyn Resolver>,
    dialer: Arc<dyn Dialer>,
    sink: Option<EventSink>,
    limits: Limits,
    sem: Arc<Semaphore>,
    sandbox_id: Option<String>,
    host_addrs: HashSet<IpAddr>,
    shutdown: watch::Receiver<bool>,
    /// See `ProxyHandle::live`.
    pub(crate) live: Arc<()>,
    intercept: Option<Arc<Interceptor>>,
    asker: Option<Arc<Asker>>,
}

/// A token bucket: `rate` tokens a second, holding at most `rate`.
struct Bucket {
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new(rate: u32) -> Bucket {
        let rate = f64::from(rate.max(1));
        Bucket {
            rate,
            tokens: rate,
            at: Instant::now(),
        }
    }

    /// How long to wait before the next token (zero if one is there); takes it.
    fn take(&mut self) -> Duration {
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate).min(self.rate);
        self.at = now;
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

async fn accept_loop(listener: listen::Listener, shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.clone();
    let mut bucket = Bucket::new(shared.limits.new_connections_per_second);
    loop {
        let wait = bucket.take();
        if !wait.is_zero() {
            tokio::select! {
                _ = shutdown.changed() => break,
                () = tokio::time::sleep(wait) => {}
            }
        }
        let accepted = tokio::select! {
            _ = shutdown.changed() => break,
            a = listener.accept() => a,
        };
        let stream = match accepted {
            Ok(s) => s,
            Err(_) => {
                // EMFILE and friends: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let shared = shared.clone();
        match shared.sem.clone().try_acquire_owned() {
            Ok(permit) => {
                tokio::spawn(async move {
                    match stream {
                        listen::Stream::Tcp(s) => serve_conn(s, shared).await,
                        listen::Stream::Unix(s) => serve_conn(s, shared).await,
                    }
                    drop(permit);
                });
            }
            Err(_) => {
                tokio::spawn(async move {
                    shared.emit_now(
                        shared.event(Verdict::Deny, "", "", 0, None),
                        "too-many-connections",
                        503,
                    );
                    match stream {
                        listen::Stream::Tcp(s) => reply_busy(s).await,
                        listen::Stream::Unix(s) => reply_busy(s).await,
                    }
                });
            }
        }
    }
}

async fn reply_busy<S: AsyncWrite + Unpin>(mut s: S) {
    let body = "agent-sandbox: too many connections through this proxy; retry later\n";
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\n{DENIED_HEADER}: too-many-connections\r\nconnection: close\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = s.write_all(head.as_bytes()).await;
    let _ = s.shutdown().await;
}

async fn serve_conn<S>(stream: S, shared: Arc<Shared>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut shutdown = shared.shutdown.clone();
    let svc_shared = shared.clone();
    let svc = hyper::service::service_fn(move |req| {
        let shared = svc_shared.clone();
        async move { Ok::<_, Infallible>(shared.handle(req).await) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(shared.limits.header_read_timeout)
        .max_buf_size(shared.limits.max_header_bytes.max(8192))
        .keep_alive(true)
        .half_close(false);
    let conn = builder
        .serve_connection(TokioIo::new(stream), svc)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            // A request hyper refused before the proxy saw it (bytes no
            // request line may hold, a head over the limit: hyper answers
            // 400 or 431; a head not sent in time: hyper just closes, status
            // 0) is a decision too: one event.
            if let Err(e) = r {
                let reason = if e.is_parse_too_large() {
                    Some(("head-too-large", 431))
                } else if e.is_parse_version_h2() {
                    // HTTP/2 prior knowledge: hyper closes without a word.
                    Some(("malformed; error=http2-not-served", 0))
                } else if e.is_parse() {
                    Some(("malformed; error=unparsable-request", 400))
                } else if e.is_timeout() {
                    Some(("header-read-timeout", 0))
                } else {
                    None
                };
                if let Some((reason, status)) = reason {
                    shared.emit_now(shared.event(Verdict::Deny, "", "", 0, None), reason, status);
                }
            }
        }
        _ = shutdown.changed() => {}
    }
}

/// A refusal: status, reason (header value), the deciding rule, and how
/// the connection came.
pub(crate) struct Refusal {
    status: StatusCode,
    reason: String,
    rule: Option<String>,
    via: Via,
    path: Option<String>,
    /// The ask callback's answer, when it was asked.
    ask: Option<&'static str>,
}

impl Refusal {
    fn new(status: StatusCode, reason: impl Into<String>) -> Refusal {
        Refusal {
            status,
            reason: reason.into(),
            rule: None,
            via: Via::Proxy,
            path: None,
            ask: None,
        }
    }

    fn path(mut self, path: &str) -> Refusal {
        self.path = Some(event::truncated(&sanitize(path), event::MAX_PATH_BYTES));
        self
    }

    fn via(mut self, via: Via) -> Refusal {
        self.via = via;
        self
    }
}

/// A destination the policy allows, resolved and checked, not dialled.
pub(crate) struct Checked {
    host: Host,
    port: u16,
    rule: String,
    addrs: Vec<IpAddr>,
    /// Resolving and connecting share one timeout.
    deadline: tokio::time::Instant,
    /// The ask callback's answer, when it was asked.
    ask: Option<&'static str>,
}

/// What a request was allowed to reach.
pub(crate) struct Target {
    host: Host,
    port: u16,
    rule: String,
    stream: TcpStream,
    ask: Option<&'static str>,
}

/// What [`Shared::screen`] let through: the HTTP rule that allowed the
/// request (if any names the host), the secrets whose placeholders it
/// carries (to substitute), and the ask callback's answer, when asked.
pub(crate) struct Screened {
    rule: Option<String>,
    secrets: Vec<String>,
    ask: Option<&'static str>,
}

/// Whether a miss may be asked about.
#[derive(Clone, Copy)]
pub(crate) enum Asking<'a> {
    /// Ask (when a callback is set), about this request.
    Ask {
        method: &'a str,
        path: Option<&'a str>,
    },
    /// The connection was allowed once already (an intercepted tunnel
    /// dialling for a later request): a miss passes, other refusals hold.
    Granted,
}

impl Shared {
    async fn handle(self: &Arc<Self>, req: Request<Incoming>) -> Response<ProxyBody> {
        if req.method() == Method::CONNECT {
            connect::handle(self.clone(), req).await
        } else {
            forward::handle(self.clone(), req).await
        }
    }

    fn event(
        &self,
        verdict: Verdict,
        method: &str,
        host: &str,
        port: u16,
        rule: Option<String>,
    ) -> event::AuditEvent {
        AuditEvent {
            time: SystemTime::now(),
            sandbox_id: self.sandbox_id.clone(),
            verdict,
            method: event::truncated(method, event::MAX_METHOD_BYTES),
            host: event::truncated(host, event::MAX_HOST_BYTES),
            port,
            rule,
            via: Via::Proxy,
            path: None,
            ask: None,
            reason: None,
            status: 0,
            bytes_up: 0,
            bytes_down: 0,
            duration_ms: 0,
            count: 1,
        }
    }

    /// Delivers `e` at once, refused (or failed) for `reason` with `status`.
    fn emit_now(&self, mut e: AuditEvent, reason: &str, status: u16) {
        if let Some(sink) = &self.sink {
            e.reason = Some(event::truncated(reason, event::MAX_REASON_BYTES));
            e.status = status;
            sink(&e);
        }
    }

    /// An event delivered when the returned guard is dropped.
    fn guard(&self, started: Instant, method: &str, target: &Target, via: Via) -> Arc<EventGuard> {
        let g = self.guard_for(
            started,
            method,
            &target.host,
            target.port,
            &target.rule,
            via,
        );
        if let Some(ask) = target.ask {
            g.set_ask(ask);
        }
        g
    }

    /// [`Shared::guard`] for a destination given by its parts.
    fn guard_for(
        &self,
        started: Instant,
        method: &str,
        host: &Host,
        port: u16,
        rule: &str,
        via: Via,
    ) -> Arc<EventGuard> {
        let mut e = self.event(
            Verdict::Allow,
            method,
            &host.to_string(),
            port,
            Some(rule.to_owned()),
        );
        e.via = via;
        EventGuard::new(e, started, self.sink.clone())
    }

    /// Answers a refusal, emits its event, and closes the connection.
    fn refuse(&self, method: &str, host: &str, port: u16, r: Refusal) -> Response<ProxyBody> {
        let verdict = if r.status == StatusCode::FORBIDDEN || r.status == StatusCode::BAD_REQUEST {
            Verdict::Deny
        } else {
            Verdict::Error
        };
        let mut e = self.event(verdict, method, host, port, r.rule.clone());
        e.via = r.via;
        e.path.clone_from(&r.path);
        e.ask = r.ask.map(str::to_owned);
        self.emit_now(e, &r.reason, r.status.as_u16());
        self.answer(method, host, port, &r)
    }

    /// The policy in force now.
    fn policy_now(&self) -> Arc<Policy> {
        self.policy.borrow().clone()
    }

    /// Asks the callback about a miss: `Ok` with an outcome that allows,
    /// else the refusal (`refused` when there is no callback or this
    /// request may not ask). "Allow for this sandbox" applies `grow` to
    /// the policy in force (`None` from it: the rule is there already, a
    /// waiter beside this one added it).
    #[allow(clippy::too_many_arguments)] // one miss's parts
    async fn ask(
        &self,
        host: &str,
        port: u16,
        asking: Asking<'_>,
        via: Via,
        rule: String,
        grow: impl FnOnce(&Policy) -> Option<PolicyBuilder>,
        refused: Refusal,
    ) -> Result<Outcome, Refusal> {
        let (Some(asker), Asking::Ask { method, path }) = (self.asker.as_ref(), asking) else {
            return Err(refused);
        };
        let key = match path {
            Some(p) => format!("{host}:{port} {method} {p}"),
            None => format!("{host}:{port}"),
        };
        let req = AskRequest {
            host: host.to_owned(),
            port,
            method: event::truncated(method, event::MAX_METHOD_BYTES),
            path: path.map(|p| event::truncated(&sanitize(p), event::MAX_PATH_BYTES)),
            sandbox_id: self.sandbox_id.clone(),
            command: None,
            via,
            rule,
        };
        let outcome = asker.ask(key, req).await;
        if let Some(reason) = outcome.refusal() {
            return Err(Refusal {
                ask: Some(outcome.tag()),
                ..Refusal::new(StatusCode::FORBIDDEN, reason)
            });
        }
        if outcome == Outcome::Sandbox {
            let _ = update(&self.policy, |p| match grow(p) {
                Some(next) => next.build().map_err(Some),
                None => Err(None::<RuleError>),
            });
        }
        Ok(outcome)
    }

    /// What a request the proxy can read passes before it goes anywhere,
    /// plain HTTP and intercepted alike: secret placeholders (only to the
    /// hosts their rules cover, never in clear: `tls` says whether the
    /// request goes upstream encrypted), then the HTTP rules (asking the
    /// callback about a request none allows).
    #[allow(clippy::too_many_arguments)] // one request's parts
    async fn screen(
        &self,
        name: &str,
        port: u16,
        method: &str,
        path_and_query: &str,
        headers: &hyper::HeaderMap,
        tls: bool,
        via: Via,
    ) -> Result<Screened, Refusal> {
        let forbid = |reason: String| Refusal::new(StatusCode::FORBIDDEN, reason);
        let secrets = self.intercept.as_ref().map_or(&[][..], |i| &i.secrets[..]);
        let names = match crate::intercept::scan(secrets, headers, path_and_query, name, port) {
            crate::intercept::Scan::Clean => Vec::new(),
            crate::intercept::Scan::Misdirected(s) => {
                return Err(forbid(format!("secret-for-another-host; secret={s}")))
            }
            crate::intercept::Scan::ForHost(s) if !tls => {
                return Err(forbid(format!(
                    "secret-over-plain-http; secret={}",
                    s.join(",")
                )))
            }
            crate::intercept::Scan::ForHost(s) => s,
        };
        let path = path_and_query.split('?').next().unwrap_or_default();
        let denial = match self.policy_now().check_http(name, port, method, path) {
            Ok(rule) => {
                return Ok(Screened {
                    rule: rule.map(|r| r.text.clone()),
                    secrets: names,
                    ask: None,
                })
            }
            Err(d) => d,
        };
        let refused = |d: &HttpDenial| Refusal {
            rule: Some("http rules".into()),
            ..forbid(d.to_string())
        };
        if !matches!(denial, HttpDenial::NoMatchingRule { .. }) {
            return Err(refused(&denial));
        }
        let rule = format!("{method} {name}:{port} {path}");
        let literal = crate::ask::literal_glob(path).is_some();
        let grow = |p: &Policy| {
            (literal && !matches!(p.check_http(name, port, method, path), Ok(Some(_))))
                .then(|| p.rules().clone().allow_http_rule(rule.clone()))
        };
        let asking = Asking::Ask {
            method,
            path: Some(path),
        };
        let outcome = self
            .ask(
                name,
                port,
                asking,
                via,
                rule.clone(),
                grow,
                refused(&denial),
            )
            .await?;
        let tag = Some(outcome.tag());
        let rule = match self.policy_now().check_http(name, port, method, path) {
            Ok(Some(r)) => r.text.clone(),
            // A path no glob can name exactly: allowed this once.
            _ => "ask: once".to_owned(),
        };
        Ok(Screened {
            rule: Some(rule),
            secrets: names,
            ask: tag,
        })
    }

    /// The interceptor, if it wants `host`:`port` under the current policy.
    fn interceptor_for(&self, host: &Host, port: u16) -> Option<Arc<Interceptor>> {
        let i = self.intercept.as_ref()?;
        i.wants(&self.policy_now(), &host.to_string(), port)
            .then(|| i.clone())
    }

    /// The response for a refusal (no event: see [`Shared::refuse`]).
    fn answer(&self, method: &str, host: &str, port: u16, r: &Refusal) -> Response<ProxyBody> {
        // The status line's reason phrase carries the reason too: curl,
        // wget, pip, npm and Python print it verbatim.
        let (what, phrase) = if r.status == StatusCode::FORBIDDEN {
            (
                "blocked by the sandbox's network policy",
                "Blocked by agent-sandbox policy",
            )
        } else if r.status == StatusCode::BAD_REQUEST {
            (
                "refused as malformed",
                "Refused by agent-sandbox as malformed",
            )
        } else {
            (
                "could not be completed",
                "agent-sandbox could not reach the destination",
            )
        };
        let target = if port == 0 {
            host.to_owned()
        } else {
            format!("{host}:{port}")
        };
        let mut body = format!("agent-sandbox: {method} {target} {what}: {}\n", r.reason);
        if r.status == StatusCode::FORBIDDEN {
            body.push_str(if r.reason.starts_with("secret-") {
                "This is a policy decision, not a network failure. A secret's placeholder is only ever sent to the hosts the secret is for.\n"
            } else if r.reason.starts_with("no-matching-http-rule") {
                "This is a policy decision, not a network failure. Ask for an HTTP rule allowing this request if it is needed.\n"
            } else {
                "This is a policy decision, not a network failure. Ask for the host to be added to the allowlist if it is needed.\n"
            });
        }
        let mut resp = Response::new(full(body));
        *resp.status_mut() = r.status;
        let phrase = format!("{phrase}: {}", event::truncated(&r.reason, 200));
        if let Ok(p) = hyper::ext::ReasonPhrase::try_from(phrase.into_bytes()) {
            resp.extensions_mut().insert(p);
        }
        let h = resp.headers_mut();
        h.insert(
            DENIED_HEADER,
            HeaderValue::from_str(&r.reason).unwrap_or(HeaderValue::from_static("refused")),
        );
        h.insert(CONNECTION, HeaderValue::from_static("close"));
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        resp
    }

    /// Check the name, resolve once, check every address, dial a checked one.
    async fn authorize(
        &self,
        host: Host,
        port: u16,
        via: Via,
        asking: Asking<'_>,
    ) -> Result<Target, Refusal> {
        let checked = self.check(host, port, via, asking).await?;
        let ask = checked.ask;
        let deadline = checked.deadline;
        let mut last_err = None;
        for ip in checked.addrs {
            match tokio::time::timeout_at(deadline, self.dialer.dial(SocketAddr::new(ip, port)))
                .await
            {
                Err(_) => {
                    return Err(Refusal {
                        ask,
                        ..Refusal::new(StatusCode::GATEWAY_TIMEOUT, "connect-timeout")
                    }
                    .via(via))
                }
                Ok(Ok(stream)) => {
                    return Ok(Target {
                        host: checked.host,
                        port,
                        rule: checked.rule,
                        stream,
                        ask,
                    })
                }
                Ok(Err(e)) => last_err = Some(e),
            }
        }
        let e = last_err
            .map(|e| sanitize(&e.to_string()))
            .unwrap_or_default();
        Err(Refusal {
            ask,
            ..Refusal::new(
                StatusCode::BAD_GATEWAY,
                format!("connect-failed; error={e}"),
            )
        })
    }

    /// Check the name (asking about a miss), resolve once, check every
    /// address; dial nothing (an intercepted tunnel dials when a request it
    /// allows needs the upstream).
    async fn check(
        &self,
        host: Host,
        port: u16,
        via: Via,
        asking: Asking<'_>,
    ) -> Result<Checked, Refusal> {
        let (allowed, ask) = self
            .check_name(&host, port, via, asking)
            .await
            .map_err(|r| r.via(via))?;
        let policy = self.policy_now();
        self.resolve_checked(host, port, allowed, ask, &policy)
            .await
            .map_err(|r| Refusal { ask, ..r }.via(via))
    }

    /// The policy's word on a name, or the ask callback's on a miss.
    async fn check_name(
        &self,
        host: &Host,
        port: u16,
        via: Via,
        asking: Asking<'_>,
    ) -> Result<(crate::policy::Allowed, Option<&'static str>), Refusal> {
        let refused = |d: &Denial| Refusal {
            rule: d.rule().map(str::to_owned),
            ..Refusal::new(StatusCode::FORBIDDEN, d.to_string())
        };
        let denial = match self.policy_now().check_host(host, port) {
            Ok(a) => return Ok((a, None)),
            Err(d) => d,
        };
        let (Denial::NoMatchingRule, Host::Name(name)) = (&denial, host) else {
            return Err(refused(&denial));
        };
        let once = |rule: &str| {
            let pin = self.policy_now().pinned(name, port).map(<[IpAddr]>::to_vec);
            crate::policy::Allowed {
                rule: rule.to_owned(),
                pinned: pin.is_some(),
                addrs: pin,
            }
        };
        if matches!(asking, Asking::Granted) {
            return Ok((once("ask: once"), Some("once")));
        }
        let rule = format!("{name}:{port}");
        let grow = |p: &Policy| {
            let h = Host::Name(name.clone());
            p.check_host(&h, port)
                .is_err()
                .then(|| p.rules().clone().allow(rule.clone()))
        };
        let outcome = self
            .ask(
                name,
                port,
                asking,
                via,
                rule.clone(),
                grow,
                refused(&denial),
            )
            .await?;
        let tag = Some(outcome.tag());
        if outcome == Outcome::Sandbox {
            // Decided by the policy as it now is: a deny rule added
            // meanwhile still wins.
            return match self.policy_now().check_host(host, port) {
                Ok(a) => Ok((a, tag)),
                Err(d) => Err(Refusal {
                    ask: tag,
                    ..refused(&d)
                }),
            };
        }
        Ok((once("ask: once"), tag))
    }

    /// Resolves an allowed name once and checks every address.
    async fn resolve_checked(
        &self,
        host: Host,
        port: u16,
        allowed: crate::policy::Allowed,
        ask: Option<&'static str>,
        policy: &Policy,
    ) -> Result<Checked, Refusal> {
        let deadline = tokio::time::Instant::now() + self.limits.connect_timeout;
        let addrs = match (&allowed.addrs, &host) {
            (Some(a), _) => a.clone(),
            (None, Host::Name(name)) => {
                match tokio::time::timeout_at(deadline, self.resolver.resolve(name, port)).await {
                    Err(_) => {
                        return Err(Refusal::new(StatusCode::GATEWAY_TIMEOUT, "resolve-timeout"))
                    }
                    Ok(Err(e)) => {
                        return Err(Refusal::new(
                            StatusCode::BAD_GATEWAY,
                            format!("resolve-failed; error={}", sanitize(&e.to_string())),
                        ))
                    }
                    Ok(Ok(a)) if a.is_empty() => {
                        return Err(Refusal::new(
                            StatusCode::BAD_GATEWAY,
                            "resolve-failed; error=no addresses",
                        ))
                    }
                    Ok(Ok(a)) => a,
                }
            }
            (None, Host::Ip(ip)) => vec![*ip],
        };
        policy
            .check_addrs(&addrs, port, allowed.pinned, &self.host_addrs)
            .map_err(|d| Refusal {
                rule: Some(allowed.rule.clone()),
                ..Refusal::new(StatusCode::FORBIDDEN, d.to_string())
            })?;
        Ok(Checked {
            host,
            port,
            rule: allowed.rule,
            addrs,
            deadline,
            ask,
        })
    }
}

/// Keeps header values printable ASCII.
fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect()
}

pub(crate) fn full(s: impl Into<Bytes>) -> ProxyBody {
    Full::new(s.into()).map_err(|never| match never {}).boxed()
}

pub(crate) fn empty() -> ProxyBody {
    full(Bytes::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The host-address check uses the real interface list: every local
    /// address the kernel routes to this host is in it.
    #[test]
    fn the_host_addresses_are_the_interfaces_addresses() {
        let ours = own_addrs();
        let trie = std::fs::read_to_string("/proc/net/fib_trie").unwrap();
        let lines: Vec<&str> = trie.lines().collect();
        let local: HashSet<IpAddr> = lines
            .windows(2)
            .filter(|w| w[1].contains("/32 host LOCAL"))
            .filter_map(|w| w[0].rsplit(' ').next()?.parse().ok())
            .collect();
        assert!(
            local.len() >= 2,
            "loopback and at least one more: {local:?}"
        );
        for a in &local {
            assert!(ours.contains(a), "{a} missing from {ours:?}");
        }
    }
}
