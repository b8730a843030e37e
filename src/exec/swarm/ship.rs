//! How a job's workspace travels to a Swarm task and back, when the only
//! thing trackside can reach is the manager's API (docs/swarm.md, "What
//! travels how").
//!
//! - **There:** the workspace is packed into an image built on the manager
//!   `FROM` the job's image (`COPY` into `/workspace`) and pushed to the
//!   cluster's registry, tagged by the digest of what it holds: jobs whose
//!   workspaces are the same share one image. Every packed entry's mtime is
//!   1 s after the epoch, and so is a marker file beside it.
//! - **Back:** a wrapper runs the step, then prints on its standard output,
//!   between lines carrying a nonce only the wrapper knows, its exit code,
//!   a tar archive (base64) of every file newer than the marker (what the
//!   step wrote) and the list of paths left (so a file the step removed is
//!   removed here too). The task's log, read through the manager, carries
//!   them; [`Frames`] takes them out of the lines the job shows.
//!
//! Pure: packing reads the workspace, [`apply`] writes it; nothing here
//! talks to Docker.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use base64::Engine;
use sha2::{Digest, Sha256};

/// Where the workspace is inside the task (the Docker executor's too).
pub use crate::exec::docker::WORKDIR;
/// The marker file every shipped file is as old as.
pub const MARKER_PATH: &str = "/run/trackside/shipped";
/// The wrapper that runs the step and sends the workspace back.
pub const WRAPPER_PATH: &str = "/run/trackside/wrapper.sh";
/// The mtime of everything shipped (seconds after the epoch).
const SHIPPED_MTIME: u64 = 1;
/// At most this many entries in a shipped workspace.
pub const MAX_ENTRIES: usize = 200_000;

#[derive(Debug, thiserror::Error)]
pub enum ShipError {
    #[error(
        "the workspace {dir} holds more than {limit} MiB (or {MAX_ENTRIES} files) to ship to the swarm; leave build outputs out of the project or raise `swarm.max_ship` (docs/swarm.md)"
    )]
    TooBig { dir: PathBuf, limit: u64 },
    #[error("the job's {what} `{value}` holds a line break; it cannot name an image or a user")]
    LineBreak { what: &'static str, value: String },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot pack {path}: {source}")]
    Pack { path: PathBuf, source: std::io::Error },
    #[error(
        "the step sent back more than {limit} MiB of files; the job's workspace on this machine is left as it was before the step (raise `swarm.max_return`, docs/swarm.md)"
    )]
    ReturnTooBig { limit: u64 },
    #[error("the files the step sent back are damaged ({0}); the job's workspace is left as it was before the step")]
    Corrupt(String),
    #[error("cannot write {path} back into the workspace: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

/// A packed workspace: the build context (Dockerfile, marker, `ws/`) and
/// what it holds.
#[derive(Debug)]
pub struct Packed {
    pub context: Vec<u8>,
    /// Hex SHA-256 of the context: the image's tag.
    pub digest: String,
    /// Every shipped path (files, links, folders), relative, `/`-separated.
    pub paths: Vec<String>,
    pub bytes: u64,
}

