//! The host side of the init's exec channel (the protocol is documented in
//! `agent-sandbox-init/src/exec.rs`).

use std::path::Path;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::Error;

/// What one exec produced.
pub(crate) struct Exited {
    pub(crate) code: i64,
    pub(crate) timed_out: bool,
}

fn put_str(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(&(s.len() as u32).to_be_bytes());
    buf.extend_from_slice(s.as_bytes());
}

fn frame(tag: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(5 + payload.len());
    f.push(tag);
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn io_err(e: std::io::Error) -> Error {
    Error::Engine {
        what: "talk to the sandbox's exec channel".into(),
        reason: e.to_string(),
    }
}

/// Runs `argv` through the channel at `socket`, feeding `stdin`, calling
/// `on_output(is_stderr, bytes)` for every chunk, and killing the process
/// group at `deadline`.
pub(crate) async fn exec(
    socket: &Path,
    argv: &[String],
    env: &[(String, String)],
    cwd: &str,
    stdin: Option<&[u8]>,
    deadline: Option<Instant>,
    mut on_output: impl FnMut(bool, &[u8]),
) -> Result<Exited, Error> {
    let stream = UnixStream::connect(socket).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound
            || e.kind() == std::io::ErrorKind::ConnectionRefused
        {
            Error::SessionClosed
        } else {
            io_err(e)
        }
    })?;
    let (mut r, mut w) = stream.into_split();
    let mut req = Vec::new();
    req.extend_from_slice(&(argv.len() as u32).to_be_bytes());
    for a in argv {
        put_str(&mut req, a);
    }
    req.extend_from_slice(&(env.len() as u32).to_be_bytes());
    for (k, v) in env {
        put_str(&mut req, &format!("{k}={v}"));
    }
    put_str(&mut req, cwd);
    let mut out = frame(b'R', &req);
    if let Some(data) = stdin {
        for chunk in data.chunks(1 << 20) {
            out.extend_from_slice(&frame(b'I', chunk));
        }
    }
    out.extend_from_slice(&frame(b'I', &[]));
    // Stdin is written from its own task so a command that prints before
    // reading cannot deadlock against us.
    let writer = tokio::spawn(async move {
        let _ = w.write_all(&out).await;
        // Keep the write half open until the exec ends: closing it would
        // tell init the host went away.
        std::future::pending::<()>().await;
        drop(w);
    });
    let mut head = [0u8; 5];
    loop {
        let read = async {
            r.read_exact(&mut head).await?;
            let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
            let mut payload = vec![0u8; len];
            r.read_exact(&mut payload).await?;
            Ok::<_, std::io::Error>((head[0], payload))
        };
        let next = match deadline {
            Some(d) => match tokio::time::timeout_at(d.into(), read).await {
                Ok(r) => r,
                Err(_) => {
                    // Hanging up makes init SIGKILL the command's process group.
                    writer.abort();
                    return Ok(Exited {
                        code: 137,
                        timed_out: true,
                    });
                }
            },
            None => read.await,
        };
        let (tag, payload) = next.map_err(|_| Error::SessionClosed)?;
        match tag {
            b'O' => on_output(false, &payload),
            b'E' | b'F' => on_output(true, &payload),
            b'X' if payload.len() == 4 => {
                writer.abort();
                let code = i32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
                return Ok(Exited {
                    code: i64::from(code),
                    timed_out: false,
                });
            }
            _ => {}
        }
    }
}

/// How long to wait for a new session's init to open its exec socket.
pub(crate) const READY_TIMEOUT: Duration = Duration::from_secs(20);
