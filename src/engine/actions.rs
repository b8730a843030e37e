//! GitHub's cache and artifact actions, carried out on trackside's store:
//! `actions/cache` (restore, and save in its post step),
//! `actions/upload-artifact` and `actions/download-artifact`. Caches are
//! the store's directory caches under `github-cache/<repository>/<key>`,
//! shared by the repository's runs as GitHub shares them; artifacts are
//! `github-artifact/<run>/<name>`, the run's own.
//!
//! What they print is what the actions print, so a log reads as on GitHub.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use crate::exec::Stream;
use crate::pipeline::model::Builtin;
use crate::pipeline::{FailureClass, Job};
use crate::store::manifest::{self, CollectLimits};

use super::artifacts::{blocking, store_failure, write_limits};
use super::attempt::{Attempt, RunContext, RunnerMsg};

/// Most artifacts one download of "all of them" restores.
const MAX_ARTIFACTS: usize = 500;

/// How a restore went, for its post step.
#[derive(Debug, Clone)]
pub struct CacheUse {
    pub key: String,
    pub paths: Vec<String>,
    /// A cache had exactly this key: nothing to save.
    pub hit: bool,
}

/// What a built-in step did: its failure (class, message) and its outputs.
#[derive(Debug, Default)]
pub struct Done {
    pub failure: Option<(FailureClass, String)>,
    pub outputs: Vec<(String, String)>,
}

impl Done {
    fn failed(class: FailureClass, message: impl Into<String>) -> Done {
        Done {
            failure: Some((class, message.into())),
            outputs: Vec::new(),
        }
    }
}

/// A line of the step's output, as the action would print it.
async fn say(a: &Attempt, step: &Arc<str>, text: impl Into<String>) {
    let _ =
        a.tx.send(RunnerMsg::Log {
            job: a.job,
            attempt: a.attempt,
            step: step.clone(),
            stream: Stream::Stdout,
            text: text.into(),
            partial: false,
        })
        .await;
}

fn cache_key(job: &Job, ctx: &RunContext, key: &str) -> String {
    let repo = job
        .github
        .as_deref()
        .and_then(|g| g.get("repository"))
        .and_then(|r| r.as_str())
        .filter(|r| !r.is_empty())
        .map_or_else(|| ctx.pipeline.name.clone(), str::to_string);
    format!("github-cache/{repo}/{key}")
}

fn artifact_key(ctx: &RunContext, name: &str) -> String {
    format!("github-artifact/{}/{name}", ctx.run_id)
}

/// `paths` that stay inside the workspace; the others, for a warning.
fn inside(paths: &[String]) -> (Vec<String>, Vec<String>) {
    paths.iter().cloned().partition(|p| {
        let rel = Path::new(p.trim_start_matches('!'));
        !p.starts_with('~') && !rel.is_absolute() && !rel.components().any(|c| matches!(c, Component::ParentDir))
    })
}

/// Carries out built-in step `index` (its texts already evaluated) in
/// workspace `ws`. `caches` holds how this attempt's restores went.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    ctx: &Arc<RunContext>,
    a: &Attempt,
    job: &Job,
    name: &Arc<str>,
    builtin: &Builtin,
    ws: &Path,
    index: usize,
    caches: &mut HashMap<usize, CacheUse>,
) -> Done {
    match builtin {
        Builtin::CacheRestore {
            key,
            restore_keys,
            paths,
            fail_on_miss,
            lookup_only,
            ..
        } => {
            let (paths, outside) = inside(paths);
            for p in outside {
                say(
                    a,
                    name,
                    format!("Warning: `{p}` is outside the workspace: trackside does not cache it"),
                )
                .await;
            }
            let done = restore_cache(ctx, a, job, name, key, restore_keys, *lookup_only, ws).await;
            let hit = done.outputs.iter().any(|(k, v)| k == "cache-hit" && v == "true");
            caches.insert(
                index,
                CacheUse {
                    key: key.clone(),
                    paths,
                    hit,
                },
            );
            let missed = done.outputs.iter().all(|(k, _)| k != "cache-hit");
            if *fail_on_miss && missed && done.failure.is_none() {
                return Done::failed(
                    FailureClass::Script,
                    format!("Failed to restore cache entry. Exiting as fail-on-cache-miss is set. Input key: {key}"),
                );
            }
            done
        }
        Builtin::CacheSave { key, paths, restore } => {
            let used = match restore {
                Some(i) => match caches.get(i) {
                    Some(u) => u.clone(),
                    // Its restore step did not run: nothing to save.
                    None => return Done::default(),
                },
                None => {
                    let (paths, outside) = inside(paths);
                    for p in outside {
                        say(
                            a,
                            name,
                            format!("Warning: `{p}` is outside the workspace: trackside does not cache it"),
                        )
                        .await;
                    }
                    CacheUse {
                        key: key.clone(),
                        paths,
                        hit: false,
                    }
                }
            };
            if used.hit {
                say(
                    a,
                    name,
                    format!("Cache hit occurred on the primary key {}, not saving cache.", used.key),
                )
                .await;
                return Done::default();
            }
            save_cache(ctx, a, job, name, &used, ws).await
        }
        Builtin::Upload {
            name: artifact,
            paths,
            if_no_files_found,
            include_hidden,
            overwrite,
        } => {
            upload(
                ctx,
                a,
                name,
                artifact,
                paths,
                if_no_files_found,
                *include_hidden,
                *overwrite,
                ws,
            )
            .await
        }
        Builtin::Download { name: artifact, path } => download(ctx, a, name, artifact.as_deref(), path, ws).await,
    }
}

