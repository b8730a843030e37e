//! The shell executor: each step is `sh -e SCRIPT_FILE` in its own process
//! group and, where the machine allows, its own cgroup.
//!
//! Stopping a step means stopping everything it started. The process group
//! covers ordinary children and background jobs; processes that leave the
//! group (`setsid`, daemons) stay in the step's cgroup ([`super::contain`]),
//! and still carry the step's tag in their environment unless they cleared
//! it, for a sweep over /proc on cancel and timeout. When a step ends, its
//! group and its cgroup are killed, so one step's leftovers never leak into
//! the next.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use std::os::unix::process::CommandExt;
use std::process::Command;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{BoxFuture, Executor, OutputLine, StepEnd, StepSpec, Stream, TAG_VAR};

/// A line of output is passed on in pieces of this many bytes once it
/// reaches this length (see [`super::lines`]).
pub const MAX_LINE: usize = 64 * 1024;

#[derive(Debug, Default, Clone)]
pub struct ShellExecutor;

impl Executor for ShellExecutor {
    fn name(&self) -> &'static str {
        "shell"
    }

    fn run_step(
        &self,
        spec: StepSpec,
        out: mpsc::Sender<OutputLine>,
        cancel: CancellationToken,
    ) -> BoxFuture<'_, StepEnd> {
        Box::pin(run(spec, out, cancel))
    }
}

async fn run(spec: StepSpec, out: mpsc::Sender<OutputLine>, cancel: CancellationToken) -> StepEnd {
    // Usually there already: one quick call, not worth a blocking thread.
    if let Err(e) = std::fs::create_dir_all(&spec.workdir) {
        return StepEnd::SpawnFailed(format!(
            "cannot create working directory {}: {e}",
            spec.workdir.display()
        ));
    }
    // In a cgroup of its own where there is one: the shell joins it before
    // anything of the script runs, so nothing the step starts can leave it.
    let on_disk = !reads_script_as_named(spec.shell.as_deref());
    let script = match ScriptFile::new(&spec.script, &spec.script_dir, on_disk) {
        Ok(s) => s,
        Err(e) => return StepEnd::SpawnFailed(format!("cannot hand the script to `sh`: {e}")),
    };
    let cgroup = super::contain::StepCgroup::create();
    // What the kernel will count as the step's own at its start: the peak
    // of the memory it starts with, trackside's (see `reap`).
    let inherited = super::reap::own_peak();
    let (mut child, stdout, stderr) = match start(&spec, &script, cgroup.as_ref()) {
        Ok(started) => started,
        Err(e) => return StepEnd::SpawnFailed(format!("cannot start `sh`: {e}")),
    };
    let pgid = i32::try_from(child.id()).ok().map(Pid::from_raw);
    // A task for each pipe: each is woken as its pipe becomes readable, so
    // lines written to both streams mostly keep the order they were
    // written in (one task woken for both cannot tell which came first;
    // two pipes never promise it).
    let readers = [
        tokio::spawn(read_pipe(stdout, Stream::Stdout, out.clone())),
        tokio::spawn(read_pipe(stderr, Stream::Stderr, out)),
    ];

    let deadline = async {
        match spec.deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    };
    let end = tokio::select! {
        reaped = child.wait() => match reaped {
            Ok(r) => {
                if let Some(bytes) = super::reap::step_peak(r.peak_rss, inherited) {
                    spec.usage.record(bytes);
                }
                spec.usage.add_cpu(r.cpu_ms);
                exit_end(r.status)
            }
            Err(e) => StepEnd::SpawnFailed(format!("lost track of `sh`: {e}")),
        },
        () = deadline => {
            terminate(&mut child, pgid, spec.kill_grace, &spec.tag).await;
            StepEnd::TimedOut
        }
        () = cancel.cancelled() => {
            terminate(&mut child, pgid, spec.kill_grace, &spec.tag).await;
            StepEnd::Cancelled
        }
    };
    // Whatever the step left behind in its group, or its cgroup, goes with it.
    if let Some(pg) = pgid {
        let _ = killpg(pg, Signal::SIGKILL);
    }
    if let Some(mut cg) = cgroup
        && !cg.release()
    {
        let _ = tokio::task::spawn_blocking(move || cg.kill_all()).await;
    }
    // Readers end at EOF; a process that escaped the group may hold the pipe,
    // so wait a bounded time (for both at once) and then let go of it.
    let give_up = tokio::time::Instant::now() + Duration::from_secs(2);
    for r in readers {
        let abort = r.abort_handle();
        if tokio::time::timeout_at(give_up, r).await.is_err() {
            abort.abort();
        }
    }
    end
}

