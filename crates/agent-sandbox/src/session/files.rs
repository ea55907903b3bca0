//! Host-side file access to a session's workspace that never leaves it.
//!
//! The agent controls the workspace and can plant `link -> ~/.ssh/id_rsa`
//! or swap a directory for a symlink at any moment. So every path is opened
//! one component at a time from a descriptor of the workspace root with
//! `O_NOFOLLOW` (no path string is ever resolved by the kernel as a whole),
//! and only regular files are read or written; FIFOs and devices are refused
//! (opened non-blocking, so a FIFO cannot hang the caller).

use std::io::{Read, Write};
use std::os::fd::OwnedFd;

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags};

use crate::Error;

/// Where a session path points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Location {
    /// Components below `/workspace` (empty: the workspace itself).
    Workspace(Vec<String>),
    /// An absolute path below `/tmp`, handled inside the sandbox.
    Tmp(String),
}

/// One entry of a directory listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// The file name.
    pub name: String,
    /// `file`, `dir`, `symlink` or `other` (FIFOs, sockets, devices).
    pub kind: &'static str,
    /// Size in bytes (of the link itself for a symlink).
    pub size: u64,
}

pub(crate) fn refuse(op: &'static str, path: &str, reason: impl Into<String>) -> Error {
    Error::File {
        op,
        path: path.to_owned(),
        reason: reason.into(),
    }
}

/// Parses `a/b`, `./a`, `/workspace/a` or `/tmp/a`. `..`, NUL and absolute
/// paths elsewhere are refused.
pub(crate) fn locate(op: &'static str, path: &str) -> Result<Location, Error> {
    if path.contains('\0') {
        return Err(refuse(op, path, "NUL in path"));
    }
    let (tmp, rest) = if let Some(r) = path.strip_prefix("/workspace") {
        if !(r.is_empty() || r.starts_with('/')) {
            return Err(refuse(
                op,
                path,
                "only paths under /workspace and /tmp are reachable",
            ));
        }
        (false, r)
    } else if path == "/tmp" || path.starts_with("/tmp/") {
        (true, path)
    } else if path.starts_with('/') {
        return Err(refuse(
            op,
            path,
            "only paths under /workspace and /tmp are reachable",
        ));
    } else {
        (false, path)
    };
    let mut parts = Vec::new();
    for c in rest.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err(refuse(op, path, "'..' is not allowed")),
            c => parts.push(c.to_owned()),
        }
    }
    if tmp {
        return Ok(Location::Tmp(format!("/{}", parts.join("/"))));
    }
    Ok(Location::Workspace(parts))
}

fn os(op: &'static str, path: &str, e: rustix::io::Errno) -> Error {
    let reason = match e {
        rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR => "a symbolic link or a non-directory is in the way (links are not followed out of the workspace)".to_owned(),
        rustix::io::Errno::NOENT => "no such file or directory".to_owned(),
        rustix::io::Errno::NXIO => "not a regular file".to_owned(),
        e => std::io::Error::from(e).to_string(),
    };
    refuse(op, path, reason)
}

const DIR_FLAGS: OFlags = OFlags::DIRECTORY
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC)
    .union(OFlags::RDONLY);

/// Whether missing directories are made, and who owns what is made: the
/// sandbox user when it is not the caller (a root caller's sandbox runs
/// as the workspace's owner, who must be able to write what the host made).
#[derive(Clone, Copy)]
pub(crate) enum Create {
    No,
    OwnedBy(Option<(u32, u32)>),
}

/// Gives a new file or directory to `owner`, when the caller may (root);
/// a caller who may not keeps it, as before. Only what this process made
/// (owned by it, still empty): a directory swapped in by name between
/// `mkdirat` and the open is left as it is.
fn give(fd: &OwnedFd, owner: Option<(u32, u32)>) {
    let Ok(st) = rfs::fstat(fd) else { return };
    let ours = st.st_uid == rustix::process::geteuid().as_raw()
        && match FileType::from_raw_mode(st.st_mode) {
            FileType::Directory => st.st_nlink == 2 && st.st_size <= 4096 && is_empty_dir(fd),
            _ => st.st_size == 0,
        };
    if !ours {
        return;
    }
    if let Some((uid, gid)) = owner {
        let _ = rfs::fchown(
            fd,
            Some(rustix::process::Uid::from_raw(uid)),
            Some(rustix::process::Gid::from_raw(gid)),
        );
    }
}

