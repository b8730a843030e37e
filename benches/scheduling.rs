//! `-j auto` against fixed limits on a mixed pipeline: CPU-bound,
//! memory-bound and I/O-bound jobs, run by the release binary as a user
//! would. Run: `cargo bench --bench scheduling`.
//!
//! For each limit (`auto`, the cores, twice the cores) it reports the
//! run's wall time and the peak memory in use on the machine during the run
//! (`MemTotal - MemAvailable` sampled every 50 ms, less what was in use
//! before), medians of a few runs. The machine is shared: compare the
//! medians of one sitting, not across machines.

#[path = "support/stats.rs"]
mod stats;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Jobs of each kind.
const CPU_JOBS: usize = 8;
const MEMORY_JOBS: usize = 6;
const IO_JOBS: usize = 4;
const RUNS: usize = 5;

fn pipeline() -> String {
    let mut s = String::from("name: mixed\njobs:\n");
    for i in 0..CPU_JOBS {
        // About a second of one core in dash.
        s.push_str(&format!(
            "  cpu-{i}:\n    steps: [{{script: ['i=0; while [ $i -lt 400000 ]; do i=$((i+1)); done']}}]\n"
        ));
    }
    for i in 0..MEMORY_JOBS {
        // dd's 1 GiB buffer, touched: 1 GiB resident for a moment.
        s.push_str(&format!(
            "  mem-{i}:\n    steps: [{{script: ['dd if=/dev/zero of=/dev/null bs=1G count=3 2>/dev/null']}}]\n"
        ));
    }
    for i in 0..IO_JOBS {
        s.push_str(&format!(
            "  io-{i}:\n    steps: [{{script: ['dd if=/dev/zero of=out bs=1M count=256 conv=fsync 2>/dev/null; rm -f out']}}]\n"
        ));
    }
    s
}

fn in_use() -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    field("MemTotal:").saturating_sub(field("MemAvailable:"))
}

/// One run: wall time and the peak memory in use above what was before.
fn run(jobs: &str, file: &std::path::Path, state: &std::path::Path) -> (Duration, u64) {
    let before = in_use();
    let peak = Arc::new(AtomicU64::new(before));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(in_use(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let t = Instant::now();
    let status = Command::new(env!("CARGO_BIN_EXE_trackside"))
        .args(["run", "--headless", "--no-watch", "-j", jobs])
        .arg(file)
        .env("TRACKSIDE_STATE_DIR", state)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run trackside");
    let wall = t.elapsed();
    done.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    assert!(status.success(), "-j {jobs}: the mixed pipeline failed");
    (wall, peak.load(Ordering::Relaxed).saturating_sub(before))
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "trackside scheduling benchmark (release build): {CPU_JOBS} CPU-bound, {MEMORY_JOBS} memory-bound \
         (1 GiB each), {IO_JOBS} I/O-bound jobs; {cores} cores; median of {RUNS} runs"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("mixed.yml");
    std::fs::write(&file, pipeline()).expect("write");
    let limits = [
        ("auto".to_string(), "-j auto".to_string()),
        (cores.to_string(), format!("-j {cores} (cores)")),
        ((2 * cores).to_string(), format!("-j {} (2 x cores)", 2 * cores)),
    ];
    // One run to warm the page cache and the binary, then the limits in
    // turn, so a drift of the machine falls on each alike.
    let state = dir.path().join("state");
    run("auto", &file, &state);
    let mut samples = vec![(Vec::new(), Vec::new()); limits.len()];
    for _ in 0..RUNS {
        for ((jobs, _), (walls, peaks)) in limits.iter().zip(&mut samples) {
            let (wall, peak) = run(jobs, &file, &state);
            walls.push(wall);
            peaks.push(peak);
        }
    }
    for ((_, name), (walls, mut peaks)) in limits.into_iter().zip(samples) {
        peaks.sort_unstable();
        let peak = peaks[peaks.len() / 2];
        stats::stats(
            &format!(
                "{name}: wall time; peak memory {:.1} GiB",
                peak as f64 / f64::from(1u32 << 30)
            ),
            walls,
            "-j auto no slower than -j cores",
        );
    }
}
