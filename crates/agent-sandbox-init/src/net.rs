//! DNS and transparent capture inside the sandbox.
//!
//! The sandbox's network is `none`: loopback only. Init answers DNS on
//! `127.0.0.53:53` (the sandbox's `/etc/resolv.conf` names it): an `A`
//! question for any well-formed name gets a synthetic address
//! `127.100.x.y`, one per name, remembered; every other question gets no
//! data; nothing is ever forwarded (see `dns.rs`). Before it answers, init
//! listens on that address at every capture port (80, 443 and each port the
//! policy names; the host sends a new list when a session's policy
//! changes). A connection accepted there becomes `CONNECT name:port` on the
//! proxy's unix socket, so the proxy decides exactly as for a program that
//! uses `HTTP_PROXY`; a refusal closes the connection at once (a reset).
//!
//! Binding ports below 1024 needs no capability: the container's own
//! network namespace has `net.ipv4.ip_unprivileged_port_start=0`.
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::Duration;

use crate::dns;
use crate::wire::{DNS_ADDR, SYNTHETIC_PREFIX, VIA_HEADER};

/// Names a sandbox can resolve: each holds a listener per capture port.
/// Past it, new names are answered `REFUSED`.
const MAX_NAMES: u32 = 8192;
/// Longest proxy reply head read for a captured connection.
const MAX_HEAD: usize = 16 * 1024;

extern "C" {
    fn poll(fds: *mut PollFd, nfds: u64, timeout: i32) -> i32;
    fn setsockopt(fd: i32, level: i32, name: i32, value: *const u8, len: u32) -> i32;
}

#[repr(C)]
struct PollFd {
    fd: i32,
    events: i16,
    revents: i16,
}
const POLLIN: i16 = 1;

struct State {
    /// `names[i]` has the address of index `i + 1`.
    names: Vec<String>,
    by_name: HashMap<String, u32>,
    ports: Vec<u16>,
    listeners: HashMap<(u32, u16), Arc<TcpListener>>,
}

struct Capture {
    socket: PathBuf,
    state: Mutex<State>,
    /// Written to wake the accept loop when the listeners change.
    wake: UnixStream,
}

static CAPTURE: OnceLock<Arc<Capture>> = OnceLock::new();

fn address(index: u32) -> Ipv4Addr {
    let [_, _, hi, lo] = index.to_be_bytes();
    Ipv4Addr::new(SYNTHETIC_PREFIX[0], SYNTHETIC_PREFIX[1], hi, lo)
}

/// Whether `port` is held on every local address (a wildcard listener):
/// binding it on a random loopback address never handed out fails too.
fn held_everywhere(port: u16) -> bool {
    use std::hash::{BuildHasher, Hasher};
    let r = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
        .to_be_bytes();
    let probe = Ipv4Addr::new(127, 101, r[0], r[1]);
    matches!(
        TcpListener::bind(SocketAddrV4::new(probe, port)),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse
    )
}

/// How many taken addresses a new name skips before it is refused.
const MAX_SKIPPED: u32 = 64;

impl State {
    /// Listens at every capture port of `index` not listened on yet.
    /// `Err` when a process in the sandbox holds one of them (it bound
    /// the address first, hoping to receive what is meant for the proxy).
    fn listen(&mut self, index: u32) -> Result<(), ()> {
        let mut taken = false;
        for &port in &self.ports {
            if self.listeners.contains_key(&(index, port)) {
                continue;
            }
            match TcpListener::bind(SocketAddrV4::new(address(index), port)) {
                Ok(l) => {
                    if l.set_nonblocking(true).is_ok() {
                        self.listeners.insert((index, port), Arc::new(l));
                    }
                }
                // Taken on this address only: a squatter; skip the address.
                // Taken on every address (a server on 0.0.0.0:port): no
                // address helps, and that server gets such connections;
                // the port stays uncaptured for this name.
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => taken |= !held_everywhere(port),
                // Out of descriptors and the like: this port stays
                // uncaptured for the name (a connection is refused).
                Err(_) => {}
            }
        }
        if taken {
            Err(())
        } else {
            Ok(())
        }
    }

