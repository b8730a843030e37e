//! Runs a canary rollout of local processes: the effects of the
//! [`Canary`] machine, performed.
//!
//! The stable revision is the one remembered for the service in the state
//! directory (`<state>/services/<service>.json`); the new one is the job's
//! `deploy:` block. Both run as process groups on ports trackside assigns,
//! behind the built-in router on `listen`. The processes live as long as
//! the deploy job: when the rollout settles the job ends and they stop, and
//! what is remembered is which revision is stable now.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::canary::{Canary, CanarySpec, Effect, Input, Phase, Step};
use super::demo::{TrafficCounts, generate};
use super::judge::{self, JudgeConfig, Verdict};
use super::router::{Pool, Router, Totals};
use crate::pipeline::model::{Deploy, HealthCheck, Probe, Strategy, ThresholdMetric};

/// A service revision, as remembered between deploys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revision {
    pub version: String,
    pub run: String,
    pub replicas: u32,
}

fn revision_path(state: &Path, service: &str) -> PathBuf {
    let safe: String = service
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    state.join("services").join(format!("{safe}.json"))
}

pub fn load_revision(state: &Path, service: &str) -> Option<Revision> {
    let text = std::fs::read_to_string(revision_path(state, service)).ok()?;
    serde_json::from_str(&text).ok()
}

/// One change of a service's stable revision, appended to
/// `<state>/services/<service>.history.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub ts_ms: u64,
    /// `first_deploy`, `promoted`, `rolled_back`.
    pub action: String,
    pub by: String,
    pub revision: Revision,
}

fn history_path(state: &Path, service: &str) -> PathBuf {
    revision_path(state, service).with_extension("history.jsonl")
}

pub fn history(state: &Path, service: &str) -> Vec<HistoryEntry> {
    std::fs::read_to_string(history_path(state, service))
        .map(|t| t.lines().filter_map(|l| serde_json::from_str(l).ok()).collect())
        .unwrap_or_default()
}

/// Makes `rev` the stable revision and records who did it and why.
pub fn record_revision(state: &Path, service: &str, rev: &Revision, action: &str, by: &str) -> Result<(), String> {
    save_revision(state, service, rev)?;
    let entry = HistoryEntry {
        ts_ms: crate::store::now_ms(),
        action: action.into(),
        by: by.into(),
        revision: rev.clone(),
    };
    let line = serde_json::to_string(&entry).map_err(|e| e.to_string())?;
    let path = history_path(state, service);
    use std::io::Write as _;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| writeln!(f, "{line}"))
        .map_err(|e| format!("cannot append to {}: {e}", path.display()))
}

/// Rolls a service back to the stable revision it had before the current
/// one (also after a completed rollout). Returns (now, was).
pub fn rollback(state: &Path, service: &str, by: &str) -> Result<(Revision, Revision), String> {
    let current = load_revision(state, service)
        .ok_or_else(|| format!("service `{service}` has no deployed revision in {}", state.display()))?;
    let entries = history(state, service);
    // The newest entry is the current revision; the one before it is what to go back to.
    let previous = entries
        .iter()
        .rev()
        .map(|e| &e.revision)
        .find(|r| **r != current)
        .cloned()
        .ok_or_else(|| format!("service `{service}` has no earlier revision than {}", current.version))?;
    record_revision(state, service, &previous, "rolled_back", by)?;
    Ok((previous, current))
}

pub fn save_revision(state: &Path, service: &str, rev: &Revision) -> Result<(), String> {
    write_json(&revision_path(state, service), rev)
}

/// Where a rollout stood when it waited at a gate; kept until the rollout
/// settles, so a restarted trackside takes the gate up again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateState {
    pub version: String,
    pub run: String,
    pub step: usize,
    pub weight: u32,
    pub since_ms: u64,
}

fn gate_path(state: &Path, service: &str) -> PathBuf {
    revision_path(state, service).with_extension("gate.json")
}

pub fn load_gate(state: &Path, service: &str) -> Option<GateState> {
    serde_json::from_str(&std::fs::read_to_string(gate_path(state, service)).ok()?).ok()
}

