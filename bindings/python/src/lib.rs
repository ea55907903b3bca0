//! Python's native module, `agent_sandbox._native`: the core's handles and
//! their async methods, nothing else. Options arrive as JSON and go through
//! the core's options layer; results leave as JSON plus the output bytes;
//! errors are raised as the classes of `agent_sandbox.errors`. The sync
//! API, context managers and result types are written once, in Python
//! (`python/agent_sandbox/`).

use std::future::Future;

use agent_sandbox::ask::{AskAnswer, AskRequest};
use agent_sandbox::options::{Naming, RuleChange, SandboxOptions};
use agent_sandbox::{CancelToken, Command, Error, ExecOptions, Output, Sandbox as Core};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

/// Set by the Python layer's `atexit` hook: the interpreter is about to
/// finalize. A library thread that attached to Python from then on (an
/// exec finishing, a dropped handle's output, an ask) would abort the
/// process ("PyGILState_Release ... finalizing"): measured 2 in 30 exits
/// of `examples/integrations/openai_agents_sandbox.py` before this.
static EXITING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

#[pyfunction]
fn _interpreter_exiting(py: Python<'_>) {
    EXITING.store(true, std::sync::atomic::Ordering::SeqCst);
    // A thread that looked before the flag may be waiting for the GIL the
    // exiting thread holds: let it finish now, not during finalization.
    py.detach(|| std::thread::sleep(std::time::Duration::from_millis(50)));
}

fn exiting() -> bool {
    EXITING.load(std::sync::atomic::Ordering::SeqCst)
}

/// `Python::attach` for the library's own threads: once the interpreter
/// is exiting, the thread parks for good instead (the process is ending;
/// nothing it would deliver has a reader).
fn attach<R>(f: impl for<'py> FnOnce(Python<'py>) -> R) -> R {
    if exiting() {
        loop {
            std::thread::park();
        }
    }
    Python::attach(f)
}

/// Raises the `agent_sandbox.errors` class of the core's error code.
fn to_py_err(e: Error) -> PyErr {
    attach(|py| {
        let made = py
            .import("agent_sandbox.errors")
            .and_then(|m| m.getattr("_from_code"))
            .and_then(|f| f.call1((e.code(), e.to_string())));
        match made {
            Ok(err) => PyErr::from_value(err),
            Err(import_failed) => import_failed,
        }
    })
}

/// An awaitable for `fut`; only ever called inside a running event loop
/// (the Python layer's `async def` methods, and its loop thread for the
/// sync API).
fn awaitable<'py, T>(
    py: Python<'py>,
    fut: impl Future<Output = Result<T, Error>> + Send + 'static,
) -> PyResult<Bound<'py, PyAny>>
where
    T: for<'a> IntoPyObject<'a> + Send + 'static,
{
    pyo3_async_runtimes::tokio::future_into_py(py, async move {
        let r = fut.await;
        if exiting() {
            // Completing would attach to a finalizing interpreter.
            std::future::pending::<()>().await;
        }
        r.map_err(to_py_err)
    })
}

/// A command: one string through `/bin/sh -c`, or a list as given.
#[derive(FromPyObject)]
enum Cmd {
    Shell(String),
    Argv(Vec<String>),
}

impl From<Cmd> for Command {
    fn from(c: Cmd) -> Command {
        match c {
            Cmd::Shell(s) => Command::Shell(s),
            Cmd::Argv(v) => Command::Argv(v),
        }
    }
}

/// A Python callable fed text (output chunks, events as JSON); its exceptions are reported as
/// unraisable and do not stop the command.
fn text_callback(cb: Py<PyAny>) -> impl Fn(&[u8]) + Send + Sync + 'static {
    move |bytes: &[u8]| {
        attach(|py| {
            if let Err(e) = cb.call1(py, (String::from_utf8_lossy(bytes),)) {
                e.write_unraisable(py, None);
            }
        });
    }
}

