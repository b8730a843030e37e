//! `trackside router`, `services`, `service` and `rollback`: live services
//! from the command line (see `trackside::deploy::service`).

use std::path::Path;

use trackside::deploy::router::{Pool, percent};
use trackside::deploy::service::{self, LiveState};

use super::{Fail, write_out};

fn runtime() -> Result<tokio::runtime::Runtime, Fail> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Fail(format!("cannot start: {e}"), 1))
}

/// `trackside router SERVICE --listen ADDR`: the service process. Says
/// `ready ADDR` on standard output once it serves, then lets go of the
/// terminal (it outlives whoever started it) and logs to `<state>/logs`.
pub fn router(
    state: &Path,
    name: &str,
    listen: &str,
    choice: service::RouterChoice,
    group: Option<String>,
) -> Result<u8, Fail> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Fail(format!("cannot start: {e}"), 1))?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let served = service::serve(
            state.to_path_buf(),
            name.to_string(),
            listen.to_string(),
            choice,
            group,
            |addr| {
                write_out(&format!("ready {addr}\n"));
                detach_output();
            },
        );
        tokio::select! {
            r = served => r.map_err(|e| Fail(e, 1))?,
            // SIGTERM: the replicas keep serving; a new service process adopts them.
            _ = term.recv() => {}
        }
        Ok(0)
    })
}

/// Points standard output and error at /dev/null: whoever read them has
/// what it needed, and a full pipe must never stall the service.
fn detach_output() {
    use std::os::fd::AsRawFd;
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        for fd in [1, 2] {
            // SAFETY: dup2 onto the standard descriptors replaces them
            // atomically; `null` stays open for the call.
            unsafe {
                libc::dup2(null.as_raw_fd(), fd);
            }
        }
    }
}

/// What is known of a service besides its saved state.
#[derive(Default)]
struct Seen {
    /// Its service process answers.
    running: bool,
    /// The HAProxy it routes through runs.
    haproxy_alive: bool,
    /// A trackside runs a rollout of it now.
    rollout_running: bool,
    last: Option<trackside::deploy::revision::HistoryEntry>,
}

impl Seen {
    fn of(state: &Path, name: &str) -> Seen {
        Seen {
            running: service::running(state, name),
            haproxy_alive: service::haproxy_alive(state, name),
            rollout_running: trackside::control::running_rollouts(state)
                .iter()
                .any(|r| *r == trackside::deploy::revision::safe_name(name)),
            last: trackside::deploy::revision::history(state, name).pop(),
        }
    }
}

