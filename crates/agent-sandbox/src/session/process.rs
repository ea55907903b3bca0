//! Background processes of a session: a command that runs while others
//! exec, with its output kept (the newest `output_limit` bytes) for
//! readers that come and go, through the same channel as an exec.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{mpsc, watch};

use crate::command::Output;
use crate::Error;

/// Which of a process's pipes a [`Chunk`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pipe {
    /// Standard output.
    Stdout,
    /// Standard error (and init's word when the command could not start).
    Stderr,
}

impl Pipe {
    /// `"stdout"` or `"stderr"`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Pipe::Stdout => "stdout",
            Pipe::Stderr => "stderr",
        }
    }
}

/// A piece of a background process's output, in the order it came.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// The pipe.
    pub pipe: Pipe,
    /// The bytes.
    pub data: Vec<u8>,
}

/// New output since the last [`Process::take_output`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewOutput {
    /// Standard output.
    pub stdout: Vec<u8>,
    /// Standard error.
    pub stderr: Vec<u8>,
    /// Bytes that were dropped before they were taken (the process wrote
    /// more than the output limit in between).
    pub dropped: u64,
    /// The exit code, once the process has ended.
    pub exit_code: Option<i64>,
}

/// A background process started with [`Session::spawn`](super::Session::spawn).
/// Cheap to clone. Dropping the handle does not stop the process: it ends
/// with [`kill`](Process::kill), its own exit, its timeout, or the session.
#[derive(Clone)]
pub struct Process {
    pub(super) inner: Arc<ProcInner>,
}

pub(super) struct ProcInner {
    id: String,
    command: Vec<String>,
    started: Instant,
    state: Mutex<State>,
    /// Bumped on every change (output, end): readers wait on it.
    changed: watch::Sender<u64>,
    signals: mpsc::UnboundedSender<i32>,
}

struct State {
    /// `(sequence number of the first byte, pipe, bytes)`, oldest first.
    chunks: VecDeque<(u64, Pipe, Vec<u8>)>,
    /// Bytes held in `chunks`, at most `limit` (past it the oldest go).
    held: usize,
    limit: usize,
    /// Sequence number of the next byte to arrive.
    next: u64,
    /// Where `take_output` goes on from.
    taken: u64,
    /// The result once the command ended (`None` inside: the session
    /// ended first).
    ended: Option<Option<Output>>,
}

impl std::fmt::Debug for Process {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Process")
            .field("id", &self.inner.id)
            .field("command", &self.inner.command)
            .field("exit_code", &self.exit_code())
            .finish_non_exhaustive()
    }
}

