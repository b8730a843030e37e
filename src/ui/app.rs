//! UI state and key handling, as a plain function: a key in, commands for
//! the engine out. No terminal, no engine, no clock: tests drive it directly.

use crossterm::event::{KeyCode, KeyEvent, MouseButton, MouseEvent, MouseEventKind};
use ratatui::layout::{Position, Rect};

use crate::protocol::JobStatus;

use super::keys::{Action, Scope, action_for};
use super::model::Model;
use super::theme::Theme;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Focus {
    Jobs,
    Log,
    Detail,
}

/// What the UI asks of the engine (or of itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Approve(String),
    Retry(String),
    RerunFailed,
    Cancel(String),
    CancelAll,
    Pause,
    Resume,
    /// Leave; `cancel` = stop running jobs first.
    Quit {
        cancel: bool,
    },
    /// Leave the run going, attachable.
    Detach,
    /// Suspend the UI for a shell in the job's (failed) container.
    Shell(String),
    /// Steer a deploy job's rollout.
    Rollout(String, crate::protocol::RolloutCommand),
    /// Make a service's previous revision stable again (its rollout is over).
    RollbackService(String),
    /// Show the live services (the run's screen comes back after).
    Services,
    /// Close a dependency's circuit breaker by hand.
    CloseBreaker(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    Normal,
    Help,
    /// The selected job's test cases, from this row on.
    Tests(usize),
    /// The pipeline's recent runs, from this row on.
    Dashboard(usize),
    /// The swarm's nodes, from this row on.
    Nodes(usize),
    /// A y/n question; `yes` is sent on `y`.
    Confirm {
        question: String,
        yes: Vec<Command>,
    },
    /// A question answered by typing `expected` and Enter.
    TypedConfirm {
        question: String,
        expected: String,
        typed: String,
        yes: Vec<Command>,
    },
    /// Typing a log search (`/` in the log pane).
    Search(String),
    /// Typing a job-name filter (`/` in the jobs pane).
    Filter(String),
}

/// Most log lines from before the in-memory window held at once: a window
/// around the view, read back from the run's log file as it moves.
pub const OLDER_WINDOW: usize = 2_000;
/// Most matches kept of a search through the lines only on disk.
pub const MAX_DISK_HITS: usize = 100_000;

/// Log lines from before the in-memory window, read back from the run's
/// log file: entries `start..start + asked` of attempt `key` (fewer when
/// the file has fewer).
pub struct OlderLines {
    pub key: (usize, u32),
    pub start: usize,
    /// Entries covered: what was asked, or only what came when the answer
    /// was cut at its size limit.
    pub asked: usize,
    /// The answer was cut at its size limit (very long lines).
    pub cut: bool,
    pub lines: Vec<super::model::LogLine>,
}

/// Lines the view needs from the run's log file: entries
/// `from..from + count` of attempt `key` (job index, attempt).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OlderRequest {
    pub key: (usize, u32),
    pub from: usize,
    pub count: usize,
}

/// A search to run through lines only on disk: entries `from..to` of
/// attempt `key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanRequest {
    pub key: (usize, u32),
    pub query: String,
    pub from: usize,
    pub to: usize,
}

/// What the search found among the lines only on disk, up to line `upto`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskHits {
    pub key: (usize, u32),
    pub query: String,
    pub upto: usize,
    pub lines: Vec<usize>,
    /// It stopped at [`MAX_DISK_HITS`].
    pub capped: bool,
}

pub struct App {
    pub model: Model,
    pub older: Option<OlderLines>,
    pub theme: Theme,
    pub selected: usize,
    pub focus: Focus,
    pub mode: Mode,
    pub follow: bool,
    pub wrap: bool,
    /// Ended groups of the log (GitHub's `::group::`) shown whole; folded
    /// under their title line otherwise.
    pub unfold: bool,
    pub list_mode: bool,
    /// Attempt shown in the log (None = the latest).
    pub attempt: Option<u32>,
    /// First log line shown when not following (index over the whole log).
    pub log_top: usize,
    /// Height of the log view at the last draw (for paging).
    pub log_height: usize,
    /// Width of the log's text at the last draw (for wrapping into rows).
    pub log_width: usize,
    /// With `wrap`: the first row shown of line `log_top` (a long line
    /// takes several rows; scrolling, paging and `G` count rows on screen).
    pub log_row: usize,
    pub search: Option<String>,
    /// A search waits for the lines only on disk before it jumps.
    search_waits: bool,
    /// Matches of the search among the lines only on disk.
    pub disk_hits: Option<DiskHits>,
    pub filter: String,
    pub status: Option<String>,
    /// Current time (unix ms), set by the loop before drawing.
    pub now: u64,
    /// Whether the terminal is wide enough for side-by-side panes.
    pub wide: bool,
    /// A rollout command sent from here whose answer has not come yet: the
    /// job, and what was sent. The prompt line shows the answer (taken, or
    /// ignored and why), never just "sent".
    pub awaiting_rollout: Option<(String, String)>,
    /// First line of the help overlay shown (it scrolls on small screens).
    pub help_top: usize,
    /// First row of the detail pane shown (it scrolls when it does not fit).
    pub detail_top: usize,
    /// How far the detail pane can scroll, at the last draw.
    pub detail_max_top: usize,
    /// Watching only (`attach --read-only`): steering keys say why they do nothing.
    pub read_only: bool,
    /// Attached to a run another trackside runs: quitting only leaves.
    pub attached: bool,
    /// The run goes on without this UI (`d`): it runs in a process of its own.
    pub detachable: bool,
    /// Who steers from here (`user@host`): what others do shows in the prompt line.
    pub me: String,
    /// Ring the terminal bell for what needs a person: a failed job, a
    /// waiting gate, the run's end.
    pub bell: bool,
    /// Bells owed since the last frame (the loop rings them).
    pub bells: u32,
}

