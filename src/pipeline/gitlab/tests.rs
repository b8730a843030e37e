use super::*;
use crate::pipeline::Dialect;

fn opts(vars: &[(&str, &str)]) -> LoadOptions {
    let mut ci_vars = vec![
        ("CI_PIPELINE_SOURCE".to_string(), "push".to_string()),
        ("CI_COMMIT_BRANCH".to_string(), "main".to_string()),
        ("CI_COMMIT_REF_NAME".to_string(), "main".to_string()),
        ("CI_DEFAULT_BRANCH".to_string(), "main".to_string()),
    ];
    ci_vars.extend(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    LoadOptions {
        ci_vars,
        dialect: Some(Dialect::Gitlab),
        ..LoadOptions::default()
    }
}

fn read_with(src: &str, o: &LoadOptions) -> Result<Pipeline, Vec<(usize, usize, String)>> {
    parse_source(Path::new(".gitlab-ci.yml"), src.to_string(), o)
        .map(|(p, _)| p)
        .map_err(|r| r.items.iter().map(|d| (d.line, d.column, d.message.clone())).collect())
}

fn read(src: &str) -> Pipeline {
    read_with(src, &opts(&[])).unwrap_or_else(|e| panic!("{e:?}"))
}

fn errors(src: &str) -> Vec<(usize, usize, String)> {
    match read_with(src, &opts(&[])) {
        Ok(_) => panic!("expected errors"),
        Err(e) => e,
    }
}

/// A step's commands without the `$ command` lines GitLab's runner echoes.
fn commands(step: &Step) -> Vec<&str> {
    let echoed: Vec<&str> = step.script.iter().step_by(2).map(String::as_str).collect();
    assert!(
        echoed.iter().all(|l| l.starts_with("printf '\\033[32m$ %s")),
        "every command is echoed first: {:?}",
        step.script
    );
    step.script.iter().skip(1).step_by(2).map(String::as_str).collect()
}

fn deps<'p>(p: &'p Pipeline, job: &str) -> Vec<&'p str> {
    let mut d: Vec<&str> = p
        .job(job)
        .unwrap_or_else(|| panic!("no job {job}"))
        .depends_on
        .iter()
        .map(String::as_str)
        .collect();
    d.sort();
    d
}

fn env<'p>(p: &'p Pipeline, job: &str, name: &str) -> Option<&'p str> {
    p.job(job)?
        .environment
        .iter()
        .rev()
        .find(|v| v.name == name)
        .map(|v| v.value.as_str())
}

#[test]
fn jobs_wait_for_every_job_of_the_stages_before_theirs() {
    let p = read(
        "stages: [build, test, deploy]\nb1: {stage: build, script: [make]}\nb2: {stage: build, script: [make]}\nt: {stage: test, script: [make test]}\nd: {stage: deploy, script: [ship]}\npre: {stage: .pre, script: [x]}\npost: {stage: .post, script: [y]}\n",
    );
    assert_eq!(deps(&p, "pre"), Vec::<&str>::new());
    assert_eq!(deps(&p, "b1"), ["pre"]);
    assert_eq!(deps(&p, "t"), ["b1", "b2", "pre"]);
    assert_eq!(deps(&p, "d"), ["b1", "b2", "pre", "t"]);
    assert_eq!(deps(&p, "post"), ["b1", "b2", "d", "pre", "t"]);
    assert_eq!(p.job("t").and_then(|j| j.stage.as_deref()), Some("test"));
    assert!(p.undefined_is_empty, "GitLab expands undefined variables to nothing");
}

#[test]
fn without_stages_gitlabs_defaults_apply_and_a_job_is_in_test() {
    let p = read("a:\n  script: [x]\nb:\n  stage: build\n  script: [y]\nc:\n  stage: deploy\n  script: [z]\n");
    assert_eq!(deps(&p, "a"), ["b"]);
    assert_eq!(deps(&p, "c"), ["a", "b"]);
}

#[test]
fn needs_replace_the_stage_order() {
    let p = read(
        "stages: [build, test]\nb: {stage: build, script: [x]}\nc: {stage: build, script: [x]}\nt: {stage: test, needs: [b], script: [x]}\nfast: {stage: test, needs: [], script: [x]}\nsame: {stage: test, needs: [{job: t, artifacts: false}, {job: gone, optional: true}], script: [x]}\n",
    );
    assert_eq!(deps(&p, "t"), ["b"]);
    assert_eq!(deps(&p, "fast"), Vec::<&str>::new());
    assert_eq!(deps(&p, "same"), ["t"]);
    assert_eq!(p.job("same").and_then(|j| j.needs_artifacts.clone()), Some(vec![]));
    assert_eq!(
        p.job("t").and_then(|j| j.needs_artifacts.clone()),
        Some(vec!["b".to_string()])
    );
}

#[test]
fn a_need_on_an_unknown_job_or_a_later_stage_is_an_error_at_its_line() {
    let e = errors(
        "stages: [build, test]\nb:\n  stage: build\n  needs: [t]\n  script: [x]\nt:\n  stage: test\n  needs: [biuld]\n  script: [x]\n",
    );
    assert!(
        e.iter()
            .any(|(l, c, m)| (*l, *c) == (4, 11) && m.contains("later stage `test`")),
        "{e:?}"
    );
    assert!(
        e.iter()
            .any(|(l, c, m)| (*l, *c) == (8, 11) && m.contains("`biuld`, which is not a job")),
        "{e:?}"
    );
}

#[test]
fn extends_merges_deeply_and_default_fills_what_a_job_leaves_out() {
    let p = read(
        "default:\n  before_script: [echo default-before]\n  retry: 2\n  timeout: 10m\n.base:\n  variables: {A: base, B: base}\n  script: [base]\njob:\n  extends: .base\n  variables: {B: job}\n  script: [own]\n  timeout: 1h 30m\nalone:\n  inherit:\n    default: [timeout]\n  script: [x]\n",
    );
    let job = p.job("job").expect("job");
    assert_eq!(commands(&job.steps[0]), ["echo default-before", "own"]);
    assert_eq!(job.retry_count, 2);
    assert_eq!(job.timeout, Duration::from_secs(5400));
    assert_eq!(env(&p, "job", "A"), Some("base"));
    assert_eq!(env(&p, "job", "B"), Some("job"));
    let alone = p.job("alone").expect("alone");
    assert_eq!(commands(&alone.steps[0]), ["x"], "before_script not inherited");
    assert_eq!(alone.retry_count, 0);
    assert_eq!(alone.timeout, Duration::from_secs(600));
}

