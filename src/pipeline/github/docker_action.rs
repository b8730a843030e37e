//! Docker actions: an action whose `runs.using` is `docker` (an image, or
//! a Dockerfile of the action's folder built as the job starts), and a
//! step that `uses: docker://IMAGE`. Each runs as a container of its own
//! with the workspace at `/github/workspace`, its inputs as `INPUT_*`
//! variables and the file commands at `/github/file_commands`, as
//! GitHub's runner has them (see `engine::runner`).

use std::path::{Component, Path};

use super::action::JS_STEP;
use super::{IN_STEP, Known, Workflow, entries, get, join};
use crate::pipeline::model::{ActionBuild, Condition, DockerAction, Step};
use crate::pipeline::yaml::{Node, Value};

/// The hidden inputs a `docker://` step's `with.args` and
/// `with.entrypoint` travel in (not `INPUT_*` variables).
pub const ARGS: &str = "__args";
pub const ENTRYPOINT: &str = "__entrypoint";

/// A call's inputs, as (name, text).
type Inputs = Vec<(String, String)>;

/// Keys of a Docker action's `runs`.
pub(super) const DOCKER_RUNS_KEYS: [&str; 9] = [
    "using",
    "image",
    "env",
    "entrypoint",
    "args",
    "pre-entrypoint",
    "pre-if",
    "post-entrypoint",
    "post-if",
];

impl Workflow<'_, '_> {
    /// The step of a Docker action (`runs.using: docker`) whose folder is
    /// `dir` (relative to the workspace, or absolute when `pulled`), and
    /// its `post-entrypoint` kept for the end of the job.
    pub(super) fn docker_steps(
        &mut self,
        runs: &Node,
        index: usize,
        name: &str,
        dir: &str,
        known: &Known,
    ) -> Option<Vec<Step>> {
        self.cx
            .mapping(runs, "runs", &DOCKER_RUNS_KEYS, "a Docker action's `runs`");
        if self.executor == crate::pipeline::ExecutorChoice::Shell {
            self.cx.err(
                runs,
                "runs.using",
                format!("`{name}` is a Docker action, and `--executor shell` runs no container"),
                "leave out `--executor shell` to run it with Docker",
            );
            return None;
        }
        let Some(image_node) = get(runs, "image") else {
            self.cx.err(
                runs,
                "runs.image",
                "missing `runs.image`: the action's image",
                "write `image: Dockerfile` (built from the action's folder) or `image: docker://alpine:3.20`",
            );
            return None;
        };
        let image_text = self.cx.string(image_node, "runs.image")?;
        let (image, build) = match image_text.strip_prefix("docker://") {
            Some(img) if !img.trim().is_empty() => (img.trim().to_string(), None),
            Some(_) => {
                self.cx.err(
                    image_node,
                    "runs.image",
                    "`docker://` names no image",
                    "write `docker://alpine:3.20`",
                );
                return None;
            }
            None => {
                let rel = Path::new(&image_text);
                if rel.is_absolute() || rel.components().any(|c| matches!(c, Component::ParentDir)) {
                    self.cx.err(
                        image_node,
                        "runs.image",
                        format!("`{image_text}` leaves the action's folder"),
                        "name a Dockerfile of the action's folder (`Dockerfile`), or an image as `docker://NAME`",
                    );
                    return None;
                }
                let folder = match Path::new(dir) {
                    d if d.is_absolute() => d.to_path_buf(),
                    d => self.root.join(d),
                };
                if !folder.join(rel).is_file() {
                    self.cx.err(
                        image_node,
                        "runs.image",
                        format!("the action has no `{image_text}` in its folder {}", folder.display()),
                        "add the Dockerfile beside action.yml, or name an image as `docker://NAME`",
                    );
                    return None;
                }
                let build = ActionBuild {
                    dir: dir.to_string(),
                    dockerfile: image_text.clone(),
                };
                (String::new(), Some(build))
            }
        };
        let mut ok = true;
        let mut text = |w: &mut Self, key: &str| -> Option<String> {
            let n = get(runs, key)?;
            let t =
                w.cx.string(n, &join("runs", key))
                    .and_then(|raw| w.text(&raw, n, &join("runs", key), known, IN_STEP));
            if t.is_none() {
                ok = false;
            }
            t
        };
        let entrypoint = text(self, "entrypoint");
        let post = text(self, "post-entrypoint");
        let args = match get(runs, "args") {
            None => Vec::new(),
            Some(n) => {
                let mut out = Vec::new();
                for (raw, item) in self.cx.string_seq(n, "runs.args") {
                    match self.text(&raw, &item, "runs.args", known, IN_STEP) {
                        Some(t) => out.push(t),
                        None => ok = false,
                    }
                }
                out
            }
        };
        let mut environment = self.frame_env.clone();
        if let Some(n) = get(runs, "env") {
            let own = self.env(n, "runs.env", known, IN_STEP);
            environment.retain(|e| !own.iter().any(|o| o.name == e.name));
            environment.extend(own);
        }
        if let Some(pre) = get(runs, "pre-entrypoint") {
            self.cx.warn(
                pre,
                "runs.pre-entrypoint",
                "`runs.pre-entrypoint` is not run for a local action, as on GitHub",
                "do the work at the start of the entrypoint",
            );
        }
        if !ok {
            return None;
        }
        let action = DockerAction {
            image,
            build,
            entrypoint,
            args,
            split_args: false,
        };
        let step = |action_run: DockerAction, name: String, call: usize| Step {
            name,
            environment: environment.clone(),
            action: Some(call),
            inputs_env: true,
            id: Some(JS_STEP.to_string()),
            docker_action: Some(Box::new(action_run)),
            ..Step::default()
        };
        if let Some(post) = post {
            let mut post_action = action.clone();
            post_action.entrypoint = Some(post);
            let condition = self.post_condition(runs)?;
            self.post_step(index, name, condition, |call, name| step(post_action, name, call));
        }
        Some(vec![step(action, name.to_string(), index)])
    }

