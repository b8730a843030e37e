//! `spec:inputs` and `$[[ inputs.NAME ]]`: an included file declares its
//! inputs (type `string`, `number`, `boolean` or `array`, a `default`,
//! `options`, a `regex`), the include gives them (`include:inputs`), and
//! every key and string of the file's configuration has its `$[[ ... ]]`
//! replaced, as GitLab does when it reads the file. A value that is only
//! one `$[[ ... ]]` takes the input's type (a list stays a list); inside a
//! longer string it is written as text. Functions after `|`:
//! `expand_vars`, `truncate(offset,length)`, `posix_escape`.

use super::{Gitlab, get, join};
use crate::pipeline::diag::suggestion_hint;
use crate::pipeline::yaml::{Node, Value};

/// Longest string interpolation may make (inputs are meant to be small).
const MAX_INTERPOLATED: usize = 1 << 20;
/// Most bytes (and copied nodes) interpolation may make in all, for the
/// pipeline and every file it includes.
const MAX_INTERPOLATED_TOTAL: usize = 16 << 20;
/// Most functions chained in one `$[[ ... ]]` (GitLab's limit).
const MAX_FUNCTIONS: usize = 3;

const TYPES: [&str; 4] = ["string", "number", "boolean", "array"];

/// `node` and all it holds, moved to where `at` is.
fn placed(node: Node, at: &Node) -> Node {
    let value = match node.value {
        Value::Seq(items) => Value::Seq(items.into_iter().map(|n| placed(n, at)).collect()),
        Value::Map(items) => Value::Map(items.into_iter().map(|(k, v)| (placed(k, at), placed(v, at))).collect()),
        other => other,
    };
    Node {
        value,
        pos: at.pos,
        width: at.width,
    }
}

/// One declared input and the value it has for this include.
struct Input {
    name: String,
    value: Node,
}

impl Gitlab<'_, '_> {
    /// The values `--input NAME=VALUE` gives the pipeline file's own
    /// inputs, as an include's `inputs:` would (each read as its input's
    /// type), placed at the input's declaration so that what is wrong with
    /// one is shown there. `None` when none is given; an input the file
    /// does not declare, or a value its type cannot take, is an error.
    pub(super) fn command_line_inputs(&mut self, spec: Option<&Node>, config: &Node, rel: &str) -> Option<Node> {
        let given = self.opts.inputs.clone();
        let (name, _) = given.first()?;
        let declared = spec.and_then(|s| get(s, "inputs")).and_then(|d| match &d.value {
            Value::Map(items) => Some(items.clone()),
            _ => None,
        });
        let Some(declared) = declared else {
            self.cx.err(
                spec.unwrap_or(config),
                "spec.inputs",
                format!("--input {name}: `{rel}` declares no inputs"),
                "declare them in a `spec:inputs` header (`spec:`, then `---`), or leave out --input",
            );
            return None;
        };
        let names: Vec<String> = declared.iter().map(|(k, _)| k.key_text()).collect();
        let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut items = Vec::new();
        for (name, raw) in &given {
            let Some((key, decl)) = declared.iter().find(|(k, _)| k.key_text() == *name) else {
                self.cx.err(
                    spec.unwrap_or(config),
                    "spec.inputs",
                    format!("--input {name}: `{rel}` has no input `{name}`"),
                    suggestion_hint(name, &name_refs, "inputs"),
                );
                continue;
            };
            let ty = get(decl, "type").and_then(Node::as_str).unwrap_or("string");
            let value = match ty {
                "number" => raw
                    .parse::<i64>()
                    .map(Value::Int)
                    .ok()
                    .or_else(|| raw.parse::<f64>().ok().filter(|f| f.is_finite()).map(Value::Float)),
                "boolean" => match raw.as_str() {
                    "true" => Some(Value::Bool(true)),
                    "false" => Some(Value::Bool(false)),
                    _ => None,
                },
                "array" => crate::pipeline::yaml::parse(raw)
                    .root
                    .filter(|n| matches!(n.value, Value::Seq(_)))
                    .map(|n| placed(n, key).value),
                _ => Some(Value::Str(raw.clone())),
            };
            let Some(value) = value else {
                let example = match ty {
                    "number" => "a number, such as 3 or 1.5",
                    "boolean" => "true or false",
                    _ => "a list, such as [a, b]",
                };
                self.cx.err(
                    key,
                    &format!("spec.inputs.{name}"),
                    format!("--input {name}={raw}: input `{name}` is a {ty}"),
                    format!("give {example}"),
                );
                continue;
            };
            let at = |value| Node {
                value,
                pos: key.pos,
                width: key.width,
            };
            items.push((at(Value::Str(name.clone())), at(value)));
        }
        Some(Node {
            value: Value::Map(items),
            pos: config.pos,
            width: 1,
        })
    }

