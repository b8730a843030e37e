//! The engine driven through its handle, with real shell jobs.

mod common;

use common::*;
use trackside::engine::{EventKind, JobStatus, RunResult, Verdict};
use trackside::pipeline::FailureClass;

fn job<'a>(s: &'a trackside::engine::RunSummary, name: &str) -> &'a trackside::engine::event::JobSummary {
    s.jobs.iter().find(|j| j.name == name).expect("job in summary")
}

#[tokio::test]
async fn jobs_run_in_dependency_order_and_the_run_is_recorded() {
    let mut s = setup(
        "name: t\njobs:\n  a:\n    steps:\n      - name: one\n        script: [echo from-a, echo err-a >&2]\n  b:\n    depends_on: [a]\n    steps:\n      - script: echo from-b\n",
    );
    let mut r = start(&mut s).await;
    let sum = r.finished().await;
    assert_eq!(sum.result, RunResult::Passed);
    assert!(r.lines("a").contains(&"from-a".to_string()));
    assert!(r.lines("a").contains(&"err-a".to_string()));
    let a_done = r
        .seen
        .iter()
        .position(|e| matches!(&e.kind, EventKind::JobFinished { job, .. } if job == "a"));
    let b_start = r
        .seen
        .iter()
        .position(|e| matches!(&e.kind, EventKind::JobStarted { job, .. } if job == "b"));
    assert!(a_done < b_start, "b starts after a finished");

    let run_dir = r.handle.run_dir().to_path_buf();
    let events = trackside::store::read_events(&run_dir).expect("events.jsonl");
    assert!(matches!(
        events.first().map(|e| &e.kind),
        Some(EventKind::RunStarted { .. })
    ));
    assert!(matches!(
        events.last().map(|e| &e.kind),
        Some(EventKind::RunFinished { .. })
    ));
    let (attempt, log) = trackside::store::read_log(&run_dir, "a", None).expect("log");
    assert_eq!(attempt, 1);
    let texts: Vec<&str> = log
        .iter()
        .filter(|e| e.stream != "step")
        .map(|e| e.text.as_str())
        .collect();
    assert!(texts.contains(&"from-a") && texts.contains(&"err-a"), "{texts:?}");
    assert!(log.iter().any(|e| e.stream == "step" && e.step == "one"));
    assert!(run_dir.join("summary.json").exists());
    // Written beside the run's start, whole by its end.
    let resolved = std::fs::read_to_string(run_dir.join("pipeline.json")).expect("resolved pipeline");
    let resolved: serde_json::Value = serde_json::from_str(&resolved).expect("JSON");
    assert_eq!(resolved["jobs"][0]["name"], "a", "{resolved}");
    assert!(!run_dir.join(".pipeline.json.tmp").exists());
    // Every file of the record is its user's alone.
    for f in [
        "meta.json",
        "pipeline.json",
        "events.jsonl",
        "summary.json",
        "logs/a.1.log",
    ] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(run_dir.join(f)).expect(f).permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }
}

#[tokio::test]
async fn each_job_gets_a_fresh_copy_of_the_project() {
    let mut s = setup(
        "name: t\njobs:\n  a:\n    steps:\n      - script: [test -f README, echo junk > leftover]\n  b:\n    depends_on: [a]\n    steps:\n      - script: ['test ! -e leftover', 'test -f README', echo clean]\n",
    );
    let mut r = start(&mut s).await;
    let sum = r.finished().await;
    assert_eq!(sum.result, RunResult::Passed, "{:?}", r.lines("b"));
    assert!(
        !s.project().join("leftover").exists(),
        "the project itself is untouched"
    );
}

#[tokio::test]
async fn a_transient_failure_is_retried_and_reported_flaky() {
    let mut s = setup(
        "name: t\nretry_policy:\n  backoff: {initial: 0.01, jitter: 0}\njobs:\n  net:\n    retry_count: 2\n    steps:\n      - script: |\n          if [ \"$CI_JOB_ATTEMPT\" = 1 ]; then echo 'curl: (6) Could not resolve host: x'; exit 6; fi\n          echo ok\n",
    );
    let mut r = start(&mut s).await;
    let sum = r.finished().await;
    let j = job(&sum, "net");
    assert_eq!(j.verdict, Verdict::Flaky);
    assert_eq!(j.attempts.len(), 2);
    assert_eq!(j.attempts[0].failure_class, Some(FailureClass::Network));
    assert_eq!(j.attempts[0].exit_code, Some(6));
    assert!(j.attempts[0].retry_delay_ms.is_some());
    assert!(
        r.seen
            .iter()
            .any(|e| matches!(&e.kind, EventKind::JobRetrying { attempt: 2, .. }))
    );
    assert_eq!(sum.result, RunResult::Passed);
}

