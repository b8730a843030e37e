//! `trigger:` of a child pipeline from this repository: the child's file
//! (`trigger: {include: ci/child.yml}`, any `include` form) is read as a
//! GitLab pipeline of its own, created with `CI_PIPELINE_SOURCE` =
//! `parent_pipeline` and the trigger job's variables, and its jobs join the
//! DAG as `TRIGGER/JOB`: they start when the trigger job could, and keep
//! their own stages and needs. With `strategy: depend` the trigger job
//! waits for the whole child pipeline (and what follows it waits too);
//! without, it passes as soon as the child is created, as in GitLab.
//!
//! A dynamic child pipeline (`include: [{artifact: FILE, job: GEN}]`) is a
//! file job GEN makes: the trigger job waits for GEN, and when GEN has
//! passed the engine reads FILE from its artifacts and grafts the child in
//! ([`with_generated_child`]), as GitLab creates it then.
//!
//! A trigger of another project (`trigger: group/project`, `project:`)
//! needs GitLab's server: it is left out with a warning.

use std::path::Path;

use super::{Gitlab, NO_JOB, get, join};
use crate::pipeline::model::{EnvVar, GeneratedChild, Job, Pipeline};
use crate::pipeline::yaml::{Node, Value};
use crate::pipeline::{Dialect, LoadOptions};

/// GitLab's limit: a child pipeline may trigger one more level.
pub const MAX_DEPTH: usize = 2;

/// A trigger job's child pipeline, as written.
#[derive(Clone)]
pub(super) struct Trigger {
    /// The `include` node (a file, a list, mappings).
    include: Node,
    /// `strategy: depend` (or `mirror`): the trigger job waits for the child.
    depend: bool,
    /// `forward:yaml_variables` (default true): the trigger job's variables
    /// reach the child.
    forward_yaml: bool,
    /// `include: [{artifact, job}]`: the job and the file, and the node.
    generated: Option<(String, String, Node)>,
}

impl Gitlab<'_, '_> {
    /// Reads `trigger:`; `None` when the job is to be left out (reported).
    pub(super) fn trigger_spec(&mut self, node: &Node, path: &str) -> Option<Trigger> {
        let tpath = join(path, "trigger");
        if let Value::Str(project) = &node.value {
            self.warn_once(
                node,
                &tpath,
                "trigger:project",
                format!(
                    "`trigger: {project}` starts a pipeline of another project on GitLab's server; the job is left out"
                ),
                "run that project's pipeline from its own checkout",
            );
            return None;
        }
        let keys = ["include", "project", "branch", "strategy", "forward"];
        if !self.cx.mapping(node, &tpath, &keys, "`trigger`") {
            return None;
        }
        if let (Some(_), Some(p)) = (get(node, "include"), get(node, "project")) {
            self.cx.err(
                p,
                &join(&tpath, "project"),
                "`trigger` takes `include` (a child pipeline) or `project` (another project's), not both",
                "keep one of them",
            );
            return None;
        }
        if get(node, "project").is_some() {
            self.warn_once(
                node,
                &tpath,
                "trigger:project",
                "`trigger:project` starts a pipeline of another project on GitLab's server; the job is left out".into(),
                "run that project's pipeline from its own checkout",
            );
            return None;
        }
        let Some(include) = get(node, "include").cloned() else {
            self.cx.err(
                node,
                &tpath,
                "`trigger` needs `include:` (the child pipeline's file)",
                "write `trigger: {include: ci/child.yml}`",
            );
            return None;
        };
        let ipath = join(&tpath, "include");
        let dynamic = |n: &&&Node| get(n, "artifact").is_some();
        let items: Vec<&Node> = match &include.value {
            Value::Seq(items) => items.iter().collect(),
            _ => vec![&include],
        };
        let generated = match (items.iter().find(dynamic), items.len()) {
            (None, _) => None,
            (Some(item), 1) => {
                if !self
                    .cx
                    .mapping(item, &ipath, &["artifact", "job"], "`include:artifact`")
                {
                    return None;
                }
                let artifact = get(item, "artifact").and_then(|a| self.cx.string(a, &join(&ipath, "artifact")))?;
                let Some(job) = get(item, "job") else {
                    self.cx.err(
                        item,
                        &ipath,
                        "`include:artifact` needs `job:`, the job whose artifacts hold the file",
                        "write `include: [{artifact: child.yml, job: generate}]`",
                    );
                    return None;
                };
                let job = self.cx.string(job, &join(&ipath, "job"))?;
                Some((job, artifact, (*item).clone()))
            }
            (Some(item), _) => {
                self.cx.err(
                    item,
                    &ipath,
                    "a child pipeline from an artifact is that one file: `include` lists nothing else",
                    "put what else the child includes in the generated file",
                );
                return None;
            }
        };
        let depend = match get(node, "strategy") {
            None => false,
            Some(s) => match s.as_str() {
                Some("depend") | Some("mirror") => true,
                _ => {
                    self.cx.err(
                        s,
                        &join(&tpath, "strategy"),
                        format!("`strategy: {}` is not one of GitLab's", s.key_text()),
                        "write `strategy: depend`",
                    );
                    return None;
                }
            },
        };
        let forward_yaml = get(node, "forward")
            .and_then(|f| get(f, "yaml_variables"))
            .and_then(|v| self.cx.boolean(v, &join(&tpath, "forward.yaml_variables")))
            .unwrap_or(true);
        Some(Trigger {
            include,
            depend,
            forward_yaml,
            generated,
        })
    }

