//! Job workspaces: a fresh copy of the project for every attempt, so a job
//! never sees files another job (or an earlier attempt) left behind.
//!
//! In a git repository the copy holds what git would: tracked files plus
//! untracked files that are not ignored (`git ls-files --cached --others
//! --exclude-standard`), so build output and `target/` stay out. Elsewhere
//! the whole directory is copied. The file list is taken once per run.
//!
//! trackside's own state directory is never part of it, even when it lies
//! inside the project (`--state-dir .trackside`): copying it would copy every
//! earlier run's records, and the run's own, into each job's workspace.

use std::io;
use std::path::{Path, PathBuf};

/// Files of the project, relative to `project`, leaving out the state
/// directory `state` when it is inside the project.
pub fn project_files(project: &Path, state: &Path) -> io::Result<Vec<PathBuf>> {
    let inside = within(project, state);
    let outside = |f: &PathBuf| inside.as_ref().is_none_or(|dir| !f.starts_with(dir));
    if let Some(mut files) = git_files(project) {
        files.retain(outside);
        return Ok(files);
    }
    let mut out = Vec::new();
    walk(project, Path::new(""), inside.as_deref(), &mut out)?;
    out.sort();
    Ok(out)
}

/// `dir` relative to `project` when it is inside it (both resolved, so a
/// symlink or `..` cannot hide it).
fn within(project: &Path, dir: &Path) -> Option<PathBuf> {
    let (project, dir) = (project.canonicalize().ok()?, dir.canonicalize().ok()?);
    let rel = dir.strip_prefix(&project).ok()?;
    // The project inside the state directory is not a reason to copy nothing.
    (!rel.as_os_str().is_empty()).then(|| rel.to_path_buf())
}

fn git_files(project: &Path) -> Option<Vec<PathBuf>> {
    let stdout = super::git::bytes(
        project,
        &["ls-files", "-z", "--cached", "--others", "--exclude-standard"],
    )?;
    let mut files: Vec<PathBuf> = stdout
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .filter_map(|s| std::str::from_utf8(s).ok().map(PathBuf::from))
        .collect();
    files.sort();
    files.dedup();
    Some(files)
}

fn walk(root: &Path, rel: &Path, skip: Option<&Path>, out: &mut Vec<PathBuf>) -> io::Result<()> {
    for entry in std::fs::read_dir(root.join(rel))? {
        let entry = entry?;
        let rel_path = rel.join(entry.file_name());
        let ft = entry.file_type()?;
        if ft.is_dir() {
            if skip != Some(rel_path.as_path()) {
                walk(root, &rel_path, skip, out)?;
            }
        } else if ft.is_file() || ft.is_symlink() {
            out.push(rel_path);
        }
    }
    Ok(())
}

/// The kind of file system `dir` (or its nearest existing ancestor) is on,
/// and whether it is one of the local ones that keep file status as the
/// kernel sets it (ext4, XFS, btrfs, tmpfs).
fn filesystem(dir: &Path) -> (String, bool) {
    use nix::sys::statfs::{BTRFS_SUPER_MAGIC, EXT4_SUPER_MAGIC, TMPFS_MAGIC, XFS_SUPER_MAGIC, statfs};
    let Some(st) = dir.ancestors().find_map(|d| statfs(d).ok()) else {
        return ("an unknown file system".into(), false);
    };
    let local = [
        (BTRFS_SUPER_MAGIC, "btrfs"),
        (XFS_SUPER_MAGIC, "XFS"),
        (EXT4_SUPER_MAGIC, "ext2/3/4"),
        (TMPFS_MAGIC, "tmpfs"),
    ];
    match local.iter().find(|(magic, _)| *magic == st.filesystem_type()) {
        Some((_, name)) => ((*name).to_string(), true),
        None => (format!("file system type {:#x}", st.filesystem_type().0), false),
    }
}

/// What `files` of `project` hold, in bytes (what a copy of them takes).
pub fn total_size(project: &Path, files: &[PathBuf]) -> u64 {
    files
        .iter()
        .filter_map(|f| std::fs::symlink_metadata(project.join(f)).ok())
        .map(|m| m.len())
        .sum()
}

/// Copies `files` from `project` into `dest`, which is made and must not
/// exist (nothing is ever copied over what a job left), keeping modes and
/// symlinks. Files listed but gone (deleted, not yet committed) are skipped.
pub fn copy_files(project: &Path, files: &[PathBuf], dest: &Path) -> io::Result<u64> {
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::create_dir(dest)?;
    copy_into(project, files, dest)
}

/// Copies `files` from `project` into the folder `dest`, where none of
/// them is.
fn copy_into(project: &Path, files: &[PathBuf], dest: &Path) -> io::Result<u64> {
    let mut copied = 0;
    // Files come sorted, so a folder's files come together: it is made once.
    let mut made: Option<&Path> = None;
    for rel in files {
        let from = project.join(rel);
        let to = dest.join(rel);
        let meta = match std::fs::symlink_metadata(&from) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let parent = rel.parent().filter(|p| !p.as_os_str().is_empty());
        if let Some(parent) = parent
            && made != Some(parent)
        {
            std::fs::create_dir_all(dest.join(parent))?;
            made = Some(parent);
        }
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&from)?;
            std::os::unix::fs::symlink(target, &to)?;
        } else if meta.is_file() {
            copied += std::fs::copy(&from, &to)?;
        }
    }
    Ok(copied)
}

