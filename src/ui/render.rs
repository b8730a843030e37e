//! Drawing: `impl Widget for &App`. Views borrow the app state; nothing is
//! mutated while drawing.
//!
//! Wide terminals (100 columns or more) show the jobs pane beside the job
//! detail and log; narrow ones (80x24) show one pane at a time under a tab
//! line, switched with Tab.

use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Axis, Block, Borders, Chart, Clear, Dataset, GraphType, Paragraph, Widget, Wrap};

use crate::headless::seconds;
use crate::protocol::JobStatus;
use crate::protocol::view::Pool;

use super::ansi;
use super::app::{App, Focus, Mode};
use super::keys::{Action, BINDINGS, FOOTER_ORDER, Scope};
use super::model::LineKind;
use super::theme::look;

/// Columns from which panes sit side by side.
pub const WIDE: u16 = 100;

/// Where each part of the screen goes: one computation, for drawing and
/// for the loop (which needs the log's size to page and to wrap).
pub struct Areas {
    pub header: Rect,
    pub banner: Rect,
    /// Narrow screens: the tab line and the one pane shown.
    pub tabs: Option<Rect>,
    pub jobs: Option<Rect>,
    pub detail: Option<Rect>,
    pub log: Option<Rect>,
    pub prompt: Rect,
    pub footer: Rect,
}

/// The live-edit banner as rows at `width`: its lines wrapped at words, at
/// most [`BANNER_ROWS`], the count of what is left out kept last.
fn banner_rows(app: &App, width: u16) -> Vec<String> {
    let Some(b) = &app.model.banner else {
        return Vec::new();
    };
    let w = usize::from(width.max(1));
    let mut rows: Vec<String> = b.lines.iter().flat_map(|l| wrap_words(l, w)).collect();
    if rows.len() > BANNER_ROWS {
        let last = b.lines.last().filter(|l| l.starts_with('+')).map(|l| wrap_words(l, w));
        match last {
            Some(tail) => {
                let keep = BANNER_ROWS.saturating_sub(tail.len());
                rows.truncate(keep);
                rows.extend(tail);
            }
            None => rows.truncate(BANNER_ROWS),
        }
    }
    rows
}

/// Most rows the live-edit banner takes from the screen.
const BANNER_ROWS: usize = 6;

pub fn areas(app: &App, area: Rect) -> Areas {
    let banner_h = banner_rows(app, area.width).len() as u16;
    let [header, banner, body, prompt, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(banner_h),
        Constraint::Min(3),
        Constraint::Length(1),
        Constraint::Length(1),
    ])
    .areas(area);
    if area.width >= WIDE {
        // A rollout needs room for its numbers, verdict and charts: while a
        // deploy job is selected, the right side takes most of the width.
        let rollout = matches!(app.selected_job().map(|j| &app.model.jobs[j].rollout), Some(Some(_)));
        // Otherwise the DAG gets what its boxes need at full width, between
        // 40% and 60% of the screen; the log and detail get the rest.
        let left_w = if rollout {
            body.width * 45 / 100
        } else {
            let levels = app.model.levels.len().max(1) as u16;
            let need = levels * (dag_box_width(app) + GUTTER) - GUTTER + 2;
            need.clamp(body.width * 40 / 100, body.width * 60 / 100)
        };
        let [left, right] = Layout::horizontal([Constraint::Length(left_w), Constraint::Min(10)]).areas(body);
        // The log keeps a few lines; the rest is the rollout's.
        let detail_h = if rollout {
            right.height.saturating_sub(6).max(8)
        } else {
            8
        };
        let [detail, log] = Layout::vertical([Constraint::Length(detail_h), Constraint::Min(3)]).areas(right);
        Areas {
            header,
            banner,
            tabs: None,
            jobs: Some(left),
            detail: Some(detail),
            log: Some(log),
            prompt,
            footer,
        }
    } else {
        let [tabs, pane] = Layout::vertical([Constraint::Length(1), Constraint::Min(2)]).areas(body);
        let one = |f: Focus| (app.focus == f).then_some(pane);
        Areas {
            header,
            banner,
            tabs: Some(tabs),
            jobs: one(Focus::Jobs),
            detail: one(Focus::Detail),
            log: one(Focus::Log),
            prompt,
            footer,
        }
    }
}

/// The log's text area (inside its border) on a screen of `area`: where it
/// is shown, or where it would be once the log pane is chosen.
pub fn log_text_area(app: &App, area: Rect) -> Rect {
    let a = areas(app, area);
    let pane = a.log.or(a.jobs).or(a.detail).unwrap_or(a.prompt);
    Rect::new(
        pane.x + 1,
        pane.y + 1,
        pane.width.saturating_sub(2).max(1),
        pane.height.saturating_sub(2).max(1),
    )
}

impl Widget for &App {
    fn render(self, area: Rect, buf: &mut Buffer) {
        let a = areas(self, area);
        render_header(self, a.header, buf);
        if let Some(b) = &self.model.banner {
            let style = if b.error { self.theme.error() } else { self.theme.warn() };
            let lines: Vec<Line> = banner_rows(self, area.width)
                .into_iter()
                .map(|l| Line::styled(l, style))
                .collect();
            Paragraph::new(lines).render(a.banner, buf);
        }
        if let Some(tabs) = a.tabs {
            render_tabs(self, tabs, buf);
        }
        if let Some(r) = a.jobs {
            render_jobs(self, r, buf);
        }
        if let Some(r) = a.detail {
            render_detail(self, r, buf);
        }
        if let Some(r) = a.log {
            render_log(self, r, buf);
        }
        render_prompt(self, a.prompt, buf);
        render_footer(self, a.footer, buf);
        match self.mode {
            Mode::Help => render_help(self, area, buf),
            Mode::Tests(top) => {
                let dot = self.theme.glyph("·", "-");
                let title = match self.selected_job().map(|j| &self.model.jobs[j]) {
                    Some(job) => match &job.tests {
                        Some((attempt, _)) => format!(" tests {dot} {} {dot} attempt {attempt} ", job.name),
                        None => format!(" tests {dot} {} ", job.name),
                    },
                    None => " tests ".to_string(),
                };
                render_overlay(self, &title, tests_lines(self), top, area, buf)
            }
            Mode::Dashboard(top) => {
                let title = format!(" history {} {} ", self.theme.glyph("·", "-"), self.model.pipeline);
                render_overlay(self, &title, dashboard_lines(self, area.width.min(100)), top, area, buf)
            }
            Mode::Nodes(top) => render_overlay(self, " swarm nodes ", nodes_lines(self), top, area, buf),
            _ => {}
        }
    }
}

fn clock(ms: u64) -> String {
    let s = ms / 1000;
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
    } else {
        format!("{:02}:{:02}", s / 60, s % 60)
    }
}

fn render_header(app: &App, area: Rect, buf: &mut Buffer) {
    let m = &app.model;
    let t = &app.theme;
    let elapsed = m.started_ts.map_or(0, |s| {
        let end = m.finished.as_ref().map_or(app.now, |f| s + f.duration_ms);
        end.saturating_sub(s)
    });
    let sep = || Span::styled(t.glyph(" │ ", " | "), t.dim());
    let mut spans = vec![
        Span::styled("trackside", t.title()),
        sep(),
        Span::raw(m.pipeline.clone()),
    ];
    if app.attached {
        spans.push(sep());
        let what = if app.read_only {
            "attached, read-only"
        } else {
            "attached"
        };
        spans.push(Span::styled(what, t.warn()));
    }
    if area.width >= WIDE {
        spans.push(sep());
        spans.push(Span::raw(format!("run {}", m.run_id)));
    }
    spans.push(sep());
    spans.push(Span::raw(clock(elapsed)));
    if m.finished.is_none() {
        match m.eta(app.now) {
            super::model::Eta::Unknown => {}
            super::model::Eta::WaitingApproval => spans.push(Span::raw(" waiting for approval")),
            super::model::Eta::Overdue => spans.push(Span::raw(" ETA ?")),
            super::model::Eta::Left(ms) => spans.push(Span::raw(format!(" ETA {} (no history)", clock(ms)))),
            super::model::Eta::Forecast { p50_left, p90_left } => spans.push(Span::raw(match (p50_left, p90_left) {
                (0, 0) => " ETA ?".to_string(),
                (0, p90) => format!(" ETA ? (p90 {})", clock(p90)),
                (p50, p90) => format!(" ETA {} (p90 {})", clock(p50), clock(p90)),
            })),
        }
    }
    // Open circuit breakers, while the run goes on (B closes one): before
    // the counts, so 80 columns show them.
    if let Some(first) = m.breakers.keys().next().filter(|_| m.finished.is_none()) {
        spans.push(sep());
        let more = match m.breakers.len() {
            1 => String::new(),
            n => format!(" +{}", n - 1),
        };
        // Half-open: a probe is letting one job through.
        let word = match m.breakers.get(first).map(|b| b.phase) {
            Some(crate::protocol::event::BreakerPhase::HalfOpen) => "CIRCUIT HALF-OPEN",
            _ => "CIRCUIT OPEN",
        };
        spans.push(Span::styled(format!("{word}: {first}{more}"), t.error()));
    }
    // Running jobs and the memory they hold of the budget (while the run
    // goes on): before the counts on a narrow screen, so 80 columns keep
    // them (the boxes show the counts anyway).
    let mut running = vec![
        sep(),
        Span::raw(format!("{}/{} running", m.running_jobs(), m.max_parallel)),
    ];
    if let Some(held) = m
        .resources
        .filter(|h| h.memory_budget < u64::MAX && m.finished.is_none())
    {
        let g = |b: u64| b as f64 / f64::from(1u32 << 30);
        running.push(Span::raw(format!(
            ", {:.1}/{:.1} GiB",
            g(held.memory),
            g(held.memory_budget)
        )));
    }
    let narrow = area.width < WIDE;
    if narrow {
        spans.append(&mut running);
    }
    spans.push(sep());
    // A count per glyph the boxes show (a flaky pass, a queued job and an
    // allowed failure each under their own), in the legend's order.
    let word = |j: &super::model::JobView| look(j.status, j.flaky, j.allow_failure, j.cached.is_some()).word;
    let mut shown = 0;
    for (status, flaky, allowed, cached) in super::theme::LEGEND {
        let this = look(status, flaky, allowed, cached).word;
        let n = m.jobs.iter().filter(|j| word(j) == this).count();
        if n > 0 {
            let (g, style) = t.status(status, flaky, allowed, cached);
            let gap = if shown == 0 { "" } else { " " };
            spans.push(Span::styled(format!("{gap}{g}{n}"), style));
            shown += 1;
        }
    }
    spans.append(&mut running);
    if m.paused {
        spans.push(sep());
        spans.push(Span::styled("PAUSED", t.warn()));
    }

    if let Some(f) = &m.finished {
        spans.push(sep());
        let style = if f.exit_code == 0 {
            t.fg(ratatui::style::Color::Green)
        } else {
            t.error()
        };
        spans.push(Span::styled(
            format!("{:?}", f.result).to_uppercase(),
            style.add_modifier(Modifier::BOLD),
        ));
    }
    Paragraph::new(Line::from(spans)).render(area, buf);
}

