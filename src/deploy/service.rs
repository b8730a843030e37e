//! Live services: what keeps serving after the deploy that made it ends.
//!
//! A service deployed with the built-in router and local-process replicas
//! lives in a process of its own, the **service process** (`trackside
//! router SERVICE`): a deploy starts it, in a session of its own, and it
//! outlives the deploy and the trackside that ran it. It
//! - serves the built-in router on the service's listen address;
//! - starts the replicas a deploy asks for, each in a session of its own
//!   with its output in `replicas/<name>.log`, and keeps them alive: a
//!   replica that exits is started again on its port (after 1 s, doubling
//!   to 30 s); one that died five times in five minutes marks the service
//!   Degraded;
//! - stops replicas a deploy retired once their delay is over
//!   (`scale_down_delay` after a promotion, `abort_delay` after an abort),
//!   whether or not that deploy is still there;
//! - streams every request's measurement to deploys that ask, for their
//!   analyses;
//! - stops, with its replicas, when its state folder is removed, or when
//!   `trackside service SERVICE stop` says so.
//!
//! Everything lives under `<state>/services/<service>/` (mode 0700):
//! `service.json` (the live state: listen address, weight, replicas with
//! their pid and start time), `router.pid` (`pid:start`), `router.sock` (the
//! control socket, 0600: one JSON [`Request`] line, one [`Reply`] line) and
//! the replicas' logs. A service process started again (after a crash or
//! `kill -9`) adopts the replicas `service.json` names, a pid being trusted
//! only with its start time, and routes to them as before.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Mutex, broadcast};
use tokio_util::sync::CancellationToken;

use super::haproxy::Haproxy;
use super::revision::{safe_name, services_dir};
use super::router::{Pool, Router};
use super::traffic::Traffic;
use crate::exec::docker::DockerExecutor;
use crate::exec::docker::service::{LiveContainer, short};

/// The longest request line read.
const MAX_REQUEST: u64 = 1 << 20;
/// How long a connection may take to send its request.
const REQUEST_WAIT: Duration = Duration::from_secs(10);
/// How often the watchdog looks at the replicas.
const WATCH_EVERY: Duration = Duration::from_millis(250);
/// A stopped replica's time to exit after SIGTERM, before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Deaths within [`DEATH_WINDOW`] that make the service Degraded.
const DEATHS_DEGRADED: usize = 5;
const DEATH_WINDOW: Duration = Duration::from_secs(300);
/// The longest wait before a dead replica is started again.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Requests served at once on the control socket.
const MAX_CONNECTIONS: usize = 64;

/// Where a service's live files are.
#[derive(Debug, Clone)]
pub struct Paths {
    pub dir: PathBuf,
    pub state: PathBuf,
    pub pid: PathBuf,
    pub socket: PathBuf,
    pub logs: PathBuf,
    /// The HAProxy a service routes through: its pid (`pid:start`) and its
    /// own messages. Its config and sockets are `<service>.cfg`,
    /// `<service>.sock` (runtime API), `<service>.log.sock` beside them.
    pub haproxy_pid: PathBuf,
    pub haproxy_errors: PathBuf,
}

pub fn paths(state: &Path, service: &str) -> Paths {
    let dir = services_dir(state).join(safe_name(service));
    Paths {
        state: dir.join("service.json"),
        pid: dir.join("router.pid"),
        socket: dir.join("router.sock"),
        logs: dir.join("replicas"),
        haproxy_pid: dir.join("haproxy.pid"),
        haproxy_errors: dir.join("haproxy.err"),
        dir,
    }
}

/// Which router a service process runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouterChoice {
    /// The one it ran before (the built-in one for a new service).
    AsBefore,
    Builtin,
    /// HAProxy started from this binary, in a session of its own.
    Haproxy(String),
}

/// Server slots per pool of a live service's HAProxy: the most replicas
/// one revision can have behind it.
pub const HAPROXY_SLOTS: u32 = 16;

/// What starts a replica: its command (its port filled in), environment
/// and working directory. Kept in `service.json` (0600) to start it again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplicaSpec {
    /// `v2#1`.
    pub name: String,
    pub version: String,
    pub run: String,
    /// `run` as the deploy wrote it, `${PORT}` not filled in: another
    /// replica of it (scale, start) gets its own port.
    #[serde(default)]
    pub template: String,
    pub port: u16,
    #[serde(default)]
    pub env: Vec<(String, String)>,
    pub workdir: PathBuf,
    /// How its deploy checked it (a rollback checks a revision it starts
    /// again the same way).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<crate::pipeline::model::HealthCheck>,
    /// A container replica (`run` is empty): its image, published on
    /// `port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<ContainerSpec>,
}

/// What a container replica runs: the image and the port it serves on
/// inside (its `PORT`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerSpec {
    pub image: String,
    pub port: u16,
}

/// A replica the service process looks after.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveReplica {
    #[serde(flatten)]
    pub spec: ReplicaSpec,
    /// Its session leader (and process group), or a container's main
    /// process: 0 while it is down.
    pub pid: u32,
    /// The pid's start time (`/proc/PID/stat`), so a reused pid is never
    /// mistaken for it.
    pub start: u64,
    /// The pool it serves, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<Pool>,
    /// Retired: stopped at this time (ms since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retire_at_ms: Option<u64>,
    #[serde(default)]
    pub restarts: u32,
    /// A container replica's container id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
}

impl LiveReplica {
    /// Its process is running (its pid, and that pid's start time).
    pub fn is_up(&self) -> bool {
        self.pid != 0 && crate::process::owner_alive(self.pid, self.start)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.spec.port))
    }
}

/// A live service as its service process keeps it (`service.json`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LiveState {
    pub service: String,
    /// The address the router listens on.
    pub listen: String,
    /// The canary's share, in tenths of a percent.
    pub weight: u32,
    pub replicas: Vec<LiveReplica>,
    /// Why the service is Degraded (its replicas keep dying), if it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub degraded: Option<String>,
    /// What served as stable when `trackside service SERVICE stop` stopped
    /// it: what `start` starts again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stopped: Vec<ReplicaSpec>,
    /// The last deploy's `scale_down_delay`: how long a revision a rollback
    /// switches away from keeps running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_down_delay_ms: Option<u64>,
    /// The HAProxy binary the service routes through (none: the built-in
    /// router).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub haproxy: Option<String>,
    /// The group its socket is open to (`--allow-group`), besides its user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

impl LiveState {
    /// What a member of the service's group is shown: no replica's
    /// command or environment (they may hold secrets).
    pub fn redacted(mut self) -> LiveState {
        let clean = |s: &mut ReplicaSpec| {
            s.run.clear();
            s.template.clear();
            s.env.clear();
        };
        self.replicas.iter_mut().for_each(|r| clean(&mut r.spec));
        self.stopped.iter_mut().for_each(clean);
        self
    }

    /// The replicas serving `pool`.
    pub fn serving(&self, pool: Pool) -> Vec<&LiveReplica> {
        self.replicas
            .iter()
            .filter(|r| r.pool == Some(pool) && r.retire_at_ms.is_none())
            .collect()
    }

    /// The version `pool` serves (of its first replica).
    pub fn version(&self, pool: Pool) -> Option<&str> {
        self.serving(pool).first().map(|r| r.spec.version.as_str())
    }
}

/// What a client asks the service process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Status,
    /// Start a replica (not routed yet); the reply's state has its pid.
    Start {
        replica: Box<ReplicaSpec>,
    },
    /// Make the replicas at `addrs` the ones serving `pool` (the others of
    /// the pool serve no more, and are not stopped).
    Route {
        pool: Pool,
        addrs: Vec<SocketAddr>,
    },
    /// The canary's share, in tenths of a percent.
    Weight {
        weight: u32,
    },
    /// Stop these replicas `after_ms` from now (0: at once); they serve no
    /// traffic meanwhile.
    Retire {
        names: Vec<String>,
        after_ms: u64,
    },
    /// Keep these retired replicas after all (a rollback within the delay).
    Unretire {
        names: Vec<String>,
    },
    /// The deploy's settings the service keeps: its `scale_down_delay`.
    Settings {
        scale_down_delay_ms: u64,
    },
    /// Requests in flight to a replica's address.
    InFlight {
        addr: SocketAddr,
    },
    /// Every request's measurement, one line each (`pool latency_ms error`),
    /// for as long as the connection stays open.
    Samples,
    /// Stop every replica and the service process. Refused while a deploy
    /// of the service runs, unless the asker holds the deploy lock itself
    /// (`trackside service SERVICE stop` of the service's own user).
    Stop {
        #[serde(default)]
        locked: bool,
    },
}

/// What the service process answers.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<LiveState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_flight: Option<u32>,
}

impl Reply {
    fn ok(message: impl Into<String>, state: LiveState) -> Reply {
        Reply {
            ok: true,
            message: message.into(),
            state: Some(state),
            in_flight: None,
        }
    }

    fn refused(message: impl Into<String>) -> Reply {
        Reply {
            ok: false,
            message: message.into(),
            ..Reply::default()
        }
    }
}

/// One request's measurement, as [`Request::Samples`] streams it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WireSample {
    pub pool: Pool,
    pub latency_ms: f32,
    pub error: bool,
}

impl WireSample {
    pub fn line(&self) -> String {
        format!("{} {:.3} {}\n", self.pool.name(), self.latency_ms, u8::from(self.error))
    }

    pub fn parse(line: &str) -> Option<WireSample> {
        let mut parts = line.split_whitespace();
        let pool = match parts.next()? {
            "stable" => Pool::Stable,
            "canary" => Pool::Canary,
            _ => return None,
        };
        let latency_ms = parts.next()?.parse().ok()?;
        let error = parts.next()? == "1";
        Some(WireSample {
            pool,
            latency_ms,
            error,
        })
    }
}

