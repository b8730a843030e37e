//! Starting a host step's shell the cheapest way Linux allows, straight into
//! its cgroup.
//!
//! std's `Command` starts a process with `posix_spawn` (a `vfork`-like
//! clone that shares trackside's memory until the `exec`), and the step
//! then joins its cgroup by writing its pid to `cgroup.procs`. Moving a
//! process between cgroups takes the kernel's cgroup write lock, and the
//! first move after a quiet moment waits for an RCU grace period: 10-15 ms
//! on this kind of machine, paid by the first steps of every run (and again
//! after any pause). `clone3` with `CLONE_INTO_CGROUP` (Linux 5.7) creates
//! the process in its cgroup instead: no move, no lock, no wait. It also
//! hands back a pidfd (`CLONE_PIDFD`) and resets signal handlers
//! (`CLONE_CLEAR_SIGHAND`), which `posix_spawn` does with 128 system calls.
//!
//! Like `posix_spawn`, the child shares trackside's memory (`CLONE_VM`) and
//! the calling thread waits until it has called `exec` (`CLONE_VFORK`), so
//! no page table is copied. The child runs on a stack of its own and makes
//! only plain system calls: reset its signal mask and SIGPIPE, put the
//! pipes on 0, 1 and 2, start its own process group, change directory and
//! `execve`. Everything it needs is prepared before the clone. An `execve`
//! that fails leaves its errno where the parent reads it.
//!
//! Only on x86_64 Linux (the system call's stack switch needs a few lines
//! of assembly); elsewhere, and wherever the kernel or a seccomp filter
//! refuses `clone3`, [`spawn`] says [`Unsupported`](io::ErrorKind::Unsupported)
//! and the caller uses `Command`.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// A started process: its pid, a pidfd for it, and the read ends of its
/// standard output and error.
pub struct Spawned {
    pub pid: libc::pid_t,
    pub pidfd: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// What to start: an absolute program path, its arguments (the first is
/// its name), its whole environment, its working directory and, where
/// there is one, the cgroup directory it starts in. Standard input is
/// `/dev/null`; it leads a process group of its own.
pub struct Request<'a> {
    pub program: &'a Path,
    pub args: &'a [&'a OsStr],
    pub env: Vec<(&'a OsStr, &'a OsStr)>,
    pub cwd: &'a Path,
    pub cgroup: Option<&'a Path>,
}

fn c_string(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in an argument"))
}

/// Starts `req`. `Unsupported` when this machine cannot start it this way
/// (the caller falls back to `Command`); other errors are the start's own
/// (no such program, a working directory that cannot be entered).
pub fn spawn(req: &Request<'_>) -> io::Result<Spawned> {
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    {
        linux::spawn(req)
    }
    #[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
    {
        let _ = req;
        Err(io::ErrorKind::Unsupported.into())
    }
}

/// The argument, environment and path strings as C strings, built before
/// the clone (the child may not allocate). The arguments and the
/// environment are one buffer of NUL-terminated strings (a step's hundred
/// or so variables: one allocation, not one each), which `argv` and `envp`
/// point into.
struct Prepared {
    program: CString,
    cwd: CString,
    _strings: Vec<u8>,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
}