/// The narrow screen's tabs, in order.
const TABS: [(&str, Focus); 3] = [("Jobs", Focus::Jobs), ("Log", Focus::Log), ("Detail", Focus::Detail)];

/// The tab drawn at column `x` of the tab line (counted from its start).
pub fn tab_at(x: u16) -> Option<Focus> {
    let mut start = 0;
    for (label, focus) in TABS {
        // " label " and a space between tabs.
        let end = start + label.len() as u16 + 2;
        if (start..end).contains(&x) {
            return Some(focus);
        }
        start = end + 1;
    }
    None
}

fn render_tabs(app: &App, area: Rect, buf: &mut Buffer) {
    let t = &app.theme;
    let mut spans = Vec::new();
    for (label, f) in TABS {
        if !spans.is_empty() {
            spans.push(Span::raw(" "));
        }
        let style = if app.focus == f { t.selected() } else { t.dim() };
        spans.push(Span::styled(format!(" {label} "), style));
    }
    spans.push(Span::styled("  (Tab switches)", t.dim()));
    Paragraph::new(Line::from(spans)).render(area, buf);
}

fn pane_block<'a>(app: &App, title: String, focused: bool) -> Block<'a> {
    let t = &app.theme;
    let style = if focused { t.title() } else { t.dim() };
    Block::default()
        .borders(Borders::ALL)
        .border_set(t.border_set())
        .border_style(style)
        .title(Span::styled(title, t.title()))
}

fn truncate(s: &str, width: usize, ascii: bool) -> String {
    if s.chars().count() <= width {
        return s.to_string();
    }
    let cut = if ascii { '~' } else { '…' };
    // A parallel or matrix instance (`unit: [3.10, mysql]`) keeps what tells
    // it from its siblings: the base name is cut first.
    if let Some(at) = s.find(": [") {
        let suffix = &s[at + 2..];
        let suffix_len = suffix.chars().count();
        if suffix_len + 2 <= width {
            let base: String = s[..at].chars().take(width - suffix_len - 1).collect();
            return format!("{base}{cut}{suffix}");
        }
    }
    let mut out: String = s.chars().take(width.saturating_sub(1)).collect();
    out.push(cut);
    out
}

fn render_jobs(app: &App, area: Rect, buf: &mut Buffer) {
    let mode = if app.list_mode { "list" } else { "DAG" };
    let mut title = format!(" jobs ({mode}) ");
    if !app.filter.is_empty() {
        title = format!(" jobs ({mode}, filter: {}) ", app.filter);
    }
    let block = pane_block(app, title, app.focus == Focus::Jobs);
    let inner = block.inner(area);
    block.render(area, buf);
    if app.list_mode || !app.filter.is_empty() {
        render_list(app, inner, buf);
    } else {
        render_dag(app, inner, buf);
    }
}

fn job_summary(app: &App, j: usize) -> (String, Style, String) {
    let job = &app.model.jobs[j];
    let (glyph, style) = app
        .theme
        .status(job.status, job.flaky, job.allow_failure, job.cached.is_some());
    let mut info = match app.model.job_elapsed(j, app.now) {
        // A rollout in progress says where it stands (`gate 30%`), the time does not.
        Some(_) if job.status == JobStatus::Running && job.rollout.as_ref().is_some_and(|r| !r.is_over()) => {
            job.rollout.as_ref().map(|r| r.brief()).unwrap_or_default()
        }
        Some(ms) => seconds(ms),
        None if job.status == JobStatus::WaitingApproval => "manual".into(),
        None => String::new(),
    };
    if job.attempts.len() > 1 {
        info.push_str(&format!(" #{}", job.attempt()));
    }
    (glyph, style, info)
}

/// The first job the list shows in `h` rows: the selection stays in view.
fn list_first(app: &App, jobs: &[usize], h: usize) -> usize {
    let pos = jobs.iter().position(|&j| j == app.selected).unwrap_or(0);
    pos.saturating_sub(h.saturating_sub(1))
}

fn render_list(app: &App, area: Rect, buf: &mut Buffer) {
    let jobs = app.visible_jobs();
    let h = area.height as usize;
    let first = list_first(app, &jobs, h);
    let name_w = jobs
        .iter()
        .map(|&j| app.model.jobs[j].name.chars().count())
        .max()
        .unwrap_or(4)
        .min(30);
    let any_flaky = jobs.iter().any(|&j| app.model.jobs[j].flake_pct.is_some());
    for (row, &j) in jobs.iter().enumerate().skip(first).take(h) {
        let job = &app.model.jobs[j];
        let (glyph, style, info) = job_summary(app, j);
        let why = match job.status {
            JobStatus::Skipped | JobStatus::Failed | JobStatus::Cancelled => job.reason.clone().unwrap_or_default(),
            _ => String::new(),
        };
        let name = format!("{:<name_w$}", truncate(&job.name, name_w, app.theme.ascii));
        // A column of flake rates, when history calls some job flaky.
        let flake = match job.flake_pct {
            Some(p) => format!("{:>5} ", flake_mark(&app.theme, p)),
            None if any_flaky => " ".repeat(6),
            None => String::new(),
        };
        let mut line = Line::from(vec![
            Span::styled(format!("{glyph} "), style),
            Span::raw(name),
            Span::raw(format!(" {info:>9} ")),
            Span::styled(flake, app.theme.warn()),
            Span::styled(why, app.theme.dim()),
        ]);
        if j == app.selected {
            line = line.style(app.theme.selected());
        }
        let y = area.y + (row - first) as u16;
        buf.set_line(area.x, y, &line, area.width);
    }
    if jobs.is_empty() {
        buf.set_string(area.x, area.y, "no job matches the filter", app.theme.dim());
    }
    let t = &app.theme;
    let below = jobs.len().saturating_sub(first + h);
    let mut hint = Vec::new();
    if first > 0 {
        hint.push(format!("{} {first} more", t.glyph("↑", "^")));
    }
    if below > 0 {
        hint.push(format!("{} {below} more", t.glyph("↓", "v")));
    }
    border_hint(app, area, &hint, buf);
}

const BOX_H: u16 = 3;
const GUTTER: u16 = 3;

/// Width of a DAG box that shows every job's name whole (within bounds).
fn dag_box_width(app: &App) -> u16 {
    let name_w = app.model.jobs.iter().map(|j| j.name.chars().count()).max().unwrap_or(8);
    (name_w as u16 + 4).clamp(12, 24)
}

/// Where the DAG's boxes go in the pane's inner `area`: one computation for
/// drawing and for finding the job under a click.
struct DagLayout {
    area: Rect,
    col_w: u16,
    cols_fit: usize,
    rows_fit: usize,
    first_level: usize,
    first_row: usize,
}

impl DagLayout {
    fn new(app: &App, area: Rect) -> DagLayout {
        let m = &app.model;
        // Boxes shrink (names are truncated) before levels go off screen.
        let fit = |w: u16| ((area.width + GUTTER) / (w + GUTTER)).max(1) as usize;
        let mut col_w = dag_box_width(app);
        while col_w > 12 && fit(col_w) < m.levels.len() {
            col_w -= 1;
        }
        let cols_fit = fit(col_w);
        let rows_fit = (area.height / BOX_H).max(1) as usize;
        let (sel_level, sel_row) = app.selected_job().map_or((0, 0), |j| {
            let l = m.jobs[j].level;
            (l, m.levels[l].iter().position(|&x| x == j).unwrap_or(0))
        });
        DagLayout {
            area,
            col_w,
            cols_fit,
            rows_fit,
            first_level: sel_level.saturating_sub(cols_fit - 1),
            first_row: sel_row.saturating_sub(rows_fit - 1),
        }
    }
    fn col_x(&self, level: usize) -> u16 {
        self.area.x + (level - self.first_level) as u16 * (self.col_w + GUTTER)
    }
    fn row_y(&self, row: usize) -> u16 {
        self.area.y + (row - self.first_row) as u16 * BOX_H
    }
    fn visible_level(&self, l: usize) -> bool {
        l >= self.first_level && l < self.first_level + self.cols_fit
    }
    fn visible_row(&self, r: usize) -> bool {
        r >= self.first_row && r < self.first_row + self.rows_fit
    }
    /// The box of the job at `row` of `level`, if it is drawn whole.
    fn job_box(&self, level: usize, row: usize) -> Option<Rect> {
        if !self.visible_level(level) || !self.visible_row(row) {
            return None;
        }
        let rect = Rect::new(self.col_x(level), self.row_y(row), self.col_w, BOX_H).intersection(self.area);
        (rect.height >= BOX_H && rect.width >= 6).then_some(rect)
    }
}

