//! Expressions: `${{ ... }}` in strings and the `conditional` of a job.
//!
//! A small, sandboxed language in the spirit of GitHub Actions: literals,
//! `env.X`, `vars.X`, `job.<name>.status`, comparison and logic operators,
//! parentheses and a fixed set of functions. It cannot do I/O, and both
//! parsing and evaluation are bounded in depth, steps and output size, so a
//! hostile pipeline cannot hang or exhaust trackside.

use std::fmt;

use serde_json::Value;

pub const MAX_SOURCE: usize = 4096;
pub const MAX_DEPTH: usize = 64;
pub const MAX_STEPS: usize = 10_000;
pub const MAX_STRING: usize = 1 << 20;

/// The roots an expression may read.
pub const CONTEXTS: [&str; 3] = ["env", "vars", "job"];
/// Functions and their accepted argument counts (min, max).
pub const FUNCTIONS: [(&str, usize, usize); 9] = [
    ("contains", 2, 2),
    ("startsWith", 2, 2),
    ("endsWith", 2, 2),
    ("join", 1, 2),
    ("format", 1, 32),
    ("fromJSON", 1, 1),
    ("success", 0, 0),
    ("failure", 0, 0),
    ("always", 0, 0),
];

/// The names a dialect's expressions may use: its contexts and functions
/// (with their accepted argument counts).
#[derive(Debug)]
pub struct Lang {
    pub contexts: &'static [&'static str],
    pub functions: &'static [(&'static str, usize, usize)],
    /// `a.*.b`, GitHub's object filter.
    pub filters: bool,
    /// Function and context names, and property names, match whatever
    /// their case (GitHub's `toJson`, `fromJSON`, `github.REF`).
    pub ignore_case: bool,
}

/// The native format's expressions.
pub const NATIVE: Lang = Lang {
    contexts: &CONTEXTS,
    functions: &FUNCTIONS,
    filters: false,
    ignore_case: false,
};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct ExprError {
    /// Byte offset in the expression source.
    pub offset: usize,
    pub message: String,
    pub hint: Option<String>,
}

