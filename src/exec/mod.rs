//! How a job RUNS: the [`Executor`] trait and its implementations.
//!
//! An executor runs one step: a shell script with an environment in a
//! working directory, streaming output lines, until it exits, its deadline
//! passes or it is cancelled. It knows nothing of jobs, retries or events;
//! the engine builds those on top.

pub mod contain;
pub mod docker;
pub mod git;
pub mod lines;
pub mod preflight;
pub mod pressure;
pub mod reap;
pub mod route;
pub mod shell;
pub mod spawn;
pub mod swarm;
pub mod workspace;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;

use crate::pipeline::model::ContainerOptions;
use std::pin::Pin;
use std::time::Duration;

pub use crate::protocol::Stream;
pub use docker::auth::JobLogins;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
pub struct OutputLine {
    pub stream: Stream,
    pub text: String,
    /// The line was too long to pass whole: it goes on in the next one.
    pub partial: bool,
    /// Set on the executor's line that says where the step runs (a swarm
    /// node: its address and labels); front-ends show it with the job.
    pub node: Option<String>,
}

/// One step to run.
#[derive(Debug, Clone)]
pub struct StepSpec {
    /// The step's shell lines, run by one `sh -e`. A script is never an
    /// argument (`ps` shows arguments to every user): a host step's is
    /// handed over as an in-memory file (see `shell`), a container step's
    /// is a file mounted into it.
    pub script: String,
    /// A folder only trackside's user can enter (the run's `steps`), for
    /// the script's file where an in-memory one cannot be made.
    pub script_dir: PathBuf,
    /// The complete environment; nothing else is inherited. Shared: the
    /// executor's copy of the spec and the engine's are one map.
    pub env: std::sync::Arc<BTreeMap<String, String>>,
    pub workdir: PathBuf,
    /// When the step must be stopped (job or step timeout, whichever is first).
    pub deadline: Option<tokio::time::Instant>,
    /// Time between SIGTERM and SIGKILL.
    pub kill_grace: Duration,
    /// Marks every process of the step (env `TRACKSIDE_PROCESS_TAG`), so
    /// processes that left the process group can still be found and stopped.
    pub tag: String,
    /// Set for steps that run in a container.
    pub container: Option<ContainerStep>,
    /// The command line that runs the script, `{0}` standing for its file
    /// (GitHub's `shell:`); `None`: `sh -e`.
    pub shell: Option<Vec<String>>,
    /// Raised to the most memory the step was seen to hold (shared by an
    /// attempt's steps: the attempt's peak is the greatest).
    pub usage: std::sync::Arc<Usage>,
}

/// What an attempt's processes used, as the executors saw it. Memory: the
/// most they held, the largest process's peak resident set (`wait4`'s
/// `ru_maxrss`) for host steps, the container's peak memory use (Docker's
/// stats) for container steps. CPU: the time its steps' processes ran,
/// summed (`wait4`'s user and system time; Docker's `total_usage`).
#[derive(Debug, Default)]
pub struct Usage {
    peak: std::sync::atomic::AtomicU64,
    cpu_ms: std::sync::atomic::AtomicU64,
}

