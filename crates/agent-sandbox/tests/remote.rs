//! A remote engine: `make test-remote` runs this test binary
//! (`cargo test --test remote`, not run by a plain `cargo test`: it needs
//! the engine) with `DOCKER_HOST` at a second Docker engine in
//! a privileged container of the test's own (`scripts/remote-engine.sh`),
//! reachable only through a TCP port on the host's loopback. It shares no
//! file with this machine: sandboxes there go through a gateway, the
//! workspace is copied in and back, the proxy stays here.

use agent_sandbox::runtime::{labels, Engine};
use bollard::query_parameters::{ListContainersOptions, ListVolumesOptions};
use bollard::Docker;
use std::collections::HashMap;

// The `it` binary's helpers (canaries, Docker helpers), not all used here.
#[allow(dead_code)]
#[path = "it/support/mod.rs"]
mod support;

use support::canary::HttpCanary;
use support::docker::{engine_shared, sandbox, tempdir};

/// What is left of sandbox `id` on an engine: its container, its
/// gateway, its volumes.
async fn left_of(d: &Docker, id: &str) -> (usize, usize) {
    let mut containers = 0;
    for label in [labels::ID, labels::GATEWAY] {
        let filters = HashMap::from([("label".to_owned(), vec![format!("{label}={id}")])]);
        containers += d
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filters),
                ..Default::default()
            }))
            .await
            .unwrap()
            .len();
    }
    let volumes = d
        .list_volumes(None::<ListVolumesOptions>)
        .await
        .unwrap()
        .volumes
        .unwrap_or_default()
        .into_iter()
        .filter(|v| v.name.starts_with(&format!("agent-sandbox-{id}-")))
        .count();
    (containers, volumes)
}

async fn remote() -> (Engine, Docker) {
    let engine = Engine::connect().await.unwrap();
    assert!(
        !engine.is_local(),
        "{} shares this machine's files: run this test through `make test-remote`",
        engine.name()
    );
    assert!(engine.name().contains("tcp://"), "{}", engine.name());
    let d = Docker::connect_with_defaults().unwrap();
    (engine, d)
}

#[tokio::test]
async fn a_run_copies_the_workspace_in_and_back_and_leaves_nothing_on_either_engine() {
    let _engine = engine_shared().await;
    let (_, d) = remote().await;
    let ws = tempdir("remote-ws");
    std::fs::create_dir_all(ws.join("src")).unwrap();
    std::fs::write(ws.join("src/keep.txt"), "unchanged\n").unwrap();
    std::fs::write(ws.join("edit.txt"), "before\n").unwrap();
    std::fs::write(ws.join("gone.txt"), "remove me\n").unwrap();
    let out = sandbox()
        .workspace(&ws)
        .run("cat src/keep.txt edit.txt && echo after > edit.txt && rm gone.txt && mkdir -p new && echo made > new/file && pwd && id -u")
        .await
        .unwrap();
    assert_eq!(out.exit_code, 0, "{}", out.stderr_str());
    assert_eq!(out.stdout_str(), "unchanged\nbefore\n/workspace\n1000\n");
    let read = |p: &str| std::fs::read_to_string(ws.join(p)).ok();
    assert_eq!(read("edit.txt").as_deref(), Some("after\n"));
    assert_eq!(read("new/file").as_deref(), Some("made\n"));
    assert_eq!(read("gone.txt"), None);
    assert_eq!(read("src/keep.txt").as_deref(), Some("unchanged\n"));
    // Nothing left there (sandbox, gateway, volumes), nothing made here.
    assert_eq!(left_of(&d, &out.sandbox_id).await, (0, 0));
    let local = Docker::connect_with_unix(
        "unix:///var/run/docker.sock",
        30,
        bollard::API_DEFAULT_VERSION,
    )
    .unwrap();
    assert_eq!(
        left_of(&local, &out.sandbox_id).await,
        (0, 0),
        "nothing on the local engine"
    );
}

