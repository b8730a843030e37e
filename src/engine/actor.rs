//! The engine actor: one tokio task owns the run; [`EngineHandle`] is the
//! only way in.
//!
//! Commands arrive on a bounded mpsc channel with oneshot replies; events go
//! out on a broadcast channel so several front-ends can watch one run. The
//! actor feeds inputs to the pure [`RunState`] and performs the effects it
//! returns: start or kill attempts, schedule retries, record and broadcast
//! events. Masking and recording happen here, before any consumer sees an
//! event, so none can leak a secret or miss a record.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::exec::{Executor, workspace};
use crate::pipeline::diag::suggestion_hint;
use crate::pipeline::vars::Scope;
use crate::pipeline::{Pipeline, Plan};
use crate::protocol::identity::Person;
use crate::protocol::{Link, LinkError, Subscription};
use crate::store::{self, RunMeta, RunRecord, StoreError};

use super::artifacts;
use super::event::{Event, EventKind, RunSummary};
use super::mask::Masker;
use super::runner::{Attempt, RunContext, RunnerMsg, run_attempt};
use super::state::{CancelReason, CondEnv, Effect, Input, JobId, Options, RunState};

/// Events buffered per subscriber before a slow one starts missing some
/// (it then catches up from the replay, and a printer's skipped log lines
/// from the record). The ring is made whole at the start, 32 bytes an
/// event: 2^14 is half a MiB (2^16 was 2 MiB and 1.5 ms of the start).
pub const EVENT_CAPACITY: usize = 1 << 14;
/// Events held before they are flushed (a burst larger than this is
/// written in parts).
const OUTBOX_MOST: usize = 1024;
/// Messages of the attempts handled in one turn of the actor's loop.
const DRAIN_MOST: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("unknown job `{name}`; {hint}")]
    UnknownJob { name: String, hint: String },
    #[error("{0}")]
    Rejected(String),
    #[error("the engine has stopped")]
    Stopped,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot watch the pipeline file: {0}")]
    Watch(String),
    #[error("cannot list the project files in {dir}: {source}")]
    Project { dir: PathBuf, source: std::io::Error },
}

/// How to run a pipeline.
pub struct EngineConfig {
    pub run_id: String,
    pub state_dir: PathBuf,
    pub pipeline_file: PathBuf,
    pub project_dir: PathBuf,
    pub in_place: bool,
    pub keep_workspaces: bool,
    /// Note how the run is set up ([`EngineHandle::setup`]).
    pub verbose: bool,
    pub max_parallel: usize,
    /// What the machine gives the run's jobs; measured at the start when
    /// `None` (see [`super::admission::Capacity::measure`]).
    pub capacity: Option<super::admission::Capacity>,
    /// `-j auto`: the number of jobs at once follows the machine's
    /// pressure (see [`super::parallelism`]); `max_parallel` is ignored.
    pub auto_parallel: bool,
    /// Share the machine with the other runs of the state directory (see
    /// [`super::sharing`]); `None`: this run counts only its own jobs.
    pub sharing: Option<super::sharing::Sharing>,
    /// Where `-j auto` reads pressure stall information: a folder with
    /// `cpu`, `memory` and `io` files in /proc/pressure's format (`None`:
    /// trackside's cgroup, else /proc/pressure).
    pub pressure_files: Option<PathBuf>,
    /// Go on with the crashed run `run_id` (its record is reopened; see
    /// [`super::resume`]).
    pub resume: Option<super::resume::Resumed>,
    pub fail_fast: bool,
    /// Headless: end the run when only unapproved manual jobs remain.
    pub finish_when_blocked: bool,
    pub cli_vars: Vec<(String, String)>,
    /// `(NAME, value)` of each `--secret`.
    pub secrets: Vec<(String, String)>,
    /// Host variables jobs may see (allowlist + `--pass-env`).
    pub host_env: Vec<(String, String)>,
    /// Only this job and what it depends on.
    pub only_job: Option<String>,
    /// Artifacts of jobs left out of this run (`--only`), from the latest
    /// run that recorded them: producer -> (run, manifest).
    pub borrowed_artifacts: BTreeMap<String, crate::engine::artifacts::Borrowed>,
    /// With `only_job`: run it this many times.
    pub repeat: Option<u32>,
    pub kill_grace: Option<Duration>,
    pub executor: Arc<dyn Executor>,
    /// Whether steps with an image run in containers (the executor must handle them).
    pub containers: bool,
    /// Container jobs run on a cluster (`--executor swarm`): this
    /// machine's admission does not hold their resources.
    pub remote_containers: bool,
    /// Keep a failed attempt's container and workspace (`trackside shell`).
    pub keep_failed: bool,
    pub seed: Option<u64>,
    /// Watch the pipeline file and apply valid edits to jobs that have not
    /// started, re-reading it with these options. `None`: no watching.
    pub watch: Option<crate::pipeline::LoadOptions>,
    /// `--no-cache`: run every job; results are still stored.
    pub no_cache: bool,
    /// What git said about the project (GitLab pipelines), so the run's
    /// repository is written without asking again.
    /// The options the pipeline was read with: a generated child pipeline
    /// (GitLab's `trigger: include: {artifact, job}`) is read with them.
    pub load_options: Option<crate::pipeline::LoadOptions>,
    pub git: Option<crate::exec::git::Facts>,
    /// trackside's own program: what a live service's process runs, and
    /// `TRACKSIDE_EXE` in steps (this program by default; tests that run
    /// the engine in their own binary name trackside's).
    pub program: PathBuf,
    /// The group the run's sockets are opened to (`--allow-group`): a live
    /// service a deploy starts opens its socket to it too.
    pub group: Option<String>,
    /// The index of `state_dir`, its opening begun before the pipeline was
    /// read ([`crate::store::index::Index::open_beside`]); `None`: opened
    /// when the run starts.
    pub index: Option<crate::store::index::Opening>,
}

/// Quiet time after the last change to the pipeline file before it is read.
pub const WATCH_DEBOUNCE: Duration = Duration::from_millis(200);

/// How often a run with running jobs looks for other runs' requests to
/// stop one (a preemption takes at most this long to begin).
const REQUESTS_EVERY: Duration = Duration::from_millis(500);

impl EngineConfig {
    /// A config with the defaults of `trackside run`: shell executor, one job
    /// per core, a fresh workspace per attempt, headless gate handling.
    pub fn new(run_id: String, state_dir: PathBuf, pipeline_file: PathBuf, project_dir: PathBuf) -> Self {
        EngineConfig {
            run_id,
            state_dir,
            pipeline_file,
            project_dir,
            in_place: false,
            keep_workspaces: false,
            verbose: false,
            max_parallel: std::thread::available_parallelism().map_or(2, |n| n.get()),
            capacity: None,
            auto_parallel: false,
            sharing: Some(super::sharing::Sharing::default()),
            pressure_files: None,
            resume: None,
            fail_fast: false,
            finish_when_blocked: true,
            cli_vars: Vec::new(),
            secrets: Vec::new(),
            host_env: Vec::new(),
            only_job: None,
            borrowed_artifacts: BTreeMap::new(),
            repeat: None,
            kill_grace: None,
            executor: Arc::new(crate::exec::shell::ShellExecutor),
            containers: false,
            remote_containers: false,
            keep_failed: false,
            seed: None,
            watch: None,
            no_cache: false,
            git: None,
            load_options: None,
            program: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("trackside")),
            group: None,
            index: None,
        }
    }
}

/// The replay and live receiver a subscriber gets: taken together in the
/// actor, so nothing falls between them.
/// The first sequence number it starts from (no later than the next event's).
type Subscribed = (u64, Vec<Arc<Event>>, broadcast::Receiver<Arc<Event>>);

enum Command {
    Start(oneshot::Sender<()>),
    /// A steering command and who sent it (for the audit trail).
    Steer(
        crate::protocol::Command,
        Person,
        oneshot::Sender<Result<String, EngineError>>,
    ),
    Subscribe(u64, oneshot::Sender<Subscribed>),
    Shutdown(oneshot::Sender<()>),
}

/// A clonable handle to a running engine: the in-process [`Link`].
#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<Command>,
    events: broadcast::Sender<Arc<Event>>,
    finished: watch::Receiver<Option<RunSummary>>,
    run_dir: PathBuf,
    run_id: String,
    /// How the run was set up, a line a fact, when asked (`run --verbose`).
    setup: Arc<Vec<String>>,
    replay: Arc<std::sync::Mutex<super::replay::Replay>>,
    records: Arc<super::records::Records>,
}

impl EngineHandle {
    /// Events from now on, live only (tests and benchmarks; front-ends use
    /// [`Link::subscribe`], which replays what came before).
    pub fn subscribe_live(&self) -> broadcast::Receiver<Arc<Event>> {
        self.events.subscribe()
    }

    pub fn run_dir(&self) -> &std::path::Path {
        &self.run_dir
    }

    /// How the run was set up: where jobs run, how their workspaces are
    /// made, how their processes are contained (`run --verbose`).
    pub fn setup(&self) -> &[String] {
        &self.setup
    }

    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    pub async fn start(&self) -> Result<(), EngineError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::Start(tx))
            .await
            .map_err(|_| EngineError::Stopped)?;
        rx.await.map_err(|_| EngineError::Stopped)
    }

    /// Sends a steering command on behalf of `by` (who the audit trail
    /// names: a person at another terminal, through the run socket).
    pub async fn send_as(&self, command: crate::protocol::Command, by: Person) -> Result<String, EngineError> {
        if command == crate::protocol::Command::Shutdown {
            self.shutdown().await;
            return Ok("stopped".into());
        }
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::Steer(command, by, tx))
            .await
            .map_err(|_| EngineError::Stopped)?;
        rx.await.map_err(|_| EngineError::Stopped)?
    }

    async fn steer(&self, command: crate::protocol::Command) -> Result<(), EngineError> {
        self.send_as(command, Person::me()).await.map(drop)
    }

    /// What the run keeps of its events numbered `from` on, and the number
    /// the first of them has (no later than the next event's); works after
    /// the run's end too.
    pub fn replay_since(&self, from: u64) -> (u64, Vec<Arc<Event>>) {
        let replay = lock(&self.replay);
        let from = from.min(replay.next_seq());
        (from, replay.since(from))
    }

    /// The events numbered `from` on (replayed), then live.
    pub async fn subscribe_from(&self, from: u64) -> Result<Subscribed, EngineError> {
        subscribe_with(&self.tx, from).await
    }

    /// Steers a deploy job's rollout (promote, abort, ...), as whoever
    /// runs this trackside.
    pub async fn rollout(&self, job: &str, cmd: crate::deploy::rollout::Command) -> Result<(), EngineError> {
        let command = crate::protocol::Command::Rollout {
            job: job.into(),
            action: cmd,
        };
        self.send_as(command, Person::me()).await.map(drop)
    }

    /// Makes a service's previous revision stable again, after its rollout
    /// completed; returns what changed, for people.
    pub async fn rollback_service(&self, service: &str) -> Result<String, EngineError> {
        let command = crate::protocol::Command::RollbackService {
            service: service.into(),
        };
        self.send_as(command, Person::me()).await
    }

    /// Releases a manual gate (or approves it in advance).
    pub async fn approve(&self, job: &str) -> Result<(), EngineError> {
        self.steer(crate::protocol::Command::Approve { job: job.into() }).await
    }
    /// Runs a failed or cancelled job again, with the dependents its failure skipped.
    pub async fn retry(&self, job: &str) -> Result<(), EngineError> {
        self.steer(crate::protocol::Command::Retry { job: job.into() }).await
    }
    pub async fn cancel(&self, job: &str) -> Result<(), EngineError> {
        self.steer(crate::protocol::Command::Cancel { job: job.into() }).await
    }
    pub async fn cancel_all(&self) -> Result<(), EngineError> {
        self.steer(crate::protocol::Command::CancelAll).await
    }
    pub async fn rerun_failed(&self) -> Result<(), EngineError> {
        self.steer(crate::protocol::Command::RerunFailed).await
    }
    pub async fn pause_scheduling(&self) -> Result<(), EngineError> {
        self.steer(crate::protocol::Command::Pause).await
    }
    pub async fn resume_scheduling(&self) -> Result<(), EngineError> {
        self.steer(crate::protocol::Command::Resume).await
    }
    /// Ends the run as blocked once only unapproved manual gates remain.
    pub async fn finish_waiting(&self) -> Result<(), EngineError> {
        self.steer(crate::protocol::Command::FinishWaiting).await
    }

    /// Cancels what still runs, waits for it to stop, and ends the actor.
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Command::Shutdown(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Waits until the run has finished and returns its summary.
    pub async fn wait(&self) -> Result<RunSummary, EngineError> {
        let mut rx = self.finished.clone();
        loop {
            if let Some(s) = rx.borrow_and_update().clone() {
                return Ok(s);
            }
            rx.changed().await.map_err(|_| EngineError::Stopped)?;
        }
    }
}

