//! `agent-sandbox-init`: PID 1 of every sandbox.
//!
//! ```text
//! agent-sandbox-init --port 3128 --socket /.agent-sandbox/net/proxy.sock -- CMD [ARGS...]
//! agent-sandbox-init --port 3128 --socket ... --exec-socket /.agent-sandbox/net/exec.sock
//! ```
//!
//! With `--exec-socket` (a session) it needs no command: it serves exec
//! requests (see `exec.rs`) until the container is stopped.
//!
//! - listens on `127.0.0.1:<port>` inside the container (whose network is
//!   `none`: loopback only) and bridges every connection to the proxy's unix
//!   socket, which is bind-mounted from the host: the proxy is the only way out;
//! - starts the command in its own process group and forwards SIGHUP, SIGINT,
//!   SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2 and SIGWINCH to that group (PID 1 gets no
//!   default signal handling from the kernel, so without this `docker stop`
//!   would wait for its timeout);
//! - answers DNS and captures connections to the names it answered for,
//!   through the same proxy socket (see `net.rs`);
//! - reaps every zombie (orphans are re-parented to PID 1);
//! - exits with the command's exit code, or 128 + the signal that killed it.
//!
//! std only and built statically (the core crate embeds it), so it runs in
//! any Linux image of the same architecture.
// The few libc calls std does not wrap (signal, kill, waitpid) are declared here.
#![allow(unsafe_code)]

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::thread;

mod dns;
mod exec;
mod gateway;
mod net;
// The host's half of the contract (encoding requests, writing these
// arguments) is unused here.
#[allow(dead_code)]
mod wire;

use wire::{InitArgs, MountCheck, MOUNT_MISMATCH_EXIT, MOUNT_MISMATCH_TEXT};

extern "C" {
    fn sigaction(signum: i32, act: *const SigAction, old: *mut SigAction) -> i32;
    fn prctl(option: i32, arg2: u64, arg3: u64, arg4: u64, arg5: u64) -> i32;
    fn kill(pid: i32, sig: i32) -> i32;
    fn waitpid(pid: i32, status: *mut i32, options: i32) -> i32;
    fn waitid(idtype: i32, id: u32, infop: *mut u8, options: i32) -> i32;
    fn getrlimit(resource: i32, rlim: *mut [u64; 2]) -> i32;
    fn setrlimit(resource: i32, rlim: *const [u64; 2]) -> i32;
}

/// Raises the soft open-files limit to the hard one: init holds a
/// listener per name and capture port, and a descriptor per connection.
fn raise_fd_limit() {
    const RLIMIT_NOFILE: i32 = 7;
    let mut lim = [0u64; 2];
    unsafe {
        if getrlimit(RLIMIT_NOFILE, &mut lim) == 0 && lim[0] < lim[1] {
            lim[0] = lim[1];
            setrlimit(RLIMIT_NOFILE, &lim);
        }
    }
}

const FORWARDED: [i32; 7] = [1, 2, 3, 10, 12, 15, 28];
/// The command's process group id (its pid), once started.
static CHILD: AtomicI32 = AtomicI32::new(0);
/// Set when the engine sent a stopping signal: a session's pause child that
/// dies then is not replaced, and init exits.
static STOPPING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Linux's `struct sigaction` (glibc and musl agree on it).
#[repr(C)]
struct SigAction {
    handler: usize,
    mask: [u64; 16],
    flags: i32,
    restorer: usize,
}

const SA_SIGINFO: i32 = 4;
const SA_RESTART: i32 = 0x1000_0000;
const PR_SET_DUMPABLE: i32 = 4;

