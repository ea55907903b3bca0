//! The `agent-sandbox` command as a user runs it, and the parity of every
//! surface with the core's options.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::Duration;

/// The CLI, with its automatic orphan collection off, so only the tests
/// that exercise a collection remove orphans (see `orphans_are_removed...`).
fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_agent-sandbox"));
    c.env("AGENT_SANDBOX_GC", "off");
    c
}

#[test]
fn bad_rule_exits_2_naming_the_rule() {
    for (flag, rule) in [
        ("--allow", "*.com"),
        ("--allow", "https://allowed.test"),
        ("--allow-cidr", "10.0.0.1/8"),
        ("--resolve", "a.test:443"),
    ] {
        let out = bin()
            .args(["proxy", "--listen", "127.0.0.1:0", flag, rule])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{flag} {rule}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(rule), "stderr names {rule:?}: {err}");
    }
}

#[test]
fn busy_port_exits_1_with_a_clear_message() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = bin()
        .args(["proxy", "--listen", &addr, "--allow", "a.test"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot listen on") && err.contains("in use"),
        "{err}"
    );
}

#[test]
fn proxy_tunnels_writes_audit_json_and_stops_on_sigterm() {
    let echo = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = echo.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in echo.incoming().flatten() {
            let mut s = s;
            let mut buf = [0u8; 64];
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 || s.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    });
    let dir = std::env::temp_dir().join(format!("as-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("audit.jsonl");
    let sock = dir.join("p.sock");
    let mut child = bin()
        .args(["proxy", "--listen", &format!("unix:{}", sock.display())])
        .args([
            "--allow",
            &format!("allowed.test:{port}"),
            "--resolve",
            &format!("allowed.test:{port}:127.0.0.1"),
        ])
        .args(["--audit-log", log.to_str().unwrap()])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    assert!(line.contains("listening on unix:"), "{line}");

    let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "CONNECT allowed.test:{port} HTTP/1.1\r\n\r\nhi").unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while !got.ends_with(b"hi") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got.starts_with(b"HTTP/1.1 200"));
    drop(s);
    let mut d = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    write!(d, "CONNECT denied.test:443 HTTP/1.1\r\n\r\n").unwrap();
    let mut resp = String::new();
    d.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 403"));

    // No wait: the proxy's shutdown lets the tunnel finish and report.
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "clean exit on SIGTERM: {status:?}");
    assert!(!sock.exists(), "socket removed");
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    let allow = lines.iter().find(|e| e["verdict"] == "allow").unwrap();
    assert_eq!(allow["host"], "allowed.test");
    assert_eq!(allow["bytes_up"], 2);
    let deny = lines.iter().find(|e| e["verdict"] == "deny").unwrap();
    assert_eq!(deny["reason"], "no-matching-rule");
    std::fs::remove_dir_all(&dir).ok();
}

fn image() -> String {
    std::env::var("AGENT_SANDBOX_IMAGE").unwrap_or_else(|_| "agent-sandbox/base:bookworm".into())
}

