//! Content-addressed store benchmarks behind docs/BENCHMARKS.md.
//! Run: `cargo bench --bench store`.

#[path = "support/stats.rs"]
mod stats;
use stats::{peak_rss_kib, stats};

use std::io::Write;
use std::time::Instant;

use trackside::store::manifest;
use trackside::store::objects::ObjectStore;

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    println!("trackside store benchmarks (release build)");
    let dir = tempfile::tempdir().expect("tempdir");
    let store = ObjectStore::open(&dir.path().join("objects")).expect("store");

    // 1 GiB of incompressible bytes, written once.
    let big = dir.path().join("big.bin");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&big).expect("create"));
        let mut rng = fastrand::Rng::with_seed(1);
        let mut chunk = vec![0u8; 1 << 20];
        for _ in 0..1024 {
            rng.fill(&mut chunk);
            f.write_all(&chunk).expect("write");
        }
    }
    let rss_before = peak_rss_kib();
    let gib = 1024.0 * 1024.0 * 1024.0;
    let mut puts = Vec::new();
    let mut restores = Vec::new();
    for i in 0..3 {
        // A fresh store each round, so every put really writes.
        let s = ObjectStore::open(&dir.path().join(format!("round{i}"))).expect("store");
        let t = Instant::now();
        let (d, size) = s.put_file(&big).expect("put");
        puts.push(t.elapsed());
        assert_eq!(size, 1 << 30);
        let out = dir.path().join(format!("restored{i}"));
        let t = Instant::now();
        s.restore(&d, &out).expect("restore");
        restores.push(t.elapsed());
        let _ = std::fs::remove_file(&out);
        let _ = std::fs::remove_dir_all(dir.path().join(format!("round{i}")));
    }
    let rate = |d: &std::time::Duration| gib / d.as_secs_f64() / 1e6;
    let mut p = puts.clone();
    p.sort();
    let mut r = restores.clone();
    r.sort();
    stats("store a 1 GiB artifact (hash + copy + fsync)", puts, ">= 500 MB/s");
    println!("  median {:.0} MB/s", rate(&p[1]));
    stats("restore a 1 GiB artifact (copy + verify)", restores, ">= 500 MB/s");
    println!("  median {:.0} MB/s", rate(&r[1]));
    println!(
        "  peak RSS grew by {} KiB across those (constant memory: a 256 KiB buffer)",
        peak_rss_kib() - rss_before
    );

    // An artifact of 10,000 small files.
    let ws = dir.path().join("ws");
    for i in 0..10_000 {
        let d = ws.join(format!("d{}", i % 100));
        std::fs::create_dir_all(&d).expect("mkdir");
        std::fs::write(d.join(format!("f{i}.txt")), format!("file {i}\n")).expect("write");
    }
    let mut collects = Vec::new();
    let mut restores = Vec::new();
    for i in 0..3 {
        let t = Instant::now();
        let m = manifest::collect(&store, &ws, &["**".to_string()], &[]).expect("collect");
        collects.push(t.elapsed());
        assert_eq!(m.entries.len(), 10_000);
        let out = dir.path().join(format!("small{i}"));
        let t = Instant::now();
        manifest::restore(&store, &m, &out).expect("restore");
        restores.push(t.elapsed());
    }
    stats(
        "collect an artifact of 10,000 small files (one syncfs per set)",
        collects,
        "report",
    );
    stats("restore an artifact of 10,000 small files", restores, "report");

    cache_key_of_5000_inputs(dir.path());
    demo_rerun(dir.path());
}

/// The input part of a cache key (listing, hashing, encoding) for 5,000
/// files of 4 KiB: the target is under 2% of a 10 s job, 200 ms.
fn cache_key_of_5000_inputs(dir: &std::path::Path) {
    use trackside::store::cache::{Components, hash_inputs};
    let project = dir.join("inputs");
    let mut files = Vec::new();
    let mut rng = fastrand::Rng::with_seed(7);
    let mut body = vec![0u8; 4096];
    for i in 0..5_000 {
        let rel = std::path::PathBuf::from(format!("src/m{}/f{i}.rs", i % 50));
        std::fs::create_dir_all(project.join(rel.parent().expect("parent"))).expect("mkdir");
        rng.fill(&mut body);
        std::fs::write(project.join(&rel), &body).expect("write");
        files.push(rel);
    }
    let mut samples = Vec::new();
    for _ in 0..7 {
        let t = Instant::now();
        let hashed = hash_inputs(&project, &files, &["src/**".to_string()]).expect("hash");
        let mut c = Components::new();
        for (p, d) in hashed {
            c.insert(format!("input:{p}"), d.to_string());
        }
        let key = c.key();
        samples.push(t.elapsed());
        assert_eq!(key.len(), 64);
    }
    stats(
        "cache key over 5,000 input files (20 MB)",
        samples,
        "< 200 ms (2% of 10 s)",
    );
}

/// examples/demo.yml run again with nothing changed, against --no-cache.
fn demo_rerun(dir: &std::path::Path) {
    let bin = env!("CARGO_BIN_EXE_trackside");
    let project = dir.join("demo");
    std::fs::create_dir_all(&project).expect("mkdir");
    let demo = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/demo.yml");
    std::fs::copy(demo, project.join("demo.yml")).expect("copy demo");
    let state = dir.join("demo-state");
    let run = |extra: &[&str]| {
        let t = Instant::now();
        let out = std::process::Command::new(bin)
            .args(["run", "--headless", "--no-watch", "--approve", "deploy-staging"])
            .arg(project.join("demo.yml"))
            .args(extra)
            .env("TRACKSIDE_STATE_DIR", &state)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run demo");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
        t.elapsed()
    };
    run(&[]); // fills the cache
    let mut uncached = Vec::new();
    let mut cached = Vec::new();
    for _ in 0..5 {
        uncached.push(run(&["--no-cache"]));
        cached.push(run(&[]));
    }
    let median = |v: &[std::time::Duration]| {
        let mut v = v.to_vec();
        v.sort();
        v[v.len() / 2]
    };
    let (u, c) = (median(&uncached), median(&cached));
    stats("examples/demo.yml, --no-cache", uncached, "report");
    stats(
        "examples/demo.yml re-run, nothing changed (cache hits)",
        cached,
        "report",
    );
    println!("  speed-up from caching: {:.1}x", u.as_secs_f64() / c.as_secs_f64());
}
