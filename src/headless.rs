//! The plain and JSON front-end, for scripts, CI logs and pipes.
//!
//! Plain: `job > line` for output (job names padded to one width), one
//! `::` status line per job transition, and a summary table at the end.
//! JSON: one event per line, exactly as recorded in events.jsonl.
//! Like every front-end it holds no run logic: it prints events and sends
//! commands (cancel on Ctrl-C) through its link.

use std::collections::HashMap;
use std::future::Future;
use std::io::{self, Write};
use std::sync::Arc;
use std::time::Duration;

use crate::protocol::query::{LineKind, RecordedLine};
use crate::protocol::{
    Answer, Delivery, Event, EventKind, JobStatus, Link, LinkError, Query, RunSummary, Subscription, Verdict,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Plain,
    Json,
    /// Nothing at all (a run whose UI is elsewhere: its engine process).
    Silent,
}

/// Prints a run this process runs: subscribes, lets `begin` start it
/// (approving what was approved in advance), and prints until it finishes.
/// Returns its summary, or `None` when the stream ended without one.
pub async fn run<L: Link>(
    link: &L,
    format: Format,
    wait_approval: bool,
    begin: impl Future<Output = Result<(), LinkError>>,
) -> Result<Option<RunSummary>, LinkError> {
    let mut events = link.subscribe(0).await?;
    // Listen before the run starts: a signal arriving while no listener exists is lost.
    let mut signals = Signals::new();
    begin.await?;
    let mut printer = Printer::new(format);
    printer.wait_approval = wait_approval;
    follow(&mut events, link, &mut printer, &mut signals, OnSignal::Cancel).await
}

/// What a signal (Ctrl-C, SIGTERM, SIGHUP) does to a followed run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnSignal {
    /// Cancel the run, then go on printing until it has finished (the
    /// trackside that started it).
    Cancel,
    /// Stop following; the run goes on (an attached printer).
    Leave,
}

/// A batch this large means a flood of output ...
const BUSY_BATCH: usize = 64;
/// ... and the printer waits this long before it takes the next one.
const BUSY_GATHER: Duration = Duration::from_millis(2);

/// Prints a run's events until it finishes (its summary), the stream
/// ends, or a signal makes it leave (`None`).
pub async fn follow<L: Link>(
    events: &mut Subscription,
    link: &L,
    printer: &mut Printer,
    signals: &mut Signals,
    on_signal: OnSignal,
) -> Result<Option<RunSummary>, LinkError> {
    let mut interrupted = false;
    loop {
        tokio::select! {
            item = events.next() => match item {
                Some(item) => {
                    take(printer, link, &item).await;
                    // Drain what is already queued before flushing.
                    let mut batch = 1;
                    while printer.finished.is_none() {
                        match events.try_next() {
                            Some(item) => {
                                take(printer, link, &item).await;
                                batch += 1;
                            }
                            None => break,
                        }
                    }
                    printer.flush();
                    if printer.finished.is_some() {
                        break;
                    }
                    if batch >= BUSY_BATCH {
                        // A flood: let the next lines gather rather than
                        // wake for every few (the run's own threads need
                        // the CPU more than a printer does).
                        tokio::time::sleep(BUSY_GATHER).await;
                    }
                }
                None => break,
            },
            name = signals.recv(), if !interrupted => {
                interrupted = true;
                match on_signal {
                    OnSignal::Cancel => {
                        printer.note(&format!("{name}: cancelling running jobs (records are being written)"));
                        let _ = link.send(crate::protocol::Command::CancelAll).await;
                    }
                    OnSignal::Leave => {
                        printer.note(&format!("{name}: no longer following; the run goes on"));
                        return Ok(None);
                    }
                }
            }
        }
    }
    Ok(printer.finished.take())
}

/// Prints one item of a followed stream: first, in plain text, the lines of
/// its job that the stream skipped (this reader fell behind, or attached
/// after the run's replay let them go), asked of the run.
async fn take<L: Link>(printer: &mut Printer, link: &L, item: &Delivery) {
    if let Some(gap) = printer.gap(item) {
        let Gap {
            job,
            attempt,
            from,
            upto,
        } = gap;
        let mut sink = |l: &RecordedLine| printer.recorded(&job, l);
        if let Err(e) = print_recorded(link, &job, attempt, from, upto, &mut sink).await {
            printer.note(&format!(
                "lines {from}{} of {job} (attempt {attempt}) are not shown: {e}; `trackside logs` prints them from the record",
                upto.map_or("..".to_string(), |u| format!("..{u}"))
            ));
        }
    }
    printer.delivery(item);
}

/// Lines of the record one query asks for.
const LOG_PAGE: usize = 5_000;

