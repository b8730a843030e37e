//! Cache keys: what a job's result depends on, named part by part.
//!
//! A key is the SHA-256 of a canonical encoding of named components (the
//! job's definition field by field, each step's fields, image IDs, the
//! resolved environment without secrets, every input file's hash, the
//! manifests of the artifacts the job receives, and the cache format). The
//! components are kept next to the key, so a miss can be explained by
//! diffing them against the last entry of the same job (`trackside cache why`).
//!
//! Anything that could change the result is a component; when in doubt a
//! field is included, because a needless miss costs a run and a false hit
//! costs trust.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::manifest::{ArtifactError, glob_set};
use super::objects::Digest;

/// Changes whenever the key's encoding or the meaning of a component changes,
/// so old entries can never match new keys.
pub const FORMAT: &str = "1";

/// Named components of a key, sorted by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Components(pub BTreeMap<String, String>);

impl Components {
    pub fn new() -> Self {
        let mut c = Components::default();
        c.insert("format", FORMAT);
        c
    }

    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.0.insert(name.into(), value.into());
    }

    /// The key: SHA-256 over each name and value, length-prefixed so no two
    /// different component sets encode to the same bytes.
    pub fn key(&self) -> String {
        let mut h = Sha256::new();
        for (k, v) in &self.0 {
            h.update((k.len() as u64).to_le_bytes());
            h.update(k.as_bytes());
            h.update((v.len() as u64).to_le_bytes());
            h.update(v.as_bytes());
        }
        Digest(h.finalize().into()).to_string()
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(&self.0).unwrap_or_else(|_| "{}".into())
    }

    pub fn from_json(text: &str) -> Option<Self> {
        serde_json::from_str(text).ok().map(Components)
    }
}

/// One difference between two component sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Added { name: String, value: String },
    Removed { name: String, value: String },
    Changed { name: String, old: String, new: String },
}

/// What changed from `old` to `new`, by component name.
pub fn diff(old: &Components, new: &Components) -> Vec<Change> {
    let mut out = Vec::new();
    for (name, value) in &old.0 {
        match new.0.get(name) {
            None => out.push(Change::Removed {
                name: name.clone(),
                value: value.clone(),
            }),
            Some(v) if v != value => out.push(Change::Changed {
                name: name.clone(),
                old: value.clone(),
                new: v.clone(),
            }),
            Some(_) => {}
        }
    }
    for (name, value) in &new.0 {
        if !old.0.contains_key(name) {
            out.push(Change::Added {
                name: name.clone(),
                value: value.clone(),
            });
        }
    }
    out.sort_by(|a, b| change_name(a).cmp(change_name(b)));
    out
}

fn change_name(c: &Change) -> &str {
    match c {
        Change::Added { name, .. } | Change::Removed { name, .. } | Change::Changed { name, .. } => name,
    }
}

/// A value shortened for one line of `cache why`.
pub fn short(value: &str) -> String {
    let one_line = value.replace('\n', "\\n");
    if one_line.chars().count() <= 60 {
        one_line
    } else {
        let head: String = one_line.chars().take(57).collect();
        format!("{head}...")
    }
}

/// The files among `files` (relative to `root`) that match `patterns`, in
/// sorted order, with the SHA-256 of their content. A directory pattern
/// matches everything below it.
pub fn hash_inputs(
    root: &Path,
    files: &[PathBuf],
    patterns: &[String],
) -> Result<Vec<(String, Digest)>, ArtifactError> {
    let matched = matching(files, patterns)?;
    let mut out = Vec::with_capacity(matched.len());
    let mut buf = vec![0u8; 64 * 1024];
    for rel in matched {
        let path = root.join(&rel);
        let digest = hash_file(&path, &mut buf).map_err(super::io_err("cannot read cache input", &path))?;
        out.push((rel, digest));
    }
    Ok(out)
}

