//! Variable expansion: `$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR:+alt}`,
//! `${VAR/pattern/replacement}` and `${VAR//pattern/replacement}`.
//!
//! Variables live in layers, highest precedence first (command line, step,
//! job, global, predefined, host). A value may refer to other variables; they
//! are resolved recursively with cycle detection and a depth limit. The one
//! idea that makes `PATH: "/opt/bin:$PATH"` work: a variable that refers to
//! *itself* reads the definition from the layers below its own.
//!
//! `$$` is a literal `$`; `${{ ... }}` is an expression and passes through
//! untouched. Patterns in `${VAR/pattern/replacement}` are literal text.

use std::collections::{BTreeMap, HashMap};

/// Deepest chain of references followed before giving up.
pub const MAX_DEPTH: usize = 32;
/// Longest value expansion may produce.
pub const MAX_LEN: usize = 1 << 20;
/// Most bytes one resolution may produce over all the variables it resolves
/// (many values each just under [`MAX_LEN`] must not add up to gigabytes).
pub const MAX_TOTAL: usize = 16 << 20;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VarError {
    #[error("undefined variable `{0}`")]
    Undefined(String),
    #[error("variables refer to each other in a cycle: {}", .0.join(" -> "))]
    Cycle(Vec<String>),
    #[error("variable references nest deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("expanded value is longer than {MAX_LEN} bytes")]
    TooLong,
    #[error("the variables expand to more than {MAX_TOTAL} bytes in all")]
    TooMuch,
    #[error("unclosed `${{` in `{0}`")]
    Unclosed(String),
    #[error("bad variable reference `{0}`")]
    Bad(String),
}

impl VarError {
    /// What to do about it.
    pub fn hint(&self) -> String {
        match self {
            VarError::Undefined(name) => format!(
                "define `{name}` in environment/global_env, pass `--var {name}=...`, \
                 give a default with `${{{name}:-value}}`, or let it through from the host with `--pass-env {name}`"
            ),
            VarError::Cycle(path) => {
                let names = &path[..path.len().saturating_sub(1)];
                format!(
                    "break the cycle: one of {} must not refer to the next",
                    names.join(", ")
                )
            }
            VarError::TooDeep => "flatten the chain of variables referring to variables".into(),
            VarError::TooLong => "a variable's value should not grow this large".into(),
            VarError::TooMuch => "fewer or shorter variables: their values add up too large".into(),
            VarError::Unclosed(_) => "close the reference with `}`".into(),
            VarError::Bad(_) => "write `$$` for a literal dollar sign".into(),
        }
    }
}

/// Layers of variables, index 0 = highest precedence.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    layers: Vec<Vec<(String, String)>>,
    /// An undefined variable expands to nothing instead of being an error.
    lenient: bool,
}

impl Scope {
    pub fn new() -> Self {
        Scope::default()
    }

    /// From now on an undefined variable expands to nothing (GitLab's
    /// rule), not [`VarError::Undefined`].
    pub fn lenient(&mut self, on: bool) -> &mut Self {
        self.lenient = on;
        self
    }