/// The job drawn at column `x`, row `y` of the jobs pane `pane` (DAG box or
/// list line), for a click.
pub fn job_at(app: &App, pane: Rect, x: u16, y: u16) -> Option<usize> {
    let inner = Block::default().borders(Borders::ALL).inner(pane);
    let at = ratatui::layout::Position { x, y };
    if !inner.contains(at) {
        return None;
    }
    if app.list_mode || !app.filter.is_empty() {
        let jobs = app.visible_jobs();
        let first = list_first(app, &jobs, usize::from(inner.height));
        return jobs.get(first + usize::from(y - inner.y)).copied();
    }
    let dag = DagLayout::new(app, dag_area(app, inner).1);
    app.model.levels.iter().enumerate().find_map(|(level, jobs)| {
        jobs.iter()
            .enumerate()
            .find(|&(row, _)| dag.job_box(level, row).is_some_and(|r| r.contains(at)))
            .map(|(_, &j)| j)
    })
}

/// The DAG's area split into a header row of stage names (GitLab
/// pipelines) and the boxes below it.
fn dag_area(app: &App, area: Rect) -> (Option<Rect>, Rect) {
    if app.model.stage_names.is_empty() || area.height < 2 {
        return (None, area);
    }
    let header = Rect { height: 1, ..area };
    let rest = Rect {
        y: area.y + 1,
        height: area.height - 1,
        ..area
    };
    (Some(header), rest)
}

fn render_dag(app: &App, area: Rect, buf: &mut Buffer) {
    let m = &app.model;
    if m.levels.is_empty() {
        return;
    }
    let t = &app.theme;
    let (header, area) = dag_area(app, area);
    let dag = DagLayout::new(app, area);
    if let Some(h) = header {
        for (level, name) in m.stage_names.iter().enumerate() {
            if dag.visible_level(level) {
                let x = dag.col_x(level);
                if x < h.right() {
                    let w = (h.right() - x).min(dag.col_w) as usize;
                    buf.set_string(x, h.y, truncate(name, w, t.ascii), t.title());
                }
            }
        }
    }
    let (cols_fit, rows_fit, first_level, first_row) = (dag.cols_fit, dag.rows_fit, dag.first_level, dag.first_row);
    let sel = app.selected_job();
    let related = sel.map(|j| m.related(j)).unwrap_or_default();
    let on_path = |j: usize| Some(j) == sel || related.get(j).copied().unwrap_or(false);
    let col_x = |level: usize| dag.col_x(level);
    let row_y = |row: usize| dag.row_y(row);
    let visible_level = |l: usize| dag.visible_level(l);
    let visible_row = |r: usize| dag.visible_row(r);
    let (h, v, tl, tr, bl, br) = if t.ascii {
        ("-", "|", "+", "+", "+", "+")
    } else {
        ("─", "│", "┌", "┐", "└", "┘")
    };

    // Edges first, so boxes draw over any overlap.
    for (level, jobs) in m.levels.iter().enumerate() {
        if !visible_level(level) || level == first_level {
            continue;
        }
        for (row, &b) in jobs.iter().enumerate() {
            if !visible_row(row) {
                continue;
            }
            for &a in &m.jobs[b].deps {
                // A need within a stage has no column to cross (GitLab's
                // stage view draws none either).
                if m.jobs[a].level >= level {
                    continue;
                }
                let a_row = m.levels[m.jobs[a].level].iter().position(|&x| x == a).unwrap_or(0);
                let style = if on_path(a)
                    && on_path(b)
                    && sel.is_some_and(|s| s == a || s == b || (related[a] && related[b]))
                {
                    t.path()
                } else {
                    t.dim()
                };
                let x0 = col_x(level) - GUTTER;
                let yb = row_y(row) + 1;
                // From further left than the column before: a line would
                // run into that column's boxes and seem to come from one of
                // them. A stub into the box says "needs more"; the detail
                // pane's `needs:` names them.
                if m.jobs[a].level + 1 < level {
                    if x0 + 2 < area.right() && yb < area.bottom() {
                        buf.set_string(x0 + 1, yb, h, style);
                        buf.set_string(x0 + 2, yb, if t.ascii { ">" } else { "▶" }, style);
                    }
                    continue;
                }
                let ya_row = a_row.clamp(first_row, first_row + rows_fit - 1);
                let ya = row_y(ya_row) + 1;
                let set = |buf: &mut Buffer, x: u16, y: u16, s: &str| {
                    if x < area.right() && y < area.bottom() {
                        buf.set_string(x, y, s, style);
                    }
                };
                set(buf, x0, ya, h);
                if ya == yb {
                    set(buf, x0 + 1, ya, h);
                } else {
                    let (top, bottom) = (ya.min(yb), ya.max(yb));
                    for y in top + 1..bottom {
                        set(buf, x0 + 1, y, v);
                    }
                    if ya < yb {
                        set(buf, x0 + 1, ya, tr);
                        set(buf, x0 + 1, yb, bl);
                    } else {
                        set(buf, x0 + 1, ya, br);
                        set(buf, x0 + 1, yb, tl);
                    }
                }
                set(buf, x0 + 2, yb, if t.ascii { ">" } else { "▶" });
            }
        }
    }

    for (level, jobs) in m.levels.iter().enumerate() {
        if !visible_level(level) {
            continue;
        }
        for (row, &j) in jobs.iter().enumerate() {
            let Some(rect) = dag.job_box(level, row) else {
                continue;
            };
            let job = &m.jobs[j];
            let (glyph, status_style, info) = job_summary(app, j);
            let border = if Some(j) == sel {
                t.selected()
            } else if on_path(j) {
                t.path()
            } else {
                status_style
            };
            let name = truncate(&job.name, rect.width as usize - 2, t.ascii);
            let title_style = if Some(j) == sel { t.selected() } else { t.title() };
            Block::default()
                .borders(Borders::ALL)
                .border_set(t.border_set())
                .border_style(border)
                .title(Span::styled(name, title_style))
                .render(rect, buf);
            let content = Line::from(vec![Span::styled(format!("{glyph} "), status_style), Span::raw(info)]);
            buf.set_line(rect.x + 1, rect.y + 1, &content, rect.width - 2);
            // Its flake rate at the right, when there is room for it.
            if let Some(pct) = job.flake_pct {
                let mark = flake_mark(t, pct);
                let w = mark.chars().count() as u16;
                if usize::from(rect.width) >= content.width() + usize::from(w) + 3 {
                    buf.set_string(rect.right() - 1 - w, rect.y + 1, mark, t.warn());
                }
            }
        }
    }
    // Say what is off screen.
    let more_right = m.levels.len() > first_level + cols_fit;
    let more_down = m.levels.iter().any(|l| l.len() > first_row + rows_fit);
    let mut hint = Vec::new();
    if first_level > 0 {
        hint.push(format!(
            "{} {first_level} level{}",
            t.glyph("←", "<-"),
            plural(first_level)
        ));
    }
    if more_right {
        let n = m.levels.len() - first_level - cols_fit;
        hint.push(format!(
            "{n} more level{} {}",
            if n == 1 { "" } else { "s" },
            t.glyph("→", "->")
        ));
    }
    if first_row > 0 {
        hint.push(format!(
            "{} {first_row} more row{}",
            t.glyph("↑", "^"),
            plural(first_row)
        ));
    }
    if more_down {
        let below = m.levels.iter().map(Vec::len).max().unwrap_or(0) - first_row - rows_fit;
        hint.push(format!("{} {below} more row{}", t.glyph("↓", "v"), plural(below)));
    }
    border_hint(app, area, &hint, buf);
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// What is off screen, said on the bottom border of a pane whose inner
/// area is `area`, right-aligned where it covers no content.
fn border_hint(app: &App, area: Rect, hint: &[String], buf: &mut Buffer) {
    if !hint.is_empty() && area.height > 0 {
        let text = format!(" {} ", hint.join(app.theme.glyph(" · ", " | ")));
        let x = area.right().saturating_sub(text.chars().count() as u16 + 1);
        buf.set_string(x.max(area.x), area.bottom(), text, app.theme.dim());
    }
}

/// The detail pane of a job, laid out in its text area: the lines, where
/// they go, and where the charts go when there is room for them.
struct DetailView<'a> {
    lines: Vec<Line<'a>>,
    text: Rect,
    charts: Option<Rect>,
    /// Rows the lines take when wrapped to the text's width.
    rows: u16,
}

