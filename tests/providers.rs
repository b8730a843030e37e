//! Deploys against real outside programs and the rolling strategy: HAProxy
//! (started by trackside, or running already and steered through its
//! socket), Prometheus judging from PromQL, and rolling updates through
//! both routers. HAProxy and Prometheus come from Debian's packages; CI
//! installs them (.ci/run), elsewhere a missing one skips its test.

mod common;

use std::time::Duration;

use common::deploy::{ANALYSED, STRAIGHT, blue_green_yaml, deploy, deploy_yaml, free_port, last_status, tool};
use trackside::deploy::rollout::{Command, load_revision};
use trackside::engine::RunResult;

/// 10%, a manual gate, 100%.
const GATED_AT_10: &str = "            - set_weight: 10\n            - pause: {}\n            - set_weight: 100\n";

/// Through an HAProxy this deploy starts, as a rehearsal: HAProxy and the
/// replicas live as long as the deploy (tests/live.rs has live services
/// behind HAProxy).
fn via_haproxy(yaml: &str) -> String {
    yaml.replace(
        "      traffic:",
        "      router: haproxy\n      keep_serving: false\n      traffic:",
    )
}

/// The same pipeline with a rolling strategy instead of the canary steps.
fn rolling(version: &str, replicas: u32, settings: &str) -> String {
    let yaml = deploy_yaml(version, 0.0, "");
    let cut = yaml.find("      strategy:").expect("strategy");
    format!(
        "{}      strategy: {{rolling: {{{settings}}}}}\n",
        &yaml[..cut].replace("replicas: 2", &format!("replicas: {replicas}"))
    )
}

fn ver(state: &std::path::Path) -> Option<String> {
    load_revision(state, "web").map(|r| r.version)
}