    /// Adds a layer *below* the ones already present.
    pub fn push_layer<I, K, V>(&mut self, vars: I) -> &mut Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let at = self.layers.len();
        self.insert_layer(at, vars)
    }

    /// Puts `vars` above every layer.
    pub fn override_with<I, K, V>(&mut self, vars: I) -> &mut Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        self.insert_layer(0, vars)
    }

    fn insert_layer<I, K, V>(&mut self, at: usize, vars: I) -> &mut Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        self.layers
            .insert(at, vars.into_iter().map(|(k, v)| (k.into(), v.into())).collect());
        self
    }

    /// Where `name` is defined at `from_layer` or below: its layer and its
    /// place in the layer (a layer's last definition of a name wins).
    fn definition(&self, name: &str, from_layer: usize) -> Option<(usize, usize)> {
        self.layers
            .iter()
            .enumerate()
            .skip(from_layer)
            .find_map(|(i, layer)| layer.iter().rposition(|(k, _)| k == name).map(|at| (i, at)))
    }

    /// Every variable, resolved. Keys sorted for stable output.
    pub fn resolve_all(&self) -> Result<BTreeMap<String, String>, (String, VarError)> {
        // Each name's definition of highest precedence, found once: a
        // scan of every layer per name and per reference is quadratic in
        // the variables (a job has a hundred: the machine's, the
        // pipeline's, its own).
        let mut top: HashMap<&str, (usize, usize)> = HashMap::new();
        for (i, layer) in self.layers.iter().enumerate().rev() {
            for (at, (name, _)) in layer.iter().enumerate() {
                top.insert(name.as_str(), (i, at));
            }
        }
        let mut r = Resolver::new(self, Some(top));
        let mut out = BTreeMap::new();
        for layer in &self.layers {
            for (name, _) in layer {
                if out.contains_key(name) {
                    continue;
                }
                let value = r.lookup(name, 0).map_err(|e| (name.clone(), e))?.unwrap_or_default();
                out.insert(name.clone(), value);
            }
        }
        Ok(out)
    }

    /// Resolves one variable by name (its highest-precedence definition).
    pub fn resolve(&self, name: &str) -> Result<Option<String>, VarError> {
        Resolver::new(self, None).lookup(name, 0)
    }

    /// Resolves the definition of `name` found at `layer` or below (validation
    /// checks each layer's own definitions this way).
    pub fn resolve_from(&self, name: &str, layer: usize) -> Result<Option<String>, VarError> {
        Resolver::new(self, None).lookup(name, layer)
    }

    /// Expands a template against the whole scope.
    pub fn expand(&self, template: &str) -> Result<String, VarError> {
        Resolver::new(self, None).expand(template, 0)
    }
}

struct Resolver<'a> {
    scope: &'a Scope,
    /// Each name's definition of highest precedence, when worked out
    /// beforehand ([`Scope::resolve_all`]); else the layers are scanned.
    top: Option<HashMap<&'a str, (usize, usize)>>,
    /// Resolved definitions, by layer and place in it.
    memo: HashMap<(usize, usize), String>,
    /// Definitions being resolved, for cycle detection.
    stack: Vec<(usize, usize)>,
    /// Bytes of resolved values so far, against [`MAX_TOTAL`].
    produced: usize,
}

