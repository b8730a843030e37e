//! Content-addressed store benchmarks behind docs/BENCHMARKS.md.
//! Run: `cargo bench --bench store`.

#[path = "support/stats.rs"]
mod stats;
use stats::stats;

use std::io::Write;
use std::time::Instant;

use trackside::store::manifest;
use trackside::store::objects::ObjectStore;

fn peak_rss_kib() -> i64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(-1)
}

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
    stats("collect an artifact of 10,000 small files", collects, "report");
    stats("restore an artifact of 10,000 small files", restores, "report");
}