/// Forwards a signal to the command's group, but only one sent from outside
/// the sandbox (the engine: `docker stop`, `docker kill -s`). A sender in
/// the parent pid namespace shows up with pid 0; a process inside the
/// sandbox has its own pid there, and its `kill -TERM 1` is ignored, so it
/// cannot end a session.
extern "C" fn forward(sig: i32, info: *const u8, _ctx: *const u8) {
    // siginfo_t: si_signo, si_errno, si_code (i32 each), padding on 64-bit,
    // then si_pid at byte 16 for signals sent by kill(2). Only kill(2)'s
    // own codes count (SI_USER 0, SI_KERNEL 0x80): rt_sigqueueinfo lets a
    // sender write any si_pid, 0 included, but not these codes.
    if info.is_null() {
        return;
    }
    let (code, sender) = unsafe {
        (
            std::ptr::read_unaligned(info.add(8).cast::<i32>()),
            std::ptr::read_unaligned(info.add(16).cast::<i32>()),
        )
    };
    if !(code == 0 || code == 0x80) || sender != 0 {
        return;
    }
    if matches!(sig, 1 | 2 | 3 | 15) {
        STOPPING.store(true, Ordering::SeqCst);
    }
    let pid = CHILD.load(Ordering::SeqCst);
    if pid > 0 {
        // kill(2) is async-signal-safe; a negative pid targets the group.
        unsafe {
            kill(-pid, sig);
        }
    }
}

/// Compares every expected mount with what is mounted, before anything
/// else runs: the host checked a directory and opened it, but the engine
/// mounts by path, so a component swapped in between (another sandbox
/// renaming or symlinking a parent) would mount something else.
fn check_mounts(mounts: &[MountCheck]) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    for MountCheck { target, dev, ino } in mounts {
        match std::fs::metadata(target) {
            Ok(m) if (m.dev(), m.ino()) == (*dev, *ino) => {}
            Ok(m) => {
                return Err(format!(
                    "{} is not the directory the host checked (device:inode {}:{} mounted, {dev}:{ino} expected); the path was changed while the sandbox started",
                    target.display(),
                    m.dev(),
                    m.ino()
                ))
            }
            Err(e) => return Err(format!("{}: {e}", target.display())),
        }
    }
    Ok(())
}

/// Ends the sandbox at once: SIGKILL to every process in the container
/// (PID 1 of a pid namespace is spared by `kill(-1)`), then PID 1 exits,
/// which makes the kernel reap the namespace. The host's control
/// connection sees EOF only after this.
pub(crate) fn end_all() -> ! {
    unsafe {
        kill(-1, 9);
    }
    std::process::exit(137)
}

/// Sends `sig` to the process group led by `pid`.
pub(crate) fn signal_group(pid: i32, sig: i32) {
    if pid > 0 {
        unsafe {
            kill(-pid, sig);
        }
    }
}

/// Copies one direction, then half-closes the other side's write end.
fn pump(mut from: impl Read, mut to: impl Write, close: impl FnOnce()) {
    let _ = io::copy(&mut from, &mut to);
    close();
}

/// Connections init relays at once, the 3128 bridge and capture together
/// (two threads each). More are turned away at once (a 503 on the bridge,
/// a reset on capture), so a flood of connections from inside cannot use
/// up the sandbox's pids limit (under gVisor that limit counts the
/// runtime's own host threads, and running out of them ends the sandbox).
pub(crate) const MAX_RELAYS: usize = 64;

static RELAYS: AtomicUsize = AtomicUsize::new(0);

/// One of the [`MAX_RELAYS`] slots, given back when dropped.
pub(crate) struct Relay(());

impl Relay {
    /// A free slot, or `None` when all are in use.
    pub(crate) fn take() -> Option<Relay> {
        RELAYS
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_RELAYS).then_some(n + 1)
            })
            .ok()
            .map(|_| Relay(()))
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        RELAYS.fetch_sub(1, Ordering::AcqRel);
    }
}

fn bridge(client: TcpStream, socket: &PathBuf) {
    let Ok(upstream) = UnixStream::connect(socket) else {
        // The proxy is gone: the connection just closes.
        return;
    };
    splice(client, upstream);
}

