//! What a job takes in and leaves behind: artifacts between jobs, the
//! result cache and directory caches. The runner calls these around a job's
//! steps; the store does the storing, the index the naming.
//!
//! Writers hold the object store's lock shared from storing objects until
//! the index row naming them is written, so `gc` (exclusive) never sweeps
//! objects that are about to be referenced.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::exec::Stream;
use crate::pipeline::model::{ArtifactWhen, DirCacheKey};
use crate::pipeline::{FailureClass, Job};
use crate::store::cache::{self, Components};
use crate::store::index::{CacheEntry, JobKey};
use crate::store::manifest::{self, ArtifactError, CollectLimits};
use crate::store::objects::{Digest, ObjectError, WriteLimits};

use super::attempt::{Attempt, RunContext, RunnerMsg, note};
pub use super::attempt::{Borrowed, CacheKey};
use super::state::Outcome;

/// Predefined variables that differ on every run or attempt without
/// changing what a job does; they are left out of cache keys.
const VOLATILE_VARS: [&str; 5] = [
    "CI_PIPELINE_ID",
    "CI_JOB_ATTEMPT",
    "CI_JOB_STEP",
    "CI_PROJECT_DIR",
    "TRACKSIDE_RUN_DIR",
];

/// The jobs whose artifacts `job` receives.
pub fn producers(job: &Job) -> Vec<String> {
    match &job.needs_artifacts {
        Some(list) => list.clone(),
        None => job.depends_on.clone(),
    }
}

pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("background task failed: {e}"))
        .and_then(|r| r)
}

/// Restores the artifacts of the jobs this one needs, verifying each file.
/// A failed verification fails the attempt as `data_integrity`, naming the
/// producer so the engine can run it again. Returns the variables of the
/// producers' `reports:dotenv` files (now in the workspace).
pub async fn restore(
    ctx: &Arc<RunContext>,
    a: &Attempt,
    job: &Job,
    ws: &Path,
) -> Result<Vec<(String, String)>, Outcome> {
    let step: Arc<str> = Arc::from("artifacts");
    let mut dotenv = Vec::new();
    for producer in producers(job) {
        let has_artifacts = ctx.pipeline.job(&producer).is_some_and(|p| p.artifacts.is_some());
        // A job of this run that keeps no artifacts left none to look up.
        if ctx.pipeline.job(&producer).is_some() && !has_artifacts {
            continue;
        }
        let mut from_run = None;
        let mut dotenv_files = ctx
            .pipeline
            .job(&producer)
            .and_then(|p| p.artifacts.as_ref())
            .map(|s| s.dotenv.clone())
            .unwrap_or_default();
        let digest = match ctx.index.artifact(&ctx.run_id, &producer) {
            Ok(Some(d)) => d,
            Ok(None) if ctx.pipeline.job(&producer).is_none() => match ctx.borrowed_artifacts.get(&producer) {
                Some(Borrowed {
                    from: Some((run, d)),
                    dotenv,
                }) => {
                    from_run = Some(run.clone());
                    dotenv_files = dotenv.clone();
                    *d
                }
                Some(Borrowed { from: None, .. }) => {
                    let msg = format!("{producer} is not in this run, and no earlier run recorded its artifacts");
                    note(a, &step, msg).await;
                    continue;
                }
                // Left out, and it keeps no artifacts: nothing to say.
                None => continue,
            },
            Ok(None) => {
                if has_artifacts {
                    let msg = format!("{producer} left no artifacts (its `artifacts.when` did not match)");
                    note(a, &step, msg).await;
                }
                continue;
            }
            Err(e) => return Err(Outcome::infra(format!("artifacts of {producer}: {e}"))),
        };
        let (objects, dest) = (ctx.objects.clone(), ws.to_path_buf());
        let restored = tokio::task::spawn_blocking(move || {
            let m = manifest::load(&objects, &digest)?;
            manifest::restore(&objects, &m, &dest).map(|()| m.entries.len())
        })
        .await;
        match restored {
            Ok(Ok(n)) => {
                let from = from_run.map(|r| format!(" from run {r}")).unwrap_or_default();
                note(a, &step, format!("restored {n} artifact file(s) of {producer}{from}")).await;
                for file in std::mem::take(&mut dotenv_files) {
                    match read_dotenv(ws, &file) {
                        Ok(vars) => {
                            let names: Vec<&str> = vars.iter().map(|(k, _)| k.as_str()).collect();
                            note(
                                a,
                                &step,
                                format!("variables from {producer}'s {file}: {}", names.join(", ")),
                            )
                            .await;
                            dotenv.extend(vars);
                        }
                        Err(why) => note(a, &step, format!("{producer}'s dotenv report {file}: {why}")).await,
                    }
                }
            }
            Ok(Err(e)) => {
                let corrupt = matches!(
                    &e,
                    ArtifactError::Object {
                        source: ObjectError::Corrupt { .. } | ObjectError::Missing(_),
                        ..
                    }
                );
                let msg = format!("artifacts of {producer}: {e}");
                note(a, &step, msg.clone()).await;
                let class = if corrupt {
                    FailureClass::DataIntegrity
                } else {
                    FailureClass::Infra
                };
                return Err(Outcome {
                    corrupt_upstream: corrupt.then_some(producer),
                    message: Some(msg),
                    ..Outcome::failed(None, class)
                });
            }
            Err(e) => return Err(Outcome::infra(format!("restoring artifacts of {producer}: {e}"))),
        }
    }
    Ok(dotenv)
}

