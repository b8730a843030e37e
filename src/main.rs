//! The `trackside` command line: parse arguments, pick a front-end, map
//! errors to exit codes (0 passed, 1 failed or blocked, 2 invalid input or
//! usage, 130 cancelled). Everything else lives in the library.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use clap::{Parser, Subcommand, ValueEnum};

use trackside::engine::{self, EngineConfig};
use trackside::exec::docker::DockerExecutor;
use trackside::exec::route::Executors;
use trackside::exec::shell::ShellExecutor;
use trackside::headless::{self, Format};
use trackside::pipeline::native::HOST_ALLOWLIST;
use trackside::pipeline::{self, ExecutorChoice, LoadOptions, Plan, Report, When};
use trackside::protocol::LinkError;
use trackside::store;
use trackside::ui::{self, UiOptions};

/// Prints to stdout; a reader that went away (`| head`) ends the output quietly.
fn write_out(text: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush())
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        eprintln!("error: cannot write to stdout: {e}");
    }
}

macro_rules! out {
    ($($arg:tt)*) => { write_out(&format!($($arg)*)) };
}

macro_rules! outln {
    ($($arg:tt)*) => { write_out(&format!("{}\n", format!($($arg)*))) };
}

mod attachcmd;
mod insightcmd;
mod servicecmd;
mod storecmd;
mod swarmcmd;

#[derive(Parser)]
#[command(name = "trackside", version, about = "Run and steer CI/CD pipelines from a terminal")]
struct Cli {
    /// Where run records live (default: TRACKSIDE_STATE_DIR, else the platform data directory).
    #[arg(long, global = true, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

/// What `trackside service SERVICE ...` does.
#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum ServiceAction {
    Status,
    Logs,
    Stop,
    Start,
    Scale,
}

/// What `trackside rollout SERVICE ...` does.
#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum RolloutAction {
    /// Print where the rollout stands.
    Status,
    /// Pass the current gate, pause or analysis (with --full: to 100% now).
    Promote,
    /// New revision to 0% at once; stable keeps serving.
    Abort,
    /// While the rollout runs: the same as abort.
    Rollback,
    /// Hold: freeze the countdown (a rolling deploy holds before its next batch).
    Pause,
    /// Go on after a hold, with the countdown where it stood.
    Resume,
    /// Start a failed deploy job (and so its rollout) again.
    Retry,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum OutputFormat {
    Text,
    Json,
}