/// Adds a Python ask callback (the Python layer's wrapper: it takes the
/// request as JSON text and returns the answer as JSON text, having run a
/// coroutine and caught exceptions) to `b`. It runs on a blocking thread
/// holding the GIL only while it calls.
fn with_ask(
    b: agent_sandbox::SandboxBuilder,
    on_ask: Option<Py<PyAny>>,
) -> agent_sandbox::SandboxBuilder {
    let Some(cb) = on_ask else { return b };
    let cb = std::sync::Arc::new(cb);
    b.on_ask(move |req: AskRequest| {
        let (cb, text) = (cb.clone(), req.to_json().to_string());
        async move {
            let called = tokio::task::spawn_blocking(move || {
                attach(|py| {
                    cb.call1(py, (text,))
                        .and_then(|r| r.extract::<String>(py))
                        .map_err(|e| e.to_string())
                })
            })
            .await;
            match called {
                Ok(Ok(answer)) => AskAnswer::from_text(&answer),
                Ok(Err(e)) => AskAnswer::deny(format!("the ask callback failed: {e}")),
                Err(e) => AskAnswer::deny(format!("the ask callback failed: {e}")),
            }
        }
    })
}

/// Per-command options: JSON through the core's parser, then stdin bytes
/// and callbacks.
fn exec_options(
    json: &str,
    stdin: Option<Vec<u8>>,
    on_stdout: Option<Py<PyAny>>,
    on_stderr: Option<Py<PyAny>>,
) -> PyResult<ExecOptions> {
    let mut o = ExecOptions::from_json(json, Naming::Snake).map_err(to_py_err)?;
    if let Some(data) = stdin {
        o = o.stdin(data);
    }
    if let Some(cb) = on_stdout {
        o = o.on_stdout(text_callback(cb));
    }
    if let Some(cb) = on_stderr {
        o = o.on_stderr(text_callback(cb));
    }
    Ok(o)
}

/// A result for Python: its JSON (without the output) and the output bytes.
type Result3 = (String, Py<PyBytes>, Py<PyBytes>);

fn result(o: Output) -> Result3 {
    attach(|py| {
        (
            o.to_json(false).to_string(),
            PyBytes::new(py, &o.stdout).unbind(),
            PyBytes::new(py, &o.stderr).unbind(),
        )
    })
}

/// A sandbox configuration (validated at construction).
#[pyclass(frozen, module = "agent_sandbox._native")]
struct Sandbox(agent_sandbox::SandboxBuilder);

#[pymethods]
impl Sandbox {
    #[new]
    fn new(options: &str) -> PyResult<Self> {
        let options = SandboxOptions::from_json(options, Naming::Snake).map_err(to_py_err)?;
        let b = Core::builder().options(options);
        b.check().map_err(to_py_err)?;
        Ok(Sandbox(b))
    }

    #[pyo3(signature = (cmd, options, stdin, on_stdout, on_stderr, on_event, cancel, on_ask=None))]
    #[allow(clippy::too_many_arguments)] // one call, from the Python layer
    fn run<'py>(
        &self,
        py: Python<'py>,
        cmd: Cmd,
        options: &str,
        stdin: Option<Vec<u8>>,
        on_stdout: Option<Py<PyAny>>,
        on_stderr: Option<Py<PyAny>>,
        on_event: Option<Py<PyAny>>,
        cancel: &Cancel,
        on_ask: Option<Py<PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let opts = exec_options(options, stdin, on_stdout, on_stderr)?;
        let mut b = with_ask(self.0.clone(), on_ask).cancel_token(cancel.0.clone());
        if let Some(cb) = on_event {
            let text = text_callback(cb);
            b = b.on_event(move |e| text(e.to_json().as_bytes()));
        }
        awaitable(py, async move { b.run_with(cmd, opts).await.map(result) })
    }

    #[pyo3(signature = (on_ask=None))]
    fn start<'py>(
        &self,
        py: Python<'py>,
        on_ask: Option<Py<PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let b = with_ask(self.0.clone(), on_ask);
        awaitable(py, async move { b.start().await.map(Session) })
    }

    #[pyo3(signature = (size, on_ask=None))]
    fn pool<'py>(
        &self,
        py: Python<'py>,
        size: usize,
        on_ask: Option<Py<PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let b = with_ask(self.0.clone(), on_ask);
        awaitable(py, async move { b.pool(size).await.map(Pool) })
    }
}

