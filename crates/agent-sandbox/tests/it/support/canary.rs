//! The local canary servers every test that sends traffic checks against:
//! what they saw proves what got through (and that nothing else did).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A raw TCP echo server that counts connections and records bytes. It
/// echoes until the client half-closes, then half-closes itself.
pub struct EchoCanary {
    pub addr: SocketAddr,
    pub connections: Arc<AtomicUsize>,
    /// Everything it received (no test reads it yet).
    #[allow(dead_code)]
    pub received: Arc<Mutex<Vec<u8>>>,
    pub saw_eof: Arc<AtomicUsize>,
}

impl EchoCanary {
    pub async fn start() -> EchoCanary {
        Self::start_on("127.0.0.1:0").await
    }

    pub async fn start_on(bind: &str) -> EchoCanary {
        let listener = TcpListener::bind(bind).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let received = Arc::new(Mutex::new(Vec::new()));
        let saw_eof = Arc::new(AtomicUsize::new(0));
        let (c, r, e) = (connections.clone(), received.clone(), saw_eof.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                c.fetch_add(1, Ordering::SeqCst);
                let (r, e) = (r.clone(), e.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        match s.read(&mut buf).await {
                            Ok(0) => {
                                e.fetch_add(1, Ordering::SeqCst);
                                let _ = s.shutdown().await;
                                return;
                            }
                            Ok(n) => {
                                r.lock().unwrap().extend_from_slice(&buf[..n]);
                                if s.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                            Err(_) => return,
                        }
                    }
                });
            }
        });
        EchoCanary {
            addr,
            connections,
            received,
            saw_eof,
        }
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// What the HTTP canary saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Only shown (a failed assertion prints what the canary saw).
    #[allow(dead_code)]
    pub method: String,
    pub uri: String,
    /// `HTTP/1.1` or `HTTP/2.0`.
    pub version: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// An HTTP/1.1 server on 127.0.0.1 that counts connections and records
/// every request. A websocket upgrade is answered 101 and echoed;
/// `/redirect` answers 302; anything else answers 200 with the body (see
/// [`HttpCanary::serving`]) and a set of hop-by-hop and `proxy-` headers a
/// proxy must strip.
pub struct HttpCanary {
    pub addr: SocketAddr,
    pub connections: Arc<AtomicUsize>,
    pub requests: Arc<Mutex<Vec<Seen>>>,
}

impl HttpCanary {
    /// A canary whose 200 body is "hello from canary".
    pub async fn start() -> HttpCanary {
        Self::serving("hello from canary").await
    }

    /// A canary whose 200 body is `body` (a test can tell which canary
    /// answered, from inside a sandbox).
    pub async fn serving(body: &'static str) -> HttpCanary {
        Self::serve(body, None).await
    }

    /// The same canary over TLS with `config` (its certificate and ALPN:
    /// h2 is served as HTTP/2, anything else as HTTP/1.1).
    pub async fn serving_tls(
        body: &'static str,
        config: Arc<tokio_rustls::rustls::ServerConfig>,
    ) -> HttpCanary {
        Self::serve(body, Some(tokio_rustls::TlsAcceptor::from(config))).await
    }

    async fn serve(body: &'static str, tls: Option<tokio_rustls::TlsAcceptor>) -> HttpCanary {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (c, r) = (connections.clone(), requests.clone());
        tokio::spawn(async move {
            loop {
                let Ok((s, _)) = listener.accept().await else {
                    return;
                };
                c.fetch_add(1, Ordering::SeqCst);
                let (r, tls) = (r.clone(), tls.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let r = r.clone();
                        async move { Ok::<_, Infallible>(answer(req, r, body).await) }
                    });
                    let http1 = hyper::server::conn::http1::Builder::new();
                    let Some(acceptor) = tls else {
                        let _ = http1
                            .serve_connection(TokioIo::new(s), svc)
                            .with_upgrades()
                            .await;
                        return;
                    };
                    let Ok(tls) = acceptor.accept(s).await else {
                        return;
                    };
                    if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                        let _ = hyper::server::conn::http2::Builder::new(
                            hyper_util::rt::TokioExecutor::new(),
                        )
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                    } else {
                        let _ = http1
                            .serve_connection(TokioIo::new(tls), svc)
                            .with_upgrades()
                            .await;
                    }
                });
            }
        });
        HttpCanary {
            addr,
            connections,
            requests,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.requests.lock().unwrap().clone()
    }
}

async fn answer(
    mut req: Request<Incoming>,
    seen: Arc<Mutex<Vec<Seen>>>,
    body_200: &'static str,
) -> Response<Full<Bytes>> {
    let headers = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let method = req.method().to_string();
    let uri = req.uri().to_string();
    let version = format!("{:?}", req.version());
    let websocket = req
        .headers()
        .get("upgrade")
        .is_some_and(|v| v == "websocket");
    let on_upgrade = websocket.then(|| hyper::upgrade::on(&mut req));
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes().to_vec())
        .unwrap_or_default();
    seen.lock().unwrap().push(Seen {
        method,
        uri: uri.clone(),
        version,
        headers,
        body,
    });
    if let Some(on_upgrade) = on_upgrade {
        tokio::spawn(async move {
            if let Ok(up) = on_upgrade.await {
                let mut io = TokioIo::new(up);
                let mut buf = [0u8; 1024];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });
        return Response::builder()
            .status(101)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .body(Full::new(Bytes::new()))
            .unwrap();
    }
    if uri == "/redirect" {
        return Response::builder()
            .status(302)
            .header("location", "http://elsewhere.test/")
            .body(Full::new(Bytes::from_static(b"moved")))
            .unwrap();
    }
    Response::builder()
        .header("connection", "keep-alive, x-upstream-hop")
        .header("x-upstream-hop", "secret")
        .header("keep-alive", "timeout=5")
        .header("proxy-authenticate", "Basic realm=\"upstream\"")
        .header("proxy-x-upstream", "leak")
        .header("x-plain", "kept")
        .body(Full::new(Bytes::from_static(body_200.as_bytes())))
        .unwrap()
}
