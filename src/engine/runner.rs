//! One attempt of one job: workspace, environment, steps in order.
//!
//! The runner turns a job definition into executor calls: it resolves the
//! environment per step (precedence: --var, secrets, step, job, global,
//! predefined, host allowlist), interpolates `${{ }}`, applies step and job
//! deadlines, step retries, `continue_on_failure` and cleanup steps, classifies failures,
//! and reports everything to the actor as messages. It holds no run state.

use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::exec::{OutputLine, StepEnd, StepSpec, Stream, workspace};
use crate::pipeline::expr::{self, Context};

use super::filecmd;
use crate::pipeline::vars::Scope;
use crate::pipeline::{FailureClass, Job};

use super::artifacts;
use super::attempt::note;
pub use super::attempt::{Attempt, RunContext, RunnerMsg};
use super::failure::{classify, ending};
use super::state::Outcome;
use crate::insight::knowledge::{KnowledgeBase, Scan};
use crate::protocol::Diagnosis;

struct StepCtx<'a> {
    env: &'a BTreeMap<String, String>,
    vars: &'a BTreeMap<String, String>,
    statuses: &'a HashMap<String, String>,
    /// A GitHub job's `steps` context (its strings compare ignoring case).
    steps: Option<&'a serde_json::Value>,
    /// A GitHub job's `secrets` context.
    secrets: Option<&'a serde_json::Value>,
    /// A GitHub job's `needs` context.
    needs: Option<&'a serde_json::Value>,
    /// Inside a composite action: its `inputs`.
    inputs: Option<&'a serde_json::Value>,
    /// GitHub's `github.workspace` and `github.action_path`: the paths only
    /// the run knows (the rest of `github` was evaluated as it was read).
    paths: Option<&'a serde_json::Value>,
    /// The job's workspace, for `hashFiles()`, and the state folder it
    /// leaves out.
    files: Option<(&'a Path, &'a Path)>,
    /// How the job's earlier steps went, for the status functions.
    failed: bool,
    cancelled: bool,
}

impl Context for StepCtx<'_> {
    fn root_ref(&self, name: &str) -> Option<&serde_json::Value> {
        match name {
            "steps" => self.steps,
            "secrets" => self.secrets,
            "needs" => self.needs,
            "inputs" => self.inputs,
            "github" => self.paths.and_then(|p| p.get("github")),
            "runner" => self.paths.and_then(|p| p.get("runner")),
            _ => None,
        }
    }
    fn root(&self, name: &str) -> Option<serde_json::Value> {
        match name {
            // GitHub's `job`: how the job goes so far, its container and
            // services.
            "job" if self.steps.is_some() => Some(serde_json::json!({
                "status": match (self.cancelled, self.failed) {
                    (true, _) => "cancelled",
                    (_, true) => "failure",
                    _ => "success",
                },
                "container": self.paths.and_then(|p| p.get("container")).cloned().unwrap_or_else(|| serde_json::json!({"id": "", "network": ""})),
                "services": self.paths.and_then(|p| p.get("services")).cloned().unwrap_or_else(|| serde_json::json!({})),
            })),
            _ => self.root_ref(name).cloned(),
        }
    }
    fn ignore_case(&self) -> bool {
        self.steps.is_some()
    }
    fn env(&self, name: &str) -> Option<String> {
        self.env.get(name).cloned()
    }
    fn var(&self, name: &str) -> Option<String> {
        self.vars.get(name).cloned()
    }
    fn job_status(&self, job: &str) -> Option<String> {
        self.statuses.get(job).cloned()
    }
    fn upstream_succeeded(&self) -> bool {
        !self.failed && !self.cancelled
    }
    fn upstream_failed(&self) -> bool {
        self.failed
    }
    fn cancelled(&self) -> bool {
        self.cancelled
    }
    fn hash_files(&self, patterns: &[String]) -> Result<String, expr::HashFilesError> {
        let Some((ws, state)) = self.files else {
            return Err(expr::HashFilesError::NoWorkspace);
        };
        let files = crate::exec::workspace::project_files(ws, state).map_err(|source| expr::HashFilesError::List {
            dir: ws.to_path_buf(),
            source,
        })?;
        crate::store::cache::hash_files(ws, &files, patterns).map_err(|e| expr::HashFilesError::Files(Box::new(e)))
    }
}

/// Runs the attempt and reports `AttemptDone` last, whatever happens.
pub async fn run_attempt(ctx: Arc<RunContext>, mut a: Attempt) {
    let job = &ctx.pipeline.jobs[a.job];
    let mut leftovers = Leftovers::default();
    let (outcome, cache_key) = if job.matrix_later {
        // Its matrix is made before it could start; a job standing for one
        // that starts anyway (run alone, say) has nothing to run.
        let msg = "its matrix is made from the jobs it needs, and they have not all run".to_string();
        note(&a, &Arc::from(job.name.as_str()), msg.clone()).await;
        (
            Outcome {
                message: Some(msg),
                ..Outcome::failed(None, FailureClass::Script)
            },
            None,
        )
    } else if let Some(spec) = &job.deploy {
        // Boxed: a rollout's future is twice the size of a job's, and a
        // thousand jobs at once each held room for one.
        (Box::pin(deploy_attempt(&ctx, &mut a, job, spec)).await, None)
    } else if job.cache.is_some() {
        match artifacts::lookup(&ctx, &a, job).await {
            Ok(cached) => (cached, None),
            Err(key) => (attempt_outcome(&ctx, &a, &mut leftovers).await, key),
        }
    } else {
        (attempt_outcome(&ctx, &a, &mut leftovers).await, None)
    };
    let (telling, told) = {
        let t = a.telling.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        (t.line(), t.diagnosis.clone())
    };
    let mut outcome = outcome;
    // A failure is diagnosed here and its class again by the engine: the
    // rules, compiled only once something fails, on a blocking thread.
    if outcome.failure.is_some() {
        wait_for_rules().await;
    }
    outcome.diagnosis = outcome
        .failure
        .and_then(|class| diagnose(class, told, &outcome))
        .map(Box::new);
    let _ =
        a.tx.send(RunnerMsg::AttemptDone {
            job: a.job,
            attempt: a.attempt,
            outcome: Box::new(outcome),
            cache_key,
            telling,
            peak_memory: a.usage.bytes(),
            cpu_ms: a.usage.cpu_ms(),
        })
        .await;
    // Off the path to the next job: the actor has the result already, and
    // waits for this before the run ends.
    leftovers.remove(&ctx, job, a.attempt).await;
}

/// Why an attempt that failed with `class` failed: what its failing step
/// told (`told`) when that explains this class, else what the knowledge
/// base makes of the attempt's reason (a service never ready, a workspace
/// that could not be made) and how it ended.
fn diagnose(class: FailureClass, told: Option<Diagnosis>, outcome: &Outcome) -> Option<Diagnosis> {
    if let Some(d) = told.filter(|d| d.class == class) {
        return Some(d);
    }
    KnowledgeBase::builtin().for_class(class, outcome.exit_code, outcome.message.as_deref().unwrap_or(""))
}

/// Makes the attempt's (empty) log file here, beside the run, so that the
/// engine, which writes its lines, only opens it: making a file (an inode)
/// can take a millisecond on a busy file system, and the engine serves
/// every job. A failure here is the engine's to report when it opens it.
fn create_log(path: &Path) {
    let _ = crate::store::open_appending(path);
}

/// What an attempt leaves to remove once its result is reported.
#[derive(Default)]
struct Leftovers {
    workspace: Option<PathBuf>,
    step_files: bool,
    /// The attempt's file variables' folder.
    files: Option<PathBuf>,
    /// A GitHub job's `RUNNER_TEMP`, emptied (as GitHub's runner empties
    /// it) and kept for a next job.
    temp: Option<PathBuf>,
}

impl Leftovers {
    async fn remove(self, ctx: &Arc<RunContext>, job: &Job, attempt: u32) {
        if self.step_files {
            remove_step_files(ctx, job, attempt);
        }
        if self.workspace.is_none() && self.files.is_none() && self.temp.is_none() {
            return;
        }
        let c = ctx.clone();
        // A job's `RUNNER_TEMP` may hold anything (a toolchain an action
        // unpacked): emptying it is the blocking pool's work unless it is
        // empty already.
        let empty = |t: &Path| std::fs::read_dir(t).is_ok_and(|mut d| d.next().is_none());
        let small = small_project(ctx) && self.temp.as_deref().is_none_or(empty);
        let _ = fs_work(small, move || {
            if let Some(ws) = self.workspace {
                // The run's `.git` links stay; a container job's clone goes.
                let extra = |rel: &Path| {
                    rel == Path::new(".git")
                        && c.git_repo
                            .as_ref()
                            .is_some_and(|repo| crate::exec::git::linked(&ws, repo))
                };
                c.spares.give(&c.files, &ws, &extra);
            }
            if let Some(dir) = self.files {
                let _ = std::fs::remove_dir_all(dir);
            }
            if let Some(dir) = self.temp {
                c.empty_folders.give(&dir);
            }
        })
        .await;
    }
}

/// Projects of at most this many files have their workspace made and
/// given back on the async thread itself: a handful of system calls, less
/// than a trip to the blocking pool and back (two thread wake-ups a way).
const SMALL_PROJECT: usize = 16;

fn small_project(ctx: &RunContext) -> bool {
    ctx.files.len() <= SMALL_PROJECT
}

/// Runs `f`, file-system work, here when it is `small`, else on the
/// blocking pool; `None` if it panicked there.
async fn fs_work<T: Send + 'static>(small: bool, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    if small {
        Some(f())
    } else {
        tokio::task::spawn_blocking(f).await.ok()
    }
}

/// A deploy job: the rollout's log lines and status go to the actor as
/// they come; its steering commands come from the actor.
async fn deploy_attempt(
    ctx: &Arc<RunContext>,
    a: &mut Attempt,
    job: &Job,
    spec: &crate::pipeline::model::Deploy,
) -> Outcome {
    use crate::deploy::rollout;
    let step: Arc<str> = Arc::from("deploy");
    let scope = ctx.scope(job, &[], ctx.predefined(job, a.attempt, "deploy", &ctx.project_dir));
    let env = match scope.resolve_all() {
        Ok(env) => env.into_iter().collect(),
        Err((name, e)) => return Outcome::infra(format!("variable `{name}`: {e}")),
    };
    // `version` and `run` may use variables; `${PORT}` is the replica's own.
    let expand = |field: &str, text: &str| {
        scope
            .expand(&text.replace("${PORT}", "\u{0}PORT\u{0}"))
            .map(|t| t.replace("\u{0}PORT\u{0}", "${PORT}"))
            .map_err(|e| Outcome::infra(format!("deploy.{field}: {e}")))
    };
    let mut spec = spec.clone();
    use crate::pipeline::model::Target;
    match expand("version", &spec.version) {
        Ok(v) => spec.version = v,
        Err(o) => return o,
    }
    match &mut spec.target {
        Target::Process { run } => match expand("run", run) {
            Ok(r) => *run = r,
            Err(o) => return o,
        },
        Target::Container { image, .. } => match expand("image", image) {
            Ok(i) => *image = i,
            Err(o) => return o,
        },
    }
    let spec = &spec;
    let (log_tx, mut log_rx) = mpsc::channel::<String>(256);
    let (status_tx, mut status_rx) = mpsc::channel::<rollout::Status>(4);
    let (audit_tx, mut audit_rx) = mpsc::channel::<(String, Option<String>)>(64);
    let control = a.control.take().unwrap_or_else(|| mpsc::channel(1).1);
    let io = rollout::Io {
        state_dir: ctx.state_dir.clone(),
        workdir: ctx.project_dir.clone(),
        log: log_tx,
        status: status_tx,
        control,
        audit: audit_tx,
        cancel: a.cancel.clone(),
        env,
        program: ctx.program.clone(),
        service_group: ctx.group.clone(),
        pipeline_metrics: Some({
            let index = ctx.index.clone();
            std::sync::Arc::new(move || {
                super::history::prometheus(&index, None)
                    .unwrap_or_else(|e| format!("# trackside could not read the pipeline's history: {e}\n"))
            })
        }),
    };
    let (job_id, attempt, tx) = (a.job, a.attempt, a.tx.clone());
    // Where the rollout ended tells a rollback from a deploy that failed to run.
    let mut last_phase = String::new();
    let forward = async {
        loop {
            tokio::select! {
                Some(line) = log_rx.recv() => {
                    let _ = tx
                        .send(RunnerMsg::Log { job: job_id, attempt, step: step.clone(), stream: Stream::Stdout, text: line, partial: false })
                        .await;
                }
                Some((text, by)) = audit_rx.recv() => {
                    let _ = tx.send(RunnerMsg::RolloutDecision { job: job_id, text, by }).await;
                }
                Some(status) = status_rx.recv() => {
                    last_phase.clone_from(&status.phase);
                    let _ = tx.send(RunnerMsg::Rollout { job: job_id, status: Box::new(status) }).await;
                }
                else => break,
            }
        }
    };
    let (result, ()) = tokio::join!(rollout::run(spec, io), forward);
    match result {
        Ok(msg) => Outcome {
            message: Some(msg),
            ..Outcome::success()
        },
        Err(msg) => {
            // The new revision was rolled back or aborted (the old one kept
            // serving): its own class, not a script failure.
            let class = if matches!(last_phase.as_str(), "aborted" | "rolled_back" | "degraded") {
                FailureClass::RolledBack
            } else {
                FailureClass::Script
            };
            Outcome {
                message: Some(msg),
                ..Outcome::failed(None, class)
            }
        }
    }
}

