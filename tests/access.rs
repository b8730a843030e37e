//! Who may promote: a run opened to a group (`--allow-group`) and a gate
//! that takes approvals by name (`approvers:`), tried with two extra local
//! users, one in the group and one not.
//!
//! Needs root (to act as those users) and the accounts `.ci/run` makes:
//! group `trackside-sre` with user `trackside-sre`, and user
//! `trackside-outsider` outside it. Without them the test skips with one
//! loud line, unless TRACKSIDE_REQUIRE_USERS=1 (CI sets it).

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const GROUP: &str = "trackside-sre";
const MEMBER: &str = "trackside-sre";
const OUTSIDER: &str = "trackside-outsider";
const LIMIT: Duration = Duration::from_secs(60);

/// The uid and gid of `name`, when the account exists.
fn account(name: &str) -> Option<(u32, u32)> {
    let u = nix::unistd::User::from_name(name).ok().flatten()?;
    Some((u.uid.as_raw(), u.gid.as_raw()))
}

fn users_ready() -> Option<((u32, u32), (u32, u32))> {
    let root = nix::unistd::Uid::effective().is_root();
    let found = (account(MEMBER), account(OUTSIDER));
    let group = nix::unistd::Group::from_name(GROUP).ok().flatten();
    match (root, found, group) {
        (true, (Some(m), Some(o)), Some(_)) => Some((m, o)),
        _ => {
            let why = "needs root and the users .ci/run makes (groupadd trackside-sre; useradd -M -g trackside-sre trackside-sre; useradd -M trackside-outsider)";
            assert!(
                std::env::var("TRACKSIDE_REQUIRE_USERS").as_deref() != Ok("1"),
                "TRACKSIDE_REQUIRE_USERS=1 but this test {why}"
            );
            eprintln!("SKIPPED access test: it {why}; set TRACKSIDE_REQUIRE_USERS=1 to make this a failure");
            None
        }
    }
}

/// `trackside ARGS` as the account `(uid, gid)` with its own groups,
/// running `exe` (a copy the other users can reach: the build's own may
/// sit under a home folder they cannot enter).
fn as_user(exe: &Path, who: (u32, u32), name: &str, args: &[&str], home: &Path) -> Output {
    let groups = nix::unistd::getgrouplist(
        &std::ffi::CString::new(name).expect("name"),
        nix::unistd::Gid::from_raw(who.1),
    )
    .expect("groups");
    let mut cmd = Command::new(exe);
    cmd.args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", home)
        .env("USER", name)
        .env("TRACKSIDE_STATE_DIR", home.join(format!("state-{name}")));
    // SAFETY: only async-signal-safe calls (setgroups, setgid, setuid)
    // between fork and exec; the groups were gathered before the fork.
    unsafe {
        cmd.pre_exec(move || {
            nix::unistd::setgroups(&groups)?;
            nix::unistd::setgid(nix::unistd::Gid::from_raw(who.1))?;
            nix::unistd::setuid(nix::unistd::Uid::from_raw(who.0))?;
            Ok(())
        });
    }
    cmd.output().expect("trackside as another user")
}

/// `trackside ARGS` as the test's own user (the run's starter): what it said.
fn as_me(args: &[&str]) -> String {
    text(
        &Command::new(env!("CARGO_BIN_EXE_trackside"))
            .args(args)
            .output()
            .expect("trackside"),
    )
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\n{}{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A folder other users may pass through, with a copy of trackside they
/// can run and a home for their own (unused) state.
struct Shared {
    dir: tempfile::TempDir,
    exe: std::path::PathBuf,
    home: std::path::PathBuf,
}

impl Shared {
    fn new() -> Shared {
        let dir = tempfile::tempdir().expect("tempdir");
        // The way to the state directory is the user's to open: o+x here.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).expect("chmod");
        let home = dir.path().join("home");
        std::fs::create_dir(&home).expect("home");
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
        let exe = dir.path().join("trackside");
        std::fs::copy(env!("CARGO_BIN_EXE_trackside"), &exe).expect("copy trackside");
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        Shared { dir, exe, home }
    }
}

/// Starts `trackside run ARGS` (as the test's user) and hands its stdout
/// lines over a channel.
fn spawn_run(args: &[&str], cwd: &Path) -> (std::process::Child, mpsc::Receiver<String>) {
    let mut run = Command::new(env!("CARGO_BIN_EXE_trackside"))
        .args(args)
        .current_dir(cwd)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("trackside run");
    let (tx, rx) = mpsc::channel();
    let out = run.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (run, rx)
}

/// Reads lines into `seen` until one contains `want` (at most [`LIMIT`]).
fn wait_for(rx: &mpsc::Receiver<String>, want: &str, seen: &mut Vec<String>) {
    let deadline = std::time::Instant::now() + LIMIT;
    while !seen.iter().any(|l| l.contains(want)) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(_) => panic!("no `{want}` within {LIMIT:?}: {seen:#?}"),
        }
    }
}

