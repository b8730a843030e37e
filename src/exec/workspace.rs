//! Job workspaces: a fresh copy of the project for every attempt, so a job
//! never sees files another job (or an earlier attempt) left behind.
//!
//! In a git repository the copy holds what git would: tracked files plus
//! untracked files that are not ignored (`git ls-files --cached --others
//! --exclude-standard`), so build output and `target/` stay out. Elsewhere
//! the whole directory is copied. The file list is taken once per run.
//!
//! trackside's own state directory is never part of it, even when it lies
//! inside the project (`--state-dir .trackside`): copying it would copy every
//! earlier run's records, and the run's own, into each job's workspace.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Files of the project, relative to `project`, leaving out the state
/// directory `state` when it is inside the project.
pub fn project_files(project: &Path, state: &Path) -> io::Result<Vec<PathBuf>> {
    let inside = within(project, state);
    let outside = |f: &PathBuf| inside.as_ref().is_none_or(|dir| !f.starts_with(dir));
    if let Some(mut files) = git_files(project) {
        files.retain(outside);
        return Ok(files);
    }
    let mut out = Vec::new();
    walk(project, Path::new(""), inside.as_deref(), &mut out)?;
    out.sort();
    Ok(out)
}

/// `dir` relative to `project` when it is inside it (both resolved, so a
/// symlink or `..` cannot hide it).
fn within(project: &Path, dir: &Path) -> Option<PathBuf> {
    let (project, dir) = (project.canonicalize().ok()?, dir.canonicalize().ok()?);
    let rel = dir.strip_prefix(&project).ok()?;
    // The project inside the state directory is not a reason to copy nothing.
    (!rel.as_os_str().is_empty()).then(|| rel.to_path_buf())
}

fn git_files(project: &Path) -> Option<Vec<PathBuf>> {
    let stdout = git_bytes(
        project,
        &["ls-files", "-z", "--cached", "--others", "--exclude-standard"],
    )?;
    let mut files: Vec<PathBuf> = stdout
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .filter_map(|s| std::str::from_utf8(s).ok().map(PathBuf::from))
        .collect();
    files.sort();
    files.dedup();
    Some(files)
}

fn walk(root: &Path, rel: &Path, skip: Option<&Path>, out: &mut Vec<PathBuf>) -> io::Result<()> {
    for entry in std::fs::read_dir(root.join(rel))? {
        let entry = entry?;
        let rel_path = rel.join(entry.file_name());
        let ft = entry.file_type()?;
        if ft.is_dir() {
            if skip != Some(rel_path.as_path()) {
                walk(root, &rel_path, skip, out)?;
            }
        } else if ft.is_file() || ft.is_symlink() {
            out.push(rel_path);
        }
    }
    Ok(())
}