#[tokio::test]
async fn failure_classes_come_from_exit_status_and_log_patterns() {
    let mut s = setup(
        "name: t\njobs:\n  disk:\n    steps:\n      - script: ['echo \"write: No space left on device\" >&2', exit 1]\n  oom:\n    steps:\n      - script: exit 137\n  plain:\n    steps:\n      - script: exit 3\n",
    );
    let mut r = start(&mut s).await;
    let sum = r.finished().await;
    assert_eq!(job(&sum, "disk").failure_class, Some(FailureClass::DiskFull));
    assert_eq!(job(&sum, "oom").failure_class, Some(FailureClass::Oom));
    assert_eq!(job(&sum, "plain").failure_class, Some(FailureClass::Script));
    assert_eq!(job(&sum, "plain").attempts[0].exit_code, Some(3));
    assert_eq!(sum.result, RunResult::Failed);
}

#[tokio::test]
async fn failure_blocks_dependents_but_not_independent_jobs() {
    let mut s = setup(
        "name: t\njobs:\n  bad:\n    steps: [{script: exit 1}]\n  mid:\n    depends_on: [bad]\n    steps: [{script: 'true'}]\n  leaf:\n    depends_on: [mid]\n    steps: [{script: 'true'}]\n  other:\n    steps: [{script: echo independent}]\n",
    );
    let mut r = start(&mut s).await;
    let sum = r.finished().await;
    assert_eq!(job(&sum, "leaf").reason.as_deref(), Some("blocked by bad"));
    assert_eq!(job(&sum, "other").verdict, Verdict::Pass);
    assert_eq!(sum.exit_code, 1);
}

#[tokio::test]
async fn job_timeout_stops_the_whole_process_group() {
    let mut s = setup(
        "name: t\njobs:\n  slow:\n    timeout: 1\n    steps:\n      - script: ['sleep 30 &', 'echo started', 'sleep 31']\n",
    );
    let mut r = start(&mut s).await;
    let sum = r.finished().await;
    let j = job(&sum, "slow");
    assert_eq!(j.failure_class, Some(FailureClass::Timeout));
    assert!(
        j.reason.as_deref().unwrap_or("").contains("job timeout"),
        "{:?}",
        j.reason
    );
    let prefix = format!("TRACKSIDE_PROCESS_TAG={}/", r.handle.run_id());
    let left = trackside::exec::shell::tagged_pids(&prefix, true, std::process::id());
    assert!(left.is_empty(), "processes survived the timeout: {left:?}");
}

#[tokio::test]
async fn step_timeout_applies_to_its_step() {
    let mut s = setup(
        "name: t\njobs:\n  s:\n    steps:\n      - name: quick\n        script: echo fine\n      - name: stuck\n        timeout: 1\n        script: sleep 30\n",
    );
    let mut r = start(&mut s).await;
    let sum = r.finished().await;
    assert_eq!(job(&sum, "s").failure_class, Some(FailureClass::Timeout));
    let stuck = r.seen.iter().find_map(|e| match &e.kind {
        EventKind::StepFinished {
            step, failure_class, ..
        } if step == "stuck" => Some(*failure_class),
        _ => None,
    });
    assert_eq!(stuck, Some(Some(FailureClass::Timeout)));
}

