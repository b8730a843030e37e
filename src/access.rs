//! Who may connect to a run's sockets (the run socket and the rollout
//! control socket): the user running trackside, root, and, when asked
//! (`--allow-group GROUP`, or `access: {group: GROUP}` in config.yml), the
//! members of one group.
//!
//! Opened to a group, a socket is `0660` with that group, and the folders
//! on its way inside the state directory become `0710` with that group
//! (search, not list: a member reaches the socket by its path and reads
//! nothing else, since every file there is the user's own). Each
//! connection is still checked by what the kernel says of its peer (its
//! uid, then that account's groups in the group database), and named so
//! in the audit trail.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Access {
    group: Option<Group>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Group {
    name: String,
    gid: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("group `{0}` does not exist on this machine; create it (groupadd) or name one `getent group` lists")]
    NoGroup(String),
    #[error(
        "you are not in group `{0}`, so your sockets cannot be given to it; ask to be added (usermod -aG), or name a group of yours"
    )]
    NotMember(String),
    #[error("cannot open {} to group `{group}`: {source}", path.display())]
    Io {
        path: PathBuf,
        group: String,
        source: std::io::Error,
    },
    #[error(
        "group `{group}` cannot reach {}: {} is not searchable by it; `chmod o+x` (or g+x with that group) that folder, or use a --state-dir the group can reach",
        socket.display(),
        blocked.display()
    )]
    Unreachable {
        group: String,
        socket: PathBuf,
        blocked: PathBuf,
    },
}

impl Access {
    /// Only the user running trackside (and root).
    pub fn owner_only() -> Access {
        Access::default()
    }

    /// The user, root and the members of `name`. The user must be in the
    /// group (root may name any).
    pub fn group(name: &str) -> Result<Access, AccessError> {
        let group = nix::unistd::Group::from_name(name)
            .ok()
            .flatten()
            .ok_or_else(|| AccessError::NoGroup(name.to_string()))?;
        let gid = group.gid.as_raw();
        let me = nix::unistd::Uid::effective().as_raw();
        if me != 0 && !member(me, gid) {
            return Err(AccessError::NotMember(name.to_string()));
        }
        Ok(Access {
            group: Some(Group {
                name: name.to_string(),
                gid,
            }),
        })
    }

    /// The group's name, when the sockets are open to one.
    pub fn group_name(&self) -> Option<&str> {
        self.group.as_ref().map(|g| g.name.as_str())
    }

    /// Whether the account `uid` may connect.
    pub fn admits(&self, uid: u32) -> bool {
        let me = nix::unistd::Uid::effective().as_raw();
        uid == me || uid == 0 || self.group.as_ref().is_some_and(|g| member(uid, g.gid))
    }

    /// Who may connect, for a refusal: "the user running this trackside
    /// (or root)", and the group when there is one.
    pub fn who_may(&self) -> String {
        match &self.group {
            None => "the user running this trackside (or root)".into(),
            Some(g) => format!(
                "the user running this trackside, root and members of group `{}`",
                g.name
            ),
        }
    }

    /// Sets a bound socket's mode: `0600`, or `0660` with the group; and,
    /// with a group, makes the folders from `root` (the state directory)
    /// down to the socket searchable by it. Fails when a folder above
    /// `root` keeps the group out.
    pub fn open(&self, socket: &Path, root: &Path) -> Result<(), AccessError> {
        // Absolute, so the folders above a relative state directory are seen.
        let socket = &std::path::absolute(socket).unwrap_or_else(|_| socket.to_path_buf());
        let root = &std::path::absolute(root).unwrap_or_else(|_| root.to_path_buf());
        let Some(g) = &self.group else {
            return std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600)).map_err(|source| {
                AccessError::Io {
                    path: socket.to_path_buf(),
                    group: String::new(),
                    source,
                }
            });
        };
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| AccessError::Io {
                path,
                group: g.name.clone(),
                source,
            }
        };
        // The folders above the state directory first: nothing is changed
        // when the group cannot reach the socket anyway.
        if let Some(blocked) = socket
            .ancestors()
            .skip(1)
            .filter(|d| !d.starts_with(root))
            .find(|d| !searchable_by(d, g.gid))
        {
            return Err(AccessError::Unreachable {
                group: g.name.clone(),
                socket: socket.to_path_buf(),
                blocked: blocked.to_path_buf(),
            });
        }
        let gid = Some(nix::unistd::Gid::from_raw(g.gid));
        nix::unistd::chown(socket, None, gid).map_err(|e| io(socket)(e.into()))?;
        std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o660)).map_err(io(socket))?;
        // In the folders on the way, nothing but the way down stays open to
        // others: other runs, the index, config.yml, the run's own logs and
        // workspaces. What was opened to the group on purpose (another
        // shared socket's way: `runs/`, `services/`, a shared run's folder,
        // a socket) stays so.
        for (dir, next) in socket.ancestors().skip(1).zip(socket.ancestors()) {
            if !dir.starts_with(root) {
                continue;
            }
            for entry in std::fs::read_dir(dir).map_err(io(dir))?.flatten() {
                let path = entry.path();
                if path == next {
                    continue;
                }
                let Ok(m) = std::fs::symlink_metadata(&path) else {
                    continue;
                };
                let shared = m.gid() == g.gid
                    && ((m.is_dir() && m.mode() & 0o077 == 0o010)
                        || (m.file_type().is_socket() && m.mode() & 0o077 == 0o060));
                if !m.file_type().is_symlink() && !shared && m.mode() & 0o077 != 0 {
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(m.mode() & 0o700))
                        .map_err(io(&path))?;
                }
            }
        }
        for dir in socket.ancestors().skip(1).filter(|d| d.starts_with(root)) {
            nix::unistd::chown(dir, None, gid).map_err(|e| io(dir)(e.into()))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o710)).map_err(io(dir))?;
        }
        Ok(())
    }
}

