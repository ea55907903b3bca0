//! What a run is given and what it returns: [`Command`], [`Output`],
//! [`CancelToken`], and the output capture shared by runs and execs.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::proxy::AuditEvent;
use crate::Error;

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

/// How a command ended, as a run or an exec saw it.
pub(crate) struct Ended {
    pub(crate) code: i64,
    pub(crate) timed_out: bool,
    pub(crate) oom_killed: bool,
}

impl Output {
    /// The one place an [`Output`] is put together.
    pub(crate) fn new(
        ended: Ended,
        (out, err): (Capture, Capture),
        events: crate::audit::Slice,
        setid_stripped: Vec<String>,
        sandbox_id: String,
        duration: Duration,
    ) -> Output {
        Output {
            exit_code: ended.code,
            stdout: out.buf,
            stderr: err.buf,
            stdout_truncated: out.truncated,
            stderr_truncated: err.truncated,
            timed_out: ended.timed_out,
            oom_killed: ended.oom_killed,
            duration,
            events: events.events,
            events_dropped: events.dropped,
            setid_stripped,
            sandbox_id,
        }
    }

    /// The result as JSON, the one shape every binding and `serve` hands
    /// on: `exit_code`, `stdout` and `stderr` (lossy UTF-8, left out when
    /// `with_output` is false), `stdout_truncated`, `stderr_truncated`,
    /// `timed_out`, `oom_killed`, `duration_ms`, `events`, `refusals` (the
    /// events that are not `allow`: what the policy refused and what
    /// failed to connect), `events_dropped`, `setid_stripped`, `sandbox_id`.
    #[must_use]
    pub fn to_json(&self, with_output: bool) -> serde_json::Value {
        let mut v = serde_json::json!({
            "exit_code": self.exit_code,
            "stdout_truncated": self.stdout_truncated,
            "stderr_truncated": self.stderr_truncated,
            "timed_out": self.timed_out,
            "oom_killed": self.oom_killed,
            "duration_ms": self.duration.as_secs_f64() * 1e3,
            "events": self.events,
            "refusals": self.refusals().collect::<Vec<_>>(),
            "events_dropped": self.events_dropped,
            "setid_stripped": self.setid_stripped,
            "sandbox_id": self.sandbox_id,
        });
        if with_output {
            v["stdout"] = self.stdout_str().into();
            v["stderr"] = self.stderr_str().into();
        }
        v
    }

    /// The events of this command that were not allowed through: refused
    /// by the policy ([`Verdict::Deny`](crate::proxy::Verdict)) or allowed
    /// but unreachable (`Error`), each with host, port, reason and how the
    /// connection came (`via`). What an agent reads to tell "not on the
    /// allowlist" from "network down".
    pub fn refusals(&self) -> impl Iterator<Item = &AuditEvent> {
        self.events
            .iter()
            .filter(|e| e.verdict != crate::proxy::Verdict::Allow)
    }

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

/// A callback fed output chunks.
pub(crate) type OutputSink = Arc<dyn Fn(&[u8]) + Send + Sync>;

/// Output kept up to a limit; the rest is counted as truncated.
#[derive(Default)]
pub(crate) struct Capture {
    pub(crate) buf: Vec<u8>,
    limit: usize,
    pub(crate) truncated: bool,
    /// The first bytes, whatever the limit (init's own messages start there).
    pub(crate) head: Vec<u8>,
}

/// How many first bytes a [`Capture`] keeps whatever its limit.
const HEAD: usize = 128;

impl Capture {
    pub(crate) fn new(limit: usize) -> Capture {
        Capture {
            limit,
            ..Capture::default()
        }
    }

    /// Output someone else already cut at `limit` (full means cut).
    pub(crate) fn cut(buf: Vec<u8>, limit: usize) -> Capture {
        Capture {
            truncated: buf.len() >= limit,
            head: buf[..buf.len().min(HEAD)].to_vec(),
            buf,
            limit,
        }
    }

    pub(crate) fn push(&mut self, bytes: &[u8]) {
        let room = HEAD.saturating_sub(self.head.len());
        self.head.extend_from_slice(&bytes[..bytes.len().min(room)]);
        let room = self.limit.saturating_sub(self.buf.len());
        if bytes.len() > room {
            self.truncated = true;
        }
        self.buf.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }
}
