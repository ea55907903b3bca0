//! `agent-sandbox-init --gateway DIR`: the relay between a sandbox and a
//! library that does not share its files (see `wire::mux` for the frames).
//! It copies this binary into `DIR` as `init`, listens on the proxy and
//! exec sockets there, and carries each connection over stdin/stdout.
//! Two threads per connection (socket to stdout with the window's credit,
//! queue to socket with acknowledgements); it decides nothing, and exits
//! when the library hangs up (the engine then stops the container).

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

use crate::wire::{self, mux};

/// Credit for sending to the library; `None` once the stream is gone.
type Credit = Arc<(Mutex<Option<u32>>, Condvar)>;

struct Stream {
    sock: UnixStream,
    /// To the socket's writer: bytes, or `None` for the library's END.
    to_sock: mpsc::Sender<Option<Vec<u8>>>,
    credit: Credit,
}

#[derive(Clone)]
struct Shared {
    out: Arc<Mutex<io::Stdout>>,
    streams: Arc<Mutex<HashMap<u32, Stream>>>,
    next: Arc<AtomicU32>,
}

impl Shared {
    fn send(&self, frame: &[u8]) -> bool {
        self.out
            .lock()
            .is_ok_and(|mut o| o.write_all(frame).and_then(|()| o.flush()).is_ok())
    }

    fn close(&self, id: u32) {
        let gone = self.streams.lock().ok().and_then(|mut s| s.remove(&id));
        if let Some(s) = gone {
            let _ = s.sock.shutdown(Shutdown::Both);
            let (m, cv) = &*s.credit;
            if let Ok(mut c) = m.lock() {
                *c = None;
            }
            cv.notify_all();
        }
    }
}

/// Writes `DIR/name` whole (aside, then renamed) with `mode`.
fn write_file(dir: &Path, name: &str, mode: u32, data: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!(".{name}.part"));
    std::fs::write(&tmp, data)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&tmp, dir.join(name))
}

pub(crate) fn run(dir: &Path) -> ExitCode {
    let fail = |what: &str, e: io::Error| {
        eprintln!("agent-sandbox gateway: {what}: {e}");
        ExitCode::from(125)
    };
    match std::fs::read("/proc/self/exe") {
        Ok(me) => {
            if let Err(e) = write_file(dir, "init", 0o555, &me) {
                return fail("copy init into the shared volume", e);
            }
        }
        Err(e) => return fail("read /proc/self/exe", e),
    }
    let shared = Shared {
        out: Arc::new(Mutex::new(io::stdout())),
        streams: Arc::new(Mutex::new(HashMap::new())),
        next: Arc::new(AtomicU32::new(1)),
    };
    for (name, which) in [("proxy.sock", mux::PROXY), ("exec.sock", mux::EXEC)] {
        let path = dir.join(name);
        let _ = std::fs::remove_file(&path);
        let listener = match UnixListener::bind(&path) {
            Ok(l) => l,
            Err(e) => return fail("listen in the shared volume", e),
        };
        let shared = shared.clone();
        thread::spawn(move || loop {
            match listener.accept() {
                Ok((conn, _)) => open(&shared, conn, which),
                Err(_) => thread::sleep(Duration::from_millis(50)),
            }
        });
    }
    shared.send(&wire::frame(mux::READY, &[]));
    let mut input = io::stdin().lock();
    loop {
        let Ok((tag, payload)) = wire::read_frame(&mut input, mux::MAX_FRAME) else {
            // The library is gone: so is the sandbox's way out.
            return ExitCode::SUCCESS;
        };
        match tag {
            mux::FILE => {
                if let Some((name, mode, data)) = mux::parse_file(&payload) {
                    if let Err(e) = write_file(dir, name, mode, data) {
                        eprintln!("agent-sandbox gateway: write {name}: {e}");
                    }
                }
            }
            mux::SYNC => {
                shared.send(&wire::frame(mux::SYNC, &[]));
            }
            _ => {
                let Some((id, rest)) = mux::split_id(&payload) else {
                    continue;
                };
                if tag == mux::CLOSE {
                    shared.close(id);
                    continue;
                }
                let streams = shared.streams.lock();
                let Some(s) = streams.as_ref().ok().and_then(|s| s.get(&id)) else {
                    continue;
                };
                match tag {
                    mux::DATA => {
                        let _ = s.to_sock.send(Some(rest.to_vec()));
                    }
                    mux::END => {
                        let _ = s.to_sock.send(None);
                    }
                    mux::ACK => {
                        let n = rest
                            .first_chunk::<4>()
                            .map_or(0, |b| u32::from_be_bytes(*b));
                        let (m, cv) = &*s.credit;
                        if let Ok(mut c) = m.lock() {
                            if let Some(c) = c.as_mut() {
                                *c = c.saturating_add(n);
                            }
                        }
                        cv.notify_all();
                    }
                    _ => {}
                }
            }
        }
    }
}

/// A new connection from the sandbox: announced, then relayed both ways.
fn open(shared: &Shared, conn: UnixStream, which: u8) {
    let id = shared.next.fetch_add(1, Ordering::Relaxed);
    let (Ok(reader), Ok(writer)) = (conn.try_clone(), conn.try_clone()) else {
        return;
    };
    let (tx, rx) = mpsc::channel::<Option<Vec<u8>>>();
    let credit: Credit = Arc::new((Mutex::new(Some(mux::WINDOW)), Condvar::new()));
    if let Ok(mut s) = shared.streams.lock() {
        s.insert(
            id,
            Stream {
                sock: conn,
                to_sock: tx,
                credit: credit.clone(),
            },
        );
    }
    shared.send(&mux::stream_frame(mux::OPEN, id, &[which]));
    let sh = shared.clone();
    let wrote = thread::Builder::new().spawn(move || {
        let mut writer = writer;
        for message in rx {
            match message {
                Some(data) => {
                    if writer.write_all(&data).is_err() {
                        sh.send(&mux::stream_frame(mux::CLOSE, id, &[]));
                        sh.close(id);
                        return;
                    }
                    let n = (data.len() as u32).to_be_bytes();
                    sh.send(&mux::stream_frame(mux::ACK, id, &n));
                }
                None => {
                    let _ = writer.shutdown(Shutdown::Write);
                }
            }
        }
    });
    let sh = shared.clone();
    let read = thread::Builder::new().spawn(move || {
        let mut reader = reader;
        let mut buf = vec![0u8; mux::CHUNK - 4];
        loop {
            let allowed = {
                let (m, cv) = &*credit;
                let Ok(mut c) = m.lock() else { return };
                loop {
                    match *c {
                        None => return,
                        Some(0) => match cv.wait(c) {
                            Ok(g) => c = g,
                            Err(_) => return,
                        },
                        Some(n) => break n as usize,
                    }
                }
            };
            let want = allowed.min(buf.len());
            match reader.read(&mut buf[..want]) {
                Ok(0) | Err(_) => {
                    sh.send(&mux::stream_frame(mux::END, id, &[]));
                    return;
                }
                Ok(n) => {
                    if let Ok(mut c) = credit.0.lock() {
                        if let Some(c) = c.as_mut() {
                            *c -= n as u32;
                        }
                    }
                    if !sh.send(&mux::stream_frame(mux::DATA, id, &buf[..n])) {
                        return;
                    }
                }
            }
        }
    });
    if wrote.is_err() || read.is_err() {
        shared.send(&mux::stream_frame(mux::CLOSE, id, &[]));
        shared.close(id);
    }
}
