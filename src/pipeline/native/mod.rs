//! From a positioned YAML tree to a [`Pipeline`], collecting every problem.
//!
//! The parser never stops at the first mistake: each field is checked on its
//! own, a bad field is reported and skipped, and the cross-checks (job names,
//! variables, expressions, the graph) run on whatever could be read. So one
//! run of `trackside validate` lists everything there is to fix.
//!
//! This is the native dialect, trackside's own YAML (docs/pipeline-format.md),
//! read with the shared readers of [`crate::pipeline::read`]: the top level
//! and the cross-checks here, jobs and steps in `job`, files between jobs
//! (artifacts, caches) in `files`, containers and services in `container`,
//! deployments in `deploy`.

mod container;
mod deploy;
mod files;
mod job;

use std::path::Path;

use crate::pipeline::diag::{Diagnostic, Report, suggestion_hint};
use crate::pipeline::model::*;
use crate::pipeline::read::*;
use crate::pipeline::vars::{Scope, VarError};
use crate::pipeline::yaml::{self, Node, Pos, Value};

const TOP_KEYS: [&str; 7] = [
    "name",
    "global_env",
    "timeout",
    "retry_policy",
    "jobs",
    "kill_grace",
    "preflight",
];

/// Variables of the host that jobs see without being asked. `SHELL` is
/// the user's shell, as bash would otherwise look it up in the user
/// database at every start (a read of /etc/passwd, or a directory server).
pub const HOST_ALLOWLIST: [&str; 6] = ["PATH", "HOME", "USER", "SHELL", "LANG", "TZ"];

/// Names of the variables trackside defines for every job.
pub const PREDEFINED: [&str; 10] = [
    "CI",
    "TRACKSIDE",
    "CI_PIPELINE_ID",
    "CI_PIPELINE_NAME",
    "CI_JOB_NAME",
    "CI_JOB_ATTEMPT",
    "CI_JOB_STEP",
    "CI_PROJECT_DIR",
    "TRACKSIDE_RUN_DIR",
    "TRACKSIDE_EXE",
];

/// Which executor the run will use; decides what `image:` means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExecutorChoice {
    /// Steps with an image run in containers, the rest on the host.
    #[default]
    Auto,
    /// Everything runs on the host; an image is ignored with a warning.
    Shell,
    /// Everything runs in containers; every step needs an image.
    Docker,
}

/// What the command line adds to a pipeline.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// `--var K=V`, highest precedence.
    pub cli_vars: Vec<(String, String)>,
    /// Names given with `--secret`; their values are injected at run time.
    pub secret_names: Vec<String>,
    /// Host variables jobs may see: the allowlist plus `--pass-env`, as found in the host.
    pub host_env: Vec<(String, String)>,
    pub executor: ExecutorChoice,
    /// What the pipeline is created with, as GitLab's predefined variables
    /// (`CI_COMMIT_BRANCH`, `CI_PIPELINE_SOURCE`, ...): read from git by the
    /// caller; GitLab's `rules` and `only`/`except` are decided against them.
    pub ci_vars: Vec<(String, String)>,
    /// The dialect to read the file in; found from the file when unset.
    pub dialect: Option<crate::pipeline::Dialect>,
    /// The project a GitLab file belongs to (its git work tree): where
    /// `include:local`, `rules:exists` and `cache:key:files` look. The
    /// current folder when unset.
    pub project_dir: Option<std::path::PathBuf>,
    /// `--include-project GROUP/PROJECT=PATH`: local checkouts standing in
    /// for other projects' files (`include:project`, `include:component`).
    pub include_projects: Vec<(String, std::path::PathBuf)>,
    /// The project's files changed in this pipeline (for `rules:changes`).
    pub changed_files: ChangedFiles,
    /// The files changed since a ref (`rules:changes:compare_to`), asked of
    /// git by the caller; `None` when there is no such ref.
    pub changes_since: Option<ChangesSince>,
    /// Variables standing for a GitLab project's CI/CD settings (from
    /// gitlab-ci-local's variable files): above the file's, below `--var`.
    pub project_vars: Vec<(String, String)>,
    /// Which of `project_vars` are file variables (`type: file`).
    pub project_file_vars: Vec<String>,
    /// `--input NAME=VALUE`: values for the inputs of a GitLab file's own
    /// `spec:inputs` header.
    pub inputs: Vec<(String, String)>,
    /// `--var-ctx NAME=VALUE`: a GitHub workflow's `vars` context (the
    /// repository's configuration variables).
    pub context_vars: Vec<(String, String)>,
    /// GitHub workflows: the event's payload (`--event-payload`), which is
    /// `github.event`.
    pub event_payload: Option<serde_json::Value>,
    /// GitHub workflows: where `uses: owner/repo@ref` actions are
    /// (`trackside actions pull` fills it); `None`: nowhere.
    pub actions_dir: Option<std::path::PathBuf>,
    /// GitHub workflows: the `needs` context of jobs whose matrix is made
    /// from it, by job id, once the jobs they need have run.
    pub matrix_needs: Vec<(String, serde_json::Value)>,
    /// GitHub workflows: `--platform LABEL=IMAGE`, the jobs whose
    /// `runs-on` has LABEL run in a container of IMAGE (act's `-P`).
    pub platforms: Vec<(String, String)>,
    /// GitHub workflows: `--junit GLOB`, the JUnit reports every job's
    /// steps write (GitHub has no place to say so).
    pub junit: Vec<String>,
}

