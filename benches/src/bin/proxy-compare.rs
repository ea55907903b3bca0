//! Loopback comparison: the same client against no proxy (the limit),
//! `agent-sandbox proxy`, tinyproxy with a default-deny filter, and a
//! minimal CONNECT relay (two blocking threads per tunnel, no policy, no
//! HTTP parser: the floor for any proxy process on this machine).
//!
//! The upstream (echo and bulk server) runs in its own process, as a real
//! server would: with it inside the client's process, a "direct" round trip
//! is two hops between threads of one tokio runtime, which no path through
//! a third process can match. That in-process figure is printed too.
//!
//! Prints a Markdown table: CONNECT set-up + 1-byte echo p50/p99, 1-byte
//! echo through an open tunnel p50/p99, bulk MiB/s through one tunnel
//! (median of several downloads), and 1,000 concurrent tunnels (wall time,
//! failures). Samples of all paths are interleaved.
//!
//! Usage: proxy-compare --agent-sandbox PATH [--tinyproxy PATH] [--samples N]
//!        [--bulk-mib N] [--bulk-rounds N] [--tunnels N] [--compare PATH]
//! (`--compare` adds a second agent-sandbox build, for A/B tests of a change.)
//! (`--serve-upstream` and `--serve-relay TARGET` are the child processes.)

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

struct Opts {
    agent_sandbox: String,
    tinyproxy: String,
    samples: usize,
    bulk_mib: u64,
    bulk_rounds: u64,
    tunnels: usize,
    compare: Option<String>,
}

fn opts() -> Opts {
    let mut o = Opts {
        agent_sandbox: String::new(),
        tinyproxy: "tinyproxy".into(),
        samples: 2000,
        bulk_mib: 1024,
        bulk_rounds: 8,
        compare: None,
        tunnels: 1000,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut v = || args.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--agent-sandbox" => o.agent_sandbox = v(),
            "--tinyproxy" => o.tinyproxy = v(),
            "--samples" => o.samples = v().parse().expect("number"),
            "--bulk-mib" => o.bulk_mib = v().parse().expect("number"),
            "--bulk-rounds" => o.bulk_rounds = v().parse().expect("number"),
            "--tunnels" => o.tunnels = v().parse().expect("number"),
            "--compare" => o.compare = Some(v()),
            "--serve-upstream" => serve_upstream(),
            "--serve-relay" => serve_relay(v().parse().expect("--serve-relay HOST:PORT")),
            other => panic!("unknown argument {other}"),
        }
    }
    assert!(
        !o.agent_sandbox.is_empty(),
        "--agent-sandbox PATH is required"
    );
    o
}

/// Runs the upstream in this process until stdin closes; prints its port.
fn serve_upstream() -> ! {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let addr = upstream().await;
        println!("{}", addr.port());
        wait_for_stdin_eof().await;
    });
    std::process::exit(0)
}

async fn wait_for_stdin_eof() {
    let _ = tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
    })
    .await;
}

/// A minimal CONNECT relay: reads the request head, answers 200, and copies
/// both ways with one blocking thread per direction (64 KiB buffers, as the
/// proxy uses). Ignores the requested
/// target and always dials `target`. Prints its port; runs until stdin closes.
fn serve_relay(target: SocketAddr) -> ! {
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener as StdListener, TcpStream as StdStream};
    let l = StdListener::bind("127.0.0.1:0").unwrap();
    println!("{}", l.local_addr().unwrap().port());
    std::thread::spawn(|| {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
        std::process::exit(0);
    });
    for client in l.incoming().flatten() {
        std::thread::spawn(move || {
            let mut client = client;
            let _ = client.set_nodelay(true);
            let mut head = Vec::new();
            let mut b = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                match client.read(&mut b) {
                    Ok(1) => head.push(b[0]),
                    _ => return,
                }
            }
            let Ok(up) = StdStream::connect(target) else {
                return;
            };
            let _ = up.set_nodelay(true);
            if client.write_all(b"HTTP/1.1 200 OK\r\n\r\n").is_err() {
                return;
            }
            let (Ok(c2), Ok(u2)) = (client.try_clone(), up.try_clone()) else {
                return;
            };
            let copy = |mut from: StdStream, mut to: StdStream| {
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n) = from.read(&mut buf) {
                    if n == 0 || to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = to.shutdown(Shutdown::Write);
            };
            let t = std::thread::spawn(move || copy(client, up));
            copy(u2, c2);
            let _ = t.join();
        });
    }
    std::process::exit(0)
}

