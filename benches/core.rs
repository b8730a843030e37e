//! Benchmarks behind docs/BENCHMARKS.md. Run: `cargo bench --bench core`.
//!
//! A plain harness rather than criterion: the targets are stated as p99
//! latencies and peak RSS, which criterion does not report. Each benchmark
//! repeats its measurement and prints the median and p99 (the machine is
//! shared and noisy; medians are what to compare).

#[path = "support/stats.rs"]
mod stats;
use stats::stats;

use std::path::Path;
use std::time::{Duration, Instant};

use trackside::engine::state::{Input, Options, Outcome, RunState};
use trackside::engine::{self, EngineConfig, EventKind};
use trackside::pipeline::{LoadOptions, Plan, parse_source};

/// A layered DAG: `width` jobs per level, each depending on two jobs of the level before.
fn generated_pipeline(jobs: usize, width: usize) -> String {
    let mut s = String::with_capacity(jobs * 120);
    s.push_str("name: generated\nglobal_env:\n  MODE: bench\njobs:\n");
    for i in 0..jobs {
        s.push_str(&format!("  job-{i}:\n"));
        if i >= width {
            // Both dependencies sit in the level just before this one.
            let a = i - width;
            let b = (i / width - 1) * width + (i * 7919) % width;
            if a == b {
                s.push_str(&format!("    depends_on: [job-{a}]\n"));
            } else {
                s.push_str(&format!("    depends_on: [job-{a}, job-{b}]\n"));
            }
        }
        s.push_str("    environment:\n      N: \"${MODE}-");
        s.push_str(&i.to_string());
        s.push_str("\"\n    steps:\n      - script: echo $N\n");
    }
    s
}

fn parse_validate_plan_10k() {
    let text = generated_pipeline(10_000, 1_000);
    let mut samples = Vec::new();
    for _ in 0..15 {
        let t = Instant::now();
        let (p, _) = parse_source(Path::new("gen.yml"), text.clone(), &LoadOptions::default()).expect("valid");
        let plan = Plan::build(&p).expect("plan");
        assert_eq!(plan.levels.len(), 10);
        samples.push(t.elapsed());
    }
    stats(
        &format!("parse+validate+plan, 10,000 jobs ({} KiB)", text.len() / 1024),
        samples,
        "< 200 ms",
    );
}

/// Hostile shapes that were quadratic once: validating each must stay
/// near-linear, and the printed report bounded.
fn hostile_shapes_validate() {
    let steps: String = (0..100_000).map(|i| format!("      - script: echo {i}\n")).collect();
    let anchors: String = (0..200_000).map(|i| format!("  - &a{i} v{i}\n")).collect();
    let unknown: Vec<String> = (0..20_000).map(|i| format!("nope{i}")).collect();
    let dups = vec!["b"; 200_000].join(", ");
    let cases = [
        (
            "100,000 steps in one job",
            format!("name: x\njobs:\n  a:\n    steps:\n{steps}"),
            "< 2 s",
        ),
        (
            "200,000 anchors",
            format!("name: x\nx-list:\n{anchors}jobs:\n  a:\n    steps:\n      - script: echo\n"),
            "< 2 s",
        ),
        (
            "20,000 unknown dependencies on one line (report rendered)",
            format!(
                "name: x\njobs:\n  a:\n    depends_on: [{}]\n    steps:\n      - script: echo\n",
                unknown.join(", ")
            ),
            "< 2 s",
        ),
        (
            "200,000 duplicate dependencies",
            format!(
                "name: x\njobs:\n  b:\n    steps:\n      - script: echo\n  a:\n    depends_on: [{dups}]\n    steps:\n      - script: echo\n"
            ),
            "< 2 s",
        ),
    ];
    for (name, text, target) in cases {
        let mut samples = Vec::new();
        let mut printed = 0;
        for _ in 0..5 {
            let t = Instant::now();
            let report = match parse_source(Path::new("hostile.yml"), text.clone(), &LoadOptions::default()) {
                Ok((_, r)) | Err(r) => r,
            };
            printed = report.render(false).len();
            samples.push(t.elapsed());
        }
        stats(
            &format!("validate {name} ({} KiB; report {printed} bytes)", text.len() / 1024),
            samples,
            target,
        );
    }
}

