//! TLS interception in the in-process proxy, against local TLS canaries
//! with their own test CA: secrets substituted for their host only, HTTP
//! rules, upstream verification, HTTP/2, WebSocket, and hosts left alone.

use std::sync::Arc;

use agent_sandbox::intercept::{Interceptor, SecretSpec, SecretValue};
use agent_sandbox::policy::Policy;
use agent_sandbox::proxy::Verdict;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

use crate::support::canary::HttpCanary;
use crate::support::clients::TestCa;
use crate::support::proxy::{status_of, TestProxy};

const VALUE: &str = "ghp_the-real-token-4f1d";

fn secret(name: &str, host: &str) -> SecretSpec {
    SecretSpec {
        name: name.into(),
        host: host.into(),
        value: SecretValue::new(VALUE),
    }
}

/// A TLS canary for `name` signed by `ca`, offering `alpn`.
async fn upstream(ca: &TestCa, alpn: &[&[u8]]) -> HttpCanary {
    HttpCanary::serving_tls("hello over tls", ca.server_config(alpn)).await
}

fn client_config(ca_pem: &str, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut c = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(c)
}

/// CONNECT through the proxy, then TLS to `name` trusting `ca_pem` only.
async fn tls_via(
    proxy: &TestProxy,
    name: &str,
    port: u16,
    ca_pem: &str,
    alpn: &[&[u8]],
) -> std::io::Result<TlsStream<TcpStream>> {
    let s = proxy.tunnel(&format!("{name}:{port}")).await;
    TlsConnector::from(client_config(ca_pem, alpn))
        .connect(ServerName::try_from(name.to_owned()).unwrap(), s)
        .await
}

struct Answer {
    status: StatusCode,
    denied: Option<String>,
    body: String,
}

