//! Deployment pieces against real sockets: demo services behind the
//! built-in router, fed by the load generator.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use trackside::deploy::demo::{DemoService, TrafficCounts, generate};
use trackside::deploy::judge::{self, JudgeConfig, MetricOutcome};
use trackside::deploy::router::{Pool, Router};

async fn service(version: &str, error_rate: f64, latency_ms: u64, stop: &CancellationToken) -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let s = DemoService {
        version: version.into(),
        error_rate,
        latency: Duration::from_millis(latency_ms),
    };
    tokio::spawn(s.serve(l, stop.clone()));
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_splits_by_weight_counts_errors_and_the_judge_catches_a_bad_canary() {
    let stop = CancellationToken::new();
    let stable = service("v1", 0.0, 2, &stop).await;
    let canary = service("v2", 0.3, 2, &stop).await;
    let router = Router::new(false);
    router.set_backends(Pool::Stable, vec![stable]);
    router.set_backends(Pool::Canary, vec![canary]);
    router.set_weight(300);
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let front = l.local_addr().expect("addr");
    tokio::spawn(router.clone().serve(l, stop.clone()));
    let since = Instant::now();
    let counts = Arc::new(TrafficCounts::default());
    tokio::spawn(generate(front, 400, stop.clone(), counts.clone()));
    until("600 answered requests", || {
        counts.ok.load(Ordering::Relaxed) + counts.failed.load(Ordering::Relaxed) >= 600
    })
    .await;
    let (s, c) = (router.totals(Pool::Stable), router.totals(Pool::Canary));
    let share = c.requests as f64 / (s.requests + c.requests) as f64;
    assert!((0.2..0.4).contains(&share), "30% weight gave {share:.2}: {s:?} {c:?}");
    assert_eq!(s.errors, 0, "stable never fails");
    assert!(c.errors > 0, "the canary's 30% errors are counted");
    // Abort: weight 0 takes effect on the next request.
    router.set_weight(0);
    let after = router.totals(Pool::Canary).requests;
    let stable_before = router.totals(Pool::Stable).requests;
    until("100 more stable requests", || {
        router.totals(Pool::Stable).requests >= stable_before + 100
    })
    .await;
    assert!(
        router.totals(Pool::Canary).requests <= after + 3,
        "at most the requests already in flight reach the canary after weight 0"
    );
    let cfg = JudgeConfig::default();
    let (ws, wc) = (router.window(Pool::Stable, since), router.window(Pool::Canary, since));
    let r = judge::compare_errors("error_rate", (ws.errors, ws.requests), (wc.errors, wc.requests), &cfg);
    assert_eq!(r.outcome, MetricOutcome::High, "{}", r.why);
    stop.cancel();
}

mod common;

use common::deploy::{ANALYSED, GATED, STRAIGHT, blue_green_yaml, deploy, deploy_yaml, run_until_gate, until};

/// GET `url`, the body as text.
async fn scrape(url: &str) -> String {
    use http_body_util::BodyExt as _;
    let client: hyper_util::client::legacy::Client<_, http_body_util::Empty<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let resp = client.get(url.parse().expect("url")).await.expect("scrape");
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    String::from_utf8_lossy(&body).into_owned()
}