    /// Reads each trigger job's child pipeline and puts its jobs into
    /// `jobs` (see the module's note).
    /// Also returns each trigger job's child stages (as `TRIGGER/STAGE`).
    pub(super) fn expand_triggers(
        &mut self,
        mut jobs: Vec<Job>,
        triggers: Vec<(String, Trigger)>,
    ) -> (Vec<Job>, Vec<(String, Vec<String>)>) {
        let mut child_stages = Vec::new();
        for (name, t) in triggers {
            let Some(at) = jobs.iter().position(|j| j.name == name) else {
                continue;
            };
            if self.depth + 1 > MAX_DEPTH {
                self.cx.err(
                    &t.include,
                    &format!("{name}.trigger.include"),
                    format!("child pipelines nest deeper than GitLab's {MAX_DEPTH} levels"),
                    "trigger the deeper pipeline from its parent instead",
                );
                continue;
            }
            let parent = jobs[at].clone();
            // What the child is created with: the trigger job's variables
            // (GitLab passes its `variables` and the file's), as pipeline
            // variables.
            let mut passed: Vec<(String, String)> = if t.forward_yaml {
                parent
                    .environment
                    .iter()
                    .filter(|v| !v.name.starts_with("CI_") && !v.name.starts_with("GITLAB_"))
                    .map(|v| (v.name.clone(), v.value.clone()))
                    .collect()
            } else {
                Vec::new()
            };
            passed.push(("CI_PIPELINE_SOURCE".into(), "parent_pipeline".into()));
            if let Some((generator, artifact, node)) = &t.generated {
                // Read at run time, once the generator has passed: it must run first.
                if !jobs[at].depends_on.iter().any(|d| d == generator) {
                    self.cx.err(
                        node,
                        &format!("{name}.trigger.include.job"),
                        format!("`{generator}` must run before `{name}`, which reads its artifact"),
                        format!("put `{generator}` in an earlier stage, or in `{name}`'s `needs`"),
                    );
                    continue;
                }
                // A trigger job takes no artifacts (the engine reads the file itself).
                jobs[at].needs_artifacts = Some(Vec::new());
                jobs[at].generated_child = Some(Box::new(GeneratedChild {
                    job: generator.clone(),
                    artifact: artifact.clone(),
                    depend: t.depend,
                    variables: passed,
                }));
                continue;
            }
            let config = Node {
                value: Value::Map(vec![(
                    Node {
                        value: Value::Str("include".into()),
                        ..t.include.clone()
                    },
                    t.include.clone(),
                )]),
                ..t.include.clone()
            };
            let diags_before = self.cx.diags.len();
            let child_jobs = {
                // One budget of included files and interpolation for the
                // parent and all its children.
                let mut child = Gitlab::new(self.cx, self.opts);
                child.depth = self.depth + 1;
                child.pipeline_vars = passed.clone();
                child.interpolated = self.interpolated;
                let mut state = std::mem::take(&mut self.includes);
                let parents_files = std::mem::take(&mut state.seen);
                let merged = child.with_includes(&config, 0, &mut state);
                // Grandchildren share it too.
                child.includes = state;
                let resolved = child.resolve_references(&merged, &merged, 0);
                let read = child.pipeline(&resolved, name.clone());
                self.interpolated = child.interpolated;
                self.includes = std::mem::take(&mut child.includes);
                self.includes.seen = parents_files;
                read
            };
            let Some(child_pipeline) = child_jobs else {
                // A child whose rules leave every job out cannot be created:
                // GitLab fails the trigger job, not the parent pipeline.
                let new: Vec<&crate::pipeline::Diagnostic> =
                    self.cx.diags[diags_before..].iter().filter(|d| d.is_error()).collect();
                if let [only] = new.as_slice()
                    && only.message.starts_with(NO_JOB)
                {
                    self.cx
                        .diags
                        .retain(|d| !(d.is_error() && d.message.starts_with(NO_JOB)));
                    fail_with(
                        &mut jobs[at],
                        "the child pipeline has no job (its rules leave every job out); GitLab fails this trigger job",
                    );
                }
                continue;
            };
            let stages = graft(&mut jobs, at, child_pipeline, &passed, t.depend);
            child_stages.push((name.clone(), stages));
        }
        (jobs, child_stages)
    }
}

