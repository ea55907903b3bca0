//! What the comparison binaries share.

use std::time::Duration;

/// The `p` quantile (0..=1) of sorted durations, in milliseconds.
#[must_use]
pub fn pct_ms(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

/// `[--iterations N] [--image IMG]`: the iterations (default `iterations`)
/// and the image (default `AGENT_SANDBOX_IMAGE`, else the local base image).
///
/// # Panics
/// On an unknown argument or a missing or malformed value.
#[must_use]
pub fn iterations_and_image(iterations: usize) -> (usize, String) {
    let mut n = iterations;
    let mut image = std::env::var("AGENT_SANDBOX_IMAGE")
        .unwrap_or_else(|_| "agent-sandbox/base:bookworm".into());
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--iterations" => {
                n = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--iterations N")
            }
            "--image" => image = args.next().expect("--image IMG"),
            other => panic!("unknown argument {other}"),
        }
    }
    (n, image)
}

/// This process's resident memory, in KiB (0 if unreadable).
#[must_use]
pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}
