//! Terminal UI benchmarks behind docs/BENCHMARKS.md. Run: `cargo bench --bench ui`.
//!
//! 1. One frame of a 1,000-job DAG with a full log pane (in-process, on a
//!    ratatui buffer of 200x60).
//! 2. The real binary in tmux while a job prints 10,000 lines a second:
//!    time from a key press to the screen showing its effect, and
//!    trackside's peak RSS. Needs tmux; without it this part says so.
//! 3. The same under a firehose (a job printing as fast as it can, millions
//!    of lines): `g` (the top, read back from disk), `G`, `f`, PgUp and a
//!    search through the part on disk, key to screen; the lines per second
//!    the run took meanwhile, whether the display fell behind, and peak RSS
//!    after all that scrolling and searching (flat: a window is read, not
//!    the log).

#[path = "support/stats.rs"]
mod stats;
use stats::stats;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::widgets::Widget;

use trackside::engine::event::{Event, EventKind, PlannedJob};
use trackside::engine::{JobStatus, Stream};
use trackside::pipeline::When;
use trackside::ui::app::App;
use trackside::ui::theme::Theme;

fn big_app() -> App {
    let mut app = App::new(Theme {
        color: true,
        ascii: false,
    });
    let ev = |kind| Event {
        seq: 0,
        ts: 1_000,
        kind,
    };
    let jobs: Vec<PlannedJob> = (0..1_000)
        .map(|i| PlannedJob {
            name: format!("job-{i:04}"),
            depends_on: if i >= 100 {
                vec![
                    format!("job-{:04}", i - 100),
                    format!("job-{:04}", i - 100 + (i * 7) % 100),
                ]
            } else {
                vec![]
            },
            level: i / 100,
            when: When::OnSuccess,
            allow_failure: false,
            steps: vec!["main".into()],
            has_image: false,
            stage: None,
            facts: Vec::new(),
            flake_pct: None,
        })
        .collect();
    app.model.apply(&ev(EventKind::RunStarted {
        run_id: "bench".into(),
        pipeline: "big".into(),
        jobs: vec![],
        max_parallel: 100,
    }));
    app.model.apply(&ev(EventKind::PlanChanged {
        jobs,
        critical_path: vec![],
        stages: Vec::new(),
    }));
    for i in 0..300 {
        let job = format!("job-{i:04}");
        app.model.apply(&ev(EventKind::JobStarted {
            job: job.clone(),
            attempt: 1,
        }));
        if i < 200 {
            app.model.apply(&ev(EventKind::JobFinished {
                job,
                attempt: 1,
                status: if i % 17 == 0 {
                    JobStatus::Failed
                } else {
                    JobStatus::Succeeded
                },
                exit_code: Some(0),
                failure_class: None,
                duration_ms: 1_234,
                flaky: false,
                message: None,
                cached: None,
                diagnosis: None,
            }));
        }
    }
    for n in 0..5_000 {
        app.model.apply(&ev(EventKind::LogLine {
            job: "job-0250".into(),
            attempt: 1,
            step: "main".into(),
            stream: Stream::Stdout,
            line: format!("\x1b[32mINFO\x1b[0m line {n}: compiling module number {n} of the big project"),
            line_no: n,
        }));
    }
    app.selected = 250;
    app.now = 10_000;
    app
}

fn frame_of_a_1000_job_dag() {
    let app = big_app();
    let area = Rect::new(0, 0, 200, 60);
    let mut samples = Vec::new();
    for _ in 0..300 {
        let mut buf = Buffer::empty(area);
        let t = Instant::now();
        (&app).render(area, &mut buf);
        samples.push(t.elapsed());
        std::hint::black_box(&buf);
    }
    stats("one frame: 1,000-job DAG + full log pane (200x60)", samples, "< 5 ms");
    let mut list = big_app();
    list.list_mode = true;
    let mut samples = Vec::new();
    for _ in 0..300 {
        let mut buf = Buffer::empty(area);
        let t = Instant::now();
        (&list).render(area, &mut buf);
        samples.push(t.elapsed());
    }
    stats("one frame: 1,000 jobs in list mode + full log pane", samples, "< 5 ms");
}

struct Tmux(String);

