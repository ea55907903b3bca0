//! The contract between the host library and `agent-sandbox-init`: init's
//! command line and the frames of a session's exec channel. One module,
//! std only, compiled into both sides (init as a module of its static
//! binary, the library as the `agent_sandbox_wire` crate), so neither side
//! can drift from the other.
//!
//! Frames both ways: `[tag: u8][len: u32 big-endian][payload]` (see [`tag`]).

use std::io::{self, Read, Write};
use std::path::PathBuf;

/// Frame tags. Control connection: init says [`CONNECTED`](tag::CONNECTED)
/// once; the host sends [`NEW`](tag::NEW) + u64 id per exec and
/// [`TERMINATE`](tag::TERMINATE) to end the sandbox; init connects again and
/// says [`ACCEPT`](tag::ACCEPT) + the same id, and that connection carries
/// one exec: host to init [`REQUEST`](tag::REQUEST) once, then
/// [`STDIN`](tag::STDIN) chunks (empty = EOF) and [`SIGNAL`](tag::SIGNAL)
/// (`i32`, to the process group); init to host [`STDOUT`](tag::STDOUT),
/// [`STDERR`](tag::STDERR), [`FAILURE`](tag::FAILURE) text, [`OOM`](tag::OOM)
/// (empty: the memory limit killed the command) and [`EXIT`](tag::EXIT)
/// (`i32`). If the host hangs up, the command's process group gets SIGKILL.
/// Instead of a request, the host may send [`FORWARD`](tag::FORWARD) + a
/// port: init connects to that port on the sandbox's loopback, answers
/// `FORWARD` (empty) or [`FAILURE`](tag::FAILURE), and from then on the
/// connection carries raw bytes both ways (an exposed port).
pub mod tag {
    /// Init to host, control: init is up.
    pub const CONNECTED: u8 = b'C';
    /// Host to init, control: connect again for exec `id` (u64).
    pub const NEW: u8 = b'N';
    /// Host to init, control: kill everything and exit.
    pub const TERMINATE: u8 = b'T';
    /// Host to init, control: the capture ports of a changed policy (init
    /// adds them; ports no longer named keep listening, the proxy refuses)
    /// (payload: u16 big-endian each).
    pub const PORTS: u8 = b'P';
    /// Init to host, on a new connection: this is exec `id` (u64).
    pub const ACCEPT: u8 = b'A';
    /// Host to init: the exec request ([`Request`](super::Request)).
    pub const REQUEST: u8 = b'R';
    /// Host to init, instead of a request: connect to this port (u16
    /// big-endian) on the sandbox's loopback and splice. Init to host: empty,
    /// connected (raw bytes follow both ways).
    pub const FORWARD: u8 = b'W';
    /// Host to init: stdin bytes; empty is EOF.
    pub const STDIN: u8 = b'I';
    /// Host to init: a signal (`i32`) for the command's process group.
    pub const SIGNAL: u8 = b'K';
    /// Init to host: stdout bytes.
    pub const STDOUT: u8 = b'O';
    /// Init to host: stderr bytes.
    pub const STDERR: u8 = b'E';
    /// Init to host: why the command could not run (shown as stderr).
    pub const FAILURE: u8 = b'F';
    /// Init to host: the memory limit killed the command.
    pub const OOM: u8 = b'M';
    /// Init to host: the exit code (`i32`); the last frame of an exec.
    pub const EXIT: u8 = b'X';
}

/// The largest frame init accepts (stdin chunks are 1 MiB).
pub const MAX_FRAME_TO_INIT: usize = 16 << 20;
/// The largest frame the host accepts from a sandbox (init sends at most
/// 64 KiB); anything bigger ends the exec instead of allocating.
pub const MAX_FRAME_TO_HOST: usize = 1 << 20;

/// Init's exit code when a bind mount is not the directory the host checked.
pub const MOUNT_MISMATCH_EXIT: u8 = 120;
/// How init's message starts in that case (on stderr).
pub const MOUNT_MISMATCH_TEXT: &str = "agent-sandbox-init: mount check failed: ";
/// The first argument that makes the binary a gateway (see [`mux`]).
pub const GATEWAY: &str = "--gateway";