fn save_gate(state: &Path, service: &str, g: &GateState) -> Result<(), String> {
    write_json(&gate_path(state, service), g)
}

/// Writes `value` as JSON to a temp file and renames it into place, so a
/// reader never sees half a file.
fn write_json(path: &Path, value: &impl Serialize) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let tmp = path.with_extension("tmp");
    let text = serde_json::to_string_pretty(value).map_err(|e| e.to_string())?;
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// A steering command from a person.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    Promote,
    PromoteFull,
    Abort,
    Retry,
    Rollback,
    Pause,
    Resume,
}

impl Command {
    pub fn input(self, by: String) -> Input {
        match self {
            Command::Promote => Input::Promote { by },
            Command::PromoteFull => Input::PromoteFull { by },
            Command::Abort => Input::Abort { by },
            Command::Retry => Input::Retry { by },
            Command::Rollback => Input::Rollback { by },
            Command::Pause => Input::Pause { by },
            Command::Resume => Input::Resume { by },
        }
    }
}

/// Who is steering: user@host, and the SSH client address when there is one.
pub fn who() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    match std::env::var("SSH_CLIENT")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
    {
        Some(ip) => format!("{user}@{host} (ssh from {ip})"),
        None => format!("{user}@{host}"),
    }
}

/// What the rollout looks like now, for front-ends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub service: String,
    pub stable_version: Option<String>,
    pub canary_version: String,
    /// `starting_canary`, `running`, `paused`, `gate`, `analyzing`, `held`,
    /// `completed`, `aborted`, `rolled_back`, `degraded`.
    pub phase: String,
    pub detail: Option<String>,
    /// Seconds left on a pause or gate countdown.
    pub countdown_s: Option<f64>,
    pub step: usize,
    pub steps: usize,
    /// Tenths of a percent.
    pub weight: u32,
    pub stable: Totals,
    pub canary: Totals,
    /// The last two seconds, per pool (stable, canary): error rate (0..1)
    /// and p95 latency in ms; `None` without requests. What the charts plot.
    pub recent_error_rate: [Option<f64>; 2],
    pub recent_p95_ms: [Option<f64>; 2],
    pub verdict: Option<Verdict>,
}

/// A threshold metric's value over a window (`None` without requests).
fn threshold_value(m: ThresholdMetric, w: &super::router::Window) -> Option<f64> {
    use ThresholdMetric as M;
    if w.requests == 0 {
        return None;
    }
    let q = match m {
        M::ErrorRate => return Some(w.errors as f64 / w.requests as f64),
        M::P50Ms => 0.50,
        M::P95Ms => 0.95,
        M::P99Ms => 0.99,
    };
    let mut l = w.latencies_ms.clone();
    l.sort_by(f64::total_cmp);
    l.get(((l.len() as f64 - 1.0) * q).round() as usize).copied()
}

/// Where the rollout reports and listens.
pub struct Io {
    pub state_dir: PathBuf,
    pub workdir: PathBuf,
    pub log: mpsc::Sender<String>,
    pub status: mpsc::Sender<Status>,
    pub control: mpsc::Receiver<(Command, String)>,
    /// Decisions for the audit trail: (what, who).
    pub audit: mpsc::Sender<(String, Option<String>)>,
    pub cancel: CancellationToken,
    /// Extra environment for the replicas.
    pub env: Vec<(String, String)>,
}

/// The tag every replica of `service` carries in its environment, so the
/// replicas a killed trackside left behind can be found and stopped.
fn replica_tag(state: &Path, service: &str) -> String {
    format!("deploy:{}:{service}", state.display())
}

struct Replica {
    child: tokio::process::Child,
    addr: SocketAddr,
}

fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("cannot find a free port: {e}"))
}