/// Copies `files` from `project` into `dest` (created), keeping modes and
/// symlinks. Files listed but gone (deleted, not yet committed) are skipped.
pub fn copy_files(project: &Path, files: &[PathBuf], dest: &Path) -> io::Result<u64> {
    std::fs::create_dir_all(dest)?;
    let mut copied = 0;
    for rel in files {
        let from = project.join(rel);
        let to = dest.join(rel);
        let meta = match std::fs::symlink_metadata(&from) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)?;
        }
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&from)?;
            std::os::unix::fs::symlink(target, &to)?;
        } else if meta.is_file() {
            copied += std::fs::copy(&from, &to)?;
        }
    }
    Ok(copied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_directories_are_copied_whole() {
        let src = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(src.path().join("a/b")).expect("mkdir");
        std::fs::write(src.path().join("a/b/f.txt"), "x").expect("write");
        std::fs::write(src.path().join("top"), "y").expect("write");
        let files = project_files(src.path(), Path::new("/nonexistent")).expect("list");
        assert_eq!(files, [PathBuf::from("a/b/f.txt"), PathBuf::from("top")]);
        let dst = tempfile::tempdir().expect("tempdir");
        copy_files(src.path(), &files, &dst.path().join("w")).expect("copy");
        assert_eq!(
            std::fs::read_to_string(dst.path().join("w/a/b/f.txt")).expect("read"),
            "x"
        );
    }

    #[test]
    fn git_projects_leave_ignored_files_out() {
        let src = tempfile::tempdir().expect("tempdir");
        let git = |args: &[&str]| {
            Command::new("git")
                .arg("-C")
                .arg(src.path())
                .args(args)
                .output()
                .map(|o| o.status.success())
        };
        if git(&["init", "-q"]).ok() != Some(true) {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must have git (.ci/run installs it)"
            );
            eprintln!("SKIPPED git_projects_leave_ignored_files_out: git is not installed");
            return;
        }
        std::fs::write(src.path().join(".gitignore"), "target/\n").expect("write");
        std::fs::create_dir_all(src.path().join("target")).expect("mkdir");
        std::fs::write(src.path().join("target/big"), "x").expect("write");
        std::fs::write(src.path().join("new.txt"), "x").expect("write");
        let files = project_files(src.path(), Path::new("/nonexistent")).expect("list");
        assert_eq!(files, [PathBuf::from(".gitignore"), PathBuf::from("new.txt")]);
        // A state directory inside the project, untracked and not ignored.
        std::fs::create_dir_all(src.path().join("state/runs/r1")).expect("mkdir");
        std::fs::write(src.path().join("state/runs/r1/log"), "x").expect("write");
        let files = project_files(src.path(), &src.path().join("state")).expect("list");
        assert_eq!(files, [PathBuf::from(".gitignore"), PathBuf::from("new.txt")]);
    }

    #[test]
    fn a_state_directory_inside_the_project_is_left_out() {
        let src = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(src.path().join("state/runs/r1/work")).expect("mkdir");
        std::fs::write(src.path().join("state/runs/r1/work/big"), "x").expect("write");
        std::fs::create_dir_all(src.path().join("stateful")).expect("mkdir");
        std::fs::write(src.path().join("stateful/keep"), "y").expect("write");
        std::fs::write(src.path().join("pipeline.yml"), "z").expect("write");
        // Named through `..` and a trailing component: resolved all the same.
        let state = src.path().join("stateful/../state");
        let files = project_files(src.path(), &state).expect("list");
        assert_eq!(files, [PathBuf::from("pipeline.yml"), PathBuf::from("stateful/keep")]);
        // The project inside the state directory still copies whole.
        let files = project_files(&src.path().join("stateful"), src.path()).expect("list");
        assert_eq!(files, [PathBuf::from("keep")]);
    }
}

/// The git work tree root containing `dir`, if it is in one.
pub fn git_root(dir: &Path) -> Option<PathBuf> {
    let out = git_out(dir, &["rev-parse", "--show-toplevel"])?;
    Some(PathBuf::from(out.trim_end_matches('\n')))
}

/// What `git -C dir ARGS` prints, when it succeeds.
fn git_bytes(dir: &Path, args: &[&str]) -> Option<Vec<u8>> {
    let output = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    output.status.success().then_some(output.stdout)
}

/// A repository for a run's jobs, as GitLab's runners check one out:
/// `dest` becomes a clone of the project's repository that shares its
/// objects (nothing is copied), its index read from the project's HEAD.
/// Each job's workspace becomes a work tree of it of its own ([`link_git`]:
/// its own HEAD, detached at that commit as a runner's is, and its own
/// index), so `git describe`, `git log` and `git diff` work in jobs, and
/// nothing a job does with git reaches the project's repository: `origin`
/// fetches from the project's own remote, and pushing is refused. `None`
/// when the project is not the root of a git work tree, or git is missing.
pub fn run_repository(project: &Path, dest: &Path) -> Option<RunRepository> {
    if !project.join(".git").exists() {
        return None;
    }
    let dest = std::path::absolute(dest).ok()?;
    if !git_clone(&["--shared"], project, &dest) {
        return None;
    }
    let head = git_out(&dest, &["rev-parse", "HEAD"])?.trim().to_string();
    git_bytes(&dest, &["read-tree", "HEAD"])?;
    guard_remote(project, &dest)?;
    Some(RunRepository {
        git_dir: dest.join(".git"),
        head,
    })
}

