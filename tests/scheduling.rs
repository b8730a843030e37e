//! Scheduling as a user meets it: a job too large for the machine is told
//! at once, and what a job used in past runs is what it holds in the next.

mod common;

use common::cli::Env;
use trackside::engine::EventKind;

fn events(out: &std::process::Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[test]
fn a_job_larger_than_the_machine_fails_at_once_as_unschedulable() {
    let env = Env::new();
    let file = env.file(
        "p.yml",
        "name: big\njobs:\n  huge:\n    resources: {memory: 1000000GiB}\n    steps: [{script: ['echo never']}]\n  \
         after:\n    depends_on: [huge]\n    steps: [{script: ['echo never']}]\n  small:\n    steps: [{script: ['echo ran']}]\n",
    );
    let out = env.run(&["run", file.to_str().expect("utf-8"), "--headless"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("FAIL (infra) in 0.0s: unschedulable: needs 1000000.0 GiB of memory, this machine has "),
        "{text}"
    );
    assert!(text.contains("safety margin)"), "{text}");
    assert!(text.contains("small > ran"), "the others still run: {text}");
    assert!(!text.contains("never"), "{text}");
}

#[test]
fn what_a_job_used_in_past_runs_is_what_it_holds_and_the_json_says_so() {
    let env = Env::new();
    // `hog` holds 256 MiB and spins a while; `idle` holds nothing.
    let file = env.file(
        "p.yml",
        "name: learn\njobs:\n  hog:\n    steps: [{script: ['dd if=/dev/zero of=/dev/null bs=400M count=2 2>/dev/null', \
         'i=0; while [ $i -lt 100000 ]; do i=$((i+1)); done']}]\n  idle:\n    steps: [{script: ['true']}]\n",
    );
    let file = file.to_str().expect("utf-8");
    // The first runs hold the default: one CPU and 256 MiB each.
    let first = env.run(&["run", file, "--json", "-j", "2"]);
    assert_eq!(first.status.code(), Some(0));
    let held = |evs: &[serde_json::Value]| -> Vec<u64> {
        evs.iter()
            .filter(|e| e["type"] == "resources")
            .filter_map(|e| e["memory"].as_u64())
            .collect()
    };
    let first = events(&first);
    assert_eq!(held(&first).iter().max(), Some(&(512 << 20)), "two jobs at the default");
    let budget = first
        .iter()
        .find(|e| e["type"] == "resources")
        .and_then(|e| e["memory_budget"].as_u64())
        .expect("a budget");
    assert!(budget > 0);
    for _ in 0..2 {
        assert_eq!(env.run(&["run", file, "--headless"]).status.code(), Some(0));
    }
    // History now has three attempts of each: `hog`'s peak and CPU time.
    let rows = env.run(&["history", "hog", "--format", "json"]);
    let rows: serde_json::Value = serde_json::from_slice(&rows.stdout).expect("json");
    let rows = rows.as_array().expect("rows");
    assert_eq!(rows.len(), 3);
    assert!(
        rows.iter()
            .all(|r| r["peak_memory"].as_u64().is_some_and(|b| b >= 400 << 20)),
        "{rows:?}"
    );
    assert!(
        rows.iter().all(|r| r["cpu_ms"].as_u64().is_some_and(|ms| ms > 0)),
        "{rows:?}"
    );
    // The fourth run: `hog` holds what it used, its 400 MiB peak or more
    // (not the default 256 MiB); `idle` holds the default still (`true`
    // is too small to be measured beside trackside's own size).
    let fourth = env.run(&["run", file, "--json", "-j", "1"]);
    assert_eq!(fourth.status.code(), Some(0));
    let fourth = events(&fourth);
    let after_start = |job: &str| {
        let at = fourth
            .iter()
            .position(|e| e["type"] == "job_started" && e["job"] == job)
            .expect("started");
        fourth[at..]
            .iter()
            .find(|e| e["type"] == "resources")
            .and_then(|e| e["memory"].as_u64())
            .expect("a resources event after the start")
    };
    assert!(after_start("hog") >= 400 << 20, "{}", after_start("hog"));
    assert_eq!(after_start("idle"), 256 << 20);
}

#[test]
fn failures_on_one_host_open_its_breaker_hold_the_retries_and_a_passing_probe_closes_it() {
    let env = Env::new();
    std::fs::create_dir_all(env.state()).expect("state");
    std::fs::write(
        env.state().join("config.yml"),
        "breakers: {failures: 2, window: 60s, cooldown: 1s}\n",
    )
    .expect("config");
    // Each attempt counts itself; the registry "comes back" at the third.
    let count = env.dir.path().join("attempts");
    let script = format!(
        "echo x >> {c}; if [ $(wc -l < {c}) -ge 3 ]; then echo pushed; else \
         echo \"dial tcp registry.test:5000: connect: connection refused\" >&2; exit 1; fi",
        c = count.display()
    );
    let file = env.file(
        "p.yml",
        format!(
            "name: push\nretry_policy:\n  backoff: {{initial: 0, jitter: 0}}\njobs:\n  a:\n    retry_count: 1\n    \
             steps: [{{script: ['{script}']}}]\n  b:\n    retry_count: 1\n    steps: [{{script: ['{script}']}}]\n"
        ),
    );
    let out = env.run(&["run", file.to_str().expect("utf-8"), "--json", "-j", "2"]);
    let evs = events(&out);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
    let phases: Vec<(String, String)> = evs
        .iter()
        .filter(|e| e["type"] == "breaker")
        .map(|e| {
            (
                e["dependency"].as_str().unwrap_or("").to_string(),
                e["phase"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let dep = "registry.test:5000".to_string();
    assert_eq!(
        phases,
        [
            (dep.clone(), "open".to_string()),
            (dep.clone(), "half_open".to_string()),
            (dep.clone(), "closed".to_string())
        ]
    );
    // A retry was held while it was open, and said so.
    assert!(
        evs.iter().any(|e| e["type"] == "job_waiting"
            && e["reason"]
                .as_str()
                .is_some_and(|r| r.starts_with("held: circuit open — registry.test:5000"))),
        "{evs:?}"
    );
    // Four attempts in all: two failed, the probe passed, then the other.
    let attempts = std::fs::read_to_string(&count).expect("count").lines().count();
    assert_eq!(attempts, 4);
}

/// `-j auto` under memory pressure: a stand-in kernel writes PSI files in
/// which memory stalls half of each second; the limit is halved at once,
/// no job starts while it lasts, and none is killed. When the stalls stop,
/// jobs start again and the run passes.
#[tokio::test]
async fn memory_pressure_halves_auto_parallelism_and_stops_starts_until_it_passes() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let psi = tempfile::tempdir().expect("tempdir");
    let write = |dir: &std::path::Path, memory_us: u64| {
        for (name, total) in [("cpu", 0), ("memory", memory_us), ("io", 0)] {
            let text = format!("some avg10=0.00 avg60=0.00 avg300=0.00 total={total}\nfull total=0\n");
            std::fs::write(dir.join(name), text).expect("write");
        }
    };
    write(psi.path(), 0);
    let go = psi.path().join("go");
    let job = format!(
        "steps: [{{script: ['while [ ! -f {} ]; do sleep 0.05; done']}}]",
        go.display()
    );
    let jobs: String = (1..=4).map(|i| format!("  j{i}:\n    {job}\n")).collect();
    let mut s = common::setup(&format!("name: auto\njobs:\n{jobs}"));
    s.cfg.auto_parallel = true;
    s.cfg.pressure_files = Some(psi.path().to_path_buf());
    let mut r = common::start(&mut s).await;
    // Memory stalls half of every second from now on.
    let pressing = std::sync::Arc::new(AtomicBool::new(true));
    let writer = {
        let (dir, pressing) = (psi.path().to_path_buf(), pressing.clone());
        tokio::spawn(async move {
            let start = std::time::Instant::now();
            let mut total = 0;
            while pressing.load(Ordering::Relaxed) {
                total = u64::try_from(start.elapsed().as_micros() / 2).unwrap_or(u64::MAX);
                write(&dir, total);
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            total
        })
    };
    let halved = r
        .until("the limit halved", |k| {
            matches!(k, EventKind::Parallelism { admit: false, .. })
        })
        .await;
    let EventKind::Parallelism {
        from, limit, reason, ..
    } = &halved.kind
    else {
        unreachable!()
    };
    assert_eq!(*limit, (*from / 2).max(1), "{reason}");
    assert!(reason.starts_with("memory pressure: "), "{reason}");
    let started_before = r
        .seen
        .iter()
        .filter(|e| matches!(e.kind, EventKind::JobStarted { .. }))
        .count();
    // The stalls stop; the limit lets jobs start again.
    pressing.store(false, Ordering::Relaxed);
    let last = writer.await.expect("writer");
    write(psi.path(), last);
    let passed = r
        .until("pressure passed", |k| {
            matches!(k, EventKind::Parallelism { admit: true, .. })
        })
        .await;
    let started_while_pressed = r
        .seen
        .iter()
        .take_while(|e| !std::sync::Arc::ptr_eq(e, &passed))
        .filter(|e| matches!(e.kind, EventKind::JobStarted { .. }))
        .count();
    assert_eq!(
        started_while_pressed, started_before,
        "no job started under memory pressure"
    );
    std::fs::write(&go, "").expect("go");
    let sum = r.finished().await;
    assert_eq!(sum.result, trackside::engine::RunResult::Passed, "no job was killed");
}

#[test]
fn a_jobs_value_that_is_neither_a_number_nor_auto_is_refused_with_what_to_give() {
    let env = Env::new();
    let file = env.file("p.yml", "name: j\njobs:\n  a:\n    steps: [{script: ['true']}]\n");
    for bad in ["0", "foo", "2.5"] {
        let out = env.run(&["run", file.to_str().expect("utf-8"), "-j", bad, "--headless"]);
        assert_eq!(out.status.code(), Some(2), "-j {bad}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("`{bad}` is not a number of jobs from 1 up, nor `auto`")),
            "{err}"
        );
    }
    let ok = env.run(&["run", file.to_str().expect("utf-8"), "-j", "auto", "--headless"]);
    assert_eq!(ok.status.code(), Some(0));
}
