//! Steering a running rollout from another shell.
//!
//! A deploy often runs where nobody is looking at it: headless in a CI job,
//! or in a terminal UI on another machine. `trackside rollout web promote`
//! in any shell of the same user reaches the trackside that runs `web`'s
//! rollout: while a deploy job's rollout runs, that process listens on
//! `<state>/services/web.sock` (mode 0600). One trackside deploys a service
//! at a time (the service lock), so the socket names at most one rollout.
//!
//! The server is a front-end like the UI: it turns requests into
//! `EngineHandle` calls and answers from the run's events; it holds no run
//! logic. The protocol is one JSON line each way: a [`Request`], then a
//! [`Reply`]. Who steers is the client's `user@host (ssh from ...)`, so the
//! run's `rollout_decision` events name the person, not the server.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::deploy::revision::{control_socket_path, services_dir};
use crate::deploy::rollout::{Command, Status};
use crate::protocol::wire::LIVE;
use crate::protocol::{Delivery, EventKind, Link, Subscription};

/// The longest request line read (a request is well under 1 KiB).
const MAX_REQUEST: u64 = 64 * 1024;
/// The longest Unix socket path Linux takes (`sun_path` less its NUL).
const MAX_SOCKET_PATH: usize = 107;
/// How long a connection may take to send its request.
const REQUEST_WAIT: Duration = Duration::from_secs(10);
/// How long a steering reply waits for the rollout to answer.
const ANSWER_WAIT: Duration = Duration::from_secs(2);

/// What a client asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// The rollout's latest status.
    Status,
    /// A steering command. `by` is what the client says of itself; it is
    /// not trusted: the audit names the peer the kernel reports.
    Steer {
        command: Command,
        #[serde(default)]
        by: String,
    },
}

/// What the server answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    /// For people: what happened, or why nothing did.
    pub message: String,
    /// What the rollout decided in answer (its `rollout_decision` texts).
    #[serde(default)]
    pub decisions: Vec<String>,
    /// The rollout's status after the request.
    pub status: Option<Status>,
}

impl Reply {
    fn refused(message: String) -> Reply {
        Reply {
            ok: false,
            message,
            decisions: Vec::new(),
            status: None,
        }
    }
}

/// Serves the control sockets of the run behind a handle. [`Server::close`]
/// removes them; dropping it stops serving (removing them if the runtime
/// lives on long enough).
pub struct Server {
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
    /// Requests being answered.
    answers: tokio_util::task::TaskTracker,
}

/// How long closing waits for requests still being answered (a promote
/// whose rollout ends the run answers right after).
const CLOSE_WAIT: Duration = Duration::from_secs(3);