async fn start_replicas(service: &str, rev: &Revision, label: &str, io: &Io) -> Result<Vec<Replica>, String> {
    let mut out = Vec::new();
    for i in 1..=rev.replicas {
        let port = free_port()?;
        let cmd = rev.run.replace("${PORT}", &port.to_string());
        let mut child = tokio::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(&cmd)
            .current_dir(&io.workdir)
            .envs(io.env.iter().cloned())
            .env("PORT", port.to_string())
            .env(crate::exec::TAG_VAR, replica_tag(&io.state_dir, service))
            .process_group(0)
            .kill_on_drop(true)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start `{cmd}`: {e}"))?;
        let tag = format!("{label} {}#{i}", rev.version);
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
        ]
        .into_iter()
        .flatten()
        {
            let (log, tag) = (io.log.clone(), tag.clone());
            tokio::spawn(async move {
                let mut lines = BufReader::new(stream).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let _ = log.send(format!("[{tag}] {line}")).await;
                }
            });
        }
        let _ = io.log.send(format!("started {tag} on port {port}: {cmd}")).await;
        out.push(Replica {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        });
    }
    Ok(out)
}

async fn stop_replicas(replicas: Vec<Replica>) {
    for mut r in replicas {
        if let Some(pid) = r.child.id().and_then(|p| i32::try_from(p).ok()) {
            let pg = nix::unistd::Pid::from_raw(pid);
            let _ = nix::sys::signal::killpg(pg, nix::sys::signal::Signal::SIGTERM);
            if tokio::time::timeout(Duration::from_secs(5), r.child.wait())
                .await
                .is_err()
            {
                let _ = nix::sys::signal::killpg(pg, nix::sys::signal::Signal::SIGKILL);
                let _ = r.child.wait().await;
            }
        }
    }
}

/// One probe of one replica: Ok(true) healthy, Ok(false) answered but not
/// healthy, Err(()) no answer at all.
async fn probe(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
    addr: SocketAddr,
    p: &Probe,
    limit: Duration,
) -> Result<bool, ()> {
    let attempt = async {
        match p {
            Probe::Http { path, status } => {
                let uri: hyper::Uri = format!("http://{addr}{path}").parse().map_err(|_| ())?;
                let r = client.get(uri).await.map_err(|_| ())?;
                Ok(match status {
                    Some(s) => r.status().as_u16() == *s,
                    None => r.status().is_success(),
                })
            }
            Probe::Tcp => tokio::net::TcpStream::connect(addr).await.map(|_| true).map_err(|_| ()),
            Probe::Command(cmd) => tokio::process::Command::new("/bin/sh")
                .arg("-c")
                .arg(cmd.replace("${PORT}", &addr.port().to_string()))
                .env("PORT", addr.port().to_string())
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true)
                .status()
                .await
                .map(|s| s.success())
                .map_err(|_| ()),
        }
    };
    tokio::time::timeout(limit, attempt).await.unwrap_or(Err(()))
}

fn describe_probe(addr: SocketAddr, p: &Probe) -> String {
    match p {
        Probe::Http { path, .. } => format!("http://{addr}{path}"),
        Probe::Tcp => format!("tcp {addr}"),
        Probe::Command(c) => format!("`{c}` for {addr}"),
    }
}

/// Probes every replica until each has `success_threshold` healthy answers
/// in a row; fails a replica after `failure_threshold` failures in a row
/// once it has answered at all, or when `timeout` passes.
pub async fn wait_healthy(addrs: &[SocketAddr], h: &HealthCheck, cancel: &CancellationToken) -> Result<(), String> {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let deadline = Instant::now() + h.timeout;
    for &addr in addrs {
        let (mut ok, mut bad, mut answered) = (0, 0, false);
        let what = describe_probe(addr, &h.probe);
        loop {
            let healthy = match probe(&client, addr, &h.probe, h.interval.max(Duration::from_millis(200))).await {
                Ok(good) => {
                    // A failing command may only mean "not up yet": only a
                    // success proves the replica answers at all.
                    answered |= good || !matches!(h.probe, Probe::Command(_));
                    good
                }
                Err(()) => false,
            };
            if healthy {
                ok += 1;
                bad = 0;
                if ok >= h.success_threshold {
                    break;
                }
            } else {
                ok = 0;
                bad += 1;
                if answered && bad >= h.failure_threshold {
                    return Err(format!("{what} failed {bad} health checks in a row"));
                }
            }
            if Instant::now() >= deadline {
                return Err(format!("{what} was not healthy within {}s", h.timeout.as_secs()));
            }
            tokio::select! {
                () = cancel.cancelled() => return Err("cancelled".into()),
                () = tokio::time::sleep(h.interval) => {}
            }
        }
    }
    Ok(())
}

