//! Python bindings: translate arguments, make one core call, translate the
//! result or the error. No sandbox logic lives here.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use agent_sandbox::proxy::{AuditEvent, Verdict};
use agent_sandbox::{
    parse_size, CancelToken, Command, Error, Output, Sandbox as Core, SandboxBuilder,
};
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

create_exception!(
    _native,
    SandboxError,
    PyException,
    "Base class of every agent-sandbox error; `.code` is the core's stable code."
);
create_exception!(
    _native,
    PolicyError,
    SandboxError,
    "A network rule is malformed (code 'policy')."
);
create_exception!(
    _native,
    WorkspaceError,
    SandboxError,
    "The workspace or a mount cannot be used (code 'workspace')."
);
create_exception!(
    _native,
    DockerUnavailableError,
    SandboxError,
    "No Docker engine answers (code 'docker_unavailable')."
);
create_exception!(
    _native,
    EngineTooOldError,
    SandboxError,
    "The Docker engine is older than 20.10 (code 'engine_too_old')."
);
create_exception!(
    _native,
    ImageNotFoundError,
    SandboxError,
    "The image is absent and cannot be pulled (code 'image_not_found')."
);
create_exception!(
    _native,
    InvalidArgumentError,
    SandboxError,
    "An argument is invalid (code 'invalid_argument')."
);
create_exception!(
    _native,
    EngineError,
    SandboxError,
    "Docker failed during an operation (code 'engine')."
);
create_exception!(
    _native,
    CancelledError,
    SandboxError,
    "The run was cancelled (code 'cancelled')."
);
create_exception!(
    _native,
    FileError,
    SandboxError,
    "A session file operation was refused or failed (code 'file')."
);
create_exception!(
    _native,
    SessionClosedError,
    SandboxError,
    "The session is closed (code 'session_closed')."
);
create_exception!(
    _native,
    PoolClosedError,
    SandboxError,
    "The pool is closed (code 'pool_closed')."
);

mod pool;
mod session;

pub(crate) fn to_py_err(e: Error) -> PyErr {
    let code = e.code();
    let msg = e.to_string();
    let err = match code {
        "policy" => PolicyError::new_err(msg),
        "workspace" => WorkspaceError::new_err(msg),
        "docker_unavailable" => DockerUnavailableError::new_err(msg),
        "engine_too_old" => EngineTooOldError::new_err(msg),
        "image_not_found" => ImageNotFoundError::new_err(msg),
        "invalid_argument" => InvalidArgumentError::new_err(msg),
        "engine" => EngineError::new_err(msg),
        "cancelled" => CancelledError::new_err(msg),
        "file" => FileError::new_err(msg),
        "session_closed" => SessionClosedError::new_err(msg),
        "pool_closed" => PoolClosedError::new_err(msg),
        _ => SandboxError::new_err(msg),
    };
    Python::attach(|py| {
        let _ = err.value(py).setattr("code", code);
    });
    err
}

fn invalid(what: &str, reason: String) -> PyErr {
    to_py_err(Error::InvalidArgument {
        what: what.into(),
        reason,
    })
}

/// `memory=` takes bytes or Docker's size text (`"512m"`).
#[derive(FromPyObject)]
enum Size {
    Bytes(i64),
    Text(String),
}

/// `run()` takes one string (through `/bin/sh -c`) or a list of arguments.
#[derive(FromPyObject)]
pub(crate) enum Cmd {
    Shell(String),
    Argv(Vec<String>),
}

/// A sandbox configuration; each `run` gets a fresh container.
#[pyclass(frozen, module = "agent_sandbox._native")]
struct Sandbox {
    builder: SandboxBuilder,
}

