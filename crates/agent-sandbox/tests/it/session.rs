//! Sessions against a real engine: lifecycle, fast exec, policy updates,
//! the file API and its refusals, cleanup.

use std::sync::atomic::Ordering;
use std::time::Duration;

use agent_sandbox::proxy::Verdict;
use agent_sandbox::{ExecOptions, Session};

use crate::support::canary::{EchoCanary, HttpCanary};
use crate::support::docker::{
    assert_oom_killed, container_count, engine_shared, eventually_gone, sandbox, tempdir,
    through_gateway, MEMORY_BOMB,
};

#[tokio::test]
async fn a_session_runs_many_commands_with_per_exec_options() {
    let _engine = engine_shared().await;
    let ws = tempdir("life");
    std::fs::create_dir_all(ws.join("sub")).unwrap();
    let s = sandbox()
        .workspace(&ws)
        .env("FROM_SESSION", "s")
        .start()
        .await
        .unwrap();
    assert_eq!(container_count(s.id()).await, 1);
    for i in 0..20 {
        let out = s.exec(format!("echo {i}; exit {}", i % 3)).await.unwrap();
        assert_eq!(out.stdout_str(), format!("{i}\n"));
        assert_eq!(out.exit_code, i % 3);
    }
    let out = s
        .exec_with(
            "echo $FROM_SESSION $PER_EXEC $(pwd); cat",
            ExecOptions::new()
                .env("PER_EXEC", "e")
                .workdir("sub")
                .stdin("from stdin"),
        )
        .await
        .unwrap();
    assert_eq!(out.stdout_str(), "s e /workspace/sub\nfrom stdin");
    let out = s.exec(["/no/such/program"]).await.unwrap();
    assert_eq!(out.exit_code, 127);
    assert!(out.stderr_str().contains("/no/such/program"));
    let err = s
        .exec_with("true", ExecOptions::new().workdir("/etc"))
        .await
        .expect_err("workdir must be inside /workspace");
    assert_eq!(err.code(), "invalid_argument", "{err}");
    assert!(err.to_string().contains("not inside /workspace"), "{err}");
    let out = s.exec("id -u").await.unwrap();
    let me = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&ws).unwrap());
    assert_eq!(
        out.stdout_str().trim(),
        me.to_string(),
        "execs run as the sandbox user"
    );
    s.close().await.unwrap();
    assert_eq!(container_count(s.id()).await, 0);
    assert_eq!(s.exec("true").await.unwrap_err().code(), "session_closed");
    s.close().await.unwrap();
}

#[tokio::test]
async fn concurrent_execs_do_not_mix() {
    let _engine = engine_shared().await;
    let s = sandbox().start().await.unwrap();
    let runs = (0..6).map(|i| {
        let s = s.clone();
        async move {
            s.exec(format!("sleep 0.3; echo {i}; echo err{i} >&2"))
                .await
                .unwrap()
        }
    });
    let outs = futures_util::future::join_all(runs).await;
    for (i, o) in outs.iter().enumerate() {
        assert_eq!(o.stdout_str(), format!("{i}\n"));
        assert_eq!(o.stderr_str(), format!("err{i}\n"));
    }
    s.close().await.unwrap();
}

#[tokio::test]
async fn background_processes_live_until_close_and_not_after() {
    let _engine = engine_shared().await;
    let s = sandbox().start().await.unwrap();
    let out = s
        .exec("sleep 1000 >/dev/null 2>&1 & echo started")
        .await
        .unwrap();
    assert_eq!(out.stdout_str(), "started\n");
    let out = s
        .exec("pgrep -x sleep >/dev/null && echo alive")
        .await
        .unwrap();
    assert_eq!(
        out.stdout_str(),
        "alive\n",
        "a background process outlives its exec"
    );
    s.close().await.unwrap();
    assert_eq!(
        container_count(s.id()).await,
        0,
        "and not the session: the container is gone"
    );
}