/// One service as `trackside services` and `service status` show it.
fn describe(s: &LiveState, seen: &Seen) -> String {
    let up = service::LiveReplica::is_up;
    let name = &s.service;
    let what = match (seen.running, s.replicas.iter().any(up)) {
        (true, _) => "serving".to_string(),
        (false, true) if seen.haproxy_alive => format!(
            "SERVICE PROCESS DOWN (HAProxy and the replicas serve, unwatched: `trackside service {name} start` watches them again)"
        ),
        (false, true) => format!(
            "ROUTER DOWN (nothing takes its traffic; the replicas run: `trackside service {name} start` serves them again, `trackside service {name} stop` stops them)"
        ),
        (false, false) => "stopped".to_string(),
    };
    let via = if s.haproxy.is_some() { " (HAProxy)" } else { "" };
    let mut out = format!("{}  {what}  http://{}{via}", s.service, s.listen);
    if seen.running || seen.haproxy_alive {
        let stable = s.version(Pool::Stable).unwrap_or("-");
        match s.version(Pool::Canary) {
            Some(c) if s.weight > 0 => out.push_str(&format!(
                "  {stable} {} / {c} {}",
                percent(1000 - s.weight.min(1000)),
                percent(s.weight)
            )),
            _ => out.push_str(&format!("  {stable} 100%")),
        }
    }
    if let Some(d) = &s.degraded {
        out.push_str(&format!("  DEGRADED: {d}"));
    }
    out.push('\n');
    if seen.rollout_running {
        out.push_str(&format!("  rollout: running now (`trackside rollout {name} status`)\n"));
    }
    if let Some(h) = &seen.last {
        let secs = trackside::store::now_ms().saturating_sub(h.ts_ms) / 1000;
        out.push_str(&format!(
            "  last: {}, {} ago\n",
            h.describe(),
            trackside::protocol::view::ago_text(secs)
        ));
    }
    if !seen.running && !s.stopped.is_empty() {
        out.push_str(&format!(
            "  stopped: {} replica(s) of {} (`trackside service {} start` starts them again)\n",
            s.stopped.len(),
            s.stopped[0].version,
            s.service
        ));
    }
    let now = trackside::store::now_ms();
    for r in &s.replicas {
        let role = match (r.pool, r.retire_at_ms) {
            (_, Some(at)) => format!("stops in {}s", at.saturating_sub(now) / 1000),
            (Some(p), None) => p.name().to_string(),
            (None, None) => "not routed".into(),
        };
        let state = match (up(r), &r.container_id) {
            (false, _) => "down".to_string(),
            (true, Some(id)) => format!("container {}", trackside::exec::docker::service::short(id)),
            (true, None) => format!("pid {}", r.pid),
        };
        out.push_str(&format!(
            "  {:<16} 127.0.0.1:{:<5}  {:<14} {state}{}\n",
            r.spec.name,
            r.spec.port,
            role,
            if r.restarts > 0 {
                format!(", restarted {} time(s)", r.restarts)
            } else {
                String::new()
            }
        ));
    }
    out
}

/// The services view's feed for `state` (`S` on a run's screen, and
/// `trackside services --ui`): started when the view opens, stopped when
/// it closes.
pub fn services_source(state: &Path) -> trackside::ui::ServicesSource {
    let state = state.to_path_buf();
    std::sync::Arc::new(move || {
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        let stop = tokio_util::sync::CancellationToken::new();
        tokio::spawn(service::watch(state.clone(), tx, stop.clone()));
        (rx, stop)
    })
}

/// `trackside services --ui`: the services view until `q`.
pub fn services_ui(state: &Path, ascii: bool) -> Result<u8, Fail> {
    let rt = tokio::runtime::Runtime::new().map_err(|e| Fail(format!("cannot start: {e}"), 2))?;
    rt.block_on(async {
        let (feed, stop) = services_source(state)();
        let opts = trackside::ui::UiOptions {
            ascii,
            color: std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
            mouse: false,
            bell: false,
            services: None,
        };
        let shown = trackside::ui::services::run(feed, state.display().to_string(), opts).await;
        stop.cancel();
        shown.map_err(|e| Fail(e.to_string(), 2))
    })?;
    Ok(0)
}

/// `trackside services [--format json]`.
pub fn services(state: &Path, json: bool) -> Result<u8, Fail> {
    let names = service::list(state);
    let states: Vec<(LiveState, bool)> = names
        .iter()
        .filter_map(|n| service::saved(state, n).map(|s| (s, service::running(state, n))))
        .collect();
    if json {
        let v: Vec<serde_json::Value> = states
            .iter()
            .map(|(s, running)| service::public_view(s, *running))
            .collect();
        write_out(&format!("{}\n", serde_json::Value::Array(v)));
        return Ok(0);
    }
    if states.is_empty() {
        write_out(&format!(
            "no live service in {}: a deploy with the built-in router and a `run:` target makes one\n",
            state.display()
        ));
        return Ok(0);
    }
    let text: String = states
        .iter()
        .map(|(s, _)| describe(s, &Seen::of(state, &s.service)))
        .collect();
    write_out(&text);
    Ok(0)
}

/// What `trackside service SERVICE ...` does.
pub enum Action {
    Status,
    Stop,
    Logs { follow: bool },
    Start,
    Scale(u32),
}