/// `paths`, and with `untracked` every file git does not track in `ws`
/// (as literal patterns).
fn with_untracked(paths: &[String], untracked: bool, ws: &Path) -> Vec<String> {
    let mut out = paths.to_vec();
    if untracked {
        out.extend(crate::exec::git::untracked_files(ws).iter().map(|f| globset::escape(f)));
    }
    out
}

/// Why a job's directory caches could not be looked up.
#[derive(Debug, thiserror::Error)]
pub enum DirCacheError {
    /// A key's variables could not be resolved, or its files hashed.
    #[error("{0}")]
    Key(String),
    #[error(transparent)]
    Index(#[from] crate::store::StoreError),
}

/// GitLab's limits for a dotenv report.
const DOTENV_MAX_BYTES: u64 = 5 * 1024;
const DOTENV_MAX_VARS: usize = 50;

/// A dotenv report's `KEY=VALUE` lines (blank and `#` lines skipped, one
/// pair of surrounding quotes dropped), within GitLab's limits.
pub fn read_dotenv(ws: &Path, rel: &str) -> Result<Vec<(String, String)>, DotenvError> {
    use std::io::Read;
    // Only a file of the workspace: not a link out of it.
    let path = ws.join(rel);
    let inside = match (path.canonicalize(), ws.canonicalize()) {
        (Ok(p), Ok(w)) => {
            p.starts_with(&w) && !std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink())
        }
        (Err(e), _) | (_, Err(e)) => return Err(DotenvError::Read(e)),
    };
    if !inside {
        return Err(DotenvError::Outside);
    }
    let file = std::fs::File::open(&path).map_err(DotenvError::Read)?;
    let mut text = String::new();
    file.take(DOTENV_MAX_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(DotenvError::Read)?;
    if text.len() as u64 > DOTENV_MAX_BYTES {
        return Err(DotenvError::TooBig);
    }
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((k, v)) = line.split_once('=') else {
            return Err(DotenvError::Line(i + 1));
        };
        let k = k.trim();
        if !crate::pipeline::read::valid_var_name(k) {
            return Err(DotenvError::Line(i + 1));
        }
        let v = v.trim();
        let v = ['"', '\'']
            .iter()
            .find_map(|q| v.strip_prefix(*q).and_then(|x| x.strip_suffix(*q)))
            .unwrap_or(v);
        out.push((k.to_string(), v.to_string()));
        if out.len() > DOTENV_MAX_VARS {
            return Err(DotenvError::TooMany);
        }
    }
    Ok(out)
}

