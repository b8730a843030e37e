//! A scheduler simulation: 500 services of 20 jobs each, with
//! dependencies across services, on 50 simulated hosts of mixed sizes, in
//! simulated time. Run: `cargo bench --bench simulation`.
//!
//! Two policies run the same workload (generator and seed below):
//!
//! - **baseline**: first come, first served, with a static limit per host
//!   (`-j` = its cores), the least loaded host taking the next job, and no
//!   idea of memory. A job placed where memory is short is killed (OOM) a
//!   third of the way in, and queued again.
//!
//! Jobs are CPU-bound: a host whose running jobs want more CPUs than it
//! has runs each of them slower, in proportion (processor sharing), as a
//! kernel shares its cores. `-j` = cores counts jobs, not the CPUs each
//! uses (a 4-CPU build is one slot), so the baseline oversubscribes hosts
//! and pays for it in time; trackside's admission never does.
//! - **trackside's policy**: ready jobs ordered by remaining critical path
//!   weighted by their (historical) durations (`Plan::weighted_priority`),
//!   each admitted on a host only when its CPU and memory fit (the engine's
//!   `admission::Ledger`, one per host), best fit first.
//!
//! trackside itself schedules one machine today (clusters are the Swarm
//! executor's issue): this measures the policy its scheduler applies, on
//! the shape of a large CI fleet. It reports the makespan, the CPU
//! utilisation, and the wall time of each scheduling decision (p99).

#[path = "support/stats.rs"]
mod stats;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::time::{Duration, Instant};

use trackside::engine::admission::{Capacity, Ledger, Need};
use trackside::pipeline::{LoadOptions, Plan, parse_source};

const SERVICES: usize = 500;
const JOBS_PER_SERVICE: usize = 20;
const SEED: u64 = 0x07AC_51DE;
const GIB: u64 = 1 << 30;

#[derive(Clone, Copy)]
struct Job {
    /// Seconds.
    duration: u64,
    cpus: u64,
    memory: u64,
}

struct Workload {
    jobs: Vec<Job>,
    plan: Plan,
}

/// A log-normal draw with this median and spread (Box-Muller).
fn lognormal(rng: &mut fastrand::Rng, median: f64, sigma: f64) -> f64 {
    let (u1, u2) = (rng.f64().max(1e-12), rng.f64());
    let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
    median * (sigma * z).exp()
}

/// A job of this median duration (seconds, log-normal), CPUs and memory.
fn draw(rng: &mut fastrand::Rng, median: f64, sigma: f64, cpus: u64, memory: u64) -> Job {
    Job {
        duration: lognormal(rng, median, sigma).clamp(5.0, 7200.0) as u64,
        cpus,
        memory,
    }
}

/// Each service: lint; build; 12 test shards after build; integration
/// after the shards; package; 4 deploy-ish checks after package. A
/// service's build needs the package of up to 2 earlier services, so
/// chains run many services deep.
fn workload() -> Workload {
    let mut rng = fastrand::Rng::with_seed(SEED);
    let mut yaml = String::from("name: fleet\njobs:\n");
    let mut jobs = Vec::new();
    let mut add = |yaml: &mut String, name: String, deps: Vec<String>, job: Job| {
        yaml.push_str(&format!("  {name}:\n"));
        if !deps.is_empty() {
            yaml.push_str(&format!("    depends_on: [{}]\n", deps.join(", ")));
        }
        yaml.push_str("    steps: [{script: x}]\n");
        jobs.push(job);
    };
    for s in 0..SERVICES {
        let j = |kind: &str| format!("s{s}-{kind}");
        let lint = draw(&mut rng, 30.0, 0.5, 1, GIB / 2);
        let build = draw(&mut rng, 240.0, 0.6, 4, 6 * GIB);
        add(&mut yaml, j("lint"), vec![], lint);
        let mut build_deps = Vec::new();
        for _ in 0..2 {
            if s > 0 && rng.bool() {
                build_deps.push(format!("s{}-package", rng.usize(0..s)));
            }
        }
        build_deps.sort();
        build_deps.dedup();
        add(&mut yaml, j("build"), build_deps, build);
        let mut shards = Vec::new();
        for t in 0..12 {
            // Most shards are small; one in six holds a database's worth.
            let memory = if rng.usize(0..6) == 0 { 8 * GIB } else { 2 * GIB };
            let shard = draw(&mut rng, 120.0, 0.8, 2, memory);
            add(&mut yaml, j(&format!("test{t}")), vec![j("build")], shard);
            shards.push(j(&format!("test{t}")));
        }
        let integration = draw(&mut rng, 600.0, 0.5, 2, 12 * GIB);
        add(&mut yaml, j("integration"), shards, integration);
        let package = draw(&mut rng, 90.0, 0.4, 2, 3 * GIB);
        add(&mut yaml, j("package"), vec![j("integration"), j("lint")], package);
        for c in 0..4 {
            let check = draw(&mut rng, 45.0, 0.7, 1, GIB);
            add(&mut yaml, j(&format!("check{c}")), vec![j("package")], check);
        }
    }
    assert_eq!(jobs.len(), SERVICES * JOBS_PER_SERVICE);
    let (p, _) = parse_source(std::path::Path::new("fleet.yml"), yaml, &LoadOptions::default()).expect("valid");
    let plan = Plan::build(&p).expect("plan");
    Workload { jobs, plan }
}