#[test]
fn after_script_is_a_cleanup_step_and_scripts_nest() {
    let p = read(".setup: &setup [a, b]\njob:\n  script:\n    - *setup\n    - c\n  after_script: tidy\n");
    let job = p.job("job").expect("job");
    assert_eq!(commands(&job.steps[0]), ["a", "b", "c"]);
    assert_eq!(job.steps[1].name, "after_script");
    assert!(job.steps[1].cleanup);
    assert_eq!(commands(&job.steps[1]), ["tidy"]);
}

#[test]
fn variables_take_gitlabs_forms_and_inherit_can_refuse_the_files() {
    let p = read(
        "variables:\n  G: global\n  N: 3\n  RAW: {value: '$HOME', expand: false, description: raw}\na:\n  variables: {G: job}\n  script: [x]\nb:\n  inherit: {variables: [N]}\n  script: [x]\n",
    );
    assert_eq!(env(&p, "a", "G"), Some("job"));
    assert_eq!(env(&p, "a", "N"), Some("3"));
    assert_eq!(env(&p, "a", "RAW"), Some("$$HOME"), "kept literal for the shell");
    assert_eq!(env(&p, "b", "G"), None);
    assert_eq!(env(&p, "b", "N"), Some("3"));
}

#[test]
fn rules_decide_when_a_job_runs_or_whether_it_exists() {
    let src = "a:\n  script: [x]\n  rules:\n    - if: $CI_COMMIT_BRANCH == \"main\" && $DEPLOY\n      when: manual\n      variables: {TARGET: prod}\n    - if: $CI_COMMIT_BRANCH =~ /^feature/\n      allow_failure: true\n    - when: never\nb:\n  script: [x]\n  rules:\n    - if: $CI_PIPELINE_SOURCE == \"schedule\"\n";
    let on_main = read_with(src, &opts(&[("DEPLOY", "1")])).expect("valid");
    let a = on_main.job("a").expect("a");
    assert_eq!(a.when, When::Manual);
    assert!(
        !a.allow_failure,
        "a job a rule makes manual blocks (GitLab's rules default)"
    );
    assert_eq!(env(&on_main, "a", "TARGET"), Some("prod"));
    assert!(on_main.job("b").is_none(), "no rule matched: left out");
    let feature = read_with(
        src,
        &opts(&[("CI_COMMIT_BRANCH", "feature/x"), ("CI_PIPELINE_SOURCE", "schedule")]),
    )
    .expect("valid");
    let a = feature.job("a").expect("a");
    assert_eq!(a.when, When::OnSuccess);
    assert!(a.allow_failure);
    assert!(feature.job("b").is_some());
    // The command line is a variable like any other.
    let mut cli = opts(&[]);
    cli.cli_vars = vec![("DEPLOY".into(), "yes".into())];
    assert_eq!(
        read_with(src, &cli).expect("valid").job("a").map(|j| j.when),
        Some(When::Manual)
    );
}

#[test]
fn a_rule_that_does_not_parse_is_an_error_at_its_column() {
    let e = errors("a:\n  script: [x]\n  rules:\n    - if: '$A = \"x\"'\n");
    // The quote is at column 11; the `=` three characters into the text.
    assert!(
        e.iter().any(|(l, c, m)| (*l, *c) == (4, 15) && m.contains("operator")),
        "{e:?}"
    );
}

#[test]
fn workflow_rules_that_match_nothing_create_no_pipeline_and_say_why() {
    // `a` has rules: without them GitLab would leave it out of a merge
    // request pipeline (its default `only: [branches, tags]`).
    let src = "workflow:\n  rules:\n    - if: $CI_PIPELINE_SOURCE == \"merge_request_event\"\na:\n  script: [x]\n  rules: [{when: on_success}]\n";
    let e = errors(src);
    assert!(
        e.iter()
            .any(|(l, _, m)| *l == 3 && m.contains("create no pipeline") && m.contains("CI_PIPELINE_SOURCE=push")),
        "{e:?}"
    );
    let mr = read_with(src, &opts(&[("CI_PIPELINE_SOURCE", "merge_request_event")])).expect("valid");
    assert!(mr.job("a").is_some());
}

#[test]
fn only_and_except_match_refs_and_variables() {
    let src = "a:\n  script: [x]\n  only: [main, /^release-/]\nb:\n  script: [x]\n  except: [main]\nc:\n  script: [x]\n  only:\n    refs: [branches]\n    variables: [$FLAG == \"on\"]\nd:\n  script: [x]\n  only: [tags]\n";
    let p = read_with(src, &opts(&[("FLAG", "on")])).expect("valid");
    let names: Vec<&str> = p.jobs.iter().map(|j| j.name.as_str()).collect();
    assert_eq!(names, ["a", "c"]);
    let release = read_with(
        src,
        &opts(&[("CI_COMMIT_BRANCH", "release-2"), ("CI_COMMIT_REF_NAME", "release-2")]),
    )
    .expect("valid");
    let names: Vec<&str> = release.jobs.iter().map(|j| j.name.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
}

#[test]
fn parallel_makes_gitlabs_instances_and_needs_wait_for_all_of_them() {
    let p = read(
        "stages: [build, test]\nbuild:\n  stage: build\n  parallel:\n    matrix:\n      - OS: [linux, mac]\n        ARCH: [amd64]\n      - OS: win\n  script: [x]\ntest:\n  stage: test\n  parallel: 3\n  needs: [build]\n  script: [x]\n",
    );
    let names: Vec<&str> = p.jobs.iter().map(|j| j.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "build: [linux, amd64]",
            "build: [mac, amd64]",
            "build: [win]",
            "test: [1/3]",
            "test: [2/3]",
            "test: [3/3]"
        ]
    );
    assert_eq!(env(&p, "build: [mac, amd64]", "OS"), Some("mac"));
    assert_eq!(env(&p, "test: [2/3]", "CI_NODE_INDEX"), Some("2"));
    assert_eq!(env(&p, "test: [2/3]", "CI_NODE_TOTAL"), Some("3"));
    assert_eq!(
        deps(&p, "test: [3/3]"),
        ["build: [linux, amd64]", "build: [mac, amd64]", "build: [win]"]
    );
}

