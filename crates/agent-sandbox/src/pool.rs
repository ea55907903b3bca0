//! Pools: one-shot runs without waiting for the engine to start a container.
//!
//! A [`Pool`] keeps `size` sandboxes started ahead of time. Each
//! [`Pool::run`] takes one, runs the command in it through init's exec
//! channel, then ends it: init kills every process in the container and
//! exits, and the container is removed in the background. The next run gets
//! a fresh container, already started while this one ran. So a run is as
//! isolated as [`SandboxBuilder::run`](crate::SandboxBuilder::run) (a new
//! container, a new proxy, clean tmpfs, nothing left running) but costs an
//! exec instead of a container start.
//!
//! ```no_run
//! # async fn demo() -> Result<(), agent_sandbox::Error> {
//! use agent_sandbox::{ExecOptions, Sandbox};
//!
//! let pool = Sandbox::builder().workspace("./repo").allow("pypi.org").pool(2).await?;
//! let out = pool.run("pytest -q").await?;
//! let out = pool.run_with("make", ExecOptions::new().env("CI", "1")).await?;
//! pool.close().await?;
//! # Ok(())
//! # }
//! ```

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::task::JoinHandle;

use crate::config::Config;
use crate::options::ExecOptions;
use crate::{Command, Error, Output, Session};

/// What a bind-mounted host directory was when a spare started: a run
/// checks it again, so a workspace replaced in the meantime (deleted and
/// recreated, or swapped for a symlink) never gets the old directory.
/// `None` (the path did not resolve) never matches anything.
#[derive(Debug, PartialEq, Eq)]
struct Source(Option<(PathBuf, u64, u64)>);

fn sources(config: &Config) -> Vec<Source> {
    config
        .bind_sources()
        .iter()
        .map(|p| Source(crate::workspace::identity(p)))
        .collect()
}

fn unchanged(then: &[Source], now: &[Source]) -> bool {
    then.len() == now.len() && then.iter().zip(now).all(|(a, b)| a.0.is_some() && a == b)
}

/// A started sandbox waiting for its one command.
struct Spare {
    session: Session,
    sources: Vec<Source>,
}

async fn start_spare(config: Config) -> Result<Spare, Error> {
    // Recorded before the engine binds them: a change after this point,
    // even one made while the container starts, shows up at `take`.
    let sources = sources(&config);
    let session = Session::start(config).await?;
    Ok(Spare { session, sources })
}

/// Sandboxes started ahead of time for one-shot runs; see the module docs.
/// Cheap to clone (clones share the pool). [`close`](Pool::close) or
/// dropping the last clone removes the spares.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    size: usize,
    spares: Mutex<VecDeque<JoinHandle<Result<Spare, Error>>>>,
    /// Removals of used containers still in flight.
    retiring: Mutex<Vec<JoinHandle<()>>>,
    closed: AtomicBool,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("size", &self.inner.size)
            .field("closed", &self.inner.closed.load(Ordering::SeqCst))
            .finish_non_exhaustive()
    }
}

impl Pool {
    /// Starts all `size` spares at once and returns when they are ready, so
    /// a bad rule, a missing workspace or an absent engine fails here, and
    /// the first `size` runs find a sandbox waiting.
    pub(crate) async fn new(mut config: Config, size: usize) -> Result<Pool, Error> {
        if size == 0 {
            return Err(Error::InvalidArgument {
                what: "pool size".into(),
                reason: "must be at least 1".into(),
            });
        }
        // Spares live as long as the pool, not an idle timeout.
        config.s.idle_timeout = None;
        let starting: Vec<_> = (0..size)
            .map(|_| tokio::spawn(start_spare(config.clone())))
            .collect();
        let mut spares = VecDeque::with_capacity(size);
        let mut failed = None;
        for task in starting {
            match task.await {
                Ok(Ok(spare)) => spares.push_back(tokio::spawn(async move { Ok(spare) })),
                Ok(Err(e)) => failed = failed.or(Some(e)),
                Err(e) => {
                    failed = failed.or(Some(Error::engine("start a pool sandbox", e.to_string())))
                }
            }
        }
        if let Some(e) = failed {
            for task in spares {
                if let Ok(Ok(spare)) = task.await {
                    let _ = spare.session.close().await;
                }
            }
            return Err(e);
        }
        Ok(Pool {
            inner: Arc::new(Inner {
                config,
                size,
                spares: Mutex::new(spares),
                retiring: Mutex::new(Vec::new()),
                closed: AtomicBool::new(false),
            }),
        })
    }

    /// How many sandboxes the pool keeps started.
    #[must_use]
    pub fn size(&self) -> usize {
        self.inner.size
    }

