//! The GitLab dialect's benchmark behind docs/BENCHMARKS.md:
//! `cargo bench --bench gitlab`.
//!
//! Parse, validate and plan a GitLab pipeline of 2,000 written jobs (20
//! included files of 100 jobs, three levels of `extends`, matrices) that
//! expands to 10,000 jobs. Target: under 300 ms.

#[path = "support/stats.rs"]
mod stats;
use stats::stats;

use std::path::Path;
use std::time::Instant;

use trackside::pipeline::{Dialect, LoadOptions, Plan, load};

/// Writes the project: `.gitlab-ci.yml` and `ci/part-NN.yml`.
fn write_project(dir: &Path) {
    std::fs::create_dir_all(dir.join("ci")).expect("mkdir");
    let mut main = String::from(
        "stages: [build, test, deploy]\nvariables:\n  APP: shop\ninclude:\n  - local: 'ci/*.yml'\n.base:\n  variables: {LEVEL: base}\n  before_script: [echo base]\n  retry: {max: 1, when: [runner_system_failure]}\n.mid:\n  extends: .base\n  variables: {LEVEL: mid}\n  timeout: 30m\n",
    );
    main.push_str(
        "deploy:\n  stage: deploy\n  script: [echo deploy]\n  rules:\n    - if: $CI_COMMIT_BRANCH == \"main\"\n",
    );
    std::fs::write(dir.join(".gitlab-ci.yml"), main).expect("write");
    for f in 0..20 {
        let mut s = format!(".tmpl-{f}:\n  extends: .mid\n  variables: {{PART: \"{f}\"}}\n");
        for i in 0..50 {
            s.push_str(&format!(
                "build-{f}-{i}:\n  extends: .tmpl-{f}\n  stage: build\n  parallel:\n    matrix:\n      - OS: [linux, mac, win]\n        ARCH: [amd64, arm64, x86]\n  script:\n    - echo \"build $OS $ARCH $PART\"\n  artifacts:\n    paths: [out/]\n"
            ));
            s.push_str(&format!(
                "test-{f}-{i}:\n  extends: .tmpl-{f}\n  stage: test\n  needs: [build-{f}-{i}]\n  script: [echo test]\n  rules:\n    - if: $APP == \"shop\"\n    - when: never\n"
            ));
        }
        std::fs::write(dir.join(format!("ci/part-{f:02}.yml")), s).expect("write");
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    write_project(dir.path());
    let file = dir.path().join(".gitlab-ci.yml");
    let opts = LoadOptions {
        dialect: Some(Dialect::Gitlab),
        project_dir: Some(dir.path().to_path_buf()),
        ci_vars: vec![
            ("CI_COMMIT_BRANCH".into(), "main".into()),
            ("CI_PIPELINE_SOURCE".into(), "push".into()),
        ],
        ..LoadOptions::default()
    };
    let mut samples = Vec::new();
    for _ in 0..11 {
        let t = Instant::now();
        let (p, _) = load(&file, &opts).unwrap_or_else(|r| panic!("{}", r.render(false)));
        let plan = Plan::build(&p).unwrap_or_else(|_| panic!("cycle"));
        samples.push(t.elapsed());
        assert_eq!(p.jobs.len(), 10_001);
        assert_eq!(plan.levels.len(), 3);
    }
    stats(
        "GitLab: parse+validate+plan, 2,000 jobs -> 10,001 (includes, extends, matrices)",
        samples,
        "< 300 ms",
    );
}
