//! The GitLab CI dialect: a `.gitlab-ci.yml` read as GitLab reads it and
//! lowered into the one pipeline model, with every mistake reported at its
//! line and column.
//!
//! The one idea: GitLab's structure becomes the model's dependencies. A job
//! without `needs` waits for every job of the stages before its own (so
//! stages run in order, as in GitLab); `needs` replaces that with the jobs
//! it names. `rules`, `only`/`except` and `workflow:rules` are decided here,
//! when the pipeline is created, against the variables it is created with
//! (the command line's, the file's, and the git facts the caller gives), as
//! GitLab decides them when it creates a pipeline. `before_script` and
//! `script` run in one shell; `after_script` is a cleanup step (it runs
//! after a failure, a timeout or a cancel, and cannot fail the job).
//!
//! What needs GitLab's server (`include:` of other projects, templates and
//! components, `trigger`, `release`, `secrets`, ...) is refused or ignored
//! with a message saying so; docs/gitlab.md lists what is supported.

mod files;
mod include;
mod inputs;
pub mod localvars;
mod merge;
mod reference;
pub mod rules;
mod trigger;
pub use trigger::{GeneratedChildError, failing_trigger, with_generated_child};

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use crate::pipeline::diag::{Diagnostic, Report, suggestion_hint};
use crate::pipeline::model::*;
use crate::pipeline::native::LoadOptions;
use crate::pipeline::read::*;
use crate::pipeline::yaml::{self, Node, Value};

/// Keywords of the top level that are not jobs.
pub const GLOBAL_KEYS: [&str; 11] = [
    "default",
    "include",
    "stages",
    "variables",
    "workflow",
    "image",
    "services",
    "cache",
    "before_script",
    "after_script",
    "spec",
];

/// Every keyword GitLab documents for a job (for did-you-mean).
pub const JOB_KEYS: [&str; 37] = [
    "after_script",
    "allow_failure",
    "artifacts",
    "before_script",
    "cache",
    "coverage",
    "dast_configuration",
    "dependencies",
    "environment",
    "except",
    "extends",
    "hooks",
    "id_tokens",
    "identity",
    "image",
    "inherit",
    "interruptible",
    "manual_confirmation",
    "needs",
    "only",
    "pages",
    "parallel",
    "release",
    "resource_group",
    "retry",
    "rules",
    "run",
    "script",
    "secrets",
    "services",
    "stage",
    "start_in",
    "tags",
    "timeout",
    "trigger",
    "variables",
    "when",
];

/// Keywords of `default:`.
const DEFAULT_KEYS: [&str; 12] = [
    "after_script",
    "artifacts",
    "before_script",
    "cache",
    "hooks",
    "id_tokens",
    "image",
    "interruptible",
    "retry",
    "services",
    "tags",
    "timeout",
];

/// Keywords that only mean something on GitLab's server: a warning once,
/// otherwise ignored.
const SERVER_ONLY: [&str; 8] = [
    "release",
    "secrets",
    "id_tokens",
    "dast_configuration",
    "identity",
    "hooks",
    "pages",
    "manual_confirmation",
];

/// Keywords read and without effect on one machine (`tags` place jobs on
/// a swarm).
const NO_EFFECT: [&str; 1] = ["tags"];

/// Keywords trackside does not run yet: a warning, and the job runs without them.
const NOT_YET: [&str; 1] = ["run"];

/// How the "nothing runs" error begins (a child pipeline's is turned into
/// a failing trigger job).
const NO_JOB: &str = "no job would run";

/// GitLab's stages when a file names none.
const DEFAULT_STAGES: [&str; 3] = ["build", "test", "deploy"];

/// GitLab's default job timeout (a project's, unless changed there).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3600);
/// The longest a job's `timeout` may be (a month, GitLab's limit).
const MAX_TIMEOUT: Duration = Duration::from_secs(30 * 24 * 3600);

/// Most jobs one `parallel` makes (GitLab's limit).
const MAX_PARALLEL: usize = 200;

/// Whether `path` names a GitLab CI file by its name.
pub fn is_gitlab_file_name(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n == ".gitlab-ci.yml" || n.ends_with(".gitlab-ci.yml") || n == ".gitlab-ci.yaml")
}

/// Parses and validates a GitLab CI file already in memory.
pub fn parse_source(path: &Path, source: String, opts: &LoadOptions) -> Result<(Pipeline, Report), Report> {
    let source = checked_source(path, source)?;
    let mut report = Report::new(path, source);
    let pipeline = {
        let mut cx = Cx::new(&report.source);
        let parsed = yaml::parse_with(&report.source, yaml::Options { file: 0, header: true });
        cx.yaml_problems(parsed.problems);
        // The project's name, as GitLab shows it: the work tree's folder.
        let name = opts
            .ci_vars
            .iter()
            .find(|(k, _)| k == "CI_PROJECT_NAME")
            .map(|(_, v)| v.clone())
            .or_else(|| {
                let dir = path
                    .parent()
                    .filter(|d| !d.as_os_str().is_empty())
                    .unwrap_or(Path::new("."));
                let dir = dir.canonicalize().ok()?;
                dir.file_name().map(|n| n.to_string_lossy().into_owned())
            })
            .unwrap_or_else(|| "pipeline".into());
        let p = match (parsed.root, parsed.second) {
            (Some(root), None) => Gitlab::new(&mut cx, opts).read(root, None, path, name),
            (Some(header), Some(root)) => Gitlab::new(&mut cx, opts).read(root, Some(header), path, name),
            (None, _) if cx.diags.iter().any(Diagnostic::is_error) => None,
            (None, _) => {
                cx.diags.push(file_error(
                    "the GitLab CI file has no content".into(),
                    "add a job: `test:` with `script: [make test]` under it",
                ));
                None
            }
        };
        report.items = cx.diags;
        report.dropped = cx.dropped;
        report.includes = cx.included.into_iter().map(|s| (s.path, s.text)).collect();
        p
    };
    finish(pipeline, report)
}

/// A job as read, before it is lowered: what `needs` and stages refer to.
struct Read {
    name: String,
    /// The job's key in the file (for positions).
    key: Node,
    stage: String,
    /// `None`: wait for the stages before; `Some`: exactly these (by base name).
    needs: Option<Vec<Need>>,
    /// `dependencies`, as written: checked once every job is known.
    dependencies: Vec<(String, Node)>,
    job: Job,
    /// `parallel`: the instances' names and their own variables.
    instances: Vec<(String, Vec<EnvVar>)>,
    /// `trigger`: a child pipeline.
    trigger: Option<trigger::Trigger>,
}

struct Need {
    job: String,
    node: Node,
    artifacts: bool,
    optional: bool,
    /// `parallel:matrix`: only the instances with one of these sets of
    /// values (empty: every instance).
    matrix: Vec<Vec<(String, String)>>,
}

/// The reading of one file: the context and what the whole file shares.
struct Gitlab<'c, 's> {
    cx: &'c mut Cx<'s>,
    opts: &'c LoadOptions,
    /// Warned once each: a keyword without effect here.
    warned: HashSet<String>,
    /// The project's files, listed once when a wildcard or `exists` asks.
    files: Option<(std::path::PathBuf, files::ProjectFiles)>,
    /// 0 for the pipeline file, 1 for a child pipeline of it, ...
    depth: usize,
    /// What a child pipeline is created with besides the predefined
    /// variables (its trigger job's variables, `CI_PIPELINE_SOURCE`).
    pipeline_vars: Vec<(String, String)>,
    /// An `extends` could not be resolved (reported once, not again as a
    /// missing `script`).
    extends_failed: HashSet<String>,
    /// What inputs filled in so far, against a budget for all files.
    interpolated: usize,
    interpolation_spent: bool,
    /// Included files read so far, shared with child pipelines: one budget.
    includes: include::Included,
    /// Where `include: local` looks while reading an included file (the
    /// project the file came from); `None`: this project.
    include_root: Option<std::path::PathBuf>,
}

impl<'c, 's> Gitlab<'c, 's> {
    fn new(cx: &'c mut Cx<'s>, opts: &'c LoadOptions) -> Self {
        Gitlab {
            cx,
            opts,
            warned: HashSet::new(),
            files: None,
            depth: 0,
            pipeline_vars: Vec::new(),
            extends_failed: HashSet::new(),
            interpolated: 0,
            interpolation_spent: false,
            includes: include::Included::default(),
            include_root: None,
        }
    }

    /// The whole reading: the file's own `spec:` header (its inputs take
    /// their defaults), includes merged, `!reference` tags resolved, then
    /// the pipeline.
    fn read(&mut self, config: Node, header: Option<Node>, path: &Path, name: String) -> Option<Pipeline> {
        if let Some(h) = &header
            && get(h, "spec").is_none()
        {
            self.cx.err(
                h,
                "",
                "a GitLab CI file holds one YAML document, or a `spec:` header, `---`, then the configuration",
                "remove the `---` separator and everything before or after it",
            );
            return None;
        }
        if header.is_none()
            && let Some((k, _)) = entries(&config).iter().find(|(k, _)| k.as_str() == Some("spec"))
        {
            let alone = entries(&config).len() == 1;
            self.cx.err(
                k,
                "spec",
                if alone {
                    "the file has a `spec:` header and no configuration"
                } else {
                    "`spec:` is a header of its own: it comes first, ended by a line `---`"
                },
                "write `spec:` first, then a line `---`, then the jobs",
            );
            return None;
        }
        let spec = header.as_ref().and_then(|h| get(h, "spec")).cloned();
        let rel = path.display().to_string();
        let before = self.cx.diags.iter().filter(|d| d.is_error()).count();
        let given = self.command_line_inputs(spec.as_ref(), &config, &rel);
        if self.cx.diags.iter().filter(|d| d.is_error()).count() > before {
            return None;
        }
        let config = match &spec {
            Some(s) => {
                let filled = self.apply_inputs(config.clone(), Some(s), given.as_ref(), &config, "", &rel);
                if self.cx.diags.iter().filter(|d| d.is_error()).count() > before {
                    return None;
                }
                filled
            }
            None => config,
        };
        let mut state = std::mem::take(&mut self.includes);
        let merged = self.with_includes(&config, 0, &mut state);
        self.includes = state;
        let resolved = self.resolve_references(&merged, &merged, 0);
        self.pipeline(&resolved, name)
    }

    /// The project's files (listed once).
    fn project_files(&mut self, root: &Path) -> &files::ProjectFiles {
        if self.files.as_ref().is_none_or(|(r, _)| r != root) {
            let list = files::ProjectFiles::list(root);
            if list.truncated {
                self.cx.diags.push(
                    Diagnostic::warning(
                        yaml::Pos::at(1, 1),
                        1,
                        "",
                        format!(
                            "the project has more than {} files; wildcards and `exists` saw only the first",
                            files::MAX_FILES
                        ),
                    )
                    .with_hint("run from a smaller work tree, or narrow the patterns"),
                );
            }
            self.files = Some((root.to_path_buf(), list));
        }
        let (_, f) = self
            .files
            .get_or_insert_with(|| (root.to_path_buf(), files::ProjectFiles::list(root)));
        f
    }

    /// An `if:` expression decided against `get`; `None` when it has a
    /// mistake (reported at its column).
    fn condition(&mut self, cond: &Node, path: &str, get_var: &dyn Fn(&str) -> Option<String>) -> Option<bool> {
        let text = self.cx.string(cond, path)?;
        match rules::parse(&text) {
            Ok(e) => Some(e.eval(get_var)),
            Err(e) => {
                let pos = self.cx.pos_in(cond, e.offset);
                let mut d = Diagnostic::error(pos, 1, path, format!("in `if`: {}", e.message));
                d.hint = Some(e.hint.to_string());
                self.cx.diags.push(d);
                None
            }
        }
    }

