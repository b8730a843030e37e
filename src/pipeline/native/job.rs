//! Native jobs and their steps: keys, scripts, conditions, retries,
//! timeouts and working directories.

use std::path::Path;

use crate::pipeline::diag::{Diagnostic, suggestion_hint};
use crate::pipeline::expr;
use crate::pipeline::model::*;
use crate::pipeline::read::*;
use crate::pipeline::yaml::{Node, Value};

const JOB_KEYS: [&str; 29] = [
    "steps",
    "approvers",
    "depends_on",
    "environment",
    "timeout",
    "retry_count",
    "retry_when",
    "conditional",
    "when",
    "allow_failure",
    "resource_group",
    "interruptible",
    "working_directory",
    "image",
    "user",
    "entrypoint",
    "pull",
    "resources",
    "privileged",
    "cap_drop",
    "read_only_rootfs",
    "services",
    "docker_socket",
    "node_labels",
    "artifacts",
    "needs_artifacts",
    "cache",
    "deploy",
    "reports",
];
/// Words GitLab's and GitHub's formats use for a job's keys, and
/// trackside's for each: an unknown key that is one of them is told which.
const JOB_WORDS: [(&str, &str); 7] = [
    ("needs", "depends_on"),
    ("variables", "environment"),
    ("env", "environment"),
    ("retry", "retry_count"),
    ("timeout-minutes", "timeout"),
    ("continue-on-error", "allow_failure"),
    ("if", "conditional"),
];
/// The same for a step's keys (GitHub's).
const STEP_WORDS: [(&str, &str); 5] = [
    ("run", "script"),
    ("env", "environment"),
    ("working-directory", "working_directory"),
    ("continue-on-error", "continue_on_failure"),
    ("timeout-minutes", "timeout"),
];
const STEP_KEYS: [&str; 9] = [
    "name",
    "script",
    "image",
    "environment",
    "working_directory",
    "timeout",
    "retry_count",
    "continue_on_failure",
    "cleanup",
];