#[test]
fn retry_and_timeout_read_gitlabs_forms() {
    let p = read(
        "a:\n  script: [x]\n  retry: 2\nb:\n  script: [x]\n  retry: {max: 1, when: [script_failure, stuck_or_timeout_failure]}\n  timeout: 3 hours 30 minutes\n",
    );
    let a = p.job("a").expect("a");
    assert_eq!(a.retry_count, 2);
    assert!(a.retry_when.contains(&FailureClass::Script) && a.retry_when.contains(&FailureClass::Network));
    let b = p.job("b").expect("b");
    assert_eq!(b.retry_count, 1);
    assert!(b.retry_when.contains(&FailureClass::Timeout) && !b.retry_when.contains(&FailureClass::Network));
    assert_eq!(b.timeout, Duration::from_secs(12_600));
    let e = errors("a:\n  script: [x]\n  retry: {max: 5, when: [scrpt_failure]}\n");
    assert!(e.iter().any(|(l, _, m)| *l == 3 && m.contains("5")), "{e:?}");
    assert!(
        e.iter().any(|(l, _, m)| *l == 3 && m.contains("scrpt_failure")),
        "{e:?}"
    );
}

#[test]
fn mistakes_are_reported_together_with_positions_and_suggestions() {
    let e = errors(
        "stages: [build, test]\nbuild:\n  stage: biuld\n  script: [x]\ntest:\n  scirpt: [x]\n.x:\n  script: [x]\ny:\n  extends: .z\n  script: [x]\nscript: [oops]\n",
    );
    let has = |line: usize, text: &str| e.iter().any(|(l, _, m)| *l == line && m.contains(text));
    assert!(has(3, "stage `biuld` is not in `stages`"), "{e:?}");
    assert!(has(6, "unknown keyword `scirpt`"), "{e:?}");
    assert!(has(5, "has no `script`"), "{e:?}");
    assert!(has(10, "`.z`, which is not defined"), "{e:?}");
    assert!(has(12, "neither a GitLab keyword nor a job"), "{e:?}");
}

#[test]
fn what_needs_a_server_is_refused_or_ignored_with_a_message() {
    let e = errors("include: 'https://example.com/ci.yml'\na:\n  script: [x]\n");
    assert!(
        e.iter()
            .any(|(l, _, m)| *l == 1 && m.contains("fetched from the network by GitLab's server")),
        "{e:?}"
    );
    let (p, report) = parse_source(
        Path::new(".gitlab-ci.yml"),
        "a:\n  script: [x]\n  secrets: {X: {vault: a/b}}\n  release: {tag_name: v1}\nb:\n  trigger: {project: group/other}\n".into(),
        &opts(&[]),
    )
    .expect("valid");
    assert!(p.job("b").is_none(), "another project's trigger is left out");
    let warnings: Vec<String> = report.warnings().map(|d| d.message.clone()).collect();
    assert!(
        warnings.iter().any(|w| w.contains("`secrets` needs GitLab's server")),
        "{warnings:?}"
    );
    assert!(warnings.iter().any(|w| w.contains("`trigger:project`")), "{warnings:?}");
}

#[test]
fn a_file_with_only_hidden_jobs_runs_nothing_and_says_so() {
    let e = errors(".a:\n  script: [x]\n");
    assert!(e.iter().any(|(_, _, m)| m.contains("no job would run")), "{e:?}");
}

#[test]
fn the_dialect_is_told_by_name_then_by_keys() {
    let of = |name: &str, src: &str| Dialect::of(Path::new(name), src);
    assert_eq!(of("ci/.gitlab-ci.yml", "jobs: {}"), Dialect::Gitlab);
    assert_eq!(of("deploy.gitlab-ci.yml", ""), Dialect::Gitlab);
    assert_eq!(of("p.yml", "name: x\njobs:\n  a:\n    steps: []\n"), Dialect::Native);
    assert_eq!(of("p.yml", "stages: [a]\n"), Dialect::Gitlab);
    assert_eq!(of("p.yml", "build:\n  script: make\n"), Dialect::Gitlab);
    assert_eq!(of("p.yml", "name: x\n"), Dialect::Native);
}

#[test]
fn gitlab_durations() {
    let d = |s: &str| parse_gitlab_duration(s).map(|d| d.as_secs());
    assert_eq!(d("3600"), Some(3600));
    assert_eq!(d("1h 30m"), Some(5400));
    assert_eq!(d("2h32m"), Some(9120));
    assert_eq!(d("3 hours 30 minutes"), Some(12_600));
    assert_eq!(d("1 week"), Some(604_800));
    assert_eq!(d("10 minutes and 30 seconds"), Some(630));
    assert_eq!(d("soon"), None);
    assert_eq!(d(""), None);
}

#[test]
fn a_manual_job_is_optional_unless_a_rule_made_it_manual() {
    let p =
        read("gate:\n  when: manual\n  script: [x]\nstrict:\n  when: manual\n  allow_failure: false\n  script: [x]\n");
    assert!(p.job("gate").is_some_and(|j| j.when == When::Manual && j.allow_failure));
    assert!(p.job("strict").is_some_and(|j| !j.allow_failure));
}

#[test]
fn except_drops_a_job_when_any_part_matches_and_changes_are_decided_as_rules_changes() {
    let src = "a:\n  script: [x]\n  except:\n    refs: [main]\n    variables: [$SKIP]\nb:\n  script: [x]\n  except:\n    changes: [docs/**]\nc:\n  script: [x]\n  only:\n    changes: [src/**]\n";
    let changed = |files: &[&str]| LoadOptions {
        changed_files: crate::pipeline::ChangedFiles::known(Some(files.iter().map(|f| f.to_string()).collect())),
        ..opts(&[])
    };
    let names = |o: &LoadOptions| -> Vec<String> {
        read_with(src, o)
            .expect("valid")
            .jobs
            .iter()
            .map(|j| j.name.clone())
            .collect()
    };
    assert_eq!(
        names(&changed(&["src/a.rs"])),
        ["b", "c"],
        "on main, `except: refs` alone drops a"
    );
    assert!(
        read_with(src, &changed(&["docs/x.md"])).is_err(),
        "b dropped, c not kept: no job"
    );
    // Nothing to compare with: every `changes` matches (GitLab's rule).
    assert_eq!(names(&opts(&[])), ["c"]);
    let other = read_with(
        src,
        &opts(&[
            ("CI_COMMIT_BRANCH", "dev"),
            ("CI_COMMIT_REF_NAME", "dev"),
            ("SKIP", "1"),
        ]),
    )
    .expect("valid");
    assert!(other.job("a").is_none(), "a matching variable drops it too");
}

