//! The `agent-sandbox` command line: parsing and printing only; the work is
//! in the `agent-sandbox` library.

use std::fs::OpenOptions;
use std::io::Write;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_sandbox::policy::{Policy, PolicyBuilder};
use agent_sandbox::proxy::{AuditEvent, Limits, Listen, Proxy, Verdict, Via};
use agent_sandbox::runtime::{gc, Engine, PullProgress};
use agent_sandbox::{
    CancelToken, Command as SandboxCommand, Sandbox, SandboxBuilder, SandboxOptions,
};

mod ask;
mod mcp;
mod serve;
mod shell;
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
    /// Run a command in a sandbox: read-only root, one read-write workspace,
    /// no network but the allowlist proxy.
    Run(RunArgs),
    /// Open a session and look around: an interactive shell in the sandbox
    /// (`docker exec -it` when stdin is a terminal, else one command per line).
    Shell(ShellArgs),
    /// Open a session and serve it to another program as JSON lines on
    /// stdin/stdout (exec, write_file, read_file, list, remove, events, allow,
    /// deny, remove_rule, close).
    Serve(ServeArgs),
    /// Open a session and serve it to an MCP client over stdio (tools:
    /// run_command, read_file, write_file, list_files, remove_file,
    /// start_process, process_output, stop_process, request_access).
    Mcp(McpArgs),
    /// Remove sandbox containers whose owning process is gone.
    Gc,
    /// Run the allowlist proxy on its own (HTTP forwarding and CONNECT tunnels).
    Proxy(ProxyArgs),
    /// List the presets (`--preset NAME`) with their hosts.
    Presets,
}

/// The sandbox options (every one of them: the same names as the
/// library's, Python's and Node's; see `SandboxOptions`), plus the audit log.
#[derive(Args)]
struct SandboxArgs {
    #[command(flatten)]
    options: SandboxOptions,
    /// Write audit events as JSON lines to FILE (appended), or - for stderr.
    #[arg(long, value_name = "FILE|-")]
    audit_log: Option<String>,
    /// Ask about each request that matches no rule instead of refusing it:
    /// `run` and `shell` ask on the terminal (once, for the sandbox, always:
    /// added to the --policy file, or deny); `serve` sends an ask event and
    /// waits for an answer op.
    #[arg(long)]
    ask: bool,
}

#[derive(Args)]
struct ShellArgs {
    #[command(flatten)]
    sandbox: SandboxArgs,
    #[command(flatten)]
    publish: PublishArgs,
}

/// Ports of the session reached from the host.
#[derive(Args)]
struct PublishArgs {
    /// Forward a port on the host's 127.0.0.1 (HOSTPORT, or a free one) to
    /// PORT inside the sandbox (a dev server); the sandbox still has no
    /// network. Repeatable.
    #[arg(long = "publish", value_name = "[HOSTPORT:]PORT", value_parser = parse_publish)]
    publish: Vec<(u16, Option<u16>)>,
}

/// `PORT` or `HOSTPORT:PORT` (Docker's order) -> (port inside, host port).
fn parse_publish(s: &str) -> Result<(u16, Option<u16>), String> {
    let port = |p: &str| -> Result<u16, String> {
        match p.parse::<u16>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!(
                "{p:?} is not a port (1-65535); the form is PORT or HOSTPORT:PORT"
            )),
        }
    };
    match s.split_once(':') {
        Some((host, inside)) => Ok((port(inside)?, Some(port(host)?))),
        None => Ok((port(s)?, None)),
    }
}

