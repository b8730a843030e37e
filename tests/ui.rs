//! The terminal UI without a terminal: key handling as plain functions, and
//! whole screens rendered on ratatui's TestBackend, checked with insta
//! snapshots (review every snapshot change like code).

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::style::Color;

use trackside::engine::event::{Event, EventKind, PlannedJob};
use trackside::engine::{JobStatus, Stream};
use trackside::pipeline::{FailureClass, When};
use trackside::ui::app::{App, Command, Focus, Mode};
use trackside::ui::theme::Theme;

const T0: u64 = 1_700_000_000_000;

fn ev(at: u64, kind: EventKind) -> Event {
    Event {
        seq: 0,
        ts: T0 + at,
        kind,
    }
}

fn planned(name: &str, deps: &[&str], level: usize, when: When) -> PlannedJob {
    PlannedJob {
        name: name.into(),
        depends_on: deps.iter().map(|d| d.to_string()).collect(),
        level,
        when,
        allow_failure: false,
        steps: vec!["main".into()],
        has_image: true,
        stage: None,
        facts: Vec::new(),
        flake_pct: None,
    }
}

/// A small pipeline: lint, build -> test, test-flaky -> integration -> deploy (manual).
fn app_with(events: &[Event], theme: Theme) -> App {
    let mut app = App::new(theme);
    app.model.apply(&ev(
        0,
        EventKind::RunStarted {
            run_id: "20261123-120000-abcd".into(),
            pipeline: "demo".into(),
            jobs: vec![],
            max_parallel: 2,
        },
    ));
    app.model.apply(&ev(
        0,
        EventKind::PlanChanged {
            jobs: vec![
                planned("lint", &[], 0, When::OnSuccess),
                planned("build", &[], 0, When::OnSuccess),
                planned("test", &["build"], 1, When::OnSuccess),
                planned("test-flaky", &["build"], 1, When::OnSuccess),
                planned("integration", &["lint", "test", "test-flaky"], 2, When::OnSuccess),
                planned("deploy", &["integration"], 3, When::Manual),
            ],
            critical_path: vec!["build".into(), "test".into(), "integration".into(), "deploy".into()],
            stages: Vec::new(),
        },
    ));
    for e in events {
        app.model.apply(e);
    }
    app.now = T0 + 5_000;
    app
}

fn color() -> Theme {
    Theme {
        color: true,
        ascii: false,
    }
}

fn started(at: u64, job: &str, attempt: u32) -> Event {
    ev(
        at,
        EventKind::JobStarted {
            job: job.into(),
            attempt,
        },
    )
}

fn line(at: u64, job: &str, attempt: u32, text: &str) -> Event {
    ev(
        at,
        EventKind::LogLine {
            job: job.into(),
            attempt,
            step: "main".into(),
            stream: Stream::Stdout,
            line: text.into(),
            line_no: 0,
        },
    )
}

fn step(at: u64, job: &str, attempt: u32) -> Event {
    ev(
        at,
        EventKind::StepStarted {
            job: job.into(),
            attempt,
            step: "main".into(),
            index: 0,
            line_no: 0,
        },
    )
}

fn done(at: u64, job: &str, attempt: u32, status: JobStatus, class: Option<FailureClass>, ms: u64) -> Event {
    ev(
        at,
        EventKind::JobFinished {
            job: job.into(),
            attempt,
            status,
            exit_code: Some(if class.is_some() { 1 } else { 0 }),
            failure_class: class,
            duration_ms: ms,
            flaky: false,
            message: class.map(|_| "step `main` exited with 1".to_string()),
            cached: None,
            diagnosis: None,
        },
    )
}

fn running_events() -> Vec<Event> {
    vec![
        started(10, "lint", 1),
        started(10, "build", 1),
        step(11, "build", 1),
        line(20, "build", 1, "compiling shop v1.4.0"),
        line(30, "build", 1, "\x1b[32m   Finished\x1b[0m release in 0.9s"),
        done(1_000, "lint", 1, JobStatus::Succeeded, None, 990),
        done(1_200, "build", 1, JobStatus::Succeeded, None, 1_190),
        started(1_200, "test", 1),
        started(1_200, "test-flaky", 1),
        step(1_201, "test", 1),
        line(1_300, "test", 1, "test cart ... ok"),
    ]
}

fn failed_events() -> Vec<Event> {
    let mut evs = running_events();
    evs.extend([
        step(1_201, "test-flaky", 1),
        line(1_400, "test-flaky", 1, "test payment ... FAILED"),
        line(1_401, "test-flaky", 1, "assertion failed: left == right"),
        done(
            2_000,
            "test-flaky",
            1,
            JobStatus::Failed,
            Some(FailureClass::Script),
            800,
        ),
        ev(
            2_000,
            EventKind::JobSkipped {
                job: "integration".into(),
                reason: "blocked by test-flaky".into(),
            },
        ),
        ev(
            2_000,
            EventKind::JobSkipped {
                job: "deploy".into(),
                reason: "blocked by test-flaky".into(),
            },
        ),
    ]);
    evs
}

fn gate_events() -> Vec<Event> {
    let mut evs = running_events();
    evs.extend([
        done(2_000, "test", 1, JobStatus::Succeeded, None, 800),
        done(2_100, "test-flaky", 1, JobStatus::Succeeded, None, 900),
        started(2_100, "integration", 1),
        done(3_000, "integration", 1, JobStatus::Succeeded, None, 900),
        ev(3_000, EventKind::GateWaiting { job: "deploy".into() }),
    ]);
    evs
}

fn screen(app: &App, w: u16, h: u16) -> TestBackend {
    let mut terminal = Terminal::new(TestBackend::new(w, h)).expect("terminal");
    terminal.draw(|f| f.render_widget(app, f.area())).expect("draw");
    terminal.backend().clone()
}

fn key(c: char) -> KeyEvent {
    KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE)
}

fn select(app: &mut App, job: &str) {
    app.selected = app.model.job(job).expect("job");
}

#[test]
fn running_dag() {
    let mut app = app_with(&running_events(), color());
    select(&mut app, "build");
    insta::assert_snapshot!(screen(&app, 120, 30));
}

#[test]
fn failed_job_with_log_and_class() {
    let mut app = app_with(&failed_events(), color());
    select(&mut app, "test-flaky");
    app.focus = Focus::Log;
    insta::assert_snapshot!(screen(&app, 120, 30));
}

#[test]
fn failed_jobs_are_red() {
    let mut app = app_with(&failed_events(), color());
    select(&mut app, "lint");
    let backend = screen(&app, 120, 30);
    let buf = backend.buffer();
    let red: Vec<(u16, u16)> = (0..buf.area.height)
        .flat_map(|y| (0..buf.area.width).map(move |x| (x, y)))
        .filter(|&(x, y)| buf[(x, y)].symbol() == "✖")
        .collect();
    assert!(!red.is_empty(), "a failure glyph is drawn");
    for (x, y) in red {
        assert_eq!(buf[(x, y)].fg, Color::Red, "failure glyph at {x},{y}");
    }
    let green = (0..buf.area.height)
        .flat_map(|y| (0..buf.area.width).map(move |x| (x, y)))
        .find(|&(x, y)| buf[(x, y)].symbol() == "✔")
        .expect("a pass glyph");
    assert_eq!(buf[green].fg, Color::Green);
}

#[test]
fn no_color_drops_every_colour() {
    let app = app_with(
        &failed_events(),
        Theme {
            color: false,
            ascii: false,
        },
    );
    let backend = screen(&app, 120, 30);
    let buf = backend.buffer();
    for y in 0..buf.area.height {
        for x in 0..buf.area.width {
            assert_eq!(buf[(x, y)].fg, Color::Reset, "colour at {x},{y}");
        }
    }
}

#[test]
fn manual_gate_waiting_for_approval() {
    let mut app = app_with(&gate_events(), color());
    select(&mut app, "deploy");
    let cmds = app.handle_key(key('a'));
    assert!(cmds.is_empty(), "approval asks first");
    insta::assert_snapshot!(screen(&app, 120, 30));
    assert_eq!(app.handle_key(key('y')), vec![Command::Approve("deploy".into())]);
}

#[test]
fn a_gate_that_takes_approvals_by_name_says_who_approved_and_who_is_still_needed_at_80x24() {
    let mut evs = gate_events();
    evs.push(ev(
        3_200,
        EventKind::Approved {
            job: "deploy".into(),
            user: "ben".into(),
            by: "ben@build-host".into(),
            given: 1,
            required: 2,
            waiting_for: Some("1 more from group sre, not the run's starter".into()),
        },
    ));
    let mut app = app_with(&evs, color());
    select(&mut app, "deploy");
    // The policy, as the engine's plan gives it.
    let d = app.model.job("deploy").expect("deploy");
    app.model.jobs[d]
        .facts
        .push(("approvers".into(), "2 of group sre (not the run's starter)".into()));
    // At 80 columns the detail is a tab of its own.
    app.wide = false;
    app.focus = Focus::Detail;
    let text = format!("{:?}", screen(&app, 80, 24).buffer());
    assert!(text.contains("approvers: 2 of group sre"), "{text}");
    assert!(text.contains("approved by: ben@build-host"), "{text}");
    assert!(text.contains("waiting for 1 more from group sre"), "{text}");
}

#[test]
fn s_opens_the_services_view_from_the_run_screen() {
    let mut app = app_with(&running_events(), color());
    assert_eq!(
        app.handle_key(KeyEvent::new(KeyCode::Char('S'), KeyModifiers::SHIFT)),
        vec![Command::Services]
    );
}

#[test]
fn help_overlay() {
    let mut app = app_with(&running_events(), color());
    app.handle_key(key('?'));
    assert_eq!(app.mode, Mode::Help);
    insta::assert_snapshot!(screen(&app, 100, 34));
    app.handle_key(key('x'));
    assert_eq!(app.mode, Mode::Normal, "any key closes help");
}

#[test]
fn help_shows_every_key_even_at_80x24() {
    let mut app = app_with(&running_events(), color());
    app.handle_key(key('?'));
    // Every line whole (wrapped, never cut), every key reachable by scrolling.
    let mut seen = String::new();
    for _ in 0..60 {
        let text = format!("{:?}", screen(&app, 80, 24).buffer());
        assert!(!text.contains('…'), "a help line is cut at 80x24:\n{text}");
        seen.push_str(&text);
        // The hint under the keys is whole too.
        assert!(
            text.contains("other keys close this") || text.contains("Any key closes this"),
            "the hint is cut at 80x24:\n{text}"
        );
        if !text.contains("j/↓: more") {
            break;
        }
        app.handle_key(KeyEvent::new(KeyCode::Down, KeyModifiers::NONE));
        assert_eq!(app.mode, Mode::Help, "scrolling keeps the help open");
    }
    for b in trackside::ui::keys::BINDINGS {
        let shown = format!("{:<8}", b.shown);
        assert!(seen.contains(&shown), "`{}` is missing from the help at 80x24", b.shown);
        let first: String = b.help.split(' ').take(3).collect::<Vec<_>>().join(" ");
        assert!(seen.contains(&first), "`{}`'s help is missing: {first}", b.shown);
    }
    assert!(
        seen.contains("What the glyphs mean") && seen.contains("✔ passed") && seen.contains("≈ flaky"),
        "{seen}"
    );
    app.handle_key(key('x'));
    assert_eq!(app.mode, Mode::Normal, "any other key closes help");
    // With --ascii, the help (its hint included) is ASCII only.
    let mut ascii = app_with(
        &running_events(),
        Theme {
            color: false,
            ascii: true,
        },
    );
    ascii.handle_key(key('?'));
    let text = screen(&ascii, 80, 24).to_string();
    assert!(text.contains("j/v: more; k/^: back"), "{text}");
    let odd: Vec<char> = text.chars().filter(|c| !c.is_ascii()).collect();
    assert!(odd.is_empty(), "non-ASCII in --ascii help: {odd:?}\n{text}");
}

