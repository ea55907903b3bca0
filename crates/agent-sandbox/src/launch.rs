//! Everything that puts a sandbox up: validate-time inputs become a
//! [`Launched`] sandbox (host directory, proxy, checked mounts, container
//! spec), which a run ([`crate::run`]) or a session ([`crate::Session`])
//! then starts and owns whole.

use std::collections::HashMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use agent_sandbox_wire::{InitArgs, MountCheck, MOUNT_MISMATCH_EXIT, MOUNT_MISMATCH_TEXT};
use tokio::sync::broadcast;

use crate::audit::EventLog;
use crate::config::{Config, DEFAULT_IMAGE};
use crate::intercept::Interceptor;
use crate::proxy::{AuditEvent, Limits, Listen, Proxy, ProxyHandle};
use crate::runtime::{
    labels, owner_label_value, ContainerSpec, Engine, Mount, PullProgress, Resources,
};
use crate::workspace::{check_dir, strip_setid_bits, CheckedDir};
use crate::Error;

/// The port the in-container bridge listens on (inside the container's own
/// network namespace, so it cannot clash with anything on the host).
const PROXY_PORT: u16 = 3128;
/// Where the init binary and the proxy socket directory appear in the container.
const INIT_PATH: &str = "/.agent-sandbox/init";
pub(crate) const NET_DIR: &str = "/.agent-sandbox/net";
/// The sandbox's `/etc/resolv.conf`: init answers DNS, and never forwards.
const RESOLV_CONF: &str = "# agent-sandbox: init answers every lookup with a local address and\n# never forwards one; connections to it go through the proxy.\nnameserver 127.0.0.53\noptions timeout:2 attempts:2\n";
/// The sandbox's `/etc/hosts`: localhost and the sandbox's own name.
const HOSTS: &str =
    "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\tsandbox\n";
pub(crate) static INIT_BINARY: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/agent-sandbox-init"));

/// What the container's init does.
pub(crate) enum Mode {
    /// Runs one command (in `cwd` below `/workspace`, fed `stdin`), then exits.
    Run {
        argv: Vec<String>,
        cwd: Option<String>,
        stdin: Option<Vec<u8>>,
    },
    /// Serves exec requests on the host's exec socket (a session).
    Session,
}

/// The host's half of a sandbox: its proxy and its directory (proxy and
/// exec sockets). Released once, when the sandbox ends.
pub(crate) struct HostSide {
    proxy: ProxyHandle,
    _dir: SandboxDir,
}

/// A sandbox set up and ready to start: what [`launch`] made, owned whole
/// by the run or session that starts it.
pub(crate) struct Launched {
    pub(crate) config: Config,
    pub(crate) engine: Engine,
    pub(crate) id: String,
    host: Mutex<Option<HostSide>>,
    /// The host directory (see [`HostSide`]), for the exec socket's path.
    dir: PathBuf,
    pub(crate) events: Arc<EventLog>,
    /// The commands running now (what the ask callback is told).
    pub(crate) running: Arc<Running>,
    pub(crate) subscribers: broadcast::Sender<AuditEvent>,
    pub(crate) spec: ContainerSpec,
    /// The sandbox user's numeric ids, when it is not the caller.
    pub(crate) owner: Option<(u32, u32)>,
    /// Whether the sandbox runs as another uid than the caller (sockets
    /// are then shared with it).
    custom_user: bool,
    /// The checked bind sources, held open until init has compared them
    /// with what is mounted (and by sessions for host-side file access).
    pub(crate) checked: Vec<CheckedDir>,
    /// Where the host says "mounts confirmed" to an init that waits for it
    /// (runtimes other than runc; see `confirm_mounts`).
    go: Option<PathBuf>,
    /// The gateway, on an engine that does not share this machine's files.
    pub(crate) remote: Option<crate::gateway::Remote>,
}

impl Launched {
    /// Where a session's exec socket listens on the host.
    pub(crate) fn exec_socket(&self) -> PathBuf {
        self.dir.join("exec.sock")
    }

    /// Lets the sandbox user connect to a host socket, if it is not the caller.
    pub(crate) fn share(&self, socket: &Path) -> Result<(), Error> {
        if self.custom_user {
            share_socket(socket, self.owner)?;
        }
        Ok(())
    }

    /// Stops the proxy and removes the host directory; through a gateway,
    /// copies the workspace back and removes the gateway and its volumes
    /// (the sandbox container must be gone). Idempotent.
    pub(crate) async fn release(&self) {
        if let Some(r) = &self.remote {
            r.tear_down(&self.engine).await;
        }
        let host = self.host.lock().ok().and_then(|mut h| h.take());
        if let Some(h) = host {
            h.proxy.shutdown().await;
        }
    }

    /// The current proxy, while the sandbox is up.
    pub(crate) fn with_proxy<T>(&self, f: impl FnOnce(&ProxyHandle) -> T) -> Option<T> {
        let host = self.host.lock().ok()?;
        host.as_ref().map(|h| f(&h.proxy))
    }