/// Packs `workspace` into a build context for an image `FROM image`. `user`:
/// the files belong to it inside (the job's `user:`). Folders named `.git`
/// stay behind (their links point into this machine's repository).
pub fn pack(image: &str, user: Option<&str>, workspace: &Path, budget: u64) -> Result<Packed, ShipError> {
    for (what, value) in [("image", Some(image)), ("user", user)] {
        if let Some(v) = value.filter(|v| v.contains(['\n', '\r'])) {
            return Err(ShipError::LineBreak {
                what,
                value: v.to_string(),
            });
        }
    }
    let entries = walk(workspace, budget)?;
    let chown = user.map(|u| format!("--chown={u} ")).unwrap_or_default();
    let dockerfile =
        format!("FROM {image}\nCOPY {chown}ws/ {WORKDIR}/\nCOPY shipped {MARKER_PATH}\nWORKDIR {WORKDIR}\n");
    let mut tar = tar::Builder::new(Vec::new());
    let add_file = |tar: &mut tar::Builder<Vec<u8>>, name: &str, mode: u32, data: &[u8]| {
        let mut h = header(tar::EntryType::Regular, mode);
        h.set_size(data.len() as u64);
        h.set_cksum();
        tar.append_data(&mut h, name, data).map_err(|source| ShipError::Pack {
            path: PathBuf::from(name),
            source,
        })
    };
    add_file(&mut tar, "Dockerfile", 0o644, dockerfile.as_bytes())?;
    add_file(&mut tar, "shipped", 0o644, b"")?;
    let mut h = header(tar::EntryType::Directory, 0o755);
    h.set_size(0);
    h.set_cksum();
    tar.append_data(&mut h, "ws/", std::io::empty())
        .map_err(|source| ShipError::Pack {
            path: workspace.to_path_buf(),
            source,
        })?;
    let mut paths = Vec::with_capacity(entries.len());
    let mut bytes = 0u64;
    for e in &entries {
        let full = workspace.join(&e.rel);
        let name = format!("ws/{}", e.rel);
        let err = |source| ShipError::Pack {
            path: full.clone(),
            source,
        };
        match &e.kind {
            Kind::Dir => {
                let mut h = header(tar::EntryType::Directory, e.mode);
                h.set_size(0);
                h.set_cksum();
                tar.append_data(&mut h, format!("{name}/"), std::io::empty())
                    .map_err(err)?;
            }
            Kind::Link(target) => {
                let mut h = header(tar::EntryType::Symlink, 0o777);
                h.set_size(0);
                tar.append_link(&mut h, &name, target).map_err(err)?;
            }
            Kind::File(len) => {
                let data = std::fs::read(&full).map_err(|source| ShipError::Read {
                    path: full.clone(),
                    source,
                })?;
                // It grew since it was listed: the budget counts what is read.
                bytes = bytes.saturating_add(data.len().max(*len as usize) as u64);
                if bytes > budget {
                    return Err(ShipError::TooBig {
                        dir: workspace.to_path_buf(),
                        limit: budget >> 20,
                    });
                }
                add_file(&mut tar, &name, e.mode, &data)?;
            }
        }
        paths.push(e.rel.clone());
    }
    let context = tar.into_inner().map_err(|source| ShipError::Pack {
        path: workspace.to_path_buf(),
        source,
    })?;
    let digest = Sha256::digest(&context).iter().map(|b| format!("{b:02x}")).collect();
    Ok(Packed {
        context,
        digest,
        paths,
        bytes,
    })
}

fn header(kind: tar::EntryType, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_mtime(SHIPPED_MTIME);
    h.set_uid(0);
    h.set_gid(0);
    h
}

enum Kind {
    Dir,
    File(u64),
    Link(PathBuf),
}

struct Entry {
    rel: String,
    kind: Kind,
    mode: u32,
}

/// The workspace's entries, sorted (parents before children), within the
/// budget (sizes checked before anything is read).
fn walk(root: &Path, budget: u64) -> Result<Vec<Entry>, ShipError> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    let mut total = 0u64;
    let mut stack = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, prefix)) = stack.pop() {
        let read = std::fs::read_dir(&dir).map_err(|source| ShipError::Read {
            path: dir.clone(),
            source,
        })?;
        let mut names = Vec::new();
        for entry in read {
            let entry = entry.map_err(|source| ShipError::Read {
                path: dir.clone(),
                source,
            })?;
            names.push(entry.file_name());
        }
        names.sort();
        let mut subdirs = Vec::new();
        for name in names {
            if name == ".git" {
                continue;
            }
            let Some(text) = name.to_str() else {
                // A name that is not UTF-8 cannot be listed back; it stays here.
                continue;
            };
            let path = dir.join(&name);
            let rel = if prefix.is_empty() {
                text.to_string()
            } else {
                format!("{prefix}/{text}")
            };
            let meta = std::fs::symlink_metadata(&path).map_err(|source| ShipError::Read {
                path: path.clone(),
                source,
            })?;
            let mode = meta.permissions().mode() & 0o7777;
            let kind = if meta.file_type().is_symlink() {
                Kind::Link(std::fs::read_link(&path).map_err(|source| ShipError::Read {
                    path: path.clone(),
                    source,
                })?)
            } else if meta.is_dir() {
                subdirs.push((path.clone(), rel.clone()));
                Kind::Dir
            } else if meta.is_file() {
                total = total.saturating_add(meta.len());
                Kind::File(meta.len())
            } else {
                continue; // sockets, fifos, devices
            };
            if total > budget || out.len() >= MAX_ENTRIES {
                return Err(ShipError::TooBig {
                    dir: root.to_path_buf(),
                    limit: budget >> 20,
                });
            }
            out.push(Entry { rel, kind, mode });
        }
        // Depth first, in name order: pushed reversed so the first pops first.
        stack.extend(subdirs.into_iter().rev());
    }
    out.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(out)
}

/// A job's service whose port its steps wait for: trackside cannot reach
/// a swarm's overlay network, so the step does, from inside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortWait {
    /// Its host name on the job's network.
    pub host: String,
    pub port: u16,
    /// About how long to wait, in seconds.
    pub seconds: u64,
}