/// The gateway's relay, for engines that do not share the caller's files
/// (a remote engine, Docker Desktop's VM, Podman elsewhere). The gateway
/// container (this binary, `--gateway DIR`) shares `DIR` with the sandbox
/// through an engine volume: it copies itself there as `init` (the
/// sandbox's PID 1), listens on `DIR/proxy.sock` and `DIR/exec.sock`, and
/// carries every connection to them over its attach stream (stdin and
/// stdout) to the library, which connects each to its own proxy or exec
/// hub. The gateway needs no network and decides nothing.
///
/// Frames as everywhere (`[tag][len u32][payload]`); the payload of the
/// stream frames starts with the stream id (u32). Gateway to library:
/// [`READY`](mux::READY) once, [`OPEN`](mux::OPEN) id + which listener (u8:
/// [`PROXY`](mux::PROXY), [`EXEC`](mux::EXEC)). Both ways:
/// [`DATA`](mux::DATA) id + bytes, [`END`](mux::END) id (no more data this
/// way), [`CLOSE`](mux::CLOSE) id (gone both ways), [`ACK`](mux::ACK) id +
/// u32 bytes the other side may send again (each side sends at most
/// [`WINDOW`](mux::WINDOW) bytes a stream not yet acknowledged, so one slow
/// connection never stalls the others). Library to gateway:
/// [`FILE`](mux::FILE) (u16 name length, name, u32 mode, data: a file in
/// `DIR`, plain names only) and [`SYNC`](mux::SYNC), echoed once every
/// frame before it is done.
pub mod mux {
    /// Gateway: set up (init copied, sockets listening).
    pub const READY: u8 = b'R';
    /// Gateway: a new connection.
    pub const OPEN: u8 = b'O';
    /// Bytes of a stream.
    pub const DATA: u8 = b'D';
    /// No more bytes this way.
    pub const END: u8 = b'E';
    /// The stream is gone.
    pub const CLOSE: u8 = b'X';
    /// Bytes consumed: the sender may send that many more.
    pub const ACK: u8 = b'A';
    /// Library: write a file in the shared directory.
    pub const FILE: u8 = b'F';
    /// Library: echo when everything before is done.
    pub const SYNC: u8 = b'S';
    /// `OPEN`'s listener: the proxy socket.
    pub const PROXY: u8 = 0;
    /// `OPEN`'s listener: the exec socket.
    pub const EXEC: u8 = 1;
    /// Unacknowledged bytes per stream and direction.
    pub const WINDOW: u32 = 512 << 10;
    /// The largest `DATA` payload (id included).
    pub const CHUNK: usize = 64 << 10;
    /// The largest frame either side accepts (a `FILE`: a CA bundle).
    pub const MAX_FRAME: usize = 8 << 20;

    /// A stream frame: the id, then `rest`.
    #[must_use]
    pub fn stream_frame(tag: u8, id: u32, rest: &[u8]) -> Vec<u8> {
        let mut p = Vec::with_capacity(4 + rest.len());
        p.extend_from_slice(&id.to_be_bytes());
        p.extend_from_slice(rest);
        super::frame(tag, &p)
    }

    /// A stream frame's id and the rest; `None` if it has no id.
    #[must_use]
    pub fn split_id(payload: &[u8]) -> Option<(u32, &[u8])> {
        let (id, rest) = payload.split_first_chunk::<4>()?;
        Some((u32::from_be_bytes(*id), rest))
    }

    /// A `FILE` payload.
    #[must_use]
    pub fn file_frame(name: &str, mode: u32, data: &[u8]) -> Vec<u8> {
        let mut p = Vec::with_capacity(6 + name.len() + data.len());
        p.extend_from_slice(&(name.len() as u16).to_be_bytes());
        p.extend_from_slice(name.as_bytes());
        p.extend_from_slice(&mode.to_be_bytes());
        p.extend_from_slice(data);
        super::frame(FILE, &p)
    }