/// A replica the service process started (its child) or adopted.
struct Running {
    child: Option<tokio::process::Child>,
    /// It takes connections (a replica started again is routed only then).
    ready: bool,
    /// When it died, if it is down, and when it may start again.
    down_since: Option<Instant>,
    next_try: Option<Instant>,
    backoff: Duration,
    deaths: Vec<Instant>,
}

struct Daemon {
    paths: Paths,
    front: Traffic,
    /// The HAProxy it routes through: pid and start time, and when it may
    /// be started again after it died.
    haproxy: Option<(u32, u64)>,
    haproxy_retry: Option<Instant>,
    /// Stops the receiver of its HAProxy's log (a new one comes with a new HAProxy).
    haproxy_log: CancellationToken,
    /// The router did not take the last routes: they are applied again at the next watch.
    routes_dirty: bool,
    state: LiveState,
    running: HashMap<String, Running>,
    samples: broadcast::Sender<WireSample>,
    stop: CancellationToken,
    /// Replicas being stopped in the background (waited for at the end).
    stopping: tokio_util::task::TaskTracker,
    /// The Docker daemon, once a container replica needed it.
    docker: tokio::sync::OnceCell<DockerExecutor>,
}

/// What starting a service's HAProxy again needs (done without holding
/// the service).
struct HaproxyRestart {
    binary: String,
    addr: SocketAddr,
    /// Stops the new HAProxy's log receiver.
    log: CancellationToken,
}

/// A replica started (or found running again).
struct Launched {
    child: Option<tokio::process::Child>,
    pid: u32,
    start: u64,
    container_id: Option<String>,
}

/// Runs the service process of `service` until it is told to stop or its
/// folder goes. `ready` gets the router's address once it serves.
pub async fn serve(
    state_dir: PathBuf,
    service: String,
    listen: String,
    router: RouterChoice,
    group: Option<String>,
    ready: impl FnOnce(SocketAddr),
) -> Result<(), String> {
    let paths = paths(&state_dir, &service);
    create_private_dir(&paths.dir)?;
    create_private_dir(&paths.logs)?;
    let _lock = lock(&paths)?;
    let mut live: LiveState = std::fs::read_to_string(&paths.state)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    live.service = service.clone();
    // The address it served before, unless asked for another.
    let want = if listen.is_empty() || listen.ends_with(":0") && !live.listen.is_empty() {
        live.listen.clone()
    } else {
        listen
    };
    let want = if want.is_empty() {
        "127.0.0.1:0".to_string()
    } else {
        want
    };
    let addr: SocketAddr = want.parse().map_err(|_| format!("`{want}` is not an address"))?;
    // Opened to a group: the one asked for, else the one it had.
    if group.is_some() {
        live.group = group;
    }
    let access = Arc::new(match &live.group {
        Some(g) => crate::access::Access::group(g).map_err(|e| e.to_string())?,
        None => crate::access::Access::owner_only(),
    });
    live.haproxy = match router {
        RouterChoice::AsBefore => live.haproxy,
        RouterChoice::Builtin => None,
        RouterChoice::Haproxy(binary) => Some(binary),
    };
    let running_haproxy = haproxy_running(&paths);
    let stop = CancellationToken::new();
    let (samples, _) = broadcast::channel(4096);
    // The receiver of the HAProxy's request log: one per HAProxy started.
    let haproxy_log = stop.child_token();
    let (front, addr, haproxy) = match (&live.haproxy, running_haproxy) {
        (None, Some((pid, _))) => {
            return Err(format!(
                "the HAProxy of `{service}` (pid {pid}) still serves it; this asks for the built-in router: \
                 stop the service first (`trackside service {service} stop`)"
            ));
        }
        (None, None) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| format!("the router of `{service}` cannot listen on {addr}: {e}"))?;
            let addr = listener.local_addr().unwrap_or(addr);
            let router = Router::new(true);
            tokio::spawn(router.clone().serve(listener, stop.clone()));
            (Traffic::Builtin(router), addr, None)
        }
        (Some(_), Some(running)) => {
            // An earlier service process's HAProxy serves on, where it
            // listened: steered again.
            let was: SocketAddr = live.listen.parse().map_err(|_| {
                format!("the HAProxy of `{service}` runs, but service.json says no address it serves on")
            })?;
            if addr != was && addr.port() != 0 {
                return Err(format!(
                    "the HAProxy of `{service}` serves on {was}, this asks for {addr}: stop the service first (`trackside service {service} stop`) to move it"
                ));
            }
            let h = Haproxy::adopt(&paths.dir, &safe_name(&service), haproxy_log.clone()).await?;
            (Traffic::Haproxy(h), was, Some(running))
        }
        (Some(binary), None) => {
            let addr = if addr.port() == 0 {
                SocketAddr::new(addr.ip(), super::replica::free_port()?)
            } else {
                addr
            };
            let (h, pid) = start_haproxy(&paths, binary, &service, addr, &haproxy_log).await?;
            (Traffic::Haproxy(h), addr, Some(pid))
        }
    };
    live.listen = addr.to_string();
    front.stats().tap(samples.clone());
    let socket = crate::control::bind(&paths.socket)?;
    access.open(&paths.socket, &state_dir).map_err(|e| e.to_string())?;
    let mut d = Daemon {
        paths: paths.clone(),
        front,
        haproxy,
        haproxy_retry: None,
        haproxy_log,
        routes_dirty: false,
        state: live,
        running: HashMap::new(),
        samples,
        stop: stop.clone(),
        stopping: tokio_util::task::TaskTracker::new(),
        docker: tokio::sync::OnceCell::new(),
    };
    // Adopt what an earlier service process left running.
    for r in &d.state.replicas {
        let alive = r.is_up();
        if alive && let Some(id) = &r.container_id {
            d.follow(id, &r.spec.name, true).await;
        }
        d.running.insert(
            r.spec.name.clone(),
            Running {
                child: None,
                ready: alive,
                down_since: (!alive).then(Instant::now),
                next_try: (!alive).then(Instant::now),
                backoff: Duration::from_secs(1),
                deaths: Vec::new(),
            },
        );
    }
    // The weight first: routing an adopted HAProxy's pools again must not
    // move traffic away from where it was.
    d.front.stats().set_weight(d.state.weight);
    let _ = d.apply_routes().await;
    d.front.set_weight(d.state.weight).await?;
    d.save();
    write_pid(&paths.pid)?;
    ready(addr);
    let d = Arc::new(Mutex::new(d));
    let accept = tokio::spawn(accept(socket, d.clone(), access, stop.clone()));
    // Containers of this service that `service.json` does not name (a
    // service process that died between creating one and saving it).
    let _ = tokio::time::timeout(Duration::from_secs(10), async { d.lock().await.sweep_unknown().await }).await;
    let mut tick = tokio::time::interval(WATCH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        // Its folder removed (a temporary state directory): nothing is left to serve.
        if !paths.dir.exists() {
            stop.cancel();
            break;
        }
        let restart = {
            let mut d = d.lock().await;
            d.watch().await;
            d.haproxy_to_restart()
        };
        // Started again without holding the service: that takes up to 10 s,
        // and steering goes on meanwhile.
        if let Some(r) = restart {
            let started = start_haproxy(&paths, &r.binary, &service, r.addr, &r.log).await;
            d.lock().await.haproxy_started(started).await;
        }
    }
    accept.abort();
    let mut d = d.lock().await;
    d.stop_all().await;
    d.stopping.close();
    d.stopping.wait().await;
    let _ = std::fs::remove_file(&paths.socket);
    let _ = std::fs::remove_file(&paths.pid);
    Ok(())
}

impl Daemon {
    fn save(&self) {
        if let Ok(text) = serde_json::to_string_pretty(&self.state) {
            let _ = super::revision::write_private(&self.paths.state, &text);
        }
    }

    /// The router's backends from the replicas' pools: those up and
    /// ready. A router that did not take them (HAProxy's socket timed out)
    /// is tried again at every watch until it does.
    async fn apply_routes(&mut self) -> Result<(), String> {
        let mut failed = None;
        for pool in [Pool::Stable, Pool::Canary] {
            let addrs: Vec<SocketAddr> = self
                .state
                .serving(pool)
                .iter()
                .filter(|r| r.pid != 0 && self.running.get(&r.spec.name).is_none_or(|run| run.ready))
                .map(|r| r.addr())
                .collect();
            if let Err(e) = self.front.set_backends(pool, &addrs).await {
                tracing::warn!("{} of `{}`: {e}", self.front.name(), self.state.service);
                failed.get_or_insert(e);
            }
        }
        self.routes_dirty = failed.is_some();
        failed.map_or(Ok(()), Err)
    }

    /// Its HAProxy, when it died: started again (at most once a second),
    /// routed and weighted as before.
    fn haproxy_to_restart(&mut self) -> Option<HaproxyRestart> {
        let (Some((pid, start)), Some(binary)) = (self.haproxy, self.state.haproxy.clone()) else {
            return None;
        };
        if crate::process::owner_alive(pid, start) || self.haproxy_retry.is_some_and(|t| Instant::now() < t) {
            return None;
        }
        self.haproxy_retry = Some(Instant::now() + Duration::from_secs(1));
        let addr = self.state.listen.parse::<SocketAddr>().ok()?;
        tracing::warn!(
            "the HAProxy of `{}` (pid {pid}) died; starting it again",
            self.state.service
        );
        self.haproxy_log.cancel();
        self.haproxy_log = self.stop.child_token();
        Some(HaproxyRestart {
            binary,
            addr,
            log: self.haproxy_log.clone(),
        })
    }

