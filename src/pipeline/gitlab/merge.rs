//! GitLab's reuse of configuration: `extends` (several levels, several
//! parents) and `default:`, on the positioned YAML tree, so every merged
//! key still points at the line it was written on.
//!
//! GitLab's rule (the `extends` documentation): mappings are merged key by
//! key, deeply; anything else (a list, a string) is replaced whole by the
//! more specific definition. Parents in a list are merged in order, the
//! later winning, and the job itself wins over all of them.

use std::collections::HashMap;

use crate::pipeline::yaml::{Node, Value};

/// GitLab allows eleven levels of `extends`.
pub const MAX_DEPTH: usize = 11;

/// `over` merged onto `base`: mappings key by key, deeply; otherwise `over`.
pub fn deep_merge(base: &Node, over: &Node) -> Node {
    match (&base.value, &over.value) {
        (Value::Map(b), Value::Map(o)) => {
            let mut entries: Vec<(Node, Node)> = b.clone();
            for (k, v) in o {
                match entries.iter_mut().find(|(bk, _)| bk.same_key(k)) {
                    Some((_, bv)) => *bv = deep_merge(bv, v),
                    None => entries.push((k.clone(), v.clone())),
                }
            }
            Node {
                value: Value::Map(entries),
                ..over.clone()
            }
        }
        _ => over.clone(),
    }
}

/// Why a job's `extends` cannot be resolved.
#[derive(Debug, Clone, PartialEq)]
pub enum ExtendsError {
    /// Names a job that does not exist (at this node).
    Unknown {
        node: Node,
        name: String,
    },
    /// Comes back to a job already on the way (the chain).
    Cycle {
        node: Node,
        chain: Vec<String>,
    },
    TooDeep {
        node: Node,
        chain: Vec<String>,
    },
    /// `extends` is not a name or a list of names.
    NotNames {
        node: Node,
    },
}

/// Every job's `extends` resolved.
pub struct Resolved {
    /// Each job's definition with its `extends` merged in (and removed).
    pub jobs: HashMap<String, Node>,
    /// The problems found on the way, each once.
    pub problems: Vec<ExtendsError>,
    /// Jobs whose chain had a problem (what they lack may be the parent's).
    pub failed: std::collections::HashSet<String>,
}

pub fn resolve_all(jobs: &[(String, Node)]) -> Resolved {
    let by_name: HashMap<&str, &Node> = jobs.iter().map(|(n, v)| (n.as_str(), v)).collect();
    let mut done: HashMap<String, Node> = HashMap::new();
    let mut problems = Vec::new();
    let mut failed = std::collections::HashSet::new();
    for (name, _) in jobs {
        let mut chain = Vec::new();
        resolve(name, &by_name, &mut done, &mut chain, &mut problems, &mut failed);
    }
    Resolved {
        jobs: done,
        problems,
        failed,
    }
}

