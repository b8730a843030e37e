//! What a pipeline IS once it has been read and validated.
//!
//! Every type here is plain data: the parser builds it, the engine reads it.
//! Positions are kept where later stages still report problems (variables
//! resolved at run time, expressions evaluated at run time).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::expr::Expr;
use super::yaml::Pos;
pub use crate::protocol::{FailureClass, When};

pub const DEFAULT_PIPELINE_TIMEOUT: Duration = Duration::from_secs(7200);
pub const DEFAULT_JOB_TIMEOUT: Duration = Duration::from_secs(3600);
pub const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Serialize)]
pub struct Pipeline {
    pub name: String,
    pub global_env: Vec<EnvVar>,
    #[serde(with = "secs")]
    pub timeout: Duration,
    /// Time between SIGTERM and SIGKILL when a job is stopped.
    #[serde(with = "secs")]
    pub kill_grace: Duration,
    pub retry_policy: RetryPolicy,
    /// In file order.
    pub jobs: Vec<Job>,
    /// A reference to an undefined variable expands to nothing (GitLab's
    /// rule) instead of being an error (the native format's).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub undefined_is_empty: bool,
    /// Jobs see a git repository at the project's HEAD in their workspace
    /// (GitLab's runners check one out).
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub git_checkout: bool,
    /// Its stages in order (GitLab pipelines), for display.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub stages: Vec<String>,
    /// The key its file names a job's dependencies with (`depends_on`,
    /// GitLab's and GitHub's `needs`), for diagnostics.
    #[serde(skip)]
    pub needs_key: &'static str,
    /// Checks run before any job (`preflight:`): a failing one ends the
    /// run before it starts.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub preflight: Vec<Preflight>,
}

/// One preflight check (`preflight:` in a pipeline or config.yml).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Preflight {
    /// At least `min` bytes free on the file system of `path` (relative
    /// to the project); `min_text` as written (`5G`).
    DiskFree { path: String, min: u64, min_text: String },
    /// At least `min` bytes of memory available.
    MemoryFree { min: u64, min_text: String },
    /// The Docker daemon answers.
    Docker,
    /// `host:port` resolves and takes a TCP connection.
    Tcp(String),
    /// A shell command that must exit 0 (run in the project).
    Command(String),
}

impl Pipeline {
    pub fn job(&self, name: &str) -> Option<&Job> {
        self.jobs.iter().find(|j| j.name == name)
    }

    pub fn job_index(&self, name: &str) -> Option<usize> {
        self.jobs.iter().position(|j| j.name == name)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct EnvVar {
    pub name: String,
    pub value: String,
    #[serde(skip)]
    pub pos: Pos,
}

#[derive(Debug, Clone, Serialize)]
pub struct RetryPolicy {
    /// Attempts a job gets when it does not set `retry_count` (1 = no retry).
    pub max_attempts: u32,
    pub backoff: Backoff,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 1,
            backoff: Backoff::default(),
        }
    }
}

/// Exponential backoff: `initial * multiplier^(n-1)`, capped at `max`, then ±`jitter`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Backoff {
    #[serde(with = "secs")]
    pub initial: Duration,
    #[serde(with = "secs")]
    pub max: Duration,
    pub multiplier: f64,
    /// Fraction of the delay to randomise by, 0.25 = ±25%.
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_secs(5),
            max: Duration::from_secs(120),
            multiplier: 2.0,
            jitter: 0.25,
        }
    }
}

