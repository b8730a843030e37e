//! `include:` as GitLab reads it: every included file's configuration is
//! merged into the including file's, the included files in order (a later
//! one winning) and the including file over all of them, mappings deeply,
//! anything else replaced whole. An included file may include others (up
//! to GitLab's 100 levels and 150 files in all); the same file with the
//! same inputs is read once.
//!
//! `local:` (also with `*`/`**` wildcards), and `project:`/`component:`
//! mapped to a local checkout with `--include-project GROUP/PROJECT=PATH`,
//! are read from disk; `remote:`, `template:` and unmapped projects and
//! components need GitLab's server and are refused with what to do
//! instead. `include:rules` (`if`, `exists`, `changes`, `when`) decide
//! whether an entry is read; `include:inputs` fill the included file's
//! `spec:inputs` (see inputs.rs).
//!
//! Every node keeps its position in the file it was written in (the file
//! index of `Pos`), so a mistake in an included file is reported there.

use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};

use super::files;
use super::merge::deep_merge;
use super::{Gitlab, get, join};
use crate::pipeline::read::{forbidden_char, read_source};
use crate::pipeline::yaml::{self, Node, Value};

/// GitLab's default limit of included files in one pipeline.
pub const MAX_INCLUDES: usize = 150;
/// GitLab's limit of nested includes.
pub const MAX_NESTING: usize = 100;

/// What the reading of includes keeps across files.
#[derive(Default)]
pub(super) struct Included {
    /// Files read so far (the limit counts them).
    count: usize,
    /// (file, inputs) already merged into this pipeline: read once (a child
    /// pipeline has a set of its own; the limits are shared).
    pub(super) seen: HashSet<String>,
    /// The limit was hit: the rest is not read (one error says so).
    stopped: bool,
    /// Bytes of included files read so far.
    bytes: u64,
}

/// Most bytes all included files may hold together.
pub const MAX_TOTAL_BYTES: u64 = 64 << 20;

/// One entry of `include:`, resolved to the files it names.
enum Source {
    /// Project-relative paths on this machine (after wildcards), and the
    /// root they are relative to.
    Files(PathBuf, Vec<String>),
    /// Refused: needs the server, or a mistake (already reported).
    Skip,
}

impl Gitlab<'_, '_> {
    /// `config` with its `include:` merged in (recursively) and `include`
    /// and `spec` removed.
    pub(super) fn with_includes(&mut self, config: &Node, depth: usize, state: &mut Included) -> Node {
        let own = without_keys(config, &["include", "spec"]);
        let Some(inc) = get(config, "include") else {
            return own;
        };
        let entries: Vec<&Node> = match &inc.value {
            Value::Seq(items) => items.iter().collect(),
            Value::Null => Vec::new(),
            _ => vec![inc],
        };
        let mut merged: Option<Node> = None;
        for (i, entry) in entries.into_iter().enumerate() {
            let path = if matches!(inc.value, Value::Seq(_)) {
                format!("include[{i}]")
            } else {
                "include".to_string()
            };
            if state.stopped {
                break;
            }
            let (root, files) = match self.include_source(entry, &path) {
                Source::Files(root, files) => (root, files),
                Source::Skip => continue,
            };
            let inputs = get(entry, "inputs");
            for rel in files {
                let file = root.join(&rel);
                let key = format!("{}\u{0}{}", file.display(), inputs.map(node_key).unwrap_or_default());
                if !state.seen.insert(key) {
                    continue;
                }
                if depth + 1 > super::include::MAX_NESTING {
                    self.cx.err(
                        entry,
                        &path,
                        format!("includes nest deeper than GitLab's {MAX_NESTING} levels"),
                        "an included file includes itself through others? flatten the chain",
                    );
                    state.stopped = true;
                    break;
                }
                state.count += 1;
                if state.count > MAX_INCLUDES {
                    self.cx.err(
                        entry,
                        &path,
                        format!("more than GitLab's {MAX_INCLUDES} included files"),
                        "include fewer files (a wildcard may match more than meant)",
                    );
                    state.stopped = true;
                    break;
                }
                let size = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
                state.bytes = state.bytes.saturating_add(size);
                if state.bytes > MAX_TOTAL_BYTES {
                    self.cx.err(
                        entry,
                        &path,
                        format!("included files hold more than {} MiB in all", MAX_TOTAL_BYTES >> 20),
                        "include fewer or smaller files",
                    );
                    state.stopped = true;
                    break;
                }
                let Some(doc) = self.read_included(&file, &rel, entry, &path, inputs) else {
                    continue;
                };
                // A `local:` include in a file of another project (mapped
                // with --include-project) is of that project, as in GitLab.
                let outer = self.include_root.replace(root.clone());
                let expanded = self.with_includes(&doc, depth + 1, state);
                self.include_root = outer;
                merged = Some(match merged {
                    Some(m) => deep_merge(&m, &expanded),
                    None => expanded,
                });
            }
        }
        match merged {
            Some(m) => {
                let mut out = deep_merge(&m, &own);
                out.pos = own.pos;
                out
            }
            None => own,
        }
    }