impl Prepared {
    fn new(req: &Request<'_>) -> io::Result<Prepared> {
        let no_nul = |b: &[u8]| match memchr::memchr(0, b) {
            Some(_) => Err(io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in an argument")),
            None => Ok(()),
        };
        let size = req.args.iter().map(|a| a.len() + 1).sum::<usize>()
            + req.env.iter().map(|(k, v)| k.len() + v.len() + 2).sum::<usize>();
        let mut strings = Vec::with_capacity(size);
        let mut starts = Vec::with_capacity(req.args.len() + req.env.len());
        for a in req.args {
            no_nul(a.as_bytes())?;
            starts.push(strings.len());
            strings.extend_from_slice(a.as_bytes());
            strings.push(0);
        }
        for (k, v) in &req.env {
            no_nul(k.as_bytes())?;
            no_nul(v.as_bytes())?;
            starts.push(strings.len());
            strings.extend_from_slice(k.as_bytes());
            strings.push(b'=');
            strings.extend_from_slice(v.as_bytes());
            strings.push(0);
        }
        // The buffer is complete (its capacity was never exceeded, so it
        // never moved), and a Vec's heap buffer stays where it is when the
        // Vec itself moves: the pointers stay valid.
        let base = strings.as_ptr().cast::<libc::c_char>();
        let at = |start: &usize| base.wrapping_add(*start);
        let (arg_starts, env_starts) = starts.split_at(req.args.len());
        let mut argv: Vec<*const libc::c_char> = arg_starts.iter().map(at).collect();
        argv.push(std::ptr::null());
        let mut envp: Vec<*const libc::c_char> = env_starts.iter().map(at).collect();
        envp.push(std::ptr::null());
        Ok(Prepared {
            program: c_string(req.program.as_os_str().as_bytes())?,
            cwd: c_string(req.cwd.as_os_str().as_bytes())?,
            _strings: strings,
            argv,
            envp,
        })
    }
}

/// A pipe whose both ends close on exec (the child's copies on 1 and 2 do
/// not: `dup2` clears the flag).
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array it is given.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both were just opened and are owned by nothing else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn open(path: &[u8], flags: libc::c_int) -> io::Result<OwnedFd> {
    let path = c_string(path)?;
    // SAFETY: a NUL-terminated path and flags; a new descriptor or -1.
    let fd = unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: just opened, owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
mod linux {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    const CLONE_VM: u64 = 0x100;
    const CLONE_VFORK: u64 = 0x4000;
    const CLONE_PIDFD: u64 = 0x1000;
    const CLONE_CLEAR_SIGHAND: u64 = 0x1_0000_0000;
    const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
    const SYS_CLONE3: libc::c_long = 435;

    /// The kernel's `struct clone_args` (version 2, with `cgroup`).
    #[repr(C)]
    struct CloneArgs {
        flags: u64,
        pidfd: u64,
        child_tid: u64,
        parent_tid: u64,
        exit_signal: u64,
        stack: u64,
        stack_size: u64,
        tls: u64,
        set_tid: u64,
        set_tid_size: u64,
        cgroup: u64,
    }

    /// What the child reads, and where it leaves an `execve` error.
    #[repr(C)]
    struct Child {
        program: *const libc::c_char,
        argv: *const *const libc::c_char,
        envp: *const *const libc::c_char,
        cwd: *const libc::c_char,
        stdin: libc::c_int,
        stdout: libc::c_int,
        stderr: libc::c_int,
        /// 0, or the errno of the step that failed.
        err: libc::c_int,
    }

    /// Set once `clone3` was refused: every later step uses `Command`.
    static REFUSED: AtomicBool = AtomicBool::new(false);

    /// The child's stack. The child calls only thin system call wrappers.
    const STACK: usize = 64 * 1024;

    pub(super) fn spawn(req: &Request<'_>) -> io::Result<Spawned> {
        if REFUSED.load(Ordering::Relaxed) {
            return Err(io::ErrorKind::Unsupported.into());
        }
        let prepared = Prepared::new(req)?;
        let null = open(b"/dev/null", libc::O_RDONLY)?;
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        // A cgroup that cannot be opened is as good as none: the caller
        // starts the step the other way, which joins it or runs without.
        let cgroup = match req.cgroup {
            Some(dir) => Some(
                open(dir.as_os_str().as_bytes(), libc::O_PATH | libc::O_DIRECTORY)
                    .map_err(|_| io::Error::from(io::ErrorKind::Unsupported))?,
            ),
            None => None,
        };
        let mut child = Child {
            program: prepared.program.as_ptr(),
            argv: prepared.argv.as_ptr(),
            envp: prepared.envp.as_ptr(),
            cwd: prepared.cwd.as_ptr(),
            stdin: null.as_raw_fd(),
            stdout: out_w.as_raw_fd(),
            stderr: err_w.as_raw_fd(),
            err: 0,
        };
        // 16-byte aligned top of stack, as the ABI wants before a call.
        let mut stack = vec![0u128; STACK / 16];
        let mut pidfd: libc::c_int = -1;
        let mut args = CloneArgs {
            flags: CLONE_VM | CLONE_VFORK | CLONE_PIDFD | CLONE_CLEAR_SIGHAND,
            pidfd: std::ptr::addr_of_mut!(pidfd) as u64,
            child_tid: 0,
            parent_tid: 0,
            exit_signal: libc::SIGCHLD as u64,
            stack: stack.as_mut_ptr() as u64,
            stack_size: STACK as u64,
            tls: 0,
            set_tid: 0,
            set_tid_size: 0,
            cgroup: cgroup.as_ref().map_or(0, |c| c.as_raw_fd() as u64),
        };
        if cgroup.is_some() {
            args.flags |= CLONE_INTO_CGROUP;
        }
        // SAFETY: `args` describes a stack of STACK bytes that stays alive
        // (and unused by this thread, which the kernel suspends until the
        // child execs or exits: CLONE_VFORK), and `child` points to data
        // that outlives the child's use of it. The child runs `run_child`,
        // which never returns.
        let ret = unsafe { clone3(&mut args, run_child, &mut child) };
        drop(stack);
        if ret < 0 {
            let e = io::Error::from_raw_os_error(-ret as i32);
            return match e.raw_os_error() {
                // Refused with a cgroup (the cgroup's own error, such as
                // one whose controllers forbid it): this step the other way.
                _ if cgroup.is_some() => {
                    tracing::debug!(
                        "clone3 into the step's cgroup refused ({e}): this step starts through posix_spawn"
                    );
                    Err(io::ErrorKind::Unsupported.into())
                }
                // No clone3 here (an old kernel, a seccomp filter), or
                // not with these flags: Command from now on.
                Some(libc::ENOSYS | libc::EPERM | libc::EINVAL | libc::E2BIG | libc::EOPNOTSUPP) => {
                    tracing::debug!("clone3 refused ({e}): steps start through posix_spawn");
                    REFUSED.store(true, Ordering::Relaxed);
                    Err(io::ErrorKind::Unsupported.into())
                }
                _ => Err(e),
            };
        }
        let pid = ret as libc::pid_t;
        // SAFETY: CLONE_PIDFD stored a new descriptor for the child.
        let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
        if child.err != 0 {
            // The child has exited (127) without exec: reap it here.
            let mut status = 0;
            // SAFETY: waits for our own child, which has exited.
            while unsafe { libc::waitpid(pid, &mut status, 0) } < 0
                && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted
            {}
            return Err(io::Error::from_raw_os_error(child.err));
        }
        Ok(Spawned {
            pid,
            pidfd,
            stdout: out_r,
            stderr: err_r,
        })
    }

    /// `clone3(args)`; in the child, `f(ctx)` on the new stack.
    ///
    /// # Safety
    /// `args` must describe a valid stack for the child and flags the
    /// caller has made safe; `f` must never return.
    unsafe fn clone3(args: &mut CloneArgs, f: unsafe extern "C" fn(*mut Child) -> !, ctx: *mut Child) -> libc::c_long {
        let ret: libc::c_long;
        // SAFETY: the parent returns from the system call with everything
        // but rax, rcx and r11 as it was. The child starts on the new stack
        // with the same registers (rax = 0) and calls `f(ctx)`, which
        // execs or exits; it never comes back here.
        unsafe {
            std::arch::asm!(
                "syscall",
                "test rax, rax",
                "jnz 2f",
                "xor ebp, ebp",
                "mov rdi, r13",
                "call r12",
                "ud2",
                "2:",
                inlateout("rax") SYS_CLONE3 => ret,
                in("rdi") args as *mut CloneArgs,
                in("rsi") std::mem::size_of::<CloneArgs>(),
                in("r12") f,
                in("r13") ctx,
                lateout("rcx") _,
                lateout("r11") _,
                options(nostack),
            );
        }
        ret
    }

    /// The child, between the clone and the exec: system calls only.
    unsafe extern "C" fn run_child(c: *mut Child) -> ! {
        // SAFETY: the parent keeps `*c` alive and does not touch it until
        // this process has exec'd or exited (CLONE_VFORK); each call below
        // is a plain system call on values prepared by the parent.
        unsafe {
            let c = &mut *c;
            let empty: libc::sigset_t = std::mem::zeroed();
            // Rust ignores SIGPIPE, and an ignored signal stays ignored
            // across exec (CLONE_CLEAR_SIGHAND resets only handlers).
            let mut dfl: libc::sigaction = std::mem::zeroed();
            dfl.sa_sigaction = libc::SIG_DFL;
            // `dup2` onto itself keeps close-on-exec: clear it instead.
            let onto = |from: libc::c_int, to: libc::c_int| {
                if from == to {
                    libc::fcntl(to, libc::F_SETFD, 0) < 0
                } else {
                    libc::dup2(from, to) < 0
                }
            };
            let failed = libc::sigaction(libc::SIGPIPE, &dfl, std::ptr::null_mut()) != 0
                || onto(c.stdin, 0)
                || onto(c.stdout, 1)
                || onto(c.stderr, 2)
                || libc::setpgid(0, 0) != 0
                || libc::chdir(c.cwd) != 0
                || libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut()) != 0
                || {
                    libc::execve(c.program, c.argv, c.envp);
                    true
                };
            if failed {
                c.err = *libc::__errno_location();
                if c.err == 0 {
                    c.err = libc::EIO;
                }
            }
            libc::_exit(127)
        }
    }
}

#[cfg(all(test, target_os = "linux", target_arch = "x86_64"))]
mod tests {
    use super::*;
    use std::io::Read;

