//! The public API: configure a sandbox, run a command in it, get the result.

use std::collections::HashMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::watch;

use crate::audit::EventLog;
use crate::policy::{Policy, PolicyBuilder};
use crate::proxy::{AuditEvent, EventSink, Limits, Listen, Proxy};
use crate::runtime::{
    labels, owner_label_value, ContainerSpec, Engine, Mount, PullProgress, Resources,
};
use crate::session::Session;
use crate::workspace::{check_dir, strip_setid_bits, CheckedDir};
use crate::Error;

/// The image used when neither the builder nor `AGENT_SANDBOX_IMAGE` names one.
pub const DEFAULT_IMAGE: &str = "debian:bookworm-slim";
/// The port the in-container bridge listens on (inside the container's own
/// network namespace, so it cannot clash with anything on the host).
const PROXY_PORT: u16 = 3128;
/// Where the init binary and the proxy socket directory appear in the container.
const INIT_PATH: &str = "/.agent-sandbox/init";
const NET_DIR: &str = "/.agent-sandbox/net";
static INIT_BINARY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/agent-sandbox-init"));

/// A command: one string runs through `/bin/sh -c`; a list runs as given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `sh -c STRING`.
    Shell(String),
    /// `argv[0] argv[1..]`, no shell.
    Argv(Vec<String>),
}

impl Command {
    /// The argv to execute; an empty command is an error (for `run` and `exec` alike).
    pub(crate) fn into_argv(self) -> Result<Vec<String>, Error> {
        let argv = match self {
            Command::Shell(s) if s.trim().is_empty() => Vec::new(),
            Command::Shell(s) => vec!["/bin/sh".into(), "-c".into(), s],
            Command::Argv(v) => v,
        };
        if argv.first().is_none_or(String::is_empty) {
            return Err(Error::InvalidArgument {
                what: "command".into(),
                reason: "empty command".into(),
            });
        }
        Ok(argv)
    }
}

impl From<&str> for Command {
    fn from(s: &str) -> Self {
        Command::Shell(s.to_owned())
    }
}
impl From<String> for Command {
    fn from(s: String) -> Self {
        Command::Shell(s)
    }
}
impl From<Vec<String>> for Command {
    fn from(v: Vec<String>) -> Self {
        Command::Argv(v)
    }
}
impl From<&[&str]> for Command {
    fn from(v: &[&str]) -> Self {
        Command::Argv(v.iter().map(|s| (*s).to_owned()).collect())
    }
}
impl<const N: usize> From<[&str; N]> for Command {
    fn from(v: [&str; N]) -> Self {
        Command::Argv(v.iter().map(|s| (*s).to_owned()).collect())
    }
}

/// The result of a run.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Output {
    /// The command's exit code (128 + signal if a signal killed it; 137 after
    /// a timeout or an OOM kill).
    pub exit_code: i64,
    /// Captured stdout, up to the output limit.
    pub stdout: Vec<u8>,
    /// Captured stderr, up to the output limit.
    pub stderr: Vec<u8>,
    /// Whether stdout was cut at the limit.
    pub stdout_truncated: bool,
    /// Whether stderr was cut at the limit.
    pub stderr_truncated: bool,
    /// Whether the timeout killed the command.
    pub timed_out: bool,
    /// Whether the memory limit killed it.
    pub oom_killed: bool,
    /// Wall time from start of the run (image check included) to the end.
    pub duration: Duration,
    /// Every network decision the proxy made during the run (identical
    /// refusals in a row folded into one event with a `count`; at most
    /// 4096 kept, the oldest dropped first).
    pub events: Vec<AuditEvent>,
    /// Events dropped because the log was full.
    pub events_dropped: u64,
    /// Workspace files whose setuid/setgid bits were removed after the
    /// command (paths relative to the workspace; see the README).
    pub setid_stripped: Vec<String>,
    /// The sandbox id (also the `agent-sandbox.id` container label).
    pub sandbox_id: String,
}

impl Output {
    /// Exit code 0 and no timeout.
    #[must_use]
    pub fn success(&self) -> bool {
        self.exit_code == 0 && !self.timed_out
    }

    /// stdout as text (lossy).
    #[must_use]
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// stderr as text (lossy).
    #[must_use]
    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// Cancels a run from elsewhere (Ctrl-C, an agent's abort). Cloning shares it.
#[derive(Debug, Clone)]
pub struct CancelToken(Arc<watch::Sender<bool>>);

impl Default for CancelToken {
    fn default() -> Self {
        CancelToken(Arc::new(watch::channel(false).0))
    }
}

impl CancelToken {
    /// A new, un-cancelled token.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Cancels every run holding this token: each kills and removes its
    /// container and returns [`Error::Cancelled`].
    pub fn cancel(&self) {
        self.0.send_replace(true);
    }