    /// A `FILE` payload's name (plain: no `/`, not `.` or `..`), mode and data.
    #[must_use]
    pub fn parse_file(payload: &[u8]) -> Option<(&str, u32, &[u8])> {
        let (len, rest) = payload.split_first_chunk::<2>()?;
        let len = usize::from(u16::from_be_bytes(*len));
        let name = std::str::from_utf8(rest.get(..len)?).ok()?;
        let (mode, data) = rest.get(len..)?.split_first_chunk::<4>()?;
        let plain = !name.is_empty() && !name.contains('/') && name != "." && name != "..";
        plain.then_some((name, u32::from_be_bytes(*mode) & 0o777, data))
    }
}

/// The argument that makes init a child that never exits (a session's
/// placeholder command, so PID 1 always has a child to wait for).
pub const PAUSE: &str = "--pause";

/// Where init answers DNS inside the sandbox (the sandbox's
/// `/etc/resolv.conf` names it).
pub const DNS_ADDR: [u8; 4] = [127, 0, 0, 53];
/// The synthetic addresses init hands out are `127.100.x.y`: one per name.
pub const SYNTHETIC_PREFIX: [u8; 2] = [127, 100];
/// The header on a captured connection's `CONNECT`, so the proxy's event
/// says how the connection came (`capture`). Informational: any program in
/// the sandbox can send it, and it changes no decision.
pub const VIA_HEADER: &str = "x-agent-sandbox-via";

/// A list of ports as a frame payload (u16 big-endian each).
#[must_use]
pub fn encode_ports(ports: &[u16]) -> Vec<u8> {
    ports.iter().flat_map(|p| p.to_be_bytes()).collect()
}

/// The ports of a [`tag::PORTS`] payload (a trailing odd byte is ignored).
#[must_use]
pub fn decode_ports(p: &[u8]) -> Vec<u16> {
    p.chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect()
}

fn join_ports(ports: &[u16]) -> String {
    ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// One frame, ready to write.
#[must_use]
pub fn frame(tag: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(5 + payload.len());
    f.push(tag);
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// Writes one frame.
///
/// # Errors
/// The writer's.
pub fn write_frame(w: &mut impl Write, tag: u8, payload: &[u8]) -> io::Result<()> {
    w.write_all(&frame(tag, payload))
}

/// The payload length a frame head announces, refused past `max`.
///
/// # Errors
/// An oversized frame.
pub fn payload_len(head: &[u8; 5], max: usize) -> io::Result<usize> {
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len > max {
        return Err(io::Error::other("frame too large"));
    }
    Ok(len)
}

/// Reads one frame of at most `max` payload bytes.
///
/// # Errors
/// The reader's, or an oversized frame.
pub fn read_frame(r: &mut impl Read, max: usize) -> io::Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 5];
    r.read_exact(&mut head)?;
    let mut payload = vec![0u8; payload_len(&head, max)?];
    r.read_exact(&mut payload)?;
    Ok((head[0], payload))
}

/// An exec request: what to run, with which environment, where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The command and its arguments (never empty).
    pub argv: Vec<String>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// The working directory.
    pub cwd: String,
}

fn put_str(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(&(s.len() as u32).to_be_bytes());
    buf.extend_from_slice(s.as_bytes());
}

