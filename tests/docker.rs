//! The container executor against a real Docker daemon. No outside
//! registry: the tests build their own tiny images from scratch with a
//! static busybox (Debian's busybox-static) through the Engine API's build
//! endpoint, and the pull-policy test pushes one to a registry on loopback
//! (Debian's docker-registry).
//!
//! Without a daemon these tests skip with one loud line, unless
//! TRACKSIDE_REQUIRE_DOCKER=1 (CI sets it), when that is a failure.

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use bollard::query_parameters::ListContainersOptions;
use trackside::engine::{EventKind, JobStatus, RunResult};
use trackside::exec::docker::{DockerExecutor, LABEL_RUN};
use trackside::exec::route::Executors;
use trackside::exec::shell::ShellExecutor;
use trackside::pipeline::FailureClass;

use common::*;

const IMAGE_A: &str = "trackside-test-busybox:a";
const IMAGE_B: &str = "trackside-test-busybox:b";

async fn docker() -> Option<DockerExecutor> {
    match DockerExecutor::connect().await {
        Ok(d) => Some(d),
        Err(e) => {
            assert!(
                std::env::var("TRACKSIDE_REQUIRE_DOCKER").as_deref() != Ok("1"),
                "TRACKSIDE_REQUIRE_DOCKER=1 but {e}"
            );
            eprintln!("SKIPPED Docker test: {e}. Start dockerd and set TRACKSIDE_REQUIRE_DOCKER=1 to run it.");
            None
        }
    }
}

async fn image(d: &DockerExecutor, tag: &str) {
    common::image::busybox_image(d.client(), tag).await;
}

fn with_docker(s: &mut Setup, d: &DockerExecutor) {
    s.cfg.executor = Arc::new(Executors {
        shell: ShellExecutor,
        docker: Some(d.clone()),
        swarm: None,
    });
    s.cfg.containers = true;
}

async fn labelled(d: &DockerExecutor, run_id: &str) -> usize {
    let filters = HashMap::from([("label".to_string(), vec![format!("{LABEL_RUN}={run_id}")])]);
    d.client()
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        }))
        .await
        .map(|l| l.len())
        .unwrap_or(usize::MAX)
}

fn job<'a>(s: &'a trackside::engine::RunSummary, name: &str) -> &'a trackside::engine::event::JobSummary {
    s.jobs.iter().find(|j| j.name == name).expect("job")
}

#[tokio::test]
async fn steps_with_different_images_share_the_workspace() {
    let Some(d) = docker().await else { return };
    image(&d, IMAGE_A).await;
    image(&d, IMAGE_B).await;
    let mut s = setup(&format!(
        "name: t\njobs:\n  build:\n    pull: never\n    steps:\n      - image: {IMAGE_A}\n        script: ['cat /image-name', 'echo from-a > out.txt', 'test -f README']\n      - image: {IMAGE_B}\n        script: ['cat /image-name', 'cat out.txt', 'echo \"dir=$(pwd) ci=$CI_PROJECT_DIR\"', 'echo to-stderr >&2']\n"
    ));
    with_docker(&mut s, &d);
    let mut r = start(&mut s).await;
    let sum = r.finished().await;
    assert_eq!(sum.result, RunResult::Passed, "{:?}", r.lines("build"));
    let lines = r.lines("build");
    for want in [IMAGE_A, IMAGE_B, "from-a", "dir=/workspace ci=/workspace", "to-stderr"] {
        assert!(lines.iter().any(|l| l == want), "missing {want} in {lines:?}");
    }
    let stderr = r.seen.iter().any(|e| {
        matches!(&e.kind, EventKind::LogLine { line, stream: trackside::engine::Stream::Stderr, .. } if line == "to-stderr")
    });
    assert!(stderr, "stderr stays apart from stdout");
    assert_eq!(labelled(&d, r.handle.run_id()).await, 0, "containers are removed");
}

/// A container job's peak memory and CPU time, from Docker's stats, go
/// into history.
#[tokio::test]
async fn a_container_jobs_peak_memory_is_recorded_in_history() {
    let Some(d) = docker().await else { return };
    image(&d, IMAGE_A).await;
    // About 24 MB held in a shell variable for three seconds: seen by the
    // kernel's peak (cgroup v1) and by the stats Docker sends each second.
    let mut s = setup(&format!(
        "name: t\njobs:\n  hold:\n    image: {IMAGE_A}\n    pull: never\n    steps:\n      - script: 'x=$(head -c 24000000 /dev/zero | tr \"\\0\" a); sleep 3; echo ${{#x}}'\n"
    ));
    with_docker(&mut s, &d);
    let state = s.cfg.state_dir.clone();
    let mut r = start(&mut s).await;
    let sum = r.finished().await;
    assert_eq!(sum.result, RunResult::Passed, "{:?}", r.lines("hold"));
    let index = trackside::store::index::Index::open(&state).expect("index");
    let rows = index.attempts(&Default::default()).expect("history");
    let row = rows.iter().find(|r| r.job == "hold").expect("a row");
    assert_eq!(row.executor, "docker");
    assert!(
        row.peak_memory.is_some_and(|b| b >= 20_000_000),
        "peak memory {:?}",
        row.peak_memory
    );
    // `tr` spent some CPU making the 24 MB before the samples came.
    assert!(row.cpu_ms.is_some_and(|ms| ms > 0), "cpu {:?}", row.cpu_ms);
}

#[tokio::test]
async fn a_memory_limit_ends_in_an_oom_failure() {
    let Some(d) = docker().await else { return };
    image(&d, IMAGE_A).await;
    let mut s = setup(&format!(
        "name: t\njobs:\n  hog:\n    image: {IMAGE_A}\n    pull: never\n    resources: {{memory: 16MiB, pids: 64, cpus: 0.5}}\n    steps:\n      - script: 'x=$(head -c 200000000 /dev/zero | tr \"\\0\" a); echo survived'\n"
    ));
    with_docker(&mut s, &d);
    let mut r = start(&mut s).await;
    let sum = r.finished().await;
    assert_eq!(job(&sum, "hog").failure_class, Some(FailureClass::Oom));
    assert!(!r.lines("hog").contains(&"survived".to_string()));
}

#[tokio::test]
async fn a_timeout_stops_the_container() {
    let Some(d) = docker().await else { return };
    image(&d, IMAGE_A).await;
    let mut s = setup(&format!(
        "name: t\nkill_grace: 1\njobs:\n  slow:\n    image: {IMAGE_A}\n    pull: never\n    timeout: 1\n    steps: [{{script: 'echo waiting; sleep 60'}}]\n"
    ));
    with_docker(&mut s, &d);
    let mut r = start(&mut s).await;
    let sum = r.finished().await;
    assert_eq!(job(&sum, "slow").failure_class, Some(FailureClass::Timeout));
    assert_eq!(labelled(&d, r.handle.run_id()).await, 0);
}

#[tokio::test]
async fn cancel_mid_run_leaves_no_container() {
    let Some(d) = docker().await else { return };
    image(&d, IMAGE_A).await;
    let mut s = setup(&format!(
        "name: t\njobs:\n  long:\n    image: {IMAGE_A}\n    pull: never\n    steps: [{{script: 'echo running; sleep 300'}}]\n"
    ));
    with_docker(&mut s, &d);
    let mut r = start(&mut s).await;
    r.until(
        "running",
        |k| matches!(k, EventKind::LogLine { line, .. } if line == "running"),
    )
    .await;
    assert_eq!(labelled(&d, r.handle.run_id()).await, 1);
    r.handle.cancel_all().await.expect("cancel");
    let sum = r.finished().await;
    assert_eq!(job(&sum, "long").status, JobStatus::Cancelled);
    assert_eq!(labelled(&d, r.handle.run_id()).await, 0, "cancel removes the container");
}

#[tokio::test]
async fn pull_never_with_a_missing_image_is_an_infra_failure() {
    let Some(d) = docker().await else { return };
    let mut s = setup(
        "name: t\njobs:\n  ghost:\n    image: trackside-test-missing:nope\n    pull: never\n    steps: [{script: echo never}]\n",
    );
    with_docker(&mut s, &d);
    let mut r = start(&mut s).await;
    let sum = r.finished().await;
    let j = job(&sum, "ghost");
    assert_eq!(j.failure_class, Some(FailureClass::Infra));
    assert!(
        j.reason
            .as_deref()
            .unwrap_or("")
            .contains("trackside-test-missing:nope"),
        "{:?}",
        j.reason
    );
}

/// A registry on loopback (Debian's docker-registry), which the daemon
/// reaches without TLS; what it serves is logged to `log`.
struct Registry {
    addr: String,
    log: std::path::PathBuf,
    _child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

/// The login of [`Registry::with_login`]: user `tu`, this password
/// (bcrypt, cost 5, in the registry's htpasswd file).
const REGISTRY_USER: &str = "tu";
const REGISTRY_PASSWORD: &str = "trackside-test-pw";
const REGISTRY_HTPASSWD: &str = "tu:$2b$05$K6KduPvDK/KZN.uR8TC0KOzEIyJlpem71quH.T75HRn02KYSt54cy";

impl Registry {
    async fn start() -> Registry {
        Registry::start_with("").await
    }

