//! Runs a deploy: the effects of the [`Canary`] or [`Rolling`] machine,
//! performed.
//!
//! The stable revision is the one remembered for the service in the state
//! directory (see [`super::revision`]); the new one is the job's `deploy:`
//! block. Both run as replicas (process groups or containers, see
//! [`super::replica`]) behind the router (the built-in proxy or HAProxy,
//! see [`super::traffic`]) on `listen`.
//!
//! A service with the built-in router keeps serving
//! (`keep_serving`, the default): its router and replicas live in its
//! service process ([`super::service`]), the rollout adopts the stable
//! replicas running there instead of starting copies, and when it ends the
//! winner serves at 100% while the loser is stopped after its delay
//! (`scale_down_delay`, `abort_delay`) by the service process. Otherwise
//! (`keep_serving: false`, HAProxy) the deploy is a rehearsal:
//! the replicas live as long as the deploy job, and what is remembered is
//! which revision is stable now.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::canary::{Canary, CanarySpec, Effect, Input, Phase, Step};
use super::demo::{TrafficCounts, generate};
use super::haproxy::Haproxy;
use super::judge::{self, JudgeConfig, Verdict};
use super::metrics::{Measured, PromClient, Source};
use super::replica::{Board, Launcher, Replica, handles, monitor, wait_healthy};
pub use super::revision::{
    GateState, HistoryEntry, Revision, history, load_gate, load_revision, record_revision, save_revision,
};
use super::revision::{gate_path, lock_service, save_gate};
use super::rolling::{self, Rolling, RollingSpec};
use super::router::{FULL, Pool, Router, percent};
use super::service;
use super::traffic::{Live, Traffic};
use crate::pipeline::model::{Deploy, MetricsSpec, RouterSpec, Strategy, Target, ThresholdMetric};
pub use crate::protocol::identity::{Approver, identity, who};
pub use crate::protocol::view::{RolloutCommand as Command, RolloutStatus as Status};

/// The machine input a steering command becomes.
fn input(cmd: Command, who: Approver) -> Input {
    let by = who.display.clone();
    match cmd {
        Command::Promote => Input::Promote { by: who },
        Command::PromoteFull => Input::PromoteFull { by: who },
        Command::Abort => Input::Abort { by },
        Command::Retry => Input::Retry { by },
        Command::Rollback => Input::Rollback { by },
        Command::Pause => Input::Pause { by },
        Command::Resume => Input::Resume { by },
    }
}

/// A step as the pane lists it.
fn step_name(step: &Step) -> String {
    match step {
        Step::SetWeight(w) => format!("weight {}", percent(*w)).replace(".0%", "%"),
        Step::Pause(d) => format!("pause {}s", d.as_secs()),
        Step::Gate { timeout: None } => "gate".into(),
        Step::Gate { timeout: Some((t, a)) } => format!("gate ({}s, then {a:?})", t.as_secs()).to_lowercase(),
        Step::Analysis { interval, count, .. } => format!("analysis {count} x {}s", interval.as_secs()),
    }
}

/// The first `max` of each charted metric among the analyses' thresholds.
fn chart_limits(steps: &[Step]) -> [Option<f64>; 2] {
    let mut out = [None, None];
    for step in steps {
        if let Step::Analysis { thresholds, .. } = step {
            for t in thresholds {
                match (t.metric, t.max) {
                    (ThresholdMetric::ErrorRate, Some(m)) if out[0].is_none() => out[0] = Some(m * 100.0),
                    (ThresholdMetric::P95Ms, Some(m)) if out[1].is_none() => out[1] = Some(m),
                    _ => {}
                }
            }
        }
    }
    out
}

/// Where the rollout reports and listens.
pub struct Io {
    pub state_dir: PathBuf,
    pub workdir: PathBuf,
    pub log: mpsc::Sender<String>,
    pub status: mpsc::Sender<Status>,
    pub control: mpsc::Receiver<(Command, Approver)>,
    /// Decisions for the audit trail: (what, who).
    pub audit: mpsc::Sender<(String, Option<String>)>,
    pub cancel: CancellationToken,
    /// Extra environment for the replicas.
    pub env: Vec<(String, String)>,
    /// trackside's own program, which a live service's process runs.
    pub program: PathBuf,
    /// The group a live service's socket is opened to when this deploy
    /// starts its service process (the run's `--allow-group`).
    pub service_group: Option<String>,
    /// The pipelines' metrics from history (as `trackside metrics` prints
    /// them), served on `metrics_listen` after the service's.
    pub pipeline_metrics: Option<super::router::ExtraMetrics>,
}

impl Io {
    async fn say(&self, text: impl Into<String>) {
        let _ = self.log.send(text.into()).await;
    }

    async fn note(&self, text: String, by: Option<String>) {
        let who = by.as_ref().map(|b| format!(" (by {b})")).unwrap_or_default();
        self.say(format!("rollout: {text}{who}")).await;
        let _ = self.audit.send((text, by)).await;
    }
}

/// What a running deploy works with, besides the machine.
struct World<'a> {
    spec: &'a Deploy,
    launcher: Launcher,
    traffic: Traffic,
    metrics: Source,
    board: Board,
    prev: Revision,
    new: Revision,
    /// Health reports of serving replicas: (pool, why).
    health_tx: mpsc::Sender<(Pool, String)>,
    /// What every status repeats from the spec.
    step_names: Vec<String>,
    limits: [Option<f64>; 2],
    /// The service keeps serving after the deploy (a live service).
    live: bool,
}

