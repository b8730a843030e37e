//! How a person SEES and STEERS a run: the ratatui front-end.
//!
//! Like every front-end it holds a view-model built from engine events and
//! sends engine commands; no run logic lives here. The loop drains every
//! queued event before drawing, redraws only when something changed and at
//! most every [`MIN_FRAME_GAP`] (a key press is drawn at once), and wraps each frame in a synchronized
//! update, so a job printing thousands of lines a second neither freezes
//! input nor floods an SSH link. The terminal is restored on every way out:
//! normal exit, error, a panic in any task, SIGTERM/SIGHUP.

pub mod ansi;
pub mod app;
pub mod keys;
pub mod model;
pub mod render;
pub mod services;
pub mod theme;

use std::io::{self, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossterm::event::{DisableMouseCapture, EnableMouseCapture, Event as TermEvent, KeyEventKind};
use crossterm::terminal::{EnterAlternateScreen, LeaveAlternateScreen, disable_raw_mode, enable_raw_mode};
use crossterm::{cursor, execute};
use ratatui::Terminal;
use ratatui::backend::CrosstermBackend;
use ratatui::layout::Rect;
use tokio::sync::mpsc;

use std::future::Future;
use std::pin::Pin;

use crate::headless::Signals;
use crate::protocol::query::{self, RecordedLine};
use crate::protocol::{Answer, Link, LinkError, Query, RunSummary, Subscription};

use app::{App, Command, OlderRequest, ScanRequest};
use model::{LineKind, LogLine};
use theme::Theme;

/// Shortest time between two frames (about 30 fps).
pub const MIN_FRAME_GAP: Duration = Duration::from_millis(33);

#[derive(Debug, thiserror::Error)]
pub enum UiError {
    #[error("terminal: {0}")]
    Terminal(#[from] io::Error),
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error("trackside crashed; the terminal was restored (see the message above)")]
    Panicked,
}

pub struct UiOptions {
    pub ascii: bool,
    pub color: bool,
    /// Take clicks and the wheel (`--no-mouse` turns it off; the terminal
    /// then selects text as usual, as Shift-drag does with the mouse on).
    pub mouse: bool,
    /// Ring the terminal bell when a job fails, a gate waits or the run ends.
    pub bell: bool,
    /// Where the services view (`S`) reads from: a feed and what stops it.
    pub services: Option<ServicesSource>,
}

/// Starts a feed of the services view (see `deploy::service::watch`).
pub type ServicesSource = Arc<
    dyn Fn() -> (
            mpsc::Receiver<crate::protocol::view::ServicesFeed>,
            tokio_util::sync::CancellationToken,
        ) + Send
        + Sync,
>;

static PANICKED: AtomicBool = AtomicBool::new(false);
/// The panic's message is out: what the UI prints after it comes below it.
static PANIC_REPORTED: AtomicBool = AtomicBool::new(false);

fn restore_terminal() {
    let _ = disable_raw_mode();
    let _ = execute!(io::stdout(), DisableMouseCapture, LeaveAlternateScreen, cursor::Show);
}

/// Raw mode, the alternate screen, and the mouse when asked.
fn take_terminal(mouse: bool) -> io::Result<()> {
    enable_raw_mode()?;
    execute!(io::stdout(), EnterAlternateScreen, cursor::Hide)?;
    if mouse {
        execute!(io::stdout(), EnableMouseCapture)?;
    }
    Ok(())
}

/// Puts the terminal back however the UI ends.
struct TerminalGuard;

impl TerminalGuard {
    fn enter(mouse: bool) -> io::Result<TerminalGuard> {
        let guard = TerminalGuard;
        take_terminal(mouse)?;
        // A panic anywhere (any thread, any task) restores the terminal first,
        // then reports; the loop sees the flag and stops drawing.
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICKED.store(true, Ordering::SeqCst);
            restore_terminal();
            previous(info);
            PANIC_REPORTED.store(true, Ordering::SeqCst);
        }));
        Ok(guard)
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore_terminal();
    }
}

/// Lets the UI hand the terminal to another program (a debug shell): the
/// input thread parks, so it reads none of that program's keystrokes.
#[derive(Clone, Default)]
struct InputPause {
    requested: Arc<AtomicBool>,
    parked: Arc<AtomicBool>,
}