fn detail_view(app: &App, j: usize, inner: Rect) -> DetailView<'static> {
    let t = &app.theme;
    let m = &app.model;
    let job = &m.jobs[j];
    let (glyph, style) = t.status(job.status, job.flaky, job.allow_failure, job.cached.is_some());
    let look = super::theme::look(job.status, job.flaky, job.allow_failure, job.cached.is_some());
    let mut lines = vec![Line::from(vec![
        Span::styled(format!("{glyph} {}", look.word), style.add_modifier(Modifier::BOLD)),
        Span::raw(match (job.failure_class, job.status) {
            (Some(c), JobStatus::Failed | JobStatus::Retrying) => format!(" ({c})"),
            _ => String::new(),
        }),
        Span::raw(
            m.job_elapsed(j, app.now)
                .map(|d| format!("  {}", seconds(d)))
                .unwrap_or_default(),
        ),
        Span::styled(if job.flaky { "  FLAKY" } else { "" }, t.warn()),
    ])];
    let why = m.why(j);
    lines.push(Line::from(vec![Span::styled("why: ", t.dim()), Span::raw(why.clone())]));
    if let Some(d) = job
        .diagnosis
        .as_deref()
        .filter(|_| matches!(job.status, JobStatus::Failed | JobStatus::Retrying))
    {
        diagnosis_lines(d, t, usize::from(inner.width), &mut lines);
    }
    if let Some((_, report)) = &job.tests {
        lines.push(test_summary_line(job, report, t));
    }
    if let Some(at) = job.retry_at.filter(|_| job.status == JobStatus::Retrying) {
        lines.push(Line::raw(format!(
            "next attempt in {}",
            seconds(at.saturating_sub(app.now))
        )));
    }
    if let Some(at) = job.retry_at.filter(|_| job.status == JobStatus::Delayed) {
        lines.push(Line::raw(format!("starts in {}", seconds(at.saturating_sub(app.now)))));
    }
    if let Some(r) = &job.rollout {
        rollout_lines(r, &why, job.status.is_terminal(), t, &mut lines);
    }
    let rollout_end = lines.len();
    let names = |ids: &[usize]| {
        ids.iter()
            .map(|&d| m.jobs[d].name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if !job.deps.is_empty() || !job.dependents.is_empty() {
        lines.push(Line::from(vec![
            Span::styled("needs: ", t.dim()),
            Span::raw(if job.deps.is_empty() {
                "-".into()
            } else {
                names(&job.deps)
            }),
            Span::styled("  needed by: ", t.dim()),
            Span::raw(if job.dependents.is_empty() {
                "-".into()
            } else {
                names(&job.dependents)
            }),
        ]));
    }
    let node = job.node.iter().map(|n| ("node".to_string(), n.clone()));
    for (label, text) in job.facts.iter().cloned().chain(node) {
        lines.push(Line::from(vec![
            Span::styled(format!("{label}: "), t.dim()),
            Span::raw(text),
        ]));
    }
    if !job.approvals.is_empty() || job.waiting_for.is_some() {
        let given = if job.approvals.is_empty() {
            "none yet".to_string()
        } else {
            job.approvals.join(", ")
        };
        let mut spans = vec![Span::styled("approved by: ", t.dim()), Span::raw(given)];
        if let Some(more) = &job.waiting_for {
            spans.push(Span::styled(format!("; waiting for {more}"), t.warn()));
        }
        lines.push(Line::from(spans));
    }
    for (level, text) in &job.annotations {
        let style = match level.as_str() {
            "error" => t.error(),
            "warning" => t.warn(),
            _ => t.dim(),
        };
        lines.push(Line::from(vec![
            Span::styled(format!("{level}: "), style),
            Span::raw(text.clone()),
        ]));
    }
    for a in job.attempts.iter().rev() {
        let dur = a.ended_ts.map(|e| seconds(e.saturating_sub(a.started_ts)));
        let mut s = format!("#{} ", a.number);
        match (a.ended_ts, a.exit_code, a.failure_class) {
            (None, _, _) => s.push_str("running"),
            (Some(_), _, _) if a.preempted_by.is_some() => {
                s.push_str(&format!(
                    "preempted by run {}",
                    a.preempted_by.as_deref().unwrap_or_default()
                ));
            }
            (Some(_), _, Some(c)) => s.push_str(&format!(
                "{c}{}",
                a.exit_code.map(|e| format!(" exit {e}")).unwrap_or_default()
            )),
            (Some(_), Some(e), None) => s.push_str(&format!("ok exit {e}")),
            (Some(_), None, None) => s.push_str("ok"),
        }
        if let Some(d) = dur {
            s.push_str(&format!(" in {d}"));
        }
        if let Some(delay) = a.retry_delay_ms {
            s.push_str(&format!(", retried after {}", seconds(delay)));
        }
        lines.push(Line::raw(s));
    }
    // Rows as the paragraph wraps them (at words, so more than width / columns).
    let rows_of = |lines: &[Line<'static>]| -> u16 {
        let rows = Paragraph::new(lines.to_vec())
            .wrap(Wrap { trim: false })
            .line_count(inner.width.max(1));
        u16::try_from(rows).unwrap_or(u16::MAX)
    };
    // The numbers come first: charts get what the text leaves, if that is enough.
    let text_rows = rows_of(&lines);
    let spare = inner.height.saturating_sub(text_rows);
    let trends = job.rollout.is_some() && job.rollout_history.len() >= 2;
    // Charts draw with Unicode markers: --ascii keeps to the sparklines.
    if trends && spare >= 8 && !t.ascii {
        let [text, charts] = Layout::vertical([Constraint::Min(text_rows), Constraint::Length(spare)]).areas(inner);
        return DetailView {
            lines,
            text,
            charts: Some(charts),
            rows: text_rows,
        };
    }
    // Too short for charts (80x24): a line per metric with its trend, before
    // the keys line that ends the rollout's lines (scrolled to if need be).
    if trends {
        let at = rollout_end.saturating_sub(1);
        lines.splice(at..at, trend_lines(&job.rollout_history, inner.width, t));
    }
    let rows = rows_of(&lines);
    DetailView {
        lines,
        text: inner,
        charts: None,
        rows,
    }
}

/// `tests: 1 failed of 43; failing test: test_gateway (network) (t lists them)`.
fn test_summary_line(
    job: &super::model::JobView,
    r: &crate::protocol::TestReport,
    t: &super::theme::Theme,
) -> Line<'static> {
    let mut text = format!("{} failed of {}", r.failed, r.failed + r.passed + r.skipped);
    if r.rerun > 0 {
        text.push_str(&format!(", {} passed only on a rerun", r.rerun));
    }
    let failing: Vec<&crate::protocol::TestCaseView> = r.cases.iter().filter(|c| c.outcome == "failed").collect();
    if let Some(first) = failing.first() {
        let own = first.name.rsplit(['.', ':']).next().unwrap_or(&first.name);
        text.push_str(&format!(
            "; failing test{}: {own}",
            if failing.len() == 1 { "" } else { "s" }
        ));
        if let Some(c) = job
            .failure_class
            .filter(|_| job.status == JobStatus::Failed || job.status == JobStatus::Retrying)
        {
            text.push_str(&format!(" ({c})"));
        }
        if failing.len() > 1 {
            text.push_str(&format!(" and {} more", r.failed - 1));
        }
    }
    Line::from(vec![
        Span::styled("tests: ", t.dim()),
        Span::raw(text),
        Span::styled(" (t lists them)", t.dim()),
    ])
}

/// How far the detail pane of the selected job can scroll on a screen of
/// `area` (0 when it fits or is not shown).
pub fn detail_max_top(app: &App, area: Rect) -> usize {
    let (Some(pane), Some(j)) = (areas(app, area).detail, app.selected_job()) else {
        return 0;
    };
    let inner = Block::default().borders(Borders::ALL).inner(pane);
    let v = detail_view(app, j, inner);
    usize::from(v.rows.saturating_sub(v.text.height))
}

fn render_detail(app: &App, area: Rect, buf: &mut Buffer) {
    let t = &app.theme;
    let Some(j) = app.selected_job() else {
        pane_block(app, " detail ".into(), app.focus == Focus::Detail).render(area, buf);
        return;
    };
    let job = &app.model.jobs[j];
    let mut block = pane_block(app, format!(" {} ", job.name), app.focus == Focus::Detail);
    let inner = block.inner(area);
    let view = detail_view(app, j, inner);
    let max_top = view.rows.saturating_sub(view.text.height);
    let top = u16::try_from(app.detail_top).unwrap_or(u16::MAX).min(max_top);
    // Say that there is more, and how to reach it.
    if max_top > 0 {
        let more = match (top > 0, top < max_top) {
            (true, true) => format!(" {} more (j/k) ", t.glyph("↕", "^v")),
            (false, _) => format!(" {} more (Tab, j) ", t.glyph("↓", "v")),
            (true, false) => format!(" {} more (k) ", t.glyph("↑", "^")),
        };
        block = block.title_bottom(Line::styled(more, t.dim()).right_aligned());
    }
    block.render(area, buf);
    if let Some(charts) = view.charts {
        let limits = job.rollout.as_ref().map_or([None, None], |r| r.limits);
        render_rollout_charts(&job.rollout_history, limits, t, charts, buf);
    }
    Paragraph::new(view.lines)
        .wrap(Wrap { trim: false })
        .scroll((top, 0))
        .render(view.text, buf);
}

