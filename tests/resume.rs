//! `trackside resume`: a run whose trackside was killed with SIGKILL goes
//! on under the same id. Killed at several points of a pipeline with
//! artifacts: no job that had passed runs again, interrupted ones do, the
//! artifacts of kept jobs reach the jobs after them, and the record holds
//! both parts.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;

use common::cli::Env;

/// `build` keeps an artifact; `test` waits for its gate file; `deploy`
/// reads the artifact. Each counts its attempts in `counts/`.
fn pipeline(dir: &Path) -> String {
    let c = dir.join("counts");
    let g = dir.join("gates");
    format!(
        "name: resumable\njobs:\n  build:\n    artifacts: {{paths: [out]}}\n    steps: [{{script: ['echo x >> {c}/build', \
         'mkdir -p out && echo built-once > out/build.txt']}}]\n  test:\n    depends_on: [build]\n    \
         steps: [{{script: ['echo x >> {c}/test', 'while [ ! -f {g}/test ]; do sleep 0.02; done', 'cat out/build.txt']}}]\n  \
         deploy:\n    depends_on: [build, test]\n    steps: [{{script: ['echo x >> {c}/deploy', 'cat out/build.txt']}}]\n",
        c = c.display(),
        g = g.display()
    )
}

fn count(dir: &Path, job: &str) -> usize {
    std::fs::read_to_string(dir.join("counts").join(job)).map_or(0, |t| t.lines().count())
}

/// Runs the pipeline, kills trackside with SIGKILL once an event matches
/// `at`, and returns the run's id.
fn run_and_kill(env: &Env, file: &Path, at: &dyn Fn(&serde_json::Value) -> bool) -> String {
    let mut child = env
        .cmd()
        .args(["run", "--json", "--no-watch", "-j", "2"])
        .arg(file)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn trackside");
    let stdout = child.stdout.take().expect("stdout");
    let mut run_id = String::new();
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        let Ok(ev) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if ev["type"] == "run_started" {
            run_id = ev["run_id"].as_str().unwrap_or_default().to_string();
        }
        if at(&ev) {
            break;
        }
    }
    // SIGKILL: no cleanup, no summary.
    let _ = child.kill();
    let _ = child.wait();
    assert!(!run_id.is_empty(), "the run started");
    run_id
}

fn passed_in_record(env: &Env, run_id: &str) -> Vec<String> {
    let events = std::fs::read_to_string(env.state().join("runs").join(run_id).join("events.jsonl")).expect("events");
    let mut passed = Vec::new();
    for l in events.lines() {
        let Ok(ev) = serde_json::from_str::<serde_json::Value>(l) else {
            continue;
        };
        if ev["type"] == "job_finished" && ev["status"] == "succeeded" {
            passed.push(ev["job"].as_str().unwrap_or_default().to_string());
        }
    }
    passed
}

