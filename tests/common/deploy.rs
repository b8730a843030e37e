//! Deploy helpers shared by the deployment tests: a pipeline serving the
//! demo service, one deploy run to its end, and the outside tools
//! (HAProxy, Prometheus) a test needs.

use std::time::Duration;

use trackside::deploy::rollout::{Command, load_revision};
use trackside::engine::{EventKind, RunResult, RunSummary};

use super::Running;

/// A deploy pipeline serving `version` with `error_rate`, with canary steps.
pub fn deploy_yaml(version: &str, error_rate: f64, steps: &str) -> String {
    let bin = env!("CARGO_BIN_EXE_trackside");
    format!(
        r#"name: rollout
jobs:
  web:
    deploy:
      service: web
      listen: 127.0.0.1:0
      version: {version}
      run: "{bin} demo-service --port ${{PORT}} --version {version} --error-rate {error_rate} --latency-ms 3"
      replicas: 2
      health: {{http: /healthz, interval: 0.1, success_threshold: 2}}
      traffic: {{rps: 150}}
      abort_delay: 0
      strategy:
        canary:
          steps:
{steps}
"#
    )
}

/// Straight to 100%: the first deploy of a service, or one with nothing to wait for.
pub const STRAIGHT: &str = "            - set_weight: 100\n";

/// 30%, a manual gate, 100%.
pub const GATED: &str = "            - set_weight: 30\n            - pause: {}\n            - set_weight: 100\n";

pub const ANALYSED: &str =
    "            - set_weight: 25\n            - analysis: {interval: 2s, count: 1}\n            - set_weight: 60\n";

/// Runs one deploy in `state`; returns the summary and the events seen.
pub async fn deploy(state: &std::path::Path, yaml: &str) -> (RunSummary, Running) {
    let (_s, mut r) = start_deploy(state, yaml).await;
    let sum = r.finished().await;
    (sum, r)
}

/// Starts a deploy in `state`. The `Setup` holds the project directory:
/// keep it while the run goes on.
pub async fn start_deploy(state: &std::path::Path, yaml: &str) -> (super::Setup, Running) {
    let mut s = super::setup(yaml);
    s.cfg.state_dir = state.to_path_buf();
    let r = super::start(&mut s).await;
    (s, r)
}

/// Starts a deploy in `state` and waits until its rollout is at a gate.
pub async fn start_at_gate(state: &std::path::Path, yaml: &str) -> (super::Setup, Running) {
    let (s, mut r) = start_deploy(state, yaml).await;
    r.until(
        "the gate",
        |k| matches!(k, EventKind::Rollout { status, .. } if status.phase == "gate"),
    )
    .await;
    (s, r)
}

/// Whether the outside program `name` is here to test against. Without it
/// the test is skipped with a note, unless `require` (an environment
/// variable) is `1` or CI is set: then a missing program is a failure.
pub fn tool(name: &str, require: &str) -> bool {
    let found = std::process::Command::new(name)
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok();
    if !found {
        let required = std::env::var(require).as_deref() == Ok("1") || std::env::var("CI").is_ok();
        assert!(
            !required,
            "{require}=1 (or CI) but `{name}` is not installed (apt-get install {name})"
        );
        eprintln!("SKIPPED: `{name}` is not installed; apt-get install {name} and set {require}=1 to run this test");
    }
    found
}

/// A free loopback port (bound, read, released) for a program that
/// insists on being told one.
pub fn free_port() -> u16 {
    trackside::deploy::replica::free_port().expect("a free port")
}

/// The last rollout status of the run.
pub fn last_status(r: &Running) -> trackside::deploy::rollout::Status {
    r.seen
        .iter()
        .rev()
        .find_map(|e| match &e.kind {
            trackside::engine::EventKind::Rollout { status, .. } => Some((**status).clone()),
            _ => None,
        })
        .expect("rollout status events")
}

/// Polls `f` every 20 ms until it holds, failing after a minute.
pub async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !f() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts `trackside run --json` on `file` in another process and returns it
/// once its rollout waits at a gate.
pub fn run_until_gate(state: &std::path::Path, file: &std::path::Path) -> std::process::Child {
    use std::io::BufRead as _;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_trackside"))
        .args(["run", "--json", "--no-watch", "--state-dir"])
        .arg(state)
        .arg(file)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    loop {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) if line.contains("\"type\":\"rollout\"") && line.contains("\"phase\":\"gate\"") => {
                return child;
            }
            Ok(_) => {}
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("no gate: {e}");
            }
        }
    }
}

/// A trackside stopped (SIGTERM) at a gate; the next one takes the gate up
/// where it was. `router` rewrites the pipeline (e.g. to use HAProxy).
pub async fn gate_survives_a_restart(router: &dyn Fn(&str) -> String) {
    let state = tempfile::tempdir().expect("tempdir");
    deploy(state.path(), &router(&deploy_yaml("v1", 0.0, STRAIGHT))).await;
    let yaml = router(&deploy_yaml("v2", 0.0, GATED));
    let file = state.path().join("v2.yml");
    std::fs::write(&file, &yaml).expect("write");
    // A trackside that stops (SIGTERM) while the gate waits.
    let mut child = run_until_gate(state.path(), &file);
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(130));
    assert!(
        trackside::deploy::rollout::load_gate(state.path(), "web").is_some(),
        "the gate is remembered"
    );
    // Nobody serves `trackside rollout web` now, and it says where it stood.
    let socket = trackside::deploy::revision::control_socket_path(state.path(), "web");
    assert!(!socket.exists(), "a stopped trackside removes its control socket");
    let err = trackside::control::call(state.path(), "web", &trackside::control::Request::Status)
        .expect_err("no trackside runs the rollout");
    assert!(
        err.contains("stopped at a gate (step 2, canary 30.0%, version v2)"),
        "{err}"
    );

    // The next trackside takes the gate up where it was: 30%, waiting.
    let (_s, mut r) = start_deploy(state.path(), &yaml).await;
    let ev = r
        .until(
            "the gate again",
            |k| matches!(k, EventKind::Rollout { status, .. } if status.phase == "gate"),
        )
        .await;
    if let EventKind::Rollout { status, .. } = &ev.kind {
        assert_eq!((status.step, status.weight), (1, 300), "{status:?}");
    }
    assert!(
        r.lines("web").iter().any(|l| l.contains("taking it up again")),
        "{:?}",
        r.lines("web")
    );
    r.handle.rollout("web", Command::Promote).await.expect("promote");
    let sum = r.finished().await;
    assert_eq!(sum.result, RunResult::Passed, "{:?}", r.lines("web"));
    assert!(
        trackside::deploy::rollout::load_gate(state.path(), "web").is_none(),
        "forgotten once settled"
    );
    assert_eq!(load_revision(state.path(), "web").map(|r| r.version), Some("v2".into()));
}

/// `deploy_yaml` with a blue-green strategy instead of canary steps.
pub fn blue_green_yaml(version: &str, error_rate: f64, strategy: &str) -> String {
    let canary = deploy_yaml(version, error_rate, "");
    let head = canary.split("      strategy:").next().unwrap_or_default().to_string();
    format!("{head}      strategy:\n        blue_green: {strategy}\n")
}
