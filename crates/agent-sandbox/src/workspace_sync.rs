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
/// `shown`: its path, for messages. With `skip_gitignored`, what the
/// `.gitignore` files of the tree ignore is left out, as git reads them
/// (each applies below its directory, deeper ones win, `!` re-includes,
/// nothing inside an ignored directory is looked at).
pub(crate) fn pack(
    root: &OwnedFd,
    shown: &Path,
    owner: Option<(u32, u32)>,
    skip_gitignored: bool,
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
        Vec::new(),
    )];
    while let Some((rel, fd, mut rules)) = todo.pop() {
        if skip_gitignored {
            if let Some(g) = gitignore(&fd, &rel) {
                rules.push(std::sync::Arc::new(g));
            }
        }
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
            let kind = FileType::from_raw_mode(st.st_mode);
            if ignored(&rules, &path, kind == FileType::Directory) {
                continue;
            }
            let mtime_ns = i128::from(st.st_mtime) * 1_000_000_000 + i128::from(st.st_mtime_nsec);
            let mut h = tar::Header::new_gnu();
            h.set_mode(st.st_mode & 0o777);
            let (uid, gid) = owner.unwrap_or((st.st_uid, st.st_gid));
            h.set_uid(u64::from(uid));
            h.set_gid(u64::from(gid));
            h.set_mtime(u64::try_from(st.st_mtime).unwrap_or(0));
            match kind {
                FileType::Directory => {
                    let sub = open(&fd, name, true).map_err(err)?;
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_size(0);
                    b.append_data(&mut h, &path, std::io::empty())
                        .map_err(|e| io(&path, e))?;
                    todo.push((path, sub, rules.clone()));
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

/// What [`Session::upload`](crate::Session::upload) copies: a local
/// directory packed as the workspace is (links as links, never followed;
/// sockets, pipes and devices left out; with `skip_gitignored` what its
/// `.gitignore` files ignore left out), or a tar file as it is (it must
/// read as one: a tar that does not parse is refused here, not half
/// extracted in the sandbox).
pub(crate) fn upload_tar(local: &Path, skip_gitignored: bool) -> Result<Vec<u8>, Error> {
    let io = |e: std::io::Error| Error::io("upload", local, e);
    let meta = std::fs::metadata(local).map_err(io)?;
    if meta.is_dir() {
        let fd = open_dir(local).map_err(|e| io(e.into()))?;
        return pack(&fd, local, None, skip_gitignored).map(|(tar, _)| tar);
    }
    if !meta.is_file() {
        return Err(io(std::io::Error::other(
            "neither a directory nor a tar file",
        )));
    }
    if meta.len() > MAX_WORKSPACE as u64 {
        return Err(io(std::io::Error::other(format!(
            "larger than the {} GiB a copy may hold",
            MAX_WORKSPACE >> 30
        ))));
    }
    let tar = std::fs::read(local).map_err(io)?;
    let not_tar = |e: std::io::Error| io(std::io::Error::other(format!("not a tar file ({e})")));
    let mut archive = tar::Archive::new(&tar[..]);
    let mut entries = 0usize;
    for entry in archive.entries().map_err(not_tar)? {
        let mut entry = entry.map_err(not_tar)?;
        // Read through, so a truncated member is found here.
        std::io::copy(&mut entry, &mut std::io::sink()).map_err(not_tar)?;
        entries += 1;
    }
    if entries == 0 && !tar.iter().all(|b| *b == 0) {
        return Err(not_tar(std::io::Error::other("no entries")));
    }
    Ok(tar)
}

/// The rules of `dir`'s `.gitignore` (a regular file; read without
/// following a link), for paths below `rel`. `None`: no such file.
fn gitignore(dir: &OwnedFd, rel: &Path) -> Option<ignore::gitignore::Gitignore> {
    use rustix::fs::{self as rfs, Mode, OFlags};
    let fd = rfs::openat(
        dir,
        c".gitignore",
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    rules_from(std::fs::File::from(fd), rel)
}

/// The rules of an open `.gitignore` (a regular file) for paths below `rel`.
fn rules_from(mut file: std::fs::File, rel: &Path) -> Option<ignore::gitignore::Gitignore> {
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let mut text = String::new();
    file.by_ref().take(1 << 20).read_to_string(&mut text).ok()?;
    let mut b = ignore::gitignore::GitignoreBuilder::new(Path::new("/").join(rel));
    for line in text.lines() {
        // A line git cannot read is one git ignores too.
        let _ = b.add_line(None, line);
    }
    b.build().ok()
}

/// The `.gitignore` rules of the caller's directory for copying back:
/// what was left out going in is left alone coming back (a sandbox's
/// `target/` or `node_modules/` stays in the sandbox).
struct Ignorer<'a> {
    root: &'a Path,
    on: bool,
    cache: HashMap<PathBuf, Option<std::sync::Arc<ignore::gitignore::Gitignore>>>,
}

impl Ignorer<'_> {
    /// Whether `rel` or a directory above it is ignored.
    fn ignored(&mut self, rel: &Path, dir: bool) -> bool {
        if !self.on {
            return false;
        }
        let parts: Vec<_> = rel.components().collect();
        let mut rules = Vec::new();
        let mut at = PathBuf::new();
        for (i, part) in parts.iter().enumerate() {
            rules.extend(self.rules(&at));
            at.push(part);
            if ignored(&rules, &at, dir || i + 1 < parts.len()) {
                return true;
            }
        }
        false
    }

    fn rules(&mut self, rel: &Path) -> Option<std::sync::Arc<ignore::gitignore::Gitignore>> {
        let root = self.root;
        self.cache
            .entry(rel.to_owned())
            .or_insert_with(|| {
                // A `.gitignore` that is a link or a FIFO is not read.
                let file = open_unfollowed(&root.join(rel).join(".gitignore")).ok()?;
                rules_from(file, rel).map(std::sync::Arc::new)
            })
            .clone()
    }
}

/// Whether the deepest `.gitignore` with a say about `path` ignores it.
fn ignored(rules: &[std::sync::Arc<ignore::gitignore::Gitignore>], path: &Path, dir: bool) -> bool {
    let path = Path::new("/").join(path);
    for g in rules.iter().rev() {
        match g.matched(&path, dir) {
            ignore::Match::Ignore(_) => return true,
            ignore::Match::Whitelist(_) => return false,
            ignore::Match::None => {}
        }
    }
    false
}

/// What copying the workspace back did ([`Session::sync_back`](crate::Session::sync_back)).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SyncReport {
    /// Files written into the caller's directory.
    pub written: usize,
    /// Files removed from it (removed in the sandbox, unchanged here).
    pub removed: usize,
    /// Paths changed on both sides (the sandbox's version is beside them,
    /// as `NAME.from-sandbox`), or that could not be written safely.
    pub conflicts: Vec<String>,
}

impl SyncReport {
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

/// Opens the directory `path` (the caller's: a link on the way is theirs).
pub(crate) fn open_dir(path: &Path) -> rustix::io::Result<OwnedFd> {
    use rustix::fs::OFlags;
    rustix::fs::open(
        path,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
}

/// Whether `path` is a regular file (never followed if a link) holding
/// exactly `data`.
fn same_content(path: &Path, data: &[u8]) -> bool {
    open_unfollowed(path)
        .and_then(|mut f| {
            if !f.metadata()?.is_file() || f.metadata()?.len() != data.len() as u64 {
                return Ok(false);
            }
            let mut have = Vec::with_capacity(data.len());
            f.read_to_end(&mut have)?;
            Ok(have == data)
        })
        .unwrap_or(false)
}

/// Opens `path` for reading, refusing a link in its last component and
/// never waiting on a FIFO (what the sandbox may have left there).
fn open_unfollowed(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let flags = rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits() as i32)
        .open(path)
}

/// Copies the volume's `tar` (of `/workspace`) back into `dir` (give the
/// checked directory as `/proc/self/fd/N`, so a path swapped since is not
/// followed; nothing below it is either, see [`real_dirs`]). What the
/// sandbox made gets the owner it had there (for a root caller; see [`give`]).
/// With `skip_gitignored`, what the directory's `.gitignore` files ignore
/// is not copied back (it was not copied in). `copied` is brought up to
/// date for a later merge of the same sandbox (a session's `sync_back`
/// before its close): files written here are now what both sides had,
/// removed ones are gone; a conflict keeps the old entry, so the local
/// change still counts as one next time.
pub(crate) fn merge(
    tar: &[u8],
    dir: &Path,
    copied: &mut Manifest,
    skip_gitignored: bool,
) -> Result<SyncReport, Error> {
    let mut report = SyncReport::default();
    let mut ignorer = Ignorer {
        root: dir,
        on: skip_gitignored,
        cache: HashMap::new(),
    };
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
        if ignorer.ignored(&rel, kind.is_dir()) {
            continue;
        }
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
            if !free && same_content(&local, &data) {
                continue; // both sides made the same file
            }
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
                Ok(()) => {
                    report.written += 1;
                    if free {
                        if let Ok(m) = std::fs::symlink_metadata(&local) {
                            copied.insert(
                                rel.clone(),
                                Copied {
                                    hash,
                                    len: m.len(),
                                    mtime_ns: mtime_ns(&m),
                                },
                            );
                        }
                    }
                }
                Err(e) => report
                    .conflicts
                    .push(format!("{}: not copied back ({e})", target.display())),
            }
        }
    }
    // Removed in the sandbox: removed here if unchanged here.
    copied.retain(|rel, was| {
        if seen.contains(rel) {
            return true;
        }
        if unchanged(&dir.join(rel), was) && std::fs::remove_file(dir.join(rel)).is_ok() {
            report.removed += 1;
            return false;
        }
        // Changed here: kept, and still a local change next time. Gone
        // here too: nothing left to compare.
        std::fs::symlink_metadata(dir.join(rel)).is_ok()
    });
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
        let (tar, mut copied) = pack(&fd, &dir, None, false).unwrap();
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
        let r = merge(&back, &dir, &mut copied, false).unwrap();
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
        let r2 = merge(&with_link_first, &fresh, &mut Manifest::new(), false).unwrap();
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

    fn names(tar: &[u8]) -> Vec<String> {
        let mut names: Vec<String> = tar::Archive::new(tar)
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        names.sort();
        names
    }

    /// `.gitignore` files are read as git reads them: per directory,
    /// deeper ones win, `!` re-includes, a directory pattern leaves out
    /// everything below; copying back leaves the same paths alone.
    #[test]
    fn gitignored_paths_are_neither_copied_in_nor_back() {
        let root = std::env::temp_dir().join(format!("as-ignore-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let dir = root.join("ws");
        for d in ["target/debug", "sub/deep", "src"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        for (p, t) in [
            (".gitignore", "target/\n*.log\n!keep.log\n"),
            ("src/main.rs", "fn main() {}"),
            ("target/debug/app", "binary"),
            ("a.log", "log"),
            ("keep.log", "kept"),
            ("sub/.gitignore", "secret.txt\n!a.log\n"),
            ("sub/secret.txt", "s"),
            ("sub/a.log", "re-included below"),
            ("sub/deep/secret.txt", "s"),
            ("sub/deep/x", "x"),
        ] {
            std::fs::write(dir.join(p), t).unwrap();
        }
        let fd = open_dir(&dir).unwrap();
        let (all, _) = pack(&fd, &dir, None, false).unwrap();
        assert!(names(&all).contains(&"target/debug/app".to_owned()));
        let (tar, mut copied) = pack(&fd, &dir, None, true).unwrap();
        assert_eq!(
            names(&tar),
            [
                ".gitignore",
                "keep.log",
                "src",
                "src/main.rs",
                "sub",
                "sub/.gitignore",
                "sub/a.log",
                "sub/deep",
                "sub/deep/x",
            ]
        );
        assert_eq!(copied.len(), 6, "{copied:?}");
        // The sandbox builds into target/ and writes a log: they stay there.
        let back = volume(
            &[
                ("src/main.rs", b"fn main() {}"),
                ("target/debug/app", b"sandbox binary"),
                ("target/new", b"n"),
                ("b.log", b"log"),
                ("sub/deep/x", b"changed"),
            ],
            &[],
        );
        let r = merge(&back, &dir, &mut copied, true).unwrap();
        let read = |p: &str| std::fs::read_to_string(dir.join(p)).ok();
        assert_eq!(read("target/debug/app").as_deref(), Some("binary"));
        assert_eq!(read("target/new"), None);
        assert_eq!(read("b.log"), None);
        assert_eq!(read("sub/deep/x").as_deref(), Some("changed"));
        assert_eq!(
            read("a.log").as_deref(),
            Some("log"),
            "ignored: never removed"
        );
        assert!(r.conflicts.is_empty(), "{:?}", r.conflicts);
        std::fs::remove_dir_all(&root).unwrap();
    }

    /// A `.gitignore` the sandbox planted as a link (to a host file that
    /// would ignore everything) is not read on a later copy-back, and one
    /// that is a FIFO does not hang it: what it would have hidden arrives.
    #[test]
    fn planted_gitignore_links_and_fifos_are_not_read() {
        let root = std::env::temp_dir().join(format!("as-planted-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let dir = root.join("ws");
        std::fs::create_dir_all(dir.join("fifo")).unwrap();
        let everything = root.join("everything");
        std::fs::write(&everything, "*\n").unwrap();
        let made = std::process::Command::new("mkfifo")
            .arg(dir.join("fifo/.gitignore"))
            .status()
            .unwrap();
        assert!(made.success());
        let mut copied = Manifest::new();
        // First copy-back: the sandbox made sub/.gitignore a link.
        let target = everything.to_str().unwrap();
        let first = volume(&[("sub/keep", b"k")], &[("sub/.gitignore", target)]);
        merge(&first, &dir, &mut copied, true).unwrap();
        assert!(std::fs::symlink_metadata(dir.join("sub/.gitignore"))
            .unwrap()
            .file_type()
            .is_symlink());
        // A later one, in another thread so a hang fails the test.
        let (tx, rx) = std::sync::mpsc::channel();
        let d = dir.clone();
        std::thread::spawn(move || {
            let later = volume(&[("sub/x", b"x"), ("fifo/y", b"y")], &[]);
            let _ = tx.send(merge(&later, &d, &mut copied, true).map(|r| r.written));
        });
        let written = rx
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("a FIFO named .gitignore hung the copy-back")
            .unwrap();
        assert_eq!(written, 2);
        assert_eq!(std::fs::read_to_string(dir.join("sub/x")).unwrap(), "x");
        assert_eq!(std::fs::read_to_string(dir.join("fifo/y")).unwrap(), "y");
        std::fs::remove_dir_all(&root).unwrap();
    }

    /// A merge before the end (a session's `sync_back`) leaves the manifest
    /// so that the final merge neither loses a local change nor redoes
    /// what was already copied.
    #[test]
    fn a_second_merge_builds_on_the_first() {
        let root = std::env::temp_dir().join(format!("as-twice-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        for p in ["synced", "conflict", "removed"] {
            std::fs::write(root.join(p), "1").unwrap();
        }
        let (_, mut copied) = pack(&open_dir(&root).unwrap(), &root, None, false).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(10));
        std::fs::write(root.join("conflict"), "local").unwrap();
        let first = volume(&[("synced", b"box"), ("conflict", b"box")], &[]);
        let r = merge(&first, &root, &mut copied, false).unwrap();
        assert_eq!((r.written, r.removed), (2, 1));
        let read = |p: &str| std::fs::read_to_string(root.join(p)).ok();
        assert_eq!(read("removed"), None);
        // The same volume again: nothing new to write or report.
        let r = merge(&first, &root, &mut copied, false).unwrap();
        assert_eq!((r.written, r.removed), (1, 0), "only the conflict again");
        assert_eq!(read("conflict").as_deref(), Some("local"));
        // The sandbox changes `synced` again: copied, as nothing changed here.
        let second = volume(&[("synced", b"box 2"), ("conflict", b"box")], &[]);
        merge(&second, &root, &mut copied, false).unwrap();
        assert_eq!(read("synced").as_deref(), Some("box 2"));
        assert_eq!(read("conflict").as_deref(), Some("local"), "never lost");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