fn is_empty_dir(fd: &OwnedFd) -> bool {
    let Ok(dir) = rfs::openat(fd, ".", DIR_FLAGS, Mode::empty()) else {
        return false;
    };
    let Ok(entries) = rfs::Dir::read_from(&dir) else {
        return false;
    };
    entries
        .flatten()
        .all(|e| matches!(e.file_name().to_bytes(), b"." | b".."))
}

/// Opens the directory `parts` below `root`, component by component.
fn open_dir(
    root: &OwnedFd,
    parts: &[String],
    create: Create,
    op: &'static str,
    path: &str,
) -> Result<OwnedFd, Error> {
    let mut fd = rfs::openat(root, ".", DIR_FLAGS, Mode::empty()).map_err(|e| os(op, path, e))?;
    for part in parts {
        let next = match (
            rfs::openat(&fd, part.as_str(), DIR_FLAGS, Mode::empty()),
            create,
        ) {
            (Err(rustix::io::Errno::NOENT), Create::OwnedBy(owner)) => {
                rfs::mkdirat(&fd, part.as_str(), Mode::from_raw_mode(0o755))
                    .map_err(|e| os(op, path, e))?;
                let made = rfs::openat(&fd, part.as_str(), DIR_FLAGS, Mode::empty())
                    .map_err(|e| os(op, path, e))?;
                give(&made, owner);
                Ok(made)
            }
            (other, _) => other,
        };
        fd = next.map_err(|e| os(op, path, e))?;
    }
    Ok(fd)
}

fn split_last<'a>(
    op: &'static str,
    path: &str,
    parts: &'a [String],
) -> Result<(&'a [String], &'a str), Error> {
    match parts.split_last() {
        Some((name, dirs)) => Ok((dirs, name.as_str())),
        None => Err(refuse(op, path, "a file name is needed")),
    }
}

fn regular(op: &'static str, path: &str, fd: &OwnedFd) -> Result<(), Error> {
    let st = rfs::fstat(fd).map_err(|e| os(op, path, e))?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(refuse(op, path, "not a regular file"));
    }
    Ok(())
}

/// Most entries a listing returns (a directory can hold millions).
pub(crate) const MAX_LIST_ENTRIES: usize = 10_000;

pub(crate) fn too_large(op: &'static str, path: &str, limit: usize) -> Error {
    refuse(
        op,
        path,
        format!("is larger than the file limit of {limit} bytes (raise it with file_limit)"),
    )
}