impl World<'_> {
    /// A status with everything but the phase filled in.
    fn status(&self, phase: &str, detail: Option<String>) -> Status {
        let router = self.traffic.stats();
        let since = Instant::now() - Duration::from_secs(2);
        let recent = [Pool::Stable, Pool::Canary].map(|p| Measured::from_window(router.window(p, since)));
        Status {
            service: self.spec.service.clone(),
            strategy: strategy_name(self.spec.strategy).into(),
            router: self.traffic.name().into(),
            stable_version: Some(self.prev.version.clone()),
            canary_version: self.new.version.clone(),
            phase: phase.into(),
            detail,
            countdown_s: None,
            step: 0,
            steps: 0,
            weight: self.traffic.weight(),
            actual_weight: self.traffic.actual_weight(),
            stable: router.totals(Pool::Stable),
            canary: router.totals(Pool::Canary),
            recent_error_rate: [&recent[0], &recent[1]].map(|m| m.value(ThresholdMetric::ErrorRate)),
            recent_p95_ms: [&recent[0], &recent[1]].map(|m| m.value(ThresholdMetric::P95Ms)),
            verdict: None,
            replicas: self.board.snapshot(),
            step_names: self.step_names.clone(),
            limits: self.limits,
            approvals: Vec::new(),
            waiting_for: None,
            approvers: self.spec.approvers.as_ref().map(|a| a.describe()),
        }
    }

    async fn set_weight(&self, io: &Io, weight: u32) -> Result<(), String> {
        self.traffic.set_weight(weight).await?;
        let actual = self.traffic.actual_weight();
        let rounded = if actual != weight {
            format!(" ({} gives {})", self.traffic.name(), percent(actual))
        } else {
            String::new()
        };
        let who = if self.spec.strategy == Strategy::Rolling {
            "new"
        } else {
            "canary"
        };
        io.say(format!("weight: {who} {}{rounded}", percent(weight))).await;
        Ok(())
    }

    /// Makes `replicas` the ones serving `pool`.
    async fn route(&self, pool: Pool, replicas: &[Replica]) -> Result<(), String> {
        let addrs: Vec<SocketAddr> = replicas.iter().map(|r| r.addr).collect();
        self.traffic.set_backends(pool, &addrs).await
    }

    /// Keeps probing `replicas` until `watch` is cancelled.
    fn watch(&self, replicas: &[Replica], watch: &CancellationToken) {
        monitor(
            handles(replicas),
            &self.spec.health,
            &self.board,
            watch.child_token(),
            self.health_tx.clone(),
        );
    }

    async fn stop(&self, replicas: Vec<Replica>) {
        for r in &replicas {
            self.board.remove(&r.name);
        }
        self.launcher.stop_all(replicas).await;
    }

    /// The deploy is over for `replicas`: a rehearsal stops them; a live
    /// service keeps them (serving, or retiring on the service's clock).
    async fn end(&self, replicas: Vec<Replica>) {
        if !self.live {
            self.stop(replicas).await;
        }
    }

    /// `new` won: it serves everything as the stable pool, and `old` goes
    /// (a rehearsal stops both).
    async fn promote(&self, io: &Io, new: Vec<Replica>, old: Vec<Replica>) -> Result<(), String> {
        if !self.live {
            self.stop(new).await;
            self.stop(old).await;
            return Ok(());
        }
        // The weight is 100% to the canary pool: moving its replicas into the
        // stable pool first, then the weight, leaves no request unserved.
        self.route(Pool::Stable, &new).await?;
        self.traffic.set_weight(0).await?;
        self.traffic.set_backends(Pool::Canary, &[]).await?;
        let delay = self.spec.scale_down_delay;
        if !old.is_empty() {
            io.say(format!(
                "{} serves as stable; the {} replica(s) of {} stop in {}s (`trackside rollback {}` before then switches back at once)",
                self.new.version,
                old.len(),
                self.prev.version,
                delay.as_secs(),
                self.spec.service
            ))
            .await;
        }
        for r in &old {
            self.board.remove(&r.name);
        }
        self.launcher.retire_after(old, delay).await;
        Ok(())
    }

    /// Whether the replica a health report (`why`, which starts with its
    /// name) is about died and is being started again by the live
    /// service's process.
    async fn restarting(&self, why: &str) -> bool {
        let Traffic::Live(l) = &self.traffic else {
            return false;
        };
        let Ok(st) = l.client.status().await else {
            return false;
        };
        st.replicas.iter().any(|r| {
            // Down (the watchdog saw it, or is about to), or started again.
            let died = r.pid == 0 || r.restarts > 0 || !crate::process::owner_alive(r.pid, r.start);
            why.starts_with(&format!("{} {} ", Pool::Stable.name(), r.spec.name)) && died
        })
    }

    /// Stable replicas for the rollout: a live service's running replicas
    /// of `prev` (adopted, not copied), else new ones.
    async fn stable_replicas(&self, io: &Io, client: Option<&service::Client>) -> Result<(Vec<Replica>, bool), String> {
        let prev = &self.prev;
        if let Some(c) = client {
            let st = c.status().await?;
            // What an earlier deploy left besides stable (a killed
            // trackside's canary) goes, after the abort delay.
            let left: Vec<String> = st
                .replicas
                .iter()
                .filter(|r| r.retire_at_ms.is_none())
                .filter(|r| !(r.pool == Some(Pool::Stable) && r.spec.version == prev.version))
                .map(|r| r.spec.name.clone())
                .collect();
            if !left.is_empty() {
                io.say(format!(
                    "{} replica(s) an earlier deploy left ({}) stop in {}s",
                    left.len(),
                    left.join(", "),
                    self.spec.abort_delay.as_secs()
                ))
                .await;
                let after_ms = u64::try_from(self.spec.abort_delay.as_millis()).unwrap_or(u64::MAX);
                c.call(&service::Request::Retire { names: left, after_ms }).await?;
            }
            let running: Vec<Replica> = st
                .serving(Pool::Stable)
                .into_iter()
                .filter(|r| r.spec.version == prev.version && r.pid != 0)
                .map(|r| self.launcher.adopt(r, Pool::Stable))
                .collect();
            if !running.is_empty() {
                io.say(format!(
                    "adopting the {} running replica(s) of {} (no copy started)",
                    running.len(),
                    prev.version
                ))
                .await;
                return Ok((running, true));
            }
            io.say(format!("stable {} is not running: starting it", prev.version))
                .await;
        }
        Ok((self.launcher.start_all(prev, Pool::Stable).await?, false))
    }
}

