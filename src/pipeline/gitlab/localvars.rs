//! The variable files gitlab-ci-local users keep, read the same way so
//! they move over unchanged: `.gitlab-ci-local-variables.yml` in the
//! project, and `~/.gitlab-ci-local/variables.yml` with its `global`,
//! `group` and `project` sections. They stand for the project's CI/CD
//! variables in GitLab's settings, so they rank as GitLab ranks those:
//! above the file's `variables`, below `--var`.
//!
//! Precedence, highest first: `--var`; the project's file; the home file's
//! `project` entry for this remote, then its `group` entries, then
//! `global`. A value is a string, or `{values: {'*': ...}, type: ...}` (the
//! `*` scope is used; other environment scopes are reported and left out).
//!
//! File variables are read as gitlab-ci-local reads them: `type: file`
//! makes the value a file's content, and so does a plain value that names
//! a file of this machine (`/...` or `~/...`), whose content it then is.
//! A job gets a file holding the content and the variable holds its path,
//! as GitLab does with a file variable.

use std::path::{Path, PathBuf};

/// Largest variables file read.
const MAX_BYTES: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum LocalVarsError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is larger than 1 MiB")]
    TooBig { path: PathBuf },
    #[error("{path}: {source}")]
    Yaml {
        path: PathBuf,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("{path}: `{key}`: {what}")]
    Shape { path: PathBuf, key: String, what: String },
}

/// The variables, lowest precedence first (a later one wins), and notes
/// on what was left out.
#[derive(Debug, Default)]
pub struct LocalVars {
    pub vars: Vec<(String, String)>,
    /// Which of `vars` are file variables (by their winning definition).
    pub files: Vec<String>,
    pub notes: Vec<String>,
}

impl LocalVars {
    fn push(&mut self, name: &str, value: String, file: bool) {
        self.files.retain(|n| n != name);
        if file {
            self.files.push(name.to_string());
        }
        self.vars.push((name.to_string(), value));
    }
}

/// Reads the home file (when `home` is given) and the project's file.
/// `remote` is `host/group/project` of the origin remote, for the home
/// file's `project` and `group` sections.
pub fn read(project: &Path, home: Option<&Path>, remote: Option<&str>) -> Result<LocalVars, LocalVarsError> {
    let mut out = LocalVars::default();
    if let Some(home) = home {
        let path = home.join(".gitlab-ci-local").join("variables.yml");
        if let Some(doc) = load(&path)? {
            if let Some(g) = doc.get("global") {
                take(&path, "global", g, Some(home), &mut out)?;
            }
            if let (Some(groups), Some(remote)) = (doc.get("group").and_then(|g| g.as_mapping()), remote) {
                for (k, v) in groups {
                    // A group is a whole path prefix: `gitlab.com/acme/`
                    // is not `gitlab.com/acme-x/`.
                    let Some(key) = k.as_str() else { continue };
                    let group = key.trim_end_matches('/');
                    if !group.is_empty() && remote.starts_with(&format!("{group}/")) {
                        take(&path, key, v, Some(home), &mut out)?;
                    }
                }
            }
            if let (Some(projects), Some(remote)) = (doc.get("project").and_then(|p| p.as_mapping()), remote) {
                for (k, v) in projects {
                    let Some(key) = k.as_str() else { continue };
                    if key.trim_end_matches(".git") == remote {
                        take(&path, key, v, Some(home), &mut out)?;
                    }
                }
            }
        }
    }
    let path = project.join(".gitlab-ci-local-variables.yml");
    if let Some(doc) = load(&path)? {
        take(&path, "", &doc, home, &mut out)?;
    }
    Ok(out)
}

fn load(path: &Path) -> Result<Option<serde_yaml::Value>, LocalVarsError> {
    match read_bounded(path)? {
        None => Ok(None),
        Some(text) if text.trim().is_empty() => Ok(None),
        Some(text) => serde_yaml::from_str(&text)
            .map(Some)
            .map_err(|source| LocalVarsError::Yaml {
                path: path.to_path_buf(),
                source,
            }),
    }
}

