//! The store commands of the CLI: `artifacts`, `store verify`, `gc`,
//! `cache why`. Formatting only; the work is in `trackside::store`.

use std::path::Path;
use std::time::Duration;

use trackside::store::cache::{self, Change, Components};
use trackside::store::gc::{self, Policy};
use trackside::store::index::Index;
use trackside::store::manifest::{self, EntryKind, Manifest};
use trackside::store::objects::{Digest, ObjectStore};
use trackside::store::{self, StoreError};

use super::{Fail, write_out};

pub use trackside::store::gc::parse_size;

/// The run id of a RUN argument (id, unique prefix, or `last`).
fn run_id(state: &Path, run: &str) -> Result<String, Fail> {
    let dir = store::find_run(state, run)?;
    Ok(dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default())
}

/// The artifact manifest a job of a run recorded.
fn job_manifest(index: &Index, objects: &ObjectStore, run: &str, job: &str) -> Result<Manifest, Fail> {
    let digest = index
        .artifact(run, job)?
        .ok_or_else(|| Fail(format!("job `{job}` kept no artifacts in run {run}"), 2))?;
    Ok(manifest::load(objects, &digest)?)
}

pub fn artifacts(state: &Path, args: &[String], output: Option<&Path>) -> Result<u8, Fail> {
    let objects = ObjectStore::open(&state.join("objects"))?;
    let index = Index::open(state)?;
    if args.first().map(String::as_str) == Some("get") {
        let (Some(run), Some(job)) = (args.get(1), args.get(2)) else {
            return Err(Fail("usage: trackside artifacts get RUN JOB [PATH] -o DIR".into(), 2));
        };
        let Some(out) = output else {
            return Err(Fail(
                "`artifacts get` needs `-o DIR`: where to write the files".into(),
                2,
            ));
        };
        let run = run_id(state, run)?;
        let mut m = job_manifest(&index, &objects, &run, job)?;
        if let Some(prefix) = args.get(3) {
            let prefix = prefix.trim_end_matches('/');
            m.entries
                .retain(|e| e.path == prefix || e.path.starts_with(&format!("{prefix}/")));
            if m.entries.is_empty() {
                return Err(Fail(format!("no artifact of `{job}` matches `{prefix}`"), 2));
            }
        }
        manifest::restore(&objects, &m, out)?;
        eprintln!(
            "wrote {} file(s) to {} (each verified against its hash)",
            m.entries.len(),
            out.display()
        );
        return Ok(0);
    }
    let run = run_id(state, &args[0])?;
    let jobs: Vec<String> = match args.get(1) {
        Some(j) => vec![j.clone()],
        None => index.artifacts(Some(&run))?.into_iter().map(|a| a.job).collect(),
    };
    if jobs.is_empty() {
        outln!("run {run} kept no artifacts");
        return Ok(0);
    }
    for job in jobs {
        let m = job_manifest(&index, &objects, &run, &job)?;
        let total: u64 = m
            .entries
            .iter()
            .map(|e| match &e.kind {
                EntryKind::File { size, .. } => *size,
                EntryKind::Symlink { .. } => 0,
            })
            .sum();
        outln!("{job}: {} file(s), {total} bytes", m.entries.len());
        for e in &m.entries {
            match &e.kind {
                EntryKind::File { object, size } => {
                    let short: String = object.to_string().chars().take(12).collect();
                    outln!("  {:o}  {size:>10}  {short}  {}", e.mode, e.path);
                }
                EntryKind::Symlink { target } => {
                    outln!("  link  {:>10}  {:12}  {} -> {target}", "", "", e.path)
                }
            }
        }
    }
    Ok(0)
}

/// Why a manifest cannot be restored, if it cannot.
fn manifest_problem(objects: &ObjectStore, d: &Digest) -> Option<String> {
    match manifest::load(objects, d) {
        Err(e) => Some(e.to_string()),
        Ok(m) => m.entries.iter().find_map(|e| match &e.kind {
            EntryKind::File { object, .. } if !objects.contains(object) => {
                Some(format!("file `{}` ({object}) is missing", e.path))
            }
            _ => None,
        }),
    }
}