fn workspace(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("as-cli-ws-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    // A root caller's sandbox runs as the workspace's owner and refuses a
    // root-owned workspace: give it to an ordinary user, as a CI job would.
    if std::fs::metadata(&d).is_ok_and(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0) {
        std::os::unix::fs::chown(&d, Some(1000), Some(1000)).unwrap();
    }
    d
}

fn containers_owned_by(pid: u32) -> Vec<String> {
    let out = Command::new("docker")
        .args([
            "ps",
            "-a",
            "--filter",
            "label=agent-sandbox",
            "--format",
            "{{.ID}} {{.Label \"agent-sandbox.owner\"}}",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "docker ps: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&format!(":{pid}:")))
        .map(|l| l.split(' ').next().unwrap_or("").to_owned())
        .collect()
}

#[test]
fn run_passes_the_exit_code_and_reports_refusals() {
    let ws = workspace("exit");
    let out = bin()
        .args(["run", "--image", &image(), "--workspace", ws.to_str().unwrap()])
        .args(["--", "echo to-stdout; curl -s -o /dev/null http://denied.test/; echo to-file > /workspace/f; exit 7"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "to-stdout\n");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("1 network request(s) refused by the policy")
            && err.contains("GET denied.test:80 (no-matching-rule)"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(ws.join("f")).unwrap(), "to-file\n");
    let out = bin()
        .args([
            "run",
            "--image",
            &image(),
            "--workspace",
            ws.to_str().unwrap(),
            "--",
            "printf",
            "%s",
            "a b",
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "a b",
        "several arguments run as given"
    );
}

/// `--secret NAME=ENVVAR@HOST` reads the value from the caller's
/// environment: the sandbox sees a placeholder, a placeholder in clear is
/// refused (the summary says why, with the path), and bad secrets or
/// `--allow-http` rules exit 2 naming the problem.
#[test]
fn secrets_come_from_the_environment_and_never_enter_the_box() {
    let value = "cli-secret-value-77d0";
    let ws = workspace("secret");
    let out = bin()
        .env("AS_CLI_SECRET", value)
        .args([
            "run",
            "--image",
            &image(),
            "--workspace",
            ws.to_str().unwrap(),
        ])
        .args(["--secret", "API_KEY=AS_CLI_SECRET@api.test"])
        .args(["--allow-http", "GET api.test /ok/**"])
        .args([
            "--",
            "echo \"$API_KEY\"; curl -s -o /dev/null -H \"X-Key: $API_KEY\" http://api.test/ok/x",
        ])
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        stdout.starts_with("agent-sandbox-secret-api-key-"),
        "{stdout}{stderr}"
    );
    assert!(!stdout.contains(value) && !stderr.contains(value));
    assert!(
        stderr.contains("GET api.test:80/ok/x (secret-over-plain-http; secret=API_KEY)"),
        "{stderr}"
    );
    for (args, says) in [
        (
            ["--secret", "API_KEY=AS_CLI_UNSET@api.test"],
            "AS_CLI_UNSET is not set",
        ),
        (["--secret", "API_KEY"], "NAME=ENVVAR@HOST"),
        (["--allow-http", "GET api.test"], "METHOD HOST PATH"),
    ] {
        let out = bin()
            .env_remove("AS_CLI_UNSET")
            .args([
                "run",
                "--image",
                &image(),
                "--workspace",
                ws.to_str().unwrap(),
            ])
            .args(args)
            .args(["--", "true"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
    }
}

#[test]
fn run_timeout_exits_124() {
    let ws = workspace("timeout");
    let out = bin()
        .args([
            "run",
            "--image",
            &image(),
            "--workspace",
            ws.to_str().unwrap(),
            "--timeout",
            "1",
            "--",
            "sleep 30",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(124));
    assert!(String::from_utf8_lossy(&out.stderr).contains("timed out"));
}

/// This process's host directories (`agent-sandbox-ID-net-PID.START`).
fn host_dirs_of(pid: u32) -> Vec<String> {
    std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("agent-sandbox-") && n.contains(&format!("-{pid}.")))
        .collect()
}

/// Starts `agent-sandbox ARGS` and waits until its sandbox runs (control:
/// the container and the host directory exist).
fn started(args: &[&str]) -> std::process::Child {
    let mut child = bin()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    for _ in 0..200 {
        if !containers_owned_by(pid).is_empty() && !host_dirs_of(pid).is_empty() {
            return child;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("the sandbox of {args:?} never started");
}

/// Finding: `run` on SIGHUP and `serve --stdio` on SIGTERM/SIGHUP left the
/// container running, and host directories stayed behind. Every mode now
/// cleans up on SIGINT, SIGTERM, SIGHUP and SIGQUIT and exits 128 + signal.
#[test]
fn every_mode_removes_its_sandbox_on_every_signal() {
    let ws = workspace("signals");
    let ws = ws.to_str().unwrap();
    let img = image();
    let modes: [(&str, Vec<&str>); 3] = [
        (
            "run",
            vec!["run", "--image", &img, "--workspace", ws, "--", "sleep 60"],
        ),
        (
            "serve",
            vec!["serve", "--stdio", "--image", &img, "--workspace", ws],
        ),
        ("shell", vec!["shell", "--image", &img, "--workspace", ws]),
    ];
    for (mode, args) in &modes {
        for (sig, n) in [("INT", 2), ("TERM", 15), ("HUP", 1), ("QUIT", 3)] {
            let mut child = started(args);
            let pid = child.id();
            Command::new("kill")
                .args([&format!("-{sig}"), &pid.to_string()])
                .status()
                .unwrap();
            let status = child.wait().unwrap();
            assert_eq!(status.code(), Some(128 + n), "{mode} on SIG{sig}");
            assert!(
                containers_owned_by(pid).is_empty(),
                "{mode} on SIG{sig} left its container"
            );
            assert!(
                host_dirs_of(pid).is_empty(),
                "{mode} on SIG{sig} left {:?}",
                host_dirs_of(pid)
            );
        }
    }
}

/// SIGKILL cannot be caught: the container and the host directory outlive
/// the process, and `gc` removes both.
#[test]
fn gc_removes_what_a_killed_process_left() {
    let ws = workspace("sigkill");
    let mut child = started(&[
        "run",
        "--image",
        &image(),
        "--workspace",
        ws.to_str().unwrap(),
        "--",
        "sleep 60",
    ]);
    let pid = child.id();
    child.kill().unwrap();
    child.wait().unwrap();
    let left = host_dirs_of(pid);
    assert!(!left.is_empty(), "control: SIGKILL left a host directory");
    assert!(
        !containers_owned_by(pid).is_empty(),
        "control: SIGKILL left the container"
    );
    let out = bin().arg("gc").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    for dir in &left {
        assert!(
            printed.contains(dir.as_str()),
            "gc did not report {dir}: {printed}"
        );
    }
    assert!(
        host_dirs_of(pid).is_empty(),
        "gc left {:?}",
        host_dirs_of(pid)
    );
    assert!(containers_owned_by(pid).is_empty(), "gc left the container");
}

/// Finding: one invalid UTF-8 byte ended `serve --stdio` silently. It is a
/// bad request now, and the session goes on.
#[test]
fn serve_answers_invalid_utf8_and_goes_on() {
    let ws = workspace("utf8");
    let mut s = Served::start(&["--workspace", ws.to_str().unwrap()]);
    assert_eq!(s.next()["ready"], true);
    s.stdin
        .write_all(b"{\"id\": 1, \"op\": \"exec\", \"cmd\": \"echo \xff\"}\n")
        .unwrap();
    s.stdin.flush().unwrap();
    let bad = s.next();
    assert_eq!(bad["ok"], false, "{bad}");
    assert_eq!(bad["error"]["code"], "bad_request", "{bad}");
    assert!(
        bad["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not UTF-8"),
        "{bad}"
    );
    let r = s.call(serde_json::json!({"id": 2, "op": "exec", "cmd": "echo still"}));
    assert_eq!(r["stdout"], "still\n", "{r}");
    s.close(3);
}

#[test]
fn docker_unreachable_says_what_to_do() {
    let out = bin()
        .env("DOCKER_HOST", "unix:///nonexistent/agent-sandbox-test.sock")
        .args([
            "run",
            "--image",
            &image(),
            "--workspace",
            workspace("nodocker").to_str().unwrap(),
            "--",
            "true",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Docker is not reachable at unix:///nonexistent/agent-sandbox-test.sock")
            && err.contains("Start the engine"),
        "{err}"
    );
}

/// I/O errors name what was being done and the path (they used to say
/// only "No such file or directory").
#[test]
fn io_errors_name_the_operation_and_the_path() {
    let out = bin()
        .args([
            "run",
            "--audit-log",
            "/nonexistent/as-audit/log.jsonl",
            "--",
            "true",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(
        err.contains("cannot open the audit log /nonexistent/as-audit/log.jsonl: No such file"),
        "{err}"
    );
}

#[test]
fn missing_workspace_exits_2() {
    let out = bin()
        .args([
            "run",
            "--image",
            &image(),
            "--workspace",
            "/nonexistent/ws",
            "--",
            "true",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
}

/// A stopped container labelled as owned by a process that cannot exist.
fn orphan() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let out = Command::new("docker")
        .args(["create", "--label", "agent-sandbox=1", "--label"])
        .arg(format!("agent-sandbox.owner={}:999999999:1", host.trim()))
        .args([&image(), "true"])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn eventually_removed(id: &str) -> bool {
    for _ in 0..50 {
        let out = Command::new("docker")
            .args(["inspect", id])
            .output()
            .unwrap();
        // Gone means the engine says so, not any failure of the command.
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                err.contains("No such object") || err.contains("No such container"),
                "docker inspect: {err}"
            );
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = Command::new("docker").args(["rm", "-f", id]).output();
    false
}

// One test, not two: `gc` running in parallel would hide whether the run
// collected the orphan (other tests' runs may, which is the same feature).
#[test]
fn orphans_are_removed_by_a_later_run_and_by_gc() {
    let id = orphan();
    let out = bin()
        .env_remove("AGENT_SANDBOX_GC")
        .args(["run", "--image", &image(), "--workspace"])
        .arg(workspace("orphans"))
        .args(["--", "true"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        eventually_removed(&id),
        "the orphan {id} outlived a later run"
    );

    let id = orphan();
    let out = bin().arg("gc").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // No other process collects (see `bin`): this gc removed it and says so.
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.contains(&format!("removed {}", &id[..12])),
        "{printed}"
    );
    assert!(eventually_removed(&id), "gc left the orphan {id}");
}

/// `agent-sandbox serve --stdio ARGS`, spoken to in JSON lines.
struct Served {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    out: BufReader<std::process::ChildStdout>,
}

impl Served {
    fn start(args: &[&str]) -> Served {
        let mut child = bin()
            .args(["serve", "--stdio", "--image", &image()])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        Served { child, stdin, out }
    }

    fn next(&mut self) -> serde_json::Value {
        let mut line = String::new();
        self.out.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"))
    }

    /// Sends `req` and returns the next reply.
    fn call(&mut self, req: serde_json::Value) -> serde_json::Value {
        writeln!(self.stdin, "{req}").unwrap();
        self.stdin.flush().unwrap();
        self.next()
    }

    /// Closes the session: a clean reply, a clean exit, nothing left behind.
    fn close(mut self, id: i64) {
        let r = self.call(serde_json::json!({"id": id, "op": "close"}));
        assert_eq!(r["ok"], true);
        assert!(self.child.wait().unwrap().success());
        assert!(containers_owned_by(self.child.id()).is_empty());
    }
}

#[test]
fn serve_stdio_speaks_json_lines() {
    let ws = workspace("serve");
    let mut s = Served::start(&["--workspace", ws.to_str().unwrap()]);
    let ready = s.next();
    assert_eq!(ready["ready"], true);
    let r = s.call(
        serde_json::json!({"id": 1, "op": "exec", "cmd": "echo $X; cat", "env": {"X": "from-env"}, "stdin": "piped"}),
    );
    assert_eq!(
        (r["id"].as_i64(), r["ok"].as_bool(), r["stdout"].as_str()),
        (Some(1), Some(true), Some("from-env\npiped"))
    );
    let r = s.call(
        serde_json::json!({"id": 2, "op": "write_file", "path": "notes/a.txt", "data": "hello"}),
    );
    assert_eq!(r["ok"], true);
    assert_eq!(
        std::fs::read_to_string(ws.join("notes/a.txt")).unwrap(),
        "hello"
    );
    let r =
        s.call(serde_json::json!({"id": 3, "op": "read_file", "path": "/workspace/notes/a.txt"}));
    assert_eq!(r["data"], "hello");
    let r = s.call(serde_json::json!({"id": 4, "op": "read_file", "path": "/etc/passwd"}));
    assert_eq!(
        (r["ok"].as_bool(), r["error"]["code"].as_str()),
        (Some(false), Some("file"))
    );
    let r = s.call(serde_json::json!({"id": 5, "op": "list", "path": "notes"}));
    assert_eq!(r["entries"][0]["name"], "a.txt");
    let r = s.call(serde_json::json!({"id": 6, "op": "allow", "rule": "*.com"}));
    assert_eq!(r["error"]["code"], "policy");
    let r = s.call(serde_json::json!({"id": 7, "op": "nonsense"}));
    assert_eq!(r["error"]["code"], "bad_request");
    // Exec options go through the core's parser: unknown or mistyped ones
    // are refused, naming the option, and nothing runs.
    let r = s.call(serde_json::json!({"id": 8, "op": "exec", "cmd": "touch ran", "timeot": 1}));
    assert_eq!(r["error"]["code"], "invalid_argument", "{r}");
    assert!(r["error"]["message"].as_str().unwrap().contains("timeot"));
    let r = s.call(serde_json::json!({"id": 9, "op": "exec", "cmd": "touch ran", "env": ["A=1"]}));
    assert_eq!(r["error"]["code"], "invalid_argument", "{r}");
    assert!(!ws.join("ran").exists());
    let r =
        s.call(serde_json::json!({"id": 10, "op": "exec", "cmd": "sleep 5", "timeout": "200ms"}));
    assert_eq!(r["timed_out"], true, "{r}");
    // A refusal is in the reply, for the agent to read: through the proxy
    // variables and through capture (no variables: init's DNS and capture).
    let r = s.call(serde_json::json!({"id": 11, "op": "exec",
        "cmd": "curl -s http://denied.test/; env -u http_proxy -u HTTP_PROXY -u all_proxy -u ALL_PROXY curl -s http://captured.test/; true"}));
    let refusals: Vec<(&str, &str, &str)> = r["refusals"]
        .as_array()
        .unwrap_or_else(|| panic!("{r}"))
        .iter()
        .map(|e| {
            (
                e["host"].as_str().unwrap_or_default(),
                e["reason"].as_str().unwrap_or_default(),
                e["via"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        refusals,
        [
            ("denied.test", "no-matching-rule", "proxy"),
            ("captured.test", "no-matching-rule", "capture")
        ],
        "{r}"
    );
    s.close(12);
}

#[test]
fn serve_run_gives_each_command_a_fresh_sandbox() {
    let ws = workspace("serve-run");
    let mut s = Served::start(&["--pool", "2", "--workspace", ws.to_str().unwrap()]);
    let session_id = s.next()["sandbox_id"].as_str().unwrap().to_owned();
    let first = s.call(
        serde_json::json!({"id": 1, "op": "run", "cmd": "echo scratch > /tmp/x; echo $X > /workspace/a; cat; exit 3", "env": {"X": "kept"}, "stdin": "in"}),
    );
    assert_eq!(
        (
            first["ok"].as_bool(),
            first["exit_code"].as_i64(),
            first["stdout"].as_str()
        ),
        (Some(true), Some(3), Some("in")),
        "{first}"
    );
    let second = s.call(
        serde_json::json!({"id": 2, "op": "run", "cmd": "test ! -e /tmp/x && cat /workspace/a"}),
    );
    assert_eq!(second["stdout"], "kept\n", "{second}");
    let ids = [&first["sandbox_id"], &second["sandbox_id"]];
    assert!(ids[0].is_string() && ids[0] != ids[1] && ids[0] != session_id.as_str());
    // The session is a different sandbox: the runs' /tmp never reached it.
    let r =
        s.call(serde_json::json!({"id": 3, "op": "exec", "cmd": "test ! -e /tmp/x && echo clean"}));
    assert_eq!(r["stdout"], "clean\n");
    let r = s.call(serde_json::json!({"id": 4, "op": "run", "cmd": 5}));
    assert_eq!(r["error"]["code"], "bad_request");
    s.close(5);
}

#[test]
fn shell_without_a_terminal_runs_one_command_per_line() {
    let ws = workspace("shell");
    std::fs::create_dir_all(ws.join("sub")).unwrap();
    let mut child = bin()
        .args([
            "shell",
            "--image",
            &image(),
            "--workspace",
            ws.to_str().unwrap(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"echo hello\ncd sub\npwd\ncd /etc\ntouch /etc/x\nexit\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stdout, "hello\n/workspace/sub\n", "{stderr}");
    assert!(
        stderr.contains("not a directory inside /workspace"),
        "{stderr}"
    );
    assert!(stderr.contains("Read-only file system"), "{stderr}");
    assert!(containers_owned_by(pid).is_empty());
}

/// Every option of the core's options layer reaches every surface: the CLI's
/// flags (`--kebab-case`), Python's keyword arguments (snake_case) and
/// Node's types (camelCase, durations as `...Ms`). `serve` takes the exec
/// options by deserializing `ExecOptions` itself (see the serve test), and
/// its sandbox options are the CLI's flags. A new option that one surface
/// lacks fails here.
#[test]
fn every_option_reaches_every_surface() {
    use agent_sandbox::options::{names, ExecOptions, Naming, SandboxOptions};
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap();
    // The text of a block: from `start` to the first `end` after it.
    let block = |text: &str, start: &str, end: &str| -> String {
        let from = text
            .find(start)
            .unwrap_or_else(|| panic!("{start:?} not found"));
        let len = text[from..]
            .find(end)
            .unwrap_or_else(|| panic!("{end:?} not found"));
        text[from..from + len].to_owned()
    };
    let help = bin().args(["run", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    let python = read("python/agent_sandbox/__init__.py");
    let node = read("npm/index.d.ts");
    let serve = read("crates/agent-sandbox-cli/src/serve.rs");
    let mut missing = Vec::new();
    for name in names::<SandboxOptions>() {
        // The spelling: `--policy FILE`.
        let flag = match *name {
            "policy_file" => "--policy".to_owned(),
            _ => format!("--{}", name.replace('_', "-")),
        };
        // Lists take one value per flag: --mount for `mounts`.
        if !help.contains(&format!("{flag} "))
            && !help.contains(&format!("{} ", flag.trim_end_matches('s')))
        {
            missing.push(format!("CLI flag {flag}"));
        }
        if !block(&python, "class Sandbox:", "**unknown").contains(&format!(" {name}:")) {
            missing.push(format!("Python Sandbox(..., {name}=)"));
        }
        let camel = Naming::Camel.spell(name);
        if !block(&node, "interface SandboxOptions {", "}\n").contains(&format!("  {camel}?:")) {
            missing.push(format!("Node SandboxOptions.{camel}"));
        }
    }
    for name in names::<ExecOptions>() {
        for (class, method) in [
            ("class Sandbox:", "def run_async("),
            ("class Session(", "def exec_async("),
            ("class Pool(", "def run_async("),
        ] {
            let sig = block(&python[python.find(class).unwrap()..], method, "**unknown");
            if !sig.contains(&format!(" {name}:")) {
                missing.push(format!("Python {class} {method}..., {name}=)"));
            }
        }
        let camel = Naming::Camel.spell(name);
        if !block(&node, "interface ExecOptions {", "}\n").contains(&format!("  {camel}?:")) {
            missing.push(format!("Node ExecOptions.{camel}"));
        }
        if !block(&serve, "//! - `exec`", "//! - `run`").contains(&format!("`{name}`")) {
            missing.push(format!("serve's documented exec option {name}"));
        }
    }
    assert!(
        missing.is_empty(),
        "options missing from a surface: {missing:#?}"
    );
}
