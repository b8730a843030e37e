//! Local actions (`uses: ./path`): an `action.yml` read from the
//! repository. A composite action's steps join the job's steps in place,
//! each knowing the call it belongs to ([`ActionCall`]): its `inputs`, its
//! own `steps` context and its `outputs` are the run's to evaluate (see
//! `engine::runner`), since what a call is given may be another step's
//! output.

use std::path::{Component, Path, PathBuf};

use super::{AT_STEP_START, Decided, Known, RunDefaults, Workflow, entries, get, join};
use crate::pipeline::model::{ActionCall, EnvVar, Step};
use crate::pipeline::yaml::{Node, Value};

/// The id of a JavaScript action's step within its call.
pub(super) const JS_STEP: &str = "__action";

/// Deepest nesting of composite actions (GitHub allows ten levels).
const MAX_DEPTH: usize = 10;
/// Most composite action calls one job may expand to.
const MAX_CALLS: usize = 1_000;

const ACTION_KEYS: [&str; 7] = ["name", "description", "author", "inputs", "outputs", "runs", "branding"];
const INPUT_KEYS: [&str; 4] = ["description", "required", "default", "deprecationMessage"];
const OUTPUT_KEYS: [&str; 2] = ["description", "value"];
/// What a composite action's step may say (no `timeout-minutes`).
pub(super) const COMPOSITE_STEP_KEYS: [&str; 10] = [
    "id",
    "if",
    "name",
    "uses",
    "run",
    "shell",
    "with",
    "env",
    "continue-on-error",
    "working-directory",
];

/// The calling step, as read where it is written.
pub(super) struct Caller<'n> {
    pub node: &'n Node,
    pub path: &'n str,
    pub uses: &'n Node,
    /// The action's folder, relative to the repository (no `./`); for an
    /// action of another repository, its name (`owner/repo@ref`).
    pub rel: &'n str,
    /// An action of another repository: its folder in the actions folder.
    pub pulled: Option<PathBuf>,
    pub id: Option<String>,
    pub name: Option<String>,
    pub condition: Option<crate::pipeline::model::Condition>,
    pub continue_on_error: bool,
    pub env: Vec<EnvVar>,
    /// `uses: docker://IMAGE`: no action.yml, this image.
    pub image: Option<String>,
}

/// An action.yml as parsed (kept per file: a matrix calls it per job).
#[derive(Clone)]
pub(super) struct Parsed {
    root: Node,
}

impl Workflow<'_, '_> {
    /// The folder of `./rel` and its action.yml, or an error at `uses`.
    pub(super) fn action_file(&mut self, rel: &str, uses: &Node, path: &str) -> Option<PathBuf> {
        let escapes = Path::new(rel)
            .components()
            .any(|c| matches!(c, Component::ParentDir | Component::RootDir | Component::Prefix(_)));
        if escapes {
            self.cx.err(
                uses,
                &join(path, "uses"),
                format!("local action `./{rel}` leaves the repository"),
                "a local action is a folder of the repository: `./.github/actions/NAME`",
            );
            return None;
        }
        let dir = self.root.join(rel);
        let found = ["action.yml", "action.yaml"]
            .into_iter()
            .map(|f| dir.join(f))
            .find(|f| f.is_file());
        if found.is_none() {
            self.cx.err(
                uses,
                &join(path, "uses"),
                format!("missing action: no action.yml in {}", dir.display()),
                "local actions are folders of the repository with an action.yml; check the path (it is relative to the repository's root)",
            );
        }
        found
    }

    /// Reads and parses an action.yml once; errors go to its own file.
    fn parse_action(&mut self, file: &Path, uses: &Node, path: &str) -> Option<Parsed> {
        if let Some(p) = self.actions_read.get(file) {
            return p.clone();
        }
        let parsed = self.parse_action_file(file, uses, path);
        self.actions_read.insert(file.to_path_buf(), parsed.clone());
        parsed
    }

