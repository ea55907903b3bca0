//! Creating, running and removing one hardened container.

use std::collections::HashMap;
use std::path::PathBuf;

use bollard::container::LogOutput;
use bollard::models::{
    ContainerCreateBody, HostConfig, HostConfigLogConfig, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    AttachContainerOptions, CreateContainerOptions, DownloadFromContainerOptions,
    InspectContainerOptions, KillContainerOptions, RemoveContainerOptions,
};
use bytes::Bytes;
use futures_util::StreamExt;

use super::Engine;
use crate::Error;

/// A host path bind-mounted into the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Canonical host path.
    pub host: PathBuf,
    /// Absolute path inside the container.
    pub container: String,
    /// Read-only unless explicitly asked otherwise.
    pub read_only: bool,
}

/// An engine volume mounted into the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeMount {
    /// The volume's name on the engine.
    pub name: String,
    /// Absolute path inside the container.
    pub container: String,
    /// Read-only unless explicitly asked otherwise.
    pub read_only: bool,
}

/// Resource limits; each becomes a field of `docker inspect`'s `HostConfig`.
#[derive(Debug, Clone, PartialEq)]
pub struct Resources {
    /// Memory limit in bytes (swap is set equal: no swap).
    pub memory: i64,
    /// CPUs (fractional allowed).
    pub cpus: f64,
    /// Maximum number of processes/threads.
    pub pids: i64,
    /// Size of the `/tmp` tmpfs in bytes.
    pub tmp_size: u64,
    /// Size of `/dev/shm` in bytes.
    pub shm_size: i64,
}

/// Everything needed to create a sandbox container.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    /// Image reference.
    pub image: String,
    /// Entrypoint and arguments (the init plus the command).
    pub argv: Vec<String>,
    /// `KEY=VALUE` pairs.
    pub env: Vec<String>,
    /// `uid:gid`.
    pub user: String,
    /// Working directory inside the container.
    pub working_dir: String,
    /// Bind mounts (workspace, init, proxy socket directory, extras).
    pub mounts: Vec<Mount>,
    /// Engine volumes (a sandbox on an engine that does not share the
    /// caller's files: the gateway's directory, the workspace).
    pub volumes: Vec<VolumeMount>,
    /// `/etc/resolv.conf` and `/etc/hosts` from the engine (pointing at
    /// init's resolver), where they cannot be host files.
    pub engine_dns: bool,
    /// Stdin kept open for an attach (the gateway's relay).
    pub stdin: bool,
    /// Our seccomp profile as a file on the engine's machine, for engines
    /// that take only a path (Podman); `None`: sent inline (Docker).
    pub seccomp_file: Option<PathBuf>,
    /// Extra tmpfs mounts beyond `/tmp` and `/run` (path to size in bytes).
    pub extra_tmpfs: Vec<(String, u64)>,
    /// Directories covered by an empty read-only tmpfs: Podman mounts a
    /// writable tmpfs at `/var/tmp` of a read-only container unless
    /// something else is mounted there (its `read-only-tmpfs` default).
    pub read_only_tmpfs: Vec<String>,
    /// Limits.
    pub resources: Resources,
    /// Labels (owner, id).
    pub labels: HashMap<String, String>,
    /// The OCI runtime (`runsc` for gVisor); `None` is the engine's default.
    pub runtime: Option<String>,
}

/// Our seccomp profile: Docker 20.10's default without `io_uring_*`, with
/// `openat2` answered `ENOSYS` (libc falls back to `openat`), and with
/// `chmod`/`fchmod`/`fchmodat`/`creat`/`mknod`/`mknodat`/`open`/`openat`
/// allowed only without setuid/setgid bits in their mode.
pub const SECCOMP_PROFILE: &str = include_str!("seccomp.json");