impl<'a> Resolver<'a> {
    fn new(scope: &'a Scope, top: Option<HashMap<&'a str, (usize, usize)>>) -> Resolver<'a> {
        Resolver {
            scope,
            top,
            memo: HashMap::new(),
            stack: Vec::new(),
            produced: 0,
        }
    }

    /// The value of `name` as seen from `from_layer` (references inside a
    /// definition at layer L see every layer; self-references see L+1..).
    fn lookup(&mut self, name: &str, from_layer: usize) -> Result<Option<String>, VarError> {
        let found = match self.top.as_ref().and_then(|t| t.get(name)) {
            Some(&(layer, at)) if layer >= from_layer => Some((layer, at)),
            _ => self.scope.definition(name, from_layer),
        };
        let Some(key) = found else {
            return Ok(None);
        };
        if let Some(v) = self.memo.get(&key) {
            return Ok(Some(v.clone()));
        }
        if let Some(start) = self.stack.iter().position(|k| k == &key) {
            let mut path: Vec<String> = self.stack[start..]
                .iter()
                .map(|&(layer, at)| self.scope.layers[layer][at].0.clone())
                .collect();
            path.push(name.to_string());
            return Err(VarError::Cycle(path));
        }
        if self.stack.len() >= MAX_DEPTH {
            return Err(VarError::TooDeep);
        }
        let (layer, raw) = (key.0, self.scope.layers[key.0][key.1].1.as_str());
        self.stack.push(key);
        let result = self.expand_in(raw, Some((name, layer)));
        self.stack.pop();
        let value = result?;
        self.produced = self.produced.saturating_add(value.len());
        if self.produced > MAX_TOTAL {
            return Err(VarError::TooMuch);
        }
        self.memo.insert(key, value.clone());
        Ok(Some(value))
    }

    fn expand(&mut self, template: &str, _depth: usize) -> Result<String, VarError> {
        self.expand_in(template, None)
    }

    /// Expands `template`, which is the definition of `owner` (name, layer) if any.
    fn expand_in(&mut self, template: &str, owner: Option<(&str, usize)>) -> Result<String, VarError> {
        let mut out = String::with_capacity(template.len());
        let bytes = template.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] != b'$' {
                let next = template[i..].find('$').map_or(bytes.len(), |n| i + n);
                out.push_str(&template[i..next]);
                i = next;
                continue;
            }
            let rest = &template[i + 1..];
            if rest.starts_with('$') {
                out.push('$');
                i += 2;
            } else if rest.starts_with("{{") {
                // An expression: copy through its closing `}}`.
                let end = rest.find("}}").map_or(template.len(), |n| i + 1 + n + 2);
                out.push_str(&template[i..end]);
                i = end;
            } else if let Some(body) = rest.strip_prefix('{') {
                let close = matching_brace(body).ok_or_else(|| VarError::Unclosed(template.to_string()))?;
                let inner = &body[..close];
                let value = self.braced(inner, owner)?;
                if out.len() + value.len() > MAX_LEN {
                    return Err(VarError::TooLong);
                }
                out.push_str(&value);
                i += 2 + close + 1;
            } else {
                let len = rest
                    .char_indices()
                    .find(|&(n, c)| !(c == '_' || c.is_ascii_alphabetic() || (n > 0 && c.is_ascii_digit())))
                    .map_or(rest.len(), |(n, _)| n);
                if len == 0 {
                    out.push('$');
                    i += 1;
                } else {
                    let name = &rest[..len];
                    let found = self.get(name, owner)?;
                    let value = self.defined(name, found)?;
                    if out.len() + value.len() > MAX_LEN {
                        return Err(VarError::TooLong);
                    }
                    out.push_str(&value);
                    i += 1 + len;
                }
            }
            if out.len() > MAX_LEN {
                return Err(VarError::TooLong);
            }
        }
        Ok(out)
    }

    /// A reference's value: undefined is an error, or nothing in a lenient scope.
    fn defined(&self, name: &str, value: Option<String>) -> Result<String, VarError> {
        match value {
            Some(v) => Ok(v),
            None if self.scope.lenient => Ok(String::new()),
            None => Err(VarError::Undefined(name.to_string())),
        }
    }

    fn get(&mut self, name: &str, owner: Option<(&str, usize)>) -> Result<Option<String>, VarError> {
        match owner {
            Some((own, layer)) if own == name => self.lookup(name, layer + 1),
            _ => self.lookup(name, 0),
        }
    }

    /// The inside of `${...}`.
    fn braced(&mut self, inner: &str, owner: Option<(&str, usize)>) -> Result<String, VarError> {
        let name_len = inner
            .char_indices()
            .find(|&(n, c)| !(c == '_' || c.is_ascii_alphabetic() || (n > 0 && c.is_ascii_digit())))
            .map_or(inner.len(), |(n, _)| n);
        if name_len == 0 {
            return Err(VarError::Bad(format!("${{{inner}}}")));
        }
        let name = &inner[..name_len];
        let op = &inner[name_len..];
        let value = self.get(name, owner)?;
        if op.is_empty() {
            return self.defined(name, value);
        }
        if let Some(default) = op.strip_prefix(":-") {
            return match value {
                Some(v) if !v.is_empty() => Ok(v),
                _ => self.expand_in(default, owner),
            };
        }
        if let Some(alt) = op.strip_prefix(":+") {
            return match value {
                Some(v) if !v.is_empty() => self.expand_in(alt, owner),
                _ => Ok(String::new()),
            };
        }
        if let Some(spec) = op.strip_prefix('/') {
            let (all, spec) = match spec.strip_prefix('/') {
                Some(s) => (true, s),
                None => (false, spec),
            };
            let (pattern, replacement) = split_pattern(spec);
            let pattern = self.expand_in(&pattern, owner)?;
            let replacement = self.expand_in(replacement, owner)?;
            let value = self.defined(name, value)?;
            if pattern.is_empty() {
                return Ok(value);
            }
            // The budget is checked before the replacement allocates: the
            // result's length follows from the number of matches.
            let matches = if all {
                value.matches(pattern.as_str()).count()
            } else {
                usize::from(value.contains(pattern.as_str()))
            };
            let grown = matches.saturating_mul(replacement.len());
            let len = (value.len() - matches * pattern.len()).saturating_add(grown);
            if len > MAX_LEN {
                return Err(VarError::TooLong);
            }
            return Ok(if all {
                value.replace(&pattern, &replacement)
            } else {
                value.replacen(&pattern, &replacement, 1)
            });
        }
        Err(VarError::Bad(format!("${{{inner}}}")))
    }
}