/// GitHub's `hashFiles(patterns)` over `files` (relative to `root`): the
/// SHA-256 of each matching file's SHA-256, in path order, as hex; empty
/// when nothing matches. A pattern starting with `!` takes matches back.
pub fn hash_files(root: &Path, files: &[PathBuf], patterns: &[String]) -> Result<String, ArtifactError> {
    let (excludes, includes): (Vec<String>, Vec<String>) = patterns
        .iter()
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .partition(|p| p.starts_with('!'));
    let excludes: Vec<String> = excludes.iter().map(|p| p[1..].to_string()).collect();
    let files: Vec<PathBuf> = if excludes.is_empty() {
        files.to_vec()
    } else {
        let taken_back = matching(files, &excludes)?;
        files
            .iter()
            .filter(|f| {
                f.to_str()
                    .is_none_or(|f| taken_back.binary_search_by(|t| t.as_str().cmp(f)).is_err())
            })
            .cloned()
            .collect()
    };
    let hashed = hash_inputs(root, &files, &includes)?;
    if hashed.is_empty() {
        return Ok(String::new());
    }
    let mut outer = Sha256::new();
    for (_, d) in &hashed {
        outer.update(d.0);
    }
    Ok(Digest(outer.finalize().into()).to_string())
}

/// The names among `files` that `patterns` match, sorted. A directory
/// pattern matches everything below it.
fn matching(files: &[PathBuf], patterns: &[String]) -> Result<Vec<String>, ArtifactError> {
    let set = glob_set(patterns)?;
    let dirs: Vec<String> = patterns
        .iter()
        .map(|p| p.trim_start_matches("./").trim_end_matches('/').to_string())
        .filter(|p| !p.is_empty())
        .collect();
    let mut matched: Vec<String> = files
        .iter()
        .filter_map(|f| f.to_str())
        .filter(|f| {
            set.is_match(f)
                || dirs
                    .iter()
                    .any(|d| f.strip_prefix(d.as_str()).is_some_and(|r| r.starts_with('/')))
        })
        .map(str::to_string)
        .collect();
    matched.sort();
    matched.dedup();
    Ok(matched)
}

fn hash_file(path: &Path, buf: &mut [u8]) -> std::io::Result<Digest> {
    use std::io::Read as _;
    let meta = std::fs::symlink_metadata(path)?;
    let mut h = Sha256::new();
    if meta.file_type().is_symlink() {
        // A link is its target: hash that, so retargeting it changes the key.
        h.update(b"symlink:");
        h.update(std::fs::read_link(path)?.as_os_str().as_encoded_bytes());
        return Ok(Digest(h.finalize().into()));
    }
    let mut f = std::fs::File::open(path)?;
    loop {
        match f.read(buf) {
            Ok(0) => break,
            Ok(n) => h.update(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Digest(h.finalize().into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn comps(pairs: &[(&str, &str)]) -> Components {
        let mut c = Components::new();
        for (k, v) in pairs {
            c.insert(*k, *v);
        }
        c
    }

    #[test]
    fn the_encoding_is_unambiguous() {
        // Moving bytes between a name and its value must change the key.
        assert_ne!(comps(&[("ab", "c")]).key(), comps(&[("a", "bc")]).key());
        assert_ne!(comps(&[("a", "")]).key(), comps(&[]).key());
        assert_eq!(
            comps(&[("a", "1"), ("b", "2")]).key(),
            comps(&[("b", "2"), ("a", "1")]).key()
        );
    }

    #[test]
    fn diff_names_every_change() {
        let old = comps(&[("env.A", "1"), ("input:x", "h1"), ("input:gone", "h")]);
        let new = comps(&[("env.A", "2"), ("input:x", "h1"), ("input:new", "h")]);
        let d = diff(&old, &new);
        assert_eq!(
            d,
            vec![
                Change::Changed {
                    name: "env.A".into(),
                    old: "1".into(),
                    new: "2".into()
                },
                Change::Removed {
                    name: "input:gone".into(),
                    value: "h".into()
                },
                Change::Added {
                    name: "input:new".into(),
                    value: "h".into()
                },
            ]
        );
        assert!(diff(&old, &old).is_empty());
    }

    #[test]
    fn inputs_are_sorted_hashed_and_directory_patterns_take_subtrees() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("src/deep")).expect("mkdir");
        std::fs::write(dir.path().join("src/b.rs"), "b").expect("write");
        std::fs::write(dir.path().join("src/deep/a.rs"), "a").expect("write");
        std::fs::write(dir.path().join("README"), "r").expect("write");
        let files: Vec<PathBuf> = ["src/deep/a.rs", "src/b.rs", "README"]
            .iter()
            .map(PathBuf::from)
            .collect();
        let got = hash_inputs(dir.path(), &files, &["src/".into()]).expect("hash");
        let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["src/b.rs", "src/deep/a.rs"]);
        assert_eq!(got[0].1, Digest::of(b"b"));
        let globbed = hash_inputs(dir.path(), &files, &["**/*.rs".into()]).expect("hash");
        assert_eq!(globbed, got);
    }
}