/// Whether no `sleep` runs in the session, polled for up to 10 s (a kill
/// is at once; the deadline is for a busy machine).
async fn no_sleep_left(s: &Session) -> bool {
    for _ in 0..100 {
        let left = s.exec("pgrep -x sleep || echo none").await.unwrap();
        if left.stdout_str() == "none\n" {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test]
async fn exec_timeout_kills_the_whole_process_group() {
    let _engine = engine_shared().await;
    let s = sandbox().start().await.unwrap();
    let out = s
        .exec_with(
            "trap '' TERM; (sleep 77 &); sleep 78; echo NOT",
            ExecOptions::new().timeout(Duration::from_secs(1)),
        )
        .await
        .unwrap();
    assert!(out.timed_out);
    assert!(!out.stdout_str().contains("NOT"));
    assert!(
        no_sleep_left(&s).await,
        "nothing of the timed-out exec is left"
    );
    s.close().await.unwrap();
}

#[tokio::test]
async fn policy_updates_apply_to_new_connections() {
    let _engine = engine_shared().await;
    let canary = HttpCanary::serving("ok").await;
    let port = canary.port();
    let pin = format!("late.test:{port}:127.0.0.1");
    let s = sandbox().resolve_spec(&pin).start().await.unwrap();
    let mut feed = s.subscribe();
    let curl = format!("curl -s -o /dev/null -w '%{{http_code}}' http://late.test:{port}/");
    assert_eq!(s.exec(curl.as_str()).await.unwrap().stdout_str(), "403");
    assert_eq!(canary.connections(), 0);
    let rule = format!("late.test:{port}");
    s.update_policy(|p| p.allow(rule.clone())).unwrap();
    assert_eq!(
        s.exec(curl.as_str()).await.unwrap().stdout_str(),
        "200",
        "a denied name is now allowed"
    );
    assert_eq!(canary.connections(), 1);
    s.update_policy(|p| p.remove(&rule)).unwrap();
    assert_eq!(
        s.exec(curl.as_str()).await.unwrap().stdout_str(),
        "403",
        "and denied again"
    );
    assert_eq!(
        canary.connections(),
        1,
        "the canary saw only the allowed request"
    );
    assert!(
        s.update_policy(|p| p.allow("*.com")).is_err(),
        "a malformed rule is refused"
    );
    let verdicts: Vec<Verdict> = s.events().iter().map(|e| e.verdict).collect();
    assert_eq!(verdicts, vec![Verdict::Deny, Verdict::Allow, Verdict::Deny]);
    let first = tokio::time::timeout(Duration::from_secs(5), feed.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.verdict, Verdict::Deny);
    s.close().await.unwrap();
}

/// Capture follows the policy: a port a new rule names is listened on for
/// names already resolved (and for later ones), and a removed rule's port
/// is closed again; the canary sees only the allowed connection.
#[tokio::test]
async fn capture_ports_follow_policy_updates() {
    let _engine = engine_shared().await;
    let echo = EchoCanary::start().await;
    let port = echo.addr.port();
    let s = sandbox()
        .resolve("raw.test", port, "127.0.0.1")
        .start()
        .await
        .unwrap();
    let nc = format!(
        "unset HTTP_PROXY HTTPS_PROXY ALL_PROXY http_proxy https_proxy all_proxy; \
         getent hosts raw.test >/dev/null; echo \"got:[$( (echo ping; sleep 1) | nc -w 3 raw.test {port})]\""
    );
    let got = |out: agent_sandbox::Output| out.stdout_str().trim().to_owned();
    assert_eq!(
        got(s.exec(nc.as_str()).await.unwrap()),
        "got:[]",
        "no rule, no listener"
    );
    let rule = format!("raw.test:{port}");
    s.update_policy(|p| p.allow(rule.clone())).unwrap();
    let out = s.exec(nc.as_str()).await.unwrap();
    assert_eq!(got(out), "got:[ping]", "the new port is captured at once");
    assert_eq!(echo.connections(), 1);
    s.update_policy(|p| p.remove(&rule)).unwrap();
    let out = s.exec(nc.as_str()).await.unwrap();
    assert_eq!(got(out), "got:[]", "and refused again");
    assert_eq!(echo.connections(), 1, "the canary saw only the allowed one");
    s.close().await.unwrap();
}

#[tokio::test]
async fn files_round_trip_in_the_workspace_and_tmp() {
    let _engine = engine_shared().await;
    let ws = tempdir("files");
    let s = sandbox().workspace(&ws).start().await.unwrap();
    s.write_file("dir/a.txt", b"alpha".to_vec()).await.unwrap();
    let copy = through_gateway().await;
    if !copy {
        assert_eq!(
            std::fs::read(ws.join("dir/a.txt")).unwrap(),
            b"alpha",
            "written on the host side"
        );
    }
    assert_eq!(
        s.exec("cat dir/a.txt").await.unwrap().stdout_str(),
        "alpha",
        "visible inside"
    );
    assert_eq!(s.read_file("/workspace/dir/a.txt").await.unwrap(), b"alpha");
    s.exec("echo -n beta > dir/b.txt").await.unwrap();
    let names: Vec<(String, &str)> = s
        .list("dir")
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.name, e.kind))
        .collect();
    assert_eq!(
        names,
        vec![("a.txt".into(), "file"), ("b.txt".into(), "file")]
    );
    s.remove("dir/a.txt").await.unwrap();
    assert!(s.read_file("dir/a.txt").await.is_err());
    assert!(!ws.join("dir/a.txt").exists());
    s.write_file("/tmp/t/x.bin", vec![0u8, 1, 2, 255])
        .await
        .unwrap();
    assert_eq!(
        s.read_file("/tmp/t/x.bin").await.unwrap(),
        vec![0u8, 1, 2, 255]
    );
    let listed = s.list("/tmp/t").await.unwrap();
    assert_eq!(
        (listed[0].name.as_str(), listed[0].kind, listed[0].size),
        ("x.bin", "file", 4)
    );
    s.remove("/tmp/t/x.bin").await.unwrap();
    assert!(s.read_file("/tmp/t/x.bin").await.is_err());
    s.close().await.unwrap();
    // In the caller's directory (through a gateway: copied back at close).
    assert_eq!(std::fs::read(ws.join("dir/b.txt")).unwrap(), b"beta");
    assert!(!ws.join("dir/a.txt").exists(), "copy: {copy}");
}

