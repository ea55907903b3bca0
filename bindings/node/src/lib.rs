//! Node's native addon: `#[napi]` classes holding the core's handles.
//! Options arrive as JSON and go through the core's options layer (Node's
//! camelCase spelling, durations in milliseconds); results leave as the
//! core's JSON; errors are thrown as the loader's own `SandboxError` class,
//! with the core's code. The loader (`npm/index.js`) adds what is
//! JavaScript's: option objects, `AbortSignal`, camelCase results.
// napi's macros expand to unsafe FFI glue.
#![allow(unsafe_code)]
// napi registers exports only outside cfg(test), so test builds see them as unused.
#![cfg_attr(test, allow(dead_code))]
// The loader calls each method once, with positional arguments.
#![allow(clippy::too_many_arguments)]

use std::future::Future;

use agent_sandbox::ask::{AskAnswer, AskRequest};
use agent_sandbox::options::{Naming, RuleChange, SandboxOptions};
use agent_sandbox::{CancelToken, Command, Error as CoreError, ExecOptions, Output};
use napi::bindgen_prelude::*;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi_derive::napi;

/// At most 1024 chunks (or events) wait for a busy JS thread: past it the
/// callback misses them (they are still in the result, up to its limits), so
/// a flood from the sandbox never queues without bound in the host.
type TextCallback = ThreadsafeFunction<String, (), String, Status, false, false, 1024>;
/// The loader's ask wrapper: the request as JSON text in, a promise of the
/// answer as JSON text out (it catches the user's exceptions itself).
/// Weak: a sandbox kept for later does not keep the process alive.
type AskCallback = ThreadsafeFunction<String, Promise<String>, String, Status, false, true>;
type ErrorClass = FunctionRef<FnArgs<(String, String)>, Unknown<'static>>;

/// Registers the loader's `SandboxError` class (`new SandboxError(message,
/// code)`) for this JS environment (each worker thread has its own).
#[napi]
pub fn set_error_class(
    env: Env,
    error_class: Function<FnArgs<(String, String)>, Unknown<'static>>,
) -> Result<()> {
    env.set_instance_data(error_class.create_ref()?, (), |_| {})
}

/// A `SandboxError` for a core error, thrown or rejected as it is (a plain
/// `Error` with the same message if the loader registered no class).
fn js_error(env: &Env, e: &CoreError) -> Error {
    let made = env.get_instance_data::<ErrorClass>().and_then(|class| {
        let class = class.ok_or_else(|| Error::from_reason(e.to_string()))?;
        let args = FnArgs::from((e.to_string(), e.code().to_owned()));
        class.borrow_back(env)?.new_instance(args)
    });
    match made {
        Ok(err) => Error::from(err),
        Err(failed) => failed,
    }
}

/// A promise of `fut`, finished by `done` on the JS thread; a core error
/// rejects it with a `SandboxError`.
fn promise<'e, T: Send + 'static, V: ToNapiValue>(
    env: &'e Env,
    fut: impl Future<Output = std::result::Result<T, CoreError>> + Send + 'static,
    done: impl FnOnce(&Env, T) -> Result<V> + 'static,
) -> Result<PromiseRaw<'e, V>> {
    env.spawn_future_with_callback(async move { Ok(fut.await) }, move |env, r| match r {
        Ok(v) => done(env, v),
        Err(e) => Err(js_error(env, &e)),
    })
}

/// A [`SyncReport`](agent_sandbox::SyncReport) as JSON: `{"written", "removed", "conflicts"}`.
fn report(_: &Env, r: agent_sandbox::SyncReport) -> Result<String> {
    Ok(serde_json::json!({
        "written": r.written,
        "removed": r.removed,
        "conflicts": r.conflicts,
    })
    .to_string())
}

fn text_sink(cb: TextCallback) -> impl Fn(&[u8]) + Send + Sync + 'static {
    move |bytes: &[u8]| {
        cb.call(
            String::from_utf8_lossy(bytes).into_owned(),
            ThreadsafeFunctionCallMode::NonBlocking,
        );
    }
}