    pub(crate) async fn cancelled(&self) {
        let mut rx = self.0.subscribe();
        let _ = rx.wait_for(|c| *c).await;
    }
}

pub(crate) type OutputSink = Arc<dyn Fn(&[u8]) + Send + Sync>;
type PullSink = Arc<dyn Fn(&PullProgress) + Send + Sync>;

/// Entry point: `Sandbox::builder()`.
#[derive(Debug)]
pub struct Sandbox;

impl Sandbox {
    /// A builder with every default stated on its setters.
    pub fn builder() -> SandboxBuilder {
        SandboxBuilder::default()
    }
}

/// Configures a sandbox. Nothing is checked until [`run`](SandboxBuilder::run),
/// where every input is validated before anything starts.
#[must_use]
#[derive(Clone)]
pub struct SandboxBuilder {
    image: Option<String>,
    workspace: Option<PathBuf>,
    policy: PolicyBuilder,
    resolve_specs: Vec<String>,
    env: Vec<(String, String)>,
    timeout: Option<Duration>,
    memory: i64,
    cpus: f64,
    pids: i64,
    tmp_size: u64,
    output_limit: usize,
    mounts: Vec<(PathBuf, String, bool)>,
    user: Option<String>,
    on_stdout: Option<OutputSink>,
    on_stderr: Option<OutputSink>,
    on_event: Option<EventSink>,
    on_pull: Option<PullSink>,
    cancel: Option<CancelToken>,
    proxy_limits: Limits,
    idle_timeout: Option<Duration>,
    runtime: Option<String>,
    file_limit: usize,
}

impl Default for SandboxBuilder {
    fn default() -> Self {
        SandboxBuilder {
            image: None,
            workspace: None,
            policy: PolicyBuilder::default(),
            resolve_specs: Vec::new(),
            env: Vec::new(),
            timeout: None,
            memory: 1 << 30,
            cpus: 1.0,
            pids: 256,
            tmp_size: 512 << 20,
            output_limit: 16 << 20,
            mounts: Vec::new(),
            user: None,
            on_stdout: None,
            on_stderr: None,
            on_event: None,
            on_pull: None,
            cancel: None,
            proxy_limits: Limits::default(),
            idle_timeout: Some(Duration::from_secs(30 * 60)),
            runtime: None,
            file_limit: 64 << 20,
        }
    }
}

impl std::fmt::Debug for SandboxBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxBuilder")
            .field("image", &self.image)
            .field("workspace", &self.workspace)
            .field("policy", &self.policy)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl SandboxBuilder {
    /// The image. Default: `AGENT_SANDBOX_IMAGE`, else [`DEFAULT_IMAGE`]
    /// (`debian:bookworm-slim`). Used if present locally, pulled otherwise.
    pub fn image(mut self, image: impl Into<String>) -> Self {
        self.image = Some(image.into());
        self
    }

    /// The one read-write directory, mounted at `/workspace` (the working
    /// directory). Default: none (`/workspace` is an empty tmpfs).
    pub fn workspace(mut self, path: impl Into<PathBuf>) -> Self {
        self.workspace = Some(path.into());
        self
    }

    /// Replaces the network rules with those of `policy` (validated at run).
    pub fn policy(mut self, policy: PolicyBuilder) -> Self {
        self.policy = policy;
        self
    }

    /// The engine's OCI runtime for the container: `runsc` runs it under
    /// gVisor, a second wall (a user-space kernel) behind the container's.
    /// Default: `AGENT_SANDBOX_RUNTIME`, else the engine's default (`runc`).
    /// The runtime must be registered with the engine (`make test` registers
    /// Debian's `runsc`; see the README).
    pub fn runtime(mut self, name: impl Into<String>) -> Self {
        self.runtime = Some(name.into());
        self
    }

    /// Allows a host rule (see [`crate::policy`]). Default: nothing is allowed.
    pub fn allow(mut self, rule: impl Into<String>) -> Self {
        self.policy = self.policy.allow(rule);
        self
    }

    /// Denies a host rule; deny wins.
    pub fn deny(mut self, rule: impl Into<String>) -> Self {
        self.policy = self.policy.deny(rule);
        self
    }

    /// Allows a network (the only way to reach IP literals and private ranges).
    pub fn allow_cidr(mut self, cidr: impl Into<String>) -> Self {
        self.policy = self.policy.allow_cidr(cidr);
        self
    }

    /// Denies a network.
    pub fn deny_cidr(mut self, cidr: impl Into<String>) -> Self {
        self.policy = self.policy.deny_cidr(cidr);
        self
    }

    /// Pins `name:port` to `addr`, like curl's `--resolve`.
    pub fn resolve(mut self, name: impl Into<String>, port: u16, addr: impl Into<String>) -> Self {
        self.policy = self.policy.resolve(name, port, addr);
        self
    }

    /// Pins from `HOST:PORT:ADDR` text (checked at run).
    pub fn resolve_spec(mut self, spec: impl Into<String>) -> Self {
        self.resolve_specs.push(spec.into());
        self
    }

    /// Sets an environment variable in the sandbox. The proxy variables,
    /// `HOME` (`/tmp`) and cache locations are set by the sandbox itself.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Kills the command after this long. Default: no timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Memory limit in bytes, swap included. Default 1 GiB.
    pub fn memory(mut self, bytes: i64) -> Self {
        self.memory = bytes;
        self
    }

    /// CPU limit. Default 1.0.
    pub fn cpus(mut self, cpus: f64) -> Self {
        self.cpus = cpus;
        self
    }

    /// Process/thread limit. Default 256.
    pub fn pids(mut self, pids: i64) -> Self {
        self.pids = pids;
        self
    }

    /// Size of the `/tmp` tmpfs in bytes. Default 512 MiB.
    pub fn tmp_size(mut self, bytes: u64) -> Self {
        self.tmp_size = bytes;
        self
    }

    /// Bytes of stdout and of stderr kept in the [`Output`]; the rest is
    /// still streamed to callbacks but not stored. Default 16 MiB each.
    pub fn output_limit(mut self, bytes: usize) -> Self {
        self.output_limit = bytes;
        self
    }

    /// Largest file a session's `read_file` returns (bigger is a
    /// [`Error::File`] naming the size); also bounds the output of the
    /// helpers that read and list `/tmp` inside. Default 64 MiB.
    pub fn file_limit(mut self, bytes: usize) -> Self {
        self.file_limit = bytes;
        self
    }

    /// Mounts a host directory read-only at `container_path`.
    pub fn mount(mut self, host: impl Into<PathBuf>, container_path: impl Into<String>) -> Self {
        self.mounts.push((host.into(), container_path.into(), true));
        self
    }

    /// Mounts a host directory read-write (only when asked: the workspace is
    /// the one read-write mount by default).
    pub fn mount_rw(mut self, host: impl Into<PathBuf>, container_path: impl Into<String>) -> Self {
        self.mounts
            .push((host.into(), container_path.into(), false));
        self
    }

    /// Runs as `uid:gid` instead of the caller's own ids (the default, so
    /// files written to the workspace belong to the caller).
    pub fn user(mut self, uid_gid: impl Into<String>) -> Self {
        self.user = Some(uid_gid.into());
        self
    }

    /// Called with each chunk of stdout as it arrives.
    pub fn on_stdout(mut self, f: impl Fn(&[u8]) + Send + Sync + 'static) -> Self {
        self.on_stdout = Some(Arc::new(f));
        self
    }

    /// Called with each chunk of stderr as it arrives.
    pub fn on_stderr(mut self, f: impl Fn(&[u8]) + Send + Sync + 'static) -> Self {
        self.on_stderr = Some(Arc::new(f));
        self
    }

    /// Called with each audit event as the proxy decides.
    pub fn on_event(mut self, f: impl Fn(&AuditEvent) + Send + Sync + 'static) -> Self {
        self.on_event = Some(Arc::new(f));
        self
    }

    /// Called with image pull progress (only when the image is pulled).
    pub fn on_pull(mut self, f: impl Fn(&PullProgress) + Send + Sync + 'static) -> Self {
        self.on_pull = Some(Arc::new(f));
        self
    }

    /// Lets another task cancel the run.
    pub fn cancel_token(mut self, token: CancelToken) -> Self {
        self.cancel = Some(token);
        self
    }

    /// A session with no exec in flight for this long is closed. Default 30
    /// minutes; `None` keeps it until [`Session::close`] or drop.
    pub fn idle_timeout(mut self, idle: Option<Duration>) -> Self {
        self.idle_timeout = idle;
        self
    }

    /// Starts a warm sandbox for many commands (see [`Session`]). The
    /// builder's timeout becomes each exec's default timeout.
    ///
    /// # Errors
    /// As [`run`](SandboxBuilder::run), plus [`Error::Engine`] if the
    /// sandbox does not come up.
    pub async fn start(&self) -> Result<Session, Error> {
        let p = self.prepare(None).await?;
        let socket = p.ctl.clone().ok_or_else(|| Error::Engine {
            what: "start a session".into(),
            reason: "no exec socket".into(),
        })?;
        // Listening before the container starts: init connects to it.
        let (hub, control) = crate::session::ExecHub::listen(&socket)?;
        if p.custom_user {
            share_socket(&socket, p.sandbox_ids)?;
        }
        let container = ContainerGuard {
            engine: p.engine.clone(),
            id: Some(p.engine.create(&p.spec).await?),
        };
        p.engine.start(container.id()).await?;
        p.confirm_mounts(container.id()).await?;
        let ready = tokio::time::Instant::now() + crate::session::READY_TIMEOUT;
        tokio::pin!(control);
        loop {
            tokio::select! {
                _ = &mut control => break,
                () = tokio::time::sleep(Duration::from_millis(100)) => {
                    if tokio::time::Instant::now() > ready || !p.engine.is_running(container.id()).await {
                        if let Some(err) = p.mount_mismatch(&p.engine.exit_code(container.id()).await) {
                            return Err(err);
                        }
                        return Err(Error::Engine { what: "start a session".into(), reason: "the sandbox's init never connected to its exec socket (is the image's architecture the host's?)".into() });
                    }
                }
            }
        }
        let mut container = container;
        let id = container.id.take().unwrap_or_default();
        Ok(Session::new(crate::session::Parts {
            engine: p.engine,
            id: p.id,
            container: id,
            proxy: p.proxy,
            rules: p.rules,
            dirs: p.dirs,
            hub,
            events: p.events,
            checked: p.checked,
            owner: if p.custom_user { p.sandbox_ids } else { None },
            subscribers: p.subscribers,
            output_limit: self.output_limit,
            file_limit: self.file_limit,
            timeout: self.timeout,
            idle_timeout: self.idle_timeout,
            user: p.user,
        }))
    }

    /// The proxy's limits. Default [`Limits::default`].
    pub fn proxy_limits(mut self, limits: Limits) -> Self {
        self.proxy_limits = limits;
        self
    }

    pub(crate) fn stdout_sink(&self) -> Option<OutputSink> {
        self.on_stdout.clone()
    }
    pub(crate) fn stderr_sink(&self) -> Option<OutputSink> {
        self.on_stderr.clone()
    }
    pub(crate) fn cancel_token_value(&self) -> Option<CancelToken> {
        self.cancel.clone()
    }
    pub(crate) fn workspace_path(&self) -> Option<&Path> {
        self.workspace.as_deref()
    }
    pub(crate) fn mount_paths(&self) -> impl Iterator<Item = &Path> {
        self.mounts.iter().map(|(host, _, _)| host.as_path())
    }

    fn validate(&self) -> Result<(Policy, PolicyBuilder), Error> {
        let mut rules = self.policy.clone();
        for spec in &self.resolve_specs {
            rules = rules.resolve_spec(spec)?;
        }
        let policy = rules.clone().build()?;
        let bad = |what: &str, reason: String| Error::InvalidArgument {
            what: what.into(),
            reason,
        };
        for (k, _) in &self.env {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return Err(bad(
                    "environment variable",
                    format!("{k:?} is not a valid name"),
                ));
            }
        }
        if self.memory < 6 << 20 {
            return Err(bad(
                "memory",
                format!("{} bytes is below Docker's minimum of 6 MiB", self.memory),
            ));
        }
        if !(self.cpus > 0.0 && self.cpus.is_finite()) {
            return Err(bad(
                "cpus",
                format!("{} must be a positive number", self.cpus),
            ));
        }
        if self.pids < 8 {
            return Err(bad(
                "pids",
                format!("{} is too few to start a shell; use at least 8", self.pids),
            ));
        }
        if let Some(r) = &self.runtime {
            if r.is_empty()
                || !r
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
            {
                return Err(bad(
                    "runtime",
                    format!("{r:?} is not a runtime name like runsc"),
                ));
            }
        }
        if self.timeout == Some(Duration::ZERO) {
            return Err(bad("timeout", "must be more than zero".into()));
        }
        for (_, target, _) in &self.mounts {
            if !target.starts_with('/') || target == "/" || target.split('/').any(|p| p == "..") {
                return Err(bad(
                    "mount target",
                    format!("{target:?} must be an absolute path below /"),
                ));
            }
        }
        Ok((policy, rules))
    }