impl InputPause {
    /// Asks the input thread to park and waits (bounded) until it has.
    fn park(&self) {
        self.requested.store(true, Ordering::SeqCst);
        let until = Instant::now() + Duration::from_secs(1);
        while !self.parked.load(Ordering::SeqCst) && Instant::now() < until {
            std::thread::yield_now();
        }
    }
    fn resume(&self) {
        self.requested.store(false, Ordering::SeqCst);
    }
}

/// Reads terminal input on its own thread, polling so it can be stopped.
fn spawn_input(stop: Arc<AtomicBool>, pause: InputPause) -> mpsc::Receiver<TermEvent> {
    let (tx, rx) = mpsc::channel(256);
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            if pause.requested.load(Ordering::SeqCst) {
                pause.parked.store(true, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            pause.parked.store(false, Ordering::SeqCst);
            match crossterm::event::poll(Duration::from_millis(50)) {
                Ok(true) => match crossterm::event::read() {
                    Ok(ev) => {
                        if tx.blocking_send(ev).is_err() {
                            break;
                        }
                    }
                    Err(_) => break,
                },
                Ok(false) => {}
                Err(_) => break,
            }
        }
    });
    rx
}

/// What the loop has asked the run and not been answered yet.
type Asked<'a, R> = Option<Pin<Box<dyn Future<Output = (R, Result<Answer, LinkError>)> + Send + 'a>>>;

/// Older log lines and searches through them, asked of the run through the
/// link (which reads them from the run's record, off any UI thread), one of
/// each at a time, so the UI's task never waits for them: keys and redraws
/// go on while a 120 MB log is read.
struct Asking<'a> {
    older: Asked<'a, OlderRequest>,
    scan: Asked<'a, ScanRequest>,
}

impl<'a> Asking<'a> {
    /// Asks for what the app needs and is not under way yet.
    fn start<L: Link>(&mut self, link: &'a L, app: &App) {
        let name = |key: (usize, u32)| app.model.jobs.get(key.0).map_or(String::new(), |j| j.name.clone());
        if self.older.is_none()
            && let Some(req) = app.needs_older()
        {
            let query = Query::Log {
                job: name(req.key),
                attempt: req.key.1,
                from: req.from,
                count: req.count,
            };
            self.older = Some(Box::pin(async move { (req, link.query(query).await) }));
        }
        if self.scan.is_none()
            && let Some(req) = app.needs_scan()
        {
            let query = Query::Search {
                job: name(req.key),
                attempt: req.key.1,
                from: req.from,
                to: req.to,
                needle: req.query.clone(),
                max: app::MAX_DISK_HITS,
            };
            self.scan = Some(Box::pin(async move { (req, link.query(query).await) }));
        }
    }
}