    /// What one `include:` entry names, its `rules` decided.
    fn include_source(&mut self, entry: &Node, path: &str) -> Source {
        let text_of = |n: &Node| n.as_str().map(str::to_string);
        let (kind, target) = match &entry.value {
            Value::Str(s) if s.starts_with("http://") || s.starts_with("https://") => ("remote", entry),
            Value::Str(_) => ("local", entry),
            Value::Map(_) => {
                let kinds = ["local", "remote", "template", "project", "component"];
                let given: Vec<&str> = kinds.iter().copied().filter(|k| get(entry, k).is_some()).collect();
                let allowed = [
                    "local",
                    "remote",
                    "template",
                    "project",
                    "component",
                    "file",
                    "ref",
                    "rules",
                    "inputs",
                    "cache",
                    "integrity",
                ];
                if !self.cx.mapping(entry, path, &allowed, "an include") {
                    return Source::Skip;
                }
                match given.as_slice() {
                    [one] => match get(entry, one) {
                        Some(t) => (*one, t),
                        None => return Source::Skip,
                    },
                    [] => {
                        self.cx.err(
                            entry,
                            path,
                            "an include names no file: give one of `local`, `project`, `component`, `remote`, `template`",
                            "for a file of this repository: `- local: ci/build.yml`",
                        );
                        return Source::Skip;
                    }
                    many => {
                        self.cx.err(
                            entry,
                            path,
                            format!("an include gives {} at once", many.join(" and ")),
                            "one include entry names one kind of file; split it in two",
                        );
                        return Source::Skip;
                    }
                }
            }
            _ => {
                self.cx.err(
                    entry,
                    path,
                    format!("an include is a file name or a mapping, found {}", entry.type_name()),
                    "write `- local: ci/build.yml`",
                );
                return Source::Skip;
            }
        };
        if let Some(rules) = get(entry, "rules")
            && !self.include_rules(rules, &join(path, "rules"))
        {
            return Source::Skip;
        }
        let tpath = if matches!(entry.value, Value::Map(_)) {
            join(path, kind)
        } else {
            path.to_string()
        };
        match kind {
            "local" => {
                let Some(text) = self.cx.string(target, &tpath) else {
                    return Source::Skip;
                };
                let text = self.expand_created(&text);
                let root = self.include_root.clone().unwrap_or_else(|| self.project_dir());
                self.local_files(&root, &text, target, &tpath)
            }
            "project" => {
                let Some(project) = self.cx.string(target, &tpath) else {
                    return Source::Skip;
                };
                let project = project.trim_matches('/').to_string();
                let Some(root) = self.mapped_project(&project) else {
                    self.cx.err(
                        target,
                        &tpath,
                        format!("`include:project` `{project}` is read from GitLab's server"),
                        format!("map it to a local checkout: `--include-project {project}=PATH`, or vendor the file into this repository and include it with `local:`"),
                    );
                    return Source::Skip;
                };
                let Some(file_node) = get(entry, "file") else {
                    self.cx.err(
                        entry,
                        path,
                        "`include:project` needs `file:` (the path in that project)",
                        "add `file: /templates/build.yml`",
                    );
                    return Source::Skip;
                };
                let names: Vec<(String, Node)> = match &file_node.value {
                    Value::Seq(_) => self.cx.string_list(file_node, &join(path, "file")),
                    _ => self
                        .cx
                        .string(file_node, &join(path, "file"))
                        .map(|s| (s, file_node.clone()))
                        .into_iter()
                        .collect(),
                };
                let mut out = Vec::new();
                for (name, node) in names {
                    let name = self.expand_created(&name);
                    if let Source::Files(_, f) = self.local_files(&root, &name, &node, &join(path, "file")) {
                        out.extend(f);
                    }
                }
                Source::Files(root, out)
            }
            "component" => {
                let Some(address) = self.cx.string(target, &tpath) else {
                    return Source::Skip;
                };
                let address = self.expand_created(&address);
                // host/group/project/name@version: the component's template
                // is templates/NAME.yml or templates/NAME/template.yml.
                let without_version = address.split('@').next().unwrap_or_default();
                let mut parts: Vec<&str> = without_version.split('/').collect();
                let name = parts.pop().unwrap_or_default().to_string();
                let project = parts.iter().skip(1).copied().collect::<Vec<_>>().join("/");
                let Some(root) = (!project.is_empty()).then(|| self.mapped_project(&project)).flatten() else {
                    self.cx.err(
                        target,
                        &tpath,
                        format!("`include:component` `{address}` is read from GitLab's server"),
                        format!(
                            "map its project to a local checkout: `--include-project {}=PATH`",
                            if project.is_empty() { "GROUP/PROJECT" } else { &project }
                        ),
                    );
                    return Source::Skip;
                };
                let candidates = [
                    format!("templates/{name}.yml"),
                    format!("templates/{name}/template.yml"),
                ];
                match candidates.iter().find(|c| root.join(c).is_file()) {
                    Some(c) => Source::Files(root, vec![c.clone()]),
                    None => {
                        self.cx.err(
                            target,
                            &tpath,
                            format!(
                                "component `{name}` is not in {}: neither {} nor {}",
                                root.display(),
                                candidates[0],
                                candidates[1]
                            ),
                            "check the component's name and the path given to --include-project",
                        );
                        Source::Skip
                    }
                }
            }
            "remote" => {
                let url = text_of(target).unwrap_or_default();
                self.cx.err(
                    target,
                    &tpath,
                    format!("`include:remote` `{url}` is fetched from the network by GitLab's server"),
                    "download the file into this repository and include it with `local:` (trackside reads no URL)",
                );
                Source::Skip
            }
            _ => {
                let name = text_of(target).unwrap_or_default();
                self.cx.err(
                    target,
                    &tpath,
                    format!("`include:template` `{name}` is one of GitLab's own templates, kept on its server"),
                    "copy the template (from gitlab.com/gitlab-org/gitlab, lib/gitlab/ci/templates) into this repository and include it with `local:`",
                );
                Source::Skip
            }
        }
    }