fn strategy_name(s: Strategy) -> &'static str {
    match s {
        Strategy::Canary => "canary",
        Strategy::BlueGreen => "blue_green",
        Strategy::Rolling => "rolling",
    }
}

fn phase_name(p: &Phase) -> (&'static str, Option<String>) {
    let detail = match p {
        Phase::Gate { reason, .. } => Some(reason.clone()),
        Phase::Analyzing { runs_left, .. } => Some(format!("{runs_left} analysis run(s) left")),
        Phase::Held { remaining: Some(r), .. } => {
            Some(format!("paused by hand; {}s left on the countdown", r.as_secs()))
        }
        Phase::Held { .. } => Some("paused by hand".into()),
        Phase::Aborted { reason } => Some(format!("Aborted (stable serving): {reason}")),
        Phase::RolledBack { reason } => Some(reason.clone()),
        Phase::Degraded { reason } => Some(format!("Degraded: {reason}")),
        _ => None,
    };
    (p.name(), detail)
}

/// Runs the deploy to its end. `Ok` says what is stable now; `Err` why the
/// new revision is not.
pub async fn run(spec: &Deploy, io: Io) -> Result<String, String> {
    // One deploy of a service at a time per state directory.
    let _lock = lock_service(&io.state_dir, &spec.service)?;
    let launcher = Launcher::new(
        &spec.service,
        io.state_dir.clone(),
        io.workdir.clone(),
        io.env.clone(),
        io.log.clone(),
    );
    let prev = load_revision(&io.state_dir, &spec.service);
    let new = Revision::new(&spec.version, &spec.target, spec.replicas);
    // A running HAProxy trackside only steers (`socket:`) is not one a
    // service process can keep: such a deploy is a rehearsal.
    let choice = match &spec.router {
        RouterSpec::Builtin => Some(service::RouterChoice::Builtin),
        RouterSpec::Haproxy(h) if h.socket.is_none() => Some(service::RouterChoice::Haproxy(h.binary.clone())),
        RouterSpec::Haproxy(_) => None,
    };
    let live = spec.keep_serving && choice.is_some();
    if !live && service::running(&io.state_dir, &spec.service) {
        return Err(format!(
            "service `{}` is live (its service process serves it): a rehearsal would change the revision it remembers \
             without serving it; deploy it live (keep_serving, a router trackside starts), or stop it first \
             (`trackside service {} stop`)",
            spec.service, spec.service
        ));
    }
    if spec.keep_serving && !live {
        io.say(
            "this service is behind an HAProxy trackside does not run (`socket:`): it does not keep serving after the deploy, \
             so this deploy stops what it starts when it ends (`keep_serving: false` says so and silences this)",
        )
        .await;
    }
    let client = if live {
        let choice = choice.unwrap_or(service::RouterChoice::Builtin);
        let service::Ensured {
            client: c,
            listen: addr,
            ..
        } = service::ensure(
            &io.program,
            &io.state_dir,
            &spec.service,
            &spec.listen,
            &choice,
            io.service_group.as_deref(),
        )
        .await?;
        let scale_down_delay_ms = u64::try_from(spec.scale_down_delay.as_millis()).unwrap_or(u64::MAX);
        c.call(&service::Request::Settings { scale_down_delay_ms }).await?;
        Some((c, addr))
    } else {
        None
    };
    let launcher = match &client {
        Some((c, _)) => launcher.serving_through(c.clone(), spec.health.clone()),
        None => launcher,
    };
    // Replicas a killed trackside left behind would hold ports and CPU.
    let containers = [Some(&new), prev.as_ref()]
        .into_iter()
        .flatten()
        .any(|r| matches!(r.target(), Target::Container { .. }));
    let swept = launcher.sweep(containers).await;
    if swept > 0 {
        io.say(format!("stopped {swept} leftover replica(s) of an earlier trackside"))
            .await;
    }
    let stop = io.cancel.child_token();
    let slots = spec.replicas.max(prev.as_ref().map_or(1, |p| p.replicas));
    let (traffic, listen) = match &client {
        Some((c, addr)) => {
            let listen: SocketAddr = addr.parse().map_err(|_| format!("the service process said `{addr}`"))?;
            let state = c.status().await?;
            let what = match &state.haproxy {
                Some(_) => {
                    let p = service::paths(&io.state_dir, &spec.service);
                    format!(
                        "HAProxy for {} listening on http://{listen} (its service process keeps it serving; config {}, runtime API {})",
                        spec.service,
                        p.dir
                            .join(format!("{}.cfg", super::revision::safe_name(&spec.service)))
                            .display(),
                        p.dir
                            .join(format!("{}.sock", super::revision::safe_name(&spec.service)))
                            .display()
                    )
                }
                None => format!(
                    "router for {} listening on http://{listen} (its service process keeps it serving)",
                    spec.service
                ),
            };
            io.say(what).await;
            let mirror = Router::new(true);
            mirror.set_weight(state.weight);
            tokio::spawn({
                let (c, mirror, stop) = (c.clone(), mirror.clone(), stop.clone());
                async move { c.samples(mirror, stop).await }
            });
            (
                Traffic::Live(Box::new(Live {
                    client: c.clone(),
                    mirror,
                    haproxy: state.haproxy.is_some(),
                })),
                listen,
            )
        }
        None => start_router(spec, &io, &launcher, slots, &stop).await?,
    };
    let result = async {
        if let Some(m) = &spec.metrics_listen {
            let addr: SocketAddr = m.parse().map_err(|_| format!("`{m}` is not an address"))?;
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| format!("cannot serve metrics on {addr}: {e}"))?;
            let addr = l.local_addr().unwrap_or(addr);
            io.say(format!("metrics for Prometheus at http://{addr}/metrics")).await;
            tokio::spawn(super::router::serve_metrics(
                traffic.stats().clone(),
                spec.service.clone(),
                l,
                stop.clone(),
                io.pipeline_metrics.clone(),
            ));
        }
        let metrics = match &spec.metrics {
            MetricsSpec::Builtin => Source::Builtin,
            MetricsSpec::Prometheus(p) => {
                io.say(format!("analyses query Prometheus at {}", p.url)).await;
                Source::Prometheus(Box::new(PromClient::new(p.clone())))
            }
        };
        let (health_tx, health_rx) = mpsc::channel(16);
        let world = World {
            spec,
            launcher,
            traffic,
            metrics,
            board: Board::default(),
            prev: prev.clone().unwrap_or_else(|| new.clone()),
            new: new.clone(),
            health_tx,
            step_names: spec.steps.iter().map(step_name).collect(),
            limits: chart_limits(&spec.steps),
            live,
        };
        let Some(prev) = prev else {
            // Nothing to compare with: the first revision becomes stable.
            let replicas = world.launcher.start_all(&new, Pool::Stable).await?;
            let healthy = wait_healthy(&handles(&replicas), &spec.health, &world.board, &io.cancel).await;
            if let Err(e) = healthy {
                world.stop(replicas).await;
                return Err(format!("{} is not healthy: {e}", new.version));
            }
            if live {
                world.promote(&io, replicas, Vec::new()).await?;
            } else {
                world.stop(replicas).await;
            }
            record_revision(&io.state_dir, &spec.service, &new, "first_deploy", &who())?;
            let serving = if live {
                format!(
                    "; it keeps serving on http://{listen} (`trackside service {} stop` stops it)",
                    spec.service
                )
            } else {
                String::new()
            };
            return Ok(format!(
                "first deploy of {}: {} is stable (no rollout: there was nothing to compare with){serving}",
                spec.service, new.version
            ));
        };
        io.say(format!(
            "stable is {} (remembered), new is {} ({})",
            prev.version,
            new.version,
            strategy_name(spec.strategy)
        ))
        .await;
        let watch = stop.child_token();
        let (stable, adopted) = world.stable_replicas(&io, client.as_ref().map(|(c, _)| c)).await?;
        if let Err(e) = wait_healthy(&handles(&stable), &spec.health, &world.board, &io.cancel).await {
            // Adopted replicas serve on: the service process looks after them.
            if !adopted {
                world.stop(stable).await;
            }
            return Err(format!(
                "Degraded: the stable revision {} is not healthy: {e}",
                prev.version
            ));
        }
        world.route(Pool::Stable, &stable).await?;
        world.watch(&stable, &watch);
        let counts = Arc::new(TrafficCounts::default());
        if spec.strategy == Strategy::BlueGreen {
            // Green gets no production traffic before the switch: preview it.
            counts.pin.store(1, std::sync::atomic::Ordering::Relaxed);
        }
        if spec.rps > 0 {
            tokio::spawn(generate(listen, spec.rps, stop.clone(), counts.clone()));
        }
        let state_dir = io.state_dir.clone();
        let out = if spec.strategy == Strategy::Rolling {
            drive_rolling(&world, io, health_rx, stable, &watch).await
        } else {
            drive(&world, io, health_rx, &counts, &watch, stable).await
        };
        // The rollout's result is history too when its revision did not win
        // (not when it stopped at a gate a next trackside takes up).
        if let Err(why) = &out
            && load_gate(&state_dir, &spec.service).is_none()
        {
            let _ = super::revision::record_aborted(&state_dir, &spec.service, &new, &who(), why);
        }
        watch.cancel();
        world.traffic.shutdown().await;
        out
    }
    .await;
    stop.cancel();
    result
}

