//! HAProxy as the traffic router, steered through its runtime API.
//!
//! trackside either starts `haproxy` with a config it writes for the
//! service, or steers a running HAProxy through its admin stats socket.
//! The backend has fixed server slots, `stable1..N` and `canary1..N`;
//! replicas are put into slots with `set server ... addr`, and traffic
//! moves with `set server ... weight`, never a reload. Both weights of a
//! change go in one request, applied back to back.
//!
//! HAProxy's weights are integers up to 256 per server, so a share is
//! matched as closely as the replica counts allow ([`split`]); the pane
//! shows the desired and the actual share side by side.
//!
//! Measurements come from HAProxy itself: one log line per request (the
//! backend, server, status and time), received on a Unix datagram socket,
//! feeds the same per-pool samples the judge reads for the built-in router;
//! the kernel names each datagram's sender (SO_PASSCRED), so a line from
//! any uid but trackside's, root's or the running HAProxy's is dropped,
//! never judged (a UDP port would let any local user forge them); and
//! `show stat` gives the per-server state, weight, requests, 5xx and
//! connections in flight.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixDatagram;
use tokio_util::sync::CancellationToken;

use super::router::{COOKIE, FULL, Pool, Router};

/// The largest weight HAProxy takes for one server.
const MAX_WEIGHT: u32 = 256;
/// Unix socket paths are limited to 108 bytes on Linux.
const MAX_SOCKET_PATH: usize = 100;

/// The per-server weights (stable, canary) whose total share for the
/// canary pool is closest to `weight` (tenths of a percent), and that
/// share. With one pool empty, the other gets everything.
pub fn split(weight: u32, n_stable: u32, n_canary: u32) -> (u32, u32, u32) {
    let weight = weight.min(FULL);
    if n_canary == 0 || weight == 0 {
        return (MAX_WEIGHT, 0, 0);
    }
    if n_stable == 0 || weight == FULL {
        return (0, MAX_WEIGHT, FULL);
    }
    let share = |ws: u32, wc: u32| {
        let (s, c) = (u64::from(ws * n_stable), u64::from(wc * n_canary));
        (c * 1000 + (s + c) / 2).checked_div(s + c).unwrap_or(0) as u32
    };
    let target = f64::from(weight) / 1000.0;
    let mut best = (MAX_WEIGHT, 0, f64::INFINITY);
    for ws in 1..=MAX_WEIGHT {
        // The canary weight that gives the share exactly, rounded.
        let exact = target * f64::from(ws * n_stable) / ((1.0 - target) * f64::from(n_canary));
        for wc in [exact.floor(), exact.ceil()] {
            let wc = wc.clamp(0.0, f64::from(MAX_WEIGHT)) as u32;
            let (s, c) = (f64::from(ws * n_stable), f64::from(wc * n_canary));
            let err = (c / (s + c) - target).abs();
            // Ties go to larger weights: finer later changes.
            if err < best.2 - 1e-12 || ((err - best.2).abs() <= 1e-12 && ws + wc > best.0 + best.1) {
                best = (ws, wc, err);
            }
        }
    }
    (best.0, best.1, share(best.0, best.1))
}

/// One server of the backend, from `show stat`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerStat {
    pub name: String,
    /// `UP`, `MAINT`, `DRAIN`, `no check`...
    pub status: String,
    pub weight: u32,
    /// Answers sent (all status classes).
    pub requests: u64,
    pub errors_5xx: u64,
    pub connection_errors: u64,
    /// Sessions in flight.
    pub current: u64,
}

