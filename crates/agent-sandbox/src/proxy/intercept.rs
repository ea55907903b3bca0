//! Serving an intercepted tunnel: the sandbox's TLS ends here (a leaf from
//! the sandbox's CA; ALPN h2 or HTTP/1.1), each request is checked against
//! the HTTP rules and scanned for secret placeholders, and is forwarded
//! over the proxy's own TLS connection to the upstream, verified against
//! the trusted roots. A tunnel whose first byte is not a TLS handshake (a
//! captured port-80 connection) is served as plain HTTP the same way,
//! except that a secret is never sent in clear.
//!
//! Each request is one audit event with its method and path (never header
//! values, never the query).

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::header::{HeaderValue, CONNECTION, HOST, UPGRADE};
use hyper::{Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::event::EventGuard;
use super::forward::{check_framing, count_body, strip_hop_by_hop, switch_protocols};
use super::{sanitize, Asking, Checked, ProxyBody, Refusal, Shared, Verdict, Via};
use crate::intercept::{substitute, Interceptor};
use crate::policy::{parse_authority, Host};

/// One intercepted tunnel: where it goes and the upstream connections it
/// has open.
struct Tunnel {
    shared: Arc<Shared>,
    icp: Arc<Interceptor>,
    host: Host,
    name: String,
    port: u16,
    via: Via,
    rule: String,
    /// Allowed once by the ask callback: later dials need no rule either.
    granted: bool,
    tls: bool,
    pool: Mutex<Pool>,
}

#[derive(Default)]
struct Pool {
    h2: Option<http2::SendRequest<ProxyBody>>,
    idle: Vec<http1::SendRequest<ProxyBody>>,
}

enum Sender {
    H1(http1::SendRequest<ProxyBody>),
    H2(http2::SendRequest<ProxyBody>),
}

/// Serves the client side of an intercepted CONNECT until it closes.
pub(super) async fn serve<S>(
    shared: Arc<Shared>,
    icp: Arc<Interceptor>,
    mut client: S,
    target: Checked,
    via: Via,
    tunnel_event: Arc<EventGuard>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut first = [0u8; 1];
    let idle = shared.limits.idle_timeout;
    let Ok(Ok(1)) = tokio::time::timeout(idle, client.read(&mut first)).await else {
        return;
    };
    // 0x16: a TLS handshake record.
    let tls = first[0] == 0x16;
    let client = Prefixed {
        byte: Some(first[0]),
        inner: client,
    };
    let name = target.host.to_string();
    let tunnel = Arc::new(Tunnel {
        shared: shared.clone(),
        icp: icp.clone(),
        host: target.host,
        name: name.clone(),
        port: target.port,
        via,
        rule: target.rule,
        granted: target.ask == Some("once"),
        tls,
        pool: Mutex::new(Pool::default()),
    });
    tunnel_event.set_reason("intercepted".into());
    if !tls {
        serve_http(tunnel, TokioIo::new(client), false).await;
        return;
    }
    let config = match icp.server_config(&name) {
        Ok(c) => c,
        Err(e) => {
            tunnel_event.set_reason(format!("intercept-failed; error={}", sanitize(&e)));
            return;
        }
    };
    let deadline = shared.limits.header_read_timeout;
    match tokio::time::timeout(deadline, TlsAcceptor::from(config).accept(client)).await {
        Ok(Ok(stream)) => {
            let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
            serve_http(tunnel, TokioIo::new(stream), h2).await;
        }
        // Most often: the client does not trust the sandbox's CA (a
        // program with its own root list, or certificate pinning).
        Ok(Err(e)) => tunnel_event.set_reason(format!(
            "client-refused-interception; error={}",
            sanitize(&e.to_string())
        )),
        Err(_) => tunnel_event.set_reason("client-tls-timeout".into()),
    }
}

async fn serve_http<I>(tunnel: Arc<Tunnel>, io: I, h2: bool)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let limits = tunnel.shared.limits.clone();
    let mut shutdown = tunnel.shared.shutdown.clone();
    let svc_tunnel = tunnel.clone();
    let svc = hyper::service::service_fn(move |req| {
        let t = svc_tunnel.clone();
        async move { Ok::<_, Infallible>(t.handle(req).await) }
    });
    let max_header = u32::try_from(limits.max_header_bytes.max(8192)).unwrap_or(u32::MAX);
    if h2 {
        let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        b.timer(TokioTimer::new())
            .max_header_list_size(max_header)
            .max_concurrent_streams(100);
        let conn = b.serve_connection(io, svc);
        tokio::select! {
            _ = conn => {}
            _ = shutdown.changed() => {}
        }
    } else {
        let mut b = hyper::server::conn::http1::Builder::new();
        b.timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_buf_size(limits.max_header_bytes.max(8192))
            .keep_alive(true);
        let conn = b.serve_connection(io, svc).with_upgrades();
        tokio::select! {
            _ = conn => {}
            _ = shutdown.changed() => {}
        }
    }
}