/// Adds the ask callback to `b`: called on the JS thread, awaited here.
fn with_ask(
    b: agent_sandbox::SandboxBuilder,
    on_ask: Option<AskCallback>,
) -> agent_sandbox::SandboxBuilder {
    let Some(cb) = on_ask else { return b };
    let cb = std::sync::Arc::new(cb);
    b.on_ask(move |req: AskRequest| {
        let cb = cb.clone();
        async move {
            let answer = match cb.call_async(req.to_json().to_string()).await {
                Ok(promise) => promise.await,
                Err(e) => Err(e),
            };
            match answer {
                Ok(text) => AskAnswer::from_text(&text),
                Err(e) => AskAnswer::deny(format!("the ask callback failed: {e}")),
            }
        }
    })
}

fn command(argv: Vec<String>, shell: bool) -> Command {
    match (shell, argv.as_slice()) {
        (true, [one]) => Command::Shell(one.clone()),
        _ => Command::Argv(argv),
    }
}

/// Per-command options: JSON through the core's parser, then stdin and callbacks.
fn exec_options(
    env: &Env,
    json: &str,
    stdin: Option<Buffer>,
    on_stdout: Option<TextCallback>,
    on_stderr: Option<TextCallback>,
) -> Result<ExecOptions> {
    let mut o = ExecOptions::from_json(json, Naming::Camel).map_err(|e| js_error(env, &e))?;
    if let Some(data) = stdin {
        o = o.stdin(data.to_vec());
    }
    if let Some(cb) = on_stdout {
        o = o.on_stdout(text_sink(cb));
    }
    if let Some(cb) = on_stderr {
        o = o.on_stderr(text_sink(cb));
    }
    Ok(o)
}

fn json(o: Output) -> String {
    o.to_json(true).to_string()
}

/// A sandbox configuration (validated at construction).
#[napi]
pub struct Sandbox(agent_sandbox::SandboxBuilder);

#[napi]
impl Sandbox {
    /// `options`: the JSON of a `SandboxOptions` object.
    #[napi(constructor)]
    pub fn new(env: Env, options: String) -> Result<Self> {
        let b = SandboxOptions::from_json(&options, Naming::Camel)
            .map(|o| agent_sandbox::Sandbox::builder().options(o))
            .and_then(|b| b.check().map(|()| b));
        b.map(Sandbox).map_err(|e| js_error(&env, &e))
    }

    /// Runs a command in a fresh sandbox; resolves to the result's JSON.
    #[napi(ts_return_type = "Promise<string>")]
    pub fn run<'e>(
        &self,
        env: &'e Env,
        command_argv: Vec<String>,
        shell: bool,
        options: String,
        stdin: Option<Buffer>,
        on_stdout: Option<TextCallback>,
        on_stderr: Option<TextCallback>,
        on_event: Option<TextCallback>,
        cancel: &Cancel,
        on_ask: Option<AskCallback>,
    ) -> Result<PromiseRaw<'e, String>> {
        let opts = exec_options(env, &options, stdin, on_stdout, on_stderr)?;
        let mut b = with_ask(self.0.clone(), on_ask).cancel_token(cancel.0.clone());
        if let Some(cb) = on_event {
            b = b.on_event(move |e| {
                cb.call(e.to_json(), ThreadsafeFunctionCallMode::NonBlocking);
            });
        }
        let cmd = command(command_argv, shell);
        promise(env, async move { b.run_with(cmd, opts).await }, |_, o| {
            Ok(json(o))
        })
    }

    /// Starts a session.
    #[napi(ts_return_type = "Promise<Session>")]
    pub fn start<'e>(
        &self,
        env: &'e Env,
        on_ask: Option<AskCallback>,
    ) -> Result<PromiseRaw<'e, Session>> {
        let b = with_ask(self.0.clone(), on_ask);
        promise(env, async move { b.start().await }, |_, s| Ok(Session(s)))
    }

    /// Starts a pool of `size` sandboxes.
    #[napi(ts_return_type = "Promise<Pool>")]
    pub fn pool<'e>(
        &self,
        env: &'e Env,
        size: u32,
        on_ask: Option<AskCallback>,
    ) -> Result<PromiseRaw<'e, Pool>> {
        let b = with_ask(self.0.clone(), on_ask);
        promise(env, async move { b.pool(size as usize).await }, |_, p| {
            Ok(Pool(p))
        })
    }
}

