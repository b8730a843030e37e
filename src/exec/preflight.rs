//! Preflight checks: what must hold on this machine before any job starts
//! (`preflight:` in a pipeline and in `<state>/config.yml`; `trackside
//! doctor` runs them on their own). Each check measures, then says what it
//! found and, when it fails, what to do.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::pipeline::model::Preflight;

/// How long a `tcp` check waits for its connection.
const TCP_WAIT: Duration = Duration::from_secs(3);
/// How long a `command` check may run.
const COMMAND_WAIT: Duration = Duration::from_secs(60);
/// The most of a command's output kept for its message.
const COMMAND_OUTPUT: usize = 64 << 10;

/// What one check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The check as written: `disk_free .`, `tcp registry.local:5000`.
    pub check: String,
    pub ok: bool,
    /// What it measured or saw, for people.
    pub found: String,
    /// What to do about a failure.
    pub fix: Option<String>,
}

impl Outcome {
    /// `preflight: disk_free .: only 0.8 GiB free on /var/lib/docker, 5G required; free space (...)`.
    pub fn line(&self) -> String {
        match &self.fix {
            Some(fix) if !self.ok => format!("{}: {}; {fix}", self.check, self.found),
            _ => format!("{}: {}", self.check, self.found),
        }
    }
}

/// Runs `checks` (relative paths and commands in `project`), in order.
pub async fn run(checks: &[Preflight], project: &Path) -> Vec<Outcome> {
    let mut out = Vec::with_capacity(checks.len());
    for c in checks {
        out.push(match c {
            Preflight::DiskFree { path, min, min_text } => disk_free(&project.join(path), path, *min, min_text),
            Preflight::MemoryFree { min, min_text } => memory_free(*min, min_text),
            Preflight::Docker => docker().await,
            Preflight::Tcp(addr) => tcp(addr).await,
            Preflight::Command(cmd) => command(cmd, project).await,
        });
    }
    out
}

pub use crate::protocol::view::gib;

fn disk_free(at: &Path, written: &str, min: u64, min_text: &str) -> Outcome {
    let check = format!("disk_free {written}");
    match nix::sys::statvfs::statvfs(at) {
        Ok(s) => {
            let free = s.blocks_available().saturating_mul(s.fragment_size());
            let place = mount_of(at).unwrap_or_else(|| at.to_path_buf());
            let ok = free >= min;
            Outcome {
                check,
                ok,
                found: if ok {
                    format!("{} free on {} (at least {min_text})", gib(free), place.display())
                } else {
                    format!("only {} free on {}, {min_text} required", gib(free), place.display())
                },
                fix: (!ok).then(|| {
                    "free space: `trackside gc` removes old runs and their workspaces, `docker system prune` unused images"
                        .into()
                }),
            }
        }
        Err(e) => Outcome {
            check,
            ok: false,
            found: format!("cannot measure {}: {e}", at.display()),
            fix: Some("name a folder that exists (`path:` is relative to the project)".into()),
        },
    }
}

/// The mount point holding `path` (from /proc/self/mounts), for messages.
fn mount_of(path: &Path) -> Option<PathBuf> {
    let path = std::fs::canonicalize(path).ok()?;
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .map(|m| PathBuf::from(m.replace("\\040", " ")))
        .filter(|m| path.starts_with(m))
        .max_by_key(|m| m.components().count())
}

