//! The Swarm executor on a real two-node swarm: `.ci/swarm.sh up` brings
//! it up (two dockerd in network namespaces of their own, node 1 the
//! manager labelled pool=a, node 2 a worker labelled pool=b, a registry on
//! the bridge) and prints the variables these tests read. Without them a
//! test is skipped, unless TRACKSIDE_REQUIRE_SWARM=1 or CI is set: then it
//! fails. The tests change the swarm (drain a node, kill a daemon), so
//! they take turns through a lock file beside it.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::cli::{Env, Live};
use serde_json::Value;

struct Swarm {
    host: String,
    registry: String,
    image: String,
    dir: PathBuf,
    _turn: std::fs::File,
}

impl Swarm {
    /// The swarm, this test's turn at it taken; `None` (skipped) without one.
    fn get() -> Option<Swarm> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let (Some(host), Some(registry), Some(image), Some(dir)) = (
            var("TRACKSIDE_SWARM_HOST"),
            var("TRACKSIDE_SWARM_REGISTRY"),
            var("TRACKSIDE_SWARM_IMAGE"),
            var("TRACKSIDE_SWARM_DIR"),
        ) else {
            let required = var("TRACKSIDE_REQUIRE_SWARM").as_deref() == Some("1") || var("CI").is_some();
            assert!(
                !required,
                "TRACKSIDE_REQUIRE_SWARM=1 (or CI) but no swarm: run `eval \"$(sudo .ci/swarm.sh up)\"` first"
            );
            eprintln!("SKIPPED: no swarm; `eval \"$(sudo .ci/swarm.sh up)\"` brings one up");
            return None;
        };
        let dir = PathBuf::from(dir);
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("tests.lock"))
            .expect("lock file");
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a descriptor this function owns; released when it closes.
        let locked = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
        assert_eq!(locked, 0, "flock");
        let s = Swarm {
            host,
            registry,
            image,
            dir,
            _turn: lock,
        };
        // A daemon a test before killed (and did not get to start again) comes back first.
        for n in [1, 2] {
            let pid = std::fs::read_to_string(s.dir.join(format!("n{n}/pid"))).unwrap_or_default();
            let alive = pid
                .trim()
                .parse::<i32>()
                .is_ok_and(|p| nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), None).is_ok());
            if !alive {
                s.start_node(n);
            }
        }
        s.wait_ready();
        Some(s)
    }

    /// `.ci/swarm.sh start N`: node N's daemon again, and both nodes ready.
    fn start_node(&self, n: u32) {
        let status = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.ci/swarm.sh"))
            .args(["start", &n.to_string()])
            .env("TRACKSIDE_SWARM_DIR", &self.dir)
            .status()
            .expect("swarm.sh start");
        assert!(status.success(), "node {n} came back");
    }

    fn docker(&self, args: &[&str]) -> String {
        let out = Command::new("docker")
            .arg("-H")
            .arg(&self.host)
            .args(args)
            .output()
            .expect("docker");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Both nodes ready and active (a test before may have killed or drained one).
    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let list = self.docker(&["node", "ls", "--format", "{{.Status}} {{.Availability}}"]);
            if list.lines().filter(|l| l.trim() == "Ready Active").count() == 2 {
                return;
            }
            assert!(Instant::now() < deadline, "the swarm's nodes are not ready: {list}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// A state folder whose config.yml runs on this swarm.
    fn env(&self, extra: &str) -> Env {
        let env = Env::new();
        std::fs::create_dir_all(env.state()).expect("state");
        std::fs::write(
            env.state().join("config.yml"),
            format!(
                "executor: swarm\nswarm:\n  manager: {}\n  registry: {}\n{extra}",
                self.host, self.registry
            ),
        )
        .expect("config");
        env
    }

    /// What trackside left on the swarm for `run`: services, configs, secrets, networks.
    fn leftovers(&self, run: &str) -> Vec<String> {
        self.leftovers_of(&[format!("label=dev.trackside.run={run}")])
    }

    /// What trackside left carrying all of these filters.
    fn leftovers_of(&self, filters: &[String]) -> Vec<String> {
        let mut left = Vec::new();
        for kind in ["service", "config", "secret", "network"] {
            let mut args = vec![kind, "ls"];
            for f in filters {
                args.extend(["--filter", f.as_str()]);
            }
            args.extend(["--format", "{{.Name}}"]);
            for name in self.docker(&args).lines() {
                left.push(format!("{kind} {name}"));
            }
        }
        left
    }

    /// Waits (at most a minute) until no container of `run` runs on either
    /// node, asking each node's own daemon (trackside only reaches the manager).
    fn no_container_runs(&self, run: &str) {
        let filter = format!("label=dev.trackside.run={run}");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut running = Vec::new();
            for n in [1, 2] {
                let sock = format!("unix://{}/n{n}/docker.sock", self.dir.display());
                let out = Command::new("docker")
                    .args(["-H", &sock, "ps", "--filter", &filter, "--format", "{{.Names}}"])
                    .output()
                    .expect("docker ps");
                running.extend(String::from_utf8_lossy(&out.stdout).lines().map(str::to_string));
            }
            if running.is_empty() {
                return;
            }
            assert!(Instant::now() < deadline, "still running on the nodes: {running:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn node_id(&self, n: u32) -> String {
        let sock = format!("unix://{}/n{n}/docker.sock", self.dir.display());
        let out = Command::new("docker")
            .args(["-H", &sock, "info", "--format", "{{.Swarm.NodeID}}"])
            .output()
            .expect("docker info");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

fn events_of(out: &std::process::Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn lines_of(events: &[Value], job: &str) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["type"] == "log_line" && e["job"] == job)
        .map(|e| e["line"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn finished<'a>(events: &'a [Value], job: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["type"] == "job_finished" && e["job"] == job)
        .collect()
}

fn run(env: &Env, file: &Path, args: &[&str]) -> (Option<i32>, Vec<Value>, String) {
    let out = env
        .cmd()
        .args(["run", "--json", "--no-watch"])
        .args(args)
        .arg(file)
        .output()
        .expect("run trackside");
    (
        out.status.code(),
        events_of(&out),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn jobs_are_placed_by_label_and_their_files_logs_and_secrets_travel_between_nodes() {
    let Some(swarm) = Swarm::get() else { return };
    let env = swarm.env("");
    let project = env.dir.path().join("project");
    std::fs::create_dir_all(project.join("src")).expect("project");
    std::fs::write(project.join("src/input.txt"), "from the project\n").expect("input");
    std::fs::write(project.join("obsolete.txt"), "to be removed\n").expect("obsolete");
    std::fs::write(env.dir.path().join("token"), "s3cr3t-t0ken-value\n").expect("token");
    let image = &swarm.image;
    let file = project.join(".gitlab-ci.yml");
    std::fs::write(
        &file,
        format!(
            "stages: [build, test]\n\
             build:\n  stage: build\n  image: {image}\n  tags: [pool=b]\n\
             \x20 artifacts: {{paths: [dist/]}}\n\
             \x20 script:\n\
             \x20   - cat src/input.txt\n\
             \x20   - mkdir -p dist && echo binary-v1 > dist/app\n\
             \x20   - rm obsolete.txt\n\
             \x20   - test \"$DEPLOY_TOKEN\" = s3cr3t-t0ken-value && echo token-ok\n\
             \x20   - i=0; while [ $i -lt 2000 ]; do echo line-$i; i=$((i+1)); done\n\
             \x20 after_script:\n\
             \x20   - test -e obsolete.txt && echo still-there || echo removal-came-back\n\
             \x20   - cat dist/app\n\
             test:\n  stage: test\n  image: {image}\n  tags: [pool=a]\n\
             \x20 script:\n    - cat dist/app\n"
        ),
    )
    .expect("pipeline");
    let token = env.dir.path().join("token");
    let (code, events, stderr) = run(
        &env,
        &file,
        &["--secret-file", &format!("DEPLOY_TOKEN={}", token.display())],
    );
    let build = lines_of(&events, "build");
    let test = lines_of(&events, "test");
    assert_eq!(code, Some(0), "{stderr}\nbuild: {build:?}\ntest: {test:?}");
    // `-j auto` (the default) is the cluster's CPUs, not this machine's.
    let out = env.run(&["nodes", "--format", "json"]);
    let nodes: Value = serde_json::from_slice(&out.stdout).expect("nodes as JSON");
    let cpus: f64 = nodes
        .as_array()
        .map(|n| n.iter().map(|n| n["cpus"].as_f64().unwrap_or(0.0)).sum())
        .unwrap_or(0.0);
    let started = events
        .iter()
        .find(|e| e["type"] == "run_started")
        .cloned()
        .unwrap_or_default();
    assert_eq!(started["max_parallel"].as_f64(), Some(cpus.ceil()), "{started}");
    // Placed by the tags: build on the worker (pool=b), test on the manager (pool=a).
    assert!(
        build
            .iter()
            .any(|l| l.starts_with("trackside: running on swarm node") && l.contains("pool=b")),
        "{build:?}"
    );
    assert!(
        test.iter()
            .any(|l| l.starts_with("trackside: running on swarm node") && l.contains("pool=a")),
        "{test:?}"
    );
    // And as an event front-ends show with the job.
    let placed: Vec<(String, String)> = events
        .iter()
        .filter(|e| e["type"] == "job_placed")
        .map(|e| {
            (
                e["job"].as_str().unwrap_or("").into(),
                e["node"].as_str().unwrap_or("").into(),
            )
        })
        .collect();
    assert_eq!(
        placed.len(),
        3,
        "build's script and after_script, test's script: {placed:?}"
    );
    assert!(
        placed
            .iter()
            .all(|(job, node)| node.contains(if job == "build" { "pool=b" } else { "pool=a" }))
    );
    assert!(
        build.contains(&"from the project".to_string()),
        "the workspace went there"
    );
    assert!(build.contains(&"token-ok".to_string()), "the secret reached the step");
    // Every line, in order, none of the wrapper's frames among them.
    let numbered: Vec<&String> = build.iter().filter(|l| l.starts_with("line-")).collect();
    assert_eq!(numbered.len(), 2000, "{:?}", &build[..build.len().min(20)]);
    assert!(numbered.iter().enumerate().all(|(i, l)| **l == format!("line-{i}")));
    assert!(
        !build.iter().chain(&test).any(|l| l.contains("@@trackside-")),
        "{build:?}"
    );
    // `after_script` is a task of its own: what the script wrote and removed came back between them.
    assert!(build.contains(&"removal-came-back".to_string()), "{build:?}");
    assert_eq!(build.iter().filter(|l| *l == "binary-v1").count(), 1, "{build:?}");
    // The artifact made on one node was read on the other.
    assert!(test.contains(&"binary-v1".to_string()), "{test:?}");
    // Nothing of the run is left on the swarm.
    let run_id = events
        .iter()
        .find(|e| e["type"] == "run_started")
        .and_then(|e| e["run_id"].as_str())
        .unwrap_or_default()
        .to_string();
    assert!(run_id.starts_with("20"), "a run id: {run_id:?}");
    assert_eq!(swarm.leftovers(&run_id), Vec::<String>::new());
}

#[test]
fn a_jobs_services_run_on_another_node_and_its_steps_reach_them_by_name() {
    let Some(swarm) = Swarm::get() else { return };
    let env = swarm.env("");
    let image = &swarm.image;
    // `web` starts serving only after a while: the step waits for its port.
    // `gone` cannot start: its job fails with the reason, nothing left.
    let file = env.file(
        "services.yml",
        format!(
            "name: services\njobs:\n\
             \x20 web-user:\n    image: {image}\n    node_labels: [pool=a]\n\
             \x20   services:\n\
             \x20     - name: web\n        image: {image}\n        node_labels: [pool=b]\n        port: 8080\n\
             \x20       environment: {{GREETING: hello-over-the-overlay}}\n\
             \x20       command: [sh, -c, 'sleep 2; mkdir -p /www && echo $GREETING > /www/index.html && echo serving && exec httpd -f -p 8080 -h /www']\n\
             \x20     - name: cache\n        image: {image}\n        command: [sleep, '600']\n\
             \x20   steps:\n      - script: ['wget -qO- http://web:8080/index.html', 'ping -c 1 -W 5 cache >/dev/null && echo cache-resolves']\n\
             \x20 gone-user:\n    image: {image}\n    retry_count: 0\n\
             \x20   services: [{{name: gone, image: {image}, command: [/no/such/program]}}]\n\
             \x20   steps: [{{script: ['echo never']}}]\n"
        ),
    );
    let (code, events, stderr) = run(&env, &file, &[]);
    assert_eq!(code, Some(1), "{stderr}");
    let web = lines_of(&events, "web-user");
    assert_eq!(finished(&events, "web-user")[0]["status"], "succeeded", "{web:?}");
    // Across nodes: the step on pool=a, the service on pool=b.
    assert!(
        web.iter()
            .any(|l| l.starts_with("trackside: running on swarm node") && l.contains("pool=a")),
        "{web:?}"
    );
    assert!(
        web.iter()
            .any(|l| l.starts_with("trackside: service `web` runs on swarm node") && l.contains("pool=b")),
        "{web:?}"
    );
    assert!(web.contains(&"hello-over-the-overlay".to_string()), "{web:?}");
    assert!(web.contains(&"cache-resolves".to_string()), "{web:?}");
    // Its output joins the job's log, marked with its name.
    assert!(web.contains(&"service web | serving".to_string()), "{web:?}");
    let gone = finished(&events, "gone-user");
    assert_eq!(gone[0]["status"], "failed", "{gone:?}");
    let msg = gone[0]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("service `gone`") && msg.contains("ended before it was ready") && msg.contains("/no/such/program"),
        "{msg}"
    );
    assert!(!lines_of(&events, "gone-user").contains(&"never".to_string()));
    let run_id = events
        .iter()
        .find(|e| e["type"] == "run_started")
        .and_then(|e| e["run_id"].as_str())
        .unwrap_or_default()
        .to_string();
    assert_eq!(swarm.leftovers(&run_id), Vec::<String>::new());
    swarm.no_container_runs(&run_id);
}

#[test]
fn a_job_no_node_can_take_is_reported_unschedulable_with_swarms_reason() {
    let Some(swarm) = Swarm::get() else { return };
    let env = swarm.env("  pending_timeout: 2s\n");
    let image = &swarm.image;
    let file = env.file(
        "p.yml",
        format!(
            "name: placement\njobs:\n\
             \x20 huge:\n    image: {image}\n    resources: {{memory: 4000GiB}}\n    steps: [{{script: ['echo never']}}]\n\
             \x20 nowhere:\n    image: {image}\n    node_labels: [pool=c]\n    steps: [{{script: ['echo never']}}]\n\
             \x20 privileged:\n    image: {image}\n    privileged: true\n    retry_count: 2\n    steps: [{{script: ['echo never']}}]\n\
             \x20 hog:\n    image: {image}\n    retry_count: 0\n    resources: {{memory: 32MiB}}\n    steps: [{{script: ['head -c 300m /dev/zero | tail > /dev/null']}}]\n\
             \x20 self-killed:\n    image: {image}\n    retry_count: 0\n    steps: [{{script: ['sh -c \"kill -9 \\$\\$\"']}}]\n\
             \x20 fits-with-a-name-longer-than-any-swarm-object-name-may-be:\n    image: {image}\n    node_labels: [pool=b]\n    resources: {{memory: 64MiB, cpus: 0.5}}\n    steps: [{{script: ['echo fine']}}]\n"
        ),
    );
    // `doctor` checks the swarm's manager, not this machine's daemon.
    let doctor = env.run(&["doctor", file.to_str().unwrap_or_default()]);
    let said = String::from_utf8_lossy(&doctor.stdout);
    assert!(
        said.contains("ok   swarm: the manager at") && said.contains("2 of 2 node(s) ready"),
        "{said}"
    );
    assert!(!said.contains("docker: the daemon"), "{said}");
    let started = Instant::now();
    let (code, events, stderr) = run(&env, &file, &[]);
    assert_eq!(code, Some(1), "{stderr}");
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(60),
        "reported after a bounded wait, not left pending"
    );
    assert!(
        took >= Duration::from_secs(2),
        "only once pending_timeout has passed: {took:?}"
    );
    let huge = finished(&events, "huge");
    assert_eq!(huge.len(), 1, "not retried: {huge:?}");
    assert_eq!(huge[0]["failure_class"], "unschedulable", "{:?}", huge[0]);
    let msg = huge[0]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("no suitable node") && msg.contains("insufficient resources"),
        "Swarm's own reason: {msg}"
    );
    assert!(
        msg.contains("4000 GiB") || msg.contains("4000.0 GiB"),
        "and why it can never fit: {msg}"
    );
    // What a swarm service cannot have is refused at once, and not retried.
    let privileged = finished(&events, "privileged");
    assert_eq!(privileged.len(), 1, "not retried: {privileged:?}");
    assert_eq!(privileged[0]["failure_class"], "unschedulable", "{:?}", privileged[0]);
    let msg = privileged[0]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("`privileged: true` cannot be honoured"), "{msg}");
    // The OOM killer, told from the step's memory cgroup (Swarm has no OOM
    // flag), is not any other SIGKILL.
    let hog = finished(&events, "hog");
    assert_eq!(hog[0]["failure_class"], "oom", "{:?}", hog[0]);
    assert!(hog[0]["exit_code"].is_null(), "killed by the OOM killer: {:?}", hog[0]);
    let killed = finished(&events, "self-killed");
    assert_eq!(killed[0]["exit_code"], 137, "{:?}", killed[0]);
    let nowhere = finished(&events, "nowhere");
    assert_eq!(nowhere[0]["failure_class"], "unschedulable", "{:?}", nowhere[0]);
    let msg = nowhere[0]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("the labels pool=c"), "{msg}");
    // What the swarm executor does not run is refused before any job starts:
    // services of a job whose steps run on this machine, out of their reach.
    let with_services = env.file(
        "services.yml",
        format!(
            "name: svc\njobs:\n  db-user:\n    services: [{{name: db, image: {image}}}]\n    steps: [{{script: ['echo never']}}]\n"
        ),
    );
    let (code, events_svc, stderr) = run(&env, &with_services, &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("job `db-user` uses `services:` while its steps run on this machine (a step without"),
        "{stderr}"
    );
    assert!(!events_svc.iter().any(|e| e["type"] == "job_started"), "nothing ran");
    // Its service, secrets and config have names of their own, within Swarm's 63/64 characters.
    let long = "fits-with-a-name-longer-than-any-swarm-object-name-may-be";
    assert_eq!(
        finished(&events, long)[0]["status"],
        "succeeded",
        "{:?}",
        lines_of(&events, long)
    );
}

/// Puts node 1 (the manager) back to active when the test ends, passed or not.
struct Undrain<'a>(&'a Swarm, String);