impl Backoff {
    /// Delay before retry number `retry` (1 = first retry). `unit` is a sample in
    /// [0, 1) supplied by the caller, so this stays a pure function.
    pub fn delay(&self, retry: u32, unit: f64) -> Duration {
        let exp = self.multiplier.powi(retry.saturating_sub(1).min(64) as i32);
        let base = (self.initial.as_secs_f64() * exp).min(self.max.as_secs_f64());
        let factor = 1.0 + self.jitter * (2.0 * unit.clamp(0.0, 1.0) - 1.0);
        Duration::from_secs_f64((base * factor).max(0.0))
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Condition {
    pub source: String,
    #[serde(skip)]
    pub expr: Expr,
    #[serde(skip)]
    pub pos: Pos,
}

/// Where a generated child pipeline comes from, and how it is created.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GeneratedChild {
    /// The job whose artifacts hold the file.
    pub job: String,
    /// The file's path among them.
    pub artifact: String,
    /// `strategy: depend`: the trigger job waits for the child.
    pub depend: bool,
    /// What the child is created with (the trigger job's variables,
    /// `CI_PIPELINE_SOURCE`).
    pub variables: Vec<(String, String)>,
}

// A run holds each job of the pipeline once (a 1,000-job pipeline: this
// times 1,000): a field that makes it grow much, and that few jobs have, is
// boxed (as `deploy`) or sparse (as `container`).
#[cfg(target_pointer_width = "64")]
const _: () = assert!(
    std::mem::size_of::<Job>() <= 992,
    "Job grew: box a large new field (as `deploy`), or raise the bound if it must be inline"
);
#[cfg(target_pointer_width = "64")]
const _: () = assert!(
    std::mem::size_of::<Step>() <= 232,
    "Step grew: box a large new field (as `docker_action`), or raise the bound if it must be inline"
);

#[derive(Debug, Clone, Serialize, Default)]
pub struct Job {
    pub name: String,
    pub steps: Vec<Step>,
    pub depends_on: Vec<String>,
    /// Where each `depends_on` entry is written.
    #[serde(skip)]
    pub depends_on_pos: Vec<Pos>,
    pub environment: Vec<EnvVar>,
    #[serde(with = "secs")]
    pub timeout: Duration,
    /// Retries after the first attempt.
    pub retry_count: u32,
    /// Classes that are retried; the transient ones when not set.
    pub retry_when: Vec<FailureClass>,
    pub conditional: Option<Box<Condition>>,
    pub when: When,
    pub allow_failure: bool,
    /// Waits this long once it could start (GitLab's `when: delayed` with
    /// `start_in`); approving it starts it at once.
    #[serde(with = "opt_secs", skip_serializing_if = "Option::is_none", default)]
    pub start_in: Option<Duration>,
    /// A regular expression whose last match in the log gives the job's
    /// test coverage (GitLab's `coverage`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub coverage: Option<String>,
    /// Fails (instead of being skipped) when a job it waits for fails: a
    /// GitLab trigger job with `strategy: depend` mirrors its child pipeline.
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub mirrors_upstream: bool,
    /// What the UI shows with the job besides its state, as (label, text):
    /// a GitLab job's environment and tags.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub facts: Vec<(String, String)>,
    /// Who may release the job's manual gate, and how many must.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub approvers: Option<Approvers>,
    /// Jobs of one resource group never run at the same time, in this run
    /// or in another run sharing the state directory.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub resource_group: Option<String>,
    /// A higher-priority run started with `--preempt` may stop it (it goes
    /// back to the queue and runs again): GitLab's `interruptible`, native
    /// `interruptible`, or `TRACKSIDE_INTERRUPTIBLE: "true"`.
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub interruptible: bool,
    /// GitHub's `concurrency: {cancel-in-progress: true}`: a job of another
    /// run holding the group is cancelled rather than waited for.
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub cancel_in_progress: bool,
    /// At most this many jobs of the named group run at once (GitHub's
    /// matrix `max-parallel`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub parallel_limit: Option<(String, usize)>,
    /// File variables, by name (GitLab's `type: file`): the job gets a file
    /// holding the variable's value, and the variable holds the file's path.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub file_vars: Vec<String>,
    /// Variables of the project's CI/CD settings, by name (GitLab's project
    /// variables): a dotenv report does not override them, as GitLab ranks
    /// them above dotenv reports.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub settings_vars: Vec<String>,
    /// A GitLab trigger job whose child pipeline is a file another job
    /// makes (`trigger: include: {artifact, job}`): read when that job has
    /// passed, and its jobs join the run then.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub generated_child: Option<Box<GeneratedChild>>,
    /// With `allow_failure`: only these exit codes are allowed (GitLab's
    /// `allow_failure: {exit_codes: [...]}`); empty: any failure.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub allow_failure_exit_codes: Vec<i32>,
    /// Exit codes retried besides `retry_when`'s classes (GitLab's
    /// `retry: {exit_codes: [...]}`).
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub retry_exit_codes: Vec<i32>,
    pub working_directory: Option<String>,
    /// How container steps of this job run (ignored by the shell executor).
    /// Kept out of line: most jobs leave them all at their defaults (a job
    /// with any, GitLab's `tags:` among them, holds its own copy).
    pub container: Sparse<ContainerOptions>,
    /// Sidecar containers the job's steps can reach by name.
    pub services: Vec<Service>,
    /// Files kept after the job for the jobs that depend on it.
    pub artifacts: Option<Artifacts>,
    /// In quarantine (`trackside quarantine`): its failure does not fail
    /// the run. Not part of its definition.
    #[serde(skip)]
    pub quarantined: bool,
    /// Test cases of it in quarantine (`trackside quarantine add 'JOB › TEST'`,
    /// or a bare test name): an attempt whose failed tests are all among
    /// them does not fail the run. Not part of its definition.
    #[serde(skip)]
    pub quarantined_tests: Vec<String>,
    /// Its flake rate across past runs in percent, when history calls it
    /// flaky (the UI's job box shows it). Not part of its definition.
    #[serde(skip)]
    pub flake_pct: Option<u8>,
    /// JUnit reports its steps write (globs in the workspace), read once
    /// they have run, passed or not: each test case is kept per attempt.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub junit: Vec<String>,
    /// Whose artifacts to restore before the job (`None`: every dependency's).
    pub needs_artifacts: Option<Vec<String>>,
    /// `cache: {inputs: [...]}`: skip the job when nothing it depends on changed.
    pub cache: Option<ResultCache>,
    /// `cache: {key, paths, policy}`: folders kept between runs (GitLab
    /// allows four per job).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dir_caches: Vec<DirCache>,
    /// A deploy job rolls a service out instead of running steps (boxed:
    /// most jobs have none, and a job is in memory once per job).
    pub deploy: Option<Box<Deploy>>,
    /// The stage it belongs to, for display (GitLab pipelines); its
    /// dependencies already say what it waits for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// GitHub's file commands (`GITHUB_ENV`, `GITHUB_PATH`, ...) for its
    /// steps (see `engine::filecmd`).
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub file_commands: bool,
    /// When one job of this group fails (and may not), the others still
    /// queued or running are cancelled: GitHub's matrix `fail-fast`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub fail_fast_group: Option<String>,
    /// The name other jobs' `needs` use for it (GitHub's job id; a
    /// matrix's jobs share it).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub id: Option<String>,
    /// GitHub's rule for needs: a need that was skipped (for any reason)
    /// skips this job too unless its condition asks about status, and
    /// `success()`/`failure()` look at every job it comes after, not only
    /// its needs. Otherwise a skipped need whose condition was false lets
    /// it run (trackside's and GitLab's rule).
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub strict_needs: bool,
    /// Values it hands to the jobs that need it, as (name, expression
    /// text) evaluated when its steps have run (GitHub's `outputs`).
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub outputs: Vec<(String, String)>,
    /// The composite actions its steps come from (GitHub's `uses: ./x`),
    /// by [`Step::action`].
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub actions: Vec<ActionCall>,
    /// GitHub's matrix made from the outputs of the jobs it needs (`matrix:
    /// ${{ fromJSON(needs.x.outputs.y) }}`): this job stands for it until
    /// they have run; then the workflow is read again with their outputs
    /// and the matrix's jobs take its place.
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub matrix_later: bool,
    /// The job that called the reusable workflow this job comes from
    /// (GitHub's `jobs.<id>.uses`): jobs outside the call see the call's
    /// jobs as one, under this id, in their `needs` context.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub call: Option<String>,
    /// The call's outputs this job gives, as (the call's output name, this
    /// job's output name) (`on.workflow_call.outputs`).
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub call_outputs: Vec<(String, String)>,
    /// The secrets it may read, as (its name for one, the run's name for
    /// it); `None`: every secret of the run by its own name (a workflow
    /// that was not called, or a call with `secrets: inherit`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub secret_names: Option<Vec<(String, String)>>,
    /// GitHub's `github` context as the workflow was read, for the
    /// expressions the run evaluates (shared by the workflow's jobs).
    #[serde(skip)]
    pub github: Option<std::sync::Arc<serde_json::Value>>,
    #[serde(skip)]
    pub pos: Pos,
}

/// One call of a composite action: its steps are the job's steps whose
/// [`Step::action`] is this call (or a call inside it). As the first of
/// them is reached, `condition` is asked and `inputs` are evaluated where
/// the call is written; once the last has run, `outputs` are evaluated
/// among the action's own steps and become the calling step's.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ActionCall {
    /// The call it is written in (an action inside an action).
    pub parent: Option<usize>,
    /// The calling step's `id`.
    pub id: Option<String>,
    pub name: String,
    /// (name, text with `${{ }}` still to evaluate), defaults filled in.
    pub inputs: Vec<(String, String)>,
    /// (name, text with `${{ }}` still to evaluate).
    pub outputs: Vec<(String, String)>,
    /// The action's folder, relative to the workspace.
    pub path: String,
    /// The calling step's `if:`, when the run decides it.
    pub condition: Option<Condition>,
    /// The calling step's `continue-on-error`.
    pub continue_on_error: bool,
    /// The call's outputs are all the outputs of its step with this id (a
    /// JavaScript action's: whatever it writes to GITHUB_OUTPUT).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub outputs_of: Option<String>,
    /// A post step's call: the call whose GITHUB_STATE it reads as
    /// `STATE_*` variables (its own when `None`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub state_from: Option<usize>,
}

