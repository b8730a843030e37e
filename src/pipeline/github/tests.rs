//! Reading workflows: what is lowered, and every mistake with its place.

use std::path::Path;

use super::*;

fn load(yaml: &str) -> Result<Pipeline, Report> {
    let opts = LoadOptions {
        dialect: Some(super::super::Dialect::Github),
        ci_vars: vec![
            ("GITHUB_REF".into(), "refs/heads/main".into()),
            ("GITHUB_REF_NAME".into(), "main".into()),
            ("GITHUB_REPOSITORY".into(), "acme/shop".into()),
        ],
        ..Default::default()
    };
    super::super::parse_source(Path::new(".github/workflows/ci.yml"), yaml.to_string(), &opts).map(|(p, _)| p)
}

fn errors(yaml: &str) -> Vec<String> {
    match load(yaml) {
        Ok(_) => panic!("accepted:\n{yaml}"),
        Err(r) => r
            .items
            .iter()
            .filter(|d| d.is_error())
            .map(|d| format!("{}:{} {}", d.line, d.column, d.message))
            .collect(),
    }
}

#[test]
fn a_workflow_is_found_by_its_place_or_its_keys() {
    use super::super::Dialect;
    assert_eq!(
        Dialect::of(Path::new(".github/workflows/x.yml"), "jobs: {}"),
        Dialect::Github
    );
    assert_eq!(
        Dialect::of(Path::new("ci.yml"), "on: push\njobs:\n  a:\n    runs-on: x\n"),
        Dialect::Github
    );
    assert_eq!(
        Dialect::of(Path::new("p.yml"), "name: x\njobs:\n  a: {}\n"),
        Dialect::Native
    );
}

#[test]
fn jobs_steps_and_env_are_lowered() {
    let p = load(
        r#"
name: CI
on: push
env:
  LEVEL: workflow
  DOLLAR: $HOME
jobs:
  build:
    runs-on: ubuntu-latest
    env:
      LEVEL: job
    steps:
      - uses: actions/checkout@v4
      - name: Compile ${{ github.ref_name }}
        run: |
          echo "${{ github.repository }} on ${{ runner.os }}"
          echo "$LEVEL ${{ env.LEVEL }}"
        shell: bash
      - run: make
        working-directory: src
        env:
          LEVEL: step
  test:
    needs: build
    runs-on: [self-hosted, linux]
    timeout-minutes: 5
    continue-on-error: true
    steps:
      - run: python t.py
        shell: python
"#,
    )
    .expect("valid");
    assert_eq!(p.name, "CI");
    assert!(p.git_checkout, "checkout: the workspace is a git checkout");
    let build = p.job("build").expect("build");
    assert_eq!(build.steps.len(), 2, "checkout is the workspace itself");
    assert_eq!(build.steps[0].name, "Compile main");
    assert_eq!(
        build.steps[0].script,
        ["echo \"acme/shop on Linux\"", "echo \"$LEVEL ${{ env.LEVEL }}\""]
    );
    assert_eq!(
        build.steps[0].shell.as_deref(),
        Some(&["bash", "--noprofile", "--norc", "-eo", "pipefail", "{0}"].map(String::from)[..])
    );
    assert_eq!(build.steps[1].name, "Run make");
    assert_eq!(
        build.steps[1].shell.as_deref(),
        Some(&["bash", "-e", "{0}"].map(String::from)[..])
    );
    assert_eq!(build.steps[1].working_directory.as_deref(), Some("src"));
    // The workflow's env is each job's (a called workflow's jobs have theirs).
    assert!(p.global_env.is_empty());
    let dollar = build.environment.iter().find(|v| v.name == "DOLLAR").expect("DOLLAR");
    assert_eq!(dollar.value, "$$HOME", "GitHub does not expand `$` in env values");
    let test = p.job("test").expect("test");
    assert_eq!(test.depends_on, ["build"]);
    assert!(test.allow_failure);
    assert_eq!(test.timeout, Duration::from_secs(300));
    assert_eq!(
        test.steps[0].shell.as_deref(),
        Some(&["python", "{0}"].map(String::from)[..])
    );
    assert!(test.facts.contains(&("runs-on".into(), "self-hosted, linux".into())));
}

#[test]
fn a_matrix_makes_named_jobs_and_needs_wait_for_all_of_them() {
    let p = load(
        r#"
on: push
jobs:
  test:
    runs-on: ubuntu-latest
    strategy:
      matrix:
        os: [ubuntu, debian]
        node: [18, 20]
        exclude:
          - os: debian
            node: 18
    steps:
      - run: echo ${{ matrix.os }}-${{ matrix.node }} ${{ strategy.job-index }}/${{ strategy.job-total }}
  report:
    needs: [test]
    runs-on: ubuntu-latest
    steps:
      - run: echo done
"#,
    )
    .expect("valid");
    let names: Vec<&str> = p.jobs.iter().map(|j| j.name.as_str()).collect();
    assert_eq!(
        names,
        ["test (ubuntu, 18)", "test (ubuntu, 20)", "test (debian, 20)", "report"]
    );
    assert_eq!(p.jobs[2].steps[0].script, ["echo debian-20 2/3"]);
    assert!(
        p.jobs[..3].iter().all(|j| j.fail_fast_group.as_deref() == Some("test")),
        "fail-fast is GitHub's default for a matrix"
    );
    assert_eq!(p.job("report").expect("report").fail_fast_group, None);
    assert_eq!(p.job("report").expect("report").depends_on.len(), 3);
}

#[test]
fn if_decides_what_runs_when_it_can_be_decided_now() {
    let p = load(
        r#"
on: push
jobs:
  deploy:
    if: github.ref == 'refs/heads/MAIN'
    runs-on: ubuntu-latest
    steps:
      - run: echo deploy
      - if: ${{ github.ref_name != 'main' }}
        run: echo never
  docs:
    if: startsWith(github.ref, 'refs/tags/')
    runs-on: ubuntu-latest
    steps:
      - run: echo docs
"#,
    )
    .expect("valid");
    let deploy = p.job("deploy").expect("deploy");
    assert!(deploy.conditional.is_none(), "comparisons ignore case: it runs");
    assert_eq!(deploy.steps.len(), 2);
    assert!(deploy.steps[0].condition.is_none());
    assert_eq!(
        deploy.steps[1].condition.as_ref().map(|c| c.expr.clone()),
        Some(Expr::Lit(Json::Bool(false))),
        "the step whose if is false stays, to be skipped"
    );
    let docs = p.job("docs").expect("docs");
    assert_eq!(
        docs.conditional.as_ref().map(|c| c.expr.clone()),
        Some(Expr::Lit(Json::Bool(false)))
    );
}