/// Puts a child pipeline's jobs into `jobs` under the trigger job at `at`
/// (see the module's note): named `TRIGGER/JOB`, starting when the trigger
/// job could, given `passed`; with `depend` the trigger job waits for all
/// of them. Returns the child's stages, as `TRIGGER/STAGE`.
fn graft(jobs: &mut Vec<Job>, at: usize, child: Pipeline, passed: &[(String, String)], depend: bool) -> Vec<String> {
    let parent = jobs[at].clone();
    let name = &parent.name;
    let stages = child.stages.iter().map(|s| format!("{name}/{s}")).collect();
    let rename = |n: &str| format!("{name}/{n}");
    let mut sinks: Vec<String> = Vec::new();
    let mut added: Vec<Job> = Vec::new();
    for mut j in child.jobs {
        j.name = rename(&j.name);
        j.depends_on = j.depends_on.iter().map(|d| rename(d)).collect();
        // Artifacts come from the child's own jobs only: a child
        // pipeline gets nothing of its parent's (GitLab's rule,
        // short of `needs:pipeline:job`).
        j.needs_artifacts = Some(match j.needs_artifacts {
            Some(l) => l.iter().map(|d| rename(d)).collect(),
            None => j.depends_on.clone(),
        });
        if j.depends_on.is_empty() {
            j.depends_on = parent.depends_on.clone();
            j.depends_on_pos = parent.depends_on_pos.clone();
        }
        j.stage = j.stage.map(|s| format!("{name}/{s}"));
        for (k, v) in passed {
            j.environment.push(EnvVar {
                name: k.clone(),
                value: v.clone(),
                pos: parent.pos,
            });
        }
        added.push(j);
    }
    let needed: std::collections::HashSet<&str> = added
        .iter()
        .flat_map(|o| o.depends_on.iter().map(String::as_str))
        .collect();
    for j in &added {
        if !needed.contains(j.name.as_str()) {
            sinks.push(j.name.clone());
        }
    }
    if depend {
        let p = &mut jobs[at];
        p.depends_on = sinks;
        p.depends_on_pos = vec![p.pos; p.depends_on.len()];
        p.needs_artifacts = Some(Vec::new());
        p.mirrors_upstream = true;
    }
    jobs.splice(at..at, added);
    stages
}

