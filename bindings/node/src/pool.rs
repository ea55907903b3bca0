//! Pools for Node: the JS `Pool` class holds an id into this registry.

use std::collections::HashMap;

use agent_sandbox::{Error, Pool};
use napi::bindgen_prelude::*;
use napi::threadsafe_function::ThreadsafeFunction;
use napi_derive::napi;

use crate::session::exec_options;
use crate::{builder, js_err, result, to_command, Handles, RunResult, SandboxOptions};

static POOLS: Handles<Pool> = Handles::new();

fn get(id: u32) -> Result<Pool> {
    POOLS.get(id).ok_or_else(|| js_err(Error::PoolClosed))
}

/// Starts a pool of `size` sandboxes; resolves to its handle id.
#[napi]
pub async fn start_pool(options: SandboxOptions, size: u32) -> Result<u32> {
    let pool = builder(options)?
        .pool(size as usize)
        .await
        .map_err(js_err)?;
    Ok(POOLS.insert(pool))
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
    on_stdout: Option<ThreadsafeFunction<String, (), String, Status, false, false, 1024>>,
    on_stderr: Option<ThreadsafeFunction<String, (), String, Status, false, false, 1024>>,
) -> Result<RunResult> {
    let pool = get(id)?;
    let o = exec_options(env, workdir, timeout_ms, stdin, on_stdout, on_stderr)?;
    let cmd = to_command(command, shell);
    pool.run_with(cmd, o).await.map(result).map_err(js_err)
}

/// Removes the pool's spare sandboxes. Idempotent.
#[napi]
pub async fn pool_close(id: u32) -> Result<()> {
    match POOLS.take(id) {
        Some(p) => p.close().await.map_err(js_err),
        None => Ok(()),
    }
}