/// Error rate and p95 of canary and stable over the whole rollout as two
/// lines of sparklines on one scale per metric, with the latest values:
/// `  err %  canary ▁▁▂▅█▇ 1.0  stable ▁▁▁▁▁▁ 0.0`.
pub(super) fn trend_lines(
    history: &[super::model::RolloutPoint],
    width: u16,
    t: &super::theme::Theme,
) -> Vec<Line<'static>> {
    const BARS: [&str; 8] = ["▁", "▂", "▃", "▄", "▅", "▆", "▇", "█"];
    const ASCII: [&str; 8] = ["_", ".", "-", "~", "=", "+", "*", "#"];
    let levels = if t.ascii { ASCII } else { BARS };
    // Label, two values of 6 and the pool names take about 38 columns.
    let w = (usize::from(width).saturating_sub(38) / 2).clamp(4, 60);
    let spark = |series: &[Option<f64>], (min, max): (f64, f64)| -> String {
        (0..w)
            .map(|i| {
                // Each column is the worst point of its share of the history.
                let (a, b) = (
                    i * series.len() / w,
                    ((i + 1) * series.len() / w).max(i * series.len() / w + 1),
                );
                let v = series[a..b.min(series.len())]
                    .iter()
                    .flatten()
                    .fold(None, |m: Option<f64>, &v| Some(m.map_or(v, |m| m.max(v))));
                match v {
                    None => " ",
                    Some(_) if max <= min => levels[0],
                    Some(v) => levels[((v - min) / (max - min) * 7.0).round().clamp(0.0, 7.0) as usize],
                }
            })
            .collect()
    };
    // Errors are scaled from 0; latency from the lowest point of either
    // pool, so its shape shows (the numbers say how far apart they are).
    let metric = |name: &str, from_zero: bool, get: &dyn Fn(&super::model::RolloutPoint) -> [Option<f64>; 2]| {
        let [stable, canary]: [Vec<Option<f64>>; 2] = [0, 1].map(|pool| history.iter().map(|p| get(p)[pool]).collect());
        let points = || stable.iter().chain(&canary).flatten().copied();
        let max = points().fold(0.0f64, f64::max);
        let min = if from_zero { 0.0 } else { points().fold(max, f64::min) };
        let scale = (min, max);
        let last = |s: &[Option<f64>]| {
            s.iter()
                .rev()
                .flatten()
                .next()
                .map_or("-".into(), |v| format!("{v:.1}"))
        };
        Line::from(vec![
            Span::styled(format!("  {name:<6}"), t.dim()),
            Span::raw(" canary "),
            Span::styled(spark(&canary, scale), t.fg(ratatui::style::Color::Yellow)),
            Span::raw(format!(" {:>5}  stable ", last(&canary))),
            Span::styled(spark(&stable, scale), t.fg(ratatui::style::Color::Green)),
            Span::raw(format!(" {:>5}", last(&stable))),
        ])
    };
    vec![
        metric("err %", true, &|p| p.error_pct),
        metric("p95 ms", false, &|p| p.p95_ms),
    ]
}

/// One line of a chart: its name, its points, its style.
type Series<'a> = (&'a str, &'a [(f64, f64)], Style);

/// Error rate, p95 latency (stable and canary overlaid, with the
/// analyses' limits) and the canary's weight with a marker at each change,
/// over the whole rollout, as line charts.
pub(super) fn render_rollout_charts(
    history: &[super::model::RolloutPoint],
    limits: [Option<f64>; 2],
    t: &super::theme::Theme,
    area: Rect,
    buf: &mut Buffer,
) {
    use ratatui::symbols::Marker;
    let (t0, t1) = (
        history.first().map_or(0.0, |p| p.t_s),
        history.last().map_or(1.0, |p| p.t_s),
    );
    // Stable and canary differ by marker as well as colour, and each
    // chart's title says which is which (NO_COLOR leaves only the marker).
    let marker = |name: &str| if name == "stable" { Marker::Dot } else { Marker::Braille };
    let series = |f: &dyn Fn(&super::model::RolloutPoint) -> Option<f64>| -> Vec<(f64, f64)> {
        history.iter().filter_map(|p| f(p).map(|v| (p.t_s, v))).collect()
    };
    let err: [Vec<(f64, f64)>; 2] = [series(&|p| p.error_pct[0]), series(&|p| p.error_pct[1])];
    let p95: [Vec<(f64, f64)>; 2] = [series(&|p| p.p95_ms[0]), series(&|p| p.p95_ms[1])];
    let weight = series(&|p| Some(p.weight_pct));
    // Where a step moved the weight.
    let steps: Vec<(f64, f64)> = weight
        .windows(2)
        .filter(|w| (w[0].1 - w[1].1).abs() > f64::EPSILON)
        .map(|w| w[1])
        .collect();
    let limit_line = |v: Option<f64>| v.map(|v| vec![(t0, v), (t1.max(t0 + 1.0), v)]).unwrap_or_default();
    let (err_limit, p95_limit) = (limit_line(limits[0]), limit_line(limits[1]));
    let limit_style = t.fg(ratatui::style::Color::Red);
    let cols = Layout::horizontal([Constraint::Ratio(1, 3); 3]).split(area);
    let stable_style = t.fg(ratatui::style::Color::Green);
    let canary_style = t.fg(ratatui::style::Color::Yellow);
    let chart = |title: &str, data: &[Series<'_>], unit: &str, area: Rect, buf: &mut Buffer| {
        let max = data
            .iter()
            .flat_map(|(_, d, _)| d.iter().map(|p| p.1))
            .fold(0.0f64, f64::max)
            .max(if unit == "%" { 1.0 } else { 0.1 });
        let sets: Vec<Dataset> = data
            .iter()
            .filter(|(_, d, _)| !d.is_empty())
            .map(|(name, d, style)| {
                Dataset::default()
                    .name(*name)
                    .marker(marker(name))
                    // Step markers are points; everything else a line.
                    .graph_type(if *name == "steps" {
                        GraphType::Scatter
                    } else {
                        GraphType::Line
                    })
                    .style(*style)
                    .data(d)
            })
            .collect();
        Chart::new(sets)
            .block(Block::default().title(Span::styled(title.to_string(), t.dim())))
            .x_axis(Axis::default().bounds([t0, t1.max(t0 + 1.0)]))
            .y_axis(
                Axis::default()
                    .bounds([0.0, max * 1.15])
                    .labels([Line::raw("0"), Line::raw(format!("{:.1}{unit}", max * 1.15))]),
            )
            .render(area, buf);
    };
    chart(
        "err% •stable ⠒canary",
        &[
            ("stable", &err[0], stable_style),
            ("canary", &err[1], canary_style),
            ("limit", &err_limit, limit_style),
        ],
        "%",
        cols[0],
        buf,
    );
    chart(
        "p95ms •stable ⠒canary",
        &[
            ("stable", &p95[0], stable_style),
            ("canary", &p95[1], canary_style),
            ("limit", &p95_limit, limit_style),
        ],
        "",
        cols[1],
        buf,
    );
    chart(
        "canary weight %",
        &[("weight", &weight, canary_style), ("steps", &steps, limit_style)],
        "%",
        cols[2],
        buf,
    );
}

/// A deploy job's rollout, as text: where it is, the numbers, the verdict.
/// The knowledge base's reading of a failure: what happened, what to do,
/// where the runbook is, and the lines that told it (at most three).
fn diagnosis_lines(
    d: &crate::protocol::Diagnosis,
    t: &super::theme::Theme,
    width: usize,
    lines: &mut Vec<Line<'static>>,
) {
    let retry = if d.retryable {
        "a retry may pass"
    } else {
        "a retry will not help"
    };
    lines.push(Line::from(vec![
        Span::styled("cause: ", t.dim()),
        Span::styled(d.title.clone(), t.error()),
        Span::styled(format!(" ({}; {retry})", d.class), t.dim()),
    ]));
    // The hint wrapped under itself, not under its label.
    const LABEL: &str = "hint: ";
    for (i, part) in crate::headless::wrap(&d.hint, width.saturating_sub(LABEL.len()).max(20))
        .into_iter()
        .enumerate()
    {
        let label = if i == 0 { LABEL } else { "      " };
        lines.push(Line::from(vec![Span::styled(label, t.dim()), Span::raw(part)]));
    }
    lines.push(Line::from(vec![
        Span::styled("runbook: ", t.dim()),
        Span::raw(d.runbook.clone()),
    ]));
    for l in d.lines.iter().take(3) {
        lines.push(Line::from(vec![Span::styled("> ", t.dim()), Span::raw(l.clone())]));
    }
}