impl Usage {
    pub fn record(&self, bytes: u64) {
        self.peak.fetch_max(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    /// One step's CPU time.
    pub fn add_cpu(&self, ms: u64) {
        self.cpu_ms.fetch_add(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// Bytes; `None` when nothing was seen.
    pub fn bytes(&self) -> Option<u64> {
        let b = self.peak.load(std::sync::atomic::Ordering::Relaxed);
        (b > 0).then_some(b)
    }

    /// Milliseconds; `None` when nothing was seen.
    pub fn cpu_ms(&self) -> Option<u64> {
        let ms = self.cpu_ms.load(std::sync::atomic::Ordering::Relaxed);
        (ms > 0).then_some(ms)
    }
}

impl StepSpec {
    /// The command line that runs the script at `path`.
    pub fn command_line(&self, path: &str) -> Vec<String> {
        match &self.shell {
            Some(argv) => argv.iter().map(|a| a.replace("{0}", path)).collect(),
            None => vec!["sh".into(), "-e".into(), path.into()],
        }
    }
}

/// How a step ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepEnd {
    Exited(i32),
    Signaled(i32),
    TimedOut,
    Cancelled,
    /// The kernel's OOM killer ended it (a container's State.OOMKilled).
    OomKilled,
    /// The step could not be started at all.
    SpawnFailed(String),
    /// The executor lost the step while it ran (its swarm node went down):
    /// what it did is unknown; running it again elsewhere may pass.
    Lost(String),
    /// No node of the cluster can ever take the step (its placement
    /// labels or its reservation), with the scheduler's reason.
    Unschedulable(String),
}

impl StepEnd {
    pub fn exit_code(&self) -> Option<i32> {
        match self {
            StepEnd::Exited(c) => Some(*c),
            StepEnd::Signaled(s) => Some(128 + s),
            _ => None,
        }
    }
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

pub trait Executor: Send + Sync + 'static {
    /// Short name for messages (`shell`, `docker`).
    fn name(&self) -> &'static str;

    /// Runs one step to its end. Output lines go to `out` as they come; a
    /// full channel slows the step down rather than losing lines.
    fn run_step(
        &self,
        spec: StepSpec,
        out: mpsc::Sender<OutputLine>,
        cancel: CancellationToken,
    ) -> BoxFuture<'_, StepEnd>;

    /// Starts a job's services and waits until each is ready; their output
    /// goes to `out`. `Err` says why a service could not be made ready.
    fn start_services(
        &self,
        req: ServicesRequest,
        out: mpsc::Sender<OutputLine>,
    ) -> BoxFuture<'_, Result<Services, String>> {
        let _ = (req, out);
        Box::pin(async { Err("services need the container executor".to_string()) })
    }

    /// Stops and removes services started by `start_services`.
    fn stop_services(&self, services: Services) -> BoxFuture<'_, ()> {
        let _ = services;
        Box::pin(async {})
    }

    /// Starts a job's own container (GitHub's `container:`), in which its
    /// container steps then run ([`ContainerStep::exec_in`]).
    fn start_job_box(&self, req: JobBoxRequest) -> BoxFuture<'_, Result<JobBox, String>> {
        let _ = req;
        Box::pin(async { Err("a job container needs the container executor".to_string()) })
    }

    /// Builds the image of a Docker action's folder (unless built already)
    /// and returns its tag; the build's output goes to `out`.
    fn build_image(&self, req: ImageBuild, out: mpsc::Sender<OutputLine>) -> BoxFuture<'_, Result<String, String>> {
        let _ = (req, out);
        Box::pin(async { Err("a Docker action needs the container executor".to_string()) })
    }

    /// Stops and removes a job's container; with `keep`, stops it and
    /// leaves it for `trackside shell`.
    fn stop_job_box(&self, job_box: JobBox, keep: bool) -> BoxFuture<'_, ()> {
        let _ = (job_box, keep);
        Box::pin(async {})
    }

    /// The nodes of the cluster the executor runs steps on (a swarm's), by
    /// address; `None` for an executor that runs on this machine, or when
    /// the cluster does not answer.
    fn cluster(&self) -> BoxFuture<'_, Option<Vec<crate::protocol::view::ClusterNode>>> {
        Box::pin(async { None })
    }

    /// Removes what the run created beyond its steps (its network).
    fn finish_run<'a>(&'a self, run_id: &'a str) -> BoxFuture<'a, ()> {
        let _ = run_id;
        Box::pin(async {})
    }

    /// The ID of `image` once it is present by `pull`'s rules (pulled first
    /// for `always`), for cache keys: a retagged image must change the key.
    fn image_id<'a>(
        &'a self,
        image: &'a str,
        pull: crate::pipeline::model::PullPolicy,
        logins: &'a JobLogins,
    ) -> BoxFuture<'a, Result<String, String>> {
        let _ = (pull, logins);
        Box::pin(async move { Err(format!("image `{image}` needs the container executor")) })
    }
}

/// A job attempt's services.
#[derive(Debug, Clone)]
pub struct ServicesRequest {
    pub run_id: String,
    pub job: String,
    pub attempt: u32,
    pub pull: crate::pipeline::model::PullPolicy,
    /// The job's registry logins (each service's own `credentials`,
    /// resolved, are in its options).
    pub logins: JobLogins,
    /// Each service with its resolved environment.
    pub services: Vec<(crate::pipeline::model::Service, BTreeMap<String, String>)>,
    /// The job's placement labels (a swarm places a service by them
    /// unless it has labels of its own).
    pub node_labels: Vec<String>,
}