    /// `rules:exists` (a list of globs, or `{paths, project, ref}`): whether
    /// any project file matches one of them.
    fn exists(&mut self, node: &Node, path: &str) -> bool {
        let patterns = self.path_patterns(node, path, &["paths", "project", "ref"]);
        if let Some(p) = get(node, "project") {
            self.warn_once(
                p,
                &join(path, "project"),
                "exists:project",
                "`exists:project` looks in another project on GitLab's server; trackside looks in this one".into(),
                "leave `project` out, or check the other project by hand",
            );
        }
        let root = self.project_dir();
        let files = self.project_files(&root);
        patterns.iter().any(|m| files.matching(m).next().is_some())
    }

    /// `rules:changes` (a list of globs, or `{paths, compare_to}`): whether
    /// any changed file matches. Unknown changes (no parent commit to
    /// compare with) match, as GitLab's do for a pipeline without a push.
    fn changes(&mut self, node: &Node, path: &str) -> bool {
        let patterns = self.path_patterns(node, path, &["paths", "compare_to"]);
        let changed = match get(node, "compare_to") {
            Some(c) => {
                let Some(reference) = self.cx.string(c, &join(path, "compare_to")) else {
                    return false;
                };
                let dir = self.project_dir();
                match self.opts.changes_since.and_then(|f| f(&dir, &reference)) {
                    Some(list) => Some(list),
                    None => {
                        self.cx.err(
                            c,
                            &join(path, "compare_to"),
                            format!("`compare_to: {reference}` is no ref of this repository"),
                            "name a branch, tag or commit that exists here (`git rev-parse REF` must find it)",
                        );
                        return false;
                    }
                }
            }
            None => self.opts.changed_files.get().map(<[String]>::to_vec),
        };
        match changed {
            None => true,
            Some(list) => list.iter().any(|f| patterns.iter().any(|m| m.is_match(f))),
        }
    }

    /// The glob patterns of `exists`/`changes`: a list, or a mapping with
    /// `paths` (and `keys` besides).
    fn path_patterns(&mut self, node: &Node, path: &str, keys: &[&str]) -> Vec<globset::GlobMatcher> {
        let (list_node, lpath) = match &node.value {
            Value::Map(_) => {
                if !self.cx.mapping(node, path, keys, "`exists`/`changes`") {
                    return Vec::new();
                }
                match get(node, "paths") {
                    Some(p) => (p.clone(), join(path, "paths")),
                    None => {
                        self.cx.err(
                            node,
                            path,
                            "this needs `paths:` (the files to look for)",
                            "add `paths: [src/**/*]`",
                        );
                        return Vec::new();
                    }
                }
            }
            _ => (node.clone(), path.to_string()),
        };
        let mut out = Vec::new();
        for (text, n) in self.cx.string_list(&list_node, &lpath) {
            let text = self.expand_job_free(&text);
            match files::glob(&text) {
                Ok(m) => out.push(m),
                Err(e) => self.cx.err(
                    &n,
                    &lpath,
                    format!("`{text}` is not a valid path pattern: {e}"),
                    "use `*` within a folder and `**` across folders",
                ),
            }
        }
        out
    }

    /// `$VAR` in a path pattern, from what the pipeline is created with.
    fn expand_job_free(&self, text: &str) -> String {
        include::expand_with(text, &self.include_vars())
    }

    fn warn_once(&mut self, node: &Node, path: &str, key: &str, msg: String, hint: &str) {
        if self.warned.insert(key.to_string()) {
            self.cx.warn(node, path, msg, hint.to_string());
        }
    }

    fn pipeline(&mut self, root: &Node, name: String) -> Option<Pipeline> {
        let Value::Map(entries) = &root.value else {
            self.cx.err(
                root,
                "",
                format!(
                    "a GitLab CI file is a mapping of jobs and keywords, found {}",
                    root.type_name()
                ),
                "start with a job: `test:` and `script: [make test]` under it",
            );
            return None;
        };
        let top = |k: &str| get(root, k);
        for key in ["image", "before_script", "after_script"] {
            if let Some(n) = top(key) {
                self.cx.warn(
                    n,
                    key,
                    format!("`{key}` at the top level is deprecated by GitLab"),
                    "it is read as `default:` would; move it under `default:`",
                );
            }
        }
        let stages = self.stages(top("stages"));
        // The file's variables, the command line's and the git facts: what
        // rules are decided against.
        let globals = top("variables")
            .map(|n| self.variables(n, "variables"))
            .unwrap_or_default();
        let mut created: Vec<(String, String)> = self.opts.ci_vars.clone();
        created.extend(globals.iter().map(|v| (v.name.clone(), v.value.clone())));
        created.extend(self.opts.project_vars.iter().cloned());
        created.extend(self.pipeline_vars.iter().cloned());
        created.extend(self.opts.cli_vars.iter().cloned());
        let mut workflow_vars = Vec::new();
        if let Some(wf) = top("workflow") {
            match self.workflow(wf, &created) {
                Some(vars) => workflow_vars = vars,
                None => return None,
            }
        }
        // `workflow:name`: `CI_PIPELINE_NAME`, with the variables the
        // pipeline is created with (the workflow rule's included). The run
        // keeps the project's name: caches and history are the project's.
        let pipeline_name = top("workflow")
            .and_then(|wf| get(wf, "name"))
            .and_then(|n| self.cx.string(n, "workflow.name"))
            .map(|text| {
                let vars: Vec<(String, String)> = created
                    .iter()
                    .cloned()
                    .chain(workflow_vars.iter().map(|v| (v.name.clone(), v.value.clone())))
                    .chain(self.opts.cli_vars.iter().cloned())
                    .collect();
                include::expand_with(&text, &vars)
            });
        // A job named like a top-level keyword: GitLab reads the keyword.
        // (Job keys beside the keyword's own are a mistake in the keyword.)
        let mut misnamed: Vec<&str> = Vec::new();
        for (k, v) in entries {
            let Some(key) = k.as_str().filter(|k| GLOBAL_KEYS.contains(k) && *k != "variables") else {
                continue;
            };
            let own: &[&str] = match key {
                "image" => &["name", "entrypoint", "docker", "pull_policy", "kubernetes"],
                "cache" => &[
                    "key",
                    "paths",
                    "untracked",
                    "when",
                    "policy",
                    "fallback_keys",
                    "unprotect",
                ],
                "default" => &DEFAULT_KEYS,
                "workflow" => &["rules", "name", "auto_cancel"],
                "include" => &[
                    "local",
                    "remote",
                    "file",
                    "project",
                    "template",
                    "component",
                    "rules",
                    "inputs",
                ],
                "spec" => &["inputs", "include", "component"],
                _ => &[],
            };
            let Value::Map(items) = &v.value else { continue };
            let job_like = ["script", "stage", "trigger", "extends"]
                .iter()
                .any(|w| get(v, w).is_some());
            if job_like
                && !items
                    .iter()
                    .any(|(ik, _)| ik.as_str().is_some_and(|ik| own.contains(&ik)))
            {
                self.cx.err(
                    k,
                    key,
                    format!("`{key}` is a GitLab keyword at the top level: it cannot name a job"),
                    format!("rename the job, for example `{key}-job:`"),
                );
                misnamed.push(key);
            }
        }
        // Defaults: `default:` and the deprecated top-level keys.
        let mut default_entries: Vec<(Node, Node)> = Vec::new();
        for key in ["image", "services", "cache", "before_script", "after_script"] {
            if misnamed.contains(&key) {
                continue;
            }
            if let Some((k, v)) = entries.iter().find(|(k, _)| k.as_str() == Some(key)) {
                default_entries.push((k.clone(), v.clone()));
            }
        }
        if let Some(d) = top("default")
            && self.cx.mapping(d, "default", &DEFAULT_KEYS, "`default`")
            && let Value::Map(de) = &d.value
        {
            for (k, v) in de {
                let word = k.key_text();
                if NOT_YET.contains(&word.as_str()) {
                    self.warn_once(
                        v,
                        &join("default", &word),
                        &word,
                        format!("`{word}` is not supported yet by trackside; jobs run without it"),
                        "see docs/gitlab.md for what is supported",
                    );
                }
            }
            for (k, v) in de {
                default_entries.retain(|(dk, _)| !dk.same_key(k));
                default_entries.push((k.clone(), v.clone()));
            }
        }
        // Jobs and hidden jobs.
        let mut defs: Vec<(String, Node)> = Vec::new();
        let mut keys: HashMap<String, Node> = HashMap::new();
        for (k, v) in entries {
            let key = k.key_text();
            if GLOBAL_KEYS.contains(&key.as_str()) {
                continue;
            }
            // A hidden key may hold anything (an anchor's list, say).
            if key.starts_with('.') && !matches!(v.value, Value::Map(_)) {
                continue;
            }
            if !matches!(v.value, Value::Map(_)) {
                let hint = if JOB_KEYS.contains(&key.as_str()) {
                    format!("`{key}` is a job keyword: indent it under a job")
                } else {
                    suggestion_hint(&key, &GLOBAL_KEYS, "top-level keywords")
                };
                self.cx.err(
                    k,
                    &key,
                    format!("`{key}` is neither a GitLab keyword nor a job (a job is a mapping with `script`)"),
                    hint,
                );
                continue;
            }
            keys.insert(key.clone(), k.clone());
            defs.push((key, v.clone()));
        }
        let merge::Resolved {
            jobs: resolved,
            problems,
            failed,
        } = merge::resolve_all(&defs);
        let mut seen_problem = HashSet::new();
        self.extends_failed = failed;
        for p in problems {
            self.extends_problem(p, &defs, &mut seen_problem);
        }
        let mut read: Vec<Read> = Vec::new();
        for (name, _) in &defs {
            if name.starts_with('.') {
                continue;
            }
            let (Some(def), Some(key)) = (resolved.get(name), keys.get(name)) else {
                continue;
            };
            if let Some(r) = self.job(
                name,
                key,
                def,
                &default_entries,
                &globals,
                &workflow_vars,
                &created,
                &stages,
            ) {
                read.push(r);
            }
        }
        if read.is_empty()
            && !self
                .cx
                .diags
                .iter()
                .any(|d| d.severity == crate::pipeline::Severity::Error)
        {
            self.cx.diags.push(file_error(
                format!("{NO_JOB}: the file has no visible job, or every job's rules leave it out"),
                "a job is a top-level key not starting with `.` that has `script:`; check `rules:` against the variables given (--var)",
            ));
            return None;
        }
        // Each instance of a `parallel` trigger job triggers a child of its
        // own, given the instance's matrix variables.
        let triggers: Vec<(String, trigger::Trigger)> = read
            .iter()
            .filter_map(|r| r.trigger.as_ref().map(|t| (r, t)))
            .flat_map(|(r, t)| r.instances.iter().map(move |(name, _)| (name.clone(), t.clone())))
            .collect();
        let mut jobs = self.lower(read, &stages);
        // The project's CI/CD variables rank above the file's; a file
        // variable stays one unless `--var` gives the name a value.
        let file_vars: Vec<String> = self
            .opts
            .project_file_vars
            .iter()
            .filter(|n| !self.opts.cli_vars.iter().any(|(c, _)| c == *n))
            .cloned()
            .collect();
        for j in &mut jobs {
            j.environment.extend(self.opts.project_vars.iter().map(|(k, v)| EnvVar {
                name: k.clone(),
                value: v.replace('$', "$$"),
                pos: j.pos,
            }));
            j.file_vars = file_vars.clone();
            j.settings_vars = self.opts.project_vars.iter().map(|(k, _)| k.clone()).collect();
        }
        let (mut jobs, child_stages) = self.expand_triggers(jobs, triggers);
        // The stages jobs are in, in order, a child pipeline's after its trigger's.
        let mut used_stages: Vec<String> = Vec::new();
        for s in &stages {
            if !jobs.iter().any(|j| j.stage.as_deref() == Some(s.as_str())) {
                continue;
            }
            used_stages.push(s.clone());
            for (t, cs) in &child_stages {
                if jobs
                    .iter()
                    .any(|j| &j.name == t && j.stage.as_deref() == Some(s.as_str()))
                {
                    used_stages.extend(cs.iter().cloned());
                }
            }
        }
        // Listed as GitLab lists them: by stage, then as written.
        jobs.sort_by_key(|j| {
            j.stage
                .as_ref()
                .and_then(|s| used_stages.iter().position(|u| u == s))
                .unwrap_or(usize::MAX)
        });
        // GitLab's predefined variables reach every job, below the file's.
        let mut global_env: Vec<EnvVar> = self
            .opts
            .ci_vars
            .iter()
            .map(|(k, v)| EnvVar {
                name: k.clone(),
                value: v.replace('$', "$$"),
                pos: root.pos,
            })
            .collect();
        if let Some(n) = pipeline_name {
            global_env.push(EnvVar {
                name: "CI_PIPELINE_NAME".into(),
                value: n.replace('$', "$$"),
                pos: root.pos,
            });
        }
        Some(Pipeline {
            needs_key: "needs",
            preflight: Vec::new(),
            name,
            global_env,
            timeout: Duration::from_secs(24 * 3600),
            kill_grace: Duration::from_secs(10),
            // GitLab retries a job at once (it creates the next attempt).
            retry_policy: RetryPolicy {
                max_attempts: 1,
                backoff: Backoff {
                    initial: Duration::ZERO,
                    max: Duration::ZERO,
                    multiplier: 1.0,
                    jitter: 0.0,
                },
            },
            jobs,
            undefined_is_empty: true,
            stages: used_stages,
            git_checkout: true,
        })
    }