#[test]
fn small_terminal_80x24() {
    let mut app = app_with(&failed_events(), color());
    app.wide = false;
    select(&mut app, "test-flaky");
    insta::assert_snapshot!("80x24_jobs", screen(&app, 80, 24));
    app.handle_key(KeyEvent::new(KeyCode::Tab, KeyModifiers::NONE));
    assert_eq!(app.focus, Focus::Log);
    insta::assert_snapshot!("80x24_log", screen(&app, 80, 24));
}

#[test]
fn ascii_mode() {
    let mut app = app_with(
        &failed_events(),
        Theme {
            color: false,
            ascii: true,
        },
    );
    select(&mut app, "integration");
    let backend = screen(&app, 100, 24);
    let text = backend.to_string();
    assert!(text.is_ascii(), "non-ASCII in:\n{text}");
    insta::assert_snapshot!(backend);
}

#[test]
fn keys_steer_the_selected_job() {
    let mut app = app_with(&failed_events(), color());
    select(&mut app, "test-flaky");
    assert_eq!(app.handle_key(key('r')), vec![Command::Retry("test-flaky".into())]);
    assert_eq!(app.handle_key(key('R')), vec![Command::RerunFailed]);
    assert!(app.handle_key(key('c')).is_empty());
    assert!(app.status.as_deref().unwrap_or("").contains("already finished"));
    select(&mut app, "lint");
    assert!(app.handle_key(key('r')).is_empty());
    assert!(app.status.as_deref().unwrap_or("").contains("only failed or cancelled"));
    select(&mut app, "test");
    app.handle_key(key('c'));
    assert!(matches!(app.mode, Mode::Confirm { .. }));
    assert!(app.handle_key(key('n')).is_empty(), "n answers no");
    app.handle_key(key('c'));
    assert_eq!(app.handle_key(key('y')), vec![Command::Cancel("test".into())]);
    app.handle_key(key('C'));
    assert_eq!(app.handle_key(key('y')), vec![Command::CancelAll]);
    assert_eq!(app.handle_key(key('p')), vec![Command::Pause]);
}

#[test]
fn quitting_asks_while_jobs_run() {
    let mut app = app_with(&running_events(), color());
    assert!(app.handle_key(key('q')).is_empty());
    assert!(matches!(&app.mode, Mode::Confirm { question, .. } if question.contains("running")));
    assert_eq!(app.handle_key(key('y')), vec![Command::Quit { cancel: true }]);
    let mut idle = app_with(&gate_events(), color());
    assert_eq!(idle.handle_key(key('q')), vec![Command::Quit { cancel: false }]);
}

#[test]
fn arrows_move_through_the_dag() {
    let mut app = app_with(&running_events(), color());
    select(&mut app, "build");
    app.handle_key(KeyEvent::new(KeyCode::Right, KeyModifiers::NONE));
    assert_eq!(
        app.model.jobs[app.selected].name, "test-flaky",
        "same row in the next level"
    );
    app.handle_key(key('l'));
    assert_eq!(app.model.jobs[app.selected].name, "integration");
    app.handle_key(key('h'));
    assert_eq!(app.model.jobs[app.selected].name, "test");
    app.handle_key(key('k'));
    assert_eq!(app.model.jobs[app.selected].name, "build", "up in level order");
    app.handle_key(key('G'));
    assert_eq!(app.model.jobs[app.selected].name, "deploy");
}

#[test]
fn log_search_jumps_to_matches_and_follow_toggles() {
    let mut evs = running_events();
    for i in 0..50 {
        evs.push(line(1_500 + i, "build", 1, &format!("line {i}")));
    }
    evs.push(line(1_600, "build", 1, "warning: unused variable"));
    let mut app = app_with(&evs, color());
    select(&mut app, "build");
    app.handle_key(KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE));
    assert_eq!(app.focus, Focus::Log);
    app.log_height = 10;
    app.handle_key(key('/'));
    for c in "line 1".chars() {
        app.handle_key(key(c));
    }
    app.handle_key(KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE));
    assert!(!app.follow);
    let first = app.log_top;
    app.handle_key(key('n'));
    assert!(app.log_top > first, "n moves to the next match");
    app.handle_key(key('N'));
    assert_eq!(app.log_top, first);
    app.handle_key(key('G'));
    assert!(app.follow, "G follows the tail again");
    app.handle_key(key('f'));
    assert!(!app.follow);
}

#[test]
fn filter_narrows_the_job_list() {
    let mut app = app_with(&running_events(), color());
    app.handle_key(key('/'));
    for c in "test".chars() {
        app.handle_key(key(c));
    }
    app.handle_key(KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE));
    let names: Vec<&str> = app
        .visible_jobs()
        .iter()
        .map(|&j| app.model.jobs[j].name.as_str())
        .collect();
    assert_eq!(names, ["test", "test-flaky"]);
    assert!(names.contains(&app.model.jobs[app.selected].name.as_str()));
}

#[test]
fn attempts_of_a_retried_job_can_be_switched() {
    let mut evs = running_events();
    evs.extend([
        line(1_400, "test-flaky", 1, "first try"),
        ev(
            1_500,
            EventKind::JobRetrying {
                job: "test-flaky".into(),
                attempt: 2,
                delay_ms: 100,
                failure_class: FailureClass::Network,
                exit_code: Some(6),
                diagnosis: None,
            },
        ),
        started(1_600, "test-flaky", 2),
        line(1_700, "test-flaky", 2, "second try"),
    ]);
    let mut app = app_with(&evs, color());
    select(&mut app, "test-flaky");
    assert_eq!(app.shown_attempt(), Some(2));
    app.handle_key(key('['));
    assert_eq!(app.shown_attempt(), Some(1));
    let text = screen(&app, 120, 30).to_string();
    assert!(text.contains("first try") && text.contains("attempt 1/2"), "{text}");
    app.handle_key(key(']'));
    assert_eq!(app.shown_attempt(), Some(2));
}

/// A log of `LOG_WINDOW + extra` lines for `build`, the first `extra` of
/// them only on disk.
fn long_log_app(extra: usize) -> App {
    use trackside::ui::model::LOG_WINDOW;
    let mut evs = running_events();
    for i in 0..(LOG_WINDOW + extra) {
        evs.push(line(2_000, "build", 1, &format!("build line {i}")));
    }
    let mut app = app_with(&evs, color());
    select(&mut app, "build");
    app.focus = Focus::Log;
    app.log_height = 10;
    app
}

/// What the loop would read from the run's log file for `req`: the lines
/// named as on disk, one of them (`needle_at`) holding a needle.
fn disk_lines(req: &trackside::ui::app::OlderRequest, needle_at: usize) -> Vec<trackside::ui::model::LogLine> {
    use trackside::ui::model::{LineKind, LogLine};
    (req.from..req.from + req.count)
        .map(|i| LogLine {
            ts: 0,
            kind: if i == 0 { LineKind::Step } else { LineKind::Out },
            text: match i {
                0 => "main".into(),
                i if i == needle_at => "error: needle".into(),
                i => format!("disk line {i}"),
            },
        })
        .collect()
}

#[test]
fn scrolling_above_the_window_reads_a_bounded_window_from_disk() {
    use trackside::ui::app::OLDER_WINDOW;
    let mut app = long_log_app(100_000);
    let build = app.model.job("build").expect("build");
    assert_eq!(app.needs_older(), None, "the tail is in memory");
    app.handle_key(key('g'));
    let wanted = app.needs_older().expect("the top is on disk");
    assert_eq!((wanted.key, wanted.from, wanted.count), ((build, 1), 0, OLDER_WINDOW));
    app.older_arrived(wanted, disk_lines(&wanted, usize::MAX), false);
    assert_eq!(app.needs_older(), None);
    let text = screen(&app, 120, 30).to_string();
    assert!(
        text.contains("── step: main ──") && text.contains("disk line 1"),
        "{text}"
    );
    // Far down the part on disk: a window around the view replaces the
    // first, so what is held stays one window however far one scrolls.
    app.log_top = 60_000;
    let next = app.needs_older().expect("line 60,000 is not loaded");
    assert!(next.from <= 60_000 && 60_010 <= next.from + next.count, "{next:?}");
    assert!(next.count <= OLDER_WINDOW);
    app.older_arrived(next, disk_lines(&next, usize::MAX), false);
    assert!(app.older.as_ref().is_some_and(|o| o.lines.len() <= OLDER_WINDOW));
    assert!(screen(&app, 120, 30).to_string().contains("disk line 60000"));
    // Paging within the window reads nothing more.
    app.handle_key(KeyEvent::new(KeyCode::PageDown, KeyModifiers::NONE));
    assert_eq!(app.needs_older(), None);
    // A file shorter than asked (damaged) is not asked for again and again.
    app.log_top = 90_000;
    let short = app.needs_older().expect("not loaded");
    app.older_arrived(short, Vec::new(), false);
    assert_eq!(app.needs_older(), None);
    // Very long lines: an answer cut at its size limit covers only what
    // came; the view's lines are then asked for from its top, once.
    app.log_top = 50_000;
    let first = app.needs_older().expect("not loaded");
    assert!(first.from < 50_000, "{first:?}");
    let mut few = disk_lines(&first, usize::MAX);
    few.truncate(3);
    app.older_arrived(first, few, true);
    let again = app.needs_older().expect("the view is not covered by the cut answer");
    assert_eq!(again.from, 50_000);
    let mut few = disk_lines(&again, usize::MAX);
    few.truncate(3);
    app.older_arrived(again, few, true);
    assert_eq!(app.needs_older(), None, "not asked again and again");
    assert!(screen(&app, 120, 30).to_string().contains("disk line 50002"));
}