#[pymethods]
impl Sandbox {
    #[new]
    #[pyo3(signature = (*, image=None, workspace=None, allow=Vec::new(), deny=Vec::new(), allow_cidr=Vec::new(), deny_cidr=Vec::new(), resolve=Vec::new(), env=None, timeout=None, memory=None, cpus=None, pids=None, output_limit=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        image: Option<String>,
        workspace: Option<PathBuf>,
        allow: Vec<String>,
        deny: Vec<String>,
        allow_cidr: Vec<String>,
        deny_cidr: Vec<String>,
        resolve: Vec<String>,
        env: Option<HashMap<String, String>>,
        timeout: Option<f64>,
        memory: Option<Size>,
        cpus: Option<f64>,
        pids: Option<i64>,
        output_limit: Option<usize>,
    ) -> PyResult<Self> {
        let mut b = Core::builder();
        if let Some(i) = image {
            b = b.image(i);
        }
        if let Some(w) = workspace {
            b = b.workspace(w);
        }
        b = allow.into_iter().fold(b, SandboxBuilder::allow);
        b = deny.into_iter().fold(b, SandboxBuilder::deny);
        b = allow_cidr.into_iter().fold(b, SandboxBuilder::allow_cidr);
        b = deny_cidr.into_iter().fold(b, SandboxBuilder::deny_cidr);
        b = resolve.into_iter().fold(b, SandboxBuilder::resolve_spec);
        for (k, v) in env.unwrap_or_default() {
            b = b.env(k, v);
        }
        if let Some(t) = timeout {
            let t = Duration::try_from_secs_f64(t)
                .map_err(|_| invalid("timeout", format!("{t} is not a number of seconds")))?;
            b = b.timeout(t);
        }
        match memory {
            Some(Size::Bytes(n)) => b = b.memory(n),
            Some(Size::Text(s)) => b = b.memory(parse_size(&s).map_err(to_py_err)?),
            None => {}
        }
        if let Some(c) = cpus {
            b = b.cpus(c);
        }
        if let Some(p) = pids {
            b = b.pids(p);
        }
        if let Some(l) = output_limit {
            b = b.output_limit(l);
        }
        Ok(Sandbox { builder: b })
    }

    /// Runs `cmd` in a fresh sandbox; blocks without holding the GIL.
    /// Ctrl-C stops and removes the container, then raises KeyboardInterrupt.
    #[pyo3(signature = (cmd, *, on_stdout=None, on_stderr=None, on_event=None))]
    fn run(
        &self,
        py: Python<'_>,
        cmd: Cmd,
        on_stdout: Option<Py<PyAny>>,
        on_stderr: Option<Py<PyAny>>,
        on_event: Option<Py<PyAny>>,
    ) -> PyResult<RunResult> {
        let cancel = CancelToken::new();
        let b = with_callbacks(self.builder.clone(), on_stdout, on_stderr, on_event)
            .cancel_token(cancel.clone());
        let cmd = command(cmd);
        let out = block_interruptible(py, async move { b.run(cmd).await }, || {
            cancel.cancel();
            false
        })?;
        out.map(RunResult).map_err(to_py_err)
    }

    /// Starts a session (a warm sandbox for many commands). Use it as a
    /// context manager: `with sandbox.session() as s:` (or `async with`).
    fn session(&self) -> session::Session {
        session::Session::new(self.builder.clone())
    }

    /// A pool of `size` sandboxes started ahead of time, for one-shot runs
    /// that skip the container start: `with sandbox.pool(2) as pool:`
    /// (or `async with`). Each `pool.run` still gets a fresh sandbox.
    #[pyo3(signature = (size=1))]
    fn pool(&self, size: usize) -> pool::Pool {
        pool::Pool::new(self.builder.clone(), size)
    }

    /// The asyncio form of `run`: `await sandbox.run_async(cmd)`.
    #[pyo3(signature = (cmd, *, on_stdout=None, on_stderr=None, on_event=None))]
    fn run_async<'py>(
        &self,
        py: Python<'py>,
        cmd: Cmd,
        on_stdout: Option<Py<PyAny>>,
        on_stderr: Option<Py<PyAny>>,
        on_event: Option<Py<PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let b = with_callbacks(self.builder.clone(), on_stdout, on_stderr, on_event);
        let cmd = command(cmd);
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            b.run(cmd).await.map(RunResult).map_err(to_py_err)
        })
    }

    fn __repr__(&self) -> String {
        format!("{:?}", self.builder)
    }
}