/// Copies both ways between a sandbox connection and the proxy socket
/// until both sides are done, half-closing each as the other ends.
pub(crate) fn splice(client: TcpStream, upstream: UnixStream) {
    let (Ok(c2), Ok(u2)) = (client.try_clone(), upstream.try_clone()) else {
        return;
    };
    let up = thread::Builder::new().spawn(move || {
        pump(&client, &upstream, || {
            drop(upstream.shutdown(Shutdown::Write))
        })
    });
    // No thread to be had (the pids limit): the connection just closes.
    let Ok(up) = up else { return };
    pump(&u2, &c2, || drop(c2.shutdown(Shutdown::Write)));
    let _ = up.join();
}

/// Answered to a connection init cannot serve for want of a thread or a
/// relay slot.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nx-agent-sandbox-denied: sandbox-out-of-threads\r\nconnection: close\r\ncontent-length: 71\r\n\r\nagent-sandbox: too many connections open at once in the sandbox; retry\n";

fn start_bridge(port: u16, socket: PathBuf) -> io::Result<()> {
    let listener = TcpListener::bind(("127.0.0.1", port))?;
    thread::Builder::new().spawn(move || loop {
        let conn = match listener.accept() {
            Ok((c, _)) => c,
            Err(_) => {
                // EMFILE and the like: back off and go on, never stop serving.
                thread::sleep(std::time::Duration::from_millis(20));
                continue;
            }
        };
        let socket = socket.clone();
        let _ = conn.set_nodelay(true);
        let mut spare = conn.try_clone().ok();
        let Some(slot) = Relay::take() else {
            let mut conn = conn;
            let _ = conn.write_all(BUSY);
            continue;
        };
        if thread::Builder::new()
            .spawn(move || {
                let _slot = slot;
                bridge(conn, &socket);
            })
            .is_err()
        {
            if let Some(c) = spare.as_mut() {
                let _ = c.write_all(BUSY);
            }
        }
    })?;
    Ok(())
}