#[test]
fn every_mistake_is_reported_with_its_place() {
    let errs = errors(
        r#"on: pushh
jobs:
  build:
    runs-onn: ubuntu-latest
    steps:
      - run: echo ${{ matrix.os == }}
  test:
    needs: [biuld]
    runs-on: x
    steps:
      - name: nothing
      - run: a
        uses: b
      - run: x
        shell: fish
        timeout-minutes: -1
"#,
    );
    let want = [
        "1:5 invalid on: `pushh` is not an event GitHub knows",
        "3:3 job `build` is missing runs-on",
        "4:5 unknown key `runs-onn` in job `build`",
        "8:13 `needs` names unknown job `biuld`",
        "11:9 a step needs run or uses",
        "13:9 a step has both run and uses",
        "15:16 invalid shell: `fish`",
        "16:26 invalid timeout: give a number of minutes above 0",
    ];
    for w in want {
        assert!(errs.iter().any(|e| e == w), "missing `{w}` in {errs:#?}");
    }
}

#[test]
fn what_is_not_evaluated_yet_is_an_error_that_names_it() {
    let errs = errors(
        "on: push\njobs:\n  a:\n    runs-on: x\n    steps:\n      - run: echo\n        timeout-minutes: ${{ hashFiles('x') }}\n      - uses: ./local\n",
    );
    assert!(
        errs.iter()
            .any(|e| e.starts_with("7:30 trackside does not evaluate `hashFiles()` here yet")),
        "{errs:?}"
    );
    assert!(
        errs.iter().any(|e| e.contains("missing action: no action.yml in")),
        "{errs:?}"
    );
    // A local Docker action without its image: said where.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("local")).unwrap();
    std::fs::write(dir.path().join("local/action.yml"), "runs: {using: docker}\n").unwrap();
    let opts = LoadOptions {
        dialect: Some(super::super::Dialect::Github),
        project_dir: Some(dir.path().to_path_buf()),
        ..Default::default()
    };
    let report = super::super::parse_source(
        Path::new("ci.yml"),
        "on: push\njobs:\n  a:\n    runs-on: x\n    steps:\n      - uses: ./local\n".into(),
        &opts,
    )
    .expect_err("refused");
    assert!(
        report.items.iter().any(|d| d.message.contains("missing `runs.image`")),
        "{:?}",
        report.items
    );
    // A matrix over 256 jobs, GitHub's limit.
    let big: Vec<String> = (0..17).map(|i| i.to_string()).collect();
    let yaml = format!(
        "on: push\njobs:\n  a:\n    runs-on: x\n    strategy:\n      matrix:\n        a: [{0}]\n        b: [{0}]\n    steps:\n      - run: x\n",
        big.join(", ")
    );
    assert!(
        errors(&yaml)
            .iter()
            .any(|e| e.starts_with("6:7 the matrix expands to more than 256 jobs"))
    );
}

/// A repository with `files` (path, text), its workflow read.
fn load_repo(files: &[(&str, &str)]) -> Result<Pipeline, Report> {
    let dir = tempfile::tempdir().expect("tempdir");
    for (path, text) in files {
        let p = dir.path().join(path);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, text).expect("write");
    }
    let opts = LoadOptions {
        dialect: Some(super::super::Dialect::Github),
        ..Default::default()
    };
    let file = dir.path().join(".github/workflows/ci.yml");
    let text = std::fs::read_to_string(&file).expect("workflow");
    super::super::parse_source(&file, text, &opts).map(|(p, _)| p)
}

/// Errors as `file:line:col message` (`file` the workflow's, or an
/// included action's path).
fn repo_errors(files: &[(&str, &str)]) -> Vec<String> {
    match load_repo(files) {
        Ok(_) => panic!("accepted: {files:?}"),
        Err(r) => r
            .items
            .iter()
            .filter(|d| d.is_error())
            .map(|d| {
                let file = match usize::from(d.file) {
                    0 => "ci.yml".to_string(),
                    n => r.includes[n - 1].0.display().to_string(),
                };
                format!("{file}:{}:{} {}", d.line, d.column, d.message)
            })
            .collect(),
    }
}

const CALLER: &str = "on: push\njobs:\n  build:\n    runs-on: x\n    steps:\n      - id: s\n        uses: ./.github/actions/a\n        with:\n          who: ${{ github.ref_name }}\n          later: ${{ steps.x.outputs.y }}\n";

#[test]
fn composite_actions_join_the_job_steps_with_their_calls() {
    let action = "name: A\ninputs:\n  who: {required: true}\n  later: {}\n  mode: {default: fast}\noutputs:\n  out:\n    value: ${{ steps.inner.outputs.v }}\nruns:\n  using: composite\n  steps:\n    - id: inner\n      shell: bash\n      run: echo \"${{ inputs.who }} ${{ github.ref_name }}\"\n    - uses: ./.github/actions/b\n      with: {n: '${{ inputs.mode }}'}\n";
    let nested = "name: B\ninputs:\n  n: {}\nruns:\n  using: composite\n  steps:\n    - shell: sh\n      if: inputs.n == 'fast'\n      run: echo ${{ inputs.n }}\n";
    let p = load_repo(&[
        (".github/workflows/ci.yml", CALLER),
        (".github/actions/a/action.yml", action),
        (".github/actions/b/action.yml", nested),
    ])
    .unwrap_or_else(|r| panic!("{}", r.render(false)));
    let job = &p.jobs[0];
    assert_eq!(job.steps.len(), 2);
    assert_eq!(job.actions.len(), 2);
    let (a, b) = (&job.actions[0], &job.actions[1]);
    assert_eq!((a.parent, b.parent), (None, Some(0)));
    assert_eq!(a.id.as_deref(), Some("s"));
    // What is known now is evaluated; what the run knows waits.
    assert_eq!(
        a.inputs,
        [
            ("who".to_string(), "main".to_string()),
            ("later".to_string(), "${{ steps.x.outputs.y }}".to_string()),
            ("mode".to_string(), "fast".to_string()),
        ]
    );
    assert_eq!(
        a.outputs,
        [("out".to_string(), "${{ steps.inner.outputs.v }}".to_string())]
    );
    assert_eq!(job.steps[0].action, Some(0));
    assert_eq!(job.steps[0].script, ["echo \"${{ inputs.who }} main\""]);
    assert!(
        job.steps[0]
            .environment
            .iter()
            .any(|e| e.name == "GITHUB_ACTION_PATH" && e.value == "${CI_PROJECT_DIR}/.github/actions/a")
    );
    assert_eq!(job.steps[1].action, Some(1));
    assert!(
        job.steps[1].condition.is_some(),
        "inputs are the run's inside an action"
    );
}

