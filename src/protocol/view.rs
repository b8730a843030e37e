//! What front-ends show of a deploy: the rollout's status as its pane and
//! charts draw it, its replicas, the judge's verdict, and the steering
//! commands a person sends. The deploy module produces them; front-ends
//! read them through events.

use serde::{Deserialize, Serialize};

/// A share in tenths of a percent as people read it: `30.0%`.
pub fn percent(tenths: u32) -> String {
    format!("{:.1}%", f64::from(tenths) / 10.0)
}

/// How long ago, as people read it: `45s`, `12 min`, `3 h`, `2 d`.
pub fn ago_text(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{} min", secs / 60),
        3600..86400 => format!("{} h", secs / 3600),
        _ => format!("{} d", secs / 86400),
    }
}

/// A steering command from a person.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutCommand {
    Promote,
    PromoteFull,
    Abort,
    Retry,
    Rollback,
    Pause,
    Resume,
}

impl RolloutCommand {
    pub const ALL: [RolloutCommand; 7] = [
        RolloutCommand::Promote,
        RolloutCommand::PromoteFull,
        RolloutCommand::Abort,
        RolloutCommand::Retry,
        RolloutCommand::Rollback,
        RolloutCommand::Pause,
        RolloutCommand::Resume,
    ];

    /// Its name as `trackside rollout SERVICE NAME` takes it.
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutCommand::Promote => "promote",
            RolloutCommand::PromoteFull => "promote_full",
            RolloutCommand::Abort => "abort",
            RolloutCommand::Retry => "retry",
            RolloutCommand::Rollback => "rollback",
            RolloutCommand::Pause => "pause",
            RolloutCommand::Resume => "resume",
        }
    }
}

/// What the rollout looks like now, for front-ends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutStatus {
    pub service: String,
    /// `canary`, `blue_green` or `rolling`.
    #[serde(default)]
    pub strategy: String,
    /// `built-in router` or `HAProxy`.
    #[serde(default)]
    pub router: String,
    pub stable_version: Option<String>,
    pub canary_version: String,
    /// `starting_canary`, `running`, `paused`, `gate`, `analyzing`, `held`,
    /// `updating`, `completed`, `aborted`, `rolled_back`, `degraded`.
    pub phase: String,
    pub detail: Option<String>,
    /// Seconds left on a pause or gate countdown.
    pub countdown_s: Option<f64>,
    /// Canary: the step (of `steps`); rolling: batches done (of all).
    pub step: usize,
    pub steps: usize,
    /// The canary's (new revision's) share asked for, in tenths of a percent.
    pub weight: u32,
    /// The share the router really gives (HAProxy rounds to its integer weights).
    #[serde(default)]
    pub actual_weight: u32,
    pub stable: Totals,
    pub canary: Totals,
    /// The last two seconds, per pool (stable, canary): error rate (0..1)
    /// and p95 latency in ms; `None` without requests. What the charts plot.
    pub recent_error_rate: [Option<f64>; 2],
    pub recent_p95_ms: [Option<f64>; 2],
    pub verdict: Option<Verdict>,
    /// Every replica with its health.
    #[serde(default)]
    pub replicas: Vec<ReplicaView>,
    /// The steps, as people read them (`weight 10%`, `analysis 2 x 10s`, `gate`).
    #[serde(default)]
    pub step_names: Vec<String>,
    /// Hard limits of the analyses, for the charts: error rate (%) and p95 (ms).
    #[serde(default)]
    pub limits: [Option<f64>; 2],
    /// With an approval policy: who has approved passing the current step
    /// (accounts), and who is still needed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvals: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<String>,
    /// The policy, when there is one ("2 of group sre").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approvers: Option<String>,
}

impl RolloutStatus {
    /// Whether the rollout has ended: only a rollback of a completed one is
    /// left to do.
    pub fn is_over(&self) -> bool {
        matches!(self.phase.as_str(), "completed" | "aborted" | "rolled_back")
    }

    /// The phase and share in a few characters, for a DAG box: `gate 30%`.
    pub fn brief(&self) -> String {
        let phase = match self.phase.as_str() {
            "starting_canary" => "start",
            "running" | "completed" => "",
            "analyzing" => "judge",
            "updating" => "update",
            other => other,
        };
        let pct = percent(self.weight).replace(".0%", "%");
        if phase.is_empty() {
            pct
        } else {
            format!("{phase} {pct}")
        }
    }

    /// Seconds until the pause, gate or analysis acts by itself, if it will.
    pub fn countdown(&self) -> Option<f64> {
        self.countdown_s
            .filter(|_| matches!(self.phase.as_str(), "paused" | "gate" | "analyzing"))
    }

    /// One line for people: `web v1 -> v2 (canary): gate, step 2/3, weight 30.0%, next in 118s`.
    pub fn summary(&self) -> String {
        let (unit, done) = if self.strategy == "rolling" {
            ("batch", self.step)
        } else {
            ("step", (self.step + 1).min(self.steps))
        };
        let mut out = format!(
            "{} {} -> {}",
            self.service,
            self.stable_version.as_deref().unwrap_or("-"),
            self.canary_version
        );
        if !self.strategy.is_empty() {
            out.push_str(&format!(" ({})", self.strategy.replace('_', "-")));
        }
        out.push_str(&format!(
            ": {}, {unit} {done}/{}, weight {}",
            self.phase.replace('_', " "),
            self.steps,
            percent(self.weight)
        ));
        if let Some(c) = self.countdown() {
            out.push_str(&format!(", next in {c:.0}s"));
        }
        if let Some(d) = &self.detail {
            out.push_str(&format!(" ({d})"));
        }
        if let Some(a) = &self.approvers {
            out.push_str(&format!("; approvers: {a}"));
        }
        if !self.approvals.is_empty() {
            out.push_str(&format!("; approved by {}", self.approvals.join(", ")));
        }
        if let Some(w) = &self.waiting_for {
            out.push_str(&format!("; {w}"));
        }
        out
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pool {
    Stable,
    Canary,
}

impl Pool {
    pub fn index(self) -> usize {
        match self {
            Pool::Stable => 0,
            Pool::Canary => 1,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Pool::Stable => "stable",
            Pool::Canary => "canary",
        }
    }
}

/// Totals of one pool since the router started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Totals {
    pub requests: u64,
    pub errors: u64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
}

/// How one replica is doing, for the rollout pane.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaView {
    pub name: String,
    pub pool: Pool,
    pub addr: String,
    /// `starting`, `healthy`, `unhealthy`, `draining`.
    pub health: String,
}

