//! An agent-style loop in Rust: every proposed command runs auto-approved in
//! one warm session; refusals come back as data.
//!
//! ```sh
//! AGENT_SANDBOX_IMAGE=agent-sandbox/base:bookworm cargo run -p agent-sandbox --example agent_loop -- /tmp/ws
//! ```

use std::time::Duration;

use agent_sandbox::proxy::Verdict;
use agent_sandbox::{ExecOptions, Sandbox};

const PROPOSED: &[&str] = &[
    "uname -sr",
    "echo 'fn main() {}' > main.rs && ls -l",
    "curl -sS -o /dev/null https://registry.npmjs.org/", // not allowed: refused by the proxy
    "rm -rf /usr 2>&1 | tail -1",                        // read-only root
];

#[tokio::main]
async fn main() -> Result<(), agent_sandbox::Error> {
    let workspace = std::env::args().nth(1).unwrap_or_else(|| ".".into());
    let session = Sandbox::builder()
        .workspace(workspace)
        .allow("static.crates.io")
        .timeout(Duration::from_secs(120))
        .start()
        .await?;
    for cmd in PROPOSED {
        println!("$ {cmd}");
        let out = session
            .exec_with(*cmd, ExecOptions::new().timeout(Duration::from_secs(60)))
            .await?;
        for line in out.stdout_str().lines().chain(out.stderr_str().lines()) {
            println!("  {line}");
        }
        for e in out.events.iter().filter(|e| e.verdict == Verdict::Deny) {
            println!(
                "  (network: {}:{} refused: {})",
                e.host,
                e.port,
                e.reason.as_deref().unwrap_or("denied")
            );
        }
        println!("  -> exit {}", out.exit_code);
    }
    session.close().await
}