/// Starts the router on `listen`; returns it and the address clients use.
async fn start_router(
    spec: &Deploy,
    io: &Io,
    launcher: &Launcher,
    slots: u32,
    stop: &CancellationToken,
) -> Result<(Traffic, SocketAddr), String> {
    let listen: SocketAddr = spec
        .listen
        .parse()
        .map_err(|_| format!("`{}` is not an address", spec.listen))?;
    match &spec.router {
        RouterSpec::Builtin => {
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .map_err(|e| format!("the router cannot listen on {listen}: {e}"))?;
            // Port 0 picks a free port: say which.
            let listen = listener.local_addr().unwrap_or(listen);
            io.say(format!("router for {} listening on http://{listen}", spec.service))
                .await;
            let router = Router::new(true);
            tokio::spawn(router.clone().serve(listener, stop.clone()));
            Ok((Traffic::Builtin(router), listen))
        }
        RouterSpec::Haproxy(h) => match &h.socket {
            None => {
                let listen = if listen.port() == 0 {
                    SocketAddr::new(listen.ip(), super::replica::free_port()?)
                } else {
                    listen
                };
                let backend = super::revision::safe_name(&spec.service);
                let dir = io.state_dir.join("haproxy");
                let hx =
                    Haproxy::start(&h.binary, &dir, &backend, listen, slots, &launcher.tag(), stop.clone()).await?;
                io.say(format!(
                    "HAProxy for {} listening on http://{listen} (config {}, runtime API {})",
                    spec.service,
                    dir.join(format!("{backend}.cfg")).display(),
                    hx.api.socket.display()
                ))
                .await;
                Ok((Traffic::Haproxy(hx), listen))
            }
            Some(socket) => {
                let backend = h.backend.clone().unwrap_or_else(|| spec.service.clone());
                let hx = Haproxy::attach(socket.as_ref(), &backend, h.log_listen.as_deref(), stop.clone()).await?;
                if hx.slots() < slots {
                    return Err(format!(
                        "HAProxy backend `{backend}` has {} slot(s) per pool; this deploy needs {slots} (servers stable1..{slots} and canary1..{slots})",
                        hx.slots()
                    ));
                }
                io.say(format!(
                    "steering the running HAProxy at {socket}, backend `{backend}`{}",
                    if h.log_listen.is_some() {
                        ""
                    } else {
                        " (no log_listen: analyses get no measurements from it)"
                    }
                ))
                .await;
                Ok((Traffic::Haproxy(hx), listen))
            }
        },
    }
}