pub fn verify(state: &Path, repair: bool) -> Result<u8, Fail> {
    let objects = ObjectStore::open(&state.join("objects"))?;
    let index = match Index::open_checked(state) {
        Ok(i) => i,
        Err(StoreError::IndexCorrupt { path, message }) if repair => {
            outln!("the index {} is damaged ({message}); rebuilding it", path.display());
            let r = Index::rebuild(state)?;
            outln!(
                "moved the damaged index to {}; named {} artifact set(s) again from the run records; cache entries and directory caches start afresh",
                r.moved_to.display(),
                r.artifact_sets
            );
            Index::open(state)?
        }
        Err(StoreError::IndexCorrupt { path, message }) => {
            outln!(
                "the index {} is damaged ({message}); `trackside store verify --repair` rebuilds it",
                path.display()
            );
            // Objects are checked all the same.
            let all = objects.list()?;
            let corrupt = all.iter().filter(|d| !objects.verify(d).unwrap_or(false)).count();
            outln!("{} object(s) checked: {corrupt} corrupt", all.len());
            return Ok(1);
        }
        Err(e) => return Err(e.into()),
    };

    let all = objects.list()?;
    let mut corrupt = Vec::new();
    for d in &all {
        if !objects.verify(d)? {
            corrupt.push(*d);
        }
    }
    let removed = if repair { " (removed)" } else { "" };
    let (temps, temp_bytes) = objects.stale_temps(!repair);
    if temps > 0 {
        outln!(
            "{temps} partial file(s) ({temp_bytes} bytes) left by crashed writers in {}{removed}",
            state.join("objects/tmp").display()
        );
    }
    for d in &corrupt {
        outln!("corrupt object {d}{removed}");
        if repair {
            objects.remove(d)?;
        }
    }
    // Index rows that point at a manifest, file or log that is gone.
    let mut dangling = 0;
    for a in index.artifacts(None)? {
        if let Some(p) = manifest_problem(&objects, &a.manifest) {
            dangling += 1;
            outln!("run {} job {}: {p}{removed}", a.run_id, a.job);
            if repair {
                index.remove_artifact(&a.run_id, &a.job)?;
            }
        }
    }
    for e in index.cache_entries()? {
        let problem = e.manifest.and_then(|m| manifest_problem(&objects, &m)).or_else(|| {
            e.log
                .filter(|l| !objects.contains(l))
                .map(|l| format!("its log ({l}) is missing"))
        });
        if let Some(p) = problem {
            dangling += 1;
            outln!(
                "cache entry {} ({}): {p}{removed}",
                &e.key[..16.min(e.key.len())],
                e.job
            );
            if repair {
                index.cache_remove(&e.key)?;
            }
        }
    }
    for d in index.dir_caches()? {
        if let Some(p) = manifest_problem(&objects, &d.manifest) {
            dangling += 1;
            outln!("directory cache `{}`: {p}{removed}", d.key);
            if repair {
                index.dir_cache_remove(&d.key)?;
            }
        }
    }
    outln!(
        "{} object(s) checked: {} corrupt{}, {dangling} index entr{} pointing at missing data{}",
        all.len(),
        corrupt.len(),
        if repair && !corrupt.is_empty() {
            " and removed"
        } else {
            ""
        },
        if dangling == 1 { "y" } else { "ies" },
        if repair && dangling > 0 { " (removed)" } else { "" }
    );
    Ok(if corrupt.is_empty() && dangling == 0 { 0 } else { 1 })
}

pub struct GcFlags {
    pub keep_last: Option<usize>,
    pub max_age: Option<Duration>,
    pub max_size: Option<u64>,
    pub unused_for: Option<Duration>,
    pub dry_run: bool,
}

pub fn gc(state: &Path, flags: GcFlags) -> Result<u8, Fail> {
    let config = gc::config_policy(state)?;
    let policy = Policy {
        keep_last: flags.keep_last.or(config.keep_last),
        max_age: flags.max_age.or(config.max_age),
        max_size: flags.max_size.or(config.max_size),
        unused_for: flags.unused_for.or(config.unused_for),
        dry_run: flags.dry_run,
    };
    if policy.is_empty() {
        return Err(Fail(
            format!(
                "say what to keep: --keep-last N, --max-age AGE, --max-size SIZE, --unused-for AGE, or `gc:` in {}",
                state.join("config.yml").display()
            ),
            2,
        ));
    }
    let r = gc::collect_garbage(state, &policy)?;
    let verb = if flags.dry_run { "would remove" } else { "removed" };
    if !flags.dry_run {
        let kept = remove_kept_containers(&r.runs_removed);
        if kept > 0 {
            outln!("removed {kept} container(s) kept by --keep-failed (of removed runs, or older than 7 days)");
        }
    }
    // Logs of live services' replicas that are gone (never a running one's).
    if let Some(age) = policy.max_age {
        let (files, bytes) = trackside::deploy::service::prune_logs(state, age, flags.dry_run);
        if files > 0 {
            outln!("{verb} {files} log(s) ({bytes} bytes) of service replicas no longer running");
        }
    }
    if r.spares_removed > 0 {
        outln!(
            "{verb} {} spare workspace(s) kept for later jobs in {}",
            r.spares_removed,
            state.join("spares").display()
        );
    }
    if r.temp_files_removed > 0 {
        outln!(
            "{verb} {} partial file(s) ({} bytes) that crashed writers left in {}",
            r.temp_files_removed,
            r.temp_bytes_freed,
            state.join("objects/tmp").display()
        );
    }
    outln!(
        "{verb} {} run(s), {} expired artifact set(s), {} cache entr{}, {} directory cache(s) and {} object(s) ({} bytes); {} object(s) ({} bytes) still in use",
        r.runs_removed.len(),
        r.artifacts_expired,
        r.cache_entries_removed,
        if r.cache_entries_removed == 1 { "y" } else { "ies" },
        r.dir_caches_removed,
        r.objects_removed,
        r.bytes_freed,
        r.objects_kept,
        r.bytes_kept
    );
    Ok(0)
}