/// A canary's manual gate with an approval policy, steered through the
/// rollout's control socket opened to the group.
#[tokio::test]
async fn a_canary_gate_takes_the_groups_promotion_and_refuses_the_starters() {
    let Some((member, outsider)) = users_ready() else {
        return;
    };
    let sh = Shared::new();
    let state = sh.dir.path().join("state");
    let rehearsal = |version: &str, steps: &str| {
        common::deploy::deploy_yaml(version, 0.0, steps).replace(
            "      abort_delay: 0\n",
            &format!(
                "      abort_delay: 0\n      keep_serving: false\n      approvers: {{groups: [{GROUP}], allow_self: false}}\n"
            ),
        )
    };
    let (v1, r1) = common::deploy::deploy(&state, &rehearsal("v1", common::deploy::STRAIGHT)).await;
    // What the rollout said, when it did not pass: the reason is in its lines.
    assert_eq!(v1.result, trackside::engine::RunResult::Passed, "{:?}", r1.lines("web"));
    let file = sh.dir.path().join("v2.yml");
    std::fs::write(&file, rehearsal("v2", common::deploy::GATED)).expect("write");
    let (state_s, file_s) = (state.to_str().expect("utf-8"), file.to_str().expect("utf-8"));
    let (mut run, rx) = spawn_run(
        &[
            "run",
            "--json",
            "--no-watch",
            "--allow-group",
            GROUP,
            "--state-dir",
            state_s,
            file_s,
        ],
        sh.dir.path(),
    );
    let mut seen = Vec::new();
    wait_for(&rx, "\"phase\":\"gate\"", &mut seen);
    let sock = state.join("services").join("web.sock");
    let sock_s = sock.to_str().expect("utf-8");
    let o = as_user(&sh.exe, outsider, OUTSIDER, &["rollout", sock_s, "promote"], &sh.home);
    let said = text(&o);
    assert_ne!(o.status.code(), Some(0), "{said}");
    assert!(
        said.contains("ermission denied"),
        "kept out by the socket's mode: {said}"
    );
    // The starter's promotion is refused by the policy, with why.
    let said = as_me(&["rollout", "web", "promote", "--state-dir", state_s]);
    assert!(
        said.contains("promote refused") && said.contains("started this run"),
        "{said}"
    );
    let said = as_me(&["rollout", "web", "status", "--state-dir", state_s]);
    assert!(
        said.contains("approvers: 1 of group trackside-sre (not the run's starter)"),
        "{said}"
    );
    assert!(said.contains("waiting for 1 more"), "{said}");
    // A member's passes the gate; the rollout completes.
    let o = as_user(&sh.exe, member, MEMBER, &["rollout", sock_s, "promote"], &sh.home);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let status = run.wait().expect("run ends");
    for line in rx.try_iter() {
        seen.push(line);
    }
    assert!(status.success(), "{seen:#?}");
    assert!(
        seen.iter()
            .any(|l| l.contains("passed by hand") && l.contains(&format!("{MEMBER}@"))),
        "the decision names the member: {seen:#?}"
    );
}