async fn attempt_outcome(ctx: &Arc<RunContext>, a: &Attempt, leftovers: &mut Leftovers) -> Outcome {
    let job = &ctx.pipeline.jobs[a.job];
    // A timeout too long for the clock is no deadline at all.
    let far = Duration::from_secs(100 * 365 * 24 * 3600);
    let deadline = Instant::now()
        .checked_add(job.timeout)
        .unwrap_or_else(|| Instant::now() + far);
    let ws = ctx.workspace(job, a.attempt);
    let setup: Arc<str> = Arc::from("setup");
    let log = crate::store::log_path(&ctx.run_dir, &job.name, a.attempt);
    if ctx.in_place {
        create_log(&log);
    } else {
        let (c, dest) = (ctx.clone(), ws.clone());
        let in_container = ctx.containers && job.image().is_some();
        // A container job's own clone of the repository is git's work.
        let small = small_project(ctx) && !(in_container && ctx.git_repo.is_some());
        let copied = fs_work(small, move || {
            create_log(&log);
            let _ = std::fs::remove_dir_all(&dest);
            // An ended job's workspace, already made fresh, else a copy.
            // A spare keeps its `.git` only while it is the run's.
            let extra = |rel: &Path| {
                rel == Path::new(".git")
                    && !in_container
                    && c.git_repo
                        .as_ref()
                        .is_some_and(|repo| crate::exec::git::linked(&dest, repo))
            };
            if !c.spares.take(&c.project_dir, &c.files, &dest, &extra) {
                workspace::copy_files(&c.project_dir, &c.files, &dest)?;
            }
            // A GitLab job sees a git repository, as a runner's checkout.
            if let Some(repo) = &c.git_repo {
                let dot_git = dest.join(".git");
                if in_container {
                    // Its own clone: the shared links name host paths.
                    crate::exec::git::own_repository(&c.project_dir, &dest)?;
                } else if !dot_git.exists() {
                    crate::exec::git::link_git(&dest, repo)?;
                }
            }
            Ok::<(), std::io::Error>(())
        })
        .await;
        let err = match copied {
            Some(Ok(())) => None,
            Some(Err(e)) => Some(e.to_string()),
            None => Some("the task making it panicked".to_string()),
        };
        if let Some(e) = err {
            let msg = format!("cannot prepare the workspace {}: {e}", ws.display());
            note(a, &setup, msg.clone()).await;
            return Outcome::infra(msg);
        }
    }
    let services = if job.services.is_empty() || !ctx.containers {
        crate::exec::Services::default()
    } else {
        match until_stopped(a, deadline, "starting its services", start_services(ctx, a, job)).await {
            Ok(Ok(s)) => s,
            stopped => {
                let outcome = match stopped {
                    Ok(Err(msg)) => {
                        let setup: Arc<str> = Arc::from("services");
                        note(a, &setup, msg.clone()).await;
                        Outcome::infra(msg)
                    }
                    Err(o) => o,
                    Ok(Ok(_)) => Outcome::success(),
                };
                // The workspace goes as it would after a failed step; what
                // a stop left half made goes with the run.
                if !ctx.in_place && !ctx.keep_workspaces && !ctx.keep_failed {
                    leftovers.workspace = Some(ws);
                }
                return outcome;
            }
        }
    };
    let network = services.network.clone();
    // GitHub's `container:`: one container for the job's steps.
    let job_box = if job.container.job_container && ctx.containers {
        let started = until_stopped(
            a,
            deadline,
            "starting its container",
            start_job_box(ctx, a, job, &ws, network.clone()),
        )
        .await;
        match started {
            Ok(Ok(b)) => b,
            stopped => {
                let outcome = match stopped {
                    Ok(Err(msg)) => {
                        let setup: Arc<str> = Arc::from("container");
                        note(a, &setup, msg.clone()).await;
                        Outcome::infra(msg)
                    }
                    Err(o) => o,
                    Ok(Ok(_)) => Outcome::success(),
                };
                ctx.executor.stop_services(services).await;
                if !ctx.in_place && !ctx.keep_workspaces && !ctx.keep_failed {
                    leftovers.workspace = Some(ws);
                }
                return outcome;
            }
        }
    } else {
        None
    };
    // Docker actions built from their folder's Dockerfile, as GitHub's
    // runner builds them while it sets the job up.
    let built = until_stopped(
        a,
        deadline,
        "building its Docker actions",
        build_action_images(ctx, a, job, &ws),
    )
    .await;
    let action_images = match built {
        Ok(Ok(images)) => images,
        stopped => {
            let outcome = match stopped {
                Ok(Err(msg)) => Outcome::infra(msg),
                Err(o) => o,
                Ok(Ok(_)) => Outcome::success(),
            };
            if let Some(b) = job_box {
                ctx.executor.stop_job_box(b, false).await;
            }
            ctx.executor.stop_services(services).await;
            if !ctx.in_place && !ctx.keep_workspaces && !ctx.keep_failed {
                leftovers.workspace = Some(ws);
            }
            return outcome;
        }
    };
    let _ = a.docker.set(crate::engine::attempt::Containers {
        job_box: job_box.clone(),
        network: network.clone(),
        services: services.ports.clone(),
        action_images,
    });
    let prepared = match artifacts::restore(ctx, a, job, &ws).await {
        Err(o) => Err(o),
        Ok(dotenv) => {
            let _ = a.dotenv.set(dotenv);
            artifacts::pull_dir_caches(ctx, a, job, &ws)
                .await
                .map_err(|e| Outcome::infra(e.to_string()))
        }
    };
    let outcome = match prepared {
        Err(o) => o,
        Ok(dir_keys) => {
            let mut o = run_steps(ctx, a, job, &ws, deadline, network).await;
            if !job.junit.is_empty() {
                let report = record_tests(ctx, a, job, &ws).await;
                o.quarantined_tests = failed_in_quarantine(&o, &report);
            }
            let mut kept = artifacts::collect(ctx, a, job, &ws, o.failure.is_none()).await;
            if kept.is_ok() {
                let succeeded = o.failure.is_none();
                kept = artifacts::push_dir_caches(ctx, a, job, &ws, &dir_keys, succeeded).await;
            }
            if let Err((msg, class)) = kept
                && o.failure.is_none()
            {
                o = Outcome {
                    message: Some(msg),
                    ..Outcome::failed(None, class)
                };
            }
            o
        }
    };
    let kept_failed = ctx.keep_failed && outcome.failure.is_some();
    if let Some(b) = job_box {
        ctx.executor.stop_job_box(b, kept_failed).await;
    }
    ctx.executor.stop_services(services).await;
    // Only container steps leave files there (a host step's script is in memory).
    leftovers.step_files = ctx.containers && job.steps.iter().any(|s| s.image.is_some()) && !kept_failed;
    if !ctx.in_place && !ctx.keep_workspaces && !kept_failed {
        leftovers.workspace = Some(ws);
    }
    if !job.file_vars.is_empty() && !kept_failed {
        leftovers.files = Some(files_dir(ctx, job, a.attempt));
    } else if job.file_commands && on_host(job) && !ctx.keep_workspaces && !kept_failed {
        leftovers.temp = Some(files_dir(ctx, job, a.attempt));
    }
    outcome
}

/// Builds the images of the job's Docker actions that come from a
/// Dockerfile, each folder once; the build's output joins the job's log.
async fn build_action_images(
    ctx: &Arc<RunContext>,
    a: &Attempt,
    job: &Job,
    ws: &Path,
) -> Result<Vec<(usize, String)>, String> {
    let mut built: Vec<(usize, String)> = Vec::new();
    let mut by_folder: Vec<(PathBuf, String, String)> = Vec::new();
    for (index, step) in job.steps.iter().enumerate() {
        let Some(build) = step.docker_action.as_ref().and_then(|d| d.build.as_ref()) else {
            continue;
        };
        if !ctx.containers {
            return Err(format!(
                "step `{}` is a Docker action: it needs Docker (leave out `--executor shell`)",
                step.name
            ));
        }
        let dir = match Path::new(&build.dir) {
            d if d.is_absolute() => d.to_path_buf(),
            d => ws.join(d),
        };
        if let Some((_, _, tag)) = by_folder.iter().find(|(d, f, _)| *d == dir && *f == build.dockerfile) {
            built.push((index, tag.clone()));
            continue;
        }
        let setup: Arc<str> = Arc::from("build");
        note(
            a,
            &setup,
            format!("building the image of `{}` ({})", step.name, build.dockerfile),
        )
        .await;
        let (tx, forward) = log_as(a, setup);
        let req = crate::exec::ImageBuild {
            dir: dir.clone(),
            dockerfile: build.dockerfile.clone(),
        };
        let tag = ctx
            .executor
            .build_image(req, tx)
            .await
            .map_err(|e| format!("step `{}`: {e}", step.name))?;
        let _ = forward.await;
        by_folder.push((dir, build.dockerfile.clone(), tag.clone()));
        built.push((index, tag));
    }
    Ok(built)
}

/// The failed test cases of an attempt that failed with its own exit code
/// (not killed, timed out or unable to start), when every one of them is
/// in quarantine; else none.
fn failed_in_quarantine(o: &Outcome, report: &crate::protocol::TestReport) -> Vec<String> {
    use crate::pipeline::FailureClass as C;
    let own_exit = o.exit_code.is_some_and(|c| c != 0)
        && o.failure
            .is_some_and(|c| matches!(c, C::Script | C::Network | C::DiskFull));
    let failed: Vec<&crate::protocol::TestCaseView> = report.cases.iter().filter(|c| c.outcome == "failed").collect();
    // Every failed case is in the report's list (it shows failed ones first).
    if !own_exit || failed.is_empty() || failed.len() < report.failed || !failed.iter().all(|c| c.quarantined) {
        return Vec::new();
    }
    failed.iter().map(|c| c.name.clone()).collect()
}

/// Reads the job's JUnit reports and keeps their test cases in the store;
/// the log says how many passed and failed, and what could not be read;
/// the UI gets the report.
async fn record_tests(ctx: &Arc<RunContext>, a: &Attempt, job: &Job, ws: &Path) -> crate::protocol::TestReport {
    let (globs, root) = (job.junit.clone(), ws.to_path_buf());
    let read = tokio::task::spawn_blocking(move || super::junit::read_reports(&root, &globs)).await;
    let step: Arc<str> = Arc::from("tests");
    let (mut cases, problems) = match read {
        Ok(found) => found,
        Err(e) => (Vec::new(), vec![format!("reading the JUnit reports failed: {e}")]),
    };
    for p in problems {
        note(a, &step, p).await;
    }
    if cases.is_empty() {
        return crate::protocol::TestReport::default();
    }
    for c in &mut cases {
        c.run_id = ctx.run_id.clone();
        c.job = job.name.clone();
        c.attempt = a.attempt;
    }
    let count = |o: &str| cases.iter().filter(|c| c.outcome == o).count();
    let rerun = cases
        .iter()
        .filter(|c| c.outcome == "passed" && c.reruns_failed > 0)
        .count();
    let mut said = format!(
        "tests: {} passed, {} failed, {} skipped",
        count("passed"),
        count("failed"),
        count("skipped")
    );
    if rerun > 0 {
        said.push_str(&format!(" ({rerun} passed only on a rerun)"));
    }
    said.push_str(&format!("; `trackside tests {} {}` lists them", ctx.run_id, job.name));
    note(a, &step, said).await;
    let report = super::junit::report(&cases, &job.quarantined_tests);
    let _ =
        a.tx.send(RunnerMsg::Tests {
            job: a.job,
            attempt: a.attempt,
            report: Box::new(report.clone()),
        })
        .await;
    let index = ctx.index.clone();
    let kept = tokio::task::spawn_blocking(move || index.record_tests(&cases)).await;
    if let Ok(Err(e)) = kept {
        note(a, &step, format!("cannot keep the test cases: {e}")).await;
    }
    report
}