/// Keeps where a rollout waits at a gate, and who approved it so far, for
/// a restarted trackside to take up (`saved`: the step and the number of
/// approvals as last kept, `None` when nothing is); forgets it when the
/// rollout is at no gate.
fn keep_gate(
    machine: &Canary,
    saved: &mut Option<(usize, usize)>,
    state_dir: &std::path::Path,
    service: &str,
    version: &str,
    target: &str,
) {
    if !matches!(machine.phase, Phase::Gate { .. }) {
        *saved = None;
        return;
    }
    let now = (machine.step, machine.approvals.len());
    if *saved == Some(now) {
        return;
    }
    let g = GateState {
        version: version.to_string(),
        run: target.to_string(),
        step: machine.step,
        weight: machine.weight,
        since_ms: crate::store::now_ms(),
        approvals: machine.approvals.clone(),
    };
    *saved = save_gate(state_dir, service, &g).is_ok().then_some(now);
}

async fn drive(
    w: &World<'_>,
    mut io: Io,
    mut health_rx: mpsc::Receiver<(Pool, String)>,
    counts: &TrafficCounts,
    watch: &CancellationToken,
    stable: Vec<Replica>,
) -> Result<String, String> {
    let spec = w.spec;
    let (prev, new) = (&w.prev, &w.new);
    let started = Instant::now();
    let now = || started.elapsed();
    let canary_spec = CanarySpec {
        steps: spec.steps.clone(),
        progress_deadline: spec.progress_deadline,
        abort_scale_down_delay: spec.abort_delay,
        approvers: spec.approvers.clone(),
    };
    let target = new.target().describe();
    // A gate a previous trackside waited at, for this very revision, is taken up again.
    let mut machine = match load_gate(&io.state_dir, &spec.service) {
        Some(g) if g.version == new.version && g.run == target && g.step < spec.steps.len() => {
            io.say(format!(
                "a previous trackside stopped at the gate of step {} of {} (canary at {}); taking it up again",
                g.step + 1,
                spec.steps.len(),
                percent(g.weight)
            ))
            .await;
            Canary::resuming(canary_spec, g.step, g.weight, g.approvals)
        }
        _ => Canary::new(canary_spec),
    };
    // The gate's step and approvals as last kept (None: not kept).
    let mut gate_saved: Option<(usize, usize)> = None;
    let mut last_phase = "";
    let judge_cfg = JudgeConfig {
        confidence: spec.confidence,
        tolerance: spec.tolerance,
        ..JudgeConfig::default()
    };
    let (internal_tx, mut internal_rx) = mpsc::channel::<Input>(8);
    let mut canary: Vec<Replica> = Vec::new();
    let mut canary_watch = watch.child_token();
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
                        w.set_weight(&io, weight).await?;
                        if spec.strategy == Strategy::BlueGreen {
                            // Measure whichever colour production does not reach.
                            let pin = match weight {
                                0 => 1,
                                FULL => 2,
                                _ => 0,
                            };
                            counts.pin.store(pin, std::sync::atomic::Ordering::Relaxed);
                        }
                        window_start = Instant::now();
                    }
                    Effect::StartCanary => {
                        canary_watch.cancel();
                        canary_watch = watch.child_token();
                        w.stop(std::mem::take(&mut canary)).await;
                        canary = w.launcher.start_all(new, Pool::Canary).await?;
                        // No traffic (not even pinned preview traffic) before
                        // the replicas are healthy: a request to a replica
                        // still starting would count as a canary error.
                        w.traffic.set_backends(Pool::Canary, &[]).await?;
                        // Waits in the background: steering stays live meanwhile.
                        let (tx, cancel) = (internal_tx.clone(), canary_watch.clone());
                        let (list, h, board) = (handles(&canary), spec.health.clone(), w.board.clone());
                        tokio::spawn(async move {
                            let input = match wait_healthy(&list, &h, &board, &cancel).await {
                                Ok(()) => Input::CanaryHealthy,
                                Err(e) => Input::CanaryUnhealthy(e),
                            };
                            let _ = tx.send(input).await;
                        });
                    }
                    Effect::RunAnalysis => {
                        let input = match w.metrics.measure(w.traffic.stats(), &spec.service, window_start).await {
                            Ok([s, c]) => {
                                let v = judge_run(&s, &c, spec, machine.step, &judge_cfg);
                                io.say(format!("analysis: {:?} ({})", v.class, v.why)).await;
                                for m in &v.metrics {
                                    io.say(format!("  {}: {:?}: {}", m.metric, m.outcome, m.why)).await;
                                }
                                let input = Input::AnalysisDone {
                                    class: v.class,
                                    why: v.why.clone(),
                                };
                                verdict = Some(v);
                                input
                            }
                            Err(e) => {
                                io.say(format!("analysis: no measurement from {}: {e}", w.metrics.name()))
                                    .await;
                                Input::AnalysisError(e)
                            }
                        };
                        window_start = Instant::now();
                        next.extend(machine.handle(input, now()));
                    }
                    Effect::StopCanary { after } => {
                        w.traffic.set_backends(Pool::Canary, &[]).await?;
                        canary_watch.cancel();
                        if w.live {
                            // The service process stops it after the delay.
                            for r in &canary {
                                w.board.remove(&r.name);
                            }
                            w.launcher.retire_after(std::mem::take(&mut canary), after).await;
                        } else {
                            canary_stop_at = Some(Instant::now() + after);
                        }
                    }
                    Effect::MakeCanaryStable => {
                        record_revision(&io.state_dir, &spec.service, new, "promoted", &who())?;
                    }
                    Effect::RestorePrevious => {
                        record_revision(&io.state_dir, &spec.service, prev, "rolled_back", &who())?;
                    }
                    Effect::Note { text, by } => io.note(text, by).await,
                }
            }
            pending = next;
        }
        let (phase, detail) = phase_name(&machine.phase);
        if phase != last_phase {
            last_phase = phase;
            waiting_says(&machine, spec, now(), &io).await;
        }
        let status = Status {
            countdown_s: machine.next_wake().map(|t| t.saturating_sub(now()).as_secs_f64()),
            step: machine.step.min(spec.steps.len()),
            steps: spec.steps.len(),
            verdict: verdict.clone(),
            approvals: machine.approvals.clone(),
            waiting_for: machine.waiting_for(),
            ..w.status(phase, detail.clone())
        };
        let _ = io.status.try_send(status);
        // Remember a gate, and the approvals it has, for a restart; forget
        // it once the rollout is over.
        keep_gate(
            &machine,
            &mut gate_saved,
            &io.state_dir,
            &spec.service,
            &new.version,
            &target,
        );
        // Over (whatever its end): a gate it waited at is not to be taken up.
        if machine.is_settled() || matches!(machine.phase, Phase::Degraded { .. }) {
            let _ = std::fs::remove_file(gate_path(&io.state_dir, &spec.service));
        }
        match &machine.phase {
            Phase::Completed => {
                w.promote(&io, canary, stable).await?;
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
                w.stop(canary).await;
                w.end(stable).await;
                return Err(format!(
                    "{} (stable {} kept serving)",
                    detail.unwrap_or_else(|| reason.clone()),
                    prev.version
                ));
            }
            _ => {}
        }
        let wake = machine.next_wake().map(|t| started + t);
        tokio::select! {
            () = io.cancel.cancelled() => {
                let _ = w.traffic.set_weight(0).await;
                let _ = w.traffic.set_backends(Pool::Canary, &[]).await;
                w.stop(canary).await;
                w.end(stable).await;
                return Err("cancelled: canary set to 0%, stable kept serving".into());
            }
            Some((cmd, by)) = io.control.recv() => {
                pending = machine.handle(input(cmd, by), now());
                // An approval is kept before anyone is told of it.
                keep_gate(&machine, &mut gate_saved, &io.state_dir, &spec.service, &new.version, &target);
            }
            Some(input) = internal_rx.recv() => {
                if input == Input::CanaryHealthy {
                    w.route(Pool::Canary, &canary).await?;
                    w.watch(&canary, &canary_watch);
                    window_start = Instant::now();
                }
                pending = machine.handle(input, now());
            }
            Some((pool, why)) = health_rx.recv() => {
                // A live service's stable replica that died is the service
                // process's to start again: the rollout goes on.
                if pool == Pool::Stable && w.restarting(&why).await {
                    io.say(format!("{why}: it died, and the service process starts it again")).await;
                    continue;
                }
                let input = match pool {
                    Pool::Canary => Input::CanaryUnhealthy(why),
                    Pool::Stable => Input::StableUnhealthy(why),
                };
                pending = machine.handle(input, now());
            }
            () = sleep_until_opt(wake) => {
                pending = machine.handle(Input::Tick, now());
            }
            _ = status_tick.tick() => {}
        }
    }
}

