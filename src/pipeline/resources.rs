//! What a job declares it needs of the machine, in any dialect: native
//! `resources: {cpu, memory}`, or the variables `TRACKSIDE_CPU` and
//! `TRACKSIDE_MEMORY` (a GitLab job's `variables`, a GitHub job's `env`,
//! at the job's level or the pipeline's), and whether it may be preempted,
//! `TRACKSIDE_INTERRUPTIBLE`. Both land in the job's
//! [`ContainerOptions`](super::model::ContainerOptions) `cpus`/`memory`:
//! the scheduler reserves them, and a container job gets them as its
//! limits. A setting already there (`resources:`, a container's
//! `options: --memory`) wins over the variables.

use super::diag::Diagnostic;
use super::model::{EnvVar, Pipeline};
use super::read::size_bytes;

/// The variable for a job's CPUs (`1.5`).
pub const CPU_VAR: &str = "TRACKSIDE_CPU";
/// The variable for a job's memory (`4G`, `512MiB`).
pub const MEMORY_VAR: &str = "TRACKSIDE_MEMORY";
/// The variable that makes a job interruptible (`true`): a higher-priority
/// run with `--preempt` may stop it and run it again later.
pub const INTERRUPTIBLE_VAR: &str = "TRACKSIDE_INTERRUPTIBLE";

/// Reads the variables into each job's settings; an unreadable value is an
/// error where it is written.
pub fn from_variables(p: &mut Pipeline) -> Vec<Diagnostic> {
    let mut diags = Vec::new();
    let global = p.global_env.clone();
    for job in &mut p.jobs {
        // The job's own value comes after the pipeline's: the last one wins.
        let last = |name: &str| {
            global
                .iter()
                .chain(&job.environment)
                .rev()
                .find(|v| v.name == name)
                .cloned()
        };
        let (cpu, memory) = (last(CPU_VAR), last(MEMORY_VAR));
        if let Some(v) = last(INTERRUPTIBLE_VAR) {
            match v.value.trim() {
                "true" => job.interruptible = true,
                "false" => job.interruptible = false,
                _ => diags.push(bad(&job.name, &v, "`true` or `false`", "write `\"true\"`")),
            }
        }
        if let Some(v) = cpu
            && job.container.cpus.is_none()
        {
            match v.value.trim().parse::<f64>() {
                Ok(n) if (0.01..=1024.0).contains(&n) => job.container.cpus = Some(n),
                _ => diags.push(bad(&job.name, &v, "a number of CPUs from 0.01 to 1024", "e.g. `1.5`")),
            }
        }
        if let Some(v) = memory
            && job.container.memory.is_none()
        {
            match size_bytes(&v.value) {
                Some(b) if b >= 6 << 20 => job.container.memory = Some(b),
                _ => diags.push(bad(
                    &job.name,
                    &v,
                    "a size of at least 6MiB",
                    "write bytes or a size with a unit: `512MiB`, `2GiB`, `4G`",
                )),
            }
        }
    }
    // A pipeline-level value is every job's: one error for it.
    let mut seen = std::collections::HashSet::new();
    diags.retain(|d| seen.insert((d.file, d.line, d.column, d.message.clone())));
    diags
}

/// The variable's own line (whether it is written at the job's or the
/// pipeline's level, the reader kept only where): its name is the path.
fn bad(job: &str, v: &EnvVar, what: &str, hint: &str) -> Diagnostic {
    // An expression (`${{ matrix.x }}`) reads as empty at this point.
    let hint = if v.value.contains('$') || v.value.trim().is_empty() {
        "the scheduler reads it before the job runs: write the value itself, not a variable or an expression"
    } else {
        hint
    };
    let found = if v.value.trim().is_empty() {
        format!("an empty value (for job `{job}`)")
    } else {
        format!("`{}`", v.value)
    };
    Diagnostic::error(
        v.pos,
        v.name.len(),
        v.name.clone(),
        format!("`{}` must be {what}, found {found}", v.name),
    )
    .with_hint(hint)
}

#[cfg(test)]
mod tests {
    use crate::pipeline::{LoadOptions, Pipeline, diag::Report, parse_source};
    use std::path::Path;

    fn read(file: &str, yaml: &str) -> Result<Pipeline, Report> {
        parse_source(Path::new(file), yaml.to_string(), &LoadOptions::default()).map(|(p, _)| p)
    }

    #[test]
    fn the_variables_become_the_jobs_reservation_the_jobs_own_winning() {
        let yaml = "variables:\n  TRACKSIDE_MEMORY: 1G\n  TRACKSIDE_CPU: \"0.5\"\n\
                    build:\n  variables:\n    TRACKSIDE_MEMORY: 4GiB\n  script: [make]\n\
                    lint:\n  script: [make lint]\n";
        let p = read(".gitlab-ci.yml", yaml).unwrap_or_else(|r| panic!("{}", r.render(false)));
        let job = |n: &str| p.jobs.iter().find(|j| j.name == n).map(|j| j.container.clone());
        assert_eq!(job("build").and_then(|c| c.memory), Some(4 << 30));
        assert_eq!(job("build").and_then(|c| c.cpus), Some(0.5));
        assert_eq!(job("lint").and_then(|c| c.memory), Some(1_000_000_000));
    }