#[allow(clippy::too_many_arguments)]
async fn restore_cache(
    ctx: &Arc<RunContext>,
    a: &Attempt,
    job: &Job,
    name: &Arc<str>,
    key: &str,
    restore_keys: &[String],
    lookup_only: bool,
    ws: &Path,
) -> Done {
    let exact = cache_key(job, ctx, key);
    let mut found = match ctx.index.dir_cache_get(&exact) {
        Ok(d) => d.map(|d| (key.to_string(), d, true)),
        Err(e) => return Done::failed(FailureClass::Infra, format!("cannot read the cache index: {e}")),
    };
    for rk in restore_keys {
        if found.is_some() {
            break;
        }
        let prefix = cache_key(job, ctx, rk);
        match ctx.index.dir_caches_with_prefix(&prefix, 1) {
            Ok(mut rows) => {
                if let Some((full, d)) = rows.pop() {
                    let shown = full.strip_prefix(&cache_key(job, ctx, "")).unwrap_or(&full).to_string();
                    found = Some((shown, d, false));
                }
            }
            Err(e) => return Done::failed(FailureClass::Infra, format!("cannot read the cache index: {e}")),
        }
    }
    let Some((from, digest, exact_hit)) = found else {
        let mut keys = vec![key.to_string()];
        keys.extend(restore_keys.iter().cloned());
        say(a, name, format!("Cache not found for input keys: {}", keys.join(", "))).await;
        return Done::default();
    };
    let hit = vec![("cache-hit".to_string(), exact_hit.to_string())];
    if lookup_only {
        say(a, name, format!("Cache found and can be restored from key: {from}")).await;
        return Done {
            failure: None,
            outputs: hit,
        };
    }
    let (c, dest) = (ctx.clone(), ws.to_path_buf());
    let restored = blocking(move || {
        let m = manifest::load(&c.objects, &digest).map_err(|e| e.to_string())?;
        manifest::restore(&c.objects, &m, &dest).map_err(|e| e.to_string())?;
        Ok(m.entries.len())
    })
    .await;
    match restored {
        Ok(n) => {
            say(a, name, format!("Cache restored from key: {from} ({n} files)")).await;
            Done {
                failure: None,
                outputs: hit,
            }
        }
        // A damaged cache is not the job's fault: it goes on without it.
        Err(e) => {
            say(a, name, format!("Warning: Failed to restore: {e}")).await;
            let _ = ctx.index.dir_cache_remove(&cache_key(job, ctx, &from));
            Done::default()
        }
    }
}

async fn save_cache(
    ctx: &Arc<RunContext>,
    a: &Attempt,
    job: &Job,
    name: &Arc<str>,
    used: &CacheUse,
    ws: &Path,
) -> Done {
    let full = cache_key(job, ctx, &used.key);
    match ctx.index.dir_cache_get(&full) {
        Ok(Some(_)) => {
            say(
                a,
                name,
                format!(
                    "Failed to save: Unable to reserve cache with key {}, another job may be creating this cache.",
                    used.key
                ),
            )
            .await;
            return Done::default();
        }
        Ok(None) => {}
        Err(e) => return Done::failed(FailureClass::Infra, format!("cannot read the cache index: {e}")),
    }
    match store(ctx, a, ws, &used.paths, &[], &full).await {
        Ok(0) => {
            say(
                a,
                name,
                "Warning: Path Validation Error: Path(s) specified in the action for caching do(es) not exist, hence no cache is being saved.",
            )
            .await;
            Done::default()
        }
        Ok(_) => {
            say(a, name, format!("Cache saved with key: {}", used.key)).await;
            Done::default()
        }
        // Saving a cache never fails the job, as on GitHub.
        Err((e, _)) => {
            say(a, name, format!("Warning: Failed to save: {e}")).await;
            Done::default()
        }
    }
}