    fn parse_action_file(&mut self, file: &Path, uses: &Node, path: &str) -> Option<Parsed> {
        let shown = file.strip_prefix(&self.root).unwrap_or(file).to_path_buf();
        let root = self
            .cx
            .read_more(file, &shown, (uses, &join(path, "uses"), "action"), false)?
            .root?;
        // Unknown keys are reported; the rest is still read, so every
        // mistake shows at once.
        if !self
            .cx
            .mapping(&root, "", &ACTION_KEYS, "an action's metadata (action.yml)")
            && !matches!(root.value, Value::Map(_))
        {
            return None;
        }
        Some(Parsed { root })
    }

    /// A `uses: ./path` step: the action's steps, to run in its place.
    pub(super) fn local_action(&mut self, caller: Caller<'_>, known: &Known) -> Option<Vec<Step>> {
        let Caller {
            node, path, uses, rel, ..
        } = caller;
        // How messages name it: `./path` or `owner/repo@ref`.
        let shown = match caller.pulled {
            Some(_) => rel.to_string(),
            None => format!("./{rel}"),
        };
        if self.frames.len() >= MAX_DEPTH {
            self.cx.err(
                uses,
                &join(path, "uses"),
                format!("composite actions nest more than {MAX_DEPTH} deep here"),
                "GitHub allows ten levels of actions calling actions; look for an action that calls itself",
            );
            return None;
        }
        if self.calls.len() >= MAX_CALLS {
            self.cx.err(
                uses,
                &join(path, "uses"),
                format!("this job calls more than {MAX_CALLS} composite actions"),
                "split the job",
            );
            return None;
        }
        if let Some(image) = caller.image.clone() {
            return self.docker_uri(caller, &image, known);
        }
        let file = match &caller.pulled {
            None => self.action_file(rel, uses, path)?,
            Some(dir) => match ["action.yml", "action.yaml"]
                .map(|f| dir.join(f))
                .into_iter()
                .find(|f| f.is_file())
            {
                Some(f) => f,
                None => {
                    self.cx.err(
                        uses,
                        &join(path, "uses"),
                        format!("missing action: no action.yml in {}", dir.display()),
                        format!("pull it again: trackside actions pull {rel}"),
                    );
                    return None;
                }
            },
        };
        let parsed = self.parse_action(&file, uses, path)?;
        let root = &parsed.root;
        let Some(runs) = get(root, "runs") else {
            self.cx.err(
                root,
                "runs",
                "missing `runs`: what the action runs",
                "add `runs: {using: composite, steps: [...]}`",
            );
            return None;
        };
        let using = get(runs, "using").and_then(|u| self.cx.string(u, "runs.using"));
        let javascript = matches!(using.as_deref(), Some("node12" | "node16" | "node20" | "node24"));
        let docker = using.as_deref() == Some("docker");
        match using.as_deref() {
            Some("composite") => {}
            _ if javascript || docker => {}
            Some(other) => {
                let at = get(runs, "using").unwrap_or(runs);
                self.cx.err(
                    at,
                    "runs.using",
                    format!("unknown `runs.using: {other}`"),
                    "an action runs as `composite`, `node20` (or node12, node16, node24) or `docker`",
                );
                return None;
            }
            None => {
                self.cx.err(
                    runs,
                    "runs.using",
                    "missing `runs.using`",
                    "write `using: composite` (or node20, or docker)",
                );
                return None;
            }
        }
        let inputs = self.call_inputs(root, node, path, uses, &shown, known);
        let index = self.calls.len();
        let name = caller.name.unwrap_or_else(|| format!("Run {shown}"));
        // Where the run finds it: in the workspace, or in the actions folder.
        let (call_path, action_path) = match &caller.pulled {
            None => (rel.to_string(), format!("${{CI_PROJECT_DIR}}/{rel}")),
            Some(dir) => {
                let d = dir.display().to_string();
                (d.clone(), d.replace('$', "$$"))
            }
        };
        self.calls.push(ActionCall {
            parent: self.frames.last().copied(),
            id: caller.id,
            name: name.clone(),
            inputs: inputs.clone().unwrap_or_default(),
            outputs: Vec::new(),
            path: call_path,
            condition: caller.condition,
            continue_on_error: caller.continue_on_error,
            outputs_of: (javascript || docker).then(|| JS_STEP.to_string()),
            state_from: None,
        });
        // The steps inside see the caller's `env`, then their own, and
        // where the action is.
        let mut env = self.frame_env.clone();
        env.retain(|e| !caller.env.iter().any(|c| c.name == e.name));
        env.extend(caller.env);
        env.retain(|e| e.name != "GITHUB_ACTION_PATH");
        env.push(EnvVar {
            name: "GITHUB_ACTION_PATH".into(),
            value: action_path,
            pos: uses.pos,
        });
        let saved_env = std::mem::replace(&mut self.frame_env, env);
        self.frames.push(index);
        let (steps, outputs) = if javascript {
            (self.javascript_steps(runs, index, &name), Some(Vec::new()))
        } else if docker {
            let dir = match &caller.pulled {
                Some(d) => d.display().to_string(),
                None => rel.to_string(),
            };
            (self.docker_steps(runs, index, &name, &dir, known), Some(Vec::new()))
        } else {
            (self.composite_steps(runs, known), self.call_outputs(root, known))
        };
        self.frames.pop();
        self.frame_env = saved_env;
        let (steps, outputs, _) = (steps?, outputs?, inputs?);
        if let Some(call) = self.calls.get_mut(index) {
            call.outputs = outputs;
        }
        Some(steps)
    }

