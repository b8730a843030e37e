//! Helpers shared by the integration tests: a pipeline from text, an engine
//! in a temp dir, and bounded waits for events (never sleeps).
#![allow(dead_code)]

pub mod cli;
pub mod corpus;
pub mod deploy;
pub mod image;
pub mod tmux;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;
use trackside::engine::{self, EngineConfig, EngineHandle, Event, EventKind, RunSummary};
use trackside::pipeline::{self, LoadOptions, Plan};

/// Upper bound for any wait in a test; reaching it is a failure, not a pass.
pub const LIMIT: Duration = Duration::from_secs(60);

pub struct Setup {
    pub dir: tempfile::TempDir,
    pub cfg: EngineConfig,
    pub pipeline: pipeline::Pipeline,
}

impl Setup {
    pub fn project(&self) -> PathBuf {
        self.dir.path().join("project")
    }
    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }
}

pub fn setup(yaml: &str) -> Setup {
    setup_with(yaml, &LoadOptions::default())
}

pub fn setup_with(yaml: &str, opts: &LoadOptions) -> Setup {
    setup_files(yaml, &[], opts)
}

/// [`setup_with`], with more files of the project (path, text; a path
/// ending in `.sh` is made executable) written before it is read.
pub fn setup_files(yaml: &str, files: &[(&str, &str)], opts: &LoadOptions) -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let project = dir.path().join("project");
    std::fs::create_dir_all(&project).expect("mkdir");
    std::fs::write(project.join("README"), "project file\n").expect("write");
    for (rel, text) in files {
        let path = project.join(rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, text).expect("write");
        if rel.ends_with(".sh") {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
    }
    let file = project.join("pipeline.yml");
    std::fs::write(&file, yaml).expect("write");
    let (pipeline, _) = match pipeline::parse_source(&file, yaml.to_string(), opts) {
        Ok(x) => x,
        Err(r) => panic!("{}", r.render(false)),
    };
    let mut cfg = EngineConfig::new(trackside::store::new_run_id(), dir.path().join("state"), file, project);
    cfg.max_parallel = 4;
    cfg.host_env = vec![(
        "PATH".into(),
        std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into()),
    )];
    cfg.kill_grace = Some(Duration::from_millis(200));
    cfg.seed = Some(7);
    cfg.program = PathBuf::from(env!("CARGO_BIN_EXE_trackside"));
    Setup { dir, cfg, pipeline }
}

pub struct Running {
    pub handle: EngineHandle,
    pub rx: broadcast::Receiver<Arc<Event>>,
    pub seen: Vec<Arc<Event>>,
}

/// Spawns the engine, subscribes, starts it.
pub async fn start(s: &mut Setup) -> Running {
    // The config is used up by the engine; a test starts one run per setup.
    let cfg = std::mem::replace(&mut s.cfg, placeholder_cfg());
    let plan = Plan::build(&s.pipeline).expect("plan");
    let handle = engine::spawn(s.pipeline.clone(), plan, cfg).expect("spawn");
    let rx = handle.subscribe_live();
    handle.start().await.expect("start");
    Running {
        handle,
        rx,
        seen: Vec::new(),
    }
}

fn placeholder_cfg() -> EngineConfig {
    EngineConfig::new(String::new(), PathBuf::new(), PathBuf::new(), PathBuf::new())
}

impl Running {
    /// Waits (bounded) for the first event matching `pred`.
    pub async fn until(&mut self, what: &str, pred: impl Fn(&EventKind) -> bool) -> Arc<Event> {
        let wait = async {
            loop {
                match self.rx.recv().await {
                    Ok(ev) => {
                        self.seen.push(ev.clone());
                        if pred(&ev.kind) {
                            return ev;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => panic!("engine stopped before: {what}"),
                }
            }
        };
        match tokio::time::timeout(LIMIT, wait).await {
            Ok(ev) => ev,
            Err(_) => {
                let tail: Vec<String> = self
                    .seen
                    .iter()
                    .filter_map(|e| match &e.kind {
                        EventKind::LogLine { job, line, .. } => Some(format!("{job} > {line}")),
                        _ => None,
                    })
                    .collect();
                let from = tail.len().saturating_sub(30);
                panic!(
                    "timed out waiting for: {what}; the last output:\n{}",
                    tail[from..].join("\n")
                )
            }
        }
    }

    pub async fn finished(&mut self) -> RunSummary {
        let ev = self
            .until("run finished", |k| matches!(k, EventKind::RunFinished { .. }))
            .await;
        match &ev.kind {
            EventKind::RunFinished { summary } => summary.clone(),
            _ => unreachable!(),
        }
    }

    /// Output lines of a job seen so far.
    pub fn lines(&self, job: &str) -> Vec<String> {
        self.seen
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::LogLine { job: j, line, .. } if j == job => Some(line.clone()),
                _ => None,
            })
            .collect()
    }
}

/// Every file below `dir`, as text (lossy), for leak checks.
pub fn all_text(dir: &Path) -> String {
    let mut out = String::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(b) = std::fs::read(&p) {
                out.push_str(&String::from_utf8_lossy(&b));
            }
        }
    }
    out
}