    /// The files a local path or wildcard names in `root`: an error at
    /// `node` when it names none, leaves the root, or is not YAML.
    fn local_files(&mut self, root: &Path, text: &str, node: &Node, path: &str) -> Source {
        let rel = text.trim_start_matches('/');
        let rel = rel.strip_prefix("./").unwrap_or(rel);
        if Path::new(rel)
            .components()
            .any(|c| matches!(c, Component::ParentDir | Component::RootDir | Component::Prefix(_)))
        {
            self.cx.err(
                node,
                path,
                format!("`{text}` leaves the project: an include is a path inside it"),
                "write the path from the project's root (the git work tree), without `..`",
            );
            return Source::Skip;
        }
        if !(rel.ends_with(".yml") || rel.ends_with(".yaml")) {
            self.cx.err(
                node,
                path,
                format!("`{text}` is not a YAML file: GitLab includes only `.yml` and `.yaml` files"),
                "name the file with its .yml extension",
            );
            return Source::Skip;
        }
        if files::is_pattern(rel) {
            let matcher = match files::glob(rel) {
                Ok(m) => m,
                Err(e) => {
                    self.cx.err(
                        node,
                        path,
                        format!("`{text}` is not a valid wildcard: {e}"),
                        "use `*` within a folder and `**` across folders",
                    );
                    return Source::Skip;
                }
            };
            let found: Vec<String> = self.project_files(root).matching(&matcher).cloned().collect();
            if found.is_empty() {
                self.cx.err(
                    node,
                    path,
                    format!("`{text}` matches no file in {}", root.display()),
                    "check the pattern: `*` stays within one folder, `**` crosses folders",
                );
                return Source::Skip;
            }
            return Source::Files(root.to_path_buf(), found);
        }
        if !root.join(rel).is_file() {
            self.cx.err(
                node,
                path,
                format!("included file `{text}` does not exist in {}", root.display()),
                "the path is from the project's root (the git work tree); check its spelling",
            );
            return Source::Skip;
        }
        Source::Files(root.to_path_buf(), vec![rel.to_string()])
    }