async fn subscribe_with(tx: &mpsc::Sender<Command>, from: u64) -> Result<Subscribed, EngineError> {
    let (reply, rx) = oneshot::channel();
    tx.send(Command::Subscribe(from, reply))
        .await
        .map_err(|_| EngineError::Stopped)?;
    rx.await.map_err(|_| EngineError::Stopped)
}

impl From<EngineError> for LinkError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Stopped => LinkError::Ended,
            other => LinkError::Refused(other.to_string()),
        }
    }
}

impl Link for EngineHandle {
    async fn subscribe(&self, from: u64) -> Result<Subscription, LinkError> {
        let (from, replay, rx) = self.subscribe_from(from).await?;
        let tx = self.tx.clone();
        let resync: crate::protocol::link::Resync = Box::new(move |from| {
            let tx = tx.clone();
            Box::pin(async move { subscribe_with(&tx, from).await.ok().map(|(_, replay, rx)| (replay, rx)) })
        });
        Ok(Subscription::local(from, replay, rx, resync))
    }

    async fn send(&self, command: crate::protocol::Command) -> Result<String, LinkError> {
        Ok(EngineHandle::send_as(self, command, Person::me()).await?)
    }

    async fn send_as(&self, command: crate::protocol::Command, by: Person) -> Result<String, LinkError> {
        Ok(EngineHandle::send_as(self, command, by).await?)
    }

    async fn query(&self, query: crate::protocol::Query) -> Result<crate::protocol::Answer, LinkError> {
        self.records.answer(query).await
    }

    fn run_id(&self) -> &str {
        &self.run_id
    }

    fn run_dir(&self) -> &Path {
        &self.run_dir
    }
}

/// Writes the resolved pipeline (its secrets masked) into the run's record,
/// as JSON: the thread writing it, a 50-job GitHub workflow with no secret
/// to mask, takes 0.4 ms of CPU so, and took 1.6-2.2 ms writing YAML, which
/// on two cores was CPU taken from the way to the first jobs. Secrets are
/// masked string by string in a JSON value ([`Masker::mask_json`]), not
/// in the text, where JSON's escapes would hide them.
fn write_resolved(pipeline: &Pipeline, masker: &Masker, dir: &Path) {
    let text = if masker.is_empty() {
        serde_json::to_string_pretty(pipeline)
    } else {
        serde_json::to_value(pipeline).and_then(|mut v| {
            masker.mask_json(&mut v);
            serde_json::to_string_pretty(&v)
        })
    };
    let text = match text {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!("cannot keep the resolved pipeline: {e}");
            return;
        }
    };
    if let Err(e) = RunRecord::write_pipeline(dir, &text) {
        tracing::warn!("cannot keep the resolved pipeline: {e}");
    }
}

/// Restricts a pipeline to one job and its dependencies.
fn select(pipeline: Pipeline, plan: Plan, job: &str) -> Result<(Pipeline, Plan), EngineError> {
    let sel = crate::pipeline::select::Selection {
        jobs: vec![job.to_string()],
        ..Default::default()
    };
    let sub = crate::pipeline::select::select(&pipeline, &plan, &sel).map_err(|e| match e {
        crate::pipeline::select::SelectError::UnknownJob { name, hint, .. } => EngineError::UnknownJob { name, hint },
        other => EngineError::Rejected(other.to_string()),
    })?;
    let plan = Plan::build(&sub).map_err(|_| EngineError::Rejected("cannot plan the selected jobs".into()))?;
    Ok((sub, plan))
}

/// Creates the run record and the actor. Nothing runs until `start`.
pub fn spawn(pipeline: Pipeline, plan: Plan, mut cfg: EngineConfig) -> Result<EngineHandle, EngineError> {
    let (mut pipeline, plan) = match &cfg.only_job {
        Some(job) => select(pipeline, plan, job)?,
        None => (pipeline, plan),
    };
    let repeat = match (&cfg.only_job, cfg.repeat) {
        (Some(job), Some(n)) => pipeline.job_index(job).map(|j| (j, n.max(1))),
        _ => None,
    };
    // The project's file list is asked of git (or walked) while the record
    // is made: side by side, not one after the other. (The failure rules
    // are compiled only once a step fails or prints much: insight::knowledge.)
    let listing = (!cfg.in_place).then(|| {
        let (project, state) = (cfg.project_dir.clone(), cfg.state_dir.clone());
        std::thread::spawn(move || {
            workspace::project_files(&project, &state).map(|files| {
                let bytes = workspace::total_size(&project, &files);
                (files, bytes)
            })
        })
    });
    let mut masker = Masker::new(cfg.secrets.iter().map(|(_, v)| v.clone()));
    // A GitHub workflow's secrets read as on GitHub.
    if !pipeline.jobs.is_empty() && pipeline.jobs.iter().all(|j| j.file_commands) {
        masker = masker.marked(crate::engine::mask::GITHUB_MASK);
    }
    let mut meta = RunMeta {
        run_id: cfg.run_id.clone(),
        pipeline: pipeline.name.clone(),
        pipeline_file: cfg.pipeline_file.clone(),
        project_dir: cfg.project_dir.clone(),
        started_ms: store::now_ms(),
        owner: Some(crate::process::owner().to_string()),
    };
    // The store first: a damaged index stops the run before it has a record.
    let index = Arc::new(match cfg.index.take() {
        Some(opening) => opening.join()?,
        None => crate::store::index::Index::open(&cfg.state_dir)?,
    });
    quarantine(&mut pipeline, &index, &cfg.pipeline_file);
    // What the jobs used in past runs decides the first jobs' admission, so
    // it is waited for; read beside the record and the runtime's set-up.
    let usage = {
        let (index, file, jobs) = (index.clone(), cfg.pipeline_file.clone(), pipeline.jobs.len());
        std::thread::Builder::new()
            .name("trackside-usage".into())
            .spawn(move || past_usage(&index, &file, jobs))
            .ok()
    };
    // What history says of the jobs is for display and the forecast: read
    // beside the run, not on the way of its first job (thousands of rows),
    // by the history's writer before it writes this run's first row.
    let (read_past_first, past) = {
        let (index, file) = (index.clone(), cfg.pipeline_file.clone());
        let names: Vec<String> = pipeline.jobs.iter().map(|j| j.name.clone()).collect();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let read: Box<dyn FnOnce() + Send> = Box::new(move || {
            let _ = tx.send(read_past(&index, &file, &names));
        });
        (read, rx)
    };
    let artifact_limits = crate::store::gc::artifact_limits(&cfg.state_dir)?;
    // `-j auto`: a job more than the cores to start with, CPU tokens for as many as
    // it may ever allow.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut auto = cfg.auto_parallel.then(|| {
        let (gauge, notice) = match &cfg.pressure_files {
            Some(dir) => (crate::exec::pressure::Gauge::at(dir, cores), None),
            None => crate::exec::pressure::Gauge::system(),
        };
        (super::parallelism::Controller::new(cores, 0), gauge, notice)
    });
    if let Some((ctl, _, _)) = &auto {
        cfg.max_parallel = ctl.limit();
    }
    let capacity = cfg.capacity.unwrap_or_else(|| {
        let tokens = auto.as_ref().map_or(cfg.max_parallel, |(ctl, _, _)| ctl.max());
        super::admission::Capacity::measure(tokens.max(1))
    });
    if let Some((ctl, _, _)) = &mut auto {
        *ctl = super::parallelism::Controller::new(cores, capacity.margin);
    }
    let (record, joining) = match &cfg.resume {
        // The run goes on in its own folder, under its own id and start.
        Some(_) => {
            let dir = store::runs_dir(&cfg.state_dir).join(&cfg.run_id);
            if let Some(old) = std::fs::read_to_string(dir.join("meta.json"))
                .ok()
                .and_then(|t| serde_json::from_str::<RunMeta>(&t).ok())
            {
                meta.started_ms = old.started_ms;
            }
            let joining = Joining::start(&cfg, capacity);
            (RunRecord::reopen(&dir, &meta)?, joining)
        }
        None => {
            let dir = RunRecord::claim(&cfg.state_dir, &mut meta)?;
            // Another run may have had the id first: the record's is the run's.
            cfg.run_id = meta.run_id.clone();
            let joining = Joining::start(&cfg, capacity);
            (RunRecord::fill(dir, &meta)?, joining)
        }
    };
    // The jobs' repository (a `git read-tree`, 1-2 ms) is written beside
    // the rest of the set-up: the listing, the slot table, the stores.
    let git_repo = (pipeline.git_checkout && !cfg.in_place).then(|| {
        let (project, dest, facts) = (cfg.project_dir.clone(), record.dir().join("git"), cfg.git.clone());
        std::thread::Builder::new()
            .name("trackside-git-repo".into())
            .spawn(move || crate::exec::git::run_repository(&project, &dest, facts.as_ref()))
            .ok()
            .map(|h| JoinOnDrop(Some(h)))
    });
    let (files, bytes) = match listing.map(std::thread::JoinHandle::join) {
        None => (Vec::new(), 0),
        Some(Ok(listed)) => listed.map_err(|source| EngineError::Project {
            dir: cfg.project_dir.clone(),
            source,
        })?,
        Some(Err(_)) => {
            return Err(EngineError::Rejected(format!(
                "listing the files of {} failed",
                cfg.project_dir.display()
            )));
        }
    };
    let spares = Arc::new(workspace::Spares::open(
        &cfg.state_dir,
        &cfg.project_dir,
        files.len(),
        bytes,
        crate::exec::contain::available(),
    ));
    let pipeline = Arc::new(pipeline);
    // The resolved pipeline's text (a 1,000-job one: milliseconds of
    // JSON) is written beside the run, not on the way of its first job;
    // the run's end waits for it. A resumed run keeps its first text.
    let resolved = match &cfg.resume {
        Some(_) => None,
        None => {
            let (p, m, dir) = (pipeline.clone(), masker.clone(), record.dir().to_path_buf());
            let spawned = std::thread::Builder::new().name("trackside-resolved".into()).spawn({
                let (p, m, dir) = (p.clone(), m.clone(), dir.clone());
                move || {
                    crate::process::background_thread();
                    write_resolved(&p, &m, &dir)
                }
            });
            match spawned {
                Ok(h) => Some(h),
                Err(_) => {
                    write_resolved(&p, &m, &dir);
                    None
                }
            }
        }
    };
    let ctx = Arc::new(RunContext {
        run_id: cfg.run_id.clone(),
        pipeline: pipeline.clone(),
        run_dir: record.dir().to_path_buf(),
        project_dir: cfg.project_dir.clone(),
        program: cfg.program.clone(),
        group: cfg.group.clone(),
        files,
        in_place: cfg.in_place,
        keep_workspaces: cfg.keep_workspaces,
        kill_grace: cfg.kill_grace.unwrap_or(pipeline.kill_grace),
        cli_vars: cfg.cli_vars.clone(),
        secrets: cfg.secrets.clone(),
        host_env: cfg.host_env.clone(),
        executor: cfg.executor.clone(),
        containers: cfg.containers,
        keep_failed: cfg.keep_failed,
        objects: Arc::new(
            crate::store::objects::ObjectStore::open(&cfg.state_dir.join("objects"))
                .map_err(|e| EngineError::Rejected(format!("cannot open the artifact store: {e}")))?,
        ),
        index,
        state_dir: cfg.state_dir.clone(),
        artifact_limits,
        artifact_bytes: Default::default(),
        borrowed_artifacts: cfg.borrowed_artifacts.clone(),
        git_repo: match git_repo {
            None => None,
            Some(Some(thread)) => thread
                .join()
                .ok_or_else(|| EngineError::Rejected("writing the jobs' git repository failed".into()))?,
            // No thread: written here.
            Some(None) => {
                crate::exec::git::run_repository(&cfg.project_dir, &record.dir().join("git"), cfg.git.as_ref())
            }
        },
        spares,
        empty_folders: Arc::new(workspace::EmptyFolders::new(
            record.dir().join("files"),
            crate::exec::contain::available(),
        )),
        pipeline_vars: Default::default(),
        // Flake hunting needs real runs: repetitions never use the cache.
        use_cache: !cfg.no_cache && repeat.is_none(),
    });
    let cond_env = conditional_env(&ctx, &pipeline);
    // What can still fail comes before the table is taken from `joining`
    // (which leaves the table when dropped).
    let breakers = crate::store::gc::breaker_config(&cfg.state_dir)?;
    let (watch_tx, watch_rx) = mpsc::unbounded_channel();
    let watcher = match &cfg.watch {
        Some(_) => Some(watch_file(&cfg.pipeline_file, watch_tx)?),
        None => None,
    };
    let (shared, capacity) = joining.finish(&cfg, capacity);
    let opts = Options {
        max_parallel: cfg.max_parallel.max(1),
        fail_fast: cfg.fail_fast,
        finish_when_blocked: cfg.finish_when_blocked,
        repeat,
        cond_env,
        vars: ctx.pipeline_vars().clone(),
        seed: cfg.seed.unwrap_or_else(|| fastrand::u64(..)),
        capacity,
        learned: match usage.map(std::thread::JoinHandle::join) {
            Some(Ok(learned)) => learned,
            // No thread (or it panicked): read here.
            _ => past_usage(&ctx.index, &cfg.pipeline_file, pipeline.jobs.len()),
        },
        breakers,
        resumed: cfg.resume.clone(),
        shared: shared.is_some(),
        remote_containers: cfg.remote_containers,
    };
    let state = RunState::new(cfg.run_id.clone(), pipeline.clone(), plan, opts);

    let (tx, cmd_rx) = mpsc::channel(64);
    let (events, _) = broadcast::channel(EVENT_CAPACITY);
    let (finished_tx, finished) = watch::channel(None);
    let (notes_tx, notes_rx) = mpsc::unbounded_channel();
    let replay = Arc::new(std::sync::Mutex::new(super::replay::Replay::default()));
    let (msg_tx, msg_rx) = mpsc::channel(1024);
    let handle = EngineHandle {
        tx,
        events: events.clone(),
        finished,
        run_dir: record.dir().to_path_buf(),
        run_id: cfg.run_id.clone(),
        setup: Arc::new(if cfg.verbose {
            setup_notes(&ctx, bytes)
        } else {
            Vec::new()
        }),
        replay: replay.clone(),
        records: Arc::new(super::records::Records::new(record.dir().to_path_buf())),
    };
    let dialect = match cfg.load_options.as_ref().and_then(|o| o.dialect) {
        Some(crate::pipeline::Dialect::Gitlab) => "gitlab",
        Some(crate::pipeline::Dialect::Github) => "github",
        _ => "native",
    };
    let history = super::history::History::start(
        ctx.index.clone(),
        &cfg.run_id,
        &cfg.pipeline_file,
        dialect,
        cfg.project_dir.clone(),
        cfg.git.clone(),
        read_past_first,
    );
    let actor = Actor {
        resolved,
        history,
        state,
        ctx,
        record,
        masker,
        splits: HashMap::new(),
        events,
        finished_tx,
        cmd_rx,
        msg_rx,
        msg_tx,
        running: HashMap::new(),
        retry_timers: HashMap::new(),
        wake_at: None,
        shared,
        releases: Vec::new(),
        release_at: None,
        auto: auto.map(|(ctl, gauge, notice)| Auto { ctl, gauge, notice }),
        started_at: None,
        pipeline_timeout: pipeline.timeout,
        timed_out: false,
        shutdown: Vec::new(),
        rollouts: HashMap::new(),
        load_options: cfg.load_options.clone(),
        pipeline_file: cfg.pipeline_file.clone(),
        watch: cfg.watch.map(|opts| Watch {
            file: cfg.pipeline_file.clone(),
            opts,
            rx: watch_rx,
            due: None,
            _watcher: watcher,
        }),
        coverage: HashMap::new(),
        coverage_re: HashMap::new(),
        attempts: tokio_util::task::TaskTracker::new(),
        notes_tx,
        notes_rx,
        next_seq: cfg.resume.as_ref().map_or(0, |r| r.next_seq),
        outbox: Vec::new(),
        replay: replay.clone(),
        log_lines: Default::default(),
        past: Some(past),
        finishing: None,
        durations: Default::default(),
        past_runs: None,
        forecast_at: None,
        forecasting: None,
        forecast_shown: None,
        cluster_held: None,
    };
    if cfg.remote_containers {
        let finished = actor.finished_tx.subscribe();
        tokio::spawn(watch_cluster(cfg.executor.clone(), actor.msg_tx.clone(), finished));
    }
    tokio::spawn(actor.run());
    Ok(handle)
}