    /// An HAProxy started again by [`Daemon::haproxy_to_restart`]'s
    /// request: routed and weighted as before, or stopped at once when the
    /// service was told to stop meanwhile.
    async fn haproxy_started(&mut self, started: Result<(Arc<Haproxy>, (u32, u64)), String>) {
        match started {
            Ok((_, (pid, start))) if self.stop.is_cancelled() => {
                stop_haproxy(pid, start).await;
                let _ = std::fs::remove_file(&self.paths.haproxy_pid);
            }
            Ok((h, running)) => {
                h.stats.tap(self.samples.clone());
                // The weight first: routing must not move traffic away from where it was.
                h.stats.set_weight(self.state.weight);
                self.front = Traffic::Haproxy(h);
                self.haproxy = Some(running);
                let _ = self.apply_routes().await;
                if let Err(e) = self.front.set_weight(self.state.weight).await {
                    tracing::warn!("HAProxy of `{}`: {e}", self.state.service);
                }
            }
            Err(e) => tracing::warn!("the HAProxy of `{}` cannot start again: {e}", self.state.service),
        }
    }

    fn find(&mut self, name: &str) -> Option<&mut LiveReplica> {
        self.state.replicas.iter_mut().find(|r| r.spec.name == name)
    }

    async fn handle(&mut self, req: Request) -> Reply {
        match req {
            Request::Status => Reply::ok("", self.state.clone()),
            Request::Start { replica } => {
                if self.state.replicas.iter().any(|r| r.spec.name == replica.name) {
                    return Reply::refused(format!("a replica `{}` is already there", replica.name));
                }
                match self.launch(&replica).await {
                    Ok(Launched {
                        child,
                        pid,
                        start,
                        container_id,
                    }) => {
                        self.state.replicas.push(LiveReplica {
                            spec: (*replica).clone(),
                            pid,
                            start,
                            pool: None,
                            retire_at_ms: None,
                            restarts: 0,
                            container_id,
                        });
                        self.running.insert(
                            replica.name.clone(),
                            Running {
                                child,
                                // Its deploy checks its health before routing it.
                                ready: true,
                                down_since: None,
                                next_try: None,
                                backoff: Duration::from_secs(1),
                                deaths: Vec::new(),
                            },
                        );
                        self.save();
                        Reply::ok(format!("started {} (pid {pid})", replica.name), self.state.clone())
                    }
                    Err(e) => Reply::refused(e),
                }
            }
            Request::Route { pool, addrs } => {
                if let Some(missing) = addrs
                    .iter()
                    .find(|a| !self.state.replicas.iter().any(|r| r.addr() == **a))
                {
                    return Reply::refused(format!("no replica at {missing}"));
                }
                if self.state.haproxy.is_some() && addrs.len() > HAPROXY_SLOTS as usize {
                    return Reply::refused(format!(
                        "{} replicas for the {} pool, but the service's HAProxy has {HAPROXY_SLOTS} slots a pool",
                        addrs.len(),
                        pool.name()
                    ));
                }
                let mut names = Vec::new();
                for r in &mut self.state.replicas {
                    if addrs.contains(&r.addr()) {
                        names.push(r.spec.name.clone());
                        r.pool = Some(pool);
                        r.retire_at_ms = None;
                    } else if r.pool == Some(pool) {
                        r.pool = None;
                    }
                }
                // A new stable set: what made the service Degraded is gone with
                // it, and a stopped service serves again.
                if pool == Pool::Stable {
                    self.state.degraded = None;
                    self.state.stopped.clear();
                }
                let routed = self.apply_routes().await;
                self.save();
                if let Err(e) = routed {
                    return Reply::refused(format!(
                        "{} did not take the new routes (tried again each second): {e}",
                        self.front.name()
                    ));
                }
                Reply::ok(
                    format!("{} serves {}", pool.name(), names.join(", ")),
                    self.state.clone(),
                )
            }
            Request::Weight { weight } => {
                let weight = weight.min(super::router::FULL);
                if let Err(e) = self.front.set_weight(weight).await {
                    return Reply::refused(e);
                }
                self.state.weight = weight;
                self.save();
                Reply::ok(
                    format!("canary at {}", super::router::percent(self.state.weight)),
                    self.state.clone(),
                )
            }
            Request::Retire { names, after_ms } => {
                let at = crate::store::now_ms().saturating_add(after_ms);
                for n in &names {
                    if let Some(r) = self.find(n) {
                        r.retire_at_ms = Some(at);
                        r.pool = None;
                    }
                }
                // A router that did not take it is tried again each watch.
                let _ = self.apply_routes().await;
                self.save();
                // Due at once: out of the state now, stopping in the background.
                self.retire_due();
                Reply::ok(
                    format!("{} stop in {}s", names.join(", "), after_ms / 1000),
                    self.state.clone(),
                )
            }
            Request::Unretire { names } => {
                for n in &names {
                    if let Some(r) = self.find(n) {
                        r.retire_at_ms = None;
                    }
                }
                self.save();
                Reply::ok(format!("{} kept", names.join(", ")), self.state.clone())
            }
            Request::Settings { scale_down_delay_ms } => {
                self.state.scale_down_delay_ms = Some(scale_down_delay_ms);
                self.save();
                Reply::ok("", self.state.clone())
            }
            Request::InFlight { addr } => Reply {
                in_flight: Some(u32::try_from(self.front.in_flight(addr).await).unwrap_or(u32::MAX)),
                ..Reply::ok("", self.state.clone())
            },
            // Answered by the connection itself (a stream).
            Request::Samples => Reply::refused("internal: samples are a stream"),
            Request::Stop { locked } => {
                let state = self
                    .paths
                    .dir
                    .parent()
                    .and_then(Path::parent)
                    .unwrap_or(&self.paths.dir);
                if !locked && super::revision::lock_service(state, &self.state.service).is_err() {
                    return Reply::refused(format!(
                        "a deploy of `{0}` is running: abort it first (`trackside rollout {0} abort`), then stop the service",
                        self.state.service
                    ));
                }
                self.stop.cancel();
                Reply::ok(format!("stopping `{}`", self.state.service), self.state.clone())
            }
        }
    }

    async fn docker(&self) -> Result<&DockerExecutor, String> {
        self.docker
            .get_or_try_init(|| async { DockerExecutor::connect().await.map_err(|e| e.to_string()) })
            .await
    }

    /// `<state directory>:<service>`, the label on its containers (the
    /// directory's absolute path: two projects' `.ts` are not one).
    fn container_label(&self) -> String {
        let state = self
            .paths
            .dir
            .parent()
            .and_then(Path::parent)
            .unwrap_or(&self.paths.dir);
        let state = std::path::absolute(state).unwrap_or_else(|_| state.to_path_buf());
        format!("{}:{}", state.display(), self.state.service)
    }

    /// Starts one replica: a process in a session of its own, or a
    /// container with the restart policy `unless-stopped`; its output is
    /// appended to its log.
    async fn launch(&self, spec: &ReplicaSpec) -> Result<Launched, String> {
        let Some(c) = &spec.container else {
            let (child, pid, start) = self.spawn(spec)?;
            return Ok(Launched {
                child: Some(child),
                pid,
                start,
                container_id: None,
            });
        };
        let d = self.docker().await?;
        let name = format!(
            "trackside-{}-{}-{:08x}",
            safe_name(&self.state.service),
            safe_name(&spec.name).replace('#', "-"),
            fastrand::u32(..)
        );
        let id = d
            .start_live(&LiveContainer {
                name: &name,
                image: &c.image,
                port: c.port,
                host_port: spec.port,
                env: &spec.env,
                service: &self.container_label(),
                revision: &spec.version,
                replica: &spec.name,
            })
            .await?;
        match self.found_running(&id).await {
            Ok(launched) => {
                self.follow(&id, &spec.name, false).await;
                Ok(launched)
            }
            Err(e) => {
                // Not kept: its restart policy would start it for ever, on a port nobody routes.
                d.stop_replica(&id, STOP_GRACE).await;
                Err(e)
            }
        }
    }

    /// A running container replica as a launch: its main process and
    /// that process's start time.
    async fn found_running(&self, id: &str) -> Result<Launched, String> {
        let d = self.docker().await?;
        let pid = match d.running(id).await? {
            Some(s) if s.running && s.pid != 0 => s.pid,
            _ => return Err(format!("container {} is not running", short(id))),
        };
        let start = crate::process::start_time(pid).ok_or_else(|| {
            format!(
                "the process of container {} is not visible here: a live service's containers need the Docker daemon of this machine",
                short(id)
            )
        })?;
        Ok(Launched {
            child: None,
            pid,
            start,
            container_id: Some(id.to_string()),
        })
    }

    /// A container replica found dead: running again (the daemon's restart
    /// policy may have done it), started again (stopped by hand), or, when
    /// its container is gone, made anew.
    async fn revive(&self, r: &LiveReplica) -> Result<Launched, String> {
        if let Some(id) = &r.container_id {
            let d = self.docker().await?;
            match d.running(id).await? {
                Some(s) if s.running => {}
                Some(s) if s.restarting => return Err("the Docker daemon is starting it again".into()),
                Some(_) => d.start_existing(id).await?,
                None => return self.launch(&r.spec).await,
            }
            let launched = self.found_running(id).await?;
            self.follow(id, &r.spec.name, true).await;
            return Ok(launched);
        }
        self.launch(&r.spec).await
    }

    /// Appends a container's output to its replica's log until it stops:
    /// from now (`from_now`: one adopted or started again) or from its start.
    async fn follow(&self, id: &str, name: &str, from_now: bool) {
        let Ok(d) = self.docker().await else { return };
        let path = self.paths.logs.join(format!("{}.log", safe_name(name)));
        let Ok(file) = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .await
        else {
            return;
        };
        let (tx, mut rx) = tokio::sync::mpsc::channel::<crate::exec::OutputLine>(256);
        let since = if from_now {
            i32::try_from(crate::store::now_ms() / 1000).unwrap_or(0)
        } else {
            0
        };
        d.follow(id, since, tx);
        tokio::spawn(async move {
            let mut file = file;
            while let Some(line) = rx.recv().await {
                let end = if line.partial { "" } else { "\n" };
                if file.write_all(format!("{}{end}", line.text).as_bytes()).await.is_err() {
                    return;
                }
            }
        });
    }

