//! The failure knowledge base: rules (data, in `assets/failure-rules.yml`)
//! that tell from how a step ended and what it printed why it failed, and
//! what to do about it.
//!
//! A [`Scan`] follows one step's output line by line, remembering for each
//! rule pattern the line it matched (the first, or the last for rules that
//! read the tail), in memory bounded by the number of patterns. When the
//! step ends, [`Scan::finish`] picks the best rule whose conditions all
//! hold (highest priority, then file order) and renders its hint with what
//! the patterns captured. No I/O: the runner feeds lines, the rules come
//! compiled into the binary.
//!
//! Compiling the built-in rules takes tens of milliseconds of CPU, longer
//! than a trivial job, and a run whose steps pass never needs them. So a
//! scan from [`Scan::builtin`] keeps the lines it is given (bounded) until
//! the rules are ready instead of waiting for them; they are compiled when
//! a step fails, or, on a thread of their own ([`prepare_builtin`]), once a
//! step has printed enough that keeping its lines would cost more. A pattern's own regex, for
//! the captures of a hint, is compiled only when a rule with it has won.

use std::collections::HashSet;
use std::sync::OnceLock;

use regex::bytes::{Regex, RegexSet, RegexSetBuilder};
use serde::Deserialize;

use crate::protocol::{Diagnosis, FailureClass};

const RULES_YAML: &str = include_str!("../../assets/failure-rules.yml");

/// Lines longer than this are matched on their first `MAX_LINE` bytes.
const MAX_LINE: usize = 4096;
/// A remembered line is kept to this many bytes.
const MAX_KEPT: usize = 512;
/// Default and largest `lines` of a `scan: tail` rule.
const DEFAULT_TAIL: usize = 200;
const MAX_TAIL: usize = 100_000;

/// How a step ended, as far as rules can tell apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Signal {
    /// An OOM kill: Docker's OOMKilled, exit 137 or a SIGKILL trackside did not send.
    Oom,
    /// A step or job deadline.
    Timeout,
    /// SIGSEGV or exit 139.
    Segfault,
    /// SIGABRT or exit 134.
    Abort,
    /// Another signal.
    Killed,
    /// The step, its container or its services could not start.
    SpawnFailed,
}