    /// `config` with its inputs filled in; problems are reported at the
    /// include (`entry`) or in the included file.
    pub(super) fn apply_inputs(
        &mut self,
        config: Node,
        spec: Option<&Node>,
        given: Option<&Node>,
        entry: &Node,
        path: &str,
        rel: &str,
    ) -> Node {
        let declared = spec.and_then(|s| get(s, "inputs"));
        if let Some(s) = spec {
            self.cx
                .mapping(s, "spec", &["inputs", "include", "component"], "`spec`");
        }
        let Some(declared) = declared else {
            if let Some(g) = given {
                self.cx.err(
                    g,
                    &join(path, "inputs"),
                    format!("`{rel}` declares no inputs (`spec:inputs`), but the include gives some"),
                    "remove `inputs:` here, or declare them in the file's `spec:` header",
                );
            }
            return config;
        };
        let Value::Map(decls) = &declared.value else {
            self.cx.err(
                declared,
                "spec.inputs",
                format!(
                    "`spec:inputs` is a mapping of input names, found {}",
                    declared.type_name()
                ),
                "write `inputs:` then `  name: {default: value}`",
            );
            return config;
        };
        let names: Vec<String> = decls.iter().map(|(k, _)| k.key_text()).collect();
        let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let ipath = join(path, "inputs");
        if let Some(g) = given {
            match &g.value {
                Value::Map(items) => {
                    for (k, _) in items {
                        let key = k.key_text();
                        if !names.contains(&key) {
                            self.cx.err(
                                k,
                                &join(&ipath, &key),
                                format!("`{rel}` has no input `{key}`"),
                                suggestion_hint(&key, &name_refs, "inputs"),
                            );
                        }
                    }
                }
                _ => self.cx.err(
                    g,
                    &ipath,
                    format!("`inputs` is a mapping of names to values, found {}", g.type_name()),
                    "write `inputs:` then `  name: value`",
                ),
            }
        }
        let mut inputs = Vec::new();
        for (k, decl) in decls {
            let name = k.key_text();
            let dpath = format!("spec.inputs.{name}");
            if !matches!(decl.value, Value::Null)
                && !self.cx.mapping(
                    decl,
                    &dpath,
                    &["type", "default", "options", "regex", "description"],
                    "an input",
                )
            {
                continue;
            }
            let ty = match get(decl, "type") {
                Some(t) => match t.as_str() {
                    Some(s) if TYPES.contains(&s) => s.to_string(),
                    _ => {
                        self.cx.err(
                            t,
                            &join(&dpath, "type"),
                            format!("input type `{}` is not one of GitLab's", t.key_text()),
                            format!("valid types: {}", TYPES.join(", ")),
                        );
                        continue;
                    }
                },
                None => "string".to_string(),
            };
            let given_value = given.and_then(|g| get(g, &name));
            let (value, at, vpath) = match (given_value, get(decl, "default")) {
                (Some(v), _) => (v.clone(), v, join(&ipath, &name)),
                (None, Some(d)) => (d.clone(), d, join(&dpath, "default")),
                // The pipeline's own file: its inputs come from the command line.
                (None, None) if path.is_empty() => {
                    self.cx.err(
                        k,
                        &dpath,
                        format!("`{rel}` needs input `{name}`, which has no default"),
                        format!("give it: trackside run --input {name}=VALUE"),
                    );
                    continue;
                }
                (None, None) => {
                    self.cx.err(
                        entry,
                        path,
                        format!("`{rel}` needs input `{name}`, and the include does not give it"),
                        format!("add `inputs: {{{name}: ...}}` to this include (the input has no default)"),
                    );
                    continue;
                }
            };
            let type_ok = match ty.as_str() {
                "string" => matches!(value.value, Value::Str(_)),
                "number" => matches!(value.value, Value::Int(_) | Value::Float(_)),
                "boolean" => matches!(value.value, Value::Bool(_)),
                _ => matches!(value.value, Value::Seq(_)),
            };
            if !type_ok {
                self.cx.err(
                    at,
                    &vpath,
                    format!("input `{name}` is a {ty}, found {}", value.type_name()),
                    match ty.as_str() {
                        "string" => "quote the value".to_string(),
                        other => format!("give a {other}"),
                    },
                );
                continue;
            }
            if let Some(options) = get(decl, "options") {
                let Value::Seq(list) = &options.value else {
                    self.cx.err(
                        options,
                        &join(&dpath, "options"),
                        "`options` is a list of allowed values",
                        "write `options: [a, b]`",
                    );
                    continue;
                };
                if !list.iter().any(|o| o.value == value.value) {
                    let allowed: Vec<String> = list.iter().map(Node::key_text).collect();
                    self.cx.err(
                        at,
                        &vpath,
                        format!("input `{name}` is `{}`, not one of its options", value.key_text()),
                        format!("allowed: {}", allowed.join(", ")),
                    );
                    continue;
                }
            }
            if let (Some(re), Value::Str(text)) = (get(decl, "regex"), &value.value) {
                let pattern = re.as_str().unwrap_or_default();
                let pattern = pattern
                    .strip_prefix('/')
                    .and_then(|p| p.strip_suffix('/'))
                    .unwrap_or(pattern);
                match regex::RegexBuilder::new(pattern).size_limit(1 << 20).build() {
                    Ok(r) if r.is_match(text) => {}
                    Ok(_) => {
                        self.cx.err(
                            at,
                            &vpath,
                            format!("input `{name}` is `{text}`, which does not match `{pattern}`"),
                            "give a value the input's `regex` accepts",
                        );
                        continue;
                    }
                    Err(e) => {
                        self.cx.err(
                            re,
                            &join(&dpath, "regex"),
                            format!("`regex` of input `{name}` is not a valid regular expression: {e}"),
                            "GitLab's regular expressions are RE2's",
                        );
                        continue;
                    }
                }
            }
            inputs.push(Input { name, value });
        }
        self.interpolate(config, &inputs, &names)
    }