/// How often the cluster's nodes are looked at.
const CLUSTER_EVERY: Duration = Duration::from_secs(3);
/// How often a change in the number of trackside's tasks alone is told,
/// per 20 nodes (a busy swarm changes it all the time; each report is
/// recorded, so a large cluster is told less often).
const CLUSTER_LOAD_EVERY: Duration = Duration::from_secs(5);

/// Tells the actor the cluster's nodes at the start, at once when a node's
/// state, availability or labels change, and at most every
/// [`CLUSTER_LOAD_EVERY`] (per 20 nodes) when only the load does; until
/// the run ends.
async fn watch_cluster(
    executor: Arc<dyn Executor>,
    tx: mpsc::Sender<RunnerMsg>,
    finished: watch::Receiver<Option<RunSummary>>,
) {
    let mut last: Option<(Vec<crate::protocol::view::ClusterNode>, Instant)> = None;
    while finished.borrow().is_none() && !tx.is_closed() {
        if let Some(nodes) = executor.cluster().await {
            let unloaded = |n: &[crate::protocol::view::ClusterNode]| {
                n.iter()
                    .map(|n| crate::protocol::view::ClusterNode {
                        trackside_tasks: 0,
                        ..n.clone()
                    })
                    .collect::<Vec<_>>()
            };
            let tell = match &last {
                None => true,
                Some((before, _)) if unloaded(before) != unloaded(&nodes) => true,
                Some((before, at)) => {
                    let every = CLUSTER_LOAD_EVERY * u32::try_from(nodes.len().div_ceil(20).max(1)).unwrap_or(u32::MAX);
                    *before != nodes && at.elapsed() >= every
                }
            };
            if tell {
                last = Some((nodes.clone(), Instant::now()));
                if tx.send(RunnerMsg::Cluster(nodes)).await.is_err() {
                    return;
                }
            }
        }
        tokio::time::sleep(CLUSTER_EVERY).await;
    }
}

/// The run's joining of the slot table (a SQLite file opened and a first
/// write: a millisecond or two), on a thread of its own while the rest of
/// its record and context are made, once its id is its own (its folder
/// made). A start that fails meanwhile leaves the table again (on drop).
struct Joining {
    thread: Option<std::thread::JoinHandle<(Option<Shared>, super::admission::Capacity)>>,
    run_id: String,
}

impl Joining {
    fn start(cfg: &EngineConfig, capacity: super::admission::Capacity) -> Joining {
        let thread = cfg.sharing.and_then(|sharing| {
            let (state, id) = (cfg.state_dir.clone(), cfg.run_id.clone());
            std::thread::Builder::new()
                .name("trackside-slots".into())
                .spawn(move || share(&state, &id, sharing, capacity))
                .ok()
        });
        Joining {
            thread,
            run_id: cfg.run_id.clone(),
        }
    }

    /// The table (`None`: not sharing, or it could not be used) and the
    /// capacity it leaves the run (of `capacity`, the run's own).
    fn finish(
        mut self,
        cfg: &EngineConfig,
        capacity: super::admission::Capacity,
    ) -> (Option<Shared>, super::admission::Capacity) {
        let Some(sharing) = cfg.sharing else {
            return (None, capacity);
        };
        match self.thread.take().and_then(|t| t.join().ok()) {
            Some(joined) => joined,
            // No thread could be started, or it panicked: here, then.
            None => share(&cfg.state_dir, &cfg.run_id, sharing, capacity),
        }
    }
}

impl Drop for Joining {
    fn drop(&mut self) {
        if let Some(Ok((Some(mut shared), _))) = self.thread.take().map(std::thread::JoinHandle::join)
            && let Err(e) = shared.slots.unregister(&self.run_id)
        {
            tracing::warn!("{e}");
        }
    }
}

/// Registers the run in the machine's slot table: its capacity becomes the
/// one the runs sharing the machine use (see [`super::sharing::capacity`]).
/// A table that cannot be used is said once; the run then counts only its
/// own jobs.
fn share(
    state_dir: &Path,
    run_id: &str,
    sharing: super::sharing::Sharing,
    mut capacity: super::admission::Capacity,
) -> (Option<Shared>, super::admission::Capacity) {
    let me = crate::store::slots::RunRow {
        run_id: run_id.to_string(),
        owner: crate::process::owner().to_string(),
        priority: sharing.priority.rank(),
        cpu_milli: capacity.cpu_milli,
        memory: capacity.memory,
        since_ms: crate::store::now_ms(),
        waiting_until_ms: 0,
    };
    let registered = crate::store::slots::Slots::open(state_dir).and_then(|mut slots| {
        let table = slots.register(&me)?;
        Ok((slots, table))
    });
    match registered {
        Ok((slots, table)) => {
            let shared = super::sharing::capacity(&table);
            capacity.cpu_milli = shared.cpu_milli;
            capacity.memory = shared.memory;
            (Some(Shared { slots, sharing }), capacity)
        }
        Err(e) => {
            tracing::warn!("{e}");
            (None, capacity)
        }
    }
}

/// What the pipeline's history says, read once at the start of a run.
struct Past {
    /// Per job name: its flake rate for its box (flaky jobs only) and its
    /// `history` fact.
    jobs: Vec<super::state::JobHistory>,
    /// The pipeline's recent runs (the UI's dashboard); None without history.
    stats: Option<crate::protocol::view::PipelineStats>,
    /// Each job's durations in recent runs, for the forecast (empty when
    /// there is no history, or it cannot be read).
    durations: std::collections::BTreeMap<String, Vec<f64>>,
}

fn read_past(index: &crate::store::index::Index, file: &std::path::Path, names: &[String]) -> Past {
    use crate::insight::forecast::MAX_SAMPLES;
    let (jobs, stats) = flake_facts(names, index, file);
    let key = crate::store::history::pipeline_key(file);
    let durations = index
        .recent_durations(&key, names.len(), MAX_SAMPLES)
        .unwrap_or_else(|e| {
            tracing::warn!("cannot read past durations for the forecast: {e}");
            Default::default()
        });
    Past { jobs, stats, durations }
}

/// How many of a job's past attempts its learned need comes from.
const USAGE_SAMPLES: usize = 20;