/// `setup` (services, a container, an image build) until it ends, or the
/// attempt is cancelled, or the job's time is up: those end the attempt
/// (as cancelled, or timed out) without waiting for it.
async fn until_stopped<T>(
    a: &Attempt,
    deadline: Instant,
    doing: &str,
    setup: impl std::future::Future<Output = T>,
) -> Result<T, Outcome> {
    tokio::select! {
        done = setup => Ok(done),
        () = a.cancel.cancelled() => Err(Outcome {
            message: Some(format!("cancelled while {doing}")),
            ..Outcome::failed(None, FailureClass::Cancelled)
        }),
        () = tokio::time::sleep_until(deadline) => Err(Outcome {
            message: Some(format!("the job's timeout passed while {doing}")),
            ..Outcome::failed(None, FailureClass::Timeout)
        }),
    }
}

/// A job-level GitHub text (a service's or the job container's `env`)
/// evaluated as the job starts: `secrets`, `needs`, `github`, `vars`.
/// The registry logins a job's pulls use: `credentials` (a GitHub job's
/// may read `secrets`) and the job's `DOCKER_AUTH_CONFIG` variable.
pub(super) fn pull_logins(
    ctx: &RunContext,
    a: &Attempt,
    job: &Job,
    credentials: Option<&crate::pipeline::model::Credentials>,
) -> Result<crate::exec::JobLogins, LoginError> {
    let late = |v: &String| match v.contains("${{") {
        true => job_expr(ctx, a, job, v).map_err(LoginError::Credentials),
        false => Ok(v.clone()),
    };
    let credentials = match credentials {
        Some(crate::pipeline::model::Credentials(user, password)) => Some((late(user)?, late(password)?)),
        None => None,
    };
    // GitLab Runner's convention; GitHub reads no such variable.
    let auth_config = match job.file_commands {
        true => None,
        false => ctx
            .scope(job, &[], Vec::new())
            .resolve("DOCKER_AUTH_CONFIG")
            .map_err(LoginError::AuthConfig)?
            .filter(|v| !v.trim().is_empty()),
    };
    Ok(crate::exec::JobLogins {
        credentials,
        auth_config,
    })
}

/// Why a job's registry logins could not be read.
#[derive(Debug, thiserror::Error)]
pub(super) enum LoginError {
    #[error("`credentials`: {0}")]
    Credentials(expr::ExprError),
    #[error("variable `DOCKER_AUTH_CONFIG`: {0}")]
    AuthConfig(crate::pipeline::vars::VarError),
}

/// The attempt's errors are text for its log.
impl From<LoginError> for String {
    fn from(e: LoginError) -> String {
        e.to_string()
    }
}

fn job_expr(ctx: &RunContext, a: &Attempt, job: &Job, text: &str) -> Result<String, expr::ExprError> {
    let vars = ctx.pipeline_vars();
    let env = BTreeMap::new();
    let statuses = HashMap::new();
    let steps = serde_json::json!({});
    let secrets = secrets_context(ctx, job);
    let paths = github_paths(ctx, job, a, 0, &ctx.workspace(job, a.attempt));
    let context = StepCtx {
        env: &env,
        vars,
        statuses: &statuses,
        steps: Some(&steps),
        secrets: Some(&secrets),
        needs: Some(&a.needs),
        inputs: None,
        paths: Some(&paths),
        files: None,
        failed: false,
        cancelled: false,
    };
    expr::interpolate_in(text, &crate::pipeline::github::LANG, &context)
}

/// The first variable of `env` whose value holds a secret, with the
/// secret's name.
fn holds_secret(ctx: &RunContext, env: &BTreeMap<String, String>) -> Option<(String, String)> {
    ctx.secrets.iter().filter(|(_, s)| !s.is_empty()).find_map(|(name, s)| {
        env.iter()
            .find(|(_, v)| v.contains(s.as_str()))
            .map(|(k, _)| (k.clone(), name.clone()))
    })
}

/// A channel whose lines join the attempt's log as step `step` (a
/// service's output, an image build's), and the task that moves them.
fn log_as(a: &Attempt, step: Arc<str>) -> (mpsc::Sender<OutputLine>, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<OutputLine>(256);
    let forward_to = a.tx.clone();
    let (job_id, attempt) = (a.job, a.attempt);
    let task = tokio::spawn(async move {
        while let Some(line) = rx.recv().await {
            let msg = RunnerMsg::Log {
                job: job_id,
                attempt,
                step: step.clone(),
                stream: line.stream,
                text: line.text,
                partial: line.partial,
            };
            if forward_to.send(msg).await.is_err() {
                break;
            }
        }
    });
    (tx, task)
}

/// Starts the job's own container (its first container step's image),
/// with the job's folders mounted where GitHub has them.
async fn start_job_box(
    ctx: &Arc<RunContext>,
    a: &Attempt,
    job: &Job,
    ws: &Path,
    network: Option<String>,
) -> Result<Option<crate::exec::JobBox>, String> {
    let Some(image) = job.image() else { return Ok(None) };
    let mounts = job_box_mounts(ctx, job, a.attempt, ws)?;
    let workdir = crate::exec::inside(&mounts, &std::path::absolute(ws).unwrap_or_else(|_| ws.to_path_buf()))
        .unwrap_or_else(|| "/".into());
    let setup: Arc<str> = Arc::from("container");
    note(a, &setup, format!("starting the job's container from `{image}`")).await;
    // Its `env` reaches each step through `docker exec` (see `box_step`),
    // never the container's configuration: it may hold a secret.
    let mut options = (*job.container).clone();
    options.extras.env.clear();
    let logins = pull_logins(ctx, a, job, options.extras.credentials.take().as_ref())?;
    let req = crate::exec::JobBoxRequest {
        run_id: ctx.run_id.clone(),
        job: job.name.clone(),
        attempt: a.attempt,
        image: image.to_string(),
        options,
        logins,
        mounts,
        workdir,
        network,
        keep_on_failure: ctx.keep_failed,
    };
    ctx.executor.start_job_box(req).await.map(Some)
}

/// Starts the job's services; their output joins the job's log as step `services`.
async fn start_services(ctx: &Arc<RunContext>, a: &Attempt, job: &Job) -> Result<crate::exec::Services, String> {
    let mut services = Vec::new();
    for svc in &job.services {
        // Services see pipeline variables but never secrets: their
        // environment is visible to anyone who can `docker inspect`.
        let mut scope = Scope::new();
        scope
            .lenient(ctx.pipeline.undefined_is_empty)
            .push_layer(ctx.cli_vars.iter().cloned())
            .push_layer(svc.environment.iter().map(|v| (v.name.clone(), v.value.clone())))
            .push_layer(
                ctx.pipeline
                    .global_env
                    .iter()
                    .map(|v| (v.name.clone(), v.value.clone())),
            );
        let env = scope
            .resolve_all()
            .map_err(|(name, e)| format!("service `{}`: variable `{name}`: {e}", svc.name))?;
        let mut env: BTreeMap<String, String> = env
            .into_iter()
            .filter(|(k, _)| svc.environment.iter().any(|v| &v.name == k))
            .collect();
        // A GitHub service's `env` may read `secrets` and `needs`.
        if job.file_commands {
            for (k, value) in env.iter_mut() {
                if value.contains("${{") {
                    *value = job_expr(ctx, a, job, value)
                        .map_err(|e| format!("service `{}`: variable `{k}`: {e}", svc.name))?;
                }
            }
            if let Some((k, secret)) = holds_secret(ctx, &env) {
                let setup: Arc<str> = Arc::from("services");
                note(
                    a,
                    &setup,
                    format!(
                        "service `{}`: `{k}` holds secret `{secret}`: it is in the service container's configuration, as on GitHub, where `docker inspect` shows it to users of the Docker daemon",
                        svc.name
                    ),
                )
                .await;
            }
        }
        let mut svc = svc.clone();
        // Its own `credentials`, read now (they may name a secret).
        if let Some(c) = svc.options.extras.credentials.take() {
            svc.options.extras.credentials = pull_logins(ctx, a, job, Some(&c))
                .map_err(|e| format!("service `{}`: {e}", svc.name))?
                .credentials
                .map(|(u, p)| crate::pipeline::model::Credentials(u, p));
        }
        services.push((svc, env));
    }
    let req = crate::exec::ServicesRequest {
        run_id: ctx.run_id.clone(),
        job: job.name.clone(),
        attempt: a.attempt,
        pull: job.container.pull,
        logins: pull_logins(ctx, a, job, None)?,
        services,
        node_labels: job.container.node_labels.clone(),
    };
    let (tx, _forward) = log_as(a, Arc::from("services"));
    ctx.executor.start_services(req, tx).await
}