fn memory_free(min: u64, min_text: &str) -> Outcome {
    let check = "memory_free".to_string();
    let available = std::fs::read_to_string("/proc/meminfo").ok().and_then(|t| {
        t.lines()
            .find_map(|l| l.strip_prefix("MemAvailable:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map(|kib| kib.saturating_mul(1024))
    });
    match available {
        Some(a) => {
            let ok = a >= min;
            Outcome {
                check,
                ok,
                found: if ok {
                    format!("{} available (at least {min_text})", gib(a))
                } else {
                    format!("only {} available, {min_text} required", gib(a))
                },
                fix: (!ok).then(|| "stop what holds memory, or run fewer jobs at once (-j)".into()),
            }
        }
        None => Outcome {
            check,
            ok: false,
            found: "cannot read MemAvailable from /proc/meminfo".into(),
            fix: Some("this check needs Linux's /proc".into()),
        },
    }
}

async fn docker() -> Outcome {
    let check = "docker".to_string();
    match super::docker::DockerExecutor::connect().await {
        Ok(_) => Outcome {
            check,
            ok: true,
            found: format!("the daemon at {} answers", super::docker::daemon_address()),
            fix: None,
        },
        Err(e) => Outcome {
            check,
            ok: false,
            found: e.to_string(),
            fix: None,
        },
    }
}

async fn tcp(addr: &str) -> Outcome {
    let check = format!("tcp {addr}");
    let fail = |found: String, fix: &str| Outcome {
        check: check.clone(),
        ok: false,
        found,
        fix: Some(fix.to_string()),
    };
    let resolved = match tokio::time::timeout(TCP_WAIT, tokio::net::lookup_host(addr)).await {
        Ok(Ok(a)) => a.collect::<Vec<_>>(),
        Ok(Err(e)) => {
            return fail(
                format!("{addr} does not resolve: {e}"),
                "check the name (DNS, /etc/hosts)",
            );
        }
        Err(_) => {
            return fail(
                format!("{addr} did not resolve within {} s", TCP_WAIT.as_secs()),
                "check the name server",
            );
        }
    };
    let Some(first) = resolved.first() else {
        return fail(
            format!("{addr} resolves to no address"),
            "check the name (DNS, /etc/hosts)",
        );
    };
    match tokio::time::timeout(TCP_WAIT, tokio::net::TcpStream::connect(first)).await {
        Ok(Ok(_)) => Outcome {
            check: check.clone(),
            ok: true,
            found: format!("{first} takes connections"),
            fix: None,
        },
        Ok(Err(e)) => fail(
            format!("{addr} ({first}) refuses: {e}"),
            "start the service, or check the port",
        ),
        Err(_) => fail(
            format!("{addr} ({first}) did not answer within {} s", TCP_WAIT.as_secs()),
            "check the route and any firewall between here and it",
        ),
    }
}

async fn command(cmd: &str, project: &Path) -> Outcome {
    use tokio::io::AsyncReadExt;
    let check = format!("command {cmd}");
    let fail = |found: String| Outcome {
        check: check.clone(),
        ok: false,
        found,
        fix: Some("make the command pass, or remove it from `preflight`".into()),
    };
    let child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .current_dir(project)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .process_group(0)
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return fail(format!("cannot start `sh`: {e}")),
    };
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return fail("started without its pipes".into());
    };
    let run = async {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let (mut o, mut e) = (stdout.take(COMMAND_OUTPUT as u64), stderr.take(COMMAND_OUTPUT as u64));
        let _ = tokio::join!(o.read_to_end(&mut out), e.read_to_end(&mut err));
        let status = child.wait().await;
        (status, out, err)
    };
    let Ok((status, out, err)) = tokio::time::timeout(COMMAND_WAIT, run).await else {
        return fail(format!("still running after {} s (stopped)", COMMAND_WAIT.as_secs()));
    };
    // The last lines it wrote, for the message.
    let text = format!("{}{}", String::from_utf8_lossy(&out), String::from_utf8_lossy(&err));
    let tail: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = tail[tail.len().saturating_sub(3)..].join(" | ");
    match status {
        Ok(s) if s.success() => Outcome {
            check: check.clone(),
            ok: true,
            found: "exits 0".into(),
            fix: None,
        },
        Ok(s) => fail(match tail.is_empty() {
            true => format!("exits {}", s.code().map_or("by a signal".into(), |c| c.to_string())),
            false => format!(
                "exits {}: {tail}",
                s.code().map_or("by a signal".into(), |c| c.to_string())
            ),
        }),
        Err(e) => fail(format!("cannot wait for it: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn each_check_measures_and_says_what_to_do_when_it_fails() {
        let dir = tempfile::tempdir().unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let open = listener.local_addr().unwrap().to_string();
        // A port nothing listens on: bound, then let go.
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .to_string();
        let checks = vec![
            Preflight::DiskFree {
                path: ".".into(),
                min: 1,
                min_text: "1".into(),
            },
            Preflight::DiskFree {
                path: ".".into(),
                min: u64::MAX,
                min_text: "16E".into(),
            },
            Preflight::DiskFree {
                path: "missing".into(),
                min: 1,
                min_text: "1".into(),
            },
            Preflight::MemoryFree {
                min: 1,
                min_text: "1".into(),
            },
            Preflight::MemoryFree {
                min: u64::MAX,
                min_text: "16E".into(),
            },
            Preflight::Tcp(open.clone()),
            Preflight::Tcp(closed.clone()),
            Preflight::Tcp("no-such-host.invalid:80".into()),
            Preflight::Command("test -d .".into()),
            Preflight::Command("echo checking; echo 'VPN is down' >&2; exit 3".into()),
        ];
        let out = run(&checks, dir.path()).await;
        let oks: Vec<bool> = out.iter().map(|o| o.ok).collect();
        assert_eq!(
            oks,
            [true, false, false, true, false, true, false, false, true, false],
            "{out:#?}"
        );
        assert!(
            out[1].found.starts_with("only ") && out[1].found.ends_with("16E required"),
            "{:?}",
            out[1]
        );
        assert!(out[1].line().contains("`trackside gc`"), "{}", out[1].line());
        assert!(out[2].found.contains("cannot measure"), "{:?}", out[2]);
        assert!(
            out[4].line().contains("only ") && out[4].line().contains("-j"),
            "{:?}",
            out[4]
        );
        assert!(out[6].found.contains("refuses"), "{:?}", out[6]);
        assert!(out[7].found.contains("does not resolve"), "{:?}", out[7]);
        assert_eq!(out[9].found, "exits 3: checking | VPN is down");
        drop(listener);
    }
}