/// Says in the log that the rollout now waits for a person or a timer, and
/// how to go on: headless output shows nothing else of it.
async fn waiting_says(machine: &Canary, spec: &Deploy, now: Duration, io: &Io) {
    let left = machine.next_wake().map(|t| t.saturating_sub(now).as_secs());
    let promote = format!("P in the UI or `trackside rollout {} promote`", spec.service);
    let at = format!(
        "step {}/{}, canary {}",
        machine.step + 1,
        spec.steps.len(),
        percent(machine.weight)
    );
    match (&machine.phase, spec.steps.get(machine.step)) {
        (Phase::Gate { .. }, step) => {
            let then = match (step, left) {
                (
                    Some(Step::Gate {
                        timeout: Some((_, action)),
                    }),
                    Some(l),
                ) => {
                    format!("; in {l}s it will {}", format!("{action:?}").to_lowercase())
                }
                _ => String::new(),
            };
            io.say(format!("waiting at a manual gate ({at}){then}: promote with {promote}"))
                .await;
        }
        (Phase::Paused { .. }, _) => {
            io.say(format!(
                "pausing {}s ({at}); {promote} goes on at once",
                left.unwrap_or(0)
            ))
            .await;
        }
        _ => {}
    }
}

/// One analysis run: the statistical judge plus the step's thresholds.
fn judge_run(s: &Measured, c: &Measured, spec: &Deploy, step: usize, cfg: &JudgeConfig) -> Verdict {
    let mut metrics = vec![
        judge::compare_errors("error_rate", (s.errors, s.requests), (c.errors, c.requests), cfg),
        judge::compare_samples("latency_ms", &s.latencies_ms, &c.latencies_ms, cfg),
    ];
    if let Some(Step::Analysis { thresholds, .. }) = spec.steps.get(step) {
        for t in thresholds {
            let name = format!("check {}", t.metric.name());
            metrics.push(judge::check_threshold(
                &name,
                t.max,
                t.max_ratio,
                s.value(t.metric),
                c.value(t.metric),
            ));
        }
    }
    judge::verdict(metrics)
}