#[test]
fn a_log_search_covers_the_lines_only_on_disk() {
    use trackside::protocol::query::LogHits as Hits;
    let mut app = long_log_app(20);
    let dropped = app.model.logs[&(app.selected, 1)].dropped;
    app.handle_key(key('/'));
    for c in "needle".chars() {
        app.handle_key(key(c));
    }
    app.handle_key(KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE));
    let scan = app.needs_scan().expect("the search wants the lines on disk");
    assert_eq!((scan.from, scan.to, scan.query.as_str()), (0, dropped, "needle"));
    assert!(app.status.as_deref().unwrap_or("").contains("whole log"));
    // What the loop found in the run's log file: the needle is line 7.
    app.scan_arrived(
        scan,
        Hits {
            lines: vec![7],
            capped: false,
        },
    );
    assert_eq!(app.needs_scan(), None, "the disk part is searched once");
    assert_eq!(app.log_top, 7, "the search jumped to the line on disk");
    let window = app.needs_older().expect("line 7 is read to be shown");
    app.older_arrived(window, disk_lines(&window, 7), false);
    assert!(screen(&app, 120, 30).to_string().contains("error: needle"));
    assert_eq!(app.needs_older(), None);
    // Matches in memory come after it, in order.
    app.search = Some("build line 3".into());
    app.disk_hits = None;
    let scan = app.needs_scan().expect("a new search reads the disk again");
    app.scan_arrived(scan, Hits::default());
    app.handle_key(key('n'));
    assert!(app.log_top >= dropped, "{} < {dropped}", app.log_top);
    let first_in_memory = app.log_top;
    let status = app.status.clone().unwrap_or_default();
    assert!(status.starts_with("match 1/"), "the count: {status}");
    let total: usize = status.trim_start_matches("match 1/").parse().expect("a count");
    // No earlier match: the search goes round to the last one and says so.
    app.handle_key(key('N'));
    assert!(app.log_top > first_in_memory, "wrapped to the last match");
    assert_eq!(
        app.status.as_deref(),
        Some(format!("match {total}/{total} (wrapped to the bottom)").as_str())
    );
    app.handle_key(key('n'));
    assert_eq!(app.log_top, first_in_memory);
    assert_eq!(
        app.status.as_deref(),
        Some(format!("match 1/{total} (wrapped to the top)").as_str())
    );
}

#[test]
fn a_search_reads_only_what_dropped_out_of_memory_since_and_says_when_it_stopped_counting() {
    use trackside::protocol::query::LogHits as Hits;
    use trackside::ui::app::MAX_DISK_HITS;
    let mut app = long_log_app(20);
    // A search asked while the job talks jumps once what was on disk when
    // it was asked is searched, though more has left memory since.
    app.handle_key(key('/'));
    app.handle_key(key('7'));
    app.handle_key(KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE));
    let asked = app.needs_scan().expect("the disk part");
    for i in 0..30 {
        app.apply(&line(2_900, "build", 1, &format!("talk {i}")));
    }
    app.scan_arrived(
        asked,
        Hits {
            lines: vec![7],
            capped: false,
        },
    );
    assert_eq!(app.log_top, 7, "it jumped");
    assert!(app.needs_scan().is_some(), "the new disk lines are searched next");
    app.search = Some("line".into());
    app.disk_hits = None;
    let first = app.needs_scan().expect("disk part");
    app.scan_arrived(
        first.clone(),
        Hits {
            lines: (0..first.to).collect(),
            capped: false,
        },
    );
    // The job goes on talking: more lines leave memory for the disk.
    for i in 0..30 {
        app.apply(&line(3_000, "build", 1, &format!("more line {i}")));
    }
    let more = app.needs_scan().expect("the new disk lines");
    assert_eq!((more.from, more.to), (first.to, first.to + 30));
    // An answer to an older question is ignored.
    let known = first.to;
    app.scan_arrived(first, Hits::default());
    app.scan_arrived(
        more.clone(),
        Hits {
            lines: vec![more.from],
            capped: false,
        },
    );
    assert_eq!(app.disk_hits.as_ref().map(|h| h.lines.len()), Some(known + 1));
    // A search that matches too much keeps a bounded count and says "+".
    app.search = Some("e".into());
    let all = app.needs_scan().expect("disk part");
    app.scan_arrived(
        all,
        Hits {
            lines: (0..MAX_DISK_HITS).collect(),
            capped: true,
        },
    );
    assert_eq!(app.needs_scan(), None, "a capped search reads no further");
    app.handle_key(key('n'));
    let status = app.status.clone().unwrap_or_default();
    assert!(status.contains("+"), "{status}");
}

#[test]
fn a_log_search_finds_step_markers_too() {
    let mut app = app_with(&running_events(), color());
    select(&mut app, "test");
    app.focus = Focus::Log;
    app.search = Some("main".into());
    app.log_top = 0;
    app.handle_key(key('n'));
    assert_eq!(
        app.status.as_deref(),
        Some("match 1/1 (wrapped to the top)"),
        "the marker of step `main`"
    );
}

#[test]
fn any_terminal_size_renders_without_panicking() {
    let mut app = app_with(&failed_events(), color());
    select(&mut app, "integration");
    for w in 1..=40u16 {
        for h in 1..=14u16 {
            app.wide = w >= 100;
            screen(&app, w, h);
        }
    }
    app.handle_key(key('?'));
    for (w, h) in [(1, 1), (10, 3), (30, 8), (79, 23)] {
        screen(&app, w, h);
    }
    app.handle_key(key('x'));
    app.list_mode = true;
    for (w, h) in [(1, 1), (5, 5), (20, 6)] {
        screen(&app, w, h);
    }
}

fn rollout_event(at: u64, job: &str, phase: &str) -> Event {
    use trackside::deploy::replica::ReplicaView;
    use trackside::deploy::router::{Pool, Totals};
    ev(
        at,
        EventKind::Rollout {
            job: job.into(),
            status: Box::new(trackside::deploy::rollout::Status {
                service: "web".into(),
                strategy: "canary".into(),
                router: "HAProxy".into(),
                stable_version: Some("v1".into()),
                canary_version: "v2".into(),
                phase: phase.into(),
                detail: Some("manual gate: promote to continue".into()),
                countdown_s: None,
                step: 1,
                steps: 3,
                weight: 300,
                actual_weight: 298,
                stable: Totals {
                    requests: 700,
                    errors: 0,
                    p50_ms: 4.0,
                    p95_ms: 6.7,
                    p99_ms: 8.0,
                },
                canary: Totals {
                    requests: 300,
                    errors: 3,
                    p50_ms: 4.2,
                    p95_ms: 7.1,
                    p99_ms: 9.5,
                },
                recent_error_rate: [Some(0.0), Some(0.01)],
                recent_p95_ms: [Some(6.5), Some(7.0)],
                verdict: None,
                replicas: [
                    ("stable v1#1", Pool::Stable, "healthy"),
                    ("stable v1#2", Pool::Stable, "healthy"),
                    ("canary v2#1", Pool::Canary, "unhealthy"),
                ]
                .into_iter()
                .map(|(name, pool, health)| ReplicaView {
                    name: name.into(),
                    pool,
                    addr: "127.0.0.1:1".into(),
                    health: health.into(),
                })
                .collect(),
                step_names: vec!["weight 30%".into(), "gate".into(), "weight 100%".into()],
                limits: [Some(5.0), None],
                approvals: Vec::new(),
                waiting_for: None,
                approvers: None,
            }),
        },
    )
}

#[test]
fn a_rollout_is_shown_and_steered_by_keystroke() {
    let mut evs = running_events();
    evs.push(rollout_event(1_400, "test", "gate"));
    evs.push(rollout_event(1_900, "test", "gate"));
    let mut app = app_with(&evs, color());
    select(&mut app, "test");
    assert_eq!(
        app.model.jobs[app.selected].rollout_history.len(),
        2,
        "the whole history is kept"
    );
    let text = format!("{:?}", screen(&app, 120, 50).buffer());
    assert!(
        text.contains("err% •stable") && text.contains("p95ms •stable") && text.contains("canary weight %"),
        "{text}"
    );
    assert!(text.contains("rollout: web v1 -> v2"), "{text}");
    assert!(text.contains("canary weight 30.0% (actual 29.8%)"), "{text}");
    assert!(text.contains("(canary via HAProxy)"), "{text}");
    assert!(text.contains("replicas: stable 2 healthy; canary 1"), "{text}");
    assert!(text.contains("unhealthy: canary v2#1"), "{text}");
    assert!(text.contains("steps: ✓weight 30%  ▶gate  ·weight 100%"), "{text}");
    assert!(text.contains("1.00% err"), "canary 3/300: {text}");
    assert_eq!(
        app.handle_key(key('P')),
        vec![Command::Rollout(
            "test".into(),
            trackside::deploy::rollout::Command::Promote
        )]
    );
    assert_eq!(
        app.handle_key(key('A')),
        vec![Command::Rollout(
            "test".into(),
            trackside::deploy::rollout::Command::Abort
        )],
        "abort asks nothing: it must be fast"
    );
    assert_eq!(
        app.handle_key(key('H')),
        vec![Command::Rollout(
            "test".into(),
            trackside::deploy::rollout::Command::Pause
        )],
        "H holds a running rollout"
    );
    let mut held = running_events();
    held.push(rollout_event(2_000, "test", "held"));
    let mut held = app_with(&held, color());
    select(&mut held, "test");
    assert_eq!(
        held.handle_key(key('H')),
        vec![Command::Rollout(
            "test".into(),
            trackside::deploy::rollout::Command::Resume
        )],
        "H resumes a held one"
    );
    // Full promotion wants the service name typed.
    assert!(app.handle_key(key('F')).is_empty());
    assert!(matches!(app.mode, Mode::TypedConfirm { .. }));
    for c in "wbe".chars() {
        app.handle_key(key(c));
    }
    assert!(
        app.handle_key(KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE))
            .is_empty(),
        "a typo promotes nothing"
    );
    app.handle_key(key('F'));
    for c in "web".chars() {
        app.handle_key(key(c));
    }
    assert_eq!(
        app.handle_key(KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE)),
        vec![Command::Rollout(
            "test".into(),
            trackside::deploy::rollout::Command::PromoteFull
        )]
    );
    // After completion, `b` makes the previous revision stable again, asking first.
    let mut done = running_events();
    done.push(rollout_event(2_000, "test", "completed"));
    let mut after = app_with(&done, color());
    select(&mut after, "test");
    assert!(after.handle_key(key('b')).is_empty());
    assert_eq!(after.handle_key(key('y')), vec![Command::RollbackService("web".into())]);
    assert!(
        after.handle_key(key('H')).is_empty(),
        "an ended rollout has nothing to hold"
    );
    assert!(after.status.as_deref().unwrap_or("").contains("has ended"));
    select(&mut app, "lint");
    assert!(app.handle_key(key('P')).is_empty(), "not a deploy job");
    assert!(app.status.as_deref().unwrap_or("").contains("not a deploy job"));
}

/// An SRE over SSH at 80x24: the rollout's numbers and keys must fit.
#[test]
fn a_rollout_at_80x24() {
    let mut evs = running_events();
    evs.push(rollout_event(1_400, "test", "gate"));
    evs.push(rollout_event(1_900, "test", "gate"));
    let mut app = app_with(&evs, color());
    app.wide = false;
    select(&mut app, "test");
    insta::assert_snapshot!("80x24_rollout", screen(&app, 80, 24));
    app.handle_key(KeyEvent::new(KeyCode::Tab, KeyModifiers::NONE));
    app.handle_key(KeyEvent::new(KeyCode::Tab, KeyModifiers::NONE));
    assert_eq!(app.focus, Focus::Detail);
    insta::assert_snapshot!("80x24_rollout_detail", screen(&app, 80, 24));
}