    /// Runs `cmd` in a fresh sandbox and removes it afterwards, on success,
    /// error, timeout and cancellation alike.
    ///
    /// # Errors
    /// [`Error::Policy`] for a malformed rule, [`Error::Workspace`] for a
    /// missing or forbidden workspace, [`Error::DockerUnavailable`],
    /// [`Error::ImageNotFound`], [`Error::Cancelled`], [`Error::Engine`].
    /// A non-zero exit or a timeout is not an error: see [`Output`].
    pub async fn run(&self, cmd: impl Into<Command>) -> Result<Output, Error> {
        let started = Instant::now();
        let started_at = std::time::SystemTime::now();
        let cmd = cmd.into();
        let argv = cmd.into_argv()?;
        let prepared = self.prepare(Some(argv)).await?;
        let engine = prepared.engine.clone();
        let container = ContainerGuard {
            engine: engine.clone(),
            id: Some(engine.create(&prepared.spec).await?),
        };
        let result = self.supervise(&prepared, container.id(), started).await;
        container.remove().await;
        let Prepared {
            id,
            dirs,
            proxy,
            events,
            checked,
            ..
        } = prepared;
        proxy.shutdown().await;
        drop(dirs);
        let (exit, timed_out, out, err) = result?;
        if exit.code == i64::from(MOUNT_MISMATCH_EXIT) && err.buf.starts_with(MOUNT_MISMATCH_TEXT) {
            return Err(mount_mismatch_error(&checked, &err.buf));
        }
        let events = events.all();
        let setid_stripped = strip_setid(&checked, started_at);
        Ok(Output {
            exit_code: exit.code,
            stdout: out.buf,
            stderr: err.buf,
            stdout_truncated: out.truncated,
            stderr_truncated: err.truncated,
            timed_out,
            oom_killed: exit.oom_killed,
            duration: started.elapsed(),
            events: events.events,
            events_dropped: events.dropped,
            setid_stripped,
            sandbox_id: id,
        })
    }