impl ContainerSpec {
    fn to_body(&self) -> ContainerCreateBody {
        let mode = |ro: bool| if ro { "ro" } else { "rw" };
        let binds = self
            .mounts
            .iter()
            .map(|m| format!("{}:{}:{}", m.host.display(), m.container, mode(m.read_only)))
            .chain(
                self.volumes
                    .iter()
                    .map(|v| format!("{}:{}:{}", v.name, v.container, mode(v.read_only))),
            )
            .collect();
        let mut tmpfs = HashMap::from([
            (
                "/tmp".to_owned(),
                // noexec said, not assumed: Docker adds it, Podman does not.
                format!(
                    "rw,nosuid,nodev,noexec,size={},mode=1777",
                    self.resources.tmp_size
                ),
            ),
            (
                "/run".to_owned(),
                "rw,nosuid,nodev,noexec,size=16777216,mode=755".to_owned(),
            ),
        ]);
        // A scratch workspace allows exec, like a bind-mounted one (a venv,
        // node_modules/.bin); /tmp does not.
        for (path, size) in &self.extra_tmpfs {
            tmpfs.insert(
                path.clone(),
                format!("rw,nosuid,nodev,exec,size={size},mode=1777"),
            );
        }
        for path in &self.read_only_tmpfs {
            tmpfs.insert(
                path.clone(),
                "ro,nosuid,nodev,noexec,size=4096,mode=755".to_owned(),
            );
        }
        let host = HostConfig {
            binds: Some(binds),
            readonly_rootfs: Some(true),
            tmpfs: Some(tmpfs),
            shm_size: Some(self.resources.shm_size),
            cap_drop: Some(vec!["ALL".into()]),
            security_opt: Some(vec![
                "no-new-privileges".into(),
                match &self.seccomp_file {
                    Some(path) => format!("seccomp={}", path.display()),
                    None => format!("seccomp={SECCOMP_PROFILE}"),
                },
            ]),
            runtime: self.runtime.clone(),
            network_mode: Some("none".into()),
            // The sandbox's own network namespace only: init binds DNS (53)
            // and capture ports (80, 443) without any capability.
            sysctls: Some(HashMap::from([(
                "net.ipv4.ip_unprivileged_port_start".to_owned(),
                "0".to_owned(),
            )])),
            pids_limit: Some(self.resources.pids),
            memory: Some(self.resources.memory),
            memory_swap: Some(self.resources.memory),
            nano_cpus: Some((self.resources.cpus * 1e9) as i64),
            privileged: Some(false),
            publish_all_ports: Some(false),
            ipc_mode: Some("private".into()),
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::NO),
                maximum_retry_count: None,
            }),
            log_config: Some(HostConfigLogConfig {
                typ: Some("none".into()),
                config: None,
            }),
            auto_remove: Some(false),
            init: Some(false),
            // Init answers DNS on 127.0.0.53 (see launch.rs's RESOLV_CONF).
            dns: self.engine_dns.then(|| vec!["127.0.0.53".into()]),
            dns_options: self
                .engine_dns
                .then(|| vec!["timeout:2".into(), "attempts:2".into()]),
            extra_hosts: self.engine_dns.then(|| vec!["sandbox:127.0.1.1".into()]),
            ..Default::default()
        };
        ContainerCreateBody {
            image: Some(self.image.clone()),
            entrypoint: Some(self.argv[..1].to_vec()),
            cmd: Some(self.argv[1..].to_vec()),
            env: Some(self.env.clone()),
            user: Some(self.user.clone()),
            working_dir: Some(self.working_dir.clone()),
            labels: Some(self.labels.clone()),
            hostname: Some("sandbox".into()),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            attach_stdin: Some(self.stdin),
            open_stdin: Some(self.stdin),
            stdin_once: Some(self.stdin),
            tty: Some(false),
            network_disabled: Some(false),
            host_config: Some(host),
            ..Default::default()
        }
    }
}

/// Which stream a chunk of output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stream {
    Stdout,
    Stderr,
}

/// How the container ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Exit {
    pub(crate) code: i64,
    pub(crate) oom_killed: bool,
}

/// Which limits asked for in `asked` the engine's read-back `host` lacks:
/// `None` when both the memory and the pids limit are there.
fn dropped_limits(host: &bollard::models::HostConfig, asked: &Resources) -> Option<&'static str> {
    let kept = |v: Option<i64>, want: i64| want <= 0 || v.is_some_and(|v| v > 0);
    match (
        kept(host.memory, asked.memory),
        kept(host.pids_limit, asked.pids),
    ) {
        (true, true) => None,
        (false, true) => Some("memory limit"),
        (true, false) => Some("pids limit"),
        (false, false) => Some("memory and pids limits"),
    }
}