    /// A registry that serves only [`REGISTRY_USER`] (basic auth).
    async fn with_login() -> Registry {
        Registry::start_with(REGISTRY_HTPASSWD).await
    }

    async fn start_with(htpasswd: &str) -> Registry {
        let dir = tempfile::tempdir().expect("tempdir");
        let addr = format!("127.0.0.1:{}", common::deploy::free_port());
        let cfg = dir.path().join("config.yml");
        let auth = if htpasswd.is_empty() {
            String::new()
        } else {
            let file = dir.path().join("htpasswd");
            std::fs::write(&file, format!("{htpasswd}\n")).expect("htpasswd");
            format!("auth: {{htpasswd: {{realm: trackside, path: {}}}}}\n", file.display())
        };
        std::fs::write(
            &cfg,
            format!(
                "version: 0.1\nlog: {{level: info}}\nstorage: {{filesystem: {{rootdirectory: {}}}}}\nhttp: {{addr: \"{addr}\"}}\n{auth}",
                dir.path().join("data").display()
            ),
        )
        .expect("registry config");
        let log = dir.path().join("registry.log");
        let out = std::fs::File::create(&log).expect("log");
        let child = tokio::process::Command::new("docker-registry")
            .arg("serve")
            .arg(&cfg)
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .expect("docker-registry");
        let a = addr.clone();
        common::deploy::until("the registry to listen", move || {
            std::net::TcpStream::connect(&a).is_ok()
        })
        .await;
        Registry {
            addr,
            log,
            _child: child,
            _dir: dir,
        }
    }

    /// Requests for a manifest of `repo:tag` so far (each pull asks once).
    fn manifest_requests(&self, repo: &str, tag: &str) -> usize {
        let want = format!("/v2/{repo}/manifests/{tag}");
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(&want) && (l.contains("\"GET ") || l.contains("\"HEAD ")))
            .count()
    }
}

#[tokio::test]
async fn images_are_pulled_from_a_registry_as_the_pull_policy_says() {
    let Some(d) = docker().await else { return };
    if !common::deploy::tool("docker-registry", "TRACKSIDE_REQUIRE_DOCKER") {
        return;
    }
    image(&d, IMAGE_A).await;
    image(&d, IMAGE_B).await;
    let reg = Registry::start().await;
    let repo = format!("{}/trackside-pull", reg.addr);
    let tagged = format!("{repo}:1");
    let tag = async |source: &str| {
        let opts = bollard::query_parameters::TagImageOptions {
            repo: Some(repo.clone()),
            tag: Some("1".into()),
        };
        d.client().tag_image(source, Some(opts)).await.expect("tag");
    };
    let untag = async || {
        let none = None::<bollard::query_parameters::RemoveImageOptions>;
        let _ = d.client().remove_image(&tagged, none, None).await;
    };
    // `repo:1` in the registry becomes `source`.
    let publish = async |source: &str| {
        tag(source).await;
        let opts = bollard::query_parameters::PushImageOptions {
            tag: Some("1".into()),
            platform: None,
        };
        let mut push = d.client().push_image(&repo, Some(opts), None);
        while let Some(item) = futures_util::StreamExt::next(&mut push).await {
            let info = item.expect("push");
            assert!(info.error_detail.is_none(), "push: {info:?}");
        }
    };
    // A job on `repo:1` with a pull policy; which image it ran.
    let ran = async |pull: &str| -> String {
        let mut s = setup(&format!(
            "name: t\njobs:\n  pulled:\n    image: {tagged}\n    pull: {pull}\n    steps: [{{script: cat /image-name}}]\n"
        ));
        with_docker(&mut s, &d);
        let mut r = start(&mut s).await;
        let sum = r.finished().await;
        assert_eq!(sum.result, RunResult::Passed, "pull: {pull}: {:?}", r.lines("pulled"));
        r.lines("pulled").join("\n")
    };
    let pulls = || reg.manifest_requests("trackside-pull", "1");

    publish(IMAGE_A).await;
    untag().await;
    // Missing here: `if-not-present` pulls it.
    assert!(ran("if-not-present").await.contains(IMAGE_A));
    common::deploy::until("the registry to serve the manifest", || pulls() >= 1).await;
    let after_first = pulls();
    // Present: `if-not-present` and `never` do not ask the registry...
    ran("if-not-present").await;
    ran("never").await;
    assert_eq!(pulls(), after_first, "no pull for a present image");
    // ...`always` does.
    ran("always").await;
    common::deploy::until("a pull although present", || pulls() > after_first).await;
    // The tag moves in the registry: only `always` runs the new image.
    publish(IMAGE_B).await;
    tag(IMAGE_A).await;
    assert!(ran("if-not-present").await.contains(IMAGE_A), "the local one");
    assert!(ran("always").await.contains(IMAGE_B), "the moved tag");
    untag().await;
}