/// Cancels a run (an `AbortSignal`): its container is killed and removed.
#[napi]
pub struct Cancel(CancelToken);

#[napi]
impl Cancel {
    /// A token not cancelled yet.
    #[napi(constructor)]
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        Cancel(CancelToken::new())
    }

    /// Cancels the run holding this token.
    #[napi]
    pub fn cancel(&self) {
        self.0.cancel();
    }
}

/// A started session.
#[napi]
pub struct Session(agent_sandbox::Session);

#[napi]
impl Session {
    /// The sandbox id.
    #[napi(getter)]
    pub fn sandbox_id(&self) -> String {
        self.0.id().to_owned()
    }

    /// Runs a command; resolves to the result's JSON.
    #[napi(ts_return_type = "Promise<string>")]
    pub fn exec<'e>(
        &self,
        env: &'e Env,
        command_argv: Vec<String>,
        shell: bool,
        options: String,
        stdin: Option<Buffer>,
        on_stdout: Option<TextCallback>,
        on_stderr: Option<TextCallback>,
    ) -> Result<PromiseRaw<'e, String>> {
        let opts = exec_options(env, &options, stdin, on_stdout, on_stderr)?;
        let (s, cmd) = (self.0.clone(), command(command_argv, shell));
        promise(env, async move { s.exec_with(cmd, opts).await }, |_, o| {
            Ok(json(o))
        })
    }

    /// Writes a file under /workspace or /tmp.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn write_file<'e>(
        &self,
        env: &'e Env,
        path: String,
        data: Buffer,
    ) -> Result<PromiseRaw<'e, ()>> {
        let (s, data) = (self.0.clone(), data.to_vec());
        promise(
            env,
            async move { s.write_file(&path, data).await },
            |_, ()| Ok(()),
        )
    }

    /// Reads a file under /workspace or /tmp.
    #[napi(ts_return_type = "Promise<Buffer>")]
    pub fn read_file<'e>(&self, env: &'e Env, path: String) -> Result<PromiseRaw<'e, Buffer>> {
        let s = self.0.clone();
        promise(env, async move { s.read_file(&path).await }, |_, d| {
            Ok(Buffer::from(d))
        })
    }

    /// Resolves to `{"entries": [{name, kind, size}], "truncated": bool}` as JSON.
    #[napi(ts_return_type = "Promise<string>")]
    pub fn listing<'e>(&self, env: &'e Env, path: String) -> Result<PromiseRaw<'e, String>> {
        let s = self.0.clone();
        promise(env, async move { s.listing(&path).await }, |_, l| {
            let entries: Vec<_> = l
                .entries
                .iter()
                .map(|e| serde_json::json!({"name": e.name, "kind": e.kind, "size": e.size}))
                .collect();
            Ok(serde_json::json!({"entries": entries, "truncated": l.truncated}).to_string())
        })
    }

    /// Removes a file, a symlink or an empty directory.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn remove<'e>(&self, env: &'e Env, path: String) -> Result<PromiseRaw<'e, ()>> {
        let s = self.0.clone();
        promise(env, async move { s.remove(&path).await }, |_, ()| Ok(()))
    }

    /// Copies a local directory or tar file into the sandbox at `dest`.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn upload<'e>(
        &self,
        env: &'e Env,
        local: String,
        dest: String,
    ) -> Result<PromiseRaw<'e, ()>> {
        let s = self.0.clone();
        promise(
            env,
            async move { s.upload(&local, &dest).await },
            |_, ()| Ok(()),
        )
    }

    /// Copies a sandbox directory into a local one: `{"written", "removed", "conflicts"}` as JSON.
    #[napi(ts_return_type = "Promise<string>")]
    pub fn download<'e>(
        &self,
        env: &'e Env,
        path: String,
        local: String,
    ) -> Result<PromiseRaw<'e, String>> {
        let s = self.0.clone();
        promise(env, async move { s.download(&path, &local).await }, report)
    }

    /// Copies the workspace back now: `{"written", "removed", "conflicts"}` as JSON.
    #[napi(ts_return_type = "Promise<string>")]
    pub fn sync_back<'e>(&self, env: &'e Env) -> Result<PromiseRaw<'e, String>> {
        let s = self.0.clone();
        promise(env, async move { s.sync_back().await }, report)
    }

    /// `op`: `allow`, `deny` or `removeRule`.
    #[napi]
    pub fn change_rules(&self, env: Env, op: String, rule: String) -> Result<()> {
        RuleChange::new(&op, rule)
            .and_then(|c| self.0.change_rules(c))
            .map_err(|e| js_error(&env, &e))
    }

    /// The rules in force (an ask's included), as JSON.
    #[napi]
    pub fn policy(&self, env: Env) -> Result<String> {
        self.0
            .policy()
            .map(|p| p.rules().to_json().to_string())
            .map_err(|e| js_error(&env, &e))
    }

    /// Every audit event so far, as a JSON array.
    #[napi]
    pub fn events(&self) -> String {
        serde_json::to_string(&self.0.events()).unwrap_or_default()
    }

    /// Starts a command in the background; resolves once it started.
    #[napi(ts_return_type = "Promise<Process>")]
    pub fn spawn<'e>(
        &self,
        env: &'e Env,
        command_argv: Vec<String>,
        shell: bool,
        options: String,
        stdin: Option<Buffer>,
        on_stdout: Option<TextCallback>,
        on_stderr: Option<TextCallback>,
    ) -> Result<PromiseRaw<'e, Process>> {
        let opts = exec_options(env, &options, stdin, on_stdout, on_stderr)?;
        let (s, cmd) = (self.0.clone(), command(command_argv, shell));
        promise(env, async move { s.spawn(cmd, opts).await }, |_, p| {
            Ok(Process(p))
        })
    }

    /// Background processes: running ones and the latest ended.
    #[napi]
    pub fn processes(&self) -> Vec<Process> {
        self.0.processes().into_iter().map(Process).collect()
    }

    /// Forwards a host loopback port to `port` inside; resolves to `127.0.0.1:PORT`.
    #[napi(ts_return_type = "Promise<string>")]
    pub fn expose<'e>(
        &self,
        env: &'e Env,
        port: u16,
        host_port: Option<u16>,
    ) -> Result<PromiseRaw<'e, String>> {
        let s = self.0.clone();
        promise(
            env,
            async move { s.expose(port, host_port).await },
            |_, a| Ok(a.to_string()),
        )
    }

    /// Closes an exposed port's host listener; whether it was exposed.
    #[napi]
    pub fn unexpose(&self, port: u16) -> bool {
        self.0.unexpose(port)
    }

    /// `{"PORT": "127.0.0.1:HOSTPORT"}` as JSON.
    #[napi]
    pub fn exposed(&self) -> String {
        let map: serde_json::Map<String, serde_json::Value> = self
            .0
            .exposed()
            .into_iter()
            .map(|(p, a)| (p.to_string(), a.to_string().into()))
            .collect();
        serde_json::Value::Object(map).to_string()
    }

    /// Removes the sandbox(es). Idempotent.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn close<'e>(&self, env: &'e Env) -> Result<PromiseRaw<'e, ()>> {
        let s = self.0.clone();
        promise(env, async move { s.close().await }, |_, ()| Ok(()))
    }
}