/// The answer to what was asked; never ready while nothing is.
async fn answered<R>(asked: &mut Asked<'_, R>) -> (R, Result<Answer, LinkError>) {
    match asked {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

/// Hands older lines that came back to the app.
fn older_arrived(app: &mut App, req: OlderRequest, answer: Result<Answer, LinkError>) {
    match answer {
        Ok(Answer::Log { lines, cut }) => {
            let lines = lines.into_iter().map(log_line).collect();
            app.older_arrived(req, lines, cut);
        }
        other => {
            let why = other
                .err()
                .map_or_else(|| "the run answered something else".to_string(), |e| e.to_string());
            app.status = Some(format!("cannot read older log lines: {why}"));
            // Do not ask again and again: an empty window.
            app.older_arrived(req, Vec::new(), false);
        }
    }
}

/// Hands what a search through the older lines found to the app.
fn scan_arrived(app: &mut App, req: ScanRequest, answer: Result<Answer, LinkError>) {
    match answer {
        Ok(Answer::Hits(hits)) => app.scan_arrived(req, hits),
        Ok(_) => app.scan_failed(req, "the run answered something else"),
        Err(e) => app.scan_failed(req, &e.to_string()),
    }
}

fn log_line(l: RecordedLine) -> LogLine {
    LogLine {
        ts: l.ts_ms,
        kind: match l.kind {
            query::LineKind::Step => LineKind::Step,
            query::LineKind::Err => LineKind::Err,
            query::LineKind::Out => LineKind::Out,
        },
        text: l.text,
    }
}

/// Longest the loop spends applying queued events before it looks at the
/// keyboard and the screen again: under a flood of output a key still
/// answers within a frame.
pub const DRAIN_BUDGET: Duration = Duration::from_millis(8);

/// How the UI left a run.
#[derive(Debug)]
pub enum Left {
    /// The run has finished: its summary.
    Finished(RunSummary),
    /// The run goes on without this UI (detached, or left an attached run).
    Detached,
}

/// Runs the UI on a run this process runs: subscribes, takes the terminal,
/// lets `begin` start the run, and shows it until the person quits (which
/// cancels it or waits it out: it cannot go on without this process).
pub async fn run<L: Link>(
    link: &L,
    opts: UiOptions,
    begin: impl Future<Output = Result<(), LinkError>>,
) -> Result<Left, UiError> {
    let events = link.subscribe(0).await?;
    let signals = Signals::new();
    let guard = TerminalGuard::enter(opts.mouse)?;
    let terminal = Terminal::new(CrosstermBackend::new(io::stdout()))?;
    begin.await?;
    session(link, events, signals, opts, terminal, guard, Mode::InProcess).await
}

/// Runs the UI on a run this trackside started in a process of its own
/// (`trackside run` on a terminal): quitting asks and cancels as for any
/// run this UI started; `d` detaches and leaves the run going.
pub async fn run_owned<L: Link>(link: &L, opts: UiOptions) -> Result<Left, UiError> {
    let events = link.subscribe(0).await?;
    let signals = Signals::new();
    let guard = TerminalGuard::enter(opts.mouse)?;
    let terminal = Terminal::new(CrosstermBackend::new(io::stdout()))?;
    session(link, events, signals, opts, terminal, guard, Mode::Owner).await
}

/// Runs the UI on a run another trackside runs (`trackside attach`), until
/// the person leaves; the run goes on.
pub async fn attach<L: Link>(link: &L, opts: UiOptions) -> Result<Left, UiError> {
    let events = link.subscribe(0).await?;
    let signals = Signals::new();
    let guard = TerminalGuard::enter(opts.mouse)?;
    let terminal = Terminal::new(CrosstermBackend::new(io::stdout()))?;
    session(link, events, signals, opts, terminal, guard, Mode::Attached).await
}

/// Whose run the UI shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// In this process: quitting cancels (or waits out) the run, which
    /// cannot go on without it.
    InProcess,
    /// Started from here, run by a process of its own: as `InProcess`, and
    /// `d` detaches.
    Owner,
    /// Attached from elsewhere: quitting only leaves.
    Attached,
}

async fn session<L: Link>(
    link: &L,
    mut events: Subscription,
    mut signals: Signals,
    opts: UiOptions,
    mut terminal: Terminal<CrosstermBackend<io::Stdout>>,
    guard: TerminalGuard,
    mode: Mode,
) -> Result<Left, UiError> {
    terminal.clear()?;
    let stop = Arc::new(AtomicBool::new(false));
    let pause = InputPause::default();
    let mut input = spawn_input(stop.clone(), pause.clone());
    // Debug builds only: a deliberate panic in a task, so the end-to-end
    // test can check that a panic anywhere gives the terminal back.
    #[cfg(debug_assertions)]
    if std::env::var_os("TRACKSIDE_TEST_PANIC").is_some() {
        tokio::spawn(async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            panic!("TRACKSIDE_TEST_PANIC: a deliberate panic in a task");
        });
    }

    let mut app = App::new(Theme {
        color: opts.color,
        ascii: opts.ascii,
    });
    app.read_only = !link.can_steer();
    app.bell = opts.bell;
    app.now = crate::protocol::clock::now_ms();
    app.attached = mode == Mode::Attached;
    app.detachable = mode != Mode::InProcess;
    let mut detached = false;
    app.me = crate::protocol::identity::who();
    let mut asking = Asking {
        older: None,
        scan: None,
    };
    let mut dirty = true;
    // A key press is drawn at once; only output-driven redraws are throttled.
    let mut keyed = false;
    let mut last_draw = Instant::now() - MIN_FRAME_GAP;
    let mut quitting = false;
    // The stream has ended: nothing more will arrive.
    let mut ended = false;
    let result = loop {
        if PANICKED.load(Ordering::SeqCst) {
            // Not a line into the middle of the panic's message (a backtrace
            // takes a moment to print).
            let until = Instant::now() + Duration::from_secs(5);
            while !PANIC_REPORTED.load(Ordering::SeqCst) && Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            break Err(UiError::Panicked);
        }
        let wait = if dirty {
            MIN_FRAME_GAP.saturating_sub(last_draw.elapsed())
        } else if app.model.is_active() {
            Duration::from_millis(250) // live durations and countdowns
        } else {
            Duration::from_secs(1)
        };
        // Keys first: a flood of output never keeps a key waiting.
        tokio::select! {
            biased;
            Some(ev) = input.recv() => {
                if let TermEvent::Key(key) = ev
                    && key.kind != KeyEventKind::Release {
                        for cmd in app.handle_key(key) {
                            if let Command::Shell(job) = &cmd {
                                app.status = Some(shell(link, job, &mut terminal, &pause, opts.mouse).await);
                                continue;
                            }
                            if cmd == Command::Services {
                                match &opts.services {
                                    Some(source) => {
                                        let (feed, stop) = source();
                                        let view = services::Services::new(String::new(), app.theme);
                                        let shown = services::show(&mut terminal, &mut input, feed, view).await;
                                        stop.cancel();
                                        terminal.clear()?;
                                        shown?;
                                    }
                                    None => app.status = Some("no services view here".into()),
                                }
                                continue;
                            }
                            if cmd == Command::Detach {
                                detached = true;
                                break;
                            }
                            if let Some(done) = perform(link, &mut app, cmd).await {
                                quitting = quitting || done;
                                if done && app.model.finished.is_some() {
                                    break;
                                }
                            }
                        }
                    }
                if let TermEvent::Mouse(m) = ev {
                    let size = terminal.size()?;
                    app.handle_mouse(m, Rect::new(0, 0, size.width, size.height));
                }
                dirty = true;
                keyed = true;
            }
            name = signals.recv() => {
                if mode == Mode::Attached {
                    // Leaving: the run goes on without this terminal.
                    break Ok(());
                }
                app.status = Some(format!("{name}: cancelling running jobs"));
                quitting = true;
                let _ = link.send(crate::protocol::Command::CancelAll).await;
                dirty = true;
            }
            (req, answer) = answered(&mut asking.older) => {
                asking.older = None;
                older_arrived(&mut app, req, answer);
                dirty = true;
                keyed = true;
            }
            (req, answer) = answered(&mut asking.scan) => {
                asking.scan = None;
                scan_arrived(&mut app, req, answer);
                dirty = true;
                keyed = true;
            }
            item = events.next(), if !ended => {
                match item {
                    Some(item) => app.deliver(&item),
                    None => {
                        if app.model.finished.is_none() {
                            app.status = Some("the run's engine has gone away; its record is complete up to here".into());
                        }
                        ended = true;
                    }
                }
                // Drain what is queued before drawing again, within a
                // budget: past it the keyboard and the screen come first.
                let until = Instant::now() + DRAIN_BUDGET;
                while Instant::now() < until {
                    match events.try_next() {
                        Some(item) => app.deliver(&item),
                        None => break,
                    }
                }
                dirty = true;
            }
            () = tokio::time::sleep(wait) => {
                // The run's clock goes on while it waits (at a gate, too).
                if app.model.finished.is_none() {
                    dirty = true;
                }
            }
        }
        if detached {
            break Ok(());
        }
        if quitting {
            if app.model.finished.is_some() || ended {
                break Ok(());
            }
            if !app.model.is_active() {
                // Only unapproved gates remain: end the run as blocked.
                let _ = link.send(crate::protocol::Command::FinishWaiting).await;
            }
        }
        if dirty && (keyed || last_draw.elapsed() >= MIN_FRAME_GAP) {
            let size = terminal.size()?;
            let area = Rect::new(0, 0, size.width, size.height);
            app.wide = area.width >= render::WIDE;
            let text = render::log_text_area(&app, area);
            app.log_height = usize::from(text.height);
            app.log_width = usize::from(text.width);
            app.detail_max_top = render::detail_max_top(&app, area);
            app.now = crate::protocol::clock::now_ms();
            asking.start(link, &app);
            draw(&mut terminal, &app)?;
            if app.bells > 0 {
                app.bells = 0;
                let mut out = io::stdout();
                out.write_all(b"\x07")?;
                out.flush()?;
            }
            dirty = false;
            keyed = false;
            last_draw = Instant::now();
        }
    };
    stop.store(true, Ordering::Relaxed);
    drop(terminal);
    drop(guard);
    result?;
    Ok(match app.model.finished.take() {
        Some(s) => Left::Finished(s),
        None => Left::Detached,
    })
}

