//! Pools against a real engine: every run gets a fresh sandbox, nothing a
//! run started outlives it, and a run is as contained as a one-shot `run`.
//!
//! These tests run one at a time and while no other test of this binary has
//! a container (`engine_alone`), so the check that closing a pool leaves no
//! container can count by this process's owner label.

use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use agent_sandbox::proxy::Verdict;
use agent_sandbox::runtime::{labels, owner_label_value};
use agent_sandbox::CancelToken;

use crate::support::canary::HttpCanary;
use crate::support::docker::{
    assert_no_direct_route, assert_oom_killed, container_count, containers_with_label, docker,
    engine_alone, eventually_gone, eventually_none_with_label, sandbox, tempdir, unreachable_errno,
    MEMORY_BOMB,
};

fn my_label() -> String {
    format!("{}={}", labels::OWNER, owner_label_value())
}

/// This process's sandboxes (not their gateways, on an engine that needs
/// them: those carry the owner label but not the sandbox id).
async fn mine() -> usize {
    containers_with_label(&my_label())
        .await
        .iter()
        .filter(|c| {
            c.labels
                .as_ref()
                .is_some_and(|l| l.contains_key(labels::ID))
        })
        .count()
}

async fn none_of_mine_left() -> bool {
    let none = eventually_none_with_label(&my_label()).await;
    if !none {
        for c in containers_with_label(&my_label()).await {
            eprintln!("left: {:?} {:?} {:?}", c.names, c.state, c.labels);
        }
    }
    none
}

#[tokio::test]
async fn each_run_gets_a_fresh_sandbox_and_closing_leaves_nothing() {
    let _engine = engine_alone().await;
    let ws = tempdir("fresh");
    let pool = sandbox().workspace(&ws).pool(2).await.unwrap();
    assert_eq!(pool.size(), 2);
    assert_eq!(
        mine().await,
        2,
        "pool(2) returns with both sandboxes started"
    );
    let first = pool
        .run("echo scratch > /tmp/x; echo kept > /workspace/a; echo out; echo err >&2; exit 3")
        .await
        .unwrap();
    assert_eq!(first.exit_code, 3);
    assert_eq!(first.stdout_str(), "out\n");
    assert_eq!(first.stderr_str(), "err\n");
    let second = pool
        .run("test ! -e /tmp/x && cat /workspace/a && id -u")
        .await
        .unwrap();
    assert_eq!(second.exit_code, 0, "{}", second.stderr_str());
    let me = std::fs::metadata(&ws).unwrap().uid();
    assert_eq!(second.stdout_str(), format!("kept\n{me}\n"));
    assert_ne!(first.sandbox_id, second.sandbox_id);
    assert!(eventually_gone(&first.sandbox_id).await);
    assert!(eventually_gone(&second.sandbox_id).await);
    // Two spares are kept warm (the replacements start in the background:
    // polled, with a generous deadline).
    let mut warm = 0;
    for _ in 0..300 {
        warm = mine().await;
        if warm >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(warm >= 2, "{warm} spares");
    pool.close().await.unwrap();
    assert!(
        none_of_mine_left().await,
        "close left containers behind: {}",
        mine().await
    );
    assert_eq!(pool.run("true").await.unwrap_err().code(), "pool_closed");
    pool.close().await.unwrap();
}

#[tokio::test]
async fn nothing_a_run_started_outlives_it() {
    let _engine = engine_alone().await;
    let ws = tempdir("outlive");
    let pool = sandbox().workspace(&ws).pool(1).await.unwrap();
    // A detached writer in its own session and process group: the command
    // returns at once, the writer would go on for a minute.
    let out = pool
        .run("setsid sh -c 'for i in $(seq 600); do echo $i >> /workspace/beat; sleep 0.1; done' </dev/null >/dev/null 2>&1 & while [ ! -s /workspace/beat ]; do sleep 0.05; done")
        .await
        .unwrap();
    assert_eq!(out.exit_code, 0);
    let size = || std::fs::metadata(ws.join("beat")).map_or(0, |m| m.len());
    let at_return = size();
    assert!(at_return > 0, "the writer ran while the command did");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(size(), at_return, "a process outlived its run");
    assert!(eventually_gone(&out.sandbox_id).await);
    pool.close().await.unwrap();
}

#[tokio::test]
async fn timeout_oom_and_cancel_behave_as_in_one_shot_runs() {
    let _engine = engine_alone().await;
    let pool = sandbox()
        .memory(64 << 20)
        .timeout(Duration::from_secs(1))
        .pool(1)
        .await
        .unwrap();
    let t0 = Instant::now();
    let out = pool.run("trap '' TERM; sleep 30").await.unwrap();
    assert!(out.timed_out);
    assert_eq!(out.exit_code, 137);
    assert!(t0.elapsed() < Duration::from_secs(10));
    let out = pool.run(MEMORY_BOMB).await.unwrap();
    assert_oom_killed(&out);
    // A command that exits 137 by itself is not an OOM kill.
    let out = pool.run("kill -9 $$").await.unwrap();
    assert_eq!(out.exit_code, 137);
    assert!(!out.oom_killed);
    pool.close().await.unwrap();

    let token = CancelToken::new();
    let pool = sandbox().cancel_token(token.clone()).pool(1).await.unwrap();
    let t = token.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        t.cancel();
    });
    let t0 = Instant::now();
    let err = pool.run("sleep 30").await.unwrap_err();
    assert_eq!(err.code(), "cancelled");
    assert!(t0.elapsed() < Duration::from_secs(10));
    pool.close().await.unwrap();
    assert!(none_of_mine_left().await);
}