/// `deploy:` of a job: a rollout of local processes or containers behind
/// a traffic router (the built-in proxy or HAProxy).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Deploy {
    /// Names the service; its previous revision is remembered under this name.
    pub service: String,
    /// Where the router listens (`127.0.0.1:8080`).
    pub listen: String,
    /// Where `/metrics` is served for Prometheus, if anywhere.
    pub metrics_listen: Option<String>,
    /// A label for the revision being deployed (`v2`).
    pub version: String,
    /// What one replica is: a command or a container image.
    pub target: Target,
    pub replicas: u32,
    /// What routes traffic to the replicas.
    pub router: RouterSpec,
    /// Where the analysis reads its measurements.
    pub metrics: MetricsSpec,
    pub health: HealthCheck,
    /// Requests per second the built-in load generator sends (0: none).
    pub rps: u32,
    pub strategy: Strategy,
    /// The strategy as steps (a blue-green switch is a short fixed list;
    /// a rolling update has none).
    pub steps: Vec<RolloutStep>,
    /// Batch settings of the rolling strategy (defaults otherwise).
    pub rolling: Rolling,
    #[serde(with = "secs")]
    pub progress_deadline: Duration,
    /// How long an aborted canary keeps running at 0% before it is stopped.
    #[serde(with = "secs")]
    pub abort_delay: Duration,
    /// How long the old revision's replicas keep running after a promotion
    /// (a rollback within it switches back at once).
    #[serde(with = "secs")]
    pub scale_down_delay: Duration,
    /// The service keeps serving after the deploy (its replicas and router
    /// live on); `false` rehearses the rollout and stops everything at its end.
    pub keep_serving: bool,
    /// Judge settings: confidence (0.98) and tolerance (0.25).
    pub confidence: f64,
    pub tolerance: f64,
    /// Who may pass its gates by hand (a canary's gates and pauses, a
    /// blue-green switch), and how many must.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub approvers: Option<Approvers>,
}