/// A registry that wants a login: trackside pulls with what `docker login`
/// left in the Docker configuration, GitLab's `DOCKER_AUTH_CONFIG` and
/// GitHub's `credentials:`, and without a login says which one it lacks.
#[tokio::test]
async fn private_images_are_pulled_with_the_login_the_job_or_the_machine_has() {
    use base64::Engine;
    use trackside::exec::docker::auth::Sources;
    let Some(d) = docker().await else { return };
    if !common::deploy::tool("docker-registry", "TRACKSIDE_REQUIRE_DOCKER") {
        return;
    }
    image(&d, IMAGE_A).await;
    let reg = Registry::with_login().await;
    let repo = format!("{}/trackside-private", reg.addr);
    let tagged = format!("{repo}:1");
    let login = bollard::auth::DockerCredentials {
        username: Some(REGISTRY_USER.into()),
        password: Some(REGISTRY_PASSWORD.into()),
        serveraddress: Some(reg.addr.clone()),
        ..Default::default()
    };
    let opts = bollard::query_parameters::TagImageOptions {
        repo: Some(repo.clone()),
        tag: Some("1".into()),
    };
    d.client().tag_image(IMAGE_A, Some(opts)).await.expect("tag");
    let push_opts = bollard::query_parameters::PushImageOptions {
        tag: Some("1".into()),
        platform: None,
    };
    let mut push = d.client().push_image(&repo, Some(push_opts), Some(login));
    while let Some(item) = futures_util::StreamExt::next(&mut push).await {
        let info = item.expect("push");
        assert!(info.error_detail.is_none(), "push: {info:?}");
    }
    let untag = async || {
        let none = None::<bollard::query_parameters::RemoveImageOptions>;
        let _ = d.client().remove_image(&tagged, none, None).await;
        assert!(d.client().inspect_image(&tagged).await.is_err(), "{tagged} is gone");
    };
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{REGISTRY_USER}:{REGISTRY_PASSWORD}"));
    let auth_config = format!(r#"{{"auths": {{"{}": {{"auth": "{auth}"}}}}}}"#, reg.addr);
    // Runs `s` with logins from `sources` only; its result and `job`'s lines.
    let run = async |mut s: Setup, sources: Sources, job: &str| -> (RunResult, String) {
        with_docker(&mut s, &d.clone().with_logins(sources));
        let mut r = start(&mut s).await;
        let sum = r.finished().await;
        let mut text = r.lines(job).join("\n");
        for j in &sum.jobs {
            text.push_str(&format!("\n{j:?}"));
        }
        (sum.result, text)
    };
    let native = format!("name: t\njobs:\n  pulled:\n    image: {tagged}\n    steps: [{{script: cat /image-name}}]\n");

    untag().await;
    let (result, text) = run(setup(&native), Sources::default(), "pulled").await;
    assert_eq!(result, RunResult::Failed, "{text}");
    assert!(
        text.contains("pulled without a login") && text.contains(&format!("docker login {}", reg.addr)),
        "says which login is missing: {text}"
    );

    // `docker login` left it in the configuration (a private file).
    let config = tempfile::tempdir().expect("tempdir");
    let file = config.path().join("config.json");
    std::fs::write(&file, &auth_config).expect("config");
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod");
    let from_file = Sources {
        config_dir: Some(config.path().to_path_buf()),
        ..Default::default()
    };
    let (result, text) = run(setup(&native), from_file, "pulled").await;
    assert_eq!(result, RunResult::Passed, "{text}");
    assert!(text.contains(IMAGE_A), "{text}");

    // GitLab: the project's DOCKER_AUTH_CONFIG variable.
    untag().await;
    let opts = trackside::pipeline::LoadOptions {
        dialect: Some(trackside::pipeline::Dialect::Gitlab),
        project_vars: vec![("DOCKER_AUTH_CONFIG".into(), auth_config.clone())],
        ..Default::default()
    };
    let gitlab = setup_with(
        &format!("pulled:\n  image: {tagged}\n  script: [cat /image-name]\n"),
        &opts,
    );
    let (result, text) = run(gitlab, Sources::default(), "pulled").await;
    assert_eq!(result, RunResult::Passed, "{text}");
    assert!(text.contains(IMAGE_A), "{text}");

    // GitHub: `credentials:` reading a secret as the job starts.
    untag().await;
    let mut gh = github(&format!(
        "on: push\njobs:\n  pulled:\n    runs-on: ubuntu-latest\n    container:\n      image: {tagged}\n      credentials:\n        username: {REGISTRY_USER}\n        password: ${{{{ secrets.REGISTRY_PASSWORD }}}}\n    steps:\n      - run: cat /image-name\n"
    ));
    gh.cfg.secrets = vec![("REGISTRY_PASSWORD".into(), REGISTRY_PASSWORD.into())];
    let (result, text) = run(gh, Sources::default(), "pulled").await;
    assert_eq!(result, RunResult::Passed, "{text}");
    assert!(text.contains(IMAGE_A) && !text.contains(REGISTRY_PASSWORD), "{text}");
    untag().await;
}

/// Runs `openssl ARGS` in `dir`.
fn openssl(dir: &std::path::Path, args: &str) {
    let out = std::process::Command::new("openssl")
        .args(args.split_whitespace())
        .current_dir(dir)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, as
/// DOCKER_CERT_PATH wants them (ca.pem, cert.pem, key.pem), in `dir`.
fn certificates(dir: &std::path::Path) {
    openssl(
        dir,
        "req -x509 -newkey rsa:2048 -nodes -keyout ca-key.pem -out ca.pem -days 2 -subj /CN=trackside-test-ca",
    );
    openssl(
        dir,
        "req -newkey rsa:2048 -nodes -keyout server-key.pem -out server.csr -subj /CN=127.0.0.1",
    );
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .expect("ext");
    openssl(
        dir,
        "x509 -req -in server.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -out server.pem -days 2 -extfile server.ext",
    );
    openssl(
        dir,
        "req -newkey rsa:2048 -nodes -keyout key.pem -out client.csr -subj /CN=trackside-client",
    );
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").expect("ext");
    openssl(
        dir,
        "x509 -req -in client.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -out cert.pem -days 2 -extfile client.ext",
    );
}

/// DOCKER_HOST=tcp://... with DOCKER_TLS_VERIFY and DOCKER_CERT_PATH: the
/// real binary reaches the daemon through a TLS endpoint that requires a
/// client certificate (HAProxy terminating TLS in front of the daemon's
/// socket), and a certificate it does not trust gets a clear error.
#[tokio::test]
async fn a_tls_docker_host_is_reached_with_client_certificates() {
    let Some(d) = docker().await else { return };
    let Some(socket) = trackside::exec::docker::daemon_address()
        .strip_prefix("unix://")
        .map(str::to_string)
    else {
        eprintln!("SKIPPED: the TLS test fronts a daemon on a Unix socket");
        return;
    };
    if !common::deploy::tool("haproxy", "TRACKSIDE_REQUIRE_HAPROXY")
        || !common::deploy::tool("openssl", "TRACKSIDE_REQUIRE_DOCKER")
    {
        return;
    }
    image(&d, IMAGE_A).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path().join("certs");
    std::fs::create_dir(&certs).expect("mkdir");
    certificates(&certs);
    let combined = [
        std::fs::read_to_string(certs.join("server.pem")).expect("cert"),
        std::fs::read_to_string(certs.join("server-key.pem")).expect("key"),
    ]
    .concat();
    std::fs::write(certs.join("server-combined.pem"), combined).expect("pem");
    let port = common::deploy::free_port();
    let cfg = dir.path().join("tls.cfg");
    std::fs::write(
        &cfg,
        format!(
            "defaults\n    mode tcp\n    timeout connect 2s\n    timeout client 60s\n    timeout server 60s\n\
             frontend tls\n    bind 127.0.0.1:{port} ssl crt {c}/server-combined.pem ca-file {c}/ca.pem verify required\n    default_backend daemon\n\
             backend daemon\n    server d {socket}\n",
            c = certs.display()
        ),
    )
    .expect("cfg");
    let _proxy = tokio::process::Command::new("haproxy")
        .arg("-f")
        .arg(&cfg)
        .arg("-db")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("haproxy");
    common::deploy::until("the TLS endpoint", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    })
    .await;
    let file = dir.path().join("tls.yml");
    std::fs::write(
        &file,
        format!("name: tls\njobs:\n  inside:\n    image: {IMAGE_A}\n    pull: never\n    steps: [{{script: cat /image-name}}]\n"),
    )
    .expect("pipeline");
    let run = |cert_path: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_trackside"))
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .args(["run", "--headless"])
            .arg(&file)
            .env("DOCKER_HOST", format!("tcp://127.0.0.1:{port}"))
            .env("DOCKER_TLS_VERIFY", "1")
            .env("DOCKER_CERT_PATH", cert_path)
            .output()
            .expect("trackside")
    };
    let ok = run(&certs);
    let out = String::from_utf8_lossy(&ok.stdout);
    assert!(ok.status.success(), "{out}\n{}", String::from_utf8_lossy(&ok.stderr));
    assert!(out.contains(IMAGE_A), "the job ran in its image over TLS: {out}");
    // A client certificate the endpoint does not trust.
    let stranger = dir.path().join("stranger");
    std::fs::create_dir(&stranger).expect("mkdir");
    openssl(
        &stranger,
        "req -x509 -newkey rsa:2048 -nodes -keyout key.pem -out cert.pem -days 2 -subj /CN=stranger",
    );
    std::fs::copy(certs.join("ca.pem"), stranger.join("ca.pem")).expect("ca");
    let refused = run(&stranger);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{err}");
    assert!(
        err.contains("cannot reach the Docker daemon at tcp://127.0.0.1:") && err.contains("check DOCKER_CERT_PATH"),
        "{err}"
    );
}

#[tokio::test]
async fn secrets_never_appear_in_docker_inspect() {
    let Some(d) = docker().await else { return };
    image(&d, IMAGE_A).await;
    let secret = "s3cret-in-container-991";
    let mut s = setup_with(
        &format!(
            "name: t\njobs:\n  leak:\n    image: {IMAGE_A}\n    pull: never\n    environment:\n      AUTH: \"Bearer $API_TOKEN\"\n    steps:\n      - script: ['echo \"tok=$API_TOKEN auth=$AUTH\"', 'echo ready', 'sleep 300']\n"
        ),
        &trackside::pipeline::LoadOptions {
            secret_names: vec!["API_TOKEN".into()],
            ..Default::default()
        },
    );
    s.cfg.secrets = vec![("API_TOKEN".into(), secret.into())];
    with_docker(&mut s, &d);
    let mut r = start(&mut s).await;
    r.until(
        "ready",
        |k| matches!(k, EventKind::LogLine { line, .. } if line == "ready"),
    )
    .await;
    assert_eq!(
        r.lines("leak")[0],
        "tok=[MASKED] auth=Bearer [MASKED]",
        "the job sees its secret"
    );
    let filters = HashMap::from([("label".to_string(), vec![format!("{LABEL_RUN}={}", r.handle.run_id())])]);
    let list = d
        .client()
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        }))
        .await
        .expect("list");
    let id = list[0].id.clone().expect("id");
    let inspect = d
        .client()
        .inspect_container(&id, None::<bollard::query_parameters::InspectContainerOptions>)
        .await
        .expect("inspect");
    let text = serde_json::to_string(&inspect).expect("json");
    assert!(!text.contains(secret), "secret visible in docker inspect");
    r.handle.cancel_all().await.expect("cancel");
    r.finished().await;
}

#[test]
fn no_daemon_is_a_clear_error_before_any_job_starts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let marker = dir.path().join("host-job-ran");
    std::fs::write(
        dir.path().join("p.yml"),
        format!(
            "name: t\njobs:\n  first:\n    steps: [{{script: 'touch {}'}}]\n  boxed:\n    image: busybox\n    steps: [{{script: echo hi}}]\n",
            marker.display()
        ),
    )
    .expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_trackside"))
        .args(["run", "p.yml", "--state-dir"])
        .arg(dir.path().join("state"))
        .current_dir(dir.path())
        .env("DOCKER_HOST", "unix:///nonexistent/trackside-test.sock")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot reach the Docker daemon at unix:///nonexistent/trackside-test.sock")
            && err.contains("start dockerd or use --executor shell"),
        "{err}"
    );
    assert!(!marker.exists(), "no job started");
}

