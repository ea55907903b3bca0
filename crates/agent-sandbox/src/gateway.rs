//! The library's half of a gateway (engines that do not share the caller's
//! files; see `agent_sandbox_wire::mux` for the frames and the init
//! crate's `gateway.rs` for the other half). The gateway container relays
//! each connection the sandbox makes to its proxy or exec socket over its
//! attach stream; here each becomes a connection to the sandbox's own
//! proxy or exec hub, which listen on the host as for a local engine.
//! Nothing but the engine API crosses between the two machines.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use agent_sandbox_wire::{frame, mux};
use bytes::{Buf, Bytes, BytesMut};
use futures_util::StreamExt;
use sha2::Digest as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::runtime::GatewayIo;
use crate::Error;

/// The most streams a gateway may have open at once. An honest one is
/// bounded by its pids limit (two threads a stream); a compromised one is
/// refused past this (each stream is a connection to the proxy or the
/// exec hub here).
pub(crate) const MAX_STREAMS: usize = 1024;

struct Stream {
    /// To the local connection's writer: bytes, or `None` (the sandbox's END).
    to_local: mpsc::UnboundedSender<Option<Bytes>>,
    /// Bytes received and not yet written here. The gateway sends only
    /// within the window this side acknowledges: more is a protocol
    /// violation, and ends the stream (memory here stays bounded).
    unwritten: Arc<std::sync::atomic::AtomicUsize>,
    /// What the gateway still takes of this stream (its window).
    credit: Arc<Semaphore>,
    tasks: Vec<tokio::task::AbortHandle>,
}

type Streams = Arc<Mutex<HashMap<u32, Stream>>>;

/// A running relay. Dropping it ends every stream and the attach.
pub(crate) struct Relay {
    out: mpsc::UnboundedSender<Vec<u8>>,
    syncs: Arc<Mutex<Vec<oneshot::Sender<()>>>>,
    tasks: Vec<tokio::task::AbortHandle>,
    streams: Streams,
}

impl Drop for Relay {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        if let Ok(mut s) = self.streams.lock() {
            for (_, st) in s.drain() {
                st.tasks.iter().for_each(tokio::task::AbortHandle::abort);
            }
        }
    }
}

impl Relay {
    /// Starts relaying; resolves once the gateway said it is ready (init
    /// copied, sockets listening). `dir`: the host directory of the
    /// sandbox's `proxy.sock` and `exec.sock`.
    pub(crate) async fn start(io: GatewayIo, dir: &Path) -> Result<Relay, Error> {
        let GatewayIo { mut input, output } = io;
        let (out, mut out_rx) = mpsc::unbounded_channel::<Vec<u8>>();
        let writer = tokio::spawn(async move {
            while let Some(f) = out_rx.recv().await {
                if input.write_all(&f).await.is_err() || input.flush().await.is_err() {
                    return;
                }
            }
        });
        let streams: Streams = Arc::default();
        let syncs: Arc<Mutex<Vec<oneshot::Sender<()>>>> = Arc::default();
        let (ready_tx, ready_rx) = oneshot::channel();
        let reader = tokio::spawn(read_loop(
            output,
            dir.to_owned(),
            out.clone(),
            streams.clone(),
            syncs.clone(),
            ready_tx,
        ));
        let relay = Relay {
            out,
            syncs,
            tasks: vec![writer.abort_handle(), reader.abort_handle()],
            streams,
        };
        match tokio::time::timeout(std::time::Duration::from_secs(60), ready_rx).await {
            Ok(Ok(())) => Ok(relay),
            _ => Err(Error::engine(
                "start the gateway",
                "it did not become ready (see its message above, if any)",
            )),
        }
    }

    /// Writes `name` in the shared directory (mode `mode`); done once
    /// [`sync`](Relay::sync) returns.
    pub(crate) fn file(&self, name: &str, mode: u32, data: &[u8]) {
        let _ = self.out.send(mux::file_frame(name, mode, data));
    }

