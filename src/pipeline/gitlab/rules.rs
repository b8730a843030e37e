//! GitLab's CI/CD expressions, as `rules:if`, `workflow:rules:if` and
//! `only/except:variables` write them: `$VAR`, `"string"` or `'string'`,
//! `null`, `/regex/flags`, `==`, `!=`, `=~`, `!~`, `&&` (binding tighter
//! than `||`, as GitLab documents), `||` and parentheses.
//!
//! Parsed once when the pipeline is read (a mistake is a diagnostic at its
//! column), evaluated against the variables the pipeline is created with.
//! A variable alone is true when it is defined and not empty; `null` is an
//! undefined variable; the right side of `=~` may be a variable holding a
//! `/pattern/`. Regular expressions are RE2's, which Rust's `regex` follows.

/// Longest expression read (GitLab's own limit is far below).
const MAX_LEN: usize = 4096;
/// Deepest nesting of parentheses.
const MAX_DEPTH: usize = 32;
/// Largest compiled regular expression.
const REGEX_SIZE: usize = 1 << 20;

/// A mistake in an expression: where (a character offset) and what.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ExprError {
    pub offset: usize,
    pub message: String,
    pub hint: &'static str,
}

#[derive(Debug, Clone)]
pub enum Expr {
    Or(Box<Expr>, Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Compare(Operand, Op, Operand),
    /// A variable alone: defined and not empty.
    Present(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Match,
    NoMatch,
}

#[derive(Debug, Clone)]
pub enum Operand {
    Var(String),
    Str(String),
    Null,
    Regex(regex::Regex),
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Var(String),
    Str(String),
    Null,
    Regex(String, String),
    Op(Op),
    And,
    Or,
    Open,
    Close,
}

fn err(offset: usize, message: impl Into<String>, hint: &'static str) -> ExprError {
    ExprError {
        offset,
        message: message.into(),
        hint,
    }
}

const HINT: &str =
    "write comparisons like `$CI_COMMIT_BRANCH == \"main\"` or `$VAR =~ /^release-/`, joined with && and ||";

/// Splits `text` into tokens with their character offsets.
fn tokens(text: &str) -> Result<Vec<(usize, Tok)>, ExprError> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let start = i;
        match c {
            ' ' | '\t' | '\n' | '\r' => i += 1,
            '(' => {
                out.push((start, Tok::Open));
                i += 1;
            }
            ')' => {
                out.push((start, Tok::Close));
                i += 1;
            }
            '&' | '|' => {
                if chars.get(i + 1) != Some(&c) {
                    return Err(err(start, format!("`{c}` alone is not an operator"), "write && or ||"));
                }
                out.push((start, if c == '&' { Tok::And } else { Tok::Or }));
                i += 2;
            }
            '=' | '!' => {
                let op = match (c, chars.get(i + 1)) {
                    ('=', Some('=')) => Op::Eq,
                    ('!', Some('=')) => Op::Ne,
                    ('=', Some('~')) => Op::Match,
                    ('!', Some('~')) => Op::NoMatch,
                    _ => {
                        return Err(err(
                            start,
                            format!("unknown operator at `{c}`"),
                            "operators: == != =~ !~ && ||",
                        ));
                    }
                };
                out.push((start, Tok::Op(op)));
                i += 2;
            }
            '"' | '\'' => {
                let close = chars[i + 1..].iter().position(|&x| x == c).ok_or_else(|| {
                    err(
                        start,
                        "a string is not closed",
                        "close it with the quote it opened with",
                    )
                })?;
                out.push((start, Tok::Str(chars[i + 1..i + 1 + close].iter().collect())));
                i += close + 2;
            }
            '/' => {
                // Up to the next unescaped slash; flags follow.
                let mut j = i + 1;
                let mut pattern = String::new();
                loop {
                    match chars.get(j) {
                        None => {
                            return Err(err(
                                start,
                                "a regular expression is not closed",
                                "write it as /pattern/ or /pattern/i",
                            ));
                        }
                        Some('\\') if chars.get(j + 1) == Some(&'/') => {
                            pattern.push('/');
                            j += 2;
                        }
                        Some('\\') => {
                            pattern.push('\\');
                            if let Some(&n) = chars.get(j + 1) {
                                pattern.push(n);
                            }
                            j += 2;
                        }
                        Some('/') => break,
                        Some(&x) => {
                            pattern.push(x);
                            j += 1;
                        }
                    }
                }
                let mut k = j + 1;
                let mut flags = String::new();
                while let Some(&f) = chars.get(k).filter(|f| f.is_ascii_alphabetic()) {
                    flags.push(f);
                    k += 1;
                }
                out.push((start, Tok::Regex(pattern, flags)));
                i = k;
            }
            '$' => {
                let braced = chars.get(i + 1) == Some(&'{');
                let from = if braced { i + 2 } else { i + 1 };
                let mut j = from;
                while chars.get(j).is_some_and(|x| x.is_ascii_alphanumeric() || *x == '_') {
                    j += 1;
                }
                if j == from {
                    return Err(err(start, "`$` without a variable name", HINT));
                }
                let name: String = chars[from..j].iter().collect();
                if braced {
                    if chars.get(j) != Some(&'}') {
                        return Err(err(
                            start,
                            format!("`${{{name}` is not closed"),
                            "write ${NAME} or $NAME",
                        ));
                    }
                    j += 1;
                }
                out.push((start, Tok::Var(name)));
                i = j;
            }
            _ => {
                let mut j = i;
                while chars.get(j).is_some_and(|x| x.is_ascii_alphanumeric() || *x == '_') {
                    j += 1;
                }
                let word: String = chars[i..j.max(i + 1)].iter().collect();
                if word == "null" {
                    out.push((start, Tok::Null));
                    i = j;
                } else {
                    return Err(err(
                        start,
                        format!("unexpected `{word}`"),
                        "variables start with $, strings are quoted, regular expressions are /.../",
                    ));
                }
            }
        }
    }
    Ok(out)
}