/// A started step: its process (reaped by [`super::reap`], with its peak
/// memory; killed if the step is dropped) and its output pipes.
type Started = (super::reap::Child, Option<OwnedFd>, Option<OwnedFd>);

/// Starts the step's process: `sh -e SCRIPT` created in its cgroup by
/// [`super::spawn`] where the machine allows, else through `Command`, the
/// shell joining its cgroup before the script runs.
fn start(
    spec: &StepSpec,
    script: &ScriptFile,
    cgroup: Option<&super::contain::StepCgroup>,
) -> std::io::Result<Started> {
    use std::ffi::OsStr;
    // `sh -e SCRIPT`, or the step's own command line (GitHub's `bash -e
    // {0}`, `python {0}`, ...) with its program found on the step's PATH.
    let own: Vec<String> = match &spec.shell {
        Some(_) => spec.command_line(&script.path.to_string_lossy()),
        None => Vec::new(),
    };
    let program = match own.split_first() {
        Some((name, _)) => program_path(name, spec),
        None => Some(shell_path().to_path_buf()),
    };
    // It could not start as found: `Command` looks for it again.
    let mut not_started = false;
    if let Some(program) = &program {
        // The program's name is its path, as GitHub's runner starts it (and
        // bash, named so, does not search PATH for itself).
        let args: Vec<&OsStr> = match own.split_first() {
            Some((_, rest)) => std::iter::once(program.as_os_str())
                .chain(rest.iter().map(OsStr::new))
                .collect(),
            None => vec![shell_path().as_os_str(), OsStr::new("-e"), script.path.as_os_str()],
        };
        let env = spec
            .env
            .iter()
            .filter(|(k, _)| k.as_str() != TAG_VAR && k.as_str() != super::contain::OWNER_VAR)
            .map(|(k, v)| (OsStr::new(k), OsStr::new(v)))
            .chain([
                (OsStr::new(TAG_VAR), OsStr::new(&spec.tag)),
                (
                    OsStr::new(super::contain::OWNER_VAR),
                    OsStr::new(crate::process::owner()),
                ),
            ])
            .collect();
        let req = super::spawn::Request {
            program,
            args: &args,
            env,
            cwd: &spec.workdir,
            cgroup: cgroup.map(super::contain::StepCgroup::dir),
        };
        match super::spawn::spawn(&req) {
            Ok(s) => {
                return Ok((
                    super::reap::Child::with_pidfd(s.pid, s.pidfd),
                    Some(s.stdout),
                    Some(s.stderr),
                ));
            }
            // The shell itself would not start: the step fails so.
            Err(e) if e.kind() != std::io::ErrorKind::Unsupported && spec.shell.is_none() => return Err(e),
            // This machine starts no process that way: `Command` starts the
            // program found, under its path as well.
            Err(e) if e.kind() == std::io::ErrorKind::Unsupported => {}
            // The step's own program that would not start this way (no `#!`
            // line, a missing interpreter, no permission): `Command` tries
            // it as it always did (`execvp`: /bin/sh for a script without
            // `#!`, the next PATH entry), and names it if it fails.
            Err(_) => not_started = true,
        }
    }
    // The program found, where `Command` is to start it; else its name,
    // which `Command` looks for on the step's PATH.
    let own_program = |name: &str| -> std::ffi::OsString {
        match &program {
            Some(p) if !not_started => p.as_os_str().to_owned(),
            _ => name.into(),
        }
    };
    let path = script.path.to_string_lossy().into_owned();
    let mut cmd = match (cgroup, &spec.shell) {
        (Some(cg), None) => {
            // One shell: it joins, then reads the script in place (a second
            // exec would double the cost of starting a step). Only paths are
            // on the command line.
            let mut cmd = Command::new(shell_path());
            cmd.arg("-e").arg("-c").arg(format!(
                "echo $$ > {} 2>/dev/null || :; . {}",
                quote(&cg.procs()),
                quote(&script.path)
            ));
            cmd
        }
        // A program of the step's own (`bash`, `python`, `node`): it joins
        // the cgroup between fork and exec. Not through `sh`: dash drops
        // variables whose names are not shell names (`INPUT_WHO-TO-GREET`).
        (Some(cg), Some(_)) => {
            let argv = spec.command_line(&path);
            let (program, args) = argv.split_first().map_or(("sh", &[][..]), |(p, a)| (p.as_str(), a));
            let mut cmd = Command::new(own_program(program));
            cmd.args(args);
            if let Ok(procs) = std::ffi::CString::new(cg.procs().into_os_string().into_encoded_bytes()) {
                // SAFETY: the closure runs in the child between fork and
                // exec; it only makes the open, write and close system
                // calls (no allocation, no locks), which are
                // async-signal-safe. A failure leaves the step outside the
                // cgroup, as the shell's `|| :` did.
                unsafe {
                    cmd.pre_exec(move || {
                        join_cgroup(&procs);
                        Ok(())
                    });
                }
            }
            cmd
        }
        (None, _) => {
            let argv = spec.command_line(&path);
            match (&spec.shell, argv.split_first()) {
                (Some(_), Some((program, args))) => {
                    let mut cmd = Command::new(own_program(program));
                    cmd.args(args);
                    cmd
                }
                _ => {
                    let mut cmd = Command::new(shell_path());
                    cmd.arg("-e").arg(&script.path);
                    cmd
                }
            }
        }
    };
    cmd.env_clear()
        .envs(spec.env.iter())
        .env(TAG_VAR, &spec.tag)
        .env(super::contain::OWNER_VAR, crate::process::owner())
        .current_dir(&spec.workdir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut spawned = cmd.spawn()?;
    let child = super::reap::Child::new(spawned.id());
    let stdout = spawned.stdout.take().map(OwnedFd::from);
    let stderr = spawned.stderr.take().map(OwnedFd::from);
    Ok((child, stdout, stderr))
}

/// A step's script where `sh` can read it by path. On Linux an anonymous
/// in-memory file (`memfd_create`), read through `/proc/<trackside>/fd/N`:
/// nothing on disk to write, remove or leave behind, and only trackside's
/// user may open it. Elsewhere, or if that fails, a file of mode 0600 in
/// the run's private folder, removed when the step ends.
struct ScriptFile {
    path: PathBuf,
    /// Keeps the in-memory file open while `sh` may read it.
    _memory: Option<std::fs::File>,
}

impl ScriptFile {
    /// `on_disk`: a real file even where an in-memory one could be made
    /// (interpreters other than `sh`, such as node, resolve the script's
    /// path and cannot open `/proc/PID/fd/N` by its target).
    fn new(script: &str, dir: &Path, on_disk: bool) -> std::io::Result<ScriptFile> {
        #[cfg(target_os = "linux")]
        if !on_disk && let Some(file) = in_memory(script) {
            use std::os::fd::AsRawFd;
            return Ok(ScriptFile {
                path: PathBuf::from(format!("/proc/{}/fd/{}", std::process::id(), file.as_raw_fd())),
                _memory: Some(file),
            });
        }
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        std::fs::create_dir_all(dir)?;
        // Absolute: the step runs in its own working directory.
        let path = std::path::absolute(dir)?.join(format!("step-{}-{n}.sh", std::process::id()));
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        f.write_all(script.as_bytes())?;
        Ok(ScriptFile { path, _memory: None })
    }
}

impl Drop for ScriptFile {
    fn drop(&mut self) {
        if self._memory.is_none() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Whether the step's command line `shell` (`None`: `sh -e`) is a POSIX
/// shell or bash given the script's path as an argument of its own
/// (`bash -e {0}`): it opens the path as given, so an in-memory script
/// (`/proc/PID/fd/N`) serves, and no file is made and removed per step (an
/// inode each, a cost on some file systems). Other programs (node, pwsh,
/// python, ...) may resolve the path first, and `{0}` inside a longer
/// argument (`bash -c "node {0}"`) goes to whatever that runs: they get a
/// file.
fn reads_script_as_named(shell: Option<&[String]>) -> bool {
    let Some(line) = shell else {
        return true;
    };
    let Some((program, args)) = line.split_first() else {
        return false;
    };
    let name = Path::new(program).file_name().and_then(|n| n.to_str());
    matches!(name, Some("sh" | "bash" | "dash" | "ksh" | "zsh"))
        && args.iter().any(|a| a == "{0}")
        && !args.iter().any(|a| a == "-c" || (a.contains("{0}") && a != "{0}"))
}

/// `script` in an anonymous in-memory file, unless the kernel or `/proc`
/// cannot offer one.
#[cfg(target_os = "linux")]
fn in_memory(script: &str) -> Option<std::fs::File> {
    use std::io::Write;
    static PROC: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if !*PROC.get_or_init(|| Path::new("/proc/self/fd").is_dir()) {
        return None;
    }
    let fd = nix::sys::memfd::memfd_create(c"trackside-step", nix::sys::memfd::MFdFlags::MFD_CLOEXEC).ok()?;
    let mut file = std::fs::File::from(fd);
    file.write_all(script.as_bytes()).ok()?;
    Some(file)
}

/// `path` as one single-quoted shell word.
fn quote(path: &std::path::Path) -> String {
    format!("'{}'", path.to_string_lossy().replace('\'', "'\\''"))
}

/// Moves the calling process into the cgroup whose `cgroup.procs` is
/// `procs` (writing `0` means "this process").
fn join_cgroup(procs: &std::ffi::CStr) {
    use nix::fcntl::{OFlag, open};
    use nix::sys::stat::Mode;
    if let Ok(fd) = open(procs, OFlag::O_WRONLY | OFlag::O_CLOEXEC, Mode::empty()) {
        let _ = nix::unistd::write(&fd, b"0");
    }
}

/// Where the step's program `name` is, as an absolute path: as given when
/// it holds a `/`, else the first file of that name with an execute bit on
/// the step's PATH (`/bin:/usr/bin` when it sets none, as `execvp` has it;
/// relative entries, an empty one too, from the step's directory). `None`:
/// not found (`Command` then tries, and reports it). A file found that
/// still does not start falls back to `Command` as well ([`start`]).
fn program_path(name: &str, spec: &StepSpec) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let runnable = |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    // The child starts there: relative paths mean from there.
    let workdir = std::path::absolute(&spec.workdir).ok()?;
    if name.contains('/') {
        let p = workdir.join(name);
        return runnable(&p).then_some(p);
    }
    let paths = spec.env.get("PATH").map_or("/bin:/usr/bin", String::as_str);
    std::env::split_paths(paths)
        .map(|d| workdir.join(d).join(name))
        .find(|p| runnable(p))
}

/// The shell, as an absolute path. With a bare `sh` and a replaced
/// environment, std must search the job's PATH itself and falls back from
/// posix_spawn to fork, which copies trackside's page tables for every step:
/// the dominant cost with a thousand jobs at once.
fn shell_path() -> &'static std::path::Path {
    static SH: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    SH.get_or_init(|| {
        crate::process::find_program("sh", std::env::var_os("PATH").as_deref())
            .unwrap_or_else(|| std::path::PathBuf::from("/bin/sh"))
    })
}

fn exit_end(s: std::process::ExitStatus) -> StepEnd {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(c), _) => StepEnd::Exited(c),
        (None, Some(sig)) => StepEnd::Signaled(sig),
        (None, None) => StepEnd::Exited(-1),
    }
}