    fn extends_problem(&mut self, p: merge::ExtendsError, defs: &[(String, Node)], seen: &mut HashSet<(usize, usize)>) {
        use merge::ExtendsError as E;
        let node = match &p {
            E::Unknown { node, .. } | E::Cycle { node, .. } | E::TooDeep { node, .. } | E::NotNames { node } => node,
        };
        if !seen.insert((node.pos.line, node.pos.col)) {
            return;
        }
        let names: Vec<&str> = defs.iter().map(|(n, _)| n.as_str()).collect();
        match p {
            E::Unknown { node, name } => self.cx.err(
                &node,
                "extends",
                format!("`extends` names `{name}`, which is not defined in this file"),
                suggestion_hint(&name, &names, "jobs"),
            ),
            E::Cycle { node, chain } => self.cx.err(
                &node,
                "extends",
                format!("`extends` goes round in a circle: {}", chain.join(" -> ")),
                "remove one of these `extends`",
            ),
            E::TooDeep { node, chain } => self.cx.err(
                &node,
                "extends",
                format!(
                    "`extends` nests deeper than GitLab's {} levels: {}",
                    merge::MAX_DEPTH,
                    chain.join(" -> ")
                ),
                "flatten the chain",
            ),
            E::NotNames { node } => self.cx.err(
                &node,
                "extends",
                format!("`extends` is a job name or a list of them, found {}", node.type_name()),
                "write `extends: .base` or `extends: [.base, .other]`",
            ),
        }
    }

    /// `.pre`, the file's stages (or GitLab's defaults), `.post`.
    fn stages(&mut self, node: Option<&Node>) -> Vec<String> {
        let mut out = vec![".pre".to_string()];
        match node {
            Some(n) => {
                for (s, at) in self.cx.string_list(n, "stages") {
                    if out.contains(&s) {
                        if s != ".pre" && s != ".post" {
                            self.cx.warn(
                                &at,
                                "stages",
                                format!("stage `{s}` is listed twice"),
                                "list each stage once".to_string(),
                            );
                        }
                        continue;
                    }
                    if s != ".post" {
                        out.push(s);
                    }
                }
            }
            None => out.extend(DEFAULT_STAGES.iter().map(|s| s.to_string())),
        }
        out.push(".post".to_string());
        out
    }

    /// `variables:` of the file or a job: names to values (a mapping's
    /// `value`; `expand: false` keeps `$` literal).
    fn variables(&mut self, node: &Node, path: &str) -> Vec<EnvVar> {
        let Value::Map(entries) = &node.value else {
            self.cx.err(
                node,
                path,
                format!(
                    "`variables` is a mapping of names to values, found {}",
                    node.type_name()
                ),
                "write `variables:` then `NAME: value` lines",
            );
            return Vec::new();
        };
        let mut out = Vec::new();
        for (k, v) in entries {
            let name = k.key_text();
            let vpath = join(path, &name);
            if !valid_var_name(&name) {
                self.cx.err(
                    k,
                    &vpath,
                    format!("`{name}` is not a valid variable name"),
                    "use letters, digits and `_`, not starting with a digit",
                );
                continue;
            }
            let value = match &v.value {
                Value::Map(_) => {
                    if !self
                        .cx
                        .mapping(v, &vpath, &["value", "description", "expand", "options"], "a variable")
                    {
                        continue;
                    }
                    let expand = get(v, "expand")
                        .and_then(|n| self.cx.boolean(n, &join(&vpath, "expand")))
                        .unwrap_or(true);
                    let value = get(v, "value").and_then(|n| self.cx.string(n, &join(&vpath, "value")));
                    let value = value.unwrap_or_default();
                    if expand { value } else { value.replace('$', "$$") }
                }
                Value::Null => String::new(),
                _ => match self.cx.string(v, &vpath) {
                    Some(s) => s,
                    None => continue,
                },
            };
            out.push(EnvVar {
                name,
                value,
                pos: k.pos,
            });
        }
        out
    }

    /// `workflow:` — `rules` decide whether the pipeline is created; the
    /// matching rule's variables join every job's. `None`: no pipeline.
    fn workflow(&mut self, node: &Node, created: &[(String, String)]) -> Option<Vec<EnvVar>> {
        if !self
            .cx
            .mapping(node, "workflow", &["rules", "name", "auto_cancel"], "`workflow`")
        {
            return Some(Vec::new());
        }
        let Some(rules) = get(node, "rules") else {
            return Some(Vec::new());
        };
        if let Value::Seq(items) = &rules.value {
            for (i, r) in items.iter().enumerate() {
                if let Some(w) = get(r, "when")
                    && !matches!(w.as_str(), Some("always" | "never"))
                {
                    self.cx.err(
                        w,
                        &format!("workflow.rules[{i}].when"),
                        format!(
                            "`when: {}` in `workflow:rules`: a pipeline is created (`always`) or not (`never`)",
                            w.key_text()
                        ),
                        "use `when: always` or `when: never`",
                    );
                    return None;
                }
            }
        }
        match self.rules(rules, "workflow.rules", created, &[]) {
            Ok(Some(d)) if d.when != Some(WhenOrNever::Never) => Some(d.variables),
            Ok(_) => {
                let facts: Vec<String> = ["CI_COMMIT_BRANCH", "CI_COMMIT_TAG", "CI_PIPELINE_SOURCE"]
                    .iter()
                    .filter_map(|k| {
                        created
                            .iter()
                            .rev()
                            .find(|(n, _)| n == k)
                            .map(|(n, v)| format!("{n}={v}"))
                    })
                    .collect();
                self.cx.err(
                    rules,
                    "workflow.rules",
                    format!(
                        "workflow:rules create no pipeline for these variables ({})",
                        if facts.is_empty() { "none set".to_string() } else { facts.join(", ") }
                    ),
                    "GitLab would not run this pipeline; set what the rules test with --var (for example --var CI_PIPELINE_SOURCE=merge_request_event)",
                );
                None
            }
            Err(()) => Some(Vec::new()),
        }
    }

    /// Evaluates `rules:`: the first rule that matches decides. `Ok(None)`:
    /// none matched (the job is left out). `Err`: the rules have mistakes
    /// (reported).
    fn rules(
        &mut self,
        node: &Node,
        path: &str,
        created: &[(String, String)],
        job_vars: &[EnvVar],
    ) -> Result<Option<RuleDecision>, ()> {
        let Value::Seq(listed) = &node.value else {
            self.cx.err(
                node,
                path,
                format!("`rules` is a list of rules, found {}", node.type_name()),
                "write `rules:` then `- if: ...` items",
            );
            return Err(());
        };
        // `- !reference [.x, rules]` puts a list of rules in the list.
        let items: Vec<Node> = listed
            .iter()
            .flat_map(|r| match &r.value {
                Value::Seq(inner) => inner.clone(),
                _ => vec![r.clone()],
            })
            .collect();
        let cli = &self.opts.cli_vars;
        let get_var = |name: &str| -> Option<String> { lookup(name, cli, job_vars, created) };
        let allowed = [
            "if",
            "changes",
            "exists",
            "when",
            "allow_failure",
            "variables",
            "needs",
            "interruptible",
            "start_in",
        ];
        let mut broken = false;
        let mut decided: Option<RuleDecision> = None;
        for (i, rule) in items.iter().enumerate() {
            let rpath = format!("{path}[{i}]");
            if !self.cx.mapping(rule, &rpath, &allowed, "a rule") {
                broken = true;
                continue;
            }
            let mut matches = true;
            if let Some(cond) = get(rule, "if") {
                match self.condition(cond, &join(&rpath, "if"), &get_var) {
                    Some(m) => matches &= m,
                    None => {
                        broken = true;
                        continue;
                    }
                }
            }
            if let Some(n) = get(rule, "exists") {
                matches &= self.exists(n, &join(&rpath, "exists"));
            }
            if let Some(n) = get(rule, "changes") {
                matches &= self.changes(n, &join(&rpath, "changes"));
            }
            // `rules:needs` replaces the job's `needs` when the rule matches.
            let needs = get(rule, "needs").map(|n| (n.clone(), join(&rpath, "needs")));
            let when = match get(rule, "when") {
                Some(n) => match self.when(n, &join(&rpath, "when")) {
                    Some(w) => Some(w),
                    None => {
                        broken = true;
                        continue;
                    }
                },
                None => None,
            };
            let allow_failure =
                get(rule, "allow_failure").and_then(|n| self.cx.boolean(n, &join(&rpath, "allow_failure")));
            let start_in = get(rule, "start_in").map(|n| (n.clone(), join(&rpath, "start_in")));
            let interruptible =
                get(rule, "interruptible").and_then(|n| self.cx.boolean(n, &join(&rpath, "interruptible")));
            let variables = get(rule, "variables")
                .map(|n| self.variables(n, &join(&rpath, "variables")))
                .unwrap_or_default();
            if matches && decided.is_none() {
                decided = Some(RuleDecision {
                    when,
                    allow_failure,
                    variables,
                    start_in,
                    needs,
                    interruptible,
                });
            }
        }
        if broken { Err(()) } else { Ok(decided) }
    }

    fn when(&mut self, node: &Node, path: &str) -> Option<WhenOrNever> {
        let words = ["on_success", "on_failure", "always", "manual", "delayed", "never"];
        let text = self.cx.string(node, path)?;
        match text.as_str() {
            "on_success" => Some(WhenOrNever::When(When::OnSuccess)),
            "on_failure" => Some(WhenOrNever::When(When::OnFailure)),
            "always" => Some(WhenOrNever::When(When::Always)),
            "manual" => Some(WhenOrNever::When(When::Manual)),
            "never" => Some(WhenOrNever::Never),
            "delayed" => Some(WhenOrNever::Delayed),
            other => {
                self.cx.err(
                    node,
                    path,
                    format!("`when: {other}` is not one of GitLab's"),
                    suggestion_hint(other, &words, "values"),
                );
                None
            }
        }
    }

