//! Garbage collection: drop runs, expired artifacts and unused cache entries
//! by policy, then every object nothing kept refers to.
//!
//! Mark and sweep under the store's exclusive lock: writers hold it shared
//! from storing objects until the index row naming them is written, so
//! nothing a running job has stored can be swept. Runs still running are
//! always kept, with all their artifacts; a crashed run (its trackside is
//! gone, see [`super::RunMeta::crashed`]) counts as finished.
//!
//! What keeps an object alive (a "root"): a kept run's artifact manifests,
//! a cache entry (manifest and log), a directory cache. The size policy
//! drops the least recently used roots until the live objects fit.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::index::Index;
use super::manifest::{self, EntryKind};
use super::objects::{Digest, ObjectStore};
use super::{StoreError, list_runs, runs_dir};

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Policy {
    /// Keep at most this many finished runs per pipeline (newest first).
    pub keep_last: Option<usize>,
    /// Drop finished runs older than this.
    pub max_age: Option<Duration>,
    /// Then drop least recently used runs and cache entries until live objects fit.
    pub max_size: Option<u64>,
    /// Drop cache entries and directory caches unused for this long.
    pub unused_for: Option<Duration>,
    /// Report without deleting.
    pub dry_run: bool,
}

impl Policy {
    pub fn is_empty(&self) -> bool {
        self.keep_last.is_none() && self.max_age.is_none() && self.max_size.is_none() && self.unused_for.is_none()
    }
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub runs_removed: Vec<String>,
    pub artifacts_expired: usize,
    pub cache_entries_removed: usize,
    pub dir_caches_removed: usize,
    pub objects_removed: usize,
    pub bytes_freed: u64,
    pub objects_kept: usize,
    pub bytes_kept: u64,
    /// Partial files of writers that crashed (`objects/tmp`).
    pub temp_files_removed: usize,
    pub temp_bytes_freed: u64,
    /// Spare workspaces kept for later jobs (`<state>/spares`).
    pub spares_removed: usize,
}

/// `gc:` in `<state>/config.yml`; flags override it field by field.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigGc {
    keep_last: Option<usize>,
    max_age: Option<String>,
    max_size: Option<String>,
    unused_for: Option<String>,
}

/// `artifacts:` in `<state>/config.yml`: what one job's and one run's
/// artifacts may take, and the free space the store keeps.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigArtifacts {
    max_job_size: Option<String>,
    max_run_size: Option<String>,
    min_free: Option<String>,
}

/// `ui:` in `<state>/config.yml`: the terminal UI's settings.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigUi {
    /// Clicks and the wheel (default on; `--no-mouse` turns it off for one run).
    mouse: Option<bool>,
    /// The terminal bell on a failed job, a waiting gate and the run's end
    /// (default on).
    bell: Option<bool>,
}

/// `notify:` in `<state>/config.yml`: where notifications go, besides
/// `--notify` and `--notify-cmd` (this file is the user's alone: a
/// webhook's URL holds a token, and a command line is visible to others).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigNotify {
    #[serde(default)]
    webhooks: Vec<String>,
    #[serde(default)]
    commands: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
struct Config {
    #[serde(default)]
    notify: ConfigNotify,
    #[serde(default)]
    gc: ConfigGc,
    #[serde(default)]
    artifacts: ConfigArtifacts,
    #[serde(default)]
    ui: ConfigUi,
    #[serde(default)]
    access: ConfigAccess,
    #[serde(default)]
    breakers: ConfigBreakers,
    /// `executor: swarm`: the default `--executor`.
    executor: Option<String>,
    #[serde(default)]
    swarm: ConfigSwarm,
}

/// `swarm:` in `<state>/config.yml` (docs/swarm.md).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigSwarm {
    manager: Option<String>,
    registry: Option<String>,
    pending_timeout: Option<String>,
    max_ship: Option<String>,
    max_return: Option<String>,
}