    /// Validates everything, then sets up what a container needs: engine,
    /// image, host directories, init binary, proxy, and the container spec.
    /// `command: None` prepares a session (init serves exec requests).
    async fn prepare(&self, command: Option<Vec<String>>) -> Result<Prepared, Error> {
        let command_was_none = command.is_none();
        let (policy, rules) = self.validate()?;
        raise_fd_limit_once();
        let engine = Engine::connect().await?;
        collect_orphans_once(&engine);
        let socket = engine.socket_path();
        let workspace = match &self.workspace {
            Some(p) => {
                let mut dir = check_dir(p, socket.as_deref())?;
                dir.mark_writable();
                Some(dir)
            }
            None => None,
        };
        let mut extra = Vec::new();
        let mut checked = Vec::new();
        for (host, target, ro) in &self.mounts {
            let mut dir = check_dir(host, socket.as_deref())?;
            if !*ro {
                dir.mark_writable();
            }
            extra.push(Mount {
                host: dir.path.clone(),
                container: target.clone(),
                read_only: *ro,
            });
            checked.push((target.clone(), dir));
        }
        let image = self
            .image
            .clone()
            .or_else(|| {
                std::env::var("AGENT_SANDBOX_IMAGE")
                    .ok()
                    .filter(|s| !s.is_empty())
            })
            .unwrap_or_else(|| DEFAULT_IMAGE.to_owned());
        let pull = self.on_pull.clone();
        engine
            .ensure_image(
                &image,
                pull.as_deref()
                    .map(|f| f as &(dyn Fn(&PullProgress) + Send + Sync)),
            )
            .await?;

        let id = new_id();
        let dir = SandboxDir::create(&id, "net")?;

        let init = init_binary()?;
        let caller = std::fs::metadata(&dir.0)?;
        let caller = (caller.uid(), caller.gid());
        let user = match &self.user {
            Some(u) => u.clone(),
            None => default_user(caller, workspace.as_ref())?,
        };
        let sandbox_ids = numeric_ids(&user);

        let events = Arc::new(EventLog::new());
        let (subscribers, _) = tokio::sync::broadcast::channel(256);
        let sink_events = events.clone();
        let sink_subscribers = subscribers.clone();
        let user_sink = self.on_event.clone();
        let proxy = Proxy::builder(policy)
            .sandbox_id(id.clone())
            .limits(fair_limits(self.proxy_limits.clone()))
            .on_event(move |e| {
                if let Some(f) = &user_sink {
                    f(e);
                }
                sink_events.push(e);
                let _ = sink_subscribers.send(e.clone());
            })
            .start(&Listen::Unix(dir.0.join("proxy.sock")))
            .await?;
        if sandbox_ids != Some(caller) {
            share_socket(&dir.0.join("proxy.sock"), sandbox_ids)?;
        }

        let mut mounts = vec![
            Mount {
                host: init,
                container: INIT_PATH.into(),
                read_only: true,
            },
            Mount {
                host: dir.0.clone(),
                container: NET_DIR.into(),
                read_only: true,
            },
        ];
        let mut extra_tmpfs = Vec::new();
        match workspace {
            Some(ws) => {
                mounts.push(Mount {
                    host: ws.path.clone(),
                    container: "/workspace".into(),
                    read_only: false,
                });
                checked.insert(0, ("/workspace".to_owned(), ws));
            }
            None => extra_tmpfs.push(("/workspace".to_owned(), self.tmp_size)),
        }
        mounts.extend(extra);
        let mut argv = vec![
            INIT_PATH.to_owned(),
            "--port".into(),
            PROXY_PORT.to_string(),
            "--socket".into(),
            format!("{NET_DIR}/proxy.sock"),
        ];
        let runtime = self.runtime.clone().or_else(|| {
            std::env::var("AGENT_SANDBOX_RUNTIME")
                .ok()
                .filter(|s| !s.is_empty())
        });
        let effective = match &runtime {
            Some(r) => r.clone(),
            None => engine.default_runtime().await,
        };
        // Under runc (and crun) init compares each mount with the checked
        // directory. gVisor shows its own device and inode numbers inside:
        // the host compares from outside, through gVisor's gofer, and init
        // waits for its word before anything runs. The runtime is the one
        // asked for, else the engine's default.
        let host_checks = is_gvisor(&effective) && !checked.is_empty();
        if host_checks {
            argv.push("--wait-go".into());
            argv.push(format!("{NET_DIR}/go"));
        } else {
            for (target, dir) in &checked {
                argv.push("--check-mount".into());
                argv.push(format!("{target}={}:{}", dir.dev, dir.ino));
            }
        }
        match command {
            Some(cmd) => {
                argv.push("--".into());
                argv.extend(cmd);
            }
            None => {
                argv.push("--exec-socket".into());
                // Init connects to the host's exec socket: the container
                // never gets a writable host directory.
                argv.push(format!("{NET_DIR}/exec.sock"));
            }
        }
        let spec = ContainerSpec {
            image,
            argv,
            env: sandbox_env(&self.env),
            user,
            working_dir: "/workspace".into(),
            mounts,
            extra_tmpfs,
            resources: Resources {
                memory: self.memory,
                cpus: self.cpus,
                pids: self.pids,
                tmp_size: self.tmp_size,
                shm_size: 64 << 20,
            },
            labels: HashMap::from([
                (labels::MANAGED.to_owned(), "1".to_owned()),
                (labels::ID.to_owned(), id.clone()),
                (labels::OWNER.to_owned(), owner_label_value()),
            ]),
            runtime,
        };
        let ctl_path = command_was_none.then(|| dir.0.join("exec.sock"));
        let go = host_checks.then(|| dir.0.join("go"));
        let custom_user = sandbox_ids != Some(caller);
        let dirs = vec![dir];
        let user_ids = spec.user.clone();
        Ok(Prepared {
            engine,
            id,
            dirs,
            proxy,
            events,
            subscribers,
            spec,
            ctl: ctl_path,
            custom_user,
            rules,
            user: user_ids,
            sandbox_ids,
            checked: checked
                .into_iter()
                .map(|(target, mut d)| {
                    d.target = target;
                    d
                })
                .collect(),
            go,
        })
    }

