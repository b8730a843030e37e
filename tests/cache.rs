//! The result cache and directory caches, through the binary: every kind of
//! input change must miss, an unchanged re-run must hit every cached job,
//! and nothing may ever hit falsely.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};

struct Project {
    dir: tempfile::TempDir,
}

impl Project {
    fn new(pipeline: &str) -> Project {
        let p = Project {
            dir: tempfile::tempdir().expect("tempdir"),
        };
        p.write("p.yml", pipeline);
        p.write("src/main.c", "int main() { return 0; }\n");
        p.write("src/util.c", "int util;\n");
        p.write("data/seed.txt", "seed 1\n");
        p
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join("proj").join(rel)
    }

    fn write(&self, rel: &str, text: &str) {
        let p = self.path(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(p, text).expect("write");
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_trackside"));
        c.env("TRACKSIDE_STATE_DIR", self.state())
            .env_remove("TRACKSIDE_TEST_ENV")
            .stdin(Stdio::null());
        c
    }

    /// Runs the pipeline; returns, per job, whether it was served from the cache.
    fn run(&self, extra: &[&str], env: &[(&str, &str)]) -> BTreeMap<String, bool> {
        let file = self.path("p.yml");
        let mut c = self.cmd();
        c.args(["run", "--json", "--no-watch"]).arg(&file).args(extra);
        for (k, v) in env {
            c.env(k, v);
        }
        let out = c.output().expect("run trackside");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(0),
            "run failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut cached = BTreeMap::new();
        for line in stdout.lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            if v["type"] == "job_finished" {
                let job = v["job"].as_str().unwrap_or_default().to_string();
                cached.insert(job, v.get("cached").is_some_and(|k| k.is_string()));
            }
        }
        cached
    }

    fn trackside(&self, args: &[&str]) -> String {
        let out = self.cmd().args(args).output().expect("run trackside");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }
}