pub(crate) fn read(
    root: &OwnedFd,
    parts: &[String],
    path: &str,
    limit: usize,
) -> Result<Vec<u8>, Error> {
    const OP: &str = "read_file";
    let (dirs, name) = split_last(OP, path, parts)?;
    let dir = open_dir(root, dirs, Create::No, OP, path)?;
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let fd = rfs::openat(&dir, name, flags, Mode::empty()).map_err(|e| os(OP, path, e))?;
    regular(OP, path, &fd)?;
    let size = rfs::fstat(&fd).map_err(|e| os(OP, path, e))?.st_size;
    if u64::try_from(size).unwrap_or(0) > limit as u64 {
        return Err(refuse(
            OP,
            path,
            format!("is {size} bytes, larger than the file limit of {limit} bytes (raise it with file_limit)"),
        ));
    }
    let mut buf = Vec::new();
    // Bounded even if the file grows while it is read.
    std::fs::File::from(fd)
        .take(limit as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(|e| refuse(OP, path, e.to_string()))?;
    if buf.len() > limit {
        return Err(too_large(OP, path, limit));
    }
    Ok(buf)
}

pub(crate) fn write(
    root: &OwnedFd,
    parts: &[String],
    path: &str,
    data: &[u8],
    owner: Option<(u32, u32)>,
) -> Result<(), Error> {
    const OP: &str = "write_file";
    let (dirs, name) = split_last(OP, path, parts)?;
    let dir = open_dir(root, dirs, Create::OwnedBy(owner), OP, path)?;
    let flags = OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let mode = Mode::from_raw_mode(0o644);
    // A new file goes to the sandbox user; an existing one keeps its owner.
    let fd = match rfs::openat(&dir, name, flags | OFlags::CREATE | OFlags::EXCL, mode) {
        Ok(fd) => {
            give(&fd, owner);
            Ok(fd)
        }
        Err(rustix::io::Errno::EXIST) => rfs::openat(&dir, name, flags, mode),
        Err(e) => Err(e),
    }
    .map_err(|e| os(OP, path, e))?;
    regular(OP, path, &fd)?;
    rfs::ftruncate(&fd, 0).map_err(|e| os(OP, path, e))?;
    std::fs::File::from(fd)
        .write_all(data)
        .map_err(|e| refuse(OP, path, e.to_string()))
}

/// A directory listing, bounded.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Listing {
    /// Entries sorted by name (at most 10,000).
    pub entries: Vec<DirEntry>,
    /// Whether the directory held more entries than were returned.
    pub truncated: bool,
}

pub(crate) fn list(root: &OwnedFd, parts: &[String], path: &str) -> Result<Listing, Error> {
    const OP: &str = "list";
    let dir = open_dir(root, parts, Create::No, OP, path)?;
    let mut out = Vec::new();
    let mut truncated = false;
    for entry in rfs::Dir::read_from(&dir).map_err(|e| os(OP, path, e))? {
        let entry = entry.map_err(|e| os(OP, path, e))?;
        if out.len() >= MAX_LIST_ENTRIES && !matches!(entry.file_name().to_bytes(), b"." | b"..") {
            truncated = true;
            break;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == "." || name == ".." {
            continue;
        }
        let Ok(st) = rfs::statat(&dir, entry.file_name(), AtFlags::SYMLINK_NOFOLLOW) else {
            continue;
        };
        let kind = match FileType::from_raw_mode(st.st_mode) {
            FileType::RegularFile => "file",
            FileType::Directory => "dir",
            FileType::Symlink => "symlink",
            _ => "other",
        };
        out.push(DirEntry {
            name,
            kind,
            size: st.st_size as u64,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Listing {
        entries: out,
        truncated,
    })
}

pub(crate) fn remove(root: &OwnedFd, parts: &[String], path: &str) -> Result<(), Error> {
    const OP: &str = "remove";
    let (dirs, name) = split_last(OP, path, parts)?;
    let dir = open_dir(root, dirs, Create::No, OP, path)?;
    match rfs::unlinkat(&dir, name, AtFlags::empty()) {
        Err(rustix::io::Errno::ISDIR) => {
            rfs::unlinkat(&dir, name, AtFlags::REMOVEDIR).map_err(|e| os(OP, path, e))
        }
        other => other.map_err(|e| os(OP, path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_resolve_under_workspace_or_tmp_only() {
        let ws = |v: &[&str]| Location::Workspace(v.iter().map(|s| (*s).to_owned()).collect());
        assert_eq!(locate("x", "a/b").unwrap(), ws(&["a", "b"]));
        assert_eq!(locate("x", "./a//b/").unwrap(), ws(&["a", "b"]));
        assert_eq!(locate("x", "/workspace/a").unwrap(), ws(&["a"]));
        assert_eq!(locate("x", "/workspace").unwrap(), ws(&[]));
        assert_eq!(
            locate("x", "/tmp/x/y").unwrap(),
            Location::Tmp("/tmp/x/y".into())
        );
        for bad in [
            "../etc/passwd",
            "a/../../b",
            "/etc/passwd",
            "/workspacex/a",
            "/tmpx",
            "a\0b",
            "/tmp/../etc",
        ] {
            assert!(locate("x", bad).is_err(), "{bad}");
        }
    }
}