    /// Waits until the gateway has done every frame sent before.
    pub(crate) async fn sync(&self) -> Result<(), Error> {
        let (tx, rx) = oneshot::channel();
        if let Ok(mut s) = self.syncs.lock() {
            s.push(tx);
        }
        let _ = self.out.send(frame(mux::SYNC, &[]));
        rx.await
            .map_err(|_| Error::engine("write the sandbox's files", "the gateway ended"))
    }
}

async fn read_loop(
    mut output: std::pin::Pin<Box<dyn futures_util::Stream<Item = Bytes> + Send>>,
    dir: PathBuf,
    out: mpsc::UnboundedSender<Vec<u8>>,
    streams: Streams,
    syncs: Arc<Mutex<Vec<oneshot::Sender<()>>>>,
    ready: oneshot::Sender<()>,
) {
    let mut ready = Some(ready);
    let mut buf = BytesMut::new();
    while let Some(chunk) = output.next().await {
        buf.extend_from_slice(&chunk);
        loop {
            if buf.len() < 5 {
                break;
            }
            let head: [u8; 5] = buf[..5].try_into().unwrap_or_default();
            let Ok(len) = agent_sandbox_wire::payload_len(&head, mux::MAX_FRAME) else {
                return;
            };
            if buf.len() < 5 + len {
                break;
            }
            buf.advance(5);
            let payload = buf.split_to(len).freeze();
            match head[0] {
                mux::READY => {
                    if let Some(r) = ready.take() {
                        let _ = r.send(());
                    }
                }
                mux::SYNC => {
                    let first = syncs
                        .lock()
                        .ok()
                        .and_then(|mut s| (!s.is_empty()).then(|| s.remove(0)));
                    if let Some(s) = first {
                        let _ = s.send(());
                    }
                }
                tag => {
                    let Some((id, _)) = mux::split_id(&payload) else {
                        continue;
                    };
                    let rest = payload.slice(4..);
                    on_stream_frame(tag, id, rest, &dir, &out, &streams).await;
                }
            }
        }
    }
    // The gateway is gone: so is every stream.
    if let Ok(mut s) = streams.lock() {
        for (_, st) in s.drain() {
            st.tasks.iter().for_each(tokio::task::AbortHandle::abort);
        }
    }
}

async fn on_stream_frame(
    tag: u8,
    id: u32,
    rest: Bytes,
    dir: &Path,
    out: &mpsc::UnboundedSender<Vec<u8>>,
    streams: &Streams,
) {
    match tag {
        mux::OPEN => {
            let name = match rest.first() {
                Some(&mux::PROXY) => "proxy.sock",
                Some(&mux::EXEC) => "exec.sock",
                _ => return,
            };
            let refused = streams
                .lock()
                .map_or(true, |s| s.len() >= MAX_STREAMS || s.contains_key(&id));
            if refused {
                let _ = out.send(mux::stream_frame(mux::CLOSE, id, &[]));
                return;
            }
            match UnixStream::connect(dir.join(name)).await {
                Ok(local) => open(id, local, out.clone(), streams.clone()),
                Err(_) => {
                    let _ = out.send(mux::stream_frame(mux::CLOSE, id, &[]));
                }
            }
        }
        mux::DATA | mux::END => {
            let Some((to_local, unwritten)) = streams.lock().ok().and_then(|s| {
                s.get(&id)
                    .map(|s| (s.to_local.clone(), s.unwritten.clone()))
            }) else {
                return;
            };
            if tag == mux::DATA {
                let was = unwritten.fetch_add(rest.len(), std::sync::atomic::Ordering::SeqCst);
                if was + rest.len() > mux::WINDOW as usize {
                    let _ = out.send(mux::stream_frame(mux::CLOSE, id, &[]));
                    return close(streams, id);
                }
                let _ = to_local.send(Some(rest));
            } else {
                let _ = to_local.send(None);
            }
        }
        mux::ACK => {
            let n = rest
                .first_chunk::<4>()
                .map_or(0, |b| u32::from_be_bytes(*b));
            if let Some(c) = streams
                .lock()
                .ok()
                .and_then(|s| s.get(&id).map(|s| s.credit.clone()))
            {
                c.add_permits(n as usize);
            }
        }
        mux::CLOSE => close(streams, id),
        _ => {}
    }
}

