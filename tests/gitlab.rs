//! GitLab CI files run through the binary as a user would: `trackside run`
//! in a git repository with a `.gitlab-ci.yml`, headless.

mod common;

use std::process::Command;

use common::cli::Env;

/// A git repository with `.gitlab-ci.yml` on branch `main`.
fn repo(ci: &str) -> Option<Env> {
    let env = Env::new();
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(env.dir.path())
            .args(args)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !git(&["init", "-q", "-b", "main"]) {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have git (.ci/run installs it)"
        );
        eprintln!("SKIPPED: git is not installed");
        return None;
    }
    env.file(".gitlab-ci.yml", ci);
    env.file(".gitignore", "state/\n");
    assert!(git(&[
        "-c",
        "user.name=Dev",
        "-c",
        "user.email=dev@example.com",
        "add",
        "-A"
    ]));
    assert!(git(&[
        "-c",
        "user.name=Dev",
        "-c",
        "user.email=dev@example.com",
        "commit",
        "-qm",
        "first"
    ]));
    Some(env)
}

/// `trackside run --headless` in the repository: its exit code and output.
fn headless(env: &Env) -> (Option<i32>, String) {
    let o = env
        .cmd()
        .current_dir(env.dir.path())
        .args(["run", "--headless"])
        .output()
        .expect("run");
    (o.status.code(), text(&o))
}

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

const PIPELINE: &str = r#"stages: [build, test, deploy]
variables:
  GREETING: hello
.base:
  before_script:
    - echo "before $CI_JOB_NAME in $CI_JOB_STAGE"
build:
  extends: .base
  stage: build
  script:
    - echo "$GREETING from $CI_COMMIT_BRANCH at $CI_COMMIT_SHORT_SHA"
    - mkdir -p out && echo made-by-build > out/a.txt
  artifacts:
    paths: [out/]
test:
  extends: .base
  parallel: 2
  script:
    - cat out/a.txt
    - echo "node $CI_NODE_INDEX/$CI_NODE_TOTAL undefined=[$NOPE]"
  after_script:
    - 'echo "after: $CI_JOB_STATUS"'
lint:
  stage: build
  script: exit 3
  allow_failure: true
deploy:
  stage: deploy
  script: echo deploying
  rules:
    - if: $CI_COMMIT_BRANCH == "main"
      when: manual
    - when: never
"#;

#[test]
fn a_gitlab_pipeline_runs_unchanged_from_its_repository() {
    let Some(env) = repo(PIPELINE) else { return };
    // No FILE: the repository's .gitlab-ci.yml.
    let o = env
        .cmd()
        .current_dir(env.dir.path())
        .args(["run", "--headless", "--approve", "deploy"])
        .output()
        .expect("run");
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    for line in [
        "build       $ echo \"before $CI_JOB_NAME in $CI_JOB_STAGE\"",
        "build       > before build in build",
        "build       > hello from main at ",
        "test: [1/2] > made-by-build",
        "test: [2/2] > node 2/2 undefined=[]",
        "test: [1/2] > after: success",
        "deploy      > deploying",
    ] {
        assert!(out.contains(line), "{line:?} missing:\n{out}");
    }
    assert!(out.contains("FAIL(ok)"), "the allowed failure: {out}");
    // The stages ran in order: deploy after both tests.
    let at = |s: &str| out.find(s).unwrap_or_else(|| panic!("{s:?} in {out}"));
    assert!(at("deploy      > deploying") > at("test: [2/2] > node 2/2"));
    assert!(at("test: [1/2] > made-by-build") > at("build       > hello"));
}

#[test]
fn a_deploy_a_rule_made_manual_blocks_the_run_until_approved() {
    let Some(env) = repo(PIPELINE) else { return };
    let (code, out) = headless(&env);
    // GitLab: `when: manual` from a rule is not allowed to fail by default.
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("blocked on manual job deploy"), "{out}");
    assert!(!out.contains("deploying"), "{out}");
}

#[test]
fn mistakes_are_listed_with_their_lines_and_exit_2() {
    let Some(env) = repo("stages: [build]\nbuild:\n  stage: biuld\n  scirpt: [x]\n") else {
        return;
    };
    let o = env.run(&["validate", &env.dir.path().join(".gitlab-ci.yml").display().to_string()]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(2), "{out}");
    assert!(
        out.contains(".gitlab-ci.yml:3:10") && out.contains("stage `biuld` is not in `stages`"),
        "{out}"
    );
    assert!(
        out.contains(".gitlab-ci.yml:4:3") && out.contains("did you mean `script`"),
        "{out}"
    );
}

