//! Loopback comparison: the same client against no proxy (the limit),
//! `agent-sandbox proxy`, and tinyproxy with a default-deny filter.
//!
//! Prints a Markdown table: CONNECT set-up + 1-byte echo p50/p99, 1-byte
//! echo through an open tunnel p50/p99, bulk MiB/s through one tunnel, and
//! 1,000 concurrent tunnels (wall time, failures).
//!
//! Usage: proxy-compare --agent-sandbox PATH [--tinyproxy PATH] [--samples N]
//!        [--bulk-mib N] [--tunnels N]

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
    tunnels: usize,
}

fn opts() -> Opts {
    let mut o = Opts {
        agent_sandbox: String::new(),
        tinyproxy: "tinyproxy".into(),
        samples: 2000,
        bulk_mib: 1024,
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
            "--tunnels" => o.tunnels = v().parse().expect("number"),
            other => panic!("unknown argument {other}"),
        }
    }
    assert!(
        !o.agent_sandbox.is_empty(),
        "--agent-sandbox PATH is required"
    );
    o
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
    setup: (f64, f64),
    echo: (f64, f64),
    bulk: f64,
    tunnels_ms: f64,
    failures: usize,
}

async fn measure(name: &str, via: Via, target: SocketAddr, o: &Opts) -> Row {
    // Set-up + echo, a fresh tunnel per sample.
    let mut setup = Vec::with_capacity(o.samples);
    for _ in 0..o.samples {
        let t = Instant::now();
        let mut s = open(via, target).await.expect("open");
        s.write_all(b"Ex").await.unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
        setup.push(t.elapsed());
    }
    setup.sort();
    // Echo through one open tunnel.
    let mut s = open(via, target).await.expect("open");
    s.write_all(b"E").await.unwrap();
    let mut echo = Vec::with_capacity(o.samples);
    for _ in 0..o.samples {
        let t = Instant::now();
        s.write_all(b"x").await.unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
        echo.push(t.elapsed());
    }
    echo.sort();
    drop(s);
    // Bulk download through one tunnel.
    let bytes = o.bulk_mib * 1024 * 1024;
    let mut s = open(via, target).await.expect("open");
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
    let bulk = bytes as f64 / 1048576.0 / t.elapsed().as_secs_f64();
    drop(s);
    // N concurrent tunnels, all open at once, each echoing one byte.
    let barrier = Arc::new(tokio::sync::Barrier::new(o.tunnels));
    let t = Instant::now();
    let mut tasks = Vec::with_capacity(o.tunnels);
    for _ in 0..o.tunnels {
        let barrier = barrier.clone();
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
    let tunnels_ms = t.elapsed().as_secs_f64() * 1e3;
    Row {
        name: name.to_owned(),
        setup: (pct(&setup, 0.5), pct(&setup, 0.99)),
        echo: (pct(&echo, 0.5), pct(&echo, 0.99)),
        bulk,
        tunnels_ms,
        failures,
    }
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

fn main() {
    let o = opts();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let target = upstream().await;
        let mut rows = vec![measure("no proxy (the limit)", Via::Direct, target, &o).await];

        let port = free_port();
        let listen: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let _as = Kill(
            Command::new(&o.agent_sandbox)
                .args(["proxy", "--listen", &listen.to_string()])
                .args(["--allow-cidr", &format!("127.0.0.1/32:{}", target.port())])
                .args(["--max-connections", "4096"])
                .stderr(Stdio::null())
                .spawn()
                .expect("start agent-sandbox proxy"),
        );
        wait_listening(listen).await;
        rows.push(measure("agent-sandbox proxy", Via::Proxy(listen), target, &o).await);
        drop(_as);

        let dir = std::env::temp_dir().join(format!("proxy-compare-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
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
        match Command::new(&o.tinyproxy).args(["-d", "-c"]).arg(&conf).stdout(Stdio::null()).stderr(Stdio::null()).spawn() {
            Ok(child) => {
                let _tp = Kill(child);
                let listen: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
                wait_listening(listen).await;
                rows.push(measure("tinyproxy (default-deny filter)", Via::Proxy(listen), target, &o).await);
            }
            Err(e) => eprintln!("tinyproxy not run: {e}"),
        }
        let _ = std::fs::remove_dir_all(&dir);

        println!("samples: {} sequential; bulk: {} MiB download through one tunnel; {} concurrent tunnels\n", o.samples, o.bulk_mib, o.tunnels);
        println!("| path | set-up + 1-byte echo p50 / p99 (µs) | 1-byte echo in open tunnel p50 / p99 (µs) | bulk MiB/s | {} tunnels: wall ms, failures |", o.tunnels);
        println!("|---|---|---|---|---|");
        for r in &rows {
            println!(
                "| {} | {:.0} / {:.0} | {:.0} / {:.0} | {:.0} | {:.0}, {} |",
                r.name, r.setup.0, r.setup.1, r.echo.0, r.echo.1, r.bulk, r.tunnels_ms, r.failures
            );
        }
        let base = &rows[0];
        if let Some(a) = rows.iter().find(|r| r.name.starts_with("agent-sandbox")) {
            println!(
                "\nagent-sandbox vs no proxy: set-up+echo p50 {:.2}x, open-tunnel echo p50 {:.2}x, bulk {:.2}x, failures {}",
                a.setup.0 / base.setup.0,
                a.echo.0 / base.echo.0,
                a.bulk / base.bulk,
                a.failures
            );
        }
    });
}