#[test]
fn composite_action_mistakes_point_into_action_yml() {
    let errs = repo_errors(&[
        (".github/workflows/ci.yml", CALLER),
        (
            ".github/actions/a/action.yml",
            "name: A\ninputs:\n  who: {required: true}\n  extra: {required: true}\nrunz: {}\nruns:\n  using: composite\n  steps:\n    - run: echo hi\n    - shell: bash\n      timeout-minutes: 3\n      run: echo ${{ inputs.who }\n",
        ),
    ]);
    assert_eq!(
        errs,
        [
            "ci.yml:7:15 input `extra` of `./.github/actions/a` is required and not given",
            ".github/actions/a/action.yml:5:1 unknown key `runz` in an action's metadata (action.yml)",
            ".github/actions/a/action.yml:9:12 a composite action's `run` step needs `shell:`",
            ".github/actions/a/action.yml:11:7 unknown key `timeout-minutes` in a step",
            ".github/actions/a/action.yml:12:20 invalid expression: unclosed `${{`",
        ],
        "{errs:#?}"
    );
}

#[test]
fn actions_that_call_themselves_and_other_runtimes_are_refused() {
    let looping = "name: A\nruns:\n  using: composite\n  steps:\n    - uses: ./.github/actions/a\n";
    let errs = repo_errors(&[
        (
            ".github/workflows/ci.yml",
            "on: push\njobs:\n  build:\n    runs-on: x\n    steps:\n      - uses: ./.github/actions/a\n      - uses: ./.github/actions/js\n      - uses: ./../outside\n",
        ),
        (".github/actions/a/action.yml", looping),
        (
            ".github/actions/js/action.yml",
            "name: J\nruns:\n  using: docker\n  image: ../Dockerfile\n",
        ),
    ]);
    assert!(
        errs.iter()
            .any(|e| e.contains("composite actions nest more than 10 deep")),
        "{errs:#?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.starts_with(".github/actions/js/action.yml:4:10 `../Dockerfile` leaves the action's folder")),
        "{errs:#?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.starts_with("ci.yml:8:15 local action `./../outside` leaves the repository")),
        "{errs:#?}"
    );
}

#[test]
fn what_the_run_evaluates_keeps_what_is_known_folded_in() {
    let p = load(
        "on: push\njobs:\n  a:\n    runs-on: x\n    steps:\n      - id: s\n        run: echo\n      - run: echo ${{ format('{0}-{1}', github.repository, steps.s.outputs.x) }} ${{ hashFiles('*.lock') }} ${{ github.workspace }}\n",
    )
    .unwrap_or_else(|r| panic!("{}", r.render(false)));
    assert_eq!(
        p.jobs[0].steps[1].script,
        [
            "echo ${{ format('{0}-{1}', 'acme/shop', steps.s.outputs.x) }} ${{ hashFiles('*.lock') }} ${{ github.workspace }}"
        ]
    );
    assert_eq!(
        p.jobs[0]
            .github
            .as_deref()
            .and_then(|g| g.get("repository"))
            .and_then(|r| r.as_str()),
        Some("acme/shop")
    );
}

#[test]
fn cache_and_artifact_actions_are_built_in_with_post_steps_last_first() {
    use crate::pipeline::model::Builtin;
    let p = load(
        "on: push\njobs:\n  a:\n    runs-on: x\n    steps:\n      - id: c1\n        uses: actions/cache@v4\n        with:\n          path: |\n            .deps\n            build/\n          key: k-${{ hashFiles('deps.txt') }}\n          restore-keys: k-\n      - uses: actions/cache/restore@v4\n        with: {path: x, key: r}\n      - uses: actions/cache@v3\n        with: {path: y, key: second}\n      - uses: actions/upload-artifact@v4\n        with: {name: dist, path: dist/}\n      - uses: actions/download-artifact@v4\n",
    )
    .unwrap_or_else(|r| panic!("{}", r.render(false)));
    let steps = &p.jobs[0].steps;
    let names: Vec<&str> = steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "Run actions/cache@v4",
            "Run actions/cache/restore@v4",
            "Run actions/cache@v3",
            "Run actions/upload-artifact@v4",
            "Run actions/download-artifact@v4",
            "Post Run actions/cache@v3",
            "Post Run actions/cache@v4",
        ]
    );
    assert_eq!(
        steps[0].builtin.as_deref(),
        Some(&Builtin::CacheRestore {
            key: "k-${{ hashFiles('deps.txt') }}".into(),
            restore_keys: vec!["k-".into()],
            paths: vec![".deps".into(), "build/".into()],
            fail_on_miss: false,
            lookup_only: false,
            save: true,
        })
    );
    assert!(matches!(
        steps[5].builtin.as_deref(),
        Some(Builtin::CacheSave { restore: Some(2), .. })
    ));
    assert!(matches!(
        steps[6].builtin.as_deref(),
        Some(Builtin::CacheSave { restore: Some(0), .. })
    ));
    assert_eq!(
        steps[4].builtin.as_deref(),
        Some(&Builtin::Download {
            name: None,
            path: String::new()
        })
    );
    let errs = errors(
        "on: push\njobs:\n  a:\n    runs-on: x\n    steps:\n      - uses: actions/cache@v4\n        with: {path: x}\n      - uses: actions/upload-artifact@v4\n        with: {path: x, if-no-files-found: maybe}\n",
    );
    assert_eq!(
        errs,
        [
            "6:15 input `key` of `actions/cache` is required and not given",
            "9:44 `if-no-files-found: maybe` is not one of warn, error, ignore",
        ]
    );
}

