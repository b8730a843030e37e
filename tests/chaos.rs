//! Faults of the machine under a run (docs/reliability.md): a full disk
//! while artifacts are stored, CPU starvation, a host with no route to it,
//! the Docker daemon killed and restarted mid-run. The disk test mounts a
//! small tmpfs, the network test unshares a network namespace and the
//! Docker test runs a daemon of its own, so they need root: without it they
//! say they skipped, unless TRACKSIDE_REQUIRE_ROOT=1 (CI sets it) makes
//! that a failure.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::cli::Env;
use trackside::engine::{EventKind, RunResult};
use trackside::protocol::event::FailureClass;

/// Whether this test may mount; `false` (skipped) only where root is not
/// required.
fn root(why: &str) -> bool {
    if nix::unistd::Uid::effective().is_root() {
        return true;
    }
    assert!(
        std::env::var("TRACKSIDE_REQUIRE_ROOT").as_deref() != Ok("1"),
        "TRACKSIDE_REQUIRE_ROOT=1 but this test {why} needs root"
    );
    eprintln!("SKIPPED chaos test: {why} needs root; set TRACKSIDE_REQUIRE_ROOT=1 to make this a failure");
    false
}

/// A tmpfs mounted at a folder, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).expect("mkdir");
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(at)
            .status()
            .expect("mount")
            .success();
        assert!(ok, "mount a tmpfs at {}", at.display());
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_disk_that_fills_while_artifacts_are_stored_fails_that_job_as_disk_full_and_the_store_stays_consistent() {
    if !root("mounting a small tmpfs as the state directory") {
        return;
    }
    let env = Env::new();
    let _fs = Tmpfs::mount(&env.state(), "48m");
    std::fs::write(env.state().join("config.yml"), "artifacts: {min_free: 4MB}\n").expect("config");
    // `big` leaves 30 MB in its workspace (on the same 48 MB file system)
    // and asks to keep them: storing them needs 30 MB more.
    let file = env.file(
        "p.yml",
        "name: full\njobs:\n  big:\n    artifacts: {paths: [out]}\n    steps: [{script: ['mkdir -p out && \
         head -c 30000000 /dev/urandom > out/blob']}]\n  small:\n    steps: [{script: ['echo fine']}]\n",
    );
    let out = env.run(&["run", file.to_str().expect("utf-8"), "--json", "-j", "1", "--no-watch"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let events: Vec<serde_json::Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let finished = |job: &str| {
        events
            .iter()
            .find(|e| e["type"] == "job_finished" && e["job"] == job)
            .cloned()
            .unwrap_or_default()
    };
    let big = finished("big");
    assert_eq!(big["failure_class"], "disk_full", "{big}");
    let message = big["message"].as_str().unwrap_or_default();
    assert!(message.contains("MiB free"), "says what is free: {message}");
    assert_eq!(finished("small")["status"], "succeeded");
    // Nothing half-written is left in the store.
    let verify = env.run(&["store", "verify"]);
    assert_eq!(
        verify.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
}

/// Busy loops, killed when dropped.
struct Hogs(Vec<Child>);

impl Drop for Hogs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[tokio::test]
async fn under_cpu_starvation_a_timeout_fires_on_time_and_auto_parallelism_comes_down() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let gate = tempfile::tempdir().expect("tempdir");
    let go = gate.path().join("go");
    let wait = format!(
        "steps: [{{script: ['while [ ! -f {} ]; do sleep 0.05; done']}}]",
        go.display()
    );
    let jobs: String = (1..=4).map(|i| format!("  wait{i}:\n    {wait}\n")).collect();
    let mut s = common::setup(&format!(
        "name: starved\njobs:\n  slow:\n    timeout: 2\n    steps: [{{script: ['sleep 30']}}]\n{jobs}"
    ));
    s.cfg.auto_parallel = true;
    // Three busy loops per core.
    let hogs = Hogs(
        (0..cores * 3)
            .map(|_| {
                Command::new("sh")
                    .args(["-c", "while :; do :; done"])
                    .stdout(Stdio::null())
                    .spawn()
                    .expect("hog")
            })
            .collect(),
    );
    let t = Instant::now();
    let mut r = common::start(&mut s).await;
    r.until("slow timed out", |k| {
        matches!(
            k,
            EventKind::JobFinished {
                job,
                failure_class: Some(FailureClass::Timeout),
                ..
            } if job == "slow"
        )
    })
    .await;
    let late = t.elapsed();
    assert!(late < Duration::from_secs(2 + 8), "a 2 s timeout fired after {late:?}");
    let lowered = r
        .until(
            "the limit lowered",
            |k| matches!(k, EventKind::Parallelism { from, limit, .. } if limit < from),
        )
        .await;
    let EventKind::Parallelism { reason, .. } = &lowered.kind else {
        unreachable!()
    };
    assert!(
        reason.contains("CPU pressure") || reason.contains("memory pressure"),
        "{reason}"
    );
    drop(hogs);
    std::fs::write(&go, "").expect("go");
    let sum = r.finished().await;
    assert_eq!(sum.result, RunResult::Failed, "slow timed out; the rest passed");
    assert!(
        sum.jobs
            .iter()
            .filter(|j| j.name.starts_with("wait"))
            .all(|j| j.status == trackside::engine::JobStatus::Succeeded)
    );
}

#[test]
fn a_host_unreachable_from_a_network_namespace_is_classified_network_and_opens_its_breaker() {
    if !root("running trackside in a network namespace of its own (unshare -n)") {
        return;
    }
    let curl = Command::new("curl")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !curl {
        assert!(
            std::env::var("TRACKSIDE_REQUIRE_ROOT").as_deref() != Ok("1"),
            "curl is missing"
        );
        eprintln!("SKIPPED chaos test: curl is missing");
        return;
    }
    let env = Env::new();
    std::fs::create_dir_all(env.state()).expect("state");
    std::fs::write(
        env.state().join("config.yml"),
        "breakers: {failures: 3, window: 60s, cooldown: 1s}\n",
    )
    .expect("config");
    let job = "    retry_count: 1\n    steps: [{script: ['curl -sS --max-time 5 http://10.255.0.1:5000/']}]\n";
    let file = env.file(
        "p.yml",
        format!("name: offline\nretry_policy:\n  backoff: {{initial: 0, jitter: 0}}\njobs:\n  a:\n{job}  b:\n{job}  c:\n{job}"),
    );
    // A namespace with no route anywhere: the host is unreachable.
    let out = Command::new("unshare")
        .arg("-n")
        .arg(env!("CARGO_BIN_EXE_trackside"))
        .args(["run", "--json", "-j", "3", "--no-watch"])
        .arg(&file)
        .env("TRACKSIDE_STATE_DIR", env.state())
        .stdin(Stdio::null())
        .output()
        .expect("unshare trackside");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events: Vec<serde_json::Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let retried: Vec<&serde_json::Value> = events.iter().filter(|e| e["type"] == "job_retrying").collect();
    assert_eq!(retried.len(), 3, "{text}");
    assert!(retried.iter().all(|e| e["failure_class"] == "network"), "{text}");
    let opened = events
        .iter()
        .find(|e| e["type"] == "breaker" && e["phase"] == "open")
        .unwrap_or_else(|| panic!("the breaker opened: {text}"));
    assert_eq!(opened["dependency"], "10.255.0.1:5000");
    assert!(
        events.iter().any(|e| e["type"] == "job_waiting"
            && e["reason"]
                .as_str()
                .is_some_and(|r| r.starts_with("held: circuit open — 10.255.0.1:5000"))),
        "{text}"
    );
    // Each retry went through as a probe, and failed: every job failed.
    let failed = events
        .iter()
        .filter(|e| e["type"] == "job_finished" && e["status"] == "failed")
        .count();
    assert_eq!(failed, 3, "{text}");
}

/// A Docker daemon of the test's own (its socket, data and state in a
/// temp dir, a bridge of its own, no iptables rules), so stopping it
/// touches no other test's containers. Stopped (SIGTERM, then waited for)
/// when dropped, and its bridge removed.
///
/// Not `--bridge none`: dockerd then deletes the host's `docker0`, which
/// the system daemon's containers use.
struct Dockerd {
    dir: PathBuf,
    bridge: String,
    child: Option<Child>,
}

impl Dockerd {
    fn socket(&self) -> PathBuf {
        self.dir.join("docker.sock")
    }

    fn host(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    fn start(dir: &Path) -> Dockerd {
        // A name of at most 15 bytes, and a /24 unlikely to be in use.
        let n = std::process::id() % 200;
        let bridge = format!("tschaos{n}");
        let ip = |args: &[&str]| {
            let ok = Command::new("ip").args(args).status().is_ok_and(|s| s.success());
            assert!(ok, "ip {}", args.join(" "));
        };
        let _ = Command::new("ip")
            .args(["link", "del", &bridge])
            .stderr(Stdio::null())
            .status();
        ip(&["link", "add", &bridge, "type", "bridge"]);
        ip(&["addr", "add", &format!("10.213.{n}.1/24"), "dev", &bridge]);
        ip(&["link", "set", &bridge, "up"]);
        let mut d = Dockerd {
            dir: dir.to_path_buf(),
            bridge,
            child: None,
        };
        d.restart();
        d
    }

    /// Starts it (again) and waits until it answers.
    fn restart(&mut self) {
        // A daemon killed with SIGKILL leaves its pid file behind, and its
        // containerd's (which may name a zombie not yet reaped: dockerd
        // would wait for it).
        let _ = std::fs::remove_file(self.dir.join("docker.pid"));
        let _ = std::fs::remove_file(self.dir.join("exec/containerd/containerd.pid"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("dockerd.log"))
            .expect("log");
        let child = Command::new("dockerd")
            .arg("--host")
            .arg(self.host())
            .arg("--data-root")
            .arg(self.dir.join("data"))
            .arg("--exec-root")
            .arg(self.dir.join("exec"))
            .arg("--pidfile")
            .arg(self.dir.join("docker.pid"))
            .args(["--bridge", &self.bridge, "--iptables=false", "--ip-masq=false"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start dockerd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.answers() {
            assert!(
                Instant::now() < deadline,
                "the test's dockerd did not answer within a minute: {}",
                std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn answers(&self) -> bool {
        Command::new("docker")
            .args(["--host", &self.host(), "version"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// SIGKILL: the daemon is gone at once; its containers' shims are left.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Containers the daemon knows, running or not.
    fn containers(&self) -> Vec<String> {
        let out = Command::new("docker")
            .args(["--host", &self.host(), "ps", "-a", "--format", "{{.Names}}"])
            .output()
            .expect("docker ps");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        self.stop();
        // What the daemon mounted under its data root (kept mounted by a
        // killed daemon's containers) goes, so the temp dir can.
        for dir in ["data", "exec"] {
            let _ = Command::new("umount")
                .args(["-R", "-l"])
                .arg(self.dir.join(dir))
                .stderr(Stdio::null())
                .status();
        }
        let _ = Command::new("ip").args(["link", "del", &self.bridge]).status();
    }
}

impl Dockerd {
    /// SIGTERM, then waits (at most 30 s) for it to stop its containers.
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(i32::try_from(c.id()).unwrap_or(0)),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_docker_daemon_stopped_mid_run_is_infra_opens_its_breaker_and_the_jobs_pass_once_it_is_back() {
    if !root("running a Docker daemon of its own") || !common::deploy::tool("dockerd", "TRACKSIDE_REQUIRE_DOCKER") {
        return;
    }
    let env = Env::new();
    let daemon_dir = tempfile::Builder::new()
        .prefix("trackside-chaos-dockerd")
        .tempdir()
        .expect("tempdir");
    let docker0 = || Path::new("/sys/class/net/docker0").exists();
    let had_docker0 = docker0();
    let mut dockerd = Dockerd::start(daemon_dir.path());
    let client = bollard::Docker::connect_with_unix(
        &dockerd.socket().display().to_string(),
        120,
        bollard::API_DEFAULT_VERSION,
    )
    .expect("client");
    common::image::busybox_image(&client, "trackside-chaos:busybox").await;
    // Breakers that open after three failures and probe after 3 s (long
    // enough for the daemon to come back before the first probe).
    std::fs::create_dir_all(env.state()).expect("state");
    std::fs::write(
        env.state().join("config.yml"),
        "breakers:\n  failures: 3\n  window: 60s\n  cooldown: 3s\n",
    )
    .expect("config");
    let job = |name: &str| {
        format!(
            "  {name}:\n    image: trackside-chaos:busybox\n    pull: never\n    retry_count: 3\n    \
             steps: [{{script: ['echo begin-{name}', 'sleep 5', 'echo end-{name}']}}]\n"
        )
    };
    let file = env.file(
        "chaos.yml",
        format!(
            "name: chaos\nretry_policy:\n  backoff: {{initial: 1, jitter: 0}}\njobs:\n{}{}{}  after:\n    \
             depends_on: [a]\n    image: trackside-chaos:busybox\n    pull: never\n    steps: [{{script: ['echo after-ran']}}]\n",
            job("a"),
            job("b"),
            job("c")
        ),
    );
    let mut cmd = env.cmd();
    cmd.env("DOCKER_HOST", dockerd.host());
    let mut run = common::cli::Live::start_with(cmd, &file, &["-j", "3"]);
    for name in ["a", "b", "c"] {
        run.wait_for("each job's first line", |e| {
            e["type"] == "log_line" && e["job"] == name && e["line"] == format!("begin-{name}")
        });
    }
    dockerd.kill();
    // Each running job fails as infrastructure on the daemon, and the
    // daemon's breaker opens.
    let retrying = run.wait_for("a retry", |e| e["type"] == "job_retrying");
    assert_eq!(retrying["failure_class"], "infra");
    assert_eq!(retrying["diagnosis"]["rule"], "docker-daemon-lost", "{retrying:#}");
    let open = run.wait_for("the breaker opening", |e| {
        e["type"] == "breaker" && e["phase"] == "open"
    });
    assert_eq!(open["dependency"], "the Docker daemon");
    dockerd.restart();
    assert_eq!(docker0(), had_docker0, "the host's docker0 is left as it was");
    let (code, events) = run.finish_within(Duration::from_secs(180));
    let finished: Vec<(String, String, u64)> = events
        .iter()
        .filter(|e| e["type"] == "job_finished")
        .map(|e| {
            (
                e["job"].as_str().unwrap_or_default().to_string(),
                e["status"].as_str().unwrap_or_default().to_string(),
                e["attempt"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(code, 0, "the jobs pass once the daemon is back: {finished:?}");
    for (job, status, attempt) in &finished {
        assert_eq!(status, "succeeded", "{job}");
        if job != "after" {
            assert!(*attempt >= 2, "{job} ran again after the daemon came back");
        }
    }
    assert!(
        events.iter().any(|e| e["type"] == "breaker" && e["phase"] == "closed"),
        "a probe closed the breaker"
    );
    // Nothing of the run is left in the daemon, the containers the killed
    // daemon left running included.
    let left: Vec<String> = dockerd
        .containers()
        .into_iter()
        .filter(|n| n.contains("trackside"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}