/// How far a key scrolls an overlay (help, tests, history); `None`: it closes it.
fn overlay_scroll(key: &KeyEvent) -> Option<isize> {
    match key.code {
        KeyCode::Down | KeyCode::Char('j') => Some(1),
        KeyCode::Up | KeyCode::Char('k') => Some(-1),
        KeyCode::PageDown => Some(10),
        KeyCode::PageUp => Some(-10),
        _ => None,
    }
}

impl App {
    pub fn new(theme: Theme) -> Self {
        App {
            model: Model::default(),
            older: None,
            theme,
            selected: 0,
            focus: Focus::Jobs,
            mode: Mode::Normal,
            follow: true,
            wrap: false,
            unfold: false,
            list_mode: false,
            attempt: None,
            log_top: 0,
            log_height: 10,
            log_width: 80,
            log_row: 0,
            search: None,
            search_waits: false,
            disk_hits: None,
            filter: String::new(),
            status: None,
            now: 0,
            wide: true,
            awaiting_rollout: None,
            help_top: 0,
            detail_top: 0,
            detail_max_top: 0,
            read_only: false,
            attached: false,
            detachable: false,
            me: String::new(),
            bell: false,
            bells: 0,
        }
    }

    /// Takes one engine event: into the model, and into the prompt line
    /// where it answers something said here (a rollout command), or ends
    /// the run (its result replaces the last command's message).
    /// Takes one item of the run's event stream.
    pub fn deliver(&mut self, item: &crate::protocol::Delivery) {
        match item {
            crate::protocol::Delivery::Event(ev) => self.apply(ev),
            crate::protocol::Delivery::Missed { from, to } => {
                self.status = Some(format!(
                    "{} earlier events are not replayed; their log lines load from the run's record as you scroll",
                    to - from + 1
                ));
            }
        }
    }

    pub fn apply(&mut self, ev: &crate::protocol::Event) {
        use crate::protocol::{EventKind, JobStatus};
        self.model.apply(ev);
        // Live events only: an attached UI catching up replays old ones.
        let live = self.now > 0 && ev.ts.saturating_add(10_000) >= self.now;
        let needs_a_person = matches!(
            ev.kind,
            EventKind::JobFinished {
                status: JobStatus::Failed,
                ..
            } | EventKind::GateWaiting { .. }
                | EventKind::RunFinished { .. }
        );
        if self.bell && live && needs_a_person {
            self.bells += 1;
        }
        match &ev.kind {
            EventKind::Steered { what, by } if *by != self.me => {
                self.status = Some(format!("{by}: {what}"));
            }
            EventKind::RolloutDecision { job, text, .. }
                if self.awaiting_rollout.as_ref().is_some_and(|(j, _)| j == job) =>
            {
                self.awaiting_rollout = None;
                self.status = Some(format!("rollout of {job}: {text}"));
            }
            EventKind::RunFinished { summary } => {
                self.awaiting_rollout = None;
                self.status = Some(format!(
                    "run {}: {}",
                    format!("{:?}", summary.result).to_lowercase(),
                    summary.message
                ));
            }
            _ => {}
        }
    }

    /// Jobs shown in the jobs pane, in display order (filter applied).
    pub fn visible_jobs(&self) -> Vec<usize> {
        let mut order: Vec<usize> = self.model.levels.iter().flatten().copied().collect();
        if !self.filter.is_empty() {
            let f = self.filter.to_lowercase();
            // Words of the filter all hold: `is:failed` (a status word, as
            // the help's legend names them) or a part of the name.
            order.retain(|&j| {
                let job = &self.model.jobs[j];
                let word = super::theme::look(job.status, job.flaky, job.allow_failure, job.cached.is_some()).word;
                f.split_whitespace().all(|term| match term.strip_prefix("is:") {
                    Some(status) => word.starts_with(status),
                    None => job.name.to_lowercase().contains(term),
                })
            });
        }
        order
    }

    pub fn selected_job(&self) -> Option<usize> {
        (self.selected < self.model.jobs.len()).then_some(self.selected)
    }

    /// The attempt whose log is shown.
    pub fn shown_attempt(&self) -> Option<u32> {
        let j = self.selected_job()?;
        let latest = self.model.jobs[j].attempt();
        match self.attempt {
            Some(a) if a >= 1 && a <= latest => Some(a),
            _ if latest > 0 => Some(latest),
            _ => None,
        }
    }

    /// The first log line the view shows (following: the tail).
    pub fn log_view_top(&self) -> usize {
        self.log_view().0
    }

    /// The log shown.
    fn shown_log(&self) -> Option<&super::model::AttemptLog> {
        self.model.logs.get(&(self.selected_job()?, self.shown_attempt()?))
    }

    /// Whether line `i` of the shown log is folded away (inside an ended
    /// group, groups folded).
    pub fn hidden(&self, i: usize) -> bool {
        !self.unfold && self.shown_log().is_some_and(|l| l.inside_group(i).is_some())
    }