    /// Removes this service's containers that `service.json` does not name.
    async fn sweep_unknown(&self) {
        let Ok(d) = self.docker().await else { return };
        for (id, name) in d.live_replicas(&self.container_label()).await {
            let known = self
                .state
                .replicas
                .iter()
                .any(|r| r.container_id.as_deref() == Some(id.as_str()));
            if !known {
                tracing::warn!(
                    "removing container {} ({name}): not a replica of this service",
                    short(&id)
                );
                d.stop_replica(&id, STOP_GRACE).await;
            }
        }
    }

    /// Starts one process replica in a session of its own, its output
    /// appended to its log.
    fn spawn(&self, spec: &ReplicaSpec) -> Result<(tokio::process::Child, u32, u64), String> {
        let log_path = self.paths.logs.join(format!("{}.log", safe_name(&spec.name)));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| format!("cannot open {}: {e}", log_path.display()))?;
        let err = log
            .try_clone()
            .map_err(|e| format!("cannot open {}: {e}", log_path.display()))?;
        let mut cmd = tokio::process::Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(&spec.run)
            .current_dir(&spec.workdir)
            .env_clear()
            .envs(spec.env.iter().cloned())
            .env("PORT", spec.port.to_string())
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(err);
        // SAFETY: setsid is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| nix::unistd::setsid().map(drop).map_err(std::io::Error::from));
        }
        let child = cmd.spawn().map_err(|e| {
            if spec.workdir.is_dir() {
                format!("cannot start `{}`: {e}", spec.run)
            } else {
                format!(
                    "cannot start `{}` in {}: that folder is gone (the project it was deployed from); deploy the service again from where its project is",
                    spec.run,
                    spec.workdir.display()
                )
            }
        })?;
        let pid = child.id().unwrap_or(0);
        let start = crate::process::start_time(pid).unwrap_or(0);
        Ok((child, pid, start))
    }

    /// One look at every replica: reap and restart the dead ones (with
    /// backoff), stop the retired ones whose time has come.
    async fn watch(&mut self) {
        let now = Instant::now();
        let names: Vec<String> = self.state.replicas.iter().map(|r| r.spec.name.clone()).collect();
        let mut changed = false;
        let mut routes = false;
        for name in names {
            let Some(r) = self.state.replicas.iter().find(|r| r.spec.name == name).cloned() else {
                continue;
            };
            if r.retire_at_ms.is_some() {
                continue;
            }
            let Some(run) = self.running.get_mut(&name) else {
                continue;
            };
            let alive = match &mut run.child {
                Some(c) => matches!(c.try_wait(), Ok(None)),
                None => r.is_up(),
            };
            if alive {
                // Started again: routed once it takes connections.
                if !run.ready
                    && tokio::time::timeout(Duration::from_millis(100), tokio::net::TcpStream::connect(r.addr()))
                        .await
                        .is_ok_and(|c| c.is_ok())
                {
                    run.ready = true;
                    routes = true;
                }
                continue;
            }
            if run.down_since.is_none() {
                // What its session left (a child holding the port) goes with it.
                if r.container_id.is_none() {
                    kill_session(r.pid);
                }
                run.down_since = Some(now);
                run.deaths.retain(|t| now.duration_since(*t) < DEATH_WINDOW);
                run.deaths.push(now);
                run.next_try = Some(now + run.backoff);
                run.child = None;
                run.ready = false;
                routes = true;
                let deaths = run.deaths.len();
                let backoff = run.backoff;
                run.backoff = (run.backoff * 2).min(MAX_BACKOFF);
                tracing::warn!(
                    "replica {name} of {} died; starting it again in {}s",
                    self.state.service,
                    backoff.as_secs()
                );
                if deaths >= DEATHS_DEGRADED && self.state.degraded.is_none() {
                    self.state.degraded = Some(format!(
                        "replica {name} ({}) died {deaths} times in {} minutes",
                        r.spec.version,
                        DEATH_WINDOW.as_secs() / 60
                    ));
                }
                if let Some(x) = self.find(&name) {
                    x.pid = 0;
                }
                changed = true;
                continue;
            }
            if run.next_try.is_some_and(|t| now >= t) {
                match self.revive(&r).await {
                    Ok(Launched {
                        child,
                        pid,
                        start,
                        container_id,
                    }) => {
                        if let Some(run) = self.running.get_mut(&name) {
                            run.child = child;
                            run.down_since = None;
                            run.next_try = None;
                        }
                        if let Some(x) = self.find(&name) {
                            x.pid = pid;
                            x.start = start;
                            x.restarts += 1;
                            x.container_id = container_id;
                        }
                        tracing::warn!("replica {name} of {} started again (pid {pid})", self.state.service);
                    }
                    Err(e) => {
                        if let Some(run) = self.running.get_mut(&name) {
                            run.next_try = Some(now + run.backoff);
                        }
                        tracing::warn!("replica {name} cannot start again: {e}");
                    }
                }
                changed = true;
            }
        }
        // A replica up again after the backoff stops counting towards Degraded
        // only when it stays up: the window forgets old deaths.
        if routes || self.routes_dirty {
            let _ = self.apply_routes().await;
        }
        if self.retire_due() {
            changed = true;
        }
        if changed {
            self.save();
        }
    }

    /// Stops the retired replicas whose time has come; whether any were.
    /// Their stops (SIGTERM, up to 5 s, SIGKILL) run in the background:
    /// the control socket and the watchdog never wait for them.
    fn retire_due(&mut self) -> bool {
        let now = crate::store::now_ms();
        let due: Vec<LiveReplica> = self
            .state
            .replicas
            .iter()
            .filter(|r| r.retire_at_ms.is_some_and(|t| t <= now))
            .cloned()
            .collect();
        if due.is_empty() {
            return false;
        }
        self.state.replicas.retain(|r| r.retire_at_ms.is_none_or(|t| t > now));
        for r in due {
            let child = self.running.remove(&r.spec.name).and_then(|run| run.child);
            self.stopping.spawn(async move {
                if let Err(e) = stop_replica(&r, child).await {
                    tracing::warn!("retiring {}: {e}", r.spec.name);
                }
            });
        }
        self.save();
        true
    }

    async fn stop_all(&mut self) {
        self.state.stopped = self
            .state
            .serving(Pool::Stable)
            .into_iter()
            .map(|r| r.spec.clone())
            .collect();
        for r in std::mem::take(&mut self.state.replicas) {
            let child = self.running.remove(&r.spec.name).and_then(|run| run.child);
            // One that could not be stopped stays named, for `service stop` to try again.
            if let Err(e) = stop_replica(&r, child).await {
                tracing::warn!("stopping {}: {e}", r.spec.name);
                self.state.replicas.push(r);
            }
        }
        if let Some((pid, start)) = self.haproxy.take() {
            stop_haproxy(pid, start).await;
            let _ = std::fs::remove_file(&self.paths.haproxy_pid);
        }
        self.save();
    }
}

/// The HAProxy a service process started for the service, if it runs
/// (its pid file, trusted only with the pid's start time).
fn haproxy_running(p: &Paths) -> Option<(u32, u64)> {
    let text = std::fs::read_to_string(&p.haproxy_pid).ok()?;
    let (pid, start) = crate::process::parse_owner(text.trim())?;
    crate::process::owner_alive(pid, start).then_some((pid, start))
}

/// Starts the service's HAProxy in a session of its own (it outlives the
/// service process) and writes its pid file.
async fn start_haproxy(
    p: &Paths,
    binary: &str,
    service: &str,
    addr: SocketAddr,
    stop: &CancellationToken,
) -> Result<(Arc<Haproxy>, (u32, u64)), String> {
    let (h, pid) = Haproxy::start_detached(
        binary,
        &p.dir,
        &safe_name(service),
        addr,
        HAPROXY_SLOTS,
        &p.haproxy_errors,
        &p.haproxy_pid,
        stop.clone(),
    )
    .await?;
    Ok((h, pid))
}

/// SIGTERM to a service's HAProxy, 5 s to exit, then SIGKILL.
async fn stop_haproxy(pid: u32, start: u64) {
    use nix::sys::signal::{Signal, kill};
    let Ok(raw) = i32::try_from(pid) else { return };
    if !crate::process::owner_alive(pid, start) {
        return;
    }
    let _ = kill(nix::unistd::Pid::from_raw(raw), Signal::SIGTERM);
    let deadline = Instant::now() + STOP_GRACE;
    while crate::process::owner_alive(pid, start) {
        if Instant::now() >= deadline {
            let _ = kill(nix::unistd::Pid::from_raw(raw), Signal::SIGKILL);
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The processes of session `sid` (a replica's: it is the session's
/// leader). A session id is not reused while the session has a member, so
/// this never names another's processes, even once the leader is gone.
fn session_members(sid: u32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()))
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    // After the command's `)`: state ppid pgrp session.
                    let rest = s.rsplit_once(')')?.1.to_string();
                    rest.split_whitespace().nth(3)?.parse::<u32>().ok()
                })
                .is_some_and(|s| s == sid)
        })
        .collect()
}

/// SIGKILL to every process left in session `sid`.
fn kill_session(sid: u32) {
    if sid == 0 {
        return;
    }
    for pid in session_members(sid) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    }
}

