//! Reusable workflows (`jobs.<id>.uses: ./.github/workflows/x.yml`): the
//! called workflow's jobs join the run in place of the calling job, named
//! `caller / job`, as GitHub shows them. They read the inputs and secrets
//! the call passes, their own workflow's `env` (not the caller's), and the
//! caller's `github` context. Jobs that need the caller need all of them,
//! and see them as one in their `needs` context: the call's result, and
//! the outputs `on.workflow_call.outputs` maps from its jobs.

use std::path::PathBuf;

use serde_json::{Value as Json, json};

use super::{
    Decided, IN_JOB_IF, Instance, Known, RunDefaults, WORKFLOW_KEYS, Workflow, entries, get, join, key_of, matrix,
    never, on_key,
};
use crate::pipeline::expr::{BinOp, Expr};
use crate::pipeline::model::{Condition, Job, Step};
use crate::pipeline::yaml::{Node, Value};

/// Deepest nesting of reusable workflows (GitHub allows ten levels).
const MAX_DEPTH: usize = 10;

/// What a calling job may say besides `uses`.
const CALLER_KEYS: [&str; 9] = [
    "name",
    "uses",
    "with",
    "secrets",
    "needs",
    "if",
    "permissions",
    "strategy",
    "concurrency",
];

/// Contexts a call's `with:` and `name` may read.
const IN_CALL: &[&str] = &["github", "needs", "strategy", "matrix", "vars", "inputs"];

/// Keys a calling job may not have, each reported at its place.
pub(super) fn caller_keys(w: &mut Workflow<'_, '_>, node: &Node, path: &str) {
    for (k, _) in entries(node) {
        let Some(name) = k.as_str() else { continue };
        if !CALLER_KEYS.contains(&name) && super::JOB_KEYS.contains(&name) {
            w.cx.err(
                k,
                &join(path, name),
                format!("a job that calls a reusable workflow cannot have `{name}`"),
                "the called workflow's jobs say where and how they run; the caller has only name, uses, with, secrets, needs, if, strategy, permissions and concurrency",
            );
        }
    }
}

/// A called workflow as parsed.
struct Called {
    root: Node,
    /// `on.workflow_call` (its inputs, secrets and outputs).
    spec: Node,
}

/// One declared input: (name, type, default, required).
type Declared = (String, String, Option<Node>, bool);