/// Output of a background process since the last `takeOutput`.
#[napi(object)]
pub struct TakenOutput {
    /// Standard output.
    pub stdout: Buffer,
    /// Standard error.
    pub stderr: Buffer,
    /// Bytes dropped before they were taken.
    pub dropped: i64,
    /// The exit code once it ended.
    pub exit_code: Option<i64>,
}

/// A piece of a background process's output and the cursor after it.
#[napi(object)]
pub struct ProcessChunk {
    /// `stdout` or `stderr`.
    pub pipe: String,
    /// The bytes.
    pub data: Buffer,
    /// Where the next read goes on from.
    pub cursor: i64,
}

/// A background process of a session.
#[napi]
pub struct Process(agent_sandbox::Process);

#[napi]
impl Process {
    /// `p1`, `p2`, ... in its session.
    #[napi(getter)]
    pub fn id(&self) -> String {
        self.0.id().to_owned()
    }

    /// The command as it runs.
    #[napi(getter)]
    pub fn command(&self) -> Vec<String> {
        self.0.command().to_vec()
    }

    /// The exit code once it ended.
    #[napi(getter)]
    pub fn exit_code(&self) -> Option<i64> {
        self.0.exit_code()
    }

    /// Whether it still runs.
    #[napi(getter)]
    pub fn running(&self) -> bool {
        self.0.is_running()
    }