    /// Reads one visible job (its `extends` already merged).
    #[allow(clippy::too_many_arguments)]
    fn job(
        &mut self,
        name: &str,
        key: &Node,
        def: &Node,
        defaults: &[(Node, Node)],
        globals: &[EnvVar],
        workflow_vars: &[EnvVar],
        created: &[(String, String)],
        stages: &[String],
    ) -> Option<Read> {
        let path = name.to_string();
        let Value::Map(own) = &def.value else { return None };
        for (k, v) in own {
            let word = k.key_text();
            if !JOB_KEYS.contains(&word.as_str()) {
                self.cx.err(
                    k,
                    &join(&path, &word),
                    format!("unknown keyword `{word}` in job `{name}`"),
                    suggestion_hint(&word, &JOB_KEYS, "job keywords"),
                );
            } else if SERVER_ONLY.contains(&word.as_str()) {
                self.warn_once(
                    v,
                    &join(&path, &word),
                    &word,
                    format!("`{word}` needs GitLab's server; trackside ignores it"),
                    "the job runs without it",
                );
            } else if NOT_YET.contains(&word.as_str()) {
                self.warn_once(
                    v,
                    &join(&path, &word),
                    &word,
                    format!("`{word}` is not supported yet by trackside; the job runs without it"),
                    "see docs/gitlab.md for what is supported",
                );
            } else if NO_EFFECT.contains(&word.as_str()) {
                // Read, and without effect on one machine.
            }
        }
        let trigger = match get(def, "trigger") {
            Some(t) => Some(self.trigger_spec(t, &path)?),
            None => None,
        };
        // `inherit`: which defaults and file variables the job takes.
        let (inherit_defaults, inherit_vars) = self.inherit(def, &path);
        let field = |k: &str| -> Option<Node> {
            get(def, k).cloned().or_else(|| {
                defaults
                    .iter()
                    .find(|(dk, _)| dk.as_str() == Some(k))
                    .filter(|_| inherit_defaults.as_ref().is_none_or(|list| list.iter().any(|x| x == k)))
                    .map(|(_, v)| v.clone())
            })
        };
        // A mistake below is reported and reading goes on (with a stand-in),
        // so every mistake of the job is found at once; the pipeline is
        // invalid all the same.
        let fallback_stage = stages.get(1).cloned().unwrap_or_else(|| "test".into());
        let stage = match get(def, "stage") {
            Some(n) => {
                let s = self
                    .cx
                    .string(n, &join(&path, "stage"))
                    .unwrap_or_else(|| fallback_stage.clone());
                if !stages.contains(&s) {
                    let list: Vec<&str> = stages.iter().map(String::as_str).collect();
                    self.cx.err(
                        n,
                        &join(&path, "stage"),
                        format!("stage `{s}` is not in `stages`"),
                        suggestion_hint(&s, &list, "stages"),
                    );
                    fallback_stage.clone()
                } else {
                    s
                }
            }
            None if stages.iter().any(|s| s == "test") => "test".to_string(),
            None => {
                let list: Vec<&str> = stages.iter().map(String::as_str).collect();
                self.cx.err(
                    key,
                    &path,
                    format!("job `{name}` has no `stage`, and GitLab's default stage `test` is not in `stages`"),
                    format!("give it one of: {}", list.join(", ")),
                );
                fallback_stage.clone()
            }
        };
        let script = match get(def, "script") {
            // A trigger job runs on GitLab's server, never a script.
            Some(n) if trigger.is_some() => {
                self.cx.err(
                    n,
                    &join(&path, "script"),
                    format!(
                        "trigger job `{name}` has a `script` (perhaps through `extends`); GitLab refuses both at once"
                    ),
                    "a trigger job only starts its child pipeline: move the script to a job of its own",
                );
                return None;
            }
            Some(n) => self.script(n, &join(&path, "script")),
            None if trigger.is_some() => Vec::new(),
            // Its script was to come from a parent `extends` could not reach.
            None if self.extends_failed.contains(name) => return None,
            None => {
                self.cx.err(
                    key,
                    &path,
                    format!("job `{name}` has no `script`"),
                    "give it `script:` with the commands to run (a job without one runs nothing in GitLab either)",
                );
                return None;
            }
        };
        // A trigger job takes no scripts from `default:` either.
        let before = field("before_script")
            .filter(|_| trigger.is_none())
            .map(|n| self.script(&n, &join(&path, "before_script")))
            .unwrap_or_default();
        let after = field("after_script")
            .filter(|_| trigger.is_none())
            .map(|n| self.script(&n, &join(&path, "after_script")))
            .unwrap_or_default();
        // Variables: the file's (as inherited), the workflow's, the job's.
        let mut env: Vec<EnvVar> = globals
            .iter()
            .filter(|v| inherit_vars.as_ref().is_none_or(|list| list.contains(&v.name)))
            .cloned()
            .collect();
        env.extend(workflow_vars.iter().cloned());
        if let Some(n) = get(def, "variables") {
            env.extend(self.variables(n, &join(&path, "variables")));
        }
        // rules, else only/except; then the job's own when/allow_failure.
        if get(def, "rules").is_some() {
            for k in ["only", "except"] {
                if let Some((kn, _)) = entries(def).iter().find(|(kn, _)| kn.as_str() == Some(k)) {
                    self.cx.err(
                        kn,
                        &join(&path, k),
                        format!("job `{name}` has both `rules` and `{k}`; GitLab allows one of them"),
                        format!("express `{k}` as a rule and remove it"),
                    );
                    return None;
                }
            }
        }
        let decision = if let Some(r) = get(def, "rules") {
            match self.rules(r, &join(&path, "rules"), created, &env) {
                Ok(Some(d)) => d,
                Ok(None) => return None,
                // Mistakes in the rules (reported): read on as if they matched.
                Err(()) => RuleDecision {
                    when: None,
                    allow_failure: None,
                    variables: Vec::new(),
                    start_in: None,
                    needs: None,
                    interruptible: None,
                },
            }
        } else {
            if !self.only_except(def, &path, created, &env) {
                return None;
            }
            RuleDecision {
                when: None,
                allow_failure: None,
                variables: Vec::new(),
                start_in: None,
                needs: None,
                interruptible: None,
            }
        };
        env.extend(decision.variables.iter().cloned());
        let from_rule = decision.when.is_some();
        let when = match decision.when {
            Some(w) => w,
            None => match get(def, "when") {
                Some(n) => self
                    .when(n, &join(&path, "when"))
                    .unwrap_or(WhenOrNever::When(When::OnSuccess)),
                None => WhenOrNever::When(When::OnSuccess),
            },
        };
        // `when: delayed` waits `start_in` (the rule's, else the job's).
        let start_in_node = decision
            .start_in
            .clone()
            .or_else(|| get(def, "start_in").map(|n| (n.clone(), join(&path, "start_in"))));
        let (when, start_in) = match when {
            WhenOrNever::Never => return None,
            WhenOrNever::When(w) => {
                if let Some((n, p)) = &start_in_node {
                    self.cx.err(
                        n,
                        p,
                        "`start_in` is only for `when: delayed`",
                        "add `when: delayed`, or remove `start_in`",
                    );
                }
                (w, None)
            }
            WhenOrNever::Delayed => match &start_in_node {
                Some((n, p)) => match self.duration(n, p) {
                    Some(d) if d <= Duration::from_secs(7 * 24 * 3600) => (When::OnSuccess, Some(d)),
                    Some(_) => {
                        self.cx.err(
                            n,
                            p,
                            "`start_in` is at most one week in GitLab",
                            "give a shorter delay, such as `30 minutes`",
                        );
                        (When::OnSuccess, None)
                    }
                    None => (When::OnSuccess, None),
                },
                None => {
                    self.cx.err(
                        key,
                        &path,
                        format!("job `{name}` is `when: delayed` without `start_in`"),
                        "add `start_in: 30 minutes` (at most one week)",
                    );
                    (When::OnSuccess, None)
                }
            },
        };
        let mut facts = Vec::new();
        if let Some(e) = get(def, "environment") {
            let vars = self.environment(e, &join(&path, "environment"), created);
            let get_var = |k: &str| vars.iter().find(|v| v.name == k).map(|v| v.value.clone());
            if let Some(name) = get_var("CI_ENVIRONMENT_NAME") {
                let mut text = name;
                if let Some(action) = get_var("CI_ENVIRONMENT_ACTION").filter(|a| a != "start") {
                    text.push_str(&format!(" ({action})"));
                }
                if let Some(url) = get_var("CI_ENVIRONMENT_URL") {
                    text.push_str(&format!(" {url}"));
                }
                facts.push(("environment".to_string(), text));
            }
            env.extend(vars);
        }
        // Shown, and placement constraints on a swarm (docs/swarm.md).
        let mut tags: Vec<String> = Vec::new();
        if let Some(t) = field("tags") {
            tags = self
                .cx
                .string_list(&t, &join(&path, "tags"))
                .into_iter()
                .map(|(s, _)| s)
                .collect();
            if !tags.is_empty() {
                facts.push(("tags".to_string(), tags.join(", ")));
            }
        }
        let coverage = match get(def, "coverage") {
            Some(n) => {
                let cpath = join(&path, "coverage");
                let text = self.cx.string(n, &cpath)?;
                match text.strip_prefix('/').and_then(|t| t.strip_suffix('/')) {
                    Some(re) => match regex::RegexBuilder::new(re).size_limit(1 << 20).build() {
                        Ok(_) => Some(re.to_string()),
                        Err(e) => {
                            self.cx.err(
                                n,
                                &cpath,
                                format!("`coverage` is not a valid regular expression: {e}"),
                                "GitLab's regular expressions are RE2's",
                            );
                            return None;
                        }
                    },
                    None => {
                        self.cx.err(
                            n,
                            &cpath,
                            "`coverage` is a regular expression between slashes",
                            "write `coverage: '/Coverage: \\d+\\.\\d+%/'`",
                        );
                        return None;
                    }
                }
            }
            None => None,
        };
        let resource_group = match get(def, "resource_group") {
            Some(n) => {
                let text = self.cx.string(n, &join(&path, "resource_group"))?;
                let cli = &self.opts.cli_vars;
                let vars: Vec<(String, String)> = created
                    .iter()
                    .cloned()
                    .chain(env.iter().map(|v| (v.name.clone(), v.value.clone())))
                    .chain(cli.iter().cloned())
                    .collect();
                Some(include::expand_with(&text, &vars))
            }
            None => None,
        };
        let (allow_failure, allow_failure_exit_codes) = match decision.allow_failure {
            Some(a) => (a, Vec::new()),
            None => match get(def, "allow_failure") {
                Some(n) => self.allow_failure(n, &join(&path, "allow_failure")),
                // GitLab: a manual job may be skipped unless it says
                // otherwise; one a rule made manual blocks.
                None => (when == When::Manual && !from_rule, Vec::new()),
            },
        };
        // `interruptible`: a higher-priority run with `--preempt` may stop it.
        let interruptible = decision.interruptible.unwrap_or_else(|| {
            field("interruptible")
                .and_then(|n| self.cx.boolean(&n, &join(&path, "interruptible")))
                .unwrap_or(false)
        });
        let (retry_count, retry_when, retry_exit_codes) = field("retry")
            .map(|n| self.retry(&n, &join(&path, "retry")))
            .unwrap_or((0, Vec::new(), Vec::new()));
        let timeout = match field("timeout") {
            Some(n) => match self.duration(&n, &join(&path, "timeout")) {
                Some(d) if d > MAX_TIMEOUT => {
                    self.cx.err(
                        &n,
                        &join(&path, "timeout"),
                        "a job's `timeout` is at most one month in GitLab",
                        "give a shorter time, such as `3h`",
                    );
                    DEFAULT_TIMEOUT
                }
                Some(d) => d,
                None => DEFAULT_TIMEOUT,
            },
            None => DEFAULT_TIMEOUT,
        };
        let mut container = ContainerOptions {
            node_labels: tags,
            ..Default::default()
        };
        let image = field("image").and_then(|n| self.image(&n, &join(&path, "image"), &mut container));
        let artifacts = field("artifacts").and_then(|n| self.artifacts(&n, &join(&path, "artifacts")));
        let mut services = field("services")
            .map(|n| self.services(&n, &join(&path, "services")))
            .unwrap_or_default();
        let mut image = image;
        if self.opts.executor == crate::pipeline::ExecutorChoice::Shell {
            if let Some(img) = image.take() {
                self.warn_once(
                    key,
                    &path,
                    "shell-image",
                    format!("`--executor shell`: jobs run on this host; image `{img}` (and any other) is not used"),
                    "the jobs use the host's tools",
                );
            }
            if !services.is_empty() {
                services.clear();
                self.warn_once(
                    key,
                    &path,
                    "shell-services",
                    format!("`--executor shell`: job `{name}` runs without its services (they need containers)"),
                    "drop `--executor shell` to start them",
                );
            }
        }
        let dir_caches = field("cache")
            .map(|n| self.caches(&n, &join(&path, "cache"), created))
            .unwrap_or_default();
        let needs = match &decision.needs {
            Some((n, p)) => Some(self.needs(n, p)),
            None => get(def, "needs").map(|n| self.needs(n, &join(&path, "needs"))),
        };
        let dependencies = get(def, "dependencies").map(|n| {
            self.cx
                .string_list(n, &join(&path, "dependencies"))
                .into_iter()
                .collect::<Vec<_>>()
        });
        let instances = match get(def, "parallel") {
            Some(n) => self.parallel(n, &join(&path, "parallel"), name),
            None => vec![(name.to_string(), Vec::new())],
        };
        let mut steps = vec![Step {
            name: "script".into(),
            script: echoed(before.into_iter().chain(script).collect()),
            image: image.clone(),
            ..Step::default()
        }];
        if !after.is_empty() {
            steps.push(Step {
                name: "after_script".into(),
                script: echoed(after),
                image,
                cleanup: true,
                ..Step::default()
            });
        }
        env.push(EnvVar {
            name: "CI_JOB_STAGE".into(),
            value: stage.clone(),
            pos: key.pos,
        });
        // `artifacts:reports:junit`: read as test cases too.
        let junit = artifacts.as_ref().map(|a| a.junit.clone()).unwrap_or_default();
        let job = Job {
            name: name.to_string(),
            steps,
            depends_on: Vec::new(),
            depends_on_pos: Vec::new(),
            environment: env,
            timeout,
            retry_count,
            retry_when,
            conditional: None,
            when,
            allow_failure,
            facts,
            mirrors_upstream: false,
            file_vars: Vec::new(),
            settings_vars: Vec::new(),
            generated_child: None,
            coverage,
            start_in,
            resource_group,
            interruptible,
            allow_failure_exit_codes,
            retry_exit_codes,
            working_directory: None,
            container: container.into(),
            services,
            artifacts,
            needs_artifacts: dependencies
                .as_ref()
                .map(|d| d.iter().map(|(s, _)| s.clone()).collect()),
            cache: None,
            dir_caches,
            deploy: None,
            stage: Some(stage.clone()),
            file_commands: false,
            fail_fast_group: None,
            strict_needs: false,
            id: None,
            outputs: Vec::new(),
            actions: Vec::new(),
            github: None,
            call: None,
            matrix_later: false,
            parallel_limit: None,
            call_outputs: Vec::new(),
            secret_names: None,
            pos: key.pos,
            junit,
            ..Job::default()
        };
        Some(Read {
            name: name.to_string(),
            key: key.clone(),
            stage,
            needs,
            dependencies: dependencies.unwrap_or_default(),
            job,
            instances,
            trigger,
        })
    }

