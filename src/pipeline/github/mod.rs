//! GitHub Actions workflows (docs/github.md): a workflow file read as
//! GitHub reads it and lowered into the one model.
//!
//! What is known when the workflow is read is decided then: the `github`,
//! `matrix`, `strategy`, `runner`, `inputs` and `vars` contexts are
//! evaluated into the text they stand for, matrices expand into jobs named
//! as GitHub names them, and a job's or step's `if:` over them decides
//! whether it is part of the run. `${{ env.X }}` is left for the engine,
//! which interpolates it as each step starts. What trackside does not do
//! yet (see docs/github.md) is an error that names it, never a silent
//! difference: the `steps`, `needs`, `job` and `secrets` contexts, actions
//! other than `actions/checkout`, reusable workflows, containers.
//!
//! Pure: nothing here does I/O.

mod action;
mod builtin;
mod container;
mod docker_action;
pub mod matrix;
mod reusable;

use std::path::Path;
use std::time::Duration;

use serde_json::{Value as Json, json};

use super::diag::{Diagnostic, Report};
use super::expr::{self, Expr, Lang};
use super::model::{Condition, EnvVar, Job, Pipeline, RetryPolicy, Step};
use super::read::{Cx, checked_source, entries, file_error, finish, get, join};
use super::yaml::{self, Node, Value};
use super::{LoadOptions, Plan};
use matrix::Combo;

/// The contexts GitHub's expressions may read.
pub const CONTEXTS: [&str; 12] = [
    "github", "env", "vars", "secrets", "matrix", "strategy", "needs", "steps", "job", "jobs", "runner", "inputs",
];

/// GitHub's functions, with their accepted argument counts.
pub const FUNCTIONS: [(&str, usize, usize); 12] = [
    ("contains", 2, 2),
    ("startsWith", 2, 2),
    ("endsWith", 2, 2),
    ("format", 1, 32),
    ("join", 1, 2),
    ("toJSON", 1, 1),
    ("fromJSON", 1, 1),
    ("hashFiles", 1, 32),
    ("success", 0, 0),
    ("failure", 0, 0),
    ("always", 0, 0),
    ("cancelled", 0, 0),
];

/// GitHub's expression language.
pub const LANG: Lang = Lang {
    contexts: &CONTEXTS,
    functions: &FUNCTIONS,
    filters: true,
    ignore_case: true,
};

/// Where each context may be read (GitHub's "context availability"): a
/// workflow's `env`; a job's keys; a job's `if`; a step's `if`; a step's
/// other keys.
const IN_WORKFLOW_ENV: &[&str] = &["github", "secrets", "inputs", "vars"];
const IN_JOB: &[&str] = &["github", "needs", "strategy", "matrix", "vars", "secrets", "inputs"];
const IN_JOB_IF: &[&str] = &["github", "needs", "vars", "inputs"];
const IN_STEP_IF: &[&str] = &[
    "github", "needs", "strategy", "matrix", "job", "runner", "env", "vars", "steps", "inputs",
];
const IN_STEP: &[&str] = &[
    "github", "needs", "strategy", "matrix", "job", "runner", "env", "vars", "secrets", "steps", "inputs",
];

/// Contexts whose values are known when the workflow is read.
const KNOWN: [&str; 6] = ["github", "matrix", "strategy", "runner", "inputs", "vars"];
/// Contexts a step's text may read that the engine fills as the step
/// starts: `env` as `GITHUB_ENV` left it, `steps` with the outputs so far,
/// `secrets` from `--secret` and `--secret-file` (never written into the
/// model: a secret's value joins the step's script only as it runs), and
/// `job` (`job.status`: how the steps before it went).
pub const AT_STEP_START: [&str; 5] = ["env", "steps", "secrets", "needs", "job"];

/// Functions that need the run (its files or its jobs' states).
const AT_RUN_TIME: [&str; 5] = ["hashFiles", "success", "failure", "always", "cancelled"];

const WORKFLOW_KEYS: [&str; 8] = [
    "name",
    "run-name",
    "on",
    "permissions",
    "env",
    "defaults",
    "concurrency",
    "jobs",
];
const JOB_KEYS: [&str; 19] = [
    "name",
    "permissions",
    "needs",
    "if",
    "runs-on",
    "environment",
    "concurrency",
    "outputs",
    "env",
    "defaults",
    "steps",
    "timeout-minutes",
    "strategy",
    "continue-on-error",
    "container",
    "services",
    "uses",
    "with",
    "secrets",
];
const STEP_KEYS: [&str; 11] = [
    "id",
    "if",
    "name",
    "uses",
    "run",
    "shell",
    "with",
    "env",
    "continue-on-error",
    "timeout-minutes",
    "working-directory",
];
const STRATEGY_KEYS: [&str; 3] = ["matrix", "fail-fast", "max-parallel"];
const EVENTS: [&str; 36] = [
    "branch_protection_rule",
    "check_run",
    "check_suite",
    "create",
    "delete",
    "deployment",
    "deployment_status",
    "discussion",
    "discussion_comment",
    "fork",
    "gollum",
    "issue_comment",
    "issues",
    "label",
    "merge_group",
    "milestone",
    "page_build",
    "public",
    "pull_request",
    "pull_request_review",
    "pull_request_review_comment",
    "pull_request_target",
    "push",
    "registry_package",
    "release",
    "repository_dispatch",
    "schedule",
    "status",
    "watch",
    "workflow_call",
    "workflow_dispatch",
    "workflow_run",
    "project",
    "project_card",
    "project_column",
    "member",
];
/// The default variables GitHub sets and `env:` cannot override.
const DEFAULT_VARS: [&str; 19] = [
    "GITHUB_ACTIONS",
    "GITHUB_WORKFLOW",
    "GITHUB_JOB",
    "GITHUB_WORKSPACE",
    "GITHUB_EVENT_NAME",
    "GITHUB_REF",
    "GITHUB_REF_NAME",
    "GITHUB_REF_TYPE",
    "GITHUB_SHA",
    "GITHUB_REPOSITORY",
    "GITHUB_REPOSITORY_OWNER",
    "GITHUB_ACTOR",
    "GITHUB_RUN_ID",
    "GITHUB_RUN_NUMBER",
    "GITHUB_RUN_ATTEMPT",
    "GITHUB_SERVER_URL",
    "GITHUB_API_URL",
    "RUNNER_OS",
    "RUNNER_ARCH",
];

/// A job's timeout when it sets none (GitHub's 360 minutes).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(360 * 60);

/// Whether `path` is in a `.github/workflows` folder.
pub fn is_workflow_path(path: &Path) -> bool {
    let parts: Vec<&std::ffi::OsStr> = path.iter().collect();
    parts.windows(2).any(|w| w[0] == ".github" && w[1] == "workflows")
}

/// Whether a file's top-level keys are a workflow's: `on:` and `jobs:`.
pub fn looks_like_workflow(source: &str) -> bool {
    let top: Vec<&str> = source
        .lines()
        .filter(|l| l.starts_with(|c: char| c.is_alphanumeric() || c == '"' || c == '\''))
        .filter_map(|l| l.split_once(':').map(|(k, _)| k.trim_matches(['"', '\'', ' '])))
        .collect();
    top.contains(&"on") && top.contains(&"jobs")
}

/// Why a matrix made at run time cannot join the run.
#[derive(Debug, thiserror::Error)]
pub enum MatrixError {
    #[error("no job `{0}` waits for its matrix")]
    NotWaiting(String),
    #[error("the workflow read again has no jobs for `{0}`")]
    NoJobs(String),
}

/// `pipeline` with job `placeholder` (a matrix made from needs' outputs)
/// replaced by the matrix's jobs of `read` (the workflow read again with
/// them); the jobs that needed it need all of them.
pub fn with_matrix(pipeline: &Pipeline, placeholder: &str, read: &Pipeline) -> Result<Pipeline, MatrixError> {
    let at = pipeline
        .job_index(placeholder)
        .filter(|&i| pipeline.jobs[i].matrix_later)
        .ok_or_else(|| MatrixError::NotWaiting(placeholder.to_string()))?;
    let id = pipeline.jobs[at].id.clone();
    // A matrix's jobs share its id; a call's jobs are named `caller / job`.
    let called = format!("{placeholder} / ");
    let made: Vec<Job> = read
        .jobs
        .iter()
        .filter(|j| !j.matrix_later)
        .filter(|j| (j.id == id && j.call == pipeline.jobs[at].call) || j.name.starts_with(&called))
        .cloned()
        .collect();
    if made.is_empty() {
        return Err(MatrixError::NoJobs(placeholder.to_string()));
    }
    let names: Vec<String> = made.iter().map(|j| j.name.clone()).collect();
    let mut new = pipeline.clone();
    new.jobs.splice(at..=at, made);
    for j in &mut new.jobs {
        if let Some(k) = j.depends_on.iter().position(|d| d == placeholder) {
            let pos = j.depends_on_pos.get(k).copied().unwrap_or(j.pos);
            j.depends_on.remove(k);
            if k < j.depends_on_pos.len() {
                j.depends_on_pos.remove(k);
            }
            for n in &names {
                j.depends_on.push(n.clone());
                j.depends_on_pos.push(pos);
            }
        }
    }
    Ok(new)
}

/// What a job waiting for [`with_matrix`] stands for, for messages: `the
/// matrix of build`, or `the call of deploy` (a reusable workflow whose
/// `with:` reads `needs`).
pub fn waiting_for(job: &Job) -> String {
    match job.facts.first() {
        Some((k, _)) if k == "calls" => format!("the call of {}", job.name),
        _ => format!("the matrix of {}", job.name),
    }
}

/// `pipeline` with job `placeholder` failing, saying `why` (its matrix
/// could not be made).
pub fn failing_matrix(pipeline: &Pipeline, placeholder: &str, why: &str) -> Pipeline {
    let mut p = pipeline.clone();
    if let Some(j) = p.jobs.iter_mut().find(|j| j.name == placeholder) {
        j.matrix_later = false;
        let what = if j.facts.first().is_some_and(|(k, _)| k == "calls") {
            "the call's jobs"
        } else {
            "the matrix"
        };
        let mut script: Vec<String> = format!("{what} cannot be made: {why}")
            .lines()
            .map(|l| format!("echo 'trackside: {}' >&2", l.replace('\'', "'\\''")))
            .collect();
        script.push("exit 1".into());
        j.steps = vec![Step {
            name: "matrix".into(),
            script,
            shell: Some(vec!["sh".into(), "-e".into(), "{0}".into()]),
            ..Step::default()
        }];
        j.actions.clear();
    }
    p
}

/// Whether `path` is a repository's `.github/workflows` folder.
pub fn is_workflows_folder(path: &Path) -> bool {
    let canonical = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    canonical.ends_with(".github/workflows")
}

/// Reads every workflow of a folder (`.github/workflows`) that the event
/// starts, as one run: with several, each job is named `workflow / job`.
/// Workflows that are only ever called (`on: workflow_call`) are left to
/// their callers. Every file is read and checked; the first with errors is
/// the answer, with its problems, and warnings of all are kept.
pub fn load_folder(dir: &Path, opts: &LoadOptions) -> Result<(Pipeline, Report), Report> {
    let mut files: Vec<std::path::PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "yml" || x == "yaml"))
            .collect(),
        Err(e) => {
            let mut r = Report::new(dir, String::new());
            r.items.push(file_error(
                format!("cannot read the folder {}: {e}", dir.display()),
                "name a workflow file, or the folder .github/workflows",
            ));
            return Err(r);
        }
    };
    files.sort();
    let mut loaded: Vec<(Pipeline, Report)> = Vec::new();
    for f in &files {
        let source = match super::read::read_source(f) {
            Ok(s) => s,
            Err(d) => {
                let mut r = Report::new(f, String::new());
                r.items.push(d);
                return Err(r);
            }
        };
        if only_called(&source) {
            continue;
        }
        loaded.push(parse_source(f, source, opts)?);
    }
    if loaded.is_empty() {
        let mut r = Report::new(dir, String::new());
        r.items.push(file_error(
            format!("no workflow in {} (a .yml file with `on:` and `jobs:`)", dir.display()),
            "name a workflow file, or add one under .github/workflows",
        ));
        return Err(r);
    }
    let started = loaded.iter().filter(|(p, _)| !p.jobs.is_empty()).count();
    // Two workflows of one name are told apart by their files: their jobs'
    // names (`workflow / job`) must not meet.
    let names: Vec<String> = loaded
        .iter()
        .filter(|(p, _)| !p.jobs.is_empty())
        .map(|(p, _)| p.name.clone())
        .collect();
    for (p, r) in loaded.iter_mut() {
        if names.iter().filter(|n| **n == p.name).count() > 1 {
            let file = r
                .file
                .file_name()
                .map_or_else(String::new, |f| f.to_string_lossy().into_owned());
            p.name = format!("{} ({file})", p.name);
        }
    }
    let mut merged: Option<(Pipeline, Report)> = None;
    for (mut p, r) in loaded {
        let Some((m, report)) = merged.as_mut() else {
            if started > 1 {
                prefix_jobs(&mut p);
            }
            merged = Some((p, r));
            continue;
        };
        // The other files' diagnostics point into their own sources.
        let base = report.includes.len() + 1;
        report.includes.push((r.file.clone(), r.source.clone()));
        report.includes.extend(r.includes.iter().cloned());
        for mut d in r.items {
            d.file = u16::try_from(base + usize::from(d.file)).unwrap_or(u16::MAX);
            report.items.push(d);
        }
        if p.jobs.is_empty() {
            continue;
        }
        if m.jobs.is_empty() {
            // The first file does not run for this event: this one leads.
            if started > 1 {
                prefix_jobs(&mut p);
            }
            *m = p;
            continue;
        }
        prefix_jobs(&mut p);
        m.name = format!("{}, {}", m.name, p.name);
        m.jobs.extend(p.jobs);
    }
    merged.ok_or_else(|| Report::new(dir, String::new()))
}