/// A container replica: stopped and removed by the daemon. A process:
/// SIGTERM to its process group, `STOP_GRACE` to exit, then
/// SIGKILL to whatever is left of its session.
async fn stop_replica(r: &LiveReplica, child: Option<tokio::process::Child>) -> Result<(), String> {
    use nix::sys::signal::{Signal, killpg};
    if let Some(id) = &r.container_id {
        // The daemon stops it (SIGTERM, then SIGKILL) and it is removed.
        let d = DockerExecutor::connect().await.map_err(|e| e.to_string())?;
        if !d.stop_replica(id, STOP_GRACE).await {
            return Err(format!(
                "container {} of {} could not be removed",
                short(id),
                r.spec.name
            ));
        }
        return Ok(());
    }
    if r.pid == 0 {
        return Ok(());
    }
    if !crate::process::owner_alive(r.pid, r.start) {
        kill_session(r.pid);
        return Ok(());
    }
    let Ok(pid) = i32::try_from(r.pid) else { return Ok(()) };
    let pg = nix::unistd::Pid::from_raw(pid);
    let _ = killpg(pg, Signal::SIGTERM);
    let gone = async {
        match child {
            Some(mut c) => {
                let _ = c.wait().await;
            }
            None => {
                while crate::process::owner_alive(r.pid, r.start) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    };
    if tokio::time::timeout(STOP_GRACE, gone).await.is_err() {
        let _ = killpg(pg, Signal::SIGKILL);
    }
    kill_session(r.pid);
    Ok(())
}

async fn accept(
    listener: UnixListener,
    d: Arc<Mutex<Daemon>>,
    access: Arc<crate::access::Access>,
    stop: CancellationToken,
) {
    let l = &listener;
    let accept = move || async move { l.accept().await.map(|(s, _)| s) };
    crate::net::accept_loop("service socket", MAX_CONNECTIONS, &stop, accept, |stream, slot| {
        let (d, access) = (d.clone(), access.clone());
        tokio::spawn(async move {
            let _slot = slot;
            answer(stream, d, access).await;
        });
    })
    .await;
}

/// A request as the service process's log names it.
fn request_name(req: &Request) -> String {
    match req {
        Request::Start { replica } => format!("start {}", replica.name),
        Request::Route { pool, addrs } => format!("route {} to {} replica(s)", pool.name(), addrs.len()),
        Request::Weight { weight } => format!("canary weight {}", super::router::percent(*weight)),
        Request::Retire { names, after_ms } => format!("retire {} in {}s", names.join(", "), after_ms / 1000),
        Request::Unretire { names } => format!("keep {}", names.join(", ")),
        Request::Settings { .. } => "settings".into(),
        Request::Stop { .. } => "stop".into(),
        Request::Status | Request::InFlight { .. } | Request::Samples => "look".into(),
    }
}

async fn answer(stream: UnixStream, d: Arc<Mutex<Daemon>>, access: Arc<crate::access::Access>) {
    // The socket's mode keeps others out; the peer's uid also covers the
    // moment before it was set.
    let peer = stream
        .peer_cred()
        .ok()
        .map(|c| crate::protocol::identity::Person::peer(c.uid(), c.pid()));
    let (read, mut write) = stream.into_split();
    let reply = if let Some(peer) = peer.filter(|p| access.admits(p.uid)) {
        match crate::net::read_request::<Request>(read, MAX_REQUEST, REQUEST_WAIT).await {
            Err(why) => Reply::refused(why.to_string()),
            Ok(Request::Samples) => {
                let mut rx = d.lock().await.samples.subscribe();
                loop {
                    match rx.recv().await {
                        Ok(s) => {
                            if write.write_all(s.line().as_bytes()).await.is_err() {
                                return;
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(broadcast::error::RecvError::Closed) => return,
                    }
                }
            }
            Ok(req) => {
                // The service's own user (and root) may ask anything; a
                // member of its group only looks and stops it: a replica's
                // command, environment and image are the user's to choose
                // (they run as the user), and may hold secrets.
                let owner = peer.uid == nix::unistd::Uid::effective().as_raw() || peer.uid == 0;
                let req = match admitted(owner, req) {
                    Ok(req) => req,
                    Err(req) => {
                        let text = format!(
                            "{} may look at this service and stop it; `{}` is for its own user",
                            peer.display,
                            request_name(&req)
                        );
                        tracing::warn!(by = %peer.display, "refused: {}", request_name(&req));
                        return send(write, &Reply::refused(text)).await;
                    }
                };
                // An image is pulled before the service is held: a pull may take minutes.
                if let Request::Start { replica } = &req
                    && let Some(c) = &replica.container
                {
                    let docker = d.lock().await.docker().await.cloned();
                    if let Ok(docker) = docker
                        && let Err(e) = docker.pull_if_missing(&c.image).await
                    {
                        return send(write, &Reply::refused(e)).await;
                    }
                }
                let changes = !matches!(req, Request::Status | Request::InFlight { .. });
                let mut d = d.lock().await;
                let mut reply = d.handle(req.clone()).await;
                if !owner {
                    reply.state = reply.state.map(LiveState::redacted);
                }
                // Who changed what: the service process's log is the trail.
                if changes {
                    tracing::info!(
                        service = %d.state.service,
                        by = %peer.display,
                        ok = reply.ok,
                        "{}: {}",
                        request_name(&req),
                        reply.message
                    );
                }
                reply
            }
        }
    } else {
        Reply::refused(format!(
            "only {} may steer this service",
            access.who_may().replace("this trackside", "this service")
        ))
    };
    send(write, &reply).await;
}

/// What a peer may ask of a service process: its own user (and root)
/// anything; a member of the group it is open to only to look (status,
/// requests in flight, samples) and to stop it, and a member's stop is
/// always checked against a running deploy. `Err` gives back what is not
/// theirs to ask.
fn admitted(owner: bool, req: Request) -> Result<Request, Request> {
    match (owner, req) {
        (true, req) => Ok(req),
        (false, Request::Stop { .. }) => Ok(Request::Stop { locked: false }),
        (false, req @ (Request::Status | Request::InFlight { .. } | Request::Samples)) => Ok(req),
        (false, req) => Err(req),
    }
}

/// One reply line.
async fn send(mut write: tokio::net::unix::OwnedWriteHalf, reply: &Reply) {
    if let Ok(mut text) = serde_json::to_string(reply) {
        text.push('\n');
        let _ = write.write_all(text.as_bytes()).await;
    }
}

fn create_private_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| format!("cannot make {} owner-only: {e}", dir.display()))
}

/// One service process per service: the lock is held while it runs.
fn lock(p: &Paths) -> Result<std::fs::File, String> {
    let path = p.dir.join("router.lock");
    let f = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    f.try_lock().map_err(|_| {
        format!(
            "the service process of this service is already running (it holds {})",
            path.display()
        )
    })?;
    Ok(f)
}

fn write_pid(path: &Path) -> Result<(), String> {
    super::revision::write_private(path, &format!("{}\n", crate::process::owner()))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// A connection to a service process.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
    pub service: String,
}

impl Client {
    /// The service process whose socket is at `socket` (another user's,
    /// opened to a group), if it answers; named by the service it serves.
    pub async fn at(socket: &Path) -> Result<Client, String> {
        let c = Client {
            socket: socket.to_path_buf(),
            service: socket.display().to_string(),
        };
        let st = c.status().await?;
        Ok(Client {
            service: st.service,
            ..c
        })
    }

    /// The service process of `service`, if one answers.
    pub async fn connect(state: &Path, service: &str) -> Option<Client> {
        let c = Client {
            socket: paths(state, service).socket,
            service: service.to_string(),
        };
        c.call(&Request::Status).await.ok().filter(|r| r.ok).map(|_| c)
    }

    /// Sends one request; an answer that is not `ok` is an error with its message.
    pub async fn call(&self, req: &Request) -> Result<Reply, String> {
        let reply = tokio::time::timeout(Duration::from_secs(30), async {
            let mut s = UnixStream::connect(&self.socket).await.map_err(|e| {
                format!(
                    "cannot reach the service process of `{}` ({}): {e}",
                    self.service,
                    self.socket.display()
                )
            })?;
            let mut line = serde_json::to_string(req).map_err(|e| e.to_string())?;
            line.push('\n');
            s.write_all(line.as_bytes()).await.map_err(|e| e.to_string())?;
            let mut answer = String::new();
            tokio::io::BufReader::new(s.take(MAX_REQUEST * 16))
                .read_line(&mut answer)
                .await
                .map_err(|e| e.to_string())?;
            serde_json::from_str::<Reply>(answer.trim()).map_err(|e| format!("not a reply ({e}): {answer:?}"))
        })
        .await
        .map_err(|_| format!("the service process of `{}` did not answer", self.service))??;
        if reply.ok { Ok(reply) } else { Err(reply.message) }
    }

    pub async fn status(&self) -> Result<LiveState, String> {
        self.call(&Request::Status)
            .await?
            .state
            .ok_or_else(|| "the service process sent no state".to_string())
    }

    /// Feeds every request's measurement into `into` until `stop`.
    pub async fn samples(&self, into: Arc<Router>, stop: CancellationToken) {
        let Ok(mut s) = UnixStream::connect(&self.socket).await else {
            return;
        };
        if s.write_all(b"{\"op\":\"samples\"}\n").await.is_err() {
            return;
        }
        let mut lines = tokio::io::BufReader::new(s).lines();
        loop {
            let line = tokio::select! {
                () = stop.cancelled() => return,
                l = lines.next_line() => l,
            };
            match line {
                Ok(Some(l)) => {
                    if let Some(w) = WireSample::parse(&l) {
                        into.record(w.pool, Duration::from_secs_f32(w.latency_ms.max(0.0) / 1000.0), w.error);
                    }
                }
                _ => return,
            }
        }
    }
}

/// The service process of `service`, started (in a session of its own, by
/// `trackside router`) when none answers. Returns a client and the address
/// its router listens on.
pub async fn ensure(
    program: &Path,
    state: &Path,
    service: &str,
    listen: &str,
    router: &RouterChoice,
    group: Option<&str>,
) -> Result<Ensured, String> {
    let routed_by = |haproxy: bool| if haproxy { "HAProxy" } else { "the built-in router" };
    if let Some(c) = Client::connect(state, service).await {
        let st = c.status().await?;
        let asked = match router {
            RouterChoice::AsBefore => st.haproxy.is_some(),
            RouterChoice::Builtin => false,
            RouterChoice::Haproxy(_) => true,
        };
        if asked != st.haproxy.is_some() {
            return Err(format!(
                "service `{service}` is served through {}, this deploy asks for {}: stop it first (`trackside service {service} stop`) to change its router",
                routed_by(st.haproxy.is_some()),
                routed_by(asked)
            ));
        }
        let asked: Option<SocketAddr> = listen.parse().ok();
        let serving: Option<SocketAddr> = st.listen.parse().ok();
        if let (Some(a), Some(s)) = (asked, serving)
            && a.port() != 0
            && a != s
        {
            return Err(format!(
                "service `{service}` serves on {s}, this deploy asks for {a}: stop it first (`trackside service {service} stop`) to move it"
            ));
        }
        return Ok(Ensured {
            client: c,
            listen: st.listen,
            started: false,
        });
    }
    let mut cmd = std::process::Command::new(program);
    cmd.arg("--state-dir")
        .arg(state)
        .args(["router", service, "--listen", listen]);
    match router {
        RouterChoice::AsBefore => {}
        RouterChoice::Builtin => {
            cmd.arg("--builtin");
        }
        RouterChoice::Haproxy(binary) => {
            cmd.arg("--haproxy").arg(binary);
        }
    }
    if let Some(g) = group {
        cmd.arg("--allow-group").arg(g);
    }
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    // SAFETY: setsid is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| nix::unistd::setsid().map(drop).map_err(std::io::Error::from));
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start the service process of `{service}`: {e}"))?;
    let out = child.stdout.take();
    let err = child.stderr.take();
    // Its first line is `ready ADDR`, or it exits saying why.
    let said = tokio::task::spawn_blocking(move || {
        use std::io::{BufRead, Read};
        let mut line = String::new();
        if let Some(o) = out {
            let _ = std::io::BufReader::new(o).read_line(&mut line);
        }
        let mut why = String::new();
        if line.trim().is_empty()
            && let Some(mut e) = err
        {
            let _ = e.read_to_string(&mut why);
        }
        // Reaped whenever it ends: it outlives this trackside, or not.
        std::thread::spawn(move || {
            let _ = child.wait();
        });
        (line, why)
    });
    let (line, why) = tokio::time::timeout(Duration::from_secs(20), said)
        .await
        .map_err(|_| format!("the service process of `{service}` did not start within 20s"))?
        .map_err(|e| e.to_string())?;
    let Some(addr) = line.trim().strip_prefix("ready ") else {
        return Err(format!(
            "the service process of `{service}` did not start: {}",
            why.trim()
        ));
    };
    let c = Client {
        socket: paths(state, service).socket,
        service: service.to_string(),
    };
    Ok(Ensured {
        client: c,
        listen: addr.to_string(),
        started: true,
    })
}

/// A service process that answers, as [`ensure`] found or started it.
pub struct Ensured {
    pub client: Client,
    /// Where its router listens.
    pub listen: String,
    /// It was started now (none answered).
    pub started: bool,
}

/// How long the replicas a rollback switched away from keep running when
/// no deploy said (its `scale_down_delay`).
pub const ROLLBACK_SCALE_DOWN: Duration = Duration::from_secs(30);

/// `trackside rollback SERVICE`: makes the revision before the current one
/// stable again and, for a live service, switches its traffic: at once
/// when that revision's replicas are still up (within their scale-down
/// delay), else by starting them, checking their health and then
/// switching. The replicas switched away from stop after the last deploy's
/// `scale_down_delay` (else [`ROLLBACK_SCALE_DOWN`]). Returns what
/// happened, for people.
pub async fn rollback(state: &Path, service: &str, by: &str) -> Result<String, String> {
    // Not under a running rollout's feet: that one is steered instead.
    let _lock = super::revision::lock_service(state, service)?;
    let (previous, current) = super::revision::previous_revision(state, service)?;
    let switched = match Client::connect(state, service).await {
        Some(c) => Some(switch_to(&c, &previous, &current).await?),
        None => None,
    };
    super::revision::record_revision(state, service, &previous, "rolled_back", by)?;
    Ok(match switched {
        Some(how) => format!(
            "{service}: {} serves again (was {}): {how}; recorded in {}",
            previous.version,
            current.version,
            super::revision::history_path(state, service).display()
        ),
        None => format!(
            "{service}: stable is {} again (was {}); no service process runs it, so the next deploy starts from it; recorded in {}",
            previous.version,
            current.version,
            super::revision::history_path(state, service).display()
        ),
    })
}

/// Routes the live service behind `c` to `to`'s replicas, starting them
/// when none is up.
async fn switch_to(
    c: &Client,
    to: &super::revision::Revision,
    from: &super::revision::Revision,
) -> Result<String, String> {
    let st = c.status().await?;
    let up: Vec<&LiveReplica> = st
        .replicas
        .iter()
        .filter(|r| r.spec.version == to.version && r.pid != 0)
        .collect();
    let leaving: Vec<String> = st
        .replicas
        .iter()
        .filter(|r| r.spec.version != to.version && r.retire_at_ms.is_none())
        .map(|r| r.spec.name.clone())
        .collect();
    let (addrs, how) = if up.is_empty() {
        let (run, container) = match to.target() {
            crate::pipeline::model::Target::Process { run } => (run, None),
            crate::pipeline::model::Target::Container { image, port } => {
                (String::new(), Some(ContainerSpec { image, port }))
            }
        };
        // Where and how the current replicas run is how these will.
        let like = st
            .replicas
            .iter()
            .find(|r| r.spec.version == from.version)
            .or(st.replicas.first())
            .ok_or_else(|| format!("service `{}` runs no replica to start {} like", c.service, to.version))?;
        let template = ReplicaSpec {
            version: to.version.clone(),
            run: run.clone(),
            template: run,
            container,
            ..like.spec.clone()
        };
        let addrs = start_like(c, &vec![template; to.replicas as usize], 1)
            .await
            .map_err(|e| format!("{}: {e}; {} keeps serving", to.version, from.version))?;
        let n = addrs.len();
        (addrs, format!("started {n} replica(s) of it, healthy, then switched"))
    } else {
        let names = up.iter().map(|r| r.spec.name.clone()).collect();
        c.call(&Request::Unretire { names }).await?;
        (
            up.iter().map(|r| r.addr()).collect(),
            format!("switched at once ({} replica(s) were still up)", up.len()),
        )
    };
    c.call(&Request::Route {
        pool: Pool::Stable,
        addrs,
    })
    .await?;
    c.call(&Request::Weight { weight: 0 }).await?;
    c.call(&Request::Route {
        pool: Pool::Canary,
        addrs: Vec::new(),
    })
    .await?;
    let delay = st
        .scale_down_delay_ms
        .unwrap_or(u64::try_from(ROLLBACK_SCALE_DOWN.as_millis()).unwrap_or(u64::MAX));
    let n = leaving.len();
    if !leaving.is_empty() {
        c.call(&Request::Retire {
            names: leaving,
            after_ms: delay,
        })
        .await?;
    }
    Ok(format!("{how}; the {n} other replica(s) stop in {}s", delay / 1000))
}

/// Starts `specs` (with fresh ports and names) in the service behind `c`,
/// waits until they pass their health check, and returns their addresses;
/// on a failure the ones started are stopped again.
/// Why `trackside service NAME start|scale|stop` could not do it.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("no live service `{service}` in {}", state.display())]
    NoSuchService { service: String, state: PathBuf },
    #[error("service `{0}` has no service process running: `trackside service {0} start`")]
    NotRunning(String),
    #[error("a deploy of `{0}` is running: let it end, or abort it (`trackside rollout {0} abort`), first")]
    DeployRunning(String),
    #[error("scale to at least 1 replica; `trackside service {0} stop` stops it")]
    ScaleToZero(String),
    #[error("`{0}` serves no stable replica to scale")]
    NothingToScale(String),
    #[error("not healthy: {0}")]
    Unhealthy(String),
    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: std::io::Error },
    /// What the service process, or the deploy module's shared pieces
    /// (ports, the client), answered.
    #[error("{0}")]
    Service(String),
}

