//! Background processes (`Session::spawn`) and exposed ports
//! (`Session::expose`): live output, kill, wait, the session ending them
//! all; a server inside reached from the host's loopback only.

use std::net::SocketAddr;
use std::time::Duration;

use agent_sandbox::{Error, ExecOptions, Pipe};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::docker::{container_count, engine_shared, sandbox, tempdir};

#[tokio::test]
async fn spawned_output_streams_in_order_and_kill_ends_the_group() {
    let _engine = engine_shared().await;
    let s = sandbox().start().await.unwrap();
    let p = s
        .spawn(
            "for i in 1 2 3; do echo line$i; sleep 0.2; done; echo oops >&2; sleep 1000 & sleep 1000",
            ExecOptions::new(),
        )
        .await
        .unwrap();
    assert_eq!(p.id(), "p1");
    let mut cursor = 0;
    let mut seen = String::new();
    while !seen.contains("oops") {
        let c = tokio::time::timeout(Duration::from_secs(20), p.next_chunk(&mut cursor))
            .await
            .expect("output arrives while the process runs")
            .expect("not ended");
        if c.pipe == Pipe::Stderr {
            seen.push_str("[err]");
        }
        seen.push_str(&String::from_utf8_lossy(&c.data));
    }
    assert_eq!(seen, "line1\nline2\nline3\n[err]oops\n");
    assert!(p.is_running() && p.exit_code().is_none());
    // The session serves other commands meanwhile.
    let out = s.exec("pgrep -c -x sleep").await.unwrap();
    assert_eq!(out.stdout_str(), "2\n", "both sleeps run");
    let taken = p.take_output();
    assert_eq!(taken.stdout, b"line1\nline2\nline3\n");
    assert_eq!(taken.stderr, b"oops\n");
    assert_eq!(p.take_output().stdout, b"", "taken once");
    p.kill();
    let done = tokio::time::timeout(Duration::from_secs(20), p.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(done.exit_code, 137, "{done:?}");
    assert_eq!(done.stdout, b"line1\nline2\nline3\n");
    assert_eq!(p.exit_code(), Some(137));
    assert!(p.next_chunk(&mut cursor).await.is_none(), "ended, all read");
    let out = s.exec("pgrep -x sleep || echo none").await.unwrap();
    assert_eq!(out.stdout_str(), "none\n", "the whole group was killed");
    let listed = s.processes();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].exit_code(), Some(137));
    s.close().await.unwrap();
}

#[tokio::test]
async fn a_spawned_process_exits_on_its_own_with_its_code_and_output() {
    let _engine = engine_shared().await;
    let ws = tempdir("spawn-ws");
    let s = sandbox().workspace(&ws).start().await.unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = seen.clone();
    let p = s
        .spawn(
            ["sh", "-c", "cat; pwd; exit 3"],
            ExecOptions::new()
                .stdin(b"from stdin\n".to_vec())
                .on_stdout(move |b| sink.lock().unwrap().extend_from_slice(b)),
        )
        .await
        .unwrap();
    let out = p.wait().await.unwrap();
    assert_eq!(out.exit_code, 3);
    assert_eq!(out.stdout_str(), "from stdin\n/workspace\n");
    assert_eq!(*seen.lock().unwrap(), out.stdout, "the callback saw it all");
    assert_eq!(p.take_output().exit_code, Some(3));
    // A timeout given for the process applies; the second gets an id of its own.
    let q = s
        .spawn(
            "sleep 1000",
            ExecOptions::new().timeout(Duration::from_millis(300)),
        )
        .await
        .unwrap();
    assert_eq!(q.id(), "p2");
    let out = q.wait().await.unwrap();
    assert!(out.timed_out && out.exit_code == 137, "{out:?}");
    // A command that cannot start says why and ends.
    let r = s
        .spawn(["/no/such/tool"], ExecOptions::new())
        .await
        .unwrap();
    let out = r.wait().await.unwrap();
    assert_eq!(out.exit_code, 127);
    assert!(out.stderr_str().contains("/no/such/tool"), "{out:?}");
    assert_eq!(s.processes().len(), 3);
    assert_eq!(s.process("p2").map(|p| p.exit_code()), Some(Some(137)));
    s.close().await.unwrap();
}

