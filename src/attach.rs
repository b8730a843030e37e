//! The run socket: every run serves `<run dir>/control.sock`, and any
//! terminal of the same user attaches to it (`trackside attach`, `approve`,
//! `retry`, `cancel`, `logs --follow`).
//!
//! The server side is a front-end of the run like the others: it holds the
//! engine's in-process link and passes events and commands through the
//! frames of [`crate::protocol::wire`]. [`RemoteLink`] is the client side:
//! the same [`Link`] a front-end holds in process, so the UI and the
//! headless printer work on a run elsewhere unchanged.
//!
//! A slow or dead client never slows the run: the engine broadcasts into a
//! bounded ring and moves on; a connection that falls behind resyncs from
//! the engine's replay (every transition, the newest log lines) and is told
//! what it missed. A write that stalls for [`WRITE_WAIT`] ends the
//! connection. Only the run's user (and root) may connect: the socket is
//! 0600 and the peer's uid is checked.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio_util::codec::{Framed, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;

use crate::engine::EngineHandle;
use crate::protocol::wire::{self, ClientFrame, ServerFrame, VERSION, WireError};
use crate::protocol::{Answer, Command, Delivery, Link, LinkError, Query, Subscription};

/// The socket's name in the run's folder.
pub const SOCKET: &str = "control.sock";
/// Connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 64;
/// How long a client may take to say hello.
const HELLO_WAIT: Duration = Duration::from_secs(10);
/// How long a frame (or a batch of them) may take to reach a client before
/// it is dropped.
pub const WRITE_WAIT: Duration = Duration::from_secs(30);
/// The longest Unix socket path Linux takes (`sun_path` less its NUL).
const MAX_SOCKET_PATH: usize = 107;

pub fn socket_path(run_dir: &Path) -> PathBuf {
    run_dir.join(SOCKET)
}

/// A path to `path` short enough for a Unix socket: itself, or through
/// `/proc/self/fd` and its folder held open (kept alive by the returned
/// file while the path is used).
fn reachable(path: &Path) -> std::io::Result<(PathBuf, Option<std::fs::File>)> {
    if path.as_os_str().len() <= MAX_SOCKET_PATH {
        return Ok((path.to_path_buf(), None));
    }
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Ok((path.to_path_buf(), None));
    };
    // O_PATH: a folder one may only search (a run opened to one's group) is
    // reachable too.
    let dir = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_PATH)
            .open(dir)?
    };
    let short = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd())).join(name);
    Ok((short, Some(dir)))
}

/// Serves a run's socket until [`RunServer::close`].
pub struct RunServer {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    path: PathBuf,
    connections: tokio_util::task::TaskTracker,
    /// How many clients are connected.
    clients: tokio::sync::watch::Receiver<usize>,
}

