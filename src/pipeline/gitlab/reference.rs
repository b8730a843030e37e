//! `!reference [job, key, ...]`: a node replaced by the one the path names
//! in the configuration (after includes are merged, before `extends`, as
//! GitLab resolves it). A referenced node may hold references itself, up to
//! GitLab's 10 levels. In a list, a referenced list is kept as one item,
//! and the script readers flatten it, as GitLab does.

use super::{Gitlab, get};
use crate::pipeline::diag::suggestion_hint;
use crate::pipeline::yaml::{Node, Value};

/// GitLab resolves nested `!reference` tags up to 10 levels.
pub const MAX_DEPTH: usize = 10;

/// Most nodes references may copy in one file: references that fan out
/// (a list of references to a list of references ...) stop here.
pub const MAX_COPIED: usize = crate::pipeline::yaml::MAX_NODES;

/// What resolving references keeps across one file: each path resolved
/// once, and the nodes copied so far.
#[derive(Default)]
pub(super) struct Resolving {
    done: std::collections::HashMap<Vec<String>, Node>,
    copied: usize,
    /// The budget ran out (said once).
    exhausted: bool,
}

impl Gitlab<'_, '_> {
    /// `node` with every `!reference` in it resolved against `root`; an
    /// unresolvable one is reported and becomes an empty list.
    pub(super) fn resolve_references(&mut self, node: &Node, root: &Node, depth: usize) -> Node {
        let mut state = Resolving::default();
        self.resolve_in(node, root, depth, &mut state)
    }

    fn resolve_in(&mut self, node: &Node, root: &Node, depth: usize, st: &mut Resolving) -> Node {
        let value = match &node.value {
            Value::Reference(path) => return self.reference(node, path, root, depth, st),
            Value::Seq(items) => Value::Seq(items.iter().map(|n| self.resolve_in(n, root, depth, st)).collect()),
            Value::Map(entries) => Value::Map(
                entries
                    .iter()
                    .map(|(k, v)| (k.clone(), self.resolve_in(v, root, depth, st)))
                    .collect(),
            ),
            _ => return node.clone(),
        };
        Node { value, ..node.clone() }
    }

    fn reference(&mut self, node: &Node, path: &[Node], root: &Node, depth: usize, st: &mut Resolving) -> Node {
        // What a reference that cannot be resolved leaves: an empty list,
        // so only the reference itself is reported.
        let null = Node {
            value: Value::Seq(Vec::new()),
            ..node.clone()
        };
        if depth >= MAX_DEPTH {
            self.cx.err(
                node,
                "",
                format!("`!reference` tags nest deeper than GitLab's {MAX_DEPTH} levels"),
                "a reference leads back to itself? reference the content directly",
            );
            return null;
        }
        let names: Vec<Option<&str>> = path.iter().map(Node::as_str).collect();
        if path.len() < 2 || names.iter().any(Option::is_none) {
            self.cx.err(
                node,
                "",
                "`!reference` takes a job and at least one key: `!reference [.setup, script]`",
                "write the job's name, then the keys down to the node to reuse",
            );
            return null;
        }
        let key: Vec<String> = names.iter().flatten().map(|s| s.to_string()).collect();
        if let Some(done) = st.done.get(&key) {
            return self.charge(done.clone(), node, st);
        }
        let mut at = root;
        for (i, (name, n)) in names.iter().flatten().zip(path).enumerate() {
            match get(at, name) {
                Some(next) => at = next,
                None => {
                    let (what, candidates): (String, Vec<String>) = if i == 0 {
                        ("job".into(), keys_of(root))
                    } else {
                        (
                            format!(
                                "key in `{}`",
                                names[..i].iter().flatten().copied().collect::<Vec<_>>().join(".")
                            ),
                            keys_of(at),
                        )
                    };
                    let list: Vec<&str> = candidates.iter().map(String::as_str).collect();
                    self.cx.err(
                        n,
                        "",
                        format!("`!reference` names `{name}`, which is no {what}"),
                        if list.is_empty() {
                            "check the path; a reference names a job, then keys inside it".to_string()
                        } else {
                            suggestion_hint(name, &list, "names here")
                        },
                    );
                    return null;
                }
            }
        }
        let resolved = self.resolve_in(at, root, depth + 1, st);
        st.done.insert(key, resolved.clone());
        self.charge(resolved, node, st)
    }

    /// Counts a copy against the file's budget: past it, an empty list and
    /// one error.
    fn charge(&mut self, copy: Node, at: &Node, st: &mut Resolving) -> Node {
        st.copied = st.copied.saturating_add(copy.size());
        if st.copied <= MAX_COPIED {
            return copy;
        }
        if !st.exhausted {
            st.exhausted = true;
            self.cx.err(
                at,
                "",
                format!("`!reference` tags copy more than {MAX_COPIED} YAML nodes"),
                "references that fan out multiply what they copy; reference smaller parts",
            );
        }
        Node {
            value: Value::Seq(Vec::new()),
            ..at.clone()
        }
    }
}

fn keys_of(node: &Node) -> Vec<String> {
    match &node.value {
        Value::Map(entries) => entries.iter().map(|(k, _)| k.key_text()).collect(),
        _ => Vec::new(),
    }
}
