//! Faults of the machine under a run (docs/reliability.md): a full disk
//! while artifacts are stored, CPU starvation, a host with no route to it.
//! The disk test mounts a small tmpfs and the network test unshares a
//! network namespace, so they need root: without it they say they skipped,
//! unless TRACKSIDE_REQUIRE_ROOT=1 (CI sets it) makes that a failure.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::cli::Env;
use trackside::engine::{EventKind, RunResult};
use trackside::protocol::event::FailureClass;

/// Whether this test may mount; `false` (skipped) only where root is not
/// required.
fn root(why: &str) -> bool {
    if nix::unistd::Uid::effective().is_root() {
        return true;
    }
    assert!(
        std::env::var("TRACKSIDE_REQUIRE_ROOT").as_deref() != Ok("1"),
        "TRACKSIDE_REQUIRE_ROOT=1 but this test {why} needs root"
    );
    eprintln!("SKIPPED chaos test: {why} needs root; set TRACKSIDE_REQUIRE_ROOT=1 to make this a failure");
    false
}

/// A tmpfs mounted at a folder, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).expect("mkdir");
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(at)
            .status()
            .expect("mount")
            .success();
        assert!(ok, "mount a tmpfs at {}", at.display());
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_disk_that_fills_while_artifacts_are_stored_fails_that_job_as_disk_full_and_the_store_stays_consistent() {
    if !root("mounting a small tmpfs as the state directory") {
        return;
    }
    let env = Env::new();
    let _fs = Tmpfs::mount(&env.state(), "48m");
    std::fs::write(env.state().join("config.yml"), "artifacts: {min_free: 4MB}\n").expect("config");
    // `big` leaves 30 MB in its workspace (on the same 48 MB file system)
    // and asks to keep them: storing them needs 30 MB more.
    let file = env.file(
        "p.yml",
        "name: full\njobs:\n  big:\n    artifacts: {paths: [out]}\n    steps: [{script: ['mkdir -p out && \
         head -c 30000000 /dev/urandom > out/blob']}]\n  small:\n    steps: [{script: ['echo fine']}]\n",
    );
    let out = env.run(&["run", file.to_str().expect("utf-8"), "--json", "-j", "1", "--no-watch"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let events: Vec<serde_json::Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let finished = |job: &str| {
        events
            .iter()
            .find(|e| e["type"] == "job_finished" && e["job"] == job)
            .cloned()
            .unwrap_or_default()
    };
    let big = finished("big");
    assert_eq!(big["failure_class"], "disk_full", "{big}");
    let message = big["message"].as_str().unwrap_or_default();
    assert!(message.contains("MiB free"), "says what is free: {message}");
    assert_eq!(finished("small")["status"], "succeeded");
    // Nothing half-written is left in the store.
    let verify = env.run(&["store", "verify"]);
    assert_eq!(
        verify.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
}

/// Busy loops, killed when dropped.
struct Hogs(Vec<Child>);

impl Drop for Hogs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[tokio::test]
async fn under_cpu_starvation_a_timeout_fires_on_time_and_auto_parallelism_comes_down() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let gate = tempfile::tempdir().expect("tempdir");
    let go = gate.path().join("go");
    let wait = format!(
        "steps: [{{script: ['while [ ! -f {} ]; do sleep 0.05; done']}}]",
        go.display()
    );
    let jobs: String = (1..=4).map(|i| format!("  wait{i}:\n    {wait}\n")).collect();
    let mut s = common::setup(&format!(
        "name: starved\njobs:\n  slow:\n    timeout: 2\n    steps: [{{script: ['sleep 30']}}]\n{jobs}"
    ));
    s.cfg.auto_parallel = true;
    // Three busy loops per core.
    let hogs = Hogs(
        (0..cores * 3)
            .map(|_| {
                Command::new("sh")
                    .args(["-c", "while :; do :; done"])
                    .stdout(Stdio::null())
                    .spawn()
                    .expect("hog")
            })
            .collect(),
    );
    let t = Instant::now();
    let mut r = common::start(&mut s).await;
    r.until("slow timed out", |k| {
        matches!(
            k,
            EventKind::JobFinished {
                job,
                failure_class: Some(FailureClass::Timeout),
                ..
            } if job == "slow"
        )
    })
    .await;
    let late = t.elapsed();
    assert!(late < Duration::from_secs(2 + 8), "a 2 s timeout fired after {late:?}");
    let lowered = r
        .until(
            "the limit lowered",
            |k| matches!(k, EventKind::Parallelism { from, limit, .. } if limit < from),
        )
        .await;
    let EventKind::Parallelism { reason, .. } = &lowered.kind else {
        unreachable!()
    };
    assert!(
        reason.contains("CPU pressure") || reason.contains("memory pressure"),
        "{reason}"
    );
    drop(hogs);
    std::fs::write(&go, "").expect("go");
    let sum = r.finished().await;
    assert_eq!(sum.result, RunResult::Failed, "slow timed out; the rest passed");
    assert!(
        sum.jobs
            .iter()
            .filter(|j| j.name.starts_with("wait"))
            .all(|j| j.status == trackside::engine::JobStatus::Succeeded)
    );
}

#[test]
fn a_host_unreachable_from_a_network_namespace_is_classified_network_and_opens_its_breaker() {
    if !root("running trackside in a network namespace of its own (unshare -n)") {
        return;
    }
    let curl = Command::new("curl")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !curl {
        assert!(
            std::env::var("TRACKSIDE_REQUIRE_ROOT").as_deref() != Ok("1"),
            "curl is missing"
        );
        eprintln!("SKIPPED chaos test: curl is missing");
        return;
    }
    let env = Env::new();
    std::fs::create_dir_all(env.state()).expect("state");
    std::fs::write(
        env.state().join("config.yml"),
        "breakers: {failures: 3, window: 60s, cooldown: 1s}\n",
    )
    .expect("config");
    let job = "    retry_count: 1\n    steps: [{script: ['curl -sS --max-time 5 http://10.255.0.1:5000/']}]\n";
    let file = env.file(
        "p.yml",
        format!("name: offline\nretry_policy:\n  backoff: {{initial: 0, jitter: 0}}\njobs:\n  a:\n{job}  b:\n{job}  c:\n{job}"),
    );
    // A namespace with no route anywhere: the host is unreachable.
    let out = Command::new("unshare")
        .arg("-n")
        .arg(env!("CARGO_BIN_EXE_trackside"))
        .args(["run", "--json", "-j", "3", "--no-watch"])
        .arg(&file)
        .env("TRACKSIDE_STATE_DIR", env.state())
        .stdin(Stdio::null())
        .output()
        .expect("unshare trackside");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events: Vec<serde_json::Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let retried: Vec<&serde_json::Value> = events.iter().filter(|e| e["type"] == "job_retrying").collect();
    assert_eq!(retried.len(), 3, "{text}");
    assert!(retried.iter().all(|e| e["failure_class"] == "network"), "{text}");
    let opened = events
        .iter()
        .find(|e| e["type"] == "breaker" && e["phase"] == "open")
        .unwrap_or_else(|| panic!("the breaker opened: {text}"));
    assert_eq!(opened["dependency"], "10.255.0.1:5000");
    assert!(
        events.iter().any(|e| e["type"] == "job_waiting"
            && e["reason"]
                .as_str()
                .is_some_and(|r| r.starts_with("held: circuit open — 10.255.0.1:5000"))),
        "{text}"
    );
    // Each retry went through as a probe, and failed: every job failed.
    let failed = events
        .iter()
        .filter(|e| e["type"] == "job_finished" && e["status"] == "failed")
        .count();
    assert_eq!(failed, 3, "{text}");
}