/// The job's steps in order until one fails (or the job is cancelled or
/// times out); then its cleanup steps, whatever happened, each with a
/// timeout and a cancel of its own, told how the others ended.
async fn run_steps(
    ctx: &Arc<RunContext>,
    a: &Attempt,
    job: &Job,
    ws: &Path,
    deadline: Instant,
    network: Option<String>,
) -> Outcome {
    let vars = ctx.pipeline_vars();
    // A host job's `RUNNER_TEMP` is the attempt's folder (see
    // `runner_dirs`): an ended job's, emptied, if there is one. Should
    // that fail, the steps make a new one (and tell what is wrong).
    if job.file_commands && on_host(job) {
        let _ = ctx.empty_folders.take(&files_dir(ctx, job, a.attempt));
    }
    let network = network.as_deref();
    let mut outcome = Outcome::success();
    let mut carried = filecmd::Carried::default();
    // `carried.stopped` is set once the job is cancelled or out of time:
    // from then on only a step whose condition asks for it (`always()`,
    // `cancelled()`) runs, with a timeout and a cancel of its own, as a
    // cleanup step does. `carried.failed`: a step failed (a stop is not a
    // failure: `failure()` is false then).
    let steps: Vec<usize> = (0..job.steps.len()).filter(|&i| !job.steps[i].cleanup).collect();
    for &index in &steps {
        let step = &job.steps[index];
        // Leave the composite action calls this step is not part of, enter
        // those it is.
        let chain = call_chain(job, index);
        while carried.frames.last().is_some_and(|f| !chain.contains(&f.call)) {
            leave_call(ctx, a, job, index, ws, vars, &mut carried, &mut outcome).await;
        }
        for &call in chain.iter().skip(carried.frames.len()) {
            enter_call(ctx, a, job, index, ws, vars, &mut carried, call).await;
        }
        if carried.frames.iter().any(|f| f.skipped) {
            continue;
        }
        let before = carried.failed || carried.stopped;
        let runs = match step_runs(ctx, a, job, index, ws, vars, &carried, step.condition.as_deref()) {
            Ok(runs) => runs,
            Err(msg) => {
                let msg = format!("step `{}`: {msg}", step.name);
                let name: Arc<str> = Arc::from(step.name.as_str());
                note(a, &name, msg.clone()).await;
                let failure = filecmd::StepFailure {
                    class: FailureClass::Script,
                    exit_code: None,
                    message: msg,
                };
                if let Some(f) = carried.failed_step(failure) {
                    fail_job(&mut outcome, f);
                }
                false
            }
        };
        if !runs {
            if let Some(id) = &step.id {
                carried.skipped(id);
            }
            if let Some(c) = step.condition.as_ref().filter(|_| !before) {
                let name: Arc<str> = Arc::from(step.name.as_str());
                note(
                    a,
                    &name,
                    format!("step `{}` skipped: condition is false: {}", step.name, c.source),
                )
                .await;
            }
            continue;
        }
        let dir = step_files_dir(ctx, job, a.attempt);
        // A JavaScript action's toolkit wants the files there; a script's
        // `>>` makes the ones it writes.
        let made = match (job.file_commands, step.inputs_env) {
            (false, _) => None,
            // A Docker action's container (maybe not root) makes its own.
            (true, true) if step.docker_action.is_none() => Some(filecmd::StepFiles::create(&dir, index)),
            (true, _) => Some(filecmd::StepFiles::at(&dir, index)),
        };
        let files = match made {
            Some(made) => match made {
                Ok(f) => Some(f),
                Err(e) => {
                    outcome.failure = Some(FailureClass::Infra);
                    outcome.message = Some(format!("cannot make the step's GITHUB_ENV and other files: {e}"));
                    break;
                }
            },
            None => None,
        };
        let ran = match (&step.builtin, &files) {
            (Some(b), Some(f)) => Some(run_builtin(ctx, a, job, index, ws, vars, &mut carried, f, b).await),
            _ => None,
        };
        let github = files.as_ref().map(|f| (f, &carried));
        let ran = match (ran, carried.stopped) {
            (Some(ran), _) => ran,
            (None, false) => run_step(ctx, a, job, index, ws, deadline, vars, network, &a.cancel, None, github).await,
            (None, true) => {
                let own = Instant::now() + step.timeout.unwrap_or(crate::pipeline::model::CLEANUP_TIMEOUT);
                let cancel = CancellationToken::new();
                run_step(ctx, a, job, index, ws, own, vars, network, &cancel, None, github).await
            }
        };
        if let Some(f) = &files {
            let name: Arc<str> = Arc::from(step.name.as_str());
            let outcome = match ran.class {
                None => filecmd::Outcome::Success,
                Some(FailureClass::Cancelled) => filecmd::Outcome::Cancelled,
                Some(_) => filecmd::Outcome::Failure,
            };
            let mut problems = f.collect(&mut carried, step.id.as_deref(), outcome, step.continue_on_failure);
            if step.inputs_env
                && let Some(k) = step.action
            {
                let key = job.actions.get(k).and_then(|c| c.state_from).unwrap_or(k);
                problems.extend(f.collect_state(carried.states.entry(key).or_default()));
            }
            for problem in problems {
                note(a, &name, problem).await;
            }
            // The step's summary joins the job's log (its record), where
            // the UI and `trackside logs` show it.
            let (summary, problem) = f.summary();
            if let Some(p) = problem {
                note(a, &name, p).await;
            }
            if !summary.trim().is_empty() {
                note(a, &name, format!("summary of step `{}`:", step.name)).await;
                for line in summary.lines() {
                    let _ =
                        a.tx.send(RunnerMsg::Log {
                            job: a.job,
                            attempt: a.attempt,
                            step: name.clone(),
                            stream: crate::exec::Stream::Stdout,
                            text: format!("│ {line}"),
                            partial: false,
                        })
                        .await;
                }
            }
        }
        let Some(c) = ran.class else { continue };
        // Cancelled, or the job's time is up (a step's own timeout is a
        // failure of that step).
        let hard_stop = c == FailureClass::Cancelled || (c == FailureClass::Timeout && Instant::now() >= deadline);
        if step.continue_on_failure && !hard_stop {
            let name: Arc<str> = Arc::from(step.name.as_str());
            note(
                a,
                &name,
                format!("step `{}` failed ({c}); continuing (continue_on_failure)", step.name),
            )
            .await;
            continue;
        }
        if carried.stopped {
            let name: Arc<str> = Arc::from(step.name.as_str());
            note(
                a,
                &name,
                format!("step `{}` failed ({c}) after the job was stopped", step.name),
            )
            .await;
            continue;
        }
        let failure = filecmd::StepFailure {
            class: c,
            exit_code: ran.end.exit_code(),
            message: ran.message.unwrap_or_else(|| match ran.end.exit_code() {
                Some(code) => format!("step `{}` exited with {code}", step.name),
                None => format!("step `{}` failed ({c})", step.name),
            }),
        };
        if hard_stop {
            carried.stopped = true;
            fail_job(&mut outcome, failure);
        } else if let Some(f) = carried.failed_step(failure) {
            fail_job(&mut outcome, f);
        }
    }
    let last = steps.last().copied().unwrap_or(0);
    while !carried.frames.is_empty() {
        leave_call(ctx, a, job, last, ws, vars, &mut carried, &mut outcome).await;
    }
    if job.file_commands && !job.outputs.is_empty() {
        job_outputs(ctx, a, job, vars, &carried).await;
    }
    // GitLab's words, as its after_script sees them.
    let status = match outcome.failure {
        None => "success",
        Some(FailureClass::Cancelled) => "canceled",
        Some(FailureClass::Timeout) => "timedout",
        Some(_) => "failed",
    };
    for (index, step) in job.steps.iter().enumerate().filter(|(_, s)| s.cleanup) {
        // Its own time and its own cancel: the job's are likely spent.
        let own = Instant::now() + step.timeout.unwrap_or(crate::pipeline::model::CLEANUP_TIMEOUT);
        let cancel = CancellationToken::new();
        let ran = run_step(ctx, a, job, index, ws, own, vars, network, &cancel, Some(status), None).await;
        if let Some(c) = ran.class {
            let name: Arc<str> = Arc::from(step.name.as_str());
            note(
                a,
                &name,
                format!("cleanup step `{}` failed ({c}); the job's result stands", step.name),
            )
            .await;
        }
    }
    outcome
}

/// Tells the actor step `index` (`name`) starts.
async fn step_started(a: &Attempt, name: &Arc<str>, index: usize) {
    let _ =
        a.tx.send(RunnerMsg::StepStarted {
            job: a.job,
            attempt: a.attempt,
            step: name.clone(),
            index,
        })
        .await;
}

/// Tells the actor step `name` ended so, `started` being when it began.
async fn step_finished(a: &Attempt, name: &Arc<str>, end: &StepEnd, failure: Option<FailureClass>, started: Instant) {
    let _ =
        a.tx.send(RunnerMsg::StepFinished {
            job: a.job,
            attempt: a.attempt,
            step: name.clone(),
            exit_code: end.exit_code(),
            failure,
            duration: started.elapsed(),
        })
        .await;
}

/// Carries out a built-in step (GitHub's cache and artifact actions): its
/// texts evaluated now, its outputs written to its GITHUB_OUTPUT as a
/// step's would be.
#[allow(clippy::too_many_arguments)]
async fn run_builtin(
    ctx: &Arc<RunContext>,
    a: &Attempt,
    job: &Job,
    index: usize,
    ws: &Path,
    vars: &BTreeMap<String, String>,
    carried: &mut filecmd::Carried,
    files: &filecmd::StepFiles,
    builtin: &crate::pipeline::model::Builtin,
) -> StepRun {
    use crate::pipeline::model::Builtin;
    let step = &job.steps[index];
    let name: Arc<str> = Arc::from(step.name.as_str());
    step_started(a, &name, index).await;
    let started = Instant::now();
    let evaluated = GithubNow::new(ctx, a, job, index, ws, vars, carried).and_then(|now| {
        let one = |t: &String| now.text(t);
        let all = |v: &Vec<String>| v.iter().map(|t| now.text(t)).collect::<Result<Vec<_>, _>>();
        Ok(match builtin {
            Builtin::CacheRestore {
                key,
                restore_keys,
                paths,
                fail_on_miss,
                lookup_only,
                save,
            } => Builtin::CacheRestore {
                key: one(key)?,
                restore_keys: all(restore_keys)?,
                paths: all(paths)?,
                fail_on_miss: *fail_on_miss,
                lookup_only: *lookup_only,
                save: *save,
            },
            Builtin::CacheSave { key, paths, restore } => Builtin::CacheSave {
                key: one(key)?,
                paths: all(paths)?,
                restore: *restore,
            },
            Builtin::Upload {
                name,
                paths,
                if_no_files_found,
                include_hidden,
                overwrite,
            } => Builtin::Upload {
                name: one(name)?,
                paths: all(paths)?,
                if_no_files_found: if_no_files_found.clone(),
                include_hidden: *include_hidden,
                overwrite: *overwrite,
            },
            Builtin::Download { name, path } => Builtin::Download {
                name: name.as_ref().map(one).transpose()?,
                path: one(path)?,
            },
        })
    });
    let done = match evaluated {
        Ok(b) => super::actions::run(ctx, a, job, &name, &b, ws, index, &mut carried.caches).await,
        Err(e) => super::actions::Done {
            failure: Some((FailureClass::Script, format!("step `{}`: {e}", step.name))),
            outputs: Vec::new(),
        },
    };
    let mut text = String::new();
    for (k, v) in &done.outputs {
        text.push_str(&format!("{k}<<__trackside_eof__\n{v}\n__trackside_eof__\n"));
    }
    if let Err(e) = crate::store::write_with_mode(&files.output, text.as_bytes(), 0o600) {
        note(a, &name, format!("cannot write the step's outputs: {e}")).await;
    }
    let (end, class, message) = match done.failure {
        None => (StepEnd::Exited(0), None, None),
        Some((class, msg)) => {
            note(a, &name, msg.clone()).await;
            (StepEnd::Exited(1), Some(class), Some(msg))
        }
    };
    step_finished(a, &name, &end, class, started).await;
    StepRun { end, class, message }
}

/// Why a GitHub expression has no value as a step starts.
#[derive(Debug, thiserror::Error)]
enum EvalError {
    #[error("variable `{name}`: {error}; {hint}")]
    Variable {
        name: String,
        error: crate::pipeline::vars::VarError,
        hint: String,
    },
    #[error("expression in `{text}`: {error}")]
    Expression { text: String, error: expr::ExprError },
    #[error("condition `{condition}` could not be evaluated: {error}")]
    Condition { condition: String, error: expr::ExprError },
    #[error("step `{step}`: {error}")]
    InStep { step: String, error: Box<EvalError> },
}

/// GitHub's contexts as step `index` sees them now, after the steps before
/// it (`carried`): its `env` (with what GITHUB_ENV set so far), `steps`,
/// `inputs`, `needs`, `secrets`, and how the job goes.
struct GithubNow<'a> {
    env: BTreeMap<String, String>,
    steps: serde_json::Value,
    secrets: serde_json::Value,
    statuses: HashMap<String, String>,
    paths: serde_json::Value,
    ws: PathBuf,
    state_dir: PathBuf,
    vars: &'a BTreeMap<String, String>,
    a: &'a Attempt,
    carried: &'a filecmd::Carried,
}

impl<'a> GithubNow<'a> {
    fn new(
        ctx: &RunContext,
        a: &'a Attempt,
        job: &Job,
        index: usize,
        ws: &Path,
        vars: &'a BTreeMap<String, String>,
        carried: &'a filecmd::Carried,
    ) -> Result<Self, EvalError> {
        let step = &job.steps[index];
        let scope = ctx.scope(job, &step.environment, ctx.predefined(job, a.attempt, &step.name, ws));
        let env = scope.resolve_all().map_err(|(name, error)| EvalError::Variable {
            name,
            hint: error.hint().to_string(),
            error,
        })?;
        let mut now = GithubNow {
            env,
            steps: serde_json::Value::Object(carried.steps.clone()),
            secrets: secrets_context(ctx, job),
            statuses: HashMap::new(),
            paths: github_paths(ctx, job, a, index, ws),
            ws: ws.to_path_buf(),
            state_dir: ctx.state_dir.clone(),
            vars,
            a,
            carried,
        };
        for (k, v) in &carried.env {
            if !step.environment.iter().any(|e| e.name == *k) {
                now.env.insert(k.clone(), v.clone());
            }
        }
        // Values the step would have evaluated as it starts (`${{ secrets.X }}`).
        let mut env = now.env.clone();
        for value in env.values_mut() {
            if value.contains("${{") {
                *value = now.text(value).map_err(|e| EvalError::InStep {
                    step: step.name.clone(),
                    error: Box::new(e),
                })?;
            }
        }
        now.env = env;
        Ok(now)
    }

    fn context(&self) -> StepCtx<'_> {
        StepCtx {
            env: &self.env,
            vars: self.vars,
            statuses: &self.statuses,
            steps: Some(&self.steps),
            secrets: Some(&self.secrets),
            needs: Some(&self.a.needs),
            inputs: self.carried.inputs.as_ref(),
            paths: Some(&self.paths),
            files: Some((&self.ws, &self.state_dir)),
            failed: self.carried.failed,
            cancelled: self.carried.stopped,
        }
    }

    fn holds(&self, cond: &crate::pipeline::model::Condition) -> Result<bool, EvalError> {
        expr::eval(&cond.expr, &self.context())
            .map(|v| expr::truthy(&v))
            .map_err(|error| EvalError::Condition {
                condition: cond.source.clone(),
                error,
            })
    }

    fn text(&self, text: &str) -> Result<String, EvalError> {
        expr::interpolate_in(text, &crate::pipeline::github::LANG, &self.context()).map_err(|error| {
            EvalError::Expression {
                text: text.to_string(),
                error,
            }
        })
    }
}

/// Whether step `index` runs now: without a condition, while nothing
/// failed or stopped; with one that asks about status, whatever happened;
/// with another, while nothing failed or stopped and it holds.
#[allow(clippy::too_many_arguments)]
fn step_runs(
    ctx: &RunContext,
    a: &Attempt,
    job: &Job,
    index: usize,
    ws: &Path,
    vars: &BTreeMap<String, String>,
    carried: &filecmd::Carried,
    cond: Option<&crate::pipeline::model::Condition>,
) -> Result<bool, EvalError> {
    let asks_status = cond.is_some_and(|c| c.expr.uses_status_functions());
    match cond {
        _ if (carried.failed || carried.stopped) && !asks_status => Ok(false),
        None => Ok(true),
        Some(c) => GithubNow::new(ctx, a, job, index, ws, vars, carried)?.holds(c),
    }
}

