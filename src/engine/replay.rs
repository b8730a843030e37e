//! What a run keeps of its events to replay to a front-end that subscribes
//! late (an attached UI) or falls behind: every job and run transition,
//! the newest log lines and rollout samples, and the newest report of the
//! swarm's nodes. Older log lines are in the
//! run's record; a replay that lacks some says so (a gap in the numbers).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::protocol::{Event, EventKind};

/// Log lines kept to replay (about 1.5 MB of typical lines).
pub const LOG_LINES: usize = 10_000;
/// Rollout samples kept: ten minutes at two a second.
pub const SAMPLES: usize = 1_200;

#[derive(Default)]
pub struct Replay {
    transitions: Vec<Arc<Event>>,
    logs: VecDeque<Arc<Event>>,
    samples: VecDeque<Arc<Event>>,
    /// The newest `cluster_nodes`: each one says all there is.
    cluster: Option<Arc<Event>>,
    next_seq: u64,
}

impl Replay {
    /// The number the next event will have.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    pub fn push(&mut self, ev: Arc<Event>) {
        self.next_seq = self.next_seq.max(ev.seq + 1);
        let (ring, cap) = match ev.kind {
            EventKind::LogLine { .. } => (&mut self.logs, LOG_LINES),
            EventKind::Rollout { .. } => (&mut self.samples, SAMPLES),
            EventKind::ClusterNodes { .. } => {
                self.cluster = Some(ev);
                return;
            }
            _ => {
                self.transitions.push(ev);
                return;
            }
        };
        if ring.len() == cap {
            ring.pop_front();
        }
        ring.push_back(ev);
    }

    /// The kept events numbered `from` or later, in order.
    pub fn since(&self, from: u64) -> Vec<Arc<Event>> {
        let tail = |events: &VecDeque<Arc<Event>>| {
            let start = events.partition_point(|e| e.seq < from);
            events.range(start..).cloned().collect::<Vec<_>>()
        };
        let start = self.transitions.partition_point(|e| e.seq < from);
        let mut out = self.transitions[start..].to_vec();
        out.extend(tail(&self.logs));
        out.extend(tail(&self.samples));
        out.extend(self.cluster.iter().filter(|e| e.seq >= from).cloned());
        out.sort_unstable_by_key(|e| e.seq);
        out
    }
}

/// How many lines each attempt's log has so far (step starts included):
/// the number the next line gets.
#[derive(Default)]
pub struct LineCounts(HashMap<String, HashMap<u32, u64>>);

impl LineCounts {
    pub fn next(&mut self, job: &str, attempt: u32) -> u64 {
        // Looked up by reference: a line costs no allocation.
        let attempts = match self.0.get_mut(job) {
            Some(a) => a,
            None => self.0.entry(job.to_string()).or_default(),
        };
        let n = attempts.entry(attempt).or_default();
        *n += 1;
        *n - 1
    }

    /// The number the attempt's next line will get.
    pub fn peek(&self, job: &str, attempt: u32) -> u64 {
        self.0.get(job).and_then(|a| a.get(&attempt)).copied().unwrap_or(0)
    }

    /// An attempt that has ended writes no more lines.
    pub fn forget(&mut self, job: &str, attempt: u32) {
        if let Some(a) = self.0.get_mut(job) {
            a.remove(&attempt);
            if a.is_empty() {
                self.0.remove(job);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Stream;

    fn ev(seq: u64, kind: EventKind) -> Arc<Event> {
        Arc::new(Event { seq, ts: 0, kind })
    }
    fn line(seq: u64) -> Arc<Event> {
        ev(
            seq,
            EventKind::LogLine {
                job: "j".into(),
                attempt: 1,
                step: "s".into(),
                stream: Stream::Stdout,
                line: format!("{seq}"),
                line_no: seq,
            },
        )
    }

    #[test]
    fn transitions_are_all_kept_and_log_lines_only_the_newest() {
        let mut r = Replay::default();
        r.push(ev(0, EventKind::JobQueued { job: "j".into() }));
        for seq in 1..=(LOG_LINES as u64 + 5) {
            r.push(line(seq));
        }
        let last = LOG_LINES as u64 + 6;
        r.push(ev(
            last,
            EventKind::JobStarted {
                job: "j".into(),
                attempt: 1,
            },
        ));
        let all = r.since(0);
        let seqs: Vec<u64> = all.iter().map(|e| e.seq).collect();
        // The queued event, then the newest LOG_LINES lines (1..=5 dropped), then the start.
        assert_eq!(seqs.first(), Some(&0));
        assert_eq!(seqs[1], 6);
        assert_eq!(seqs.last(), Some(&last));
        assert_eq!(seqs.len(), LOG_LINES + 2);
        assert!(seqs.windows(2).all(|w| w[0] < w[1]));
        // From the middle: only what is numbered from there on.
        let tail: Vec<u64> = r.since(last - 2).iter().map(|e| e.seq).collect();
        assert_eq!(tail, vec![last - 2, last - 1, last]);
    }
}
