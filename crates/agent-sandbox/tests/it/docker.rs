//! Real-Docker tests of the jail: every hardening default read back from
//! `docker inspect`, and adversarial tests that try to get out and assert
//! they could not. `make test` starts the engine and builds the image.

use std::collections::HashMap;
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use agent_sandbox::proxy::Verdict;
use agent_sandbox::runtime::{gc, labels, Engine};
use agent_sandbox::{CancelToken, Error, Output, Sandbox, SandboxBuilder};
use bollard::query_parameters::InspectContainerOptions;

use crate::support::canary::HttpCanary;
use crate::support::docker::{
    assert_no_direct_route, assert_oom_killed, containers_with_label, docker, engine_shared,
    host_addresses, image, podman, sandbox, tempdir, through_gateway, unreachable_errno,
    unreachable_errno_under, MEMORY_BOMB, TEST_UID,
};

/// Whether the engine answers "no such container" (404) for `id`; any
/// other answer (it exists, or another error) is `false`.
async fn is_not_found(d: &bollard::Docker, id: &str) -> bool {
    matches!(
        d.inspect_container(id, None::<InspectContainerOptions>)
            .await,
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        })
    )
}

/// Asserts the run's container is gone.
async fn assert_removed(out: &Output) {
    let left = containers_with_label(&format!("{}={}", labels::ID, out.sandbox_id)).await;
    assert!(
        left.is_empty(),
        "container of {} left behind",
        out.sandbox_id
    );
}

async fn run(b: SandboxBuilder, cmd: &str) -> Output {
    let out = b
        .run(cmd)
        .await
        .unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert_removed(&out).await;
    out
}

#[tokio::test]
async fn hardening_defaults_are_visible_in_docker_inspect() {
    let _engine = engine_shared().await;
    let ws = tempdir("inspect");
    let marker = format!("inspect-marker-{}", std::process::id());
    let cancel = CancelToken::new();
    let b = sandbox().workspace(&ws).cancel_token(cancel.clone());
    let cmd = format!("sleep 60; : {marker}");
    let task = tokio::spawn(async move { b.run(cmd).await });
    let d = docker().await;
    let mut found = None;
    for _ in 0..100 {
        for c in containers_with_label(labels::MANAGED).await {
            if c.command.as_deref().unwrap_or("").contains(&marker)
                && c.state == Some(bollard::models::ContainerSummaryStateEnum::RUNNING)
            {
                found = c.id;
            }
        }
        if found.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let id = found.expect("the sandbox container is running");
    let info = d
        .inspect_container(&id, None::<InspectContainerOptions>)
        .await
        .unwrap();
    let hc = info.host_config.unwrap();
    let cfg = info.config.unwrap();
    assert_eq!(hc.readonly_rootfs, Some(true), "read-only root");
    let podman = podman().await;
    // Podman reads back what it added (propagation, copy-up).
    let mut tmpfs: HashMap<String, String> = hc
        .tmpfs
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k, v.replace(",rprivate,tmpcopyup", "")))
        .collect();
    if podman {
        // Podman mounts a writable /var/tmp in a read-only container
        // unless something is there: an empty read-only one is.
        assert_eq!(
            tmpfs.remove("/var/tmp").as_deref(),
            Some("ro,nosuid,nodev,noexec,size=4096,mode=755")
        );
    }
    assert_eq!(
        tmpfs,
        HashMap::from([
            (
                "/tmp".to_owned(),
                "rw,nosuid,nodev,noexec,size=536870912,mode=1777".to_owned()
            ),
            (
                "/run".to_owned(),
                "rw,nosuid,nodev,noexec,size=16777216,mode=755".to_owned()
            ),
        ]),
        "exactly these tmpfs mounts, at their documented sizes"
    );
    assert_eq!(hc.shm_size, Some(64 << 20), "bounded /dev/shm");
    let dropped = hc.cap_drop.unwrap_or_default();
    if podman {
        // Podman reads "ALL" back as every capability it would have given
        // (setuid_and_capabilities_give_nothing reads CapEff inside).
        for cap in [
            "CHOWN",
            "DAC_OVERRIDE",
            "FOWNER",
            "KILL",
            "NET_RAW",
            "SETUID",
            "SETGID",
        ] {
            assert!(dropped.iter().any(|c| c == cap), "{cap}: {dropped:?}");
        }
    } else {
        assert_eq!(dropped, ["ALL"]);
    }
    assert!(hc.cap_add.unwrap_or_default().is_empty());
    let secopt = hc.security_opt.unwrap_or_default();
    assert!(
        secopt.iter().any(|s| s == "no-new-privileges"),
        "{secopt:?}"
    );
    assert!(
        !secopt.iter().any(|s| s.contains("unconfined")),
        "seccomp and apparmor kept: {secopt:?}"
    );
    // Docker takes the profile inline; Podman's compatible API takes a
    // file on the engine's machine (this one): either way, ours.
    let profile = secopt
        .iter()
        .find_map(|s| s.strip_prefix("seccomp="))
        .map(|p| match podman {
            true => std::fs::read_to_string(p).unwrap_or_else(|e| format!("{p}: {e}")),
            false => p.to_owned(),
        });
    assert!(
        profile.as_deref() == Some(agent_sandbox::runtime::SECCOMP_PROFILE),
        "our seccomp profile, not the engine's default: {secopt:?}"
    );
    assert_eq!(hc.network_mode.as_deref(), Some("none"));
    let sysctls = if podman {
        // Podman 4.3 does not read sysctls back: read the sandbox's network
        // namespace itself.
        let pid = info.state.as_ref().and_then(|s| s.pid).expect("a pid");
        let out = std::process::Command::new("nsenter")
            .arg(format!("--net=/proc/{pid}/ns/net"))
            .args(["cat", "/proc/sys/net/ipv4/ip_unprivileged_port_start"])
            .output()
            .unwrap();
        let value = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        Some(HashMap::from([(
            "net.ipv4.ip_unprivileged_port_start".to_owned(),
            value,
        )]))
    } else {
        hc.sysctls
    };
    assert_eq!(
        sysctls,
        Some(HashMap::from([(
            "net.ipv4.ip_unprivileged_port_start".to_owned(),
            "0".to_owned()
        )])),
        "one sysctl, of the sandbox's own network namespace (init binds 53, 80, 443 without a capability)"
    );
    // Under gVisor the cgroup counts the runtime's host threads: two per
    // thread inside plus the runtime's own (README, gVisor notes).
    let gvisor = std::env::var("AGENT_SANDBOX_RUNTIME").is_ok_and(|r| r.contains("runsc"));
    assert_eq!(hc.pids_limit, Some(if gvisor { 640 } else { 256 }));
    assert_eq!(hc.memory, Some(1 << 30));
    assert_eq!(hc.memory_swap, hc.memory, "no swap beyond the memory limit");
    assert_eq!(hc.nano_cpus, Some(1_000_000_000));
    assert_eq!(hc.privileged, Some(false));
    assert!(
        hc.port_bindings.unwrap_or_default().is_empty(),
        "no published ports"
    );
    assert_eq!(
        hc.restart_policy
            .and_then(|r| r.name)
            .map(|n| n.to_string()),
        Some("no".to_owned())
    );
    assert_eq!(
        hc.log_config.and_then(|l| l.typ).as_deref(),
        Some("none"),
        "no logs kept"
    );
    assert!(hc.devices.unwrap_or_default().is_empty(), "no devices");
    // Docker leaves the modes empty; Podman says `private` (its own).
    let own = |m: Option<String>| matches!(m.as_deref().unwrap_or_default(), "" | "private");
    assert!(
        own(hc.pid_mode.clone()) && own(hc.uts_mode.clone()),
        "no host namespaces: pid {:?}, uts {:?}",
        hc.pid_mode,
        hc.uts_mode
    );
    assert_ne!(hc.ipc_mode.as_deref(), Some("host"));
    let me = std::fs::metadata(&ws).unwrap();
    assert_eq!(
        cfg.user.as_deref(),
        Some(format!("{}:{}", me.uid(), me.gid()).as_str()),
        "the caller's uid:gid"
    );
    let env = cfg.env.unwrap();
    assert!(env.iter().any(|e| e == "HOME=/tmp"));
    assert!(env.iter().any(|e| e == "NODE_USE_ENV_PROXY=1"), "{env:?}");
    // Init enters /workspace for the command; the container starts in `/`
    // (see `launch`: the engine would otherwise create the mount point).
    assert_eq!(cfg.working_dir.as_deref(), Some("/"));
    // Podman spells out the defaults Docker leaves unsaid (`rprivate`
    // propagation, a recursive bind): the same mounts.
    let binds: Vec<String> = hc
        .binds
        .unwrap()
        .iter()
        .map(|b| b.replace(",rprivate", "").replace(",rbind", ""))
        .collect();
    let mut targets: Vec<(&str, &str, &str)> = binds
        .iter()
        .map(|b| {
            let mut it = b.rsplitn(3, ':');
            let mode = it.next().unwrap();
            let target = it.next().unwrap();
            (target, mode, it.next().unwrap())
        })
        .collect();
    targets.sort_unstable();
    let only: Vec<(&str, &str)> = targets.iter().map(|t| (t.0, t.1)).collect();
    if through_gateway().await {
        // Nothing of this machine: two volumes on the engine (the shared
        // directory the gateway fills, and the workspace copied in).
        assert_eq!(
            only,
            [("/.agent-sandbox/net", "ro"), ("/workspace", "rw")],
            "exactly these volumes: {binds:?}"
        );
        assert!(
            targets.iter().all(|t| t.2.starts_with("agent-sandbox-")),
            "volumes, not host paths: {binds:?}"
        );
    } else {
        let ws_c = ws.canonicalize().unwrap();
        assert!(
            binds.contains(&format!("{}:/workspace:rw", ws_c.display())),
            "{binds:?}"
        );
        assert_eq!(
            only,
            [
                ("/.agent-sandbox/init", "ro"),
                ("/.agent-sandbox/net", "ro"),
                // The image's users plus the sandbox's own (its uid is not
                // in the base image's).
                ("/etc/group", "ro"),
                ("/etc/hosts", "ro"),
                ("/etc/passwd", "ro"),
                ("/etc/resolv.conf", "ro"),
                ("/workspace", "rw")
            ],
            "exactly these binds: {binds:?}"
        );
    }
    assert!(
        binds.iter().all(|b| !b.contains("docker.sock")),
        "{binds:?}"
    );
    let lbl = cfg.labels.unwrap();
    assert_eq!(lbl.get(labels::MANAGED).map(String::as_str), Some("1"));
    assert!(lbl
        .get(labels::OWNER)
        .unwrap()
        .contains(&format!(":{}:", std::process::id())));
    cancel.cancel();
    let r = task.await.unwrap();
    assert!(matches!(r, Err(Error::Cancelled)), "{r:?}");
    let mut gone = false;
    for _ in 0..100 {
        if is_not_found(&d, &id).await {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gone, "a cancelled run removes its container");
}