    /// `uses: docker://IMAGE`: a call with the step's `with` as inputs.
    fn docker_uri(&mut self, caller: Caller<'_>, image: &str, known: &Known) -> Option<Vec<Step>> {
        let index = self.calls.len();
        let name = caller.name.clone().unwrap_or_else(|| format!("Run docker://{image}"));
        // `with` is read where the step is written (before the call's frame).
        let (mut steps, inputs) = self.docker_uri_steps(caller.node, caller.path, image, index, &name, known)?;
        self.calls.push(ActionCall {
            parent: self.frames.last().copied(),
            id: caller.id,
            name,
            inputs,
            outputs: Vec::new(),
            path: String::new(),
            condition: caller.condition,
            continue_on_error: caller.continue_on_error,
            outputs_of: Some(JS_STEP.to_string()),
            state_from: None,
        });
        let mut env = self.frame_env.clone();
        env.retain(|e| !caller.env.iter().any(|c| c.name == e.name));
        env.extend(caller.env);
        for s in &mut steps {
            s.environment = env.clone();
        }
        Some(steps)
    }

    /// The call's inputs: each declared one as given in `with:` (else its
    /// default), as text still holding what the run evaluates.
    fn call_inputs(
        &mut self,
        root: &Node,
        node: &Node,
        path: &str,
        uses: &Node,
        shown: &str,
        known: &Known,
    ) -> Option<Vec<(String, String)>> {
        let with = get(node, "with");
        let given: Vec<(String, Node)> = with
            .map(|w| {
                entries(w)
                    .iter()
                    .filter_map(|(k, v)| Some((k.as_str()?.to_string(), v.clone())))
                    .collect()
            })
            .unwrap_or_default();
        let mut out = Vec::new();
        let mut ok = true;
        let declared = get(root, "inputs");
        let mut names = Vec::new();
        if let Some(d) = declared {
            if !matches!(d.value, Value::Map(_) | Value::Null) {
                self.cx.err(
                    d,
                    "inputs",
                    format!("`inputs` must be a mapping, found {}", d.type_name()),
                    "write one `name: {description, default}` per input",
                );
                return None;
            }
            for (k, spec) in entries(d) {
                let Some(name) = k.as_str().map(str::to_string) else {
                    continue;
                };
                let ipath = join("inputs", &name);
                if matches!(spec.value, Value::Map(_)) && !self.cx.mapping(spec, &ipath, &INPUT_KEYS, "an input") {
                    ok = false;
                    continue;
                }
                names.push(name.clone());
                let value = given.iter().find(|(g, _)| g.eq_ignore_ascii_case(&name));
                let text = match value {
                    Some((_, v)) => self.scalar_text(v, &join(&join(path, "with"), &name), known),
                    None => match get(spec, "default") {
                        Some(d) => self.scalar_text(d, &join(&ipath, "default"), known),
                        None => {
                            let required = get(spec, "required")
                                .is_some_and(|r| matches!(r.value, Value::Bool(true)) || r.as_str() == Some("true"));
                            if required {
                                self.cx.err(
                                    uses,
                                    &join(path, "uses"),
                                    format!("input `{name}` of `{shown}` is required and not given"),
                                    format!("add `with: {{{name}: ...}}` to the step"),
                                );
                                ok = false;
                                continue;
                            }
                            Some(String::new())
                        }
                    },
                };
                match text {
                    Some(t) => out.push((name, t)),
                    None => ok = false,
                }
            }
        }
        for (g, v) in &given {
            if !names.iter().any(|n| n.eq_ignore_ascii_case(g)) {
                let p = join(&join(path, "with"), g);
                self.cx.warn(
                    v,
                    &p,
                    format!("`{shown}` declares no input `{g}`"),
                    format!(
                        "its inputs are: {}",
                        if names.is_empty() {
                            "none".into()
                        } else {
                            names.join(", ")
                        }
                    ),
                );
                match self.scalar_text(v, &p, known) {
                    Some(t) => out.push((g.clone(), t)),
                    None => ok = false,
                }
            }
        }
        ok.then_some(out)
    }

