//! The replicas of a service revision and their health.
//!
//! A replica is a process group running the target's command on a port
//! trackside assigns, or a container of the target's image published on a
//! free loopback port. Either way it is an address the router sends traffic
//! to. Every replica carries a tag naming the state directory and service
//! (an environment variable, or a container label), so the replicas of a
//! killed trackside are found and stopped by the next deploy.
//!
//! Health is probed the same way for both: once until a replica is healthy
//! (`wait_healthy`), then for as long as it serves (`monitor`), which is
//! what the rollout pane shows per replica and what rolls a deploy back
//! when a replica fails its checks.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{OnceCell, mpsc};
use tokio_util::sync::CancellationToken;

use super::revision::{Revision, safe_name};
use super::router::Pool;
use crate::exec::docker::DockerExecutor;
use crate::pipeline::model::{HealthCheck, Probe, Target};
pub use crate::protocol::view::ReplicaView;

/// How long a stopped replica has to exit before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

pub struct Replica {
    pub addr: SocketAddr,
    /// `canary v2#1`: what logs and the rollout pane call it.
    pub name: String,
    pub pool: Pool,
    kind: Kind,
}

/// What health checks need of a replica; cheap to hand to a task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handle {
    pub name: String,
    pub pool: Pool,
    pub addr: SocketAddr,
}

impl Replica {
    pub fn handle(&self) -> Handle {
        Handle {
            name: self.name.clone(),
            pool: self.pool,
            addr: self.addr,
        }
    }
}

/// Handles of several replicas.
pub fn handles(replicas: &[Replica]) -> Vec<Handle> {
    replicas.iter().map(Replica::handle).collect()
}

enum Kind {
    Process(tokio::process::Child),
    Container(String),
    /// Run by a live service's process, under this name there.
    Live(String),
}

/// Starts and stops the replicas of one service.
pub struct Launcher {
    pub service: String,
    pub state_dir: PathBuf,
    pub workdir: PathBuf,
    pub env: Vec<(String, String)>,
    pub log: mpsc::Sender<String>,
    docker: OnceCell<DockerExecutor>,
    /// A live service's process: process replicas are started there, so
    /// they outlive this trackside; with the deploy's health check.
    live: Option<(super::service::Client, HealthCheck)>,
}

impl Launcher {
    pub fn new(
        service: &str,
        state_dir: PathBuf,
        workdir: PathBuf,
        env: Vec<(String, String)>,
        log: mpsc::Sender<String>,
    ) -> Self {
        Launcher {
            service: service.to_string(),
            state_dir,
            workdir,
            env,
            log,
            docker: OnceCell::new(),
            live: None,
        }
    }

    /// Process replicas go to the service process behind `client`.
    pub fn serving_through(mut self, client: super::service::Client, health: HealthCheck) -> Self {
        self.live = Some((client, health));
        self
    }

    /// A replica the service process already runs, as this deploy sees it.
    pub fn adopt(&self, r: &super::service::LiveReplica, pool: Pool) -> Replica {
        Replica {
            addr: r.addr(),
            name: format!("{} {}", pool.name(), r.spec.name),
            pool,
            kind: Kind::Live(r.spec.name.clone()),
        }
    }

    /// The tag every replica of the service carries.
    pub fn tag(&self) -> String {
        format!("deploy:{}:{}", self.state_dir.display(), self.service)
    }

    async fn docker(&self) -> Result<&DockerExecutor, String> {
        self.docker
            .get_or_try_init(|| async { DockerExecutor::connect().await.map_err(|e| e.to_string()) })
            .await
    }

    /// Stops what an earlier, killed trackside left running for this service.
    pub async fn sweep(&self, containers: bool) -> usize {
        let tag = self.tag();
        let t = tag.clone();
        let mut n = tokio::task::spawn_blocking(move || crate::exec::shell::sweep_tagged(&t))
            .await
            .unwrap_or(0);
        if containers && let Ok(d) = self.docker().await {
            n += d.remove_replicas(&tag).await;
        }
        n
    }