/// What each job used in the pipeline's recent runs, for admission: read
/// before the first job starts (one indexed query), so no job is admitted
/// on a guess its history contradicts.
fn past_usage(
    index: &crate::store::index::Index,
    file: &std::path::Path,
    jobs: usize,
) -> HashMap<String, super::admission::JobUsage> {
    let key = crate::store::history::pipeline_key(file);
    index
        .usage(&key, jobs, USAGE_SAMPLES)
        .map(|u| u.into_iter().collect())
        .unwrap_or_else(|e| {
            tracing::warn!("cannot read what the jobs used in past runs: {e}");
            Default::default()
        })
}

/// Marks the jobs in quarantine (`trackside quarantine`, by name or GitHub
/// job id, for this pipeline file or every one): their failures do not
/// fail the run, and the UI says until when.
fn quarantine(pipeline: &mut Pipeline, index: &crate::store::index::Index, file: &std::path::Path) {
    let list = match index.quarantine_list() {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!("cannot read the quarantine list: {e}");
            return;
        }
    };
    if list.is_empty() {
        return;
    }
    let key = crate::store::history::pipeline_key(file);
    let now = store::now_ms();
    let list: Vec<_> = list.into_iter().filter(|q| q.applies(&key, now)).collect();
    // Test cases: `JOB › TEST` for one job's, a bare name that is no job's
    // for any job's.
    let is_job = |name: &str| {
        pipeline
            .jobs
            .iter()
            .any(|j| j.name == name || j.id.as_deref() == Some(name))
    };
    let bare: Vec<String> = list
        .iter()
        .filter(|q| !q.name.contains(" › ") && !is_job(&q.name))
        .map(|q| q.name.clone())
        .collect();
    for j in &mut pipeline.jobs {
        let prefix = format!("{} › ", j.name);
        j.quarantined_tests = list
            .iter()
            .filter_map(|q| q.name.strip_prefix(&prefix).map(str::to_string))
            .chain(bare.iter().cloned())
            .collect();
        if !j.quarantined_tests.is_empty() && !j.junit.is_empty() {
            j.facts.push((
                "quarantined tests".into(),
                format!(
                    "{}: their failures alone do not fail the run",
                    j.quarantined_tests.join(", ")
                ),
            ));
        }
        let found = list
            .iter()
            .find(|q| q.name == j.name || j.id.as_deref() == Some(q.name.as_str()));
        if let Some(q) = found {
            j.quarantined = true;
            let until = q.until_ms.map_or_else(
                || "until removed (trackside quarantine remove)".to_string(),
                |u| {
                    let t = humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(u));
                    format!("until {t}")
                },
            );
            j.facts.push((
                "quarantined".into(),
                format!("{until}: a failure does not fail the run"),
            ));
        }
    }
}

/// Most recent attempts a run looks at to tell its jobs' history.
const HISTORY_SHOWN: usize = 5_000;

/// Most recent test cases it looks at to name a flaky job's flaky tests
/// (a thousand tests over fifty runs, five runs of 10,000; about 9 MB read
/// at most). `trackside flaky` reads them all.
const TESTS_SHOWN: usize = 50_000;

/// Runs the UI's dashboard charts.
const RUNS_SHOWN: usize = 30;

/// Each job's record across runs, as the UI's detail pane shows it:
/// `flaky: 7 of 40 runs, 18% [9%, 30%] since abc12345` (or broken), with
/// its flaky test cases, and its flake rate for its box. From the newest
/// attempts of this pipeline only. Also the pipeline's recent runs for the
/// dashboard (None without history).
fn flake_facts(
    names: &[String],
    index: &crate::store::index::Index,
    file: &std::path::Path,
) -> (
    Vec<super::state::JobHistory>,
    Option<crate::protocol::view::PipelineStats>,
) {
    use crate::insight::flaky::{Verdict, analyse};
    let key = crate::store::history::pipeline_key(file);
    let filter = crate::store::history::Filter {
        pipeline: Some(key.clone()),
        limit: Some(HISTORY_SHOWN),
        lean: true,
        ..Default::default()
    };
    let rows = match index.attempts(&filter) {
        Ok(r) if !r.is_empty() => r,
        _ => return (Vec::new(), None),
    };
    let found = analyse(&rows);
    let stats = crate::insight::metrics::stats(&rows, &found, RUNS_SHOWN)
        .into_iter()
        .next();
    drop(rows);
    let tests = index
        .test_attempts(Some(&key), Some(TESTS_SHOWN))
        .map(|t| analyse(&t))
        .unwrap_or_default();
    let mut jobs = Vec::new();
    for name in names {
        let Some(f) = found
            .iter()
            .find(|f| &f.job == name && matches!(f.verdict, Verdict::Flaky | Verdict::Broken))
        else {
            continue;
        };
        // At least 1%: a job history calls flaky never shows 0%.
        let flake_pct = (f.verdict == Verdict::Flaky).then(|| (f.rate * 100.0).round().clamp(1.0, 100.0) as u8);
        let mut text = f.summary();
        if let Some(c) = f.since.as_ref().and_then(|s| s.commit.as_deref()) {
            text.push_str(&format!(" since {}", c.chars().take(8).collect::<String>()));
        }
        let prefix = format!("{name} › ");
        let flaky_tests: Vec<&str> = tests
            .iter()
            .filter(|t| t.verdict == Verdict::Flaky)
            .filter_map(|t| t.job.strip_prefix(&prefix))
            .take(3)
            .collect();
        if !flaky_tests.is_empty() {
            text.push_str(&format!("; flaky tests: {}", flaky_tests.join(", ")));
        }
        jobs.push(super::state::JobHistory {
            job: name.clone(),
            flake_pct,
            fact: text,
        });
    }
    (jobs, stats)
}

/// What `run --verbose` says of the run's set-up.
fn setup_notes(ctx: &RunContext, bytes: u64) -> Vec<String> {
    let mut notes = Vec::new();
    if ctx.in_place {
        notes.push(format!(
            "workspace: the project itself, {} (--in-place)",
            ctx.project_dir.display()
        ));
    } else {
        notes.push(format!(
            "workspace: a fresh copy per job of {} file(s), {bytes} bytes, of {}; {}",
            ctx.files.len(),
            ctx.project_dir.display(),
            ctx.spares.describe()
        ));
        if let Some(repo) = &ctx.git_repo {
            notes.push(format!(
                "git: each host job's .git links to the run's repository {} (container jobs get a clone)",
                repo.git_dir.display()
            ));
        }
    }
    notes.push(if crate::exec::contain::available() {
        "processes: each host step in a process group and a cgroup of its own, killed when the step ends".to_string()
    } else {
        "processes: each host step in a process group, tagged; no writable cgroup2 hierarchy, so a process that leaves the group is found by its tag".to_string()
    });
    notes
}

/// `env.X` for conditionals: each job's variables as at its first attempt.
fn conditional_env(ctx: &RunContext, pipeline: &Pipeline) -> CondEnv {
    let mut cond_env = BTreeMap::new();
    for (i, job) in pipeline.jobs.iter().enumerate() {
        if job.conditional.is_some() {
            let ws = ctx.run_dir.join("work").join(crate::store::file_safe(&job.name));
            let scope: Scope = ctx.scope(job, &[], ctx.predefined(job, 1, "", &ws));
            cond_env.insert(i, scope.resolve_all().unwrap_or_default());
        }
    }
    cond_env
}

/// Watches the pipeline file's directory (editors often replace the file by
/// renaming a new one over it) and reports changes to that file.
fn watch_file(
    file: &std::path::Path,
    tx: mpsc::UnboundedSender<()>,
) -> Result<notify::RecommendedWatcher, EngineError> {
    use notify::Watcher;
    let file = std::fs::canonicalize(file).unwrap_or_else(|_| file.to_path_buf());
    let dir = file
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let name = file.file_name().map(|n| n.to_os_string());
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res {
            let ours = ev.paths.iter().any(|p| p.file_name().map(|n| n.to_os_string()) == name);
            let changes = !matches!(ev.kind, notify::EventKind::Access(_));
            if ours && changes {
                let _ = tx.send(());
            }
        }
    })
    .map_err(|e| EngineError::Watch(e.to_string()))?;
    watcher
        .watch(&dir, notify::RecursiveMode::NonRecursive)
        .map_err(|e| EngineError::Watch(e.to_string()))?;
    Ok(watcher)
}

struct Watch {
    file: PathBuf,
    opts: crate::pipeline::LoadOptions,
    rx: mpsc::UnboundedReceiver<()>,
    /// When to read the file (debounced).
    due: Option<Instant>,
    _watcher: Option<notify::RecommendedWatcher>,
}

enum ActorMsg {
    Runner(RunnerMsg),
    RetryDue(JobId),
}

/// `-j auto`: the controller, the gauge it reads, and a notice to give
/// once (the gauge fell back from PSI).
struct Auto {
    ctl: super::parallelism::Controller,
    gauge: crate::exec::pressure::Gauge,
    notice: Option<String>,
}

/// A start asked for ([`Effect::Claim`]), settled with the others of its
/// batch.
struct PendingClaim {
    job: JobId,
    cancels_group: bool,
    hold: crate::store::slots::HoldRow,
}

/// What ended jobs held is given back at most this long after (or with the
/// next claims, whichever comes first).
const RELEASE_WITHIN: Duration = Duration::from_millis(20);

/// The run's place in the machine's slot table.
struct Shared {
    slots: crate::store::slots::Slots,
    sharing: super::sharing::Sharing,
}

struct Actor {
    /// Writes the resolved pipeline into the record (joined at the end).
    resolved: Option<std::thread::JoinHandle<()>>,
    /// Every attempt's row in the store's history.
    history: super::history::History,
    state: RunState,
    ctx: Arc<RunContext>,
    record: RunRecord,
    masker: Masker,
    /// Long lines in pieces, per attempt and stream, for [`SplitMasker`].
    splits: HashMap<(JobId, u32, crate::exec::Stream), (Arc<str>, crate::engine::mask::SplitMasker)>,
    events: broadcast::Sender<Arc<Event>>,
    finished_tx: watch::Sender<Option<RunSummary>>,
    cmd_rx: mpsc::Receiver<Command>,
    msg_rx: mpsc::Receiver<RunnerMsg>,
    msg_tx: mpsc::Sender<RunnerMsg>,
    running: HashMap<JobId, CancellationToken>,
    retry_timers: HashMap<JobId, tokio::task::JoinHandle<()>>,
    /// When the state machine asked to be woken ([`Effect::Wake`]).
    wake_at: Option<Instant>,
    /// Sharing the machine with other runs (`None`: alone, or the table
    /// could not be used).
    shared: Option<Shared>,
    /// Jobs whose holds are to be given back, and by when.
    releases: Vec<String>,
    release_at: Option<Instant>,
    /// `-j auto`'s controller and what it reads.
    auto: Option<Auto>,
    started_at: Option<Instant>,
    pipeline_timeout: Duration,
    timed_out: bool,
    /// Replies owed to `shutdown` callers, sent when nothing runs any more.
    shutdown: Vec<oneshot::Sender<()>>,
    /// Steering channels of running deploy jobs.
    rollouts: HashMap<JobId, mpsc::Sender<(crate::deploy::rollout::Command, crate::protocol::identity::Approver)>>,
    watch: Option<Watch>,
    /// See [`EngineConfig::load_options`].
    load_options: Option<crate::pipeline::LoadOptions>,
    /// The file the pipeline was read from (a GitHub matrix made from
    /// needs' outputs is read from it again).
    pipeline_file: PathBuf,
    /// Coverage its log reported, by job name (GitLab's `coverage`).
    coverage: HashMap<String, String>,
    /// Compiled `coverage` patterns, by pattern.
    coverage_re: HashMap<String, Option<regex::Regex>>,
    /// Every attempt's task: an attempt reports its end before it removes
    /// its workspace, and the actor waits for the removals before it ends.
    attempts: tokio_util::task::TaskTracker,
    /// Events of helper tasks (a service's rollback), emitted by the actor.
    notes_tx: mpsc::UnboundedSender<EventKind>,
    notes_rx: mpsc::UnboundedReceiver<EventKind>,
    /// The number the next event gets.
    next_seq: u64,
    /// Events recorded but not yet flushed to the record's files, pushed
    /// to the replay and sent to subscribers ([`Actor::flush_events`]): a
    /// burst of events is one write and one wake of each subscriber.
    outbox: Vec<Arc<Event>>,
    /// Shared with the handles: a replay is read without the actor (a
    /// client catching up after the run's end).
    replay: Arc<std::sync::Mutex<super::replay::Replay>>,
    /// Lines so far of each running attempt's log.
    log_lines: super::replay::LineCounts,
    /// What history says, until it has been read.
    past: Option<tokio::sync::oneshot::Receiver<Past>>,
    /// The run's last effects (its `run_finished` and after), held while
    /// history is still being read (at most until the instant), so that a
    /// quick run tells its jobs' history before it ends.
    finishing: Option<(Vec<Effect>, Instant)>,
    /// Each job's past durations, for the forecast (empty: no history).
    durations: std::collections::BTreeMap<String, Vec<f64>>,
    /// The pipeline's recent runs from history, sent once the run starts
    /// (the UI's dashboard).
    past_runs: Option<crate::protocol::view::PipelineStats>,
    /// When to forecast again: soon after a job transition, and every few
    /// seconds while jobs run (a running job's elapsed time changes it).
    forecast_at: Option<Instant>,
    /// A forecast being simulated on a blocking thread (a thousand jobs'
    /// simulations take milliseconds the actor does not wait for).
    forecasting: Option<tokio::sync::oneshot::Receiver<Option<crate::insight::forecast::Forecast>>>,
    /// The forecast last sent (p50, p90).
    forecast_shown: Option<(u64, u64)>,
    /// The cluster's nodes as its watcher last told, not yet sent.
    cluster_held: Option<Vec<crate::protocol::view::ClusterNode>>,
}

