//! Checks on host paths before they are bind-mounted into a sandbox.
//!
//! A path is walked one component at a time from `/` with `O_NOFOLLOW`
//! descriptors, never resolved by the kernel as a whole: a symbolic link
//! anywhere on it is refused (naming the link and its target), except a
//! system link (owned by root, in a root-owned directory no one else can
//! write) such as `/var/run -> /run`, which no sandbox can plant or change.
//! The walk ends with a descriptor of the directory itself, whose device and
//! inode the sandbox's init compares with what it finds mounted (see
//! `CheckedDir`), so a component swapped between this check and the engine's
//! mount is caught and the sandbox is ended before anything runs in it.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags};

use crate::Error;

/// How deep to look for a stray Docker socket inside a workspace.
const SOCKET_SCAN_DEPTH: usize = 3;
/// Stop scanning after this many directory entries (a huge tree is not searched to the end).
const SOCKET_SCAN_ENTRIES: usize = 20_000;
/// System links followed on one path at most (the kernel's own limit).
const MAX_LINKS: usize = 40;
/// The only links a path may go through: the distributions' own (merged
/// `/usr`, `/var/run`), and only while they are root's, in a root-owned
/// directory no one else can write. A link anywhere else is refused even if
/// root owns it: a sandbox the caller ran as root could have planted it.
const SYSTEM_LINKS: &[&str] = &[
    "/var/run",
    "/var/lock",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
];

