//! The canary judge: compares canary with stable over the same window and
//! says, per metric and overall, whether the canary may go on, and why.
//!
//! Continuous metrics (latency samples) use a two-sided Mann-Whitney U test
//! (normal approximation with tie correction and continuity correction):
//! a metric fails only when the difference is significant at the configured
//! confidence AND the relative change of the median exceeds the tolerance,
//! so a real but negligible shift passes and a large but noisy one does not
//! fail on chance. Error counts use a one-sided exact test (Fisher's,
//! hypergeometric) because error rates are sparse: the rank test would see
//! mostly zeros on both sides and pass anything. When stable had no errors
//! at all, two or more canary errors fail outright: sparse errors are not
//! waved through. Too few samples is NoData, never a pass.
//!
//! The score is the share of metrics that passed, out of 100; the verdict is
//! Pass at 95 or more, Marginal at 75 or more, Fail below, and Inconclusive
//! when any metric had no data.

use serde::{Deserialize, Serialize};
use statrs::distribution::{ContinuousCDF, Normal};

pub use crate::protocol::view::{MetricOutcome, MetricResult, Verdict, VerdictClass};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct JudgeConfig {
    /// Confidence for "significantly different" (0.98: p < 0.02).
    pub confidence: f64,
    /// Allowed relative change of a metric's median (0.25 = 25%).
    pub tolerance: f64,
    /// Fewer samples (or requests) than this on either side is NoData.
    pub min_samples: usize,
}

impl Default for JudgeConfig {
    fn default() -> Self {
        JudgeConfig {
            confidence: 0.98,
            tolerance: 0.25,
            min_samples: 8,
        }
    }
}

fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

fn sorted(v: &[f64]) -> Vec<f64> {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    s.sort_by(f64::total_cmp);
    s
}

/// Two-sided Mann-Whitney U p-value (normal approximation, ties and
/// continuity corrected). 1.0 when every value is tied.
pub fn mann_whitney_p(a: &[f64], b: &[f64]) -> f64 {
    let (n1, n2) = (a.len() as f64, b.len() as f64);
    if a.is_empty() || b.is_empty() {
        return 1.0;
    }
    let mut all: Vec<(f64, bool)> = a
        .iter()
        .map(|&x| (x, true))
        .chain(b.iter().map(|&x| (x, false)))
        .collect();
    all.sort_by(|x, y| x.0.total_cmp(&y.0));
    let n = all.len();
    let mut rank_sum_a = 0.0;
    let mut tie_term = 0.0;
    let mut i = 0;
    while i < n {
        let mut j = i;
        while j + 1 < n && all[j + 1].0 == all[i].0 {
            j += 1;
        }
        let t = (j - i + 1) as f64;
        let avg_rank = (i + j) as f64 / 2.0 + 1.0;
        rank_sum_a += avg_rank * all[i..=j].iter().filter(|x| x.1).count() as f64;
        tie_term += t * t * t - t;
        i = j + 1;
    }
    let u = rank_sum_a - n1 * (n1 + 1.0) / 2.0;
    let nn = n1 + n2;
    let var = n1 * n2 / 12.0 * ((nn + 1.0) - tie_term / (nn * (nn - 1.0)));
    if var <= 0.0 {
        return 1.0;
    }
    let mean = n1 * n2 / 2.0;
    let diff = (u - mean).abs() - 0.5;
    let z = diff.max(0.0) / var.sqrt();
    let Ok(normal) = Normal::new(0.0, 1.0) else {
        return 1.0;
    };
    (2.0 * (1.0 - normal.cdf(z))).clamp(0.0, 1.0)
}

