//! When will the run finish? A forecast from history: each job's duration
//! from its recent runs (newer runs weigh more), conditioned on the time a
//! running job has already spent, simulated through the DAG with the run's
//! concurrency limit many times (Monte Carlo). The answer is the p50 and
//! p90 of the simulated finish times.
//!
//! Pure: the caller gives the jobs' states and past durations, and a seed.

/// How much a run's duration counts against the next newer one's.
const DECAY: f64 = 0.8;
/// At most this many past durations per job are used.
pub const MAX_SAMPLES: usize = 20;
/// Simulated runs per forecast.
pub const SIMULATIONS: usize = 400;

/// Where a job of the run stands.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum State {
    /// Ended (passed, failed, skipped, cached) at this time, ms since the
    /// run started.
    Done { ended_ms: f64 },
    /// Started at this time and still running (or waiting for a retry).
    Running { started_ms: f64 },
    /// Not started yet.
    Pending,
    /// Will not run by itself (a gate no one approved): left out, and so
    /// are the jobs after it.
    Held,
}

/// One job of the run being forecast.
#[derive(Debug, Clone)]
pub struct Node {
    pub deps: Vec<usize>,
    pub state: State,
    /// Its durations in past runs (ms), oldest first.
    pub history: Vec<f64>,
    /// Its place in the engine's start order among ready jobs (the plan's
    /// priority: its longest path to the end, in jobs); on a tie, the
    /// earlier job starts first.
    pub priority: u32,
}

/// What the forecast says: finish times in ms since the run started.
#[derive(Debug, Clone, PartialEq)]
pub struct Forecast {
    pub p50_ms: u64,
    pub p90_ms: u64,
    /// Jobs that had no history: they were given `assumed_ms`, the median
    /// of the other jobs' typical durations.
    pub without_history: Vec<usize>,
    pub assumed_ms: u64,
}

/// A job's duration model: its past durations, weighted by age, drawn with
/// a log-normal kernel around each.
#[derive(Debug, Clone)]
struct Model {
    /// Log durations, newest first, and cumulative weights.
    logs: Vec<f64>,
    cumulative: Vec<f64>,
    bandwidth: f64,
}

impl Model {
    fn new(history: &[f64]) -> Option<Model> {
        let recent: Vec<f64> = history
            .iter()
            .rev()
            .take(MAX_SAMPLES)
            .map(|d| d.max(1.0).ln())
            .collect();
        if recent.is_empty() {
            return None;
        }
        let weights: Vec<f64> = (0..recent.len()).map(|i| DECAY.powi(i as i32)).collect();
        let total: f64 = weights.iter().sum();
        let mean = recent.iter().zip(&weights).map(|(x, w)| x * w).sum::<f64>() / total;
        let var = recent
            .iter()
            .zip(&weights)
            .map(|(x, w)| w * (x - mean).powi(2))
            .sum::<f64>()
            / total;
        // Effective sample size of the weights (Kish).
        let n_eff = total * total / weights.iter().map(|w| w * w).sum::<f64>();
        // Silverman's rule, with a floor: a job seen once or always the same
        // is still not known to the millisecond.
        let floor = 0.05 + 0.15 / n_eff.sqrt();
        let bandwidth = (1.06 * var.sqrt() * n_eff.powf(-0.2)).max(floor);
        let mut acc = 0.0;
        let cumulative = weights
            .iter()
            .map(|w| {
                acc += w / total;
                acc
            })
            .collect();
        Some(Model {
            logs: recent,
            cumulative,
            bandwidth,
        })
    }

    /// The weighted median, in ms.
    fn typical(&self) -> f64 {
        let mut pairs: Vec<(f64, f64)> = self
            .logs
            .iter()
            .zip(self.cumulative.iter().scan(0.0, |prev, &c| {
                let w = c - *prev;
                *prev = c;
                Some(w)
            }))
            .map(|(&l, w)| (l, w))
            .collect();
        pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut acc = 0.0;
        for (l, w) in &pairs {
            acc += w;
            if acc >= 0.5 {
                return l.exp();
            }
        }
        pairs.last().map_or(1.0, |p| p.0.exp())
    }

    /// A duration, `shift` (the run's common factor, in logs) included.
    fn draw(&self, shift: f64, rng: &mut fastrand::Rng) -> f64 {
        let u = rng.f64();
        let i = self.cumulative.partition_point(|&c| c < u).min(self.logs.len() - 1);
        (self.logs[i] + shift + self.bandwidth * normal(rng)).exp()
    }