    /// Starts replica number `i` (from 1) of `rev` in `pool`.
    pub async fn start(&self, rev: &Revision, pool: Pool, i: u32) -> Result<Replica, String> {
        let name = format!("{} {}#{i}", pool.name(), rev.version);
        if let Some((client, health)) = &self.live {
            let port = free_port()?;
            // Unique within the service: the same version may be retiring.
            let id = format!("{}#{i}.{:04x}", rev.version, fastrand::u16(..));
            let (run, template, container, what) = match rev.target() {
                Target::Process { run } => {
                    let cmd = run.replace("${PORT}", &port.to_string());
                    (cmd.clone(), run, None, format!("on port {port}: {cmd}"))
                }
                Target::Container { image, port: inner } => {
                    let what = format!(
                        "as a container of {image} (port {inner} published on 127.0.0.1:{port}, restart policy unless-stopped)"
                    );
                    let c = super::service::ContainerSpec { image, port: inner };
                    (String::new(), String::new(), Some(c), what)
                }
            };
            let spec = super::service::ReplicaSpec {
                name: id.clone(),
                version: rev.version.clone(),
                run,
                template,
                port,
                env: self.env.clone(),
                workdir: self.workdir.clone(),
                health: Some(health.clone()),
                container,
            };
            client
                .call(&super::service::Request::Start {
                    replica: Box::new(spec),
                })
                .await?;
            let log = super::service::paths(&self.state_dir, &self.service)
                .logs
                .join(format!("{}.log", safe_name(&id)));
            let _ = self
                .log
                .send(format!(
                    "started {} {id} {what} (kept by the service process; output in {})",
                    pool.name(),
                    log.display()
                ))
                .await;
            return Ok(Replica {
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
                name: format!("{} {id}", pool.name()),
                pool,
                kind: Kind::Live(id),
            });
        }
        match rev.target() {
            Target::Process { run } => {
                let port = free_port()?;
                let cmd = run.replace("${PORT}", &port.to_string());
                let mut child = tokio::process::Command::new("/bin/sh")
                    .arg("-c")
                    .arg(&cmd)
                    .current_dir(&self.workdir)
                    .envs(self.env.iter().cloned())
                    .env("PORT", port.to_string())
                    .env(crate::exec::TAG_VAR, self.tag())
                    .process_group(0)
                    .kill_on_drop(true)
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .map_err(|e| format!("cannot start `{cmd}`: {e}"))?;
                let streams = [
                    child
                        .stdout
                        .take()
                        .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
                    child
                        .stderr
                        .take()
                        .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
                ];
                for stream in streams.into_iter().flatten() {
                    let (log, tag) = (self.log.clone(), name.clone());
                    tokio::spawn(async move {
                        let mut lines = BufReader::new(stream).lines();
                        while let Ok(Some(line)) = lines.next_line().await {
                            let _ = log.send(format!("[{tag}] {line}")).await;
                        }
                    });
                }
                let _ = self.log.send(format!("started {name} on port {port}: {cmd}")).await;
                Ok(Replica {
                    addr: SocketAddr::from(([127, 0, 0, 1], port)),
                    name,
                    pool,
                    kind: Kind::Process(child),
                })
            }
            Target::Container { image, port } => {
                let docker = self.docker().await?;
                let (out, mut lines) = mpsc::channel::<crate::exec::OutputLine>(64);
                let (log, tag) = (self.log.clone(), name.clone());
                tokio::spawn(async move {
                    while let Some(l) = lines.recv().await {
                        let _ = log.send(format!("[{tag}] {}", l.text)).await;
                    }
                });
                let cname = format!(
                    "trackside-{}-{}-{i}-{:08x}",
                    safe_name(&self.service),
                    safe_name(&rev.version),
                    fastrand::u32(..)
                );
                let (id, host_port) = docker
                    .start_replica(&cname, &image, port, &self.env, &self.tag(), out)
                    .await?;
                let _ = self
                    .log
                    .send(format!(
                        "started {name}: container {cname} of {image}, port {port} published on 127.0.0.1:{host_port}"
                    ))
                    .await;
                Ok(Replica {
                    addr: SocketAddr::from(([127, 0, 0, 1], host_port)),
                    name,
                    pool,
                    kind: Kind::Container(id),
                })
            }
        }
    }

    /// Starts all replicas of `rev` in `pool`; on a failure, stops the ones
    /// already started.
    pub async fn start_all(&self, rev: &Revision, pool: Pool) -> Result<Vec<Replica>, String> {
        let mut out = Vec::new();
        for i in 1..=rev.replicas {
            match self.start(rev, pool, i).await {
                Ok(r) => out.push(r),
                Err(e) => {
                    self.stop_all(out).await;
                    return Err(e);
                }
            }
        }
        Ok(out)
    }