#[tokio::test]
async fn host_side_file_access_never_leaves_the_workspace() {
    let _engine = engine_shared().await;
    let ws = tempdir("escape");
    let outside = tempdir("secret");
    std::fs::write(outside.join("id_rsa"), b"SECRET KEY").unwrap();
    // Plants from the host side (before the start, so that a workspace
    // copied to the engine has them too); and made from inside, as an
    // agent would.
    std::fs::create_dir(ws.join("d")).unwrap();
    std::os::unix::fs::symlink(outside.join("id_rsa"), ws.join("key")).unwrap();
    std::os::unix::fs::symlink(&outside, ws.join("d/up")).unwrap();
    let s = sandbox().workspace(&ws).start().await.unwrap();
    s.exec("ln -s /etc link && ln -s /etc/passwd pw && mkfifo fifo && ln -s /tmp/target out")
        .await
        .unwrap();
    for path in [
        "link/passwd",
        "pw",
        "key",
        "d/up/id_rsa",
        "../secret",
        "/etc/passwd",
        "/workspace/../etc/passwd",
        "fifo",
        "d",
    ] {
        let e = s.read_file(path).await.expect_err(path);
        assert_eq!(e.code(), "file", "{path}: {e}");
    }
    for path in [
        "out",
        "key",
        "link/new",
        "d/up/planted",
        "fifo",
        "/etc/x",
        "../x",
    ] {
        let e = s.write_file(path, b"x".to_vec()).await.expect_err(path);
        assert_eq!(e.code(), "file", "{path}: {e}");
    }
    // Control: a plain write in the same session works.
    s.write_file("plain", b"x".to_vec()).await.unwrap();
    assert_eq!(s.read_file("plain").await.unwrap(), b"x");
    assert_eq!(
        std::fs::read(outside.join("id_rsa")).unwrap(),
        b"SECRET KEY",
        "the target was not touched"
    );
    assert!(!outside.join("planted").exists());
    let e = s.list("link").await.expect_err("a listing through a link");
    assert!(e.to_string().contains("symbolic link"), "{e}");
    // The channel's host directory is read-only inside: nothing to fill, no link to plant.
    let ro = s.exec("touch /.agent-sandbox/net/x 2>/dev/null || ln -s / /.agent-sandbox/net/exec.sock 2>/dev/null || echo read-only").await.unwrap();
    assert_eq!(ro.stdout_str(), "read-only\n");
    let e = s.list("d/up").await.expect_err("a listing through a link");
    assert!(e.to_string().contains("symbolic link"), "{e}");
    s.remove("key").await.unwrap();
    assert!(
        outside.join("id_rsa").exists(),
        "removing a link removes the link, not its target"
    );
    s.close().await.unwrap();
    assert_eq!(std::fs::read(ws.join("plain")).unwrap(), b"x");
    assert_eq!(
        std::fs::read(outside.join("id_rsa")).unwrap(),
        b"SECRET KEY",
        "the target was not touched, copied back or not"
    );
    assert!(!outside.join("planted").exists());
}

#[tokio::test]
async fn dropping_a_session_without_close_removes_it() {
    let _engine = engine_shared().await;
    let s = sandbox().start().await.unwrap();
    let id = s.id().to_owned();
    assert_eq!(container_count(&id).await, 1);
    drop(s);
    assert!(eventually_gone(&id).await, "no leak after drop");
}

#[tokio::test]
async fn an_idle_session_closes_itself() {
    let _engine = engine_shared().await;
    let s = sandbox()
        .idle_timeout(Some(Duration::from_millis(300)))
        .start()
        .await
        .unwrap();
    s.exec("true").await.unwrap();
    assert!(eventually_gone(s.id()).await);
    assert!(s.is_closed());
    assert_eq!(s.exec("true").await.unwrap_err().code(), "session_closed");
}

#[tokio::test]
async fn docker_exec_fallback_works() {
    let _engine = engine_shared().await;
    let s = sandbox().start().await.unwrap();
    let out = s
        .exec_docker(["sh", "-c", "echo via-engine; echo e >&2; exit 4"])
        .await
        .unwrap();
    assert_eq!(
        (
            out.exit_code,
            out.stdout_str().as_str(),
            out.stderr_str().as_str()
        ),
        (4, "via-engine\n", "e\n")
    );
    s.close().await.unwrap();
}

#[tokio::test]
async fn fifty_sessions_at_once_all_close_cleanly() {
    let _engine = engine_shared().await;
    let starts = (0..50).map(|_| async { sandbox().memory(64 << 20).start().await.unwrap() });
    let sessions: Vec<Session> = futures_util::future::join_all(starts).await;
    let outs = futures_util::future::join_all(
        sessions
            .iter()
            .enumerate()
            .map(|(i, s)| async move { s.exec(format!("echo {i}")).await.unwrap() }),
    )
    .await;
    for (i, o) in outs.iter().enumerate() {
        assert_eq!(
            o.stdout_str(),
            format!("{i}\n"),
            "exit {} oom {} {}",
            o.exit_code,
            o.oom_killed,
            o.stderr_str()
        );
    }
    futures_util::future::join_all(sessions.iter().map(|s| s.close()))
        .await
        .into_iter()
        .for_each(|r| r.unwrap());
    for s in &sessions {
        assert_eq!(container_count(s.id()).await, 0);
    }
}