/// Shell lines that wait until each service accepts a TCP connection
/// (with `nc`, else bash's `/dev/tcp`). A service not ready in time is
/// said and the step runs anyway, as GitLab's runner does after its own
/// service health check.
fn port_waits(waits: &[PortWait]) -> String {
    if waits.is_empty() {
        return String::new();
    }
    // Every probe is bounded (`timeout` where the image has it, `-w` for
    // the connection), and so is the wait: by the clock, not by tries.
    let mut s = String::from(
        "trackside_probe() {\n\
         \x20 trackside_t=; timeout 1 true >/dev/null 2>&1 && trackside_t='timeout 3'\n\
         \x20 if command -v nc >/dev/null 2>&1; then $trackside_t nc -w 2 \"$1\" \"$2\" </dev/null >/dev/null 2>&1\n\
         \x20 elif command -v bash >/dev/null 2>&1; then $trackside_t bash -c 'exec 3<>\"/dev/tcp/$0/$1\"' \"$1\" \"$2\" >/dev/null 2>&1\n\
         \x20 else echo \"trackside: cannot wait for $1:$2: the image has neither nc nor bash\" >&2; return 0; fi\n\
         }\n\
         trackside_wait() {\n\
         \x20 trackside_end=$(( $(date +%s) + $3 )); trackside_n=0\n\
         \x20 until trackside_probe \"$1\" \"$2\"; do\n\
         \x20   trackside_n=$((trackside_n + 1))\n\
         \x20   if [ \"$(date +%s)\" -ge \"$trackside_end\" ] || [ \"$trackside_n\" -ge \"$3\" ]; then echo \"trackside: service $1 did not accept connections on port $2 within $3 s; the step runs anyway\" >&2; return 0; fi\n\
         \x20   sleep 1\n\
         \x20 done\n\
         }\n",
    );
    for w in waits {
        if let Ok(host) = shlex::try_quote(&w.host) {
            s.push_str(&format!("trackside_wait {host} {} {}\n", w.port, w.seconds.max(1)));
        }
    }
    s
}

/// The wrapper script: waits for the job's services' ports, runs
/// `command` (the step's command line), then sends back its exit code,
/// what it wrote and the paths left, framed by `nonce`.
pub fn wrapper(command: &[String], nonce: &str, empty_files: &[String], waits: &[PortWait]) -> String {
    let cmd = shlex::try_join(command.iter().map(String::as_str)).unwrap_or_else(|_| "false".to_string());
    // The step's processes are the OOM killer's first choice, before this
    // wrapper, which must live to say what happened (a process may raise
    // its own score, not lower it).
    let cmd =
        format!("sh -c '{{ echo 500 > /proc/self/oom_score_adj; }} 2>/dev/null; exec \"$@\"' trackside-step {cmd}");
    let waits = port_waits(waits);
    // Swarm takes no empty secret: an empty file variable's file is made here.
    let touch: String = empty_files
        .iter()
        .filter_map(|f| shlex::try_quote(f).ok())
        .map(|f| format!(": > {f} 2>/dev/null\n"))
        .collect();
    // The container's memory cgroup counts OOM kills (v2, else v1): a
    // count that grew while the step ran is the OOM killer, not another
    // SIGKILL. Swarm's task status has no OOM flag of its own.
    let ooms = "trackside_ooms() {\n\
         \x20 for f in /sys/fs/cgroup/memory.events /sys/fs/cgroup/memory/memory.oom_control; do\n\
         \x20   if [ -r \"$f\" ]; then while read -r k v; do [ \"$k\" = oom_kill ] && echo \"$v\"; done < \"$f\"; return 0; fi\n\
         \x20 done\n\
         }\n\
         trackside_before=$(trackside_ooms)\n";
    format!(
        "{touch}{waits}{ooms}{cmd}\nrc=$?\n\
         trackside_after=$(trackside_ooms)\n\
         printf '%s rc=%s\\n' '{nonce}' \"$rc\"\n\
         if [ -n \"$trackside_after\" ] && [ \"$trackside_after\" != \"$trackside_before\" ]; then printf '%s oom\\n' '{nonce}'; fi\n\
         if command -v find >/dev/null 2>&1 && command -v tar >/dev/null 2>&1 && command -v base64 >/dev/null 2>&1 && cd {WORKDIR}; then\n\
         \x20 find . ! -type d -newer {MARKER_PATH} ! -path './.git/*' ! -path ./.git -exec tar -cf - {{}} + 2>/dev/null | base64\n\
         \x20 printf '%s paths\\n' '{nonce}'\n\
         \x20 if find . ! -path . ! -path './.git/*' ! -path ./.git -print; then printf '%s listed\\n' '{nonce}'; fi\n\
         else\n\
         \x20 printf '%s missing\\n' '{nonce}'\n\
         fi\n\
         printf '%s end\\n' '{nonce}'\n\
         exit \"$rc\"\n"
    )
}