/// Starts this binary again with `args` and reads the port it prints.
fn child_port(args: &[&str]) -> (Kill, u16) {
    use std::io::BufRead;
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start a child process");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line.trim().parse().expect("child port");
    (Kill(child), port)
}

/// Upstream: first byte 'E' = echo until EOF; 'D' + u64 = send that many bytes.
async fn upstream() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                continue;
            };
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let mut mode = [0u8; 1];
                if s.read_exact(&mut mode).await.is_err() {
                    return;
                }
                if mode[0] == b'D' {
                    let mut n = [0u8; 8];
                    if s.read_exact(&mut n).await.is_err() {
                        return;
                    }
                    let mut left = u64::from_be_bytes(n);
                    let chunk = vec![7u8; 256 * 1024];
                    while left > 0 {
                        let k = left.min(chunk.len() as u64) as usize;
                        if s.write_all(&chunk[..k]).await.is_err() {
                            return;
                        }
                        left -= k as u64;
                    }
                    let _ = s.shutdown().await;
                    return;
                }
                let mut buf = vec![0u8; 16 * 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

#[derive(Clone, Copy)]
enum Via {
    Direct,
    Proxy(SocketAddr),
}

/// Opens a stream to the upstream, through the proxy when there is one.
async fn open(via: Via, target: SocketAddr) -> std::io::Result<TcpStream> {
    match via {
        Via::Direct => {
            let s = TcpStream::connect(target).await?;
            s.set_nodelay(true)?;
            Ok(s)
        }
        Via::Proxy(p) => {
            let mut s = TcpStream::connect(p).await?;
            s.set_nodelay(true)?;
            s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
                .await?;
            let mut head = Vec::with_capacity(128);
            let mut b = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                if s.read(&mut b).await? == 0 {
                    return Err(std::io::Error::other("proxy closed during CONNECT"));
                }
                head.push(b[0]);
            }
            if !head.starts_with(b"HTTP/1.1 200") && !head.starts_with(b"HTTP/1.0 200") {
                return Err(std::io::Error::other(
                    String::from_utf8_lossy(&head)
                        .lines()
                        .next()
                        .unwrap_or("")
                        .to_owned(),
                ));
            }
            Ok(s)
        }
    }
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

struct Row {
    name: String,
    setup: Vec<Duration>,
    echo: Vec<Duration>,
    bulk: Vec<f64>,
    tunnels_ms: f64,
    failures: usize,
}

struct Path {
    name: &'static str,
    via: Via,
    target: SocketAddr,
}

async fn setup_and_echo(p: &Path) -> Duration {
    let t = Instant::now();
    let mut s = open(p.via, p.target).await.expect("open");
    s.write_all(b"Ex").await.unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await.unwrap();
    t.elapsed()
}

async fn echo_once(s: &mut TcpStream) -> Duration {
    let t = Instant::now();
    s.write_all(b"x").await.unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await.unwrap();
    t.elapsed()
}

/// MiB/s of one download of `mib` MiB through a fresh tunnel.
async fn bulk_once(p: &Path, mib: u64) -> f64 {
    let bytes = mib * 1024 * 1024;
    let mut s = open(p.via, p.target).await.expect("open");
    let mut req = vec![b'D'];
    req.extend_from_slice(&bytes.to_be_bytes());
    let t = Instant::now();
    s.write_all(&req).await.unwrap();
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0u64;
    while got < bytes {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "bulk stream ended early at {got}");
        got += n as u64;
    }
    bytes as f64 / 1048576.0 / t.elapsed().as_secs_f64()
}