fn refuse(path: &Path, reason: impl Into<String>) -> Error {
    Error::Workspace {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

/// A host directory that passed the checks, held open until the sandbox
/// has confirmed it mounted this very directory (the open descriptor also
/// keeps the inode from being reused in the meantime).
#[derive(Debug)]
pub(crate) struct CheckedDir {
    /// The absolute path, free of symbolic links (system links resolved).
    pub(crate) path: PathBuf,
    /// Device and inode of the directory the walk ended on.
    pub(crate) dev: u64,
    pub(crate) ino: u64,
    /// Owner of the directory.
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    /// Mounted read-write (set by the caller): swept for setuid bits.
    pub(crate) writable: bool,
    /// Inodes of the setuid/setgid files it held before the sandbox (see
    /// [`setid_baseline`]; set by the caller for writable mounts).
    pub(crate) setid_baseline: std::collections::HashSet<u64>,
    /// Where it is mounted in the container (set by the caller).
    pub(crate) target: String,
    _fd: OwnedFd,
}

const WALK_FLAGS: OFlags = OFlags::PATH
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// Walks `path` from `/` without following any link but system links.
fn walk(path: &Path) -> Result<(PathBuf, OwnedFd), Error> {
    let abs = if path.is_absolute() {
        path.to_owned()
    } else {
        std::env::current_dir()
            .map_err(|e| {
                refuse(
                    path,
                    format!("cannot be resolved: the current directory is unusable ({e})"),
                )
            })?
            .join(path)
    };
    let os_err = |at: &Path, e: rustix::io::Errno| match e {
        rustix::io::Errno::NOENT => refuse(
            path,
            "does not exist; create it first or pass an existing directory",
        ),
        rustix::io::Errno::NOTDIR => refuse(
            path,
            format!("is not a directory ({} is not)", at.display()),
        ),
        rustix::io::Errno::LOOP => refuse(
            path,
            format!(
                "changed while it was being checked ({} became a symbolic link)",
                at.display()
            ),
        ),
        e => refuse(
            path,
            format!(
                "cannot be resolved at {}: {}",
                at.display(),
                std::io::Error::from(e)
            ),
        ),
    };
    let root = || rfs::openat(rfs::CWD, "/", WALK_FLAGS, Mode::empty());
    let mut fd = root().map_err(|e| os_err(Path::new("/"), e))?;
    let mut here = PathBuf::from("/");
    let mut queue: VecDeque<OsString> = components(&abs);
    let mut links = 0;
    while let Some(name) = queue.pop_front() {
        if name == ".." {
            fd = rfs::openat(&fd, "..", WALK_FLAGS, Mode::empty()).map_err(|e| os_err(&here, e))?;
            here.pop();
            continue;
        }
        let next = here.join(&name);
        let st = rfs::statat(&fd, name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| os_err(&next, e))?;
        if FileType::from_raw_mode(st.st_mode) == FileType::Symlink {
            let target = rfs::readlinkat(&fd, name.as_os_str(), Vec::new()).map_err(|e| {
                if e == rustix::io::Errno::INVAL {
                    // A link a moment ago, not any more: something swapped it.
                    refuse(
                        path,
                        format!(
                            "changed while it was being checked ({} stopped being a symbolic link)",
                            next.display()
                        ),
                    )
                } else {
                    os_err(&next, e)
                }
            })?;
            let target = PathBuf::from(std::ffi::OsStr::from_bytes(target.as_bytes()));
            let dir = rfs::fstat(&fd).map_err(|e| os_err(&here, e))?;
            let system = SYSTEM_LINKS.iter().any(|l| next == Path::new(l))
                && st.st_uid == 0
                && dir.st_uid == 0
                && dir.st_mode & 0o022 == 0;
            if !system {
                let real = next
                    .canonicalize()
                    .map(|r| {
                        format!(
                            "; pass the real directory ({}) if you trust it",
                            r.display()
                        )
                    })
                    .unwrap_or_default();
                return Err(refuse(
                    path,
                    format!(
                        "goes through the symbolic link {} -> {} (a link that a sandbox may have planted could redirect the mount){real}",
                        next.display(),
                        target.display()
                    ),
                ));
            }
            links += 1;
            if links > MAX_LINKS {
                return Err(refuse(path, "has too many levels of symbolic links"));
            }
            let mut rest = components(&target);
            rest.extend(queue);
            queue = rest;
            if target.is_absolute() {
                fd = root().map_err(|e| os_err(Path::new("/"), e))?;
                here = PathBuf::from("/");
            }
            continue;
        }
        fd = rfs::openat(&fd, name.as_os_str(), WALK_FLAGS, Mode::empty()).map_err(|e| {
            // It was a directory a moment ago: something swapped it.
            let dir = FileType::from_raw_mode(st.st_mode) == FileType::Directory;
            if dir && matches!(e, rustix::io::Errno::NOTDIR | rustix::io::Errno::LOOP) {
                refuse(
                    path,
                    format!(
                        "changed while it was being checked ({} stopped being a directory)",
                        next.display()
                    ),
                )
            } else {
                os_err(&next, e)
            }
        })?;
        here = next;
    }
    Ok((here, fd))
}

/// `Normal` and `..` components of `p` (the root and `.` say nothing here).
fn components(p: &Path) -> VecDeque<OsString> {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_owned()),
            Component::ParentDir => Some("..".into()),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect()
}

/// Device and inode of the directory `path` names now, by the same walk
/// (`None` if it no longer passes): the pool compares this with what a
/// spare mounted.
pub(crate) fn identity(path: &Path) -> Option<(PathBuf, u64, u64)> {
    let (p, fd) = walk(path).ok()?;
    let st = rfs::fstat(&fd).ok()?;
    Some((p, st.st_dev, st.st_ino))
}

/// The caller's cache directory for agent-sandbox (the init binary, what
/// was read from images).
pub(crate) fn cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("agent-sandbox")
}

