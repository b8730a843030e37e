//! The run socket: the same events through the link in process and over
//! the socket, commands from an attached client applied once and seen by
//! all, read-only clients refused, and a protocol that survives garbage.

mod common;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use tokio::net::UnixStream;
use tokio_util::codec::Framed;
use trackside::attach::{self, RemoteLink};
use trackside::engine::EngineHandle;
use trackside::protocol::query::LogHits;
use trackside::protocol::wire::{self, ClientFrame, ServerFrame, VERSION};
use trackside::protocol::{Answer, Command, Delivery, Event, EventKind, Link, LinkError, Query, Subscription};

use common::LIMIT;

const GATED: &str = r#"
name: gated
jobs:
  build:
    steps:
      - name: compile
        script:
          - for i in 1 2 3 4 5; do echo "line $i"; done
  deploy:
    depends_on: [build]
    when: manual
    steps:
      - name: ship
        script: [echo shipped]
"#;

/// A run of GATED waiting at its gate, served on its socket.
async fn gated_run(s: &mut common::Setup) -> (EngineHandle, attach::RunServer) {
    s.cfg.finish_when_blocked = false;
    let run = common::start(s).await;
    let server = attach::serve(run.handle.clone(), trackside::access::Access::owner_only()).expect("serve");
    let mut events = Link::subscribe(&run.handle, 0).await.expect("subscribe");
    until(
        &mut events,
        |e| matches!(&e.kind, EventKind::GateWaiting { job } if job == "deploy"),
    )
    .await;
    (run.handle, server)
}

/// Events until one matches (bounded by LIMIT); every one seen, in order.
async fn until(events: &mut Subscription, done: impl Fn(&Event) -> bool) -> Vec<Arc<Event>> {
    let mut seen = Vec::new();
    let wait = async {
        while let Some(item) = events.next().await {
            if let Delivery::Event(ev) = item {
                let stop = done(&ev);
                seen.push(ev);
                if stop {
                    return;
                }
            }
        }
        panic!("the stream ended before the awaited event; saw {seen:?}");
    };
    tokio::time::timeout(LIMIT, wait)
        .await
        .expect("awaited event within LIMIT");
    seen
}

fn finished(e: &Event) -> bool {
    matches!(e.kind, EventKind::RunFinished { .. })
}