/// Follows one job's log (`trackside logs RUN JOB --follow`): attempt
/// `attempt`'s lines so far, asked of the run, then its lines from
/// `events` as they come, each once and in order, until the job has ended
/// (no retry to come) or the run has. Lines the stream skipped (this
/// reader fell behind) are asked of the run and printed in their place; a
/// retry prints `--- attempt N ---` and goes on with it.
pub async fn follow_job<L: Link>(
    link: &L,
    events: &mut Subscription,
    job: &str,
    mut attempt: u32,
    print: &(dyn Fn(&RecordedLine) -> String + Sync),
    out: &mut (dyn FnMut(&str) + Send),
) -> Result<(), LinkError> {
    // What the record has, printed.
    macro_rules! recorded {
        ($from:expr, $upto:expr) => {
            print_recorded(link, job, attempt, $from, $upto, &mut |l| out(&print(l))).await?
        };
    }
    let mut printed = recorded!(0, None);
    while let Some(item) = events.next().await {
        let Delivery::Event(ev) = item else {
            continue;
        };
        // What the event brings, when it is the next line of this attempt.
        let live = match &ev.kind {
            EventKind::JobStarted { job: j, attempt: a } if j == job && *a != attempt => {
                recorded!(printed, None);
                attempt = *a;
                printed = 0;
                out(&format!("--- attempt {a} ---\n"));
                None
            }
            EventKind::StepStarted {
                job: j,
                attempt: a,
                step,
                line_no,
                ..
            } if j == job && *a == attempt && *line_no >= printed => Some((*line_no, LineKind::Step, step)),
            EventKind::LogLine {
                job: j,
                attempt: a,
                stream,
                line,
                line_no,
                ..
            } if j == job && *a == attempt && *line_no >= printed => {
                let kind = match stream {
                    crate::protocol::Stream::Stdout => LineKind::Out,
                    crate::protocol::Stream::Stderr => LineKind::Err,
                };
                Some((*line_no, kind, line))
            }
            // The attempt's log is complete now: whatever the stream skipped at its end.
            EventKind::JobFinished { job: j, .. } | EventKind::JobSkipped { job: j, .. } if j == job => {
                recorded!(printed, None);
                return Ok(());
            }
            EventKind::RunFinished { .. } => {
                recorded!(printed, None);
                return Ok(());
            }
            _ => None,
        };
        if let Some((line_no, kind, text)) = live {
            if line_no > printed {
                recorded!(printed, Some(line_no));
            }
            out(&print(&RecordedLine {
                ts_ms: ev.ts,
                kind,
                text: text.clone(),
            }));
            printed = line_no + 1;
        }
    }
    Ok(())
}

/// Hands entries `from..upto` (to the end of what is recorded without
/// `upto`) of `job`'s attempt to `sink`, asked of the run page by page;
/// returns the entry number it reached.
async fn print_recorded<L: Link>(
    link: &L,
    job: &str,
    attempt: u32,
    from: u64,
    upto: Option<u64>,
    sink: &mut (dyn FnMut(&RecordedLine) + Send),
) -> Result<u64, LinkError> {
    let mut at = from;
    loop {
        let left = upto.map_or(u64::MAX, |u| u.saturating_sub(at));
        let count = usize::try_from(left).unwrap_or(usize::MAX).min(LOG_PAGE);
        if count == 0 {
            return Ok(at);
        }
        let query = Query::Log {
            job: job.to_string(),
            attempt,
            from: usize::try_from(at).unwrap_or(usize::MAX),
            count,
        };
        let (lines, cut) = match link.query(query).await {
            Ok(Answer::Log { lines, cut }) => (lines, cut),
            // No line yet (the job has not started, or has not printed).
            Err(LinkError::Refused(_)) if at == 0 => return Ok(at),
            Err(e) => return Err(e),
            Ok(_) => return Err(LinkError::Connection("the run answered with something else".into())),
        };
        lines.iter().for_each(&mut *sink);
        at += lines.len() as u64;
        if lines.is_empty() || (lines.len() < count && !cut) {
            return Ok(at);
        }
    }
}

/// SIGINT, SIGTERM and SIGHUP, registered once for the whole run.
pub struct Signals {
    streams: Vec<(&'static str, tokio::signal::unix::Signal)>,
}

impl Signals {
    pub fn new() -> Self {
        use tokio::signal::unix::{SignalKind, signal};
        let kinds = [
            ("interrupted", SignalKind::interrupt()),
            ("terminated", SignalKind::terminate()),
            ("hung up", SignalKind::hangup()),
        ];
        Signals {
            streams: kinds
                .into_iter()
                .filter_map(|(name, k)| signal(k).ok().map(|s| (name, s)))
                .collect(),
        }
    }

    /// Waits for the next signal and names it.
    pub async fn recv(&mut self) -> &'static str {
        if self.streams.is_empty() {
            return std::future::pending().await;
        }
        let futures = self.streams.iter_mut().map(|(name, s)| {
            Box::pin(async move {
                s.recv().await;
                *name
            })
        });
        futures_select_all(futures).await
    }
}

impl Default for Signals {
    fn default() -> Self {
        Self::new()
    }
}

/// The first of several futures to finish.
async fn futures_select_all<F: std::future::Future<Output = &'static str> + Unpin>(
    futures: impl Iterator<Item = F>,
) -> &'static str {
    let mut futures: Vec<F> = futures.collect();
    std::future::poll_fn(move |cx| {
        for f in &mut futures {
            if let std::task::Poll::Ready(v) = std::pin::Pin::new(f).poll(cx) {
                return std::task::Poll::Ready(v);
            }
        }
        std::task::Poll::Pending
    })
    .await
}

pub struct Printer {
    format: Format,
    out: io::BufWriter<Box<dyn Write + Send>>,
    width: usize,
    finished: Option<RunSummary>,
    /// The run waits at gates for someone to approve from elsewhere
    /// (`run --wait-approval`): gate lines say how.
    pub wait_approval: bool,
    run_id: String,
    /// Per job, the attempt whose lines are printed and where they stand.
    seen: HashMap<String, Seen>,
    /// How many times the stream has said it skipped events.
    skips: u64,
    /// GitHub annotations so far, listed after the summary as GitHub lists
    /// them under a run.
    annotations: Vec<String>,
}

