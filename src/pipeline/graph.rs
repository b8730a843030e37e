//! The job graph: execution levels, critical path, scheduling priority, and
//! cycle reports that name the shortest cycle and the edge to remove.
//!
//! Job `i` of the pipeline is node `i` of the petgraph graph; edges point
//! from a dependency to its dependent. `when: on_failure|always` jobs without
//! `depends_on` act like a final stage: they get implicit edges from every
//! job that is not manual (nor downstream of a manual job), as in GitLab.

use std::collections::VecDeque;

use petgraph::algo::tarjan_scc;
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::EdgeRef;

use super::diag::Diagnostic;
use super::model::{Pipeline, When};

#[derive(Debug, Clone)]
pub struct Plan {
    pub graph: DiGraph<usize, ()>,
    /// Effective dependencies of each job (implicit ones included).
    pub deps: Vec<Vec<usize>>,
    pub dependents: Vec<Vec<usize>>,
    /// Jobs in a topological order (stable: file order among equals).
    pub order: Vec<usize>,
    pub levels: Vec<Vec<usize>>,
    pub level_of: Vec<usize>,
    /// Length, in jobs, of the longest path from this job to the end (itself included).
    pub priority: Vec<u32>,
    pub critical_path: Vec<usize>,
    /// The widest level: how many jobs can run at once.
    pub max_parallelism: usize,
}

impl Plan {
    /// Builds the plan, or diagnostics for every dependency cycle.
    pub fn build(p: &Pipeline) -> Result<Plan, Vec<Diagnostic>> {
        let n = p.jobs.len();
        let index: std::collections::HashMap<&str, usize> =
            p.jobs.iter().enumerate().map(|(i, j)| (j.name.as_str(), i)).collect();
        let mut deps: Vec<Vec<usize>> = vec![Vec::new(); n];
        for (i, job) in p.jobs.iter().enumerate() {
            for d in &job.depends_on {
                if let Some(&j) = index.get(d.as_str())
                    && j != i
                    && !deps[i].contains(&j)
                {
                    deps[i].push(j);
                }
            }
        }
        // Final-stage jobs (on_failure/always without depends_on).
        let finals: Vec<usize> = (0..n)
            .filter(|&i| matches!(p.jobs[i].when, When::OnFailure | When::Always) && p.jobs[i].depends_on.is_empty())
            .collect();
        if !finals.is_empty() {
            let gated = downstream_of_manual(p, &deps);
            for &f in &finals {
                deps[f] = (0..n)
                    .filter(|&j| j != f && !finals.contains(&j) && !gated[j])
                    .collect();
            }
        }

        let mut graph = DiGraph::<usize, ()>::with_capacity(n, n);
        for i in 0..n {
            graph.add_node(i);
        }
        let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); n];
        for (i, ds) in deps.iter().enumerate() {
            for &d in ds {
                graph.add_edge(NodeIndex::new(d), NodeIndex::new(i), ());
                dependents[d].push(i);
            }
        }

        let cycles = cycle_diagnostics(p, &graph);
        if !cycles.is_empty() {
            return Err(cycles);
        }

        // Kahn's algorithm, taking ready jobs in file order.
        let mut indeg: Vec<usize> = deps.iter().map(Vec::len).collect();
        let mut queue: VecDeque<usize> = (0..n).filter(|&i| indeg[i] == 0).collect();
        let mut order = Vec::with_capacity(n);
        while let Some(i) = queue.pop_front() {
            order.push(i);
            for &d in &dependents[i] {
                indeg[d] -= 1;
                if indeg[d] == 0 {
                    queue.push_back(d);
                }
            }
        }

        let mut level_of = vec![0usize; n];
        for &i in &order {
            level_of[i] = deps[i].iter().map(|&d| level_of[d] + 1).max().unwrap_or(0);
        }
        let depth = level_of.iter().copied().max().map_or(0, |m| m + 1);
        let mut levels = vec![Vec::new(); depth];
        for &i in &order {
            levels[level_of[i]].push(i);
        }
        for l in &mut levels {
            l.sort_unstable();
        }

        let mut priority = vec![1u32; n];
        for &i in order.iter().rev() {
            priority[i] = 1 + dependents[i].iter().map(|&d| priority[d]).max().unwrap_or(0);
        }
        let mut critical_path = Vec::new();
        let mut cur = (0..n)
            .filter(|&i| deps[i].is_empty())
            .max_by_key(|&i| (priority[i], std::cmp::Reverse(i)));
        while let Some(i) = cur {
            critical_path.push(i);
            cur = dependents[i]
                .iter()
                .copied()
                .filter(|&d| priority[d] + 1 == priority[i])
                .min();
        }
        let max_parallelism = levels.iter().map(Vec::len).max().unwrap_or(0);
        Ok(Plan {
            graph,
            deps,
            dependents,
            order,
            levels,
            level_of,
            priority,
            critical_path,
            max_parallelism,
        })
    }

    /// Every job `job` waits for, directly or not.
    /// Each job's scheduling priority from past durations (ms, by job
    /// name): its remaining critical path in tenths of a second, a job
    /// without history counting as the median of those with one; in jobs
    /// ([`Plan::priority`]) when no job has history.
    pub fn priority_by_durations(
        &self,
        names: &[&str],
        durations: &std::collections::BTreeMap<String, Vec<f64>>,
    ) -> Vec<u32> {
        let median = |d: &Vec<f64>| {
            let mut d: Vec<f64> = d.iter().copied().filter(|v| v.is_finite() && *v >= 0.0).collect();
            d.sort_by(f64::total_cmp);
            let m = *d.get(d.len() / 2)?;
            Some((m / 100.0).round().clamp(1.0, f64::from(u32::MAX)) as u32)
        };
        let known: Vec<Option<u32>> = names.iter().map(|n| durations.get(*n).and_then(median)).collect();
        let mut sorted: Vec<u32> = known.iter().flatten().copied().collect();
        if sorted.is_empty() {
            return self.priority.clone();
        }
        sorted.sort_unstable();
        let typical = sorted[sorted.len() / 2];
        let weight: Vec<u32> = known.iter().map(|w| w.unwrap_or(typical)).collect();
        self.weighted_priority(&weight)
    }

    /// Each job's scheduling priority with `weight` per job: its weight
    /// plus the heaviest chain of jobs after it (the remaining critical
    /// path). With every weight 1 it is [`Plan::priority`].
    pub fn weighted_priority(&self, weight: &[u32]) -> Vec<u32> {
        let mut priority = vec![0u32; self.deps.len()];
        for &i in self.order.iter().rev() {
            let after = self.dependents[i].iter().map(|&d| priority[d]).max().unwrap_or(0);
            priority[i] = weight.get(i).copied().unwrap_or(1).max(1).saturating_add(after);
        }
        priority
    }

    pub fn ancestors(&self, job: usize) -> Vec<usize> {
        reach(job, &self.deps)
    }

    /// Every job that waits for `job`, directly or not.
    pub fn descendants(&self, job: usize) -> Vec<usize> {
        reach(job, &self.dependents)
    }
}

