//! The connection to an engine over TCP (`tcp://`, `http://`, `https://`),
//! plain or with TLS, built here rather than by bollard for two reasons:
//!
//! - **`TCP_NODELAY`.** A gateway's control stream is many small frames on
//!   one attached connection; with Nagle's algorithm on (hyper's connector
//!   leaves it on, Go's engines turn it off on their side) a frame written
//!   while the previous one is unacknowledged waits for the peer's delayed
//!   ACK, 40 ms on Linux, and a session exec paid that two to four times.
//! - **Kept connections.** bollard keeps no idle connection over TCP, so
//!   every API call paid a TCP (and TLS) handshake. Idle connections are
//!   kept for a few seconds; hyper retries a request that a closing pooled
//!   connection never sent.
//!
//! TLS trusts exactly the CA in `ca.pem` and presents `cert.pem`/`key.pem`,
//! as the Docker CLI does with `DOCKER_TLS_VERIFY` (not the system roots:
//! an engine's certificate is issued by the engine's own CA).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bollard::{BollardRequest, Docker};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// bollard's default: a request (not an attached stream) that takes longer
/// than this fails.
pub(super) const TIMEOUT_SECS: u64 = 120;

/// How long an idle connection is kept for the next call.
const IDLE: Duration = Duration::from_secs(5);

/// A client for `host` (`tcp://`, `http://` or `https://` with a port),
/// with TLS from `tls_dir` when given.
pub(super) fn connect(
    host: &str,
    tls_dir: Option<&Path>,
    api: &bollard::ClientVersion,
) -> Result<Docker, String> {
    let addr = host
        .split_once("://")
        .map_or(host, |(_, rest)| rest)
        .trim_end_matches('/')
        .to_owned();
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.set_keepalive(Some(Duration::from_secs(30)));
    let docker = match tls_dir {
        None => over(http, format!("http://{addr}"), api),
        Some(dir) => {
            http.enforce_http(false);
            let https = hyper_rustls::HttpsConnector::from((http, tls_config(dir)?));
            over(https, format!("https://{addr}"), api)
        }
    };
    docker.map_err(|e| e.to_string())
}

/// A bollard client sending its requests through `connector`.
fn over<C>(
    connector: C,
    url: String,
    api: &bollard::ClientVersion,
) -> Result<Docker, bollard::errors::Error>
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    let client = Arc::new(
        Client::builder(TokioExecutor::new())
            .pool_idle_timeout(IDLE)
            .build(connector),
    );
    Docker::connect_with_custom_transport(
        move |req: BollardRequest| {
            let client = Arc::clone(&client);
            async move { client.request(req).await.map_err(Into::into) }
        },
        Some(url),
        TIMEOUT_SECS,
        api,
    )
}