/// Where a job's printed log stands.
struct Seen {
    attempt: u32,
    /// The entry after the last one printed.
    next: u64,
    /// `skips` when the last one was printed.
    skips: u64,
}

/// Entries of a job's attempt to ask the run for before printing an
/// event: `from..upto`, or to the end of what is recorded.
#[derive(Debug, PartialEq, Eq)]
pub struct Gap {
    pub job: String,
    pub attempt: u32,
    pub from: u64,
    pub upto: Option<u64>,
}

impl Printer {
    pub fn new(format: Format) -> Self {
        Printer::to(format, Box::new(io::stdout()))
    }

    /// A printer writing to `out` instead of standard output.
    pub fn to(format: Format, out: Box<dyn Write + Send>) -> Self {
        Printer {
            format,
            out: io::BufWriter::with_capacity(64 * 1024, out),
            width: 8,
            finished: None,
            wait_approval: false,
            run_id: String::new(),
            seen: HashMap::new(),
            skips: 0,
            annotations: Vec::new(),
        }
    }

    /// What of `item`'s job the plain stream skipped and the record has,
    /// to print before it: the lines between the last one printed and a
    /// later one, or the rest of a finished job's log when the stream
    /// skipped anything since its last printed line. A job first seen
    /// mid-log (attached from now on) is followed from there.
    pub fn gap(&mut self, item: &Delivery) -> Option<Gap> {
        let Delivery::Event(ev) = item else {
            self.skips += 1;
            return None;
        };
        if self.format != Format::Plain {
            return None;
        }
        let skips = self.skips;
        let (job, attempt, line_no) = match &ev.kind {
            EventKind::JobStarted { job, attempt } => {
                let fresh = Seen {
                    attempt: *attempt,
                    next: 0,
                    skips,
                };
                self.seen.insert(job.clone(), fresh);
                return None;
            }
            EventKind::JobFinished { job, attempt, .. } => {
                let seen = self.seen.remove(job.as_str())?;
                return (seen.attempt == *attempt && seen.skips != skips).then(|| Gap {
                    job: job.clone(),
                    attempt: *attempt,
                    from: seen.next,
                    upto: None,
                });
            }
            EventKind::LogLine {
                job, attempt, line_no, ..
            }
            | EventKind::StepStarted {
                job, attempt, line_no, ..
            } => (job, *attempt, *line_no),
            _ => return None,
        };
        let fresh = Seen {
            attempt,
            next: line_no + 1,
            skips,
        };
        let Some(seen) = self.seen.get_mut(job.as_str()).filter(|s| s.attempt == attempt) else {
            self.seen.insert(job.clone(), fresh);
            return None;
        };
        let from = seen.next;
        *seen = Seen {
            next: seen.next.max(line_no + 1),
            ..fresh
        };
        (line_no > from).then(|| Gap {
            job: job.clone(),
            attempt,
            from,
            upto: Some(line_no),
        })
    }

    /// A line of `job`'s log from the record, as the stream prints it.
    pub fn recorded(&mut self, job: &str, line: &RecordedLine) {
        if line.kind != LineKind::Step {
            self.log_line(job, &line.text);
        }
    }

    /// `job > line` (or `job $ command` for a command a GitLab job echoes).
    fn log_line(&mut self, job: &str, line: &str) {
        let pad = self.width.saturating_sub(job.chars().count());
        let out = &mut self.out;
        let _ = out.write_all(job.as_bytes());
        let _ = write_spaces(out, pad);
        match line.strip_prefix(ECHOED_COMMAND) {
            Some(cmd) => {
                let _ = out.write_all(b" $ ");
                let _ = out.write_all(cmd.strip_suffix("\x1b[0;m").unwrap_or(cmd).as_bytes());
            }
            None => {
                let _ = out.write_all(b" > ");
                let _ = out.write_all(line.as_bytes());
            }
        }
        let _ = out.write_all(b"\n");
    }

    pub fn flush(&mut self) {
        // A closed stdout (`| head`) must not stop the run; output is lost, records are not.
        let _ = self.out.flush();
    }

    pub fn note(&mut self, text: &str) {
        if self.format == Format::Plain {
            let _ = writeln!(self.out, ":: {text}");
            self.flush();
        }
    }

    /// An item of a followed stream.
    pub fn delivery(&mut self, item: &Delivery) {
        match item {
            Delivery::Event(ev) => self.event(ev),
            // Log lines skipped come from the record (see `gap`); the
            // transitions are never skipped.
            Delivery::Missed { .. } => {}
        }
    }