#[test]
fn a_deploy_box_says_where_its_rollout_stands_and_the_footer_offers_its_keys() {
    let mut evs = running_events();
    let mut held = rollout_event(1_400, "test", "held");
    if let EventKind::Rollout { status, .. } = &mut held.kind {
        status.weight = 5;
    }
    evs.push(held);
    let mut app = app_with(&evs, color());
    select(&mut app, "test");
    let text = format!("{:?}", screen(&app, 140, 24).buffer());
    assert!(text.contains("held 0.5%"), "{text}");
    assert!(
        text.contains("H resume"),
        "the rollout's keys are in the footer: {text}"
    );
    assert!(
        !text.contains("H hold") && !text.contains("P promote") && !text.contains("F 100%"),
        "a held rollout takes no promote, and H resumes it: {text}"
    );
    app.model.paused = true;
    let paused = format!("{:?}", screen(&app, 140, 24).buffer());
    assert!(paused.contains("p resume") && !paused.contains("p pause"), "{paused}");
    app.model.paused = false;
    assert!(app.handle_key(key('P')).is_empty(), "P does not apply while held");
    assert_eq!(
        app.status.as_deref(),
        Some("the rollout of `web` is held: H resumes it first")
    );
    // Once it has ended the box shows the time again, and only `b` is left.
    evs.push(rollout_event(1_900, "test", "completed"));
    let mut app = app_with(&evs, color());
    select(&mut app, "test");
    let text = format!("{:?}", screen(&app, 140, 24).buffer());
    assert!(!text.contains("held 0.5%") && text.contains("b rollback"), "{text}");
    assert!(!text.contains("P promote"), "{text}");
    assert!(app.handle_key(key('P')).is_empty());
    assert_eq!(
        app.status.as_deref(),
        Some("the rollout of `web` has ended (completed)")
    );
}

#[test]
fn too_short_for_charts_a_rollout_shows_its_trends_as_sparklines() {
    let mut evs = running_events();
    for (i, err) in [0.0, 0.0, 0.01, 0.05].into_iter().enumerate() {
        let mut e = rollout_event(1_400 + 500 * i as u64, "test", "gate");
        if let EventKind::Rollout { status, .. } = &mut e.kind {
            status.recent_error_rate = [Some(0.0), Some(err)];
        }
        evs.push(e);
    }
    let mut app = app_with(&evs, color());
    app.wide = false;
    select(&mut app, "test");
    app.focus = Focus::Detail;
    let text = screen(&app, 80, 24).to_string();
    let err = text
        .lines()
        .find(|l| l.contains("err %"))
        .unwrap_or_else(|| panic!("a trend line for errors: {text}"));
    let canary: String = err
        .split(" canary ")
        .nth(1)
        .unwrap_or_default()
        .chars()
        .take_while(|c| !c.is_whitespace())
        .collect();
    assert!(canary.starts_with('▁') && canary.ends_with('█'), "rising: {err}");
    assert!(err.contains("5.0"), "the latest value: {err}");
    assert!(text.contains("p95 ms canary"), "{text}");
    // Tall enough, the charts replace them.
    let text = screen(&app, 80, 50).to_string();
    assert!(
        !text.contains("err %  canary") && text.contains("err% •stable"),
        "{text}"
    );
}

#[test]
fn the_prompt_line_shows_the_rollouts_answer_and_then_the_runs_result() {
    let mut evs = running_events();
    evs.push(rollout_event(1_400, "test", "held"));
    let mut app = app_with(&evs, color());
    select(&mut app, "test");
    // What the front-end does once the engine took the command.
    app.awaiting_rollout = Some(("test".into(), "Promote".into()));
    app.status = Some("Promote sent to the rollout of test; waiting for its answer".into());
    app.apply(&ev(
        1_500,
        EventKind::RolloutDecision {
            job: "test".into(),
            text: "promote ignored: the rollout is paused; resume first".into(),
            by: Some("ana@host".into()),
        },
    ));
    let text = format!("{:?}", screen(&app, 80, 24).buffer());
    assert!(
        text.contains("rollout of test: promote ignored: the rollout is paused"),
        "the refusal, not 'sent': {text}"
    );
    assert!(app.awaiting_rollout.is_none());
    // A decision about another job, or with nothing awaited, leaves the line alone.
    app.status = Some("kept".into());
    app.apply(&ev(
        1_600,
        EventKind::RolloutDecision {
            job: "test".into(),
            text: "weight: canary 10%".into(),
            by: None,
        },
    ));
    assert_eq!(app.status.as_deref(), Some("kept"));
    // Once the run ends, its result replaces the last command's message.
    app.apply(&ev(
        2_000,
        EventKind::RunFinished {
            summary: trackside::engine::event::RunSummary {
                run_id: "r".into(),
                pipeline: "demo".into(),
                result: trackside::engine::RunResult::Failed,
                exit_code: 1,
                duration_ms: 2_000,
                jobs: Vec::new(),
                message: "1 of 6 jobs failed: test".into(),
                repeat: None,
            },
        },
    ));
    assert_eq!(app.status.as_deref(), Some("run failed: 1 of 6 jobs failed: test"));
}

#[test]
fn levels_off_screen_are_said_on_the_pane_border_in_words() {
    let mut app = App::new(color());
    let jobs: Vec<PlannedJob> = (0..6)
        .map(|i| {
            let dep = format!("stage-{}", i.max(1) - 1);
            let deps: Vec<&str> = if i == 0 { vec![] } else { vec![dep.as_str()] };
            planned(&format!("stage-{i}"), &deps, i, When::OnSuccess)
        })
        .collect();
    app.model.apply(&ev(
        0,
        EventKind::PlanChanged {
            jobs,
            critical_path: vec![],
            stages: Vec::new(),
        },
    ));
    app.wide = false;
    app.now = T0 + 1_000;
    let buf = screen(&app, 80, 24).buffer().clone();
    let rows: Vec<String> = (0..24)
        .map(|y| (0..80).map(|x| buf[(x, y)].symbol().to_string()).collect())
        .collect();
    let hint = rows.iter().position(|r| r.contains("more level")).expect("a hint");
    assert!(
        rows[hint].contains("1 more level →") || rows[hint].contains("2 more levels →"),
        "{}",
        rows[hint]
    );
    assert!(
        rows[hint].starts_with('└'),
        "the hint sits on the pane's border: {}",
        rows[hint]
    );
    assert!(!rows[hint].contains("  more"), "{}", rows[hint]);
}

#[test]
fn a_canary_with_no_requests_shows_no_latency() {
    let mut evs = running_events();
    let mut e = rollout_event(1_400, "test", "running");
    if let EventKind::Rollout { status, .. } = &mut e.kind {
        status.canary = Default::default();
    }
    evs.push(e);
    let mut app = app_with(&evs, color());
    select(&mut app, "test");
    let text = format!("{:?}", screen(&app, 160, 50).buffer());
    assert!(text.contains("canary: 0 req  -% err  p50 - p95 - p99 - ms"), "{text}");
}

#[test]
fn the_shell_key_is_offered_only_for_jobs_with_an_image() {
    let mut app = app_with(&failed_events(), color());
    select(&mut app, "test-flaky");
    let text = format!("{:?}", screen(&app, 160, 30).buffer());
    assert!(text.contains("s shell"), "{text}");
    let j = app.selected_job().expect("selected");
    app.model.jobs[j].has_image = false;
    let text = format!("{:?}", screen(&app, 160, 30).buffer());
    assert!(!text.contains("s shell"), "a host job offers no shell: {text}");
    assert!(app.handle_key(key('s')).is_empty());
    assert_eq!(
        app.status.as_deref(),
        Some("`test-flaky` has no step with an image; a shell opens in a failed container job")
    );
}

#[test]
fn the_jobs_filter_selects_by_status_too() {
    let mut app = app_with(&failed_events(), color());
    let names = |app: &App| -> Vec<String> {
        app.visible_jobs()
            .iter()
            .map(|&j| app.model.jobs[j].name.clone())
            .collect()
    };
    app.filter = "is:failed".into();
    assert_eq!(names(&app), ["test-flaky"]);
    app.filter = "is:passed".into();
    assert_eq!(names(&app), ["lint", "build"]);
    app.filter = "is:passed bu".into();
    assert_eq!(names(&app), ["build"], "all words hold");
    app.filter = "test".into();
    assert_eq!(names(&app), ["test", "test-flaky"]);
}

/// The log as the loop would size it, drawn: the rows of the screen.
fn drawn(app: &mut App, w: u16, h: u16) -> Vec<String> {
    let text = trackside::ui::render::log_text_area(app, ratatui::layout::Rect::new(0, 0, w, h));
    app.log_height = usize::from(text.height);
    app.log_width = usize::from(text.width);
    app.detail_max_top = trackside::ui::render::detail_max_top(app, ratatui::layout::Rect::new(0, 0, w, h));
    let buf = screen(app, w, h).buffer().clone();
    (0..h)
        .map(|y| (0..w).map(|x| buf[(x, y)].symbol().to_string()).collect())
        .collect()
}

#[test]
fn wrapped_logs_scroll_by_rows_so_the_end_of_a_long_line_shows() {
    for long_len in [600usize, 3_000] {
        let mut evs = running_events();
        for i in 0..30 {
            evs.push(line(1_310 + i, "test", 1, &format!("short line {i}")));
        }
        let long = format!("ERROR: {} THE-REAL-CAUSE", "x".repeat(long_len));
        evs.push(line(1_400, "test", 1, &long));
        for i in 0..4 {
            evs.push(line(1_401 + i, "test", 1, &format!("last line {i}")));
        }
        let mut app = app_with(&evs, color());
        app.wide = false;
        select(&mut app, "test");
        app.focus = Focus::Log;
        app.handle_key(key('w'));
        // Following: the tail, in wrapped rows.
        let rows = drawn(&mut app, 80, 24).join("\n");
        assert!(rows.contains("last line 3"), "{rows}");
        // From the top, G and PgDn and j reach the cause and the last line.
        app.handle_key(key('g'));
        assert!(!drawn(&mut app, 80, 24).join("\n").contains("THE-REAL-CAUSE"));
        app.handle_key(key('G'));
        let rows = drawn(&mut app, 80, 24).join("\n");
        assert!(rows.contains("THE-REAL-CAUSE") || long_len > 1_000, "{rows}");
        assert!(rows.contains("last line 3"), "G shows the end: {rows}");
        app.handle_key(key('g'));
        let mut seen_cause = false;
        let mut seen_last = false;
        for _ in 0..200 {
            app.handle_key(KeyEvent::new(KeyCode::PageDown, KeyModifiers::NONE));
            let rows = drawn(&mut app, 80, 24).join("\n");
            seen_cause |= rows.contains("THE-REAL-CAUSE");
            seen_last |= rows.contains("last line 3");
            if seen_last && app.follow {
                break;
            }
        }
        assert!(
            seen_cause && seen_last,
            "PgDn reaches the cause and the end ({long_len})"
        );
        app.handle_key(key('g'));
        for _ in 0..200 {
            app.handle_key(key('j'));
        }
        let rows = drawn(&mut app, 80, 24).join("\n");
        assert!(rows.contains("last line 3"), "j reaches the end: {rows}");
    }
}