/// What a finished step's end says, for the rules' `signal` and `exit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Ending {
    pub signal: Option<Signal>,
    pub exit_code: Option<i32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Scope {
    #[default]
    All,
    Stderr,
    Tail,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    rules: Vec<RuleDef>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleDef {
    id: String,
    title: String,
    class: FailureClass,
    #[serde(default)]
    signal: Option<Signal>,
    #[serde(default)]
    exit: Vec<i32>,
    #[serde(default)]
    patterns: Vec<String>,
    #[serde(default)]
    scan: Scope,
    #[serde(default)]
    lines: Option<usize>,
    priority: i32,
    retryable: bool,
    hint: String,
    runbook: String,
    /// What outside the run the failure is on, tried in order: the first
    /// whose placeholders captured something (`['{host}', 'the Docker
    /// daemon']`). Its circuit breaker counts the failure.
    #[serde(default)]
    dependency: Vec<String>,
}

/// A rules file that cannot be used, and where.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("the rules file is not valid YAML of the expected shape: {0}")]
    Yaml(#[from] serde_yaml::Error),
    #[error("rule `{rule}`: pattern {index}: {source}")]
    Pattern {
        rule: String,
        index: usize,
        source: Box<regex_syntax::Error>,
    },
    #[error("the rules' patterns cannot be compiled together: {0}")]
    Set(#[from] regex::Error),
    #[error("rule `{rule}`: {what}")]
    Invalid { rule: String, what: String },
    #[error("the rule id `{0}` is used twice")]
    Duplicate(String),
}

/// One rule, compiled.
#[derive(Debug)]
pub struct Rule {
    pub id: String,
    pub title: String,
    pub class: FailureClass,
    pub signal: Option<Signal>,
    pub exit: Vec<i32>,
    pub priority: i32,
    pub retryable: bool,
    pub hint: String,
    pub runbook: String,
    /// Templates naming the dependency the failure is on (see the rules
    /// file); empty for a failure of the job's own.
    pub dependency: Vec<String>,
    scope: Scope,
    tail: usize,
    /// Indices into the knowledge base's patterns.
    patterns: Vec<usize>,
}

impl Rule {
    /// Whether the rule names this signal-free exit or end at all.
    fn ending_holds(&self, end: &Ending) -> bool {
        (self.signal.is_none() || self.signal == end.signal)
            && (self.exit.is_empty() || end.exit_code.is_some_and(|c| self.exit.contains(&c)))
    }
}

/// The compiled rules.
#[derive(Debug)]
pub struct KnowledgeBase {
    /// Highest priority first; equal priorities keep the file's order.
    rules: Vec<Rule>,
    set: RegexSet,
    /// Per pattern, for its captures once a rule has won.
    regexes: Vec<Pattern>,
    /// Per pattern: the scope of the rule it belongs to.
    scopes: Vec<Scope>,
}

impl KnowledgeBase {
    pub fn from_yaml(text: &str) -> Result<KnowledgeBase, RulesError> {
        let file: RuleFile = serde_yaml::from_str(text)?;
        let mut seen = HashSet::new();
        let mut rules = Vec::with_capacity(file.rules.len());
        let mut sources = Vec::new();
        let mut regexes = Vec::new();
        let mut scopes = Vec::new();
        for def in file.rules {
            let invalid = |what: String| RulesError::Invalid {
                rule: def.id.clone(),
                what,
            };
            if !seen.insert(def.id.clone()) {
                return Err(RulesError::Duplicate(def.id));
            }
            if def.id.is_empty()
                || !def
                    .id
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            {
                return Err(invalid("an id is lower-case letters, digits and '-'".into()));
            }
            if def.signal.is_none() && def.patterns.is_empty() && def.exit.is_empty() {
                return Err(invalid("a rule needs a signal, an exit code or a pattern".into()));
            }
            if def.lines.is_some() && def.scan != Scope::Tail {
                return Err(invalid("`lines` goes with `scan: tail`".into()));
            }
            let tail = def.lines.unwrap_or(DEFAULT_TAIL);
            if tail == 0 || tail > MAX_TAIL {
                return Err(invalid(format!("`lines` must be between 1 and {MAX_TAIL}")));
            }
            let mut groups = HashSet::new();
            let mut indices = Vec::new();
            for (index, p) in def.patterns.iter().enumerate() {
                // Checked here; the scan uses the set, and a diagnosis the
                // pattern's own regex, compiled when it is first needed.
                let hir = regex_syntax::ParserBuilder::new()
                    .case_insensitive(true)
                    .unicode(false)
                    .utf8(false)
                    .build()
                    .parse(p)
                    .map_err(|source| RulesError::Pattern {
                        rule: def.id.clone(),
                        index: index + 1,
                        source: Box::new(source),
                    })?;
                capture_names(&hir, &mut groups);
                indices.push(sources.len());
                sources.push(p.clone());
                regexes.push(Pattern {
                    source: p.clone(),
                    compiled: OnceLock::new(),
                });
                scopes.push(def.scan);
            }
            let named = std::iter::once(&def.hint).chain(&def.dependency);
            for name in named.flat_map(|t| placeholders(t)).flat_map(|p| p.split('|')) {
                if !groups.contains(name) {
                    return Err(invalid(format!(
                        "the hint names {{{name}}} but no pattern has a group (?P<{name}>...)"
                    )));
                }
            }
            rules.push(Rule {
                id: def.id,
                title: def.title,
                class: def.class,
                signal: def.signal,
                exit: def.exit,
                priority: def.priority,
                retryable: def.retryable,
                hint: def.hint,
                runbook: def.runbook,
                dependency: def.dependency,
                scope: def.scan,
                tail,
                patterns: indices,
            });
        }
        // Stable: equal priorities keep the file's order.
        rules.sort_by_key(|r| std::cmp::Reverse(r.priority));
        let build = |p: &[String]| {
            RegexSetBuilder::new(p)
                .case_insensitive(true)
                .unicode(false)
                .size_limit(1 << 24)
                .dfa_size_limit(1 << 24)
                .build()
        };
        let set = build(&sources)?;
        Ok(KnowledgeBase {
            rules,
            set,
            regexes,
            scopes,
        })
    }

    /// The rules compiled into trackside, compiled on first use (or by
    /// [`prepare_builtin`]); a call while another thread compiles them
    /// waits for it. A unit test checks they load, so the empty fallback
    /// only guards against a bad edit crashing a run.
    pub fn builtin() -> &'static KnowledgeBase {
        BUILTIN.get_or_init(compile_builtin)
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn rule(&self, id: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.id == id)
    }

    pub fn scan(&self) -> Scan<'_> {
        Scan {
            kb: Some(self),
            from: None,
            lines: 0,
            hits: vec![None; self.regexes.len()],
            pending: Vec::new(),
            pending_bytes: 0,
        }
    }

    /// The diagnosis of a failure told by one message (an attempt that
    /// could not start: its reason is the only line there is).
    pub fn diagnose_message(&self, message: &str, end: &Ending) -> Option<Diagnosis> {
        let mut scan = self.scan();
        for line in message.lines() {
            scan.line(line, true);
        }
        scan.finish(end)
    }

    /// The diagnosis of a failure whose class was decided without the
    /// rules (trackside's own deadline, an attempt that could not start):
    /// the rule for the signal that class means, read with its reason.
    /// `None` when no rule gives that class.
    pub fn for_class(&self, class: FailureClass, exit_code: Option<i32>, message: &str) -> Option<Diagnosis> {
        let end = Ending {
            signal: signal_of_class(class),
            exit_code,
        };
        self.diagnose_message(message, &end).filter(|d| d.class == class)
    }
}