impl ExprError {
    fn at(offset: usize, message: impl Into<String>) -> Self {
        ExprError {
            offset,
            message: message.into(),
            hint: None,
        }
    }
    fn hint(mut self, h: impl Into<String>) -> Self {
        self.hint = Some(h.into());
        self
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    And,
    Or,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub enum Expr {
    #[default]
    Null,
    Lit(Value),
    /// A context root: `env`, `vars`, `job`.
    Ident(String, usize),
    Member(Box<Expr>, Box<Expr>),
    /// `a.*`: the values of an object, or the items of an array, as an array.
    Filter(Box<Expr>),
    Call(String, Vec<Expr>, usize),
    Not(Box<Expr>),
    Bin(BinOp, Box<Expr>, Box<Expr>),
}

impl Expr {
    /// True when the expression asks about upstream status (`success()`,
    /// `failure()`, `always()`): then it, not the default rule, decides
    /// whether the job runs after an upstream failure.
    pub fn uses_status_functions(&self) -> bool {
        match self {
            Expr::Call(name, args, _) => {
                matches!(name.as_str(), "success" | "failure" | "always" | "cancelled")
                    || args.iter().any(Expr::uses_status_functions)
            }
            Expr::Member(a, b) | Expr::Bin(_, a, b) => a.uses_status_functions() || b.uses_status_functions(),
            Expr::Not(a) | Expr::Filter(a) => a.uses_status_functions(),
            _ => false,
        }
    }

    /// The expression with every part that reads only `known` roots and
    /// calls no `later` function evaluated now, as a literal: what is left
    /// needs the run (GitHub's `steps`, `needs`, the status functions).
    pub fn fold(
        &self,
        ctx: &dyn Context,
        known: &dyn Fn(&str) -> bool,
        later: &dyn Fn(&str) -> bool,
    ) -> Result<Expr, ExprError> {
        let (mut roots, mut calls) = (Vec::new(), Vec::new());
        self.names(&mut roots, &mut calls);
        let ready = roots.iter().all(|(r, _)| known(r)) && calls.iter().all(|(c, _)| !later(c));
        // `a.*` stays a filter: the member read after it depends on it.
        if ready && !matches!(self, Expr::Filter(_)) {
            return Ok(Expr::Lit(eval(self, ctx)?));
        }
        let f = |e: &Expr| e.fold(ctx, known, later).map(Box::new);
        Ok(match self {
            Expr::Member(a, b) => Expr::Member(f(a)?, f(b)?),
            Expr::Bin(op, a, b) => Expr::Bin(*op, f(a)?, f(b)?),
            Expr::Not(a) => Expr::Not(f(a)?),
            Expr::Filter(a) => Expr::Filter(f(a)?),
            Expr::Call(name, args, off) => Expr::Call(
                name.clone(),
                args.iter()
                    .map(|a| a.fold(ctx, known, later))
                    .collect::<Result<_, _>>()?,
                *off,
            ),
            other => other.clone(),
        })
    }

    /// Source text that parses back to this expression (GitHub's syntax:
    /// strings in single quotes, arrays and objects through `fromJSON`).
    pub fn to_source(&self) -> String {
        let lit = |v: &Value| match v {
            Value::String(t) => format!("'{}'", t.replace('\'', "''")),
            Value::Array(_) | Value::Object(_) => {
                let json = serde_json::to_string(v).unwrap_or_default();
                format!("fromJSON('{}')", json.replace('\'', "''"))
            }
            other => other.to_string(),
        };
        match self {
            Expr::Null => "null".into(),
            Expr::Lit(v) => lit(v),
            Expr::Ident(name, _) => name.clone(),
            Expr::Member(obj, key) => match &**key {
                Expr::Lit(Value::String(k))
                    if k.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') =>
                {
                    format!("{}.{k}", obj.to_source())
                }
                other => format!("{}[{}]", obj.to_source(), other.to_source()),
            },
            Expr::Filter(obj) => format!("{}.*", obj.to_source()),
            Expr::Call(name, args, _) => {
                let args: Vec<String> = args.iter().map(Expr::to_source).collect();
                format!("{name}({})", args.join(", "))
            }
            Expr::Not(a) => format!("!({})", a.to_source()),
            Expr::Bin(op, a, b) => {
                let op = match op {
                    BinOp::Eq => "==",
                    BinOp::Ne => "!=",
                    BinOp::Lt => "<",
                    BinOp::Le => "<=",
                    BinOp::Gt => ">",
                    BinOp::Ge => ">=",
                    BinOp::And => "&&",
                    BinOp::Or => "||",
                };
                format!("({} {op} {})", a.to_source(), b.to_source())
            }
        }
    }

    /// The contexts it reads and the functions it calls, with their offsets.
    pub fn names(&self, roots: &mut Vec<(String, usize)>, calls: &mut Vec<(String, usize)>) {
        match self {
            Expr::Ident(name, off) => roots.push((name.clone(), *off)),
            Expr::Call(name, args, off) => {
                calls.push((name.clone(), *off));
                args.iter().for_each(|a| a.names(roots, calls));
            }
            Expr::Member(a, b) | Expr::Bin(_, a, b) => {
                a.names(roots, calls);
                b.names(roots, calls);
            }
            Expr::Not(a) | Expr::Filter(a) => a.names(roots, calls),
            Expr::Null | Expr::Lit(_) => {}
        }
    }

    /// Job names read through `job.<name>`, with their offsets.
    pub fn job_refs(&self, out: &mut Vec<(String, usize)>) {
        match self {
            Expr::Member(obj, key) => {
                if let (Expr::Ident(root, off), Expr::Lit(Value::String(name))) = (&**obj, &**key)
                    && root == "job"
                {
                    out.push((name.clone(), *off));
                }
                obj.job_refs(out);
                key.job_refs(out);
            }
            Expr::Call(_, args, _) => args.iter().for_each(|a| a.job_refs(out)),
            Expr::Not(a) | Expr::Filter(a) => a.job_refs(out),
            Expr::Bin(_, a, b) => {
                a.job_refs(out);
                b.job_refs(out);
            }
            _ => {}
        }
    }
}

// ---------------------------------------------------------------- lexing

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Num(f64),
    Str(String),
    Ident(String),
    Dot,
    LBracket,
    RBracket,
    LParen,
    RParen,
    Comma,
    Not,
    Star,
    Op(BinOp),
}

fn lex(src: &str) -> Result<Vec<(Tok, usize)>, ExprError> {
    let mut toks = Vec::new();
    let chars: Vec<(usize, char)> = src.char_indices().collect();
    let mut i = 0;
    while i < chars.len() {
        let (off, c) = chars[i];
        let peek = chars.get(i + 1).map(|&(_, c)| c);
        let two = |t: Tok| (t, 2usize);
        let (tok, len) = match c {
            ' ' | '\t' | '\n' | '\r' => {
                i += 1;
                continue;
            }
            '.' if !peek.is_some_and(|p| p.is_ascii_digit()) => (Tok::Dot, 1),
            '[' => (Tok::LBracket, 1),
            ']' => (Tok::RBracket, 1),
            '(' => (Tok::LParen, 1),
            ')' => (Tok::RParen, 1),
            ',' => (Tok::Comma, 1),
            '*' => (Tok::Star, 1),
            '=' if peek == Some('=') => two(Tok::Op(BinOp::Eq)),
            '!' if peek == Some('=') => two(Tok::Op(BinOp::Ne)),
            '!' => (Tok::Not, 1),
            '<' if peek == Some('=') => two(Tok::Op(BinOp::Le)),
            '<' => (Tok::Op(BinOp::Lt), 1),
            '>' if peek == Some('=') => two(Tok::Op(BinOp::Ge)),
            '>' => (Tok::Op(BinOp::Gt), 1),
            '&' if peek == Some('&') => two(Tok::Op(BinOp::And)),
            '|' if peek == Some('|') => two(Tok::Op(BinOp::Or)),
            '\'' => {
                let mut s = String::new();
                let mut j = i + 1;
                loop {
                    match chars.get(j) {
                        None => {
                            return Err(ExprError::at(off, "unterminated string")
                                .hint("close the string with `'` (write `''` for a quote inside it)"));
                        }
                        Some(&(_, '\'')) if chars.get(j + 1).map(|c| c.1) == Some('\'') => {
                            s.push('\'');
                            j += 2;
                        }
                        Some(&(_, '\'')) => break,
                        Some(&(_, ch)) => {
                            s.push(ch);
                            j += 1;
                        }
                    }
                }
                (Tok::Str(s), j + 1 - i)
            }
            c if c.is_ascii_digit() || c == '-' || c == '.' => {
                let mut j = i + 1;
                while let Some(&(_, ch)) = chars.get(j) {
                    // An exponent's sign belongs to the number: `-2.99e-2`.
                    let exponent_sign = (ch == '-' || ch == '+')
                        && matches!(chars.get(j - 1), Some(&(_, 'e' | 'E')))
                        && !src[off..chars[j].0].starts_with("0x");
                    if !(ch.is_ascii_alphanumeric() || ch == '.' || ch == '_' || exponent_sign) {
                        break;
                    }
                    j += 1;
                }
                let end = chars.get(j).map_or(src.len(), |&(o, _)| o);
                let text = &src[off..end];
                let n = text
                    .parse::<f64>()
                    .ok()
                    .or_else(|| {
                        text.strip_prefix("0x")
                            .and_then(|h| i64::from_str_radix(h, 16).ok())
                            .map(|v| v as f64)
                    })
                    .ok_or_else(|| ExprError::at(off, format!("bad number `{text}`")))?;
                (Tok::Num(n), j - i)
            }
            c if c.is_alphabetic() || c == '_' => {
                let mut j = i + 1;
                while chars
                    .get(j)
                    .is_some_and(|&(_, ch)| ch.is_alphanumeric() || ch == '_' || ch == '-')
                {
                    j += 1;
                }
                let end = chars.get(j).map_or(src.len(), |&(o, _)| o);
                (Tok::Ident(src[off..end].to_string()), j - i)
            }
            other => {
                return Err(ExprError::at(off, format!("unexpected character `{other}`"))
                    .hint("operators are == != < <= > >= && || ! and strings use single quotes"));
            }
        };
        toks.push((tok, off));
        i += len;
    }
    Ok(toks)
}

// ---------------------------------------------------------------- parsing

struct P<'l> {
    lang: &'l Lang,
    toks: Vec<(Tok, usize)>,
    i: usize,
    end: usize,
    depth: usize,
}