/// 50 hosts: 10 small (4 cores, 8 GiB), 25 medium (8, 32), 15 large (16, 64).
fn hosts() -> Vec<(usize, u64)> {
    let mut h = Vec::new();
    h.extend(std::iter::repeat_n((4, 8 * GIB), 10));
    h.extend(std::iter::repeat_n((8, 32 * GIB), 25));
    h.extend(std::iter::repeat_n((16, 64 * GIB), 15));
    h
}

/// A job running on a host, with the work it has left (seconds at full
/// speed).
struct Running {
    job: usize,
    host: usize,
    left: f64,
    killed: bool,
}

struct Outcome {
    makespan: u64,
    cpu_seconds: u64,
    decisions: Vec<Duration>,
    oom_kills: usize,
}

/// An event-driven run of the workload; `smart` picks the policy.
fn simulate(w: &Workload, smart: bool) -> Outcome {
    let n = w.jobs.len();
    let hosts = hosts();
    let mut ledgers: Vec<Ledger> = hosts
        .iter()
        .map(|&(cores, mem)| Ledger::new(Capacity::of(cores, mem, mem, cores)))
        .collect();
    // Baseline: slots only, and memory as it really is.
    let mut slots: Vec<usize> = hosts.iter().map(|&(c, _)| c).collect();
    let mut mem_used: Vec<u64> = vec![0; hosts.len()];
    let weights: Vec<u32> = w
        .jobs
        .iter()
        .map(|j| u32::try_from(j.duration).unwrap_or(u32::MAX))
        .collect();
    let priority = w.plan.weighted_priority(&weights);
    let mut waiting_on: Vec<usize> = w.plan.deps.iter().map(Vec::len).collect();
    // Smart: by priority; baseline: first come, first served.
    let mut ready_smart: BinaryHeap<(u32, Reverse<usize>)> = BinaryHeap::new();
    let mut ready_fifo: VecDeque<usize> = VecDeque::new();
    for j in 0..n {
        if waiting_on[j] == 0 {
            if smart {
                ready_smart.push((priority[j], Reverse(j)));
            } else {
                ready_fifo.push_back(j);
            }
        }
    }
    let mut running: Vec<Running> = Vec::new();
    // The CPUs the running jobs of each host want.
    let mut demand: Vec<u64> = vec![0; hosts.len()];
    let (mut now, mut done, mut cpu_seconds, mut oom_kills) = (0f64, 0usize, 0u64, 0usize);
    let mut decisions = Vec::new();
    while done < n {
        // Place what can be placed now.
        let t = Instant::now();
        if smart {
            let mut held = Vec::new();
            // The most CPU and memory any host has free: a job needing more
            // is held without asking each host, and when no host has a CPU
            // free the round ends.
            let free = |l: &Ledger| {
                let (c, u) = (l.capacity(), l.used());
                (
                    c.cpu_milli.saturating_sub(u.cpu_milli),
                    c.memory.saturating_sub(u.memory),
                )
            };
            let most_free = |ls: &[Ledger]| {
                ls.iter()
                    .map(free)
                    .fold((0, 0), |(c, m), (fc, fm)| (c.max(fc), m.max(fm)))
            };
            let mut room = most_free(&ledgers);
            while let Some((p, Reverse(j))) = ready_smart.pop() {
                if room.0 < 1000 {
                    held.push((p, Reverse(j)));
                    break;
                }
                let job = w.jobs[j];
                let need = Need {
                    cpu_milli: job.cpus * 1000,
                    memory: job.memory,
                };
                if need.cpu_milli > room.0 || need.memory > room.1 {
                    held.push((p, Reverse(j)));
                    continue;
                }
                // Best fit: the host with the least memory left that fits.
                let host = (0..hosts.len())
                    .filter(|&h| ledgers[h].fits(need))
                    .min_by_key(|&h| ledgers[h].capacity().memory - ledgers[h].used().memory);
                match host {
                    Some(h) => {
                        ledgers[h].take(need);
                        demand[h] += job.cpus;
                        running.push(Running {
                            job: j,
                            host: h,
                            left: job.duration as f64,
                            killed: false,
                        });
                        room = most_free(&ledgers);
                    }
                    None => held.push((p, Reverse(j))),
                }
            }
            ready_smart.extend(held);
        } else {
            let mut held = VecDeque::new();
            while let Some(j) = ready_fifo.pop_front() {
                let job = w.jobs[j];
                // The least loaded host takes it, as idle runners pull jobs.
                match (0..hosts.len()).filter(|&h| slots[h] > 0).max_by_key(|&h| slots[h]) {
                    Some(h) => {
                        slots[h] -= 1;
                        mem_used[h] += job.memory;
                        // Past the host's memory, the kernel kills it a
                        // third of the way in, and it is queued again.
                        let killed = mem_used[h] > hosts[h].1;
                        let work = if killed { job.duration / 3 } else { job.duration };
                        if killed {
                            oom_kills += 1;
                        }
                        demand[h] += job.cpus;
                        running.push(Running {
                            job: j,
                            host: h,
                            left: work.max(1) as f64,
                            killed,
                        });
                    }
                    None => held.push_back(j),
                }
            }
            ready_fifo = held;
        }
        decisions.push(t.elapsed());
        // The next end: each job goes at its host's rate (1 unless the
        // host's jobs want more CPUs than it has).
        let rate = |r: &Running| (hosts[r.host].0 as f64 / demand[r.host] as f64).min(1.0);
        let Some(next) = (0..running.len())
            .min_by(|&a, &b| (running[a].left / rate(&running[a])).total_cmp(&(running[b].left / rate(&running[b]))))
        else {
            panic!("deadlock: nothing runs and {} jobs are left", n - done);
        };
        let dt = running[next].left / rate(&running[next]);
        now += dt;
        for r in &mut running {
            let rt = (hosts[r.host].0 as f64 / demand[r.host] as f64).min(1.0);
            r.left -= dt * rt;
        }
        let Running {
            job: j,
            host: h,
            killed,
            ..
        } = running.swap_remove(next);
        demand[h] -= w.jobs[j].cpus;
        let job = w.jobs[j];
        if smart {
            ledgers[h].give_back(Need {
                cpu_milli: job.cpus * 1000,
                memory: job.memory,
            });
        } else {
            slots[h] += 1;
            mem_used[h] -= job.memory;
        }
        cpu_seconds += job.cpus * if killed { job.duration / 3 } else { job.duration };
        if killed {
            ready_fifo.push_back(j);
            continue;
        }
        done += 1;
        for &d in &w.plan.dependents[j] {
            waiting_on[d] -= 1;
            if waiting_on[d] == 0 {
                if smart {
                    ready_smart.push((priority[d], Reverse(d)));
                } else {
                    ready_fifo.push_back(d);
                }
            }
        }
    }
    Outcome {
        makespan: now.round() as u64,
        cpu_seconds,
        decisions,
        oom_kills,
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let cores: usize = hosts().iter().map(|&(c, _)| c).sum();
    let t = Instant::now();
    let w = workload();
    // No policy beats the longest chain of durations, nor all the CPU
    // work spread over every core.
    let durations: Vec<u32> = w
        .jobs
        .iter()
        .map(|j| u32::try_from(j.duration).unwrap_or(u32::MAX))
        .collect();
    let critical = w.plan.weighted_priority(&durations).into_iter().max().unwrap_or(0) as f64;
    let work = w.jobs.iter().map(|j| (j.cpus * j.duration) as f64).sum::<f64>() / cores as f64;
    let bound = critical.max(work);
    println!(
        "trackside scheduler simulation: {} jobs ({SERVICES} services x {JOBS_PER_SERVICE}), 50 hosts \
         ({cores} cores), seed {SEED:#x}; workload made in {:.2?}",
        w.jobs.len(),
        t.elapsed()
    );
    println!("  lower bound {bound:.0} s: the critical path {critical:.0} s, the CPU work over every core {work:.0} s");
    let mut results = BTreeMap::new();
    for (name, smart) in [
        ("baseline (FCFS, static -j)", false),
        ("trackside (critical path, admission)", true),
    ] {
        let o = simulate(&w, smart);
        let util = o.cpu_seconds as f64 / (cores as f64 * o.makespan as f64) * 100.0;
        println!(
            "{name:<40} makespan {:>7} s ({:.1} h, {:.2}x the bound), CPU utilisation {util:.0}%, OOM kills {}",
            o.makespan,
            o.makespan as f64 / 3600.0,
            o.makespan as f64 / bound,
            o.oom_kills
        );
        stats::stats(
            &format!("  {name}: one scheduling round (at each job end)"),
            o.decisions,
            "p99 < 1 ms",
        );
        results.insert(smart, o.makespan);
    }
    let (base, smart) = (results[&false] as f64, results[&true] as f64);
    println!(
        "makespan: trackside's policy {:.0}% shorter than the baseline (target: at least 30%; \
         the most any policy could gain here: {:.0}%)\n",
        (1.0 - smart / base) * 100.0,
        (1.0 - bound / base) * 100.0
    );
}