    pub fn event(&mut self, ev: &Arc<Event>) {
        if let EventKind::RunFinished { summary } = &ev.kind {
            self.finished = Some(summary.clone());
        }
        match self.format {
            Format::Silent => {}
            Format::Json => {
                if let Ok(line) = serde_json::to_string(&**ev) {
                    let _ = writeln!(self.out, "{line}");
                }
            }
            Format::Plain => {
                if let EventKind::RunStarted { run_id, .. } = &ev.kind {
                    self.run_id.clone_from(run_id);
                }
                if let (EventKind::GateWaiting { job }, true) = (&ev.kind, self.wait_approval) {
                    let (w, run) = (self.width, &self.run_id);
                    let _ = writeln!(
                        self.out,
                        ":: {job:<w$} waiting for approval: `trackside approve {run} {job}`, or `trackside attach {run}`"
                    );
                    return;
                }
                // The bulk of any run, written straight out.
                if let EventKind::LogLine { job, line, .. } = &ev.kind {
                    self.log_line(job, line);
                    return;
                }
                if let (EventKind::Annotation { job, step, level, .. }, Some(text)) =
                    (&ev.kind, annotation_text(&ev.kind))
                {
                    self.annotations.push(format!("  {level:<7} {job} / {step}: {text}"));
                    return;
                }
                if let (EventKind::RunFinished { .. }, false) = (&ev.kind, self.annotations.is_empty()) {
                    if let Some(t) = plain_line(&ev.kind, &mut self.width) {
                        let _ = writeln!(self.out, "{t}");
                    }
                    let _ = writeln!(self.out, "\nAnnotations ({}):", self.annotations.len());
                    for a in &self.annotations {
                        let _ = writeln!(self.out, "{a}");
                    }
                    return;
                }
                let text = plain_line(&ev.kind, &mut self.width);
                if let Some(t) = text {
                    let _ = writeln!(self.out, "{t}");
                }
            }
        }
    }
}

/// `text` in lines of at most `width` characters, broken between words (a
/// longer word has a line of its own).
pub(crate) fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

/// The run as JUnit XML (`--junit-out`): a test suite named after the
/// pipeline, a test case per job (its time the job's, its class the stage
/// when it has one), failures with their class and reason, skipped jobs as
/// skipped, and a retried job's failed attempts as reruns: `flakyFailure`
/// when it passed in the end, `rerunFailure` when it did not.
pub fn junit(s: &RunSummary) -> Result<String, quick_junit::SerializeError> {
    use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestRerun, TestSuite};
    let mut suite = TestSuite::new(s.pipeline.as_str());
    for j in &s.jobs {
        let failed_attempts: Vec<&crate::protocol::event::AttemptRecord> =
            j.attempts.iter().filter(|a| a.failure_class.is_some()).collect();
        let mut status = match j.verdict {
            Verdict::Pass | Verdict::Flaky | Verdict::Cached => TestCaseStatus::success(),
            Verdict::Skipped | Verdict::Manual => {
                let mut st = TestCaseStatus::skipped();
                if let Some(r) = &j.reason {
                    st.set_message(r.as_str());
                }
                st
            }
            Verdict::Fail | Verdict::Cancelled | Verdict::Quarantined => {
                let kind = if j.failure_class == Some(crate::protocol::FailureClass::Script) {
                    NonSuccessKind::Failure
                } else {
                    NonSuccessKind::Error
                };
                let mut st = TestCaseStatus::non_success(kind);
                st.set_message(j.reason.as_deref().map(first_line).unwrap_or_default());
                if let Some(c) = j.failure_class {
                    st.set_type(c.as_str());
                }
                st
            }
        };
        // Every failed attempt but the one the status reports already.
        let earlier = match j.verdict {
            Verdict::Fail | Verdict::Cancelled | Verdict::Quarantined => {
                &failed_attempts[..failed_attempts.len().saturating_sub(1)]
            }
            _ => &failed_attempts[..],
        };
        for a in earlier {
            let kind = if a.failure_class == Some(crate::protocol::FailureClass::Script) {
                NonSuccessKind::Failure
            } else {
                NonSuccessKind::Error
            };
            let mut rerun = TestRerun::new(kind);
            if let Some(c) = a.failure_class {
                rerun.set_type(c.as_str());
                rerun.set_message(format!(
                    "attempt {} failed ({c}{})",
                    a.number,
                    a.exit_code.map(|e| format!(", exit {e}")).unwrap_or_default()
                ));
            }
            if let Some(end) = a.ended_ms {
                rerun.set_time(std::time::Duration::from_millis(end.saturating_sub(a.started_ms)));
            }
            status.add_rerun(rerun);
        }
        let mut case = TestCase::new(j.name.as_str(), status);
        case.set_classname(j.stage.as_deref().unwrap_or(s.pipeline.as_str()));
        case.set_time(std::time::Duration::from_millis(j.duration_ms));
        suite.add_test_case(case);
    }
    let mut report = Report::new(format!("trackside run {}", s.run_id));
    report.set_time(std::time::Duration::from_millis(s.duration_ms));
    report.add_test_suite(suite);
    report.to_string()
}

/// A message's first line, and how many more there are (`trackside logs`
/// shows them): a line of the status or the table stays one line.
fn first_line(m: &str) -> String {
    let mut lines = m.lines();
    let first = lines.next().unwrap_or("").trim_end();
    match lines.count() {
        0 => first.to_string(),
        n => format!(
            "{} (+{n} more line{} in the log)",
            first.trim_end_matches(':'),
            if n == 1 { "" } else { "s" }
        ),
    }
}

/// An annotation as one line: `file:line:col: title: message` (the
/// place and title when it has them).
pub fn annotation_text(kind: &EventKind) -> Option<String> {
    let EventKind::Annotation {
        message,
        title,
        file,
        line,
        col,
        ..
    } = kind
    else {
        return None;
    };
    let mut s = String::new();
    if let Some(f) = file {
        s.push_str(f);
        if let Some(l) = line {
            s.push_str(&format!(":{l}"));
            if let Some(c) = col {
                s.push_str(&format!(":{c}"));
            }
        }
        s.push_str(": ");
    }
    if let Some(t) = title {
        s.push_str(t);
        s.push_str(": ");
    }
    s.push_str(&message.replace('\n', " "));
    Some(s)
}