#[tokio::test]
async fn cancel_kills_grandchildren_and_escaped_processes() {
    let mut s = setup(
        "name: t\njobs:\n  tree:\n    steps:\n      - script:\n          - sleep 300 &\n          - sh -c 'sleep 301 & sleep 302' &\n          - setsid sleep 303 &\n          - echo ready\n          - sleep 304\n  after:\n    depends_on: [tree]\n    steps: [{script: 'true'}]\n",
    );
    let mut r = start(&mut s).await;
    r.until(
        "ready",
        |k| matches!(k, EventKind::LogLine { line, .. } if line == "ready"),
    )
    .await;
    let prefix = format!("TRACKSIDE_PROCESS_TAG={}/", r.handle.run_id());
    // The background processes may still be starting when `ready` shows.
    common::deploy::until("the step's five processes", || {
        trackside::exec::shell::tagged_pids(&prefix, true, std::process::id()).len() >= 4
    })
    .await;
    r.handle.cancel("tree").await.expect("cancel");
    let sum = r.finished().await;
    assert_eq!(job(&sum, "tree").status, JobStatus::Cancelled);
    assert_eq!(job(&sum, "after").status, JobStatus::Skipped);
    let left = trackside::exec::shell::tagged_pids(&prefix, true, std::process::id());
    assert!(left.is_empty(), "processes survived the cancel: {left:?}");
    assert!(
        r.handle.cancel("tree").await.is_err(),
        "a finished job cannot be cancelled"
    );
}

#[tokio::test]
async fn cancel_all_ends_the_run_as_cancelled() {
    let mut s = setup(
        "name: t\njobs:\n  a:\n    steps: [{script: 'echo go; sleep 30'}]\n  b:\n    depends_on: [a]\n    steps: [{script: 'true'}]\n",
    );
    let mut r = start(&mut s).await;
    r.until(
        "a runs",
        |k| matches!(k, EventKind::LogLine { line, .. } if line == "go"),
    )
    .await;
    r.handle.cancel_all().await.expect("cancel all");
    let sum = r.finished().await;
    assert_eq!(sum.result, RunResult::Cancelled);
    assert_eq!(sum.exit_code, 130);
    assert!(
        s.state()
            .join("runs")
            .join(r.handle.run_id())
            .join("summary.json")
            .exists()
    );
}

#[tokio::test]
async fn a_gate_waits_for_approval_in_an_interactive_run() {
    let mut s = setup(
        "name: t\njobs:\n  build:\n    steps: [{script: 'true'}]\n  deploy:\n    depends_on: [build]\n    when: manual\n    steps: [{script: echo deployed}]\n",
    );
    s.cfg.finish_when_blocked = false;
    let mut r = start(&mut s).await;
    r.until(
        "gate",
        |k| matches!(k, EventKind::GateWaiting { job } if job == "deploy"),
    )
    .await;
    assert!(r.handle.approve("build").await.is_err(), "build is not manual");
    assert!(r.handle.approve("nope").await.is_err());
    r.handle.approve("deploy").await.expect("approve");
    let sum = r.finished().await;
    assert_eq!(sum.result, RunResult::Passed);
    assert_eq!(r.lines("deploy"), ["deployed"]);
}

#[tokio::test]
async fn an_unapproved_gate_ends_a_headless_run_as_blocked() {
    let mut s = setup(
        "name: t\njobs:\n  deploy:\n    when: manual\n    steps: [{script: 'true'}]\n  smoke:\n    depends_on: [deploy]\n    steps: [{script: 'true'}]\n",
    );
    let mut r = start(&mut s).await;
    let sum = r.finished().await;
    assert_eq!(sum.result, RunResult::Blocked);
    assert_eq!(sum.exit_code, 1);
    assert_eq!(job(&sum, "deploy").verdict, Verdict::Manual);
    assert_eq!(
        job(&sum, "smoke").reason.as_deref(),
        Some("blocked on manual job deploy")
    );
}

#[tokio::test]
async fn retry_after_failure_reruns_the_job_and_its_skipped_dependents() {
    let marks = tempfile::tempdir().expect("tempdir");
    let mark = marks.path().join("mark");
    let mut s = setup(&format!(
        "name: t\njobs:\n  flaky:\n    steps:\n      - script: 'if [ ! -e {m} ]; then touch {m}; exit 1; fi'\n  next:\n    depends_on: [flaky]\n    steps: [{{script: echo next-ran}}]\n",
        m = mark.display()
    ));
    s.cfg.finish_when_blocked = false;
    let mut r = start(&mut s).await;
    let first = r.finished().await;
    assert_eq!(first.result, RunResult::Failed);
    assert!(
        r.handle.retry("next").await.is_err(),
        "skipped jobs are not retried directly"
    );
    r.handle.retry("flaky").await.expect("retry");
    let second = r.finished().await;
    assert_eq!(second.result, RunResult::Passed);
    assert_eq!(job(&second, "flaky").attempts.len(), 2);
    assert_eq!(r.lines("next"), ["next-ran"]);
    let logs = trackside::store::log_attempts(r.handle.run_dir(), "flaky");
    assert_eq!(logs, [1, 2], "each attempt keeps its own log");
}