/// Compares a continuous metric (e.g. latency in ms; lower is better).
pub fn compare_samples(metric: &str, stable: &[f64], canary: &[f64], cfg: &JudgeConfig) -> MetricResult {
    let (s, c) = (sorted(stable), sorted(canary));
    if s.len() < cfg.min_samples || c.len() < cfg.min_samples {
        return MetricResult {
            metric: metric.into(),
            outcome: MetricOutcome::NoData,
            stable: (!s.is_empty()).then(|| median(&s)),
            canary: (!c.is_empty()).then(|| median(&c)),
            p_value: None,
            why: format!(
                "{} stable and {} canary samples; at least {} each are needed",
                s.len(),
                c.len(),
                cfg.min_samples
            ),
            critical: false,
        };
    }
    let (ms, mc) = (median(&s), median(&c));
    let p = mann_whitney_p(&s, &c);
    let rel = if ms.abs() > f64::EPSILON {
        (mc - ms) / ms.abs()
    } else if (mc - ms).abs() > f64::EPSILON {
        f64::INFINITY.copysign(mc - ms)
    } else {
        0.0
    };
    let significant = p < 1.0 - cfg.confidence;
    let beyond = rel.abs() > cfg.tolerance;
    let outcome = match (significant && beyond, rel > 0.0) {
        (false, _) => MetricOutcome::Pass,
        (true, true) => MetricOutcome::High,
        (true, false) => MetricOutcome::Low,
    };
    let pct = |r: f64| {
        if r.is_finite() {
            format!("{:+.0}%", r * 100.0)
        } else {
            "from zero".to_string()
        }
    };
    let why = format!(
        "median {mc:.1} vs stable {ms:.1} ({}), p={p:.3}: {}",
        pct(rel),
        match (significant, beyond) {
            (true, true) => format!(
                "significant at {:.0}% and beyond the {:.0}% tolerance",
                cfg.confidence * 100.0,
                cfg.tolerance * 100.0
            ),
            (true, false) => format!("significant but within the {:.0}% tolerance", cfg.tolerance * 100.0),
            (false, _) => format!("not significant at {:.0}%", cfg.confidence * 100.0),
        }
    );
    MetricResult {
        metric: metric.into(),
        outcome,
        stable: Some(ms),
        canary: Some(mc),
        p_value: Some(p),
        why,
        critical: false,
    }
}

/// ln(n!) by summing logs (exact enough for the counts seen here, and
/// cached nowhere: the judge runs once per analysis interval).
fn ln_factorial(n: u64) -> f64 {
    (2..=n).map(|k| (k as f64).ln()).sum()
}

fn ln_choose(n: u64, k: u64) -> f64 {
    if k > n {
        return f64::NEG_INFINITY;
    }
    ln_factorial(n) - ln_factorial(k) - ln_factorial(n - k)
}

/// One-sided Fisher exact p-value that the canary's error proportion is
/// higher: P(X >= canary_errors) under the hypergeometric law.
pub fn fisher_greater_p(stable_err: u64, stable_n: u64, canary_err: u64, canary_n: u64) -> f64 {
    let total = stable_n + canary_n;
    let errors = stable_err + canary_err;
    if total == 0 || errors == 0 {
        return 1.0;
    }
    let denom = ln_choose(total, errors);
    let max_k = errors.min(canary_n);
    let p: f64 = (canary_err..=max_k)
        .map(|k| (ln_choose(canary_n, k) + ln_choose(stable_n, errors - k) - denom).exp())
        .sum();
    p.clamp(0.0, 1.0)
}