/// The events without their times (the same run seen two ways).
fn shape(events: &[Arc<Event>]) -> Vec<(u64, String)> {
    events
        .iter()
        .map(|e| {
            let mut v = serde_json::to_value(&**e).expect("json");
            v.as_object_mut().expect("object").remove("ts");
            (e.seq, v.to_string())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_events_in_process_and_over_the_socket() {
    let mut s = common::setup(GATED);
    let (handle, server) = gated_run(&mut s).await;
    let remote = RemoteLink::connect(handle.run_dir(), false).await.expect("connect");
    assert_eq!(remote.run_id(), handle.run_id());
    let mut local = Link::subscribe(&handle, 0).await.expect("local");
    let mut over = remote.subscribe(0).await.expect("remote");
    // A command from the attached client is applied once, and seen by all.
    assert_eq!(
        remote
            .send(Command::Approve { job: "deploy".into() })
            .await
            .expect("approve"),
        "approve deploy"
    );
    let a = until(&mut local, finished).await;
    let b = until(&mut over, finished).await;
    assert_eq!(shape(&a), shape(&b));
    // Numbered from 0 without gaps.
    assert!(a.iter().enumerate().all(|(i, e)| e.seq == i as u64));
    let steered: Vec<&Arc<Event>> = a
        .iter()
        .filter(|e| matches!(&e.kind, EventKind::Steered { what, .. } if what == "approve deploy"))
        .collect();
    assert_eq!(steered.len(), 1, "applied once: {a:?}");
    // Approving again is refused, with the engine's reason.
    let again = remote.send(Command::Approve { job: "deploy".into() }).await;
    assert!(matches!(again, Err(LinkError::Refused(_))), "{again:?}");
    let path = server.path().to_path_buf();
    server.close().await;
    assert!(!path.exists(), "the socket is gone when the run has ended");
    // A finished run is not attachable; the error says so.
    let gone = RemoteLink::connect(handle.run_dir(), false).await;
    assert!(
        matches!(&gone, Err(LinkError::Connection(m)) if m.contains("not running")),
        "{:?}",
        gone.err()
    );
    handle.shutdown().await;
}

/// Older log lines, a search through them and a shell are asked through
/// the link: the same answers in process and over the socket, read-only
/// clients may ask, and once the run's trackside is gone its record
/// answers the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn older_lines_and_searches_come_through_the_link() {
    let mut s = common::setup(GATED);
    let (handle, server) = gated_run(&mut s).await;
    let remote = RemoteLink::connect(handle.run_dir(), true).await.expect("connect");
    let log = Query::Log {
        job: "build".into(),
        attempt: 1,
        from: 1,
        count: 100,
    };
    let local = Link::query(&handle, log.clone()).await.expect("in process");
    let Answer::Log { lines, cut } = &local else {
        panic!("not a log answer: {local:?}");
    };
    let texts: Vec<&str> = lines.iter().map(|l| l.text.as_str()).collect();
    assert_eq!(texts, ["line 1", "line 2", "line 3", "line 4", "line 5"]);
    assert!(!cut);
    assert_eq!(remote.query(log.clone()).await.expect("over the socket"), local);
    let search = Query::Search {
        job: "build".into(),
        attempt: 1,
        from: 0,
        to: 6,
        needle: "LINE 4".into(),
        max: 10,
    };
    let hits = remote.query(search.clone()).await.expect("search");
    assert_eq!(
        hits,
        Answer::Hits(LogHits {
            lines: vec![4],
            capped: false
        })
    );
    // A job that never printed: the engine's reason, over the socket too.
    let never = Query::Log {
        job: "deploy".into(),
        attempt: 1,
        from: 0,
        count: 10,
    };
    let refused = remote.query(never).await;
    assert!(
        matches!(&refused, Err(LinkError::Refused(m)) if m.contains("cannot read older log lines")),
        "{refused:?}"
    );
    // The shell is prepared by the run: a job without a container step
    // has none to offer, and says so (or that Docker is out of reach).
    let shell = remote.query(Query::Shell { job: "build".into() }).await;
    assert!(
        matches!(&shell, Err(LinkError::Refused(m)) if !m.is_empty()),
        "{shell:?}"
    );
    let steer = RemoteLink::connect(handle.run_dir(), false).await.expect("connect");
    approve_and_finish(&steer, handle, server).await;
    // The run's trackside is gone: the same link answers from the record.
    assert_eq!(remote.query(log).await.expect("from the record"), local);
    assert_eq!(remote.query(search).await.expect("from the record"), hits);
}

/// A command still being carried out when the run ends and its server
/// closes gets its reply before the connection's end: `shutdown` is
/// answered only once the run has stopped, which is when the server closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_in_flight_at_the_end_still_gets_its_reply() {
    let mut s = common::setup(GATED);
    let (handle, server) = gated_run(&mut s).await;
    let mut raw = raw_connect(handle.run_dir()).await;
    hello(&mut raw, None, false).await;
    assert!(matches!(recv(&mut raw).await, Some(ServerFrame::Welcome { .. })));
    send(
        &mut raw,
        &ClientFrame::Command {
            id: 9,
            command: Command::Shutdown,
        },
    )
    .await;
    let closing = tokio::spawn(async move {
        tokio::time::timeout(LIMIT, handle.wait())
            .await
            .expect("the run stops within LIMIT")
            .expect("summary");
        server.close().await;
        handle.shutdown().await;
    });
    let mut frames = Vec::new();
    while let Some(frame) = recv(&mut raw).await {
        let end = frame == ServerFrame::End;
        frames.push(frame);
        if end {
            break;
        }
    }
    closing.await.expect("closed");
    assert!(
        matches!(frames.first(), Some(ServerFrame::Reply { id: 9, error: None, .. })),
        "{frames:?}"
    );
    assert_eq!(frames.last(), Some(&ServerFrame::End), "{frames:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_client_watches_but_cannot_steer() {
    let mut s = common::setup(GATED);
    let (handle, server) = gated_run(&mut s).await;
    let watcher = RemoteLink::connect(handle.run_dir(), true).await.expect("connect");
    assert!(!watcher.can_steer());
    let refused = watcher.send(Command::Approve { job: "deploy".into() }).await;
    assert_eq!(refused, Err(LinkError::ReadOnly));
    // Even a client that says read-only and then sends a command anyway.
    let mut raw = raw_connect(handle.run_dir()).await;
    hello(&mut raw, None, true).await;
    assert!(matches!(
        recv(&mut raw).await,
        Some(ServerFrame::Welcome { can_steer: false, .. })
    ));
    send(
        &mut raw,
        &ClientFrame::Command {
            id: 7,
            command: Command::CancelAll,
        },
    )
    .await;
    assert!(matches!(
        recv(&mut raw).await,
        Some(ServerFrame::Reply {
            id: 7,
            error: Some(wire::WireError::ReadOnly),
            ..
        })
    ));
    // The gate still waits: nothing was applied.
    let mut events = watcher.subscribe(0).await.expect("subscribe");
    let seen = until(&mut events, |e| matches!(&e.kind, EventKind::GateWaiting { .. })).await;
    let steered = |e: &&Arc<Event>| match &e.kind {
        EventKind::Steered { .. } => true,
        EventKind::JobStarted { job, .. } => job == "deploy",
        _ => false,
    };
    assert!(!seen.iter().any(|e| steered(&e)), "{seen:?}");
    server.close().await;
    handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_subscriber_from_now_on_gets_only_what_comes_next() {
    let mut s = common::setup(GATED);
    let (handle, server) = gated_run(&mut s).await;
    let remote = RemoteLink::connect(handle.run_dir(), false).await.expect("connect");
    let mut live = remote.subscribe(wire::LIVE).await.expect("subscribe");
    remote
        .send(Command::Approve { job: "deploy".into() })
        .await
        .expect("approve");
    let seen = until(&mut live, finished).await;
    assert!(matches!(&seen[0].kind, EventKind::Steered { .. }), "{seen:?}");
    assert!(!seen.iter().any(|e| matches!(e.kind, EventKind::RunStarted { .. })));
    server.close().await;
    handle.shutdown().await;
}

/// Approves the gate through `remote`, waits for the run's end over it,
/// and closes both sides.
async fn approve_and_finish(remote: &RemoteLink, handle: EngineHandle, server: attach::RunServer) {
    remote
        .send(Command::Approve { job: "deploy".into() })
        .await
        .expect("approve");
    let mut events = remote.subscribe(0).await.expect("subscribe");
    until(&mut events, finished).await;
    server.close().await;
    handle.shutdown().await;
}

async fn raw_connect(run_dir: &Path) -> Framed<UnixStream, tokio_util::codec::LengthDelimitedCodec> {
    let stream = UnixStream::connect(attach::socket_path(run_dir))
        .await
        .expect("connect");
    Framed::new(stream, wire::codec())
}

async fn send(conn: &mut Framed<UnixStream, tokio_util::codec::LengthDelimitedCodec>, frame: &ClientFrame) {
    conn.send(wire::encode(frame)).await.expect("send");
}

async fn hello(
    conn: &mut Framed<UnixStream, tokio_util::codec::LengthDelimitedCodec>,
    from: Option<u64>,
    read_only: bool,
) {
    send(
        conn,
        &ClientFrame::Hello {
            version: VERSION,
            from,
            read_only,
        },
    )
    .await;
}

async fn recv(conn: &mut Framed<UnixStream, tokio_util::codec::LengthDelimitedCodec>) -> Option<ServerFrame> {
    let frame = tokio::time::timeout(LIMIT, conn.next())
        .await
        .expect("a frame within LIMIT")?;
    Some(wire::decode_server(&frame.ok()?).expect("a server frame"))
}

/// What the server says before it closes the connection.
async fn refusal(conn: &mut Framed<UnixStream, tokio_util::codec::LengthDelimitedCodec>) -> String {
    match recv(conn).await {
        Some(ServerFrame::Refused { message }) => {
            assert!(recv(conn).await.is_none(), "the connection ends after a refusal");
            message
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_get_a_clear_error_and_the_server_goes_on() {
    let mut s = common::setup(GATED);
    let (handle, server) = gated_run(&mut s).await;
    let dir = handle.run_dir().to_path_buf();

    // Another version.
    let mut c = raw_connect(&dir).await;
    send(
        &mut c,
        &ClientFrame::Hello {
            version: VERSION + 1,
            from: None,
            read_only: false,
        },
    )
    .await;
    assert!(refusal(&mut c).await.contains("version"));

    // Garbage in a frame.
    let mut c = raw_connect(&dir).await;
    c.send(bytes::Bytes::from_static(b"{not json")).await.expect("send");
    assert!(refusal(&mut c).await.contains("not a frame of the run protocol"));

    // A command before hello.
    let mut c = raw_connect(&dir).await;
    send(
        &mut c,
        &ClientFrame::Command {
            id: 1,
            command: Command::CancelAll,
        },
    )
    .await;
    assert!(refusal(&mut c).await.contains("hello"));

    // A frame longer than the limit: refused before anything is allocated for it.
    let mut c = UnixStream::connect(attach::socket_path(&dir)).await.expect("connect");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let huge = u32::try_from(wire::MAX_FRAME + 1).expect("fits");
    c.write_all(&huge.to_be_bytes()).await.expect("write");
    let mut answer = Vec::new();
    tokio::time::timeout(LIMIT, c.read_to_end(&mut answer))
        .await
        .expect("closed")
        .expect("read");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.contains("cannot read the hello"), "{text}");

    // A partial frame, then the client goes away mid-frame.
    let mut c = UnixStream::connect(attach::socket_path(&dir)).await.expect("connect");
    c.write_all(&100u32.to_be_bytes()).await.expect("write");
    c.write_all(b"{\"type\":\"hel").await.expect("write");
    drop(c);

    // A hello split across writes is still one frame.
    let mut c = UnixStream::connect(attach::socket_path(&dir)).await.expect("connect");
    let body = wire::encode(&ClientFrame::Hello {
        version: VERSION,
        from: None,
        read_only: false,
    });
    let len = u32::try_from(body.len()).expect("fits").to_be_bytes();
    c.write_all(&len[..2]).await.expect("write");
    c.flush().await.expect("flush");
    c.write_all(&len[2..]).await.expect("write");
    c.write_all(&body[..5]).await.expect("write");
    c.flush().await.expect("flush");
    c.write_all(&body[5..]).await.expect("write");
    let mut c = Framed::new(c, wire::codec());
    assert!(matches!(recv(&mut c).await, Some(ServerFrame::Welcome { .. })));

    // After all that, the server still serves: approve through it.
    let remote = RemoteLink::connect(&dir, false).await.expect("connect");
    approve_and_finish(&remote, handle, server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_never_slows_the_run() {
    // Far more output than the engine's ring and the socket's buffers hold.
    let mut s = common::setup(
        r#"
name: loud
jobs:
  loud:
    steps:
      - name: print
        script:
          - i=0; while [ $i -lt 200000 ]; do echo "a line of output number $i"; i=$((i+1)); done
"#,
    );
    let run = common::start(&mut s).await;
    let server = attach::serve(run.handle.clone(), trackside::access::Access::owner_only()).expect("serve");
    // Subscribed from the start, never read.
    let mut stalled = raw_connect(run.handle.run_dir()).await;
    hello(&mut stalled, Some(0), true).await;
    let summary = tokio::time::timeout(LIMIT, run.handle.wait())
        .await
        .expect("the run ends within LIMIT")
        .expect("summary");
    assert_eq!(summary.exit_code, 0);
    // The stalled client, reading at last, is told what it missed and still
    // gets every transition up to the end.
    let (mut missed, mut last_kind) = (0u64, String::new());
    while let Some(frame) = recv(&mut stalled).await {
        match frame {
            ServerFrame::Missed { from, to } => missed += to - from + 1,
            ServerFrame::Event { event } => {
                last_kind = serde_json::to_value(&*event).expect("json")["type"].to_string();
                if last_kind.contains("run_finished") {
                    break;
                }
            }
            _ => {}
        }
    }
    assert!(missed > 0, "a client this far behind missed log lines");
    assert!(last_kind.contains("run_finished"), "{last_kind}");
    server.close().await;
    run.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_user_cannot_attach() {
    if !nix::unistd::Uid::effective().is_root() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI runs as root: this test needs a second uid"
        );
        eprintln!("skipped: needs root to act as a second user");
        return;
    }
    let mut s = common::setup(GATED);
    let (handle, server) = gated_run(&mut s).await;
    let run_dir = handle.run_dir().to_path_buf();
    // `nobody` asks through the CLI, as a person would.
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_trackside"))
            .args(["approve", "last", "deploy"])
            .env(
                "TRACKSIDE_STATE_DIR",
                run_dir.parent().and_then(Path::parent).expect("state"),
            )
            .uid(65534)
            .gid(65534)
            .output()
    })
    .await
    .expect("join")
    .expect("run trackside as nobody");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("belongs to uid 0, not to you"), "a clear refusal: {err}");
    // The socket is the user's alone...
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(server.path()).expect("socket").permissions();
    assert_eq!(mode.mode() & 0o777, 0o600);
    // ... and even where the folders and the socket let anyone in (as in the
    // moment between bind and chmod), the server checks who connects.
    for dir in server
        .path()
        .ancestors()
        .skip(1)
        .take_while(|d| d.starts_with(s.dir.path()))
    {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    std::fs::set_permissions(server.path(), std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let socket = server.path().to_path_buf();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(std::env::current_exe().expect("test binary"))
            .args(["--exact", "connect_as_whoever_runs_it", "--nocapture"])
            .env("TRACKSIDE_TEST_SOCKET", socket)
            .uid(65534)
            .gid(65534)
            .output()
    })
    .await
    .expect("join")
    .expect("run the helper as nobody");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("refused: only the user running this trackside (or root) may attach"),
        "{said}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The gate still waits.
    let remote = RemoteLink::connect(handle.run_dir(), false).await.expect("connect");
    remote
        .send(Command::Approve { job: "deploy".into() })
        .await
        .expect("approve");
    server.close().await;
    handle.shutdown().await;
}

/// Reaching the socket through a folder path too long for a Unix socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_state_path_still_serves() {
    let mut s = common::setup(GATED);
    let deep = s.dir.path().join("a".repeat(60)).join("b".repeat(60)).join("state");
    s.cfg.state_dir = deep;
    let (handle, server) = gated_run(&mut s).await;
    assert!(server.path().as_os_str().len() > 108);
    let remote = RemoteLink::connect(handle.run_dir(), false).await.expect("connect");
    approve_and_finish(&remote, handle, server).await;
}

/// The run's own user is let in. `another_user_cannot_attach` also runs
/// this test as a second user, on the socket it names: it then prints what
/// the server said, for that test to check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_as_whoever_runs_it() {
    let Some(socket) = std::env::var_os("TRACKSIDE_TEST_SOCKET") else {
        let mut s = common::setup(GATED);
        let (handle, server) = gated_run(&mut s).await;
        let mut conn = raw_connect(handle.run_dir()).await;
        hello(&mut conn, None, false).await;
        assert!(
            matches!(
                recv(&mut conn).await,
                Some(ServerFrame::Welcome { can_steer: true, .. })
            ),
            "the run's user is welcomed"
        );
        server.close().await;
        handle.shutdown().await;
        return;
    };
    let stream = UnixStream::connect(&socket).await.expect("connect");
    let mut conn = Framed::new(stream, wire::codec());
    // The server may refuse before the hello arrives (then the write fails):
    // its answer is read either way.
    let hello = ClientFrame::Hello {
        version: VERSION,
        from: Some(0),
        read_only: false,
    };
    let _ = conn.send(wire::encode(&hello)).await;
    match recv(&mut conn).await {
        Some(ServerFrame::Refused { message }) => println!("refused: {message}"),
        other => println!("not refused: {other:?}"),
    }
}

/// The run's last events reach a client even when the server closes right
/// after the run ends (the end of the stream comes after them, not before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gets_the_end_of_the_run_before_the_end_of_the_stream() {
    let mut s = common::setup(
        r#"
name: ends
jobs:
  talk:
    steps:
      - name: print
        script: ['seq 1 20000']
"#,
    );
    let run = common::start(&mut s).await;
    let server = attach::serve(run.handle.clone(), trackside::access::Access::owner_only()).expect("serve");
    let remote = RemoteLink::connect(run.handle.run_dir(), true).await.expect("connect");
    let mut events = remote.subscribe(0).await.expect("subscribe");
    tokio::time::timeout(LIMIT, run.handle.wait())
        .await
        .expect("the run ends within LIMIT")
        .expect("summary");
    run.handle.shutdown().await;
    server.close().await;
    // Every number accounted for: delivered, or said to be missed (a
    // client this far behind misses log lines, never silently).
    let (mut last, mut next) = (None, 0u64);
    let drain = async {
        while let Some(item) = events.next().await {
            match item {
                Delivery::Event(ev) => {
                    assert_eq!(ev.seq, next, "no silent gap");
                    next = ev.seq + 1;
                    last = Some(ev);
                }
                Delivery::Missed { from, to } => {
                    assert_eq!(from, next, "no silent gap");
                    next = to + 1;
                }
            }
        }
    };
    tokio::time::timeout(LIMIT, drain)
        .await
        .expect("the stream ends within LIMIT");
    assert!(next > 20_000, "the whole run is accounted for: {next}");
    assert!(last.is_some_and(|e| finished(&e)), "the last event is the run's end");
}