/// Names each job `workflow / job` (and what it waits for likewise).
fn prefix_jobs(p: &mut Pipeline) {
    let name = p.name.clone();
    for j in &mut p.jobs {
        j.name = format!("{name} / {}", j.name);
        for d in &mut j.depends_on {
            *d = format!("{name} / {d}");
        }
        if let Some(g) = &mut j.fail_fast_group {
            *g = format!("{name} / {g}");
        }
        if let Some((g, _)) = &mut j.parallel_limit {
            *g = format!("{name} / {g}");
        }
    }
}

/// A workflow that only ever runs when another calls it.
fn only_called(source: &str) -> bool {
    let Some(root) = yaml::parse(source).root else {
        return false;
    };
    match on_key(&root).map(|n| &n.value) {
        Some(Value::Str(s)) => s == "workflow_call",
        Some(Value::Seq(items)) => items.iter().all(|i| i.as_str() == Some("workflow_call")),
        Some(Value::Map(items)) => items.iter().all(|(k, _)| k.as_str() == Some("workflow_call")),
        _ => false,
    }
}

/// Reads a workflow file: the pipeline when nothing is wrong, else every
/// problem with its place.
pub fn parse_source(path: &Path, source: String, opts: &LoadOptions) -> Result<(Pipeline, Report), Report> {
    let source = checked_source(path, source)?;
    let mut report = Report::new(path, source);
    let pipeline = {
        let mut cx = Cx::new(&report.source);
        let parsed = yaml::parse(&report.source);
        cx.yaml_problems(parsed.problems);
        let p = match parsed.root {
            Some(root) => Workflow::new(&mut cx, opts, path).read(&root),
            None if cx.diags.iter().any(Diagnostic::is_error) => None,
            None => {
                cx.diags.push(file_error(
                    "the workflow file has no content".into(),
                    "a workflow needs `on:` and `jobs:`",
                ));
                None
            }
        };
        report.items = cx.diags;
        report.dropped = cx.dropped;
        // Actions' metadata files, for diagnostics that point into them.
        report.includes = cx.included.into_iter().map(|s| (s.path, s.text)).collect();
        p
    };
    finish(pipeline, report)
}

/// What GitHub's `github` context says of this run, from the repository
/// (`GITHUB_*` values the caller read from git, in `opts.ci_vars`).
fn github_context(opts: &LoadOptions, workflow: &str) -> Json {
    let mut github = default_github_context(opts, workflow);
    // `--event-payload`: the event GitHub would send, whole; a pull
    // request's branches come from it.
    if let (Some(payload), Some(g)) = (&opts.event_payload, github.as_object_mut()) {
        let pr = |side: &str| {
            payload
                .pointer(&format!("/pull_request/{side}/ref"))
                .and_then(Json::as_str)
                .map(str::to_string)
        };
        if let Some(head) = pr("head") {
            g.insert("head_ref".into(), Json::String(head));
        }
        if let Some(base) = pr("base") {
            g.insert("base_ref".into(), Json::String(base));
        }
        // A pull request's run is of its merge ref, as on GitHub.
        let event = g.get("event_name").and_then(Json::as_str).unwrap_or("");
        let number = payload
            .get("number")
            .or_else(|| payload.pointer("/pull_request/number"))
            .and_then(Json::as_u64);
        if let (true, Some(n)) = (event.starts_with("pull_request"), number) {
            g.insert("ref".into(), Json::String(format!("refs/pull/{n}/merge")));
            g.insert("ref_name".into(), Json::String(format!("{n}/merge")));
        }
        g.insert("event".into(), payload.clone());
    }
    github
}

fn default_github_context(opts: &LoadOptions, workflow: &str) -> Json {
    let get = |k: &str| opts.ci_vars.iter().rev().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let text = |k: &str, default: &str| Json::String(get(k).unwrap_or_else(|| default.to_string()));
    json!({
        "event_name": text("GITHUB_EVENT_NAME", "push"),
        "ref": text("GITHUB_REF", "refs/heads/main"),
        "ref_name": text("GITHUB_REF_NAME", "main"),
        "ref_type": text("GITHUB_REF_TYPE", "branch"),
        "sha": text("GITHUB_SHA", ""),
        "repository": text("GITHUB_REPOSITORY", ""),
        "repository_owner": text("GITHUB_REPOSITORY_OWNER", ""),
        "actor": text("GITHUB_ACTOR", ""),
        "triggering_actor": text("GITHUB_ACTOR", ""),
        "server_url": "https://github.com",
        "api_url": "https://api.github.com",
        "graphql_url": "https://api.github.com/graphql",
        "workflow": workflow,
        "run_id": text("GITHUB_RUN_ID", "1"),
        "run_number": text("GITHUB_RUN_NUMBER", "1"),
        "run_attempt": "1",
        "retention_days": "90",
        "action": "",
        // What a push event's payload says that the repository knows.
        "event": {
            "ref": text("GITHUB_REF", "refs/heads/main"),
            "after": text("GITHUB_SHA", ""),
            "repository": {
                "full_name": text("GITHUB_REPOSITORY", ""),
                "name": get("GITHUB_REPOSITORY").and_then(|r| r.rsplit('/').next().map(str::to_string)).unwrap_or_default(),
                "owner": {"login": text("GITHUB_REPOSITORY_OWNER", ""), "name": text("GITHUB_REPOSITORY_OWNER", "")},
            },
            "pusher": {"name": text("GITHUB_ACTOR", "")},
            "sender": {"login": text("GITHUB_ACTOR", "")},
        },
        "base_ref": "",
        "head_ref": "",
    })
}

pub fn runner_context() -> Json {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "X64",
        "aarch64" => "ARM64",
        "arm" => "ARM",
        "x86" => "X86",
        other => other,
    };
    json!({"os": "Linux", "arch": arch, "name": "trackside", "environment": "self-hosted"})
}

/// The known contexts, for one job (one matrix combination).
#[derive(Clone)]
struct Known {
    /// Shared: each step's own `Known` (its `env`) copies it otherwise,
    /// and it holds the event's payload.
    github: std::sync::Arc<Json>,
    runner: Json,
    matrix: Json,
    strategy: Json,
    /// The variables the workflow declares where the expression is, for
    /// what must be decided when it is read (a timeout, `continue-on-error`).
    env: Vec<(String, String)>,
    /// `--var-ctx`.
    vars: Json,
    /// The `inputs` context (a `workflow_dispatch`'s inputs).
    inputs: Json,
    /// The `needs` context where the run gave it (a matrix, or a reusable
    /// workflow's `with:`, made from needs' outputs); `Null` elsewhere.
    needs: Json,
}

/// The key `strategy` holds while a matrix waits for the jobs it needs.
const MATRIX_LATER: &str = "__matrix_later";

impl expr::Context for Known {
    fn root_ref(&self, name: &str) -> Option<&Json> {
        Some(match name {
            "github" => &self.github,
            "runner" => &self.runner,
            "matrix" => &self.matrix,
            "strategy" => &self.strategy,
            "vars" => &self.vars,
            "inputs" => &self.inputs,
            "needs" if !self.needs.is_null() => &self.needs,
            _ => return None,
        })
    }
    fn ignore_case(&self) -> bool {
        true
    }
    fn env(&self, name: &str) -> Option<String> {
        self.env.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }
    fn var(&self, _: &str) -> Option<String> {
        None
    }
    fn job_status(&self, _: &str) -> Option<String> {
        None
    }
    fn upstream_succeeded(&self) -> bool {
        true
    }
}

/// How a job's `run` steps run unless they say otherwise.
#[derive(Debug, Clone, Default)]
struct RunDefaults {
    shell: Option<Vec<String>>,
    working_directory: Option<String>,
}

/// A job as read, before its `needs` become the model's dependencies.
struct Instance {
    job: Job,
    needs: Vec<(String, Node)>,
}

struct Workflow<'c, 's> {
    cx: &'c mut Cx<'s>,
    github: Json,
    runner: Json,
    uses_checkout: bool,
    /// `runs-on` labels noted already (one note each).
    labels: Vec<String>,
    /// The repository's root: where `./` of a local action starts.
    root: std::path::PathBuf,
    /// The workflow's `env`, as declared.
    workflow_env: Vec<(String, String)>,
    /// The `vars` context (`--var-ctx`).
    vars: Json,
    /// The `inputs` context.
    inputs: Json,
    /// `--input NAME=VALUE`.
    given_inputs: Vec<(String, String)>,
    /// The composite action calls of the job being read.
    calls: Vec<crate::pipeline::model::ActionCall>,
    /// The calls being read, innermost last (indexes into `calls`).
    frames: Vec<usize>,
    /// The `env` the steps of the calls being read inherit.
    frame_env: Vec<EnvVar>,
    /// Where actions of other repositories are (`--actions-dir`).
    actions_dir: Option<std::path::PathBuf>,
    /// `LoadOptions::matrix_needs`.
    matrix_needs: Vec<(String, Json)>,
    /// The files the event changes, for `paths` filters.
    changed: super::ChangedFiles,
    /// JavaScript actions' post steps, by the call they follow, for the
    /// end of the job.
    posts: Vec<(usize, Step)>,
    /// The workflow's `env` (of the workflow being read: a called one's
    /// inside a call).
    workflow_env_vars: Vec<EnvVar>,
    /// Inside a called workflow: the calling job's id, and the secrets it
    /// passes (see `Job::secret_names`).
    call: Option<String>,
    secret_names: Option<Vec<(String, String)>>,
    /// The called workflows being read, outermost first (for cycles).
    calling: Vec<std::path::PathBuf>,
    /// `github` shared by the jobs, for what the run evaluates (made as
    /// the first job is read, once the context is complete).
    shared_github: Option<std::sync::Arc<Json>>,
    /// Each action.yml read, by path.
    actions_read: std::collections::HashMap<std::path::PathBuf, Option<action::Parsed>>,
    /// `--executor`: with `shell`, `container:` and `services:` are left out.
    executor: super::ExecutorChoice,
    /// `--platform LABEL=IMAGE`.
    platforms: Vec<(String, String)>,
    /// `--junit GLOB`: every job's JUnit reports.
    junit: Vec<String>,
}

impl<'c, 's> Workflow<'c, 's> {
    fn new(cx: &'c mut Cx<'s>, opts: &LoadOptions, path: &Path) -> Self {
        // Without `name:`, GitHub names a workflow by its file's path in
        // the repository.
        let text = path.to_string_lossy();
        let file = match text.find(".github/workflows/") {
            Some(i) => text[i..].to_string(),
            None => path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        };
        Workflow {
            cx,
            github: github_context(opts, &file),
            runner: runner_context(),
            uses_checkout: false,
            labels: Vec::new(),
            root: repository_root(opts, path),
            workflow_env: Vec::new(),
            vars: Json::Object(
                opts.context_vars
                    .iter()
                    .map(|(k, v)| (k.clone(), Json::String(v.clone())))
                    .collect(),
            ),
            inputs: json!({}),
            given_inputs: opts.inputs.clone(),
            calls: Vec::new(),
            frames: Vec::new(),
            frame_env: Vec::new(),
            actions_dir: opts.actions_dir.clone(),
            matrix_needs: opts.matrix_needs.clone(),
            changed: opts.changed_files.clone(),
            posts: Vec::new(),
            workflow_env_vars: Vec::new(),
            call: None,
            secret_names: None,
            calling: Vec::new(),
            shared_github: None,
            actions_read: std::collections::HashMap::new(),
            executor: opts.executor,
            platforms: opts.platforms.clone(),
            junit: opts.junit.clone(),
        }
    }