/// Jobs reachable from `job` along `edges` (not including `job`), sorted.
fn reach(job: usize, edges: &[Vec<usize>]) -> Vec<usize> {
    let mut seen = vec![false; edges.len()];
    let mut stack = vec![job];
    let mut out = Vec::new();
    while let Some(j) = stack.pop() {
        for &d in &edges[j] {
            if !seen[d] {
                seen[d] = true;
                out.push(d);
                stack.push(d);
            }
        }
    }
    out.sort_unstable();
    out
}

fn downstream_of_manual(p: &Pipeline, deps: &[Vec<usize>]) -> Vec<bool> {
    let n = p.jobs.len();
    let mut gated: Vec<bool> = p.jobs.iter().map(|j| j.when == When::Manual).collect();
    // Propagate until stable; the graph may still hold cycles here.
    let mut changed = true;
    let mut rounds = 0;
    while changed && rounds <= n {
        changed = false;
        rounds += 1;
        for i in 0..n {
            if !gated[i] && deps[i].iter().any(|&d| gated[d]) {
                gated[i] = true;
                changed = true;
            }
        }
    }
    gated
}

/// One diagnostic per strongly connected component: its shortest cycle.
fn cycle_diagnostics(p: &Pipeline, g: &DiGraph<usize, ()>) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for scc in tarjan_scc(g) {
        if scc.len() < 2 {
            continue;
        }
        let in_scc = |n: NodeIndex| scc.contains(&n);
        let mut best: Option<Vec<NodeIndex>> = None;
        let mut starts = scc.clone();
        starts.sort_unstable();
        for &start in &starts {
            // BFS from start back to start, inside the component.
            let mut prev: Vec<Option<NodeIndex>> = vec![None; g.node_count()];
            let mut queue = VecDeque::from([start]);
            let mut found = None;
            'bfs: while let Some(u) = queue.pop_front() {
                for e in g.edges(u) {
                    let v = e.target();
                    if !in_scc(v) {
                        continue;
                    }
                    if v == start {
                        found = Some(u);
                        break 'bfs;
                    }
                    if prev[v.index()].is_none() && v != start {
                        prev[v.index()] = Some(u);
                        queue.push_back(v);
                    }
                }
            }
            if let Some(last) = found {
                let mut path = vec![last];
                let mut cur = last;
                while cur != start {
                    match prev[cur.index()] {
                        Some(p) => {
                            path.push(p);
                            cur = p;
                        }
                        None => break,
                    }
                }
                path.reverse();
                if best.as_ref().is_none_or(|b| path.len() < b.len()) {
                    best = Some(path);
                }
            }
        }
        let Some(cycle) = best else { continue };
        // Edges run dependency -> dependent; read the cycle as "depends on".
        let mut names: Vec<&str> = cycle.iter().rev().map(|n| p.jobs[g[*n]].name.as_str()).collect();
        names.push(names[0]);
        let job = &p.jobs[g[*cycle.last().unwrap_or(&cycle[0])]];
        let dep = names[1];
        let idx = job.depends_on.iter().position(|d| d == dep);
        let (pos, width, path) = match idx {
            Some(i) => (
                job.depends_on_pos.get(i).copied().unwrap_or(job.pos),
                dep.chars().count(),
                format!("jobs.{}.{}[{i}]", job.name, p.needs_key),
            ),
            None => (job.pos, job.name.chars().count(), format!("jobs.{}", job.name)),
        };
        out.push(
            Diagnostic::error(pos, width, path, format!("dependency cycle: {}", names.join(" -> "))).with_hint(
                format!(
                    "remove `{dep}` from `jobs.{}.{}` (or another edge of the cycle)",
                    job.name, p.needs_key
                ),
            ),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::native::{LoadOptions, parse_source};
    use std::path::Path;

    fn pipeline(jobs: &[(&str, &[&str])]) -> Pipeline {
        let mut src = String::from("name: t\njobs:\n");
        for (name, deps) in jobs {
            src.push_str(&format!(
                "  {name}:\n    depends_on: [{}]\n    steps:\n      - script: 'true'\n",
                deps.join(", ")
            ));
        }
        match parse_source(Path::new("t.yml"), src, &LoadOptions::default()) {
            Ok((p, _)) => p,
            Err(r) => panic!("{}", r.render(false)),
        }
    }

    #[test]
    fn priorities_weigh_the_remaining_chain_by_past_durations() {
        let p = pipeline(&[("short", &[]), ("long", &[]), ("s2", &["short"]), ("new", &["long"])]);
        let plan = Plan::build(&p).expect("plan");
        let names = ["short", "long", "s2", "new"];
        // No history: in jobs.
        assert_eq!(plan.priority_by_durations(&names, &Default::default()), plan.priority);
        let durations = [
            ("short", vec![5_000.0, 3_000.0, f64::NAN]),
            ("s2", vec![4_000.0]),
            ("long", vec![60_000.0]),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        // In tenths of a second; `new` counts as the median of the known (50).
        assert_eq!(
            plan.priority_by_durations(&names, &durations),
            [50 + 40, 600 + 50, 40, 50]
        );
    }

    #[test]
    fn levels_critical_path_and_parallelism() {
        let p = pipeline(&[
            ("lint", &[]),
            ("build", &[]),
            ("test", &["build"]),
            ("it", &["build"]),
            ("deploy", &["test", "it", "lint"]),
        ]);
        let plan = Plan::build(&p).unwrap();
        assert_eq!(plan.levels, vec![vec![0, 1], vec![2, 3], vec![4]]);
        assert_eq!(plan.max_parallelism, 2);
        let names: Vec<&str> = plan.critical_path.iter().map(|&i| p.jobs[i].name.as_str()).collect();
        assert_eq!(names, ["build", "test", "deploy"]);
        assert_eq!(plan.priority[1], 3);
        assert_eq!(plan.priority[0], 2);
        assert_eq!(plan.ancestors(4), vec![0, 1, 2, 3]);
        assert_eq!(plan.descendants(1), vec![2, 3, 4]);
    }

    #[test]
    fn shortest_cycle_is_reported_with_the_edge_to_remove() {
        let src = "name: t\njobs:\n  a:\n    depends_on: [c]\n    steps: [{script: x}]\n  b:\n    depends_on: [a]\n    steps: [{script: x}]\n  c:\n    depends_on: [b, a2]\n    steps: [{script: x}]\n  a2:\n    depends_on: [c]\n    steps: [{script: x}]\n";
        let r = parse_source(Path::new("t.yml"), src.into(), &LoadOptions::default()).unwrap_err();
        let msgs: Vec<&str> = r.items.iter().map(|d| d.message.as_str()).collect();
        assert_eq!(msgs.len(), 1, "{msgs:?}");
        assert!(
            msgs[0].contains("c -> a2 -> c") || msgs[0].contains("a2 -> c -> a2"),
            "{msgs:?}"
        );
        assert!(r.items[0].hint.as_deref().unwrap_or("").contains("remove"));
    }

    #[test]
    fn final_stage_jobs_wait_for_everything_but_manual_gates() {
        let src = "name: t\njobs:\n  build:\n    steps: [{script: x}]\n  deploy:\n    when: manual\n    depends_on: [build]\n    steps: [{script: x}]\n  smoke:\n    depends_on: [deploy]\n    steps: [{script: x}]\n  notify:\n    when: on_failure\n    steps: [{script: x}]\n";
        let (p, _) = parse_source(Path::new("t.yml"), src.into(), &LoadOptions::default()).unwrap();
        let plan = Plan::build(&p).unwrap();
        assert_eq!(plan.deps[3], vec![0]);
    }
}