    /// Replaces every `$[[ inputs.NAME ... ]]` in keys and strings.
    fn interpolate(&mut self, node: Node, inputs: &[Input], declared: &[String]) -> Node {
        let Node { value, pos, width } = node;
        let value = match value {
            Value::Str(s) if s.contains("$[[") => {
                let at = Node {
                    value: Value::Str(s.clone()),
                    pos,
                    width,
                };
                match self.interpolate_text(&s, &at, inputs, declared) {
                    Some(Filled::Whole(v)) => return Node { value: v, pos, width },
                    Some(Filled::Text(t)) => Value::Str(t),
                    None => Value::Str(s),
                }
            }
            Value::Seq(items) => Value::Seq(
                items
                    .into_iter()
                    .map(|n| self.interpolate(n, inputs, declared))
                    .collect(),
            ),
            Value::Reference(items) => Value::Reference(
                items
                    .into_iter()
                    .map(|n| self.interpolate(n, inputs, declared))
                    .collect(),
            ),
            Value::Map(entries) => Value::Map(
                entries
                    .into_iter()
                    .map(|(k, v)| {
                        (
                            self.interpolate(k, inputs, declared),
                            self.interpolate(v, inputs, declared),
                        )
                    })
                    .collect(),
            ),
            other => other,
        };
        Node { value, pos, width }
    }