impl KnowledgeBase {
    /// The hint of rule `rule` filled in from `lines`: the matched lines
    /// once they are masked. A value captured from the raw output could
    /// hold part of a secret the masker no longer recognises (a token cut
    /// at a `+` or `/`); one captured from the masked lines cannot.
    pub fn hint_from(&self, rule: &str, lines: &[String]) -> Option<String> {
        let (rule, captures) = self.captures_in(rule, lines)?;
        Some(render(&rule.hint, |name| captured(&captures, name)))
    }

    /// The dependency of rule `rule`'s failure, read from `lines` (the
    /// masked ones, as [`Self::hint_from`]).
    pub fn dependency_from(&self, rule: &str, lines: &[String]) -> Option<String> {
        let (rule, captures) = self.captures_in(rule, lines)?;
        dependency(rule, |name| captured(&captures, name))
    }

    /// Rule `rule` and what its patterns capture in `lines`.
    fn captures_in<'a>(&self, rule: &str, lines: &'a [String]) -> Option<(&Rule, Vec<regex::bytes::Captures<'a>>)> {
        let rule = self.rule(rule)?;
        let captures = rule
            .patterns
            .iter()
            .filter_map(|&p| {
                let re = self.regexes[p].regex()?;
                lines.iter().find_map(|l| re.captures(l.as_bytes()))
            })
            .collect();
        Some((rule, captures))
    }
}

/// The first of a rule's dependency templates whose placeholders all
/// captured, as a host (`db:5432`, `registry.local`) where it names one:
/// a URL's scheme, login and path are dropped, curl's `db port 5432` is
/// `db:5432`.
fn dependency(rule: &Rule, value: impl Fn(&str) -> Option<String>) -> Option<String> {
    rule.dependency.iter().find_map(|t| {
        let names = placeholders(t);
        if !names.iter().all(|n| n.split('|').any(|a| value(a).is_some())) {
            return None;
        }
        let text = render(t, &value);
        let host = text.split_once("://").map_or(text.as_str(), |(_, rest)| rest);
        let host = host.split('/').next().unwrap_or(host);
        let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
        let host = host.trim_matches(|c| c == '"' || c == '\'').replace(" port ", ":");
        (!host.is_empty()).then_some(host)
    })
}

/// The `{a|b}` placeholders of a hint, without braces.
fn placeholders(hint: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = hint;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        match after.find('}') {
            Some(close) => {
                let name = &after[..close];
                if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '|') {
                    out.push(name);
                }
                rest = &after[close + 1..];
            }
            None => break,
        }
    }
    out
}

#[derive(Debug, Clone)]
struct Hit {
    line: u64,
    text: String,
}

