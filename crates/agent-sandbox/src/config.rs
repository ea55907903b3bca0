//! A sandbox's settings (what the builder collects) and their validated
//! form, [`Config`], which every launch starts from.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::command::{CancelToken, OutputSink};
use crate::policy::{Policy, PolicyBuilder};
use crate::proxy::{EventSink, Limits};
use crate::runtime::PullProgress;
use crate::Error;

/// The image used when neither the builder nor `AGENT_SANDBOX_IMAGE` names one.
pub const DEFAULT_IMAGE: &str = "debian:bookworm-slim";

/// A callback fed image pull progress.
pub(crate) type PullSink = Arc<dyn Fn(&PullProgress) + Send + Sync>;

/// Everything a [`SandboxBuilder`](crate::SandboxBuilder) sets (the defaults
/// are stated on its setters).
#[derive(Clone)]
pub(crate) struct Settings {
    pub(crate) image: Option<String>,
    pub(crate) workspace: Option<PathBuf>,
    pub(crate) skip_gitignored: bool,
    pub(crate) policy: PolicyBuilder,
    pub(crate) resolve_specs: Vec<String>,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) memory: i64,
    pub(crate) cpus: f64,
    pub(crate) pids: i64,
    pub(crate) tmp_size: u64,
    pub(crate) output_limit: usize,
    pub(crate) mounts: Vec<(PathBuf, String, bool)>,
    pub(crate) user: Option<String>,
    pub(crate) on_stdout: Option<OutputSink>,
    pub(crate) on_stderr: Option<OutputSink>,
    pub(crate) on_event: Option<EventSink>,
    pub(crate) on_pull: Option<PullSink>,
    pub(crate) cancel: Option<CancelToken>,
    pub(crate) proxy_limits: Limits,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) runtime: Option<String>,
    pub(crate) file_limit: usize,
    pub(crate) policy_files: Vec<PathBuf>,
    pub(crate) ask: Option<crate::ask::AskFn>,
    pub(crate) ask_timeout: Duration,
    pub(crate) upstream_ca: Vec<PathBuf>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            image: None,
            workspace: None,
            skip_gitignored: false,
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
            policy_files: Vec::new(),
            ask: None,
            ask_timeout: Duration::from_secs(30),
            upstream_ca: Vec::new(),
        }
    }
}

/// Settings that passed [`Settings::validate`], with the compiled policy.
#[derive(Clone)]
pub(crate) struct Config {
    /// The settings as given.
    pub(crate) s: Settings,
    /// The compiled policy.
    pub(crate) policy: Policy,
    /// The rules it was compiled from (pins included), for sessions to change.
    pub(crate) rules: PolicyBuilder,
    /// The extra upstream roots, read from `upstream_ca` (PEM text).
    pub(crate) upstream_roots: Vec<String>,
}

impl Config {
    /// Whether sandboxes of this config intercept TLS for some hosts (a
    /// secret or an HTTP rule): they get a CA of their own.
    pub(crate) fn intercepts(&self) -> bool {
        !self.rules.secrets().is_empty() || !self.policy.http_rules().is_empty()
    }
}

impl Config {
    /// The host directories a sandbox of this config bind-mounts.
    pub(crate) fn bind_sources(&self) -> Vec<&Path> {
        self.s
            .workspace
            .as_deref()
            .into_iter()
            .chain(self.s.mounts.iter().map(|(host, _, _)| host.as_path()))
            .collect()
    }
}

impl Settings {
    /// A policy file the sandbox could write (in the workspace or a
    /// read-write mount) would let the agent widen its own box for the
    /// next run: refused.
    fn refuse_writable_policy_file(&self, path: &Path) -> Result<(), Error> {
        let Ok(file) = path.canonicalize() else {
            return Ok(()); // not readable: reading it names the problem
        };
        let writable = self
            .workspace
            .iter()
            .chain(self.mounts.iter().filter(|m| !m.2).map(|m| &m.0));
        for dir in writable {
            if dir.canonicalize().is_ok_and(|d| file.starts_with(&d)) {
                return Err(Error::invalid(
                    "policy file",
                    format!(
                        "{} is inside {}, which the sandbox can write: the agent could widen its own box. Keep the policy file outside the workspace and read-write mounts",
                        path.display(),
                        dir.display()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Checks every input; nothing is started.
    pub(crate) fn validate(&self) -> Result<Config, Error> {
        // The files' rules first, then those given one by one.
        let mut rules = PolicyBuilder::default();
        for path in &self.policy_files {
            self.refuse_writable_policy_file(path)?;
            rules = rules.extend(PolicyBuilder::from_file(path)?);
        }
        let mut rules = rules.extend(self.policy.clone());
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
        if self.tmp_size < 1 << 20 {
            // Docker reads a tmpfs size of 0 as "no limit".
            return Err(bad(
                "tmp size",
                format!("{} bytes is below the minimum of 1 MiB", self.tmp_size),
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
        crate::intercept::validated(rules.secrets(), "0")?;
        for spec in rules.secrets() {
            if self.env.iter().any(|(k, _)| *k == spec.name) {
                return Err(bad(
                    "secret",
                    format!(
                        "{} is both a secret and an environment variable; the secret's variable holds its placeholder",
                        spec.name
                    ),
                ));
            }
        }
        let mut upstream_roots = Vec::new();
        for path in &self.upstream_ca {
            let text = std::fs::read_to_string(path).map_err(|e| {
                bad(
                    "upstream CA",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            if !text.contains("-----BEGIN CERTIFICATE-----") {
                return Err(bad(
                    "upstream CA",
                    format!("{} holds no PEM certificate", path.display()),
                ));
            }
            upstream_roots.push(text);
        }
        Ok(Config {
            s: self.clone(),
            policy,
            rules,
            upstream_roots,
        })
    }
}