#[test]
fn only_keywords_name_pipeline_sources_and_merge_request_pipelines_skip_jobs_without_rules() {
    let src = "t:\n  script: [x]\n  only: [triggers]\np:\n  script: [x]\n  only: [pipelines]\nplain:\n  script: [x]\nmr:\n  script: [x]\n  rules:\n    - if: $CI_PIPELINE_SOURCE == \"merge_request_event\"\n";
    let names = |o: &LoadOptions| -> Vec<String> {
        read_with(src, o)
            .expect("valid")
            .jobs
            .iter()
            .map(|j| j.name.clone())
            .collect()
    };
    assert_eq!(names(&opts(&[("CI_PIPELINE_SOURCE", "trigger")])), ["t", "plain"]);
    assert_eq!(
        names(&opts(&[("CI_PIPELINE_SOURCE", "parent_pipeline")])),
        ["p", "plain"]
    );
    assert_eq!(names(&opts(&[("CI_PIPELINE_SOURCE", "merge_request_event")])), ["mr"]);
}

#[test]
fn a_job_without_a_stage_needs_test_among_the_stages() {
    let e = errors("stages: [build, deploy]\nb:\n  stage: build\n  script: [x]\nlost:\n  script: [x]\n");
    assert!(
        e.iter()
            .any(|(l, _, m)| *l == 5 && m.contains("default stage `test` is not in `stages`")),
        "{e:?}"
    );
}

#[test]
fn the_command_line_beats_a_jobs_variables_in_rules() {
    let src = "a:\n  variables: {MODE: job}\n  script: [x]\n  rules:\n    - if: $MODE == \"cli\"\n";
    assert!(read_with(src, &opts(&[])).is_err(), "no job would run");
    let mut o = opts(&[]);
    o.cli_vars = vec![("MODE".into(), "cli".into())];
    assert!(read_with(src, &o).expect("valid").job("a").is_some());
}

#[test]
fn matrix_jobs_have_their_node_index_and_total() {
    let p = read("b:\n  parallel:\n    matrix:\n      - OS: [linux, mac]\n  script: [x]\n");
    assert_eq!(env(&p, "b: [mac]", "CI_NODE_INDEX"), Some("2"));
    assert_eq!(env(&p, "b: [mac]", "CI_NODE_TOTAL"), Some("2"));
}

#[test]
fn caches_and_services_are_read_as_gitlab_documents_them() {
    let p = read(
        "default:\n  cache: {key: deps, paths: [vendor/], fallback_keys: [old]}\n  services: [postgres:16, {name: registry.io/team/redis:7, alias: 'cache,kv', command: [redis-server]}]\nb:\n  script: [x]\nc:\n  cache:\n    - key: {files: [Cargo.lock], prefix: rust}\n      paths: [target/]\n      policy: pull\n      when: always\n  services: []\n  script: [x]\n",
    );
    let b = p.job("b").expect("b");
    assert_eq!(b.dir_caches.len(), 1);
    assert_eq!(b.dir_caches[0].key, DirCacheKey::Name("deps".into()));
    assert_eq!(b.dir_caches[0].fallback_keys, vec!["old".to_string()]);
    let names: Vec<(&str, &[String])> = b
        .services
        .iter()
        .map(|s| (s.name.as_str(), s.aliases.as_slice()))
        .collect();
    assert_eq!(names[0], ("postgres", &[][..]));
    assert_eq!(names[1].0, "cache");
    assert_eq!(names[1].1, ["kv".to_string()]);
    let c = p.job("c").expect("c");
    assert!(c.services.is_empty());
    assert_eq!(c.dir_caches[0].policy, CachePolicy::Pull);
    assert_eq!(c.dir_caches[0].when, ArtifactWhen::Always);
    assert!(matches!(&c.dir_caches[0].key, DirCacheKey::Files { prefix: Some(p), .. } if p == "rust"));
    let e = errors("a:\n  script: [x]\n  cache: {key: a/b, paths: [x]}\n");
    assert!(
        e.iter().any(|(l, _, m)| *l == 3 && m.contains("may not contain `/`")),
        "{e:?}"
    );
}

#[test]
fn rules_needs_replace_the_jobs_needs_and_a_spec_without_config_is_refused() {
    let p = read(
        "stages: [build, test]\na:\n  stage: build\n  script: [x]\nb:\n  stage: build\n  script: [x]\nc:\n  stage: test\n  needs: [a, b]\n  script: [x]\n  rules:\n    - if: $CI_COMMIT_BRANCH == \"main\"\n      needs: [b]\n    - when: always\n",
    );
    assert_eq!(deps(&p, "c"), vec!["b"]);
    let other = read_with(
        "stages: [build, test]\na:\n  stage: build\n  script: [x]\nb:\n  stage: build\n  script: [x]\nc:\n  stage: test\n  needs: [a, b]\n  script: [x]\n  rules:\n    - if: $CI_COMMIT_BRANCH == \"main\"\n      needs: [b]\n    - when: always\n",
        &opts(&[("CI_COMMIT_BRANCH", "dev")]),
    )
    .expect("valid");
    assert_eq!(deps(&other, "c"), vec!["a", "b"]);
    let e = errors("spec:\n  inputs: {x: {}}\n");
    assert!(
        e.iter()
            .any(|(l, _, m)| *l == 1 && m.contains("has a `spec:` header and no configuration")),
        "{e:?}"
    );
}

/// A project folder with `files` written into it, and options reading it.
fn project(files: &[(&str, &str)]) -> (tempfile::TempDir, LoadOptions) {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, text) in files {
        let path = dir.path().join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(path, text).expect("write");
    }
    let o = LoadOptions {
        project_dir: Some(dir.path().to_path_buf()),
        ..opts(&[])
    };
    (dir, o)
}

fn names(p: &Pipeline) -> Vec<&str> {
    p.jobs.iter().map(|j| j.name.as_str()).collect()
}