fn close(streams: &Streams, id: u32) {
    if let Some(s) = streams.lock().ok().and_then(|mut s| s.remove(&id)) {
        s.tasks.iter().for_each(tokio::task::AbortHandle::abort);
    }
}

/// Relays one stream: local reads become DATA (within the gateway's
/// window), DATA becomes local writes (acknowledged once written). When
/// both ways have ended, the stream is closed on both sides.
fn open(id: u32, local: UnixStream, out: mpsc::UnboundedSender<Vec<u8>>, streams: Streams) {
    let (mut rd, mut wr) = local.into_split();
    let (to_local, mut from_gateway) = mpsc::unbounded_channel::<Option<Bytes>>();
    let credit = Arc::new(Semaphore::new(mux::WINDOW as usize));
    let unwritten = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let written = unwritten.clone();
    let halves = Arc::new(std::sync::atomic::AtomicU8::new(0));
    let finish = {
        let (out, streams, halves) = (out.clone(), streams.clone(), halves.clone());
        move |failed: bool| {
            let done = halves.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            if failed || done == 2 {
                let _ = out.send(mux::stream_frame(mux::CLOSE, id, &[]));
                close(&streams, id);
            }
        }
    };
    let fin = finish.clone();
    let (o, c) = (out.clone(), credit.clone());
    let reading = tokio::spawn(async move {
        let mut buf = vec![0u8; mux::CHUNK - 4];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) => {
                    let _ = o.send(mux::stream_frame(mux::END, id, &[]));
                    return fin(false);
                }
                Ok(n) => {
                    match c.acquire_many(n as u32).await {
                        Ok(p) => p.forget(),
                        Err(_) => return,
                    }
                    let _ = o.send(mux::stream_frame(mux::DATA, id, &buf[..n]));
                }
                Err(_) => return fin(true),
            }
        }
    });
    let writing = tokio::spawn(async move {
        while let Some(message) = from_gateway.recv().await {
            match message {
                Some(data) => {
                    if wr.write_all(&data).await.is_err() {
                        return finish(true);
                    }
                    written.fetch_sub(data.len(), std::sync::atomic::Ordering::SeqCst);
                    let n = (data.len() as u32).to_be_bytes();
                    let _ = out.send(mux::stream_frame(mux::ACK, id, &n));
                }
                None => {
                    let _ = wr.shutdown().await;
                    return finish(false);
                }
            }
        }
    });
    if let Ok(mut s) = streams.lock() {
        s.insert(
            id,
            Stream {
                to_local,
                unwritten,
                credit,
                tasks: vec![reading.abort_handle(), writing.abort_handle()],
            },
        );
    }
}

/// Whether sandboxes on `engine` go through a gateway: when it does not
/// share this machine's files, unless `AGENT_SANDBOX_GATEWAY` says
/// `always` (a forwarded socket this crate cannot tell apart) or `never`.
pub(crate) fn wanted(engine: &crate::runtime::Engine) -> Result<bool, Error> {
    match std::env::var("AGENT_SANDBOX_GATEWAY").as_deref() {
        Ok("always" | "1") => Ok(true),
        Ok("never" | "0") => Ok(false),
        Ok("" | "auto") | Err(_) => Ok(!engine.is_local()),
        Ok(other) => Err(Error::invalid(
            "AGENT_SANDBOX_GATEWAY",
            format!("{other:?} is not always, never or auto"),
        )),
    }
}