/// Workspaces of ended jobs, kept to be made fresh again for the next jobs
/// (of this run or a later one) instead of removed and copied anew.
///
/// A fresh copy costs a folder and a file per project file, and removing it
/// frees as many. On a file system that skips recently freed inodes when it
/// allocates (ext4 without a journal does, for minutes), every job that
/// makes and removes a workspace makes the next ones slower; on any file
/// system a project of 10,000 files costs 10,000 copies per job. A spare
/// costs a rename to give back, after what is not a project file is
/// removed from it, and a rename to take and [`refresh`]: it brings back
/// what the last job changed or what changed in the project, comparing each
/// file's status with the one recorded when the copy was last known equal,
/// so an unchanged file costs two `lstat`s. The job still starts from
/// exactly the project's files.
///
/// Spares live in the state directory, one pool per project
/// (`<state>/spares/<hash of the project's path>/`), about [`MAX_SPARES`]
/// and [`SPARE_BYTES`] of copies per project at most; more are removed.
/// They are kept only where every process of a host step is killed with
/// it (its cgroup): a process that outlived its job could write into the
/// next job's workspace.
#[derive(Debug)]
pub struct Spares {
    pool: PathBuf,
    /// How many spares the pool may hold (from the project's size); 0
    /// keeps none.
    most: usize,
    /// Whether recorded file status can be trusted: the project and the
    /// state directory are on local file systems that keep it
    /// (elsewhere, contents are compared).
    trust: bool,
    /// Spares in the pool's folder (this run's count, from what was there).
    held: std::sync::atomic::AtomicUsize,
    state: std::sync::Mutex<SpareState>,
    /// Whether the pool's folder is there (made 0700 on first use).
    made: std::sync::OnceLock<bool>,
}

/// At most this many spare workspaces per project.
pub const MAX_SPARES: usize = 1024;
/// At most this much in spare workspaces per project (counting 4 KiB for
/// each file and folder at least).
pub const SPARE_BYTES: u64 = 1 << 30;

#[derive(Debug, Default)]
struct SpareState {
    /// Spares found in the pool when the run began, not yet looked at.
    found: Option<Vec<PathBuf>>,
    /// Spares this run gave back, with what is known of their files.
    ready: Vec<(PathBuf, Option<Known>)>,
    /// Spares in use, by the workspace they became.
    taken: std::collections::HashMap<PathBuf, Known>,
}

/// Per project file (the run's list, in order), the status of the
/// workspace's copy and of the project's file when the copy was last known
/// equal to it (`None` where unknown), and when the job that used the copy
/// began.
#[derive(Debug)]
struct Known {
    stamps: Stamps,
    taken: std::time::SystemTime,
}

type Stamps = Vec<Option<(Stamp, Stamp)>>;

/// A project file found in place in a workspace.
#[derive(Debug, Clone, Copy)]
struct Found {
    copy: Stamp,
    copy_mode: u32,
    source: Stamp,
    source_mode: u32,
    /// A symlink with the project's target: nothing to do.
    link: bool,
}

/// What changes whenever a file's content or mode does: the kernel sets
/// `ctime` on every write, truncation, `chmod` and rename, and no program
/// can set it back on the local file systems where it is trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    ino: u64,
    size: u64,
    ctime: (i64, i64),
    mtime: (i64, i64),
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Stamp {
        use std::os::unix::fs::MetadataExt;
        Stamp {
            ino: meta.ino(),
            size: meta.size(),
            ctime: (meta.ctime(), meta.ctime_nsec()),
            mtime: (meta.mtime(), meta.mtime_nsec()),
        }
    }

    /// Whether the status was set at least [`TIME_GRAIN`] before `t`.
    fn settled_before(&self, t: std::time::SystemTime) -> bool {
        let (s, ns) = self.ctime;
        let (Ok(s), Ok(ns)) = (u64::try_from(s), u32::try_from(ns)) else {
            return false;
        };
        std::time::UNIX_EPOCH
            .checked_add(std::time::Duration::new(s, ns.min(999_999_999)))
            .and_then(|c| c.checked_add(TIME_GRAIN))
            .is_some_and(|c| c < t)
    }
}

/// File times come from a clock that ticks every few milliseconds (a
/// jiffy, up to 10 ms): a change made within this long of a recorded
/// status may have left the same times behind (git's "racily clean" case).
const TIME_GRAIN: std::time::Duration = std::time::Duration::from_millis(20);

impl Spares {
    /// The pool of `project`'s spare workspaces in `state`; `bytes` is what
    /// one copy of the project holds and `files` how many files it has.
    /// Without `contained` (every process of a step killed with it, as
    /// [`super::contain::available`] says), no spare is kept.
    pub fn open(state: &Path, project: &Path, files: usize, bytes: u64, contained: bool) -> Spares {
        use sha2::Digest;
        let key = sha2::Sha256::digest(project.as_os_str().as_encoded_bytes());
        let key: String = key.iter().take(8).map(|b| format!("{b:02x}")).collect();
        let per_copy = bytes.saturating_add(4096 * (files as u64 + 1));
        let most = if contained {
            usize::try_from(SPARE_BYTES / per_copy.max(1))
                .unwrap_or(MAX_SPARES)
                .min(MAX_SPARES)
        } else {
            0
        };
        let pool = state.join("spares").join(key);
        let held = std::fs::read_dir(&pool).map_or(0, Iterator::count);
        Spares {
            most,
            trust: filesystem(project).1 && filesystem(state).1,
            held: held.into(),
            pool,
            state: Default::default(),
            made: Default::default(),
        }
    }