/// Splits `pattern/replacement` at the first unescaped `/`; `\/` in the
/// pattern is a literal slash (as in bash: `${BRANCH//\//-}`).
fn split_pattern(spec: &str) -> (String, &str) {
    let mut pattern = String::new();
    let mut chars = spec.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' if spec[i + 1..].starts_with('/') => {
                pattern.push('/');
                chars.next();
            }
            '/' => return (pattern, &spec[i + 1..]),
            c => pattern.push(c),
        }
    }
    (pattern, "")
}

/// Index of the `}` closing a `${`, counting nested `${...}` pairs.
fn matching_brace(s: &str) -> Option<usize> {
    let mut depth = 0usize;
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'$' if bytes.get(i + 1) == Some(&b'{') => {
                depth += 1;
                i += 1;
            }
            b'}' if depth == 0 => return Some(i),
            b'}' => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    None
}

/// Names referenced by a template, without resolving them (for validation).
pub fn references(template: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = template;
    while let Some(n) = rest.find('$') {
        rest = &rest[n + 1..];
        if let Some(r) = rest.strip_prefix('$') {
            rest = r;
            continue;
        }
        let body = rest.strip_prefix('{').unwrap_or(rest);
        if body.starts_with('{') {
            continue;
        }
        let len = body
            .char_indices()
            .find(|&(i, c)| !(c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit())))
            .map_or(body.len(), |(i, _)| i);
        if len > 0 {
            names.push(body[..len].to_string());
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lenient_scope_expands_undefined_variables_to_nothing() {
        let mut s = Scope::new();
        s.push_layer([("A", "x-$NOPE-${NOPE}-${NOPE/a/b}-$B"), ("B", "b")]);
        assert_eq!(s.resolve("A"), Err(VarError::Undefined("NOPE".into())));
        s.lenient(true);
        assert_eq!(s.resolve("A"), Ok(Some("x----b".into())));
        assert_eq!(s.expand("$$NOPE $NOPE."), Ok("$NOPE .".into()));
    }

    fn scope(layers: &[&[(&str, &str)]]) -> Scope {
        let mut s = Scope::new();
        for l in layers {
            s.push_layer(l.iter().copied());
        }
        s
    }

    #[test]
    fn all_forms_expand() {
        let s = scope(&[&[("A", "hello"), ("E", ""), ("P", "a-b-a")]]);
        assert_eq!(s.expand("$A ${A}!").unwrap(), "hello hello!");
        assert_eq!(s.expand("${MISSING:-dflt}").unwrap(), "dflt");
        assert_eq!(s.expand("${E:-dflt}").unwrap(), "dflt");
        assert_eq!(s.expand("${A:+yes}${MISSING:+no}").unwrap(), "yes");
        assert_eq!(s.expand("${P/a/x}").unwrap(), "x-b-a");
        assert_eq!(s.expand("${P//a/x}").unwrap(), "x-b-x");
        let s2 = scope(&[&[("B", "feature/login/x")]]);
        assert_eq!(s2.expand("${B//\\//-}").unwrap(), "feature-login-x");
        assert_eq!(s.expand("cost $$5 and $ alone").unwrap(), "cost $5 and $ alone");
        assert_eq!(s.expand("${{ env.A }}").unwrap(), "${{ env.A }}");
        assert_eq!(s.expand("${MISSING:-${A}}").unwrap(), "hello");
    }

    #[test]
    fn higher_layers_win_and_nested_references_resolve() {
        let s = scope(&[&[("X", "cli")], &[("X", "job"), ("Y", "$X-$Z")], &[("Z", "global")]]);
        let all = s.resolve_all().unwrap();
        assert_eq!(all["X"], "cli");
        assert_eq!(all["Y"], "cli-global");
    }

    #[test]
    fn self_reference_reads_the_layer_below() {
        let s = scope(&[&[("PATH", "/opt/bin:$PATH")], &[("PATH", "/usr/bin")]]);
        assert_eq!(s.resolve("PATH").unwrap().unwrap(), "/opt/bin:/usr/bin");
    }

    #[test]
    fn all_at_once_resolves_each_name_as_alone() {
        // Names in several layers, a layer that defines one twice (the
        // last wins), self-references through two layers, references up
        // and down the layers.
        let s = scope(&[
            &[("PATH", "/opt/bin:$PATH"), ("X", "top-$Y"), ("X", "top2-$Y")],
            &[("PATH", "/usr/local/bin:${PATH}"), ("Y", "mid-$Z")],
            &[("PATH", "/usr/bin"), ("Z", "low"), ("Y", "shadowed"), ("W", "$X")],
        ]);
        let all = s.resolve_all().unwrap();
        assert_eq!(all.len(), 5);
        for (name, value) in &all {
            assert_eq!(s.resolve(name).unwrap().as_ref(), Some(value), "{name}");
        }
        assert_eq!(all["PATH"], "/opt/bin:/usr/local/bin:/usr/bin");
        assert_eq!(all["W"], "top2-mid-low");
        // A cycle is the same error either way.
        let s = scope(&[&[("A", "$B"), ("B", "${C}")], &[("C", "$A")]]);
        match s.resolve_all() {
            Err((name, VarError::Cycle(path))) => {
                assert_eq!(name, "A");
                assert_eq!(path, ["A", "B", "C", "A"]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn cycles_are_detected_with_their_path() {
        let s = scope(&[&[("A", "$B"), ("B", "${C}"), ("C", "$A")]]);
        match s.resolve("A") {
            Err(VarError::Cycle(path)) => assert_eq!(path, ["A", "B", "C", "A"]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn undefined_without_default_is_an_error() {
        let s = scope(&[&[("A", "$NOPE")]]);
        assert_eq!(s.resolve("A"), Err(VarError::Undefined("NOPE".into())));
        assert!(matches!(s.expand("${A"), Err(VarError::Unclosed(_))));
    }

    #[test]
    fn exponential_growth_is_bounded() {
        let mut layer = vec![("V0".to_string(), "xxxxxxxxxxxxxxxx".to_string())];
        for i in 1..30 {
            layer.push((format!("V{i}"), format!("${{V{}}}${{V{}}}", i - 1, i - 1)));
        }
        let mut s = Scope::new();
        s.push_layer(layer);
        assert_eq!(s.resolve("V29"), Err(VarError::TooLong));
    }

    #[test]
    fn replacement_checks_its_budget_before_allocating() {
        // 1000 x 1000 x 1000 bytes if replaced first and measured after.
        let a = "a".repeat(1000);
        let s = scope(&[&[("A", a.as_str()), ("B", "${A//a/${A}}"), ("C", "${B//a/${B}}")]]);
        assert_eq!(s.resolve("B").map(|v| v.map(|v| v.len())), Ok(Some(1_000_000)));
        assert_eq!(s.resolve("C"), Err(VarError::TooLong));
        assert_eq!(s.expand("${A/a/xy}").map(|v| v.len()), Ok(1001));
    }

    #[test]
    fn many_large_values_are_bounded_in_all() {
        let big = "x".repeat(MAX_LEN - 1);
        let layer: Vec<(String, String)> = (0..40).map(|i| (format!("V{i}"), big.clone())).collect();
        let mut s = Scope::new();
        s.push_layer(layer);
        assert!(matches!(s.resolve_all(), Err((_, VarError::TooMuch))));
    }

    #[test]
    fn references_lists_names() {
        assert_eq!(references("$A ${B:-x} $$C ${{ env.D }}"), ["A", "B"]);
    }
}