/// GitHub's `github` and `runner` contexts for step `index`, as
/// `{github, runner}`: as the workflow was read, with the paths only the
/// run knows (`workspace`, `action_path`, `temp`, `tool_cache`).
fn github_paths(ctx: &RunContext, job: &Job, a: &Attempt, index: usize, ws: &Path) -> serde_json::Value {
    let action = job.steps[index]
        .action
        .and_then(|k| job.actions.get(k))
        .map(|c| ws.join(&c.path).display().to_string())
        .unwrap_or_default();
    let mut github = job.github.as_deref().cloned().unwrap_or_else(|| serde_json::json!({}));
    if let Some(g) = github.as_object_mut() {
        g.insert("workspace".into(), serde_json::Value::String(ws.display().to_string()));
        g.insert("action_path".into(), serde_json::Value::String(action));
        let event = &event_file(ctx, job, a).0;
        g.insert(
            "event_path".into(),
            serde_json::Value::String(event.display().to_string()),
        );
    }
    let mut runner = crate::pipeline::github::runner_context();
    if let Some(r) = runner.as_object_mut() {
        let (temp, tools) = runner_dirs(ctx, job, a.attempt);
        r.insert("temp".into(), serde_json::Value::String(temp.display().to_string()));
        r.insert(
            "tool_cache".into(),
            serde_json::Value::String(tools.display().to_string()),
        );
    }
    let docker = a.docker.get().cloned().unwrap_or_default();
    // A step in the job's container sees the paths as they are in there.
    if let Some(b) = docker.job_box.as_ref().filter(|_| in_job_box(ctx, job, index)) {
        for (context, keys) in [
            (&mut github, &["workspace", "action_path", "event_path"][..]),
            (&mut runner, &["temp", "tool_cache"][..]),
        ] {
            for key in keys {
                let mapped = context
                    .get(*key)
                    .and_then(|v| v.as_str())
                    .filter(|v| !v.is_empty())
                    .and_then(|v| crate::exec::inside(&b.mounts, Path::new(v)));
                if let (Some(m), Some(o)) = (mapped, context.as_object_mut()) {
                    o.insert((*key).to_string(), serde_json::Value::String(m));
                }
            }
        }
    }
    let (container, services) = docker.context();
    // Moved in, not copied: `json!` would serialize each value again, and
    // `github` holds the event's payload (tens of kilobytes for a pull
    // request).
    let contexts = [
        ("github", github),
        ("runner", runner),
        ("container", container),
        ("services", services),
    ];
    serde_json::Value::Object(contexts.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

/// Whether step `index` runs in the job's own container.
fn in_job_box(ctx: &RunContext, job: &Job, index: usize) -> bool {
    ctx.containers && job.container.job_container && job.steps.get(index).is_some_and(|s| s.image.is_some())
}

/// The folders a job's container mounts, as (host, inside): the
/// workspace where GitHub has it (`/__w/<repo>/<repo>`), the attempt's
/// files (step files, scripts, the event) and `RUNNER_TEMP`, the tool
/// cache and a home folder, all made here first.
fn job_box_mounts(ctx: &RunContext, job: &Job, attempt: u32, ws: &Path) -> Result<Vec<crate::exec::Mount>, String> {
    let repo = job
        .github
        .as_deref()
        .and_then(|g| g.get("repository"))
        .and_then(|r| r.as_str())
        .and_then(|r| r.rsplit('/').next())
        .filter(|r| !r.is_empty() && *r != "." && *r != "..")
        .unwrap_or("workspace")
        .to_string();
    let files = std::path::absolute(files_dir(ctx, job, attempt)).unwrap_or_else(|_| files_dir(ctx, job, attempt));
    let (temp, tools) = runner_dirs(ctx, job, attempt);
    let home = files.join("home");
    for d in [
        &files,
        &temp,
        &tools,
        &home,
        &files.join("github"),
        &files.join("steps"),
    ] {
        crate::store::private_dir(d).map_err(|e| format!("cannot make {}: {e}", d.display()))?;
    }
    let ws = std::path::absolute(ws).unwrap_or_else(|_| ws.to_path_buf());
    let m = |host: PathBuf, inside: String| crate::exec::Mount {
        host,
        inside,
        read_only: false,
    };
    Ok(vec![
        m(ws, format!("/__w/{repo}/{repo}")),
        m(files, "/__w/_trackside".into()),
        m(temp, "/__w/_temp".into()),
        m(tools, "/__t".into()),
        m(home, "/github/home".into()),
    ])
}

/// Whether all of a job's steps run on this machine: none in the job's
/// container or a Docker action's. Such a GitHub job keeps its runner files
/// flat in the attempt's folder, which is its `RUNNER_TEMP` (GitHub's runner
/// keeps its file commands and the event in its temporary folder too), and
/// its steps read the run's copy of the event's payload. A container needs
/// them apart, each mounted on its own path and some opened to the
/// container's user; on the host each new folder would only cost an inode,
/// and making one is a job's largest cost on some file systems
/// (docs/BENCHMARKS.md).
fn on_host(job: &Job) -> bool {
    !job.steps.iter().any(|s| s.image.is_some() || s.docker_action.is_some())
}

/// Where a GitHub job's step files (GITHUB_ENV and the others) are.
fn step_files_dir(ctx: &RunContext, job: &Job, attempt: u32) -> PathBuf {
    let files = files_dir(ctx, job, attempt);
    if on_host(job) { files } else { files.join("github") }
}

/// A GitHub job's `GITHUB_EVENT_PATH`, and the payload's text to write
/// there when it is not yet. A job on the host reads the run's copy, named
/// by its content (the workflows of a folder, run at once, each have their
/// own payload); a job with a container has its own, in a folder it mounts.
fn event_file<'a>(ctx: &RunContext, job: &Job, a: &'a Attempt) -> &'a (PathBuf, String) {
    a.event.get_or_init(|| {
        let payload = job.github.as_deref().and_then(|g| g.get("event"));
        let text = serde_json::to_string_pretty(payload.unwrap_or(&serde_json::Value::Null)).unwrap_or_default();
        let path = if on_host(job) {
            let digest = crate::store::objects::Digest::of(text.as_bytes()).to_string();
            let name = format!("event-{}.json", digest.get(..16).unwrap_or(&digest));
            ctx.run_dir.join("files").join(name)
        } else {
            files_dir(ctx, job, a.attempt).join("event.json")
        };
        Box::new((std::path::absolute(&path).unwrap_or(path), text))
    })
}

/// Writes the event's payload where [`event_file`] says, once: a new file
/// is written aside and renamed into place, so that a step of another job
/// never reads it half written.
fn write_event_file(path: &Path, text: &str, job: &Job, attempt: u32) -> Result<(), crate::store::IoFailure> {
    if path.is_file() {
        return Ok(());
    }
    let aside = path.with_extension(format!("{}.{attempt}.new", crate::store::file_safe(&job.name)));
    crate::store::write_with_mode(&aside, text.as_bytes(), 0o600)?;
    std::fs::rename(&aside, path).map_err(crate::store::io_err("cannot write", path))
}

/// A GitHub job's `RUNNER_TEMP` (the attempt's own, empty at its start but
/// for the runner's files, see [`on_host`]) and `RUNNER_TOOL_CACHE` (kept
/// between runs, in the state folder).
fn runner_dirs(ctx: &RunContext, job: &Job, attempt: u32) -> (PathBuf, PathBuf) {
    let files = files_dir(ctx, job, attempt);
    let temp = if on_host(job) { files } else { files.join("temp") };
    let temp = std::path::absolute(&temp).unwrap_or(temp);
    let tools =
        std::path::absolute(ctx.state_dir.join("toolcache")).unwrap_or_else(|_| ctx.state_dir.join("toolcache"));
    (temp, tools)
}

/// The job's result is its first failure.
fn fail_job(outcome: &mut Outcome, f: filecmd::StepFailure) {
    if outcome.failure.is_none() {
        outcome.exit_code = f.exit_code;
        outcome.failure = Some(f.class);
        outcome.message = Some(f.message);
    }
}

/// Enters composite action call `call` as step `index` (its first) is
/// reached: its `if:` is asked and its inputs evaluated where the call is
/// written (the caller's scope).
#[allow(clippy::too_many_arguments)]
async fn enter_call(
    ctx: &RunContext,
    a: &Attempt,
    job: &Job,
    index: usize,
    ws: &Path,
    vars: &BTreeMap<String, String>,
    carried: &mut filecmd::Carried,
    call: usize,
) {
    let Some(spec) = job.actions.get(call) else { return };
    let name: Arc<str> = Arc::from(spec.name.as_str());
    let outer_skipped = carried.frames.last().is_some_and(|f| f.skipped);
    let before = carried.failed || carried.stopped;
    let mut problem: Option<String> = None;
    let runs = !outer_skipped
        && match step_runs(ctx, a, job, index, ws, vars, carried, spec.condition.as_ref()) {
            Ok(runs) => runs,
            Err(msg) => {
                problem = Some(msg.to_string());
                false
            }
        };
    let mut inputs = serde_json::Map::new();
    if runs {
        match GithubNow::new(ctx, a, job, index, ws, vars, carried) {
            Ok(now) => {
                for (k, text) in &spec.inputs {
                    match now.text(text) {
                        Ok(v) => {
                            inputs.insert(k.clone(), serde_json::Value::String(v));
                        }
                        Err(e) => {
                            problem = Some(format!("input `{k}`: {e}"));
                            break;
                        }
                    }
                }
            }
            Err(e) => problem = Some(e.to_string()),
        }
    } else if let Some(c) = spec
        .condition
        .as_ref()
        .filter(|_| !before && !outer_skipped && problem.is_none())
    {
        note(
            a,
            &name,
            format!("step `{}` skipped: condition is false: {}", spec.name, c.source),
        )
        .await;
    }
    carried.enter(call, serde_json::Value::Object(inputs), !runs || problem.is_some());
    if let Some(msg) = problem {
        let msg = format!("step `{}`: {msg}", spec.name);
        note(a, &name, msg.clone()).await;
        carried.failed_step(filecmd::StepFailure {
            class: FailureClass::Script,
            exit_code: None,
            message: msg,
        });
    }
}

/// Leaves the innermost open call: its `outputs` are evaluated among its
/// own steps and become the calling step's; its failure is its caller's
/// unless the call may fail (`continue-on-error`).
#[allow(clippy::too_many_arguments)]
async fn leave_call(
    ctx: &RunContext,
    a: &Attempt,
    job: &Job,
    index: usize,
    ws: &Path,
    vars: &BTreeMap<String, String>,
    carried: &mut filecmd::Carried,
    outcome: &mut Outcome,
) {
    let Some(frame) = carried.frames.last() else { return };
    let Some(spec) = job.actions.get(frame.call) else {
        carried.frames.pop();
        return;
    };
    let name: Arc<str> = Arc::from(spec.name.as_str());
    let mut outputs = Vec::new();
    if let Some(of) = spec.outputs_of.as_deref().filter(|_| !frame.skipped) {
        // Everything its step wrote to GITHUB_OUTPUT.
        let written = carried
            .steps
            .get(of)
            .and_then(|s| s.get("outputs"))
            .and_then(|o| o.as_object());
        for (k, v) in written.into_iter().flatten() {
            outputs.push((k.clone(), expr::to_text(v)));
        }
    } else if !frame.skipped {
        match GithubNow::new(ctx, a, job, index, ws, vars, carried) {
            Ok(now) => {
                for (k, text) in &spec.outputs {
                    match now.text(text) {
                        Ok(v) => outputs.push((k.clone(), v)),
                        Err(e) => note(a, &name, format!("output `{k}` of `{}`: {e}", spec.name)).await,
                    }
                }
            }
            Err(e) => note(a, &name, e.to_string()).await,
        }
    }
    let failed = frame.failure.is_some();
    if failed && spec.continue_on_error {
        note(
            a,
            &name,
            format!("step `{}` failed; continuing (continue-on-error)", spec.name),
        )
        .await;
    }
    if let Some(mut f) = carried.leave(spec.id.as_deref(), outputs, spec.continue_on_error) {
        f.message = format!("action `{}`: {}", spec.name, f.message);
        fail_job(outcome, f);
    }
}