#[tokio::test]
async fn leftovers_of_a_killed_trackside_are_reaped_at_the_next_start() {
    let Some(d) = docker().await else { return };
    image(&d, IMAGE_A).await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("p.yml"),
        format!("name: t\njobs:\n  long:\n    image: {IMAGE_A}\n    pull: never\n    steps: [{{script: 'echo up; sleep 300'}}]\n"),
    )
    .expect("write");
    let bin = env!("CARGO_BIN_EXE_trackside");
    let mut child = std::process::Command::new(bin)
        .args(["run", "p.yml", "--headless", "--state-dir"])
        .arg(dir.path().join("state"))
        .current_dir(dir.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
    let mut run_id = String::new();
    for line in lines.map_while(Result::ok) {
        if let Some(rest) = line.strip_prefix(":: run ") {
            run_id = rest.split_whitespace().next().unwrap_or_default().to_string();
        }
        if line.contains("long > up") {
            break;
        }
    }
    assert!(!run_id.is_empty());
    child.kill().expect("SIGKILL trackside");
    let _ = child.wait();
    assert_eq!(
        labelled(&d, &run_id).await,
        1,
        "a killed trackside leaves its container"
    );
    // The next trackside that needs containers clears it.
    std::fs::write(
        dir.path().join("q.yml"),
        format!("name: q\njobs:\n  quick:\n    image: {IMAGE_A}\n    pull: never\n    steps: [{{script: echo ok}}]\n"),
    )
    .expect("write");
    let out = std::process::Command::new(bin)
        .args(["run", "q.yml", "--headless", "--state-dir"])
        .arg(dir.path().join("state"))
        .current_dir(dir.path())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(String::from_utf8_lossy(&out.stderr).contains("removed 1 container(s) left by a crashed trackside"));
    assert_eq!(labelled(&d, &run_id).await, 0);
}

async fn networks_of(d: &DockerExecutor, run_id: &str) -> usize {
    let filters = HashMap::from([("label".to_string(), vec![format!("{LABEL_RUN}={run_id}")])]);
    d.client()
        .list_networks(Some(bollard::query_parameters::ListNetworksOptions {
            filters: Some(filters),
        }))
        .await
        .map(|l| l.len())
        .unwrap_or(usize::MAX)
}

#[tokio::test]
async fn a_job_reaches_its_service_by_name_once_it_is_ready() {
    let Some(d) = docker().await else { return };
    image(&d, IMAGE_A).await;
    let mut s = setup(&format!(
        "name: t\njobs:\n  api-test:\n    image: {IMAGE_A}\n    pull: never\n    services:\n      - name: web\n        image: {IMAGE_A}\n        port: 8080\n        environment: {{GREETING: hello-from-service}}\n        command: [sh, -c, 'echo service starting; sleep 1; mkdir -p /www; echo $GREETING > /www/index.html; exec httpd -f -v -p 8080 -h /www']\n    steps:\n      - script: ['wget -q -O - http://web:8080/index.html']\n"
    ));
    with_docker(&mut s, &d);
    let mut r = start(&mut s).await;
    let sum = r.finished().await;
    assert_eq!(sum.result, RunResult::Passed, "{:?}", r.lines("api-test"));
    let lines = r.lines("api-test");
    assert!(lines.contains(&"hello-from-service".to_string()), "{lines:?}");
    assert!(
        lines.iter().any(|l| l == "service web | service starting"),
        "service logs are in the job log: {lines:?}"
    );
    let run_id = r.handle.run_id().to_string();
    r.handle.shutdown().await;
    assert_eq!(labelled(&d, &run_id).await, 0, "service containers are removed");
    assert_eq!(networks_of(&d, &run_id).await, 0, "the run's network is removed");
}

#[tokio::test]
async fn a_service_that_never_becomes_ready_fails_the_job_as_infra() {
    let Some(d) = docker().await else { return };
    image(&d, IMAGE_A).await;
    let mut s = setup(&format!(
        "name: t\njobs:\n  needs-db:\n    image: {IMAGE_A}\n    pull: never\n    services:\n      - name: db\n        image: {IMAGE_A}\n        port: 5432\n        ready_timeout: 2\n        command: [sh, -c, 'echo db is warming up forever; sleep 300']\n    steps:\n      - script: [echo never-runs]\n"
    ));
    with_docker(&mut s, &d);
    let mut r = start(&mut s).await;
    let sum = r.finished().await;
    let j = job(&sum, "needs-db");
    assert_eq!(j.failure_class, Some(FailureClass::Infra));
    let reason = j.reason.clone().unwrap_or_default();
    assert!(
        reason.contains("was not ready within 2s") && reason.contains("port 5432"),
        "{reason}"
    );
    assert!(
        reason.contains("db is warming up forever"),
        "the service's last lines are in the message: {reason}"
    );
    assert!(!r.lines("needs-db").contains(&"never-runs".to_string()));
    let run_id = r.handle.run_id().to_string();
    r.handle.shutdown().await;
    assert_eq!(labelled(&d, &run_id).await, 0);
    assert!(
        !r.handle.run_dir().join("work/needs-db.1").exists(),
        "its workspace went with the job"
    );
}

/// Writes a pipeline whose container job fails after leaving evidence in its
/// filesystem and workspace; returns the project directory.
fn failing_project(dir: &std::path::Path) -> std::path::PathBuf {
    let project = dir.join("project");
    std::fs::create_dir_all(&project).expect("mkdir");
    std::fs::write(project.join("README"), "project file\n").expect("write");
    std::fs::write(
        project.join("p.yml"),
        format!(
            "name: t\njobs:\n  broken:\n    image: {IMAGE_A}\n    pull: never\n    environment: {{MODE: debug}}\n    steps:\n      - script: ['echo in-container > /evidence', 'echo in-workspace > made.txt', 'exit 3']\n"
        ),
    )
    .expect("write");
    project
}

fn run_headless(project: &std::path::Path, state: &std::path::Path, extra: &[&str]) -> i32 {
    std::process::Command::new(env!("CARGO_BIN_EXE_trackside"))
        .args(["run", "p.yml", "--headless", "--state-dir"])
        .arg(state)
        .args(extra)
        .current_dir(project)
        .output()
        .expect("run")
        .status
        .code()
        .unwrap_or(-1)
}

#[tokio::test]
async fn shell_opens_in_the_kept_failed_container() {
    let Some(d) = docker().await else { return };
    image(&d, IMAGE_A).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let project = failing_project(dir.path());
    let state = dir.path().join("state");
    assert_eq!(run_headless(&project, &state, &["--keep-failed"]), 1);
    let exit_file = dir.path().join("exit");
    let command = format!(
        "{} shell last broken --state-dir {}; echo $? > {}; sleep 60",
        env!("CARGO_BIN_EXE_trackside"),
        state.display(),
        exit_file.display()
    );
    let Some(t) = common::tmux::Tmux::start("keptshell", &project, &command) else {
        return;
    };
    t.wait_for(&["the failed container", "/workspace #"]);
    // Another trackside starting meanwhile reaps what crashed ones left:
    // the live shell (a snapshot carrying the failed container's labels)
    // is not among them.
    d.reap_orphans().await;
    t.type_until(
        "cat /evidence made.txt; echo mode=$MODE",
        &["in-container", "in-workspace", "mode=debug"],
    );
    t.keys(&["exit 4", "Enter"]);
    assert_eq!(common::tmux::wait_file(&exit_file).trim(), "4", "the shell's exit code");
    drop(t);
    remove_kept_by_gc(&d, &state).await;
}

/// `trackside gc` removes what `--keep-failed` kept for the runs it drops
/// (tests must not leave containers behind).
async fn remove_kept_by_gc(d: &DockerExecutor, state: &std::path::Path) {
    let runs: Vec<String> = std::fs::read_dir(state.join("runs"))
        .expect("runs")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let kept = || async {
        let mut n = 0;
        for run in &runs {
            n += usize::from(d.kept_container(run, "broken").await.is_some());
        }
        n
    };
    assert!(kept().await > 0, "the run kept its failed container");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_trackside"))
        .args(["gc", "--keep-last", "0", "--state-dir"])
        .arg(state)
        .output()
        .expect("gc");
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && said.contains("container(s) kept by --keep-failed"),
        "{said}"
    );
    assert_eq!(kept().await, 0, "kept containers left behind");
}

#[tokio::test]
async fn shell_without_a_kept_container_uses_a_fresh_one_of_the_image() {
    let Some(d) = docker().await else { return };
    image(&d, IMAGE_A).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let project = failing_project(dir.path());
    let state = dir.path().join("state");
    assert_eq!(run_headless(&project, &state, &[]), 1);
    let command = format!(
        "{} shell last broken --state-dir {}; sleep 60",
        env!("CARGO_BIN_EXE_trackside"),
        state.display()
    );
    let Some(t) = common::tmux::Tmux::start("freshshell", &project, &command) else {
        return;
    };
    t.wait_for(&["a fresh `trackside-test-busybox:a` container", "/workspace #"]);
    t.type_until(
        "cat /image-name README; ls /evidence",
        &[IMAGE_A, "project file", "No such file"],
    );
    t.keys(&["exit", "Enter"]);
}