#[tokio::test]
async fn secrets_are_masked_in_events_logs_and_records() {
    let mut s = setup_with(
        "name: t\njobs:\n  leak:\n    steps:\n      - script: ['echo token=$API_TOKEN', 'echo \"$API_TOKEN\" >&2', 'exit 1']\n",
        &trackside::pipeline::LoadOptions {
            secret_names: vec!["API_TOKEN".into()],
            ..Default::default()
        },
    );
    s.cfg.secrets = vec![("API_TOKEN".into(), "s3cr3t-value-42".into())];
    let mut r = start(&mut s).await;
    r.finished().await;
    assert_eq!(r.lines("leak"), ["token=[MASKED]", "[MASKED]"]);
    let everything = all_text(&s.state());
    assert!(!everything.contains("s3cr3t-value-42"), "secret written to disk");
    assert!(everything.contains("token=[MASKED]"));
}

#[tokio::test]
async fn variables_follow_precedence_and_host_allowlist() {
    let mut s = setup_with(
        "name: t\nglobal_env:\n  A: global\n  B: global\n  C: global\n  D: global\njobs:\n  v:\n    environment:\n      B: job\n      C: job\n      D: job\n      P: \"/opt/bin:$PATH\"\n    steps:\n      - environment:\n          C: step\n          D: step\n        script:\n          - echo \"$A $B $C $D\"\n          - echo \"${HOSTONLY:-hidden} $CI $CI_JOB_NAME $CI_JOB_ATTEMPT\"\n          - 'case \"$P\" in /opt/bin:/*) echo path-ok;; esac'\n          - echo '${{ env.B }}-${{ vars.A }}'\n",
        &trackside::pipeline::LoadOptions {
            cli_vars: vec![("D".into(), "cli".into())],
            host_env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            ..Default::default()
        },
    );
    s.cfg.cli_vars = vec![("D".into(), "cli".into())];
    let mut r = start(&mut s).await;
    let sum = r.finished().await;
    assert_eq!(sum.result, RunResult::Passed, "{:?}", r.lines("v"));
    assert_eq!(
        r.lines("v"),
        ["global job step cli", "hidden true v 1", "path-ok", "job-global"]
    );
}

#[tokio::test]
async fn fail_fast_cancels_running_jobs() {
    let mut s = setup(
        "name: t\njobs:\n  bad:\n    steps: [{script: 'sleep 0.2; exit 1'}]\n  long:\n    steps: [{script: 'sleep 30'}]\n",
    );
    s.cfg.fail_fast = true;
    let mut r = start(&mut s).await;
    let sum = r.finished().await;
    assert_eq!(job(&sum, "long").failure_class, Some(FailureClass::Cancelled));
    assert_eq!(sum.result, RunResult::Failed);
}

#[tokio::test]
async fn pipeline_timeout_stops_the_run() {
    let mut s = setup(
        "name: t\ntimeout: 1\njobs:\n  long:\n    steps: [{script: 'sleep 30'}]\n  later:\n    depends_on: [long]\n    steps: [{script: 'true'}]\n",
    );
    let mut r = start(&mut s).await;
    let sum = r.finished().await;
    assert_eq!(job(&sum, "long").failure_class, Some(FailureClass::Timeout));
    assert!(sum.message.contains("timed out"));
    assert_eq!(sum.exit_code, 1);
}