/// Walks `path` (see the module docs) and refuses what must never be
/// mounted: `/`, the home directory itself, anything that does not exist or
/// is not a directory, and anything that holds the Docker socket.
pub(crate) fn check_dir(path: &Path, engine_socket: Option<&Path>) -> Result<CheckedDir, Error> {
    let (canonical, fd) = walk(path)?;
    let st = rfs::fstat(&fd).map_err(|e| {
        refuse(
            path,
            format!("cannot be examined: {}", std::io::Error::from(e)),
        )
    })?;
    if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
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
    // A sandbox that could write agent-sandbox's own cache could plant
    // what later sandboxes are given (their /etc/passwd, CA bundle).
    let cache = cache_dir();
    let cache = cache.canonicalize().unwrap_or(cache);
    if cache.starts_with(&canonical) || canonical.starts_with(&cache) {
        return Err(refuse(
            path,
            format!(
                "holds agent-sandbox's cache directory {}; mount a project directory instead",
                cache.display()
            ),
        ));
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
    Ok(CheckedDir {
        path: canonical,
        dev: st.st_dev,
        ino: st.st_ino,
        uid: st.st_uid,
        gid: st.st_gid,
        writable: false,
        setid_baseline: std::collections::HashSet::new(),
        target: String::new(),
        _fd: fd,
    })
}

/// Calls `f(dir, name, stat, path)` for every regular file with a setuid
/// or setgid bit below the directory `root` (an open descriptor: the path is
/// never looked up again). Never through a symlink: each directory is
/// opened beneath `root` with symlinks refused, one at a time (a tree wider
/// than the open-files limit cannot make it skip any), and a directory its
/// owner made unreadable is given `u+rx` first, so it cannot hide a file.
fn each_setid_file(
    root: &OwnedFd,
    mut f: impl FnMut(&OwnedFd, &std::ffi::CStr, &rfs::Stat, String),
) {
    let mut stack = vec![String::new()];
    while let Some(rel) = stack.pop() {
        let Some(dir) = open_beneath(root, &rel) else {
            continue;
        };
        let Ok(entries) = rfs::Dir::read_from(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            if name.to_bytes() == b"." || name.to_bytes() == b".." {
                continue;
            }
            let path = if rel.is_empty() {
                name.to_string_lossy().into_owned()
            } else {
                format!("{rel}/{}", name.to_string_lossy())
            };
            let Ok(st) = rfs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) else {
                continue;
            };
            match FileType::from_raw_mode(st.st_mode) {
                FileType::Directory => stack.push(path),
                FileType::RegularFile if st.st_mode & 0o6000 != 0 => f(&dir, name, &st, path),
                _ => {}
            }
        }
    }
}

/// The setuid/setgid files already in a directory before a sandbox gets
/// it (by inode): they keep their bits unless the sandbox changes them.
pub(crate) fn setid_baseline(root: &OwnedFd) -> std::collections::HashSet<u64> {
    let mut found = std::collections::HashSet::new();
    each_setid_file(root, |_, _, st, _| {
        found.insert(st.st_ino);
    });
    found
}

/// Removes the setuid and setgid bits of every regular file below `root`
/// that the sandbox may have made or changed: any not in `baseline`, and
/// any in it whose inode changed at or after `since`. However a file got
/// there (created, copied, moved in with its directory), it loses the bits;
/// files that had them before the sandbox keep them. A bit is removed
/// through the opened file itself (`/proc/self/fd`), never through a path
/// that could have become a symlink. Returns the paths relative to `root`.
/// The sandbox's seccomp profile already refuses to set these bits; this
/// sweep is the wall for runtimes that do not apply it.
pub(crate) fn strip_setid_bits(
    root: &OwnedFd,
    baseline: &std::collections::HashSet<u64>,
    since: std::time::SystemTime,
) -> Vec<String> {
    let since = since
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs().saturating_sub(1))
        .unwrap_or(0) as i64;
    let mut stripped = Vec::new();
    each_setid_file(root, |dir, name, st, path| {
        let ours = !baseline.contains(&st.st_ino) || st.st_ctime >= since;
        if ours && clear_setid(dir, name) {
            stripped.push(path);
        }
    });
    stripped.sort();
    stripped
}

/// Opens the directory `rel` below `root` for reading, never through a
/// symlink and never above `root`; a directory that refuses its owner is
/// given `u+rx` and opened again.
fn open_beneath(root: &OwnedFd, rel: &str) -> Option<OwnedFd> {
    use rustix::fs::ResolveFlags;
    let path = if rel.is_empty() { "." } else { rel };
    let flags = OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::RDONLY;
    let how = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
    match rfs::openat2(root, path, flags, Mode::empty(), how) {
        Ok(fd) => Some(fd),
        Err(rustix::io::Errno::ACCESS) => {
            let handle = rfs::openat2(
                root,
                path,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
                how,
            )
            .ok()?;
            let st = rfs::fstat(&handle).ok()?;
            use std::os::fd::AsRawFd;
            let proc_path = format!("/proc/self/fd/{}", handle.as_raw_fd());
            rfs::chmod(
                proc_path.as_str(),
                Mode::from_raw_mode((st.st_mode | 0o500) & 0o7777),
            )
            .ok()?;
            rfs::openat2(root, path, flags, Mode::empty(), how).ok()
        }
        Err(_) => None,
    }
}