#[tokio::test]
async fn exit_codes_and_output_pass_through() {
    let _engine = engine_shared().await;
    let out = run(sandbox(), "echo out; echo err >&2; exit 42").await;
    assert_eq!(out.exit_code, 42);
    assert_eq!(out.stdout_str(), "out\n");
    assert_eq!(out.stderr_str(), "err\n");
    assert!(!out.success() && !out.timed_out && !out.stdout_truncated);
    let out = sandbox()
        .run(["printf", "%s|", "a b", "$HOME"])
        .await
        .unwrap();
    assert_eq!(out.stdout_str(), "a b|$HOME|", "argv runs without a shell");
    let out = sandbox().run(["/no/such/program"]).await.unwrap();
    assert_eq!(out.exit_code, 127);
    assert!(out.stderr_str().contains("/no/such/program"));
}

/// Finding (review): a command's own exit 120 was taken for init's mount
/// refusal whenever its stderr was empty or not kept. Only init's message
/// counts, and it is seen whatever the output limit.
#[tokio::test]
async fn a_command_exiting_120_is_not_a_mount_refusal() {
    let _engine = engine_shared().await;
    let ws = tempdir("exit120");
    for limit in [0, 16 << 20] {
        let out = sandbox()
            .workspace(&ws)
            .output_limit(limit)
            .run("exit 120")
            .await
            .unwrap();
        assert_eq!(out.exit_code, 120);
    }
}

/// One-shot runs take the exec options; stdin travels as a file in the
/// sandbox's host directory, under a name no one can guess, readable by the
/// sandbox user only. Attack: another sandbox that sees the host's temp
/// directory (a caller mounted it) cannot list the directory, and one running
/// as another user cannot read the file even told its exact path. (A sandbox
/// of the same uid that is told the name could: the name's 48 random bits are
/// then the only wall; see the README's known limits.)
#[tokio::test]
async fn run_stdin_is_private_to_the_sandbox_user() {
    let _engine = engine_shared().await;
    let before = net_dirs();
    let opts = agent_sandbox::ExecOptions::new()
        .stdin("secret")
        .env("A", "a");
    let run =
        tokio::spawn(async move { sandbox().run_with("read x; echo $x$A; sleep 3", opts).await });
    let mut seen = None;
    for _ in 0..100 {
        let new: Vec<_> = net_dirs()
            .into_iter()
            .filter(|d| !before.contains(d))
            .collect();
        let files: Vec<_> = new
            .iter()
            .flat_map(|d| std::fs::read_dir(d).unwrap().flatten())
            .filter(|e| e.file_name().to_string_lossy().starts_with("stdin"))
            .collect();
        if let Some(f) = files.first() {
            seen = Some((f.path(), f.metadata().unwrap()));
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (path, meta) = seen.expect("the stdin file exists while the run does");
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    assert_ne!(name, "stdin", "its name is not guessable");
    assert_eq!(
        meta.mode() & 0o077,
        0,
        "no one but its owner reads it: {:o}",
        meta.mode()
    );
    let tmp = std::env::temp_dir();
    let inside = Path::new("/hosttmp").join(path.strip_prefix(&tmp).unwrap());
    let dir = inside.parent().unwrap().display().to_string();
    let attack = format!(
        "ls /hosttmp >/dev/null && echo mounted; ls {dir} && echo LISTED; cat {} && echo READ",
        inside.display()
    );
    // Through a gateway the file reaches the sandbox in its own volume,
    // which no other sandbox mounts, and no host directory can be mounted.
    let users: &[(&str, bool)] = if through_gateway().await {
        let err = sandbox()
            .mount(&tmp, "/hosttmp")
            .run("true")
            .await
            .unwrap_err();
        assert_eq!(err.code(), "invalid_argument", "{err}");
        &[]
    } else {
        &[("1234:1234", true), ("65534:65534", false)]
    };
    for &(user, told) in users {
        let attack = if told {
            attack.clone()
        } else {
            format!("ls /hosttmp >/dev/null && echo mounted; ls {dir} && echo LISTED")
        };
        let out = sandbox()
            .user(user)
            .mount(&tmp, "/hosttmp")
            .run(attack.as_str())
            .await
            .unwrap();
        let said = out.stdout_str();
        assert!(
            said.starts_with("mounted"),
            "control: the mount is there ({user}): {said}"
        );
        assert!(
            !said.contains("LISTED"),
            "{user} listed the directory: {said}"
        );
        assert!(
            !said.contains("READ") && !said.contains("secret"),
            "{user} read another sandbox's stdin: {said}"
        );
    }
    let out = run.await.unwrap().unwrap();
    assert_eq!(
        out.stdout_str(),
        "secreta\n",
        "control: the run itself read it"
    );
    let err = sandbox()
        .run_with("true", agent_sandbox::ExecOptions::new().workdir("/etc"))
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        "invalid_argument",
        "a run's workdir stays in /workspace"
    );
}

/// The host directories of this process's sandboxes.
fn net_dirs() -> Vec<std::path::PathBuf> {
    std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let n = p
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            n.starts_with("agent-sandbox-") && n.contains("-net-")
        })
        .collect()
}