    /// Starts the container, streams its output, and waits for it under the
    /// timeout and the cancel token.
    async fn supervise(
        &self,
        prepared: &Prepared,
        id: &str,
        started: Instant,
    ) -> Result<(crate::runtime::Exit, bool, Capture, Capture), Error> {
        let engine = &prepared.engine;
        let out = Arc::new(Mutex::new(Capture::new(self.output_limit)));
        let err = Arc::new(Mutex::new(Capture::new(self.output_limit)));
        let (o, e) = (out.clone(), err.clone());
        let (on_out, on_err) = (self.on_stdout.clone(), self.on_stderr.clone());
        let drain = engine
            .start_and_stream(id, move |stream, bytes: Bytes| {
                let (cap, cb) = match stream {
                    crate::runtime::Stream::Stdout => (&o, &on_out),
                    crate::runtime::Stream::Stderr => (&e, &on_err),
                };
                if let Some(cb) = cb {
                    cb(&bytes);
                }
                if let Ok(mut c) = cap.lock() {
                    c.push(&bytes);
                }
            })
            .await?;
        let drain = tokio::spawn(drain);
        if let Err(e) = prepared.confirm_mounts(id).await {
            drain.abort();
            return Err(e);
        }
        let deadline = self
            .timeout
            .map(|t| tokio::time::Instant::from_std(started) + t);
        let cancel = self.cancel.clone();
        let mut timed_out = false;
        let exit = tokio::select! {
            r = engine.wait(id) => r?,
            () = async { match deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => {
                timed_out = true;
                engine.kill(id).await;
                engine.wait(id).await?
            }
            () = async { match &cancel { Some(c) => c.cancelled().await, None => std::future::pending().await } } => {
                engine.kill(id).await;
                drain.abort();
                return Err(Error::Cancelled);
            }
        };
        // Output still in flight when the container stopped.
        let _ = tokio::time::timeout(Duration::from_secs(5), drain).await;
        let take = |c: &Arc<Mutex<Capture>>| {
            c.lock()
                .map(|mut c| std::mem::take(&mut *c))
                .unwrap_or_default()
        };
        Ok((exit, timed_out, take(&out), take(&err)))
    }
}

/// Parses a size as Docker does: bytes, or a number with `b`, `k`, `m`, `g`
/// (binary units, case-insensitive): `512m`, `1g`, `1048576`.
///
/// # Errors
/// [`Error::InvalidArgument`] for anything else.
///
/// # Examples
/// ```
/// assert_eq!(agent_sandbox::parse_size("512m").unwrap(), 512 << 20);
/// assert!(agent_sandbox::parse_size("lots").is_err());
/// ```
pub fn parse_size(s: &str) -> Result<i64, Error> {
    let bad = || Error::InvalidArgument {
        what: "size".into(),
        reason: format!("{s:?} is not a size like 512m, 2g or 1048576"),
    };
    let t = s.trim().to_ascii_lowercase();
    let (num, mult) = match t.char_indices().last() {
        Some((i, 'b')) => (&t[..i], 1i64),
        Some((i, 'k')) => (&t[..i], 1 << 10),
        Some((i, 'm')) => (&t[..i], 1 << 20),
        Some((i, 'g')) => (&t[..i], 1 << 30),
        _ => (t.as_str(), 1),
    };
    let n: f64 = num.parse().map_err(|_| bad())?;
    if !(n.is_finite() && n > 0.0) {
        return Err(bad());
    }
    let v = n * mult as f64;
    if v > i64::MAX as f64 {
        return Err(bad());
    }
    Ok(v as i64)
}

/// Output kept up to a limit; the rest is counted as truncated.
#[derive(Default)]
pub(crate) struct Capture {
    pub(crate) buf: Vec<u8>,
    limit: usize,
    pub(crate) truncated: bool,
}

impl Capture {
    pub(crate) fn new(limit: usize) -> Capture {
        Capture {
            buf: Vec::new(),
            limit,
            truncated: false,
        }
    }