/// The executor and swarm settings of `<state>/config.yml`, as written
/// (`None`: not set).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SwarmConfig {
    /// `executor:` (`auto`, `shell`, `docker` or `swarm`).
    pub executor: Option<String>,
    pub manager: Option<String>,
    pub registry: Option<String>,
    pub pending_timeout: Option<Duration>,
    pub max_ship: Option<u64>,
    pub max_return: Option<u64>,
}

/// Reads `executor:` and `swarm:` of `<state>/config.yml`.
pub fn swarm_config(state: &Path) -> Result<SwarmConfig, StoreError> {
    let (cfg, path) = read_config(state)?;
    let bad = |message: String| StoreError::Config {
        path: path.clone(),
        message,
    };
    if let Some(e) = cfg.executor.as_deref()
        && !["auto", "shell", "docker", "swarm"].contains(&e)
    {
        return Err(bad(format!("executor: `{e}` is not one of auto, shell, docker, swarm")));
    }
    let s = &cfg.swarm;
    let size = |v: &Option<String>, key: &str| {
        v.as_deref()
            .map(|t| parse_size(t).map_err(|e| bad(format!("swarm.{key}: {e}"))))
            .transpose()
    };
    let pending_timeout = s
        .pending_timeout
        .as_deref()
        .map(|t| {
            humantime::parse_duration(t).map_err(|e| bad(format!("swarm.pending_timeout: `{t}`: {e}; e.g. `30s`")))
        })
        .transpose()?;
    Ok(SwarmConfig {
        executor: cfg.executor.clone(),
        manager: s.manager.clone(),
        registry: s.registry.clone(),
        pending_timeout,
        max_ship: size(&s.max_ship, "max_ship")?,
        max_return: size(&s.max_return, "max_return")?,
    })
}

/// `breakers:` in `<state>/config.yml`: when a dependency's circuit
/// breaker opens, and for how long.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigBreakers {
    failures: Option<u32>,
    window: Option<String>,
    cooldown: Option<String>,
}

/// When a circuit breaker opens: `failures` failures on one dependency
/// within `window`; it lets a probe through after `cooldown`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    pub failures: u32,
    pub window: Duration,
    pub cooldown: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failures: 3,
            window: Duration::from_secs(60),
            cooldown: Duration::from_secs(30),
        }
    }
}

/// The `breakers:` settings of `<state>/config.yml`, defaults for what it
/// leaves out.
pub fn breaker_config(state: &Path) -> Result<BreakerConfig, StoreError> {
    let (cfg, path) = read_config(state)?;
    let bad = |message: String| StoreError::Config {
        path: path.clone(),
        message,
    };
    let d = BreakerConfig::default();
    let time = |v: &Option<String>, key: &str, default: Duration| -> Result<Duration, StoreError> {
        match v.as_deref() {
            None => Ok(default),
            Some(s) => match humantime::parse_duration(s) {
                Ok(t) if !t.is_zero() && t <= Duration::from_secs(86_400) => Ok(t),
                Ok(_) => Err(bad(format!(
                    "breakers.{key}: `{s}` must be longer than zero and at most a day"
                ))),
                Err(e) => Err(bad(format!("breakers.{key}: `{s}`: {e}; e.g. `60s`"))),
            },
        }
    };
    let failures = cfg.breakers.failures.unwrap_or(d.failures);
    if failures == 0 {
        return Err(bad("breakers.failures: must be at least 1".into()));
    }
    Ok(BreakerConfig {
        failures,
        window: time(&cfg.breakers.window, "window", d.window)?,
        cooldown: time(&cfg.breakers.cooldown, "cooldown", d.cooldown)?,
    })
}

/// `access:` in `<state>/config.yml`: who besides the user may reach a
/// run's sockets.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigAccess {
    group: Option<String>,
}

/// The group `access: {group}` of `<state>/config.yml` opens runs to.
pub fn access_group(state: &Path) -> Result<Option<String>, StoreError> {
    Ok(read_config(state)?.0.access.group)
}