/// One replica of a service revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// A command; `${PORT}` is the port trackside assigns the replica.
    Process { run: String },
    /// A container of `image` listening on `port` inside; trackside
    /// publishes it on a free loopback port.
    Container { image: String, port: u16 },
}

impl Target {
    /// What people read: the command, or `image (port N)`.
    pub fn describe(&self) -> String {
        match self {
            Target::Process { run } => run.clone(),
            Target::Container { image, port } => format!("{image} (port {port})"),
        }
    }
}

/// The traffic router of a deploy.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RouterSpec {
    /// trackside's own weighted proxy on `listen`.
    Builtin,
    Haproxy(Haproxy),
}

/// HAProxy as the router: trackside starts `binary` with a config it
/// writes, or (with `socket`) steers a running HAProxy through its
/// runtime API.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Haproxy {
    pub binary: String,
    /// The admin stats socket of a running HAProxy.
    pub socket: Option<String>,
    /// The backend to steer in a running HAProxy (default: the service).
    pub backend: Option<String>,
    /// Where trackside receives HAProxy's request log (UDP syslog) from a
    /// running HAProxy.
    pub log_listen: Option<String>,
}

/// Where analyses read their measurements.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MetricsSpec {
    /// The router's own counters and samples.
    Builtin,
    Prometheus(Prometheus),
}

/// PromQL over a Prometheus server's HTTP API. In the queries `$service`,
/// `$pool` (`stable` or `canary`), `$window` (e.g. `30s`) and `$quantile`
/// are replaced.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Prometheus {
    pub url: String,
    /// Requests in the window (a number).
    pub requests: String,
    /// Errors in the window (a number).
    pub errors: String,
    /// Latency at `$quantile`, in milliseconds.
    pub latency: String,
}

/// The default queries read what trackside's router serves at `/metrics`.
pub const PROM_REQUESTS: &str = r#"sum(increase(trackside_requests_total{service="$service",pool="$pool"}[$window]))"#;
pub const PROM_ERRORS: &str = r#"sum(increase(trackside_errors_total{service="$service",pool="$pool"}[$window]))"#;
pub const PROM_LATENCY: &str = r#"1000 * histogram_quantile($quantile, sum by (le) (rate(trackside_request_duration_seconds_bucket{service="$service",pool="$pool"}[$window])))"#;

/// The rolling strategy's batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rolling {
    /// Replicas replaced per batch.
    pub batch_size: u32,
    /// Old replicas that may be stopped before their replacements are healthy.
    pub max_unavailable: u32,
    /// How long a removed replica may finish its requests before it is stopped.
    #[serde(with = "secs_de")]
    pub drain_timeout: Duration,
}

