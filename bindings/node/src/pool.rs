//! Pools for Node: the JS `Pool` class holds an id into this registry.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use agent_sandbox::{Error, Pool};
use napi::bindgen_prelude::*;
use napi::threadsafe_function::ThreadsafeFunction;
use napi_derive::napi;

use crate::session::exec_options;
use crate::{builder, js_err, result, to_command, RunResult, SandboxOptions};

fn pools() -> &'static Mutex<HashMap<u32, Pool>> {
    static P: OnceLock<Mutex<HashMap<u32, Pool>>> = OnceLock::new();
    P.get_or_init(Default::default)
}

fn get(id: u32) -> Result<Pool> {
    pools()
        .lock()
        .ok()
        .and_then(|p| p.get(&id).cloned())
        .ok_or_else(|| js_err(Error::PoolClosed))
}

/// Starts a pool of `size` sandboxes; resolves to its handle id.
#[napi]
pub async fn start_pool(options: SandboxOptions, size: u32) -> Result<u32> {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
    let pool = builder(options)?
        .pool(size as usize)
        .await
        .map_err(js_err)?;
    let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if let Ok(mut p) = pools().lock() {
        p.insert(id, pool);
    }
    Ok(id)
}

/// Runs a command in a fresh sandbox of the pool.
#[napi]
#[allow(clippy::too_many_arguments)]
pub async fn pool_run(
    id: u32,
    command: Vec<String>,
    shell: bool,
    env: Option<HashMap<String, String>>,
    workdir: Option<String>,
    timeout_ms: Option<f64>,
    stdin: Option<Uint8Array>,
    on_stdout: Option<ThreadsafeFunction<String, (), String, Status, false>>,
    on_stderr: Option<ThreadsafeFunction<String, (), String, Status, false>>,
) -> Result<RunResult> {
    let pool = get(id)?;
    let o = exec_options(env, workdir, timeout_ms, stdin, on_stdout, on_stderr)?;
    let cmd = to_command(command, shell);
    pool.run_with(cmd, o).await.map(result).map_err(js_err)
}

/// Removes the pool's spare sandboxes. Idempotent.
#[napi]
pub async fn pool_close(id: u32) -> Result<()> {
    let pool = pools().lock().ok().and_then(|mut p| p.remove(&id));
    match pool {
        Some(p) => p.close().await.map_err(js_err),
        None => Ok(()),
    }
}