/// Stores the files under `root` matching `include` and not `exclude` as
/// directory cache `key`; how many there were (none: nothing stored).
async fn store(
    ctx: &Arc<RunContext>,
    a: &Attempt,
    root: &Path,
    include: &[String],
    exclude: &[String],
    key: &str,
) -> Result<usize, (String, FailureClass)> {
    let (c, root, k) = (ctx.clone(), root.to_path_buf(), key.to_string());
    let (include, exclude) = (include.to_vec(), exclude.to_vec());
    let (write, guard) = write_limits(ctx, a);
    let saved = tokio::task::spawn_blocking(move || {
        let script = |e: String| (e, FailureClass::Script);
        let _lock = c.objects.lock_shared().map_err(|e| script(e.to_string()))?;
        let limits = CollectLimits {
            write,
            ..CollectLimits::default()
        };
        let m = manifest::collect_within(&c.objects, &root, &include, &exclude, &limits)
            .map_err(|e| (e.to_string(), store_failure(&e)))?
            .manifest;
        if m.entries.is_empty() {
            return Ok(0);
        }
        let d = manifest::save(&c.objects, &m).map_err(|e| script(e.to_string()))?;
        c.index
            .dir_cache_put(&k, &d, &c.run_id)
            .map_err(|e| script(e.to_string()))?;
        Ok(m.entries.len())
    })
    .await
    .unwrap_or_else(|e| Err((format!("background task failed: {e}"), FailureClass::Infra)));
    guard.abort();
    saved
}

/// The deepest folder holding everything `patterns` name (the literal
/// part of each, up to its first wildcard; a file's folder), relative to
/// the workspace: upload-artifact's root.
fn common_root(ws: &Path, patterns: &[String]) -> PathBuf {
    let mut roots: Vec<Vec<String>> = Vec::new();
    for p in patterns {
        let mut parts: Vec<String> = Vec::new();
        for part in p.trim_start_matches("./").split('/').filter(|s| !s.is_empty()) {
            if part.contains(['*', '?', '[', '{']) {
                break;
            }
            parts.push(part.to_string());
        }
        let literal = !p.contains(['*', '?', '[', '{']);
        if literal && !ws.join(parts.join("/")).is_dir() {
            parts.pop();
        }
        roots.push(parts);
    }
    let Some(first) = roots.first() else {
        return PathBuf::new();
    };
    let mut n = first.len();
    for r in &roots[1..] {
        n = n.min(r.iter().zip(first).take_while(|(a, b)| a == b).count());
    }
    first[..n].iter().collect()
}

#[allow(clippy::too_many_arguments)]
async fn upload(
    ctx: &Arc<RunContext>,
    a: &Attempt,
    name: &Arc<str>,
    artifact: &str,
    paths: &[String],
    if_none: &str,
    include_hidden: bool,
    overwrite: bool,
    ws: &Path,
) -> Done {
    if artifact.contains(['/', '\\', ':', '<', '>', '|', '*', '?', '"']) || artifact.trim().is_empty() {
        return Done::failed(
            FailureClass::Script,
            format!("The artifact name is not valid: {artifact}. It may not contain / \\ : < > | * ? \""),
        );
    }
    let (paths, outside) = inside(paths);
    if let Some(p) = outside.first() {
        return Done::failed(
            FailureClass::Script,
            format!("`{p}` is outside the workspace: trackside uploads files of the workspace only"),
        );
    }
    let (excludes, includes): (Vec<String>, Vec<String>) = paths.into_iter().partition(|p| p.starts_with('!'));
    let root = common_root(ws, &includes);
    let strip = |p: &str| -> String {
        let p = p.trim_start_matches('!').trim_start_matches("./");
        Path::new(p)
            .strip_prefix(&root)
            .map(|r| r.to_string_lossy().into_owned())
            .unwrap_or_else(|_| p.to_string())
    };
    let mut include: Vec<String> = includes.iter().map(|p| strip(p)).collect();
    // The root itself: everything below it.
    for i in include.iter_mut() {
        if i.is_empty() {
            *i = "**".into();
        }
    }
    let mut exclude: Vec<String> = excludes.iter().map(|p| strip(p)).collect();
    if !include_hidden {
        exclude.extend([
            "**/.*".to_string(),
            "**/.*/**".to_string(),
            ".*".to_string(),
            ".*/**".to_string(),
        ]);
    }
    let key = artifact_key(ctx, artifact);
    match ctx.index.dir_cache_get(&key) {
        Ok(Some(_)) if !overwrite => {
            return Done::failed(
                FailureClass::Script,
                format!(
                    "Failed to CreateArtifact: an artifact with the name {artifact} already exists on this run (set `overwrite: true` to replace it)"
                ),
            );
        }
        Ok(_) => {}
        Err(e) => return Done::failed(FailureClass::Infra, format!("cannot read the index: {e}")),
    }
    // A folder that is not there holds no files.
    let found = if ws.join(&root).is_dir() {
        store(ctx, a, &ws.join(&root), &include, &exclude, &key).await
    } else {
        Ok(0)
    };
    match found {
        Ok(0) => {
            let msg = format!(
                "No files were found with the provided path: {}. No artifacts will be uploaded.",
                includes.join(", ")
            );
            match if_none {
                "error" => Done::failed(FailureClass::Script, msg),
                "ignore" => Done::default(),
                _ => {
                    say(a, name, format!("Warning: {msg}")).await;
                    Done::default()
                }
            }
        }
        Ok(n) => {
            say(
                a,
                name,
                format!("Artifact {artifact} has been successfully uploaded! ({n} files)"),
            )
            .await;
            Done {
                failure: None,
                outputs: vec![("artifact-id".into(), artifact.to_string())],
            }
        }
        Err((e, class)) => Done::failed(class, format!("upload-artifact: {e}")),
    }
}

