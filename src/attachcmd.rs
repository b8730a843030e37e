//! The CLI's commands on a run another trackside is running: `attach`,
//! `approve`, `retry`, `cancel` and `logs --follow`. They reach the run
//! through its socket (`trackside::attach`); the work is done there.

use std::ffi::OsString;
use std::io::{BufRead, IsTerminal, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use trackside::attach::{self, RemoteLink};
use trackside::headless::{self, Format, OnSignal, Printer, Signals};
use trackside::protocol::query::{LineKind, RecordedLine};
use trackside::protocol::wire::LIVE;
use trackside::protocol::{Command, Link, LinkError};
use trackside::store;
use trackside::ui::{self, UiOptions};

use super::{Fail, write_out};

/// The run folder of RUN (id, unique prefix, `last`), or without one the
/// newest run that is live.
fn run_dir(state: &Path, run: Option<&str>) -> Result<PathBuf, Fail> {
    if let Some(path) = run.and_then(run_path) {
        return Ok(path);
    }
    if let Some(run) = run {
        return Ok(store::find_run(state, run)?);
    }
    let runs = store::list_runs(state)?;
    runs.iter()
        .rev()
        .filter(|r| r.result.is_none() && !r.crashed)
        .map(|r| store::runs_dir(state).join(&r.run_id))
        .find(|d| attach::is_live(d))
        .ok_or_else(|| {
            Fail(
                format!(
                    "no run of {} is running now (`trackside runs` lists them; give a RUN to see a finished one with `trackside show`)",
                    state.display()
                ),
                2,
            )
        })
}

/// RUN given as a path (it has a `/`): another user's run folder, or its
/// `control.sock`, reached through a group the run was opened to
/// (`--allow-group`): no state directory is read.
pub fn run_path(run: &str) -> Option<PathBuf> {
    if !run.contains('/') {
        return None;
    }
    let path = PathBuf::from(run);
    Some(match path.file_name() {
        Some(n) if n == attach::SOCKET => path.parent().map_or(path.clone(), Path::to_path_buf),
        _ => path,
    })
}

/// How much an attached UI yields the CPU to the run it watches (nice):
/// on a busy machine the run comes first, and the UI still answers keys.
const UI_NICE: i32 = 5;
/// A printed stream (`attach --headless`, `logs --follow`) runs only on
/// CPU time nothing else wants (Linux's SCHED_IDLE; `nice` 19 where that
/// is refused): a reader that falls behind is told what it missed.
const STREAM_NICE: i32 = 19;

/// Lowers this process's CPU priority by `nice` before any thread starts
/// (each thread takes its creator's): watching a run never slows it much.
/// A stream (`nice` 19) goes further, to the idle class.
fn yield_to_the_run(nice: i32) {
    // SAFETY: setpriority and sched_setscheduler have no memory effects;
    // a failure leaves the priority as it was.
    unsafe {
        nix::libc::setpriority(nix::libc::PRIO_PROCESS, 0, nice);
        if nice == STREAM_NICE {
            let param = nix::libc::sched_param { sched_priority: 0 };
            nix::libc::sched_setscheduler(0, nix::libc::SCHED_IDLE, &param);
        }
    }
}

/// The link to a live run, or why there is none.
async fn connect(dir: &Path, read_only: bool) -> Result<RemoteLink, Fail> {
    RemoteLink::connect(dir, read_only).await.map_err(|e| {
        let id = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let finished = store::read_summary(dir).ok().flatten().is_some();
        if finished {
            Fail(
                format!(
                    "run {id} has finished: `trackside show {id}` prints its summary, `trackside logs {id} JOB` a log"
                ),
                2,
            )
        } else {
            Fail(format!("cannot attach to run {id}: {e}"), 2)
        }
    })
}

/// The UI's runtime: its input thread and the shell it hands the terminal
/// to need worker threads.
fn runtime() -> Result<tokio::runtime::Runtime, Fail> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// A printed stream's and a one-off command's runtime: one thread that
/// reads the socket, decodes and prints, so a burst of lines costs a
/// wake-up per read and no hand-over between threads.
fn stream_runtime() -> Result<tokio::runtime::Runtime, Fail> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

pub struct AttachArgs {
    pub run: Option<String>,
    pub read_only: bool,
    pub headless: bool,
    pub from_start: bool,
    pub json: bool,
    pub ascii: bool,
    pub no_mouse: bool,
}

/// `trackside attach`: the UI on a live run (or its plain stream).
pub fn attach(state: &Path, a: AttachArgs) -> Result<u8, Fail> {
    let dir = run_dir(state, a.run.as_deref())?;
    let interactive = !a.headless && !a.json && std::io::stdout().is_terminal() && std::io::stdin().is_terminal();
    yield_to_the_run(if interactive { UI_NICE } else { STREAM_NICE });
    let mouse = !a.no_mouse && store::gc::ui_mouse(state).map_err(|e| Fail(e.to_string(), 2))?;
    let rt = if interactive { runtime()? } else { stream_runtime()? };
    rt.block_on(async move {
        let link = connect(&dir, a.read_only).await?;
        if interactive {
            let opts = UiOptions {
                ascii: a.ascii,
                mouse,
                color: std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
                bell: store::gc::ui_bell(state).unwrap_or(true),
                services: Some(super::servicecmd::services_source(state)),
            };
            let left = ui::attach(&link, opts).await.map_err(|e| Fail(e.to_string(), 2))?;
            match left {
                ui::Left::Finished(s) => write_out(&format!("{}\n", headless::summary_table(&s))),
                ui::Left::Detached => write_out(&format!(
                    "left run {}; it goes on (`trackside attach {}` to come back)\n",
                    link.run_id(),
                    link.run_id()
                )),
            }
            return Ok(0);
        }
        let from = if a.from_start { 0 } else { LIVE };
        let mut events = link.subscribe(from).await.map_err(link_fail)?;
        let format = if a.json { Format::Json } else { Format::Plain };
        let mut printer = Printer::new(format);
        // A gate of a live run waits for someone: the printer says how to approve.
        printer.wait_approval = true;
        if !a.from_start {
            printer.note(&format!(
                "attached to run {} (from now on; --from-start for all of it)",
                link.run_id()
            ));
        }
        let mut signals = Signals::new();
        let summary = headless::follow(&mut events, &link, &mut printer, &mut signals, OnSignal::Leave)
            .await
            .map_err(link_fail)?;
        printer.flush();
        // The run's own exit code once it has finished; 0 when left early.
        Ok(summary.map_or(0, |s| u8::try_from(s.exit_code).unwrap_or(1)))
    })
}

fn link_fail(e: LinkError) -> Fail {
    Fail(e.to_string(), 2)
}

/// `trackside approve|retry|cancel RUN ...`: one command, the engine's answer.
pub fn steer(state: &Path, run: &str, command: Command) -> Result<u8, Fail> {
    let dir = run_dir(state, Some(run))?;
    stream_runtime()?.block_on(async move {
        let link = connect(&dir, false).await?;
        match link.send(command).await {
            Ok(done) => {
                write_out(&format!("{}: {done}\n", link.run_id()));
                Ok(0)
            }
            Err(e) => Err(Fail(format!("{}: {e}", link.run_id()), 1)),
        }
    })
}

/// A recorded line in the form `logs` prints.
fn recorded_entry(l: &RecordedLine) -> store::LogEntry {
    let (stream, step, text) = match l.kind {
        LineKind::Step => ("step", l.text.clone(), String::new()),
        LineKind::Err => ("err", String::new(), l.text.clone()),
        LineKind::Out => ("out", String::new(), l.text.clone()),
    };
    store::LogEntry {
        ts_ms: l.ts_ms,
        stream: stream.into(),
        step,
        text,
    }
}

/// `trackside logs RUN JOB --follow`: the job's latest attempt so far from
/// the record, then its lines as they come, until the job has ended (no
/// retry to come) or the run has. A run that is not live prints its record.
pub fn follow_log(
    state: &Path,
    run: &str,
    job: &str,
    print: &(dyn Fn(&store::LogEntry) -> String + Sync),
) -> Result<u8, Fail> {
    let dir = run_dir(state, Some(run))?;
    yield_to_the_run(STREAM_NICE);
    // Not live, or the job ended before we listened: the record is all there is.
    let recorded = || {
        if let Ok((_, entries)) = store::read_log(&dir, job, None) {
            let out: String = entries.iter().map(print).collect();
            write_out(&out);
        }
        Ok(0)
    };
    stream_runtime()?.block_on(async {
        let Ok(link) = RemoteLink::connect(&dir, true).await else {
            return recorded();
        };
        // Live first, then the record: a line written in between is in
        // both, and its number says it was printed.
        let mut events = link.subscribe(LIVE).await.map_err(link_fail)?;
        // The record is written before an event goes out, so a job that
        // ended before the subscription is settled in it; one that ends
        // after sends its end to us.
        if store::job_settled(&dir, job) {
            return recorded();
        }
        let attempt = store::log_attempts(&dir, job).last().copied().unwrap_or(1);
        let mut signals = Signals::new();
        let print = |l: &RecordedLine| print(&recorded_entry(l));
        let mut out = |text: &str| write_out(text);
        tokio::select! {
            followed = headless::follow_job(&link, &mut events, job, attempt, &print, &mut out) => {
                followed.map_err(link_fail)?;
            }
            _ = signals.recv() => {}
        }
        Ok(0)
    })
}

/// The hidden flag that makes `trackside run` the engine of a run whose UI
/// is another process: no output but one `ready RUN_DIR` line on stdout
/// once the run's socket serves.
pub const ENGINE_FLAG: &str = "--engine-process";

/// `trackside run` on a terminal: the run goes in a process of its own (a
/// session of its own, no terminal), and this one shows the UI attached to
/// it, so `d` can detach and leave it going. `None` when that process could
/// not be started (the UI then runs the run in this process).
pub fn run_in_background(ascii: bool, no_mouse: bool, state: &Path) -> Result<Option<u8>, Fail> {
    let Ok(exe) = std::env::current_exe() else {
        return Ok(None);
    };
    let mut args: Vec<OsString> = std::env::args_os().skip(1).collect();
    args.push(ENGINE_FLAG.into());
    let mut cmd = std::process::Command::new(exe);
    cmd.args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: setsid is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| nix::unistd::setsid().map(drop).map_err(std::io::Error::from));
    }
    let Ok(mut child) = cmd.spawn() else {
        return Ok(None);
    };
    // What it says before it serves (diagnostics, --verbose notes) is this
    // terminal's; after, it says nothing.
    let relayed = child.stderr.take().map(|err| {
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                let _ = writeln!(std::io::stderr(), "{line}");
            }
        })
    });
    let ready = child.stdout.take().map(|out| {
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::BufReader::new(out).read_line(&mut line);
            line.strip_prefix("ready ").map(|d| PathBuf::from(d.trim_end()))
        })
    });
    let mouse = !no_mouse && store::gc::ui_mouse(state).map_err(|e| Fail(e.to_string(), 2))?;
    let rt = runtime()?;
    rt.block_on(async move {
        let mut signals = Signals::new();
        let waiting = tokio::task::spawn_blocking(move || ready.and_then(|r| r.join().ok().flatten()));
        let dir = tokio::select! {
            dir = waiting => dir.ok().flatten(),
            _ = signals.recv() => {
                let _ = child.kill();
                let _ = child.wait();
                return Ok(Some(130));
            }
        };
        let Some(dir) = dir else {
            // It ended before serving (an invalid pipeline, ...): it said why.
            let code = tokio::task::spawn_blocking(move || child.wait()).await;
            if let Some(r) = relayed {
                let _ = r.join();
            }
            let code = code.ok().and_then(Result::ok).and_then(|s| s.code()).unwrap_or(2);
            return Ok(Some(u8::try_from(code).unwrap_or(2)));
        };
        if let Some(r) = relayed {
            // Its last words before the screen changes (it closed its stderr).
            let _ = tokio::time::timeout(Duration::from_secs(1), tokio::task::spawn_blocking(move || r.join())).await;
        }
        let link = match RemoteLink::connect(&dir, false).await {
            Ok(l) => l,
            Err(e) => {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(child.id() as i32),
                    nix::sys::signal::Signal::SIGTERM,
                );
                return Err(Fail(format!("cannot reach the run it started: {e}"), 2));
            }
        };
        let opts = UiOptions {
            ascii,
            mouse,
            color: std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
            bell: store::gc::ui_bell(state).unwrap_or(true),
            services: Some(super::servicecmd::services_source(state)),
        };
        let left = ui::run_owned(&link, opts).await;
        match left {
            Ok(ui::Left::Finished(summary)) => {
                // The engine ends right after its last event.
                let _ = tokio::time::timeout(Duration::from_secs(60), tokio::task::spawn_blocking(move || child.wait())).await;
                write_out(&format!("{}\n", headless::summary_table(&summary)));
                Ok(Some(u8::try_from(summary.exit_code).unwrap_or(1)))
            }
            Ok(ui::Left::Detached) => {
                let id = link.run_id();
                write_out(&format!(
                    "detached: run {id} goes on in the background (pid {}); `trackside attach {id}` comes back to it, `trackside cancel {id}` stops it\n",
                    child.id()
                ));
                Ok(Some(0))
            }
            Err(e) => {
                // The UI failed (a panic, a broken terminal): the run does not outlive it.
                let _ = link.send(Command::CancelAll).await;
                let _ = tokio::time::timeout(Duration::from_secs(60), tokio::task::spawn_blocking(move || child.wait())).await;
                Err(Fail(e.to_string(), 2))
            }
        }
    })
}
