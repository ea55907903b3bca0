//! Sessions: one hardened sandbox kept warm for many commands.
//!
//! `agent-sandbox-init` (PID 1) serves exec requests on a unix socket in a
//! host directory bind-mounted into the container, so an exec costs a local
//! socket round trip and a fork, not a trip through the engine. `docker
//! exec` through the engine API remains available as [`Session::exec_docker`].

mod channel;
mod files;
mod ports;
mod process;

use channel::ExecHub;
pub use files::{DirEntry, Listing};
pub use process::{Chunk, NewOutput, Pipe, Process};

use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::sync::broadcast;

use crate::command::{Capture, Ended, Output};
use crate::config::Config;
use crate::launch::{launch, ContainerGuard, Launched, Mode};
use crate::options::{ExecOptions, RuleChange};
use crate::policy::{Policy, PolicyBuilder};
use crate::proxy::{AuditEvent, ProxyHandle};
use crate::{Command, Error};
use files::Location;

/// A warm sandbox. Cheap to clone (all clones share it). Closing it, its
/// idle timeout, or dropping the last clone removes the container.
#[derive(Clone)]
pub struct Session {
    inner: Arc<Inner>,
}

struct Inner {
    /// The sandbox as launched: config, engine, proxy, checked mounts.
    launched: Launched,
    container: Mutex<Option<String>>,
    hub: Arc<ExecHub>,
    /// When the last setuid sweep began: the next one looks at files changed since.
    swept: Mutex<std::time::SystemTime>,
    last_used: Mutex<Instant>,
    active: AtomicUsize,
    closed: AtomicBool,
    /// Background processes (`spawn`): running ones and the latest ended.
    processes: Mutex<Vec<Process>>,
    next_process: AtomicU64,
    /// Exposed ports: the host address and the listener's task.
    exposed:
        Mutex<std::collections::HashMap<u16, (std::net::SocketAddr, tokio::task::AbortHandle)>>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.inner.launched.id)
            .field("closed", &self.is_closed())
            .finish()
    }
}