const CALLED: &str = "on:\n  workflow_call:\n    inputs:\n      target: {type: string, required: true}\n      debug: {type: boolean}\n      n: {type: number, default: 3}\n    secrets:\n      token: {required: true}\n    outputs:\n      image: {value: '${{ jobs.build.outputs.image }}'}\nenv:\n  OWN: called\njobs:\n  build:\n    runs-on: x\n    outputs: {image: '${{ steps.s.outputs.image }}'}\n    steps: [{id: s, run: 'echo ${{ inputs.target }} ${{ inputs.debug }} ${{ inputs.n }}'}]\n  after:\n    needs: build\n    runs-on: x\n    steps: [{run: 'true'}]\n";

#[test]
fn a_called_workflow_joins_the_run_as_caller_slash_job() {
    let p = load_repo(&[
        (
            ".github/workflows/ci.yml",
            "on: push\nenv:\n  CALLER: yes\njobs:\n  setup:\n    runs-on: x\n    steps: [{run: 'true'}]\n  call:\n    needs: setup\n    if: needs.setup.result == 'success'\n    uses: ./.github/workflows/called.yml\n    with: {target: linux}\n    secrets: {token: '${{ secrets.TOKEN }}'}\n  use:\n    needs: call\n    runs-on: x\n    steps: [{run: 'echo ${{ needs.call.outputs.image }}'}]\n",
        ),
        (".github/workflows/called.yml", CALLED),
    ])
    .unwrap_or_else(|r| panic!("{}", r.render(false)));
    let names: Vec<&str> = p.jobs.iter().map(|j| j.name.as_str()).collect();
    assert_eq!(names, ["setup", "call / build", "call / after", "use"]);
    let build = &p.jobs[1];
    assert_eq!(build.depends_on, ["setup"]);
    assert_eq!(build.steps[0].script, ["echo linux false 3"]);
    assert_eq!(build.call.as_deref(), Some("call"));
    assert_eq!(build.call_outputs, [("image".to_string(), "image".to_string())]);
    assert_eq!(
        build.secret_names,
        Some(vec![("token".to_string(), "TOKEN".to_string())])
    );
    assert!(build.conditional.is_some(), "the caller's if is the root job's");
    assert!(build.environment.iter().any(|e| e.name == "OWN"));
    assert!(
        !build.environment.iter().any(|e| e.name == "CALLER"),
        "the caller's env stays the caller's"
    );
    let after = &p.jobs[2];
    assert_eq!(after.depends_on, ["call / build"]);
    assert!(after.conditional.is_none());
    assert_eq!(p.jobs[3].depends_on, ["call / build", "call / after"]);
}

#[test]
fn calling_a_workflow_wrongly_is_reported_at_the_call() {
    let errs = repo_errors(&[
        (
            ".github/workflows/ci.yml",
            "on: push\njobs:\n  a:\n    uses: ./.github/workflows/called.yml\n    runs-on: x\n    with: {debug: maybe, extra: 1}\n    secrets: {nope: '${{ secrets.X }}'}\n  b:\n    uses: octo/repo/.github/workflows/x.yml@v1\n  c:\n    uses: ./.github/workflows/missing.yml\n  d:\n    uses: ./.github/workflows/plain.yml\n",
        ),
        (".github/workflows/called.yml", CALLED),
        (
            ".github/workflows/plain.yml",
            "on: push\njobs:\n  x:\n    runs-on: x\n    steps: [{run: 'true'}]\n",
        ),
    ]);
    let want = [
        "ci.yml:5:5 a job that calls a reusable workflow cannot have `runs-on`",
        "ci.yml:7:15 `./.github/workflows/called.yml` declares no secret `nope`",
        "ci.yml:4:11 secret `token` of `./.github/workflows/called.yml` is required and not given",
        "ci.yml:6:19 `maybe` is not a boolean",
        "ci.yml:6:26 `./.github/workflows/called.yml` declares no input `extra`",
        "ci.yml:4:11 input `target` of `./.github/workflows/called.yml` is required and not given",
        "ci.yml:9:11 trackside does not read reusable workflows of other repositories here: `octo/repo/.github/workflows/x.yml@v1`",
    ];
    for w in want {
        assert!(errs.iter().any(|e| e == w), "missing {w}\n{errs:#?}");
    }
    assert!(
        errs.iter().any(|e| e.starts_with("ci.yml:11:11 missing workflow: no ")),
        "{errs:#?}"
    );
    assert!(
        errs.iter()
            .any(|e| e
                == "ci.yml:13:11 `./.github/workflows/plain.yml` cannot be called: its `on:` has no `workflow_call`"),
        "{errs:#?}"
    );
}

#[test]
fn javascript_actions_run_on_node_with_inputs_and_post_steps_last_first() {
    let action = "name: J\ninputs:\n  who-to-greet: {required: true}\n  greeting: {default: Hello}\nruns:\n  using: node20\n  main: index.js\n  post: cleanup.js\n";
    let p = load_repo(&[
        (
            ".github/workflows/ci.yml",
            "on: push\njobs:\n  a:\n    runs-on: x\n    steps:\n      - id: one\n        name: Greet Mona\n        uses: ./.github/actions/js\n        with:\n          who-to-greet: Mona\n      - uses: ./.github/actions/js\n        with: {who-to-greet: Octocat, greeting: Hi}\n      - run: echo last\n",
        ),
        (".github/actions/js/action.yml", action),
    ])
    .unwrap_or_else(|r| panic!("{}", r.render(false)));
    let job = &p.jobs[0];
    let names: Vec<&str> = job.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "Greet Mona",
            "Run ./.github/actions/js",
            "Run echo last",
            "Post Run ./.github/actions/js",
            "Post Greet Mona"
        ]
    );
    assert_eq!(
        job.actions[0].inputs,
        [
            ("who-to-greet".to_string(), "Mona".to_string()),
            ("greeting".to_string(), "Hello".to_string())
        ]
    );
    assert_eq!(job.actions[0].outputs_of.as_deref(), Some("__action"));
    assert!(job.steps[0].inputs_env);
    assert_eq!(
        job.steps[0].shell.as_deref(),
        Some(&["node".to_string(), "{0}".to_string()][..])
    );
    let post = &job.steps[4];
    assert_eq!(job.actions[post.action.expect("a call")].state_from, Some(0));
    assert_eq!(post.condition.as_ref().map(|c| c.source.as_str()), Some("always()"));
}

