//! The workspace on an engine that does not share this machine's files:
//! copied into a volume at the start ([`pack`]) and back at the end
//! ([`merge`]), so the caller's directory ends up as a bind mount would
//! have left it, without losing a change made to it meanwhile: a file
//! changed on both sides keeps the local version and gets the sandbox's
//! beside it (`NAME.from-sandbox`); a file the sandbox removed is removed
//! only if it is unchanged here.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use sha2::Digest as _;

use crate::Error;

/// The most a workspace may hold to be copied back (bytes of tar).
pub(crate) const MAX_WORKSPACE: usize = 4 << 30;

/// What a regular file was when it was copied in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Copied {
    hash: [u8; 32],
    len: u64,
    mtime_ns: i128,
}

/// The files copied in, by path below the workspace.
pub(crate) type Manifest = HashMap<PathBuf, Copied>;

fn mtime_ns(m: &std::fs::Metadata) -> i128 {
    i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec())
}

fn unchanged(path: &Path, was: &Copied) -> bool {
    std::fs::symlink_metadata(path)
        .is_ok_and(|m| m.is_file() && m.len() == was.len && mtime_ns(&m) == was.mtime_ns)
}

/// The checked workspace `root` (an open descriptor of the directory that
/// passed the checks: never its path again, which a local process may
/// have swapped for a link since) as a tar for the volume (files owned by
/// `owner`, no setuid or setgid bits; symbolic links as links, never
/// followed; sockets, pipes and devices left out) and what each file was.
/// `shown`: its path, for messages.
pub(crate) fn pack(
    root: &OwnedFd,
    shown: &Path,
    owner: Option<(u32, u32)>,
) -> Result<(Vec<u8>, Manifest), Error> {
    use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags};
    let mut b = tar::Builder::new(Vec::new());
    let mut manifest = Manifest::new();
    let io = |p: &Path, e: std::io::Error| Error::io("copy into the sandbox", shown.join(p), e);
    let open = |at: &OwnedFd, name: &std::ffi::CStr, dir: bool| {
        let kind = if dir {
            OFlags::DIRECTORY
        } else {
            OFlags::NONBLOCK
        };
        rfs::openat(
            at,
            name,
            kind | OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
    };
    let mut todo = vec![(
        PathBuf::new(),
        open(root, c".", true).map_err(|e| io(Path::new(""), e.into()))?,
    )];
    while let Some((rel, fd)) = todo.pop() {
        let dir = rfs::Dir::read_from(&fd).map_err(|e| io(&rel, e.into()))?;
        for entry in dir {
            let entry = entry.map_err(|e| io(&rel, e.into()))?;
            let name = entry.file_name();
            if name == c"." || name == c".." {
                continue;
            }
            let path = rel.join(std::ffi::OsStr::from_bytes(name.to_bytes()));
            let err = |e: rustix::io::Errno| io(&path, e.into());
            let st = rfs::statat(&fd, name, AtFlags::SYMLINK_NOFOLLOW).map_err(err)?;
            let mtime_ns = i128::from(st.st_mtime) * 1_000_000_000 + i128::from(st.st_mtime_nsec);
            let mut h = tar::Header::new_gnu();
            h.set_mode(st.st_mode & 0o777);
            let (uid, gid) = owner.unwrap_or((st.st_uid, st.st_gid));
            h.set_uid(u64::from(uid));
            h.set_gid(u64::from(gid));
            h.set_mtime(u64::try_from(st.st_mtime).unwrap_or(0));
            match FileType::from_raw_mode(st.st_mode) {
                FileType::Directory => {
                    let sub = open(&fd, name, true).map_err(err)?;
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_size(0);
                    b.append_data(&mut h, &path, std::io::empty())
                        .map_err(|e| io(&path, e))?;
                    todo.push((path, sub));
                }
                FileType::Symlink => {
                    let target = rfs::readlinkat(&fd, name, Vec::new()).map_err(err)?;
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_size(0);
                    let target = std::ffi::OsStr::from_bytes(target.to_bytes());
                    b.append_link(&mut h, &path, target)
                        .map_err(|e| io(&path, e))?;
                }
                FileType::RegularFile => {
                    // Opened without following, then read from the descriptor.
                    let mut file = std::fs::File::from(open(&fd, name, false).map_err(err)?);
                    let mut data = Vec::new();
                    file.read_to_end(&mut data).map_err(|e| io(&path, e))?;
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(data.len() as u64);
                    b.append_data(&mut h, &path, &data[..])
                        .map_err(|e| io(&path, e))?;
                    manifest.insert(
                        path,
                        Copied {
                            hash: sha2::Sha256::digest(&data).into(),
                            len: st.st_size as u64,
                            mtime_ns,
                        },
                    );
                }
                _ => {}
            }
        }
    }
    let tar = b.into_inner().map_err(|e| io(Path::new(""), e))?;
    Ok((tar, manifest))
}

/// What copying back did.
#[derive(Debug, Default)]
pub(crate) struct Report {
    pub(crate) written: usize,
    pub(crate) removed: usize,
    /// Paths changed on both sides (the sandbox's version is beside them),
    /// or that could not be written safely.
    pub(crate) conflicts: Vec<String>,
}