impl Actor {
    async fn run(mut self) {
        let (retry_tx, mut retry_rx) = mpsc::unbounded_channel::<JobId>();
        let mut pressure = tokio::time::interval(Duration::from_secs(1));
        pressure.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut commands_open = true;
        // Other runs' requests (preemption) are looked for while jobs run.
        let mut requests = tokio::time::interval(REQUESTS_EVERY);
        requests.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            let deadline = self.started_at.map(|s| s + self.pipeline_timeout);
            let timeout_armed = deadline.is_some() && !self.timed_out && !self.state.is_finished();
            let watch_due = self.watch.as_ref().and_then(|w| w.due);
            let history_due = self.history.due();
            let msg = tokio::select! {
                cmd = self.cmd_rx.recv(), if commands_open => match cmd {
                    Some(c) => { self.command(c, &retry_tx); None }
                    None => {
                        // Every handle is gone: nobody can steer or watch; stop cleanly.
                        commands_open = false;
                        self.begin_shutdown(None, &retry_tx);
                        None
                    }
                },
                Some(m) = self.msg_rx.recv() => Some(ActorMsg::Runner(m)),
                Some(j) = retry_rx.recv() => Some(ActorMsg::RetryDue(j)),
                Some(note) = self.notes_rx.recv() => {
                    self.emit(note);
                    None
                }
                _ = pressure.tick(), if self.auto.is_some() && !self.state.is_finished() => {
                    self.sample_pressure(&retry_tx);
                    None
                }
                () = sleep_until_opt(self.release_at), if self.release_at.is_some() => {
                    self.settle(Vec::new(), &retry_tx);
                    None
                }
                _ = requests.tick(), if self.shared.is_some() && !self.running.is_empty() => {
                    self.take_requests(&retry_tx);
                    None
                }
                () = sleep_until_opt(self.wake_at), if self.wake_at.is_some() => {
                    self.wake_at = None;
                    self.apply(Input::Tick, &retry_tx);
                    None
                }
                () = sleep_until_opt(deadline), if timeout_armed => {
                    self.timed_out = true;
                    self.apply(Input::CancelAll(CancelReason::Timeout), &retry_tx);
                    None
                }
                Some(()) = recv_watch(&mut self.watch) => {
                    if let Some(w) = &mut self.watch {
                        w.due = Some(Instant::now() + WATCH_DEBOUNCE);
                    }
                    None
                }
                past = recv_past(&mut self.past) => {
                    if let Some(past) = past {
                        self.learn(past);
                    }
                    self.finish_deferred(&retry_tx);
                    None
                }
                () = sleep_until_opt(self.finishing.as_ref().map(|f| f.1)), if self.finishing.is_some() => {
                    // History is slow to come: the run ends without it.
                    self.past = None;
                    self.finish_deferred(&retry_tx);
                    None
                }
                () = sleep_until_opt(self.forecast_at), if self.forecast_at.is_some() => {
                    self.forecast();
                    None
                }
                Some(f) = recv_forecast(&mut self.forecasting) => {
                    self.forecasted(f);
                    None
                }
                () = sleep_until_opt(history_due), if history_due.is_some() => {
                    self.history.flush();
                    None
                }
                () = sleep_until_opt(watch_due), if watch_due.is_some() => {
                    if let Some(w) = &mut self.watch {
                        w.due = None;
                    }
                    self.reload(&retry_tx);
                    None
                }
            };
            if let Some(m) = msg {
                let runner = matches!(m, ActorMsg::Runner(_));
                self.message(m, &retry_tx).await;
                // What else the attempts sent meanwhile (a burst of log
                // lines) is handled in the same turn: one write to the
                // record, one wake of each subscriber.
                if runner {
                    for _ in 0..DRAIN_MOST {
                        let Ok(m) = self.msg_rx.try_recv() else { break };
                        self.message(ActorMsg::Runner(m), &retry_tx).await;
                    }
                }
            }
            self.flush_events();
            if !self.shutdown.is_empty() && self.running.is_empty() {
                break;
            }
            if !commands_open && self.running.is_empty() {
                break;
            }
        }
        // A run that ended while its history was still being read ends now,
        // without it: with `past` still pending, the end would be deferred
        // again and the run would stop with no summary (a shutdown racing
        // a slow history read; seen under load in tests/attach.rs).
        self.past = None;
        self.finish_deferred(&retry_tx);
        self.flush_events();
        // A run shut down before it started never finished: its resolved
        // pipeline is still written whole.
        if let Some(h) = self.resolved.take() {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
        for (_, t) in self.retry_timers.drain() {
            t.abort();
        }
        // Workspaces still being removed, the run's network and anything of
        // the run still around, before anyone waiting for shutdown is told
        // it is done.
        self.attempts.close();
        self.attempts.wait().await;
        if let Some(sh) = &mut self.shared
            && let Err(e) = sh.slots.unregister(&self.ctx.run_id)
        {
            tracing::warn!("{e}");
        }
        // Closing a SQLite file writes nothing (see `store::index::open_wal`).
        self.shared = None;
        crate::exec::contain::release_idle();
        self.ctx.executor.finish_run(&self.ctx.run_id).await;
        self.flush_events();
        for r in self.shutdown.drain(..) {
            let _ = r.send(());
        }
    }

    /// What history says of the run's jobs, read beside its start: the
    /// plan again with their flake rates and facts, the dashboard's runs,
    /// and the forecast.
    fn learn(&mut self, past: Past) {
        // Told once the run has ended: nothing to show it on.
        if self.state.is_finished() && self.finishing.is_none() {
            return;
        }
        if !past.jobs.is_empty() {
            let plan = self.state.learn_history(past.jobs);
            // Before the start, the plan the start sends carries it.
            if self.started_at.is_some() {
                self.emit(plan);
            }
        }
        match past.stats {
            Some(stats) if self.started_at.is_some() => self.emit(EventKind::History { stats }),
            stats => self.past_runs = stats,
        }
        self.state.weigh(&past.durations);
        self.durations = past.durations;
        // The first forecast a moment later, as after a transition: a run
        // over by then needs none (400 simulations cost more than a job).
        if !self.durations.is_empty() && self.started_at.is_some() {
            let soon = Instant::now() + FORECAST_BATCH;
            if self.forecast_at.is_none_or(|at| at > soon) {
                self.forecast_at = Some(soon);
            }
        }
    }

    /// Re-reads the pipeline file; applies a valid edit, reports an invalid one.
    fn reload(&mut self, retry_tx: &mpsc::UnboundedSender<JobId>) {
        let Some(w) = &self.watch else { return };
        let file = w.file.display().to_string();
        let loaded = crate::pipeline::load(&w.file, &w.opts);
        let new = match loaded {
            Ok((p, _)) => p,
            Err(report) => {
                let diagnostics = report
                    .items
                    .iter()
                    .filter(|d| d.is_error())
                    .map(|d| report.one_line(d))
                    .collect();
                tracing::info!(%file, "pipeline file edited but invalid");
                self.emit(EventKind::PipelineInvalid { file, diagnostics });
                return;
            }
        };
        let ctx = self.ctx.clone();
        let now = self.elapsed();
        match self.state.replan(new, &|merged| conditional_env(&ctx, merged), now) {
            Ok(done) => self.follow(done, retry_tx),
            Err(conflict) => self.emit(EventKind::PipelineInvalid {
                file,
                diagnostics: vec![conflict.to_string()],
            }),
        }
    }

    /// Carries out a replan: the merged pipeline is what the next attempts run.
    fn follow(
        &mut self,
        (effects, changes): (Vec<Effect>, super::state::Changes),
        retry_tx: &mpsc::UnboundedSender<JobId>,
    ) {
        if effects.is_empty() {
            return;
        }
        tracing::info!(?changes, "pipeline changed and applied");
        self.ctx = Arc::new(self.ctx.with_pipeline(self.state.shared_pipeline()));
        self.perform(effects, retry_tx);
    }

