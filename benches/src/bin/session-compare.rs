//! Exec latency in a warm session, side by side: the init channel, the
//! engine's exec API, the `docker exec` CLI, and a one-shot run; then the
//! host-side memory of an open session.
//!
//! Usage: session-compare [--iterations N] [--image IMG]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agent_sandbox::Sandbox;
use agent_sandbox_benches::{iterations_and_image, pct_ms as pct, rss_kib};

fn main() {
    let (n, image) = iterations_and_image(200);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let b = Sandbox::builder().image(image.clone());
        let s = b.start().await.expect("start a session");
        let id = String::from_utf8(
            Command::new("docker")
                .args([
                    "ps",
                    "-q",
                    "--no-trunc",
                    "--filter",
                    &format!("label=agent-sandbox.id={}", s.id()),
                ])
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap()
        .trim()
        .to_owned();
        let mut rows = Vec::new();
        let mut time = |name: &'static str, times: &mut Vec<Duration>| {
            times.sort();
            rows.push((name, times.len(), pct(times, 0.5), pct(times, 0.95)));
        };
        s.exec("true").await.unwrap();
        let mut t = Vec::new();
        for _ in 0..n {
            let start = Instant::now();
            assert!(s.exec(["true"]).await.unwrap().success());
            t.push(start.elapsed());
        }
        time("session exec via the init channel", &mut t);
        let mut t = Vec::new();
        for _ in 0..n.min(50) {
            let start = Instant::now();
            assert!(s.exec_docker(["true"]).await.unwrap().success());
            t.push(start.elapsed());
        }
        time("session exec via the engine's exec API (bollard)", &mut t);
        let mut t = Vec::new();
        for _ in 0..n.min(30) {
            let start = Instant::now();
            let ok = Command::new("docker")
                .args(["exec", &id, "true"])
                .stdout(Stdio::null())
                .status()
                .unwrap();
            assert!(ok.success());
            t.push(start.elapsed());
        }
        time("`docker exec` CLI", &mut t);
        let mut t = Vec::new();
        for _ in 0..10 {
            let start = Instant::now();
            assert!(b.run("true").await.unwrap().success());
            t.push(start.elapsed());
        }
        time("one-shot run(\"true\")", &mut t);
        s.close().await.unwrap();

        // The setuid sweep after each exec reads every inode of the
        // workspace: exec latency against the workspace's size.
        let mut sweep_rows = Vec::new();
        for files in [0usize, 10_000, 100_000] {
            let ws = std::env::temp_dir().join(format!("as-sweep-{}-{files}", std::process::id()));
            std::fs::create_dir_all(&ws).unwrap();
            for d in 0..files.div_ceil(1000) {
                let dir = ws.join(format!("d{d}"));
                std::fs::create_dir_all(&dir).unwrap();
                for f in 0..1000.min(files - d * 1000) {
                    std::fs::write(dir.join(format!("f{f}")), b"").unwrap();
                }
            }
            // A root caller's sandbox runs as the workspace's owner.
            std::process::Command::new("chown")
                .args(["-R", "1000:1000"])
                .arg(&ws)
                .status()
                .unwrap();
            let s = b.clone().workspace(&ws).start().await.unwrap();
            s.exec("true").await.unwrap();
            let mut t = Vec::new();
            for _ in 0..n.min(50) {
                let start = Instant::now();
                assert!(s.exec(["true"]).await.unwrap().success());
                t.push(start.elapsed());
            }
            s.close().await.unwrap();
            t.sort();
            sweep_rows.push((files, pct(&t, 0.5), pct(&t, 0.95)));
            std::fs::remove_dir_all(&ws).unwrap();
        }

        let before = rss_kib();
        let mut open = Vec::new();
        for _ in 0..20 {
            open.push(b.start().await.unwrap());
        }
        for s in &open {
            s.exec("true").await.unwrap();
        }
        let after = rss_kib();
        for s in &open {
            s.close().await.unwrap();
        }
        println!("{n} iterations (fewer for the slow paths), image {image}\n");
        println!("| path | n | p50 ms | p95 ms |");
        println!("|---|---|---|---|");
        for (name, count, p50, p95) in rows {
            println!("| {name} | {count} | {p50:.2} | {p95:.2} |");
        }
        println!(
            "\nhost-side memory per open session (20 open, RSS delta / 20): {:.2} MiB",
            (after.saturating_sub(before)) as f64 / 20.0 / 1024.0
        );
        println!("\nsession exec with the setuid sweep, by workspace size\n");
        println!("| files in the workspace | p50 ms | p95 ms |");
        println!("|---|---|---|");
        for (files, p50, p95) in sweep_rows {
            println!("| {files} | {p50:.2} | {p95:.2} |");
        }
    });
}