#[tokio::test]
async fn closing_the_session_ends_every_process() {
    let _engine = engine_shared().await;
    let s = sandbox().start().await.unwrap();
    let procs = [
        s.spawn("sleep 1000", ExecOptions::new()).await.unwrap(),
        s.spawn("while :; do echo tick; sleep 0.1; done", ExecOptions::new())
            .await
            .unwrap(),
    ];
    let mut cursor = 0;
    procs[1].next_chunk(&mut cursor).await.unwrap();
    s.close().await.unwrap();
    for p in &procs {
        let r = tokio::time::timeout(Duration::from_secs(20), p.wait())
            .await
            .expect("wait returns once the session is gone");
        assert!(matches!(r, Err(Error::SessionClosed)), "{r:?}");
        assert!(!p.is_running());
    }
    assert_eq!(container_count(s.id()).await, 0, "nothing left running");
    assert!(matches!(
        s.spawn("true", ExecOptions::new()).await,
        Err(Error::SessionClosed)
    ));
}

/// One HTTP/1.0 GET to `addr`; the whole answer, or the error.
async fn get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut c = TcpStream::connect(addr).await?;
    c.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await?;
    let mut text = String::new();
    c.read_to_string(&mut text).await?;
    Ok(text)
}

#[tokio::test]
async fn an_exposed_port_reaches_a_server_inside_from_the_host_loopback_only() {
    let _engine = engine_shared().await;
    let ws = tempdir("expose-ws");
    std::fs::write(ws.join("hello.txt"), "served from the sandbox\n").unwrap();
    let s = sandbox().workspace(&ws).start().await.unwrap();
    let server = s
        .spawn(
            "exec python3 -m http.server 8000 --bind 127.0.0.1",
            ExecOptions::new(),
        )
        .await
        .unwrap();
    let addr = s.expose(8000, None).await.unwrap();
    assert!(addr.ip().is_loopback() && addr.port() != 0, "{addr}");
    assert_eq!(
        s.expose(8000, None).await.unwrap(),
        addr,
        "same address again"
    );
    assert_eq!(s.exposed(), vec![(8000, addr)]);
    let mut answer = String::new();
    for _ in 0..100 {
        answer = get(addr, "/hello.txt").await.unwrap_or_default();
        if answer.contains("200") {
            break;
        }
        // The server is still starting: the connection is closed at once.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(answer.starts_with("HTTP/1.0 200"), "{answer:?}");
    assert!(answer.ends_with("served from the sandbox\n"), "{answer:?}");
    // Several connections at once.
    let many = futures_join(addr).await;
    assert!(many.iter().all(|a| a.contains("served from")), "{many:?}");
    // The sandbox still has no network: the host's listener is not
    // reachable from inside (its loopback is its own).
    let inside = s
        .exec(format!(
            "curl -s --noproxy '*' --max-time 3 http://127.0.0.1:{}/hello.txt; echo exit:$?",
            addr.port()
        ))
        .await
        .unwrap();
    assert!(!inside.stdout_str().contains("served from"), "{inside:?}");
    // A port nothing listens on: closed at once, nothing served.
    let quiet = s.expose(9, None).await.unwrap();
    assert_eq!(get(quiet, "/").await.unwrap_or_default(), "");
    // Unexposed: the listener is gone.
    assert!(s.unexpose(9));
    assert!(!s.unexpose(9));
    assert!(TcpStream::connect(quiet).await.is_err(), "{quiet} closed");
    // A given host port; taken twice is an error naming it.
    let fixed = s.expose(8000 + 1, Some(0)).await.unwrap();
    let taken = s.expose(8002, Some(fixed.port())).await.unwrap_err();
    assert_eq!(taken.code(), "bind", "{taken}");
    assert!(
        taken.to_string().contains(&fixed.port().to_string()),
        "{taken}"
    );
    assert_eq!(
        s.expose(0, None).await.unwrap_err().code(),
        "invalid_argument"
    );
    s.close().await.unwrap();
    assert!(server.wait().await.is_err());
    for a in [addr, fixed] {
        assert!(
            TcpStream::connect(a).await.is_err(),
            "{a} closed with the session"
        );
    }
}

async fn futures_join(addr: SocketAddr) -> Vec<String> {
    let tasks: Vec<_> = (0..8)
        .map(|_| tokio::spawn(async move { get(addr, "/hello.txt").await.unwrap_or_default() }))
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.push(t.await.unwrap());
    }
    all
}

