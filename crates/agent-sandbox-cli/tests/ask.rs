//! `--ask` as a person and a program use it: the terminal prompt (driven
//! through a pseudo-terminal made by `script`), the policy file `always`
//! writes, `serve --stdio --ask`'s ask events and answers, and `--ask`
//! without a terminal. Every refusal is proven by a server that saw nothing.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

fn bin() -> String {
    env!("CARGO_BIN_EXE_agent-sandbox").to_owned()
}

fn image() -> String {
    std::env::var("AGENT_SANDBOX_IMAGE").unwrap_or_else(|_| "agent-sandbox/base:bookworm".into())
}

fn scratch(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("as-cli-ask-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    if std::fs::metadata(&d).is_ok_and(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0) {
        std::os::unix::fs::chown(&d, Some(1000), Some(1000)).unwrap();
    }
    d
}

/// A plain HTTP server on loopback answering `hello` and counting connections.
fn server() -> (u16, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            c.fetch_add(1, Ordering::SeqCst);
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = s.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
            );
        }
    });
    (port, count)
}

/// Everything `child`'s stdout said so far, read on a thread.
fn collect(out: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let text = Arc::new(Mutex::new(String::new()));
    let t = text.clone();
    std::thread::spawn(move || {
        let mut out = out;
        let mut buf = [0u8; 1024];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            t.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    text
}

fn wait_for(text: &Mutex<String>, what: &str, n: usize) -> String {
    let until = Instant::now() + Duration::from_secs(120);
    loop {
        let now = text.lock().unwrap().clone();
        if now.matches(what).count() >= n {
            return now;
        }
        assert!(
            Instant::now() < until,
            "waited for {n} x {what:?}; got:\n{now}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The prompt comes on the terminal (not the command's output), names the
/// destination and the command; `always` writes the rule into the policy
/// file (comments kept) and the next request passes without a question;
/// `deny` refuses with the reason in the summary, and that server saw nothing.
#[test]
fn ask_prompts_on_the_terminal_and_always_writes_the_policy_file() {
    let (asked, asked_hits) = server();
    let (other, other_hits) = server();
    let dir = scratch("tty");
    // Outside the workspace: a policy file the sandbox can write is refused.
    let policy = scratch("tty-policy").join("policy.toml");
    std::fs::write(
        &policy,
        "# the team's policy\nallow = [] # grows with [a]lways\n",
    )
    .unwrap();
    let script = format!(
        "curl -s http://asked.test:{asked}/; echo; curl -s http://asked.test:{asked}/; echo; curl -s -o /dev/null -w 'other=%{{http_code}}' http://other.test:{other}/; echo"
    );
    let cli = format!(
        "{} run --image {} --workspace {} --ask --policy {} --resolve asked.test:{asked}:127.0.0.1 --resolve other.test:{other}:127.0.0.1 -- \"{script}\"",
        bin(),
        image(),
        dir.display(),
        policy.display()
    );
    let mut child = Command::new("script")
        .args(["-qfec", &cli, "/dev/null"])
        .env("AGENT_SANDBOX_GC", "off")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("script (util-linux) makes the pseudo-terminal");
    let mut answers = child.stdin.take().unwrap();
    let text = collect(child.stdout.take().unwrap());
    let first = wait_for(&text, "[d]eny", 1);
    assert!(
        first.contains(&format!(
            "allow GET asked.test:{asked}/ for 'curl -s http://asked.test:{asked}/;"
        )) && first.contains("[o]nce [s]andbox [a]lways [d]eny"),
        "{first}"
    );
    answers.write_all(b"a\n").unwrap();
    let second = wait_for(&text, "[d]eny", 2);
    assert!(
        second.contains(&format!("allow GET other.test:{other}/")),
        "{second}"
    );
    answers.write_all(b"d\n").unwrap();
    let status = child.wait().unwrap();
    let all = text.lock().unwrap().clone();
    assert!(status.success(), "{all}");
    assert_eq!(
        all.matches("[d]eny").count(),
        2,
        "asked.test was asked once: {all}"
    );
    assert_eq!(all.matches("hello").count(), 2, "{all}");
    assert!(all.contains("other=403"), "{all}");
    assert!(
        all.contains("ask-denied; reason=denied at the terminal"),
        "the summary says why: {all}"
    );
    assert_eq!(asked_hits.load(Ordering::SeqCst), 2);
    assert_eq!(
        other_hits.load(Ordering::SeqCst),
        0,
        "a denied host is never dialled"
    );
    let written = std::fs::read_to_string(&policy).unwrap();
    assert!(written.starts_with("# the team's policy\n"), "{written}");
    assert!(
        written.contains(&format!("\"asked.test:{asked}\"")),
        "{written}"
    );
    // The file works as written: the next run needs no question.
    let out = Command::new(bin())
        .args([
            "run",
            "--image",
            &image(),
            "--workspace",
            dir.to_str().unwrap(),
        ])
        .args(["--policy", policy.to_str().unwrap()])
        .args(["--resolve", &format!("asked.test:{asked}:127.0.0.1")])
        .args(["--", &format!("curl -s http://asked.test:{asked}/")])
        .env("AGENT_SANDBOX_GC", "off")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello", "{out:?}");
}

/// Without a terminal, `--ask` is an error that says what to do instead.
#[test]
fn ask_without_a_terminal_is_an_error() {
    let out = Command::new("setsid")
        .args([
            "-w",
            &bin(),
            "run",
            "--image",
            &image(),
            "--ask",
            "--",
            "true",
        ])
        .env("AGENT_SANDBOX_GC", "off")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--ask") && err.contains("serve --stdio --ask"),
        "{err}"
    );
}

/// `serve --stdio --ask`: each miss is an `ask` event; `answer` decides;
/// `sandbox` shows in the `policy` op; a deny's reason and an expired
/// question reach the exec's refusals; bad answers are bad requests.
#[test]
fn serve_sends_ask_events_and_takes_answers() {
    let (asked, asked_hits) = server();
    let (other, other_hits) = server();
    let mut child = Command::new(bin())
        .args([
            "serve",
            "--stdio",
            "--ask",
            "--ask-timeout",
            "2",
            "--image",
            &image(),
        ])
        .args(["--workspace", scratch("serve").to_str().unwrap()])
        .args(["--resolve", &format!("asked.test:{asked}:127.0.0.1")])
        .args(["--resolve", &format!("other.test:{other}:127.0.0.1")])
        .env("AGENT_SANDBOX_GC", "off")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut next = move || -> Value {
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"))
    };
    let mut send = move |v: Value| {
        writeln!(stdin, "{v}").unwrap();
        stdin.flush().unwrap();
    };
    assert_eq!(next()["ready"], true);
    let curl = |host: &str, port: u16| json!({"op": "exec", "cmd": format!("curl -s -o /dev/null -w '%{{http_code}}' http://{host}:{port}/")});
    let mut exec =
        |id: i64, host: &str, port: u16, answer: Option<Value>, next: &mut dyn FnMut() -> Value| {
            let mut req = curl(host, port);
            req["id"] = json!(id);
            send(req);
            let ask = next();
            assert_eq!(
                (ask["event"].as_str(), ask["host"].as_str()),
                (Some("ask"), Some(host)),
                "{ask}"
            );
            assert_eq!(ask["rule"], format!("{host}:{port}"));
            assert!(ask["command"].as_str().unwrap().contains("curl"), "{ask}");
            let mut replies = Vec::new();
            if let Some(mut a) = answer {
                a["op"] = json!("answer");
                a["id"] = json!(id + 100);
                a["ask_id"] = ask["ask_id"].clone();
                send(a);
                replies.push(next());
            } else {
                let expired = next();
                assert_eq!(
                    expired,
                    json!({"event": "ask_expired", "ask_id": ask["ask_id"]})
                );
            }
            replies.push(next());
            replies.into_iter().find(|r| r["id"] == json!(id)).unwrap()
        };
    let r = exec(
        1,
        "asked.test",
        asked,
        Some(json!({"answer": "sandbox"})),
        &mut next,
    );
    assert_eq!(r["stdout"], "200", "{r}");
    let r = exec(
        2,
        "other.test",
        other,
        Some(json!({"answer": "deny", "reason": "not for this task"})),
        &mut next,
    );
    assert_eq!(r["stdout"], "403", "{r}");
    assert_eq!(
        r["refusals"][0]["reason"], "ask-denied; reason=not for this task",
        "{r}"
    );
    assert_eq!(r["refusals"][0]["ask"], "deny", "{r}");
    let r = exec(3, "other.test", other, None, &mut next);
    assert!(
        r["refusals"][0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("ask-timeout"),
        "{r}"
    );
    // The rule "sandbox" added is in the policy, and decides without asking.
    let mut req = curl("asked.test", asked);
    req["id"] = json!(4);
    send(req);
    let r = next();
    assert_eq!(
        (r["id"].as_i64(), r["stdout"].as_str()),
        (Some(4), Some("200")),
        "{r}"
    );
    send(json!({"id": 5, "op": "policy"}));
    let r = next();
    assert_eq!(
        r["policy"]["allow"],
        json!([format!("asked.test:{asked}")]),
        "{r}"
    );
    for (id, bad) in [
        (6, json!({"op": "answer", "ask_id": 99, "answer": "once"})),
        (7, json!({"op": "answer", "ask_id": 1, "answer": "yes"})),
    ] {
        let mut bad = bad;
        bad["id"] = json!(id);
        send(bad);
        let r = next();
        assert_eq!(r["error"]["code"], "bad_request", "{r}");
    }
    send(json!({"id": 8, "op": "close"}));
    assert_eq!(next()["ok"], true);
    assert!(child.wait().unwrap().success());
    assert_eq!(asked_hits.load(Ordering::SeqCst), 2);
    assert_eq!(other_hits.load(Ordering::SeqCst), 0);
}