    /// `inherit: {default: bool|[keys], variables: bool|[names]}`: `None` =
    /// everything, `Some(list)` = only those (an empty list for `false`).
    fn inherit(&mut self, def: &Node, path: &str) -> (Option<Vec<String>>, Option<Vec<String>>) {
        let Some(n) = get(def, "inherit") else {
            return (None, None);
        };
        let ipath = join(path, "inherit");
        if !self.cx.mapping(n, &ipath, &["default", "variables"], "`inherit`") {
            return (None, None);
        }
        let mut one = |k: &str| -> Option<Vec<String>> {
            let v = get(n, k)?;
            match &v.value {
                Value::Bool(true) => None,
                Value::Bool(false) => Some(Vec::new()),
                _ => Some(
                    self.cx
                        .string_list(v, &join(&ipath, k))
                        .into_iter()
                        .map(|(s, _)| s)
                        .collect(),
                ),
            }
        };
        (one("default"), one("variables"))
    }

    /// `script`-like keys: a string or a list whose items may be lists
    /// (anchors and `!reference` nest them; GitLab flattens ten levels).
    fn script(&mut self, node: &Node, path: &str) -> Vec<String> {
        let mut out = Vec::new();
        self.script_into(node, path, 0, &mut out);
        out
    }

    fn script_into(&mut self, node: &Node, path: &str, depth: usize, out: &mut Vec<String>) {
        match &node.value {
            Value::Seq(items) if depth <= reference::MAX_DEPTH => {
                for (i, item) in items.iter().enumerate() {
                    self.script_into(item, &format!("{path}[{i}]"), depth + 1, out);
                }
            }
            Value::Seq(_) => self.cx.err(
                node,
                path,
                "script lists nest deeper than GitLab's 10 levels",
                "flatten the lists",
            ),
            Value::Str(text) => out.push(text.clone()),
            _ => self.cx.err(
                node,
                path,
                format!("a script line is a string, found {}", node.type_name()),
                "quote it: `- \"42\"`",
            ),
        }
    }

    /// `allow_failure: bool` or `{exit_codes: N|[N...]}` (then only those
    /// exit codes are allowed).
    fn allow_failure(&mut self, node: &Node, path: &str) -> (bool, Vec<i32>) {
        match &node.value {
            Value::Map(_) => {
                if !self.cx.mapping(node, path, &["exit_codes"], "`allow_failure`") {
                    return (false, Vec::new());
                }
                match get(node, "exit_codes") {
                    Some(n) => {
                        let codes = self.exit_codes(n, &join(path, "exit_codes"));
                        (!codes.is_empty(), codes)
                    }
                    None => {
                        self.cx.err(
                            node,
                            path,
                            "`allow_failure` as a mapping takes `exit_codes`",
                            "write `allow_failure: {exit_codes: [137, 255]}`",
                        );
                        (false, Vec::new())
                    }
                }
            }
            _ => (self.cx.boolean(node, path).unwrap_or(false), Vec::new()),
        }
    }

    /// An exit code or a list of them (0-255).
    fn exit_codes(&mut self, node: &Node, path: &str) -> Vec<i32> {
        let items: Vec<&Node> = match &node.value {
            Value::Seq(items) => items.iter().collect(),
            _ => vec![node],
        };
        let mut out = Vec::new();
        for (i, n) in items.into_iter().enumerate() {
            let ipath = if matches!(node.value, Value::Seq(_)) {
                format!("{path}[{i}]")
            } else {
                path.to_string()
            };
            match n.value {
                Value::Int(c) if (0..=255).contains(&c) => out.push(c as i32),
                _ => self.cx.err(
                    n,
                    &ipath,
                    format!("an exit code is a number from 0 to 255, found {}", n.key_text()),
                    "write `exit_codes: [1, 137]`",
                ),
            }
        }
        out
    }

    /// `retry: N` or `{max, when, exit_codes}`: retries and the classes
    /// retried (GitLab's default is any failure).
    fn retry(&mut self, node: &Node, path: &str) -> (u32, Vec<FailureClass>, Vec<i32>) {
        let all = || {
            FailureClass::ALL
                .iter()
                .copied()
                .filter(|c| *c != FailureClass::Cancelled)
                .collect()
        };
        match &node.value {
            Value::Map(_) => {
                if !self.cx.mapping(node, path, &["max", "when", "exit_codes"], "`retry`") {
                    return (0, Vec::new(), Vec::new());
                }
                let max = get(node, "max")
                    .and_then(|n| self.cx.int_in(n, &join(path, "max"), 0, 2))
                    .unwrap_or(0);
                let codes = get(node, "exit_codes")
                    .map(|n| self.exit_codes(n, &join(path, "exit_codes")))
                    .unwrap_or_default();
                // With `exit_codes` alone, only those exit codes are retried.
                let classes = match get(node, "when") {
                    None if !codes.is_empty() => Vec::new(),
                    None => all(),
                    Some(w) => {
                        let mut out: Vec<FailureClass> = Vec::new();
                        for (reason, at) in self.cx.string_list(w, &join(path, "when")) {
                            match retry_reason(&reason) {
                                Some(cs) => {
                                    for c in cs {
                                        if !out.contains(&c) {
                                            out.push(c);
                                        }
                                    }
                                }
                                None => self.cx.err(
                                    &at,
                                    &join(path, "when"),
                                    format!("`{reason}` is not one of GitLab's retry reasons"),
                                    suggestion_hint(&reason, &RETRY_REASONS, "reasons"),
                                ),
                            }
                        }
                        out
                    }
                };
                (max, classes, codes)
            }
            _ => (self.cx.int_in(node, path, 0, 2).unwrap_or(0), all(), Vec::new()),
        }
    }

    /// GitLab's durations: `3600`, `"1h 30m"`, `"3 hours 30 minutes"`, `"2h32m"`, `"1 week"`.
    fn duration(&mut self, node: &Node, path: &str) -> Option<Duration> {
        let parsed = match &node.value {
            Value::Int(i) if *i >= 0 => Some(Duration::from_secs(*i as u64)),
            Value::Str(s) => parse_gitlab_duration(s),
            _ => None,
        };
        if parsed.is_none() {
            self.cx.err(
                node,
                path,
                format!("`{}` is not a duration GitLab reads", node.key_text()),
                "write `1h 30m`, `90 minutes` or a number of seconds",
            );
        }
        parsed
    }

    /// `image: NAME` or `{name, entrypoint, pull_policy}`; the entrypoint
    /// and pull policy go into `container`.
    fn image(&mut self, node: &Node, path: &str, container: &mut ContainerOptions) -> Option<String> {
        match &node.value {
            Value::Map(_) => {
                self.cx.mapping(
                    node,
                    path,
                    &["name", "entrypoint", "pull_policy", "docker", "kubernetes"],
                    "`image`",
                );
                if let Some(e) = get(node, "entrypoint") {
                    container.entrypoint = Some(
                        self.cx
                            .string_list(e, &join(path, "entrypoint"))
                            .into_iter()
                            .map(|(s, _)| s)
                            .collect(),
                    );
                }
                if let Some(p) = get(node, "pull_policy") {
                    // GitLab allows one policy or a list (the first that works).
                    let first = match &p.value {
                        Value::Seq(items) => items.first().cloned(),
                        _ => Some(p.clone()),
                    };
                    let ppath = join(path, "pull_policy");
                    match first.as_ref().and_then(|f| self.cx.string(f, &ppath)).as_deref() {
                        Some("always") => container.pull = PullPolicy::Always,
                        Some("never") => container.pull = PullPolicy::Never,
                        Some("if-not-present") => container.pull = PullPolicy::IfNotPresent,
                        Some(other) => self.cx.err(
                            p,
                            &ppath,
                            format!("`pull_policy: {other}` is not one of GitLab's"),
                            "always, if-not-present or never",
                        ),
                        None => {}
                    }
                }
                match get(node, "name") {
                    Some(n) => self.cx.string(n, &join(path, "name")),
                    None => {
                        self.cx.err(
                            node,
                            path,
                            "`image` has no `name`",
                            "write `image: {name: alpine:3.20}`",
                        );
                        None
                    }
                }
            }
            _ => self.cx.string(node, path),
        }
    }

