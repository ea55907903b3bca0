//! `Sandbox.session()`: a warm sandbox as a (sync or async) context manager.

use std::sync::Mutex;
use std::time::Duration;

use agent_sandbox::{Error, ExecOptions, SandboxBuilder, Session as Core};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};

use crate::{block_interruptible, command, text_callback, to_py_err, Cmd, Event, RunResult};

/// `write_file` takes bytes or text.
#[derive(FromPyObject)]
pub(crate) enum Data {
    Bytes(Vec<u8>),
    Text(String),
}

/// A warm sandbox for many commands; started by `with`/`async with` or `start()`.
#[pyclass(frozen, module = "agent_sandbox._native")]
pub(crate) struct Session {
    builder: SandboxBuilder,
    core: Mutex<Option<Core>>,
}

impl Session {
    pub(crate) fn new(builder: SandboxBuilder) -> Session {
        Session {
            builder,
            core: Mutex::new(None),
        }
    }

    fn core(&self) -> PyResult<Core> {
        let core = self.core.lock().ok().and_then(|c| c.clone());
        core.ok_or_else(|| to_py_err(Error::SessionClosed))
    }

    /// The per-exec options of `exec` (and a pool's `run`).
    pub(crate) fn options(
        env: Option<std::collections::HashMap<String, String>>,
        workdir: Option<String>,
        timeout: Option<f64>,
        stdin: Option<Data>,
        on_stdout: Option<Py<PyAny>>,
        on_stderr: Option<Py<PyAny>>,
    ) -> PyResult<ExecOptions> {
        let mut o = ExecOptions::new();
        for (k, v) in env.unwrap_or_default() {
            o = o.env(k, v);
        }
        if let Some(w) = workdir {
            o = o.workdir(w);
        }
        if let Some(t) = timeout {
            let t = Duration::try_from_secs_f64(t).map_err(|_| {
                to_py_err(Error::InvalidArgument {
                    what: "timeout".into(),
                    reason: format!("{t} is not a number of seconds"),
                })
            })?;
            o = o.timeout(t);
        }
        match stdin {
            Some(Data::Bytes(b)) => o = o.stdin(b),
            Some(Data::Text(t)) => o = o.stdin(t.into_bytes()),
            None => {}
        }
        if let Some(cb) = on_stdout {
            o = o.on_stdout(text_callback(cb));
        }
        if let Some(cb) = on_stderr {
            o = o.on_stderr(text_callback(cb));
        }
        Ok(o)
    }

    fn call<T: Send + 'static>(
        &self,
        py: Python<'_>,
        f: impl std::future::Future<Output = Result<T, Error>> + Send + 'static,
    ) -> PyResult<T> {
        block_interruptible(py, f, || true)?.map_err(to_py_err)
    }
}