    /// A fresh address for `name`, listened on at every capture port;
    /// addresses a process in the sandbox took first are skipped (and
    /// never handed out).
    fn assign(&mut self, name: &str) -> Option<u32> {
        for _ in 0..MAX_SKIPPED {
            let index = u32::try_from(self.names.len()).ok()? + 1;
            if index > MAX_NAMES {
                return None;
            }
            let ok = self.listen(index).is_ok();
            if !ok {
                self.listeners.retain(|(i, _), _| *i != index);
            }
            self.names
                .push(if ok { name.to_owned() } else { String::new() });
            if ok {
                self.by_name.insert(name.to_owned(), index);
                return Some(index);
            }
        }
        None
    }
}

impl Capture {
    /// Wakes the accept loop. Never blocks: the socket is non-blocking,
    /// and a full buffer means a wake is pending already.
    fn wake(&self) {
        let _ = (&self.wake).write(&[1]);
    }

    /// The synthetic address of `name`, listened on at every capture port
    /// before it is returned; `None` when the table is full.
    fn address_of(&self, name: &str) -> Option<[u8; 4]> {
        let mut s = self.state.lock().ok()?;
        let before = s.listeners.len();
        let index = match s.by_name.get(name) {
            Some(&i) => {
                // A port that could not be bound before (descriptors) is
                // tried again; a taken one stays the taker's.
                let _ = s.listen(i);
                i
            }
            None => s.assign(name)?,
        };
        // Only a new listener needs the accept loop to rebuild its list: a
        // lookup of a known name (the common case) wakes nothing.
        let added = s.listeners.len() != before;
        drop(s);
        if added {
            self.wake();
        }
        Some(address(index).octets())
    }

    /// Adds capture ports (a session's policy changed). Ports a rule no
    /// longer names keep their listeners: the proxy refuses what comes
    /// in, and closing them would race a rule added back at once.
    fn set_ports(&self, ports: Vec<u16>) {
        let Ok(mut s) = self.state.lock() else { return };
        s.ports.extend(ports);
        s.ports.sort_unstable();
        s.ports.dedup();
        for index in 1..=u32::try_from(s.names.len()).unwrap_or(0) {
            if !s.names[(index - 1) as usize].is_empty() {
                let _ = s.listen(index);
            }
        }
        drop(s);
        self.wake();
    }
}

/// Starts DNS on [`DNS_ADDR`]:53 and capture on `ports`, talking to the
/// proxy at `socket`.
pub(crate) fn start(socket: PathBuf, ports: Vec<u16>) -> io::Result<()> {
    let dns = UdpSocket::bind(SocketAddrV4::new(DNS_ADDR.into(), 53))?;
    let (woken, wake) = UnixStream::pair()?;
    woken.set_nonblocking(true)?;
    wake.set_nonblocking(true)?;
    let capture = Arc::new(Capture {
        socket,
        state: Mutex::new(State {
            names: Vec::new(),
            by_name: HashMap::new(),
            ports: Vec::new(),
            listeners: HashMap::new(),
        }),
        wake,
    });
    capture.set_ports(ports);
    let _ = CAPTURE.set(capture.clone());
    let c = capture.clone();
    thread::Builder::new().spawn(move || accept_loop(&c, woken))?;
    thread::Builder::new().spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            let Ok((n, from)) = dns.recv_from(&mut buf) else {
                thread::sleep(Duration::from_millis(5));
                continue;
            };
            if let Some(reply) = dns::answer(&buf[..n], |name| capture.address_of(name)) {
                let _ = dns.send_to(&reply, from);
            }
        }
    })?;
    Ok(())
}

/// Adds capture ports (a session's policy changed; see `Capture::set_ports`).
pub(crate) fn set_ports(ports: Vec<u16>) {
    if let Some(c) = CAPTURE.get() {
        c.set_ports(ports);
    }
}

