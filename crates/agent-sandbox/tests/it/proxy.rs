//! In-process proxy tests against local canary servers. Every refusal is
//! proven by what did not happen: the canary saw no connection and the
//! resolver saw no lookup.

use std::sync::Arc;
use std::time::Duration;

use crate::support::canary::{EchoCanary, HttpCanary};
use crate::support::proxy::*;
use agent_sandbox::policy::Policy;
use agent_sandbox::proxy::{Limits, Listen, Proxy, Verdict, Via, DENIED_HEADER};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn pinned(name: &str, port: u16) -> Policy {
    Policy::builder()
        .allow(format!("{name}:{port}"))
        .resolve(name, port, "127.0.0.1")
        .build()
        .unwrap()
}

fn connect_req(authority: &str) -> String {
    format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n")
}

#[tokio::test]
async fn allowed_connect_tunnels_bytes_end_to_end() {
    let echo = EchoCanary::start().await;
    let port = echo.addr.port();
    let p = TestProxy::start(pinned("allowed.test", port), CountingResolver::default()).await;
    let mut s = p.connect().await;
    s.write_all(connect_req(&format!("Allowed.TEST.:{port}")).as_bytes())
        .await
        .unwrap();
    let head = read_head(&mut s).await;
    assert_eq!(status_of(&head), 200, "{head}");
    s.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
    drop(s);
    let events = p.wait_events(1).await;
    assert_eq!(events.len(), 1);
    let e = &events[0];
    assert_eq!(
        (e.verdict, e.method.as_str(), e.host.as_str(), e.port),
        (Verdict::Allow, "CONNECT", "allowed.test", port)
    );
    assert_eq!(
        e.rule.as_deref(),
        Some(format!("allowed.test:{port}").as_str())
    );
    assert_eq!((e.bytes_up, e.bytes_down), (4, 4));
    assert_eq!(e.sandbox_id.as_deref(), Some("test-sandbox"));
    assert_eq!(p.resolver.lookups(), 0, "a pinned name is not looked up");
    assert_eq!(p.dialer.dialled(), vec![echo.addr]);
}

#[tokio::test]
async fn connect_keeps_bytes_sent_before_the_200() {
    let echo = EchoCanary::start().await;
    let port = echo.addr.port();
    let p = TestProxy::start(pinned("allowed.test", port), CountingResolver::default()).await;
    let mut s = p.connect().await;
    let mut raw = connect_req(&format!("allowed.test:{port}")).into_bytes();
    raw.extend_from_slice(b"early-bytes");
    s.write_all(&raw).await.unwrap();
    let head = read_head(&mut s).await;
    assert_eq!(status_of(&head), 200);
    let mut buf = [0u8; 11];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"early-bytes");
}

