//! The exec channel of a session: over a unix socket the host listens on
//! (bind-mounted read-only, beside the proxy socket), the host asks for a
//! command, streams its stdin, and gets stdout, stderr and the exit code
//! back. Much faster than `docker exec` (no engine round trips). See
//! `connect` for how connections are set up.
//!
//! The frames and the request are defined in `wire` (shared with the host).
//! If the host hangs up, the command's process group gets SIGKILL.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

use crate::wire::{self, tag, Request};

/// Held while spawning: PID 1 reaps only when no spawn is in flight.
pub static SPAWN_LOCK: Mutex<()> = Mutex::new(());

/// Exit statuses collected by PID 1's reaper, for the exec threads to pick up.
pub struct Reaped {
    statuses: Mutex<HashMap<i32, i32>>,
    changed: Condvar,
}

impl Reaped {
    pub fn new() -> Arc<Reaped> {
        Arc::new(Reaped {
            statuses: Mutex::new(HashMap::new()),
            changed: Condvar::new(),
        })
    }

    /// Records a reaped child (orphans included; they are few and tiny).
    pub fn record(&self, pid: i32, status: i32) {
        if let Ok(mut s) = self.statuses.lock() {
            s.insert(pid, status);
            self.changed.notify_all();
        }
    }

    fn wait_for(&self, pid: i32) -> i32 {
        let Ok(mut s) = self.statuses.lock() else {
            return 0x7f00;
        };
        loop {
            if let Some(status) = s.remove(&pid) {
                return status;
            }
            s = match self.changed.wait(s) {
                Ok(g) => g,
                Err(_) => return 0x7f00,
            };
        }
    }
}

fn write_frame(w: &Mutex<UnixStream>, tag: u8, payload: &[u8]) -> io::Result<()> {
    let mut w = w.lock().map_err(|_| io::Error::other("poisoned"))?;
    wire::write_frame(&mut *w, tag, payload)
}

fn read_frame(r: &mut impl Read) -> io::Result<(u8, Vec<u8>)> {
    wire::read_frame(r, wire::MAX_FRAME_TO_INIT)
}

extern "C" {
    fn poll(fds: *mut PollFd, nfds: u64, timeout: i32) -> i32;
}

#[repr(C)]
struct PollFd {
    fd: i32,
    events: i16,
    revents: i16,
}

/// How long a pipe may stay quiet after the command exited before its pump
/// stops (a background process may keep it open), and how long output may
/// keep coming after the exit at most.
const QUIET_AFTER_EXIT: Duration = Duration::from_millis(100);
const MAX_AFTER_EXIT: Duration = Duration::from_secs(5);
/// Stdin frames (the host sends up to 1 MiB each) read ahead of a command
/// that has not read them yet; past this, the reader waits.
const STDIN_AHEAD: usize = 16;

/// Forwards a pipe until EOF, or, once the command has exited (`exited`
/// holds the moment), until the pipe has been quiet for a moment. The pump
/// itself decides, after it has written everything it read, so the exit
/// frame that follows can never overtake output (a host under load once
/// lost an exec's whole output to a fixed grace period).
fn pump_output(
    mut from: impl Read + std::os::fd::AsRawFd,
    to: Arc<Mutex<UnixStream>>,
    tag: u8,
    exited: Arc<Mutex<Option<std::time::Instant>>>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    let fd = from.as_raw_fd();
    loop {
        let mut p = PollFd {
            fd,
            events: 1, // POLLIN
            revents: 0,
        };
        // Whether the command had exited before this poll began: then all
        // it wrote was in the pipe already and a quiet poll means done. Read
        // after the poll instead, a command that wrote and exited while this
        // thread waited between the poll's timeout and the check lost its
        // output (an exec under gVisor with 50 sandboxes starting returned
        // exit 0 and no stdout).
        let exited_before = exited.lock().ok().and_then(|e| *e).is_some();
        let ready = unsafe { poll(&mut p, 1, QUIET_AFTER_EXIT.as_millis() as i32) };
        if ready == 0 {
            if exited_before {
                return; // quiet after the exit: done
            }
            continue;
        }
        if ready < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        match from.read(&mut buf) {
            Ok(n) if n > 0 => {
                if write_frame(&to, tag, &buf[..n]).is_err() {
                    return;
                }
            }
            _ => return,
        }
        let since = exited.lock().ok().and_then(|e| *e);
        if since.is_some_and(|t| t.elapsed() > MAX_AFTER_EXIT) {
            return; // a background process that never stops writing
        }
    }
}

/// Reads the host's side to its end before closing: closing with unread
/// input makes the kernel send a reset, which can destroy the reply frames
/// the host has not read yet.
fn drain(mut reader: UnixStream) -> io::Result<()> {
    reader.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut sink = [0u8; 4096];
    while matches!(reader.read(&mut sink), Ok(n) if n > 0) {}
    Ok(())
}