async fn download(
    ctx: &Arc<RunContext>,
    a: &Attempt,
    name: &Arc<str>,
    artifact: Option<&str>,
    path: &str,
    ws: &Path,
) -> Done {
    let rel = Path::new(path.trim_start_matches("./"));
    if path.starts_with('~') || rel.is_absolute() || rel.components().any(|c| matches!(c, Component::ParentDir)) {
        return Done::failed(
            FailureClass::Script,
            format!("`{path}` is outside the workspace: trackside downloads into the workspace only"),
        );
    }
    let dest = ws.join(rel);
    let wanted: Vec<(String, PathBuf)> = match artifact {
        Some(n) => vec![(artifact_key(ctx, n), dest.clone())],
        None => {
            let prefix = artifact_key(ctx, "");
            match ctx.index.dir_caches_with_prefix(&prefix, MAX_ARTIFACTS) {
                Ok(rows) => rows
                    .into_iter()
                    .map(|(k, _)| {
                        let n = k.strip_prefix(&prefix).unwrap_or(&k).to_string();
                        (k, dest.join(n))
                    })
                    .collect(),
                Err(e) => return Done::failed(FailureClass::Infra, format!("cannot read the index: {e}")),
            }
        }
    };
    let mut count = 0;
    for (key, into) in wanted {
        let digest = match ctx.index.dir_cache_get(&key) {
            Ok(Some(d)) => d,
            Ok(None) => {
                return Done::failed(
                    FailureClass::Script,
                    format!(
                        "Unable to download artifact(s): Artifact not found for name: {}",
                        artifact.unwrap_or_default()
                    ),
                );
            }
            Err(e) => return Done::failed(FailureClass::Infra, format!("cannot read the index: {e}")),
        };
        let c = ctx.clone();
        let restored = blocking(move || {
            let m = manifest::load(&c.objects, &digest).map_err(|e| e.to_string())?;
            manifest::restore(&c.objects, &m, &into).map_err(|e| e.to_string())?;
            Ok(m.entries.len())
        })
        .await;
        match restored {
            Ok(_) => count += 1,
            Err(e) => return Done::failed(FailureClass::Infra, format!("download-artifact: {e}")),
        }
    }
    say(a, name, format!("Total of {count} artifact(s) downloaded")).await;
    say(a, name, "Download artifact has finished successfully").await;
    Done {
        failure: None,
        outputs: vec![("download-path".into(), dest.display().to_string())],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_artifact_root_is_the_deepest_common_folder() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ws = dir.path();
        std::fs::create_dir_all(ws.join("dist/sub")).expect("mkdir");
        std::fs::create_dir_all(ws.join("out")).expect("mkdir");
        std::fs::write(ws.join("dist/a.txt"), "a").expect("write");
        let s = |v: &[&str]| v.iter().map(|p| p.to_string()).collect::<Vec<_>>();
        assert_eq!(common_root(ws, &s(&["dist/"])), PathBuf::from("dist"));
        assert_eq!(common_root(ws, &s(&["dist/a.txt"])), PathBuf::from("dist"));
        assert_eq!(common_root(ws, &s(&["dist/**/*.txt"])), PathBuf::from("dist"));
        assert_eq!(common_root(ws, &s(&["dist/sub", "dist/a.txt"])), PathBuf::from("dist"));
        assert_eq!(common_root(ws, &s(&["dist/", "out/"])), PathBuf::new());
        assert_eq!(common_root(ws, &s(&["*.log"])), PathBuf::new());
    }

    #[test]
    fn only_workspace_paths_are_taken() {
        let s = |v: &[&str]| v.iter().map(|p| p.to_string()).collect::<Vec<_>>();
        let (ok, out) = inside(&s(&["dist", "~/.npm", "/etc", "../x", "!dist/tmp", "a/../../b"]));
        assert_eq!(ok, s(&["dist", "!dist/tmp"]));
        assert_eq!(out, s(&["~/.npm", "/etc", "../x", "a/../../b"]));
    }
}