    /// What a folded group's title line adds: how many lines it holds.
    pub fn fold_note(&self, i: usize) -> Option<String> {
        let inside = self.shown_log()?.group_at(i).filter(|_| !self.unfold)?;
        let n = inside.len();
        Some(format!("  ({n} {}, z unfolds)", if n == 1 { "line" } else { "lines" }))
    }

    /// Whether the view moves by rows (lines wrap, or folded groups take
    /// none) rather than by lines.
    pub fn by_rows(&self) -> bool {
        self.wrap || (!self.unfold && self.shown_log().is_some_and(|l| l.groups.iter().any(|g| g.1.is_some())))
    }

    /// Where the log view starts: (line, row within that line). Following,
    /// it is the position whose rows end exactly at the log's end.
    pub fn log_view(&self) -> (usize, usize) {
        match (self.follow, self.by_rows()) {
            (true, false) => (self.log_len().saturating_sub(self.log_height), 0),
            (true, true) => self.bottom_position(),
            (false, false) => (self.log_top, 0),
            (false, true) => (self.log_top, self.log_row),
        }
    }

    /// Line `i` of the shown log, if it is in memory or loaded from disk.
    pub fn log_line(&self, i: usize) -> Option<&super::model::LogLine> {
        let (j, a) = (self.selected_job()?, self.shown_attempt()?);
        let log = self.model.logs.get(&(j, a))?;
        if i >= log.dropped {
            log.lines.get(i - log.dropped)
        } else {
            self.older
                .as_ref()
                .filter(|o| o.key == (j, a))
                .and_then(|o| o.lines.get(i.checked_sub(o.start)?))
        }
    }

    /// Rows line `i` takes on screen: 1 without wrap, else its width over
    /// the log's width (a line not loaded counts as one).
    pub fn rows_of(&self, i: usize) -> usize {
        if self.hidden(i) {
            return 0;
        }
        if !self.wrap {
            return 1;
        }
        let note = self.fold_note(i).map_or(0, |n| n.chars().count());
        let width = self
            .log_line(i)
            .map_or(1, |l| super::render::log_line_view(&self.theme, l, None).width() + note);
        width.div_ceil(self.log_width.max(1)).max(1)
    }

    /// The view position whose rows end at the log's last row.
    fn bottom_position(&self) -> (usize, usize) {
        let mut need = self.log_height.max(1);
        let mut i = self.log_len();
        while i > 0 {
            i -= 1;
            let rows = self.rows_of(i);
            if rows >= need {
                return (i, rows - need);
            }
            need -= rows;
        }
        (0, 0)
    }

    /// The lines only on disk that the view shows and the loaded window
    /// does not hold: the loop reads them (off the UI's task) and hands them
    /// to [`App::older_arrived`]. The window is [`OLDER_WINDOW`] lines around
    /// the view, so memory stays flat however far back one scrolls.
    pub fn needs_older(&self) -> Option<OlderRequest> {
        let key = (self.selected_job()?, self.shown_attempt()?);
        let dropped = self.model.logs.get(&key)?.dropped;
        let top = self.log_view_top();
        if top >= dropped {
            return None;
        }
        let end = (top + self.log_height.max(1)).min(dropped);
        let covered = self
            .older
            .as_ref()
            .is_some_and(|o| o.key == key && o.start <= top && end <= o.start + o.asked);
        if covered {
            return None;
        }
        let mut from = top.saturating_sub(OLDER_WINDOW.saturating_sub(self.log_height) / 2);
        if let Some(o) = self.older.as_ref().filter(|o| o.key == key && o.cut) {
            // A window cut short by very long lines: read from the view's
            // top, and take what that gives (do not ask again and again).
            if o.start == top {
                return None;
            }
            if o.start == from {
                from = top;
            }
        }
        Some(OlderRequest {
            key,
            from,
            count: OLDER_WINDOW.min(dropped - from),
        })
    }

    /// The loop has read what [`App::needs_older`] asked for; `cut`: the
    /// answer stopped at its size limit, so it covers only what came.
    pub fn older_arrived(&mut self, req: OlderRequest, lines: Vec<super::model::LogLine>, cut: bool) {
        self.older = Some(OlderLines {
            key: req.key,
            start: req.from,
            asked: if cut { lines.len() } else { req.count },
            cut,
            lines,
        });
    }

    /// The part of the log only on disk that the search has not been
    /// through yet: the loop searches it (off the UI's task) and hands the
    /// matches to [`App::scan_arrived`].
    pub fn needs_scan(&self) -> Option<ScanRequest> {
        let query = self.search.clone()?;
        let key = (self.selected_job()?, self.shown_attempt()?);
        let dropped = self.model.logs.get(&key)?.dropped;
        let from = match &self.disk_hits {
            Some(h) if h.key == key && h.query == query => {
                if h.capped || h.upto >= dropped {
                    return None;
                }
                h.upto
            }
            _ if dropped == 0 => return None,
            _ => 0,
        };
        Some(ScanRequest {
            key,
            query,
            from,
            to: dropped,
        })
    }