#[tokio::test]
async fn dropping_an_exec_future_stops_its_command() {
    let _engine = engine_shared().await;
    let s = sandbox().start().await.unwrap();
    let started = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = started.clone();
    // Boxed, so that `drop` below really drops the future.
    let mut exec = Box::pin(s.exec_with(
        "echo started; exec sleep 61",
        ExecOptions::new().on_stdout(move |b| {
            if String::from_utf8_lossy(b).contains("started") {
                seen.store(true, Ordering::SeqCst);
            }
        }),
    ));
    // Control: the command really runs before the cut.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !started.load(Ordering::SeqCst) {
        assert!(
            std::time::Instant::now() < deadline,
            "the command never started"
        );
        tokio::select! {
            r = exec.as_mut() => panic!("the exec ended on its own: {r:?}"),
            () = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
    let running = s.exec("pgrep -x sleep").await.unwrap();
    assert_eq!(
        running.exit_code, 0,
        "control: sleep is running before the cut"
    );
    drop(exec);
    assert!(no_sleep_left(&s).await, "the abandoned command was killed");
    s.close().await.unwrap();
}

#[tokio::test]
async fn failed_spawns_do_not_break_the_session() {
    let _engine = engine_shared().await;
    // std reaps its own failed child inside Command::spawn; PID 1 must not
    // steal it (that once aborted init and with it the whole session).
    let s = sandbox().start().await.unwrap();
    for _ in 0..50 {
        let out = s.exec(["/no/such/program"]).await.unwrap();
        assert_eq!(out.exit_code, 127);
    }
    assert!(s.exec("true").await.unwrap().success());
    s.close().await.unwrap();
}

#[tokio::test]
async fn an_exec_killed_by_the_memory_limit_says_so() {
    let _engine = engine_shared().await;
    let s = sandbox().memory(64 << 20).start().await.unwrap();
    let out = s.exec(MEMORY_BOMB).await.unwrap();
    assert_oom_killed(&out);
    // The session lives on, and a plain SIGKILL is not reported as OOM.
    let out = s.exec("kill -9 $$").await.unwrap();
    assert_eq!(out.exit_code, 137);
    assert!(!out.oom_killed);
    s.close().await.unwrap();
}

#[test]
fn a_session_dropped_outside_any_runtime_is_still_removed() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _engine = rt.block_on(engine_shared());
    let s = rt.block_on(sandbox().start()).unwrap();
    let id = s.id().to_owned();
    // The runtime that started it is gone, and none is current at the drop.
    drop(rt);
    drop(s);
    let rt = tokio::runtime::Runtime::new().unwrap();
    assert!(rt.block_on(eventually_gone(&id)), "{id} left behind");
}

/// Finding: with the pids limit exhausted, a proxy connection or an exec
/// made PID 1 panic (no thread to be had) and the session died. Now init
/// refuses that connection (503) and that exec (exit 125, its reason on
/// stderr), keeps serving, and the session recovers once pids free up.
#[tokio::test]
async fn exhausting_pids_refuses_work_but_never_kills_the_session() {
    let _engine = engine_shared().await;
    let ws = tempdir("pids");
    // The bomb reports on its stdout and lets go on SIGUSR1: both reach it
    // over the exec channel while nothing new can start (no file is read
    // on the host, so the same test holds where the workspace is a copy).
    let bomb = r#"
import os, signal, socket, sys, time
kids = []
released = []
signal.signal(signal.SIGUSR1, lambda *_: released.append(1))
def fill():
    while True:
        try:
            pid = os.fork()
        except OSError:
            return
        if pid == 0:
            time.sleep(20)
            os._exit(0)
        kids.append(pid)
fill()
first = b""
try:
    fill()
    c = socket.create_connection(("127.0.0.1", 3128), timeout=5)
    c.sendall(b"GET http://x.test/ HTTP/1.1\r\nHost: x.test\r\n\r\n")
    first = c.recv(200).split(b"\r\n")[0]
except Exception as e:
    first = repr(e).encode()
sys.stdout.write("exhausted %d\n%s\nreported\n" % (len(kids), first.decode(errors="replace")))
sys.stdout.flush()
while not released:
    time.sleep(0.05)
for k in kids:
    os.kill(k, 9)
for k in kids:
    os.waitpid(k, 0)
print("released")
"#;
    std::fs::write(ws.join("bomb.py"), bomb).unwrap();
    let s = sandbox().workspace(&ws).pids(64).start().await.unwrap();
    let p = s
        .spawn(
            ["python3", "/workspace/bomb.py"],
            agent_sandbox::ExecOptions::new(),
        )
        .await
        .unwrap();
    let mut said = String::new();
    let mut cursor = 0;
    let mut until = async |what: &str| {
        while !said.contains(what) {
            let chunk = tokio::time::timeout(Duration::from_secs(30), p.next_chunk(&mut cursor))
                .await
                .unwrap_or_else(|_| panic!("the bomb never said {what:?}: {said}"))
                .unwrap_or_else(|| panic!("the bomb ended before {what:?}: {said}"));
            said.push_str(&String::from_utf8_lossy(&chunk.data));
        }
        said.clone()
    };
    let report = until("reported\n").await;
    assert!(
        report
            .lines()
            .nth(1)
            .unwrap_or_default()
            .starts_with("HTTP/1.1 503"),
        "{report}"
    );
    // An exec while nothing can start: refused, not fatal.
    let refused = s.exec("true").await.unwrap();
    assert!(
        refused.exit_code == 125 || refused.exit_code == 126,
        "exit {} {}",
        refused.exit_code,
        refused.stderr_str()
    );
    p.signal(10); // SIGUSR1
    until("released").await;
    let after = s.exec("echo recovered").await.unwrap();
    assert_eq!(after.stdout_str(), "recovered\n", "{}", after.stderr_str());
    s.close().await.unwrap();
}