/// Parses one expression of the native format (the text between `${{`
/// and `}}`, or a `conditional`).
pub fn parse(src: &str) -> Result<Expr, ExprError> {
    parse_in(src, &NATIVE)
}

/// Parses one expression of a dialect's language.
pub fn parse_in(src: &str, lang: &Lang) -> Result<Expr, ExprError> {
    if src.len() > MAX_SOURCE {
        return Err(ExprError::at(
            0,
            format!("expression is longer than {MAX_SOURCE} bytes"),
        ));
    }
    let toks = lex(src)?;
    if toks.is_empty() {
        return Err(ExprError::at(0, "empty expression").hint("write a condition such as `env.BRANCH == 'main'`"));
    }
    let mut p = P {
        lang,
        toks,
        i: 0,
        end: src.len(),
        depth: 0,
    };
    let e = p.expr(0)?;
    if let Some((t, off)) = p.toks.get(p.i) {
        return Err(
            ExprError::at(*off, format!("unexpected {} after the expression", describe(t)))
                .hint("join conditions with && or ||"),
        );
    }
    Ok(e)
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::Num(n) => format!("number {n}"),
        Tok::Str(s) => format!("string '{s}'"),
        Tok::Ident(s) => format!("`{s}`"),
        Tok::Dot => "`.`".into(),
        Tok::LBracket => "`[`".into(),
        Tok::RBracket => "`]`".into(),
        Tok::LParen => "`(`".into(),
        Tok::RParen => "`)`".into(),
        Tok::Comma => "`,`".into(),
        Tok::Not => "`!`".into(),
        Tok::Star => "`*`".into(),
        Tok::Op(_) => "operator".into(),
    }
}

fn precedence(op: BinOp) -> usize {
    match op {
        BinOp::Or => 1,
        BinOp::And => 2,
        BinOp::Eq | BinOp::Ne => 3,
        BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => 4,
    }
}

impl P<'_> {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.i).map(|t| &t.0)
    }
    fn off(&self) -> usize {
        self.toks.get(self.i).map_or(self.end, |t| t.1)
    }
    fn eat(&mut self, t: &Tok) -> bool {
        if self.peek() == Some(t) {
            self.i += 1;
            true
        } else {
            false
        }
    }
    fn expect(&mut self, t: Tok, what: &str) -> Result<(), ExprError> {
        if self.eat(&t) {
            Ok(())
        } else {
            Err(ExprError::at(self.off(), format!("expected {what}")))
        }
    }

    fn expr(&mut self, min_prec: usize) -> Result<Expr, ExprError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(ExprError::at(
                self.off(),
                format!("expression nests deeper than {MAX_DEPTH} levels"),
            ));
        }
        let mut lhs = self.unary()?;
        while let Some(Tok::Op(op)) = self.peek().cloned() {
            let prec = precedence(op);
            if prec <= min_prec {
                break;
            }
            self.i += 1;
            let rhs = self.expr(prec)?;
            lhs = Expr::Bin(op, Box::new(lhs), Box::new(rhs));
        }
        self.depth -= 1;
        Ok(lhs)
    }

    fn unary(&mut self) -> Result<Expr, ExprError> {
        if self.eat(&Tok::Not) {
            self.depth += 1;
            if self.depth > MAX_DEPTH {
                return Err(ExprError::at(
                    self.off(),
                    format!("expression nests deeper than {MAX_DEPTH} levels"),
                ));
            }
            let e = self.unary()?;
            self.depth -= 1;
            return Ok(Expr::Not(Box::new(e)));
        }
        let mut e = self.primary()?;
        loop {
            if self.eat(&Tok::Dot) {
                let off = self.off();
                match self.toks.get(self.i).cloned() {
                    Some((Tok::Ident(name), _)) => {
                        self.i += 1;
                        e = Expr::Member(Box::new(e), Box::new(Expr::Lit(Value::String(name))));
                    }
                    Some((Tok::Star, _)) if self.lang.filters => {
                        self.i += 1;
                        e = Expr::Filter(Box::new(e));
                    }
                    _ => return Err(ExprError::at(off, "expected a property name after `.`")),
                }
            } else if self.eat(&Tok::LBracket) {
                let key = self.expr(0)?;
                self.expect(Tok::RBracket, "`]`")?;
                e = Expr::Member(Box::new(e), Box::new(key));
            } else {
                return Ok(e);
            }
        }
    }

    fn primary(&mut self) -> Result<Expr, ExprError> {
        let off = self.off();
        let Some((tok, _)) = self.toks.get(self.i).cloned() else {
            return Err(ExprError::at(off, "expression ends too early").hint("finish the expression"));
        };
        self.i += 1;
        match tok {
            Tok::Num(n) => Ok(Expr::Lit(num(n))),
            Tok::Str(s) => Ok(Expr::Lit(Value::String(s))),
            Tok::LParen => {
                let e = self.expr(0)?;
                self.expect(Tok::RParen, "`)`")?;
                Ok(e)
            }
            Tok::Ident(name) => match name.as_str() {
                "true" => Ok(Expr::Lit(Value::Bool(true))),
                "false" => Ok(Expr::Lit(Value::Bool(false))),
                "null" => Ok(Expr::Null),
                _ if self.peek() == Some(&Tok::LParen) => {
                    self.i += 1;
                    let mut args = Vec::new();
                    if !self.eat(&Tok::RParen) {
                        loop {
                            args.push(self.expr(0)?);
                            if self.eat(&Tok::RParen) {
                                break;
                            }
                            self.expect(Tok::Comma, "`,` or `)`")?;
                        }
                    }
                    let known = self
                        .lang
                        .functions
                        .iter()
                        .find(|f| f.0 == name || (self.lang.ignore_case && f.0.eq_ignore_ascii_case(&name)));
                    let Some(&(canonical, min, max)) = known else {
                        let names: Vec<&str> = self.lang.functions.iter().map(|f| f.0).collect();
                        return Err(ExprError::at(off, format!("unknown function `{name}`"))
                            .hint(super::diag::suggestion_hint(&name, &names, "functions")));
                    };
                    if args.len() < min || args.len() > max {
                        let want = if min == max {
                            min.to_string()
                        } else {
                            format!("{min} to {max}")
                        };
                        return Err(ExprError::at(
                            off,
                            format!("`{name}` takes {want} argument(s), got {}", args.len()),
                        ));
                    }
                    Ok(Expr::Call(canonical.to_string(), args, off))
                }
                _ if self.lang.contexts.contains(&name.as_str()) => Ok(Expr::Ident(name, off)),
                _ if self.lang.ignore_case
                    && let Some(c) = self.lang.contexts.iter().find(|c| c.eq_ignore_ascii_case(&name)) =>
                {
                    Ok(Expr::Ident(c.to_string(), off))
                }
                // `foo.bar`: a context that does not exist; a bare word is
                // more likely a string without its quotes.
                _ if matches!(self.peek(), Some(Tok::Dot | Tok::LBracket)) => Err(ExprError::at(
                    off,
                    format!("unknown context `{name}`"),
                )
                .hint(super::diag::suggestion_hint(&name, self.lang.contexts, "contexts"))),
                _ => Err(ExprError::at(off, format!("unknown name `{name}`")).hint(
                    super::diag::suggestion_hint(&name, self.lang.contexts, "contexts")
                        + "; strings need single quotes",
                )),
            },
            other => Err(ExprError::at(off, format!("unexpected {}", describe(&other)))),
        }
    }
}