fn write_spaces(out: &mut impl Write, n: usize) -> io::Result<()> {
    const SPACES: &[u8; 64] = &[b' '; 64];
    let mut left = n;
    while left > 0 {
        let k = left.min(SPACES.len());
        out.write_all(&SPACES[..k])?;
        left -= k;
    }
    Ok(())
}

/// Failed test cases shown in the text output, at most (the UI and
/// `trackside tests` list them all).
const TESTS_SHOWN: usize = 5;

/// `:: job  failed test: name: message`, one line per failed test case
/// (then those that passed only on a rerun), at most [`TESTS_SHOWN`].
fn test_lines(job: &str, w: usize, report: &crate::protocol::TestReport) -> String {
    let mut lines: Vec<String> = report
        .cases
        .iter()
        .take(TESTS_SHOWN)
        .map(|c| {
            let what = match (c.outcome.as_str(), c.quarantined) {
                ("failed", true) => "failed test (quarantined)",
                ("failed", false) => "failed test",
                _ => "passed on a rerun",
            };
            let msg = c
                .message
                .as_deref()
                .map(|m| format!(": {}", first_line(m)))
                .unwrap_or_default();
            format!(":: {job:<w$} {what}: {}{msg}", c.name)
        })
        .collect();
    let more = (report.failed + report.rerun).saturating_sub(lines.len());
    if more > 0 {
        lines.push(format!(":: {job:<w$}   and {more} more (trackside tests lists them)"));
    }
    lines.join("\n")
}

pub fn seconds(ms: u64) -> String {
    let s = ms as f64 / 1000.0;
    if s < 60.0 {
        format!("{s:.1}s")
    } else {
        format!("{}m{:02}s", ms / 60_000, (ms / 1000) % 60)
    }
}

/// The plain-text line for an event (None for events not shown).
/// How a GitLab job's log line that echoes a command starts (the runner's
/// green `$ `).
pub const ECHOED_COMMAND: &str = "\x1b[32m$ ";

