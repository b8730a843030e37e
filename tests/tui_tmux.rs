//! End to end in a real terminal: tmux runs trackside's UI, the test types
//! keys (approve a gate, retry a failed job, cancel a running one, quit) and
//! checks the captured screen and the run's records.
//!
//! Needs tmux (Debian package `tmux`; .ci/run installs it). Without it the
//! test fails under CI=true and is skipped loudly elsewhere.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::tmux::{Tmux, wait_file};

#[test]
fn approve_retry_cancel_and_quit_in_a_real_terminal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let project = dir.path().join("project");
    std::fs::create_dir_all(&project).expect("mkdir");
    let mark = dir.path().join("mark");
    let pipeline = format!(
        "name: e2e\njobs:\n  build:\n    steps: [{{script: echo built}}]\n  flaky:\n    steps:\n      - script: 'if [ ! -e {m} ]; then touch {m}; echo first-failure; exit 1; fi; echo second-pass'\n  slow:\n    steps: [{{script: 'echo slow-start; sleep 300'}}]\n  gate:\n    depends_on: [build]\n    when: manual\n    steps: [{{script: echo deployed-now}}]\n",
        m = mark.display()
    );
    std::fs::write(project.join("pipeline.yml"), &pipeline).expect("write");
    let state = dir.path().join("state");
    let exit_file = dir.path().join("exit");
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_trackside"));
    let command = format!(
        "{} run pipeline.yml --state-dir {} --kill-grace 0.2; echo $? > {}; sleep 60",
        bin.display(),
        state.display(),
        exit_file.display()
    );
    let Some(t) = Tmux::start("steer", &project, &command) else {
        return;
    };

    // The run is up: the gate waits, flaky failed, slow runs.
    t.wait_for(&["trackside", "e2e", "⏸ manual", "✖", "▶"]);

    // Editing the pipeline file: an invalid edit shows a banner with its position...
    let file = project.join("pipeline.yml");
    std::fs::write(&file, pipeline.replace("depends_on: [build]", "depends_on: [biuld]")).expect("write");
    t.wait_for(&[
        "has errors; the run goes on unchanged",
        "pipeline.yml:11:18",
        "unknown job `biuld`",
    ]);
    // ...and a valid one joins the new job to the running DAG.
    std::fs::write(
        &file,
        format!("{pipeline}  extra:\n    steps: [{{script: echo extra-ran}}]\n"),
    )
    .expect("write");
    t.wait_for(&["pipeline file changed: added extra", "extra"]);

    // Approve the gate: it is the last job in level order.
    t.keys(&["G", "a"]);
    t.wait_for(&["Approve `gate`?"]);
    t.keys(&["y"]);
    t.wait_for(&["approved gate"]);

    // Retry the failed job (second in level order).
    t.keys(&["g", "j"]);
    t.wait_for(&["why: step `step-1` exited with 1"]);
    t.keys(&["r"]);
    t.wait_for(&["retrying flaky"]);
    t.wait_for(&["why: passed", "attempt 2/2"]);

    // Cancel the slow job after confirming.
    t.keys(&["j", "c"]);
    t.wait_for(&["Cancel `slow`? (y/n)"]);
    t.keys(&["y"]);
    let s = t.wait_for(&["cancelled", "FAILED"]);
    assert!(s.contains("⊘"), "{s}");

    // Nothing runs any more: q quits at once and the terminal is restored.
    t.keys(&["q"]);
    let code = wait_file(&exit_file);
    assert_eq!(code.trim(), "1", "a cancelled job fails the run");
    let after = t.wait_for(&["JOB", "STATUS", "FAILED"]);
    assert!(!after.contains("Tab pane"), "the UI is gone:\n{after}");

    // The records tell the same story.
    let runs: Vec<_> = std::fs::read_dir(state.join("runs")).expect("runs").flatten().collect();
    assert_eq!(runs.len(), 1);
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(runs[0].path().join("summary.json")).expect("summary"))
            .expect("json");
    let job = |name: &str| {
        summary["jobs"]
            .as_array()
            .and_then(|jobs| jobs.iter().find(|j| j["name"] == name))
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(job("gate")["status"], "succeeded");
    assert_eq!(job("flaky")["status"], "succeeded");
    assert_eq!(job("flaky")["attempts"].as_array().map(Vec::len), Some(2));
    assert_eq!(job("slow")["status"], "cancelled");
    assert_eq!(job("extra")["status"], "succeeded", "the job added by the edit ran");
    assert_eq!(summary["result"], "failed");
}

