//! `Sandbox.pool(size)`: sandboxes started ahead of time for fast one-shot
//! runs, as a (sync or async) context manager.

use std::collections::HashMap;
use std::sync::Mutex;

use agent_sandbox::{Error, Pool as Core, SandboxBuilder};
use pyo3::prelude::*;

use crate::session::{Data, Session};
use crate::{block_interruptible, command, to_py_err, Cmd, RunResult};

/// Fresh sandboxes started ahead of time: each `run` gets its own, already
/// running, and ends it afterwards. Started by `with`/`async with` or `start()`.
#[pyclass(frozen, module = "agent_sandbox._native")]
pub(crate) struct Pool {
    builder: SandboxBuilder,
    size: usize,
    core: Mutex<Option<Core>>,
}

impl Pool {
    pub(crate) fn new(builder: SandboxBuilder, size: usize) -> Pool {
        Pool {
            builder,
            size,
            core: Mutex::new(None),
        }
    }

    fn core(&self) -> PyResult<Core> {
        let core = self.core.lock().ok().and_then(|c| c.clone());
        core.ok_or_else(|| to_py_err(Error::PoolClosed))
    }

    fn set(&self, core: Core) {
        if let Ok(mut c) = self.core.lock() {
            *c = Some(core);
        }
    }
}

#[pymethods]
impl Pool {
    /// Starts the pool's sandboxes (what `with` does); returns self.
    fn start(slf: Py<Self>, py: Python<'_>) -> PyResult<Py<Self>> {
        let (b, size) = (slf.get().builder.clone(), slf.get().size);
        let core = block_interruptible(py, async move { b.pool(size).await }, || true)?
            .map_err(to_py_err)?;
        slf.get().set(core);
        Ok(slf)
    }

    fn __enter__(slf: Py<Self>, py: Python<'_>) -> PyResult<Py<Self>> {
        Self::start(slf, py)
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, pyo3::types::PyTuple>) -> PyResult<bool> {
        self.close(py)?;
        Ok(false)
    }

    fn __aenter__<'py>(slf: Py<Self>, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let (b, size) = (slf.get().builder.clone(), slf.get().size);
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            let core = b.pool(size).await.map_err(to_py_err)?;
            slf.get().set(core);
            Ok(slf)
        })
    }

    #[pyo3(signature = (*_args))]
    fn __aexit__<'py>(
        &self,
        py: Python<'py>,
        _args: &Bound<'py, pyo3::types::PyTuple>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let core = self.core.lock().ok().and_then(|mut c| c.take());
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            if let Some(c) = core {
                c.close().await.map_err(to_py_err)?;
            }
            Ok(false)
        })
    }

    /// How many sandboxes are kept started.
    #[getter]
    fn size(&self) -> usize {
        self.size
    }

    /// Runs `cmd` in a fresh sandbox from the pool; blocks without the GIL.
    /// Every process it started is gone when this returns.
    #[pyo3(signature = (cmd, *, env=None, workdir=None, timeout=None, stdin=None, on_stdout=None, on_stderr=None))]
    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        py: Python<'_>,
        cmd: Cmd,
        env: Option<HashMap<String, String>>,
        workdir: Option<String>,
        timeout: Option<f64>,
        stdin: Option<Data>,
        on_stdout: Option<Py<PyAny>>,
        on_stderr: Option<Py<PyAny>>,
    ) -> PyResult<RunResult> {
        let (core, opts, cmd) = (
            self.core()?,
            Session::options(env, workdir, timeout, stdin, on_stdout, on_stderr)?,
            command(cmd),
        );
        block_interruptible(py, async move { core.run_with(cmd, opts).await }, || true)?
            .map(RunResult)
            .map_err(to_py_err)
    }

    /// `await pool.run_async(cmd)`.
    #[pyo3(signature = (cmd, *, env=None, workdir=None, timeout=None, stdin=None, on_stdout=None, on_stderr=None))]
    #[allow(clippy::too_many_arguments)]
    fn run_async<'py>(
        &self,
        py: Python<'py>,
        cmd: Cmd,
        env: Option<HashMap<String, String>>,
        workdir: Option<String>,
        timeout: Option<f64>,
        stdin: Option<Data>,
        on_stdout: Option<Py<PyAny>>,
        on_stderr: Option<Py<PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let (core, opts, cmd) = (
            self.core()?,
            Session::options(env, workdir, timeout, stdin, on_stdout, on_stderr)?,
            command(cmd),
        );
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            core.run_with(cmd, opts)
                .await
                .map(RunResult)
                .map_err(to_py_err)
        })
    }

    /// Removes the spare sandboxes. Idempotent.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let core = self.core.lock().ok().and_then(|mut c| c.take());
        match core {
            Some(c) => block_interruptible(py, async move { c.close().await }, || false)?
                .map_err(to_py_err),
            None => Ok(()),
        }
    }

    fn __repr__(&self) -> String {
        let started = self.core.lock().is_ok_and(|c| c.is_some());
        format!(
            "Pool(size={}, {})",
            self.size,
            if started { "started" } else { "not started" }
        )
    }
}