#[test]
fn a_workflows_folder_runs_every_workflow_the_event_starts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, text: &str| {
        let p = dir.path().join(".github/workflows").join(name);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, text).expect("write");
    };
    write(
        "ci.yml",
        "name: CI\non: push\njobs:\n  build:\n    runs-on: x\n    steps: [{run: 'true'}]\n  test:\n    needs: build\n    runs-on: x\n    steps: [{run: 'true'}]\n",
    );
    write(
        "lint.yaml",
        "name: Lint\non: [push, pull_request]\njobs:\n  test:\n    runs-on: x\n    steps: [{run: 'true'}]\n",
    );
    write(
        "release.yml",
        "name: Release\non:\n  push:\n    tags: ['v*']\njobs:\n  publish:\n    runs-on: x\n    steps: [{run: 'true'}]\n",
    );
    write(
        "called.yml",
        "on: workflow_call\njobs:\n  x:\n    runs-on: x\n    steps: [{run: 'true'}]\n",
    );
    let opts = LoadOptions {
        dialect: Some(super::super::Dialect::Github),
        ..Default::default()
    };
    let folder = dir.path().join(".github/workflows");
    assert_eq!(super::super::Dialect::of_file(&folder), super::super::Dialect::Github);
    let (p, report) = super::super::load(&folder, &opts).unwrap_or_else(|r| panic!("{}", r.render(false)));
    let names: Vec<&str> = p.jobs.iter().map(|j| j.name.as_str()).collect();
    assert_eq!(names, ["CI / build", "CI / test", "Lint / test"]);
    assert_eq!(p.jobs[1].depends_on, ["CI / build"]);
    assert_eq!(p.name, "CI, Lint");
    // The release workflow's warning (not run for this push) is kept.
    assert!(
        report.warnings().any(|d| d.message.contains("does not run")),
        "{}",
        report.render(false)
    );
    // Two workflows of one name are told apart by their files.
    write(
        "lint2.yml",
        "name: Lint\non: push\njobs:\n  test:\n    runs-on: x\n    steps: [{run: 'true'}]\n",
    );
    let (p, _) = super::super::load(&folder, &opts).unwrap_or_else(|r| panic!("{}", r.render(false)));
    let names: Vec<&str> = p.jobs.iter().map(|j| j.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "CI / build",
            "CI / test",
            "Lint (lint.yaml) / test",
            "Lint (lint2.yml) / test"
        ]
    );
    // An error in any file is reported with its place.
    write("broken.yml", "on: push\njobs:\n  a:\n    runs-on: x\n    stepz: []\n");
    let err = super::super::load(&folder, &opts).expect_err("refused");
    assert!(err.file.ends_with("broken.yml"), "{}", err.file.display());
}

#[test]
fn a_matrix_from_needs_outputs_waits_for_them_then_takes_the_jobs_place() {
    let wf = "on: push\njobs:\n  plan:\n    runs-on: x\n    outputs: {m: '${{ steps.s.outputs.m }}'}\n    steps: [{id: s, run: 'true'}]\n  build:\n    needs: plan\n    runs-on: x\n    strategy:\n      matrix: ${{ fromJSON(needs.plan.outputs.m) }}\n    steps: [{run: 'echo ${{ matrix.os }}'}]\n  after:\n    needs: build\n    runs-on: x\n    steps: [{run: 'true'}]\n";
    let first = load(wf).unwrap_or_else(|r| panic!("{}", r.render(false)));
    let build = first.job("build").expect("build");
    assert!(build.matrix_later, "it waits for plan's outputs");
    let opts = LoadOptions {
        dialect: Some(super::super::Dialect::Github),
        matrix_needs: vec![(
            "build".into(),
            json!({"plan": {"result": "success", "outputs": {"m": "{\"os\": [\"linux\", \"mac\"]}"}}}),
        )],
        ..Default::default()
    };
    let (again, _) = super::super::parse_source(Path::new(".github/workflows/ci.yml"), wf.to_string(), &opts)
        .unwrap_or_else(|r| panic!("{}", r.render(false)));
    let grown = with_matrix(&first, "build", &again).expect("grown");
    let names: Vec<&str> = grown.jobs.iter().map(|j| j.name.as_str()).collect();
    assert_eq!(names, ["plan", "build (linux)", "build (mac)", "after"]);
    assert_eq!(grown.jobs[1].steps[0].script, ["echo linux"]);
    assert_eq!(grown.jobs[3].depends_on, ["build (linux)", "build (mac)"]);
    // What cannot be a matrix is an error of the read, with its place.
    let bad = LoadOptions {
        matrix_needs: vec![("build".into(), json!({"plan": {"outputs": {"m": "[1, 2]"}}}))],
        ..opts
    };
    let err = super::super::parse_source(Path::new(".github/workflows/ci.yml"), wf.to_string(), &bad)
        .expect_err("not a mapping");
    assert!(
        err.items
            .iter()
            .any(|d| d.message.contains("not a mapping") && d.line == 11),
        "{}",
        err.render(false)
    );
    let failing = failing_matrix(&first, "build", "not a mapping");
    assert!(!failing.job("build").expect("build").matrix_later);
}

#[test]
fn whole_numbers_read_as_github_shows_them() {
    assert_eq!(number(10.0), json!(10));
    assert_eq!(number(2.5), json!(2.5));
    assert_eq!(number(f64::INFINITY), Json::Null);
}