    /// `artifacts:when` and `cache:when` (of `what`): after which outcomes
    /// files are kept; `None` when it is a mistake (reported).
    fn keep_when(&mut self, node: &Node, path: &str, what: &str) -> Option<ArtifactWhen> {
        let Some(n) = get(node, "when") else {
            return Some(ArtifactWhen::OnSuccess);
        };
        let wpath = join(path, "when");
        match self.cx.string(n, &wpath).as_deref() {
            Some("on_success") => Some(ArtifactWhen::OnSuccess),
            Some("on_failure") => Some(ArtifactWhen::OnFailure),
            Some("always") => Some(ArtifactWhen::Always),
            Some(other) => {
                self.cx.err(
                    n,
                    &wpath,
                    format!("`{what}:when: {other}` is not one of GitLab's"),
                    "on_success, on_failure or always",
                );
                None
            }
            None => None,
        }
    }

    fn artifacts(&mut self, node: &Node, path: &str) -> Option<Artifacts> {
        let keys = [
            "paths",
            "exclude",
            "when",
            "expire_in",
            "name",
            "untracked",
            "reports",
            "public",
            "access",
            "expose_as",
        ];
        if !self.cx.mapping(node, path, &keys, "`artifacts`") {
            return None;
        }
        let untracked = get(node, "untracked")
            .and_then(|n| self.cx.boolean(n, &join(path, "untracked")))
            .unwrap_or(false);
        let mut dotenv = Vec::new();
        let mut junit = Vec::new();
        if let Some(r) = get(node, "reports") {
            let rpath = join(path, "reports");
            if let Value::Map(entries) = &r.value {
                for (k, v) in entries {
                    let word = k.key_text();
                    let files = |s: &mut Self| -> Vec<String> {
                        match &v.value {
                            Value::Seq(_) => {
                                s.cx.string_list(v, &join(&rpath, &word))
                                    .into_iter()
                                    .map(|(x, _)| x)
                                    .collect()
                            }
                            _ => s.cx.string(v, &join(&rpath, &word)).into_iter().collect(),
                        }
                    };
                    let inside = |s: &mut Self, list: Vec<String>| -> Vec<String> {
                        list.into_iter()
                            .filter(|f| {
                                let p = std::path::Path::new(f);
                                let ok = !p.is_absolute()
                                    && !p.components().any(|c| matches!(c, std::path::Component::ParentDir));
                                if !ok {
                                    s.cx.err(
                                        v,
                                        &join(&rpath, &word),
                                        format!("report `{f}` is outside the job's workspace"),
                                        "name a file relative to the project, without `..`",
                                    );
                                }
                                ok
                            })
                            .collect()
                    };
                    match word.as_str() {
                        "dotenv" => {
                            let list = files(self);
                            dotenv = inside(self, list);
                        }
                        "junit" => {
                            let list = files(self);
                            junit = inside(self, list);
                        }
                        _ => self.warn_once(
                            k,
                            &join(&rpath, &word),
                            &format!("reports:{word}"),
                            format!(
                                "`artifacts:reports:{word}` is shown by GitLab's server; trackside keeps no such report"
                            ),
                            "the job runs as usual",
                        ),
                    }
                }
            } else {
                self.cx.err(
                    r,
                    &rpath,
                    format!("`reports` is a mapping, found {}", r.type_name()),
                    "write `reports: {dotenv: build.env}`",
                );
            }
        }
        let list = |s: &mut Self, k: &str| -> Vec<String> {
            get(node, k)
                .map(|n| s.cx.string_seq(n, &join(path, k)).into_iter().map(|(v, _)| v).collect())
                .unwrap_or_default()
        };
        let mut paths = list(self, "paths");
        let exclude = list(self, "exclude");
        // Reports are uploaded as artifacts too.
        for f in dotenv.iter().chain(&junit) {
            if !paths.contains(f) {
                paths.push(f.clone());
            }
        }
        let when = self.keep_when(node, path, "artifacts").unwrap_or_default();
        let expire_in = get(node, "expire_in").and_then(|n| match n.as_str() {
            Some("never") => None,
            _ => self.duration(n, &join(path, "expire_in")),
        });
        if paths.is_empty() && !untracked {
            return None;
        }
        Some(Artifacts {
            paths,
            exclude,
            when,
            expire_in,
            dotenv,
            junit,
            untracked,
        })
    }

    /// `cache`: one mapping or a list of up to four, each `key` (a name, or
    /// `files` with a `prefix`), `paths`, `policy`, `when`, `fallback_keys`.
    fn caches(&mut self, node: &Node, path: &str, created: &[(String, String)]) -> Vec<DirCache> {
        let items: Vec<(Node, String)> = match &node.value {
            Value::Seq(items) => items
                .iter()
                .enumerate()
                .map(|(i, n)| (n.clone(), format!("{path}[{i}]")))
                .collect(),
            Value::Null => Vec::new(),
            _ => vec![(node.clone(), path.to_string())],
        };
        if items.len() > 4 {
            self.cx.err(
                node,
                path,
                format!("{} caches; GitLab allows at most 4 per job", items.len()),
                "merge the paths of some of them",
            );
            return Vec::new();
        }
        let mut out = Vec::new();
        for (n, cpath) in items {
            let keys = [
                "key",
                "paths",
                "policy",
                "when",
                "untracked",
                "unprotect",
                "fallback_keys",
            ];
            if !self.cx.mapping(&n, &cpath, &keys, "a cache") {
                continue;
            }
            let untracked = get(&n, "untracked")
                .and_then(|u| self.cx.boolean(u, &join(&cpath, "untracked")))
                .unwrap_or(false);
            let key = match get(&n, "key") {
                None => DirCacheKey::Name("default".into()),
                Some(k) if matches!(k.value, Value::Map(_)) => {
                    let kpath = join(&cpath, "key");
                    if !self.cx.mapping(k, &kpath, &["files", "prefix"], "`cache:key`") {
                        continue;
                    }
                    let given = get(k, "files");
                    let files: Vec<String> = match given {
                        Some(f) => self
                            .cx
                            .string_seq(f, &join(&kpath, "files"))
                            .into_iter()
                            .map(|(s, _)| s)
                            .collect(),
                        None => Vec::new(),
                    };
                    if !given.is_some_and(|f| matches!(f.value, Value::Seq(_))) {
                        continue; // reported: not a list
                    }
                    if files.is_empty() || files.len() > 2 {
                        self.cx.err(
                            k,
                            &kpath,
                            "`cache:key:files` names one or two files",
                            "write `key: {files: [package-lock.json]}`",
                        );
                        continue;
                    }
                    let prefix = get(k, "prefix").and_then(|p| self.cx.string(p, &join(&kpath, "prefix")));
                    DirCacheKey::Files { files, prefix }
                }
                Some(k) => {
                    let Some(text) = self.cx.string(k, &join(&cpath, "key")) else {
                        continue;
                    };
                    if text.contains('/') || text.contains("%2F") || text.trim_matches('.').is_empty() {
                        self.cx.err(
                            k,
                            &join(&cpath, "key"),
                            format!("cache key `{text}` may not contain `/` or be only dots"),
                            "GitLab forbids these; use `-` instead of `/`",
                        );
                        continue;
                    }
                    DirCacheKey::Name(text)
                }
            };
            let paths: Vec<String> = match get(&n, "paths") {
                Some(p) => self
                    .cx
                    .string_list(p, &join(&cpath, "paths"))
                    .into_iter()
                    .map(|(s, _)| s)
                    .collect(),
                None => Vec::new(),
            };
            let policy = match get(&n, "policy") {
                None => CachePolicy::PullPush,
                Some(p) => {
                    let ppath = join(&cpath, "policy");
                    let Some(text) = self.cx.string(p, &ppath) else {
                        continue;
                    };
                    let text = include::expand_with(&text, created);
                    match CachePolicy::ALL.iter().find(|(w, _)| *w == text) {
                        Some((_, pol)) => *pol,
                        None => {
                            let words: Vec<&str> = CachePolicy::ALL.iter().map(|(w, _)| *w).collect();
                            self.cx.err(
                                p,
                                &ppath,
                                format!("cache policy `{text}` is not one of GitLab's"),
                                suggestion_hint(&text, &words, "policies"),
                            );
                            continue;
                        }
                    }
                }
            };
            let Some(when) = self.keep_when(&n, &cpath, "cache") else {
                continue;
            };
            let fallback_keys = match get(&n, "fallback_keys") {
                Some(f) => self
                    .cx
                    .string_list(f, &join(&cpath, "fallback_keys"))
                    .into_iter()
                    .map(|(s, _)| s)
                    .collect(),
                None => Vec::new(),
            };
            if paths.is_empty() && !untracked {
                continue;
            }
            out.push(DirCache {
                untracked,
                key,
                paths,
                policy,
                when,
                fallback_keys,
            });
        }
        out
    }

    /// `environment`: a name, or `{name, url, action, ...}`: checked as
    /// GitLab checks it, and given to the job as `CI_ENVIRONMENT_*`.
    fn environment(&mut self, node: &Node, path: &str, created: &[(String, String)]) -> Vec<EnvVar> {
        let (name, url, action, tier) = match &node.value {
            Value::Map(_) => {
                let keys = [
                    "name",
                    "url",
                    "action",
                    "on_stop",
                    "auto_stop_in",
                    "deployment_tier",
                    "kubernetes",
                ];
                if !self.cx.mapping(node, path, &keys, "`environment`") {
                    return Vec::new();
                }
                let Some(name) = get(node, "name").and_then(|n| self.cx.string(n, &join(path, "name"))) else {
                    self.cx.err(
                        node,
                        path,
                        "`environment` needs a `name`",
                        "write `environment: {name: production, url: https://...}`",
                    );
                    return Vec::new();
                };
                let url = get(node, "url").and_then(|n| self.cx.string(n, &join(path, "url")));
                let action = match get(node, "action") {
                    Some(a) => {
                        let words = ["start", "prepare", "stop", "verify", "access"];
                        let text = self.cx.string(a, &join(path, "action")).unwrap_or_default();
                        if !words.contains(&text.as_str()) {
                            self.cx.err(
                                a,
                                &join(path, "action"),
                                format!("`action: {text}` is not one of GitLab's"),
                                suggestion_hint(&text, &words, "actions"),
                            );
                            return Vec::new();
                        }
                        text
                    }
                    None => "start".to_string(),
                };
                let tier = get(node, "deployment_tier").and_then(|n| self.cx.string(n, &join(path, "deployment_tier")));
                (name, url, action, tier)
            }
            _ => match self.cx.string(node, path) {
                Some(n) => (n, None, "start".to_string(), None),
                None => return Vec::new(),
            },
        };
        let name = include::expand_with(&name, created);
        let var = |k: &str, v: String| EnvVar {
            name: k.into(),
            value: v,
            pos: node.pos,
        };
        let mut out = vec![
            var("CI_ENVIRONMENT_SLUG", slug(&name, 24)),
            var("CI_ENVIRONMENT_NAME", name),
            var("CI_ENVIRONMENT_ACTION", action),
        ];
        if let Some(u) = url {
            out.push(var("CI_ENVIRONMENT_URL", include::expand_with(&u, created)));
        }
        if let Some(t) = tier {
            out.push(var("CI_ENVIRONMENT_TIER", t));
        }
        out
    }