/// The text of `path` (at most [`MAX_BYTES`]); `None` when there is no such file.
fn read_bounded(path: &Path) -> Result<Option<String>, LocalVarsError> {
    use std::io::Read;
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(LocalVarsError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let mut text = String::new();
    file.take(MAX_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|source| LocalVarsError::Read {
            path: path.to_path_buf(),
            source,
        })?;
    if text.len() as u64 > MAX_BYTES {
        return Err(LocalVarsError::TooBig {
            path: path.to_path_buf(),
        });
    }
    Ok(Some(text))
}

/// The file of this machine a plain value names (`/...`, or `~/...` in
/// `home`), when it is a regular file: gitlab-ci-local reads such a value
/// as a file variable holding that file's content.
fn named_file(value: &str, home: Option<&Path>) -> Option<PathBuf> {
    let path = match value.strip_prefix("~/") {
        Some(rest) => home?.join(rest),
        None if value.starts_with('/') => PathBuf::from(value),
        None => return None,
    };
    path.is_file().then_some(path)
}

/// A mapping of variables into `out`.
fn take(
    path: &Path,
    section: &str,
    node: &serde_yaml::Value,
    home: Option<&Path>,
    out: &mut LocalVars,
) -> Result<(), LocalVarsError> {
    let shape = |key: &str, what: &str| LocalVarsError::Shape {
        path: path.to_path_buf(),
        key: key.to_string(),
        what: what.to_string(),
    };
    let Some(map) = node.as_mapping() else {
        return Err(shape(section, "expected a mapping of variable names to values"));
    };
    for (k, v) in map {
        let Some(name) = k.as_str() else {
            return Err(shape(section, "a variable name must be a string"));
        };
        if !crate::pipeline::read::valid_var_name(name) {
            return Err(shape(name, "not a valid variable name (letters, digits, `_`)"));
        }
        let (value, file) = match v {
            serde_yaml::Value::String(s) => match named_file(s, home) {
                Some(source) => match read_bounded(&source)? {
                    Some(content) => (content, true),
                    None => (s.clone(), false),
                },
                None => (s.clone(), false),
            },
            serde_yaml::Value::Number(n) => (n.to_string(), false),
            serde_yaml::Value::Bool(b) => (b.to_string(), false),
            serde_yaml::Value::Mapping(m) => {
                let file = match m.get("type").map(|t| t.as_str()) {
                    None | Some(Some("variable")) => false,
                    Some(Some("file")) => true,
                    Some(_) => return Err(shape(name, "`type` is `variable` or `file`")),
                };
                let values = m.get("values").and_then(|v| v.as_mapping());
                let value = match values.and_then(|vals| vals.get("*")) {
                    Some(serde_yaml::Value::String(s)) => s.clone(),
                    Some(other) => serde_yaml::to_string(other).unwrap_or_default().trim().to_string(),
                    None => {
                        out.notes.push(format!(
                            "{}: `{name}` has no `'*'` value; its environment-scoped values are left out",
                            path.display()
                        ));
                        continue;
                    }
                };
                (value, file)
            }
            _ => return Err(shape(name, "expected a string, a number or `{values: {'*': ...}}`")),
        };
        out.push(name, value, file);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_project_file_wins_over_the_home_files_sections() {
        let project = tempfile::tempdir().expect("tempdir");
        let home = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(home.path().join(".gitlab-ci-local")).expect("mkdir");
        std::fs::write(
            home.path().join(".gitlab-ci-local/variables.yml"),
            "global:\n  A: global\n  B: global\ngroup:\n  gitlab.com/team/:\n    B: group\n    C: group\n  gitlab.com/te:\n    B: not-a-prefix-of-the-group\nproject:\n  gitlab.com/team/app.git:\n    C: project\n",
        )
        .expect("write");
        std::fs::write(
            project.path().join(".gitlab-ci-local-variables.yml"),
            "D: 4\nE:\n  values:\n    '*': everywhere\n    production: prod\nF:\n  values:\n    staging: s\n",
        )
        .expect("write");
        let v = read(project.path(), Some(home.path()), Some("gitlab.com/team/app")).expect("read");
        let get = |k: &str| v.vars.iter().rev().find(|(n, _)| n == k).map(|(_, x)| x.as_str());
        assert_eq!(get("A"), Some("global"));
        assert_eq!(get("B"), Some("group"));
        assert_eq!(get("C"), Some("project"));
        assert_eq!(get("D"), Some("4"));
        assert_eq!(get("E"), Some("everywhere"));
        assert_eq!(get("F"), None);
        assert!(v.notes.iter().any(|n| n.contains("`F` has no")), "{:?}", v.notes);
    }

    #[test]
    fn file_variables_are_typed_or_name_a_file_of_this_machine() {
        let project = tempfile::tempdir().expect("tempdir");
        let home = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(home.path().join(".kube")).expect("mkdir");
        std::fs::write(home.path().join(".kube/config"), "apiVersion: v1\n").expect("write");
        std::fs::create_dir_all(home.path().join(".gitlab-ci-local")).expect("mkdir");
        // The home file makes OVERRIDDEN a file; the project's file a plain value.
        std::fs::write(
            home.path().join(".gitlab-ci-local/variables.yml"),
            "global:\n  OVERRIDDEN:\n    type: file\n    values:\n      '*': home\n",
        )
        .expect("write");
        std::fs::write(
            project.path().join(".gitlab-ci-local-variables.yml"),
            "KUBECONFIG: ~/.kube/config\nCERT:\n  type: file\n  values:\n    '*': |\n      -----BEGIN-----\nDIR: /\nMISSING: /no/such/file\nPLAIN: text\nOVERRIDDEN: plain\n",
        )
        .expect("write");
        let v = read(project.path(), Some(home.path()), None).expect("read");
        let get = |k: &str| v.vars.iter().rev().find(|(n, _)| n == k).map(|(_, x)| x.as_str());
        assert_eq!(get("KUBECONFIG"), Some("apiVersion: v1\n"), "a named file's content");
        assert_eq!(get("CERT"), Some("-----BEGIN-----\n"));
        // Neither a folder nor a missing path is a file: the text stays.
        assert_eq!(get("DIR"), Some("/"));
        assert_eq!(get("MISSING"), Some("/no/such/file"));
        let mut files = v.files.clone();
        files.sort();
        assert_eq!(files, ["CERT", "KUBECONFIG"]);
        assert_eq!(get("OVERRIDDEN"), Some("plain"));
        std::fs::write(
            project.path().join(".gitlab-ci-local-variables.yml"),
            "X:\n  type: secret\n  values:\n    '*': x\n",
        )
        .expect("write");
        let e = read(project.path(), None, None).expect_err("unknown type");
        assert!(e.to_string().contains("`type` is `variable` or `file`"), "{e}");
    }

    #[test]
    fn a_broken_file_is_an_error_naming_it() {
        let project = tempfile::tempdir().expect("tempdir");
        std::fs::write(project.path().join(".gitlab-ci-local-variables.yml"), "A: [unclosed\n").expect("write");
        let e = read(project.path(), None, None).expect_err("broken");
        assert!(e.to_string().contains(".gitlab-ci-local-variables.yml"), "{e}");
        std::fs::write(project.path().join(".gitlab-ci-local-variables.yml"), "bad-name: x\n").expect("write");
        let e = read(project.path(), None, None).expect_err("bad name");
        assert!(e.to_string().contains("bad-name"), "{e}");
    }
}