impl Tmux {
    fn cmd(&self) -> Command {
        let mut c = Command::new("tmux");
        c.args(["-u", "-L", &self.0]);
        c
    }
    fn screen(&self) -> String {
        self.cmd()
            .args(["capture-pane", "-p", "-t", "b"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }
    fn wait(&self, pred: impl Fn(&str) -> bool, limit: Duration) -> Option<Duration> {
        let t = Instant::now();
        while t.elapsed() < limit {
            if pred(&self.screen()) {
                return Some(t.elapsed());
            }
        }
        None
    }
}

impl Tmux {
    /// `trackside run NAME.yml` (written from `pipeline`) in a tmux of its
    /// own at 120x32, with a state directory in the returned temp dir.
    fn launch(name: &str, pipeline: &str) -> (tempfile::TempDir, Tmux) {
        let dir = tempfile::tempdir().expect("tempdir");
        let project = dir.path().join("p");
        std::fs::create_dir_all(&project).expect("mkdir");
        std::fs::write(project.join(format!("{name}.yml")), pipeline).expect("write");
        let t = Tmux(format!("trackside-{name}-{}", std::process::id()));
        let bin = env!("CARGO_BIN_EXE_trackside");
        let cmd = format!(
            "{bin} run {name}.yml --state-dir {}",
            dir.path().join("state").display()
        );
        let ok = t
            .cmd()
            .args(["new-session", "-d", "-s", "b", "-x", "120", "-y", "32", "-c"])
            .arg(&project)
            .arg(&cmd)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "tmux");
        (dir, t)
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").status();
    }
}

fn key_latency_under_log_flood() {
    if Command::new("tmux").arg("-V").output().is_err() {
        println!("key latency under 10,000 lines/s: SKIPPED, tmux is not installed");
        return;
    }
    // 1,000 lines every 0.1 s: 10,000 lines a second, for up to 60 s.
    let (dir, t) = Tmux::launch(
        "flood",
        "name: flood\njobs:\n  flood:\n    steps:\n      - script: 'n=0; while [ $n -lt 600000 ]; do seq $n $((n+999)); n=$((n+1000)); sleep 0.1; done'\n",
    );
    t.wait(|s| s.contains("flood") && s.contains("▶"), Duration::from_secs(20))
        .expect("the run starts");
    let (pid, engine) = (ui_pid("flood"), engine_pid("flood"));
    // Toggle the help overlay and wait to see it appear / disappear.
    let mut samples = Vec::new();
    for i in 0..40 {
        let showing = i % 2 == 0;
        let sent = Instant::now();
        let _ = t
            .cmd()
            .args(["send-keys", "-t", "b", if showing { "?" } else { "x" }])
            .status();
        let seen = t.wait(
            |s| (s.contains("closes this help") || s.contains("close this help")) == showing,
            Duration::from_secs(5),
        );
        if seen.is_some() {
            samples.push(sent.elapsed());
        }
    }
    let log_lines = || {
        std::fs::read_dir(dir.path().join("state/runs"))
            .ok()
            .and_then(|mut d| d.next())
            .and_then(|e| e.ok())
            .map(|e| e.path().join("logs/flood.1.log"))
            .and_then(|p| std::fs::read_to_string(Path::new(&p)).ok())
            .map_or(0, |s| s.lines().count())
    };
    // Let the window fill many times over before reading the peak.
    let started = Instant::now();
    while log_lines() < 60_000 && started.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(250));
    }
    let lines = log_lines();
    let peak = |pid: Option<u32>| {
        pid.and_then(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
            .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM")).map(|l| l.to_string()))
            .unwrap_or_else(|| "unknown".into())
    };
    let (rss, engine_rss) = (peak(pid), peak(engine));
    stats(
        "key press -> screen, job printing 10,000 lines/s (tmux)",
        samples,
        "< 50 ms",
    );
    println!("  the UI's peak RSS after {lines} streamed lines: {rss}   (bounded: 5,000 lines kept per attempt)");
    println!("  the run's engine process, the same moment: {engine_rss}");
}

/// `trackside run NAME.yml` on a terminal is two processes: the UI (this
/// command line) and the run's engine (the same with `--engine-process`),
/// which the UI reaches through the run's socket.
fn ui_pid(name: &str) -> Option<u32> {
    pgrep(&format!("trackside run {name}.yml --state-dir [^ ]+$"))
}

fn engine_pid(name: &str) -> Option<u32> {
    pgrep(&format!("trackside run {name}.yml .*--engine-process"))
}

fn pgrep(pattern: &str) -> Option<u32> {
    Command::new("pgrep")
        .args(["-n", "-f", pattern])
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse::<u32>().ok())
}

/// VmHWM (peak) and VmRSS (now) of a process, as /proc says them.
fn memory(pid: Option<u32>) -> String {
    let status = pid
        .and_then(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
        .unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .map_or("unknown".to_string(), |l| {
                l.split_whitespace().skip(1).collect::<Vec<_>>().join(" ")
            })
    };
    format!("peak {}, now {}", field("VmHWM"), field("VmRSS"))
}