#[test]
fn a_matrix_jobs_runner_label_is_shown_evaluated() {
    let p = load("on: push\njobs:\n  t:\n    runs-on: ${{ matrix.os }}\n    strategy: {matrix: {os: [ubuntu-22.04, debian]}}\n    steps: [{run: 'true'}]\n")
        .unwrap_or_else(|r| panic!("{}", r.render(false)));
    let shown: Vec<&str> = p
        .jobs
        .iter()
        .filter_map(|j| j.facts.iter().find(|(k, _)| k == "runs-on"))
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(shown, ["ubuntu-22.04", "debian"]);
}

#[test]
fn path_filters_meet_the_files_the_push_changes() {
    let wf = "on:\n  push:\n    paths: ['src/**', '!src/**/*.md']\njobs:\n  a:\n    runs-on: x\n    steps: [{run: 'true'}]\n";
    let ignoring =
        "on:\n  push:\n    paths-ignore: ['docs/**']\njobs:\n  a:\n    runs-on: x\n    steps: [{run: 'true'}]\n";
    let read = |text: &str, files: Option<Vec<&str>>| {
        let opts = LoadOptions {
            dialect: Some(super::super::Dialect::Github),
            changed_files: super::super::ChangedFiles::known(
                files.map(|f| f.into_iter().map(str::to_string).collect()),
            ),
            ..Default::default()
        };
        let (p, report) = super::super::parse_source(Path::new(".github/workflows/ci.yml"), text.to_string(), &opts)
            .unwrap_or_else(|r| panic!("{}", r.render(false)));
        let warnings: Vec<String> = report.warnings().map(|d| d.message.clone()).collect();
        (p.jobs.len(), warnings)
    };
    assert_eq!(read(wf, Some(vec!["src/app.py", "README.md"])).0, 1);
    let (jobs, warnings) = read(wf, Some(vec!["src/README.md", "docs/x.md"]));
    assert_eq!(jobs, 0, "the only src file is taken back by `!`");
    assert!(warnings.iter().any(|w| w.contains("matches `paths`")), "{warnings:?}");
    assert_eq!(read(ignoring, Some(vec!["docs/a.md", "src/b.rs"])).0, 1);
    assert_eq!(read(ignoring, Some(vec!["docs/a.md"])).0, 0);
    assert_eq!(read(ignoring, Some(vec![])).0, 0, "no file changed: it does not run");
    // Nothing known of the changes: it runs, and says the filter was not checked.
    let (jobs, warnings) = read(wf, None);
    assert_eq!(jobs, 1);
    assert!(warnings.iter().any(|w| w.contains("not checked")), "{warnings:?}");
}

#[test]
fn a_cycle_is_named_with_the_workflows_own_key() {
    let report = load("on: push\njobs:\n  a:\n    needs: b\n    runs-on: x\n    steps: [{run: 'true'}]\n  b:\n    needs: [a]\n    runs-on: x\n    steps: [{run: 'true'}]\n")
        .expect_err("a cycle");
    let d = report
        .items
        .iter()
        .find(|d| d.message.starts_with("dependency cycle"))
        .expect("the cycle");
    assert_eq!(d.path, "jobs.b.needs[0]");
    assert!(d.hint.as_deref().is_some_and(|h| h.contains("jobs.b.needs")));
}

fn load_with(yaml: &str, change: impl FnOnce(&mut LoadOptions)) -> Result<(Pipeline, Report), Report> {
    let mut opts = LoadOptions {
        dialect: Some(super::super::Dialect::Github),
        ci_vars: vec![("GITHUB_REPOSITORY".into(), "acme/shop".into())],
        ..Default::default()
    };
    change(&mut opts);
    super::super::parse_source(Path::new(".github/workflows/ci.yml"), yaml.to_string(), &opts)
}

#[test]
fn a_job_container_takes_its_run_steps_and_its_settings() {
    let p = load(
        r#"
on: push
jobs:
  test:
    runs-on: ubuntu-latest
    strategy:
      matrix:
        node: [18, 20]
    container:
      image: node:${{ matrix.node }}
      env: {NODE_ENV: development}
      ports: [80]
      volumes: [my_docker_volume:/volume_mount]
      options: --cpus 1 --health-cmd "true"
      credentials: {username: me, password: pw}
    steps:
      - uses: actions/cache@v4
        with: {path: x, key: k}
      - run: npm test
      - run: make
        shell: bash
"#,
    )
    .unwrap();
    assert_eq!(p.jobs.len(), 2);
    let j = &p.jobs[0];
    assert!(j.container.job_container);
    assert_eq!(j.image(), Some("node:18"));
    assert_eq!(p.jobs[1].image(), Some("node:20"));
    assert_eq!(j.container.cpus, Some(1.0));
    let x = &j.container.extras;
    assert_eq!(x.env, vec![("NODE_ENV".to_string(), "development".to_string())]);
    assert_eq!(x.ports, vec!["80".to_string()]);
    assert_eq!(x.volumes, vec!["my_docker_volume:/volume_mount".to_string()]);
    assert_eq!(
        x.credentials,
        Some(crate::pipeline::model::Credentials("me".into(), "pw".into()))
    );
    assert!(!format!("{x:?}").contains("pw"), "Debug never shows the password");
    // trackside's own cache step stays on the host; run steps go in.
    let cache = j.steps.iter().find(|s| s.builtin.is_some()).unwrap();
    assert!(cache.image.is_none());
    let run = j.steps.iter().find(|s| s.name == "Run npm test").unwrap();
    assert_eq!(run.image.as_deref(), Some("node:18"));
    // GitHub's default shell falls back to sh in a container without bash;
    // `shell: bash` is asked for and stays bash.
    assert_eq!(run.shell.as_ref().unwrap()[0], "sh");
    let make = j.steps.iter().find(|s| s.name == "Run make").unwrap();
    assert_eq!(make.shell.as_ref().unwrap()[0], "bash");
}