#[test]
fn a_group_member_approves_a_gate_the_starter_and_an_outsider_cannot() {
    let Some((member, outsider)) = users_ready() else {
        return;
    };
    let sh = Shared::new();
    let (dir, exe, home) = (&sh.dir, &sh.exe, &sh.home);
    let state = dir.path().join("state");
    let pipeline = dir.path().join("pipeline.yml");
    std::fs::write(
        &pipeline,
        format!(
            "name: gated\njobs:\n  build:\n    steps: [{{script: echo built}}]\n  deploy:\n    depends_on: [build]\n    when: manual\n    approvers: {{groups: [{GROUP}], required: 1, allow_self: false}}\n    steps: [{{script: echo deployed}}]\n"
        ),
    )
    .expect("pipeline");
    let (state_s, pipeline_s) = (state.to_str().expect("utf-8"), pipeline.to_str().expect("utf-8"));
    let (mut run, rx) = spawn_run(
        &[
            "run",
            "--headless",
            "--wait-approval",
            "--no-watch",
            "--allow-group",
            GROUP,
            "--state-dir",
            state_s,
            pipeline_s,
        ],
        dir.path(),
    );
    let mut seen = Vec::new();
    wait_for(&rx, "waiting for approval", &mut seen);
    let runs = state.join("runs");
    let run_dir = std::fs::read_dir(&runs)
        .expect("runs")
        .flatten()
        .map(|e| e.path())
        .next()
        .expect("a run folder");
    let sock = run_dir.join("control.sock");
    let meta = std::fs::metadata(&sock).expect("socket");
    let gid = nix::unistd::Group::from_name(GROUP)
        .ok()
        .flatten()
        .expect("group")
        .gid
        .as_raw();
    assert_eq!(
        (meta.mode() & 0o777, meta.gid()),
        (0o660, gid),
        "the socket is the group's"
    );
    let run_arg = run_dir.to_str().expect("utf-8 path").to_string();

    // Not in the group: the kernel keeps them from the socket.
    let o = as_user(exe, outsider, OUTSIDER, &["approve", &run_arg, "deploy"], home);
    let said = text(&o);
    assert_ne!(o.status.code(), Some(0), "{said}");
    assert!(
        said.contains("ermission denied"),
        "kept out by the socket's mode: {said}"
    );
    // The run's starter: refused by the policy, with why.
    let o = Command::new(env!("CARGO_BIN_EXE_trackside"))
        .args(["approve", &run_arg, "deploy"])
        .output()
        .expect("approve");
    let said = text(&o);
    assert_ne!(o.status.code(), Some(0), "{said}");
    assert!(said.contains("started this run"), "{said}");
    // A member of the group: the gate opens and the run passes.
    let o = as_user(exe, member, MEMBER, &["approve", &run_arg, "deploy"], home);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    wait_for(&rx, "deploy > deployed", &mut seen);
    let status = run.wait().expect("run ends");
    assert!(status.success(), "{seen:#?}");
    // The audit trail names who approved, by account.
    let events = std::fs::read_to_string(run_dir.join("events.jsonl")).expect("events");
    let approved = events
        .lines()
        .find(|l| l.contains("\"approved\""))
        .unwrap_or_else(|| panic!("no approved event: {events}"));
    assert!(approved.contains(&format!("\"user\":\"{MEMBER}\"")), "{approved}");
    assert!(
        seen.iter()
            .any(|l| l.contains(&format!("deploy approved by {MEMBER}@"))),
        "{seen:#?}"
    );
}