#[tokio::test]
async fn repeat_measures_the_flake_rate() {
    let counter = tempfile::tempdir().expect("tempdir");
    let c = counter.path().join("n");
    let mut s = setup(&format!(
        "name: t\njobs:\n  dep:\n    steps: [{{script: 'echo dep >> {d}'}}]\n  t:\n    depends_on: [dep]\n    steps:\n      - script: 'n=$(cat {c} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {c}; [ $((n % 2)) -eq 0 ]'\n  unrelated:\n    steps: [{{script: 'true'}}]\n",
        c = c.display(),
        d = counter.path().join("dep").display()
    ));
    s.cfg.only_job = Some("t".into());
    s.cfg.repeat = Some(4);
    let mut r = start(&mut s).await;
    let sum = r.finished().await;
    let rep = sum.repeat.expect("repeat stats");
    assert_eq!((rep.runs, rep.passed, rep.failed), (4, 2, 2));
    assert_eq!(sum.jobs.len(), 2, "only the job and its dependency");
    let dep_runs = std::fs::read_to_string(counter.path().join("dep")).expect("dep ran");
    assert_eq!(dep_runs.lines().count(), 1, "dependencies run once");
}

#[tokio::test]
async fn pause_holds_new_jobs_until_resumed() {
    let mut s = setup(
        "name: t\njobs:\n  a:\n    steps: [{script: 'echo a-running; sleep 0.3'}]\n  b:\n    depends_on: [a]\n    steps: [{script: echo b-ran}]\n",
    );
    let mut r = start(&mut s).await;
    r.until(
        "a runs",
        |k| matches!(k, EventKind::LogLine { line, .. } if line == "a-running"),
    )
    .await;
    r.handle.pause_scheduling().await.expect("pause");
    r.until(
        "a done",
        |k| matches!(k, EventKind::JobFinished { job, .. } if job == "a"),
    )
    .await;
    r.until("b queued", |k| matches!(k, EventKind::JobQueued { job } if job == "b"))
        .await;
    assert!(
        !r.seen
            .iter()
            .any(|e| matches!(&e.kind, EventKind::JobStarted { job, .. } if job == "b"))
    );
    r.handle.resume_scheduling().await.expect("resume");
    let sum = r.finished().await;
    assert_eq!(sum.result, RunResult::Passed);
}

#[tokio::test]
async fn several_subscribers_see_the_same_run() {
    let mut s = setup("name: t\njobs:\n  a:\n    steps: [{script: echo hi}]\n");
    let plan = trackside::pipeline::Plan::build(&s.pipeline).expect("plan");
    let cfg = std::mem::replace(
        &mut s.cfg,
        setup("name: x\njobs:\n  x:\n    steps: [{script: x}]\n").cfg,
    );
    let handle = trackside::engine::spawn(s.pipeline.clone(), plan, cfg).expect("spawn");
    let mut one = handle.subscribe_live();
    let mut two = handle.subscribe_live();
    handle.start().await.expect("start");
    for rx in [&mut one, &mut two] {
        let got = tokio::time::timeout(LIMIT, async {
            loop {
                if let Ok(ev) = rx.recv().await
                    && let EventKind::LogLine { line, .. } = &ev.kind
                {
                    return line.clone();
                }
            }
        })
        .await
        .expect("bounded");
        assert_eq!(got, "hi");
    }
    assert_eq!(handle.wait().await.expect("summary").result, RunResult::Passed);
}

