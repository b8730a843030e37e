//! What an attempt is made of, shared by the runner (which runs it) and
//! the artifacts code (what it takes in and leaves): the run's context, the
//! attempt's inputs, the messages both send to the actor. Neither imports
//! the other for these.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::exec::{Executor, Stream, workspace};
use crate::pipeline::model::EnvVar;
use crate::pipeline::vars::Scope;
use crate::pipeline::{FailureClass, Job, Pipeline};
use crate::store::cache::Components;
use crate::store::objects::Digest;

use super::state::{JobId, Outcome};

/// What a runner tells the actor.
#[derive(Debug)]
pub enum RunnerMsg {
    /// A value to mask from now on (a GitHub step's `::add-mask::`).
    AddMask(String),
    /// A GitHub step's `::group::` (with its title) or `::endgroup::`.
    Group {
        job: JobId,
        attempt: u32,
        title: Option<String>,
    },
    /// Where the attempt's step runs (a swarm node), as its executor says.
    Placed { job: JobId, attempt: u32, node: String },
    /// The cluster's nodes changed (sent by the run's cluster watcher).
    Cluster(Vec<crate::protocol::view::ClusterNode>),
    /// A GitHub step's annotation (`::error` and the like).
    Annotation {
        job: JobId,
        step: Arc<str>,
        annotation: super::filecmd::Annotation,
    },
    /// The test cases its JUnit reports hold (sent before the attempt's end).
    Tests {
        job: JobId,
        attempt: u32,
        report: Box<crate::protocol::TestReport>,
    },
    /// A GitHub job's `outputs`, evaluated when its steps have run (sent
    /// before the attempt's end).
    JobOutputs { job: JobId, outputs: Vec<(String, String)> },
    StepStarted {
        job: JobId,
        attempt: u32,
        step: Arc<str>,
        index: usize,
    },
    Log {
        job: JobId,
        attempt: u32,
        step: Arc<str>,
        stream: Stream,
        text: String,
        /// A piece of a line too long to pass whole: it goes on in the next.
        partial: bool,
    },
    StepFinished {
        job: JobId,
        attempt: u32,
        step: Arc<str>,
        exit_code: Option<i32>,
        failure: Option<FailureClass>,
        duration: Duration,
    },
    Rollout {
        job: JobId,
        status: Box<crate::deploy::rollout::Status>,
    },
    RolloutDecision {
        job: JobId,
        text: String,
        by: Option<String>,
    },
    AttemptDone {
        /// The line that tells what went wrong (see [`Telling`]).
        telling: Option<String>,
        job: JobId,
        attempt: u32,
        outcome: Box<Outcome>,
        /// The result-cache key of a job that ran (not one served from the cache).
        cache_key: Option<CacheKey>,
        /// Bytes: the most memory its steps were seen to hold.
        peak_memory: Option<u64>,
        /// Milliseconds of CPU its steps used.
        cpu_ms: Option<u64>,
    },
}

/// Everything that is the same for every attempt of a run (until the
/// pipeline file is edited: then new attempts get a new context).
#[derive(Clone)]
pub struct RunContext {
    pub run_id: String,
    pub pipeline: Arc<Pipeline>,
    pub run_dir: PathBuf,
    pub project_dir: PathBuf,
    /// trackside's own program (see `EngineConfig::program`).
    pub program: PathBuf,
    /// The run's `--allow-group` (see `EngineConfig::group`).
    pub group: Option<String>,
    /// Project files copied into each workspace (taken once per run).
    pub files: Vec<PathBuf>,
    pub in_place: bool,
    pub keep_workspaces: bool,
    pub kill_grace: Duration,
    pub cli_vars: Vec<(String, String)>,
    pub secrets: Vec<(String, String)>,
    pub host_env: Vec<(String, String)>,
    pub executor: Arc<dyn Executor>,
    /// Whether steps with an image run in containers.
    pub containers: bool,
    /// `--keep-failed`: keep a failed attempt's container and workspace.
    pub keep_failed: bool,
    /// Where artifacts are kept (`<state>/objects`).
    pub objects: Arc<crate::store::objects::ObjectStore>,
    /// Names of artifacts, cache entries and directory caches.
    pub index: Arc<crate::store::index::Index>,
    /// False with `--no-cache`: results are stored but not looked up.
    pub use_cache: bool,
    /// The state directory (services' remembered revisions live there).
    pub state_dir: PathBuf,
    /// What artifacts may take (`artifacts:` in `<state>/config.yml`).
    pub artifact_limits: crate::store::gc::ArtifactLimits,
    /// Bytes of artifacts this run has stored so far, against the run's limit.
    pub artifact_bytes: Arc<std::sync::atomic::AtomicU64>,
    /// Artifacts of jobs left out of the run: producer -> (run, manifest).
    pub borrowed_artifacts: BTreeMap<String, Borrowed>,
    /// The run's clone of the project's repository, which jobs' workspaces
    /// point at (GitLab pipelines; see `git::run_repository`).
    pub git_repo: Option<crate::exec::git::RunRepository>,
    /// Workspaces of ended jobs, made fresh again for the next ones.
    pub spares: Arc<workspace::Spares>,
    /// Emptied `RUNNER_TEMP` folders of ended GitHub jobs, for the next ones.
    pub empty_folders: Arc<workspace::EmptyFolders>,
    /// [`RunContext::pipeline_vars`], worked out once.
    pub(super) pipeline_vars: std::sync::OnceLock<BTreeMap<String, String>>,
}