pub fn plain_line(kind: &EventKind, width: &mut usize) -> Option<String> {
    let w = *width;
    Some(match kind {
        // The rollout's notes arrive as log lines; its status is for --json and the UI.
        EventKind::Rollout { .. }
        | EventKind::RolloutDecision { .. }
        | EventKind::Forecast { .. }
        | EventKind::History { .. } => return None,
        // Its line is in the log; the list comes after the summary.
        EventKind::Annotation { .. } => return None,
        // The group's `▸ title` line is in the log.
        EventKind::LogGroup { .. } => return None,
        // Its `trackside: running on swarm node ...` line says it.
        EventKind::JobPlaced { .. } | EventKind::ClusterNodes { .. } => return None,
        EventKind::Steered { what, by } => format!(":: {what} (by {by})"),
        EventKind::Approved {
            job,
            by,
            given,
            required,
            waiting_for,
            ..
        } => match waiting_for {
            Some(more) => format!(":: {job} approved by {by} ({given} of {required}); waiting for {more}"),
            None => format!(":: {job} approved by {by} ({given} of {required}): the gate opens"),
        },
        EventKind::RunStarted {
            run_id,
            pipeline,
            jobs,
            max_parallel,
        } => {
            *width = jobs.iter().map(|j| j.chars().count()).max().unwrap_or(8);
            format!(
                ":: run {run_id} of `{pipeline}`: {} job{}, up to {max_parallel} at once",
                jobs.len(),
                if jobs.len() == 1 { "" } else { "s" }
            )
        }
        // A command a GitLab job echoes (`$ make`, green) reads as
        // gitlab-ci-local prints it: `job $ make`.
        EventKind::LogLine { job, line, .. } => match line.strip_prefix(ECHOED_COMMAND) {
            Some(cmd) => format!("{job:<w$} $ {}", cmd.strip_suffix("\x1b[0;m").unwrap_or(cmd)),
            None => format!("{job:<w$} > {line}"),
        },
        EventKind::JobStarted { job, attempt } if *attempt > 1 => format!(":: {job:<w$} started (attempt {attempt})"),
        EventKind::JobStarted { job, .. } => format!(":: {job:<w$} started"),
        EventKind::JobFinished {
            job,
            status,
            exit_code,
            failure_class,
            duration_ms,
            flaky,
            message,
            cached,
            diagnosis,
            ..
        } => {
            let d = seconds(*duration_ms);
            match status {
                JobStatus::Succeeded if *flaky => format!(":: {job:<w$} FLAKY: passed after a retry, in {d}"),
                JobStatus::Succeeded if cached.is_some() => format!(
                    ":: {job:<w$} CACHED (key {}) in {d}",
                    cached.as_deref().map_or("", |k| &k[..16.min(k.len())])
                ),
                JobStatus::Succeeded => format!(":: {job:<w$} PASS in {d}"),
                JobStatus::Cancelled => format!(":: {job:<w$} CANCELLED"),
                _ => {
                    let class = failure_class.map_or("", |c| c.as_str());
                    let code = exit_code.map(|c| format!("exit {c}, ")).unwrap_or_default();
                    let msg = message
                        .as_deref()
                        .map(|m| format!(": {}", first_line(m)))
                        .unwrap_or_default();
                    let why = diagnosis
                        .as_deref()
                        .map(|d| format!("\n::   why: {} ({})", d.hint, d.runbook))
                        .unwrap_or_default();
                    format!(":: {job:<w$} FAIL ({code}{class}) in {d}{msg}{why}")
                }
            }
        }
        EventKind::JobRetrying {
            job,
            attempt,
            delay_ms,
            failure_class,
            exit_code,
            diagnosis,
        } => format!(
            ":: {job:<w$} failed ({}{failure_class}{}); retrying in {} (attempt {attempt})",
            exit_code.map(|c| format!("exit {c}, ")).unwrap_or_default(),
            diagnosis
                .as_deref()
                .map(|d| format!(": {}", d.title))
                .unwrap_or_default(),
            seconds(*delay_ms)
        ),
        EventKind::TestsReported { report, .. } if report.failed == 0 && report.rerun == 0 => return None,
        EventKind::TestsReported { job, report, .. } => test_lines(job, w, report),
        EventKind::JobSkipped { job, reason } => format!(":: {job:<w$} skipped: {reason}"),
        EventKind::JobDelayed { job, start_in_ms } => format!(
            ":: {job:<w$} delayed: starts in {} (approving it starts it at once)",
            seconds(*start_in_ms)
        ),
        EventKind::JobWaiting { job, reason } => format!(":: {job:<w$} {reason}"),
        EventKind::JobPreempted { job, attempt, by } => {
            format!(":: {job:<w$} attempt {attempt} preempted by run {by} (higher priority); queued again")
        }
        EventKind::Parallelism {
            from, limit, reason, ..
        } => {
            format!(":: -j auto: {from} -> {limit} jobs at once: {reason}")
        }
        EventKind::Breaker {
            dependency,
            phase,
            reason,
            probe_in_ms,
        } => {
            let phase = match phase {
                crate::protocol::event::BreakerPhase::Open => "open",
                crate::protocol::event::BreakerPhase::HalfOpen => "half-open",
                crate::protocol::event::BreakerPhase::Closed => "closed",
            };
            match probe_in_ms {
                Some(ms) => format!(
                    ":: circuit {phase}: {dependency}: {reason}; jobs that need it are held, next probe in {} s",
                    ms.div_ceil(1000)
                ),
                None => format!(":: circuit {phase}: {dependency}: {reason}"),
            }
        }
        // The header's numbers, for the UI and --json.
        EventKind::Resources { .. } => return None,
        EventKind::GateWaiting { job } => format!(":: {job:<w$} waiting for approval (headless: --approve {job})"),
        EventKind::JobReset { job, reason } => format!(":: {job:<w$} reset: {reason}"),
        EventKind::PipelineChanged { .. } => format!(":: {}", change_summary(kind)),
        EventKind::PipelineInvalid { file, diagnostics } => {
            let mut s = format!(":: {file} was edited but is invalid; the run goes on unchanged:");
            for d in diagnostics {
                s.push_str(&format!("\n::   {d}"));
            }
            s
        }
        EventKind::JobKept { job, .. } => format!(":: {job:<w$} kept: it passed before trackside stopped"),
        EventKind::Resumed { kept, interrupted } => {
            let list = |v: &[String]| if v.is_empty() { "none".to_string() } else { v.join(", ") };
            format!(
                ":: resumed after trackside stopped: {} kept ({}); interrupted, to run again: {}",
                kept.len(),
                list(kept),
                list(interrupted)
            )
        }
        EventKind::SchedulingPaused => ":: scheduling paused".into(),
        EventKind::SchedulingResumed => ":: scheduling resumed".into(),
        EventKind::RunFinished { summary } => summary_table(summary),
        EventKind::JobQueued { .. }
        | EventKind::PlanChanged { .. }
        | EventKind::StepStarted { .. }
        | EventKind::StepFinished { .. } => return None,
    })
}

/// "pipeline file changed: added x; changed y; ..." for a `PipelineChanged` event.
pub fn change_summary(kind: &EventKind) -> String {
    let EventKind::PipelineChanged {
        added,
        removed,
        changed,
        kept,
        cause,
    } = kind
    else {
        return String::new();
    };
    let mut parts = Vec::new();
    for (word, names) in [("added", added), ("removed", removed), ("changed", changed)] {
        if !names.is_empty() {
            parts.push(format!("{word} {}", names.join(", ")));
        }
    }
    if !kept.is_empty() {
        parts.push(format!("{} already started, kept as they were", kept.join(", ")));
    }
    let what = cause.as_deref().unwrap_or("pipeline file changed");
    if parts.is_empty() {
        format!("{what}: nothing that affects this run")
    } else {
        format!("{what}: {}", parts.join("; "))
    }
}