    /// For runtimes whose inode numbers inside are their own (gVisor):
    /// compares each mount, seen from the host through the runtime, with
    /// the checked directory, then lets init go on. A mismatch, or a mount
    /// that cannot be seen, kills the container first: nothing ran in it.
    pub(crate) async fn confirm_mounts(&self, container: &str) -> Result<(), Error> {
        let Some(go) = &self.go else { return Ok(()) };
        for dir in &self.checked {
            let seen = crate::runtime::mounted_identity(container, &dir.target);
            if seen != Ok((dir.dev, dir.ino)) {
                self.engine.kill(container).await;
                let why = match seen {
                    Ok((dev, ino)) => format!(
                        "{} is not the directory that was checked (device:inode {dev}:{ino} mounted, {}:{} expected); the path was changed while the sandbox started",
                        dir.target, dir.dev, dir.ino
                    ),
                    Err(e) => format!("its mount at {} cannot be verified under this runtime: {e}", dir.target),
                };
                return Err(mount_mismatch_error(
                    &self.checked,
                    format!("{MOUNT_MISMATCH_TEXT}{why}").as_bytes(),
                ));
            }
        }
        std::fs::File::create(go).map_err(|e| Error::io("create", go, e))?;
        Ok(())
    }

    /// The error for a sandbox whose init refused its mounts: exit code
    /// [`MOUNT_MISMATCH_EXIT`] from a sandbox with bind mounts, and for a run
    /// (`stderr_head`: the first bytes of its stderr, kept whatever the output
    /// limit) init's message; a session's container exits so only by init.
    pub(crate) fn mount_mismatch(
        &self,
        code: Option<i64>,
        stderr_head: Option<&[u8]>,
    ) -> Option<Error> {
        let session = format!("{MOUNT_MISMATCH_TEXT}a bind mount is not the checked directory");
        let message = stderr_head.unwrap_or(session.as_bytes());
        let refused = code == Some(i64::from(MOUNT_MISMATCH_EXIT))
            && !self.checked.is_empty()
            && message.starts_with(MOUNT_MISMATCH_TEXT.as_bytes());
        refused.then(|| mount_mismatch_error(&self.checked, message))
    }

    /// Removes setuid/setgid bits from files in the read-write bind mounts
    /// that changed since `since` (see [`strip_setid_bits`]).
    pub(crate) fn strip_setid(&self, since: std::time::SystemTime) -> Vec<String> {
        self.checked
            .iter()
            .filter(|c| c.writable)
            .filter_map(|c| Some((c.open().ok()?, c)))
            .flat_map(|(root, c)| strip_setid_bits(&root, &c.setid_baseline, since))
            .collect()
    }
}