/// One HTTP/1.1 (or, with `h2`, HTTP/2) request over `tls`.
async fn send(tls: TlsStream<TcpStream>, req: Request<Empty<Bytes>>, h2: bool) -> Answer {
    let resp = if h2 {
        let (mut s, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .unwrap();
        tokio::spawn(conn);
        s.send_request(req).await.unwrap()
    } else {
        let (mut s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        s.send_request(req).await.unwrap()
    };
    let status = resp.status();
    let denied = resp
        .headers()
        .get("x-agent-sandbox-denied")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        denied,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// One upstream `name` (its own CA, offering `alpn`), a secret
/// `secret_name` for it, and an intercepting proxy that allows it.
struct OneHost {
    up: HttpCanary,
    port: u16,
    icp: Arc<Interceptor>,
    placeholder: String,
    proxy: TestProxy,
}

async fn one_secret_host(name: &str, secret_name: &str, alpn: &[&[u8]]) -> OneHost {
    let ca = TestCa::new(&[name]);
    let up = upstream(&ca, alpn).await;
    let port = up.port();
    let icp = Arc::new(
        Interceptor::new(
            &[secret(secret_name, &format!("{name}:{port}"))],
            std::slice::from_ref(&ca.pem),
        )
        .unwrap(),
    );
    let placeholder = icp.placeholders().next().unwrap().1.to_owned();
    let policy = Policy::builder()
        .allow(format!("{name}:{port}"))
        .resolve(name, port, "127.0.0.1")
        .build()
        .unwrap();
    let proxy = TestProxy::intercepting(policy, icp.clone()).await;
    OneHost {
        up,
        port,
        icp,
        placeholder,
        proxy,
    }
}

fn get(host: &str, path: &str) -> hyper::http::request::Builder {
    Request::get(path).header("host", host)
}

#[tokio::test]
async fn a_placeholder_becomes_the_secret_for_its_host_only() {
    let ca = TestCa::new(&["api.test", "other.test"]);
    let api = upstream(&ca, &[b"http/1.1"]).await;
    let other = upstream(&ca, &[b"http/1.1"]).await;
    let (a, o) = (api.port(), other.port());
    let icp = Arc::new(
        Interceptor::new(
            &[secret("GH_TOKEN", &format!("api.test:{a}"))],
            std::slice::from_ref(&ca.pem),
        )
        .unwrap(),
    );
    let placeholder = icp.placeholders().next().unwrap().1.to_owned();
    assert!(!placeholder.contains(VALUE));
    // other.test is intercepted too (an HTTP rule names it), so the proxy
    // sees what goes there.
    let policy = Policy::builder()
        .allow(format!("api.test:{a}"))
        .resolve("api.test", a, "127.0.0.1")
        .allow_http("*", format!("other.test:{o}"), "/**")
        .resolve("other.test", o, "127.0.0.1")
        .build()
        .unwrap();
    let proxy = TestProxy::intercepting(policy, icp.clone()).await;

    let tls = tls_via(&proxy, "api.test", a, icp.ca_pem(), &[b"http/1.1"])
        .await
        .unwrap();
    let req = get("api.test", "/user?page=1")
        .header("authorization", format!("Bearer {placeholder}"))
        .body(Empty::new())
        .unwrap();
    let ans = send(tls, req, false).await;
    assert_eq!(ans.status, 200, "{}", ans.body);
    assert_eq!(ans.body, "hello over tls");
    let seen = api.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].header("authorization"),
        Some(&*format!("Bearer {VALUE}"))
    );
    assert_eq!(seen[0].uri, "/user?page=1");

    // The same placeholder to another host: refused inside TLS, and that
    // host's server never sees a connection.
    let tls = tls_via(&proxy, "other.test", o, icp.ca_pem(), &[b"http/1.1"])
        .await
        .unwrap();
    let req = get("other.test", "/collect")
        .header("x-token", placeholder.clone())
        .body(Empty::new())
        .unwrap();
    let ans = send(tls, req, false).await;
    assert_eq!(ans.status, 403);
    assert_eq!(
        ans.denied.as_deref(),
        Some("secret-for-another-host; secret=GH_TOKEN")
    );
    assert!(ans.body.contains("secret-for-another-host"), "{}", ans.body);
    assert_eq!(other.connections(), 0, "the canary saw nothing");

    // The same over plain HTTP forwarding: refused, nothing dialled.
    let raw = format!(
        "GET http://other.test:{o}/ HTTP/1.1\r\nHost: other.test:{o}\r\nAuthorization: Bearer {placeholder}\r\n\r\n"
    );
    let resp = proxy.exchange(raw.as_bytes()).await;
    assert_eq!(status_of(&resp), 403, "{resp}");
    assert!(resp.contains("secret-for-another-host"), "{resp}");
    assert_eq!(other.connections(), 0);

    let events = proxy.wait_events(4).await;
    let text: String = events.iter().map(|e| e.to_json() + "\n").collect();
    assert!(!text.contains(VALUE), "the value is in no event: {text}");
    assert!(!format!("{icp:?}").contains(VALUE));
    let get_event = events
        .iter()
        .find(|e| e.method == "GET" && e.host == "api.test")
        .unwrap_or_else(|| panic!("{text}"));
    assert_eq!(
        get_event.path.as_deref(),
        Some("/user"),
        "path, never the query"
    );
    assert_eq!(get_event.status, 200);
    assert!(events.iter().any(|e| e.verdict == Verdict::Deny
        && e.host == "other.test"
        && e.reason.as_deref() == Some("secret-for-another-host; secret=GH_TOKEN")));
}

#[tokio::test]
async fn basic_auth_placeholders_are_substituted_for_git_style_clients() {
    let OneHost {
        up: git,
        port: p,
        icp,
        placeholder,
        proxy,
    } = one_secret_host("git.test", "GIT_TOKEN", &[b"http/1.1"]).await;
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let creds = b64.encode(format!("x-access-token:{placeholder}"));
    let tls = tls_via(&proxy, "git.test", p, icp.ca_pem(), &[b"http/1.1"])
        .await
        .unwrap();
    let req = get("git.test", "/acme/x.git/info/refs?service=git-upload-pack")
        .header("authorization", format!("Basic {creds}"))
        .body(Empty::new())
        .unwrap();
    assert_eq!(send(tls, req, false).await.status, 200);
    let sent = git.requests()[0]
        .header("authorization")
        .unwrap()
        .to_owned();
    let decoded = b64.decode(sent.strip_prefix("Basic ").unwrap()).unwrap();
    assert_eq!(
        String::from_utf8(decoded).unwrap(),
        format!("x-access-token:{VALUE}")
    );
}

#[tokio::test]
async fn http_rules_allow_what_they_name_and_refuse_the_rest_inside_tls() {
    let ca = TestCa::new(&["api.github.test"]);
    let api = upstream(&ca, &[b"h2", b"http/1.1"]).await;
    let p = api.port();
    let icp = Arc::new(Interceptor::new(&[], std::slice::from_ref(&ca.pem)).unwrap());
    let host = format!("api.github.test:{p}");
    let policy = Policy::builder()
        .allow_http("GET", &host, "/repos/acme/**")
        .resolve("api.github.test", p, "127.0.0.1")
        .build()
        .unwrap();
    let proxy = TestProxy::intercepting(policy, icp.clone()).await;
    let ask = |method: &'static str, path: &'static str| {
        let proxy = &proxy;
        let icp = icp.clone();
        async move {
            let tls = tls_via(proxy, "api.github.test", p, icp.ca_pem(), &[b"http/1.1"])
                .await
                .unwrap();
            let req = Request::builder()
                .method(method)
                .uri(path)
                .header("host", "api.github.test")
                .body(Empty::new())
                .unwrap();
            send(tls, req, false).await
        }
    };
    assert_eq!(ask("GET", "/repos/acme/x").await.status, 200);
    let del = ask("DELETE", "/repos/acme/x").await;
    assert_eq!(del.status, 403);
    let denied = del.denied.unwrap();
    assert!(denied.starts_with("no-matching-http-rule"), "{denied}");
    assert!(
        denied.contains(&format!("GET {host} /repos/acme/**")),
        "{denied}"
    );
    assert!(del.body.contains("no-matching-http-rule"), "{}", del.body);
    assert_eq!(ask("GET", "/repos/other/x").await.status, 403);
    let sneaky = ask("GET", "/repos/acme/../../orgs/x").await;
    assert_eq!(sneaky.status, 403);
    assert_eq!(
        sneaky.denied.as_deref(),
        Some("malformed; error=ambiguous path")
    );
    let seen: Vec<String> = api.requests().iter().map(|s| s.uri.clone()).collect();
    assert_eq!(
        seen.len(),
        1,
        "only the allowed request reached the upstream: {seen:?}"
    );
    assert!(
        seen[0].ends_with(&format!(":{p}/repos/acme/x")) || seen[0] == "/repos/acme/x",
        "{seen:?}"
    );

    // Fronting another host through the allowed tunnel is refused.
    let tls = tls_via(&proxy, "api.github.test", p, icp.ca_pem(), &[b"http/1.1"])
        .await
        .unwrap();
    let req = get("evil.test", "/repos/acme/x")
        .body(Empty::new())
        .unwrap();
    let ans = send(tls, req, false).await;
    assert_eq!(ans.status, 403);
    assert_eq!(
        ans.denied.as_deref(),
        Some("host-mismatch; asked=evil.test")
    );

    // The same rules for plain-HTTP forwarding.
    let raw = format!("DELETE http://api.github.test:{p}/repos/acme/x HTTP/1.1\r\nHost: x\r\n\r\n");
    let resp = proxy.exchange(raw.as_bytes()).await;
    assert_eq!(status_of(&resp), 403, "{resp}");
    assert!(resp.contains("no-matching-http-rule"), "{resp}");
    assert_eq!(api.requests().len(), 1);
}

#[tokio::test]
async fn http2_works_end_to_end() {
    let OneHost {
        up,
        port: p,
        icp,
        placeholder,
        proxy,
    } = one_secret_host("h2.test", "TOKEN", &[b"h2", b"http/1.1"]).await;
    let tls = tls_via(&proxy, "h2.test", p, icp.ca_pem(), &[b"h2"])
        .await
        .unwrap();
    assert_eq!(
        tls.get_ref().1.alpn_protocol(),
        Some(&b"h2"[..]),
        "h2 to the sandbox"
    );
    let req = Request::get(format!("https://h2.test:{p}/v1/models"))
        .header("authorization", format!("Bearer {placeholder}"))
        .body(Empty::new())
        .unwrap();
    let ans = send(tls, req, true).await;
    assert_eq!(ans.status, 200, "{}", ans.body);
    assert_eq!(ans.body, "hello over tls");
    let seen = &up.requests()[0];
    assert_eq!(seen.version, "HTTP/2.0", "h2 to the upstream");
    assert_eq!(
        seen.header("authorization"),
        Some(&*format!("Bearer {VALUE}"))
    );
}

#[tokio::test]
async fn a_websocket_upgrade_passes_through_an_intercepted_host() {
    let ca = TestCa::new(&["ws.test"]);
    let up = upstream(&ca, &[b"http/1.1"]).await;
    let p = up.port();
    let icp = Arc::new(Interceptor::new(&[], std::slice::from_ref(&ca.pem)).unwrap());
    let policy = Policy::builder()
        .allow_http("GET", format!("ws.test:{p}"), "/socket")
        .resolve("ws.test", p, "127.0.0.1")
        .build()
        .unwrap();
    let proxy = TestProxy::intercepting(policy, icp.clone()).await;
    let mut tls = tls_via(&proxy, "ws.test", p, icp.ca_pem(), &[b"http/1.1"])
        .await
        .unwrap();
    tls.write_all(
        b"GET /socket HTTP/1.1\r\nHost: ws.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tls.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    tls.write_all(b"ping through the box").await.unwrap();
    let mut echo = [0u8; 20];
    tls.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"ping through the box");
}

#[tokio::test]
async fn an_upstream_that_fails_verification_is_refused_never_reached_unverified() {
    let trusted = TestCa::new(&["good.test"]);
    let rogue = TestCa::new(&["bad.test"]);
    let wrong_name = TestCa::new(&["someone-else.test"]);
    let bad = upstream(&rogue, &[b"http/1.1"]).await;
    let misnamed = upstream(&wrong_name, &[b"http/1.1"]).await;
    let (b, m) = (bad.port(), misnamed.port());
    // Only `trusted` is added: the rogue CA is not, and the misnamed
    // server's CA is, but its certificate names another host.
    let icp =
        Arc::new(Interceptor::new(&[], &[trusted.pem.clone(), wrong_name.pem.clone()]).unwrap());
    let policy = Policy::builder()
        .allow_http("*", format!("bad.test:{b}"), "/**")
        .resolve("bad.test", b, "127.0.0.1")
        .allow_http("*", format!("misnamed.test:{m}"), "/**")
        .resolve("misnamed.test", m, "127.0.0.1")
        .build()
        .unwrap();
    let proxy = TestProxy::intercepting(policy, icp.clone()).await;
    for (name, port, says) in [
        ("bad.test", b, "invalid peer certificate"),
        ("misnamed.test", m, "not valid for name"),
    ] {
        let tls = tls_via(&proxy, name, port, icp.ca_pem(), &[b"http/1.1"])
            .await
            .unwrap();
        let ans = send(tls, get(name, "/").body(Empty::new()).unwrap(), false).await;
        assert_eq!(ans.status, 502, "{name}: {}", ans.body);
        let denied = ans.denied.unwrap();
        assert!(
            denied.starts_with("upstream-certificate-refused"),
            "{denied}"
        );
        assert!(denied.contains(says), "{denied}");
    }
    assert!(bad.requests().is_empty() && misnamed.requests().is_empty());
}

#[tokio::test]
async fn a_host_with_no_secret_and_no_rule_is_not_intercepted() {
    let ca = TestCa::new(&["plain.test"]);
    let up = upstream(&ca, &[b"http/1.1"]).await;
    let p = up.port();
    let icp = Arc::new(Interceptor::new(&[secret("T", "api.test")], &[]).unwrap());
    let policy = Policy::builder()
        .allow(format!("plain.test:{p}"))
        .resolve("plain.test", p, "127.0.0.1")
        .build()
        .unwrap();
    let proxy = TestProxy::intercepting(policy, icp.clone()).await;
    // The sandbox's CA does not verify this host: the certificate is the
    // upstream's own.
    assert!(tls_via(&proxy, "plain.test", p, icp.ca_pem(), &[])
        .await
        .is_err());
    let tls = tls_via(&proxy, "plain.test", p, &ca.pem, &[])
        .await
        .unwrap();
    let ans = send(
        tls,
        get("plain.test", "/").body(Empty::new()).unwrap(),
        false,
    )
    .await;
    assert_eq!(ans.status, 200);
    let events = proxy.wait_events(2).await;
    assert!(
        events
            .iter()
            .all(|e| e.method == "CONNECT" && e.path.is_none()),
        "{events:?}"
    );
}

#[tokio::test]
async fn a_client_that_does_not_trust_the_sandbox_ca_gets_no_data_and_an_event_says_why() {
    let ca = TestCa::new(&["api.test"]);
    let up = upstream(&ca, &[b"http/1.1"]).await;
    let p = up.port();
    let icp = Arc::new(Interceptor::new(&[], std::slice::from_ref(&ca.pem)).unwrap());
    let policy = Policy::builder()
        .allow_http("GET", format!("api.test:{p}"), "/**")
        .resolve("api.test", p, "127.0.0.1")
        .build()
        .unwrap();
    let proxy = TestProxy::intercepting(policy, icp).await;
    // Trusting only the upstream's real CA (pinning, in effect).
    assert!(tls_via(&proxy, "api.test", p, &ca.pem, &[]).await.is_err());
    let events = proxy.wait_events(1).await;
    assert!(
        events.iter().any(|e| e
            .reason
            .as_deref()
            .is_some_and(|r| r.starts_with("client-refused-interception"))),
        "{events:?}"
    );
    assert!(up.requests().is_empty());
}

/// Inside an intercepted tunnel the sandbox tries request smuggling and
/// fronting, as the plain-proxy test does outside: the CL.TE mix is
/// answered once (chunked wins, then the connection closes, so the tail is
/// never read), other ambiguous framing is refused, an absolute URI naming
/// another host is refused; the upstream never sees a smuggled request.
#[tokio::test]
async fn smuggled_and_fronted_requests_inside_tls_reach_nothing() {
    let OneHost {
        up,
        port: p,
        icp,
        placeholder: _,
        proxy,
    } = one_secret_host("api.test", "TOKEN", &[b"http/1.1"]).await;
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: api.test\r\n\r\n";
    let attacks = [
        (
            format!("POST /a HTTP/1.1\r\nHost: api.test\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"),
            "HTTP/1.1 200",
        ),
        (
            format!("POST /a HTTP/1.1\r\nHost: api.test\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n{smuggled}"),
            "HTTP/1.1 400",
        ),
        (
            format!("GET https://evil.test:{p}/x HTTP/1.1\r\nHost: api.test\r\n\r\n{smuggled}"),
            "host-mismatch; asked=evil.test",
        ),
    ];
    for (raw, says) in attacks {
        let mut tls = tls_via(&proxy, "api.test", p, icp.ca_pem(), &[b"http/1.1"])
            .await
            .unwrap();
        tls.write_all(raw.as_bytes()).await.unwrap();
        let mut got = Vec::new();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), tls.read_to_end(&mut got))
            .await;
        let got = String::from_utf8_lossy(&got);
        assert!(got.contains(says), "{says}: {got}");
        assert_eq!(
            got.matches("HTTP/1.1 ").count(),
            1,
            "a second answer: {got}"
        );
    }
    let seen: Vec<String> = up.requests().iter().map(|r| r.uri.clone()).collect();
    assert_eq!(
        seen,
        ["/a"],
        "only the CL.TE request, once, reached the upstream"
    );
}