    pub async fn stop(&self, r: Replica) {
        match r.kind {
            Kind::Process(mut child) => {
                if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
                    let pg = nix::unistd::Pid::from_raw(pid);
                    let _ = nix::sys::signal::killpg(pg, nix::sys::signal::Signal::SIGTERM);
                    if tokio::time::timeout(STOP_GRACE, child.wait()).await.is_err() {
                        let _ = nix::sys::signal::killpg(pg, nix::sys::signal::Signal::SIGKILL);
                        let _ = child.wait().await;
                    }
                }
            }
            Kind::Container(id) => {
                if let Ok(d) = self.docker().await {
                    d.stop_replica(&id, STOP_GRACE).await;
                }
            }
            Kind::Live(id) => self.retire(vec![id], Duration::ZERO).await,
        }
    }

    /// Has the service process stop `ids` after `delay` (they serve no
    /// traffic meanwhile).
    async fn retire(&self, ids: Vec<String>, delay: Duration) {
        if let Some((c, _)) = &self.live {
            let after_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
            if let Err(e) = c.call(&super::service::Request::Retire { names: ids, after_ms }).await {
                let _ = self.log.send(format!("cannot retire replicas: {e}")).await;
            }
        }
    }

    /// Live replicas: stopped by the service process after `delay`;
    /// others: stopped now. Returns what it says of them.
    pub async fn retire_after(&self, replicas: Vec<Replica>, delay: Duration) {
        let mut live = Vec::new();
        for r in replicas {
            match r.kind {
                Kind::Live(id) => live.push(id),
                _ => self.stop(r).await,
            }
        }
        if !live.is_empty() {
            self.retire(live, delay).await;
        }
    }

    pub async fn stop_all(&self, replicas: Vec<Replica>) {
        for r in replicas {
            self.stop(r).await;
        }
    }
}

/// How long a port [`free_port`] handed out is not handed out again: what
/// it was for (a replica's command, a container's published port, a
/// router) binds it some time after, and until then the kernel sees it
/// free and offers it to the next ask (in a few thousand asks, it offers
/// a port twice more than a hundred times).
const PORT_HELD: Duration = Duration::from_secs(120);
/// At most this many ports are remembered; the oldest are forgotten first.
const PORTS_REMEMBERED: usize = 4096;
/// How many ports [`free_port`] asks the system for before it gives up.
const TRIES: usize = 64;

/// Ports handed out, oldest first, with when.
static HANDED_OUT: Mutex<std::collections::VecDeque<(u16, Instant)>> = Mutex::new(std::collections::VecDeque::new());

/// A loopback port nothing listens on now, and that this process has not
/// handed out in the last [`PORT_HELD`] (two replicas started one after
/// the other, before the first has bound its port, get two ports).
/// Another process may still take it first: what binds it reports that.
pub fn free_port() -> Result<u16, String> {
    let mut given = HANDED_OUT.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let now = Instant::now();
    while given
        .front()
        .is_some_and(|(_, at)| now.duration_since(*at) >= PORT_HELD || given.len() >= PORTS_REMEMBERED)
    {
        given.pop_front();
    }
    // The kernel picks among some 14,000-28,000 ports: a few asks find a
    // new one.
    for _ in 0..TRIES {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .map_err(|e| format!("cannot find a free port: {e}"))?;
        if !given.iter().any(|(p, _)| *p == port) {
            given.push_back((port, now));
            return Ok(port);
        }
    }
    Err(format!(
        "cannot find a free port: in {TRIES} tries the system offered only ports handed out in the last {} s",
        PORT_HELD.as_secs()
    ))
}

/// The replicas' health as last seen, shared between probes and status.
#[derive(Clone, Default)]
pub struct Board(Arc<Mutex<BTreeMap<String, ReplicaView>>>);

impl Board {
    pub fn set(&self, r: &Handle, health: &str) {
        let mut m = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        m.insert(
            r.name.clone(),
            ReplicaView {
                name: r.name.clone(),
                pool: r.pool,
                addr: r.addr.to_string(),
                health: health.to_string(),
            },
        );
    }

    fn set_health(&self, name: &str, health: &str) {
        let mut m = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(v) = m.get_mut(name) {
            v.health = health.to_string();
        }
    }

    fn has(&self, name: &str) -> bool {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(name)
            .is_some_and(|v| v.health != "draining")
    }

    pub fn remove(&self, name: &str) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(name);
    }

    pub fn snapshot(&self) -> Vec<ReplicaView> {
        let m = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut v: Vec<ReplicaView> = m.values().cloned().collect();
        v.sort_by(|a, b| (a.pool.name(), &a.name).cmp(&(b.pool.name(), &b.name)));
        v
    }
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>;