fn phase_name(p: &Phase) -> (&'static str, Option<String>) {
    match p {
        Phase::NotStarted => ("not_started", None),
        Phase::StartingCanary => ("starting_canary", None),
        Phase::Running => ("running", None),
        Phase::Paused { .. } => ("paused", None),
        Phase::Gate { reason, .. } => ("gate", Some(reason.clone())),
        Phase::Analyzing { runs_left, .. } => ("analyzing", Some(format!("{runs_left} analysis run(s) left"))),
        Phase::Held { .. } => ("held", Some("paused by hand".into())),
        Phase::Completed => ("completed", None),
        Phase::Aborted { reason } => ("aborted", Some(format!("Aborted (stable serving): {reason}"))),
        Phase::RolledBack { reason } => ("rolled_back", Some(reason.clone())),
        Phase::Degraded { reason } => ("degraded", Some(format!("Degraded: {reason}"))),
    }
}

/// Runs the deploy to its end. `Ok` says what is stable now; `Err` why the
/// new revision is not.
pub async fn run(spec: &Deploy, mut io: Io) -> Result<String, String> {
    // One deploy of a service at a time per state directory.
    let lock_path = revision_path(&io.state_dir, &spec.service).with_extension("lock");
    if let Some(dir) = lock_path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let lock = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| format!("cannot open {}: {e}", lock_path.display()))?;
    if lock.try_lock().is_err() {
        return Err(format!(
            "another trackside is deploying `{}` right now (it holds {})",
            spec.service,
            lock_path.display()
        ));
    }
    // Replicas a killed trackside left behind would hold ports and CPU.
    let tag = replica_tag(&io.state_dir, &spec.service);
    let swept = tokio::task::spawn_blocking(move || crate::exec::shell::sweep_tagged(&tag))
        .await
        .unwrap_or(0);
    if swept > 0 {
        let _ = io
            .log
            .send(format!(
                "stopped {swept} leftover replica process(es) of an earlier trackside"
            ))
            .await;
    }
    let new = Revision {
        version: spec.version.clone(),
        run: spec.run.clone(),
        replicas: spec.replicas,
    };
    let listen: SocketAddr = spec
        .listen
        .parse()
        .map_err(|_| format!("`{}` is not an address", spec.listen))?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("the router cannot listen on {listen}: {e}"))?;
    // Port 0 picks a free port: say which.
    let listen = listener.local_addr().unwrap_or(listen);
    let _ = io
        .log
        .send(format!("router for {} listening on http://{listen}", spec.service))
        .await;
    let router = Router::new(true);
    let stop = io.cancel.child_token();
    tokio::spawn(router.clone().serve(listener, stop.clone()));
    if let Some(m) = &spec.metrics_listen {
        let addr: SocketAddr = m.parse().map_err(|_| format!("`{m}` is not an address"))?;
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot serve metrics on {addr}: {e}"))?;
        let addr = l.local_addr().unwrap_or(addr);
        let _ = io
            .log
            .send(format!("metrics for Prometheus at http://{addr}/metrics"))
            .await;
        tokio::spawn(super::router::serve_metrics(
            router.clone(),
            spec.service.clone(),
            l,
            stop.clone(),
        ));
    }
    let log = io.log.clone();
    let say = |text: String| {
        let log = log.clone();
        async move {
            let _ = log.send(text).await;
        }
    };
    let result = async {
        let Some(prev) = load_revision(&io.state_dir, &spec.service) else {
            // Nothing to compare with: the first revision becomes stable.
            let replicas = start_replicas(&spec.service, &new, "stable", &io).await?;
            let addrs: Vec<SocketAddr> = replicas.iter().map(|r| r.addr).collect();
            let healthy = wait_healthy(&addrs, &spec.health, &io.cancel).await;
            stop_replicas(replicas).await;
            healthy.map_err(|e| format!("{} is not healthy: {e}", new.version))?;
            record_revision(&io.state_dir, &spec.service, &new, "first_deploy", &who())?;
            return Ok(format!(
                "first deploy of {}: {} is stable (no canary: there was nothing to compare with)",
                spec.service, new.version
            ));
        };
        say(format!(
            "stable is {} (remembered), canary is {}",
            prev.version, new.version
        ))
        .await;
        let stable = start_replicas(&spec.service, &prev, "stable", &io).await?;
        let stable_addrs: Vec<SocketAddr> = stable.iter().map(|r| r.addr).collect();
        if let Err(e) = wait_healthy(&stable_addrs, &spec.health, &io.cancel).await {
            stop_replicas(stable).await;
            return Err(format!(
                "Degraded: the stable revision {} is not healthy: {e}",
                prev.version
            ));
        }
        router.set_backends(Pool::Stable, stable_addrs);
        let traffic = Arc::new(TrafficCounts::default());
        if spec.strategy == Strategy::BlueGreen {
            // Green gets no production traffic before the switch: preview it.
            traffic.pin.store(1, std::sync::atomic::Ordering::Relaxed);
        }
        if spec.rps > 0 {
            tokio::spawn(generate(listen, spec.rps, stop.clone(), traffic.clone()));
        }
        let out = drive(spec, &mut io, &router, &traffic, &prev, &new).await;
        stop_replicas(stable).await;
        out
    }
    .await;
    stop.cancel();
    result
}