#[test]
fn the_live_edit_banner_fits_80_columns_counts_what_it_leaves_out_and_esc_hides_it() {
    let mut app = app_with(&running_events(), color());
    app.wide = false;
    let file = "/home/someone/projects/a-long-project-name/ci/pipelines/pipeline.yml".to_string();
    app.apply(&ev(
        1_500,
        EventKind::PipelineInvalid {
            file: file.clone(),
            diagnostics: (1..=3)
                .map(|i| format!("{file}:{i}:3: error: unknown key `stepz{i}` in job `build` (at jobs.build.stepz{i})"))
                .collect(),
        },
    ));
    let rows = drawn(&mut app, 80, 24);
    let all = rows.join("\n");
    assert!(!all.contains("/home/someone"), "the file by its name: {all}");
    assert!(all.contains("pipeline.yml has errors"), "{all}");
    assert!(all.contains("stepz1") && all.contains("stepz2"), "{all}");
    assert!(all.contains("+1 more"), "the third is counted: {all}");
    assert!(all.contains("jobs.build.stepz2)"), "lines wrap, not cut: {all}");
    app.handle_key(KeyEvent::new(KeyCode::Esc, KeyModifiers::NONE));
    assert!(app.model.banner.is_none(), "Esc hides the banner");
    assert!(!drawn(&mut app, 80, 24).join("\n").contains("has errors"));
}

#[test]
fn a_rollout_shows_weight_verdict_and_trends_at_every_size() {
    let mut evs = running_events();
    for i in 0..6 {
        evs.push(rollout_event(1_400 + i * 500, "test", "gate"));
    }
    for (w, h) in [(80u16, 24u16), (100, 30), (120, 40), (160, 50), (200, 60)] {
        let mut app = app_with(&evs, color());
        app.wide = w >= trackside::ui::render::WIDE;
        select(&mut app, "test");
        if !app.wide {
            app.focus = Focus::Detail;
        }
        let text = format!("{:?}", screen(&app, w, h).buffer());
        assert!(text.contains("canary weight 30.0%"), "{w}x{h}: the weight\n{text}");
        assert!(
            text.contains("manual gate: promote to continue"),
            "{w}x{h}: where it stands\n{text}"
        );
        let charts = text.contains("err% •stable") && text.contains("p95ms •stable");
        let sparks = text.contains("err %") && text.contains("canary ");
        assert!(charts || sparks, "{w}x{h}: the trends\n{text}");
    }
}

#[test]
fn a_small_dag_leaves_the_width_to_the_log() {
    let mut app = App::new(color());
    app.model.apply(&ev(
        0,
        EventKind::PlanChanged {
            jobs: vec![
                planned("a", &[], 0, When::OnSuccess),
                planned("b", &["a"], 1, When::OnSuccess),
            ],
            critical_path: vec![],
            stages: Vec::new(),
        },
    ));
    let long = format!("start {} end-of-line", "y".repeat(50));
    app.model.apply(&ev(
        10,
        EventKind::JobStarted {
            job: "a".into(),
            attempt: 1,
        },
    ));
    app.model.apply(&line(20, "a", 1, &long));
    app.now = T0 + 1_000;
    let text = format!("{:?}", screen(&app, 120, 30).buffer());
    assert!(
        text.contains("end-of-line"),
        "two levels take 40%, the log gets the rest: {text}"
    );
}

/// A canary the judge aborted: errors rising over six measurements, then
/// the abort, and the deploy job failed with the abort's reason.
fn aborted_canary_events() -> Vec<Event> {
    let mut evs = running_events();
    for (i, err) in [0.0, 0.0, 0.01, 0.02, 0.05, 0.08].into_iter().enumerate() {
        let mut e = rollout_event(1_400 + 500 * i as u64, "test", "analyzing");
        if let EventKind::Rollout { status, .. } = &mut e.kind {
            status.recent_error_rate = [Some(0.0), Some(err)];
        }
        evs.push(e);
    }
    let reason = "Aborted (stable serving): error rate 8.0% over the 5% limit";
    let mut abort = rollout_event(4_500, "test", "aborted");
    if let EventKind::Rollout { status, .. } = &mut abort.kind {
        use trackside::deploy::judge::{MetricOutcome, MetricResult, Verdict, VerdictClass};
        status.detail = Some(reason.into());
        status.weight = 0;
        status.actual_weight = 0;
        let metric = |name: &str, outcome, why: &str| MetricResult {
            metric: name.into(),
            outcome,
            stable: Some(0.0),
            canary: Some(8.0),
            p_value: Some(0.001),
            why: why.into(),
            critical: false,
        };
        status.verdict = Some(Verdict {
            score: 33.0,
            class: VerdictClass::Fail,
            metrics: vec![
                metric(
                    "error_rate",
                    MetricOutcome::High,
                    "canary 8.0% against stable 0.0% (Fisher's exact test, p=0.001)",
                ),
                metric(
                    "latency_p95",
                    MetricOutcome::High,
                    "canary median 7.1 ms against 6.5 ms (Mann-Whitney U, p=0.01)",
                ),
                metric("latency_p50", MetricOutcome::Pass, "no significant difference (p=0.4)"),
            ],
            why: "2 of 3 metrics failed".into(),
        });
    }
    evs.push(abort);
    evs.push(ev(
        4_600,
        EventKind::JobFinished {
            job: "test".into(),
            attempt: 1,
            status: JobStatus::Failed,
            exit_code: None,
            failure_class: Some(FailureClass::RolledBack),
            duration_ms: 3_300,
            flaky: false,
            message: Some(format!("{reason} (stable v1 kept serving)")),
            cached: None,
            diagnosis: None,
        },
    ));
    evs
}

#[test]
fn an_aborted_canary_at_80x24_says_its_reason_once_and_its_detail_scrolls_to_the_end() {
    let mut app = app_with(&aborted_canary_events(), color());
    app.wide = false;
    select(&mut app, "test");
    app.focus = Focus::Detail;
    let top = drawn(&mut app, 80, 24).join("\n");
    assert_eq!(
        top.matches("error rate 8.0% over the 5% limit").count(),
        1,
        "the reason once: {top}"
    );
    assert!(app.detail_max_top > 0, "it does not fit at 80x24: {top}");
    assert!(top.contains("more (Tab, j)"), "the border says there is more: {top}");
    assert!(!top.contains("#1 rolled_back"), "the attempts line is below: {top}");
    // j scrolls by a row, G to the end: the trends and the attempts show.
    app.handle_key(key('j'));
    assert_eq!(app.detail_top, 1);
    app.handle_key(key('G'));
    let end = drawn(&mut app, 80, 24);
    let text = end.join("\n");
    assert!(text.contains("#1 rolled_back"), "{text}");
    assert!(text.contains("err %") && text.contains("p95 ms"), "{text}");
    assert!(text.contains("more (k)"), "{text}");
    insta::assert_snapshot!("80x24_aborted_canary_detail_scrolled", text);
    // Scrolling past the end stays at the end; k and g go back.
    app.handle_key(KeyEvent::new(KeyCode::PageDown, KeyModifiers::NONE));
    assert_eq!(app.detail_top, app.detail_max_top);
    app.handle_key(key('k'));
    assert_eq!(app.detail_top, app.detail_max_top - 1);
    app.handle_key(key('g'));
    assert_eq!(app.detail_top, 0);
    // Another job starts at its top.
    app.detail_top = 3;
    app.focus = Focus::Jobs;
    app.handle_key(key('k'));
    assert_eq!(app.detail_top, 0);
}

#[test]
fn a_wide_detail_that_overflows_takes_focus_with_tab() {
    let mut app = app_with(&aborted_canary_events(), color());
    app.wide = true;
    select(&mut app, "test");
    drawn(&mut app, 120, 20);
    assert!(app.detail_max_top > 0);
    app.focus = Focus::Log;
    app.handle_key(KeyEvent::new(KeyCode::Tab, KeyModifiers::NONE));
    assert_eq!(app.focus, Focus::Detail);
    app.handle_key(KeyEvent::new(KeyCode::Tab, KeyModifiers::NONE));
    assert_eq!(app.focus, Focus::Jobs);
    // One that fits is skipped.
    select(&mut app, "lint");
    drawn(&mut app, 120, 40);
    assert_eq!(app.detail_max_top, 0);
    app.focus = Focus::Log;
    app.handle_key(KeyEvent::new(KeyCode::Tab, KeyModifiers::NONE));
    assert_eq!(app.focus, Focus::Jobs);
}

fn footer(app: &mut App, w: u16, h: u16) -> String {
    drawn(app, w, h).last().cloned().unwrap_or_default()
}

#[test]
fn the_80_column_footer_keeps_filter_and_list_while_jobs_run() {
    let mut app = app_with(&running_events(), color());
    app.wide = false;
    select(&mut app, "test");
    app.focus = Focus::Jobs;
    let jobs = footer(&mut app, 80, 24);
    assert!(app.model.is_active(), "jobs are running");
    for k in ["Enter log", "/ filter", "m list", "c cancel", "? help", "q quit"] {
        assert!(jobs.contains(k), "{k:?} in the jobs pane's footer: {jobs}");
    }
    assert!(!jobs.contains("w wrap"), "wrap is the log's: {jobs}");
    app.focus = Focus::Log;
    let log = footer(&mut app, 80, 24);
    for k in ["/ search", "f unfollow", "w wrap", "? help", "q quit"] {
        assert!(log.contains(k), "{k:?} in the log pane's footer: {log}");
    }
    assert!(!log.contains("m list"), "{log}");
    // A failed job's keys come first.
    let mut app = app_with(&failed_events(), color());
    app.wide = false;
    select(&mut app, "test-flaky");
    let failed = footer(&mut app, 80, 24);
    assert!(failed.starts_with("r retry"), "{failed}");
}

fn mouse(kind: crossterm::event::MouseEventKind, column: u16, row: u16) -> crossterm::event::MouseEvent {
    crossterm::event::MouseEvent {
        kind,
        column,
        row,
        modifiers: KeyModifiers::NONE,
    }
}

/// Where `text` is drawn on a screen: (column, row) of its first character.
fn find(rows: &[String], text: &str) -> (u16, u16) {
    rows.iter()
        .enumerate()
        .find_map(|(y, r)| r.find(text).map(|byte| (r[..byte].chars().count() as u16, y as u16)))
        .unwrap_or_else(|| panic!("{text:?} is not on the screen:\n{}", rows.join("\n")))
}

