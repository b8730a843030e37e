//! Swarm executor benchmarks behind docs/BENCHMARKS.md ("Swarm").
//! Run, as root, on the two-node swarm of `.ci/swarm.sh`:
//!
//! ```sh
//! eval "$(sudo .ci/swarm.sh up)"
//! cargo bench --bench swarm
//! ```
//!
//! The real binary (release), whole process, with `--json` events:
//! - a job's start to its first log line on the swarm, with a workspace
//!   image to build and push, and with one already pushed (the same
//!   workspace);
//! - 100 short jobs at `-j 100` across the two nodes: wall time and
//!   trackside's peak RSS (`wait4`);
//! - a worker's daemon killed with SIGKILL mid-job: time until the lost
//!   step is reported (`job_retrying`) and until the retry passed.

#[path = "support/stats.rs"]
mod stats;
use stats::stats;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

struct Swarm {
    host: String,
    registry: String,
    image: String,
    dir: PathBuf,
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let (Some(host), Some(registry), Some(image), Some(dir)) = (
        var("TRACKSIDE_SWARM_HOST"),
        var("TRACKSIDE_SWARM_REGISTRY"),
        var("TRACKSIDE_SWARM_IMAGE"),
        var("TRACKSIDE_SWARM_DIR"),
    ) else {
        println!("swarm benchmarks: SKIPPED, no swarm (eval \"$(sudo .ci/swarm.sh up)\")");
        return;
    };
    let swarm = Swarm {
        host,
        registry,
        image,
        dir: PathBuf::from(dir),
    };
    let bin = release_binary();
    println!("trackside swarm benchmarks (release build, two nodes on one machine)");
    let work = tempfile::tempdir().expect("tempdir");

    // Start to first log line: a new workspace each round, then the same one again.
    let mut fresh = Vec::new();
    let mut cached = Vec::new();
    for round in 0..7 {
        let project = work.path().join(format!("first-{round}"));
        std::fs::create_dir_all(&project).expect("project");
        std::fs::write(project.join("round.txt"), format!("{round}\n")).expect("file");
        let file = project.join("p.yml");
        std::fs::write(
            &file,
            format!(
                "name: first\njobs:\n  a:\n    image: {}\n    steps: [{{script: ['echo first-line']}}]\n",
                swarm.image
            ),
        )
        .expect("pipeline");
        for samples in [&mut fresh, &mut cached] {
            let (events, _, _) = run(&bin, &swarm, &work.path().join("state"), &file, &[]);
            samples.push(first_line(&events, "a", "first-line"));
        }
    }
    stats(
        "job start to first log line, workspace image built and pushed",
        fresh,
        "",
    );
    stats(
        "job start to first log line, workspace image already pushed",
        cached,
        "",
    );

    // 100 jobs at once.
    let mut yaml = String::from("name: hundred\njobs:\n");
    for i in 0..100 {
        yaml.push_str(&format!(
            "  j{i}:\n    image: {}\n    steps: [{{script: ['echo job-{i}']}}]\n",
            swarm.image
        ));
    }
    let file = work.path().join("hundred.yml");
    std::fs::write(&file, yaml).expect("pipeline");
    let mut walls = Vec::new();
    let mut peaks = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let (events, code, rss_kib) = run(&bin, &swarm, &work.path().join("state"), &file, &["-j", "100"]);
        walls.push(started.elapsed());
        peaks.push(rss_kib);
        let passed = events
            .iter()
            .filter(|e| e["type"] == "job_finished" && e["status"] == "succeeded")
            .count();
        assert_eq!((code, passed), (0, 100), "every job passes");
    }
    stats("100 short jobs at -j 100 on two nodes, wall", walls, "");
    peaks.sort();
    println!(
        "{:<58} median {:.1} MiB, max {:.1} MiB",
        "  trackside's peak RSS in those runs",
        peaks[peaks.len() / 2] as f64 / 1024.0,
        peaks[peaks.len() - 1] as f64 / 1024.0
    );

    // A lost node.
    let mut reported = Vec::new();
    let mut passed = Vec::new();
    for round in 0..3 {
        let (r, p) = lost_node(&bin, &swarm, work.path(), round);
        reported.push(r);
        passed.push(p);
    }
    stats("worker SIGKILLed mid-job: to the attempt reported lost", reported, "");
    stats("worker SIGKILLed mid-job: to the retry passed elsewhere", passed, "");
}