async fn drive(
    spec: &Deploy,
    io: &mut Io,
    router: &Arc<Router>,
    traffic: &TrafficCounts,
    prev: &Revision,
    new: &Revision,
) -> Result<String, String> {
    let started = Instant::now();
    let now = || started.elapsed();
    let canary_spec = CanarySpec {
        steps: spec.steps.clone(),
        progress_deadline: spec.progress_deadline,
        abort_scale_down_delay: spec.abort_delay,
    };
    // A gate a previous trackside waited at, for this very revision, is taken up again.
    let mut machine = match load_gate(&io.state_dir, &spec.service) {
        Some(g) if g.version == new.version && g.run == new.run && g.step < spec.steps.len() => {
            let _ = io
                .log
                .send(format!(
                    "a previous trackside stopped at the gate of step {} of {} (canary at {:.1}%); taking it up again",
                    g.step + 1,
                    spec.steps.len(),
                    f64::from(g.weight) / 10.0
                ))
                .await;
            Canary::resuming(canary_spec, g.step, g.weight)
        }
        _ => Canary::new(canary_spec),
    };
    let mut gate_saved = false;
    let judge_cfg = JudgeConfig {
        confidence: spec.confidence,
        tolerance: spec.tolerance,
        ..JudgeConfig::default()
    };
    let (internal_tx, mut internal_rx) = mpsc::channel::<Input>(8);
    let mut canary: Vec<Replica> = Vec::new();
    let mut canary_stop_at: Option<Instant> = None;
    let mut window_start = Instant::now();
    let mut verdict: Option<Verdict> = None;
    let mut pending = machine.handle(Input::Start, now());
    let mut status_tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        // Perform effects; some feed inputs straight back.
        while !pending.is_empty() {
            let mut next = Vec::new();
            for effect in std::mem::take(&mut pending) {
                match effect {
                    Effect::SetWeight { weight } => {
                        router.set_weight(weight);
                        if spec.strategy == Strategy::BlueGreen {
                            // Measure whichever colour production does not reach.
                            let pin = match weight {
                                0 => 1,
                                super::router::FULL => 2,
                                _ => 0,
                            };
                            traffic.pin.store(pin, std::sync::atomic::Ordering::Relaxed);
                        }
                        let _ = io
                            .log
                            .send(format!("weight: canary {:.1}%", f64::from(weight) / 10.0))
                            .await;
                        window_start = Instant::now();
                    }
                    Effect::StartCanary => {
                        stop_replicas(std::mem::take(&mut canary)).await;
                        canary = start_replicas(&spec.service, new, "canary", io).await?;
                        let addrs: Vec<SocketAddr> = canary.iter().map(|r| r.addr).collect();
                        let (h, tx, cancel) = (spec.health.clone(), internal_tx.clone(), io.cancel.clone());
                        router.set_backends(Pool::Canary, addrs.clone());
                        tokio::spawn(async move {
                            let input = match wait_healthy(&addrs, &h, &cancel).await {
                                Ok(()) => Input::CanaryHealthy,
                                Err(e) => Input::CanaryUnhealthy(e),
                            };
                            let _ = tx.send(input).await;
                        });
                    }
                    Effect::RunAnalysis => {
                        let (s, c) = (
                            router.window(Pool::Stable, window_start),
                            router.window(Pool::Canary, window_start),
                        );
                        window_start = Instant::now();
                        let mut metrics = vec![
                            judge::compare_errors(
                                "error_rate",
                                (s.errors, s.requests),
                                (c.errors, c.requests),
                                &judge_cfg,
                            ),
                            judge::compare_samples("latency_ms", &s.latencies_ms, &c.latencies_ms, &judge_cfg),
                        ];
                        if let Some(Step::Analysis { thresholds, .. }) = spec.steps.get(machine.step) {
                            for t in thresholds {
                                let (sv, cv) = (threshold_value(t.metric, &s), threshold_value(t.metric, &c));
                                let name = format!("check {}", t.metric.name());
                                metrics.push(judge::check_threshold(&name, t.max, t.max_ratio, sv, cv));
                            }
                        }
                        let v = judge::verdict(metrics);
                        let mut lines = vec![format!("analysis: {:?} ({})", v.class, v.why)];
                        for m in &v.metrics {
                            lines.push(format!("  {}: {:?}: {}", m.metric, m.outcome, m.why));
                        }
                        for l in lines {
                            let _ = io.log.send(l).await;
                        }
                        next.extend(machine.handle(
                            Input::AnalysisDone {
                                class: v.class,
                                why: v.why.clone(),
                            },
                            now(),
                        ));
                        verdict = Some(v);
                    }
                    Effect::StopCanary { after } => {
                        router.set_backends(Pool::Canary, Vec::new());
                        canary_stop_at = Some(Instant::now() + after);
                    }
                    Effect::MakeCanaryStable => {
                        record_revision(&io.state_dir, &spec.service, new, "promoted", &who())?;
                    }
                    Effect::RestorePrevious => {
                        record_revision(&io.state_dir, &spec.service, prev, "rolled_back", &who())?;
                    }
                    Effect::Note { text, by } => {
                        let who = by.as_ref().map(|b| format!(" (by {b})")).unwrap_or_default();
                        let _ = io.log.send(format!("rollout: {text}{who}")).await;
                        let _ = io.audit.send((text, by)).await;
                    }
                }
            }
            pending = next;
        }
        let (phase, detail) = phase_name(&machine.phase);
        let since = Instant::now() - Duration::from_secs(2);
        let (sw, cw) = (router.window(Pool::Stable, since), router.window(Pool::Canary, since));

        let status = Status {
            service: spec.service.clone(),
            stable_version: Some(prev.version.clone()),
            canary_version: new.version.clone(),
            phase: phase.into(),
            detail: detail.clone(),
            countdown_s: machine.next_wake().map(|w| w.saturating_sub(now()).as_secs_f64()),
            step: machine.step.min(spec.steps.len()),
            steps: spec.steps.len(),
            weight: router.weight(),
            stable: router.totals(Pool::Stable),
            canary: router.totals(Pool::Canary),
            recent_error_rate: [&sw, &cw].map(|w| threshold_value(ThresholdMetric::ErrorRate, w)),
            recent_p95_ms: [&sw, &cw].map(|w| threshold_value(ThresholdMetric::P95Ms, w)),
            verdict: verdict.clone(),
        };
        let _ = io.status.try_send(status);
        // Remember a gate for a restart; forget it once the rollout is over.
        if matches!(machine.phase, Phase::Gate { .. }) && !gate_saved {
            let g = GateState {
                version: new.version.clone(),
                run: new.run.clone(),
                step: machine.step,
                weight: machine.weight,
                since_ms: crate::store::now_ms(),
            };
            gate_saved = save_gate(&io.state_dir, &spec.service, &g).is_ok();
        } else if !matches!(machine.phase, Phase::Gate { .. }) {
            gate_saved = false;
        }
        if machine.is_settled() {
            let _ = std::fs::remove_file(gate_path(&io.state_dir, &spec.service));
        }
        match &machine.phase {
            Phase::Completed => {
                stop_replicas(canary).await;
                return Ok(format!("{} is now stable for {}", new.version, spec.service));
            }
            Phase::Aborted { reason } | Phase::RolledBack { reason } | Phase::Degraded { reason } => {
                // The canary is at 0%: keep it for the delay (for a look), unless cancelled.
                if let Some(at) = canary_stop_at {
                    tokio::select! {
                        () = io.cancel.cancelled() => {}
                        () = tokio::time::sleep_until(at.into()) => {}
                    }
                }
                stop_replicas(canary).await;
                return Err(format!(
                    "{} (stable {} kept serving)",
                    detail.unwrap_or_else(|| reason.clone()),
                    prev.version
                ));
            }
            _ => {}
        }
        let wake = machine.next_wake().map(|w| started + w);
        tokio::select! {
            () = io.cancel.cancelled() => {
                router.set_weight(0);
                stop_replicas(canary).await;
                return Err("cancelled: canary set to 0%, stable kept serving".into());
            }
            Some((cmd, by)) = io.control.recv() => {
                pending = machine.handle(cmd.input(by), now());
            }
            Some(input) = internal_rx.recv() => {
                pending = machine.handle(input, now());
            }
            () = sleep_until_opt(wake) => {
                pending = machine.handle(Input::Tick, now());
            }
            _ = status_tick.tick() => {}
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn probes_check_status_ports_and_commands() {
        let stop = CancellationToken::new();
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let svc = super::super::demo::DemoService {
            version: "v1".into(),
            error_rate: 0.0,
            latency: Duration::ZERO,
        };
        tokio::spawn(svc.serve(l, stop.clone()));
        let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let limit = Duration::from_secs(5);
        let http = |status| Probe::Http {
            path: "/healthz".into(),
            status,
        };
        assert_eq!(probe(&client, addr, &http(None), limit).await, Ok(true));
        assert_eq!(probe(&client, addr, &http(Some(200)), limit).await, Ok(true));
        assert_eq!(
            probe(&client, addr, &http(Some(204)), limit).await,
            Ok(false),
            "answered, wrong status"
        );
        assert_eq!(probe(&client, addr, &Probe::Tcp, limit).await, Ok(true));
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr")
        };
        assert_eq!(
            probe(&client, closed, &Probe::Tcp, limit).await,
            Err(()),
            "nothing listens"
        );
        let cmd = |c: &str| Probe::Command(c.into());
        assert_eq!(
            probe(&client, addr, &cmd("test \"$PORT\" -gt 0"), limit).await,
            Ok(true)
        );
        assert_eq!(probe(&client, addr, &cmd("exit 3"), limit).await, Ok(false));
        let h = HealthCheck {
            probe: cmd("exit 1"),
            interval: Duration::from_millis(50),
            success_threshold: 1,
            failure_threshold: 1,
            timeout: Duration::from_millis(300),
        };
        let e = wait_healthy(&[addr], &h, &stop).await.expect_err("never healthy");
        assert!(
            e.contains("was not healthy within"),
            "a failing command waits for the timeout: {e}"
        );
        stop.cancel();
    }
}