/// The webhooks and commands of `notify:` in `<state>/config.yml`.
pub fn notify_targets(state: &Path) -> Result<(Vec<String>, Vec<String>), StoreError> {
    let cfg = read_config(state)?.0;
    Ok((cfg.notify.webhooks, cfg.notify.commands))
}

/// Whether the terminal UI rings the bell (`ui: {bell: false}` in
/// `<state>/config.yml` turns it off).
pub fn ui_bell(state: &Path) -> Result<bool, StoreError> {
    Ok(read_config(state)?.0.ui.bell.unwrap_or(true))
}

/// Whether the terminal UI takes the mouse (`ui: {mouse: false}` in
/// `<state>/config.yml` turns it off).
pub fn ui_mouse(state: &Path) -> Result<bool, StoreError> {
    Ok(read_config(state)?.0.ui.mouse.unwrap_or(true))
}

/// Limits on artifacts, with their documented defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArtifactLimits {
    /// Bytes of file content one job's artifact set may hold (1 GiB).
    pub max_job_size: u64,
    /// Bytes of all the artifact sets of one run (4 GiB).
    pub max_run_size: u64,
    /// Free space the store's file system keeps; storing stops as disk_full
    /// before it would go below (100 MiB).
    pub min_free: u64,
}

impl Default for ArtifactLimits {
    fn default() -> Self {
        ArtifactLimits {
            max_job_size: 1 << 30,
            max_run_size: 4 << 30,
            min_free: 100 << 20,
        }
    }
}

/// Reads `<state>/config.yml` (an empty config when the file is absent).
fn read_config(state: &Path) -> Result<(Config, PathBuf), StoreError> {
    let path = state.join("config.yml");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Config::default(), path)),
        Err(source) => {
            return Err(super::io_err("cannot read", &path)(source).into());
        }
    };
    let cfg: Config = serde_yaml::from_str(&text).map_err(|e| StoreError::Config {
        path: path.clone(),
        message: e.to_string(),
    })?;
    Ok((cfg, path))
}

/// Reads the `artifacts:` limits of `<state>/config.yml`, defaults for what it leaves out.
pub fn artifact_limits(state: &Path) -> Result<ArtifactLimits, StoreError> {
    let (cfg, path) = read_config(state)?;
    let mut limits = ArtifactLimits::default();
    for (value, key, field) in [
        (&cfg.artifacts.max_job_size, "max_job_size", &mut limits.max_job_size),
        (&cfg.artifacts.max_run_size, "max_run_size", &mut limits.max_run_size),
        (&cfg.artifacts.min_free, "min_free", &mut limits.min_free),
    ] {
        if let Some(v) = value {
            *field = parse_size(v).map_err(|e| StoreError::Config {
                path: path.clone(),
                message: format!("artifacts.{key}: {e}"),
            })?;
        }
    }
    Ok(limits)
}

/// Reads the `gc:` policy of `<state>/config.yml` (an empty policy when the file is absent).
pub fn config_policy(state: &Path) -> Result<Policy, StoreError> {
    let (cfg, path) = read_config(state)?;
    let bad = |message: String| StoreError::Config {
        path: path.clone(),
        message,
    };
    let age = |v: &Option<String>, key: &str| -> Result<Option<Duration>, StoreError> {
        v.as_deref()
            .map(|s| humantime::parse_duration(s).map_err(|e| bad(format!("gc.{key}: `{s}`: {e}; e.g. `30d`"))))
            .transpose()
    };
    Ok(Policy {
        keep_last: cfg.gc.keep_last,
        max_age: age(&cfg.gc.max_age, "max_age")?,
        max_size: cfg
            .gc
            .max_size
            .as_deref()
            .map(|s| parse_size(s).map_err(|e| bad(format!("gc.max_size: {e}"))))
            .transpose()?,
        unused_for: age(&cfg.gc.unused_for, "unused_for")?,
        dry_run: false,
    })
}