#[tokio::test]
async fn the_ui_suspends_for_a_shell_and_comes_back() {
    let Some(d) = docker().await else { return };
    image(&d, IMAGE_A).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let project = failing_project(dir.path());
    let command = format!(
        "{} run p.yml --keep-failed --state-dir {}; sleep 60",
        env!("CARGO_BIN_EXE_trackside"),
        dir.path().join("state").display()
    );
    let Some(t) = common::tmux::Tmux::start("uishell", &project, &command) else {
        return;
    };
    t.wait_for(&["FAILED", "s shell"]);
    t.keys(&["s"]);
    t.wait_for(&["/workspace #"]);
    t.type_until("cat /evidence", &["in-container"]);
    t.keys(&["exit", "Enter"]);
    t.wait_for(&["shell in `broken` ended", "jobs (DAG)"]);
    t.keys(&["q"]);
    drop(t);
    remove_kept_by_gc(&d, &dir.path().join("state")).await;
}

#[tokio::test]
async fn a_healthcheck_decides_when_a_service_is_ready() {
    let Some(d) = docker().await else { return };
    let tag = "trackside-test-busybox:health";
    common::image::busybox_image_with(
        d.client(),
        tag,
        "HEALTHCHECK --interval=1s --timeout=1s CMD test -f /ready\n",
    )
    .await;
    let mut s = setup(&format!(
        "name: t\njobs:\n  uses-it:\n    image: {IMAGE_A}\n    pull: never\n    services:\n      - name: slow\n        image: {tag}\n        ready_timeout: 30\n        command: [sh, -c, 'echo preparing; sleep 2; echo prepared; touch /ready; sleep 300']\n    steps:\n      - script: [echo job-runs]\n"
    ));
    image(&d, IMAGE_A).await;
    with_docker(&mut s, &d);
    let mut r = start(&mut s).await;
    let sum = r.finished().await;
    assert_eq!(sum.result, RunResult::Passed, "{:?}", r.lines("uses-it"));
    let lines = r.lines("uses-it");
    let prepared = lines
        .iter()
        .position(|l| l == "service slow | prepared")
        .expect("service output");
    let ran = lines.iter().position(|l| l == "job-runs").expect("job output");
    assert!(prepared < ran, "the job waited for the healthcheck: {lines:?}");
}

#[tokio::test]
async fn user_entrypoint_and_read_only_rootfs_are_applied() {
    let Some(d) = docker().await else { return };
    image(&d, IMAGE_A).await;
    let mut s = setup(&format!(
        "name: t\njobs:\n  locked:\n    image: {IMAGE_A}\n    pull: never\n    user: '1234:1234'\n    entrypoint: []\n    read_only_rootfs: true\n    cap_drop: [ALL]\n    steps:\n      - script: ['echo uid=$(id -u)', 'touch /x 2>/dev/null || echo rootfs-read-only', 'touch /workspace/ok 2>/dev/null || echo workspace-needs-uid']\n"
    ));
    with_docker(&mut s, &d);
    let mut r = start(&mut s).await;
    let sum = r.finished().await;
    assert_eq!(sum.result, RunResult::Passed, "{:?}", r.lines("locked"));
    let lines = r.lines("locked");
    assert!(lines.contains(&"uid=1234".to_string()), "{lines:?}");
    assert!(lines.contains(&"rootfs-read-only".to_string()), "{lines:?}");
}

#[tokio::test]
async fn a_tag_moved_to_another_image_misses_the_cache() {
    let Some(d) = docker().await else { return };
    const TAG: &str = "trackside-test-busybox:cache-moves";
    let rebuild = |content: &'static str| {
        let client = d.client().clone();
        async move {
            let _ = client
                .remove_image(
                    TAG,
                    Some(bollard::query_parameters::RemoveImageOptions {
                        force: true,
                        ..Default::default()
                    }),
                    None,
                )
                .await;
            common::image::busybox_image_with(&client, TAG, &format!("RUN echo {content} > /v\n")).await;
        }
    };
    rebuild("one").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let project = dir.path().join("project");
    std::fs::create_dir_all(&project).expect("mkdir");
    std::fs::write(project.join("in.txt"), "input\n").expect("write");
    std::fs::write(
        project.join("p.yml"),
        format!(
            "name: t\njobs:\n  read:\n    image: {TAG}\n    pull: never\n    cache: {{inputs: [in.txt]}}\n    steps:\n      - script: ['cat /v in.txt']\n"
        ),
    )
    .expect("write");
    let state = dir.path().join("state");
    let why = || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_trackside"))
            .args(["cache", "why", "last", "read", "--state-dir"])
            .arg(&state)
            .output()
            .expect("cache why");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(run_headless(&project, &state, &[]), 0);
    assert_eq!(run_headless(&project, &state, &[]), 0);
    assert!(why().contains("HIT"), "same image, same inputs: {}", why());
    rebuild("two").await;
    assert_eq!(run_headless(&project, &state, &[]), 0);
    let w = why();
    assert!(
        w.contains("MISS") && w.contains(&format!("changed  image {TAG}")),
        "the tag now names another image: {w}"
    );
}

/// An image serving `/healthz` and `/` (naming its version) with busybox
/// httpd on `$PORT`, which stops at once on SIGTERM as a real service
/// would (a process 1 without a handler ignores it, and each stop would
/// take the whole grace period).
async fn web_image(d: &DockerExecutor, version: &str) -> String {
    let tag = format!("trackside-test-web:{version}");
    common::image::busybox_image_with(
        d.client(),
        &tag,
        &format!(
            "RUN mkdir -p /www && echo ok > /www/healthz && echo {version} > /www/index.html\n\
             ENTRYPOINT [\"sh\", \"-c\", \"echo {version} up; trap 'exit 0' TERM; httpd -f -p $PORT -h /www & wait\"]\n"
        ),
    )
    .await;
    tag
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_target_is_deployed_as_a_canary_and_its_replicas_removed_after() {
    let Some(d) = docker().await else { return };
    let state = tempfile::tempdir().expect("tempdir");
    let yaml = |version: &str, image: &str| {
        format!(
            "name: boxed\njobs:\n  web:\n    deploy:\n      service: web\n      listen: 127.0.0.1:0\n      version: {version}\n      image: {image}\n      port: 8080\n      replicas: 2\n      keep_serving: false\n      health: {{http: /healthz, interval: 0.1, success_threshold: 2}}\n      traffic: {{rps: 50}}\n      abort_delay: 0\n      strategy: {{canary: {{steps: [{{set_weight: 50}}, {{pause: {{duration: 1}}}}]}}}}\n"
        )
    };
    let (v1, v2) = (web_image(&d, "v1").await, web_image(&d, "v2").await);
    let (first, r) = common::deploy::deploy(state.path(), &yaml("v1", &v1)).await;
    assert_eq!(first.result, RunResult::Passed, "{:?}", r.lines("web"));
    let (sum, r) = common::deploy::deploy(state.path(), &yaml("v2", &v2)).await;
    let lines = r.lines("web");
    assert_eq!(sum.result, RunResult::Passed, "{lines:?}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("started canary v2#2: container trackside-web-v2-2-")
                && l.contains("published on 127.0.0.1:")),
        "{lines:?}"
    );
    let last = common::deploy::last_status(&r);
    assert!(last.canary.requests > 0 && last.canary.errors == 0, "{last:?}");
    let rev = trackside::deploy::rollout::load_revision(state.path(), "web").expect("revision");
    assert_eq!((rev.image.as_deref(), rev.port), (Some(v2.as_str()), Some(8080)));
    let tag = format!("deploy:{}:web", state.path().display());
    let left = d
        .client()
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(HashMap::from([(
                "label".to_string(),
                vec![format!("{}={tag}", trackside::exec::docker::LABEL_DEPLOY)],
            )])),
            ..Default::default()
        }))
        .await
        .expect("list");
    assert!(left.is_empty(), "every replica container is removed: {left:?}");
}

/// The containers of the live service `web` of `state` (of `revision`,
/// when given).
async fn live_containers(
    d: &DockerExecutor,
    state: &std::path::Path,
    revision: Option<&str>,
) -> Vec<bollard::models::ContainerSummary> {
    use trackside::exec::docker::service::{LABEL_REVISION, LABEL_SERVICE};
    let mut labels = vec![format!("{LABEL_SERVICE}={}:web", state.display())];
    labels.extend(revision.map(|r| format!("{LABEL_REVISION}={r}")));
    d.client()
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(HashMap::from([("label".to_string(), labels)])),
            ..Default::default()
        }))
        .await
        .expect("list")
}

/// `GET /` through a router, HTTP/1.0: the body, trimmed, if 200.
fn http_get(addr: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(10))).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: web\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    (head.split_whitespace().nth(1) == Some("200")).then(|| body.trim().to_string())
}

/// Stops the live service `web` of a test's state directory, even when the
/// test failed: its containers would otherwise outlive the test.
struct StopService(std::path::PathBuf);