#[tokio::test]
async fn each_run_has_its_own_proxy_and_events() {
    let _engine = engine_alone().await;
    let canary = HttpCanary::serving("hello").await;
    let port = canary.port();
    let pool = sandbox()
        .allow(format!("allowed.test:{port}"))
        .resolve("allowed.test", port, "127.0.0.1")
        .resolve("denied.test", port, "127.0.0.1")
        .pool(1)
        .await
        .unwrap();
    let ok = pool
        .run(format!("curl -sS http://allowed.test:{port}/"))
        .await
        .unwrap();
    assert_eq!(ok.stdout_str(), "hello", "{}", ok.stderr_str());
    assert_eq!(canary.connections(), 1);
    let denied = pool
        .run(format!(
            "curl -sS -o /dev/null -w '%{{http_code}}' http://denied.test:{port}/"
        ))
        .await
        .unwrap();
    assert_eq!(denied.stdout_str(), "403");
    assert_eq!(canary.connections(), 1, "the canary saw the denied run");
    // Each run reports its own decisions only.
    assert_eq!(ok.events.len(), 1);
    assert_eq!(ok.events[0].verdict, Verdict::Allow);
    assert_eq!(denied.events.len(), 1);
    assert_eq!(denied.events[0].verdict, Verdict::Deny);
    // A direct connection still has nowhere to go (control: a container
    // with a network reaches the same addresses).
    let probe = &pool;
    assert_no_direct_route(unreachable_errno(), &[], |script| async move {
        probe
            .run(["python3", "-c", &script])
            .await
            .unwrap()
            .stdout_str()
    })
    .await;
    assert_eq!(canary.connections(), 1);
    pool.close().await.unwrap();
}

#[tokio::test]
async fn a_workspace_replaced_after_the_spare_started_is_the_one_used() {
    let _engine = engine_alone().await;
    let ws = tempdir("swap");
    let pool = sandbox().workspace(&ws).pool(1).await.unwrap();
    let old = ws.with_extension("old");
    std::fs::rename(&ws, &old).unwrap();
    std::fs::create_dir(&ws).unwrap();
    let owner = std::fs::metadata(&old).unwrap();
    std::os::unix::fs::chown(&ws, Some(owner.uid()), Some(owner.gid())).unwrap();
    let out = pool.run("echo new > /workspace/f").await.unwrap();
    assert_eq!(out.exit_code, 0, "{}", out.stderr_str());
    assert_eq!(std::fs::read_to_string(ws.join("f")).unwrap(), "new\n");
    assert!(
        !old.join("f").exists(),
        "the run wrote to the replaced directory"
    );
    // A workspace that is gone is the caller's error, as for `run`.
    std::fs::remove_dir_all(&ws).unwrap();
    let err = pool.run("true").await.unwrap_err();
    assert_eq!(err.code(), "workspace", "{err}");
    pool.close().await.unwrap();
}