/// The composite action calls step `index` is part of, outermost first.
fn call_chain(job: &Job, index: usize) -> Vec<usize> {
    let mut chain = Vec::new();
    let mut at = job.steps[index].action;
    while let Some(k) = at {
        // A call's parent comes before it: a malformed chain ends here.
        if chain.contains(&k) || chain.len() > job.actions.len() {
            break;
        }
        chain.push(k);
        at = job.actions.get(k).and_then(|c| c.parent);
    }
    chain.reverse();
    chain
}

/// GitHub's `secrets` context: the run's secrets (`GITHUB_TOKEN` is not
/// one: there is no GitHub here, so it reads as empty); in a called
/// workflow's job, those the call passed, by the names it gave them.
fn secrets_context(ctx: &RunContext, job: &Job) -> serde_json::Value {
    let value = |name: &str| ctx.secrets.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    serde_json::Value::Object(match &job.secret_names {
        None => ctx
            .secrets
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect(),
        Some(names) => names
            .iter()
            .filter_map(|(own, run)| Some((own.clone(), serde_json::Value::String(value(run)?))))
            .collect(),
    })
}

/// A GitHub job's `outputs`, evaluated once its steps have run, sent to
/// the actor for the jobs that need it. An output holding a secret is not
/// sent, as GitHub's runner skips it (and says so).
async fn job_outputs(
    ctx: &RunContext,
    a: &Attempt,
    job: &Job,
    vars: &BTreeMap<String, String>,
    carried: &filecmd::Carried,
) {
    let steps = serde_json::Value::Object(carried.steps.clone());
    let secrets = secrets_context(ctx, job);
    let statuses = HashMap::new();
    let context = StepCtx {
        env: &carried.env,
        vars,
        statuses: &statuses,
        steps: Some(&steps),
        secrets: Some(&secrets),
        needs: Some(&a.needs),
        inputs: None,
        paths: None,
        files: None,
        failed: carried.failed,
        cancelled: carried.stopped,
    };
    let name: Arc<str> = Arc::from("outputs");
    let mut outputs = Vec::new();
    for (key, text) in &job.outputs {
        let value = match expr::interpolate_in(text, &crate::pipeline::github::LANG, &context) {
            Ok(v) => v,
            Err(e) => {
                note(a, &name, format!("output `{key}`: {e}")).await;
                continue;
            }
        };
        if ctx
            .secrets
            .iter()
            .any(|(_, s)| !s.is_empty() && value.contains(s.as_str()))
        {
            note(a, &name, format!("Skip output '{key}' since it may contain secret.")).await;
            continue;
        }
        outputs.push((key.clone(), value));
    }
    let _ = a.tx.send(RunnerMsg::JobOutputs { job: a.job, outputs }).await;
}

/// How one step ended: its end, its failure class, and a message for the
/// job's reason when the step could not be set up or stopped on a limit.
struct StepRun {
    end: StepEnd,
    class: Option<FailureClass>,
    message: Option<String>,
}

/// Runs step `index` (with its retries) until `deadline` or `cancel`;
/// `job_status` is set for a cleanup step (`CI_JOB_STATUS`).
#[allow(clippy::too_many_arguments)]
async fn run_step(
    ctx: &Arc<RunContext>,
    a: &Attempt,
    job: &Job,
    index: usize,
    ws: &Path,
    deadline: Instant,
    vars: &BTreeMap<String, String>,
    network: Option<&str>,
    cancel: &CancellationToken,
    job_status: Option<&str>,
    github: Option<(&filecmd::StepFiles, &filecmd::Carried)>,
) -> StepRun {
    let step = &job.steps[index];
    let name: Arc<str> = Arc::from(step.name.as_str());
    step_started(a, &name, index).await;
    let started = Instant::now();
    let mut message = None;
    let (end, diagnosis) = match prepare_step(ctx, a, job, index, ws, deadline, vars, network, job_status, github) {
        Ok(spec) => run_with_retries(ctx, a, job, index, &name, &spec, cancel).await,
        Err(msg) => {
            note(a, &name, msg.clone()).await;
            wait_for_rules().await;
            let d = KnowledgeBase::builtin().diagnose_message(&msg, &ending(&StepEnd::Exited(2), false));
            message = Some(msg);
            (StepEnd::Exited(2), d)
        }
    };
    let class = classify(&end, diagnosis.as_ref().map(|d| d.class));
    // A step killed by its deadline is a timeout, whatever the step saw.
    let class = match class {
        Some(_) if Instant::now() >= deadline && !cancel.is_cancelled() => Some(FailureClass::Timeout),
        c => c,
    };
    if let Some(c) = class.filter(|_| !step.cleanup) {
        // The failing step that fails the job tells why (the attempt-level
        // fallback reads the job's reason when this one does not fit).
        let mut t = a.telling.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        t.diagnosis = diagnosis.filter(|d| d.class == c);
    }
    if let StepEnd::SpawnFailed(msg) | StepEnd::Lost(msg) | StepEnd::Unschedulable(msg) = &end {
        note(a, &name, msg.clone()).await;
        message = Some(msg.clone());
    }
    if class == Some(FailureClass::Timeout) {
        let which = if step.cleanup {
            let limit = step.timeout.unwrap_or(crate::pipeline::model::CLEANUP_TIMEOUT);
            format!("cleanup timeout of {}s", limit.as_secs())
        } else if Instant::now() >= deadline {
            format!("job timeout of {}s", job.timeout.as_secs())
        } else {
            format!("step timeout of {}s", step.timeout.map_or(0, |t| t.as_secs()))
        };
        note(a, &name, format!("step `{}` stopped: {which} reached", step.name)).await;
        message = Some(format!("{which} reached in step `{}`", step.name));
    }
    step_finished(a, &name, &end, class, started).await;
    StepRun { end, class, message }
}

/// Builds the executor's view of a step: env, interpolated script, workdir, deadline.
#[allow(clippy::too_many_arguments)]
fn prepare_step(
    ctx: &RunContext,
    a: &Attempt,
    job: &Job,
    index: usize,
    ws: &Path,
    deadline: Instant,
    vars: &BTreeMap<String, String>,
    network: Option<&str>,
    job_status: Option<&str>,
    github: Option<(&filecmd::StepFiles, &filecmd::Carried)>,
) -> Result<StepSpec, String> {
    let step = &job.steps[index];
    let mut scope = ctx.scope(job, &step.environment, ctx.predefined(job, a.attempt, &step.name, ws));
    let resolve = |scope: &Scope| {
        scope
            .resolve_all()
            .map_err(|(name, e)| format!("variable `{name}`: {e}; {}", e.hint()))
    };
    let mut env = resolve(&scope)?;
    // File variables: their values go to files, and the variables, and any
    // variable that refers to one, hold the file's path (as GitLab's runner
    // has them since 15.7).
    let in_container = step.image.is_some() && ctx.containers;
    let files = file_variables(ctx, a, job, &env, in_container)
        .map_err(|e| format!("cannot write the job's file variables: {e}"))?;
    if !files.is_empty() {
        scope.override_with(files.iter().map(|f| (f.name.clone(), f.seen_as.replace('$', "$$"))));
        env = resolve(&scope)?;
    }
    // Dotenv reports rank above the YAML's variables, below the project's
    // settings and the command line's.
    for (k, v) in a.dotenv.get().into_iter().flatten() {
        if !ctx.cli_vars.iter().any(|(c, _)| c == k) && !job.settings_vars.contains(k) {
            env.insert(k.clone(), v.clone());
        }
    }
    // A cleanup step is told how the job's other steps ended.
    if let Some(status) = job_status {
        env.insert("CI_JOB_STATUS".to_string(), status.to_string());
    }
    // GitHub's file commands: what earlier steps set (a step's own `env`
    // still wins), and this step's files.
    if let Some((files, carried)) = github {
        for (k, v) in &carried.env {
            if !step.environment.iter().any(|e| e.name == *k) {
                env.insert(k.clone(), v.clone());
            }
        }
        for (k, v) in files.variables() {
            env.insert(k.to_string(), v);
        }
        // The runner's folders, and the event's payload as a file. On the
        // host, RUNNER_TEMP is the step files' folder, made (0700) with
        // them. The tool cache is kept between runs: made, and closed to
        // others again, for each step (an earlier one may have removed it
        // or opened it).
        let (temp, tools) = runner_dirs(ctx, job, a.attempt);
        let make = |d: &Path| crate::store::private_dir(d).map_err(|e| format!("cannot make {}: {e}", d.display()));
        if !on_host(job) {
            make(&temp)?;
        }
        make(&tools)?;
        env.insert("RUNNER_TEMP".into(), temp.display().to_string());
        env.insert("RUNNER_TOOL_CACHE".into(), tools.display().to_string());
        let (event, text) = event_file(ctx, job, a);
        write_event_file(event, text, job, a.attempt).map_err(|e| format!("cannot write the event's payload: {e}"))?;
        env.insert("GITHUB_EVENT_PATH".into(), event.display().to_string());
        // A JavaScript action reads its inputs and its saved state so.
        if step.inputs_env {
            for (k, v) in carried
                .inputs
                .as_ref()
                .and_then(|i| i.as_object())
                .into_iter()
                .flatten()
                .filter(|(k, _)| !k.starts_with("__"))
            {
                let name = format!("INPUT_{}", k.replace(' ', "_").to_uppercase());
                env.insert(name, expr::to_text(v));
            }
            let key = step
                .action
                .map(|k| job.actions.get(k).and_then(|c| c.state_from).unwrap_or(k));
            for (k, v) in key.and_then(|k| carried.states.get(&k)).into_iter().flatten() {
                env.insert(format!("STATE_{k}"), v.clone());
            }
        }
        if !carried.path.is_empty() {
            let old = env.get("PATH").cloned().unwrap_or_default();
            let mut path = carried.path.join(":");
            if !old.is_empty() {
                path.push(':');
                path.push_str(&old);
            }
            env.insert("PATH".to_string(), path);
        }
    }
    // The contexts an expression reads, made only if the step has one:
    // a text without `${{` is itself.
    let contexts = std::cell::OnceCell::new();
    let interp = |text: &str, env: &BTreeMap<String, String>| {
        if !text.contains("${{") {
            return Ok(text.to_string());
        }
        let (steps_context, paths, secrets_context) = contexts.get_or_init(|| {
            (
                github.map(|(_, c)| serde_json::Value::Object(c.steps.clone())),
                github.map(|_| github_paths(ctx, job, a, index, ws)),
                github.map(|_| secrets_context(ctx, job)),
            )
        });
        let ctx = StepCtx {
            env,
            vars,
            statuses: &a.statuses,
            steps: steps_context.as_ref(),
            secrets: secrets_context.as_ref(),
            needs: github.map(|_| &*a.needs),
            inputs: github.and_then(|(_, c)| c.inputs.as_ref()),
            paths: paths.as_ref(),
            files: github.map(|_| (ws, ctx.state_dir.as_path())),
            failed: github.is_some_and(|(_, c)| c.failed),
            cancelled: github.is_some_and(|(_, c)| c.stopped),
        };
        match github {
            // A GitHub job's step reads GitHub's language, `steps` too.
            Some(_) => expr::interpolate_in(text, &crate::pipeline::github::LANG, &ctx),
            None => expr::interpolate(text, &ctx),
        }
        .map_err(|e| format!("expression in `{text}`: {e}"))
    };
    // Each value reads the variables as they were before any was evaluated.
    if env.values().any(|v| v.contains("${{")) {
        let snapshot = env.clone();
        for value in env.values_mut() {
            if value.contains("${{") {
                *value = interp(value, &snapshot)?;
            }
        }
    }
    let mut script = String::new();
    for line in &step.script {
        script.push_str(&interp(line, &env)?);
        script.push('\n');
    }
    let workdir = match step.working_directory.as_ref().or(job.working_directory.as_ref()) {
        Some(wd) => {
            let wd = scope.expand(wd).map_err(|e| format!("working_directory: {e}"))?;
            let rel = Path::new(&wd);
            if rel.is_absolute() || rel.components().any(|c| matches!(c, Component::ParentDir)) {
                return Err(format!("working_directory `{wd}` leaves the job's workspace"));
            }
            ws.join(rel)
        }
        None => ws.to_path_buf(),
    };
    let step_deadline = step
        .timeout
        .and_then(|t| Instant::now().checked_add(t))
        .map_or(deadline, |t| deadline.min(t));
    let container = match (&step.image, ctx.containers) {
        _ if step.docker_action.is_some() => {
            let Some(d) = step.docker_action.as_ref().filter(|_| ctx.containers) else {
                return Err("a Docker action needs Docker: leave out `--executor shell`".into());
            };
            let entrypoint = d.entrypoint.as_deref().map(|e| interp(e, &env)).transpose()?;
            let mut args = Vec::new();
            for text in &d.args {
                let arg = interp(text, &env)?;
                if d.split_args {
                    args.extend(shlex::split(&arg).ok_or_else(|| format!("`args` has an unterminated quote: {arg}"))?);
                } else {
                    args.push(arg);
                }
            }
            Some(action_step(
                ctx, a, job, index, ws, &mut env, entrypoint, args, &d.image,
            )?)
        }
        (Some(_), true) if job.container.job_container => {
            let Some(b) = a.docker.get().and_then(|d| d.job_box.as_ref()) else {
                return Err("the job's container is not running".into());
            };
            let github = github.map(|(_, c)| c);
            Some(box_step(
                ctx, a, job, index, ws, &workdir, b, &mut env, &script, github,
            )?)
        }
        (Some(image), true) => {
            let image = scope.expand(image).map_err(|e| format!("image: {e}"))?;
            let mut c = container_step(ctx, a, job, index, ws, &workdir, image, &mut env, &script, &files)?;
            c.network = network.map(str::to_string);
            Some(c)
        }
        _ => None,
    };
    Ok(StepSpec {
        script,
        script_dir: ctx.run_dir.join("steps"),
        env: Arc::new(env),
        workdir,
        deadline: Some(step_deadline),
        kill_grace: ctx.kill_grace,
        tag: format!("{}/{}/{}/{}", ctx.run_id, job.name, a.attempt, index),
        container,
        shell: step.shell.clone(),
        usage: a.usage.clone(),
    })
}