/// `said` is the job's `why:` line: a detail it already says (an abort's
/// reason) is not said twice. `ended`: the deploy job has finished (an
/// aborted one runs on through its abort delay).
fn rollout_lines(
    r: &crate::protocol::RolloutStatus,
    said: &str,
    ended: bool,
    t: &super::theme::Theme,
    lines: &mut Vec<Line<'_>>,
) {
    let pct = crate::protocol::view::percent;
    let phase_style = match r.phase.as_str() {
        "aborted" | "degraded" | "rolled_back" => t.warn(),
        _ => t.dim(),
    };
    let via = match (r.strategy.as_str(), r.router.as_str()) {
        ("", _) => String::new(),
        (s, "") => format!("({}) ", s.replace('_', "-")),
        (s, router) => format!("({} via {router}) ", s.replace('_', "-")),
    };
    lines.push(Line::from(vec![
        Span::styled("rollout: ", t.dim()),
        Span::raw(format!(
            "{} {} -> {} {via}",
            r.service,
            r.stable_version.as_deref().unwrap_or("-"),
            r.canary_version
        )),
        Span::styled(r.phase.replace('_', " "), phase_style),
    ]));
    if let Some(d) = r.detail.as_ref().filter(|d| !said.contains(d.as_str())) {
        lines.push(Line::raw(format!("  {d}")));
    }
    let countdown = r.countdown().map(|c| format!("  next in {c:.0}s")).unwrap_or_default();
    // Desired vs actual: HAProxy's integer weights round the share.
    let actual = if r.actual_weight != r.weight && !r.router.is_empty() {
        format!(" (actual {})", pct(r.actual_weight))
    } else {
        String::new()
    };
    let (unit, done, who) = if r.strategy == "rolling" {
        ("batch", r.step, "new")
    } else {
        ("step", (r.step + 1).min(r.steps), "canary")
    };
    lines.push(Line::raw(format!(
        "  {unit} {done}/{}  {who} weight {}{actual}{countdown}",
        r.steps,
        pct(r.weight)
    )));
    if !r.step_names.is_empty() {
        // Done, current, to come.
        let (done, next) = (t.glyph("✓", "+"), t.glyph("·", "-"));
        // Where it stopped, if it was stopped there.
        let now = match r.phase.as_str() {
            "aborted" | "rolled_back" | "degraded" => t.glyph("✗", "x"),
            _ => t.glyph("▶", ">"),
        };
        let settled = matches!(r.phase.as_str(), "completed");
        let list: Vec<String> = r
            .step_names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let mark = match i.cmp(&r.step) {
                    _ if settled => done,
                    std::cmp::Ordering::Less => done,
                    std::cmp::Ordering::Equal => now,
                    std::cmp::Ordering::Greater => next,
                };
                format!("{mark}{name}")
            })
            .collect();
        lines.push(Line::raw(format!("  steps: {}", list.join("  "))));
    }
    if !r.replicas.is_empty() {
        let mut parts = Vec::new();
        for pool in [Pool::Stable, Pool::Canary] {
            let mut counts: Vec<(&str, usize)> = Vec::new();
            for v in r.replicas.iter().filter(|v| v.pool == pool) {
                match counts.iter_mut().find(|(h, _)| *h == v.health) {
                    Some((_, n)) => *n += 1,
                    None => counts.push((&v.health, 1)),
                }
            }
            if !counts.is_empty() {
                let text: Vec<String> = counts.iter().map(|(h, n)| format!("{n} {h}")).collect();
                parts.push(format!("{} {}", pool.name(), text.join(", ")));
            }
        }
        lines.push(Line::raw(format!("  replicas: {}", parts.join("; "))));
        let sick: Vec<&str> = r
            .replicas
            .iter()
            .filter(|v| v.health == "unhealthy")
            .map(|v| v.name.as_str())
            .collect();
        if !sick.is_empty() {
            lines.push(Line::styled(format!("  unhealthy: {}", sick.join(", ")), t.warn()));
        }
    }
    for (name, tot) in [("stable", &r.stable), ("canary", &r.canary)] {
        let err = if tot.requests > 0 {
            100.0 * tot.errors as f64 / tot.requests as f64
        } else {
            0.0
        };
        // No requests yet: no latency, not a latency of 0.
        let ms = |v: f64| {
            if tot.requests > 0 {
                format!("{v:.1}")
            } else {
                "-".to_string()
            }
        };
        lines.push(Line::raw(format!(
            "  {name}: {} req  {}% err  p50 {} p95 {} p99 {} ms",
            tot.requests,
            if tot.requests > 0 {
                format!("{err:.2}")
            } else {
                "-".to_string()
            },
            ms(tot.p50_ms),
            ms(tot.p95_ms),
            ms(tot.p99_ms)
        )));
    }
    if let Some(v) = &r.verdict {
        lines.push(Line::raw(format!("  judge: {:?}, score {:.0}", v.class, v.score)));
        for metric in &v.metrics {
            lines.push(Line::raw(format!(
                "    {} {:?}: {}",
                metric.metric, metric.outcome, metric.why
            )));
        }
    }
    let keys = match (r.strategy.as_str(), r.phase.as_str()) {
        (_, "completed") => "  b roll back to the previous revision",
        (_, "aborted" | "rolled_back") if ended => "  r retry the deploy job",
        (_, "aborted" | "rolled_back") => "  the canary stops after its abort delay; then r retries the job",
        ("rolling", "held") => "  P/H resume  A abort (roll back)  b rollback",
        ("rolling", _) => "  H hold  A abort (roll back)  b rollback",
        (_, "held") => "  H resume  A abort  b rollback",
        _ => "  P promote  F 100%  A abort  b rollback  H hold",
    };
    lines.push(Line::styled(keys, t.dim()));
}

/// Renders the log of the selected job; lines older than the in-memory
/// window come from `app.older`, which the loop reads from disk on demand.
fn render_log(app: &App, area: Rect, buf: &mut Buffer) {
    let t = &app.theme;
    let m = &app.model;
    let (job, attempt) = match (app.selected_job(), app.shown_attempt()) {
        (Some(j), Some(a)) => (j, a),
        (Some(j), None) => {
            let dot = t.glyph("·", "-");
            let block = pane_block(app, format!(" log {dot} {} ", m.jobs[j].name), app.focus == Focus::Log);
            Paragraph::new(Line::styled("no output yet: the job has not started", t.dim()))
                .block(block)
                .render(area, buf);
            return;
        }
        _ => {
            pane_block(app, " log ".into(), app.focus == Focus::Log).render(area, buf);
            return;
        }
    };
    let latest = m.jobs[job].attempt();
    let dot = t.glyph("·", "-");
    let mut title = format!(" log {dot} {} {dot} attempt {attempt}/{latest} ", m.jobs[job].name);
    if app.follow {
        title.push_str(&format!("{dot} follow "));
    }
    if app.wrap {
        title.push_str(&format!("{dot} wrap "));
    }
    if let Some(q) = &app.search {
        title.push_str(&format!("{dot} /{q} "));
    }
    let block = pane_block(app, title, app.focus == Focus::Log);
    let inner = block.inner(area);
    block.render(area, buf);
    let Some(log) = m.logs.get(&(job, attempt)) else {
        buf.set_string(inner.x, inner.y, "no output yet", t.dim());
        return;
    };
    let height = inner.height as usize;
    let total = log.total();
    let (top, first_row) = app.log_view();
    let top = top.min(total.saturating_sub(1));
    let width = usize::from(inner.width.max(1));
    let mut lines: Vec<Line> = Vec::with_capacity(height);
    let mut i = top;
    while lines.len() < height && i < total {
        if app.hidden(i) {
            i += 1;
            continue;
        }
        let mut line = match app.log_line(i) {
            None => Line::styled(format!("{} earlier lines are on disk (loading)", log.dropped), t.dim()),
            Some(l) => log_line_view(t, l, app.search.as_deref()),
        };
        // A folded group's title says how much it holds.
        if let Some(note) = app.fold_note(i) {
            line.spans.push(Span::styled(note, t.dim()));
        }
        if app.wrap {
            // Wrapped by character into rows of the pane's width: the rows
            // scrolling counts are the rows drawn.
            let skip = if i == top { first_row } else { 0 };
            lines.extend(wrap_rows(line, width).into_iter().skip(skip));
        } else {
            lines.push(line);
        }
        i += 1;
    }
    lines.truncate(height);
    Paragraph::new(lines).render(inner, buf);
}

/// One log line as drawn: a step marker as a rule, output with its colours
/// (and the search's hits).
pub fn log_line_view(t: &super::theme::Theme, l: &super::model::LogLine, search: Option<&str>) -> Line<'static> {
    if l.kind == LineKind::Step {
        let rule = if t.ascii { "--" } else { "──" };
        return Line::styled(format!("{rule} step: {} {rule}", l.text), t.title());
    }
    let mut spans = ansi::spans(&l.text, t.color);
    if let Some(q) = search {
        spans = ansi::highlight(spans, q, t.search_hit());
    }
    Line::from(spans)
}

