//! Cases found by attacking trackside (issue 11): each one broke or fooled
//! it once. Pipelines that exhaust memory, bytes YAML forbids, secrets in
//! the process table, unbounded artifacts, crash leftovers.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use trackside::engine::RunResult;
use trackside::pipeline::FailureClass;

use common::cli::Env;

/// `trackside validate PATH`: its exit code and everything it said.
fn validate(e: &Env, path: &Path) -> (i32, String) {
    let o = e.run(&["validate", &path.to_string_lossy()]);
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!out.contains("panicked"), "{out}");
    (o.status.code().unwrap_or(-1), out)
}

#[test]
fn an_expansion_bomb_is_a_diagnostic_not_an_abort() {
    let e = Env::new();
    let a = "a".repeat(1000);
    let yaml = format!(
        "name: bomb\nglobal_env:\n  A: {a}\n  B: \"${{A//a/${{A}}}}\"\n  C: \"${{B//a/${{B}}}}\"\njobs:\n  a:\n    steps:\n      - script: echo $C\n"
    );
    assert!(yaml.len() < 1200);
    let (code, out) = validate(&e, &e.file("bomb.yml", yaml.as_bytes()));
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains(":5:7") && out.contains("expanded value is longer than"),
        "{out}"
    );
}

#[test]
fn a_nul_byte_is_reported_where_it_is_and_nothing_after_it_is_lost() {
    let e = Env::new();
    let (code, out) = validate(
        &e,
        &e.file(
            "nul.yml",
            b"name: nul\njobs:\n  a:\n    steps:\n      - script: echo a\0\n  b:\n    steps:\n      - script: echo b\n",
        ),
    );
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains(":5:23") && out.contains("a NUL byte is not allowed"),
        "{out}"
    );
}

#[test]
fn a_byte_order_mark_is_accepted() {
    let e = Env::new();
    let (code, out) = validate(
        &e,
        &e.file(
            "bom.yml",
            "\u{feff}name: bom\njobs:\n  a:\n    steps:\n      - script: echo a\n".as_bytes(),
        ),
    );
    assert_eq!(code, 0, "{out}");
}

#[test]
fn a_comment_only_file_says_so() {
    let e = Env::new();
    let (code, out) = validate(&e, &e.file("comments.yml", b"# name: x\n# jobs: {}\n"));
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("only comments"), "{out}");
    assert!(!out.contains("see the messages above"), "{out}");
}

/// Another local user sending HAProxy-shaped log lines must not move the
/// judge's numbers: only the uids the socket accepts count. Needs root (to
/// send as another uid); CI runs as root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_haproxy_log_lines_from_another_user_are_dropped() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    use trackside::deploy::haproxy::LogSocket;
    use trackside::deploy::router::{Pool, Router};

    if let Some(path) = std::env::var_os("TRACKSIDE_FORGE_TO") {
        return forge(Path::new(&path));
    }
    if !nix::unistd::geteuid().is_root() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI runs as root: this test sends as another uid"
        );
        eprintln!("SKIPPED forged_haproxy_log_lines_from_another_user_are_dropped: needs root to send as another uid");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    // The attack needs a socket the other user can reach: a running
    // HAProxy of another user's is exactly that case.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let path = dir.path().join("log.sock");
    let sock = LogSocket::bind(&path, 0o622, vec![nix::unistd::geteuid().as_raw()]).expect("bind");
    let stats = Router::new(false);
    let stop = tokio_util::sync::CancellationToken::new();
    let receiver = tokio::spawn(sock.receive("web".into(), stats.clone(), stop.clone()));
    let forger = Command::new(std::env::current_exe().expect("exe"))
        .args([
            "--exact",
            "forged_haproxy_log_lines_from_another_user_are_dropped",
            "--nocapture",
        ])
        .env("TRACKSIDE_FORGE_TO", &path)
        .uid(65534)
        .gid(65534)
        .output()
        .expect("run the forger");
    let said = String::from_utf8_lossy(&forger.stdout);
    assert!(
        forger.status.success() && said.contains("forged 300"),
        "{said}{}",
        String::from_utf8_lossy(&forger.stderr)
    );
    // Then one real line from trackside's own uid: once it counts, every
    // forged line before it has been read too (one socket, in order).
    let me = std::os::unix::net::UnixDatagram::unbound().expect("socket");
    me.send_to(b"web canary1 200 5", &path).expect("send");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while stats.totals(Pool::Canary).requests == 0 {
        assert!(std::time::Instant::now() < deadline, "the real line never counted");
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let canary = stats.totals(Pool::Canary);
    assert_eq!((canary.requests, canary.errors), (1, 0), "{canary:?}");
    stop.cancel();
    let _ = receiver.await;
}

