//! Runs sharing one state directory share the machine: two real trackside
//! processes side by side. A resource group holds across them, and a
//! high-priority run with `--preempt` stops a lower run's interruptible job,
//! which goes back to its queue and passes later.

mod common;

use std::path::{Path, PathBuf};

use common::cli::{Env, Live};
use serde_json::Value;

/// A run with `-j 1` and `extra` flags, in the background.
fn start(env: &Env, file: &Path, extra: &[&str]) -> Live {
    let mut args = vec!["-j", "1"];
    args.extend_from_slice(extra);
    Live::start(env, file, &args)
}

fn job_is(e: &Value, kind: &str, job: &str) -> bool {
    e["type"] == kind && e["job"] == job
}

/// A job that logs its start and end to `log` and, when `gate` is given,
/// waits for that file first.
fn job(name: &str, extra: &str, log: &Path, gate: Option<&Path>) -> String {
    let wait = gate.map_or(String::new(), |g| {
        format!(", 'while [ ! -f {} ]; do sleep 0.02; done'", g.display())
    });
    format!(
        "  {name}:\n{extra}    steps: [{{script: ['echo start {name} >> {log}'{wait}, 'echo end {name} >> {log}']}}]\n",
        log = log.display()
    )
}

/// Two pipelines whose jobs share `resource_group: production`: `deploy`
/// (waiting for the gate file) and `rollout`. Returns the log, the gate
/// and the two files.
fn two_deploys(env: &Env) -> (PathBuf, PathBuf, PathBuf, PathBuf) {
    let log = env.dir.path().join("log");
    let gate = env.dir.path().join("gate");
    let first = env.file(
        "first.yml",
        format!(
            "name: first\njobs:\n{}",
            job("deploy", "    resource_group: production\n", &log, Some(&gate))
        ),
    );
    let second = env.file(
        "second.yml",
        format!(
            "name: second\njobs:\n{}",
            job("rollout", "    resource_group: production\n", &log, None)
        ),
    );
    (log, gate, first, second)
}

#[test]
fn a_resource_group_holds_across_runs_on_the_machine() {
    let env = Env::new();
    let (log, gate, first, second) = two_deploys(&env);
    let mut a = start(&env, &first, &[]);
    let a_id = a.run_id();
    a.wait_for("deploy's start", |e| job_is(e, "job_started", "deploy"));
    let mut b = start(&env, &second, &[]);
    let waiting = b.wait_for("rollout waiting", |e| job_is(e, "job_waiting", "rollout"));
    assert_eq!(
        waiting["reason"],
        format!("waiting for resource group `production`, held by `deploy` of run {a_id}")
    );
    std::fs::write(&gate, "go").expect("gate");
    let (a_code, _) = a.finish();
    let (b_code, _) = b.finish();
    assert_eq!((a_code, b_code), (0, 0));
    let order = std::fs::read_to_string(&log).expect("log");
    assert_eq!(
        order.lines().collect::<Vec<_>>(),
        ["start deploy", "end deploy", "start rollout", "end rollout"],
        "the group's jobs never overlap"
    );
    // Both runs are gone from the machine's table.
    let table = trackside::store::slots::Slots::open(&env.state())
        .and_then(|mut s| s.table())
        .expect("table");
    assert!(table.runs.is_empty() && table.holds.is_empty(), "{table:?}");
}

#[test]
fn a_high_priority_run_preempts_an_interruptible_job_which_runs_again_later() {
    let env = Env::new();
    let log = env.dir.path().join("log");
    let gate = env.dir.path().join("gate");
    // Each job asks for more CPUs than there are: it holds the whole machine.
    let whole = "    resources: {cpu: 1024}\n";
    let low = env.file(
        "low.yml",
        format!(
            "name: low\njobs:\n{}",
            job("suite", &format!("{whole}    interruptible: true\n"), &log, Some(&gate))
        ),
    );
    let high = env.file(
        "high.yml",
        format!("name: hotfix\njobs:\n{}", job("hotfix", whole, &log, None)),
    );
    let mut l = start(&env, &low, &["--priority", "low"]);
    let l_id = l.run_id();
    l.wait_for("suite's start", |e| job_is(e, "job_started", "suite"));
    let mut h = start(&env, &high, &["--priority", "high", "--preempt"]);
    let waiting = h.wait_for("hotfix waiting", |e| job_is(e, "job_waiting", "hotfix"));
    let reason = waiting["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("waiting for CPU") && reason.ends_with(&format!("preempting `suite` of run {l_id}")),
        "{reason}"
    );
    let (h_code, h_events) = h.finish();
    assert_eq!(h_code, 0, "{h_events:#?}");
    let h_id = h_events
        .iter()
        .find(|e| e["type"] == "run_started")
        .and_then(|e| e["run_id"].as_str())
        .unwrap_or_default()
        .to_string();
    let preempted = l.wait_for("suite preempted", |e| job_is(e, "job_preempted", "suite"));
    assert_eq!(preempted["attempt"], 1);
    assert_eq!(preempted["by"], h_id.as_str());
    std::fs::write(&gate, "go").expect("gate");
    let (l_code, l_events) = l.finish();
    assert_eq!(l_code, 0, "{l_events:#?}");
    let passed = l_events
        .iter()
        .find(|e| job_is(e, "job_finished", "suite"))
        .expect("suite finished");
    assert_eq!(passed["status"], "succeeded");
    assert_eq!(passed["attempt"], 2, "the preempted attempt was not its last");
    assert_eq!(passed["flaky"], false, "a preemption is not a flake");
    let order = std::fs::read_to_string(&log).expect("log");
    assert_eq!(
        order.lines().collect::<Vec<_>>(),
        ["start suite", "start hotfix", "end hotfix", "start suite", "end suite"],
        "the hotfix ran while the suite was stopped"
    );
    // History keeps the stopped attempt as preempted, not failed.
    let out = env.run(&["history", "suite", "--format", "json"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("\"preempted\""), "{text}");
    assert!(!text.contains("\"failed\""), "{text}");
}

#[test]
fn a_killed_runs_hold_is_reclaimed_by_the_next_run() {
    let env = Env::new();
    let (_, gate, first, second) = two_deploys(&env);
    let mut a = start(&env, &first, &[]);
    a.wait_for("deploy's start", |e| job_is(e, "job_started", "deploy"));
    // kill -9: no clean-up, its row and its hold stay in the table.
    let _ = a.child.kill();
    let _ = a.child.wait();
    let mut b = start(&env, &second, &[]);
    b.wait_for("rollout's start", |e| job_is(e, "job_started", "rollout"));
    assert!(
        !b.seen.iter().any(|e| job_is(e, "job_waiting", "rollout")),
        "the dead run's group was free at once: {:#?}",
        b.seen
    );
    // The dead run's job process is let go of too.
    std::fs::write(&gate, "go").expect("gate");
    let (code, events) = b.finish();
    assert_eq!(code, 0, "{events:#?}");
}