impl Tunnel {
    /// How a dial for a later request may treat a miss: a tunnel the ask
    /// callback allowed once stays allowed; one a rule allowed asks anew
    /// (the rule may have been removed since).
    fn asking(&self) -> Asking<'static> {
        if self.granted {
            Asking::Granted
        } else {
            Asking::Ask {
                method: "CONNECT",
                path: None,
            }
        }
    }

    fn refuse(&self, method: &str, path: &str, r: Refusal) -> Response<ProxyBody> {
        self.shared
            .refuse(method, &self.name, self.port, r.via(self.via).path(path))
    }

    async fn handle(self: &Arc<Self>, mut req: Request<Incoming>) -> Response<ProxyBody> {
        let started = Instant::now();
        let method = req.method().as_str().to_owned();
        let path = req.uri().path().to_owned();
        let pq = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        // The request names the tunnel's host, or none: no fronting
        // another host through an allowed tunnel.
        let named = match req.uri().authority() {
            Some(a) => Some(a.host().to_owned()),
            None => req
                .headers()
                .get(HOST)
                .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned()),
        };
        if let Some(n) = named {
            let same =
                parse_authority(&n, Some(self.port)).is_ok_and(|(h, _)| h.to_string() == self.name);
            if !same {
                return self.refuse(
                    &method,
                    &path,
                    Refusal::new(
                        StatusCode::FORBIDDEN,
                        format!("host-mismatch; asked={}", sanitize(&n)),
                    ),
                );
            }
        }
        if let Err(reason) = check_framing(req.headers()) {
            return self.refuse(
                &method,
                &path,
                Refusal::new(
                    StatusCode::BAD_REQUEST,
                    format!("malformed; error={reason}"),
                ),
            );
        }
        let screened = match self
            .shared
            .screen(
                &self.name,
                self.port,
                &method,
                &pq,
                req.headers(),
                self.tls,
                self.via,
            )
            .await
        {
            Ok(s) => s,
            Err(r) => return self.refuse(&method, &path, r),
        };
        let (secrets, ask) = (screened.secrets, screened.ask);
        let rule = screened.rule.unwrap_or_else(|| self.rule.clone());
        let pq = if secrets.is_empty() {
            pq
        } else {
            substitute(&self.icp.secrets, &secrets, req.headers_mut(), &pq)
        };
        let websocket = req
            .headers()
            .get(UPGRADE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
        if req.headers().contains_key(UPGRADE) && !websocket {
            return self.refuse(
                &method,
                &path,
                Refusal::new(
                    StatusCode::BAD_REQUEST,
                    "malformed; error=only websocket upgrades are allowed",
                ),
            );
        }
        let mut e = self
            .shared
            .event(Verdict::Allow, &method, &self.name, self.port, Some(rule));
        e.via = self.via;
        e.ask = ask.map(str::to_owned);
        e.path = Some(super::event::truncated(
            &sanitize(&path),
            super::event::MAX_PATH_BYTES,
        ));
        let guard = EventGuard::new(e, started, self.shared.sink.clone());
        let client_upgrade = websocket.then(|| hyper::upgrade::on(&mut req));

        let sender = match self.sender(websocket).await {
            Ok(s) => s,
            Err(r) => {
                guard.set_status(r.status.as_u16());
                guard.set_reason(r.reason.clone());
                // The request's own event says why; the refusal is not a
                // second decision.
                return refusal_response(&self.shared, &method, &self.name, self.port, r);
            }
        };
        let (parts, body) = req.into_parts();
        let mut out = Request::new(count_body(body, guard.clone(), true));
        *out.method_mut() = parts.method;
        let mut headers = strip_hop_by_hop(parts.headers);
        let authority = if self.port == if self.tls { 443 } else { 80 } {
            self.name.clone()
        } else {
            format!("{}:{}", self.name, self.port)
        };
        match &sender {
            Sender::H2(_) => {
                headers.remove(HOST);
                *out.version_mut() = Version::HTTP_2;
                let scheme = if self.tls { "https" } else { "http" };
                *out.uri_mut() = format!("{scheme}://{authority}{pq}")
                    .parse()
                    .unwrap_or_else(|_| Uri::from_static("/"));
            }
            Sender::H1(_) => {
                *out.version_mut() = Version::HTTP_11;
                *out.uri_mut() = pq.parse().unwrap_or_else(|_| Uri::from_static("/"));
                headers.insert(
                    HOST,
                    HeaderValue::from_str(&authority)
                        .unwrap_or(HeaderValue::from_static("invalid")),
                );
                if websocket {
                    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
                    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
                }
            }
        }
        *out.headers_mut() = headers;
        let idle = self.shared.limits.idle_timeout;
        let sent = match sender {
            Sender::H2(mut s) => tokio::time::timeout(idle, s.send_request(out)).await,
            Sender::H1(mut s) => {
                let r = tokio::time::timeout(idle, s.send_request(out)).await;
                if !websocket {
                    // Back to the idle list once it can take another request.
                    let me = self.clone();
                    tokio::spawn(async move {
                        if s.ready().await.is_ok() {
                            if let Ok(mut p) = me.pool.lock() {
                                p.idle.push(s);
                            }
                        }
                    });
                }
                r
            }
        };
        let resp = match sent {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                let reason = format!("upstream-error; error={}", sanitize(&e.to_string()));
                guard.set_reason(reason.clone());
                guard.set_status(502);
                return refusal_response(
                    &self.shared,
                    &method,
                    &self.name,
                    self.port,
                    Refusal::new(StatusCode::BAD_GATEWAY, reason),
                );
            }
            Err(_) => {
                guard.set_reason("upstream-timeout".into());
                guard.set_status(504);
                return refusal_response(
                    &self.shared,
                    &method,
                    &self.name,
                    self.port,
                    Refusal::new(StatusCode::GATEWAY_TIMEOUT, "upstream-timeout"),
                );
            }
        };
        guard.set_status(resp.status().as_u16());
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(client_upgrade) = client_upgrade {
                return switch_protocols(&self.shared, resp, client_upgrade, guard);
            }
        }
        let (parts, body) = resp.into_parts();
        let mut back = Response::new(count_body(body, guard, false));
        *back.status_mut() = parts.status;
        *back.headers_mut() = strip_hop_by_hop(parts.headers);
        back
    }

    /// A connection to the upstream that can take a request now: the h2
    /// connection, an idle HTTP/1.1 one, or a new one (checked and dialled
    /// like any connection: the policy may have changed since the CONNECT).
    async fn sender(&self, h1_only: bool) -> Result<Sender, Refusal> {
        {
            let mut pool = self.pool.lock().map_err(|_| gone())?;
            if !h1_only {
                if let Some(h2) = pool.h2.as_ref().filter(|s| s.is_ready()) {
                    return Ok(Sender::H2(h2.clone()));
                }
                while let Some(s) = pool.idle.pop() {
                    if s.is_ready() {
                        return Ok(Sender::H1(s));
                    }
                }
            }
        }
        let stream = self
            .shared
            .authorize(self.host.clone(), self.port, self.via, self.asking())
            .await?
            .stream;
        let _ = stream.set_nodelay(true);
        let upstream_failed = |what: &str, e: &dyn std::fmt::Display| {
            Refusal::new(
                StatusCode::BAD_GATEWAY,
                format!("{what}; error={}", sanitize(&e.to_string())),
            )
        };
        if !self.tls {
            let (s, conn) = http1::Builder::new()
                .handshake::<_, ProxyBody>(TokioIo::new(stream))
                .await
                .map_err(|e| upstream_failed("upstream-error", &e))?;
            tokio::spawn(conn.with_upgrades());
            return Ok(Sender::H1(s));
        }
        let server_name = rustls::pki_types::ServerName::try_from(self.name.clone())
            .map_err(|e| upstream_failed("upstream-tls", &e))?;
        let connector = TlsConnector::from(self.icp.upstream(h1_only));
        let connect = connector.connect(server_name, stream);
        let tls = match tokio::time::timeout(self.shared.limits.connect_timeout, connect).await {
            Ok(Ok(t)) => t,
            // An upstream that fails verification is refused, never
            // reached without it.
            Ok(Err(e)) => return Err(upstream_failed("upstream-certificate-refused", &e)),
            Err(_) => {
                return Err(Refusal::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream-tls-timeout",
                ))
            }
        };
        if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
            let (s, conn) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake::<_, ProxyBody>(TokioIo::new(tls))
                .await
                .map_err(|e| upstream_failed("upstream-error", &e))?;
            tokio::spawn(conn);
            if let Ok(mut pool) = self.pool.lock() {
                pool.h2 = Some(s.clone());
            }
            Ok(Sender::H2(s))
        } else {
            let (s, conn) = http1::Builder::new()
                .handshake::<_, ProxyBody>(TokioIo::new(tls))
                .await
                .map_err(|e| upstream_failed("upstream-error", &e))?;
            tokio::spawn(conn.with_upgrades());
            Ok(Sender::H1(s))
        }
    }
}

fn gone() -> Refusal {
    Refusal::new(
        StatusCode::BAD_GATEWAY,
        "upstream-error; error=pool poisoned",
    )
}

/// The refusal's answer, without a second event (the request's guard
/// carries the outcome).
fn refusal_response(
    shared: &Shared,
    method: &str,
    host: &str,
    port: u16,
    r: Refusal,
) -> Response<ProxyBody> {
    shared.answer(method, host, port, &r)
}

/// A stream with one byte already read put back in front.
struct Prefixed<S> {
    byte: Option<u8>,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if let Some(b) = self.byte {
            if buf.remaining() > 0 {
                buf.put_slice(&[b]);
                self.byte = None;
                return Poll::Ready(Ok(()));
            }
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
