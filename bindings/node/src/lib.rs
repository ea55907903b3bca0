//! Node bindings: translate options, make one core call, translate the
//! result or the error. The JS loader (`npm/index.js`) adds the `Sandbox`
//! class, `AbortSignal` support and the `SandboxError` type on top.
// napi's macros expand to unsafe FFI glue.
#![allow(unsafe_code)]
// napi registers exports only outside cfg(test), so test builds see them as unused.
#![cfg_attr(test, allow(dead_code))]

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use agent_sandbox::proxy::{AuditEvent, Verdict};
use agent_sandbox::{parse_size, CancelToken, Command, Error, Output, Sandbox, SandboxBuilder};
use napi::bindgen_prelude::*;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi_derive::napi;

mod pool;
mod session;

/// Options of a sandbox, mirroring the Rust builder and the CLI flags.
#[napi(object)]
pub struct SandboxOptions {
    /// Image (default: `AGENT_SANDBOX_IMAGE`, else `debian:bookworm-slim`).
    pub image: Option<String>,
    /// The read-write directory mounted at `/workspace`.
    pub workspace: Option<String>,
    /// Host rules to allow.
    pub allow: Option<Vec<String>>,
    /// Host rules to deny (deny wins).
    pub deny: Option<Vec<String>>,
    /// Networks to allow (the only way to IP literals and private ranges).
    pub allow_cidr: Option<Vec<String>>,
    /// Networks to deny.
    pub deny_cidr: Option<Vec<String>>,
    /// `HOST:PORT:ADDR` pins, as curl's `--resolve` takes them.
    pub resolve: Option<Vec<String>>,
    /// Environment variables.
    pub env: Option<HashMap<String, String>>,
    /// Kill the command after this many milliseconds.
    pub timeout_ms: Option<f64>,
    /// Bytes, or Docker's size text (`"512m"`).
    pub memory: Option<Either<i64, String>>,
    /// CPU limit (default 1).
    pub cpus: Option<f64>,
    /// Process limit (default 256).
    pub pids: Option<i64>,
    /// Bytes of stdout and of stderr kept (default 16 MiB each).
    pub output_limit: Option<u32>,
}

/// The verdict of an audit event.
#[napi(string_enum = "lowercase")]
pub enum EventVerdict {
    /// The policy allowed the destination.
    Allow,
    /// The request was refused.
    Deny,
}

/// One decision of the network proxy.
#[napi(object)]
pub struct SandboxEvent {
    /// RFC 3339 time of the request.
    pub time: String,
    /// The sandbox id.
    pub sandbox_id: Option<String>,
    /// Allowed or denied.
    pub verdict: EventVerdict,
    /// `CONNECT`, `GET`, ...
    pub method: String,
    /// Canonical host.
    pub host: String,
    /// Destination port.
    pub port: u32,
    /// The deciding rule, as written.
    pub rule: Option<String>,
    /// Why it was refused or failed.
    pub reason: Option<String>,
    /// The status the proxy answered with.
    pub status: u32,
    /// Bytes from the sandbox.
    pub bytes_up: i64,
    /// Bytes to the sandbox.
    pub bytes_down: i64,
    /// Duration in milliseconds.
    pub duration_ms: i64,
}

/// The result of a run.
#[napi(object)]
pub struct RunResult {
    /// Exit code (137 after a timeout or OOM kill).
    pub exit_code: i64,
    /// Captured stdout (text).
    pub stdout: String,
    /// Captured stderr (text).
    pub stderr: String,
    /// Whether stdout hit the output limit.
    pub stdout_truncated: bool,
    /// Whether stderr hit the output limit.
    pub stderr_truncated: bool,
    /// Whether the timeout killed the command.
    pub timed_out: bool,
    /// Whether the memory limit killed it.
    pub oom_killed: bool,
    /// Duration in milliseconds.
    pub duration_ms: f64,
    /// Every network decision of the run.
    pub events: Vec<SandboxEvent>,
    /// The sandbox id.
    pub sandbox_id: String,
}