/// Marks an exec in flight (idle timeout waits) and touches `last_used`.
struct Busy<'a>(&'a Inner);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        if let Ok(mut t) = self.0.last_used.lock() {
            *t = Instant::now();
        }
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Session {
    /// Launches a sandbox whose init serves exec requests, and waits for
    /// init to connect.
    pub(crate) async fn start(config: Config) -> Result<Session, Error> {
        let launched = launch(config, Mode::Session).await?;
        let socket = launched.exec_socket();
        // Listening before the container starts: init connects to it.
        let ports = launched.config.policy.capture_ports();
        let (hub, control) = ExecHub::listen(&socket, ports)?;
        launched.share(&socket)?;
        let container = ContainerGuard::create(&launched.engine, &launched.spec).await?;
        let engine = &launched.engine;
        engine.start(container.id()).await?;
        launched.confirm_mounts(container.id()).await?;
        let ready = tokio::time::Instant::now() + channel::READY_TIMEOUT;
        tokio::pin!(control);
        loop {
            tokio::select! {
                _ = &mut control => break,
                () = tokio::time::sleep(Duration::from_millis(100)) => {
                    if tokio::time::Instant::now() > ready || !engine.is_running(container.id()).await {
                        let code = engine.exit_code(container.id()).await;
                        return Err(launched.mount_mismatch(code, None).unwrap_or_else(|| Error::engine(
                            "start a session",
                            "the sandbox's init never connected to its exec socket (is the image's architecture the host's?)",
                        )));
                    }
                }
            }
        }
        let idle = launched.config.s.idle_timeout;
        let inner = Arc::new(Inner {
            container: Mutex::new(Some(container.keep())),
            hub,
            swept: Mutex::new(std::time::SystemTime::now()),
            last_used: Mutex::new(Instant::now()),
            active: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            processes: Mutex::default(),
            next_process: AtomicU64::new(1),
            exposed: Mutex::default(),
            launched,
        });
        if let Some(idle) = idle {
            tokio::spawn(idle_watch(Arc::downgrade(&inner), idle));
        }
        // Capture listens on the ports of the policy in force, whoever
        // changed it (update_policy, or an ask answered "sandbox").
        if let Some(mut policy) = inner.launched.with_proxy(ProxyHandle::watch_policy) {
            let hub = Arc::downgrade(&inner);
            tokio::spawn(async move {
                while policy.changed().await.is_ok() {
                    let ports = policy.borrow_and_update().capture_ports();
                    match hub.upgrade() {
                        Some(inner) => inner.hub.set_ports(ports),
                        None => break,
                    }
                }
            });
        }
        Ok(Session { inner })
    }

    /// The sandbox id (the `agent-sandbox.id` label).
    #[must_use]
    pub fn id(&self) -> &str {
        &self.inner.launched.id
    }

    fn file_limit(&self) -> usize {
        self.inner.launched.config.s.file_limit
    }

    /// Whether the session has been closed.
    #[must_use]
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::SeqCst)
    }

    fn busy(&self) -> Result<Busy<'_>, Error> {
        if self.is_closed() {
            return Err(Error::SessionClosed);
        }
        self.inner.active.fetch_add(1, Ordering::SeqCst);
        Ok(Busy(&self.inner))
    }

    /// Runs a command in the session (a string through `/bin/sh -c`, a list
    /// as given). Several may run at once.
    ///
    /// # Errors
    /// [`Error::SessionClosed`], [`Error::InvalidArgument`]. A non-zero exit
    /// or a timeout is not an error.
    pub async fn exec(&self, cmd: impl Into<Command>) -> Result<Output, Error> {
        self.exec_with(cmd, ExecOptions::default()).await
    }

    /// [`exec`](Session::exec) with per-exec options.
    ///
    /// # Errors
    /// As [`exec`](Session::exec).
    pub async fn exec_with(
        &self,
        cmd: impl Into<Command>,
        o: ExecOptions,
    ) -> Result<Output, Error> {
        let opts = o;
        let _busy = self.busy()?;
        let started = Instant::now();
        let argv = cmd.into().into_argv()?;
        let cwd = workdir(opts.workdir.as_deref())?;
        let s = &self.inner.launched.config.s;
        let limit = opts.output_limit.map_or(s.output_limit, |l| l.as_usize());
        let (mut out, mut err) = (Capture::new(limit), Capture::new(limit));
        let mark = self.inner.launched.events.mark();
        let timeout = opts.timeout.map(|t| t.0).or(s.timeout);
        // A timeout past the clock's range is no timeout.
        let deadline = timeout.and_then(|t| started.checked_add(t));
        let running = &self.inner.launched.running;
        let run_id = running.enter(&argv);
        let request = agent_sandbox_wire::Request {
            argv,
            env: opts.env_pairs(),
            cwd,
        };
        let ended = channel::exec(
            self.inner.hub.open().await?,
            &request,
            opts.stdin.as_deref(),
            deadline,
            None,
            |is_err, bytes| {
                let (cap, cb) = if is_err {
                    (&mut err, &opts.on_stderr)
                } else {
                    (&mut out, &opts.on_stdout)
                };
                if let Some(cb) = cb {
                    cb(bytes);
                }
                cap.push(bytes);
            },
        )
        .await;
        running.leave(run_id);
        let ended = ended?;
        let events = self.inner.launched.events.since(mark);
        Ok(Output::new(
            ended,
            (out, err),
            events,
            self.inner.sweep_setid(),
            self.id().to_owned(),
            started.elapsed(),
        ))
    }

    /// Runs a command through the engine's exec API (`docker exec`): the
    /// slower fallback, kept for engines where the exec socket cannot be
    /// shared (and for comparison).
    ///
    /// # Errors
    /// [`Error::SessionClosed`], [`Error::Engine`].
    pub async fn exec_docker(&self, cmd: impl Into<Command>) -> Result<Output, Error> {
        let _busy = self.busy()?;
        let started = Instant::now();
        let argv = cmd.into().into_argv()?;
        let id = self.container_id()?;
        let launched = &self.inner.launched;
        let limit = launched.config.s.output_limit;
        let (code, stdout, stderr) = launched
            .engine
            .exec(&id, argv, &launched.spec.user, "/workspace", limit)
            .await?;
        let ended = Ended {
            code,
            timed_out: false,
            oom_killed: false,
        };
        let captured = (Capture::cut(stdout, limit), Capture::cut(stderr, limit));
        Ok(Output::new(
            ended,
            captured,
            crate::audit::Slice::default(),
            self.inner.sweep_setid(),
            self.id().to_owned(),
            started.elapsed(),
        ))
    }

    /// The engine's id of the container, while the session is open (for
    /// tools that want `docker exec -it`; the library never needs it).
    #[must_use]
    pub fn container(&self) -> Option<String> {
        self.inner.container.lock().ok().and_then(|c| c.clone())
    }

    fn container_id(&self) -> Result<String, Error> {
        self.inner
            .container
            .lock()
            .ok()
            .and_then(|c| c.clone())
            .ok_or(Error::SessionClosed)
    }

    /// Changes the network rules while the session runs: `f` gets the
    /// current rules and returns the new ones. New connections follow them;
    /// open ones are not cut.
    ///
    /// # Errors
    /// [`Error::Policy`] if a new rule is malformed (the old rules stay).
    pub fn update_policy(
        &self,
        f: impl FnOnce(PolicyBuilder) -> PolicyBuilder,
    ) -> Result<(), Error> {
        let intercepts = self.inner.launched.config.intercepts();
        self.inner
            .launched
            .with_proxy(|p| {
                p.update_policy(|now| {
                    let next = f(now.rules().clone());
                    let same = |a: &crate::intercept::SecretSpec, b: &crate::intercept::SecretSpec| {
                        a.name == b.name && a.host == b.host && a.value.expose() == b.value.expose()
                    };
                    let (was, is) = (now.rules().secrets(), next.secrets());
                    if was.len() != is.len() || !was.iter().zip(is).all(|(a, b)| same(a, b)) {
                        return Err(Error::invalid(
                            "policy",
                            "secrets are fixed when a sandbox starts; start a new one to change them",
                        ));
                    }
                    let policy = next.build()?;
                    if !policy.http_rules().is_empty() && !intercepts {
                        return Err(Error::invalid(
                            "policy",
                            "HTTP rules need TLS interception, which a sandbox sets up when it starts: \
                             start it with an HTTP rule or a secret",
                        ));
                    }
                    Ok(policy)
                })
            })
            .ok_or(Error::SessionClosed)??;
        // At once, not when the policy watch gets to it: the next exec
        // may use a port just allowed.
        self.inner.hub.set_ports(self.policy()?.capture_ports());
        Ok(())
    }

    /// The policy in force (rules an ask added included).
    ///
    /// # Errors
    /// [`Error::SessionClosed`].
    pub fn policy(&self) -> Result<Arc<Policy>, Error> {
        self.inner
            .launched
            .with_proxy(ProxyHandle::policy)
            .ok_or(Error::SessionClosed)
    }

    /// Applies one [`RuleChange`] (what the bindings and `serve` call).
    ///
    /// # Errors
    /// As [`update_policy`](Session::update_policy).
    pub fn change_rules(&self, change: RuleChange) -> Result<(), Error> {
        self.update_policy(|rules| change.apply(rules))
    }

    /// Every audit event of the session so far.
    #[must_use]
    pub fn events(&self) -> Vec<AuditEvent> {
        self.inner.launched.events.all().events
    }

    /// A live feed of audit events from now on (it lags, rather than
    /// blocking the proxy, if not read).
    #[must_use]
    pub fn subscribe(&self) -> broadcast::Receiver<AuditEvent> {
        self.inner.launched.subscribers.subscribe()
    }

    /// Writes a file (never through a symbolic link, regular files only;
    /// parent directories are created). Under `/workspace` on the host
    /// side; under `/tmp`, and in a workspace copied to a remote engine,
    /// inside the sandbox, by the same rules.
    ///
    /// # Errors
    /// [`Error::File`] naming the path and the reason.
    pub async fn write_file(&self, path: &str, data: impl Into<Vec<u8>>) -> Result<(), Error> {
        let data = data.into();
        match self.host_side("write_file", path)? {
            Some((root, parts)) => {
                files::write(&root, &parts, path, &data, self.inner.launched.owner)
            }
            None => {
                let target = in_sandbox_path("write_file", path)?;
                let script = format!(
                    "{GUARD} nolinks \"$1\"; [ ! -e \"$1\" ] || [ -f \"$1\" ] || refuse 'not a regular file'; mkdir -p \"$(dirname \"$1\")\" && cat > \"$1\""
                );
                let argv = vec!["sh".into(), "-c".into(), script, "sh".into(), target];
                self.in_sandbox("write_file", path, argv, Some(data))
                    .await
                    .map(|_| ())
            }
        }
    }

    /// Reads a file (same rules as [`write_file`](Session::write_file)).
    ///
    /// # Errors
    /// [`Error::File`].
    pub async fn read_file(&self, path: &str) -> Result<Vec<u8>, Error> {
        match self.host_side("read_file", path)? {
            Some((root, parts)) => files::read(&root, &parts, path, self.file_limit()),
            None => {
                let target = in_sandbox_path("read_file", path)?;
                let limit = self.file_limit();
                // `wc -c` of a regular file asks its size (coreutils' `stat`
                // fails under Debian's gVisor: statx); `head` stops reading
                // past the limit if it grows meanwhile.
                let script = format!(
                    "{GUARD} nolinks \"$1\"; [ -f \"$1\" ] || refuse 'not a regular file or no such file'; size=$(wc -c < \"$1\") || exit 3; [ \"$size\" -le {limit} ] || refuse \"is $size bytes, larger than the file limit of {limit} bytes (raise it with file_limit)\"; exec head -c {} -- \"$1\"",
                    limit + 1
                );
                let argv = vec!["sh".into(), "-c".into(), script, "sh".into(), target];
                let data = self.in_sandbox("read_file", path, argv, None).await?;
                if data.len() > limit {
                    return Err(files::too_large("read_file", path, limit));
                }
                Ok(data)
            }
        }
    }

    /// Lists a directory (at most 10,000 entries; see
    /// [`listing`](Session::listing) to learn whether there were more).
    ///
    /// # Errors
    /// [`Error::File`].
    pub async fn list(&self, path: &str) -> Result<Vec<DirEntry>, Error> {
        self.listing(path).await.map(|l| l.entries)
    }

    /// Lists a directory: at most 10,000 entries, sorted by name, and
    /// whether the directory held more (a sandbox can create millions).
    ///
    /// # Errors
    /// [`Error::File`].
    pub async fn listing(&self, path: &str) -> Result<Listing, Error> {
        match self.host_side("list", path)? {
            Some((root, parts)) => files::list(&root, &parts, path),
            None => {
                let target = in_sandbox_path("list", path)?;
                // `head` ends `find` at one entry past the bound.
                let script = format!(
                    "{GUARD} nolinks \"$1\"; [ -d \"$1\" ] || refuse 'not a directory or no such directory'; find \"$1\" -mindepth 1 -maxdepth 1 -printf '%y %s %f\\n' | head -n {}",
                    files::MAX_LIST_ENTRIES + 1
                );
                let argv = vec![
                    "sh".into(),
                    "-c".into(),
                    script,
                    "sh".into(),
                    target.clone(),
                ];
                let text = self.in_sandbox("list", path, argv, None).await?;
                let mut entries: Vec<DirEntry> = String::from_utf8_lossy(&text)
                    .lines()
                    .filter_map(|l| {
                        let mut it = l.splitn(3, ' ');
                        let (t, size, name) = (it.next()?, it.next()?, it.next()?);
                        let kind = match t {
                            "f" => "file",
                            "d" => "dir",
                            "l" => "symlink",
                            _ => "other",
                        };
                        Some(DirEntry {
                            name: name.to_owned(),
                            kind,
                            size: size.parse().unwrap_or(0),
                        })
                    })
                    .collect();
                let truncated = entries.len() > files::MAX_LIST_ENTRIES;
                entries.truncate(files::MAX_LIST_ENTRIES);
                entries.sort_by(|a, b| a.name.cmp(&b.name));
                Ok(Listing { entries, truncated })
            }
        }
    }

    /// Removes a file, a symlink (not its target) or an empty directory.
    ///
    /// # Errors
    /// [`Error::File`].
    pub async fn remove(&self, path: &str) -> Result<(), Error> {
        match self.host_side("remove", path)? {
            Some((root, parts)) => files::remove(&root, &parts, path),
            None => {
                let target = in_sandbox_path("remove", path)?;
                let script = format!(
                    "{GUARD} nolinks \"$1\" last; rm -f -- \"$1\" 2>/dev/null || rmdir -- \"$1\""
                );
                self.in_sandbox(
                    "remove",
                    path,
                    vec!["sh".into(), "-c".into(), script, "sh".into(), target],
                    None,
                )
                .await
                .map(|_| ())
            }
        }
    }

    /// Copies the sandbox's workspace back to the caller's directory now,
    /// as [`close`](Session::close) does at the end, and goes on. Only an
    /// engine that does not share this machine's files has a copy (see the
    /// README's engines); with a bind mount the directory is the workspace
    /// and there is nothing to do (an empty report). A file changed on both
    /// sides keeps the local version and gets the sandbox's beside it
    /// (`NAME.from-sandbox`, listed in the report's `conflicts`); a file the
    /// sandbox removed is removed here only if unchanged here. Commands
    /// running meanwhile may be caught halfway (the copy is of one moment).
    ///
    /// # Errors
    /// [`Error::SessionClosed`], [`Error::Engine`], [`Error::Io`].
    pub async fn sync_back(&self) -> Result<crate::SyncReport, Error> {
        if self.is_closed() {
            return Err(Error::SessionClosed);
        }
        match &self.inner.launched.remote {
            Some(remote) => remote.sync_back().await,
            None => Ok(crate::SyncReport::default()),
        }
    }

    /// Copies `local` into the sandbox at `dest`: a local directory (its
    /// contents, packed as the workspace is: links as links, never
    /// followed; sockets, pipes and devices left out; with
    /// `skip_gitignored` what its `.gitignore` files ignore left out) or a
    /// tar file. `dest` is a directory under `/workspace` or `/tmp`,
    /// created if missing, never reached through a link; what is there
    /// already is overwritten by what the upload holds. The files are
    /// written inside the sandbox by its own user (with `tar`, which the
    /// image must have), so an upload can do nothing the sandbox could not:
    /// the same on every engine, bind mount or volume.
    ///
    /// # Errors
    /// [`Error::Io`] for what cannot be read here (or a file that is not a
    /// tar), [`Error::File`] for a `dest` the sandbox refuses.
    pub async fn upload(&self, local: impl AsRef<Path>, dest: &str) -> Result<(), Error> {
        if self.is_closed() {
            return Err(Error::SessionClosed);
        }
        let target = in_sandbox_path("upload", dest)?;
        let skip = self.inner.launched.config.s.skip_gitignored;
        let tar = crate::workspace_sync::upload_tar(local.as_ref(), skip)?;
        let script = format!(
            "{GUARD} {NEED_TAR} nolinks \"$1\"; [ ! -e \"$1\" ] || [ -d \"$1\" ] || refuse 'not a directory'; mkdir -p \"$1\" && exec tar -x --no-same-owner -f - -C \"$1\""
        );
        let argv = vec!["sh".into(), "-c".into(), script, "sh".into(), target];
        self.in_sandbox("upload", dest, argv, Some(tar))
            .await
            .map(|_| ())
    }

    /// Copies the sandbox's directory `path` (under `/workspace` or
    /// `/tmp`) into the local directory `local` (which must exist), by the
    /// rules of copying the workspace back: nothing is written through a
    /// link or outside `local`; links come as links; a local file that
    /// differs is kept and the sandbox's version put beside it
    /// (`NAME.from-sandbox`, listed in the report's `conflicts`). Read
    /// inside the sandbox by its user (with `tar`), so it gives what the
    /// sandbox sees, at most 4 GiB of it.
    ///
    /// # Errors
    /// [`Error::File`] for a `path` the sandbox refuses or a copy over the
    /// bound, [`Error::Io`] for a `local` that is not a directory.
    pub async fn download(
        &self,
        path: &str,
        local: impl AsRef<Path>,
    ) -> Result<crate::SyncReport, Error> {
        if self.is_closed() {
            return Err(Error::SessionClosed);
        }
        let target = in_sandbox_path("download", path)?;
        let local = local.as_ref();
        let dir = crate::workspace_sync::open_dir(local)
            .map_err(|e| Error::io("download into", local, e.into()))?;
        // Below `./`, the directory itself: the first component, as merge
        // reads an engine's archive.
        let script = format!(
            "{GUARD} {NEED_TAR} nolinks \"$1\"; [ -d \"$1\" ] || refuse 'not a directory or no such directory'; cd \"$1\" && exec tar -c -f - ."
        );
        let argv = vec!["sh".into(), "-c".into(), script, "sh".into(), target];
        let limit = crate::workspace_sync::MAX_WORKSPACE;
        let tar = self
            .in_sandbox_up_to("download", path, argv, None, limit.saturating_add(1))
            .await?;
        if tar.len() > limit {
            return Err(files::refuse(
                "download",
                path,
                format!("more than the {} GiB a copy may hold", limit >> 30),
            ));
        }
        let root = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
        let mut none = crate::workspace_sync::Manifest::new();
        crate::workspace_sync::merge(&tar, &root, &mut none, false).map_err(|e| match e {
            Error::Io { source, .. } => Error::io("download into", local, source),
            e => e,
        })
    }

    /// `Some((root, parts))` when the path is in a host-mounted workspace:
    /// `root` is a descriptor of the workspace.
    fn host_side(
        &self,
        op: &'static str,
        path: &str,
    ) -> Result<Option<(std::os::fd::OwnedFd, Vec<String>)>, Error> {
        if self.is_closed() {
            return Err(Error::SessionClosed);
        }
        let launched = &self.inner.launched;
        // Through a gateway the workspace is an engine volume: handled
        // inside the sandbox, like /tmp.
        let workspace = launched
            .checked
            .iter()
            .find(|c| c.target == "/workspace")
            .filter(|_| launched.remote.is_none());
        match (files::locate(op, path)?, workspace) {
            // The checked directory itself, never its path again: another
            // sandbox may have swapped a component of it since.
            (Location::Workspace(parts), Some(ws)) => {
                ws.open().map(|root| Some((root, parts))).map_err(|e| {
                    files::refuse(
                        op,
                        path,
                        format!(
                            "the workspace cannot be opened: {}",
                            std::io::Error::from(e)
                        ),
                    )
                })
            }
            _ => Ok(None),
        }
    }

    async fn in_sandbox(
        &self,
        op: &'static str,
        path: &str,
        argv: Vec<String>,
        stdin: Option<Vec<u8>>,
    ) -> Result<Vec<u8>, Error> {
        // Helper output is bounded like any read: the file limit plus room
        // for a listing's lines.
        let limit = self.file_limit().saturating_add(1 << 20);
        self.in_sandbox_up_to(op, path, argv, stdin, limit).await
    }

    /// [`in_sandbox`](Session::in_sandbox) keeping at most `limit` bytes of
    /// output.
    async fn in_sandbox_up_to(
        &self,
        op: &'static str,
        path: &str,
        argv: Vec<String>,
        stdin: Option<Vec<u8>>,
        limit: usize,
    ) -> Result<Vec<u8>, Error> {
        let mut opts = ExecOptions::new().output_limit(limit);
        if let Some(data) = stdin {
            opts = opts.stdin(data);
        }
        let out = self.exec_with(Command::Argv(argv), opts).await?;
        if out.exit_code != 0 {
            return Err(files::refuse(op, path, out.stderr_str().trim().to_owned()));
        }
        Ok(out.stdout)
    }

    /// Stops and removes the container and the proxy. Processes left
    /// running by any exec end with it. Idempotent.
    ///
    /// # Errors
    /// [`Error::Engine`] if the engine fails to remove the container.
    pub async fn close(&self) -> Result<(), Error> {
        self.inner.close().await
    }

    /// For a pool's spare whose workspace is a copy in an engine volume:
    /// brings the copy up to date if the workspace changed since the spare
    /// started (an earlier run, or the caller, changed it). `false`: it
    /// could not be (the spare is then not used).
    pub(crate) async fn refresh_workspace(&self) -> bool {
        let Some(remote) = &self.inner.launched.remote else {
            return true;
        };
        match remote.changed_workspace().await {
            Ok(None) => true,
            Ok(Some(new)) => {
                let emptied = self
                    .exec("find /workspace -mindepth 1 -delete")
                    .await
                    .is_ok_and(|o| o.success());
                emptied && remote.replace_workspace(new).await.is_ok()
            }
            Err(_) => false,
        }
    }

    /// Whether the sandbox's init is still connected (false once the
    /// container died: killed from outside, the engine restarted).
    pub(crate) fn init_alive(&self) -> bool {
        !self.is_closed() && self.inner.hub.init_alive()
    }

    /// Ends the sandbox after a pool's run: init kills every process in it
    /// and exits (if it has not within 2 s, the engine kills the container
    /// here). When this returns nothing in the container runs; removing the
    /// stopped container continues on the returned task.
    pub(crate) async fn retire(&self) -> Option<tokio::task::JoinHandle<()>> {
        let inner = &self.inner;
        let container = inner.take_container();
        let ended = inner.hub.end_sandbox(Duration::from_secs(2)).await;
        let engine = inner.launched.engine.clone();
        if inner.launched.remote.is_some() {
            // Through a gateway: the container goes first (its volumes
            // cannot go while it exists), and the workspace is copied back
            // before the pool's next run can start.
            if let Some(id) = &container {
                let _ = engine.remove(id).await;
            }
            inner.release_host_side().await;
            return None;
        }
        inner.release_host_side().await;
        let id = container?;
        if !ended {
            let _ = engine.remove(&id).await;
            return None;
        }
        Some(tokio::spawn(async move {
            let _ = engine.remove(&id).await;
        }))
    }
}