/// `500MB`, `2GiB`, `1048576`: bytes (decimal units are powers of 1000).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size; e.g. `500MB`, `2GiB`"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "m" | "mb" => 1000 * 1000,
        "g" | "gb" => 1000 * 1000 * 1000,
        "t" | "tb" => 1000u64.pow(4),
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        other => {
            return Err(format!(
                "unknown size unit `{other}` in `{s}`; use B, KB, MB, GB, KiB, MiB, GiB"
            ));
        }
    };
    Ok((n * mult as f64) as u64)
}

/// An object-store failure as a store error: an I/O failure (permission
/// denied, a full disk) says so; only real damage says "damaged".
fn damaged(state: &Path, e: super::objects::ObjectError) -> StoreError {
    match e {
        super::objects::ObjectError::Io(f) => StoreError::Io(f),
        other => StoreError::Damaged {
            path: state.join("objects"),
            message: other.to_string(),
        },
    }
}

/// Something that keeps objects alive.
#[derive(Debug)]
enum RootKind {
    Run(String),
    Cache(String),
    DirCache(String),
}

struct Root {
    kind: RootKind,
    last_used_ms: u64,
    /// Runs that have not finished are never dropped.
    removable: bool,
    objects: HashSet<Digest>,
}

/// A manifest and the objects it names.
fn manifest_objects(objects: &ObjectStore, m: &Digest, into: &mut HashSet<Digest>) {
    into.insert(*m);
    if let Ok(man) = manifest::load(objects, m) {
        for e in man.entries {
            if let EntryKind::File { object, .. } = e.kind {
                into.insert(object);
            }
        }
    }
}