#[tokio::test]
async fn edits_to_the_pipeline_file_apply_to_jobs_that_have_not_started() {
    let gate = tempfile::tempdir().expect("tempdir");
    let go = gate.path().join("go");
    let original = format!(
        "name: t\njobs:\n  first:\n    steps: [{{script: 'echo first-running; while [ ! -e {go} ]; do sleep 0.05; done'}}]\n  later:\n    depends_on: [first]\n    steps: [{{script: echo old-later}}]\n",
        go = go.display()
    );
    let mut s = setup(&original);
    let file = s.project().join("pipeline.yml");
    s.cfg.watch = Some(trackside::pipeline::LoadOptions {
        host_env: s.cfg.host_env.clone(),
        ..Default::default()
    });
    let mut r = start(&mut s).await;
    r.until(
        "first runs",
        |k| matches!(k, EventKind::LogLine { line, .. } if line == "first-running"),
    )
    .await;

    // An invalid edit is reported with its position; the run goes on.
    std::fs::write(
        &file,
        "name: t\njobs:\n  first:\n    depends_on: [nope]\n    steps: [{script: x}]\n",
    )
    .expect("write");
    let ev = r
        .until("invalid edit", |k| matches!(k, EventKind::PipelineInvalid { .. }))
        .await;
    let EventKind::PipelineInvalid { diagnostics, .. } = &ev.kind else {
        unreachable!()
    };
    assert!(
        diagnostics
            .iter()
            .any(|d| d.contains("pipeline.yml:4:18") && d.contains("unknown job `nope`")),
        "{diagnostics:?}"
    );

    // A valid edit: `later` changes, `extra` joins, `first` (running) keeps its definition.
    let edited = original
        .replace("echo old-later", "echo new-later")
        .replace("first-running;", "edited-first;")
        + "  extra:\n    steps: [{script: echo extra-ran}]\n";
    std::fs::write(&file, edited).expect("write");
    let ev = r
        .until("applied edit", |k| matches!(k, EventKind::PipelineChanged { .. }))
        .await;
    let EventKind::PipelineChanged {
        added,
        removed,
        changed,
        kept,
        ..
    } = &ev.kind
    else {
        unreachable!()
    };
    assert_eq!(
        (added.as_slice(), changed.as_slice(), kept.as_slice()),
        (
            &["extra".to_string()][..],
            &["later".to_string()][..],
            &["first".to_string()][..]
        )
    );
    assert!(removed.is_empty());
    r.until(
        "extra runs",
        |k| matches!(k, EventKind::LogLine { line, .. } if line == "extra-ran"),
    )
    .await;

    std::fs::write(&go, "").expect("release first");
    let sum = r.finished().await;
    assert_eq!(sum.result, RunResult::Passed, "{:?}", sum.jobs);
    assert_eq!(
        r.lines("later"),
        ["new-later"],
        "the changed job ran its new definition"
    );
    assert_eq!(sum.jobs.len(), 3);
}

#[tokio::test]
async fn artifacts_flow_to_dependents_and_only_there() {
    let mut s = setup(
        "name: t\njobs:\n  build:\n    artifacts:\n      paths: [dist/]\n      exclude: ['**/*.log']\n    steps:\n      - script: ['mkdir -p dist/sub', 'echo binary > dist/app', 'echo noise > dist/build.log', 'echo deep > dist/sub/x', 'echo scratch > tmp.txt']\n  test:\n    depends_on: [build]\n    steps:\n      - script: ['cat dist/app dist/sub/x', 'test ! -e dist/build.log', 'test ! -e tmp.txt']\n  other:\n    steps:\n      - script: ['test ! -e dist/app']\n",
    );
    let mut r = start(&mut s).await;
    let sum = r.finished().await;
    assert_eq!(
        sum.result,
        RunResult::Passed,
        "{:?} {:?}",
        r.lines("test"),
        r.lines("other")
    );
    assert!(r.lines("test").contains(&"binary".to_string()));
    assert!(
        r.lines("build").iter().any(|l| l.contains("kept 2 artifact file(s)")),
        "{:?}",
        r.lines("build")
    );
}

#[tokio::test]
async fn a_corrupted_artifact_reruns_its_producer_once() {
    // `tamper` flips the stored object between build and test.
    let mut s = setup(
        "name: t\njobs:\n  build:\n    artifacts: {paths: [out.txt]}\n    steps:\n      - script: ['echo attempt-$CI_JOB_ATTEMPT > log.txt; echo payload > out.txt']\n  tamper:\n    depends_on: [build]\n    steps:\n      - script:\n          - 'state=$(dirname $(dirname $TRACKSIDE_RUN_DIR)); obj=$(printf \"payload\\n\" | sha256sum | cut -c1-64)'\n          - 'test -e $state/objects/$(echo $obj | cut -c1-2)/$(echo $obj | cut -c3-)'\n          - 'chmod u+w $state/objects/$(echo $obj | cut -c1-2)/$(echo $obj | cut -c3-); echo evil > $state/objects/$(echo $obj | cut -c1-2)/$(echo $obj | cut -c3-)'\n  test:\n    depends_on: [build, tamper]\n    needs_artifacts: [build]\n    steps:\n      - script: ['cat out.txt']\n",
    );
    let mut r = start(&mut s).await;
    let sum = r.finished().await;
    assert_eq!(sum.result, RunResult::Passed, "test: {:?}", r.lines("test"));
    let build = sum.jobs.iter().find(|j| j.name == "build").expect("build");
    assert_eq!(build.attempts.len(), 2, "the producer ran again");
    assert!(r.seen.iter().any(|e| matches!(&e.kind, EventKind::JobReset { job, reason } if job == "build" && reason.contains("failed verification"))));
    assert!(r.lines("test").contains(&"payload".to_string()));
    let test = sum.jobs.iter().find(|j| j.name == "test").expect("test");
    assert_eq!(test.attempts[0].failure_class, Some(FailureClass::DataIntegrity));
}