static BUILTIN: OnceLock<KnowledgeBase> = OnceLock::new();

fn compile_builtin() -> KnowledgeBase {
    KnowledgeBase::from_yaml(RULES_YAML).unwrap_or_else(|e| {
        tracing::error!("assets/failure-rules.yml is invalid: {e}");
        KnowledgeBase {
            rules: Vec::new(),
            set: RegexSet::empty(),
            regexes: Vec::new(),
            scopes: Vec::new(),
        }
    })
}

/// Starts compiling the built-in rules on a thread of its own (once per
/// process), so that the scans keeping lines meanwhile get them soon.
pub fn prepare_builtin() {
    static STARTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if BUILTIN.get().is_none() && !STARTED.swap(true, std::sync::atomic::Ordering::Relaxed) {
        let _ = std::thread::Builder::new().name("trackside-rules".into()).spawn(|| {
            KnowledgeBase::builtin();
        });
    }
}

/// Whether the built-in rules are compiled (a [`Scan::builtin`] then never
/// waits).
pub fn builtin_ready() -> bool {
    BUILTIN.get().is_some()
}

/// Lines a [`Scan::builtin`] keeps while the rules are not compiled; past
/// it (or when it finishes) the scan waits for them.
const MAX_PENDING_BYTES: usize = 64 << 10;
const MAX_PENDING_LINES: usize = 1_000;
/// Past this, the rules should be compiled soon: see [`Scan::wants_rules`].
const PREPARE_PENDING_BYTES: usize = 8 << 10;
const PREPARE_PENDING_LINES: usize = 100;

/// A rule pattern's source and, once a diagnosis needed its captures, its
/// regex.
#[derive(Debug)]
struct Pattern {
    source: String,
    compiled: OnceLock<Option<Regex>>,
}

impl Pattern {
    /// The pattern's regex; `None` if it cannot be compiled on its own (it
    /// parsed, so only a size limit can refuse it: no captures then).
    fn regex(&self) -> Option<&Regex> {
        self.compiled
            .get_or_init(|| {
                regex::bytes::RegexBuilder::new(&self.source)
                    .case_insensitive(true)
                    .unicode(false)
                    .size_limit(1 << 24)
                    .build()
                    .ok()
            })
            .as_ref()
    }
}

/// The text the first of `captures` with a group `name` caught.
fn captured(captures: &[regex::bytes::Captures<'_>], name: &str) -> Option<String> {
    captures
        .iter()
        .find_map(|c| c.name(name))
        .map(|m| String::from_utf8_lossy(m.as_bytes()).into_owned())
}

/// Adds the names of `hir`'s capture groups to `names`.
fn capture_names(hir: &regex_syntax::hir::Hir, names: &mut HashSet<String>) {
    use regex_syntax::hir::HirKind;
    match hir.kind() {
        HirKind::Capture(c) => {
            if let Some(n) = &c.name {
                names.insert(n.to_string());
            }
            capture_names(&c.sub, names);
        }
        HirKind::Repetition(r) => capture_names(&r.sub, names),
        HirKind::Concat(subs) | HirKind::Alternation(subs) => {
            for s in subs {
                capture_names(s, names);
            }
        }
        HirKind::Empty | HirKind::Literal(_) | HirKind::Class(_) | HirKind::Look(_) => {}
    }
}

/// One step's output, followed line by line.
pub struct Scan<'k> {
    /// `None` until the rules are ready (see [`Scan::builtin`]).
    kb: Option<&'k KnowledgeBase>,
    /// Where the rules will be once they are compiled.
    from: Option<&'k OnceLock<KnowledgeBase>>,
    lines: u64,
    /// Per pattern: the line it matched (first, or last for tail scopes).
    hits: Vec<Option<Hit>>,
    /// Lines (number, text cut to `MAX_LINE`, from stderr) given before
    /// the rules were ready.
    pending: Vec<(u64, String, bool)>,
    pending_bytes: usize,
}

fn cut(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

impl Scan<'static> {
    /// A scan with the built-in rules that does not wait for them to be
    /// compiled: until they are, it keeps the lines it is given (at most
    /// `MAX_PENDING_LINES`, or `MAX_PENDING_BYTES`, after which it waits).
    pub fn builtin() -> Scan<'static> {
        Scan::lazy(&BUILTIN)
    }
}