impl From<String> for ServiceError {
    fn from(s: String) -> ServiceError {
        ServiceError::Service(s)
    }
}

fn no_such(state: &Path, service: &str) -> ServiceError {
    ServiceError::NoSuchService {
        service: service.to_string(),
        state: state.to_path_buf(),
    }
}

async fn start_like(c: &Client, specs: &[ReplicaSpec], first: usize) -> Result<Vec<SocketAddr>, ServiceError> {
    let mut started: Vec<ReplicaSpec> = Vec::new();
    for like in specs {
        let port = super::replica::free_port()?;
        let run = if like.template.is_empty() {
            like.run.replace(&like.port.to_string(), &port.to_string())
        } else {
            like.template.replace("${PORT}", &port.to_string())
        };
        // Numbered after the ones there are: `v2#3` next to `v2#1` and `v2#2`.
        let n = first + started.len();
        let spec = ReplicaSpec {
            name: format!("{}#{n}.{:04x}", like.version, fastrand::u16(..)),
            run,
            port,
            ..like.clone()
        };
        if let Err(e) = c
            .call(&Request::Start {
                replica: Box::new(spec.clone()),
            })
            .await
        {
            // This one too: an answer that came too late may still have started it.
            let names = started.iter().chain([&spec]).map(|s| s.name.clone()).collect();
            let _ = c.call(&Request::Retire { names, after_ms: 0 }).await;
            return Err(e.into());
        }
        started.push(spec);
    }
    let handles: Vec<super::replica::Handle> = started
        .iter()
        .map(|s| super::replica::Handle {
            name: s.name.clone(),
            pool: Pool::Stable,
            addr: SocketAddr::from(([127, 0, 0, 1], s.port)),
        })
        .collect();
    if let Some(h) = specs.first().and_then(|s| s.health.clone()) {
        let board = super::replica::Board::default();
        if let Err(e) = super::replica::wait_healthy(&handles, &h, &board, &CancellationToken::new()).await {
            let names = started.iter().map(|s| s.name.clone()).collect();
            let _ = c.call(&Request::Retire { names, after_ms: 0 }).await;
            return Err(ServiceError::Unhealthy(e.to_string()));
        }
    }
    Ok(handles.iter().map(|h| h.addr).collect())
}