impl Server {
    /// Stops serving, lets the requests in hand be answered, and removes
    /// the sockets.
    pub async fn close(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        self.answers.close();
        let _ = tokio::time::timeout(CLOSE_WAIT, self.answers.wait()).await;
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The rollout a socket steers: its job, and its latest status.
type Latest = watch::Receiver<(String, Status)>;

/// A service being served: where its latest status goes, and its socket
/// (`None` when it could not be bound).
struct Served {
    latest: watch::Sender<(String, Status)>,
    socket: Option<PathBuf>,
}

/// Starts serving: a socket per service from its rollout's first status on,
/// until the returned [`Server`] is dropped or the engine stops. Sockets
/// outlive their job (a failed deploy job can still be retried through
/// one) but not the process.
pub fn serve<L: Link + Clone + 'static>(link: L, state: PathBuf, access: crate::access::Access) -> Server {
    let stop = CancellationToken::new();
    let answers = tokio_util::task::TaskTracker::new();
    let task = tokio::spawn(watch_rollouts(link, state, access, stop.clone(), answers.clone()));
    Server {
        stop,
        task: Some(task),
        answers,
    }
}

async fn watch_rollouts<L: Link + Clone + 'static>(
    link: L,
    state: PathBuf,
    access: crate::access::Access,
    stop: CancellationToken,
    answers: tokio_util::task::TaskTracker,
) {
    // From the start: a rollout that began before this task ran is served too.
    let Ok(mut events) = link.subscribe(0).await else {
        return;
    };
    let mut served: HashMap<String, Served> = HashMap::new();
    loop {
        let ev = tokio::select! {
            () = stop.cancelled() => break,
            ev = events.next() => match ev {
                Some(Delivery::Event(ev)) => ev,
                Some(Delivery::Missed { .. }) => continue,
                None => break,
            },
        };
        let EventKind::Rollout { job, status } = &ev.kind else {
            continue;
        };
        let latest = (job.clone(), (**status).clone());
        if let Some(s) = served.get(&status.service) {
            s.latest.send_replace(latest);
            continue;
        }
        let path = control_socket_path(&state, &status.service);
        let (tx, rx) = watch::channel(latest);
        let bound = match bind(&path) {
            Ok(listener) => {
                if let Err(e) = access.open(&path, &state) {
                    tracing::warn!(
                        "`trackside rollout {}` reaches this run from its user only: {e}",
                        status.service
                    );
                }
                let steer = Steering {
                    link: link.clone(),
                    latest: rx,
                    access: access.clone(),
                };
                tokio::spawn(accept(listener, steer, stop.clone(), answers.clone()));
                Some(path)
            }
            Err(e) => {
                tracing::warn!("`trackside rollout {}` will not reach this run: {e}", status.service);
                None
            }
        };
        served.insert(
            status.service.clone(),
            Served {
                latest: tx,
                socket: bound,
            },
        );
    }
    for s in served.into_values() {
        if let Some(p) = s.socket {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Binds `path` (mode 0600), replacing a socket nobody answers on (a
/// killed trackside's). Also a live service's control socket.
pub(crate) fn bind(path: &Path) -> Result<UnixListener, String> {
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(format!("another process serves {}", path.display()));
        }
        std::fs::remove_file(path).map_err(|e| format!("cannot remove the stale {}: {e}", path.display()))?;
    }
    let listener = UnixListener::bind(path).map_err(|e| format!("cannot listen on {}: {e}", path.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("cannot make {} owner-only: {e}", path.display()))?;
    Ok(listener)
}

/// Requests answered at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 64;

/// What a rollout's socket answers with.
#[derive(Clone)]
struct Steering<L> {
    link: L,
    latest: Latest,
    access: crate::access::Access,
}

async fn accept<L: Link + Clone + 'static>(
    listener: UnixListener,
    steer: Steering<L>,
    stop: CancellationToken,
    answers: tokio_util::task::TaskTracker,
) {
    // The listener never gives up: out of file descriptors it backs off
    // and serves again once some are free.
    let l = &listener;
    let accept = move || async move { l.accept().await.map(|(s, _)| s) };
    crate::net::accept_loop("control socket", MAX_CONNECTIONS, &stop, accept, |stream, slot| {
        let steer = steer.clone();
        answers.spawn(async move {
            let _slot = slot;
            answer(stream, steer).await;
        });
    })
    .await;
}

async fn answer<L: Link>(stream: UnixStream, steer: Steering<L>) {
    // The socket's mode keeps others out once set; the peer's uid also
    // covers the moment before that.
    let cred = stream.peer_cred().ok();
    let peer = cred.map(|c| crate::protocol::identity::Person::peer(c.uid(), c.pid()));
    let (read, mut write) = stream.into_split();
    let reply = match peer.filter(|p| steer.access.admits(p.uid)) {
        Some(peer) => match crate::net::read_request::<Request>(read, MAX_REQUEST, REQUEST_WAIT).await {
            Err(why) => Reply::refused(why.to_string()),
            Ok(req) => respond(req, peer, &steer.link, &steer.latest).await,
        },
        None => Reply::refused(format!("only {} may steer it", steer.access.who_may())),
    };
    if let Ok(mut text) = serde_json::to_string(&reply) {
        text.push('\n');
        let _ = write.write_all(text.as_bytes()).await;
    }
}

async fn respond<L: Link>(req: Request, peer: crate::protocol::identity::Person, link: &L, latest: &Latest) -> Reply {
    let (job, status) = latest.borrow().clone();
    let command = match req {
        Request::Status => {
            return Reply {
                ok: true,
                message: status.summary(),
                decisions: Vec::new(),
                status: Some(status),
            };
        }
        Request::Steer { command, .. } => command,
    };
    // Subscribe before sending, so no answer is missed.
    let mut events = match link.subscribe(LIVE).await {
        Ok(e) => e,
        Err(e) => return Reply::refused(format!("{command:?} refused: {e}")),
    };
    let steer = crate::protocol::Command::Rollout {
        job: job.clone(),
        action: command,
    };
    if let Err(e) = link.send_as(steer, peer).await {
        return Reply::refused(format!("{command:?} refused: {e}"));
    }
    let (decisions, after) = answers(&mut events, &job).await;
    let message = match (&after, decisions.is_empty()) {
        (_, false) => format!("{command:?} taken"),
        (Some(_), true) => format!("{command:?} sent; the rollout decided nothing (see its status)"),
        (None, true) => format!("{command:?} sent"),
    };
    Reply {
        ok: true,
        message,
        decisions,
        status: after.or(Some(status)),
    }
}

/// The rollout's decisions after a command, up to its second status (the
/// first may have been on its way already), its job's end, or
/// [`ANSWER_WAIT`].
async fn answers(events: &mut Subscription, job: &str) -> (Vec<String>, Option<Status>) {
    let (mut decisions, mut status, mut statuses) = (Vec::new(), None, 0);
    let deadline = tokio::time::sleep(ANSWER_WAIT);
    tokio::pin!(deadline);
    loop {
        let ev = tokio::select! {
            () = &mut deadline => break,
            ev = events.next() => match ev {
                Some(Delivery::Event(ev)) => ev,
                Some(Delivery::Missed { .. }) => continue,
                None => break,
            },
        };
        match &ev.kind {
            EventKind::RolloutDecision { job: j, text, .. } if j == job => decisions.push(text.clone()),
            EventKind::Rollout { job: j, status: s } if j == job => {
                status = Some((**s).clone());
                statuses += 1;
                if statuses == 2 {
                    break;
                }
            }
            EventKind::JobFinished { job: j, .. } if j == job => break,
            _ => {}
        }
    }
    (decisions, status)
}

/// The services whose rollout a live trackside serves in `state` (socket
/// files that answer; the names as files have them).
pub fn running_rollouts(state: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(services_dir(state))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "sock"))
        .filter(|p| std::os::unix::net::UnixStream::connect(p).is_ok())
        .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .collect();
    out.sort();
    out
}