/// Cancels a run (Ctrl-C in the sync API): its container is removed.
#[pyclass(frozen, module = "agent_sandbox._native")]
struct Cancel(CancelToken);

#[pymethods]
impl Cancel {
    #[new]
    fn new() -> Self {
        Cancel(CancelToken::new())
    }
    fn cancel(&self) {
        self.0.cancel();
    }
}

/// A started session.
#[pyclass(frozen, module = "agent_sandbox._native")]
struct Session(agent_sandbox::Session);

#[pymethods]
impl Session {
    #[getter]
    fn id(&self) -> &str {
        self.0.id()
    }

    #[pyo3(signature = (cmd, options, stdin, on_stdout, on_stderr))]
    fn exec<'py>(
        &self,
        py: Python<'py>,
        cmd: Cmd,
        options: &str,
        stdin: Option<Vec<u8>>,
        on_stdout: Option<Py<PyAny>>,
        on_stderr: Option<Py<PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let (s, opts) = (
            self.0.clone(),
            exec_options(options, stdin, on_stdout, on_stderr)?,
        );
        awaitable(py, async move { s.exec_with(cmd, opts).await.map(result) })
    }

    fn write_file<'py>(
        &self,
        py: Python<'py>,
        path: String,
        data: Vec<u8>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let s = self.0.clone();
        awaitable(py, async move { s.write_file(&path, data).await })
    }

    fn read_file<'py>(&self, py: Python<'py>, path: String) -> PyResult<Bound<'py, PyAny>> {
        let s = self.0.clone();
        awaitable(py, async move {
            let data = s.read_file(&path).await?;
            Ok(attach(|py| PyBytes::new(py, &data).unbind()))
        })
    }

    /// `(entries as (name, kind, size), truncated)`.
    fn listing<'py>(&self, py: Python<'py>, path: String) -> PyResult<Bound<'py, PyAny>> {
        let s = self.0.clone();
        awaitable(py, async move {
            let l = s.listing(&path).await?;
            let entries: Vec<_> = l
                .entries
                .into_iter()
                .map(|e| (e.name, e.kind, e.size))
                .collect();
            Ok((entries, l.truncated))
        })
    }

    fn remove<'py>(&self, py: Python<'py>, path: String) -> PyResult<Bound<'py, PyAny>> {
        let s = self.0.clone();
        awaitable(py, async move { s.remove(&path).await })
    }

    fn upload<'py>(
        &self,
        py: Python<'py>,
        local: std::path::PathBuf,
        dest: String,
    ) -> PyResult<Bound<'py, PyAny>> {
        let s = self.0.clone();
        awaitable(py, async move { s.upload(&local, &dest).await })
    }

    /// `(written, removed, conflicts)`.
    fn download<'py>(
        &self,
        py: Python<'py>,
        path: String,
        local: std::path::PathBuf,
    ) -> PyResult<Bound<'py, PyAny>> {
        let s = self.0.clone();
        awaitable(py, async move {
            let r = s.download(&path, &local).await?;
            Ok((r.written, r.removed, r.conflicts))
        })
    }

    /// `(written, removed, conflicts)`.
    fn sync_back<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let s = self.0.clone();
        awaitable(py, async move {
            let r = s.sync_back().await?;
            Ok((r.written, r.removed, r.conflicts))
        })
    }

    fn change_rules(&self, op: &str, rule: String) -> PyResult<()> {
        RuleChange::new(op, rule)
            .and_then(|c| self.0.change_rules(c))
            .map_err(to_py_err)
    }

    /// The rules in force (an ask's included), as JSON.
    fn policy(&self) -> PyResult<String> {
        self.0
            .policy()
            .map(|p| p.rules().to_json().to_string())
            .map_err(to_py_err)
    }

    /// Every audit event so far, each as one line of JSON.
    fn events(&self) -> Vec<String> {
        self.0.events().iter().map(|e| e.to_json()).collect()
    }

    #[pyo3(signature = (cmd, options, stdin, on_stdout, on_stderr))]
    fn spawn<'py>(
        &self,
        py: Python<'py>,
        cmd: Cmd,
        options: &str,
        stdin: Option<Vec<u8>>,
        on_stdout: Option<Py<PyAny>>,
        on_stderr: Option<Py<PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let (s, opts) = (
            self.0.clone(),
            exec_options(options, stdin, on_stdout, on_stderr)?,
        );
        awaitable(py, async move { s.spawn(cmd, opts).await.map(Process) })
    }

    fn processes(&self) -> Vec<Process> {
        self.0.processes().into_iter().map(Process).collect()
    }

    /// The host address as `"127.0.0.1:PORT"`.
    #[pyo3(signature = (port, host_port=None))]
    fn expose<'py>(
        &self,
        py: Python<'py>,
        port: u16,
        host_port: Option<u16>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let s = self.0.clone();
        awaitable(py, async move {
            s.expose(port, host_port).await.map(|a| a.to_string())
        })
    }

    fn unexpose(&self, port: u16) -> bool {
        self.0.unexpose(port)
    }

    /// `[(port, "127.0.0.1:PORT")]`.
    fn exposed(&self) -> Vec<(u16, String)> {
        self.0
            .exposed()
            .into_iter()
            .map(|(p, a)| (p, a.to_string()))
            .collect()
    }

    fn close<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let s = self.0.clone();
        awaitable(py, async move { s.close().await })
    }
}