#[test]
fn services_are_read_with_their_ports_and_health_check() {
    let p = load(
        r#"
on: push
jobs:
  test:
    runs-on: ubuntu-latest
    services:
      postgres:
        image: postgres:16
        env: {POSTGRES_PASSWORD: postgres}
        ports: ['5432:5432']
        options: >-
          --health-cmd pg_isready --health-interval 10s
          --health-timeout 5s --health-retries 5
      redis: redis:7
      skipped:
        image: ''
    steps:
      - run: psql
"#,
    )
    .unwrap();
    let j = &p.jobs[0];
    assert!(!j.container.job_container, "the job itself runs on the host");
    let names: Vec<&str> = j.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["postgres", "redis"], "an empty image starts nothing");
    let pg = &j.services[0];
    assert_eq!(pg.image, "postgres:16");
    assert_eq!(pg.environment[0].name, "POSTGRES_PASSWORD");
    assert_eq!(pg.options.extras.ports, vec!["5432:5432".to_string()]);
    let h = pg.options.extras.health.as_ref().unwrap();
    assert_eq!(h.command, "pg_isready");
    assert_eq!(h.retries, Some(5));
    assert!(j.steps[0].image.is_none());
}

#[test]
fn container_mistakes_are_reported_where_they_are() {
    let e = errors(
        "on: push\njobs:\n  a:\n    runs-on: x\n    container:\n      imag: node\n    steps:\n      - run: x\n  b:\n    runs-on: x\n    container: {image: node, options: --network host}\n    steps:\n      - run: x\n  c:\n    runs-on: x\n    services:\n      db:\n        image: pg\n        ports: [http]\n      'bad id!': redis\n    steps:\n      - run: x\n",
    );
    assert!(e.iter().any(|m| m.starts_with("6:7 unknown key `imag`")), "{e:?}");
    assert!(
        e.iter().any(|m| m.starts_with("6:7") && m.contains("has no `image`")),
        "{e:?}"
    );
    assert!(
        e.iter()
            .any(|m| m.starts_with("11:39") && m.contains("`--network` is not supported")),
        "{e:?}"
    );
    assert!(
        e.iter()
            .any(|m| m.starts_with("19:17") && m.contains("invalid ports entry `http`")),
        "{e:?}"
    );
    assert!(
        e.iter()
            .any(|m| m.starts_with("20:7") && m.contains("invalid service id")),
        "{e:?}"
    );
}

#[test]
fn credentials_keep_secrets_for_the_run_and_say_what_is_missing() {
    let p = load(
        "on: push\njobs:\n  a:\n    runs-on: x\n    container:\n      image: ghcr.io/me/app\n      credentials:\n        username: ${{ github.actor }}\n        password: ${{ secrets.GHCR_TOKEN }}\n    services:\n      db:\n        image: r.io/db\n        credentials: {username: u, password: '${{ secrets.DB }}'}\n    steps:\n      - run: x\n",
    )
    .unwrap();
    let j = &p.jobs[0];
    let crate::pipeline::model::Credentials(user, password) = j.container.extras.credentials.clone().unwrap();
    assert!(
        !user.contains("${{"),
        "github.actor is known when the plan is made: {user}"
    );
    assert_eq!(
        password, "${{ secrets.GHCR_TOKEN }}",
        "secrets are read as the job starts"
    );
    assert_eq!(
        j.services[0].options.extras.credentials,
        Some(crate::pipeline::model::Credentials(
            "u".into(),
            "${{ secrets.DB }}".into()
        ))
    );
    let e = errors(
        "on: push\njobs:\n  a:\n    runs-on: x\n    container:\n      image: node\n      credentials: {username: me}\n    steps:\n      - run: x\n  b:\n    runs-on: x\n    container:\n      image: node\n      credentials: {user: me, password: p}\n    steps:\n      - run: x\n",
    );
    assert!(
        e.iter()
            .any(|m| m.starts_with("7:21") && m.contains("`credentials` has no `password`")),
        "{e:?}"
    );
    assert!(e.iter().any(|m| m.starts_with("14:21 unknown key `user`")), "{e:?}");
}

#[test]
fn platforms_put_a_labels_jobs_in_a_container_and_shell_keeps_them_on_the_host() {
    let yaml = "on: push\njobs:\n  a:\n    runs-on: [self-hosted, ubuntu-latest]\n    steps:\n      - run: x\n  b:\n    runs-on: macos-latest\n    steps:\n      - run: x\n  c:\n    runs-on: ubuntu-latest\n    container: node:20\n    services: {db: pg}\n    steps:\n      - run: x\n";
    let (p, report) = load_with(yaml, |o| {
        o.platforms = vec![("ubuntu-latest".into(), "catthehacker/ubuntu:act-latest".into())]
    })
    .unwrap();
    assert_eq!(p.jobs[0].image(), Some("catthehacker/ubuntu:act-latest"));
    assert!(p.jobs[0].container.job_container);
    assert_eq!(p.jobs[1].image(), None);
    assert_eq!(p.jobs[2].image(), Some("node:20"), "a job's own container wins");
    let notes: Vec<&str> = report.items.iter().map(|d| d.message.as_str()).collect();
    assert!(notes.iter().any(|m| m.contains("runs-on `macos-latest`")), "{notes:?}");
    assert!(!notes.iter().any(|m| m.contains("runs-on `self-hosted")), "{notes:?}");
    let (p, report) = load_with(yaml, |o| o.executor = crate::pipeline::ExecutorChoice::Shell).unwrap();
    assert_eq!(p.jobs[2].image(), None);
    assert!(p.jobs[2].services.is_empty());
    assert!(
        report
            .items
            .iter()
            .any(|d| d.message.contains("runs on this host, without its `services`"))
    );
}