/// What a step sent back.
#[derive(Debug, Default, PartialEq)]
pub struct Returned {
    /// The step's exit code as the wrapper saw it.
    pub rc: Option<i32>,
    /// The archive of the files it wrote.
    pub tar: Vec<u8>,
    /// Every path left in the workspace (relative, no `./`).
    pub present: HashSet<String>,
    /// The list of paths came whole (`find` went through every folder):
    /// only then are paths missing from it removed here.
    pub listed: bool,
    /// The image has no `tar` or `base64`: nothing came back.
    pub missing_tools: bool,
    /// The kernel's OOM killer killed a process of the step's container
    /// while the step ran (its memory cgroup's `oom_kill` count grew).
    pub oom_killed: bool,
    /// The end line came: everything is here.
    pub complete: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Section {
    Output,
    Archive,
    Paths,
    Done,
}

/// Splits a task's standard output into the step's own lines and what the
/// wrapper sends back. Bounded: past `budget` bytes of archive text the
/// rest is dropped and [`Frames::finish`] says so.
pub struct Frames {
    nonce: String,
    section: Section,
    b64: String,
    budget: u64,
    over: bool,
    paths_bytes: u64,
    returned: Returned,
}

impl Frames {
    pub fn new(nonce: &str, budget: u64) -> Frames {
        Frames {
            nonce: nonce.to_string(),
            section: Section::Output,
            b64: String::new(),
            budget,
            over: false,
            paths_bytes: 0,
            returned: Returned::default(),
        }
    }

    /// Whether the wrapper said the OOM killer was at work (so far).
    pub fn oom_killed(&self) -> bool {
        self.returned.oom_killed
    }

    /// Whether the end line has come.
    pub fn done(&self) -> bool {
        self.section == Section::Done
    }

    /// One line of standard output; returns the part that is the step's
    /// own output, if any.
    pub fn line(&mut self, text: &str) -> Option<String> {
        match self.section {
            Section::Output => {
                let Some(at) = text.find(&self.nonce) else {
                    return Some(text.to_string());
                };
                let rest = text[at + self.nonce.len()..].trim();
                match rest.strip_prefix("rc=").map(|c| c.trim().parse::<i32>()) {
                    Some(Ok(rc)) => {
                        self.returned.rc = Some(rc);
                        self.section = Section::Archive;
                        // The step's last line had no newline: the frame came after it.
                        (at > 0).then(|| text[..at].to_string())
                    }
                    _ => Some(text.to_string()),
                }
            }
            Section::Archive => {
                if let Some(word) = self.frame(text) {
                    match word.as_str() {
                        "paths" => self.section = Section::Paths,
                        "missing" => self.returned.missing_tools = true,
                        "oom" => self.returned.oom_killed = true,
                        "end" => self.end(),
                        _ => {}
                    }
                } else if !self.over {
                    let line = text.trim();
                    if (self.b64.len() + line.len()) as u64 > self.budget.saturating_mul(4) / 3 + 4 {
                        self.over = true;
                        self.b64 = String::new();
                    } else {
                        self.b64.push_str(line);
                    }
                }
                None
            }
            Section::Paths => {
                if let Some(word) = self.frame(text) {
                    match word.as_str() {
                        "listed" => self.returned.listed = true,
                        "end" => self.end(),
                        _ => {}
                    }
                } else {
                    self.paths_bytes += text.len() as u64 + 1;
                    if self.paths_bytes <= self.budget && self.returned.present.len() < MAX_ENTRIES {
                        let p = text.strip_prefix("./").unwrap_or(text);
                        self.returned.present.insert(p.to_string());
                    } else {
                        self.over = true;
                    }
                }
                None
            }
            Section::Done => Some(text.to_string()),
        }
    }

    fn frame(&self, text: &str) -> Option<String> {
        let rest = text.strip_prefix(&self.nonce)?;
        Some(rest.trim().to_string())
    }

    fn end(&mut self) {
        self.section = Section::Done;
        self.returned.complete = true;
    }