#[test]
fn a_click_selects_a_job_or_a_pane_and_the_wheel_scrolls_what_is_under_it() {
    use crossterm::event::{MouseButton, MouseEventKind as M};
    let screen_rect = ratatui::layout::Rect::new(0, 0, 120, 30);
    let mut evs = running_events();
    for i in 0..200 {
        evs.push(line(1_300, "build", 1, &format!("build line {i}")));
    }
    let mut app = app_with(&evs, color());
    app.wide = true;
    select(&mut app, "lint");
    let rows = drawn(&mut app, 120, 30);
    // A click on the body of integration's box selects it.
    let (x, y) = find(&rows, "integration");
    app.handle_mouse(mouse(M::Down(MouseButton::Left), x + 2, y + 1), screen_rect);
    assert_eq!(app.selected, app.model.job("integration").expect("job"));
    assert_eq!(app.focus, Focus::Jobs);
    // A click between the boxes selects nothing new.
    app.handle_mouse(mouse(M::Down(MouseButton::Left), 1, 28), screen_rect);
    assert_eq!(app.selected, app.model.job("integration").expect("job"));
    // The wheel over the jobs moves the selection.
    select(&mut app, "build");
    let rows = drawn(&mut app, 120, 30);
    let (bx, by) = find(&rows, "┌build");
    app.handle_mouse(mouse(M::ScrollDown, bx + 2, by + 1), screen_rect);
    assert_ne!(app.selected, app.model.job("build").expect("job"));
    // The wheel over the log scrolls it back three rows, out of follow.
    select(&mut app, "build");
    let rows = drawn(&mut app, 120, 30);
    let (lx, ly) = find(&rows, "build line 199");
    let bottom = app.log_view_top();
    app.handle_mouse(mouse(M::ScrollUp, lx, ly), screen_rect);
    assert!(!app.follow);
    assert_eq!(app.log_view_top(), bottom - 3);
    assert_eq!(app.focus, Focus::Jobs, "the wheel does not move the focus");
    // A click in the log gives it the focus.
    app.handle_mouse(mouse(M::Down(MouseButton::Left), lx, ly), screen_rect);
    assert_eq!(app.focus, Focus::Log);
    // With the help open, a click closes it and does nothing else.
    app.handle_key(key('?'));
    app.handle_mouse(mouse(M::Down(MouseButton::Left), x + 2, y + 1), screen_rect);
    assert_eq!(app.mode, Mode::Normal);
    assert_eq!(app.selected, app.model.job("build").expect("job"));
}

#[test]
fn on_a_narrow_screen_a_click_picks_a_tab_and_list_lines_are_jobs() {
    use crossterm::event::{MouseButton, MouseEventKind as M};
    let screen_rect = ratatui::layout::Rect::new(0, 0, 80, 24);
    let mut app = app_with(&running_events(), color());
    app.wide = false;
    let rows = drawn(&mut app, 80, 24);
    for (tab, focus) in [("Log", Focus::Log), ("Detail", Focus::Detail), ("Jobs", Focus::Jobs)] {
        let (x, y) = find(&rows, &format!(" {tab} "));
        app.handle_mouse(mouse(M::Down(MouseButton::Left), x + 1, y), screen_rect);
        assert_eq!(app.focus, focus, "{tab}");
    }
    app.list_mode = true;
    let rows = drawn(&mut app, 80, 24);
    let (x, y) = find(&rows, "test-flaky");
    app.handle_mouse(mouse(M::Down(MouseButton::Left), x, y), screen_rect);
    assert_eq!(app.selected, app.model.job("test-flaky").expect("job"));
}

#[test]
fn a_search_the_disk_cannot_answer_says_why_and_is_not_asked_again() {
    let mut app = long_log_app(20);
    app.handle_key(key('/'));
    for c in "build line 4".chars() {
        app.handle_key(key(c));
    }
    app.handle_key(KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE));
    let scan = app.needs_scan().expect("the disk part");
    app.scan_failed(scan, "cannot read /x/build.1.log: permission denied");
    assert_eq!(app.needs_scan(), None, "not asked again and again");
    assert!(
        app.status.as_deref().unwrap_or("").contains("permission denied"),
        "{:?}",
        app.status
    );
    // What is in memory is still searched, and the count says it may be short.
    app.handle_key(key('n'));
    let status = app.status.clone().unwrap_or_default();
    assert!(status.starts_with("match ") && status.contains("+"), "{status}");
}

#[test]
fn the_detail_scrolls_to_its_last_line_however_its_lines_wrap() {
    // A hub with 30 jobs before it and 30 after, failed three times: its
    // needs line wraps at words into more rows than its width says.
    let ups: Vec<String> = (1..=30).map(|i| format!("upstream-number-{i}")).collect();
    let mut jobs: Vec<PlannedJob> = ups.iter().map(|u| planned(u, &[], 0, When::OnSuccess)).collect();
    let up_refs: Vec<&str> = ups.iter().map(String::as_str).collect();
    jobs.push(planned("hub", &up_refs, 1, When::OnSuccess));
    jobs.extend((1..=30).map(|i| planned(&format!("downstream-number-{i}"), &["hub"], 2, When::OnSuccess)));
    let mut app = App::new(color());
    app.model.apply(&ev(
        0,
        EventKind::PlanChanged {
            jobs,
            critical_path: vec![],
            stages: Vec::new(),
        },
    ));
    for a in 1..=3 {
        app.apply(&started(100 * u64::from(a), "hub", a));
        app.apply(&done(
            100 * u64::from(a) + 10,
            "hub",
            a,
            if a == 3 { JobStatus::Failed } else { JobStatus::Retrying },
            Some(FailureClass::Script),
            10,
        ));
    }
    app.wide = false;
    select(&mut app, "hub");
    app.focus = Focus::Detail;
    for (w, h) in [(80, 24), (120, 40)] {
        app.wide = w >= trackside::ui::render::WIDE;
        app.detail_top = 0;
        drawn(&mut app, w, h);
        app.handle_key(key('G'));
        let text = drawn(&mut app, w, h).join("\n");
        assert!(
            text.contains("#1 script exit 1"),
            "{w}x{h}: the last line shows:\n{text}"
        );
        assert!(text.contains("more (k)"), "{w}x{h}:\n{text}");
    }
}

#[test]
fn the_headers_counts_use_the_glyphs_the_boxes_show() {
    let mut app = app_with(&running_events(), color());
    let set = |app: &mut App, name: &str, status: JobStatus| {
        let j = app.model.job(name).expect("job");
        app.model.jobs[j].status = status;
        j
    };
    // lint passed after a retry; build passed; test retrying; test-flaky
    // failed but may; integration queued; deploy pending.
    let lint = set(&mut app, "lint", JobStatus::Succeeded);
    app.model.jobs[lint].flaky = true;
    set(&mut app, "build", JobStatus::Succeeded);
    set(&mut app, "test", JobStatus::Retrying);
    let tf = set(&mut app, "test-flaky", JobStatus::Failed);
    app.model.jobs[tf].allow_failure = true;
    set(&mut app, "integration", JobStatus::Ready);
    set(&mut app, "deploy", JobStatus::Pending);
    let header = drawn(&mut app, 120, 30)[0].clone();
    // An allowed failure is `!`, not a failure's `✖`: told apart without colour.
    assert!(header.contains("✔1 ≈1 !1 ↻1 ◌1 ○1"), "{header}");
    assert!(header.contains("0/2 running"), "{header}");
    let mut ascii = app;
    ascii.theme = Theme {
        color: false,
        ascii: true,
    };
    let header = drawn(&mut ascii, 120, 30)[0].clone();
    assert!(header.contains("*1 %1 !1 r1 o1 .1"), "{header}");
}

#[test]
fn toggles_in_the_footer_name_where_they_go_and_a_finished_run_offers_no_pause() {
    let mut app = app_with(&running_events(), color());
    app.wide = false;
    select(&mut app, "test");
    app.focus = Focus::Jobs;
    assert!(footer(&mut app, 80, 24).contains("m list"));
    app.handle_key(key('m'));
    assert!(footer(&mut app, 80, 24).contains("m DAG"));
    app.focus = Focus::Log;
    let log = footer(&mut app, 80, 24);
    assert!(log.contains("f unfollow") && log.contains("w wrap"), "{log}");
    app.handle_key(key('f'));
    app.handle_key(key('w'));
    let log = footer(&mut app, 80, 24);
    assert!(log.contains("f follow") && log.contains("w unwrap"), "{log}");
    // Once the run has passed: no pause, and nothing to retry is offered.
    let mut evs = running_events();
    evs.extend([
        done(1_500, "test", 1, JobStatus::Succeeded, None, 300),
        done(1_500, "test-flaky", 1, JobStatus::Succeeded, None, 300),
        ev(
            1_600,
            EventKind::RunFinished {
                summary: trackside::engine::RunSummary {
                    run_id: "r".into(),
                    pipeline: "demo".into(),
                    result: trackside::engine::event::RunResult::Passed,
                    exit_code: 0,
                    duration_ms: 1_600,
                    message: "all 4 jobs passed".into(),
                    jobs: vec![],
                    repeat: None,
                },
            },
        ),
    ]);
    let mut done_app = app_with(&evs, color());
    done_app.wide = false;
    select(&mut done_app, "test");
    done_app.handle_key(key('p'));
    assert_eq!(done_app.status.as_deref(), Some("the run has finished"));
    done_app.handle_key(key('j'));
    let rows = drawn(&mut done_app, 80, 24);
    let (prompt, footer_row) = (&rows[22], &rows[23]);
    assert!(!footer_row.contains("p pause"), "{footer_row}");
    assert!(
        prompt.contains("run finished: all 4 jobs passed; q quits") && !prompt.contains("retries"),
        "{prompt}"
    );
}

#[test]
fn under_ascii_a_rollout_shows_ascii_sparklines_not_unicode_charts() {
    let mut evs = running_events();
    for i in 0..6 {
        evs.push(rollout_event(1_400 + i * 500, "test", "gate"));
    }
    let mut app = app_with(
        &evs,
        Theme {
            color: false,
            ascii: true,
        },
    );
    app.wide = true;
    select(&mut app, "test");
    let text = screen(&app, 160, 50).to_string();
    assert!(text.contains("err %") && text.contains("p95 ms canary"), "{text}");
    let odd: Vec<char> = text.chars().filter(|c| !c.is_ascii()).collect();
    assert!(odd.is_empty(), "non-ASCII under --ascii: {odd:?}\n{text}");
}

#[test]
fn the_jobs_pane_says_which_way_the_hidden_jobs_are() {
    let jobs: Vec<PlannedJob> = (1..=60)
        .map(|i| planned(&format!("job-{i:02}"), &[], 0, When::OnSuccess))
        .collect();
    let mut app = App::new(color());
    app.model.apply(&ev(
        0,
        EventKind::PlanChanged {
            jobs,
            critical_path: vec![],
            stages: Vec::new(),
        },
    ));
    app.wide = false;
    app.focus = Focus::Jobs;
    let bottom = |app: &mut App| drawn(app, 80, 24)[21].clone();
    // The DAG: one level of 60 boxes, 6 rows of them on screen.
    let b = bottom(&mut app);
    assert!(b.contains("↓ 54 more rows") && !b.contains('↑'), "{b}");
    app.handle_key(key('G'));
    let b = bottom(&mut app);
    assert!(b.contains("↑ 54 more rows") && !b.contains('↓'), "{b}");
    // The list: 18 lines of 60.
    app.handle_key(key('m'));
    app.handle_key(key('g'));
    let b = bottom(&mut app);
    assert!(b.contains("↓ 42 more") && !b.contains('↑'), "{b}");
    app.handle_key(key('G'));
    let b = bottom(&mut app);
    assert!(b.contains("↑ 42 more") && !b.contains('↓'), "{b}");
}

#[test]
fn an_aborted_rollout_marks_where_it_stopped_and_offers_retry_once_the_job_has_ended() {
    let mut evs = aborted_canary_events();
    let finished = evs.pop().expect("the job's end");
    let mut app = app_with(&evs, color());
    app.wide = true;
    select(&mut app, "test");
    let text = screen(&app, 160, 50).to_string();
    assert!(text.contains("✓weight 30%  ✗gate  ·weight 100%"), "{text}");
    assert!(
        text.contains("then r retries the job"),
        "still in its abort delay: {text}"
    );
    app.apply(&finished);
    let text = screen(&app, 160, 50).to_string();
    assert!(text.contains("r retry the deploy job"), "{text}");
}

