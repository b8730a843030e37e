//! Running part of a pipeline: `--job NAME` (the job with everything it
//! needs), `--only NAME` (the job alone, as `gitlab-ci-local NAME` runs
//! it), `--stage NAME` (a stage's jobs alone). Pure: a pipeline in, a
//! smaller pipeline out.
//!
//! A name on the command line may be a job's own name, GitLab's name of a
//! `parallel` instance (`test 1/3` for `test: [1/3]`), or a `parallel` or
//! `matrix` job's base name (`test`: every instance), or a GitHub job id
//! (`build`: every job of its matrix).

use super::diag::suggestion_hint;
use super::graph::Plan;
use super::model::Pipeline;

/// What the command line asked to run; all empty: everything.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// With everything they depend on.
    pub jobs: Vec<String>,
    /// Alone.
    pub only: Vec<String>,
    /// Every job of these stages, alone.
    pub stages: Vec<String>,
}

impl Selection {
    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty() && self.only.is_empty() && self.stages.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectError {
    #[error("{flag} {name}: no such job; {hint}")]
    UnknownJob {
        flag: &'static str,
        name: String,
        hint: String,
    },
    #[error("--stage {name}: no job of the pipeline is in that stage; {hint}")]
    UnknownStage { name: String, hint: String },
}

/// The indexes of the jobs `name` names (see the module's note).
pub fn resolve(p: &Pipeline, name: &str) -> Vec<usize> {
    if let Some(i) = p.job_index(name) {
        return vec![i];
    }
    // GitLab's `test 1/3` is trackside's `test: [1/3]`.
    if let Some((base, index)) = name.rsplit_once(' ')
        && index.contains('/')
        && let Some(i) = p.job_index(&format!("{base}: [{index}]"))
    {
        return vec![i];
    }
    let prefix = format!("{name}: [");
    let instances: Vec<usize> = p
        .jobs
        .iter()
        .enumerate()
        .filter(|(_, j)| j.name.starts_with(&prefix) && j.name.ends_with(']'))
        .map(|(i, _)| i)
        .collect();
    if !instances.is_empty() {
        return instances;
    }
    // A GitHub job id: every job of its matrix (`build` is `build (1)`,
    // `build (2)`), as act's `-j build`.
    p.jobs
        .iter()
        .enumerate()
        .filter(|(_, j)| j.id.as_deref() == Some(name) && j.call.is_none())
        .map(|(i, _)| i)
        .collect()
}

/// `p` restricted to what `sel` asks for; dependencies on jobs left out
/// are dropped, and the jobs whose artifacts a job takes stay named (the
/// caller finds them in an earlier run).
pub fn select(p: &Pipeline, plan: &Plan, sel: &Selection) -> Result<Pipeline, SelectError> {
    if sel.is_empty() {
        return Ok(p.clone());
    }
    // Candidates for did-you-mean: the names and the base names of instances.
    let mut names: Vec<&str> = p.jobs.iter().map(|j| j.name.as_str()).collect();
    names.extend(p.jobs.iter().filter_map(|j| j.name.split_once(": [").map(|(b, _)| b)));
    names.dedup();
    let mut keep = vec![false; p.jobs.len()];
    let named = |flag: &'static str, name: &str| -> Result<Vec<usize>, SelectError> {
        let found = resolve(p, name);
        if found.is_empty() {
            return Err(SelectError::UnknownJob {
                flag,
                name: name.to_string(),
                hint: suggestion_hint(name, &names, "jobs"),
            });
        }
        Ok(found)
    };
    for name in &sel.jobs {
        for i in named("--job", name)? {
            keep[i] = true;
            for a in plan.ancestors(i) {
                keep[a] = true;
            }
        }
    }
    for name in &sel.only {
        for i in named("--only", name)? {
            keep[i] = true;
        }
    }
    for stage in &sel.stages {
        let mut any = false;
        for (i, j) in p.jobs.iter().enumerate() {
            if j.stage.as_deref() == Some(stage.as_str()) {
                keep[i] = true;
                any = true;
            }
        }
        if !any {
            let mut stages: Vec<&str> = p.jobs.iter().filter_map(|j| j.stage.as_deref()).collect();
            stages.dedup();
            return Err(SelectError::UnknownStage {
                name: stage.clone(),
                hint: suggestion_hint(stage, &stages, "stages"),
            });
        }
    }
    let mut sub = p.clone();
    sub.jobs = p
        .jobs
        .iter()
        .zip(&keep)
        .filter(|(_, k)| **k)
        .map(|(j, _)| j.clone())
        .collect();
    let kept: std::collections::HashSet<String> = sub.jobs.iter().map(|j| j.name.clone()).collect();
    for j in &mut sub.jobs {
        // The jobs whose artifacts it takes stay named, also when left out.
        if j.needs_artifacts.is_none() && j.depends_on.iter().any(|d| !kept.contains(d)) {
            j.needs_artifacts = Some(j.depends_on.clone());
        }
        let (deps, pos): (Vec<String>, Vec<_>) = j
            .depends_on
            .iter()
            .zip(
                j.depends_on_pos
                    .iter()
                    .copied()
                    .chain(std::iter::repeat(Default::default())),
            )
            .filter(|(d, _)| kept.contains(d.as_str()))
            .map(|(d, p)| (d.clone(), p))
            .unzip();
        j.depends_on = deps;
        j.depends_on_pos = pos;
    }
    Ok(sub)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::{Dialect, LoadOptions, parse_source};
    use std::path::Path;