/// Parses `show stat` CSV: the servers of `backend`.
pub fn parse_stat(csv: &str, backend: &str) -> Vec<ServerStat> {
    let mut lines = csv.lines();
    let Some(header) = lines.next() else {
        return Vec::new();
    };
    let cols: Vec<&str> = header.trim_start_matches("# ").split(',').collect();
    let col = |name: &str| cols.iter().position(|c| *c == name);
    let num = |f: &[&str], name: &str| -> u64 {
        col(name)
            .and_then(|i| f.get(i))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let mut out = Vec::new();
    for line in lines {
        let f: Vec<&str> = line.split(',').collect();
        let (Some(px), Some(sv)) = (f.first(), f.get(1)) else {
            continue;
        };
        if *px != backend || *sv == "FRONTEND" || *sv == "BACKEND" {
            continue;
        }
        let requests = ["hrsp_1xx", "hrsp_2xx", "hrsp_3xx", "hrsp_4xx", "hrsp_5xx", "hrsp_other"]
            .iter()
            .map(|c| num(&f, c))
            .sum();
        out.push(ServerStat {
            name: sv.to_string(),
            status: col("status")
                .and_then(|i| f.get(i))
                .map(|s| s.to_string())
                .unwrap_or_default(),
            weight: num(&f, "weight") as u32,
            requests,
            errors_5xx: num(&f, "hrsp_5xx"),
            connection_errors: num(&f, "econ"),
            current: num(&f, "scur"),
        });
    }
    out
}

/// One request from HAProxy's log: `<backend> <server> <status> <ms>`.
/// Returns the pool, the time and whether it was an error; `None` for
/// lines of other backends, or requests no server took.
pub fn parse_log(line: &str, backend: &str) -> Option<(Pool, Duration, bool)> {
    // A syslog header may precede the message; the fields are the last four.
    let f: Vec<&str> = line.split_whitespace().collect();
    let [be, server, status, ms] = f.get(f.len().checked_sub(4)?..)? else {
        return None;
    };
    if !(*be == backend
        || be
            .strip_prefix(backend)
            .is_some_and(|r| r == "_stable" || r == "_canary"))
    {
        return None;
    }
    let pool = if server.starts_with("canary") {
        Pool::Canary
    } else if server.starts_with("stable") {
        Pool::Stable
    } else {
        return None;
    };
    let status: i32 = status.parse().ok()?;
    let ms: i64 = ms.parse().ok()?;
    Some((
        pool,
        Duration::from_millis(u64::try_from(ms).unwrap_or(0)),
        !(100..500).contains(&status),
    ))
}

/// The config trackside writes when it starts HAProxy itself. With
/// `pools_map`, a client keeps to the pool that first answered it (the
/// `trackside_pool` cookie, as with the built-in router): the frontend looks
/// the cookie up in that map, whose entries [`Haproxy::set_weight`] point at
/// a pool's backend while the pool takes traffic and at the weighted backend
/// when it takes none (so an abort overrides the cookie).
pub fn config(
    backend: &str,
    listen: SocketAddr,
    socket: &Path,
    log: &Path,
    slots: u32,
    pools_map: Option<&Path>,
) -> String {
    let mut c = format!(
        "# Written by trackside for `{backend}`; written again whenever trackside starts this HAProxy.\n\
         global\n    stats socket {sock} mode 600 level admin\n    log {log} len 4096 format raw local0\n\n\
         defaults\n    mode http\n    log global\n    log-format \"%b %s %ST %Ta\"\n\
         \x20   timeout connect 2s\n    timeout client 60s\n    timeout server 60s\n\
         \x20   retries 3\n    option redispatch\n\n\
         frontend {backend}_in\n    bind {listen}\n\
         \x20   use_backend {backend}_canary if {{ req.hdr(x-canary) -m str always }}\n\
         \x20   use_backend {backend}_stable if {{ req.hdr(x-canary) -m str never }}\n",
        sock = socket.display(),
        log = log.display()
    );
    // Every answer names the pool that gave it, for the next request.
    let mut set_cookie = String::new();
    if let Some(map) = pools_map {
        c.push_str(&format!(
            "    use_backend %[req.cook({COOKIE}),map({},{backend})]\n",
            map.display()
        ));
        for p in [Pool::Stable, Pool::Canary] {
            set_cookie.push_str(&format!(
                "    http-response set-header Set-Cookie \"{COOKIE}={pool}; Path=/\" if {{ srv_name -m beg {pool} }}\n",
                pool = p.name()
            ));
        }
    }
    c.push_str(&format!("    default_backend {backend}\n"));
    let servers = |pools: &[Pool]| {
        let mut s = String::new();
        for p in pools {
            for i in 1..=slots {
                s.push_str(&format!("    server {}{i} 127.0.0.1:1 weight 1 disabled\n", p.name()));
            }
        }
        s
    };
    c.push_str(&format!(
        "\nbackend {backend}\n    balance roundrobin\n{set_cookie}{}",
        servers(&[Pool::Stable, Pool::Canary])
    ));
    for p in [Pool::Stable, Pool::Canary] {
        c.push_str(&format!(
            "\nbackend {backend}_{}\n{set_cookie}{}",
            p.name(),
            servers(&[p])
        ));
    }
    c
}

/// A connection to HAProxy's runtime API.
#[derive(Debug, Clone)]
pub struct RuntimeApi {
    pub socket: PathBuf,
}

impl RuntimeApi {
    /// Sends one line of commands (`;`-separated) and returns the answer.
    pub async fn call(&self, line: &str) -> Result<String, String> {
        let talk = async {
            let mut s = tokio::net::UnixStream::connect(&self.socket).await?;
            s.write_all(format!("{line}\n").as_bytes()).await?;
            let mut out = String::new();
            s.read_to_string(&mut out).await?;
            Ok::<_, std::io::Error>(out)
        };
        match tokio::time::timeout(Duration::from_secs(2), talk).await {
            Ok(Ok(out)) => Ok(out),
            Ok(Err(e)) => Err(format!("HAProxy's socket {}: {e}", self.socket.display())),
            Err(_) => Err(format!(
                "HAProxy's socket {} did not answer in 2 s",
                self.socket.display()
            )),
        }
    }

    /// Commands that answer nothing on success (weight, state): any answer
    /// is HAProxy's complaint.
    async fn quiet(&self, line: &str) -> Result<(), String> {
        let out = self.call(line).await?;
        match out.trim() {
            "" => Ok(()),
            e => Err(format!("HAProxy refused `{line}`: {e}")),
        }
    }

    pub async fn stat(&self, backend: &str) -> Result<Vec<ServerStat>, String> {
        Ok(parse_stat(&self.call("show stat").await?, backend))
    }
}

/// HAProxy routing one service: its slots, what is in them, the weights.
pub struct Haproxy {
    pub api: RuntimeApi,
    pub backend: String,
    /// Also steer `<backend>_stable` and `<backend>_canary` (header routing).
    header_backends: bool,
    /// Where the sticky cookie leads (only in a config trackside wrote).
    pools_map: Option<PathBuf>,
    slots: u32,
    /// Measurements, fed from the request log.
    pub stats: Arc<Router>,
    state: Mutex<HState>,
    child: Mutex<Option<tokio::process::Child>>,
}

#[derive(Default)]
struct HState {
    /// Addresses in the slots of each pool.
    filled: [Vec<SocketAddr>; 2],
    /// The slot each address was last put in (also after it left).
    slot_of: std::collections::HashMap<SocketAddr, String>,
    actual: u32,
}

/// The files of an HAProxy trackside runs for `backend`, under one folder
/// only trackside's user may reach (the config names the sockets).
struct Files {
    socket: PathBuf,
    log: PathBuf,
    config: PathBuf,
    map: PathBuf,
}

impl Files {
    fn of(dir: &Path, backend: &str) -> Result<Files, String> {
        let f = Files {
            socket: dir.join(format!("{backend}.sock")),
            log: dir.join(format!("{backend}.log.sock")),
            config: dir.join(format!("{backend}.cfg")),
            map: dir.join(format!("{backend}.pools.map")),
        };
        for s in [&f.socket, &f.log] {
            if s.as_os_str().len() > MAX_SOCKET_PATH {
                return Err(format!(
                    "HAProxy's socket path {} is too long for a Unix socket; use a shorter state directory (--state-dir)",
                    s.display()
                ));
            }
        }
        Ok(f)
    }

    /// Writes the config and the map; binds the log socket.
    fn write(&self, dir: &Path, backend: &str, listen: SocketAddr, slots: u32) -> Result<LogSocket, String> {
        use std::os::unix::fs::PermissionsExt;
        match std::fs::metadata(dir) {
            // Only its user's, but a group's search (a service socket opened
            // to a group, beside these files) is kept.
            Ok(m) if m.is_dir() => {
                let mode = 0o700 | (m.permissions().mode() & 0o010);
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
                    .map_err(|e| format!("cannot make {} private: {e}", dir.display()))?;
            }
            _ => crate::store::private_dir(dir).map_err(|e| e.to_string())?,
        }
        let _ = std::fs::remove_file(&self.socket);
        let log = self.bind_log()?;
        // Sticky sessions: both cookies lead to the weighted backend until
        // the weights say otherwise.
        let config_text = config(backend, listen, &self.socket, &self.log, slots, Some(&self.map));
        for (path, text) in [
            (&self.map, format!("stable {backend}\ncanary {backend}\n")),
            (&self.config, config_text),
        ] {
            crate::store::write_with_mode(path, text.as_bytes(), 0o600).map_err(|e| e.to_string())?;
        }
        Ok(log)
    }

    fn bind_log(&self) -> Result<LogSocket, String> {
        LogSocket::bind(&self.log, 0o600, vec![nix::unistd::geteuid().as_raw(), 0]).map_err(|e| e.to_string())
    }
}

fn not_installed(binary: &str, e: &std::io::Error) -> String {
    format!(
        "cannot start `{binary}`: {e}; install HAProxy (Debian: apt-get install haproxy) or set router.haproxy.binary"
    )
}

/// Why HAProxy did not come up.
enum NotReady {
    Exited(String),
    Silent(String),
}

/// Waits until HAProxy's runtime API answers; `exited` says how it ended,
/// if it did.
async fn wait_ready(api: &RuntimeApi, mut exited: impl FnMut() -> Option<String>) -> Result<(), NotReady> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if api.call("show info").await.is_ok() {
            return Ok(());
        }
        if let Some(status) = exited() {
            return Err(NotReady::Exited(status));
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(NotReady::Silent(format!(
                "haproxy did not open its socket {} in 10 s",
                api.socket.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn exited(config: &Path, status: &str, said: &str) -> String {
    format!(
        "haproxy exited ({status}) with config {}: {}",
        config.display(),
        said.trim()
    )
}

impl Haproxy {
    /// Starts HAProxy for `backend` on `listen` with slots for `slots`
    /// replicas per pool, under `dir` (config and socket), as a child that
    /// lives as long as this trackside (a rehearsal's router).
    pub async fn start(
        binary: &str,
        dir: &Path,
        backend: &str,
        listen: SocketAddr,
        slots: u32,
        tag: &str,
        stop: CancellationToken,
    ) -> Result<Arc<Haproxy>, String> {
        let files = Files::of(dir, backend)?;
        let log = files.write(dir, backend, listen, slots)?;
        let mut child = tokio::process::Command::new(binary)
            .arg("-f")
            .arg(&files.config)
            .arg("-db")
            .env(crate::exec::TAG_VAR, tag)
            .process_group(0)
            .kill_on_drop(true)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| not_installed(binary, &e))?;
        let api = RuntimeApi {
            socket: files.socket.clone(),
        };
        // An early exit says why in stderr.
        match wait_ready(&api, || Some(child.try_wait().ok()??.to_string())).await {
            Ok(()) => {}
            Err(NotReady::Silent(e)) => return Err(e),
            Err(NotReady::Exited(status)) => {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_string(&mut err).await;
                }
                return Err(exited(&files.config, &status, &err));
            }
        }
        Ok(Haproxy::steering(
            api,
            backend,
            files.map,
            slots,
            Some(child),
            log,
            stop,
        ))
    }

    /// Starts HAProxy like [`Haproxy::start`], but in a session of its own
    /// that outlives this process (a live service's router; its service
    /// process adopts it again with [`Haproxy::adopt`]). Its own messages
    /// go to `errors`; `pid:start` goes to `pid_file` as soon as it runs
    /// (a process killed while it starts leaves nothing unnamed). Returns
    /// it, its pid and start time.
    #[allow(clippy::too_many_arguments)]
    pub async fn start_detached(
        binary: &str,
        dir: &Path,
        backend: &str,
        listen: SocketAddr,
        slots: u32,
        errors: &Path,
        pid_file: &Path,
        stop: CancellationToken,
    ) -> Result<(Arc<Haproxy>, (u32, u64)), String> {
        let files = Files::of(dir, backend)?;
        let log = files.write(dir, backend, listen, slots)?;
        let err = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(errors)
                .map_err(|e| format!("cannot create {}: {e}", errors.display()))?
        };
        let mut cmd = std::process::Command::new(binary);
        cmd.arg("-f")
            .arg(&files.config)
            .arg("-db")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(err);
        // SAFETY: setsid is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| nix::unistd::setsid().map(drop).map_err(std::io::Error::from));
        }
        let mut child = cmd.spawn().map_err(|e| not_installed(binary, &e))?;
        let pid = child.id();
        let start = crate::process::start_time(pid).unwrap_or(0);
        if let Err(e) = crate::store::write_with_mode(pid_file, format!("{pid}:{start}\n").as_bytes(), 0o600) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("cannot write {}: {e}", pid_file.display()));
        }
        let api = RuntimeApi {
            socket: files.socket.clone(),
        };
        match wait_ready(&api, || Some(child.try_wait().ok()??.to_string())).await {
            Ok(()) => {}
            Err(NotReady::Silent(e)) => {
                let _ = child.kill();
                let _ = child.wait();
                let _ = std::fs::remove_file(pid_file);
                return Err(e);
            }
            Err(NotReady::Exited(status)) => {
                // Its first messages say why; no more is read.
                let mut said = String::new();
                if let Ok(f) = std::fs::File::open(errors) {
                    use std::io::Read as _;
                    let _ = f.take(64 * 1024).read_to_string(&mut said);
                }
                let _ = std::fs::remove_file(pid_file);
                return Err(exited(&files.config, &status, &said));
            }
        }
        // Reaped if it ends while this process lives; else by init.
        std::thread::spawn(move || {
            let _ = child.wait();
        });
        Ok((
            Haproxy::steering(api, backend, files.map, slots, None, log, stop),
            (pid, start),
        ))
    }

    /// Steers an HAProxy that [`Haproxy::start_detached`] started under
    /// `dir` (by an earlier service process): its sockets, map and slots
    /// are as that config wrote them, and its log comes here again.
    pub async fn adopt(dir: &Path, backend: &str, stop: CancellationToken) -> Result<Arc<Haproxy>, String> {
        let files = Files::of(dir, backend)?;
        let api = RuntimeApi {
            socket: files.socket.clone(),
        };
        let servers = api.stat(backend).await?;
        let slots = u32::try_from(
            servers
                .iter()
                .filter(|s| s.name.starts_with(Pool::Stable.name()))
                .count(),
        )
        .unwrap_or(u32::MAX);
        if slots == 0 {
            return Err(format!(
                "the HAProxy at {} has no slots for `{backend}`",
                files.socket.display()
            ));
        }
        let log = files.bind_log()?;
        Ok(Haproxy::steering(api, backend, files.map, slots, None, log, stop))
    }

    /// An HAProxy whose config trackside wrote, its log received from `log`.
    fn steering(
        api: RuntimeApi,
        backend: &str,
        map: PathBuf,
        slots: u32,
        child: Option<tokio::process::Child>,
        log: LogSocket,
        stop: CancellationToken,
    ) -> Arc<Haproxy> {
        let h = Arc::new(Haproxy {
            api,
            backend: backend.to_string(),
            header_backends: true,
            pools_map: Some(map),
            slots,
            stats: Router::new(false),
            state: Mutex::new(HState::default()),
            child: Mutex::new(child),
        });
        tokio::spawn(log.receive(backend.to_string(), h.stats.clone(), stop));
        h
    }

    /// Steers a running HAProxy: its backend must have server slots named
    /// `stable1..N` and `canary1..N`. With `log` (a Unix socket path),
    /// trackside receives its request log there, from the uid that owns the
    /// admin socket (HAProxy's), root or trackside's own only.
    pub async fn attach(
        socket: &Path,
        backend: &str,
        log: Option<&str>,
        stop: CancellationToken,
    ) -> Result<Arc<Haproxy>, String> {
        let api = RuntimeApi { socket: socket.into() };
        let servers = api.stat(backend).await?;
        let count = |p: Pool| servers.iter().filter(|s| s.name.starts_with(p.name())).count() as u32;
        let slots = count(Pool::Stable).min(count(Pool::Canary));
        if slots == 0 {
            return Err(format!(
                "HAProxy backend `{backend}` (socket {}) has no `stable1`/`canary1` server slots; see docs/deployments.md for the config it needs",
                socket.display()
            ));
        }
        let h = Arc::new(Haproxy {
            api,
            backend: backend.to_string(),
            header_backends: false,
            pools_map: None,
            slots,
            stats: Router::new(false),
            state: Mutex::new(HState::default()),
            child: Mutex::new(None),
        });
        if let Some(path) = log {
            use std::os::unix::fs::MetadataExt;
            let owner = std::fs::metadata(socket)
                .map_err(|e| format!("HAProxy's socket {}: {e}", socket.display()))?
                .uid();
            // HAProxy may run as a user of its own: the socket must take its
            // datagrams; the credentials check keeps everyone else out.
            let log = LogSocket::bind(Path::new(path), 0o622, vec![nix::unistd::geteuid().as_raw(), 0, owner])
                .map_err(|e| e.to_string())?;
            tokio::spawn(log.receive(backend.to_string(), h.stats.clone(), stop));
        }
        Ok(h)
    }

    pub fn slots(&self) -> u32 {
        self.slots
    }

    fn backends(&self, pool: Pool) -> Vec<String> {
        let mut v = vec![self.backend.clone()];
        if self.header_backends {
            v.push(format!("{}_{}", self.backend, pool.name()));
        }
        v
    }

    /// Puts `addrs` into the pool's slots (ready), the rest into
    /// maintenance. The weights for the new counts are set before any slot
    /// goes into maintenance: emptying a pool that still had the traffic
    /// (a promotion moves the canary's replicas to stable, then empties
    /// the canary pool) never leaves a moment with no server to take it.
    pub async fn set_backends(&self, pool: Pool, addrs: &[SocketAddr]) -> Result<(), String> {
        if addrs.len() > self.slots as usize {
            return Err(format!(
                "{} {} replicas, but HAProxy backend `{}` has {} slots",
                addrs.len(),
                pool.name(),
                self.backend,
                self.slots
            ));
        }
        for be in self.backends(pool) {
            for (i, a) in addrs.iter().enumerate() {
                let server = format!("{be}/{}{}", pool.name(), i + 1);
                let out = self
                    .api
                    .call(&format!("set server {server} addr {} port {}", a.ip(), a.port()))
                    .await?;
                if !(out.contains("changed from") || out.contains("no need to change")) {
                    return Err(format!("HAProxy refused the address of {server}: {}", out.trim()));
                }
                self.api.quiet(&format!("set server {server} state ready")).await?;
            }
        }
        let weight = {
            let mut st = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            st.filled[pool.index()] = addrs.to_vec();
            for (i, a) in addrs.iter().enumerate() {
                st.slot_of.insert(*a, format!("{}{}", pool.name(), i + 1));
            }
            self.stats.weight()
        };
        // Per-server weights depend on how many replicas each pool has.
        self.set_weight(weight).await?;
        let unused = u32::try_from(addrs.len()).unwrap_or(u32::MAX) + 1;
        let maint: Vec<String> = self
            .backends(pool)
            .iter()
            .flat_map(|be| {
                (unused..=self.slots).map(move |i| format!("set server {be}/{}{i} state maint", pool.name()))
            })
            .collect();
        if maint.is_empty() {
            return Ok(());
        }
        self.api.quiet(&maint.join(";")).await
    }

    /// Sets the canary's share: both pools' server weights in one request.
    pub async fn set_weight(&self, weight: u32) -> Result<(), String> {
        let (ns, nc) = {
            let st = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            (st.filled[0].len() as u32, st.filled[1].len() as u32)
        };
        let (ws, wc, actual) = split(weight, ns, nc);
        let mut cmds = Vec::new();
        for (pool, w) in [(Pool::Stable, ws), (Pool::Canary, wc)] {
            for i in 1..=self.slots {
                cmds.push(format!("set server {}/{}{i} weight {w}", self.backend, pool.name()));
            }
        }
        // A cookie keeps a client on its pool while the pool takes traffic.
        if let Some(map) = &self.pools_map {
            for (pool, serving) in [(Pool::Stable, ws > 0 && ns > 0), (Pool::Canary, wc > 0 && nc > 0)] {
                let to = if serving {
                    format!("{}_{}", self.backend, pool.name())
                } else {
                    self.backend.clone()
                };
                cmds.push(format!("set map {} {} {to}", map.display(), pool.name()));
            }
        }
        self.api.quiet(&cmds.join(";")).await?;
        self.stats.set_weight(weight);
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .actual = actual;
        Ok(())
    }

    /// The canary's share as HAProxy's integer weights give it.
    pub fn actual_weight(&self) -> u32 {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .actual
    }

    /// Sessions in flight on the server holding `addr`, if HAProxy says.
    pub async fn in_flight(&self, addr: SocketAddr) -> Option<u64> {
        let name = {
            let st = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            st.slot_of.get(&addr)?.clone()
        };
        let stats = self.api.stat(&self.backend).await.ok()?;
        stats.iter().find(|s| s.name == name).map(|s| s.current)
    }

    /// Stops HAProxy if trackside started it.
    pub async fn shutdown(&self) {
        let child = self
            .child
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(mut c) = child {
            if let Some(pid) = c.id().and_then(|p| i32::try_from(p).ok()) {
                let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
            }
            if tokio::time::timeout(Duration::from_secs(5), c.wait()).await.is_err() {
                let _ = c.kill().await;
            }
        }
    }
}