/// SIGTERM to the group, `grace` to exit, then SIGKILL to the group and to
/// every process still carrying the step's tag.
async fn terminate(child: &mut super::reap::Child, pgid: Option<Pid>, grace: Duration, tag: &str) {
    if let Some(pg) = pgid {
        let _ = killpg(pg, Signal::SIGTERM);
    }
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        if let Some(pg) = pgid {
            let _ = killpg(pg, Signal::SIGKILL);
        }
        child.kill();
        let _ = child.wait().await;
    }
    if let Some(pg) = pgid {
        let _ = killpg(pg, Signal::SIGKILL);
    }
    let tag = tag.to_string();
    let _ = tokio::task::spawn_blocking(move || sweep_tagged(&tag)).await;
}

/// Kills every process whose environment carries `TRACKSIDE_PROCESS_TAG=tag`.
/// Returns how many were found. Linux only; elsewhere the group kill must do.
pub fn sweep_tagged(tag: &str) -> usize {
    let needle = format!("{TAG_VAR}={tag}");
    let me = std::process::id();
    let mut total = 0;
    // Processes may fork while we kill them: go round until none is left.
    for _ in 0..20 {
        let found = tagged_pids(&needle, false, me);
        if found.is_empty() {
            break;
        }
        total += found.len();
        for pid in found {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    total
}

/// Pids of live (not zombie) processes whose environment has the entry
/// `needle` (or, with `prefix`, an entry starting with it).
pub fn tagged_pids(needle: &str, prefix: bool, except: u32) -> Vec<i32> {
    scan_environ(|kv| {
        if prefix {
            kv.starts_with(needle.as_bytes())
        } else {
            kv == needle.as_bytes()
        }
    })
    .into_iter()
    .filter(|&(pid, _)| pid as u32 != except)
    .map(|(pid, _)| pid)
    .collect()
}

/// Live processes with an environment entry starting with `prefix`
/// (`NAME=`), and the value of that entry.
pub fn tagged_env(prefix: &str) -> Vec<(i32, String)> {
    let me = std::process::id();
    scan_environ(|kv| kv.starts_with(prefix.as_bytes()))
        .into_iter()
        .filter(|&(pid, _)| pid as u32 != me)
        .map(|(pid, kv)| (pid, String::from_utf8_lossy(&kv[prefix.len()..]).into_owned()))
        .collect()
}

/// Every live (not zombie) process with an environment entry that `hit`
/// accepts, with that entry.
fn scan_environ(hit: impl Fn(&[u8]) -> bool) -> Vec<(i32, Vec<u8>)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(env) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        let Some(kv) = env.split(|&b| b == 0).find(|kv| hit(kv)) else {
            continue;
        };
        let zombie = std::fs::read_to_string(entry.path().join("stat"))
            .ok()
            .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with('Z')))
            .unwrap_or(false);
        if !zombie {
            out.push((pid, kv.to_vec()));
        }
    }
    out
}