#[derive(Debug, thiserror::Error)]
pub enum DotenvError {
    #[error("cannot read it: {0}")]
    Read(std::io::Error),
    #[error("it is over GitLab's {DOTENV_MAX_BYTES} bytes; nothing of it is used")]
    TooBig,
    #[error("it has over GitLab's {DOTENV_MAX_VARS} variables; nothing of it is used")]
    TooMany,
    #[error("line {0} is not `NAME=value`; nothing of it is used")]
    Line(usize),
    #[error("it is a link, or leads out of the job's workspace; it is not read")]
    Outside,
}

/// Write limits for one attempt: the store's free-space margin, and a flag
/// raised when the attempt is cancelled (storing stops at its next buffer).
/// The guard task ends with the returned handle's drop.
pub(super) fn write_limits(ctx: &RunContext, a: &Attempt) -> (WriteLimits, tokio::task::JoinHandle<()>) {
    let limits = WriteLimits {
        min_free: ctx.artifact_limits.min_free,
        cancel: Arc::new(AtomicBool::new(a.cancel.is_cancelled())),
    };
    let (flag, token) = (limits.cancel.clone(), a.cancel.clone());
    let guard = tokio::spawn(async move {
        token.cancelled().await;
        flag.store(true, Ordering::Relaxed);
    });
    (limits, guard)
}

/// Why storing failed, as the attempt's failure class.
pub(super) fn store_failure(e: &manifest::ArtifactError) -> FailureClass {
    if e.is_disk_full() {
        FailureClass::DiskFull
    } else if e.is_cancelled() {
        FailureClass::Cancelled
    } else {
        FailureClass::Script
    }
}

/// Collects the job's artifacts when `when` matches the outcome, within the
/// job's and the run's size limits.
pub async fn collect(
    ctx: &Arc<RunContext>,
    a: &Attempt,
    job: &Job,
    ws: &Path,
    succeeded: bool,
) -> Result<(), (String, FailureClass)> {
    let Some(spec) = &job.artifacts else { return Ok(()) };
    let wanted = match spec.when {
        ArtifactWhen::OnSuccess => succeeded,
        ArtifactWhen::OnFailure => !succeeded,
        ArtifactWhen::Always => true,
    };
    if !wanted {
        return Ok(());
    }
    let step: Arc<str> = Arc::from("artifacts");
    let (c, root, spec, name) = (ctx.clone(), ws.to_path_buf(), spec.clone(), job.name.clone());
    let (write, guard) = write_limits(ctx, a);
    let collected = tokio::task::spawn_blocking(move || {
        let script = |e: String| (e, FailureClass::Script);
        let _lock = c.objects.lock_shared().map_err(|e| script(e.to_string()))?;
        let used = c.artifact_bytes.load(Ordering::Relaxed);
        let run_left = c.artifact_limits.max_run_size.saturating_sub(used);
        let limits = if run_left < c.artifact_limits.max_job_size {
            CollectLimits {
                max_bytes: run_left,
                limit: c.artifact_limits.max_run_size,
                what: "the run's limit (artifacts.max_run_size)",
                write,
            }
        } else {
            CollectLimits {
                max_bytes: c.artifact_limits.max_job_size,
                limit: c.artifact_limits.max_job_size,
                what: "a job's limit (artifacts.max_job_size)",
                write,
            }
        };
        let paths = with_untracked(&spec.paths, spec.untracked, &root);
        let got = manifest::collect_within(&c.objects, &root, &paths, &spec.exclude, &limits)
            .map_err(|e| (e.to_string(), store_failure(&e)))?;
        c.artifact_bytes.fetch_add(got.bytes, Ordering::Relaxed);
        let m = got.manifest;
        let d = manifest::save(&c.objects, &m).map_err(|e| script(e.to_string()))?;
        let expires = spec
            .expire_in
            .map(|e| crate::store::now_ms().saturating_add(u64::try_from(e.as_millis()).unwrap_or(u64::MAX)));
        c.index
            .put_artifact(&c.run_id, &name, &d, expires)
            .map_err(|e| (format!("cannot record artifacts: {e}"), FailureClass::Infra))?;
        Ok((m.entries.len(), d, got.skipped))
    })
    .await
    .unwrap_or_else(|e| Err((format!("background task failed: {e}"), FailureClass::Infra)));
    guard.abort();
    match collected {
        Ok((n, d, skipped)) => {
            if !skipped.is_empty() {
                note(
                    a,
                    &step,
                    format!(
                        "warning: left out {} path(s) that are not files: {}",
                        skipped.len(),
                        skipped.join(", ")
                    ),
                )
                .await;
            }
            note(a, &step, format!("kept {n} artifact file(s), manifest {d}")).await;
            Ok(())
        }
        Err((e, class)) => {
            let msg = format!("artifacts: {e}");
            note(a, &step, msg.clone()).await;
            Err((msg, class))
        }
    }
}