fn num(n: f64) -> Value {
    serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number)
}

// ---------------------------------------------------------------- evaluation

/// What an expression can see. Implemented by the engine.
pub trait Context {
    /// A context given whole (GitHub's `github`, `matrix`, ...): looked up
    /// first; `None` leaves `env`, `vars` and `job` to the methods below.
    /// What [`Context::root_ref`] lends, copied; a context made when asked
    /// for (not held) is given here instead.
    fn root(&self, name: &str) -> Option<Value> {
        self.root_ref(name).cloned()
    }
    /// A context the implementor holds whole, lent: a member path of it
    /// (`github.event.pull_request.number`) is then read in place, and only
    /// the value it leads to is copied (a pull request's payload is tens of
    /// kilobytes).
    fn root_ref(&self, name: &str) -> Option<&Value> {
        let _ = name;
        None
    }
    /// Whether strings compare ignoring case (GitHub's rule; the native
    /// format's compare exactly).
    fn ignore_case(&self) -> bool {
        false
    }
    fn env(&self, name: &str) -> Option<String>;
    fn var(&self, name: &str) -> Option<String>;
    /// `success`, `failure`, `cancelled`, `skipped`, `running`, `pending`, ... or None for an unknown job.
    fn job_status(&self, job: &str) -> Option<String>;
    /// True when no upstream job failed or was cancelled.
    fn upstream_succeeded(&self) -> bool;
    /// `failure()`: an upstream job (or an earlier step) failed. GitHub
    /// tells it apart from `!success()`: a skipped need is neither.
    fn upstream_failed(&self) -> bool {
        !self.upstream_succeeded()
    }
    /// `cancelled()`: the run (or the job) is being cancelled.
    fn cancelled(&self) -> bool {
        false
    }
    /// GitHub's `hashFiles(patterns)` over the job's workspace.
    fn hash_files(&self, patterns: &[String]) -> Result<String, HashFilesError> {
        let _ = patterns;
        Err(HashFilesError::NoWorkspace)
    }
}

/// Why `hashFiles()` has no value.
#[derive(Debug, thiserror::Error)]
pub enum HashFilesError {
    #[error("hashFiles() needs the job's workspace: it is evaluated as a step starts")]
    NoWorkspace,
    #[error("hashFiles(): cannot list {dir}: {source}")]
    List {
        dir: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("hashFiles(): {0}")]
    Files(#[source] Box<dyn std::error::Error + Send + Sync>),
}

struct Eval<'a> {
    ctx: &'a dyn Context,
    steps: usize,
}

pub fn eval(e: &Expr, ctx: &dyn Context) -> Result<Value, ExprError> {
    Eval { ctx, steps: 0 }.eval(e)
}