    /// Reads, parses and fills in the inputs of one included file; `None`
    /// when it cannot be read (reported at the include).
    fn read_included(
        &mut self,
        file: &Path,
        rel: &str,
        entry: &Node,
        path: &str,
        inputs: Option<&Node>,
    ) -> Option<Node> {
        let text = match read_source(file) {
            Ok(t) => t,
            Err(d) => {
                self.cx.err(
                    entry,
                    path,
                    format!("included file `{rel}`: {}", d.message),
                    d.hint.unwrap_or_default(),
                );
                return None;
            }
        };
        let text = match text.strip_prefix('\u{feff}') {
            Some(rest) => rest.to_string(),
            None => text,
        };
        let bad = forbidden_char(&text);
        // Shown as the user would type it: from the current folder when
        // the file is below it.
        let shown = std::env::current_dir()
            .ok()
            .and_then(|cwd| file.strip_prefix(cwd).ok().map(Path::to_path_buf))
            .unwrap_or_else(|| file.to_path_buf());
        let index = self.cx.add_source(&shown, text);
        if let Some(mut d) = bad {
            d.file = index;
            self.cx.diags.push(d);
            return None;
        }
        let parsed = {
            let source = self.cx.included.last()?;
            yaml::parse_with(
                &source.text,
                yaml::Options {
                    file: index,
                    header: true,
                },
            )
        };
        self.cx.yaml_problems(parsed.problems);
        let (header, config) = match (parsed.root, parsed.second) {
            (Some(h), Some(c)) => (Some(h), c),
            (Some(c), None) => (None, c),
            (None, _) => return None,
        };
        let spec = match &header {
            Some(h) => get(h, "spec").cloned(),
            None => {
                if get(&config, "spec").is_some() && entries_len(&config) == 1 {
                    // `spec:` without `---` and a configuration after it.
                    self.cx.err(
                        &config,
                        "spec",
                        format!("`{rel}` has a `spec:` header and no configuration"),
                        "end the header with a line `---` and write the jobs after it",
                    );
                    return None;
                }
                get(&config, "spec").cloned()
            }
        };
        if let Some(h) = &header
            && get(h, "spec").is_none()
        {
            self.cx.err(
                h,
                "",
                format!("`{rel}` has two YAML documents, and the first is not a `spec:` header"),
                "a file holds one configuration, or a `spec:` header, `---`, then the configuration",
            );
            return None;
        }
        // A file whose inputs are wrong is not read further: what it would
        // say next is the same mistake again.
        let errors = |s: &Self| s.cx.diags.iter().filter(|d| d.is_error()).count();
        let before = errors(self);
        let filled = self.apply_inputs(config, spec.as_ref(), inputs, entry, path, rel);
        (errors(self) == before).then_some(filled)
    }