#[derive(clap::Subcommand)]
enum QuarantineAction {
    /// Put a job or a test case in quarantine.
    Add {
        name: String,
        /// Until then: a date (2026-12-31), a time, or a span from now (14d).
        #[arg(long)]
        until: Option<String>,
    },
    /// Take a job or a test case out of quarantine.
    Remove { name: String },
    /// What is in quarantine, and until when.
    List {
        #[arg(long, value_enum, default_value = "text")]
        format: OutputFormat,
    },
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum DialectArg {
    /// trackside's own YAML (docs/pipeline-format.md).
    Native,
    /// A .gitlab-ci.yml (docs/gitlab.md).
    Gitlab,
    /// A GitHub Actions workflow (docs/github.md).
    Github,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum ExecutorArg {
    /// Jobs with an image need containers; the rest run on the host.
    Auto,
    /// Everything runs on the host.
    Shell,
    /// Everything runs in containers (every step needs an image).
    Docker,
    /// Jobs with an image run as services on a Docker Swarm (its manager:
    /// --swarm-manager, `swarm: {manager}` of config.yml, else DOCKER_HOST);
    /// the rest on the host (docs/swarm.md).
    Swarm,
}

#[derive(clap::Args)]
struct VarArgs {
    /// Set a variable (highest precedence). Repeatable.
    #[arg(long = "var", value_name = "KEY=VALUE", value_parser = parse_kv)]
    vars: Vec<(String, String)>,
    /// GitHub workflows: the event the workflow runs for (default: push).
    #[arg(long, value_name = "NAME")]
    event: Option<String>,
    /// GitHub workflows: set NAME in the `vars` context (the repository's
    /// configuration variables). Repeatable.
    #[arg(long = "var-ctx", value_name = "NAME=VALUE", value_parser = parse_kv)]
    context_vars: Vec<(String, String)>,
    /// GitHub workflows: a JSON file holding the event's payload, as GitHub
    /// sends it; it is `github.event` (its `action` is checked against
    /// `types:`, a pull request's base branch against `branches:`).
    #[arg(long = "event-payload", value_name = "FILE")]
    event_payload: Option<PathBuf>,
    /// GitHub workflows: where actions of other repositories
    /// (`uses: owner/repo@ref`) are, as `trackside actions pull` leaves
    /// them (default: <state>/actions).
    #[arg(long = "actions-dir", value_name = "DIR")]
    actions_dir: Option<PathBuf>,
    /// GitHub workflows: a file of NAME=VALUE lines for the `vars` context
    /// (`--var-ctx` wins over it).
    #[arg(long = "vars-file", value_name = "FILE")]
    vars_file: Option<PathBuf>,
    /// GitHub workflows: run the jobs whose `runs-on` has LABEL in a
    /// container of IMAGE (act's `-P`), steps `docker exec`ed in it.
    /// Repeatable.
    #[arg(long = "platform", short = 'P', value_name = "LABEL=IMAGE", value_parser = parse_platform)]
    platforms: Vec<(String, String)>,
    /// GitHub workflows: JUnit reports (a glob in the workspace) that
    /// every job's steps may write; their test cases are kept. Repeatable.
    #[arg(long = "junit", value_name = "GLOB")]
    junit: Vec<String>,
    /// Inject the host variable NAME as a secret, masked as [MASKED] everywhere. Repeatable.
    #[arg(long = "secret", value_name = "NAME")]
    secrets: Vec<String>,
    /// Inject a secret read from a file. Repeatable.
    #[arg(long = "secret-file", value_name = "NAME=PATH", value_parser = parse_kv)]
    secret_files: Vec<(String, String)>,
    /// Let the host variable NAME through to jobs (beyond PATH, HOME, USER, SHELL, LANG, TZ). Repeatable.
    #[arg(long = "pass-env", value_name = "NAME")]
    pass_env: Vec<String>,
    /// Which executor runs the jobs (default: `executor:` of config.yml, else auto).
    #[arg(long, value_enum)]
    executor: Option<ExecutorArg>,
    /// The swarm manager's Docker API address for --executor swarm
    /// (`unix://`, `tcp://`, `https://`; default: `swarm: {manager}` of
    /// config.yml, else DOCKER_HOST).
    #[arg(long = "swarm-manager", value_name = "ADDRESS")]
    swarm_manager: Option<String>,
    /// The registry the swarm's nodes pull workspace images from
    /// (HOST:PORT; default: `swarm: {registry}` of config.yml).
    #[arg(long = "swarm-registry", value_name = "HOST:PORT")]
    swarm_registry: Option<String>,
    /// Read the file as this dialect (by default: `.gitlab-ci.yml` and
    /// `*.gitlab-ci.yml` are GitLab's, other files are told by their keys).
    #[arg(long, value_enum)]
    dialect: Option<DialectArg>,
    /// GitLab: read `include:project` and `include:component` files of
    /// GROUP/PROJECT from the local checkout PATH. Repeatable.
    #[arg(long = "include-project", value_name = "GROUP/PROJECT=PATH", value_parser = parse_kv)]
    include_projects: Vec<(String, String)>,
    /// GitLab: `rules:changes` compares with this ref (by default: the fork
    /// point from the default branch, or the parent commit on it).
    /// GitHub: `paths` filters do (by default: the parent commit, or a pull
    /// request's base branch).
    #[arg(long = "changes-from", value_name = "REF")]
    changes_from: Option<String>,
    /// GitLab: a value for an input of the file's own `spec:inputs` header,
    /// as a pipeline run by hand is given it (read as the input's type:
    /// `3`, `true`, `[a, b]`). Repeatable.
    #[arg(long = "input", value_name = "NAME=VALUE", value_parser = parse_kv)]
    inputs: Vec<(String, String)>,
}

// Parsed once per process: `run`'s many flags make its variant big, and
// boxing it would only obscure the clap definitions.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Cmd {
    /// Run a pipeline.
    Run {
        /// The pipeline file; by default `.gitlab-ci.yml` or `trackside.yml`
        /// of the current directory, else of its git work tree root.
        file: Option<PathBuf>,
        #[command(flatten)]
        vars: VarArgs,
        /// Plain `job > line` output even on a terminal (the default when stdout is not a terminal).
        #[arg(long)]
        headless: bool,
        /// Terminal UI without box-drawing or other non-ASCII glyphs.
        #[arg(long)]
        ascii: bool,
        /// Terminal UI without the mouse (clicks and the wheel); the terminal
        /// then selects text as usual. `ui: {mouse: false}` in config.yml does
        /// it for every run.
        #[arg(long)]
        no_mouse: bool,
        /// Do not watch the pipeline file for edits during the run.
        #[arg(long)]
        no_watch: bool,
        /// Keep a failed container job's container and workspace, for `trackside shell`.
        #[arg(long)]
        keep_failed: bool,
        /// Run every job even when its cached result is valid (results are still stored).
        #[arg(long)]
        no_cache: bool,
        /// One JSON event per line instead of plain text.
        #[arg(long)]
        json: bool,
        /// Jobs at once: `auto` (the default) follows the machine's pressure
        /// (docs/scheduling.md), a number is a fixed limit.
        #[arg(short = 'j', long = "jobs", value_name = "N|auto", value_parser = parse_jobs)]
        jobs: Option<Jobs>,
        /// Against other runs on this machine (same state directory): a
        /// high-priority run gets the next free slots first.
        #[arg(long, value_name = "high|normal|low", default_value = "normal")]
        priority: trackside::engine::sharing::Priority,
        /// Stop `interruptible` jobs of lower-priority runs when this run's
        /// jobs do not fit (they are queued again there).
        #[arg(long)]
        preempt: bool,
        /// Stop everything at the first required failure.
        #[arg(long)]
        fail_fast: bool,
        /// Approve this manual job in advance. Repeatable.
        #[arg(long = "approve", value_name = "JOB")]
        approve: Vec<String>,
        /// Approve every manual job.
        #[arg(long)]
        approve_all: bool,
        /// Run this job and everything it needs. Repeatable. A `parallel`
        /// job's base name means all its instances; `test 1/3` is `test: [1/3]`.
        #[arg(long = "job", value_name = "NAME")]
        job: Vec<String>,
        /// Run this job alone, without what it needs (as `gitlab-ci-local
        /// NAME`): needed artifacts come from the latest run that recorded
        /// them. Repeatable.
        #[arg(long = "only", value_name = "NAME")]
        only: Vec<String>,
        /// Run the jobs of this stage alone (as --only). Repeatable.
        #[arg(long = "stage", value_name = "STAGE")]
        stage: Vec<String>,
        /// List the jobs (name, stage, when, allow_failure, needs) and exit.
        #[arg(long)]
        list: bool,
        /// With one --job: run the job N times and report its flake rate.
        #[arg(long, value_name = "N", requires = "job")]
        repeat: Option<u32>,
        /// Run jobs in the project directory instead of a fresh copy per job.
        #[arg(long)]
        in_place: bool,
        /// Keep each attempt's workspace under the run folder.
        #[arg(long)]
        keep_workspaces: bool,
        /// Say how the run is set up (workspaces, containment) before it starts.
        #[arg(long)]
        verbose: bool,
        /// The project whose files jobs see (default: the pipeline file's directory).
        #[arg(long, value_name = "DIR")]
        project_dir: Option<PathBuf>,
        /// Seconds between SIGTERM and SIGKILL when stopping a job (overrides kill_grace).
        #[arg(long, value_name = "SECS")]
        kill_grace: Option<f64>,
        /// The engine of a run whose UI is another trackside (see `run` on a terminal).
        #[arg(long = "engine-process", hide = true)]
        engine_process: bool,
        /// Headless: wait at manual gates until someone approves them from
        /// another terminal (`trackside approve RUN JOB`, or `trackside
        /// attach`), instead of ending the run as blocked.
        #[arg(long)]
        wait_approval: bool,
        /// Write the run as JUnit XML to FILE when it ends (a test case per
        /// job; a retried job's failed attempts as flakyFailure or
        /// rerunFailure), for CI dashboards.
        #[arg(long = "junit-out", value_name = "FILE")]
        junit_out: Option<PathBuf>,
        /// Send notifications (run finished, job failed, gate waiting,
        /// rollout verdict) to this webhook as Slack-compatible JSON.
        /// Repeatable. A command line is visible to other users: put a URL
        /// that holds a token in `notify: {webhooks: [...]}` of
        /// <state>/config.yml instead.
        #[arg(long = "notify", value_name = "URL")]
        notify: Vec<String>,
        /// Run this shell command for each notification, the notice's JSON
        /// on its standard input. Repeatable.
        #[arg(long = "notify-cmd", value_name = "CMD")]
        notify_cmd: Vec<String>,
        /// Open the run's socket (and its rollouts' control sockets) to the
        /// members of this group, besides you and root: they attach,
        /// approve and steer, each named in the audit trail. Default:
        /// `access: {group: ...}` of <state>/config.yml, else you alone.
        #[arg(long = "allow-group", value_name = "GROUP")]
        allow_group: Option<String>,
        /// Go on with run RUN, whose trackside died: see `trackside resume`.
        #[arg(long, value_name = "RUN")]
        resume: Option<String>,
    },
    /// Go on with a run whose trackside died (kill -9, power loss, a
    /// closed SSH session), under the same run id: jobs that passed (with
    /// all they need) are kept, interrupted attempts run again, and the
    /// rest runs. Takes `run`'s flags (`--headless`, `--json`, `-j`,
    /// `--var`, `--secret`, ...); the pipeline file and project are the
    /// run's unless given.
    Resume {
        /// The run's id (or a prefix of it).
        run: String,
        /// `run`'s flags.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        flags: Vec<std::ffi::OsString>,
    },
    /// Check a pipeline and report every problem.
    Validate {
        /// The pipeline file; by default as `run` finds it.
        file: Option<PathBuf>,
        #[command(flatten)]
        vars: VarArgs,
        #[arg(long, value_enum, default_value = "text")]
        format: OutputFormat,
    },
    /// Run the preflight checks on their own (config.yml's, the pipeline's,
    /// and Docker when a job needs it): each with what it found; exit 1
    /// when one fails.
    Doctor {
        /// The pipeline file; by default as `run` finds it (none: only
        /// config.yml's checks).
        file: Option<PathBuf>,
        #[command(flatten)]
        vars: VarArgs,
    },
    /// Print execution levels, the critical path and maximum parallelism.
    Plan {
        /// The pipeline file; by default as `run` finds it.
        file: Option<PathBuf>,
        #[command(flatten)]
        vars: VarArgs,
        #[arg(long, value_enum, default_value = "text")]
        format: OutputFormat,
    },
    /// When a run of the pipeline would finish, forecast from the history of
    /// its past runs: each job's typical duration and the run's median and
    /// p90 finish with `-j` jobs at once.
    Forecast {
        /// The pipeline file; by default as `run` finds it.
        file: Option<PathBuf>,
        #[command(flatten)]
        vars: VarArgs,
        /// Jobs at once (default: as many as a run starts with, the cores and one more).
        #[arg(short = 'j', long = "jobs", value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        jobs: Option<u32>,
        #[arg(long, value_enum, default_value = "text")]
        format: OutputFormat,
    },
    /// List past runs.
    Runs {
        #[arg(long, value_enum, default_value = "text")]
        format: OutputFormat,
        /// Show at most N runs (the newest).
        #[arg(long)]
        limit: Option<usize>,
        /// Only runs of this pipeline (its name).
        #[arg(long)]
        pipeline: Option<String>,
        /// Only runs with this result: passed, failed, blocked, cancelled, running or crashed.
        #[arg(long)]
        result: Option<String>,
    },
    /// Every recorded attempt of a job (or of every job), oldest first,
    /// with outcome, duration, commit and branch, and a sparkline of its
    /// passing durations.
    History {
        /// Only this job.
        job: Option<String>,
        /// Only runs of this pipeline file.
        #[arg(long, value_name = "FILE")]
        pipeline: Option<PathBuf>,
        /// Only runs on this branch.
        #[arg(long)]
        branch: Option<String>,
        /// Only attempts younger than this (7d, 12h, 30m).
        #[arg(long, value_name = "AGE")]
        since: Option<String>,
        /// At most this many attempts (the newest).
        #[arg(long, default_value_t = 200)]
        limit: usize,
        #[arg(long, value_enum, default_value = "text")]
        format: OutputFormat,
    },
    /// Jobs that fail intermittently, ranked, with their evidence (passed on
    /// a retry, passed and failed on one commit), failure rate with a 90%
    /// interval, and since when; jobs broken for good are listed too.
    Flaky {
        /// Only runs of this pipeline file.
        #[arg(long, value_name = "FILE")]
        pipeline: Option<PathBuf>,
        /// List every job, stable and failing ones too.
        #[arg(long)]
        all: bool,
        #[arg(long, value_enum, default_value = "text")]
        format: OutputFormat,
    },
    /// Keep a flaky job or test case running without letting it fail runs:
    /// `add NAME [--until 2026-12-31|14d]`, `remove NAME`, `list`. NAME is a
    /// job's name (or a GitHub job id: every job of its matrix), a test case
    /// of one job as `trackside flaky` names it (`JOB › TEST`), or a test
    /// case's name in any job.
    Quarantine {
        #[command(subcommand)]
        action: QuarantineAction,
        /// Only for this pipeline file (default: every pipeline).
        #[arg(long, value_name = "FILE", global = true)]
        pipeline: Option<PathBuf>,
    },
    /// A run's test cases from its jobs' JUnit reports, failed first, with
    /// their messages (RUN: id, unique prefix, or `last`).
    Tests {
        run: String,
        job: Option<String>,
        #[arg(long, value_enum, default_value = "text")]
        format: OutputFormat,
    },
    /// History as Prometheus metrics (runs, attempts, failures by class,
    /// retries, duration histograms, flaky jobs), for node_exporter's
    /// textfile collector or a scraper.
    Metrics {
        /// Only this pipeline file's history.
        #[arg(long, value_name = "FILE")]
        pipeline: Option<PathBuf>,
        /// Write to FILE (atomically) instead of standard output.
        #[arg(long, short = 'o', value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Each pipeline's recent runs at a glance: durations (p50, p90, a
    /// chart), which failed, failures by class, the flakiest jobs.
    Stats {
        /// Only this pipeline file's history.
        #[arg(long, value_name = "FILE")]
        pipeline: Option<PathBuf>,
        /// How many of the latest runs.
        #[arg(long, default_value_t = 40)]
        last: usize,
        #[arg(long, value_enum, default_value = "text")]
        format: OutputFormat,
    },
    /// Why a run's jobs failed: each failed attempt's class, the failure
    /// knowledge base's hint and runbook, the lines that told it, and how
    /// often the same failure was seen (RUN: id, unique prefix, or `last`).
    Explain {
        run: String,
        job: Option<String>,
        #[arg(long, value_enum, default_value = "text")]
        format: OutputFormat,
    },
    /// Print a job's log from a past run (RUN: id, unique prefix, or `last`).
    Logs {
        run: String,
        job: String,
        /// Which attempt (default: the last).
        #[arg(long)]
        attempt: Option<u32>,
        /// Show each line's time.
        #[arg(long)]
        timestamps: bool,
        /// Keep printing the job's lines as a running run writes them, until
        /// the job (or the run) has ended.
        #[arg(long, short = 'f', conflicts_with = "attempt")]
        follow: bool,
    },
    /// Watch and steer a run another trackside is running (RUN: id, unique
    /// prefix, or `last`; default: the newest live run): the full UI, or
    /// its plain stream. Quitting leaves; the run goes on.
    Attach {
        run: Option<String>,
        /// Watch only: the steering keys are off.
        #[arg(long)]
        read_only: bool,
        /// The plain `job > line` stream instead of the UI (the default when
        /// stdout is not a terminal).
        #[arg(long)]
        headless: bool,
        /// One JSON event per line (as `run --json`).
        #[arg(long)]
        json: bool,
        /// Print the run from its start, not from now on.
        #[arg(long)]
        from_start: bool,
        /// Terminal UI without box-drawing or other non-ASCII glyphs.
        #[arg(long)]
        ascii: bool,
        /// Terminal UI without the mouse.
        #[arg(long)]
        no_mouse: bool,
    },
    /// Release a manual gate of a running run (or approve a job in advance).
    Approve { run: String, job: String },
    /// Run a failed or cancelled job of a running run again.
    Retry { run: String, job: String },
    /// Cancel a job of a running run, or the whole run without JOB.
    Cancel { run: String, job: Option<String> },
    /// Open a shell in a failed container job: its kept container (see
    /// --keep-failed) or a fresh one of the same image with its workspace.
    Shell {
        run: String,
        job: String,
        /// Which attempt (default: the last).
        #[arg(long)]
        attempt: Option<u32>,
    },
    /// List a run's artifacts (`artifacts RUN [JOB]`), or extract them
    /// (`artifacts get RUN JOB [PATH] -o DIR`, verified on the way).
    Artifacts {
        /// RUN, or `get` followed by RUN JOB [PATH].
        #[arg(num_args = 1..=4, required = true, value_name = "RUN [JOB] | get RUN JOB [PATH]")]
        args: Vec<String>,
        /// Where `get` writes the files.
        #[arg(short = 'o', long = "output", value_name = "DIR")]
        output: Option<PathBuf>,
    },
    /// Check the artifact store: rehash every object, find records pointing
    /// at missing objects.
    Store {
        #[command(subcommand)]
        action: StoreCmd,
    },
    /// Remove old runs, expired artifacts and unused cache entries by policy
    /// (flags, or `gc:` in <state>/config.yml), then every stored object
    /// nothing kept uses. Safe while runs are in progress.
    Gc {
        /// Keep at most N finished runs per pipeline.
        #[arg(long, value_name = "N")]
        keep_last: Option<usize>,
        /// Remove finished runs older than this (`30d`, `12h`).
        #[arg(long, value_name = "AGE", value_parser = parse_age)]
        max_age: Option<Duration>,
        /// Then drop the least recently used runs and cache entries until
        /// the store is at most this big (`500MB`, `2GiB`).
        #[arg(long, value_name = "SIZE", value_parser = storecmd::parse_size)]
        max_size: Option<u64>,
        /// Drop cache entries and directory caches not used for this long (`14d`).
        #[arg(long, value_name = "AGE", value_parser = parse_age)]
        unused_for: Option<Duration>,
        /// Say what would be removed, remove nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// A small HTTP service to deploy in demos and tests: answers
    /// `version V`, fails a share of requests, takes a while; `/healthz` is 200.
    DemoService {
        /// Port to listen on (0: any free one; the address is printed).
        #[arg(long, default_value_t = 0)]
        port: u16,
        #[arg(long, default_value = "v1")]
        version: String,
        /// Share of requests answered with 500, from 0 to 1.
        #[arg(long, default_value_t = 0.0)]
        error_rate: f64,
        /// Typical latency of an answer in milliseconds (each takes 80-120% of it).
        #[arg(long, default_value_t = 20)]
        latency_ms: u64,
    },
    /// Make a service's previous revision stable again (also after a
    /// completed rollout): a live service's traffic switches to it (at once
    /// while its replicas are still up, else once they are started and
    /// healthy); the next deploy compares against it.
    Rollback { service: String },
    /// The service process of a live service (a deploy starts it; it
    /// outlives the deploy): its router, its replicas' watchdog, their
    /// scale-down.
    Router {
        service: String,
        /// Where the router listens (port 0: any free one; default: where
        /// it listened before).
        #[arg(long, default_value = "")]
        listen: String,
        /// Route through HAProxy started from this binary, in a session of
        /// its own (default: the router it had before, else the built-in one).
        #[arg(long, value_name = "BINARY")]
        haproxy: Option<String>,
        /// Route with the built-in router.
        #[arg(long, conflicts_with = "haproxy")]
        builtin: bool,
        /// Open the service's socket to this group too (default: the group
        /// it had before, else its user alone).
        #[arg(long = "allow-group", value_name = "GROUP")]
        allow_group: Option<String>,
    },
    /// The Docker Swarm's nodes (for --executor swarm): state,
    /// availability, role, size, trackside jobs running, labels.
    Nodes {
        #[arg(long, value_enum, default_value = "text")]
        format: OutputFormat,
        /// The manager's Docker API address (default: `swarm: {manager}` of
        /// config.yml, else DOCKER_HOST).
        #[arg(long = "swarm-manager", value_name = "ADDRESS")]
        swarm_manager: Option<String>,
    },
    /// The live services of the state directory: what serves, where, the
    /// traffic split and each replica.
    Services {
        #[arg(long, value_enum, default_value = "text")]
        format: OutputFormat,
        /// The services view: each service's health and what serves, with
        /// live error-rate and latency charts from its router (q leaves).
        #[arg(long, conflicts_with = "format")]
        ui: bool,
        /// With --ui: ASCII only (no box drawing or Unicode glyphs).
        #[arg(long, requires = "ui")]
        ascii: bool,
    },
    /// One live service: `status`, `logs` (each replica's last lines), `stop`
    /// (its router and replicas; the history stays), `start` (them again),
    /// `scale N` (N stable replicas).
    Service {
        /// The service's name, or the path of its service process's socket
        /// (`<state>/services/web/router.sock` of a service opened to your
        /// group: status, scale, stop).
        service: String,
        #[arg(value_enum, default_value = "status")]
        action: ServiceAction,
        /// With scale: how many stable replicas.
        count: Option<u32>,
        /// With logs: keep printing what the replicas write (`replica >
        /// line`), new replicas included, until interrupted.
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// Steer a rollout another trackside is running (same user, same
    /// --state-dir): `trackside rollout web promote`, `... status`.
    Rollout {
        /// The deploy's `service:`, or the path of its control socket
        /// (`<state>/services/web.sock` of a run opened to your group).
        service: String,
        /// What to do (default: status).
        action: Option<RolloutAction>,
        /// With promote: straight to 100%.
        #[arg(long)]
        full: bool,
        /// The reply as one JSON object (with the rollout's whole status).
        #[arg(long)]
        json: bool,
    },
    /// GitHub workflows' actions of other repositories.
    Actions {
        #[command(subcommand)]
        action: ActionsCmd,
    },
    /// Inspect the result cache.
    Cache {
        #[command(subcommand)]
        action: CacheCmd,
    },
    /// Print the summary of a past run.
    Show {
        run: String,
        #[arg(long, value_enum, default_value = "text")]
        format: OutputFormat,
    },
}

#[derive(Subcommand)]
enum ActionsCmd {
    /// Fetch an action (`owner/repo@ref`, or `owner/repo/path@ref`) into
    /// the actions folder, where `uses:` finds it. Fetching it again
    /// replaces it.
    Pull {
        action: String,
        /// Fetch from this URL or path instead of https://github.com/owner/repo
        /// (a mirror, or a local copy).
        #[arg(long, value_name = "URL")]
        from: Option<String>,
        /// The actions folder (default: <state>/actions).
        #[arg(long = "actions-dir", value_name = "DIR")]
        actions_dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum CacheCmd {
    /// Explain a job's cache miss (or hit): its key's components diffed
    /// against the last stored result of the same job.
    Why { run: String, job: String },
}

#[derive(Subcommand)]
enum StoreCmd {
    /// Rehash every object; report corrupted ones and dangling references.
    Verify {
        /// Remove corrupted objects (jobs that need them run again or fail as data_integrity).
        #[arg(long)]
        repair: bool,
    },
}

/// The record of run `id` (its meta and events), when its trackside died
/// before it finished; else why it cannot be resumed.
fn crashed_run(state: &Path, id: &str) -> Result<(store::RunMeta, Vec<engine::Event>), Fail> {
    let dir = store::find_run(state, id).map_err(|e| Fail(e.to_string(), 2))?;
    let meta: store::RunMeta = std::fs::read_to_string(dir.join("meta.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .ok_or_else(|| Fail(format!("run {id}: its record has no readable meta.json"), 2))?;
    if let Some(summary) = store::read_summary(&dir).map_err(|e| Fail(e.to_string(), 2))? {
        return Err(Fail(
            format!(
                "run {} finished ({}): nothing to resume; run the pipeline again to run its jobs again",
                meta.run_id,
                format!("{:?}", summary.result).to_lowercase()
            ),
            2,
        ));
    }
    if !meta.crashed(false) {
        return Err(Fail(
            format!(
                "run {} is still running: attach to it with `trackside attach {}`",
                meta.run_id, meta.run_id
            ),
            2,
        ));
    }
    let events = store::read_events(&dir).map_err(|e| Fail(e.to_string(), 2))?;
    Ok((meta, events))
}

/// `-j`: how many jobs at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Jobs {
    /// Follow the machine's pressure.
    Auto,
    Fixed(u32),
}

/// A `-j` value that is neither a number from 1 up nor `auto`.
#[derive(Debug, thiserror::Error)]
#[error("`{0}` is not a number of jobs from 1 up, nor `auto`")]
struct BadJobs(String);

fn parse_jobs(s: &str) -> Result<Jobs, BadJobs> {
    match s {
        "auto" => Ok(Jobs::Auto),
        n => match n.parse::<u32>() {
            Ok(n) if n >= 1 => Ok(Jobs::Fixed(n)),
            _ => Err(BadJobs(s.to_string())),
        },
    }
}

fn parse_age(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("`{s}`: {e}; e.g. `30d`, `12h`"))
}

/// Largest `--event-payload` and `--vars-file` read.
const MAX_CONTEXT_FILE: u64 = 16 << 20;

fn read_context_file(flag: &str, path: &Path) -> Result<String, Fail> {
    let meta = std::fs::metadata(path).map_err(|e| Fail(format!("{flag} {}: {e}", path.display()), 2))?;
    if meta.len() > MAX_CONTEXT_FILE {
        return Err(Fail(
            format!(
                "{flag} {}: {} bytes; at most 16 MiB are read",
                path.display(),
                meta.len()
            ),
            2,
        ));
    }
    std::fs::read_to_string(path).map_err(|e| Fail(format!("{flag} {}: {e}", path.display()), 2))
}

/// `--event-payload FILE`: a JSON object.
fn read_event_payload(path: &Path) -> Result<serde_json::Value, Fail> {
    let text = read_context_file("--event-payload", path)?;
    match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(v @ serde_json::Value::Object(_)) => Ok(v),
        Ok(_) => Err(Fail(
            format!(
                "--event-payload {}: not a JSON object; write the payload GitHub sends, e.g. {{\"action\": \"opened\", ...}}",
                path.display()
            ),
            2,
        )),
        Err(e) => Err(Fail(
            format!("--event-payload {}:{}:{}: {e}", path.display(), e.line(), e.column()),
            2,
        )),
    }
}

/// `--vars-file FILE`: `NAME=VALUE` lines (`#` comments, blank lines, and
/// values in matching quotes, as act's `.vars` files have them).
fn read_vars_file(path: &Path) -> Result<Vec<(String, String)>, Fail> {
    let text = read_context_file("--vars-file", path)?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((name, value)) = line.split_once('=') else {
            return Err(Fail(
                format!(
                    "--vars-file {}:{}: expected NAME=VALUE, found `{line}`",
                    path.display(),
                    n + 1
                ),
                2,
            ));
        };
        let name = name.trim();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(Fail(
                format!(
                    "--vars-file {}:{}: `{name}` is not a variable name (letters, digits, _)",
                    path.display(),
                    n + 1
                ),
                2,
            ));
        }
        let value = value.trim();
        let unquoted = ['"', '\'']
            .iter()
            .find_map(|q| value.strip_prefix(*q).and_then(|v| v.strip_suffix(*q)));
        out.push((name.to_string(), unquoted.unwrap_or(value).to_string()));
    }
    Ok(out)
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if pipeline::read::valid_var_name(k) => Ok((k.to_string(), v.to_string())),
        Some((k, _)) => Err(format!("`{k}` is not a valid variable name")),
        None => Err(format!("expected KEY=VALUE, got `{s}`")),
    }
}

/// `--platform LABEL=IMAGE`: a runner label and a Docker image.
fn parse_platform(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        // act's `-P label=-self-hosted`: that label's jobs on this machine.
        Some((label, "-self-hosted")) if !label.trim().is_empty() => Ok((label.trim().to_string(), String::new())),
        Some((label, image)) if !label.trim().is_empty() && !image.trim().is_empty() => {
            let image = image.trim();
            Ok((
                label.trim().to_string(),
                image.strip_prefix("docker://").unwrap_or(image).to_string(),
            ))
        }
        _ => Err(format!(
            "expected LABEL=IMAGE (`ubuntu-latest=node:20-bookworm`), got `{s}`"
        )),
    }
}

/// A failure that ends the command: message and exit code.
struct Fail(String, u8);

impl<E: std::fmt::Display> From<E> for Fail {
    fn from(e: E) -> Self {
        Fail(e.to_string(), 2)
    }
}

/// glibc gives every thread that allocates an arena of its own (up to 8
/// per core), and each keeps memory freed in it: with the tokio workers and
/// the blocking pool of a 1,000-job run that was about 9 MiB of peak RSS
/// for nothing, and a second arena still 2.4 MiB (docs/BENCHMARKS.md). One
/// arena serves trackside's threads; `MALLOC_ARENA_MAX` in the environment
/// still decides when set.
#[cfg(target_env = "gnu")]
fn limit_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter; called before
        // any thread of trackside's own is started.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}

fn main() -> ExitCode {
    let mut cli = Cli::parse();
    // `resume RUN FLAGS` is `run --resume RUN FLAGS`.
    if let Cmd::Resume { run, flags } = &cli.command {
        let mut argv: Vec<std::ffi::OsString> = vec!["trackside".into()];
        if let Some(s) = &cli.state_dir {
            argv.extend(["--state-dir".into(), s.clone().into_os_string()]);
        }
        argv.extend(["run".into(), "--resume".into(), run.into()]);
        argv.extend(flags.iter().cloned());
        cli = Cli::parse_from(argv);
    }
    trackside::net::raise_fd_limit();
    #[cfg(target_env = "gnu")]
    limit_malloc_arenas();
    match dispatch(cli) {
        Ok(code) => ExitCode::from(code),
        Err(Fail(msg, code)) => {
            if !msg.is_empty() {
                eprintln!("error: {msg}");
            }
            ExitCode::from(code)
        }
    }
}

fn dispatch(cli: Cli) -> Result<u8, Fail> {
    let state = store::state_dir(cli.state_dir.as_deref())?;
    // A run named by its path (another user's, opened to a group) needs
    // no state directory of one's own.
    let by_path = match &cli.command {
        Cmd::Attach { run, .. } => run.as_deref().and_then(attachcmd::run_path).is_some(),
        Cmd::Approve { run, .. } | Cmd::Retry { run, .. } | Cmd::Cancel { run, .. } => {
            attachcmd::run_path(run).is_some()
        }
        Cmd::Rollout { service, .. } => service.contains('/'),
        _ => false,
    };
    if !by_path
        && !matches!(
            cli.command,
            Cmd::Validate { .. } | Cmd::Plan { .. } | Cmd::Forecast { .. } | Cmd::DemoService { .. }
        )
    {
        store::prepare_state_dir(&state)?;
    }
    match cli.command {
        Cmd::Validate { file, vars, format } => {
            let file = match file {
                Some(f) => f,
                None => default_pipeline_file()?,
            };
            validate(&file, &vars, format, &state)
        }
        Cmd::Doctor { file, vars } => doctor(file.or_else(|| default_pipeline_file().ok()), &vars, &state),
        Cmd::Plan { file, vars, format } => {
            let file = match file {
                Some(f) => f,
                None => default_pipeline_file()?,
            };
            plan(&file, &vars, format, &state)
        }
        Cmd::Forecast {
            file,
            vars,
            jobs,
            format,
        } => {
            let file = match file {
                Some(f) => f,
                None => default_pipeline_file()?,
            };
            forecast(&file, &vars, jobs, format, &state)
        }
        Cmd::Runs {
            format,
            limit,
            pipeline,
            result,
        } => runs(&state, format, limit, pipeline.as_deref(), result.as_deref()),
        Cmd::History {
            job,
            pipeline,
            branch,
            since,
            limit,
            format,
        } => insightcmd::history(
            &state,
            insightcmd::HistoryArgs {
                job: job.as_deref(),
                pipeline: pipeline.as_deref(),
                branch: branch.as_deref(),
                since: since.as_deref(),
                limit,
                json: format == OutputFormat::Json,
            },
        ),
        Cmd::Quarantine { action, pipeline } => {
            let cmd = match &action {
                QuarantineAction::Add { name, until } => insightcmd::QuarantineCmd::Add {
                    name,
                    until: until.as_deref(),
                },
                QuarantineAction::Remove { name } => insightcmd::QuarantineCmd::Remove { name },
                QuarantineAction::List { format } => insightcmd::QuarantineCmd::List {
                    json: *format == OutputFormat::Json,
                },
            };
            insightcmd::quarantine(&state, cmd, pipeline.as_deref())
        }
        Cmd::Tests { run, job, format } => {
            insightcmd::tests(&state, &run, job.as_deref(), format == OutputFormat::Json)
        }
        Cmd::Metrics { pipeline, output } => insightcmd::metrics(&state, pipeline.as_deref(), output.as_deref()),
        Cmd::Stats { pipeline, last, format } => {
            insightcmd::stats(&state, pipeline.as_deref(), last, format == OutputFormat::Json)
        }
        Cmd::Explain { run, job, format } => {
            insightcmd::explain(&state, &run, job.as_deref(), format == OutputFormat::Json)
        }
        Cmd::Flaky { pipeline, all, format } => {
            insightcmd::flaky(&state, pipeline.as_deref(), all, format == OutputFormat::Json)
        }
        Cmd::Logs {
            run,
            job,
            attempt,
            timestamps,
            follow,
        } => {
            if follow {
                attachcmd::follow_log(&state, &run, &job, &|e| log_text(e, timestamps))
            } else {
                logs(&state, &run, &job, attempt, timestamps)
            }
        }
        Cmd::Attach {
            run,
            read_only,
            headless,
            json,
            from_start,
            ascii,
            no_mouse,
        } => attachcmd::attach(
            &state,
            attachcmd::AttachArgs {
                run,
                read_only,
                headless,
                from_start,
                json,
                ascii,
                no_mouse,
            },
        ),
        Cmd::Approve { run, job } => attachcmd::steer(&state, &run, trackside::protocol::Command::Approve { job }),
        Cmd::Retry { run, job } => attachcmd::steer(&state, &run, trackside::protocol::Command::Retry { job }),
        Cmd::Cancel { run, job } => attachcmd::steer(
            &state,
            &run,
            match job {
                Some(job) => trackside::protocol::Command::Cancel { job },
                None => trackside::protocol::Command::CancelAll,
            },
        ),
        Cmd::Show { run, format } => show(&state, &run, format),
        Cmd::Artifacts { args, output } => storecmd::artifacts(&state, &args, output.as_deref()),
        Cmd::Store {
            action: StoreCmd::Verify { repair },
        } => storecmd::verify(&state, repair),
        Cmd::Gc {
            keep_last,
            max_age,
            max_size,
            unused_for,
            dry_run,
        } => storecmd::gc(
            &state,
            storecmd::GcFlags {
                keep_last,
                max_age,
                max_size,
                unused_for,
                dry_run,
            },
        ),
        Cmd::Actions {
            action:
                ActionsCmd::Pull {
                    action,
                    from,
                    actions_dir,
                },
        } => {
            let a = store::actions::ActionRef::parse(&action)
                .ok_or_else(|| Fail(store::actions::PullError::BadName(action.clone()).to_string(), 2))?;
            let root = actions_dir.unwrap_or_else(|| state.join("actions"));
            let (dir, commit) = store::actions::pull(&root, &a, from.as_deref()).map_err(|e| Fail(e.to_string(), 1))?;
            outln!("{}: commit {commit} in {}", a.name(), dir.display());
            Ok(0)
        }
        Cmd::Cache {
            action: CacheCmd::Why { run, job },
        } => storecmd::cache_why(&state, &run, &job),
        Cmd::Shell { run, job, attempt } => shell(&state, &run, &job, attempt),
        Cmd::Rollback { service } => servicecmd::rollback(&state, &service),
        Cmd::Router {
            service,
            listen,
            haproxy,
            builtin,
            allow_group,
        } => {
            let _log_guard = init_tracing(&state);
            let choice = match (haproxy, builtin) {
                (Some(binary), _) => trackside::deploy::service::RouterChoice::Haproxy(binary),
                (None, true) => trackside::deploy::service::RouterChoice::Builtin,
                (None, false) => trackside::deploy::service::RouterChoice::AsBefore,
            };
            servicecmd::router(&state, &service, &listen, choice, allow_group)
        }
        Cmd::Nodes { format, swarm_manager } => swarmcmd::nodes(&state, swarm_manager, format == OutputFormat::Json),
        Cmd::Services { ui: true, ascii, .. } => servicecmd::services_ui(&state, ascii),
        Cmd::Services { format, .. } => servicecmd::services(&state, format == OutputFormat::Json),
        Cmd::Service {
            service,
            action,
            count,
            follow,
        } => servicecmd::service(
            &state,
            &service,
            match (action, count) {
                (ServiceAction::Logs, _) => servicecmd::Action::Logs { follow },
                _ if follow => {
                    return Err(Fail("--follow goes with `logs`".into(), 2));
                }
                (ServiceAction::Status, _) => servicecmd::Action::Status,
                (ServiceAction::Stop, _) => servicecmd::Action::Stop,
                (ServiceAction::Start, _) => servicecmd::Action::Start,
                (ServiceAction::Scale, Some(n)) => servicecmd::Action::Scale(n),
                (ServiceAction::Scale, None) => {
                    return Err(Fail(
                        format!("`trackside service {service} scale N`: say how many replicas"),
                        2,
                    ));
                }
            },
        ),
        Cmd::Rollout {
            service,
            action,
            full,
            json,
        } => rollout(&state, &service, action.unwrap_or(RolloutAction::Status), full, json),
        Cmd::DemoService {
            port,
            version,
            error_rate,
            latency_ms,
        } => demo_service(port, version, error_rate, latency_ms),
        // `main` made it a `run --resume`.
        Cmd::Resume { .. } => Err(Fail("resume: use `trackside resume RUN`".into(), 2)),
        Cmd::Run {
            file,
            vars,
            headless,
            ascii,
            no_mouse,
            no_watch,
            keep_failed,
            no_cache,
            json,
            jobs,
            priority,
            preempt,
            fail_fast,
            approve,
            approve_all,
            job,
            only,
            stage,
            list,
            repeat,
            in_place,
            keep_workspaces,
            verbose,
            project_dir,
            kill_grace,
            wait_approval,
            engine_process,
            junit_out,
            notify,
            notify_cmd,
            allow_group,
            resume,
        } => {
            // On a terminal the run goes in a process of its own and this
            // one attaches its UI to it: `d` detaches, the run goes on.
            let on_terminal = !headless && !json && std::io::stdout().is_terminal() && std::io::stdin().is_terminal();
            if on_terminal
                && !engine_process
                && !list
                && let Some(code) = attachcmd::run_in_background(ascii, no_mouse, &state)?
            {
                return Ok(code);
            }
            let headless = headless || engine_process;
            let wait_approval = wait_approval || engine_process;
            let _log_guard = init_tracing(&state);
            // The index opens (reading what is left of its log) while the
            // pipeline is read, not after.
            let index_opening = (!list).then(|| trackside::store::index::Index::open_beside(&state));
            // A resumed run: its record, checked to be one that died.
            let resumed = match &resume {
                Some(id) => {
                    if !job.is_empty() || !only.is_empty() || !stage.is_empty() || repeat.is_some() {
                        return Err(Fail(
                            "--resume goes on with the whole run: drop --job, --only, --stage and --repeat".into(),
                            2,
                        ));
                    }
                    Some(crashed_run(&state, id)?)
                }
                None => None,
            };
            let file = match (file, &resumed) {
                (Some(f), _) => f,
                (None, Some((meta, _))) => meta.pipeline_file.clone(),
                (None, None) => default_pipeline_file()?,
            };
            let project_dir = project_dir.or_else(|| resumed.as_ref().map(|(m, _)| m.project_dir.clone()));
            let (secrets, opts, git_facts) = load_options(&vars, &file, &state)?;
            let Some((pipeline, _)) = load(&file, &opts, OutputFormat::Text)? else {
                return Ok(2);
            };
            // A workflow this event does not start (the warning says why).
            if opts.dialect == Some(pipeline::Dialect::Github) && pipeline.jobs.is_empty() {
                outln!(
                    ":: workflow `{}` does not run for this {}: nothing to run",
                    pipeline.name,
                    vars.event.as_deref().unwrap_or("push")
                );
                return Ok(0);
            }
            let plan = Plan::build(&pipeline).map_err(|_| Fail("the pipeline has a dependency cycle".into(), 2))?;
            if repeat.is_some() && job.len() != 1 {
                return Err(Fail("--repeat takes exactly one --job".into(), 2));
            }
            let selection = pipeline::select::Selection {
                jobs: job.clone(),
                only,
                stages: stage,
            };
            // The whole pipeline is kept beside the selected part only when
            // there is a selection (a copy of a 1,000-job pipeline is MBs).
            let (pipeline, plan, full) = if selection.is_empty() {
                (pipeline, plan, None)
            } else {
                let sub = pipeline::select::select(&pipeline, &plan, &selection).map_err(|e| Fail(e.to_string(), 2))?;
                let plan = Plan::build(&sub).map_err(|_| Fail("the pipeline has a dependency cycle".into(), 2))?;
                (sub, plan, Some(pipeline))
            };
            if list {
                print!("{}", job_list(&pipeline));
                return Ok(0);
            }
            let mut approved = Vec::new();
            for a in &approve {
                let found = pipeline::select::resolve(&pipeline, a);
                if found.is_empty() {
                    let names: Vec<&str> = pipeline.jobs.iter().map(|j| j.name.as_str()).collect();
                    let hint = pipeline::diag::suggestion_hint(a, &names, "jobs");
                    return Err(Fail(format!("--approve {a}: unknown job; {hint}"), 2));
                }
                for i in found {
                    let j = &pipeline.jobs[i];
                    if j.approvers.as_ref().is_some_and(|p| !p.allow_self) {
                        return Err(Fail(
                            format!(
                                "--approve {a}: `{}` takes approvals from others than the run's starter ({}): they approve it with `trackside approve RUN {}`",
                                j.name,
                                j.approvers.as_ref().map(|p| p.describe()).unwrap_or_default(),
                                j.name
                            ),
                            2,
                        ));
                    }
                    if j.when != When::Manual && j.start_in.is_none() {
                        return Err(Fail(
                            format!("--approve {a}: `{}` is neither a manual nor a delayed job", j.name),
                            2,
                        ));
                    }
                    approved.push(j.name.clone());
                }
            }
            let approve = approved;
            // Who may reach the run's sockets: checked before anything runs.
            let group = match allow_group {
                Some(g) => Some(g),
                None => trackside::store::gc::access_group(&state).map_err(|e| Fail(e.to_string(), 2))?,
            };
            let access = match &group {
                Some(g) => trackside::access::Access::group(g).map_err(|e| Fail(e.to_string(), 2))?,
                None => trackside::access::Access::owner_only(),
            };
            // Jobs run without what they need take its artifacts from the
            // latest run that recorded them.
            let borrowed = match &full {
                Some(full) if !(selection.only.is_empty() && selection.stages.is_empty()) => {
                    borrowed_artifacts(&state, full, &pipeline)?
                }
                _ => Default::default(),
            };
            // `--approve-all` leaves gates that take approvals by name to
            // their approvers.
            let manual: Vec<String> = pipeline
                .jobs
                .iter()
                .filter(|j| j.when == When::Manual && j.approvers.is_none())
                .map(|j| j.name.clone())
                .collect();
            // A GitLab pipeline's project is its git work tree (CI_PROJECT_DIR).
            let project_dir = match project_dir {
                Some(d) => d,
                None => {
                    let dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
                    // `load_options` found it for a GitLab or GitHub file.
                    let root = matches!(
                        opts.dialect,
                        Some(pipeline::Dialect::Gitlab | pipeline::Dialect::Github)
                    )
                    .then(|| opts.project_dir.clone())
                    .flatten();
                    root.unwrap_or(dir)
                }
            };
            let project_dir = if project_dir.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                project_dir
            };
            let project_dir = std::fs::canonicalize(&project_dir)
                .map_err(|e| Fail(format!("project directory {}: {e}", project_dir.display()), 2))?;
            let kill_grace = match kill_grace {
                Some(s) if s.is_finite() && (0.0..=3600.0).contains(&s) => Some(Duration::from_secs_f64(s)),
                Some(s) => return Err(Fail(format!("--kill-grace {s}: give seconds from 0 to 3600"), 2)),
                None => None,
            };
            // Preflight: config.yml's checks, then the pipeline's.
            let mut preflight = config_preflight(&state)?;
            preflight.extend(pipeline.preflight.iter().cloned());
            let preflight_dir = project_dir.clone();
            let mut cfg = EngineConfig::new(
                store::new_run_id(),
                state.clone(),
                std::fs::canonicalize(&file).unwrap_or(file.clone()),
                project_dir,
            );
            cfg.index = index_opening;
            cfg.in_place = in_place;
            cfg.keep_workspaces = keep_workspaces;
            cfg.verbose = verbose;
            match jobs {
                Some(Jobs::Fixed(j)) => cfg.max_parallel = usize::try_from(j).unwrap_or(usize::MAX),
                None | Some(Jobs::Auto) => cfg.auto_parallel = true,
            }
            if preempt && priority == trackside::engine::sharing::Priority::Low {
                eprintln!(
                    "trackside: --preempt with --priority low stops nothing (no run has a lower priority); give --priority normal or high"
                );
            }
            cfg.sharing = Some(trackside::engine::sharing::Sharing { priority, preempt });
            cfg.fail_fast = fail_fast;
            cfg.cli_vars = opts.cli_vars.clone();
            cfg.secrets = secrets;
            cfg.host_env = opts.host_env.clone();
            // A run of selected jobs does not follow edits: they would bring the rest back.
            if !no_watch && selection.is_empty() {
                cfg.watch = Some(opts.clone());
            }
            cfg.only_job = repeat.and(job.first().cloned());
            cfg.borrowed_artifacts = borrowed;
            cfg.keep_failed = keep_failed;
            cfg.no_cache = no_cache;
            cfg.group = access.group_name().map(str::to_string);
            cfg.git = git_facts;
            cfg.load_options = Some(opts.clone());
            cfg.repeat = repeat;
            cfg.kill_grace = kill_grace;
            if let Some((meta, events)) = resumed {
                cfg.resume = Some(trackside::engine::resume::from_events(&events, &pipeline, &plan));
                cfg.run_id = meta.run_id;
            }
            let interactive = !headless && !json && std::io::stdout().is_terminal() && std::io::stdin().is_terminal();
            // On a terminal the run stays open at a manual gate until someone approves or quits.
            cfg.finish_when_blocked = !interactive && !wait_approval;
            let format = if engine_process {
                Format::Silent
            } else if json {
                Format::Json
            } else {
                Format::Plain
            };
            // Blocking work (workspace copies) queues rather than growing
            // hundreds of threads when hundreds of jobs start at once.
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .max_blocking_threads(16)
                .build()?;
            let code = rt.block_on(async move {
                // What must hold before any job starts.
                let checked = trackside::exec::preflight::run(&preflight, &preflight_dir).await;
                let failed: Vec<_> = checked.iter().filter(|o| !o.ok).collect();
                if !failed.is_empty() {
                    for o in &failed {
                        eprintln!("error: preflight: {}", o.line());
                    }
                    return Err(Fail(
                        format!(
                            "{} of {} preflight check(s) failed; nothing ran (`trackside doctor` runs them again)",
                            failed.len(),
                            checked.len()
                        ),
                        2,
                    ));
                }
                if verbose && !checked.is_empty() {
                    eprintln!("trackside: {} preflight check(s) passed", checked.len());
                }
                // Host processes and cgroups a crashed trackside left running:
                // swept while the run is set up, done before any job starts.
                let mut sweep = Some(tokio::task::spawn_blocking(trackside::exec::contain::sweep_orphans));
                // A resumed run clears its old workspaces: its dead
                // trackside's processes go first.
                let mut swept = 0;
                if cfg.resume.is_some()
                    && let Some(s) = sweep.take()
                {
                    swept = s.await.unwrap_or(0);
                }
                // Containers: reach the daemon before any job starts, and clear
                // what crashed runs left behind.
                let needs_containers = opts.executor != ExecutorChoice::Shell
                    && pipeline.jobs.iter().any(|j| {
                        !j.services.is_empty() || j.steps.iter().any(|s| s.image.is_some() || s.docker_action.is_some())
                    });
                let on_swarm = executor_arg(&vars, &state)? == ExecutorArg::Swarm;
                if on_swarm {
                    swarm_can_run(&pipeline)?;
                }
                let swarm = if needs_containers && on_swarm {
                    let s = connect_swarm(&vars, &state).await?;
                    // A resumed run takes up the steps its dead run left running.
                    if let Some(r) = &cfg.resume {
                        let kept = s.keep_for_adoption(&cfg.run_id, &r.interrupted, &r.attempts).await;
                        if kept > 0 {
                            eprintln!(
                                "trackside: {kept} step(s) the interrupted run left on the swarm are taken up when their jobs come to them"
                            );
                        }
                    }
                    let reaped = s.reap_orphans().await;
                    if reaped > 0 {
                        eprintln!("trackside: removed {reaped} swarm service(s) left by a crashed trackside");
                    }
                    // `-j auto` when every job runs on the swarm: the cluster's
                    // CPUs bound it, not this machine's (its jobs only follow
                    // logs here); Swarm's scheduler places them by their
                    // reservations. With host jobs too, this machine's load
                    // still decides.
                    let all_remote = pipeline
                        .jobs
                        .iter()
                        .all(|j| !j.steps.is_empty() && j.steps.iter().all(|st| st.image.is_some()));
                    if cfg.auto_parallel
                        && all_remote
                        && let Ok(nodes) = s.cluster_nodes().await
                    {
                        let cpus: f64 = nodes
                            .iter()
                            .filter(|n| n.state == "ready" && n.active)
                            .map(|n| n.cpus)
                            .sum();
                        cfg.auto_parallel = false;
                        cfg.max_parallel = (cpus.ceil() as usize).max(1);
                        if verbose {
                            eprintln!(
                                "trackside: -j auto on the swarm: up to {} jobs at once (its ready nodes' CPUs)",
                                cfg.max_parallel
                            );
                        }
                    }
                    if verbose {
                        eprintln!("trackside: container jobs run on the swarm managed at {}", s.address());
                    }
                    Some(s)
                } else {
                    None
                };
                let docker = if needs_containers && !on_swarm {
                    let d = DockerExecutor::connect().await.map_err(|e| Fail(e.to_string(), 2))?;
                    let reaped = d.reap_orphans().await;
                    if reaped > 0 {
                        eprintln!("trackside: removed {reaped} container(s) left by a crashed trackside");
                    }
                    Some(d)
                } else {
                    None
                };
                cfg.containers = opts.executor != ExecutorChoice::Shell;
                cfg.remote_containers = on_swarm;
                cfg.executor = Arc::new(Executors {
                    shell: ShellExecutor,
                    docker,
                    swarm,
                });
                let handle = engine::spawn(pipeline, plan, cfg)?;
                if verbose {
                    for line in handle.setup() {
                        eprintln!("trackside: {line}");
                    }
                }
                if let Some(s) = sweep {
                    swept = s.await.unwrap_or(0);
                }
                if swept > 0 {
                    eprintln!("trackside: stopped {swept} process(es) left running by a crashed trackside");
                }
                // `trackside rollout SERVICE ...` from other shells.
                let control = trackside::control::serve(handle.clone(), state.clone(), access.clone());
                // Notifications, from the process that runs the engine.
                let (hooks, commands) =
                    trackside::store::gc::notify_targets(&state).map_err(|e| Fail(e.to_string(), 2))?;
                let notifier = trackside::notify::serve(
                    handle.clone(),
                    trackside::notify::Config {
                        webhooks: notify.iter().cloned().chain(hooks).collect(),
                        commands: notify_cmd.iter().cloned().chain(commands).collect(),
                    },
                );
                // `trackside attach`, `approve`, ... from any terminal of this user.
                let group = access.group_name().map(str::to_string);
                let run_socket = trackside::attach::serve(handle.clone(), access)
                    .inspect_err(|e| eprintln!("trackside: this run cannot be attached to: {e}"))
                    .ok();
                match (&group, &run_socket) {
                    (Some(g), Some(_)) => eprintln!(
                        "trackside: members of group `{g}` may attach: trackside attach {}",
                        std::path::absolute(handle.run_dir())
                            .unwrap_or_else(|_| handle.run_dir().to_path_buf())
                            .display()
                    ),
                    // Opened to a group that cannot reach it: nobody it
                    // was meant for could approve or steer.
                    (Some(_), None) => {
                        handle.shutdown().await;
                        return Err(Fail(
                            "the run's socket could not be opened to its group (above)".into(),
                            2,
                        ));
                    }
                    _ => {}
                }
                if engine_process {
                    if run_socket.is_none() {
                        handle.shutdown().await;
                        return Err(Fail("the run's UI cannot reach it".into(), 2));
                    }
                    // The UI that started this process attaches now; from
                    // here on nothing is written to its terminal.
                    outln!("ready {}", handle.run_dir().display());
                    silence_stdio();
                }
                let mut approvals = approve.clone();
                if approve_all {
                    approvals.extend(manual.iter().cloned());
                }
                let left = if interactive {
                    let opts = UiOptions {
                        ascii,
                        mouse: !no_mouse
                            && trackside::store::gc::ui_mouse(&state).map_err(|e| Fail(e.to_string(), 2))?,
                        color: std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
                        bell: trackside::store::gc::ui_bell(&state).map_err(|e| Fail(e.to_string(), 2))?,
                        services: Some(servicecmd::services_source(&state)),
                    };
                    ui::run(&handle, opts, begin_run(&handle, &approvals))
                        .await
                        .map(|left| match left {
                            ui::Left::Finished(s) => Some(s),
                            ui::Left::Detached => None,
                        })
                        .map_err(|e| Fail(e.to_string(), 2))
                } else {
                    // On the runtime's workers, beside the engine, not on
                    // this thread: every burst of events would wake it (three
                    // times a job).
                    let (link, approvals) = (handle.clone(), approvals.clone());
                    let printing = tokio::spawn(async move {
                        headless::run(&link, format, wait_approval, begin_run(&link, &approvals)).await
                    });
                    match printing.await {
                        Ok(printed) => printed.map_err(|e| Fail(e.to_string(), 2)),
                        Err(e) => Err(Fail(format!("the printer stopped: {e}"), 2)),
                    }
                };
                // The stream ended without the summary: the engine has it.
                let ended = match left {
                    Ok(Some(s)) => Ok(s),
                    Ok(None) => match tokio::time::timeout(Duration::from_secs(60), handle.wait()).await {
                        Ok(waited) => waited.map_err(Fail::from),
                        Err(_) => Err(Fail(
                            "the run did not finish within a minute of its front-end".into(),
                            2,
                        )),
                    },
                    Err(e) => Err(e),
                };
                let ended = if interactive {
                    ended.inspect(|summary| outln!("{}", headless::summary_table(summary)))
                } else {
                    ended
                };
                if let (Some(path), Ok(summary)) = (&junit_out, &ended)
                    && let Err(e) = write_junit(path, summary)
                {
                    eprintln!("trackside: cannot write --junit-out {}: {e}", path.display());
                }
                // Also when the front-end failed (a panic, a broken terminal):
                // the run does not outlive it. Its jobs are cancelled and
                // stopped, no process left behind, and its records written.
                if engine_process && let Some(s) = &run_socket {
                    // Someone may still look at the finished run (to retry a job).
                    s.unwatched(ENGINE_LINGER).await;
                }
                handle.shutdown().await;
                control.close().await;
                notifier.close().await;
                if let Some(s) = run_socket {
                    s.close().await;
                }
                Ok::<_, Fail>(ended?.exit_code)
            })?;
            Ok(u8::try_from(code).unwrap_or(1))
        }
    }
}