pub fn service(state: &Path, name: &str, action: Action) -> Result<u8, Fail> {
    if name.contains('/') {
        return through_socket(Path::new(name), action);
    }
    let paths = service::paths(state, name);
    match action {
        Action::Status => {
            let Some(s) = service::saved(state, name) else {
                return Err(Fail(format!("no live service `{name}` in {}", state.display()), 1));
            };
            write_out(&describe(&s, &Seen::of(state, name)));
            Ok(0)
        }
        Action::Stop => {
            let said = runtime()?
                .block_on(service::stop(state, name))
                .map_err(|e| Fail(e.to_string(), 1))?;
            write_out(&format!(
                "{said}; its history stays in {}\n",
                trackside::deploy::revision::history_path(state, name).display()
            ));
            Ok(0)
        }
        Action::Start => {
            let program =
                std::env::current_exe().map_err(|e| Fail(format!("cannot find trackside's own program: {e}"), 1))?;
            let said = runtime()?
                .block_on(service::start(&program, state, name))
                .map_err(|e| Fail(e.to_string(), 1))?;
            write_out(&format!("{said}\n"));
            Ok(0)
        }
        Action::Scale(n) => {
            let said = runtime()?
                .block_on(service::scale(state, name, n))
                .map_err(|e| Fail(e.to_string(), 1))?;
            write_out(&format!("{said}\n"));
            Ok(0)
        }
        Action::Logs { follow } => {
            let mut out = String::new();
            let mut files: Vec<_> = std::fs::read_dir(&paths.logs)
                .map_err(|e| Fail(format!("no logs of `{name}` in {}: {e}", paths.logs.display()), 1))?
                .flatten()
                .map(|e| e.path())
                .collect();
            files.sort();
            // Which log is whose: the replicas the service has now, by their log's name.
            let now: Vec<(String, String)> = service::saved(state, name)
                .map(|s| s.replicas)
                .unwrap_or_default()
                .iter()
                .map(|r| {
                    let role = match (r.pool, r.retire_at_ms) {
                        (_, Some(_)) => "retiring".to_string(),
                        (Some(p), None) => p.name().to_string(),
                        (None, None) => "not routed".to_string(),
                    };
                    (
                        format!("{}.log", trackside::deploy::revision::safe_name(&r.spec.name)),
                        format!("{} {}", r.spec.name, role),
                    )
                })
                .collect();
            for f in files {
                let text = tail_of(&f, LOG_TAIL_BYTES);
                let tail: Vec<&str> = text.lines().rev().take(20).collect();
                let file = f
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let whose = now
                    .iter()
                    .find(|(log, _)| *log == file)
                    .map_or("no longer running".to_string(), |(_, who)| who.clone());
                out.push_str(&format!("== {} ({whose}) ==\n", f.display()));
                for l in tail.into_iter().rev() {
                    out.push_str(l);
                    out.push('\n');
                }
            }
            write_out(&out);
            if follow {
                follow_logs(&paths.logs);
            }
            Ok(0)
        }
    }
}

/// Whether standard output still has a reader (`| head` gone: no), so a
/// follow with nothing new to write still ends.
fn reader_there() -> bool {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::os::fd::AsFd;
    let out = std::io::stdout();
    let mut fds = [PollFd::new(out.as_fd(), PollFlags::empty())];
    match poll(&mut fds, PollTimeout::ZERO) {
        Ok(_) => !fds[0]
            .revents()
            .is_some_and(|r| r.intersects(PollFlags::POLLERR | PollFlags::POLLHUP)),
        Err(_) => true,
    }
}

/// How often `service logs --follow` looks for more.
const FOLLOW_EVERY: std::time::Duration = std::time::Duration::from_millis(200);