    /// Whether `include:rules` let the entry in: the first rule that matches
    /// decides (`when: never` keeps it out); none matching keeps it out.
    fn include_rules(&mut self, node: &Node, path: &str) -> bool {
        let Value::Seq(items) = &node.value else {
            self.cx.err(
                node,
                path,
                format!("`rules` is a list of rules, found {}", node.type_name()),
                "write `rules:` then `- if: ...` items",
            );
            return false;
        };
        let created = self.include_vars();
        for (i, rule) in items.iter().enumerate() {
            let rpath = format!("{path}[{i}]");
            if !self
                .cx
                .mapping(rule, &rpath, &["if", "exists", "changes", "when"], "an include rule")
            {
                return false;
            }
            let mut matches = true;
            if let Some(cond) = get(rule, "if") {
                match self.condition(cond, &join(&rpath, "if"), &|name| {
                    created.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.clone())
                }) {
                    Some(m) => matches &= m,
                    None => return false,
                }
            }
            if let Some(n) = get(rule, "exists") {
                matches &= self.exists(n, &join(&rpath, "exists"));
            }
            if let Some(n) = get(rule, "changes") {
                matches &= self.changes(n, &join(&rpath, "changes"));
            }
            if matches {
                return match get(rule, "when") {
                    None => true,
                    Some(w) => match w.as_str() {
                        Some("never") => false,
                        Some("always") => true,
                        _ => {
                            self.cx.err(
                                w,
                                &join(&rpath, "when"),
                                "`when` in an include rule is `never` or `always`",
                                "leave `when` out to include the file",
                            );
                            false
                        }
                    },
                };
            }
        }
        false
    }

    /// The variables an include may use: the pipeline's predefined ones and
    /// the command line's (GitLab reads includes before the file's own
    /// `variables`).
    pub(super) fn include_vars(&self) -> Vec<(String, String)> {
        let mut v = self.opts.ci_vars.clone();
        v.extend(self.opts.cli_vars.iter().cloned());
        v
    }

    /// `$VAR` and `${VAR}` in an include path, from [`Self::include_vars`].
    fn expand_created(&self, text: &str) -> String {
        expand_with(text, &self.include_vars())
    }

    /// The project's root: where local includes and `rules:exists` look.
    pub(super) fn project_dir(&self) -> PathBuf {
        self.opts.project_dir.clone().unwrap_or_else(|| PathBuf::from("."))
    }

    fn mapped_project(&self, project: &str) -> Option<PathBuf> {
        self.opts
            .include_projects
            .iter()
            .find(|(p, _)| p.trim_matches('/') == project)
            .map(|(_, dir)| dir.clone())
    }
}

/// `$VAR` and `${VAR}` replaced from `vars` (the last definition wins;
/// an unknown one is empty, as in GitLab), by the pipeline's one expander.
pub(super) fn expand_with(text: &str, vars: &[(String, String)]) -> String {
    if !text.contains('$') {
        return text.to_string();
    }
    let mut scope = crate::pipeline::vars::Scope::new();
    scope
        .lenient(true)
        .push_layer(vars.iter().rev().map(|(k, v)| (k.clone(), v.clone())));
    scope.expand(text).unwrap_or_else(|_| text.to_string())
}

fn without_keys(node: &Node, keys: &[&str]) -> Node {
    match &node.value {
        Value::Map(entries) => Node {
            value: Value::Map(
                entries
                    .iter()
                    .filter(|(k, _)| !k.as_str().is_some_and(|s| keys.contains(&s)))
                    .cloned()
                    .collect(),
            ),
            ..node.clone()
        },
        _ => node.clone(),
    }
}

fn entries_len(node: &Node) -> usize {
    match &node.value {
        Value::Map(e) => e.len(),
        _ => 0,
    }
}

/// A node's content as text, positions left out (for "the same inputs").
fn node_key(node: &Node) -> String {
    match &node.value {
        Value::Map(entries) => {
            let inner: Vec<String> = entries
                .iter()
                .map(|(k, v)| format!("{}:{}", k.key_text(), node_key(v)))
                .collect();
            format!("{{{}}}", inner.join(","))
        }
        Value::Seq(items) | Value::Reference(items) => {
            let inner: Vec<String> = items.iter().map(node_key).collect();
            format!("[{}]", inner.join(","))
        }
        _ => format!("{:?}", node.key_text()),
    }
}
