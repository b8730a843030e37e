//! How a front-end reaches a run: subscribe to its events from a sequence
//! number (what came before is replayed, then the rest live) and send it
//! commands. The engine's in-process handle is one link; the run socket's
//! client (`crate::attach`) is another. Front-ends hold a link and nothing
//! else of the engine.

use std::collections::VecDeque;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::{FutureExt, Stream, StreamExt};
use tokio::sync::broadcast;

use super::command::Command;
use super::event::Event;
use super::query::{Answer, Query};

/// Why a link could not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// The engine said no (an unknown job, a gate already released, ...).
    #[error("{0}")]
    Refused(String),
    /// The run has ended and takes no more commands.
    #[error("the run has ended")]
    Ended,
    /// This link may only watch (`attach --read-only`).
    #[error("read-only: this attachment may watch but not steer (attach without --read-only to steer)")]
    ReadOnly,
    /// The connection to the run failed.
    #[error("{0}")]
    Connection(String),
}

/// One item of an event stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Delivery {
    Event(Arc<Event>),
    /// Events `from..=to` are not in the stream: log lines (or rollout
    /// samples) older than what the run keeps to replay, or dropped for a
    /// reader too slow to keep up. Every job and run transition is always
    /// delivered; the log lines are in the run's record.
    Missed {
        from: u64,
        to: u64,
    },
}

/// A fresh replay and live receiver from a sequence number: what a local
/// subscription asks of the engine when it has fallen behind.
pub type Resync = Box<
    dyn FnMut(u64) -> Pin<Box<dyn Future<Output = Option<(Vec<Arc<Event>>, broadcast::Receiver<Arc<Event>>)>> + Send>>
        + Send,
>;

/// A stream of a run's events, in sequence order, without duplicates.
pub struct Subscription {
    inner: Inner,
    /// The sequence number of the last event delivered.
    last: Option<u64>,
}

enum Inner {
    Local {
        replay: VecDeque<Arc<Event>>,
        rx: broadcast::Receiver<Arc<Event>>,
        resync: Resync,
    },
    Remote(Pin<Box<dyn Stream<Item = Delivery> + Send>>),
}

impl Subscription {
    /// In process: `replay` (in order), then what `rx` receives; `resync`
    /// replays again from where a lagging receiver fell behind.
    /// `from` is the first sequence number wanted: an earlier gap in
    /// `replay` is reported as missed.
    pub fn local(
        from: u64,
        replay: Vec<Arc<Event>>,
        rx: broadcast::Receiver<Arc<Event>>,
        resync: Resync,
    ) -> Subscription {
        Subscription {
            inner: Inner::Local {
                replay: replay.into(),
                rx,
                resync,
            },
            last: from.checked_sub(1),
        }
    }

    /// What a connection brings, decoded as the front-end reads it (on
    /// its own task: no reader task and no queue in between, so a burst
    /// costs one wake-up per read of the socket, not per event).
    pub fn remote(stream: impl Stream<Item = Delivery> + Send + 'static) -> Subscription {
        Subscription {
            // Fused: asked again after its end (`try_next` then `next`), it
            // says the end again.
            inner: Inner::Remote(Box::pin(stream.fuse())),
            last: None,
        }
    }

    /// The next item; `None` once the stream has ended (the run finished
    /// and everything was delivered, or the link is gone).
    pub async fn next(&mut self) -> Option<Delivery> {
        loop {
            let item = match &mut self.inner {
                Inner::Remote(stream) => stream.next().await?,
                Inner::Local { replay, rx, resync } => match replay.pop_front() {
                    Some(ev) => Delivery::Event(ev),
                    None => match rx.recv().await {
                        Ok(ev) => Delivery::Event(ev),
                        Err(broadcast::error::RecvError::Closed) => return None,
                        Err(broadcast::error::RecvError::Lagged(_)) => {
                            let from = self.last.map_or(0, |l| l + 1);
                            let (again, fresh) = resync(from).await?;
                            *replay = again.into();
                            *rx = fresh;
                            continue;
                        }
                    },
                },
            };
            if let Some(item) = self.accept(item) {
                return Some(item);
            }
        }
    }

