//! `agent-sandbox shell`: a person looks around inside a session.

use std::io::{IsTerminal, Write};

use agent_sandbox::{Error, ExecOptions, SandboxBuilder};
use tokio::io::{AsyncBufReadExt, BufReader};

pub(crate) async fn shell(b: SandboxBuilder, publish: &[(u16, Option<u16>)]) -> Result<u8, Error> {
    let session = b
        .on_pull(crate::pull_progress)
        .idle_timeout(None)
        .start()
        .await?;
    for (port, host_port) in publish {
        match session.expose(*port, *host_port).await {
            Ok(addr) => eprintln!("agent-sandbox: port {port} in the sandbox is at http://{addr}"),
            Err(e) => {
                let _ = session.close().await;
                return Err(e);
            }
        }
    }
    eprintln!(
        "agent-sandbox shell: sandbox {} (read-only root, /workspace writable, network only to allowed hosts). Leave with exit or Ctrl-D.",
        session.id()
    );
    let interactive = std::io::stdin().is_terminal();
    let work = async {
        match (interactive, session.container()) {
            (true, Some(container)) if which_docker() => {
                // A real terminal: the engine allocates the TTY (uid, env and
                // limits are the container's own).
                let status = tokio::process::Command::new("docker")
                    .args([
                        "exec",
                        "-it",
                        "-w",
                        "/workspace",
                        &container,
                        "/bin/sh",
                        "-c",
                        "command -v bash >/dev/null && exec bash || exec sh",
                    ])
                    .status()
                    .await;
                Ok(status.ok().and_then(|s| s.code()).unwrap_or(1) as u8)
            }
            _ => lines(&session, interactive).await,
        }
    };
    // A signal (the terminal closed, a kill) still removes the sandbox.
    let code = tokio::select! {
        c = work => c,
        sig = crate::wait_for_signal() => Ok(128 + sig),
    };
    let code = match code {
        Ok(c) => c,
        Err(e) => {
            let _ = session.close().await;
            return Err(e);
        }
    };
    session.close().await?;
    Ok(code)
}

fn which_docker() -> bool {
    std::process::Command::new("docker")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// One command per line (no TTY): `cd DIR` changes the working directory
/// of the following lines.
async fn lines(session: &agent_sandbox::Session, prompt: bool) -> Result<u8, Error> {
    let mut input = BufReader::new(tokio::io::stdin()).lines();
    let mut cwd = String::from("/workspace");
    let mut last = 0u8;
    loop {
        if prompt {
            eprint!("sandbox:{cwd}$ ");
            let _ = std::io::stderr().flush();
        }
        let Ok(Some(line)) = input.next_line().await else {
            break;
        };
        let line = line.trim();
        match line {
            "" => continue,
            "exit" | "logout" => break,
            _ => {}
        }
        if let Some(dir) = line.strip_prefix("cd ").map(str::trim) {
            let target = if dir.starts_with('/') {
                dir.to_owned()
            } else {
                format!("{cwd}/{dir}")
            };
            let probe = session
                .exec_with(
                    ["sh", "-c", "cd \"$1\" && pwd", "sh", &target],
                    ExecOptions::new(),
                )
                .await?;
            match probe.stdout_str().trim() {
                p if probe.success() && (p == "/workspace" || p.starts_with("/workspace/")) => {
                    cwd = p.to_owned()
                }
                _ => eprintln!("cd: {dir}: not a directory inside /workspace"),
            }
            continue;
        }
        let opts = ExecOptions::new()
            .workdir(cwd.clone())
            .output_limit(0)
            .on_stdout(|b| {
                let _ = std::io::stdout().write_all(b);
                let _ = std::io::stdout().flush();
            })
            .on_stderr(|b| {
                let _ = std::io::stderr().write_all(b);
            });
        let out = session.exec_with(line, opts).await?;
        last = u8::try_from(out.exit_code.clamp(0, 255)).unwrap_or(1);
    }
    Ok(last)
}