    /// GitLab's dynamic child pipelines: each trigger job that takes its
    /// child from `generator`'s artifacts (and has not started) gets it
    /// now, before the generator's end lets it start. A file that cannot
    /// be read or is no valid pipeline makes the trigger job fail, saying
    /// why, as GitLab fails a trigger job whose child cannot be created.
    async fn graft_generated(&mut self, generator: JobId, retry_tx: &mpsc::UnboundedSender<JobId>) {
        let gen_name = self.state.pipeline().jobs[generator].name.clone();
        let triggers: Vec<(String, String)> = self
            .state
            .pipeline()
            .jobs
            .iter()
            .enumerate()
            .filter(|(i, _)| {
                use super::JobStatus::*;
                matches!(self.state.status(*i), Pending | WaitingApproval | Delayed)
            })
            .filter_map(|(_, j)| {
                let g = j.generated_child.as_ref().filter(|g| g.job == gen_name)?;
                Some((j.name.clone(), g.artifact.clone()))
            })
            .collect();
        for (trigger, artifact) in triggers {
            let (ctx, from) = (self.ctx.clone(), gen_name.clone());
            self.flush_events();
            let text = tokio::task::spawn_blocking(move || artifacts::artifact_text(&ctx, &from, &artifact))
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| e.to_string()));
            let opts = self.load_options.clone().unwrap_or_default();
            let grown = text.and_then(|t| {
                crate::pipeline::gitlab::with_generated_child(&self.state.live_pipeline(), &trigger, t, &opts)
                    .map_err(|e| e.to_string())
            });
            let (new, cause) = match grown {
                Ok(p) => (
                    p,
                    format!("child pipeline of {trigger} created from {gen_name}'s artifact"),
                ),
                Err(why) => (
                    crate::pipeline::gitlab::failing_trigger(&self.state.live_pipeline(), &trigger, &why),
                    format!("the child pipeline of {trigger} cannot be created"),
                ),
            };
            let ctx = self.ctx.clone();
            let now = self.elapsed();
            match self
                .state
                .replan_because(new, cause, &|merged| conditional_env(&ctx, merged), now)
            {
                Ok(done) => self.follow(done, retry_tx),
                Err(conflict) => {
                    tracing::warn!(%trigger, %conflict, "a generated child pipeline conflicts with the run")
                }
            }
        }
    }

    /// GitHub's matrices made from needs' outputs: each job standing for one
    /// (`matrix_later`) whose needs have all run, `finished` among them
    /// (its end is applied next), is replaced by the matrix's jobs, read
    /// again from the workflow with its `needs` context. A matrix that
    /// cannot be made makes the job fail, saying why.
    async fn expand_matrices(&mut self, finished: JobId, retry_tx: &mpsc::UnboundedSender<JobId>) {
        let ready: Vec<(JobId, String)> = {
            let p = self.state.pipeline();
            let done = |name: &str| {
                p.job_index(name)
                    .is_some_and(|i| i == finished || self.state.status(i) == super::JobStatus::Succeeded)
            };
            p.jobs
                .iter()
                .enumerate()
                .filter(|(i, j)| {
                    j.matrix_later
                        && self.state.status(*i) == super::JobStatus::Pending
                        && j.depends_on.iter().any(|d| p.job_index(d) == Some(finished))
                        && j.depends_on.iter().all(|d| done(d))
                })
                .map(|(i, j)| (i, j.name.clone()))
                .collect()
        };
        for (at, name) in ready {
            let id = self.state.pipeline().jobs[at]
                .id
                .clone()
                .unwrap_or_else(|| name.clone());
            let what = crate::pipeline::github::waiting_for(&self.state.pipeline().jobs[at]);
            let mut opts = self.load_options.clone().unwrap_or_default();
            opts.matrix_needs = vec![(id, self.state.needs_context_after(at, finished))];
            let file = self.pipeline_file.clone();
            self.flush_events();
            let read = tokio::task::spawn_blocking(move || crate::pipeline::load(&file, &opts))
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| {
                    r.map_err(|report| {
                        let errors: Vec<String> = report
                            .items
                            .iter()
                            .filter(|d| d.is_error())
                            .map(|d| report.one_line(d))
                            .collect();
                        errors.join("\n")
                    })
                });
            let grown = read.and_then(|(p, _)| {
                crate::pipeline::github::with_matrix(&self.state.live_pipeline(), &name, &p).map_err(|e| e.to_string())
            });
            let (new, cause) = match grown {
                Ok(p) => (p, format!("{what} made from what it needs")),
                Err(why) => (
                    crate::pipeline::github::failing_matrix(&self.state.live_pipeline(), &name, &why),
                    format!("{what} cannot be made"),
                ),
            };
            let ctx = self.ctx.clone();
            let now = self.elapsed();
            match self
                .state
                .replan_because(new, cause, &|merged| conditional_env(&ctx, merged), now)
            {
                Ok(done) => self.follow(done, retry_tx),
                Err(conflict) => tracing::warn!(%name, %conflict, "a matrix made at run time conflicts with the run"),
            }
        }
    }

    fn elapsed(&self) -> Duration {
        self.started_at.map_or(Duration::ZERO, |s| s.elapsed())
    }

    fn job_id(&self, name: &str) -> Result<JobId, EngineError> {
        self.state.pipeline().job_index(name).ok_or_else(|| {
            let names: Vec<&str> = self.state.pipeline().jobs.iter().map(|j| j.name.as_str()).collect();
            EngineError::UnknownJob {
                name: name.into(),
                hint: suggestion_hint(name, &names, "jobs"),
            }
        })
    }

    /// The cluster's nodes, when the watcher told of them.
    fn emit_cluster(&mut self) {
        let Some(mut nodes) = self.cluster_held.take() else {
            return;
        };
        let omitted = nodes.len().saturating_sub(crate::protocol::event::MAX_CLUSTER_NODES);
        nodes.truncate(crate::protocol::event::MAX_CLUSTER_NODES);
        self.emit(EventKind::ClusterNodes { nodes, omitted });
    }

    fn command(&mut self, c: Command, retry_tx: &mpsc::UnboundedSender<JobId>) {
        match c {
            Command::Start(reply) => {
                if self.started_at.is_none() {
                    tracing::info!(
                        run = %self.ctx.run_id,
                        pipeline = %self.ctx.pipeline.name,
                        jobs = self.ctx.pipeline.jobs.len(),
                        project = %self.ctx.project_dir.display(),
                        "run started"
                    );
                    self.started_at = Some(Instant::now());
                    self.apply(Input::Start, retry_tx);
                    if let Some(stats) = self.past_runs.take() {
                        self.emit(EventKind::History { stats });
                    }
                    self.emit_cluster();
                }
                self.flush_events();
                let _ = reply.send(());
            }
            Command::Shutdown(reply) => self.begin_shutdown(Some(reply), retry_tx),
            Command::Subscribe(from, reply) => {
                // From no later than now: "from now on" is `u64::MAX`.
                self.flush_events();
                let from = from.min(self.next_seq);
                let replay = lock(&self.replay).since(from);
                let _ = reply.send((from, replay, self.events.subscribe()));
            }
            Command::Steer(command, by, reply) => self.steer(command, by, reply, retry_tx),
        }
    }

    /// Applies a steering command once, whoever sent it; the audit trail
    /// (a `steered` event, or the rollout's own decision) names who.
    fn steer(
        &mut self,
        command: crate::protocol::Command,
        person: Person,
        reply: oneshot::Sender<Result<String, EngineError>>,
        retry_tx: &mpsc::UnboundedSender<JobId>,
    ) {
        use crate::protocol::Command as C;
        let mut what = command.describe();
        let by = person.display.clone();
        let input = match command {
            C::Rollout { job, action }
                if action != crate::deploy::rollout::Command::Retry || self.has_rollout(&job) =>
            {
                let result = self.job_id(&job).and_then(|j| {
                    let tx = self
                        .rollouts
                        .get(&j)
                        .ok_or_else(|| EngineError::Rejected(format!("job `{job}` has no rollout in progress")))?;
                    tx.try_send((action, person.approver()))
                        .map_err(|_| EngineError::Rejected(format!("the rollout of `{job}` is not taking commands")))
                });
                let _ = reply.send(result.map(|()| what));
                return;
            }
            C::RollbackService { service } => {
                let Some(state) = self.ctx.run_dir.parent().and_then(Path::parent).map(Path::to_path_buf) else {
                    let _ = reply.send(Err(EngineError::Rejected("the run has no state directory".into())));
                    return;
                };
                let notes = self.notes_tx.clone();
                tokio::spawn(async move {
                    let done = crate::deploy::service::rollback(&state, &service, &by)
                        .await
                        .map_err(EngineError::Rejected);
                    if let Ok(text) = &done {
                        let _ = notes.send(EventKind::Steered { what: text.clone(), by });
                    }
                    let _ = reply.send(done);
                });
                return;
            }
            C::Shutdown => {
                self.begin_shutdown(None, retry_tx);
                self.flush_events();
                let _ = reply.send(Ok(what));
                return;
            }
            // Retrying a rollout that has ended: its deploy job starts again.
            C::Rollout { job, .. } => self.job_id(&job).map(Input::Retry),
            C::Approve { job } => self
                .job_id(&job)
                .map(|j| match self.state.pipeline().jobs[j].approvers {
                    // Approvals by name: the account and its groups, from the
                    // user database (what the kernel said of the peer).
                    Some(_) => Input::ApproveAs(j, person.approver()),
                    None => Input::Approve(j),
                }),
            C::Retry { job } => self.job_id(&job).map(Input::Retry),
            C::Cancel { job } => self.job_id(&job).map(Input::Cancel),
            C::CancelAll => Ok(Input::CancelAll(CancelReason::User)),
            C::RerunFailed => Ok(Input::RerunFailed),
            C::Pause => Ok(Input::Pause),
            C::Resume => Ok(Input::Resume),
            C::FinishWaiting => Ok(Input::FinishWaiting),
            C::CloseBreaker { dependency } => Ok(Input::CloseBreaker {
                dependency,
                by: by.clone(),
            }),
        };
        let result = input.and_then(|input| {
            self.state.check(&input).map_err(EngineError::Rejected)?;
            // Before the start it is how the run was asked for (`--approve`), not steering.
            if self.started_at.is_some() {
                self.emit(EventKind::Steered { what: what.clone(), by });
            }
            let gate = match &input {
                Input::ApproveAs(j, _) => Some(*j),
                _ => None,
            };
            self.apply(input, retry_tx);
            if let Some(more) = gate.and_then(|j| self.state.waiting_for(j)) {
                what = format!("{what}: approval recorded, waiting for {more}");
            }
            Ok(what)
        });
        self.flush_events();
        let _ = reply.send(result);
    }

    fn has_rollout(&self, job: &str) -> bool {
        self.job_id(job).is_ok_and(|j| self.rollouts.contains_key(&j))
    }

    fn begin_shutdown(&mut self, reply: Option<oneshot::Sender<()>>, retry_tx: &mpsc::UnboundedSender<JobId>) {
        if !self.state.is_finished() && self.started_at.is_some() {
            self.apply(Input::CancelAll(CancelReason::User), retry_tx);
        }
        if let Some(r) = reply {
            self.shutdown.push(r);
        }
    }

    async fn message(&mut self, m: ActorMsg, retry_tx: &mpsc::UnboundedSender<JobId>) {
        let name = |s: &Self, j: JobId| s.state.pipeline().jobs[j].name.clone();
        match m {
            ActorMsg::RetryDue(job) => {
                self.retry_timers.remove(&job);
                self.apply(Input::RetryDue { job }, retry_tx);
            }
            ActorMsg::Runner(RunnerMsg::AddMask(value)) => {
                self.masker.add(&value);
            }
            ActorMsg::Runner(RunnerMsg::Group { job, attempt, title }) => {
                self.emit(EventKind::LogGroup {
                    job: self.state.pipeline().jobs[job].name.clone(),
                    attempt,
                    line_no: 0,
                    title,
                });
            }
            ActorMsg::Runner(RunnerMsg::Cluster(nodes)) => {
                // Told after the run's start, as the rest of it.
                self.cluster_held = Some(nodes);
                if self.started_at.is_some() {
                    self.emit_cluster();
                }
            }
            ActorMsg::Runner(RunnerMsg::Placed { job, attempt, node }) => {
                self.emit(EventKind::JobPlaced {
                    job: self.state.pipeline().jobs[job].name.clone(),
                    attempt,
                    node,
                });
            }
            ActorMsg::Runner(RunnerMsg::Annotation { job, step, annotation }) => {
                let a = annotation;
                self.emit(EventKind::Annotation {
                    job: self.state.pipeline().jobs[job].name.clone(),
                    step: step.to_string(),
                    level: a.level.to_string(),
                    message: a.message,
                    title: a.title,
                    file: a.file,
                    line: a.line,
                    col: a.col,
                });
            }
            ActorMsg::Runner(RunnerMsg::Tests { job, attempt, report }) => {
                self.emit(EventKind::TestsReported {
                    job: self.state.pipeline().jobs[job].name.clone(),
                    attempt,
                    report: *report,
                });
            }
            ActorMsg::Runner(RunnerMsg::JobOutputs { job, outputs }) => {
                self.state.record_outputs(job, outputs);
            }
            ActorMsg::Runner(RunnerMsg::Log {
                job,
                attempt,
                step,
                stream,
                text,
                partial,
            }) => {
                // A long line comes in pieces: masked across the splits here,
                // before `emit` masks each event whole.
                let text = if self.masker.is_empty() {
                    text
                } else {
                    let key = (job, attempt, stream);
                    let held = self
                        .splits
                        .entry(key)
                        .or_insert_with(|| (step.clone(), Default::default()));
                    let piece = held.1.piece(&self.masker, &text, partial);
                    if !partial {
                        self.splits.remove(&key);
                    } else if piece.is_empty() {
                        return;
                    }
                    piece
                };
                self.note_coverage(job, &text);
                let kind = EventKind::LogLine {
                    job: name(self, job),
                    attempt,
                    step: step.to_string(),
                    stream,
                    line: text,
                    line_no: 0,
                };
                self.emit(kind);
            }
            ActorMsg::Runner(RunnerMsg::RolloutDecision { job, text, by }) => {
                let kind = EventKind::RolloutDecision {
                    job: name(self, job),
                    text,
                    by,
                };
                self.emit(kind);
            }
            ActorMsg::Runner(RunnerMsg::Rollout { job, status }) => {
                let kind = EventKind::Rollout {
                    job: name(self, job),
                    status,
                };
                self.emit(kind);
            }
            ActorMsg::Runner(RunnerMsg::StepStarted {
                job,
                attempt,
                step,
                index,
            }) => {
                let kind = EventKind::StepStarted {
                    job: name(self, job),
                    attempt,
                    step: step.to_string(),
                    index,
                    line_no: 0,
                };
                self.emit(kind);
            }
            ActorMsg::Runner(RunnerMsg::StepFinished {
                job,
                attempt,
                step,
                exit_code,
                failure,
                duration,
            }) => {
                let kind = EventKind::StepFinished {
                    job: name(self, job),
                    attempt,
                    step: step.to_string(),
                    exit_code,
                    failure_class: failure,
                    duration_ms: u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
                };
                self.emit(kind);
            }
            ActorMsg::Runner(RunnerMsg::AttemptDone {
                job,
                attempt,
                outcome,
                cache_key,
                telling,
                peak_memory,
                cpu_ms,
            }) => {
                if peak_memory.is_some() || cpu_ms.is_some() {
                    let name = self.state.pipeline().jobs[job].name.clone();
                    self.history.usage(&name, attempt, peak_memory, cpu_ms);
                }
                let mut outcome = *outcome;
                if let Some(d) = &mut outcome.diagnosis {
                    let masker = &self.masker;
                    d.mask(&|s: &mut String| {
                        if let Some(m) = masker.mask(s) {
                            *s = m;
                        }
                    });
                    // Captured again from the masked lines: a piece of a
                    // secret is not a secret the masker knows.
                    let kb = crate::insight::knowledge::KnowledgeBase::builtin();
                    if let Some(h) = kb.hint_from(&d.rule, &d.lines) {
                        d.hint = h;
                    }
                    if d.dependency.is_some() {
                        d.dependency = kb.dependency_from(&d.rule, &d.lines);
                    }
                }
                if let Some(line) = telling.filter(|_| outcome.failure.is_some()) {
                    let line = self.masker.mask(&line).unwrap_or(line);
                    let name = self.state.pipeline().jobs[job].name.clone();
                    self.history.telling(&name, attempt, line);
                }
                // A line cut short by the end of its output: what masking held back.
                let held: Vec<_> = self
                    .splits
                    .keys()
                    .filter(|k| (k.0, k.1) == (job, attempt))
                    .copied()
                    .collect();
                for key in held {
                    if let Some((step, mut split)) = self.splits.remove(&key) {
                        let rest = split.piece(&self.masker, "", false);
                        if !rest.is_empty() {
                            let kind = EventKind::LogLine {
                                job: name(self, job),
                                attempt,
                                step: step.to_string(),
                                stream: key.2,
                                line: rest,
                                line_no: 0,
                            };
                            self.emit(kind);
                        }
                    }
                }
                // Store the result before the job counts as finished, so a
                // run started right after this one finds it. The log is
                // complete: every line came through this channel before.
                if let Some(key) = cache_key.filter(|_| outcome.failure.is_none()) {
                    // The log it stores is whole in its file first.
                    self.flush_events();
                    let ctx = self.ctx.clone();
                    let saved = tokio::task::spawn_blocking(move || {
                        artifacts::save(&ctx, &ctx.pipeline.jobs[job], attempt, &key)
                    })
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r);
                    if let Err(e) = saved {
                        let kind = EventKind::LogLine {
                            job: name(self, job),
                            attempt,
                            step: "cache".into(),
                            stream: crate::exec::Stream::Stderr,
                            line: format!("trackside: cannot store the result in the cache: {e}"),
                            line_no: 0,
                        };
                        self.emit(kind);
                    }
                }
                tracing::debug!(
                    job = %self.ctx.pipeline.jobs[job].name,
                    attempt,
                    exit = ?outcome.exit_code,
                    class = ?outcome.failure,
                    "attempt finished"
                );
                self.running.remove(&job);
                self.rollouts.remove(&job);
                if outcome.failure.is_none() {
                    self.graft_generated(job, retry_tx).await;
                    self.expand_matrices(job, retry_tx).await;
                }
                self.apply(Input::AttemptFinished { job, attempt, outcome }, retry_tx);
            }
        }
    }

    /// `-j auto`: one reading of the machine; a change of the limit is
    /// applied and told.
    fn sample_pressure(&mut self, retry_tx: &mpsc::UnboundedSender<JobId>) {
        let waiting = self.state.short_of_slots();
        let now = self.elapsed();
        let Some(auto) = &mut self.auto else { return };
        if let Some(notice) = auto.notice.take() {
            tracing::info!("{notice}");
            let limit = auto.ctl.limit();
            self.emit(EventKind::Parallelism {
                from: limit,
                limit,
                admit: true,
                reason: notice,
            });
            return;
        }
        let available = super::admission::memory().map_or(u64::MAX, |(a, _)| a);
        let Some(reading) = auto.gauge.read(available) else {
            return;
        };
        let from = auto.ctl.limit();
        let Some(change) = auto.ctl.observe(reading, waiting, now) else {
            return;
        };
        self.emit(EventKind::Parallelism {
            from,
            limit: change.limit,
            admit: change.admit,
            reason: change.reason,
        });
        self.apply(
            Input::Parallelism {
                limit: change.limit,
                admit: change.admit,
            },
            retry_tx,
        );
    }

    fn apply(&mut self, input: Input, retry_tx: &mpsc::UnboundedSender<JobId>) {
        let now = self.elapsed();
        let effects = self.state.handle(input, now);
        self.perform(effects, retry_tx);
    }

    /// Carries out the run's last effects, held until history was read.
    fn finish_deferred(&mut self, retry_tx: &mpsc::UnboundedSender<JobId>) {
        if let Some((effects, _)) = self.finishing.take() {
            self.perform(effects, retry_tx);
        }
    }

    fn perform(&mut self, effects: Vec<Effect>, retry_tx: &mpsc::UnboundedSender<JobId>) {
        let mut effects = effects.into_iter();
        // The batch's claims, settled together at its end.
        let mut claims = Vec::new();
        while let Some(effect) = effects.next() {
            match effect {
                Effect::Emit(kind @ EventKind::RunFinished { .. }) if self.past.is_some() => {
                    let mut rest = vec![Effect::Emit(kind)];
                    rest.extend(effects);
                    self.finishing = Some((rest, Instant::now() + HISTORY_WAIT));
                    if !claims.is_empty() {
                        self.settle(claims, retry_tx);
                    }
                    return;
                }
                Effect::Emit(kind) => self.emit(kind),
                Effect::Start { job, attempt } => {
                    tracing::debug!(job = %self.ctx.pipeline.jobs[job].name, attempt, "attempt started");
                    self.start_attempt(job, attempt)
                }
                Effect::Kill { job } => {
                    tracing::info!(job = %self.ctx.pipeline.jobs[job].name, "stopping job");
                    if let Some(token) = self.running.get(&job) {
                        token.cancel();
                    }
                }
                Effect::Claim {
                    job,
                    attempt,
                    need,
                    group,
                    interruptible,
                    cancels_group,
                } => claims.push(PendingClaim {
                    job,
                    cancels_group,
                    hold: crate::store::slots::HoldRow {
                        run_id: self.ctx.run_id.clone(),
                        job: self.state.pipeline().jobs[job].name.clone(),
                        attempt,
                        cpu_milli: need.cpu_milli,
                        memory: need.memory,
                        group,
                        interruptible,
                        since_ms: crate::store::now_ms(),
                    },
                }),
                // Given back with the next claims, or soon (RELEASE_WITHIN).
                Effect::Release { job } => {
                    if self.shared.is_some() {
                        self.releases.push(self.state.pipeline().jobs[job].name.clone());
                        self.release_at.get_or_insert_with(|| Instant::now() + RELEASE_WITHIN);
                    }
                }
                Effect::Wake { after } => {
                    // A wake past what the clock can say never comes.
                    if let Some(at) = Instant::now().checked_add(after) {
                        self.wake_at = Some(self.wake_at.map_or(at, |w| w.min(at)));
                    }
                }
                Effect::ScheduleRetry { job, after } => {
                    let tx = retry_tx.clone();
                    let timer = tokio::spawn(async move {
                        tokio::time::sleep(after).await;
                        let _ = tx.send(job);
                    });
                    if let Some(old) = self.retry_timers.insert(job, timer) {
                        old.abort();
                    }
                }
                Effect::Finished(summary) => {
                    let mut summary = *summary;
                    for j in &mut summary.jobs {
                        j.coverage = self.coverage.get(&j.name).cloned();
                    }
                    tracing::info!(run = %summary.run_id, result = ?summary.result, message = %summary.message, "run finished");
                    // Its events are in the record, and told, before the
                    // summary is and anyone waiting for the end hears of it.
                    self.flush_events();
                    mask_summary(&self.masker, &mut summary);
                    if let Some(h) = self.resolved.take() {
                        let _ = h.join();
                    }
                    self.history.finish();
                    if let Err(e) = self.record.finish(&summary) {
                        tracing::error!("cannot write the run summary: {e}");
                    }
                    let _ = self.finished_tx.send(Some(summary));
                }
            }
        }
        if !self.state.is_finished() && self.finished_tx.borrow().is_some() {
            // The run was reopened (retry after it finished).
            let _ = self.finished_tx.send(None);
        }
        // Releases alone wait for the next claims or RELEASE_WITHIN.
        if !claims.is_empty() {
            self.settle(claims, retry_tx);
        }
    }

    /// Settles with the machine's slot table in one transaction (with no
    /// claims: gives back what is due): what
    /// ended jobs held is given back, then each claim is decided (see
    /// [`super::sharing`]) and its answer goes to the run's state machine.
    /// A table that fails is said once and left: the run goes on counting
    /// only its own jobs.
    fn settle(&mut self, claims: Vec<PendingClaim>, retry_tx: &mpsc::UnboundedSender<JobId>) {
        let released = std::mem::take(&mut self.releases);
        self.release_at = None;
        let Some(sh) = self.shared.as_mut() else {
            for c in claims {
                self.apply(Input::Claimed { job: c.job, wait: None }, retry_tx);
            }
            return;
        };
        if claims.is_empty() && released.is_empty() {
            return;
        }
        let holds: Vec<crate::store::slots::HoldRow> = claims.iter().map(|c| c.hold.clone()).collect();
        let now_ms = crate::store::now_ms();
        let (run, sharing) = (&self.ctx.run_id, sh.sharing);
        // `settle` asks about the holds in their order.
        let mut next = claims.iter();
        let decided = sh.slots.settle(run, &released, &holds, |table, hold| {
            let c = next.next()?;
            let claim = super::sharing::Claim {
                run,
                priority: sharing.priority,
                preempt: sharing.preempt,
                need: super::admission::Need {
                    cpu_milli: hold.cpu_milli,
                    memory: hold.memory,
                },
                group: hold.group.as_deref(),
                cancels_group: c.cancels_group,
                now_ms,
            };
            Some(super::sharing::decide(table, &claim))
        });
        let answers = match decided {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!("{e}");
                self.shared = None;
                vec![Some(super::sharing::Decision::Grant); claims.len()]
            }
        };
        for (c, answer) in claims.into_iter().zip(answers) {
            let wait = match answer {
                Some(super::sharing::Decision::Wait { reason }) => Some(reason),
                Some(super::sharing::Decision::Grant) | None => None,
            };
            self.apply(Input::Claimed { job: c.job, wait }, retry_tx);
        }
    }

    /// What other runs asked of this one's running jobs (preemption, a
    /// concurrency group's cancel-in-progress).
    fn take_requests(&mut self, retry_tx: &mpsc::UnboundedSender<JobId>) {
        let Some(sh) = &mut self.shared else { return };
        let requests = match sh.slots.requests_for(&self.ctx.run_id) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("{e}");
                return;
            }
        };
        for r in requests {
            let Ok(job) = self.job_id(&r.job) else { continue };
            tracing::info!(job = %r.job, by = %r.by, kind = ?r.kind, "another run asks to stop a job");
            self.apply(
                Input::Preempt {
                    job,
                    attempt: r.attempt,
                    by: r.by,
                    cancel: r.kind == crate::store::slots::RequestKind::Cancel,
                },
                retry_tx,
            );
        }
    }

    fn start_attempt(&mut self, job: JobId, attempt: u32) {
        let token = CancellationToken::new();
        self.running.insert(job, token.clone());
        // `job.<name>.status` in `${{ }}` needs a snapshot of every status; it
        // costs O(jobs) per attempt, so only jobs that use expressions pay it.
        let statuses: HashMap<String, String> = if uses_expressions(&self.state.pipeline().jobs[job]) {
            self.state
                .pipeline()
                .jobs
                .iter()
                .enumerate()
                .map(|(i, j)| (j.name.clone(), self.state.status(i).expr_name().to_string()))
                .collect()
        } else {
            HashMap::new()
        };
        let control = if self.state.pipeline().jobs[job].deploy.is_some() {
            let (tx, rx) = mpsc::channel(16);
            self.rollouts.insert(job, tx);
            Some(rx)
        } else {
            None
        };
        let needs = if self.state.pipeline().jobs[job].file_commands {
            self.state.needs_context(job)
        } else {
            serde_json::Value::Null
        };
        let a = Attempt {
            job,
            attempt,
            statuses: Arc::new(statuses),
            cancel: token,
            tx: self.msg_tx.clone(),
            control,
            dotenv: std::sync::OnceLock::new(),
            needs: Arc::new(needs),
            docker: std::sync::OnceLock::new(),
            event: std::sync::OnceLock::new(),
            telling: Default::default(),
            usage: Default::default(),
        };
        self.attempts.spawn(run_attempt(self.ctx.clone(), a));
    }

    /// GitLab's rule: the last line matching the job's `coverage` pattern
    /// counts, and the first number of its last capture group (else of the
    /// whole match) is the coverage.
    fn note_coverage(&mut self, job: JobId, text: &str) {
        let Some(spec) = self.state.pipeline().jobs.get(job) else {
            return;
        };
        let Some(pattern) = &spec.coverage else { return };
        let name = spec.name.clone();
        let re = self
            .coverage_re
            .entry(pattern.clone())
            .or_insert_with(|| regex::RegexBuilder::new(pattern).size_limit(1 << 20).build().ok());
        let Some(caps) = re.as_ref().and_then(|r| r.captures(text)) else {
            return;
        };
        // The last capture group when the pattern has one, else the match.
        let Some(m) = caps.iter().skip(1).flatten().last().or_else(|| caps.get(0)) else {
            return;
        };
        let number = m
            .as_str()
            .split(|c: char| !(c.is_ascii_digit() || c == '.'))
            .find(|s| s.starts_with(|c: char| c.is_ascii_digit()))
            .map(|s| s.trim_end_matches('.').to_string());
        if let Some(n) = number {
            self.coverage.insert(name, n);
        }
    }

    fn emit(&mut self, mut kind: EventKind) {
        let transition = matches!(
            kind,
            EventKind::JobStarted { .. }
                | EventKind::JobFinished { .. }
                | EventKind::JobRetrying { .. }
                | EventKind::JobSkipped { .. }
                | EventKind::JobReset { .. }
                | EventKind::GateWaiting { .. }
        );
        if transition && !self.durations.is_empty() {
            let soon = Instant::now() + FORECAST_BATCH;
            if self.forecast_at.is_none_or(|at| at > soon) {
                self.forecast_at = Some(soon);
            }
        }
        match &mut kind {
            EventKind::LogLine {
                job, attempt, line_no, ..
            } => *line_no = self.log_lines.next(job, *attempt),
            EventKind::StepStarted {
                job, attempt, line_no, ..
            } => *line_no = self.log_lines.next(job, *attempt),
            EventKind::LogGroup {
                job, attempt, line_no, ..
            } => *line_no = self.log_lines.peek(job, *attempt),
            EventKind::JobFinished { job, attempt, .. } => self.log_lines.forget(job, *attempt),
            EventKind::JobRetrying { job, attempt, .. } => self.log_lines.forget(job, attempt.saturating_sub(1)),
            _ => {}
        }
        if let EventKind::RunFinished { summary } = &mut kind {
            for j in &mut summary.jobs {
                j.coverage = self.coverage.get(&j.name).cloned();
            }
        }
        if !self.masker.is_empty() {
            kind.mask(&|s| self.masker.mask(s));
        }
        let ev = Event {
            seq: self.next_seq,
            ts: store::now_ms(),
            kind,
        };
        self.next_seq += 1;
        if let Err(e) = self.record.write(&ev) {
            tracing::error!("cannot record an event: {e}");
        }
        self.history.observe(&ev, self.state.pipeline(), self.ctx.containers);
        self.outbox.push(Arc::new(ev));
        if self.outbox.len() >= OUTBOX_MOST {
            self.flush_events();
        }
    }

    /// Writes the events emitted since the last flush to the record's
    /// files, then gives them to the replay and the subscribers, in order.
    /// Called at the end of each turn of the actor's loop, before any
    /// reply, and before the actor waits for anything: nobody is told of
    /// an event before it is in the record, and none waits in the outbox
    /// while the actor is idle.
    fn flush_events(&mut self) {
        if let Err(e) = self.record.flush() {
            tracing::error!("cannot record events: {e}");
        }
        if self.outbox.is_empty() {
            return;
        }
        let mut replay = lock(&self.replay);
        for ev in self.outbox.drain(..) {
            replay.push(ev.clone());
            // No subscriber is fine: the record and the replay have it.
            let _ = self.events.send(ev);
        }
    }
}