/// `--junit-out FILE`: the run as JUnit XML (see `headless::junit`).
fn write_junit(path: &Path, summary: &trackside::engine::RunSummary) -> std::io::Result<()> {
    let xml = headless::junit(summary).map_err(std::io::Error::other)?;
    std::fs::write(path, xml)
}

/// How long the process of a finished run waits for attached UIs to leave.
const ENGINE_LINGER: Duration = Duration::from_secs(12 * 3600);

/// Points stdout and stderr at /dev/null: an engine process's terminal is
/// its UI's, and a write there would corrupt the screen (or fail once the
/// UI has gone).
fn silence_stdio() {
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        let _ = nix::unistd::dup2_stdout(&null);
        let _ = nix::unistd::dup2_stderr(&null);
    }
}

/// Keeps trackside's own diagnostics in `<state>/logs/`, never on the terminal.
fn init_tracing(state: &Path) -> Option<tracing_appender::non_blocking::WorkerGuard> {
    use tracing_subscriber::EnvFilter;
    let dir = state.join("logs");
    std::fs::create_dir_all(&dir).ok()?;
    let appender = tracing_appender::rolling::Builder::new()
        .rotation(tracing_appender::rolling::Rotation::DAILY)
        .filename_prefix("trackside.log")
        .max_log_files(14)
        .build(&dir)
        .ok()?;
    // The default queue holds 128,000 lines, allocated up front (4 MB and
    // 2 ms at every start); trackside logs a few lines a run.
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(1024)
        .finish(appender);
    let filter = EnvFilter::try_from_env("TRACKSIDE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(false)
        .try_init()
        .ok()?;
    Some(guard)
}

/// `.gitlab-ci.yml` or `trackside.yml` of the current directory, else of
/// its git work tree root.
fn default_pipeline_file() -> Result<PathBuf, Fail> {
    let names = [".gitlab-ci.yml", "trackside.yml"];
    let here = std::env::current_dir().map_err(|e| Fail(format!("cannot read the current directory: {e}"), 2))?;
    // Git is asked only when the current folder has neither.
    let root = || trackside::exec::git::root(&here);
    for dir in std::iter::once(Some(here.clone()))
        .chain(std::iter::once_with(root))
        .flatten()
    {
        for name in names {
            let f = dir.join(name);
            if f.is_file() {
                return Ok(f);
            }
        }
    }
    Err(Fail(
        format!(
            "no pipeline file given, and neither .gitlab-ci.yml nor trackside.yml is in {} or its git work tree root; name one: trackside run FILE",
            here.display()
        ),
        2,
    ))
}

/// The dialect `file` is read in: `--dialect`, else what the file says.
fn dialect_of(v: &VarArgs, file: &Path) -> pipeline::Dialect {
    match v.dialect {
        Some(DialectArg::Native) => pipeline::Dialect::Native,
        Some(DialectArg::Gitlab) => pipeline::Dialect::Gitlab,
        Some(DialectArg::Github) => pipeline::Dialect::Github,
        None => pipeline::Dialect::of_file(file),
    }
}

/// The secrets, the options a pipeline is read with, and (for a GitLab
/// file) what git said about its project.
type Loading = (Vec<(String, String)>, LoadOptions, Option<trackside::exec::git::Facts>);

/// `--executor`, else `executor:` of config.yml, else auto.
fn executor_arg(v: &VarArgs, state: &Path) -> Result<ExecutorArg, Fail> {
    if let Some(e) = v.executor {
        return Ok(e);
    }
    let cfg = store::gc::swarm_config(state).map_err(|e| Fail(e.to_string(), 2))?;
    Ok(match cfg.executor.as_deref() {
        Some("shell") => ExecutorArg::Shell,
        Some("docker") => ExecutorArg::Docker,
        Some("swarm") => ExecutorArg::Swarm,
        _ => ExecutorArg::Auto,
    })
}

/// Refuses, before any job starts, a pipeline with jobs the swarm executor
/// does not run yet (docs/swarm.md, "Limits"), naming them.
fn swarm_can_run(p: &pipeline::model::Pipeline) -> Result<(), Fail> {
    let mut refused = Vec::new();
    for j in &p.jobs {
        let on_host = j.steps.iter().any(|s| s.image.is_none());
        let what = if j.container.job_container {
            Some("a job container (`container:` or --platform)")
        } else if !j.services.is_empty() && on_host {
            // Its services would be on the cluster's network, its steps here.
            Some("`services:` while its steps run on this machine (a step without an `image:`)")
        } else if j.steps.iter().any(|s| s.docker_action.is_some()) {
            Some("a Docker action")
        } else {
            None
        };
        if let Some(w) = what {
            refused.push(format!("job `{}` uses {w}", j.name));
        }
        for s in &j.services {
            use trackside::exec::swarm::{Workload, unsupported};
            if let Some(w) = unsupported(&s.options, Workload::Service) {
                refused.push(format!(
                    "job `{}`, service `{}`: {w} cannot be honoured",
                    j.name, s.name
                ));
            }
        }
    }
    if refused.is_empty() {
        return Ok(());
    }
    Err(Fail(
        format!(
            "the swarm executor does not run these yet (docs/swarm.md, \"Limits\"): {}; run this pipeline with --executor docker",
            refused.join("; ")
        ),
        2,
    ))
}

/// Connects the swarm executor: flags first, then `swarm:` of config.yml,
/// then DOCKER_HOST for the manager.
async fn connect_swarm(v: &VarArgs, state: &Path) -> Result<trackside::exec::swarm::SwarmExecutor, Fail> {
    use trackside::exec::swarm::{Settings, SwarmExecutor};
    let cfg = store::gc::swarm_config(state).map_err(|e| Fail(e.to_string(), 2))?;
    let d = Settings::default();
    let settings = Settings {
        registry: v.swarm_registry.clone().or(cfg.registry).unwrap_or_default(),
        pending_limit: cfg.pending_timeout.unwrap_or(d.pending_limit),
        max_ship: cfg.max_ship.unwrap_or(d.max_ship),
        max_return: cfg.max_return.unwrap_or(d.max_return),
    };
    if settings.registry.trim().is_empty() {
        return Err(Fail(trackside::exec::swarm::SwarmError::NoRegistry.to_string(), 2));
    }
    let manager = swarmcmd::manager(v.swarm_manager.clone(), state)?;
    SwarmExecutor::connect(&manager, settings)
        .await
        .map_err(|e| Fail(e.to_string(), 2))
}

fn load_options(v: &VarArgs, file: &Path, state: &Path) -> Result<Loading, Fail> {
    let actions_dir = v.actions_dir.clone().unwrap_or_else(|| state.join("actions"));
    store::actions::trusted(&actions_dir).map_err(|e| Fail(e.to_string(), 2))?;
    let mut secrets = Vec::new();
    for name in &v.secrets {
        match std::env::var(name) {
            Ok(val) if !val.is_empty() => secrets.push((name.clone(), val)),
            _ => {
                return Err(Fail(
                    format!(
                        "--secret {name}: the host has no variable `{name}`; export it, or use --secret-file {name}=PATH"
                    ),
                    2,
                ));
            }
        }
    }
    for (name, path) in &v.secret_files {
        let val = std::fs::read_to_string(path).map_err(|e| Fail(format!("--secret-file {name}={path}: {e}"), 2))?;
        let val = val.strip_suffix('\n').unwrap_or(&val).to_string();
        if val.is_empty() {
            return Err(Fail(format!("--secret-file {name}={path}: the file is empty"), 2));
        }
        secrets.push((name.clone(), val));
    }
    let mut host_env = Vec::new();
    for name in HOST_ALLOWLIST
        .iter()
        .copied()
        .chain(v.pass_env.iter().map(String::as_str))
    {
        if let Ok(val) = std::env::var(name) {
            host_env.push((name.to_string(), val));
        }
    }
    let opts = LoadOptions {
        cli_vars: v.vars.clone(),
        secret_names: secrets.iter().map(|(n, _)| n.clone()).collect(),
        host_env,
        // Read as `auto`: a swarm runs the jobs with an image, the host the rest.
        executor: match executor_arg(v, state)? {
            ExecutorArg::Auto | ExecutorArg::Swarm => ExecutorChoice::Auto,
            ExecutorArg::Shell => ExecutorChoice::Shell,
            ExecutorArg::Docker => ExecutorChoice::Docker,
        },
        ci_vars: Vec::new(),
        dialect: Some(dialect_of(v, file)),
        project_dir: None,
        include_projects: Vec::new(),
        inputs: v.inputs.clone(),
        context_vars: {
            let mut all = match &v.vars_file {
                Some(f) => read_vars_file(f)?,
                None => Vec::new(),
            };
            all.extend(v.context_vars.iter().cloned());
            all
        },
        actions_dir: Some(actions_dir),
        matrix_needs: Vec::new(),
        platforms: v.platforms.clone(),
        junit: v.junit.clone(),
        event_payload: match &v.event_payload {
            Some(f) => Some(read_event_payload(f)?),
            None => None,
        },
        changed_files: Default::default(),
        changes_since: None,
        project_vars: Vec::new(),
        project_file_vars: Vec::new(),
    };
    // A GitHub workflow's `github` context, from the repository (what git
    // said goes to the run too: it is not asked twice).
    let mut github_facts = None;
    let opts = if opts.dialect == Some(pipeline::Dialect::Github) {
        let dir = file
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let facts = trackside::exec::git::Facts::read(dir);
        let mut ci_vars = trackside::exec::git::github_variables(facts.as_ref());
        if let Some(event) = &v.event {
            ci_vars.push(("GITHUB_EVENT_NAME".into(), event.clone()));
        }
        // The files the push changes (its last commit and what is not
        // committed yet), or a pull request (since its base branch), for
        // `paths` filters: asked of git only if a workflow has them.
        let root = facts.as_ref().map(|f| f.root.clone());
        let base = opts
            .event_payload
            .as_ref()
            .and_then(|p| p.pointer("/pull_request/base/ref"))
            .and_then(|b| b.as_str())
            .map(str::to_string);
        let from = v.changes_from.clone();
        let changed_files = match root.clone() {
            Some(root) => pipeline::ChangedFiles::asked(move || {
                let refs: Vec<String> = match (&from, &base) {
                    (Some(r), _) => vec![r.clone()],
                    (None, Some(b)) => vec![format!("origin/{b}"), b.clone()],
                    (None, None) => vec!["HEAD~1".to_string()],
                };
                let first_push = from.is_none() && base.is_none();
                let found = refs.iter().find_map(|r| trackside::exec::git::changed_since(&root, r));
                // The repository's first commit: every file is new, as
                // GitHub counts a first push.
                found.or_else(|| {
                    if !first_push {
                        return None;
                    }
                    let files = trackside::exec::workspace::project_files(&root, &root.join(".git")).ok()?;
                    Some(files.iter().map(|f| f.to_string_lossy().into_owned()).collect())
                })
            }),
            None => pipeline::ChangedFiles::known(None),
        };
        github_facts = facts;
        LoadOptions {
            ci_vars,
            project_dir: root,
            changed_files,
            ..opts
        }
    } else {
        opts
    };
    // What GitLab's rules are decided against: only a GitLab file pays for
    // asking git.
    let opts = if opts.dialect == Some(pipeline::Dialect::Gitlab) {
        let dir = file
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let facts = trackside::exec::git::Facts::read(dir);
        let root = facts.as_ref().map_or_else(|| dir.to_path_buf(), |f| f.root.clone());
        let mut ci_vars = trackside::exec::git::gitlab_variables(facts.as_ref());
        // `--var CI_PIPELINE_SOURCE=merge_request_event` makes it a merge
        // request pipeline as GitLab creates one: no CI_COMMIT_BRANCH, and
        // the merge request's variables (this branch into the default one).
        let source = v
            .vars
            .iter()
            .rev()
            .find(|(k, _)| k == "CI_PIPELINE_SOURCE")
            .map(|(_, s)| s.as_str());
        if source == Some("merge_request_event") {
            let get = |k: &str| ci_vars.iter().find(|(n, _)| n == k).map(|(_, x)| x.clone());
            let branch = get("CI_COMMIT_BRANCH").unwrap_or_default();
            let target = get("CI_DEFAULT_BRANCH").unwrap_or_else(|| "main".into());
            let project = get("CI_PROJECT_PATH").unwrap_or_default();
            ci_vars.retain(|(k, _)| k != "CI_COMMIT_BRANCH");
            for (k, val) in [
                ("CI_MERGE_REQUEST_IID", "1".to_string()),
                ("CI_MERGE_REQUEST_ID", "1".to_string()),
                ("CI_MERGE_REQUEST_EVENT_TYPE", "detached".to_string()),
                ("CI_MERGE_REQUEST_SOURCE_BRANCH_NAME", branch),
                ("CI_MERGE_REQUEST_TARGET_BRANCH_NAME", target),
                ("CI_MERGE_REQUEST_PROJECT_PATH", project),
            ] {
                if !v.vars.iter().any(|(n, _)| n == k) {
                    ci_vars.push((k.to_string(), val));
                }
            }
        }
        let changed_files = match (&v.changes_from, &facts) {
            (Some(r), _) => pipeline::ChangedFiles::known(Some(
                trackside::exec::git::changed_since(&root, r).ok_or_else(|| {
                    Fail(
                        format!(
                            "--changes-from {r}: no such commit, branch or tag in {}",
                            root.display()
                        ),
                        2,
                    )
                })?,
            )),
            // Asked of git only if a rule looks at changes.
            (None, Some(f)) => {
                let (root, branch, default) = (f.root.clone(), f.branch.clone(), f.default_branch.clone());
                pipeline::ChangedFiles::asked(move || {
                    trackside::exec::git::changed_files(&root, branch.as_deref(), &default)
                })
            }
            (None, None) => pipeline::ChangedFiles::known(None),
        };
        let mut include_projects = Vec::new();
        for (project, path) in &v.include_projects {
            let dir =
                std::fs::canonicalize(path).map_err(|e| Fail(format!("--include-project {project}={path}: {e}"), 2))?;
            include_projects.push((project.clone(), dir));
        }
        // gitlab-ci-local's variable files stand for the project's settings.
        let remote = ci_vars
            .iter()
            .find(|(k, _)| k == "CI_SERVER_HOST")
            .zip(ci_vars.iter().find(|(k, _)| k == "CI_PROJECT_PATH"))
            .map(|((_, h), (_, p))| format!("{h}/{p}"));
        let home = directories::BaseDirs::new().map(|b| b.home_dir().to_path_buf());
        let local = pipeline::gitlab::localvars::read(&root, home.as_deref(), remote.as_deref())
            .map_err(|e| Fail(format!("{e}; fix the file or move it aside"), 2))?;
        for note in &local.notes {
            eprintln!("warning: {note}");
        }
        let opts = LoadOptions {
            ci_vars,
            project_vars: local.vars,
            project_file_vars: local.files,
            project_dir: Some(root),
            include_projects,
            changed_files,
            changes_since: Some(trackside::exec::git::changed_since),
            ..opts
        };
        (opts, facts)
    } else {
        (opts, github_facts)
    };
    Ok((secrets, opts.0, opts.1))
}

/// Approvals given in advance, then the start: a front-end passes this to
/// be awaited once it listens, so it misses nothing.
async fn begin_run(handle: &trackside::engine::EngineHandle, approvals: &[String]) -> Result<(), LinkError> {
    for job in approvals {
        handle.approve(job).await?;
    }
    handle.start().await?;
    Ok(())
}

/// `run --list`: a line per job, as gitlab-ci-local's `--list` prints them.
fn job_list(p: &pipeline::Pipeline) -> String {
    let width = p.jobs.iter().map(|j| j.name.chars().count()).max().unwrap_or(4).max(4);
    let stage_w = p
        .jobs
        .iter()
        .filter_map(|j| j.stage.as_deref())
        .map(|s| s.chars().count())
        .max()
        .unwrap_or(5)
        .max(5);
    let mut out = format!(
        "{:<width$}  {:<stage_w$}  {:<10}  {:<13}  needs\n",
        "name", "stage", "when", "allow_failure"
    );
    for j in &p.jobs {
        let needs = if j.depends_on.is_empty() {
            String::new()
        } else {
            format!("[{}]", j.depends_on.join(","))
        };
        out.push_str(&format!(
            "{:<width$}  {:<stage_w$}  {:<10}  {:<13}  {needs}\n",
            j.name,
            j.stage.as_deref().unwrap_or("-"),
            j.when.as_str(),
            j.allow_failure,
        ));
    }
    out
}

/// For each job of `selected` whose producers were left out of the run:
/// the latest run of this pipeline that recorded the producer's artifacts.
fn borrowed_artifacts(
    state: &Path,
    full: &pipeline::Pipeline,
    selected: &pipeline::Pipeline,
) -> Result<std::collections::BTreeMap<String, trackside::engine::artifacts::Borrowed>, Fail> {
    let kept: std::collections::HashSet<&str> = selected.jobs.iter().map(|j| j.name.as_str()).collect();
    let by_name: std::collections::HashMap<&str, &pipeline::Job> =
        full.jobs.iter().map(|j| (j.name.as_str(), j)).collect();
    // Producers left out that keep artifacts (the others have none to give).
    let mut wanted: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for j in &selected.jobs {
        if let Some(orig) = by_name.get(j.name.as_str()) {
            for p in trackside::engine::artifacts::producers(orig) {
                let Some(spec) = by_name.get(p.as_str()).and_then(|pj| pj.artifacts.as_ref()) else {
                    continue;
                };
                if !kept.contains(p.as_str()) {
                    wanted.entry(p).or_insert_with(|| spec.dotenv.clone());
                }
            }
        }
    }
    let mut out = std::collections::BTreeMap::new();
    if wanted.is_empty() {
        return Ok(out);
    }
    let index = store::index::Index::open(state).map_err(|e| Fail(e.to_string(), 1))?;
    let mut runs = store::list_runs(state).map_err(|e| Fail(e.to_string(), 1))?;
    runs.retain(|r| r.pipeline == full.name);
    runs.sort_by_key(|r| std::cmp::Reverse(r.started_ms));
    for (producer, dotenv) in wanted {
        let from = runs.iter().find_map(|r| {
            index
                .artifact(&r.run_id, &producer)
                .ok()
                .flatten()
                .map(|d| (r.run_id.clone(), d))
        });
        out.insert(producer, trackside::engine::artifacts::Borrowed { from, dotenv });
    }
    Ok(out)
}

fn color_stderr() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Loads a pipeline, printing diagnostics. `None` = invalid (already reported).
fn load(file: &Path, opts: &LoadOptions, format: OutputFormat) -> Result<Option<(pipeline::Pipeline, Report)>, Fail> {
    match pipeline::load(file, opts) {
        Ok((p, report)) => {
            if format == OutputFormat::Text && report.warnings().count() > 0 {
                eprint!("{}", report.render(color_stderr()));
            }
            Ok(Some((p, report)))
        }
        Err(report) => {
            match format {
                OutputFormat::Json => outln!("{}", report.to_json()),
                OutputFormat::Text => {
                    eprint!("{}", report.render(color_stderr()));
                    let n = report.error_count();
                    eprintln!(
                        "error: {} is invalid: {n} error{}",
                        file.display(),
                        if n == 1 { "" } else { "s" }
                    );
                }
            }
            Ok(None)
        }
    }
}

fn validate(file: &Path, v: &VarArgs, format: OutputFormat, state: &Path) -> Result<u8, Fail> {
    let (_, opts, _) = load_options(v, file, state)?;
    let Some((p, report)) = load(file, &opts, format)? else {
        return Ok(2);
    };
    let plan = Plan::build(&p).map_err(|_| Fail("the pipeline has a dependency cycle".into(), 2))?;
    // On a swarm: what its executor would refuse, said now.
    if executor_arg(v, state)? == ExecutorArg::Swarm {
        swarm_can_run(&p)?;
        let refused: Vec<String> = p
            .jobs
            .iter()
            .filter(|j| j.steps.iter().any(|s| s.image.is_some()))
            .filter_map(|j| {
                use trackside::exec::swarm::{Workload, unsupported};
                let what = unsupported(&j.container, Workload::Step)?;
                Some(format!(
                    "job `{}`: {what} cannot be honoured on the swarm executor",
                    j.name
                ))
            })
            .collect();
        if !refused.is_empty() {
            return Err(Fail(
                format!(
                    "{} (docs/swarm.md, \"Limits\"); leave it out or run with --executor docker",
                    refused.join("; ")
                ),
                2,
            ));
        }
    }
    match format {
        OutputFormat::Json => outln!("{}", report.to_json()),
        OutputFormat::Text => {
            let w = report.warnings().count();
            outln!(
                "{}: valid: pipeline `{}`, {} jobs in {} levels{}",
                file.display(),
                p.name,
                p.jobs.len(),
                plan.levels.len(),
                if w > 0 {
                    format!(", {w} warning(s)")
                } else {
                    String::new()
                }
            );
        }
    }
    Ok(0)
}

/// `trackside forecast FILE`: the run's finish from the history of its
/// past runs, before it starts.
fn forecast(file: &Path, v: &VarArgs, jobs: Option<u32>, format: OutputFormat, state: &Path) -> Result<u8, Fail> {
    use trackside::insight::forecast::{MAX_SAMPLES, Node, SIMULATIONS, State, forecast};
    let (_, opts, _) = load_options(v, file, state)?;
    let Some((p, _)) = load(file, &opts, format)? else {
        return Ok(2);
    };
    let plan = Plan::build(&p).map_err(|_| Fail("the pipeline has a dependency cycle".into(), 2))?;
    // As many as a run starts with under `-j auto`.
    let parallel = jobs.and_then(|j| usize::try_from(j).ok()).unwrap_or_else(|| {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        trackside::engine::parallelism::Controller::new(cores, 0).limit()
    });
    let key = trackside::store::history::pipeline_key(file);
    let index = trackside::store::index::Index::open(state)?;
    let history = index.recent_durations(&key, p.jobs.len(), MAX_SAMPLES)?;
    // The order a run starts ready jobs in: by past durations.
    let names: Vec<&str> = p.jobs.iter().map(|j| j.name.as_str()).collect();
    let priority = plan.priority_by_durations(&names, &history);
    let nodes: Vec<Node> = p
        .jobs
        .iter()
        .enumerate()
        .map(|(j, job)| Node {
            deps: plan.deps[j].clone(),
            state: if job.when == When::Manual {
                State::Held
            } else {
                State::Pending
            },
            history: history.get(&job.name).cloned().unwrap_or_default(),
            priority: priority[j],
        })
        .collect();
    let Some(f) = forecast(&nodes, parallel, 0.0, SIMULATIONS * 5, 1) else {
        match format {
            OutputFormat::Json => outln!("{}", serde_json::json!({"pipeline": p.name, "forecast": null})),
            OutputFormat::Text => outln!(
                "no history for `{}` yet: nothing to forecast from; each run adds to it (trackside run {})",
                p.name,
                file.display()
            ),
        }
        return Ok(0);
    };
    let typical = |h: &[f64]| {
        let mut v = h.to_vec();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).map(|d| d.round() as u64)
    };
    let runs = history.values().map(Vec::len).max().unwrap_or(0);
    match format {
        OutputFormat::Json => {
            let jobs: Vec<_> = p
                .jobs
                .iter()
                .zip(&nodes)
                .map(|(job, n)| {
                    serde_json::json!({
                        "job": job.name,
                        "runs": n.history.len(),
                        "median_ms": typical(&n.history),
                        "manual": n.state == State::Held,
                    })
                })
                .collect();
            outln!(
                "{}",
                serde_json::json!({
                    "pipeline": p.name,
                    "jobs_at_once": parallel,
                    "p50_ms": f.p50_ms,
                    "p90_ms": f.p90_ms,
                    "assumed_ms": f.assumed_ms,
                    "without_history": f.without_history.iter().map(|&j| p.jobs[j].name.clone()).collect::<Vec<_>>(),
                    "jobs": jobs,
                })
            );
        }
        OutputFormat::Text => {
            let clock = |ms: u64| {
                let s = (ms + 500) / 1000;
                format!("{}:{:02}", s / 60, s % 60)
            };
            outln!(
                "forecast for `{}`: {} jobs, {parallel} at once, from up to {runs} past runs",
                p.name,
                p.jobs.len()
            );
            outln!("finishes in {} (p50), {} (p90)", clock(f.p50_ms), clock(f.p90_ms));
            let w = p.jobs.iter().map(|j| j.name.chars().count()).max().unwrap_or(3).max(3);
            outln!("\n{:<w$}  {:>8}  {:>4}", "JOB", "TYPICAL", "RUNS");
            for (job, n) in p.jobs.iter().zip(&nodes) {
                let typical = typical(&n.history).map_or("-".to_string(), clock);
                let note = if n.state == State::Held {
                    "  manual: left out until approved"
                } else {
                    ""
                };
                outln!("{:<w$}  {typical:>8}  {:>4}{note}", job.name, n.history.len());
            }
            if !f.without_history.is_empty() {
                let names: Vec<&str> = f.without_history.iter().map(|&j| p.jobs[j].name.as_str()).collect();
                outln!(
                    "\nno history for {}: assumed {} each (the median of the others)",
                    names.join(", "),
                    clock(f.assumed_ms)
                );
            }
        }
    }
    Ok(0)
}

