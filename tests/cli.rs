//! The `trackside` binary: exit codes, output formats, signals, records.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(60);

use common::cli::Env;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

const OK: &str = "name: ok\njobs:\n  build:\n    steps:\n      - script: echo built\n  test-suite:\n    depends_on: [build]\n    steps:\n      - script: [echo one, echo two >&2]\n";

#[test]
fn a_passing_run_prints_padded_lines_a_table_and_exits_0() {
    let e = Env::new();
    let f = e.file("p.yml", OK);
    let o = e.run(&["run", f.to_str().unwrap_or_default()]);
    let out = text(&o.stdout);
    assert_eq!(code(&o), 0, "{out}{}", text(&o.stderr));
    assert!(out.contains("build      > built"), "{out}");
    assert!(out.contains("test-suite > one"), "{out}");
    assert!(out.contains("test-suite > two"), "{out}");
    assert!(out.contains(":: build      PASS"), "{out}");
    assert!(out.contains("JOB         STATUS"), "{out}");
    assert!(out.contains("PASSED: all 2 jobs passed"), "{out}");
}

#[test]
fn a_failing_run_exits_1_and_names_the_class() {
    let e = Env::new();
    let f = e.file("p.yml", "name: f\njobs:\n  bad:\n    steps: [{script: exit 4}]\n  next:\n    depends_on: [bad]\n    steps: [{script: 'true'}]\n");
    let o = e.run(&["run", f.to_str().unwrap_or_default()]);
    let out = text(&o.stdout);
    assert_eq!(code(&o), 1);
    assert!(out.contains("FAIL (exit 4, script)"), "{out}");
    assert!(out.contains("next") && out.contains("blocked by bad"), "{out}");
}

#[test]
fn json_output_is_one_parseable_event_per_line() {
    let e = Env::new();
    let f = e.file("p.yml", OK);
    let o = e.run(&["run", "--json", f.to_str().unwrap_or_default()]);
    assert_eq!(code(&o), 0);
    let events: Vec<serde_json::Value> = text(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|err| panic!("{l}: {err}")))
        .collect();
    assert_eq!(events[0]["type"], "run_started");
    assert!(events.iter().all(|e| e["ts"].as_u64().is_some()));
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "log_line" && e["line"] == "two" && e["stream"] == "stderr")
    );
    let last = events.last().expect("events");
    assert_eq!(last["type"], "run_finished");
    assert_eq!(last["summary"]["result"], "passed");
}

#[test]
fn manual_gates_block_unless_approved() {
    let e = Env::new();
    let f = e.file(
        "p.yml",
        "name: g\njobs:\n  deploy:\n    when: manual\n    steps: [{script: echo shipped}]\n",
    );
    let path = f.to_str().unwrap_or_default();
    let o = e.run(&["run", path]);
    assert_eq!(code(&o), 1);
    assert!(text(&o.stdout).contains("blocked on manual job deploy"));
    let o = e.run(&["run", path, "--approve", "deploy"]);
    assert_eq!(code(&o), 0);
    assert!(text(&o.stdout).contains("deploy > shipped"));
    let o = e.run(&["run", path, "--approve-all"]);
    assert_eq!(code(&o), 0);
    let o = e.run(&["run", path, "--approve", "deplyo"]);
    assert_eq!(code(&o), 2);
    assert!(text(&o.stderr).contains("did you mean `deploy`"));
}

#[test]
fn host_variables_stay_out_unless_passed() {
    let e = Env::new();
    let f = e.file(
        "p.yml",
        "name: v\njobs:\n  show:\n    steps: [{script: 'echo \"[${LEAKY:-unset}] [$FROMCLI] [$SHELL]\"'}]\n",
    );
    let path = f.to_str().unwrap_or_default();
    // The user's shell comes through, as their PATH and HOME do.
    let o = e
        .cmd()
        .args(["run", path, "--var", "FROMCLI=x"])
        .env("LEAKY", "host")
        .env("SHELL", "/the/users/shell")
        .output()
        .expect("run");
    assert!(
        text(&o.stdout).contains("show > [unset] [x] [/the/users/shell]"),
        "{}",
        text(&o.stdout)
    );
    let o = e
        .cmd()
        .args(["run", path, "--var", "FROMCLI=x", "--pass-env", "LEAKY"])
        .env("LEAKY", "host")
        .output()
        .expect("run");
    assert!(text(&o.stdout).contains("show > [host] [x] ["), "{}", text(&o.stdout));
}