    fn read_all(fd: OwnedFd) -> String {
        let mut s = String::new();
        let _ = std::fs::File::from(fd).read_to_string(&mut s);
        s
    }

    /// Starts `req` and waits for it: its pid, standard output and error,
    /// and wait status. On x86_64 Linux 5.7 or later clone3 must work: a
    /// seccomp filter refusing it fails here, loudly.
    fn finished(req: &Request<'_>) -> (libc::pid_t, String, String, i32) {
        let s = match spawn(req) {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        };
        let (out, err) = (read_all(s.stdout), read_all(s.stderr));
        let mut status = 0;
        // SAFETY: our own child.
        assert_eq!(unsafe { libc::waitpid(s.pid, &mut status, 0) }, s.pid);
        (s.pid, out, err, status)
    }

    #[test]
    fn a_shell_starts_with_its_environment_directory_pipes_and_group() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Field 5 of /proc/PID/stat is the process group.
        let script = "echo out:$PWD:$ONLY:$$:$(cut -d' ' -f5 /proc/$$/stat); echo err >&2; read x || echo eof";
        let args = [OsStr::new("sh"), OsStr::new("-c"), OsStr::new(script)];
        let req = Request {
            program: Path::new("/bin/sh"),
            args: &args,
            env: vec![(OsStr::new("ONLY"), OsStr::new("this"))],
            cwd: dir.path(),
            cgroup: None,
        };
        let (pid, out, err, status) = finished(&req);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "{status}");
        let real = std::fs::canonicalize(dir.path()).expect("canonical");
        // Its own process group: the group is its pid.
        assert_eq!(
            out,
            format!("out:{}:this:{}:{}\neof\n", real.display(), pid, pid),
            "standard input is /dev/null"
        );
        assert_eq!(err, "err\n");
    }

    /// Arguments and variables share one buffer: each arrives whole, the
    /// empty ones and a long one too, and a NUL in any is refused before
    /// anything starts.
    #[test]
    fn every_argument_and_variable_arrives_whole_and_a_nul_is_refused() {
        let long = "x".repeat(5000);
        let script = "printf '%s|' \"$0\" \"$1\" \"$2\" \"$3\"; printf '%s|%s|%s|%s' \"$A\" \"${EMPTY-unset}\" \"${#LONG}\" \"$B\"";
        let args = [
            OsStr::new("sh"),
            OsStr::new("-c"),
            OsStr::new(script),
            OsStr::new("zero"),
            OsStr::new(""),
            OsStr::new("two words"),
            OsStr::new("é"),
        ];
        let env = vec![
            (OsStr::new("A"), OsStr::new("a=b")),
            (OsStr::new("EMPTY"), OsStr::new("")),
            (OsStr::new("LONG"), OsStr::new(long.as_str())),
            (OsStr::new("B"), OsStr::new("last")),
        ];
        let req = Request {
            program: Path::new("/bin/sh"),
            args: &args,
            env,
            cwd: Path::new("/"),
            cgroup: None,
        };
        let (_, out, _, _) = finished(&req);
        assert_eq!(out, "zero||two words|é|a=b||5000|last");
        for env in [
            vec![(OsStr::new("A"), OsStr::new("a\0b"))],
            vec![(OsStr::new("A\0"), OsStr::new("b"))],
        ] {
            let req = Request { env, ..req };
            match spawn(&req) {
                Err(e) => assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}"),
                Ok(_) => panic!("started with a NUL in a variable"),
            }
        }
        let nul = [OsStr::new("sh"), OsStr::new("a\0b")];
        let req = Request { args: &nul, ..req };
        assert!(spawn(&req).is_err_and(|e| e.kind() == io::ErrorKind::InvalidInput));
    }

    #[test]
    fn a_program_that_cannot_start_is_an_error_not_a_child() {
        let args = [OsStr::new("nope")];
        let req = Request {
            program: Path::new("/nonexistent/program"),
            args: &args,
            env: Vec::new(),
            cwd: Path::new("/"),
            cgroup: None,
        };
        match spawn(&req) {
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "{e}"),
            Ok(_) => panic!("started a program that does not exist"),
        }
        let req = Request {
            program: Path::new("/bin/sh"),
            args: &args,
            env: Vec::new(),
            cwd: Path::new("/nonexistent/dir"),
            cgroup: None,
        };
        assert!(spawn(&req).is_err(), "a working directory that is not there");
    }

    #[test]
    fn sigpipe_is_back_to_its_default() {
        // `yes | head -1`: yes dies of SIGPIPE only if it is not ignored.
        let args = [
            OsStr::new("sh"),
            OsStr::new("-c"),
            OsStr::new("yes | head -1 >/dev/null; grep SigIgn /proc/self/status"),
        ];
        let req = Request {
            program: Path::new("/bin/sh"),
            args: &args,
            env: Vec::new(),
            cwd: Path::new("/"),
            cgroup: None,
        };
        let (_, out, _, _) = finished(&req);
        // SIGPIPE is signal 13: bit 12 of the ignored mask.
        let mask = out
            .split_whitespace()
            .nth(1)
            .and_then(|m| u64::from_str_radix(m, 16).ok())
            .expect("SigIgn");
        assert_eq!(mask & (1 << 12), 0, "{out}");
    }
}
