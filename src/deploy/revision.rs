//! What is remembered about a service between deploys, in the state
//! directory: its stable revision (`services/<service>.json`), the history
//! of changes with who made them (`.history.jsonl`), and where a rollout
//! waited at a gate (`.gate.json`), so a restarted trackside takes it up.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::pipeline::model::Target;

/// A service revision, as remembered between deploys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revision {
    pub version: String,
    /// The command of a process target (empty for a container).
    #[serde(default)]
    pub run: String,
    /// The image and inner port of a container target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    pub replicas: u32,
}

impl Revision {
    pub fn new(version: &str, target: &Target, replicas: u32) -> Revision {
        let (run, image, port) = match target {
            Target::Process { run } => (run.clone(), None, None),
            Target::Container { image, port } => (String::new(), Some(image.clone()), Some(*port)),
        };
        Revision {
            version: version.to_string(),
            run,
            image,
            port,
            replicas,
        }
    }

    pub fn target(&self) -> Target {
        match (&self.image, self.port) {
            (Some(image), Some(port)) => Target::Container {
                image: image.clone(),
                port,
            },
            _ => Target::Process { run: self.run.clone() },
        }
    }
}

/// A service name or version as it may appear in file, container and
/// HAProxy backend names: letters, digits, `-`, `_` and `.`.
pub fn safe_name(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Where what is remembered about services lives: `<state>/services`.
pub fn services_dir(state: &Path) -> PathBuf {
    state.join("services")
}

pub(crate) fn revision_path(state: &Path, service: &str) -> PathBuf {
    services_dir(state).join(format!("{}.json", safe_name(service)))
}

/// Where the trackside steering a service's running rollout listens for
/// `trackside rollout` (see `crate::control`).
pub fn control_socket_path(state: &Path, service: &str) -> PathBuf {
    revision_path(state, service).with_extension("sock")
}

/// Takes the service's lock: one trackside changes a service at a time.
/// Held for as long as the returned file is open.
pub(crate) fn lock_service(state: &Path, service: &str) -> Result<std::fs::File, String> {
    let path = revision_path(state, service).with_extension("lock");
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let lock = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    if lock.try_lock().is_err() {
        return Err(format!(
            "another trackside is deploying `{service}` right now (it holds {}); steer that rollout with `trackside rollout {service} ...`",
            path.display()
        ));
    }
    Ok(lock)
}

pub fn load_revision(state: &Path, service: &str) -> Option<Revision> {
    let text = std::fs::read_to_string(revision_path(state, service)).ok()?;
    serde_json::from_str(&text).ok()
}

/// One change of a service's stable revision, appended to
/// `<state>/services/<service>.history.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub ts_ms: u64,
    /// `first_deploy`, `promoted`, `rolled_back`.
    pub action: String,
    pub by: String,
    pub revision: Revision,
    /// Why a rollout ended without its revision stable (`aborted`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl HistoryEntry {
    /// `v2 promoted by ana@host`, `back to v1 (a rollback) by ana@host`,
    /// `v3 aborted (analysis failed: ...) by ana@host`.
    pub fn describe(&self) -> String {
        let v = &self.revision.version;
        let what = match self.action.as_str() {
            "first_deploy" => format!("{v} deployed first"),
            "rolled_back" => format!("back to {v} (a rollback)"),
            ABORTED => format!("{v} aborted ({})", self.reason.as_deref().unwrap_or("no reason kept")),
            other => format!("{v} {}", other.replace('_', " ")),
        };
        format!("{what} by {}", self.by)
    }
}

pub fn history_path(state: &Path, service: &str) -> PathBuf {
    revision_path(state, service).with_extension("history.jsonl")
}

pub fn history(state: &Path, service: &str) -> Vec<HistoryEntry> {
    std::fs::read_to_string(history_path(state, service))
        .map(|t| t.lines().filter_map(|l| serde_json::from_str(l).ok()).collect())
        .unwrap_or_default()
}

/// Makes `rev` the stable revision and records who did it and why.
pub fn record_revision(state: &Path, service: &str, rev: &Revision, action: &str, by: &str) -> Result<(), String> {
    save_revision(state, service, rev)?;
    append_history(
        state,
        service,
        &HistoryEntry {
            ts_ms: crate::store::now_ms(),
            action: action.into(),
            by: by.into(),
            revision: rev.clone(),
            reason: None,
        },
    )
}

/// A rollout of `rev` that ended without it becoming stable (aborted,
/// rolled back, degraded, cancelled), and why: history only, the stable
/// revision stays as it is.
pub fn record_aborted(state: &Path, service: &str, rev: &Revision, by: &str, reason: &str) -> Result<(), String> {
    append_history(
        state,
        service,
        &HistoryEntry {
            ts_ms: crate::store::now_ms(),
            action: ABORTED.into(),
            by: by.into(),
            revision: rev.clone(),
            reason: Some(reason.into()),
        },
    )
}

/// The history action of a rollout that did not make its revision stable.
pub const ABORTED: &str = "aborted";

fn append_history(state: &Path, service: &str, entry: &HistoryEntry) -> Result<(), String> {
    let line = serde_json::to_string(entry).map_err(|e| e.to_string())?;
    let path = history_path(state, service);
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .mode(0o600)
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| writeln!(f, "{line}"))
        .map_err(|e| format!("cannot append to {}: {e}", path.display()))
}

/// The service's stable revision and the one before it: (before, now).
pub fn previous_revision(state: &Path, service: &str) -> Result<(Revision, Revision), String> {
    let current = load_revision(state, service)
        .ok_or_else(|| format!("service `{service}` has no deployed revision in {}", state.display()))?;
    let entries = history(state, service);
    // The newest entry is the current revision; the one before it is what to go back to.
    let previous = entries
        .iter()
        .rev()
        .filter(|e| e.action != ABORTED)
        .map(|e| &e.revision)
        .find(|r| **r != current)
        .cloned()
        .ok_or_else(|| format!("service `{service}` has no earlier revision than {}", current.version))?;
    Ok((previous, current))
}

pub fn save_revision(state: &Path, service: &str, rev: &Revision) -> Result<(), String> {
    write_json(&revision_path(state, service), rev)
}

/// Where a rollout stood when it waited at a gate; kept until the rollout
/// settles, so a restarted trackside takes the gate up again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateState {
    pub version: String,
    /// The target as `Target::describe` gives it (a command, or image and port).
    pub run: String,
    pub step: usize,
    pub weight: u32,
    pub since_ms: u64,
    /// Who approved the gate so far (a policy needing several people).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvals: Vec<String>,
}

pub(crate) fn gate_path(state: &Path, service: &str) -> PathBuf {
    revision_path(state, service).with_extension("gate.json")
}

pub fn load_gate(state: &Path, service: &str) -> Option<GateState> {
    serde_json::from_str(&std::fs::read_to_string(gate_path(state, service)).ok()?).ok()
}

pub(crate) fn save_gate(state: &Path, service: &str, g: &GateState) -> Result<(), String> {
    write_json(&gate_path(state, service), g)
}

/// Writes `value` as JSON to a temp file and renames it into place, so a
/// reader never sees half a file.
fn write_json(path: &Path, value: &impl Serialize) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let text = serde_json::to_string_pretty(value).map_err(|e| e.to_string())?;
    // Owner-only: a revision's command may hold a secret the job passed it.
    write_private(path, &text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Writes `text` to `path` (0600) through a temporary file renamed over
/// it, so a reader never sees half a file.
pub(crate) fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(text.as_bytes())?;
    std::fs::rename(&tmp, path)
}