impl Default for Rolling {
    fn default() -> Self {
        Rolling {
            batch_size: 1,
            max_unavailable: 0,
            drain_timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthCheck {
    pub probe: Probe,
    #[serde(with = "secs_de")]
    pub interval: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
    /// Give up on a replica that is not healthy after this long.
    #[serde(with = "secs_de")]
    pub timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Traffic shifts step by step.
    Canary,
    /// The new revision is checked on preview traffic, then gets all of it
    /// at once; the old one keeps running for an instant switch back.
    BlueGreen,
    /// Replicas are replaced a batch at a time, each healthy before the next.
    Rolling,
}

/// How a replica is checked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Probe {
    /// GET the path; healthy on `status` (any 2xx when unset).
    Http { path: String, status: Option<u16> },
    /// Healthy when the replica's port accepts a connection.
    Tcp,
    /// Healthy when the command exits 0 (`PORT` is set to the replica's port).
    Command(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GateAction {
    Promote,
    Abort,
}

/// A gate's approval policy (`approvers:`): it opens when `required`
/// different allowed people have approved it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approvers {
    /// Accounts that may approve; with `groups` empty and this empty,
    /// anyone who can reach the run.
    pub users: Vec<String>,
    /// Members of these groups may approve.
    pub groups: Vec<String>,
    pub required: u32,
    /// Whether the person who started the run may be one of them.
    pub allow_self: bool,
}

impl Approvers {
    /// Whether the account `user`, in `groups`, is one of the approvers.
    pub fn allows(&self, user: &str, groups: &[String]) -> bool {
        (self.users.is_empty() && self.groups.is_empty())
            || self.users.iter().any(|u| u == user)
            || self.groups.iter().any(|g| groups.contains(g))
    }

    /// Who they are, for people: "users alice, bob or group sre".
    pub fn who(&self) -> String {
        let mut parts = Vec::new();
        if !self.users.is_empty() {
            let s = if self.users.len() == 1 { "" } else { "s" };
            parts.push(format!("user{s} {}", self.users.join(", ")));
        }
        if !self.groups.is_empty() {
            let s = if self.groups.len() == 1 { "" } else { "s" };
            parts.push(format!("group{s} {}", self.groups.join(", ")));
        }
        if parts.is_empty() {
            return "anyone who can reach the run".into();
        }
        parts.join(" or ")
    }

    /// Whether `who` may add an approval to those `given` (accounts) so
    /// far; callers word the refusal for their gate.
    pub fn admit(&self, given: &[String], who: &crate::protocol::identity::Approver) -> Result<(), Refusal> {
        if !self.allow_self && who.started_the_run {
            return Err(Refusal::Starter);
        }
        if !self.allows(&who.user, &who.groups) {
            return Err(Refusal::NotAllowed);
        }
        if given.contains(&who.user) {
            return Err(Refusal::Already);
        }
        Ok(())
    }

    /// Who is still needed after `given` approvals ("1 more from group
    /// sre, not the run's starter"); `None` once there are enough.
    pub fn still_needed(&self, given: usize) -> Option<String> {
        let given = u32::try_from(given).unwrap_or(u32::MAX);
        let more = self.required.checked_sub(given).filter(|&n| n > 0)?;
        let starter = if self.allow_self { "" } else { ", not the run's starter" };
        Some(format!("{more} more from {}{starter}", self.who()))
    }

    /// The whole policy in a line: "2 of users alice, bob or group sre
    /// (not the run's starter)".
    pub fn describe(&self) -> String {
        let starter = if self.allow_self {
            ""
        } else {
            " (not the run's starter)"
        };
        format!("{} of {}{starter}", self.required, self.who())
    }
}

/// Why an approval is not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The run's starter, and the policy wants others.
    Starter,
    /// Not one of the approvers.
    NotAllowed,
    /// The same account again.
    Already,
}

/// One step of a canary rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutStep {
    /// Send this share of traffic (tenths of a percent) to the canary.
    SetWeight(u32),
    /// Wait this long (a countdown is shown).
    Pause(#[serde(with = "secs_de")] Duration),
    /// A manual gate: wait for promote; with a timeout, take the action then.
    Gate { timeout: Option<(Duration, GateAction)> },
    /// Judge canary against stable `count` times, every `interval`;
    /// more than `failure_limit` failed runs fail the analysis.
    Analysis {
        #[serde(with = "secs_de")]
        interval: Duration,
        count: u32,
        #[serde(default)]
        failure_limit: u32,
        /// More runs than this in a row without a measurement (the metrics
        /// provider failed) fail the analysis.
        #[serde(default = "default_error_limit")]
        consecutive_error_limit: u32,
        #[serde(default)]
        thresholds: Vec<Threshold>,
    },
}

/// Runs in a row a metrics provider may fail before the analysis fails.
pub const DEFAULT_CONSECUTIVE_ERROR_LIMIT: u32 = 4;

fn default_error_limit() -> u32 {
    DEFAULT_CONSECUTIVE_ERROR_LIMIT
}

/// A metric check of an analysis, on top of the statistical judge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Threshold {
    pub metric: ThresholdMetric,
    /// The canary's value must stay below this (error_rate: a share, 0.01 = 1%; latency: ms).
    pub max: Option<f64>,
    /// The canary's value must stay below this many times stable's.
    pub max_ratio: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ThresholdMetric {
    ErrorRate,
    P50Ms,
    P95Ms,
    P99Ms,
}

impl ThresholdMetric {
    pub const ALL: [(&'static str, ThresholdMetric); 4] = [
        ("error_rate", ThresholdMetric::ErrorRate),
        ("p50_ms", ThresholdMetric::P50Ms),
        ("p95_ms", ThresholdMetric::P95Ms),
        ("p99_ms", ThresholdMetric::P99Ms),
    ];
    pub fn name(self) -> &'static str {
        Self::ALL.iter().find(|(_, m)| *m == self).map_or("?", |(n, _)| n)
    }
}

/// The result cache of a job: the globs (relative to the project) whose
/// content is part of the job's cache key.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ResultCache {
    pub inputs: Vec<String>,
}

/// A directory cache in the GitLab sense (dependency folders and the like).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DirCache {
    pub key: DirCacheKey,
    /// Globs relative to the workspace; a directory takes everything below it.
    pub paths: Vec<String>,
    pub policy: CachePolicy,
    /// After which outcomes the cache is saved (GitLab's `cache:when`).
    pub when: ArtifactWhen,
    /// Keys to restore from, in order, when the key has no cache yet.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fallback_keys: Vec<String>,
    /// Also every file git does not track in the workspace.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub untracked: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DirCacheKey {
    /// A name, with `${VAR}` references resolved when the job starts.
    Name(String),
    /// `key: {files: [...], prefix: ...}`: the hash of those files' content.
    Files { files: Vec<String>, prefix: Option<String> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum CachePolicy {
    #[default]
    PullPush,
    Pull,
    Push,
}

impl CachePolicy {
    pub const ALL: [(&'static str, CachePolicy); 3] = [
        ("pull-push", CachePolicy::PullPush),
        ("pull", CachePolicy::Pull),
        ("push", CachePolicy::Push),
    ];
    pub fn pulls(self) -> bool {
        matches!(self, CachePolicy::PullPush | CachePolicy::Pull)
    }
    pub fn pushes(self) -> bool {
        matches!(self, CachePolicy::PullPush | CachePolicy::Push)
    }
}

/// `artifacts:` of a job.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Artifacts {
    /// Globs relative to the workspace; a directory takes everything below it.
    pub paths: Vec<String>,
    pub exclude: Vec<String>,
    pub when: ArtifactWhen,
    /// Recorded with the artifacts for retention.
    #[serde(with = "opt_secs")]
    pub expire_in: Option<Duration>,
    /// `reports:dotenv` files (also in `paths`): their `KEY=VALUE` lines
    /// become variables of the jobs that receive these artifacts.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub dotenv: Vec<String>,
    /// `reports:junit` files (also in `paths`), kept for test reports.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub junit: Vec<String>,
    /// Also every file git does not track in the job's workspace (GitLab's
    /// `untracked: true`; ignored files included, as GitLab's are).
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub untracked: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ArtifactWhen {
    #[default]
    OnSuccess,
    OnFailure,
    Always,
}

/// A sidecar container (a database, a small HTTP server) for a job.
#[derive(Debug, Clone, Serialize)]
pub struct Service {
    /// Host name the job's steps reach it by.
    pub name: String,
    /// More host names for it (GitLab's `alias: db,postgres` and the names
    /// derived from its image).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    pub image: String,
    /// Replaces the image's entrypoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// Probed over TCP for readiness when the image has no HEALTHCHECK.
    pub port: Option<u16>,
    pub environment: Vec<EnvVar>,
    pub command: Option<Vec<String>>,
    #[serde(with = "secs")]
    pub ready_timeout: Duration,
    /// Its container settings (GitHub's service `options:`, `ports:`,
    /// `volumes:`); left out of the definition when default.
    #[serde(skip_serializing_if = "ContainerOptions::is_default", default)]
    pub options: ContainerOptions,
}

/// Image pull policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum PullPolicy {
    Never,
    #[default]
    IfNotPresent,
    Always,
}

impl PullPolicy {
    pub const ALL: [(&'static str, PullPolicy); 3] = [
        ("never", PullPolicy::Never),
        ("if-not-present", PullPolicy::IfNotPresent),
        ("always", PullPolicy::Always),
    ];
}

/// Settings most jobs leave at their defaults, kept out of line: without
/// any, a job holds a null pointer instead of the settings' hundreds of
/// bytes (a thousand jobs held half a megabyte of defaults). Reads see the
/// defaults; the first write makes the job's own copy.
#[derive(Clone, Default)]
pub struct Sparse<T>(Option<Box<T>>);

/// A type whose default value can be read from a constant, so that a
/// [`Sparse`] without a value of its own lends it.
pub trait ConstDefault: Default + 'static {
    const DEFAULT: &'static Self;
}

impl<T: ConstDefault + PartialEq> From<T> for Sparse<T> {
    /// Holds nothing when `value` is the default.
    fn from(value: T) -> Self {
        Sparse((value != *T::DEFAULT).then(|| Box::new(value)))
    }
}

impl<T: ConstDefault> std::ops::Deref for Sparse<T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.0.as_deref().unwrap_or(T::DEFAULT)
    }
}