impl Request {
    /// The payload of a [`tag::REQUEST`] frame: u32 argc, argc strings; u32
    /// envc, envc `K=V` strings; one cwd string. A string is u32 length +
    /// UTF-8 bytes.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&(self.argv.len() as u32).to_be_bytes());
        self.argv.iter().for_each(|a| put_str(&mut b, a));
        b.extend_from_slice(&(self.env.len() as u32).to_be_bytes());
        self.env
            .iter()
            .for_each(|(k, v)| put_str(&mut b, &format!("{k}={v}")));
        put_str(&mut b, &self.cwd);
        b
    }

    /// Parses a [`tag::REQUEST`] payload; `None` if it is malformed or the
    /// command is empty.
    #[must_use]
    pub fn decode(p: &[u8]) -> Option<Request> {
        let mut at = 0usize;
        let u32_at = |at: &mut usize| -> Option<u32> {
            let b = p.get(*at..*at + 4)?;
            *at += 4;
            Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        };
        let strings = |at: &mut usize| -> Option<Vec<String>> {
            let n = u32_at(at)?;
            let mut out = Vec::new();
            for _ in 0..n {
                let len = u32_at(at)? as usize;
                let s = std::str::from_utf8(p.get(*at..at.checked_add(len)?)?).ok()?;
                *at += len;
                out.push(s.to_owned());
            }
            Some(out)
        };
        let argv = strings(&mut at)?;
        let env = strings(&mut at)?
            .into_iter()
            .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.into(), v.into())))
            .collect();
        let len = u32::from_be_bytes(p.get(at..at + 4)?.try_into().ok()?) as usize;
        let cwd = std::str::from_utf8(p.get(at + 4..(at + 4).checked_add(len)?)?).ok()?;
        (!argv.is_empty()).then(|| Request {
            argv,
            env,
            cwd: cwd.to_owned(),
        })
    }
}

/// A bind mount init must find before anything runs: the device and inode
/// the host checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountCheck {
    /// Where it is mounted in the container.
    pub target: PathBuf,
    /// The checked directory's device.
    pub dev: u64,
    /// The checked directory's inode.
    pub ino: u64,
}

/// Init's command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InitArgs {
    /// The port of the in-container bridge to the proxy (`--port`).
    pub port: Option<u16>,
    /// The proxy's unix socket (`--socket`).
    pub socket: Option<PathBuf>,
    /// The host's exec socket, for sessions (`--exec-socket`).
    pub exec_socket: Option<PathBuf>,
    /// Mounts init compares with what the host checked (`--check-mount`).
    pub mounts: Vec<MountCheck>,
    /// A file the host creates once it has checked the mounts itself (under
    /// gVisor, whose inode numbers inside are its own): nothing runs before
    /// it exists (`--wait-go`).
    pub wait_go: Option<PathBuf>,
    /// The working directory of a one-shot run's command (`--cwd`).
    pub cwd: Option<String>,
    /// A file to feed a one-shot run's command as stdin (`--stdin`).
    pub stdin: Option<PathBuf>,
    /// DNS and capture: init answers DNS on [`DNS_ADDR`] and listens on
    /// these ports of every synthetic address it hands out
    /// (`--capture-ports 80,443`); `None`: neither.
    pub capture_ports: Option<Vec<u16>>,
    /// The command of a one-shot run (after `--`); empty for a session.
    pub command: Vec<String>,
}