fn scheduling_decision_10k_with_1000_running() {
    let text = generated_pipeline(10_000, 1_000);
    let (p, _) = parse_source(Path::new("gen.yml"), text, &LoadOptions::default()).expect("valid");
    let plan = Plan::build(&p).expect("plan");
    let opts = Options {
        max_parallel: 1_000,
        finish_when_blocked: true,
        ..Options::default()
    };
    let mut m = RunState::new("bench", p, plan, opts);
    let starts = |fx: &[trackside::engine::state::Effect]| -> Vec<usize> {
        fx.iter()
            .filter_map(|e| match e {
                trackside::engine::state::Effect::Start { job, .. } => Some(*job),
                _ => None,
            })
            .collect()
    };
    let mut running: std::collections::VecDeque<usize> = starts(&m.handle(Input::Start, Duration::ZERO)).into();
    assert_eq!(running.len(), 1_000);
    let mut samples = Vec::with_capacity(10_000);
    let mut now = Duration::ZERO;
    // Finish running jobs in start order; each call releases dependents and fills free slots.
    while let Some(job) = running.pop_front() {
        now += Duration::from_micros(10);
        let attempt = m.attempt(job);
        let t = Instant::now();
        let fx = m.handle(
            Input::AttemptFinished {
                job,
                attempt,
                outcome: Outcome::success(),
            },
            now,
        );
        samples.push(t.elapsed());
        running.extend(starts(&fx));
        assert!(running.len() <= 1_000);
    }
    assert_eq!(samples.len(), 10_000);
    assert!(m.is_finished());
    stats(
        "scheduling decision, 10,000-job DAG, 1,000 running",
        samples,
        "p99 < 1 ms",
    );
}

fn peak_rss_of_children_kib() -> i64 {
    nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)
        .map(|u| u.max_rss())
        .unwrap_or(-1)
}

fn thousand_concurrent_shell_jobs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = String::from("name: wide\njobs:\n");
    for i in 0..1_000 {
        s.push_str(&format!("  j{i}:\n    steps:\n      - script: echo {i}\n"));
    }
    // The project is the pipeline file's folder: keep run records out of it.
    let project = dir.path().join("project");
    std::fs::create_dir_all(&project).expect("mkdir");
    let file = project.join("wide.yml");
    std::fs::write(&file, s).expect("write");
    let mut samples = Vec::new();
    let mut rss = Vec::new();
    for round in 0..3 {
        let t = Instant::now();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_trackside"))
            .args(["run", "--json", "-j", "1000"])
            .arg(&file)
            .arg("--state-dir")
            .arg(dir.path().join(format!("state{round}")))
            .stdout(std::process::Stdio::null())
            .status()
            .expect("run trackside");
        samples.push(t.elapsed());
        assert!(out.success(), "all 1,000 jobs pass");
        rss.push(peak_rss_of_children_kib());
    }
    stats(
        "1,000 concurrent trivial shell jobs, wall time (binary)",
        samples,
        "< 10 s",
    );
    println!(
        "{:<58} {} MiB (getrusage RUSAGE_CHILDREN max_rss)                    target: < 150 MB",
        "  trackside peak RSS during those runs",
        rss.iter().max().copied().unwrap_or(-1) / 1024
    );
}

fn first_log_line_latency() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let project = dir.path().join("project");
    std::fs::create_dir_all(&project).expect("mkdir");
    std::fs::write(project.join("README"), "x").expect("write");
    let yaml = "name: lat\njobs:\n  j:\n    steps:\n      - script: echo first\n";
    let (p, _) = parse_source(&project.join("p.yml"), yaml.into(), &LoadOptions::default()).expect("valid");
    let mut samples = Vec::new();
    for i in 0..60 {
        let plan = Plan::build(&p).expect("plan");
        let mut cfg = EngineConfig::new(
            format!("lat-{i}"),
            dir.path().join("state"),
            project.join("p.yml"),
            project.clone(),
        );
        cfg.max_parallel = 1;
        cfg.host_env = vec![("PATH".into(), std::env::var("PATH").unwrap_or_default())];
        cfg.seed = Some(1);
        let d = rt.block_on(async {
            let h = engine::spawn(p.clone(), plan, cfg).expect("spawn");
            let mut rx = h.subscribe_live();
            h.start().await.expect("start");
            let mut started = None;
            loop {
                let ev = rx.recv().await.expect("event");
                match &ev.kind {
                    EventKind::JobStarted { .. } => started = Some(Instant::now()),
                    EventKind::LogLine { .. } => break started.map(|s| s.elapsed()),
                    _ => {}
                }
            }
        });
        samples.push(d.expect("JobStarted before the first line"));
    }
    stats("first log line after a shell job is scheduled", samples, "< 20 ms");
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this too, so keep it quick to skip.
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    println!(
        "trackside core benchmarks (release build, {} cores)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    parse_validate_plan_10k();
    scheduling_decision_10k_with_1000_running();
    first_log_line_latency();
    thousand_concurrent_shell_jobs();
    // Last: its large inputs would count in the children's peak RSS above.
    hostile_shapes_validate();
}