/// A sandbox's gateway: its container, relay and volumes, and what the
/// workspace looked like when it was copied in.
pub(crate) struct Remote {
    engine: crate::runtime::Engine,
    parts: tokio::sync::Mutex<Option<Parts>>,
}

impl Drop for Remote {
    /// Not torn down (a session dropped without `close`, a launch that
    /// failed later): the same, in the background.
    fn drop(&mut self) {
        let Some(parts) = self.parts.get_mut().take() else {
            return;
        };
        // On a thread of its own: the caller's runtime may be ending (a
        // cancelled run at the end of a test or a program), and a task
        // spawned there would die with it, leaving the gateway behind. The
        // engine is connected afresh (a client's pooled connections belong
        // to the runtime that made them).
        let _ = std::thread::Builder::new()
            .name("agent-sandbox-gateway-cleanup".into())
            .spawn(move || {
                if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    rt.block_on(async move {
                        if let Ok(engine) = crate::runtime::Engine::connect().await {
                            tear_down(&engine, parts).await;
                        }
                    });
                }
            });
    }
}

/// A workspace packed for the volume; see [`Remote::changed_workspace`].
pub(crate) struct Packed {
    tar: Vec<u8>,
    manifest: crate::workspace_sync::Manifest,
    hash: [u8; 32],
}

struct Parts {
    relay: Option<Relay>,
    gateway: Option<String>,
    volumes: Vec<String>,
    /// The local workspace (its path for messages, and the checked
    /// directory itself) and what was copied from it.
    workspace: Option<(PathBuf, OwnedFd, crate::workspace_sync::Manifest)>,
    /// The sandbox's uid:gid for the files copied in.
    owner: Option<(u32, u32)>,
    /// The hash of the tar copied in (a pool's spare compares it at take).
    packed: [u8; 32],
    /// Leave out what the workspace's `.gitignore` files ignore.
    skip_gitignored: bool,
}

impl Remote {
    /// Puts up the gateway for sandbox `id` and turns `spec` (made for a
    /// local engine: bind mounts of `dir`'s files, init and the workspace)
    /// into one for the engine: the shared directory and the workspace as
    /// volumes, `dir`'s files written there, the workspace copied in, DNS
    /// from the engine, init from the shared directory.
    pub(crate) async fn set_up(
        engine: &crate::runtime::Engine,
        id: &str,
        dir: &Path,
        spec: &mut crate::runtime::ContainerSpec,
        workspace: Option<(PathBuf, OwnedFd)>,
        owner: Option<(u32, u32)>,
        skip_gitignored: bool,
    ) -> Result<Remote, Error> {
        let remote = Remote {
            engine: engine.clone(),
            parts: tokio::sync::Mutex::new(Some(Parts {
                relay: None,
                gateway: None,
                volumes: Vec::new(),
                workspace: None,
                owner,
                packed: [0; 32],
                skip_gitignored,
            })),
        };
        match remote.build(engine, id, dir, spec, workspace).await {
            Ok(()) => Ok(remote),
            Err(e) => {
                remote.tear_down(engine).await;
                Err(e)
            }
        }
    }