impl InitArgs {
    /// The arguments after init's own path.
    #[must_use]
    pub fn to_args(&self) -> Vec<String> {
        let mut a = Vec::new();
        let mut opt = |name: &str, v: Option<String>| {
            if let Some(v) = v {
                a.push(name.to_owned());
                a.push(v);
            }
        };
        opt("--port", self.port.map(|p| p.to_string()));
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.to_string_lossy().into_owned());
        opt("--socket", path(&self.socket));
        opt("--exec-socket", path(&self.exec_socket));
        opt("--wait-go", path(&self.wait_go));
        opt("--cwd", self.cwd.clone());
        opt("--stdin", path(&self.stdin));
        opt(
            "--capture-ports",
            self.capture_ports.as_deref().map(join_ports),
        );
        for m in &self.mounts {
            a.push("--check-mount".into());
            a.push(format!("{}={}:{}", m.target.display(), m.dev, m.ino));
        }
        if !self.command.is_empty() {
            a.push("--".into());
            a.extend(self.command.iter().cloned());
        }
        a
    }

    /// Parses what [`to_args`](InitArgs::to_args) wrote.
    ///
    /// # Errors
    /// A message naming the bad argument.
    pub fn parse(mut args: impl Iterator<Item = String>) -> Result<InitArgs, String> {
        let mut out = InitArgs::default();
        while let Some(a) = args.next() {
            let mut value = || args.next().ok_or(format!("{a} needs a value"));
            match a.as_str() {
                "--port" => {
                    let v = value()?;
                    out.port = Some(v.parse().map_err(|_| format!("bad --port {v:?}"))?);
                }
                "--socket" => out.socket = Some(value()?.into()),
                "--exec-socket" => out.exec_socket = Some(value()?.into()),
                "--wait-go" => out.wait_go = Some(value()?.into()),
                "--cwd" => out.cwd = Some(value()?),
                "--stdin" => out.stdin = Some(value()?.into()),
                "--capture-ports" => {
                    let v = value()?;
                    let ports = v
                        .split(',')
                        .filter(|p| !p.is_empty())
                        .map(|p| p.parse().map_err(|_| format!("bad --capture-ports {v:?}")))
                        .collect::<Result<_, _>>()?;
                    out.capture_ports = Some(ports);
                }
                "--check-mount" => {
                    let v = value()?;
                    let bad = || format!("bad --check-mount {v:?} (TARGET=DEV:INO)");
                    let (target, ids) = v.rsplit_once('=').ok_or_else(bad)?;
                    let (dev, ino) = ids.split_once(':').ok_or_else(bad)?;
                    out.mounts.push(MountCheck {
                        target: target.into(),
                        dev: dev.parse().map_err(|_| bad())?,
                        ino: ino.parse().map_err(|_| bad())?,
                    });
                }
                "--" => {
                    out.command = args.collect();
                    break;
                }
                other => return Err(format!("unknown argument {other:?}")),
            }
        }
        if out.command.is_empty() && out.exec_socket.is_none() {
            return Err("no command given after -- (and no --exec-socket)".into());
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_round_trip() {
        let a = InitArgs {
            port: Some(3128),
            socket: Some("/n/proxy.sock".into()),
            exec_socket: None,
            mounts: vec![MountCheck {
                target: "/work=space".into(),
                dev: 2049,
                ino: 7,
            }],
            wait_go: Some("/n/go".into()),
            cwd: Some("/workspace/a b".into()),
            stdin: Some("/n/stdin".into()),
            capture_ports: Some(vec![80, 443, 22]),
            command: vec!["sh".into(), "-c".into(), "--port 1".into()],
        };
        assert_eq!(InitArgs::parse(a.to_args().into_iter()), Ok(a.clone()));
        let none = InitArgs {
            capture_ports: Some(vec![]),
            ..a
        };
        assert_eq!(InitArgs::parse(none.to_args().into_iter()), Ok(none));
        assert_eq!(decode_ports(&encode_ports(&[1, 65535])), vec![1, 65535]);
        assert!(InitArgs::parse(["--capture-ports".into(), "80,x".into()].into_iter()).is_err());
        assert!(InitArgs::parse(["--port".to_owned()].into_iter()).is_err());
        assert!(InitArgs::parse(["--port".into(), "1".into()].into_iter()).is_err());
        assert!(InitArgs::parse(["--what".to_owned()].into_iter()).is_err());
    }

    #[test]
    fn requests_round_trip_and_malformed_ones_are_refused() {
        let r = Request {
            argv: vec!["echo".into(), "a=b".into()],
            env: vec![("K".into(), "v=w".into())],
            cwd: "/workspace".into(),
        };
        let p = r.encode();
        assert_eq!(Request::decode(&p), Some(r));
        for cut in 0..p.len() {
            assert_eq!(Request::decode(&p[..cut]), None, "cut at {cut}");
        }
        let empty = Request {
            argv: vec![],
            env: vec![],
            cwd: "/".into(),
        };
        assert_eq!(Request::decode(&empty.encode()), None);
        let mut huge = p.clone();
        huge[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(Request::decode(&huge), None);
    }

    #[test]
    fn frames_round_trip_and_oversized_ones_are_refused() {
        let f = frame(tag::STDOUT, b"hi");
        let mut r = &f[..];
        assert_eq!(
            read_frame(&mut r, 2).unwrap(),
            (tag::STDOUT, b"hi".to_vec())
        );
        let mut r = &f[..];
        assert!(read_frame(&mut r, 1).is_err());
    }
}