pub(crate) fn exit_code(status: i32) -> u8 {
    let sig = status & 0x7f;
    if sig == 0 {
        ((status >> 8) & 0xff) as u8
    } else {
        128u8.wrapping_add(sig as u8)
    }
}

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some(wire::PAUSE) {
        loop {
            // A child that never exits, so PID 1's waitpid always has one to block on.
            thread::park();
        }
    }
    if std::env::args().nth(1).as_deref() == Some(wire::GATEWAY) {
        let Some(dir) = std::env::args().nth(2) else {
            eprintln!(
                "agent-sandbox-init: {} needs the shared directory",
                wire::GATEWAY
            );
            return ExitCode::from(125);
        };
        unsafe {
            prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
        }
        return gateway::run(std::path::Path::new(&dir));
    }
    let args = match InitArgs::parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("agent-sandbox-init: {e}");
            return ExitCode::from(125);
        }
    };
    // Not dumpable: no process in the sandbox (same uid) can ptrace PID 1
    // or write its /proc/1/mem. Children get their own flag back at exec.
    unsafe {
        prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    }
    if let Err(e) = check_mounts(&args.mounts) {
        eprintln!("{MOUNT_MISMATCH_TEXT}{e}");
        return ExitCode::from(MOUNT_MISMATCH_EXIT);
    }
    if let Some(go) = &args.wait_go {
        // The host checks the mounts from outside and then creates `go`;
        // if it finds another directory it kills the container instead.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !go.exists() {
            if std::time::Instant::now() > deadline {
                eprintln!("{MOUNT_MISMATCH_TEXT}the host never confirmed the mounts");
                return ExitCode::from(MOUNT_MISMATCH_EXIT);
            }
            thread::sleep(std::time::Duration::from_millis(2));
        }
    }
    if let (Some(port), Some(socket)) = (args.port, args.socket.clone()) {
        if let Err(e) = start_bridge(port, socket) {
            eprintln!("agent-sandbox-init: cannot listen on 127.0.0.1:{port}: {e}");
            return ExitCode::from(125);
        }
    }
    if let (Some(ports), Some(socket)) = (args.capture_ports.clone(), args.socket.clone()) {
        raise_fd_limit();
        if let Err(e) = net::start(socket, ports) {
            // Permission denied: the engine did not apply the sysctl
            // net.ipv4.ip_unprivileged_port_start=0.
            eprintln!("agent-sandbox-init: cannot serve DNS on 127.0.0.53:53: {e}");
            return ExitCode::from(125);
        }
    }
    let act = SigAction {
        handler: forward as extern "C" fn(i32, *const u8, *const u8) as usize,
        mask: [0; 16],
        flags: SA_SIGINFO | SA_RESTART,
        restorer: 0,
    };
    for sig in FORWARDED {
        unsafe {
            sigaction(sig, &act, std::ptr::null_mut());
        }
    }
    let reaped = exec::Reaped::new();
    if let Some(path) = args.exec_socket.clone() {
        if let Err(e) = exec::connect(path.clone(), reaped.clone()) {
            eprintln!(
                "agent-sandbox-init: cannot connect to {}: {e}",
                path.display()
            );
            return ExitCode::from(125);
        }
    }
    let session = args.command.is_empty();
    let command = if session {
        match std::env::current_exe() {
            Ok(me) => vec![me.to_string_lossy().into_owned(), wire::PAUSE.to_owned()],
            Err(e) => {
                eprintln!("agent-sandbox-init: cannot find itself: {e}");
                return ExitCode::from(125);
            }
        }
    } else {
        args.command
    };
    let mut cmd = Command::new(&command[0]);
    cmd.args(&command[1..]).process_group(0);
    if let Some(dir) = &args.cwd {
        if let Err(e) = std::fs::read_dir(dir) {
            eprintln!("agent-sandbox-init: working directory {dir}: {e}");
            return ExitCode::from(125);
        }
        cmd.current_dir(dir);
    }
    if let Some(path) = &args.stdin {
        match std::fs::File::open(path) {
            Ok(f) => cmd.stdin(f),
            Err(e) => {
                eprintln!("agent-sandbox-init: stdin {}: {e}", path.display());
                return ExitCode::from(125);
            }
        };
    }
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("agent-sandbox-init: cannot run {:?}: {e}", command[0]);
            // 127: not found, 126: found but not runnable (the shell's convention).
            return ExitCode::from(if e.kind() == io::ErrorKind::NotFound {
                127
            } else {
                126
            });
        }
    };
    let mut pid = child.id() as i32;
    CHILD.store(pid, Ordering::SeqCst);
    const P_ALL: i32 = 0;
    const WNOHANG: i32 = 1;
    const WEXITED: i32 = 4;
    const WNOWAIT: i32 = 0x0100_0000;
    loop {
        // Wait until a child can be reaped, without reaping it: while an
        // exec thread is inside `Command::spawn`, std may need to reap its own
        // failed child (and it asserts that it can), so reaping happens only
        // under the spawn lock.
        let mut info = [0u8; 128];
        if unsafe { waitid(P_ALL, 0, info.as_mut_ptr(), WEXITED | WNOWAIT) } < 0 {
            match io::Error::last_os_error().raw_os_error() {
                Some(4) => continue, // EINTR
                // ECHILD: a session whose pause child could not be restarted.
                Some(10) if session => {
                    thread::sleep(std::time::Duration::from_millis(10));
                    continue;
                }
                _ => return ExitCode::from(125),
            }
        }
        let _spawning = exec::SPAWN_LOCK.lock();
        loop {
            let mut status = 0;
            let reaped_pid = unsafe { waitpid(-1, &mut status, WNOHANG) };
            if reaped_pid <= 0 {
                break;
            }
            if reaped_pid == pid {
                if !session || STOPPING.load(Ordering::SeqCst) {
                    return ExitCode::from(exit_code(status));
                }
                // A session ends only when the engine or the host ends it:
                // a process inside that kills the pause child gets a new one.
                if let Ok(c) = Command::new(&command[0])
                    .args(&command[1..])
                    .process_group(0)
                    .spawn()
                {
                    pid = c.id() as i32;
                    CHILD.store(pid, Ordering::SeqCst);
                }
                continue;
            }
            reaped.record(reaped_pid, status);
        }
    }
}