/// The final table: job, verdict, attempts, duration, failure class.
pub fn summary_table(s: &RunSummary) -> String {
    let w = s.jobs.iter().map(|j| j.name.chars().count()).max().unwrap_or(3).max(3);
    // A GitLab pipeline's stages and coverage get columns of their own.
    let stage_w = s
        .jobs
        .iter()
        .filter_map(|j| j.stage.as_deref())
        .map(|st| st.chars().count())
        .max()
        .map(|n| n.max(5));
    let with_coverage = s.jobs.iter().any(|j| j.coverage.is_some());
    let stage_col = |st: Option<&str>| match stage_w {
        Some(sw) => format!("{:<sw$}  ", st.unwrap_or("-")),
        None => String::new(),
    };
    let coverage_col = |c: Option<&str>| {
        if with_coverage {
            format!("{:>8}  ", c.map(|c| format!("{c}%")).unwrap_or_else(|| "-".into()))
        } else {
            String::new()
        }
    };
    let mut out = String::new();
    out.push('\n');
    // Wide enough for QUARANTINED when a job has it.
    let vw = if s.jobs.iter().any(|j| j.verdict == Verdict::Quarantined) {
        11
    } else {
        9
    };
    out.push_str(&format!(
        "{:<w$}  {}{:<vw$}  {:>8}  {:>9}  {}{}\n",
        "JOB",
        stage_col(Some("STAGE")),
        "STATUS",
        "ATTEMPTS",
        "DURATION",
        if with_coverage {
            format!("{:>8}  ", "COVERAGE")
        } else {
            String::new()
        },
        "CLASS / REASON"
    ));
    for j in &s.jobs {
        let verdict = match (j.verdict, j.allow_failure) {
            (Verdict::Fail, true) => "FAIL(ok)".to_string(),
            (v, _) => v.as_str().to_string(),
        };
        let reason = j.reason.as_deref().map(first_line);
        let detail = match (j.failure_class, reason) {
            (Some(c), Some(r)) if j.verdict != Verdict::Cancelled => format!("{c}: {r}"),
            (Some(c), None) => c.to_string(),
            (_, Some(r)) => r,
            (None, None) => String::new(),
        };
        out.push_str(&format!(
            "{:<w$}  {}{:<vw$}  {:>8}  {:>9}  {}{}\n",
            j.name,
            stage_col(j.stage.as_deref()),
            verdict,
            // The last attempt's number: a resumed run's attempts go on
            // from the first part's.
            j.attempts.last().map_or(0, |a| a.number),
            if j.attempts.is_empty() {
                "-".into()
            } else {
                seconds(j.duration_ms)
            },
            coverage_col(j.coverage.as_deref()),
            detail
        ));
    }
    let explained: Vec<_> = s
        .jobs
        .iter()
        .filter(|j| matches!(j.verdict, Verdict::Fail | Verdict::Quarantined))
        .filter_map(|j| Some((j, j.attempts.last()?.diagnosis.as_deref()?)))
        .collect();
    if !explained.is_empty() {
        out.push_str("\nwhy:\n");
        // Wrapped for an 80-column terminal, under the job's name.
        let width = 78usize.saturating_sub(w + 4).max(30);
        for (j, d) in explained {
            let text = format!(
                "{} (runbook: {}; more: trackside explain {} {})",
                d.hint, d.runbook, s.run_id, j.name
            );
            for (i, line) in wrap(&text, width).iter().enumerate() {
                let name = if i == 0 { j.name.as_str() } else { "" };
                out.push_str(&format!("  {name:<w$}  {line}\n"));
            }
        }
    }
    if let Some(r) = &s.repeat {
        out.push_str(&format!(
            "\nrepeat `{}`: {} runs, {} passed ({} only after a retry), {} failed; flake rate {:.1}%\n",
            r.job,
            r.runs,
            r.passed,
            r.flaky,
            r.failed,
            r.flake_rate() * 100.0
        ));
    }
    out.push_str(&format!(
        "\n{}: {} in {} (run {}; `trackside logs {} JOB` shows a job's log)",
        match s.result {
            crate::protocol::RunResult::Passed => "PASSED",
            crate::protocol::RunResult::Failed => "FAILED",
            crate::protocol::RunResult::Blocked => "BLOCKED",
            crate::protocol::RunResult::Cancelled => "CANCELLED",
        },
        s.message,
        seconds(s.duration_ms),
        s.run_id,
        s.run_id
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A run whose record holds `records[attempt - 1]` for job `build`
    /// (and `other` for job `other`), answering at most two lines a query
    /// (cut, as a size limit would), and the first query only with what
    /// was recorded when following began.
    struct Record {
        records: Vec<Vec<&'static str>>,
        other: Vec<&'static str>,
        at_start: usize,
        asked: Mutex<Vec<(u32, usize, usize)>>,
    }

    impl Link for Record {
        async fn subscribe(&self, _: u64) -> Result<Subscription, LinkError> {
            Err(LinkError::Ended)
        }
        async fn send(&self, _: crate::protocol::Command) -> Result<String, LinkError> {
            Err(LinkError::ReadOnly)
        }
        async fn query(&self, query: Query) -> Result<Answer, LinkError> {
            let Query::Log {
                job,
                attempt,
                from,
                count,
            } = query
            else {
                return Err(LinkError::Refused("only logs".into()));
            };
            let mut asked = self.asked.lock().unwrap();
            let first = asked.is_empty();
            asked.push((attempt, from, count));
            let record = if job == "other" {
                &self.other
            } else {
                &self.records[attempt as usize - 1]
            };
            let end = if first { self.at_start } else { record.len() };
            let lines: Vec<RecordedLine> = record[from.min(end)..end.min(from.saturating_add(count))]
                .iter()
                .take(2)
                .map(|t| RecordedLine {
                    ts_ms: 0,
                    kind: LineKind::Out,
                    text: (*t).into(),
                })
                .collect();
            let cut = lines.len() == 2 && count > 2 && from + 2 < end;
            Ok(Answer::Log { lines, cut })
        }
        fn run_id(&self) -> &str {
            "r"
        }
        fn run_dir(&self) -> &std::path::Path {
            std::path::Path::new("/nonexistent")
        }
    }

    fn event(seq: u64, kind: EventKind) -> Delivery {
        Delivery::Event(Arc::new(Event { seq, ts: 0, kind }))
    }

    fn line(seq: u64, attempt: u32, line_no: u64, text: &str) -> Delivery {
        job_line(seq, "build", attempt, line_no, text)
    }

    fn job_line(seq: u64, job: &str, attempt: u32, line_no: u64, text: &str) -> Delivery {
        event(
            seq,
            EventKind::LogLine {
                job: job.into(),
                attempt,
                step: "s".into(),
                stream: crate::protocol::Stream::Stdout,
                line: text.into(),
                line_no,
            },
        )
    }

    /// Lines the stream skipped come from the record, in their place; a
    /// retry goes on with the next attempt; every line once, in order.
    #[tokio::test]
    async fn a_followed_job_fills_what_the_stream_skipped_from_the_record() {
        let link = Record {
            records: vec![
                vec!["a0", "a1", "a2", "a3", "a4", "a5", "a6", "a7", "a8"],
                vec!["b0", "b1", "b2"],
            ],
            other: Vec::new(),
            at_start: 2,
            asked: Mutex::default(),
        };
        let deliveries = vec![
            line(10, 1, 1, "a1"), // printed already from the record
            line(11, 1, 2, "a2"),
            Delivery::Missed { from: 12, to: 14 },
            line(15, 1, 6, "a6"),
            event(
                16,
                EventKind::JobStarted {
                    job: "build".into(),
                    attempt: 2,
                },
            ),
            line(17, 2, 0, "b0"),
            Delivery::Missed { from: 18, to: 19 },
            event(
                20,
                EventKind::JobFinished {
                    job: "build".into(),
                    attempt: 2,
                    status: JobStatus::Succeeded,
                    exit_code: Some(0),
                    failure_class: None,
                    duration_ms: 1,
                    flaky: false,
                    message: None,
                    cached: None,
                    diagnosis: None,
                },
            ),
        ];
        let mut events = Subscription::remote(futures_util::stream::iter(deliveries));
        let mut printed = String::new();
        let print = |l: &RecordedLine| format!("{}\n", l.text);
        follow_job(&link, &mut events, "build", 1, &print, &mut |t| printed.push_str(t))
            .await
            .unwrap();
        assert_eq!(
            printed,
            "a0\na1\na2\na3\na4\na5\na6\na7\na8\n--- attempt 2 ---\nb0\nb1\nb2\n"
        );
        let asked = link.asked.lock().unwrap().clone();
        // The start, the gap before a6 (two pages: the first was cut), the
        // rest of attempt 1 at the retry, the rest of attempt 2 at its end.
        assert_eq!(
            asked.iter().map(|&(a, from, _)| (a, from)).collect::<Vec<_>>(),
            [(1, 0), (1, 3), (1, 5), (1, 7), (2, 1)]
        );
        assert_eq!(asked[1].2, 3, "the gap asks only for what is missing");
    }

    fn started(seq: u64, job: &str) -> Delivery {
        event(
            seq,
            EventKind::JobStarted {
                job: job.into(),
                attempt: 1,
            },
        )
    }

    fn finished(seq: u64, job: &str) -> Delivery {
        event(
            seq,
            EventKind::JobFinished {
                job: job.into(),
                attempt: 1,
                status: JobStatus::Succeeded,
                exit_code: Some(0),
                failure_class: None,
                duration_ms: 1,
                flaky: false,
                message: None,
                cached: None,
                diagnosis: None,
            },
        )
    }

    /// What a test printer wrote.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// The plain stream prints what it skipped from the record, in its
    /// place: lines between two it got, and the end of a job it stopped
    /// getting lines of; a job whose lines all came asks for nothing.
    #[tokio::test]
    async fn the_plain_stream_prints_what_it_skipped_from_the_record() {
        let link = Record {
            records: vec![vec!["a0", "a1", "a2", "a3", "a4", "a5"]],
            other: vec!["o0"],
            at_start: usize::MAX,
            asked: Mutex::default(),
        };
        let items = [
            started(0, "build"),
            started(1, "other"),
            line(2, 1, 0, "a0"),
            Delivery::Missed { from: 3, to: 4 },
            line(5, 1, 3, "a3"),
            job_line(6, "other", 1, 0, "o0"),
            finished(7, "other"),
            Delivery::Missed { from: 8, to: 9 },
            finished(10, "build"),
        ];
        let out = Shared::default();
        let mut printer = Printer::to(Format::Plain, Box::new(out.clone()));
        for item in &items {
            take(&mut printer, &link, item).await;
        }
        printer.flush();
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().filter(|l| l.contains(" > ")).collect();
        assert_eq!(
            lines,
            [
                "build    > a0",
                "build    > a1",
                "build    > a2",
                "build    > a3",
                "other    > o0",
                "build    > a4",
                "build    > a5"
            ],
            "{text}"
        );
        // The gap before a3, and the end of build; `other` had every line.
        let asked: Vec<(usize, usize)> = link.asked.lock().unwrap().iter().map(|&(_, f, c)| (f, c)).collect();
        assert_eq!(asked[0], (1, 2));
        assert_eq!(asked[1].0, 4);
        assert_eq!(asked.len(), 2, "{asked:?}");
    }
}