    /// A duration longer than `elapsed` (the job is still running).
    fn draw_beyond(&self, elapsed: f64, shift: f64, rng: &mut fastrand::Rng) -> f64 {
        for _ in 0..32 {
            let d = self.draw(shift, rng);
            if d > elapsed {
                return d;
            }
        }
        // Longer than history knows: how much longer is not known either.
        // The longer it has run, the longer it is likely to go on (its
        // remaining time a log-normal share of its elapsed time: median
        // half of it, p90 about 1.4 times it).
        elapsed * (1.0 + (0.5f64.ln() + 0.8 * normal(rng)).exp())
    }
}

/// A standard normal draw (Box-Muller).
fn normal(rng: &mut fastrand::Rng) -> f64 {
    let u1 = rng.f64().max(f64::MIN_POSITIVE);
    let u2 = rng.f64();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// The finish time of the run `nodes` at `now_ms` since it started, with at
/// most `max_parallel` jobs at once. `None` when no job has history: there
/// is nothing to forecast from.
pub fn forecast(nodes: &[Node], max_parallel: usize, now_ms: f64, simulations: usize, seed: u64) -> Option<Forecast> {
    let mut models: Vec<Option<Model>> = nodes.iter().map(|n| Model::new(&n.history)).collect();
    let mut typicals: Vec<f64> = models.iter().flatten().map(Model::typical).collect();
    if typicals.is_empty() {
        return None;
    }
    typicals.sort_by(f64::total_cmp);
    let assumed = typicals[typicals.len() / 2];
    let mut without_history = Vec::new();
    for (i, m) in models.iter_mut().enumerate() {
        if m.is_none() && matches!(nodes[i].state, State::Pending | State::Running { .. }) {
            without_history.push(i);
            // The assumed duration, with a wide spread: nothing is known.
            *m = Some(Model {
                logs: vec![assumed.ln()],
                cumulative: vec![1.0],
                bandwidth: 0.5,
            });
        }
    }
    let held = held(nodes);
    let run_spread = run_spread(nodes);
    let graph = Graph {
        nodes,
        run_spread,
        models: &models,
        held: &held,
        dependents: dependents(nodes),
    };
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut finishes = Vec::with_capacity(simulations);
    let mut scratch = Scratch::default();
    for _ in 0..simulations.max(1) {
        finishes.push(simulate(&graph, max_parallel.max(1), now_ms, &mut rng, &mut scratch));
    }
    finishes.sort_by(f64::total_cmp);
    let pick = |q: f64| finishes[((finishes.len() - 1) as f64 * q).round() as usize];
    Some(Forecast {
        p50_ms: pick(0.5).round() as u64,
        p90_ms: pick(0.9).round() as u64,
        without_history,
        assumed_ms: assumed.round() as u64,
    })
}

/// How much a whole run is faster or slower than usual (the sd, in logs,
/// of what its jobs share): from the last runs of the jobs with history,
/// aligned from the newest, the spread of each run's mean deviation less
/// what the jobs' own spread puts into that mean.
fn run_spread(nodes: &[Node]) -> f64 {
    let with: Vec<Vec<f64>> = nodes
        .iter()
        .filter(|n| n.history.len() >= 3)
        .map(|n| {
            n.history
                .iter()
                .rev()
                .take(MAX_SAMPLES)
                .map(|d| d.max(1.0).ln())
                .collect()
        })
        .collect();
    let runs = with.iter().map(Vec::len).min().unwrap_or(0);
    if with.len() < 2 || runs < 3 {
        return 0.0;
    }
    let jobs = with.len() as f64;
    let means: Vec<f64> = with
        .iter()
        .map(|l| l[..runs].iter().sum::<f64>() / runs as f64)
        .collect();
    let own = with
        .iter()
        .zip(&means)
        .map(|(l, m)| l[..runs].iter().map(|x| (x - m).powi(2)).sum::<f64>() / (runs - 1) as f64)
        .sum::<f64>()
        / jobs;
    let effects: Vec<f64> = (0..runs)
        .map(|r| with.iter().zip(&means).map(|(l, m)| l[r] - m).sum::<f64>() / jobs)
        .collect();
    let mean = effects.iter().sum::<f64>() / runs as f64;
    let var = effects.iter().map(|e| (e - mean).powi(2)).sum::<f64>() / (runs - 1) as f64;
    (var - own / jobs).max(0.0).sqrt()
}

/// Jobs held back by a gate: the gate itself and everything after it.
fn held(nodes: &[Node]) -> Vec<bool> {
    let mut held: Vec<bool> = nodes.iter().map(|n| n.state == State::Held).collect();
    // Dependencies point backwards in any order: repeat until stable
    // (bounded by the depth of the graph).
    for _ in 0..nodes.len() {
        let mut changed = false;
        for (i, n) in nodes.iter().enumerate() {
            if !held[i] && !matches!(n.state, State::Done { .. }) && n.deps.iter().any(|&d| held.get(d) == Some(&true))
            {
                held[i] = true;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    held
}

/// Each job's dependents.
fn dependents(nodes: &[Node]) -> Vec<Vec<usize>> {
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
    for (i, n) in nodes.iter().enumerate() {
        for &d in n.deps.iter().filter(|&&d| d < nodes.len()) {
            dependents[d].push(i);
        }
    }
    dependents
}

/// The DAG as the simulation walks it.
struct Graph<'a> {
    nodes: &'a [Node],
    /// The spread (sd of logs) of what all of a run's jobs share.
    run_spread: f64,
    models: &'a [Option<Model>],
    held: &'a [bool],
    dependents: Vec<Vec<usize>>,
}

#[derive(Default)]
struct Scratch {
    /// Dependencies not yet ended, per job.
    open: Vec<u32>,
    /// Ready jobs in the engine's start order: the higher priority, then
    /// the earlier job.
    ready: std::collections::BinaryHeap<(u32, std::cmp::Reverse<usize>)>,
    /// (end time as bits of a non-negative f64, job): the earliest first.
    running: std::collections::BinaryHeap<std::cmp::Reverse<(u64, usize)>>,
}

/// One simulated rest of the run: its finish time. O(J log J).
fn simulate(g: &Graph<'_>, max_parallel: usize, now: f64, rng: &mut fastrand::Rng, s: &mut Scratch) -> f64 {
    use std::cmp::Reverse;
    let n = g.nodes.len();
    s.open.clear();
    s.open.resize(n, 0);
    s.ready.clear();
    s.running.clear();
    let mut finish = now;
    // This run's machine, load and caches: one draw for all its jobs.
    let shift = g.run_spread * normal(rng);
    for (i, node) in g.nodes.iter().enumerate() {
        match node.state {
            State::Done { ended_ms } => finish = finish.max(ended_ms),
            State::Running { started_ms } => {
                let elapsed = (now - started_ms).max(0.0);
                let d = g.models[i]
                    .as_ref()
                    .map_or(elapsed, |m| m.draw_beyond(elapsed, shift, rng));
                let end = (started_ms + d).max(now);
                s.running.push(Reverse((end.to_bits(), i)));
            }
            State::Pending | State::Held => {}
        }
        for &d in node.deps.iter().filter(|&&d| d < n) {
            if !matches!(g.nodes[d].state, State::Done { .. }) {
                s.open[i] += 1;
            }
        }
    }
    for (i, node) in g.nodes.iter().enumerate() {
        if node.state == State::Pending && !g.held[i] && s.open[i] == 0 {
            s.ready.push((node.priority, Reverse(i)));
        }
    }
    let mut t = now;
    loop {
        while s.running.len() < max_parallel {
            let Some((_, Reverse(i))) = s.ready.pop() else { break };
            let d = g.models[i].as_ref().map_or(0.0, |m| m.draw(shift, rng));
            s.running.push(Reverse(((t + d).to_bits(), i)));
        }
        let Some(Reverse((bits, i))) = s.running.pop() else {
            break;
        };
        let end = f64::from_bits(bits);
        t = t.max(end);
        finish = finish.max(end);
        for &k in &g.dependents[i] {
            s.open[k] = s.open[k].saturating_sub(1);
            if s.open[k] == 0 && g.nodes[k].state == State::Pending && !g.held[k] {
                s.ready.push((g.nodes[k].priority, Reverse(k)));
            }
        }
    }
    finish
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(deps: &[usize], state: State, history: &[f64]) -> Node {
        Node {
            deps: deps.to_vec(),
            state,
            history: history.to_vec(),
            priority: 0,
        }
    }

    #[test]
    fn a_chain_takes_the_sum_and_parallel_jobs_the_longest() {
        let steady = [10_000.0; 10];
        let chain = vec![
            node(&[], State::Pending, &steady),
            node(&[0], State::Pending, &steady),
            node(&[1], State::Pending, &steady),
        ];
        let f = forecast(&chain, 4, 0.0, 400, 1).expect("history");
        assert!((27_000..33_000).contains(&f.p50_ms), "{f:?}");
        assert!(f.p90_ms >= f.p50_ms);
        let wide = vec![
            node(&[], State::Pending, &steady),
            node(&[], State::Pending, &steady),
            node(&[], State::Pending, &steady),
        ];
        let f = forecast(&wide, 4, 0.0, 400, 1).expect("history");
        assert!((9_000..13_000).contains(&f.p50_ms), "{f:?}");
        // One slot: the three run one after the other.
        let f = forecast(&wide, 1, 0.0, 400, 1).expect("history");
        assert!((27_000..33_000).contains(&f.p50_ms), "{f:?}");
    }

    #[test]
    fn what_is_done_and_running_conditions_the_rest() {
        let steady = [10_000.0; 10];
        let nodes = vec![
            node(&[], State::Done { ended_ms: 12_000.0 }, &steady),
            node(&[0], State::Running { started_ms: 12_000.0 }, &steady),
        ];
        // 20 s in: the running job has spent 8 s of its usual 10.
        let f = forecast(&nodes, 2, 20_000.0, 400, 3).expect("history");
        assert!((21_000..25_000).contains(&f.p50_ms), "{f:?}");
        // 40 s in: it has outlived its history; the finish is after now.
        let f = forecast(&nodes, 2, 40_000.0, 400, 3).expect("history");
        assert!(f.p50_ms >= 40_000, "{f:?}");
        // Far beyond history, the forecast says it does not know: the p90
        // is well after the median, and both after now.
        let f = forecast(&nodes, 2, 200_000.0, 400, 3).expect("history");
        assert!(f.p50_ms > 230_000 && f.p90_ms > f.p50_ms + 50_000, "{f:?}");
    }

    #[test]
    fn newer_runs_weigh_more() {
        // It used to take 10 s and lately takes 30 s.
        let mut h = vec![10_000.0; 15];
        h.extend([30_000.0; 5]);
        let f = forecast(&[node(&[], State::Pending, &h)], 1, 0.0, 1_000, 5).expect("history");
        // Three quarters of the runs took 10 s: unweighted, the median
        // would be about that.
        assert!(f.p50_ms > 20_000, "{f:?}");
        h.reverse();
        let g = forecast(&[node(&[], State::Pending, &h)], 1, 0.0, 1_000, 5).expect("history");
        assert!(g.p50_ms < 12_000, "{g:?}");
    }

    #[test]
    fn jobs_without_history_are_assumed_typical_and_named() {
        let nodes = vec![
            node(&[], State::Pending, &[5_000.0, 5_000.0]),
            node(&[], State::Pending, &[]),
        ];
        let f = forecast(&nodes, 2, 0.0, 200, 1).expect("some history");
        assert_eq!(f.without_history, vec![1]);
        assert_eq!(f.assumed_ms, 5_000);
        assert!(forecast(&[node(&[], State::Pending, &[])], 1, 0.0, 10, 1).is_none());
    }

    #[test]
    fn a_held_gate_and_what_follows_it_are_left_out() {
        let steady = [10_000.0; 5];
        let nodes = vec![
            node(&[], State::Pending, &steady),
            node(&[0], State::Held, &steady),
            node(&[1], State::Pending, &[100_000.0; 5]),
        ];
        let f = forecast(&nodes, 2, 0.0, 200, 1).expect("history");
        assert!(f.p50_ms < 20_000, "{f:?}");
    }

    #[test]
    fn the_same_seed_gives_the_same_forecast() {
        let h = [8_000.0, 12_000.0, 9_500.0, 15_000.0];
        let nodes = vec![node(&[], State::Pending, &h), node(&[0], State::Pending, &h)];
        assert_eq!(forecast(&nodes, 2, 0.0, 300, 9), forecast(&nodes, 2, 0.0, 300, 9));
    }
}
