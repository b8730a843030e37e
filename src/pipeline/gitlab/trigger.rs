//! `trigger:` of a child pipeline from this repository: the child's file
//! (`trigger: {include: ci/child.yml}`, any `include` form) is read as a
//! GitLab pipeline of its own, created with `CI_PIPELINE_SOURCE` =
//! `parent_pipeline` and the trigger job's variables, and its jobs join the
//! DAG as `TRIGGER/JOB`: they start when the trigger job could, and keep
//! their own stages and needs. With `strategy: depend` the trigger job
//! waits for the whole child pipeline (and what follows it waits too);
//! without, it passes as soon as the child is created, as in GitLab.
//!
//! A trigger of another project (`trigger: group/project`, `project:`)
//! and a dynamic child pipeline (`include: {artifact, job}`) need GitLab's
//! server or a generated file: they are left out with a warning.

use super::{Gitlab, NO_JOB, get, join};
use crate::pipeline::model::{EnvVar, Job};
use crate::pipeline::yaml::{Node, Value};

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
        let dynamic = |n: &Node| get(n, "artifact").is_some();
        let generated = match &include.value {
            Value::Seq(items) => items.iter().any(dynamic),
            _ => dynamic(&include),
        };
        if generated {
            self.warn_once(
                &include,
                &join(&tpath, "include"),
                "trigger:artifact",
                "a child pipeline from a job's artifact (a generated file) is not run by trackside yet; the job is left out".into(),
                "generate the file first and include it with `local:`",
            );
            return None;
        }
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
                    if let Some(step) = jobs[at].steps.first_mut() {
                        step.script = vec![
                            "echo 'trackside: the child pipeline has no job (its rules leave every job out); GitLab fails this trigger job' >&2".into(),
                            "exit 1".into(),
                        ];
                    }
                }
                continue;
            };
            child_stages.push((
                name.clone(),
                child_pipeline.stages.iter().map(|s| format!("{name}/{s}")).collect(),
            ));
            let child_jobs = child_pipeline.jobs;
            let rename = |n: &str| format!("{name}/{n}");
            let mut sinks: Vec<String> = Vec::new();
            let mut added: Vec<Job> = Vec::new();
            for mut j in child_jobs {
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
                for (k, v) in &passed {
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
            if t.depend {
                let p = &mut jobs[at];
                p.depends_on = sinks;
                p.depends_on_pos = vec![p.pos; p.depends_on.len()];
                p.needs_artifacts = Some(Vec::new());
                p.mirrors_upstream = true;
            }
            jobs.splice(at..at, added);
        }
        (jobs, child_stages)
    }
}