#[tokio::test]
async fn the_box_holds_on_a_remote_engine_and_its_traffic_leaves_from_here() {
    let _engine = engine_shared().await;
    let (_, d) = remote().await;
    let allowed = HttpCanary::start().await;
    let denied = HttpCanary::start().await;
    let (a, n) = (allowed.port(), denied.port());
    let s = sandbox()
        .allow(format!("allowed.test:{a}"))
        .resolve_spec(format!("allowed.test:{a}:127.0.0.1"))
        .resolve_spec(format!("denied.test:{n}:127.0.0.1"))
        .start()
        .await
        .unwrap();
    // The canaries listen on this machine's loopback: the proxy (here)
    // reaches the allowed one; the sandbox, on another engine, has no way
    // to either but the relay.
    let out = s
        .exec(format!(
            "curl -s http://allowed.test:{a}/; echo; curl -s -o /dev/null -w '%{{http_code}}\\n' http://denied.test:{n}/; \
             curl -s --noproxy '*' -m 3 http://172.17.0.1:2375/version; echo direct=$?; \
             python3 -c 'import socket; s=socket.socket(); s.settimeout(3); s.connect((\"10.0.2.2\", 80))' 2>&1 | tail -1; \
             cat /proc/net/dev | awk -F: 'NR>2 {{print $1}}' | tr -d ' '"
        ))
        .await
        .unwrap();
    let text = out.stdout_str();
    assert!(text.starts_with("hello from canary\n403\n"), "{text}");
    assert!(
        text.contains("direct=7") || text.contains("direct=28"),
        "{text}"
    );
    assert!(text.contains("Network is unreachable"), "{text}");
    assert!(text.trim_end().ends_with("\nlo"), "only loopback: {text}");
    assert_eq!(allowed.requests().len(), 1);
    assert_eq!(denied.connections(), 0, "nothing dialled for a denied host");
    // The gateway is hardened like a sandbox, and has no network either.
    let mine = format!("{}={}", labels::GATEWAY, s.id());
    let list = d
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(HashMap::from([("label".to_owned(), vec![mine])])),
            ..Default::default()
        }))
        .await
        .unwrap();
    let gateway = list.first().expect("a gateway container");
    let g = d
        .inspect_container(gateway.id.as_deref().unwrap(), None)
        .await
        .unwrap();
    let host = g.host_config.unwrap();
    assert_eq!(host.network_mode.as_deref(), Some("none"));
    assert_eq!(host.readonly_rootfs, Some(true));
    assert_eq!(host.cap_drop, Some(vec!["ALL".to_owned()]));
    assert!(host.pids_limit.unwrap_or(0) > 0 && host.memory.unwrap_or(0) > 0);
    let user = g.config.unwrap().user.unwrap_or_default();
    assert!(
        !user.is_empty() && !user.starts_with("0:") && user != "root",
        "{user}"
    );
    let id = s.id().to_owned();
    s.close().await.unwrap();
    assert_eq!(left_of(&d, &id).await, (0, 0));
}

#[tokio::test]
async fn a_session_and_a_pool_work_through_the_gateway() {
    let _engine = engine_shared().await;
    let (_, d) = remote().await;
    let ws = tempdir("remote-session");
    let s = sandbox().workspace(&ws).start().await.unwrap();
    let id = s.id().to_owned();
    for i in 0..20 {
        let out = s
            .exec(format!("echo {i} >> log; wc -l < log"))
            .await
            .unwrap();
        assert_eq!(out.stdout_str().trim(), (i + 1).to_string());
    }
    s.write_file("/workspace/from-api.txt", "api\n")
        .await
        .unwrap();
    assert_eq!(s.read_file("from-api.txt").await.unwrap(), b"api\n");
    let names: Vec<String> = s
        .list("/workspace")
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, ["from-api.txt", "log"]);
    // A large output crosses the relay whole (its window is 512 KiB).
    let big = s
        .exec("head -c 5000000 /dev/urandom | base64 -w0 | wc -c")
        .await
        .unwrap();
    assert_eq!(big.stdout_str().trim(), "6666668");
    let bytes = s.exec("head -c 3000000 /dev/zero").await.unwrap();
    assert_eq!(bytes.stdout.len(), 3_000_000);
    s.close().await.unwrap();
    assert_eq!(left_of(&d, &id).await, (0, 0));
    // Copied back at close.
    assert_eq!(
        std::fs::read_to_string(ws.join("from-api.txt")).unwrap(),
        "api\n"
    );
    assert_eq!(
        std::fs::read_to_string(ws.join("log"))
            .unwrap()
            .lines()
            .count(),
        20
    );
    let pool = sandbox().pool(2).await.unwrap();
    for _ in 0..4 {
        let out = pool.run("echo pooled").await.unwrap();
        assert_eq!(out.stdout_str(), "pooled\n");
    }
    pool.close().await.unwrap();
}