    fn gitlab(src: &str) -> (Pipeline, Plan) {
        let o = LoadOptions {
            dialect: Some(Dialect::Gitlab),
            ..LoadOptions::default()
        };
        let (p, _) =
            parse_source(Path::new(".gitlab-ci.yml"), src.into(), &o).unwrap_or_else(|r| panic!("{}", r.render(false)));
        let plan = Plan::build(&p).unwrap_or_else(|_| panic!("cycle"));
        (p, plan)
    }

    #[test]
    fn a_github_job_id_takes_every_job_of_its_matrix() {
        let src = "on: push\njobs:\n  setup:\n    runs-on: x\n    steps: [{run: 'true'}]\n  build:\n    needs: setup\n    runs-on: x\n    strategy: {matrix: {v: [1, 2]}}\n    steps: [{run: 'true'}]\n  other:\n    runs-on: x\n    steps: [{run: 'true'}]\n";
        let o = LoadOptions {
            dialect: Some(crate::pipeline::Dialect::Github),
            ..LoadOptions::default()
        };
        let (p, _) = crate::pipeline::parse_source(Path::new("ci.yml"), src.into(), &o)
            .unwrap_or_else(|r| panic!("{}", r.render(false)));
        let got: Vec<&str> = resolve(&p, "build").iter().map(|&i| p.jobs[i].name.as_str()).collect();
        assert_eq!(got, ["build (1)", "build (2)"]);
    }

    fn names(p: &Pipeline) -> Vec<&str> {
        p.jobs.iter().map(|j| j.name.as_str()).collect()
    }

    const SRC: &str = "stages: [build, test, deploy]\nbuild:\n  stage: build\n  script: [x]\nlint:\n  stage: build\n  script: [x]\ntest:\n  stage: test\n  parallel: 2\n  script: [x]\ndeploy:\n  stage: deploy\n  script: [x]\n";

    #[test]
    fn job_takes_what_it_needs_only_and_stage_take_jobs_alone() {
        let (p, plan) = gitlab(SRC);
        let sel = |jobs: &[&str], only: &[&str], stages: &[&str]| Selection {
            jobs: jobs.iter().map(|s| s.to_string()).collect(),
            only: only.iter().map(|s| s.to_string()).collect(),
            stages: stages.iter().map(|s| s.to_string()).collect(),
        };
        let s = select(&p, &plan, &sel(&["test 2/2"], &[], &[])).expect("select");
        assert_eq!(names(&s), vec!["build", "lint", "test: [2/2]"]);
        let s = select(&p, &plan, &sel(&[], &["deploy"], &[])).expect("select");
        assert_eq!(names(&s), vec!["deploy"]);
        assert!(s.jobs[0].depends_on.is_empty());
        let s = select(&p, &plan, &sel(&[], &["test"], &[])).expect("select");
        assert_eq!(names(&s), vec!["test: [1/2]", "test: [2/2]"]);
        let s = select(&p, &plan, &sel(&[], &[], &["build"])).expect("select");
        assert_eq!(names(&s), vec!["build", "lint"]);
        let e = select(&p, &plan, &sel(&["tset"], &[], &[])).expect_err("unknown");
        assert!(e.to_string().contains("did you mean `test"), "{e}");
        let e = select(&p, &plan, &sel(&[], &[], &["prod"])).expect_err("unknown stage");
        assert!(e.to_string().contains("--stage prod"), "{e}");
    }
}