/// Compares error counts out of request counts.
pub fn compare_errors(
    metric: &str,
    (stable_err, stable_n): (u64, u64),
    (canary_err, canary_n): (u64, u64),
    cfg: &JudgeConfig,
) -> MetricResult {
    let min = cfg.min_samples as u64;
    let rate = |e: u64, n: u64| (n > 0).then(|| e as f64 / n as f64);
    let (rs, rc) = (rate(stable_err, stable_n), rate(canary_err, canary_n));
    if stable_n < min || canary_n < min {
        return MetricResult {
            metric: metric.into(),
            outcome: MetricOutcome::NoData,
            stable: rs,
            canary: rc,
            p_value: None,
            why: format!("{stable_n} stable and {canary_n} canary requests; at least {min} each are needed"),
            critical: false,
        };
    }
    let (rs, rc) = (rs.unwrap_or(0.0), rc.unwrap_or(0.0));
    let p = fisher_greater_p(stable_err, stable_n, canary_err, canary_n);
    let counts = format!("{canary_err}/{canary_n} canary vs {stable_err}/{stable_n} stable");
    let (outcome, why) = if p < 1.0 - cfg.confidence && rc > rs * (1.0 + cfg.tolerance) {
        (
            MetricOutcome::High,
            format!(
                "{counts}: {:.2}% vs {:.2}%, higher at {:.0}% confidence (p={p:.4})",
                rc * 100.0,
                rs * 100.0,
                cfg.confidence * 100.0
            ),
        )
    } else if stable_err == 0 && canary_err >= 2 {
        (
            MetricOutcome::High,
            format!("{counts}: stable had no errors, the canary had {canary_err}; sparse errors are not waved through"),
        )
    } else {
        (
            MetricOutcome::Pass,
            format!("{counts}: {:.2}% vs {:.2}% (p={p:.3})", rc * 100.0, rs * 100.0),
        )
    };
    MetricResult {
        metric: metric.into(),
        outcome,
        stable: Some(rs),
        canary: Some(rc),
        p_value: Some(p),
        why,
        critical: false,
    }
}

/// A threshold check: the canary's value must stay below `max`, and below
/// `max_ratio` times stable's. A missing value is NoData, never a pass.
pub fn check_threshold(
    metric: &str,
    max: Option<f64>,
    max_ratio: Option<f64>,
    stable: Option<f64>,
    canary: Option<f64>,
) -> MetricResult {
    let no_data = |why: &str| MetricResult {
        metric: metric.into(),
        outcome: MetricOutcome::NoData,
        stable,
        canary,
        p_value: None,
        why: why.into(),
        critical: true,
    };
    let mut limits = Vec::new();
    if let Some(m) = max {
        limits.push((m, format!("{m}")));
    }
    if let Some(r) = max_ratio {
        let Some(s) = stable else {
            return no_data("no stable value to compare with");
        };
        limits.push((r * s, format!("{r} x stable {s:.3} = {:.3}", r * s)));
    }
    let Some(c) = canary else {
        return no_data("no canary requests in the window");
    };
    let broken: Vec<&String> = limits.iter().filter(|(l, _)| c >= *l).map(|(_, t)| t).collect();
    let (outcome, why) = if broken.is_empty() {
        (
            MetricOutcome::Pass,
            format!(
                "{c:.3} is below {}",
                limits.iter().map(|(_, t)| t.as_str()).collect::<Vec<_>>().join(" and ")
            ),
        )
    } else {
        (
            MetricOutcome::High,
            format!(
                "{c:.3} is not below {}",
                broken.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(" and ")
            ),
        )
    };
    MetricResult {
        metric: metric.into(),
        outcome,
        stable,
        canary: Some(c),
        p_value: None,
        why,
        critical: true,
    }
}