impl Cx<'_> {
    /// `approvers: {users, groups, required, allow_self}` of a manual job
    /// or a deploy's gates.
    pub(crate) fn approvers(&mut self, node: &Node, path: &str) -> Option<crate::pipeline::model::Approvers> {
        if !self.mapping(
            node,
            path,
            &["users", "groups", "required", "allow_self"],
            "`approvers`",
        ) {
            return None;
        }
        let mut names = |key: &str| -> Vec<String> {
            get(node, key)
                .map(|n| {
                    self.string_list(n, &join(path, key))
                        .into_iter()
                        .map(|(s, _)| s)
                        .collect()
                })
                .unwrap_or_default()
        };
        let users = names("users");
        let groups = names("groups");
        let required = match get(node, "required") {
            Some(n) => self.int_in(n, &join(path, "required"), 1, 100)?,
            None => 1,
        };
        let allow_self = match get(node, "allow_self") {
            Some(n) => self.boolean(n, &join(path, "allow_self"))?,
            None => true,
        };
        let named = u32::try_from(users.len()).unwrap_or(u32::MAX);
        if groups.is_empty() && !users.is_empty() && required > named {
            self.err(
                node,
                path,
                format!("`approvers` requires {required} approvals but names only {named} user(s)"),
                "name more users, add `groups`, or lower `required`",
            );
            return None;
        }
        Some(crate::pipeline::model::Approvers {
            users,
            groups,
            required,
            allow_self,
        })
    }

    pub(crate) fn job(&mut self, key: &Node, node: &Node, rp: &RetryPolicy) -> Option<Job> {
        let name = key.key_text();
        let path = format!("jobs.{name}");
        if !valid_job_name(&name) {
            self.err(
                key,
                &path,
                format!("`{name}` is not a valid job name"),
                "use letters, digits, `-`, `_` and `.` (at most 100), starting with a letter or digit",
            );
        }
        if !self.mapping_of(node, &path, &JOB_KEYS, &JOB_WORDS, &format!("job `{name}`")) {
            return None;
        }
        let job_image = get(node, "image").and_then(|n| self.string(n, &join(&path, "image")));
        let mut steps = Vec::new();
        let deploy_node = get(node, "deploy");
        match get(node, "steps") {
            None if deploy_node.is_some() => {}
            Some(s) if deploy_node.is_some() => self.err(
                s,
                &join(&path, "steps"),
                format!("job `{name}` has both `deploy` and `steps`"),
                "a deploy job rolls a service out and runs no steps: move the steps to a job it depends on",
            ),
            None => self.err(
                key,
                &path,
                format!("job `{name}` has no `steps`"),
                "add `steps:` with at least one `- script: ...`",
            ),
            Some(s) => match &s.value {
                Value::Seq(items) if !items.is_empty() => {
                    for (i, st) in items.iter().enumerate() {
                        if let Some(step) = self.step(st, &format!("{path}.steps[{i}]"), i) {
                            steps.push(step);
                        }
                    }
                    let mut seen: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
                    for (i, st) in steps.iter().enumerate() {
                        if let Some(&first) = seen.get(st.name.as_str()) {
                            let n = get(&items[i], "name").unwrap_or(&items[i]);
                            self.err(
                                n,
                                &format!("{path}.steps[{i}].name"),
                                format!("duplicate step name `{}` in job `{name}`", st.name),
                                format!(
                                    "step {} already uses this name; step names must be unique within a job",
                                    first + 1
                                ),
                            );
                        } else {
                            seen.insert(&st.name, i);
                        }
                    }
                }
                Value::Seq(_) => self.err(
                    s,
                    &join(&path, "steps"),
                    "`steps` is empty",
                    "add at least one `- script: ...` entry",
                ),
                _ => self.err(
                    s,
                    &join(&path, "steps"),
                    format!("`steps` must be a non-empty list, found {}", s.type_name()),
                    "write one `- script: ...` entry per step",
                ),
            },
        }
        if let Some(img) = job_image {
            for st in &mut steps {
                st.image.get_or_insert_with(|| img.clone());
            }
        }
        let mut depends_on = Vec::new();
        let mut depends_on_pos = Vec::new();
        if let Some(d) = get(node, "depends_on") {
            for (dep, n) in self.string_list(d, &join(&path, "depends_on")) {
                depends_on.push(dep);
                depends_on_pos.push(n.pos);
            }
        }
        let environment = get(node, "environment")
            .map(|n| self.env_map(n, &join(&path, "environment")))
            .unwrap_or_default();
        let timeout = get(node, "timeout")
            .and_then(|n| self.seconds_in(n, &join(&path, "timeout"), 1.0, 86400.0))
            .unwrap_or(DEFAULT_JOB_TIMEOUT);
        let retry_count = match get(node, "retry_count") {
            Some(n) => self.int_in(n, &join(&path, "retry_count"), 0, 5).unwrap_or(0),
            None => rp.max_attempts.saturating_sub(1),
        };
        let mut retry_when = Vec::new();
        if let Some(n) = get(node, "retry_when") {
            let rpath = join(&path, "retry_when");
            let items: Vec<(String, Node)> = self.string_list(n, &rpath);
            for (i, (s, item)) in items.iter().enumerate() {
                match FailureClass::parse(s) {
                    Some(c) if !retry_when.contains(&c) => retry_when.push(c),
                    Some(_) => {}
                    None => {
                        let names: Vec<&str> = FailureClass::ALL.iter().map(|c| c.as_str()).collect();
                        self.err(
                            item,
                            &format!("{rpath}[{i}]"),
                            format!("unknown failure class `{s}`"),
                            suggestion_hint(s, &names, "classes"),
                        );
                    }
                }
            }
        }
        if retry_when.is_empty() {
            retry_when = FailureClass::TRANSIENT.to_vec();
        }
        let conditional = get(node, "conditional").and_then(|n| {
            let cpath = join(&path, "conditional");
            let src = self.string(n, &cpath)?;
            let inner = src
                .trim()
                .strip_prefix("${{")
                .and_then(|s| s.strip_suffix("}}"))
                .unwrap_or(&src)
                .to_string();
            let lead = src.find(inner.as_str()).unwrap_or(0);
            match expr::parse(&inner) {
                Ok(e) => Some(Condition {
                    source: inner.trim().to_string(),
                    expr: e,
                    pos: n.pos,
                }),
                Err(e) => {
                    let offset = src[..(lead + e.offset).min(src.len())].chars().count();
                    let pos = self.pos_in(n, offset);
                    let mut d = Diagnostic::error(pos, 1, &cpath, format!("invalid expression: {}", e.message));
                    d.hint = e
                        .hint
                        .or(Some("see the expression syntax in docs/pipeline-format.md".into()));
                    self.diags.push(d);
                    None
                }
            }
        });
        let when = match get(node, "when") {
            Some(n) => {
                let wpath = join(&path, "when");
                match self.string(n, &wpath) {
                    Some(s) => match When::ALL.iter().find(|(k, _)| *k == s) {
                        Some((_, w)) => *w,
                        None => {
                            let names: Vec<&str> = When::ALL.iter().map(|(k, _)| *k).collect();
                            self.err(
                                n,
                                &wpath,
                                format!("unknown `when` value `{s}`"),
                                suggestion_hint(&s, &names, "values"),
                            );
                            When::OnSuccess
                        }
                    },
                    None => When::OnSuccess,
                }
            }
            None => When::OnSuccess,
        };
        let allow_failure = get(node, "allow_failure")
            .and_then(|n| self.boolean(n, &join(&path, "allow_failure")))
            .unwrap_or(false);
        let resource_group = get(node, "resource_group")
            .and_then(|n| self.string(n, &join(&path, "resource_group")))
            .filter(|g| !g.trim().is_empty());
        let interruptible = get(node, "interruptible")
            .and_then(|n| self.boolean(n, &join(&path, "interruptible")))
            .unwrap_or(false);
        let working_directory = get(node, "working_directory").and_then(|n| {
            let wd = self.string(n, &join(&path, "working_directory"))?;
            self.check_workdir(&wd, n, &join(&path, "working_directory"));
            Some(wd)
        });
        let container = self.container(node, &path);
        let services = get(node, "services")
            .map(|n| self.services(n, &path))
            .unwrap_or_default();
        let artifacts = get(node, "artifacts").and_then(|n| self.artifacts(n, &join(&path, "artifacts")));
        let junit = get(node, "reports")
            .map(|n| self.reports(n, &join(&path, "reports")))
            .unwrap_or_default();
        let needs_artifacts = get(node, "needs_artifacts").map(|n| {
            self.string_list(n, &join(&path, "needs_artifacts"))
                .into_iter()
                .map(|(s, _)| s)
                .collect()
        });
        let deploy = deploy_node
            .and_then(|n| self.deploy(n, &join(&path, "deploy")))
            .map(Box::new);
        let approvers = get(node, "approvers").and_then(|n| {
            let apath = join(&path, "approvers");
            if when != When::Manual {
                self.err(
                    n,
                    &apath,
                    "`approvers` applies to a manual job",
                    "add `when: manual`, or remove `approvers`",
                );
                return None;
            }
            self.approvers(n, &apath)
        });
        let (cache, dir_cache) = match get(node, "cache") {
            Some(n) => self.cache(n, &join(&path, "cache")),
            None => (None, None),
        };
        Some(Job {
            name,
            steps,
            depends_on,
            depends_on_pos,
            environment,
            timeout,
            retry_count,
            retry_when,
            conditional: conditional.map(Box::new),
            when,
            allow_failure,
            allow_failure_exit_codes: Vec::new(),
            start_in: None,
            coverage: None,
            mirrors_upstream: false,
            facts: Vec::new(),
            resource_group,
            interruptible,
            file_vars: Vec::new(),
            settings_vars: Vec::new(),
            generated_child: None,
            retry_exit_codes: Vec::new(),
            working_directory,
            container: container.into(),
            services,
            artifacts,
            junit,
            needs_artifacts,
            cache,
            dir_caches: dir_cache.into_iter().collect(),
            deploy,
            stage: None,
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
            approvers,
            ..Job::default()
        })
    }

    pub(crate) fn required_string(&mut self, node: &Node, path: &str, key: &str, example: &str) -> Option<String> {
        match get(node, key) {
            Some(n) => self.string(n, &join(path, key)),
            None => {
                self.err(
                    node,
                    path,
                    format!("`deploy` needs `{key}`"),
                    format!("e.g. `{key}: {example}`"),
                );
                None
            }
        }
    }
    pub(crate) fn check_workdir(&mut self, wd: &str, node: &Node, path: &str) {
        let p = Path::new(wd);
        if p.is_absolute() || p.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
            self.err(
                node,
                path,
                format!("working_directory `{wd}` leaves the job's workspace"),
                "give a path relative to the project directory, without `..`",
            );
        }
    }

    pub(crate) fn step(&mut self, node: &Node, path: &str, index: usize) -> Option<Step> {
        if !self.mapping_of(node, path, &STEP_KEYS, &STEP_WORDS, "a step") {
            return None;
        }
        let name = get(node, "name")
            .and_then(|n| self.string(n, &join(path, "name")))
            .unwrap_or_else(|| format!("step-{}", index + 1));
        if name.trim().is_empty()
            && let Some(n) = get(node, "name")
        {
            self.err(
                n,
                &join(path, "name"),
                "step name is empty",
                "give the step a short name",
            );
        }
        let mut script = Vec::new();
        match get(node, "script") {
            None => self.err(
                node,
                path,
                "step has no `script`",
                "add `script:` with one shell line or a list of lines",
            ),
            Some(s) => {
                let spath = join(path, "script");
                let lines = self.string_list(s, &spath);
                if lines.is_empty() && !matches!(s.value, Value::Seq(_) | Value::Str(_)) {
                    // type error already reported
                } else if lines.iter().all(|(l, _)| l.trim().is_empty()) {
                    self.err(s, &spath, "script is empty", "give at least one shell command");
                }
                for (i, (line, n)) in lines.into_iter().enumerate() {
                    self.expressions_in(&line, &n, &format!("{spath}[{i}]"));
                    script.push(line);
                }
            }
        }
        let image = get(node, "image").and_then(|n| self.string(n, &join(path, "image")));
        let environment = get(node, "environment")
            .map(|n| self.env_map(n, &join(path, "environment")))
            .unwrap_or_default();
        let working_directory = get(node, "working_directory").and_then(|n| {
            let wd = self.string(n, &join(path, "working_directory"))?;
            self.check_workdir(&wd, n, &join(path, "working_directory"));
            Some(wd)
        });
        let timeout = get(node, "timeout").and_then(|n| self.seconds_in(n, &join(path, "timeout"), 1.0, 86400.0));
        let retry_count = get(node, "retry_count")
            .and_then(|n| self.int_in(n, &join(path, "retry_count"), 0, 3))
            .unwrap_or(0);
        let continue_on_failure = get(node, "continue_on_failure")
            .and_then(|n| self.boolean(n, &join(path, "continue_on_failure")))
            .unwrap_or(false);
        let cleanup = get(node, "cleanup")
            .and_then(|n| self.boolean(n, &join(path, "cleanup")))
            .unwrap_or(false);
        Some(Step {
            name,
            script,
            image,
            environment,
            working_directory,
            timeout,
            retry_count,
            continue_on_failure,
            cleanup,
            ..Step::default()
        })
    }
}
