//! Accept loops that survive running out of file descriptors.
//!
//! `accept` fails at once, again and again, while the process is at its
//! file-descriptor limit (EMFILE) or the system is (ENFILE): a loop that
//! logs and retries spins a core and floods the log, and a loop that gives
//! up leaves the listener dead for good. [`AcceptErrors`] decides, as data,
//! how long to wait before the next `accept` and whether a failure is worth
//! a log line, so every listener (router, metrics, control socket) backs off
//! the same way and keeps serving once descriptors are free again.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// First wait after a resource failure; doubles up to [`MAX_BACKOFF`].
pub const MIN_BACKOFF: Duration = Duration::from_millis(10);
/// Longest wait between two tries while descriptors stay exhausted.
pub const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// What to do after an `accept` failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptFailure {
    /// Wait this long before accepting again (zero: at once).
    pub wait: Duration,
    /// A line for the log, or `None` when this failure repeats one already
    /// logged (lines are kept for the 1st, 2nd, 4th, 8th, ... in a row).
    pub log: Option<String>,
}

/// The failures of one listener since its last successful `accept`.
#[derive(Debug, Default)]
pub struct AcceptErrors {
    in_a_row: u64,
    backoff: Duration,
}

/// Failures that mean "no resources now": waiting helps, retrying at once does not.
fn is_resource_shortage(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(nix::libc::EMFILE | nix::libc::ENFILE | nix::libc::ENOBUFS | nix::libc::ENOMEM)
    )
}

impl AcceptErrors {
    /// A connection was accepted: the listener is healthy again.
    pub fn accepted(&mut self) {
        self.in_a_row = 0;
        self.backoff = Duration::ZERO;
    }

    /// `accept` failed with `e` on the listener called `what`.
    pub fn failed(&mut self, what: &str, e: &io::Error) -> AcceptFailure {
        self.in_a_row += 1;
        let wait = if is_resource_shortage(e) {
            self.backoff = (self.backoff * 2).clamp(MIN_BACKOFF, MAX_BACKOFF);
            self.backoff
        } else {
            // One connection went wrong (reset before accept, ...): the next is fine.
            Duration::ZERO
        };
        let log = self.in_a_row.is_power_of_two().then(|| {
            let hint = if is_resource_shortage(e) {
                format!(
                    "; waiting {} ms before the next accept (raise `ulimit -n`?)",
                    wait.as_millis()
                )
            } else {
                String::new()
            };
            format!("{what}: accept: {e} ({} in a row){hint}", self.in_a_row)
        });
        AcceptFailure { wait, log }
    }
}

/// Accepts connections until `stop`, at most `max` served at once (the
/// rest wait in the listen backlog): `serve` gets each connection with the
/// slot it holds until dropped. Failures back off as [`AcceptErrors`] says.
pub async fn accept_loop<S, A, AF, H>(what: &str, max: usize, stop: &CancellationToken, mut accept: A, mut serve: H)
where
    A: FnMut() -> AF,
    AF: Future<Output = io::Result<S>>,
    H: FnMut(S, OwnedSemaphorePermit),
{
    let slots = Arc::new(Semaphore::new(max.max(1)));
    let mut errors = AcceptErrors::default();
    loop {
        let slot = tokio::select! {
            () = stop.cancelled() => return,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(s) => s,
                Err(_) => return,
            },
        };
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            r = accept() => r,
        };
        match accepted {
            Ok(conn) => {
                errors.accepted();
                serve(conn, slot);
            }
            Err(e) => {
                let f = errors.failed(what, &e);
                if let Some(line) = f.log {
                    tracing::warn!("{line}");
                }
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(f.wait) => {}
                }
            }
        }
    }
}

/// Raises the soft limit on open files to the hard limit: a router with
/// many clients, or a run of many jobs, needs more than the common 1024.
pub fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        tracing::debug!("cannot raise the open-files limit from {soft} to {hard}: {e}");
    }
}

/// Why a control socket's request could not be read; its text is what the
/// socket answers (for people).
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("no request within {0}s")]
    Timeout(u64),
    #[error("cannot read the request: {0}")]
    Read(#[from] std::io::Error),
    #[error("not a request ({0}): send one JSON line such as {{\"op\":\"status\"}}")]
    NotJson(#[from] serde_json::Error),
}

/// Reads a control socket's request: one JSON line, at most `max` bytes,
/// within `wait`.
pub async fn read_request<T: serde::de::DeserializeOwned>(
    read: impl tokio::io::AsyncRead + Unpin,
    max: u64,
    wait: Duration,
) -> Result<T, RequestError> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt};
    let mut line = String::new();
    let mut reader = tokio::io::BufReader::new(read.take(max));
    match tokio::time::timeout(wait, reader.read_line(&mut line)).await {
        Err(_) => Err(RequestError::Timeout(wait.as_secs())),
        Ok(Err(e)) => Err(e.into()),
        Ok(Ok(_)) => Ok(serde_json::from_str::<T>(line.trim())?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn emfile() -> io::Error {
        io::Error::from_raw_os_error(nix::libc::EMFILE)
    }

    #[test]
    fn running_out_of_descriptors_backs_off_doubling_to_a_ceiling() {
        let mut a = AcceptErrors::default();
        let waits: Vec<u128> = (0..10)
            .map(|_| a.failed("router", &emfile()).wait.as_millis())
            .collect();
        assert_eq!(waits, [10, 20, 40, 80, 160, 320, 640, 1000, 1000, 1000]);
        a.accepted();
        assert_eq!(
            a.failed("router", &emfile()).wait,
            MIN_BACKOFF,
            "a success resets the backoff"
        );
    }

    #[test]
    fn a_failure_of_one_connection_retries_at_once() {
        let mut a = AcceptErrors::default();
        let f = a.failed("router", &io::Error::from_raw_os_error(nix::libc::ECONNABORTED));
        assert_eq!(f.wait, Duration::ZERO);
    }

    #[test]
    fn repeated_failures_log_a_line_only_at_powers_of_two() {
        let mut a = AcceptErrors::default();
        let logged = (0..1_000_000)
            .filter(|_| a.failed("control socket", &emfile()).log.is_some())
            .count();
        assert_eq!(logged, 20, "1, 2, 4, ... 524288");
        let mut a = AcceptErrors::default();
        let first = a.failed("control socket", &emfile()).log.unwrap_or_default();
        assert!(
            first.contains("control socket: accept:") && first.contains("ulimit -n"),
            "{first}"
        );
    }
}