    fn read(&mut self, root: &Node) -> Option<Pipeline> {
        if !self.cx.mapping(root, "", &WORKFLOW_KEYS, "a workflow") {
            return None;
        }
        let name = match get(root, "name") {
            Some(n) => self.cx.string(n, "name"),
            None => self.github.get("workflow").and_then(Json::as_str).map(str::to_string),
        }
        .unwrap_or_else(|| "workflow".into());
        if let Some(w) = self.github.as_object_mut() {
            w.insert("workflow".into(), Json::String(name.clone()));
        }
        let not_run = match on_key(root) {
            Some(on) => {
                self.on(on);
                if self.github.get("event_name").and_then(Json::as_str) == Some("workflow_dispatch") {
                    self.dispatch_inputs(on);
                }
                self.not_triggered(on)
            }
            None => {
                self.cx.err(
                    root,
                    "on",
                    "missing `on`: the events the workflow runs on",
                    "add `on: push`",
                );
                None
            }
        };
        let known = Known {
            github: std::sync::Arc::new(self.github.clone()),
            runner: self.runner.clone(),
            matrix: Json::Null,
            strategy: Json::Null,
            env: Vec::new(),
            vars: self.vars.clone(),
            inputs: self.inputs.clone(),
            needs: Json::Null,
        };
        let global_env = match get(root, "env") {
            Some(n) => self.env(n, "env", &known, IN_WORKFLOW_ENV),
            None => Vec::new(),
        };
        self.workflow_env = declared(&global_env);
        // Each job carries the workflow's `env` (a called workflow's jobs
        // carry theirs, not their caller's).
        self.workflow_env_vars = global_env;
        let defaults = get(root, "defaults").map_or_else(RunDefaults::default, |n| self.defaults(n, "defaults"));
        let Some(jobs) = get(root, "jobs") else {
            self.cx
                .err(root, "jobs", "missing `jobs`", "add `jobs:` with at least one job");
            return None;
        };
        let Value::Map(items) = &jobs.value else {
            self.cx.err(
                jobs,
                "jobs",
                format!("`jobs` must be a mapping, found {}", jobs.type_name()),
                "write each job as `id:` with `runs-on:` and `steps:` under it",
            );
            return None;
        };
        if items.is_empty() {
            self.cx.err(
                jobs,
                "jobs",
                "`jobs` is empty",
                "add a job with `runs-on:` and `steps:`",
            );
        }
        let ids: Vec<String> = items.iter().map(|(k, _)| k.key_text()).collect();
        // Each job id's instances (a matrix job has several), in file order.
        let mut by_id: Vec<(String, Vec<String>)> = Vec::new();
        let mut instances: Vec<Instance> = Vec::new();
        for (k, v) in items {
            let id = k.key_text();
            let made = self.job(&id, k, v, &defaults, &ids);
            by_id.push((id, made.iter().map(|i| i.job.name.clone()).collect()));
            instances.extend(made);
        }
        let mut out = Vec::with_capacity(instances.len());
        for Instance { mut job, needs } in instances {
            // Unknown ones were reported where the job was read.
            for (need, node) in needs {
                if let Some((_, names)) = by_id.iter().find(|(id, _)| *id == need) {
                    for n in names {
                        job.depends_on.push(n.clone());
                        job.depends_on_pos.push(node.pos);
                    }
                }
            }
            out.push(job);
        }
        if let Some((node, why)) = not_run {
            // Read and checked all the same; nothing of it runs.
            self.cx.warn(
                &node,
                "on",
                format!("the workflow does not run: {why}"),
                "trackside runs what GitHub would run for this event; nothing here does",
            );
            out.clear();
        }
        Some(Pipeline {
            needs_key: "needs",
            preflight: Vec::new(),
            name,
            global_env: Vec::new(),
            timeout: super::model::DEFAULT_PIPELINE_TIMEOUT.max(DEFAULT_TIMEOUT),
            kill_grace: super::model::DEFAULT_KILL_GRACE,
            retry_policy: RetryPolicy::default(),
            jobs: out,
            undefined_is_empty: true,
            git_checkout: self.uses_checkout,
            stages: Vec::new(),
        })
    }

    /// `on:` — an event, a list of them, or a mapping of events with their
    /// filters. Checked; which event runs is `--event`'s matter (push).
    fn on(&mut self, on: &Node) {
        let check = |cx: &mut Cx, node: &Node, name: &str| {
            if !EVENTS.contains(&name) {
                cx.err(
                    node,
                    "on",
                    format!("invalid on: `{name}` is not an event GitHub knows"),
                    super::diag::suggestion_hint(name, &EVENTS, "events"),
                );
            }
        };
        match &on.value {
            Value::Str(s) => check(self.cx, on, s),
            Value::Seq(items) => {
                for i in items {
                    match i.as_str() {
                        Some(s) => check(self.cx, i, s),
                        None => self.cx.err(
                            i,
                            "on",
                            format!("invalid on: expected an event name, found {}", i.type_name()),
                            "write event names such as `push`",
                        ),
                    }
                }
            }
            Value::Map(items) => {
                for (k, v) in items {
                    let name = k.key_text();
                    check(self.cx, k, &name);
                    let path = join("on", &name);
                    match &v.value {
                        Value::Null => {}
                        Value::Map(filters) => {
                            for (fk, fv) in filters {
                                let f = fk.key_text();
                                let list = matches!(
                                    f.as_str(),
                                    "branches"
                                        | "branches-ignore"
                                        | "tags"
                                        | "tags-ignore"
                                        | "paths"
                                        | "paths-ignore"
                                        | "types"
                                );
                                if list {
                                    if !matches!(fv.value, Value::Seq(_) | Value::Str(_)) {
                                        self.cx.err(
                                            fv,
                                            &join(&path, &f),
                                            format!(
                                                "invalid on: `{f}` must be a list of patterns, found {}",
                                                fv.type_name()
                                            ),
                                            "write `[main, 'release/**']`",
                                        );
                                    }
                                } else if !matches!(f.as_str(), "inputs" | "outputs" | "secrets" | "workflows" | "cron")
                                {
                                    self.cx.err(fk, &join(&path, &f), format!("invalid on: unknown key `{f}` under `{name}`"), "filters are branches, branches-ignore, tags, tags-ignore, paths, paths-ignore and types");
                                }
                            }
                            let both = |a: &str, b: &str| get(v, a).is_some() && get(v, b).is_some();
                            for (a, b) in [
                                ("branches", "branches-ignore"),
                                ("tags", "tags-ignore"),
                                ("paths", "paths-ignore"),
                            ] {
                                if both(a, b)
                                    && let Some(n) = key_of(v, b)
                                {
                                    self.cx.err(
                                        n,
                                        &join(&path, b),
                                        format!("invalid on: `{a}` and `{b}` cannot both filter one event"),
                                        format!("use `{a}` with `!` patterns instead"),
                                    );
                                }
                            }
                        }
                        Value::Seq(_) if name == "schedule" => {}
                        _ => self.cx.err(
                            v,
                            &path,
                            format!(
                                "invalid on: `{name}` takes a mapping of filters, found {}",
                                v.type_name()
                            ),
                            "leave it empty, or give `branches:`, `paths:`, ...",
                        ),
                    }
                }
            }
            _ => self.cx.err(
                on,
                "on",
                format!(
                    "invalid on: expected an event, a list or a mapping, found {}",
                    on.type_name()
                ),
                "write `on: push`",
            ),
        }
    }