    /// How workspaces are made, in a line (`run --verbose`).
    pub fn describe(&self) -> String {
        let (fs, _) = filesystem(self.pool.parent().unwrap_or(&self.pool));
        let copies = format!(
            "copies by copy_file_range on {fs} (blocks shared where the file system can: btrfs, XFS with reflink)"
        );
        if self.most == 0 {
            return format!("{copies}; no spare workspaces are kept (no cgroup to stop a job's every process)");
        }
        let held = self.held.load(std::sync::atomic::Ordering::Relaxed);
        format!(
            "{copies}; an ended job's workspace is kept in {} and made fresh for the next job ({held} there now, \
             at most {}{}; `trackside gc` removes them)",
            self.pool.display(),
            self.most,
            if self.trust {
                ""
            } else {
                "; contents compared, file status not trusted here"
            }
        )
    }

    fn state(&self) -> std::sync::MutexGuard<'_, SpareState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn drop_one(&self) {
        use std::sync::atomic::Ordering;
        let _ = self
            .held
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    /// Makes `dest` (which must not exist) a workspace holding exactly
    /// `files` of `project`, from a spare; false when there is none, or
    /// none could be made fresh (it is removed, or moved out of the way).
    /// `extra` names top-level entries that are not project files and may
    /// stay (the run's `.git` links).
    pub fn take(&self, project: &Path, files: &[PathBuf], dest: &Path, extra: &dyn Fn(&Path) -> bool) -> bool {
        if self.most == 0 {
            return false;
        }
        let Some(parent) = dest.parent() else {
            return false;
        };
        if std::fs::create_dir_all(parent).is_err() {
            return false;
        }
        loop {
            let next = {
                let mut st = self.state();
                match st.ready.pop() {
                    Some(spare) => Some(spare),
                    None => {
                        let pool = &self.pool;
                        let found = st.found.get_or_insert_with(|| {
                            std::fs::read_dir(pool)
                                .map(|d| d.flatten().map(|e| e.path()).collect())
                                .unwrap_or_default()
                        });
                        found.pop().map(|dir| (dir, None))
                    }
                }
            };
            let Some((dir, known)) = next else {
                return false;
            };
            match std::fs::rename(&dir, dest) {
                Ok(()) => self.drop_one(),
                // Another trackside took it first: try the next one.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    self.drop_one();
                    continue;
                }
                Err(_) => {
                    self.state().ready.push((dir, known));
                    return false;
                }
            }
            let known = known.filter(|_| self.trust);
            // Folders get the mode the run's own folder has (the umask's),
            // not one a job left.
            let folder_mode = {
                use std::os::unix::fs::PermissionsExt;
                std::fs::metadata(parent).map_or(0o755, |m| m.permissions().mode() & 0o7777)
            };
            match refresh(project, files, dest, extra, known.as_ref(), folder_mode) {
                Ok(stamps) => {
                    let taken = std::time::SystemTime::now();
                    self.state().taken.insert(dest.to_path_buf(), Known { stamps, taken });
                    return true;
                }
                Err(_) => {
                    self.discard(dest);
                    return false;
                }
            }
        }
    }

    /// Removes `ws`; what cannot be removed (a folder a job made
    /// unwritable, files of another owner) is moved into the pool's
    /// `trash`, for `trackside gc`, so nothing is ever copied over it.
    fn discard(&self, ws: &Path) {
        if std::fs::remove_dir_all(ws).is_ok() || !ws.exists() {
            return;
        }
        let trash = self.pool.with_file_name("trash");
        let _ = crate::store::private_dir(&trash);
        let _ = std::fs::rename(ws, trash.join(format!("{:016x}", fastrand::u64(..))));
    }

    /// Keeps `ws`, a workspace whose job ended, as a spare, after removing
    /// what is not a project file (what the job made, a container job's
    /// clone, ...) but the top-level entries `extra` accepts; removes it
    /// when the pool is full.
    pub fn give(&self, files: &[PathBuf], ws: &Path, extra: &dyn Fn(&Path) -> bool) {
        let known = self.state().taken.remove(ws);
        let made = *self.made.get_or_init(|| crate::store::private_dir(&self.pool).is_ok());
        let held = self.held.load(std::sync::atomic::Ordering::Relaxed);
        if held >= self.most || !made || prune(files, ws, extra).is_err() {
            self.discard(ws);
            return;
        }
        let spare = self.pool.join(format!("{:016x}", fastrand::u64(..)));
        match std::fs::rename(ws, &spare) {
            Ok(()) => {
                self.held.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.state().ready.push((spare, known));
            }
            Err(_) => self.discard(ws),
        }
    }
}

/// Emptied folders kept at most by a run: as many as its jobs that end
/// together, for as many that start together; more are removed.
const MAX_EMPTY_FOLDERS: usize = 64;