/// The project files a job's cache inputs are matched against.
fn project_files(ctx: &RunContext) -> Result<Vec<PathBuf>, String> {
    if ctx.in_place {
        crate::exec::workspace::project_files(&ctx.project_dir, &ctx.state_dir)
            .map_err(|e| format!("cannot list {}: {e}", ctx.project_dir.display()))
    } else {
        Ok(ctx.files.clone())
    }
}

/// Replaces a value that contains a secret by its hash, so no secret is
/// written to the index in clear.
fn scrub(ctx: &RunContext, value: String) -> String {
    if ctx
        .secrets
        .iter()
        .any(|(_, s)| !s.is_empty() && value.contains(s.as_str()))
    {
        format!("sha256:{}", Digest::of(value.as_bytes()))
    } else {
        value
    }
}

/// Every component of the job's cache key. See docs/caching.md for the list.
pub async fn key_components(ctx: &Arc<RunContext>, a: &Attempt, job: &Job) -> Result<Components, String> {
    let Some(spec) = &job.cache else {
        return Err("the job declares no `cache: {inputs}`".into());
    };
    let mut c = Components::new();
    // The definition, field by field (positions are not serialized; what
    // the UI shows with the job, its facts, is no part of it).
    let fields = |v: serde_json::Value| match v {
        serde_json::Value::Object(m) => m.into_iter().collect::<Vec<_>>(),
        _ => Vec::new(),
    };
    for (k, v) in fields(serde_json::to_value(job).map_err(|e| e.to_string())?) {
        if k != "steps" && k != "name" && k != "facts" {
            c.insert(format!("job.{k}"), scrub(ctx, v.to_string()));
        }
    }
    for step in &job.steps {
        for (k, v) in fields(serde_json::to_value(step).map_err(|e| e.to_string())?) {
            c.insert(format!("step.{}.{k}", step.name), scrub(ctx, v.to_string()));
        }
    }
    c.insert("executor", if ctx.containers { "containers" } else { "shell" });
    // The environment the steps start from, without secrets and volatile names.
    let ws = ctx.project_dir.clone();
    let scope = ctx.scope(job, &[], ctx.predefined(job, a.attempt, "", &ws));
    let env = scope
        .resolve_all()
        .map_err(|(name, e)| format!("variable `{name}`: {e}"))?;
    for (name, value) in env {
        if VOLATILE_VARS.contains(&name.as_str()) {
            continue;
        }
        if ctx.secrets.iter().any(|(s, _)| *s == name) {
            c.insert(format!("secret.{name}"), "(set; its value is not part of the key)");
        } else {
            c.insert(format!("env.{name}"), scrub(ctx, value));
        }
    }
    for (job_name, status) in a.statuses.iter() {
        c.insert(format!("status.{job_name}"), status.clone());
    }
    // Image IDs: a tag moved to a new image changes the key.
    if ctx.containers {
        let logins = super::runner::pull_logins(ctx, a, job, job.container.extras.credentials.as_ref())?;
        let mut images: Vec<(String, crate::exec::JobLogins)> = Vec::new();
        for step in &job.steps {
            if let Some(i) = &step.image {
                images.push((scope.expand(i).map_err(|e| format!("image: {e}"))?, logins.clone()));
            }
        }
        for s in &job.services {
            let own = super::runner::pull_logins(ctx, a, job, s.options.extras.credentials.as_ref())?;
            images.push((s.image.clone(), own));
        }
        images.sort_by(|x, y| x.0.cmp(&y.0));
        images.dedup_by(|x, y| x.0 == y.0);
        for (image, logins) in images {
            let id = ctx.executor.image_id(&image, job.container.pull, &logins).await?;
            c.insert(format!("image.{image}"), id);
        }
    }
    // Input files, then the artifacts the job receives.
    let (cx, patterns) = (ctx.clone(), spec.inputs.clone());
    let inputs = blocking(move || {
        let files = project_files(&cx)?;
        cache::hash_inputs(&cx.project_dir, &files, &patterns).map_err(|e| e.to_string())
    })
    .await?;
    for (path, digest) in inputs {
        c.insert(format!("input:{path}"), digest.to_string());
    }
    for producer in producers(job) {
        let m = ctx.index.artifact(&ctx.run_id, &producer).map_err(|e| e.to_string())?;
        c.insert(
            format!("artifacts.{producer}"),
            m.map_or_else(|| "none".to_string(), |d| d.to_string()),
        );
    }
    for (i, dc) in job.dir_caches.iter().enumerate().filter(|(_, dc)| dc.policy.pulls()) {
        let key = dir_cache_key(ctx, a, job, &dc.key).await?;
        let m = ctx.index.dir_cache_get(&key).map_err(|e| e.to_string())?;
        let name = if i == 0 {
            "dir_cache".to_string()
        } else {
            format!("dir_cache.{i}")
        };
        c.insert(name, m.map_or_else(|| "none".to_string(), |d| d.to_string()));
    }
    Ok(c)
}