/// The other user's side: 300 forged 503s of 9 s each.
fn forge(path: &Path) {
    let s = std::os::unix::net::UnixDatagram::unbound().expect("socket");
    let mut n = 0;
    for _ in 0..300 {
        if s.send_to(b"web canary1 503 9000", path).is_ok() {
            n += 1;
        }
    }
    println!("forged {n}");
}

/// A backend answering 200 to everything, for the router to forward to.
async fn backend(stop: tokio_util::sync::CancellationToken) -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(trackside::deploy::http::serve(
        l,
        Default::default(),
        stop,
        |_req| async { hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from_static(b"ok\n"))) },
    ));
    addr
}

/// Sends `raw` on a fresh connection and returns the status line.
async fn raw_request(to: std::net::SocketAddr, raw: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(to).await.expect("connect");
    s.write_all(raw).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(30), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_the_router_refuses_are_4xx_and_never_a_pools_errors() {
    use trackside::deploy::router::{FULL, Pool, Router};
    let stop = tokio_util::sync::CancellationToken::new();
    let b = backend(stop.clone()).await;
    let router = Router::new(false);
    router.set_backends(Pool::Canary, vec![b]);
    router.set_backends(Pool::Stable, vec![b]);
    router.set_weight(FULL);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let at = l.local_addr().expect("addr");
    tokio::spawn(router.clone().serve(l, stop.clone()));
    let good = raw_request(
        at,
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Canary: always\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(good.contains(" 200 "), "{good}");
    for _ in 0..10 {
        let star = raw_request(
            at,
            b"OPTIONS * HTTP/1.1\r\nHost: x\r\nX-Canary: always\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(star.contains(" 400 "), "OPTIONS *: {star}");
        let chunked = raw_request(
            at,
            b"POST /upload HTTP/1.1\r\nHost: x\r\nX-Canary: always\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\nnot hex\r\n0\r\n\r\n",
        )
        .await;
        assert!(
            chunked.is_empty() || chunked.contains(" 400 "),
            "a malformed chunked body: {chunked}"
        );
    }
    let canary = router.totals(Pool::Canary);
    assert_eq!(
        canary.errors, 0,
        "client mistakes counted against the canary: {canary:?}"
    );
    stop.cancel();
}

/// A replica that refuses the connection (it just died) costs a bodiless
/// request nothing: the router sends it to another replica of the pool. A
/// request with a body is not sent twice.
#[tokio::test]
async fn a_dead_replica_costs_a_bodiless_request_no_error() {
    use trackside::deploy::router::{Pool, Router};
    let stop = tokio_util::sync::CancellationToken::new();
    let alive = backend(stop.clone()).await;
    // A port nobody listens on.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let router = Router::new(false);
    router.set_backends(Pool::Stable, vec![dead, alive]);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let at = l.local_addr().expect("addr");
    tokio::spawn(router.clone().serve(l, stop.clone()));
    for _ in 0..10 {
        let got = raw_request(at, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
        assert!(got.contains(" 200 "), "{got}");
    }
    assert_eq!(router.totals(Pool::Stable).errors, 0);
    let mut bad = 0;
    for _ in 0..10 {
        let got = raw_request(
            at,
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi",
        )
        .await;
        bad += usize::from(got.contains(" 502 "));
    }
    assert!(bad > 0, "a request with a body to the dead replica is not retried");
    stop.cancel();
}

/// Out of file descriptors, a listener backs off, logs a bounded number of
/// lines and serves again once descriptors are free. The server runs in a
/// child process with a soft limit of 40 open files.
#[test]
fn running_out_of_file_descriptors_neither_spins_nor_kills_the_listener() {
    use std::io::{BufRead, Read, Write};
    if std::env::var_os("TRACKSIDE_FD_SERVER").is_some() {
        return fd_server();
    }
    let mut child = Command::new(std::env::current_exe().expect("exe"))
        .args([
            "--exact",
            "running_out_of_file_descriptors_neither_spins_nor_kills_the_listener",
            "--nocapture",
        ])
        .env("TRACKSIDE_FD_SERVER", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the server");
    let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    let port: u16 = loop {
        line.clear();
        assert!(out.read_line(&mut line).expect("read") > 0, "the server said no port");
        if let Some(p) = line.trim().strip_prefix("port ") {
            break p.parse().expect("port");
        }
    };
    // 100 idle clients: more than the server has descriptors for.
    let idle: Vec<std::net::TcpStream> = (0..100)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect"))
        .collect();
    // A real request still gets its answer: idle clients time out (1 s to
    // send a head), descriptors come free, the listener accepts again.
    let mut real = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    real.set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .expect("timeout");
    real.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("write");
    let mut answer = String::new();
    let _ = real.read_to_string(&mut answer);
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "no answer once descriptors were free: {answer:?}"
    );
    drop(idle);
    drop(child.stdin.take());
    let mut err = String::new();
    let _ = child.stderr.take().expect("stderr").read_to_string(&mut err);
    let _ = child.wait();
    let warnings = err.lines().filter(|l| l.contains("accept:")).count();
    assert!(
        warnings > 0,
        "the server never ran out of descriptors: the test proves nothing\n{err}"
    );
    assert!(
        warnings < 40,
        "{warnings} accept warnings: the log is not rate-limited\n{err}"
    );
}

fn fd_server() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        setrlimit(Resource::RLIMIT_NOFILE, 40, hard).expect("setrlimit");
        println!("port {}", l.local_addr().expect("addr").port());
        let stop = tokio_util::sync::CancellationToken::new();
        let limits = trackside::deploy::http::Limits {
            max_connections: 1000,
            header_timeout: std::time::Duration::from_secs(1),
        };
        let server = tokio::spawn(trackside::deploy::http::serve(l, limits, stop.clone(), |_req| async {
            hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from_static(b"ok\n")))
        }));
        // Serve until the parent closes stdin.
        let _ = tokio::task::spawn_blocking(|| std::io::Read::read(&mut std::io::stdin(), &mut [0u8; 1])).await;
        stop.cancel();
        let _ = server.await;
    });
}