/// Runs `fut` on the shared runtime without holding the GIL, checking for
/// Ctrl-C every 50 ms. On an interrupt, `on_interrupt` is called; if it
/// returns true the future is dropped (a session exec: hanging up kills the
/// command), otherwise it is awaited to its end (a run's own cleanup), and
/// then `KeyboardInterrupt` is raised.
pub(crate) fn block_interruptible<T: Send + 'static>(
    py: Python<'_>,
    fut: impl std::future::Future<Output = T> + Send + 'static,
    on_interrupt: impl FnOnce() -> bool,
) -> PyResult<T> {
    let rt = pyo3_async_runtimes::tokio::get_runtime();
    let mut handle = rt.spawn(fut);
    loop {
        // The timer must be created inside the runtime, hence the async block.
        let polled = py.detach(|| {
            rt.block_on(async {
                tokio::time::timeout(Duration::from_millis(50), &mut handle).await
            })
        });
        if let Ok(joined) = polled {
            return joined.map_err(|e| SandboxError::new_err(e.to_string()));
        }
        if let Err(interrupt) = py.check_signals() {
            if on_interrupt() {
                handle.abort();
            }
            let _ = py.detach(|| rt.block_on(&mut handle));
            return Err(interrupt);
        }
    }
}

pub(crate) fn command(cmd: Cmd) -> Command {
    match cmd {
        Cmd::Shell(s) => Command::Shell(s),
        Cmd::Argv(v) => Command::Argv(v),
    }
}

/// Python callbacks run on the runtime's threads, each under the GIL; an
/// exception in one is reported as unraisable and the run goes on.
/// A Python callable fed text chunks; its exceptions are reported as
/// unraisable and do not stop the command.
pub(crate) fn text_callback(cb: Py<PyAny>) -> impl Fn(&[u8]) + Send + Sync + 'static {
    move |bytes: &[u8]| {
        Python::attach(|py| {
            if let Err(e) = cb.call1(py, (String::from_utf8_lossy(bytes),)) {
                e.write_unraisable(py, None);
            }
        })
    }
}

fn with_callbacks(
    mut b: SandboxBuilder,
    out: Option<Py<PyAny>>,
    err: Option<Py<PyAny>>,
    ev: Option<Py<PyAny>>,
) -> SandboxBuilder {
    let text_cb = text_callback;
    if let Some(cb) = out {
        b = b.on_stdout(text_cb(cb));
    }
    if let Some(cb) = err {
        b = b.on_stderr(text_cb(cb));
    }
    if let Some(cb) = ev {
        b = b.on_event(move |e| {
            Python::attach(|py| {
                if let Err(err) = cb.call1(py, (Event(e.clone()),)) {
                    err.write_unraisable(py, None);
                }
            })
        });
    }
    b
}

/// The result of a run.
#[pyclass(frozen, module = "agent_sandbox._native")]
pub(crate) struct RunResult(pub(crate) Output);

#[pymethods]
impl RunResult {
    #[getter]
    fn exit_code(&self) -> i64 {
        self.0.exit_code
    }
    #[getter]
    fn stdout(&self) -> String {
        self.0.stdout_str()
    }
    #[getter]
    fn stderr(&self) -> String {
        self.0.stderr_str()
    }
    #[getter]
    fn stdout_bytes<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.0.stdout)
    }
    #[getter]
    fn stderr_bytes<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.0.stderr)
    }
    #[getter]
    fn stdout_truncated(&self) -> bool {
        self.0.stdout_truncated
    }
    #[getter]
    fn stderr_truncated(&self) -> bool {
        self.0.stderr_truncated
    }
    #[getter]
    fn timed_out(&self) -> bool {
        self.0.timed_out
    }
    #[getter]
    fn oom_killed(&self) -> bool {
        self.0.oom_killed
    }
    /// Wall time in seconds.
    #[getter]
    fn duration(&self) -> f64 {
        self.0.duration.as_secs_f64()
    }
    #[getter]
    fn events(&self) -> Vec<Event> {
        self.0.events.iter().cloned().map(Event).collect()
    }
    #[getter]
    fn sandbox_id(&self) -> &str {
        &self.0.sandbox_id
    }
    #[getter]
    fn success(&self) -> bool {
        self.0.success()
    }
    fn __repr__(&self) -> String {
        let o = &self.0;
        format!(
            "RunResult(exit_code={}, timed_out={}, oom_killed={}, stdout={} bytes, stderr={} bytes, events={}, duration={:.3}s)",
            o.exit_code, to_py_bool(o.timed_out), to_py_bool(o.oom_killed), o.stdout.len(), o.stderr.len(), o.events.len(), o.duration.as_secs_f64()
        )
    }
}