/// Parses an expression; the error's offset is a character offset in `text`.
pub fn parse(text: &str) -> Result<Expr, ExprError> {
    if text.len() > MAX_LEN {
        return Err(err(
            0,
            format!("expression longer than {MAX_LEN} bytes"),
            "split the rule",
        ));
    }
    let toks = tokens(text)?;
    if toks.is_empty() {
        return Err(err(0, "empty expression", HINT));
    }
    let mut p = Parser {
        toks,
        at: 0,
        end: text.chars().count(),
        depth: 0,
    };
    let e = p.or()?;
    match p.toks.get(p.at) {
        None => Ok(e),
        Some((o, Tok::Close)) => Err(err(*o, "`)` without a matching `(`", HINT)),
        Some((o, _)) => Err(err(*o, "expected && or || here", HINT)),
    }
}

struct Parser {
    toks: Vec<(usize, Tok)>,
    at: usize,
    end: usize,
    depth: usize,
}

impl Parser {
    fn offset(&self) -> usize {
        self.toks.get(self.at).map_or(self.end, |t| t.0)
    }

    fn or(&mut self) -> Result<Expr, ExprError> {
        let mut left = self.and()?;
        while matches!(self.toks.get(self.at), Some((_, Tok::Or))) {
            self.at += 1;
            left = Expr::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr, ExprError> {
        let mut left = self.term()?;
        while matches!(self.toks.get(self.at), Some((_, Tok::And))) {
            self.at += 1;
            left = Expr::And(Box::new(left), Box::new(self.term()?));
        }
        Ok(left)
    }

    fn term(&mut self) -> Result<Expr, ExprError> {
        let offset = self.offset();
        if matches!(self.toks.get(self.at), Some((_, Tok::Open))) {
            self.depth += 1;
            if self.depth > MAX_DEPTH {
                return Err(err(offset, "parentheses nest too deep", "simplify the rule"));
            }
            self.at += 1;
            let inner = self.or()?;
            match self.toks.get(self.at) {
                Some((_, Tok::Close)) => {
                    self.at += 1;
                    self.depth -= 1;
                    return Ok(inner);
                }
                _ => return Err(err(self.offset(), "`(` is not closed", "add the `)`")),
            }
        }
        let left = self.operand()?;
        match self.toks.get(self.at).cloned() {
            Some((_, Tok::Op(op))) => {
                self.at += 1;
                let right_at = self.offset();
                let right = self.operand()?;
                if matches!(op, Op::Match | Op::NoMatch) && !matches!(right, Operand::Regex(_) | Operand::Var(_)) {
                    return Err(err(
                        right_at,
                        "the right side of =~ and !~ is a /regular expression/ or a variable holding one",
                        "write `$VAR =~ /pattern/`",
                    ));
                }
                Ok(Expr::Compare(left, op, right))
            }
            _ => match left {
                Operand::Var(name) => Ok(Expr::Present(name)),
                _ => Err(err(offset, "a value alone is not a condition", HINT)),
            },
        }
    }

    fn operand(&mut self) -> Result<Operand, ExprError> {
        let offset = self.offset();
        let Some((_, tok)) = self.toks.get(self.at).cloned() else {
            return Err(err(offset, "the expression ends too early", HINT));
        };
        self.at += 1;
        match tok {
            Tok::Var(v) => Ok(Operand::Var(v)),
            Tok::Str(s) => Ok(Operand::Str(s)),
            Tok::Null => Ok(Operand::Null),
            Tok::Regex(p, flags) => regex_of(&p, &flags)
                .map(Operand::Regex)
                .map_err(|e| err(offset, e.to_string(), "RE2 syntax; flags i, m, s")),
            _ => Err(err(
                offset,
                "expected a variable, a string, null or a /regex/ here",
                HINT,
            )),
        }
    }
}

/// Why `/pattern/flags` does not compile.
#[derive(Debug, thiserror::Error)]
pub enum RegexError {
    #[error("unknown regular expression flag `{0}`")]
    Flag(char),
    #[error("bad regular expression /{pattern}/: {source}")]
    Pattern { pattern: String, source: regex::Error },
}

/// Compiles `/pattern/flags`.
fn regex_of(pattern: &str, flags: &str) -> Result<regex::Regex, RegexError> {
    let mut b = regex::RegexBuilder::new(pattern);
    b.size_limit(REGEX_SIZE);
    for f in flags.chars() {
        match f {
            'i' => b.case_insensitive(true),
            'm' => b.multi_line(true),
            's' => b.dot_matches_new_line(true),
            other => return Err(RegexError::Flag(other)),
        };
    }
    b.build().map_err(|source| RegexError::Pattern {
        pattern: pattern.to_string(),
        source,
    })
}

impl Expr {
    /// Whether the expression holds for the variables `get` knows (`None`:
    /// undefined).
    pub fn eval(&self, get: &dyn Fn(&str) -> Option<String>) -> bool {
        match self {
            Expr::Or(a, b) => a.eval(get) || b.eval(get),
            Expr::And(a, b) => a.eval(get) && b.eval(get),
            Expr::Present(v) => get(v).is_some_and(|s| !s.is_empty()),
            Expr::Compare(l, op, r) => {
                let value = |o: &Operand| match o {
                    Operand::Var(v) => get(v),
                    Operand::Str(s) => Some(s.clone()),
                    Operand::Null => None,
                    Operand::Regex(re) => Some(re.as_str().to_string()),
                };
                match op {
                    Op::Eq => value(l) == value(r),
                    Op::Ne => value(l) != value(r),
                    Op::Match | Op::NoMatch => {
                        let hit = match (value(l), r) {
                            (None, _) => false,
                            (Some(text), Operand::Regex(re)) => re.is_match(&text),
                            // A variable holding `/pattern/flags`.
                            (Some(text), _) => value(r)
                                .and_then(|p| {
                                    let body = p.strip_prefix('/')?;
                                    let end = body.rfind('/')?;
                                    regex_of(&body[..end], &body[end + 1..]).ok()
                                })
                                .is_some_and(|re| re.is_match(&text)),
                        };
                        hit == (*op == Op::Match)
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holds(text: &str, vars: &[(&str, &str)]) -> bool {
        let e = parse(text).unwrap_or_else(|e| panic!("{text}: {e:?}"));
        e.eval(&|name| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string()))
    }

    #[test]
    fn comparisons_presence_and_null_follow_gitlabs_documentation() {
        let v = [("BRANCH", "main"), ("EMPTY", ""), ("OTHER", "main")];
        assert!(holds("$BRANCH == \"main\"", &v));
        assert!(holds("$BRANCH == 'main'", &v));
        assert!(holds("${BRANCH} != \"dev\"", &v));
        assert!(holds("$BRANCH == $OTHER", &v));
        assert!(holds("$BRANCH", &v));
        assert!(!holds("$EMPTY", &v), "empty is not present");
        assert!(!holds("$NOPE", &v));
        assert!(holds("$NOPE == null", &v));
        assert!(!holds("$EMPTY == null", &v), "empty is defined");
        assert!(holds("$EMPTY == \"\"", &v));
        assert!(!holds("$NOPE == \"\"", &v), "undefined is not the empty string");
    }

    #[test]
    fn regexes_flags_and_patterns_in_variables() {
        let v = [("REF", "Release-1.2"), ("PAT", "/^release-/i")];
        assert!(holds("$REF =~ /^Release-\\d/", &v));
        assert!(holds("$REF =~ /^release/i", &v));
        assert!(!holds("$REF =~ /^release/", &v));
        assert!(holds("$REF !~ /^hotfix/", &v));
        assert!(holds("$REF =~ $PAT", &v));
        assert!(!holds("$NOPE =~ /x/", &v), "undefined matches nothing");
        assert!(holds("$NOPE !~ /x/", &v));
        assert!(holds("$REF =~ /a\\/b|Rel/", &v), "an escaped slash");
    }

    #[test]
    fn and_binds_tighter_than_or_and_parentheses_group() {
        let v = [("A", "1")];
        // true || (false && false)
        assert!(holds("$A || $B && $C", &v));
        assert!(!holds("($A || $B) && $C", &v));
        assert!(holds("$A == \"1\" && ($B == null || $B == \"x\")", &v));
    }

    #[test]
    fn mistakes_say_where_they_are() {
        let at = |text: &str| parse(text).map(|_| ()).unwrap_err().offset;
        assert_eq!(at("$A = \"x\""), 3);
        assert_eq!(at("$A == \"x"), 6);
        assert_eq!(at("$A =~ \"x\""), 6);
        assert_eq!(at("($A == \"x\""), 10);
        assert_eq!(at("$A == \"x\")"), 9);
        assert_eq!(at("$A =~ /(/"), 6);
        assert_eq!(at("$A & $B"), 3);
        assert_eq!(at("main"), 0);
        assert_eq!(at(""), 0);
        assert_eq!(at("\"x\""), 0);
        assert_eq!(at("$A == \"x\" $B"), 10);
        assert!(parse(&"(".repeat(100)).is_err());
        assert!(parse(&"$A || ".repeat(2000)).is_err(), "too long");
    }
}