impl Drop for Undrain<'_> {
    fn drop(&mut self) {
        self.0.docker(&["node", "update", "--availability", "active", &self.1]);
    }
}

#[test]
fn a_worker_killed_mid_job_is_detected_and_the_job_passes_on_the_other_node() {
    let Some(swarm) = Swarm::get() else { return };
    let env = swarm.env("");
    let image = &swarm.image;
    let file = env.file(
        "p.yml",
        format!(
            "name: lost-node\njobs:\n  long:\n    image: {image}\n    retry_count: 1\n    steps:\n      - script:\n          - 'echo attempt-$CI_JOB_ATTEMPT'\n          - 'if [ \"$CI_JOB_ATTEMPT\" = 1 ]; then sleep 120; fi'\n          - 'echo done'\n"
        ),
    );
    // The first attempt must land on the worker: the manager takes nothing new meanwhile.
    let manager = swarm.node_id(1);
    swarm.docker(&["node", "update", "--availability", "drain", &manager]);
    let undrain = Undrain(&swarm, manager);
    let mut live = Live::start(&env, &file, &[]);
    live.wait_within(Duration::from_secs(90), "the first attempt running", |e| {
        e["type"] == "log_line" && e["job"] == "long" && e["line"] == "attempt-1"
    });
    let on = live.seen.iter().any(|e| {
        e["type"] == "log_line"
            && e["line"]
                .as_str()
                .is_some_and(|l| l.contains("swarm node") && l.contains("pool=b"))
    });
    assert!(on, "the first attempt runs on the worker: {:#?}", live.seen);
    drop(undrain);
    let pid: i32 = std::fs::read_to_string(swarm.dir.join("n2/pid"))
        .expect("the worker's pid file")
        .trim()
        .parse()
        .expect("pid");
    let killed = Instant::now();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL)
        .expect("kill the worker");
    let (code, events) = live.finish_within(Duration::from_secs(120));
    let detected = killed.elapsed();
    // The worker back for the tests after this one.
    swarm.start_node(2);
    let attempts = finished(&events, "long");
    let lines = lines_of(&events, "long");
    assert_eq!(code, 0, "{attempts:?}\n{lines:?}");
    let retry: Vec<&Value> = events.iter().filter(|e| e["type"] == "job_retrying").collect();
    assert_eq!(retry.len(), 1, "{retry:?}");
    assert_eq!(retry[0]["failure_class"], "infra", "{:?}", retry[0]);
    assert!(
        lines.iter().any(|l| l.contains("went down") && l.contains("pool=b")),
        "says which node was lost: {lines:?}"
    );
    assert_eq!(attempts.len(), 1, "{attempts:?}");
    assert_eq!(attempts[0]["attempt"], 2);
    assert_eq!(attempts[0]["status"], "succeeded");
    assert!(
        lines.iter().any(|l| l.contains("swarm node") && l.contains("pool=a")),
        "the retry ran on the manager: {lines:?}"
    );
    eprintln!(
        "lost node detected and the job passed {:.1} s after the kill",
        detected.as_secs_f64()
    );
}