    /// Sends a signal to its process group.
    #[napi]
    pub fn signal(&self, signal: i32) {
        self.0.signal(signal);
    }

    /// Kills its process group.
    #[napi]
    pub fn kill(&self) {
        self.0.kill();
    }

    /// Output since the last call.
    #[napi]
    pub fn take_output(&self) -> TakenOutput {
        let n = self.0.take_output();
        TakenOutput {
            stdout: n.stdout.into(),
            stderr: n.stderr.into(),
            dropped: i64::try_from(n.dropped).unwrap_or(i64::MAX),
            exit_code: n.exit_code,
        }
    }

    /// The next chunk at or after `cursor`; null at the end.
    #[napi(ts_return_type = "Promise<ProcessChunk | null>")]
    pub fn next_chunk<'e>(
        &self,
        env: &'e Env,
        cursor: i64,
    ) -> Result<PromiseRaw<'e, Option<ProcessChunk>>> {
        let p = self.0.clone();
        promise(
            env,
            async move {
                let mut at = u64::try_from(cursor).unwrap_or(0);
                let c = p.next_chunk(&mut at).await;
                Ok(c.map(|c| (c, at)))
            },
            |_, c| {
                Ok(c.map(|(c, at)| ProcessChunk {
                    pipe: c.pipe.as_str().to_owned(),
                    data: c.data.into(),
                    cursor: i64::try_from(at).unwrap_or(i64::MAX),
                }))
            },
        )
    }

    /// Waits for the end; resolves to the result's JSON.
    #[napi(ts_return_type = "Promise<string>")]
    pub fn wait<'e>(&self, env: &'e Env) -> Result<PromiseRaw<'e, String>> {
        let p = self.0.clone();
        promise(env, async move { p.wait().await }, |_, o| Ok(json(o)))
    }
}

/// A started pool.
#[napi]
pub struct Pool(agent_sandbox::Pool);

#[napi]
impl Pool {
    /// Runs a command in a fresh sandbox; resolves to the result's JSON.
    #[napi(ts_return_type = "Promise<string>")]
    pub fn run<'e>(
        &self,
        env: &'e Env,
        command_argv: Vec<String>,
        shell: bool,
        options: String,
        stdin: Option<Buffer>,
        on_stdout: Option<TextCallback>,
        on_stderr: Option<TextCallback>,
    ) -> Result<PromiseRaw<'e, String>> {
        let opts = exec_options(env, &options, stdin, on_stdout, on_stderr)?;
        let (p, cmd) = (self.0.clone(), command(command_argv, shell));
        promise(env, async move { p.run_with(cmd, opts).await }, |_, o| {
            Ok(json(o))
        })
    }

    /// Removes the sandbox(es). Idempotent.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn close<'e>(&self, env: &'e Env) -> Result<PromiseRaw<'e, ()>> {
        let p = self.0.clone();
        promise(env, async move { p.close().await }, |_, ()| Ok(()))
    }
}
