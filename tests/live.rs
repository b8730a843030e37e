//! Live services: the promoted revision keeps serving after trackside
//! exits, the next rollout adopts what runs, a rollback switches to a
//! revision that is really there, a dead replica is started again, and no
//! request fails through a promotion, a rollback or a restart.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::deploy::{GATED, STRAIGHT, deploy, deploy_yaml, run_until_gate};
use trackside::deploy::rollout::{Command, load_revision};
use trackside::deploy::service;
use trackside::engine::{EventKind, RunResult};

const LIMIT: Duration = Duration::from_secs(60);

/// What marks this test process's replicas (their environment has it):
/// other tests, and other people, run demo services too.
fn mark() -> String {
    format!("LIVE_TEST={}", std::process::id())
}

/// The pipeline of `deploy_yaml` with a short scale-down delay, its
/// replicas marked.
fn live_yaml(version: &str, steps: &str, scale_down: u32) -> String {
    let (k, v) = mark()
        .split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .expect("mark");
    deploy_yaml(version, 0.0, steps)
        .replace(
            "name: rollout\n",
            &format!("name: rollout\nglobal_env:\n  {k}: \"{v}\"\n"),
        )
        .replace(
            "      abort_delay: 0\n",
            &format!("      abort_delay: 0\n      scale_down_delay: {scale_down}\n"),
        )
}

fn client() -> hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Empty<bytes::Bytes>,
> {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http()
}

/// GET / through the router: the body, or why not.
async fn get(listen: &str) -> Result<String, String> {
    use http_body_util::BodyExt as _;
    let resp = client()
        .get(format!("http://{listen}/").parse().map_err(|e| format!("{e}"))?)
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    let text = String::from_utf8_lossy(&body).trim().to_string();
    if status.is_success() {
        Ok(text)
    } else {
        Err(format!("{status}: {text}"))
    }
}

fn listen(state: &std::path::Path) -> String {
    service::saved(state, "web").expect("a live service").listen
}

/// Waits (bounded) until `cond` holds.
async fn until(what: &str, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + LIMIT;
    while !cond().await {
        assert!(Instant::now() < deadline, "{what}: not within {LIMIT:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// This test process's replica processes of `version` running now (demo
/// services, not their `sh -c`).
fn replicas_of(version: &str) -> usize {
    let needle = format!("--version {version} ");
    let mark = mark();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            std::fs::read(e.path().join("environ"))
                .is_ok_and(|env| env.split(|&b| b == 0).any(|kv| kv == mark.as_bytes()))
        })
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains("demo-service") && c.contains(&needle) && !c.starts_with("/bin/sh"))
        .count()
}

/// Requests sent through the router while a test goes on, and the ones
/// that failed (a connection refused or a 5xx: the demo service itself
/// never fails here).
struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    latencies: Arc<std::sync::Mutex<Vec<f64>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    fn start(listen: String) -> Load {
        let (stop, sent, failed) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
        );
        let latencies = Arc::new(std::sync::Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let (stop, sent, failed, latencies) = (stop.clone(), sent.clone(), failed.clone(), latencies.clone());
            async move {
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let answer = get(&listen).await;
                    let n = sent.fetch_add(1, Ordering::Relaxed);
                    if let Err(e) = answer {
                        eprintln!("request {n} failed: {e}");
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    if let Ok(mut l) = latencies.lock() {
                        l.push(t.elapsed().as_secs_f64() * 1000.0);
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        });
        Load {
            stop,
            sent,
            failed,
            latencies,
            task,
        }
    }

    /// (sent, failed, p99 ms).
    async fn finish(self) -> (u64, u64, f64) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        let mut l = self.latencies.lock().map(|l| l.clone()).unwrap_or_default();
        l.sort_by(f64::total_cmp);
        let p99 = l
            .get((l.len() * 99 / 100).min(l.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0);
        (
            self.sent.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            p99,
        )
    }
}

/// A test's state folder; its service is stopped before the folder goes
/// (even when the test failed), so no router or replica outlives the test.
/// Removing the folder under a running service could race the files it
/// writes and leave both behind.
struct State(tempfile::TempDir);

impl State {
    fn new() -> State {
        State(tempfile::tempdir().expect("tempdir"))
    }

    fn path(&self) -> &std::path::Path {
        self.0.path()
    }
}

impl Drop for State {
    fn drop(&mut self) {
        let _ = std::process::Command::new(env!("CARGO_BIN_EXE_trackside"))
            .arg("--state-dir")
            .arg(self.0.path())
            .args(["service", "web", "stop"])
            .output();
    }
}