    /// Runs `cmd` (a string through `/bin/sh -c`, a list as given) in a
    /// fresh sandbox from the pool, with the builder's timeout, output limit,
    /// callbacks and cancel token, and ends that sandbox afterwards: every
    /// process it started is gone when this returns. Several runs may go at
    /// once; beyond the pool's size they wait for a container to start.
    ///
    /// # Errors
    /// [`Error::PoolClosed`], [`Error::Cancelled`], and what starting a
    /// sandbox can fail with ([`Error::DockerUnavailable`], [`Error::Engine`],
    /// [`Error::Workspace`], ...). A non-zero exit or a timeout is not an error.
    pub async fn run(&self, cmd: impl Into<Command>) -> Result<Output, Error> {
        self.run_with(cmd, ExecOptions::new()).await
    }

    /// [`run`](Pool::run) with per-run options (environment, working
    /// directory, stdin, timeout, output limit, callbacks); what they leave
    /// unset comes from the builder.
    ///
    /// # Errors
    /// As [`run`](Pool::run), and [`Error::InvalidArgument`] for a working
    /// directory outside `/workspace`.
    pub async fn run_with(&self, cmd: impl Into<Command>, o: ExecOptions) -> Result<Output, Error> {
        let mut opts = o;
        let started = Instant::now();
        let argv = cmd.into().into_argv()?;
        let spare = self.take().await?;
        let s = &self.inner.config.s;
        opts.on_stdout = opts.on_stdout.or(s.on_stdout.clone());
        opts.on_stderr = opts.on_stderr.or(s.on_stderr.clone());
        let cancel = s.cancel.clone();
        let session = spare.session;
        let result = tokio::select! {
            // A session error here means the container died under the run.
            r = session.exec_with(Command::Argv(argv), opts) => r.map_err(|e| match e {
                Error::SessionClosed => Error::engine("run a command in a pool sandbox", "the sandbox stopped during the run (killed from outside, or the engine restarted)"),
                e => e,
            }),
            () = async { match &cancel { Some(c) => c.cancelled().await, None => std::future::pending().await } } => Err(Error::Cancelled),
        };
        if let Some(removal) = session.retire().await {
            self.track(removal);
        }
        let mut out = result?;
        out.duration = started.elapsed();
        Ok(out)
    }

    /// The next spare, replaced at once by a new one starting in the
    /// background. A spare whose mounts changed on the host since it
    /// started, or whose container died, is thrown away and a new one
    /// started in its place. Through a gateway, a spare's copy of the
    /// workspace is brought up to date first (see `refresh_workspace`).
    async fn take(&self) -> Result<Spare, Error> {
        let inner = &self.inner;
        let next = {
            let mut spares = inner.spares.lock().map_err(|_| Error::PoolClosed)?;
            if inner.closed.load(Ordering::SeqCst) {
                return Err(Error::PoolClosed);
            }
            let next = spares.pop_front();
            spares.push_back(tokio::spawn(start_spare(inner.config.clone())));
            next
        };
        let spare = match next {
            Some(task) => task
                .await
                .map_err(|e| Error::engine("start a pool sandbox", e.to_string()))?,
            None => start_spare(inner.config.clone()).await,
        };
        let spare = match spare {
            Ok(s) => s,
            // The spare failed (the engine restarted, say): one fresh try,
            // whose error is the caller's.
            Err(_) => start_spare(inner.config.clone()).await?,
        };
        // A spare whose container died while it waited (killed from
        // outside, the engine restarted) is replaced too.
        if spare.session.init_alive()
            && unchanged(&spare.sources, &sources(&inner.config))
            && spare.session.refresh_workspace().await
        {
            return Ok(spare);
        }
        let stale = spare.session;
        self.track(tokio::spawn(async move {
            let _ = stale.close().await;
        }));
        start_spare(inner.config.clone()).await
    }

    /// Keeps a removal in flight, for `close` to wait on.
    fn track(&self, task: JoinHandle<()>) {
        if let Ok(mut r) = self.inner.retiring.lock() {
            r.retain(|t| !t.is_finished());
            r.push(task);
        }
    }

    /// Removes the spares and waits for used containers to be removed.
    /// Idempotent; runs in flight finish first.
    ///
    /// # Errors
    /// [`Error::Engine`] if the engine fails to remove a container.
    pub async fn close(&self) -> Result<(), Error> {
        self.inner.closed.store(true, Ordering::SeqCst);
        let mut result = Ok(());
        for task in drain(&self.inner.spares) {
            if let Ok(Ok(spare)) = task.await {
                if let Err(e) = spare.session.close().await {
                    result = Err(e);
                }
            }
        }
        for task in drain(&self.inner.retiring) {
            let _ = task.await;
        }
        result
    }
}

/// Everything in a locked list, taken out.
fn drain<T>(list: &Mutex<impl IntoIterator<Item = T> + Default>) -> Vec<T> {
    list.lock()
        .map(|mut l| std::mem::take(&mut *l).into_iter().collect())
        .unwrap_or_default()
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Spares still starting are aborted (their guards remove what they
        // created); started ones close as their sessions drop.
        if let Ok(spares) = self.spares.get_mut() {
            for task in spares.drain(..) {
                if task.is_finished() {
                    drop(task);
                } else {
                    task.abort();
                }
            }
        }
    }
}