impl<'k> Scan<'k> {
    /// A scan with the rules `from` holds once they are compiled (the
    /// built-in rules when it is still empty and one must wait).
    fn lazy(from: &'k OnceLock<KnowledgeBase>) -> Scan<'k> {
        let kb = from.get();
        Scan {
            kb,
            from: Some(from),
            lines: 0,
            hits: vec![None; kb.map_or(0, |k| k.regexes.len())],
            pending: Vec::new(),
            pending_bytes: 0,
        }
    }

    /// Whether the next line could make this scan wait for the rules: an
    /// async caller waits for [`KnowledgeBase::builtin`] on a blocking
    /// thread first.
    pub fn would_wait(&self) -> bool {
        self.kb.is_none()
            && self.from.is_some_and(|f| f.get().is_none())
            && (self.pending.len() >= MAX_PENDING_LINES || self.pending_bytes >= MAX_PENDING_BYTES)
    }

    /// Whether this scan keeps enough lines that the rules should be
    /// compiled now ([`prepare_builtin`]) rather than when a step fails.
    pub fn wants_rules(&self) -> bool {
        self.kb.is_none()
            && self.from.is_some_and(|f| f.get().is_none())
            && (self.pending.len() >= PREPARE_PENDING_LINES || self.pending_bytes >= PREPARE_PENDING_BYTES)
    }

    /// The rules, once ready: what was kept meanwhile is matched first.
    /// `wait`: compile them (or wait for the thread that does) if need be.
    fn rules(&mut self, wait: bool) -> Option<&'k KnowledgeBase> {
        if let Some(kb) = self.kb {
            return Some(kb);
        }
        let from = self.from?;
        let kb: &'k KnowledgeBase = match from.get() {
            Some(kb) => kb,
            None if wait => from.get_or_init(compile_builtin),
            None => return None,
        };
        self.kb = Some(kb);
        self.hits = vec![None; kb.regexes.len()];
        for (n, text, stderr) in std::mem::take(&mut self.pending) {
            self.matched(kb, n, &text, stderr);
        }
        self.pending_bytes = 0;
        Some(kb)
    }

    /// One line of the step's output (`stderr`: it came on standard error).
    pub fn line(&mut self, text: &str, stderr: bool) {
        self.lines += 1;
        let text = cut(text, MAX_LINE);
        let wait = self.pending.len() >= MAX_PENDING_LINES || self.pending_bytes >= MAX_PENDING_BYTES;
        match self.rules(wait) {
            Some(kb) => self.matched(kb, self.lines, text, stderr),
            None => {
                self.pending_bytes += text.len();
                self.pending.push((self.lines, text.to_string(), stderr));
            }
        }
    }

    /// Remembers what line `n` matched.
    fn matched(&mut self, kb: &KnowledgeBase, n: u64, text: &str, stderr: bool) {
        if kb.regexes.is_empty() {
            return;
        }
        for i in kb.set.matches(text.as_bytes()).iter() {
            let scope = kb.scopes[i];
            if scope == Scope::Stderr && !stderr {
                continue;
            }
            let hit = &mut self.hits[i];
            if hit.is_none() || scope == Scope::Tail {
                *hit = Some(Hit {
                    line: n,
                    text: cut(text, MAX_KEPT).to_string(),
                });
            }
        }
    }

    /// The best rule for a step that ended so, with what it matched. A
    /// built-in scan waits for the rules here if they are not ready.
    pub fn finish(&mut self, end: &Ending) -> Option<Diagnosis> {
        let kb = self.rules(true)?;
        let rule = kb.rules.iter().find(|r| {
            r.ending_holds(end)
                && r.patterns.iter().all(|&p| {
                    self.hits[p]
                        .as_ref()
                        .is_some_and(|h| r.scope != Scope::Tail || h.line + r.tail as u64 > self.lines)
                })
        })?;
        let mut matched: Vec<&Hit> = rule.patterns.iter().filter_map(|&p| self.hits[p].as_ref()).collect();
        matched.sort_by_key(|h| h.line);
        matched.dedup_by_key(|h| h.line);
        let captures: Vec<regex::bytes::Captures<'_>> = rule
            .patterns
            .iter()
            .filter_map(|&p| kb.regexes[p].regex()?.captures(self.hits[p].as_ref()?.text.as_bytes()))
            .collect();
        let hint = render(&rule.hint, |name| captured(&captures, name));
        Some(Diagnosis {
            rule: rule.id.clone(),
            title: rule.title.clone(),
            class: rule.class,
            hint,
            runbook: rule.runbook.clone(),
            retryable: rule.retryable,
            lines: matched.into_iter().map(|h| h.text.clone()).collect(),
            dependency: dependency(rule, |name| captured(&captures, name)),
        })
    }
}