pub(crate) type TextCallback = ThreadsafeFunction<String, (), String, Status, false, false, 1024>;

/// Feeds output chunks to a JS callback as text (never blocking the runtime).
pub(crate) fn text_sink(cb: TextCallback) -> impl Fn(&[u8]) + Send + Sync + 'static {
    move |bytes: &[u8]| {
        cb.call(
            String::from_utf8_lossy(bytes).into_owned(),
            ThreadsafeFunctionCallMode::NonBlocking,
        );
    }
}

pub(crate) fn event(e: &AuditEvent) -> SandboxEvent {
    SandboxEvent {
        time: e.time_rfc3339(),
        sandbox_id: e.sandbox_id.clone(),
        verdict: if e.verdict == Verdict::Allow {
            EventVerdict::Allow
        } else {
            EventVerdict::Deny
        },
        method: e.method.clone(),
        host: e.host.clone(),
        port: u32::from(e.port),
        rule: e.rule.clone(),
        reason: e.reason.clone(),
        status: u32::from(e.status),
        bytes_up: i64::try_from(e.bytes_up).unwrap_or(i64::MAX),
        bytes_down: i64::try_from(e.bytes_down).unwrap_or(i64::MAX),
        duration_ms: i64::try_from(e.duration_ms).unwrap_or(i64::MAX),
    }
}

pub(crate) fn result(o: Output) -> RunResult {
    RunResult {
        exit_code: o.exit_code,
        stdout: o.stdout_str(),
        stderr: o.stderr_str(),
        stdout_truncated: o.stdout_truncated,
        stderr_truncated: o.stderr_truncated,
        timed_out: o.timed_out,
        oom_killed: o.oom_killed,
        duration_ms: o.duration.as_secs_f64() * 1e3,
        events: o.events.iter().map(event).collect(),
        sandbox_id: o.sandbox_id,
    }
}

/// `shell`: the loader passed a single string for `/bin/sh -c`.
pub(crate) fn to_command(command: Vec<String>, shell: bool) -> Command {
    match (shell, command.as_slice()) {
        (true, [one]) => Command::Shell(one.clone()),
        _ => Command::Argv(command),
    }
}

/// Errors cross as `[agent-sandbox:CODE] message`; the loader turns them
/// into `SandboxError` with `err.code === CODE`.
pub(crate) fn js_err(e: Error) -> napi::Error {
    napi::Error::new(
        Status::GenericFailure,
        format!("[agent-sandbox:{}] {e}", e.code()),
    )
}

pub(crate) fn builder(o: SandboxOptions) -> Result<SandboxBuilder> {
    let mut b = Sandbox::builder();
    if let Some(i) = o.image {
        b = b.image(i);
    }
    if let Some(w) = o.workspace {
        b = b.workspace(w);
    }
    b = o
        .allow
        .unwrap_or_default()
        .into_iter()
        .fold(b, SandboxBuilder::allow);
    b = o
        .deny
        .unwrap_or_default()
        .into_iter()
        .fold(b, SandboxBuilder::deny);
    b = o
        .allow_cidr
        .unwrap_or_default()
        .into_iter()
        .fold(b, SandboxBuilder::allow_cidr);
    b = o
        .deny_cidr
        .unwrap_or_default()
        .into_iter()
        .fold(b, SandboxBuilder::deny_cidr);
    b = o
        .resolve
        .unwrap_or_default()
        .into_iter()
        .fold(b, SandboxBuilder::resolve_spec);
    for (k, v) in o.env.unwrap_or_default() {
        b = b.env(k, v);
    }
    if let Some(ms) = o.timeout_ms {
        let invalid = || {
            js_err(Error::InvalidArgument {
                what: "timeoutMs".into(),
                reason: format!("{ms} is not a number of milliseconds"),
            })
        };
        b = b.timeout(Duration::try_from_secs_f64(ms / 1e3).map_err(|_| invalid())?);
    }
    match o.memory {
        Some(Either::A(n)) => b = b.memory(n),
        Some(Either::B(s)) => b = b.memory(parse_size(&s).map_err(js_err)?),
        None => {}
    }
    if let Some(c) = o.cpus {
        b = b.cpus(c);
    }
    if let Some(p) = o.pids {
        b = b.pids(p);
    }
    if let Some(l) = o.output_limit {
        b = b.output_limit(l as usize);
    }
    Ok(b)
}