/// The client side of the engine's TLS: its CA only, and our certificate.
fn tls_config(dir: &Path) -> Result<rustls::ClientConfig, String> {
    let file = |name: &str| dir.join(name);
    let bad = |name: &str, e: &dyn std::fmt::Display| {
        format!(
            "cannot read {} (the engine's TLS files: DOCKER_CERT_PATH or the context's): {e}",
            file(name).display()
        )
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(file("ca.pem")).map_err(|e| bad("ca.pem", &e))? {
        roots
            .add(cert.map_err(|e| bad("ca.pem", &e))?)
            .map_err(|e| bad("ca.pem", &e))?;
    }
    let chain = CertificateDer::pem_file_iter(file("cert.pem"))
        .map_err(|e| bad("cert.pem", &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad("cert.pem", &e))?;
    let key = PrivateKeyDer::from_pem_file(file("key.pem")).map_err(|e| bad("key.pem", &e))?;
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| bad("key.pem", &e))
}

/// The TLS directory for `DOCKER_HOST`, as the Docker CLI picks it:
/// `DOCKER_CERT_PATH`, else `~/.docker`, when `DOCKER_TLS_VERIFY` is set
/// (or the host says `https://`).
pub(super) fn env_tls_dir(host: &str) -> Option<std::path::PathBuf> {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    if var("DOCKER_TLS_VERIFY").is_none() && !host.starts_with("https://") {
        return None;
    }
    var("DOCKER_CERT_PATH")
        .map(std::path::PathBuf::from)
        .or_else(|| var("HOME").map(|h| Path::new(&h).join(".docker")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Missing or unreadable TLS files are named, with where they come from.
    #[test]
    fn tls_errors_name_the_file() {
        let dir = std::env::temp_dir().join(format!("transport-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let e = connect(
            "tcp://127.0.0.1:1",
            Some(&dir),
            bollard::API_DEFAULT_VERSION,
        )
        .unwrap_err();
        assert!(
            e.contains("ca.pem") && e.contains("DOCKER_CERT_PATH"),
            "{e}"
        );
        std::fs::write(dir.join("ca.pem"), "not a certificate").unwrap();
        std::fs::write(dir.join("cert.pem"), "").unwrap();
        let e = connect(
            "tcp://127.0.0.1:1",
            Some(&dir),
            bollard::API_DEFAULT_VERSION,
        )
        .unwrap_err();
        assert!(e.contains("key.pem"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// An unknown scheme is refused with the ones that work, and nothing
    /// is dialled for it.
    #[tokio::test]
    async fn unsupported_addresses_are_refused() {
        let e = crate::runtime::Engine::connect_to(&crate::runtime::Endpoint {
            host: "ftp://127.0.0.1:1".into(),
            tls_dir: None,
        })
        .await
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("unsupported address") && e.contains("tcp://HOST:PORT"),
            "{e}"
        );
    }

    /// Requests reach a plain `tcp://` engine through this transport, and
    /// the connection is kept for the next call (one accept for two calls).
    #[tokio::test]
    async fn plain_tcp_requests_arrive_on_one_kept_connection() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut seen = String::new();
            for _ in 0..2 {
                let mut buf = [0u8; 4096];
                let n = conn.read(&mut buf).await.unwrap();
                seen.push_str(&String::from_utf8_lossy(&buf[..n]));
                let body = "OK";
                conn.write_all(
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    )
                    .as_bytes(),
                )
                .await
                .unwrap();
            }
            let accepted_again =
                tokio::time::timeout(std::time::Duration::from_millis(200), listener.accept())
                    .await
                    .is_ok();
            (seen, accepted_again)
        });
        let docker = connect(
            &format!("tcp://127.0.0.1:{port}"),
            None,
            bollard::API_DEFAULT_VERSION,
        )
        .unwrap();
        assert_eq!(docker.ping().await.unwrap(), "OK");
        assert_eq!(docker.ping().await.unwrap(), "OK");
        let (seen, accepted_again) = server.await.unwrap();
        assert_eq!(seen.matches("GET /").count(), 2, "{seen}");
        assert!(seen.contains("/_ping"), "{seen}");
        assert!(!accepted_again, "a second connection was opened");
    }

    /// TLS trusts exactly the engine's CA (`ca.pem`), never the system's
    /// roots or any other: the same fake engine answers a client holding
    /// its CA (the positive control) and is refused by one holding another
    /// CA, before any request is sent.
    #[tokio::test]
    async fn tls_trusts_only_the_engines_ca() {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        use rustls::pki_types::PrivatePkcs8KeyDer;
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let ca = || {
            let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap()
        };
        let (engine_ca, other_ca) = (ca(), ca());
        let server_key = KeyPair::generate().unwrap();
        let server_cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&server_key, &engine_ca)
            .unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![server_cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der())),
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let served = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = Arc::clone(&served);
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    continue;
                };
                let count = Arc::clone(&count);
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    while matches!(tls.read(&mut buf).await, Ok(n) if n > 0) {
                        count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let ok = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK";
                        if tls.write_all(ok.as_bytes()).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        // A client directory trusting `trusted`, with a certificate of its own.
        let client = |tag: &str, trusted: &CertifiedIssuer<'static, KeyPair>| {
            let dir =
                std::env::temp_dir().join(format!("transport-ca-{tag}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let key = KeyPair::generate().unwrap();
            let cert = CertificateParams::new(vec!["client".to_owned()])
                .unwrap()
                .signed_by(&key, trusted)
                .unwrap();
            std::fs::write(dir.join("ca.pem"), trusted.pem()).unwrap();
            std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
            std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
            dir
        };
        let host = format!("tcp://127.0.0.1:{port}");
        let good = client("engine", &engine_ca);
        let docker = connect(&host, Some(&good), bollard::API_DEFAULT_VERSION).unwrap();
        assert_eq!(docker.ping().await.unwrap(), "OK");
        assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 1);
        let bad = client("other", &other_ca);
        let docker = connect(&host, Some(&bad), bollard::API_DEFAULT_VERSION).unwrap();
        let e = docker.ping().await.unwrap_err();
        assert_eq!(
            served.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "a request reached an engine whose certificate is not from ca.pem ({e})"
        );
        for d in [good, bad] {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}