impl Inner {
    /// Removes setuid/setgid bits from workspace files changed since the
    /// previous sweep (background processes of earlier execs included).
    fn sweep_setid(&self) -> Vec<String> {
        let now = std::time::SystemTime::now();
        let since = self
            .swept
            .lock()
            .map(|mut t| std::mem::replace(&mut *t, now))
            .unwrap_or(now);
        self.launched.strip_setid(since)
    }

    /// Marks the session closed and takes its container id (once).
    fn take_container(&self) -> Option<String> {
        self.closed.store(true, Ordering::SeqCst);
        self.container.lock().ok().and_then(|mut c| c.take())
    }

    /// Stops the proxy, the exec channel and the exposed ports' listeners,
    /// and removes the host directory.
    async fn release_host_side(&self) {
        self.close_ports();
        self.launched.release().await;
        self.hub.stop();
    }

    fn close_ports(&self) {
        if let Ok(mut m) = self.exposed.lock() {
            m.drain().for_each(|(_, (_, task))| task.abort());
        }
    }

    async fn close(&self) -> Result<(), Error> {
        let result = match self.take_container() {
            Some(id) => self.launched.engine.remove(&id).await,
            None => Ok(()),
        };
        self.release_host_side().await;
        result
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.close_ports();
        self.hub.stop();
        let container = self.container.get_mut().ok().and_then(Option::take);
        if let Some(id) = container {
            self.launched.engine.remove_in_background(id);
        }
    }
}