/// `n` tunnels opened at once and held until every one has echoed a byte.
async fn many_tunnels(p: &Path, n: usize) -> (f64, usize) {
    let barrier = Arc::new(tokio::sync::Barrier::new(n));
    let t = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let barrier = barrier.clone();
        let (via, target) = (p.via, p.target);
        tasks.push(tokio::spawn(async move {
            let r = async {
                let mut s = open(via, target).await?;
                s.write_all(b"Ey").await?;
                let mut b = [0u8; 1];
                s.read_exact(&mut b).await?;
                Ok::<_, std::io::Error>(s)
            };
            let r = tokio::time::timeout(Duration::from_secs(30), r).await;
            barrier.wait().await; // hold every tunnel open until all have tried
            matches!(r, Ok(Ok(_)))
        }));
    }
    let mut failures = 0;
    for task in tasks {
        if !task.await.unwrap_or(false) {
            failures += 1;
        }
    }
    (t.elapsed().as_secs_f64() * 1e3, failures)
}

/// Every path measured sample by sample in turn, so a change in the shared
/// machine's state (another tenant, CPU placement) hits all paths alike and
/// the ratios stay meaningful.
async fn measure(paths: &[Path], o: &Opts) -> Vec<Row> {
    let mut rows: Vec<Row> = paths
        .iter()
        .map(|p| Row {
            name: p.name.to_owned(),
            setup: Vec::with_capacity(o.samples),
            echo: Vec::with_capacity(o.samples),
            bulk: Vec::new(),
            tunnels_ms: 0.0,
            failures: 0,
        })
        .collect();
    for _ in 0..o.samples {
        for (p, r) in paths.iter().zip(&mut rows) {
            r.setup.push(setup_and_echo(p).await);
        }
    }
    let mut open_tunnels = Vec::new();
    for p in paths {
        let mut s = open(p.via, p.target).await.expect("open");
        s.write_all(b"E").await.unwrap();
        open_tunnels.push(s);
    }
    for _ in 0..o.samples {
        for (s, r) in open_tunnels.iter_mut().zip(&mut rows) {
            r.echo.push(echo_once(s).await);
        }
    }
    drop(open_tunnels);
    let rounds = o.bulk_rounds.max(1);
    for _ in 0..rounds {
        for (p, r) in paths.iter().zip(&mut rows) {
            r.bulk.push(bulk_once(p, o.bulk_mib / rounds).await);
        }
    }
    for (p, r) in paths.iter().zip(&mut rows) {
        (r.tunnels_ms, r.failures) = many_tunnels(p, o.tunnels).await;
    }
    for r in &mut rows {
        r.setup.sort();
        r.echo.sort();
        r.bulk.sort_by(f64::total_cmp);
    }
    rows
}