    #[test]
    fn a_native_pipelines_global_env_declares_it_for_every_job() {
        let yaml =
            "name: p\nglobal_env: {TRACKSIDE_MEMORY: 2GiB}\njobs:\n  a:\n    steps: [{name: s, script: \"true\"}]\n\
                    b:\n    environment: {TRACKSIDE_MEMORY: 3GiB}\n    steps: [{name: s, script: \"true\"}]\n"
                .replace("b:\n", "  b:\n");
        let p = read("trackside.yml", &yaml).unwrap_or_else(|r| panic!("{}", r.render(false)));
        assert_eq!(p.jobs[0].container.memory, Some(2 << 30));
        assert_eq!(p.jobs[1].container.memory, Some(3 << 30));
    }

    #[test]
    fn a_read_pipeline_holds_no_room_it_does_not_use() {
        let native = "name: p\njobs:\n  a:\n    steps: [{name: s, script: \"true\"}]\n";
        let gitlab = "build:\n  script: [make]\n  after_script: [echo done]\nlint:\n  script: [make lint]\n";
        let github = "on: push\njobs:\n  a:\n    runs-on: ubuntu-latest\n    steps:\n      - run: make\n";
        for (file, yaml) in [
            ("trackside.yml", native),
            (".gitlab-ci.yml", gitlab),
            (".github/workflows/ci.yml", github),
        ] {
            let p = read(file, yaml).unwrap_or_else(|r| panic!("{}", r.render(false)));
            assert_eq!(p.jobs.capacity(), p.jobs.len(), "{file}");
            for j in &p.jobs {
                assert!(!j.steps.is_empty(), "{file}: {}", j.name);
                assert_eq!(j.steps.capacity(), j.steps.len(), "{file}: {}", j.name);
            }
        }
    }

    #[test]
    fn a_setting_already_made_wins() {
        let yaml = "name: p\njobs:\n  test:\n    environment: {TRACKSIDE_MEMORY: 4G}\n\
                    resources: {cpu: 2, memory: 1GiB}\n    steps: [{name: a, script: \"true\"}]\n"
            .replace("resources", "    resources");
        let p = read("trackside.yml", &yaml).unwrap_or_else(|r| panic!("{}", r.render(false)));
        assert_eq!(p.jobs[0].container.memory, Some(1 << 30));
        assert_eq!(p.jobs[0].container.cpus, Some(2.0));
    }

    #[test]
    fn interruptible_is_read_in_every_dialect_gitlabs_rules_and_default_included() {
        let gitlab = "default:\n  interruptible: true\n\
                      a:\n  script: [x]\n\
                      b:\n  interruptible: false\n  script: [x]\n\
                      c:\n  interruptible: false\n  rules:\n    - if: $NOT_SET == null\n      interruptible: true\n    - when: always\n  script: [x]\n";
        let p = read(".gitlab-ci.yml", gitlab).unwrap_or_else(|r| panic!("{}", r.render(false)));
        let flags: Vec<(&str, bool)> = p.jobs.iter().map(|j| (j.name.as_str(), j.interruptible)).collect();
        // The first rule matches: its value wins over the job's.
        assert_eq!(flags, [("a", true), ("b", false), ("c", true)]);
        let native = "name: p\njobs:\n  a:\n    interruptible: true\n    resource_group: prod\n    steps: [{name: s, script: \"true\"}]\n";
        let p = read("trackside.yml", native).unwrap_or_else(|r| panic!("{}", r.render(false)));
        assert!(p.jobs[0].interruptible);
        assert_eq!(p.jobs[0].resource_group.as_deref(), Some("prod"));
        let github = "on: push\njobs:\n  t:\n    runs-on: x\n    env: {TRACKSIDE_INTERRUPTIBLE: \"true\"}\n    steps: [{run: 'true'}]\n";
        let p = read("ci.yml", github).unwrap_or_else(|r| panic!("{}", r.render(false)));
        assert!(p.jobs[0].interruptible);
        let bad = "a:\n  variables: {TRACKSIDE_INTERRUPTIBLE: maybe}\n  script: [x]\n";
        let r = read(".gitlab-ci.yml", bad).expect_err("an error");
        assert_eq!(
            r.items[0].message,
            "`TRACKSIDE_INTERRUPTIBLE` must be `true` or `false`, found `maybe`"
        );
    }

    #[test]
    fn an_unreadable_value_is_an_error_where_it_is_written() {
        let yaml = "build:\n  variables:\n    TRACKSIDE_MEMORY: lots\n    TRACKSIDE_CPU: $CPUS\n  script: [make]\n";
        let r = read(".gitlab-ci.yml", yaml).expect_err("an error");
        let d: Vec<_> = r.items.iter().map(|d| (d.line, d.column, d.message.as_str())).collect();
        assert_eq!(
            d,
            [
                (3, 5, "`TRACKSIDE_MEMORY` must be a size of at least 6MiB, found `lots`"),
                (
                    4,
                    5,
                    "`TRACKSIDE_CPU` must be a number of CPUs from 0.01 to 1024, found `$CPUS`"
                ),
            ]
        );
        assert!(r.items[1].hint.as_deref().is_some_and(|h| h.contains("not a variable")));
    }
}