/// Writes `<run>/steps/NAME` (the folder is 0700) with `mode`: a step's
/// script, a container step's secrets and record. Scripts are files, never
/// command-line arguments: `ps` shows every process's arguments to every
/// user, and an interpolated `${{ env.TOKEN }}` would be there.
fn step_file(ctx: &RunContext, name: &str, text: &str, mode: u32) -> Result<PathBuf, crate::store::IoFailure> {
    let dir = ctx.run_dir.join("steps");
    crate::store::private_dir(&dir)?;
    let path = dir.join(name);
    crate::store::write_with_mode(&path, text.as_bytes(), mode)?;
    Ok(path)
}

/// One file variable, written.
struct FileVar {
    name: String,
    /// The file on the host.
    host: PathBuf,
    /// Its path as the step sees it (inside a container, where it is mounted).
    seen_as: String,
}

/// A job's file variables (GitLab's `type: file`) as files, as a runner
/// makes them: each value (from `env`) goes to
/// `<run>/files/<job>.<attempt>/NAME`, the folders 0700. A container's
/// user may not be trackside's, so there the file is readable by all (the
/// folder still keeps others out) and mounted on its own.
fn file_variables(
    ctx: &RunContext,
    a: &Attempt,
    job: &Job,
    env: &BTreeMap<String, String>,
    in_container: bool,
) -> Result<Vec<FileVar>, crate::store::IoFailure> {
    let mut files = Vec::new();
    if job.file_vars.is_empty() {
        return Ok(files);
    }
    let dir = files_dir(ctx, job, a.attempt);
    crate::store::private_dir(&dir)?;
    for name in &job.file_vars {
        let Some(value) = env.get(name) else { continue };
        let host = dir.join(name);
        let mode = if in_container { 0o644 } else { 0o600 };
        crate::store::write_with_mode(&host, value.as_bytes(), mode)?;
        let seen_as = if in_container {
            format!("{}/{name}", crate::exec::docker::FILES_PATH)
        } else {
            host.display().to_string()
        };
        files.push(FileVar {
            name: name.clone(),
            host,
            seen_as,
        });
    }
    Ok(files)
}

/// Where an attempt's file variables are written.
fn files_dir(ctx: &RunContext, job: &Job, attempt: u32) -> PathBuf {
    ctx.run_dir
        .join("files")
        .join(format!("{}.{attempt}", crate::store::file_safe(&job.name)))
}

/// Removes an attempt's step scripts and secrets files once it has ended
/// (its records stay); kept with `--keep-failed` for `trackside shell`.
fn remove_step_files(ctx: &RunContext, job: &Job, attempt: u32) {
    let dir = ctx.run_dir.join("steps");
    for index in 0..job.steps.len() {
        for ext in ["sh", "secrets"] {
            let _ = std::fs::remove_file(dir.join(format!(
                "{}.{attempt}.{index}.{ext}",
                crate::store::file_safe(&job.name)
            )));
        }
    }
}

/// Prepares a container step: the script and the secrets go into files that
/// are mounted read-only, so neither appears in the container's config; host
/// variables stay out (the image's own PATH and HOME apply).
#[allow(clippy::too_many_arguments)]
fn container_step(
    ctx: &RunContext,
    a: &Attempt,
    job: &Job,
    index: usize,
    ws: &Path,
    workdir: &Path,
    image: String,
    env: &mut BTreeMap<String, String>,
    script: &str,
    files: &[FileVar],
) -> Result<crate::exec::ContainerStep, String> {
    let base = format!("{}.{}.{index}", crate::store::file_safe(&job.name), a.attempt);
    // The folder is private to trackside's user; these files are readable
    // by anyone who reaches them, so a container running as another `user:`
    // can read its script and secrets through the bind mount.
    let write = |name: String, text: &str| step_file(ctx, &name, text, 0o644).map_err(|e| e.to_string());
    drop_host_env(ctx, job, index, env);
    env.insert("CI_PROJECT_DIR".into(), crate::exec::docker::WORKDIR.into());
    // Secrets, and any variable whose value contains one, leave the container config.
    let secret_values: Vec<&str> = ctx
        .secrets
        .iter()
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
        .collect();
    let hidden: Vec<(String, String)> = env
        .iter()
        .filter(|(_, v)| secret_values.iter().any(|s| v.contains(s)))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut prelude = String::new();
    let secrets_file = if hidden.is_empty() {
        None
    } else {
        let mut text = String::new();
        for (k, v) in &hidden {
            env.remove(k);
            text.push_str(&format!("export {k}='{}'\n", v.replace('\'', "'\\''")));
        }
        prelude = ". /run/trackside/secrets.env\n".into();
        Some(write(format!("{base}.secrets"), &text)?)
    };
    let script_file = write(format!("{base}.sh"), &format!("{prelude}{script}"))?;
    // File variables: each file mounted on its own.
    let files: Vec<(PathBuf, String)> = files.iter().map(|f| (f.host.clone(), f.seen_as.clone())).collect();
    let rel = workdir.strip_prefix(ws).unwrap_or(Path::new(""));
    let inside = Path::new(crate::exec::docker::WORKDIR).join(rel);
    let record = crate::exec::docker::StepRecord {
        container: format!("trackside-{}-{}-{}-{index}", ctx.run_id, job.name, a.attempt),
        image: image.clone(),
        workspace: ws.to_path_buf(),
        workdir: inside.display().to_string(),
        env: env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        secrets_file: secrets_file.clone(),
        user: job.container.user.clone(),
        files: files.clone(),
        workspace_at: None,
    };
    let record_text = serde_json::to_string_pretty(&record).unwrap_or_default();
    write(format!("{base}.json"), &record_text)?;
    Ok(crate::exec::ContainerStep {
        image,
        options: (*job.container).clone(),
        logins: pull_logins(ctx, a, job, job.container.extras.credentials.as_ref())?,
        run_id: ctx.run_id.clone(),
        job: job.name.clone(),
        attempt: a.attempt,
        step_index: index,
        workspace: ws.to_path_buf(),
        script_file,
        secrets_file,
        files,
        workdir: inside.display().to_string(),
        network: None,
        keep_on_failure: ctx.keep_failed,
        exec_in: None,
        entrypoint_run: None,
    })
}

/// Prepares a step that runs in the job's own container: host variables
/// out, paths as the container sees them, the script in the attempt's
/// `steps` folder (mounted), `GITHUB_PATH` entries before the image's
/// `PATH`. Secrets stay in the exec's environment, which `docker inspect`
/// does not show.
#[allow(clippy::too_many_arguments)]
fn box_step(
    ctx: &RunContext,
    a: &Attempt,
    job: &Job,
    index: usize,
    ws: &Path,
    workdir: &Path,
    b: &crate::exec::JobBox,
    env: &mut BTreeMap<String, String>,
    script: &str,
    carried: Option<&filecmd::Carried>,
) -> Result<crate::exec::ContainerStep, String> {
    drop_host_env(ctx, job, index, env);
    // The container's own `env`, below everything the workflow says.
    for (k, v) in &job.container.extras.env {
        if !env.contains_key(k) {
            let value = if v.contains("${{") {
                job_expr(ctx, a, job, v).map_err(|e| format!("container variable `{k}`: {e}"))?
            } else {
                v.clone()
            };
            env.insert(k.clone(), value);
        }
    }
    let ws = std::path::absolute(ws).unwrap_or_else(|_| ws.to_path_buf());
    let seen = |p: &Path| crate::exec::inside(&b.mounts, p);
    let ws_inside = seen(&ws).unwrap_or_else(|| "/".into());
    seen_inside(env, &b.mounts);
    env.insert("CI_PROJECT_DIR".into(), ws_inside.clone());
    env.entry("HOME".into()).or_insert_with(|| "/github/home".into());
    let mut path: Vec<String> = carried.map(|c| c.path.clone()).unwrap_or_default();
    if !path.is_empty() {
        if let Some(base) = &b.path {
            path.push(base.clone());
        }
        env.insert("PATH".into(), path.join(":"));
    }
    let files = std::path::absolute(files_dir(ctx, job, a.attempt)).unwrap_or_else(|_| files_dir(ctx, job, a.attempt));
    let (temp, _) = runner_dirs(ctx, job, a.attempt);
    open_to_container(&files, &[&temp, &files.join("home"), &files.join("github")]).map_err(|e| e.to_string())?;
    let script_host = files.join("steps").join(format!("{index}.sh"));
    crate::store::write_with_mode(&script_host, script.as_bytes(), 0o644)
        .map_err(|e| format!("cannot write the step's script: {e}"))?;
    let script_inside = seen(&script_host).ok_or("the step's script is outside the job container's mounts")?;
    let abs_workdir = std::path::absolute(workdir).unwrap_or_else(|_| workdir.to_path_buf());
    let inside_workdir = seen(&abs_workdir).unwrap_or_else(|| ws_inside.clone());
    let record = crate::exec::docker::StepRecord {
        container: b.id.clone(),
        image: b.image.clone(),
        workspace: ws.clone(),
        workdir: inside_workdir.clone(),
        env: env
            .iter()
            .filter(|(_, v)| !ctx.secrets.iter().any(|(_, s)| !s.is_empty() && v.contains(s.as_str())))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        secrets_file: None,
        user: job.container.user.clone(),
        files: Vec::new(),
        workspace_at: Some(ws_inside),
    };
    let base = format!("{}.{}.{index}", crate::store::file_safe(&job.name), a.attempt);
    let record_text = serde_json::to_string_pretty(&record).unwrap_or_default();
    step_file(ctx, &format!("{base}.json"), &record_text, 0o600).map_err(|e| e.to_string())?;
    Ok(crate::exec::ContainerStep {
        image: b.image.clone(),
        options: (*job.container).clone(),
        // Runs in the job's container: nothing to pull.
        logins: Default::default(),
        run_id: ctx.run_id.clone(),
        job: job.name.clone(),
        attempt: a.attempt,
        step_index: index,
        workspace: ws,
        script_file: script_host,
        secrets_file: None,
        files: Vec::new(),
        workdir: inside_workdir,
        network: b.network.clone(),
        keep_on_failure: ctx.keep_failed,
        exec_in: Some(crate::exec::ExecIn {
            container: b.id.clone(),
            script: script_inside,
        }),
        entrypoint_run: None,
    })
}