/// Why HAProxy's log socket could not be made.
#[derive(Debug, thiserror::Error)]
pub enum LogSocketError {
    #[error("HAProxy's log socket {0} must be an absolute path")]
    NotAbsolute(PathBuf),
    #[error("HAProxy's log socket path {0} is too long for a Unix socket; use a shorter path")]
    TooLong(PathBuf),
    #[error("{0} is there and is not a socket; remove it or pick another path for HAProxy's log")]
    NotASocket(PathBuf),
    #[error("cannot receive HAProxy's log on {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// HAProxy's request log arrives here: a Unix datagram socket whose
/// datagrams carry their sender's credentials, checked against `accept`.
pub struct LogSocket {
    sock: UnixDatagram,
    path: PathBuf,
    /// The uids whose lines are measurements.
    accept: Vec<u32>,
}

impl LogSocket {
    /// Binds `path` (a stale socket there is replaced) with `mode`.
    pub fn bind(path: &Path, mode: u32, accept: Vec<u32>) -> Result<LogSocket, LogSocketError> {
        use std::os::unix::fs::{FileTypeExt, PermissionsExt};
        let io = |source: std::io::Error| LogSocketError::Io {
            path: path.to_path_buf(),
            source,
        };
        if !path.is_absolute() {
            return Err(LogSocketError::NotAbsolute(path.to_path_buf()));
        }
        if path.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(LogSocketError::TooLong(path.to_path_buf()));
        }
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path).map_err(io)?,
            Ok(_) => return Err(LogSocketError::NotASocket(path.to_path_buf())),
            Err(_) => {}
        }
        let std_sock = std::os::unix::net::UnixDatagram::bind(path).map_err(io)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io)?;
        nix::sys::socket::setsockopt(&std_sock, nix::sys::socket::sockopt::PassCred, &true)
            .map_err(|e| io(e.into()))?;
        std_sock.set_nonblocking(true).map_err(io)?;
        let sock = UnixDatagram::from_std(std_sock).map_err(io)?;
        Ok(LogSocket {
            sock,
            path: path.to_path_buf(),
            accept,
        })
    }

    /// One datagram and the uid the kernel says sent it (`None` if it
    /// carried no credentials).
    async fn recv(&self, buf: &mut [u8]) -> std::io::Result<(usize, Option<u32>)> {
        use nix::sys::socket::{ControlMessageOwned, MsgFlags, UnixAddr, UnixCredentials, recvmsg};
        use std::os::fd::AsRawFd;
        let fd = self.sock.as_raw_fd();
        loop {
            self.sock.readable().await?;
            let got = self.sock.try_io(tokio::io::Interest::READABLE, || {
                let mut cmsg = nix::cmsg_space!(UnixCredentials);
                let mut iov = [std::io::IoSliceMut::new(buf)];
                let msg = recvmsg::<UnixAddr>(fd, &mut iov, Some(&mut cmsg), MsgFlags::MSG_DONTWAIT)
                    .map_err(std::io::Error::from)?;
                let uid = msg.cmsgs().ok().and_then(|mut c| {
                    c.find_map(|m| match m {
                        ControlMessageOwned::ScmCredentials(cred) => Some(cred.uid()),
                        _ => None,
                    })
                });
                Ok((msg.bytes, uid))
            });
            match got {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                other => return other,
            }
        }
    }

    /// Records every request HAProxy logs into `stats` until `stop`.
    pub async fn receive(self, backend: String, stats: Arc<Router>, stop: CancellationToken) {
        let mut buf = vec![0u8; 8192];
        let mut refused: u64 = 0;
        loop {
            let (n, uid) = tokio::select! {
                () = stop.cancelled() => break,
                r = self.recv(&mut buf) => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!("HAProxy's log socket {}: {e}", self.path.display());
                        // A socket error repeats at once: do not spin on it.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            if !uid.is_some_and(|u| self.accept.contains(&u)) {
                refused += 1;
                if refused.is_power_of_two() {
                    tracing::warn!(
                        "dropped {refused} log line(s) on {} from uid {uid:?}: only HAProxy's lines are measurements",
                        self.path.display()
                    );
                }
                continue;
            }
            let text = String::from_utf8_lossy(&buf[..n]);
            for line in text.lines() {
                if let Some((pool, t, error)) = parse_log(line, &backend) {
                    stats.record(pool, t, error);
                }
            }
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_match_the_share_as_closely_as_integers_allow() {
        assert_eq!(split(0, 2, 2), (256, 0, 0));
        assert_eq!(split(1000, 2, 2), (0, 256, 1000));
        assert_eq!(split(300, 0, 1), (0, 256, 1000), "no stable: all to canary");
        assert_eq!(split(300, 1, 0), (256, 0, 0), "no canary: all to stable");
        for (w, ns, nc) in [
            (100, 1, 1),
            (50, 3, 1),
            (333, 2, 5),
            (1, 1, 1),
            (998, 4, 4),
            (125, 3, 2),
        ] {
            let (ws, wc, actual) = split(w, ns, nc);
            assert!(ws <= 256 && wc <= 256);
            let share = f64::from(wc * nc) / f64::from(wc * nc + ws * ns) * 1000.0;
            assert!(
                (share - f64::from(actual)).abs() <= 0.5,
                "{w} {ns} {nc}: {share} vs {actual}"
            );
            // 1/256 of a pool is the coarsest step: within half of it.
            assert!((share - f64::from(w)).abs() <= 2.0, "{w} {ns} {nc}: got {share}");
        }
        assert_eq!(split(500, 2, 2).2, 500);
        // The extremes are as fine as 1 to 256 gets.
        assert_eq!(split(999, 4, 4), (1, 256, 996));
        assert_eq!(split(1, 1, 1), (256, 0, 0), "0.1% rounds to 0 at 1:256 (0.4%)");
    }

    #[test]
    fn stat_lines_and_log_lines_are_read() {
        let csv = "# pxname,svname,qcur,scur,status,weight,econ,hrsp_1xx,hrsp_2xx,hrsp_3xx,hrsp_4xx,hrsp_5xx,hrsp_other\n\
                   web_in,FRONTEND,,0,OPEN,,,0,5,0,0,1,0\n\
                   web,stable1,0,2,UP,200,0,0,40,0,1,3,0\n\
                   web,canary1,0,0,MAINT,0,4,0,0,0,0,0,0\n\
                   web,BACKEND,0,2,UP,200,4,0,40,0,1,3,0\n\
                   other,stable1,0,9,UP,1,0,0,1,0,0,0,0\n";
        let s = parse_stat(csv, "web");
        assert_eq!(s.len(), 2);
        assert_eq!(
            s[0],
            ServerStat {
                name: "stable1".into(),
                status: "UP".into(),
                weight: 200,
                requests: 44,
                errors_5xx: 3,
                connection_errors: 0,
                current: 2,
            }
        );
        assert_eq!(s[1].connection_errors, 4);
        assert_eq!(
            parse_log("web canary2 503 12", "web"),
            Some((Pool::Canary, Duration::from_millis(12), true))
        );
        assert_eq!(
            parse_log("<134>Nov 23 10:00:00 haproxy[1]: web_stable stable1 200 3", "web"),
            Some((Pool::Stable, Duration::from_millis(3), false))
        );
        assert_eq!(parse_log("web <NOSRV> 503 0", "web"), None, "no pool took it");
        assert_eq!(parse_log("webx stable1 200 3", "web"), None, "another backend");
        assert_eq!(
            parse_log("web canary1 -1 5", "web").map(|l| l.2),
            Some(true),
            "a broken answer"
        );
        assert_eq!(parse_log("garbage", "web"), None);
    }

    #[test]
    fn the_config_has_slots_header_backends_and_the_log() {
        let c = config(
            "web",
            "127.0.0.1:8080".parse().expect("addr"),
            Path::new("/s/web.sock"),
            Path::new("/s/web.log.sock"),
            2,
            None,
        );
        assert!(!c.contains("Set-Cookie"), "no sticky cookie without a map:\n{c}");
        let sticky = config(
            "web",
            "127.0.0.1:8080".parse().expect("addr"),
            Path::new("/s/web.sock"),
            Path::new("/s/web.log.sock"),
            2,
            Some(Path::new("/s/web.pools.map")),
        );
        for want in [
            "use_backend %[req.cook(trackside_pool),map(/s/web.pools.map,web)]\n    default_backend web",
            "backend web_canary\n    http-response set-header Set-Cookie \"trackside_pool=stable; Path=/\" if { srv_name -m beg stable }",
        ] {
            assert!(sticky.contains(want), "missing {want:?} in\n{sticky}");
        }
        for want in [
            "stats socket /s/web.sock mode 600 level admin",
            "log /s/web.log.sock len 4096 format raw local0",
            "bind 127.0.0.1:8080",
            "use_backend web_canary if { req.hdr(x-canary) -m str always }",
            "backend web_stable\n    server stable1 127.0.0.1:1 weight 1 disabled\n    server stable2",
            "    server canary2 127.0.0.1:1 weight 1 disabled\n",
        ] {
            assert!(c.contains(want), "missing {want:?} in\n{c}");
        }
    }
}