/// Validates the mounts and the engine, then sets up what a container
/// needs: image, host directory, init binary, proxy, and the container spec.
pub(crate) async fn launch(config: Config, mode: Mode) -> Result<Launched, Error> {
    let s = &config.s;
    raise_fd_limit_once();
    let engine = Engine::connect().await?;
    collect_orphans_once(&engine);
    let gateway = crate::gateway::wanted(&engine)?;
    if gateway && !s.mounts.is_empty() {
        return Err(Error::invalid(
            "mounts",
            format!(
                "{} does not share this machine's files: only the workspace is copied there, extra mounts are not",
                engine.name()
            ),
        ));
    }
    let socket = engine.socket_path();
    let mut checked = Vec::new();
    if let Some(p) = &s.workspace {
        let mut dir = check_dir(p, socket.as_deref())?;
        dir.mark_writable();
        dir.target = "/workspace".into();
        checked.push(dir);
    }
    for (host, target, read_only) in &s.mounts {
        let mut dir = check_dir(host, socket.as_deref())?;
        if !*read_only {
            dir.mark_writable();
        }
        dir.target.clone_from(target);
        checked.push(dir);
    }
    let image = s
        .image
        .clone()
        .or_else(|| non_empty_var("AGENT_SANDBOX_IMAGE"))
        .unwrap_or_else(|| DEFAULT_IMAGE.to_owned());
    let pull = s.on_pull.as_deref();
    let image_id = engine
        .ensure_image(
            &image,
            pull.map(|f| f as &(dyn Fn(&PullProgress) + Send + Sync)),
        )
        .await?;

    let id = new_id();
    let dir = SandboxDir::create(&id, "net")?;
    let init = init_binary()?;
    let caller = std::fs::metadata(&dir.0).map_err(|e| Error::io("inspect", &dir.0, e))?;
    let caller = (caller.uid(), caller.gid());
    let workspace = checked.iter().find(|c| c.target == "/workspace");
    let user = match &s.user {
        Some(u) => u.clone(),
        None => default_user(caller, workspace)?,
    };
    let sandbox_ids = numeric_ids(&user);
    let custom_user = sandbox_ids != Some(caller);

    let events = Arc::new(EventLog::new());
    let (subscribers, _) = broadcast::channel(256);
    let (sink_events, sink_subscribers) = (events.clone(), subscribers.clone());
    let user_sink = s.on_event.clone();
    let proxy_socket = dir.0.join("proxy.sock");
    // A CA of this sandbox's own, only when some host is intercepted.
    let icp = if config.intercepts() {
        Some(Arc::new(Interceptor::new(
            config.rules.secrets(),
            &config.upstream_roots,
        )?))
    } else {
        None
    };
    let mut proxy = Proxy::builder(config.policy.clone());
    if let Some(icp) = &icp {
        proxy = proxy.intercept(icp.clone());
    }
    let running = Arc::new(Running::default());
    if let Some(f) = &s.ask {
        // The callback learns which command is running.
        let (f, now) = (f.clone(), running.clone());
        let asked = crate::ask::ask_fn(move |mut req: crate::ask::AskRequest| {
            req.command = now.latest();
            f(req)
        });
        proxy = proxy.on_ask(asked, s.ask_timeout);
    }
    if let Mode::Run { argv, .. } = &mode {
        running.set_fixed(argv);
    }
    let proxy = proxy
        .sandbox_id(id.clone())
        .limits(fair_limits(s.proxy_limits.clone()))
        .on_event(move |e| {
            if let Some(f) = &user_sink {
                f(e);
            }
            sink_events.push(e);
            let _ = sink_subscribers.send(e.clone());
        })
        .start(&Listen::Unix(proxy_socket.clone()))
        .await?;
    if custom_user {
        share_socket(&proxy_socket, sandbox_ids)?;
    }

    let mut mounts = vec![
        Mount {
            host: init,
            container: INIT_PATH.into(),
            read_only: true,
        },
        Mount {
            host: dir.0.clone(),
            container: NET_DIR.into(),
            read_only: true,
        },
    ];
    // Names resolve through init (see the init crate's `net.rs`), and
    // /etc/hosts names only localhost and the sandbox.
    for (name, text) in [("resolv.conf", RESOLV_CONF), ("hosts", HOSTS)] {
        mounts.push(etc_file(&dir.0, name, text.as_bytes())?);
    }
    // Who the sandbox is: the image's users, and a line for its own ids.
    if let Some(ids) = sandbox_ids {
        let [passwd, group] = match &image_files(
            &engine,
            &image,
            &image_id,
            &["/etc/passwd", "/etc/group"],
        )
        .await?[..]
        {
            [p, g] => identity_files(p.as_deref(), g.as_deref(), ids),
            _ => [None, None],
        };
        for (name, text) in [("passwd", passwd), ("group", group)] {
            if let Some(text) = text {
                mounts.push(etc_file(&dir.0, name, &text)?);
            }
        }
    }
    let mut env = sandbox_env(&s.env);
    if let Some(icp) = &icp {
        trust_files(
            &engine,
            (&image, &image_id),
            &dir.0,
            icp,
            &mut mounts,
            &mut env,
        )
        .await?;
    }
    mounts.extend(checked.iter().map(|c| Mount {
        host: c.path.clone(),
        container: c.target.clone(),
        read_only: !c.writable,
    }));
    let extra_tmpfs = match s.workspace {
        Some(_) => Vec::new(),
        None => vec![("/workspace".to_owned(), s.tmp_size)],
    };
    let runtime = s
        .runtime
        .clone()
        .or_else(|| non_empty_var("AGENT_SANDBOX_RUNTIME"));
    let effective = match &runtime {
        Some(r) => r.clone(),
        None => engine.default_runtime().to_owned(),
    };
    // Under runc (and crun) init compares each mount with the checked
    // directory. gVisor shows its own device and inode numbers inside:
    // the host compares from outside, through gVisor's gofer, and init
    // waits for its word before anything runs. The runtime is the one
    // asked for, else the engine's default.
    // Through a gateway nothing is bind-mounted: the workspace is a volume
    // filled from the checked directory, and there is nothing to compare.
    // Podman runs runsc too, but the host-side comparison finds the
    // sandbox's processes as Docker shows them: refused, not weakened.
    if is_gvisor(&effective)
        && !checked.is_empty()
        && !gateway
        && engine.kind() == crate::runtime::EngineKind::Podman
    {
        return Err(engine.err_msg(
            "start a sandbox under gVisor",
            format!("{effective} with a bind-mounted directory is supported on Docker only (its mounts cannot be confirmed through Podman yet): use runc, or Docker"),
        ));
    }
    let host_checks = is_gvisor(&effective) && !checked.is_empty() && !gateway;
    let net = Path::new(NET_DIR);
    let mut init_args = InitArgs {
        port: Some(PROXY_PORT),
        socket: Some(net.join("proxy.sock")),
        capture_ports: Some(config.policy.capture_ports()),
        wait_go: host_checks.then(|| net.join("go")),
        mounts: if host_checks || gateway {
            Vec::new()
        } else {
            checked
                .iter()
                .map(|c| MountCheck {
                    target: c.target.clone().into(),
                    dev: c.dev,
                    ino: c.ino,
                })
                .collect()
        },
        ..InitArgs::default()
    };
    match mode {
        Mode::Run { argv, cwd, stdin } => {
            init_args.command = argv;
            // Init enters the directory (the container starts in `/`: see
            // `working_dir` below).
            init_args.cwd = cwd.or_else(|| Some("/workspace".to_owned()));
            if let Some(data) = stdin {
                // Beside the sockets, under a name no one can guess (the
                // directory is not listable), readable by the sandbox user
                // only: its owner, or given to it when we can (a root
                // caller); else readable by name, like the sockets.
                let name = format!("stdin-{}", new_id());
                let path = dir.0.join(&name);
                write_private(&path, &data)?;
                if custom_user {
                    let given = sandbox_ids.is_some_and(|(u, g)| {
                        std::os::unix::fs::chown(&path, Some(u), Some(g)).is_ok()
                    });
                    let mode = if given { 0o400 } else { 0o444 };
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                        .map_err(|e| Error::io("set permissions of", &path, e))?;
                }
                init_args.stdin = Some(net.join(name));
            }
        }
        // Init connects to the host's exec socket: the container never
        // gets a writable host directory.
        Mode::Session => init_args.exec_socket = Some(net.join("exec.sock")),
    }
    let mut argv = vec![INIT_PATH.to_owned()];
    argv.extend(init_args.to_args());
    let spec = ContainerSpec {
        image,
        argv,
        env,
        user,
        // Not /workspace: the engine would create it in the image as
        // root 0755 before mounting, and the scratch tmpfs of a sandbox
        // without a workspace would copy that mode and be unwritable.
        working_dir: "/".into(),
        mounts,
        volumes: Vec::new(),
        engine_dns: false,
        stdin: false,
        // Podman reads `seccomp=` as a path only (podman#27710): a local
        // Podman gets the profile as a file; a remote one cannot.
        seccomp_file: match engine.kind() {
            crate::runtime::EngineKind::Podman if engine.is_local() => Some(seccomp_file()?),
            _ => None,
        },
        extra_tmpfs,
        read_only_tmpfs: match engine.kind() {
            crate::runtime::EngineKind::Podman => vec!["/var/tmp".to_owned()],
            crate::runtime::EngineKind::Docker => Vec::new(),
        },
        resources: Resources {
            memory: s.memory,
            cpus: s.cpus,
            pids: if is_gvisor(&effective) {
                gvisor_pids(s.pids)
            } else {
                s.pids
            },
            tmp_size: s.tmp_size,
            shm_size: 64 << 20,
        },
        labels: HashMap::from([
            (labels::MANAGED.to_owned(), "1".to_owned()),
            (labels::ID.to_owned(), id.clone()),
            (labels::OWNER.to_owned(), owner_label_value()),
        ]),
        runtime,
    };
    let mut spec = spec;
    let remote = if gateway {
        let workspace = match checked.iter().find(|c| c.target == "/workspace") {
            Some(c) => Some((
                c.path.clone(),
                c.open()
                    .map_err(|e| Error::io("open the workspace", &c.path, e.into()))?,
            )),
            None => None,
        };
        Some(
            crate::gateway::Remote::set_up(
                &engine,
                &id,
                &dir.0,
                &mut spec,
                workspace,
                sandbox_ids,
                s.skip_gitignored,
            )
            .await?,
        )
    } else {
        None
    };
    let go = host_checks.then(|| dir.0.join("go"));
    Ok(Launched {
        remote,
        engine,
        id,
        dir: dir.0.clone(),
        host: Mutex::new(Some(HostSide { proxy, _dir: dir })),
        running,
        events,
        subscribers,
        spec,
        owner: if custom_user { sandbox_ids } else { None },
        custom_user,
        checked,
        go,
        config,
    })
}

