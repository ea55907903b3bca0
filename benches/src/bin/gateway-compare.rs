//! The gateway path against the direct path: session exec latency, a
//! one-shot run, and a one-shot run with a small workspace (copied in and
//! back through a gateway, bind-mounted directly), on the local engine
//! both ways and, with `--remote`, on the remote test engine (which only
//! has the gateway path). Each row runs in a child process of its own
//! with its environment (`AGENT_SANDBOX_GATEWAY`, `DOCKER_HOST`).
//!
//! Usage: gateway-compare [--iterations N] [--image IMG] [--remote tcp://HOST:PORT]
//!        [--remote-tls tcp://HOST:PORT CERT_PATH]

use std::process::Command;
use std::time::{Duration, Instant};

use agent_sandbox::Sandbox;
use agent_sandbox_benches::{iterations_and_image, pct_ms as pct};

const ROWS: &[(&str, &str)] = &[
    ("local engine, direct (bind mounts, host sockets)", "never"),
    ("local engine, through a gateway", "always"),
];

fn main() {
    if let Ok(name) = std::env::var("GATEWAY_COMPARE_ROW") {
        return row(&name);
    }
    // `--remote HOST` and `--remote-tls HOST CERT_PATH` add rows; the rest
    // is passed on to each row.
    let mut remotes: Vec<(String, Option<String>)> = Vec::new();
    let mut forwarded: Vec<String> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--remote" => remotes.push((args.next().expect("--remote HOST"), None)),
            "--remote-tls" => {
                let host = args.next().expect("--remote-tls HOST CERT_PATH");
                let certs = args.next().expect("--remote-tls HOST CERT_PATH");
                remotes.push((host, Some(certs)));
            }
            _ => forwarded.push(a),
        }
    }
    println!("| path | session exec p50 / p95 ms | run(\"true\") p50 / p95 ms | run with a 100-file workspace p50 / p95 ms |");
    println!("|---|---|---|---|");
    let me = std::env::current_exe().unwrap();
    let mut rows: Vec<(String, Command)> = ROWS
        .iter()
        .map(|(name, mode)| {
            let mut c = Command::new(&me);
            c.args(&forwarded)
                .env("GATEWAY_COMPARE_ROW", name)
                .env("AGENT_SANDBOX_GATEWAY", mode)
                .env_remove("DOCKER_HOST")
                .env_remove("DOCKER_TLS_VERIFY");
            ((*name).to_owned(), c)
        })
        .collect();
    for (host, certs) in remotes {
        let mut c = Command::new(&me);
        let tls = if certs.is_some() { " (TLS)" } else { "" };
        let name = format!("remote engine at {host}{tls}, through a gateway");
        c.args(&forwarded)
            .env("GATEWAY_COMPARE_ROW", &name)
            .env("DOCKER_HOST", &host)
            .env_remove("AGENT_SANDBOX_GATEWAY");
        match certs {
            Some(dir) => c.env("DOCKER_TLS_VERIFY", "1").env("DOCKER_CERT_PATH", dir),
            None => c.env_remove("DOCKER_TLS_VERIFY"),
        };
        rows.push((name, c));
    }
    for (name, mut c) in rows {
        let status = c.status().unwrap();
        assert!(status.success(), "{name}: {status}");
    }
}

fn row(name: &str) {
    let (n, image) = iterations_and_image(200);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let ws = std::env::temp_dir().join(format!("gateway-compare-{}", std::process::id()));
        std::fs::create_dir_all(&ws).unwrap();
        for i in 0..100 {
            std::fs::write(ws.join(format!("f{i}")), vec![b'x'; 1024]).unwrap();
        }
        // A root caller's sandbox runs as the workspace's owner.
        std::os::unix::fs::chown(&ws, Some(1000), Some(1000)).unwrap();
        let b = Sandbox::builder().image(image.clone());
        let s = b.start().await.expect("start a session");
        s.exec("true").await.unwrap();
        let mut exec = Vec::new();
        for _ in 0..n {
            let start = Instant::now();
            assert!(s.exec(["true"]).await.unwrap().success());
            exec.push(start.elapsed());
        }
        s.close().await.unwrap();
        let runs = n.clamp(1, 20);
        let time_runs = async |b: agent_sandbox::SandboxBuilder| {
            let mut t: Vec<Duration> = Vec::new();
            for _ in 0..runs {
                let start = Instant::now();
                let out = b.run(["true"]).await.unwrap();
                assert!(out.success(), "{}", out.stderr_str());
                t.push(start.elapsed());
            }
            t.sort();
            t
        };
        let run = time_runs(b.clone()).await;
        let with_ws = time_runs(b.clone().workspace(&ws)).await;
        exec.sort();
        println!(
            "| {name} | {:.2} / {:.2} | {:.0} / {:.0} | {:.0} / {:.0} |",
            pct(&exec, 0.5),
            pct(&exec, 0.95),
            pct(&run, 0.5),
            pct(&run, 0.95),
            pct(&with_ws, 0.5),
            pct(&with_ws, 0.95),
        );
        let _ = std::fs::remove_dir_all(&ws);
    });
}
