//! Who a command comes from, as the audit trail and the `steered` event
//! name people: `user@host`, and `(ssh from IP)` over SSH.

/// Who is steering: user@host, and the SSH client address when there is one.
pub fn who() -> String {
    // The login name: USER or LOGNAME as shells set them, else the account
    // of this process's uid (cron, systemd and `env -i` set neither).
    let uid = nix::unistd::Uid::current();
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .ok()
        .filter(|u| !u.is_empty());
    identity(uid.as_raw(), user, std::env::var("SSH_CLIENT").ok())
}

/// `user@host (ssh from IP)` for the account `uid` (or the login name
/// given), with the client address of `ssh_client` (`IP PORT PORT`). Every
/// part is made printable: it goes into logs and audit records.
pub fn identity(uid: u32, login: Option<String>, ssh_client: Option<String>) -> String {
    let user = login
        .or_else(|| {
            nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
                .ok()
                .flatten()
                .map(|u| u.name)
        })
        .unwrap_or_else(|| format!("uid {uid}"));
    let host = hostname();
    let printable = |s: &str| -> String { s.chars().filter(|c| !c.is_control()).take(64).collect() };
    let (user, host) = (printable(&user), printable(&host));
    match ssh_client.and_then(|s| s.split_whitespace().next().map(printable)) {
        Some(ip) => format!("{user}@{host} (ssh from {ip})"),
        None => format!("{user}@{host}"),
    }
}

/// This machine's name (`localhost` when the kernel does not say).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

/// Someone steering a run: the account (as the kernel reports a socket's
/// peer, or this process's) and how the audit trail names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Person {
    pub uid: u32,
    /// `user@host (ssh from IP)`.
    pub display: String,
}

impl Person {
    /// Whoever runs this trackside.
    pub fn me() -> Person {
        Person {
            uid: nix::unistd::Uid::effective().as_raw(),
            display: who(),
        }
    }

    /// The peer of a socket: its uid, and the SSH session of its process
    /// (from `/proc/PID/environ`, readable for one's own processes and by
    /// root), never what the peer says of itself.
    pub fn peer(uid: u32, pid: Option<i32>) -> Person {
        let ssh = pid
            .and_then(|p| std::fs::read(format!("/proc/{p}/environ")).ok())
            .and_then(|env| {
                env.split(|&b| b == 0)
                    .find_map(|kv| kv.strip_prefix(b"SSH_CLIENT="))
                    .map(|v| String::from_utf8_lossy(v).into_owned())
            });
        Person {
            uid,
            display: identity(uid, None, ssh),
        }
    }

    /// The account's name (`uid N` when it has none).
    pub fn account(&self) -> String {
        account_name(self.uid)
    }

    /// The groups the account is in (its primary group and the others the
    /// group database lists), by name.
    pub fn groups(&self) -> Vec<String> {
        let uid = nix::unistd::Uid::from_raw(self.uid);
        let Ok(Some(user)) = nix::unistd::User::from_uid(uid) else {
            return Vec::new();
        };
        let Ok(name) = std::ffi::CString::new(user.name.as_bytes()) else {
            return Vec::new();
        };
        let gids = nix::unistd::getgrouplist(&name, user.gid).unwrap_or_else(|_| vec![user.gid]);
        gids.into_iter()
            .filter_map(|g| nix::unistd::Group::from_gid(g).ok().flatten().map(|g| g.name))
            .collect()
    }
}

/// Who approves a gate, as the engine resolved them (the account behind a
/// socket's peer, or the user running trackside).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approver {
    /// The account's name.
    pub user: String,
    /// The groups it is in.
    pub groups: Vec<String>,
    /// How the audit trail names them (`user@host (ssh from IP)`).
    pub display: String,
    /// The account that started the run.
    pub started_the_run: bool,
}

impl Person {
    /// As a gate's policy sees them: the account, its groups, and whether
    /// it is the one running this trackside (the run's starter).
    pub fn approver(&self) -> Approver {
        Approver {
            user: self.account(),
            groups: self.groups(),
            display: self.display.clone(),
            started_the_run: self.uid == nix::unistd::Uid::effective().as_raw(),
        }
    }
}

/// A name as an approver of its own (tests, and steering that names no
/// account): in no group, not the starter.
impl From<&str> for Approver {
    fn from(name: &str) -> Approver {
        Approver {
            user: name.to_string(),
            groups: Vec::new(),
            display: name.to_string(),
            started_the_run: false,
        }
    }
}

/// The name of account `uid` (`uid N` when the user database has none).
pub fn account_name(uid: u32) -> String {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map_or_else(|| format!("uid {uid}"), |u| u.name)
}