pub fn collect_garbage(state: &Path, policy: &Policy) -> Result<Report, StoreError> {
    let objects = ObjectStore::open(&state.join("objects")).map_err(|e| damaged(state, e))?;
    let _lock = objects.lock_exclusive().map_err(|e| damaged(state, e))?;
    let index = Index::open(state)?;
    let now_ms = super::now_ms();
    let older_than =
        |d: Option<Duration>, t: u64| d.is_some_and(|d| Duration::from_millis(now_ms.saturating_sub(t)) > d);
    let mut report = Report::default();

    // Runs by count and age.
    let mut runs = list_runs(state)?;
    runs.sort_by_key(|r| std::cmp::Reverse(r.started_ms)); // newest first
    let mut seen_per_pipeline: HashMap<String, usize> = HashMap::new();
    let mut kept_runs = Vec::new();
    for run in runs {
        // A crashed run never finishes: it is dropped by the same rules.
        let finished = run.result.is_some() || run.crashed;
        let n = seen_per_pipeline.entry(run.pipeline.clone()).or_default();
        *n += 1;
        let too_many = policy.keep_last.is_some_and(|k| *n > k);
        if finished && (too_many || older_than(policy.max_age, run.started_ms)) {
            report.runs_removed.push(run.run_id);
        } else {
            kept_runs.push((run.run_id, run.started_ms, finished));
        }
    }

    // Roots.
    let mut roots = Vec::new();
    let artifacts = index.artifacts(None)?;
    let mut expired = Vec::new();
    for (run, started, finished) in &kept_runs {
        let mut objs = HashSet::new();
        for a in artifacts.iter().filter(|a| &a.run_id == run) {
            if *finished && a.expires_ms.is_some_and(|e| e <= now_ms) {
                expired.push((a.run_id.clone(), a.job.clone()));
                continue;
            }
            manifest_objects(&objects, &a.manifest, &mut objs);
        }
        roots.push(Root {
            kind: RootKind::Run(run.clone()),
            last_used_ms: *started,
            removable: *finished,
            objects: objs,
        });
    }
    report.artifacts_expired = expired.len();
    let mut unused_entries = Vec::new();
    for e in index.cache_entries()? {
        if older_than(policy.unused_for, e.last_used_ms) {
            unused_entries.push(e.key);
            continue;
        }
        let mut objs = HashSet::new();
        if let Some(m) = e.manifest {
            manifest_objects(&objects, &m, &mut objs);
        }
        objs.extend(e.log);
        roots.push(Root {
            kind: RootKind::Cache(e.key),
            last_used_ms: e.last_used_ms,
            removable: true,
            objects: objs,
        });
    }
    let mut unused_dirs = Vec::new();
    for d in index.dir_caches()? {
        if older_than(policy.unused_for, d.last_used_ms) {
            unused_dirs.push(d.key);
            continue;
        }
        let mut objs = HashSet::new();
        manifest_objects(&objects, &d.manifest, &mut objs);
        roots.push(Root {
            kind: RootKind::DirCache(d.key),
            last_used_ms: d.last_used_ms,
            removable: true,
            objects: objs,
        });
    }

    // Size: drop least recently used roots until the live objects fit.
    let size_of = |d: &Digest| std::fs::metadata(objects.path(d)).map_or(0, |m| m.len());
    let mut dropped_roots = Vec::new();
    if let Some(max) = policy.max_size {
        let mut refs: HashMap<Digest, usize> = HashMap::new();
        for r in &roots {
            for d in &r.objects {
                *refs.entry(*d).or_default() += 1;
            }
        }
        let mut live: u64 = refs.keys().map(size_of).sum();
        let mut order: Vec<usize> = (0..roots.len()).filter(|&i| roots[i].removable).collect();
        order.sort_by_key(|&i| roots[i].last_used_ms);
        for i in order {
            if live <= max {
                break;
            }
            for d in &roots[i].objects {
                if let Some(n) = refs.get_mut(d) {
                    *n -= 1;
                    if *n == 0 {
                        live = live.saturating_sub(size_of(d));
                    }
                }
            }
            dropped_roots.push(i);
        }
    }
    let mut live: HashSet<Digest> = HashSet::new();
    for (i, r) in roots.iter().enumerate() {
        if dropped_roots.contains(&i) {
            match &r.kind {
                RootKind::Run(id) => report.runs_removed.push(id.clone()),
                RootKind::Cache(k) => unused_entries.push(k.clone()),
                RootKind::DirCache(k) => unused_dirs.push(k.clone()),
            }
        } else {
            live.extend(r.objects.iter().copied());
        }
    }
    report.cache_entries_removed = unused_entries.len();
    report.dir_caches_removed = unused_dirs.len();

    if !policy.dry_run {
        for run in &report.runs_removed {
            let dir = runs_dir(state).join(run);
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(super::io_err("cannot remove", &dir)(source).into());
                }
            }
            index.remove_run(run)?;
        }
        for (run, job) in &expired {
            index.remove_artifact(run, job)?;
        }
        for k in &unused_entries {
            index.cache_remove(k)?;
        }
        for k in &unused_dirs {
            index.dir_cache_remove(k)?;
        }
    }

    // Sweep.
    for d in objects.list().map_err(|e| damaged(state, e))? {
        let size = size_of(&d);
        if live.contains(&d) {
            report.objects_kept += 1;
            report.bytes_kept += size;
            continue;
        }
        if !policy.dry_run {
            let _ = objects.remove(&d);
        }
        report.objects_removed += 1;
        report.bytes_freed += size;
    }
    (report.temp_files_removed, report.temp_bytes_freed) = objects.stale_temps(policy.dry_run);
    report.spares_removed = remove_spares(state, policy.dry_run);
    Ok(report)
}