impl RunServer {
    /// Stops taking connections, tells every attached client the stream
    /// has ended, and removes the socket.
    pub async fn close(self) {
        self.stop.cancel();
        let _ = self.task.await;
        self.connections.close();
        let _ = tokio::time::timeout(Duration::from_secs(2), self.connections.wait()).await;
        let _ = std::fs::remove_file(&self.path);
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many clients are connected now.
    pub fn clients(&self) -> usize {
        *self.clients.borrow()
    }

    /// Waits until at least `n` clients are connected.
    pub async fn attached(&self, n: usize) {
        let mut clients = self.clients.clone();
        let _ = clients.wait_for(|&c| c >= n).await;
    }

    /// Waits until no client is connected (at most `limit`): a finished
    /// run's process stays while someone still looks at it, to retry a job.
    pub async fn unwatched(&self, limit: Duration) {
        let mut clients = self.clients.clone();
        let _ = tokio::time::timeout(limit, clients.wait_for(|&n| n == 0)).await;
    }
}

/// Counts a connection while it lives.
struct Counted(Arc<tokio::sync::watch::Sender<usize>>);

impl Counted {
    fn new(clients: &Arc<tokio::sync::watch::Sender<usize>>) -> Counted {
        clients.send_modify(|n| *n += 1);
        Counted(clients.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// Starts serving the run behind `handle` on `<run dir>/control.sock`,
/// to those `access` admits.
pub fn serve(handle: EngineHandle, access: crate::access::Access) -> Result<RunServer, ServeError> {
    let path = socket_path(handle.run_dir());
    let listener = bind(&path)?;
    // `<state>/runs/<id>/control.sock`: the state directory is two up.
    let root = handle
        .run_dir()
        .parent()
        .and_then(Path::parent)
        .unwrap_or(handle.run_dir());
    access.open(&path, root).map_err(|e| ServeError {
        what: "share",
        path: path.clone(),
        source: std::io::Error::other(e.to_string()),
    })?;
    let access = Arc::new(access);
    let stop = CancellationToken::new();
    let connections = tokio_util::task::TaskTracker::new();
    let (count, clients) = tokio::sync::watch::channel(0usize);
    let count = Arc::new(count);
    let (chunks, _) = tokio::sync::broadcast::channel(CHUNKS_KEPT);
    let tap = Arc::new(Tap {
        handle: handle.clone(),
        chunks,
        started: tokio::sync::OnceCell::new(),
        stop: stop.clone(),
        access,
    });
    let task = tokio::spawn({
        let (stop, connections) = (stop.clone(), connections.clone());
        async move {
            let l = &listener;
            let accept = move || async move { l.accept().await.map(|(s, _)| s) };
            crate::net::accept_loop("run socket", MAX_CONNECTIONS, &stop.clone(), accept, |stream, slot| {
                let (stop, tap) = (stop.clone(), tap.clone());
                let counted = Counted::new(&count);
                connections.spawn(async move {
                    let (_slot, _counted) = (slot, counted);
                    connection(stream, tap, stop).await;
                });
            })
            .await;
        }
    });
    Ok(RunServer {
        stop,
        task,
        path,
        connections,
        clients,
    })
}

/// Why a run's socket could not be served.
#[derive(Debug, thiserror::Error)]
#[error("cannot {what} {}: {source}", path.display())]
pub struct ServeError {
    /// `reach`, `remove the stale`, `listen on`, `make owner-only`, `share`.
    what: &'static str,
    path: PathBuf,
    source: std::io::Error,
}

fn bind(path: &Path) -> Result<UnixListener, ServeError> {
    let failed = |what: &'static str| {
        move |source| ServeError {
            what,
            path: path.to_path_buf(),
            source,
        }
    };
    let (short, _dir) = reachable(path).map_err(failed("reach"))?;
    if path.exists() {
        // A run folder is the run's own: anything there is left from a crash.
        std::fs::remove_file(path).map_err(failed("remove the stale"))?;
    }
    let listener = UnixListener::bind(&short).map_err(failed("listen on"))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(failed("make owner-only"))?;
    Ok(listener)
}

type Conn = Framed<UnixStream, LengthDelimitedCodec>;

async fn send(conn: &mut Conn, frame: bytes::Bytes) -> bool {
    matches!(tokio::time::timeout(WRITE_WAIT, conn.send(frame)).await, Ok(Ok(())))
}

/// Bytes of frames the tap gathers into one chunk, at most (more when one
/// frame alone is larger).
const CHUNK: usize = 64 * 1024;
/// How long the tap gathers events into a chunk after the first: a tenth
/// of the delivery delay the protocol promises (p99 under 5 ms).
const GATHER: Duration = Duration::from_micros(500);
/// Chunks kept for connections that fall behind, before they resync.
const CHUNKS_KEPT: usize = 256;

/// Frames ready to write as they are: each its four-byte length and its
/// bytes, one after the other, for events `first..=last` (and what was
/// missed among them). The tap makes each once; every connection writes it.
struct Chunk {
    bytes: bytes::Bytes,
    /// Where each frame starts, by the first sequence number it covers.
    starts: Vec<(u64, usize)>,
    last: u64,
    /// The run's last chunk: the stream ends after it.
    end: bool,
}

impl Chunk {
    fn first(&self) -> u64 {
        self.starts.first().map_or(self.last, |(seq, _)| *seq)
    }

    /// The frames of events `from` on.
    fn from(&self, from: u64) -> bytes::Bytes {
        let i = self.starts.partition_point(|(seq, _)| *seq < from);
        match self.starts.get(i) {
            Some((_, at)) => self.bytes.slice(*at..),
            None => bytes::Bytes::new(),
        }
    }
}

/// Frames as the socket carries them (length first), gathered.
#[derive(Default)]
struct Frames {
    bytes: bytes::BytesMut,
    starts: Vec<(u64, usize)>,
    last: Option<u64>,
}

impl Frames {
    fn push(&mut self, item: &Delivery) {
        let (seq, last, frame) = match item {
            Delivery::Event(ev) => (ev.seq, ev.seq, wire::encode_event(ev)),
            Delivery::Missed { from, to } => (*from, *to, wire::encode(&ServerFrame::Missed { from: *from, to: *to })),
        };
        self.starts.push((seq, self.bytes.len()));
        // A frame is at most MAX_FRAME (16 MiB): its length fits.
        self.bytes
            .extend_from_slice(&u32::try_from(frame.len()).unwrap_or(u32::MAX).to_be_bytes());
        self.bytes.extend_from_slice(&frame);
        self.last = Some(last);
    }

    fn chunk(self) -> Option<Chunk> {
        Some(Chunk {
            last: self.last?,
            bytes: self.bytes.freeze(),
            starts: self.starts,
            end: false,
        })
    }
}

/// The server's one reader of the run's events, started by the first
/// client that streams them (a run nobody attaches to pays nothing).
struct Tap {
    handle: EngineHandle,
    chunks: tokio::sync::broadcast::Sender<Arc<Chunk>>,
    started: tokio::sync::OnceCell<()>,
    stop: CancellationToken,
    /// Who may connect.
    access: Arc<crate::access::Access>,
}

impl Tap {
    /// The chunks from now on, the tap running. Taken before the replay:
    /// with both, no event falls between them.
    async fn chunks(&self) -> tokio::sync::broadcast::Receiver<Arc<Chunk>> {
        self.started
            .get_or_init(|| async {
                // Live from here: whoever takes chunks after this takes the
                // replay for what came before.
                if let Ok(events) = Link::subscribe(&self.handle, wire::LIVE).await {
                    tokio::spawn(tap(events, self.chunks.clone(), self.stop.clone()));
                }
            })
            .await;
        self.chunks.subscribe()
    }
}

/// Serializes the run's events once, into chunks every connection writes.
async fn tap(mut events: Subscription, chunks: tokio::sync::broadcast::Sender<Arc<Chunk>>, stop: CancellationToken) {
    loop {
        let first = tokio::select! {
            () = stop.cancelled() => {
                // The run has ended: what it said last still goes out, then
                // the connections see the end of the chunks.
                let mut frames = Frames::default();
                while let Some(item) = events.try_next() {
                    frames.push(&item);
                }
                // Always the newest chunk: a reader that falls behind still
                // gets it.
                let last = frames.chunk().map(|c| Chunk { end: true, ..c }).unwrap_or(Chunk {
                    bytes: bytes::Bytes::new(),
                    starts: Vec::new(),
                    last: 0,
                    end: true,
                });
                let _ = chunks.send(Arc::new(last));
                return;
            }
            item = events.next() => item,
        };
        let Some(first) = first else { return };
        if chunks.receiver_count() == 0 {
            // Nobody attached: nothing to serialize. One who attaches later
            // takes the chunks from then on and the replay before.
            while events.try_next().is_some() {}
            continue;
        }
        let mut frames = Frames::default();
        frames.push(&first);
        // What comes within GATHER goes in the same chunk: a burst of log
        // lines costs each connection (and each client) one write and one
        // wake-up per chunk, not per line or two.
        // The tap sleeps meanwhile rather than wake for every event.
        tokio::time::sleep(GATHER).await;
        while frames.bytes.len() < CHUNK {
            match events.try_next() {
                Some(item) => frames.push(&item),
                None => break,
            }
        }
        if let Some(chunk) = frames.chunk() {
            // No connection listening is fine.
            let _ = chunks.send(Arc::new(chunk));
        }
    }
}

/// Where a connection's events come from: the engine's replay while it
/// catches up (at the start, and after falling behind), then the tap's
/// chunks, each cut to what the client has not had.
struct Outgoing {
    handle: EngineHandle,
    chunks: tokio::sync::broadcast::Receiver<Arc<Chunk>>,
    /// The first sequence number the client has not had.
    next: u64,
    /// A chunk seen before a catch-up, to cut and send after it.
    held: Option<Arc<Chunk>>,
    /// The run's last chunk has been sent.
    ended: bool,
}

impl Outgoing {
    /// The engine's replay from `next`, as frames (what it lacks, as missed).
    fn catch_up(&mut self) -> bytes::Bytes {
        let (start, replay) = self.handle.replay_since(self.next);
        let mut frames = Frames::default();
        let mut next = start;
        for ev in replay {
            if ev.seq > next {
                frames.push(&Delivery::Missed {
                    from: next,
                    to: ev.seq - 1,
                });
            }
            next = ev.seq + 1;
            frames.push(&Delivery::Event(ev));
        }
        self.next = next;
        frames.bytes.freeze()
    }

    /// The next bytes to write; `None` once the tap has stopped.
    async fn next(&mut self) -> Option<bytes::Bytes> {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            if self.ended && self.held.is_none() {
                return None;
            }
            let chunk = match self.held.take() {
                Some(c) => c,
                None => match self.chunks.recv().await {
                    Ok(c) => c,
                    // Fell behind the kept chunks: catch up from the replay.
                    Err(RecvError::Lagged(_)) => return Some(self.catch_up()),
                    Err(RecvError::Closed) => return None,
                },
            };
            if chunk.end {
                self.ended = true;
                if chunk.starts.is_empty() {
                    return None;
                }
            }
            if chunk.last < self.next && !chunk.end {
                continue;
            }
            if chunk.first() > self.next {
                self.held = Some(chunk);
                self.ended = false;
                return Some(self.catch_up());
            }
            let bytes = chunk.from(self.next);
            self.next = self.next.max(chunk.last + 1);
            return Some(bytes);
        }
    }
}

async fn connection(stream: UnixStream, tap: Arc<Tap>, stop: CancellationToken) {
    let handle = tap.handle.clone();
    // The socket's mode keeps others out once set; the peer's uid also
    // covers the moment before that.
    let cred = stream.peer_cred().ok();
    let peer = cred.map(|c| crate::protocol::identity::Person::peer(c.uid(), c.pid()));
    let mut conn = Framed::new(stream, wire::codec());
    let refuse = |message: String| wire::encode(&ServerFrame::Refused { message });
    let Some(peer) = peer.filter(|p| tap.access.admits(p.uid)) else {
        let text = format!("only {} may attach to it", tap.access.who_may());
        send(&mut conn, refuse(text)).await;
        return;
    };
    let hello = match tokio::time::timeout(HELLO_WAIT, conn.next()).await {
        Ok(Some(Ok(bytes))) => wire::decode::<ClientFrame>(&bytes).map_err(|e| e.to_string()),
        Ok(Some(Err(e))) => Err(format!("cannot read the hello: {e}")),
        Ok(None) => return,
        Err(_) => Err(format!("no hello within {}s", HELLO_WAIT.as_secs())),
    };
    let (from, read_only) = match hello {
        Ok(ClientFrame::Hello {
            version,
            from,
            read_only,
        }) if version == VERSION => (from, read_only),
        Ok(ClientFrame::Hello { version, .. }) => {
            let text = format!(
                "this run speaks version {VERSION} of the run protocol, the client {version}: attach with the trackside that started the run"
            );
            send(&mut conn, refuse(text)).await;
            return;
        }
        Ok(_) => {
            send(&mut conn, refuse("the first frame must be a hello".into())).await;
            return;
        }
        Err(e) => {
            send(&mut conn, refuse(e)).await;
            return;
        }
    };
    let mut events = match from {
        Some(from) => Some(Outgoing {
            handle: handle.clone(),
            chunks: tap.chunks().await,
            next: from,
            held: None,
            ended: false,
        }),
        None => None,
    };
    let mut pending = events.as_mut().map(Outgoing::catch_up);
    let welcome = ServerFrame::Welcome {
        version: VERSION,
        run_id: handle.run_id().to_string(),
        can_steer: !read_only,
    };
    if !send(&mut conn, wire::encode(&welcome)).await {
        return;
    }
    let (replies_tx, mut replies) = mpsc::channel::<ServerFrame>(16);
    // Commands and queries taken and not answered yet: a closing server
    // still answers them before it ends the connection.
    let mut in_flight = 0usize;
    let mut stopping = false;
    loop {
        tokio::select! {
            // A connection streaming events ends with the tap's last chunk.
            () = stop.cancelled(), if events.is_none() && !stopping => {
                stopping = true;
                if in_flight == 0 {
                    send(&mut conn, wire::encode(&ServerFrame::End)).await;
                    return;
                }
            }
            bytes = next(&mut events, &mut pending) => {
                let Some(bytes) = bytes else {
                    send(&mut conn, wire::encode(&ServerFrame::End)).await;
                    return;
                };
                use tokio::io::AsyncWriteExt;
                let write = conn.get_mut().write_all(&bytes);
                if !matches!(tokio::time::timeout(WRITE_WAIT, write).await, Ok(Ok(()))) {
                    return;
                }
            }
            Some(reply) = replies.recv() => {
                in_flight = in_flight.saturating_sub(1);
                let mut bytes = wire::encode(&reply);
                if bytes.len() > wire::MAX_FRAME
                    && let ServerFrame::Answer { id, .. } = reply
                {
                    let error = WireError::Refused(format!("the answer is larger than a frame may be ({} bytes)", bytes.len()));
                    bytes = wire::encode(&ServerFrame::Answer { id, answer: None, error: Some(error) });
                }
                if !send(&mut conn, bytes).await {
                    return;
                }
                if stopping && in_flight == 0 {
                    send(&mut conn, wire::encode(&ServerFrame::End)).await;
                    return;
                }
            }
            frame = conn.next() => {
                let bytes = match frame {
                    None => return,
                    Some(Ok(b)) => b,
                    Some(Err(e)) => {
                        send(&mut conn, refuse(format!("cannot read a frame: {e}"))).await;
                        return;
                    }
                };
                let (id, command) = match wire::decode::<ClientFrame>(&bytes) {
                    Ok(ClientFrame::Command { id, command }) => (id, command),
                    Ok(ClientFrame::Query { id, query }) => {
                        // Asking steers nothing: read-only connections ask too.
                        in_flight += 1;
                        let (handle, tx) = (handle.clone(), replies_tx.clone());
                        tokio::spawn(async move {
                            let reply = match handle.query(query).await {
                                Ok(answer) => ServerFrame::Answer { id, answer: Some(answer), error: None },
                                Err(e) => ServerFrame::Answer { id, answer: None, error: Some(e.into()) },
                            };
                            let _ = tx.send(reply).await;
                        });
                        continue;
                    }
                    Ok(ClientFrame::Hello { .. }) => {
                        send(&mut conn, refuse("hello was said already".into())).await;
                        return;
                    }
                    Err(e) => {
                        send(&mut conn, refuse(e.to_string())).await;
                        return;
                    }
                };
                if read_only {
                    let reply = ServerFrame::Reply { id, done: None, error: Some(WireError::ReadOnly) };
                    if !send(&mut conn, wire::encode(&reply)).await {
                        return;
                    }
                    continue;
                }
                // Stopping the whole process is the run's user's (and
                // root's): a member of the group it was opened to cancels.
                let me = nix::unistd::Uid::effective().as_raw();
                if command == crate::protocol::Command::Shutdown && peer.uid != me && peer.uid != 0 {
                    let why = "only the run's user stops its trackside; `trackside cancel RUN` cancels the run".to_string();
                    let reply = ServerFrame::Reply { id, done: None, error: Some(WireError::Refused(why)) };
                    if !send(&mut conn, wire::encode(&reply)).await {
                        return;
                    }
                    continue;
                }
                // Commands are answered as they finish; events keep flowing meanwhile.
                in_flight += 1;
                let (handle, peer, tx) = (handle.clone(), peer.clone(), replies_tx.clone());
                tokio::spawn(async move {
                    let reply = match handle.send_as(command, peer).await {
                        Ok(done) => ServerFrame::Reply { id, done: Some(done), error: None },
                        Err(e) => ServerFrame::Reply { id, done: None, error: Some(LinkError::from(e).into()) },
                    };
                    let _ = tx.send(reply).await;
                });
            }
        }
    }
}

/// The next bytes for the client: what is pending (the replay), then the
/// chunks; never ready for a connection that streams no events.
async fn next(events: &mut Option<Outgoing>, pending: &mut Option<bytes::Bytes>) -> Option<bytes::Bytes> {
    if let Some(b) = pending.take() {
        return Some(b);
    }
    match events {
        Some(out) => out.next().await,
        None => std::future::pending().await,
    }
}

/// A run another trackside is running, reached through its socket.
pub struct RemoteLink {
    socket: PathBuf,
    run_id: String,
    run_dir: PathBuf,
    read_only: bool,
    /// Answers queries from the record once the run's trackside is gone.
    records: std::sync::OnceLock<Arc<crate::engine::records::Records>>,
}

impl RemoteLink {
    /// Reaches the run recorded in `run_dir`; `read_only` only watches.
    pub async fn connect(run_dir: &Path, read_only: bool) -> Result<RemoteLink, LinkError> {
        let socket = socket_path(run_dir);
        let (_, welcome) = open(&socket, None, read_only).await?;
        let ServerFrame::Welcome { run_id, can_steer, .. } = welcome else {
            return Err(LinkError::Connection("the run did not welcome this client".into()));
        };
        Ok(RemoteLink {
            socket,
            run_id,
            run_dir: run_dir.to_path_buf(),
            read_only: read_only || !can_steer,
            records: std::sync::OnceLock::new(),
        })
    }
}

/// Connects and says hello; the connection and the server's welcome.
async fn open(socket: &Path, from: Option<u64>, read_only: bool) -> Result<(Conn, ServerFrame), LinkError> {
    let (short, _dir) = reachable(socket).map_err(|e| LinkError::Connection(format!("{}: {e}", socket.display())))?;
    let stream = UnixStream::connect(&short).await.map_err(|e| {
        LinkError::Connection(match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => format!(
                "the run is not running ({} does not answer): it has finished, or its trackside was stopped",
                socket.display()
            ),
            std::io::ErrorKind::PermissionDenied => format!(
                "{} is not yours ({e}): only the user running that trackside (or root) can attach",
                socket.display()
            ),
            _ => format!("cannot connect to {}: {e}", socket.display()),
        })
    })?;
    let mut conn = Framed::new(stream, wire::codec());
    let hello = ClientFrame::Hello {
        version: VERSION,
        from,
        read_only,
    };
    conn.send(wire::encode(&hello))
        .await
        .map_err(|e| LinkError::Connection(format!("cannot say hello: {e}")))?;
    match read(&mut conn).await? {
        Some(ServerFrame::Refused { message }) => Err(LinkError::Connection(message)),
        Some(w @ ServerFrame::Welcome { .. }) => Ok((conn, w)),
        Some(_) => Err(LinkError::Connection(
            "the run answered the hello with something else".into(),
        )),
        None => Err(LinkError::Connection("the run closed the connection".into())),
    }
}

/// The next frame from the server; `None` at the end of the connection.
async fn read(conn: &mut Conn) -> Result<Option<ServerFrame>, LinkError> {
    match conn.next().await {
        None => Ok(None),
        Some(Err(e)) => Err(LinkError::Connection(format!("cannot read from the run: {e}"))),
        Some(Ok(bytes)) => wire::decode_server(&bytes)
            .map(Some)
            .map_err(|e| LinkError::Connection(e.to_string())),
    }
}

impl RemoteLink {
    /// Sends one command or query (id 1) on a connection of its own, which
    /// streams no events, and returns the server's reply or answer to it.
    async fn request(&self, frame: ClientFrame) -> Result<ServerFrame, LinkError> {
        let (mut conn, _) = open(&self.socket, None, self.read_only).await?;
        conn.send(wire::encode(&frame))
            .await
            .map_err(|e| LinkError::Connection(format!("cannot send to the run: {e}")))?;
        loop {
            match read(&mut conn).await? {
                Some(reply @ (ServerFrame::Reply { id: 1, .. } | ServerFrame::Answer { id: 1, .. })) => {
                    return Ok(reply);
                }
                Some(ServerFrame::Refused { message }) => return Err(LinkError::Connection(message)),
                Some(ServerFrame::End) | None => return Err(LinkError::Ended),
                Some(_) => {}
            }
        }
    }
}

impl Link for RemoteLink {
    async fn subscribe(&self, from: u64) -> Result<Subscription, LinkError> {
        let (conn, _) = open(&self.socket, Some(from), self.read_only).await?;
        // Dropping the subscription drops the connection. A front-end
        // that stops reading stops reading the socket, and the server
        // resyncs the connection when it catches up.
        let stream = futures_util::stream::unfold(conn, |mut conn| async move {
            loop {
                let delivery = match read(&mut conn).await {
                    Ok(Some(ServerFrame::Event { event })) => Delivery::Event(event),
                    Ok(Some(ServerFrame::Missed { from, to })) => Delivery::Missed { from, to },
                    Ok(Some(ServerFrame::Reply { .. } | ServerFrame::Answer { .. } | ServerFrame::Welcome { .. })) => {
                        continue;
                    }
                    // The end, a refusal, or a broken connection: the stream ends.
                    Ok(Some(ServerFrame::End | ServerFrame::Refused { .. })) | Ok(None) | Err(_) => return None,
                };
                return Some((delivery, conn));
            }
        });
        Ok(Subscription::remote(stream))
    }