/// The run's repository (see [`run_repository`]).
#[derive(Debug, Clone)]
pub struct RunRepository {
    pub git_dir: PathBuf,
    /// The commit jobs start from.
    pub head: String,
}

fn git_clone(extra: &[&str], from: &Path, to: &Path) -> bool {
    Command::new("git")
        .args(["clone", "--no-checkout", "--quiet"])
        .args(extra)
        .arg(from)
        .arg(to)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `origin` of a clone made for jobs: the project's own remote to fetch
/// from (as a runner's clone has the GitLab project), and no way to push.
fn guard_remote(project: &Path, clone: &Path) -> Option<()> {
    let url = git_out(project, &["remote", "get-url", "origin"]).map(|u| u.trim().to_string());
    match &url {
        Some(u) if !u.is_empty() => git_bytes(clone, &["remote", "set-url", "origin", u])?,
        _ => git_bytes(clone, &["remote", "remove", "origin"])?,
    };
    if url.is_some() {
        git_bytes(
            clone,
            &[
                "remote",
                "set-url",
                "--push",
                "origin",
                "trackside-jobs-do-not-push://refused",
            ],
        )?;
    }
    Some(())
}

/// Makes `ws` a work tree of the run's repository of its own, named `name`
/// (a `.git` file and the work tree's entry, as `git worktree add` makes
/// them): HEAD detached at the run's commit, the index a copy of the run's.
pub fn link_git(ws: &Path, repo: &RunRepository, name: &str) -> io::Result<()> {
    let ws = std::path::absolute(ws)?;
    let wt = repo.git_dir.join("worktrees").join(name);
    let _ = std::fs::remove_dir_all(&wt);
    std::fs::create_dir_all(&wt)?;
    std::fs::write(wt.join("HEAD"), format!("{}\n", repo.head))?;
    std::fs::write(wt.join("commondir"), "../..\n")?;
    std::fs::write(wt.join("gitdir"), format!("{}\n", ws.join(".git").display()))?;
    std::fs::copy(repo.git_dir.join("index"), wt.join("index"))?;
    std::fs::write(ws.join(".git"), format!("gitdir: {}\n", wt.display()))
}

/// A clone of its own in `ws` (for a container job, whose workspace is all
/// it sees), its objects copied (never hard links into the project's).
pub fn own_repository(project: &Path, ws: &Path) -> io::Result<()> {
    let tmp = ws.join(".trackside-clone");
    if !git_clone(&["--no-hardlinks"], project, &tmp) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(io::Error::other(format!("git clone of {} failed", project.display())));
    }
    std::fs::rename(tmp.join(".git"), ws.join(".git"))?;
    let _ = std::fs::remove_dir_all(&tmp);
    git_bytes(ws, &["read-tree", "HEAD"]).ok_or_else(|| io::Error::other("git read-tree failed"))?;
    guard_remote(project, ws).ok_or_else(|| io::Error::other("git remote setup failed"))
}