/// The commands running in a sandbox, for the ask callback: the one-shot
/// command, or each session exec while it runs.
#[derive(Default)]
pub(crate) struct Running {
    now: Mutex<Vec<(u64, String)>>,
    next: std::sync::atomic::AtomicU64,
}

impl Running {
    fn set_fixed(&self, argv: &[String]) {
        self.enter(argv);
    }

    /// Marks `argv` running until the returned id is passed to `leave`.
    pub(crate) fn enter(&self, argv: &[String]) -> u64 {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let shown = match argv {
            [sh, c, cmd] if sh == "/bin/sh" && c == "-c" => cmd.clone(),
            _ => argv.join(" "),
        };
        if let Ok(mut n) = self.now.lock() {
            n.push((id, shown));
        }
        id
    }

    pub(crate) fn leave(&self, id: u64) {
        if let Ok(mut n) = self.now.lock() {
            n.retain(|(i, _)| *i != id);
        }
    }

    /// The latest command still running.
    pub(crate) fn latest(&self) -> Option<String> {
        self.now.lock().ok()?.last().map(|(_, c)| c.clone())
    }
}

/// Where Debian (and Ubuntu, and images built on them) keep the system's
/// CA bundle: clients that read it directly trust the sandbox's CA too.
pub(crate) const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// An intercepting sandbox's trust: its CA alone (`ca.pem`, for Node,
/// which adds it to its own roots) and the image's roots plus the CA
/// (`ca-bundle.crt`, mounted read-only over the system bundle), the usual
/// variables pointed at them, and each secret's placeholder in its
/// variable. The CA's key never leaves this process.
async fn trust_files(
    engine: &Engine,
    (image, image_id): (&str, &str),
    dir: &Path,
    icp: &Interceptor,
    mounts: &mut Vec<Mount>,
    env: &mut Vec<String>,
) -> Result<(), Error> {
    let mut bundle = image_files(engine, image, image_id, &[SYSTEM_BUNDLE])
        .await?
        .pop()
        .flatten()
        .unwrap_or_default();
    if !bundle.is_empty() && !bundle.ends_with(b"\n") {
        bundle.push(b'\n');
    }
    bundle.extend_from_slice(icp.ca_pem().as_bytes());
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, icp.ca_pem()).map_err(|e| Error::io("write", &ca, e))?;
    let path = dir.join("ca-bundle.crt");
    std::fs::write(&path, &bundle).map_err(|e| Error::io("write", &path, e))?;
    mounts.push(Mount {
        host: path,
        container: SYSTEM_BUNDLE.into(),
        read_only: true,
    });
    for k in [
        "SSL_CERT_FILE",
        "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
        "PIP_CERT",
        "GIT_SSL_CAINFO",
    ] {
        env.push(format!("{k}={SYSTEM_BUNDLE}"));
    }
    env.push(format!("NODE_EXTRA_CA_CERTS={NET_DIR}/ca.pem"));
    for (name, placeholder) in icp.placeholders() {
        env.push(format!("{name}={placeholder}"));
    }
    Ok(())
}

