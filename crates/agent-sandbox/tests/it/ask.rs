//! Asking on a miss, in the in-process proxy: each answer, the timeout, a
//! panicking callback, coalescing, and what is never asked. Every refusal
//! is proven by what did not happen: the canary saw no connection, the
//! resolver no lookup.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::canary::{EchoCanary, HttpCanary};
use crate::support::proxy::*;
use agent_sandbox::ask::{AskAnswer, AskRequest};
use agent_sandbox::policy::Policy;
use agent_sandbox::proxy::{Verdict, DENIED_HEADER};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `asked.test` pinned to the canary but allowed by no rule.
fn unlisted(port: u16) -> Policy {
    Policy::builder()
        .resolve("asked.test", port, "127.0.0.1")
        .build()
        .unwrap()
}

/// A callback that records each request and gives `answer`.
fn recorder(
    answer: AskAnswer,
) -> (
    Arc<Mutex<Vec<AskRequest>>>,
    impl Fn(AskRequest) -> std::future::Ready<AskAnswer> + Send + Sync + 'static,
) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    (seen, move |r| {
        s.lock().unwrap().push(r);
        std::future::ready(answer.clone())
    })
}

async fn connect_status(p: &TestProxy, authority: &str) -> (u16, String, tokio::net::TcpStream) {
    let mut s = p.connect().await;
    let req = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let head = read_head(&mut s).await;
    (status_of(&head), head, s)
}

/// Opens a tunnel to `target`, asserts the 200 and that bytes go through.
async fn tunnel_ok(p: &TestProxy, target: &str) {
    let (status, head, mut s) = connect_status(p, target).await;
    assert_eq!(status, 200, "{head}");
    echo_through(&mut s).await;
}

async fn echo_through(s: &mut tokio::net::TcpStream) {
    s.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
}

#[tokio::test]
async fn allowed_once_reaches_the_host_and_the_next_miss_asks_again() {
    let echo = EchoCanary::start().await;
    let port = echo.addr.port();
    let (seen, f) = recorder(AskAnswer::AllowOnce);
    let p = TestProxy::asking(unlisted(port), Duration::from_secs(5), f).await;
    let target = format!("asked.test:{port}");
    for _ in 0..2 {
        tunnel_ok(&p, &target).await;
    }
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "once means once: {seen:?}");
    let r = &seen[0];
    assert_eq!(
        (
            r.host.as_str(),
            r.port,
            r.method.as_str(),
            r.path.as_deref()
        ),
        ("asked.test", port, "CONNECT", None)
    );
    assert_eq!(r.sandbox_id.as_deref(), Some("test-sandbox"));
    assert_eq!(r.rule, target);
    assert_eq!(
        p.handle.policy().allow_rules().count(),
        0,
        "no rule was added"
    );
    let events = p.wait_events(2).await;
    assert!(
        events.iter().all(|e| e.verdict == Verdict::Allow
            && e.ask.as_deref() == Some("once")
            && e.rule.as_deref() == Some("ask: once")),
        "{events:#?}"
    );
    assert_eq!(echo.connections(), 2);
}

#[tokio::test]
async fn allowed_for_the_sandbox_adds_a_rule_visible_in_the_policy() {
    let echo = EchoCanary::start().await;
    let port = echo.addr.port();
    let (seen, f) = recorder(AskAnswer::AllowSandbox);
    let p = TestProxy::asking(unlisted(port), Duration::from_secs(5), f).await;
    let target = format!("asked.test:{port}");
    for _ in 0..3 {
        tunnel_ok(&p, &target).await;
    }
    assert_eq!(
        seen.lock().unwrap().len(),
        1,
        "asked once, then the rule decides"
    );
    let rules: Vec<String> = p.handle.policy().allow_rules().map(str::to_owned).collect();
    assert_eq!(rules, vec![target.clone()]);
    let events = p.wait_events(3).await;
    assert_eq!(events[0].ask.as_deref(), Some("sandbox"), "{events:#?}");
    assert!(events
        .iter()
        .all(|e| e.rule.as_deref() == Some(target.as_str())));
    assert!(events[1..].iter().all(|e| e.ask.is_none()));
}