    /// The loop has searched what [`App::needs_scan`] asked for; a search
    /// that waited for it jumps now.
    pub fn scan_arrived(&mut self, req: ScanRequest, found: crate::protocol::query::LogHits) {
        if self.search.as_deref() != Some(req.query.as_str()) {
            return;
        }
        // The answer continues what is known (from where it stopped), or
        // starts it; anything else answers a question no longer asked.
        match &mut self.disk_hits {
            Some(h) if h.key == req.key && h.query == req.query => {
                if h.upto != req.from {
                    return;
                }
                let room = MAX_DISK_HITS.saturating_sub(h.lines.len());
                h.capped |= found.capped || found.lines.len() > room;
                h.lines.extend(found.lines.into_iter().take(room));
                h.upto = req.to;
            }
            _ if req.from == 0 => {
                self.disk_hits = Some(DiskHits {
                    key: req.key,
                    query: req.query,
                    upto: req.to,
                    lines: found.lines,
                    capped: found.capped,
                });
            }
            // An answer to a question no longer asked.
            _ => return,
        }
        // What was on disk when the search was asked has been searched: it
        // jumps now, though a talking job keeps adding lines to search (the
        // next scans take them; waiting for the end would wait forever).
        if std::mem::take(&mut self.search_waits) && !self.jump_to_match(true, true) {
            self.status = Some(format!("no match for `{}`", self.search.as_deref().unwrap_or("")));
        }
    }

    /// The search through the lines on disk failed: it says why and stops
    /// there (not asked again each frame); matches in memory still count,
    /// and the count says it may be short (`+`).
    pub fn scan_failed(&mut self, req: ScanRequest, why: &str) {
        self.scan_arrived(
            req,
            crate::protocol::query::LogHits {
                lines: Vec::new(),
                capped: true,
            },
        );
        self.status = Some(format!("cannot search the log on disk: {why}"));
    }

    /// Total lines of the shown log (dropped lines included).
    pub fn log_len(&self) -> usize {
        match (self.selected_job(), self.shown_attempt()) {
            (Some(j), Some(a)) => self.model.logs.get(&(j, a)).map_or(0, |l| l.total()),
            _ => 0,
        }
    }

    /// Which footer actions apply to the selected job right now.
    pub fn available(&self, action: Action) -> bool {
        let status = self.selected_job().map(|j| self.model.jobs[j].status);
        match action {
            Action::Approve => matches!(status, Some(JobStatus::WaitingApproval | JobStatus::Delayed)),
            Action::Retry => matches!(status, Some(JobStatus::Failed | JobStatus::Cancelled)),
            Action::CloseBreaker => !self.model.breakers.is_empty() && self.model.finished.is_none(),
            // A shell opens in a container: the job needs a step with an image.
            Action::Shell => {
                status == Some(JobStatus::Failed) && self.selected_job().is_some_and(|j| self.model.jobs[j].has_image)
            }
            Action::RerunFailed => self
                .model
                .jobs
                .iter()
                .any(|j| matches!(j.status, JobStatus::Failed | JobStatus::Cancelled)),
            Action::Cancel => status.is_some_and(|s| !s.is_terminal()),
            Action::CancelAll | Action::TogglePause => self.model.finished.is_none(),
            Action::OpenLog => self.focus == Focus::Jobs,
            Action::Tests => self.selected_job().is_some_and(|j| self.model.jobs[j].tests.is_some()),
            Action::ToggleWrap | Action::NextMatch | Action::PrevMatch => self.focus == Focus::Log,
            Action::ToggleGroups => self.focus == Focus::Log && self.shown_log().is_some_and(|l| !l.groups.is_empty()),
            Action::ToggleList => self.focus == Focus::Jobs,
            Action::PrevAttempt | Action::NextAttempt => self
                .selected_job()
                .is_some_and(|j| self.model.jobs[j].attempts.len() > 1),
            // A completed rollout can still be rolled back.
            Action::Rollback => self
                .selected_rollout()
                .is_some_and(|r| !r.is_over() || r.phase == "completed"),
            // A held rollout takes no promote (it says: resume first); a
            // rolling one has no steps to promote, only a hold to end.
            Action::Promote => self
                .selected_rollout()
                .is_some_and(|r| !r.is_over() && ((r.strategy == "rolling") == (r.phase == "held"))),
            Action::PromoteFull => self
                .selected_rollout()
                .is_some_and(|r| !r.is_over() && r.phase != "held" && r.strategy != "rolling"),
            a if a.is_rollout() => self.selected_rollout().is_some_and(|r| !r.is_over()),
            _ => true,
        }
    }

