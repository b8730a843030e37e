//! Native `deploy:` jobs: the target, the strategy and its steps, the
//! router, the metrics source, analyses and thresholds.

use std::time::Duration;

use crate::pipeline::diag::suggestion_hint;
use crate::pipeline::model::*;
use crate::pipeline::read::*;
use crate::pipeline::yaml::{Node, Value};

impl Cx<'_> {
    /// `deploy:` of a job (a canary rollout of local processes).
    pub(crate) fn deploy(&mut self, node: &Node, path: &str) -> Option<Deploy> {
        let keys = [
            "service",
            "listen",
            "metrics_listen",
            "version",
            "run",
            "image",
            "port",
            "replicas",
            "router",
            "metrics",
            "health",
            "traffic",
            "strategy",
            "progress_deadline",
            "abort_delay",
            "scale_down_delay",
            "keep_serving",
            "judge",
            "approvers",
        ];
        if !self.mapping(node, path, &keys, "deploy") {
            return None;
        }
        let service = self.required_string(node, path, "service", "web");
        let listen = self.required_string(node, path, "listen", "127.0.0.1:8080");
        if let (Some(l), Some(n)) = (&listen, get(node, "listen"))
            && l.parse::<std::net::SocketAddr>().is_err()
        {
            self.err(
                n,
                &join(path, "listen"),
                format!("`{l}` is not an address"),
                "write IP:PORT, e.g. `127.0.0.1:8080`",
            );
        }
        let metrics_listen = get(node, "metrics_listen").and_then(|n| {
            let v = self.string(n, &join(path, "metrics_listen"))?;
            if v.parse::<std::net::SocketAddr>().is_err() {
                self.err(
                    n,
                    &join(path, "metrics_listen"),
                    format!("`{v}` is not an address"),
                    "write IP:PORT, e.g. `127.0.0.1:9464`",
                );
                return None;
            }
            Some(v)
        });
        let target = self.deploy_target(node, path);
        let version = get(node, "version")
            .and_then(|n| self.string(n, &join(path, "version")))
            .unwrap_or_else(|| "new".into());
        let replicas = get(node, "replicas")
            .and_then(|n| self.int_in(n, &join(path, "replicas"), 1, 50))
            .unwrap_or(1);
        let hpath = join(path, "health");
        let mut health = HealthCheck {
            probe: Probe::Http {
                path: "/healthz".into(),
                status: None,
            },
            interval: Duration::from_secs(1),
            success_threshold: 3,
            failure_threshold: 2,
            timeout: Duration::from_secs(300),
        };
        if let Some(h) = get(node, "health")
            && self.mapping(
                h,
                &hpath,
                &[
                    "http",
                    "status",
                    "tcp",
                    "command",
                    "interval",
                    "success_threshold",
                    "failure_threshold",
                    "timeout",
                ],
                "health",
            )
        {
            let kinds: Vec<&str> = ["http", "tcp", "command"]
                .into_iter()
                .filter(|k| get(h, k).is_some())
                .collect();
            if kinds.len() > 1 {
                self.err(
                    h,
                    &hpath,
                    format!("`health` has {}: give one", kinds.join(" and ")),
                    "`http: /healthz`, `tcp: true` or `command: \"./check ${PORT}\"`",
                );
            }
            let status = get(h, "status")
                .and_then(|n| self.int_in(n, &join(&hpath, "status"), 100, 599))
                .map(|v| v as u16);
            if let Some(p) = get(h, "http").and_then(|n| self.string(n, &join(&hpath, "http"))) {
                health.probe = Probe::Http {
                    path: if p.starts_with('/') { p } else { format!("/{p}") },
                    status,
                };
            } else if let Some(n) = get(h, "tcp") {
                if self.boolean(n, &join(&hpath, "tcp")) == Some(true) {
                    health.probe = Probe::Tcp;
                }
            } else if let Some(c) = get(h, "command").and_then(|n| self.string(n, &join(&hpath, "command"))) {
                health.probe = Probe::Command(c);
            } else if let Some(st) = status {
                health.probe = Probe::Http {
                    path: "/healthz".into(),
                    status: Some(st),
                };
            }
            if let Some(d) = get(h, "interval").and_then(|n| self.seconds_in(n, &join(&hpath, "interval"), 0.05, 600.0))
            {
                health.interval = d;
            }
            if let Some(v) =
                get(h, "success_threshold").and_then(|n| self.int_in(n, &join(&hpath, "success_threshold"), 1, 100))
            {
                health.success_threshold = v;
            }
            if let Some(v) =
                get(h, "failure_threshold").and_then(|n| self.int_in(n, &join(&hpath, "failure_threshold"), 1, 100))
            {
                health.failure_threshold = v;
            }
            if let Some(d) = get(h, "timeout").and_then(|n| self.seconds_in(n, &join(&hpath, "timeout"), 1.0, 86400.0))
            {
                health.timeout = d;
            }
        }
        let rps = match get(node, "traffic") {
            Some(t) if self.mapping(t, &join(path, "traffic"), &["rps"], "traffic") => get(t, "rps")
                .and_then(|n| self.int_in(n, &join(path, "traffic.rps"), 0, 10_000))
                .unwrap_or(0),
            _ => 0,
        };
        let (mut confidence, mut tolerance) = (0.98, 0.25);
        if let Some(j) = get(node, "judge")
            && self.mapping(j, &join(path, "judge"), &["confidence", "tolerance"], "judge")
        {
            for (key, slot) in [("confidence", &mut confidence), ("tolerance", &mut tolerance)] {
                if let Some(n) = get(j, key) {
                    match n.value {
                        Value::Float(f) if f > 0.0 && f < 1.0 => *slot = f,
                        _ => self.err(
                            n,
                            &format!("{path}.judge.{key}"),
                            format!("`{key}` must be a number between 0 and 1"),
                            "e.g. `confidence: 0.98`, `tolerance: 0.25`",
                        ),
                    }
                }
            }
        }
        let strategy = self.rollout_steps(node, path);
        let rolling = self.rolling(node, path);
        // Every part is read (and its mistakes reported) before any is missing.
        let router = match get(node, "router") {
            Some(n) => self.router(n, &join(path, "router")),
            None => Some(RouterSpec::Builtin),
        };
        let metrics = match get(node, "metrics") {
            Some(n) => self.metrics_source(n, &join(path, "metrics")),
            None => Some(MetricsSpec::Builtin),
        };
        let progress_deadline = get(node, "progress_deadline")
            .and_then(|n| self.seconds_in(n, &join(path, "progress_deadline"), 1.0, 86400.0))
            .unwrap_or(Duration::from_secs(600));
        let abort_delay = get(node, "abort_delay")
            .and_then(|n| self.seconds_in(n, &join(path, "abort_delay"), 0.0, 3600.0))
            .unwrap_or(Duration::from_secs(30));
        let scale_down_delay = get(node, "scale_down_delay")
            .and_then(|n| self.seconds_in(n, &join(path, "scale_down_delay"), 0.0, 86400.0))
            .unwrap_or(Duration::from_secs(30));
        let keep_serving = get(node, "keep_serving")
            .and_then(|n| self.boolean(n, &join(path, "keep_serving")))
            .unwrap_or(true);
        let approvers = get(node, "approvers").and_then(|n| {
            let apath = join(path, "approvers");
            let promotes_itself = strategy.as_ref().is_some_and(|(_, steps)| {
                steps.iter().any(|s| {
                    matches!(
                        s,
                        crate::pipeline::model::RolloutStep::Gate {
                            timeout: Some((_, crate::pipeline::model::GateAction::Promote))
                        }
                    )
                })
            });
            if promotes_itself {
                self.err(
                    n,
                    &apath,
                    "a gate that promotes on its own when its timeout ends would pass without these approvals",
                    "give the gate `default: abort`, or remove its `timeout`",
                );
                return None;
            }
            self.approvers(n, &apath)
        });
        Some(Deploy {
            service: service?,
            listen: listen?,
            metrics_listen,
            version,
            target: target?,
            replicas,
            router: router?,
            metrics: metrics?,
            health,
            rps,
            strategy: strategy.as_ref()?.0,
            steps: strategy?.1,
            rolling,
            progress_deadline,
            abort_delay,
            scale_down_delay,
            keep_serving,
            confidence,
            tolerance,
            approvers,
        })
    }

    /// `run: "cmd ${PORT}"` or `image:` + `port:`, one of them.
    pub(crate) fn deploy_target(&mut self, node: &Node, path: &str) -> Option<Target> {
        match (get(node, "run"), get(node, "image")) {
            (Some(_), Some(i)) => {
                self.err(
                    i,
                    &join(path, "image"),
                    "`deploy` has both `run` and `image`",
                    "a replica is a command (`run`) or a container (`image` + `port`): keep one",
                );
                None
            }
            (None, Some(i)) => {
                let image = self.string(i, &join(path, "image"))?;
                let Some(p) = get(node, "port") else {
                    self.err(
                        i,
                        &join(path, "image"),
                        "a container target needs `port`",
                        "the port the service listens on inside the container, e.g. `port: 8080`",
                    );
                    return None;
                };
                let port = self.int_in(p, &join(path, "port"), 1, 65535)?;
                Some(Target::Container {
                    image,
                    port: port as u16,
                })
            }
            (run, None) => {
                if let Some(p) = get(node, "port") {
                    self.err(
                        p,
                        &join(path, "port"),
                        "`port` belongs to a container target",
                        "with `run`, pass `${PORT}` to the command instead",
                    );
                }
                if run.is_none() {
                    self.err(
                        node,
                        path,
                        "`deploy` needs `run` or `image`",
                        "e.g. `run: \"./server --port ${PORT}\"` or `image: web:v2` with `port: 8080`",
                    );
                    return None;
                }
                let r = self.required_string(node, path, "run", "\"./server --port ${PORT}\"")?;
                if !r.contains("${PORT}") {
                    if let Some(n) = get(node, "run") {
                        self.err(
                            n,
                            &join(path, "run"),
                            "`run` does not use `${PORT}`",
                            "each replica gets its own port: pass `${PORT}` to the command",
                        );
                    }
                    return None;
                }
                Some(Target::Process { run: r })
            }
        }
    }

    /// `strategy: {rolling: {batch_size, max_unavailable, drain_timeout}}`.
    pub(crate) fn rolling(&mut self, node: &Node, path: &str) -> Rolling {
        let mut out = Rolling::default();
        let rpath = format!("{path}.strategy.rolling");
        let Some(r) = get(node, "strategy").and_then(|s| get(s, "rolling")) else {
            return out;
        };
        if matches!(r.value, Value::Null) {
            return out;
        }
        if !self.mapping(
            r,
            &rpath,
            &["batch_size", "max_unavailable", "drain_timeout"],
            "rolling",
        ) {
            return out;
        }
        if let Some(v) = get(r, "batch_size").and_then(|n| self.int_in(n, &join(&rpath, "batch_size"), 1, 50)) {
            out.batch_size = v;
        }
        if let Some(v) = get(r, "max_unavailable").and_then(|n| self.int_in(n, &join(&rpath, "max_unavailable"), 0, 50))
        {
            out.max_unavailable = v;
        }
        if let Some(d) =
            get(r, "drain_timeout").and_then(|n| self.seconds_in(n, &join(&rpath, "drain_timeout"), 0.0, 3600.0))
        {
            out.drain_timeout = d;
        }
        out
    }

    /// `router: builtin`, `router: haproxy`, or `router: {haproxy: {binary, socket, backend, log_listen}}`.
    pub(crate) fn router(&mut self, n: &Node, path: &str) -> Option<RouterSpec> {
        let default = Haproxy {
            binary: "haproxy".into(),
            socket: None,
            backend: None,
            log_listen: None,
        };
        if let Value::Str(s) = &n.value {
            return match s.as_str() {
                "builtin" => Some(RouterSpec::Builtin),
                "haproxy" => Some(RouterSpec::Haproxy(default)),
                other => {
                    self.err(
                        n,
                        path,
                        format!("unknown router `{other}`"),
                        "use `builtin` (the default) or `haproxy`",
                    );
                    None
                }
            };
        }
        if !self.mapping(n, path, &["builtin", "haproxy"], "router") {
            return None;
        }
        let Some(h) = get(n, "haproxy") else {
            return Some(RouterSpec::Builtin);
        };
        let hpath = join(path, "haproxy");
        let mut spec = default;
        if matches!(h.value, Value::Null) {
            return Some(RouterSpec::Haproxy(spec));
        }
        if !self.mapping(h, &hpath, &["binary", "socket", "backend", "log_listen"], "haproxy") {
            return None;
        }
        if let Some(b) = get(h, "binary").and_then(|v| self.string(v, &join(&hpath, "binary"))) {
            spec.binary = b;
        }
        spec.socket = get(h, "socket").and_then(|v| self.string(v, &join(&hpath, "socket")));
        spec.backend = get(h, "backend").and_then(|v| self.string(v, &join(&hpath, "backend")));
        spec.log_listen = get(h, "log_listen").and_then(|v| self.string(v, &join(&hpath, "log_listen")));
        if let (Some(l), Some(v)) = (&spec.log_listen, get(h, "log_listen"))
            && !l.starts_with('/')
        {
            let (message, hint) = if l.parse::<std::net::SocketAddr>().is_ok() {
                (
                    format!(
                        "`{l}` is a UDP address: any local user can send to it and forge the measurements the judge reads"
                    ),
                    "give a Unix socket path for HAProxy's `log` line, e.g. `/run/trackside/web.log.sock` (see docs/deployments.md)",
                )
            } else {
                (
                    format!("`{l}` is not an absolute path"),
                    "give the absolute path of a Unix socket, e.g. `/run/trackside/web.log.sock`",
                )
            };
            self.err(v, &join(&hpath, "log_listen"), message, hint);
            return None;
        }
        if spec.socket.is_none() && (spec.backend.is_some() || spec.log_listen.is_some()) {
            self.err(
                h,
                &hpath,
                "`backend` and `log_listen` are for a running HAProxy",
                "add `socket:` (its admin stats socket), or drop them to let trackside start HAProxy",
            );
            return None;
        }
        Some(RouterSpec::Haproxy(spec))
    }

    /// `metrics: builtin` or `metrics: {prometheus: {url, requests, errors, latency}}`.
    pub(crate) fn metrics_source(&mut self, n: &Node, path: &str) -> Option<MetricsSpec> {
        if let Value::Str(s) = &n.value {
            if s == "builtin" {
                return Some(MetricsSpec::Builtin);
            }
            self.err(
                n,
                path,
                format!("unknown metrics provider `{s}`"),
                "use `builtin` (the default) or `{prometheus: {url: http://127.0.0.1:9090}}`",
            );
            return None;
        }
        if !self.mapping(n, path, &["builtin", "prometheus"], "metrics") {
            return None;
        }
        let Some(p) = get(n, "prometheus") else {
            return Some(MetricsSpec::Builtin);
        };
        let ppath = join(path, "prometheus");
        if !self.mapping(p, &ppath, &["url", "requests", "errors", "latency"], "prometheus") {
            return None;
        }
        let url = self.required_string(p, &ppath, "url", "http://127.0.0.1:9090")?;
        if !(url.starts_with("http://") && url.len() > "http://".len()) {
            if let Some(u) = get(p, "url") {
                self.err(
                    u,
                    &join(&ppath, "url"),
                    format!("`{url}` is not an http:// address"),
                    "e.g. `url: http://127.0.0.1:9090` (https is not supported)",
                );
            }
            return None;
        }
        let mut query = |key: &str, default: &str| {
            get(p, key)
                .and_then(|v| self.string(v, &join(&ppath, key)))
                .unwrap_or_else(|| default.to_string())
        };
        Some(MetricsSpec::Prometheus(Prometheus {
            url: url.trim_end_matches('/').to_string(),
            requests: query("requests", PROM_REQUESTS),
            errors: query("errors", PROM_ERRORS),
            latency: query("latency", PROM_LATENCY),
        }))
    }

    /// `metrics: [{metric: error_rate, max: 0.01}, {metric: p95_ms, max_ratio: 1.2}]`.
    pub(crate) fn thresholds(&mut self, node: &Node, path: &str) -> Vec<Threshold> {
        let Value::Seq(items) = &node.value else {
            self.err(
                node,
                path,
                "`metrics` must be a list",
                "e.g. `metrics: [{metric: error_rate, max: 0.01}]`",
            );
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let ipath = format!("{path}[{i}]");
            if !self.mapping(item, &ipath, &["metric", "max", "max_ratio"], "a metric check") {
                continue;
            }
            let names: Vec<&str> = ThresholdMetric::ALL.iter().map(|(n, _)| *n).collect();
            let metric = match get(item, "metric").and_then(|m| self.string(m, &join(&ipath, "metric")).map(|v| (v, m)))
            {
                Some((v, m)) => match ThresholdMetric::ALL.iter().find(|(n, _)| *n == v) {
                    Some((_, metric)) => Some(*metric),
                    None => {
                        let hint = suggestion_hint(&v, &names, "metrics");
                        self.err(m, &join(&ipath, "metric"), format!("unknown metric `{v}`"), hint);
                        None
                    }
                },
                None => {
                    self.err(
                        item,
                        &ipath,
                        "a metric check needs `metric`",
                        format!("one of {}", names.join(", ")),
                    );
                    None
                }
            };
            let mut number = |key: &str| -> Option<f64> {
                let n = get(item, key)?;
                match n.value {
                    Value::Int(v) if v > 0 => Some(v as f64),
                    Value::Float(v) if v > 0.0 && v.is_finite() => Some(v),
                    _ => {
                        self.err(
                            n,
                            &join(&ipath, key),
                            format!("`{key}` must be a positive number"),
                            "e.g. `max: 0.01`, `max_ratio: 1.2`",
                        );
                        None
                    }
                }
            };
            let (max, max_ratio) = (number("max"), number("max_ratio"));
            if max.is_none() && max_ratio.is_none() {
                self.err(
                    item,
                    &ipath,
                    "a metric check needs `max` or `max_ratio`",
                    "e.g. `{metric: p95_ms, max_ratio: 1.2}`",
                );
                continue;
            }
            if let Some(metric) = metric {
                out.push(Threshold { metric, max, max_ratio });
            }
        }
        out
    }

    /// `pause: {duration}` (timed) or `pause: {}` / `pause: {timeout, default}` (a gate).
    pub(crate) fn pause_step(&mut self, n: &Node, ppath: &str) -> Option<RolloutStep> {
        if !self.mapping(n, ppath, &["duration", "timeout", "default"], "pause") {
            return None;
        }
        if let Some(d) = get(n, "duration") {
            return self
                .seconds_in(d, &join(ppath, "duration"), 0.0, 86400.0)
                .map(RolloutStep::Pause);
        }
        let timeout = get(n, "timeout").and_then(|t| self.seconds_in(t, &join(ppath, "timeout"), 1.0, 86400.0));
        let action = match get(n, "default") {
            None => GateAction::Abort,
            Some(a) => match self.string(a, &join(ppath, "default")).as_deref() {
                Some("promote") => GateAction::Promote,
                Some("abort") | None => GateAction::Abort,
                Some(other) => {
                    self.err(
                        a,
                        &join(ppath, "default"),
                        format!("unknown gate action `{other}`"),
                        "use `promote` or `abort`",
                    );
                    GateAction::Abort
                }
            },
        };
        Some(RolloutStep::Gate {
            timeout: timeout.map(|t| (t, action)),
        })
    }

    /// `analysis: {interval, count, failure_limit, metrics}`.
    pub(crate) fn analysis_step(&mut self, n: &Node, apath: &str) -> Option<RolloutStep> {
        if !self.mapping(
            n,
            apath,
            &[
                "interval",
                "count",
                "failure_limit",
                "consecutive_error_limit",
                "metrics",
            ],
            "analysis",
        ) {
            return None;
        }
        let interval = get(n, "interval")
            .and_then(|v| self.seconds_in(v, &join(apath, "interval"), 0.1, 3600.0))
            .unwrap_or(Duration::from_secs(10));
        let count = get(n, "count")
            .and_then(|v| self.int_in(v, &join(apath, "count"), 1, 1000))
            .unwrap_or(1);
        let failure_limit = get(n, "failure_limit")
            .and_then(|v| self.int_in(v, &join(apath, "failure_limit"), 0, 1000))
            .unwrap_or(0);
        let consecutive_error_limit = get(n, "consecutive_error_limit")
            .and_then(|v| self.int_in(v, &join(apath, "consecutive_error_limit"), 0, 1000))
            .unwrap_or(DEFAULT_CONSECUTIVE_ERROR_LIMIT);
        let thresholds = get(n, "metrics")
            .map(|m| self.thresholds(m, &join(apath, "metrics")))
            .unwrap_or_default();
        Some(RolloutStep::Analysis {
            interval,
            count,
            failure_limit,
            consecutive_error_limit,
            thresholds,
        })
    }

    /// The strategy as rollout steps: a canary's own list, or the steps a
    /// blue-green switch amounts to.
    pub(crate) fn rollout_steps(&mut self, node: &Node, path: &str) -> Option<(Strategy, Vec<RolloutStep>)> {
        let spath = join(path, "strategy");
        let Some(strategy) = get(node, "strategy") else {
            self.err(
                node,
                path,
                "`deploy` needs a `strategy`",
                "e.g. `strategy: {canary: {steps: [{set_weight: 10}, {pause: {}}]}}`",
            );
            return None;
        };
        if !self.mapping(strategy, &spath, &["canary", "blue_green", "rolling"], "strategy") {
            return None;
        }
        if get(strategy, "rolling").is_some() {
            // Its settings are read by `rolling`.
            return Some((Strategy::Rolling, Vec::new()));
        }
        if let Some(bg) = get(strategy, "blue_green") {
            let bpath = join(&spath, "blue_green");
            if !self.mapping(
                bg,
                &bpath,
                &[
                    "pre_promotion_analysis",
                    "gate",
                    "post_promotion_analysis",
                    "scale_down_delay",
                ],
                "blue_green",
            ) {
                return None;
            }
            let mut steps = Vec::new();
            if let Some(a) = get(bg, "pre_promotion_analysis") {
                steps.extend(self.analysis_step(a, &join(&bpath, "pre_promotion_analysis")));
            }
            if let Some(g) = get(bg, "gate") {
                match self.pause_step(g, &join(&bpath, "gate")) {
                    Some(gate @ RolloutStep::Gate { .. }) => steps.push(gate),
                    Some(_) => self.err(
                        g,
                        &join(&bpath, "gate"),
                        "a blue-green gate waits for a person: no `duration`",
                        "`gate: {}` or `gate: {timeout: 600, default: abort}`",
                    ),
                    None => {}
                }
            }
            steps.push(RolloutStep::SetWeight(1000));
            if let Some(a) = get(bg, "post_promotion_analysis") {
                steps.extend(self.analysis_step(a, &join(&bpath, "post_promotion_analysis")));
            }
            let delay = get(bg, "scale_down_delay")
                .and_then(|d| self.seconds_in(d, &join(&bpath, "scale_down_delay"), 0.0, 86400.0))
                .unwrap_or(Duration::from_secs(30));
            steps.push(RolloutStep::Pause(delay));
            return Some((Strategy::BlueGreen, steps));
        }
        let Some(canary) = get(strategy, "canary") else {
            self.err(
                strategy,
                &spath,
                "`strategy` needs `canary`, `blue_green` or `rolling`",
                "e.g. `canary: {steps: [...]}`",
            );
            return None;
        };
        let cpath = join(&spath, "canary");
        if !self.mapping(canary, &cpath, &["steps"], "canary") {
            return None;
        }
        let Some(Value::Seq(items)) = get(canary, "steps").map(|n| &n.value) else {
            self.err(
                canary,
                &cpath,
                "`canary` needs a list of `steps`",
                "e.g. `steps: [{set_weight: 10}, {pause: {}}]`",
            );
            return None;
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let ipath = format!("{cpath}.steps[{i}]");
            let Value::Map(entries) = &item.value else {
                self.err(
                    item,
                    &ipath,
                    "a step is a mapping with one key",
                    "e.g. `- set_weight: 10`",
                );
                continue;
            };
            if entries.len() != 1 {
                self.err(
                    item,
                    &ipath,
                    "a step has exactly one key",
                    "`set_weight`, `pause` or `analysis`",
                );
                continue;
            }
            if !self.mapping(item, &ipath, &["set_weight", "pause", "analysis"], "a canary step") {
                continue;
            }
            if let Some(n) = get(item, "set_weight") {
                let pct = match n.value {
                    Value::Int(v) => Some(v as f64),
                    Value::Float(v) => Some(v),
                    _ => None,
                };
                match pct {
                    Some(p) if (0.0..=100.0).contains(&p) => {
                        out.push(RolloutStep::SetWeight((p * 10.0).round() as u32))
                    }
                    _ => self.err(
                        n,
                        &join(&ipath, "set_weight"),
                        "`set_weight` is a percentage from 0 to 100",
                        "e.g. `set_weight: 12.5` (0.1% resolution)",
                    ),
                }
            } else if let Some(n) = get(item, "pause") {
                out.extend(self.pause_step(n, &join(&ipath, "pause")));
            } else if let Some(n) = get(item, "analysis") {
                out.extend(self.analysis_step(n, &join(&ipath, "analysis")));
            }
        }
        Some((Strategy::Canary, out))
    }
}