impl<'a> Eval<'a> {
    /// The value a member path of literal keys leads to (`github.event.ref`,
    /// `matrix.os[0]`), read in place in a context its [`Context::root_ref`]
    /// lends. `None` when it does not, or when the path leads to no value:
    /// the general evaluation then says what it is (`null`, `env.X`, ...),
    /// so both ways give the same answer.
    fn lent(&self, e: &Expr) -> Option<&'a Value> {
        match e {
            Expr::Ident(name, _) => self.ctx.root_ref(name),
            Expr::Member(obj, key) if !matches!(**obj, Expr::Filter(_)) => {
                let Expr::Lit(key) = &**key else { return None };
                match (self.lent(obj)?, key) {
                    (Value::Object(map), Value::String(k)) => map.get(k).or_else(|| {
                        // GitHub's property names match whatever their case.
                        self.ctx
                            .ignore_case()
                            .then(|| map.iter().find(|(n, _)| n.eq_ignore_ascii_case(k)).map(|(_, v)| v))
                            .flatten()
                    }),
                    (Value::Array(items), Value::Number(_)) => {
                        let idx = as_number(key);
                        (idx >= 0.0 && idx.fract() == 0.0)
                            .then(|| items.get(idx as usize))
                            .flatten()
                    }
                    _ => None,
                }
            }
            _ => None,
        }
    }
}

/// Truthiness, as in GitHub Actions: false, 0, '', null and NaN are false.
pub fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0 && !f.is_nan()),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

/// The text form used when an expression is interpolated into a string.
pub fn to_text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => match n.as_f64() {
            Some(f) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{}", f as i64),
            _ => n.to_string(),
        },
        other => other.to_string(),
    }
}

fn as_number(v: &Value) -> f64 {
    match v {
        Value::Null => 0.0,
        Value::Bool(b) => f64::from(u8::from(*b)),
        Value::Number(n) => n.as_f64().unwrap_or(f64::NAN),
        Value::String(s) if s.trim().is_empty() => 0.0,
        Value::String(s) => s.trim().parse().unwrap_or(f64::NAN),
        _ => f64::NAN,
    }
}

impl Eval<'_> {
    fn eval(&mut self, e: &Expr) -> Result<Value, ExprError> {
        self.steps += 1;
        if self.steps > MAX_STEPS {
            return Err(ExprError::at(0, format!("expression took more than {MAX_STEPS} steps")));
        }
        Ok(match e {
            Expr::Null => Value::Null,
            Expr::Lit(v) => v.clone(),
            Expr::Ident(name, _) => self
                .ctx
                .root(name)
                .unwrap_or_else(|| Value::String(format!("<{name}>"))),
            Expr::Filter(obj) => match self.eval(obj)? {
                Value::Object(map) => Value::Array(map.into_iter().map(|(_, v)| v).collect()),
                Value::Array(items) => Value::Array(items),
                _ => Value::Array(Vec::new()),
            },
            Expr::Member(obj, key) => {
                if let Some(found) = self.lent(e) {
                    return Ok(found.clone());
                }
                let key_v = self.eval(key)?;
                let key_s = to_text(&key_v);
                // `a.*.b`: the member of each item, where it has one.
                if let Expr::Filter(_) = &**obj {
                    let Value::Array(items) = self.eval(obj)? else {
                        return Ok(Value::Array(Vec::new()));
                    };
                    let picked = items
                        .into_iter()
                        .filter_map(|item| match item {
                            Value::Object(mut map) => map.remove(&key_s),
                            _ => None,
                        })
                        .collect();
                    return Ok(Value::Array(picked));
                }
                if let Expr::Ident(root, _) = &**obj
                    && self.ctx.root_ref(root).is_none()
                    && self.ctx.root(root).is_none()
                {
                    return Ok(match root.as_str() {
                        "env" => self.ctx.env(&key_s).map_or(Value::Null, Value::String),
                        "vars" => self.ctx.var(&key_s).map_or(Value::Null, Value::String),
                        _ => match self.ctx.job_status(&key_s) {
                            Some(status) => serde_json::json!({ "status": status }),
                            None => Value::Null,
                        },
                    });
                }
                match self.eval(obj)? {
                    Value::Object(map) => match map.get(&key_s) {
                        Some(v) => v.clone(),
                        // GitHub's property names match whatever their case.
                        None if self.ctx.ignore_case() => map
                            .iter()
                            .find(|(k, _)| k.eq_ignore_ascii_case(&key_s))
                            .map_or(Value::Null, |(_, v)| v.clone()),
                        None => Value::Null,
                    },
                    Value::Array(items) => {
                        let idx = as_number(&key_v);
                        if idx >= 0.0 && idx.fract() == 0.0 {
                            items.get(idx as usize).cloned().unwrap_or(Value::Null)
                        } else {
                            Value::Null
                        }
                    }
                    _ => Value::Null,
                }
            }
            Expr::Not(a) => Value::Bool(!truthy(&self.eval(a)?)),
            Expr::Bin(BinOp::And, a, b) => {
                let l = self.eval(a)?;
                if truthy(&l) { self.eval(b)? } else { l }
            }
            Expr::Bin(BinOp::Or, a, b) => {
                let l = self.eval(a)?;
                if truthy(&l) { l } else { self.eval(b)? }
            }
            Expr::Bin(op, a, b) => {
                let l = self.eval(a)?;
                let r = self.eval(b)?;
                Value::Bool(compare(*op, &l, &r, self.ctx.ignore_case()))
            }
            Expr::Call(name, args, off) => self.call(name, args, *off)?,
        })
    }

    fn call(&mut self, name: &str, args: &[Expr], off: usize) -> Result<Value, ExprError> {
        let mut vals = Vec::with_capacity(args.len());
        for a in args {
            vals.push(self.eval(a)?);
        }
        let text = |i: usize| vals.get(i).map(to_text).unwrap_or_default();
        let out = match name {
            "success" => Value::Bool(self.ctx.upstream_succeeded()),
            "failure" => Value::Bool(self.ctx.upstream_failed()),
            "always" => Value::Bool(true),
            "cancelled" => Value::Bool(self.ctx.cancelled()),
            "hashFiles" => {
                let patterns: Vec<String> = vals.iter().map(to_text).collect();
                Value::String(
                    self.ctx
                        .hash_files(&patterns)
                        .map_err(|e| ExprError::at(off, e.to_string()))?,
                )
            }
            "toJSON" => Value::String(serde_json::to_string_pretty(&vals[0]).unwrap_or_default()),
            "contains" => match &vals[0] {
                Value::Array(items) => Value::Bool(
                    items
                        .iter()
                        .any(|i| compare(BinOp::Eq, i, &vals[1], self.ctx.ignore_case())),
                ),
                _ => Value::Bool(text(0).to_lowercase().contains(&text(1).to_lowercase())),
            },
            "startsWith" => Value::Bool(text(0).to_lowercase().starts_with(&text(1).to_lowercase())),
            "endsWith" => Value::Bool(text(0).to_lowercase().ends_with(&text(1).to_lowercase())),
            "join" => {
                let sep = if vals.len() > 1 { text(1) } else { ",".into() };
                match &vals[0] {
                    Value::Array(items) => Value::String(items.iter().map(to_text).collect::<Vec<_>>().join(&sep)),
                    other => Value::String(to_text(other)),
                }
            }
            "format" => Value::String(format_string(&text(0), &vals[1..]).map_err(|m| ExprError::at(off, m))?),
            "fromJSON" => {
                let s = text(0);
                if s.len() > MAX_STRING {
                    return Err(ExprError::at(off, "fromJSON input is too large"));
                }
                serde_json::from_str(&s).map_err(|e| ExprError::at(off, format!("fromJSON: {e}")))?
            }
            other => return Err(ExprError::at(off, format!("unknown function `{other}`"))),
        };
        if let Value::String(s) = &out
            && s.len() > MAX_STRING
        {
            return Err(ExprError::at(
                off,
                format!("`{name}` produced more than {MAX_STRING} bytes"),
            ));
        }
        Ok(out)
    }
}