/// Sends `req` to the trackside running `service`'s rollout (a client call,
/// blocking: the CLI's `trackside rollout`).
/// SERVICE with a `/` is the path of a control socket (another user's
/// rollout, opened to a group with `--allow-group`).
pub fn call(state: &Path, service: &str, req: &Request) -> Result<Reply, String> {
    let path = if service.contains('/') {
        PathBuf::from(service)
    } else {
        control_socket_path(state, service)
    };
    if path.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(format!(
            "{} is too long for a Unix socket, so no trackside can serve it; use a shorter --state-dir",
            path.display()
        ));
    }
    let mut stream = std::os::unix::net::UnixStream::connect(&path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::PermissionDenied {
            return format!(
                "a trackside is running the rollout of `{service}`, but its control socket {} is not yours ({e}): \
                 only the user running that trackside, root and members of the group it was opened to (--allow-group) can steer it",
                path.display()
            );
        }
        // A trackside that stopped at a gate left where it stood.
        let gate = crate::deploy::revision::load_gate(state, service).map_or(String::new(), |g| {
            format!(
                " Its last rollout stopped at a gate (step {}, canary {}, version {}): run that deploy again to take it up there.",
                g.step + 1,
                crate::deploy::router::percent(g.weight),
                g.version
            )
        });
        let running = running_rollouts(state);
        let others = if running.is_empty() {
            String::new()
        } else {
            format!(" Rollouts running now: {}.", running.join(", "))
        };
        format!(
            "no trackside is running a rollout of `{service}` with state in {} ({}: {e}).{gate}{others} \
             Start one with `trackside run PIPELINE` (with the same --state-dir); to undo a completed rollout: `trackside rollback {service}`",
            state.display(),
            path.display()
        )
    })?;
    let timeout = Some(ANSWER_WAIT + Duration::from_secs(8));
    let _ = stream.set_read_timeout(timeout);
    let _ = stream.set_write_timeout(timeout);
    let mut line = serde_json::to_string(req).map_err(|e| e.to_string())?;
    line.push('\n');
    stream
        .write_all(line.as_bytes())
        .map_err(|e| format!("cannot send to {}: {e}", path.display()))?;
    let mut answer = String::new();
    std::io::BufReader::new(&stream)
        .read_line(&mut answer)
        .map_err(|e| format!("no answer from {}: {e}", path.display()))?;
    serde_json::from_str(answer.trim()).map_err(|e| {
        format!(
            "an answer from {} that is not a reply ({e}): {answer:?}",
            path.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_audit_names_the_peer_and_nothing_the_client_says() {
        // A client's own `by` is not read at all; the peer's identity is
        // made printable, so a newline cannot forge a log line.
        let req: Request =
            serde_json::from_str(r#"{"op":"steer","command":"promote","by":"x\nFAKE: approved by root"}"#)
                .expect("parse");
        assert!(matches!(req, Request::Steer { .. }));
        let me = crate::protocol::identity::Person::peer(
            nix::unistd::Uid::current().as_raw(),
            Some(std::process::id() as i32),
        )
        .display;
        assert!(!me.contains('\n') && !me.contains("FAKE"), "{me}");
        assert!(me.contains('@'), "{me}");
        let forged = crate::deploy::rollout::identity(0, Some("root\nFAKE".into()), Some("1.2.3.4\nx 1 2".into()));
        assert!(!forged.contains('\n'), "{forged}");
    }
}