    /// The next item if one is ready now, without waiting (a local
    /// subscription that has fallen behind resyncs on the next `next`).
    pub fn try_next(&mut self) -> Option<Delivery> {
        loop {
            let item = match &mut self.inner {
                // What the connection has read already, without waiting.
                Inner::Remote(stream) => stream.next().now_or_never()??,
                Inner::Local { replay, rx, .. } => match replay.pop_front() {
                    Some(ev) => Delivery::Event(ev),
                    None => Delivery::Event(rx.try_recv().ok()?),
                },
            };
            if let Some(item) = self.accept(item) {
                return Some(item);
            }
        }
    }

    /// Drops what was delivered already (a replay overlapping the live
    /// stream) and says which sequence numbers were skipped.
    fn accept(&mut self, item: Delivery) -> Option<Delivery> {
        match item {
            Delivery::Event(ev) => {
                if self.last.is_some_and(|l| ev.seq <= l) {
                    return None;
                }
                let expected = self.last.map_or(0, |l| l + 1);
                self.last = Some(ev.seq);
                if ev.seq > expected && matches!(self.inner, Inner::Local { .. }) {
                    // Put the event back behind the gap it reveals.
                    if let Inner::Local { replay, .. } = &mut self.inner {
                        replay.push_front(ev.clone());
                    }
                    self.last = Some(ev.seq - 1);
                    return Some(Delivery::Missed {
                        from: expected,
                        to: ev.seq - 1,
                    });
                }
                Some(Delivery::Event(ev))
            }
            Delivery::Missed { from, to } => {
                self.last = Some(self.last.map_or(to, |l| l.max(to)));
                Some(Delivery::Missed { from, to })
            }
        }
    }
}

/// A run, as a front-end reaches it.
pub trait Link: Send + Sync {
    /// The run's events from sequence number `from` (0: from the start).
    fn subscribe(&self, from: u64) -> impl Future<Output = Result<Subscription, LinkError>> + Send;

    /// Sends a command and waits for the engine's answer: what was done,
    /// for people.
    fn send(&self, command: Command) -> impl Future<Output = Result<String, LinkError>> + Send;

    /// The same on behalf of `by`, who the audit trail names: a server
    /// relaying a peer's command (the rollout socket). Over the run socket
    /// the run names the peer itself, so there `by` is not taken.
    fn send_as(
        &self,
        command: Command,
        by: super::identity::Person,
    ) -> impl Future<Output = Result<String, LinkError>> + Send {
        let _ = by;
        self.send(command)
    }

    /// Asks the run for something it holds besides its events: older log
    /// lines, a search through them, a shell (see [`Query`]). Read-only
    /// links may ask too: nothing here steers the run.
    fn query(&self, query: Query) -> impl Future<Output = Result<Answer, LinkError>> + Send;

    fn run_id(&self) -> &str;

    /// The run's record folder.
    fn run_dir(&self) -> &Path;

    /// Whether this link may steer (`false` for `attach --read-only`).
    fn can_steer(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A front-end drains with `try_next`, then waits with `next`: a
    /// remote stream that has ended says so to both, again and again.
    #[tokio::test]
    async fn an_ended_remote_stream_stays_ended() {
        // As a connection's frames come: an unfold, which panics when
        // polled after its end unless fused.
        let once = futures_util::stream::unfold(false, |done| async move {
            (!done).then_some((Delivery::Missed { from: 0, to: 1 }, true))
        });
        let mut sub = Subscription::remote(once);
        assert!(sub.try_next().is_some());
        assert!(sub.try_next().is_none());
        assert!(sub.next().await.is_none());
        assert!(sub.try_next().is_none());
        assert!(sub.next().await.is_none());
    }
}
