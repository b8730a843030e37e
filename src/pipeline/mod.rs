//! What a pipeline IS: the model, reading it from YAML with precise
//! diagnostics, variables, expressions and the job graph.
//!
//! `read` holds what every dialect reads YAML with (the checking context
//! and its typed readers); each dialect has a folder of its own that lowers
//! its YAML into the one model (`native/` today).
//!
//! Pure: nothing here does I/O except reading the pipeline file in [`load`].

pub mod diag;
pub mod expr;
pub mod github;
pub mod gitlab;
pub mod graph;
pub mod model;
pub mod native;
pub mod read;
pub mod resources;
pub mod select;
pub mod vars;
pub mod yaml;

pub use diag::{Diagnostic, Report, Severity};
pub use graph::Plan;
pub use model::{FailureClass, Job, Pipeline, Step, When};
pub use native::{ChangedFiles, ExecutorChoice, LoadOptions};

use std::path::Path;

/// Which YAML a pipeline file is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// trackside's own format (docs/pipeline-format.md).
    Native,
    /// A `.gitlab-ci.yml` (docs/gitlab.md).
    Gitlab,
    /// A GitHub Actions workflow (docs/github.md).
    Github,
}

impl Dialect {
    pub fn name(self) -> &'static str {
        match self {
            Dialect::Native => "native",
            Dialect::Gitlab => "gitlab",
            Dialect::Github => "github",
        }
    }

    /// The dialect of the file at `path`, read as [`load`] reads it (a
    /// FIFO, a device or an oversized file is not read: then by name alone,
    /// and loading reports the problem).
    pub fn of_file(path: &Path) -> Dialect {
        if path.is_dir() && github::is_workflows_folder(path) {
            return Dialect::Github;
        }
        let source = read::read_source(path).unwrap_or_default();
        Dialect::of(path, &source)
    }

    /// The dialect of a file: by its name (`.gitlab-ci.yml`,
    /// `*.gitlab-ci.yml`; a file in `.github/workflows` is GitHub's), else
    /// by its top-level keys (`on:` with `jobs:` is a GitHub workflow; `jobs:` is native;
    /// `stages:`, `default:`, `include:`, `workflow:` or a top-level job
    /// with `script:` is GitLab's).
    pub fn of(path: &Path, source: &str) -> Dialect {
        if gitlab::is_gitlab_file_name(path) {
            return Dialect::Gitlab;
        }
        if github::is_workflow_path(path) || github::looks_like_workflow(source) {
            return Dialect::Github;
        }
        let top: Vec<&str> = source
            .lines()
            .filter(|l| l.starts_with(|c: char| c.is_alphanumeric() || c == '.' || c == '_'))
            .filter_map(|l| l.split_once(':').map(|(k, _)| k.trim_matches(['"', '\'', ' '])))
            .collect();
        if top.contains(&"jobs") {
            return Dialect::Native;
        }
        let gitlab_keys = ["stages", "default", "include", "workflow"];
        let job_script = source.lines().any(|l| {
            let t = l.trim_start();
            l.len() > t.len() && (t.starts_with("script:") || t.starts_with("before_script:"))
        });
        if top.iter().any(|k| gitlab_keys.contains(k)) || job_script {
            Dialect::Gitlab
        } else {
            Dialect::Native
        }
    }
}

/// Reads and validates a pipeline file in its dialect (`opts.dialect`, or
/// found by [`Dialect::of`]). `Err` holds at least one error; `Ok` may
/// carry warnings.
pub fn load(path: &Path, opts: &LoadOptions) -> Result<(Pipeline, Report), Report> {
    // `.github/workflows` (or any folder read as GitHub's): the workflows
    // the event starts. Another folder is the error it was.
    if path.is_dir() && (github::is_workflows_folder(path) || opts.dialect == Some(Dialect::Github)) {
        return with_resources(github::load_folder(path, opts));
    }
    let source = match read::read_source(path) {
        Ok(s) => s,
        Err(d) => {
            let mut r = Report::new(path, String::new());
            r.items.push(d);
            return Err(r);
        }
    };
    parse_source(path, source, opts)
}

/// Parses and validates pipeline text already in memory, in its dialect.
pub fn parse_source(path: &Path, source: String, opts: &LoadOptions) -> Result<(Pipeline, Report), Report> {
    with_resources(match opts.dialect.unwrap_or_else(|| Dialect::of(path, &source)) {
        Dialect::Native => native::parse_source(path, source, opts),
        Dialect::Gitlab => gitlab::parse_source(path, source, opts),
        Dialect::Github => github::parse_source(path, source, opts),
    })
}

/// A read pipeline with its jobs' `TRACKSIDE_CPU`/`TRACKSIDE_MEMORY`
/// variables applied ([`resources::from_variables`]), its lists holding no
/// more room than they use: a run keeps the pipeline to its end, and a job
/// of one step would hold room for four (a step is about 500 bytes).
fn with_resources(read: Result<(Pipeline, Report), Report>) -> Result<(Pipeline, Report), Report> {
    let (mut p, mut report) = read?;
    p.jobs.shrink_to_fit();
    for j in &mut p.jobs {
        j.steps.shrink_to_fit();
    }
    let diags = resources::from_variables(&mut p);
    if diags.is_empty() {
        return Ok((p, report));
    }
    report.items.extend(diags);
    report.sort();
    Err(report)
}