/// Writes `text` as `name` in the sandbox's host directory `dir`: a
/// read-only mount over `/etc/NAME`.
fn etc_file(dir: &Path, name: &str, text: &[u8]) -> Result<Mount, Error> {
    let path = dir.join(name);
    std::fs::write(&path, text).map_err(|e| Error::io("write", &path, e))?;
    Ok(Mount {
        host: path,
        container: format!("/etc/{name}"),
        read_only: true,
    })
}

/// Files of `image` (`None` where it has none). An image's files never
/// change under its ID (a content hash), so each is read from the engine
/// once, through one container for all those missing, and kept in memory
/// and in the caller's cache directory (a CLI run is a new process each
/// time; reading costs a container create and remove, about 80 ms here).
async fn image_files(
    engine: &Engine,
    image: &str,
    image_id: &str,
    paths: &[&'static str],
) -> Result<Vec<Option<Vec<u8>>>, Error> {
    type Cache = HashMap<(String, &'static str), Option<Vec<u8>>>;
    static CACHE: OnceLock<Mutex<Cache>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    // Without an ID (an engine that gave none) nothing is kept on disk.
    let hex = image_id.strip_prefix("sha256:").unwrap_or(image_id);
    let on_disk = (!hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| crate::workspace::cache_dir().join("image-files"))
        .filter(|d| private_dir(d))
        .map(|d| d.join(hex));
    let key = |p: &'static str| (if hex.is_empty() { image } else { hex }.to_owned(), p);
    // "+" marks a file the image has, "-" one it has not.
    let disk_name = |p: &str| p.trim_start_matches('/').replace('/', "%");
    let cached = |p: &'static str| -> Option<Option<Vec<u8>>> {
        if let Some(f) = cache.lock().ok()?.get(&key(p)) {
            return Some(f.clone());
        }
        let stored = std::fs::read(on_disk.as_ref()?.join(disk_name(p))).ok()?;
        let f = match stored.split_first()? {
            (b'+', data) => Some(data.to_vec()),
            (b'-', []) => None,
            _ => return None,
        };
        cache.lock().ok()?.insert(key(p), f.clone());
        Some(f)
    };
    let missing: Vec<&'static str> = paths
        .iter()
        .copied()
        .filter(|p| cached(p).is_none())
        .collect();
    if !missing.is_empty() {
        let read = engine.image_files(image, &missing).await?;
        if let Some(dir) = &on_disk {
            let _ = std::fs::create_dir_all(dir);
        }
        for (p, f) in missing.into_iter().zip(read) {
            if let Some(dir) = &on_disk {
                let mut stored = vec![if f.is_some() { b'+' } else { b'-' }];
                stored.extend_from_slice(f.as_deref().unwrap_or_default());
                // Written aside and renamed: a reader never sees half a file.
                let tmp = dir.join(format!(".{}.{}", disk_name(p), new_id()));
                if std::fs::write(&tmp, &stored)
                    .and_then(|()| std::fs::rename(&tmp, dir.join(disk_name(p))))
                    .is_err()
                {
                    let _ = std::fs::remove_file(&tmp);
                }
            }
            if let Ok(mut c) = cache.lock() {
                c.insert(key(p), f);
            }
        }
    }
    Ok(paths.iter().map(|p| cached(p).flatten()).collect())
}

/// `/etc/passwd` and `/etc/group` for a sandbox running as `uid:gid`: the
/// image's own, with a `sandbox` entry added for an id they do not name
/// (`ssh` refuses to run without one: "No user exists for uid"). `None`
/// for a file that already names the id: the image's stays as it is.
fn identity_files(
    passwd: Option<&[u8]>,
    group: Option<&[u8]>,
    (uid, gid): (u32, u32),
) -> [Option<Vec<u8>>; 2] {
    fn add(
        file: Option<&[u8]>,
        id: u32,
        fallback: &str,
        line: impl Fn(&str) -> String,
    ) -> Option<Vec<u8>> {
        let text = String::from_utf8_lossy(file.unwrap_or(fallback.as_bytes())).into_owned();
        let fields = |l: &str| l.split(':').map(str::to_owned).collect::<Vec<_>>();
        let entries: Vec<Vec<String>> = text.lines().map(fields).collect();
        if entries
            .iter()
            .any(|f| f.get(2).and_then(|i| i.parse().ok()) == Some(id))
        {
            return None;
        }
        let taken = |n: &str| entries.iter().any(|f| f[0] == n);
        let name = if taken("sandbox") {
            format!("sandbox-{id}")
        } else {
            "sandbox".to_owned()
        };
        let mut out = text;
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(&line(&name));
        Some(out.into_bytes())
    }
    [
        add(passwd, uid, "root:x:0:0:root:/root:/bin/sh\n", |n| {
            format!("{n}:x:{uid}:{gid}:agent-sandbox:/tmp:/bin/sh\n")
        }),
        add(group, gid, "root:x:0:\n", |n| format!("{n}:x:{gid}:\n")),
    ]
}

/// Creates `path` (it must not exist) readable and writable by its owner only.
fn write_private(path: &Path, data: &[u8]) -> Result<(), Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(data))
        .map_err(|e| Error::io("write", path, e))
}