fn accept_loop(capture: &Capture, mut woken: UnixStream) {
    loop {
        let listening: Vec<(u32, u16, Arc<TcpListener>)> = match capture.state.lock() {
            Ok(s) => s
                .listeners
                .iter()
                .map(|(&(i, p), l)| (i, p, l.clone()))
                .collect(),
            Err(_) => return,
        };
        let mut fds: Vec<PollFd> = std::iter::once(woken.as_raw_fd())
            .chain(listening.iter().map(|(_, _, l)| l.as_raw_fd()))
            .map(|fd| PollFd {
                fd,
                events: POLLIN,
                revents: 0,
            })
            .collect();
        let n = unsafe { poll(fds.as_mut_ptr(), fds.len() as u64, -1) };
        if n < 0 {
            if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                thread::sleep(Duration::from_millis(20));
            }
            continue;
        }
        if fds[0].revents != 0 {
            let mut sink = [0u8; 64];
            while matches!(woken.read(&mut sink), Ok(n) if n > 0) {}
        }
        let mut failing = false;
        for (fd, (index, port, listener)) in fds[1..].iter().zip(&listening) {
            if fd.revents == 0 {
                continue;
            }
            // At most a batch per listener per round, so one busy address
            // cannot keep the loop from the others (or from a wake).
            for _ in 0..64 {
                let conn = match listener.accept() {
                    Ok((conn, _)) => conn,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        // EMFILE and the like: the listener stays readable;
                        // back off below instead of spinning.
                        failing = true;
                        break;
                    }
                };
                let name = match capture.state.lock() {
                    Ok(s) => s.names[(*index - 1) as usize].clone(),
                    Err(_) => return,
                };
                let socket = capture.socket.clone();
                let port = *port;
                let Some(slot) = crate::Relay::take() else {
                    // Too many connections in flight: refused at once.
                    reset(conn);
                    continue;
                };
                let spare = conn.try_clone().ok();
                if thread::Builder::new()
                    .spawn(move || {
                        let _slot = slot;
                        captured(conn, &socket, &name, port);
                    })
                    .is_err()
                {
                    // No thread to be had (the pids limit): refused at once.
                    if let Some(c) = spare {
                        reset(c);
                    }
                }
            }
        }
        if failing {
            thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Closes with a reset, so the client sees "connection refused/reset" at
/// once rather than an empty answer.
fn reset(conn: TcpStream) {
    // struct linger { int l_onoff; int l_linger; }: on, zero seconds.
    let linger: [i32; 2] = [1, 0];
    unsafe {
        // SOL_SOCKET 1, SO_LINGER 13.
        setsockopt(conn.as_raw_fd(), 1, 13, linger.as_ptr().cast(), 8);
    }
}

/// One captured connection: `CONNECT name:port` through the proxy, then
/// bytes both ways; anything but `200` from the proxy resets the client.
fn captured(client: TcpStream, socket: &Path, name: &str, port: u16) {
    let _ = client.set_nonblocking(false);
    let _ = client.set_nodelay(true);
    let Ok(mut up) = UnixStream::connect(socket) else {
        return reset(client);
    };
    let head = format!(
        "CONNECT {name}:{port} HTTP/1.1\r\nhost: {name}:{port}\r\n{VIA_HEADER}: capture\r\n\r\n"
    );
    if up.write_all(head.as_bytes()).is_err() {
        return reset(client);
    }
    // The proxy answers within its connect timeout; a minute is plenty.
    let _ = up.set_read_timeout(Some(Duration::from_secs(60)));
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 4096];
    let end = loop {
        match up.read(&mut chunk) {
            Ok(0) | Err(_) => return reset(client),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        if buf.len() > MAX_HEAD {
            return reset(client);
        }
    };
    let ok = buf.starts_with(b"HTTP/1.1 200") || buf.starts_with(b"HTTP/1.0 200");
    if !ok {
        return reset(client);
    }
    let _ = up.set_read_timeout(None);
    // Bytes the destination sent right after the tunnel opened (an ssh
    // banner) came with the head.
    if (&client).write_all(&buf[end..]).is_err() {
        return;
    }
    crate::splice(client, up);
}