use trackside::deploy::rollout::{Command, load_revision};
use trackside::engine::{EventKind, RunResult};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_version_is_promoted_and_a_bad_one_rolled_back_automatically() {
    let state = tempfile::tempdir().expect("tempdir");
    let (first, _) = deploy(state.path(), &deploy_yaml("v1", 0.0, ANALYSED)).await;
    assert_eq!(first.result, RunResult::Passed, "{:?}", first.jobs);
    assert_eq!(load_revision(state.path(), "web").map(|r| r.version), Some("v1".into()));

    let (good, r) = deploy(state.path(), &deploy_yaml("v2", 0.0, ANALYSED)).await;
    assert_eq!(good.result, RunResult::Passed, "{:?}", r.lines("web"));
    assert_eq!(load_revision(state.path(), "web").map(|r| r.version), Some("v2".into()));
    let last = r.seen.iter().rev().find_map(|e| match &e.kind {
        EventKind::Rollout { status, .. } => Some(status.clone()),
        _ => None,
    });
    let last = last.expect("rollout status events");
    assert_eq!((last.phase.as_str(), last.weight), ("completed", 1000));
    assert!(last.canary.requests > 0 && last.stable.requests > 0, "{last:?}");

    let (bad, r) = deploy(state.path(), &deploy_yaml("v3", 0.4, ANALYSED)).await;
    assert_eq!(bad.result, RunResult::Failed);
    assert_eq!(
        bad.jobs[0].failure_class,
        Some(trackside::pipeline::FailureClass::RolledBack),
        "a rollback is not a script failure"
    );
    let lines = r.lines("web");
    assert!(lines.iter().any(|l| l.contains("analysis: Fail")), "{lines:?}");
    assert!(
        lines.iter().any(|l| l == "weight: canary 0.0%"),
        "traffic back to stable: {lines:?}"
    );
    assert!(
        bad.jobs[0]
            .reason
            .as_deref()
            .is_some_and(|m| m.contains("Aborted (stable serving)")),
        "{:?}",
        bad.jobs[0].reason
    );
    assert_eq!(
        load_revision(state.path(), "web").map(|r| r.version),
        Some("v2".into()),
        "the stable revision is still v2"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_at_a_manual_gate_sends_everything_to_stable_and_records_who() {
    let state = tempfile::tempdir().expect("tempdir");
    let (first, _) = deploy(state.path(), &deploy_yaml("v1", 0.0, STRAIGHT)).await;
    assert_eq!(first.result, RunResult::Passed);
    let yaml = deploy_yaml("v2", 0.0, GATED).replace(
        "      listen: 127.0.0.1:0\n",
        "      listen: 127.0.0.1:0\n      metrics_listen: 127.0.0.1:0\n",
    );
    let (_s, mut r) = common::deploy::start_at_gate(state.path(), &yaml).await;
    // Prometheus can scrape the router's numbers meanwhile.
    let url = r
        .lines("web")
        .iter()
        .find_map(|l| l.strip_prefix("metrics for Prometheus at ").map(str::to_string))
        .expect("the metrics address is logged");
    let metrics = scrape(&url).await;
    assert!(
        metrics.contains("trackside_canary_weight_ratio{service=\"web\"} 0.3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("# TYPE trackside_request_duration_seconds histogram"),
        "{metrics}"
    );
    // After the service's numbers, the pipeline's from history: the
    // first deploy's run and its job's attempt.
    assert!(metrics.contains("# TYPE trackside_runs_total counter"), "{metrics}");
    assert!(
        metrics.lines().any(
            |l| l.starts_with("trackside_job_attempts_total{") && l.ends_with(",job=\"web\",outcome=\"passed\"} 1")
        ),
        "{metrics}"
    );
    let wrong = r.handle.rollout("nope", Command::Abort).await;
    assert!(wrong.is_err(), "an unknown job is refused");
    r.handle.rollout("web", Command::Abort).await.expect("abort");
    let sum = r.finished().await;
    assert_eq!(sum.result, RunResult::Failed);
    assert_eq!(
        sum.jobs[0].failure_class,
        Some(trackside::pipeline::FailureClass::RolledBack),
        "an abort by hand is not a script failure"
    );
    let lines = r.lines("web");
    let aborted = lines
        .iter()
        .find(|l| l.contains("aborted by hand"))
        .unwrap_or_else(|| panic!("{lines:?}"));
    assert!(aborted.contains("(by "), "the audit names who: {aborted}");
    // The decision is an event of the run's record, with who took it.
    let decision = r.seen.iter().find_map(|e| match &e.kind {
        EventKind::RolloutDecision { text, by, .. } if text.contains("aborted by hand") => Some(by.clone()),
        _ => None,
    });
    assert!(
        decision.flatten().is_some_and(|b| b.contains('@')),
        "a named decision event"
    );
    let record = std::fs::read_to_string(
        std::fs::read_dir(state.path().join("runs"))
            .expect("runs")
            .flatten()
            .map(|d| d.path().join("events.jsonl"))
            .find(|p| std::fs::read_to_string(p).is_ok_and(|t| t.contains("aborted by hand")))
            .expect("a run record with the decision"),
    )
    .expect("events");
    assert!(
        record.contains("\"type\":\"rollout_decision\""),
        "recorded in events.jsonl"
    );
    assert_eq!(load_revision(state.path(), "web").map(|r| r.version), Some("v1".into()));
    // Retry: the aborted rollout starts again with its job, up to the gate.
    r.handle.rollout("web", Command::Retry).await.expect("retry");
    r.until(
        "the gate again",
        |k| matches!(k, EventKind::Rollout { status, .. } if status.phase == "gate"),
    )
    .await;
    r.handle.rollout("web", Command::Retry).await.expect("delivered");
    r.until("the retry refused while it runs", |k| {
        matches!(k, EventKind::RolloutDecision { text, .. } if text.starts_with("retry ignored (gate): the rollout is still under way"))
    })
    .await;
    r.handle.rollout("web", Command::Abort).await.expect("abort");
    assert_eq!(r.finished().await.result, RunResult::Failed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_timeout_takes_its_default_action() {
    let state = tempfile::tempdir().expect("tempdir");
    deploy(state.path(), &deploy_yaml("v1", 0.0, STRAIGHT)).await;
    let steps = "            - set_weight: 10\n            - pause: {timeout: 1, default: promote}\n";
    let (sum, r) = deploy(state.path(), &deploy_yaml("v2", 0.0, steps)).await;
    assert_eq!(sum.result, RunResult::Passed, "{:?}", r.lines("web"));
    assert!(r.lines("web").iter().any(|l| l.contains("gate timed out: promoting")));
    let steps = "            - set_weight: 10\n            - pause: {timeout: 1, default: abort}\n";
    let (sum, _) = deploy(state.path(), &deploy_yaml("v3", 0.0, steps)).await;
    assert_eq!(sum.result, RunResult::Failed);
    assert_eq!(load_revision(state.path(), "web").map(|r| r.version), Some("v2".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_rollout_freezes_its_countdown_until_resumed() {
    let state = tempfile::tempdir().expect("tempdir");
    deploy(state.path(), &deploy_yaml("v1", 0.0, STRAIGHT)).await;
    let steps = "            - set_weight: 20\n            - pause: {duration: 600s}\n            - set_weight: 100\n";
    let (_s, mut r) = common::deploy::start_deploy(state.path(), &deploy_yaml("v2", 0.0, steps)).await;
    let phase_is = |want: &'static str| move |k: &EventKind| matches!(k, EventKind::Rollout { status, .. } if status.phase == want);
    r.until("the timed pause", phase_is("paused")).await;
    r.handle.rollout("web", Command::Pause).await.expect("hold");
    let held = r.until("held", phase_is("held")).await;
    let EventKind::Rollout { status, .. } = &held.kind else {
        unreachable!("matched a rollout status")
    };
    let detail = status.detail.clone().unwrap_or_default();
    assert!(detail.contains("s left on the countdown"), "{detail}");
    assert_eq!(status.countdown_s, None, "no countdown runs while held");
    r.handle.rollout("web", Command::Promote).await.expect("promote");
    r.until(
        "the ignored promote",
        |k| matches!(k, EventKind::LogLine { line, .. } if line.contains("promote ignored: the rollout is paused")),
    )
    .await;
    r.handle.rollout("web", Command::Resume).await.expect("resume");
    let resumed = r.until("the pause again", phase_is("paused")).await;
    let EventKind::Rollout { status, .. } = &resumed.kind else {
        unreachable!("matched a rollout status")
    };
    assert!(
        status.countdown_s.is_some_and(|c| c > 500.0),
        "the countdown goes on from where it stood: {:?}",
        status.countdown_s
    );
    r.handle.rollout("web", Command::Promote).await.expect("promote");
    let sum = r.finished().await;
    assert_eq!(sum.result, RunResult::Passed, "{:?}", r.lines("web"));
    let lines = r.lines("web");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("paused: timers frozen") && l.contains("(by ")),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.contains("resumed") && l.contains("(by ")),
        "{lines:?}"
    );
    assert_eq!(load_revision(state.path(), "web").map(|r| r.version), Some("v2".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_survives_a_restart_of_trackside() {
    common::deploy::gate_survives_a_restart(&|y| y.to_string()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completed_rollout_can_be_rolled_back_and_the_history_says_who() {
    let state = tempfile::tempdir().expect("tempdir");
    let one = "            - set_weight: 100\n";
    deploy(state.path(), &deploy_yaml("v1", 0.0, one)).await;
    let (sum, r) = deploy(state.path(), &deploy_yaml("v2", 0.0, one)).await;
    assert_eq!(sum.result, RunResult::Passed);
    let msg = r.handle.rollback_service("web").await.expect("rollback");
    // v1's replicas were still up (the scale-down delay): traffic went back at once.
    assert!(
        msg.starts_with("web: v1 serves again (was v2): switched at once (2 replica(s) were still up)"),
        "{msg}"
    );
    let listen = trackside::deploy::service::saved(state.path(), "web")
        .expect("live")
        .listen;
    assert_eq!(scrape(&format!("http://{listen}/")).await.trim(), "version v1");
    assert_eq!(load_revision(state.path(), "web").map(|r| r.version), Some("v1".into()));
    let history = trackside::deploy::rollout::history(state.path(), "web");
    let actions: Vec<&str> = history.iter().map(|h| h.action.as_str()).collect();
    assert_eq!(actions, ["first_deploy", "promoted", "rolled_back"]);
    assert!(history.iter().all(|h| h.by.contains('@')), "{history:?}");
    // The CLI does the same, and going back again is an undo.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_trackside"))
        .args(["rollback", "web", "--state-dir"])
        .arg(state.path())
        .output()
        .expect("rollback");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("web: v2 serves again (was v1): switched at once"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(scrape(&format!("http://{listen}/")).await.trim(), "version v2");
    let none = std::process::Command::new(env!("CARGO_BIN_EXE_trackside"))
        .args(["rollback", "nothing-here", "--state-dir"])
        .arg(state.path())
        .output()
        .expect("rollback");
    assert_eq!(none.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&none.stderr).contains("has no deployed revision"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_latency_threshold_rolls_a_slow_canary_back() {
    let state = tempfile::tempdir().expect("tempdir");
    deploy(state.path(), &deploy_yaml("v1", 0.0, STRAIGHT)).await;
    let steps = "            - set_weight: 30\n            - analysis: {interval: 2s, count: 1, metrics: [{metric: p95_ms, max_ratio: 1.2}, {metric: error_rate, max: 0.05}]}\n";
    // The same service, four times slower.
    let slow = deploy_yaml("v2", 0.0, steps).replace("--latency-ms 3", "--latency-ms 12");
    let (sum, r) = deploy(state.path(), &slow).await;
    assert_eq!(sum.result, RunResult::Failed, "{:?}", r.lines("web"));
    let lines = r.lines("web");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("check p95_ms: High") && l.contains("x stable")),
        "{lines:?}"
    );
    assert!(lines.iter().any(|l| l.contains("threshold broken")), "{lines:?}");
    assert_eq!(load_revision(state.path(), "web").map(|r| r.version), Some("v1".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_of_a_killed_trackside_are_stopped_by_the_next_one() {
    // A rehearsal's replicas live as long as its trackside.
    let rehearse = |y: String| {
        y.replace(
            "      abort_delay: 0\n",
            "      abort_delay: 0\n      keep_serving: false\n",
        )
    };
    let state = tempfile::tempdir().expect("tempdir");
    deploy(state.path(), &rehearse(deploy_yaml("v1", 0.0, STRAIGHT))).await;
    let yaml = rehearse(deploy_yaml(
        "v2",
        0.0,
        "            - set_weight: 30\n            - pause: {}\n",
    ));
    let file = state.path().join("v2.yml");
    std::fs::write(&file, &yaml).expect("write");
    let mut child = run_until_gate(state.path(), &file);
    // No chance to clean up: the replicas (stable and canary) outlive it.
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    let needle = format!("TRACKSIDE_PROCESS_TAG=deploy:{}:web", state.path().display());
    let orphans = trackside::exec::shell::tagged_pids(&needle, false, std::process::id());
    // Two replicas each of stable and canary (with their `sh -c` parents).
    assert!(orphans.len() >= 4, "the replicas were left running: {orphans:?}");

    let (_s, mut r) = common::deploy::start_at_gate(state.path(), &yaml).await;
    assert!(
        r.lines("web")
            .iter()
            .any(|l| l == &format!("stopped {} leftover replica(s) of an earlier trackside", orphans.len())),
        "{:?}",
        r.lines("web")
    );
    r.handle.rollout("web", Command::Abort).await.expect("abort");
    r.finished().await;
    let left = trackside::exec::shell::tagged_pids(&needle, false, std::process::id());
    assert!(left.is_empty(), "no replica outlives the run: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_deploys_of_one_service_at_once_are_refused() {
    let state = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(state.path().join("services")).expect("mkdir");
    let held = std::fs::File::create(state.path().join("services/web.lock")).expect("lock file");
    held.try_lock().expect("hold the lock like another trackside");
    let (sum, r) = deploy(state.path(), &deploy_yaml("v1", 0.0, STRAIGHT)).await;
    assert_eq!(sum.result, RunResult::Failed);
    let reason = sum.jobs[0].reason.clone().unwrap_or_default();
    assert!(
        reason.contains("another trackside is deploying `web`"),
        "{reason} {:?}",
        r.lines("web")
    );
    drop(held);
    let (again, _) = deploy(state.path(), &deploy_yaml("v1", 0.0, STRAIGHT)).await;
    assert_eq!(again.result, RunResult::Passed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_previews_green_switches_at_once_and_switches_back_on_abort() {
    let state = tempfile::tempdir().expect("tempdir");
    deploy(state.path(), &deploy_yaml("v1", 0.0, STRAIGHT)).await;
    let checked =
        "{pre_promotion_analysis: {interval: 2s}, post_promotion_analysis: {interval: 2s}, scale_down_delay: 0.5}";

    // A bad green fails its preview: production never reaches it.
    let (bad, r) = deploy(state.path(), &blue_green_yaml("v2", 0.4, checked)).await;
    assert_eq!(bad.result, RunResult::Failed, "{:?}", r.lines("web"));
    let lines = r.lines("web");
    assert!(lines.iter().any(|l| l.contains("analysis: Fail")), "{lines:?}");
    assert!(
        !lines.iter().any(|l| l == "weight: canary 100.0%"),
        "never switched: {lines:?}"
    );

    // A good green passes its preview, takes all traffic at once, and stays.
    let (good, r) = deploy(state.path(), &blue_green_yaml("v2", 0.0, checked)).await;
    assert_eq!(good.result, RunResult::Passed, "{:?}", r.lines("web"));
    let weights: Vec<String> = r
        .lines("web")
        .into_iter()
        .filter(|l| l.starts_with("weight:"))
        .collect();
    assert_eq!(weights, ["weight: canary 100.0%"], "one switch, no steps in between");
    assert_eq!(load_revision(state.path(), "web").map(|r| r.version), Some("v2".into()));

    // Abort after the switch: back to blue at once (it is still running).
    let slow_check = "{post_promotion_analysis: {interval: 60s}, scale_down_delay: 60}";
    let (_s, mut r) = common::deploy::start_deploy(state.path(), &blue_green_yaml("v3", 0.0, slow_check)).await;
    r.until(
        "the switch",
        |k| matches!(k, EventKind::Rollout { status, .. } if status.weight == 1000),
    )
    .await;
    r.handle.rollout("web", Command::Abort).await.expect("abort");
    let sum = r.finished().await;
    assert_eq!(sum.result, RunResult::Failed);
    assert!(
        r.lines("web").iter().any(|l| l == "weight: canary 0.0%"),
        "{:?}",
        r.lines("web")
    );
    assert_eq!(load_revision(state.path(), "web").map(|r| r.version), Some("v2".into()));
}

/// `trackside --state-dir STATE rollout ARGS...` as another shell would run
/// it, over SSH, with a `USER` (`ana`) that is not its account: the server
/// must name the account of its uid. (exit code, stdout, stderr).
/// The account of this process's uid, as the control socket names a peer.
fn account() -> String {
    nix::unistd::User::from_uid(nix::unistd::Uid::current())
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_default()
}

async fn steer(state: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_trackside"))
        .arg("--state-dir")
        .arg(state)
        .args(args)
        .env("USER", "ana")
        .env("SSH_CLIENT", "10.9.8.7 52000 22")
        .output()
        .await
        .expect("run trackside");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Waits until `path` exists.
async fn until_exists(path: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !path.exists() {
        assert!(Instant::now() < deadline, "{} never appears", path.display());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_is_steered_from_another_shell() {
    use std::io::{BufRead, Write};
    let state = tempfile::tempdir().expect("tempdir");
    deploy(state.path(), &deploy_yaml("v1", 0.0, STRAIGHT)).await;
    let (_s, mut r) = common::deploy::start_at_gate(state.path(), &deploy_yaml("v2", 0.0, GATED)).await;
    let server = trackside::control::serve(
        r.handle.clone(),
        state.path().to_path_buf(),
        trackside::access::Access::owner_only(),
    );
    let socket = trackside::deploy::revision::control_socket_path(state.path(), "web");
    until_exists(&socket).await;
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&socket).expect("socket").permissions().mode() & 0o777,
        0o600,
        "only its owner steers"
    );

    let (code, out, err) = steer(state.path(), &["rollout", "web"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("web v1 -> v2 (canary): gate, step 2/3, weight 30.0%"),
        "{out}"
    );
    // A command that does not apply says so and changes nothing.
    let (code, out, _) = steer(state.path(), &["rollout", "web", "resume"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("resume ignored (gate): the rollout is not held"), "{out}");
    assert!(out.contains("now: web v1 -> v2 (canary): gate"), "{out}");
    // The service is locked while its rollout runs: steer it instead.
    let (code, _, err) = steer(state.path(), &["rollback", "web"]).await;
    assert_eq!(code, 1);
    assert!(
        err.contains("another trackside is deploying `web`") && err.contains("trackside rollout web"),
        "{err}"
    );
    // A typo names what is running.
    let (code, _, err) = steer(state.path(), &["rollout", "wbe"]).await;
    assert_eq!(code, 1);
    assert!(
        err.contains("no trackside is running a rollout of `wbe`") && err.contains("Rollouts running now: web."),
        "{err}"
    );
    let (code, _, err) = steer(state.path(), &["rollout", "web", "abort", "--full"]).await;
    assert_eq!(code, 2, "--full is for promote: {err}");
    // Not a request: a clear refusal, and the server goes on.
    let mut raw = std::os::unix::net::UnixStream::connect(&socket).expect("connect");
    raw.write_all(b"promote please\n").expect("write");
    let mut answer = String::new();
    std::io::BufReader::new(&raw).read_line(&mut answer).expect("answer");
    assert!(
        answer.contains("\"ok\":false") && answer.contains("not a request"),
        "{answer}"
    );

    let (code, out, err) = steer(state.path(), &["rollout", "web", "promote", "--json"]).await;
    assert_eq!(code, 0, "{err}");
    let reply: trackside::control::Reply = serde_json::from_str(out.trim()).expect("a JSON reply");
    assert!(reply.ok);
    assert!(
        reply
            .decisions
            .iter()
            .any(|d| d.contains("promote: step 2 passed by hand")),
        "{reply:?}"
    );
    let sum = r.finished().await;
    assert_eq!(sum.result, RunResult::Passed, "{:?}", r.lines("web"));
    // The audit names the person in the other shell, not the server.
    let by = r.seen.iter().find_map(|e| match &e.kind {
        EventKind::RolloutDecision { text, by, .. } if text.contains("passed by hand") => by.clone(),
        _ => None,
    });
    let by = by.expect("a named decision");
    assert!(
        by.starts_with(&format!("{}@", account())) && by.ends_with("(ssh from 10.9.8.7)"),
        "the peer's account, not what it says (USER=ana): {by}"
    );
    assert_eq!(load_revision(state.path(), "web").map(|r| r.version), Some("v2".into()));

    server.close().await;
    assert!(!socket.exists(), "closing removes the socket");
    // Completed and unlocked: `trackside rollback` undoes it from a shell.
    let (code, out, err) = steer(state.path(), &["rollback", "web"]).await;
    assert_eq!(code, 0, "{err}");
    let history = trackside::deploy::revision::history_path(state.path(), "web");
    assert!(
        out.contains("web: v1 serves again (was v2): switched at once") && out.contains(&history.display().to_string()),
        "{out}"
    );
    assert_eq!(load_revision(state.path(), "web").map(|r| r.version), Some("v1".into()));
    assert!(
        std::fs::read_to_string(&history).is_ok_and(|h| h.contains("\"ana@")),
        "who, in the history"
    );
    let (code, _, err) = steer(state.path(), &["rollout", "web", "status"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("no trackside is running a rollout of `web`"), "{err}");
}

/// The CI case: a headless `trackside run` waits at a gate, a person
/// promotes it from a shell, and the socket goes with the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_headless_run_waits_at_its_gate_for_a_promote_from_a_shell() {
    let state = tempfile::tempdir().expect("tempdir");
    deploy(state.path(), &deploy_yaml("v1", 0.0, STRAIGHT)).await;
    let file = state.path().join("pipeline.yml");
    std::fs::write(&file, deploy_yaml("v2", 0.0, GATED)).expect("write the pipeline");
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_trackside"))
        .arg("--state-dir")
        .arg(state.path())
        .arg("run")
        .arg(&file)
        .arg("--headless")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start trackside");
    let socket = trackside::deploy::revision::control_socket_path(state.path(), "web");
    until_exists(&socket).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, out, err) = steer(state.path(), &["rollout", "web", "status"]).await;
        assert_eq!(code, 0, "{err}");
        if out.contains(": gate,") {
            break;
        }
        assert!(Instant::now() < deadline, "never reached the gate: {out}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (code, out, err) = steer(state.path(), &["rollout", "web", "promote"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("promote: step 2 passed by hand"), "{out}");
    let done = tokio::time::timeout(Duration::from_secs(60), run.wait_with_output())
        .await
        .expect("the run ends after the promote")
        .expect("trackside's output");
    let out = String::from_utf8_lossy(&done.stdout);
    assert!(
        done.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&done.stderr)
    );
    assert!(
        out.contains("waiting at a manual gate (step 2/3, canary 30.0%): promote with P in the UI or `trackside rollout web promote`"),
        "headless output says how to go on: {out}"
    );
    assert!(
        out.contains(&format!("promote: step 2 passed by hand (by {}@", account())),
        "{out}"
    );
    assert!(!socket.exists(), "the socket goes with the process");
    assert_eq!(load_revision(state.path(), "web").map(|r| r.version), Some("v2".into()));
}