#[test]
fn sigterm_cancels_the_run_and_restores_the_terminal() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("p.yml"),
        "name: term\njobs:\n  long:\n    steps: [{script: 'echo long-running; sleep 300'}]\n",
    )
    .expect("write");
    let exit_file = dir.path().join("exit");
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_trackside"));
    let command = format!(
        "{} run p.yml --state-dir {} --kill-grace 0.2; echo $? > {}; sleep 60",
        bin.display(),
        dir.path().join("state").display(),
        exit_file.display()
    );
    let Some(t) = Tmux::start("sigterm", dir.path(), &command) else {
        return;
    };
    t.wait_for(&["term", "▶"]);
    // The trackside on the terminal (not the run's engine process it
    // started, whose command line ends with a flag of its own).
    let pid = Command::new("pgrep")
        .args([
            "-n",
            "-f",
            &format!("^{} run p.yml --state-dir [^ ]+ --kill-grace 0.2$", bin.display()),
        ])
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse::<i32>().ok())
        .expect("trackside's pid");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    assert_eq!(wait_file(&exit_file).trim(), "130");
    let after = t.wait_for(&["CANCELLED"]);
    assert!(!after.contains("Tab pane"), "the UI is gone:\n{after}");
}

/// A panic anywhere (here: in a task, triggered by a debug-build-only
/// variable) gives the terminal back: no alternate screen, echo and line
/// editing on, the cursor shown, the message readable, the run cancelled.
#[test]
fn a_panic_restores_the_terminal() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("p.yml"),
        "name: crash\njobs:\n  long:\n    steps: [{script: 'echo long-running; sleep 3171'}]\n",
    )
    .expect("write");
    let (exit_file, stty_file) = (dir.path().join("exit"), dir.path().join("stty"));
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_trackside"));
    let command = format!(
        "echo before-trackside; RUST_BACKTRACE=0 TRACKSIDE_TEST_PANIC=1 {} run p.yml --state-dir {} --kill-grace 0.2; echo $? > {}; stty -a > {}; sleep 60",
        bin.display(),
        dir.path().join("state").display(),
        exit_file.display(),
        stty_file.display()
    );
    let Some(t) = Tmux::start("panic", dir.path(), &command) else {
        return;
    };
    assert_eq!(wait_file(&exit_file).trim(), "2");
    let stty = wait_file(&stty_file);
    for mode in ["echo", "icanon", "isig"] {
        assert!(
            stty.split_whitespace().any(|w| w == mode),
            "`{mode}` is back on:\n{stty}"
        );
    }
    let after = t.wait_for(&["deliberate panic in a task", "the terminal was restored"]);
    assert!(
        after.contains("before-trackside"),
        "the normal screen is back:\n{after}"
    );
    assert!(!after.contains("Tab pane"), "the UI is gone:\n{after}");
    assert!(
        std::fs::read_dir(dir.path().join("state/runs"))
            .expect("runs")
            .flatten()
            .any(|r| r.path().join("summary.json").exists()),
        "the run was ended and recorded"
    );
    let orphans = Command::new("pgrep")
        .args(["-f", "sleep 3171"])
        .output()
        .expect("pgrep");
    assert!(
        orphans.stdout.is_empty(),
        "the job's processes were stopped: {}",
        String::from_utf8_lossy(&orphans.stdout)
    );
}