/// A host path bind-mounted into a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub host: PathBuf,
    pub inside: String,
    pub read_only: bool,
}

/// Where a host path is inside a container with these mounts (the
/// deepest mount that holds it); `None` when none does.
pub fn inside(mounts: &[Mount], host: &std::path::Path) -> Option<String> {
    mounts
        .iter()
        .filter_map(|m| Some((m, host.strip_prefix(&m.host).ok()?)))
        .max_by_key(|(m, _)| m.host.components().count())
        .map(|(m, rest)| match rest.as_os_str().is_empty() {
            true => m.inside.clone(),
            false => std::path::Path::new(&m.inside).join(rest).display().to_string(),
        })
}

/// A job's own container to start (GitHub's `container:`).
#[derive(Debug, Clone)]
pub struct JobBoxRequest {
    pub run_id: String,
    pub job: String,
    pub attempt: u32,
    pub image: String,
    pub options: ContainerOptions,
    /// Registry logins for pulling `image`.
    pub logins: JobLogins,
    pub mounts: Vec<Mount>,
    /// Its working directory inside.
    pub workdir: String,
    /// The job's network (its services'), when it has one.
    pub network: Option<String>,
    /// `--keep-failed`: a failed job's container is kept.
    pub keep_on_failure: bool,
}

/// A started job container.
#[derive(Debug, Clone)]
pub struct JobBox {
    /// Its name (unique, usable as an id).
    pub id: String,
    pub image: String,
    pub network: Option<String>,
    pub mounts: Vec<Mount>,
    /// The image's `PATH`, which GitHub's `GITHUB_PATH` entries go before.
    pub path: Option<String>,
    /// Published ports, as (container port, host port).
    pub ports: Vec<(String, String)>,
}

/// A running service's published ports, as (container port, host port).
#[derive(Debug, Clone, Default)]
pub struct ServicePorts {
    /// The service's name (its host name on the network).
    pub service: String,
    /// Its container's name.
    pub container: String,
    pub ports: Vec<(String, String)>,
}

/// An image to build from a folder's Dockerfile.
#[derive(Debug, Clone)]
pub struct ImageBuild {
    pub dir: PathBuf,
    /// Relative to `dir`.
    pub dockerfile: String,
}

/// A container that runs its image's entrypoint (a Docker action) rather
/// than a script: these mounts instead of the workspace and script ones.
#[derive(Debug, Clone)]
pub struct EntrypointRun {
    pub mounts: Vec<Mount>,
    /// Its command (the image's own when `None`).
    pub args: Option<Vec<String>>,
}

/// Runs a step in an existing container (`docker exec`).
#[derive(Debug, Clone)]
pub struct ExecIn {
    pub container: String,
    /// The script's path inside it.
    pub script: String,
}

/// What a container step needs beyond the shell step's fields.
#[derive(Debug, Clone)]
pub struct ContainerStep {
    pub image: String,
    pub options: ContainerOptions,
    /// Registry logins for pulling `image`.
    pub logins: JobLogins,
    pub run_id: String,
    pub job: String,
    pub attempt: u32,
    pub step_index: usize,
    /// Host directory mounted at the container's work directory.
    pub workspace: PathBuf,
    /// Host file holding the script (written by the runner).
    pub script_file: PathBuf,
    /// Host file of `export NAME='value'` lines for secrets, if any.
    pub secrets_file: Option<PathBuf>,
    /// File variables: host file, path inside (mounted read-only).
    pub files: Vec<(PathBuf, String)>,
    /// Working directory inside the container.
    pub workdir: String,
    /// The run's network, when the job has services to reach.
    pub network: Option<String>,
    /// `--keep-failed`: leave the container when the step fails.
    pub keep_on_failure: bool,
    /// Runs in the job's container instead of one of its own.
    pub exec_in: Option<ExecIn>,
    /// Runs the image's entrypoint instead of a script.
    pub entrypoint_run: Option<EntrypointRun>,
}

/// Running services: container ids and the network the job's steps join.
#[derive(Debug, Clone, Default)]
pub struct Services {
    pub containers: Vec<String>,
    pub network: Option<String>,
    /// Each service's published ports.
    pub ports: Vec<ServicePorts>,
}

/// Name of the variable that tags a step's processes.
pub const TAG_VAR: &str = "TRACKSIDE_PROCESS_TAG";
