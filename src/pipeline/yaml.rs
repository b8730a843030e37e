//! A YAML tree that remembers where every node came from.
//!
//! serde_yaml deserializes into types but forgets positions, and a pipeline
//! diagnostic must point at `file:line:col` of the offending node. So we read
//! the event stream of yaml-rust2 and build our own small tree, with the
//! guards a hostile file needs: a depth limit (10,000-deep nesting), a node
//! budget that counts alias expansions (billion laughs), and duplicate-key
//! detection. The builder is iterative, so no input can overflow the stack.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// Deepest nesting accepted. Real pipelines nest fewer than ten levels.
pub const MAX_DEPTH: usize = 128;
/// Most nodes a document may hold, aliases included (a 10,000-job pipeline has ~150,000).
pub const MAX_NODES: usize = 500_000;
/// Most nodes alias expansions may add: real pipelines alias small blocks,
/// an alias bomb multiplies them.
pub const MAX_ALIAS_NODES: usize = 100_000;

/// A position in the source: 1-based line, 1-based column (in characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
    /// Which file of a report the position is in: 0 is the pipeline file,
    /// `n` its `n`-th included file (see `Report::includes`).
    #[serde(skip_serializing_if = "is_main_file")]
    pub file: u16,
}

fn is_main_file(file: &u16) -> bool {
    *file == 0
}

impl Pos {
    /// A position in the pipeline file itself.
    pub const fn at(line: usize, col: usize) -> Pos {
        Pos { line, col, file: 0 }
    }

