//! TLS interception vs a plain tunnel, through the same in-process proxy to
//! the same local TLS upstream (its own CA): (a) request latency, small
//! requests one after another on one kept-alive connection; (b) bulk, one
//! 64 MiB response; (c) the first request of a new tunnel when the host's
//! leaf certificate must be minted vs when it is cached. Interleaved, so
//! drift hits both sides alike.
//!
//! Usage: intercept-compare [--iterations N]

use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_sandbox::intercept::Interceptor;
use agent_sandbox::policy::Policy;
use agent_sandbox::proxy::{Listen, Proxy, ProxyHandle};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName,
};
use tokio_rustls::rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

const BULK: usize = 64 << 20;
const NAMES: usize = 64;

fn main() {
    let n: usize = std::env::args()
        .skip_while(|a| a != "--iterations")
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(run(n));
}

async fn run(n: usize) {
    // The upstream: a CA, a certificate for h0.test .. h63.test, HTTP/1.1.
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let names: Vec<String> = (0..NAMES).map(|i| format!("h{i}.test")).collect();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(names.clone())
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let mut server = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .unwrap();
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let acceptor = TlsAcceptor::from(Arc::new(server));
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _ = tcp.set_nodelay(true);
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let body = if req.uri().path() == "/bulk" {
                        Bytes::from(vec![7u8; BULK])
                    } else {
                        Bytes::from_static(b"ok")
                    };
                    Ok::<_, std::convert::Infallible>(Response::new(Full::new(body)))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });

    let mut rules = Policy::builder();
    for name in &names {
        rules = rules
            .allow(format!("{name}:{port}"))
            .resolve(name, port, "127.0.0.1");
    }
    let plain = start(rules.clone().build().unwrap(), None).await;
    let icp = Arc::new(Interceptor::new(&[], &[ca.pem()]).unwrap());
    let mut narrowed = rules;
    for name in &names {
        narrowed = narrowed.allow_http("*", format!("{name}:{port}"), "/**");
    }
    let intercepting = start(narrowed.build().unwrap(), Some(icp.clone())).await;
    let upstream_roots = roots(&ca.pem());
    let sandbox_roots = roots(icp.ca_pem());

    // (a) latency: one connection each, requests one after another.
    let mut a = Client::open(&plain, "h0.test", port, &upstream_roots).await;
    let mut b = Client::open(&intercepting, "h0.test", port, &sandbox_roots).await;
    let (mut ta, mut tb) = (Vec::new(), Vec::new());
    for i in 0..n + 100 {
        let (x, y) = if i % 2 == 0 {
            let x = a.get("/").await;
            (x, b.get("/").await)
        } else {
            let y = b.get("/").await;
            (a.get("/").await, y)
        };
        if i >= 100 {
            ta.push(x);
            tb.push(y);
        }
    }
    println!("request latency, {n} requests on one kept-alive connection (µs)");
    println!("{:<26} {:>8} {:>8} {:>8}", "path", "p50", "p90", "p99");
    row("plain tunnel", &mut ta);
    row("intercepted", &mut tb);
    let p50 = |v: &Vec<Duration>| v[v.len() / 2].as_secs_f64() * 1e6;
    println!(
        "{:<26} {:>8.0}",
        "added by interception",
        p50(&tb) - p50(&ta)
    );

    // (b) bulk.
    println!("\nbulk: one {} MiB response (MiB/s, best of 3)", BULK >> 20);
    for (label, client) in [("plain tunnel", &mut a), ("intercepted", &mut b)] {
        let mut best: f64 = 0.0;
        for _ in 0..3 {
            best = best.max(client_bulk(client).await);
        }
        println!("{label:<26} {best:>8.0}");
    }

    // (c) a new tunnel's first request: leaf minted (a host not seen yet)
    // vs cached (a host seen before), each on a fresh connection.
    let (mut minted, mut cached) = (Vec::new(), Vec::new());
    for name in names.iter().skip(1) {
        let t = Instant::now();
        let mut c = Client::open(&intercepting, name, port, &sandbox_roots).await;
        c.get("/").await;
        minted.push(t.elapsed());
        let t = Instant::now();
        let mut c = Client::open(&intercepting, name, port, &sandbox_roots).await;
        c.get("/").await;
        cached.push(t.elapsed());
    }
    println!(
        "\nfirst request of a new tunnel (CONNECT + TLS + GET), {} hosts (µs)",
        NAMES - 1
    );
    println!("{:<26} {:>8} {:>8} {:>8}", "leaf", "p50", "p90", "p99");
    row("minted", &mut minted);
    row("cached", &mut cached);
}

fn row(label: &str, v: &mut [Duration]) {
    v.sort();
    let q = |f: f64| v[((v.len() - 1) as f64 * f) as usize].as_secs_f64() * 1e6;
    println!(
        "{label:<26} {:>8.0} {:>8.0} {:>8.0}",
        q(0.5),
        q(0.9),
        q(0.99)
    );
}

async fn client_bulk(c: &mut Client) -> f64 {
    let t = Instant::now();
    let got = c.get_len("/bulk").await;
    assert_eq!(got, BULK);
    (BULK as f64 / (1 << 20) as f64) / t.elapsed().as_secs_f64()
}

async fn start(policy: Policy, icp: Option<Arc<Interceptor>>) -> ProxyHandle {
    let mut b = Proxy::builder(policy);
    if let Some(i) = icp {
        b = b.intercept(i);
    }
    b.start(&Listen::parse("127.0.0.1:0").unwrap())
        .await
        .unwrap()
}

fn roots(pem: &str) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut c = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(c)
}

struct Client {
    sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    host: String,
}

impl Client {
    async fn open(proxy: &ProxyHandle, host: &str, port: u16, tls: &Arc<ClientConfig>) -> Client {
        let mut s = TcpStream::connect(proxy.local_addr().tcp().unwrap())
            .await
            .unwrap();
        s.set_nodelay(true).unwrap();
        s.write_all(
            format!("CONNECT {host}:{port} HTTP/1.1\r\nhost: {host}:{port}\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut b).await.unwrap();
            head.push(b[0]);
        }
        assert!(head.starts_with(b"HTTP/1.1 200"));
        let tls = TlsConnector::from(tls.clone())
            .connect(ServerName::try_from(host.to_owned()).unwrap(), s)
            .await
            .unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        Client {
            sender,
            host: host.to_owned(),
        }
    }

    async fn get(&mut self, path: &str) -> Duration {
        let t = Instant::now();
        let n = self.get_len(path).await;
        assert!(n > 0);
        t.elapsed()
    }

    async fn get_len(&mut self, path: &str) -> usize {
        self.sender.ready().await.unwrap();
        let req = Request::get(path)
            .header("host", &self.host)
            .body(Empty::new())
            .unwrap();
        let resp = self.sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        resp.into_body().collect().await.unwrap().to_bytes().len()
    }
}