/// Spare workspaces ([`crate::exec::workspace::Spares`]) are copies of
/// projects kept to save later jobs a copy: a collection drops them all
/// (a running trackside that loses one copies instead). How many there were.
fn remove_spares(state: &Path, dry_run: bool) -> usize {
    let Ok(pools) = std::fs::read_dir(state.join("spares")) else {
        return 0;
    };
    let mut n = 0;
    for pool in pools.flatten() {
        n += std::fs::read_dir(pool.path()).map_or(0, Iterator::count);
        if !dry_run {
            let _ = std::fs::remove_dir_all(pool.path());
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{RunResult, RunSummary};
    use crate::store::index::CacheEntry;
    use crate::store::{RunMeta, RunRecord};

    /// A run record started at `started_ms`, finished or still running.
    fn fake_run(state: &Path, id: &str, started_ms: u64, finished: bool) {
        let mut meta = RunMeta {
            run_id: id.into(),
            pipeline: "p".into(),
            pipeline_file: "p.yml".into(),
            project_dir: ".".into(),
            started_ms,
            owner: None,
        };
        let mut rec = RunRecord::create(state, &mut meta).expect("record");
        if finished {
            rec.finish(&RunSummary {
                run_id: id.into(),
                pipeline: "p".into(),
                result: RunResult::Passed,
                exit_code: 0,
                duration_ms: 1,
                jobs: Vec::new(),
                message: String::new(),
                repeat: None,
            })
            .expect("finish");
        }
    }

    /// Stores `content` as a one-file artifact set; returns (manifest, object).
    fn artifact(objects: &ObjectStore, content: &[u8]) -> (Digest, Digest) {
        let object = objects.put_bytes(content).expect("put");
        let m = manifest::Manifest {
            entries: vec![manifest::Entry {
                path: "f".into(),
                mode: 0o644,
                kind: EntryKind::File {
                    object,
                    size: content.len() as u64,
                },
            }],
        };
        (manifest::save(objects, &m).expect("manifest"), object)
    }

    fn entry(key: &str, manifest: Digest, used: u64) -> CacheEntry {
        CacheEntry {
            key: key.into(),
            pipeline: "p".into(),
            job: "j".into(),
            run_id: "gone".into(),
            manifest: Some(manifest),
            log: None,
            components: "{}".into(),
            created_ms: used,
            last_used_ms: used,
        }
    }

    #[test]
    fn expired_artifacts_go_unless_their_run_is_still_going() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path();
        let objects = ObjectStore::open(&state.join("objects")).expect("objects");
        let index = Index::open(state).expect("index");
        let now = crate::store::now_ms();
        fake_run(state, "done", now, true);
        fake_run(state, "live", now, false);
        let (m_done, o_done) = artifact(&objects, b"done");
        let (m_live, o_live) = artifact(&objects, b"live");
        index.put_artifact("done", "j", &m_done, Some(now - 1)).expect("row");
        index.put_artifact("live", "j", &m_live, Some(now - 1)).expect("row");
        let r = collect_garbage(
            state,
            &Policy {
                max_age: Some(Duration::from_secs(3600)),
                ..Policy::default()
            },
        )
        .expect("gc");
        assert_eq!(r.artifacts_expired, 1);
        assert!(r.runs_removed.is_empty(), "runs stay, only their expired artifacts go");
        assert!(!objects.contains(&o_done) && !objects.contains(&m_done));
        assert!(
            objects.contains(&o_live) && objects.contains(&m_live),
            "a running job may still need them"
        );
        assert_eq!(index.artifact("done", "j").expect("get"), None);
    }

    #[test]
    fn a_collection_drops_spare_workspaces_and_a_dry_run_only_counts_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path();
        let _index = Index::open(state).expect("index");
        for spare in ["p1/10-0", "p1/10-1", "p2/11-0"] {
            std::fs::create_dir_all(state.join("spares").join(spare).join("src")).expect("mkdir");
            std::fs::write(state.join("spares").join(spare).join("src/f"), "x").expect("write");
        }
        let policy = Policy {
            keep_last: Some(10),
            dry_run: true,
            ..Policy::default()
        };
        assert_eq!(collect_garbage(state, &policy).expect("dry").spares_removed, 3);
        assert!(state.join("spares/p1/10-0/src/f").exists(), "a dry run deletes nothing");
        let r = collect_garbage(
            state,
            &Policy {
                dry_run: false,
                ..policy
            },
        )
        .expect("gc");
        assert_eq!(r.spares_removed, 3);
        assert_eq!(std::fs::read_dir(state.join("spares")).expect("read").count(), 0);
    }

    #[test]
    fn the_size_limit_drops_least_recently_used_roots_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path();
        let objects = ObjectStore::open(&state.join("objects")).expect("objects");
        let index = Index::open(state).expect("index");
        let (m_old, o_old) = artifact(&objects, &[b'o'; 4000]);
        let (m_new, o_new) = artifact(&objects, &[b'n'; 3000]);
        index.cache_put(&entry("old", m_old, 1_000)).expect("put");
        index.cache_put(&entry("new", m_new, 2_000)).expect("put");
        let policy = Policy {
            max_size: Some(3500),
            dry_run: true,
            ..Policy::default()
        };
        let dry = collect_garbage(state, &policy).expect("dry run");
        assert_eq!(dry.cache_entries_removed, 1);
        assert!(objects.contains(&o_old), "a dry run deletes nothing");
        let r = collect_garbage(
            state,
            &Policy {
                dry_run: false,
                ..policy
            },
        )
        .expect("gc");
        assert_eq!(r.cache_entries_removed, 1);
        assert!(!objects.contains(&o_old), "the older entry went");
        assert!(objects.contains(&o_new) && objects.contains(&m_new));
        assert!(r.bytes_kept <= 3500, "{r:?}");
        assert!(index.cache_get("old").expect("get").is_none());
    }

    #[test]
    fn unused_cache_entries_go_but_objects_a_kept_run_shares_stay() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path();
        let objects = ObjectStore::open(&state.join("objects")).expect("objects");
        let index = Index::open(state).expect("index");
        let now = crate::store::now_ms();
        fake_run(state, "kept", now, true);
        let (m, o) = artifact(&objects, b"shared");
        index.put_artifact("kept", "j", &m, None).expect("row");
        index.cache_put(&entry("stale", m, 1)).expect("put");
        index.dir_cache_put("p/deps", &m, "kept").expect("put");
        let r = collect_garbage(
            state,
            &Policy {
                unused_for: Some(Duration::from_secs(86400)),
                ..Policy::default()
            },
        )
        .expect("gc");
        assert_eq!(r.cache_entries_removed, 1, "last used in 1970");
        assert_eq!(r.dir_caches_removed, 0, "just used");
        assert!(objects.contains(&o) && objects.contains(&m));
        assert!(index.cache_get("stale").expect("get").is_none());
    }

    #[test]
    fn sizes_parse_with_units_and_reject_nonsense() {
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size("500MB"), Ok(500_000_000));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("1.5 KiB"), Ok(1536));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5 parsecs").is_err());
    }

    #[test]
    fn the_mouse_is_on_unless_the_config_turns_it_off() {
        let dir = tempfile::tempdir().unwrap();
        assert!(ui_mouse(dir.path()).unwrap(), "no config.yml");
        std::fs::write(dir.path().join("config.yml"), "ui:\n  mouse: false\n").unwrap();
        assert!(!ui_mouse(dir.path()).unwrap());
        std::fs::write(dir.path().join("config.yml"), "ui:\n  mous: false\n").unwrap();
        let err = ui_mouse(dir.path()).unwrap_err().to_string();
        assert!(err.contains("config.yml") && err.contains("mous"), "{err}");
    }

    #[test]
    fn the_config_file_gives_a_policy_and_bad_values_name_the_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(config_policy(dir.path()).expect("no file").is_empty());
        std::fs::write(
            dir.path().join("config.yml"),
            "gc:\n  keep_last: 3\n  max_size: 1GiB\n  unused_for: 14d\n",
        )
        .expect("write");
        let p = config_policy(dir.path()).expect("policy");
        assert_eq!(p.keep_last, Some(3));
        assert_eq!(p.max_size, Some(1 << 30));
        assert_eq!(p.unused_for, Some(Duration::from_secs(14 * 86400)));
        std::fs::write(dir.path().join("config.yml"), "gc:\n  max_age: soon\n").expect("write");
        let e = config_policy(dir.path()).expect_err("bad age").to_string();
        assert!(e.contains("gc.max_age") && e.contains("config.yml"), "{e}");
    }
}