    fn from_marker(m: &Marker, file: u16) -> Pos {
        Pos {
            line: m.line().max(1),
            col: m.col() + 1,
            file,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
    /// GitLab's `!reference [job, key, ...]`: a list tagged to be replaced
    /// by the node it names (its dialect resolves it; others refuse it).
    Reference(Vec<Node>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub value: Value,
    pub pos: Pos,
    /// Length of the node's text on its first line, for the caret (scalars only; 1 otherwise).
    pub width: usize,
}

impl Node {
    /// The YAML type name, for "expected a string, found a sequence" messages.
    pub fn type_name(&self) -> &'static str {
        match self.value {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
            Value::Reference(_) => "a `!reference`",
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// Whether two mapping keys are the same key (without allocating for
    /// the usual string keys).
    pub fn same_key(&self, other: &Node) -> bool {
        match (&self.value, &other.value) {
            (Value::Str(a), Value::Str(b)) => a == b,
            _ => self.key_text() == other.key_text(),
        }
    }

    /// The key's text when this node is used as a mapping key.
    pub fn key_text(&self) -> String {
        match &self.value {
            Value::Str(s) => s.clone(),
            Value::Null => "null".into(),
            Value::Bool(b) => b.to_string(),
            Value::Int(i) => i.to_string(),
            Value::Float(f) => f.to_string(),
            Value::Seq(_) | Value::Reference(_) => "[...]".into(),
            Value::Map(_) => "{...}".into(),
        }
    }

    /// Nodes in this tree, itself included.
    pub fn size(&self) -> usize {
        match &self.value {
            Value::Seq(items) | Value::Reference(items) => 1 + items.iter().map(Node::size).sum::<usize>(),
            Value::Map(entries) => 1 + entries.iter().map(|(k, v)| k.size() + v.size()).sum::<usize>(),
            _ => 1,
        }
    }
}

/// A problem found while reading the document. The parser stops at a syntax
/// error; duplicate keys are collected and reading goes on.
#[derive(Debug, Clone, PartialEq)]
pub struct YamlProblem {
    pub pos: Pos,
    pub width: usize,
    pub message: String,
    pub hint: Option<String>,
    /// Path of the mapping the problem is in, e.g. `jobs.build`.
    pub path: String,
}

pub struct Parsed {
    /// `None` when the document could not be read at all.
    pub root: Option<Node>,
    /// The document after the first, when [`Options::header`] allows one
    /// (GitLab's `spec:` header, then `---`, then the configuration).
    pub second: Option<Node>,
    pub problems: Vec<YamlProblem>,
}

/// How [`parse_with`] reads a stream.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// The file index every position gets (see [`Pos::file`]).
    pub file: u16,
    /// Accept a second document (the first is then a header).
    pub header: bool,
}

enum Frame {
    Seq {
        items: Vec<Node>,
        pos: Pos,
        anchor: usize,
        /// Tagged `!reference`.
        reference: bool,
    },
    Map {
        entries: Vec<(Node, Node)>,
        pending_key: Option<Node>,
        pos: Option<Pos>,
        /// Where the mapping began (used when it has no keys).
        start: Pos,
        /// Scalar keys seen so far and their entry index, for duplicate detection.
        seen: HashMap<String, usize>,
        anchor: usize,
        merges: Vec<Node>,
    },
}

/// Parses `src` into a positioned tree. Only the first document is read;
/// a second document is reported.
pub fn parse(src: &str) -> Parsed {
    parse_with(src, Options::default())
}

/// [`parse`] with the file index for positions and, when asked, a header
/// document before the configuration.
pub fn parse_with(src: &str, opts: Options) -> Parsed {
    let mut problems = Vec::new();
    let mut parser = Parser::new_from_str(src);
    let mut stack: Vec<Frame> = Vec::new();
    let mut anchors: HashMap<usize, Node> = HashMap::new();
    let mut budget = MAX_NODES;
    let mut alias_budget = MAX_ALIAS_NODES;
    let mut root: Option<Node> = None;
    let mut second: Option<Node> = None;
    let mut docs = 0;
    let max_docs = if opts.header { 2 } else { 1 };

    loop {
        let (event, marker) = match parser.next_token() {
            Ok(ev) => ev,
            Err(e) => {
                let info = e.info();
                let (message, hint) = if info.contains("recursion limit") {
                    (
                        format!("nesting is too deep ({info})"),
                        Some("a pipeline needs only a few levels of nesting".to_string()),
                    )
                } else {
                    (
                        format!("YAML syntax error: {info}"),
                        Some("check indentation and quoting on this line".to_string()),
                    )
                };
                problems.push(YamlProblem {
                    pos: Pos::from_marker(e.marker(), opts.file),
                    width: 1,
                    message,
                    hint,
                    path: String::new(),
                });
                return Parsed {
                    root: None,
                    second: None,
                    problems,
                };
            }
        };
        let pos = Pos::from_marker(&marker, opts.file);
        let finished: Option<(Node, usize)> = match event {
            Event::StreamEnd => break,
            Event::StreamStart | Event::Nothing | Event::DocumentEnd => None,
            Event::DocumentStart => {
                docs += 1;
                if docs > max_docs {
                    let (message, hint) = if opts.header {
                        (
                            "a file holds a `spec:` header and one configuration document; found a third document",
                            "remove the second `---` separator and everything after it",
                        )
                    } else {
                        (
                            "a pipeline file holds one YAML document; found a second",
                            "remove the `---` separator and everything after it",
                        )
                    };
                    problems.push(YamlProblem {
                        pos,
                        width: 3,
                        message: message.into(),
                        hint: Some(hint.into()),
                        path: String::new(),
                    });
                    break;
                }
                None
            }
            Event::Alias(id) => match anchors.get(&id) {
                Some(node) => {
                    let size = node.size();
                    if size > alias_budget {
                        problems.push(YamlProblem {
                            pos,
                            width: 1,
                            message: format!("aliases expand to more than {MAX_ALIAS_NODES} nodes"),
                            hint: Some("aliases (*name) multiply nodes; this looks like an alias bomb".into()),
                            path: String::new(),
                        });
                        return Parsed {
                            root: None,
                            second: None,
                            problems,
                        };
                    }
                    if size > budget {
                        problems.push(too_big(pos));
                        return Parsed {
                            root: None,
                            second: None,
                            problems,
                        };
                    }
                    budget -= size;
                    alias_budget -= size;
                    let mut node = node.clone();
                    node.pos = pos;
                    Some((node, 0))
                }
                None => {
                    problems.push(YamlProblem {
                        pos,
                        width: 1,
                        message: "alias refers to an unknown anchor".into(),
                        hint: Some("define the anchor (&name) before using it (*name)".into()),
                        path: String::new(),
                    });
                    return Parsed {
                        root: None,
                        second: None,
                        problems,
                    };
                }
            },
            Event::Scalar(text, style, anchor, _tag) => {
                if budget == 0 {
                    problems.push(too_big(pos));
                    return Parsed {
                        root: None,
                        second: None,
                        problems,
                    };
                }
                budget -= 1;
                let width = text.lines().next().map_or(1, |l| l.chars().count().max(1));
                let value = if style == TScalarStyle::Plain {
                    plain_scalar(text)
                } else {
                    Value::Str(text)
                };
                Some((Node { value, pos, width }, anchor))
            }
            Event::SequenceStart(anchor, ref tag) | Event::MappingStart(anchor, ref tag) => {
                let reference = tag.as_ref().is_some_and(|t| t.handle == "!" && t.suffix == "reference");
                if stack.len() >= MAX_DEPTH {
                    problems.push(YamlProblem {
                        pos,
                        width: 1,
                        message: format!("nesting is deeper than {MAX_DEPTH} levels"),
                        hint: Some("a pipeline needs only a few levels of nesting".into()),
                        path: String::new(),
                    });
                    return Parsed {
                        root: None,
                        second: None,
                        problems,
                    };
                }
                if budget == 0 {
                    problems.push(too_big(pos));
                    return Parsed {
                        root: None,
                        second: None,
                        problems,
                    };
                }
                budget -= 1;
                if matches!(event, Event::SequenceStart(..)) {
                    stack.push(Frame::Seq {
                        items: Vec::new(),
                        pos,
                        anchor,
                        reference,
                    });
                } else {
                    stack.push(Frame::Map {
                        entries: Vec::new(),
                        pending_key: None,
                        pos: None,
                        start: pos,
                        seen: HashMap::new(),
                        anchor,
                        merges: Vec::new(),
                    });
                }
                None
            }
            Event::SequenceEnd => match stack.pop() {
                Some(Frame::Seq {
                    items,
                    pos,
                    anchor,
                    reference,
                }) => Some((
                    Node {
                        value: if reference {
                            Value::Reference(items)
                        } else {
                            Value::Seq(items)
                        },
                        pos,
                        width: 1,
                    },
                    anchor,
                )),
                _ => None,
            },
            Event::MappingEnd => match stack.pop() {
                Some(Frame::Map {
                    mut entries,
                    pos: map_pos,
                    start,
                    anchor,
                    merges,
                    ..
                }) => {
                    apply_merges(&mut entries, merges);
                    Some((
                        Node {
                            value: Value::Map(entries),
                            pos: map_pos.unwrap_or(start),
                            width: 1,
                        },
                        anchor,
                    ))
                }
                _ => None,
            },
        };

        if let Some((node, anchor)) = finished {
            if anchor != 0 {
                anchors.insert(anchor, node.clone());
            }
            let path = current_path(&stack);
            match stack.last_mut() {
                None => {
                    if root.is_none() {
                        root = Some(node);
                    } else if second.is_none() {
                        second = Some(node);
                    }
                }
                Some(Frame::Seq { items, .. }) => items.push(node),
                Some(Frame::Map {
                    entries,
                    pending_key,
                    pos: map_pos,
                    merges,
                    seen,
                    ..
                }) => match pending_key.take() {
                    None => {
                        if map_pos.is_none() {
                            *map_pos = Some(node.pos);
                        }
                        *pending_key = Some(node);
                    }
                    Some(key) => {
                        if key.as_str() == Some("<<") {
                            match node.value {
                                Value::Seq(items) => merges.extend(items),
                                _ => merges.push(node),
                            }
                        } else if let Some((first, _)) = match &key.value {
                            Value::Seq(_) | Value::Map(_) => entries.iter().find(|(k, _)| k.value == key.value),
                            _ => seen.get(&key.key_text()).map(|&i| &entries[i]),
                        } {
                            problems.push(YamlProblem {
                                pos: key.pos,
                                width: key.width,
                                message: format!("duplicate key `{}`", key.key_text()),
                                hint: Some(format!(
                                    "the key is first defined at line {}; keep one of them",
                                    first.pos.line
                                )),
                                path,
                            });
                        } else {
                            if !matches!(key.value, Value::Seq(_) | Value::Map(_)) {
                                seen.insert(key.key_text(), entries.len());
                            }
                            entries.push((key, node));
                        }
                    }
                },
            }
        }
    }
    Parsed { root, second, problems }
}

/// YAML merge keys (`<<: *defaults`): entries of the merged mappings fill in
/// keys the mapping does not set itself.
fn apply_merges(entries: &mut Vec<(Node, Node)>, merges: Vec<Node>) {
    for merged in merges {
        if let Value::Map(extra) = merged.value {
            for (k, v) in extra {
                if !entries.iter().any(|(e, _)| e.value == k.value) {
                    entries.push((k, v));
                }
            }
        }
    }
}

/// Dotted path of the mapping keys currently open, for duplicate-key messages.
fn current_path(stack: &[Frame]) -> String {
    let mut parts: Vec<String> = Vec::new();
    for frame in stack {
        match frame {
            Frame::Map { pending_key, .. } => {
                if let Some(k) = pending_key {
                    parts.push(k.key_text());
                }
            }
            Frame::Seq { items, .. } => {
                if let Some(last) = parts.last_mut() {
                    last.push_str(&format!("[{}]", items.len()));
                }
            }
        }
    }
    parts.join(".")
}

fn too_big(pos: Pos) -> YamlProblem {
    YamlProblem {
        pos,
        width: 1,
        message: format!("the document has more than {MAX_NODES} YAML nodes"),
        hint: Some("trackside reads pipelines up to that size; split generated pipelines".into()),
        path: String::new(),
    }
}

/// YAML 1.2 core schema resolution for plain scalars.
fn plain_scalar(text: String) -> Value {
    match text.as_str() {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        _ => {}
    }
    let first = text.as_bytes()[0];
    if first.is_ascii_digit() || first == b'-' || first == b'+' || first == b'.' {
        if let Ok(i) = text.parse::<i64>() {
            return Value::Int(i);
        }
        if let Some(hex) = text.strip_prefix("0x")
            && let Ok(i) = i64::from_str_radix(hex, 16)
        {
            return Value::Int(i);
        }
        if text.chars().any(|c| c.is_ascii_digit())
            && let Ok(f) = text.parse::<f64>()
        {
            return Value::Float(f);
        }
    }
    Value::Str(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root(src: &str) -> Node {
        let p = parse(src);
        assert!(p.problems.is_empty(), "{:?}", p.problems);
        p.root.expect("root")
    }

    #[test]
    fn positions_are_one_based() {
        let n = root("a:\n  b: [1, x]\n");
        let Value::Map(top) = &n.value else { panic!("map") };
        assert_eq!(top[0].0.pos, Pos::at(1, 1));
        let Value::Map(inner) = &top[0].1.value else {
            panic!("map")
        };
        assert_eq!(inner[0].0.pos, Pos::at(2, 3));
        let Value::Seq(items) = &inner[0].1.value else {
            panic!("seq")
        };
        assert_eq!(items[1].pos, Pos::at(2, 10));
        assert_eq!(items[0].value, Value::Int(1));
    }

    #[test]
    fn duplicate_keys_are_reported_with_first_line() {
        let p = parse("jobs:\n  a: 1\n  a: 2\n");
        assert_eq!(p.problems.len(), 1);
        assert_eq!(p.problems[0].pos, Pos::at(3, 3));
        assert!(p.problems[0].hint.as_deref().unwrap_or("").contains("line 2"));
        assert_eq!(p.problems[0].path, "jobs.a");
    }

    #[test]
    fn deep_block_nesting_is_refused() {
        let src: String = (0..5000).map(|i| format!("{}k:\n", " ".repeat(i))).collect();
        let p = parse(&src);
        assert!(p.root.is_none());
        assert!(p.problems[0].message.contains("deeper"));
    }

    #[test]
    fn alias_bomb_is_refused() {
        let mut src = String::from("a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n");
        let names = ["b", "c", "d", "e", "f", "g", "h", "i"];
        let mut prev = "a";
        for n in names {
            src.push_str(&format!(
                "{n}: &{n} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"
            ));
            prev = n;
        }
        let p = parse(&src);
        assert!(p.root.is_none());
        assert!(p.problems[0].message.contains("aliases expand"));
    }

    #[test]
    fn merge_keys_fill_missing_entries() {
        let n = root("base: &b {x: 1, y: 2}\nm:\n  <<: *b\n  y: 3\n");
        let Value::Map(top) = &n.value else { panic!("map") };
        let Value::Map(m) = &top[1].1.value else { panic!("map") };
        let get = |k: &str| {
            m.iter()
                .find(|(key, _)| key.as_str() == Some(k))
                .map(|(_, v)| v.value.clone())
        };
        assert_eq!(get("x"), Some(Value::Int(1)));
        assert_eq!(get("y"), Some(Value::Int(3)));
    }

    #[test]
    fn scalars_resolve_like_yaml_core_schema() {
        assert_eq!(plain_scalar("true".into()), Value::Bool(true));
        assert_eq!(plain_scalar("12".into()), Value::Int(12));
        assert_eq!(plain_scalar("1.5".into()), Value::Float(1.5));
        assert_eq!(plain_scalar("~".into()), Value::Null);
        assert_eq!(plain_scalar("1.2.3".into()), Value::Str("1.2.3".into()));
        assert_eq!(plain_scalar("-".into()), Value::Str("-".into()));
    }
}