/// The rolling update: old replicas (`stable`) are replaced batch by batch.
async fn drive_rolling(
    w: &World<'_>,
    mut io: Io,
    mut health_rx: mpsc::Receiver<(Pool, String)>,
    stable: Vec<Replica>,
    watch: &CancellationToken,
) -> Result<String, String> {
    let spec = w.spec;
    let (prev, new) = (&w.prev, &w.new);
    let started = Instant::now();
    let now = || started.elapsed();
    let mut machine = Rolling::new(RollingSpec {
        total: new.replicas,
        old: prev.replicas,
        batch_size: spec.rolling.batch_size,
        max_unavailable: spec.rolling.max_unavailable,
        progress_deadline: spec.progress_deadline,
    });
    let (internal_tx, mut internal_rx) = mpsc::channel::<rolling::Input>(8);
    let mut old = stable;
    let mut serving: Vec<Replica> = Vec::new();
    let mut starting: Vec<Replica> = Vec::new();
    let mut next_old = prev.replicas;
    let mut next_new = 0;
    let batch_watch = watch.child_token();
    let mut pending = machine.handle(rolling::Input::Start, now());
    let mut status_tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        for effect in std::mem::take(&mut pending) {
            match effect {
                rolling::Effect::StopOld { count } => {
                    let keep = old.len().saturating_sub(count as usize);
                    let going: Vec<Replica> = old.drain(keep..).collect();
                    drain_and_stop(w, &io, Pool::Stable, &old, &serving, going).await?;
                }
                rolling::Effect::StartNew { count } => {
                    for _ in 0..count {
                        next_new += 1;
                        starting.push(w.launcher.start(new, Pool::Canary, next_new).await?);
                    }
                    let (tx, cancel) = (internal_tx.clone(), batch_watch.clone());
                    let (list, h, board) = (handles(&starting), spec.health.clone(), w.board.clone());
                    tokio::spawn(async move {
                        let input = match wait_healthy(&list, &h, &board, &cancel).await {
                            Ok(()) => rolling::Input::BatchHealthy,
                            Err(e) => rolling::Input::BatchUnhealthy(e),
                        };
                        let _ = tx.send(input).await;
                    });
                }
                rolling::Effect::ServeNew => {
                    w.watch(&starting, watch);
                    serving.append(&mut starting);
                    w.route(Pool::Canary, &serving).await?;
                    w.set_weight(&io, share(&old, &serving)).await?;
                }
                rolling::Effect::RollBackUpdated { old: want } => {
                    // The old revision first, so nothing goes unserved.
                    let mut restored = Vec::new();
                    while (old.len() + restored.len()) < want as usize {
                        next_old += 1;
                        restored.push(w.launcher.start(prev, Pool::Stable, next_old).await?);
                    }
                    batch_watch.cancel();
                    if let Err(e) = wait_healthy(&handles(&restored), &spec.health, &w.board, &io.cancel).await {
                        io.say(format!(
                            "rollback: a restarted {} replica is not healthy: {e}",
                            prev.version
                        ))
                        .await;
                    }
                    w.watch(&restored, watch);
                    old.extend(restored);
                    w.route(Pool::Stable, &old).await?;
                    let mut going = std::mem::take(&mut serving);
                    going.append(&mut starting);
                    drain_and_stop(w, &io, Pool::Canary, &old, &[], going).await?;
                }
                rolling::Effect::MakeNewStable => {
                    record_revision(&io.state_dir, &spec.service, new, "promoted", &who())?;
                }
                rolling::Effect::RestorePrevious => {
                    record_revision(&io.state_dir, &spec.service, prev, "rolled_back", &who())?;
                }
                rolling::Effect::Note { text, by } => io.note(text, by).await,
            }
        }
        let (all, _) = machine.batches();
        let done = machine.updated.div_ceil(spec.rolling.batch_size.max(1));
        let detail = match &machine.phase {
            rolling::Phase::Updating { starting } => Some(format!(
                "{} of {} replicas updated; {starting} starting",
                machine.updated, new.replicas
            )),
            rolling::Phase::Held => Some("paused by hand between batches".into()),
            rolling::Phase::RolledBack { reason } => Some(reason.clone()),
            rolling::Phase::NotStarted | rolling::Phase::Completed => None,
        };
        let phase = machine.phase.name();
        let status = Status {
            step: done as usize,
            steps: all as usize,
            countdown_s: machine.next_wake().map(|t| t.saturating_sub(now()).as_secs_f64()),
            ..w.status(phase, detail.clone())
        };
        let _ = io.status.try_send(status);
        match &machine.phase {
            rolling::Phase::Completed => {
                w.promote(&io, serving, std::mem::take(&mut old)).await?;
                return Ok(format!(
                    "{} is now stable for {}: {} replica(s) updated",
                    new.version, spec.service, new.replicas
                ));
            }
            rolling::Phase::RolledBack { reason } => {
                w.end(old).await;
                return Err(format!("rolled back: {reason} ({} kept serving)", prev.version));
            }
            _ => {}
        }
        let wake = machine.next_wake().map(|t| started + t);
        tokio::select! {
            () = io.cancel.cancelled() => {
                w.stop(starting).await;
                if w.live {
                    // The old replicas left take everything again.
                    let _ = w.traffic.set_weight(0).await;
                    let _ = w.traffic.set_backends(Pool::Canary, &[]).await;
                }
                w.stop(serving).await;
                w.end(old).await;
                return Err("cancelled mid-update".into());
            }
            Some((cmd, who)) = io.control.recv() => {
                // A rolling update has no gates to approve: its commands are
                // anyone's who may reach the run.
                let by = who.display;
                let input = match cmd {
                    Command::Abort => Ok(rolling::Input::Abort { by }),
                    Command::Rollback => Ok(rolling::Input::Rollback { by }),
                    Command::Pause => Ok(rolling::Input::Pause { by }),
                    Command::Resume | Command::Promote => Ok(rolling::Input::Resume { by }),
                    Command::PromoteFull | Command::Retry => Err(by),
                };
                match input {
                    Ok(i) => pending = machine.handle(i, now()),
                    Err(by) => io.note(format!("{cmd:?} ignored: it does not apply to a rolling update"), Some(by)).await,
                }
            }
            Some(input) = internal_rx.recv() => {
                pending = machine.handle(input, now());
            }
            Some((pool, why)) = health_rx.recv() => {
                if pool == Pool::Canary {
                    pending = machine.handle(rolling::Input::UpdatedUnhealthy(why), now());
                } else {
                    io.say(format!("rollout: old replica unhealthy: {why}")).await;
                }
            }
            () = sleep_until_opt(wake) => {
                pending = machine.handle(rolling::Input::Tick, now());
            }
            _ = status_tick.tick() => {}
        }
    }
}