/// One metric's result, as Kayenta names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MetricOutcome {
    Pass,
    /// The canary is significantly higher (worse for latency and errors).
    High,
    /// The canary is significantly lower.
    Low,
    NoData,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricResult {
    pub metric: String,
    pub outcome: MetricOutcome,
    /// Stable's and canary's summary values (median, or error rate).
    pub stable: Option<f64>,
    pub canary: Option<f64>,
    pub p_value: Option<f64>,
    /// One sentence: what was compared and what decided it.
    pub why: String,
    /// A threshold check: when it fails, the verdict fails whatever the score.
    #[serde(default)]
    pub critical: bool,
}

impl MetricResult {
    /// For metrics where lower is better, Low counts as a pass.
    pub fn passed(&self) -> bool {
        matches!(self.outcome, MetricOutcome::Pass | MetricOutcome::Low)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VerdictClass {
    Pass,
    Marginal,
    Fail,
    /// Some metric had no data: the canary waits, it is not passed.
    Inconclusive,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub score: f64,
    pub class: VerdictClass,
    pub metrics: Vec<MetricResult>,
    pub why: String,
}

/// A pipeline's recent runs from history, as `trackside stats` prints them
/// and the UI's dashboard charts them (oldest first).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct PipelineStats {
    pub pipeline: String,
    pub runs: usize,
    pub failed: usize,
    pub p50_ms: u64,
    pub p90_ms: u64,
    pub durations_ms: Vec<u64>,
    /// `passed` or `failed`, one per run.
    pub results: Vec<String>,
    /// Failed attempts by class, most first.
    pub failures_by_class: Vec<ClassCount>,
    /// The flakiest jobs, flakiest first (at most five).
    pub flaky: Vec<FlakyJob>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassCount {
    pub class: String,
    pub attempts: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlakyJob {
    pub job: String,
    /// Failures per run, and the 90% interval of the failure probability.
    pub rate: f64,
    pub low: f64,
    pub high: f64,
}

/// A live service as the services view shows it (`trackside services
/// --ui`): what serves, its replicas, and its last change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceOverview {
    pub name: String,
    /// Where its router listens.
    pub listen: String,
    /// `serving`, `router down` (replicas left running) or `stopped`.
    pub state: String,
    pub stable_version: Option<String>,
    pub canary_version: Option<String>,
    /// The canary's share, in tenths of a percent.
    pub weight: u32,
    /// Why the service is Degraded (its replicas keep dying).
    pub degraded: Option<String>,
    pub replicas: Vec<ServiceReplica>,
    /// The newest entry of its revision history: `v2 promoted by ada@host`.
    pub last_change: Option<String>,
    /// When that was (ms since the epoch).
    pub last_change_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceReplica {
    pub name: String,
    pub version: String,
    pub addr: String,
    /// `stable`, `canary`, `not routed`, `stops in 12s`.
    pub role: String,
    pub up: bool,
    pub restarts: u32,
}

/// One second of a service's traffic through its router, per pool
/// (stable, canary): what the services view charts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServicePoint {
    /// Seconds since the view started watching.
    pub t_s: f64,
    pub requests: [u64; 2],
    /// Error rate (0..1) and p95 latency (ms) over the last two seconds;
    /// `None` without requests.
    pub error_rate: [Option<f64>; 2],
    pub p95_ms: [Option<f64>; 2],
}

/// What feeds the services view.
#[derive(Debug, Clone, PartialEq)]
pub enum ServicesFeed {
    /// Every service of the state directory, as they are now.
    Overview(Vec<ServiceOverview>),
    /// A second of one service's traffic.
    Point { service: String, point: ServicePoint },
}

/// A node of the swarm a run's container jobs run on (`--executor swarm`),
/// as the manager reports it: what `trackside nodes` lists and the UI's
/// nodes view shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterNode {
    pub id: String,
    /// Its address in the swarm (empty when the manager gives none).
    pub addr: String,
    pub hostname: String,
    /// `ready`, `down`, `disconnected`, ...
    pub state: String,
    /// Its availability is `active` (not drained or paused).
    pub active: bool,
    /// `active`, `drain` or `pause`.
    pub availability: String,
    pub manager: bool,
    pub cpus: f64,
    /// Bytes.
    pub memory: u64,
    pub labels: std::collections::BTreeMap<String, String>,
    /// trackside's tasks running on it (every run's, this machine's or not).
    pub trackside_tasks: usize,
}

/// `1.5 GiB`, `512.0 MiB`.
pub fn gib(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1024.0 * 1024.0 * 1024.0 {
        format!("{:.1} GiB", b / (1024.0 * 1024.0 * 1024.0))
    } else {
        format!("{:.1} MiB", b / (1024.0 * 1024.0))
    }
}

impl ClusterNode {
    /// How messages and views name it: its address, else its host name.
    pub fn name(&self) -> &str {
        if self.addr.is_empty() {
            &self.hostname
        } else {
            &self.addr
        }
    }
}
