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

use super::objects::{Digest, ObjectError, ObjectStore};
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
    use std::os::unix::fs::PermissionsExt as _;
    let inc = glob_set(include)?;
    let exc = glob_set(exclude)?;
    let canon_root = std::fs::canonicalize(root).map_err(io_err("cannot open", root))?;
    let mut entries = Vec::new();
    let mut batch = store.batch();
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
            let name = rel_child.to_string_lossy().replace('\\', "/");
            if exc.is_match(&rel_child) {
                continue;
            }
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
                let (object, size) = batch.put_file(&child.path()).map_err(|source| ArtifactError::Object {
                    path: name.clone(),
                    source,
                })?;
                entries.push(Entry {
                    path: name,
                    mode: meta.permissions().mode() & 0o7777,
                    kind: EntryKind::File { object, size },
                });
            }
        }
    }
    batch.commit().map_err(|source| ArtifactError::Object {
        path: root.display().to_string(),
        source,
    })?;
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(Manifest { entries })
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