#[tokio::test]
async fn concurrent_runs_beyond_the_size_all_complete() {
    let _engine = engine_alone().await;
    let pool = sandbox().pool(2).await.unwrap();
    let runs = (0..6).map(|i| {
        let pool = pool.clone();
        tokio::spawn(async move { pool.run(format!("echo {i}")).await })
    });
    let mut ids = std::collections::HashSet::new();
    for (i, r) in runs.enumerate() {
        let out = r.await.unwrap().unwrap();
        assert_eq!(out.stdout_str(), format!("{i}\n"));
        ids.insert(out.sandbox_id);
    }
    assert_eq!(ids.len(), 6, "every run had its own sandbox");
    pool.close().await.unwrap();
    for id in &ids {
        assert_eq!(container_count(id).await, 0);
    }
}

#[tokio::test]
async fn bad_input_fails_when_the_pool_is_made() {
    let _engine = engine_alone().await;
    let err = sandbox().pool(0).await.unwrap_err();
    assert_eq!(err.code(), "invalid_argument");
    let err = sandbox().allow("*").pool(1).await.unwrap_err();
    assert_eq!(err.code(), "policy");
    let err = sandbox()
        .workspace("/no/such/dir")
        .pool(1)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "workspace");
    let err = sandbox()
        .image("localhost:1/agent-sandbox/absent:1")
        .pool(1)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "image_not_found");
    let pool = sandbox().pool(1).await.unwrap();
    let err = pool.run("").await.unwrap_err();
    assert_eq!(err.code(), "invalid_argument");
    drop(pool);
    assert!(none_of_mine_left().await, "dropping a pool leaves nothing");
}

#[tokio::test]
async fn per_run_options_override_the_builder() {
    let _engine = engine_alone().await;
    let ws = tempdir("opts");
    std::fs::create_dir(ws.join("sub")).unwrap();
    let pool = sandbox()
        .workspace(&ws)
        .env("FROM_BUILDER", "b")
        .pool(1)
        .await
        .unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = seen.clone();
    let out = pool
        .run_with(
            "echo $FROM_BUILDER $PER_RUN $(pwd); cat",
            agent_sandbox::ExecOptions::new()
                .env("PER_RUN", "r")
                .workdir("sub")
                .stdin("in")
                .on_stdout(move |b| s.lock().unwrap().extend_from_slice(b)),
        )
        .await
        .unwrap();
    assert_eq!(out.stdout_str(), "b r /workspace/sub\nin");
    assert_eq!(*seen.lock().unwrap(), out.stdout);
    let err = pool
        .run_with("true", agent_sandbox::ExecOptions::new().workdir("/etc"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "invalid_argument");
    pool.close().await.unwrap();
}

#[tokio::test]
async fn a_spare_killed_from_outside_is_replaced_not_used() {
    let _engine = engine_alone().await;
    let pool = sandbox().pool(1).await.unwrap();
    // Kill every container of this process behind the pool's back (an
    // engine restart does the same to spares).
    let d = docker().await;
    let all = containers_with_label(&my_label()).await;
    assert!(!all.is_empty());
    for c in all {
        // A sandbox whose gateway was killed first may have ended already.
        match d
            .kill_container(
                c.id.as_deref().unwrap(),
                None::<bollard::query_parameters::KillContainerOptions>,
            )
            .await
        {
            Ok(())
            | Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 409, ..
            }) => {}
            Err(e) => panic!("{e}"),
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let out = pool.run("echo fresh").await.unwrap();
    assert_eq!(out.stdout_str(), "fresh\n", "{}", out.stderr_str());
    pool.close().await.unwrap();
    assert!(none_of_mine_left().await);
}