#[test]
fn local_includes_merge_in_order_with_the_file_winning() {
    let (_d, o) = project(&[
        (
            "ci/a.yml",
            "variables: {X: from-a, Y: from-a}\n.base:\n  script: [echo base]\n  stage: build\n",
        ),
        ("ci/b.yml", "variables: {Y: from-b}\nb:\n  extends: .base\n"),
        ("ci/jobs/deep/c.yml", "c:\n  script: [echo c]\n"),
        ("ci/jobs/d.yml", "d:\n  script: [echo d]\n"),
    ]);
    let p = read_with(
        "include:\n  - ci/a.yml\n  - local: /ci/b.yml\n  - local: 'ci/jobs/**/*.yml'\nvariables: {X: mine}\nt:\n  script: [echo $X $Y]\n",
        &o,
    )
    .unwrap_or_else(|e| panic!("{e:?}"));
    let mut n = names(&p);
    n.sort();
    assert_eq!(n, vec!["b", "c", "d", "t"]);
    let t = p.job("t").expect("t");
    let get = |k: &str| {
        t.environment
            .iter()
            .rev()
            .find(|v| v.name == k)
            .map(|v| v.value.as_str())
    };
    assert_eq!(get("X"), Some("mine"));
    assert_eq!(get("Y"), Some("from-b"));
    assert_eq!(p.job("b").expect("b").stage.as_deref(), Some("build"));
}

#[test]
fn a_single_star_stays_in_its_folder() {
    let (_d, o) = project(&[
        ("ci/a.yml", "a:\n  script: [x]\n"),
        ("ci/sub/b.yml", "b:\n  script: [x]\n"),
    ]);
    let p = read_with("include: 'ci/*.yml'\n", &o).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(names(&p), vec!["a"]);
}

#[test]
fn include_rules_decide_with_the_pipelines_variables() {
    let (_d, o) = project(&[("a.yml", "a:\n  script: [x]\n"), ("b.yml", "b:\n  script: [x]\n")]);
    let src = "include:\n  - local: a.yml\n    rules:\n      - if: $CI_COMMIT_BRANCH == \"main\"\n  - local: b.yml\n    rules:\n      - if: $DEPLOY\n      - exists: [nothing.txt]\n        when: always\nt:\n  script: [x]\n";
    let p = read_with(src, &o).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(names(&p), vec!["a", "t"]);
    let o2 = LoadOptions {
        cli_vars: vec![("DEPLOY".into(), "1".into())],
        ..o.clone()
    };
    let mut n: Vec<String> = read_with(src, &o2)
        .unwrap_or_else(|e| panic!("{e:?}"))
        .jobs
        .iter()
        .map(|j| j.name.clone())
        .collect();
    n.sort();
    assert_eq!(n, vec!["a", "b", "t"]);
}

#[test]
fn mistakes_in_included_files_point_into_them() {
    let (_d, o) = project(&[("ci/jobs.yml", "a:\n  script: [x]\n  stagee: build\n")]);
    let r = parse_source(
        Path::new(".gitlab-ci.yml"),
        "include: [ci/jobs.yml, ci/gone.yml]\n".into(),
        &o,
    )
    .expect_err("invalid");
    let d: Vec<_> = r.items.iter().filter(|d| d.is_error()).collect();
    assert_eq!(d.len(), 2, "{d:?}");
    let gone = d
        .iter()
        .find(|d| d.message.contains("ci/gone.yml"))
        .expect("missing file");
    assert_eq!((gone.file, gone.line, gone.column), (0, 1, 24));
    let typo = d.iter().find(|d| d.message.contains("stagee")).expect("typo");
    assert_eq!((typo.line, typo.column), (3, 3));
    assert!(r.source_of(typo).0.ends_with("ci/jobs.yml"), "{:?}", r.source_of(typo));
    let text = r.render(false);
    assert!(text.contains("ci/jobs.yml:3:3"), "{text}");
    assert!(r.to_json().to_string().contains("ci/jobs.yml"));
}

#[test]
fn includes_that_leave_the_project_or_need_a_server_are_refused() {
    let (_d, o) = project(&[]);
    for (src, want) in [
        ("include: '../x.yml'\n", "leaves the project"),
        (
            "include: {template: Auto-DevOps.gitlab-ci.yml}\n",
            "GitLab's own templates",
        ),
        (
            "include: {project: g/p, file: x.yml}\n",
            "`g/p` is read from GitLab's server",
        ),
        (
            "include: {component: gitlab.com/g/p/lint@1.0}\n",
            "is read from GitLab's server",
        ),
        ("include: 'ci/*.yml'\n", "matches no file"),
        ("include: 'ci/x.txt'\n", "not a YAML file"),
    ] {
        let e = read_with(src, &o).err().unwrap_or_else(|| panic!("{src}: accepted"));
        assert!(e.iter().any(|(_, _, m)| m.contains(want)), "{src}: {e:?}");
    }
}

#[test]
fn a_mapped_project_and_component_are_read_from_their_checkout() {
    let (other, _) = project(&[
        (
            "templates/build.yml",
            "include: {local: templates/common.yml}\npbuild:\n  script: [x]\n",
        ),
        ("templates/common.yml", "pcommon:\n  script: [x]\n"),
        (
            "templates/lint/template.yml",
            "spec:\n  inputs:\n    level: {default: strict}\n---\nlint-$[[ inputs.level ]]:\n  script: [x]\n",
        ),
    ]);
    let (_d, o) = project(&[]);
    let o = LoadOptions {
        include_projects: vec![("g/p".into(), other.path().to_path_buf())],
        ..o
    };
    let p = read_with(
        "include:\n  - project: g/p\n    file: /templates/build.yml\n  - component: gitlab.com/g/p/lint@1.0\n",
        &o,
    )
    .unwrap_or_else(|e| panic!("{e:?}"));
    let mut n = names(&p);
    n.sort();
    // A `local:` include inside the other project's file is of that project.
    assert_eq!(n, vec!["lint-strict", "pbuild", "pcommon"]);
}

#[test]
fn includes_are_bounded_and_a_file_is_read_once() {
    // a.yml includes itself: read once, no loop.
    let (_d, o) = project(&[("a.yml", "include: a.yml\na:\n  script: [x]\n")]);
    let p = read_with("include: [a.yml, a.yml]\n", &o).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(names(&p), vec!["a"]);
    // 151 files are more than GitLab allows.
    let files: Vec<(String, String)> = (0..151)
        .map(|i| (format!("ci/f{i:03}.yml"), format!("j{i}:\n  script: [x]\n")))
        .collect();
    let refs: Vec<(&str, &str)> = files.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let (_d2, o2) = project(&refs);
    let e = read_with("include: 'ci/*.yml'\n", &o2).expect_err("too many");
    assert!(e.iter().any(|(_, _, m)| m.contains("more than GitLab's 150")), "{e:?}");
}