impl<T: ConstDefault> std::ops::DerefMut for Sparse<T> {
    fn deref_mut(&mut self) -> &mut T {
        self.0.get_or_insert_with(Default::default)
    }
}

impl<T: ConstDefault + PartialEq> PartialEq for Sparse<T> {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl<T: ConstDefault + std::fmt::Debug> std::fmt::Debug for Sparse<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (**self).fmt(f)
    }
}

impl<T: ConstDefault + Serialize> Serialize for Sparse<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (**self).serialize(s)
    }
}

impl ConstDefault for ContainerOptions {
    const DEFAULT: &'static Self = &ContainerOptions {
        user: None,
        entrypoint: None,
        pull: PullPolicy::IfNotPresent,
        cpus: None,
        memory: None,
        pids: None,
        privileged: false,
        cap_drop: Vec::new(),
        read_only_rootfs: false,
        docker_socket: false,
        job_container: false,
        node_labels: Vec::new(),
        extras: ContainerExtras {
            ports: Vec::new(),
            volumes: Vec::new(),
            env: Vec::new(),
            health: None,
            network_aliases: Vec::new(),
            hostname: None,
            cap_add: Vec::new(),
            tmpfs: Vec::new(),
            shm_size: None,
            credentials: None,
        },
    };
}

/// Container settings of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct ContainerOptions {
    /// `user:` (name or uid[:gid]); the image's default when unset.
    pub user: Option<String>,
    /// `entrypoint:` override; an empty list clears the image's entrypoint.
    pub entrypoint: Option<Vec<String>>,
    pub pull: PullPolicy,
    /// CPUs (1.5 = one and a half).
    pub cpus: Option<f64>,
    /// Memory limit in bytes (no swap beyond it).
    pub memory: Option<u64>,
    pub pids: Option<i64>,
    pub privileged: bool,
    pub cap_drop: Vec<String>,
    pub read_only_rootfs: bool,
    /// Mount the host's Docker socket into the job (asked for explicitly).
    pub docker_socket: bool,
    /// One container for the whole job, started before its first step;
    /// each container step runs in it (`docker exec`), so what a step
    /// installs outside the workspace is there for the next (GitHub's
    /// `container:`).
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub job_container: bool,
    /// Labels a node must have to run it (GitLab's `tags`, GitHub's
    /// `runs-on` labels but GitHub's own, native `node_labels`): placement
    /// constraints on a swarm, ignored by the other executors.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub node_labels: Vec<String>,
    /// What GitHub's `container:` and `services:` add (ports, volumes,
    /// `options:` flags); left out of the definition when default.
    #[serde(skip_serializing_if = "ContainerExtras::is_default", default)]
    pub extras: ContainerExtras,
}