fn plan(file: &Path, v: &VarArgs, format: OutputFormat, state: &Path) -> Result<u8, Fail> {
    let (_, opts, _) = load_options(v, file, state)?;
    let Some((p, _)) = load(file, &opts, format)? else {
        return Ok(2);
    };
    let plan = Plan::build(&p).map_err(|_| Fail("the pipeline has a dependency cycle".into(), 2))?;
    let name = |i: &usize| p.jobs[*i].name.clone();
    match format {
        OutputFormat::Json => {
            let v = serde_json::json!({
                "pipeline": p.name,
                "jobs": p.jobs.len(),
                "levels": plan.levels.iter().map(|l| l.iter().map(name).collect::<Vec<_>>()).collect::<Vec<_>>(),
                "critical_path": plan.critical_path.iter().map(name).collect::<Vec<_>>(),
                "max_parallelism": plan.max_parallelism,
            });
            outln!("{v}");
        }
        OutputFormat::Text => {
            outln!(
                "pipeline `{}`: {} jobs in {} levels, max parallelism {}",
                p.name,
                p.jobs.len(),
                plan.levels.len(),
                plan.max_parallelism
            );
            for (i, level) in plan.levels.iter().enumerate() {
                let jobs: Vec<String> = level
                    .iter()
                    .map(|j| {
                        let job = &p.jobs[*j];
                        match job.when {
                            When::Manual => format!("{} (manual)", job.name),
                            When::OnFailure => format!("{} (on failure)", job.name),
                            When::Always => format!("{} (always)", job.name),
                            When::OnSuccess => job.name.clone(),
                        }
                    })
                    .collect();
                outln!("  level {i}: {}", jobs.join(", "));
            }
            outln!(
                "critical path ({} jobs): {}",
                plan.critical_path.len(),
                plan.critical_path.iter().map(name).collect::<Vec<_>>().join(" -> ")
            );
        }
    }
    Ok(0)
}

