//! One-shot runs: launch a sandbox for one command, stream its output,
//! wait under the timeout and the cancel token, remove everything.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::command::{Capture, Ended, Output};
use crate::config::Config;
use crate::launch::{launch, ContainerGuard, Launched, Mode};
use crate::options::ExecOptions;
use crate::runtime::Stream;
use crate::Error;

/// Runs `argv` in a fresh sandbox of `config` with the per-run `opts`, and
/// removes the sandbox however the run ends.
pub(crate) async fn run(
    config: Config,
    argv: Vec<String>,
    opts: ExecOptions,
) -> Result<Output, Error> {
    let started = Instant::now();
    let started_at = std::time::SystemTime::now();
    let cwd = crate::session::workdir(opts.workdir.as_deref())?;
    let mut s = config.s;
    s.env.extend(opts.env_pairs());
    s.timeout = opts.timeout.map(|t| t.0).or(s.timeout);
    s.output_limit = opts.output_limit.map_or(s.output_limit, |l| l.as_usize());
    s.on_stdout = opts.on_stdout.or(s.on_stdout.take());
    s.on_stderr = opts.on_stderr.or(s.on_stderr.take());
    // The per-run options are checked like the sandbox's own.
    let config = s.validate()?;
    let mode = Mode::Run {
        argv,
        cwd: (cwd != "/workspace").then_some(cwd),
        stdin: opts.stdin,
    };
    let launched = launch(config, mode).await?;
    let container = ContainerGuard::create(&launched.engine, &launched.spec).await?;
    let result = supervise(&launched, container.id(), started).await;
    container.remove().await;
    launched.release().await;
    let (ended, captured) = result?;
    if let Some(e) = launched.mount_mismatch(Some(ended.code), Some(&captured.1.head)) {
        return Err(e);
    }
    let setid_stripped = launched.strip_setid(started_at);
    Ok(Output::new(
        ended,
        captured,
        launched.events.all(),
        setid_stripped,
        launched.id.clone(),
        started.elapsed(),
    ))
}

/// Starts the container, streams its output, and waits for it under the
/// timeout and the cancel token.
async fn supervise(
    launched: &Launched,
    id: &str,
    started: Instant,
) -> Result<(Ended, (Capture, Capture)), Error> {
    let (engine, s) = (&launched.engine, &launched.config.s);
    let out = Arc::new(Mutex::new(Capture::new(s.output_limit)));
    let err = Arc::new(Mutex::new(Capture::new(s.output_limit)));
    let (o, e) = (out.clone(), err.clone());
    let (on_out, on_err) = (s.on_stdout.clone(), s.on_stderr.clone());
    let drain = engine
        .start_and_stream(id, move |stream, bytes: Bytes| {
            let (cap, cb) = match stream {
                Stream::Stdout => (&o, &on_out),
                Stream::Stderr => (&e, &on_err),
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
    if let Err(e) = launched.confirm_mounts(id).await {
        drain.abort();
        return Err(e);
    }
    let deadline = s
        .timeout
        .and_then(|t| tokio::time::Instant::from_std(started).checked_add(t));
    let cancel = s.cancel.clone();
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
    let ended = Ended {
        code: exit.code,
        timed_out,
        oom_killed: exit.oom_killed,
    };
    Ok((ended, (take(&out), take(&err))))
}