/// The files git does not track in the work tree `ws`, relative, ignored
/// ones included (GitLab's `untracked: true` takes those too); empty when
/// `ws` is no work tree.
pub fn untracked_files(ws: &Path) -> Vec<String> {
    git_bytes(ws, &["ls-files", "--others", "-z"])
        .map(|out| {
            out.split(|&b| b == 0)
                .filter(|p| !p.is_empty())
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn git_out(dir: &Path, args: &[&str]) -> Option<String> {
    String::from_utf8(git_bytes(dir, args)?).ok()
}

/// GitLab's predefined variables a pipeline is created with, from the git
/// repository containing `dir` (what GitLab's server would know): the
/// commit, its branch or tag, the default branch, the project's name and
/// who the user is. Outside a repository only the constant ones.
pub fn gitlab_variables(dir: &Path) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = [
        ("CI", "true"),
        ("GITLAB_CI", "true"),
        ("CI_SERVER", "yes"),
        ("CI_PIPELINE_SOURCE", "push"),
        ("CI_PIPELINE_ID", "1"),
        ("CI_PIPELINE_IID", "1"),
        ("CI_SERVER_HOST", "gitlab.com"),
        ("CI_SERVER_URL", "https://gitlab.com"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let line = |args: &[&str]| git_out(dir, args).map(|s| s.trim_end_matches('\n').to_string());
    let Some(root) = git_root(dir) else {
        return out;
    };
    // The project's place on its server, from the origin remote (else a
    // `local/NAME` project on gitlab.com).
    let dir_name = root
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let (host, path) = line(&["remote", "get-url", "origin"])
        .and_then(|url| remote_parts(&url))
        .unwrap_or_else(|| ("gitlab.com".to_string(), format!("local/{dir_name}")));
    let (namespace, name) = match path.rsplit_once('/') {
        Some((ns, n)) => (ns.to_string(), n.to_string()),
        None => (String::new(), path.clone()),
    };
    out.retain(|(k, _)| k != "CI_SERVER_HOST" && k != "CI_SERVER_URL");
    let mut set = |k: &str, v: String| out.push((k.to_string(), v));
    set("CI_SERVER_HOST", host.clone());
    set("CI_SERVER_URL", format!("https://{host}"));
    set("CI_PROJECT_NAME", name);
    set("CI_PROJECT_NAMESPACE", namespace);
    set("CI_PROJECT_PATH_SLUG", crate::pipeline::gitlab::slug(&path, 63));
    set("CI_PROJECT_URL", format!("https://{host}/{path}"));
    set("CI_PIPELINE_URL", format!("https://{host}/{path}/-/pipelines/1"));
    set("CI_REGISTRY_IMAGE", format!("registry.{host}/{}", path.to_lowercase()));
    set("CI_PROJECT_PATH", path);
    if let Some(sha) = line(&["rev-parse", "HEAD"]) {
        set("CI_COMMIT_SHORT_SHA", sha.chars().take(8).collect());
        set("CI_COMMIT_SHA", sha);
    }
    let branch = line(&["symbolic-ref", "--short", "-q", "HEAD"]);
    let tag = match &branch {
        Some(_) => None,
        None => line(&["describe", "--tags", "--exact-match", "HEAD"]),
    };
    let ref_name = branch.clone().or_else(|| tag.clone());
    if let Some(b) = branch {
        set("CI_COMMIT_BRANCH", b);
    }
    if let Some(t) = tag {
        set("CI_COMMIT_TAG", t);
    }
    if let Some(r) = ref_name {
        set("CI_COMMIT_REF_SLUG", ref_slug(&r));
        set("CI_COMMIT_REF_NAME", r);
    }
    if let Some(s) = line(&["log", "-1", "--format=%s"]) {
        set("CI_COMMIT_TITLE", s);
    }
    if let Some(s) = line(&["log", "-1", "--format=%B"]) {
        set("CI_COMMIT_MESSAGE", s);
    }
    if let Some(s) = line(&["log", "-1", "--format=%cI"]) {
        set("CI_COMMIT_TIMESTAMP", s);
    }
    if let Some(s) = line(&["log", "-1", "--format=%an <%ae>"]) {
        set("CI_COMMIT_AUTHOR", s);
    }
    let default_branch = line(&["symbolic-ref", "--short", "-q", "refs/remotes/origin/HEAD"])
        .and_then(|r| r.strip_prefix("origin/").map(str::to_string))
        .or_else(|| line(&["config", "init.defaultBranch"]))
        .unwrap_or_else(|| "main".into());
    set("CI_DEFAULT_BRANCH", default_branch);
    if let Some(name) = line(&["config", "user.name"]) {
        set("GITLAB_USER_NAME", name);
    }
    if let Some(email) = line(&["config", "user.email"]) {
        set(
            "GITLAB_USER_LOGIN",
            email.split('@').next().unwrap_or_default().to_string(),
        );
        set("GITLAB_USER_EMAIL", email);
    }
    out
}

/// The files a GitLab pipeline counts as changed (`rules:changes`), from
/// the project's root: on a branch
/// other than the default one, since where it forked from the default
/// branch, and on the default branch since the parent commit (GitLab's
/// rules for merge request and branch pipelines). What the working tree
/// changes on top (staged, unstaged, untracked) counts too: the run uses the
/// working tree. `None` when there is nothing to compare with (no git, a
/// first commit, no default branch here): then every `changes` matches, as
/// in GitLab for a pipeline without a previous commit.
pub fn changed_files(dir: &Path, default_branch: Option<&str>) -> Option<Vec<String>> {
    let branch = git_out(dir, &["symbolic-ref", "--short", "-q", "HEAD"]).map(|s| s.trim().to_string());
    match (branch, default_branch) {
        (Some(b), Some(d)) if b != d => {
            let base = ["origin/", ""]
                .iter()
                .map(|p| format!("{p}{d}"))
                .find(|r| git_out(dir, &["rev-parse", "--verify", "-q", r]).is_some())?;
            changed_since(dir, &base)
        }
        _ => {
            git_out(dir, &["rev-parse", "--verify", "-q", "HEAD~1"])?;
            changed_since(dir, "HEAD~1")
        }
    }
}

/// The files changed between the merge base of `reference` and HEAD, and
/// in the working tree; `None` when `reference` is not a commit here.
pub fn changed_since(dir: &Path, reference: &str) -> Option<Vec<String>> {
    let commit = format!("{reference}^{{commit}}");
    git_out(dir, &["rev-parse", "--verify", "-q", &commit])?;
    let base = git_out(dir, &["merge-base", reference, "HEAD"])?;
    let base = base.trim();
    let mut files: Vec<String> = Vec::new();
    let lists = [
        git_bytes(dir, &["diff", "--name-only", "-z", base, "HEAD"]),
        git_bytes(dir, &["diff", "--name-only", "-z", "HEAD"]),
        git_bytes(dir, &["ls-files", "--others", "--exclude-standard", "-z"]),
    ];
    for list in lists.into_iter().flatten() {
        files.extend(
            list.split(|&b| b == 0)
                .filter(|p| !p.is_empty())
                .map(|p| String::from_utf8_lossy(p).into_owned()),
        );
    }
    files.sort();
    files.dedup();
    Some(files)
}

/// The host and project path of a git remote URL: `git@host:group/p.git`,
/// `https://host/group/p.git`, `ssh://git@host:22/group/p`.
fn remote_parts(url: &str) -> Option<(String, String)> {
    let url = url.trim();
    let (host, path) = if let Some(rest) = url.split_once("://").map(|(_, r)| r) {
        let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
        let (host, path) = rest.split_once('/')?;
        (host.split(':').next().unwrap_or(host), path)
    } else {
        let rest = url.rsplit_once('@').map_or(url, |(_, r)| r);
        rest.split_once(':')?
    };
    let path = path.trim_matches('/');
    let path = path.strip_suffix(".git").unwrap_or(path);
    (!host.is_empty() && !path.is_empty()).then(|| (host.to_string(), path.to_string()))
}

/// GitLab's `CI_COMMIT_REF_SLUG`.
fn ref_slug(name: &str) -> String {
    crate::pipeline::gitlab::slug(name, 63)
}

#[cfg(test)]
mod git_tests {
    use super::*;

    #[test]
    fn jobs_see_a_repository_that_is_not_the_projects() {
        let project = tempfile::tempdir().expect("tempdir");
        let git = |dir: &Path, args: &[&str]| {
            Command::new("git")
                .arg("-C")
                .arg(dir)
                .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
                .args(args)
                .output()
                .is_ok_and(|o| o.status.success())
        };
        if !git(project.path(), &["init", "-q", "-b", "main"]) {
            assert!(std::env::var_os("CI").is_none(), "CI must have git");
            return;
        }
        std::fs::write(project.path().join("a.txt"), "a").expect("write");
        assert!(git(project.path(), &["add", "-A"]));
        assert!(git(project.path(), &["commit", "-qm", "first"]));
        let run = tempfile::tempdir().expect("tempdir");
        assert!(git(
            project.path(),
            &["remote", "add", "origin", "https://gitlab.example.com/g/p.git"]
        ));
        let repo = run_repository(project.path(), &run.path().join("git")).expect("clone");
        let job = |name: &str| {
            let ws = run.path().join(name);
            std::fs::create_dir_all(&ws).expect("mkdir");
            std::fs::write(ws.join("a.txt"), "a").expect("write");
            link_git(&ws, &repo, name).expect("link");
            ws
        };
        let (ws, other) = (job("ws"), job("other"));
        assert_eq!(git_out(&ws, &["log", "-1", "--format=%s"]).as_deref(), Some("first\n"));
        assert_eq!(git_out(&ws, &["status", "--porcelain"]).as_deref(), Some(""));
        // A commit in one job moves neither the other job's HEAD nor the project's.
        assert!(git(&ws, &["commit", "-q", "--allow-empty", "-m", "from a job"]));
        assert_eq!(
            git_out(&other, &["log", "-1", "--format=%s"]).as_deref(),
            Some("first\n")
        );
        assert_eq!(
            git_out(project.path(), &["log", "-1", "--format=%s"]).as_deref(),
            Some("first\n")
        );
        // origin is the project's remote, and pushing to it is refused.
        assert_eq!(
            git_out(&ws, &["remote", "get-url", "origin"]).as_deref(),
            Some("https://gitlab.example.com/g/p.git\n")
        );
        assert!(!git(&ws, &["push", "origin", "HEAD:refs/heads/x"]));
        let own = run.path().join("own");
        std::fs::create_dir_all(&own).expect("mkdir");
        own_repository(project.path(), &own).expect("own clone");
        assert!(own.join(".git").is_dir());
        assert_eq!(git_out(&own, &["log", "-1", "--format=%s"]).as_deref(), Some("first\n"));
    }

    #[test]
    fn remotes_name_the_project() {
        for (url, host, path) in [
            ("git@gitlab.com:group/sub/app.git", "gitlab.com", "group/sub/app"),
            (
                "https://gitlab.example.org/team/app.git",
                "gitlab.example.org",
                "team/app",
            ),
            ("ssh://git@git.corp:2222/a/b", "git.corp", "a/b"),
            ("https://user:token@gitlab.com/g/p", "gitlab.com", "g/p"),
        ] {
            assert_eq!(remote_parts(url), Some((host.to_string(), path.to_string())), "{url}");
        }
        assert_eq!(remote_parts("not a url"), None);
    }

    #[test]
    fn ref_slugs_follow_gitlab() {
        assert_eq!(ref_slug("Feature/Add_Login"), "feature-add-login");
        assert_eq!(ref_slug("-x-"), "x");
        assert_eq!(ref_slug(&"a".repeat(100)).len(), 63);
    }

    #[test]
    fn outside_a_repository_only_the_constant_variables() {
        let dir = tempfile::tempdir().expect("tempdir");
        let vars = gitlab_variables(dir.path());
        assert!(vars.iter().any(|(k, v)| k == "CI_PIPELINE_SOURCE" && v == "push"));
        assert!(!vars.iter().any(|(k, _)| k == "CI_COMMIT_SHA"));
    }
}