/// Past runs, newest first, filtered.
fn runs(
    state: &Path,
    format: OutputFormat,
    limit: Option<usize>,
    pipeline: Option<&str>,
    result: Option<&str>,
) -> Result<u8, Fail> {
    const RESULTS: [&str; 6] = ["passed", "failed", "blocked", "cancelled", "running", "crashed"];
    if let Some(r) = result
        && !RESULTS.contains(&r)
    {
        return Err(Fail(format!("--result {r}: give one of {}", RESULTS.join(", ")), 2));
    }
    let result_of = |r: &store::RunListing| match r.result {
        Some(res) => format!("{res:?}").to_lowercase(),
        None if r.crashed => "crashed".into(),
        None => "running".into(),
    };
    let mut list = store::list_runs(state)?;
    list.reverse();
    list.retain(|r| pipeline.is_none_or(|p| r.pipeline == p) && result.is_none_or(|want| result_of(r) == want));
    list.truncate(limit.unwrap_or(usize::MAX));
    if format == OutputFormat::Json {
        outln!("{}", serde_json::to_string(&list)?);
        return Ok(0);
    }
    if list.is_empty() {
        if pipeline.is_some() || result.is_some() {
            outln!("no run in {} matches", state.display());
        } else {
            outln!("no runs yet in {}", state.display());
        }
        return Ok(0);
    }
    outln!(
        "{:<20}  {:<24}  {:<20}  {:>9}  RESULT",
        "RUN",
        "PIPELINE",
        "STARTED (UTC)",
        "DURATION"
    );
    for r in list {
        let started = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(r.started_ms)).to_string();
        let mut result = result_of(&r);
        if result == "running" && trackside::attach::is_live(&store::runs_dir(state).join(&r.run_id)) {
            result.push_str(" (trackside attach)");
        }
        if result == "crashed" {
            result.push_str(" (trackside resume)");
        }
        outln!(
            "{:<20}  {:<24}  {:<20}  {:>9}  {}",
            r.run_id,
            r.pipeline,
            started.trim_end_matches('Z').replace('T', " "),
            r.duration_ms.map_or("-".into(), headless::seconds),
            result
        );
    }
    Ok(0)
}