/// Processes still carrying the deploy's tag (replicas, HAProxy).
fn leftovers(state: &std::path::Path) -> usize {
    let needle = format!("TRACKSIDE_PROCESS_TAG=deploy:{}:web", state.display());
    trackside::exec::shell::tagged_pids(&needle, false, std::process::id()).len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_promotes_a_good_canary_and_rolls_a_bad_one_back() {
    if !tool("haproxy", "TRACKSIDE_REQUIRE_HAPROXY") {
        return;
    }
    let state = tempfile::tempdir().expect("tempdir");
    let (first, r) = deploy(state.path(), &via_haproxy(&deploy_yaml("v1", 0.0, ANALYSED))).await;
    assert_eq!(first.result, RunResult::Passed, "{:?}", r.lines("web"));
    let (good, r) = deploy(state.path(), &via_haproxy(&deploy_yaml("v2", 0.0, ANALYSED))).await;
    let lines = r.lines("web");
    assert_eq!(good.result, RunResult::Passed, "{lines:?}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("HAProxy for web listening on http://127.0.0.1:")),
        "{lines:?}"
    );
    // 25% with 2 + 2 servers is exact in HAProxy's integer weights.
    assert!(lines.iter().any(|l| l == "weight: canary 25.0%"), "{lines:?}");
    let last = last_status(&r);
    assert_eq!((last.router.as_str(), last.phase.as_str()), ("HAProxy", "completed"));
    // Both pools' requests were measured from HAProxy's own log.
    assert!(last.stable.requests > 0 && last.canary.requests > 0, "{last:?}");
    assert_eq!(ver(state.path()).as_deref(), Some("v2"));
    // Its config names its sockets: only trackside's user can read it.
    let mode = |p: std::path::PathBuf| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(&p)
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or_default()
    };
    let dir = state.path().join("haproxy");
    assert_eq!(mode(dir.clone()), 0o700, "HAProxy's folder");
    assert_eq!(mode(dir.join("web.cfg")), 0o600, "HAProxy's config");
    assert_eq!(mode(dir.join("web.pools.map")), 0o600, "HAProxy's map");
    // Rollback after completion, and its undo.
    // A rehearsal leaves no service process: only the record changes.
    assert!(
        r.handle
            .rollback_service("web")
            .await
            .expect("rollback")
            .starts_with("web: stable is v1 again (was v2); no service process runs it")
    );
    assert!(
        r.handle
            .rollback_service("web")
            .await
            .expect("undo")
            .starts_with("web: stable is v2 again (was v1)")
    );

    let (bad, r) = deploy(state.path(), &via_haproxy(&deploy_yaml("v3", 0.4, ANALYSED))).await;
    let lines = r.lines("web");
    assert_eq!(bad.result, RunResult::Failed, "{lines:?}");
    assert!(lines.iter().any(|l| l.contains("analysis: Fail")), "{lines:?}");
    assert!(lines.iter().any(|l| l == "weight: canary 0.0%"), "{lines:?}");
    assert!(last_status(&r).canary.errors > 0, "HAProxy logged the 5xx answers");
    assert_eq!(ver(state.path()).as_deref(), Some("v2"));
    assert_eq!(leftovers(state.path()), 0, "HAProxy and the replicas are gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_weights_change_without_reload_abort_at_a_gate_and_a_gate_timeout() {
    if !tool("haproxy", "TRACKSIDE_REQUIRE_HAPROXY") {
        return;
    }
    let state = tempfile::tempdir().expect("tempdir");
    deploy(state.path(), &via_haproxy(&deploy_yaml("v1", 0.0, STRAIGHT))).await;
    let (_s, mut r) =
        common::deploy::start_at_gate(state.path(), &via_haproxy(&deploy_yaml("v2", 0.0, GATED_AT_10))).await;
    // HAProxy itself has the weights: 10% of 2 + 2 servers, one process all along.
    let socket = state.path().join("haproxy").join("web.sock");
    let api = trackside::deploy::haproxy::RuntimeApi { socket };
    let servers = api.stat("web").await.expect("show stat");
    let weight = |name: &str| servers.iter().find(|s| s.name == name).map(|s| s.weight);
    let (ws, wc) = (weight("stable1").expect("stable1"), weight("canary1").expect("canary1"));
    let share = f64::from(wc) / f64::from(wc + ws);
    assert!((share - 0.10).abs() < 0.005, "weights {ws}/{wc}: {servers:?}");
    let pid_before = api.call("show info").await.expect("info");
    r.handle.rollout("web", Command::Abort).await.expect("abort");
    let sum = r.finished().await;
    assert_eq!(sum.result, RunResult::Failed);
    assert!(
        sum.jobs[0]
            .reason
            .as_deref()
            .is_some_and(|m| m.contains("Aborted (stable serving)")),
        "{:?}",
        sum.jobs[0].reason
    );
    assert!(pid_before.contains("Pid:"), "{pid_before}");
    assert_eq!(ver(state.path()).as_deref(), Some("v1"));

    let timed = "            - set_weight: 50\n            - pause: {timeout: 1, default: promote}\n";
    let (sum, r) = deploy(state.path(), &via_haproxy(&deploy_yaml("v2", 0.0, timed))).await;
    assert_eq!(sum.result, RunResult::Passed, "{:?}", r.lines("web"));
    assert!(r.lines("web").iter().any(|l| l.contains("gate timed out: promoting")));
    assert_eq!(ver(state.path()).as_deref(), Some("v2"));
}

/// One GET with extra header lines; returns (Set-Cookie value, body).
async fn get(addr: &str, headers: &str) -> (Option<String>, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!("GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n{headers}\r\n");
    s.write_all(req.as_bytes()).await.expect("send");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("answer");
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let cookie = head
        .lines()
        .find_map(|l| {
            l.strip_prefix("set-cookie: ")
                .or_else(|| l.strip_prefix("Set-Cookie: "))
        })
        .map(str::to_string);
    (cookie, body.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cookie_keeps_a_client_on_its_pool_through_haproxy_until_an_abort() {
    if !tool("haproxy", "TRACKSIDE_REQUIRE_HAPROXY") {
        return;
    }
    let state = tempfile::tempdir().expect("tempdir");
    deploy(state.path(), &via_haproxy(&deploy_yaml("v1", 0.0, STRAIGHT))).await;
    // The canary is kept 5 s after the abort: HAProxy serves meanwhile.
    let yaml = via_haproxy(&deploy_yaml("v2", 0.0, GATED_AT_10)).replace("abort_delay: 0", "abort_delay: 5");
    let (_s, mut r) = common::deploy::start_at_gate(state.path(), &yaml).await;
    let addr = r
        .lines("web")
        .iter()
        .find_map(|l| {
            l.strip_prefix("HAProxy for web listening on http://")
                .and_then(|rest| rest.split_whitespace().next())
                .map(str::to_string)
        })
        .expect("HAProxy's address is logged");
    // A preview request lands on the canary, and the answer says so.
    let (cookie, body) = get(&addr, "X-Canary: always\r\n").await;
    assert_eq!(body.trim(), "version v2");
    assert_eq!(cookie.as_deref(), Some("trackside_pool=canary; Path=/"));
    // At 10% the cookie keeps that client on v2: 20 of 20 (unpinned, about 2).
    for _ in 0..20 {
        let (_, body) = get(&addr, "Cookie: trackside_pool=canary\r\n").await;
        assert_eq!(body.trim(), "version v2", "sticky to the canary");
    }
    for _ in 0..5 {
        let (_, body) = get(&addr, "Cookie: trackside_pool=stable\r\n").await;
        assert_eq!(body.trim(), "version v1", "sticky to stable");
    }
    // An abort overrides the cookie at once: everyone is on stable.
    r.handle.rollout("web", Command::Abort).await.expect("abort");
    r.until(
        "the abort",
        |k| matches!(k, trackside::engine::EventKind::LogLine { line, .. } if line == "weight: canary 0.0%"),
    )
    .await;
    for _ in 0..10 {
        let (cookie, body) = get(&addr, "Cookie: trackside_pool=canary\r\n").await;
        assert_eq!(body.trim(), "version v1", "an aborted canary gets nobody");
        assert_eq!(cookie.as_deref(), Some("trackside_pool=stable; Path=/"));
    }
    assert_eq!(r.finished().await.result, RunResult::Failed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_through_haproxy_previews_green_by_header_and_switches_at_once() {
    if !tool("haproxy", "TRACKSIDE_REQUIRE_HAPROXY") {
        return;
    }
    let state = tempfile::tempdir().expect("tempdir");
    deploy(state.path(), &via_haproxy(&deploy_yaml("v1", 0.0, STRAIGHT))).await;
    let checked = "{pre_promotion_analysis: {interval: 2s}, scale_down_delay: 0.5}";
    let (sum, r) = deploy(state.path(), &via_haproxy(&blue_green_yaml("v2", 0.0, checked))).await;
    let lines = r.lines("web");
    assert_eq!(sum.result, RunResult::Passed, "{lines:?}");
    // Green was judged on preview traffic (X-Canary: always -> web_canary)
    // before production reached it.
    let pass = lines
        .iter()
        .position(|l| l.contains("analysis: Pass"))
        .expect("a passed preview");
    let switch = lines
        .iter()
        .position(|l| l == "weight: canary 100.0%")
        .expect("the switch");
    assert!(pass < switch, "{lines:?}");
    assert_eq!(ver(state.path()).as_deref(), Some("v2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_survives_a_restart_of_trackside_with_haproxy() {
    if !tool("haproxy", "TRACKSIDE_REQUIRE_HAPROXY") {
        return;
    }
    common::deploy::gate_survives_a_restart(&via_haproxy).await;
}

/// The same with a live service behind HAProxy: HAProxy and the replicas
/// stay with the service process while the trackside at the gate stops;
/// the next one adopts them and takes the gate up. (The test's state
/// folder goes at its end, and the service process with it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_survives_a_restart_of_trackside_with_a_live_service_behind_haproxy() {
    if !tool("haproxy", "TRACKSIDE_REQUIRE_HAPROXY") {
        return;
    }
    common::deploy::gate_survives_a_restart(&|y: &str| {
        y.replace("      traffic:", "      router: haproxy\n      traffic:")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_haproxy_is_steered_through_its_socket_and_measured_from_its_log() {
    if !tool("haproxy", "TRACKSIDE_REQUIRE_HAPROXY") {
        return;
    }
    let state = tempfile::tempdir().expect("tempdir");
    let dir = tempfile::tempdir().expect("tempdir");
    let listen = free_port();
    let socket = dir.path().join("admin.sock");
    let log = dir.path().join("log.sock");
    // The config docs/deployments.md gives for a running HAProxy.
    let cfg = trackside::deploy::haproxy::config(
        "web",
        format!("127.0.0.1:{listen}").parse().expect("addr"),
        &socket,
        &log,
        2,
        None,
    );
    let cfg_path = dir.path().join("haproxy.cfg");
    std::fs::write(&cfg_path, cfg).expect("cfg");
    let mut hx = tokio::process::Command::new("haproxy")
        .arg("-f")
        .arg(&cfg_path)
        .arg("-db")
        .kill_on_drop(true)
        .spawn()
        .expect("haproxy");
    let api = trackside::deploy::haproxy::RuntimeApi { socket: socket.clone() };
    common::deploy::until("HAProxy's socket", || socket.exists()).await;
    let mut ready = false;
    for _ in 0..100 {
        if api.call("show info").await.is_ok() {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ready, "HAProxy answers on its socket");
    let attach = |yaml: String| {
        yaml.replace("listen: 127.0.0.1:0", &format!("listen: 127.0.0.1:{listen}"))
            .replace(
                "      traffic:",
                &format!(
                    "      router: {{haproxy: {{socket: {}, backend: web, log_listen: \"{}\"}}}}\n      traffic:",
                    socket.display(),
                    log.display()
                ),
            )
    };
    let (first, r) = deploy(state.path(), &attach(deploy_yaml("v1", 0.0, ANALYSED))).await;
    assert_eq!(first.result, RunResult::Passed, "{:?}", r.lines("web"));
    let (good, r) = deploy(state.path(), &attach(deploy_yaml("v2", 0.0, ANALYSED))).await;
    let lines = r.lines("web");
    assert_eq!(good.result, RunResult::Passed, "{lines:?}");
    assert!(
        lines.iter().any(|l| l.contains("steering the running HAProxy")),
        "{lines:?}"
    );
    let last = last_status(&r);
    assert!(last.canary.requests > 0, "measured from the log: {last:?}");
    assert!(
        hx.try_wait().expect("wait").is_none(),
        "a HAProxy trackside did not start is left running"
    );
    let _ = hx.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_replaces_a_batch_at_a_time_and_an_unhealthy_batch_rolls_back() {
    let state = tempfile::tempdir().expect("tempdir");
    let (first, r) = deploy(state.path(), &rolling("v1", 3, "")).await;
    assert_eq!(first.result, RunResult::Passed, "{:?}", r.lines("web"));
    let (good, r) = deploy(state.path(), &rolling("v2", 3, "batch_size: 1, drain_timeout: 5")).await;
    let lines = r.lines("web");
    assert_eq!(good.result, RunResult::Passed, "{lines:?}");
    for want in [
        "rollout: batch 1 of 3: starting 1 new replica(s)",
        "rollout: batch 3 of 3: starting 1 new replica(s)",
        "rollout: 3 of 3 replicas updated",
    ] {
        assert!(lines.iter().any(|l| l == want), "{want}: {lines:?}");
    }
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.starts_with("drained and stopped stable v1#"))
            .count(),
        3,
        "{lines:?}"
    );
    let last = last_status(&r);
    assert_eq!((last.strategy.as_str(), last.phase.as_str()), ("rolling", "completed"));
    // Surge first: nobody got an error while replicas were replaced.
    assert!(last.stable.requests > 0 && last.canary.requests > 0, "{last:?}");
    assert_eq!((last.stable.errors, last.canary.errors), (0, 0), "{last:?}");
    assert_eq!(ver(state.path()).as_deref(), Some("v2"));

    // v3 never answers: the first batch is not healthy and v2 comes back.
    let bad = rolling("v3", 3, "batch_size: 2, max_unavailable: 1")
        .replace(
            &format!(
                "{} demo-service --port ${{PORT}} --version v3 --error-rate 0 --latency-ms 3",
                env!("CARGO_BIN_EXE_trackside")
            ),
            "exec sleep 600 # ${PORT}",
        )
        .replace("success_threshold: 2}", "success_threshold: 2, timeout: 2}");
    assert!(bad.contains("exec sleep 600"), "{bad}");
    let (sum, r) = deploy(state.path(), &bad).await;
    let lines = r.lines("web");
    assert_eq!(sum.result, RunResult::Failed, "{lines:?}");
    assert!(
        sum.jobs[0]
            .reason
            .as_deref()
            .is_some_and(|m| m.contains("rolled back") && m.contains("v2 kept serving")),
        "{:?}",
        sum.jobs[0].reason
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("rolling back: 0 updated replica(s) replaced")),
        "{lines:?}"
    );
    let last = last_status(&r);
    let healthy_old = last
        .replicas
        .iter()
        .filter(|v| v.name.starts_with("stable v2") && v.health == "healthy")
        .count();
    assert_eq!(
        healthy_old, 3,
        "the stopped old replica was started again: {:?}",
        last.replicas
    );
    assert_eq!(ver(state.path()).as_deref(), Some("v2"));
    assert_eq!(leftovers(state.path()), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_through_haproxy() {
    if !tool("haproxy", "TRACKSIDE_REQUIRE_HAPROXY") {
        return;
    }
    let state = tempfile::tempdir().expect("tempdir");
    deploy(state.path(), &via_haproxy(&rolling("v1", 2, ""))).await;
    let (sum, r) = deploy(state.path(), &via_haproxy(&rolling("v2", 2, "drain_timeout: 5"))).await;
    assert_eq!(sum.result, RunResult::Passed, "{:?}", r.lines("web"));
    let last = last_status(&r);
    assert_eq!((last.stable.errors, last.canary.errors), (0, 0), "{last:?}");
    assert!(last.canary.requests > 0, "{last:?}");
    assert_eq!(ver(state.path()).as_deref(), Some("v2"));
}

/// A Prometheus of its own, scraping `target` every second.
struct Prometheus {
    child: tokio::process::Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    async fn start(target: u16) -> Prometheus {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
             scrape_configs:\n  - job_name: trackside\n    static_configs: [{{targets: ['127.0.0.1:{target}']}}]\n"
        );
        std::fs::write(dir.path().join("prometheus.yml"), cfg).expect("cfg");
        let port = free_port();
        let child = tokio::process::Command::new("prometheus")
            .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("prometheus");
        let url = format!("http://127.0.0.1:{port}");
        let client = trackside::deploy::metrics::PromClient::new(trackside::pipeline::model::Prometheus {
            url: url.clone(),
            requests: String::new(),
            errors: String::new(),
            latency: String::new(),
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while client.scalar("1").await.is_err() {
            assert!(std::time::Instant::now() < deadline, "Prometheus did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Prometheus { child, url, _dir: dir }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_judges_from_promql_and_a_dead_one_fails_the_analysis() {
    if !tool("prometheus", "TRACKSIDE_REQUIRE_PROMETHEUS") {
        return;
    }
    let state = tempfile::tempdir().expect("tempdir");
    let metrics = free_port();
    let mut prom = Prometheus::start(metrics).await;
    let steps = "            - set_weight: 50\n            - analysis: {interval: 20s, count: 1, consecutive_error_limit: 1, metrics: [{metric: error_rate, max: 0.05}]}\n";
    let with_prom = |yaml: String, url: &str| {
        yaml.replace(
            "      listen: 127.0.0.1:0\n",
            &format!(
                "      listen: 127.0.0.1:0\n      metrics_listen: 127.0.0.1:{metrics}\n      metrics: {{prometheus: {{url: \"{url}\"}}}}\n"
            ),
        )
    };
    deploy(state.path(), &with_prom(deploy_yaml("v1", 0.0, steps), &prom.url)).await;
    let (good, r) = deploy(state.path(), &with_prom(deploy_yaml("v2", 0.0, steps), &prom.url)).await;
    let lines = r.lines("web");
    assert_eq!(good.result, RunResult::Passed, "{lines:?}");
    assert!(
        lines.iter().any(|l| l.starts_with("analyses query Prometheus at")),
        "{lines:?}"
    );
    assert!(lines.iter().any(|l| l.contains("analysis: Pass")), "{lines:?}");

    let (bad, r) = deploy(state.path(), &with_prom(deploy_yaml("v3", 0.4, steps), &prom.url)).await;
    let lines = r.lines("web");
    assert_eq!(bad.result, RunResult::Failed, "{lines:?}");
    assert!(
        lines.iter().any(|l| l.contains("check error_rate: High")),
        "the error rate came from PromQL: {lines:?}"
    );
    assert_eq!(ver(state.path()).as_deref(), Some("v2"));

    // Prometheus gone: no measurement twice in a row, with one allowed.
    let _ = prom.child.kill().await;
    let fast = steps.replace("interval: 20s", "interval: 1s");
    let (dead, r) = deploy(state.path(), &with_prom(deploy_yaml("v4", 0.0, &fast), &prom.url)).await;
    let lines = r.lines("web");
    assert_eq!(dead.result, RunResult::Failed, "{lines:?}");
    assert!(
        dead.jobs[0]
            .reason
            .as_deref()
            .is_some_and(|m| m.contains("no measurement 2 times in a row (1 allowed)")),
        "{:?}",
        dead.jobs[0].reason
    );
    assert!(
        lines.iter().any(|l| l.contains("no measurement from Prometheus")),
        "{lines:?}"
    );
    assert_eq!(ver(state.path()).as_deref(), Some("v2"));
}