/// A gate needing two people keeps the first one's approval when its
/// trackside is killed: the next run of the deploy waits for one more.
#[tokio::test]
async fn a_gates_approvals_survive_a_killed_trackside() {
    let Some((member, _)) = users_ready() else {
        return;
    };
    let me = nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .expect("this user")
        .name;
    let sh = Shared::new();
    let state = sh.dir.path().join("state");
    let yaml = |version: &str, steps: &str| {
        common::deploy::deploy_yaml(version, 0.0, steps).replace(
            "      abort_delay: 0\n",
            &format!("      abort_delay: 0\n      keep_serving: false\n      approvers: {{users: [{me}, {MEMBER}], required: 2}}\n"),
        )
    };
    let (v1, r1) = common::deploy::deploy(&state, &yaml("v1", common::deploy::STRAIGHT)).await;
    assert_eq!(v1.result, trackside::engine::RunResult::Passed, "{:?}", r1.lines("web"));
    let file = sh.dir.path().join("v2.yml");
    std::fs::write(&file, yaml("v2", common::deploy::GATED)).expect("write");
    let (state_s, file_s) = (state.to_str().expect("utf-8"), file.to_str().expect("utf-8"));
    let args = [
        "run",
        "--json",
        "--no-watch",
        "--allow-group",
        GROUP,
        "--state-dir",
        state_s,
        file_s,
    ];
    let (mut run, rx) = spawn_run(&args, sh.dir.path());
    let mut seen = Vec::new();
    wait_for(&rx, "\"phase\":\"gate\"", &mut seen);
    let said = as_me(&["rollout", "web", "promote", "--state-dir", state_s]);
    assert!(said.contains("approval 1 of 2"), "{said}");
    // Saved beside the gate before the answer: a kill now loses nothing.
    let gate = trackside::deploy::rollout::load_gate(&state, "web").expect("the gate is kept");
    assert_eq!(gate.approvals, vec![me.clone()]);
    run.kill().expect("kill -9");
    let _ = run.wait();

    let (mut run, rx) = spawn_run(&args, sh.dir.path());
    let mut seen = Vec::new();
    wait_for(&rx, &format!("its approvals kept: {me}"), &mut seen);
    wait_for(&rx, "\"phase\":\"gate\"", &mut seen);
    let said = as_me(&["rollout", "web", "status", "--state-dir", state_s]);
    assert!(said.contains("waiting for 1 more"), "{said}");
    let said = as_me(&["rollout", "web", "promote", "--state-dir", state_s]);
    assert!(said.contains("has already approved this step (1 of 2)"), "{said}");
    let sock = state.join("services").join("web.sock");
    let o = as_user(
        &sh.exe,
        member,
        MEMBER,
        &["rollout", sock.to_str().expect("utf-8"), "promote"],
        &sh.home,
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let status = run.wait().expect("run ends");
    for line in rx.try_iter() {
        seen.push(line);
    }
    assert!(
        status.success(),
        "two people passed the gate, across the restart: {seen:#?}"
    );
}

/// A live service a run opened to the group starts its service process
/// with its socket opened to that group too: a member steers it through
/// the socket's path (status, scale, stop), an outsider cannot connect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_services_socket_is_opened_to_the_runs_group_and_no_one_else() {
    use std::os::unix::fs::MetadataExt;
    use trackside::deploy::service;
    let Some((member, outsider)) = users_ready() else {
        return;
    };
    let sh = Shared::new();
    let state = sh.dir.path().join("state");
    /// Stops the service even when the test fails.
    struct Stop(std::path::PathBuf);
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = Command::new(env!("CARGO_BIN_EXE_trackside"))
                .arg("--state-dir")
                .arg(&self.0)
                .args(["service", "web", "stop"])
                .output();
        }
    }
    let _stop = Stop(state.clone());
    let mut s = common::setup(&common::deploy::deploy_yaml("g1", 0.0, common::deploy::STRAIGHT));
    s.cfg.state_dir = state.clone();
    s.cfg.group = Some(GROUP.into());
    let mut r = common::start(&mut s).await;
    let sum = r.finished().await;
    assert_eq!(sum.result, trackside::engine::RunResult::Passed, "{:?}", r.lines("web"));
    let sock = service::paths(&state, "web").socket;
    let meta = std::fs::metadata(&sock).expect("the service's socket");
    let group = nix::unistd::Group::from_name(GROUP).ok().flatten().expect("group");
    assert_eq!(
        (meta.mode() & 0o777, meta.gid()),
        (0o660, group.gid.as_raw()),
        "0660 with the group"
    );
    let sock_s = sock.to_str().expect("utf-8");

    let o = as_user(&sh.exe, outsider, OUTSIDER, &["service", sock_s, "status"], &sh.home);
    let said = text(&o);
    assert_ne!(o.status.code(), Some(0), "{said}");
    assert!(
        said.contains("ermission denied"),
        "kept out by the socket's mode: {said}"
    );

    let o = as_user(&sh.exe, member, MEMBER, &["service", sock_s, "status"], &sh.home);
    let said = text(&o);
    assert!(
        said.contains("web  serving  http://") && said.contains("g1 100%"),
        "{said}"
    );
    // Looking and stopping are a member's; what runs as the service's user
    // is the user's (the service process refuses it too: a unit test).
    for what in [&["scale", "3"][..], &["logs"], &["start"]] {
        let args: Vec<&str> = ["service", sock_s].iter().chain(what).copied().collect();
        let o = as_user(&sh.exe, member, MEMBER, &args, &sh.home);
        let said = text(&o);
        assert_eq!(o.status.code(), Some(2), "{said}");
        assert!(said.contains("may be looked at and stopped"), "{said}");
    }
    let o = as_user(&sh.exe, member, MEMBER, &["service", sock_s, "stop"], &sh.home);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    common::deploy::until("the service stopped", || !service::running(&state, "web")).await;
    // The service's own log names who stopped it.
    let logs = std::fs::read_dir(state.join("logs"))
        .expect("the service process's log")
        .flatten()
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect::<String>();
    assert!(
        logs.lines()
            .any(|l| l.contains("stop: stopping `web`") && l.contains(&format!("{MEMBER}@"))),
        "who stopped it: {logs}"
    );
}