/// Asks git which files changed between `compare_to` and HEAD in `dir`.
pub type ChangesSince = fn(dir: &Path, compare_to: &str) -> Option<Vec<String>>;

/// The project's files changed in a pipeline (for `rules:changes`),
/// relative to the project: known, or asked of the caller's function the
/// first time a rule needs them (asking git costs several processes, and
/// most pipelines never ask). `None` when unknown, and then every `changes`
/// rule matches, as GitLab's do for a pipeline without a push.
#[derive(Clone, Default)]
pub struct ChangedFiles {
    files: std::sync::Arc<std::sync::OnceLock<Option<Vec<String>>>>,
    ask: Option<std::sync::Arc<dyn Fn() -> Option<Vec<String>> + Send + Sync>>,
}

impl ChangedFiles {
    pub fn known(files: Option<Vec<String>>) -> Self {
        Self {
            files: std::sync::Arc::new(std::sync::OnceLock::from(files)),
            ask: None,
        }
    }

    /// Asked of `ask` when first needed, once.
    pub fn asked(ask: impl Fn() -> Option<Vec<String>> + Send + Sync + 'static) -> Self {
        Self {
            files: Default::default(),
            ask: Some(std::sync::Arc::new(ask)),
        }
    }

    pub fn get(&self) -> Option<&[String]> {
        self.files
            .get_or_init(|| self.ask.as_ref().and_then(|ask| ask()))
            .as_deref()
    }
}

impl std::fmt::Debug for ChangedFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.files.get() {
            Some(files) => f.debug_tuple("ChangedFiles").field(files).finish(),
            None => f.write_str("ChangedFiles(not asked yet)"),
        }
    }
}

/// Parses and validates pipeline text already in memory.
pub fn parse_source(path: &Path, source: String, opts: &LoadOptions) -> Result<(Pipeline, Report), Report> {
    let source = checked_source(path, source)?;
    let mut report = Report::new(path, source);
    let pipeline = {
        let mut cx = Cx::new(&report.source);
        let p = if report.source.trim().is_empty() {
            cx.diags.push(file_error(
                "pipeline file is empty".into(),
                "start with `name: my-pipeline` and a `jobs:` mapping (see docs/pipeline-format.md)",
            ));
            None
        } else {
            let parsed = yaml::parse(&report.source);
            if parsed.root.is_none() && parsed.problems.is_empty() {
                cx.diags.push(file_error(
                    "pipeline file has no content: only comments or blank lines".into(),
                    "start with `name: my-pipeline` and a `jobs:` mapping (see docs/pipeline-format.md)",
                ));
            }
            cx.yaml_problems(parsed.problems);
            parsed.root.and_then(|root| cx.pipeline(&root, opts))
        };
        report.items = cx.diags;
        report.dropped = cx.dropped;
        p
    };
    finish(pipeline, report)
}

