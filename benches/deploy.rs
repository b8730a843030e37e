//! Deployment benchmarks behind docs/BENCHMARKS.md.
//! Run: `cargo bench --bench deploy` (uses `wrk` when installed: apt-get install wrk).

#[path = "support/stats.rs"]
mod stats;
use stats::{peak_rss_kib, stats};

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use trackside::deploy::demo::DemoService;
use trackside::deploy::haproxy::Haproxy;
use trackside::deploy::replica::free_port;
use trackside::deploy::router::{Pool, Router};

async fn backend(stop: &CancellationToken) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let s = DemoService {
        version: "v1".into(),
        error_rate: 0.0,
        latency: Duration::ZERO,
    };
    tokio::spawn(s.serve(l, stop.clone()));
    addr
}

/// Open-loop: `rps` requests per second for `secs`, each timed.
async fn open_loop(target: SocketAddr, rps: u32, secs: u32) -> Vec<Duration> {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let uri: hyper::Uri = format!("http://{target}/").parse().expect("uri");
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rps)));
    let mut tasks = Vec::new();
    for _ in 0..rps * secs {
        tick.tick().await;
        let (client, uri) = (client.clone(), uri.clone());
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let r = client.get(uri).await.expect("request");
            let _ = r.into_body().collect().await;
            t.elapsed()
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("task"));
    }
    out
}

fn quantile(v: &mut [Duration], q: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * q).round() as usize]
}

