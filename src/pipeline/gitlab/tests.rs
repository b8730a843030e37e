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
    assert_eq!(job.steps[0].script, ["echo default-before", "own"]);
    assert_eq!(job.retry_count, 2);
    assert_eq!(job.timeout, Duration::from_secs(5400));
    assert_eq!(env(&p, "job", "A"), Some("base"));
    assert_eq!(env(&p, "job", "B"), Some("job"));
    let alone = p.job("alone").expect("alone");
    assert_eq!(alone.steps[0].script, ["x"], "before_script not inherited");
    assert_eq!(alone.retry_count, 0);
    assert_eq!(alone.timeout, Duration::from_secs(600));
}

#[test]
fn after_script_is_a_cleanup_step_and_scripts_nest() {
    let p = read(".setup: &setup [a, b]\njob:\n  script:\n    - *setup\n    - c\n  after_script: tidy\n");
    let job = p.job("job").expect("job");
    assert_eq!(job.steps[0].script, ["a", "b", "c"]);
    assert_eq!(job.steps[1].name, "after_script");
    assert!(job.steps[1].cleanup);
    assert_eq!(job.steps[1].script, ["tidy"]);
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
            "test 1/3",
            "test 2/3",
            "test 3/3"
        ]
    );
    assert_eq!(env(&p, "build: [mac, amd64]", "OS"), Some("mac"));
    assert_eq!(env(&p, "test 2/3", "CI_NODE_INDEX"), Some("2"));
    assert_eq!(env(&p, "test 2/3", "CI_NODE_TOTAL"), Some("3"));
    assert_eq!(
        deps(&p, "test 3/3"),
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
            .any(|(l, _, m)| *l == 1 && m.contains("`include` is not supported yet")),
        "{e:?}"
    );
    let (p, report) = parse_source(
        Path::new(".gitlab-ci.yml"),
        "a:\n  script: [x]\n  secrets: {X: {vault: a/b}}\n  release: {tag_name: v1}\nb:\n  trigger: {include: child.yml}\n".into(),
        &opts(&[]),
    )
    .expect("valid");
    assert!(p.job("b").is_none(), "a trigger job is left out");
    let warnings: Vec<String> = report.warnings().map(|d| d.message.clone()).collect();
    assert!(
        warnings.iter().any(|w| w.contains("`secrets` needs GitLab's server")),
        "{warnings:?}"
    );
    assert!(warnings.iter().any(|w| w.contains("trigger jobs")), "{warnings:?}");
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
fn except_drops_a_job_when_any_part_matches_and_unevaluated_changes_never_drop_one() {
    let src = "a:\n  script: [x]\n  except:\n    refs: [main]\n    variables: [$SKIP]\nb:\n  script: [x]\n  except:\n    changes: [docs/**]\nc:\n  script: [x]\n  only:\n    changes: [src/**]\n";
    let p = read_with(src, &opts(&[])).expect("valid");
    let names: Vec<&str> = p.jobs.iter().map(|j| j.name.as_str()).collect();
    assert_eq!(names, ["b", "c"], "on main, `except: refs` alone drops a");
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
fn what_is_not_supported_yet_says_so() {
    let (_, report) = parse_source(
        Path::new(".gitlab-ci.yml"),
        "default:\n  cache: {paths: [x]}\nservices: [postgres]\nb:\n  script: [x]\nc:\n  needs:\n    - job: b\n      parallel: {matrix: [{OS: linux}]}\n  script: [x]\n  rules:\n    - needs: [b]\n".into(),
        &opts(&[]),
    )
    .expect("valid");
    let warnings: Vec<String> = report.warnings().map(|d| d.message.clone()).collect();
    for w in [
        "`cache` is not supported yet",
        "`services` is not supported yet",
        "needs:parallel:matrix",
        "`rules:needs`",
    ] {
        assert!(warnings.iter().any(|x| x.contains(w)), "{w}: {warnings:?}");
    }
    let e = errors("spec:\n  inputs: {x: {}}\n");
    assert!(e.iter().any(|(l, _, m)| *l == 2 && m.contains("`spec:`")), "{e:?}");
}