#[tokio::test]
async fn a_retry_after_an_edit_runs_the_edited_definition() {
    let original = "name: t\njobs:\n  broken:\n    steps: [{script: 'echo old-definition; exit 1'}]\n";
    let mut s = setup(original);
    let file = s.project().join("pipeline.yml");
    s.cfg.finish_when_blocked = false;
    s.cfg.watch = Some(trackside::pipeline::LoadOptions {
        host_env: s.cfg.host_env.clone(),
        ..Default::default()
    });
    let mut r = start(&mut s).await;
    r.until("the failure", |k| {
        matches!(
            k,
            EventKind::JobFinished {
                status: JobStatus::Failed,
                ..
            }
        )
    })
    .await;
    std::fs::write(
        &file,
        original.replace("echo old-definition; exit 1", "echo new-definition"),
    )
    .expect("write");
    let ev = r
        .until("the edit applied", |k| matches!(k, EventKind::PipelineChanged { .. }))
        .await;
    let EventKind::PipelineChanged { changed, .. } = &ev.kind else {
        unreachable!()
    };
    assert_eq!(
        changed,
        &["broken".to_string()],
        "the failed job takes the edit for its retry"
    );
    r.handle.retry("broken").await.expect("retry");
    let sum = r.finished().await;
    assert_eq!(sum.result, RunResult::Passed, "{:?}", r.lines("broken"));
    assert_eq!(r.lines("broken"), ["old-definition", "new-definition"]);
}

#[tokio::test]
async fn cleanup_steps_run_after_a_failure_are_told_so_and_leave_the_result_alone() {
    let mut s = setup(
        "name: t\njobs:\n  j:\n    steps:\n      - name: build\n        script: [echo building, exit 3]\n      - name: never\n        script: echo not-reached\n      - name: tidy\n        cleanup: true\n        script: ['echo status=$CI_JOB_STATUS', exit 7]\n  ok:\n    steps:\n      - script: echo fine\n      - cleanup: true\n        script: ['echo status=$CI_JOB_STATUS', exit 1]\n",
    );
    let mut r = start(&mut s).await;
    let sum = r.finished().await;
    let j = job(&sum, "j");
    assert_eq!(j.status, JobStatus::Failed);
    assert_eq!(j.failure_class, Some(FailureClass::Script));
    assert_eq!(
        j.reason.as_deref(),
        Some("step `build` exited with 3"),
        "the cleanup's exit 7 is not the reason"
    );
    let lines = r.lines("j");
    assert!(lines.contains(&"status=failed".to_string()), "{lines:?}");
    assert!(!lines.contains(&"not-reached".to_string()), "{lines:?}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("cleanup step `tidy` failed") && l.contains("result stands")),
        "{lines:?}"
    );
    // A failing cleanup does not fail a job that passed.
    assert_eq!(job(&sum, "ok").status, JobStatus::Succeeded);
    assert!(r.lines("ok").contains(&"status=success".to_string()));
}