/// Suspends the UI, runs a shell in the job's failed container (the run
/// prepares it and says how to open it), and comes back. Returns the line
/// to show afterwards.
async fn shell<L: Link>(
    link: &L,
    job: &str,
    terminal: &mut Terminal<CrosstermBackend<io::Stdout>>,
    pause: &InputPause,
    mouse: bool,
) -> String {
    let spec = match link.query(Query::Shell { job: job.to_string() }).await {
        Ok(Answer::Shell(spec)) => spec,
        Ok(_) => return "the run answered the shell request with something else".into(),
        Err(e) => return e.to_string(),
    };
    pause.park();
    restore_terminal();
    println!("trackside: a shell in {}; `exit` returns to the run", spec.what);
    let mut cmd = std::process::Command::new(&spec.program);
    cmd.args(&spec.args);
    let status = tokio::task::block_in_place(|| cmd.status());
    let back = take_terminal(mouse);
    pause.resume();
    let _ = terminal.clear();
    match (status, back) {
        (_, Err(e)) => format!("could not take the terminal back: {e}"),
        (Ok(s), Ok(())) => format!("shell in `{job}` ended ({s})"),
        (Err(e), Ok(())) if spec.program == "docker" => {
            format!("cannot run the docker CLI ({e}); the shell needs it (apt-get install docker.io)")
        }
        (Err(e), Ok(())) => format!("cannot run {} ({e})", spec.program),
    }
}