#[test]
fn a_rollout_at_its_gate_is_waiting_for_approval_in_the_header() {
    let mut evs = running_events();
    evs.push(done(1_250, "test-flaky", 1, JobStatus::Succeeded, None, 50));
    evs.push(rollout_event(1_400, "test", "analyzing"));
    let app = app_with(&evs, color());
    let header = screen(&app, 120, 30).to_string();
    assert!(!header.contains("waiting for approval"), "{header}");
    let mut app = app;
    app.apply(&rollout_event(1_500, "test", "gate"));
    let header = screen(&app, 120, 30).to_string();
    let first = header.lines().next().unwrap_or_default();
    assert!(first.contains("waiting for approval"), "{first}");
}

#[test]
fn a_gitlab_pipeline_is_drawn_a_column_per_stage_with_its_name_on_top() {
    let mut app = App::new(color());
    let staged = |name: &str, deps: &[&str], level: usize, stage: &str| PlannedJob {
        stage: Some(stage.into()),
        ..planned(name, deps, level, When::OnSuccess)
    };
    app.model.apply(&ev(
        0,
        EventKind::RunStarted {
            run_id: "20261123-120000-abcd".into(),
            pipeline: "shop".into(),
            jobs: vec![],
            max_parallel: 2,
        },
    ));
    // `unit` needs nothing (level 0 by the plan), yet it is drawn under its stage.
    app.model.apply(&ev(
        0,
        EventKind::PlanChanged {
            jobs: vec![
                staged("compile", &[], 0, "build"),
                staged("unit", &[], 0, "test"),
                staged("lint", &["compile"], 1, "test"),
                PlannedJob {
                    facts: vec![
                        ("environment".into(), "production https://shop.example.com".into()),
                        ("tags".into(), "docker, linux".into()),
                    ],
                    ..staged("ship", &["unit", "lint"], 2, "deploy")
                },
            ],
            critical_path: vec![],
            stages: vec![
                ".pre".into(),
                "build".into(),
                "test".into(),
                "deploy".into(),
                ".post".into(),
            ],
        },
    ));
    assert_eq!(app.model.stage_names, vec!["build", "test", "deploy"]);
    let rows = drawn(&mut app, 100, 30);
    let header = rows
        .iter()
        .position(|r| r.contains("build") && r.contains("test") && r.contains("deploy"))
        .unwrap_or_else(|| panic!("no header row:\n{}", rows.join("\n")));
    // In characters: the box-drawing ones take several bytes.
    let col = |row: &str, word: &str| {
        let at = row.find(word).unwrap_or_else(|| panic!("{word} in {row}"));
        row[..at].chars().count()
    };
    let (test_x, below) = (col(&rows[header], "test"), &rows[header + 1..]);
    let unit_row = below.iter().find(|r| r.contains("unit")).expect("unit drawn");
    assert_eq!(
        col(unit_row, "unit"),
        test_x + 1,
        "unit sits under `test`:\n{}",
        rows.join("\n")
    );
    // A GitLab job's environment and tags are in its detail.
    select(&mut app, "ship");
    let rows = drawn(&mut app, 100, 30).join("\n");
    assert!(
        rows.contains("environment: production https://shop.example.com"),
        "{rows}"
    );
    assert!(rows.contains("tags: docker, linux"), "{rows}");
}

fn group(at: u64, job: &str, attempt: u32, line_no: u64, title: Option<&str>) -> Event {
    ev(
        at,
        EventKind::LogGroup {
            job: job.into(),
            attempt,
            line_no,
            title: title.map(str::to_string),
        },
    )
}

#[test]
fn ended_groups_fold_under_their_title_and_z_or_a_search_unfolds_them() {
    let mut evs = vec![started(1_000, "build", 1)];
    // build's attempt 1: line 0 is the step, then "before", a group of
    // 30 lines that ends, "after group", and a group still open.
    let mut n = 1_400;
    let mut push = |evs: &mut Vec<Event>, e: Event| {
        n += 1;
        evs.push(Event { ts: T0 + n, ..e });
    };
    push(&mut evs, step(0, "build", 1));
    push(&mut evs, line(0, "build", 1, "before"));
    push(&mut evs, group(0, "build", 1, 2, Some("Install")));
    push(&mut evs, line(0, "build", 1, "▸ Install"));
    for i in 0..30 {
        push(&mut evs, line(0, "build", 1, &format!("installing package {i}")));
    }
    push(&mut evs, group(0, "build", 1, 33, None));
    push(&mut evs, line(0, "build", 1, "after group"));
    push(&mut evs, group(0, "build", 1, 34, Some("Test")));
    push(&mut evs, line(0, "build", 1, "▸ Test"));
    push(&mut evs, line(0, "build", 1, "running tests"));
    let mut app = app_with(&evs, color());
    select(&mut app, "build");
    app.handle_key(KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE));
    app.log_height = 18;
    let text = screen(&app, 80, 24).to_string();
    assert!(text.contains("▸ Install  (30 lines, z unfolds)"), "{text}");
    assert!(!text.contains("installing package"), "folded: {text}");
    for l in ["before", "after group", "▸ Test", "running tests"] {
        assert!(text.contains(l), "{l}: {text}");
    }
    assert!(app.available(trackside::ui::keys::Action::ToggleGroups));
    // z unfolds: the group's lines show, following the tail.
    app.handle_key(key('z'));
    assert!(app.unfold);
    let text = screen(&app, 80, 24).to_string();
    assert!(text.contains("installing package 29"), "{text}");
    assert!(!text.contains("z unfolds"), "{text}");
    // Folded again, paging up from the tail passes over the folded lines
    // in one step: the top of the log is reached.
    app.handle_key(key('z'));
    app.handle_key(KeyEvent::new(KeyCode::PageUp, KeyModifiers::NONE));
    assert_eq!(
        app.log_view(),
        (0, 0),
        "one page up reaches the top: the group takes one row"
    );
    // A search that finds a line inside a folded group unfolds it.
    app.handle_key(key('/'));
    for c in "package 17".chars() {
        app.handle_key(key(c));
    }
    app.handle_key(KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE));
    assert!(app.unfold, "the match is shown");
    assert_eq!(app.log_top, 20);
    let text = screen(&app, 80, 24).to_string();
    assert!(text.contains("installing package 17"), "{text}");
}

#[test]
fn a_failed_job_says_why_with_the_knowledge_base_hint_at_80x24() {
    let mut evs = failed_events();
    for e in &mut evs {
        if let EventKind::JobFinished {
            job,
            failure_class,
            diagnosis,
            ..
        } = &mut e.kind
            && job == "test-flaky"
        {
            *failure_class = Some(FailureClass::Network);
            *diagnosis = Some(Box::new(trackside::protocol::Diagnosis {
                rule: "connection-refused".into(),
                title: "connection refused".into(),
                class: FailureClass::Network,
                hint: "nothing was listening (127.0.0.1:5432): the service had not started yet (wait for it to be ready), had crashed, or the host or port is wrong".into(),
                runbook: "docs/runbooks/network.md#connection-refused".into(),
                retryable: true,
                lines: vec!["dial tcp 127.0.0.1:5432: connect: connection refused".into()],
                dependency: Some("127.0.0.1:5432".into()),
            }));
        }
    }
    let mut app = app_with(&evs, color());
    app.wide = false;
    select(&mut app, "test-flaky");
    app.handle_key(KeyEvent::new(KeyCode::Tab, KeyModifiers::NONE));
    app.handle_key(KeyEvent::new(KeyCode::Tab, KeyModifiers::NONE));
    assert_eq!(app.focus, Focus::Detail);
    let shown = screen(&app, 80, 24);
    let text = format!("{shown}");
    assert!(text.contains("cause: connection refused"), "{text}");
    assert!(
        text.contains("runbook: docs/runbooks/network.md#connection-ref"),
        "{text}"
    );
    insta::assert_snapshot!("80x24_failure_cause", shown);
}

#[test]
fn the_header_shows_the_forecast_from_history() {
    let mut evs = running_events();
    evs.push(ev(
        1_400,
        EventKind::Forecast {
            p50_ms: 30_000,
            p90_ms: 45_000,
            without_history: Vec::new(),
            assumed_ms: 0,
        },
    ));
    let mut app = app_with(&evs, color());
    app.wide = false;
    let text = format!("{}", screen(&app, 80, 24));
    let header = text.lines().next().unwrap_or_default().to_string();
    assert!(header.contains("00:05 ETA 00:25 (p90 00:40)"), "{header}");
    // Past the median, the p90 still says how long at most.
    app.now = T0 + 35_000;
    let text = format!("{}", screen(&app, 80, 24));
    assert!(
        text.lines().next().is_some_and(|h| h.contains("ETA ? (p90 00:10)")),
        "{text}"
    );
}

/// The failing job's JUnit report: one failed case whose name its log
/// mentions, one quarantined, one that passed only on a rerun.
fn tests_reported() -> Event {
    use trackside::protocol::{TestCaseView, TestReport};
    ev(
        1_900,
        EventKind::TestsReported {
            job: "test-flaky".into(),
            attempt: 1,
            report: TestReport {
                passed: 40,
                failed: 2,
                skipped: 1,
                rerun: 1,
                cases: vec![
                    TestCaseView {
                        name: "shop.tests::test_payment".into(),
                        outcome: "failed".into(),
                        message: Some("assertion failed: left == right\n  left: 503\n right: 200".into()),
                        duration_ms: 1_250,
                        reruns_failed: 0,
                        quarantined: false,
                    },
                    TestCaseView {
                        name: "shop.tests::test_clock_skew".into(),
                        outcome: "failed".into(),
                        message: Some("timed out after 5s".into()),
                        duration_ms: 5_000,
                        reruns_failed: 0,
                        quarantined: true,
                    },
                    TestCaseView {
                        name: "shop.tests::test_cart_total".into(),
                        outcome: "passed".into(),
                        message: Some("first try: connection reset".into()),
                        duration_ms: 300,
                        reruns_failed: 1,
                        quarantined: false,
                    },
                ],
            },
        },
    )
}