impl RunContext {
    pub(super) fn workspace(&self, job: &Job, attempt: u32) -> PathBuf {
        if self.in_place {
            self.project_dir.clone()
        } else {
            self.run_dir
                .join("work")
                .join(format!("{}.{attempt}", crate::store::file_safe(&job.name)))
        }
    }

    /// The variables of a step (or of the job, when `step` is None), in precedence order.
    pub fn scope(&self, job: &Job, step_env: &[EnvVar], predefined: Vec<(String, String)>) -> Scope {
        let layer = |vars: &[EnvVar]| {
            vars.iter()
                .map(|v| (v.name.clone(), v.value.clone()))
                .collect::<Vec<_>>()
        };
        // A GitHub job reads secrets only as `${{ secrets.X }}`, as on
        // GitHub; elsewhere each `--secret` is a variable too.
        let secrets = if job.file_commands { &[][..] } else { &self.secrets[..] };
        let mut s = Scope::new();
        s.lenient(self.pipeline.undefined_is_empty)
            .push_layer(self.cli_vars.iter().cloned())
            .push_layer(secrets.iter().cloned())
            .push_layer(layer(step_env))
            .push_layer(layer(&job.environment))
            .push_layer(layer(&self.pipeline.global_env))
            .push_layer(predefined)
            .push_layer(self.host_env.iter().cloned());
        s
    }

    /// The same context for an edited file's pipeline: what was worked out
    /// from the old one is not kept.
    pub fn with_pipeline(&self, pipeline: Arc<Pipeline>) -> RunContext {
        RunContext {
            pipeline,
            pipeline_vars: std::sync::OnceLock::new(),
            ..self.clone()
        }
    }

    /// Variables of the pipeline level, for `vars.X`: the same for every
    /// job, so worked out once.
    pub fn pipeline_vars(&self) -> &BTreeMap<String, String> {
        self.pipeline_vars.get_or_init(|| self.resolve_pipeline_vars())
    }

    fn resolve_pipeline_vars(&self) -> BTreeMap<String, String> {
        let mut s = Scope::new();
        s.lenient(self.pipeline.undefined_is_empty);
        s.push_layer(self.cli_vars.iter().cloned()).push_layer(
            self.pipeline
                .global_env
                .iter()
                .map(|v| (v.name.clone(), v.value.clone())),
        );
        s.push_layer(self.host_env.iter().cloned());
        let mut all = s.resolve_all().unwrap_or_default();
        let host: Vec<&str> = self.host_env.iter().map(|(k, _)| k.as_str()).collect();
        all.retain(|k, _| !host.contains(&k.as_str()) || self.cli_vars.iter().any(|(c, _)| c == k));
        all
    }

    pub fn predefined(&self, job: &Job, attempt: u32, step: &str, workspace: &Path) -> Vec<(String, String)> {
        vec![
            ("CI".into(), "true".into()),
            ("TRACKSIDE".into(), "true".into()),
            ("CI_PIPELINE_ID".into(), self.run_id.clone()),
            ("CI_PIPELINE_NAME".into(), self.pipeline.name.clone()),
            ("CI_JOB_NAME".into(), job.name.clone()),
            ("CI_JOB_ATTEMPT".into(), attempt.to_string()),
            // A name is literal text (`Run echo ${#X}` is no reference).
            ("CI_JOB_STEP".into(), step.replace('$', "$$")),
            ("CI_PROJECT_DIR".into(), workspace.display().to_string()),
            ("TRACKSIDE_RUN_DIR".into(), self.run_dir.display().to_string()),
            // This trackside, so a pipeline can run `${TRACKSIDE_EXE} demo-service`.
            ("TRACKSIDE_EXE".into(), self.program.display().to_string()),
        ]
    }
}

