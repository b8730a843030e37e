//! Files between jobs in the native format: `artifacts:`, `cache:` (the
//! result cache and directory caches) and the globs they name.

use std::path::Path;

use crate::pipeline::diag::suggestion_hint;
use crate::pipeline::model::*;
use crate::pipeline::read::*;
use crate::pipeline::yaml::{Node, Value};

impl Cx<'_> {
    /// Globs that must stay inside the workspace or project; bad ones are reported.
    /// `reports: {junit: [globs]}`: the JUnit files the job's steps write.
    pub(crate) fn reports(&mut self, node: &Node, path: &str) -> Vec<String> {
        if !self.mapping(node, path, &["junit"], "`reports`") {
            return Vec::new();
        }
        let Some(n) = get(node, "junit") else {
            return Vec::new();
        };
        let list = self.string_list(n, &join(path, "junit"));
        self.relative_globs(list, path, "junit")
    }

    pub(crate) fn relative_globs(&mut self, list: Vec<(String, Node)>, path: &str, key: &str) -> Vec<String> {
        let mut out = Vec::new();
        for (i, (p, n)) in list.into_iter().enumerate() {
            let escapes = Path::new(&p).is_absolute()
                || Path::new(&p)
                    .components()
                    .any(|c| matches!(c, std::path::Component::ParentDir));
            if escapes {
                self.err(
                    &n,
                    &format!("{path}.{key}[{i}]"),
                    format!("path `{p}` leaves the workspace"),
                    "use a path or glob relative to the workspace, without `..`",
                );
            } else if let Err(e) = globset::Glob::new(p.trim_start_matches("./")) {
                self.err(
                    &n,
                    &format!("{path}.{key}[{i}]"),
                    format!("bad glob `{p}`: {e}"),
                    "see the glob syntax in docs/pipeline-format.md",
                );
            } else {
                out.push(p);
            }
        }
        out
    }

    /// A non-empty list of relative globs under `key`, or an error naming `example`.
    pub(crate) fn glob_list(&mut self, node: &Node, path: &str, key: &str, example: &str) -> Vec<String> {
        let Some(n) = get(node, key) else {
            return Vec::new();
        };
        let list = self.string_list(n, &join(path, key));
        if list.is_empty() {
            self.err(
                n,
                &join(path, key),
                format!("`{key}` is empty"),
                format!("e.g. `{example}`"),
            );
        }
        self.relative_globs(list, path, key)
    }

    /// `cache:` is a result cache (`inputs`), a directory cache (`key`, `paths`, `policy`), or both.
    pub(crate) fn cache(&mut self, node: &Node, path: &str) -> (Option<ResultCache>, Option<DirCache>) {
        if !self.mapping(node, path, &["inputs", "key", "paths", "policy"], "cache") {
            return (None, None);
        }
        let result = get(node, "inputs").map(|_| ResultCache {
            inputs: self.glob_list(node, path, "inputs", "inputs: [src/**, Cargo.lock]"),
        });
        let has_dir = ["key", "paths", "policy"].iter().any(|k| get(node, k).is_some());
        if result.is_none() && !has_dir {
            self.err(
                node,
                path,
                "`cache` needs `inputs` (skip the job when they did not change) or `paths` (keep folders between runs)",
                "e.g. `cache: {inputs: [src/**]}` or `cache: {key: deps, paths: [node_modules/]}`",
            );
            return (None, None);
        }
        if !has_dir {
            return (result, None);
        }
        if get(node, "paths").is_none() {
            self.err(
                node,
                path,
                "a directory cache needs `paths`",
                "e.g. `cache: {key: deps, paths: [node_modules/]}`",
            );
            return (result, None);
        }
        let paths = self.glob_list(node, path, "paths", "paths: [node_modules/]");
        let key = match get(node, "key") {
            None => None,
            Some(n) if matches!(n.value, Value::Map(_)) => {
                let kpath = join(path, "key");
                if self.mapping(n, &kpath, &["files", "prefix"], "a cache key") {
                    let files = self.glob_list(n, &kpath, "files", "files: [Cargo.lock]");
                    if get(n, "files").is_none() {
                        self.err(
                            n,
                            &kpath,
                            "a cache key mapping needs `files`",
                            "e.g. `key: {files: [Cargo.lock]}`",
                        );
                    }
                    let prefix = get(n, "prefix").and_then(|p| self.string(p, &join(&kpath, "prefix")));
                    Some(DirCacheKey::Files { files, prefix })
                } else {
                    None
                }
            }
            Some(n) => self.string(n, &join(path, "key")).map(DirCacheKey::Name),
        };
        let policy = match get(node, "policy") {
            None => CachePolicy::default(),
            Some(n) => match self.string(n, &join(path, "policy")) {
                Some(v) => match CachePolicy::ALL.iter().find(|(name, _)| *name == v) {
                    Some((_, p)) => *p,
                    None => {
                        let names: Vec<&str> = CachePolicy::ALL.iter().map(|(n, _)| *n).collect();
                        let hint = suggestion_hint(&v, &names, "policies");
                        self.err(n, &join(path, "policy"), format!("unknown cache policy `{v}`"), hint);
                        CachePolicy::default()
                    }
                },
                None => CachePolicy::default(),
            },
        };
        let dir = DirCache {
            key: key.unwrap_or_else(|| DirCacheKey::Name("${CI_JOB_NAME}".into())),
            paths,
            policy,
            when: ArtifactWhen::OnSuccess,
            fallback_keys: Vec::new(),
            untracked: false,
        };
        (result, Some(dir))
    }

    pub(crate) fn artifacts(&mut self, node: &Node, path: &str) -> Option<Artifacts> {
        if !self.mapping(node, path, &["paths", "exclude", "when", "expire_in"], "artifacts") {
            return None;
        }
        let paths = match get(node, "paths") {
            Some(n) => {
                let list = self.string_list(n, &join(path, "paths"));
                if list.is_empty() {
                    self.err(
                        n,
                        &join(path, "paths"),
                        "`paths` is empty",
                        "list the files or directories to keep, e.g. `[dist/]`",
                    );
                }
                self.relative_globs(list, path, "paths")
            }
            None => {
                self.err(
                    node,
                    path,
                    "artifacts need `paths`",
                    "e.g. `artifacts: {paths: [dist/]}`",
                );
                Vec::new()
            }
        };
        let exclude = get(node, "exclude")
            .map(|n| self.string_list(n, &join(path, "exclude")))
            .unwrap_or_default();
        let exclude = self.relative_globs(exclude, path, "exclude");
        let when = match get(node, "when") {
            None => ArtifactWhen::OnSuccess,
            Some(n) => match self.string(n, &join(path, "when")).as_deref() {
                Some("on_success") => ArtifactWhen::OnSuccess,
                Some("on_failure") => ArtifactWhen::OnFailure,
                Some("always") => ArtifactWhen::Always,
                Some(other) => {
                    let hint = suggestion_hint(other, &["on_success", "on_failure", "always"], "values");
                    self.err(n, &join(path, "when"), format!("unknown `when` value `{other}`"), hint);
                    ArtifactWhen::OnSuccess
                }
                None => ArtifactWhen::OnSuccess,
            },
        };
        let expire_in = get(node, "expire_in")
            .and_then(|n| self.seconds_in(n, &join(path, "expire_in"), 1.0, 10.0 * 365.0 * 86400.0));
        Some(Artifacts {
            paths,
            exclude,
            when,
            expire_in,
            dotenv: Vec::new(),
            junit: Vec::new(),
            untracked: false,
        })
    }
}