fn non_empty_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|s| !s.is_empty())
}

fn sandbox_env(user: &[(String, String)]) -> Vec<String> {
    let proxy = format!("http://127.0.0.1:{PROXY_PORT}");
    let mut env = vec![
        "HOME=/tmp".to_owned(),
        "XDG_CACHE_HOME=/tmp/.cache".to_owned(),
        "npm_config_cache=/tmp/.npm".to_owned(),
        "PIP_CACHE_DIR=/tmp/.cache/pip".to_owned(),
        "CARGO_HOME=/tmp/.cargo".to_owned(),
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
    ];
    for k in [
        "HTTP_PROXY",
        "http_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
    ] {
        env.push(format!("{k}={proxy}"));
    }
    // Node 22.x reads the proxy variables only when told to (its `fetch`
    // ignores them otherwise; capture covers the versions before).
    env.push("NODE_USE_ENV_PROXY=1".into());
    env.push("NO_PROXY=localhost,127.0.0.1,::1".into());
    env.push("no_proxy=localhost,127.0.0.1,::1".into());
    env.extend(user.iter().map(|(k, v)| format!("{k}={v}")));
    env
}

fn new_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    format!("{:012x}", h.finish() & 0xffff_ffff_ffff)
}

/// The engine's pids limit for a gVisor sandbox of `pids`. The cgroup
/// counts gVisor's host threads, not the sandbox's processes: about 70 of
/// the runtime's own, then (on its ptrace platform) two per thread inside,
/// a tracer and a stub. When the runtime cannot get a thread it dies and
/// takes the sandbox with it, so the limit is scaled to keep about `pids`
/// threads inside, with room for the runtime.
fn gvisor_pids(pids: i64) -> i64 {
    pids.saturating_mul(2).saturating_add(128)
}

/// Whether an engine runtime name is gVisor's (`runsc`, or a name with
/// `runsc` or `gvisor` in it, as people register variants).
fn is_gvisor(runtime: &str) -> bool {
    let r = runtime.to_ascii_lowercase();
    r.contains("runsc") || r.contains("gvisor")
}

fn mount_mismatch_error(checked: &[CheckedDir], message: &[u8]) -> Error {
    let text = String::from_utf8_lossy(message);
    let detail = text
        .strip_prefix(MOUNT_MISMATCH_TEXT)
        .unwrap_or(&text)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();
    Error::Workspace {
        path: checked.first().map(|c| c.path.clone()).unwrap_or_default(),
        reason: format!("was replaced while the sandbox started, so the sandbox was ended before anything ran in it ({detail})"),
    }
}

