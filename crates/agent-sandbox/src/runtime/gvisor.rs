//! Seeing a gVisor sandbox's mounts from the host.
//!
//! Under gVisor the device and inode numbers a process sees inside are
//! gVisor's own, so init cannot compare a mount with the directory the host
//! checked. The host can: gVisor's gofer (the process that serves the
//! sandbox's files) runs on the host, rooted in the container's file tree
//! with the bind mounts in place, so `/proc/GOFER/root/TARGET` is the very
//! directory the sandbox sees at `TARGET`. Needs a local engine and the
//! right to look into another root's process (a root caller).

use std::os::unix::fs::MetadataExt;

/// The gofer process of container `id`: root's, running the runsc binary,
/// with a command line that names the container. (Any local user can start
/// a process whose command line says the same; only root's runsc counts.)
fn gofer(id: &str) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let cmd = String::from_utf8_lossy(&cmd);
        if !(cmd.starts_with("runsc-gofer") && cmd.contains(id)) {
            return None;
        }
        let owner = std::fs::metadata(format!("/proc/{pid}")).ok()?.uid();
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
        let runsc = exe.file_name().is_some_and(|n| n == "runsc");
        (owner == 0 && runsc).then_some(pid)
    })
}

/// Device and inode of what container `id` has mounted at `target`, as
/// its gVisor gofer sees it; an error says why it cannot be seen.
pub(crate) fn mounted_identity(id: &str, target: &str) -> Result<(u64, u64), String> {
    let pid = gofer(id).ok_or_else(|| {
        format!(
            "no gVisor gofer process for container {id} on this host (the engine must be local)"
        )
    })?;
    let path = format!("/proc/{pid}/root{target}");
    let m = std::fs::metadata(&path).map_err(|e| format!("cannot look at {path}: {e}"))?;
    Ok((m.dev(), m.ino()))
}