/// Emptied folders of a run's ended jobs, each renamed into place as a
/// next job's private folder (a GitHub job's `RUNNER_TEMP`): a rename
/// allocates nothing, where a new folder is an inode to find (on ext4
/// without a journal, past every inode freed in the last minutes). Kept,
/// as [`Spares`] are, only where every process of a host step is killed
/// with it: one that outlived its job could write into the next job's.
#[derive(Debug, Default)]
pub struct EmptyFolders {
    /// The folder they wait in; `None` keeps none.
    pool: Option<PathBuf>,
    free: std::sync::Mutex<Vec<PathBuf>>,
    /// How many were ever kept (each has a name of its own).
    kept: std::sync::atomic::AtomicUsize,
}

impl EmptyFolders {
    /// Folders kept in `pool` (the parent of the folders they are taken
    /// as: a rename within a folder); none unless `contained`.
    pub fn new(pool: PathBuf, contained: bool) -> EmptyFolders {
        EmptyFolders {
            pool: contained.then_some(pool),
            ..Default::default()
        }
    }

    fn free(&self) -> std::sync::MutexGuard<'_, Vec<PathBuf>> {
        self.free.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Makes `dest` (which must not exist) an empty folder only its owner
    /// may open (0700): a kept one, else a new one.
    pub fn take(&self, dest: &Path) -> Result<(), crate::store::IoFailure> {
        use std::os::unix::fs::PermissionsExt;
        let kept = self.free().pop();
        if let Some(dir) = kept {
            if std::fs::rename(&dir, dest).is_ok() {
                // A job may have opened its folder to others.
                return std::fs::set_permissions(dest, std::fs::Permissions::from_mode(0o700))
                    .map_err(crate::store::io_err("cannot make private", dest));
            }
            // Kept for the next one (`dest` was in the way).
            if std::fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) {
                self.free().push(dir);
            }
        }
        crate::store::private_dir(dest)
    }

    /// Empties `dir`, the folder of an ended job, and keeps it for a next
    /// [`EmptyFolders::take`], or removes it where none are kept. Nothing
    /// in it is followed through a symlink; a symlink a job put in its
    /// place is removed, not followed.
    pub fn give(&self, dir: &Path) {
        let folder = std::fs::symlink_metadata(dir).is_ok_and(|m| m.is_dir());
        let room = self.free().len() < MAX_EMPTY_FOLDERS;
        if let Some(pool) = self.pool.as_ref().filter(|_| folder && room)
            && prune(&[], dir, &|_| false).is_ok()
        {
            let n = self.kept.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let name = pool.join(format!(".empty-{n}"));
            if std::fs::rename(dir, &name).is_ok() {
                self.free().push(name);
                return;
            }
        }
        let _ = if folder {
            std::fs::remove_dir_all(dir)
        } else {
            std::fs::remove_file(dir)
        };
    }
}

/// The project's files and the folders that hold them.
fn wanted(
    files: &[PathBuf],
) -> (
    std::collections::HashMap<&Path, usize>,
    std::collections::HashSet<&Path>,
) {
    let wanted = files.iter().enumerate().map(|(i, f)| (f.as_path(), i)).collect();
    let folders = files
        .iter()
        .flat_map(|f| f.ancestors().skip(1))
        .filter(|p| !p.as_os_str().is_empty())
        .collect();
    (wanted, folders)
}

/// Removes from `dir` whatever is neither one of `files` nor a folder
/// holding one, but the top-level entries `extra` accepts. Symlinks are
/// removed or kept, never followed.
fn prune(files: &[PathBuf], dir: &Path, extra: &dyn Fn(&Path) -> bool) -> io::Result<()> {
    let (wanted, folders) = wanted(files);
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for entry in std::fs::read_dir(dir.join(&rel))? {
            let entry = entry?;
            let rel_path = rel.join(entry.file_name());
            if rel.as_os_str().is_empty() && extra(&rel_path) {
                continue;
            }
            let is_dir = entry.file_type()?.is_dir();
            if is_dir && folders.contains(rel_path.as_path()) {
                stack.push(rel_path);
            } else if is_dir {
                std::fs::remove_dir_all(entry.path())?;
            } else if !wanted.contains_key(rel_path.as_path()) {
                std::fs::remove_file(entry.path())?;
            }
        }
    }
    Ok(())
}