/// Finding: `kill -TERM 1` from inside ended a session. Signals sent to
/// PID 1 from inside the sandbox are ignored (the engine's still stop it:
/// every close and timeout test covers that).
#[tokio::test]
async fn processes_inside_cannot_signal_init() {
    let _engine = engine_shared().await;
    let s = sandbox().start().await.unwrap();
    let out = s
        .exec("for sig in TERM HUP INT QUIT USR1; do kill -s $sig 1; echo sent-$sig=$?; done; sleep 0.3; echo alive")
        .await
        .unwrap();
    let text = out.stdout_str();
    // Control: the signals were delivered (kill succeeded)...
    for sig in ["TERM", "HUP", "INT", "QUIT", "USR1"] {
        assert!(text.contains(&format!("sent-{sig}=0")), "{text}");
    }
    assert!(text.contains("alive"), "{text}");
    // ...and the session still serves.
    assert_eq!(s.exec("echo still").await.unwrap().stdout_str(), "still\n");
    // rt_sigqueueinfo lets a sender forge si_pid 0 (the engine's), but not
    // kill(2)'s si_code; and killing the pause child does not end init.
    let forge = r#"
import ctypes, struct
b = ctypes.create_string_buffer(128)
struct.pack_into("iii", b, 0, 15, 0, -1)
libc = ctypes.CDLL(None, use_errno=True)
print("queued", libc.syscall(129, 1, 15, b), ctypes.get_errno())
"#;
    let out = s.exec(["python3", "-c", forge]).await.unwrap();
    assert_eq!(
        out.stdout_str(),
        "queued 0 0\n",
        "control: delivered {}",
        out.stderr_str()
    );
    let out = s
        .exec("pkill -9 -f 'init --paus[e]' && echo killed; sleep 0.3; echo alive")
        .await
        .unwrap();
    assert_eq!(out.stdout_str(), "killed\nalive\n", "{}", out.stderr_str());
    assert_eq!(s.exec("echo still").await.unwrap().stdout_str(), "still\n");
    s.close().await.unwrap();
}

/// PID 1 is not dumpable: no process inside can read its memory or
/// environment or ptrace it. (runc; gVisor's /proc keeps its own rules.)
#[tokio::test]
async fn processes_inside_cannot_trace_init() {
    let _engine = engine_shared().await;
    let s = sandbox().start().await.unwrap();
    let probe = r#"
import ctypes, os
print("self-environ", len(open("/proc/self/environ", "rb").read()) > 0)
try:
    open("/proc/1/environ", "rb").read()
    print("init-environ READ")
except OSError as e:
    print("init-environ", e.errno)
libc = ctypes.CDLL(None, use_errno=True)
r = libc.ptrace(16, 1, 0, 0)
print("ptrace", r, ctypes.get_errno())
"#;
    let out = s.exec(["python3", "-c", probe]).await.unwrap();
    let text = out.stdout_str();
    assert!(
        text.contains("self-environ True"),
        "control: {text} {}",
        out.stderr_str()
    );
    assert!(text.contains("init-environ 13"), "{text}");
    assert!(text.contains("ptrace -1 1"), "{text}");
    s.close().await.unwrap();
}

/// Finding: the exec hub read each new connection's first frame in its
/// accept loop, so idle connections from inside stalled every exec. Now
/// handshakes run in their own tasks (a bounded number at once).
#[tokio::test]
async fn idle_connections_to_the_exec_socket_do_not_stall_execs() {
    let _engine = engine_shared().await;
    let s = sandbox().start().await.unwrap();
    let hold = r#"
import socket, time
held = []
for _ in range(300):
    c = socket.socket(socket.AF_UNIX)
    c.connect("/.agent-sandbox/net/exec.sock")
    held.append(c)
print(len(held), flush=True)
time.sleep(30)
"#;
    let out = s
        .exec_with(
            ["sh", "-c", "python3 -c \"$0\" > /tmp/held & while [ ! -s /tmp/held ]; do sleep 0.05; done; cat /tmp/held", hold],
            ExecOptions::new().timeout(Duration::from_secs(20)),
        )
        .await
        .unwrap();
    assert_eq!(
        out.stdout_str(),
        "300\n",
        "control: the idle connections were made: {}",
        out.stderr_str()
    );
    // Each idle connection used to hold the hub for a second.
    let t = std::time::Instant::now();
    for _ in 0..3 {
        let out = s
            .exec_with(
                "echo ok",
                ExecOptions::new().timeout(Duration::from_secs(10)),
            )
            .await
            .unwrap();
        assert_eq!(out.stdout_str(), "ok\n");
    }
    eprintln!("3 execs beside 300 idle connections: {:?}", t.elapsed());
    s.close().await.unwrap();
}