    /// What came back; an error when it is over the budget or damaged.
    pub fn finish(mut self) -> Result<Returned, ShipError> {
        if self.over {
            return Err(ShipError::ReturnTooBig {
                limit: self.budget >> 20,
            });
        }
        if !self.b64.is_empty() {
            self.returned.tar = base64::engine::general_purpose::STANDARD
                .decode(self.b64.as_bytes())
                .map_err(|e| ShipError::Corrupt(e.to_string()))?;
        }
        Ok(self.returned)
    }
}

/// Writes what the step sent back into `workspace`: first the removal of
/// shipped paths it removed (only when its list of paths came whole), then
/// the files it wrote. What comes back is untrusted: a path that is
/// absolute, climbs out with `..`, or goes through a symbolic link is
/// refused before anything is touched, and removals never follow links.
pub fn apply(workspace: &Path, shipped: &[String], back: &Returned) -> Result<usize, ShipError> {
    if back.complete && back.listed && !back.missing_tools {
        // Deepest first, so a removed folder's files go before it.
        for rel in shipped.iter().rev() {
            if back.present.contains(rel) {
                continue;
            }
            // Shipped paths were listed here without following links; one
            // under a link now is not this step's to remove.
            let Ok(path) = checked(workspace, Path::new(rel), false) else {
                continue;
            };
            let gone = match std::fs::symlink_metadata(&path) {
                Ok(m) if m.is_dir() => std::fs::remove_dir(&path),
                Ok(_) => std::fs::remove_file(&path),
                Err(_) => Ok(()),
            };
            gone.map_err(|source| ShipError::Write { path, source })?;
        }
    }
    let mut written = 0;
    if !back.tar.is_empty() {
        let mut archive = tar::Archive::new(back.tar.as_slice());
        archive.set_preserve_mtime(false);
        // `find -exec tar {} +` makes one archive per batch of files.
        archive.set_ignore_zeros(true);
        let entries = archive.entries().map_err(|e| ShipError::Corrupt(e.to_string()))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| ShipError::Corrupt(e.to_string()))?;
            let rel = entry
                .path()
                .map_err(|e| ShipError::Corrupt(e.to_string()))?
                .into_owned();
            let target = checked(workspace, &rel, true)?;
            // A folder here where the step left a file or a link: it goes first.
            if let Ok(meta) = std::fs::symlink_metadata(&target)
                && meta.is_dir()
                && entry.header().entry_type() != tar::EntryType::Directory
            {
                std::fs::remove_dir_all(&target).map_err(|source| ShipError::Write {
                    path: target.clone(),
                    source,
                })?;
            }
            // `unpack_in` checks again (parents canonicalised, hard links' targets).
            let inside = entry.unpack_in(workspace).map_err(|source| ShipError::Write {
                path: target.clone(),
                source,
            })?;
            if !inside {
                return Err(ShipError::Corrupt(format!(
                    "a path outside the workspace: {}",
                    rel.display()
                )));
            }
            written += 1;
        }
    }
    Ok(written)
}

