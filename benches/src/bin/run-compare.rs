//! One-shot `run("true")` latency: agent-sandbox (library, in process), cold
//! (`SandboxBuilder::run`) and from a warm `Pool`, against `docker run --rm`
//! with the same hardening flags through the Docker CLI, interleaved in one
//! run. Prints median and p95 of each.
//!
//! A pool run's replacement sandbox starts in the background right after it;
//! the loop waits a second after each pool run so that start does not land
//! inside the next measurement of another path (an agent thinks for longer
//! than that between commands). Back-to-back pool runs, which do wait for
//! the replacement, are measured separately.
//!
//! Usage: run-compare [--iterations N] [--image IMG]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agent_sandbox::Sandbox;

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

fn main() {
    let mut iterations = 30;
    let mut image = std::env::var("AGENT_SANDBOX_IMAGE")
        .unwrap_or_else(|_| "agent-sandbox/base:bookworm".into());
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--iterations" => {
                iterations = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--iterations N")
            }
            "--image" => image = args.next().expect("--image IMG"),
            other => panic!("unknown argument {other}"),
        }
    }
    let uid_gid = {
        use std::os::unix::fs::MetadataExt;
        let me = std::fs::metadata("/proc/self").unwrap();
        format!("{}:{}", me.uid(), me.gid())
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let sandbox = Sandbox::builder().image(image.clone());
    // Warm both paths once (image cache, init binary cache).
    rt.block_on(sandbox.run("true")).expect("agent-sandbox run");
    let pool = rt.block_on(sandbox.pool(1)).expect("agent-sandbox pool");
    rt.block_on(pool.run("true")).expect("pool run");
    std::thread::sleep(Duration::from_secs(1));
    let docker_args = [
        "run",
        "--rm",
        "--read-only",
        "--tmpfs",
        "/tmp:rw,nosuid,nodev,size=536870912,mode=1777",
        "--tmpfs",
        "/run:rw,nosuid,nodev,noexec,size=16777216",
        "--shm-size",
        "67108864",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        "--network",
        "none",
        "--pids-limit",
        "256",
        "--memory",
        "1g",
        "--memory-swap",
        "1g",
        "--cpus",
        "1",
        "--log-driver",
        "none",
        "--ipc",
        "private",
        "--user",
        &uid_gid,
        "-w",
        "/tmp",
        &image,
        "true",
    ];
    let docker = || {
        let ok = Command::new("docker")
            .args(docker_args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("docker CLI");
        assert!(ok.success(), "docker run failed");
    };
    docker();
    let (mut ours, mut pooled, mut theirs) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..iterations {
        let t = Instant::now();
        let out = rt.block_on(sandbox.run("true")).expect("agent-sandbox run");
        assert!(out.success());
        ours.push(t.elapsed());
        let t = Instant::now();
        let out = rt.block_on(pool.run("true")).expect("pool run");
        assert!(out.success());
        pooled.push(t.elapsed());
        std::thread::sleep(Duration::from_secs(1));
        let t = Instant::now();
        docker();
        theirs.push(t.elapsed());
    }
    let mut back_to_back = Vec::new();
    for _ in 0..iterations {
        let t = Instant::now();
        let out = rt.block_on(pool.run("true")).expect("pool run");
        assert!(out.success());
        back_to_back.push(t.elapsed());
    }
    rt.block_on(pool.close()).expect("pool close");
    ours.sort();
    pooled.sort();
    theirs.sort();
    back_to_back.sort();
    println!("{iterations} interleaved iterations each, image {image}\n");
    println!("| path | median ms | p95 ms |");
    println!("|---|---|---|");
    println!(
        "| agent-sandbox `run(\"true\")` (library: proxy + container + cleanup) | {:.0} | {:.0} |",
        pct(&ours, 0.5),
        pct(&ours, 0.95)
    );
    println!(
        "| agent-sandbox `pool.run(\"true\")` (fresh container started ahead) | {:.1} | {:.1} |",
        pct(&pooled, 0.5),
        pct(&pooled, 0.95)
    );
    println!(
        "| agent-sandbox `pool.run(\"true\")` back to back (waits for the next start) | {:.0} | {:.0} |",
        pct(&back_to_back, 0.5),
        pct(&back_to_back, 0.95)
    );
    println!(
        "| `docker run --rm` same flags (CLI) | {:.0} | {:.0} |",
        pct(&theirs, 0.5),
        pct(&theirs, 0.95)
    );
    println!(
        "\nratio to docker run (median): run {:.2}x, pool {:.3}x, pool back to back {:.2}x",
        pct(&ours, 0.5) / pct(&theirs, 0.5),
        pct(&pooled, 0.5) / pct(&theirs, 0.5),
        pct(&back_to_back, 0.5) / pct(&theirs, 0.5)
    );
}