    /// `uses: docker://IMAGE`: its `with` entries are `INPUT_*` variables
    /// but for `args` (the container's arguments, split into words as a
    /// shell would) and `entrypoint`.
    pub(super) fn docker_uri_steps(
        &mut self,
        node: &Node,
        path: &str,
        image: &str,
        index: usize,
        name: &str,
        known: &Known,
    ) -> Option<(Vec<Step>, Inputs)> {
        if self.executor == crate::pipeline::ExecutorChoice::Shell {
            let at = get(node, "uses").unwrap_or(node);
            self.cx.err(
                at,
                &join(path, "uses"),
                format!("`docker://{image}` runs a container, and `--executor shell` runs none"),
                "leave out `--executor shell` to run it with Docker",
            );
            return None;
        }
        let mut inputs = Vec::new();
        let (mut args, mut entrypoint) = (Vec::new(), None);
        let mut ok = true;
        for (k, v) in get(node, "with").map(entries).unwrap_or_default() {
            let Some(key) = k.as_str() else { continue };
            let wpath = join(&join(path, "with"), key);
            let raw = match &v.value {
                Value::Str(s) => Some(s.clone()),
                Value::Null => Some(String::new()),
                _ => self.cx.string(v, &wpath),
            };
            let Some(t) = raw.and_then(|raw| self.text(&raw, v, &wpath, known, IN_STEP)) else {
                ok = false;
                continue;
            };
            // `args` and `entrypoint` are read where the step is written,
            // as inputs are (`steps` there is the caller's): as hidden
            // inputs of the call, which the step's container takes.
            match key {
                "args" => {
                    inputs.push((ARGS.to_string(), t));
                    args = vec![format!("${{{{ inputs.{ARGS} }}}}")];
                }
                "entrypoint" => {
                    inputs.push((ENTRYPOINT.to_string(), t));
                    entrypoint = Some(format!("${{{{ inputs.{ENTRYPOINT} }}}}"));
                }
                _ => inputs.push((key.to_string(), t)),
            }
        }
        if !ok {
            return None;
        }
        let step = Step {
            name: name.to_string(),
            environment: self.frame_env.clone(),
            action: Some(index),
            inputs_env: true,
            id: Some(JS_STEP.to_string()),
            docker_action: Some(Box::new(DockerAction {
                image: image.to_string(),
                build: None,
                entrypoint,
                split_args: true,
                args,
            })),
            ..Step::default()
        };
        Some((vec![step], inputs))
    }

    /// `runs.post-if`, `always()` when unset.
    pub(super) fn post_condition(&mut self, runs: &Node) -> Option<Condition> {
        let post_if = get(runs, "post-if").and_then(|n| self.cx.string(n, "runs.post-if"));
        let source = post_if.unwrap_or_else(|| "always()".into());
        let inner = source.trim().trim_start_matches("${{").trim_end_matches("}}");
        match crate::pipeline::expr::parse_in(inner, &super::LANG) {
            Ok(expr) => Some(Condition {
                source,
                expr,
                pos: runs.pos,
            }),
            Err(e) => {
                let at = get(runs, "post-if").unwrap_or(runs);
                self.cx.err(
                    at,
                    "runs.post-if",
                    format!("invalid expression: {}", e.message),
                    "write a condition such as `always()` or `success()`",
                );
                None
            }
        }
    }

    /// Keeps a post step of call `index` for the end of the job: its own
    /// call with the same inputs and the main call's state.
    pub(super) fn post_step(
        &mut self,
        index: usize,
        name: &str,
        condition: Condition,
        make: impl FnOnce(usize, String) -> Step,
    ) {
        let mut call = self.calls.get(index).cloned().unwrap_or_default();
        call.parent = None;
        call.id = None;
        call.outputs_of = None;
        call.state_from = Some(index);
        call.name = format!("Post {name}");
        call.condition = Some(condition.clone());
        let post_index = self.calls.len();
        self.calls.push(call);
        let mut post = make(post_index, format!("Post {name}"));
        post.condition = Some(Box::new(condition));
        self.posts.push((index, post));
    }
}
