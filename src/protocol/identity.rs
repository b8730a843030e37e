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