impl Workflow<'_, '_> {
    /// `jobs.<id>.uses`: the called workflow's jobs, for each combination
    /// of the caller's matrix.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn call_workflow(
        &mut self,
        id: &str,
        node: &Node,
        path: &str,
        uses: &Node,
        needs: Vec<(String, Node)>,
        combos: Vec<matrix::Combo>,
        strategy: Json,
    ) -> Vec<Instance> {
        let upath = join(path, "uses");
        let Some(text) = self.cx.string(uses, &upath) else {
            return Vec::new();
        };
        let Some(called) = self.called_file(&text, uses, &upath) else {
            return Vec::new();
        };
        let Some((file, parsed)) = called else {
            return Vec::new();
        };
        let declared = self.declared_inputs(&parsed.spec);
        let declared_secrets: Vec<(String, bool)> = get(&parsed.spec, "secrets")
            .map(|s| {
                entries(s)
                    .iter()
                    .filter_map(|(k, v)| Some((k.as_str()?.to_string(), required(v))))
                    .collect()
            })
            .unwrap_or_default();
        // Every part is checked, so every mistake shows at once.
        let outputs = self.workflow_outputs(&parsed.spec);
        let secret_names = self.workflow_secrets(node, path, uses, &text, &declared_secrets);
        let matrixed = !combos.is_empty();
        let combos = if combos.is_empty() {
            vec![matrix::Combo::default()]
        } else {
            combos
        };
        let total = combos.len();
        // `with:` reading `needs`: known once the jobs it needs have run
        // (the engine reads the workflow again with their outputs);
        // until then one job stands for the call.
        let needs_context = self.matrix_needs.iter().find(|(i, _)| i == id).map(|(_, n)| n.clone());
        let later = needs_context.is_none() && !needs.is_empty() && get(node, "with").is_some_and(reads_needs);
        let mut out = Vec::new();
        for (index, combo) in combos.iter().enumerate() {
            let mut known = self.known_for(id, matrixed.then_some(combo), &strategy, (index, total), Vec::new());
            known.needs = needs_context.clone().unwrap_or_else(|| json!({}));
            let display = match get(node, "name") {
                Some(n) => {
                    let Some(raw) = self.cx.string(n, &join(path, "name")) else {
                        return Vec::new();
                    };
                    let Some(text) = self.value(&raw, n, &join(path, "name"), &known, IN_CALL) else {
                        return Vec::new();
                    };
                    if matrixed && !raw.contains("matrix.") {
                        matrix::job_name(&text, combo)
                    } else {
                        text
                    }
                }
                None if matrixed => matrix::job_name(id, combo),
                None => id.to_string(),
            };
            let condition = match get(node, "if") {
                Some(n) => match self.condition(n, &join(path, "if"), &known, IN_JOB_IF, &["needs"]) {
                    Some(Decided::Now(true)) => None,
                    Some(Decided::Now(false)) => {
                        Some(never(n.as_str().map_or_else(|| n.key_text(), str::to_string), n.pos))
                    }
                    Some(Decided::Later(c)) => Some(c),
                    None => return Vec::new(),
                },
                None => None,
            };
            if later {
                out.push(Instance {
                    job: self.waiting_call(id, &display, condition, node),
                    needs: needs.clone(),
                });
                continue;
            }
            let inputs = self.workflow_inputs(node, path, uses, &text, &declared, &known);
            let (Some(inputs), Some(outputs), Some(secret_names)) = (inputs, &outputs, &secret_names) else {
                return Vec::new();
            };
            let jobs = self.read_called(&file, &parsed, inputs, id, secret_names.clone());
            out.extend(self.place_called(jobs, &display, &needs, condition.as_ref(), outputs));
        }
        out
    }

    /// The job that stands for a call whose `with:` reads `needs` until
    /// the jobs it needs have run: it waits for them as the call's jobs
    /// would, then they take its place (`github::with_matrix`).
    fn waiting_call(&mut self, id: &str, display: &str, condition: Option<Condition>, node: &Node) -> Job {
        let github = self
            .shared_github
            .get_or_insert_with(|| std::sync::Arc::new(self.github.clone()))
            .clone();
        Job {
            name: display.to_string(),
            id: Some(id.to_string()),
            call: self.call.clone(),
            conditional: condition.map(Box::new),
            matrix_later: true,
            strict_needs: true,
            file_commands: true,
            timeout: super::DEFAULT_TIMEOUT,
            facts: vec![("calls".into(), "a reusable workflow, once what it needs has run".into())],
            steps: vec![Step {
                name: "call".into(),
                script: vec!["true".into()],
                shell: Some(vec!["sh".into(), "-e".into(), "{0}".into()]),
                ..Step::default()
            }],
            secret_names: self.secret_names.clone(),
            github: Some(github),
            pos: node.pos,
            ..Job::default()
        }
    }

    /// The called workflow's file, read and parsed (`Some(None)` when the
    /// mistake was reported).
    #[allow(clippy::type_complexity)]
    fn called_file(&mut self, text: &str, uses: &Node, path: &str) -> Option<Option<(PathBuf, Called)>> {
        // `./` is the repository of the workflow that calls: this one's, or
        // the other repository's a called workflow comes from.
        let base = self
            .calling
            .last()
            .and_then(|f| f.parent()?.parent()?.parent())
            .map_or_else(|| self.root.clone(), std::path::Path::to_path_buf);
        let (file, rel) = match text.strip_prefix("./") {
            Some(rel) => (base.join(rel), rel.to_string()),
            None => match self.remote_workflow(text, uses, path) {
                Some(found) => found,
                None => return Some(None),
            },
        };
        let rel = rel.as_str();
        let in_workflows = rel.starts_with(".github/workflows/")
            && !rel.contains("..")
            && (rel.ends_with(".yml") || rel.ends_with(".yaml"));
        if !in_workflows {
            self.cx.err(
                uses,
                path,
                format!("`{text}` is not a workflow of .github/workflows"),
                "a reusable workflow is a file of .github/workflows: `./.github/workflows/NAME.yml`",
            );
            return Some(None);
        }
        if !file.is_file() {
            self.cx.err(
                uses,
                path,
                format!("missing workflow: no {}", file.display()),
                "check the file's name under .github/workflows",
            );
            return Some(None);
        }
        if self.calling.contains(&file) || self.calling.len() >= MAX_DEPTH {
            self.cx.err(
                uses,
                path,
                format!("`{text}` calls itself, or reusable workflows nest more than {MAX_DEPTH} deep"),
                "a reusable workflow may not call the workflows that call it",
            );
            return Some(None);
        }
        let shown = match file.strip_prefix(&self.root) {
            Ok(rel) => rel.to_path_buf(),
            // Another repository's: named as the call names it.
            Err(_) => PathBuf::from(text),
        };
        let Some(parsed) = self.cx.read_more(&file, &shown, (uses, path, "workflow"), false) else {
            return Some(None);
        };
        let root = parsed.root?;
        self.cx.mapping(&root, "", &WORKFLOW_KEYS, "a workflow");
        let on = on_key(&root);
        let spec = on.and_then(|on| match &on.value {
            Value::Str(s) if s == "workflow_call" => Some(on.clone()),
            Value::Seq(items) => items
                .iter()
                .any(|i| i.as_str() == Some("workflow_call"))
                .then(|| on.clone()),
            Value::Map(_) => key_of(on, "workflow_call").and(get(on, "workflow_call")).cloned(),
            _ => None,
        });
        let Some(spec) = spec else {
            self.cx.err(
                uses,
                path,
                format!("`{text}` cannot be called: its `on:` has no `workflow_call`"),
                "add `workflow_call:` to the called workflow's `on:`",
            );
            return Some(None);
        };
        Some(Some((file, Called { root, spec })))
    }

    /// `owner/repo/.github/workflows/NAME.yml@ref`: the file in the
    /// actions folder, where `trackside actions pull owner/repo@ref` puts
    /// the repository; `None` when the mistake was reported.
    fn remote_workflow(&mut self, text: &str, uses: &Node, path: &str) -> Option<(PathBuf, String)> {
        let remote = crate::store::actions::ActionRef::parse(text)
            .filter(|a| a.path.as_deref().is_some_and(|p| p.starts_with(".github/workflows/")));
        let Some(a) = remote else {
            self.cx.err(
                uses,
                path,
                format!("`uses` of a job names a workflow file, found `{text}`"),
                "write `uses: ./.github/workflows/NAME.yml`, or `owner/repo/.github/workflows/NAME.yml@ref`",
            );
            return None;
        };
        let Some(root) = self.actions_dir.clone() else {
            self.cx.err(
                uses,
                path,
                format!("trackside does not read reusable workflows of other repositories here: `{text}`"),
                "`trackside run` finds them in its actions folder (--actions-dir)",
            );
            return None;
        };
        if !a.checkout(&root).is_dir() {
            let repo = format!("{}/{}@{}", a.owner, a.repo, a.reference);
            self.cx.err(
                uses,
                path,
                format!("`{text}`: {repo} is not in the actions folder ({})", root.display()),
                format!("fetch it once: trackside actions pull {repo} (add --from URL for a mirror or a local copy)"),
            );
            return None;
        }
        Some((a.dir(&root), a.path.unwrap_or_default()))
    }

    fn declared_inputs(&mut self, spec: &Node) -> Vec<Declared> {
        let Some(inputs) = get(spec, "inputs") else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (k, v) in entries(inputs) {
            let Some(name) = k.as_str() else { continue };
            let ipath = join("on.workflow_call.inputs", name);
            if !self
                .cx
                .mapping(v, &ipath, &["description", "required", "default", "type"], "an input")
            {
                continue;
            }
            let ty = get(v, "type").and_then(|t| t.as_str()).unwrap_or("string").to_string();
            if !matches!(ty.as_str(), "string" | "boolean" | "number") {
                if let Some(t) = get(v, "type") {
                    self.cx.err(
                        t,
                        &join(&ipath, "type"),
                        format!("input type `{ty}` is not one of string, boolean, number"),
                        "a reusable workflow's input is a string, a boolean or a number",
                    );
                }
                continue;
            }
            out.push((name.to_string(), ty, get(v, "default").cloned(), required(v)));
        }
        out
    }

    /// `on.workflow_call.outputs`: each (output, job id, that job's output)
    /// from `value: ${{ jobs.<job>.outputs.<name> }}`.
    fn workflow_outputs(&mut self, spec: &Node) -> Option<Vec<(String, String, String)>> {
        let Some(outputs) = get(spec, "outputs") else {
            return Some(Vec::new());
        };
        let mut out = Vec::new();
        let mut ok = true;
        for (k, v) in entries(outputs) {
            let Some(name) = k.as_str() else { continue };
            let opath = join("on.workflow_call.outputs", name);
            if !self.cx.mapping(v, &opath, &["description", "value"], "an output") {
                ok = false;
                continue;
            }
            let value = get(v, "value");
            let text = value.and_then(|n| n.as_str()).unwrap_or("").trim();
            let inner = text
                .strip_prefix("${{")
                .and_then(|t| t.strip_suffix("}}"))
                .map(str::trim)
                .unwrap_or("");
            let parts: Vec<&str> = inner.split('.').collect();
            match parts.as_slice() {
                ["jobs", job, "outputs", output] => out.push((name.to_string(), job.to_string(), output.to_string())),
                _ => {
                    self.cx.err(
                        value.unwrap_or(v),
                        &join(&opath, "value"),
                        format!("trackside reads a called workflow's output only as `${{{{ jobs.JOB.outputs.NAME }}}}`, found `{text}`"),
                        "map the output to one job output; compute the value in that job",
                    );
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }

    /// The secrets the call passes: `None` for `inherit` (all of them by
    /// their own names), else (name in the called workflow, the run's
    /// name); `Some(None)`... reported mistakes give `None` overall.
    #[allow(clippy::option_option)]
    fn workflow_secrets(
        &mut self,
        node: &Node,
        path: &str,
        uses: &Node,
        text: &str,
        declared: &[(String, bool)],
    ) -> Option<Option<Vec<(String, String)>>> {
        let spath = join(path, "secrets");
        let given = match get(node, "secrets") {
            Some(n) if n.as_str() == Some("inherit") => return Some(None),
            Some(n) => Some(n),
            None => None,
        };
        let mut names = Vec::new();
        let mut ok = true;
        for (k, v) in given.map(entries).unwrap_or_default() {
            let Some(name) = k.as_str() else { continue };
            let raw = v.as_str().unwrap_or("").trim();
            let from = raw
                .strip_prefix("${{")
                .and_then(|t| t.strip_suffix("}}"))
                .map(str::trim)
                .and_then(|t| t.strip_prefix("secrets."))
                .filter(|t| t.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'));
            let Some(from) = from else {
                self.cx.err(
                    v,
                    &join(&spath, name),
                    format!("a secret passed to a called workflow is `${{{{ secrets.NAME }}}}`, found `{raw}`"),
                    "pass one of the run's secrets (--secret, --secret-file), or `secrets: inherit`",
                );
                ok = false;
                continue;
            };
            if !declared.iter().any(|(d, _)| d.eq_ignore_ascii_case(name)) {
                self.cx.err(
                    k,
                    &join(&spath, name),
                    format!("`{text}` declares no secret `{name}`"),
                    "list it under the called workflow's `on.workflow_call.secrets`",
                );
                ok = false;
            }
            names.push((name.to_string(), from.to_string()));
        }
        for (d, req) in declared {
            if *req && !names.iter().any(|(n, _)| n.eq_ignore_ascii_case(d)) {
                self.cx.err(
                    uses,
                    &join(path, "uses"),
                    format!("secret `{d}` of `{text}` is required and not given"),
                    format!("add `secrets: {{{d}: ${{{{ secrets.NAME }}}}}}`, or `secrets: inherit`"),
                );
                ok = false;
            }
        }
        ok.then_some(Some(names))
    }

    /// The `inputs` context of the called workflow: what `with:` gives
    /// (known when the workflow is read), else defaults (`false`, `0`, ``
    /// by type).
    fn workflow_inputs(
        &mut self,
        node: &Node,
        path: &str,
        uses: &Node,
        text: &str,
        declared: &[Declared],
        known: &Known,
    ) -> Option<Json> {
        let wpath = join(path, "with");
        let mut out = serde_json::Map::new();
        let mut ok = true;
        let given: Vec<(Node, Node)> = get(node, "with").map(entries).unwrap_or_default().to_vec();
        for (k, v) in &given {
            let Some(name) = k.as_str() else { continue };
            let Some(decl) = declared.iter().find(|d| d.0.eq_ignore_ascii_case(name)) else {
                self.cx.err(
                    k,
                    &join(&wpath, name),
                    format!("`{text}` declares no input `{name}`"),
                    format!(
                        "its inputs are: {}",
                        if declared.is_empty() {
                            "none".to_string()
                        } else {
                            declared.iter().map(|d| d.0.as_str()).collect::<Vec<_>>().join(", ")
                        }
                    ),
                );
                ok = false;
                continue;
            };
            match self.input_value(v, &join(&wpath, name), &decl.1, known) {
                Some(val) => {
                    out.insert(decl.0.clone(), val);
                }
                None => ok = false,
            }
        }
        for (name, ty, default, req) in declared {
            if out.contains_key(name) {
                continue;
            }
            if *req && default.is_none() {
                self.cx.err(
                    uses,
                    &join(path, "uses"),
                    format!("input `{name}` of `{text}` is required and not given"),
                    format!("add `with: {{{name}: ...}}` to the job"),
                );
                ok = false;
                continue;
            }
            let val = match default {
                Some(d) => self.input_value(d, &join("on.workflow_call.inputs", name), ty, known),
                None => Some(match ty.as_str() {
                    "boolean" => Json::Bool(false),
                    "number" => json!(0),
                    _ => Json::String(String::new()),
                }),
            };
            match val {
                Some(v) => {
                    out.insert(name.clone(), v);
                }
                None => ok = false,
            }
        }
        ok.then_some(Json::Object(out))
    }

    /// A `with:` value (or a default) as its declared type.
    fn input_value(&mut self, v: &Node, path: &str, ty: &str, known: &Known) -> Option<Json> {
        let raw = match &v.value {
            Value::Null => String::new(),
            Value::Bool(b) => b.to_string(),
            _ => self.cx.string(v, path)?,
        };
        let text = self.value(&raw, v, path, known, IN_CALL)?;
        let bad = |w: &mut Self, what: &str| {
            w.cx.err(
                v,
                path,
                format!("`{text}` is not a {what}"),
                format!("the called workflow declares this input `type: {ty}`"),
            );
            None
        };
        match ty {
            "boolean" => match text.trim() {
                "true" => Some(Json::Bool(true)),
                "false" => Some(Json::Bool(false)),
                _ => bad(self, "boolean"),
            },
            "number" => match text.trim().parse::<f64>().ok().filter(|n| n.is_finite()) {
                Some(n) => Some(super::number(n)),
                None => bad(self, "number"),
            },
            _ => Some(Json::String(text)),
        }
    }

    /// Reads the called workflow's jobs with its inputs, its env, and the
    /// call's secrets; the reader's own state is as it was afterwards.
    fn read_called(
        &mut self,
        file: &std::path::Path,
        called: &Called,
        inputs: Json,
        caller: &str,
        secret_names: Option<Vec<(String, String)>>,
    ) -> Vec<Instance> {
        let saved = (
            std::mem::replace(&mut self.inputs, inputs),
            std::mem::take(&mut self.workflow_env),
            std::mem::take(&mut self.workflow_env_vars),
            self.call.replace(caller.to_string()),
            std::mem::replace(&mut self.secret_names, secret_names),
        );
        self.calling.push(file.to_path_buf());
        let jobs = self.called_jobs(&called.root);
        self.calling.pop();
        (
            self.inputs,
            self.workflow_env,
            self.workflow_env_vars,
            self.call,
            self.secret_names,
        ) = saved;
        jobs
    }

    fn called_jobs(&mut self, root: &Node) -> Vec<Instance> {
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
        let env = match get(root, "env") {
            Some(n) => self.env(n, "env", &known, super::IN_WORKFLOW_ENV),
            None => Vec::new(),
        };
        self.workflow_env = super::declared(&env);
        self.workflow_env_vars = env;
        let defaults = get(root, "defaults").map_or_else(RunDefaults::default, |n| self.defaults(n, "defaults"));
        let Some(jobs) = get(root, "jobs") else {
            self.cx
                .err(root, "jobs", "missing `jobs`", "add `jobs:` with at least one job");
            return Vec::new();
        };
        let items: Vec<(Node, Node)> = entries(jobs).to_vec();
        let ids: Vec<String> = items.iter().map(|(k, _)| k.key_text()).collect();
        let mut by_id: Vec<(String, Vec<String>)> = Vec::new();
        let mut made: Vec<Instance> = Vec::new();
        for (k, v) in &items {
            let id = k.key_text();
            let inst = self.job(&id, k, v, &defaults, &ids);
            by_id.push((id, inst.iter().map(|i| i.job.name.clone()).collect()));
            made.extend(inst);
        }
        // Needs within the called workflow become dependencies now; the
        // jobs that need nothing there wait for what the caller needs.
        for inst in &mut made {
            for (need, node) in std::mem::take(&mut inst.needs) {
                if let Some((_, names)) = by_id.iter().find(|(id, _)| *id == need) {
                    for n in names {
                        inst.job.depends_on.push(n.clone());
                        inst.job.depends_on_pos.push(node.pos);
                    }
                }
            }
        }
        made
    }

    /// Names the called jobs `caller / job`, gives the roots the caller's
    /// needs and `if:`, and marks the jobs whose outputs are the call's.
    fn place_called(
        &mut self,
        jobs: Vec<Instance>,
        display: &str,
        needs: &[(String, Node)],
        condition: Option<&Condition>,
        outputs: &[(String, String, String)],
    ) -> Vec<Instance> {
        let names: Vec<String> = jobs.iter().map(|i| i.job.name.clone()).collect();
        let rename = |n: &str| format!("{display} / {n}");
        jobs.into_iter()
            .map(|Instance { mut job, .. }| {
                let root = job.depends_on.is_empty();
                job.name = rename(&job.name);
                for d in &mut job.depends_on {
                    if names.contains(d) {
                        *d = rename(d);
                    }
                }
                if root && let Some(c) = condition {
                    job.conditional = Some(Box::new(match job.conditional.take() {
                        None => c.clone(),
                        Some(own) => both(c, &own),
                    }));
                }
                let own_id = job.id.clone().unwrap_or_default();
                job.call_outputs = outputs
                    .iter()
                    .filter(|(_, j, _)| *j == own_id)
                    .map(|(name, _, o)| (name.clone(), o.clone()))
                    .collect();
                Instance {
                    job,
                    needs: if root { needs.to_vec() } else { Vec::new() },
                }
            })
            .collect()
    }
}

/// The caller's `if:` and a called root job's own, both to hold: the
/// caller's asks `success()` unless it asks about status itself.
fn both(caller: &Condition, own: &Condition) -> Condition {
    let guard = if caller.expr.uses_status_functions() {
        caller.expr.clone()
    } else {
        Expr::Bin(
            BinOp::And,
            Box::new(Expr::Call("success".into(), Vec::new(), 0)),
            Box::new(caller.expr.clone()),
        )
    };
    Condition {
        source: format!("({}) && ({})", caller.source, own.source),
        expr: Expr::Bin(BinOp::And, Box::new(guard), Box::new(own.expr.clone())),
        pos: own.pos,
    }
}

fn required(v: &Node) -> bool {
    get(v, "required").is_some_and(|r| matches!(r.value, Value::Bool(true)) || r.as_str() == Some("true"))
}

/// Whether a `with:` mapping reads the `needs` context.
fn reads_needs(with: &Node) -> bool {
    entries(with).iter().any(|(_, v)| {
        v.as_str().is_some_and(|text| {
            crate::pipeline::expr::placeholders_in(text, &super::LANG)
                .unwrap_or_default()
                .iter()
                .any(|p| {
                    let (mut roots, mut calls) = (Vec::new(), Vec::new());
                    p.expr.names(&mut roots, &mut calls);
                    roots.iter().any(|(r, _)| r.eq_ignore_ascii_case("needs"))
                })
        })
    })
}
