//! Process identity: a pid together with its start time, so a pid reused
//! by another process is never mistaken for the one that died. Records
//! (a run's owner), leftovers (processes a crashed trackside left) and the
//! sweep that finds them all go by this. And [`background_thread`]: how
//! a thread of trackside's whose work nothing waits for gives way, and
//! [`find_program`]: where a program named without a folder is.

use std::sync::OnceLock;

/// A process's start time in clock ticks since boot (field 22 of
/// `/proc/PID/stat`), which tells a pid's owner from a later reuse.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last `)`.
    let rest = stat.rsplit_once(')')?.1;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// This trackside as an owner: `<pid>:<start time>`.
pub fn owner() -> &'static str {
    static OWNER: OnceLock<String> = OnceLock::new();
    OWNER.get_or_init(|| {
        let pid = std::process::id();
        format!("{pid}:{}", start_time(pid).unwrap_or(0))
    })
}

/// Whether the process `pid` that started at `start` still runs: not gone,
/// not another process under a reused pid, and not a zombie (dead, only
/// not yet reaped by its parent).
pub fn owner_alive(pid: u32, start: u64) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return false;
    };
    let mut fields = rest.split_whitespace();
    let state = fields.next();
    !matches!(state, Some("Z" | "X")) && fields.nth(18).and_then(|s| s.parse().ok()) == Some(start)
}

/// Whether an owner written by [`owner`] still runs (`false` for garbage).
pub fn alive(owner: &str) -> bool {
    parse_owner(owner).is_some_and(|(pid, start)| owner_alive(pid, start))
}

/// `<pid>:<start time>` as [`owner`] writes it.
pub fn parse_owner(s: &str) -> Option<(u32, u64)> {
    let (pid, start) = s.split_once(':')?;
    Some((pid.parse().ok()?, start.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_owner_is_a_pid_with_its_start_time() {
        let (pid, start) = parse_owner(owner()).expect("owner");
        assert_eq!(pid, std::process::id());
        assert!(owner_alive(pid, start));
        assert!(!owner_alive(pid, start + 1), "a reused pid is another process");
        assert_eq!(parse_owner("12:x"), None);
    }

    #[test]
    #[allow(clippy::zombie_processes)] // reaped below, once looked at
    fn a_zombie_is_not_alive() {
        let mut child = std::process::Command::new("true").spawn().expect("true");
        let pid = child.id();
        let start = start_time(pid).expect("its start");
        // Dead but not reaped: a zombie until `wait`.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z")) {
            assert!(std::time::Instant::now() < deadline, "true did not end");
            std::thread::yield_now();
        }
        assert!(!owner_alive(pid, start));
        let _ = child.wait();
    }
}

/// Lowers the calling thread's scheduling priority by 10 (nice; Linux
/// keeps one per thread, `who = 0` is the calling thread, and a process
/// it starts inherits it), for work beside a run that nothing waits for
/// soon: writing the resolved pipeline, asking git for the history's
/// facts. With two cores, that work took CPU from the way to the first
/// job (parsing, the record, the slot table, the first spawns); now it
/// takes what the run leaves idle. Best effort: a failure leaves the
/// priority as it was.
pub fn background_thread() {
    // SAFETY: getpriority and setpriority take no pointers. A nice of -1 is
    // a value here, not an error: `who = 0` always names this thread.
    let now = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
    // SAFETY: as above; the kernel keeps the value within -20..=19.
    let _ = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, now.saturating_add(10).min(19)) };
}

/// Git, as [`find_program`] finds it on trackside's own PATH, looked up
/// once: every git trackside starts (the run's facts and repository,
/// `trackside actions pull`) is this one. Plain `git` when none is found,
/// so that the start fails saying so.
pub fn git_program() -> &'static std::path::Path {
    static GIT: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    GIT.get_or_init(|| find_program("git", std::env::var_os("PATH").as_deref()).unwrap_or_else(|| "git".into()))
}

/// The first file named `program` this user may run in the absolute
/// folders of `path` (a `PATH` value), as `execvp` would find it, relative
/// entries left out: a folder relative to wherever trackside happens to
/// run is no place to take a program from. `None` when there is none.
///
/// Naming the file found spares each start the failed `execve` of every
/// folder before it (about 0.25 ms a `git` with seven folders ahead).
pub fn find_program(program: &str, path: Option<&std::ffi::OsStr>) -> Option<std::path::PathBuf> {
    std::env::split_paths(path?)
        .filter(|d| d.is_absolute())
        .map(|d| d.join(program))
        // A file this user may run (`execvp` goes on past one it may not).
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file())
                && nix::unistd::access(p.as_path(), nix::unistd::AccessFlags::X_OK).is_ok()
        })
}

#[cfg(test)]
mod find_program_tests {
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_first_executable_file_of_an_absolute_folder_is_found() {
        let root = tempfile::tempdir().expect("temp dir");
        let [a, b, c] = ["a", "b", "c"].map(|d| root.path().join(d));
        for d in [&a, &b, &c] {
            std::fs::create_dir(d).expect("dir");
        }
        // a: not executable; b: a folder of that name; c: the program.
        std::fs::write(a.join("tool"), "").expect("write");
        std::fs::create_dir(b.join("tool")).expect("dir");
        std::fs::write(c.join("tool"), "").expect("write");
        std::fs::set_permissions(c.join("tool"), std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let path = std::env::join_paths([&a, &b, &c]).expect("join");
        assert_eq!(super::find_program("tool", Some(&path)), Some(c.join("tool")));
        assert_eq!(super::find_program("missing", Some(&path)), None);
        assert_eq!(super::find_program("tool", None), None);
    }

    #[test]
    fn a_relative_folder_is_never_searched() {
        let root = tempfile::tempdir().expect("temp dir");
        std::fs::write(root.path().join("tool"), "").expect("write");
        std::fs::set_permissions(root.path().join("tool"), std::fs::Permissions::from_mode(0o755)).expect("chmod");
        // Relative to the test's directory: were it searched from there,
        // "." would not find it; from `root` it would. Neither may happen.
        let rel = relative_to_cwd(root.path());
        let path = std::env::join_paths([rel.as_path(), std::path::Path::new("")]).expect("join");
        assert_eq!(super::find_program("tool", Some(&path)), None);
    }

    /// `dir` as a path relative to the current directory (through `/`).
    fn relative_to_cwd(dir: &std::path::Path) -> std::path::PathBuf {
        let cwd = std::env::current_dir().expect("cwd");
        let ups = cwd.components().count().saturating_sub(1);
        let mut rel = std::path::PathBuf::new();
        for _ in 0..ups {
            rel.push("..");
        }
        rel.join(dir.strip_prefix("/").expect("absolute"))
    }
}

#[cfg(test)]
mod background_tests {
    #[test]
    fn a_background_thread_is_niced_and_others_are_not() {
        let before = nice_of_this_thread();
        let niced = std::thread::spawn(|| {
            super::background_thread();
            nice_of_this_thread()
        })
        .join()
        .expect("thread");
        assert_eq!(niced, (before + 10).min(19));
        assert_eq!(nice_of_this_thread(), before, "only the calling thread");
    }

    /// Field 19 of `/proc/thread-self/stat`: the thread's nice value.
    fn nice_of_this_thread() -> i64 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("stat");
        let after_name = &stat[stat.rfind(')').expect("name") + 2..];
        after_name
            .split(' ')
            .nth(16)
            .and_then(|f| f.parse().ok())
            .expect("nice")
    }
}