fn wrk(target: SocketAddr) -> Option<String> {
    let out = std::process::Command::new("wrk")
        .args(["-t2", "-c8", "-d5s", "--latency"])
        .arg(format!("http://{target}/"))
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn wrk_line(report: &str, key: &str) -> String {
    report
        .lines()
        .find(|l| l.trim_start().starts_with(key))
        .map(|l| l.trim().to_string())
        .unwrap_or_else(|| format!("{key}: not reported"))
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!("trackside deploy benchmarks (release build)");
    rt.block_on(async {
        let stop = CancellationToken::new();
        let direct = backend(&stop).await;
        let router = Router::new(false);
        router.set_backends(Pool::Stable, vec![direct]);
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let proxied = l.local_addr().expect("addr");
        tokio::spawn(router.clone().serve(l, stop.clone()));

        added_latency("the router", direct, proxied).await;

        // The same through HAProxy as trackside runs it (its config, its
        // request log to trackside), for comparison.
        let dir = tempfile::tempdir().expect("tempdir");
        let listen: SocketAddr = format!("127.0.0.1:{}", free_port().expect("port")).parse().expect("addr");
        match Haproxy::start("haproxy", dir.path(), "web", listen, 1, "bench", stop.clone()).await {
            Ok(h) => {
                h.set_backends(Pool::Stable, &[direct]).await.expect("backends");
                h.set_weight(0).await.expect("weight");
                added_latency("HAProxy", direct, listen).await;
                h.shutdown().await;
            }
            Err(e) => println!("HAProxy: SKIPPED ({e})"),
        }

        // Abort to 0%: the weight store every request reads.
        let mut samples = Vec::new();
        for _ in 0..1000 {
            router.set_weight(500);
            let t = Instant::now();
            router.set_weight(0);
            let seen = router.choose(None, None, 0).pool;
            samples.push(t.elapsed());
            assert_eq!(seen, Pool::Stable);
        }
        stats("abort: weight to 0%, seen by the next routing decision", samples, "< 1 s");

        // An hour of measurements: 100 requests/s into each pool.
        let rss = peak_rss_kib();
        let history = Router::new(false);
        let t = Instant::now();
        for i in 0..360_000u64 {
            history.record(Pool::Stable, Duration::from_micros(2000 + i % 1000), i % 97 == 0);
            history.record(Pool::Canary, Duration::from_micros(2100 + i % 1000), i % 89 == 0);
        }
        println!(
            "1 hour at 100 req/s per pool recorded in {:?}; peak RSS grew by {} KiB (recent samples are capped at 120,000 per pool; totals and histograms are fixed-size)",
            t.elapsed(),
            peak_rss_kib() - rss
        );
        stop.cancel();
    });
    rt.block_on(abort_through_the_engine("built-in router", ""));
    if std::process::Command::new("haproxy").arg("-v").output().is_ok() {
        rt.block_on(abort_through_the_engine("HAProxy", "      router: haproxy\n"));
    } else {
        println!("abort through the engine with HAProxy: SKIPPED (apt-get install haproxy)");
    }
}

/// p99 and p50 added by `name` at 1,000 requests/s (open loop, 10 s, 3
/// rounds, alternating with the direct path), then wrk's closed loop.
async fn added_latency(name: &str, direct: SocketAddr, via: SocketAddr) {
    for round in 0..3 {
        let mut d = open_loop(direct, 1000, 10).await;
        let mut p = open_loop(via, 1000, 10).await;
        println!(
            "round {round}: 1,000 req/s for 10 s: direct p50 {:?} p99 {:?}; via {name} p50 {:?} p99 {:?}; added at p99 {:?} (target < 1 ms)",
            quantile(&mut d, 0.5),
            quantile(&mut d, 0.99),
            quantile(&mut p, 0.5),
            quantile(&mut p, 0.99),
            quantile(&mut p, 0.99).saturating_sub(quantile(&mut d, 0.99))
        );
    }
    // wrk: closed loop, 8 connections, as fast as it goes.
    match (wrk(direct), wrk(via)) {
        (Some(a), Some(b)) => {
            for (path, r) in [("direct".to_string(), a), (format!("via {name}"), b)] {
                println!(
                    "wrk {path:<16} {} | {} | {}",
                    wrk_line(&r, "Requests/sec"),
                    wrk_line(&r, "50%"),
                    wrk_line(&r, "99%")
                );
            }
        }
        _ => println!("wrk: not installed (apt-get install wrk); skipped"),
    }
}

/// From `EngineHandle::rollout(Abort)` at a gate to the router at 0%
/// (the log line the rollout writes once the router took the weight: an
/// atomic store, or HAProxy's runtime API answering).
async fn abort_through_the_engine(name: &str, router: &str) {
    use trackside::deploy::rollout::Command;
    use trackside::engine::{EngineConfig, EventKind};
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = env!("CARGO_BIN_EXE_trackside");
    let yaml = |v: &str| {
        format!(
            "name: b\njobs:\n  web:\n    deploy:\n      service: web\n      listen: 127.0.0.1:0\n      version: {v}\n      run: \"{bin} demo-service --port ${{PORT}} --version {v} --latency-ms 1\"\n      health: {{http: /healthz, interval: 0.05, success_threshold: 1}}\n{router}      traffic: {{rps: 200}}\n      abort_delay: 0\n      strategy:\n        canary:\n          steps:\n            - set_weight: 50\n            - pause: {{}}\n"
        )
    };
    let mut samples = Vec::new();
    for (i, v) in ["v1", "v2", "v2", "v2", "v2", "v2", "v2"].iter().enumerate() {
        let file = dir.path().join(format!("p{i}.yml"));
        let text = yaml(v);
        std::fs::write(&file, &text).expect("write");
        let (pipeline, _) = trackside::pipeline::parse_source(&file, text, &Default::default()).expect("valid");
        let plan = trackside::pipeline::Plan::build(&pipeline).expect("plan");
        let cfg = EngineConfig::new(
            trackside::store::new_run_id(),
            dir.path().join("state"),
            file,
            dir.path().to_path_buf(),
        );
        let handle = trackside::engine::spawn(pipeline, plan, cfg).expect("spawn");
        let mut rx = handle.subscribe_live();
        handle.start().await.expect("start");
        if i == 0 {
            handle.wait().await.expect("first deploy");
            continue;
        }
        loop {
            let ev = rx.recv().await.expect("event");
            if matches!(&ev.kind, EventKind::Rollout { status, .. } if status.phase == "gate") {
                break;
            }
        }
        let t = Instant::now();
        handle.rollout("web", Command::Abort).await.expect("abort");
        loop {
            let ev = rx.recv().await.expect("event");
            if matches!(&ev.kind, EventKind::LogLine { line, .. } if line == "weight: canary 0.0%") {
                break;
            }
        }
        samples.push(t.elapsed());
        handle.wait().await.expect("aborted run");
    }
    stats(
        &format!("abort through the engine ({name}): command to router at 0%"),
        samples,
        "< 1 s",
    );
}