impl Report {
    /// Says what needs the caller's attention (conflicts), on stderr.
    pub(crate) fn tell(&self, dir: &Path) {
        for c in &self.conflicts {
            eprintln!("agent-sandbox: {}: {c}", dir.display());
        }
    }
}

/// Creates the directories of `rel` below `root`, refusing to pass through
/// anything that is not a real directory (a symbolic link the sandbox or
/// anyone made): nothing is written outside `root`.
fn real_dirs(root: &Path, rel: &Path) -> std::io::Result<()> {
    let mut cur = root.to_owned();
    for c in rel.components() {
        cur.push(c);
        match std::fs::symlink_metadata(&cur) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(std::io::Error::other(
                    "a path on the way is not a directory",
                ))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::create_dir(&cur)?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Gives `path` (never followed if a link) the sandbox's `owner`, as a bind
/// mount would have: only a root caller can, and only it needs to (anyone
/// else's files are theirs already).
fn give(path: &Path, owner: Option<(u32, u32)>) -> std::io::Result<()> {
    if let Some((uid, gid)) = owner.filter(|_| rustix::process::geteuid().is_root()) {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
    }
    Ok(())
}

fn write_file(
    root: &Path,
    rel: &Path,
    data: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> std::io::Result<()> {
    let parent = rel.parent().unwrap_or(Path::new(""));
    real_dirs(root, parent)?;
    let name = rel
        .file_name()
        .ok_or_else(|| std::io::Error::other("no name"))?;
    let tmp = root
        .join(parent)
        .join(format!(".{}.agent-sandbox-part", name.to_string_lossy()));
    std::fs::write(&tmp, data)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode & 0o777))?;
    give(&tmp, owner)?;
    std::fs::rename(&tmp, root.join(rel))
}

/// Copies the volume's `tar` (of `/workspace`) back into `dir` (give the
/// checked directory as `/proc/self/fd/N`, so a path swapped since is not
/// followed; nothing below it is either, see [`real_dirs`]). What the
/// sandbox made gets the owner it had there (for a root caller; see [`give`]).
pub(crate) fn merge(tar: &[u8], dir: &Path, copied: &Manifest) -> Result<Report, Error> {
    let mut report = Report::default();
    let mut seen = HashSet::new();
    let mut archive = tar::Archive::new(tar);
    let bad = |e: std::io::Error| Error::io("copy back from the sandbox", dir, e);
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let path = entry.path().map_err(bad)?.into_owned();
        // `workspace/...`: the first component is the directory itself.
        let mut parts = path.components();
        parts.next();
        let rel: PathBuf = parts.as_path().to_owned();
        if rel.as_os_str().is_empty()
            || !rel.components().all(|c| matches!(c, Component::Normal(_)))
        {
            continue;
        }
        let local = dir.join(&rel);
        let kind = entry.header().entry_type();
        let id = |v: std::io::Result<u64>| v.ok().and_then(|v| u32::try_from(v).ok());
        let owner = id(entry.header().uid()).zip(id(entry.header().gid()));
        let mut conflict =
            |what: String| report.conflicts.push(format!("{}: {what}", rel.display()));
        if kind.is_dir() {
            let new = std::fs::symlink_metadata(&local).is_err();
            if let Err(e) = real_dirs(dir, &rel).and_then(|()| {
                if new {
                    give(&local, owner)?;
                }
                Ok(())
            }) {
                conflict(format!("not copied back ({e})"));
            }
        } else if kind.is_symlink() {
            let Ok(Some(target)) = entry.link_name() else {
                continue;
            };
            match std::fs::symlink_metadata(&local) {
                Err(_) => {
                    let parent = rel.parent().unwrap_or(Path::new(""));
                    match real_dirs(dir, parent)
                        .and_then(|()| std::os::unix::fs::symlink(&target, &local))
                        .and_then(|()| give(&local, owner))
                    {
                        Ok(()) => report.written += 1,
                        Err(e) => conflict(format!("link not copied back ({e})")),
                    }
                }
                Ok(m)
                    if m.file_type().is_symlink()
                        && std::fs::read_link(&local).is_ok_and(|t| t == *target) => {}
                Ok(_) => conflict("the sandbox made it a link; the local file is kept".into()),
            }
        } else if kind.is_file() {
            seen.insert(rel.clone());
            let mut data = Vec::new();
            entry.read_to_end(&mut data).map_err(bad)?;
            let mode = entry.header().mode().unwrap_or(0o644);
            let was = copied.get(&rel);
            let hash: [u8; 32] = sha2::Sha256::digest(&data).into();
            if was.is_some_and(|w| w.hash == hash) {
                continue; // not changed in the sandbox
            }
            let free = match (std::fs::symlink_metadata(&local), was) {
                (Err(_), _) => true,
                (Ok(_), Some(w)) => unchanged(&local, w),
                (Ok(_), None) => false,
            };
            let target = if free {
                rel.clone()
            } else {
                let mut name = rel.file_name().unwrap_or_default().to_owned();
                name.push(".from-sandbox");
                conflict(format!(
                    "changed here and in the sandbox: the sandbox's version is in {}",
                    name.to_string_lossy()
                ));
                rel.with_file_name(name)
            };
            match write_file(dir, &target, &data, mode, owner) {
                Ok(()) => report.written += 1,
                Err(e) => report
                    .conflicts
                    .push(format!("{}: not copied back ({e})", target.display())),
            }
        }
    }
    // Removed in the sandbox: removed here if unchanged here.
    for (rel, was) in copied {
        if !seen.contains(rel)
            && unchanged(&dir.join(rel), was)
            && std::fs::remove_file(dir.join(rel)).is_ok()
        {
            report.removed += 1;
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The volume's tar as the engine gives it: below `workspace/`.
    fn volume(files: &[(&str, &[u8])], links: &[(&str, &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        b.append_data(&mut h, "workspace/", std::io::empty())
            .unwrap();
        for (p, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o4755);
            h.set_size(data.len() as u64);
            b.append_data(&mut h, format!("workspace/{p}"), *data)
                .unwrap();
        }
        for (p, t) in links {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            b.append_link(&mut h, format!("workspace/{p}"), t).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn copying_back_keeps_local_changes_and_never_writes_through_links() {
        let root = std::env::temp_dir().join(format!("as-sync-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let (dir, outside) = (root.join("ws"), root.join("outside"));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        for (p, t) in [
            ("same", "1"),
            ("boxed", "1"),
            ("both", "1"),
            ("gone", "1"),
            ("kept", "1"),
            ("sub/x", "1"),
        ] {
            std::fs::write(dir.join(p), t).unwrap();
        }
        std::fs::write(outside.join("secret"), "s").unwrap();
        std::os::unix::fs::symlink(&outside, dir.join("link")).unwrap();
        let fd = rustix::fs::open(
            &dir,
            rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::RDONLY,
            rustix::fs::Mode::empty(),
        )
        .unwrap();
        let (tar, copied) = pack(&fd, &dir, None).unwrap();
        assert_eq!(copied.len(), 6, "the link is not followed: {copied:?}");
        let names: Vec<String> = tar::Archive::new(&tar[..])
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert!(names.contains(&"link".to_owned()), "{names:?}");
        assert!(!names.iter().any(|n| n.contains("secret")), "{names:?}");
        std::fs::remove_file(dir.join("link")).unwrap();
        assert!(!tar.is_empty());
        // Meanwhile, here: `both` and `kept` change.
        std::thread::sleep(std::time::Duration::from_millis(10));
        std::fs::write(dir.join("both"), "local").unwrap();
        std::fs::write(dir.join("kept"), "local").unwrap();
        // In the sandbox: `boxed` and `both` change, `gone` and `kept` are
        // removed, `new` appears, and a link to outside with a file "in" it.
        let back = volume(
            &[
                ("same", b"1"),
                ("boxed", b"box"),
                ("both", b"box"),
                ("sub/x", b"1"),
                ("new", b"n"),
                ("esc/f", b"owned"),
            ],
            &[("esc", outside.to_str().unwrap())],
        );
        // `esc` comes after `esc/f` in this tar: order it as a hostile one would.
        let hostile = volume(&[("esc/f", b"owned")], &[]);
        let mut with_link_first = volume(&[], &[("esc", outside.to_str().unwrap())]);
        with_link_first.truncate(with_link_first.len() - 1024);
        with_link_first.extend_from_slice(&hostile[512..]);
        let r = merge(&back, &dir, &copied).unwrap();
        let read = |p: &str| std::fs::read_to_string(dir.join(p)).ok();
        assert_eq!(read("boxed").as_deref(), Some("box"));
        assert_eq!(read("both").as_deref(), Some("local"));
        assert_eq!(read("both.from-sandbox").as_deref(), Some("box"));
        assert_eq!(read("new").as_deref(), Some("n"));
        assert_eq!(read("gone"), None, "removed in the sandbox, unchanged here");
        assert_eq!(read("kept").as_deref(), Some("local"), "changed here: kept");
        let mode = std::fs::metadata(dir.join("boxed"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7000, 0, "no setuid from the sandbox");
        let fresh = root.join("fresh");
        std::fs::create_dir_all(&fresh).unwrap();
        let r2 = merge(&with_link_first, &fresh, &Manifest::new()).unwrap();
        assert!(std::fs::symlink_metadata(fresh.join("esc"))
            .unwrap()
            .file_type()
            .is_symlink());
        assert!(
            std::fs::read_dir(&outside).unwrap().count() == 1,
            "nothing written outside (it holds only its secret)"
        );
        assert!(
            r2.conflicts.iter().any(|c| c.starts_with("esc/f")),
            "{:?}",
            r2.conflicts
        );
        assert!(
            r.conflicts.iter().any(|c| c.starts_with("both")),
            "{:?}",
            r.conflicts
        );
        std::fs::remove_dir_all(&root).unwrap();
    }
}