/// Finding: `ln -s /dev/zero /tmp/notes.txt` + `read_file` streamed 1 GB/s
/// into the host, and a sparse 6 GB workspace file was read whole. Every
/// read is capped by the file limit and fails naming it; links and FIFOs
/// are refused inside the sandbox as on the host side.
#[tokio::test]
async fn file_reads_are_capped_by_the_file_limit() {
    let _engine = engine_shared().await;
    let ws = tempdir("filecap");
    let s = sandbox()
        .workspace(&ws)
        .file_limit(1 << 20)
        .start()
        .await
        .unwrap();
    // Controls: small files read back on both sides.
    s.write_file("/tmp/small", "x").await.unwrap();
    assert_eq!(s.read_file("/tmp/small").await.unwrap(), b"x");
    s.exec("echo -n y > small").await.unwrap();
    assert_eq!(s.read_file("small").await.unwrap(), b"y");
    let out = s
        .exec("ln -s /dev/zero /tmp/notes.txt && truncate -s 6G /workspace/sparse /tmp/sparse && mkfifo /tmp/fifo && echo planted")
        .await
        .unwrap();
    assert_eq!(out.stdout_str(), "planted\n", "{}", out.stderr_str());
    // A link is never followed (not even inside), a device never opened.
    let err = s.read_file("/tmp/notes.txt").await.unwrap_err();
    assert!(err.to_string().contains("symbolic link"), "{err}");
    // A FIFO would block a read forever: refused before it is opened.
    let err = s.read_file("/tmp/fifo").await.unwrap_err();
    assert!(err.to_string().contains("not a regular file"), "{err}");
    for path in ["/tmp/sparse", "sparse"] {
        let err = s.read_file(path).await.unwrap_err();
        assert_eq!(err.code(), "file", "{path}: {err}");
        assert!(
            err.to_string().contains("file limit of 1048576 bytes"),
            "{path}: {err}"
        );
    }
    assert!(s
        .read_file("sparse")
        .await
        .unwrap_err()
        .to_string()
        .contains("6442450944 bytes"));
    // Not 6 GB for a gateway to copy back.
    s.exec("rm sparse").await.unwrap();
    s.close().await.unwrap();
}

/// Listings are bounded (10,000 entries) and say when they were cut, on
/// the host side and inside the sandbox alike.
#[tokio::test]
async fn listings_are_bounded_and_say_so() {
    let _engine = engine_shared().await;
    let ws = tempdir("listcap");
    let s = sandbox().workspace(&ws).start().await.unwrap();
    let out = s
        .exec("mkdir big /tmp/big && cd big && seq 10001 | xargs touch && cd /tmp/big && seq 10001 | xargs touch && echo made")
        .await
        .unwrap();
    assert_eq!(out.stdout_str(), "made\n", "{}", out.stderr_str());
    s.exec("mkdir small /tmp/small && touch small/a small/b /tmp/small/a")
        .await
        .unwrap();
    for (path, small) in [("big", "small"), ("/tmp/big", "/tmp/small")] {
        let big = s.listing(path).await.unwrap();
        assert_eq!(big.entries.len(), 10_000, "{path}");
        assert!(big.truncated, "{path}");
        // Control: a small directory is whole and not marked.
        let small = s.listing(small).await.unwrap();
        assert!(!small.truncated && !small.entries.is_empty(), "{path}");
    }
    assert!(s.listing("/tmp/missing").await.is_err());
    s.close().await.unwrap();
}

