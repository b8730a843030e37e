//! The run socket, behind docs/BENCHMARKS.md. Run: `cargo bench --bench attach`.
//!
//! 1. Delivery delay through the socket: one job prints 10,000 lines a
//!    second; the same events are taken in process and over the socket by
//!    the same process, and each event's delay is the time between the two
//!    receipts (the socket's own cost: framing, the kernel, the client's
//!    reader). Target: p99 under 5 ms.
//! 2. Throughput with 0 and with 5 attached clients: a job printing 200,000
//!    lines as fast as it can, the run's wall time from start to its
//!    summary, rounds alternating. Target: under 5% slower with 5.

#[path = "support/stats.rs"]
mod stats;
use stats::stats;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use trackside::attach::{self, RemoteLink};
use trackside::engine::{self, EngineConfig};
use trackside::pipeline::{LoadOptions, Plan, parse_source};
use trackside::protocol::{Delivery, EventKind, Link, Subscription};

/// An engine for `yaml` in a temp dir, served on its socket; not started.
fn engine(yaml: &str) -> (tempfile::TempDir, engine::EngineHandle, attach::RunServer) {
    let dir = tempfile::tempdir().expect("tempdir");
    let project = dir.path().join("p");
    std::fs::create_dir_all(&project).expect("mkdir");
    let file = project.join("p.yml");
    std::fs::write(&file, yaml).expect("write");
    let (pipeline, _) = parse_source(&file, yaml.to_string(), &LoadOptions::default()).expect("parse");
    let plan = Plan::build(&pipeline).expect("plan");
    let mut cfg = EngineConfig::new(trackside::store::new_run_id(), dir.path().join("state"), file, project);
    cfg.host_env = vec![("PATH".into(), std::env::var("PATH").unwrap_or_default())];
    let handle = engine::spawn(pipeline, plan, cfg).expect("spawn");
    let server = attach::serve(handle.clone(), trackside::access::Access::owner_only()).expect("serve");
    (dir, handle, server)
}

/// Takes every delivery until the run's end, noting when each event came.
async fn drain(mut events: Subscription, when: bool) -> HashMap<u64, Instant> {
    let mut seen = HashMap::new();
    while let Some(item) = events.next().await {
        if let Delivery::Event(ev) = item {
            if when {
                seen.insert(ev.seq, Instant::now());
            }
            if matches!(ev.kind, EventKind::RunFinished { .. }) {
                break;
            }
        }
    }
    seen
}

fn delivery_delay(rt: &tokio::runtime::Runtime) {
    // 100 lines every 10 ms: 10,000 lines a second for 3 s.
    let yaml = "name: paced\njobs:\n  paced:\n    steps:\n      - script: 'n=0; while [ $n -lt 30000 ]; do seq $n $((n+99)); n=$((n+100)); sleep 0.01; done'\n";
    rt.block_on(async {
        let (_dir, handle, server) = engine(yaml);
        let remote = RemoteLink::connect(handle.run_dir(), true).await.expect("connect");
        let local = Link::subscribe(&handle, 0).await.expect("local");
        let over = remote.subscribe(0).await.expect("remote");
        let (a, b) = (tokio::spawn(drain(local, true)), tokio::spawn(drain(over, true)));
        handle.start().await.expect("start");
        let (a, b) = (a.await.expect("local"), b.await.expect("remote"));
        let samples: Vec<Duration> = a
            .iter()
            .filter_map(|(seq, t)| b.get(seq).map(|u| u.saturating_duration_since(*t)))
            .collect();
        stats(
            "event delivery delay through the socket (10,000 lines/s)",
            samples,
            "p99 < 5 ms",
        );
        server.close().await;
        handle.shutdown().await;
    });
}

fn throughput(rt: &tokio::runtime::Runtime) {
    let yaml = "name: loud\njobs:\n  loud:\n    steps:\n      - script: 'seq 1 200000'\n";
    let mut with = [Vec::new(), Vec::new(), Vec::new()];
    for round in 0..16 {
        for (i, clients) in [Clients::None, Clients::Processes, Clients::Tasks]
            .into_iter()
            .enumerate()
        {
            let took = rt.block_on(async {
                let (dir, handle, server) = engine(yaml);
                let mut readers = Vec::new();
                let mut processes = Vec::new();
                for _ in 0..5 {
                    match clients {
                        Clients::None => {}
                        Clients::Tasks => {
                            let remote = RemoteLink::connect(handle.run_dir(), true).await.expect("connect");
                            let events = remote.subscribe(0).await.expect("subscribe");
                            readers.push(tokio::spawn(drain(events, false)));
                        }
                        Clients::Processes => processes.push(
                            std::process::Command::new(env!("CARGO_BIN_EXE_trackside"))
                                .args(["--state-dir"])
                                .arg(dir.path().join("state"))
                                .args(["attach", handle.run_id(), "--headless", "--from-start"])
                                .stdout(std::process::Stdio::null())
                                .stderr(std::process::Stdio::null())
                                .spawn()
                                .expect("trackside attach"),
                        ),
                    }
                }
                // Every client is attached before the run starts.
                let want = match clients {
                    Clients::None => 0,
                    _ => 5,
                };
                server.attached(want).await;
                let t = Instant::now();
                handle.start().await.expect("start");
                handle.wait().await.expect("summary");
                let took = t.elapsed();
                for r in readers {
                    let _ = r.await;
                }
                for mut p in processes {
                    let _ = tokio::task::spawn_blocking(move || p.wait()).await;
                }
                server.close().await;
                handle.shutdown().await;
                took
            });
            // The first round warms the page cache and the allocator.
            if round > 0 {
                with[i].push(took);
            }
        }
    }
    let median = |v: &[Duration]| {
        let mut v = v.to_vec();
        v.sort();
        v[v.len() / 2]
    };
    stats("a run of 200,000 lines, no client attached", with[0].clone(), "");
    stats(
        "the same, 5 `trackside attach --headless` processes",
        with[1].clone(),
        "< 1.05x",
    );
    stats("the same, 5 clients as tasks in the run's process", with[2].clone(), "");
    let zero = median(&with[0]).as_secs_f64();
    println!(
        "  5 attached processes vs none: {:.3}x the wall time; 5 in-process clients: {:.3}x",
        median(&with[1]).as_secs_f64() / zero,
        median(&with[2]).as_secs_f64() / zero
    );
}

#[derive(Clone, Copy)]
enum Clients {
    None,
    /// `trackside attach --headless`, as people attach.
    Processes,
    /// RemoteLinks in this process, on the run's own runtime.
    Tasks,
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    delivery_delay(&rt);
    throughput(&rt);
}