#[tokio::test]
async fn streaming_callbacks_see_output_as_it_arrives() {
    let _engine = engine_shared().await;
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = seen.clone();
    let out = run(
        sandbox().on_stdout(move |b| s.lock().unwrap().extend_from_slice(b)),
        "for i in 1 2 3; do echo line$i; sleep 0.1; done",
    )
    .await;
    assert_eq!(
        String::from_utf8(seen.lock().unwrap().clone()).unwrap(),
        "line1\nline2\nline3\n"
    );
    assert_eq!(out.stdout_str(), "line1\nline2\nline3\n");
}

#[tokio::test]
async fn workspace_files_belong_to_the_caller() {
    let _engine = engine_shared().await;
    let ws = tempdir("owner");
    let out = run(
        sandbox().workspace(&ws),
        "echo data > /workspace/mine.txt && id -u",
    )
    .await;
    assert!(out.success(), "{}", out.stderr_str());
    let me = std::fs::metadata(&ws).unwrap();
    let f = std::fs::metadata(ws.join("mine.txt")).unwrap();
    assert_eq!((f.uid(), f.gid()), (me.uid(), me.gid()));
    assert_eq!(out.stdout_str().trim(), me.uid().to_string());
    // Another uid maps through as given, so ownership really follows the sandbox user.
    let ws2 = tempdir("owner2");
    std::fs::set_permissions(&ws2, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let out = run(
        sandbox().workspace(&ws2).user("4321:4321"),
        "echo x > /workspace/theirs.txt",
    )
    .await;
    assert!(out.success(), "{}", out.stderr_str());
    assert_eq!(
        std::fs::metadata(ws2.join("theirs.txt")).unwrap().uid(),
        4321
    );
}

#[tokio::test]
async fn only_workspace_and_tmp_are_writable() {
    let _engine = engine_shared().await;
    let ws = tempdir("rofs");
    std::fs::set_permissions(&ws, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let script = r#"
        for p in /f /etc/f /usr/f /bin/f /root/f /var/f /home/f /.agent-sandbox/f /.agent-sandbox/net/f; do
          if touch "$p" 2>/dev/null; then echo "WROTE $p"; fi
        done
        rm -rf /bin 2>/dev/null; test -x /bin/sh && echo bin-intact
        echo a > /tmp/ok && echo tmp-ok
        echo b > /workspace/ok && echo ws-ok
        cp /bin/true /tmp/t && /tmp/t && echo tmp-exec
        mount -t tmpfs none /mnt 2>/dev/null && echo MOUNTED
    "#;
    let out = run(sandbox().workspace(&ws).user("1000:1000"), script).await;
    let text = out.stdout_str();
    assert!(!text.contains("WROTE"), "{text}");
    assert!(!text.contains("MOUNTED"), "{text}");
    // The engine mounts every tmpfs noexec (the README says so).
    assert!(!text.contains("tmp-exec"), "{text}");
    for want in ["bin-intact", "tmp-ok", "ws-ok"] {
        assert!(text.contains(want), "{want} missing: {text}");
    }
    assert_eq!(std::fs::read_to_string(ws.join("ok")).unwrap(), "b\n");
}

#[tokio::test]
async fn setuid_and_capabilities_give_nothing() {
    let _engine = engine_shared().await;
    let script = r#"
        grep -E '^(NoNewPrivs|CapEff|CapPrm|Seccomp):' /proc/self/status
        python3 -c 'import os; os.setuid(0)' 2>/dev/null && echo SETUID-OK
        su -c id root </dev/null 2>/dev/null && echo SU-OK
        cat /etc/shadow 2>/dev/null && echo SHADOW-READ
        python3 -c 'import ctypes; l = ctypes.CDLL(None, use_errno=True); print("io_uring", l.syscall(425, 1, ctypes.create_string_buffer(120)), ctypes.get_errno())'
        true
    "#;
    let out = run(sandbox().user("1000:1000"), script).await;
    let text = out.stdout_str();
    assert!(text.contains("NoNewPrivs:\t1"), "{text}");
    assert!(text.contains("CapEff:\t0000000000000000"), "{text}");
    assert!(text.contains("CapPrm:\t0000000000000000"), "{text}");
    assert!(
        text.contains("Seccomp:\t2"),
        "seccomp filter active: {text}"
    );
    // Docker 20.10's default profile allows io_uring (fd 3 comes back); ours refuses it.
    assert!(text.contains("io_uring -1 1"), "{text}");
    for bad in ["SETUID-OK", "SU-OK", "SHADOW-READ"] {
        assert!(!text.contains(bad), "{bad}: {text}");
    }
}

/// A program that ignores the proxy has nowhere to go: the host's real
/// addresses (every interface, the bridge gateway) and another container are
/// reachable from a control container on the default bridge (it connects,
/// and the host listener counts it), and unreachable from the sandbox
/// (ENETUNREACH under runc: it has no interface but `lo`), which adds nothing to the
/// listener's count.
#[tokio::test]
async fn direct_connections_cannot_leave_the_sandbox() {
    let _engine = engine_shared().await;
    let d = docker().await;
    let other = d
        .create_container(
            None::<bollard::query_parameters::CreateContainerOptions>,
            bollard::models::ContainerCreateBody {
                image: Some(image()),
                cmd: Some(vec![
                    "sh".into(),
                    "-c".into(),
                    "nc -lk -p 8080 >/dev/null".into(),
                ]),
                labels: Some(HashMap::from([(
                    "agent-sandbox-test".to_owned(),
                    "peer".to_owned(),
                )])),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let _peer = crate::support::docker::RemoveOnDrop(other.id.clone());
    d.start_container(
        &other.id,
        None::<bollard::query_parameters::StartContainerOptions>,
    )
    .await
    .unwrap();
    let bridge = d
        .inspect_container(&other.id, None::<InspectContainerOptions>)
        .await
        .unwrap()
        .network_settings
        .and_then(|n| n.networks)
        .and_then(|n| n.into_values().next())
        .expect("the peer is on the default network (bridge; podman on Podman)");
    let peer_ip = bridge.ip_address.expect("the peer's address");
    let gw = bridge.gateway.expect("the bridge's gateway");
    // Locally the bridge's gateway is this host, so it is probed below. A
    // remote engine's bridge belongs to its machine: the peer there is
    // probed, and this machine's addresses (where the library runs).
    assert!(
        through_gateway().await || host_addresses().contains(&gw),
        "the gateway is among the host addresses probed"
    );
    assert_no_direct_route(
        unreachable_errno(),
        &[(peer_ip, 8080)],
        |script| async move {
            let out = sandbox().run(["python3", "-c", &script]).await.unwrap();
            assert_removed(&out).await;
            out.stdout_str()
        },
    )
    .await;
    // No interface but loopback.
    let out = run(sandbox(), "cat /proc/net/dev").await;
    let text = out.stdout_str();
    let ifaces: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_once(':').map(|(n, _)| n.trim()))
        .filter(|n| !n.contains('|'))
        .collect();
    assert_eq!(ifaces, vec!["lo"], "loopback only: {text}");
}

/// A process that binds the next synthetic addresses first, hoping to
/// receive what another command sends to a name resolved later, is
/// skipped: the name gets an address only init listens on, and the
/// connection still reaches the proxy (its refusal is in the result).
#[tokio::test]
async fn squatted_synthetic_addresses_are_never_handed_out() {
    let _engine = engine_shared().await;
    let script = r#"python3 -c '
import socket, time
held = []
for last in (1, 2):
    s = socket.socket(); s.bind(("127.100.0.%d" % last, 80)); s.listen(); held.append(s)
# A server on every address of a capture port: no address helps, so
# names still resolve (that port just stays uncaptured).
s = socket.socket(); s.bind(("0.0.0.0", 443)); s.listen(); held.append(s)
print("squatting", flush=True)
time.sleep(30)
' &
sleep 1
getent hosts victim.test
getent hosts other.test
curl -s -o /dev/null -w "%{http_code}
" --noproxy "*" http://victim.test/ || true
kill %1
"#;
    let out = run(sandbox(), script).await;
    let text = out.stdout_str();
    assert!(text.contains("squatting"), "{text}");
    let addr = text
        .lines()
        .find_map(|l| l.strip_suffix("victim.test").map(str::trim))
        .unwrap_or_default();
    assert_eq!(addr, "127.100.0.3", "{text}");
    assert!(text.contains("127.100.0.4     other.test"), "{text}");
    let refused: Vec<_> = out.refusals().map(|e| (e.host.as_str(), e.via)).collect();
    assert_eq!(
        refused,
        [("victim.test", agent_sandbox::proxy::Via::Capture)],
        "{text}"
    );
}

/// Init keeps answering under a flood: connections pour into one captured
/// address while 600 new names are looked up (each adds listeners and
/// wakes init's accept loop), and a lookup and a command after it still work.
#[tokio::test]
async fn dns_and_capture_stay_up_under_a_connection_flood() {
    let _engine = engine_shared().await;
    let script = r#"python3 -c '
import socket, threading, time
addr = socket.gethostbyname("flood.test")
stop = time.time() + 4
def flood():
    while time.time() < stop:
        try: socket.create_connection((addr, 443), timeout=2).close()
        except OSError: pass
for _ in range(4): threading.Thread(target=flood, daemon=True).start()
ok = sum(socket.gethostbyname("n%d.flood.test" % i).startswith("127.100.") for i in range(600))
print("resolved", ok, socket.gethostbyname("after.flood.test"), flush=True)
'
echo alive
"#;
    let out = run(sandbox(), script).await;
    let text = out.stdout_str();
    assert!(
        text.contains("resolved 600 127.100.2."),
        "exit {} timed_out {} oom {} after {:?}\n{text}{}",
        out.exit_code,
        out.timed_out,
        out.oom_killed,
        out.duration,
        out.stderr_str()
    );
    assert!(text.contains("alive"), "{text}");
    assert!(
        out.refusals().all(|e| e.host == "flood.test"),
        "only the flooded name reached the proxy"
    );
}

/// Init relays at most 64 connections at once (bridge and capture
/// together): the 65th and later get init's 503 at once, so a sandbox that
/// holds connections open cannot use up its own pids limit (under gVisor
/// that ends the whole sandbox); once they close, the proxy serves again.
#[tokio::test]
async fn init_relays_a_bounded_number_of_connections_at_once() {
    let _engine = engine_shared().await;
    let script = r#"python3 -c '
import socket, time
held = [socket.create_connection(("127.0.0.1", 3128)) for _ in range(80)]
time.sleep(1)
busy = 0
for s in held:
    s.settimeout(0.2)
    try:
        busy += s.recv(200).startswith(b"HTTP/1.1 503")
    except socket.timeout:
        pass
print("busy", busy, flush=True)
for s in held: s.close()
time.sleep(1)
'
curl -s -o /dev/null -w "after %{http_code}
" http://blocked.test/
"#;
    let out = run(sandbox(), script).await;
    let text = out.stdout_str();
    assert!(text.contains("busy 16\n"), "{text}{}", out.stderr_str());
    assert!(text.contains("after 403"), "{text}{}", out.stderr_str());
}

/// Names resolve inside, to a distinct synthetic loopback address each
/// (never the address a pin gives the proxy, never 127.0.0.1): the real
/// lookup is the proxy's, on the host. Under runc and gVisor alike.
#[tokio::test]
async fn lookups_inside_get_synthetic_addresses_only() {
    let _engine = engine_shared().await;
    let script = "import socket\nfor n in ['canary.test', 'allowed.test', 'canary.test', 'localhost']:\n    print(n, sorted({a[4][0] for a in socket.getaddrinfo(n, 80)}))\n";
    let out = sandbox()
        .allow("allowed.test")
        .resolve("allowed.test", 80, "10.9.8.7")
        .run(["python3", "-c", script])
        .await
        .unwrap();
    assert_removed(&out).await;
    let text = out.stdout_str();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    let canary = lines[0].strip_prefix("canary.test ").unwrap_or_default();
    let allowed = lines[1].strip_prefix("allowed.test ").unwrap_or_default();
    assert!(
        canary.starts_with("['127.100.") && allowed.starts_with("['127.100."),
        "{text}"
    );
    assert_ne!(canary, allowed, "one address per name: {text}");
    assert_eq!(lines[2], lines[0], "and the same one again: {text}");
    assert!(lines[3].contains("'127.0.0.1'"), "{text}");
    assert!(
        !text.contains("10.9.8.7"),
        "the pin stays the proxy's: {text}"
    );
    assert!(
        out.events.is_empty(),
        "a lookup is not a connection: {:?}",
        out.events
    );
}

#[tokio::test]
async fn the_proxy_is_the_only_way_out_and_it_enforces_the_policy() {
    let _engine = engine_shared().await;
    let canary = HttpCanary::serving("hello from allowed.test").await;
    let port = canary.port();
    let script = format!(
        "curl -sS http://allowed.test:{port}/; echo; \
         curl -sS -p http://allowed.test:{port}/tunnel; echo; \
         curl -sS -o /dev/null -D - http://denied.test:{port}/ | grep -i -e '^HTTP' -e x-agent-sandbox-denied; \
         curl -sS --noproxy '' -o /dev/null -D - http://127.0.0.1:{port}/ | grep -i x-agent-sandbox-denied; \
         curl -sS --noproxy '*' --max-time 3 http://127.0.0.1:{port}/ || echo direct-failed"
    );
    let out = run(
        sandbox()
            .allow(format!("allowed.test:{port}"))
            .resolve("allowed.test", port, "127.0.0.1"),
        &script,
    )
    .await;
    let text = out.stdout_str();
    assert_eq!(
        text.matches("hello from allowed.test").count(),
        2,
        "{text}{}",
        out.stderr_str()
    );
    assert!(text.contains("403"), "{text}");
    assert!(
        text.contains("x-agent-sandbox-denied: no-matching-rule"),
        "{text}"
    );
    assert!(
        text.contains("x-agent-sandbox-denied: ip-literal"),
        "{text}"
    );
    assert!(text.contains("direct-failed"), "{text}");
    assert_eq!(
        canary.connections(),
        2,
        "the canary saw only the two allowed requests"
    );
    let allowed: Vec<_> = out
        .events
        .iter()
        .filter(|e| e.verdict == Verdict::Allow)
        .collect();
    let denied: Vec<_> = out
        .events
        .iter()
        .filter(|e| e.verdict == Verdict::Deny)
        .collect();
    assert_eq!((allowed.len(), denied.len()), (2, 2), "{:?}", out.events);
    assert!(out
        .events
        .iter()
        .all(|e| e.sandbox_id.as_deref() == Some(out.sandbox_id.as_str())));
    assert!(denied.iter().any(|e| e.host == "denied.test"));
}

#[tokio::test]
async fn git_clones_through_the_proxy() {
    let _engine = engine_shared().await;
    let src = tempdir("git-src");
    let sh = |cmd: &str, dir: &Path| {
        let ok = std::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            ok.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&ok.stderr)
        );
    };
    sh("git init -q work && cd work && echo 'cloned through the proxy' > README && git add README && git -c user.name=t -c user.email=t@t.test commit -qm init && git clone -q --bare . ../repo.git && cd ../repo.git && git update-server-info", &src);
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    let mut server = std::process::Command::new("python3")
        .args([
            "-m",
            "http.server",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--directory",
        ])
        .arg(&src)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..50 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = run(
        sandbox()
            .allow(format!("git.test:{port}"))
            .resolve("git.test", port, "127.0.0.1"),
        &format!("git clone -q http://git.test:{port}/repo.git /tmp/r && cat /tmp/r/README"),
    )
    .await;
    let _ = server.kill();
    let _ = server.wait();
    assert!(out.success(), "{}", out.stderr_str());
    assert_eq!(out.stdout_str(), "cloned through the proxy\n");
}

#[tokio::test]
async fn fork_bomb_is_contained_by_the_pids_limit() {
    let _engine = engine_shared().await;
    let script = "import os, time\nn = 0\ntry:\n    while n < 10000:\n        if os.fork() == 0:\n            time.sleep(30); os._exit(0)\n        n += 1\nexcept OSError:\n    pass\nprint('forked', n)\n";
    let out = sandbox()
        .pids(64)
        .timeout(Duration::from_secs(60))
        .run(["python3", "-c", script])
        .await
        .unwrap();
    assert_removed(&out).await;
    let n: usize = out
        .stdout_str()
        .trim()
        .strip_prefix("forked ")
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{} {}", out.stdout_str(), out.stderr_str()));
    assert!(n < 64, "forked {n} processes under a limit of 64");
    assert!(!out.timed_out);
}

#[tokio::test]
async fn memory_bomb_is_oom_killed_and_reported() {
    let _engine = engine_shared().await;
    let out = sandbox().memory(64 << 20).run(MEMORY_BOMB).await.unwrap();
    assert_removed(&out).await;
    if podman().await {
        // Podman 4.3 on cgroup v1 does not say OOMKilled: killed, unflagged
        // (sessions flag it: init reads the cgroup; see the README).
        assert_eq!(out.exit_code, 137, "{}", out.stderr_str());
        assert!(!out.stdout_str().contains("survived"));
        return;
    }
    assert_oom_killed(&out);
}

#[tokio::test]
async fn tmpfs_fill_stops_at_its_size() {
    let _engine = engine_shared().await;
    let out = run(sandbox().tmp_size(16 << 20), "dd if=/dev/zero of=/tmp/fill bs=1M count=64 2>/dev/null; echo rc=$?; du -k /tmp/fill | cut -f1").await;
    let text = out.stdout_str();
    let mut lines = text.lines();
    assert_ne!(lines.next(), Some("rc=0"), "{text}");
    let kib: u64 = lines.next().unwrap().trim().parse().unwrap();
    assert!(kib <= 16 * 1024, "{kib} KiB written into a 16 MiB tmpfs");
}

#[tokio::test]
async fn output_flood_is_capped_but_still_streamed() {
    let _engine = engine_shared().await;
    let streamed = Arc::new(AtomicUsize::new(0));
    let s = streamed.clone();
    let out = run(
        sandbox().output_limit(1 << 20).on_stdout(move |b| {
            s.fetch_add(b.len(), Ordering::SeqCst);
        }),
        "head -c 20000000 /dev/zero",
    )
    .await;
    assert_eq!(out.stdout.len(), 1 << 20);
    assert!(out.stdout_truncated);
    assert_eq!(streamed.load(Ordering::SeqCst), 20_000_000);
}

#[tokio::test]
async fn timeout_kills_a_process_that_ignores_sigterm() {
    let _engine = engine_shared().await;
    let out = run(
        sandbox().timeout(Duration::from_secs(2)),
        "trap '' TERM; echo started; sleep 60; echo NOT-KILLED",
    )
    .await;
    assert!(out.timed_out);
    assert!(!out.success());
    assert_eq!(out.stdout_str(), "started\n");
}

#[tokio::test]
async fn bad_input_is_a_clear_error_before_anything_starts() {
    let _engine = engine_shared().await;
    let e = sandbox()
        .workspace("/nonexistent/agent-sandbox-ws")
        .run("true")
        .await
        .unwrap_err();
    assert_eq!(e.code(), "workspace");
    assert!(e.to_string().contains("does not exist"), "{e}");
    let e = sandbox().workspace("/").run("true").await.unwrap_err();
    assert_eq!(e.code(), "workspace");
    let e = sandbox().workspace("/run").run("true").await.unwrap_err();
    assert!(e.to_string().contains("Docker socket"), "{e}");
    let e = sandbox().allow("*.com").run("true").await.unwrap_err();
    assert_eq!(e.code(), "policy");
    assert!(e.to_string().contains("*.com"), "{e}");
    let e = sandbox()
        .resolve_spec("nonsense")
        .run("true")
        .await
        .unwrap_err();
    assert_eq!(e.code(), "policy");
    let e = sandbox().env("A=B", "c").run("true").await.unwrap_err();
    assert_eq!(e.code(), "invalid_argument");
    let e = sandbox().memory(1024).run("true").await.unwrap_err();
    assert_eq!(e.code(), "invalid_argument");
    let e = sandbox().run("").await.unwrap_err();
    assert_eq!(e.code(), "invalid_argument");
}

#[tokio::test]
async fn a_missing_image_is_its_own_error() {
    let _engine = engine_shared().await;
    // A registry on a closed loopback port: the pull path runs and fails
    // without any traffic leaving the machine.
    let e = Sandbox::builder()
        .image("localhost:1/agent-sandbox/missing:1")
        .run("true")
        .await
        .unwrap_err();
    assert_eq!(e.code(), "image_not_found", "{e}");
    assert!(
        e.to_string()
            .contains("localhost:1/agent-sandbox/missing:1"),
        "{e}"
    );
}

#[tokio::test]
async fn init_runs_in_an_image_without_libc() {
    let _engine = engine_shared().await;
    let d = docker().await;
    let tag = "agent-sandbox/test-empty:1";
    if d.inspect_image(tag).await.is_err() {
        let dir = tempdir("empty-image");
        let ok = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("mkdir -p {0}/root/tmp {0}/root/workspace && tar -C {0}/root -c . | docker import - {tag}", dir.display()))
            .status()
            .unwrap();
        assert!(ok.success());
    }
    // The init is PID 1; it starts a second copy of itself as the command
    // (a gateway puts it in the shared directory instead of a bind mount).
    let init = if through_gateway().await {
        "/.agent-sandbox/net/init"
    } else {
        "/.agent-sandbox/init"
    };
    let out = Sandbox::builder()
        .image(tag)
        .run([init, "--", "/no/such/binary"])
        .await
        .unwrap();
    assert_removed(&out).await;
    assert_eq!(out.exit_code, 127, "{}", out.stderr_str());
    assert!(
        out.stderr_str().contains("cannot run \"/no/such/binary\""),
        "{}",
        out.stderr_str()
    );
}