fn logs(state: &Path, run: &str, job: &str, attempt: Option<u32>, timestamps: bool) -> Result<u8, Fail> {
    let dir = store::find_run(state, run)?;
    let (n, entries) = store::read_log(&dir, job, attempt)?;
    let attempts = store::log_attempts(&dir, job);
    if attempts.len() > 1 {
        eprintln!("(attempt {n} of {}; --attempt N for another)", attempts.len());
    }
    let mut out = String::new();
    for e in &entries {
        out.push_str(&log_text(e, timestamps));
    }
    out!("{out}");
    Ok(0)
}

/// A log line as `trackside logs` prints it (with its newline).
fn log_text(e: &store::LogEntry, timestamps: bool) -> String {
    let ts = if timestamps {
        let t = humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(e.ts_ms));
        format!("{t} ")
    } else {
        String::new()
    };
    if e.stream == "step" {
        format!("{ts}--- step: {} ---\n", e.step)
    } else {
        format!("{ts}{}\n", e.text)
    }
}

fn demo_service(port: u16, version: String, error_rate: f64, latency_ms: u64) -> Result<u8, Fail> {
    if !(0.0..=1.0).contains(&error_rate) {
        return Err(Fail(format!("--error-rate {error_rate}: give a share from 0 to 1"), 2));
    }
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .map_err(|e| Fail(format!("cannot listen on port {port}: {e}"), 2))?;
        let addr = listener.local_addr()?;
        outln!("demo-service {version} listening on http://{addr}");
        let stop = tokio_util::sync::CancellationToken::new();
        let service = trackside::deploy::demo::DemoService {
            version,
            error_rate,
            latency: Duration::from_millis(latency_ms),
        };
        let serve = tokio::spawn(service.serve(listener, stop.clone()));
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        stop.cancel();
        let _ = serve.await;
        Ok(0)
    })
}