    /// A `workflow_dispatch`'s inputs: `--input` values, else their
    /// defaults, typed as GitHub types them in the `inputs` context
    /// (booleans and numbers) and as strings in `github.event.inputs`.
    fn dispatch_inputs(&mut self, on: &Node) {
        let spec = get(on, "workflow_dispatch").and_then(|d| get(d, "inputs"));
        let declared: Vec<(Node, Node)> = spec.map(|s| entries(s).to_vec()).unwrap_or_default();
        let mut typed = serde_json::Map::new();
        let mut strings = serde_json::Map::new();
        for (given, _) in &self.given_inputs {
            if !declared.iter().any(|(k, _)| k.key_text() == *given) {
                let names: Vec<String> = declared.iter().map(|(k, _)| k.key_text()).collect();
                let names: Vec<&str> = names.iter().map(String::as_str).collect();
                let at = spec.unwrap_or(on);
                self.cx.err(
                    at,
                    "on.workflow_dispatch.inputs",
                    format!("--input {given}: the workflow has no such input"),
                    super::diag::suggestion_hint(given, &names, "inputs"),
                );
            }
        }
        for (k, def) in &declared {
            let name = k.key_text();
            let path = format!("on.workflow_dispatch.inputs.{name}");
            let kind = get(def, "type").and_then(Node::as_str).unwrap_or("string").to_string();
            let given = self
                .given_inputs
                .iter()
                .rev()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.clone());
            let default = get(def, "default").map(Node::key_text);
            let required = get(def, "required").is_some_and(|r| matches!(r.value, Value::Bool(true)));
            let value = match (given, default) {
                (Some(v), _) | (None, Some(v)) => v,
                (None, None) if required => {
                    self.cx.err(
                        k,
                        &path,
                        format!("required input `{name}` is not given"),
                        format!("give it: --input {name}=VALUE"),
                    );
                    continue;
                }
                (None, None) if kind == "boolean" => "false".into(),
                (None, None) => String::new(),
            };
            let typed_value = match kind.as_str() {
                "boolean" => match value.as_str() {
                    "true" => Json::Bool(true),
                    "false" => Json::Bool(false),
                    other => {
                        self.cx.err(
                            k,
                            &path,
                            format!("input `{name}` is a boolean, given `{other}`"),
                            "give true or false",
                        );
                        continue;
                    }
                },
                "number" => match value.parse::<f64>() {
                    Ok(n) => number(n),
                    Err(_) => {
                        self.cx.err(
                            k,
                            &path,
                            format!("input `{name}` is a number, given `{value}`"),
                            "give a number",
                        );
                        continue;
                    }
                },
                "choice" => {
                    let options: Vec<String> = get(def, "options")
                        .map(|o| match &o.value {
                            Value::Seq(items) => items.iter().map(Node::key_text).collect(),
                            _ => Vec::new(),
                        })
                        .unwrap_or_default();
                    if !options.contains(&value) {
                        self.cx.err(
                            k,
                            &path,
                            format!("input `{name}` is one of {}, given `{value}`", options.join(", ")),
                            "give one of its options",
                        );
                        continue;
                    }
                    Json::String(value.clone())
                }
                _ => Json::String(value.clone()),
            };
            typed.insert(name.clone(), typed_value);
            strings.insert(name, Json::String(value));
        }
        self.inputs = Json::Object(typed);
        if let Some(event) = self.github.get_mut("event").and_then(Json::as_object_mut) {
            event.insert("inputs".into(), Json::Object(strings));
        }
    }

    /// Why the event (`github.event_name`, a push of `github.ref`) does not
    /// start the workflow, with the node that says so; `None` when it does.
    fn not_triggered(&mut self, on: &Node) -> Option<(Node, String)> {
        let event = self
            .github
            .get("event_name")
            .and_then(Json::as_str)
            .unwrap_or("push")
            .to_string();
        let ref_type = self
            .github
            .get("ref_type")
            .and_then(Json::as_str)
            .unwrap_or("branch")
            .to_string();
        let ref_name = self
            .github
            .get("ref_name")
            .and_then(Json::as_str)
            .unwrap_or("")
            .to_string();
        let filters = match &on.value {
            Value::Str(s) if *s == event => return None,
            Value::Seq(items) if items.iter().any(|i| i.as_str() == Some(event.as_str())) => return None,
            Value::Map(items) => match items.iter().find(|(k, _)| k.as_str() == Some(event.as_str())) {
                Some((_, f)) => f,
                None => return Some((on.clone(), format!("`on` does not list `{event}`"))),
            },
            _ => return Some((on.clone(), format!("`on` does not list `{event}`"))),
        };
        // `types:` against the payload's `action` (`--event-payload`); without
        // a payload the activity is not known and any type passes.
        let action = self
            .github
            .pointer("/event/action")
            .and_then(Json::as_str)
            .map(str::to_string);
        if let (Some(types), Some(action)) = (get(filters, "types"), &action) {
            let listed: Vec<String> = match &types.value {
                Value::Seq(items) => items.iter().map(Node::key_text).collect(),
                Value::Str(s) => vec![s.clone()],
                _ => Vec::new(),
            };
            if !listed.iter().any(|t| t == action) {
                return Some((types.clone(), format!("its `types` do not list `{action}`")));
            }
        }
        if !matches!(event.as_str(), "push" | "pull_request" | "pull_request_target") {
            return None;
        }
        // A pull request's branch filters are about its base branch.
        let base = self
            .github
            .get("base_ref")
            .and_then(Json::as_str)
            .filter(|b| !b.is_empty() && event != "push")
            .map(str::to_string);
        let ref_name = base.unwrap_or(ref_name);
        let (include, ignore, other) = if ref_type == "tag" {
            ("tags", "tags-ignore", ["branches", "branches-ignore"])
        } else {
            ("branches", "branches-ignore", ["tags", "tags-ignore"])
        };
        let listed = |key: &str| -> Option<(Node, Vec<String>)> {
            let n = get(filters, key)?;
            let items = match &n.value {
                Value::Seq(items) => items.iter().map(Node::key_text).collect(),
                Value::Str(s) => vec![s.clone()],
                _ => Vec::new(),
            };
            Some((n.clone(), items))
        };
        match (listed(include), listed(ignore)) {
            (Some((n, patterns)), _) if !filter_matches(&patterns, &ref_name) => {
                return Some((n, format!("`{ref_name}` matches none of `{include}`")));
            }
            (None, Some((n, patterns))) if filter_matches(&patterns, &ref_name) => {
                return Some((n, format!("`{ref_name}` matches `{ignore}`")));
            }
            (None, None) if other.iter().any(|k| get(filters, k).is_some()) => {
                let n = get(filters, other[0])
                    .or_else(|| get(filters, other[1]))
                    .unwrap_or(filters);
                return Some((
                    n.clone(),
                    format!(
                        "it filters only {}s, and this push is of a {ref_type}",
                        if ref_type == "tag" { "branche" } else { "tag" }
                    ),
                ));
            }
            _ => {}
        }
        // Path filters, against the files the push (or pull request)
        // changes: `paths` wants one of them to match, `paths-ignore` runs
        // unless every one matches.
        let (paths, ignore) = (listed("paths"), listed("paths-ignore"));
        if paths.is_none() && ignore.is_none() {
            return None;
        }
        let Some(files) = self.changed.get() else {
            let n = paths.as_ref().or(ignore.as_ref()).map_or(filters, |(n, _)| n);
            self.cx.warn(
                n,
                &format!("on.{event}"),
                "path filters are not checked: git cannot tell which files changed here",
                "in a git repository with a parent commit they are (or give --changes-from REF)",
            );
            return None;
        };
        if let Some((n, patterns)) = &paths
            && !files.iter().any(|f| filter_matches(patterns, f))
        {
            return Some((
                n.clone(),
                format!("none of the {} changed file(s) matches `paths`", files.len()),
            ));
        }
        // No file changed: GitHub does not run a workflow with path filters.
        if let Some((n, patterns)) = &ignore
            && files.iter().all(|f| filter_matches(patterns, f))
        {
            let why = match files.len() {
                0 => "no file changed".to_string(),
                n => format!("every changed file matches `paths-ignore` ({n})"),
            };
            return Some((n.clone(), why));
        }
        None
    }

    /// `env:` at any level: names and values as written (GitHub does not
    /// expand `$X` in them), known expressions evaluated.
    fn env(&mut self, node: &Node, path: &str, known: &Known, allowed: &[&str]) -> Vec<EnvVar> {
        let vars = self.cx.env_map_with(node, path);
        let mut out = Vec::with_capacity(vars.len());
        for (v, value_node) in vars {
            // GitHub's own `GITHUB_*` and `RUNNER_*` variables cannot be
            // overridden: GitHub sets them over what `env:` says.
            if DEFAULT_VARS.contains(&v.name.as_str()) {
                continue;
            }
            let value = self.text(&v.value, &value_node, &join(path, &v.name), known, allowed);
            if let Some(value) = value {
                out.push(EnvVar {
                    // `$` is literal in GitHub's values: escaped for the model.
                    value: value.replace('$', "$$").replace("$${{", "${{"),
                    ..v
                });
            }
        }
        out
    }

    fn defaults(&mut self, node: &Node, path: &str) -> RunDefaults {
        if !self.cx.mapping(node, path, &["run"], "defaults") {
            return RunDefaults::default();
        }
        let Some(run) = get(node, "run") else {
            return RunDefaults::default();
        };
        let rpath = join(path, "run");
        if !self
            .cx
            .mapping(run, &rpath, &["shell", "working-directory"], "defaults.run")
        {
            return RunDefaults::default();
        }
        RunDefaults {
            shell: get(run, "shell").and_then(|n| self.shell(n, &join(&rpath, "shell"))),
            working_directory: get(run, "working-directory")
                .and_then(|n| self.cx.string(n, &join(&rpath, "working-directory"))),
        }
    }

    /// `shell:` as the command line that runs the step's script (`{0}`).
    fn shell(&mut self, node: &Node, path: &str) -> Option<Vec<String>> {
        let text = self.cx.string(node, path)?;
        let argv: Vec<String> = match text.as_str() {
            "bash" => vec!["bash", "--noprofile", "--norc", "-eo", "pipefail", "{0}"],
            "sh" => vec!["sh", "-e", "{0}"],
            "python" => vec!["python", "{0}"],
            "pwsh" => vec!["pwsh", "-command", ". '{0}'"],
            "powershell" | "cmd" => {
                self.cx.err(node, path, format!("invalid shell: `{text}` runs on Windows runners only"), "use bash, sh, python or pwsh");
                return None;
            }
            custom if custom.contains("{0}") => custom.split_whitespace().collect(),
            other => {
                self.cx.err(
                    node,
                    path,
                    format!("invalid shell: `{other}`"),
                    "use bash, sh, python, pwsh, or a command line with `{0}` where the script's file goes (`perl {0}`)",
                );
                return None;
            }
        }
        .into_iter()
        .map(str::to_string)
        .collect();
        Some(argv)
    }

    /// A string whose known expressions are evaluated; `${{ env.X }}` is
    /// kept for the engine (`keep_env`), anything else is an error naming
    /// what trackside does not evaluate yet.
    fn text(&mut self, raw: &str, node: &Node, path: &str, known: &Known, allowed: &[&str]) -> Option<String> {
        self.text_with(raw, node, path, known, allowed, false)
    }

    /// The same for a value needed now (a timeout, a flag): `env` is read
    /// from what the workflow declares.
    fn value(&mut self, raw: &str, node: &Node, path: &str, known: &Known, allowed: &[&str]) -> Option<String> {
        self.text_with(raw, node, path, known, allowed, true)
    }

    fn text_with(
        &mut self,
        raw: &str,
        node: &Node,
        path: &str,
        known: &Known,
        allowed: &[&str],
        env_now: bool,
    ) -> Option<String> {
        let keep_runtime = !env_now;
        // Inside an action `inputs` is the call's: the run fills it.
        let in_action = !self.frames.is_empty();
        let runtime = action::runtime_roots(in_action);
        let is_known = |r: &str| {
            (KNOWN.contains(&r) && !(in_action && r == "inputs"))
                || (env_now && r == "env")
                || (r == "needs" && !known.needs.is_null())
        };
        let found = match expr::placeholders_in(raw, &LANG) {
            Ok(f) => f,
            Err(e) => {
                self.expr_error(raw, node, path, &e);
                return None;
            }
        };
        if found.is_empty() {
            return Some(raw.to_string());
        }
        let mut out = String::with_capacity(raw.len());
        let mut last = 0;
        for p in found {
            out.push_str(&raw[last..p.start]);
            last = p.end;
            let (mut roots, mut calls) = (Vec::new(), Vec::new());
            p.expr.names(&mut roots, &mut calls);
            if let Some((root, off)) = roots.iter().find(|(r, _)| !allowed.contains(&r.as_str())) {
                self.unavailable(raw, node, path, p.inner_start + off, root, allowed);
                return None;
            }
            let reads_paths = runtime_github(&p.expr);
            let unknown = roots.iter().find(|(r, _)| !is_known(r));
            let at_run = calls.iter().find(|(c, _)| AT_RUN_TIME.contains(&c.as_str()));
            if unknown.is_none() && at_run.is_none() && reads_paths.is_none() {
                match expr::eval(&p.expr, known) {
                    Ok(v) => out.push_str(&expr::to_text(&v)),
                    Err(e) => {
                        let e = expr::ExprError {
                            offset: e.offset + p.inner_start,
                            ..e
                        };
                        self.expr_error(raw, node, path, &e);
                        return None;
                    }
                }
                continue;
            }
            // Needs the run: evaluated as the step starts (`env` as
            // GITHUB_ENV left it, `steps` with the outputs so far,
            // `hashFiles()` over the workspace), with what is known now
            // folded in.
            let late_root = roots
                .iter()
                .find(|(r, _)| !(is_known(r) || (keep_runtime && runtime.contains(&r.as_str()))));
            if let Some((root, off)) = late_root {
                self.not_yet(raw, node, path, p.inner_start + off, &format!("the `{root}` context"));
                return None;
            }
            let late_call = calls
                .iter()
                .find(|(c, _)| AT_RUN_TIME.contains(&c.as_str()) && !(keep_runtime && c == "hashFiles"));
            if let Some((call, off)) = late_call {
                self.not_yet(raw, node, path, p.inner_start + off, &format!("`{call}()` here"));
                return None;
            }
            if let (Some(key), false) = (reads_paths, keep_runtime) {
                let field = key.split('.').nth(1).unwrap_or(key);
                let off = p.inner_start + raw[p.inner_start..p.end].find(field).unwrap_or(0);
                self.not_yet_with(
                    raw,
                    node,
                    path,
                    off,
                    &format!("`{key}` here"),
                    "only a step's run, env and with know the job's paths",
                );
                return None;
            }
            // `github.workspace` and `runner.temp` are the run's: their
            // context stays unfolded.
            let path_root = reads_paths.and_then(|k| k.split('.').next());
            let fold_known = |r: &str| is_known(r) && path_root != Some(r);
            let at_run_call = |c: &str| AT_RUN_TIME.contains(&c);
            match p.expr.fold(known, &fold_known, &at_run_call) {
                Ok(folded) => {
                    out.push_str("${{ ");
                    out.push_str(&folded.to_source());
                    out.push_str(" }}");
                }
                Err(e) => {
                    let e = expr::ExprError {
                        offset: e.offset + p.inner_start,
                        ..e
                    };
                    self.expr_error(raw, node, path, &e);
                    return None;
                }
            }
        }
        out.push_str(&raw[last..]);
        Some(out)
    }

    fn expr_error(&mut self, raw: &str, node: &Node, path: &str, e: &expr::ExprError) {
        let pos = self.cx.pos_at(node, raw, e.offset);
        let mut d = Diagnostic::error(pos, 1, path, format!("invalid expression: {}", e.message));
        d.hint = e
            .hint
            .clone()
            .or(Some("see GitHub's expression syntax (docs/github.md)".into()));
        if self.cx.room() {
            self.cx.diags.push(d);
        }
    }

    /// A context GitHub does not offer where it is read.
    fn unavailable(&mut self, raw: &str, node: &Node, path: &str, offset: usize, root: &str, allowed: &[&str]) {
        let pos = self.cx.pos_at(node, raw, offset);
        let d = Diagnostic::error(pos, root.len(), path, format!("unknown context `{root}` here")).with_hint(format!(
            "GitHub offers only {} here (its context availability table)",
            allowed.join(", ")
        ));
        if self.cx.room() {
            self.cx.diags.push(d);
        }
    }

    fn not_yet(&mut self, raw: &str, node: &Node, path: &str, offset: usize, what: &str) {
        self.not_yet_with(
            raw,
            node,
            path,
            offset,
            what,
            "docs/github.md lists what runs today; the github, matrix, strategy, runner, inputs, vars and env contexts do",
        );
    }

    fn not_yet_with(&mut self, raw: &str, node: &Node, path: &str, offset: usize, what: &str, hint: &str) {
        let pos = self.cx.pos_at(node, raw, offset);
        let d = Diagnostic::error(pos, 1, path, format!("trackside does not evaluate {what} yet")).with_hint(hint);
        if self.cx.room() {
            self.cx.diags.push(d);
        }
    }

    /// An `if:`: decided now when it reads only what is known when the
    /// workflow is read, else left to the run with what is known folded in
    /// (`later` names the contexts the run fills here). `None` when it is
    /// wrong (an error says why). The `${{ }}` around it may be left out,
    /// as GitHub allows.
    fn condition(
        &mut self,
        node: &Node,
        path: &str,
        known: &Known,
        allowed: &[&str],
        later: &[&str],
    ) -> Option<Decided> {
        let text = match &node.value {
            Value::Bool(b) => return Some(Decided::Now(*b)),
            _ => self.cx.string(node, path)?,
        };
        let trimmed = text.trim();
        let (inner, offset) = match trimmed.strip_prefix("${{").and_then(|t| t.strip_suffix("}}")) {
            Some(inner) if !inner.contains("${{") => (inner, text.find("${{").map_or(0, |i| i + 3)),
            // `${{ }}` inside other text: the whole is a string, true
            // when it is not empty (GitHub's rule).
            _ if text.contains("${{") => {
                let s = self.value(&text, node, path, known, allowed)?;
                return Some(Decided::Now(!s.is_empty()));
            }
            _ => (text.as_str(), 0),
        };
        let e = match expr::parse_in(inner, &LANG) {
            Ok(e) => e,
            Err(e) => {
                let e = expr::ExprError {
                    offset: e.offset + offset,
                    ..e
                };
                self.expr_error(&text, node, path, &e);
                return None;
            }
        };
        let (mut roots, mut calls) = (Vec::new(), Vec::new());
        e.names(&mut roots, &mut calls);
        if let Some((root, off)) = roots.iter().find(|(r, _)| !allowed.contains(&r.as_str())) {
            self.unavailable(&text, node, path, offset + off, root, allowed);
            return None;
        }
        if let Some((root, off)) = roots
            .iter()
            .find(|(r, _)| !KNOWN.contains(&r.as_str()) && !later.contains(&r.as_str()))
        {
            self.not_yet(&text, node, path, offset + off, &format!("the `{root}` context"));
            return None;
        }
        // `hashFiles()` and the workspace's paths are a step's, not a job's.
        let step_level = later.contains(&"steps");
        if let Some((call, off)) = calls.iter().find(|(c, _)| c == "hashFiles" && !step_level) {
            self.not_yet(&text, node, path, offset + off, &format!("`{call}()` in a job's `if:`"));
            return None;
        }
        let path_root = runtime_github(&e)
            .filter(|_| step_level)
            .and_then(|k| k.split('.').next());
        let in_action = !self.frames.is_empty();
        let is_known = |r: &str| KNOWN.contains(&r) && !(in_action && r == "inputs") && path_root != Some(r);
        let at_run = |c: &str| AT_RUN_TIME.contains(&c);
        match e.fold(known, &is_known, &at_run) {
            Ok(Expr::Lit(v)) => Some(Decided::Now(expr::truthy(&v))),
            Ok(folded) => Some(Decided::Later(Condition {
                source: inner.trim().to_string(),
                expr: folded,
                pos: node.pos,
            })),
            Err(err) => {
                let err = expr::ExprError {
                    offset: err.offset + offset,
                    ..err
                };
                self.expr_error(&text, node, path, &err);
                None
            }
        }
    }

    fn job(&mut self, id: &str, key: &Node, node: &Node, defaults: &RunDefaults, ids: &[String]) -> Vec<Instance> {
        let path = join("jobs", id);
        let valid_id = id.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !valid_id {
            self.cx.err(
                key,
                &path,
                format!("invalid job id `{id}`"),
                "a job id starts with a letter or `_` and holds only letters, digits, `-` and `_`",
            );
        }
        if !self.cx.mapping(node, &path, &JOB_KEYS, &format!("job `{id}`")) {
            return Vec::new();
        }
        let calls = get(node, "uses");
        if calls.is_some() {
            reusable::caller_keys(self, node, &path);
        }
        if self.executor == super::ExecutorChoice::Shell {
            for k in ["container", "services"] {
                if let Some(n) = get(node, k) {
                    self.cx.warn(
                        n,
                        &join(&path, k),
                        format!("`--executor shell`: job `{id}` runs on this host, without its `{k}`"),
                        "leave out `--executor shell` to run it with Docker",
                    );
                }
            }
        }
        let runs_on = match get(node, "runs-on") {
            None if calls.is_some() => Some(String::new()),
            Some(n) => {
                let labels = self.runs_on(n, &join(&path, "runs-on"));
                if let Some(l) = &labels
                    && !self.labels.contains(l)
                    && get(node, "container").is_none()
                    && self.platform_for(l).is_none()
                {
                    self.labels.push(l.clone());
                    self.cx.warn(
                        n,
                        &join(&path, "runs-on"),
                        format!("runs-on `{l}`: its jobs run on this machine"),
                        "`--platform LABEL=IMAGE` runs a label's jobs in a container of IMAGE",
                    );
                }
                labels
            }
            None => {
                self.cx.err(
                    key,
                    &path,
                    format!("job `{id}` is missing runs-on"),
                    "add `runs-on: ubuntu-latest`",
                );
                None
            }
        };
        let needs: Vec<(String, Node)> = match get(node, "needs") {
            None => Vec::new(),
            Some(
                n @ Node {
                    value: Value::Str(s), ..
                },
            ) => vec![(s.clone(), n.clone())],
            Some(Node {
                value: Value::Seq(items),
                ..
            }) => items
                .iter()
                .filter_map(|i| match i.as_str() {
                    Some(s) => Some((s.to_string(), i.clone())),
                    None => {
                        self.cx.err(
                            i,
                            &join(&path, "needs"),
                            format!("`needs` entries are job ids, found {}", i.type_name()),
                            "write `needs: [build, test]`",
                        );
                        None
                    }
                })
                .collect(),
            Some(n) => {
                self.cx.err(
                    n,
                    &join(&path, "needs"),
                    format!("`needs` must be a job id or a list of them, found {}", n.type_name()),
                    "write `needs: [build, test]`",
                );
                Vec::new()
            }
        };
        for (need, n) in &needs {
            if need == id {
                self.cx.err(
                    n,
                    &join(&path, "needs"),
                    format!("job `{id}` needs itself: a cycle"),
                    "remove it from its own `needs`",
                );
            } else if !ids.contains(need) {
                let known: Vec<&str> = ids.iter().map(String::as_str).collect();
                self.cx.err(
                    n,
                    &join(&path, "needs"),
                    format!("`needs` names unknown job `{need}`"),
                    super::diag::suggestion_hint(need, &known, "jobs"),
                );
            }
        }
        let combos = match get(node, "strategy") {
            Some(s) => self.strategy(s, &join(&path, "strategy"), id),
            None => Some((Vec::new(), json!({}))),
        };
        let steps_node = match get(node, "steps") {
            Some(s) => Some(s),
            None if calls.is_some() => Some(node),
            None => {
                self.cx.err(
                    key,
                    &path,
                    format!("job `{id}` is missing steps"),
                    "add `steps:` with `- run: ...` items",
                );
                None
            }
        };
        let (Some((combos, strategy)), Some(steps_node), Some(runs_on)) = (combos, steps_node, runs_on) else {
            return Vec::new();
        };
        if let Some(u) = calls {
            return self.call_workflow(id, node, &path, u, needs, combos, strategy);
        }
        let job_defaults = get(node, "defaults").map_or_else(
            || defaults.clone(),
            |n| {
                let d = self.defaults(n, &join(&path, "defaults"));
                RunDefaults {
                    shell: d.shell.or_else(|| defaults.shell.clone()),
                    working_directory: d.working_directory.or_else(|| defaults.working_directory.clone()),
                }
            },
        );
        let total = combos.len().max(1);
        let matrixed = !combos.is_empty();
        let combos = if combos.is_empty() {
            vec![Combo::default()]
        } else {
            combos
        };
        // A matrix made from the outputs of the jobs it needs: one job
        // stands for it until they have run.
        let later = strategy.get(MATRIX_LATER).is_some();
        let mut out = Vec::with_capacity(combos.len());
        for (index, combo) in combos.iter().enumerate() {
            let known = self.known_for(
                id,
                matrixed.then_some(combo),
                &strategy,
                (index, total),
                self.workflow_env.clone(),
            );
            if let Some(job) = self.instance(
                id,
                node,
                &path,
                &known,
                combo,
                matrixed,
                &job_defaults,
                steps_node,
                &runs_on,
            ) {
                let mut job = job;
                job.matrix_later = later;
                out.push(Instance {
                    job,
                    needs: needs.clone(),
                });
            }
        }
        out
    }

    #[allow(clippy::too_many_arguments)]
    fn instance(
        &mut self,
        id: &str,
        node: &Node,
        path: &str,
        known: &Known,
        combo: &Combo,
        matrixed: bool,
        defaults: &RunDefaults,
        steps_node: &Node,
        runs_on: &str,
    ) -> Option<Job> {
        // Every key is read, so every mistake is reported at once.
        let name = match get(node, "name") {
            Some(n) => self.cx.string(n, &join(path, "name")).and_then(|raw| {
                let text = self.text(&raw, n, &join(path, "name"), known, IN_JOB)?;
                // GitHub adds the matrix values to a name that does not use them.
                Some(if matrixed && !raw.contains("matrix.") {
                    matrix::job_name(&text, combo)
                } else {
                    text
                })
            }),
            None if matrixed => Some(matrix::job_name(id, combo)),
            None => Some(id.to_string()),
        };
        let conditional = match get(node, "if") {
            Some(n) => self
                .condition(n, &join(path, "if"), known, IN_JOB_IF, &["needs"])
                .map(|d| match d {
                    Decided::Now(true) => None,
                    Decided::Now(false) => Some(never(n.as_str().map_or_else(|| n.key_text(), str::to_string), n.pos)),
                    Decided::Later(c) => Some(c),
                }),
            None => Some(None),
        };
        let mut environment = vec![
            ("CI", "true".to_string()),
            ("GITHUB_ACTIONS", "true".to_string()),
            ("GITHUB_JOB", id.to_string()),
            ("GITHUB_WORKSPACE", "${CI_PROJECT_DIR}".to_string()),
            ("RUNNER_OS", "Linux".to_string()),
        ];
        let gh = |k: &str| known.github.get(k).and_then(Json::as_str).unwrap_or("").to_string();
        for (var, key) in [
            ("GITHUB_WORKFLOW", "workflow"),
            ("GITHUB_EVENT_NAME", "event_name"),
            ("GITHUB_REF", "ref"),
            ("GITHUB_REF_NAME", "ref_name"),
            ("GITHUB_REF_TYPE", "ref_type"),
            ("GITHUB_SHA", "sha"),
            ("GITHUB_REPOSITORY", "repository"),
            ("GITHUB_REPOSITORY_OWNER", "repository_owner"),
            ("GITHUB_ACTOR", "actor"),
            ("GITHUB_RUN_ID", "run_id"),
            ("GITHUB_RUN_NUMBER", "run_number"),
            ("GITHUB_RUN_ATTEMPT", "run_attempt"),
            ("GITHUB_SERVER_URL", "server_url"),
            ("GITHUB_API_URL", "api_url"),
            ("GITHUB_HEAD_REF", "head_ref"),
            ("GITHUB_BASE_REF", "base_ref"),
        ] {
            environment.push((var, gh(key).replace('$', "$$")));
        }
        let arch = known
            .runner
            .get("arch")
            .and_then(Json::as_str)
            .unwrap_or("X64")
            .to_string();
        environment.push(("RUNNER_ARCH", arch));
        let mut environment: Vec<EnvVar> = environment
            .into_iter()
            .map(|(name, value)| EnvVar {
                name: name.to_string(),
                value,
                pos: node.pos,
            })
            .collect();
        environment.extend(self.workflow_env_vars.iter().cloned());
        let mut known = known.clone();
        if let Some(n) = get(node, "env") {
            let job_env = self.env(n, &join(path, "env"), &known, IN_JOB);
            known.env.extend(declared(&job_env));
            environment.extend(job_env);
        }
        let known = &known;
        let timeout = match get(node, "timeout-minutes") {
            Some(n) => self.minutes(n, &join(path, "timeout-minutes"), known, IN_JOB),
            None => Some(DEFAULT_TIMEOUT),
        };
        let allow_failure = match get(node, "continue-on-error") {
            Some(n) => self.flag(n, &join(path, "continue-on-error"), known, IN_JOB),
            None => Some(false),
        };
        // Shown as this job runs it (`${{ matrix.os }}` evaluated).
        let shown_on = expr::interpolate_in(runs_on, &LANG, known).unwrap_or_else(|_| runs_on.to_string());
        let mut facts = vec![("runs-on".to_string(), shown_on.clone())];
        if let Some(env) = get(node, "environment") {
            let name = match &env.value {
                Value::Map(_) => get(env, "name").and_then(|n| self.cx.string(n, &join(path, "environment.name"))),
                _ => self.cx.string(env, &join(path, "environment")),
            };
            if let Some(n) = name {
                facts.push(("environment".into(), n));
            }
        }
        let steps = self.steps(steps_node, &join(path, "steps"), known, defaults);
        let actions = std::mem::take(&mut self.calls);
        let in_docker = self.executor != super::ExecutorChoice::Shell;
        let boxed = match get(node, "container").filter(|_| in_docker) {
            Some(n) => self.container(n, &join(path, "container"), known),
            // `--platform`: the label's image, as a job container.
            None => Some(self.platform_for(&shown_on).map(|image| {
                let options = crate::pipeline::model::ContainerOptions {
                    job_container: true,
                    ..Default::default()
                };
                (image, options)
            })),
        };
        if self.executor == super::ExecutorChoice::Docker && matches!(boxed, Some(None)) {
            let at = get(node, "runs-on").unwrap_or(node);
            self.cx.err(
                at,
                &join(path, "runs-on"),
                format!("`--executor docker` runs every job in a container, and job `{id}` has none"),
                "add `container: IMAGE` to it, or map its label with `-P LABEL=IMAGE`; without `--executor docker` it runs on this machine",
            );
        }
        let services = match get(node, "services").filter(|_| in_docker) {
            Some(n) => self.services(n, &join(path, "services"), known),
            None => Some(Vec::new()),
        };
        // Shown with the job: where it runs and beside what.
        if let Some(Some((image, _))) = &boxed {
            facts.push(("container".into(), image.clone()));
        }
        if let Some(s) = services.as_ref().filter(|s| !s.is_empty()) {
            let names: Vec<String> = s.iter().map(|s| format!("{} ({})", s.name, s.image)).collect();
            facts.push(("services".into(), names.join(", ")));
        }
        let outputs = match get(node, "outputs") {
            Some(n) => self.outputs(n, &join(path, "outputs"), known),
            None => Some(Vec::new()),
        };
        let (group, cancel_in_progress) = match get(node, "concurrency") {
            Some(n) => match self.concurrency(n, &join(path, "concurrency"), known) {
                Some((g, c)) => (Some(g), c),
                None => (None, false),
            },
            None => (Some(None), false),
        };
        let (
            Some(name),
            Some(conditional),
            Some(timeout),
            Some(allow_failure),
            Some(steps),
            Some(outputs),
            Some(group),
            Some(boxed),
            Some(services),
        ) = (
            name,
            conditional,
            timeout,
            allow_failure,
            steps,
            outputs,
            group,
            boxed,
            services,
        )
        else {
            return None;
        };
        let (steps, container) = container::in_container(steps, boxed);
        // `max-parallel`: at most so many of the matrix's jobs at once.
        let parallel_limit = known
            .strategy
            .get("max-parallel")
            .and_then(Json::as_u64)
            .filter(|_| matrixed)
            .map(|n| (id.to_string(), usize::try_from(n).unwrap_or(usize::MAX)));
        Some(Job {
            name,
            steps,
            depends_on: Vec::new(),
            depends_on_pos: Vec::new(),
            environment,
            timeout,
            retry_count: 0,
            retry_when: Vec::new(),
            conditional: conditional.map(Box::new),
            when: super::model::When::OnSuccess,
            allow_failure,
            start_in: None,
            coverage: None,
            mirrors_upstream: false,
            facts,
            resource_group: group,
            cancel_in_progress,
            parallel_limit,
            file_vars: Vec::new(),
            settings_vars: Vec::new(),
            generated_child: None,
            allow_failure_exit_codes: Vec::new(),
            retry_exit_codes: Vec::new(),
            working_directory: None,
            container: container.into(),
            services,
            artifacts: None,
            needs_artifacts: None,
            cache: None,
            dir_caches: Vec::new(),
            deploy: None,
            stage: None,
            file_commands: true,
            strict_needs: true,
            matrix_later: false,
            fail_fast_group: (matrixed && known.strategy.get("fail-fast") != Some(&Json::Bool(false)))
                .then(|| id.to_string()),
            id: Some(id.to_string()),
            outputs,
            actions,
            call: self.call.clone(),
            call_outputs: Vec::new(),
            secret_names: self.secret_names.clone(),
            junit: self.junit.clone(),
            github: Some(self.shared_github.get_or_insert_with(|| known.github.clone()).clone()),
            pos: node.pos,
            ..Job::default()
        })
    }

    /// A job's `concurrency:` (a group name, or `{group, cancel-in-progress}`):
    /// its jobs run one at a time, as GitHub runs a concurrency group's,
    /// in this run and in other runs on the machine; with
    /// `cancel-in-progress: true` another run's job holding the group is
    /// cancelled instead (within one run, jobs of the group wait).
    fn concurrency(&mut self, node: &Node, path: &str, known: &Known) -> Option<(Option<String>, bool)> {
        let mut cancel = false;
        let (group_node, group_path) = match &node.value {
            Value::Map(_) => {
                if !self
                    .cx
                    .mapping(node, path, &["group", "cancel-in-progress"], "concurrency")
                {
                    return None;
                }
                match get(node, "cancel-in-progress").map(|c| (c, &c.value)) {
                    None | Some((_, Value::Bool(false))) => {}
                    Some((_, Value::Bool(true))) => cancel = true,
                    Some((c, _)) => self.cx.warn(
                        c,
                        &join(path, "cancel-in-progress"),
                        "`cancel-in-progress` is read only as `true` or `false` here",
                        "jobs of the group wait for one another instead",
                    ),
                }
                match get(node, "group") {
                    Some(g) => (g, join(path, "group")),
                    None => {
                        self.cx.err(
                            node,
                            path,
                            "missing `group` in `concurrency`",
                            "write `concurrency: {group: deploy}`",
                        );
                        return None;
                    }
                }
            }
            _ => (node, path.to_string()),
        };
        let raw = self.cx.string(group_node, &group_path)?;
        let group = self.value(&raw, group_node, &group_path, known, IN_JOB)?;
        Some(((!group.trim().is_empty()).then_some(group), cancel))
    }

    /// `outputs:` — names and their expressions, what is known evaluated
    /// now, the rest (`steps`, `env`, ...) when the job's steps have run.
    fn outputs(&mut self, node: &Node, path: &str, known: &Known) -> Option<Vec<(String, String)>> {
        let Value::Map(items) = &node.value else {
            self.cx.err(
                node,
                path,
                format!("`outputs` must be a mapping, found {}", node.type_name()),
                "write `name: ${{ steps.<id>.outputs.<name> }}` lines",
            );
            return None;
        };
        let mut out = Vec::new();
        let mut ok = true;
        for (k, v) in items {
            let name = k.key_text();
            let vpath = join(path, &name);
            match self
                .cx
                .string(v, &vpath)
                .and_then(|raw| self.text(&raw, v, &vpath, known, IN_STEP))
            {
                Some(text) => out.push((name, text)),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn runs_on(&mut self, node: &Node, path: &str) -> Option<String> {
        match &node.value {
            Value::Str(s) => Some(s.clone()),
            Value::Seq(items) => {
                let labels: Vec<String> = items.iter().filter_map(|i| self.cx.string(i, path)).collect();
                Some(labels.join(", "))
            }
            Value::Map(_) => {
                self.cx.mapping(node, path, &["group", "labels"], "runs-on");
                let group = get(node, "group").and_then(|n| self.cx.string(n, &join(path, "group")));
                let labels = get(node, "labels").and_then(|n| self.cx.string(n, &join(path, "labels")));
                Some(group.or(labels).unwrap_or_default())
            }
            _ => {
                self.cx.err(
                    node,
                    path,
                    format!(
                        "`runs-on` must be a label or a list of labels, found {}",
                        node.type_name()
                    ),
                    "write `runs-on: ubuntu-latest`",
                );
                None
            }
        }
    }

    /// `strategy:` — the matrix's combinations (none without a matrix) and
    /// the `strategy` context.
    /// `matrix: ${{ expression }}`: evaluated now when it reads what is
    /// known (`github`, `vars`, `inputs`), or, when it reads `needs`, once
    /// the jobs it needs have run (the engine reads the workflow again with
    /// their outputs in `LoadOptions::matrix_needs`); until then `strategy`
    /// says [`MATRIX_LATER`] and no combination is made.
    fn matrix_expression(
        &mut self,
        text: &str,
        m: &Node,
        path: &str,
        id: &str,
        mut context: Json,
    ) -> Option<(Vec<Combo>, Json)> {
        let Some(value) = self.matrix_value(text, m, path, id)? else {
            if let Some(c) = context.as_object_mut() {
                c.insert(MATRIX_LATER.into(), Json::Bool(true));
            }
            return Some((Vec::new(), context));
        };
        let Json::Object(map) = value else {
            self.cx.err(
                m,
                path,
                format!("the matrix expression made {}, not a mapping", expr::to_text(&value)),
                "it must make an object such as {\"os\": [\"a\", \"b\"]} or {\"include\": [...]}",
            );
            return None;
        };
        let mut keys = Vec::new();
        let (mut include, mut exclude) = (Vec::new(), Vec::new());
        for (k, v) in map {
            match k.as_str() {
                "include" | "exclude" => {
                    let combos = self.matrix_entries(&k, v, m, path)?;
                    if k == "include" {
                        include.extend(combos);
                    } else {
                        exclude.extend(combos);
                    }
                }
                _ => keys.push((k.clone(), self.matrix_list(&k, v, m, path)?)),
            }
        }
        match matrix::expand(&keys, &include, &exclude) {
            Ok(c) => Some((c, context)),
            Err(matrix::MatrixError::Empty) => {
                self.cx.err(
                    m,
                    path,
                    "the matrix expands to no jobs",
                    "the expression made an empty matrix",
                );
                None
            }
            Err(matrix::MatrixError::TooMany(n)) => {
                self.cx.err(
                    m,
                    path,
                    format!("the matrix expands to more than {} jobs ({n})", matrix::MAX_JOBS),
                    "GitHub allows 256 jobs per matrix",
                );
                None
            }
        }
    }

    /// One `${{ }}` of a matrix (the whole matrix, a key's values, or its
    /// `include`/`exclude`), evaluated: `Some(None)` when it reads `needs`
    /// and the jobs it needs have not run yet; `None` when the mistake was
    /// reported.
    fn matrix_value(&mut self, text: &str, m: &Node, path: &str, id: &str) -> Option<Option<Json>> {
        const IN_STRATEGY: &[&str] = &["github", "needs", "vars", "inputs"];
        let trimmed = text.trim();
        let inner = trimmed.strip_prefix("${{").and_then(|t| t.strip_suffix("}}"));
        let Some(inner) = inner.filter(|i| !i.contains("${{")) else {
            self.cx.err(
                m,
                path,
                "a matrix made by an expression is one `${{ ... }}` and nothing else",
                "write `matrix: ${{ fromJSON(needs.plan.outputs.matrix) }}` or `os: ${{ fromJSON(inputs.systems) }}`",
            );
            return None;
        };
        let offset = text.find("${{").map_or(0, |i| i + 3);
        let e = match expr::parse_in(inner, &LANG) {
            Ok(e) => e,
            Err(e) => {
                let e = expr::ExprError {
                    offset: e.offset + offset,
                    ..e
                };
                self.expr_error(text, m, path, &e);
                return None;
            }
        };
        let (mut roots, mut calls) = (Vec::new(), Vec::new());
        e.names(&mut roots, &mut calls);
        if let Some((root, off)) = roots.iter().find(|(r, _)| !IN_STRATEGY.contains(&r.as_str())) {
            self.unavailable(text, m, path, offset + off, root, IN_STRATEGY);
            return None;
        }
        let needs = self.matrix_needs.iter().find(|(j, _)| j == id).map(|(_, n)| n.clone());
        if roots.iter().any(|(r, _)| r == "needs") && needs.is_none() {
            return Some(None);
        }
        let known = Known {
            github: std::sync::Arc::new(self.github.clone()),
            runner: self.runner.clone(),
            matrix: Json::Null,
            strategy: Json::Null,
            env: Vec::new(),
            vars: self.vars.clone(),
            inputs: self.inputs.clone(),
            needs: needs.unwrap_or_else(|| json!({})),
        };
        match expr::eval(&e, &known) {
            Ok(v) => Some(Some(v)),
            Err(err) => {
                let err = expr::ExprError {
                    offset: err.offset + offset,
                    ..err
                };
                self.expr_error(text, m, path, &err);
                None
            }
        }
    }

    /// A matrix key's values as an expression made them: a list.
    fn matrix_list(&mut self, key: &str, value: Json, m: &Node, path: &str) -> Option<Vec<Json>> {
        match value {
            Json::Array(values) => Some(values),
            other => {
                self.cx.err(
                    m,
                    path,
                    format!(
                        "invalid matrix: `{key}` must be a list, the expression made {}",
                        expr::to_text(&other)
                    ),
                    "make each key a list of values",
                );
                None
            }
        }
    }

    /// `include` or `exclude` as an expression made it: a list of mappings.
    fn matrix_entries(&mut self, key: &str, value: Json, m: &Node, path: &str) -> Option<Vec<Combo>> {
        let Json::Array(items) = value else {
            self.cx.err(
                m,
                path,
                format!(
                    "invalid matrix: `{key}` must be a list of mappings, the expression made {}",
                    expr::to_text(&value)
                ),
                "make `[{\"os\": \"a\"}]`",
            );
            return None;
        };
        let mut out = Vec::new();
        for item in items {
            let Json::Object(kv) = item else {
                self.cx.err(
                    m,
                    path,
                    format!("invalid matrix: each `{key}` entry must be a mapping"),
                    "make `[{\"os\": \"a\"}]`",
                );
                return None;
            };
            out.push(Combo(kv.into_iter().collect()));
        }
        Some(out)
    }

    /// What is known of one job of `id`: matrix combination `combo`
    /// (number `index` of `total`), with `env` as the workflow declares it.
    fn known_for(
        &self,
        id: &str,
        combo: Option<&Combo>,
        strategy: &Json,
        (index, total): (usize, usize),
        env: Vec<(String, String)>,
    ) -> Known {
        let mut strategy = strategy.clone();
        if let Some(s) = strategy.as_object_mut() {
            s.insert("job-index".into(), json!(index));
            s.insert("job-total".into(), json!(total));
        }
        let mut github = self.github.clone();
        if let Some(g) = github.as_object_mut() {
            g.insert("job".into(), Json::String(id.to_string()));
        }
        Known {
            github: std::sync::Arc::new(github),
            runner: self.runner.clone(),
            matrix: combo.map_or_else(|| json!({}), Combo::to_json),
            strategy,
            env,
            vars: self.vars.clone(),
            inputs: self.inputs.clone(),
            needs: Json::Null,
        }
    }

    fn strategy(&mut self, node: &Node, path: &str, id: &str) -> Option<(Vec<Combo>, Json)> {
        if !self.cx.mapping(node, path, &STRATEGY_KEYS, "strategy") {
            return None;
        }
        let fail_fast = get(node, "fail-fast")
            .and_then(|n| self.cx.boolean(n, &join(path, "fail-fast")))
            .unwrap_or(true);
        let max_parallel =
            get(node, "max-parallel").and_then(|n| self.cx.int_in(n, &join(path, "max-parallel"), 1, 256));
        let context = json!({"fail-fast": fail_fast, "max-parallel": max_parallel.map_or(Json::Null, Json::from)});
        let Some(m) = get(node, "matrix") else {
            return Some((Vec::new(), context));
        };
        let mpath = join(path, "matrix");
        if let Some(text) = m.as_str().filter(|t| t.contains("${{")) {
            return self.matrix_expression(text, m, &mpath, id, context);
        }
        let Value::Map(items) = &m.value else {
            {
                self.cx.err(
                    m,
                    &mpath,
                    format!("invalid matrix: expected a mapping of lists, found {}", m.type_name()),
                    "write `matrix: {os: [ubuntu-latest], node: [18, 20]}`",
                );
            }
            return None;
        };
        let mut keys = Vec::new();
        let mut include = Vec::new();
        let mut exclude = Vec::new();
        let mut ok = true;
        // A key (or `include`) made from what the job needs: the matrix
        // waits for those jobs, as a whole matrix made by one does.
        let mut later = false;
        for (k, v) in items {
            let key = k.key_text();
            match key.as_str() {
                "include" | "exclude" if v.as_str().is_some_and(|t| t.contains("${{")) => {
                    let text = v.as_str().unwrap_or_default().to_string();
                    match self.matrix_value(&text, v, &join(&mpath, &key), id) {
                        None => ok = false,
                        Some(None) => later = true,
                        Some(Some(value)) => match self.matrix_entries(&key, value, v, &join(&mpath, &key)) {
                            Some(c) if key == "include" => include.extend(c),
                            Some(c) => exclude.extend(c),
                            None => ok = false,
                        },
                    }
                }
                "include" | "exclude" => {
                    let Value::Seq(entries_) = &v.value else {
                        self.cx.err(
                            v,
                            &join(&mpath, &key),
                            format!(
                                "invalid matrix: `{key}` must be a list of mappings, found {}",
                                v.type_name()
                            ),
                            "write `- {os: windows-latest, node: 20}` entries",
                        );
                        ok = false;
                        continue;
                    };
                    for e in entries_ {
                        let Value::Map(kv) = &e.value else {
                            self.cx.err(
                                e,
                                &join(&mpath, &key),
                                format!(
                                    "invalid matrix: each `{key}` entry must be a mapping, found {}",
                                    e.type_name()
                                ),
                                "write `- {os: windows-latest}`",
                            );
                            ok = false;
                            continue;
                        };
                        let combo = Combo(kv.iter().map(|(a, b)| (a.key_text(), to_json(b))).collect());
                        if key == "include" {
                            include.push(combo);
                        } else {
                            exclude.push(combo);
                        }
                    }
                }
                _ => match &v.value {
                    Value::Seq(values) => keys.push((key, values.iter().map(to_json).collect())),
                    Value::Str(text) if text.contains("${{") => {
                        let kpath = join(&mpath, &key);
                        match self.matrix_value(text, v, &kpath, id) {
                            None => ok = false,
                            Some(None) => later = true,
                            Some(Some(value)) => match self.matrix_list(&key, value, v, &kpath) {
                                Some(values) => keys.push((key, values)),
                                None => ok = false,
                            },
                        }
                    }
                    _ => {
                        self.cx.err(
                            v,
                            &join(&mpath, &key),
                            format!(
                                "invalid matrix: `{key}` must be a list of values, found {}",
                                v.type_name()
                            ),
                            format!("write `{key}: [a, b]`"),
                        );
                        ok = false;
                    }
                },
            }
        }
        // An exclusion names the matrix's own keys (GitHub rejects others),
        // known once every key is.
        if !later
            && let Some(Node {
                value: Value::Seq(list),
                ..
            }) = get(m, "exclude")
        {
            for e in list {
                for (k, _) in entries(e) {
                    let key = k.key_text();
                    if !keys.iter().any(|(name, _)| *name == key) {
                        let names: Vec<&str> = keys.iter().map(|(n, _)| n.as_str()).collect();
                        self.cx.err(
                            k,
                            &join(&mpath, "exclude"),
                            format!("invalid matrix: `exclude` names `{key}`, which is not a key of the matrix"),
                            super::diag::suggestion_hint(&key, &names, "matrix keys"),
                        );
                        ok = false;
                    }
                }
            }
        }
        if !ok {
            return None;
        }
        if later {
            let mut context = context;
            if let Some(c) = context.as_object_mut() {
                c.insert(MATRIX_LATER.into(), Json::Bool(true));
            }
            return Some((Vec::new(), context));
        }
        // Errors about the whole matrix point at its key.
        let at = key_of(node, "matrix").unwrap_or(m);
        match matrix::expand(&keys, &include, &exclude) {
            Ok(c) => Some((c, context)),
            Err(matrix::MatrixError::Empty) => {
                self.cx.err(
                    at,
                    &mpath,
                    "the matrix expands to no jobs",
                    "check `exclude`: it removes every combination (or a list is empty)",
                );
                None
            }
            Err(matrix::MatrixError::TooMany(n)) => {
                self.cx.err(
                    at,
                    &mpath,
                    format!("the matrix expands to more than {} jobs ({n})", matrix::MAX_JOBS),
                    "GitHub allows 256 jobs per matrix; split it or exclude combinations",
                );
                None
            }
        }
    }

    fn minutes(&mut self, node: &Node, path: &str, known: &Known, allowed: &[&str]) -> Option<Duration> {
        let value = match &node.value {
            Value::Int(i) => *i as f64,
            Value::Float(f) => *f,
            Value::Str(s) => {
                let t = self.value(s, node, path, known, allowed)?;
                match t.trim().parse::<f64>() {
                    Ok(v) => v,
                    Err(_) => {
                        self.cx.err(
                            node,
                            path,
                            format!("invalid timeout: `{t}` is not a number of minutes"),
                            "write `timeout-minutes: 10`",
                        );
                        return None;
                    }
                }
            }
            _ => f64::NAN,
        };
        if !(value.is_finite() && value > 0.0 && value <= 60.0 * 24.0 * 35.0) {
            self.cx.err(
                node,
                path,
                "invalid timeout: give a number of minutes above 0",
                "write `timeout-minutes: 10`",
            );
            return None;
        }
        Some(Duration::from_secs_f64(value * 60.0))
    }

    fn flag(&mut self, node: &Node, path: &str, known: &Known, allowed: &[&str]) -> Option<bool> {
        match &node.value {
            Value::Bool(b) => Some(*b),
            Value::Str(s) => {
                let t = self.value(s, node, path, known, allowed)?;
                match t.trim() {
                    "true" => Some(true),
                    "false" | "" => Some(false),
                    other => {
                        self.cx.err(
                            node,
                            path,
                            format!("expected true or false, found `{other}`"),
                            "write `true` or `false`",
                        );
                        None
                    }
                }
            }
            _ => self.cx.boolean(node, path),
        }
    }

    fn steps(&mut self, node: &Node, path: &str, known: &Known, defaults: &RunDefaults) -> Option<Vec<Step>> {
        let Value::Seq(items) = &node.value else {
            self.cx.err(
                node,
                path,
                format!("`steps` must be a list, found {}", node.type_name()),
                "write each step as `- run: ...`",
            );
            return None;
        };
        if items.is_empty() {
            self.cx
                .err(node, path, "missing steps: `steps` is empty", "add `- run: ...`");
            return None;
        }
        let mut ids: Vec<String> = Vec::new();
        let mut out = Vec::new();
        let mut ok = true;
        for (i, s) in items.iter().enumerate() {
            let spath = format!("{path}[{i}]");
            match self.step(s, &spath, known, defaults, &mut ids) {
                Some(steps) => out.extend(steps),
                None => ok = false,
            }
        }
        if !ok {
            return None;
        }
        // Post steps run at the end, last first (GitHub's order).
        let mut posts = Vec::new();
        for (i, step) in out.iter().enumerate().rev() {
            posts.extend(builtin::cache_post(step, i));
            if step.id.as_deref() == Some(action::JS_STEP)
                && let Some(k) = step.action
                && let Some(at) = self.posts.iter().position(|(c, _)| *c == k)
            {
                posts.push(self.posts.remove(at).1);
            }
        }
        self.posts.clear();
        out.extend(posts);
        if out.is_empty() {
            // Every step was left out (checkout only, or actions whose
            // `if:` is false).
            out.push(Step {
                name: "nothing to run".into(),
                script: vec![":".into()],
                ..Step::default()
            });
        }
        Some(out)
    }

    /// One step: `Some(None)` when it is not part of the run.
    fn step(
        &mut self,
        node: &Node,
        path: &str,
        known: &Known,
        defaults: &RunDefaults,
        ids: &mut Vec<String>,
    ) -> Option<Vec<Step>> {
        let keys: &[&str] = match self.frames.is_empty() {
            true => &STEP_KEYS,
            false => &action::COMPOSITE_STEP_KEYS,
        };
        if !self.cx.mapping(node, path, keys, "a step") {
            return None;
        }
        let mut step_id = None;
        if let Some(idn) = get(node, "id") {
            let id = self.cx.string(idn, &join(path, "id"))?;
            if ids.contains(&id) {
                self.cx.err(
                    idn,
                    &join(path, "id"),
                    format!("duplicate step id `{id}`"),
                    "step ids are unique within a job",
                );
                return None;
            }
            ids.push(id.clone());
            step_id = Some(id);
        }
        let (run, uses) = (get(node, "run"), get(node, "uses"));
        let run = match (run, uses) {
            (Some(_), Some(_)) => {
                let later = entries(node)
                    .iter()
                    .filter(|(k, _)| matches!(k.as_str(), Some("run" | "uses")))
                    .map(|(k, _)| k)
                    .next_back()
                    .unwrap_or(node);
                self.cx
                    .err(later, path, "a step has both run and uses", "split it into two steps");
                return None;
            }
            (None, None) => {
                self.cx.err(
                    node,
                    path,
                    "a step needs run or uses",
                    "add `run: <commands>` or `uses: owner/action@ref`",
                );
                return None;
            }
            (None, Some(u)) => {
                if let Some(w) = get(node, "with")
                    && !matches!(w.value, Value::Map(_) | Value::Null)
                {
                    self.cx.err(
                        w,
                        &join(path, "with"),
                        format!("`with` must be a mapping, found {}", w.type_name()),
                        "write one `input: value` per line under `with:`",
                    );
                    return None;
                }
                let action = self.cx.string(u, &join(path, "uses"))?;
                if let Some(local) = action.strip_prefix("./") {
                    return self.uses_local(node, path, u, local.trim_end_matches('/'), None, None, known, step_id);
                }
                if let Some(kind) = builtin::which(&action) {
                    let name = match get(node, "name") {
                        Some(n) => self
                            .cx
                            .string(n, &join(path, "name"))
                            .and_then(|raw| self.text(&raw, n, &join(path, "name"), known, IN_STEP))?,
                        None => format!("Run {action}"),
                    };
                    let later = action::runtime_roots(!self.frames.is_empty());
                    let condition = match get(node, "if") {
                        Some(c) => match self.condition(c, &join(path, "if"), known, IN_STEP_IF, &later)? {
                            Decided::Now(false) => {
                                let source = c.as_str().map_or_else(|| "false".to_string(), str::to_string);
                                Some(never(source, c.pos))
                            }
                            Decided::Now(true) => None,
                            Decided::Later(c) => Some(c),
                        },
                        None => None,
                    };
                    let continue_on_failure = match get(node, "continue-on-error") {
                        Some(n) => self.flag(n, &join(path, "continue-on-error"), known, IN_STEP)?,
                        None => false,
                    };
                    let step = Step {
                        name,
                        id: step_id,
                        condition: condition.map(Box::new),
                        continue_on_failure,
                        ..Step::default()
                    };
                    return self.builtin(node, path, kind, known, step).map(|s| vec![s]);
                }
                if action
                    .split('@')
                    .next()
                    .is_some_and(|a| a.eq_ignore_ascii_case("actions/checkout"))
                {
                    // The workspace is the checkout already.
                    self.uses_checkout = true;
                    return Some(Vec::new());
                }
                if let Some(image) = action.strip_prefix("docker://") {
                    if image.trim().is_empty() {
                        self.cx.err(
                            u,
                            &join(path, "uses"),
                            "`docker://` names no image",
                            "write `uses: docker://alpine:3.20`",
                        );
                        return None;
                    }
                    let image = image.trim().to_string();
                    return self.uses_local(node, path, u, &action, None, Some(image), known, step_id);
                }
                // An action of another repository: from the actions folder
                // `trackside actions pull` fills.
                if let Some(a) = crate::store::actions::ActionRef::parse(&action) {
                    let Some(root) = self.actions_dir.clone() else {
                        self.cx.err(
                            u,
                            &join(path, "uses"),
                            format!("trackside does not run actions from other repositories here: `{action}`"),
                            "`trackside run` finds them in its actions folder (--actions-dir)",
                        );
                        return None;
                    };
                    if !a.checkout(&root).is_dir() {
                        self.cx.err(
                            u,
                            &join(path, "uses"),
                            format!("action `{action}` is not in the actions folder ({})", root.display()),
                            format!("fetch it once: trackside actions pull {action} (add --from URL for a mirror or a local copy)"),
                        );
                        return None;
                    }
                    return self.uses_local(node, path, u, &a.name(), Some(a.dir(&root)), None, known, step_id);
                }
                self.cx.err(
                    u,
                    &join(path, "uses"),
                    format!("`uses: {action}` names no action"),
                    "write `./path` (a local action), `owner/repo@ref` or `docker://image`",
                );
                return None;
            }
            (Some(r), None) => r,
        };
        // Every field is read, so every mistake is reported at once.
        let later = action::runtime_roots(!self.frames.is_empty());
        let runs = match get(node, "if") {
            Some(c) => self.condition(c, &join(path, "if"), known, IN_STEP_IF, &later),
            None => Some(Decided::Now(true)),
        };
        let raw = self.cx.string(run, &join(path, "run"));
        let script_text = raw
            .as_deref()
            .and_then(|r| self.text(r, run, &join(path, "run"), known, IN_STEP));
        let name = match get(node, "name") {
            Some(n) => self
                .cx
                .string(n, &join(path, "name"))
                .and_then(|raw| self.text(&raw, n, &join(path, "name"), known, IN_STEP)),
            // GitHub's default: the command's first line (as evaluated).
            None => Some(format!(
                "Run {}",
                script_text.as_deref().unwrap_or("").lines().next().unwrap_or("").trim()
            )),
        };
        let shell = match get(node, "shell") {
            Some(n) => self.shell(n, &join(path, "shell")),
            // An action's `run` step says its shell.
            None if !self.frames.is_empty() => {
                self.cx.err(
                    run,
                    &join(path, "shell"),
                    "a composite action's `run` step needs `shell:`",
                    "add `shell: bash` to the step",
                );
                None
            }
            // Unspecified: `bash -e {0}` (GitHub's table of shells: no
            // pipefail unless `shell: bash` is asked for).
            None => Some(
                defaults
                    .shell
                    .clone()
                    .unwrap_or_else(|| ["bash", "-e", "{0}"].into_iter().map(str::to_string).collect()),
            ),
        };
        let environment = match get(node, "env") {
            Some(n) => self.env(n, &join(path, "env"), known, IN_STEP),
            None => Vec::new(),
        };
        let mut step_known = known.clone();
        step_known.env.extend(declared(&environment));
        let known = &step_known;
        let working_directory = match get(node, "working-directory") {
            Some(n) => self
                .cx
                .string(n, &join(path, "working-directory"))
                .and_then(|raw| self.text(&raw, n, &join(path, "working-directory"), known, IN_STEP))
                .map(Some),
            None => Some(defaults.working_directory.clone()),
        };
        let timeout = match get(node, "timeout-minutes") {
            Some(n) => self
                .minutes(n, &join(path, "timeout-minutes"), known, IN_STEP)
                .map(Some),
            None => Some(None),
        };
        let continue_on_failure = match get(node, "continue-on-error") {
            Some(n) => self.flag(n, &join(path, "continue-on-error"), known, IN_STEP),
            None => Some(false),
        };
        let (
            Some(runs),
            Some(script_text),
            Some(name),
            Some(shell),
            Some(working_directory),
            Some(timeout),
            Some(continue_on_failure),
        ) = (
            runs,
            script_text,
            name,
            shell,
            working_directory,
            timeout,
            continue_on_failure,
        )
        else {
            return None;
        };
        // A step whose `if:` is false stays, skipped: the log says so, and
        // later steps read its outcome (`skipped`).
        let condition = match runs {
            Decided::Now(false) => {
                let c = get(node, "if");
                let source = c
                    .and_then(|c| c.as_str().map(str::to_string))
                    .unwrap_or_else(|| "false".into());
                Some(never(source, c.map_or(node.pos, |c| c.pos)))
            }
            Decided::Now(true) => None,
            Decided::Later(c) => Some(c),
        };
        Some(vec![Step {
            condition: condition.map(Box::new),
            name,
            script: script_text.lines().map(str::to_string).collect(),
            environment,
            working_directory,
            timeout,
            continue_on_failure,
            shell: Some(shell),
            id: step_id,
            ..Step::default()
        }])
    }

    /// `uses: ./rel` (or an action of the actions folder, `pulled`): the
    /// steps of a composite or JavaScript action, read with the calling
    /// step's `id`, `if`, `name`, `env` and `continue-on-error`.
    #[allow(clippy::too_many_arguments)]
    fn uses_local(
        &mut self,
        node: &Node,
        path: &str,
        uses: &Node,
        rel: &str,
        pulled: Option<std::path::PathBuf>,
        image: Option<String>,
        known: &Known,
        id: Option<String>,
    ) -> Option<Vec<Step>> {
        let later = action::runtime_roots(!self.frames.is_empty());
        let decided = match get(node, "if") {
            Some(c) => self.condition(c, &join(path, "if"), known, IN_STEP_IF, &later),
            None => Some(Decided::Now(true)),
        };
        let name = match get(node, "name") {
            Some(n) => self
                .cx
                .string(n, &join(path, "name"))
                .and_then(|raw| self.text(&raw, n, &join(path, "name"), known, IN_STEP))
                .map(Some),
            None => Some(None),
        };
        let env = match get(node, "env") {
            Some(n) => Some(self.env(n, &join(path, "env"), known, IN_STEP)),
            None => Some(Vec::new()),
        };
        let continue_on_error = match get(node, "continue-on-error") {
            Some(n) => self.flag(n, &join(path, "continue-on-error"), known, IN_STEP),
            None => Some(false),
        };
        // A JavaScript or Docker action is one step: its timeout applies.
        let timeout =
            get(node, "timeout-minutes").map(|t| (t, self.minutes(t, &join(path, "timeout-minutes"), known, IN_STEP)));
        let (Some(decided), Some(name), Some(env), Some(continue_on_error)) = (decided, name, env, continue_on_error)
        else {
            return None;
        };
        let Ok(condition) = action::condition_of(decided) else {
            // `if:` false now: the action is not part of the run (its file
            // is still checked).
            if image.is_none() {
                let _ = self.action_file(rel, uses, path);
            }
            return Some(Vec::new());
        };
        let mut step_known = known.clone();
        step_known.env.extend(declared(&env));
        let caller = action::Caller {
            node,
            path,
            uses,
            rel,
            pulled,
            id,
            name,
            condition,
            continue_on_error,
            env,
            image,
        };
        let mut steps = self.local_action(caller, &step_known)?;
        if let Some((node, limit)) = timeout {
            let limit = limit?;
            if steps.iter().all(|s| s.inputs_env) {
                for s in &mut steps {
                    s.timeout = Some(limit);
                }
            } else {
                self.cx.warn(
                    node,
                    &join(path, "timeout-minutes"),
                    "`timeout-minutes` of a step that calls a composite action is not applied",
                    "the job's timeout-minutes still holds; put it on the action's steps",
                );
            }
        }
        Some(steps)
    }
}

/// Paths only the run knows, as (context, key): `github.workspace`,
/// `github.action_path`, `runner.temp`, `runner.tool_cache`.
const RUN_PATHS: [(&str, &str); 5] = [
    ("github", "workspace"),
    ("github", "action_path"),
    ("github", "event_path"),
    ("runner", "temp"),
    ("runner", "tool_cache"),
];

/// The first of [`RUN_PATHS`] the expression reads, as `context.key`: the
/// contexts fixed when the workflow is read do not hold them.
fn runtime_github(e: &Expr) -> Option<&'static str> {
    match e {
        Expr::Member(obj, key) => {
            if let (Expr::Ident(root, _), Expr::Lit(Json::String(k))) = (&**obj, &**key) {
                for (r, name) in RUN_PATHS {
                    if root == r && k.eq_ignore_ascii_case(name) {
                        return Some(match name {
                            "workspace" => "github.workspace",
                            "action_path" => "github.action_path",
                            "event_path" => "github.event_path",
                            "temp" => "runner.temp",
                            _ => "runner.tool_cache",
                        });
                    }
                }
            }
            runtime_github(obj).or_else(|| runtime_github(key))
        }
        Expr::Bin(_, a, b) => runtime_github(a).or_else(|| runtime_github(b)),
        Expr::Not(a) | Expr::Filter(a) => runtime_github(a),
        Expr::Call(_, args, _) => args.iter().find_map(runtime_github),
        _ => None,
    }
}

/// A number as GitHub shows it: `10`, not `10.0`.
fn number(n: f64) -> Json {
    if n.fract() == 0.0 && n.abs() < 9.0e15 {
        Json::from(n as i64)
    } else {
        serde_json::Number::from_f64(n).map_or(Json::Null, Json::Number)
    }
}

/// An `if:` as read: decided, or left to the run.
enum Decided {
    Now(bool),
    Later(Condition),
}

/// A condition decided false when the workflow was read; `source` is
/// what the run says of it.
fn never(source: String, pos: yaml::Pos) -> Condition {
    Condition {
        source,
        expr: Expr::Lit(Json::Bool(false)),
        pos,
    }
}

/// Whether `name` passes a list of GitHub filter patterns: `*` within a
/// path segment, `**` across them, `?`, `[...]`, and `!` to take a match
/// back (the last pattern that matches decides).
fn filter_matches(patterns: &[String], name: &str) -> bool {
    let mut matched = false;
    for p in patterns {
        let (negated, p) = match p.strip_prefix('!') {
            Some(rest) => (true, rest),
            None => (false, p.as_str()),
        };
        let hit = globset::GlobBuilder::new(p)
            .literal_separator(true)
            .build()
            .is_ok_and(|g| g.compile_matcher().is_match(name));
        if hit {
            matched = !negated;
        }
    }
    matched
}

/// Where `./` paths of a workflow start: the project (the git work tree
/// the caller found), else the folder above `.github/workflows`, else the
/// workflow's own folder.
fn repository_root(opts: &LoadOptions, path: &Path) -> std::path::PathBuf {
    if let Some(d) = &opts.project_dir {
        return d.clone();
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    if is_workflow_path(path) {
        // `<root>/.github/workflows/file.yml`
        return dir
            .parent()
            .and_then(Path::parent)
            .unwrap_or(Path::new("."))
            .to_path_buf();
    }
    dir.to_path_buf()
}

/// Variables as declared (the model's `$$` back to `$`).
fn declared(vars: &[EnvVar]) -> Vec<(String, String)> {
    vars.iter()
        .map(|v| (v.name.clone(), v.value.replace("$$", "$")))
        .collect()
}

/// The key node of `key` in a mapping.
fn key_of<'n>(node: &'n Node, key: &str) -> Option<&'n Node> {
    entries(node)
        .iter()
        .find(|(k, _)| k.as_str() == Some(key))
        .map(|(k, _)| k)
}

/// The `on` key (`on:` is `true:` to a YAML 1.1 reader).
fn on_key(root: &Node) -> Option<&Node> {
    entries(root)
        .iter()
        .find(|(k, _)| matches!(&k.value, Value::Str(s) if s == "on") || matches!(k.value, Value::Bool(true)))
        .map(|(_, v)| v)
}

/// A YAML value as the JSON a matrix holds.
fn to_json(n: &Node) -> Json {
    match &n.value {
        Value::Null => Json::Null,
        Value::Bool(b) => Json::Bool(*b),
        Value::Int(i) => Json::from(*i),
        Value::Float(f) => serde_json::Number::from_f64(*f).map_or(Json::Null, Json::Number),
        Value::Str(s) => Json::String(s.clone()),
        Value::Seq(items) | Value::Reference(items) => Json::Array(items.iter().map(to_json).collect()),
        Value::Map(kv) => Json::Object(kv.iter().map(|(k, v)| (k.key_text(), to_json(v))).collect()),
    }
}

/// The plan of a workflow, for callers that only check it.
pub fn plan(p: &Pipeline) -> Result<Plan, Vec<Diagnostic>> {
    Plan::build(p)
}

#[cfg(test)]
mod tests;