/// Splits a line into rows of at most `width` columns, keeping styles.
fn wrap_rows(line: Line<'static>, width: usize) -> Vec<Line<'static>> {
    let mut rows: Vec<Line<'static>> = Vec::new();
    let mut row: Vec<Span<'static>> = Vec::new();
    let mut used = 0;
    for span in line.spans {
        let style = span.style;
        let mut piece = String::new();
        for c in span.content.chars() {
            let w = Span::raw(c.to_string()).width();
            if used + w > width && used > 0 {
                if !piece.is_empty() {
                    row.push(Span::styled(std::mem::take(&mut piece), style));
                }
                rows.push(Line::from(std::mem::take(&mut row)).style(line.style));
                used = 0;
            }
            piece.push(c);
            used += w;
        }
        if !piece.is_empty() {
            row.push(Span::styled(piece, style));
        }
    }
    if !row.is_empty() || rows.is_empty() {
        rows.push(Line::from(row).style(line.style));
    }
    rows
}

fn render_prompt(app: &App, area: Rect, buf: &mut Buffer) {
    let t = &app.theme;
    let line = match &app.mode {
        Mode::Confirm { question, .. } => Line::styled(question.clone(), t.warn()),
        Mode::TypedConfirm { question, typed, .. } => Line::styled(format!("{question} {typed}"), t.warn()),
        Mode::Search(s) => Line::raw(format!(
            "search log: {s}{} (Enter to search, Esc to stop)",
            t.glyph("▏", "_")
        )),
        Mode::Filter(s) => Line::raw(format!(
            "filter jobs: {s}{} (Enter to keep, Esc to clear)",
            t.glyph("▏", "_")
        )),
        _ => match (&app.status, &app.model.finished) {
            (Some(s), _) => Line::raw(s.clone()),
            (None, Some(f)) => Line::styled(
                format!(
                    "run finished: {}; {}q quits",
                    f.message,
                    if app.available(Action::Retry) || app.available(Action::RerunFailed) {
                        "r retries a failed job, "
                    } else {
                        ""
                    }
                ),
                if f.exit_code == 0 { t.title() } else { t.error() },
            ),
            (None, None) => Line::raw(""),
        },
    };
    Paragraph::new(line).render(area, buf);
}

/// The keys that apply right now, most useful first ([`FOOTER_ORDER`]), as
/// many as fit; help and quit always stay at the end.
fn render_footer(app: &App, area: Rect, buf: &mut Buffer) {
    let t = &app.theme;
    let scope = if app.focus == Focus::Jobs {
        Scope::Jobs
    } else {
        Scope::Log
    };
    let fixed = [Action::Help, Action::Quit];
    let item = |b: &super::keys::Binding| (t.key_name(b.shown), app.label(b));
    let width = |items: &[(String, &str)]| {
        items
            .iter()
            .map(|(k, l)| k.chars().count() + l.len() + 4)
            .sum::<usize>()
    };
    let tail: Vec<(String, &str)> = BINDINGS
        .iter()
        .filter(|b| fixed.contains(&b.action))
        .map(item)
        .collect();
    let mut items: Vec<(String, &str)> = Vec::new();
    let ordered = FOOTER_ORDER.iter().filter_map(|&a| super::keys::binding(a));
    for b in ordered {
        if fixed.contains(&b.action) || !(b.scope == Scope::Everywhere || b.scope == scope) || !app.available(b.action)
        {
            continue;
        }
        let mut next = items.clone();
        next.push(item(b));
        // One that does not fit leaves room for a shorter one after it.
        if width(&next) + width(&tail) <= area.width as usize {
            items = next;
        }
    }
    items.extend(tail);
    let mut spans = Vec::new();
    for (k, label) in items {
        if !spans.is_empty() {
            spans.push(Span::styled(t.glyph(" · ", " | "), t.dim()));
        }
        spans.push(Span::styled(k, t.title()));
        spans.push(Span::raw(format!(" {label}")));
    }
    Paragraph::new(Line::from(spans)).render(area, buf);
}

/// The help overlay's text at `width`: every binding, its help wrapped
/// whole under its key (never cut), then what the glyphs mean.
pub fn help_lines(app: &App, width: usize) -> Vec<Line<'static>> {
    let t = &app.theme;
    let key_w = 8;
    let room = width.saturating_sub(key_w).max(10);
    let mut lines = Vec::new();
    for b in BINDINGS {
        let scope = match b.scope {
            Scope::Everywhere => "",
            Scope::Jobs => " (jobs pane)",
            Scope::Log => " (log pane)",
        };
        let text = format!("{}{scope}", b.help);
        for (i, row) in wrap_words(&text, room).into_iter().enumerate() {
            let key = if i == 0 {
                format!("{:<key_w$}", t.key_name(b.shown))
            } else {
                " ".repeat(key_w)
            };
            lines.push(Line::from(vec![Span::styled(key, t.title()), Span::raw(row)]));
        }
    }
    lines.push(Line::raw(""));
    lines.push(Line::styled("What the glyphs mean:", t.title()));
    let mut row: Vec<Span> = Vec::new();
    let mut used = 0;
    for (status, flaky, allowed, cached) in super::theme::LEGEND {
        let (glyph, style) = t.status(status, flaky, allowed, cached);
        let word = super::theme::look(status, flaky, allowed, cached).word;
        let cell = glyph.chars().count() + 1 + word.len() + 3;
        if used + cell > width && !row.is_empty() {
            lines.push(Line::from(std::mem::take(&mut row)));
            used = 0;
        }
        row.push(Span::styled(glyph, style));
        row.push(Span::raw(format!(" {word}   ")));
        used += cell;
    }
    if !row.is_empty() {
        lines.push(Line::from(row));
    }
    let note = format!(
        "In the header: a count per status ({} 5 = five passed); #N on a box: attempt N; {} on a box: history calls the job flaky, failing in 18% of its past runs.",
        t.status(JobStatus::Succeeded, false, false, false).0,
        flake_mark(t, 18)
    );
    lines.extend(wrap_words(&note, width.max(10)).into_iter().map(Line::raw));
    lines
}

/// A job's historical flake rate as its box shows it: `⚑18%` (`~18%`
/// under `--ascii`, where `!` is an allowed failure).
fn flake_mark(t: &super::theme::Theme, pct: u8) -> String {
    format!("{}{pct}%", t.glyph("⚑", "~"))
}

/// Splits `text` into rows of at most `width` characters at spaces (a
/// word longer than a row is split).
fn wrap_words(text: &str, width: usize) -> Vec<String> {
    let mut rows = vec![String::new()];
    for word in text.split(' ') {
        let mut word = word.to_string();
        loop {
            let cur = rows.last_mut().map_or(0, |r| r.chars().count());
            let need = word.chars().count() + usize::from(cur > 0);
            if cur + need <= width {
                if let Some(r) = rows.last_mut() {
                    if cur > 0 {
                        r.push(' ');
                    }
                    r.push_str(&word);
                }
                break;
            }
            if cur > 0 {
                rows.push(String::new());
                continue;
            }
            // A word longer than a whole row.
            let head: String = word.chars().take(width).collect();
            word = word.chars().skip(width).collect();
            if let Some(r) = rows.last_mut() {
                r.push_str(&head);
            }
            rows.push(String::new());
            if word.is_empty() {
                break;
            }
        }
    }
    rows.retain(|r| !r.is_empty());
    rows
}

fn render_help(app: &App, area: Rect, buf: &mut Buffer) {
    let inner = usize::from(area.width.min(OVERLAY_WIDTH).saturating_sub(2));
    render_overlay(app, " keys ", help_lines(app, inner), app.help_top, area, buf);
}

/// Widest an overlay (help, tests, history) gets.
const OVERLAY_WIDTH: u16 = 100;

/// A box over the middle of the screen with `lines` from row `top` on, and
/// a last line that says how to scroll and that any other key closes it.
fn render_overlay(app: &App, title: &str, lines: Vec<Line<'static>>, top: usize, area: Rect, buf: &mut Buffer) {
    let t = &app.theme;
    let w = area.width.min(OVERLAY_WIDTH);
    let room = usize::from(area.height.saturating_sub(3));
    let top = top.min(lines.len().saturating_sub(room));
    let more = lines.len() > top + room;
    let mut shown: Vec<Line> = lines.into_iter().skip(top).take(room).collect();
    let h = (shown.len() as u16 + 3).min(area.height);
    let rect = Rect::new(area.x + (area.width - w) / 2, area.y + (area.height - h) / 2, w, h);
    Clear.render(rect, buf);
    // Short enough for 80 columns, ASCII under --ascii.
    let (down, up) = (t.glyph("↓", "v"), t.glyph("↑", "^"));
    shown.push(Line::styled(
        if more {
            format!("j/{down}: more; k/{up}: back; other keys close this")
        } else if top > 0 {
            format!("k/{up}: back; other keys close this")
        } else {
            "Any key closes this; Ctrl-C quits".to_string()
        },
        t.dim(),
    ));
    Paragraph::new(shown)
        .block(
            Block::default()
                .borders(Borders::ALL)
                .border_set(t.border_set())
                .title(Span::styled(title.to_string(), t.title())),
        )
        .render(rect, buf);
}

/// Log lines shown under a failed test case: the first that names it, with
/// one before and one after.
const TEST_LOG_LINES: usize = 3;

/// The selected job's test cases as the tests overlay lists them: the
/// counts, then each failed case (and each that passed only on a rerun)
/// with its message and the first log lines that name it.
fn tests_lines(app: &App) -> Vec<Line<'static>> {
    let t = &app.theme;
    let m = &app.model;
    let Some(j) = app.selected_job() else {
        return vec![Line::raw("no job selected")];
    };
    let job = &m.jobs[j];
    let Some((attempt, report)) = &job.tests else {
        // `t` is refused for such a job; this is only a fallback.
        return vec![Line::styled("no test report", t.dim())];
    };
    let mut counts = format!(
        "{} failed, {} passed, {} skipped",
        report.failed, report.passed, report.skipped
    );
    if report.rerun > 0 {
        counts.push_str(&format!(", {} passed only on a rerun", report.rerun));
    }
    let mut lines = vec![Line::styled(counts, t.title())];
    if report.cases.is_empty() {
        lines.push(Line::styled("every test case passed", t.dim()));
    }
    let log = m.logs.get(&(j, *attempt));
    let (failed, _) = t.status(JobStatus::Failed, false, false, false);
    let (rerun, _) = t.status(JobStatus::Succeeded, true, false, false);
    for c in &report.cases {
        let is_failed = c.outcome == "failed";
        let mut head = vec![
            Span::styled(
                format!("{} ", if is_failed { &failed } else { &rerun }),
                if is_failed { t.error() } else { t.warn() },
            ),
            Span::raw(c.name.clone()),
            Span::styled(format!("  {}", seconds(c.duration_ms)), t.dim()),
        ];
        if c.quarantined {
            head.push(Span::styled("  quarantined", t.warn()));
        }
        if !is_failed {
            head.push(Span::styled(
                format!(
                    "  passed on a rerun after {} failed tr{}",
                    c.reruns_failed,
                    if c.reruns_failed == 1 { "y" } else { "ies" }
                ),
                t.warn(),
            ));
        }
        lines.push(Line::from(head));
        for l in c.message.iter().flat_map(|m| m.lines()).take(3) {
            lines.push(Line::raw(format!("    {l}")));
        }
        // Where the log names it: the test's own name, past its class.
        let own = c.name.rsplit(['.', ':']).next().unwrap_or(&c.name);
        if let Some(log) = log.filter(|_| own.len() >= 3)
            && let Some(at) = log.lines.iter().position(|l| l.text.contains(own))
        {
            for (k, l) in log
                .lines
                .iter()
                .enumerate()
                .skip(at.saturating_sub(1))
                .take(TEST_LOG_LINES)
            {
                let mut spans = vec![Span::styled(format!("    log {:>5} ", log.dropped + k + 1), t.dim())];
                spans.extend(ansi::spans(&l.text, t.color));
                lines.push(Line::from(spans));
            }
        }
    }
    let listed = report.cases.len();
    if report.failed + report.rerun > listed {
        lines.push(Line::styled(
            format!(
                "and {} more: trackside tests {} {}",
                report.failed + report.rerun - listed,
                m.run_id,
                job.name
            ),
            t.dim(),
        ));
    }
    lines
}

