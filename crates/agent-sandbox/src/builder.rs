//! The public entry point: [`Sandbox::builder`] collects settings; `run`,
//! `start` and `pool` validate them once and hand the [`Config`] on.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::command::{CancelToken, Command, Output};
use crate::config::{Config, Settings};
use crate::options::{ExecOptions, SandboxOptions};
use crate::policy::PolicyBuilder;
use crate::proxy::{AuditEvent, Limits};
use crate::runtime::PullProgress;
use crate::{Error, Pool, Session};

/// Setters that store their argument in the field of the same name.
macro_rules! setters {
    ($($(#[$doc:meta])* $name:ident($arg:ident: $t:ty) => $value:expr;)*) => {$(
        $(#[$doc])*
        pub fn $name(mut self, $arg: $t) -> Self {
            self.s.$name = $value;
            self
        }
    )*};
}

/// Rule setters that forward to the [`PolicyBuilder`] method of the same name.
macro_rules! rules {
    ($($(#[$doc:meta])* $name:ident;)*) => {$(
        $(#[$doc])*
        pub fn $name(mut self, rule: impl Into<String>) -> Self {
            self.s.policy = self.s.policy.$name(rule);
            self
        }
    )*};
}

/// Entry point: `Sandbox::builder()`.
#[derive(Debug)]
pub struct Sandbox;

impl Sandbox {
    /// A builder with every default stated on its setters.
    pub fn builder() -> SandboxBuilder {
        SandboxBuilder::default()
    }
}

/// Configures a sandbox. Nothing is checked until [`check`](SandboxBuilder::check)
/// or a run, where every input is validated before anything starts.
#[must_use]
#[derive(Clone, Default)]
pub struct SandboxBuilder {
    s: Settings,
}

impl std::fmt::Debug for SandboxBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxBuilder")
            .field("image", &self.s.image)
            .field("workspace", &self.s.workspace)
            .field("policy", &self.s.policy)
            .field("timeout", &self.s.timeout)
            .finish_non_exhaustive()
    }
}

impl SandboxBuilder {
    setters! {
        /// The image. Default: `AGENT_SANDBOX_IMAGE`, else [`DEFAULT_IMAGE`](crate::DEFAULT_IMAGE)
        /// (`debian:bookworm-slim`). Used if present locally, pulled otherwise.
        image(image: impl Into<String>) => Some(image.into());
        /// The one read-write directory, mounted at `/workspace` (the working
        /// directory). Default: none (`/workspace` is an empty tmpfs).
        workspace(path: impl Into<PathBuf>) => Some(path.into());
        /// Where the workspace is copied to the engine (an engine that does
        /// not share this machine's files; see the README's engines): leave
        /// out what the workspace's `.gitignore` files ignore (`target/`,
        /// `node_modules/`). Default: copy everything. A bind mount (a local
        /// engine) shows the whole directory either way: this is for speed,
        /// not a way to hide files from the sandbox.
        skip_gitignored(skip: bool) => skip;
        /// Replaces the network rules with those of `policy` (validated at run).
        policy(policy: PolicyBuilder) => policy;
        /// The engine's OCI runtime for the container: `runsc` runs it under
        /// gVisor, a second wall (a user-space kernel) behind the container's.
        /// Default: `AGENT_SANDBOX_RUNTIME`, else the engine's default (`runc`).
        /// The runtime must be registered with the engine (`make test` registers
        /// Debian's `runsc`; see the README).
        runtime(name: impl Into<String>) => Some(name.into());
        /// Kills the command after this long. Default: no timeout.
        timeout(timeout: Duration) => Some(timeout);
        /// Memory limit in bytes, swap included. Default 1 GiB.
        memory(bytes: i64) => bytes;
        /// CPU limit. Default 1.0.
        cpus(cpus: f64) => cpus;
        /// Process/thread limit. Default 256.
        pids(pids: i64) => pids;
        /// Size of the `/tmp` tmpfs in bytes. Default 512 MiB.
        tmp_size(bytes: u64) => bytes;
        /// Bytes of stdout and of stderr kept in the [`Output`]; the rest is
        /// still streamed to callbacks but not stored. Default 16 MiB each.
        output_limit(bytes: usize) => bytes;
        /// Largest file a session's `read_file` returns (bigger is a
        /// [`Error::File`] naming the size); also bounds the output of the
        /// helpers that read and list `/tmp` inside. Default 64 MiB.
        file_limit(bytes: usize) => bytes;
        /// Runs as `uid:gid` instead of the caller's own ids (the default, so
        /// files written to the workspace belong to the caller).
        user(uid_gid: impl Into<String>) => Some(uid_gid.into());
        /// A session with no exec in flight for this long is closed. Default 30
        /// minutes; `None` keeps it until [`Session::close`] or drop.
        idle_timeout(idle: Option<Duration>) => idle;
        /// The proxy's limits. Default [`Limits::default`].
        proxy_limits(limits: Limits) => limits;
        /// Called with each chunk of stdout as it arrives.
        on_stdout(f: impl Fn(&[u8]) + Send + Sync + 'static) => Some(Arc::new(f));
        /// Called with each chunk of stderr as it arrives.
        on_stderr(f: impl Fn(&[u8]) + Send + Sync + 'static) => Some(Arc::new(f));
        /// Called with each audit event as the proxy decides.
        on_event(f: impl Fn(&AuditEvent) + Send + Sync + 'static) => Some(Arc::new(f));
        /// Called with image pull progress (only when the image is pulled).
        on_pull(f: impl Fn(&PullProgress) + Send + Sync + 'static) => Some(Arc::new(f));
    }

    rules! {
        /// Allows a host rule (see [`crate::policy`]). Default: nothing is allowed.
        allow;
        /// Denies a host rule; deny wins.
        deny;
        /// Allows a network (the only way to reach IP literals and private ranges).
        allow_cidr;
        /// Denies a network.
        deny_cidr;
    }

    /// Allows requests to a host by method and path (see
    /// [`PolicyBuilder::allow_http`]): `allow_http("GET", "api.github.com",
    /// "/repos/acme/**")`. The host is allowed for those requests only, and
    /// its TLS is intercepted so the proxy can see them.
    pub fn allow_http(
        mut self,
        method: impl AsRef<str>,
        host: impl AsRef<str>,
        path: impl AsRef<str>,
    ) -> Self {
        self.s.policy = self.s.policy.allow_http(method, host, path);
        self
    }

    /// A secret the sandbox never sees. Inside, the environment variable
    /// `name` holds a placeholder; the proxy puts `value` in its place in
    /// the headers (basic-auth included) and query of requests to hosts
    /// `host_rule` covers, and refuses requests that carry it anywhere
    /// else. The host's TLS is intercepted (see the README).
    pub fn secret(
        mut self,
        name: impl Into<String>,
        host_rule: impl Into<String>,
        value: impl Into<String>,
    ) -> Self {
        self.s.policy = self
            .s
            .policy
            .secret(crate::intercept::SecretSpec::new(name, host_rule, value));
        self
    }

    /// Adds the rules, presets and secrets of a policy file (read, and
    /// its secrets' variables looked up, at each run or session start;
    /// see [`PolicyBuilder::from_file`] for the format). Rules given one by
    /// one add to the file's.
    pub fn policy_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.s.policy_files.push(path.into());
        self
    }

    /// Adds a preset's allow rules (`npm`, `pypi`, `github`, ...: see
    /// [`crate::policy::presets`]).
    pub fn allow_preset(mut self, name: impl Into<String>) -> Self {
        self.s.policy = self.s.policy.allow_preset(name);
        self
    }

    /// Calls `f` when a request matches no rule (never for a deny rule, an
    /// IP literal, a special-range address or a malformed request): the
    /// proxy holds the request until `f` answers, at most the
    /// [`ask_timeout`](Self::ask_timeout) (then it is denied). See
    /// [`crate::ask`]. Default: no callback; a miss is denied at once.
    pub fn on_ask<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(crate::ask::AskRequest) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = crate::ask::AskAnswer> + Send + 'static,
    {
        self.s.ask = Some(crate::ask::ask_fn(f));
        self
    }

    /// How long a request waits for the ask callback. Default 30 s.
    pub fn ask_timeout(mut self, timeout: Duration) -> Self {
        self.s.ask_timeout = timeout;
        self
    }

    /// Trusts the roots in the PEM file `path` for the upstreams of
    /// intercepted hosts, beside the system's roots (a corporate CA).
    pub fn upstream_ca(mut self, path: impl Into<PathBuf>) -> Self {
        self.s.upstream_ca.push(path.into());
        self
    }

    /// Pins `name:port` to `addr`, like curl's `--resolve`.
    pub fn resolve(mut self, name: impl Into<String>, port: u16, addr: impl Into<String>) -> Self {
        self.s.policy = self.s.policy.resolve(name, port, addr);
        self
    }

    /// Pins from `HOST:PORT:ADDR` text (checked at run).
    pub fn resolve_spec(mut self, spec: impl Into<String>) -> Self {
        self.s.resolve_specs.push(spec.into());
        self
    }

    /// Sets an environment variable in the sandbox. The proxy variables,
    /// `HOME` (`/tmp`) and cache locations are set by the sandbox itself.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.s.env.push((key.into(), value.into()));
        self
    }

    /// Mounts a host directory read-only at `container_path`.
    pub fn mount(mut self, host: impl Into<PathBuf>, container_path: impl Into<String>) -> Self {
        self.s
            .mounts
            .push((host.into(), container_path.into(), true));
        self
    }

    /// Mounts a host directory read-write (only when asked: the workspace is
    /// the one read-write mount by default).
    pub fn mount_rw(mut self, host: impl Into<PathBuf>, container_path: impl Into<String>) -> Self {
        self.s
            .mounts
            .push((host.into(), container_path.into(), false));
        self
    }

    /// Lets another task cancel the run.
    pub fn cancel_token(mut self, token: CancelToken) -> Self {
        self.s.cancel = Some(token);
        self
    }

    /// Sets every option `o` sets (see [`SandboxOptions`]), keeping the rest.
    pub fn options(mut self, o: SandboxOptions) -> Self {
        let mut rules = std::mem::take(&mut self.s.policy);
        rules = o.allow.into_iter().fold(rules, PolicyBuilder::allow);
        rules = o.deny.into_iter().fold(rules, PolicyBuilder::deny);
        rules = o
            .allow_cidr
            .into_iter()
            .fold(rules, PolicyBuilder::allow_cidr);
        rules = o
            .deny_cidr
            .into_iter()
            .fold(rules, PolicyBuilder::deny_cidr);
        rules = o
            .allow_http
            .into_iter()
            .fold(rules, PolicyBuilder::allow_http_rule);
        self.s.resolve_specs.extend(o.resolve);
        rules = o.secret.into_iter().fold(rules, PolicyBuilder::secret);
        rules = o
            .preset
            .into_iter()
            .fold(rules, PolicyBuilder::allow_preset);
        self.s.policy = rules;
        self.s.policy_files.extend(o.policy_file);
        if let Some(t) = o.ask_timeout {
            self.s.ask_timeout = t.0;
        }
        self.s.upstream_ca.extend(o.upstream_ca);
        self.s
            .env
            .extend(o.env.into_iter().map(|e| (e.key, e.value)));
        let mounts = o.mounts.into_iter();
        self.s
            .mounts
            .extend(mounts.map(|m| (m.host, m.target, m.read_only)));
        let s = &mut self.s;
        s.image = o.image.or(s.image.take());
        s.workspace = o.workspace.or(s.workspace.take());
        s.skip_gitignored |= o.skip_gitignored;
        s.timeout = o.timeout.map(|t| t.0).or(s.timeout);
        s.memory = o
            .memory
            .map_or(s.memory, |m| i64::try_from(m.0).unwrap_or(i64::MAX));
        s.cpus = o.cpus.unwrap_or(s.cpus);
        s.pids = o.pids.unwrap_or(s.pids);
        s.tmp_size = o.tmp_size.map_or(s.tmp_size, |t| t.0);
        s.output_limit = o.output_limit.map_or(s.output_limit, |l| l.as_usize());
        s.file_limit = o.file_limit.map_or(s.file_limit, |l| l.as_usize());
        s.user = o.user.or(s.user.take());
        s.runtime = o.runtime.or(s.runtime.take());
        if let Some(idle) = o.idle_timeout {
            s.idle_timeout = (!idle.0.is_zero()).then_some(idle.0);
        }
        let limits = &mut s.proxy_limits;
        limits.max_connections = o.max_connections.unwrap_or(limits.max_connections);
        limits.new_connections_per_second = o
            .connections_per_second
            .unwrap_or(limits.new_connections_per_second);
        self
    }

    /// Validates every input (rules, sizes, limits, names) without starting
    /// anything; `run`, `start` and `pool` do the same first. The workspace
    /// and the engine are checked when a sandbox starts.
    ///
    /// # Errors
    /// [`Error::Policy`] naming a malformed rule, [`Error::InvalidArgument`].
    pub fn check(&self) -> Result<(), Error> {
        self.s.validate().map(|_| ())
    }

    pub(crate) fn config(&self) -> Result<Config, Error> {
        self.s.validate()
    }

    /// Runs `cmd` (a string through `/bin/sh -c`, a list as given) in a
    /// fresh sandbox and removes it afterwards, on success, error, timeout
    /// and cancellation alike.
    ///
    /// # Errors
    /// [`Error::Policy`] for a malformed rule, [`Error::Workspace`] for a
    /// missing or forbidden workspace, [`Error::DockerUnavailable`],
    /// [`Error::ImageNotFound`], [`Error::Cancelled`], [`Error::Engine`].
    /// A non-zero exit or a timeout is not an error: see [`Output`].
    pub async fn run(&self, cmd: impl Into<Command>) -> Result<Output, Error> {
        self.run_with(cmd, ExecOptions::new()).await
    }

    /// [`run`](SandboxBuilder::run) with per-run options (environment,
    /// working directory, stdin, timeout, output limit, callbacks); what
    /// they leave unset comes from the builder.
    ///
    /// # Errors
    /// As [`run`](SandboxBuilder::run).
    pub async fn run_with(&self, cmd: impl Into<Command>, o: ExecOptions) -> Result<Output, Error> {
        let argv = cmd.into().into_argv()?;
        crate::run::run(self.config()?, argv, o).await
    }

    /// Starts a warm sandbox for many commands (see [`Session`]). The
    /// builder's timeout becomes each exec's default timeout.
    ///
    /// # Errors
    /// As [`run`](SandboxBuilder::run), plus [`Error::Engine`] if the
    /// sandbox does not come up.
    pub async fn start(&self) -> Result<Session, Error> {
        Session::start(self.config()?).await
    }

    /// Starts a [`Pool`] of `size` sandboxes for fast one-shot runs;
    /// returns when all of them are ready.
    ///
    /// # Errors
    /// As [`start`](SandboxBuilder::start), and [`Error::InvalidArgument`]
    /// for a size of 0.
    pub async fn pool(&self, size: usize) -> Result<Pool, Error> {
        Pool::new(self.config()?, size).await
    }
}