    async fn send(&self, command: Command) -> Result<String, LinkError> {
        if self.read_only {
            return Err(LinkError::ReadOnly);
        }
        match self.request(ClientFrame::Command { id: 1, command }).await? {
            ServerFrame::Reply { error: Some(e), .. } => Err(e.into()),
            ServerFrame::Reply { done, .. } => Ok(done.unwrap_or_default()),
            _ => Err(LinkError::Connection(
                "the run answered a command with something else".into(),
            )),
        }
    }

    async fn query(&self, query: Query) -> Result<Answer, LinkError> {
        let asked = match self
            .request(ClientFrame::Query {
                id: 1,
                query: query.clone(),
            })
            .await
        {
            // The run has ended and its trackside has gone: its record is
            // complete, and answers the same.
            Err(LinkError::Connection(_) | LinkError::Ended) if finished(&self.run_dir) => {
                let records = self
                    .records
                    .get_or_init(|| Arc::new(crate::engine::records::Records::new(self.run_dir.clone())));
                return records.answer(query).await;
            }
            asked => asked?,
        };
        match asked {
            ServerFrame::Answer { error: Some(e), .. } => Err(e.into()),
            ServerFrame::Answer { answer: Some(a), .. } => Ok(a),
            _ => Err(LinkError::Connection(
                "the run answered a query with something else".into(),
            )),
        }
    }

    fn run_id(&self) -> &str {
        &self.run_id
    }

    fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    fn can_steer(&self) -> bool {
        !self.read_only
    }
}

/// Whether the run recorded in `run_dir` has finished (its summary is written).
fn finished(run_dir: &Path) -> bool {
    crate::store::read_summary(run_dir).ok().flatten().is_some()
}

/// Whether a run's socket answers (`trackside runs` marks live runs).
pub fn is_live(run_dir: &Path) -> bool {
    let socket = socket_path(run_dir);
    match reachable(&socket) {
        Ok((short, _dir)) => std::os::unix::net::UnixStream::connect(short).is_ok(),
        Err(_) => false,
    }
}