impl Engine {
    /// Creates the container (not started).
    ///
    /// A sandbox's container is named after its id (`agent-sandbox-ID`, a
    /// gateway `agent-sandbox-ID-gateway`), which makes a retry safe: a
    /// request that met a connection the engine closed at that moment
    /// (hyper's "connection closed before message completed", seen over
    /// TCP with 50 sessions starting at once) is sent again, and a
    /// conflict then means the first one did create it.
    pub(crate) async fn create(&self, spec: &ContainerSpec) -> Result<String, Error> {
        use bollard::errors::Error as E;
        let name = match (
            spec.labels.get(super::labels::ID),
            spec.labels.get(super::labels::GATEWAY),
        ) {
            (Some(id), _) => Some(format!("agent-sandbox-{id}")),
            (None, Some(id)) => Some(format!("agent-sandbox-{id}-gateway")),
            (None, None) => None,
        };
        let opts = CreateContainerOptions {
            name: name.clone(),
            ..Default::default()
        };
        let mut retried = false;
        loop {
            match self
                .docker
                .create_container(Some(opts.clone()), spec.to_body())
                .await
            {
                Ok(resp) => {
                    self.check_limits_kept(&resp.id, spec).await?;
                    return Ok(resp.id);
                }
                Err(E::HyperLegacyError { .. }) if !retried && name.is_some() => retried = true,
                Err(E::DockerResponseServerError {
                    status_code: 409, ..
                }) if retried => {
                    let name = name.as_deref().unwrap_or_default();
                    let found = self
                        .docker
                        .inspect_container(name, None::<InspectContainerOptions>)
                        .await
                        .map_err(|e| self.err("create the container", e))?;
                    return Ok(found.id.unwrap_or_default());
                }
                Err(E::DockerResponseServerError {
                    status_code: 404,
                    message,
                }) => {
                    return Err(Error::ImageNotFound {
                        image: spec.image.clone(),
                        reason: message,
                    })
                }
                Err(other) => return Err(self.err("create the container", other)),
            }
        }
    }

    /// Refuses an engine that drops a sandbox's memory or pids limit
    /// (rootless Podman on cgroup v1 does, saying so only in its own log:
    /// the create answer has no warning and `/info` claims support): the
    /// first container of each endpoint and runtime in a process is read
    /// back, and if a limit asked for is not there it is removed and the
    /// launch fails. A box without its limits is never given silently.
    async fn check_limits_kept(&self, id: &str, spec: &ContainerSpec) -> Result<(), Error> {
        static CHECKED: std::sync::OnceLock<std::sync::Mutex<std::collections::HashSet<String>>> =
            std::sync::OnceLock::new();
        let key = format!("{} {}", self.host(), spec.runtime.as_deref().unwrap_or(""));
        let checked = CHECKED.get_or_init(Default::default);
        if checked.lock().is_ok_and(|c| c.contains(&key)) {
            return Ok(());
        }
        let host = self
            .docker
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
            .map_err(|e| self.err("inspect the new container", e))?
            .host_config
            .unwrap_or_default();
        if let Some(dropped) = dropped_limits(&host, &spec.resources) {
            let _ = self.remove(id).await;
            return Err(self.err_msg(
                "create the container",
                format!("the engine dropped the sandbox's {dropped} (rootless on cgroup v1 cannot enforce them), so the box would not hold; use a rootful engine, or a host with cgroup v2"),
            ));
        }
        if let Ok(mut c) = checked.lock() {
            c.insert(key);
        }
        Ok(())
    }