#[tokio::test]
async fn gc_removes_containers_whose_owner_is_gone() {
    let _engine = engine_shared().await;
    let d = docker().await;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_owned();
    let mk = |owner: String| bollard::models::ContainerCreateBody {
        image: Some(image()),
        cmd: Some(vec!["true".into()]),
        labels: Some(HashMap::from([
            (labels::MANAGED.to_owned(), "1".to_owned()),
            (labels::OWNER.to_owned(), owner),
        ])),
        ..Default::default()
    };
    // This process's first sandbox collects orphans in the background,
    // once. Make sure that collection is over (it removes a marker orphan
    // made before it, or ran before the marker existed), so `dead` below can
    // only be removed by the `gc` call under test.
    let marker = d
        .create_container(
            None::<bollard::query_parameters::CreateContainerOptions>,
            mk(format!("{host}:999999998:1")),
        )
        .await
        .unwrap();
    run(sandbox(), "true").await;
    for _ in 0..50 {
        if is_not_found(&d, &marker.id).await {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let dead = d
        .create_container(
            None::<bollard::query_parameters::CreateContainerOptions>,
            mk(format!("{host}:999999999:1")),
        )
        .await
        .unwrap();
    let alive = d
        .create_container(
            None::<bollard::query_parameters::CreateContainerOptions>,
            mk(agent_sandbox::runtime::owner_label_value()),
        )
        .await
        .unwrap();
    let report = gc(&Engine::connect().await.unwrap()).await.unwrap();
    assert!(
        report.removed.contains(&dead.id),
        "gc did not report {}: {report:?}",
        dead.id
    );
    assert!(!report.removed.contains(&alive.id));
    assert!(
        is_not_found(&d, &dead.id).await,
        "the dead owner's container is still there"
    );
    assert!(
        is_not_found(&d, &marker.id).await,
        "the marker orphan is still there"
    );
    assert!(d
        .inspect_container(&alive.id, None::<InspectContainerOptions>)
        .await
        .is_ok());
    d.remove_container(
        &alive.id,
        Some(bollard::query_parameters::RemoveContainerOptions {
            force: true,
            ..Default::default()
        }),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn many_sandboxes_run_at_once() {
    let _engine = engine_shared().await;
    let runs = (0..6).map(|i| async move { sandbox().run(format!("echo {i}")).await });
    let outs = futures_util::future::join_all(runs).await;
    for (i, o) in outs.into_iter().enumerate() {
        let o = o.unwrap();
        assert_eq!(o.stdout_str(), format!("{i}\n"));
        assert_removed(&o).await;
    }
}

/// Finding: run 1 plants `sub -> /etc` in its workspace; run 2 names
/// `parent/sub` as its workspace and used to get the host's `/etc`
/// read-write.
#[tokio::test]
async fn a_symlink_planted_by_one_sandbox_is_not_another_sandboxs_workspace() {
    let _engine = engine_shared().await;
    let parent = tempdir("plant");
    let planted = run(
        sandbox().workspace(&parent),
        "mkdir real && echo mine > real/f && ln -s /etc sub && echo planted",
    )
    .await;
    assert_eq!(
        planted.stdout_str().trim(),
        "planted",
        "{}",
        planted.stderr_str()
    );
    // Control: the real directory beside the link is usable.
    let ok = run(sandbox().workspace(parent.join("real")), "cat f").await;
    assert_eq!(ok.stdout_str(), "mine\n");
    let err = sandbox()
        .workspace(parent.join("sub"))
        .run("cat /workspace/hostname")
        .await
        .unwrap_err();
    assert_eq!(err.code(), "workspace");
    let link = parent.join("sub");
    assert!(
        err.to_string()
            .contains(&format!("symbolic link {} -> /etc", link.display())),
        "{err}"
    );
    // The same for an extra mount (which a gateway refuses anyway).
    let err = sandbox()
        .mount(parent.join("sub"), "/data")
        .run("true")
        .await
        .unwrap_err();
    let code = if through_gateway().await {
        "invalid_argument"
    } else {
        "workspace"
    };
    assert_eq!(err.code(), code, "{err}");
}

/// A concurrent swapper exchanges the workspace with a symlink to a host
/// directory (atomically, so the path is never missing) while sandboxes
/// start on it, under runc and under gVisor. No sandbox may ever see the other directory: each run either
/// gets the real workspace, is refused at the check (the link is there), or
/// is ended by init before the command runs (the swap happened between the
/// check and the engine's mount).
#[tokio::test]
async fn a_workspace_swapped_during_start_never_mounts_the_other_directory() {
    let _engine = engine_shared().await;
    let root = tempdir("swap");
    let secret = tempdir("swap-secret");
    std::fs::write(secret.join("marker"), "SECRET").unwrap();
    std::fs::create_dir(root.join("ws")).unwrap();
    std::os::unix::fs::chown(root.join("ws"), Some(TEST_UID), Some(TEST_UID)).unwrap();
    std::fs::write(root.join("ws/marker"), "mine").unwrap();
    std::os::unix::fs::symlink(&secret, root.join("other")).unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let swaps = Arc::new(AtomicUsize::new(0));
    let swapper = {
        let (stop, swaps, root) = (stop.clone(), swaps.clone(), root.clone());
        std::thread::spawn(move || {
            let dir = rustix::fs::open(
                &root,
                rustix::fs::OFlags::DIRECTORY,
                rustix::fs::Mode::empty(),
            )
            .unwrap();
            while !stop.load(Ordering::SeqCst) {
                rustix::fs::renameat_with(
                    &dir,
                    "ws",
                    &dir,
                    "other",
                    rustix::fs::RenameFlags::EXCHANGE,
                )
                .unwrap();
                swaps.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_micros(300));
            }
        })
    };
    // Under runc init compares the mount; under gVisor the host does,
    // through the gofer, before init lets anything run. Through a gateway
    // the workspace is copied from the checked directory's descriptor,
    // never its path (the remote test engine has no runsc; Podman refuses
    // gVisor with a bind mount, see the_jail_holds_under_gvisor).
    let runtimes: &[&str] = if through_gateway().await || podman().await {
        &["runc"]
    } else {
        &["runc", "runsc"]
    };
    for &runtime in runtimes {
        let (mut mounted, mut refused, mut ended) = (0, 0, 0);
        for _ in 0..12 {
            match sandbox()
                .runtime(runtime)
                .workspace(root.join("ws"))
                .run("cat /workspace/marker")
                .await
            {
                Ok(out) => {
                    assert_removed(&out).await;
                    assert_eq!(
                        out.stdout_str(),
                        "mine",
                        "{runtime}: a swapped mount was used: {}",
                        out.stderr_str()
                    );
                    mounted += 1;
                }
                Err(e)
                    if e.to_string().contains("symbolic link")
                        || e.to_string().contains("changed while it was being checked") =>
                {
                    refused += 1
                }
                Err(e)
                    if e.to_string()
                        .contains("was replaced while the sandbox started") =>
                {
                    ended += 1
                }
                Err(e) => panic!("{runtime}: unexpected error: {e}"),
            }
        }
        eprintln!(
            "{runtime}: swaps so far {}, mounted {mounted}, refused {refused}, ended before the command {ended}",
            swaps.load(Ordering::SeqCst)
        );
        // The swapper really interfered (control): some runs met the link.
        assert!(
            refused + ended > 0,
            "{runtime}: the swapper never got in the way"
        );
    }
    stop.store(true, Ordering::SeqCst);
    swapper.join().unwrap();
}

/// Finding: `cp /usr/bin/python3 py; chmod 4755 py` in the workspace gave
/// the host a setuid binary. The seccomp profile refuses the bits (EPERM)
/// for chmod and for files created with them; the host sees none.
#[tokio::test]
async fn setuid_bits_cannot_be_set_in_the_workspace() {
    let _engine = engine_shared().await;
    let ws = tempdir("setuid");
    let script = r#"
        cp /usr/bin/python3 py && echo copied
        chmod 4755 py 2>&1; echo chmod=$?
        chmod 2755 py 2>&1; echo chmodg=$?
        chmod 755 py && echo plain-chmod-ok
        python3 -c 'import os; os.open("c", os.O_CREAT | os.O_WRONLY, 0o4755)' 2>&1 | tail -1
        python3 -c 'import os; os.mknod("n", 0o104755)' 2>&1 | tail -1
        true
    "#;
    let out = run(sandbox().workspace(&ws), script).await;
    let text = out.stdout_str();
    for want in [
        "copied",
        "chmod=1",
        "chmodg=1",
        "plain-chmod-ok",
        "PermissionError: [Errno 1] Operation not permitted",
    ] {
        assert!(text.contains(want), "{want} missing: {text}");
    }
    for entry in std::fs::read_dir(&ws).unwrap() {
        let entry = entry.unwrap();
        let mode = entry.metadata().unwrap().mode();
        assert_eq!(mode & 0o6000, 0, "{:?} has mode {mode:o}", entry.path());
    }
    assert!(out.setid_stripped.is_empty(), "{:?}", out.setid_stripped);
}

/// Finding: a root caller's sandbox ran as root. Now it runs as the
/// workspace's owner, as `nobody` without a workspace, refuses a root-owned
/// workspace, and runs as root only when asked.
#[tokio::test]
async fn a_root_caller_gets_an_unprivileged_sandbox_unless_it_asks() {
    let _engine = engine_shared().await;
    let me = std::fs::metadata("/proc/self").unwrap().uid();
    let ws = tempdir("uid");
    let owner = std::fs::metadata(&ws).unwrap();
    let out = run(sandbox().workspace(&ws), "id -u; id -g").await;
    assert_eq!(
        out.stdout_str(),
        format!("{}\n{}\n", owner.uid(), owner.gid())
    );
    assert_ne!(out.stdout_str().lines().next(), Some("0"));
    let out = run(sandbox(), "id -u").await;
    let expected = if me == 0 {
        "65534".to_owned()
    } else {
        me.to_string()
    };
    assert_eq!(out.stdout_str().trim(), expected);
    if me == 0 {
        let root_ws = tempdir("uid-root");
        std::os::unix::fs::chown(&root_ws, Some(0), Some(0)).unwrap();
        let err = sandbox().workspace(&root_ws).run("true").await.unwrap_err();
        assert_eq!(err.code(), "workspace");
        assert!(err.to_string().contains("is owned by root"), "{err}");
        let out = run(sandbox().workspace(&root_ws).user("0:0"), "id -u").await;
        assert_eq!(out.stdout_str().trim(), "0", "explicit root");
    }
}

/// Finding: refused requests sent straight to the proxy socket in a loop
/// grew the host by 100 MB/s (one event each, 15 KB of host name each).
/// Now identical refusals fold into one event with a count, long fields are
/// cut, and new connections are rate-limited per sandbox.
#[tokio::test]
async fn a_flood_of_refusals_is_one_folded_event_and_rate_limited() {
    let _engine = engine_shared().await;
    let script = r#"
import socket, time
req = b"GET ftp://a/" + b"x" * 15000 + b" HTTP/1.1\r\nHost: a\r\n\r\n"
n, t0 = 0, time.time()
while time.time() - t0 < 3:
    s = socket.create_connection(("127.0.0.1", 3128))
    s.sendall(req)
    if s.recv(12).startswith(b"HTTP/1.1 4"):
        n += 1
    s.close()
print(n, round(time.time() - t0, 2))
"#;
    let out = run(
        sandbox(),
        &format!("python3 -c '{}'", script.replace('\'', "'\\''")),
    )
    .await;
    let text = out.stdout_str();
    let mut it = text.split_whitespace();
    let refused: u64 = it
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{text} {}", out.stderr_str()));
    let secs: f64 = it.next().unwrap().parse().unwrap();
    assert!(
        refused > 50,
        "the flood was refused {refused} times: {}",
        out.stderr_str()
    );
    // The rate limit: a burst of 200 plus 200 a second.
    assert!(
        (refused as f64) <= 200.0 + 200.0 * secs + 20.0,
        "{refused} refusals in {secs} s"
    );
    let denied: Vec<_> = out
        .events
        .iter()
        .filter(|e| e.verdict == Verdict::Deny)
        .collect();
    assert!(denied.len() <= 2, "{} entries", denied.len());
    assert_eq!(denied.iter().map(|e| e.count).sum::<u64>(), refused);
    assert!(denied.iter().all(|e| e.host.len() <= 256), "long host kept");
    assert_eq!(out.events_dropped, 0);
}

/// gVisor as a second wall: `make test` registers Debian's `runsc` with the
/// engine (`--network=none --host-uds=all`). The jail's essentials hold
/// under it: the runtime is really runsc, the proxy is the only way out (a
/// control request through it reaches the canary, a direct one does not),
/// the workspace is writable, and sessions work over the host's unix
/// socket. gVisor does not apply the engine's seccomp profile (its own
/// kernel is the wall: its io_uring never reaches the host's), so a setuid
/// bit can be set inside, and the host-side sweep removes it before the run
/// returns. (Debian's 2022 runsc fails coreutils' `statx` flags, so the
/// probes use Python rather than `ls`/`stat`.)
#[tokio::test]
async fn the_jail_holds_under_gvisor() {
    let _engine = engine_shared().await;
    let canary = HttpCanary::serving("through-gvisor").await;
    let port = canary.port();
    let ws = tempdir("runsc");
    let b = sandbox()
        .runtime("runsc")
        .workspace(&ws)
        .allow(format!("canary.test:{port}"))
        .resolve("canary.test", port, "127.0.0.1");
    if through_gateway().await {
        // The remote test engine has no runsc: a clear error naming the
        // engine and the runtime, before anything runs.
        let err = b.run("true").await.unwrap_err();
        let said = err.to_string();
        assert!(
            said.contains("runsc") && said.contains("at tcp://"),
            "{said}"
        );
        return;
    }
    if podman().await {
        // Its mounts cannot be confirmed through Podman: refused, naming it.
        let err = b.run("true").await.unwrap_err();
        let said = err.to_string();
        assert!(
            said.contains("Podman") && said.contains("Docker only"),
            "{said}"
        );
        return;
    }
    let probe = format!(
        r#"
import ctypes, os, socket, subprocess
print("release", os.uname().release)
print("proxied", subprocess.run(["curl", "-s", "http://canary.test:{port}/"], capture_output=True, text=True).stdout)
open("/workspace/f", "w").write("x")
try:
    os.chmod("/workspace/f", 0o4755)
    print("chmod OK")
except OSError as e:
    print("chmod", e.errno)
"#
    );
    let out = run(b.clone(), &format!("python3 -c '{probe}'")).await;
    let text = out.stdout_str();
    assert!(
        text.contains("proxied through-gvisor"),
        "control: {text} {}",
        out.stderr_str()
    );
    assert_eq!(canary.connections(), 1, "only the proxied request arrived");
    // No route out but the proxy (control: a container with a network
    // reaches every host address first).
    let direct = b.clone();
    assert_no_direct_route(unreachable_errno_under("runsc"), &[], |script| async move {
        let out = direct.run(["python3", "-c", &script]).await.unwrap();
        assert_removed(&out).await;
        out.stdout_str()
    })
    .await;
    assert!(text.contains("chmod OK"), "{text}");
    assert_eq!(std::fs::read_to_string(ws.join("f")).unwrap(), "x");
    assert_eq!(out.setid_stripped, ["f"]);
    assert_eq!(
        std::fs::metadata(ws.join("f")).unwrap().mode() & 0o7777,
        0o755
    );
    // The runtime really was gVisor (its kernel reports its own release).
    let session = b.start().await.unwrap();
    let id = session.container().unwrap();
    let info = docker()
        .await
        .inspect_container(&id, None::<InspectContainerOptions>)
        .await
        .unwrap();
    assert_eq!(info.host_config.unwrap().runtime.as_deref(), Some("runsc"));
    let out = session
        .exec("python3 -c 'import os; print(os.uname().release)'")
        .await
        .unwrap();
    assert_eq!(
        out.stdout_str().trim(),
        text.lines().next().unwrap().trim_start_matches("release ")
    );
    assert_eq!(
        session.exec("echo exec-ok").await.unwrap().stdout_str(),
        "exec-ok\n"
    );
    session.close().await.unwrap();
}

/// The privilege attacks again as uid 0 inside (a caller who asked for
/// root): file permissions no longer stop anything, so each failure below
/// is the hardening's (read-only root: EROFS; no capabilities: EPERM).
#[tokio::test]
async fn privileged_attacks_fail_even_as_root_inside() {
    let _engine = engine_shared().await;
    let script = r#"
import ctypes, os
def t(name, f):
    try:
        f()
        print(name, "OK")
    except OSError as e:
        print(name, e.errno)
print("uid", os.getuid())
t("etc", lambda: open("/etc/agent-sandbox-x", "w"))
t("usr", lambda: open("/usr/agent-sandbox-x", "w"))
t("vartmp", lambda: open("/var/tmp/agent-sandbox-x", "w"))
t("chroot", lambda: os.chroot("/tmp"))
t("mknod", lambda: os.mknod("/tmp/null", 0o20666, os.makedev(1, 3)))
t("chown", lambda: os.chown("/tmp", 1000, 1000))
libc = ctypes.CDLL(None, use_errno=True)
print("mount", libc.mount(b"none", b"/mnt", b"tmpfs", 0, None), ctypes.get_errno())
print("unshare", libc.unshare(0x20000), ctypes.get_errno())
t("tmp", lambda: open("/tmp/ok", "w"))
"#;
    let out = run(sandbox().user("0:0"), &format!("python3 -c '{script}'")).await;
    let text = out.stdout_str();
    let want = [
        "uid 0",
        "etc 30",
        "usr 30",
        "vartmp 30",
        "chroot 1",
        "mknod 1",
        "chown 1",
        "mount -1 1",
        "unshare -1 1",
        // Control: root can still write where the sandbox may.
        "tmp OK",
    ];
    for w in want {
        assert!(
            text.lines().any(|l| l == w),
            "{w:?} missing: {text}{}",
            out.stderr_str()
        );
    }
}

/// The mount table seen from inside is exactly the expected one: of the
/// host's files only the workspace (read-write), init and the socket
/// directory (read-only), and the engine's three read-only `/etc` files;
/// the root read-only; `/tmp`, `/run` and `/dev/shm` at their documented
/// sizes with `nosuid,nodev`. Read from `/proc/self/mountinfo` (runc).
#[tokio::test]
async fn the_mount_table_is_exactly_the_expected_one() {
    let _engine = engine_shared().await;
    let ws = tempdir("mounts");
    let out = run(sandbox().workspace(&ws), "cat /proc/self/mountinfo").await;
    let text = out.stdout_str();
    let virtual_fs = [
        "proc", "tmpfs", "devpts", "sysfs", "cgroup", "cgroup2", "mqueue", "overlay",
    ];
    let mut host_mounts = Vec::new();
    let mut tmpfs = std::collections::BTreeMap::new();
    let mut root = None;
    for line in text.lines() {
        let (left, right) = line.split_once(" - ").expect("mountinfo line");
        let f: Vec<&str> = left.split(' ').collect();
        let r: Vec<&str> = right.split(' ').collect();
        let (point, opts, fstype, super_opts) = (f[4], f[5], r[0], r[2]);
        if point == "/" {
            root = Some((
                fstype,
                opts.split(',').next().unwrap_or_default().to_owned(),
            ));
        } else if !virtual_fs.contains(&fstype) && fstype != "shm" {
            host_mounts.push((
                point.to_owned(),
                opts.split(',').next().unwrap_or_default().to_owned(),
            ));
        }
        if ["/tmp", "/run", "/dev/shm"].contains(&point) {
            let size = super_opts
                .split(',')
                .find(|o| o.starts_with("size="))
                .unwrap_or_default()
                .to_owned();
            tmpfs.insert(point.to_owned(), (size, opts.to_owned()));
        }
    }
    assert_eq!(
        root,
        Some(("overlay", "ro".to_owned())),
        "read-only root: {text}"
    );
    host_mounts.sort();
    let expected: &[(&str, &str)] = if through_gateway().await {
        // Volumes for the shared directory (init is in it) and the
        // workspace; the engine's own resolv.conf, hosts and hostname
        // (agent-sandbox's passwd and group lines need a bind mount).
        &[
            ("/.agent-sandbox/net", "ro"),
            ("/etc/hostname", "ro"),
            ("/etc/hosts", "ro"),
            ("/etc/resolv.conf", "ro"),
            ("/workspace", "rw"),
        ]
    } else {
        &[
            ("/.agent-sandbox/init", "ro"),
            ("/.agent-sandbox/net", "ro"),
            ("/etc/group", "ro"),
            ("/etc/hostname", "ro"),
            ("/etc/hosts", "ro"),
            ("/etc/passwd", "ro"),
            ("/etc/resolv.conf", "ro"),
            ("/workspace", "rw"),
        ]
    };
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(p, m)| ((*p).to_owned(), (*m).to_owned()))
        .collect();
    assert_eq!(host_mounts, expected, "{text}");
    for (point, size) in [
        ("/tmp", "size=524288k"),
        ("/run", "size=16384k"),
        ("/dev/shm", "size=65536k"),
    ] {
        let (got, opts) = tmpfs
            .get(point)
            .unwrap_or_else(|| panic!("no {point}: {text}"));
        assert_eq!(got, size, "{point}");
        for flag in ["nosuid", "nodev"] {
            assert!(
                opts.split(',').any(|o| o == flag),
                "{point} lacks {flag}: {opts}"
            );
        }
    }
}

/// The environment the README promises: the proxy variables (both cases)
/// at the bridge, `NO_PROXY` for loopback, `HOME` and the npm, pip, cargo
/// and XDG caches under `/tmp`, and each cache directory usable.
#[tokio::test]
async fn proxy_variables_and_caches_are_set_inside() {
    let _engine = engine_shared().await;
    let out = run(
        sandbox(),
        "env | sort; mkdir -p \"$npm_config_cache\" \"$PIP_CACHE_DIR\" \"$CARGO_HOME\" \"$XDG_CACHE_HOME\" && echo caches-ok",
    )
    .await;
    let text = out.stdout_str();
    for want in [
        "HTTP_PROXY=http://127.0.0.1:3128",
        "http_proxy=http://127.0.0.1:3128",
        "HTTPS_PROXY=http://127.0.0.1:3128",
        "https_proxy=http://127.0.0.1:3128",
        "ALL_PROXY=http://127.0.0.1:3128",
        "all_proxy=http://127.0.0.1:3128",
        "NO_PROXY=localhost,127.0.0.1,::1",
        "no_proxy=localhost,127.0.0.1,::1",
        "HOME=/tmp",
        "XDG_CACHE_HOME=/tmp/.cache",
        "npm_config_cache=/tmp/.npm",
        "PIP_CACHE_DIR=/tmp/.cache/pip",
        "CARGO_HOME=/tmp/.cargo",
        "caches-ok",
    ] {
        assert!(text.lines().any(|l| l == want), "{want} missing: {text}");
    }
}

/// Extra mounts are read-only unless `mount_rw` asks (the directory is the
/// sandbox user's own, so only the mount can refuse: EROFS).
#[tokio::test]
async fn extra_mounts_are_read_only_unless_asked() {
    let _engine = engine_shared().await;
    let ws = tempdir("mount-ws");
    let data = tempdir("mount-data");
    std::fs::write(data.join("in"), "given").unwrap();
    if through_gateway().await {
        // The engine cannot see this machine's directories: refused, naming it.
        let err = sandbox()
            .workspace(&ws)
            .mount(&data, "/data")
            .run("true")
            .await
            .unwrap_err();
        assert_eq!(err.code(), "invalid_argument", "{err}");
        assert!(
            err.to_string()
                .contains("does not share this machine's files"),
            "{err}"
        );
        return;
    }
    let probe =
        "cat /data/in; echo; python3 -c 'open(\"/data/out\", \"w\").write(\"x\")' 2>&1 | tail -1";
    let out = run(sandbox().workspace(&ws).mount(&data, "/data"), probe).await;
    let text = out.stdout_str();
    assert!(
        text.starts_with("given\n"),
        "control: the mount is there: {text}"
    );
    assert!(text.contains("[Errno 30] Read-only file system"), "{text}");
    assert!(!data.join("out").exists());
    let out = run(sandbox().workspace(&ws).mount_rw(&data, "/data"), probe).await;
    assert_eq!(out.stdout_str(), "given\n", "{}", out.stderr_str());
    assert_eq!(std::fs::read_to_string(data.join("out")).unwrap(), "x");
}