impl Process {
    pub(super) fn new(
        id: String,
        command: Vec<String>,
        limit: usize,
        signals: mpsc::UnboundedSender<i32>,
    ) -> Process {
        Process {
            inner: Arc::new(ProcInner {
                id,
                command,
                started: Instant::now(),
                state: Mutex::new(State {
                    chunks: VecDeque::new(),
                    held: 0,
                    limit: limit.max(1),
                    next: 0,
                    taken: 0,
                    ended: None,
                }),
                changed: watch::channel(0).0,
                signals,
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn bump(&self) {
        self.inner.changed.send_modify(|v| *v += 1);
    }

    /// Adds output (from the exec's reader).
    pub(super) fn push(&self, pipe: Pipe, data: &[u8]) {
        {
            let mut s = self.state();
            let at = s.next;
            s.next += data.len() as u64;
            s.held += data.len();
            s.chunks.push_back((at, pipe, data.to_vec()));
            while s.held > s.limit && s.chunks.len() > 1 {
                if let Some((_, _, old)) = s.chunks.pop_front() {
                    s.held -= old.len();
                }
            }
        }
        self.bump();
    }

    /// Records the end (`None`: the session ended before the command).
    pub(super) fn finish(&self, output: Option<Output>) {
        self.state().ended = Some(output);
        self.bump();
    }

    /// The process's id in its session (`p1`, `p2`, ...).
    #[must_use]
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// The command as it runs (`/bin/sh -c ...` for a string).
    #[must_use]
    pub fn command(&self) -> &[String] {
        &self.inner.command
    }

    /// How long ago it started.
    #[must_use]
    pub fn elapsed(&self) -> std::time::Duration {
        self.inner.started.elapsed()
    }

    /// Whether it is still running.
    #[must_use]
    pub fn is_running(&self) -> bool {
        self.state().ended.is_none()
    }

    /// The exit code once it has ended (128 + signal if a signal ended it;
    /// `None` while it runs, or if the session ended first).
    #[must_use]
    pub fn exit_code(&self) -> Option<i64> {
        match &self.state().ended {
            Some(Some(o)) => Some(o.exit_code),
            _ => None,
        }
    }

    /// Sends `signal` to the process's group (every process it started).
    /// Nothing happens once it has ended.
    pub fn signal(&self, signal: i32) {
        let _ = self.inner.signals.send(signal);
    }

    /// Output bytes this handle holds (the ring and the final result).
    fn kept_bytes(&self) -> usize {
        self.inner.state.lock().map_or(0, |st| {
            let result = match &st.ended {
                Some(Some(o)) => o.stdout.len() + o.stderr.len(),
                _ => 0,
            };
            st.held + result
        })
    }

    /// Kills the process's group (SIGKILL). [`wait`](Process::wait) then
    /// returns with exit code 137.
    pub fn kill(&self) {
        self.signal(9);
    }

    /// The output kept so far, from the oldest byte still held, as chunks
    /// in order, and the cursor to pass to [`next_chunk`](Process::next_chunk)
    /// to go on from there.
    #[must_use]
    pub fn chunks(&self) -> (Vec<Chunk>, u64) {
        let s = self.state();
        let chunks = s
            .chunks
            .iter()
            .map(|(_, pipe, data)| Chunk {
                pipe: *pipe,
                data: data.clone(),
            })
            .collect();
        (chunks, s.next)
    }

    /// The next chunk at or after `cursor` (0 = the oldest held), waiting
    /// for one; `None` once the process has ended and everything was read.
    /// `cursor` moves past the chunk returned; output dropped before it
    /// was read (more than the output limit behind) is skipped.
    pub async fn next_chunk(&self, cursor: &mut u64) -> Option<Chunk> {
        // Subscribed before the first look: a change after it wakes us.
        let mut changed = self.inner.changed.subscribe();
        loop {
            {
                let s = self.state();
                let found = s
                    .chunks
                    .iter()
                    .find(|(at, _, data)| at + data.len() as u64 > *cursor);
                if let Some((at, pipe, data)) = found {
                    let skip = cursor.saturating_sub(*at) as usize;
                    *cursor = at + data.len() as u64;
                    return Some(Chunk {
                        pipe: *pipe,
                        data: data[skip..].to_vec(),
                    });
                }
                if s.ended.is_some() {
                    return None;
                }
            }
            if changed.changed().await.is_err() {
                return None;
            }
        }
    }

    /// Output that arrived since the last call (for polling readers such
    /// as a model's `process_output` tool), and the exit code if it ended.
    #[must_use]
    pub fn take_output(&self) -> NewOutput {
        let mut s = self.state();
        let mut new = NewOutput::default();
        let first = s.chunks.front().map_or(s.next, |(at, _, _)| *at);
        new.dropped = first.saturating_sub(s.taken);
        for (at, pipe, data) in &s.chunks {
            let end = at + data.len() as u64;
            if end <= s.taken {
                continue;
            }
            let skip = s.taken.saturating_sub(*at) as usize;
            match pipe {
                Pipe::Stdout => new.stdout.extend_from_slice(&data[skip..]),
                Pipe::Stderr => new.stderr.extend_from_slice(&data[skip..]),
            }
        }
        s.taken = s.next;
        if let Some(Some(o)) = &s.ended {
            new.exit_code = Some(o.exit_code);
        }
        new
    }

    /// Waits for the process to end. Its `Output` holds the output still
    /// kept (`stdout_truncated`/`stderr_truncated` when older output was
    /// dropped) and the network events of its lifetime.
    ///
    /// # Errors
    /// [`Error::SessionClosed`] if the session ended first.
    pub async fn wait(&self) -> Result<Output, Error> {
        // Subscribed before the first look: a change after it wakes us.
        let mut changed = self.inner.changed.subscribe();
        loop {
            if let Some(ended) = &self.state().ended {
                return ended.clone().ok_or(Error::SessionClosed);
            }
            if changed.changed().await.is_err() {
                return Err(Error::SessionClosed);
            }
        }
    }

    /// What was kept, as the two captures of an `Output` (`limit` each).
    pub(super) fn captures(&self) -> (crate::command::Capture, crate::command::Capture) {
        let s = self.state();
        let mut out = crate::command::Capture::new(s.limit);
        let mut err = crate::command::Capture::new(s.limit);
        let dropped = s.chunks.front().is_some_and(|(at, _, _)| *at > 0);
        for (_, pipe, data) in &s.chunks {
            match pipe {
                Pipe::Stdout => out.push(data),
                Pipe::Stderr => err.push(data),
            }
        }
        out.truncated |= dropped;
        err.truncated |= dropped;
        (out, err)
    }
}

/// Finished processes a session keeps listing (the oldest go first).
const KEEP_FINISHED: usize = 64;
const KEEP_FINISHED_BYTES: usize = 64 << 20;

impl super::Session {
    /// Starts a command in the background and returns at once (a dev
    /// server, a watcher, a long build). Its output is kept for
    /// [`Process::next_chunk`], [`Process::take_output`] and
    /// [`Process::wait`] (the newest `output_limit` bytes) and goes to the
    /// options' `on_stdout`/`on_stderr` callbacks as it comes. The options'
    /// `timeout` applies if given; the session's default timeout does not
    /// (a server runs until it is stopped). While it runs, the session is
    /// not idle. Every process ends with the session.
    ///
    /// # Errors
    /// [`Error::SessionClosed`], [`Error::InvalidArgument`].
    pub async fn spawn(
        &self,
        cmd: impl Into<crate::Command>,
        opts: crate::ExecOptions,
    ) -> Result<Process, Error> {
        let _busy = self.busy()?;
        let argv = cmd.into().into_argv()?;
        let cwd = super::workdir(opts.workdir.as_deref())?;
        let inner = &self.inner;
        let s = &inner.launched.config.s;
        let limit = opts.output_limit.map_or(s.output_limit, |l| l.as_usize());
        let deadline = opts.timeout.and_then(|t| Instant::now().checked_add(t.0));
        let n = inner
            .next_process
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let (signals, signalled) = mpsc::unbounded_channel();
        let process = Process::new(format!("p{n}"), argv.clone(), limit, signals);
        let request = agent_sandbox_wire::Request {
            argv,
            env: opts.env_pairs(),
            cwd,
        };
        let stream = inner.hub.open().await?;
        let mark = inner.launched.events.mark();
        inner
            .active
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let session = Arc::downgrade(inner);
        let p = process.clone();
        tokio::spawn(async move {
            let (on_out, on_err) = (opts.on_stdout.clone(), opts.on_stderr.clone());
            let ended = super::channel::exec(
                stream,
                &request,
                opts.stdin.as_deref(),
                deadline,
                Some(signalled),
                |is_err, bytes| {
                    let (pipe, cb) = if is_err {
                        (Pipe::Stderr, &on_err)
                    } else {
                        (Pipe::Stdout, &on_out)
                    };
                    if let Some(cb) = cb {
                        cb(bytes);
                    }
                    p.push(pipe, bytes);
                },
            )
            .await;
            let Some(inner) = session.upgrade() else {
                p.finish(None);
                return;
            };
            let output = ended.ok().map(|ended| {
                Output::new(
                    ended,
                    p.captures(),
                    inner.launched.events.since(mark),
                    inner.sweep_setid(),
                    inner.launched.id.clone(),
                    p.elapsed(),
                )
            });
            p.finish(output);
            if let Ok(mut t) = inner.last_used.lock() {
                *t = Instant::now();
            }
            inner
                .active
                .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        });
        if let Ok(mut list) = inner.processes.lock() {
            list.push(process.clone());
            // Ended processes the session keeps, oldest dropped first: at
            // most KEEP_FINISHED, holding at most KEEP_FINISHED_BYTES of output.
            loop {
                let ended = list.iter().filter(|p| !p.is_running());
                let (n, bytes) = ended.fold((0, 0), |(n, b), p| (n + 1, b + p.kept_bytes()));
                if n <= KEEP_FINISHED && bytes <= KEEP_FINISHED_BYTES {
                    break;
                }
                match list.iter().position(|p| !p.is_running()) {
                    Some(i) => list.remove(i),
                    None => break,
                };
            }
        }
        Ok(process)
    }

    /// The session's background processes: every running one and the
    /// latest finished ones, oldest first.
    #[must_use]
    pub fn processes(&self) -> Vec<Process> {
        self.inner
            .processes
            .lock()
            .map(|l| l.clone())
            .unwrap_or_default()
    }

    /// The background process with this id, if the session still lists it.
    #[must_use]
    pub fn process(&self, id: &str) -> Option<Process> {
        self.processes().into_iter().find(|p| p.id() == id)
    }
}