    /// What a key does now, for the footer: a toggle names the way it goes.
    pub fn label(&self, b: &super::keys::Binding) -> &'static str {
        match b.action {
            Action::HoldRollout if self.selected_rollout().is_some_and(|r| r.phase == "held") => "resume",
            Action::TogglePause if self.model.paused => "resume",
            Action::Search if self.focus == Focus::Jobs => "filter",
            Action::ToggleList if self.list_mode => "DAG",
            Action::ToggleFollow if self.follow => "unfollow",
            Action::ToggleWrap if self.wrap => "unwrap",
            Action::ToggleGroups if self.unfold => "fold",
            Action::Promote if self.selected_rollout().is_some_and(|r| r.strategy == "rolling") => "resume",
            _ => b.label,
        }
    }

    /// The breaker `B` closes: the one holding the selected job, else the
    /// first open one.
    fn breaker_to_close(&self) -> Option<String> {
        let waiting = self.selected_job().and_then(|j| self.model.jobs[j].waiting.as_deref());
        let holding = waiting.and_then(|w| {
            self.model
                .breakers
                .keys()
                .find(|d| w.contains(&format!(" {d}:")) || w.ends_with(&format!(" {d}")))
        });
        holding.or_else(|| self.model.breakers.keys().next()).cloned()
    }

    /// The selected job's rollout, when it is a deploy job that has one.
    fn selected_rollout(&self) -> Option<&crate::protocol::RolloutStatus> {
        self.model.jobs.get(self.selected_job()?)?.rollout.as_deref()
    }

    fn scope(&self) -> Scope {
        match self.focus {
            Focus::Jobs => Scope::Jobs,
            Focus::Log | Focus::Detail => Scope::Log,
        }
    }

    pub fn handle_key(&mut self, key: KeyEvent) -> Vec<Command> {
        self.status = None;
        match std::mem::replace(&mut self.mode, Mode::Normal) {
            // Scroll keys move an overlay; any other key closes it.
            Mode::Help => {
                if let Some(step) = overlay_scroll(&key) {
                    self.help_top = self.help_top.saturating_add_signed(step);
                    self.mode = Mode::Help;
                }
                Vec::new()
            }
            mode @ (Mode::Tests(_) | Mode::Dashboard(_) | Mode::Nodes(_)) => {
                if let Some(step) = overlay_scroll(&key) {
                    self.mode = match mode {
                        Mode::Tests(top) => Mode::Tests(top.saturating_add_signed(step)),
                        Mode::Dashboard(top) => Mode::Dashboard(top.saturating_add_signed(step)),
                        Mode::Nodes(top) => Mode::Nodes(top.saturating_add_signed(step)),
                        other => other,
                    };
                }
                Vec::new()
            }
            Mode::Confirm { question, yes } => match key.code {
                KeyCode::Char('y') | KeyCode::Char('Y') => yes,
                KeyCode::Char('n') | KeyCode::Char('N') | KeyCode::Esc => {
                    self.status = Some("cancelled, nothing was done".into());
                    Vec::new()
                }
                _ => {
                    self.mode = Mode::Confirm { question, yes };
                    Vec::new()
                }
            },
            Mode::TypedConfirm {
                question,
                expected,
                mut typed,
                yes,
            } => {
                match key.code {
                    KeyCode::Enter if typed == expected => return yes,
                    KeyCode::Enter | KeyCode::Esc => {
                        self.status = Some("cancelled, nothing was done".into());
                        return Vec::new();
                    }
                    KeyCode::Char(c) => typed.push(c),
                    KeyCode::Backspace => {
                        typed.pop();
                    }
                    _ => {}
                }
                self.mode = Mode::TypedConfirm {
                    question,
                    expected,
                    typed,
                    yes,
                };
                Vec::new()
            }
            Mode::Search(mut text) => {
                match key.code {
                    KeyCode::Enter => {
                        self.search = (!text.is_empty()).then(|| text.clone());
                        self.follow = false;
                        // Lines only on disk are searched too: the loop
                        // searches them, then the search jumps.
                        self.search_waits = self.needs_scan().is_some();
                        if self.search_waits {
                            self.status = Some(format!("searching for `{text}` in the whole log..."));
                        } else if self.search.is_some() && !self.jump_to_match(true, true) {
                            self.status = Some(format!("no match for `{text}`"));
                        }
                    }
                    KeyCode::Esc => {}
                    KeyCode::Backspace => {
                        text.pop();
                        self.mode = Mode::Search(text);
                    }
                    KeyCode::Char(c) => {
                        text.push(c);
                        self.mode = Mode::Search(text);
                    }
                    _ => self.mode = Mode::Search(text),
                }
                Vec::new()
            }
            Mode::Filter(mut text) => {
                match key.code {
                    KeyCode::Enter => self.select_first_visible(),
                    KeyCode::Esc => {
                        self.filter.clear();
                    }
                    KeyCode::Backspace => {
                        text.pop();
                        self.filter = text.clone();
                        self.mode = Mode::Filter(text);
                    }
                    KeyCode::Char(c) => {
                        text.push(c);
                        self.filter = text.clone();
                        self.mode = Mode::Filter(text);
                        self.select_first_visible();
                    }
                    _ => self.mode = Mode::Filter(text),
                }
                Vec::new()
            }
            // Esc puts away the live-edit banner.
            Mode::Normal if key.code == KeyCode::Esc && self.model.banner.is_some() => {
                self.model.banner = None;
                Vec::new()
            }
            Mode::Normal => match action_for(&key, self.scope()) {
                Some(a) => self.act(a),
                None => Vec::new(),
            },
        }
    }

    /// A click or the wheel on a screen of `screen`: a click selects the
    /// job under it (DAG box or list line) or the pane, the wheel scrolls
    /// what is under it (the log and the detail by three rows, the jobs by
    /// one). While a question or the help is open, a click closes the help
    /// and is otherwise ignored, as is every other mouse event.
    pub fn handle_mouse(&mut self, ev: MouseEvent, screen: Rect) -> Vec<Command> {
        let at = Position {
            x: ev.column,
            y: ev.row,
        };
        let a = super::render::areas(self, screen);
        let under = |r: Option<Rect>| r.is_some_and(|r| r.contains(at));
        let pane = if under(a.jobs) {
            Some(Focus::Jobs)
        } else if under(a.log) {
            Some(Focus::Log)
        } else if under(a.detail) {
            Some(Focus::Detail)
        } else {
            None
        };
        if self.mode != Mode::Normal {
            if matches!(
                self.mode,
                Mode::Help | Mode::Tests(_) | Mode::Dashboard(_) | Mode::Nodes(_)
            ) && matches!(ev.kind, MouseEventKind::Down(_))
            {
                self.mode = Mode::Normal;
            }
            return Vec::new();
        }
        match ev.kind {
            MouseEventKind::ScrollUp | MouseEventKind::ScrollDown => {
                let down = ev.kind == MouseEventKind::ScrollDown;
                match pane {
                    Some(Focus::Jobs) => self.move_selection(if down { 1 } else { -1 }),
                    Some(Focus::Log) => self.scroll_log(if down { 3 } else { -3 }),
                    Some(Focus::Detail) => self.scroll_detail(if down { 3 } else { -3 }),
                    None => {}
                }
            }
            MouseEventKind::Down(MouseButton::Left) => {
                if let Some(tabs) = a.tabs.filter(|t| t.contains(at)) {
                    if let Some(f) = super::render::tab_at(at.x - tabs.x) {
                        self.focus = f;
                    }
                    return Vec::new();
                }
                if let Some(p) = pane {
                    self.focus = p;
                }
                if let Some(j) = a.jobs.and_then(|r| super::render::job_at(self, r, at.x, at.y)) {
                    self.select(j);
                }
            }
            _ => {}
        }
        Vec::new()
    }

    fn select_first_visible(&mut self) {
        if let Some(&first) = self.visible_jobs().first()
            && !self.visible_jobs().contains(&self.selected)
        {
            self.select(first);
        }
    }

    fn select(&mut self, j: usize) {
        if j != self.selected {
            self.selected = j;
            self.attempt = None;
            self.follow = true;
            self.detail_top = 0;
        }
    }

    fn scroll_detail(&mut self, delta: isize) {
        self.detail_top = self
            .detail_top
            .min(self.detail_max_top)
            .saturating_add_signed(delta)
            .min(self.detail_max_top);
    }

    fn confirm(&mut self, question: String, yes: Vec<Command>) -> Vec<Command> {
        self.mode = Mode::Confirm { question, yes };
        Vec::new()
    }

    fn act(&mut self, action: Action) -> Vec<Command> {
        let sel = self.selected_job();
        let name = sel.map(|j| self.model.jobs[j].name.clone()).unwrap_or_default();
        if !self.available(action) {
            self.status = Some(match action {
                Action::Approve => format!("`{name}` is not waiting for approval"),
                Action::Retry => format!("`{name}` has not failed; only failed or cancelled jobs can be retried"),
                Action::Shell
                    if self
                        .selected_job()
                        .is_some_and(|j| self.model.jobs[j].status == JobStatus::Failed) =>
                {
                    format!("`{name}` has no step with an image; a shell opens in a failed container job")
                }
                Action::Shell => format!("`{name}` has not failed; a shell opens in a failed container job"),
                Action::RerunFailed => "no failed job to rerun".into(),
                Action::Tests => format!("`{name}` has no test report: declare reports: {{junit: [...]}}"),
                Action::Cancel => format!("`{name}` has already finished"),
                Action::CancelAll | Action::TogglePause => "the run has finished".into(),
                Action::PrevAttempt | Action::NextAttempt => format!("`{name}` has one attempt"),
                a if a.is_rollout() => match self.selected_rollout() {
                    Some(r) if !r.is_over() && r.phase == "held" => {
                        format!("the rollout of `{}` is held: H resumes it first", r.service)
                    }
                    Some(r) if !r.is_over() => format!(
                        "the {} rollout of `{}` has no step to promote: H holds it, A aborts",
                        r.strategy.replace('_', "-"),
                        r.service
                    ),
                    Some(r) => format!(
                        "the rollout of `{}` has ended ({})",
                        r.service,
                        r.phase.replace('_', " ")
                    ),
                    None => format!("`{name}` is not a deploy job with a rollout in progress"),
                },
                _ => return Vec::new(),
            });
            return Vec::new();
        }
        match action {
            Action::Up | Action::Down if self.focus == Focus::Detail => {
                self.scroll_detail(if action == Action::Up { -1 } else { 1 });
                Vec::new()
            }
            Action::Up | Action::Down if self.focus != Focus::Jobs => {
                self.scroll_log(if action == Action::Up { -1 } else { 1 });
                Vec::new()
            }
            Action::Up | Action::Down => {
                self.move_selection(if action == Action::Up { -1 } else { 1 });
                Vec::new()
            }
            Action::Left | Action::Right => {
                self.move_level(if action == Action::Left { -1 } else { 1 });
                Vec::new()
            }
            Action::NextPane => {
                // The detail takes focus to scroll; on wide screens only
                // when it has more than it shows.
                self.focus = match self.focus {
                    Focus::Jobs => Focus::Log,
                    Focus::Log if !self.wide || self.detail_max_top > 0 => Focus::Detail,
                    _ => Focus::Jobs,
                };
                Vec::new()
            }
            Action::OpenLog => {
                self.focus = Focus::Log;
                Vec::new()
            }
            Action::Approve => {
                let j = sel.unwrap_or(0);
                let downstream: Vec<&str> = self.model.jobs[j]
                    .dependents
                    .iter()
                    .map(|&d| self.model.jobs[d].name.as_str())
                    .collect();
                let n = self.model.jobs[j].steps.len();
                let steps = format!(
                    "{n} step{} ({})",
                    if n == 1 { "" } else { "s" },
                    self.model.jobs[j].steps.join(", ")
                );
                let then = if downstream.is_empty() {
                    String::new()
                } else {
                    format!(", then {}", downstream.join(", "))
                };
                self.confirm(
                    format!("Approve `{name}`? It runs {steps}{then}. (y/n)"),
                    vec![Command::Approve(name)],
                )
            }
            Action::Retry => vec![Command::Retry(name)],
            Action::CloseBreaker => self.breaker_to_close().map(Command::CloseBreaker).into_iter().collect(),
            Action::Shell => vec![Command::Shell(name)],
            Action::Promote | Action::PromoteFull | Action::AbortRollout | Action::Rollback | Action::HoldRollout => {
                use crate::protocol::RolloutCommand as R;
                // `available` made sure there is one.
                let Some((service, phase)) = self.selected_rollout().map(|r| (r.service.clone(), r.phase.clone()))
                else {
                    return Vec::new();
                };
                match action {
                    Action::Rollback if phase == "completed" => self.confirm(
                        format!("Make the previous revision of `{service}` stable again? (y/n)"),
                        vec![Command::RollbackService(service)],
                    ),
                    Action::Promote => vec![Command::Rollout(name, R::Promote)],
                    Action::AbortRollout => vec![Command::Rollout(name, R::Abort)],
                    Action::Rollback => vec![Command::Rollout(name, R::Rollback)],
                    Action::HoldRollout if phase == "held" => vec![Command::Rollout(name, R::Resume)],
                    Action::HoldRollout => vec![Command::Rollout(name, R::Pause)],
                    _ => {
                        self.mode = Mode::TypedConfirm {
                            question: format!(
                                "Promote `{service}` to 100% now? Type `{service}` and Enter (Esc cancels):"
                            ),
                            expected: service,
                            typed: String::new(),
                            yes: vec![Command::Rollout(name, R::PromoteFull)],
                        };
                        Vec::new()
                    }
                }
            }
            Action::RerunFailed => vec![Command::RerunFailed],
            Action::Cancel => self.confirm(format!("Cancel `{name}`? (y/n)"), vec![Command::Cancel(name)]),
            Action::CancelAll => self.confirm("Cancel the whole run? (y/n)".into(), vec![Command::CancelAll]),
            Action::TogglePause => vec![if self.model.paused {
                Command::Resume
            } else {
                Command::Pause
            }],
            Action::ToggleFollow => {
                self.follow = !self.follow;
                if !self.follow {
                    (self.log_top, self.log_row) = if self.by_rows() {
                        self.bottom_position()
                    } else {
                        (self.log_len().saturating_sub(self.log_height), 0)
                    };
                }
                Vec::new()
            }
            Action::ToggleWrap => {
                self.wrap = !self.wrap;
                self.log_row = 0;
                Vec::new()
            }
            Action::ToggleGroups => {
                self.unfold = !self.unfold;
                self.log_row = 0;
                Vec::new()
            }
            Action::ToggleList => {
                self.list_mode = !self.list_mode;
                Vec::new()
            }
            Action::Search => {
                self.mode = if self.focus == Focus::Jobs {
                    Mode::Filter(self.filter.clone())
                } else {
                    Mode::Search(String::new())
                };
                Vec::new()
            }
            Action::NextMatch | Action::PrevMatch => {
                if self.search.is_some() && !self.jump_to_match(action == Action::NextMatch, false) {
                    self.status = Some("no match".into());
                }
                Vec::new()
            }
            Action::PageUp | Action::PageDown => {
                let page = self.log_height.max(1) as isize;
                if self.focus == Focus::Detail {
                    self.scroll_detail(if action == Action::PageUp { -page } else { page });
                } else if self.focus == Focus::Jobs {
                    self.move_selection(if action == Action::PageUp { -page } else { page });
                } else {
                    self.scroll_log(if action == Action::PageUp { -page } else { page });
                }
                Vec::new()
            }
            Action::Top | Action::Bottom => {
                let top = action == Action::Top;
                if self.focus == Focus::Detail {
                    self.detail_top = if top { 0 } else { self.detail_max_top };
                } else if self.focus == Focus::Jobs {
                    let v = self.visible_jobs();
                    let target = if top { v.first() } else { v.last() };
                    if let Some(&t) = target {
                        self.select(t);
                    }
                } else if top {
                    self.follow = false;
                    self.log_top = 0;
                    self.log_row = 0;
                } else {
                    self.follow = true;
                }
                Vec::new()
            }
            Action::PrevAttempt | Action::NextAttempt => {
                let latest = sel.map_or(0, |j| self.model.jobs[j].attempt());
                let cur = self.shown_attempt().unwrap_or(latest);
                let next = if action == Action::PrevAttempt {
                    cur.saturating_sub(1).max(1)
                } else {
                    (cur + 1).min(latest)
                };
                self.attempt = Some(next);
                self.status = Some(format!("attempt {next} of {latest}"));
                Vec::new()
            }
            Action::Help => {
                self.mode = Mode::Help;
                self.help_top = 0;
                Vec::new()
            }
            Action::Tests => {
                self.mode = Mode::Tests(0);
                Vec::new()
            }
            Action::Dashboard => {
                self.mode = Mode::Dashboard(0);
                Vec::new()
            }
            Action::Nodes => {
                self.mode = Mode::Nodes(0);
                Vec::new()
            }
            Action::Services => vec![Command::Services],
            Action::Detach => {
                if self.detachable {
                    vec![Command::Detach]
                } else {
                    self.status =
                        Some("this run lives in this trackside: it cannot go on without it (quit with q)".into());
                    Vec::new()
                }
            }
            Action::Quit => {
                if self.attached {
                    // Someone else's run: leaving never stops it.
                    vec![Command::Detach]
                } else if self.model.is_active() {
                    let n = self.model.running_jobs();
                    self.confirm(
                        format!("{n} job(s) running. Cancel them and quit? (y/n)"),
                        vec![Command::Quit { cancel: true }],
                    )
                } else {
                    vec![Command::Quit { cancel: false }]
                }
            }
        }
    }

    fn move_selection(&mut self, delta: isize) {
        let v = self.visible_jobs();
        if v.is_empty() {
            return;
        }
        let pos = v.iter().position(|&j| j == self.selected).unwrap_or(0) as isize;
        let next = (pos + delta).clamp(0, v.len() as isize - 1) as usize;
        self.select(v[next]);
    }

    /// Moves to the nearest job in the neighbouring level.
    fn move_level(&mut self, delta: isize) {
        let Some(j) = self.selected_job() else { return };
        let level = self.model.jobs[j].level as isize;
        let row = self.model.levels[level as usize]
            .iter()
            .position(|&x| x == j)
            .unwrap_or(0);
        let target = level + delta;
        if target < 0 || target as usize >= self.model.levels.len() {
            return;
        }
        let col = &self.model.levels[target as usize];
        if let Some(&t) = col.get(row.min(col.len().saturating_sub(1))) {
            self.select(t);
        }
    }

    fn scroll_log(&mut self, delta: isize) {
        if !self.by_rows() {
            let len = self.log_len();
            let max_top = len.saturating_sub(self.log_height);
            let cur = if self.follow { max_top } else { self.log_top };
            let next = (cur as isize + delta).clamp(0, max_top as isize) as usize;
            self.log_top = next;
            self.log_row = 0;
            self.follow = next >= max_top && delta > 0;
            return;
        }
        // Wrapped: one step is one row on screen, so the end of a long line
        // and the lines after it are always reachable; folded lines take
        // no row, and no step.
        let bottom = self.bottom_position();
        let (mut line, mut row) = self.log_view();
        let len = self.log_len();
        if delta > 0 {
            for _ in 0..delta {
                if (line, row) >= bottom {
                    break;
                }
                row += 1;
                if row >= self.rows_of(line) {
                    line += 1;
                    row = 0;
                    while line < len && self.rows_of(line) == 0 {
                        line += 1;
                    }
                }
            }
        } else {
            for _ in 0..delta.unsigned_abs() {
                if row > 0 {
                    row -= 1;
                    continue;
                }
                let mut prev = line;
                while prev > 0 {
                    prev -= 1;
                    if self.rows_of(prev) > 0 {
                        break;
                    }
                }
                if prev == line || self.rows_of(prev) == 0 {
                    break;
                }
                line = prev;
                row = self.rows_of(line) - 1;
            }
        }
        self.log_top = line;
        self.log_row = row;
        self.follow = (line, row) >= bottom && delta > 0;
    }

    /// Moves the view to the next/previous line matching the search: the
    /// matches found on disk so far, then those in memory.
    fn jump_to_match(&mut self, forward: bool, from_here: bool) -> bool {
        let (Some(j), Some(a), Some(q)) = (self.selected_job(), self.shown_attempt(), self.search.clone()) else {
            return false;
        };
        let Some(log) = self.model.logs.get(&(j, a)) else {
            return false;
        };
        let start = self.log_top;
        let disk = self.disk_hits.as_ref().filter(|h| h.key == (j, a) && h.query == q);
        let capped = disk.is_some_and(|h| h.capped);
        let needle = q.to_lowercase();
        // Every line shown is searched, step markers included.
        let hits: Vec<usize> = disk
            .map(|h| h.lines.as_slice())
            .unwrap_or_default()
            .iter()
            .copied()
            .chain(
                log.lines
                    .iter()
                    .enumerate()
                    .filter(|(_, l)| l.text.to_lowercase().contains(&needle))
                    .map(|(i, _)| i + log.dropped),
            )
            .collect();
        let found = if forward {
            hits.iter()
                .copied()
                .find(|&h| if from_here { h >= start } else { h > start })
        } else {
            hits.iter().rev().copied().find(|&h| h < start)
        };
        // Past the last match the search goes round, and says so.
        let (found, wrapped) = match found {
            Some(h) => (Some(h), false),
            None if forward => (hits.first().copied(), !from_here),
            None => (hits.last().copied(), true),
        };
        match found {
            Some(h) => {
                // A match inside a folded group unfolds the groups.
                if self.hidden(h) {
                    self.unfold = true;
                }
                self.follow = false;
                self.log_top = h;
                self.log_row = 0;
                let n = hits.iter().position(|&x| x == h).map_or(0, |i| i + 1);
                let note = match (wrapped, forward) {
                    (true, true) => " (wrapped to the top)",
                    (true, false) => " (wrapped to the bottom)",
                    _ => "",
                };
                let more = if capped { "+" } else { "" };
                self.status = Some(format!("match {n}/{}{more}{note}", hits.len()));
                true
            }
            None => false,
        }
    }
}