/// Combines metric results into a score and a verdict.
pub fn verdict(metrics: Vec<MetricResult>) -> Verdict {
    let no_data: Vec<&str> = metrics
        .iter()
        .filter(|m| m.outcome == MetricOutcome::NoData)
        .map(|m| m.metric.as_str())
        .collect();
    let passed = metrics.iter().filter(|m| m.passed()).count();
    let score = if metrics.is_empty() {
        0.0
    } else {
        100.0 * passed as f64 / metrics.len() as f64
    };
    let failed: Vec<String> = metrics
        .iter()
        .filter(|m| matches!(m.outcome, MetricOutcome::High))
        .map(|m| format!("{} ({})", m.metric, m.why))
        .collect();
    let broken: Vec<String> = metrics
        .iter()
        .filter(|m| m.critical && m.outcome == MetricOutcome::High)
        .map(|m| format!("{} ({})", m.metric, m.why))
        .collect();
    let (class, why) = if metrics.is_empty() {
        (VerdictClass::Inconclusive, "no metrics to judge".to_string())
    } else if !broken.is_empty() {
        (VerdictClass::Fail, format!("threshold broken: {}", broken.join("; ")))
    } else if !no_data.is_empty() {
        (
            VerdictClass::Inconclusive,
            format!(
                "no data for {}: is traffic reaching the canary? The canary waits; it is not passed",
                no_data.join(", ")
            ),
        )
    } else if score >= 95.0 {
        (
            VerdictClass::Pass,
            format!("score {score:.0}: every metric within tolerance"),
        )
    } else if score >= 75.0 {
        (
            VerdictClass::Marginal,
            format!("score {score:.0}: {}", failed.join("; ")),
        )
    } else {
        (VerdictClass::Fail, format!("score {score:.0}: {}", failed.join("; ")))
    };
    Verdict {
        score,
        class,
        metrics,
        why,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Log-normal-ish latencies around `median_ms`, seeded.
    fn latencies(seed: u64, n: usize, median_ms: f64) -> Vec<f64> {
        let mut rng = fastrand::Rng::with_seed(seed);
        (0..n)
            .map(|_| {
                // Sum of uniforms: a cheap bell curve on a log scale.
                let z: f64 = (0..12).map(|_| rng.f64()).sum::<f64>() - 6.0;
                median_ms * (0.3 * z).exp()
            })
            .collect()
    }

    #[test]
    fn equal_distributions_pass() {
        let cfg = JudgeConfig::default();
        for seed in 0..20 {
            let r = compare_samples(
                "p95_ms",
                &latencies(seed, 300, 50.0),
                &latencies(seed + 100, 300, 50.0),
                &cfg,
            );
            assert_eq!(r.outcome, MetricOutcome::Pass, "seed {seed}: {}", r.why);
        }
    }

    #[test]
    fn a_latency_shift_of_fifty_percent_fails_high() {
        let cfg = JudgeConfig::default();
        let r = compare_samples("latency_ms", &latencies(1, 300, 50.0), &latencies(2, 300, 75.0), &cfg);
        assert_eq!(r.outcome, MetricOutcome::High, "{}", r.why);
        assert!(r.why.contains("beyond the 25% tolerance"), "{}", r.why);
        let faster = compare_samples("latency_ms", &latencies(1, 300, 50.0), &latencies(2, 300, 25.0), &cfg);
        assert_eq!(faster.outcome, MetricOutcome::Low);
        assert!(faster.passed(), "faster is fine for latency");
    }

    #[test]
    fn a_small_significant_shift_within_tolerance_passes() {
        let cfg = JudgeConfig::default();
        let r = compare_samples("latency_ms", &latencies(3, 3000, 50.0), &latencies(4, 3000, 55.0), &cfg);
        assert!(r.p_value.is_some_and(|p| p < 0.02), "{}", r.why);
        assert_eq!(r.outcome, MetricOutcome::Pass, "{}", r.why);
    }

    #[test]
    fn empty_or_tiny_samples_are_no_data_and_the_verdict_is_inconclusive() {
        let cfg = JudgeConfig::default();
        let r = compare_samples("latency_ms", &[], &latencies(1, 100, 50.0), &cfg);
        assert_eq!(r.outcome, MetricOutcome::NoData);
        let e = compare_errors("error_rate", (0, 0), (0, 0), &cfg);
        assert_eq!(e.outcome, MetricOutcome::NoData);
        let v = verdict(vec![r, e]);
        assert_eq!(v.class, VerdictClass::Inconclusive);
        assert!(v.why.contains("not passed"), "{}", v.why);
        assert_eq!(verdict(Vec::new()).class, VerdictClass::Inconclusive);
    }

    #[test]
    fn twenty_percent_errors_fail() {
        let cfg = JudgeConfig::default();
        let r = compare_errors("error_rate", (5, 1000), (200, 1000), &cfg);
        assert_eq!(r.outcome, MetricOutcome::High, "{}", r.why);
        let v = verdict(vec![
            r,
            compare_samples("latency_ms", &latencies(1, 50, 50.0), &latencies(2, 50, 50.0), &cfg),
        ]);
        assert_eq!(v.class, VerdictClass::Fail, "{}", v.why);
        assert_eq!(v.score, 50.0);
    }

    #[test]
    fn sparse_errors_from_zero_are_not_waved_through() {
        let cfg = JudgeConfig::default();
        let r = compare_errors("error_rate", (0, 500), (2, 500), &cfg);
        assert_eq!(r.outcome, MetricOutcome::High, "{}", r.why);
        // A single error against a clean stable, or equal low rates, pass.
        assert_eq!(
            compare_errors("e", (0, 500), (1, 500), &cfg).outcome,
            MetricOutcome::Pass
        );
        assert_eq!(
            compare_errors("e", (10, 1000), (1, 100), &cfg).outcome,
            MetricOutcome::Pass
        );
        // Unequal traffic (canary at 10%) with no errors passes.
        assert_eq!(
            compare_errors("e", (0, 900), (0, 100), &cfg).outcome,
            MetricOutcome::Pass
        );
    }

    #[test]
    fn the_rank_test_matches_known_values() {
        // Identical samples: no evidence at all.
        assert!((mann_whitney_p(&[1.0, 2.0, 3.0], &[1.0, 2.0, 3.0]) - 1.0).abs() < 1e-9);
        // Completely separated samples of 10: U = 0, z = (50 - 0.5)/sqrt(175) = 3.74, p = 0.00018.
        let a: Vec<f64> = (0..10).map(f64::from).collect();
        let b: Vec<f64> = (10..20).map(f64::from).collect();
        let p = mann_whitney_p(&a, &b);
        assert!((p - 0.000183).abs() < 2e-5, "{p}");
        // Fisher: all 2 errors on the canary side of 100 + 100: C(100,2)/C(200,2).
        let f = fisher_greater_p(0, 100, 2, 100);
        assert!((f - 4950.0 / 19900.0).abs() < 1e-9, "{f}");
    }

    #[test]
    fn thresholds_pass_below_their_limits_and_need_data() {
        let ok = check_threshold("error_rate", Some(0.01), None, Some(0.0), Some(0.005));
        assert_eq!(ok.outcome, MetricOutcome::Pass, "{}", ok.why);
        let high = check_threshold("p95_ms", None, Some(1.2), Some(50.0), Some(61.0));
        assert_eq!(high.outcome, MetricOutcome::High);
        assert!(high.why.contains("1.2 x stable"), "{}", high.why);
        let both = check_threshold("p95_ms", Some(100.0), Some(1.2), Some(50.0), Some(55.0));
        assert_eq!(both.outcome, MetricOutcome::Pass);
        assert_eq!(
            check_threshold("e", Some(0.01), None, None, None).outcome,
            MetricOutcome::NoData
        );
        assert_eq!(
            check_threshold("p", None, Some(1.2), None, Some(3.0)).outcome,
            MetricOutcome::NoData
        );
        // A broken threshold fails the verdict whatever the score.
        let cfg = JudgeConfig::default();
        let mut m: Vec<MetricResult> = (0..5)
            .map(|i| compare_errors(&format!("e{i}"), (0, 100), (0, 100), &cfg))
            .collect();
        m.push(high);
        let v = verdict(m);
        assert_eq!(v.class, VerdictClass::Fail, "{}", v.why);
        assert!(v.why.starts_with("threshold broken: p95_ms"), "{}", v.why);
    }

    #[test]
    fn scores_map_to_classes() {
        let pass = |name: &str| MetricResult {
            metric: name.into(),
            outcome: MetricOutcome::Pass,
            stable: None,
            canary: None,
            p_value: None,
            why: String::new(),
            critical: false,
        };
        let high = MetricResult {
            outcome: MetricOutcome::High,
            ..pass("bad")
        };
        let mut m: Vec<MetricResult> = (0..19).map(|i| pass(&format!("m{i}"))).collect();
        m.push(high.clone());
        assert_eq!(verdict(m.clone()).class, VerdictClass::Pass, "19/20 = 95");
        m.truncate(3);
        m.push(high);
        assert_eq!(verdict(m).class, VerdictClass::Marginal, "3/4 = 75");
    }
}