/// The replay's lock; a panic while it was held left nothing half-done
/// (a push is one step), so a poisoned lock is used as it is.
fn lock(replay: &std::sync::Mutex<super::replay::Replay>) -> std::sync::MutexGuard<'_, super::replay::Replay> {
    replay.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn uses_expressions(job: &crate::pipeline::Job) -> bool {
    let has = |s: &str| s.contains("${{");
    job.environment.iter().any(|v| has(&v.value))
        || job
            .steps
            .iter()
            .any(|st| st.script.iter().any(|l| has(l)) || st.environment.iter().any(|v| has(&v.value)))
}

fn mask_summary(m: &Masker, s: &mut RunSummary) {
    if m.is_empty() {
        return;
    }
    let mut kind = EventKind::RunFinished { summary: s.clone() };
    kind.mask(&|t| m.mask(t));
    if let EventKind::RunFinished { summary } = kind {
        *s = summary;
    }
}

/// A forecast's simulation, once done.
async fn recv_forecast(
    sim: &mut Option<tokio::sync::oneshot::Receiver<Option<crate::insight::forecast::Forecast>>>,
) -> Option<Option<crate::insight::forecast::Forecast>> {
    match sim {
        Some(rx) => {
            let got = rx.await.ok();
            *sim = None;
            got
        }
        None => std::future::pending().await,
    }
}