/// Looks the job up in the result cache. On a hit the job's artifacts become
/// this run's, its log is replayed, and the outcome is returned; on a miss
/// (or with `--no-cache`) the key is returned for storing after the run.
pub async fn lookup(ctx: &Arc<RunContext>, a: &Attempt, job: &Job) -> Result<Outcome, Option<CacheKey>> {
    let step: Arc<str> = Arc::from("cache");
    let components = match key_components(ctx, a, job).await {
        Ok(c) => c,
        Err(e) => {
            note(a, &step, format!("cannot compute the cache key ({e}); running the job")).await;
            return Err(None);
        }
    };
    let key = components.key();
    let entry = if ctx.use_cache {
        ctx.index.cache_get(&key).ok().flatten()
    } else {
        note(a, &step, "--no-cache: not looking the result up".into()).await;
        None
    };
    // A hit whose objects are gone is a miss, never a hit on missing data.
    let usable = entry.filter(|e| entry_present(ctx, e));
    let record = JobKey {
        run_id: ctx.run_id.clone(),
        job: job.name.clone(),
        pipeline: ctx.pipeline.name.clone(),
        key: key.clone(),
        components: components.to_json(),
        hit: usable.is_some(),
    };
    if let Err(e) = ctx.index.put_job_key(&record) {
        note(a, &step, format!("cannot record the cache key: {e}")).await;
    }
    let Some(entry) = usable else {
        if ctx.use_cache {
            note(
                a,
                &step,
                format!(
                    "cache miss, key {}; `trackside cache why {} {}` says why",
                    &key[..16],
                    ctx.run_id,
                    job.name
                ),
            )
            .await;
        }
        return Err(Some(CacheKey { key, components }));
    };
    match replay(ctx, a, job, &entry).await {
        Ok(()) => Ok(Outcome {
            cached: Some(key),
            ..Outcome::success()
        }),
        Err(e) => {
            note(a, &step, format!("cannot use the cached result ({e}); running the job")).await;
            Err(Some(CacheKey { key, components }))
        }
    }
}