/// A background process of a session.
#[pyclass(frozen, module = "agent_sandbox._native")]
struct Process(agent_sandbox::Process);

#[pymethods]
impl Process {
    #[getter]
    fn id(&self) -> &str {
        self.0.id()
    }

    #[getter]
    fn command(&self) -> Vec<String> {
        self.0.command().to_vec()
    }

    #[getter]
    fn exit_code(&self) -> Option<i64> {
        self.0.exit_code()
    }

    #[getter]
    fn running(&self) -> bool {
        self.0.is_running()
    }

    fn signal(&self, signal: i32) {
        self.0.signal(signal);
    }

    fn kill(&self) {
        self.0.kill();
    }

    /// `(stdout, stderr, dropped, exit_code)` since the last call.
    fn take_output(&self, py: Python<'_>) -> (Py<PyBytes>, Py<PyBytes>, u64, Option<i64>) {
        let n = self.0.take_output();
        (
            PyBytes::new(py, &n.stdout).unbind(),
            PyBytes::new(py, &n.stderr).unbind(),
            n.dropped,
            n.exit_code,
        )
    }

    /// `(pipe, bytes, next cursor)`, or `None` at the end.
    fn next_chunk<'py>(&self, py: Python<'py>, cursor: u64) -> PyResult<Bound<'py, PyAny>> {
        let p = self.0.clone();
        awaitable(py, async move {
            let mut cursor = cursor;
            let chunk = p.next_chunk(&mut cursor).await;
            Ok(chunk.map(|c| {
                attach(|py| (c.pipe.as_str(), PyBytes::new(py, &c.data).unbind(), cursor))
            }))
        })
    }

    fn wait<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let p = self.0.clone();
        awaitable(py, async move { p.wait().await.map(result) })
    }
}

/// A started pool.
#[pyclass(frozen, module = "agent_sandbox._native")]
struct Pool(agent_sandbox::Pool);

#[pymethods]
impl Pool {
    #[pyo3(signature = (cmd, options, stdin, on_stdout, on_stderr))]
    fn run<'py>(
        &self,
        py: Python<'py>,
        cmd: Cmd,
        options: &str,
        stdin: Option<Vec<u8>>,
        on_stdout: Option<Py<PyAny>>,
        on_stderr: Option<Py<PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let (p, opts) = (
            self.0.clone(),
            exec_options(options, stdin, on_stdout, on_stderr)?,
        );
        awaitable(py, async move { p.run_with(cmd, opts).await.map(result) })
    }

    fn close<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let p = self.0.clone();
        awaitable(py, async move { p.close().await })
    }
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Sandbox>()?;
    m.add_class::<Cancel>()?;
    m.add_class::<Session>()?;
    m.add_class::<Process>()?;
    m.add_class::<Pool>()?;
    m.add_function(wrap_pyfunction!(_interpreter_exiting, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