fn resolve(
    name: &str,
    jobs: &HashMap<&str, &Node>,
    done: &mut HashMap<String, Node>,
    chain: &mut Vec<String>,
    problems: &mut Vec<ExtendsError>,
    failed: &mut std::collections::HashSet<String>,
) -> Option<Node> {
    if let Some(n) = done.get(name) {
        return Some(n.clone());
    }
    let before = problems.len();
    let own = *jobs.get(name)?;
    let Value::Map(entries) = &own.value else {
        return Some(own.clone());
    };
    let Some((_, ext)) = entries.iter().find(|(k, _)| k.as_str() == Some("extends")) else {
        done.insert(name.to_string(), own.clone());
        return Some(own.clone());
    };
    let parents: Vec<(String, Node)> = match &ext.value {
        Value::Str(s) => vec![(s.clone(), ext.clone())],
        Value::Seq(items) if items.iter().all(|i| i.as_str().is_some()) => items
            .iter()
            .map(|i| (i.as_str().unwrap_or_default().to_string(), i.clone()))
            .collect(),
        _ => {
            problems.push(ExtendsError::NotNames { node: ext.clone() });
            Vec::new()
        }
    };
    chain.push(name.to_string());
    let mut merged: Option<Node> = None;
    for (parent, at) in parents {
        if chain.contains(&parent) {
            let mut cycle = chain.clone();
            cycle.push(parent);
            problems.push(ExtendsError::Cycle { node: at, chain: cycle });
            continue;
        }
        if chain.len() > MAX_DEPTH {
            problems.push(ExtendsError::TooDeep {
                node: at,
                chain: chain.clone(),
            });
            continue;
        }
        if !jobs.contains_key(parent.as_str()) {
            problems.push(ExtendsError::Unknown { node: at, name: parent });
            continue;
        }
        if failed.contains(&parent) {
            failed.insert(name.to_string());
        }
        if let Some(p) = resolve(&parent, jobs, done, chain, problems, failed) {
            merged = Some(match merged {
                Some(m) => deep_merge(&m, &p),
                None => p,
            });
        }
    }
    chain.pop();
    let own_without: Node = Node {
        value: Value::Map(
            entries
                .iter()
                .filter(|(k, _)| k.as_str() != Some("extends"))
                .cloned()
                .collect(),
        ),
        ..own.clone()
    };
    let result = match merged {
        Some(m) => deep_merge(&m, &own_without),
        None => own_without,
    };
    if problems.len() > before {
        failed.insert(name.to_string());
    }
    done.insert(name.to_string(), result.clone());
    Some(result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::yaml;

    fn jobs(src: &str) -> Vec<(String, Node)> {
        let root = yaml::parse(src).root.expect("yaml");
        match root.value {
            Value::Map(e) => e.into_iter().map(|(k, v)| (k.key_text(), v)).collect(),
            _ => panic!("a mapping"),
        }
    }

    fn text(n: &Node) -> String {
        match &n.value {
            Value::Map(e) => {
                let inner: Vec<String> = e.iter().map(|(k, v)| format!("{}={}", k.key_text(), text(v))).collect();
                format!("{{{}}}", inner.join(","))
            }
            Value::Seq(s) => format!("[{}]", s.iter().map(text).collect::<Vec<_>>().join(",")),
            _ => n.key_text(),
        }
    }

    #[test]
    fn mappings_merge_deeply_and_the_rest_is_replaced_later_parents_winning() {
        let Resolved {
            jobs: done, problems, ..
        } = resolve_all(&jobs(
            ".base:\n  variables: {A: a, B: b}\n  script: [base]\n  tags: [x]\n.other:\n  variables: {B: other, C: c}\n  tags: [y, z]\njob:\n  extends: [.base, .other]\n  variables: {C: job}\n  script: [own]\n",
        ));
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(
            text(&done["job"]),
            "{variables={A=a,B=other,C=job},script=[own],tags=[y,z]}"
        );
    }

    #[test]
    fn chains_resolve_and_unknown_cyclic_or_too_deep_ones_are_named() {
        let Resolved {
            jobs: done, problems, ..
        } = resolve_all(&jobs(
            ".a:\n  script: [a]\n.b:\n  extends: .a\n  stage: b\nc:\n  extends: .b\n",
        ));
        assert!(problems.is_empty());
        assert_eq!(text(&done["c"]), "{script=[a],stage=b}");
        let r = resolve_all(&jobs(
            "x:\n  extends: .nope\ny:\n  extends: y\nz:\n  extends: {a: 1}\nw:\n  extends: x\n",
        ));
        let problems = r.problems;
        assert!(["x", "y", "w"].iter().all(|j| r.failed.contains(*j)), "{:?}", r.failed);
        assert!(matches!(&problems[0], ExtendsError::Unknown { name, .. } if name == ".nope"));
        assert!(matches!(&problems[1], ExtendsError::Cycle { chain, .. } if chain == &["y", "y"]));
        assert!(matches!(&problems[2], ExtendsError::NotNames { .. }));
        let deep: String = (0..20)
            .map(|i| format!(".j{i}:\n  extends: .j{}\n", i + 1))
            .chain(std::iter::once(".j20:\n  script: [x]\n".to_string()))
            .collect();
        let problems = resolve_all(&jobs(&deep)).problems;
        assert!(
            problems.iter().any(|p| matches!(p, ExtendsError::TooDeep { .. })),
            "{problems:?}"
        );
    }
}