#[tokio::test]
async fn tunnel_propagates_half_close() {
    let echo = EchoCanary::start().await;
    let port = echo.addr.port();
    let p = TestProxy::start(pinned("allowed.test", port), CountingResolver::default()).await;
    let mut s = p.tunnel(&format!("allowed.test:{port}")).await;
    s.write_all(b"last words").await.unwrap();
    s.shutdown().await.unwrap();
    // The echo server only closes after it sees our EOF through the tunnel;
    // our reads still work after our write side is shut.
    let rest = read_to_close(&mut s).await;
    assert_eq!(rest, "last words");
    assert_eq!(echo.saw_eof.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn resolved_name_is_dialled_at_the_checked_address() {
    let echo = EchoCanary::start().await;
    let port = echo.addr.port();
    let policy = Policy::builder()
        .allow("svc.test:*")
        .allow_cidr("127.0.0.1/32:*")
        .build()
        .unwrap();
    let p = TestProxy::start(
        policy,
        CountingResolver::default().answer("svc.test", &["127.0.0.1"]),
    )
    .await;
    let _tunnel = p.tunnel(&format!("svc.test:{port}")).await;
    assert_eq!(p.resolver.lookups(), 1);
    assert_eq!(p.dialer.dialled(), vec![echo.addr]);
}

#[tokio::test]
async fn rebinding_reaches_only_the_first_checked_address() {
    // Both canaries listen on the same port, on 127.0.0.1 and 127.0.0.2.
    let first = EchoCanary::start().await;
    let port = first.addr.port();
    let second = EchoCanary::start_on(&format!("127.0.0.2:{port}")).await;
    let policy = Policy::builder()
        .allow("rebind.test:*")
        .allow_cidr("127.0.0.1/32:*")
        .build()
        .unwrap();
    let resolver = CountingResolver::default()
        .answer("rebind.test", &["127.0.0.1"])
        .answer("rebind.test", &["127.0.0.2"]);
    let p = TestProxy::start(policy, resolver).await;
    let mut s = p.tunnel(&format!("rebind.test:{port}")).await;
    s.write_all(b"x").await.unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await.unwrap();
    assert_eq!(p.resolver.lookups(), 1, "resolved once");
    assert_eq!(
        p.dialer.dialled(),
        vec![first.addr],
        "dialled the checked address"
    );
    assert_eq!((first.connections(), second.connections()), (1, 0));
}

#[tokio::test]
async fn denied_names_are_never_resolved_nor_dialled() {
    let started = std::time::SystemTime::now();
    let echo = EchoCanary::start().await;
    let port = echo.addr.port();
    let policy = Policy::builder()
        .allow(format!("allowed.test:{port}"))
        .allow(format!(".corp.test:{port}"))
        .deny("secret.corp.test")
        .build()
        .unwrap();
    let resolver = CountingResolver::default()
        .answer("denied.test", &["127.0.0.1"])
        .answer("secret.corp.test", &["127.0.0.1"])
        .answer("allowed.test", &["127.0.0.1"]);
    let p = TestProxy::start(policy, resolver).await;
    let cases = [
        (format!("denied.test:{port}"), "no-matching-rule"),
        (format!("allowed.test.evil.test:{port}"), "no-matching-rule"),
        (format!("evilallowed.test:{port}"), "no-matching-rule"),
        (
            format!("allowed.test:{}", port.wrapping_add(1).max(1)),
            "no-matching-rule",
        ),
        (
            format!("secret.corp.test:{port}"),
            "deny-rule; rule=secret.corp.test",
        ),
        (
            format!("SECRET.corp.test.:{port}"),
            "deny-rule; rule=secret.corp.test",
        ),
        (format!("127.0.0.1:{port}"), "ip-literal; addr=127.0.0.1"),
        (
            format!("[::ffff:127.0.0.1]:{port}"),
            "ip-literal; addr=127.0.0.1",
        ),
        (format!("[::1]:{port}"), "ip-literal; addr=::1"),
    ];
    for (authority, reason) in &cases {
        let resp = p.exchange(connect_req(authority).as_bytes()).await;
        assert_eq!(status_of(&resp), 403, "{authority}: {resp}");
        assert_eq!(
            header_of(&resp, DENIED_HEADER),
            Some(*reason),
            "{authority}"
        );
        assert!(
            resp.contains("policy"),
            "the body says it is a policy decision: {resp}"
        );
    }
    let resp = p
        .exchange(
            format!("GET http://denied.test:{port}/ HTTP/1.1\r\nHost: allowed.test\r\n\r\n")
                .as_bytes(),
        )
        .await;
    assert_eq!(status_of(&resp), 403);
    assert!(
        resp.starts_with("HTTP/1.1 403 Blocked by agent-sandbox policy: no-matching-rule\r\n"),
        "the reason in the status line, which clients print: {resp}"
    );
    assert_eq!(p.resolver.lookups(), 0, "no DNS query for a denied name");
    assert!(p.dialer.dialled().is_empty());
    assert_eq!(echo.connections(), 0, "the canary saw nothing");
    let events = p.wait_events(cases.len() + 1).await;
    assert_eq!(events.len(), cases.len() + 1, "one event per request");
    assert!(events
        .iter()
        .all(|e| e.verdict == Verdict::Deny && e.status == 403));
    assert_eq!(events[4].rule.as_deref(), Some("secret.corp.test"));
    assert_times(&events, started);
}

#[tokio::test]
async fn special_addresses_after_resolution_are_refused_before_dialling() {
    let echo = EchoCanary::start().await;
    let port = echo.addr.port();
    let policy = Policy::builder()
        .allow(format!(".sneaky.test:{port}"))
        .allow_cidr("127.0.0.1/32:*")
        .build()
        .unwrap();
    let resolver = CountingResolver::default()
        .answer("meta.sneaky.test", &["169.254.169.254"])
        .answer("lo.sneaky.test", &["127.0.0.2"])
        .answer("mapped.sneaky.test", &["::ffff:10.0.0.1"])
        .answer("mixed.sneaky.test", &["127.0.0.1", "10.1.2.3"])
        .answer("nat64.sneaky.test", &["64:ff9b::a9fe:a9fe"])
        .answer("ok.sneaky.test", &["127.0.0.1"]);
    let started = std::time::SystemTime::now();
    let p = TestProxy::start(policy, resolver).await;
    // Control: the same rules let an allowed address through to the canary.
    drop(p.tunnel(&format!("ok.sneaky.test:{port}")).await);
    let cases = [
        (
            "meta.sneaky.test",
            "special-address; range=link-local; addr=169.254.169.254",
        ),
        (
            "lo.sneaky.test",
            "special-address; range=loopback; addr=127.0.0.2",
        ),
        (
            "mapped.sneaky.test",
            "special-address; range=private; addr=10.0.0.1",
        ),
        (
            "mixed.sneaky.test",
            "special-address; range=private; addr=10.1.2.3",
        ),
        (
            "nat64.sneaky.test",
            "special-address; range=nat64-of-special; addr=64:ff9b::a9fe:a9fe",
        ),
    ];
    for (name, reason) in cases {
        let resp = p
            .exchange(connect_req(&format!("{name}:{port}")).as_bytes())
            .await;
        assert_eq!(status_of(&resp), 403, "{name}: {resp}");
        assert_eq!(header_of(&resp, DENIED_HEADER), Some(reason), "{name}");
    }
    assert_eq!(p.resolver.lookups(), cases.len() + 1);
    assert_eq!(
        p.dialer.dialled().len(),
        1,
        "only the control was dialled: {:?}",
        p.dialer.dialled()
    );
    assert_eq!(echo.connections(), 1, "only the control reached the canary");
    let events = p.wait_events(cases.len() + 1).await;
    assert_eq!(events.len(), cases.len() + 1, "{events:#?}");
    let allowed: Vec<_> = events
        .iter()
        .filter(|e| e.verdict == Verdict::Allow)
        .collect();
    assert_eq!(allowed.len(), 1);
    assert_eq!(allowed[0].host, "ok.sneaky.test");
    for (name, reason) in cases {
        let e = events
            .iter()
            .find(|e| e.host == name)
            .unwrap_or_else(|| panic!("no event for {name}"));
        assert_eq!(
            (e.verdict, e.status, e.reason.as_deref()),
            (Verdict::Deny, 403, Some(reason)),
            "{name}"
        );
    }
    assert_times(&events, started);
}

#[tokio::test]
async fn malformed_targets_are_400_and_touch_nothing() {
    let started = std::time::SystemTime::now();
    let echo = EchoCanary::start().await;
    let port = echo.addr.port();
    let policy = Policy::builder()
        .allow("allowed.test:*")
        .allow_cidr("127.0.0.0/8:*")
        .resolve("allowed.test", port, "127.0.0.1")
        .build()
        .unwrap();
    let p = TestProxy::start(
        policy,
        CountingResolver::default().answer("allowed.test", &["127.0.0.1"]),
    )
    .await;
    let raws = [
        format!("CONNECT user@allowed.test:{port} HTTP/1.1\r\n\r\n"),
        format!("CONNECT 2130706433:{port} HTTP/1.1\r\n\r\n"),
        format!("CONNECT 0x7f.1:{port} HTTP/1.1\r\n\r\n"),
        format!("CONNECT 127.1:{port} HTTP/1.1\r\n\r\n"),
        format!("CONNECT 0177.0.0.1:{port} HTTP/1.1\r\n\r\n"),
        format!("CONNECT allowed%2etest:{port} HTTP/1.1\r\n\r\n"),
        format!("CONNECT [::1%25lo]:{port} HTTP/1.1\r\n\r\n"),
        "CONNECT allowed.test HTTP/1.1\r\n\r\n".to_owned(),
        "CONNECT allowed.test:0 HTTP/1.1\r\n\r\n".to_owned(),
        "CONNECT allowed.test:99999 HTTP/1.1\r\n\r\n".to_owned(),
        format!("CONNECT allowed..test:{port} HTTP/1.1\r\n\r\n"),
        format!("CONNECT http://allowed.test:{port}/ HTTP/1.1\r\n\r\n"),
        format!("GET http://user:pw@allowed.test:{port}/ HTTP/1.1\r\n\r\n"),
        format!("GET http://2130706433:{port}/ HTTP/1.1\r\n\r\n"),
        format!("GET https://allowed.test:{port}/ HTTP/1.1\r\n\r\n"),
        format!("GET ftp://allowed.test:{port}/ HTTP/1.1\r\n\r\n"),
        format!("GET / HTTP/1.1\r\nHost: allowed.test:{port}\r\n\r\n"),
        format!("GET http://allowed.test:{port}/ HTTP/1.1\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n"),
        format!("GET http://allowed.test:{port}/ HTTP/1.1\r\nHost: x\r\nX-Long: {}\r\n\r\n", "a".repeat(20_000)),
    ];
    for raw in &raws {
        let resp = p.exchange(raw.as_bytes()).await;
        let status = status_of(&resp);
        assert!(status == 400 || status == 431, "{raw:.80}: {resp}");
        assert_eq!(
            resp.matches("HTTP/1.1").count(),
            1,
            "one answer, then close"
        );
    }
    assert_eq!(p.resolver.lookups(), 0);
    assert!(p.dialer.dialled().is_empty());
    assert_eq!(echo.connections(), 0);
    // One event per refused request, hyper's own refusals included.
    let events = p.wait_events(raws.len()).await;
    assert_eq!(events.len(), raws.len(), "{events:#?}");
    for e in &events {
        assert_eq!(e.verdict, Verdict::Deny);
        let reason = e.reason.as_deref().unwrap_or_default();
        assert!(
            (e.status == 400 && reason.starts_with("malformed; error="))
                || (e.status == 431 && reason == "head-too-large"),
            "{e:?}"
        );
    }
    assert_times(&events, started);
}

/// Every event's time lies between `started` and now, and its duration is
/// no longer than that span.
fn assert_times(events: &[agent_sandbox::proxy::AuditEvent], started: std::time::SystemTime) {
    let now = std::time::SystemTime::now();
    let span = now.duration_since(started).unwrap().as_millis() as u64;
    for e in events {
        assert!(
            e.time >= started && e.time <= now,
            "time {:?} outside the test: {e:?}",
            e.time
        );
        assert!(
            e.duration_ms <= span,
            "duration {} ms over the test's {span} ms",
            e.duration_ms
        );
        assert_eq!(e.count, 1, "the proxy emits one event per decision");
    }
}

#[tokio::test]
async fn refusals_name_the_reason_in_a_header() {
    let p = TestProxy::start(Policy::deny_all(), CountingResolver::default()).await;
    let resp = p
        .exchange(b"CONNECT user@x.test:443 HTTP/1.1\r\n\r\n")
        .await;
    assert_eq!(
        header_of(&resp, DENIED_HEADER),
        Some("malformed; error=userinfo")
    );
    let resp = p.exchange(b"CONNECT 127.1:443 HTTP/1.1\r\n\r\n").await;
    assert_eq!(
        header_of(&resp, DENIED_HEADER),
        Some("malformed; error=numeric-name")
    );
    let resp = p.exchange(b"GET / HTTP/1.1\r\nHost: x.test\r\n\r\n").await;
    assert!(header_of(&resp, DENIED_HEADER)
        .unwrap()
        .starts_with("malformed; error=not a proxy request"));
    assert_eq!(header_of(&resp, "connection"), Some("close"));
}

#[tokio::test]
async fn request_pipelined_after_refused_connect_is_never_processed() {
    let http = HttpCanary::start().await;
    let port = http.addr.port();
    let p = TestProxy::start(pinned("allowed.test", port), CountingResolver::default()).await;
    let raw = format!(
        "CONNECT denied.test:443 HTTP/1.1\r\n\r\nGET http://allowed.test:{port}/smuggled HTTP/1.1\r\nHost: allowed.test\r\n\r\n"
    );
    let resp = p.exchange(raw.as_bytes()).await;
    assert_eq!(status_of(&resp), 403);
    assert_eq!(
        resp.matches("HTTP/1.1 ").count(),
        1,
        "exactly one response: {resp}"
    );
    assert_eq!(http.connections(), 0);
    assert!(http.requests().is_empty());
}

#[tokio::test]
async fn allowed_get_is_forwarded_with_a_rebuilt_host_and_no_hop_by_hop_headers() {
    let http = HttpCanary::start().await;
    let port = http.addr.port();
    let p = TestProxy::start(pinned("allowed.test", port), CountingResolver::default()).await;
    let raw = format!(
        "GET http://ALLOWED.test.:{port}/path?q=1 HTTP/1.1\r\nHost: evil.test\r\nProxy-Authorization: Basic c2VjcmV0\r\nProxy-Connection: keep-alive\r\nConnection: close, x-hop\r\nX-Hop: drop-me\r\nKeep-Alive: 300\r\nTE: trailers\r\nX-Keep: yes\r\n\r\n"
    );
    let resp = p.exchange(raw.as_bytes()).await;
    assert_eq!(status_of(&resp), 200, "{resp}");
    assert!(resp.ends_with("hello from canary"), "{resp}");
    assert_eq!(
        header_of(&resp, "x-upstream-hop"),
        None,
        "response hop-by-hop stripped"
    );
    assert_eq!(header_of(&resp, "keep-alive"), None);
    // Response `Proxy-*` headers are stripped too (control: a plain one stays).
    assert_eq!(header_of(&resp, "proxy-authenticate"), None, "{resp}");
    assert_eq!(header_of(&resp, "proxy-x-upstream"), None, "{resp}");
    assert_eq!(header_of(&resp, "x-plain"), Some("kept"), "{resp}");
    let seen = http.requests();
    assert_eq!(seen.len(), 1);
    let r = &seen[0];
    assert_eq!(r.uri, "/path?q=1", "origin-form upstream");
    assert_eq!(
        r.header("host"),
        Some(format!("allowed.test:{port}").as_str()),
        "Host rebuilt from the URI"
    );
    for h in [
        "proxy-authorization",
        "proxy-connection",
        "x-hop",
        "keep-alive",
        "te",
    ] {
        assert_eq!(r.header(h), None, "{h} reached the canary");
    }
    assert_eq!(r.header("x-keep"), Some("yes"));
    let events = p.wait_events(1).await;
    assert_eq!(
        (
            events[0].verdict,
            events[0].method.as_str(),
            events[0].status
        ),
        (Verdict::Allow, "GET", 200)
    );
    assert_eq!(events[0].bytes_down, "hello from canary".len() as u64);
}

#[tokio::test]
async fn post_body_is_forwarded_and_counted() {
    let http = HttpCanary::start().await;
    let port = http.addr.port();
    let p = TestProxy::start(pinned("allowed.test", port), CountingResolver::default()).await;
    let raw = format!("POST http://allowed.test:{port}/up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n");
    let resp = p.exchange(raw.as_bytes()).await;
    assert_eq!(status_of(&resp), 200, "{resp}");
    assert_eq!(http.requests()[0].body, b"hello");
    let events = p.wait_events(1).await;
    assert_eq!(events[0].bytes_up, 5);
}

#[tokio::test]
async fn redirects_are_relayed_not_followed() {
    let http = HttpCanary::start().await;
    let port = http.addr.port();
    let p = TestProxy::start(pinned("allowed.test", port), CountingResolver::default()).await;
    let resp = p
        .exchange(
            format!(
                "GET http://allowed.test:{port}/redirect HTTP/1.1\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
    assert_eq!(status_of(&resp), 302);
    assert_eq!(header_of(&resp, "location"), Some("http://elsewhere.test/"));
    assert_eq!(http.requests().len(), 1);
    assert_eq!(p.resolver.lookups(), 0);
}

#[tokio::test]
async fn smuggling_attempts_never_reach_the_canary_as_a_second_request() {
    let http = HttpCanary::start().await;
    let port = http.addr.port();
    let p = TestProxy::start(pinned("allowed.test", port), CountingResolver::default()).await;
    let smuggled = format!("GET http://allowed.test:{port}/smuggled HTTP/1.1\r\nHost: x\r\n\r\n");
    let attacks = [
        // CL.TE and TE.CL: hyper lets chunked win and closes the connection
        // after the response (RFC 9112 6.3), so the tail is never read.
        format!("POST http://allowed.test:{port}/a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"),
        format!("POST http://allowed.test:{port}/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 100\r\n\r\n0\r\n\r\n{smuggled}"),
        // duplicate, differing Content-Length
        format!("POST http://allowed.test:{port}/a HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: {}\r\n\r\n{smuggled}", smuggled.len()),
        // obs-fold hiding a Transfer-Encoding
        format!("POST http://allowed.test:{port}/a HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nX-Fold: a\r\n Transfer-Encoding: chunked\r\n\r\n{smuggled}"),
        // obfuscated Transfer-Encoding
        format!("POST http://allowed.test:{port}/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n{smuggled}"),
        format!("POST http://allowed.test:{port}/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n{smuggled}"),
    ];
    // The two CL/TE mixes are forwarded once (chunked wins, then close);
    // every other ambiguity is refused. One answer each, never a second.
    let expected = [200, 200, 400, 400, 400, 400];
    for (raw, want) in attacks.iter().zip(expected) {
        let resp = p.exchange(raw.as_bytes()).await;
        assert_eq!(status_of(&resp), want, "{raw:.60}: {resp}");
        assert_eq!(
            resp.matches("HTTP/1.1 ").count(),
            1,
            "a second answer to {raw:.60}: {resp}"
        );
    }
    let seen = http.requests();
    assert_eq!(
        seen.len(),
        2,
        "the canary saw exactly the two forwarded requests: {seen:?}"
    );
    assert!(
        seen.iter().all(|r| r.uri != "/smuggled"),
        "smuggled request reached the canary: {seen:?}"
    );
    for r in &seen {
        assert!(
            r.body.is_empty() || !String::from_utf8_lossy(&r.body).contains("GET "),
            "smuggled bytes forwarded as body: {r:?}"
        );
    }
}

#[tokio::test]
async fn websocket_upgrade_is_relayed() {
    let http = HttpCanary::start().await;
    let port = http.addr.port();
    let p = TestProxy::start(pinned("allowed.test", port), CountingResolver::default()).await;
    let mut s = p.connect().await;
    let raw = format!("GET http://allowed.test:{port}/ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n");
    s.write_all(raw.as_bytes()).await.unwrap();
    let head = read_head(&mut s).await;
    assert_eq!(status_of(&head), 101, "{head}");
    s.write_all(b"frame").await.unwrap();
    let mut buf = [0u8; 5];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"frame");
    assert_eq!(http.requests()[0].header("upgrade"), Some("websocket"));
}

#[tokio::test]
async fn resolver_failures_are_502_or_504_never_a_fallback() {
    let echo = EchoCanary::start().await;
    let port = echo.addr.port();
    let policy = Policy::builder().allow("*.fail.test:*").build().unwrap();
    let p = TestProxy::start(policy.clone(), CountingResolver::default()).await;
    let resp = p
        .exchange(connect_req(&format!("nx.fail.test:{port}")).as_bytes())
        .await;
    assert_eq!(status_of(&resp), 502, "{resp}");
    assert!(header_of(&resp, DENIED_HEADER)
        .unwrap()
        .starts_with("resolve-failed"));

    let hanging = CountingResolver {
        hang: true,
        ..Default::default()
    };
    let mut limits = Limits::default();
    limits.connect_timeout = Duration::from_millis(200);
    let p2 = TestProxy::start_with(policy, hanging, limits).await;
    let resp = p2
        .exchange(connect_req(&format!("slow.fail.test:{port}")).as_bytes())
        .await;
    assert_eq!(status_of(&resp), 504, "{resp}");
    assert_eq!(header_of(&resp, DENIED_HEADER), Some("resolve-timeout"));
    assert!(p.dialer.dialled().is_empty() && p2.dialer.dialled().is_empty());
    assert_eq!(echo.connections(), 0);
    // Not a policy decision: the events say `error`, not allow or deny.
    for (proxy, reason) in [(&p, "resolve-failed"), (&p2, "resolve-timeout")] {
        let e = proxy.wait_events(1).await;
        assert_eq!(e[0].verdict, Verdict::Error, "{e:?}");
        assert!(e[0].reason.as_deref().unwrap().starts_with(reason), "{e:?}");
    }
}

#[tokio::test]
async fn connect_failure_is_502() {
    // Bind then drop, so the port is closed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let p = TestProxy::start(pinned("allowed.test", port), CountingResolver::default()).await;
    let resp = p
        .exchange(connect_req(&format!("allowed.test:{port}")).as_bytes())
        .await;
    assert_eq!(status_of(&resp), 502, "{resp}");
    assert!(header_of(&resp, DENIED_HEADER)
        .unwrap()
        .starts_with("connect-failed"));
    // The reason is in the status line too, which clients print.
    assert!(
        resp.starts_with(
            "HTTP/1.1 502 agent-sandbox could not reach the destination: connect-failed"
        ),
        "{resp}"
    );
    let e = p.wait_events(1).await;
    assert_eq!(
        (e[0].verdict, e[0].status, e[0].via),
        (Verdict::Error, 502, Via::Proxy),
        "{e:?}"
    );
}

#[tokio::test]
async fn connections_over_the_cap_get_503() {
    let mut limits = Limits::default();
    limits.max_connections = 2;
    let p = TestProxy::start_with(Policy::deny_all(), CountingResolver::default(), limits).await;
    let _a = p.connect().await;
    let _b = p.connect().await;
    // Once both are accepted, a third is answered 503 at once (before that
    // it would wait for a request head): poll until it is, generously.
    let mut resp = String::new();
    for _ in 0..100 {
        let mut c = p.connect().await;
        let mut buf = vec![0u8; 4096];
        match tokio::time::timeout(Duration::from_millis(100), c.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {
                resp = String::from_utf8_lossy(&buf[..n]).into_owned();
                break;
            }
            _ => {}
        }
    }
    assert_eq!(status_of(&resp), 503, "{resp}");
    assert_eq!(
        header_of(&resp, DENIED_HEADER),
        Some("too-many-connections")
    );
    drop((_a, _b));
    // The slots come back as the two close: polled, not slept.
    let mut status = 0;
    for _ in 0..100 {
        let resp = p.exchange(b"CONNECT x.test:443 HTTP/1.1\r\n\r\n").await;
        status = status_of(&resp);
        if status == 403 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status, 403, "a slot is free again");
}

#[tokio::test]
async fn slow_request_heads_are_cut_off() {
    let mut limits = Limits::default();
    limits.header_read_timeout = Duration::from_millis(200);
    let p = TestProxy::start_with(Policy::deny_all(), CountingResolver::default(), limits).await;
    let mut s = p.connect().await;
    s.write_all(b"CONNECT slow.test:443 HTTP/1.1\r\nX-A: ")
        .await
        .unwrap();
    let resp = read_to_close(&mut s).await;
    // Closed without an answer once the head is late, and reported.
    assert_eq!(resp, "", "{resp}");
    let events = p.wait_events(1).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(
        (
            events[0].verdict,
            events[0].reason.as_deref(),
            events[0].status
        ),
        (Verdict::Deny, Some("header-read-timeout"), 0)
    );
}

#[tokio::test]
async fn idle_tunnels_are_closed() {
    let echo = EchoCanary::start().await;
    let port = echo.addr.port();
    let mut limits = Limits::default();
    limits.idle_timeout = Duration::from_millis(300);
    let p = TestProxy::start_with(
        pinned("allowed.test", port),
        CountingResolver::default(),
        limits,
    )
    .await;
    let mut s = p.tunnel(&format!("allowed.test:{port}")).await;
    let rest = read_to_close(&mut s).await;
    assert_eq!(rest, "");
    let events = p.wait_events(1).await;
    assert_eq!(events[0].reason.as_deref(), Some("idle-timeout"));
}

#[tokio::test]
async fn unix_socket_listener_serves_connect() {
    let echo = EchoCanary::start().await;
    let port = echo.addr.port();
    let dir = std::env::temp_dir().join(format!("as-proxy-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("proxy.sock");
    let handle = Proxy::builder(pinned("allowed.test", port))
        .start(&Listen::Unix(path.clone()))
        .await
        .unwrap();
    let mut s = tokio::net::UnixStream::connect(&path).await.unwrap();
    s.write_all(connect_req(&format!("allowed.test:{port}")).as_bytes())
        .await
        .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    s.write_all(b"unix").await.unwrap();
    let mut b = [0u8; 4];
    s.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"unix");
    // A second proxy on the same live socket is refused, not silently stolen.
    let second = Proxy::builder(Policy::deny_all())
        .start(&Listen::Unix(path.clone()))
        .await;
    assert_eq!(second.unwrap_err().code(), "bind");
    handle.shutdown().await;
    assert!(!path.exists(), "socket file removed on shutdown");
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn shutdown_closes_open_tunnels() {
    let echo = EchoCanary::start().await;
    let port = echo.addr.port();
    let p = TestProxy::start(pinned("allowed.test", port), CountingResolver::default()).await;
    let mut s = p.tunnel(&format!("allowed.test:{port}")).await;
    p.handle.shutdown().await;
    assert_eq!(read_to_close(&mut s).await, "");
}

/// Connects to a proxy started here (not a `TestProxy`) and sends a
/// CONNECT for `authority`.
async fn send_connect(
    handle: &agent_sandbox::proxy::ProxyHandle,
    authority: &str,
) -> tokio::net::TcpStream {
    let mut s = tokio::net::TcpStream::connect(handle.local_addr().tcp().unwrap())
        .await
        .unwrap();
    s.write_all(connect_req(authority).as_bytes())
        .await
        .unwrap();
    s
}

/// A dialer whose connections never complete (a destination that drops
/// SYNs), so the connect timeout is what answers.
#[derive(Clone, Default)]
struct HangingDialer;

impl agent_sandbox::proxy::Dialer for HangingDialer {
    fn dial(
        &self,
        _addr: std::net::SocketAddr,
    ) -> futures_util::future::BoxFuture<'_, std::io::Result<tokio::net::TcpStream>> {
        Box::pin(std::future::pending())
    }
}

#[tokio::test]
async fn a_connect_that_hangs_is_cut_at_the_connect_timeout_with_its_reason() {
    let echo = EchoCanary::start().await;
    let port = echo.addr.port();
    let mut limits = Limits::default();
    limits.connect_timeout = Duration::from_millis(300);
    let events = Arc::new(std::sync::Mutex::new(Vec::new()));
    let ev = events.clone();
    let handle = Proxy::builder(pinned("allowed.test", port))
        .dialer(HangingDialer)
        .limits(limits)
        .on_event(move |e| ev.lock().unwrap().push(e.clone()))
        .start(&Listen::parse("127.0.0.1:0").unwrap())
        .await
        .unwrap();
    let mut s = send_connect(&handle, &format!("allowed.test:{port}")).await;
    let resp = read_to_close(&mut s).await;
    assert_eq!(status_of(&resp), 504, "{resp}");
    assert_eq!(header_of(&resp, DENIED_HEADER), Some("connect-timeout"));
    assert_eq!(echo.connections(), 0);
    handle.shutdown().await;
    let events = events.lock().unwrap().clone();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(
        (events[0].status, events[0].reason.as_deref()),
        (504, Some("connect-timeout"))
    );
}

/// The real system resolver (no test seam): `localhost` resolves through
/// the machine's own files to loopback, which a CIDR rule allows here, and
/// the tunnel reaches the local canary. Without the CIDR rule the same name
/// is refused as a special address after resolution.
#[tokio::test]
async fn the_system_resolver_path_works_for_a_name_the_machine_resolves() {
    let echo = EchoCanary::start().await;
    let port = echo.addr.port();
    for (cidr, expect) in [(true, 200), (false, 403)] {
        let mut b = Policy::builder().allow(format!("localhost:{port}"));
        if cidr {
            b = b.allow_cidr(format!("127.0.0.1/32:{port}"));
        }
        let handle = Proxy::builder(b.build().unwrap())
            .start(&Listen::parse("127.0.0.1:0").unwrap())
            .await
            .unwrap();
        let mut s = send_connect(&handle, &format!("localhost:{port}")).await;
        let head = read_head(&mut s).await;
        assert_eq!(status_of(&head), expect, "{head}");
        if expect == 403 {
            assert!(
                header_of(&head, DENIED_HEADER)
                    .unwrap()
                    .starts_with("special-address; range=loopback"),
                "{head}"
            );
        }
        drop(s);
        handle.shutdown().await;
    }
    assert_eq!(
        echo.connections(),
        1,
        "only the allowed tunnel reached the canary"
    );
}

/// The listener speaks HTTP/1.1 only: an HTTP/2 prior-knowledge preface
/// gets the connection closed without a byte (no HTTP/2 frame, no
/// settings) and is reported.
#[tokio::test]
async fn http2_prior_knowledge_is_refused() {
    let p = TestProxy::start(Policy::deny_all(), CountingResolver::default()).await;
    let resp = p.exchange(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
    assert_eq!(resp, "", "{resp:?}");
    let events = p.wait_events(1).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(
        (events[0].status, events[0].reason.as_deref()),
        (0, Some("malformed; error=http2-not-served"))
    );
}