    pub(crate) fn push(&mut self, bytes: &[u8]) {
        let room = self.limit.saturating_sub(self.buf.len());
        if bytes.len() > room {
            self.truncated = true;
        }
        self.buf.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }
}

fn sandbox_env(user: &[(String, String)]) -> Vec<String> {
    let proxy = format!("http://127.0.0.1:{PROXY_PORT}");
    let mut env = vec![
        "HOME=/tmp".to_owned(),
        "XDG_CACHE_HOME=/tmp/.cache".to_owned(),
        "npm_config_cache=/tmp/.npm".to_owned(),
        "PIP_CACHE_DIR=/tmp/.cache/pip".to_owned(),
        "CARGO_HOME=/tmp/.cargo".to_owned(),
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
    ];
    for k in [
        "HTTP_PROXY",
        "http_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
    ] {
        env.push(format!("{k}={proxy}"));
    }
    env.push("NO_PROXY=localhost,127.0.0.1,::1".into());
    env.push("no_proxy=localhost,127.0.0.1,::1".into());
    env.extend(user.iter().map(|(k, v)| format!("{k}={v}")));
    env
}

fn new_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    format!("{:012x}", h.finish() & 0xffff_ffff_ffff)
}

/// Whether an engine runtime name is gVisor's (`runsc`, or a name with
/// `runsc` or `gvisor` in it, as people register variants).
fn is_gvisor(runtime: &str) -> bool {
    let r = runtime.to_ascii_lowercase();
    r.contains("runsc") || r.contains("gvisor")
}