/// Who the sandbox runs as when the caller does not say: the caller, or,
/// for a root caller, the workspace's owner (never root: a root sandbox's
/// files in the workspace would be root's on the host) or `nobody` when
/// there is no workspace.
fn default_user(caller: (u32, u32), workspace: Option<&CheckedDir>) -> Result<String, Error> {
    if caller.0 != 0 {
        return Ok(format!("{}:{}", caller.0, caller.1));
    }
    match workspace {
        None => Ok(format!("{NOBODY}:{NOBODY}")),
        Some(ws) if ws.uid != 0 => Ok(format!("{}:{}", ws.uid, ws.gid)),
        Some(ws) => Err(Error::Workspace {
            path: ws.path.clone(),
            reason: format!(
                "is owned by root, and a sandbox never runs as root unless asked: give it to the user the sandbox should run as (chown -R 1000:1000 {}), or ask for root explicitly with user(\"0:0\") (--user 0:0)",
                ws.path.display()
            ),
        }),
    }
}

/// `nobody`, the sandbox user of a root caller with no workspace.
const NOBODY: u32 = 65534;

fn numeric_ids(user: &str) -> Option<(u32, u32)> {
    let (u, g) = user.split_once(':').unwrap_or((user, user));
    Some((u.parse().ok()?, g.parse().ok()?))
}

/// Lets the sandbox user connect to a host socket it does not own: given
/// to that user when we can (a root caller), else opened to everyone (the
/// directory holding it is not listable).
pub(crate) fn share_socket(path: &Path, ids: Option<(u32, u32)>) -> Result<(), Error> {
    let given = ids.is_some_and(|(u, g)| std::os::unix::fs::chown(path, Some(u), Some(g)).is_ok());
    let mode = if given { 0o600 } else { 0o666 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io("set permissions of", path, e))?;
    Ok(())
}

/// A per-sandbox host directory (proxy socket, exec socket); removed on drop.
pub(crate) struct SandboxDir(pub(crate) PathBuf);

impl SandboxDir {
    /// `agent-sandbox-ID-WHAT-OWNER`: the owner part (pid and start time)
    /// lets `gc` remove the directories of processes that died (SIGKILL).
    fn create(id: &str, what: &str) -> Result<SandboxDir, Error> {
        let name = format!(
            "agent-sandbox-{id}-{what}-{}",
            crate::runtime::owner_dir_tag()
        );
        let path = std::env::temp_dir().join(name);
        std::fs::create_dir(&path).map_err(|e| Error::io("create", &path, e))?;
        let dir = SandboxDir(path);
        // Traversable (not listable) by the sandbox user if it differs from
        // the caller. On failure `dir` is dropped, which removes it.
        std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o711))
            .map_err(|e| Error::io("set permissions of", &dir.0, e))?;
        Ok(dir)
    }
}

impl Drop for SandboxDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Removes the container however the run ends; if the run's future is
/// dropped mid-way, removal continues on a background task.
pub(crate) struct ContainerGuard {
    engine: Engine,
    id: Option<String>,
}

impl ContainerGuard {
    /// Creates the container of `spec`, guarded from here on.
    pub(crate) async fn create(engine: &Engine, spec: &ContainerSpec) -> Result<Self, Error> {
        Ok(ContainerGuard {
            engine: engine.clone(),
            id: Some(engine.create(spec).await?),
        })
    }

    pub(crate) fn id(&self) -> &str {
        self.id.as_deref().unwrap_or_default()
    }

    /// The container id, no longer guarded (its owner removes it).
    pub(crate) fn keep(mut self) -> String {
        self.id.take().unwrap_or_default()
    }

    pub(crate) async fn remove(mut self) {
        if let Some(id) = self.id.take() {
            let _ = self.engine.remove(&id).await;
        }
    }
}

impl Drop for ContainerGuard {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            self.engine.remove_in_background(id);
        }
    }
}

/// Raises the soft open-files limit to the hard one, once, as servers do:
/// every sandbox holds sockets for its proxy and exec channel, and the
/// common soft limit of 1024 lets one busy sandbox starve the others.
fn raise_fd_limit_once() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
        let limit = getrlimit(Resource::Nofile);
        if limit.current < limit.maximum {
            let _ = setrlimit(
                Resource::Nofile,
                Rlimit {
                    current: limit.maximum,
                    maximum: limit.maximum,
                },
            );
        }
    });
}

/// The proxy limits, with the connection cap cut to a thirty-second of the
/// open-files limit (each connection holds two descriptors, so at most a
/// sixteenth of them, never fewer than 8 connections): however low
/// the limit, one sandbox's connections cannot starve the others or the
/// caller. With the usual hard limit (tens of thousands and more) the
/// configured cap (1024 by default) stands.
fn fair_limits(mut limits: Limits) -> Limits {
    let files = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX);
    let share = usize::try_from(files / 32).unwrap_or(usize::MAX).max(8);
    limits.max_connections = limits.max_connections.min(share);
    limits
}