#[test]
fn a_failed_jobs_tests_show_failed_first_with_the_log_lines_that_name_them_at_80x24() {
    let mut evs = failed_events();
    let at = evs.len() - 3;
    evs.insert(at, tests_reported());
    evs.insert(
        at,
        line(
            1_402,
            "test-flaky",
            1,
            "FAILED shop/tests.py::test_payment - assert 503 == 200",
        ),
    );
    let mut app = app_with(&evs, color());
    app.wide = false;
    select(&mut app, "test-flaky");
    // The detail pane names the failing test, and the key that lists them.
    app.handle_key(KeyEvent::new(KeyCode::Tab, KeyModifiers::NONE));
    app.handle_key(KeyEvent::new(KeyCode::Tab, KeyModifiers::NONE));
    let text = screen(&app, 80, 24).to_string();
    assert!(
        text.contains("tests: 2 failed of 43, 1 passed only on a rerun; failing tests: test_payment"),
        "{text}"
    );
    assert!(text.contains("(script) and 1 more (t lists them)"), "{text}");
    assert!(app.available(trackside::ui::keys::Action::Tests));
    app.handle_key(key('t'));
    let shown = screen(&app, 80, 24);
    let text = shown.to_string();
    assert!(text.contains("tests · test-flaky · attempt 1"), "{text}");
    assert!(
        text.contains("2 failed, 40 passed, 1 skipped, 1 passed only on a rerun"),
        "{text}"
    );
    // Failed first, with its message and where the log names it.
    let pos = |s: &str| text.find(s).unwrap_or_else(|| panic!("{s} in:\n{text}"));
    assert!(pos("✖ shop.tests::test_payment") < pos("test_clock_skew"), "{text}");
    assert!(pos("test_clock_skew") < pos("test_cart_total"), "{text}");
    assert!(text.contains("    assertion failed: left == right"), "{text}");
    // The line that names it, with the one before.
    assert!(text.contains("log     3 assertion failed: left == right"), "{text}");
    assert!(
        text.contains("log     4 FAILED shop/tests.py::test_payment - assert 503 == 200"),
        "{text}"
    );
    assert!(text.contains("quarantined"), "{text}");
    assert!(text.contains("passed on a rerun after 1 failed try"), "{text}");
    insta::assert_snapshot!("80x24_tests", shown);
    // Any other key closes it.
    app.handle_key(key('x'));
    assert!(!screen(&app, 80, 24).to_string().contains("test_clock_skew"));
}

#[test]
fn a_job_without_a_report_says_how_to_declare_one() {
    let mut app = app_with(&failed_events(), color());
    select(&mut app, "test-flaky");
    assert!(!app.available(trackside::ui::keys::Action::Tests));
    app.handle_key(key('t'));
    let text = screen(&app, 100, 30).to_string();
    assert!(
        text.contains("`test-flaky` has no test report: declare reports: {junit: [...]}"),
        "{text}"
    );
    assert_eq!(app.mode, Mode::Normal);
}

#[test]
fn history_marks_flaky_boxes_and_the_dashboard_charts_recent_runs_at_80x24() {
    use trackside::protocol::view::{ClassCount, FlakyJob, PipelineStats};
    let mut app = App::new(color());
    app.model.apply(&ev(
        0,
        EventKind::RunStarted {
            run_id: "20261123-120000-abcd".into(),
            pipeline: "demo".into(),
            jobs: vec![],
            max_parallel: 2,
        },
    ));
    let mut flaky = planned("test-flaky", &["build"], 1, When::OnSuccess);
    flaky.flake_pct = Some(18);
    app.model.apply(&ev(
        0,
        EventKind::PlanChanged {
            jobs: vec![
                planned("build", &[], 0, When::OnSuccess),
                planned("test", &["build"], 1, When::OnSuccess),
                flaky,
            ],
            critical_path: vec!["build".into(), "test".into()],
            stages: Vec::new(),
        },
    ));
    let durations: Vec<u64> = vec![
        60_000, 62_000, 58_000, 90_000, 61_000, 63_000, 120_000, 59_000, 60_500, 61_500,
    ];
    let results: Vec<String> = durations
        .iter()
        .map(|&d| if d >= 90_000 { "failed" } else { "passed" }.to_string())
        .collect();
    app.model.apply(&ev(
        0,
        EventKind::History {
            stats: PipelineStats {
                pipeline: "/work/shop/trackside.yml".into(),
                runs: 10,
                failed: 2,
                p50_ms: 61_000,
                p90_ms: 90_000,
                durations_ms: durations,
                results,
                failures_by_class: vec![
                    ClassCount {
                        class: "network".into(),
                        attempts: 3,
                    },
                    ClassCount {
                        class: "script".into(),
                        attempts: 1,
                    },
                ],
                flaky: vec![FlakyJob {
                    job: "test-flaky".into(),
                    rate: 0.18,
                    low: 0.09,
                    high: 0.30,
                }],
            },
        },
    ));
    app.now = T0 + 5_000;
    app.wide = false;
    let text = screen(&app, 80, 24).to_string();
    assert!(text.contains("⚑18%"), "the flaky job's box carries its rate:\n{text}");
    assert_eq!(text.matches('⚑').count(), 1, "{text}");
    app.handle_key(key('D'));
    let shown = screen(&app, 80, 24);
    let text = shown.to_string();
    assert!(text.contains("the last 10, oldest first"), "{text}");
    assert!(text.contains("p50 1:01  p90 1:30  longest 2:00"), "{text}");
    assert!(text.contains("2 of 10 (20%)"), "{text}");
    assert!(text.contains("network 3, script 1"), "{text}");
    assert!(text.contains("test-flaky  18% [9%, 30%]"), "{text}");
    insta::assert_snapshot!("80x24_history", shown);
    // --ascii keeps to ASCII.
    let mut plain = app_with(
        &[],
        Theme {
            color: false,
            ascii: true,
        },
    );
    plain.model.history = app.model.history.clone();
    plain.handle_key(key('D'));
    let text = screen(&plain, 80, 24).to_string();
    assert!(text.is_ascii(), "{text}");
    assert!(text.contains('#'), "{text}");
}

#[test]
fn the_header_shows_the_memory_running_jobs_hold_and_a_queued_job_why_it_waits() {
    let mut events = running_events();
    events.push(ev(
        1_300,
        EventKind::JobWaiting {
            job: "integration".into(),
            reason: "waiting for memory: needs 4.0 GiB, 1.5 GiB of 7.0 GiB free".into(),
        },
    ));
    events.push(ev(
        1_300,
        EventKind::Resources {
            running: 2,
            limit: 4,
            cpu_milli: 2000,
            cpu_milli_total: 4000,
            memory: 11 << 29,
            memory_budget: 7 << 30,
        },
    ));
    let mut app = app_with(&events, color());
    let j = app.model.job("integration").expect("job");
    app.model.jobs[j].status = JobStatus::Ready;
    let header = drawn(&mut app, 80, 24)[0].clone();
    assert!(header.contains("2/4 running, 5.5/7.0 GiB"), "{header}");
    assert_eq!(
        app.model.why(j),
        "queued; waiting for memory: needs 4.0 GiB, 1.5 GiB of 7.0 GiB free"
    );
}

#[test]
fn an_open_circuit_breaker_is_in_the_header_and_b_closes_the_one_holding_the_job() {
    let mut events = running_events();
    for dep in ["api.internal:8080", "registry.local:5000"] {
        events.push(ev(
            1_300,
            EventKind::Breaker {
                dependency: dep.into(),
                phase: trackside::protocol::event::BreakerPhase::Open,
                reason: "3 failures in 60 s (connection refused)".into(),
                probe_in_ms: Some(30_000),
            },
        ));
    }
    events.push(ev(
        1_310,
        EventKind::JobWaiting {
            job: "integration".into(),
            reason: "held: circuit open — registry.local:5000: connection refused, 3 failures in 60 s; \
                     next probe in 30 s"
                .into(),
        },
    ));
    let mut app = app_with(&events, color());
    let j = app.model.job("integration").expect("job");
    app.model.jobs[j].status = JobStatus::Ready;
    let header = drawn(&mut app, 80, 24)[0].clone();
    assert!(header.contains("CIRCUIT OPEN: api.internal:8080 +1"), "{header}");
    select(&mut app, "integration");
    assert_eq!(
        app.handle_key(KeyEvent::new(KeyCode::Char('B'), KeyModifiers::NONE)),
        vec![Command::CloseBreaker("registry.local:5000".into())]
    );
    // Closed: it leaves the header, and B has nothing to do.
    app.apply(&ev(
        1_400,
        EventKind::Breaker {
            dependency: "registry.local:5000".into(),
            phase: trackside::protocol::event::BreakerPhase::Closed,
            reason: "closed by hand by ana@build".into(),
            probe_in_ms: None,
        },
    ));
    select(&mut app, "lint");
    assert_eq!(
        app.handle_key(KeyEvent::new(KeyCode::Char('B'), KeyModifiers::NONE)),
        vec![Command::CloseBreaker("api.internal:8080".into())]
    );
    // Its cool-down over, a probe goes: the header says half-open.
    app.apply(&ev(
        1_500,
        EventKind::Breaker {
            dependency: "api.internal:8080".into(),
            phase: trackside::protocol::event::BreakerPhase::HalfOpen,
            reason: "cool-down over: one job goes through as a probe".into(),
            probe_in_ms: None,
        },
    ));
    let header = drawn(&mut app, 80, 24)[0].clone();
    assert!(header.contains("CIRCUIT HALF-OPEN: api.internal:8080"), "{header}");
}

#[test]
fn o_shows_the_swarms_nodes_their_labels_load_and_this_runs_jobs_on_each_at_80x24() {
    use trackside::protocol::view::ClusterNode;
    let node = |addr: &str, pool: &str, manager: bool, state: &str, tasks: usize| ClusterNode {
        id: format!("id-{addr}"),
        addr: addr.into(),
        hostname: "node".into(),
        state: state.into(),
        active: true,
        availability: "active".into(),
        manager,
        cpus: 2.0,
        memory: 2 << 30,
        labels: [("pool".to_string(), pool.to_string())].into(),
        trackside_tasks: tasks,
    };
    let mut events = running_events();
    events.push(ev(
        1_210,
        EventKind::JobPlaced {
            job: "test".into(),
            attempt: 1,
            node: "10.231.0.2 (pool=b)".into(),
        },
    ));
    events.push(ev(
        1_220,
        EventKind::ClusterNodes {
            nodes: vec![
                node("10.231.0.1", "a", true, "ready", 0),
                node("10.231.0.2", "b", false, "ready", 1),
                node("10.231.0.3", "c", false, "down", 0),
            ],
            omitted: 0,
        },
    ));
    let mut app = app_with(&events, color());
    app.now = T0 + 8_000;
    app.handle_key(key('o'));
    let shown = screen(&app, 80, 24);
    let text = shown.to_string();
    assert!(
        text.contains("2 of 3 node(s) ready and active; tasks as of 6 s ago"),
        "{text}"
    );
    assert!(
        text.contains("10.231.0.2      ready     active  worker   1 task(s)"),
        "{text}"
    );
    assert!(text.contains("2 CPU(s), 2.0 GiB  pool=b"), "{text}");
    // The running job placed there is listed under its node, and only there.
    assert_eq!(text.matches("this run: test").count(), 1, "{text}");
    let below_b = text.split("10.231.0.2").nth(1).unwrap_or_default();
    assert!(
        below_b
            .split("10.231.0.3")
            .next()
            .unwrap_or_default()
            .contains("this run: test"),
        "{text}"
    );
    assert!(text.contains("10.231.0.3      down"), "{text}");
    insta::assert_snapshot!("80x24_nodes", shown);
    // Any other key closes it.
    app.handle_key(key('x'));
    assert!(!screen(&app, 80, 24).to_string().contains("ready and active"));
    // Without a swarm it says what it is for.
    let mut local = app_with(&running_events(), color());
    local.handle_key(key('o'));
    assert!(
        screen(&local, 80, 24)
            .to_string()
            .contains("the nodes view is for --executor swarm"),
        "{}",
        screen(&local, 80, 24).to_string()
    );
}