fn compare(op: BinOp, l: &Value, r: &Value, ignore_case: bool) -> bool {
    use std::cmp::Ordering;
    let ord: Option<Ordering> = match (l, r) {
        (Value::String(a), Value::String(b)) if ignore_case => Some(a.to_lowercase().cmp(&b.to_lowercase())),
        (Value::String(a), Value::String(b)) => Some(a.cmp(b)),
        (Value::Null, Value::Null) => Some(Ordering::Equal),
        (Value::Bool(a), Value::Bool(b)) => Some(a.cmp(b)),
        (Value::Array(_) | Value::Object(_), _) | (_, Value::Array(_) | Value::Object(_)) => {
            return match op {
                BinOp::Eq => l == r,
                BinOp::Ne => l != r,
                _ => false,
            };
        }
        _ => as_number(l).partial_cmp(&as_number(r)),
    };
    match (op, ord) {
        (BinOp::Eq, o) => o == Some(Ordering::Equal),
        (BinOp::Ne, o) => o != Some(Ordering::Equal),
        (BinOp::Lt, Some(o)) => o == Ordering::Less,
        (BinOp::Le, Some(o)) => o != Ordering::Greater,
        (BinOp::Gt, Some(o)) => o == Ordering::Greater,
        (BinOp::Ge, Some(o)) => o != Ordering::Less,
        _ => false,
    }
}

/// `format('{0} and {1}', a, b)`; `{{` and `}}` are literal braces.
fn format_string(fmt: &str, args: &[Value]) -> Result<String, String> {
    let mut out = String::new();
    let mut chars = fmt.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                out.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                out.push('}');
            }
            '{' => {
                let mut idx = String::new();
                for d in chars.by_ref() {
                    if d == '}' {
                        break;
                    }
                    idx.push(d);
                }
                let i: usize = idx
                    .parse()
                    .map_err(|_| format!("format: bad placeholder `{{{idx}}}`"))?;
                let v = args
                    .get(i)
                    .ok_or_else(|| format!("format: no argument for `{{{i}}}`"))?;
                out.push_str(&to_text(v));
            }
            c => out.push(c),
        }
        if out.len() > MAX_STRING {
            return Err(format!("format produced more than {MAX_STRING} bytes"));
        }
    }
    Ok(out)
}

/// A `${{ expr }}` found in a string: byte range of the whole `${{...}}` and the inner source offset.
#[derive(Debug, Clone)]
pub struct Placeholder {
    pub start: usize,
    pub end: usize,
    pub inner_start: usize,
    pub expr: Expr,
}

/// Finds and parses every `${{ ... }}` in `s`.
pub fn placeholders(s: &str) -> Result<Vec<Placeholder>, ExprError> {
    placeholders_in(s, &NATIVE)
}

/// The same in a dialect's language.
pub fn placeholders_in(s: &str, lang: &Lang) -> Result<Vec<Placeholder>, ExprError> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(n) = s[from..].find("${{") {
        let start = from + n;
        let inner_start = start + 3;
        let Some(close) = closing(&s[inner_start..]) else {
            return Err(ExprError::at(inner_start, "unclosed `${{`").hint("close the expression with `}}`"));
        };
        let inner = &s[inner_start..inner_start + close];
        let expr = parse_in(inner, lang).map_err(|mut e| {
            e.offset += inner_start;
            e
        })?;
        let end = inner_start + close + 2;
        out.push(Placeholder {
            start,
            end,
            inner_start,
            expr,
        });
        from = end;
    }
    Ok(out)
}

/// Where the `}}` that closes an expression is: the first outside a
/// single-quoted string (`format('{{0}}')` holds braces of its own).
fn closing(s: &str) -> Option<usize> {
    let bytes = s.as_bytes();
    let mut quoted = false;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\'' => quoted = !quoted,
            b'}' if !quoted && bytes.get(i + 1) == Some(&b'}') => return Some(i),
            _ => {}
        }
        i += 1;
    }
    None
}

/// Replaces every `${{ ... }}` in `s` with its value.
pub fn interpolate(s: &str, ctx: &dyn Context) -> Result<String, ExprError> {
    interpolate_in(s, &NATIVE, ctx)
}