impl ContainerOptions {
    pub fn is_default(&self) -> bool {
        self == Self::DEFAULT
    }
}

/// Container settings beyond [`ContainerOptions`]'s, as GitHub's
/// `container:`/`services:` give them (their `options:` are `docker create`
/// flags).
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct ContainerExtras {
    /// Published ports, as Docker writes them: `[host:]container[/proto]`;
    /// bound to 127.0.0.1.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
    /// `volume:/path`, `/host/path:/path[:ro]` or `/path` (anonymous).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<String>,
    /// Set in the container's environment (GitHub's `env:` of a container
    /// or service, and `-e` of its options).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<(String, String)>,
    /// `--health-cmd` and its timings: the container is ready once healthy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<ContainerHealth>,
    /// More names it has on the job's network (`--network-alias`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub network_aliases: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cap_add: Vec<String>,
    /// `--tmpfs PATH[:OPTIONS]`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tmpfs: Vec<String>,
    /// `--shm-size` in bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shm_size: Option<u64>,
    /// Registry credentials for pulling its image: GitHub's
    /// `credentials:`. The password never leaves trackside but to the
    /// daemon.
    #[serde(skip)]
    pub credentials: Option<Credentials>,
}

/// A registry login as (user, password); `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials(pub String, pub String);

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, ***)", self.0)
    }
}

impl ContainerExtras {
    pub fn is_default(&self) -> bool {
        *self == ContainerExtras::default()
    }
}

/// A container's health check (Docker's HEALTHCHECK, as `--health-*` flags
/// set it).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ContainerHealth {
    /// Run by the container's shell (`CMD-SHELL`).
    pub command: String,
    #[serde(with = "opt_secs", skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    #[serde(with = "opt_secs", skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    #[serde(with = "opt_secs", skip_serializing_if = "Option::is_none")]
    pub start_period: Option<Duration>,
}

impl Job {
    pub fn image(&self) -> Option<&str> {
        self.steps.iter().find_map(|s| s.image.as_deref())
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Step {
    pub name: String,
    /// Shell lines, run in one `sh -e`.
    pub script: Vec<String>,
    pub image: Option<String>,
    pub environment: Vec<EnvVar>,
    pub working_directory: Option<String>,
    #[serde(with = "opt_secs")]
    pub timeout: Option<Duration>,
    pub retry_count: u32,
    pub continue_on_failure: bool,
    /// Runs after the job's other steps whatever became of them (passed,
    /// failed, timed out, cancelled), with a timeout of its own
    /// ([`CLEANUP_TIMEOUT`] unless set) and `CI_JOB_STATUS` saying how they
    /// ended; its failure is logged and leaves the job's result as it was.
    /// GitLab's `after_script` is one. Left out of the serialized
    /// definition when false, so cache keys made before it existed hold.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub cleanup: bool,
    /// The command line that runs the script, `{0}` standing for its
    /// file (GitHub's `shell:`); `None`: `sh -e`. Left out of the
    /// serialized definition when unset, so cache keys made before it
    /// existed hold.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shell: Option<Vec<String>>,
    /// What later steps call it (GitHub's `id`: `steps.<id>.outputs`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Decided as the step is reached (GitHub's step `if:` when it reads
    /// `steps`, `env`, `needs` or `secrets`, or asks how earlier steps
    /// ended). Without status functions it runs only while no earlier step
    /// has failed; with them it is asked after a failure or a cancel too.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub condition: Option<Box<Condition>>,
    /// The composite action call it belongs to ([`Job::actions`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<usize>,
    /// Its call's inputs are `INPUT_<NAME>` variables, and the call's
    /// GITHUB_STATE `STATE_<name>` variables (a JavaScript action's step).
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub inputs_env: bool,
    /// Carried out by trackside itself instead of a script (GitHub's
    /// `actions/cache`, `upload-artifact`, `download-artifact`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub builtin: Option<Box<Builtin>>,
    /// A container of its own instead of a script: GitHub's Docker
    /// actions (`runs.using: docker`, `uses: docker://IMAGE`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub docker_action: Option<Box<DockerAction>>,
}

/// A Docker action's container: its image (or the Dockerfile to build it
/// from), entrypoint and arguments. Texts may hold `${{ }}`, evaluated as
/// the step starts (with the call's `inputs`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DockerAction {
    /// The image to run; empty when `build` makes it.
    pub image: String,
    /// Built from a Dockerfile of the action's folder as the job starts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub build: Option<ActionBuild>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<String>,
    /// One argument each (`runs.args`); with `split_args`, one text split
    /// into words as a shell would (`with.args` of `uses: docker://`).
    pub args: Vec<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub split_args: bool,
}

/// Where a Docker action's image is built from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ActionBuild {
    /// The action's folder: relative to the workspace, or absolute (an
    /// action of the actions folder).
    pub dir: String,
    /// The Dockerfile, relative to `dir`.
    pub dockerfile: String,
}