/// Makes `dir`, a workspace a job used, hold exactly `files` of `project`
/// again, as [`copy_files`] made it, and returns the record for the next
/// time. Whatever is not a project file is removed (but the top-level
/// entries `extra` accepts); folders get `folder_mode`. A project file is left alone when both it and
/// the workspace's copy have the status `known` recorded (the copy was
/// equal then, and neither changed since), unless that status is so close
/// to `taken` (when the job got the workspace) that a change may not show
/// in it: then the contents are compared. Otherwise it is rewritten in
/// place (same inode: nothing freed, nothing allocated) with the project's
/// mode. What the job removed or replaced is copied anew. Nothing is
/// followed through a symlink: an entry of the wrong type, a file with
/// other links or another owner, is removed and made again.
fn refresh(
    project: &Path,
    files: &[PathBuf],
    dir: &Path,
    extra: &dyn Fn(&Path) -> bool,
    known: Option<&Known>,
    folder_mode: u32,
) -> io::Result<Stamps> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let (wanted, folders) = wanted(files);
    let began = std::time::SystemTime::now();
    let root = std::fs::symlink_metadata(dir)?;
    if !root.is_dir() {
        return Err(io::Error::other("not a folder"));
    }
    let me = nix::unistd::geteuid().as_raw();
    let mut kept: Vec<Option<Found>> = vec![None; files.len()];
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for entry in std::fs::read_dir(dir.join(&rel))? {
            let entry = entry?;
            let rel_path = rel.join(entry.file_name());
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path)?;
            let ours = meta.uid() == me;
            if rel.as_os_str().is_empty() && extra(&rel_path) {
                continue;
            }
            if meta.is_dir() {
                if ours && folders.contains(rel_path.as_path()) {
                    if meta.permissions().mode() & 0o7777 != folder_mode {
                        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(folder_mode))?;
                    }
                    stack.push(rel_path);
                } else {
                    std::fs::remove_dir_all(&path)?;
                }
                continue;
            }
            let index = wanted.get(rel_path.as_path()).copied().filter(|_| ours);
            let source = index.and_then(|_| std::fs::symlink_metadata(project.join(&rel_path)).ok());
            let stays = match &source {
                Some(s) if s.is_file() => meta.is_file() && meta.nlink() == 1,
                Some(s) if s.file_type().is_symlink() => {
                    meta.file_type().is_symlink()
                        && std::fs::read_link(&path).ok() == std::fs::read_link(project.join(&rel_path)).ok()
                }
                _ => false,
            };
            match (index, source) {
                (Some(i), Some(source)) if stays => {
                    kept[i] = Some(Found {
                        copy: Stamp::of(&meta),
                        copy_mode: meta.permissions().mode(),
                        source: Stamp::of(&source),
                        source_mode: source.permissions().mode(),
                        link: source.file_type().is_symlink(),
                    });
                }
                _ => std::fs::remove_file(&path)?,
            }
        }
    }
    if std::fs::symlink_metadata(dir)?.permissions().mode() & 0o7777 != folder_mode {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(folder_mode))?;
    }
    let mut record = vec![None; files.len()];
    let mut buffers = (Vec::new(), Vec::new());
    let mut missing = Vec::new();
    for (i, rel) in files.iter().enumerate() {
        let Some(found) = kept[i] else {
            missing.push(rel.clone());
            continue;
        };
        if found.link {
            continue;
        }
        let (now_copy, now_source) = (found.copy, found.source);
        let unchanged = known.and_then(|k| {
            let (was_copy, was_source) = k.stamps.get(i).copied().flatten()?;
            let same = (was_copy, was_source) == (now_copy, now_source);
            // Too close to when the job began: its change may share the times.
            let settled = was_copy.settled_before(k.taken);
            Some(same && settled)
        });
        let to = dir.join(rel);
        let from = project.join(rel);
        let equal = match unchanged {
            Some(true) => true,
            _ => now_copy.size == now_source.size && same_contents(&from, &to, &mut buffers)?,
        };
        if !equal {
            use std::os::unix::fs::OpenOptionsExt;
            let opened = std::fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .custom_flags(nix::libc::O_NOFOLLOW)
                .open(&to);
            match opened {
                Ok(mut dest) => {
                    io::copy(&mut std::fs::File::open(&from)?, &mut dest)?;
                    dest.set_permissions(std::fs::Permissions::from_mode(found.source_mode))?;
                }
                // A read-only copy: made again instead.
                Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                    std::fs::remove_file(&to)?;
                    missing.push(rel.clone());
                }
                Err(e) => return Err(e),
            }
        } else if found.copy_mode != found.source_mode {
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(found.source_mode))?;
        } else if now_source.settled_before(began) {
            // Known equal now; a later change to either shows in its times
            // (unless the project's file had just changed: compared again).
            record[i] = Some((now_copy, now_source));
        }
    }
    copy_into(project, &missing, dir)?;
    Ok(record)
}