fn entry_present(ctx: &RunContext, e: &CacheEntry) -> bool {
    let log_ok = e.log.is_none_or(|d| ctx.objects.contains(&d));
    let manifest_ok = e.manifest.is_none_or(|d| {
        manifest::load(&ctx.objects, &d).is_ok_and(|m| {
            m.entries.iter().all(|en| match &en.kind {
                manifest::EntryKind::File { object, .. } => ctx.objects.contains(object),
                manifest::EntryKind::Symlink { .. } => true,
            })
        })
    });
    log_ok && manifest_ok
}

/// Makes a cached result this run's: artifacts, log, and in-place files.
async fn replay(ctx: &Arc<RunContext>, a: &Attempt, job: &Job, e: &CacheEntry) -> Result<(), String> {
    let step: Arc<str> = Arc::from("cache");
    note(
        a,
        &step,
        format!("CACHED: key {} from run {}; replaying its log", e.key, e.run_id),
    )
    .await;
    if let Some(m) = e.manifest {
        let (c, name) = (ctx.clone(), job.name.clone());
        blocking(move || {
            let _lock = c.objects.lock_shared().map_err(|e| e.to_string())?;
            if c.in_place {
                let m = manifest::load(&c.objects, &m).map_err(|e| e.to_string())?;
                manifest::restore(&c.objects, &m, &c.project_dir).map_err(|e| e.to_string())?;
            }
            c.index
                .put_artifact(&c.run_id, &name, &m, None)
                .map_err(|e| e.to_string())
        })
        .await?;
    }
    if let Some(log) = e.log {
        let objects = ctx.objects.clone();
        let bytes = blocking(move || objects.get_bytes(&log).map_err(|e| e.to_string())).await?;
        for line in String::from_utf8_lossy(&bytes).lines() {
            let Some(entry) = crate::store::parse_log_line(line) else {
                continue;
            };
            // Step markers, and trackside's own notes about the earlier run.
            if entry.stream == "step" || entry.text.starts_with("trackside: ") {
                continue;
            }
            let stream = if entry.stream == "stderr" {
                Stream::Stderr
            } else {
                Stream::Stdout
            };
            let _ =
                a.tx.send(RunnerMsg::Log {
                    job: a.job,
                    attempt: a.attempt,
                    step: Arc::from(entry.step.as_str()),
                    stream,
                    text: entry.text,
                    partial: false,
                })
                .await;
        }
    }
    Ok(())
}

/// Stores a finished attempt's result under its key: the artifacts the
/// attempt recorded and its log (already masked). Called by the actor once
/// the log is complete.
pub fn save(ctx: &RunContext, job: &Job, attempt: u32, key: &CacheKey) -> Result<(), String> {
    let _lock = ctx.objects.lock_shared().map_err(|e| e.to_string())?;
    let log_file = crate::store::log_path(&ctx.run_dir, &job.name, attempt);
    let log = match ctx.objects.put_file(&log_file) {
        Ok((d, _)) => Some(d),
        Err(ObjectError::Io(crate::store::IoFailure { source, .. }))
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            None
        }
        Err(e) => return Err(e.to_string()),
    };
    let manifest = ctx.index.artifact(&ctx.run_id, &job.name).map_err(|e| e.to_string())?;
    let now = crate::store::now_ms();
    ctx.index
        .cache_put(&CacheEntry {
            key: key.key.clone(),
            pipeline: ctx.pipeline.name.clone(),
            job: job.name.clone(),
            run_id: ctx.run_id.clone(),
            manifest,
            log,
            components: key.components.to_json(),
            created_ms: now,
            last_used_ms: now,
        })
        .map_err(|e| e.to_string())
}