/// An exposed port: connects to `port` on the sandbox's loopback (IPv4,
/// then IPv6) for the host and splices the two until either side ends.
/// Only the host opens these (it asked for the connection this came on).
fn forward(
    mut from_host: UnixStream,
    writer: &Mutex<UnixStream>,
    payload: &[u8],
) -> io::Result<()> {
    let port = match payload {
        [a, b] => u16::from_be_bytes([*a, *b]),
        _ => return write_frame(writer, tag::FAILURE, b"malformed forward request"),
    };
    let local = [
        std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)),
    ];
    // A server that is still starting gets about a second.
    let mut tries = 0;
    let mut tcp = loop {
        match std::net::TcpStream::connect(&local[..]) {
            Ok(t) => break t,
            Err(_) if tries < 10 => {
                tries += 1;
                thread::sleep(Duration::from_millis(100));
            }
            Err(e) => {
                let text =
                    format!("nothing in the sandbox accepts connections on port {port}: {e}");
                return write_frame(writer, tag::FAILURE, text.as_bytes());
            }
        }
    };
    write_frame(writer, tag::FORWARD, &[])?;
    let mut to_host = writer
        .lock()
        .map_err(|_| io::Error::other("poisoned"))?
        .try_clone()?;
    let mut tcp_in = tcp.try_clone()?;
    let back = thread::Builder::new().spawn(move || {
        let _ = io::copy(&mut tcp_in, &mut to_host);
        let _ = to_host.shutdown(std::net::Shutdown::Write);
    })?;
    let _ = io::copy(&mut from_host, &mut tcp);
    let _ = tcp.shutdown(std::net::Shutdown::Write);
    let _ = back.join();
    Ok(())
}

fn serve_one(conn: UnixStream, reaped: Arc<Reaped>) -> io::Result<()> {
    let mut reader = conn.try_clone()?;
    let writer = Arc::new(Mutex::new(conn));
    let (tag, payload) = read_frame(&mut reader)?;
    if tag == tag::FORWARD {
        return forward(reader, &writer, &payload);
    }
    let Some(req) = (tag == tag::REQUEST)
        .then(|| Request::decode(&payload))
        .flatten()
    else {
        write_frame(&writer, tag::FAILURE, b"malformed exec request")?;
        write_frame(&writer, tag::EXIT, &125i32.to_be_bytes())?;
        return drain(reader);
    };
    let ooms_before = oom_kills();
    let spawning = SPAWN_LOCK.lock();
    let spawned = Command::new(&req.argv[0])
        .args(&req.argv[1..])
        .envs(req.env)
        .current_dir(&req.cwd)
        .process_group(0)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    drop(spawning);
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            let code: i32 = if e.kind() == io::ErrorKind::NotFound {
                127
            } else {
                126
            };
            write_frame(
                &writer,
                tag::FAILURE,
                format!("cannot run {:?} in {:?}: {e}", req.argv[0], req.cwd).as_bytes(),
            )?;
            write_frame(&writer, tag::EXIT, &code.to_be_bytes())?;
            return drain(reader);
        }
    };
    let pid = child.id() as i32;
    // Threads can run out (the pids limit counts them): the command is then
    // killed and the host told why, and init goes on serving.
    let no_thread = |e: io::Error| -> io::Result<()> {
        crate::signal_group(pid, 9);
        let _ = write_frame(
            &writer,
            tag::FAILURE,
            format!("agent-sandbox-init: cannot start a thread for this exec (the sandbox's process limit?): {e}").as_bytes(),
        );
        write_frame(&writer, tag::EXIT, &125i32.to_be_bytes())
    };
    let (pumped, pumps_done) = std::sync::mpsc::channel::<()>();
    let mut pumps = 0;
    let exited = Arc::new(Mutex::new(None));
    let pipes = [
        (
            child.stdout.take().map(std::os::fd::OwnedFd::from),
            tag::STDOUT,
        ),
        (
            child.stderr.take().map(std::os::fd::OwnedFd::from),
            tag::STDERR,
        ),
    ];
    for (pipe, tag) in pipes {
        let Some(pipe) = pipe else { continue };
        let (w, done, exited) = (writer.clone(), pumped.clone(), exited.clone());
        pumps += 1;
        if let Err(e) = thread::Builder::new().spawn(move || {
            pump_output(std::fs::File::from(pipe), w, tag, exited);
            let _ = done.send(());
        }) {
            return no_thread(e);
        }
    }
    // Stdin is written by its own thread, up to STDIN_AHEAD frames behind
    // the reader: a command that does not read its input must not hold up
    // the signal and hang-up frames queued after it.
    let mut stdin = match child.stdin.take() {
        Some(mut pipe) => {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(STDIN_AHEAD);
            if let Err(e) = thread::Builder::new().spawn(move || {
                for data in rx {
                    if pipe.write_all(&data).is_err() {
                        return;
                    }
                }
            }) {
                return no_thread(e);
            }
            Some(tx)
        }
        None => None,
    };
    let done = Arc::new(AtomicBool::new(false));
    let done_r = done.clone();
    let feeder = thread::Builder::new().spawn(move || {
        loop {
            match read_frame(&mut reader) {
                // Dropping the sender ends the writer, which closes the pipe.
                Ok((tag::STDIN, data)) if data.is_empty() => stdin = None,
                Ok((tag::STDIN, data)) => {
                    if stdin.as_ref().is_some_and(|s| s.send(data).is_err()) {
                        stdin = None;
                    }
                }
                Ok((tag::SIGNAL, sig)) if sig.len() == 4 => {
                    let sig = i32::from_be_bytes([sig[0], sig[1], sig[2], sig[3]]);
                    crate::signal_group(pid, sig);
                }
                Ok(_) => {}
                Err(_) => {
                    // The host hung up before the command ended (a timeout, or
                    // the caller is gone): stop it. After a normal exit,
                    // background processes it started live on.
                    if !done_r.load(Ordering::SeqCst) {
                        crate::signal_group(pid, 9);
                    }
                    return;
                }
            }
        }
    });
    if let Err(e) = feeder {
        return no_thread(e);
    }
    let status = reaped.wait_for(pid);
    done.store(true, Ordering::SeqCst);
    if let Ok(mut e) = exited.lock() {
        *e = Some(std::time::Instant::now());
    }
    // The pumps forward what is still in the pipes and stop once they are
    // quiet (see `pump_output`); the exit frame waits for them.
    for _ in 0..pumps {
        if pumps_done
            .recv_timeout(MAX_AFTER_EXIT + Duration::from_secs(1))
            .is_err()
        {
            break;
        }
    }
    // Killed by SIGKILL while the cgroup's OOM-kill count went up: the
    // memory limit did it (concurrent execs could blur this; rare).
    if status & 0x7f == 9 && oom_kills() > ooms_before {
        write_frame(&writer, tag::OOM, &[])?;
    }
    write_frame(
        &writer,
        tag::EXIT,
        &i32::from(crate::exit_code(status)).to_be_bytes(),
    )
}