/// `trackside service SERVICE start`: its service process again, and the
/// stable replicas `stop` stopped, once healthy, routed.
pub async fn start(program: &Path, state: &Path, service: &str) -> Result<String, ServiceError> {
    let saved = saved(state, service).ok_or_else(|| no_such(state, service))?;
    let Ensured {
        client: c,
        listen,
        started,
    } = ensure(program, state, service, "", &RouterChoice::AsBefore, None).await?;
    let st = c.status().await?;
    let serving = st.serving(Pool::Stable).len();
    if serving > 0 && started {
        return Ok(format!(
            "`{service}`: its service process was not running; started again on http://{listen}, it took up the {serving} running replica(s){}",
            if st.haproxy.is_some() { " and its HAProxy" } else { "" }
        ));
    }
    if serving > 0 {
        return Ok(format!("`{service}` serves on http://{listen} already"));
    }
    if saved.stopped.is_empty() {
        return Ok(format!(
            "`{service}`'s router listens on http://{listen}; it had no replica to start again: deploy it"
        ));
    }
    let addrs = start_like(&c, &saved.stopped, 1).await?;
    c.call(&Request::Route {
        pool: Pool::Stable,
        addrs: addrs.clone(),
    })
    .await?;
    c.call(&Request::Weight { weight: 0 }).await?;
    Ok(format!(
        "`{service}` serves again on http://{listen}: {} replica(s) of {}",
        addrs.len(),
        saved.stopped[0].version
    ))
}

/// `trackside service SERVICE scale N`: `n` stable replicas. More are
/// started like the first (health-checked before they take traffic);
/// fewer: the newest extra ones leave the pool and stop.
/// Refused while a deploy of the service runs (its share of traffic is the
/// rollout's to set), and beyond the slots of its HAProxy.
pub async fn scale(state: &Path, service: &str, n: u32) -> Result<String, ServiceError> {
    if n == 0 {
        return Err(ServiceError::ScaleToZero(service.to_string()));
    }
    let _lock =
        super::revision::lock_service(state, service).map_err(|_| ServiceError::DeployRunning(service.to_string()))?;
    let c = Client::connect(state, service)
        .await
        .ok_or_else(|| ServiceError::NotRunning(service.to_string()))?;
    let st = c.status().await?;
    if st.haproxy.is_some() && n > HAPROXY_SLOTS {
        return Err(ServiceError::Service(format!(
            "`{service}` is behind HAProxy, which has {HAPROXY_SLOTS} slots a pool: at most {HAPROXY_SLOTS} replicas"
        )));
    }
    let stable: Vec<LiveReplica> = st.serving(Pool::Stable).into_iter().cloned().collect();
    let Some(first) = stable.first() else {
        return Err(ServiceError::NothingToScale(service.to_string()));
    };
    let have = u32::try_from(stable.len()).unwrap_or(u32::MAX);
    if n == have {
        return Ok(format!("`{service}` has {n} stable replica(s) already"));
    }
    let mut addrs: Vec<SocketAddr> = stable.iter().map(LiveReplica::addr).collect();
    if n > have {
        let more = vec![first.spec.clone(); (n - have) as usize];
        let of_version = st
            .replicas
            .iter()
            .filter(|r| r.spec.version == first.spec.version)
            .count();
        let added = start_like(&c, &more, of_version + 1).await?;
        addrs.extend(added.iter().copied());
        if let Err(e) = c
            .call(&Request::Route {
                pool: Pool::Stable,
                addrs,
            })
            .await
        {
            // Not routed: not kept.
            let now = c.status().await?;
            let names = now
                .replicas
                .iter()
                .filter(|r| added.contains(&r.addr()))
                .map(|r| r.spec.name.clone())
                .collect();
            let _ = c.call(&Request::Retire { names, after_ms: 0 }).await;
            return Err(e.into());
        }
    } else {
        let going: Vec<String> = stable[n as usize..].iter().map(|r| r.spec.name.clone()).collect();
        c.call(&Request::Retire {
            names: going,
            after_ms: 0,
        })
        .await?;
    }
    Ok(format!(
        "`{service}`: {n} stable replica(s) of {} (was {have})",
        first.spec.version
    ))
}

/// `trackside service SERVICE stop`: its router and replicas stop; what
/// served as stable is kept for `start`, and the history stays. Refused
/// while a deploy of the service runs. Works without its service process
/// (killed, crashed): the replicas `service.json` names are stopped, a pid
/// trusted only with its start time.
pub async fn stop(state: &Path, service: &str) -> Result<String, ServiceError> {
    let _lock =
        super::revision::lock_service(state, service).map_err(|_| ServiceError::DeployRunning(service.to_string()))?;
    if let Some(c) = Client::connect(state, service).await {
        c.call(&Request::Stop { locked: true }).await?;
        // Gone when its pid file is.
        let deadline = Instant::now() + Duration::from_secs(60);
        while running(state, service) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        return Ok(format!("stopped `{service}`: its router and replicas"));
    }
    let p = paths(state, service);
    let mut st = saved(state, service).ok_or_else(|| no_such(state, service))?;
    if st.replicas.is_empty() && haproxy_running(&p).is_none() {
        return Ok(format!("`{service}` is stopped already"));
    }
    let n = st.replicas.len();
    st.stopped = st.serving(Pool::Stable).into_iter().map(|r| r.spec.clone()).collect();
    let mut failed = Vec::new();
    for r in std::mem::take(&mut st.replicas) {
        if let Err(e) = stop_replica(&r, None).await {
            failed.push(e);
            st.replicas.push(r);
        }
    }
    let haproxy = match haproxy_running(&p) {
        Some((pid, start)) => {
            stop_haproxy(pid, start).await;
            let _ = std::fs::remove_file(&p.haproxy_pid);
            " and its HAProxy"
        }
        None => "",
    };
    let text = serde_json::to_string_pretty(&st).map_err(|e| e.to_string())?;
    super::revision::write_private(&p.state, &text).map_err(|source| ServiceError::Write {
        path: p.state.clone(),
        source,
    })?;
    let _ = std::fs::remove_file(&p.socket);
    let _ = std::fs::remove_file(&p.pid);
    if !failed.is_empty() {
        return Err(ServiceError::Service(format!(
            "`{service}`: {} of {n} replica(s) could not be stopped ({}); they stay in {} for the next `trackside service {service} stop`",
            failed.len(),
            failed.join("; "),
            p.state.display()
        )));
    }
    Ok(format!(
        "stopped `{service}`: its service process was not running; stopped the {n} replica(s) it had left{haproxy}"
    ))
}

/// What `trackside services --format json` shows of a service: no
/// environment or command (they may hold secrets).
pub fn public_view(s: &LiveState, running: bool) -> serde_json::Value {
    let replicas: Vec<serde_json::Value> = s
        .replicas
        .iter()
        .map(|r| {
            serde_json::json!({
                "name": r.spec.name,
                "version": r.spec.version,
                "addr": r.addr().to_string(),
                "pool": r.pool,
                "pid": r.pid,
                "container": r.container_id.as_deref().map(short),
                "up": r.is_up(),
                "restarts": r.restarts,
                "retire_at_ms": r.retire_at_ms,
            })
        })
        .collect();
    serde_json::json!({
        "service": s.service,
        "running": running,
        "listen": s.listen,
        "router": if s.haproxy.is_some() { "haproxy" } else { "builtin" },
        "stable_version": s.version(Pool::Stable),
        "canary_version": s.version(Pool::Canary),
        "canary_weight_pct": f64::from(s.weight) / 10.0,
        "degraded": s.degraded,
        "replicas": replicas,
        "stopped_version": s.stopped.first().map(|r| r.version.clone()),
    })
}

/// Every live service of `state` as the services view shows it.
pub fn overview(state: &Path) -> Vec<crate::protocol::view::ServiceOverview> {
    let now = crate::store::now_ms();
    list(state)
        .into_iter()
        .filter_map(|name| {
            let s = saved(state, &name)?;
            let serving = running(state, &name);
            let haproxy = haproxy_running(&paths(state, &name)).is_some();
            let state_text = match (serving, s.replicas.iter().any(LiveReplica::is_up)) {
                (true, _) => "serving",
                (false, true) if haproxy => "unwatched",
                (false, true) => "router down",
                (false, false) => "stopped",
            };
            let replicas = s
                .replicas
                .iter()
                .map(|r| crate::protocol::view::ServiceReplica {
                    name: r.spec.name.clone(),
                    version: r.spec.version.clone(),
                    addr: r.addr().to_string(),
                    role: match (r.pool, r.retire_at_ms) {
                        (_, Some(at)) => format!("stops in {}s", at.saturating_sub(now) / 1000),
                        (Some(p), None) => p.name().to_string(),
                        (None, None) => "not routed".into(),
                    },
                    up: r.is_up(),
                    restarts: r.restarts,
                })
                .collect();
            let last = super::revision::history(state, &name).pop();
            Some(crate::protocol::view::ServiceOverview {
                listen: s.listen.clone(),
                state: state_text.into(),
                stable_version: s.version(Pool::Stable).map(str::to_string),
                canary_version: s.version(Pool::Canary).map(str::to_string),
                weight: s.weight,
                degraded: s.degraded.clone(),
                replicas,
                last_change: last.as_ref().map(super::revision::HistoryEntry::describe),
                last_change_ms: last.map(|h| h.ts_ms),
                name,
            })
        })
        .collect()
}

