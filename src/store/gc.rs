//! Garbage collection: drop old runs by policy, then every object no kept
//! run refers to.
//!
//! Mark and sweep under the store's exclusive lock: writers hold it shared
//! from storing a job's objects until its manifest is recorded, so nothing a
//! running job has stored can be swept. Runs that have not finished (no
//! summary) are always kept.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use super::manifest::{self, EntryKind};
use super::objects::{Digest, ObjectStore};
use super::{StoreError, list_runs, runs_dir};

#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Keep at most this many finished runs per pipeline (newest first).
    pub keep_last: Option<usize>,
    /// Drop finished runs older than this.
    pub max_age: Option<Duration>,
    /// Report without deleting.
    pub dry_run: bool,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub runs_removed: Vec<String>,
    pub objects_removed: usize,
    pub bytes_freed: u64,
    pub objects_kept: usize,
}

pub fn collect_garbage(state: &Path, policy: &Policy) -> Result<Report, StoreError> {
    let objects = ObjectStore::open(&state.join("objects")).map_err(|e| StoreError::Damaged {
        path: state.join("objects"),
        message: e.to_string(),
    })?;
    let _lock = objects.lock_exclusive().map_err(|e| StoreError::Damaged {
        path: state.join("objects"),
        message: e.to_string(),
    })?;
    let now_ms = super::now_ms();
    let mut report = Report::default();
    let mut runs = list_runs(state)?;
    runs.sort_by_key(|r| std::cmp::Reverse(r.started_ms)); // newest first
    let mut seen_per_pipeline: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let mut kept_runs = Vec::new();
    for run in runs {
        let finished = run.result.is_some();
        let n = seen_per_pipeline.entry(run.pipeline.clone()).or_default();
        *n += 1;
        let too_many = policy.keep_last.is_some_and(|k| *n > k);
        let age = Duration::from_millis(now_ms.saturating_sub(run.started_ms));
        let too_old = policy.max_age.is_some_and(|m| age > m);
        if finished && (too_many || too_old) {
            if !policy.dry_run {
                let dir = runs_dir(state).join(&run.run_id);
                std::fs::remove_dir_all(&dir).map_err(|source| StoreError::Io {
                    action: "cannot remove",
                    path: dir,
                    source,
                })?;
            }
            report.runs_removed.push(run.run_id);
        } else {
            kept_runs.push(run.run_id);
        }
    }
    // Mark: manifests and files referenced by kept runs.
    let mut live: HashSet<Digest> = HashSet::new();
    for id in &kept_runs {
        let dir = runs_dir(state).join(id).join("artifacts");
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let Some(d) = std::fs::read_to_string(entry.path())
                .ok()
                .and_then(|t| Digest::parse(t.trim()))
            else {
                continue;
            };
            live.insert(d);
            if let Ok(m) = manifest::load(&objects, &d) {
                for e in m.entries {
                    if let EntryKind::File { object, .. } = e.kind {
                        live.insert(object);
                    }
                }
            }
        }
    }
    // Sweep.
    let all = objects.list().map_err(|e| StoreError::Damaged {
        path: state.join("objects"),
        message: e.to_string(),
    })?;
    for d in all {
        if live.contains(&d) {
            report.objects_kept += 1;
            continue;
        }
        let size = std::fs::metadata(objects.path(&d)).map(|m| m.len()).unwrap_or(0);
        if !policy.dry_run {
            let _ = objects.remove(&d);
        }
        report.objects_removed += 1;
        report.bytes_freed += size;
    }
    Ok(report)
}