/// The container's OOM-kill count (cgroup v1 `memory.oom_control`, v2
/// `memory.events`); 0 if neither is readable.
fn oom_kills() -> u64 {
    [
        "/sys/fs/cgroup/memory/memory.oom_control",
        "/sys/fs/cgroup/memory.events",
    ]
    .iter()
    .filter_map(|p| std::fs::read_to_string(p).ok())
    .find_map(|text| {
        text.lines()
            .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
    })
    .unwrap_or(0)
}

/// Connects to the host's exec socket at `path` for control (`C`), then
/// for every `N id` the host sends, opens a new connection, says `A id`,
/// and serves one exec on it; `T` ends the whole sandbox at once (a pool
/// retiring a used container). The host listens, so the container needs no
/// writable host directory.
pub fn connect(path: PathBuf, reaped: Arc<Reaped>) -> io::Result<()> {
    let mut control = None;
    let mut last = None;
    for _ in 0..500 {
        match UnixStream::connect(&path) {
            Ok(c) => {
                control = Some(c);
                break;
            }
            Err(e) => last = Some(e),
        }
        thread::sleep(Duration::from_millis(10));
    }
    let mut control =
        control.ok_or_else(|| last.unwrap_or_else(|| io::Error::other("no exec socket")))?;
    wire::write_frame(&mut control, tag::CONNECTED, &[])?;
    thread::Builder::new().spawn(move || {
        while let Ok((tag, id)) = read_frame(&mut control) {
            if tag == tag::TERMINATE {
                crate::end_all();
            }
            if tag == tag::PORTS {
                crate::net::set_ports(wire::decode_ports(&id));
                continue;
            }
            if tag != tag::NEW || id.len() != 8 {
                continue;
            }
            let Ok(mut conn) = UnixStream::connect(&path) else {
                continue;
            };
            if wire::write_frame(&mut conn, tag::ACCEPT, &id).is_err() {
                continue;
            }
            let reaped = reaped.clone();
            let mut spare = conn.try_clone().ok();
            if let Err(e) = thread::Builder::new().spawn(move || {
                let _ = serve_one(conn, reaped);
            }) {
                // No thread for it: refuse this exec, keep serving.
                if let Some(c) = spare.as_mut() {
                    let text = format!("agent-sandbox-init: cannot start a thread for this exec (the sandbox's process limit?): {e}");
                    let _ = wire::write_frame(c, tag::FAILURE, text.as_bytes());
                    let _ = wire::write_frame(c, tag::EXIT, &125i32.to_be_bytes());
                }
            }
        }
    })?;
    Ok(())
}