/// `target/release/trackside`, built if needed.
fn release_binary() -> PathBuf {
    let status = Command::new(env!("CARGO"))
        .args(["build", "--release", "--bin", "trackside", "--quiet"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("cargo build");
    assert!(status.success(), "release build");
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/trackside")
}

/// Runs FILE on the swarm; its events, exit code and peak RSS (KiB).
// The child is reaped by `wait4` (for its rusage), not `Child::wait`.
#[allow(clippy::zombie_processes)]
fn run(bin: &Path, s: &Swarm, state: &Path, file: &Path, args: &[&str]) -> (Vec<Value>, i32, i64) {
    let child = Command::new(bin)
        .env("TRACKSIDE_STATE_DIR", state)
        .args(["run", "--json", "--no-watch", "--executor", "swarm"])
        .args(["--swarm-manager", &s.host, "--swarm-registry", &s.registry])
        .args(args)
        .arg(file)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn trackside");
    let pid = child.id() as i32;
    let mut events = Vec::new();
    if let Some(out) = child.stdout {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                events.push(v);
            }
        }
    }
    let (code, rss) = reap(pid);
    (events, code, rss)
}

/// `wait4`: the exit code and the child's own peak RSS.
fn reap(pid: i32) -> (i32, i64) {
    let mut status = 0;
    // SAFETY: a zeroed rusage is valid; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: pid is our child, not yet waited for; the pointers are valid.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(r, pid, "wait4");
    (libc::WEXITSTATUS(status), usage.ru_maxrss)
}

/// From the job's start to its line `text`.
fn first_line(events: &[Value], job: &str, text: &str) -> Duration {
    let ts = |want: &dyn Fn(&Value) -> bool| {
        events
            .iter()
            .find(|e| want(e))
            .and_then(|e| e["ts"].as_u64())
            .unwrap_or_else(|| panic!("no such event in {events:#?}"))
    };
    let start = ts(&|e| e["type"] == "job_started" && e["job"] == job);
    let line = ts(&|e| e["type"] == "log_line" && e["job"] == job && e["line"] == text);
    Duration::from_millis(line.saturating_sub(start))
}

fn docker(s: &Swarm, args: &[&str]) -> String {
    let out = Command::new("docker")
        .arg("-H")
        .arg(&s.host)
        .args(args)
        .output()
        .expect("docker");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Drains the manager, starts a job (on the worker), kills the worker's
/// daemon once the job runs; returns the times to `job_retrying` and to
/// the run's end. The worker is started again and the manager made active.
fn lost_node(bin: &Path, s: &Swarm, work: &Path, round: u32) -> (Duration, Duration) {
    let manager_sock = format!("unix://{}/n1/docker.sock", s.dir.display());
    let id = Command::new("docker")
        .args(["-H", &manager_sock, "info", "--format", "{{.Swarm.NodeID}}"])
        .output()
        .expect("docker info");
    let manager = String::from_utf8_lossy(&id.stdout).trim().to_string();
    docker(s, &["node", "update", "--availability", "drain", &manager]);
    let file = work.join(format!("lost-{round}.yml"));
    std::fs::write(
        &file,
        format!(
            "name: lost\njobs:\n  long:\n    image: {}\n    retry_count: 1\n    steps:\n      - script: ['echo attempt-$CI_JOB_ATTEMPT', 'if [ \"$CI_JOB_ATTEMPT\" = 1 ]; then sleep 120; fi']\n",
            s.image
        ),
    )
    .expect("pipeline");
    let mut child = Command::new(bin)
        .env("TRACKSIDE_STATE_DIR", work.join("state"))
        .args(["run", "--json", "--no-watch", "--executor", "swarm"])
        .args(["--swarm-manager", &s.host, "--swarm-registry", &s.registry])
        .arg(&file)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn trackside");
    let out = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(out).lines().map_while(Result::ok);
    for line in lines.by_ref() {
        if line.contains("\"attempt-1\"") {
            break;
        }
    }
    docker(s, &["node", "update", "--availability", "active", &manager]);
    let pid: i32 = std::fs::read_to_string(s.dir.join("n2/pid"))
        .expect("worker pid")
        .trim()
        .parse()
        .expect("pid");
    let killed = Instant::now();
    // SAFETY: sending a signal to a pid read from the daemon's pid file.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let mut retrying = None;
    for line in lines {
        if retrying.is_none() && line.contains("\"job_retrying\"") {
            retrying = Some(killed.elapsed());
        }
    }
    let status = child.wait().expect("wait");
    let done = killed.elapsed();
    assert!(status.success(), "the retry passed");
    let up = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.ci/swarm.sh"))
        .args(["start", "2"])
        .env("TRACKSIDE_SWARM_DIR", &s.dir)
        .status()
        .expect("swarm.sh start 2");
    assert!(up.success(), "the worker came back");
    (retrying.expect("a job_retrying event"), done)
}
