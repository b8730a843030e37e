//! Artifact sets: which files, with which modes and contents.
//!
//! A manifest lists each path (relative, `/`-separated), its mode, size and
//! object digest, or a symlink's target; manifests are objects themselves.
//! Collecting and restoring are where a hostile pipeline could reach outside
//! a workspace, so both check every path: patterns must be relative without
//! `..`, symlinks must point inside the workspace, and a restored file can
//! only land inside its target directory, whatever the manifest says.

use std::path::{Component, Path, PathBuf};

use globset::{Glob, GlobSet, GlobSetBuilder};
use serde::{Deserialize, Serialize};

use super::objects::{Digest, ObjectError, ObjectStore, WriteLimits};
use super::{IoFailure, io_err};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EntryKind {
    File { object: Digest, size: u64 },
    Symlink { target: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub path: String,
    pub mode: u32,
    #[serde(flatten)]
    pub kind: EntryKind,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Sorted by path.
    pub entries: Vec<Entry>,
}

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("artifact pattern `{0}` leaves the workspace: use a relative path without `..`")]
    PatternEscapes(String),
    #[error("bad artifact pattern `{pattern}`: {message}")]
    BadPattern { pattern: String, message: String },
    #[error("`{path}` is a symlink to `{target}`, which is outside the workspace; artifacts must stay inside it")]
    SymlinkEscapes { path: String, target: String },
    #[error("artifact path `{0}` would land outside the target directory; refusing to restore it")]
    UnsafePath(String),
    #[error(transparent)]
    Io(#[from] IoFailure),
    #[error("artifact file `{path}`: {source}")]
    Object { path: String, source: ObjectError },
    #[error("manifest {0} is not a valid manifest")]
    BadManifest(Digest),
    #[error(
        "artifact file `{path}` is {} ({size} bytes); {what} allows {} in all and {} remain{hint}",
        human(*size),
        human(*limit),
        human(*remaining)
    )]
    TooLarge {
        path: String,
        size: u64,
        limit: u64,
        remaining: u64,
        what: &'static str,
        hint: &'static str,
    },
    #[error("artifact name `{0}` is not valid UTF-8; rename the file (artifact names are kept as text)")]
    BadName(String),
}

impl ArtifactError {
    /// The store ran out of room (or kept its margin): not the job's fault.
    pub fn is_disk_full(&self) -> bool {
        // The margin kept, or the file system full before the margin was
        // seen (another writer filled it between two checks).
        let no_space = |e: &std::io::Error| e.raw_os_error() == Some(libc::ENOSPC);
        match self {
            ArtifactError::Object {
                source: ObjectError::DiskFull { .. },
                ..
            } => true,
            ArtifactError::Object {
                source: ObjectError::Io(f),
                ..
            }
            | ArtifactError::Io(f) => no_space(&f.source),
            _ => false,
        }
    }
    pub fn is_cancelled(&self) -> bool {
        matches!(
            self,
            ArtifactError::Object {
                source: ObjectError::Cancelled,
                ..
            }
        )
    }
}