/// One attempt's inputs.
pub struct Attempt {
    pub job: JobId,
    pub attempt: u32,
    /// `job.<name>.status` as it was when the attempt started.
    pub statuses: Arc<HashMap<String, String>>,
    pub cancel: CancellationToken,
    pub tx: mpsc::Sender<RunnerMsg>,
    /// Steering commands for a deploy job's rollout.
    pub control: Option<mpsc::Receiver<(crate::deploy::rollout::Command, crate::protocol::identity::Approver)>>,
    /// Variables from the `reports:dotenv` of the jobs whose artifacts this
    /// one received (set once they are restored).
    pub dotenv: std::sync::OnceLock<Vec<(String, String)>>,
    /// A GitHub job's `needs` context: per needed job id, its `outputs`
    /// and `result` when the attempt started.
    pub needs: Arc<serde_json::Value>,
    /// The job's container and services once started (set once).
    pub docker: std::sync::OnceLock<Containers>,
    /// A GitHub job's `GITHUB_EVENT_PATH` and the payload's text (a pull
    /// request's is tens of kilobytes): made once, read by every step.
    pub event: std::sync::OnceLock<Box<(std::path::PathBuf, String)>>,
    /// The output line that tells what went wrong, should the attempt fail.
    pub telling: std::sync::Mutex<Telling>,
    /// What its steps used (each step's executor adds to it).
    pub usage: Arc<crate::exec::Usage>,
}

/// What tells why an attempt failed: the knowledge base's diagnosis of
/// its failing step, and the line a failure's signature is made from (the
/// first the diagnosis matched, else the last line written to standard
/// error).
#[derive(Debug, Clone, Default)]
pub struct Telling {
    pub diagnosis: Option<crate::protocol::Diagnosis>,
    pub last_stderr: Option<String>,
}

impl Telling {
    pub fn line(&self) -> Option<String> {
        self.diagnosis
            .as_ref()
            .and_then(|d| d.lines.first().cloned())
            .or_else(|| self.last_stderr.clone())
    }
}

/// What of an attempt runs in Docker besides its steps.
#[derive(Debug, Clone, Default)]
pub struct Containers {
    /// The job's own container (GitHub's `container:`).
    pub job_box: Option<crate::exec::JobBox>,
    pub network: Option<String>,
    pub services: Vec<crate::exec::ServicePorts>,
    /// The images built for its Docker actions, as (step index, tag).
    pub action_images: Vec<(usize, String)>,
}

impl Containers {
    /// GitHub's `job.container` and `job.services` contexts.
    pub fn context(&self) -> (serde_json::Value, serde_json::Value) {
        let network = self.network.clone().unwrap_or_default();
        let container = serde_json::json!({
            "id": self.job_box.as_ref().map(|b| b.id.clone()).unwrap_or_default(),
            "network": network,
        });
        let services = self
            .services
            .iter()
            .map(|s| {
                let ports: serde_json::Map<String, serde_json::Value> = s
                    .ports
                    .iter()
                    .map(|(c, h)| (c.clone(), serde_json::Value::String(h.clone())))
                    .collect();
                let value = serde_json::json!({"id": s.container, "network": network, "ports": ports});
                (s.service.clone(), value)
            })
            .collect::<serde_json::Map<_, _>>();
        (container, serde_json::Value::Object(services))
    }
}

pub(super) async fn note(a: &Attempt, step: &Arc<str>, text: String) {
    let _ =
        a.tx.send(RunnerMsg::Log {
            job: a.job,
            attempt: a.attempt,
            step: step.clone(),
            stream: Stream::Stderr,
            text: format!("trackside: {text}"),
            partial: false,
        })
        .await;
}

/// Artifacts of a job left out of the run (`--only`), as the latest run
/// that recorded them left them.
#[derive(Debug, Clone, Default)]
pub struct Borrowed {
    /// (run, manifest); `None` when no run recorded any.
    pub from: Option<(String, Digest)>,
    /// Its `reports:dotenv` files.
    pub dotenv: Vec<String>,
}

/// A computed cache key, carried to the actor so it can store the result
/// once the attempt's log is complete.
#[derive(Debug, Clone)]
pub struct CacheKey {
    pub key: String,
    pub components: Components,
}