/// History, once read (then never again).
async fn recv_past(past: &mut Option<tokio::sync::oneshot::Receiver<Past>>) -> Option<Past> {
    match past {
        Some(rx) => {
            let got = rx.await.ok();
            *past = None;
            got
        }
        None => std::future::pending().await,
    }
}

async fn recv_watch(w: &mut Option<Watch>) -> Option<()> {
    match w {
        Some(w) => w.rx.recv().await,
        None => std::future::pending().await,
    }
}

/// The longest a run's end waits for its history to be read.
const HISTORY_WAIT: Duration = Duration::from_secs(2);

/// Transitions this close together get one forecast.
const FORECAST_BATCH: Duration = Duration::from_millis(250);
/// How often the forecast is made again while jobs run.
const FORECAST_EVERY: Duration = Duration::from_secs(5);

impl Actor {
    /// Forecasts the run's finish from history and sends it when it moved
    /// by a second or more.
    /// Starts simulating the run's finish, unless a simulation is under way
    /// (then it is asked again shortly).
    fn forecast(&mut self) {
        use crate::insight::forecast::{SIMULATIONS, forecast};
        self.forecast_at = None;
        if self.state.is_finished() {
            return;
        }
        if self.forecasting.is_some() {
            self.forecast_at = Some(Instant::now() + FORECAST_BATCH);
            return;
        }
        let nodes = self.state.forecast_nodes(&self.durations);
        let now_ms = self.elapsed().as_secs_f64() * 1000.0;
        // The same run forecasts with the same draws: a forecast moves
        // because the run did, not because of the dice.
        let seed = self
            .ctx
            .run_id
            .bytes()
            .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
        let max_parallel = self.state.max_parallel();
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::task::spawn_blocking(move || {
            let _ = tx.send(forecast(&nodes, max_parallel, now_ms, SIMULATIONS, seed));
        });
        self.forecasting = Some(rx);
    }

    /// A simulation's answer: sent when it moved by a second or more.
    fn forecasted(&mut self, f: Option<crate::insight::forecast::Forecast>) {
        if self.state.is_finished() {
            return;
        }
        if let Some(f) = f {
            let moved = self
                .forecast_shown
                .is_none_or(|(p50, p90)| p50.abs_diff(f.p50_ms) >= 1_000 || p90.abs_diff(f.p90_ms) >= 1_000);
            if moved {
                self.forecast_shown = Some((f.p50_ms, f.p90_ms));
                let names = &self.state.pipeline().jobs;
                let without_history: Vec<String> = f
                    .without_history
                    .iter()
                    .filter_map(|&j| names.get(j).map(|n| n.name.clone()))
                    .collect();
                let assumed_ms = if without_history.is_empty() { 0 } else { f.assumed_ms };
                self.emit(EventKind::Forecast {
                    p50_ms: f.p50_ms,
                    p90_ms: f.p90_ms,
                    without_history,
                    assumed_ms,
                });
            }
        }
        // Again in a while (a running job's elapsed time moves it), unless
        // a transition asked for one sooner meanwhile.
        let next = Instant::now() + FORECAST_EVERY;
        if self.state.running() > 0 && self.forecast_at.is_none_or(|at| at > next) {
            self.forecast_at = Some(next);
        }
    }
}

/// A thread of the run's set-up, joined when dropped: a set-up that fails
/// after starting it returns only once the thread is done, not while it
/// still writes into the run's record.
struct JoinOnDrop<T>(Option<std::thread::JoinHandle<T>>);

impl<T> JoinOnDrop<T> {
    /// Its answer; `None` if it panicked.
    fn join(mut self) -> Option<T> {
        self.0.take().and_then(|h| h.join().ok())
    }
}

impl<T> Drop for JoinOnDrop<T> {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            let _ = h.join();
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every pipeline of the examples and corpora is kept whole, as JSON
    /// that reads back; a secret in it is masked, also where JSON escapes it.
    #[test]
    fn the_resolved_pipeline_is_kept_as_json_with_its_secrets_masked() {
        let (pipelines, _) = crate::engine::history::tests::corpus_pipelines();
        assert!(pipelines.len() > 50, "{} pipelines", pipelines.len());
        let dir = tempfile::tempdir().expect("tempdir");
        let read = || -> serde_json::Value {
            let text = std::fs::read_to_string(dir.path().join("pipeline.json")).expect("written");
            serde_json::from_str(&text).expect("JSON")
        };
        for p in &pipelines {
            write_resolved(p, &Masker::default(), dir.path());
            let back = read();
            assert_eq!(back["jobs"].as_array().map(Vec::len), Some(p.jobs.len()), "{}", p.name);
            assert_eq!(back["name"], p.name.as_str());
        }
        let mut p = pipelines[0].clone();
        p.name = "deploy with to\"ken\\1 and plain-token-2".into();
        let secrets = ["to\"ken\\1".to_string(), "plain-token-2".to_string()];
        write_resolved(&p, &Masker::new(secrets), dir.path());
        assert_eq!(read()["name"], "deploy with [MASKED] and [MASKED]");
    }
}