#[tokio::test]
async fn cleanup_steps_run_after_a_cancel_and_a_timeout_within_their_own_limit() {
    let mut s = setup(
        "name: t\njobs:\n  cancelled:\n    steps:\n      - script: [echo ready, sleep 300]\n      - cleanup: true\n        script: 'echo status=$CI_JOB_STATUS'\n  slow:\n    timeout: 1\n    steps:\n      - script: sleep 30\n      - name: first-cleanup\n        cleanup: true\n        timeout: 1\n        script: [echo stuck, sleep 30]\n      - cleanup: true\n        script: 'echo status=$CI_JOB_STATUS'\n",
    );
    let mut r = start(&mut s).await;
    r.until(
        "ready",
        |k| matches!(k, EventKind::LogLine { line, .. } if line == "ready"),
    )
    .await;
    r.handle.cancel("cancelled").await.expect("cancel");
    let sum = r.finished().await;
    assert_eq!(job(&sum, "cancelled").status, JobStatus::Cancelled);
    assert!(
        r.lines("cancelled").contains(&"status=canceled".to_string()),
        "{:?}",
        r.lines("cancelled")
    );
    let slow = job(&sum, "slow");
    assert_eq!(slow.failure_class, Some(FailureClass::Timeout));
    let lines = r.lines("slow");
    assert!(lines.contains(&"status=timedout".to_string()), "{lines:?}");
    assert!(
        lines.iter().any(|l| l.contains("cleanup timeout of 1s reached")),
        "a cleanup is held to its own timeout: {lines:?}"
    );
    let prefix = format!("TRACKSIDE_PROCESS_TAG={}/", r.handle.run_id());
    let left = trackside::exec::shell::tagged_pids(&prefix, true, std::process::id());
    assert!(left.is_empty(), "processes survived: {left:?}");
}

#[tokio::test]
async fn github_steps_with_status_functions_run_after_a_failure_or_a_cancel() {
    let opts = trackside::pipeline::LoadOptions {
        dialect: Some(trackside::pipeline::Dialect::Github),
        ..Default::default()
    };
    let mut s = setup_with(
        "on: push\njobs:\n  failing:\n    runs-on: x\n    steps:\n      - id: first\n        run: echo 'v=1' >> \"$GITHUB_OUTPUT\"\n      - run: exit 3\n      - run: echo not-reached\n      - if: failure() && steps.first.outputs.v == '1'\n        run: echo on-failure\n      - if: success()\n        run: echo on-success\n      - if: cancelled()\n        run: echo on-cancel\n      - if: always()\n        run: echo always\n  cancelled:\n    runs-on: x\n    steps:\n      - run: |\n          echo ready\n          sleep 300\n      - run: echo not-reached\n      - if: failure()\n        run: echo on-failure\n      - if: cancelled()\n        run: echo on-cancel\n      - if: ${{ always() }}\n        run: echo always\n",
        &opts,
    );
    let mut r = start(&mut s).await;
    r.until(
        "ready",
        |k| matches!(k, EventKind::LogLine { line, .. } if line == "ready"),
    )
    .await;
    r.handle.cancel("cancelled").await.expect("cancel");
    let sum = r.finished().await;
    let failing = job(&sum, "failing");
    assert_eq!(failing.status, JobStatus::Failed);
    assert_eq!(failing.reason.as_deref(), Some("step `Run exit 3` exited with 3"));
    let out = |name: &str| {
        r.lines(name)
            .into_iter()
            .filter(|l| !l.starts_with("trackside:"))
            .collect::<Vec<_>>()
    };
    assert_eq!(out("failing"), ["on-failure", "always"]);
    assert_eq!(job(&sum, "cancelled").status, JobStatus::Cancelled);
    assert_eq!(out("cancelled"), ["ready", "on-cancel", "always"]);
}

#[tokio::test]
async fn a_start_that_fails_after_joining_the_slot_table_leaves_it() {
    let mut s = setup("name: t\njobs:\n  a:\n    steps:\n      - script: echo hi\n");
    let state = s.cfg.state_dir.clone();
    std::fs::create_dir_all(&state).expect("state");
    // The artifact store cannot open: the start fails after the run has
    // its folder and joined the machine's slot table (beside the record).
    std::fs::write(state.join("objects"), "not a folder").expect("objects");
    let cfg = std::mem::replace(
        &mut s.cfg,
        trackside::engine::EngineConfig::new(
            String::new(),
            Default::default(),
            Default::default(),
            Default::default(),
        ),
    );
    let plan = trackside::pipeline::Plan::build(&s.pipeline).expect("plan");
    let failed = trackside::engine::spawn(s.pipeline.clone(), plan, cfg);
    assert!(failed.is_err(), "the start fails");
    let table = trackside::store::slots::Slots::open(&state)
        .and_then(|mut t| t.table())
        .expect("table");
    assert!(table.runs.is_empty(), "the run left the table: {table:?}");
}