#[test]
fn cancel_and_a_crashed_trackside_leave_no_service_behind() {
    let Some(swarm) = Swarm::get() else { return };
    let env = swarm.env("");
    let image = &swarm.image;
    let file = env.file(
        "p.yml",
        format!(
            "name: cancel\njobs:\n  a:\n    image: {image}\n    steps: [{{script: ['echo up-a', 'sleep 300']}}]\n  b:\n    image: {image}\n    steps: [{{script: ['echo up-b', 'sleep 300']}}]\n"
        ),
    );
    let running = |live: &mut Live| {
        for job in ["a", "b"] {
            live.wait_within(Duration::from_secs(90), "both jobs running", |e| {
                e["type"] == "log_line" && e["job"] == job && e["line"] == format!("up-{job}")
            });
        }
    };
    // Ctrl-C: the run ends and takes its services with it.
    let mut live = Live::start(&env, &file, &[]);
    let run_id = live.run_id();
    running(&mut live);
    assert!(
        !swarm.leftovers(&run_id).is_empty(),
        "the services are there while it runs"
    );
    // `trackside nodes` counts them, on nodes it lists with their labels.
    let out = env.run(&["nodes", "--format", "json"]);
    let nodes: Value = serde_json::from_slice(&out.stdout).expect("nodes as JSON");
    let nodes = nodes.as_array().cloned().unwrap_or_default();
    let pools: Vec<&str> = nodes
        .iter()
        .map(|n| n["labels"]["pool"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(pools, ["a", "b"], "{nodes:?}");
    let tasks: u64 = nodes.iter().map(|n| n["trackside_tasks"].as_u64().unwrap_or(0)).sum();
    assert_eq!(tasks, 2, "{nodes:?}");
    // And the run tells its front-ends (the UI's nodes view) the same.
    let told = live.wait_within(Duration::from_secs(30), "the nodes with both tasks", |e| {
        let nodes = e["nodes"].as_array().cloned().unwrap_or_default();
        e["type"] == "cluster_nodes"
            && nodes
                .iter()
                .map(|n| n["trackside_tasks"].as_u64().unwrap_or(0))
                .sum::<u64>()
                == 2
    });
    let pools: Vec<&str> = told["nodes"]
        .as_array()
        .map(|n| n.iter().map(|n| n["labels"]["pool"].as_str().unwrap_or("")).collect())
        .unwrap_or_default();
    assert_eq!(pools, ["a", "b"], "{told}");
    assert!(
        told["nodes"]
            .as_array()
            .is_some_and(|n| n.iter().all(|n| n["state"] == "ready")),
        "{told}"
    );
    let pid = nix::unistd::Pid::from_raw(live.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("SIGINT");
    let (_, _) = live.finish_within(Duration::from_secs(60));
    assert_eq!(
        swarm.leftovers(&run_id),
        Vec::<String>::new(),
        "cancel removed everything"
    );
    swarm.no_container_runs(&run_id);

    // SIGKILL: the next run on this machine reaps what the dead one left.
    let mut live = Live::start(&env, &file, &[]);
    let crashed = live.run_id();
    running(&mut live);
    let _ = live.child.kill();
    let _ = live.child.wait();
    assert!(!swarm.leftovers(&crashed).is_empty(), "a crash leaves them");
    let quick = env.file(
        "quick.yml",
        format!("name: quick\njobs:\n  q:\n    image: {image}\n    steps: [{{script: ['echo hi']}}]\n"),
    );
    let (code, _, stderr) = run(&env, &quick, &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("swarm service(s) left by a crashed trackside"),
        "{stderr}"
    );
    assert_eq!(swarm.leftovers(&crashed), Vec::<String>::new(), "reaped");
    swarm.no_container_runs(&crashed);
}

#[test]
fn a_hundred_short_jobs_run_across_both_nodes() {
    let Some(swarm) = Swarm::get() else { return };
    let env = swarm.env("");
    let mut yaml = String::from("name: hundred\njobs:\n");
    for i in 0..100 {
        yaml.push_str(&format!(
            "  j{i}:\n    image: {}\n    steps: [{{script: ['echo job-{i}']}}]\n",
            swarm.image
        ));
    }
    let file = env.file("p.yml", yaml);
    let started = Instant::now();
    let (code, events, stderr) = run(&env, &file, &["-j", "100"]);
    let wall = started.elapsed();
    assert_eq!(code, Some(0), "{stderr}");
    let mut per_node: HashMap<String, usize> = HashMap::new();
    for i in 0..100 {
        let job = format!("j{i}");
        let lines = lines_of(&events, &job);
        assert!(lines.contains(&format!("job-{i}")), "{job}: {lines:?}");
        let node = lines
            .iter()
            .find_map(|l| l.strip_prefix("trackside: running on swarm node "))
            .unwrap_or_default()
            .to_string();
        *per_node.entry(node).or_default() += 1;
        assert_eq!(finished(&events, &job)[0]["status"], "succeeded");
    }
    assert_eq!(per_node.len(), 2, "both nodes took jobs: {per_node:?}");
    eprintln!("100 jobs on the swarm in {:.1} s: {per_node:?}", wall.as_secs_f64());
}

/// Starts `file`, waits for its step's `started-<uuid>` line and kills
/// trackside: the run's id and that line.
fn start_then_kill(env: &Env, file: &Path) -> (String, String) {
    let mut live = Live::start(env, file, &[]);
    let run_id = live.run_id();
    let started = live.wait_within(Duration::from_secs(90), "the step's first line", |e| {
        e["type"] == "log_line" && e["line"].as_str().is_some_and(|l| l.starts_with("started-"))
    });
    let marker = started["line"].as_str().unwrap_or_default().to_string();
    let _ = live.child.kill();
    let _ = live.child.wait();
    (run_id, marker)
}

#[test]
fn a_resumed_run_takes_up_the_step_its_killed_trackside_left_running() {
    let Some(swarm) = Swarm::get() else { return };
    let env = swarm.env("");
    let image = &swarm.image;
    // `long` marks its start with a number only that task can print, runs
    // on, and writes a file the next step reads: taken up, the step's
    // output and files come from the same task.
    let file = env.file(
        "p.yml",
        format!(
            "name: adopt\njobs:\n  long:\n    image: {image}\n    node_labels: [pool=b]\n\
             \x20   steps:\n\
             \x20     - script: ['echo started-$(cat /proc/sys/kernel/random/uuid)', 'sleep 6', 'echo from-the-first-task > result.txt']\n\
             \x20     - script: ['cat result.txt']\n"
        ),
    );
    let (run_id, marker) = start_then_kill(&env, &file);
    let out = env.cmd().args(["resume", &run_id, "--json"]).output().expect("resume");
    let events = events_of(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines = lines_of(&events, "long");
    assert_eq!(out.status.code(), Some(0), "{stderr}\n{lines:?}");
    assert!(
        stderr.contains("1 step(s) the interrupted run left on the swarm are taken up"),
        "{stderr}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("trackside: taking up the step the interrupted run (attempt 1)")),
        "{lines:?}"
    );
    // The same task's output, not a new one's: its start marker again, once.
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("started-")).collect::<Vec<_>>(),
        [&marker],
        "{lines:?}"
    );
    assert!(lines.contains(&"from-the-first-task".to_string()), "{lines:?}");
    let done = finished(&events, "long");
    assert_eq!(done[0]["attempt"], 2, "{done:?}");
    assert_eq!(swarm.leftovers(&run_id), Vec::<String>::new());
    swarm.no_container_runs(&run_id);

    // Resumed with another variable, the step's inputs differ: the old
    // task is removed and the step runs anew.
    let (run_id, marker) = start_then_kill(&env, &file);
    let out = env
        .cmd()
        .args(["resume", &run_id, "--json", "--var", "CHANGED=yes"])
        .output()
        .expect("resume");
    let lines = lines_of(&events_of(&out), "long");
    assert_eq!(out.status.code(), Some(0), "{lines:?}");
    assert!(lines.iter().any(|l| l.contains("ran other inputs")), "{lines:?}");
    let markers: Vec<&String> = lines.iter().filter(|l| l.starts_with("started-")).collect();
    assert_eq!(markers.len(), 1, "{lines:?}");
    assert_ne!(markers[0], &marker, "a new task: {lines:?}");
    assert_eq!(swarm.leftovers(&run_id), Vec::<String>::new());
    swarm.no_container_runs(&run_id);
}

#[test]
fn a_jobs_services_go_with_the_job_even_when_it_times_out_while_they_start() {
    let Some(swarm) = Swarm::get() else { return };
    let env = swarm.env("");
    let image = &swarm.image;
    // `stuck`'s service can never be placed: the job times out while it
    // waits. `quick` ends normally. `slow` keeps the run going meanwhile,
    // so nothing is swept by the run's end.
    let file = env.file(
        "p.yml",
        format!(
            "name: gone-with-the-job\njobs:\n\
             \x20 stuck:\n    image: {image}\n    timeout: 4\n    retry_count: 0\n\
             \x20   services: [{{name: never, image: {image}, node_labels: [pool=c], ready_timeout: 300}}]\n\
             \x20   steps: [{{script: ['echo never']}}]\n\
             \x20 quick:\n    image: {image}\n\
             \x20   services: [{{name: web, image: {image}, command: [sleep, '600']}}]\n\
             \x20   steps: [{{script: ['echo with-a-service']}}]\n\
             \x20 slow:\n    image: {image}\n    steps: [{{script: ['echo slow-up', 'sleep 60']}}]\n"
        ),
    );
    let mut live = Live::start(&env, &file, &[]);
    let run_id = live.run_id();
    for job in ["stuck", "quick"] {
        live.wait_within(Duration::from_secs(90), "the job's end", |e| {
            e["type"] == "job_finished" && e["job"] == job
        });
    }
    let stuck = live.wait_for("stuck's end", |e| e["type"] == "job_finished" && e["job"] == "stuck");
    assert_eq!(stuck["failure_class"], "timeout", "{stuck}");
    let deadline = Instant::now() + Duration::from_secs(45);
    for job in ["stuck", "quick"] {
        let filters = [
            format!("label=dev.trackside.run={run_id}"),
            format!("label=dev.trackside.job={job}"),
        ];
        loop {
            let left = swarm.leftovers_of(&filters);
            if left.is_empty() {
                break;
            }
            assert!(Instant::now() < deadline, "{job} left {left:?}");
            std::thread::sleep(Duration::from_millis(250));
        }
    }
    assert!(
        !live
            .seen
            .iter()
            .any(|e| e["type"] == "job_finished" && e["job"] == "slow"),
        "removed while the run still ran, not by its end"
    );
    let pid = nix::unistd::Pid::from_raw(live.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("SIGINT");
    let (_, _) = live.finish_within(Duration::from_secs(60));
    assert_eq!(swarm.leftovers(&run_id), Vec::<String>::new());
}
