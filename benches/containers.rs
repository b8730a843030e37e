//! Container executor benchmarks behind docs/BENCHMARKS.md.
//! Run: `cargo bench --bench containers` (needs a Docker daemon and Debian's
//! busybox-static; the image is built locally, no registry).

#[path = "support/stats.rs"]
mod stats;
use stats::stats;

#[path = "../tests/common/image.rs"]
mod image;

use std::time::Instant;

use trackside::engine::{self, EngineConfig, EventKind};
use trackside::exec::docker::DockerExecutor;
use trackside::exec::route::Executors;
use trackside::exec::shell::ShellExecutor;
use trackside::pipeline::{LoadOptions, Plan, parse_source};

const IMAGE: &str = "trackside-test-busybox:a";

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let Ok(docker) = rt.block_on(DockerExecutor::connect()) else {
        println!("container benchmarks: SKIPPED, no Docker daemon (start dockerd)");
        return;
    };
    rt.block_on(image::busybox_image(docker.client(), IMAGE));
    println!("trackside container benchmarks (release build)");

    // Start of a container job to its first log line.
    let dir = tempfile::tempdir().expect("tempdir");
    let project = dir.path().join("p");
    std::fs::create_dir_all(&project).expect("mkdir");
    let yaml =
        format!("name: c\njobs:\n  j:\n    image: {IMAGE}\n    pull: never\n    steps: [{{script: echo first}}]\n");
    let (p, _) = parse_source(&project.join("p.yml"), yaml, &LoadOptions::default()).expect("valid");
    let mut samples = Vec::new();
    for i in 0..20 {
        let mut cfg = EngineConfig::new(
            format!("cbench-{i}"),
            dir.path().join("state"),
            project.join("p.yml"),
            project.clone(),
        );
        cfg.executor = std::sync::Arc::new(Executors {
            shell: ShellExecutor,
            docker: Some(docker.clone()),
            swarm: None,
        });
        cfg.containers = true;
        let plan = Plan::build(&p).expect("plan");
        let d = rt.block_on(async {
            let h = engine::spawn(p.clone(), plan, cfg).expect("spawn");
            let mut rx = h.subscribe_live();
            h.start().await.expect("start");
            let mut started = None;
            let mut first = None;
            loop {
                let ev = rx.recv().await.expect("event");
                match &ev.kind {
                    EventKind::JobStarted { .. } => started = Some(Instant::now()),
                    EventKind::LogLine { .. } if first.is_none() => first = started.map(|s| s.elapsed()),
                    EventKind::RunFinished { .. } => break,
                    _ => {}
                }
            }
            h.shutdown().await;
            first
        });
        samples.push(d.expect("a first line"));
    }
    stats(
        "container job scheduled -> first log line (local image)",
        samples,
        "< 500 ms",
    );

    // 20 concurrent container jobs through the real binary.
    let mut s = String::from("name: wide\njobs:\n");
    for i in 0..20 {
        s.push_str(&format!(
            "  c{i}:\n    image: {IMAGE}\n    pull: never\n    steps: [{{script: 'echo {i}; sleep 0.2'}}]\n"
        ));
    }
    std::fs::write(project.join("wide.yml"), s).expect("write");
    let mut walls = Vec::new();
    for round in 0..3 {
        let t = Instant::now();
        let status = std::process::Command::new(env!("CARGO_BIN_EXE_trackside"))
            .args(["run", "--json", "-j", "20"])
            .arg(project.join("wide.yml"))
            .arg("--state-dir")
            .arg(dir.path().join(format!("wide{round}")))
            .stdout(std::process::Stdio::null())
            .status()
            .expect("run");
        walls.push(t.elapsed());
        assert!(status.success());
    }
    let rss = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)
        .map(|u| u.max_rss() / 1024)
        .unwrap_or(-1);
    stats("20 concurrent container jobs (0.2 s each), wall time", walls, "report");
    println!("  trackside peak RSS during those runs: {rss} MiB (getrusage RUSAGE_CHILDREN)");
}