/// A step trackside carries out itself. Texts may hold `${{ }}`, evaluated
/// as the step starts; paths are relative to the workspace.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Builtin {
    /// `actions/cache`: restores `paths` from the cache saved under `key`,
    /// else from the newest whose key starts with one of `restore_keys`.
    CacheRestore {
        key: String,
        restore_keys: Vec<String>,
        paths: Vec<String>,
        /// `fail-on-cache-miss`.
        fail_on_miss: bool,
        /// `lookup-only`: say whether there is one, restore nothing.
        lookup_only: bool,
        /// A post step saves the paths (`actions/cache`; not
        /// `actions/cache/restore`).
        save: bool,
    },
    /// Saves `paths` under `key` unless a cache has that key already
    /// (`actions/cache/save`). With `restore` (an index into the job's
    /// steps) it is that restore step's post step: the key and paths are
    /// the ones it used.
    CacheSave {
        key: String,
        paths: Vec<String>,
        restore: Option<usize>,
    },
    /// `actions/upload-artifact`: the files `paths` match (`!` takes back)
    /// kept as artifact `name` of the run, relative to their deepest
    /// common folder.
    Upload {
        name: String,
        paths: Vec<String>,
        /// `warn`, `error` or `ignore`.
        if_no_files_found: String,
        include_hidden: bool,
        overwrite: bool,
    },
    /// `actions/download-artifact`: artifact `name` of the run (every one,
    /// each in a folder of its name, when `None`) into `path`.
    Download { name: Option<String>, path: String },
}

/// How long a cleanup step may run when it sets no timeout (GitLab gives
/// `after_script` the same 5 minutes).
pub const CLEANUP_TIMEOUT: Duration = Duration::from_secs(300);

mod secs {
    use serde::Serializer;
    use std::time::Duration;
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

mod secs_de {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let v = f64::deserialize(d)?;
        Duration::try_from_secs_f64(v).map_err(serde::de::Error::custom)
    }
}

mod opt_secs {
    use serde::Serializer;
    use std::time::Duration;
    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_f64(d.as_secs_f64()),
            None => s.serialize_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps_with_bounded_jitter() {
        let b = Backoff::default();
        assert_eq!(b.delay(1, 0.5), Duration::from_secs(5));
        assert_eq!(b.delay(2, 0.5), Duration::from_secs(10));
        assert_eq!(b.delay(10, 0.5), Duration::from_secs(120));
        assert_eq!(b.delay(1, 0.0), Duration::from_secs_f64(3.75));
        assert!(b.delay(1, 0.999) <= Duration::from_secs_f64(6.25));
    }

    #[test]
    fn sparse_settings_lend_the_defaults_until_written() {
        let plain: Sparse<ContainerOptions> = ContainerOptions::default().into();
        assert!(plain.0.is_none(), "the defaults are not held");
        assert_eq!(*plain, ContainerOptions::default());
        assert_eq!(plain, Sparse::default());
        assert_eq!(
            serde_json::to_value(&plain).ok(),
            serde_json::to_value(ContainerOptions::default()).ok()
        );

        let mut written = plain.clone();
        written.memory = Some(1 << 30);
        assert!(written.0.is_some(), "a write makes the job's own copy");
        assert_eq!(written.memory, Some(1 << 30));
        assert_ne!(written, plain);
        assert_eq!(plain.memory, None, "the defaults are untouched");

        let set: Sparse<ContainerOptions> = ContainerOptions {
            user: Some("1000".into()),
            ..ContainerOptions::default()
        }
        .into();
        assert_eq!(set.user.as_deref(), Some("1000"));
        assert_eq!(format!("{set:?}"), format!("{:?}", *set));
    }

    #[test]
    fn the_lent_defaults_are_the_default_settings() {
        assert_eq!(ContainerOptions::DEFAULT, &ContainerOptions::default());
    }

    #[test]
    fn failure_classes_round_trip_their_names() {
        for c in FailureClass::ALL {
            assert_eq!(FailureClass::parse(c.as_str()), Some(c));
        }
    }
}