/// `rel` under `workspace`, when it is relative, stays inside (no `..`,
/// no root) and none of its parents here is a symbolic link. With
/// `make_room`, a parent that is a file here (the step made a folder
/// where a file was) is removed.
fn checked(workspace: &Path, rel: &Path, make_room: bool) -> Result<PathBuf, ShipError> {
    use std::path::Component;
    let refuse = |why: &str| ShipError::Corrupt(format!("{why}: {}", rel.display()));
    let mut parts = Vec::new();
    for c in rel.components() {
        match c {
            Component::CurDir => {}
            Component::Normal(n) => parts.push(n),
            _ => return Err(refuse("a path outside the workspace")),
        }
    }
    let Some((last, parents)) = parts.split_last() else {
        return Err(refuse("an empty path"));
    };
    let mut at = workspace.to_path_buf();
    for p in parents {
        at.push(p);
        match std::fs::symlink_metadata(&at) {
            Ok(m) if m.file_type().is_symlink() => return Err(refuse("a path through a symbolic link")),
            Ok(m) if !m.is_dir() && make_room => {
                std::fs::remove_file(&at).map_err(|source| ShipError::Write {
                    path: at.clone(),
                    source,
                })?;
            }
            _ => {}
        }
    }
    Ok(at.join(last))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn project() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("src/deep")).unwrap();
        std::fs::write(dir.path().join("README"), "hi\n").unwrap();
        std::fs::write(dir.path().join("src/main.c"), "int main;\n").unwrap();
        std::fs::write(dir.path().join("src/deep/x"), "x").unwrap();
        std::os::unix::fs::symlink("src/main.c", dir.path().join("link")).unwrap();
        std::fs::create_dir(dir.path().join(".git")).unwrap();
        std::fs::write(dir.path().join(".git/HEAD"), "ref").unwrap();
        dir
    }

    fn names(context: &[u8]) -> Vec<(String, u64)> {
        let mut a = tar::Archive::new(context);
        a.entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.path().unwrap().display().to_string(), e.header().mtime().unwrap())
            })
            .collect()
    }

    #[test]
    fn a_packed_workspace_is_the_same_for_the_same_files_and_leaves_git_behind() {
        let dir = project();
        let a = pack("busybox:1", None, dir.path(), 1 << 20).unwrap();
        let listed = names(&a.context);
        let paths: Vec<&str> = listed.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "Dockerfile",
                "shipped",
                "ws/",
                "ws/README",
                "ws/link",
                "ws/src/",
                "ws/src/deep/",
                "ws/src/deep/x",
                "ws/src/main.c"
            ]
        );
        assert!(listed.iter().all(|(_, m)| *m == SHIPPED_MTIME), "{listed:?}");
        assert_eq!(
            a.paths,
            ["README", "link", "src", "src/deep", "src/deep/x", "src/main.c"]
        );
        // The mtimes of the files here do not matter; their contents do.
        std::fs::write(dir.path().join("README"), "hi\n").unwrap();
        std::fs::write(dir.path().join(".git/HEAD"), "other").unwrap();
        assert_eq!(pack("busybox:1", None, dir.path(), 1 << 20).unwrap().digest, a.digest);
        assert_ne!(pack("busybox:2", None, dir.path(), 1 << 20).unwrap().digest, a.digest);
        std::fs::write(dir.path().join("README"), "changed\n").unwrap();
        assert_ne!(pack("busybox:1", None, dir.path(), 1 << 20).unwrap().digest, a.digest);
        let text = String::from_utf8_lossy(&a.context);
        assert!(text.contains("FROM busybox:1\nCOPY ws/ /workspace/\n"), "{text}");
        let owned = pack("busybox:1", Some("1000"), dir.path(), 1 << 20).unwrap();
        assert!(String::from_utf8_lossy(&owned.context).contains("COPY --chown=1000 ws/"));
    }

    #[test]
    fn a_workspace_over_the_budget_is_refused_before_it_is_read() {
        let dir = project();
        std::fs::write(dir.path().join("big"), vec![0u8; 4096]).unwrap();
        let e = pack("busybox:1", None, dir.path(), 1000).unwrap_err();
        assert!(matches!(e, ShipError::TooBig { .. }), "{e}");
        assert!(e.to_string().contains("swarm.max_ship"), "{e}");
    }

    fn archive(files: &[(&str, &str)]) -> Vec<u8> {
        let mut t = tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            t.append_data(&mut h, name, data.as_bytes()).unwrap();
        }
        t.into_inner().unwrap()
    }

    fn framed(nonce: &str, tar: &[u8], paths: &[&str]) -> Vec<String> {
        let b64 = base64::engine::general_purpose::STANDARD.encode(tar);
        let mut lines = vec![format!("{nonce} rc=3")];
        lines.extend(
            b64.as_bytes()
                .chunks(76)
                .map(|c| String::from_utf8_lossy(c).into_owned()),
        );
        lines.push(format!("{nonce} paths"));
        lines.extend(paths.iter().map(|p| format!("./{p}")));
        lines.push(format!("{nonce} listed"));
        lines.push(format!("{nonce} end"));
        lines
    }

    #[test]
    fn frames_keep_the_steps_lines_and_take_what_comes_back() {
        let n = "@@ts-0123";
        let tar = archive(&[("./out/result.txt", "42\n")]);
        let mut f = Frames::new(n, 1 << 20);
        let mut shown = Vec::new();
        shown.extend(f.line("building"));
        shown.extend(f.line(&format!("no newline at the end{n} rc=3")));
        for l in framed(n, &tar, &["README", "out", "out/result.txt"]).iter().skip(1) {
            assert_eq!(f.line(l), None, "{l}");
        }
        assert!(f.done());
        assert_eq!(shown, ["building", "no newline at the end"]);
        let back = f.finish().unwrap();
        assert_eq!(back.rc, Some(3));
        assert!(back.complete);
        assert_eq!(back.present.len(), 3);

        // Applied: the new file written, the removed one removed, the rest kept.
        let dir = project();
        let shipped = pack("i", None, dir.path(), 1 << 20).unwrap().paths;
        apply(dir.path(), &shipped, &back).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("out/result.txt")).unwrap(),
            "42\n"
        );
        assert!(dir.path().join("README").exists());
        assert!(!dir.path().join("src/main.c").exists(), "the step removed it");
        assert!(!dir.path().join("src").exists());
        assert!(dir.path().join(".git/HEAD").exists(), "never shipped, never removed");
    }

    fn returned(tar: Vec<u8>, present: &[&str]) -> Returned {
        Returned {
            rc: Some(0),
            tar,
            present: present.iter().map(|p| p.to_string()).collect(),
            listed: true,
            complete: true,
            ..Default::default()
        }
    }

    /// An archive entry written raw: `tar`'s builder refuses such names itself.
    fn raw_entry(t: &mut tar::Builder<Vec<u8>>, name: &str, kind: tar::EntryType, link: Option<&str>, data: &[u8]) {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        let gnu = h.as_gnu_mut().unwrap();
        gnu.name[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(l) = link {
            gnu.linkname[..l.len()].copy_from_slice(l.as_bytes());
        }
        h.set_cksum();
        t.append(&h, data).unwrap();
    }

    #[test]
    fn what_comes_back_cannot_touch_anything_outside_the_workspace() {
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path().join("ws");
        let outside = dir.path().join("home");
        std::fs::create_dir_all(ws.join("src")).unwrap();
        std::fs::create_dir_all(outside.join("proj")).unwrap();
        std::fs::write(outside.join("proj/main.c"), "precious").unwrap();
        std::fs::write(ws.join("src/main.c"), "x").unwrap();
        // An absolute path, and a folder outside named by it.
        let mut t = tar::Builder::new(Vec::new());
        raw_entry(
            &mut t,
            &format!("{}/proj", outside.display()),
            tar::EntryType::Regular,
            None,
            b"x",
        );
        assert!(apply(&ws, &[], &returned(t.into_inner().unwrap(), &[])).is_err());
        assert!(outside.join("proj/main.c").exists(), "never removed");
        // A link to a folder outside, then a file written through it.
        let mut t = tar::Builder::new(Vec::new());
        let out = outside.join("proj").display().to_string();
        raw_entry(&mut t, "lnk", tar::EntryType::Symlink, Some(&out), b"");
        raw_entry(&mut t, "lnk/main.c", tar::EntryType::Regular, None, b"evil");
        assert!(apply(&ws, &[], &returned(t.into_inner().unwrap(), &["lnk"])).is_err());
        assert_eq!(
            std::fs::read_to_string(outside.join("proj/main.c")).unwrap(),
            "precious"
        );
        // A folder swapped for a link: the shipped files under it are not
        // removed through the link.
        std::fs::remove_file(ws.join("lnk")).ok();
        std::os::unix::fs::symlink(outside.join("proj"), ws.join("src2")).unwrap();
        let shipped = vec!["src2".to_string(), "src2/main.c".to_string()];
        apply(&ws, &shipped, &returned(Vec::new(), &["src2"])).unwrap();
        assert!(outside.join("proj/main.c").exists(), "removals never follow links");
    }

    #[test]
    fn a_file_swapped_for_a_folder_and_back_comes_back_as_the_step_left_it() {
        let dir = project();
        let shipped = pack("i", None, dir.path(), 1 << 20).unwrap().paths;
        // README became a folder with a file in it; src/deep became a file.
        let tar = archive(&[("./README/inside", "now a folder\n"), ("./src/deep", "now a file\n")]);
        let present = ["README", "README/inside", "link", "src", "src/deep", "src/main.c"];
        apply(dir.path(), &shipped, &returned(tar, &present)).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("README/inside")).unwrap(),
            "now a folder\n"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("src/deep")).unwrap(),
            "now a file\n"
        );
        assert!(dir.path().join("src/main.c").exists());
    }

    #[test]
    fn without_a_whole_list_of_paths_nothing_is_removed() {
        let dir = project();
        let shipped = pack("i", None, dir.path(), 1 << 20).unwrap().paths;
        let mut back = returned(Vec::new(), &["README"]);
        back.listed = false; // `find` could not read every folder
        apply(dir.path(), &shipped, &back).unwrap();
        assert!(dir.path().join("src/main.c").exists());
    }

    #[test]
    fn a_line_that_only_looks_like_a_frame_is_the_steps() {
        let mut f = Frames::new("@@ts-1", 1 << 20);
        assert_eq!(f.line("@@ts-1 rc=banana").as_deref(), Some("@@ts-1 rc=banana"));
        assert_eq!(f.line("@@ts-2 rc=0").as_deref(), Some("@@ts-2 rc=0"));
        assert!(!f.done());
        let back = f.finish().unwrap();
        assert!(!back.complete, "no end line: not everything came back");
    }

    #[test]
    fn what_comes_back_is_bounded_and_checked() {
        let n = "@@ts-9";
        let tar = archive(&[("big", &"y".repeat(10_000))]);
        let mut f = Frames::new(n, 1000);
        for l in framed(n, &tar, &[]) {
            f.line(&l);
        }
        assert!(matches!(f.finish(), Err(ShipError::ReturnTooBig { .. })));

        let mut f = Frames::new(n, 1 << 20);
        for l in [format!("{n} rc=0"), "!!!not base64".into(), format!("{n} end")] {
            f.line(&l);
        }
        assert!(matches!(f.finish(), Err(ShipError::Corrupt(_))));

        // A path out of the workspace is refused.
        let mut t = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o644);
        // Written raw: `append_data` itself refuses `..`.
        h.as_gnu_mut().unwrap().name[..9].copy_from_slice(b"../escape");
        h.set_cksum();
        t.append(&h, "x".as_bytes()).unwrap();
        let back = Returned {
            rc: Some(0),
            tar: t.into_inner().unwrap(),
            complete: true,
            ..Default::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path().join("ws");
        std::fs::create_dir(&ws).unwrap();
        assert!(apply(&ws, &[], &back).is_err());
        assert!(!dir.path().join("escape").exists());
    }

    #[test]
    fn the_wrapper_frames_with_its_nonce_and_keeps_the_exit_code() {
        let w = wrapper(
            &["sh".into(), "-e".into(), "/run/trackside/step.sh".into()],
            "@@ts-abc",
            &[],
            &[],
        );
        assert!(
            w.contains(" trackside-step sh -e /run/trackside/step.sh\nrc=$?\n"),
            "{w}"
        );
        assert!(w.contains("'@@ts-abc' \"$rc\""));
        assert!(w.trim_end().ends_with("exit \"$rc\""));
        // It runs: a shell on this machine plays the task.
        let dir = tempfile::tempdir().unwrap();
        let step = dir.path().join("step.sh");
        std::fs::write(&step, "echo hello\nexit 4\n").unwrap();
        let w = wrapper(&["sh".into(), step.display().to_string()], "@@ts-x", &[], &[])
            .replace(WORKDIR, "/nonexistent-dir");
        let out = std::process::Command::new("sh").arg("-c").arg(&w).output().unwrap();
        assert_eq!(out.status.code(), Some(4));
        let text = String::from_utf8_lossy(&out.stdout);
        let mut f = Frames::new("@@ts-x", 1 << 20);
        let shown: Vec<String> = text.lines().filter_map(|l| f.line(l)).collect();
        assert_eq!(shown, ["hello"]);
        let back = f.finish().unwrap();
        assert_eq!(back.rc, Some(4));
        assert!(back.complete && back.missing_tools, "no workspace there: {back:?}");
    }

    #[test]
    fn the_wrapper_waits_for_service_ports_and_runs_the_step_anyway_when_one_stays_closed() {
        let open = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let closed_port = closed.local_addr().unwrap().port();
        drop(closed);
        let waits = [
            PortWait {
                host: "127.0.0.1".into(),
                port: open.local_addr().unwrap().port(),
                seconds: 30,
            },
            PortWait {
                host: "127.0.0.1".into(),
                port: closed_port,
                seconds: 1,
            },
        ];
        let dir = tempfile::tempdir().unwrap();
        let step = dir.path().join("step.sh");
        std::fs::write(&step, "echo ran\n").unwrap();
        let w = wrapper(&["sh".into(), step.display().to_string()], "@@ts-w", &[], &waits)
            .replace(WORKDIR, "/nonexistent-dir");
        let out = std::process::Command::new("sh").arg("-c").arg(&w).output().unwrap();
        assert_eq!(out.status.code(), Some(0));
        let err = String::from_utf8_lossy(&out.stderr);
        let said: Vec<&str> = err.lines().filter(|l| l.starts_with("trackside:")).collect();
        assert_eq!(
            said,
            [format!(
                "trackside: service 127.0.0.1 did not accept connections on port {closed_port} within 1 s; the step runs anyway"
            )],
            "the open port is not waited for: {err}"
        );
        assert!(String::from_utf8_lossy(&out.stdout).lines().any(|l| l == "ran"));
    }

    #[test]
    fn an_oom_frame_after_the_exit_code_is_kept() {
        let n = "@@ts-o";
        let mut f = Frames::new(n, 1 << 20);
        let shown: Vec<String> = [
            "Killed".to_string(),
            format!("{n} rc=137"),
            format!("{n} oom"),
            format!("{n} end"),
        ]
        .iter()
        .filter_map(|l| f.line(l))
        .collect();
        assert_eq!(shown, ["Killed"]);
        let back = f.finish().unwrap();
        assert_eq!((back.rc, back.oom_killed, back.complete), (Some(137), true, true));
        // A step printing the word itself is only output.
        let mut f = Frames::new(n, 1 << 20);
        assert_eq!(f.line("oom"), Some("oom".to_string()));
        assert!(!f.finish().unwrap().oom_killed);
    }
}