/// Columns of the history overlay's charts, at most (one per run).
const CHART_RUNS: usize = 60;
/// Rows of the duration chart.
const CHART_ROWS: usize = 5;

/// The nodes view: one line per node (address, state, availability, role,
/// trackside's tasks), its labels and size beneath, and this run's running
/// jobs there.
fn nodes_lines(app: &App) -> Vec<Line<'static>> {
    let t = &app.theme;
    let m = &app.model;
    let Some((nodes, omitted, at)) = &m.cluster else {
        return vec![Line::styled(
            "no swarm nodes reported: the nodes view is for --executor swarm (docs/swarm.md), once its manager answers",
            t.dim(),
        )];
    };
    let mut lines = Vec::new();
    let ready = nodes.iter().filter(|n| n.state == "ready" && n.active).count();
    // The run looks every few seconds, and tells a change in load alone
    // less often: how old the figures are is said.
    let age = app.now.saturating_sub(*at) / 1000;
    lines.push(Line::styled(
        format!(
            "{ready} of {} node(s) ready and active; tasks as of {age} s ago",
            nodes.len() + omitted
        ),
        t.dim(),
    ));
    for n in nodes {
        let healthy = n.state == "ready" && n.active;
        let mark = if healthy {
            Span::styled(t.glyph("●", "*"), t.ok())
        } else {
            Span::styled(t.glyph("✗", "x"), t.error())
        };
        let role = if n.manager { "manager" } else { "worker" };
        lines.push(Line::from(vec![
            mark,
            Span::raw(" "),
            Span::styled(format!("{:<15}", n.name()), t.title()),
            Span::raw(format!(
                " {:<9} {:<7} {:<8} {} task(s)",
                n.state, n.availability, role, n.trackside_tasks
            )),
        ]));
        let labels: Vec<String> = n.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let labels = if labels.is_empty() {
            "no labels".to_string()
        } else {
            labels.join(",")
        };
        lines.push(Line::styled(
            format!(
                "  {} CPU(s), {}  {labels}",
                n.cpus,
                crate::protocol::view::gib(n.memory)
            ),
            t.dim(),
        ));
        // This run's jobs running there (a job's node names the node's address first).
        let here: Vec<&str> = m
            .jobs
            .iter()
            .filter(|j| j.status == JobStatus::Running)
            .filter(|j| {
                j.node
                    .as_deref()
                    .is_some_and(|at| at.split(' ').next() == Some(n.name()))
            })
            .map(|j| j.name.as_str())
            .collect();
        if !here.is_empty() {
            lines.push(Line::raw(format!("  this run: {}", here.join(", "))));
        }
    }
    if *omitted > 0 {
        lines.push(Line::styled(format!("and {omitted} more node(s)"), t.dim()));
    }
    lines
}

/// The pipeline's recent runs (and this one, once it has finished) as the
/// history overlay charts them: durations as columns (failed runs in the
/// failure colour), each run's result under it, the failure rate over the
/// last five runs, failed attempts by class and the flakiest jobs.
fn dashboard_lines(app: &App, width: u16) -> Vec<Line<'static>> {
    let t = &app.theme;
    let m = &app.model;
    let Some(h) = &m.history else {
        return vec![Line::styled(
            "no history for this pipeline yet: each run adds to it (trackside stats shows it too)",
            t.dim(),
        )];
    };
    // (duration, failed, this run)
    let mut runs: Vec<(u64, bool, bool)> = h
        .durations_ms
        .iter()
        .zip(&h.results)
        .map(|(&d, r)| (d, r == "failed", false))
        .collect();
    if let Some(f) = &m.finished {
        runs.push((f.duration_ms, f.result != crate::protocol::RunResult::Passed, true));
    }
    let cols = usize::from(width.saturating_sub(14)).clamp(1, CHART_RUNS);
    let runs = &runs[runs.len().saturating_sub(cols)..];
    let label = |s: &str| Span::styled(format!("{s:<10}"), t.dim());
    // Runs of seconds read in seconds; longer ones as m:ss.
    let clock = |ms: u64| {
        if ms < 60_000 {
            return format!("{:.1}s", ms as f64 / 1000.0);
        }
        let s = (ms + 500) / 1000;
        format!("{}:{:02}", s / 60, s % 60)
    };
    let failed_n = runs.iter().filter(|r| r.1).count();
    let mut lines = vec![Line::from(vec![
        label("runs"),
        Span::raw(format!(
            "the last {}, oldest first{}",
            runs.len(),
            if m.finished.is_some() { "; this run last" } else { "" }
        )),
    ])];
    let max = runs.iter().map(|r| r.0).max().unwrap_or(0).max(1);
    lines.push(Line::from(vec![
        label("duration"),
        Span::raw(format!(
            "p50 {}  p90 {}  longest {}",
            clock(h.p50_ms),
            clock(h.p90_ms),
            clock(max)
        )),
    ]));
    // Columns in eighths of a row (ASCII: whole rows of `#`).
    const EIGHTHS: [&str; 9] = [" ", "▁", "▂", "▃", "▄", "▅", "▆", "▇", "█"];
    for row in (0..CHART_ROWS).rev() {
        let axis = match row {
            r if r == CHART_ROWS - 1 => format!("{:>8} ", clock(max)),
            0 => format!("{:>8} ", "0"),
            _ => " ".repeat(9),
        };
        let mut spans = vec![Span::styled(axis, t.dim()), Span::styled(t.glyph("│", "|"), t.dim())];
        for &(d, failed, this) in runs {
            let filled = (d as f64 / max as f64 * (CHART_ROWS * 8) as f64).round() as usize;
            let cell = filled.saturating_sub(row * 8).min(8);
            let glyph = if t.ascii {
                if cell >= 4 { "#" } else { " " }
            } else {
                EIGHTHS[cell]
            };
            let style = match (failed, this) {
                (_, true) => t.selected(),
                (true, false) => t.error(),
                (false, false) => t.fg(ratatui::style::Color::Green),
            };
            spans.push(Span::styled(glyph, style));
        }
        lines.push(Line::from(spans));
    }
    let (pass, pass_style) = t.status(JobStatus::Succeeded, false, false, false);
    let (fail, fail_style) = t.status(JobStatus::Failed, false, false, false);
    let mut marks = vec![Span::styled(format!("{:>10}", "result "), t.dim())];
    for &(_, failed, _) in runs {
        marks.push(if failed {
            Span::styled(fail.clone(), fail_style)
        } else {
            Span::styled(pass.clone(), pass_style)
        });
    }
    lines.push(Line::from(marks));
    // The failure rate over the five runs up to each.
    let rates: Vec<u64> = (0..runs.len())
        .map(|i| {
            let w = &runs[i.saturating_sub(4)..=i];
            (w.iter().filter(|r| r.1).count() * 100 / w.len()) as u64
        })
        .collect();
    lines.push(Line::from(vec![
        label("failed"),
        Span::raw(format!(
            "{failed_n} of {} ({:.0}%)",
            runs.len(),
            failed_n as f64 * 100.0 / runs.len().max(1) as f64,
        )),
    ]));
    // Under the chart, run by run: the failed share of the five runs up to each.
    let mut rate = vec![Span::styled(format!("{:>10}", "fail rate "), t.dim())];
    rate.push(Span::styled(bars(&rates, 100, t.ascii), t.warn()));
    lines.push(Line::from(rate));
    if !h.failures_by_class.is_empty() {
        let classes: Vec<String> = h
            .failures_by_class
            .iter()
            .take(5)
            .map(|c| format!("{} {}", c.class, c.attempts))
            .collect();
        let before = if m.finished.is_some() { " (before this run)" } else { "" };
        lines.push(Line::from(vec![
            label("classes"),
            Span::raw(classes.join(", ")),
            Span::styled(before, t.dim()),
        ]));
    }
    let pct = |x: f64| format!("{:.0}%", x * 100.0);
    for (i, f) in h.flaky.iter().enumerate() {
        lines.push(Line::from(vec![
            label(if i == 0 { "flakiest" } else { "" }),
            Span::raw(format!("{}  {} [{}, {}]", f.job, pct(f.rate), pct(f.low), pct(f.high))),
        ]));
    }
    if h.flaky.is_empty() {
        lines.push(Line::from(vec![
            label("flakiest"),
            Span::styled("no job has been flaky", t.dim()),
        ]));
    }
    lines
}

/// `values` (each at most `max`) as a line of bars from `▁` to `█` (`_`
/// to `#` in ASCII), one per value.
fn bars(values: &[u64], max: u64, ascii: bool) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    const ASCII: [char; 8] = ['_', '.', '-', '~', '=', '+', '*', '#'];
    let levels = if ascii { ASCII } else { BARS };
    values
        .iter()
        .map(|&v| levels[((v.min(max) as f64 / max.max(1) as f64) * 7.0).round() as usize])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::truncate;

    #[test]
    fn a_cut_instance_name_keeps_what_tells_it_apart() {
        assert_eq!(truncate("unit-test: [3.10, mysql]", 18, false), "unit…[3.10, mysql]");
        assert_eq!(truncate("unit-test: [3.10, mysql]", 18, true), "unit~[3.10, mysql]");
        assert_eq!(truncate("short", 18, false), "short");
        // When even the values do not fit, the end is cut as usual.
        assert_eq!(truncate("build: [a-very-long-value]", 8, false), "build: …");
        assert_eq!(truncate("plain-long-name", 6, true), "plain~");
    }
}
