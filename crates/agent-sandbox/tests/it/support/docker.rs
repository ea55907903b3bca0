//! Helpers of the Docker-backed test modules (`docker`, `session`, `pool`).

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use agent_sandbox::runtime::labels;
use agent_sandbox::{Sandbox, SandboxBuilder};
use bollard::query_parameters::ListContainersOptions;
use bollard::Docker;
use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// The pool tests count (and one kills) this process's containers by its
/// owner label, so none of this process's other containers may exist while
/// one runs: a pool test holds [`engine_alone`], every other test that
/// starts containers holds [`engine_shared`] (they run side by side).
static ENGINE: RwLock<()> = RwLock::const_new(());

/// Held by a test that starts containers, for its whole run.
pub async fn engine_shared() -> RwLockReadGuard<'static, ()> {
    ENGINE.read().await
}

/// Held by a pool test, for its whole run: it waits for the other tests'
/// containers and runs alone.
pub async fn engine_alone() -> RwLockWriteGuard<'static, ()> {
    ENGINE.write().await
}

/// The image under test: `AGENT_SANDBOX_IMAGE` (set by `make test`), else the local base image.
pub fn image() -> String {
    std::env::var("AGENT_SANDBOX_IMAGE").unwrap_or_else(|_| "agent-sandbox/base:bookworm".into())
}

/// A builder on the image under test.
pub fn sandbox() -> SandboxBuilder {
    Sandbox::builder().image(image())
}

/// A container the test made itself, removed when this is dropped (a
/// failed assertion included) with the `docker` CLI, which reads
/// `DOCKER_HOST` and the TLS variables as the tests do.
pub struct RemoveOnDrop(pub String);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker")
            .args(["rm", "-f", &self.0])
            .output();
    }
}