#[test]
fn docker_actions_are_read_with_their_image_args_and_post_entrypoint() {
    let p = load_repo(&[
        (
            ".github/workflows/ci.yml",
            "on: push\njobs:\n  a:\n    runs-on: x\n    steps:\n      - uses: ./.github/actions/d\n        with: {who: Mona}\n      - uses: docker://alpine:3.20\n        with: {args: echo hi, entrypoint: /bin/sh, extra: x}\n",
        ),
        (
            ".github/actions/d/action.yml",
            "name: D\ninputs:\n  who: {default: world}\nruns:\n  using: docker\n  image: build/Dockerfile\n  args: ['${{ inputs.who }}', literal]\n  entrypoint: /entry.sh\n  post-entrypoint: /post.sh\n  post-if: success()\n",
        ),
        (".github/actions/d/build/Dockerfile", "FROM scratch\n"),
    ])
    .unwrap_or_else(|r| panic!("{}", r.render(false)));
    let steps = &p.jobs[0].steps;
    let d = steps[0].docker_action.as_ref().unwrap();
    assert_eq!(d.image, "");
    let build = d.build.as_ref().unwrap();
    assert_eq!(
        (build.dir.as_str(), build.dockerfile.as_str()),
        (".github/actions/d", "build/Dockerfile")
    );
    assert_eq!(d.args, ["${{ inputs.who }}", "literal"]);
    assert_eq!(d.entrypoint.as_deref(), Some("/entry.sh"));
    assert!(steps[0].inputs_env);
    let uri = steps[1].docker_action.as_ref().unwrap();
    assert_eq!(uri.image, "alpine:3.20");
    assert!(uri.split_args);
    // `args` and `entrypoint` travel as hidden inputs, read where the step is.
    assert_eq!(uri.args, ["${{ inputs.__args }}"]);
    let call = &p.jobs[0].actions[steps[1].action.unwrap()];
    let inputs: Vec<(&str, &str)> = call.inputs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(
        inputs,
        [("__args", "echo hi"), ("__entrypoint", "/bin/sh"), ("extra", "x")]
    );
    // The post step runs last, as its own call, when `post-if` says so.
    let post = steps.last().unwrap();
    assert_eq!(
        post.docker_action.as_ref().unwrap().entrypoint.as_deref(),
        Some("/post.sh")
    );
    assert_eq!(post.condition.as_ref().unwrap().source, "success()");
}

#[test]
fn a_reusable_workflow_of_another_repository_is_read_from_the_actions_folder() {
    let dir = tempfile::tempdir().expect("tempdir");
    let actions = dir.path().join("actions");
    let checkout = actions.join("octo/shared@v1");
    let write = |p: std::path::PathBuf, text: &str| {
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, text).expect("write");
    };
    // It calls a sibling of its own repository by `./`.
    write(
        checkout.join(".github/workflows/build.yml"),
        "on: {workflow_call: {inputs: {target: {type: string}}}}\njobs:\n  compile:\n    runs-on: x\n    steps: [{run: 'echo ${{ inputs.target }}'}]\n  more:\n    uses: ./.github/workflows/sibling.yml\n",
    );
    write(
        checkout.join(".github/workflows/sibling.yml"),
        "on: workflow_call\njobs:\n  s:\n    runs-on: x\n    steps: [{run: 'echo sibling'}]\n",
    );
    let repo = dir.path().join("repo");
    let caller = "on: push\njobs:\n  call:\n    uses: octo/shared/.github/workflows/build.yml@v1\n    with: {target: linux}\n  missing:\n    uses: octo/other/.github/workflows/x.yml@main\n";
    write(repo.join(".github/workflows/ci.yml"), caller);
    let opts = LoadOptions {
        dialect: Some(super::super::Dialect::Github),
        actions_dir: Some(actions.clone()),
        ..Default::default()
    };
    let file = repo.join(".github/workflows/ci.yml");
    let report = super::super::parse_source(&file, caller.to_string(), &opts).expect_err("one is missing");
    let errs: Vec<String> = report
        .items
        .iter()
        .filter(|d| d.is_error())
        .map(|d| d.message.clone())
        .collect();
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].starts_with("`octo/other/.github/workflows/x.yml@main`: octo/other@main is not in the actions folder"),
        "{errs:?}"
    );
    let caller =
        "on: push\njobs:\n  call:\n    uses: octo/shared/.github/workflows/build.yml@v1\n    with: {target: linux}\n";
    let (p, _) =
        super::super::parse_source(&file, caller.to_string(), &opts).unwrap_or_else(|r| panic!("{}", r.render(false)));
    let names: Vec<&str> = p.jobs.iter().map(|j| j.name.as_str()).collect();
    assert_eq!(names, ["call / compile", "call / more / s"]);
    assert_eq!(p.jobs[0].steps[0].script, ["echo linux"]);
}

#[test]
fn one_matrix_key_or_include_may_be_made_by_an_expression() {
    let (p, _) = load_with(
        r#"on: push
jobs:
  t:
    runs-on: x
    strategy:
      matrix:
        os: ${{ fromJSON('["linux", "mac"]') }}
        node: [18]
        include: '${{ fromJSON(''[{"os": "mac", "arm": true}]'') }}'
    steps:
      - run: echo ${{ matrix.os }} ${{ matrix.arm }}
"#,
        |_| {},
    )
    .unwrap_or_else(|r| panic!("{}", r.render(false)));
    let names: Vec<&str> = p.jobs.iter().map(|j| j.name.as_str()).collect();
    assert_eq!(names, ["t (linux, 18)", "t (mac, 18, true)"]);
    // Made from what the job needs: the matrix waits for it.
    let (p, _) = load_with(
        "on: push\njobs:\n  plan:\n    runs-on: x\n    steps: [{run: 'true'}]\n  t:\n    needs: plan\n    runs-on: x\n    strategy:\n      matrix:\n        os: ${{ fromJSON(needs.plan.outputs.os) }}\n        node: [18, 20]\n        exclude: [{os: mac, node: 18}]\n    steps:\n      - run: echo ${{ matrix.os }}\n",
        |_| {},
    )
    .unwrap_or_else(|r| panic!("{}", r.render(false)));
    assert!(p.jobs[1].matrix_later);
    let e = errors(
        "on: push\njobs:\n  t:\n    runs-on: x\n    strategy:\n      matrix:\n        os: ${{ fromJSON('\"linux\"') }}\n    steps:\n      - run: x\n",
    );
    assert!(
        e.iter()
            .any(|m| m.starts_with("7:13 invalid matrix: `os` must be a list")),
        "{e:?}"
    );
    let e = errors(
        "on: push\njobs:\n  t:\n    runs-on: x\n    strategy:\n      matrix:\n        os: ${{ secrets.X }}\n    steps:\n      - run: x\n",
    );
    assert!(e.iter().any(|m| m.contains("`secrets`")), "{e:?}");
}