/// Whether account `uid` is in group `gid` (as its primary group or as the
/// group database lists it).
fn member(uid: u32, gid: u32) -> bool {
    let Ok(Some(user)) = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) else {
        return false;
    };
    if user.gid.as_raw() == gid {
        return true;
    }
    let Ok(name) = std::ffi::CString::new(user.name.as_bytes()) else {
        return false;
    };
    nix::unistd::getgrouplist(&name, user.gid).is_ok_and(|gids| gids.iter().any(|g| g.as_raw() == gid))
}

/// Whether members of `gid` may pass through `dir` (other users' `x`, or
/// the group's with that group).
fn searchable_by(dir: &Path, gid: u32) -> bool {
    std::fs::metadata(dir).is_ok_and(|m| m.mode() & 0o001 != 0 || (m.gid() == gid && m.mode() & 0o010 != 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_user_and_root_by_default() {
        let a = Access::owner_only();
        let me = nix::unistd::Uid::effective().as_raw();
        assert!(a.admits(me) && a.admits(0));
        assert!(!a.admits(65534), "nobody is not admitted");
        assert!(a.who_may().contains("or root"));
    }

    #[test]
    fn an_unknown_group_is_refused_with_what_to_do() {
        let e = Access::group("no-such-group-trackside").unwrap_err().to_string();
        assert!(e.contains("does not exist") && e.contains("groupadd"), "{e}");
    }

    #[test]
    fn a_socket_opened_to_a_group_is_0660_and_its_folders_0710() {
        // Our own primary group: always one we are in.
        let gid = nix::unistd::Gid::effective().as_raw();
        let Some(name) = nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid))
            .ok()
            .flatten()
            .map(|g| g.name)
        else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        let state = dir.path().join("state");
        let run = state.join("runs").join("r1");
        std::fs::create_dir_all(&run).unwrap();
        let sock = run.join("control.sock");
        let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        // What else is there stays the user's: another run, config.yml.
        let other = state.join("runs").join("r0");
        std::fs::create_dir_all(&other).unwrap();
        std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o755)).unwrap();
        let config = state.join("config.yml");
        std::fs::write(&config, "notify: {}\n").unwrap();
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
        // The run's own workspaces: not the group's either.
        let work = run.join("work");
        std::fs::create_dir(&work).unwrap();
        std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o755)).unwrap();
        let a = Access::group(&name).unwrap();
        a.open(&sock, &state).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o777;
        assert_eq!(mode(&sock), 0o660);
        assert_eq!((mode(&other), mode(&config), mode(&work)), (0o700, 0o600, 0o700));
        let shared_way = [run.clone(), run.parent().unwrap().to_path_buf(), state.clone()];
        for d in &shared_way {
            assert_eq!(mode(d), 0o710, "{}", d.display());
            assert_eq!(std::fs::metadata(d).unwrap().gid(), gid);
        }
        // A rollout's socket opened next keeps the run's way open.
        let services = state.join("services");
        std::fs::create_dir(&services).unwrap();
        let control = services.join("web.sock");
        let _c = std::os::unix::net::UnixListener::bind(&control).unwrap();
        a.open(&control, &state).unwrap();
        assert_eq!((mode(&control), mode(&services)), (0o660, 0o710));
        for d in &shared_way {
            assert_eq!(mode(d), 0o710, "still shared: {}", d.display());
        }
        assert_eq!(mode(&sock), 0o660);
        // A folder above the state directory that keeps the group out.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let e = a.open(&sock, &state).unwrap_err().to_string();
        assert!(e.contains("is not searchable") && e.contains("--state-dir"), "{e}");
        Access::owner_only().open(&sock, &state).unwrap();
        assert_eq!(mode(&sock), 0o600);
    }
}