#[test]
fn secrets_from_env_and_files_are_masked() {
    let e = Env::new();
    let f = e.file(
        "p.yml",
        "name: s\njobs:\n  s:\n    steps: [{script: 'echo $TOK $FTOK'}]\n",
    );
    let secret_file = e.file("tok.txt", "file-secret-99\n");
    let o = e
        .cmd()
        .args(["run", f.to_str().unwrap_or_default(), "--secret", "TOK"])
        .arg("--secret-file")
        .arg(format!("FTOK={}", secret_file.display()))
        .env("TOK", "env-secret-77")
        .output()
        .expect("run");
    let out = text(&o.stdout);
    assert!(out.contains("s > [MASKED] [MASKED]"), "{out}");
    assert!(!out.contains("secret-77") && !out.contains("secret-99"));
    let o = e.run(&["run", f.to_str().unwrap_or_default(), "--secret", "NOT_SET_ANYWHERE"]);
    assert_eq!(code(&o), 2);
    assert!(text(&o.stderr).contains("NOT_SET_ANYWHERE"));
}

#[test]
fn validate_reports_all_errors_with_positions_and_json() {
    let e = Env::new();
    let f = e.file(
        "bad.yml",
        "name: b\njobs:\n  a:\n    depends_on: [biuld]\n    steps: [{script: x}]\n  build:\n    timeout: 0\n    steps: [{script: x}]\n",
    );
    let path = f.to_str().unwrap_or_default();
    let o = e.run(&["validate", path]);
    assert_eq!(code(&o), 2);
    let err = text(&o.stderr);
    assert!(err.contains("bad.yml:4:18"), "{err}");
    assert!(err.contains("did you mean `build`?"), "{err}");
    assert!(err.contains("bad.yml:7:14"), "{err}");
    assert!(err.contains("2 errors"), "{err}");
    let o = e.run(&["validate", path, "--format", "json"]);
    assert_eq!(code(&o), 2);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["valid"], false);
    assert_eq!(v["diagnostics"][0]["line"], 4);
    assert_eq!(v["diagnostics"][0]["column"], 18);
    assert_eq!(v["diagnostics"][0]["path"], "jobs.a.depends_on[0]");
    let good = e.file("good.yml", OK);
    let o = e.run(&["validate", good.to_str().unwrap_or_default()]);
    assert_eq!(code(&o), 0);
    assert!(text(&o.stdout).contains("valid: pipeline `ok`, 2 jobs in 2 levels"));
}