/// Why a generated child pipeline cannot join the run.
#[derive(Debug, thiserror::Error)]
pub enum GeneratedChildError {
    #[error("`{0}` is no trigger job of a generated child pipeline")]
    NotATrigger(String),
    /// The file's mistakes, one per line.
    #[error("{0}")]
    Invalid(String),
}

/// `pipeline` with trigger job `trigger` failing when it runs, saying
/// `why` (each line on its own): its child pipeline cannot be created.
pub fn failing_trigger(pipeline: &Pipeline, trigger: &str, why: &str) -> Pipeline {
    let mut p = pipeline.clone();
    if let Some(j) = p.jobs.iter_mut().find(|j| j.name == trigger) {
        j.generated_child = None;
        fail_with(j, why);
    }
    p
}

/// Makes trigger job `job` print `why` and fail.
fn fail_with(job: &mut Job, why: &str) {
    let mut script: Vec<String> = why
        .lines()
        .map(|l| format!("echo 'trackside: {}' >&2", l.replace('\'', "'\\''")))
        .collect();
    script.push("exit 1".into());
    if let Some(step) = job.steps.first_mut() {
        step.script = script;
    }
}

/// `pipeline` with the child pipeline that trigger job `trigger` takes
/// from its generator's artifact: `text` is the file, read as GitLab reads
/// a child pipeline (with `opts`, and `CI_PIPELINE_SOURCE` =
/// `parent_pipeline` and the trigger job's variables), and grafted in as a
/// written child is ([`graft`]); the child's stages follow the trigger's.
/// An error (the file's mistakes, one per line, or a child with no job) is
/// what fails the trigger job, as GitLab fails one whose downstream
/// pipeline cannot be created.
pub fn with_generated_child(
    pipeline: &Pipeline,
    trigger: &str,
    text: String,
    opts: &LoadOptions,
) -> Result<Pipeline, GeneratedChildError> {
    let spec = pipeline
        .job(trigger)
        .and_then(|j| j.generated_child.clone())
        .ok_or_else(|| GeneratedChildError::NotATrigger(trigger.to_string()))?;
    let at = pipeline
        .job_index(trigger)
        .ok_or_else(|| GeneratedChildError::NotATrigger(trigger.to_string()))?;
    let mut o = opts.clone();
    o.dialect = Some(Dialect::Gitlab);
    o.ci_vars.retain(|(k, _)| !spec.variables.iter().any(|(p, _)| p == k));
    o.ci_vars.extend(spec.variables.iter().cloned());
    let file = format!("{} (artifact of {})", spec.artifact, spec.job);
    let child = match crate::pipeline::parse_source(Path::new(&file), text, &o) {
        Ok((p, _)) => p,
        Err(report) => {
            let errors: Vec<String> = report
                .items
                .iter()
                .filter(|d| d.is_error())
                .map(|d| report.one_line(d))
                .collect();
            return Err(GeneratedChildError::Invalid(errors.join("\n")));
        }
    };
    let mut new = pipeline.clone();
    new.jobs[at].generated_child = None;
    let stage = new.jobs[at].stage.clone();
    let stages = graft(&mut new.jobs, at, child, &spec.variables, spec.depend);
    let after = stage
        .and_then(|s| new.stages.iter().position(|x| *x == s))
        .map_or(new.stages.len(), |i| i + 1);
    new.stages.splice(after..after, stages);
    Ok(new)
}