fn draw(terminal: &mut Terminal<CrosstermBackend<io::Stdout>>, app: &App) -> io::Result<()> {
    let mut out = io::stdout();
    execute!(out, crossterm::terminal::BeginSynchronizedUpdate)?;
    let drawn = terminal.draw(|f| f.render_widget(app, f.area()));
    execute!(out, crossterm::terminal::EndSynchronizedUpdate)?;
    out.flush()?;
    drawn.map(|_| ())
}

/// Sends a command; returns Some(true) when the UI should end.
async fn perform<L: Link>(link: &L, app: &mut App, cmd: Command) -> Option<bool> {
    use crate::protocol::Command as P;
    let (what, command) = match &cmd {
        Command::Approve(j) => (format!("approved {j}"), P::Approve { job: j.clone() }),
        Command::Retry(j) => {
            let edited = app.model.job(j).is_some_and(|i| app.model.jobs[i].edited);
            let what = if edited {
                format!("retrying {j} with the edited definition")
            } else {
                format!("retrying {j}")
            };
            (what, P::Retry { job: j.clone() })
        }
        Command::RerunFailed => ("rerunning failed jobs".to_string(), P::RerunFailed),
        Command::Cancel(j) => (format!("cancelling {j}"), P::Cancel { job: j.clone() }),
        Command::CancelAll => ("cancelling the run".to_string(), P::CancelAll),
        Command::Pause => (
            "scheduling paused: running jobs go on, no new ones start".to_string(),
            P::Pause,
        ),
        Command::Resume => ("scheduling resumed".to_string(), P::Resume),
        Command::Rollout(j, c) => (
            format!("{c:?} sent to the rollout of {j}; waiting for its answer"),
            P::Rollout {
                job: j.clone(),
                action: *c,
            },
        ),
        // The engine's answer says what changed.
        Command::RollbackService(service) => (
            String::new(),
            P::RollbackService {
                service: service.clone(),
            },
        ),
        Command::CloseBreaker(d) => (
            format!("closing the circuit breaker of {d}: the jobs it held may start"),
            P::CloseBreaker { dependency: d.clone() },
        ),
        Command::Shell(_) | Command::Detach | Command::Services => return None,
        Command::Quit { cancel } => {
            if *cancel {
                app.status = Some("cancelling running jobs, then quitting".into());
                let _ = link.send(P::CancelAll).await;
            } else if app.model.finished.is_none() {
                let _ = link.send(P::FinishWaiting).await;
            }
            return Some(true);
        }
    };
    if !link.can_steer() {
        app.status = Some(LinkError::ReadOnly.to_string());
        return None;
    }
    let sent = link.send(command).await;
    if let (Ok(_), Command::Rollout(j, c)) = (&sent, &cmd) {
        app.awaiting_rollout = Some((j.clone(), format!("{c:?}")));
    }
    app.status = Some(match sent {
        Ok(answer) if what.is_empty() => answer,
        Ok(_) => what,
        Err(e) => e.to_string(),
    });
    None
}
