//! The `agent-sandbox` command line: parsing and printing only; the work is
//! in the `agent-sandbox` library.

use std::fs::OpenOptions;
use std::io::Write;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_sandbox::policy::{Policy, PolicyBuilder};
use agent_sandbox::proxy::{AuditEvent, Limits, Listen, Proxy};
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "agent-sandbox",
    version,
    about = "Run AI agents' commands in a box they cannot leave"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the allowlist proxy on its own (HTTP forwarding and CONNECT tunnels).
    Proxy(ProxyArgs),
}

/// Network policy flags, shared by every command that builds a policy.
#[derive(Args)]
struct PolicyArgs {
    /// Allow a host: github.com, *.github.com (subdomains), .github.com (apex and subdomains),
    /// with an optional :PORT or :* (default ports 80 and 443). Repeatable.
    #[arg(long = "allow", value_name = "RULE")]
    allow: Vec<String>,
    /// Deny a host (same syntax; wins over --allow; without a port, every port). Repeatable.
    #[arg(long = "deny", value_name = "RULE")]
    deny: Vec<String>,
    /// Allow a network: the only way to reach IP literals and private/loopback/link-local
    /// addresses (e.g. 10.0.0.0/8, ::1/128, 127.0.0.1/32:8080). Repeatable.
    #[arg(long = "allow-cidr", value_name = "CIDR")]
    allow_cidr: Vec<String>,
    /// Deny a network (wins over everything). Repeatable.
    #[arg(long = "deny-cidr", value_name = "CIDR")]
    deny_cidr: Vec<String>,
    /// Pin HOST:PORT to ADDR, like curl's --resolve (the name must still be allowed). Repeatable.
    #[arg(long = "resolve", value_name = "HOST:PORT:ADDR")]
    resolve: Vec<String>,
}

impl PolicyArgs {
    fn build(&self) -> Result<Policy, agent_sandbox::Error> {
        let mut b = PolicyBuilder::default();
        for r in &self.allow {
            b = b.allow(r);
        }
        for r in &self.deny {
            b = b.deny(r);
        }
        for r in &self.allow_cidr {
            b = b.allow_cidr(r);
        }
        for r in &self.deny_cidr {
            b = b.deny_cidr(r);
        }
        for r in &self.resolve {
            b = b.resolve_spec(r)?;
        }
        Ok(b.build()?)
    }
}

#[derive(Args)]
struct ProxyArgs {
    /// Where to listen: IP:PORT or unix:/path.
    #[arg(long, default_value = "127.0.0.1:8888")]
    listen: String,
    #[command(flatten)]
    policy: PolicyArgs,
    /// Write audit events as JSON lines to FILE (appended), or - for stdout.
    #[arg(long, value_name = "FILE|-")]
    audit_log: Option<String>,
    /// Connections served at once; more are answered 503.
    #[arg(long, default_value_t = Limits::default().max_connections)]
    max_connections: usize,
    /// Close a tunnel after this many seconds with no traffic.
    #[arg(long, value_name = "SECS", default_value_t = Limits::default().idle_timeout.as_secs())]
    idle_timeout: u64,
}

fn audit_writer(target: &str) -> std::io::Result<Box<dyn Write + Send>> {
    if target == "-" {
        return Ok(Box::new(std::io::stdout()));
    }
    Ok(Box::new(
        OpenOptions::new().create(true).append(true).open(target)?,
    ))
}

async fn proxy(args: ProxyArgs) -> Result<(), agent_sandbox::Error> {
    let policy = args.policy.build()?;
    let listen = Listen::parse(&args.listen)?;
    let mut limits = Limits::default();
    limits.max_connections = args.max_connections;
    limits.idle_timeout = Duration::from_secs(args.idle_timeout);
    let mut builder = Proxy::builder(policy).limits(limits);
    if let Some(target) = &args.audit_log {
        let out = Mutex::new(audit_writer(target)?);
        let out = Arc::new(out);
        builder = builder.on_event(move |e: &AuditEvent| {
            if let Ok(mut w) = out.lock() {
                let _ = writeln!(w, "{}", e.to_json());
                let _ = w.flush();
            }
        });
    }
    let handle = builder.start(&listen).await?;
    eprintln!(
        "agent-sandbox proxy listening on {} (Ctrl-C to stop)",
        handle.local_addr()
    );
    wait_for_signal().await;
    handle.shutdown().await;
    eprintln!("agent-sandbox proxy stopped");
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("agent-sandbox: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Proxy(args) => proxy(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("agent-sandbox: error: {e}");
            ExitCode::from(if e.code() == "policy" || e.code() == "listen" {
                2
            } else {
                1
            })
        }
    }
}