#[pymethods]
impl Session {
    /// Starts the sandbox (what `with` does); returns self.
    fn start(slf: Py<Self>, py: Python<'_>) -> PyResult<Py<Self>> {
        let b = slf.get().builder.clone();
        let core =
            block_interruptible(py, async move { b.start().await }, || true)?.map_err(to_py_err)?;
        if let Ok(mut c) = slf.get().core.lock() {
            *c = Some(core);
        }
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
        let b = slf.get().builder.clone();
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            let core = b.start().await.map_err(to_py_err)?;
            if let Ok(mut c) = slf.get().core.lock() {
                *c = Some(core);
            }
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

    /// The sandbox id.
    #[getter]
    fn id(&self) -> PyResult<String> {
        Ok(self.core()?.id().to_owned())
    }

    /// Runs a command in the session; blocks without the GIL.
    #[pyo3(signature = (cmd, *, env=None, workdir=None, timeout=None, stdin=None, on_stdout=None, on_stderr=None))]
    #[allow(clippy::too_many_arguments)]
    fn exec(
        &self,
        py: Python<'_>,
        cmd: Cmd,
        env: Option<std::collections::HashMap<String, String>>,
        workdir: Option<String>,
        timeout: Option<f64>,
        stdin: Option<Data>,
        on_stdout: Option<Py<PyAny>>,
        on_stderr: Option<Py<PyAny>>,
    ) -> PyResult<RunResult> {
        let (core, opts, cmd) = (
            self.core()?,
            Self::options(env, workdir, timeout, stdin, on_stdout, on_stderr)?,
            command(cmd),
        );
        self.call(py, async move { core.exec_with(cmd, opts).await })
            .map(RunResult)
    }

    /// `await session.exec_async(cmd)`.
    #[pyo3(signature = (cmd, *, env=None, workdir=None, timeout=None, stdin=None, on_stdout=None, on_stderr=None))]
    #[allow(clippy::too_many_arguments)]
    fn exec_async<'py>(
        &self,
        py: Python<'py>,
        cmd: Cmd,
        env: Option<std::collections::HashMap<String, String>>,
        workdir: Option<String>,
        timeout: Option<f64>,
        stdin: Option<Data>,
        on_stdout: Option<Py<PyAny>>,
        on_stderr: Option<Py<PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let (core, opts, cmd) = (
            self.core()?,
            Self::options(env, workdir, timeout, stdin, on_stdout, on_stderr)?,
            command(cmd),
        );
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            core.exec_with(cmd, opts)
                .await
                .map(RunResult)
                .map_err(to_py_err)
        })
    }

    /// Writes bytes or text to a path under /workspace or /tmp.
    fn write_file(&self, py: Python<'_>, path: String, data: Data) -> PyResult<()> {
        let core = self.core()?;
        let data = match data {
            Data::Bytes(b) => b,
            Data::Text(t) => t.into_bytes(),
        };
        self.call(py, async move { core.write_file(&path, data).await })
    }

    /// Reads a file under /workspace or /tmp as bytes.
    fn read_file<'py>(&self, py: Python<'py>, path: String) -> PyResult<Bound<'py, PyBytes>> {
        let core = self.core()?;
        let data = self.call(py, async move { core.read_file(&path).await })?;
        Ok(PyBytes::new(py, &data))
    }

    /// Lists a directory: a list of dicts with name, kind, size.
    #[pyo3(signature = (path="."))]
    fn list<'py>(&self, py: Python<'py>, path: &str) -> PyResult<Bound<'py, PyList>> {
        let (core, path) = (self.core()?, path.to_owned());
        let entries = self.call(py, async move { core.list(&path).await })?;
        let items = entries
            .into_iter()
            .map(|e| {
                let d = PyDict::new(py);
                d.set_item("name", e.name)?;
                d.set_item("kind", e.kind)?;
                d.set_item("size", e.size)?;
                Ok(d)
            })
            .collect::<PyResult<Vec<_>>>()?;
        PyList::new(py, items)
    }

    /// Removes a file, a symlink or an empty directory.
    fn remove(&self, py: Python<'_>, path: String) -> PyResult<()> {
        let core = self.core()?;
        self.call(py, async move { core.remove(&path).await })
    }

    /// Allows a host rule from now on (new connections).
    fn allow(&self, rule: String) -> PyResult<()> {
        self.core()?
            .update_policy(|p| p.allow(rule))
            .map_err(to_py_err)
    }

    /// Denies a host rule from now on.
    fn deny(&self, rule: String) -> PyResult<()> {
        self.core()?
            .update_policy(|p| p.deny(rule))
            .map_err(to_py_err)
    }

    /// Removes a rule (allow, deny or CIDR) written exactly so.
    fn remove_rule(&self, rule: String) -> PyResult<()> {
        self.core()?
            .update_policy(|p| p.remove(&rule))
            .map_err(to_py_err)
    }

    /// Every network decision of the session so far.
    #[getter]
    fn events(&self) -> PyResult<Vec<Event>> {
        Ok(self.core()?.events().into_iter().map(Event).collect())
    }

    /// Stops and removes the sandbox. Idempotent.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let core = self.core.lock().ok().and_then(|mut c| c.take());
        match core {
            Some(c) => self.call(py, async move { c.close().await }),
            None => Ok(()),
        }
    }

    fn __repr__(&self) -> String {
        match self
            .core
            .lock()
            .ok()
            .and_then(|c| c.as_ref().map(|c| c.id().to_owned()))
        {
            Some(id) => format!("Session(id={id:?})"),
            None => "Session(not started)".to_owned(),
        }
    }
}