#[tokio::test]
async fn denied_with_a_reason_tells_the_client_and_dials_nothing() {
    let echo = EchoCanary::start().await;
    let port = echo.addr.port();
    let (_, f) = recorder(AskAnswer::deny("not needed to build the docs"));
    let p = TestProxy::asking(unlisted(port), Duration::from_secs(5), f).await;
    let resp = p
        .exchange(format!("CONNECT asked.test:{port} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await;
    assert_eq!(status_of(&resp), 403, "{resp}");
    assert_eq!(
        header_of(&resp, DENIED_HEADER),
        Some("ask-denied; reason=not needed to build the docs")
    );
    assert!(resp.contains("not needed to build the docs\n"), "{resp}");
    let events = p.wait_events(1).await;
    assert_eq!(
        (events[0].verdict, events[0].ask.as_deref()),
        (Verdict::Deny, Some("deny"))
    );
    assert_eq!(echo.connections(), 0);
    assert_eq!(p.resolver.lookups(), 0);
    assert!(p.dialer.dialled().is_empty());
}

#[tokio::test]
async fn no_answer_in_time_is_a_deny_that_says_so() {
    let echo = EchoCanary::start().await;
    let port = echo.addr.port();
    let p = TestProxy::asking(unlisted(port), Duration::from_millis(300), |_| async {
        tokio::time::sleep(Duration::from_secs(30)).await;
        AskAnswer::AllowOnce
    })
    .await;
    let started = std::time::Instant::now();
    let resp = p
        .exchange(format!("CONNECT asked.test:{port} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await;
    assert_eq!(status_of(&resp), 403, "{resp}");
    assert_eq!(
        header_of(&resp, DENIED_HEADER),
        Some("ask-timeout; error=no answer within 0.3s")
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the proxy did not wait for the callback"
    );
    let events = p.wait_events(1).await;
    assert_eq!(events[0].ask.as_deref(), Some("timeout"));
    assert_eq!(echo.connections(), 0);
}

#[tokio::test]
async fn a_panicking_callback_is_a_deny_with_its_message_and_the_proxy_goes_on() {
    let echo = EchoCanary::start().await;
    let port = echo.addr.port();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let policy = Policy::builder()
        .resolve("asked.test", port, "127.0.0.1")
        .allow(format!("listed.test:{port}"))
        .resolve("listed.test", port, "127.0.0.1")
        .build()
        .unwrap();
    let p = TestProxy::asking(policy, Duration::from_secs(5), move |_| {
        // Once while making the future, once inside it.
        if c.fetch_add(1, Ordering::SeqCst) == 0 {
            panic!("the dialog crashed");
        }
        async { panic!("the dialog crashed later") }
    })
    .await;
    for want in ["the dialog crashed", "the dialog crashed later"] {
        let resp = p
            .exchange(format!("CONNECT asked.test:{port} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await;
        assert_eq!(status_of(&resp), 403, "{resp}");
        assert_eq!(
            header_of(&resp, DENIED_HEADER),
            Some(format!("ask-denied; reason=the ask callback failed: {want}").as_str())
        );
    }
    tunnel_ok(&p, &format!("listed.test:{port}")).await;
    assert_eq!(echo.connections(), 1, "only the listed host was reached");
    let events = p.wait_events(3).await;
    assert_eq!(
        events
            .iter()
            .filter(|e| e.ask.as_deref() == Some("error"))
            .count(),
        2
    );
}

#[tokio::test]
async fn concurrent_misses_for_one_destination_ask_once() {
    let echo = EchoCanary::start().await;
    let port = echo.addr.port();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let policy = Policy::builder()
        .resolve("asked.test", port, "127.0.0.1")
        .resolve("other.test", port, "127.0.0.1")
        .build()
        .unwrap();
    let p = Arc::new(
        TestProxy::asking(policy, Duration::from_secs(5), move |_| {
            c.fetch_add(1, Ordering::SeqCst);
            async {
                tokio::time::sleep(Duration::from_millis(400)).await;
                AskAnswer::AllowOnce
            }
        })
        .await,
    );
    let mut tasks = Vec::new();
    for i in 0..6 {
        let p = p.clone();
        let host = if i == 5 { "other.test" } else { "asked.test" };
        tasks.push(tokio::spawn(async move {
            tunnel_ok(&p, &format!("{host}:{port}")).await
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "one question per destination"
    );
    assert_eq!(echo.connections(), 6);
}

#[tokio::test]
async fn deny_rules_ip_literals_and_malformed_requests_are_never_asked() {
    let echo = EchoCanary::start().await;
    let port = echo.addr.port();
    let (seen, f) = recorder(AskAnswer::AllowOnce);
    let policy = Policy::builder()
        .deny("denied.test")
        .resolve("denied.test", port, "127.0.0.1")
        .build()
        .unwrap();
    let p = TestProxy::asking(policy, Duration::from_secs(5), f).await;
    for (req, status, reason) in [
        (
            format!("CONNECT denied.test:{port} HTTP/1.1\r\nHost: x\r\n\r\n"),
            403,
            "deny-rule",
        ),
        (
            format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: x\r\n\r\n"),
            403,
            "ip-literal",
        ),
        (
            format!("CONNECT [::1]:{port} HTTP/1.1\r\nHost: x\r\n\r\n"),
            403,
            "ip-literal",
        ),
        (
            "CONNECT bad_name!.test:443 HTTP/1.1\r\nHost: x\r\n\r\n".into(),
            400,
            "malformed",
        ),
        (
            format!("GET http://127.0.0.1:{port}/ HTTP/1.1\r\nHost: x\r\n\r\n"),
            403,
            "ip-literal",
        ),
    ] {
        let resp = p.exchange(req.as_bytes()).await;
        assert_eq!(status_of(&resp), status, "{req}: {resp}");
        let denied = header_of(&resp, DENIED_HEADER).unwrap_or_default();
        assert!(denied.starts_with(reason), "{req}: {resp}");
    }
    assert!(
        seen.lock().unwrap().is_empty(),
        "{:?}",
        seen.lock().unwrap()
    );
    assert_eq!(echo.connections(), 0);
}

/// On a host narrowed by HTTP rules, a request no rule allows is asked
/// about with its method and path; "sandbox" adds an HTTP rule for exactly
/// that method and path.
#[tokio::test]
async fn a_request_no_http_rule_allows_is_asked_with_its_path() {
    let canary = HttpCanary::serving("hello").await;
    let port = canary.port();
    let policy = Policy::builder()
        .allow_http("GET", format!("api.test:{port}"), "/ok/**")
        .resolve("api.test", port, "127.0.0.1")
        .build()
        .unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let p = TestProxy::asking(policy, Duration::from_secs(5), move |r: AskRequest| {
        let answer = if r.path.as_deref() == Some("/new") {
            AskAnswer::AllowSandbox
        } else {
            AskAnswer::deny("only /new")
        };
        s.lock().unwrap().push(r);
        std::future::ready(answer)
    })
    .await;
    let get = |path: &str| {
        format!("GET http://api.test:{port}{path}?q=secret HTTP/1.1\r\nHost: api.test:{port}\r\nConnection: close\r\n\r\n")
    };
    for _ in 0..2 {
        let resp = p.exchange(get("/new").as_bytes()).await;
        assert_eq!(status_of(&resp), 200, "{resp}");
    }
    let resp = p.exchange(get("/admin").as_bytes()).await;
    assert_eq!(status_of(&resp), 403, "{resp}");
    assert_eq!(
        header_of(&resp, DENIED_HEADER),
        Some("ask-denied; reason=only /new")
    );
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(
        (
            seen[0].method.as_str(),
            seen[0].path.as_deref(),
            seen[0].rule.as_str()
        ),
        (
            "GET",
            Some("/new"),
            format!("GET api.test:{port} /new").as_str()
        )
    );
    let rules: Vec<String> = p
        .handle
        .policy()
        .http_rules()
        .iter()
        .map(|r| r.text.clone())
        .collect();
    assert_eq!(
        rules,
        vec![
            format!("GET api.test:{port} /ok/**"),
            format!("GET api.test:{port} /new")
        ]
    );
    let paths: Vec<String> = canary.requests().iter().map(|r| r.uri.clone()).collect();
    assert_eq!(
        paths.len(),
        2,
        "the denied path never reached the host: {paths:?}"
    );
}

/// The agent cannot widen its own box: while a question is open, a process
/// in the sandbox sends crafted answers and rule changes (JSON lines, HTTP
/// requests) to every socket it can reach, and writes a policy file into
/// the workspace. Only the host's callback answers; the policy is what it
/// was; the canary sees nothing; a policy file in the workspace is refused.
#[tokio::test]
async fn nothing_inside_the_sandbox_can_answer_an_ask_or_add_a_rule() {
    let _engine = crate::support::docker::engine_shared().await;
    let canary = HttpCanary::serving("should never be seen").await;
    let port = canary.port();
    let ws = crate::support::docker::tempdir("ask-ws");
    let asked = Arc::new(Mutex::new(Vec::new()));
    let a = asked.clone();
    let session = crate::support::docker::sandbox()
        .workspace(&ws)
        .allow("kept.test")
        .resolve_spec(format!("wait.test:{port}:127.0.0.1"))
        .resolve_spec(format!("evil.test:{port}:127.0.0.1"))
        .on_ask(move |r: AskRequest| {
            a.lock().unwrap().push(r.host.clone());
            async {
                // Long enough for the attempts below to happen meanwhile.
                tokio::time::sleep(Duration::from_secs(4)).await;
                AskAnswer::deny("the host said no")
            }
        })
        .start()
        .await
        .unwrap();
    let script = format!(
        r#"
curl -s -o /dev/null -w 'first=%{{http_code}}\n' http://wait.test:{port}/ &
sleep 1
python3 - <<'PY'
import glob, os, socket, stat
frames = [b'{{"op":"answer","ask_id":1,"answer":"sandbox"}}\n',
          b'{{"event":"answer","id":1,"answer":"once"}}\n{{"op":"allow","rule":"evil.test"}}\n',
          b'POST /answer HTTP/1.1\r\nHost: agent-sandbox\r\nContent-Length: 17\r\n\r\n{{"answer":"once"}}',
          b'\x00\x00\x00\x10' + b'\xff' * 16]
# The net directory is not listable: its sockets are reached by name.
known = ["/.agent-sandbox/net/proxy.sock", "/.agent-sandbox/net/exec.sock"]
found = [p for p in glob.glob("/tmp/**", recursive=True) + glob.glob("/workspace/**", recursive=True)
         if stat.S_ISSOCK(os.lstat(p).st_mode)]
targets = [(socket.AF_UNIX, p) for p in known + found] + [(socket.AF_INET, ("127.0.0.1", 3128))]
for family, addr in targets:
    for f in frames:
        try:
            s = socket.socket(family); s.settimeout(1); s.connect(addr); s.sendall(f)
            try: s.recv(4096)
            except OSError: pass
            s.close()
        except OSError as e:
            print("refused", addr, e)
    print("sent", addr)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for f in frames:
    u.sendto(f, ("127.0.0.53", 53))
print("sent dns")
PY
printf 'allow = ["evil.test", "*.test:*"]\n' > /workspace/agent-sandbox.toml
wait
curl -s -o /dev/null -w 'evil=%{{http_code}}\n' http://evil.test:{port}/
"#
    );
    let out = session.exec(script).await.unwrap();
    let text = out.stdout_str();
    for sent in [
        "sent /.agent-sandbox/net/proxy.sock",
        "sent /.agent-sandbox/net/exec.sock",
        "sent ('127.0.0.1', 3128)",
        "sent dns",
    ] {
        assert!(text.contains(sent), "{sent}: {text}\n{}", out.stderr_str());
    }
    assert!(
        text.contains("first=403") && text.contains("evil=403"),
        "{text}"
    );
    let first = out.refusals().find(|e| e.host == "wait.test").unwrap();
    assert_eq!(
        first.reason.as_deref(),
        Some("ask-denied; reason=the host said no")
    );
    let rules: Vec<String> = session
        .policy()
        .unwrap()
        .allow_rules()
        .map(str::to_owned)
        .collect();
    assert_eq!(
        rules,
        vec!["kept.test".to_owned()],
        "the policy is unchanged"
    );
    assert_eq!(canary.connections(), 0, "nothing was dialled");
    assert_eq!(
        asked.lock().unwrap().clone(),
        vec!["wait.test".to_owned(), "evil.test".to_owned()],
        "only the proxy asked, once per miss"
    );
    // The session still works: nothing it was sent broke it.
    assert_eq!(
        session.exec("echo alive").await.unwrap().stdout_str(),
        "alive\n"
    );
    session.close().await.unwrap();
    // A policy file the sandbox can write is refused, naming why.
    let e = crate::support::docker::sandbox()
        .workspace(&ws)
        .policy_file(ws.join("agent-sandbox.toml"))
        .check()
        .unwrap_err();
    assert!(e.to_string().contains("widen its own box"), "{e}");
}