#[test]
fn inputs_are_checked_and_interpolated_with_types_and_functions() {
    let tpl = "spec:\n  inputs:\n    env:\n      options: [staging, prod]\n    replicas:\n      type: number\n      default: 2\n    tags:\n      type: array\n      default: [a, b]\n    version:\n      regex: ^v\\d+$\n      default: v1\n---\ndeploy-$[[ inputs.env ]]:\n  parallel: $[[ inputs.replicas ]]\n  variables:\n    SHORT: $[[ inputs.env | truncate(0,4) ]]\n    TAGS: \"tags: $[[ inputs.tags ]]\"\n    V: $[[ inputs.version ]]\n  script: [x]\n";
    let (_d, o) = project(&[("t.yml", tpl)]);
    let p =
        read_with("include:\n  - local: t.yml\n    inputs: {env: staging}\n", &o).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(p.jobs.len(), 2, "parallel took the number: {:?}", names(&p));
    let j = &p.jobs[0];
    let get = |k: &str| {
        j.environment
            .iter()
            .rev()
            .find(|v| v.name == k)
            .map(|v| v.value.as_str())
    };
    assert_eq!(get("SHORT"), Some("stag"));
    assert_eq!(get("V"), Some("v1"));
    assert_eq!(get("TAGS"), Some("tags: [\"a\",\"b\"]"));
    for (given, want) in [
        ("{env: dev}", "not one of its options"),
        ("{}", "needs input `env`"),
        ("{env: prod, replicas: three}", "is a number, found a string"),
        ("{env: prod, version: latest}", "does not match"),
        ("{env: prod, colour: red}", "has no input `colour`"),
    ] {
        let src = format!("include:\n  - local: t.yml\n    inputs: {given}\n");
        let e = read_with(&src, &o).err().unwrap_or_else(|| panic!("{given}: accepted"));
        assert!(e.iter().any(|(_, _, m)| m.contains(want)), "{given}: {e:?}");
    }
    let (_d2, o2) = project(&[(
        "u.yml",
        "spec:\n  inputs:\n    a: {default: x}\n---\nj:\n  script:\n    - echo $[[ inputs.b ]]\n",
    )]);
    let e = read_with("include: u.yml\n", &o2).expect_err("unknown input");
    assert!(
        e.iter()
            .any(|(l, c, m)| (*l, *c) == (7, 12) && m.contains("unknown input `b`")),
        "{e:?}"
    );
}

#[test]
fn references_reuse_nested_nodes_and_say_what_is_missing() {
    let p = read(
        ".setup:\n  script: [echo one, echo two]\n  variables: {A: a}\n.more:\n  script:\n    - !reference [.setup, script]\n    - echo three\nj:\n  variables: !reference [.setup, variables]\n  script:\n    - !reference [.more, script]\n    - echo four\n",
    );
    let j = p.job("j").expect("j");
    assert_eq!(
        commands(&j.steps[0]),
        vec!["echo one", "echo two", "echo three", "echo four"]
    );
    assert!(j.environment.iter().any(|v| v.name == "A" && v.value == "a"));
    let e =
        errors(".a:\n  script: [x]\nj:\n  script: !reference [.b, script]\nk:\n  script: !reference [.a, scripts]\n");
    assert!(
        e.iter()
            .any(|(l, c, m)| (*l, *c) == (4, 23) && m.contains("`.b`, which is no job")),
        "{e:?}"
    );
    assert!(
        e.iter()
            .any(|(l, _, m)| *l == 6 && m.contains("`scripts`, which is no key")),
        "{e:?}"
    );
    let e = errors(".a:\n  script: !reference [.a, script]\nj:\n  script: !reference [.a, script]\n");
    assert!(
        e.iter().any(|(_, _, m)| m.contains("nest deeper than GitLab's 10")),
        "{e:?}"
    );
}

#[test]
fn rules_exists_and_changes_look_at_the_project() {
    let (_d, o) = project(&[("api/main.go", ""), ("web/index.js", "")]);
    let src = "api:\n  script: [x]\n  rules:\n    - changes: [api/**/*]\n    - exists: [docs/*.md]\nweb:\n  script: [x]\n  rules:\n    - changes: {paths: ['web/*']}\ngo:\n  script: [x]\n  rules:\n    - exists: ['**/*.go']\n";
    // No known changes: every `changes` matches (GitLab's rule without a push).
    let mut n: Vec<String> = read_with(src, &o)
        .expect("valid")
        .jobs
        .iter()
        .map(|j| j.name.clone())
        .collect();
    n.sort();
    assert_eq!(n, vec!["api", "go", "web"]);
    let o2 = LoadOptions {
        changed_files: crate::pipeline::ChangedFiles::known(Some(vec!["web/index.js".into()])),
        ..o.clone()
    };
    let mut n: Vec<String> = read_with(src, &o2)
        .expect("valid")
        .jobs
        .iter()
        .map(|j| j.name.clone())
        .collect();
    n.sort();
    assert_eq!(n, vec!["go", "web"]);
}

#[test]
fn a_child_pipeline_joins_the_dag_under_its_trigger_job() {
    let (_d, o) = project(&[
        (
            "ci/child.yml",
            "test:\n  script: [echo $SERVICE]\n  rules:\n    - if: $CI_PIPELINE_SOURCE == \"parent_pipeline\"\npack:\n  stage: deploy\n  script: [x]\n",
        ),
        ("ci/grand.yml", "g:\n  script: [x]\n"),
    ]);
    let src = "stages: [build, child, deploy]\nbuild:\n  stage: build\n  script: [x]\napi:\n  stage: child\n  variables: {SERVICE: api}\n  trigger: {include: ci/child.yml, strategy: depend}\nfree:\n  stage: child\n  trigger:\n    include: [{local: ci/child.yml}]\ndeploy:\n  stage: deploy\n  script: [x]\nother:\n  trigger: group/project\n";
    let p = read_with(src, &o).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(deps(&p, "api/test"), vec!["build"]);
    assert_eq!(deps(&p, "api/pack"), vec!["api/test"]);
    // strategy: depend waits for the child; without it the trigger passes at once.
    assert_eq!(deps(&p, "api"), vec!["api/pack"]);
    assert_eq!(deps(&p, "free"), vec!["build"]);
    let t = p.job("api/test").expect("child job");
    assert!(t.environment.iter().any(|v| v.name == "SERVICE" && v.value == "api"));
    assert!(p.job("other").is_none(), "another project's pipeline is left out");
    let e = errors("a:\n  trigger: {include: x.yml, project: g/p}\n");
    assert!(e.iter().any(|(_, _, m)| m.contains("not both")), "{e:?}");
}