#[test]
fn a_run_killed_at_any_point_is_resumed_without_running_a_passed_job_again() {
    type At = fn(&serde_json::Value) -> bool;
    let points: [(&str, At); 4] = [
        ("build started", |e| e["type"] == "job_started" && e["job"] == "build"),
        ("build passed", |e| e["type"] == "job_finished" && e["job"] == "build"),
        ("test started", |e| e["type"] == "job_started" && e["job"] == "test"),
        ("test passed", |e| e["type"] == "job_finished" && e["job"] == "test"),
    ];
    for (name, at) in points {
        let env = Env::new();
        let dir = env.dir.path();
        for d in ["counts", "gates", "project"] {
            std::fs::create_dir_all(dir.join(d)).expect("mkdir");
        }
        if name == "test passed" {
            std::fs::write(dir.join("gates/test"), "").expect("gate");
        }
        let file = dir.join("project/p.yml");
        std::fs::write(&file, pipeline(dir)).expect("write");
        let run_id = run_and_kill(&env, &file, &at);
        let passed_before = passed_in_record(&env, &run_id);
        let attempts_before: Vec<usize> = ["build", "test", "deploy"].iter().map(|j| count(dir, j)).collect();
        // The killed run's leftovers: `test` may still be waiting for its gate.
        std::fs::write(dir.join("gates/test"), "").expect("gate");

        let out = env.run(&["resume", &run_id[..12], "--headless"]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{name}: {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains(":: resumed after trackside stopped"), "{name}: {text}");
        for (i, job) in ["build", "test", "deploy"].iter().enumerate() {
            if passed_before.iter().any(|p| p == job) {
                assert_eq!(
                    count(dir, job),
                    attempts_before[i],
                    "{name}: {job} passed before: not run again"
                );
                assert!(
                    text.lines().any(|l| l.starts_with(&format!(":: {job} "))
                        && l.ends_with("kept: it passed before trackside stopped")),
                    "{name}: {text}"
                );
            } else {
                assert!(count(dir, job) > attempts_before[i], "{name}: {job} ran again");
            }
        }
        // The kept build's artifact reached the jobs after it.
        assert!(text.contains("deploy > built-once"), "{name}: {text}");
        // One record, both parts, numbered on from the first (log lines,
        // in the logs, take numbers between).
        let events =
            std::fs::read_to_string(env.state().join("runs").join(&run_id).join("events.jsonl")).expect("events");
        let seqs: Vec<u64> = events
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .map(|e| e["seq"].as_u64().unwrap_or(0))
            .collect();
        assert!(seqs.windows(2).all(|w| w[1] > w[0]), "{name}: {seqs:?}");
        assert_eq!(events.matches("\"type\":\"run_started\"").count(), 2, "{name}");
        assert_eq!(events.matches("\"type\":\"run_finished\"").count(), 1, "{name}");
        // Resuming it again: it finished.
        let again = env.run(&["resume", &run_id]);
        assert_eq!(again.status.code(), Some(2), "{name}");
        assert!(String::from_utf8_lossy(&again.stderr).contains("nothing to resume"));
    }
}

#[test]
fn a_running_run_is_not_resumed() {
    let env = Env::new();
    let dir = env.dir.path();
    for d in ["counts", "gates", "project"] {
        std::fs::create_dir_all(dir.join(d)).expect("mkdir");
    }
    let file = dir.join("project/p.yml");
    std::fs::write(&file, pipeline(dir)).expect("write");
    let mut child = env
        .cmd()
        .args(["run", "--json", "--no-watch"])
        .arg(&file)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut run_id = String::new();
    for line in lines.by_ref() {
        let Ok(line) = line else { break };
        let Ok(ev) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if ev["type"] == "run_started" {
            run_id = ev["run_id"].as_str().unwrap_or_default().to_string();
        }
        if ev["type"] == "job_started" && ev["job"] == "test" {
            break;
        }
    }
    let out = env.run(&["resume", &run_id]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is still running"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(dir.join("gates/test"), "").expect("gate");
    for _ in lines {}
    assert!(child.wait().expect("wait").success());
}

/// A pipeline with an artifact and a directory cache and no gate: it runs
/// to its end unless killed.
fn open_pipeline(dir: &Path) -> String {
    let c = dir.join("counts");
    format!(
        "name: resumable\njobs:\n  build:\n    artifacts: {{paths: [out]}}\n    cache: {{key: deps, paths: [.deps/]}}\n    \
         steps: [{{script: ['echo x >> {c}/build', 'mkdir -p .deps out', 'echo dep > .deps/lib', \
         'cat .deps/lib > out/build.txt', 'echo built-once >> out/build.txt']}}]\n  \
         test:\n    depends_on: [build]\n    steps: [{{script: ['echo x >> {c}/test', 'cat out/build.txt', 'sleep 0.2', 'echo tested']}}]\n  \
         lint:\n    steps: [{{script: ['echo x >> {c}/lint', 'sleep 0.1', 'echo linted']}}]\n  \
         deploy:\n    depends_on: [build, test, lint]\n    steps: [{{script: ['echo x >> {c}/deploy', 'cat out/build.txt']}}]\n",
        c = c.display()
    )
}

/// SIGKILL after a random number of events (the seed is fixed so a
/// failure reproduces; TRACKSIDE_CHAOS_SEED=N tries other points), then
/// resume: it completes, no passed job runs again, the artifact reaches
/// the last job, and the store verifies clean.
#[test]
fn a_run_killed_at_random_points_is_resumed_to_its_end_with_nothing_lost() {
    let seed = std::env::var("TRACKSIDE_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x07ac_51de);
    let mut rng = fastrand::Rng::with_seed(seed);
    let jobs = ["build", "test", "lint", "deploy"];
    let setup = |env: &Env| {
        let dir = env.dir.path();
        for d in ["counts", "project"] {
            std::fs::create_dir_all(dir.join(d)).expect("mkdir");
        }
        let file = dir.join("project/p.yml");
        std::fs::write(&file, open_pipeline(dir)).expect("write");
        file
    };
    // How many events a whole run prints.
    let whole = Env::new();
    let file = setup(&whole);
    let out = whole
        .cmd()
        .args(["run", "--json", "--no-watch", "-j", "2"])
        .arg(&file)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let total = String::from_utf8_lossy(&out.stdout).lines().count();
    assert!(total > 10, "{total} events");
    for round in 0..4 {
        let at = rng.usize(1..total);
        let name = format!("seed {seed}, round {round}: killed after event {at} of {total}");
        let env = Env::new();
        let dir = env.dir.path().to_path_buf();
        let file = setup(&env);
        let seen = std::cell::Cell::new(0usize);
        let run_id = run_and_kill(&env, &file, &|_| {
            seen.set(seen.get() + 1);
            seen.get() >= at
        });
        let passed_before = passed_in_record(&env, &run_id);
        let attempts_before: Vec<usize> = jobs.iter().map(|j| count(&dir, j)).collect();
        let events_path = env.state().join("runs").join(&run_id).join("events.jsonl");
        let events = std::fs::read_to_string(&events_path).expect("events");
        let out = env.run(&["resume", &run_id, "--headless"]);
        let text = String::from_utf8_lossy(&out.stdout);
        if events.contains("\"type\":\"run_finished\"") {
            // Killed after its end was written: nothing to resume.
            assert_eq!(out.status.code(), Some(2), "{name}: {text}");
            continue;
        }
        assert_eq!(
            out.status.code(),
            Some(0),
            "{name}: {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for (i, job) in jobs.iter().enumerate() {
            if passed_before.iter().any(|p| p == job) {
                assert_eq!(count(&dir, job), attempts_before[i], "{name}: {job} passed before");
            } else {
                assert!(count(&dir, job) > attempts_before[i], "{name}: {job} ran");
            }
        }
        if !passed_before.iter().any(|p| p == "deploy") {
            assert!(
                text.contains("deploy > dep"),
                "{name}: the artifact reached deploy: {text}"
            );
            assert!(text.contains("deploy > built-once"), "{name}: {text}");
        }
        let verify = env.run(&["store", "verify"]);
        assert_eq!(
            verify.status.code(),
            Some(0),
            "{name}: {}{}",
            String::from_utf8_lossy(&verify.stdout),
            String::from_utf8_lossy(&verify.stderr)
        );
    }
}
