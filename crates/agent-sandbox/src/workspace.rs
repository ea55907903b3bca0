//! Checks on host paths before they are bind-mounted into a sandbox.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use crate::Error;

/// How deep to look for a stray Docker socket inside a workspace.
const SOCKET_SCAN_DEPTH: usize = 3;
/// Stop scanning after this many directory entries (a huge tree is not searched to the end).
const SOCKET_SCAN_ENTRIES: usize = 20_000;

fn refuse(path: &Path, reason: impl Into<String>) -> Error {
    Error::Workspace {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

/// Canonicalises `path` (just before the container is created, so a symlink
/// swapped in earlier cannot redirect the mount) and refuses what must never
/// be mounted: `/`, the home directory itself, anything that does not exist
/// or is not a directory, and anything that holds the Docker socket.
pub(crate) fn check_dir(path: &Path, engine_socket: Option<&Path>) -> Result<PathBuf, Error> {
    let canonical = path.canonicalize().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            refuse(
                path,
                "does not exist; create it first or pass an existing directory",
            )
        } else {
            refuse(path, format!("cannot be resolved: {e}"))
        }
    })?;
    if !canonical.is_dir() {
        return Err(refuse(path, "is not a directory"));
    }
    if canonical == Path::new("/") {
        return Err(refuse(
            path,
            "is the root directory; mount a project directory instead",
        ));
    }
    if let Some(home) = std::env::var_os("HOME").and_then(|h| Path::new(&h).canonicalize().ok()) {
        if canonical == home {
            return Err(refuse(path, "is your home directory itself (SSH keys, cloud credentials, shell history); mount a project directory inside it instead"));
        }
    }
    let sockets = [
        Some(Path::new("/var/run/docker.sock")),
        Some(Path::new("/run/docker.sock")),
        engine_socket,
    ];
    for sock in sockets.into_iter().flatten() {
        let sock = sock.canonicalize().unwrap_or_else(|_| sock.to_owned());
        if sock.starts_with(&canonical) {
            return Err(refuse(
                path,
                format!(
                    "contains the Docker socket {}; a sandbox with it could control the host",
                    sock.display()
                ),
            ));
        }
    }
    let mut budget = SOCKET_SCAN_ENTRIES;
    if let Some(found) = find_docker_socket(&canonical, SOCKET_SCAN_DEPTH, &mut budget) {
        return Err(refuse(
            path,
            format!(
                "contains a Docker socket at {}; a sandbox with it could control the host",
                found.display()
            ),
        ));
    }
    Ok(canonical)
}

fn find_docker_socket(dir: &Path, depth: usize, budget: &mut usize) -> Option<PathBuf> {
    let entries = std::fs::read_dir(dir).ok()?;
    for entry in entries.flatten() {
        if *budget == 0 {
            return None;
        }
        *budget -= 1;
        // file_type() does not follow symlinks.
        let Ok(ft) = entry.file_type() else { continue };
        let name = entry.file_name();
        if ft.is_socket() && name.to_string_lossy().contains("docker") {
            return Some(entry.path());
        }
        if ft.is_dir() && depth > 0 {
            if let Some(found) = find_docker_socket(&entry.path(), depth - 1, budget) {
                return Some(found);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_home_missing_and_files_are_refused() {
        assert!(check_dir(Path::new("/"), None).is_err());
        assert!(check_dir(Path::new("/nonexistent/agent-sandbox"), None)
            .unwrap_err()
            .to_string()
            .contains("does not exist"));
        if let Some(home) = std::env::var_os("HOME") {
            assert!(check_dir(Path::new(&home), None)
                .unwrap_err()
                .to_string()
                .contains("home directory"));
        }
        let dir = std::env::temp_dir().join(format!("as-ws-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("a/b")).unwrap();
        std::fs::write(dir.join("file"), b"x").unwrap();
        assert!(check_dir(&dir.join("file"), None)
            .unwrap_err()
            .to_string()
            .contains("not a directory"));
        assert_eq!(
            check_dir(&dir.join("a/../a"), None).unwrap(),
            dir.join("a").canonicalize().unwrap()
        );
        let sock = dir.join("a/b/docker.sock");
        let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let err = check_dir(&dir, None).unwrap_err().to_string();
        assert!(err.contains("Docker socket"), "{err}");
        assert!(check_dir(&dir, Some(&sock)).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