    /// The bytes of each regular file of `paths` in `image` (following at
    /// most a few symbolic links), `None` where the image has no such file.
    /// Read through one container that is created, never started, and removed.
    pub(crate) async fn image_files(
        &self,
        image: &str,
        paths: &[&str],
    ) -> Result<Vec<Option<Vec<u8>>>, Error> {
        let body = ContainerCreateBody {
            image: Some(image.to_owned()),
            cmd: Some(vec!["/nonexistent".to_owned()]),
            labels: Some(HashMap::from([
                (super::labels::MANAGED.to_owned(), "1".to_owned()),
                (
                    super::labels::OWNER.to_owned(),
                    super::gc::owner_label_value(),
                ),
            ])),
            network_disabled: Some(true),
            ..Default::default()
        };
        let id = self
            .docker
            .create_container(None::<CreateContainerOptions>, body)
            .await
            .map_err(|e| self.err("read files from the image", e))?
            .id;
        let mut files = Vec::with_capacity(paths.len());
        for path in paths {
            files.push(self.container_file(&id, path).await);
        }
        let _ = self.remove(&id).await;
        Ok(files)
    }

    /// The regular file `path` in container `id`, following at most a few
    /// symbolic links; `None` if there is none.
    async fn container_file(&self, id: &str, path: &str) -> Option<Vec<u8>> {
        let mut path = path.to_owned();
        for _ in 0..4 {
            let mut tar = Vec::new();
            let mut stream = self.docker.download_from_container(
                id,
                Some(DownloadFromContainerOptions { path: path.clone() }),
            );
            while let Some(chunk) = stream.next().await {
                tar.extend_from_slice(&chunk.ok()?);
            }
            match first_tar_entry(&tar)? {
                TarEntry::File(data) => return Some(data),
                TarEntry::Link(target) => {
                    path = if target.starts_with('/') {
                        target
                    } else {
                        let dir = path.rsplit_once('/').map_or("", |(d, _)| d);
                        format!("{dir}/{target}")
                    };
                }
            }
        }
        None
    }

    /// Attaches to a created container (its stdin too if `stdin`), then
    /// starts it: attached before start, so no output is missed; the log
    /// driver is `none`, so nothing is kept by the engine. `what` names it
    /// in errors ("container", "gateway").
    pub(crate) async fn attach_and_start(
        &self,
        id: &str,
        stdin: bool,
        what: &str,
    ) -> Result<bollard::container::AttachContainerResults, Error> {
        let opts = AttachContainerOptions {
            stream: true,
            stdin,
            stdout: true,
            stderr: true,
            logs: false,
            ..Default::default()
        };
        let attached = self
            .docker
            .attach_container(id, Some(opts))
            .await
            .map_err(|e| self.err(&format!("attach to the {what}"), e))?;
        self.docker
            .start_container(id, None)
            .await
            .map_err(|e| self.err(&format!("start the {what}"), e))?;
        Ok(attached)
    }

    /// Attaches to output, starts the container, and feeds every chunk of
    /// output to `on_output` until the container's streams close.
    pub(crate) async fn start_and_stream(
        &self,
        id: &str,
        mut on_output: impl FnMut(Stream, Bytes) + Send + 'static,
    ) -> Result<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>, Error> {
        let mut output = self.attach_and_start(id, false, "container").await?.output;
        Ok(Box::pin(async move {
            while let Some(Ok(chunk)) = output.next().await {
                match chunk {
                    LogOutput::StdOut { message } | LogOutput::Console { message } => {
                        on_output(Stream::Stdout, message)
                    }
                    LogOutput::StdErr { message } => on_output(Stream::Stderr, message),
                    LogOutput::StdIn { .. } => {}
                }
            }
        }))
    }

    /// Waits for the container to stop.
    pub(crate) async fn wait(&self, id: &str) -> Result<Exit, Error> {
        let mut s = self.docker.wait_container(id, None);
        let code = match s.next().await {
            Some(Ok(r)) => r.status_code,
            Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => code,
            Some(Err(e)) => return Err(self.err("wait for the container", e)),
            None => {
                return Err(Error::engine(
                    "wait for the container",
                    "the engine closed the wait stream",
                ))
            }
        };
        let oom_killed = match self.again(|| self.docker.inspect_container(id, None)).await {
            Ok(info) => info.state.and_then(|s| s.oom_killed).unwrap_or(false),
            Err(_) => false,
        };
        Ok(Exit { code, oom_killed })
    }