/// Feeds the services view: every service's overview each second, and,
/// for each serving one, a second of its traffic (from its service
/// process's request samples) each second, until `stop` or the view is gone.
pub async fn watch(
    state: PathBuf,
    tx: tokio::sync::mpsc::Sender<crate::protocol::view::ServicesFeed>,
    stop: CancellationToken,
) {
    use crate::protocol::view::{ServicePoint, ServicesFeed};
    let started = Instant::now();
    // Per service: its samples' router (a statistics sink) and the task
    // that fills it.
    let mut watched: HashMap<String, (Arc<Router>, CancellationToken)> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let st = state.clone();
        let all = match tokio::task::spawn_blocking(move || overview(&st)).await {
            Ok(a) => a,
            Err(_) => break,
        };
        for s in all.iter().filter(|s| s.state == "serving") {
            if watched.contains_key(&s.name) {
                continue;
            }
            let Some(client) = Client::connect(&state, &s.name).await else {
                continue;
            };
            let (sink, own_stop) = (Router::new(false), stop.child_token());
            let (into, until) = (sink.clone(), own_stop.clone());
            tokio::spawn(async move { client.samples(into, until).await });
            watched.insert(s.name.clone(), (sink, own_stop));
        }
        // A service no longer serving is watched no more.
        watched.retain(|name, (_, own)| {
            let keep = all.iter().any(|s| &s.name == name && s.state == "serving");
            if !keep {
                own.cancel();
            }
            keep
        });
        if tx.send(ServicesFeed::Overview(all)).await.is_err() {
            break;
        }
        let since = Instant::now() - Duration::from_secs(2);
        for (name, (sink, _)) in &watched {
            let pools = [Pool::Stable, Pool::Canary];
            let windows = pools.map(|p| sink.window(p, since));
            let requests = windows.each_ref().map(|w| w.requests);
            let measured = windows.map(super::metrics::Measured::from_window);
            let point = ServicePoint {
                t_s: started.elapsed().as_secs_f64(),
                requests,
                error_rate: measured
                    .each_ref()
                    .map(|m| m.value(crate::pipeline::model::ThresholdMetric::ErrorRate)),
                p95_ms: measured
                    .each_ref()
                    .map(|m| m.value(crate::pipeline::model::ThresholdMetric::P95Ms)),
            };
            if tx
                .send(ServicesFeed::Point {
                    service: name.clone(),
                    point,
                })
                .await
                .is_err()
            {
                return;
            }
        }
    }
    for (_, own) in watched.into_values() {
        own.cancel();
    }
}

/// Whether the HAProxy a service process started for `service` runs (it
/// serves without its service process, unwatched).
pub fn haproxy_alive(state: &Path, service: &str) -> bool {
    haproxy_running(&paths(state, service)).is_some()
}

/// Whether `state` has a service process serving `service` (a quick look
/// at its pid file).
pub fn running(state: &Path, service: &str) -> bool {
    std::fs::read_to_string(paths(state, service).pid)
        .ok()
        .is_some_and(|t| crate::process::alive(t.trim()))
}

/// The services with a live folder in `state`.
pub fn list(state: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(services_dir(state))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join("service.json").exists())
        .filter_map(|e| {
            let text = std::fs::read_to_string(e.path().join("service.json")).ok()?;
            serde_json::from_str::<LiveState>(&text).ok().map(|s| s.service)
        })
        .collect();
    out.sort();
    out
}

/// `trackside gc --max-age AGE`: removes the logs of replicas the live
/// services no longer have (neither serving nor retiring) that were last
/// written longer than `older_than` ago. What a service runs, or will
/// stop later, keeps its log. Returns how many files and bytes (with
/// `dry_run`, would be) removed.
pub fn prune_logs(state: &Path, older_than: Duration, dry_run: bool) -> (usize, u64) {
    let now = std::time::SystemTime::now();
    let (mut files, mut bytes) = (0, 0);
    for name in list(state) {
        let Some(live) = saved(state, &name) else { continue };
        let keep: Vec<String> = live
            .replicas
            .iter()
            .map(|r| format!("{}.log", safe_name(&r.spec.name)))
            .collect();
        let dir = paths(state, &name).logs;
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let file = e.file_name().to_string_lossy().into_owned();
            let Ok(meta) = e.metadata() else { continue };
            let old = meta
                .modified()
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .is_some_and(|age| age > older_than);
            if !meta.is_file() || keep.contains(&file) || !old {
                continue;
            }
            if dry_run || std::fs::remove_file(e.path()).is_ok() {
                files += 1;
                bytes += meta.len();
            }
        }
    }
    (files, bytes)
}

/// The live state as last saved (for a service whose process is not running).
pub fn saved(state: &Path, service: &str) -> Option<LiveState> {
    serde_json::from_str(&std::fs::read_to_string(paths(state, service).state).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gc_removes_old_logs_of_replicas_gone_and_keeps_the_rest() {
        let state = tempfile::tempdir().expect("tempdir");
        let p = paths(state.path(), "web");
        std::fs::create_dir_all(&p.logs).expect("dirs");
        let live = LiveState {
            service: "web".into(),
            replicas: vec![LiveReplica {
                spec: ReplicaSpec {
                    name: "v2#1.aaaa".into(),
                    version: "v2".into(),
                    run: "x".into(),
                    template: String::new(),
                    port: 1,
                    env: Vec::new(),
                    workdir: PathBuf::from("/"),
                    health: None,
                    container: None,
                },
                pid: 0,
                start: 0,
                pool: Some(Pool::Stable),
                retire_at_ms: None,
                restarts: 0,
                container_id: None,
            }],
            ..LiveState::default()
        };
        std::fs::write(&p.state, serde_json::to_string(&live).expect("json")).expect("state");
        for f in ["v2_1.aaaa.log", "v1_1.bbbb.log"] {
            std::fs::write(p.logs.join(f), "line\n").expect("log");
        }
        // Written just now: younger than an hour, kept.
        assert_eq!(prune_logs(state.path(), Duration::from_secs(3600), false), (0, 0));
        // Older than nothing: the gone replica's log goes, the serving one's stays.
        assert_eq!(prune_logs(state.path(), Duration::ZERO, true), (1, 5), "dry run");
        assert!(p.logs.join("v1_1.bbbb.log").exists());
        assert_eq!(prune_logs(state.path(), Duration::ZERO, false), (1, 5));
        assert!(!p.logs.join("v1_1.bbbb.log").exists());
        assert!(p.logs.join("v2_1.aaaa.log").exists());
    }

    #[test]
    fn samples_cross_the_wire_and_back() {
        let s = WireSample {
            pool: Pool::Canary,
            latency_ms: 12.5,
            error: true,
        };
        assert_eq!(WireSample::parse(s.line().trim()), Some(s));
        assert_eq!(WireSample::parse("other 1 0"), None);
        assert_eq!(WireSample::parse("stable x 0"), None);
    }

    #[test]
    fn a_group_member_may_look_and_stop_and_nothing_else() {
        let spec = ReplicaSpec {
            name: "x#1".into(),
            version: "x".into(),
            run: "touch /tmp/owned".into(),
            template: String::new(),
            port: 1,
            env: Vec::new(),
            workdir: PathBuf::from("/"),
            health: None,
            container: None,
        };
        let start = Request::Start {
            replica: Box::new(spec),
        };
        assert!(admitted(true, start.clone()).is_ok(), "its own user");
        assert_eq!(admitted(false, start.clone()), Err(start));
        for req in [
            Request::Weight { weight: 1000 },
            Request::Route {
                pool: Pool::Stable,
                addrs: Vec::new(),
            },
            Request::Retire {
                names: vec!["v1#1".into()],
                after_ms: 0,
            },
            Request::Settings { scale_down_delay_ms: 0 },
        ] {
            assert!(admitted(false, req).is_err());
        }
        assert_eq!(admitted(false, Request::Status), Ok(Request::Status));
        assert_eq!(
            admitted(false, Request::Stop { locked: true }),
            Ok(Request::Stop { locked: false }),
            "a member's stop waits for no deploy lock it says it holds"
        );
        // What a member is shown of the service has no command or environment.
        let st = LiveState {
            replicas: vec![LiveReplica {
                spec: ReplicaSpec {
                    name: "v1#1".into(),
                    version: "v1".into(),
                    run: "serve --token s3cret".into(),
                    template: "serve --token s3cret --port ${PORT}".into(),
                    port: 1,
                    env: vec![("TOKEN".into(), "s3cret".into())],
                    workdir: PathBuf::from("/"),
                    health: None,
                    container: None,
                },
                pid: 0,
                start: 0,
                pool: Some(Pool::Stable),
                retire_at_ms: None,
                restarts: 0,
                container_id: None,
            }],
            ..LiveState::default()
        };
        let shown = serde_json::to_string(&st.redacted()).expect("json");
        assert!(!shown.contains("s3cret"), "{shown}");
    }

    #[test]
    fn requests_are_one_json_line_each() {
        let r = Request::Retire {
            names: vec!["v1#1".into()],
            after_ms: 30_000,
        };
        let text = serde_json::to_string(&r).expect("json");
        assert_eq!(text, r#"{"op":"retire","names":["v1#1"],"after_ms":30000}"#);
        assert_eq!(serde_json::from_str::<Request>(&text).expect("back"), r);
    }

    #[test]
    fn the_pools_serve_their_replicas_that_are_not_retiring() {
        let rep = |name: &str, pool: Option<Pool>, retire: Option<u64>| LiveReplica {
            spec: ReplicaSpec {
                name: name.into(),
                version: name.split('#').next().unwrap_or("").into(),
                run: "x".into(),
                template: String::new(),
                port: 1,
                env: Vec::new(),
                workdir: PathBuf::from("/"),
                health: None,
                container: None,
            },
            pid: 0,
            start: 0,
            pool,
            retire_at_ms: retire,
            restarts: 0,
            container_id: None,
        };
        let s = LiveState {
            replicas: vec![
                rep("v1#1", None, Some(5)),
                rep("v2#1", Some(Pool::Stable), None),
                rep("v3#1", Some(Pool::Canary), None),
            ],
            ..LiveState::default()
        };
        assert_eq!(s.version(Pool::Stable), Some("v2"));
        assert_eq!(s.version(Pool::Canary), Some("v3"));
        assert_eq!(s.serving(Pool::Stable).len(), 1);
    }
}