/// Init's exit code and the start of its message when a bind mount is not
/// the directory that was checked (see `agent-sandbox-init`'s `check_mounts`).
const MOUNT_MISMATCH_EXIT: u8 = 120;
const MOUNT_MISMATCH_TEXT: &[u8] = b"agent-sandbox-init: mount check failed: ";

fn mount_mismatch_error(checked: &[CheckedDir], message: &[u8]) -> Error {
    let text = String::from_utf8_lossy(message);
    let detail = text
        .strip_prefix(std::str::from_utf8(MOUNT_MISMATCH_TEXT).unwrap_or_default())
        .unwrap_or(&text)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();
    Error::Workspace {
        path: checked.first().map(|c| c.path.clone()).unwrap_or_default(),
        reason: format!("was replaced while the sandbox started, so the sandbox was ended before anything ran in it ({detail})"),
    }
}

impl Prepared {
    /// For runtimes whose inode numbers inside are their own (gVisor):
    /// compares each mount, seen from the host through the runtime, with
    /// the checked directory, then lets init go on. A mismatch, or a mount
    /// that cannot be seen, kills the container first: nothing ran in it.
    async fn confirm_mounts(&self, container: &str) -> Result<(), Error> {
        let Some(go) = &self.go else { return Ok(()) };
        for dir in &self.checked {
            let seen = crate::runtime::mounted_identity(container, &dir.target);
            if seen != Ok((dir.dev, dir.ino)) {
                self.engine.kill(container).await;
                let why = match seen {
                    Ok((dev, ino)) => format!(
                        "{} is not the directory that was checked (device:inode {dev}:{ino} mounted, {}:{} expected); the path was changed while the sandbox started",
                        dir.target, dir.dev, dir.ino
                    ),
                    Err(e) => format!("its mount at {} cannot be verified under this runtime: {e}", dir.target),
                };
                return Err(mount_mismatch_error(
                    &self.checked,
                    format!(
                        "{}{why}",
                        std::str::from_utf8(MOUNT_MISMATCH_TEXT).unwrap_or_default()
                    )
                    .as_bytes(),
                ));
            }
        }
        std::fs::File::create(go)?;
        Ok(())
    }

    /// The error for a session whose init refused its mounts (exit code
    /// [`MOUNT_MISMATCH_EXIT`]); `None` for any other end.
    fn mount_mismatch(&self, code: &Option<i64>) -> Option<Error> {
        (*code == Some(i64::from(MOUNT_MISMATCH_EXIT))).then(|| {
            mount_mismatch_error(&self.checked, b"a bind mount is not the checked directory")
        })
    }
}

/// What [`SandboxBuilder::prepare`] sets up.
pub(crate) struct Prepared {
    pub(crate) engine: Engine,
    pub(crate) id: String,
    pub(crate) dirs: Vec<SandboxDir>,
    pub(crate) proxy: crate::proxy::ProxyHandle,
    pub(crate) events: Arc<EventLog>,
    pub(crate) subscribers: tokio::sync::broadcast::Sender<AuditEvent>,
    pub(crate) spec: ContainerSpec,
    /// Where a session's exec socket must listen on the host (sessions only).
    pub(crate) ctl: Option<PathBuf>,
    /// Whether the sandbox runs as another uid than the caller (sockets then need 0666).
    pub(crate) custom_user: bool,
    /// The validated rules, for sessions to update later.
    pub(crate) rules: PolicyBuilder,
    /// `uid:gid` of the sandbox user.
    pub(crate) user: String,
    /// The same, as numbers, when it is numeric.
    pub(crate) sandbox_ids: Option<(u32, u32)>,
    /// The checked bind sources, held open until init has compared them
    /// with what is mounted.
    pub(crate) checked: Vec<CheckedDir>,
    /// Where the host says "mounts confirmed" to an init that waits for it
    /// (runtimes other than runc; see `confirm_mounts`).
    pub(crate) go: Option<PathBuf>,
}

/// Who the sandbox runs as when the caller does not say: the caller, or,
/// for a root caller, the workspace's owner (never root: a root sandbox's
/// files in the workspace would be root's on the host) or `nobody` when
/// there is no workspace.
fn default_user(caller: (u32, u32), workspace: Option<&CheckedDir>) -> Result<String, Error> {
    if caller.0 != 0 {
        return Ok(format!("{}:{}", caller.0, caller.1));
    }
    match workspace {
        None => Ok(format!("{NOBODY}:{NOBODY}")),
        Some(ws) if ws.uid != 0 => Ok(format!("{}:{}", ws.uid, ws.gid)),
        Some(ws) => Err(Error::Workspace {
            path: ws.path.clone(),
            reason: format!(
                "is owned by root, and a sandbox never runs as root unless asked: give it to the user the sandbox should run as (chown -R 1000:1000 {}), or ask for root explicitly with user(\"0:0\") (--user 0:0)",
                ws.path.display()
            ),
        }),
    }
}