fn median(v: &[f64]) -> f64 {
    v[v.len() / 2]
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn wait_listening(addr: SocketAddr) {
    for _ in 0..100 {
        if TcpStream::connect(addr).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("nothing listening on {addr}");
}

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_agent_sandbox(bin: &str, target: SocketAddr) -> (Kill, SocketAddr) {
    let port = free_port();
    let listen: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let child = Command::new(bin)
        .args(["proxy", "--listen", &listen.to_string()])
        .args(["--allow-cidr", &format!("127.0.0.1/32:{}", target.port())])
        .args(["--max-connections", "4096"])
        .stderr(Stdio::null())
        .spawn()
        .expect("start agent-sandbox proxy");
    (Kill(child), listen)
}

fn start_tinyproxy(
    bin: &str,
    target: SocketAddr,
    dir: &std::path::Path,
) -> Option<(Kill, SocketAddr)> {
    let port = free_port();
    let filter = dir.join("filter");
    std::fs::write(&filter, "^127\\.0\\.0\\.1$\n").unwrap();
    let conf = dir.join("tinyproxy.conf");
    std::fs::write(
        &conf,
        format!(
            "User nobody\nGroup nogroup\nPort {port}\nListen 127.0.0.1\nTimeout 600\nMaxClients 4096\nAllow 127.0.0.1\nConnectPort {}\nFilter \"{}\"\nFilterExtended Yes\nFilterDefaultDeny Yes\nLogLevel Critical\n",
            target.port(),
            filter.display()
        ),
    )
    .unwrap();
    match Command::new(bin)
        .args(["-d", "-c"])
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(child) => Some((Kill(child), format!("127.0.0.1:{port}").parse().unwrap())),
        Err(e) => {
            eprintln!("tinyproxy not run: {e}");
            None
        }
    }
}

fn main() {
    let o = opts();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let in_process = upstream().await;
        let (_upstream, port) = child_port(&["--serve-upstream"]);
        let target: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let (_relay, port) = child_port(&["--serve-relay", &target.to_string()]);
        let relay: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let (_as, listen) = start_agent_sandbox(&o.agent_sandbox, target);
        let other = o.compare.as_deref().map(|bin| start_agent_sandbox(bin, target));
        let dir = std::env::temp_dir().join(format!("proxy-compare-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let tiny = start_tinyproxy(&o.tinyproxy, target, &dir);

        let mut paths = vec![
            Path { name: "no proxy (the limit)", via: Via::Direct, target },
            Path { name: "no proxy, upstream inside the client's process (session 1's baseline)", via: Via::Direct, target: in_process },
            Path { name: "minimal CONNECT relay (2 blocking threads per tunnel, 64 KiB buffers; the floor)", via: Via::Proxy(relay), target },
            Path { name: "agent-sandbox proxy", via: Via::Proxy(listen), target },
        ];
        if let Some((_, l)) = &other {
            paths.push(Path { name: "agent-sandbox proxy (--compare build)", via: Via::Proxy(*l), target });
        }
        if let Some((_, l)) = &tiny {
            paths.push(Path { name: "tinyproxy (default-deny filter)", via: Via::Proxy(*l), target });
        }
        for p in &paths {
            if let Via::Proxy(addr) = p.via {
                wait_listening(addr).await;
            }
        }
        let rows = measure(&paths, &o).await;
        drop((other, tiny));
        let _ = std::fs::remove_dir_all(&dir);

        println!(
            "samples: {} per path, interleaved; bulk: median of {} downloads of {} MiB per path; {} concurrent tunnels\n",
            o.samples,
            o.bulk_rounds.max(1),
            o.bulk_mib / o.bulk_rounds.max(1),
            o.tunnels
        );
        println!("| path | set-up + 1-byte echo p50 / p99 (µs) | 1-byte echo in open tunnel p50 / p99 (µs) | bulk MiB/s | {} tunnels: wall ms, failures |", o.tunnels);
        println!("|---|---|---|---|---|");
        for r in &rows {
            println!(
                "| {} | {:.0} / {:.0} | {:.0} / {:.0} | {:.0} | {:.0}, {} |",
                r.name,
                pct(&r.setup, 0.5),
                pct(&r.setup, 0.99),
                pct(&r.echo, 0.5),
                pct(&r.echo, 0.99),
                median(&r.bulk),
                r.tunnels_ms,
                r.failures
            );
        }
        let base = &rows[0];
        for a in rows.iter().filter(|r| r.name.starts_with("agent-sandbox")) {
            println!(
                "\n{} vs no proxy: set-up+echo p50 {:.2}x, open-tunnel echo p50 {:.2}x, bulk {:.2}x, failures {}",
                a.name,
                pct(&a.setup, 0.5) / pct(&base.setup, 0.5),
                pct(&a.echo, 0.5) / pct(&base.echo, 0.5),
                median(&a.bulk) / median(&base.bulk),
                a.failures
            );
        }
    });
}
