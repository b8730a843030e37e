//! The local actions folder: actions of other repositories
//! (`uses: owner/repo[/path]@ref`) that `trackside actions pull` fetched,
//! where workflows find them. GitHub's runner downloads an action as a job
//! starts; trackside never reaches the network on its own, so an action is
//! pulled once, on purpose, and kept as `<folder>/owner/repo@ref`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// An action of another repository, as `uses:` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionRef {
    pub owner: String,
    pub repo: String,
    /// A folder of the repository holding the action.yml.
    pub path: Option<String>,
    /// A branch, a tag or a commit.
    pub reference: String,
}

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("`{0}` is not an action of another repository; write owner/repo@ref (or owner/repo/path@ref)")]
    BadName(String),
    #[error("cannot fetch {what}: git {args}: {message}")]
    Git {
        what: String,
        args: String,
        message: String,
    },
    #[error("{action}: {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the actions folder {0} is writable by other users, or not yours; trackside runs nothing from it (chmod go-w, or choose another with --actions-dir)"
    )]
    Untrusted(PathBuf),
    #[error("{0} has no action.yml at `{1}`")]
    NoAction(String, String),
}

fn safe_part(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && !s.eq_ignore_ascii_case(".git")
        && !s.starts_with('-')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl ActionRef {
    /// `owner/repo[/path]@ref`; `None` for anything else (a local path, a
    /// `docker://` image, a name that could leave the folder).
    pub fn parse(uses: &str) -> Option<ActionRef> {
        let (name, reference) = uses.rsplit_once('@')?;
        let mut parts = name.split('/');
        let (owner, repo) = (parts.next()?, parts.next()?);
        let path: Vec<&str> = parts.collect();
        let ref_ok = !reference.is_empty()
            && !reference.starts_with('-')
            && !reference.contains("..")
            && reference
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
        if !safe_part(owner) || !safe_part(repo) || !ref_ok || path.iter().any(|p| !safe_part(p)) {
            return None;
        }
        Some(ActionRef {
            owner: owner.to_string(),
            repo: repo.to_string(),
            path: (!path.is_empty()).then(|| path.join("/")),
            reference: reference.to_string(),
        })
    }

    /// Where the repository is kept: `<root>/owner/repo@ref` (a `/` of the
    /// ref becomes `%2F`).
    pub fn checkout(&self, root: &Path) -> PathBuf {
        root.join(&self.owner)
            .join(format!("{}@{}", self.repo, self.reference.replace('/', "%2F")))
    }

    /// The action's own folder (with its `path`).
    pub fn dir(&self, root: &Path) -> PathBuf {
        let base = self.checkout(root);
        match &self.path {
            Some(p) => base.join(p),
            None => base,
        }
    }

    pub fn name(&self) -> String {
        match &self.path {
            Some(p) => format!("{}/{}/{p}@{}", self.owner, self.repo, self.reference),
            None => format!("{}/{}@{}", self.owner, self.repo, self.reference),
        }
    }
}

/// Refuses an actions folder another user could write to (or that is not
/// the user's own): what is in it runs as the user. A folder not made yet
/// is fine.
pub fn trusted(root: &Path) -> Result<(), PullError> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = match std::fs::metadata(root) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(PullError::Io {
                action: "cannot read",
                path: root.to_path_buf(),
                source,
            });
        }
    };
    if meta.mode() & 0o022 != 0 || meta.uid() != nix::unistd::geteuid().as_raw() {
        return Err(PullError::Untrusted(root.to_path_buf()));
    }
    Ok(())
}

fn git(dir: &Path, args: &[&str], what: &str) -> Result<String, PullError> {
    // Git from an absolute folder of PATH, as every other git trackside
    // starts: not one a relative entry (`.`) would find wherever the
    // command happens to run.
    let out = Command::new(crate::process::git_program())
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .map_err(|e| PullError::Git {
            what: what.to_string(),
            args: args.join(" "),
            message: format!("cannot start git: {e}"),
        })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(PullError::Git {
            what: what.to_string(),
            args: args.join(" "),
            message: stderr.lines().last().unwrap_or("failed").to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Fetches `action` at its ref from `from` (default: its GitHub
/// repository) into `root`, replacing an earlier pull of the same ref.
/// Returns the folder and the commit.
pub fn pull(root: &Path, action: &ActionRef, from: Option<&str>) -> Result<(PathBuf, String), PullError> {
    trusted(root)?;
    let io = |action: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| PullError::Io { action, path, source }
    };
    super::private_dir(root).map_err(|e| PullError::Io {
        action: "cannot create",
        path: root.to_path_buf(),
        source: e.source,
    })?;
    let url = from.map_or_else(
        || format!("https://github.com/{}/{}", action.owner, action.repo),
        str::to_string,
    );
    let dest = action.checkout(root);
    let parent = dest.parent().unwrap_or(root).to_path_buf();
    std::fs::create_dir_all(&parent).map_err(io("cannot create", &parent))?;
    let tmp = parent.join(format!(".pull-{}-{}", std::process::id(), super::now_ms()));
    std::fs::create_dir_all(&tmp).map_err(io("cannot create", &tmp))?;
    let what = action.name();
    let fetched = (|| {
        git(&tmp, &["init", "-q"], &what)?;
        git(
            &tmp,
            &["fetch", "-q", "--depth", "1", "--", &url, &action.reference],
            &what,
        )?;
        git(&tmp, &["checkout", "-q", "--detach", "FETCH_HEAD"], &what)?;
        let commit = git(&tmp, &["rev-parse", "HEAD"], &what)?;
        let dir = match &action.path {
            Some(p) => tmp.join(p),
            None => tmp.clone(),
        };
        if !dir.join("action.yml").is_file() && !dir.join("action.yaml").is_file() {
            return Err(PullError::NoAction(
                what.clone(),
                action.path.clone().unwrap_or_else(|| ".".into()),
            ));
        }
        std::fs::remove_dir_all(tmp.join(".git")).map_err(io("cannot remove", &tmp.join(".git")))?;
        std::fs::write(
            tmp.join(".trackside-action"),
            format!("action: {what}\nfrom: {url}\ncommit: {commit}\n"),
        )
        .map_err(io("cannot write", &tmp))?;
        Ok(commit)
    })();
    let commit = match fetched {
        Ok(c) => c,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    if dest.exists() {
        std::fs::remove_dir_all(&dest).map_err(io("cannot replace", &dest))?;
    }
    std::fs::rename(&tmp, &dest).map_err(io("cannot move into place", &dest))?;
    Ok((dest, commit))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_parsed_and_cannot_leave_the_folder() {
        let a = ActionRef::parse("actions/setup-node@v4").expect("parsed");
        assert_eq!(
            (a.owner.as_str(), a.repo.as_str(), a.path.as_deref()),
            ("actions", "setup-node", None)
        );
        let b = ActionRef::parse("octo/tools/lint/go@release/v2").expect("parsed");
        assert_eq!(b.path.as_deref(), Some("lint/go"));
        assert_eq!(b.checkout(Path::new("/s")), PathBuf::from("/s/octo/tools@release%2Fv2"));
        assert_eq!(
            b.dir(Path::new("/s")),
            PathBuf::from("/s/octo/tools@release%2Fv2/lint/go")
        );
        for bad in [
            "./local",
            "docker://alpine",
            "a/b",
            "../x/y@v1",
            "a/../b@v1",
            "a/b@-x",
            "a/b@..",
            "a@v1",
            "a/b/.git@v1",
        ] {
            assert_eq!(ActionRef::parse(bad), None, "{bad}");
        }
    }
}