/// `trackside rollout SERVICE ACTION`: one request to the trackside
/// running the rollout (see `trackside::control`).
/// `trackside doctor`: the preflight checks on their own.
fn doctor(file: Option<PathBuf>, v: &VarArgs, state: &Path) -> Result<u8, Fail> {
    use trackside::pipeline::model::Preflight;
    let mut checks = config_preflight(state)?;
    let mut project = std::env::current_dir().map_err(|e| Fail(format!("the current directory: {e}"), 2))?;
    // Container jobs on a swarm: its manager (and registry) are checked, not this machine's daemon.
    let mut on_swarm = false;
    if let Some(file) = &file {
        let (_, opts, _) = load_options(v, file, state)?;
        let Some((p, _)) = load(file, &opts, OutputFormat::Text)? else {
            return Ok(2);
        };
        project = opts.project_dir.clone().unwrap_or_else(|| {
            file.parent()
                .filter(|p| !p.as_os_str().is_empty())
                .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
        });
        checks.extend(p.preflight.iter().cloned());
        let containers = p
            .jobs
            .iter()
            .any(|j| !j.services.is_empty() || j.steps.iter().any(|s| s.image.is_some() || s.docker_action.is_some()));
        on_swarm = containers && executor_arg(v, state)? == ExecutorArg::Swarm;
        if containers && !on_swarm && !checks.contains(&Preflight::Docker) {
            checks.push(Preflight::Docker);
        }
    }
    // The state directory keeps room for artifacts (`artifacts.min_free`).
    let min_free = store::gc::artifact_limits(state)
        .map_err(|e| Fail(e.to_string(), 2))?
        .min_free;
    checks.insert(
        0,
        Preflight::DiskFree {
            path: state.display().to_string(),
            min: min_free,
            min_text: trackside::exec::preflight::gib(min_free),
        },
    );
    let rt = tokio::runtime::Runtime::new().map_err(|e| Fail(format!("cannot start: {e}"), 2))?;
    let found = rt.block_on(trackside::exec::preflight::run(&checks, &project));
    for o in &found {
        outln!("{} {}", if o.ok { "ok  " } else { "FAIL" }, o.line());
    }
    let mut failed = found.iter().filter(|o| !o.ok).count();
    let mut count = found.len();
    if on_swarm {
        count += 1;
        let swarm = rt.block_on(async {
            let s = connect_swarm(v, state).await?;
            let nodes = s.nodes().await.map_err(|e| Fail(e.to_string(), 1))?;
            Ok::<_, Fail>((s.address().to_string(), nodes))
        });
        match swarm {
            Ok((address, nodes)) => {
                let usable = nodes.iter().filter(|n| n.ready && n.active).count();
                let ok = usable > 0;
                failed += usize::from(!ok);
                outln!(
                    "{} swarm: the manager at {address} answers; {usable} of {} node(s) ready and active",
                    if ok { "ok  " } else { "FAIL" },
                    nodes.len()
                );
            }
            Err(Fail(e, _)) => {
                failed += 1;
                outln!("FAIL swarm: {e}");
            }
        }
    }
    if failed > 0 {
        outln!("{failed} of {count} check(s) failed");
        return Ok(1);
    }
    outln!("all {count} check(s) passed");
    Ok(0)
}