#[test]
fn a_need_on_matrix_values_waits_for_those_instances_only() {
    let p = read(
        "stages: [build, test]\ncompile:\n  stage: build\n  parallel:\n    matrix:\n      - APP: [web, api]\n        MODE: [debug, release]\n  script: [x]\nsmoke:\n  stage: test\n  needs:\n    - job: compile\n      parallel:\n        matrix:\n          - {APP: web, MODE: release}\n  script: [x]\n",
    );
    assert_eq!(deps(&p, "smoke"), vec!["compile: [web, release]"]);
    let e = errors(
        "compile:\n  stage: build\n  parallel: {matrix: [{APP: [web]}]}\n  script: [x]\nsmoke:\n  needs: [{job: compile, parallel: {matrix: [{APP: ios}]}}]\n  script: [x]\n",
    );
    assert!(
        e.iter()
            .any(|(l, _, m)| *l == 6 && m.contains("no instance of `compile`")),
        "{e:?}"
    );
}

#[test]
fn a_trigger_job_runs_no_script_and_its_child_takes_no_parent_artifacts() {
    let (_d, o) = project(&[("child.yml", "c1:\n  script: [x]\nc2:\n  stage: deploy\n  script: [x]\n")]);
    let src = "default:\n  before_script: [echo default]\nbuild:\n  stage: build\n  script: [x]\n  artifacts: {paths: [out/]}\nkid:\n  stage: test\n  trigger: {include: child.yml}\n";
    let p = read_with(src, &o).unwrap_or_else(|e| panic!("{e:?}"));
    assert!(p.job("kid").expect("kid").steps.iter().all(|s| s.script.is_empty()));
    assert_eq!(p.job("kid/c1").expect("c1").needs_artifacts, Some(Vec::new()));
    assert_eq!(
        p.job("kid/c2").expect("c2").needs_artifacts,
        Some(vec!["kid/c1".to_string()])
    );
    let e = read_with(
        ".s:\n  script: [x]\nkid:\n  extends: .s\n  trigger: {include: child.yml}\n",
        &o,
    )
    .expect_err("script");
    assert!(
        e.iter()
            .any(|(l, _, m)| *l == 2 && m.contains("trigger job `kid` has a `script`")),
        "{e:?}"
    );
}

#[test]
fn a_jobs_mistakes_are_all_reported_at_once() {
    let e = errors(
        "stages: [build, test]\nbad:\n  stage: biuld\n  when: manul\n  needs: [buld]\n  script: [x]\nbuild:\n  stage: build\n  script: [x]\n",
    );
    for want in ["stage `biuld`", "`when: manul`", "needs `buld`"] {
        assert!(e.iter().any(|(_, _, m)| m.contains(want)), "{want}: {e:?}");
    }
}

#[test]
fn references_that_fan_out_stop_at_a_budget_quickly() {
    // .l0 has ten references to .l1, each of which has ten to .l2, ...:
    // 10^8 nodes if copied out; each path is resolved once, and the copy
    // stops at the budget with one error.
    let mut src = String::new();
    for level in 0..8 {
        src.push_str(&format!(".l{level}:\n  k:\n"));
        for _ in 0..10 {
            src.push_str(&format!("    - !reference [.l{}, k]\n", level + 1));
        }
    }
    src.push_str(".l8:\n  k: [echo]\nj:\n  script: !reference [.l0, k]\n");
    let started = std::time::Instant::now();
    let e = errors(&src);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(
        e.iter().filter(|(_, _, m)| m.contains("copy more than")).count(),
        1,
        "{e:?}"
    );
}

#[test]
fn a_child_pipeline_with_no_job_fails_its_trigger_job_not_the_parent() {
    let (_d, o) = project(&[("child.yml", "c:\n  script: [x]\n  rules:\n    - if: $NEVER\n")]);
    let p = read_with("build:\n  script: [x]\nkid:\n  trigger: {include: child.yml}\n", &o)
        .unwrap_or_else(|e| panic!("{e:?}"));
    let kid = p.job("kid").expect("kid");
    assert!(
        kid.steps[0].script.iter().any(|l| l == "exit 1"),
        "{:?}",
        kid.steps[0].script
    );
    assert!(p.job("kid/c").is_none());
}

#[test]
fn the_changed_files_are_asked_for_once_and_only_when_a_rule_needs_them() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let asked = Arc::new(AtomicUsize::new(0));
    let lazily = |asked: &Arc<AtomicUsize>| {
        let asked = asked.clone();
        LoadOptions {
            changed_files: crate::pipeline::ChangedFiles::asked(move || {
                asked.fetch_add(1, Ordering::SeqCst);
                Some(vec!["src/a.rs".to_string()])
            }),
            ..opts(&[])
        }
    };
    let without = "a:\n  script: [x]\n  rules:\n    - if: $CI_COMMIT_BRANCH\n";
    read_with(without, &lazily(&asked)).expect("valid");
    assert_eq!(
        asked.load(Ordering::SeqCst),
        0,
        "no rule looks at changes: git is not asked"
    );
    let with =
        "a:\n  script: [x]\n  rules:\n    - changes: [src/**]\nb:\n  script: [x]\n  rules:\n    - changes: [docs/**]\n";
    let p = read_with(with, &lazily(&asked)).expect("valid");
    assert_eq!(asked.load(Ordering::SeqCst), 1, "asked once for both rules");
    let names: Vec<&str> = p.jobs.iter().map(|j| j.name.as_str()).collect();
    assert_eq!(names, ["a"]);
}

