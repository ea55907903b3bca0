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
use agent_sandbox_benches::{iterations_and_image, pct_ms as pct};

fn main() {
    let (iterations, image) = iterations_and_image(30);
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
    println!("{iterations} interleaved iterations each, image {image}\n");
    println!("| path | median ms | p95 ms |");
    println!("|---|---|---|");
    let mut rows = [
        (
            "agent-sandbox `run(\"true\")` (library: proxy + container + cleanup)",
            ours,
            0,
        ),
        (
            "agent-sandbox `pool.run(\"true\")` (fresh container started ahead)",
            pooled,
            1,
        ),
        (
            "agent-sandbox `pool.run(\"true\")` back to back (waits for the next start)",
            back_to_back,
            0,
        ),
        ("`docker run --rm` same flags (CLI)", theirs, 0),
    ];
    for (name, times, decimals) in &mut rows {
        times.sort();
        let (p50, p95) = (pct(times, 0.5), pct(times, 0.95));
        println!(
            "| {name} | {p50:.decimals$} | {p95:.decimals$} |",
            decimals = *decimals
        );
    }
    let median = |i: usize| pct(&rows[i].1, 0.5);
    println!(
        "\nratio to docker run (median): run {:.2}x, pool {:.3}x, pool back to back {:.2}x",
        median(0) / median(3),
        median(1) / median(3),
        median(2) / median(3)
    );
}