/// The most taken from a pipe at a time. Read onto the stack when the pipe
/// is readable, so a step waiting between lines holds no buffer (a
/// thousand running steps held two of 4 KiB each).
const READ_CHUNK: usize = 8 * 1024;

/// Reads one of a step's output pipes until it ends, handing its lines to
/// `tx`.
async fn read_pipe(fd: Option<OwnedFd>, stream: Stream, tx: mpsc::Sender<OutputLine>) {
    let Some(fd) = fd.and_then(|fd| {
        use nix::fcntl::{FcntlArg, OFlag, fcntl};
        let flags = OFlag::from_bits_truncate(fcntl(&fd, FcntlArg::F_GETFL).ok()?);
        fcntl(&fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)).ok()?;
        // SAFETY: the `AsyncFd` owns the descriptor, which stays open (and
        // the same pipe) until it is dropped.
        unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }.ok()
    }) else {
        return;
    };
    let mut lines = super::lines::Lines::default();
    let mut done = Vec::new();
    loop {
        let Ok(mut ready) = fd.readable().await else {
            break;
        };
        let read = ready.try_io(|fd| {
            let mut buf = [0u8; READ_CHUNK];
            let n = nix::unistd::read(fd.get_ref(), &mut buf)?;
            lines.push(&buf[..n], |text, partial| done.push((text, partial)));
            Ok(n)
        });
        let ended = match read {
            // Not readable after all: wait again.
            Err(_) => false,
            Ok(Ok(n)) => n == 0,
            Ok(Err(e)) => e.kind() != std::io::ErrorKind::Interrupted,
        };
        // Taken, not drained: a read of many short lines leaves no room
        // behind for the rest of the step.
        super::lines::send(&tx, stream, std::mem::take(&mut done)).await;
        if ended {
            break;
        }
    }
    lines.finish(|text, partial| done.push((text, partial)));
    super::lines::send(&tx, stream, done).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(dir: &Path, shell: &[&str], path: &Path) -> StepSpec {
        StepSpec {
            script: "echo the-script-ran\n".into(),
            script_dir: dir.join("steps"),
            env: std::sync::Arc::new([("PATH".to_string(), path.display().to_string())].into()),
            workdir: dir.join("ws"),
            deadline: None,
            kill_grace: Duration::from_secs(1),
            tag: format!("shell-test-{}", std::process::id()),
            container: None,
            shell: Some(shell.iter().map(|s| s.to_string()).collect()),
            usage: Default::default(),
        }
    }

    async fn lines(spec: StepSpec) -> (StepEnd, Vec<String>) {
        let (tx, mut rx) = mpsc::channel(64);
        let end = run(spec, tx, CancellationToken::new()).await;
        let mut got = Vec::new();
        while let Ok(l) = rx.try_recv() {
            got.push(l.text);
        }
        (end, got)
    }

    #[test]
    fn shells_read_their_script_from_memory_other_interpreters_from_a_file() {
        let line = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(reads_script_as_named(None), "sh -e");
        for shell in [
            &["bash", "--noprofile", "--norc", "-eo", "pipefail", "{0}"][..],
            &["/bin/sh", "-e", "{0}"],
        ] {
            assert!(reads_script_as_named(Some(&line(shell))), "{shell:?}");
        }
        for other in [
            &["node", "{0}"][..],
            &["pwsh", "-command", ". '{0}'"],
            &["python", "{0}"],
            &["bash", "-c", "node {0}"],
            &["sh", "-c", "cat {0} | sh", "{0}"],
        ] {
            assert!(!reads_script_as_named(Some(&line(other))), "{other:?}");
        }
    }

    #[tokio::test]
    async fn a_step_is_not_charged_with_memory_trackside_freed() {
        // 96 MiB touched and unmapped: trackside's size falls back, its peak
        // stays, and a step started now is charged that peak at its exec.
        const SIZE: usize = 96 << 20;
        // SAFETY: a fresh private anonymous mapping, written within its
        // length, then unmapped; nothing else refers to it.
        unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            assert_ne!(p, libc::MAP_FAILED);
            std::ptr::write_bytes(p.cast::<u8>(), 1, SIZE);
            assert_eq!(libc::munmap(p, SIZE), 0);
        }
        assert!(super::super::reap::own_peak() >= SIZE as u64);
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("ws")).expect("mkdir");
        let mut step = spec(dir.path(), &["/bin/sh", "-e", "{0}"], Path::new("/usr/bin:/bin"));
        step.script = "true\n".into();
        let usage = step.usage.clone();
        let (end, _) = lines(step).await;
        assert_eq!(end, StepEnd::Exited(0));
        // `true` used next to nothing of its own.
        assert_eq!(usage.bytes(), None, "the step was charged trackside's peak");
    }

    #[tokio::test]
    async fn both_streams_come_whole_through_a_flood_and_an_unfinished_last_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("ws")).unwrap();
        let mut s = spec(dir.path(), &[], Path::new("/usr/bin:/bin"));
        s.shell = None;
        // Far more than a pipe holds (64 KiB), both streams at once, and a
        // last line without its newline.
        s.script =
            "i=0\nwhile [ $i -lt 20000 ]; do echo out-$i; echo err-$i >&2; i=$((i+1)); done\nprintf 'no newline'\n"
                .into();
        let (tx, mut rx) = mpsc::channel(64);
        let collect = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(l) = rx.recv().await {
                got.push(l);
            }
            got
        });
        let end = run(s.clone(), tx, CancellationToken::new()).await;
        assert!(matches!(end, StepEnd::Exited(0)), "{end:?}");
        let got = collect.await.unwrap();
        assert!(got.iter().all(|l| !l.partial));
        let of = |stream| {
            got.iter()
                .filter(|l| l.stream == stream)
                .map(|l| l.text.clone())
                .collect::<Vec<_>>()
        };
        let mut want: Vec<String> = (0..20000).map(|i| format!("out-{i}")).collect();
        want.push("no newline".into());
        assert_eq!(of(Stream::Stdout), want);
        assert_eq!(
            of(Stream::Stderr),
            (0..20000).map(|i| format!("err-{i}")).collect::<Vec<_>>()
        );
        // Nobody listening: the pipes are still drained, and the step ends.
        let (tx, rx) = mpsc::channel(1);
        drop(rx);
        let end = tokio::time::timeout(Duration::from_secs(60), run(s, tx, CancellationToken::new()))
            .await
            .expect("the step ended");
        assert!(matches!(end, StepEnd::Exited(0)), "{end:?}");
    }

    #[tokio::test]
    async fn a_bash_step_runs_its_script_from_memory_and_leaves_no_file() {
        if !["/bin/bash", "/usr/bin/bash"].iter().any(|p| Path::new(p).exists()) {
            assert!(std::env::var_os("CI").is_none(), "bash is on every CI machine");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let mut s = spec(dir.path(), &["bash", "-e", "{0}"], Path::new("/usr/bin:/bin"));
        // Its program's name is the path it was found at, as GitHub's runner
        // starts it: bash then looks for itself on no PATH.
        s.script = "echo \"$0\"\ntr '\\0' ' ' < /proc/$$/cmdline; echo\n".into();
        let steps = s.script_dir.clone();
        let (end, got) = lines(s).await;
        assert!(matches!(end, StepEnd::Exited(0)), "{end:?} {got:?}");
        assert!(got.len() == 2 && got[0].starts_with("/proc/"), "{got:?}");
        let found = program_path("bash", &spec(dir.path(), &[], Path::new("/usr/bin:/bin"))).expect("bash");
        assert_eq!(got[1], format!("{} -e {} ", found.display(), got[0]), "{got:?}");
        assert!(!steps.exists(), "no script file was made in {}", steps.display());
    }

    #[tokio::test]
    async fn a_steps_own_program_is_found_on_its_path_and_a_missing_one_is_a_clear_failure() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        // An interpreter of the step's own, first on its PATH, and a file of
        // the same kind that may not be run, which is passed over.
        let sh = shell_path().display().to_string();
        std::fs::write(
            bin.join("myshell"),
            format!("#!{sh}\necho via-myshell\nexec {sh} -e \"$1\"\n"),
        )
        .unwrap();
        std::fs::set_permissions(bin.join("myshell"), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(bin.join("notrun"), "#!/bin/sh\necho never\n").unwrap();
        std::fs::set_permissions(bin.join("notrun"), std::fs::Permissions::from_mode(0o644)).unwrap();
        let path = std::env::join_paths([bin.clone(), PathBuf::from("/usr/bin"), PathBuf::from("/bin")]).unwrap();
        let s = spec(dir.path(), &["myshell", "{0}"], Path::new(&path));
        assert_eq!(program_path("myshell", &s), Some(bin.join("myshell")));
        assert_eq!(program_path("notrun", &s), None);
        assert_eq!(
            program_path("./bin/myshell", &s),
            None,
            "relative to the step's directory"
        );
        assert_eq!(
            program_path(&bin.join("myshell").display().to_string(), &s),
            Some(bin.join("myshell"))
        );
        let (end, got) = lines(s).await;
        assert_eq!(end, StepEnd::Exited(0), "{got:?}");
        assert_eq!(got, ["via-myshell", "the-script-ran"]);
        // Without a `#!` line it is run as `execvp` runs it: by /bin/sh.
        std::fs::write(bin.join("plain"), "echo via-plain\nexec sh -e \"$1\"\n").unwrap();
        std::fs::set_permissions(bin.join("plain"), std::fs::Permissions::from_mode(0o755)).unwrap();
        let (end, got) = lines(spec(dir.path(), &["plain", "{0}"], Path::new(&path))).await;
        assert_eq!(end, StepEnd::Exited(0), "{got:?}");
        assert_eq!(got, ["via-plain", "the-script-ran"]);
        // A first match whose interpreter is missing: the next one on PATH
        // runs, as `execvp` goes on searching.
        let (broken, good) = (dir.path().join("broken"), dir.path().join("good"));
        for (d, body) in [
            (&broken, "#!/nonexistent/interpreter\n".to_string()),
            (&good, format!("#!{sh}\necho via-good\nexec {sh} -e \"$1\"\n")),
        ] {
            std::fs::create_dir_all(d).unwrap();
            std::fs::write(d.join("tool"), body).unwrap();
            std::fs::set_permissions(d.join("tool"), std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let both = std::env::join_paths([broken, good, PathBuf::from("/usr/bin"), PathBuf::from("/bin")]).unwrap();
        let (end, got) = lines(spec(dir.path(), &["tool", "{0}"], Path::new(&both))).await;
        assert_eq!(end, StepEnd::Exited(0), "{got:?}");
        assert_eq!(got, ["via-good", "the-script-ran"]);
        // A relative PATH entry is from the step's directory.
        let tools = dir.path().join("ws/tools");
        std::fs::create_dir_all(&tools).unwrap();
        std::fs::copy(bin.join("myshell"), tools.join("local")).unwrap();
        let rel = spec(dir.path(), &["local", "{0}"], Path::new("tools:/usr/bin:/bin"));
        assert_eq!(program_path("local", &rel), Some(tools.join("local")));
        let (end, _) = lines(spec(dir.path(), &["no-such-shell", "{0}"], Path::new(&path))).await;
        match end {
            StepEnd::SpawnFailed(m) => assert!(m.contains("No such file") || m.contains("not found"), "{m}"),
            other => panic!("{other:?}"),
        }
    }
}