/// `1.5 GiB`, `300 MiB`, `12 KiB`, `80 B`.
pub fn human(bytes: u64) -> String {
    const UNITS: [(&str, u64); 4] = [("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (unit, size) in UNITS {
        if bytes >= size {
            return format!("{:.1} {unit}", bytes as f64 / size as f64);
        }
    }
    format!("{bytes} B")
}

/// What one collection may take.
#[derive(Debug, Clone)]
pub struct CollectLimits {
    /// Bytes of file content (apparent sizes) the set may hold.
    pub max_bytes: u64,
    /// The configured limit that budget is left of (shown in the message).
    pub limit: u64,
    /// Which limit `max_bytes` comes from, for the message.
    pub what: &'static str,
    pub write: WriteLimits,
}

impl Default for CollectLimits {
    fn default() -> Self {
        CollectLimits {
            max_bytes: u64::MAX,
            limit: u64::MAX,
            what: "the store",
            write: WriteLimits::default(),
        }
    }
}

/// A collected set and what was left out of it.
#[derive(Debug, Clone, Default)]
pub struct Collected {
    pub manifest: Manifest,
    /// Paths that matched but are not files, directories or symlinks
    /// (FIFOs, sockets, devices), with what they are.
    pub skipped: Vec<String>,
    /// Bytes of file content in the set.
    pub bytes: u64,
}

/// A relative path made only of normal components, or `None`.
fn safe_relative(path: &str) -> Option<PathBuf> {
    let p = Path::new(path);
    if path.is_empty() || p.is_absolute() {
        return None;
    }
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            _ => return None,
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

pub(crate) fn glob_set(patterns: &[String]) -> Result<GlobSet, ArtifactError> {
    let mut b = GlobSetBuilder::new();
    for p in patterns {
        if Path::new(p).is_absolute() || Path::new(p).components().any(|c| matches!(c, Component::ParentDir)) {
            return Err(ArtifactError::PatternEscapes(p.clone()));
        }
        let g = Glob::new(p.trim_start_matches("./")).map_err(|e| ArtifactError::BadPattern {
            pattern: p.clone(),
            message: e.to_string(),
        })?;
        b.add(g);
    }
    b.build().map_err(|e| ArtifactError::BadPattern {
        pattern: patterns.join(", "),
        message: e.to_string(),
    })
}

/// Stores the files under `root` matching `include` and not `exclude`.
/// A directory pattern (`dist/` or a match on a directory) takes everything below it.
pub fn collect(
    store: &ObjectStore,
    root: &Path,
    include: &[String],
    exclude: &[String],
) -> Result<Manifest, ArtifactError> {
    collect_within(store, root, include, exclude, &CollectLimits::default()).map(|c| c.manifest)
}

/// [`collect`] within `limits`: a file whose apparent size exceeds what is
/// left of the budget is refused before a byte of it is read.
pub fn collect_within(
    store: &ObjectStore,
    root: &Path,
    include: &[String],
    exclude: &[String],
    limits: &CollectLimits,
) -> Result<Collected, ArtifactError> {
    use std::os::unix::ffi::OsStrExt as _;
    use std::os::unix::fs::FileTypeExt as _;
    use std::os::unix::fs::PermissionsExt as _;
    let inc = glob_set(include)?;
    let exc = glob_set(exclude)?;
    let canon_root = std::fs::canonicalize(root).map_err(io_err("cannot open", root))?;
    let mut entries = Vec::new();
    let mut skipped = Vec::new();
    let mut bytes = 0u64;
    let mut batch = store.batch_with(limits.write.clone());
    // (relative path, included because an ancestor directory matched)
    let mut stack: Vec<(PathBuf, bool)> = vec![(PathBuf::new(), false)];
    while let Some((rel, inherited)) = stack.pop() {
        let dir = root.join(&rel);
        let mut children: Vec<_> = std::fs::read_dir(&dir)
            .map_err(io_err("cannot read", &dir))?
            .collect::<Result<_, _>>()
            .map_err(io_err("cannot read", &dir))?;
        children.sort_by_key(|e| e.file_name());
        for child in children {
            let rel_child = rel.join(child.file_name());
            if exc.is_match(&rel_child) {
                continue;
            }
            // Names are kept byte for byte: `\\` is an ordinary character
            // here, and a name that is not UTF-8 is refused, not mangled.
            let Some(name) = rel_child.to_str().map(str::to_string) else {
                let matched = inherited || inc.is_match(&rel_child);
                if matched {
                    return Err(ArtifactError::BadName(
                        String::from_utf8_lossy(rel_child.as_os_str().as_bytes()).into_owned(),
                    ));
                }
                continue;
            };
            let matched = inherited || inc.is_match(&rel_child) || inc.is_match(format!("{name}/"));
            let meta = std::fs::symlink_metadata(child.path()).map_err(io_err("cannot read", &child.path()))?;
            if meta.file_type().is_symlink() {
                if !matched {
                    continue;
                }
                let target = std::fs::read_link(child.path()).map_err(io_err("cannot read", &child.path()))?;
                // Relative targets only (an absolute one breaks wherever the set is
                // restored), and they must resolve inside the workspace.
                let link_dir = canon_root.join(&rel);
                let inside = !target.is_absolute()
                    && normalize(&link_dir.join(&target)).is_some_and(|a| a.starts_with(&canon_root));
                if !inside {
                    return Err(ArtifactError::SymlinkEscapes {
                        path: name,
                        target: target.display().to_string(),
                    });
                }
                entries.push(Entry {
                    path: name,
                    mode: 0o777,
                    kind: EntryKind::Symlink {
                        target: target.to_string_lossy().into_owned(),
                    },
                });
            } else if meta.is_dir() {
                stack.push((rel_child, matched));
            } else if meta.is_file() && matched {
                let remaining = limits.max_bytes.saturating_sub(bytes);
                if meta.len() > remaining {
                    return Err(ArtifactError::TooLarge {
                        path: name,
                        size: meta.len(),
                        limit: limits.limit,
                        remaining,
                        what: limits.what,
                        hint: "; leave it out (exclude:) or raise the limit in config.yml (artifacts:)",
                    });
                }
                let (object, size) = batch.put_file(&child.path()).map_err(|source| ArtifactError::Object {
                    path: name.clone(),
                    source,
                })?;
                bytes = bytes.saturating_add(size);
                // It grew while it was read: the budget still holds.
                if bytes > limits.max_bytes {
                    return Err(ArtifactError::TooLarge {
                        path: name,
                        size,
                        limit: limits.limit,
                        remaining,
                        what: limits.what,
                        hint: " (it grew while it was stored)",
                    });
                }
                entries.push(Entry {
                    path: name,
                    mode: meta.permissions().mode() & 0o7777,
                    kind: EntryKind::File { object, size },
                });
            } else if matched && !meta.is_file() {
                let ft = meta.file_type();
                let what = if ft.is_fifo() {
                    "a FIFO"
                } else if ft.is_socket() {
                    "a socket"
                } else if ft.is_block_device() || ft.is_char_device() {
                    "a device"
                } else {
                    "not a regular file"
                };
                skipped.push(format!("{name} ({what})"));
            }
        }
    }
    batch.commit().map_err(|source| ArtifactError::Object {
        path: root.display().to_string(),
        source,
    })?;
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(Collected {
        manifest: Manifest { entries },
        skipped,
        bytes,
    })
}

/// Resolves `.` and `..` lexically; `None` if `..` climbs above the root.
fn normalize(p: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    Some(out)
}

/// Stores the manifest itself (canonical JSON); its digest names the set.
pub fn save(store: &ObjectStore, m: &Manifest) -> Result<Digest, ArtifactError> {
    let json =
        serde_json::to_vec(m).map_err(|e| io_err("cannot encode", Path::new("manifest"))(std::io::Error::other(e)))?;
    store.put_bytes(&json).map_err(|source| ArtifactError::Object {
        path: "manifest".into(),
        source,
    })
}

pub fn load(store: &ObjectStore, d: &Digest) -> Result<Manifest, ArtifactError> {
    let bytes = store.get_bytes(d).map_err(|source| ArtifactError::Object {
        path: "manifest".into(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|_| ArtifactError::BadManifest(*d))
}

/// Restores every entry under `dest`, verifying each object. Paths that are
/// absolute, contain `..`, or would pass through a symlink are refused.
pub fn restore(store: &ObjectStore, m: &Manifest, dest: &Path) -> Result<(), ArtifactError> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(dest).map_err(io_err("cannot create", dest))?;
    let canon_dest = std::fs::canonicalize(dest).map_err(io_err("cannot open", dest))?;
    for e in &m.entries {
        let rel = safe_relative(&e.path).ok_or_else(|| ArtifactError::UnsafePath(e.path.clone()))?;
        let target = canon_dest.join(&rel);
        let parent = target.parent().unwrap_or(&canon_dest).to_path_buf();
        std::fs::create_dir_all(&parent).map_err(io_err("cannot create", &parent))?;
        // A symlink among the parents (planted by an earlier entry) could point anywhere.
        let canon_parent = std::fs::canonicalize(&parent).map_err(io_err("cannot open", &parent))?;
        if !canon_parent.starts_with(&canon_dest) {
            return Err(ArtifactError::UnsafePath(e.path.clone()));
        }
        if std::fs::symlink_metadata(&target).is_ok_and(|m| m.file_type().is_symlink()) {
            std::fs::remove_file(&target).map_err(io_err("cannot replace", &target))?;
        }
        match &e.kind {
            EntryKind::File { object, .. } => {
                store.restore(object, &target).map_err(|source| ArtifactError::Object {
                    path: e.path.clone(),
                    source,
                })?;
                std::fs::set_permissions(&target, std::fs::Permissions::from_mode(e.mode & 0o7777))
                    .map_err(io_err("cannot set the mode of", &target))?;
            }
            EntryKind::Symlink { target: link } => {
                let resolved = normalize(&parent.join(link));
                if Path::new(link).is_absolute() || !resolved.is_some_and(|r| r.starts_with(&canon_dest)) {
                    return Err(ArtifactError::SymlinkEscapes {
                        path: e.path.clone(),
                        target: link.clone(),
                    });
                }
                std::os::unix::fs::symlink(link, &target).map_err(io_err("cannot create", &target))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, ObjectStore, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ObjectStore::open(&dir.path().join("objects")).expect("store");
        let ws = dir.path().join("ws");
        std::fs::create_dir_all(ws.join("dist/sub")).expect("mkdir");
        std::fs::write(ws.join("dist/app.bin"), b"binary").expect("write");
        std::fs::write(ws.join("dist/sub/notes.txt"), b"notes").expect("write");
        std::fs::write(ws.join("dist/debug.log"), b"noise").expect("write");
        std::fs::write(ws.join("README"), b"readme").expect("write");
        (dir, store, ws)
    }

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn collect_and_restore_round_trip_with_modes() {
        use std::os::unix::fs::PermissionsExt as _;
        let (dir, store, ws) = setup();
        std::fs::set_permissions(ws.join("dist/app.bin"), std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::os::unix::fs::symlink("app.bin", ws.join("dist/current")).expect("symlink");
        let m = collect(&store, &ws, &s(&["dist/"]), &s(&["**/*.log"])).expect("collect");
        let paths: Vec<&str> = m.entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["dist/app.bin", "dist/current", "dist/sub/notes.txt"]);
        let d = save(&store, &m).expect("save");
        let back = load(&store, &d).expect("load");
        assert_eq!(back, m);
        let out = dir.path().join("out");
        restore(&store, &back, &out).expect("restore");
        assert_eq!(std::fs::read(out.join("dist/sub/notes.txt")).expect("read"), b"notes");
        assert_eq!(
            std::fs::read(out.join("dist/current")).expect("through the link"),
            b"binary"
        );
        let mode = std::fs::metadata(out.join("dist/app.bin"))
            .expect("meta")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o755);
    }

    #[test]
    fn patterns_that_leave_the_workspace_are_refused() {
        let (_dir, store, ws) = setup();
        for bad in ["../outside", "/etc/passwd", "dist/../../x"] {
            assert!(
                matches!(
                    collect(&store, &ws, &s(&[bad]), &[]),
                    Err(ArtifactError::PatternEscapes(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn symlinks_pointing_outside_are_refused() {
        let (_dir, store, ws) = setup();
        std::os::unix::fs::symlink("/etc/passwd", ws.join("dist/passwd")).expect("symlink");
        assert!(matches!(
            collect(&store, &ws, &s(&["dist/**"]), &[]),
            Err(ArtifactError::SymlinkEscapes { .. })
        ));
        std::fs::remove_file(ws.join("dist/passwd")).expect("rm");
        std::os::unix::fs::symlink("../../..", ws.join("dist/up")).expect("symlink");
        assert!(matches!(
            collect(&store, &ws, &s(&["dist/**"]), &[]),
            Err(ArtifactError::SymlinkEscapes { .. })
        ));
    }

    #[test]
    fn hostile_manifests_cannot_write_outside_the_target() {
        let (dir, store, _ws) = setup();
        let object = store.put_bytes(b"pwned").expect("put");
        let file = |path: &str| Entry {
            path: path.into(),
            mode: 0o644,
            kind: EntryKind::File { object, size: 5 },
        };
        let out = dir.path().join("out");
        for bad in ["../../etc/passwd", "/tmp/abs", "a/../../escape", "..", ""] {
            let m = Manifest {
                entries: vec![file(bad)],
            };
            assert!(
                matches!(restore(&store, &m, &out), Err(ArtifactError::UnsafePath(_))),
                "{bad}"
            );
        }
        // A symlink entry leading out, then a file written "through" it.
        let m = Manifest {
            entries: vec![
                Entry {
                    path: "link".into(),
                    mode: 0o777,
                    kind: EntryKind::Symlink { target: "../..".into() },
                },
                file("link/escaped"),
            ],
        };
        assert!(restore(&store, &m, &out).is_err());
        assert!(!dir.path().join("escaped").exists());
    }

    #[test]
    fn a_corrupted_object_fails_the_restore_by_name() {
        let (dir, store, ws) = setup();
        let m = collect(&store, &ws, &s(&["README"]), &[]).expect("collect");
        let EntryKind::File { object, .. } = &m.entries[0].kind else {
            panic!("file")
        };
        std::fs::write(store.path(object), b"tampered").expect("tamper");
        let err = restore(&store, &m, &dir.path().join("out")).expect_err("corrupt");
        assert!(
            err.to_string().contains("README") && err.to_string().contains("corrupted"),
            "{err}"
        );
    }
}