    /// Starts a created container without attaching (sessions).
    pub(crate) async fn start(&self, id: &str) -> Result<(), Error> {
        match self.again(|| self.docker.start_container(id, None)).await {
            // Started already: the first of two sends did it.
            Ok(())
            | Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            Err(e) => Err(self.err("start the container", e)),
        }
    }

    /// Whether the container is running.
    pub(crate) async fn is_running(&self, id: &str) -> bool {
        match self.again(|| self.docker.inspect_container(id, None)).await {
            Ok(info) => info.state.and_then(|s| s.running).unwrap_or(false),
            Err(_) => false,
        }
    }

    /// The exit code of a stopped container (`None` while it runs or if it
    /// cannot be inspected).
    pub(crate) async fn exit_code(&self, id: &str) -> Option<i64> {
        let state = self
            .again(|| self.docker.inspect_container(id, None))
            .await
            .ok()?
            .state?;
        if state.running == Some(true) {
            return None;
        }
        state.exit_code
    }

    /// `docker exec` through the API: runs `argv` as `user` in `cwd` and
    /// collects its output and exit code.
    pub(crate) async fn exec(
        &self,
        id: &str,
        argv: Vec<String>,
        user: &str,
        cwd: &str,
        limit: usize,
    ) -> Result<(i64, Vec<u8>, Vec<u8>), Error> {
        use bollard::exec::StartExecResults;
        let created = self
            .docker
            .create_exec(
                id,
                bollard::models::ExecConfig {
                    cmd: Some(argv),
                    user: Some(user.to_owned()),
                    working_dir: Some(cwd.to_owned()),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| self.err("create an exec", e))?;
        let (mut out, mut err) = (Vec::new(), Vec::new());
        if let StartExecResults::Attached { mut output, .. } = self
            .docker
            .start_exec(&created.id, None)
            .await
            .map_err(|e| self.err("start an exec", e))?
        {
            // Each stream kept up to `limit` bytes; the rest is read and dropped.
            let keep = |buf: &mut Vec<u8>, m: &[u8]| {
                let room = limit.saturating_sub(buf.len());
                buf.extend_from_slice(&m[..m.len().min(room)]);
            };
            while let Some(Ok(chunk)) = output.next().await {
                match chunk {
                    LogOutput::StdOut { message } | LogOutput::Console { message } => {
                        keep(&mut out, &message)
                    }
                    LogOutput::StdErr { message } => keep(&mut err, &message),
                    LogOutput::StdIn { .. } => {}
                }
            }
        }
        let code = self
            .docker
            .inspect_exec(&created.id)
            .await
            .map_err(|e| self.err("inspect an exec", e))?
            .exit_code
            .unwrap_or(-1);
        Ok((code, out, err))
    }

    /// Sends SIGKILL (ignores "not running").
    pub(crate) async fn kill(&self, id: &str) {
        let kill = || {
            self.docker.kill_container(
                id,
                Some(KillContainerOptions {
                    signal: "KILL".into(),
                }),
            )
        };
        let _ = self.again(kill).await;
    }

    /// Removes the container without waiting, for `Drop`: on the current
    /// tokio runtime if there is one; otherwise on a thread of its own with a
    /// fresh engine connection (the caller's runtime, and the connections
    /// pooled on it, may be gone).
    pub(crate) fn remove_in_background(&self, id: String) {
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let engine = self.clone();
            rt.spawn(async move {
                let _ = engine.remove(&id).await;
            });
            return;
        }
        let _ = std::thread::Builder::new()
            .name("agent-sandbox-cleanup".into())
            .spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                rt.block_on(async {
                    if let Ok(engine) = Engine::connect().await {
                        let _ = engine.remove(&id).await;
                    }
                });
            });
    }

    /// Removes the container, killing it if needed.
    ///
    /// On Podman it is killed first: Podman's forced remove of a running
    /// container stops it (SIGTERM, which init ignores, then SIGKILL after
    /// the stop timeout), and Podman 4.3's API then sometimes never
    /// answers the remove at all (seen with pool spares: the request hung
    /// until another call touched the container).
    pub(crate) async fn remove(&self, id: &str) -> Result<(), Error> {
        if self.kind() == super::EngineKind::Podman {
            self.kill(id).await;
        }
        let remove = || {
            self.docker.remove_container(
                id,
                Some(RemoveContainerOptions {
                    force: true,
                    v: true,
                    ..Default::default()
                }),
            )
        };
        // Podman refuses to remove a container it is still stopping (a
        // kill just sent, one killed from outside): seen as exited
        // containers left behind by pools and dropped sandboxes. A few
        // more tries, a moment apart.
        let mut tries = 0;
        loop {
            match self.again(remove).await {
                Ok(())
                | Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 404, ..
                }) => return Ok(()),
                Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 409 | 500,
                    ..
                }) if self.kind() == super::EngineKind::Podman && tries < 10 => {
                    tries += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
                Err(e) => return Err(self.err("remove the container", e)),
            }
        }
    }
}