    /// `services`: images (`postgres:16`) or `{name, alias, entrypoint,
    /// command, variables}`, reached by GitLab's host names: the alias(es),
    /// else the image without its tag, `/` as `__` and as `-`.
    fn services(&mut self, node: &Node, path: &str) -> Vec<Service> {
        let items: Vec<(Node, String)> = match &node.value {
            Value::Seq(items) => items
                .iter()
                .enumerate()
                .map(|(i, n)| (n.clone(), format!("{path}[{i}]")))
                .collect(),
            Value::Null => Vec::new(),
            _ => {
                self.cx.err(
                    node,
                    path,
                    format!("`services` is a list, found {}", node.type_name()),
                    "write `services: [postgres:16]`",
                );
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        for (n, spath) in items {
            let (image, alias, entrypoint, command, environment) = match &n.value {
                Value::Map(_) => {
                    let keys = [
                        "name",
                        "alias",
                        "entrypoint",
                        "command",
                        "variables",
                        "pull_policy",
                        "docker",
                        "kubernetes",
                    ];
                    if !self.cx.mapping(&n, &spath, &keys, "a service") {
                        continue;
                    }
                    let Some(image) = get(&n, "name").and_then(|i| self.cx.string(i, &join(&spath, "name"))) else {
                        self.cx.err(
                            &n,
                            &spath,
                            "a service needs `name:` (its image)",
                            "write `- name: postgres:16`",
                        );
                        continue;
                    };
                    let alias = get(&n, "alias").and_then(|a| self.cx.string(a, &join(&spath, "alias")));
                    let list = |s: &mut Self, k: &str| -> Option<Vec<String>> {
                        get(&n, k).map(|v| {
                            s.cx.string_list(v, &join(&spath, k))
                                .into_iter()
                                .map(|(x, _)| x)
                                .collect()
                        })
                    };
                    let entrypoint = list(self, "entrypoint");
                    let command = list(self, "command");
                    let environment = get(&n, "variables")
                        .map(|v| self.variables(v, &join(&spath, "variables")))
                        .unwrap_or_default();
                    (image, alias, entrypoint, command, environment)
                }
                _ => match self.cx.string(&n, &spath) {
                    Some(image) => (image, None, None, None, Vec::new()),
                    None => continue,
                },
            };
            let mut names: Vec<String> = match alias {
                Some(a) => a
                    .split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect(),
                None => Vec::new(),
            };
            if names.is_empty() {
                let bare = image
                    .rsplit_once(':')
                    .filter(|(_, tag)| !tag.contains('/'))
                    .map_or(image.as_str(), |(b, _)| b);
                let bare = bare.split('@').next().unwrap_or(bare);
                names.push(bare.replace('/', "-"));
                if bare.contains('/') {
                    names.push(bare.replace('/', "__"));
                }
            }
            let name = names.remove(0);
            out.push(Service {
                name,
                aliases: names,
                image,
                entrypoint,
                port: None,
                environment,
                command,
                ready_timeout: Duration::from_secs(30),
                options: Default::default(),
            });
        }
        out
    }

    fn needs(&mut self, node: &Node, path: &str) -> Vec<Need> {
        let Value::Seq(items) = &node.value else {
            self.cx.err(
                node,
                path,
                format!("`needs` is a list of jobs, found {}", node.type_name()),
                "write `needs: [build]` (or `needs: []` to start at once)",
            );
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let ipath = format!("{path}[{i}]");
            match &item.value {
                Value::Map(_) => {
                    let keys = ["job", "artifacts", "optional", "pipeline", "project", "ref", "parallel"];
                    if !self.cx.mapping(item, &ipath, &keys, "a need") {
                        continue;
                    }
                    if let Some(n) = get(item, "pipeline").or_else(|| get(item, "project")) {
                        self.cx.warn(
                            n,
                            &ipath,
                            "a need on another pipeline or project needs GitLab's server; trackside ignores it",
                            "the job runs without waiting for it".to_string(),
                        );
                        continue;
                    }
                    let Some(j) = get(item, "job").and_then(|n| self.cx.string(n, &join(&ipath, "job"))) else {
                        self.cx.err(item, &ipath, "a need has no `job`", "write `- job: build`");
                        continue;
                    };
                    // `parallel: {matrix: [{VAR: value}, ...]}`: only the
                    // instances with those values.
                    let mut matrix = Vec::new();
                    if let Some(n) = get(item, "parallel") {
                        let ppath = join(&ipath, "parallel");
                        if self.cx.mapping(n, &ppath, &["matrix"], "`needs:parallel`")
                            && let Some(Value::Seq(rows)) = get(n, "matrix").map(|m| &m.value)
                        {
                            for (r, row) in rows.iter().enumerate() {
                                let rpath = format!("{ppath}.matrix[{r}]");
                                let Value::Map(pairs) = &row.value else {
                                    self.cx.err(
                                        row,
                                        &rpath,
                                        "a matrix entry is a mapping of variables to values",
                                        "write `- {OS: linux}`",
                                    );
                                    continue;
                                };
                                let mut want = Vec::new();
                                for (k, v) in pairs {
                                    if let Some(text) = self.cx.string(v, &join(&rpath, &k.key_text())) {
                                        want.push((k.key_text(), text));
                                    }
                                }
                                matrix.push(want);
                            }
                        }
                    }
                    let artifacts = get(item, "artifacts")
                        .and_then(|n| self.cx.boolean(n, &join(&ipath, "artifacts")))
                        .unwrap_or(true);
                    let optional = get(item, "optional")
                        .and_then(|n| self.cx.boolean(n, &join(&ipath, "optional")))
                        .unwrap_or(false);
                    out.push(Need {
                        job: j,
                        node: item.clone(),
                        artifacts,
                        optional,
                        matrix,
                    });
                }
                _ => {
                    if let Some(j) = self.cx.string(item, &ipath) {
                        out.push(Need {
                            job: j,
                            node: item.clone(),
                            artifacts: true,
                            optional: false,
                            matrix: Vec::new(),
                        });
                    }
                }
            }
        }
        out
    }

    /// `parallel: N` or `parallel: {matrix: [...]}`: the instances' names
    /// (GitLab's: `test 1/3`, `build: [linux, amd64]`) and variables.
    fn parallel(&mut self, node: &Node, path: &str, name: &str) -> Vec<(String, Vec<EnvVar>)> {
        let var = |k: &str, v: String| EnvVar {
            name: k.into(),
            value: v,
            pos: node.pos,
        };
        match &node.value {
            Value::Map(_) => {
                if !self.cx.mapping(node, path, &["matrix"], "`parallel`") {
                    return Vec::new();
                }
                let Some(m) = get(node, "matrix") else {
                    self.cx.err(
                        node,
                        path,
                        "`parallel` has no `matrix`",
                        "write `parallel: {matrix: [{OS: [linux, mac]}]}`",
                    );
                    return Vec::new();
                };
                let Value::Seq(rows) = &m.value else {
                    self.cx.err(
                        m,
                        &join(path, "matrix"),
                        "`matrix` is a list of mappings",
                        "write `- OS: [linux, mac]`",
                    );
                    return Vec::new();
                };
                let mut out = Vec::new();
                for (i, row) in rows.iter().enumerate() {
                    let rpath = format!("{path}.matrix[{i}]");
                    let Value::Map(entries) = &row.value else {
                        self.cx.err(
                            row,
                            &rpath,
                            "a matrix row is a mapping of variables to values",
                            "write `- OS: [linux, mac]`",
                        );
                        continue;
                    };
                    // The cartesian product, in the order the keys are written.
                    let mut combos: Vec<Vec<(String, String)>> = vec![Vec::new()];
                    for (k, v) in entries {
                        let values: Vec<String> = self
                            .cx
                            .string_list(v, &join(&rpath, &k.key_text()))
                            .into_iter()
                            .map(|(s, _)| s)
                            .collect();
                        combos = combos
                            .into_iter()
                            .flat_map(|c| {
                                values.iter().map(move |val| {
                                    let mut c = c.clone();
                                    c.push((k.key_text(), val.clone()));
                                    c
                                })
                            })
                            .take(MAX_PARALLEL + 1)
                            .collect();
                    }
                    for c in combos {
                        let label: Vec<&str> = c.iter().map(|(_, v)| v.as_str()).collect();
                        let vars: Vec<EnvVar> = c.iter().map(|(k, v)| var(k, v.clone())).collect();
                        out.push((format!("{name}: [{}]", label.join(", ")), vars));
                    }
                }
                let total = out.len();
                for (i, (_, vars)) in out.iter_mut().enumerate() {
                    vars.push(var("CI_NODE_INDEX", (i + 1).to_string()));
                    vars.push(var("CI_NODE_TOTAL", total.to_string()));
                }
                if out.len() > MAX_PARALLEL {
                    self.cx.err(
                        node,
                        path,
                        format!("the matrix makes more than GitLab's {MAX_PARALLEL} jobs"),
                        "split it into several jobs",
                    );
                    out.truncate(MAX_PARALLEL);
                }
                out
            }
            _ => {
                let n = self.cx.int_in(node, path, 1, MAX_PARALLEL as i64).unwrap_or(1) as usize;
                if n == 1 {
                    return vec![(
                        name.to_string(),
                        vec![var("CI_NODE_INDEX", "1".into()), var("CI_NODE_TOTAL", "1".into())],
                    )];
                }
                (1..=n)
                    .map(|i| {
                        // Shown as gitlab-ci-local shows it; GitLab's own
                        // name (`test 1/3`) is CI_JOB_NAME and is accepted
                        // wherever a job is named on the command line.
                        (
                            format!("{name}: [{i}/{n}]"),
                            vec![
                                var("CI_NODE_INDEX", i.to_string()),
                                var("CI_NODE_TOTAL", n.to_string()),
                                var("CI_JOB_NAME", format!("{name} {i}/{n}")),
                            ],
                        )
                    })
                    .collect()
            }
        }
    }

    /// `only`/`except` for older files: refs (names, `/regex/`, `branches`,
    /// `tags`, ...) and `variables`; `changes` counts as matching.
    fn only_except(&mut self, def: &Node, path: &str, created: &[(String, String)], env: &[EnvVar]) -> bool {
        let cli = &self.opts.cli_vars;
        let lookup = |name: &str| -> Option<String> { lookup(name, cli, env, created) };
        let check = |s: &mut Self, key: &str| -> Option<(Option<bool>, Option<bool>, Option<bool>)> {
            let n = get(def, key)?;
            let kpath = join(path, key);
            let (refs, vars, changes) = match &n.value {
                Value::Map(_) => {
                    if !s.cx.mapping(
                        n,
                        &kpath,
                        &["refs", "variables", "changes", "kubernetes"],
                        &format!("`{key}`"),
                    ) {
                        return None;
                    }
                    // `changes` as `rules:changes` decides it (a list of
                    // globs or `{paths, compare_to}`).
                    let changes = get(n, "changes").map(|c| s.changes(c, &join(&kpath, "changes")));
                    (get(n, "refs").cloned(), get(n, "variables").cloned(), changes)
                }
                _ => (Some(n.clone()), None, None),
            };
            let ref_ok = refs.map(|r| {
                s.cx.string_list(&r, &kpath)
                    .iter()
                    .any(|(pattern, _)| ref_matches(pattern, &lookup))
            });
            let vars_ok = vars.map(|v| {
                s.cx.string_list(&v, &join(&kpath, "variables"))
                    .iter()
                    .any(|(text, at)| match rules::parse(text) {
                        Ok(e) => e.eval(&lookup),
                        Err(e) => {
                            let pos = s.cx.pos_in(at, e.offset);
                            let mut d = Diagnostic::error(pos, 1, join(&kpath, "variables"), e.message.clone());
                            d.hint = Some(e.hint.to_string());
                            s.cx.diags.push(d);
                            false
                        }
                    })
            });
            Some((ref_ok, vars_ok, changes))
        };
        // `only` keeps the job when every part given matches; `except`
        // drops it when any part does.
        let only = match check(self, "only") {
            Some((r, v, c)) => r.unwrap_or(true) && v.unwrap_or(true) && c.unwrap_or(true),
            // GitLab's default `only: [branches, tags]`: not in merge request pipelines.
            None => lookup("CI_PIPELINE_SOURCE").as_deref() != Some("merge_request_event"),
        };
        let except = match check(self, "except") {
            Some((r, v, c)) => r.unwrap_or(false) || v.unwrap_or(false) || c.unwrap_or(false),
            None => false,
        };
        only && !except
    }

    /// Lowers the jobs read: parallel instances, stage order and `needs`
    /// into dependencies, with the checks that need every job.
    fn lower(&mut self, read: Vec<Read>, stages: &[String]) -> Vec<Job> {
        let stage_of: HashMap<&str, usize> = read
            .iter()
            .map(|r| (r.name.as_str(), stages.iter().position(|s| *s == r.stage).unwrap_or(0)))
            .collect();
        let instances_of: HashMap<&str, Vec<String>> = read
            .iter()
            .map(|r| (r.name.as_str(), r.instances.iter().map(|(n, _)| n.clone()).collect()))
            .collect();
        let names: Vec<&str> = read.iter().map(|r| r.name.as_str()).collect();
        let by_name: HashMap<&str, &Read> = read.iter().map(|r| (r.name.as_str(), r)).collect();
        // Every instance of each stage, in file order: what a job without
        // `needs` waits for is the stages before its own.
        let mut by_stage: Vec<Vec<&str>> = vec![Vec::new(); stages.len()];
        for r in &read {
            let s = stage_of[r.name.as_str()];
            by_stage[s].extend(r.instances.iter().map(|(n, _)| n.as_str()));
        }
        let mut jobs = Vec::new();
        for r in &read {
            let own_stage = stage_of[r.name.as_str()];
            let mut deps: Vec<(String, crate::pipeline::yaml::Pos)> = Vec::new();
            let mut artifact_from: Option<Vec<String>> = r.job.needs_artifacts.clone();
            match &r.needs {
                None => {
                    for names in &by_stage[..own_stage] {
                        deps.extend(names.iter().map(|n| (n.to_string(), r.key.pos)));
                    }
                }
                Some(needs) => {
                    let mut from = Vec::new();
                    for n in needs {
                        match stage_of.get(n.job.as_str()) {
                            None if n.optional => {}
                            None => self.cx.err(
                                &n.node,
                                &format!("{}.needs", r.name),
                                format!(
                                    "job `{}` needs `{}`, which is not a job of this pipeline",
                                    r.name, n.job
                                ),
                                suggestion_hint(&n.job, &names, "jobs"),
                            ),
                            Some(&s) if s > own_stage => self.cx.err(
                                &n.node,
                                &format!("{}.needs", r.name),
                                format!(
                                    "job `{}` (stage `{}`) needs `{}`, which is in the later stage `{}`",
                                    r.name, r.stage, n.job, stages[s]
                                ),
                                "a job can need jobs of its own stage or earlier ones; move one of them",
                            ),
                            Some(_) => {
                                let chosen: Vec<String> = by_name
                                    .get(n.job.as_str())
                                    .into_iter()
                                    .flat_map(|o| o.instances.iter())
                                    .filter(|(_, vars)| {
                                        n.matrix.is_empty()
                                            || n.matrix.iter().any(|row| {
                                                row.iter()
                                                    .all(|(k, v)| vars.iter().any(|e| &e.name == k && &e.value == v))
                                            })
                                    })
                                    .map(|(name, _)| name.clone())
                                    .collect();
                                if chosen.is_empty() {
                                    self.cx.err(
                                        &n.node,
                                        &format!("{}.needs", r.name),
                                        format!("no instance of `{}` has the matrix values this need names", n.job),
                                        "check the values against the job's `parallel:matrix`",
                                    );
                                }
                                for inst in &chosen {
                                    deps.push((inst.clone(), n.node.pos));
                                    if n.artifacts {
                                        from.push(inst.clone());
                                    }
                                }
                            }
                        }
                    }
                    if artifact_from.is_none() {
                        artifact_from = Some(from);
                    }
                }
            }
            for (d, at) in &r.dependencies {
                match stage_of.get(d.as_str()) {
                    None => self.cx.err(
                        at,
                        &format!("{}.dependencies", r.name),
                        format!(
                            "job `{}` takes artifacts from `{d}`, which is not a job of this pipeline",
                            r.name
                        ),
                        suggestion_hint(d, &names, "jobs"),
                    ),
                    Some(&s) if s >= own_stage && r.needs.is_none() => self.cx.err(
                        at,
                        &format!("{}.dependencies", r.name),
                        format!(
                            "`dependencies` of `{}` names `{d}`, which is not in an earlier stage",
                            r.name
                        ),
                        "GitLab takes artifacts only from earlier stages (or from `needs`)",
                    ),
                    Some(_) => {}
                }
            }
            // `dependencies` names base jobs; the model names instances.
            if let Some(list) = &artifact_from {
                artifact_from = Some(
                    list.iter()
                        .flat_map(|d| instances_of.get(d.as_str()).cloned().unwrap_or_else(|| vec![d.clone()]))
                        .collect(),
                );
            }
            for (inst, vars) in &r.instances {
                let mut job = r.job.clone();
                job.name = inst.clone();
                // GitLab's per-job facts: a job id unique in the run, its URL.
                let id = jobs.len() + 1;
                let at = r.key.pos;
                let mut facts = vec![
                    EnvVar {
                        name: "CI_JOB_ID".into(),
                        value: id.to_string(),
                        pos: at,
                    },
                    EnvVar {
                        name: "CI_JOB_URL".into(),
                        value: format!("${{CI_PROJECT_URL}}/-/jobs/{id}"),
                        pos: at,
                    },
                    EnvVar {
                        name: "CI_JOB_NAME_SLUG".into(),
                        value: slug(inst, 63),
                        pos: at,
                    },
                ];
                facts.append(&mut job.environment);
                job.environment = facts;
                job.environment.extend(vars.iter().cloned());
                job.depends_on = deps.iter().map(|(d, _)| d.clone()).collect();
                job.depends_on_pos = deps.iter().map(|(_, p)| *p).collect();
                job.needs_artifacts = artifact_from.clone();
                jobs.push(job);
            }
        }
        jobs
    }
}

/// GitLab's slugs (`CI_JOB_NAME_SLUG`, `CI_COMMIT_REF_SLUG`): lower case,
/// every character but a-z and 0-9 as `-`, at most `max` bytes, no `-` at
/// either end.
pub fn slug(name: &str, max: usize) -> String {
    let slug: String = name
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .take(max)
        .collect();
    slug.trim_matches('-').to_string()
}

/// A script as GitLab's runner writes it: each command echoed first, in
/// green, as `$ command` (a multi-line one by its first line, marked as
/// collapsed), so the log reads as GitLab's job log does.
fn echoed(commands: Vec<String>) -> Vec<String> {
    let mut out = Vec::with_capacity(commands.len() * 2);
    for c in commands {
        let first = c.lines().next().unwrap_or_default();
        let shown = if c.trim_end().contains('\n') {
            format!("{first} # collapsed multi-line command")
        } else {
            first.to_string()
        };
        let quoted = shown.replace('\'', r"'\''");
        out.push(format!("printf '\\033[32m$ %s\\033[0;m\\n' '{quoted}'"));
        out.push(c);
    }
    out
}

/// A variable as rules see it: the command line's, then the job's, then
/// the file's and the predefined ones (GitLab ranks pipeline variables
/// above the YAML's).
fn lookup(name: &str, cli: &[(String, String)], job: &[EnvVar], created: &[(String, String)]) -> Option<String> {
    let pair = |list: &[(String, String)]| list.iter().rev().find(|(n, _)| n == name).map(|(_, v)| v.clone());
    pair(cli)
        .or_else(|| job.iter().rev().find(|v| v.name == name).map(|v| v.value.clone()))
        .or_else(|| pair(created))
}

/// `when` as rules and jobs write it: a run condition, or `never`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WhenOrNever {
    When(When),
    /// `delayed`: on success, after `start_in`.
    Delayed,
    Never,
}

struct RuleDecision {
    when: Option<WhenOrNever>,
    allow_failure: Option<bool>,
    variables: Vec<EnvVar>,
    /// The rule's `start_in` (node and path), for `when: delayed`.
    start_in: Option<(Node, String)>,
    /// The rule's `needs` (node and path): instead of the job's.
    needs: Option<(Node, String)>,
    /// The rule's `interruptible`: instead of the job's.
    interruptible: Option<bool>,
}

const RETRY_REASONS: [&str; 13] = [
    "always",
    "unknown_failure",
    "script_failure",
    "api_failure",
    "stuck_or_timeout_failure",
    "runner_system_failure",
    "runner_unsupported",
    "stale_schedule",
    "job_execution_timeout",
    "archived_failure",
    "unmet_prerequisites",
    "scheduler_failure",
    "data_integrity_failure",
];

/// The failure classes one of GitLab's retry reasons covers.
fn retry_reason(reason: &str) -> Option<Vec<FailureClass>> {
    use FailureClass as F;
    Some(match reason {
        "always" => F::ALL.iter().copied().filter(|c| *c != F::Cancelled).collect(),
        "script_failure" => vec![F::Script, F::Oom],
        "stuck_or_timeout_failure" | "job_execution_timeout" => vec![F::Timeout],
        "scheduler_failure" => vec![F::Infra, F::Unschedulable],
        "runner_system_failure" | "api_failure" | "unmet_prerequisites" | "runner_unsupported" => {
            vec![F::Infra]
        }
        "data_integrity_failure" => vec![F::DataIntegrity],
        "unknown_failure" => vec![F::Signal, F::Network, F::DiskFull],
        "stale_schedule" | "archived_failure" => Vec::new(),
        _ => return None,
    })
}

/// One `only`/`except` ref pattern against the pipeline's ref.
fn ref_matches(pattern: &str, get: &dyn Fn(&str) -> Option<String>) -> bool {
    let source = get("CI_PIPELINE_SOURCE").unwrap_or_else(|| "push".into());
    let branch = get("CI_COMMIT_BRANCH");
    let tag = get("CI_COMMIT_TAG");
    let name = tag
        .clone()
        .or_else(|| branch.clone())
        .or_else(|| get("CI_COMMIT_REF_NAME"));
    match pattern {
        "branches" => branch.is_some(),
        "tags" => tag.is_some(),
        "merge_requests" => source == "merge_request_event",
        "pushes" => source == "push",
        "schedules" => source == "schedule",
        "triggers" => source == "trigger",
        "pipelines" => source == "pipeline" || source == "parent_pipeline",
        "external_pull_requests" => source == "external_pull_request_event",
        "api" | "web" | "external" | "chat" => source == pattern,
        p if p.starts_with('/') && p.len() > 1 => rules::parse(&format!("$REF =~ {p}"))
            .is_ok_and(|e| e.eval(&|v| if v == "REF" { name.clone() } else { None })),
        p => name.as_deref() == Some(p),
    }
}

/// `3600`, `1h 30m`, `3 hours 30 minutes`, `2h32m`, `1 week`, `30 sec`.
pub fn parse_gitlab_duration(text: &str) -> Option<Duration> {
    let t = text.trim().to_ascii_lowercase();
    if let Ok(n) = t.parse::<u64>() {
        return Some(Duration::from_secs(n));
    }
    let mut total: f64 = 0.0;
    let mut rest = t.as_str();
    let mut any = false;
    while !rest.trim_start().is_empty() {
        rest = rest.trim_start().trim_start_matches("and").trim_start();
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return None;
        }
        let n: f64 = rest[..num_len].parse().ok()?;
        rest = rest[num_len..].trim_start();
        let unit_len = rest.find(|c: char| !c.is_ascii_alphabetic()).unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = rest[unit_len..].trim_start_matches(',');
        let secs = match unit {
            "s" | "sec" | "secs" | "second" | "seconds" | "" => 1.0,
            "m" | "min" | "mins" | "minute" | "minutes" => 60.0,
            "h" | "hr" | "hrs" | "hour" | "hours" => 3600.0,
            "d" | "day" | "days" => 86_400.0,
            "w" | "week" | "weeks" => 604_800.0,
            "mo" | "month" | "months" => 2_592_000.0,
            "y" | "yr" | "year" | "years" => 31_536_000.0,
            _ => return None,
        };
        total += n * secs;
        any = true;
    }
    (any && total.is_finite() && total < 1e10).then(|| Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests;
