//! Sessions for Node: the JS `Session` class holds an id into this registry.

use std::collections::HashMap;
use std::time::Duration;

use agent_sandbox::{Error, ExecOptions, Session};
use napi::bindgen_prelude::*;
use napi::threadsafe_function::ThreadsafeFunction;
use napi_derive::napi;

use crate::{
    builder, event, js_err, result, text_sink, to_command, Handles, RunResult, SandboxEvent,
    SandboxOptions, TextCallback,
};

static SESSIONS: Handles<Session> = Handles::new();

fn get(id: u32) -> Result<Session> {
    SESSIONS.get(id).ok_or_else(|| js_err(Error::SessionClosed))
}

/// One entry of a directory listing.
#[napi(object)]
pub struct DirEntry {
    /// The file name.
    pub name: String,
    /// `file`, `dir`, `symlink` or `other`.
    pub kind: String,
    /// Size in bytes.
    pub size: i64,
}

/// Starts a session; resolves to its handle id.
#[napi]
pub async fn start_session(options: SandboxOptions) -> Result<u32> {
    let session = builder(options)?.start().await.map_err(js_err)?;
    Ok(SESSIONS.insert(session))
}

/// The sandbox id of a session.
#[napi]
pub fn session_sandbox_id(id: u32) -> Result<String> {
    Ok(get(id)?.id().to_owned())
}

/// Runs a command in a session.
#[napi]
#[allow(clippy::too_many_arguments)]
pub async fn session_exec(
    id: u32,
    command: Vec<String>,
    shell: bool,
    env: Option<HashMap<String, String>>,
    workdir: Option<String>,
    timeout_ms: Option<f64>,
    stdin: Option<Uint8Array>,
    on_stdout: Option<ThreadsafeFunction<String, (), String, Status, false, false, 1024>>,
    on_stderr: Option<ThreadsafeFunction<String, (), String, Status, false, false, 1024>>,
) -> Result<RunResult> {
    let session = get(id)?;
    let o = exec_options(env, workdir, timeout_ms, stdin, on_stdout, on_stderr)?;
    let cmd = to_command(command, shell);
    session.exec_with(cmd, o).await.map(result).map_err(js_err)
}

/// The per-exec options of `Session.exec` (and `Pool.run`).
pub(crate) fn exec_options(
    env: Option<HashMap<String, String>>,
    workdir: Option<String>,
    timeout_ms: Option<f64>,
    stdin: Option<Uint8Array>,
    on_stdout: Option<TextCallback>,
    on_stderr: Option<TextCallback>,
) -> Result<ExecOptions> {
    let mut o = ExecOptions::new();
    for (k, v) in env.unwrap_or_default() {
        o = o.env(k, v);
    }
    if let Some(w) = workdir {
        o = o.workdir(w);
    }
    if let Some(ms) = timeout_ms {
        let bad = || {
            js_err(Error::InvalidArgument {
                what: "timeoutMs".into(),
                reason: format!("{ms} is not a number of milliseconds"),
            })
        };
        o = o.timeout(Duration::try_from_secs_f64(ms / 1e3).map_err(|_| bad())?);
    }
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

/// Writes a file under /workspace or /tmp.
#[napi]
pub async fn session_write_file(id: u32, path: String, data: Uint8Array) -> Result<()> {
    get(id)?
        .write_file(&path, data.to_vec())
        .await
        .map_err(js_err)
}

/// Reads a file under /workspace or /tmp.
#[napi]
pub async fn session_read_file(id: u32, path: String) -> Result<Buffer> {
    get(id)?
        .read_file(&path)
        .await
        .map(Buffer::from)
        .map_err(js_err)
}

/// Lists a directory.
#[napi]
pub async fn session_list(id: u32, path: String) -> Result<Vec<DirEntry>> {
    let entries = get(id)?.list(&path).await.map_err(js_err)?;
    Ok(entries
        .into_iter()
        .map(|e| DirEntry {
            name: e.name,
            kind: e.kind.to_owned(),
            size: i64::try_from(e.size).unwrap_or(i64::MAX),
        })
        .collect())
}

/// Removes a file, a symlink or an empty directory.
#[napi]
pub async fn session_remove(id: u32, path: String) -> Result<()> {
    get(id)?.remove(&path).await.map_err(js_err)
}

/// Changes the policy: `op` is `allow`, `deny` or `remove`.
#[napi]
pub fn session_update_policy(id: u32, op: String, rule: String) -> Result<()> {
    get(id)?
        .update_policy(|p| match op.as_str() {
            "allow" => p.allow(rule.clone()),
            "deny" => p.deny(rule.clone()),
            _ => p.remove(&rule),
        })
        .map_err(js_err)
}

/// Every network decision of the session so far.
#[napi]
pub fn session_events(id: u32) -> Result<Vec<SandboxEvent>> {
    Ok(get(id)?.events().iter().map(event).collect())
}

/// Closes a session (idempotent).
#[napi]
pub async fn session_close(id: u32) -> Result<()> {
    match SESSIONS.take(id) {
        Some(s) => s.close().await.map_err(js_err),
        None => Ok(()),
    }
}
