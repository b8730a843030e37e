//! Reading a long attempt log in pieces: a window of entries, or the
//! entries that match a search, without holding the log in memory.
//!
//! The one idea: a sparse index of byte offsets (one every
//! [`CHECKPOINT_EVERY`] entries), filled in as reads pass through the file,
//! so reading lines 900,000-905,000 of a 120 MB log seeks near them instead
//! of parsing everything before them, and a reader's memory is bounded by
//! what it asked for (the window, or the hits up to a cap), never by the log.

use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::Path;

use super::{IoFailure, LogEntry, io_err, parse_log_line};

/// Entries between two remembered offsets.
pub const CHECKPOINT_EVERY: usize = 1024;

/// Longest record line read whole; the rest of a longer one is skipped (the
/// executors split output at 64 KiB, so only a damaged file has one).
const MAX_RECORD: usize = 1 << 20;

/// Where every [`CHECKPOINT_EVERY`]th entry of one log file starts.
#[derive(Debug, Default, Clone)]
pub struct LogIndex {
    /// `offsets[k]` is the byte offset of entry `k * CHECKPOINT_EVERY`.
    offsets: Vec<u64>,
}

pub use crate::protocol::query::LogHits as Hits;

impl LogIndex {
    /// Entries `from..from + count` of the log at `path` (fewer at its end).
    pub fn read(&mut self, path: &Path, from: usize, count: usize) -> Result<Vec<LogEntry>, IoFailure> {
        let mut out = Vec::with_capacity(count.min(CHECKPOINT_EVERY * 8));
        self.scan(path, from, from.saturating_add(count), |_, e| {
            out.push(e);
            true
        })?;
        Ok(out)
    }

    /// The same, stopping once the entries' text passes `max_text` bytes
    /// (the entry that passes it is kept: at least one is returned) or
    /// `max_lines` entries; `true` when it stopped there before `count`.
    pub fn read_within(
        &mut self,
        path: &Path,
        from: usize,
        count: usize,
        max_lines: usize,
        max_text: usize,
    ) -> Result<(Vec<LogEntry>, bool), IoFailure> {
        let want = count.min(max_lines);
        let mut out = Vec::with_capacity(want.min(CHECKPOINT_EVERY * 8));
        let mut text = 0usize;
        let mut cut = false;
        self.scan(path, from, from.saturating_add(want), |_, e| {
            if text >= max_text {
                cut = true;
                return false;
            }
            text = text.saturating_add(e.text.len() + e.step.len());
            out.push(e);
            true
        })?;
        let cut = cut || (want < count && out.len() == want);
        Ok((out, cut))
    }

    /// Entry numbers in `from..to` whose text (a step marker's name) holds
    /// `needle`, ignoring case; at most `max` of them.
    pub fn search(&mut self, path: &Path, from: usize, to: usize, needle: &str, max: usize) -> Result<Hits, IoFailure> {
        let needle = needle.to_lowercase();
        let mut hits = Hits::default();
        // One buffer for every line's lower case: no allocation per line.
        let mut lower = String::new();
        self.scan(path, from, to, |i, e| {
            let text = if e.stream == "step" { &e.step } else { &e.text };
            lower.clear();
            lower.extend(text.chars().flat_map(char::to_lowercase));
            if lower.contains(&needle) {
                if hits.lines.len() >= max {
                    hits.capped = true;
                    return false;
                }
                hits.lines.push(i);
            }
            true
        })?;
        Ok(hits)
    }

    /// Calls `each` with entries `from..to` in order until it returns false,
    /// starting at the nearest known offset and remembering new ones.
    fn scan(
        &mut self,
        path: &Path,
        from: usize,
        to: usize,
        mut each: impl FnMut(usize, LogEntry) -> bool,
    ) -> Result<(), IoFailure> {
        if from >= to {
            return Ok(());
        }
        let file = File::open(path).map_err(io_err("cannot read", path))?;
        let mut reader = BufReader::with_capacity(64 * 1024, file);
        let known = (from / CHECKPOINT_EVERY).min(self.offsets.len().saturating_sub(1));
        let (mut entry, mut offset) = match self.offsets.get(known) {
            Some(&at) => (known * CHECKPOINT_EVERY, at),
            None => (0, 0),
        };
        reader
            .seek(SeekFrom::Start(offset))
            .map_err(io_err("cannot read", path))?;
        let mut record = Vec::new();
        while entry < to {
            let start = offset;
            record.clear();
            let (taken, complete) = read_record(&mut reader, &mut record).map_err(io_err("cannot read", path))?;
            if taken == 0 {
                break;
            }
            offset += taken as u64;
            // A line still being written is not an entry yet.
            if !complete {
                break;
            }
            let Some(e) = std::str::from_utf8(&record).ok().and_then(parse_log_line) else {
                continue;
            };
            if entry % CHECKPOINT_EVERY == 0 && entry / CHECKPOINT_EVERY == self.offsets.len() {
                self.offsets.push(start);
            }
            if entry >= from && !each(entry, e) {
                break;
            }
            entry += 1;
        }
        Ok(())
    }
}