/// In a rolling update traffic follows the replica counts: the new
/// revision's share is its share of the serving replicas.
fn share(old: &[Replica], new: &[Replica]) -> u32 {
    let total = (old.len() + new.len()).max(1) as u32;
    (new.len() as u32 * FULL).div_ceil(total).min(FULL)
}

/// Takes `going` out of `pool`, moves the weight to the counts left
/// (`stable` and `canary` are what still serves), waits for their requests
/// in flight (at most the drain timeout), and stops them.
async fn drain_and_stop(
    w: &World<'_>,
    io: &Io,
    pool: Pool,
    stable: &[Replica],
    canary: &[Replica],
    going: Vec<Replica>,
) -> Result<(), String> {
    if going.is_empty() {
        return Ok(());
    }
    let remaining: Vec<SocketAddr> = match pool {
        Pool::Stable => stable.iter().map(|r| r.addr).collect(),
        Pool::Canary => canary.iter().map(|r| r.addr).collect(),
    };
    for r in &going {
        w.board.set(&r.handle(), "draining");
    }
    w.traffic.set_backends(pool, &remaining).await?;
    w.set_weight(io, share(stable, canary)).await?;
    for r in &going {
        if !w.traffic.drain(r.addr, w.spec.rolling.drain_timeout).await {
            io.say(format!(
                "{} still had requests in flight after the drain timeout ({}s); stopping it anyway",
                r.name,
                w.spec.rolling.drain_timeout.as_secs()
            ))
            .await;
        }
    }
    let names: Vec<String> = going.iter().map(|r| r.name.clone()).collect();
    w.stop(going).await;
    io.say(format!("drained and stopped {}", names.join(", "))).await;
    Ok(())
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}