#[test]
fn the_files_own_inputs_come_from_the_command_line_as_their_types() {
    let src = "spec:\n  inputs:\n    env:\n      options: [staging, production]\n    replicas:\n      type: number\n      default: 1\n    dry:\n      type: boolean\n      default: true\n    regions:\n      type: array\n      default: [eu]\n---\ndeploy:\n  script:\n    - echo $[[ inputs.env ]] $[[ inputs.replicas ]] $[[ inputs.dry ]]\n  parallel:\n    matrix:\n      - REGION: $[[ inputs.regions ]]\n";
    let with = |inputs: &[(&str, &str)]| LoadOptions {
        inputs: inputs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        ..opts(&[])
    };
    let p = read_with(
        src,
        &with(&[
            ("env", "production"),
            ("replicas", "3"),
            ("dry", "false"),
            ("regions", "[eu, us]"),
        ]),
    )
    .unwrap_or_else(|e| panic!("{e:?}"));
    let names: Vec<&str> = p.jobs.iter().map(|j| j.name.as_str()).collect();
    assert_eq!(names, ["deploy: [eu]", "deploy: [us]"]);
    assert!(
        commands(&p.jobs[0].steps[0]).contains(&"echo production 3 false"),
        "{:?}",
        commands(&p.jobs[0].steps[0])
    );
    // Without `env` (it has no default): said where it is declared, and how to give it.
    let e = read_with(src, &opts(&[])).expect_err("env is required");
    assert!(
        e.iter()
            .any(|(l, _, m)| *l == 3 && m.contains("needs input `env`, which has no default")),
        "{e:?}"
    );
    let e = read_with(src, &with(&[("env", "staging"), ("replicas", "three")])).expect_err("not a number");
    assert!(
        e.iter()
            .any(|(l, _, m)| *l == 5 && m.contains("--input replicas=three: input `replicas` is a number")),
        "{e:?}"
    );
    let e = read_with(src, &with(&[("env", "qa")])).expect_err("not an option");
    assert!(e.iter().any(|(_, _, m)| m.contains("not one of its options")), "{e:?}");
    let e = read_with(src, &with(&[("env", "staging"), ("replica", "2")])).expect_err("unknown");
    assert!(e.iter().any(|(_, _, m)| m.contains("has no input `replica`")), "{e:?}");
    let e = read_with("a:\n  script: [x]\n", &with(&[("env", "staging")])).expect_err("no spec");
    assert!(e.iter().any(|(_, _, m)| m.contains("declares no inputs")), "{e:?}");
}

#[test]
fn each_instance_of_a_parallel_trigger_job_triggers_a_child_with_its_values() {
    let (_d, o) = project(&[("ci/deploy.yml", "rollout:\n  script: [echo $REGION]\n")]);
    let src = "deploy:\n  parallel:\n    matrix:\n      - REGION: [eu, us]\n  trigger:\n    include: ci/deploy.yml\n    strategy: depend\n";
    let p = read_with(src, &o).unwrap_or_else(|e| panic!("{e:?}"));
    let mut names: Vec<&str> = p.jobs.iter().map(|j| j.name.as_str()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "deploy: [eu]",
            "deploy: [eu]/rollout",
            "deploy: [us]",
            "deploy: [us]/rollout"
        ]
    );
    for region in ["eu", "us"] {
        let child = p.job(&format!("deploy: [{region}]/rollout")).expect("child job");
        assert!(
            child
                .environment
                .iter()
                .any(|v| v.name == "REGION" && v.value == region),
            "the instance's matrix value reaches its child"
        );
        assert_eq!(
            deps(&p, &format!("deploy: [{region}]")),
            vec![format!("deploy: [{region}]/rollout")]
        );
    }
}

#[test]
fn a_generated_child_pipeline_waits_for_its_generator_and_is_grafted_from_the_file() {
    let src = "stages: [gen, child]\ngenerate:\n  stage: gen\n  script: [make-child > child.yml]\n  artifacts: {paths: [child.yml]}\nrun-child:\n  stage: child\n  variables: {SERVICE: api}\n  trigger:\n    include:\n      - artifact: child.yml\n        job: generate\n    strategy: depend\n";
    let p = read(src);
    let t = p.job("run-child").expect("trigger job");
    let g = t.generated_child.as_ref().expect("a generated child");
    assert_eq!(
        (g.job.as_str(), g.artifact.as_str(), g.depend),
        ("generate", "child.yml", true)
    );
    assert!(g.variables.iter().any(|(k, v)| k == "SERVICE" && v == "api"));
    assert_eq!(deps(&p, "run-child"), vec!["generate"]);
    // When the generator has passed, the file is read as a child pipeline.
    let child = "a:\n  script: [echo $SERVICE]\n  rules:\n    - if: $CI_PIPELINE_SOURCE == \"parent_pipeline\"\nb:\n  stage: deploy\n  script: [x]\n";
    let grown = with_generated_child(&p, "run-child", child.to_string(), &opts(&[])).expect("valid child");
    assert_eq!(deps(&grown, "run-child/a"), vec!["generate"]);
    assert_eq!(deps(&grown, "run-child/b"), vec!["run-child/a"]);
    assert_eq!(
        deps(&grown, "run-child"),
        vec!["run-child/b"],
        "strategy: depend waits for the child"
    );
    assert!(
        grown
            .job("run-child")
            .is_some_and(|j| j.generated_child.is_none() && j.mirrors_upstream)
    );
    let a = grown.job("run-child/a").expect("child job");
    assert!(a.environment.iter().any(|v| v.name == "SERVICE" && v.value == "api"));
    assert!(grown.stages.iter().any(|s| s == "run-child/test"), "{:?}", grown.stages);
    // A broken file is the trigger job's failure, naming the file and line.
    let e = with_generated_child(&p, "run-child", "a:\n  scrip: [x]\n".into(), &opts(&[])).expect_err("invalid");
    assert!(e.to_string().contains("child.yml (artifact of generate):2:3"), "{e}");
    let failed = failing_trigger(&p, "run-child", &e.to_string());
    let script = &failed.job("run-child").expect("job").steps[0].script;
    assert_eq!(script.last().map(String::as_str), Some("exit 1"));
    // The generator must run first.
    let e = errors(
        "stages: [gen, child]\nrun-child:\n  stage: gen\n  trigger:\n    include: [{artifact: child.yml, job: generate}]\ngenerate:\n  stage: child\n  script: [x]\n",
    );
    assert!(
        e.iter()
            .any(|(l, _, m)| *l == 5 && m.contains("`generate` must run before `run-child`")),
        "{e:?}"
    );
    let e = errors("t:\n  trigger:\n    include: [{artifact: child.yml}]\n");
    assert!(e.iter().any(|(_, _, m)| m.contains("needs `job:`")), "{e:?}");
}

#[test]
fn a_job_named_like_a_top_level_keyword_is_said_to_be_one() {
    let e = errors("stages: [test]\nservices:\n  stage: test\n  script: [x]\nlint:\n  script: [x]\n");
    assert_eq!(
        e.iter()
            .filter(|(_, _, m)| m.contains("`services` is a GitLab keyword at the top level"))
            .map(|(l, c, _)| (*l, *c))
            .collect::<Vec<_>>(),
        [(2, 1)],
        "once, at the key: {e:?}"
    );
    assert!(
        !e.iter().any(|(_, _, m)| m.contains("is a list, found a mapping")),
        "{e:?}"
    );
}