fn keys_under_a_firehose() {
    if Command::new("tmux").arg("-V").output().is_err() {
        println!("keys under a firehose: SKIPPED, tmux is not installed");
        return;
    }
    // As fast as the run takes it: about 215 MB of log record.
    let (dir, t) = Tmux::launch(
        "hose",
        "name: hose\njobs:\n  hose:\n    steps:\n      - script: \"seq -f 'hose line %.0f' 0 4999999\"\n",
    );
    t.wait(|s| s.contains("hose line"), Duration::from_secs(20))
        .expect("the run starts");
    let (pid, engine) = (ui_pid("hose"), engine_pid("hose"));
    let log = || {
        std::fs::read_dir(dir.path().join("state/runs"))
            .ok()
            .and_then(|mut d| d.next())
            .and_then(|e| e.ok())
            .map(|e| e.path().join("logs/hose.1.log"))
    };
    let bytes = || log().and_then(|p| std::fs::metadata(p).ok()).map_or(0, |m| m.len());
    let lines = || {
        log()
            .and_then(|p| std::fs::read(p).ok())
            .map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count())
    };
    // Let it get going: the in-memory window overflows many times.
    let t0 = Instant::now();
    while bytes() < 20_000_000 && t0.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let press = |k: &str, pred: &dyn Fn(&str) -> bool| -> Option<Duration> {
        let sent = Instant::now();
        let _ = t.cmd().args(["send-keys", "-t", "b", k]).status();
        t.wait(pred, Duration::from_secs(30)).map(|_| sent.elapsed())
    };
    let first = |s: &str| s.lines().any(|l| l.contains("hose line 0 "));
    let following = |s: &str| s.contains("· follow");
    let (mut top, mut bottom, mut still, mut page) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (b0, l0, w0) = (bytes(), lines(), Instant::now());
    let _ = press("Enter", &|s: &str| s.contains("log · hose"));
    let mut behind = false;
    for _ in 0..8 {
        // The top of the log is on disk: `g` reads a window around it.
        top.extend(press("g", &|s: &str| first(s) && !following(s)));
        // Up from the top is still the top; the screen must answer anyway.
        page.extend(press("PageDown", &|s: &str| !first(s)));
        bottom.extend(press("G", &following));
        still.extend(press("f", &|s: &str| !following(s)));
        behind |= t.screen().contains("fell behind");
    }
    // A search through the part on disk (hundreds of thousands of lines,
    // the match among them): the key is answered at once ("searching"),
    // the match comes when the scan ends.
    let _ = t
        .cmd()
        .args(["send-keys", "-t", "b", "/", "hose line 234567", "Enter"])
        .status();
    let sent = Instant::now();
    let found = t
        .wait(|s| s.contains("match 1/"), Duration::from_secs(60))
        .map(|_| sent.elapsed());
    let secs = w0.elapsed().as_secs_f64();
    let rate = bytes().saturating_sub(b0) as f64 / secs;
    let lines_per_s = lines().saturating_sub(l0) as f64 / secs;
    for (name, samples) in [
        ("firehose: g (top of a log on disk) -> screen (tmux)", top),
        ("firehose: PgDn -> screen", page),
        ("firehose: G -> screen (following)", bottom),
        ("firehose: f -> screen (stops following)", still),
    ] {
        if samples.is_empty() {
            println!("{name}: the screen never showed it");
        } else {
            stats(name, samples, "< 50 ms");
        }
    }
    println!(
        "  search of the part on disk -> first match shown: {}",
        found.map_or("not within 60 s".into(), |d| format!("{:.0} ms", d.as_secs_f64() * 1e3))
    );
    println!(
        "  the run took {:.1} MB/s of log meanwhile (~{:.0}k lines/s); the display fell behind: {behind}",
        rate / 1e6,
        lines_per_s / 1e3
    );
    // Then the whole log once the job has ended (about 215 MB): the top,
    // the end and a search through all of it, and memory after that.
    let t1 = Instant::now();
    while !t.screen().contains("PASSED") && t1.elapsed() < Duration::from_secs(300) {
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = press("g", &|s: &str| first(s));
    let _ = press("G", &|s: &str| s.contains("hose line 4999999"));
    let _ = t
        .cmd()
        .args(["send-keys", "-t", "b", "/", "hose line 4321098", "Enter"])
        .status();
    let sent = Instant::now();
    let whole = t
        .wait(|s| s.contains("│hose line 4321098 "), Duration::from_secs(120))
        .map(|_| sent.elapsed());
    println!(
        "  search of all {:.0} MB on disk -> its match shown: {}",
        bytes() as f64 / 1e6,
        whole.map_or("not within 120 s".into(), |d| format!("{:.2} s", d.as_secs_f64()))
    );
    println!(
        "  the UI's memory after {:.0} MB of log, 9 rounds of g/G, a search through all of it: {}",
        bytes() as f64 / 1e6,
        memory(pid)
    );
    println!("  the run's engine process: {}", memory(engine));
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    println!("trackside UI benchmarks (release build)");
    frame_of_a_1000_job_dag();
    key_latency_under_log_flood();
    keys_under_a_firehose();
}
