//! Garbage collection: remove sandbox containers whose owning process is gone
//! (a crash, `kill -9`, a power cut of the caller).

use std::collections::HashMap;

use bollard::models::ContainerSummary;
use bollard::query_parameters::ListContainersOptions;

use super::{labels, Engine};
use crate::Error;

/// What [`gc`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Ids of the containers removed.
    pub removed: Vec<String>,
    /// Sandbox containers left alone (owner alive, or on another host).
    pub kept: usize,
    /// Host directories (proxy and exec sockets) of dead owners, removed.
    pub dirs_removed: Vec<std::path::PathBuf>,
    /// Engine volumes of gateways (shared directory, workspace) of dead
    /// owners, removed.
    pub volumes_removed: Vec<String>,
}

pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// A process's start time (field 22 of `/proc/PID/stat`), which tells a live
/// owner from a new process that reused its pid.
fn start_time(pid: &str) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; fields after it are plain.
    let after = stat.rsplit_once(')')?.1;
    after.split_whitespace().nth(19).map(str::to_owned)
}

/// The owner label of this process: `host:pid:starttime`.
#[must_use]
pub fn owner_label_value() -> String {
    let pid = std::process::id().to_string();
    let start = start_time(&pid).unwrap_or_default();
    format!("{}:{pid}:{start}", hostname())
}

/// `PID.START` of this process, the owner part of its host directories'
/// names (`agent-sandbox-ID-net-PID.START`).
pub(crate) fn owner_dir_tag() -> String {
    let pid = std::process::id().to_string();
    format!("{pid}.{}", start_time(&pid).unwrap_or_default())
}

/// Removes `agent-sandbox-*` directories in `tmp` whose owner process is
/// gone (the container and socket directory of a process killed with
/// SIGKILL outlive it; containers are collected by label, these by name).
fn collect_dirs(tmp: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return removed;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("agent-sandbox-") else {
            continue;
        };
        let Some((_, tag)) = rest.rsplit_once('-') else {
            continue;
        };
        let Some((pid, start)) = tag.split_once('.') else {
            continue;
        };
        if pid.parse::<u32>().is_err() || start_time(pid).is_some_and(|s| s == start) {
            continue;
        }
        // Never through a link: only a real directory of ours is removed.
        if entry.file_type().is_ok_and(|t| t.is_dir())
            && std::fs::remove_dir_all(entry.path()).is_ok()
        {
            removed.push(entry.path());
        }
    }
    removed
}

fn owner_alive(owner: &str, this_host: &str) -> bool {
    let mut parts = owner.rsplitn(3, ':');
    let (Some(start), Some(pid), Some(host)) = (parts.next(), parts.next(), parts.next()) else {
        return true; // not ours to judge
    };
    if host != this_host {
        return true;
    }
    start_time(pid).is_some_and(|s| s == start)
}

/// Every container carrying the library's label. Podman 4.3 lists a
/// container between its end and its clean-up as `stopped`, a state the
/// Docker API does not have, and the client then cannot read the whole
/// list: it is asked again state by state (those in Podman's `stopped`
/// are left for a later collection, when Podman has made them `exited`).
async fn list_managed(engine: &Engine) -> Result<Vec<ContainerSummary>, Error> {
    let list = |status: Option<&str>| {
        let mut filters = HashMap::from([("label".to_owned(), vec![labels::MANAGED.to_owned()])]);
        if let Some(s) = status {
            filters.insert("status".to_owned(), vec![s.to_owned()]);
        }
        engine.docker.list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        }))
    };
    match list(None).await {
        Err(bollard::errors::Error::JsonDataError { message, .. })
            if message.contains("unknown variant") =>
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
                all.extend(list(Some(status)).await.unwrap_or_default());
            }
            Ok(all)
        }
        other => other.map_err(|e| engine.err("list containers", e)),
    }
}

/// Removes every sandbox container on `engine` whose owner process (on this
/// host) is no longer running.
///
/// # Errors
/// [`Error::Engine`] if the engine cannot list containers.
pub async fn gc(engine: &Engine) -> Result<GcReport, Error> {
    let list = list_managed(engine).await?;
    let here = hostname();
    let mut report = GcReport::default();
    for c in list {
        let owner = c
            .labels
            .as_ref()
            .and_then(|l| l.get(labels::OWNER))
            .cloned()
            .unwrap_or_default();
        let Some(id) = c.id else { continue };
        if owner_alive(&owner, &here) {
            report.kept += 1;
        } else {
            engine.remove(&id).await?;
            report.removed.push(id);
        }
    }
    // A gateway's volumes, once its containers are gone.
    let filters = HashMap::from([("label".to_owned(), vec![labels::MANAGED.to_owned()])]);
    let volumes = engine
        .docker
        .list_volumes(Some(bollard::query_parameters::ListVolumesOptions {
            filters: Some(filters),
        }))
        .await
        .map_err(|e| engine.err("list volumes", e))?;
    for v in volumes.volumes.unwrap_or_default() {
        let owner = v.labels.get(labels::OWNER).cloned().unwrap_or_default();
        if !owner_alive(&owner, &here) {
            engine.remove_volume(&v.name).await;
            report.volumes_removed.push(v.name);
        }
    }
    report.dirs_removed = collect_dirs(&std::env::temp_dir());
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_directories_of_dead_owners_are_removed_and_live_ones_kept() {
        let tmp = std::env::temp_dir().join(format!("as-gc-dirs-{}", std::process::id()));
        let live = tmp.join(format!("agent-sandbox-aaa-net-{}", owner_dir_tag()));
        let dead = tmp.join(format!("agent-sandbox-bbb-net-{}.1", std::process::id()));
        let gone = tmp.join("agent-sandbox-ccc-net-999999999.5");
        let other = tmp.join("agent-sandbox-not-ours");
        for d in [&live, &dead, &gone, &other] {
            std::fs::create_dir_all(d.join("inner")).unwrap();
        }
        let mut removed = collect_dirs(&tmp);
        removed.sort();
        assert_eq!(removed, [dead.clone(), gone.clone()]);
        assert!(
            live.exists() && other.exists(),
            "a live owner's directory was removed"
        );
        assert!(!dead.exists() && !gone.exists());
        std::fs::remove_dir_all(&tmp).unwrap();
    }

    #[test]
    fn this_process_is_alive_and_a_dead_pid_is_not() {
        let me = owner_label_value();
        assert!(owner_alive(&me, &hostname()));
        let stale = format!("{}:{}:1", hostname(), std::process::id());
        assert!(
            !owner_alive(&stale, &hostname()),
            "same pid, other start time: pid reuse"
        );
        assert!(!owner_alive(
            &format!("{}:999999999:1", hostname()),
            &hostname()
        ));
        assert!(
            owner_alive("other-host:1:1", &hostname()),
            "other hosts' containers are kept"
        );
    }
}
