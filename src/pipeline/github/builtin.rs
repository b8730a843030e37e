//! The actions trackside carries out itself: `actions/cache` (and its
//! `restore` and `save` halves), `actions/upload-artifact` and
//! `actions/download-artifact`, mapped to trackside's store (see
//! `engine::builtin`).

use super::{IN_STEP, Known, Workflow, entries, get, join};
use crate::pipeline::model::{Builtin, Step};
use crate::pipeline::yaml::{Node, Value};

/// Which built-in an action names, if any (`owner/repo[/path]@ref`).
pub(super) fn which(action: &str) -> Option<&'static str> {
    let name = action.split('@').next()?.to_ascii_lowercase();
    Some(match name.as_str() {
        "actions/cache" => "cache",
        "actions/cache/restore" => "cache/restore",
        "actions/cache/save" => "cache/save",
        "actions/upload-artifact" => "upload-artifact",
        "actions/download-artifact" => "download-artifact",
        _ => return None,
    })
}

/// The inputs each built-in reads; others are warned about, as GitHub
/// warns of unexpected inputs. Inputs trackside reads but does not apply
/// are listed in `ignored`.
fn inputs(kind: &str) -> (&'static [&'static str], &'static [&'static str]) {
    match kind {
        "cache" | "cache/restore" | "cache/save" => (
            &[
                "path",
                "key",
                "restore-keys",
                "fail-on-cache-miss",
                "lookup-only",
                "enableCrossOsArchive",
                "upload-chunk-size",
                "save-always",
            ],
            &["enableCrossOsArchive", "upload-chunk-size", "save-always"],
        ),
        "upload-artifact" => (
            &[
                "name",
                "path",
                "if-no-files-found",
                "retention-days",
                "compression-level",
                "overwrite",
                "include-hidden-files",
            ],
            &["retention-days", "compression-level"],
        ),
        _ => (
            &[
                "name",
                "path",
                "pattern",
                "merge-multiple",
                "github-token",
                "repository",
                "run-id",
            ],
            &[],
        ),
    }
}

impl Workflow<'_, '_> {
    /// A built-in action's step (`kind` from [`which`]), its `with:` read.
    pub(super) fn builtin(
        &mut self,
        node: &Node,
        path: &str,
        kind: &str,
        known: &Known,
        mut step: Step,
    ) -> Option<Step> {
        let with = get(node, "with");
        let (accepted, ignored) = inputs(kind);
        let mut values: Vec<(String, String, Node)> = Vec::new();
        let mut ok = true;
        for (k, v) in with.map(entries).unwrap_or_default() {
            let Some(name) = k.as_str() else { continue };
            let wpath = join(&join(path, "with"), name);
            if !accepted.contains(&name) {
                self.cx.warn(
                    k,
                    &wpath,
                    format!("`actions/{kind}` has no input `{name}`"),
                    format!("its inputs are: {}", accepted.join(", ")),
                );
                continue;
            }
            if ignored.contains(&name) {
                self.cx.warn(
                    k,
                    &wpath,
                    format!("`{name}` of `actions/{kind}` is not applied here"),
                    "trackside keeps caches and artifacts in its own store (docs/github.md)",
                );
                continue;
            }
            if matches!(
                name,
                "pattern" | "merge-multiple" | "github-token" | "repository" | "run-id"
            ) {
                self.cx.err(
                    k,
                    &wpath,
                    format!("trackside does not evaluate `{name}` of `actions/download-artifact` yet"),
                    "download one artifact by `name`, or all of them without it (docs/github.md)",
                );
                ok = false;
                continue;
            }
            let raw = match &v.value {
                Value::Null => String::new(),
                Value::Bool(b) => b.to_string(),
                _ => match self.cx.string(v, &wpath) {
                    Some(s) => s,
                    None => {
                        ok = false;
                        continue;
                    }
                },
            };
            match self.text(&raw, v, &wpath, known, IN_STEP) {
                Some(t) => values.push((name.to_string(), t, v.clone())),
                None => ok = false,
            }
        }
        if !ok {
            return None;
        }
        let value = |name: &str| values.iter().find(|(n, _, _)| n == name).map(|(_, v, _)| v.clone());
        let lines = |name: &str| -> Vec<String> {
            value(name)
                .map(|v| {
                    v.lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty())
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default()
        };
        let flag = |name: &str| value(name).is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
        let uses = get(node, "uses").unwrap_or(node);
        let mut need = |name: &str| -> bool {
            if value(name).is_some_and(|v| !v.trim().is_empty()) {
                return true;
            }
            self.cx.err(
                uses,
                &join(path, "with"),
                format!("input `{name}` of `actions/{kind}` is required and not given"),
                format!("add `with: {{{name}: ...}}` to the step"),
            );
            false
        };
        step.builtin = Some(Box::new(match kind {
            "cache" | "cache/restore" => {
                let (has_key, has_path) = (need("key"), need("path"));
                if !(has_key && has_path) {
                    return None;
                }
                Builtin::CacheRestore {
                    key: value("key").unwrap_or_default().trim().to_string(),
                    restore_keys: lines("restore-keys"),
                    paths: lines("path"),
                    fail_on_miss: flag("fail-on-cache-miss"),
                    lookup_only: flag("lookup-only"),
                    save: kind == "cache",
                }
            }
            "cache/save" => {
                let (has_key, has_path) = (need("key"), need("path"));
                if !(has_key && has_path) {
                    return None;
                }
                Builtin::CacheSave {
                    key: value("key").unwrap_or_default().trim().to_string(),
                    paths: lines("path"),
                    restore: None,
                }
            }
            "upload-artifact" => {
                if !need("path") {
                    return None;
                }
                let if_none = value("if-no-files-found").unwrap_or_else(|| "warn".into());
                if !matches!(if_none.as_str(), "warn" | "error" | "ignore") {
                    if let Some((_, _, n)) = values.iter().find(|(n, _, _)| n == "if-no-files-found") {
                        self.cx.err(
                            n,
                            &join(&join(path, "with"), "if-no-files-found"),
                            format!("`if-no-files-found: {if_none}` is not one of warn, error, ignore"),
                            "write `warn` (the default), `error` or `ignore`",
                        );
                    }
                    return None;
                }
                Builtin::Upload {
                    name: value("name")
                        .filter(|n| !n.trim().is_empty())
                        .unwrap_or_else(|| "artifact".into()),
                    paths: lines("path"),
                    if_no_files_found: if_none,
                    include_hidden: flag("include-hidden-files"),
                    overwrite: flag("overwrite"),
                }
            }
            _ => Builtin::Download {
                name: value("name").filter(|n| !n.trim().is_empty()),
                path: value("path").unwrap_or_default().trim().to_string(),
            },
        }));
        Some(step)
    }
}

/// The post step of an `actions/cache` step at `index`: it saves the
/// cache when the job has gone well so far.
pub(super) fn cache_post(step: &Step, index: usize) -> Option<Step> {
    matches!(step.builtin.as_deref(), Some(Builtin::CacheRestore { save: true, .. })).then(|| Step {
        name: format!("Post {}", step.name),
        builtin: Some(Box::new(Builtin::CacheSave {
            key: String::new(),
            paths: Vec::new(),
            restore: Some(index),
        })),
        ..Step::default()
    })
}