fn http_client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// One probe of one replica: Ok(true) healthy, Ok(false) answered but not
/// healthy, Err(()) no answer at all.
async fn probe(client: &HttpClient, addr: SocketAddr, p: &Probe, limit: Duration) -> Result<bool, ()> {
    let attempt = async {
        match p {
            Probe::Http { path, status } => {
                let uri: hyper::Uri = format!("http://{addr}{path}").parse().map_err(|_| ())?;
                let r = client.get(uri).await.map_err(|_| ())?;
                Ok(match status {
                    Some(s) => r.status().as_u16() == *s,
                    None => r.status().is_success(),
                })
            }
            Probe::Tcp => tokio::net::TcpStream::connect(addr).await.map(|_| true).map_err(|_| ()),
            Probe::Command(cmd) => tokio::process::Command::new("/bin/sh")
                .arg("-c")
                .arg(cmd.replace("${PORT}", &addr.port().to_string()))
                .env("PORT", addr.port().to_string())
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true)
                .status()
                .await
                .map(|s| s.success())
                .map_err(|_| ()),
        }
    };
    tokio::time::timeout(limit, attempt).await.unwrap_or(Err(()))
}

fn describe_probe(addr: SocketAddr, p: &Probe) -> String {
    match p {
        Probe::Http { path, .. } => format!("http://{addr}{path}"),
        Probe::Tcp => format!("tcp {addr}"),
        Probe::Command(c) => format!("`{c}` for {addr}"),
    }
}

fn probe_limit(h: &HealthCheck) -> Duration {
    h.interval.max(Duration::from_millis(200))
}

/// Probes every replica until each has `success_threshold` healthy answers
/// in a row; fails a replica after `failure_threshold` failures in a row
/// once it has answered at all, or when `timeout` passes.
pub async fn wait_healthy(
    replicas: &[Handle],
    h: &HealthCheck,
    board: &Board,
    cancel: &CancellationToken,
) -> Result<(), String> {
    let client = http_client();
    let deadline = Instant::now() + h.timeout;
    for r in replicas {
        board.set(r, "starting");
    }
    for r in replicas {
        let (mut ok, mut bad, mut answered) = (0, 0, false);
        let what = format!("{} ({})", r.name, describe_probe(r.addr, &h.probe));
        loop {
            let healthy = match probe(&client, r.addr, &h.probe, probe_limit(h)).await {
                Ok(good) => {
                    // A failing command may only mean "not up yet": only a
                    // success proves the replica answers at all.
                    answered |= good || !matches!(h.probe, Probe::Command(_));
                    good
                }
                Err(()) => false,
            };
            if healthy {
                ok += 1;
                bad = 0;
                if ok >= h.success_threshold {
                    board.set_health(&r.name, "healthy");
                    break;
                }
            } else {
                ok = 0;
                bad += 1;
                if answered && bad >= h.failure_threshold {
                    board.set_health(&r.name, "unhealthy");
                    return Err(format!("{what} failed {bad} health checks in a row"));
                }
            }
            if Instant::now() >= deadline {
                board.set_health(&r.name, "unhealthy");
                return Err(format!("{what} was not healthy within {}s", h.timeout.as_secs()));
            }
            tokio::select! {
                () = cancel.cancelled() => return Err("cancelled".into()),
                () = tokio::time::sleep(h.interval) => {}
            }
        }
    }
    Ok(())
}

