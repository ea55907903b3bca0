//! Load: many sandboxes at once, each busy, one hostile, in one host
//! process. 20 sessions each run 200 execs while their processes hold 100
//! proxy tunnels apiece, a neighbour floods the proxy with refused
//! requests, and a pool serves 200 one-shot runs meanwhile. Prints
//! failures, exec latency under load against idle, the host process's RSS
//! before and after, and what was left behind (containers, host
//! directories).
//!
//! Usage: load [--iterations EXECS_PER_SESSION] [--image IMG]
//! (`make bench` runs it; set LOAD_SESSIONS / LOAD_TUNNELS / LOAD_RUNS to scale.)

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_sandbox::{ExecOptions, Sandbox, SandboxBuilder, Session};
use agent_sandbox_benches::{iterations_and_image, pct_ms, rss_kib};
use tokio::io::AsyncReadExt;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rss_mib() -> f64 {
    rss_kib() as f64 / 1024.0
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// This process's host directories (`agent-sandbox-ID-net-PID.START`).
fn host_dirs() -> usize {
    let me = format!("-{}.", std::process::id());
    std::fs::read_dir(std::env::temp_dir())
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    n.starts_with("agent-sandbox-") && n.contains(&me)
                })
                .count()
        })
        .unwrap_or(0)
}

/// Containers owned by this process, running or not.
fn containers() -> usize {
    let out = std::process::Command::new("docker")
        .args(["ps", "-aq", "--filter"])
        .arg(format!(
            "label=agent-sandbox.owner={}",
            agent_sandbox::runtime::owner_label_value()
        ))
        .output()
        .expect("docker ps");
    String::from_utf8_lossy(&out.stdout).lines().count()
}

/// A local server the tunnels end at: accepts and holds every connection.
async fn canary() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
            });
        }
    });
    port
}

const HOLD: &str = r#"
import socket, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
held = []
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", 3128))
    s.sendall(("CONNECT canary.test:%d HTTP/1.1\r\nHost: canary.test:%d\r\n\r\n" % (port, port)).encode())
    r = s.recv(100)
    if not r.startswith(b"HTTP/1.1 200"):
        print("tunnel refused", r, flush=True)
        sys.exit(1)
    held.append(s)
print("held", len(held), flush=True)
time.sleep(900)
"#;

const FLOOD: &str = r#"
import os, socket, time
req = b"GET ftp://a/" + b"x" * 15000 + b" HTTP/1.1\r\nHost: a\r\n\r\n"
n, t0 = 0, time.time()
open("/tmp/flood", "w").write("started\n")
while time.time() - t0 < 900:
    try:
        s = socket.create_connection(("127.0.0.1", 3128))
        s.sendall(req)
        s.recv(12)
        s.close()
        n += 1
    except OSError:
        time.sleep(0.01)
"#;