/// A fresh, empty host directory named after `tag`.
pub fn tempdir(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let d = std::env::temp_dir().join(format!(
        "as-it-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&d).unwrap();
    // A root caller's sandbox runs as the workspace's owner and refuses a
    // root-owned workspace: give it to an ordinary user, as a CI job would.
    if std::fs::metadata(&d).is_ok_and(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0) {
        std::os::unix::fs::chown(&d, Some(TEST_UID), Some(TEST_UID)).unwrap();
    }
    d
}

/// Owner of the test workspaces when the tests run as root.
pub const TEST_UID: u32 = 1000;

/// Whether sandboxes on the engine under test go through a gateway (an
/// engine that does not share this machine's files: `make test-remote`).
/// The tests of the local path (bind mounts, host-side files) then assert
/// what a gateway gives instead.
pub async fn through_gateway() -> bool {
    agent_sandbox::runtime::Engine::connect()
        .await
        .unwrap()
        .through_gateway()
        .unwrap()
}

/// Whether the engine under test is Podman (its Docker-compatible API).
pub async fn podman() -> bool {
    agent_sandbox::runtime::Engine::connect()
        .await
        .unwrap()
        .kind()
        == agent_sandbox::runtime::EngineKind::Podman
}

/// The engine, straight through bollard (not through the code under test).
/// The API version is negotiated once per process, as the library does:
/// Podman 4.3 answers `/version` by running its package manager, which
/// now and then hung for minutes.
pub async fn docker() -> Docker {
    static API: std::sync::OnceLock<(usize, usize)> = std::sync::OnceLock::new();
    let host = std::env::var("DOCKER_HOST").unwrap_or_default();
    if let (Some(&(major_version, minor_version)), false) = (API.get(), host.starts_with("tcp://"))
    {
        let v = bollard::ClientVersion {
            major_version,
            minor_version,
        };
        let socket = host
            .strip_prefix("unix://")
            .unwrap_or("/var/run/docker.sock");
        return Docker::connect_with_unix(socket, 120, &v).unwrap();
    }
    let d = Docker::connect_with_defaults()
        .unwrap()
        .negotiate_version()
        .await
        .unwrap();
    let v = d.client_version();
    let _ = API.set((v.major_version, v.minor_version));
    d
}

/// Containers (running or not) carrying `label` (`key=value`).
/// Podman 4.3 lists a container between its end and its clean-up as
/// `stopped`, which the client cannot read: then the list is asked for
/// again by state, and those read through the `docker` CLI (as exited).
pub async fn containers_with_label(label: &str) -> Vec<bollard::models::ContainerSummary> {
    let list = |status: Option<&str>| {
        let mut filters = HashMap::from([("label".to_owned(), vec![label.to_owned()])]);
        if let Some(s) = status {
            filters.insert("status".to_owned(), vec![s.to_owned()]);
        }
        async move {
            docker()
                .await
                .list_containers(Some(ListContainersOptions {
                    all: true,
                    filters: Some(filters),
                    ..Default::default()
                }))
                .await
        }
    };
    match list(None).await {
        Err(bollard::errors::Error::JsonDataError { message, .. })
            if message.contains("unknown variant `stopped`") =>
        {
            let mut all = Vec::new();
            for status in [
                "created",
                "running",
                "paused",
                "restarting",
                "removing",
                "exited",
                "dead",
            ] {
                // Podman refuses the states it does not have (`restarting`).
                all.extend(list(Some(status)).await.unwrap_or_default());
            }
            let stopped = std::process::Command::new("docker")
                .args([
                    "ps",
                    "-aq",
                    "--no-trunc",
                    "--filter",
                    &format!("label={label}"),
                    "--filter",
                    "status=stopped",
                ])
                .output()
                .unwrap();
            for id in String::from_utf8_lossy(&stopped.stdout).split_whitespace() {
                all.push(bollard::models::ContainerSummary {
                    id: Some(id.to_owned()),
                    state: Some(bollard::models::ContainerSummaryStateEnum::EXITED),
                    ..Default::default()
                });
            }
            all
        }
        other => other.unwrap(),
    }
}

/// How many containers the sandbox `id` has (0 once removed).
pub async fn container_count(id: &str) -> usize {
    containers_with_label(&format!("{}={id}", labels::ID))
        .await
        .len()
}

/// Waits up to 30 s (generous, for a busy machine; it returns as soon as it
/// holds) for every container carrying `label` to be removed.
pub async fn eventually_none_with_label(label: &str) -> bool {
    for _ in 0..600 {
        if containers_with_label(label).await.is_empty() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Waits up to 30 s for the sandbox `id`'s container to be removed.
pub async fn eventually_gone(id: &str) -> bool {
    eventually_none_with_label(&format!("{}={id}", labels::ID)).await
}

/// Allocates 512 MiB, far over the 64 MiB the OOM tests allow; prints
/// `survived` if it was not killed.
pub const MEMORY_BOMB: [&str; 3] = ["python3", "-c", "b = b'x' * (512 << 20); print('survived')"];

/// What every OOM test asserts of [`MEMORY_BOMB`]'s result.
pub fn assert_oom_killed(out: &agent_sandbox::Output) {
    assert!(!out.stdout_str().contains("survived"));
    assert!(
        out.oom_killed,
        "exit {} {}",
        out.exit_code,
        out.stderr_str()
    );
    assert_eq!(out.exit_code, 137);
}

/// Every IPv4 address of this host but loopback (the kernel's local routes,
/// Docker's bridge gateway among them).
pub fn host_addresses() -> Vec<String> {
    let trie = std::fs::read_to_string("/proc/net/fib_trie").unwrap();
    let lines: Vec<&str> = trie.lines().collect();
    let mut out: Vec<String> = lines
        .windows(2)
        .filter(|w| w[1].contains("/32 host LOCAL"))
        .filter_map(|w| w[0].rsplit(' ').next().map(str::to_owned))
        .filter(|a| !a.starts_with("127."))
        .collect();
    out.sort();
    out.dedup();
    assert!(!out.is_empty(), "this host has no address but loopback");
    out
}

/// The Python that tries each `(host, port)` and prints `host port errno`
/// (errno 0: connected).
pub fn connect_probe(targets: &[(String, u16)]) -> String {
    let list: Vec<String> = targets
        .iter()
        .map(|(h, p)| format!("('{h}', {p})"))
        .collect();
    format!(
        "import socket\nfor h, p in [{}]:\n    try:\n        socket.create_connection((h, p), timeout=3).close(); print(h, p, 0)\n    except OSError as e:\n        print(h, p, e.errno or -1)\n",
        list.join(", ")
    )
}

/// Runs [`connect_probe`] in a plain container on the default bridge
/// network (the positive control: what a container with a network
/// reaches) and returns its output.
pub fn control_probe(targets: &[(String, u16)]) -> String {
    let out = std::process::Command::new("docker")
        .args([
            "run",
            "--rm",
            "--network",
            "bridge",
            &image(),
            "python3",
            "-c",
        ])
        .arg(connect_probe(targets))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A TCP listener on the host (`bind`, e.g. `0.0.0.0:0`) that counts
/// connections.
pub fn host_canary(bind: &str) -> (u16, Arc<AtomicUsize>) {
    let l = TcpListener::bind(bind).unwrap();
    let port = l.local_addr().unwrap().port();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            if s.is_ok() {
                c.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    (port, count)
}

/// Asserts that a direct connection from a sandbox (`run` gets the probe
/// script and returns its stdout) reaches none of this host's addresses nor
/// the `extra` targets (another container, say), failing with `errno`,
/// after a control container on the default bridge reached every one.
pub async fn assert_no_direct_route<F, Fut>(errno: i32, extra: &[(String, u16)], run: F)
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = String>,
{
    let (port, hits) = host_canary("0.0.0.0:0");
    let hosts = host_addresses();
    let host_count = hosts.len();
    let mut targets: Vec<(String, u16)> = hosts.into_iter().map(|h| (h, port)).collect();
    targets.extend_from_slice(extra);
    let control = control_probe(&targets);
    for (h, p) in &targets {
        assert!(
            control.contains(&format!("{h} {p} 0\n")),
            "control could not reach {h}:{p}: {control}"
        );
    }
    let reached = hits.load(Ordering::SeqCst);
    assert_eq!(
        reached, host_count,
        "control: the listener saw each address"
    );
    let text = run(connect_probe(&targets)).await;
    for (h, p) in &targets {
        assert!(
            text.contains(&format!("{h} {p} {errno}\n")),
            "{h}:{p} not unreachable ({errno}): {text}"
        );
    }
    assert_eq!(
        hits.load(Ordering::SeqCst),
        reached,
        "the sandbox reached the host"
    );
}

/// The errno a sandbox gets for a direct connection out under the runtime
/// the tests use (`AGENT_SANDBOX_RUNTIME`): see [`unreachable_errno_under`].
pub fn unreachable_errno() -> i32 {
    unreachable_errno_under(&std::env::var("AGENT_SANDBOX_RUNTIME").unwrap_or_default())
}

/// It has no route: runc says ENETUNREACH, gVisor's netstack EHOSTUNREACH.
pub fn unreachable_errno_under(runtime: &str) -> i32 {
    if runtime.contains("runsc") {
        113
    } else {
        101
    }
}