fn py_str(s: Option<&str>) -> String {
    s.map_or_else(|| "None".to_owned(), |s| format!("{s:?}"))
}

fn to_py_bool(b: bool) -> &'static str {
    if b {
        "True"
    } else {
        "False"
    }
}

/// One decision of the network proxy.
#[pyclass(frozen, module = "agent_sandbox._native")]
pub(crate) struct Event(pub(crate) AuditEvent);

#[pymethods]
impl Event {
    /// "allow" or "deny".
    #[getter]
    fn verdict(&self) -> &'static str {
        match self.0.verdict {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
        }
    }
    #[getter]
    fn allowed(&self) -> bool {
        self.0.verdict == Verdict::Allow
    }
    #[getter]
    fn host(&self) -> &str {
        &self.0.host
    }
    #[getter]
    fn port(&self) -> u16 {
        self.0.port
    }
    #[getter]
    fn method(&self) -> &str {
        &self.0.method
    }
    #[getter]
    fn rule(&self) -> Option<&str> {
        self.0.rule.as_deref()
    }
    #[getter]
    fn reason(&self) -> Option<&str> {
        self.0.reason.as_deref()
    }
    #[getter]
    fn status(&self) -> u16 {
        self.0.status
    }
    #[getter]
    fn bytes_up(&self) -> u64 {
        self.0.bytes_up
    }
    #[getter]
    fn bytes_down(&self) -> u64 {
        self.0.bytes_down
    }
    #[getter]
    fn duration_ms(&self) -> u64 {
        self.0.duration_ms
    }
    #[getter]
    fn sandbox_id(&self) -> Option<&str> {
        self.0.sandbox_id.as_deref()
    }
    /// The event as one line of JSON (time in RFC 3339).
    fn to_json(&self) -> String {
        self.0.to_json()
    }
    fn __repr__(&self) -> String {
        let e = &self.0;
        format!(
            "Event({} {} {}:{} rule={} reason={})",
            self.verdict(),
            e.method,
            e.host,
            e.port,
            py_str(e.rule.as_deref()),
            py_str(e.reason.as_deref())
        )
    }
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<Sandbox>()?;
    m.add_class::<RunResult>()?;
    m.add_class::<Event>()?;
    m.add("SandboxError", py.get_type::<SandboxError>())?;
    m.add("PolicyError", py.get_type::<PolicyError>())?;
    m.add("WorkspaceError", py.get_type::<WorkspaceError>())?;
    m.add(
        "DockerUnavailableError",
        py.get_type::<DockerUnavailableError>(),
    )?;
    m.add("EngineTooOldError", py.get_type::<EngineTooOldError>())?;
    m.add("ImageNotFoundError", py.get_type::<ImageNotFoundError>())?;
    m.add(
        "InvalidArgumentError",
        py.get_type::<InvalidArgumentError>(),
    )?;
    m.add("EngineError", py.get_type::<EngineError>())?;
    m.add("CancelledError", py.get_type::<CancelledError>())?;
    m.add("FileError", py.get_type::<FileError>())?;
    m.add("SessionClosedError", py.get_type::<SessionClosedError>())?;
    m.add("PoolClosedError", py.get_type::<PoolClosedError>())?;
    m.add_class::<session::Session>()?;
    m.add_class::<pool::Pool>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