#[test]
fn plan_prints_levels_critical_path_and_parallelism() {
    let e = Env::new();
    let f = e.file(
        "p.yml",
        "name: p\njobs:\n  a:\n    steps: [{script: x}]\n  b:\n    steps: [{script: x}]\n  c:\n    depends_on: [a]\n    steps: [{script: x}]\n",
    );
    let o = e.run(&["plan", f.to_str().unwrap_or_default()]);
    let out = text(&o.stdout);
    assert_eq!(code(&o), 0);
    assert!(out.contains("3 jobs in 2 levels, max parallelism 2"), "{out}");
    assert!(out.contains("level 0: a, b"), "{out}");
    assert!(out.contains("critical path (2 jobs): a -> c"), "{out}");
    let o = e.run(&["plan", f.to_str().unwrap_or_default(), "--format", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["max_parallelism"], 2);
}

#[test]
fn runs_logs_and_show_read_the_records() {
    let e = Env::new();
    let f = e.file(
        "p.yml",
        "name: rec\nretry_policy: {backoff: {initial: 0.01}}\njobs:\n  j:\n    retry_count: 1\n    retry_when: [script]\n    steps:\n      - name: first\n        script: 'echo attempt-$CI_JOB_ATTEMPT; [ $CI_JOB_ATTEMPT = 2 ]'\n",
    );
    let o = e.run(&["run", f.to_str().unwrap_or_default()]);
    assert_eq!(code(&o), 0, "{}", text(&o.stdout));
    let o = e.run(&["runs"]);
    let out = text(&o.stdout);
    assert!(out.contains("rec") && out.contains("passed"), "{out}");
    let o = e.run(&["logs", "last", "j"]);
    assert_eq!(text(&o.stdout), "--- step: first ---\nattempt-2\n");
    let o = e.run(&["logs", "last", "j", "--attempt", "1"]);
    assert_eq!(text(&o.stdout), "--- step: first ---\nattempt-1\n");
    let o = e.run(&["logs", "last", "nope"]);
    assert_eq!(code(&o), 2);
    assert!(text(&o.stderr).contains("j.1, j.2"), "{}", text(&o.stderr));
    let o = e.run(&["show", "last"]);
    assert!(text(&o.stdout).contains("FLAKY"), "{}", text(&o.stdout));
    let o = e.run(&["show", "no-such-run"]);
    assert_eq!(code(&o), 2);
    assert!(text(&o.stderr).contains("trackside runs"));
}

#[test]
fn repeat_reports_the_flake_rate() {
    let e = Env::new();
    let c = e.dir.path().join("count");
    let f = e.file(
        "p.yml",
        format!(
            "name: r\njobs:\n  t:\n    steps:\n      - script: 'n=$(cat {c} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {c}; [ $n -ne 2 ]'\n",
            c = c.display()
        ),
    );
    let o = e.run(&["run", f.to_str().unwrap_or_default(), "--job", "t", "--repeat", "5"]);
    let out = text(&o.stdout);
    assert_eq!(code(&o), 1, "{out}");
    assert!(
        out.contains("repeat `t`: 5 runs, 4 passed (0 only after a retry), 1 failed; flake rate 20.0%"),
        "{out}"
    );
}

/// Runs trackside on a long job, sends `signal` once it is running, and
/// checks the exit code and that the records were written.
fn interrupt_with(signal: nix::sys::signal::Signal) {
    let e = Env::new();
    let f = e.file(
        "p.yml",
        "name: long\njobs:\n  long:\n    steps: [{script: 'echo running; sleep 60'}]\n",
    );
    let mut child = e
        .cmd()
        .args(["run", f.to_str().unwrap_or_default(), "--kill-grace", "0.5"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    loop {
        let line = rx.recv_timeout(LIMIT).expect("job output");
        if line.contains("long > running") {
            break;
        }
    }
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    nix::sys::signal::kill(pid, signal).expect("signal");
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(130));
    let rest: Vec<String> = rx.try_iter().collect();
    assert!(rest.iter().any(|l| l.contains("CANCELLED")), "{rest:?}");
    let runs: Vec<_> = std::fs::read_dir(e.state().join("runs"))
        .expect("runs")
        .flatten()
        .collect();
    assert_eq!(runs.len(), 1);
    assert!(
        runs[0].path().join("summary.json").exists(),
        "records written before exit"
    );
}

#[test]
fn ctrl_c_cancels_cleanly_with_exit_130() {
    interrupt_with(nix::sys::signal::Signal::SIGINT);
}

#[test]
fn sigterm_cancels_cleanly_with_exit_130() {
    interrupt_with(nix::sys::signal::Signal::SIGTERM);
}

fn expect_invalid(e: &Env, path: &Path, needle: &str) {
    let o = e.run(&["validate", path.to_str().unwrap_or_default()]);
    assert_eq!(code(&o), 2, "{}", text(&o.stderr));
    let err = text(&o.stderr);
    assert!(err.contains(needle), "expected `{needle}` in:\n{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn hostile_files_get_clear_errors_and_exit_2() {
    let e = Env::new();
    expect_invalid(&e, &e.file("empty.yml", ""), "pipeline file is empty");
    expect_invalid(&e, &e.file("blank.yml", "\n   \n"), "pipeline file is empty");
    let bin: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let p = e.dir.path().join("garbage.bin");
    std::fs::write(&p, &bin).expect("write");
    expect_invalid(&e, &p, "error");
    let p = e.dir.path().join("latin1.yml");
    std::fs::write(&p, b"name: caf\xe9\njobs: {}\n").expect("write");
    expect_invalid(&e, &p, "not valid UTF-8");
    expect_invalid(&e, e.dir.path(), "is a directory");
    expect_invalid(&e, &e.dir.path().join("missing.yml"), "cannot read pipeline file");
    expect_invalid(&e, &e.file("scalar.yml", "just a string\n"), "must be a mapping");
    expect_invalid(
        &e,
        &e.file("dup.yml", "name: a\nname: b\njobs: {}\n"),
        "duplicate key `name`",
    );
    let deep = "- ".repeat(10_000) + "x\n";
    expect_invalid(&e, &e.file("deep.yml", &deep), "nesting");
    let flow = "[".repeat(10_000);
    expect_invalid(&e, &e.file("flow.yml", &flow), "nesting");
    let mut bomb = String::from("a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n");
    let mut prev = "a".to_string();
    for n in ["b", "c", "d", "e", "f", "g", "h", "i"] {
        bomb.push_str(&format!(
            "{n}: &{n} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"
        ));
        prev = n.to_string();
    }
    expect_invalid(&e, &e.file("bomb.yml", &bomb), "alias bomb");
}

#[test]
fn a_50_mb_file_is_refused_without_reading_it_all() {
    let e = Env::new();
    let p = e.dir.path().join("huge.yml");
    let f = std::fs::File::create(&p).expect("create");
    f.set_len(50 << 20).expect("sparse 50 MB file");
    expect_invalid(&e, &p, "trackside reads at most");
}

#[test]
fn unreadable_and_special_files_are_reported() {
    let e = Env::new();
    // Unreadable even for root: reading trackside's own memory at offset 0 fails with EIO.
    expect_invalid(&e, Path::new("/proc/self/mem"), "cannot read pipeline file");
    let f = e.file("plain.yml", OK);
    expect_invalid(&e, &f.join("below-a-file.yml"), "cannot read pipeline file");
    let fifo = e.dir.path().join("pipe.yml");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
    expect_invalid(&e, &fifo, "not a regular file");
}

#[test]
fn the_shell_executor_runs_image_jobs_on_the_host() {
    let e = Env::new();
    let f = e.file(
        "img.yml",
        "name: i\njobs:\n  a:\n    image: alpine:3\n    steps: [{script: echo on-host}]\n",
    );
    let path = f.to_str().unwrap_or_default();
    let o = e.run(&["run", path, "--executor", "shell"]);
    assert_eq!(code(&o), 0);
    assert!(
        text(&o.stderr).contains("which the shell executor ignores"),
        "{}",
        text(&o.stderr)
    );
    assert!(text(&o.stdout).contains("a > on-host"));
    let plain = e.file("plain.yml", OK);
    let o = e.run(&["validate", plain.to_str().unwrap_or_default(), "--executor", "docker"]);
    assert_eq!(code(&o), 2);
    assert!(
        text(&o.stderr).contains("has no image, but `--executor docker`"),
        "{}",
        text(&o.stderr)
    );
}

#[test]
fn usage_errors_exit_2() {
    let e = Env::new();
    assert_eq!(code(&e.run(&["run"])), 2);
    assert_eq!(code(&e.run(&["frobnicate"])), 2);
    let f = e.file("p.yml", OK);
    assert_eq!(
        code(&e.run(&["run", f.to_str().unwrap_or_default(), "--var", "no-equals"])),
        2
    );
    assert_eq!(
        code(&e.run(&["run", f.to_str().unwrap_or_default(), "--repeat", "3"])),
        2
    );
    let o = e.run(&["run", f.to_str().unwrap_or_default(), "--job", "tset-suite"]);
    assert_eq!(code(&o), 2);
    assert!(
        text(&o.stderr).contains("did you mean `test-suite`"),
        "{}",
        text(&o.stderr)
    );
}

#[test]
fn the_demo_pipeline_is_valid_and_passes_when_approved() {
    let e = Env::new();
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/demo.yml");
    let o = e.run(&["run", demo.to_str().unwrap_or_default(), "--approve", "deploy-staging"]);
    let out = text(&o.stdout);
    assert_eq!(code(&o), 0, "{out}");
    assert!(out.contains("FLAKY"), "{out}");
    assert!(out.contains("deploy-staging    > deployed"), "{out}");
}

#[test]
fn nodes_without_a_manager_says_which_address_it_tried_and_where_it_comes_from() {
    let e = Env::new();
    let o = e.run(&["nodes", "--swarm-manager", "unix:///nonexistent/trackside-manager.sock"]);
    assert_eq!(code(&o), 2);
    let err = text(&o.stderr);
    assert!(
        err.contains("cannot reach the swarm manager at unix:///nonexistent/trackside-manager.sock")
            && err.contains("--swarm-manager, else `swarm: {manager}` of config.yml, else DOCKER_HOST"),
        "{err}"
    );
    assert!(!err.contains("--executor shell"), "not advice for this command: {err}");
}

#[test]
fn validate_with_the_swarm_executor_says_what_it_would_refuse() {
    let e = Env::new();
    let ok = e.file(
        "ok.yml",
        "name: s\njobs:\n  a:\n    image: busybox\n    node_labels: [pool=b]\n    steps: [{script: ['echo hi']}]\n",
    );
    let o = e.run(&["validate", ok.to_str().unwrap_or_default(), "--executor", "swarm"]);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    let privileged = e.file(
        "p.yml",
        "name: s\njobs:\n  root:\n    image: busybox\n    privileged: true\n    steps: [{script: ['echo hi']}]\n",
    );
    let o = e.run(&[
        "validate",
        privileged.to_str().unwrap_or_default(),
        "--executor",
        "swarm",
    ]);
    assert_eq!(code(&o), 2);
    assert!(
        text(&o.stderr).contains("job `root`: `privileged: true` cannot be honoured on the swarm executor"),
        "{}",
        text(&o.stderr)
    );
    // A container job's services run on the swarm; a host job's would be out of its reach.
    let in_containers = e.file(
        "c.yml",
        "name: s\njobs:\n  t:\n    image: busybox\n    services: [{name: db, image: busybox}]\n    steps: [{script: ['echo hi']}]\n",
    );
    let o = e.run(&[
        "validate",
        in_containers.to_str().unwrap_or_default(),
        "--executor",
        "swarm",
    ]);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    let services = e.file(
        "s.yml",
        "name: s\njobs:\n  t:\n    services: [{name: db, image: busybox}]\n    steps: [{script: ['echo hi']}]\n",
    );
    let o = e.run(&["validate", services.to_str().unwrap_or_default(), "--executor", "swarm"]);
    assert_eq!(code(&o), 2);
    assert!(
        text(&o.stderr).contains("job `t` uses `services:` while its steps run on this machine"),
        "{}",
        text(&o.stderr)
    );
    // Without the swarm executor both are valid.
    let o = e.run(&["validate", services.to_str().unwrap_or_default()]);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
}

#[test]
fn every_example_is_valid() {
    let e = Env::new();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("examples/") {
        let path = entry.expect("an entry").path();
        if path.extension().is_some_and(|x| x == "yml") {
            let o = e.run(&["validate", path.to_str().unwrap_or_default()]);
            assert_eq!(code(&o), 0, "{}: {}", path.display(), text(&o.stderr));
            checked += 1;
        }
    }
    assert!(checked >= 8, "only {checked} examples found in {}", dir.display());
}

#[test]
fn a_closed_pipe_ends_output_quietly() {
    let e = Env::new();
    let f = e.file("p.yml", OK);
    assert_eq!(code(&e.run(&["run", f.to_str().unwrap_or_default()])), 0);
    for args in [
        vec!["runs"],
        vec!["show", "last"],
        vec!["logs", "last", "build"],
        vec!["plan", f.to_str().unwrap_or_default()],
    ] {
        let mut child = e
            .cmd()
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        drop(child.stdout.take()); // the reader goes away before anything is written
        let out = child.wait_with_output().expect("wait");
        let err = text(&out.stderr);
        assert!(
            !err.contains("panicked") && !err.contains("Broken pipe"),
            "{args:?}: {err}"
        );
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
    }
}

#[test]
fn artifacts_can_be_listed_and_extracted() {
    let e = Env::new();
    let f = e.file(
        "p.yml",
        "name: a\njobs:\n  build:\n    artifacts: {paths: [dist/]}\n    steps:\n      - script: ['mkdir -p dist/sub', 'echo app > dist/app', 'echo doc > dist/sub/doc.txt']\n",
    );
    assert_eq!(code(&e.run(&["run", f.to_str().unwrap_or_default()])), 0);
    let o = e.run(&["artifacts", "last"]);
    let out = text(&o.stdout);
    assert!(
        out.contains("build: 2 file(s), 8 bytes") && out.contains("dist/sub/doc.txt"),
        "{out}"
    );
    let dest = e.dir.path().join("extracted");
    let o = e.run(&[
        "artifacts",
        "get",
        "last",
        "build",
        "dist/sub",
        "-o",
        dest.to_str().unwrap_or_default(),
    ]);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    assert_eq!(
        std::fs::read_to_string(dest.join("dist/sub/doc.txt")).unwrap_or_default(),
        "doc\n"
    );
    assert!(!dest.join("dist/app").exists(), "only the requested path");
    let o = e.run(&["artifacts", "get", "last", "build"]);
    assert_eq!(code(&o), 2);
    assert!(text(&o.stderr).contains("-o DIR"));
    let o = e.run(&["artifacts", "last", "nope"]);
    assert_eq!(code(&o), 2);
    assert!(text(&o.stderr).contains("kept no artifacts"));
}

#[test]
fn store_verify_finds_and_repairs_corruption() {
    let e = Env::new();
    let f = e.file(
        "p.yml",
        "name: a\njobs:\n  build:\n    artifacts: {paths: [out.txt, more.txt]}\n    steps:\n      - script: ['echo one > out.txt', 'echo two > more.txt']\n",
    );
    assert_eq!(code(&e.run(&["run", f.to_str().unwrap_or_default()])), 0);
    let o = e.run(&["store", "verify"]);
    assert_eq!(code(&o), 0, "{}", text(&o.stdout));
    assert!(
        text(&o.stdout).contains("3 object(s) checked: 0 corrupt"),
        "{}",
        text(&o.stdout)
    );
    // Corrupt the object holding "one\n".
    let digest = {
        use std::fmt::Write as _;
        let hash = <sha2::Sha256 as sha2::Digest>::digest(b"one\n");
        hash.iter().fold(String::new(), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
    };
    let object = e.state().join("objects").join(&digest[..2]).join(&digest[2..]);
    std::fs::write(&object, "tampered").expect("tamper");
    let o = e.run(&["store", "verify"]);
    assert_eq!(code(&o), 1);
    assert!(
        text(&o.stdout).contains(&format!("corrupt object {digest}")),
        "{}",
        text(&o.stdout)
    );
    let o = e.run(&["store", "verify", "--repair"]);
    assert!(text(&o.stdout).contains("(removed)"), "{}", text(&o.stdout));
    assert!(!object.exists());
    // The run's index entry pointed at the removed file: reported and dropped too.
    assert!(
        text(&o.stdout).contains("file `out.txt`") && text(&o.stdout).contains("is missing (removed)"),
        "{}",
        text(&o.stdout)
    );
    let o = e.run(&["store", "verify"]);
    assert_eq!(code(&o), 0, "repaired: {}", text(&o.stdout));
    let o = e.run(&["artifacts", "last"]);
    assert!(text(&o.stdout).contains("kept no artifacts"), "{}", text(&o.stdout));
}

#[test]
fn gc_keeps_the_newest_runs_and_what_they_use() {
    let e = Env::new();
    let f = e.file(
        "p.yml",
        "name: g\njobs:\n  build:\n    artifacts: {paths: [out.txt]}\n    steps:\n      - script: ['echo $CI_PIPELINE_ID > out.txt']\n",
    );
    for _ in 0..3 {
        assert_eq!(code(&e.run(&["run", f.to_str().unwrap_or_default()])), 0);
    }
    assert_eq!(code(&e.run(&["gc"])), 2, "gc needs a policy");
    let o = e.run(&["gc", "--keep-last", "1", "--dry-run"]);
    assert!(
        text(&o.stdout).contains(
            "would remove 2 run(s), 0 expired artifact set(s), 0 cache entries, 0 directory cache(s) and 4 object(s)"
        ),
        "{}",
        text(&o.stdout)
    );
    let o = e.run(&["gc", "--keep-last", "1"]);
    assert!(
        text(&o.stdout).contains(
            "removed 2 run(s), 0 expired artifact set(s), 0 cache entries, 0 directory cache(s) and 4 object(s)"
        ),
        "{}",
        text(&o.stdout)
    );
    assert!(
        text(&o.stdout).contains("2 object(s) (164 bytes) still in use"),
        "{}",
        text(&o.stdout)
    );
    let runs = text(&e.run(&["runs"]).stdout);
    assert_eq!(runs.lines().count(), 2, "header and one run: {runs}");
    let o = e.run(&["store", "verify"]);
    assert_eq!(code(&o), 0, "{}", text(&o.stdout));
    let dest = e.dir.path().join("x");
    let o = e.run(&[
        "artifacts",
        "get",
        "last",
        "build",
        "-o",
        dest.to_str().unwrap_or_default(),
    ]);
    assert_eq!(code(&o), 0, "the kept run's artifacts are intact: {}", text(&o.stderr));
}

#[test]
fn gc_during_a_run_loses_nothing_the_run_needs() {
    let e = Env::new();
    let go = e.dir.path().join("go");
    let f = e.file(
        "p.yml",
        format!(
            "name: live\njobs:\n  build:\n    artifacts: {{paths: [out.txt]}}\n    steps:\n      - script: ['echo needed-later > out.txt']\n  consume:\n    depends_on: [build]\n    steps:\n      - script: ['while [ ! -e {go} ]; do sleep 0.05; done', 'cat out.txt']\n  late:\n    depends_on: [build, consume]\n    needs_artifacts: [build]\n    steps:\n      - script: ['cat out.txt']\n",
            go = go.display()
        ),
    );
    let mut child = e
        .cmd()
        .args(["run", f.to_str().unwrap_or_default(), "--headless"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // Wait until build has stored its artifacts and consume is running.
    loop {
        let line = rx.recv_timeout(LIMIT).expect("output");
        if line.contains("consume") && line.contains("started") {
            break;
        }
    }
    let o = e.run(&["gc", "--keep-last", "0", "--max-age", "0s"]);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    assert!(
        text(&o.stdout).contains(
            "removed 0 run(s), 0 expired artifact set(s), 0 cache entries, 0 directory cache(s) and 0 object(s)"
        ),
        "{}",
        text(&o.stdout)
    );
    std::fs::write(&go, "").expect("release consume");
    let status = child.wait().expect("wait");
    let rest: Vec<String> = rx.try_iter().collect();
    assert_eq!(status.code(), Some(0), "{rest:?}");
    assert!(rest.iter().any(|l| l.contains("consume > needed-later")), "{rest:?}");
    // `late` restored build's artifacts only after gc ran.
    assert!(
        rest.iter().any(|l| l.contains("late") && l.contains("> needed-later")),
        "{rest:?}"
    );
}

#[test]
fn runs_lists_newest_first_with_limit_and_filters() {
    let e = Env::new();
    let ok = e.file("ok.yml", OK);
    let bad = e.file(
        "bad.yml",
        "name: bad\njobs:\n  a:\n    steps:\n      - script: exit 3\n",
    );
    assert_eq!(code(&e.run(&["run", ok.to_str().unwrap_or_default(), "--headless"])), 0);
    assert_eq!(
        code(&e.run(&["run", bad.to_str().unwrap_or_default(), "--headless"])),
        1
    );
    assert_eq!(code(&e.run(&["run", ok.to_str().unwrap_or_default(), "--headless"])), 0);
    let rows = |args: &[&str]| -> Vec<String> {
        let o = e.run(&[&["runs"], args].concat());
        assert_eq!(code(&o), 0, "{}", text(&o.stderr));
        text(&o.stdout).lines().skip(1).map(str::to_string).collect()
    };
    let all = rows(&[]);
    assert_eq!(all.len(), 3, "{all:?}");
    assert!(
        all[0].contains(" ok ") && all[1].contains(" bad "),
        "newest first: {all:?}"
    );
    assert_eq!(rows(&["--limit", "1"]).len(), 1);
    let failed = rows(&["--result", "failed"]);
    assert!(failed.len() == 1 && failed[0].contains(" bad "), "{failed:?}");
    assert_eq!(rows(&["--pipeline", "ok"]).len(), 2);
    let o = e.run(&["runs", "--result", "nope"]);
    assert_eq!(code(&o), 2);
    assert!(
        text(&o.stderr).contains("give one of passed, failed"),
        "{}",
        text(&o.stderr)
    );
}

/// Preflight: a failing check ends the run before any job starts, with
/// what it found and what to do; `trackside doctor` runs the same checks
/// (config.yml's too) and says which pass.
#[test]
fn a_failing_preflight_check_stops_the_run_before_any_job_and_doctor_lists_them() {
    let e = Env::new();
    let f = e.file(
        "p.yml",
        "name: pf\npreflight:\n  - {disk_free: {path: ., min: 1K}}\n  - {memory_free: 1000000G}\n  - {command: \"echo 'VPN is down' >&2; exit 3\"}\njobs:\n  build:\n    steps: [{script: echo built}]\n",
    );
    let o = e.run(&["run", f.to_str().unwrap_or_default()]);
    let (out, err) = (text(&o.stdout), text(&o.stderr));
    assert_eq!(code(&o), 2, "{out}{err}");
    assert!(!out.contains("built"), "no job ran: {out}");
    assert!(
        err.contains("error: preflight: memory_free: only ") && err.contains("1000000G required"),
        "{err}"
    );
    assert!(err.contains("error: preflight: command echo"), "{err}");
    assert!(err.contains("exits 3: VPN is down"), "{err}");
    assert!(err.contains("2 of 3 preflight check(s) failed; nothing ran"), "{err}");
    assert!(!err.contains("disk_free"), "a passing check is not an error: {err}");
    // config.yml's checks join the pipeline's.
    std::fs::create_dir_all(e.state()).expect("state");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    e.file(
        "state/config.yml",
        format!("preflight:\n  - {{tcp: 127.0.0.1:{port}}}\n"),
    );
    let o = e.run(&["doctor", f.to_str().unwrap_or_default()]);
    let out = text(&o.stdout);
    assert_eq!(code(&o), 1, "{out}");
    for want in [
        "ok   disk_free ",
        &format!("ok   tcp 127.0.0.1:{port}: 127.0.0.1:{port} takes connections"),
        "ok   disk_free .: ",
        "FAIL memory_free: only ",
        "FAIL command echo",
        "2 of 5 check(s) failed",
    ] {
        assert!(out.contains(want), "missing {want:?}:\n{out}");
    }
    // A bad check in config.yml is a clear error with its place.
    e.file("state/config.yml", "preflight:\n  - {tcp: nowhere}\n");
    let o = e.run(&["doctor"]);
    let err = text(&o.stderr);
    assert_eq!(code(&o), 2, "{err}");
    assert!(
        err.contains("`nowhere` is not HOST:PORT") && err.contains("config.yml"),
        "{err}"
    );
    drop(listener);
}