/// A hint with `{a|b}` replaced by the first of the groups that captured;
/// one that captured nothing leaves no trace (nor an empty "()" around it).
fn render(hint: &str, value: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(hint.len());
    let mut rest = hint;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else {
            out.push_str(&rest[open..]);
            rest = "";
            break;
        };
        let name = &after[..close];
        match name.split('|').find_map(&value) {
            Some(v) => out.push_str(v.trim()),
            None if placeholders(&rest[open..open + close + 2]).is_empty() => {
                out.push_str(&rest[open..open + close + 2])
            }
            None => {}
        }
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    let out = out.replace(" ()", "").replace("()", "").replace("``", "");
    out.split(' ').filter(|w| !w.is_empty()).collect::<Vec<_>>().join(" ")
}

/// The rules' view of a failed class decided without them (trackside's own
/// deadline, an attempt that could not start): the signal that class means.
fn signal_of_class(class: FailureClass) -> Option<Signal> {
    match class {
        FailureClass::Timeout => Some(Signal::Timeout),
        FailureClass::Oom => Some(Signal::Oom),
        FailureClass::Infra => Some(Signal::SpawnFailed),
        FailureClass::Signal => Some(Signal::Killed),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kb(yaml: &str) -> KnowledgeBase {
        match KnowledgeBase::from_yaml(yaml) {
            Ok(kb) => kb,
            Err(e) => panic!("{e}"),
        }
    }

    const TWO: &str = r#"
rules:
  - id: low
    title: low
    class: network
    patterns: ['(at (?P<addr>\S+) )?refused( port (?P<port>\d+))?']
    priority: 1
    retryable: true
    hint: 'refused at {addr|port}'
    runbook: docs/runbooks/network.md#low
  - id: both
    title: both
    class: script
    patterns: ['(?P<addr>\d+\.\d+\.\d+\.\d+) refused', 'giving up']
    priority: 5
    retryable: false
    hint: 'refused at {addr}, then gave up'
    runbook: docs/runbooks/network.md#both
  - id: tail
    title: tail
    class: script
    patterns: ['summary: (?P<n>\d+) failed( at (?P<at>\w+))?']
    scan: tail
    lines: 2
    priority: 9
    retryable: false
    hint: '{n} failed ({at})'
    runbook: x.md#tail
  - id: err
    title: err
    class: script
    patterns: ['only-on-stderr']
    scan: stderr
    priority: 9
    retryable: false
    hint: on stderr
    runbook: x.md#err
  - id: oom
    title: oom
    class: oom
    signal: oom
    priority: 100
    retryable: true
    hint: killed
    runbook: x.md#oom
"#;

    #[test]
    fn every_pattern_of_a_rule_must_appear_and_priority_decides() {
        let kb = kb(TWO);
        let end = Ending {
            signal: None,
            exit_code: Some(1),
        };
        let mut s = kb.scan();
        s.line("connect 10.0.0.1 refused", false);
        let d = s.finish(&end).expect("low matches");
        assert_eq!((d.rule.as_str(), d.hint.as_str()), ("low", "refused at"));
        s.line("giving up", true);
        let d = s.finish(&end).expect("both match");
        assert_eq!(d.rule, "both");
        assert_eq!(d.hint, "refused at 10.0.0.1, then gave up");
        assert_eq!(d.lines, ["connect 10.0.0.1 refused", "giving up"]);
        assert_eq!(d.class, FailureClass::Script);
        assert!(!d.retryable);
        // A structured signal outranks the patterns.
        let d = s
            .finish(&Ending {
                signal: Some(Signal::Oom),
                exit_code: Some(137),
            })
            .expect("oom");
        assert_eq!(d.rule, "oom");
        assert!(d.lines.is_empty());
    }

    #[test]
    fn tail_and_stderr_scopes_limit_what_is_read() {
        let kb = kb(TWO);
        let end = Ending::default();
        let mut s = kb.scan();
        s.line("only-on-stderr", false);
        assert!(s.finish(&end).is_none(), "stdout is not read by a stderr rule");
        s.line("only-on-stderr", true);
        assert_eq!(s.finish(&end).map(|d| d.rule), Some("err".into()));
        let mut s = kb.scan();
        s.line("summary: 3 failed", false);
        assert_eq!(
            s.finish(&end).map(|d| d.hint),
            Some("3 failed".into()),
            "empty () dropped"
        );
        s.line("a", false);
        s.line("b", false);
        assert!(s.finish(&end).is_none(), "the match left the last 2 lines");
        s.line("summary: 4 failed", false);
        assert_eq!(
            s.finish(&end).map(|d| d.hint),
            Some("4 failed".into()),
            "the last match counts"
        );
    }

    #[test]
    fn bad_rules_are_refused_with_where() {
        let bad_pattern = TWO.replace("['(at (?P<addr>", "['((at (?P<addr>");
        let e = KnowledgeBase::from_yaml(&bad_pattern)
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(e.contains("rule `low`: pattern 1"), "{e}");
        let bad_hint = TWO.replace("'refused at {addr}, then", "'refused at {nope}, then");
        let e = KnowledgeBase::from_yaml(&bad_hint).map(|_| ()).unwrap_err().to_string();
        assert!(e.contains("rule `both`") && e.contains("{nope}"), "{e}");
        let twice = TWO.replace("id: err", "id: tail");
        let e = KnowledgeBase::from_yaml(&twice).map(|_| ()).unwrap_err().to_string();
        assert!(e.contains("`tail` is used twice"), "{e}");
        let unknown = TWO.replace(
            "    retryable: true\n    hint: killed",
            "    retryable: true\n    colour: red\n    hint: killed",
        );
        assert!(KnowledgeBase::from_yaml(&unknown).is_err());
    }

    #[test]
    fn long_lines_are_bounded() {
        let kb = kb(TWO);
        let mut s = kb.scan();
        let long = format!("{}é refused", "x".repeat(10_000));
        s.line(&long, true);
        assert!(
            s.finish(&Ending::default()).is_none(),
            "matched only within the first 4 KiB"
        );
        let long = format!("refused {}é", "x".repeat(10_000));
        s.line(&long, true);
        let d = s.finish(&Ending::default()).expect("matches at the start");
        assert!(d.lines[0].len() <= MAX_KEPT);
    }

    #[test]
    fn a_hint_is_filled_in_from_the_masked_lines() {
        let kb = KnowledgeBase::builtin();
        // A token with a `+`: the raw capture would be the part after it.
        let mut scan = kb.scan();
        scan.line("/usr/bin/sh: 1: xK9+q7ZrT2mWvB4n: not found", true);
        let raw = scan.finish(&Ending {
            signal: None,
            exit_code: Some(127),
        });
        let d = raw.expect("command-not-found");
        assert_eq!(d.rule, "command-not-found");
        assert!(d.hint.contains("q7ZrT2mWvB4n"), "the raw capture: {}", d.hint);
        let masked = vec!["/usr/bin/sh: 1: [MASKED]: not found".to_string()];
        let hint = kb.hint_from(&d.rule, &masked).expect("the rule");
        assert!(!hint.contains("q7Zr") && !hint.contains("()"), "{hint}");
        assert!(
            hint.starts_with("a command is not installed where the step runs"),
            "{hint}"
        );
    }

    #[test]
    fn a_failure_on_something_outside_the_run_names_it_as_a_host() {
        let kb = KnowledgeBase::builtin();
        let end = Ending {
            signal: None,
            exit_code: Some(1),
        };
        let dep = |line: &str| kb.diagnose_message(line, &end).and_then(|d| d.dependency);
        assert_eq!(
            dep("curl: (7) Failed to connect to db port 5432 after 0 ms: Connection refused").as_deref(),
            Some("db:5432")
        );
        assert_eq!(
            dep("dial tcp 10.0.0.5:443: connect: connection refused").as_deref(),
            Some("10.0.0.5:443")
        );
        assert_eq!(
            dep("fatal: unable to access 'https://ci:t0ken@git.example.com/shop.git/': Could not resolve host")
                .as_deref(),
            Some("git.example.com"),
            "the login is no part of it"
        );
        assert_eq!(
            dep("Get \"https://registry.local:5000/v2/\": dial tcp 127.0.0.1:5000: connect: connection refused")
                .as_deref(),
            Some("registry.local:5000")
        );
        assert_eq!(
            dep("Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?")
                .as_deref(),
            Some("the Docker daemon")
        );
        // Refused, but no host said: nothing to hold jobs for.
        assert_eq!(dep("psql: error: Connection refused"), None);
        assert_eq!(dep("error[E0308]: mismatched types"), None);
        // Read again from the masked lines, it is the same.
        let d = kb
            .diagnose_message("dial tcp 10.0.0.5:443: connect: connection refused", &end)
            .expect("a diagnosis");
        assert_eq!(kb.dependency_from(&d.rule, &d.lines).as_deref(), Some("10.0.0.5:443"));
    }

    #[test]
    fn the_builtin_rules_load() {
        let kb = match KnowledgeBase::from_yaml(RULES_YAML) {
            Ok(kb) => kb,
            Err(e) => panic!("assets/failure-rules.yml: {e}"),
        };
        assert!(kb.rules().len() >= 40, "{} rules", kb.rules().len());
        // Each pattern compiles on its own too (its captures fill hints).
        for (i, p) in kb.regexes.iter().enumerate() {
            assert!(p.regex().is_some(), "pattern {i} ({}) does not compile alone", p.source);
        }
    }

    #[test]
    fn a_builtin_scan_keeps_its_lines_until_the_rules_are_ready() {
        // Whether or not another test compiled them already, the scan
        // gives the answer a scan with the rules at hand gives.
        let lines = [
            ("compiling", false),
            ("curl: (6) Could not resolve host: example.invalid", true),
            ("done", false),
        ];
        let end = Ending {
            signal: None,
            exit_code: Some(6),
        };
        let mut lazy = Scan::builtin();
        for (l, e) in lines {
            lazy.line(l, e);
        }
        let mut eager = KnowledgeBase::builtin().scan();
        for (l, e) in lines {
            eager.line(l, e);
        }
        let (a, b) = (lazy.finish(&end), eager.finish(&end));
        assert_eq!(a.as_ref().map(|d| &d.rule), b.as_ref().map(|d| &d.rule));
        assert_eq!(a.map(|d| d.lines), b.map(|d| d.lines));
        assert!(builtin_ready());
    }

    #[test]
    fn a_pending_scan_matches_its_kept_lines_with_their_numbers() {
        let rules = OnceLock::new();
        let mut s = Scan::lazy(&rules);
        s.line("summary: 3 failed at x", false);
        s.line("a", false);
        assert!(s.kb.is_none() && s.pending.len() == 2 && !s.would_wait());
        assert!(rules.set(kb(TWO)).is_ok());
        s.line("b", false);
        assert!(s.pending.is_empty(), "matched once the rules came");
        // The tail rule (lines: 2) no longer sees line 1 of 3.
        assert!(s.finish(&Ending::default()).is_none());
        let mut s = Scan::lazy(&rules);
        s.line("summary: 3 failed at x", false);
        s.line("a", false);
        let d = s.finish(&Ending::default()).expect("within the tail");
        assert_eq!((d.rule.as_str(), d.hint.as_str()), ("tail", "3 failed (x)"));
    }

    #[test]
    fn a_pending_scan_is_bounded() {
        let rules = OnceLock::new();
        let mut s = Scan::lazy(&rules);
        for n in 0..MAX_PENDING_LINES {
            assert_eq!(s.wants_rules(), n >= PREPARE_PENDING_LINES, "after {n} lines");
            assert!(!s.would_wait());
            s.line("x", false);
        }
        assert!(s.would_wait());
        // The next line waits for (here: compiles) the rules.
        s.line("x", false);
        assert!(s.pending.is_empty() && rules.get().is_some());
    }
}