/// Removes setuid/setgid bits from files in the read-write bind mounts
/// that changed since `since` (see [`strip_setid_bits`]).
pub(crate) fn strip_setid(checked: &[CheckedDir], since: std::time::SystemTime) -> Vec<String> {
    checked
        .iter()
        .filter(|c| c.writable)
        .filter_map(|c| Some((c.open().ok()?, c)))
        .flat_map(|(root, c)| strip_setid_bits(&root, &c.setid_baseline, since))
        .collect()
}

/// `nobody`, the sandbox user of a root caller with no workspace.
const NOBODY: u32 = 65534;

fn numeric_ids(user: &str) -> Option<(u32, u32)> {
    let (u, g) = user.split_once(':').unwrap_or((user, user));
    Some((u.parse().ok()?, g.parse().ok()?))
}

/// Lets the sandbox user connect to a host socket it does not own: given
/// to that user when we can (a root caller), else opened to everyone (the
/// directory holding it is not listable).
pub(crate) fn share_socket(path: &Path, ids: Option<(u32, u32)>) -> Result<(), Error> {
    let given = ids.is_some_and(|(u, g)| std::os::unix::fs::chown(path, Some(u), Some(g)).is_ok());
    let mode = if given { 0o600 } else { 0o666 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// A per-sandbox host directory (proxy socket, exec socket); removed on drop.
pub(crate) struct SandboxDir(pub(crate) PathBuf);

impl SandboxDir {
    /// `agent-sandbox-ID-WHAT-OWNER`: the owner part (pid and start time)
    /// lets `gc` remove the directories of processes that died (SIGKILL).
    fn create(id: &str, what: &str) -> Result<SandboxDir, Error> {
        let name = format!(
            "agent-sandbox-{id}-{what}-{}",
            crate::runtime::owner_dir_tag()
        );
        let path = std::env::temp_dir().join(name);
        std::fs::create_dir(&path)?;
        let dir = SandboxDir(path);
        // Traversable (not listable) by the sandbox user if it differs from
        // the caller. On failure `dir` is dropped, which removes it.
        std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o711))?;
        Ok(dir)
    }
}

impl Drop for SandboxDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Removes the container however the run ends; if the run's future is
/// dropped mid-way, removal continues on a background task.
struct ContainerGuard {
    engine: Engine,
    id: Option<String>,
}

impl ContainerGuard {
    fn id(&self) -> &str {
        self.id.as_deref().unwrap_or_default()
    }

    async fn remove(mut self) {
        if let Some(id) = self.id.take() {
            let _ = self.engine.remove(&id).await;
        }
    }
}

impl Drop for ContainerGuard {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            self.engine.remove_in_background(id);
        }
    }
}

/// Raises the soft open-files limit to the hard one, once, as servers do:
/// every sandbox holds sockets for its proxy and exec channel, and the
/// common soft limit of 1024 lets one busy sandbox starve the others.
fn raise_fd_limit_once() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
        let limit = getrlimit(Resource::Nofile);
        if limit.current < limit.maximum {
            let _ = setrlimit(
                Resource::Nofile,
                Rlimit {
                    current: limit.maximum,
                    maximum: limit.maximum,
                },
            );
        }
    });
}

/// The proxy limits, with the connection cap cut to a thirty-second of the
/// open-files limit (each connection holds two descriptors, so at most a
/// sixteenth of them, never fewer than 8 connections): however low
/// the limit, one sandbox's connections cannot starve the others or the
/// caller. With the usual hard limit (tens of thousands and more) the
/// configured cap (1024 by default) stands.
fn fair_limits(mut limits: Limits) -> Limits {
    let files = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX);
    let share = usize::try_from(files / 32).unwrap_or(usize::MAX).max(8);
    limits.max_connections = limits.max_connections.min(share);
    limits
}

/// The first sandbox of a process removes, in the background, containers
/// left by processes that died without cleaning up (SIGKILL, a crash, power
/// loss): the same as `agent-sandbox gc`. `AGENT_SANDBOX_GC=off` turns it
/// off (for a process that runs `gc` itself, and for tests that must know
/// which collection removed what).
fn collect_orphans_once(engine: &Engine) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    if std::env::var("AGENT_SANDBOX_GC").is_ok_and(|v| v == "off") {
        return;
    }
    ONCE.call_once(|| {
        let engine = engine.clone();
        tokio::spawn(async move {
            let _ = crate::runtime::gc(&engine).await;
        });
    });
}

/// Writes the embedded init binary to the cache directory (once per
/// version) and returns its path.
fn init_binary() -> Result<PathBuf, Error> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    INIT_BINARY.hash(&mut h);
    let name = format!("init-{}-{:016x}", env!("CARGO_PKG_VERSION"), h.finish());
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("agent-sandbox");
    let path = base.join(&name);
    if std::fs::read(&path).is_ok_and(|b| b == INIT_BINARY) {
        return Ok(path);
    }
    std::fs::create_dir_all(&base)?;
    let tmp = base.join(format!("{name}.{}.tmp", new_id())); // unique: runs race on first use
    let written = std::fs::write(&tmp, INIT_BINARY)
        .and_then(|()| std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)))
        .and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(e) = written {
        // Out of space or descriptors: leave no half-written file behind.
        let _ = std::fs::remove_file(&tmp);
        return Err(e.into());
    }
    Ok(path)
}