/// The `preflight:` of a settings file (`<state>/config.yml`): checks
/// every run of that state directory makes, besides its pipeline's.
/// Other keys are the settings' own business and not looked at here.
pub fn config_preflight(path: &Path, source: String) -> Result<Vec<crate::pipeline::model::Preflight>, Report> {
    let source = checked_source(path, source)?;
    let mut report = Report::new(path, source);
    let checks = {
        let mut cx = Cx::new(&report.source);
        let parsed = yaml::parse(&report.source);
        cx.yaml_problems(parsed.problems);
        let checks = parsed
            .root
            .as_ref()
            .and_then(|root| get(root, "preflight"))
            .map(|n| cx.preflight(n, "preflight"))
            .unwrap_or_default();
        report.items = cx.diags;
        checks
    };
    if report.items.iter().any(|d| d.is_error()) {
        return Err(report);
    }
    Ok(checks)
}

impl Cx<'_> {
    pub(crate) fn pipeline(&mut self, root: &Node, opts: &LoadOptions) -> Option<Pipeline> {
        if !self.mapping(root, "", &TOP_KEYS, "the pipeline") {
            return None;
        }
        let name = match get(root, "name") {
            Some(n) => self.string(n, "name").unwrap_or_default(),
            None => {
                self.diags.push(
                    Diagnostic::error(root.pos, 1, "", "missing required key `name`")
                        .with_hint("add `name: my-pipeline` at the top"),
                );
                String::new()
            }
        };
        let global_env = get(root, "global_env")
            .map(|n| self.env_map(n, "global_env"))
            .unwrap_or_default();
        let timeout = get(root, "timeout")
            .and_then(|n| self.seconds_in(n, "timeout", 1.0, 7.0 * 86400.0))
            .unwrap_or(DEFAULT_PIPELINE_TIMEOUT);
        let kill_grace = get(root, "kill_grace")
            .and_then(|n| self.seconds_in(n, "kill_grace", 0.0, 3600.0))
            .unwrap_or(DEFAULT_KILL_GRACE);
        let retry_policy = get(root, "retry_policy")
            .map(|n| self.retry_policy(n))
            .unwrap_or_default();
        let preflight = get(root, "preflight")
            .map(|n| self.preflight(n, "preflight"))
            .unwrap_or_default();

        let mut jobs = Vec::new();
        match get(root, "jobs") {
            None => self.diags.push(
                Diagnostic::error(root.pos, 1, "", "missing required key `jobs`")
                    .with_hint("add a `jobs:` mapping with at least one job"),
            ),
            Some(node) => match &node.value {
                Value::Map(items) if !items.is_empty() => {
                    for (k, v) in items {
                        if let Some(job) = self.job(k, v, &retry_policy) {
                            jobs.push(job);
                        }
                    }
                }
                Value::Map(_) => self.err(node, "jobs", "`jobs` has no jobs", "add at least one job under `jobs:`"),
                _ => self.err(
                    node,
                    "jobs",
                    format!(
                        "`jobs` must be a mapping with at least one job, found {}",
                        node.type_name()
                    ),
                    "write `jobs:` followed by indented `name:` entries",
                ),
            },
        }
        let pipeline = Pipeline {
            needs_key: "depends_on",
            preflight,
            name,
            global_env,
            timeout,
            kill_grace,
            retry_policy,
            jobs,
            undefined_is_empty: false,
            stages: Vec::new(),
            git_checkout: false,
        };
        self.cross_check(root, &pipeline, opts);
        Some(pipeline)
    }

    /// `preflight:`, a list of checks, each a one-key mapping:
    /// `{disk_free: {path, min}}`, `{memory_free: SIZE}`, `{docker: true}`,
    /// `{tcp: HOST:PORT}`, `{command: CMD}`.
    pub(crate) fn preflight(&mut self, node: &Node, path: &str) -> Vec<crate::pipeline::model::Preflight> {
        use crate::pipeline::model::Preflight;
        const KINDS: [&str; 5] = ["disk_free", "memory_free", "docker", "tcp", "command"];
        let Value::Seq(items) = &node.value else {
            self.err(
                node,
                path,
                format!("`preflight` must be a list, found {}", node.type_name()),
                "write `preflight: [{disk_free: {path: ., min: 5G}}, {tcp: registry.local:5000}]`",
            );
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let ipath = format!("{path}[{i}]");
            let kind = match &item.value {
                Value::Map(m) if m.len() == 1 => m[0].0.key_text(),
                _ => {
                    self.err(
                        item,
                        &ipath,
                        "a preflight check is a mapping of one key",
                        format!("one of {}", KINDS.join(", ")),
                    );
                    continue;
                }
            };
            // An unknown kind is reported (with the nearest) by `mapping`.
            if !self.mapping(item, &ipath, &KINDS, "a preflight check") || !KINDS.contains(&kind.as_str()) {
                continue;
            }
            let Some(v) = get(item, &kind) else { continue };
            let kpath = join(&ipath, &kind);
            let size = |cx: &mut Self, n: &Node, p: &str| -> Option<(u64, String)> {
                let text = match &n.value {
                    Value::Int(i) => i.to_string(),
                    Value::Str(s) => s.trim().to_string(),
                    _ => String::new(),
                };
                match crate::pipeline::read::parse_bytes(n) {
                    Some(b) if b > 0 => Some((b, text)),
                    _ => {
                        cx.err(n, p, "expected a size", "e.g. `5G`, `512MiB`");
                        None
                    }
                }
            };
            let check = match kind.as_str() {
                "disk_free" => {
                    if !self.mapping(v, &kpath, &["path", "min"], "`disk_free`") {
                        continue;
                    }
                    let dir = get(v, "path")
                        .and_then(|n| self.string(n, &join(&kpath, "path")))
                        .unwrap_or_else(|| ".".into());
                    let Some(min_node) = get(v, "min") else {
                        self.err(v, &kpath, "`disk_free` has no `min`", "write `{path: ., min: 5G}`");
                        continue;
                    };
                    let Some((min, min_text)) = size(self, min_node, &join(&kpath, "min")) else {
                        continue;
                    };
                    Preflight::DiskFree {
                        path: dir,
                        min,
                        min_text,
                    }
                }
                "memory_free" => {
                    let Some((min, min_text)) = size(self, v, &kpath) else {
                        continue;
                    };
                    Preflight::MemoryFree { min, min_text }
                }
                "docker" => match self.boolean(v, &kpath) {
                    Some(true) => Preflight::Docker,
                    _ => continue,
                },
                "tcp" => {
                    let Some(addr) = self.string(v, &kpath) else { continue };
                    let port_ok = addr
                        .rsplit_once(':')
                        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
                    if !port_ok {
                        self.err(
                            v,
                            &kpath,
                            format!("`{addr}` is not HOST:PORT"),
                            "e.g. `registry.local:5000`",
                        );
                        continue;
                    }
                    Preflight::Tcp(addr)
                }
                _ => {
                    let Some(cmd) = self.string(v, &kpath).filter(|c| !c.trim().is_empty()) else {
                        self.err(v, &kpath, "`command` is empty", "e.g. `command: ./scripts/check-env`");
                        continue;
                    };
                    Preflight::Command(cmd)
                }
            };
            out.push(check);
        }
        out
    }

    pub(crate) fn retry_policy(&mut self, node: &Node) -> RetryPolicy {
        let mut rp = RetryPolicy::default();
        if !self.mapping(node, "retry_policy", &["max_attempts", "backoff"], "retry_policy") {
            return rp;
        }
        if let Some(n) = get(node, "max_attempts") {
            rp.max_attempts = self.int_in(n, "retry_policy.max_attempts", 1, 6).unwrap_or(1);
        }
        if let Some(b) = get(node, "backoff") {
            let keys = ["initial", "max", "multiplier", "jitter"];
            if self.mapping(b, "retry_policy.backoff", &keys, "backoff") {
                if let Some(n) = get(b, "initial") {
                    rp.backoff.initial = self
                        .seconds_in(n, "retry_policy.backoff.initial", 0.0, 3600.0)
                        .unwrap_or(rp.backoff.initial);
                }
                if let Some(n) = get(b, "max") {
                    rp.backoff.max = self
                        .seconds_in(n, "retry_policy.backoff.max", 0.0, 86400.0)
                        .unwrap_or(rp.backoff.max);
                }
                for (key, lo, hi) in [("multiplier", 1.0, 10.0), ("jitter", 0.0, 1.0)] {
                    if let Some(n) = get(b, key) {
                        let v = match n.value {
                            Value::Int(i) => Some(i as f64),
                            Value::Float(f) => Some(f),
                            _ => None,
                        };
                        match v {
                            Some(v) if (lo..=hi).contains(&v) => {
                                if key == "multiplier" {
                                    rp.backoff.multiplier = v;
                                } else {
                                    rp.backoff.jitter = v;
                                }
                            }
                            _ => self.err(
                                n,
                                &format!("retry_policy.backoff.{key}"),
                                format!("`{key}` must be a number from {lo} to {hi}"),
                                format!("e.g. `{key}: {}`", if key == "multiplier" { "2" } else { "0.25" }),
                            ),
                        }
                    }
                }
            }
        }
        rp
    }
    /// Checks that need the whole pipeline: job references, variables, images.
    pub(crate) fn cross_check(&mut self, root: &Node, p: &Pipeline, opts: &LoadOptions) {
        let names: Vec<&str> = p.jobs.iter().map(|j| j.name.as_str()).collect();
        let known: std::collections::HashSet<&str> = names.iter().copied().collect();
        let job_nodes: std::collections::HashMap<String, &Node> = get(root, "jobs")
            .map(|n| entries(n).iter().map(|(k, v)| (k.key_text(), v)).collect())
            .unwrap_or_default();
        for job in &p.jobs {
            let path = format!("jobs.{}", job.name);
            let job_node = job_nodes.get(&job.name).copied();
            // depends_on
            if let Some(dnode) = job_node.and_then(|n| get(n, "depends_on")) {
                let items: Vec<&Node> = match &dnode.value {
                    Value::Seq(items) => items.iter().collect(),
                    _ => vec![dnode],
                };
                let mut seen: std::collections::HashSet<&str> = std::collections::HashSet::new();
                for (i, item) in items.iter().enumerate() {
                    let Some(dep) = item.as_str() else { continue };
                    let ipath = format!("{path}.depends_on[{i}]");
                    if dep == job.name {
                        self.err(
                            item,
                            &ipath,
                            format!("job `{dep}` depends on itself"),
                            "remove this entry: a job cannot wait for itself",
                        );
                    } else if !known.contains(dep) {
                        self.err(
                            item,
                            &ipath,
                            format!("unknown job `{dep}`"),
                            suggestion_hint(dep, &names, "jobs"),
                        );
                    } else if seen.contains(&dep) {
                        self.warn(
                            item,
                            &ipath,
                            format!("`{dep}` is listed twice"),
                            "remove the repeated entry",
                        );
                    }
                    seen.insert(dep);
                }
            }
            // needs_artifacts: direct dependencies only
            if let Some(needs) = &job.needs_artifacts {
                let n = job_node
                    .and_then(|n| get(n, "needs_artifacts"))
                    .cloned()
                    .unwrap_or_else(|| root.clone());
                for need in needs {
                    if !job.depends_on.contains(need) {
                        self.err(
                            &n,
                            &format!("{path}.needs_artifacts"),
                            format!("`{need}` is not in `depends_on` of job `{}`", job.name),
                            format!("artifacts come from jobs this one waits for: add `{need}` to depends_on"),
                        );
                    }
                }
            }
            // job references in the conditional
            if let Some(c) = &job.conditional {
                let mut refs = Vec::new();
                c.expr.job_refs(&mut refs);
                for (name, _) in refs {
                    if !known.contains(name.as_str()) {
                        let n = job_node.and_then(|n| get(n, "conditional"));
                        if let Some(n) = n {
                            self.err(
                                n,
                                &format!("{path}.conditional"),
                                format!("expression refers to unknown job `{name}`"),
                                suggestion_hint(&name, &names, "jobs"),
                            );
                        }
                    }
                }
            }
            // images
            if let Some(img) = job.image() {
                let n = job_node
                    .and_then(|n| get(n, "image"))
                    .or_else(|| {
                        job_node.and_then(|n| get(n, "steps")).and_then(|s| match &s.value {
                            Value::Seq(items) => items.iter().find_map(|st| get(st, "image")),
                            _ => None,
                        })
                    })
                    .unwrap_or(&job_node.map_or(root.clone(), Node::clone))
                    .clone();
                if opts.executor == ExecutorChoice::Shell {
                    self.warn(
                        &n,
                        &path,
                        format!(
                            "job `{}` names image `{img}`, which the shell executor ignores",
                            job.name
                        ),
                        "its steps run on this host with the host's tools",
                    );
                }
            }
            if opts.executor == ExecutorChoice::Shell && !job.services.is_empty() {
                let n = job_node
                    .and_then(|n| get(n, "services"))
                    .cloned()
                    .unwrap_or_else(|| root.clone());
                self.err(
                    &n,
                    &format!("{path}.services"),
                    format!("job `{}` has services, which need the container executor", job.name),
                    "drop `--executor shell`, or remove `services:`",
                );
            }
            if opts.executor == ExecutorChoice::Docker
                && let Some(step) = job.steps.iter().find(|s| s.image.is_none())
            {
                let n = job_node.cloned().unwrap_or_else(|| root.clone());
                self.err(
                    &n,
                    &path,
                    format!(
                        "step `{}` of job `{}` has no image, but `--executor docker` runs every step in a container",
                        step.name, job.name
                    ),
                    "give the job or step an `image:`, or use `--executor auto`",
                );
            }
        }
        self.check_variables(root, p, opts);
    }

    pub(crate) fn check_variables(&mut self, root: &Node, p: &Pipeline, opts: &LoadOptions) {
        let base = |extra: &[&[EnvVar]]| {
            let mut scope = Scope::new();
            scope.push_layer(opts.cli_vars.iter().cloned());
            scope.push_layer(opts.secret_names.iter().map(|n| (n.clone(), "secret".to_string())));
            for layer in extra {
                scope.push_layer(layer.iter().map(|v| (v.name.clone(), v.value.clone())));
            }
            scope.push_layer(PREDEFINED.iter().map(|n| (n.to_string(), "x".to_string())));
            scope.push_layer(opts.host_env.iter().cloned());
            scope
        };
        let report = |cx: &mut Self, vars: &[EnvVar], scope: &Scope, layer: usize, path: &str| {
            // A cycle is one mistake: report it at its first member only.
            let mut in_reported_cycle: Vec<String> = Vec::new();
            for v in vars {
                if in_reported_cycle.contains(&v.name) {
                    continue;
                }
                if let Err(e) = scope.resolve_from(&v.name, layer) {
                    if let VarError::Cycle(names) = &e {
                        in_reported_cycle.extend(names.iter().cloned());
                    }
                    cx.var_error(v, &join(path, &v.name), e);
                }
            }
        };
        // global_env: layers = cli, secrets, global
        let scope = base(&[&p.global_env]);
        report(self, &p.global_env, &scope, 2, "global_env");
        for job in &p.jobs {
            let path = format!("jobs.{}", job.name);
            let scope = base(&[&job.environment, &p.global_env]);
            report(self, &job.environment, &scope, 2, &join(&path, "environment"));
            for (i, step) in job.steps.iter().enumerate() {
                let spath = format!("{path}.steps[{i}]");
                let scope = base(&[&step.environment, &job.environment, &p.global_env]);
                report(self, &step.environment, &scope, 2, &join(&spath, "environment"));
                let wd = step.working_directory.as_ref().or(job.working_directory.as_ref());
                for (key, text) in [("working_directory", wd), ("image", step.image.as_ref())] {
                    if let Some(text) = text
                        && let Err(e) = scope.expand(text)
                    {
                        let node = jobs_field(root, &job.name, i, key).unwrap_or(Node {
                            value: Value::Null,
                            pos: job.pos,
                            width: job.name.len(),
                        });
                        self.err(&node, &join(&spath, key), e.to_string(), e.hint());
                    }
                }
            }
        }
    }

    pub(crate) fn var_error(&mut self, v: &EnvVar, path: &str, e: VarError) {
        let first_line = v.value.lines().next().unwrap_or("");
        // Point at the reference itself when it is on the first line.
        let (pos, width) = match &e {
            VarError::Undefined(name) => {
                let found = [format!("${{{name}"), format!("${name}")]
                    .iter()
                    .find_map(|pat| first_line.find(pat.as_str()).map(|at| (at, pat.len())));
                match found {
                    Some((at, len)) => {
                        let col = v.pos.col + first_line[..at].chars().count();
                        let len = if first_line[at..].starts_with("${") {
                            first_line[at..].find('}').map_or(len, |end| end + 1)
                        } else {
                            len
                        };
                        (Pos { col, ..v.pos }, len)
                    }
                    None => (v.pos, first_line.chars().count().max(1)),
                }
            }
            _ => (v.pos, first_line.chars().count().max(1)),
        };
        self.diags
            .push(Diagnostic::error(pos, width, path, e.to_string()).with_hint(e.hint()));
    }
}