/// Containers `--keep-failed` kept for runs that are gone, or for more than
/// [`KEPT_CONTAINER_AGE`]; nothing when no Docker daemon answers.
fn remove_kept_containers(runs: &[String]) -> usize {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
        return 0;
    };
    rt.block_on(async {
        match trackside::exec::docker::DockerExecutor::connect().await {
            Ok(d) => d.remove_kept(runs, KEPT_CONTAINER_AGE).await,
            Err(_) => 0,
        }
    })
}

/// How long a container kept by `--keep-failed` outlives `gc`.
pub const KEPT_CONTAINER_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// A component name for people: `input:src/a.rs` -> `input file src/a.rs`.
fn describe(name: &str) -> String {
    if let Some(p) = name.strip_prefix("input:") {
        format!("input file {p}")
    } else if let Some(v) = name.strip_prefix("env.") {
        format!("variable {v}")
    } else if let Some(rest) = name.strip_prefix("step.") {
        match rest.rsplit_once('.') {
            Some((step, field)) => format!("step `{step}` {field}"),
            None => format!("step {rest}"),
        }
    } else if let Some(f) = name.strip_prefix("job.") {
        format!("job {f}")
    } else if let Some(i) = name.strip_prefix("image.") {
        format!("image {i}")
    } else if let Some(p) = name.strip_prefix("artifacts.") {
        format!("artifacts of {p}")
    } else {
        name.to_string()
    }
}

pub fn cache_why(state: &Path, run: &str, job: &str) -> Result<u8, Fail> {
    let run = run_id(state, run)?;
    let index = Index::open(state)?;
    let Some(this) = index.job_key(&run, job)? else {
        return Err(Fail(
            format!(
                "job `{job}` of run {run} computed no cache key: it declares no `cache: {{inputs}}`, or it did not start"
            ),
            2,
        ));
    };
    let now = Components::from_json(&this.components).unwrap_or_default();
    if this.hit {
        let from = index
            .cache_get(&this.key)?
            .map(|e| format!(" (stored by run {})", e.run_id))
            .unwrap_or_default();
        outln!("{job} was a cache HIT in run {run}: key {}{from}", this.key);
        return Ok(0);
    }
    outln!("{job} was a cache MISS in run {run}: key {}", this.key);
    let Some(last) = index.last_entry_of(&this.pipeline, job, &this.key)? else {
        if index.cache_get(&this.key)?.is_some() {
            outln!(
                "the key matched an entry, but the run was made with --no-cache or the entry's objects were missing"
            );
        } else {
            outln!("no earlier result of `{job}` is stored: this was its first cached run (or gc removed the others)");
        }
        return Ok(0);
    };
    let before = Components::from_json(&last.components).unwrap_or_default();
    let changes = cache::diff(&before, &now);
    outln!(
        "compared with the last stored result (run {}, key {}): {} change(s)",
        last.run_id,
        &last.key[..16.min(last.key.len())],
        changes.len()
    );
    for c in changes {
        match c {
            Change::Changed { name, old, new } => outln!(
                "  changed  {}: {} -> {}",
                describe(&name),
                cache::short(&old),
                cache::short(&new)
            ),
            Change::Added { name, value } => outln!("  added    {}: {}", describe(&name), cache::short(&value)),
            Change::Removed { name, value } => outln!("  removed  {}: {}", describe(&name), cache::short(&value)),
        }
    }
    Ok(0)
}