enum TarEntry {
    File(Vec<u8>),
    Link(String),
}

/// The first entry of a tar archive: a regular file's bytes or a symbolic
/// link's target (what the engine's archive endpoint returns for one path).
fn first_tar_entry(tar: &[u8]) -> Option<TarEntry> {
    let head = tar.get(..512)?;
    let field = |from: usize, len: usize| {
        let f = &head[from..from + len];
        let end = f.iter().position(|&b| b == 0).unwrap_or(len);
        String::from_utf8_lossy(&f[..end]).trim().to_owned()
    };
    let size = usize::from_str_radix(&field(124, 12), 8).ok()?;
    match head[156] {
        b'0' | 0 => Some(TarEntry::File(tar.get(512..512 + size)?.to_vec())),
        b'2' => Some(TarEntry::Link(field(157, 100))),
        _ => None,
    }
}

#[cfg(test)]
mod tar_tests {
    use super::*;

    fn header(name: &str, size: usize, kind: u8, link: &str) -> Vec<u8> {
        let mut h = vec![0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        let size = format!("{size:011o}");
        h[124..135].copy_from_slice(size.as_bytes());
        h[156] = kind;
        h[157..157 + link.len()].copy_from_slice(link.as_bytes());
        h
    }

    #[test]
    fn the_first_entry_is_a_file_or_a_link() {
        let mut tar = header("ca.crt", 5, b'0', "");
        tar.extend_from_slice(b"hello");
        tar.resize(1024, 0);
        assert!(matches!(first_tar_entry(&tar), Some(TarEntry::File(d)) if d == b"hello"));
        let tar = header("cert.pem", 0, b'2', "/etc/ssl/certs/ca-certificates.crt");
        assert!(
            matches!(first_tar_entry(&tar), Some(TarEntry::Link(t)) if t == "/etc/ssl/certs/ca-certificates.crt")
        );
        assert!(first_tar_entry(b"short").is_none());
        let truncated = header("x", 100, b'0', "");
        assert!(first_tar_entry(&truncated).is_none());
    }
}

#[cfg(test)]
mod limits_tests {
    use super::*;

    /// What rootless Podman on cgroup v1 reads back (limits zeroed) is
    /// refused, naming what was dropped; an engine that kept them is not.
    #[test]
    fn dropped_limits_are_named() {
        let asked = Resources {
            memory: 512 << 20,
            cpus: 1.0,
            pids: 256,
            tmp_size: 1 << 20,
            shm_size: 1 << 20,
        };
        let read_back = |memory, pids_limit| bollard::models::HostConfig {
            memory,
            pids_limit,
            ..Default::default()
        };
        assert_eq!(
            dropped_limits(&read_back(Some(512 << 20), Some(256)), &asked),
            None
        );
        assert_eq!(
            dropped_limits(&read_back(Some(0), Some(0)), &asked),
            Some("memory and pids limits")
        );
        assert_eq!(
            dropped_limits(&read_back(None, Some(256)), &asked),
            Some("memory limit")
        );
        assert_eq!(
            dropped_limits(&read_back(Some(512 << 20), None), &asked),
            Some("pids limit")
        );
        let none_asked = Resources {
            memory: 0,
            pids: 0,
            ..asked
        };
        assert_eq!(dropped_limits(&read_back(None, None), &none_asked), None);
    }
}
