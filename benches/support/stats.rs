//! The one way the benchmarks report: median, p99 and max of repeated samples.

use std::time::Duration;

pub fn stats(name: &str, mut samples: Vec<Duration>, target: &str) {
    samples.sort();
    let pick = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    println!(
        "{name:<58} n={:<5} median {:>10.3?}  p99 {:>10.3?}  max {:>10.3?}   target: {target}",
        samples.len(),
        pick(0.5),
        pick(0.99),
        pick(1.0)
    );
}

/// The process's peak resident memory so far, in KiB (-1 when unknown).
#[allow(dead_code)]
pub fn peak_rss_kib() -> i64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(-1)
}
