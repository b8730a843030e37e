//! `trackside attach` end to end at 80x24: a headless run in one window,
//! its UI attached in a second, a read-only one in a third; a gate approved
//! from the attached UI and seen by all; an attached client killed with
//! SIGKILL mid-stream, the run unaffected; the starting UI detached and the
//! run attached again.
//!
//! Needs tmux (Debian package `tmux`; .ci/run installs it). Without it the
//! tests fail under CI=true and are skipped loudly elsewhere.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::tmux::{Tmux, wait_file};

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_trackside"))
}

/// `trackside ARGS` with the test's state folder, its exit code written to
/// `exit` when it ends (the window then stays, for its last screen).
fn command(state: &Path, args: &str, exit: &Path) -> String {
    format!(
        "{} --state-dir {} {args}; echo $? > {}; sleep 120",
        bin().display(),
        state.display(),
        exit.display()
    )
}

// chatty prints 20 lines a second: a stream to follow, slow enough that
// the gate's line stays on the 24-line screen for a second.
const PIPELINE: &str = "name: attached\njobs:\n  build:\n    steps: [{name: compile, script: ['echo compiled-ok']}]\n  chatty:\n    steps: [{name: talk, script: ['i=0; while [ -e go ]; do i=$((i+1)); echo chat-$i; sleep 0.05; done; echo chat-done']}]\n  deploy:\n    depends_on: [build]\n    when: manual\n    steps: [{name: ship, script: ['echo shipped-it']}]\n";

#[test]
fn a_gate_approved_from_an_attached_ui_is_seen_by_all() {
    let dir = tempfile::tempdir().expect("tempdir");
    let project = dir.path().join("project");
    std::fs::create_dir_all(&project).expect("mkdir");
    std::fs::write(project.join("pipeline.yml"), PIPELINE).expect("write");
    // The chatty job talks until this file goes away.
    std::fs::write(project.join("go"), "").expect("write");
    let state = dir.path().join("state");
    let (run_exit, kill_exit) = (dir.path().join("run-exit"), dir.path().join("killed-exit"));
    let run = command(
        &state,
        "run pipeline.yml --headless --wait-approval --no-watch --in-place",
        &run_exit,
    );
    let Some(t) = Tmux::start_sized("attach", &project, &run, (80, 24)) else {
        return;
    };
    t.wait_for(&["deploy", "trackside approve"]);

    // A client streaming the chatty job, killed with SIGKILL mid-stream.
    let streamer = t.window("stream", &project, &command(&state, "attach --headless", &kill_exit));
    t.wait_in(&streamer, &["chat-"]);
    let pid = Command::new("pgrep")
        .args([
            "-n",
            "-f",
            &format!("{} --state-dir {} attach --headless", bin().display(), state.display()),
        ])
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse::<i32>().ok())
        .expect("the streaming client's pid");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).expect("SIGKILL");
    assert_eq!(wait_file(&kill_exit).trim(), "137");

    // The UI attached, and a read-only one beside it.
    let ui = t.window("ui", &project, &command(&state, "attach", &dir.path().join("ui-exit")));
    t.wait_in(&ui, &["attached", "deploy", "⏸ manual"]);
    let watcher = t.window(
        "ro",
        &project,
        &command(&state, "attach --read-only", &dir.path().join("ro-exit")),
    );
    t.wait_in(&watcher, &["attached", "deploy", "⏸ manual"]);
    // The watcher's keys steer nothing, and say why.
    t.keys_to(&watcher, &["G", "a"]);
    t.wait_in(&watcher, &["Approve `deploy`?"]);
    t.keys_to(&watcher, &["y"]);
    t.wait_in(&watcher, &["read-only"]);

    // Approved from the attached UI (deploy is last in level order).
    t.keys_to(&ui, &["G", "a"]);
    t.wait_in(&ui, &["Approve `deploy`?"]);
    t.keys_to(&ui, &["y"]);
    t.wait_in(&ui, &["approved deploy"]);
    // Everyone sees it run: the watcher's DAG, the run's own output (with who).
    t.wait_in(&watcher, &["deploy", "✔"]);
    t.wait_for(&["approve deploy (by ", "shipped-it"]);

    // The run was unaffected by the killed client: the chatty job ends when
    // told, and the run passes.
    std::fs::remove_file(project.join("go")).expect("rm");
    assert_eq!(wait_file(&run_exit).trim(), "0");
    t.wait_for(&["PASSED"]);
    // Attached UIs show the end; leaving one says so.
    t.wait_in(&watcher, &["PASSED"]);
    t.keys_to(&watcher, &["q"]);
    assert_eq!(wait_file(&dir.path().join("ro-exit")).trim(), "0");
    // The socket is gone with the run.
    let runs: Vec<_> = std::fs::read_dir(state.join("runs")).expect("runs").flatten().collect();
    assert_eq!(runs.len(), 1);
    assert!(!runs[0].path().join("control.sock").exists());
    let events = std::fs::read_to_string(runs[0].path().join("events.jsonl")).expect("events");
    assert_eq!(
        events.matches(r#""type":"steered","what":"approve deploy""#).count(),
        1,
        "applied once, recorded with who: {events}"
    );
}

#[test]
fn the_starting_ui_detaches_and_the_run_is_attached_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let project = dir.path().join("project");
    std::fs::create_dir_all(&project).expect("mkdir");
    std::fs::write(
        project.join("pipeline.yml"),
        PIPELINE.replace("while [ -e go ]", "while false"),
    )
    .expect("write");
    let state = dir.path().join("state");
    let first_exit = dir.path().join("first-exit");
    let run = command(&state, "run pipeline.yml --no-watch", &first_exit);
    let Some(t) = Tmux::start_sized("detach", &project, &run, (80, 24)) else {
        return;
    };
    t.wait_for(&["deploy", "⏸ manual"]);
    t.keys(&["d"]);
    assert_eq!(wait_file(&first_exit).trim(), "0");
    let said = t.wait_for(&["detached: run", "goes on in the background"]);
    assert!(!said.contains("Tab pane"), "the UI is gone:\n{said}");

    // Still running, listed as attachable.
    let runs = Command::new(bin())
        .args(["--state-dir", &state.display().to_string(), "runs"])
        .output()
        .expect("runs");
    let listed = String::from_utf8_lossy(&runs.stdout);
    assert!(listed.contains("running (trackside attach)"), "{listed}");

    // Back again, from another terminal: approve, and the run ends.
    let again_exit = dir.path().join("again-exit");
    let again = t.window("again", &project, &command(&state, "attach", &again_exit));
    t.wait_in(&again, &["deploy", "⏸ manual"]);
    t.keys_to(&again, &["G", "a"]);
    t.wait_in(&again, &["Approve `deploy`?"]);
    t.keys_to(&again, &["y"]);
    t.wait_in(&again, &["PASSED"]);
    t.keys_to(&again, &["q"]);
    assert_eq!(wait_file(&again_exit).trim(), "0");
    let out = t.wait_in(&again, &["JOB", "STATUS", "PASSED"]);
    assert!(out.contains("deploy"), "{out}");
}