/// Bytes the files below `dir` take on disk (not their apparent size).
fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                stack.push(e.path());
            } else {
                total += m.blocks() * 512;
            }
        }
    }
    total
}

fn temp_files(state: &Path) -> Vec<String> {
    std::fs::read_dir(state.join("objects/tmp"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terabyte_sparse_artifact_is_refused_before_a_byte_is_read() {
    let mut s = common::setup(
        "name: big\njobs:\n  make:\n    artifacts: {paths: [out/]}\n    steps:\n      - script: mkdir -p out && truncate -s 1T out/x\n",
    );
    let state = s.state();
    let mut r = common::start(&mut s).await;
    let sum = r.finished().await;
    assert_eq!(sum.result, RunResult::Failed);
    let job = &sum.jobs[0];
    assert_eq!(job.failure_class, Some(FailureClass::Script), "{job:?}");
    let said = r.lines("make").join("\n");
    assert!(
        said.contains("`out/x` is 1.0 TiB") && said.contains("artifacts.max_job_size"),
        "{said}"
    );
    assert!(disk_usage(&state.join("objects")) < 1 << 20, "nothing of it was stored");
    assert!(temp_files(&state).is_empty(), "{:?}", temp_files(&state));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sparse_artifacts_keep_their_holes_in_the_store_and_when_restored() {
    let mut s = common::setup(
        r#"name: sparse
jobs:
  make:
    artifacts: {paths: [out/]}
    steps:
      - script: mkdir -p out && truncate -s 300M out/disk.img && printf tail >> out/disk.img
  use:
    depends_on: [make]
    steps:
      - script: |
          test "$(stat -c %s out/disk.img)" = 314572804
          echo "blocks $(stat -c %b out/disk.img) last $(tail -c 4 out/disk.img)"
"#,
    );
    s.cfg.keep_workspaces = true;
    let state = s.state();
    let mut r = common::start(&mut s).await;
    let sum = r.finished().await;
    assert_eq!(
        sum.result,
        RunResult::Passed,
        "{:?} {:?}",
        r.lines("make"),
        r.lines("use")
    );
    let objects = disk_usage(&state.join("objects"));
    assert!(
        objects < 4 << 20,
        "a 300 MB sparse file took {objects} bytes in the store"
    );
    let line = r
        .lines("use")
        .into_iter()
        .find(|l| l.starts_with("blocks "))
        .unwrap_or_default();
    let blocks: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|b| b.parse().ok())
        .unwrap_or(u64::MAX);
    assert!(blocks * 512 < 4 << 20, "restored dense: {line}");
    assert!(line.ends_with("last tail"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runs_artifact_limit_holds_across_jobs() {
    let mut s = common::setup(
        r#"name: run-limit
jobs:
  a:
    artifacts: {paths: [outa/]}
    steps:
      - script: mkdir -p outa && head -c 700000 /dev/urandom > outa/a
  b:
    depends_on: [a]
    artifacts: {paths: [outb/]}
    steps:
      - script: mkdir -p outb && head -c 700000 /dev/urandom > outb/b
"#,
    );
    std::fs::create_dir_all(s.state()).expect("state");
    std::fs::write(s.state().join("config.yml"), "artifacts:\n  max_run_size: 1MB\n").expect("config");
    let mut r = common::start(&mut s).await;
    let sum = r.finished().await;
    let b = sum.jobs.iter().find(|j| j.name == "b").expect("b");
    assert_eq!(b.failure_class, Some(FailureClass::Script), "{:?}", r.lines("b"));
    let said = r.lines("b").join("\n");
    assert!(
        said.contains("`outb/b`")
            && said.contains("artifacts.max_run_size")
            && said.contains("allows 976.6 KiB in all"),
        "{said}"
    );
    let a = sum.jobs.iter().find(|j| j.name == "a").expect("a");
    assert_eq!(a.failure_class, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storing_stops_as_disk_full_before_the_margin_is_reached() {
    let mut s = common::setup(
        "name: full\njobs:\n  make:\n    retry_count: 0\n    artifacts: {paths: [out/]}\n    steps:\n      - script: mkdir -p out && echo data > out/x\n",
    );
    std::fs::create_dir_all(s.state()).expect("state");
    // A margin no disk has: the first write would go below it.
    std::fs::write(s.state().join("config.yml"), "artifacts:\n  min_free: 1000TiB\n").expect("config");
    let state = s.state();
    let mut r = common::start(&mut s).await;
    let sum = r.finished().await;
    let job = &sum.jobs[0];
    assert_eq!(job.failure_class, Some(FailureClass::DiskFull), "{:?}", r.lines("make"));
    let said = r.lines("make").join("\n");
    assert!(
        said.contains("MiB free") && said.contains("artifacts.min_free"),
        "{said}"
    );
    assert!(temp_files(&state).is_empty(), "{:?}", temp_files(&state));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn special_files_left_out_of_artifacts_are_named() {
    let mut s = common::setup(
        "name: fifo\njobs:\n  make:\n    artifacts: {paths: [out/]}\n    steps:\n      - script: mkdir -p out && mkfifo out/pipe && echo x > out/file\n",
    );
    let mut r = common::start(&mut s).await;
    let sum = r.finished().await;
    assert_eq!(sum.result, RunResult::Passed, "{:?}", r.lines("make"));
    let said = r.lines("make").join("\n");
    assert!(
        said.contains("warning: left out 1 path(s)") && said.contains("out/pipe (a FIFO)"),
        "{said}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifact_names_are_restored_byte_for_byte() {
    let mut s = common::setup(
        r#"name: names
jobs:
  make:
    artifacts: {paths: [out/]}
    steps:
      - script: mkdir -p out && echo x > 'out/back\slash'
  use:
    depends_on: [make]
    steps:
      - script: test -f 'out/back\slash' && ! test -e out/back/slash && echo same name
"#,
    );
    let mut r = common::start(&mut s).await;
    let sum = r.finished().await;
    assert_eq!(
        sum.result,
        RunResult::Passed,
        "{:?} {:?}",
        r.lines("make"),
        r.lines("use")
    );
    assert!(r.lines("use").iter().any(|l| l == "same name"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_that_is_not_utf8_is_refused_with_a_clear_message() {
    let mut s = common::setup(
        "name: bad-name\njobs:\n  make:\n    artifacts: {paths: [out/]}\n    steps:\n      - script: mkdir -p out && echo x > \"out/$(printf 'caf\\377')\"\n",
    );
    let mut r = common::start(&mut s).await;
    let sum = r.finished().await;
    assert_eq!(sum.result, RunResult::Failed);
    let said = r.lines("make").join("\n");
    assert!(said.contains("is not valid UTF-8; rename the file"), "{said}");
}

/// Every process's command line, as `ps` shows it to every user.
fn all_command_lines() -> String {
    let mut out = String::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if let Ok(b) = std::fs::read(e.path().join("cmdline")) {
            out.push_str(&String::from_utf8_lossy(&b).replace('\0', " "));
            out.push('\n');
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interpolated_secret_never_shows_in_the_process_table() {
    let mut s = common::setup_with(
        r#"name: ps
jobs:
  leak:
    steps:
      - script:
          - echo "${{ env.API_TOKEN }}" > /dev/null
          - echo started
          - sleep 30
"#,
        &trackside::pipeline::LoadOptions {
            secret_names: vec!["API_TOKEN".into()],
            ..Default::default()
        },
    );
    s.cfg.secrets = vec![("API_TOKEN".into(), "S3cret-in-ps-0451".into())];
    let state = s.state();
    let mut r = common::start(&mut s).await;
    r.until(
        "the step runs",
        |k| matches!(k, trackside::engine::EventKind::LogLine { line, .. } if line == "started"),
    )
    .await;
    // Step files (scripts, secrets) in the runs' `steps` folders.
    let on_disk = || -> Vec<String> {
        std::fs::read_dir(state.join("runs"))
            .into_iter()
            .flatten()
            .flatten()
            .flat_map(|run| {
                std::fs::read_dir(run.path().join("steps"))
                    .into_iter()
                    .flatten()
                    .flatten()
            })
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".sh") || n.ends_with(".secrets"))
            .collect()
    };
    // The script is in memory while it runs: no file of it on disk.
    assert_eq!(
        on_disk(),
        Vec::<String>::new(),
        "a host step's script is written to disk"
    );
    let table = all_command_lines();
    assert!(
        !table.contains("S3cret-in-ps-0451"),
        "the secret is in the process table:\n{}",
        table
            .lines()
            .filter(|l| l.contains("S3cret"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    r.handle.cancel_all().await.expect("cancel");
    r.finished().await;
    let left = on_disk();
    assert!(left.is_empty(), "scripts left on disk after the attempt: {left:?}");
    assert!(
        !common::all_text(&state).contains("S3cret-in-ps-0451"),
        "secret on disk"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_larger_than_an_argument_may_be_runs() {
    // 200 KiB on one line: over Linux's 128 KiB limit for one argument.
    let long = "x".repeat(200 * 1024);
    let mut s = common::setup(&format!(
        "name: big\njobs:\n  big:\n    steps:\n      - script: v={long} && echo ${{#v}}\n"
    ));
    let mut r = common::start(&mut s).await;
    let sum = r.finished().await;
    assert_eq!(sum.result, RunResult::Passed, "{:?}", sum.jobs[0]);
    assert_eq!(r.lines("big"), [(200 * 1024).to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_across_the_long_line_split_is_still_masked() {
    let mut s = common::setup_with(
        // The secret starts 6 bytes before the 64 KiB split, and again at 1 MiB.
        "name: split\njobs:\n  leak:\n    steps:\n      - script:\n          - head -c 65530 /dev/zero | tr '\\0' x; echo \"$TOKEN\"\n          - head -c 1048570 /dev/zero | tr '\\0' y; echo \"$TOKEN\"\n",
        &trackside::pipeline::LoadOptions {
            secret_names: vec!["TOKEN".into()],
            ..Default::default()
        },
    );
    s.cfg.secrets = vec![("TOKEN".into(), "S3cret-split-0042".into())];
    let state = s.state();
    let mut r = common::start(&mut s).await;
    let sum = r.finished().await;
    assert_eq!(sum.result, RunResult::Passed);
    let all = r.lines("leak").concat();
    assert!(
        !all.contains("S3cret") && !all.contains("0042"),
        "a piece of the secret shows"
    );
    assert_eq!(all.matches("[MASKED]").count(), 2);
    assert_eq!(
        all.len(),
        65530 + 1048570 + 2 * "[MASKED]".len(),
        "no byte lost or doubled"
    );
    assert!(
        !common::all_text(&state).contains("S3cret-split-0042"),
        "secret on disk"
    );
}

/// Pids of processes whose command line contains `needle`.
fn processes_with(needle: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_string_lossy().into_owned();
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            let zombie = stat
                .rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'));
            (cmd.contains(needle) && !zombie).then_some(format!("{pid}: {cmd}"))
        })
        .collect()
}

/// Waits (bounded) until no process's command line contains `needle`.
fn until_gone(needle: &str) -> Vec<String> {
    let deadline = std::time::Instant::now() + common::LIMIT;
    loop {
        let left = processes_with(needle);
        if left.is_empty() || std::time::Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn cgroups_or_skip(test: &str) -> bool {
    if trackside::exec::contain::available() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: CI must have a writable cgroup2 hierarchy"
    );
    eprintln!("SKIPPED {test}: no writable cgroup2 hierarchy here");
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_that_drops_its_group_and_environment_does_not_survive_cancel() {
    if !cgroups_or_skip("a_process_that_drops_its_group_and_environment_does_not_survive_cancel") {
        return;
    }
    let mut s = common::setup(
        "name: escape\njobs:\n  escape:\n    steps:\n      - script:\n          - setsid env -i /bin/sleep 305.4711 &\n          - echo ready\n          - sleep 30\n",
    );
    let mut r = common::start(&mut s).await;
    r.until(
        "ready",
        |k| matches!(k, trackside::engine::EventKind::LogLine { line, .. } if line == "ready"),
    )
    .await;
    let deadline = std::time::Instant::now() + common::LIMIT;
    while processes_with("305.4711").is_empty() {
        assert!(std::time::Instant::now() < deadline, "the escaped sleep never started");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    r.handle.cancel("escape").await.expect("cancel");
    r.finished().await;
    let left = tokio::task::spawn_blocking(|| until_gone("305.4711"))
        .await
        .expect("join");
    assert!(left.is_empty(), "survived the cancel: {left:?}");
}

/// After kill -9 of trackside, what its jobs left running is stopped by
/// the next trackside that starts.
#[test]
fn the_next_run_stops_what_a_killed_trackside_left_running() {
    use std::io::BufRead;
    let e = Env::new();
    let leaky = e.file(
        "leaky.yml",
        b"name: leaky\njobs:\n  leak:\n    steps:\n      - script:\n          - sleep 306.4711 &\n          - setsid env -i /bin/sleep 307.4711 &\n          - echo ready\n          - sleep 300\n",
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_trackside"))
        .env("TRACKSIDE_STATE_DIR", e.state())
        .args(["run", &leaky.to_string_lossy(), "--headless"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run trackside");
    let out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut ready = false;
    for line in out.lines() {
        if line.expect("read").ends_with("> ready") {
            ready = true;
            break;
        }
    }
    assert!(ready, "the job never said ready");
    let deadline = std::time::Instant::now() + common::LIMIT;
    while processes_with("306.4711").is_empty() || processes_with("307.4711").is_empty() {
        assert!(std::time::Instant::now() < deadline, "the sleeps never started");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let _ = child.kill(); // SIGKILL: no clean-up of its own
    let _ = child.wait();
    assert!(
        !processes_with("306.4711").is_empty(),
        "the leftover must outlive the crash for the test to mean anything"
    );
    let ok = e.file(
        "ok.yml",
        b"name: ok\njobs:\n  a:\n    steps:\n      - script: echo fine\n",
    );
    let o = e.run(&["run", &ok.to_string_lossy(), "--headless"]);
    let said = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(0), "{said}");
    assert!(said.contains("left running by a crashed trackside"), "{said}");
    let tagged = until_gone("306.4711");
    assert!(tagged.is_empty(), "a tagged leftover survived: {tagged:?}");
    if trackside::exec::contain::available() {
        let escaped = until_gone("307.4711");
        assert!(escaped.is_empty(), "an escaped leftover survived: {escaped:?}");
    }
}

#[test]
fn a_crashed_run_says_so_and_gc_removes_it_and_partial_files() {
    let e = Env::new();
    let ok = e.file("ok.yml", b"name: ok\njobs:\n  a:\n    steps:\n      - script: echo fine\n  b:\n    depends_on: [a]\n    steps:\n      - script: echo too\n");
    let o = e.run(&["run", &ok.to_string_lossy(), "--headless"]);
    assert_eq!(o.status.code(), Some(0));
    // Make that run look like one whose trackside died after job a: no
    // summary, b started, and an owner that does not run (pid 4194303 is
    // above any pid_max default; start time 1).
    let runs = e.state().join("runs");
    let run = std::fs::read_dir(&runs)
        .expect("runs")
        .flatten()
        .next()
        .expect("a run")
        .path();
    std::fs::remove_file(run.join("summary.json")).expect("rm summary");
    let meta = std::fs::read_to_string(run.join("meta.json")).expect("meta");
    let mut meta: serde_json::Value = serde_json::from_str(&meta).expect("json");
    meta["owner"] = "4194303:1".into();
    meta["started_ms"] = 1_000.into();
    std::fs::write(run.join("meta.json"), meta.to_string()).expect("write");
    let events = std::fs::read_to_string(run.join("events.jsonl")).expect("events");
    let cut: Vec<&str> = events
        .lines()
        .take_while(|l| !l.contains("\"job\":\"b\"") || !l.contains("job_finished"))
        .filter(|l| !l.contains("run_finished"))
        .collect();
    std::fs::write(run.join("events.jsonl"), cut.join("\n") + "\n").expect("write");
    // A partial object of a writer that died.
    std::fs::write(e.state().join("objects/tmp/4194303-00000000deadbeef"), vec![1u8; 4096]).expect("tmp");

    let listed = String::from_utf8_lossy(&e.run(&["runs"]).stdout).into_owned();
    assert!(listed.contains("crashed"), "{listed}");
    let shown = e.run(&["show", "last"]);
    let said = String::from_utf8_lossy(&shown.stderr).into_owned();
    assert!(
        said.contains("crashed: trackside (pid 4194303) is gone; it got as far as 1 of 2 job(s) finished (a succeeded); running when it stopped: b"),
        "{said}"
    );
    let gc = e.run(&["gc", "--max-age", "1h"]);
    let said = String::from_utf8_lossy(&gc.stdout).into_owned();
    assert_eq!(gc.status.code(), Some(0), "{said}");
    assert!(said.contains("removed 1 run(s)"), "{said}");
    assert!(said.contains("removed 1 partial file(s) (4096 bytes)"), "{said}");
    assert!(!run.exists(), "the crashed run is gone");
}

#[test]
fn a_damaged_index_is_reported_and_rebuilt_from_the_run_records() {
    let e = Env::new();
    let p = e.file(
        "art.yml",
        b"name: art\njobs:\n  make:\n    artifacts: {paths: [out/]}\n    steps:\n      - script: mkdir -p out && echo data > out/x\n",
    );
    let o = e.run(&["run", &p.to_string_lossy(), "--headless"]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    // Flip every byte after SQLite's header.
    let db = e.state().join("index.sqlite");
    let mut bytes = std::fs::read(&db).expect("index");
    for b in bytes.iter_mut().skip(100) {
        *b ^= 0xa5;
    }
    std::fs::write(&db, bytes).expect("write");
    let _ = std::fs::remove_file(e.state().join("index.sqlite-wal"));
    let _ = std::fs::remove_file(e.state().join("index.sqlite-shm"));
    let runs_before = std::fs::read_dir(e.state().join("runs")).expect("runs").count();

    let o = e.run(&["run", &p.to_string_lossy(), "--headless"]);
    let said = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(2), "{said}");
    assert!(
        said.contains("is damaged") && said.contains("store verify --repair"),
        "{said}"
    );
    // Stopped before it had a record (the index opens beside the
    // pipeline's read, and is waited for before the record is claimed).
    let runs_after = std::fs::read_dir(e.state().join("runs")).expect("runs").count();
    assert_eq!(runs_after, runs_before, "no run record for a run the index stopped");
    let o = e.run(&["store", "verify"]);
    let said = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(o.status.code(), Some(1), "{said}");
    assert!(said.contains("is damaged"), "{said}");
    let o = e.run(&["store", "verify", "--repair"]);
    let said = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(o.status.code(), Some(0), "{said}{}", String::from_utf8_lossy(&o.stderr));
    assert!(said.contains("named 1 artifact set(s) again"), "{said}");
    let o = e.run(&["artifacts", "last"]);
    let said = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(said.contains("out/x"), "the artifacts are found again: {said}");
    let o = e.run(&["run", &p.to_string_lossy(), "--headless"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "runs again: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Another user's state directory: every command says whose it is, not
/// that a record is damaged or that no trackside runs. Needs root (to run
/// as another uid); CI runs as root.
#[test]
fn another_users_state_directory_is_refused_with_the_reason() {
    use std::os::unix::process::CommandExt;
    if !nix::unistd::geteuid().is_root() {
        assert!(std::env::var_os("CI").is_none(), "CI runs as root");
        eprintln!("SKIPPED another_users_state_directory_is_refused_with_the_reason: needs root");
        return;
    }
    let e = Env::new();
    let ok = e.file(
        "ok.yml",
        b"name: ok\njobs:\n  a:\n    steps:\n      - script: echo fine\n",
    );
    assert_eq!(
        e.run(&["run", &ok.to_string_lossy(), "--headless"]).status.code(),
        Some(0)
    );
    {
        use std::os::unix::fs::PermissionsExt;
        // Let the other user reach the state directory's name (it stays 0700).
        std::fs::set_permissions(e.dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    for args in [&["gc", "--keep-last", "0"][..], &["rollout", "web"][..], &["runs"][..]] {
        let o = Command::new(env!("CARGO_BIN_EXE_trackside"))
            .env("TRACKSIDE_STATE_DIR", e.state())
            .args(args)
            .uid(65534)
            .gid(65534)
            .stdin(Stdio::null())
            .output()
            .expect("run as nobody");
        let said = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_ne!(o.status.code(), Some(0), "{args:?}: {said}");
        assert!(said.contains("belongs to uid 0, not to you"), "{args:?}: {said}");
        assert!(
            !said.contains("damaged") && !said.contains("no trackside is running"),
            "{args:?}: {said}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_storing_an_artifact_and_removes_its_temp_file() {
    let mut s = common::setup(
        "name: store\njobs:\n  make:\n    artifacts: {paths: [out/]}\n    steps:\n      - script: mkdir -p out && yes trackside | head -c 400000000 > out/big\n",
    );
    let state = s.state();
    let mut r = common::start(&mut s).await;
    // Storing has begun once its temp file exists.
    let tmp = state.join("objects/tmp");
    let deadline = std::time::Instant::now() + common::LIMIT;
    while temp_files(&state).is_empty() {
        assert!(std::time::Instant::now() < deadline, "storing never began");
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    r.handle.cancel_all().await.expect("cancel");
    let sum = r.finished().await;
    assert_eq!(sum.result, RunResult::Cancelled, "{:?}", r.lines("make"));
    assert!(
        temp_files(&state).is_empty(),
        "left in {}: {:?}",
        tmp.display(),
        temp_files(&state)
    );
    // Nothing of that size was stored.
    assert!(
        disk_usage(&state.join("objects")) < 100 << 20,
        "the artifact was stored anyway"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_that_ends_on_the_split_keeps_its_last_bytes_masked() {
    // 65,536 bytes and no newline: the last piece is cut at the split and
    // nothing follows it; what masking held back must still come out.
    let mut s = common::setup_with(
        "name: edge\njobs:\n  edge:\n    steps:\n      - script: head -c 65520 /dev/zero | tr '\\0' x; printf %s \"$TOKEN\"\n",
        &trackside::pipeline::LoadOptions {
            secret_names: vec!["TOKEN".into()],
            ..Default::default()
        },
    );
    s.cfg.secrets = vec![("TOKEN".into(), "S3cret-edge-0042".into())];
    assert_eq!(65520 + "S3cret-edge-0042".len(), 65536, "exactly one piece of 64 KiB");
    let mut r = common::start(&mut s).await;
    let sum = r.finished().await;
    assert_eq!(sum.result, RunResult::Passed);
    let all = r.lines("edge").concat();
    assert!(!all.contains("0042"), "{}", &all[all.len().saturating_sub(40)..]);
    assert!(all.ends_with("x[MASKED]"), "{}", &all[all.len().saturating_sub(40)..]);
}