    fn interpolate_text(&mut self, text: &str, node: &Node, inputs: &[Input], declared: &[String]) -> Option<Filled> {
        let mut out = String::new();
        let mut rest = text;
        let mut offset = 0;
        let whole = text.trim().starts_with("$[[") && text.trim().ends_with("]]") && text.matches("$[[").count() == 1;
        while let Some(start) = rest.find("$[[") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 3..];
            let Some(end) = after.find("]]") else {
                let pos = self.cx.pos_in(node, offset + start);
                self.push_diag(
                    crate::pipeline::Diagnostic::error(pos, 3, "", "`$[[` is not closed with `]]`")
                        .with_hint("write `$[[ inputs.name ]]`"),
                );
                return None;
            };
            let inner = after[..end].trim();
            let width = rest[start..start + 3 + end + 2].chars().count();
            let char_at = text[..offset + start].chars().count();
            let mut parts = inner.split('|').map(str::trim);
            let head = parts.next().unwrap_or_default();
            let Some(name) = head.strip_prefix("inputs.") else {
                let pos = self.cx.pos_in(node, char_at);
                self.push_diag(
                    crate::pipeline::Diagnostic::error(
                        pos,
                        3,
                        "",
                        format!("`$[[ {head} ]]`: only `inputs.NAME` can be interpolated"),
                    )
                    .with_hint("write `$[[ inputs.name ]]`"),
                );
                return None;
            };
            let Some(input) = inputs.iter().find(|i| i.name == name) else {
                if !declared.iter().any(|d| d == name) {
                    let refs: Vec<&str> = declared.iter().map(String::as_str).collect();
                    let pos = self.cx.pos_in(node, char_at);
                    self.push_diag(
                        crate::pipeline::Diagnostic::error(
                            pos,
                            3,
                            "",
                            format!("unknown input `{name}` in `$[[ {inner} ]]`"),
                        )
                        .with_hint(suggestion_hint(name, &refs, "inputs of this file")),
                    );
                }
                return None;
            };
            let functions: Vec<&str> = parts.collect();
            if functions.len() > MAX_FUNCTIONS {
                let pos = self.cx.pos_in(node, char_at);
                self.push_diag(
                    crate::pipeline::Diagnostic::error(
                        pos,
                        3,
                        "",
                        format!("more than {MAX_FUNCTIONS} functions in `$[[ {inner} ]]`"),
                    )
                    .with_hint("GitLab allows three functions in one interpolation"),
                );
                return None;
            }
            if whole && functions.is_empty() && !matches!(input.value.value, Value::Str(_)) {
                if !self.spend(input.value.size(), node) {
                    return None;
                }
                return Some(Filled::Whole(input.value.value.clone()));
            }
            let mut value = match &input.value.value {
                Value::Seq(items) => {
                    // As JSON, which is how GitLab writes a list into text.
                    let inner: Vec<serde_json::Value> = items.iter().map(|i| i.key_text().into()).collect();
                    serde_json::Value::Array(inner).to_string()
                }
                _ => input.value.key_text(),
            };
            for f in functions {
                match self.function(f, &value) {
                    Ok(v) => value = v,
                    Err(message) => {
                        let pos = self.cx.pos_in(node, char_at);
                        self.push_diag(
                            crate::pipeline::Diagnostic::error(pos, width, "", format!("`$[[ {inner} ]]`: {message}"))
                                .with_hint("functions: expand_vars, truncate(offset,length), posix_escape"),
                        );
                        return None;
                    }
                }
            }
            if !self.spend(value.len(), node) {
                return None;
            }
            out.push_str(&value);
            if out.len() > MAX_INTERPOLATED {
                let pos = self.cx.pos_in(node, char_at);
                self.push_diag(
                    crate::pipeline::Diagnostic::error(pos, width, "", "interpolation makes a string over 1 MiB")
                        .with_hint("inputs are for small values"),
                );
                return None;
            }
            offset += start + 3 + end + 2;
            rest = &after[end + 2..];
        }
        out.push_str(rest);
        Some(Filled::Text(out))
    }

    /// One interpolation function applied to `value`.
    fn function(&self, call: &str, value: &str) -> Result<String, FunctionError> {
        match call {
            "expand_vars" => Ok(super::include::expand_with(value, &self.include_vars())),
            "posix_escape" => Ok(value
                .chars()
                .flat_map(|c| {
                    let special = !(c.is_ascii_alphanumeric()
                        || matches!(c, '_' | '-' | '.' | '/' | ',' | ':' | '@' | '%' | '+' | '='));
                    special.then_some('\\').into_iter().chain(std::iter::once(c))
                })
                .collect()),
            _ => {
                let Some(args) = call.strip_prefix("truncate(").and_then(|a| a.strip_suffix(')')) else {
                    return Err(FunctionError::Unknown(call.to_string()));
                };
                let nums: Vec<Option<usize>> = args.split(',').map(|a| a.trim().parse().ok()).collect();
                match nums.as_slice() {
                    [Some(offset), Some(length)] => Ok(value.chars().skip(*offset).take(*length).collect()),
                    _ => Err(FunctionError::TruncateArgs(call.to_string())),
                }
            }
        }
    }
}

impl Gitlab<'_, '_> {
    /// A diagnostic of interpolation, within the report's budget (its
    /// position is only worked out when there is room for it).
    fn push_diag(&mut self, d: crate::pipeline::Diagnostic) {
        if self.cx.room() {
            self.cx.diags.push(d);
        }
    }

    /// Counts what interpolation makes against the file's budget; `false`
    /// (and one error) once it is spent.
    fn spend(&mut self, amount: usize, node: &Node) -> bool {
        self.interpolated = self.interpolated.saturating_add(amount);
        if self.interpolated <= MAX_INTERPOLATED_TOTAL {
            return true;
        }
        if !self.interpolation_spent {
            self.interpolation_spent = true;
            self.cx.err(
                node,
                "",
                format!("inputs fill in more than {} MiB in all", MAX_INTERPOLATED_TOTAL >> 20),
                "inputs are for small values; pass large data as files",
            );
        }
        false
    }
}

/// Why an interpolation function cannot be applied.
#[derive(Debug, thiserror::Error)]
enum FunctionError {
    #[error("unknown function `{0}`")]
    Unknown(String),
    #[error("`{0}` takes two numbers: truncate(offset,length)")]
    TruncateArgs(String),
}

enum Filled {
    /// The whole value was one interpolation of a non-string input.
    Whole(Value),
    Text(String),
}