#[test]
fn a_canary_gate_is_promoted_by_keystroke() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_trackside"));
    let pipeline = |version: &str| {
        format!(
            "name: canary-e2e\njobs:\n  web:\n    deploy:\n      service: web\n      listen: 127.0.0.1:0\n      version: {version}\n      run: \"{bin} demo-service --port ${{PORT}} --version {version} --latency-ms 2\"\n      health: {{http: /healthz, interval: 0.1, success_threshold: 2}}\n      traffic: {{rps: 50}}\n      abort_delay: 0\n      strategy:\n        canary:\n          steps:\n            - set_weight: 20\n            - pause: {{}}\n            - set_weight: 100\n",
            bin = bin.display()
        )
    };
    let state = dir.path().join("state");
    std::fs::write(dir.path().join("v1.yml"), pipeline("v1")).expect("write");
    std::fs::write(dir.path().join("v2.yml"), pipeline("v2")).expect("write");
    let first = Command::new(&bin)
        .args(["run", "v1.yml", "--headless", "--state-dir"])
        .arg(&state)
        .current_dir(dir.path())
        .output()
        .expect("first deploy");
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stdout));
    let exit_file = dir.path().join("exit");
    let command = format!(
        "{} run v2.yml --state-dir {}; echo $? > {}; sleep 60",
        bin.display(),
        state.display(),
        exit_file.display()
    );
    let Some(t) = Tmux::start("canary", dir.path(), &command) else {
        return;
    };
    // The rollout waits at its gate with the numbers in front of us.
    t.wait_for(&[
        "rollout: web v1 -> v2",
        "gate",
        "canary weight 20.0%",
        "stable:",
        "canary:",
    ]);
    // Someone in another shell holds it; the UI shows it, `H` resumes it.
    let held = Command::new(&bin)
        .args(["rollout", "web", "pause", "--state-dir"])
        .arg(&state)
        .output()
        .expect("trackside rollout");
    assert!(held.status.success(), "{}", String::from_utf8_lossy(&held.stderr));
    assert!(String::from_utf8_lossy(&held.stdout).contains("paused: timers frozen"));
    t.wait_for(&["held", "paused by hand"]);
    t.keys(&["H"]);
    t.wait_for(&["resumed", "manual gate: promote to continue"]);
    t.keys(&["P"]);
    t.wait_for(&["completed", "canary weight 100.0%"]);
    t.wait_for(&["PASSED"]);
    t.keys(&["q"]);
    assert_eq!(wait_file(&exit_file).trim(), "0");
    let remembered = std::fs::read_to_string(state.join("services/web.json")).expect("revision");
    assert!(remembered.contains("\"v2\""), "{remembered}");
}

/// A log far longer than the in-memory window: `g` shows its first line
/// (read back from the run's log file off the UI's task), a search finds a
/// line only on disk, and the mouse wheel scrolls the log.
#[test]
fn a_long_log_is_read_back_searched_and_scrolled_in_a_real_terminal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let project = dir.path().join("project");
    std::fs::create_dir_all(&project).expect("mkdir");
    std::fs::write(
        project.join("pipeline.yml"),
        "name: long\njobs:\n  talk:\n    steps: [{script: \"seq -f 'talk line %.0f' 0 29999\"}]\n",
    )
    .expect("write");
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_trackside"));
    let command = format!(
        "{} run pipeline.yml --state-dir {}; sleep 60",
        bin.display(),
        dir.path().join("state").display(),
    );
    let Some(t) = Tmux::start("longlog", &project, &command) else {
        return;
    };
    t.wait_for(&["talk line 29999", "PASSED"]);
    t.keys(&["Enter", "g"]);
    t.wait_for(&["talk line 0 ", "talk line 5 "]);
    // Line 7,777 is long gone from memory: the search reads the disk.
    t.keys(&["/"]);
    t.literal("talk line 7777");
    t.keys(&["Enter"]);
    let s = t.wait_for(&["match 1/1", "│talk line 7777 "]);
    assert!(!s.contains("talk line 0 "), "{s}");
    // The wheel over the log (an SGR mouse report, as a terminal sends it)
    // scrolls three rows down: line 7798 comes into view at the bottom
    // (the 19 rows showed 7777-7795), and 7777 leaves the top.
    t.literal("\x1b[<65;70;12M");
    let s = t.wait_for(&["│talk line 7798 "]);
    assert!(!s.contains("│talk line 7777 "), "the match scrolled off the top: {s}");
    assert!(s.contains("│talk line 7780 "), "{s}");
    t.keys(&["q"]);
    t.wait_for(&["JOB", "talk"]);
}