#[test]
fn dialect_forces_how_a_file_is_read() {
    let env = Env::new();
    let f = env.file("ci.yml", "build:\n  script: [echo from-gitlab]\n");
    let o = env.run(&["run", "--headless", "--dialect", "gitlab", &f.display().to_string()]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(out.contains("build > from-gitlab"), "{out}");
    // Read as native, the same file is wrong in native terms.
    let o = env.run(&["validate", "--dialect", "native", &f.display().to_string()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}

#[test]
fn a_fifo_given_as_a_pipeline_is_refused_not_waited_on() {
    let env = Env::new();
    let fifo = env.dir.path().join(".gitlab-ci.yml");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
    let o = env.run(&["validate", &fifo.display().to_string()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("not a regular file"), "{}", text(&o));
}

const SELECT: &str = r#"stages: [build, test, deploy]
build:
  stage: build
  script:
    - mkdir -p out && echo "built $CI_PIPELINE_SOURCE" > out/app.txt
  artifacts:
    paths: [out/]
test:
  stage: test
  parallel: 2
  script: cat out/app.txt
deploy:
  stage: deploy
  script: echo "deploying $TOKEN_FROM_SETTINGS"
"#;

#[test]
fn list_only_stage_and_job_select_what_runs() {
    let Some(env) = repo(SELECT) else { return };
    let run = |args: &[&str]| {
        let o = env
            .cmd()
            .current_dir(env.dir.path())
            .args(["run", "--headless", "-j", "1"])
            .args(args)
            .output()
            .expect("run");
        (o.status.code(), text(&o))
    };
    let o = env
        .cmd()
        .current_dir(env.dir.path())
        .args(["run", "--list"])
        .output()
        .expect("list");
    let list = text(&o);
    assert!(list.starts_with("name"), "{list}");
    assert!(list.contains("test: [2/2]  test") && list.contains("[build]"), "{list}");
    // --only without a recorded run: the artifacts are missing, and it says so.
    let (code, out) = run(&["--only", "test 1/2"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("no earlier run recorded its artifacts"), "{out}");
    // A full run records them; --only then takes them from it, and says from which run.
    let (code, out) = run(&[]);
    assert_eq!(code, Some(0), "{out}");
    let (code, out) = run(&["--only", "test 1/2"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("restored 1 artifact file(s) of build from run "), "{out}");
    assert!(out.contains(": 1 job, up to"), "{out}");
    let (code, out) = run(&["--stage", "test"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("2 jobs") && !out.contains(":: build"), "{out}");
    let (code, out) = run(&["--job", "test"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("3 jobs") && !out.contains(":: deploy"), "{out}");
    let (code, out) = run(&["--job", "tset"]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("did you mean `test"), "{out}");
}

#[test]
fn gitlab_ci_local_variable_files_are_read_and_ranked_below_var() {
    let Some(env) = repo(SELECT) else { return };
    env.file(".gitlab-ci-local-variables.yml", "TOKEN_FROM_SETTINGS: from-file\n");
    let run = |extra: &[&str]| {
        let o = env
            .cmd()
            .current_dir(env.dir.path())
            .env("HOME", env.dir.path())
            .args(["run", "--headless", "--only", "deploy"])
            .args(extra)
            .output()
            .expect("run");
        text(&o)
    };
    assert!(run(&[]).contains("deploy > deploying from-file"));
    assert!(run(&["--var", "TOKEN_FROM_SETTINGS=from-cli"]).contains("deploy > deploying from-cli"));
    env.file(".gitlab-ci-local-variables.yml", "TOKEN: [unclosed\n");
    let out = run(&[]);
    assert!(out.contains(".gitlab-ci-local-variables.yml"), "{out}");
}

#[test]
fn file_variables_give_jobs_a_file_and_variables_that_name_one_its_path() {
    let ci = r#"show:
  variables:
    ALIAS: $CERT
  script:
    - test -f "$CERT" && echo "cert is a file"
    - cat "$CERT"
    - test "$ALIAS" = "$CERT" && echo "alias names the same file"
    - cat "$KUBECONFIG"
    - stat -c %a "$CERT"
"#;
    let Some(env) = repo(ci) else { return };
    std::fs::create_dir_all(env.dir.path().join(".kube")).expect("mkdir");
    env.file(".kube/config", "kind: Config\n");
    env.file(
        ".gitlab-ci-local-variables.yml",
        "CERT:\n  type: file\n  values:\n    '*': |\n      -----BEGIN CERT-----\nKUBECONFIG: ~/.kube/config\n",
    );
    let run = |extra: &[&str]| {
        let o = env
            .cmd()
            .current_dir(env.dir.path())
            .env("HOME", env.dir.path())
            .args(["run", "--headless"])
            .args(extra)
            .output()
            .expect("run");
        (o.status.code(), text(&o))
    };
    let (code, out) = run(&[]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("show > cert is a file"), "{out}");
    assert!(out.contains("show > -----BEGIN CERT-----"), "{out}");
    assert!(out.contains("show > alias names the same file"), "{out}");
    assert!(out.contains("show > kind: Config"), "{out}");
    assert!(out.contains("show > 600"), "only trackside's user may read it: {out}");
    // The files go with the attempt.
    let runs = env.dir.path().join("state/runs");
    let left: Vec<_> = std::fs::read_dir(&runs)
        .expect("runs")
        .flatten()
        .filter(|r| r.path().join("files").read_dir().is_ok_and(|mut d| d.next().is_some()))
        .collect();
    assert!(left.is_empty(), "file variables left on disk");
    // `--var` gives the name a plain value.
    let (code, out) = run(&["--var", "CERT=plain"]);
    assert_ne!(code, Some(0), "`test -f plain` fails: {out}");
}

#[test]
fn a_dotenv_report_does_not_override_the_projects_settings() {
    let ci = r#"stages: [build, test]
build:
  stage: build
  script:
    - printf 'TARGET=from-dotenv\nOTHER=from-dotenv\n' > build.env
  artifacts:
    reports:
      dotenv: build.env
use:
  stage: test
  variables:
    OTHER: from-yaml
  script:
    - echo "target $TARGET other $OTHER"
"#;
    let Some(env) = repo(ci) else { return };
    env.file(".gitlab-ci-local-variables.yml", "TARGET: from-settings\n");
    let o = env
        .cmd()
        .current_dir(env.dir.path())
        .env("HOME", env.dir.path())
        .args(["run", "--headless"])
        .output()
        .expect("run");
    let out = text(&o);
    // GitLab's order: project settings above dotenv reports above job variables.
    assert!(out.contains("> target from-settings other from-dotenv"), "{out}");
}

#[test]
fn a_generated_child_pipeline_runs_when_its_generator_has_made_it() {
    let ci = r#"stages: [generate, child, after]
generate:
  stage: generate
  script:
    - |
      printf 'build-a:\n  script: [echo building a for $SERVICE]\nbuild-b:\n  stage: deploy\n  script: [echo building b]\n' > child.yml
  artifacts:
    paths: [child.yml]
run-child:
  stage: child
  variables:
    SERVICE: api
  trigger:
    include:
      - artifact: child.yml
        job: generate
    strategy: depend
after:
  stage: after
  script: [echo after the child]
"#;
    let Some(env) = repo(ci) else { return };
    let (code, out) = headless(&env);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("child pipeline of run-child created from generate's artifact"),
        "{out}"
    );
    assert!(out.contains("> building a for api"), "{out}");
    // The child's stages keep their order, and what follows waits for the child.
    let at = |needle: &str| out.find(needle).unwrap_or_else(|| panic!("{needle} missing: {out}"));
    assert!(at("> building a for api") < at("> building b"), "{out}");
    assert!(at("> building b") < at("> after the child"), "{out}");
    // A file that is no pipeline fails the trigger job, saying why.
    let broken = ci.replace("script: [echo building b]", "scrip: [echo building b]");
    env.file(".gitlab-ci.yml", broken);
    let (code, out) = headless(&env);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("unknown keyword `scrip`"), "{out}");
    assert!(out.contains("after") && out.contains("blocked by run-child"), "{out}");
}

#[test]
fn jobs_see_the_repository_and_a_merge_request_pipeline_has_its_variables() {
    let ci = "show:\n  script:\n    - git log -1 --format=%s\n    - echo \"branch=[$CI_COMMIT_BRANCH] mr=[$CI_MERGE_REQUEST_SOURCE_BRANCH_NAME->$CI_MERGE_REQUEST_TARGET_BRANCH_NAME]\"\n  rules:\n    - when: always\n";
    let Some(env) = repo(ci) else { return };
    let run = |extra: &[&str]| {
        let o = env
            .cmd()
            .current_dir(env.dir.path())
            .args(["run", "--headless"])
            .args(extra)
            .output()
            .expect("run");
        text(&o)
    };
    let out = run(&[]);
    assert!(out.contains("show > first"), "a job runs git in its workspace: {out}");
    assert!(out.contains("show > branch=[main] mr=[->]"), "{out}");
    let out = run(&["--var", "CI_PIPELINE_SOURCE=merge_request_event"]);
    assert!(out.contains("show > branch=[] mr=[main->main]"), "{out}");
}

#[test]
fn untracked_artifacts_and_caches_take_what_git_does_not_track() {
    let ci = "stages: [build, test]\nbuild:\n  stage: build\n  script:\n    - mkdir -p gen && echo made > gen/file.txt\n  artifacts:\n    untracked: true\n  cache:\n    key: u\n    untracked: true\ntest:\n  stage: test\n  script:\n    - cat gen/file.txt\n    - test ! -e .gitlab-ci.yml.copy\n";
    let Some(env) = repo(ci) else { return };
    let (code, out) = headless(&env);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.lines().any(|l| l.starts_with("test ") && l.ends_with("> made")),
        "{out}"
    );
    assert!(out.contains("saved 1 file(s) to directory cache"), "{out}");
}