/// The index key of a directory cache: scoped by pipeline so unrelated
/// pipelines never share one.
pub async fn dir_cache_key(ctx: &Arc<RunContext>, a: &Attempt, job: &Job, key: &DirCacheKey) -> Result<String, String> {
    let name = match key {
        DirCacheKey::Name(template) => {
            let ws = ctx.project_dir.clone();
            let scope = ctx.scope(job, &[], ctx.predefined(job, a.attempt, "", &ws));
            scope
                .expand(template)
                .map_err(|e| format!("cache key `{template}`: {e}"))?
        }
        DirCacheKey::Files { files, prefix } => {
            let (cx, patterns) = (ctx.clone(), files.clone());
            let hashed = blocking(move || {
                let list = project_files(&cx)?;
                cache::hash_inputs(&cx.project_dir, &list, &patterns).map_err(|e| e.to_string())
            })
            .await?;
            let mut c = Components::default();
            for (path, d) in hashed {
                c.insert(path, d.to_string());
            }
            let short = &c.key()[..16];
            match prefix {
                Some(p) => format!("{p}-{short}"),
                None => short.to_string(),
            }
        }
    };
    Ok(format!("{}/{name}", ctx.pipeline.name))
}

/// Resolves the job's directory-cache keys once, when the job starts (as
/// GitLab does: files the job changes do not move a key), and restores each
/// cache into the workspace when its policy pulls (from the first of its
/// `fallback_keys` that has one when its own key has none). Returns the
/// keys, one per cache.
pub async fn pull_dir_caches(
    ctx: &Arc<RunContext>,
    a: &Attempt,
    job: &Job,
    ws: &Path,
) -> Result<Vec<String>, DirCacheError> {
    let mut keys = Vec::with_capacity(job.dir_caches.len());
    for dc in &job.dir_caches {
        let key = dir_cache_key(ctx, a, job, &dc.key).await.map_err(DirCacheError::Key)?;
        keys.push(key.clone());
        if !dc.policy.pulls() {
            continue;
        }
        let step: Arc<str> = Arc::from("cache");
        let mut found = None;
        // Fallback keys take variables as `key` does.
        let mut candidates = vec![key.clone()];
        for f in &dc.fallback_keys {
            let fallback = dir_cache_key(ctx, a, job, &DirCacheKey::Name(f.clone()))
                .await
                .map_err(DirCacheError::Key)?;
            candidates.push(fallback);
        }
        for candidate in candidates {
            if let Some(m) = ctx.index.dir_cache_get(&candidate)? {
                found = Some((candidate, m));
                break;
            }
        }
        let Some((from, m)) = found else {
            let then = if dc.policy.pushes() {
                "; it is saved after the job"
            } else {
                ""
            };
            note(a, &step, format!("directory cache `{key}` is empty{then}")).await;
            continue;
        };
        let (c, dest) = (ctx.clone(), ws.to_path_buf());
        let restored = blocking(move || {
            let m = manifest::load(&c.objects, &m).map_err(|e| e.to_string())?;
            manifest::restore(&c.objects, &m, &dest).map_err(|e| e.to_string())?;
            Ok(m.entries.len())
        })
        .await;
        match restored {
            Ok(n) if from == key => note(a, &step, format!("restored {n} file(s) from directory cache `{key}`")).await,
            Ok(n) => {
                note(
                    a,
                    &step,
                    format!("restored {n} file(s) from directory cache `{from}` (fallback for `{key}`)"),
                )
                .await
            }
            // A damaged cache is not the job's fault: it starts without it.
            Err(e) => {
                note(
                    a,
                    &step,
                    format!("directory cache `{from}` is damaged ({e}); starting without it"),
                )
                .await;
                let _ = ctx.index.dir_cache_remove(&from);
            }
        }
    }
    Ok(keys)
}

/// Saves the job's directory caches under their `keys` (from
/// [`pull_dir_caches`]) when their policy pushes and their `when` matches
/// how the job ended (`succeeded`).
pub async fn push_dir_caches(
    ctx: &Arc<RunContext>,
    a: &Attempt,
    job: &Job,
    ws: &Path,
    keys: &[String],
    succeeded: bool,
) -> Result<(), (String, FailureClass)> {
    for (dc, key) in job.dir_caches.iter().zip(keys) {
        let wanted = match dc.when {
            ArtifactWhen::OnSuccess => succeeded,
            ArtifactWhen::OnFailure => !succeeded,
            ArtifactWhen::Always => true,
        };
        if dc.policy.pushes() && wanted {
            push_dir_cache(ctx, a, dc, ws, key).await?;
        }
    }
    Ok(())
}