fn clear_setid(dir: &OwnedFd, name: &std::ffi::CStr) -> bool {
    let Ok(file) = rfs::openat(
        dir,
        name,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) else {
        return false;
    };
    let Ok(st) = rfs::fstat(&file) else {
        return false;
    };
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile || st.st_mode & 0o6000 == 0 {
        return false;
    }
    use std::os::fd::AsRawFd;
    let proc_path = format!("/proc/self/fd/{}", file.as_raw_fd());
    rfs::chmod(proc_path.as_str(), Mode::from_raw_mode(st.st_mode & 0o1777)).is_ok()
}

impl CheckedDir {
    /// Marks it as mounted read-write: it is swept for setuid bits after
    /// every command, against the setuid files it holds now.
    pub(crate) fn mark_writable(&mut self) {
        self.writable = true;
        if let Ok(root) = self.open() {
            self.setid_baseline = setid_baseline(&root);
        }
    }

    /// A readable descriptor of the checked directory itself (never its
    /// path again: a component of the path may have been swapped since).
    pub(crate) fn open(&self) -> Result<OwnedFd, rustix::io::Errno> {
        rfs::openat(
            &self._fd,
            ".",
            OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::RDONLY,
            Mode::empty(),
        )
    }
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
        let a = check_dir(&dir.join("a/../a"), None).unwrap();
        assert_eq!(a.path, dir.join("a").canonicalize().unwrap());
        let meta = std::fs::metadata(dir.join("a")).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!((a.dev, a.ino), (meta.dev(), meta.ino()));
        let sock = dir.join("a/b/docker.sock");
        let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let err = check_dir(&dir, None).unwrap_err().to_string();
        assert!(err.contains("Docker socket"), "{err}");
        assert!(check_dir(&dir, Some(&sock)).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The agent-sandbox cache (what later sandboxes get as their
    /// /etc/passwd and CA bundle) is never writable from a sandbox: a
    /// workspace that holds it, or is inside it, is refused.
    #[test]
    fn a_workspace_holding_the_cache_directory_is_refused() {
        let cache = cache_dir();
        std::fs::create_dir_all(cache.join("image-files")).unwrap();
        let above = cache.parent().unwrap();
        for dir in [above, &cache, &cache.join("image-files")] {
            let err = check_dir(dir, None).unwrap_err().to_string();
            assert!(
                err.contains("cache directory") || err.contains("home directory"),
                "{}: {err}",
                dir.display()
            );
        }
    }

    /// Finding: run 1 plants `sub -> /etc` in its workspace; run 2 names
    /// `parent/sub` and must not get the host's `/etc`.
    #[test]
    fn a_planted_symlink_anywhere_on_the_path_is_refused_and_named() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("as-ws-link-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("real/inner")).unwrap();
        // Writable by others, as a sandbox's workspace is to the sandbox.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        std::os::unix::fs::symlink("/etc", dir.join("sub")).unwrap();
        std::os::unix::fs::symlink("real", dir.join("rel")).unwrap();
        for (p, link, target) in [
            (dir.join("sub"), dir.join("sub"), "/etc"),
            (dir.join("rel/inner"), dir.join("rel"), "real"),
            (dir.join("real/../sub"), dir.join("sub"), "/etc"),
        ] {
            let err = check_dir(&p, None).unwrap_err();
            assert_eq!(err.code(), "workspace");
            let msg = err.to_string();
            assert!(
                msg.contains(&format!("symbolic link {} -> {target}", link.display())),
                "{msg}"
            );
        }
        // The real directory passes.
        assert_eq!(
            check_dir(&dir.join("real/inner"), None).unwrap().path,
            dir.join("real/inner")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// System links (root's, in root-owned directories no one else can
    /// write) pass and are resolved: `/var/run -> /run` on Debian.
    #[test]
    fn system_links_owned_by_root_are_followed() {
        let var_run = Path::new("/var/run");
        let is_root_link = std::fs::symlink_metadata(var_run).is_ok_and(|m| {
            use std::os::unix::fs::MetadataExt;
            m.file_type().is_symlink() && m.uid() == 0
        });
        assert!(
            is_root_link,
            "this test expects /var/run to be root's link to /run"
        );
        // (check_dir itself refuses /run: it holds the Docker socket.)
        assert_eq!(walk(var_run).unwrap().0, Path::new("/run"));
    }

    /// The host-side sweep (the wall when seccomp is not applied, as under
    /// gVisor): bits go from files changed since the sweep's start, never
    /// through a symlink, and older files keep theirs.
    #[test]
    fn setid_bits_are_stripped_from_changed_files_only_and_links_are_not_followed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("as-ws-suid-{}", std::process::id()));
        let outside = std::env::temp_dir().join(format!("as-ws-suid-out-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("deep/er")).unwrap();
        std::fs::write(&outside, b"x").unwrap();
        std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o4755)).unwrap();
        for (p, mode) in [("a", 0o4755), ("deep/er/b", 0o2711), ("plain", 0o755)] {
            std::fs::write(dir.join(p), b"x").unwrap();
            std::fs::set_permissions(dir.join(p), std::fs::Permissions::from_mode(mode)).unwrap();
        }
        std::os::unix::fs::symlink(&outside, dir.join("link")).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        let root = rfs::open(&dir, OFlags::DIRECTORY | OFlags::RDONLY, Mode::empty()).unwrap();
        // Changed before the sweep's window: left alone.
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(60);
        // Files that had their bits before the sandbox keep them...
        let before = setid_baseline(&root);
        assert_eq!(before.len(), 2);
        assert!(strip_setid_bits(&root, &before, later).is_empty());
        assert_eq!(mode(&dir.join("a")), 0o4755);
        // ...unless changed since; any other file loses them, whatever its time.
        let stripped = strip_setid_bits(
            &root,
            &before,
            std::time::SystemTime::now() - std::time::Duration::from_secs(60),
        );
        assert_eq!(stripped, ["a", "deep/er/b"]);
        assert_eq!(mode(&dir.join("a")), 0o755);
        assert_eq!(mode(&dir.join("deep/er/b")), 0o711);
        assert_eq!(mode(&dir.join("plain")), 0o755);
        assert_eq!(
            mode(&outside),
            0o4755,
            "followed a symlink out of the workspace"
        );
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::remove_file(&outside).unwrap();
    }

    /// A file the sandbox made loses its bits however old its change time
    /// (`mv` of a directory keeps its files' times), and a directory its
    /// owner made unreadable cannot hide one.
    #[test]
    fn the_sweep_sees_moved_and_unreadable_directories() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("as-ws-sweep2-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("keep")).unwrap();
        std::fs::write(dir.join("keep/own"), b"k").unwrap();
        std::fs::set_permissions(
            dir.join("keep/own"),
            std::fs::Permissions::from_mode(0o4755),
        )
        .unwrap();
        let root = rfs::open(&dir, OFlags::DIRECTORY | OFlags::RDONLY, Mode::empty()).unwrap();
        let baseline = setid_baseline(&root);
        // The sandbox's doing, all before the window: a setuid file in a
        // directory that is then moved, and one behind a locked directory.
        std::fs::create_dir_all(dir.join("old/inner")).unwrap();
        std::fs::write(dir.join("old/inner/x"), b"x").unwrap();
        std::fs::set_permissions(
            dir.join("old/inner/x"),
            std::fs::Permissions::from_mode(0o4755),
        )
        .unwrap();
        std::fs::rename(dir.join("old"), dir.join("moved")).unwrap();
        std::fs::create_dir_all(dir.join("locked")).unwrap();
        std::fs::write(dir.join("locked/y"), b"y").unwrap();
        std::fs::set_permissions(
            dir.join("locked/y"),
            std::fs::Permissions::from_mode(0o2755),
        )
        .unwrap();
        std::fs::set_permissions(dir.join("locked"), std::fs::Permissions::from_mode(0o111))
            .unwrap();
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(60);
        let stripped = strip_setid_bits(&root, &baseline, later);
        assert_eq!(stripped, ["locked/y", "moved/inner/x"]);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(
            mode(&dir.join("keep/own")),
            0o4755,
            "a file from before keeps its bit"
        );
        std::fs::set_permissions(dir.join("locked"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A link owned by root in a root-owned directory no one else can write
    /// is still refused unless it is one of the distributions' own: a
    /// sandbox run as root could have planted it.
    #[test]
    fn only_the_distributions_links_pass() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("as-ws-rootlink-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink("/etc", dir.join("sub")).unwrap();
        let err = check_dir(&dir.join("sub"), None).unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