    async fn build(
        &self,
        engine: &crate::runtime::Engine,
        id: &str,
        dir: &Path,
        spec: &mut crate::runtime::ContainerSpec,
        workspace: Option<(PathBuf, OwnedFd)>,
    ) -> Result<(), Error> {
        use crate::launch::NET_DIR;
        use crate::runtime::{ContainerSpec, Resources, VolumeMount, GATEWAY_BINARY};
        let mut guard = self.parts.lock().await;
        let Some(parts) = guard.as_mut() else {
            return Err(Error::SessionClosed);
        };
        let image = engine.gateway_image(crate::launch::INIT_BINARY).await?;
        let net = format!("agent-sandbox-{id}-net");
        engine.create_volume(&net, &spec.labels).await?;
        parts.volumes.push(net.clone());
        let mut volumes = vec![VolumeMount {
            name: net.clone(),
            container: NET_DIR.into(),
            read_only: false,
        }];
        if workspace.is_some() {
            let ws = format!("agent-sandbox-{id}-ws");
            engine.create_volume(&ws, &spec.labels).await?;
            parts.volumes.push(ws.clone());
            volumes.push(VolumeMount {
                name: ws,
                container: "/workspace".into(),
                read_only: false,
            });
        }
        let gateway = ContainerSpec {
            image,
            argv: vec![
                GATEWAY_BINARY.into(),
                agent_sandbox_wire::GATEWAY.into(),
                NET_DIR.into(),
            ],
            env: Vec::new(),
            user: spec.user.clone(),
            working_dir: "/".into(),
            mounts: Vec::new(),
            volumes: volumes.clone(),
            engine_dns: false,
            stdin: true,
            seccomp_file: spec.seccomp_file.clone(),
            extra_tmpfs: Vec::new(),
            read_only_tmpfs: spec.read_only_tmpfs.clone(),
            resources: Resources {
                memory: 256 << 20,
                cpus: 1.0,
                pids: 1024,
                tmp_size: 1 << 20,
                shm_size: 1 << 20,
            },
            labels: crate::runtime::gateway_labels(&spec.labels),
            runtime: None,
        };
        let gw = engine.create(&gateway).await?;
        parts.gateway = Some(gw.clone());
        let io = engine.start_attached(&gw).await?;
        let relay = Relay::start(io, dir).await?;
        // The files the local path bind-mounts (resolv.conf and hosts are
        // the engine's instead; passwd, group and the CA bundle are read
        // from the shared directory by name).
        let entries = std::fs::read_dir(dir).map_err(|e| Error::io("read", dir, e))?;
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            let name = entry.file_name();
            if meta.is_file() {
                if let (Some(name), Ok(data)) = (name.to_str(), std::fs::read(entry.path())) {
                    use std::os::unix::fs::PermissionsExt;
                    relay.file(name, meta.permissions().mode() & 0o777, &data);
                }
            }
        }
        relay.sync().await?;
        parts.relay = Some(relay);
        if let Some((local, fd)) = workspace {
            let (tar, manifest) =
                crate::workspace_sync::pack(&fd, &local, parts.owner, parts.skip_gitignored)?;
            parts.packed = sha2::Sha256::digest(&tar).into();
            engine.upload(&gw, "/workspace", tar).await?;
            parts.workspace = Some((local, fd, manifest));
        }
        spec.mounts.clear();
        for v in &mut volumes {
            v.read_only = v.container == NET_DIR;
        }
        spec.volumes = volumes;
        spec.argv[0] = format!("{NET_DIR}/init");
        spec.engine_dns = true;
        let bundle = format!("={}", crate::launch::SYSTEM_BUNDLE);
        for e in &mut spec.env {
            if e.ends_with(&bundle) {
                *e = e.replace(&bundle, &format!("={NET_DIR}/ca-bundle.crt"));
            }
        }
        Ok(())
    }

    /// The workspace as it is now, if it changed since it was copied in
    /// (a pool's spare waits with the copy made when it started): its tar,
    /// what each file was, and the tar's hash. `None`: unchanged, or no
    /// workspace.
    pub(crate) async fn changed_workspace(&self) -> Result<Option<Packed>, Error> {
        let guard = self.parts.lock().await;
        let Some(Parts {
            workspace: Some((local, fd, _)),
            owner,
            packed,
            skip_gitignored,
            ..
        }) = guard.as_ref()
        else {
            return Ok(None);
        };
        let (tar, manifest) = crate::workspace_sync::pack(fd, local, *owner, *skip_gitignored)?;
        let hash: [u8; 32] = sha2::Sha256::digest(&tar).into();
        Ok((hash != *packed).then_some(Packed {
            tar,
            manifest,
            hash,
        }))
    }

    /// Copies `new` into the workspace volume (emptied by the caller) and
    /// makes it what copying back compares with.
    pub(crate) async fn replace_workspace(&self, new: Packed) -> Result<(), Error> {
        let mut guard = self.parts.lock().await;
        let Some(parts) = guard.as_mut() else {
            return Err(Error::SessionClosed);
        };
        let (Some(gw), Some(ws)) = (&parts.gateway, &mut parts.workspace) else {
            return Ok(());
        };
        self.engine.upload(gw, "/workspace", new.tar).await?;
        ws.2 = new.manifest;
        parts.packed = new.hash;
        Ok(())
    }

    /// Copies the workspace back now (see `workspace_sync::merge`); the
    /// sandbox goes on. Nothing to do without a workspace.
    pub(crate) async fn sync_back(&self) -> Result<crate::SyncReport, Error> {
        let mut guard = self.parts.lock().await;
        let Some(parts) = guard.as_mut() else {
            return Err(Error::SessionClosed);
        };
        let Parts {
            gateway: Some(gw),
            workspace: Some((_, fd, manifest)),
            skip_gitignored,
            ..
        } = parts
        else {
            return Ok(crate::SyncReport::default());
        };
        copy_back(&self.engine, gw, fd, manifest, *skip_gitignored).await
    }

    /// Copies the workspace back (see `workspace_sync::merge`), then
    /// removes the gateway and the volumes. Idempotent. A workspace that
    /// cannot be copied back keeps its volume, and says so.
    pub(crate) async fn tear_down(&self, engine: &crate::runtime::Engine) {
        let parts = self.parts.lock().await.take();
        if let Some(parts) = parts {
            tear_down(engine, parts).await;
        }
    }
}