/// `sync_back` copies a gateway's workspace back mid-session (and is
/// nothing to do with a bind mount); with `skip_gitignored`, what the
/// workspace's `.gitignore` ignores neither goes in nor comes back.
#[tokio::test]
async fn sync_back_and_gitignored_paths() {
    let _engine = engine_shared().await;
    let ws = tempdir("sync");
    std::fs::create_dir_all(ws.join("target")).unwrap();
    std::fs::write(ws.join(".gitignore"), "target/\n*.log\n").unwrap();
    std::fs::write(ws.join("target/big"), "built here").unwrap();
    std::fs::write(ws.join("a.log"), "log").unwrap();
    std::fs::write(ws.join("src.txt"), "v1").unwrap();
    // Everything the workspace's owner's, as a checkout would be.
    let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&ws).unwrap());
    let chown = std::process::Command::new("chown")
        .args(["-R", &format!("{owner}:{owner}")])
        .arg(&ws)
        .status()
        .unwrap();
    assert!(chown.success());
    let s = sandbox()
        .workspace(&ws)
        .skip_gitignored(true)
        .start()
        .await
        .unwrap();
    let seen = s
        .exec("ls -A | sort | tr '\\n' ' '; echo v2 > src.txt; echo new > new.txt; mkdir -p target; echo box > target/out; echo l > b.log")
        .await
        .unwrap();
    let gateway = through_gateway().await;
    let read = |p: &str| std::fs::read_to_string(ws.join(p)).ok();
    let report = s.sync_back().await.unwrap();
    if gateway {
        assert_eq!(
            seen.stdout_str(),
            ".gitignore src.txt ",
            "ignored paths stay here"
        );
        assert_eq!((report.written, report.removed), (2, 0), "{report:?}");
        assert!(report.conflicts.is_empty(), "{report:?}");
        assert_eq!(read("target/out"), None, "ignored: not copied back");
        assert_eq!(read("b.log"), None);
    } else {
        // A bind mount: the directory is the workspace, everything shows.
        assert_eq!(seen.stdout_str(), ".gitignore a.log src.txt target ");
        assert_eq!(report, agent_sandbox::SyncReport::default());
        assert_eq!(read("target/out").as_deref(), Some("box\n"));
    }
    assert_eq!(read("src.txt").as_deref(), Some("v2\n"));
    assert_eq!(read("new.txt").as_deref(), Some("new\n"));
    assert_eq!(read("target/big").as_deref(), Some("built here"));
    assert_eq!(read("a.log").as_deref(), Some("log"));
    // Changed on both sides after the sync: the local one is kept at close.
    std::thread::sleep(Duration::from_millis(10));
    std::fs::write(ws.join("src.txt"), "local").unwrap();
    s.exec("echo v3 > src.txt; rm new.txt").await.unwrap();
    s.close().await.unwrap();
    if gateway {
        assert_eq!(read("src.txt").as_deref(), Some("local"));
        assert_eq!(read("src.txt.from-sandbox").as_deref(), Some("v3\n"));
    } else {
        assert_eq!(read("src.txt").as_deref(), Some("v3\n"));
    }
    assert_eq!(
        read("new.txt"),
        None,
        "removed in the sandbox, unchanged here"
    );
    assert!(matches!(
        s.sync_back().await,
        Err(agent_sandbox::Error::SessionClosed)
    ));
}

/// `upload` puts a local directory (its `.gitignore` honoured with
/// `skip_gitignored`, links as links) or a tar file into the sandbox;
/// `download` brings a directory of the sandbox's into a local one without
/// overwriting a local file or writing through a link. Both refuse a
/// destination reached through a link the sandbox made, input that is not
/// what it claims, and a closed session; the same on every engine.
#[tokio::test]
async fn upload_and_download_directories_and_tars() {
    use agent_sandbox::Error;
    let _engine = engine_shared().await;
    let ws = tempdir("updown");
    let src = tempdir("updown-src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("a.txt"), "a").unwrap();
    std::fs::write(src.join("sub/b.txt"), "b").unwrap();
    std::fs::write(src.join("x.log"), "ignored").unwrap();
    std::fs::write(src.join(".gitignore"), "*.log\n").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", src.join("link")).unwrap();
    // 16 MiB, to carry more than one exec frame's worth through stdin.
    let big: Vec<u8> = (0..16u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    std::fs::write(src.join("big.bin"), &big).unwrap();
    let s = sandbox()
        .workspace(&ws)
        .skip_gitignored(true)
        .start()
        .await
        .unwrap();

    s.upload(&src, "/workspace/in").await.unwrap();
    let seen = s
        .exec("cd in && find . | sort | tr '\\n' ' '; echo; cat a.txt sub/b.txt; echo; readlink link; find a.txt -printf '%U\\n'; id -u")
        .await
        .unwrap();
    let text = seen.stdout_str();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0], ". ./.gitignore ./a.txt ./big.bin ./link ./sub ./sub/b.txt ",
        "{seen:?}"
    );
    assert_eq!(lines[1], "ab");
    assert_eq!(lines[2], "/etc/passwd", "a link stays a link");
    assert_eq!(lines[3], lines[4], "the sandbox's user owns what came in");
    let sum = |out: &[u8]| {
        String::from_utf8_lossy(out)
            .split_whitespace()
            .next()
            .map(str::to_owned)
    };
    let here = std::process::Command::new("sha256sum")
        .arg(src.join("big.bin"))
        .output()
        .unwrap();
    let inside = s.exec("sha256sum in/big.bin").await.unwrap();
    assert_eq!(
        sum(&inside.stdout),
        sum(&here.stdout),
        "16 MiB arrive whole"
    );

    // A tar file, into /tmp; made by the host's tar.
    let tarfile = src.with_extension("tar");
    let made = std::process::Command::new("tar")
        .arg("-cf")
        .arg(&tarfile)
        .arg("-C")
        .arg(&src)
        .args(["a.txt", "sub"])
        .status()
        .unwrap();
    assert!(made.success());
    s.upload(&tarfile, "/tmp/t").await.unwrap();
    let seen = s.exec("cat /tmp/t/a.txt /tmp/t/sub/b.txt").await.unwrap();
    assert_eq!(seen.stdout_str(), "ab");

    // Refusals: not a tar, a missing source, a destination through a link
    // the sandbox made (into its own /etc: read-only, but refused before).
    let bad = src.with_extension("txt");
    std::fs::write(&bad, vec![b'x'; 2048]).unwrap();
    let e = s.upload(&bad, "/tmp/bad").await.unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e:?}");
    assert!(e.to_string().contains("not a tar file"), "{e}");
    let e = s.upload(src.join("missing"), "/tmp/m").await.unwrap_err();
    assert!(e.to_string().contains("missing"), "{e}");
    s.exec("ln -s /tmp /workspace/esc").await.unwrap();
    let e = s.upload(&src, "/workspace/esc/in").await.unwrap_err();
    assert!(e.to_string().contains("symbolic link"), "{e}");
    let e = s.upload(&src, "/etc/x").await.unwrap_err();
    assert!(matches!(e, Error::File { .. }), "{e:?}");
    let left = s
        .exec("for p in /tmp/bad /tmp/m /tmp/in; do test -e $p && echo $p; done; true")
        .await
        .unwrap();
    assert_eq!(
        left.stdout_str(),
        "",
        "nothing of a refused upload is there"
    );

    // Download: a new file and a link arrive, a differing local file is
    // kept with the sandbox's beside it, an identical one is no conflict.
    s.exec("mkdir -p out/d && echo box > out/r.txt && echo same > out/same.txt && echo s > out/d/s.txt && ln -s /etc/shadow out/l")
        .await
        .unwrap();
    let dl = tempdir("updown-dl");
    std::fs::write(dl.join("r.txt"), "local").unwrap();
    std::fs::write(dl.join("same.txt"), "same\n").unwrap();
    let report = s.download("/workspace/out", &dl).await.unwrap();
    let read = |p: &str| std::fs::read_to_string(dl.join(p)).ok();
    assert_eq!(
        report.written, 3,
        "d/s.txt, l, r.txt.from-sandbox: {report:?}"
    );
    assert_eq!(report.conflicts.len(), 1, "{report:?}");
    assert!(report.conflicts[0].starts_with("r.txt"), "{report:?}");
    assert_eq!(read("r.txt").as_deref(), Some("local"));
    assert_eq!(read("r.txt.from-sandbox").as_deref(), Some("box\n"));
    assert_eq!(read("d/s.txt").as_deref(), Some("s\n"));
    assert_eq!(
        std::fs::read_link(dl.join("l")).unwrap(),
        std::path::PathBuf::from("/etc/shadow"),
        "a link comes as a link, never followed"
    );
    let e = s.download("/workspace/esc", &dl).await.unwrap_err();
    assert!(e.to_string().contains("symbolic link"), "{e}");
    let e = s
        .download("/workspace/out", dl.join("nope"))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e:?}");
    let e = s.download("/workspace/out/r.txt", &dl).await.unwrap_err();
    assert!(e.to_string().contains("not a directory"), "{e}");

    s.close().await.unwrap();
    assert!(matches!(
        s.upload(&src, "/tmp/late").await,
        Err(Error::SessionClosed)
    ));
    assert!(matches!(
        s.download("/workspace/out", &dl).await,
        Err(Error::SessionClosed)
    ));
    for d in [&ws, &src, &dl] {
        let _ = std::fs::remove_dir_all(d);
    }
    let _ = std::fs::remove_file(&tarfile);
    let _ = std::fs::remove_file(&bad);
}