fn trackside(state: &std::path::Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_trackside"))
        .arg("--state-dir")
        .arg(state)
        .args(args)
        .output()
        .expect("trackside")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_revision_keeps_serving_the_next_adopts_it_and_a_rollback_brings_the_old_one_back() {
    let state = State::new();
    let s = state.path();
    // The projects stay: replicas run in them, and start there again.
    let (_p1, mut r) = common::deploy::start_deploy(s, &live_yaml("a1", STRAIGHT, 1)).await;
    let first = r.finished().await;
    assert_eq!(first.result, RunResult::Passed, "{:?}", r.lines("web"));
    drop(r);
    // The run is over; a1 answers through the router, from this process.
    let addr = listen(s);
    assert_eq!(get(&addr).await.as_deref(), Ok("version a1"));
    assert_eq!(replicas_of("a1"), 2);
    assert!(service::running(s, "web"));
    let listed = trackside(s, &["services"]);
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(
        text.starts_with(&format!("web  serving  http://{addr}  a1 100%")),
        "{text}"
    );
    // JSON for scripts: what serves, never the replicas' environment.
    let json = trackside(s, &["services", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).expect("json");
    assert_eq!(v[0]["stable_version"], "a1");
    assert_eq!(v[0]["replicas"].as_array().map(Vec::len), Some(2));
    assert!(
        !String::from_utf8_lossy(&json.stdout).contains("LIVE_TEST"),
        "no environment"
    );
    // A rehearsal would change what the live service remembers: refused.
    let rehearsal = live_yaml("a9", STRAIGHT, 1).replace(
        "      abort_delay: 0\n",
        "      abort_delay: 0\n      keep_serving: false\n",
    );
    let (sum, r) = deploy(s, &rehearsal).await;
    assert_eq!(sum.result, RunResult::Failed);
    assert!(
        sum.jobs[0]
            .reason
            .as_deref()
            .is_some_and(|m| m.contains("service `web` is live")),
        "{:?} {:?}",
        sum.jobs[0].reason,
        r.lines("web")
    );
    assert_eq!(load_revision(s, "web").map(|r| r.version), Some("a1".into()));

    // a2 as a canary next to the running a1: adopted, not started again.
    let load = Load::start(addr.clone());
    let (_p2, mut r) = common::deploy::start_deploy(
        s,
        &live_yaml(
            "a2",
            "            - set_weight: 50\n            - pause: {duration: 1}\n            - set_weight: 100\n",
            // Also what a rollback waits before it stops what it left.
            3,
        ),
    )
    .await;
    let good = r.finished().await;
    let lines = r.lines("web");
    assert_eq!(good.result, RunResult::Passed, "{lines:?}");
    assert!(
        lines
            .iter()
            .any(|l| l == "adopting the 2 running replica(s) of a1 (no copy started)"),
        "{lines:?}"
    );
    assert!(
        !lines.iter().any(|l| l.starts_with("started stable")),
        "no second a1: {lines:?}"
    );
    assert_eq!(get(&addr).await.as_deref(), Ok("version a2"));
    // a1 goes once its scale-down delay (3 s) is over, without this trackside.
    until("a1 stops", async || replicas_of("a1") == 0).await;
    assert_eq!(replicas_of("a2"), 2);

    // Rolled back after the delay: a1 is started, checked, then switched to.
    let out = trackside(s, &["rollback", "web"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.starts_with("web: a1 serves again (was a2): started 2 replica(s) of it, healthy, then switched"),
        "{said}"
    );
    assert!(
        said.contains("the 2 other replica(s) stop in 3s"),
        "the deploy's scale_down_delay: {said}"
    );
    assert_eq!(get(&addr).await.as_deref(), Ok("version a1"));
    // Within the rollback's delay a2 is still up: going back again is at once.
    let out = trackside(s, &["rollback", "web"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("a2 serves again (was a1): switched at once"), "{said}");
    assert_eq!(get(&addr).await.as_deref(), Ok("version a2"));
    let history: Vec<String> = trackside::deploy::rollout::history(s, "web")
        .iter()
        .map(|h| format!("{} {}", h.action, h.revision.version))
        .collect();
    assert_eq!(
        history,
        ["first_deploy a1", "promoted a2", "rolled_back a1", "rolled_back a2"]
    );
    assert_eq!(load_revision(s, "web").map(|r| r.version), Some("a2".into()));

    // A replica that dies is started again on its port; traffic goes on.
    let before = service::saved(s, "web").expect("state");
    let victim = before.serving(trackside::deploy::router::Pool::Stable)[0].clone();
    nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(i32::try_from(victim.pid).expect("pid")),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the replica");
    until("the replica is started again", async || {
        service::saved(s, "web").is_some_and(|st| {
            st.replicas
                .iter()
                .any(|r| r.spec.name == victim.spec.name && r.restarts == 1 && r.pid != 0 && r.pid != victim.pid)
        })
    })
    .await;
    assert_eq!(get(&addr).await.as_deref(), Ok("version a2"));
    let (sent, failed, p99) = load.finish().await;
    println!("through a promotion, two rollbacks and a restart: {sent} requests, {failed} failed, p99 {p99:.1} ms");
    assert!(sent > 100, "{sent}");
    assert_eq!(failed, 0, "no request fails");

    // Stopping the service stops its replicas and router; the history stays.
    let out = trackside(s, &["service", "web", "stop"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(replicas_of("a2"), 0);
    assert!(get(&addr).await.is_err(), "nothing listens");
    assert_eq!(trackside::deploy::rollout::history(s, "web").len(), 4);
    let text = String::from_utf8_lossy(&trackside(s, &["services"]).stdout).to_string();
    assert!(
        text.contains("web  stopped") && text.contains("stopped: 2 replica(s) of a2"),
        "{text}"
    );

    // Started again: the same address, the same revision, healthy first.
    let out = trackside(s, &["service", "web", "start"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains(&format!("`web` serves again on http://{addr}: 2 replica(s) of a2")),
        "{said}"
    );
    assert_eq!(get(&addr).await.as_deref(), Ok("version a2"));
    // Scaled out and in; traffic goes on.
    let out = trackside(s, &["service", "web", "scale", "3"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("3 stable replica(s) of a2 (was 2)"),
        "{out:?}"
    );
    assert_eq!(replicas_of("a2"), 3);
    let out = trackside(s, &["service", "web", "scale", "1"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("1 stable replica(s) of a2 (was 3)"),
        "{out:?}"
    );
    until("two replicas stop", async || replicas_of("a2") == 1).await;
    assert_eq!(get(&addr).await.as_deref(), Ok("version a2"));
    let out = trackside(s, &["service", "web", "scale", "0"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(trackside(s, &["service", "web", "stop"]).status.code(), Some(0));
    assert_eq!(replicas_of("a2"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_trackside_leaves_traffic_where_it_was_and_the_next_resumes_the_gate() {
    let state = State::new();
    let s = state.path();
    // Its project stays: a replica that dies starts again there.
    let (_p1, mut first) = common::deploy::start_deploy(s, &live_yaml("b1", STRAIGHT, 1)).await;
    assert_eq!(first.finished().await.result, RunResult::Passed);
    let addr = listen(s);
    let yaml = live_yaml("b2", GATED, 1);
    let file = s.join("b2.yml");
    std::fs::write(&file, &yaml).expect("write");
    let mut child = run_until_gate(s, &file);
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    // The service process keeps the split of the last decision: 30% to b2.
    let st = service::saved(s, "web").expect("state");
    assert_eq!(st.weight, 300, "{st:?}");
    let mut seen = std::collections::BTreeMap::<String, u32>::new();
    for _ in 0..200 {
        *seen.entry(get(&addr).await.expect("served")).or_insert(0) += 1;
    }
    let b2 = seen.get("version b2").copied().unwrap_or(0);
    assert!((20..=100).contains(&b2), "about 30% to b2: {seen:?}");
    // The next trackside takes the gate up, and promoting finishes it.
    let (_s, mut r) = common::deploy::start_deploy(s, &yaml).await;
    r.until(
        "the gate again",
        |k| matches!(k, EventKind::Rollout { status, .. } if status.phase == "gate"),
    )
    .await;
    assert!(
        r.lines("web").iter().any(|l| l.contains("taking it up again")),
        "{:?}",
        r.lines("web")
    );
    // A stable replica dying at the gate does not fail the rollout: the
    // service process starts it again.
    let victim = service::saved(s, "web")
        .expect("state")
        .serving(trackside::deploy::router::Pool::Stable)[0]
        .clone();
    nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(i32::try_from(victim.pid).expect("pid")),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill a stable replica");
    r.until("the rollout's word on it", |k| {
        matches!(k, EventKind::LogLine { line, .. } if line.contains("it died, and the service process starts it again"))
    })
    .await;
    until("the replica is back", async || {
        service::saved(s, "web").is_some_and(|st| {
            st.replicas
                .iter()
                .any(|r| r.spec.name == victim.spec.name && r.restarts == 1 && r.pid != 0)
        })
    })
    .await;
    // Not stopped under a deploy's feet.
    let out = trackside(s, &["service", "web", "stop"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("a deploy of `web` is running"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        r.lines("web")
            .iter()
            .any(|l| l.starts_with("2 replica(s) an earlier deploy left (b2#")),
        "the killed trackside's canary goes: {:?}",
        r.lines("web")
    );
    r.handle.rollout("web", Command::Promote).await.expect("promote");
    assert_eq!(r.finished().await.result, RunResult::Passed, "{:?}", r.lines("web"));
    assert_eq!(get(&addr).await.as_deref(), Ok("version b2"));
    // The old canary is gone; two b2 replicas serve.
    until("two b2 replicas", async || replicas_of("b2") == 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_canary_leaves_stable_serving_and_the_canary_goes_after_its_delay() {
    let state = State::new();
    let s = state.path();
    // The project stays: its replicas run there, and more start there.
    let (_p, mut r) = common::deploy::start_deploy(s, &live_yaml("c1", STRAIGHT, 1)).await;
    assert_eq!(r.finished().await.result, RunResult::Passed);
    let addr = listen(s);
    let yaml = live_yaml("c2", GATED, 1).replace("abort_delay: 0", "abort_delay: 1");
    let (_s, mut r) = common::deploy::start_at_gate(s, &yaml).await;
    r.handle.rollout("web", Command::Abort).await.expect("abort");
    assert_eq!(r.finished().await.result, RunResult::Failed);
    assert_eq!(get(&addr).await.as_deref(), Ok("version c1"));
    until("the aborted canary stops", async || replicas_of("c2") == 0).await;
    assert_eq!(replicas_of("c1"), 2);
    assert_eq!(load_revision(s, "web").map(|r| r.version), Some("c1".into()));
    // The rollout's result is in the history, and `services` says it...
    let text = String::from_utf8_lossy(&trackside(s, &["services"]).stdout).to_string();
    assert!(
        text.contains("  last: c2 aborted (Aborted (stable serving): "),
        "{text}"
    );
    // ...but a rollback goes to the revision that served before, not to it.
    let out = trackside(s, &["rollback", "web"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("has no earlier revision than c1"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // `logs` says whose each log is: the aborted canary's run no more.
    let logs = String::from_utf8_lossy(&trackside(s, &["service", "web", "logs"]).stdout).to_string();
    let headers: Vec<&str> = logs.lines().filter(|l| l.starts_with("== ")).collect();
    assert!(
        headers
            .iter()
            .filter(|h| h.contains("/c2_") && h.ends_with("(no longer running) =="))
            .count()
            == 2
            && headers
                .iter()
                .filter(|h| h.contains("/c1_") && h.ends_with(" stable) =="))
                .count()
                == 2,
        "{headers:#?}"
    );

    // `logs --follow` prints what replicas write from now on, a new one's too.
    let mut follow = std::process::Command::new(env!("CARGO_BIN_EXE_trackside"))
        .arg("--state-dir")
        .arg(s)
        .args(["service", "web", "logs", "--follow"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("logs --follow");
    let (tx, rx) = std::sync::mpsc::channel();
    let out = follow.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let scaled = trackside(s, &["service", "web", "scale", "3"]);
    assert!(scaled.status.success(), "{}", String::from_utf8_lossy(&scaled.stderr));
    let deadline = Instant::now() + LIMIT;
    let mut seen = Vec::new();
    while !seen
        .iter()
        .any(|l: &String| l.contains(" > demo-service c1 listening on http://"))
    {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => seen.push(l),
            Err(_) => panic!("the new replica's first line, followed: {seen:#?}"),
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();
    // A reader that goes (`| head`) ends it, even with nothing new to print.
    let cmd = format!(
        "{} --state-dir {} service web logs --follow | head -1",
        env!("CARGO_BIN_EXE_trackside"),
        s.display()
    );
    let mut piped = std::process::Command::new("sh")
        .args(["-c", &cmd])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("sh");
    let deadline = Instant::now() + LIMIT;
    while piped.try_wait().expect("wait").is_none() {
        assert!(Instant::now() < deadline, "logs --follow | head -1 did not end");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_whose_state_folder_goes_stops_with_its_replicas() {
    let state = tempfile::tempdir().expect("tempdir");
    let s = state.path().to_path_buf();
    deploy(&s, &live_yaml("d7", STRAIGHT, 1)).await;
    let addr = listen(&s);
    assert_eq!(get(&addr).await.as_deref(), Ok("version d7"));
    drop(state);
    until("the service stops", async || {
        replicas_of("d7") == 0 && get(&addr).await.is_err()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_whose_router_died_is_still_stopped_with_its_replicas() {
    let state = State::new();
    let s = state.path();
    let (_p, mut r) = common::deploy::start_deploy(s, &live_yaml("e1", STRAIGHT, 1)).await;
    assert_eq!(r.finished().await.result, RunResult::Passed);
    let owner = std::fs::read_to_string(service::paths(s, "web").pid).expect("pid file");
    let (pid, _) = owner.trim().split_once(':').expect("pid:start");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid.parse().expect("pid")),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the service process");
    until("the service process is gone", async || !service::running(s, "web")).await;
    assert_eq!(replicas_of("e1"), 2, "its replicas outlive it");
    let text = String::from_utf8_lossy(&trackside(s, &["services"]).stdout).to_string();
    assert!(text.contains("web  ROUTER DOWN"), "{text}");
    let out = trackside(s, &["service", "web", "stop"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("its service process was not running; stopped the 2 replica(s) it had left"),
        "{said}"
    );
    assert_eq!(replicas_of("e1"), 0);
    let again = trackside(s, &["service", "web", "stop"]);
    assert_eq!(again.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&again.stdout).contains("is stopped already"));
}

/// The pid in a `pid:start` file.
fn pid_in(path: &std::path::Path) -> i32 {
    let owner = std::fs::read_to_string(path).expect("pid file");
    let (pid, _) = owner.trim().split_once(':').expect("pid:start");
    pid.parse().expect("pid")
}

fn kill9(pid: i32) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).expect("kill");
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_behind_haproxy_keeps_serving_without_its_service_process_and_stops_with_it() {
    if !common::deploy::tool("haproxy", "TRACKSIDE_REQUIRE_HAPROXY") {
        return;
    }
    let state = State::new();
    let s = state.path();
    let via = |y: String| y.replace("      traffic:", "      router: haproxy\n      traffic:");
    let (_p1, mut r) = common::deploy::start_deploy(s, &via(live_yaml("h1", STRAIGHT, 1))).await;
    let first = r.finished().await;
    let lines = r.lines("web");
    assert_eq!(first.result, RunResult::Passed, "{lines:?}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("HAProxy for web listening on http://") && l.contains("service process keeps it")),
        "{lines:?}"
    );
    drop(r);
    // The run is over: HAProxy (a process of its own) answers with h1.
    let p = service::paths(s, "web");
    let haproxy = pid_in(&p.haproxy_pid);
    let addr = listen(s);
    assert_eq!(get(&addr).await.as_deref(), Ok("version h1"));
    let text = String::from_utf8_lossy(&trackside(s, &["services"]).stdout).to_string();
    assert!(
        text.starts_with(&format!("web  serving  http://{addr} (HAProxy)  h1 100%")),
        "{text}"
    );
    // Its router changes only once it is stopped.
    let (sum, _) = deploy(s, &live_yaml("h9", STRAIGHT, 1)).await;
    assert!(
        sum.jobs[0].reason.as_deref().is_some_and(|m| m.contains(
            "service `web` is served through HAProxy, this deploy asks for the built-in router: stop it first"
        )),
        "{:?}",
        sum.jobs[0].reason
    );

    // h2 as a canary next to the adopted h1, under load, measured from
    // HAProxy's own log.
    let load = Load::start(addr.clone());
    let (_p2, mut r) = common::deploy::start_deploy(
        s,
        &via(live_yaml(
            "h2",
            "            - set_weight: 50\n            - pause: {duration: 1}\n            - set_weight: 100\n",
            1,
        )),
    )
    .await;
    let second = r.finished().await;
    let lines = r.lines("web");
    assert_eq!(second.result, RunResult::Passed, "{lines:?}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("adopting the 2 running replica(s) of h1 (no copy started)")),
        "{lines:?}"
    );
    let last = common::deploy::last_status(&r);
    assert_eq!(last.router, "HAProxy (service process)");
    assert!(
        last.canary.requests > 0,
        "the canary's requests, from HAProxy's log: {last:?}"
    );
    drop(r);
    assert_eq!(get(&addr).await.as_deref(), Ok("version h2"));
    until("h1 stopped after the scale-down delay", async || replicas_of("h1") == 0).await;
    assert_eq!(pid_in(&p.haproxy_pid), haproxy, "one HAProxy all along");

    // The service process killed: HAProxy and the replicas serve on.
    kill9(pid_in(&p.pid));
    until("the service process is gone", async || !service::running(s, "web")).await;
    assert_eq!(get(&addr).await.as_deref(), Ok("version h2"));
    let text = String::from_utf8_lossy(&trackside(s, &["services"]).stdout).to_string();
    assert!(text.contains("web  SERVICE PROCESS DOWN"), "{text}");
    // A new one adopts HAProxy (not started again) and the replicas.
    let out = trackside(s, &["service", "web", "start"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("its service process was not running; started again on http://")
            && said.contains("it took up the 2 running replica(s) and its HAProxy"),
        "{said}"
    );
    assert!(service::running(s, "web"));
    // HAProxy has 16 slots a pool: more replicas than that are refused up front.
    let out = trackside(s, &["service", "web", "scale", "17"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("at most 16 replicas"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(pid_in(&p.haproxy_pid), haproxy, "adopted, not started again");
    assert_eq!(replicas_of("h2"), 2);

    // Rollback: h1 is gone, so it is started, checked and switched to.
    let out = trackside(s, &["rollback", "web"]);
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{said}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        said.contains("started 2 replica(s) of it, healthy, then switched"),
        "{said}"
    );
    assert_eq!(get(&addr).await.as_deref(), Ok("version h1"));
    let (sent, failed, p99) = load.finish().await;
    eprintln!("through HAProxy: {sent} requests, {failed} failed, p99 {p99:.1} ms");
    assert!(sent > 100, "the load ran: {sent}");
    assert_eq!(
        failed, 0,
        "no request failed through the promotion, the restart and the rollback"
    );

    // HAProxy itself killed: its service process starts it again, same address.
    kill9(haproxy);
    until("HAProxy started again", async || {
        std::fs::read_to_string(&p.haproxy_pid)
            .ok()
            .and_then(|t| t.trim().split_once(':').and_then(|(pid, _)| pid.parse::<i32>().ok()))
            .is_some_and(|pid| pid != haproxy && alive(pid))
            && get(&addr).await.as_deref() == Ok("version h1")
    })
    .await;

    // Stopped: HAProxy goes with the replicas.
    let again = pid_in(&p.haproxy_pid);
    let out = trackside(s, &["service", "web", "stop"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!alive(again), "HAProxy stopped");
    assert_eq!(replicas_of("h1") + replicas_of("h2"), 0);
    assert!(get(&addr).await.is_err(), "nothing listens on {addr}");
}

/// `trackside services --ui` at 80x24 in a real terminal: the live
/// service, what serves, its replicas' health, and the charts of the
/// traffic sent through its router; `q` leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_services_view_shows_a_live_service_and_its_traffic_at_80x24() {
    let state = State::new();
    let s = state.path();
    deploy(s, &live_yaml("f1", STRAIGHT, 1)).await;
    let addr = listen(s);
    let done = s.join("view-ended");
    let command = format!(
        "{} --state-dir {} services --ui --ascii; echo $? > {}; sleep 60",
        env!("CARGO_BIN_EXE_trackside"),
        s.display(),
        done.display()
    );
    let Some(t) = common::tmux::Tmux::start_sized("services", s, &command, (80, 24)) else {
        return;
    };
    t.wait_for(&[
        "services",
        "web",
        "serving",
        "f1 100%",
        "2/2 up",
        "last change: f1 deployed first",
    ]);
    // Traffic through the router, until the charts have some.
    let sending = Arc::new(AtomicBool::new(true));
    let (go, to) = (sending.clone(), addr.clone());
    let load = tokio::spawn(async move {
        while go.load(Ordering::Relaxed) {
            let _ = get(&to).await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    t.wait_for(&["err%", "p95ms", "up  stable"]);
    // Requests counted: a traffic line whose rate is not zero.
    let start = Instant::now();
    loop {
        let screen = t.screen();
        let rate = screen
            .lines()
            .find_map(|l| l.split("traffic: ").nth(1))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok());
        if rate.is_some_and(|r| r > 0) {
            break;
        }
        assert!(start.elapsed() < LIMIT, "no traffic counted:\n{screen}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sending.store(false, Ordering::Relaxed);
    let _ = load.await;
    t.keys(&["q"]);
    assert_eq!(common::tmux::wait_file(&done).trim(), "0", "q leaves the view");
}