impl Drop for StopService {
    fn drop(&mut self) {
        let _ = std::process::Command::new(env!("CARGO_BIN_EXE_trackside"))
            .arg("--state-dir")
            .arg(&self.0)
            .args(["service", "web", "stop"])
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_container_service_keeps_serving_is_adopted_restarted_and_rolled_back() {
    use trackside::deploy::service;
    let Some(d) = docker().await else { return };
    let state = tempfile::tempdir().expect("tempdir");
    let s = state.path();
    let _stop = StopService(s.to_path_buf());
    let yaml = |version: &str, image: &str| {
        format!(
            "name: live\njobs:\n  web:\n    deploy:\n      service: web\n      listen: 127.0.0.1:0\n      version: {version}\n      image: {image}\n      port: 8080\n      replicas: 2\n      scale_down_delay: 1\n      health: {{http: /healthz, interval: 0.1, success_threshold: 2}}\n      traffic: {{rps: 20}}\n      abort_delay: 0\n      strategy: {{canary: {{steps: [{{set_weight: 50}}, {{pause: {{duration: 1}}}}]}}}}\n"
        )
    };
    let (v1, v2) = (web_image(&d, "v1").await, web_image(&d, "v2").await);

    // The first deploy: v1 keeps serving after the run, from its containers.
    let (first, r) = common::deploy::deploy(s, &yaml("v1", &v1)).await;
    assert_eq!(first.result, RunResult::Passed, "{:?}", r.lines("web"));
    let listen = service::saved(s, "web").expect("a live service").listen;
    assert_eq!(http_get(&listen).as_deref(), Some("v1"));
    let v1s = live_containers(&d, s, Some("v1")).await;
    assert_eq!(v1s.len(), 2, "{v1s:?}");
    // Their output goes to the service's replica logs.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_trackside"))
            .arg("--state-dir")
            .arg(s)
            .args(["service", "web", "logs"])
            .output()
            .expect("logs");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        if text.matches("v1 up").count() == 2 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "each replica's output in its log: {text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let v1_ids: Vec<String> = v1s.iter().filter_map(|c| c.id.clone()).collect();
    for id in &v1_ids {
        let policy = d
            .client()
            .inspect_container(id, None::<bollard::query_parameters::InspectContainerOptions>)
            .await
            .expect("inspect")
            .host_config
            .and_then(|h| h.restart_policy)
            .and_then(|p| p.name);
        assert_eq!(policy, Some(bollard::models::RestartPolicyNameEnum::UNLESS_STOPPED));
    }

    // From here to the end a client keeps asking through the router: no
    // request may fail through the promotion, a replica's death and the
    // rollback.
    let (stop_load, sent, failed) = (
        Arc::new(std::sync::atomic::AtomicBool::new(false)),
        Arc::new(std::sync::atomic::AtomicU64::new(0)),
        Arc::new(std::sync::Mutex::new(Vec::<String>::new())),
    );
    let load = std::thread::spawn({
        let (stop_load, sent, failed, listen) = (stop_load.clone(), sent.clone(), failed.clone(), listen.clone());
        move || {
            use std::sync::atomic::Ordering::Relaxed;
            while !stop_load.load(Relaxed) {
                let n = sent.fetch_add(1, Relaxed);
                match http_get(&listen) {
                    Some(v) if v == "v1" || v == "v2" => {}
                    other => failed.lock().expect("lock").push(format!("request {n}: {other:?}")),
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
    });

    // v2 as a canary next to the running v1: adopted, no second v1 started.
    let (sum, r) = common::deploy::deploy(s, &yaml("v2", &v2)).await;
    let lines = r.lines("web");
    assert_eq!(sum.result, RunResult::Passed, "{lines:?}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("adopting the 2 running replica(s) of v1 (no copy started)")),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("started canary v2#1.") && l.contains(&format!("as a container of {v2}"))),
        "{lines:?}"
    );
    let v1_now = live_containers(&d, s, Some("v1")).await;
    assert!(
        v1_now
            .iter()
            .all(|c| c.id.as_ref().is_some_and(|id| v1_ids.contains(id))),
        "only the adopted v1 containers: {v1_now:?}"
    );
    assert_eq!(http_get(&listen).as_deref(), Some("v2"));
    // The replaced revision's containers go after the scale-down delay.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !live_containers(&d, s, Some("v1")).await.is_empty() {
        assert!(std::time::Instant::now() < deadline, "v1's containers were not removed");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(live_containers(&d, s, Some("v2")).await.len(), 2);

    // A replica killed: it runs again (the daemon's restart policy, or the
    // service process), and the service goes on serving.
    let victim = service::saved(s, "web").expect("state").replicas[0].clone();
    let id = victim.container_id.clone().expect("a container replica");
    d.client()
        .kill_container(
            &id,
            Some(bollard::query_parameters::KillContainerOptions {
                signal: "SIGKILL".into(),
            }),
        )
        .await
        .expect("kill");
    common::deploy::until("the killed replica running again", || {
        service::saved(s, "web").is_some_and(|st| {
            st.replicas
                .iter()
                .any(|r| r.spec.name == victim.spec.name && r.restarts >= 1 && r.is_up())
        })
    })
    .await;
    assert_eq!(http_get(&listen).as_deref(), Some("v2"));

    // Rollback: v1's containers are gone, so it is started, checked, switched to.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_trackside"))
        .arg("--state-dir")
        .arg(s)
        .args(["rollback", "web"])
        .output()
        .expect("rollback");
    let said = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("started 2 replica(s) of it, healthy, then switched"),
        "{said}"
    );
    assert_eq!(http_get(&listen).as_deref(), Some("v1"));
    assert_eq!(live_containers(&d, s, Some("v1")).await.len(), 2);
    stop_load.store(true, std::sync::atomic::Ordering::Relaxed);
    load.join().expect("load");
    let failed = failed.lock().expect("lock").clone();
    let sent = sent.load(std::sync::atomic::Ordering::Relaxed);
    assert!(sent > 100, "the load ran: {sent} requests");
    assert!(
        failed.is_empty(),
        "{} of {sent} requests failed: {failed:?}",
        failed.len()
    );

    // Stopped: nothing of the service is left running.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_trackside"))
        .arg("--state-dir")
        .arg(s)
        .args(["service", "web", "stop"])
        .output()
        .expect("stop");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(live_containers(&d, s, None).await.is_empty());
}

#[tokio::test]
async fn a_gitlab_job_runs_in_its_image_and_reaches_its_service_by_alias() {
    let Some(d) = docker().await else { return };
    image(&d, IMAGE_A).await;
    // A file variable (the project's settings): mounted, its path in the variable.
    let opts = trackside::pipeline::LoadOptions {
        dialect: Some(trackside::pipeline::Dialect::Gitlab),
        project_vars: vec![("CERT".into(), "cert-in-a-file".into())],
        project_file_vars: vec!["CERT".into()],
        ..Default::default()
    };
    let mut s = setup_with(
        &format!(
            "api-test:\n  image: {{name: {IMAGE_A}, pull_policy: never}}\n  services:\n    - name: {IMAGE_A}\n      alias: web,www\n      variables: {{GREETING: hello-from-gitlab-service}}\n      command: [sh, -c, 'mkdir -p /www; echo $GREETING > /www/index.html; exec httpd -f -p 8080 -h /www']\n  script:\n    - cat /image-name\n    - echo \"$CERT\"\n    - cat \"$CERT\"\n    - for i in $(seq 1 50); do wget -q -O - http://www:8080/index.html && break; sleep 0.1; done\n"
        ),
        &opts,
    );
    with_docker(&mut s, &d);
    let mut r = start(&mut s).await;
    let sum = r.finished().await;
    let lines = r.lines("api-test");
    assert_eq!(sum.result, RunResult::Passed, "{lines:?}");
    assert!(lines.iter().any(|l| l == IMAGE_A), "ran in its image: {lines:?}");
    assert!(lines.iter().any(|l| l == "hello-from-gitlab-service"), "{lines:?}");
    assert!(lines.iter().any(|l| l == "/run/trackside/files/CERT"), "{lines:?}");
    assert!(lines.iter().any(|l| l.starts_with("cert-in-a-file")), "{lines:?}");
    let run_id = r.handle.run_id().to_string();
    r.handle.shutdown().await;
    assert_eq!(labelled(&d, &run_id).await, 0, "service containers are removed");
}

fn github(yaml: &str) -> Setup {
    github_with(yaml, &[])
}

fn github_with(yaml: &str, files: &[(&str, &str)]) -> Setup {
    let opts = trackside::pipeline::LoadOptions {
        dialect: Some(trackside::pipeline::Dialect::Github),
        ci_vars: vec![("GITHUB_REPOSITORY".into(), "acme/shop".into())],
        ..Default::default()
    };
    setup_files(yaml, files, &opts)
}

#[tokio::test]
async fn a_github_container_job_runs_every_step_in_one_container() {
    let Some(d) = docker().await else { return };
    image(&d, IMAGE_A).await;
    let mut s = github(&format!(
        r#"on: push
jobs:
  inbox:
    runs-on: ubuntu-latest
    container:
      image: {IMAGE_A}
      env: {{FROM_CONTAINER: set}}
      options: -e FROM_OPTIONS=also
    steps:
      - run: echo "ws=$GITHUB_WORKSPACE pwd=$(pwd) home=$HOME from=$FROM_CONTAINER,$FROM_OPTIONS image=$(cat /image-name)"
      - run: |
          echo installed > /marker
          echo "FOO=bar" >> "$GITHUB_ENV"
          mkdir -p /opt/bin && printf '#!/bin/sh\necho tool ran\n' > /opt/bin/tool && chmod +x /opt/bin/tool
          echo /opt/bin >> "$GITHUB_PATH"
          echo made > in-workspace.txt
      - id: s
        run: |
          cat /marker; echo "foo=$FOO"; tool; cat in-workspace.txt
          echo "out=42" >> "$GITHUB_OUTPUT"
          echo "temp=${{{{ runner.temp }}}} ws=${{{{ github.workspace }}}} id=${{{{ job.container.id }}}}"
      - run: echo "got ${{{{ steps.s.outputs.out }}}}"
"#
    ));
    with_docker(&mut s, &d);
    let mut r = start(&mut s).await;
    let sum = r.finished().await;
    let lines = r.lines("inbox");
    assert_eq!(sum.result, RunResult::Passed, "{lines:?}");
    let want = format!("ws=/__w/shop/shop pwd=/__w/shop/shop home=/github/home from=set,also image={IMAGE_A}");
    assert!(lines.contains(&want), "{lines:?}");
    // What one step installs outside the workspace is there for the next.
    for l in ["installed", "foo=bar", "tool ran", "made", "got 42"] {
        assert!(lines.iter().any(|x| x == l), "{l}: {lines:?}");
    }
    let run_id = r.handle.run_id().to_string();
    assert!(
        lines
            .iter()
            .any(|l| *l == format!("temp=/__w/_temp ws=/__w/shop/shop id=trackside-{run_id}-inbox-1-job")),
        "{lines:?}"
    );
    r.handle.shutdown().await;
    assert_eq!(labelled(&d, &run_id).await, 0, "the job's container is removed");
}

#[tokio::test]
async fn github_services_are_reached_by_id_from_a_container_and_by_port_from_the_host() {
    let Some(d) = docker().await else { return };
    image(&d, IMAGE_A).await;
    let service = format!(
        "      web:\n        image: {IMAGE_A}\n        command: httpd -f -p 8080 -h /\n        ports: ['8080']\n        options: --health-cmd \"wget -q -O /dev/null http://127.0.0.1:8080/image-name\" --health-interval 1s --health-retries 30\n"
    );
    let mut s = github(&format!(
        "on: push\njobs:\n  onhost:\n    runs-on: ubuntu-latest\n    services:\n{service}    steps:\n      - run: |\n          port=${{{{ job.services.web.ports['8080'] }}}}\n          echo \"port is a number: $((port > 0))\"\n          exec 3<>/dev/tcp/127.0.0.1/$port && printf 'GET /image-name HTTP/1.0\\r\\n\\r\\n' >&3 && cat <&3 | tail -n 1\n  inbox:\n    runs-on: ubuntu-latest\n    container: {IMAGE_A}\n    services:\n{service}    steps:\n      - run: wget -q -O - http://web:8080/image-name\n"
    ));
    with_docker(&mut s, &d);
    let mut r = start(&mut s).await;
    let sum = r.finished().await;
    assert_eq!(
        sum.result,
        RunResult::Passed,
        "{:?} {:?}",
        r.lines("onhost"),
        r.lines("inbox")
    );
    assert!(
        r.lines("onhost").contains(&"port is a number: 1".to_string()),
        "{:?}",
        r.lines("onhost")
    );
    assert!(
        r.lines("onhost").contains(&IMAGE_A.to_string()),
        "{:?}",
        r.lines("onhost")
    );
    assert!(
        r.lines("inbox").contains(&IMAGE_A.to_string()),
        "{:?}",
        r.lines("inbox")
    );
    let run_id = r.handle.run_id().to_string();
    r.handle.shutdown().await;
    assert_eq!(
        labelled(&d, &run_id).await,
        0,
        "services and job containers are removed"
    );
    assert_eq!(networks_of(&d, &run_id).await, 0, "each job's network is removed");
}

#[tokio::test]
async fn a_step_timeout_in_a_job_container_stops_that_step_and_keeps_the_container() {
    let Some(d) = docker().await else { return };
    image(&d, IMAGE_A).await;
    let mut s = github(&format!(
        "on: push\njobs:\n  inbox:\n    runs-on: ubuntu-latest\n    container: {IMAGE_A}\n    steps:\n      - run: echo kept > /marker\n      - name: slow\n        timeout-minutes: 0.02\n        run: echo sleeping; sleep 60 & sleep 60; echo never\n      - if: always()\n        run: |\n          echo \"after: $(cat /marker) ${{{{ job.status }}}} $(ps | grep -v grep | grep -c 'sleep 60')\"\n"
    ));
    with_docker(&mut s, &d);
    let mut r = start(&mut s).await;
    let sum = r.finished().await;
    let lines = r.lines("inbox");
    assert_eq!(
        job(&sum, "inbox").failure_class,
        Some(FailureClass::Timeout),
        "{lines:?}"
    );
    assert!(!lines.contains(&"never".to_string()), "{lines:?}");
    // The same container, and the step's processes (the one in the
    // background too) are gone.
    assert!(lines.contains(&"after: kept failure 0".to_string()), "{lines:?}");
    let run_id = r.handle.run_id().to_string();
    r.handle.shutdown().await;
    assert_eq!(labelled(&d, &run_id).await, 0);
}

#[tokio::test]
async fn platform_runs_a_labels_jobs_in_a_container_of_its_image() {
    let Some(d) = docker().await else { return };
    image(&d, IMAGE_A).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let wf = dir.path().join(".github/workflows");
    std::fs::create_dir_all(&wf).expect("mkdir");
    std::fs::write(
        wf.join("ci.yml"),
        "on: push\njobs:\n  in-image:\n    runs-on: ubuntu-latest\n    steps:\n      - run: cat /image-name\n  on-host:\n    runs-on: macos-latest\n    steps:\n      - run: test ! -e /image-name && echo on the host\n",
    )
    .expect("write");
    let run = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_trackside"))
            .args(["run", ".github/workflows/ci.yml", "--headless", "--state-dir"])
            .arg(dir.path().join("state"))
            .args(extra)
            .current_dir(dir.path())
            .output()
            .expect("run")
    };
    let out = run(&["-P", &format!("ubuntu-latest=docker://{IMAGE_A}")]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains(&format!("in-image > {IMAGE_A}")), "{text}");
    assert!(text.contains("on-host  > on the host"), "{text}");
    let out = run(&["--platform", "=x"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected LABEL=IMAGE"));
}

#[tokio::test]
async fn docker_actions_run_their_entrypoint_with_inputs_outputs_and_a_post_step() {
    let Some(d) = docker().await else { return };
    image(&d, IMAGE_A).await;
    let action = "name: greet\ninputs:\n  who:\n    default: world\noutputs:\n  time:\n    description: when\nruns:\n  using: docker\n  image: Dockerfile\n  env: {FROM_RUNS_ENV: set}\n  args: ['${{ inputs.who }}', 'two words']\n  post-entrypoint: /post.sh\n";
    let dockerfile = format!("FROM {IMAGE_A}\nCOPY entrypoint.sh post.sh /\nENTRYPOINT [\"/entrypoint.sh\"]\n");
    let entry = "#!/bin/sh\necho \"hello $1 ($2) who=$INPUT_WHO env=$FROM_RUNS_ENV ws=$GITHUB_WORKSPACE pwd=$(pwd) home=$HOME\"\ncat README\necho time=noon >> \"$GITHUB_OUTPUT\"\necho GREETED=$1 >> \"$GITHUB_ENV\"\n";
    let post = "#!/bin/sh\necho \"post for $1\"\n";
    let from_image = format!(
        "name: hub\nruns:\n  using: docker\n  image: docker://{IMAGE_A}\n  entrypoint: /bin/cat\n  args: [/image-name]\n"
    );
    let mut s = github_with(
        &format!(
            "on: push\njobs:\n  a:\n    runs-on: ubuntu-latest\n    steps:\n      - id: g\n        uses: ./.github/actions/greet\n        with: {{who: Mona}}\n      - run: echo \"time=${{{{ steps.g.outputs.time }}}} greeted=$GREETED\"\n      - uses: docker://{IMAGE_A}\n        with:\n          entrypoint: /bin/sh\n          args: -c \"echo uri $INPUT_EXTRA; cat /image-name\"\n          extra: given\n      - uses: ./.github/actions/hub\n"
        ),
        &[
            (".github/actions/greet/action.yml", action),
            (".github/actions/greet/Dockerfile", &dockerfile),
            (".github/actions/greet/entrypoint.sh", entry),
            (".github/actions/greet/post.sh", post),
            (".github/actions/hub/action.yml", &from_image),
        ],
    );
    with_docker(&mut s, &d);
    let mut r = start(&mut s).await;
    let sum = r.finished().await;
    let lines = r.lines("a");
    assert_eq!(sum.result, RunResult::Passed, "{lines:?}");
    for want in [
        "hello Mona (two words) who=Mona env=set ws=/github/workspace pwd=/github/workspace home=/github/home",
        "project file",
        "time=noon greeted=Mona",
        "uri given",
        IMAGE_A,
        "post for Mona",
    ] {
        assert!(lines.iter().any(|l| l == want), "{want}: {lines:?}");
    }
    assert_eq!(
        lines.last().map(String::as_str),
        Some("post for Mona"),
        "the post step runs last"
    );
    let run_id = r.handle.run_id().to_string();
    r.handle.shutdown().await;
    assert_eq!(labelled(&d, &run_id).await, 0, "the actions' containers are removed");
}

#[tokio::test]
async fn a_docker_action_that_does_not_build_fails_the_job_before_its_steps() {
    let Some(d) = docker().await else { return };
    let mut s = github_with(
        "on: push\njobs:\n  a:\n    runs-on: ubuntu-latest\n    steps:\n      - run: echo never\n      - uses: ./broken\n",
        &[
            (
                "broken/action.yml",
                "name: b\nruns:\n  using: docker\n  image: Dockerfile\n",
            ),
            (
                "broken/Dockerfile",
                "FROM trackside-test-no-such-image:never\nNOT-AN-INSTRUCTION\n",
            ),
        ],
    );
    with_docker(&mut s, &d);
    let mut r = start(&mut s).await;
    let sum = r.finished().await;
    let j = job(&sum, "a");
    assert_eq!(j.failure_class, Some(FailureClass::Infra), "{:?}", r.lines("a"));
    let reason = j.reason.clone().unwrap_or_default();
    assert!(
        reason.contains("building the action's image (Dockerfile) failed"),
        "{reason}"
    );
    assert!(!r.lines("a").contains(&"never".to_string()));
}

#[tokio::test]
async fn matrix_jobs_with_services_a_non_root_container_and_secrets_in_service_env() {
    let Some(d) = docker().await else { return };
    image(&d, IMAGE_A).await;
    let mut s = github(&format!(
        r#"on: push
jobs:
  test:
    name: Unit tests
    runs-on: ubuntu-latest
    strategy: {{matrix: {{n: [1, 2]}}}}
    container:
      image: {IMAGE_A}
      options: --user 1000:1000
      env: {{IN_BOX: "${{{{ secrets.TOKEN }}}}"}}
    services:
      web:
        image: {IMAGE_A}
        command: sh -c 'echo "pw=$PW" > /pw.txt; exec httpd -f -p 8080 -h /'
        env: {{PW: "${{{{ secrets.TOKEN }}}}"}}
    steps:
      - id: v
        run: |
          echo "uid=$(id -u) box=$IN_BOX"
          echo "ver=9.${{{{ matrix.n }}}}" >> "$GITHUB_OUTPUT"
      - run: wget -q -O - http://web:8080/pw.txt
      - uses: docker://{IMAGE_A}
        with:
          entrypoint: /bin/sh
          args: -c "echo args-ver=${{{{ steps.v.outputs.ver }}}}"
"#
    ));
    with_docker(&mut s, &d);
    s.cfg.secrets = vec![("TOKEN".into(), "tok-s3cret".into())];
    let mut r = start(&mut s).await;
    let sum = r.finished().await;
    for (job, n) in [("Unit tests (1)", 1), ("Unit tests (2)", 2)] {
        let lines = r.lines(job);
        assert_eq!(sum_status(&sum, job), Some(JobStatus::Succeeded), "{lines:?}");
        for want in [
            "uid=1000 box=***".to_string(),
            "pw=***".into(),
            format!("args-ver=9.{n}"),
        ] {
            assert!(lines.contains(&want), "{job}: {want}: {lines:?}");
        }
        assert!(
            lines.iter().any(|l| l.contains("`PW` holds secret `TOKEN`")),
            "{lines:?}"
        );
    }
    let run_id = r.handle.run_id().to_string();
    r.handle.shutdown().await;
    assert_eq!(labelled(&d, &run_id).await, 0);
    assert_eq!(networks_of(&d, &run_id).await, 0);
}

#[tokio::test]
async fn a_cancel_while_a_service_is_not_ready_yet_ends_the_job_at_once() {
    let Some(d) = docker().await else { return };
    image(&d, IMAGE_A).await;
    let mut s = github(&format!(
        "on: push\njobs:\n  wait:\n    runs-on: ubuntu-latest\n    services:\n      db:\n        image: {IMAGE_A}\n        command: sh -c 'echo db starting; exec sleep 300'\n        options: --health-cmd false --health-interval 1s --health-retries 100 --health-start-period 1h\n    steps:\n      - run: echo never\n"
    ));
    with_docker(&mut s, &d);
    let mut r = start(&mut s).await;
    r.until(
        "the service is being waited for",
        |k| matches!(k, EventKind::LogLine { job, step, .. } if job == "wait" && step == "services"),
    )
    .await;
    let asked = std::time::Instant::now();
    r.handle.cancel_all().await.expect("cancel");
    let sum = r.finished().await;
    assert!(
        asked.elapsed() < std::time::Duration::from_secs(10),
        "took {:?}",
        asked.elapsed()
    );
    assert_eq!(sum_status(&sum, "wait"), Some(JobStatus::Cancelled));
    let run_id = r.handle.run_id().to_string();
    r.handle.shutdown().await;
    assert_eq!(
        labelled(&d, &run_id).await,
        0,
        "what was half started goes with the run"
    );
}

#[tokio::test]
async fn a_job_cancelled_while_its_service_starts_takes_its_containers_with_it_at_once() {
    let Some(d) = docker().await else { return };
    image(&d, IMAGE_A).await;
    // `keep` holds the run open for 30 s: what `wait` started must go when
    // `wait` ends, not when the run does.
    let mut s = github(&format!(
        "on: push\njobs:\n  wait:\n    runs-on: ubuntu-latest\n    services:\n      db:\n        image: {IMAGE_A}\n        command: sh -c 'echo db starting; exec sleep 300'\n        options: --health-cmd false --health-interval 1s --health-retries 100 --health-start-period 1h\n    steps:\n      - run: echo never\n  keep:\n    runs-on: ubuntu-latest\n    steps:\n      - run: sleep 30\n"
    ));
    with_docker(&mut s, &d);
    let mut r = start(&mut s).await;
    r.until(
        "the service is being waited for",
        |k| matches!(k, EventKind::LogLine { job, step, .. } if job == "wait" && step == "services"),
    )
    .await;
    let run_id = r.handle.run_id().to_string();
    assert!(labelled(&d, &run_id).await > 0, "the service runs");
    r.handle.cancel("wait").await.expect("cancel");
    r.until(
        "wait's end",
        |k| matches!(k, EventKind::JobFinished { job, .. } if job == "wait"),
    )
    .await;
    let gone_by = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while labelled(&d, &run_id).await > 0 || networks_of(&d, &run_id).await > 0 {
        assert!(
            std::time::Instant::now() < gone_by,
            "the half started service outlived its job"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        !r.seen
            .iter()
            .any(|e| matches!(&e.kind, EventKind::JobFinished { job, .. } if job == "keep")),
        "gone while the run still ran"
    );
    r.handle.cancel_all().await.expect("cancel");
    let _ = r.finished().await;
    r.handle.shutdown().await;
}

fn sum_status(s: &trackside::engine::RunSummary, name: &str) -> Option<JobStatus> {
    s.jobs.iter().find(|j| j.name == name).map(|j| j.status)
}

/// A live service of containers: the trackside at a canary's gate stops,
/// the containers and the traffic split stay with the service process,
/// and the next trackside adopts them and takes the gate up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_survives_a_restart_of_trackside_with_a_live_service_of_containers() {
    let Some(d) = docker().await else { return };
    for v in ["v1", "v2"] {
        web_image(&d, v).await;
    }
    // The demo service's command becomes the image of the same version.
    let containers = |yaml: &str| {
        yaml.lines()
            .map(|l| match l.trim_start().strip_prefix("version: ") {
                Some(v) if l.starts_with("      version: ") => {
                    format!("{l}\n      image: trackside-test-web:{v}\n      port: 8080")
                }
                _ if l.starts_with("      run: ") => String::new(),
                _ => l.to_string(),
            })
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("\n")
            + "\n"
    };
    common::deploy::gate_survives_a_restart(&containers).await;
}