/// Reads one record line into `buf` (without its newline, at most
/// [`MAX_RECORD`] bytes of it): the bytes taken from the file, and whether
/// the line was complete (ended by a newline).
fn read_record(reader: &mut impl BufRead, buf: &mut Vec<u8>) -> std::io::Result<(usize, bool)> {
    let mut taken = 0;
    loop {
        let chunk = reader.fill_buf()?;
        if chunk.is_empty() {
            return Ok((taken, false));
        }
        let (used, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(n) => (n + 1, true),
            None => (chunk.len(), false),
        };
        let keep = (used - usize::from(done)).min(MAX_RECORD.saturating_sub(buf.len()));
        buf.extend_from_slice(&chunk[..keep]);
        reader.consume(used);
        taken += used;
        if done {
            return Ok((taken, true));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn log(lines: usize) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job.1.log");
        let mut f = std::io::BufWriter::new(File::create(&path).unwrap());
        for i in 0..lines {
            if i % 500 == 0 {
                writeln!(f, "{i}\tstep\tStep-{i}\t").unwrap();
            } else {
                writeln!(f, "{i}\tout\tmain\tline {i}{}", if i % 7 == 0 { " Needle" } else { "" }).unwrap();
            }
        }
        (dir, path)
    }

    #[test]
    fn a_window_far_into_the_log_is_read_alone() {
        let (_d, path) = log(10_000);
        let mut index = LogIndex::default();
        let got = index.read(&path, 8_000, 5).unwrap();
        let text: Vec<&str> = got.iter().map(|e| e.text.as_str()).collect();
        // 8001 is a multiple of 7: it has the needle.
        assert_eq!(text, ["", "line 8001 Needle", "line 8002", "line 8003", "line 8004"]);
        assert_eq!(got[0].step, "Step-8000");
        // The pass remembered where later entries start: the next read
        // starts there, and agrees.
        assert_eq!(index.offsets.len(), 8_000 / CHECKPOINT_EVERY + 1);
        assert_eq!(index.read(&path, 9_999, 10).unwrap()[0].text, "line 9999");
        assert_eq!(index.read(&path, 3, 2).unwrap()[1].text, "line 4");
        assert!(index.read(&path, 10_000, 10).unwrap().is_empty());
    }

    #[test]
    fn search_finds_text_and_step_names_in_range_and_stops_at_its_cap() {
        let (_d, path) = log(3_000);
        let mut index = LogIndex::default();
        let hits = index.search(&path, 0, 3_000, "needle", 10_000).unwrap();
        assert_eq!(
            hits.lines.len(),
            (1..3_000).filter(|i| i % 7 == 0 && i % 500 != 0).count()
        );
        assert!(!hits.capped);
        assert_eq!(
            index.search(&path, 0, 3_000, "step-1500", 10).unwrap().lines,
            vec![1_500]
        );
        let capped = index.search(&path, 100, 200, "NEEDLE", 3).unwrap();
        assert_eq!(capped.lines, vec![105, 112, 119]);
        assert!(capped.capped);
    }

    #[test]
    fn a_torn_last_line_and_damaged_lines_are_not_entries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        let long = "x".repeat(MAX_RECORD * 2);
        std::fs::write(
            &path,
            format!("1\tout\tmain\tone\nnot a record\n2\tout\tmain\t{long}\n3\tout\tmain\tthree\n4\tout\tmain\tto"),
        )
        .unwrap();
        let got = LogIndex::default().read(&path, 0, 100).unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].text, "one");
        assert!(got[1].text.len() < MAX_RECORD);
        assert_eq!(got[2].text, "three");
    }
}