/// The node of `key` in step `step` of job `job`, or in the job itself.
fn jobs_field(root: &Node, job: &str, step: usize, key: &str) -> Option<Node> {
    let job_node = get(root, "jobs").and_then(|n| get(n, job))?;
    let from_step = get(job_node, "steps").and_then(|s| match &s.value {
        Value::Seq(items) => items.get(step).and_then(|st| get(st, key)).cloned(),
        _ => None,
    });
    from_step.or_else(|| get(job_node, key).cloned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(src: &str) -> Result<Pipeline, Vec<(usize, usize, String)>> {
        parse_source(Path::new("t.yml"), src.to_string(), &LoadOptions::default())
            .map(|(p, _)| p)
            .map_err(|r| r.items.iter().map(|d| (d.line, d.column, d.message.clone())).collect())
    }

    #[test]
    fn a_cleanup_step_is_read_and_an_ordinary_step_keeps_its_old_definition() {
        let p = check(
            "name: t\njobs:\n  a:\n    steps:\n      - script: make\n      - cleanup: true\n        script: rm -rf tmp\n",
        )
        .unwrap();
        let steps = &p.jobs[0].steps;
        assert!(!steps[0].cleanup && steps[1].cleanup);
        // Cache keys hash each step's fields: a step without `cleanup` must
        // hash as it did before the key existed.
        let plain = serde_json::to_value(&steps[0]).unwrap();
        assert!(plain.get("cleanup").is_none(), "{plain}");
        assert_eq!(serde_json::to_value(&steps[1]).unwrap()["cleanup"], true);
        let bad =
            check("name: t\njobs:\n  a:\n    steps:\n      - cleanup: sometimes\n        script: x\n").unwrap_err();
        assert!(
            bad.iter()
                .any(|(l, c, m)| (*l, *c) == (5, 18) && m.contains("true or false")),
            "{bad:?}"
        );
    }

    #[test]
    fn minimal_pipeline_parses_with_defaults() {
        let p = check("name: x\njobs:\n  a:\n    steps:\n      - script: echo hi\n").unwrap();
        assert_eq!(p.jobs[0].steps[0].name, "step-1");
        assert_eq!(p.jobs[0].timeout, DEFAULT_JOB_TIMEOUT);
        assert_eq!(p.jobs[0].retry_when, FailureClass::TRANSIENT.to_vec());
        assert_eq!(p.timeout, DEFAULT_PIPELINE_TIMEOUT);
    }

    #[test]
    fn all_errors_are_collected_in_one_pass() {
        let src = "name: x\njobs:\n  a:\n    steps:\n      - script: echo\n    depends_on: [bb]\n    timeout: 0\n  b:\n    stepz: []\n";
        let errs = check(src).unwrap_err();
        assert!(
            errs.iter().any(|e| e.0 == 6 && e.2.contains("unknown job `bb`")),
            "{errs:?}"
        );
        assert!(
            errs.iter().any(|e| e.0 == 7 && e.2.contains("out of range")),
            "{errs:?}"
        );
        assert!(
            errs.iter().any(|e| e.0 == 9 && e.2.contains("unknown key `stepz`")),
            "{errs:?}"
        );
        assert!(errs.iter().any(|e| e.2.contains("has no `steps`")), "{errs:?}");
    }

    #[test]
    fn another_formats_word_for_a_key_is_told_trackside_s() {
        let src = "name: x\njobs:\n  a:\n    steps:\n      - script: echo\n  b:\n    needs: [a]\n    steps:\n      - run: echo\n        env: {A: b}\n";
        let report = parse_source(Path::new("t.yml"), src.to_string(), &LoadOptions::default()).unwrap_err();
        let hint = |line: usize| {
            report
                .items
                .iter()
                .find(|d| d.line == line)
                .and_then(|d| d.hint.clone())
                .unwrap_or_default()
        };
        assert!(
            hint(7).starts_with("trackside's own format writes `needs` as `depends_on`"),
            "{}",
            hint(7)
        );
        assert!(hint(9).contains("`run` as `script`"), "{}", hint(9));
        assert!(hint(10).contains("`env` as `environment`"), "{}", hint(10));
        // A word no other format has still gets the closest key.
        let report = parse_source(
            Path::new("t.yml"),
            "name: x\njobs:\n  a:\n    stepz: []\n".to_string(),
            &LoadOptions::default(),
        )
        .unwrap_err();
        assert!(
            report.items.iter().any(|d| d
                .hint
                .as_deref()
                .is_some_and(|h| h.starts_with("did you mean `steps`?"))),
            "{:?}",
            report.items
        );
    }

    #[test]
    fn undefined_variable_points_at_its_value() {
        let src = "name: x\nglobal_env:\n  A: \"$NOPE\"\n  B: \"${NOPE2:-ok}\"\njobs:\n  a:\n    steps:\n      - script: echo\n";
        let errs = check(src).unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!((errs[0].0, errs[0].1), (3, 7));
        assert!(errs[0].2.contains("undefined variable `NOPE`"));
    }

    #[test]
    fn conditional_error_column_is_inside_the_string() {
        let src = "name: x\njobs:\n  a:\n    conditional: \"env.A = 'x'\"\n    steps:\n      - script: echo\n";
        let errs = check(src).unwrap_err();
        assert_eq!((errs[0].0, errs[0].1), (4, 25), "{errs:?}");
    }

    #[test]
    fn job_images_apply_to_steps_and_executors_check_them() {
        let src = "name: x\njobs:\n  a:\n    image: alpine\n    steps:\n      - script: echo\n  b:\n    steps:\n      - script: echo\n";
        let with = |executor| LoadOptions {
            executor,
            ..Default::default()
        };
        let (p, report) = parse_source(Path::new("t.yml"), src.into(), &with(ExecutorChoice::Auto)).unwrap();
        assert_eq!(p.jobs[0].steps[0].image.as_deref(), Some("alpine"));
        assert_eq!(report.warnings().count(), 0);
        let (_, report) = parse_source(Path::new("t.yml"), src.into(), &with(ExecutorChoice::Shell)).unwrap();
        assert_eq!(report.warnings().count(), 1, "the shell executor ignores the image");
        let errs = parse_source(Path::new("t.yml"), src.into(), &with(ExecutorChoice::Docker)).unwrap_err();
        assert!(errs.items[0].message.contains("step `step-1` of job `b` has no image"));
    }
}