/// Whether two files hold the same bytes (`buffers`: room to read them,
/// made once for many calls).
fn same_contents(a: &Path, b: &Path, buffers: &mut (Vec<u8>, Vec<u8>)) -> io::Result<bool> {
    use std::io::Read;
    let (mut a, mut b) = (std::fs::File::open(a)?, std::fs::File::open(b)?);
    let (x, y) = buffers;
    x.resize(64 * 1024, 0);
    y.resize(64 * 1024, 0);
    loop {
        let n = a.read(x)?;
        if n == 0 {
            return Ok(b.read(&mut y[..1])? == 0);
        }
        let mut got = 0;
        while got < n {
            let m = b.read(&mut y[got..n])?;
            if m == 0 {
                return Ok(false);
            }
            got += m;
        }
        if x[..n] != y[..n] {
            return Ok(false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// A project of three files (one in a folder, one a symlink) and its
    /// list, as a run takes them.
    fn small_project() -> (tempfile::TempDir, Vec<PathBuf>) {
        let src = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(src.path().join("lib")).expect("mkdir");
        std::fs::write(src.path().join("lib/a.txt"), "alpha").expect("write");
        std::fs::write(src.path().join("run.sh"), "echo hi").expect("write");
        std::os::unix::fs::symlink("lib/a.txt", src.path().join("link")).expect("symlink");
        let files = project_files(src.path(), Path::new("/nonexistent")).expect("list");
        (src, files)
    }

    fn read(p: &Path) -> String {
        std::fs::read_to_string(p).expect("read")
    }

    /// A pool in a fresh state directory for `project`.
    fn pool(state: &Path, project: &Path, files: &[PathBuf]) -> Spares {
        Spares::open(state, project, files.len(), total_size(project, files), true)
    }

    #[test]
    fn a_spare_workspace_holds_exactly_the_project_again_whatever_the_job_did() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let (src, files) = small_project();
        let runs = tempfile::tempdir().expect("tempdir");
        let outside = runs.path().join("outside.txt");
        std::fs::write(&outside, "not the job's").expect("write");
        let spares = pool(&runs.path().join("state"), src.path(), &files);
        let ws = runs.path().join("a.1");
        copy_files(src.path(), &files, &ws).expect("copy");
        let inode = std::fs::metadata(ws.join("lib/a.txt")).expect("meta").ino();
        // What a job may do to its workspace.
        std::fs::write(ws.join("lib/a.txt"), "edited").expect("write");
        std::fs::set_permissions(ws.join("lib/a.txt"), std::fs::Permissions::from_mode(0o600)).expect("chmod");
        std::fs::remove_file(ws.join("run.sh")).expect("rm");
        std::os::unix::fs::symlink(&outside, ws.join("run.sh")).expect("symlink");
        std::fs::create_dir_all(ws.join("target/debug")).expect("mkdir");
        std::fs::write(ws.join("target/debug/out"), "built").expect("write");
        std::fs::write(ws.join("new.txt"), "new").expect("write");
        std::fs::remove_file(ws.join("link")).expect("rm");
        std::fs::create_dir(ws.join(".git")).expect("mkdir");
        spares.give(&files, &ws, &|rel| rel == Path::new(".git"));
        assert!(!ws.exists(), "kept in the pool");
        let next = runs.path().join("b.1");
        assert!(spares.take(src.path(), &files, &next, &|rel| rel == Path::new(".git")));
        assert_eq!(read(&next.join("lib/a.txt")), "alpha");
        let meta = std::fs::metadata(next.join("lib/a.txt")).expect("meta");
        assert_eq!(meta.ino(), inode, "rewritten in place, not made anew");
        let want = std::fs::metadata(src.path().join("lib/a.txt"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(meta.permissions().mode(), want);
        assert_eq!(read(&next.join("run.sh")), "echo hi");
        assert!(std::fs::symlink_metadata(next.join("run.sh")).expect("meta").is_file());
        assert_eq!(read(&outside), "not the job's", "never written through a symlink");
        assert_eq!(
            std::fs::read_link(next.join("link")).expect("link"),
            PathBuf::from("lib/a.txt")
        );
        assert!(next.join(".git").is_dir(), "kept: `extra` accepted it");
        let mut left: Vec<String> = std::fs::read_dir(&next)
            .expect("read")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, [".git", "lib", "link", "run.sh"]);
        assert!(!spares.take(src.path(), &files, &runs.path().join("c.1"), &|_| false));
    }

    #[test]
    fn a_change_made_right_after_the_take_is_seen_even_with_the_same_size_and_times() {
        let (src, files) = small_project();
        let runs = tempfile::tempdir().expect("tempdir");
        let spares = pool(&runs.path().join("state"), src.path(), &files);
        let ws = runs.path().join("a.1");
        copy_files(src.path(), &files, &ws).expect("copy");
        spares.give(&files, &ws, &|_| false);
        for round in 0..4 {
            let ws = runs.path().join(format!("j.{round}"));
            assert!(spares.take(src.path(), &files, &ws, &|_| false));
            assert_eq!(read(&ws.join("lib/a.txt")), "alpha", "round {round}");
            // Same size, at once: the times may not move.
            std::fs::write(ws.join("lib/a.txt"), "ALPHA").expect("write");
            spares.give(&files, &ws, &|_| false);
        }
        // Once its status is settled, a change still shows.
        let ws = runs.path().join("settled.1");
        assert!(spares.take(src.path(), &files, &ws, &|_| false));
        spares.give(&files, &ws, &|_| false);
        std::thread::sleep(TIME_GRAIN * 2);
        assert!(spares.take(src.path(), &files, &ws, &|_| false));
        std::fs::write(ws.join("lib/a.txt"), "ALPHA").expect("write");
        spares.give(&files, &ws, &|_| false);
        assert!(spares.take(src.path(), &files, &ws, &|_| false));
        assert_eq!(read(&ws.join("lib/a.txt")), "alpha");
        // A change in the project reaches the next job.
        spares.give(&files, &ws, &|_| false);
        std::fs::write(src.path().join("run.sh"), "echo HI").expect("write");
        assert!(spares.take(src.path(), &files, &ws, &|_| false));
        assert_eq!(read(&ws.join("run.sh")), "echo HI");
    }

    #[test]
    fn spares_outlive_the_run_and_a_project_edited_between_runs_is_seen() {
        let (src, files) = small_project();
        let runs = tempfile::tempdir().expect("tempdir");
        let state = runs.path().join("state");
        let ws = runs.path().join("a.1");
        copy_files(src.path(), &files, &ws).expect("copy");
        pool(&state, src.path(), &files).give(&files, &ws, &|_| false);
        std::fs::write(src.path().join("lib/a.txt"), "beta").expect("write");
        std::fs::remove_file(src.path().join("run.sh")).expect("rm");
        let later = pool(&state, src.path(), &files);
        // The next run's work folder is not there yet.
        let next = runs.path().join("run2/work/b.1");
        assert!(later.take(src.path(), &files, &next, &|_| false));
        assert_eq!(read(&next.join("lib/a.txt")), "beta");
        assert!(
            !next.join("run.sh").exists(),
            "gone from the project, gone from the job"
        );
        // Another project's pool is another folder.
        let other = tempfile::tempdir().expect("tempdir");
        assert!(!pool(&state, other.path(), &[]).take(other.path(), &[], &runs.path().join("c.1"), &|_| false));
    }

    #[test]
    fn runs_after_runs_keep_the_pool_at_its_size() {
        let (src, files) = small_project();
        let runs = tempfile::tempdir().expect("tempdir");
        let state = runs.path().join("state");
        // A project of which 3 copies fit.
        let spares = |_| Spares::open(&state, src.path(), files.len(), SPARE_BYTES / 3 - 4096 * 4, true);
        for run in 0..5 {
            let pool = spares(run);
            let mut taken = Vec::new();
            for job in 0..4 {
                let ws = runs.path().join(format!("r{run}/work/j{job}.1"));
                if !pool.take(src.path(), &files, &ws, &|_| false) {
                    copy_files(src.path(), &files, &ws).expect("copy");
                }
                assert_eq!(read(&ws.join("lib/a.txt")), "alpha");
                taken.push(ws);
            }
            for ws in &taken {
                std::fs::write(ws.join("output.bin"), "job output").expect("write");
                pool.give(&files, ws, &|_| false);
            }
            let kept = std::fs::read_dir(&pool.pool).expect("pool").count();
            assert_eq!(kept, 3, "run {run}");
            for spare in std::fs::read_dir(&pool.pool).expect("pool") {
                assert!(
                    !spare.expect("entry").path().join("output.bin").exists(),
                    "pruned when given back"
                );
            }
        }
    }

    #[test]
    fn a_copy_is_never_made_over_what_is_there() {
        let (src, files) = small_project();
        let runs = tempfile::tempdir().expect("tempdir");
        let ws = runs.path().join("a.1");
        std::fs::create_dir_all(ws.join("node_modules")).expect("mkdir");
        let err = copy_files(src.path(), &files, &ws).expect_err("refused");
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
    }

    #[test]
    fn without_containment_no_spare_is_kept() {
        let (src, files) = small_project();
        let runs = tempfile::tempdir().expect("tempdir");
        let spares = Spares::open(&runs.path().join("state"), src.path(), files.len(), 10, false);
        let ws = runs.path().join("a.1");
        copy_files(src.path(), &files, &ws).expect("copy");
        spares.give(&files, &ws, &|_| false);
        assert!(!ws.exists());
        assert!(!spares.take(src.path(), &files, &runs.path().join("b.1"), &|_| false));
    }

    #[test]
    fn an_emptied_folder_is_the_next_jobs_empty_private_one() {
        use std::os::unix::fs::PermissionsExt;
        let files = tempfile::tempdir().expect("tempdir");
        let outside = tempfile::tempdir().expect("tempdir");
        std::fs::write(outside.path().join("keep"), "k").expect("write");
        let folders = EmptyFolders::new(files.path().to_path_buf(), true);
        // What a job leaves: files, a folder it closed, a link out, and
        // its folder opened to everyone.
        let a = files.path().join("a.1");
        folders.take(&a).expect("made");
        std::fs::write(a.join("token"), "secret").expect("write");
        std::fs::create_dir_all(a.join("sub/deep")).expect("mkdir");
        std::fs::set_permissions(a.join("sub/deep"), std::fs::Permissions::from_mode(0o500)).expect("chmod");
        std::os::unix::fs::symlink(outside.path(), a.join("out")).expect("symlink");
        std::fs::set_permissions(&a, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        let inode = |p: &Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).expect("stat"));
        let was = inode(&a);
        folders.give(&a);
        assert!(!a.exists());
        let b = files.path().join("b.1");
        folders.take(&b).expect("taken");
        assert_eq!(inode(&b), was, "the same folder, renamed");
        assert_eq!(std::fs::read_dir(&b).expect("list").count(), 0);
        assert_eq!(std::fs::metadata(&b).expect("stat").permissions().mode() & 0o777, 0o700);
        assert_eq!(read(&outside.path().join("keep")), "k", "a link is not followed");
        // A folder a job replaced with a link is removed, not followed.
        std::fs::remove_dir(&b).expect("rmdir");
        std::os::unix::fs::symlink(outside.path(), &b).expect("symlink");
        folders.give(&b);
        assert!(std::fs::symlink_metadata(&b).is_err());
        assert_eq!(read(&outside.path().join("keep")), "k");
        // As many are kept as jobs end together, up to a bound.
        let many = tempfile::tempdir().expect("tempdir");
        let folders = EmptyFolders::new(many.path().to_path_buf(), true);
        for n in 0..=MAX_EMPTY_FOLDERS {
            let dir = many.path().join(format!("j{n}.1"));
            folders.take(&dir).expect("made");
            std::fs::write(dir.join("f"), "x").expect("write");
        }
        for n in 0..=MAX_EMPTY_FOLDERS {
            folders.give(&many.path().join(format!("j{n}.1")));
        }
        assert_eq!(std::fs::read_dir(many.path()).expect("list").count(), MAX_EMPTY_FOLDERS);
        // Without containment nothing is kept: an ended job's folder goes.
        let folders = EmptyFolders::new(files.path().to_path_buf(), false);
        let c = files.path().join("c.1");
        folders.take(&c).expect("made");
        std::fs::write(c.join("token"), "secret").expect("write");
        folders.give(&c);
        assert!(!c.exists());
        let d = files.path().join("d.1");
        folders.take(&d).expect("made");
        assert_eq!(std::fs::metadata(&d).expect("stat").permissions().mode() & 0o777, 0o700);
        assert_eq!(
            std::fs::read_dir(files.path()).expect("list").count(),
            1,
            "only d.1: nothing kept"
        );
    }

    #[test]
    fn a_full_pool_removes_what_it_is_given() {
        let (src, files) = small_project();
        let runs = tempfile::tempdir().expect("tempdir");
        // A project too large for one spare.
        let spares = Spares::open(&runs.path().join("state"), src.path(), files.len(), SPARE_BYTES, true);
        let ws = runs.path().join("a.1");
        copy_files(src.path(), &files, &ws).expect("copy");
        spares.give(&files, &ws, &|_| false);
        assert!(!ws.exists(), "removed");
        assert!(!spares.take(src.path(), &files, &runs.path().join("b.1"), &|_| false));
    }

    #[test]
    fn plain_directories_are_copied_whole() {
        let src = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(src.path().join("a/b")).expect("mkdir");
        std::fs::write(src.path().join("a/b/f.txt"), "x").expect("write");
        std::fs::write(src.path().join("top"), "y").expect("write");
        let files = project_files(src.path(), Path::new("/nonexistent")).expect("list");
        assert_eq!(files, [PathBuf::from("a/b/f.txt"), PathBuf::from("top")]);
        let dst = tempfile::tempdir().expect("tempdir");
        copy_files(src.path(), &files, &dst.path().join("w")).expect("copy");
        assert_eq!(
            std::fs::read_to_string(dst.path().join("w/a/b/f.txt")).expect("read"),
            "x"
        );
    }

    #[test]
    fn nested_folders_are_made_whatever_order_their_files_come_in() {
        let src = tempfile::tempdir().expect("tempdir");
        let files = ["a/b/sub/y", "a/b/x", "a/c/z", "top", "a/b/w"];
        for f in files {
            let p = src.path().join(f);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(&p, f).expect("write");
        }
        let dst = tempfile::tempdir().expect("tempdir");
        let list: Vec<PathBuf> = files.iter().map(PathBuf::from).collect();
        copy_files(src.path(), &list, &dst.path().join("w")).expect("copy");
        for f in files {
            assert_eq!(std::fs::read_to_string(dst.path().join("w").join(f)).expect("read"), f);
        }
    }

    #[test]
    fn git_projects_leave_ignored_files_out() {
        let src = tempfile::tempdir().expect("tempdir");
        let git = |args: &[&str]| {
            Command::new("git")
                .arg("-C")
                .arg(src.path())
                .args(args)
                .output()
                .map(|o| o.status.success())
        };
        if git(&["init", "-q"]).ok() != Some(true) {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must have git (.ci/run installs it)"
            );
            eprintln!("SKIPPED git_projects_leave_ignored_files_out: git is not installed");
            return;
        }
        std::fs::write(src.path().join(".gitignore"), "target/\n").expect("write");
        std::fs::create_dir_all(src.path().join("target")).expect("mkdir");
        std::fs::write(src.path().join("target/big"), "x").expect("write");
        std::fs::write(src.path().join("new.txt"), "x").expect("write");
        let files = project_files(src.path(), Path::new("/nonexistent")).expect("list");
        assert_eq!(files, [PathBuf::from(".gitignore"), PathBuf::from("new.txt")]);
        // A state directory inside the project, untracked and not ignored.
        std::fs::create_dir_all(src.path().join("state/runs/r1")).expect("mkdir");
        std::fs::write(src.path().join("state/runs/r1/log"), "x").expect("write");
        let files = project_files(src.path(), &src.path().join("state")).expect("list");
        assert_eq!(files, [PathBuf::from(".gitignore"), PathBuf::from("new.txt")]);
    }

    #[test]
    fn a_state_directory_inside_the_project_is_left_out() {
        let src = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(src.path().join("state/runs/r1/work")).expect("mkdir");
        std::fs::write(src.path().join("state/runs/r1/work/big"), "x").expect("write");
        std::fs::create_dir_all(src.path().join("stateful")).expect("mkdir");
        std::fs::write(src.path().join("stateful/keep"), "y").expect("write");
        std::fs::write(src.path().join("pipeline.yml"), "z").expect("write");
        // Named through `..` and a trailing component: resolved all the same.
        let state = src.path().join("stateful/../state");
        let files = project_files(src.path(), &state).expect("list");
        assert_eq!(files, [PathBuf::from("pipeline.yml"), PathBuf::from("stateful/keep")]);
        // The project inside the state directory still copies whole.
        let files = project_files(&src.path().join("stateful"), src.path()).expect("list");
        assert_eq!(files, [PathBuf::from("keep")]);
    }
}