/// Native objects that JS holds by a numeric id (cancel tokens, sessions,
/// pools): JS classes keep the id, the object lives here until taken.
pub(crate) struct Handles<T> {
    map: OnceLock<Mutex<HashMap<u32, T>>>,
    next: std::sync::atomic::AtomicU32,
}

impl<T: Clone> Handles<T> {
    pub(crate) const fn new() -> Self {
        Handles {
            map: OnceLock::new(),
            next: std::sync::atomic::AtomicU32::new(1),
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<u32, T>> {
        let m = self.map.get_or_init(Default::default);
        m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Keeps `value` and returns its new id.
    pub(crate) fn insert(&self, value: T) -> u32 {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.map().insert(id, value);
        id
    }

    pub(crate) fn get(&self, id: u32) -> Option<T> {
        self.map().get(&id).cloned()
    }

    pub(crate) fn take(&self, id: u32) -> Option<T> {
        self.map().remove(&id)
    }
}

/// Cancel tokens by id, so a JS `AbortSignal` can reach a run in flight.
static TOKENS: Handles<CancelToken> = Handles::new();

/// Registers a cancel token and returns its id.
#[napi]
pub fn new_cancel_id() -> u32 {
    TOKENS.insert(CancelToken::new())
}

/// Cancels the run holding this id: its container is killed and removed.
#[napi]
pub fn cancel(id: u32) {
    if let Some(t) = TOKENS.get(id) {
        t.cancel();
    }
}

/// Checks options without running anything (so `new Sandbox(opts)` fails early on bad types).
#[napi]
pub fn check_options(options: SandboxOptions) -> Result<()> {
    builder(options).map(|_| ())
}

/// Runs a command in a fresh sandbox. `shell`: run `command[0]` through `/bin/sh -c`.
#[napi]
#[allow(clippy::too_many_arguments)]
pub async fn run(
    options: SandboxOptions,
    command: Vec<String>,
    shell: bool,
    // Spelled out (not the aliases) so the generated .d.ts names real types.
    // At most 1024 events (and 1024 output chunks) wait for a busy JS
    // thread: past it the callback misses them (they are still in the
    // result, up to its limits), so a flood from the sandbox never queues
    // without bound in the host.
    on_stdout: Option<ThreadsafeFunction<String, (), String, Status, false, false, 1024>>,
    on_stderr: Option<ThreadsafeFunction<String, (), String, Status, false, false, 1024>>,
    on_event: Option<
        ThreadsafeFunction<SandboxEvent, (), SandboxEvent, Status, false, false, 1024>,
    >,
    cancel_id: Option<u32>,
) -> Result<RunResult> {
    let mut b = builder(options)?;
    if let Some(cb) = on_stdout {
        b = b.on_stdout(text_sink(cb));
    }
    if let Some(cb) = on_stderr {
        b = b.on_stderr(text_sink(cb));
    }
    if let Some(cb) = on_event {
        b = b.on_event(move |e| {
            cb.call(event(e), ThreadsafeFunctionCallMode::NonBlocking);
        });
    }
    let token = cancel_id.and_then(|id| TOKENS.get(id));
    if let Some(t) = token {
        b = b.cancel_token(t);
    }
    let cmd = to_command(command, shell);
    let out = b.run(cmd).await;
    if let Some(id) = cancel_id {
        TOKENS.take(id);
    }
    out.map(result).map_err(js_err)
}