/// The first sandbox of a process removes, in the background, containers
/// left by processes that died without cleaning up (SIGKILL, a crash, power
/// loss): the same as `agent-sandbox gc`. `AGENT_SANDBOX_GC=off` turns it
/// off (for a process that runs `gc` itself, and for tests that must know
/// which collection removed what).
fn collect_orphans_once(engine: &Engine) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    if std::env::var("AGENT_SANDBOX_GC").is_ok_and(|v| v == "off") {
        return;
    }
    ONCE.call_once(|| {
        let engine = engine.clone();
        tokio::spawn(async move {
            let _ = crate::runtime::gc(&engine).await;
        });
    });
}

/// Creates `dir` (0700) if absent; whether only this user can change it
/// and the directory above it, so what is read back from it is what this
/// user wrote (a cache under a shared `/tmp`, or one a sandbox could
/// write through its workspace, is not used).
fn private_dir(dir: &Path) -> bool {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let _ = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir);
    let me = rustix::process::geteuid().as_raw();
    let ours = |d: &Path| {
        std::fs::symlink_metadata(d)
            .is_ok_and(|m| m.is_dir() && m.uid() == me && m.mode() & 0o022 == 0)
    };
    ours(dir) && dir.parent().is_some_and(ours)
}

/// Our seccomp profile as a file in the cache directory (for Podman).
fn seccomp_file() -> Result<PathBuf, Error> {
    let profile = crate::runtime::SECCOMP_PROFILE.as_bytes();
    let dir = crate::workspace::cache_dir();
    let path = dir.join(format!("seccomp-{}.json", env!("CARGO_PKG_VERSION")));
    if std::fs::read(&path).is_ok_and(|b| b == profile) {
        return Ok(path);
    }
    std::fs::create_dir_all(&dir).map_err(|e| Error::io("create", &dir, e))?;
    let tmp = dir.join(format!(".seccomp-{}", new_id()));
    std::fs::write(&tmp, profile)
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|e| Error::io("write", &path, e))?;
    Ok(path)
}

/// Writes the embedded init binary to the cache directory (once per
/// version) and returns its path.
fn init_binary() -> Result<PathBuf, Error> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    INIT_BINARY.hash(&mut h);
    let name = format!("init-{}-{:016x}", env!("CARGO_PKG_VERSION"), h.finish());
    let base = crate::workspace::cache_dir();
    let path = base.join(&name);
    if std::fs::read(&path).is_ok_and(|b| b == INIT_BINARY) {
        return Ok(path);
    }
    std::fs::create_dir_all(&base).map_err(|e| Error::io("create", &base, e))?;
    let tmp = base.join(format!("{name}.{}.tmp", new_id())); // unique: runs race on first use
    let written = std::fs::write(&tmp, INIT_BINARY)
        .and_then(|()| std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)))
        .and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(e) = written {
        // Out of space or descriptors: leave no half-written file behind.
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io("write", &path, e));
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::identity_files;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin";
    const GROUP: &str = "root:x:0:\nnogroup:x:65534:\n";

    fn text(f: &Option<Vec<u8>>) -> &str {
        std::str::from_utf8(f.as_deref().unwrap()).unwrap()
    }

    #[test]
    fn ids_the_image_names_keep_its_files() {
        let [p, g] = identity_files(
            Some(PASSWD.as_bytes()),
            Some(GROUP.as_bytes()),
            (65534, 65534),
        );
        assert!(p.is_none() && g.is_none());
        let [p, g] = identity_files(
            Some(PASSWD.as_bytes()),
            Some(GROUP.as_bytes()),
            (65534, 4242),
        );
        assert!(p.is_none());
        assert_eq!(text(&g), format!("{GROUP}sandbox:x:4242:\n"));
    }

    #[test]
    fn other_ids_get_a_sandbox_entry_after_the_images() {
        let [p, g] = identity_files(
            Some(PASSWD.as_bytes()),
            Some(GROUP.as_bytes()),
            (1000, 1000),
        );
        assert_eq!(
            text(&p),
            format!("{PASSWD}\nsandbox:x:1000:1000:agent-sandbox:/tmp:/bin/sh\n")
        );
        assert_eq!(text(&g), format!("{GROUP}sandbox:x:1000:\n"));
        // A name the image already uses is not taken twice.
        let mine = format!("{PASSWD}\nsandbox:x:999:999::/:/bin/sh\n");
        let [p, _] = identity_files(Some(mine.as_bytes()), None, (1000, 1000));
        assert!(text(&p).ends_with("\nsandbox-1000:x:1000:1000:agent-sandbox:/tmp:/bin/sh\n"));
        // An image without the files gets root's line and the sandbox's.
        let [p, g] = identity_files(None, None, (7, 8));
        assert_eq!(
            text(&p),
            "root:x:0:0:root:/root:/bin/sh\nsandbox:x:7:8:agent-sandbox:/tmp:/bin/sh\n"
        );
        assert_eq!(text(&g), "root:x:0:\nsandbox:x:8:\n");
    }
}