/// Keeps probing healthy replicas until `stop` (or until a replica leaves
/// the board, drained or stopped): a replica that fails
/// `failure_threshold` checks in a row is reported on `tx` (once, until it
/// recovers) and shown unhealthy.
pub fn monitor(
    replicas: Vec<Handle>,
    h: &HealthCheck,
    board: &Board,
    stop: CancellationToken,
    tx: mpsc::Sender<(Pool, String)>,
) {
    let (h, board) = (h.clone(), board.clone());
    tokio::spawn(async move {
        let client = http_client();
        let mut bad = vec![0u32; replicas.len()];
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(h.interval) => {}
            }
            for (i, Handle { name, pool, addr }) in replicas.iter().enumerate() {
                // Replicas being drained or stopped are no longer watched.
                if !board.has(name) {
                    continue;
                }
                let healthy = probe(&client, *addr, &h.probe, probe_limit(&h)).await == Ok(true);
                if stop.is_cancelled() {
                    return;
                }
                if healthy {
                    if bad[i] >= h.failure_threshold {
                        board.set_health(name, "healthy");
                    }
                    bad[i] = 0;
                    continue;
                }
                bad[i] += 1;
                if bad[i] == h.failure_threshold {
                    board.set_health(name, "unhealthy");
                    let why = format!(
                        "{name} ({}) failed {} health checks in a row",
                        describe_probe(*addr, &h.probe),
                        bad[i]
                    );
                    let _ = tx.send((*pool, why)).await;
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_is_not_handed_out_twice_while_it_may_not_be_bound_yet() {
        // Without the memory, the kernel offers some port twice in far
        // fewer asks than this (the ports it offers are never bound here).
        let asks = 2000;
        let ports: Vec<u16> = (0..asks).map(|_| free_port().expect("a free port")).collect();
        let distinct: std::collections::HashSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), asks, "a port was handed out twice");
        assert!(ports.iter().all(|&p| p != 0));
    }

    #[tokio::test]
    async fn probes_check_status_ports_and_commands() {
        let stop = CancellationToken::new();
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let svc = super::super::demo::DemoService {
            version: "v1".into(),
            error_rate: 0.0,
            latency: Duration::ZERO,
        };
        tokio::spawn(svc.serve(l, stop.clone()));
        let client = http_client();
        let limit = Duration::from_secs(5);
        let http = |status| Probe::Http {
            path: "/healthz".into(),
            status,
        };
        assert_eq!(probe(&client, addr, &http(None), limit).await, Ok(true));
        assert_eq!(probe(&client, addr, &http(Some(200)), limit).await, Ok(true));
        assert_eq!(
            probe(&client, addr, &http(Some(204)), limit).await,
            Ok(false),
            "answered, wrong status"
        );
        assert_eq!(probe(&client, addr, &Probe::Tcp, limit).await, Ok(true));
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr")
        };
        assert_eq!(
            probe(&client, closed, &Probe::Tcp, limit).await,
            Err(()),
            "nothing listens"
        );
        let cmd = |c: &str| Probe::Command(c.into());
        assert_eq!(
            probe(&client, addr, &cmd("test \"$PORT\" -gt 0"), limit).await,
            Ok(true)
        );
        assert_eq!(probe(&client, addr, &cmd("exit 3"), limit).await, Ok(false));
        stop.cancel();
    }

    #[tokio::test]
    async fn a_command_that_never_succeeds_waits_for_the_timeout_and_the_monitor_reports_a_dying_replica() {
        let (log, _logs) = mpsc::channel(64);
        let dir = tempfile::tempdir().expect("tempdir");
        let launcher = Launcher::new("svc", dir.path().into(), dir.path().into(), Vec::new(), log);
        let rev = Revision::new(
            "v1",
            &Target::Process {
                run: "exec sleep 600 # ${PORT}".into(),
            },
            1,
        );
        let r = launcher.start(&rev, Pool::Canary, 1).await.expect("start");
        let board = Board::default();
        let cancel = CancellationToken::new();
        let h = HealthCheck {
            probe: Probe::Command("exit 1".into()),
            interval: Duration::from_millis(50),
            success_threshold: 1,
            failure_threshold: 1,
            timeout: Duration::from_millis(300),
        };
        let e = wait_healthy(&[r.handle()], &h, &board, &cancel)
            .await
            .expect_err("never healthy");
        assert!(e.contains("was not healthy within"), "{e}");
        assert_eq!(board.snapshot()[0].health, "unhealthy");
        // The monitor: healthy while a flag file exists, then not.
        let flag = dir.path().join("up");
        std::fs::write(&flag, "").expect("flag");
        let h = HealthCheck {
            probe: Probe::Command(format!("test -e {}", flag.display())),
            failure_threshold: 2,
            ..h
        };
        wait_healthy(&[r.handle()], &h, &board, &cancel).await.expect("healthy");
        assert_eq!(board.snapshot()[0].health, "healthy");
        let (tx, mut rx) = mpsc::channel(4);
        monitor(vec![r.handle()], &h, &board, cancel.clone(), tx);
        std::fs::remove_file(&flag).expect("rm");
        let (pool, why) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("reported in time")
            .expect("a report");
        assert_eq!(pool, Pool::Canary);
        assert!(
            why.contains("canary v1#1") && why.contains("2 health checks in a row"),
            "{why}"
        );
        assert_eq!(board.snapshot()[0].health, "unhealthy");
        cancel.cancel();
        launcher.stop(r).await;
    }
}