/// A sandbox that connects straight to its proxy socket (past init's cap
/// of 64) as often as it can, and holds the connections: through a gateway
/// that is the gateway container's relay (two threads per connection, its
/// own pids limit) and the library's stream table; on the direct path the
/// library's proxy. Another session is served meanwhile, and once the
/// flood ends the flooding one works again.
#[tokio::test]
async fn a_connection_flood_on_the_proxy_socket_harms_no_one_else() {
    // Alone: during the full remote suite on this 2-core machine, a
    // session of another test running beside the flood was once closed
    // (SessionClosed in idle_connections_to_the_exec_socket_do_not_stall_execs);
    // not yet understood, see the issue note. This test's own second
    // session is the bystander it checks.
    let _engine = crate::support::docker::engine_alone().await;
    let flooding = sandbox().start().await.unwrap();
    let other = sandbox().start().await.unwrap();
    let flood = r#"python3 -c '
import resource, socket, time
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
held, refused = [], 0
for _ in range(3000):
    try:
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(2)
        s.connect("/.agent-sandbox/net/proxy.sock")
        held.append(s)
    except OSError:
        refused += 1
print("held", len(held), "refused", refused, flush=True)
time.sleep(3)
for s in held: s.close()
'"#;
    let probe = "curl -s -o /dev/null -w '%{http_code}' http://blocked.test/";
    let during = async {
        tokio::time::sleep(Duration::from_millis(2500)).await;
        other.exec(probe).await.unwrap()
    };
    let (flooded, during) = tokio::join!(flooding.exec(flood), during);
    let flooded = flooded.unwrap();
    eprintln!("flood: {}", flooded.stdout_str().trim());
    assert!(flooded.stdout_str().starts_with("held "), "{flooded:?}");
    assert_eq!(during.stdout_str(), "403", "the other session: {during:?}");
    // The flooding session recovers once its connections are closed.
    let mut after = String::new();
    for _ in 0..50 {
        let out = flooding.exec(probe).await.unwrap();
        after = out.stdout_str();
        if after == "403" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(after, "403", "after the flood: {}", flooded.stdout_str());
    flooding.close().await.unwrap();
    other.close().await.unwrap();
}