/// The `preflight:` of `<state>/config.yml` (none without the file).
fn config_preflight(state: &Path) -> Result<Vec<trackside::pipeline::model::Preflight>, Fail> {
    let path = state.join("config.yml");
    match std::fs::read_to_string(&path) {
        Ok(text) => trackside::pipeline::native::config_preflight(&path, text).map_err(|r| Fail(r.render(false), 2)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(Fail(format!("cannot read {}: {e}", path.display()), 2)),
    }
}

fn rollout(state: &Path, service: &str, action: RolloutAction, full: bool, json: bool) -> Result<u8, Fail> {
    use trackside::control::{Request, call};
    use trackside::deploy::rollout::Command;
    if full && action != RolloutAction::Promote {
        return Err(Fail(
            "--full goes with promote: `trackside rollout SERVICE promote --full`".into(),
            2,
        ));
    }
    let command = match action {
        RolloutAction::Status => None,
        RolloutAction::Promote if full => Some(Command::PromoteFull),
        RolloutAction::Promote => Some(Command::Promote),
        RolloutAction::Abort => Some(Command::Abort),
        RolloutAction::Rollback => Some(Command::Rollback),
        RolloutAction::Pause => Some(Command::Pause),
        RolloutAction::Resume => Some(Command::Resume),
        RolloutAction::Retry => Some(Command::Retry),
    };
    let req = match command {
        None => Request::Status,
        Some(command) => Request::Steer {
            command,
            by: trackside::deploy::rollout::who(),
        },
    };
    let reply = call(state, service, &req).map_err(|e| Fail(e, 1))?;
    if json {
        let text = serde_json::to_string(&reply).map_err(|e| Fail(e.to_string(), 1))?;
        outln!("{text}");
    } else {
        outln!("{}", reply.message);
        for d in &reply.decisions {
            outln!("  {d}");
        }
        if let Some(s) = reply.status.as_ref().filter(|_| command.is_some()) {
            outln!("now: {}", s.summary());
        }
    }
    Ok(if reply.ok { 0 } else { 1 })
}

fn shell(state: &Path, run: &str, job: &str, attempt: Option<u32>) -> Result<u8, Fail> {
    let dir = store::find_run(state, run)?;
    let rt = tokio::runtime::Runtime::new()?;
    let (mut cmd, what) = rt.block_on(async {
        let docker = DockerExecutor::connect().await.map_err(|e| Fail(e.to_string(), 2))?;
        trackside::exec::docker::debug_shell(&docker, &dir, job, attempt)
            .await
            .map_err(|e| Fail(e, 2))
    })?;
    eprintln!("trackside: opening a shell in {what}; `exit` leaves it");
    let status = cmd.status().map_err(|e| {
        Fail(
            format!(
                "cannot run the docker CLI ({e}); the interactive shell needs it (Debian: apt-get install docker.io)"
            ),
            2,
        )
    })?;
    Ok(u8::try_from(status.code().unwrap_or(1)).unwrap_or(1))
}

fn show(state: &Path, run: &str, format: OutputFormat) -> Result<u8, Fail> {
    let dir = store::find_run(state, run)?;
    match store::read_summary(&dir)? {
        Some(s) => {
            match format {
                OutputFormat::Json => outln!("{}", serde_json::to_string_pretty(&s)?),
                OutputFormat::Text => outln!("{}", headless::summary_table(&s)),
            }
            Ok(0)
        }
        None => Err(Fail(
            format!(
                "run {} has no result: {}; its events are in {}",
                dir.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                store::unfinished_story(&dir),
                dir.join("events.jsonl").display()
            ),
            1,
        )),
    }
}
