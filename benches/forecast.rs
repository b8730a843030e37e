//! The forecast's backtest behind docs/BENCHMARKS.md:
//! `cargo bench --bench forecast`.
//!
//! Generated pipelines (random DAGs of 8 to 40 jobs, up to 4 at once) run
//! 40 times each with realistic duration noise: every job has its own
//! typical duration (log-normal, median 30 s) and spread (5-25%), every run
//! a machine factor (5%), 3% of job runs are slow outliers (1.5-2.5x, a
//! retry or a cold cache), and a fifth of the jobs change speed for good
//! halfway (0.7-1.5x, a change in the code). Runs are scheduled as the
//! engine does (ready jobs with the longest path to the end first).
//!
//! Rolling origin: from the 10th run on, each run is forecast only from
//! the runs before it, at 0%, 25%, 50% and 75% of its real duration (jobs
//! done by then are known, running ones have spent their time so far).
//! Reported per checkpoint: the median absolute percentage error of the
//! p50, the share of runs that finished by the p90, and the same error
//! for "the mean of the last 3 runs" (Jenkins' estimate; never below the
//! time already spent). Targets: median error at 25% at most 10%, p90
//! coverage 85-95%, better than the mean of 3 at every checkpoint.

#[path = "support/stats.rs"]
mod stats;

use std::time::Instant;

use trackside::insight::forecast::{Node, SIMULATIONS, State, forecast};

struct Job {
    deps: Vec<usize>,
    median_ms: f64,
    spread: f64,
    /// From this run on, it takes `factor` times as long.
    change: Option<(usize, f64)>,
}

fn normal(rng: &mut fastrand::Rng) -> f64 {
    let u1 = rng.f64().max(f64::MIN_POSITIVE);
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * rng.f64()).cos()
}

fn pipeline(rng: &mut fastrand::Rng) -> Vec<Job> {
    let n = rng.usize(8..=40);
    (0..n)
        .map(|i| {
            let deps = if i == 0 {
                Vec::new()
            } else {
                let k = rng.usize(0..=2.min(i));
                let mut d: Vec<usize> = (0..k).map(|_| rng.usize(0..i)).collect();
                d.sort_unstable();
                d.dedup();
                d
            };
            Job {
                deps,
                median_ms: 30_000.0 * (0.8 * normal(rng)).exp(),
                spread: 0.05 + 0.20 * rng.f64(),
                change: (rng.f64() < 0.2).then(|| (rng.usize(12..35), 0.7 + 0.8 * rng.f64())),
            }
        })
        .collect()
}

/// Longest path to the end, in jobs (the engine's start order).
fn priority(jobs: &[Job]) -> Vec<usize> {
    let mut p = vec![1; jobs.len()];
    for i in (0..jobs.len()).rev() {
        for &d in &jobs[i].deps {
            p[d] = p[d].max(p[i] + 1);
        }
    }
    p
}

/// One run: each job's (start, end), ms.
fn run(jobs: &[Job], prio: &[usize], index: usize, slots: usize, rng: &mut fastrand::Rng) -> Vec<(f64, f64)> {
    let machine = (0.05 * normal(rng)).exp();
    let durations: Vec<f64> = jobs
        .iter()
        .map(|j| {
            let mut d = j.median_ms * (j.spread * normal(rng)).exp() * machine;
            if rng.f64() < 0.03 {
                d *= 1.5 + rng.f64();
            }
            if let Some((from, factor)) = j.change
                && index >= from
            {
                d *= factor;
            }
            d
        })
        .collect();
    let mut times = vec![(f64::NAN, f64::NAN); jobs.len()];
    let mut running: Vec<usize> = Vec::new();
    let mut t = 0.0;
    loop {
        let mut ready: Vec<usize> = (0..jobs.len())
            .filter(|&i| times[i].0.is_nan() && jobs[i].deps.iter().all(|&d| times[d].1 <= t))
            .collect();
        ready.sort_by(|&a, &b| prio[b].cmp(&prio[a]).then(a.cmp(&b)));
        for i in ready {
            if running.len() >= slots {
                break;
            }
            times[i] = (t, t + durations[i]);
            running.push(i);
        }
        let Some((k, &i)) = running
            .iter()
            .enumerate()
            .min_by(|a, b| times[*a.1].1.total_cmp(&times[*b.1].1))
        else {
            break;
        };
        running.swap_remove(k);
        t = times[i].1;
    }
    times
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    const PIPELINES: usize = 12;
    const RUNS: usize = 40;
    const SLOTS: usize = 4;
    let checkpoints = [0.0, 0.25, 0.5, 0.75];
    let mut errors = vec![Vec::new(); checkpoints.len()];
    let mut baseline = vec![Vec::new(); checkpoints.len()];
    let mut covered = vec![0usize; checkpoints.len()];
    let mut total = 0usize;
    let mut timings = Vec::new();
    let mut rng = fastrand::Rng::with_seed(20261205);
    for _ in 0..PIPELINES {
        let jobs = pipeline(&mut rng);
        let prio = priority(&jobs);
        let runs: Vec<Vec<(f64, f64)>> = (0..RUNS).map(|r| run(&jobs, &prio, r, SLOTS, &mut rng)).collect();
        let finish: Vec<f64> = runs.iter().map(|r| r.iter().map(|t| t.1).fold(0.0, f64::max)).collect();
        for k in 10..RUNS {
            let truth = finish[k];
            let mean3 = (finish[k - 1] + finish[k - 2] + finish[k - 3]) / 3.0;
            total += 1;
            for (c, &at) in checkpoints.iter().enumerate() {
                let now = at * truth;
                let nodes: Vec<Node> = jobs
                    .iter()
                    .enumerate()
                    .map(|(i, j)| {
                        let (start, end) = runs[k][i];
                        Node {
                            deps: j.deps.clone(),
                            state: if end <= now {
                                State::Done { ended_ms: end }
                            } else if start <= now {
                                State::Running { started_ms: start }
                            } else {
                                State::Pending
                            },
                            history: runs[..k].iter().map(|r| r[i].1 - r[i].0).collect(),
                            priority: u32::try_from(prio[i]).unwrap_or(u32::MAX),
                        }
                    })
                    .collect();
                let t = Instant::now();
                let f = forecast(&nodes, SLOTS, now, SIMULATIONS, k as u64).expect("history");
                timings.push(t.elapsed());
                errors[c].push((f.p50_ms as f64 - truth).abs() / truth);
                if truth <= f.p90_ms as f64 + 0.5 {
                    covered[c] += 1;
                }
                baseline[c].push((mean3.max(now) - truth).abs() / truth);
            }
        }
    }
    println!(
        "backtest: {PIPELINES} generated pipelines x {} forecast runs each, {SLOTS} jobs at once, {SIMULATIONS} simulations",
        RUNS - 10
    );
    println!(
        "{:>10}  {:>16}  {:>14}  {:>18}",
        "elapsed", "median error p50", "p90 coverage", "mean of last 3"
    );
    for (c, at) in checkpoints.iter().enumerate() {
        println!(
            "{:>9.0}%  {:>15.1}%  {:>13.1}%  {:>17.1}%",
            at * 100.0,
            median(&mut errors[c]) * 100.0,
            covered[c] as f64 / total as f64 * 100.0,
            median(&mut baseline[c]) * 100.0
        );
    }
    println!("targets: median error at 25% <= 10%; p90 coverage 85-95%; below the mean of 3 at every checkpoint");
    stats::stats("forecast one run (8-40 jobs)", timings, "< 50 ms");
}