async fn wait_for(s: &Session, file: &str, want: &str) -> Result<(), String> {
    for _ in 0..600 {
        let out = s.exec(["cat", file]).await.map_err(|e| e.to_string())?;
        let text = out.stdout_str();
        if text.contains(want) {
            return Ok(());
        }
        if text.contains("refused") {
            return Err(text);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("{file} never said {want:?}"))
}

async fn exec_many(s: &Session, n: usize, failures: &AtomicUsize) -> Vec<Duration> {
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        match s
            .exec_with(
                ["true"],
                ExecOptions::new().timeout(Duration::from_secs(30)),
            )
            .await
        {
            Ok(o) if o.success() => times.push(t.elapsed()),
            _ => {
                failures.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
    times
}

fn main() {
    let (execs, image) = iterations_and_image(200);
    let sessions = env_or("LOAD_SESSIONS", 20);
    let tunnels = env_or("LOAD_TUNNELS", 100);
    let runs = env_or("LOAD_RUNS", 200);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let port = canary().await;
        let b: SandboxBuilder = Sandbox::builder()
            .image(image)
            .allow(format!("canary.test:{port}"))
            .resolve("canary.test", port, "127.0.0.1")
            // Each tunnel costs init two threads: room for 100 and the execs.
            .pids(1024);
        // Warm-up (image check, init cache, orphan gc), then the baseline.
        let warm = b.start().await.expect("start a session");
        warm.close().await.unwrap();
        let (rss0, fds0, dirs0, containers0) = (rss_mib(), open_fds(), host_dirs(), containers());
        let idle_failures = AtomicUsize::new(0);
        let s = b.start().await.expect("start a session");
        let mut idle = exec_many(&s, execs, &idle_failures).await;
        s.close().await.unwrap();
        idle.sort();

        // Two rounds: memory that comes back for the second round was kept
        // by the allocator, not leaked.
        for round in 1..=2 {
        let failures = Arc::new(AtomicUsize::new(0));
        let t0 = Instant::now();
        let started = futures_join(sessions, |_| {
            let b = b.clone();
            async move { b.start().await }
        })
        .await;
        let mut live = Vec::new();
        for s in started {
            match s {
                Ok(s) => live.push(Arc::new(s)),
                Err(e) => {
                    eprintln!("start failed: {e}");
                    failures.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
        let start_time = t0.elapsed();
        // Each session's processes hold their tunnels; the neighbour floods.
        let neighbour = b.start().await.expect("start the neighbour");
        neighbour
            .exec(["sh", "-c", "setsid python3 -c \"$0\" >/dev/null 2>&1 &", FLOOD])
            .await
            .unwrap();
        wait_for(&neighbour, "/tmp/flood", "started").await.unwrap();
        let held = futures_join(live.len(), |i| {
            let s = live[i].clone();
            async move {
                let cmd = format!("setsid python3 -c \"$0\" {port} {tunnels} >/tmp/held 2>&1 &");
                s.exec(["sh", "-c", &cmd, HOLD]).await.map_err(|e| e.to_string())?;
                wait_for(&s, "/tmp/held", &format!("held {tunnels}")).await
            }
        })
        .await;
        for h in held {
            if let Err(e) = h {
                eprintln!("tunnels: {e}");
                failures.fetch_add(1, Ordering::SeqCst);
            }
        }
        let fds_loaded = open_fds();
        let pool_failures = Arc::new(AtomicUsize::new(0));
        let pool = b.pool(2).await.expect("start the pool");
        let pool_task = {
            let (pool, pool_failures) = (pool.clone(), pool_failures.clone());
            tokio::spawn(async move {
                let mut times = Vec::new();
                for _ in 0..runs {
                    let t = Instant::now();
                    match pool.run("true").await {
                        Ok(o) if o.success() => times.push(t.elapsed()),
                        Ok(o) => {
                            eprintln!("pool run: exit {} {}", o.exit_code, o.stderr_str());
                            pool_failures.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(e) => {
                            eprintln!("pool run: {e}");
                            pool_failures.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }
                times
            })
        };
        let t1 = Instant::now();
        let all = futures_join(live.len(), |i| {
            let (s, failures) = (live[i].clone(), failures.clone());
            async move { exec_many(&s, execs, &failures).await }
        })
        .await;
        let exec_time = t1.elapsed();
        let mut loaded: Vec<Duration> = all.into_iter().flatten().collect();
        loaded.sort();
        let mut pool_times = pool_task.await.unwrap();
        pool_times.sort();
        let flood = neighbour.events();
        let refusals: u64 = flood.iter().map(|e| e.count).sum();
        let rss_loaded = rss_mib();
        for s in &live {
            if s.close().await.is_err() {
                failures.fetch_add(1, Ordering::SeqCst);
            }
        }
        neighbour.close().await.unwrap();
        pool.close().await.unwrap();
        drop(live);
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (rss1, fds1, dirs1, containers1) = (rss_mib(), open_fds(), host_dirs(), containers());
        // SAFETY: glibc's malloc_trim only returns free heap pages to the system.
        unsafe {
            malloc_trim(0);
        }
        let rss_trimmed = rss_mib();

        println!("\nround {round}");
        println!("load: {sessions} sessions x {execs} execs, {tunnels} tunnels each, one flooding neighbour, a pool serving {runs} runs");
        println!("| what | value |");
        println!("|---|---|");
        println!("| sessions started at once | {sessions} in {:.1} s |", start_time.as_secs_f64());
        println!("| failures (starts, tunnels, execs, closes) | {} |", failures.load(Ordering::SeqCst));
        println!("| pool run failures | {} of {runs} |", pool_failures.load(Ordering::SeqCst));
        println!("| exec p50 / p99, idle | {:.2} / {:.2} ms |", pct_ms(&idle, 0.5), pct_ms(&idle, 0.99));
        if !loaded.is_empty() {
            println!("| exec p50 / p99, under load | {:.2} / {:.2} ms ({} execs in {:.1} s) |", pct_ms(&loaded, 0.5), pct_ms(&loaded, 0.99), loaded.len(), exec_time.as_secs_f64());
        }
        if !pool_times.is_empty() {
            println!("| pool run p50 / p99, under load | {:.0} / {:.0} ms |", pct_ms(&pool_times, 0.5), pct_ms(&pool_times, 0.99));
        }
        println!("| refusals the neighbour caused | {refusals} in {} event(s) |", flood.len());
        println!("| host RSS before / loaded / after close | {rss0:.1} / {rss_loaded:.1} / {rss1:.1} MiB ({:+.0}% after) |", (rss1 - rss0) / rss0 * 100.0);
        println!("| open fds before / loaded / after | {fds0} / {fds_loaded} / {fds1} |");
        println!("| containers left (before {containers0}) | {} |", containers1);
        println!("| host directories left (before {dirs0}) | {} |", dirs1);
        println!("| host RSS after close and malloc_trim(0) | {rss_trimmed:.1} MiB ({:+.0}% of before) |", (rss_trimmed - rss0) / rss0 * 100.0);
        }
    });
}

extern "C" {
    fn malloc_trim(pad: usize) -> i32;
}

/// Runs `n` futures made by `f` concurrently and returns their outputs in order.
async fn futures_join<T, F, Fut>(n: usize, f: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
{
    let handles: Vec<_> = (0..n).map(|i| tokio::spawn(f(i))).collect();
    let mut out = Vec::with_capacity(n);
    for h in handles {
        out.push(h.await.expect("task"));
    }
    out
}