#[derive(Args)]
struct McpArgs {
    #[command(flatten)]
    sandbox: SandboxArgs,
    #[command(flatten)]
    publish: PublishArgs,
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    sandbox: SandboxArgs,
    /// Speak JSON lines on stdin/stdout (the only transport for now).
    #[arg(long, required = true)]
    stdio: bool,
    /// Sandboxes kept started for `run` requests (each gets a fresh one);
    /// the pool is created at the first `run`.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pool: u16,
    #[command(flatten)]
    publish: PublishArgs,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    sandbox: SandboxArgs,
    /// The command. One argument runs through /bin/sh -c; several run as given.
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<String>,
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
    /// The rules as a builder (pins are parsed here, the rest at build).
    fn builder(&self) -> Result<PolicyBuilder, agent_sandbox::Error> {
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
        Ok(b)
    }

    fn build(&self) -> Result<Policy, agent_sandbox::Error> {
        Ok(self.builder()?.build()?)
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

fn audit_writer(target: &str) -> Result<Box<dyn Write + Send>, agent_sandbox::Error> {
    if target == "-" {
        return Ok(Box::new(std::io::stdout()));
    }
    let file = OpenOptions::new().create(true).append(true).open(target);
    file.map(|f| Box::new(f) as Box<dyn Write + Send>)
        .map_err(|source| agent_sandbox::Error::Io {
            op: "open the audit log",
            path: target.into(),
            source,
        })
}

pub(crate) fn pull_progress(p: &PullProgress) {
    let layer = p.layer.as_deref().unwrap_or("");
    match (p.current, p.total) {
        (Some(c), Some(t)) if t > 0 => {
            let width = 30usize;
            let done = (c.clamp(0, t) as f64 / t as f64 * width as f64) as usize;
            eprint!(
                "\r{layer} {:<12} [{}{}] {:>5.1} / {:.1} MB ",
                p.status,
                "#".repeat(done),
                " ".repeat(width - done),
                c as f64 / 1e6,
                t as f64 / 1e6
            );
        }
        _ => eprintln!("\r{layer} {}", p.status),
    }
}

/// The sandbox the flags describe (shared by run, shell and serve); the
/// workspace defaults to the current directory.
fn sandbox_builder(args: &SandboxArgs) -> Result<SandboxBuilder, agent_sandbox::Error> {
    let mut b = Sandbox::builder()
        .workspace(".")
        .options(args.options.clone());
    if let Some(target) = &args.audit_log {
        let out: Box<dyn Write + Send> = if target == "-" {
            Box::new(std::io::stderr())
        } else {
            audit_writer(target)?
        };
        let out = Mutex::new(out);
        b = b.on_event(move |e: &AuditEvent| {
            if let Ok(mut w) = out.lock() {
                let _ = writeln!(w, "{}", e.to_json());
                let _ = w.flush();
            }
        });
    }
    b.check()?;
    Ok(b)
}

/// [`sandbox_builder`], asking on the terminal with `--ask`.
fn asking_builder(args: &SandboxArgs) -> Result<SandboxBuilder, agent_sandbox::Error> {
    let b = sandbox_builder(args)?;
    if !args.ask {
        return Ok(b);
    }
    let timeout = args
        .options
        .ask_timeout
        .map_or(Duration::from_secs(30), |t| t.0);
    ask::on_tty(b, args.options.policy_file.clone(), timeout)
}

fn presets() -> u8 {
    for p in agent_sandbox::policy::presets() {
        println!("{}@{}: {}", p.name, p.version, p.description);
        for rule in &p.allow {
            println!("  {rule}");
        }
    }
    0
}

async fn run(run_args: RunArgs) -> Result<u8, agent_sandbox::Error> {
    let args = &run_args.sandbox;
    let mut b = asking_builder(args)?;
    b = b
        .on_stdout(|bytes| {
            let mut o = std::io::stdout().lock();
            let _ = o.write_all(bytes);
            let _ = o.flush();
        })
        .on_stderr(|bytes| {
            let mut e = std::io::stderr().lock();
            let _ = e.write_all(bytes);
            let _ = e.flush();
        })
        .on_pull(pull_progress)
        .output_limit(0);
    let cancel = CancelToken::new();
    b = b.cancel_token(cancel.clone());
    let cmd = if run_args.command.len() == 1 {
        SandboxCommand::Shell(run_args.command[0].clone())
    } else {
        SandboxCommand::Argv(run_args.command.clone())
    };
    let run = b.run(cmd);
    tokio::pin!(run);
    let out = tokio::select! {
        r = &mut run => r?,
        sig = wait_for_signal() => {
            cancel.cancel();
            let _ = run.await;
            eprintln!("agent-sandbox: interrupted (signal {sig}); the sandbox was removed");
            return Ok(128 + sig);
        }
    };
    print_refusals(&out.refusals().collect::<Vec<_>>(), out.events_dropped);
    if out.oom_killed {
        eprintln!("agent-sandbox: the command was killed for exceeding the memory limit");
    }
    if out.timed_out {
        eprintln!(
            "agent-sandbox: the command timed out after {:.1}s and was killed",
            args.options
                .timeout
                .map(|t| t.0.as_secs_f64())
                .unwrap_or_default()
        );
        return Ok(124);
    }
    Ok(u8::try_from(out.exit_code.clamp(0, 255)).unwrap_or(1))
}

/// Most distinct refusals the summary lists.
const SUMMARY_LINES: usize = 20;

/// One line per distinct refusal or failure (verdict, method, host, port,
/// reason, how it came) with how many times it happened, so a retry loop
/// is one line, not six, and a flood is a count; at most [`SUMMARY_LINES`]
/// lines.
fn print_refusals(refusals: &[&AuditEvent], dropped: u64) {
    /// Verdict, method, host, port, path, reason, via.
    type Key<'a> = (Verdict, &'a str, &'a str, u16, &'a str, &'a str, Via);
    let mut seen: Vec<(Key<'_>, u64)> = Vec::new();
    for e in refusals {
        let key = (
            e.verdict,
            e.method.as_str(),
            e.host.as_str(),
            e.port,
            e.path.as_deref().unwrap_or_default(),
            e.reason.as_deref().unwrap_or("denied"),
            e.via,
        );
        match seen.iter_mut().find(|(k, _)| *k == key) {
            Some((_, n)) => *n += e.count,
            None => seen.push((key, e.count)),
        }
    }
    if seen.is_empty() {
        return;
    }
    let count = |v: Verdict| -> u64 { seen.iter().filter(|(k, _)| k.0 == v).map(|(_, n)| n).sum() };
    let (denied, failed) = (count(Verdict::Deny), count(Verdict::Error));
    let mut what = Vec::new();
    if denied > 0 {
        what.push(format!("{denied} network request(s) refused by the policy"));
    }
    if failed > 0 {
        what.push(format!("{failed} allowed but failed to connect"));
    }
    eprintln!("agent-sandbox: {}:", what.join(", "));
    for ((verdict, method, host, port, path, reason, via), n) in seen.iter().take(SUMMARY_LINES) {
        let times = if *n > 1 {
            format!(" x{n}")
        } else {
            String::new()
        };
        let how = match (verdict, via) {
            (Verdict::Error, _) => ", failed",
            (_, Via::Capture) => ", captured",
            _ => "",
        };
        eprintln!("  {method} {host}:{port}{path} ({reason}{how}){times}");
    }
    if seen.len() > SUMMARY_LINES {
        eprintln!("  ... and {} more", seen.len() - SUMMARY_LINES);
    }
    if dropped > 0 {
        eprintln!("  ({dropped} older event(s) were dropped: the log keeps the latest 4096)");
    }
}

async fn gc_cmd() -> Result<u8, agent_sandbox::Error> {
    let engine = Engine::connect().await?;
    let report = gc(&engine).await?;
    for id in &report.removed {
        println!("removed {}", &id[..id.len().min(12)]);
    }
    for dir in &report.dirs_removed {
        println!("removed {}", dir.display());
    }
    for v in &report.volumes_removed {
        println!("removed volume {v}");
    }
    eprintln!(
        "agent-sandbox gc: removed {} container(s), {} volume(s) and {} host director(ies), kept {} (owner still running or on another host)",
        report.removed.len(),
        report.volumes_removed.len(),
        report.dirs_removed.len(),
        report.kept
    );
    Ok(0)
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
    let _ = wait_for_signal().await;
    handle.shutdown().await;
    eprintln!("agent-sandbox proxy stopped");
    Ok(())
}

/// The signals every mode cleans up on. Registered once, first thing, so a
/// signal that arrives while a sandbox is still starting is held for the
/// mode's next look instead of ending the process with its sandbox running.
struct Signals {
    int: Option<tokio::signal::unix::Signal>,
    term: Option<tokio::signal::unix::Signal>,
    hup: Option<tokio::signal::unix::Signal>,
    quit: Option<tokio::signal::unix::Signal>,
}

static SIGNALS: std::sync::OnceLock<tokio::sync::Mutex<Signals>> = std::sync::OnceLock::new();

/// Installs the handlers (inside the runtime, before anything starts).
fn install_signals() {
    use tokio::signal::unix::{signal, SignalKind};
    let _ = SIGNALS.set(tokio::sync::Mutex::new(Signals {
        int: signal(SignalKind::interrupt()).ok(),
        term: signal(SignalKind::terminate()).ok(),
        hup: signal(SignalKind::hangup()).ok(),
        quit: signal(SignalKind::quit()).ok(),
    }));
}

/// Resolves with the first of SIGINT, SIGTERM, SIGHUP or SIGQUIT since the
/// handlers were installed (each would otherwise end the process without
/// removing its sandbox): every mode cleans up on any of them and exits
/// with 128 + the signal.
pub(crate) async fn wait_for_signal() -> u8 {
    async fn recv(s: &mut Option<tokio::signal::unix::Signal>) {
        match s {
            Some(s) => {
                s.recv().await;
            }
            None => std::future::pending().await,
        }
    }
    let Some(signals) = SIGNALS.get() else {
        return std::future::pending().await;
    };
    let mut s = signals.lock().await;
    let s = &mut *s;
    tokio::select! {
        () = recv(&mut s.int) => 2,
        () = recv(&mut s.term) => 15,
        () = recv(&mut s.hup) => 1,
        () = recv(&mut s.quit) => 3,
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
        install_signals();
        match cli.command {
            Command::Run(args) => run(args).await,
            Command::Shell(args) => {
                shell::shell(asking_builder(&args.sandbox)?, &args.publish.publish).await
            }
            Command::Serve(args) => {
                let ask = args.sandbox.ask;
                let b = sandbox_builder(&args.sandbox)?;
                serve::serve(b, usize::from(args.pool), ask, &args.publish.publish).await
            }
            Command::Mcp(args) => {
                let o = &args.sandbox.options;
                let ask = args
                    .sandbox
                    .ask
                    .then(|| o.ask_timeout.map_or(Duration::from_secs(30), |t| t.0));
                let limit = o.output_limit.map(|l| l.as_usize());
                let b = sandbox_builder(&args.sandbox)?;
                mcp::serve(b, ask, &args.publish.publish, limit).await
            }
            Command::Presets => Ok(presets()),
            Command::Gc => gc_cmd().await,
            Command::Proxy(args) => proxy(args).await.map(|()| 0),
        }
    });
    // A read of stdin may still sit in a blocking thread (serve, shell):
    // exit without waiting for it. Every sandbox is closed by now.
    rt.shutdown_background();
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("agent-sandbox: error: {e}");
            // 2 for bad input, 1 for a busy listen address, and 125 (as
            // `docker run` does) when the sandbox itself could not run.
            let usage = matches!(
                e.code(),
                "policy" | "listen" | "invalid_argument" | "workspace"
            );
            ExitCode::from(if usage {
                2
            } else if e.code() == "bind" {
                1
            } else {
                125
            })
        }
    }
}