/// `upstream` turns data/ into an artifact; `build` is cached on src/** and
/// receives that artifact; it copies what it saw, so a false hit would be
/// visible in its output as well as in its status.
fn pipeline(script_line: &str, workdir: &str, image: &str) -> String {
    format!(
        r#"name: cache-mutations
jobs:
  upstream:
    artifacts: {{paths: [gen/]}}
    steps:
      - script: |
          mkdir -p gen
          cat data/seed.txt > gen/seed
  build:
    depends_on: [upstream]
    working_directory: {workdir}
    environment:
      LEVEL: "${{OPT_LEVEL}}"
    cache: {{inputs: ["src/**"]}}
    artifacts: {{paths: [out/]}}
    steps:
      - name: compile
        {image}
        script:
          - cd "$CI_PROJECT_DIR"
          - mkdir -p out
          - cat src/*.c gen/seed > out/all
          - {script_line}
"#
    )
}

fn base() -> String {
    pipeline("echo level $LEVEL", ".", "")
}

const VARS: [&str; 2] = ["--var", "OPT_LEVEL=2"];

fn all_hit(r: &BTreeMap<String, bool>) -> bool {
    r.get("build").copied().unwrap_or(false)
}

/// One mutation: set it up, run it, and the cached job must miss.
fn must_miss(what: &str, mutate: impl FnOnce(&Project) -> (Vec<String>, Vec<(String, String)>)) {
    let p = Project::new(&base());
    let first = p.run(&VARS, &[]);
    assert_eq!(first.get("build"), Some(&false), "{what}: first run cannot hit");
    let again = p.run(&VARS, &[]);
    assert!(all_hit(&again), "{what}: an unchanged re-run must hit: {again:?}");
    let (args, env) = mutate(&p);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let after = p.run(&args, &env);
    assert_eq!(after.get("build"), Some(&false), "{what}: the change must miss");
    let why = p.trackside(&["cache", "why", "last", "build"]);
    assert!(why.contains("MISS") && why.contains("change(s)"), "{what}: {why}");
    // The new result is stored: the same state again hits.
    let repeat = p.run(&args, &env);
    assert!(
        all_hit(&repeat),
        "{what}: the changed state, run twice, must hit the second time"
    );
}

fn vars() -> (Vec<String>, Vec<(String, String)>) {
    (VARS.iter().map(|s| s.to_string()).collect(), Vec::new())
}

#[test]
fn file_content_change_misses() {
    must_miss("file content", |p| {
        p.write("src/util.c", "int util = 1;\n");
        vars()
    });
}

#[test]
fn file_added_misses() {
    must_miss("file added", |p| {
        p.write("src/new.c", "int added;\n");
        vars()
    });
}

#[test]
fn file_removed_misses() {
    must_miss("file removed", |p| {
        std::fs::remove_file(p.path("src/util.c")).expect("remove");
        vars()
    });
}

#[test]
fn host_environment_change_misses() {
    must_miss("environment variable", |_| {
        let (mut args, _) = vars();
        args.extend(["--pass-env".to_string(), "TRACKSIDE_TEST_ENV".to_string()]);
        (args, vec![("TRACKSIDE_TEST_ENV".into(), "on".into())])
    });
}

#[test]
fn variable_change_misses() {
    must_miss("--var", |_| (vec!["--var".into(), "OPT_LEVEL=3".into()], Vec::new()));
}

#[test]
fn script_line_change_misses() {
    must_miss("script line", |p| {
        p.write("p.yml", &pipeline("echo level $LEVEL optimised", ".", ""));
        vars()
    });
}

#[test]
fn image_change_misses() {
    // Without the container executor the image is still part of the definition.
    must_miss("image", |p| {
        p.write("p.yml", &pipeline("echo level $LEVEL", ".", "image: alpine:3"));
        let (mut args, env) = vars();
        args.extend(["--executor".to_string(), "shell".to_string()]);
        (args, env)
    });
}

#[test]
fn upstream_artifact_change_misses() {
    must_miss("upstream artifact", |p| {
        p.write("data/seed.txt", "seed 2\n");
        vars()
    });
}

#[test]
fn working_directory_change_misses() {
    must_miss("working directory", |p| {
        let text = pipeline("echo level $LEVEL", "src", "");
        p.write("p.yml", &text);
        vars()
    });
}

#[test]
fn a_hit_restores_the_artifacts_and_log_and_no_cache_runs_anyway() {
    let p = Project::new(&base());
    p.run(&VARS, &[]);
    let hit = p.run(&VARS, &[]);
    assert!(all_hit(&hit));
    let log = p.trackside(&["logs", "last", "build"]);
    assert!(log.contains("level 2"), "the recorded log is replayed: {log}");
    let out = p.dir.path().join("out");
    let got = p.trackside(&[
        "artifacts",
        "get",
        "last",
        "build",
        "-o",
        out.to_str().unwrap_or_default(),
    ]);
    let all = std::fs::read_to_string(out.join("out/all")).unwrap_or_else(|e| panic!("{got}: {e}"));
    assert!(all.contains("int util;") && all.contains("seed 1"), "{all}");
    let forced = p.run(&["--var", "OPT_LEVEL=2", "--no-cache"], &[]);
    assert_eq!(forced.get("build"), Some(&false), "--no-cache must run the job");
    let why = p.trackside(&["cache", "why", "last", "build"]);
    assert!(why.contains("MISS") && why.contains("--no-cache"), "{why}");
}

#[test]
fn secrets_never_reach_the_index_and_do_not_change_the_key() {
    let p = Project::new(&base().replace("echo level $LEVEL", "echo token is set ${TOKEN:+yes}"));
    let secret = "s3cr3t-value-for-the-cache-test";
    let args = ["--var", "OPT_LEVEL=2", "--secret", "TOKEN"];
    p.run(&args, &[("TOKEN", secret)]);
    let second = p.run(&args, &[("TOKEN", "another-secret-value")]);
    assert!(all_hit(&second), "secret values are not part of the key (documented)");
    let needle = secret.as_bytes();
    let mut checked = 0;
    for name in ["index.sqlite", "index.sqlite-wal"] {
        if let Ok(bytes) = std::fs::read(p.state().join(name)) {
            checked += bytes.len();
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle),
                "the secret is in {name}"
            );
        }
    }
    assert!(checked > 0, "the index was not found");
}

#[test]
fn a_cached_entry_with_a_missing_object_is_a_miss_not_a_hit() {
    let p = Project::new(&base());
    p.run(&VARS, &[]);
    // Delete every stored object: the entry remains, its data does not.
    let objects = p.state().join("objects");
    for dir in std::fs::read_dir(&objects).expect("objects").flatten() {
        let name = dir.file_name();
        if name.len() == 2 {
            std::fs::remove_dir_all(dir.path()).expect("remove");
        }
    }
    let again = p.run(&VARS, &[]);
    assert_eq!(again.get("build"), Some(&false), "missing data must not be served");
}

#[test]
fn directory_caches_carry_folders_between_runs_and_respect_the_policy() {
    let p = Project::new(
        r#"name: dircache
jobs:
  fetch:
    cache: {key: "deps-${CI_JOB_NAME}", paths: [vendor/]}
    steps:
      - script: |
          if [ -f vendor/lib.txt ]; then echo "reused $(cat vendor/lib.txt)"; else echo fetched; fi
          mkdir -p vendor && echo v1 > vendor/lib.txt
  readonly:
    depends_on: [fetch]
    cache: {key: deps-fetch, paths: [vendor/], policy: pull}
    steps:
      - script: |
          cat vendor/lib.txt
          echo v2 > vendor/lib.txt
"#,
    );
    p.run(&[], &[]);
    let first = p.trackside(&["logs", "last", "fetch"]);
    assert!(first.contains("fetched"), "{first}");
    let ro = p.trackside(&["logs", "last", "readonly"]);
    assert!(ro.contains("v1"), "pull restores what fetch saved: {ro}");
    p.run(&[], &[]);
    let second = p.trackside(&["logs", "last", "fetch"]);
    assert!(
        second.contains("reused v1"),
        "pull-push: v2 from the pull-only job was not saved: {second}"
    );
}

#[test]
fn two_runs_at_once_storing_the_same_results_leave_a_sound_store() {
    let p = Project::new(&base());
    let spawn = || {
        let mut c = p.cmd();
        c.args(["run", "--json", "--no-watch"])
            .arg(p.path("p.yml"))
            .args(VARS)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        c.spawn().expect("spawn")
    };
    let (a, b) = (spawn(), spawn());
    for child in [a, b] {
        let out = child.wait_with_output().expect("wait");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let verify = p.trackside(&["store", "verify"]);
    assert!(verify.contains("0 corrupt, 0 index entries"), "{verify}");
    assert!(
        all_hit(&p.run(&VARS, &[])),
        "after two concurrent stores the result is usable"
    );
}
