//! A failure's signature: the line that told it, with what changes from
//! one run to the next (numbers, hex ids, paths, timestamps) normalised,
//! and its class, hashed. One signature groups one kind of failure across
//! runs: "seen 5 times in 30 days, first in run X".

use std::sync::OnceLock;

use regex::Regex;
use sha2::{Digest, Sha256};

/// `line` as the signature sees it: paths as `<path>`, hex ids as `<hex>`,
/// numbers as `<n>` (timestamps, ports, line numbers, durations), spaces
/// squeezed.
pub fn normalise(line: &str) -> String {
    static RES: OnceLock<Option<[Regex; 3]>> = OnceLock::new();
    let res = RES.get_or_init(|| {
        Some([
            Regex::new(r"(?:[A-Za-z]:)?(?:[\w.\-~]*/)+[\w.\-]+").ok()?,
            Regex::new(r"\b(?:0x)?[0-9a-fA-F]*[a-fA-F][0-9a-fA-F]*[0-9][0-9a-fA-F]*\b|\b[0-9a-fA-F]*[0-9][0-9a-fA-F]*[a-fA-F][0-9a-fA-F]*\b").ok()?,
            Regex::new(r"\d+").ok()?,
        ])
    });
    let Some([paths, hex, numbers]) = res else {
        return line.trim().to_string();
    };
    let s = paths.replace_all(line, "<path>");
    let s = hex.replace_all(&s, |c: &regex::Captures| {
        if c[0].len() >= 6 {
            "<hex>".to_string()
        } else {
            c[0].to_string()
        }
    });
    let s = numbers.replace_all(&s, "<n>");
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The signature of a failure of `class` told by `line`.
pub fn of(class: &str, line: &str) -> String {
    let d = Sha256::digest(format!("{class}\n{}", normalise(line)).as_bytes());
    d.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_changes_between_runs_does_not_change_the_signature() {
        let a = "2026-12-05T10:01:02Z ERROR connect 10.0.0.7:5432 failed after 3012ms (container 4f9a1c2b77e0) in /tmp/run-8812/work/db.py";
        let b = "2026-12-06T23:59:59Z ERROR connect 10.0.0.9:5432 failed after 118ms (container 0b1d22aa9f31) in /tmp/run-1/work/db.py";
        assert_eq!(
            of("network", a),
            of("network", b),
            "{} / {}",
            normalise(a),
            normalise(b)
        );
        assert_ne!(of("network", a), of("script", a), "the class is part of it");
        assert_ne!(of("network", a), of("network", "ERROR disk full"));
        assert_eq!(normalise("took 12 ms"), "took <n> ms");
        assert_eq!(normalise("see ./src/lib.rs:42"), "see <path>:<n>");
        assert_eq!(normalise("cafe is not a hex id"), "cafe is not a hex id");
    }
}