/// The gateway's `/workspace` merged into the checked directory `fd`
/// (itself, through `/proc/self/fd/N`, never its path again).
async fn copy_back(
    engine: &crate::runtime::Engine,
    gw: &str,
    fd: &OwnedFd,
    manifest: &mut crate::workspace_sync::Manifest,
    skip_gitignored: bool,
) -> Result<crate::SyncReport, Error> {
    let root = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
    let tar = engine
        .download(gw, "/workspace", crate::workspace_sync::MAX_WORKSPACE)
        .await?;
    crate::workspace_sync::merge(&tar, &root, manifest, skip_gitignored)
}

async fn tear_down(engine: &crate::runtime::Engine, mut parts: Parts) {
    let mut keep = None;
    if let (Some(gw), Some((local, fd, manifest))) = (&parts.gateway, &mut parts.workspace) {
        match copy_back(engine, gw, fd, manifest, parts.skip_gitignored).await {
            Ok(report) => report.tell(local),
            Err(e) => {
                keep = parts.volumes.iter().find(|v| v.ends_with("-ws")).cloned();
                eprintln!(
                    "agent-sandbox: the workspace could not be copied back to {} ({e}); it is kept in the engine's volume {}",
                    local.display(),
                    keep.as_deref().unwrap_or("?")
                );
            }
        }
    }
    parts.relay.take();
    if let Some(gw) = parts.gateway.take() {
        let _ = engine.remove(&gw).await;
    }
    for v in &parts.volumes {
        if Some(v) != keep.as_ref() {
            engine.remove_volume(v).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test plays a compromised gateway: `send` is what it says to the
    /// relay, `said` what the relay says back. `dir` holds `proxy.sock`.
    async fn relay(dir: &Path) -> (Relay, mpsc::UnboundedSender<Bytes>, tokio::io::DuplexStream) {
        let (send, rx) = mpsc::unbounded_channel::<Bytes>();
        let (input, said) = tokio::io::duplex(64 << 20);
        let output =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|b| (b, rx)) },
            );
        send.send(frame(mux::READY, &[]).into()).unwrap();
        let io = GatewayIo {
            input: Box::pin(input),
            output: Box::pin(output),
        };
        (Relay::start(io, dir).await.unwrap(), send, said)
    }

    /// The frames the relay said within `wait`: (tag, stream id).
    async fn frames(
        said: &mut tokio::io::DuplexStream,
        wait: std::time::Duration,
    ) -> Vec<(u8, u32)> {
        let mut got = Vec::new();
        loop {
            let mut head = [0u8; 5];
            match tokio::time::timeout(wait, said.read_exact(&mut head)).await {
                Ok(Ok(_)) => {}
                _ => return got,
            }
            let len = agent_sandbox_wire::payload_len(&head, mux::MAX_FRAME).unwrap();
            let mut payload = vec![0u8; len];
            said.read_exact(&mut payload).await.unwrap();
            let id = mux::split_id(&payload).map_or(0, |(id, _)| id);
            got.push((head[0], id));
        }
    }

    fn listening(tag: &str) -> (PathBuf, tokio::net::UnixListener) {
        let dir = std::env::temp_dir().join(format!("as-relay-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let l = tokio::net::UnixListener::bind(dir.join("proxy.sock")).unwrap();
        (dir, l)
    }

    #[tokio::test]
    async fn a_gateway_cannot_open_more_than_max_streams() {
        let (dir, listener) = listening("open");
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let a = accepted.clone();
        let held = tokio::spawn(async move {
            let mut conns = Vec::new();
            while let Ok((c, _)) = listener.accept().await {
                a.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                conns.push(c);
            }
        });
        let (relay, send, mut said) = relay(&dir).await;
        let extra = 76;
        for id in 1..=(MAX_STREAMS + extra) as u32 {
            send.send(mux::stream_frame(mux::OPEN, id, &[mux::PROXY]).into())
                .unwrap();
        }
        // The same id again: refused too.
        send.send(mux::stream_frame(mux::OPEN, 1, &[mux::PROXY]).into())
            .unwrap();
        let got = frames(&mut said, std::time::Duration::from_secs(2)).await;
        let closed: Vec<u32> = got
            .iter()
            .filter(|f| f.0 == mux::CLOSE)
            .map(|f| f.1)
            .collect();
        assert_eq!(closed.len(), extra + 1, "{closed:?}");
        assert!(closed
            .iter()
            .all(|&id| id == 1 || id as usize > MAX_STREAMS));
        assert_eq!(relay.streams.lock().unwrap().len(), MAX_STREAMS);
        assert_eq!(
            accepted.load(std::sync::atomic::Ordering::SeqCst),
            MAX_STREAMS
        );
        // Control: a stream that closes frees its place.
        send.send(mux::stream_frame(mux::CLOSE, 5, &[]).into())
            .unwrap();
        send.send(mux::stream_frame(mux::OPEN, 5_000, &[mux::PROXY]).into())
            .unwrap();
        let got = frames(&mut said, std::time::Duration::from_secs(1)).await;
        assert!(!got.contains(&(mux::CLOSE, 5_000)), "{got:?}");
        assert_eq!(relay.streams.lock().unwrap().len(), MAX_STREAMS);
        held.abort();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn data_past_the_window_ends_the_stream() {
        let (dir, listener) = listening("window");
        // The local side accepts and never reads: nothing is written past
        // the socket's buffer, so what the gateway sends piles up here.
        let held = tokio::spawn(async move {
            let mut conns = Vec::new();
            while let Ok((c, _)) = listener.accept().await {
                conns.push(c);
            }
        });
        let (relay, send, mut said) = relay(&dir).await;
        send.send(mux::stream_frame(mux::OPEN, 7, &[mux::PROXY]).into())
            .unwrap();
        let chunk = vec![b'x'; mux::CHUNK - 4];
        for _ in 0..40 {
            send.send(mux::stream_frame(mux::DATA, 7, &chunk).into())
                .unwrap();
        }
        let got = frames(&mut said, std::time::Duration::from_secs(2)).await;
        assert!(got.contains(&(mux::CLOSE, 7)), "{got:?}");
        assert!(relay.streams.lock().unwrap().is_empty());
        held.abort();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