/// Prepares a Docker action's container: GitHub's mounts (`/github/workspace`,
/// `/github/file_commands`, `/github/home`, `/github/workflow`), its
/// inputs and GitHub's variables naming paths as it sees them, its image's
/// own `PATH`. A secret it is given reaches it as a variable, as on GitHub
/// (its container's configuration holds it; the log says so).
#[allow(clippy::too_many_arguments)]
fn action_step(
    ctx: &RunContext,
    a: &Attempt,
    job: &Job,
    index: usize,
    ws: &Path,
    env: &mut BTreeMap<String, String>,
    entrypoint: Option<String>,
    args: Vec<String>,
    image: &str,
) -> Result<crate::exec::ContainerStep, String> {
    let image = match a
        .docker
        .get()
        .and_then(|d| d.action_images.iter().find(|(i, _)| *i == index))
    {
        Some((_, tag)) => tag.clone(),
        None if !image.is_empty() => image.to_string(),
        None => return Err("the Docker action's image was not built".into()),
    };
    let files = std::path::absolute(files_dir(ctx, job, a.attempt)).unwrap_or_else(|_| files_dir(ctx, job, a.attempt));
    let (temp, _) = runner_dirs(ctx, job, a.attempt);
    let home = files.join("home");
    for d in [&files, &home, &files.join("github"), &temp] {
        crate::store::private_dir(d).map_err(|e| format!("cannot make {}: {e}", d.display()))?;
    }
    open_to_container(&files, &[&temp, &home, &files.join("github")]).map_err(|e| e.to_string())?;
    let ws = std::path::absolute(ws).unwrap_or_else(|_| ws.to_path_buf());
    let m = |host: PathBuf, inside: &str| crate::exec::Mount {
        host,
        inside: inside.to_string(),
        read_only: false,
    };
    let mounts = vec![
        m(ws.clone(), "/github/workspace"),
        m(files.join("github"), "/github/file_commands"),
        m(home, "/github/home"),
        m(files, "/github/workflow"),
        m(temp, "/github/runner_temp"),
    ];
    drop_host_env(ctx, job, index, env);
    env.remove("PATH");
    seen_inside(env, &mounts);
    env.insert("CI_PROJECT_DIR".into(), "/github/workspace".into());
    env.insert("HOME".into(), "/github/home".into());
    let secret = holds_secret(ctx, env);
    let mut options = (*job.container).clone();
    options.job_container = false;
    options.extras = Default::default();
    options.entrypoint = entrypoint.map(|e| vec![e]);
    let network = a.docker.get().and_then(|d| d.network.clone());
    let step = crate::exec::ContainerStep {
        image,
        options,
        logins: pull_logins(ctx, a, job, None)?,
        run_id: ctx.run_id.clone(),
        job: job.name.clone(),
        attempt: a.attempt,
        step_index: index,
        workspace: ws,
        script_file: PathBuf::new(),
        secrets_file: None,
        files: Vec::new(),
        workdir: "/github/workspace".into(),
        network,
        keep_on_failure: ctx.keep_failed,
        exec_in: None,
        entrypoint_run: Some(crate::exec::EntrypointRun {
            mounts,
            args: (!args.is_empty()).then_some(args),
        }),
    };
    if let Some((var, name)) = secret {
        // Said before the step's own lines; the value itself stays masked.
        let _ = a.tx.try_send(RunnerMsg::Log {
            job: a.job,
            attempt: a.attempt,
            step: Arc::from(job.steps[index].name.as_str()),
            stream: crate::exec::Stream::Stderr,
            text: format!(
                "trackside: `{var}` holds secret `{name}`: it reaches the action's container as a variable, as on GitHub, and `docker inspect` shows it to users of the Docker daemon"
            ),
            partial: false,
        });
    }
    Ok(step)
}

/// Values naming a mounted host folder (GITHUB_WORKSPACE, GITHUB_ENV,
/// RUNNER_TEMP, ...) name it as the container has it.
fn seen_inside(env: &mut BTreeMap<String, String>, mounts: &[crate::exec::Mount]) {
    for value in env.values_mut() {
        if value.starts_with('/')
            && let Some(m) = crate::exec::inside(mounts, Path::new(value.as_str()))
        {
            *value = m;
        }
    }
}

/// Lets a container's user (any uid: `--user 1000`, an image's `USER`)
/// read the attempt's folder and scripts and write the folders it writes
/// to. On the host they stay out of others' reach: the run's folder
/// above them is trackside's user's alone (0700).
fn open_to_container(files: &Path, writable: &[&Path]) -> Result<(), crate::store::IoFailure> {
    use std::os::unix::fs::PermissionsExt;
    let set = |d: &Path, mode: u32| {
        if !d.exists() {
            return Ok(());
        }
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(mode))
            .map_err(crate::store::io_err("cannot open to the job's container", d))
    };
    set(files, 0o755)?;
    set(&files.join("steps"), 0o755)?;
    for d in writable {
        set(d, 0o777)?;
    }
    Ok(())
}

/// Host variables that no pipeline layer set stay on the host.
fn drop_host_env(ctx: &RunContext, job: &Job, index: usize, env: &mut BTreeMap<String, String>) {
    for (k, _) in &ctx.host_env {
        let defined = ctx.cli_vars.iter().any(|(c, _)| c == k)
            || job.environment.iter().any(|v| &v.name == k)
            || job.steps[index].environment.iter().any(|v| &v.name == k)
            || ctx.pipeline.global_env.iter().any(|v| &v.name == k);
        if !defined {
            env.remove(k);
        }
    }
}

/// Runs a step, re-running it up to its `retry_count` for retryable classes.
async fn run_with_retries(
    ctx: &RunContext,
    a: &Attempt,
    job: &Job,
    index: usize,
    name: &Arc<str>,
    spec: &StepSpec,
    cancel: &CancellationToken,
) -> (StepEnd, Option<Diagnosis>) {
    let step = &job.steps[index];
    let mut tries = 0;
    loop {
        tries += 1;
        let (end, diagnosis) = run_once(ctx, a, name, spec, cancel).await;
        let class = classify(&end, diagnosis.as_ref().map(|d| d.class));
        // Steps retry by class only (exit codes are the job's `retry`).
        let again = class.is_some_and(|class| {
            let stopping = cancel.is_cancelled() || spec.deadline.is_some_and(|d| Instant::now() >= d);
            let failed = super::state::Retry {
                class,
                exit_code: None,
                tries,
                stopping,
                permanent: diagnosis.as_ref().is_some_and(|d| !d.retryable),
            };
            super::state::may_retry(failed, &job.retry_when, &[], step.retry_count)
        });
        if !again {
            return (end, diagnosis);
        }
        let c = class.map_or("failure", |c| c.as_str());
        note(
            a,
            name,
            format!(
                "step `{}` failed ({c}); running it again ({} of {})",
                step.name, tries, step.retry_count
            ),
        )
        .await;
    }
}

async fn run_once(
    ctx: &RunContext,
    a: &Attempt,
    name: &Arc<str>,
    spec: &StepSpec,
    cancel: &CancellationToken,
) -> (StepEnd, Option<Diagnosis>) {
    let (out_tx, mut out_rx) = mpsc::channel::<OutputLine>(256);
    let deadline = spec.deadline;
    // A GitHub job's steps speak workflow commands on standard output.
    let mut commands = ctx.pipeline.jobs[a.job].file_commands.then(filecmd::Commands::default);
    let forward = async {
        let mut scan = Scan::builtin();
        while let Some(mut line) = out_rx.recv().await {
            if let Some(node) = line.node.take() {
                let placed = RunnerMsg::Placed {
                    job: a.job,
                    attempt: a.attempt,
                    node,
                };
                let _ = a.tx.send(placed).await;
            }
            if let Some(c) = commands
                .as_mut()
                .filter(|_| line.stream == Stream::Stdout && !line.partial)
            {
                match c.line(&line.text) {
                    filecmd::Said::Show(text) => line.text = text,
                    filecmd::Said::Group(title) => {
                        line.text = format!("▸ {title}");
                        let group = RunnerMsg::Group {
                            job: a.job,
                            attempt: a.attempt,
                            title: Some(title),
                        };
                        let _ = a.tx.send(group).await;
                    }
                    filecmd::Said::EndGroup => {
                        let group = RunnerMsg::Group {
                            job: a.job,
                            attempt: a.attempt,
                            title: None,
                        };
                        let _ = a.tx.send(group).await;
                        continue;
                    }
                    filecmd::Said::Annotate(text, annotation) => {
                        line.text = text;
                        let _ =
                            a.tx.send(RunnerMsg::Annotation {
                                job: a.job,
                                step: name.clone(),
                                annotation,
                            })
                            .await;
                    }
                    filecmd::Said::Append {
                        file,
                        name,
                        value,
                        warning,
                    } => {
                        line.text = warning;
                        if let Some(path) = spec.env.get(file).filter(|_| !name.is_empty()) {
                            let block = format!(
                                "{name}<<__trackside_{}__\n{value}\n__trackside_{}__\n",
                                a.attempt, a.attempt
                            );
                            let appended = std::fs::OpenOptions::new()
                                .append(true)
                                .create(true)
                                .open(path)
                                .and_then(|mut f| std::io::Write::write_all(&mut f, block.as_bytes()));
                            if let Err(e) = appended {
                                line.text = format!("{} (cannot write {file}: {e})", line.text);
                            }
                        }
                    }
                    filecmd::Said::Hide => continue,
                    filecmd::Said::Mask(value) => {
                        let _ = a.tx.send(RunnerMsg::AddMask(value)).await;
                        continue;
                    }
                }
            }
            if scan.wants_rules() {
                crate::insight::knowledge::prepare_builtin();
            }
            if scan.would_wait() {
                wait_for_rules().await;
            }
            scan.line(&line.text, line.stream == Stream::Stderr);
            if line.stream == Stream::Stderr && !line.partial && !line.text.trim().is_empty() {
                let mut t = a.telling.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                t.last_stderr = Some(line.text.clone());
            }
            let _ =
                a.tx.send(RunnerMsg::Log {
                    job: a.job,
                    attempt: a.attempt,
                    step: name.clone(),
                    stream: line.stream,
                    text: line.text,
                    partial: line.partial,
                })
                .await;
        }
        scan
    };
    // The executor's future owns its copy; the attempt's futures hold the
    // step's settings once, by reference (each level held its own copy).
    let run = ctx.executor.run_step(spec.clone(), out_tx, cancel.clone());
    let (end, mut scan) = tokio::join!(run, forward);
    if matches!(end, StepEnd::Exited(0)) {
        return (end, None);
    }
    if let StepEnd::SpawnFailed(msg) | StepEnd::Lost(msg) | StepEnd::Unschedulable(msg) = &end {
        for line in msg.lines() {
            scan.line(line, true);
        }
    }
    let timed_out = deadline.is_some_and(|d| Instant::now() >= d) && !cancel.is_cancelled();
    wait_for_rules().await;
    let diagnosis = scan.finish(&ending(&end, timed_out));
    (end, diagnosis)
}

/// Waits, on a blocking thread, for the built-in failure rules (compiling
/// them, or waiting for the thread that does), so no async thread blocks on
/// them.
async fn wait_for_rules() {
    if !crate::insight::knowledge::builtin_ready() {
        let _ = tokio::task::spawn_blocking(|| {
            KnowledgeBase::builtin();
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each job running at once holds its attempt's future: at 1,000 jobs
    /// every kilobyte here is a megabyte. It held the step's settings once
    /// per level of the step's call chain (11 KiB); a large new local or
    /// sub-future belongs in a `Box::pin`, as the rollout's is.
    #[test]
    fn an_attempts_future_stays_within_its_budget() {
        fn future_size<A, B, F>(_: fn(A, B) -> F) -> usize {
            std::mem::size_of::<F>()
        }
        let size = future_size(run_attempt);
        assert!(size <= 8 * 1024, "run_attempt's future is {size} bytes");
    }

    #[test]
    fn predefined_variables_match_the_documented_names() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (p, _) = crate::pipeline::parse_source(
            Path::new("t.yml"),
            "name: t\njobs:\n  a:\n    steps: [{script: x}]\n".into(),
            &crate::pipeline::LoadOptions::default(),
        )
        .expect("valid");
        let ctx = RunContext {
            run_id: "r".into(),
            pipeline: Arc::new(p),
            run_dir: PathBuf::from("/tmp/r"),
            project_dir: PathBuf::from("/tmp/p"),
            program: PathBuf::from("trackside"),
            group: None,
            files: Vec::new(),
            in_place: false,
            keep_workspaces: false,
            kill_grace: Duration::from_secs(1),
            cli_vars: Vec::new(),
            secrets: Vec::new(),
            host_env: Vec::new(),
            executor: Arc::new(crate::exec::shell::ShellExecutor),
            containers: false,
            keep_failed: false,
            objects: Arc::new(crate::store::objects::ObjectStore::open(&dir.path().join("objects")).expect("store")),
            index: Arc::new(crate::store::index::Index::open(dir.path()).expect("index")),
            use_cache: true,
            state_dir: dir.path().to_path_buf(),
            artifact_limits: Default::default(),
            artifact_bytes: Default::default(),
            borrowed_artifacts: BTreeMap::new(),
            git_repo: None,
            spares: Arc::new(workspace::Spares::open(
                Path::new("/nonexistent"),
                Path::new("/tmp/p"),
                0,
                0,
                false,
            )),
            empty_folders: Default::default(),
            pipeline_vars: Default::default(),
        };
        let names: Vec<String> = ctx
            .predefined(&ctx.pipeline.jobs[0], 1, "s", Path::new("/w"))
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(names, crate::pipeline::native::PREDEFINED);
    }
}