async fn idle_watch(inner: Weak<Inner>, idle: Duration) {
    let tick = (idle / 4).clamp(Duration::from_millis(50), Duration::from_secs(5));
    loop {
        tokio::time::sleep(tick).await;
        let Some(inner) = inner.upgrade() else { return };
        if inner.closed.load(Ordering::SeqCst) {
            return;
        }
        let since = inner
            .last_used
            .lock()
            .map(|t| t.elapsed())
            .unwrap_or_default();
        if inner.active.load(Ordering::SeqCst) == 0 && since >= idle {
            let _ = inner.close().await;
            return;
        }
    }
}

/// The start of the file API's scripts inside the sandbox (for `/tmp`, and
/// for a workspace in an engine volume): the same rules as on the host
/// side. `nolinks PATH` refuses a path through a symbolic link (`nolinks
/// PATH last`: the last component may be one, for `remove`); `refuse`
/// fails with its words. Inside the sandbox a link only reaches what the
/// sandbox sees anyway: refusing it keeps one contract, and a FIFO or a
/// device is never opened (a read would wait forever).
/// Refuses plainly when the image has no `tar` (upload and download).
const NEED_TAR: &str =
    "command -v tar >/dev/null || refuse 'the image has no tar (upload and download need it)';";

const GUARD: &str = r#"refuse() { echo "$1" >&2; exit 3; }
nolinks() { p=; rest=${1#/}; while [ -n "$rest" ]; do c=${rest%%/*}; case $rest in */*) rest=${rest#*/};; *) rest=;; esac; [ -n "$c" ] || continue; p=$p/$c; if [ -L "$p" ] && { [ -n "$rest" ] || [ -z "$2" ]; }; then refuse "$p is a symbolic link (links are not followed)"; fi; done; }
"#;

/// The exec's working directory, inside `/workspace`.
pub(crate) fn workdir(dir: Option<&str>) -> Result<String, Error> {
    let Some(dir) = dir else {
        return Ok("/workspace".into());
    };
    match files::locate("exec", dir) {
        Ok(Location::Workspace(parts)) if parts.is_empty() => Ok("/workspace".into()),
        Ok(Location::Workspace(parts)) => Ok(format!("/workspace/{}", parts.join("/"))),
        _ => Err(Error::InvalidArgument {
            what: "workdir".into(),
            reason: format!("{dir:?} is not inside /workspace"),
        }),
    }
}

fn in_sandbox_path(op: &'static str, path: &str) -> Result<String, Error> {
    match files::locate(op, path)? {
        Location::Tmp(p) => Ok(p),
        Location::Workspace(parts) => Ok(format!("/workspace/{}", parts.join("/"))),
    }
}