/// The same in a dialect's language.
pub fn interpolate_in(s: &str, lang: &Lang, ctx: &dyn Context) -> Result<String, ExprError> {
    let found = placeholders_in(s, lang)?;
    if found.is_empty() {
        return Ok(s.to_string());
    }
    let mut out = String::with_capacity(s.len());
    let mut last = 0;
    for p in found {
        out.push_str(&s[last..p.start]);
        let v = eval(&p.expr, ctx).map_err(|mut e| {
            e.offset += p.inner_start;
            e
        })?;
        out.push_str(&to_text(&v));
        last = p.end;
        if out.len() > MAX_STRING {
            return Err(ExprError::at(p.start, "interpolated string is too large"));
        }
    }
    out.push_str(&s[last..]);
    Ok(out)
}

impl fmt::Display for BinOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BinOp::Eq => "==",
            BinOp::Ne => "!=",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
            BinOp::And => "&&",
            BinOp::Or => "||",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Ctx {
        env: HashMap<&'static str, &'static str>,
        ok: bool,
    }
    impl Context for Ctx {
        fn env(&self, name: &str) -> Option<String> {
            self.env.get(name).map(|s| s.to_string())
        }
        fn var(&self, name: &str) -> Option<String> {
            (name == "REGION").then(|| "eu".to_string())
        }
        fn job_status(&self, job: &str) -> Option<String> {
            (job == "build").then(|| "success".to_string())
        }
        fn upstream_succeeded(&self) -> bool {
            self.ok
        }
    }

    fn ctx() -> Ctx {
        Ctx {
            env: HashMap::from([("BRANCH", "main"), ("N", "3"), ("LIST", "[1,2,3]")]),
            ok: true,
        }
    }

    fn ev(src: &str) -> Value {
        eval(&parse(src).unwrap_or_else(|e| panic!("{src}: {e:?}")), &ctx()).unwrap()
    }

    #[test]
    fn operators_and_precedence() {
        assert_eq!(ev("env.BRANCH == 'main' && env.N > 2"), Value::Bool(true));
        assert_eq!(ev("!(env.N >= 4) || false"), Value::Bool(true));
        assert_eq!(ev("1 < 2 == true"), Value::Bool(true));
        assert_eq!(ev("env.MISSING == null"), Value::Bool(true));
        assert_eq!(ev("'a' != 'b'"), Value::Bool(true));
        assert_eq!(ev("env.N <= 3"), Value::Bool(true));
    }

    #[test]
    fn contexts_and_functions() {
        assert_eq!(ev("vars.REGION"), Value::String("eu".into()));
        assert_eq!(ev("job.build.status == 'success'"), Value::Bool(true));
        assert_eq!(ev("job['build'].status"), Value::String("success".into()));
        assert_eq!(ev("contains(fromJSON(env.LIST), 2)"), Value::Bool(true));
        assert_eq!(ev("startsWith(env.BRANCH, 'MA')"), Value::Bool(true));
        assert_eq!(ev("endsWith('release/1.2', '.2')"), Value::Bool(true));
        assert_eq!(ev("join(fromJSON(env.LIST), '-')"), Value::String("1-2-3".into()));
        assert_eq!(ev("format('{0}/{1} {{x}}', 'a', 2)"), Value::String("a/2 {x}".into()));
        assert_eq!(ev("success() && always() && !failure()"), Value::Bool(true));
        assert_eq!(to_text(&ev("fromJSON('{\"a\":{\"b\":[5]}}').a.b[0]")), "5");
    }

    #[test]
    fn errors_point_at_the_offending_token() {
        let e = parse("env.A == 'x").unwrap_err();
        assert_eq!(e.offset, 9);
        let e = parse("env.A = 'x'").unwrap_err();
        assert_eq!(e.offset, 6);
        let e = parse("contain(env.A, 'x')").unwrap_err();
        assert!(e.hint.unwrap().contains("contains"));
        let e = parse("branch == 'main'").unwrap_err();
        assert!(e.message.contains("unknown name"));
        assert!(parse("success(1)").is_err());
        assert!(parse("").is_err());
        assert!(parse("a b").is_err());
    }

    #[test]
    fn depth_and_size_are_bounded() {
        let deep = "(".repeat(500) + "1" + &")".repeat(500);
        assert!(parse(&deep).is_err());
        let nots = "!".repeat(500) + "true";
        assert!(parse(&nots).is_err());
        assert!(parse(&"1 == ".repeat(2000)).is_err());
    }

    #[test]
    fn interpolation_replaces_placeholders() {
        let s = interpolate("on ${{ env.BRANCH }} x${{ env.N }}", &ctx()).unwrap();
        assert_eq!(s, "on main x3");
        assert!(placeholders("${{ env.A").is_err());
        let e = placeholders("ab ${{ env.A == }}").unwrap_err();
        assert!(e.offset >= 6, "{e:?}");
    }

    #[test]
    fn folding_evaluates_what_is_known_and_keeps_the_rest() {
        // `env` is known now; `vars` and `failure()` wait for the run.
        let e = parse("env.BRANCH == 'main' && (failure() || vars.REGION == env.N)").unwrap();
        let known = |r: &str| r == "env";
        let later = |c: &str| c == "failure";
        let folded = e.fold(&ctx(), &known, &later).unwrap();
        let (mut roots, mut calls) = (Vec::new(), Vec::new());
        folded.names(&mut roots, &mut calls);
        assert_eq!(roots.iter().map(|r| r.0.as_str()).collect::<Vec<_>>(), ["vars"]);
        assert_eq!(calls.iter().map(|c| c.0.as_str()).collect::<Vec<_>>(), ["failure"]);
        // Evaluated later, in a context where `env` says something else,
        // the folded parts keep what they were.
        let later_ctx = Ctx {
            env: HashMap::from([("BRANCH", "dev"), ("N", "eu")]),
            ok: false,
        };
        assert_eq!(eval(&folded, &later_ctx).unwrap(), Value::Bool(true));
        assert_eq!(eval(&e, &later_ctx).unwrap(), Value::Bool(false));
        // A filter stays a filter under the member read after it.
        let e = parse_in(
            "contains(fromJSON(env.LIST).*, vars.REGION)",
            &crate::pipeline::github::LANG,
        )
        .unwrap();
        let folded = e.fold(&ctx(), &known, &later).unwrap();
        let Expr::Call(_, args, _) = &folded else {
            panic!("{folded:?}")
        };
        assert!(
            matches!(&args[0], Expr::Filter(inner) if matches!(**inner, Expr::Lit(_))),
            "{folded:?}"
        );
        assert_eq!(eval(&folded, &ctx()).unwrap(), Value::Bool(false));
    }

    /// A GitHub context (names match whatever their case) whose `github`
    /// is lent, copied, or both (`root` here does not derive from
    /// `root_ref`: a test tells the two ways apart).
    #[derive(Default)]
    struct Gh {
        github: Value,
        lends: bool,
        copies: bool,
    }

    impl Context for Gh {
        fn root(&self, name: &str) -> Option<Value> {
            (self.copies && name == "github").then(|| self.github.clone())
        }
        fn root_ref(&self, name: &str) -> Option<&Value> {
            (self.lends && name == "github").then_some(&self.github)
        }
        fn ignore_case(&self) -> bool {
            true
        }
        fn env(&self, name: &str) -> Option<String> {
            Some(format!("env-{name}"))
        }
        fn var(&self, _: &str) -> Option<String> {
            None
        }
        fn job_status(&self, _: &str) -> Option<String> {
            None
        }
        fn upstream_succeeded(&self) -> bool {
            true
        }
    }

    #[test]
    fn githubs_names_match_whatever_their_case() {
        let lang = &crate::pipeline::github::LANG;
        let e = parse_in("toJson(FromJSON('{\"Name\": 1}').NAME)", lang).expect("parsed");
        let Expr::Call(name, args, _) = &e else { panic!("{e:?}") };
        assert_eq!(name, "toJSON");
        assert!(matches!(&args[0], Expr::Member(..)));
        assert_eq!(to_text(&eval(&e, &Gh::default()).expect("evaluated")), "1");
        // The native format keeps exact names.
        assert!(parse("fromjson('1')").is_err());
    }

    #[test]
    fn a_lent_context_reads_member_paths_as_a_copied_one_does() {
        let lang = &crate::pipeline::github::LANG;
        let github = serde_json::json!({
            "ref": "refs/heads/main",
            "event": {"pull_request": {"number": 7, "Labels": [{"name": "a"}, {"name": "b"}]}, "list": [1, 2]},
            "n": {"1": "one"},
        });
        // The same context, lending its root or only copying it.
        let lent = Gh {
            github: github.clone(),
            lends: true,
            copies: true,
        };
        let copied = Gh {
            github: github.clone(),
            lends: false,
            copies: true,
        };
        for src in [
            "github.ref",
            "github.event.pull_request.number",
            "github.EVENT.Pull_Request.labels[1].name",
            "github.event.list[0]",
            "github.event.list[5]",
            "github.event.list['1']",
            "github.event.list[1.5]",
            "github.n[1]",
            "github.missing.deeper",
            "github.event.pull_request.labels.*.name",
            "github.event['pull_request'].number",
            "env.HOME",
            "toJSON(github.event.list)",
        ] {
            let e = parse_in(src, lang).unwrap_or_else(|e| panic!("{src}: {e:?}"));
            let (a, b) = (eval(&e, &lent), eval(&e, &copied));
            assert_eq!(a.as_ref().ok(), b.as_ref().ok(), "{src}");
            assert!(a.is_ok(), "{src}: {a:?}");
        }
        // A path of literal keys is read in place: a context that only
        // lends (against the contract, to tell the ways apart) answers it.
        let only_lent = Gh {
            github,
            lends: true,
            copies: false,
        };
        let e = parse_in("github.event.pull_request.labels[1].name", lang).expect("parsed");
        assert_eq!(eval(&e, &only_lent).expect("evaluated"), Value::String("b".into()));
    }

    #[test]
    fn source_text_parses_back_to_the_same_expression() {
        let lang = &crate::pipeline::github::LANG;
        for src in [
            "!(env.A == 'it''s') && (fromJSON(env.LIST)[1] >= 2 || contains(steps.*.outcome, 'failure'))",
            "format('{0}}}', steps['my step'].outputs.x, 1.5, null, true)",
            "needs.build-x.outputs.v",
        ] {
            let e = parse_in(src, lang).unwrap_or_else(|e| panic!("{src}: {e:?}"));
            let again = parse_in(&e.to_source(), lang).unwrap_or_else(|err| panic!("{}: {err:?}", e.to_source()));
            assert_eq!(again.to_source(), e.to_source(), "{src}");
            assert_eq!(eval(&again, &ctx()).ok(), eval(&e, &ctx()).ok(), "{src}");
        }
        let folded = Expr::Lit(serde_json::json!({"a": ["x'y"]}));
        let back = parse_in(&folded.to_source(), lang).unwrap();
        assert_eq!(eval(&back, &ctx()).unwrap(), serde_json::json!({"a": ["x'y"]}));
    }

    #[test]
    fn status_functions_are_detected_and_job_refs_listed() {
        let e = parse("failure() && job.build.status == 'failure'").unwrap();
        assert!(e.uses_status_functions());
        let mut refs = Vec::new();
        e.job_refs(&mut refs);
        assert_eq!(refs[0].0, "build");
        assert!(!parse("env.X == '1'").unwrap().uses_status_functions());
    }
}