    /// A `with:` value or a default: text, its `${{ }}` evaluated now
    /// where it can be, the rest left to the run.
    fn scalar_text(&mut self, node: &Node, path: &str, known: &Known) -> Option<String> {
        let raw = match &node.value {
            Value::Null => return Some(String::new()),
            Value::Bool(b) => b.to_string(),
            _ => self.cx.string(node, path)?,
        };
        self.text(&raw, node, path, known, super::IN_STEP)
    }

    /// `outputs:` of the action, evaluated among its steps as the call ends.
    fn call_outputs(&mut self, root: &Node, known: &Known) -> Option<Vec<(String, String)>> {
        let Some(d) = get(root, "outputs") else {
            return Some(Vec::new());
        };
        let mut out = Vec::new();
        let mut ok = true;
        for (k, spec) in entries(d) {
            let Some(name) = k.as_str().map(str::to_string) else {
                continue;
            };
            let opath = join("outputs", &name);
            if !self.cx.mapping(spec, &opath, &OUTPUT_KEYS, "an output") {
                ok = false;
                continue;
            }
            let Some(v) = get(spec, "value") else {
                self.cx.err(
                    spec,
                    &join(&opath, "value"),
                    format!("output `{name}` has no `value`"),
                    "a composite action's output is `value: ${{ steps.ID.outputs.NAME }}`",
                );
                ok = false;
                continue;
            };
            match self.scalar_text(v, &join(&opath, "value"), known) {
                Some(t) => out.push((name, t)),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    /// A JavaScript action: its `main` run by the node of this machine,
    /// and its `post` kept for the end of the job.
    fn javascript_steps(&mut self, runs: &Node, index: usize, name: &str) -> Option<Vec<Step>> {
        let mut ok = true;
        let mut script = |w: &mut Self, key: &str| -> Option<Vec<String>> {
            let n = get(runs, key)?;
            let file = w.cx.string(n, &join("runs", key))?;
            let rel = Path::new(&file);
            if rel.is_absolute() || rel.components().any(|c| matches!(c, Component::ParentDir)) {
                w.cx.err(
                    n,
                    &join("runs", key),
                    format!("`{file}` leaves the action's folder"),
                    "name a file of the action's folder: `main: dist/index.js`",
                );
                ok = false;
                return None;
            }
            // Run by node itself (no shell: input names such as
            // `INPUT_WHO-TO-GREET` are not shell names, and a shell would
            // drop them); `import()` takes CommonJS and ES modules alike.
            let quoted = serde_json::to_string(&file).unwrap_or_default();
            Some(vec![
                "const path = require('path'), url = require('url');".to_string(),
                format!("const main = path.join(process.env.GITHUB_ACTION_PATH, {quoted});"),
                "import(url.pathToFileURL(main).href).catch((e) => { console.error(e); process.exitCode = 1; });"
                    .to_string(),
            ])
        };
        let Some(main) = script(self, "main") else {
            if ok {
                self.cx.err(
                    runs,
                    "runs.main",
                    "missing `runs.main`: the action's script",
                    "add `main: index.js`",
                );
            }
            return None;
        };
        if let Some(pre) = get(runs, "pre") {
            self.cx.warn(
                pre,
                "runs.pre",
                "`runs.pre` is not run for a local action, as on GitHub",
                "do the work at the start of `main`",
            );
        }
        let post = script(self, "post");
        if !ok {
            return None;
        }
        let env = self.frame_env.clone();
        let step = |script: Vec<String>, name: String, action: usize| Step {
            name,
            script,
            environment: env.clone(),
            shell: Some(vec!["node".into(), "{0}".into()]),
            action: Some(action),
            inputs_env: true,
            ..Step::default()
        };
        let mut main_step = step(main, name.to_string(), index);
        main_step.id = Some(JS_STEP.to_string());
        if let Some(post) = post {
            let condition = self.post_condition(runs)?;
            self.post_step(index, name, condition, |call, name| {
                let mut post_step = step(post, name, call);
                post_step.id = Some(JS_STEP.to_string());
                post_step
            });
        }
        Some(vec![main_step])
    }

    fn composite_steps(&mut self, runs: &Node, known: &Known) -> Option<Vec<Step>> {
        let Some(steps) = get(runs, "steps") else {
            self.cx.err(
                runs,
                "runs.steps",
                "missing `runs.steps`: a composite action's steps",
                "add `steps:` with `- run: ...` and `shell: bash`",
            );
            return None;
        };
        let Value::Seq(items) = &steps.value else {
            self.cx.err(
                steps,
                "runs.steps",
                format!("`steps` must be a list, found {}", steps.type_name()),
                "write each step as `- run: ...` with `shell: bash`",
            );
            return None;
        };
        let index = self.frames.last().copied();
        let mut ids = Vec::new();
        let mut out = Vec::new();
        let mut ok = true;
        // `defaults.run` does not reach into actions.
        let defaults = RunDefaults::default();
        for (i, s) in items.iter().enumerate() {
            let spath = format!("runs.steps[{i}]");
            match self.step(s, &spath, known, &defaults, &mut ids) {
                Some(steps) => out.extend(steps.into_iter().map(|mut st| {
                    if st.action.is_none() {
                        st.action = index;
                    }
                    let mut env = self.frame_env.clone();
                    env.retain(|e| !st.environment.iter().any(|o| o.name == e.name));
                    env.append(&mut st.environment);
                    st.environment = env;
                    st
                })),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }
}

/// Whether the `uses:` step's outer parts leave the call to run later.
pub(super) fn condition_of(d: Decided) -> Result<Option<crate::pipeline::model::Condition>, ()> {
    match d {
        Decided::Now(true) => Ok(None),
        Decided::Now(false) => Err(()),
        Decided::Later(c) => Ok(Some(c)),
    }
}

/// `inputs` is the call's own inside an action: the run fills it.
pub(super) fn runtime_roots(in_action: bool) -> Vec<&'static str> {
    let mut roots = AT_STEP_START.to_vec();
    if in_action {
        roots.push("inputs");
    }
    roots
}