async fn push_dir_cache(
    ctx: &Arc<RunContext>,
    a: &Attempt,
    dc: &crate::pipeline::model::DirCache,
    ws: &Path,
    key: &str,
) -> Result<(), (String, FailureClass)> {
    let step: Arc<str> = Arc::from("cache");
    let key = key.to_string();
    let (c, root, k) = (ctx.clone(), ws.to_path_buf(), key.clone());
    let (paths, untracked) = (dc.paths.clone(), dc.untracked);
    let (write, guard) = write_limits(ctx, a);
    let saved = tokio::task::spawn_blocking(move || {
        let paths = with_untracked(&paths, untracked, &root);
        let script = |e: String| (e, FailureClass::Script);
        let _lock = c.objects.lock_shared().map_err(|e| script(e.to_string()))?;
        let limits = CollectLimits {
            write,
            ..CollectLimits::default()
        };
        let m = manifest::collect_within(&c.objects, &root, &paths, &[], &limits)
            .map_err(|e| (e.to_string(), store_failure(&e)))?
            .manifest;
        let d = manifest::save(&c.objects, &m).map_err(|e| script(e.to_string()))?;
        c.index
            .dir_cache_put(&k, &d, &c.run_id)
            .map_err(|e| script(e.to_string()))?;
        Ok(m.entries.len())
    })
    .await
    .unwrap_or_else(|e| Err((format!("background task failed: {e}"), FailureClass::Infra)));
    guard.abort();
    let saved = saved?;
    note(a, &step, format!("saved {saved} file(s) to directory cache `{key}`")).await;
    Ok(())
}

/// Largest generated child pipeline read from an artifact.
const MAX_GENERATED: u64 = 1 << 20;

/// Why a file of a job's artifacts could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactFileError {
    #[error("{job} kept no artifacts in this run")]
    NoArtifacts { job: String },
    #[error("{job}'s artifacts hold no `{path}`; list it in the job's `artifacts:paths`")]
    Missing { job: String, path: String },
    #[error("`{path}` of {job}'s artifacts is not a file")]
    NotAFile { job: String, path: String },
    #[error("`{path}` is {size} bytes; a generated pipeline may be at most 1 MiB")]
    TooBig { path: String, size: u64 },
    #[error("`{path}` is not UTF-8 text")]
    NotText { path: String },
    #[error("reading the artifacts of {job}: {message}")]
    Store { job: String, message: String },
}

/// The text of file `path` among the artifacts job `job` kept in this run
/// (a generated child pipeline), at most 1 MiB.
pub fn artifact_text(ctx: &RunContext, job: &str, path: &str) -> Result<String, ArtifactFileError> {
    let store = |message: String| ArtifactFileError::Store {
        job: job.to_string(),
        message,
    };
    let digest = ctx
        .index
        .artifact(&ctx.run_id, job)
        .map_err(|e| store(e.to_string()))?
        .ok_or_else(|| ArtifactFileError::NoArtifacts { job: job.to_string() })?;
    let m = manifest::load(&ctx.objects, &digest).map_err(|e| store(e.to_string()))?;
    let want = path.trim_start_matches("./");
    let entry = m
        .entries
        .iter()
        .find(|e| e.path == want)
        .ok_or_else(|| ArtifactFileError::Missing {
            job: job.to_string(),
            path: path.to_string(),
        })?;
    let manifest::EntryKind::File { object, size } = &entry.kind else {
        return Err(ArtifactFileError::NotAFile {
            job: job.to_string(),
            path: path.to_string(),
        });
    };
    if *size > MAX_GENERATED {
        return Err(ArtifactFileError::TooBig {
            path: path.to_string(),
            size: *size,
        });
    }
    let bytes = ctx.objects.get_bytes(object).map_err(|e| store(e.to_string()))?;
    String::from_utf8(bytes).map_err(|_| ArtifactFileError::NotText { path: path.to_string() })
}