/// Prints what the replicas of a service write from now on, `replica >
/// line`, a replica started later included, until interrupted or the
/// service's folder goes. At most [`LOG_TAIL_BYTES`] of a file are read a
/// turn; a line longer than that is printed in pieces.
fn follow_logs(dir: &Path) {
    use std::io::{Read, Seek, SeekFrom};
    // Where each file was read up to; files there now are followed from their end.
    let mut at: std::collections::HashMap<std::path::PathBuf, u64> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| (e.path(), e.metadata().map_or(0, |m| m.len())))
        .collect();
    while dir.exists() && reader_there() {
        let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect();
        files.sort();
        for f in files {
            let len = std::fs::metadata(&f).map_or(0, |m| m.len());
            let from = at.get(&f).copied().unwrap_or(0);
            // Made anew (a replica's log restarted): from its start.
            let from = if len < from { 0 } else { from };
            if len == from {
                continue;
            }
            let Ok(mut file) = std::fs::File::open(&f) else {
                continue;
            };
            if file.seek(SeekFrom::Start(from)).is_err() {
                continue;
            }
            let mut bytes = Vec::new();
            let _ = file.take(LOG_TAIL_BYTES).read_to_end(&mut bytes);
            // Whole lines only, unless one alone fills the turn.
            let used = match bytes.iter().rposition(|&b| b == b'\n') {
                Some(i) => i + 1,
                None if bytes.len() as u64 >= LOG_TAIL_BYTES => bytes.len(),
                None => 0,
            };
            let name = f
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let mut out = String::new();
            for line in String::from_utf8_lossy(&bytes[..used]).lines() {
                out.push_str(&format!("{name} > {line}\n"));
            }
            // Nobody reads any more (`| head`): done.
            let mut stdout = std::io::stdout().lock();
            if std::io::Write::write_all(&mut stdout, out.as_bytes())
                .and_then(|()| std::io::Write::flush(&mut stdout))
                .is_err()
            {
                return;
            }
            at.insert(f, from + used as u64);
        }
        std::thread::sleep(FOLLOW_EVERY);
    }
}

/// How much of the end of each replica's log `service logs` reads.
const LOG_TAIL_BYTES: u64 = 64 * 1024;

/// The last `max` bytes of a file (a replica's log may be any size), from
/// its first whole line.
fn tail_of(path: &Path, max: u64) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map_or(0, |m| m.len());
    let from = len.saturating_sub(max);
    if f.seek(SeekFrom::Start(from)).is_err() {
        return String::new();
    }
    let mut bytes = Vec::new();
    let _ = f.take(max).read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes).into_owned();
    match (from > 0, text.find('\n')) {
        (true, Some(i)) => text[i + 1..].to_string(),
        _ => text,
    }
}

/// `trackside service SOCKET status|scale N|stop`: a service process
/// reached by its socket's path (another user's, opened to a group with
/// `--allow-group`); what needs its state directory is its user's.
fn through_socket(socket: &Path, action: Action) -> Result<u8, Fail> {
    runtime()?.block_on(async {
        let c = service::Client::at(socket).await.map_err(|e| Fail(e, 1))?;
        match action {
            Action::Status => {
                let s = c.status().await.map_err(|e| Fail(e, 1))?;
                let seen = Seen {
                    running: true,
                    haproxy_alive: s.haproxy.is_some(),
                    ..Seen::default()
                };
                write_out(&describe(&s, &seen));
            }
            Action::Stop => {
                let r = c
                    .call(&service::Request::Stop { locked: false })
                    .await
                    .map_err(|e| Fail(e, 1))?;
                write_out(&format!("{}\n", r.message));
            }
            Action::Logs { .. } | Action::Start | Action::Scale(_) => {
                return Err(Fail(
                    format!(
                        "through its socket, `{}` may be looked at and stopped (status, stop); logs, start and scale are for the user running it",
                        c.service
                    ),
                    2,
                ));
            }
        }
        Ok(0)
    })
}

/// `trackside rollback SERVICE`.
pub fn rollback(state: &Path, name: &str) -> Result<u8, Fail> {
    let said = runtime()?
        .block_on(service::rollback(state, name, &trackside::deploy::rollout::who()))
        .map_err(|e| Fail(e, 1))?;
    write_out(&format!("{said}\n"));
    Ok(0)
}
