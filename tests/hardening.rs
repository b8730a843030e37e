//! Cases found by attacking trackside (issue 11): each one broke or fooled
//! it once. Pipelines that exhaust memory, bytes YAML forbids, secrets in
//! the process table, unbounded artifacts, crash leftovers.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        Env {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }
    fn file(&self, name: &str, text: &[u8]) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).expect("write");
        p
    }
    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }
    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_trackside"))
            .env("TRACKSIDE_STATE_DIR", self.state())
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .args(args)
            .output()
            .expect("run trackside")
    }
    fn validate(&self, path: &Path) -> (i32, String) {
        let o = self.run(&["validate", &path.to_string_lossy()]);
        let out = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(!out.contains("panicked"), "{out}");
        (o.status.code().unwrap_or(-1), out)
    }
}

#[test]
fn an_expansion_bomb_is_a_diagnostic_not_an_abort() {
    let e = Env::new();
    let a = "a".repeat(1000);
    let yaml = format!(
        "name: bomb\nglobal_env:\n  A: {a}\n  B: \"${{A//a/${{A}}}}\"\n  C: \"${{B//a/${{B}}}}\"\njobs:\n  a:\n    steps:\n      - script: echo $C\n"
    );
    assert!(yaml.len() < 1200);
    let (code, out) = e.validate(&e.file("bomb.yml", yaml.as_bytes()));
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains(":5:7") && out.contains("expanded value is longer than"),
        "{out}"
    );
}

#[test]
fn a_nul_byte_is_reported_where_it_is_and_nothing_after_it_is_lost() {
    let e = Env::new();
    let (code, out) = e.validate(&e.file(
        "nul.yml",
        b"name: nul\njobs:\n  a:\n    steps:\n      - script: echo a\0\n  b:\n    steps:\n      - script: echo b\n",
    ));
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains(":5:23") && out.contains("a NUL byte is not allowed"),
        "{out}"
    );
}

#[test]
fn a_byte_order_mark_is_accepted() {
    let e = Env::new();
    let (code, out) = e.validate(&e.file(
        "bom.yml",
        "\u{feff}name: bom\njobs:\n  a:\n    steps:\n      - script: echo a\n".as_bytes(),
    ));
    assert_eq!(code, 0, "{out}");
}

#[test]
fn a_comment_only_file_says_so() {
    let e = Env::new();
    let (code, out) = e.validate(&e.file("comments.yml", b"# name: x\n# jobs: {}\n"));
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
    tokio::spawn(trackside::deploy::http::serve(l, stop, |_req| async {
        hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from_static(b"ok\n")))
    }));
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
        let server = tokio::spawn(trackside::deploy::http::serve_with(
            l,
            limits,
            stop.clone(),
            |_req| async { hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from_static(b"ok\n"))) },
        ));
        // Serve until the parent closes stdin.
        let _ = tokio::task::spawn_blocking(|| std::io::Read::read(&mut std::io::stdin(), &mut [0u8; 1])).await;
        stop.cancel();
        let _ = server.await;
    });
}
