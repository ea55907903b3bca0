//! `--ask` for `run` and `shell`: the person at the terminal answers each
//! miss on `/dev/tty` (never the command's stdin or stdout), one question
//! at a time. `always` appends the rule to the policy file in use.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent_sandbox::ask::{AskAnswer, AskRequest};
use agent_sandbox::{Error, SandboxBuilder};

/// Adds the terminal's asker to `b`.
///
/// # Errors
/// [`Error::InvalidArgument`] when there is no terminal to ask on.
pub(crate) fn on_tty(
    b: SandboxBuilder,
    policy_file: Option<PathBuf>,
    timeout: Duration,
) -> Result<SandboxBuilder, Error> {
    let tty = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .map_err(|e| Error::InvalidArgument {
            what: "--ask".into(),
            reason: format!(
                "it asks on the terminal, and there is none ({e}); run from a terminal, or let a program answer with `serve --stdio --ask`"
            ),
        })?;
    let tty = Arc::new(Mutex::new(tty));
    Ok(b.on_ask(move |req| {
        let (tty, file) = (tty.clone(), policy_file.clone());
        async move {
            tokio::task::spawn_blocking(move || prompt(&tty, &req, file.as_deref(), timeout))
                .await
                .unwrap_or_else(|e| AskAnswer::deny(format!("the prompt failed: {e}")))
        }
    }))
}

/// Asks one question; answers deny when the time is up (the proxy has
/// denied by then anyway) or the terminal is gone.
fn prompt(
    tty: &Mutex<File>,
    req: &AskRequest,
    file: Option<&Path>,
    timeout: Duration,
) -> AskAnswer {
    let deadline = Instant::now() + timeout;
    // One question at a time: the lock is the queue.
    let Ok(mut tty) = tty.lock() else {
        return AskAnswer::deny("the terminal is unavailable");
    };
    let what = match &req.path {
        Some(p) => format!("{} {}:{}{p}", req.method, req.host, req.port),
        None => format!("{}:{}", req.host, req.port),
    };
    let command = req.command.as_deref().unwrap_or("the sandbox");
    let always = if file.is_some() { " [a]lways" } else { "" };
    let question = format!(
        "\r\nagent-sandbox: allow {what} for '{command}'? [o]nce [s]andbox{always} [d]eny "
    );
    if tty.write_all(question.as_bytes()).is_err() {
        return AskAnswer::deny("the terminal is unavailable");
    }
    let _ = tty.flush();
    loop {
        let Some(line) = read_line(&mut tty, deadline) else {
            let _ = tty.write_all(b"\r\nagent-sandbox: no answer in time; denied\r\n");
            return AskAnswer::deny("no answer at the terminal in time");
        };
        match (line.trim().to_ascii_lowercase().as_str(), file) {
            ("o" | "once", _) => return AskAnswer::AllowOnce,
            ("s" | "sandbox", _) => return AskAnswer::AllowSandbox,
            ("a" | "always", Some(path)) => {
                return match append_rule(path, &req.rule) {
                    Ok(()) => {
                        let note = format!(
                            "agent-sandbox: added {:?} to {}\r\n",
                            req.rule,
                            path.display()
                        );
                        let _ = tty.write_all(note.as_bytes());
                        AskAnswer::AllowSandbox
                    }
                    Err(e) => {
                        let note = format!("agent-sandbox: {e}; allowed for this sandbox only\r\n");
                        let _ = tty.write_all(note.as_bytes());
                        AskAnswer::AllowSandbox
                    }
                };
            }
            ("d" | "deny", _) => return AskAnswer::deny("denied at the terminal"),
            _ => {
                let again = format!("[o]nce [s]andbox{always} [d]eny? ");
                let _ = tty.write_all(again.as_bytes());
            }
        }
    }
}

/// A line from the terminal, or `None` at the deadline or on EOF.
fn read_line(tty: &mut File, deadline: Instant) -> Option<String> {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let mut line = Vec::new();
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        let ts = Timespec::try_from(left).ok()?;
        let fd = tty.as_fd();
        let mut fds = [PollFd::new(&fd, PollFlags::IN)];
        if poll(&mut fds, Some(&ts)).ok()? == 0 {
            return None;
        }
        let mut b = [0u8; 1];
        match tty.read(&mut b) {
            Ok(1) if b[0] == b'\n' || b[0] == b'\r' => {
                return Some(String::from_utf8_lossy(&line).into_owned())
            }
            Ok(1) => line.push(b[0]),
            _ => return None,
        }
    }
}

/// Appends `rule` to the policy file's `allow` list (`http` for an HTTP
/// rule), keeping its comments and layout.
pub(crate) fn append_rule(path: &Path, rule: &str) -> Result<(), Error> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::Io {
        op: "read",
        path: path.into(),
        source: e,
    })?;
    let mut doc: toml_edit::DocumentMut =
        text.parse()
            .map_err(|e: toml_edit::TomlError| Error::InvalidArgument {
                what: "policy file".into(),
                reason: format!("{}: {e}", path.display()),
            })?;
    let key = if rule.contains(' ') { "http" } else { "allow" };
    let list = doc
        .entry(key)
        .or_insert_with(|| toml_edit::value(toml_edit::Array::new()))
        .as_array_mut()
        .ok_or_else(|| Error::InvalidArgument {
            what: "policy file".into(),
            reason: format!("{}: {key} is not a list", path.display()),
        })?;
    if !list.iter().any(|v| v.as_str() == Some(rule)) {
        list.push(rule);
    }
    std::fs::write(path, doc.to_string()).map_err(|e| Error::Io {
        op: "write",
        path: path.into(),
        source: e,
    })
}