/// `trackside logs RUN JOB --follow` started in the middle of a job: the
/// lines so far from the record, then the rest as they come, each once and
/// in order, and it ends with the job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_follow_prints_a_job_once_from_the_record_then_live() {
    let mut s = common::setup(
        r#"
name: follow
jobs:
  build:
    steps:
      - name: compile
        script:
          - for i in 1 2 3 4 5; do echo "line-$i"; done
          - while [ ! -e go ]; do sleep 0.02; done
          - for i in 6 7 8 9 10; do echo "line-$i"; done
"#,
    );
    s.cfg.in_place = true;
    let project = s.project();
    let state = s.state();
    let run = common::start(&mut s).await;
    let server = attach::serve(run.handle.clone(), trackside::access::Access::owner_only()).expect("serve");
    let mut events = Link::subscribe(&run.handle, 0).await.expect("subscribe");
    until(
        &mut events,
        |e| matches!(&e.kind, EventKind::LogLine { line, .. } if line == "line-5"),
    )
    .await;
    let follower = std::process::Command::new(env!("CARGO_BIN_EXE_trackside"))
        .arg("--state-dir")
        .arg(&state)
        .args(["logs", run.handle.run_id(), "build", "--follow"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("trackside logs --follow");
    // It is connected (the run serves it) before the job goes on.
    tokio::time::timeout(LIMIT, server.attached(1))
        .await
        .expect("the follower connects within LIMIT");
    std::fs::write(project.join("go"), "").expect("write");
    let out = tokio::task::spawn_blocking(move || follower.wait_with_output())
        .await
        .expect("join")
        .expect("output");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("line-")).collect();
    let want: Vec<String> = (1..=10).map(|i| format!("line-{i}")).collect();
    assert_eq!(lines, want, "each line once, in order:\n{text}");
    assert!(text.starts_with("--- step: compile ---"), "{text}");
    server.close().await;
    run.handle.shutdown().await;
}