/// Anything on the host can connect to an exposed port (a browser tab
/// too): at most 64 connections reach the sandbox at once, the rest are
/// reset, and `unexpose` ends the ones still open.
#[tokio::test]
async fn an_exposed_port_carries_at_most_64_connections_and_unexpose_ends_them() {
    let _engine = engine_shared().await;
    let s = sandbox().start().await.unwrap();
    // A server that counts the connections it accepted and holds them.
    let server = s
        .spawn(
            r#"exec python3 -c '
import os, socket
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("127.0.0.1", 7000)); l.listen(512)
held = []
while True:
    c, _ = l.accept(); held.append(c)
    # Written aside and renamed: a reader never sees an empty file.
    open("/tmp/accepted.part", "w").write(str(len(held)))
    os.replace("/tmp/accepted.part", "/tmp/accepted")
'"#,
            ExecOptions::new(),
        )
        .await
        .unwrap();
    let addr = s.expose(7000, None).await.unwrap();
    // A connection past the bound may be reset before connect returns.
    let mut clients = Vec::new();
    let mut shed = 0;
    for _ in 0..100 {
        match TcpStream::connect(addr).await {
            Ok(c) => clients.push(c),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => shed += 1,
            Err(e) => panic!("connect {addr}: {e}"),
        }
    }
    let accepted = || async {
        let out = s
            .exec("cat /tmp/accepted 2>/dev/null || echo 0")
            .await
            .unwrap();
        out.stdout_str().trim().parse::<usize>().unwrap()
    };
    // Let every forward that got a slot arrive (init retries ~1 s).
    let mut seen = 0;
    for _ in 0..50 {
        seen = accepted().await;
        if seen >= 64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(accepted().await, 64, "first look: {seen}");
    // The 36 past the bound were reset: reading gives an error or EOF.
    let mut held = Vec::new();
    for mut c in clients {
        let mut b = [0u8; 1];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(20), c.read(&mut b)).await
        {
            shed += 1;
        } else {
            held.push(c);
        }
    }
    assert_eq!(shed, 36, "connections past the bound are reset");
    // Unexposed: the carried connections end too (EOF or reset).
    assert!(s.unexpose(7000));
    assert_eq!(held.len(), 64);
    let mut ended = 0;
    for c in &mut held {
        let mut b = [0u8; 1];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_secs(2), c.read(&mut b)).await
        {
            ended += 1;
        }
    }
    assert_eq!(ended, 64, "every carried connection ended with unexpose");
    server.kill();
    s.close().await.unwrap();
}

/// Finding: init wrote stdin and read the signal frames on one thread, so
/// a command that never reads its (large) input could not be killed: the
/// `K` frame waited behind the stdin frames.
#[tokio::test]
async fn a_process_that_leaves_its_stdin_unread_can_still_be_killed() {
    let _engine = engine_shared().await;
    let s = sandbox().start().await.unwrap();
    let p = s
        .spawn(
            "echo started; exec sleep 300",
            ExecOptions::new().stdin(vec![b'x'; 4 << 20]),
        )
        .await
        .unwrap();
    let mut cursor = 0;
    let first = tokio::time::timeout(Duration::from_secs(10), p.next_chunk(&mut cursor))
        .await
        .unwrap();
    assert!(first.is_some(), "it started");
    p.kill();
    let out = tokio::time::timeout(Duration::from_secs(10), p.wait())
        .await
        .expect("killed despite 4 MiB of unread stdin")
        .unwrap();
    assert_eq!(out.exit_code, 137);
    s.close().await.unwrap();
}

/// The session keeps ended processes for `process(id)`, but not without
/// bound: past 64 MiB of their output the oldest are let go.
#[tokio::test]
async fn ended_processes_kept_by_the_session_are_bounded_in_bytes() {
    let _engine = engine_shared().await;
    let s = sandbox().start().await.unwrap();
    let big = ExecOptions::new().output_limit(32 << 20);
    for _ in 0..3 {
        let p = s
            .spawn("head -c 20000000 /dev/zero", big.clone())
            .await
            .unwrap();
        assert_eq!(p.wait().await.unwrap().stdout.len(), 20_000_000);
    }
    let last = s.spawn("true", ExecOptions::new()).await.unwrap();
    last.wait().await.unwrap();
    let ids: Vec<String> = s.processes().iter().map(|p| p.id().to_owned()).collect();
    // Each big one holds ~40 MB (its ring and its result): only the newest fits.
    assert_eq!(ids, ["p3", "p4"], "{ids:?}");
    s.close().await.unwrap();
}
