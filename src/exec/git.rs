//! What trackside asks of git: the facts a GitLab pipeline is created with
//! (its commit, branch, tag, default branch, remote and user), the files a
//! pipeline counts as changed, and the repository a run's jobs work in.
//!
//! Every question is a `git` process, and each costs about 2 ms before it
//! does anything, so they are few and asked at once: [`Facts::read`] starts
//! its three processes together and then waits for them, and a run's
//! repository is written by hand from two answers instead of `git clone`
//! (which alone takes about 30 ms: templates, an upload-pack, a fetch).
//! Anything out of the ordinary (a SHA-256 or reftable repository, one with
//! extensions) falls back to `git clone`, which knows every case.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A `git` command: the program found on `PATH` once, by its path.
pub(crate) fn git_command() -> Command {
    Command::new(crate::process::git_program())
}

/// `git -C dir ARGS`, started with its output piped (not yet waited for).
/// Not started where git could only say "not a git repository".
fn start(dir: &Path, args: &[&str]) -> Option<Child> {
    if !may_be_in_work_tree(dir) {
        return None;
    }
    git_command()
        .arg("-C")
        .arg(dir)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()
}

/// Whether git could find a repository for `dir`: a `.git` in it or above
/// it, or one named by the environment. Asking costs a process (1-2 ms);
/// looking costs a few `stat`s.
fn may_be_in_work_tree(dir: &Path) -> bool {
    if std::env::var_os("GIT_DIR").is_some() || std::env::var_os("GIT_WORK_TREE").is_some() {
        return true;
    }
    // A folder that cannot be resolved: let git say what is wrong.
    dot_git_above(dir).is_none_or(|found| found.is_some())
}

/// The `.git` (folder or file) at or above `dir`, as git looks for one;
/// `None` when `dir` cannot be resolved.
fn dot_git_above(dir: &Path) -> Option<Option<PathBuf>> {
    let dir = dir.canonicalize().ok()?;
    Some(
        dir.ancestors()
            .map(|d| d.join(".git"))
            .find(|g| g.symlink_metadata().is_ok()),
    )
}

/// What a started git printed, when it succeeded.
fn finish(child: Option<Child>) -> Option<Vec<u8>> {
    let out = child?.wait_with_output().ok()?;
    out.status.success().then_some(out.stdout)
}

/// What `git -C dir ARGS` prints, when it succeeds.
pub(crate) fn bytes(dir: &Path, args: &[&str]) -> Option<Vec<u8>> {
    finish(start(dir, args))
}

fn text(dir: &Path, args: &[&str]) -> Option<String> {
    String::from_utf8(bytes(dir, args)?).ok()
}

/// NUL-separated fields, empty ones dropped.
fn nul_list(out: &[u8]) -> impl Iterator<Item = String> + '_ {
    out.split(|&b| b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| String::from_utf8_lossy(p).into_owned())
}

/// The git work tree root containing `dir`, if it is in one.
pub fn root(dir: &Path) -> Option<PathBuf> {
    let out = text(dir, &["rev-parse", "--show-toplevel"])?;
    Some(PathBuf::from(out.trim_end_matches('\n')))
}

/// The commit HEAD points at.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Commit {
    pub sha: String,
    pub title: String,
    pub message: String,
    /// ISO 8601, the committer's date.
    pub timestamp: String,
    /// `Name <email>`.
    pub author: String,
}

/// What git says about the work tree a pipeline is in.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Facts {
    /// The work tree's root.
    pub root: PathBuf,
    /// `None` before the first commit.
    pub head: Option<Commit>,
    /// The branch checked out; `None` when HEAD is detached.
    pub branch: Option<String>,
    /// A tag on HEAD's commit, when HEAD is detached (annotated tags first,
    /// as `git describe --tags --exact-match` prefers them).
    pub tag: Option<String>,
    /// The default branch: origin's HEAD, else `init.defaultBranch`, else `main`.
    pub default_branch: String,
    /// `remote.origin.url`.
    pub origin_url: Option<String>,
    pub user_name: Option<String>,
    pub user_email: Option<String>,
    /// How the repository is kept, for writing a run's repository without
    /// asking again; `None` when git could not say.
    pub layout: Option<Layout>,
}

/// How a repository is kept on disk.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Layout {
    /// The git directory shared by all its work trees (`objects`, `refs`).
    pub common_dir: PathBuf,
    pub shallow: bool,
    /// SHA-1 objects, loose and packed refs, format version 0 and no
    /// extensions: what [`run_repository`] writes by hand.
    pub plain: bool,
    /// Branches and tags: name, object, whether HEAD is on it.
    pub refs: Vec<(String, String, bool)>,
}

/// `for-each-ref` records: HEAD mark, name, object, peeled object, symref
/// target and, for the branch HEAD is on, its commit as [`LOG_FORMAT`] has
/// it (a `git log` less). Fields end in NUL, records in NUL and a newline
/// (a commit message has newlines of its own).
const REF_FORMAT: &str = "--format=%(HEAD)%00%(refname)%00%(objectname)%00%(*objectname)%00%(symref)\
     %(if)%(HEAD)%(then)%00%(objectname)%00%(committerdate:iso-strict)\
     %00%(authorname) %(authoremail)%00%(contents)%(end)%00";

/// [`REF_FORMAT`] without the commit, for a git that knows no `%(if)`.
const PLAIN_REF_FORMAT: &str = "--format=%(HEAD)%00%(refname)%00%(objectname)%00%(*objectname)%00%(symref)%00";

/// HEAD's commit: sha, committer date, author, message (the title is
/// taken from the message, as from `for-each-ref`'s).
const LOG_FORMAT: &str = "--format=%H%x00%cI%x00%an <%ae>%x00%B";

/// One record of [`REF_FORMAT`].
struct RefLine<'a> {
    current: bool,
    name: &'a str,
    object: &'a str,
    /// The commit an annotated tag points at; empty for others.
    peeled: &'a str,
    symref: &'a str,
    /// The commit's fields, on the branch HEAD is on.
    commit: Option<[&'a str; 4]>,
}

/// The records of [`REF_FORMAT`] (`with_commit`) or [`PLAIN_REF_FORMAT`].
fn ref_lines(out: &str, with_commit: bool) -> impl Iterator<Item = RefLine<'_>> {
    let mut fields = out.split('\0');
    std::iter::from_fn(move || {
        // A record's first field follows the last one's newline.
        let mark = fields.next()?.trim_start_matches('\n');
        let mut next = || fields.next();
        let (name, object, peeled, symref) = (next()?, next()?, next()?, next()?);
        let current = mark == "*";
        let commit = if current && with_commit {
            Some([next()?, next()?, next()?, next()?])
        } else {
            None
        };
        Some(RefLine {
            current,
            name,
            object,
            peeled,
            symref,
            commit,
        })
    })
}

/// HEAD's commit from what `git log` printed in [`LOG_FORMAT`].
fn logged_commit(out: &[u8]) -> Option<Commit> {
    commit_of(String::from_utf8_lossy(out).split('\0'))
}

/// HEAD's commit from [`LOG_FORMAT`]'s fields; `None` before the first.
fn commit_of<'a>(mut fields: impl Iterator<Item = &'a str>) -> Option<Commit> {
    let mut next = || fields.next().unwrap_or_default().to_string();
    let sha = next();
    let (timestamp, author) = (next(), next());
    let message = next().trim_end_matches(['\n', '\0']).to_string();
    let commit = Commit {
        title: subject_of(&message),
        timestamp,
        author,
        message,
        sha,
    };
    (!commit.sha.is_empty()).then_some(commit)
}

/// The title git's `%s` makes of a commit message: its first paragraph
/// after any blank lines, each line without its trailing white space
/// (git's: space, tab, CR, LF), joined by spaces.
fn subject_of(message: &str) -> String {
    let trim = |l: &str| l.trim_end_matches([' ', '\t', '\r', '\n']).to_string();
    let lines: Vec<String> = message
        .split('\n')
        .map(trim)
        .skip_while(String::is_empty)
        .take_while(|l| !l.is_empty())
        .collect();
    lines.join(" ")
}

/// Whether HEAD names a branch, by a look at the `.git` folder found at or
/// above `dir`: then `for-each-ref` says what its commit is and no `git
/// log` is started. Only a guess about which processes to start; git's
/// answers decide (a wrong guess costs a `git log` after the others).
fn head_on_branch(dir: &Path) -> bool {
    use std::io::Read;
    if std::env::var_os("GIT_DIR").is_some() {
        return false;
    }
    let Some(Some(dot_git)) = dot_git_above(dir) else {
        return false;
    };
    let mut head = [0u8; 64];
    let read = std::fs::File::open(dot_git.join("HEAD")).and_then(|mut f| f.read(&mut head));
    read.is_ok_and(|n| head[..n].starts_with(b"ref: refs/heads/"))
}

impl Facts {
    /// The facts of the work tree containing `dir`; `None` outside one (or
    /// without git).
    pub fn read(dir: &Path) -> Option<Facts> {
        // Three processes at once (four with HEAD detached): the time of one.
        let top = start(
            dir,
            &[
                "rev-parse",
                "--path-format=absolute",
                "--show-toplevel",
                "--git-common-dir",
                "--is-shallow-repository",
                "--show-object-format",
            ],
        );
        // HEAD's commit comes with its branch's ref; a detached one asks.
        let log_args = ["log", "-1", "-z", LOG_FORMAT];
        let asked_log = !head_on_branch(dir);
        let log = asked_log.then(|| start(dir, &log_args)).flatten();
        let refs_args = |format| {
            [
                "for-each-ref",
                format,
                "refs/heads",
                "refs/tags",
                "refs/remotes/origin/HEAD",
            ]
        };
        let refs = start(dir, &refs_args(REF_FORMAT));
        let config = start(
            dir,
            &[
                "config",
                "-z",
                "--get-regexp",
                r"^(user\.name|user\.email|init\.defaultbranch|remote\.origin\.url|core\.repositoryformatversion|extensions\..*)$",
            ],
        );
        let (top, log, config) = (finish(top), finish(log), finish(config));
        // A git before 2.13 knows no `%(if)`: the refs without the commit.
        let (refs, with_commit) = match finish(refs) {
            Some(r) => (Some(r), true),
            None => (finish(start(dir, &refs_args(PLAIN_REF_FORMAT))), false),
        };
        // A git before 2.31 knows no `--path-format`: the root alone then.
        let top = match top {
            Some(t) => String::from_utf8(t).ok()?,
            None => text(dir, &["rev-parse", "--show-toplevel"])?,
        };
        let mut place = top.lines();
        let root = PathBuf::from(place.next()?);
        let common_dir = place.next().map(PathBuf::from);
        let shallow = place.next() == Some("true");
        let sha1 = place.next() == Some("sha1");
        let refs = refs
            .map(|r| String::from_utf8_lossy(&r).into_owned())
            .unwrap_or_default();
        let on_branch = ref_lines(&refs, with_commit)
            .find_map(|r| r.commit)
            .and_then(|c| commit_of(c.into_iter()));
        let head = match (log, on_branch) {
            (Some(out), _) => logged_commit(&out),
            (None, Some(commit)) => Some(commit),
            // Guessed wrong (or an old git): asked now. Asked and failed:
            // no commit yet.
            (None, None) if !asked_log => bytes(dir, &log_args).and_then(|out| logged_commit(&out)),
            (None, None) => None,
        };
        let mut branch = None;
        let mut origin_head = None;
        let mut tags: Vec<(bool, &str)> = Vec::new();
        let mut kept = Vec::new();
        let sha = head.as_ref().map(|c| c.sha.as_str());
        for r in ref_lines(&refs, with_commit) {
            if r.name == "refs/remotes/origin/HEAD" {
                origin_head = r.symref.strip_prefix("refs/remotes/origin/").map(str::to_string);
                continue;
            }
            if !r.symref.is_empty() {
                continue;
            }
            kept.push((r.name.to_string(), r.object.to_string(), r.current));
            if let Some(b) = r.name.strip_prefix("refs/heads/").filter(|_| r.current) {
                branch = Some(b.to_string());
            } else if let Some(t) = r.name.strip_prefix("refs/tags/") {
                let target = if r.peeled.is_empty() { r.object } else { r.peeled };
                if Some(target) == sha {
                    tags.push((r.peeled.is_empty(), t));
                }
            }
        }
        if branch.is_none() && head.is_none() {
            // Before the first commit no ref exists; HEAD still names its branch.
            branch = text(dir, &["symbolic-ref", "--short", "-q", "HEAD"]).map(|b| b.trim().to_string());
        }
        tags.sort();
        let tag = branch
            .is_none()
            .then(|| tags.first().map(|(_, t)| t.to_string()))
            .flatten();
        let mut settings: BTreeMap<String, String> = BTreeMap::new();
        let mut extensions = false;
        for entry in config.as_deref().map(nul_list).into_iter().flatten() {
            // `-z`: "key\nvalue"; the last value of a key wins, as for git.
            let (k, v) = entry.split_once('\n').unwrap_or((entry.as_str(), ""));
            extensions |= k.starts_with("extensions.");
            settings.insert(k.to_string(), v.to_string());
        }
        let setting = |k: &str| settings.get(k).filter(|v| !v.is_empty()).cloned();
        let layout = common_dir.map(|common_dir| Layout {
            plain: sha1
                && !extensions
                && setting("core.repositoryformatversion").is_none_or(|v| v == "0")
                && !common_dir.join("reftable").exists(),
            common_dir,
            shallow,
            refs: kept,
        });
        Some(Facts {
            root,
            head,
            tag,
            default_branch: origin_head
                .or_else(|| setting("init.defaultbranch"))
                .unwrap_or_else(|| "main".into()),
            branch,
            origin_url: setting("remote.origin.url"),
            user_name: setting("user.name"),
            user_email: setting("user.email"),
            layout,
        })
    }
}

/// What a GitHub workflow's `github` context says of this repository, as
/// `GITHUB_*` values: the commit, its branch or tag, the repository
/// (`owner/name` from the origin remote, else `local/<folder>`) and the
/// actor (git's `user.name`). The event is a push.
pub fn github_variables(facts: Option<&Facts>) -> Vec<(String, String)> {
    let mut out = vec![("GITHUB_EVENT_NAME".to_string(), "push".to_string())];
    let Some(facts) = facts else {
        return out;
    };
    let mut set = |k: &str, v: String| out.push((k.to_string(), v));
    let dir_name = facts
        .root
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let path = facts
        .origin_url
        .as_deref()
        .and_then(remote_parts)
        .map_or_else(|| format!("local/{dir_name}"), |(_, p)| p);
    let owner = path.split('/').next().unwrap_or_default().to_string();
    set("GITHUB_REPOSITORY", path);
    set("GITHUB_REPOSITORY_OWNER", owner);
    if let Some(c) = &facts.head {
        set("GITHUB_SHA", c.sha.clone());
    }
    match (&facts.branch, &facts.tag) {
        (Some(b), _) => {
            set("GITHUB_REF", format!("refs/heads/{b}"));
            set("GITHUB_REF_NAME", b.clone());
            set("GITHUB_REF_TYPE", "branch".into());
        }
        (None, Some(t)) => {
            set("GITHUB_REF", format!("refs/tags/{t}"));
            set("GITHUB_REF_NAME", t.clone());
            set("GITHUB_REF_TYPE", "tag".into());
        }
        (None, None) => {}
    }
    if let Some(name) = &facts.user_name {
        set("GITHUB_ACTOR", name.clone());
    }
    out
}

/// GitLab's predefined variables a pipeline is created with, from the
/// facts of its repository (what GitLab's server would know): the commit,
/// its branch or tag, the default branch, the project's name and who the
/// user is. Outside a repository only the constant ones.
pub fn gitlab_variables(facts: Option<&Facts>) -> Vec<(String, String)> {
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
    let Some(facts) = facts else {
        return out;
    };
    // The project's place on its server, from the origin remote (else a
    // `local/NAME` project on gitlab.com).
    let dir_name = facts
        .root
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let (host, path) = facts
        .origin_url
        .as_deref()
        .and_then(remote_parts)
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
    if let Some(c) = &facts.head {
        set("CI_COMMIT_SHORT_SHA", c.sha.chars().take(8).collect());
        set("CI_COMMIT_SHA", c.sha.clone());
        set("CI_COMMIT_TITLE", c.title.clone());
        set("CI_COMMIT_MESSAGE", c.message.clone());
        set("CI_COMMIT_TIMESTAMP", c.timestamp.clone());
        set("CI_COMMIT_AUTHOR", c.author.clone());
    }
    if let Some(b) = &facts.branch {
        set("CI_COMMIT_BRANCH", b.clone());
    }
    if let Some(t) = &facts.tag {
        set("CI_COMMIT_TAG", t.clone());
    }
    if let Some(r) = facts.branch.as_ref().or(facts.tag.as_ref()) {
        set("CI_COMMIT_REF_SLUG", ref_slug(r));
        set("CI_COMMIT_REF_NAME", r.clone());
    }
    set("CI_DEFAULT_BRANCH", facts.default_branch.clone());
    if let Some(name) = &facts.user_name {
        set("GITLAB_USER_NAME", name.clone());
    }
    if let Some(email) = &facts.user_email {
        set(
            "GITLAB_USER_LOGIN",
            email.split('@').next().unwrap_or_default().to_string(),
        );
        set("GITLAB_USER_EMAIL", email.clone());
    }
    out
}

/// Whether the work tree has changes to tracked files not committed;
/// `None` when git cannot say.
pub fn dirty(dir: &Path) -> Option<bool> {
    text(dir, &["status", "--porcelain", "--untracked-files=no"]).map(|t| !t.trim().is_empty())
}

/// The files a GitLab pipeline counts as changed (`rules:changes`), from
/// the project's root `dir`, on `branch`: on a branch other than the
/// default one, since where it forked from the default branch, and on the
/// default branch since the parent commit (GitLab's rules for merge
/// request and branch pipelines). What the working tree changes on top
/// (staged, unstaged, untracked) counts too: the run uses the working tree.
/// `None` when there is nothing to compare with (no git, a first commit, no
/// default branch here): then every `changes` matches, as in GitLab for a
/// pipeline without a previous commit.
pub fn changed_files(dir: &Path, branch: Option<&str>, default_branch: &str) -> Option<Vec<String>> {
    match branch {
        Some(b) if b != default_branch => {
            let base = ["origin/", ""]
                .iter()
                .map(|p| format!("{p}{default_branch}"))
                .find(|r| text(dir, &["rev-parse", "--verify", "-q", r]).is_some())?;
            changed_since(dir, &base)
        }
        _ => changed_since(dir, "HEAD~1"),
    }
}

/// The files changed between the merge base of `reference` and HEAD, and
/// in the working tree; `None` when `reference` is not a commit here.
pub fn changed_since(dir: &Path, reference: &str) -> Option<Vec<String>> {
    let commit = format!("{reference}^{{commit}}");
    text(dir, &["rev-parse", "--verify", "-q", &commit])?;
    let base = text(dir, &["merge-base", reference, "HEAD"])?;
    let base = base.trim();
    // Three lists, asked at once.
    let lists = [
        start(dir, &["diff", "--name-only", "-z", base, "HEAD"]),
        start(dir, &["diff", "--name-only", "-z", "HEAD"]),
        start(dir, &["ls-files", "--others", "--exclude-standard", "-z"]),
    ];
    let mut files: Vec<String> = Vec::new();
    for list in lists.into_iter().filter_map(finish) {
        files.extend(nul_list(&list));
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

/// Where a push from a job's repository goes: nowhere.
const NO_PUSH: &str = "trackside-jobs-do-not-push://refused";

/// A repository for a run's jobs, as GitLab's runners check one out:
/// `dest` becomes a clone of the project's repository that shares its
/// objects (nothing is copied), its index read from the project's HEAD.
/// Each job's workspace becomes a work tree of it of its own ([`link_git`]:
/// its own HEAD, detached at that commit as a runner's is, and its own
/// index), so `git describe`, `git log` and `git diff` work in jobs, and
/// nothing a job does with git reaches the project's repository: `origin`
/// fetches from the project's own remote, and pushing is refused. `facts`
/// are the project's, when the caller has them already (else git is
/// asked). `None` when the project is not the root of a git work tree, or
/// git is missing.
pub fn run_repository(project: &Path, dest: &Path, facts: Option<&Facts>) -> Option<RunRepository> {
    if !project.join(".git").exists() {
        return None;
    }
    let dest = std::path::absolute(dest).ok()?;
    let asked;
    // Facts of another folder (a `--project-dir` elsewhere) are no use.
    let same = |f: &&Facts| std::fs::canonicalize(&f.root).ok() == std::fs::canonicalize(project).ok();
    let facts = match facts.filter(same) {
        Some(f) => Some(f),
        None => {
            asked = Facts::read(project);
            asked.as_ref()
        }
    };
    if let Some(repo) = facts.and_then(|f| shared_clone(f, &dest)) {
        return Some(repo);
    }
    let _ = std::fs::remove_dir_all(&dest);
    cloned(project, &dest)
}

/// The run's repository (see [`run_repository`]).
#[derive(Debug, Clone)]
pub struct RunRepository {
    pub git_dir: PathBuf,
    /// The commit jobs start from.
    pub head: String,
    /// The files each job's `.git` links to (see [`link_git`]), by device
    /// and inode, as they were made: what [`linked`] compares a
    /// workspace's links with. `None` when they could not be read.
    links: Option<[(u64, u64); 3]>,
}

/// Where the files every job's `.git` holds alike are kept, in the run's
/// git directory (git leaves unknown folders there alone).
const SHARED: &str = "trackside-worktree";

impl RunRepository {
    fn new(git_dir: PathBuf, head: String) -> Option<RunRepository> {
        let shared = git_dir.join(SHARED);
        std::fs::create_dir_all(&shared).ok()?;
        std::fs::write(shared.join("HEAD"), format!("{head}\n")).ok()?;
        std::fs::write(shared.join("commondir"), format!("{}\n", git_dir.display())).ok()?;
        let id = |p: PathBuf| {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()))
        };
        let links = (|| {
            Some([
                id(shared.join("HEAD"))?,
                id(shared.join("commondir"))?,
                id(git_dir.join("index"))?,
            ])
        })();
        Some(RunRepository { git_dir, head, links })
    }
}

/// The repository `git clone --shared --no-checkout` would make, written
/// directly from what `facts` say: `objects/info/alternates` naming the
/// project's objects, the project's branches as `origin/*` and its tags in
/// `packed-refs`, the branch checked out, the remote guarded; then `git
/// read-tree` for the index. `None` for anything out of the ordinary.
fn shared_clone(facts: &Facts, dest: &Path) -> Option<RunRepository> {
    let layout = facts.layout.as_ref().filter(|l| l.plain)?;
    let head = facts.head.as_ref()?.sha.clone();
    let git = dest.join(".git");
    let mut packed = BTreeMap::new();
    let mut branch = None;
    for (name, object, current) in &layout.refs {
        if let Some(b) = name.strip_prefix("refs/heads/") {
            packed.insert(format!("refs/remotes/origin/{b}"), object);
            if *current && *object == head {
                packed.insert(name.clone(), object);
                branch = Some(b);
            }
        } else if name.starts_with("refs/tags/") {
            packed.insert(name.clone(), object);
        }
    }
    let write = || -> io::Result<()> {
        for d in [
            "objects/info",
            "objects/pack",
            "refs/heads",
            "refs/tags",
            "refs/remotes/origin",
        ] {
            std::fs::create_dir_all(git.join(d))?;
        }
        std::fs::write(
            git.join("objects/info/alternates"),
            format!("{}\n", layout.common_dir.join("objects").display()),
        )?;
        if layout.shallow {
            std::fs::copy(layout.common_dir.join("shallow"), git.join("shallow"))?;
        }
        let mut text = String::from("# pack-refs with: sorted \n");
        for (name, object) in &packed {
            text.push_str(&format!("{object} {name}\n"));
        }
        std::fs::write(git.join("packed-refs"), text)?;
        std::fs::write(
            git.join("HEAD"),
            match &branch {
                Some(b) => format!("ref: refs/heads/{b}\n"),
                None => format!("{head}\n"),
            },
        )?;
        if let Some(b) = &branch {
            std::fs::write(
                git.join("refs/remotes/origin/HEAD"),
                format!("ref: refs/remotes/origin/{b}\n"),
            )?;
        }
        let mut config = String::from(
            "[core]\n\trepositoryformatversion = 0\n\tfilemode = true\n\tbare = false\n\tlogallrefupdates = true\n",
        );
        if let Some(url) = &facts.origin_url {
            config.push_str(&format!(
                "[remote \"origin\"]\n\turl = {}\n\tfetch = +refs/heads/*:refs/remotes/origin/*\n\tpushurl = {NO_PUSH}\n",
                config_value(url)
            ));
        }
        std::fs::write(git.join("config"), config)
    };
    // The index is read from the project's repository while the rest is
    // written: it names objects, which both share. Git locks only the
    // `GIT_INDEX_FILE` it is given. What the project's settings would add
    // is turned off: its hooks (`post-index-change` runs after an index is
    // written), its file-system monitor, a split or sparse index.
    std::fs::create_dir_all(&git).ok()?;
    let index = git_command()
        .arg("-C")
        .arg(&facts.root)
        .args(["-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false"])
        .args(["-c", "core.splitIndex=false", "-c", "index.sparse=false"])
        .args(["read-tree", &head])
        .env("GIT_INDEX_FILE", git.join("index"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok();
    let written = write();
    let indexed = finish(index);
    written.ok()?;
    indexed?;
    RunRepository::new(git, head)
}

/// A git config value, quoted: `"` and `\` escaped, and a newline too.
fn config_value(v: &str) -> String {
    let escaped = v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
    format!("\"{escaped}\"")
}

/// The run's repository by `git clone --shared --no-checkout`.
fn cloned(project: &Path, dest: &Path) -> Option<RunRepository> {
    if !git_clone(&["--shared"], project, dest) {
        return None;
    }
    let head = text(dest, &["rev-parse", "HEAD"])?.trim().to_string();
    bytes(dest, &["read-tree", "HEAD"])?;
    guard_remote(project, dest)?;
    RunRepository::new(dest.join(".git"), head)
}

fn git_clone(extra: &[&str], from: &Path, to: &Path) -> bool {
    git_command()
        .args(["clone", "--no-checkout", "--quiet"])
        .args(extra)
        .arg(from)
        .arg(to)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `origin` of a clone made for jobs: the project's own remote to fetch
/// from (as a runner's clone has the GitLab project), and no way to push.
fn guard_remote(project: &Path, clone: &Path) -> Option<()> {
    let url = text(project, &["remote", "get-url", "origin"]).map(|u| u.trim().to_string());
    match &url {
        Some(u) if !u.is_empty() => bytes(clone, &["remote", "set-url", "origin", u])?,
        _ => bytes(clone, &["remote", "remove", "origin"])?,
    };
    if url.is_some() {
        bytes(clone, &["remote", "set-url", "--push", "origin", NO_PUSH])?;
    }
    Some(())
}

/// Makes `ws` a work tree of the run's repository of its own: its `.git`
/// is a folder holding what a linked work tree's entry holds (HEAD
/// detached at the run's commit, `commondir` naming the run's repository,
/// the index), so git finds the work tree and the shared objects and refs
/// as it does for `git worktree add`, and removing the workspace removes
/// all of it. The run's repository keeps no entry of its own for it (no
/// `worktrees/NAME`): `git worktree prune` there has nothing to prune.
///
/// The three files are the same for every job: each is a hard link to one
/// copy, made once. Git never writes them in place (it writes `HEAD.lock`
/// or `index.lock` and renames it over), so a job's commit or `git add`
/// replaces its own link and never touches the others'. A job costs one
/// new folder, not five files.
pub fn link_git(ws: &Path, repo: &RunRepository) -> io::Result<()> {
    let dot_git = ws.join(".git");
    std::fs::create_dir_all(&dot_git)?;
    let shared = repo.git_dir.join(SHARED);
    for (file, text) in [
        ("HEAD", format!("{}\n", repo.head)),
        ("commondir", format!("{}\n", repo.git_dir.display())),
    ] {
        if std::fs::hard_link(shared.join(file), dot_git.join(file)).is_err() {
            std::fs::write(dot_git.join(file), text)?;
        }
    }
    let index = repo.git_dir.join("index");
    if std::fs::hard_link(&index, dot_git.join("index")).is_err() {
        std::fs::copy(&index, dot_git.join("index"))?;
    }
    Ok(())
}

/// Whether `ws/.git` is still what [`link_git`] made: a folder of exactly
/// the three links to the run's files (a job's commit or `git add`
/// replaces a link with a file of its own).
pub fn linked(ws: &Path, repo: &RunRepository) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(links) = repo.links else {
        return false;
    };
    let dot_git = ws.join(".git");
    // The run's own files are not looked at again: nothing replaces them
    // while it lasts (a job's `git add` replaces its own link).
    let same = |name: &str, (dev, ino): (u64, u64)| {
        std::fs::symlink_metadata(dot_git.join(name)).is_ok_and(|m| m.is_file() && m.dev() == dev && m.ino() == ino)
    };
    std::fs::symlink_metadata(&dot_git).is_ok_and(|m| m.is_dir())
        && std::fs::read_dir(&dot_git).map(Iterator::count).unwrap_or(0) == 3
        && same("HEAD", links[0])
        && same("commondir", links[1])
        && same("index", links[2])
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
    bytes(ws, &["read-tree", "HEAD"]).ok_or_else(|| io::Error::other("git read-tree failed"))?;
    guard_remote(project, ws).ok_or_else(|| io::Error::other("git remote setup failed"))
}

/// The files git does not track in the work tree `ws`, relative, ignored
/// ones included (GitLab's `untracked: true` takes those too); empty when
/// `ws` is no work tree.
pub fn untracked_files(ws: &Path) -> Vec<String> {
    bytes(ws, &["ls-files", "--others", "-z"])
        .map(|out| nul_list(&out).collect())
        .unwrap_or_default()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// `git -C dir ARGS` as a test user; false when it fails.
    pub(crate) fn git(dir: &Path, args: &[&str]) -> bool {
        Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
            .args(args)
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// A repository on branch `main` with two commits, or `None` without
    /// git (which CI must have).
    pub(crate) fn project() -> Option<tempfile::TempDir> {
        let dir = tempfile::tempdir().expect("tempdir");
        if !git(dir.path(), &["init", "-q", "-b", "main"]) {
            assert!(std::env::var_os("CI").is_none(), "CI must have git");
            return None;
        }
        std::fs::write(dir.path().join("a.txt"), "a").expect("write");
        assert!(git(dir.path(), &["add", "-A"]));
        assert!(git(dir.path(), &["commit", "-qm", "first"]));
        std::fs::write(dir.path().join("b.txt"), "b").expect("write");
        assert!(git(dir.path(), &["add", "-A"]));
        assert!(git(dir.path(), &["commit", "-qm", "second\n\nits body"]));
        Some(dir)
    }

    #[test]
    fn git_is_asked_only_where_a_repository_can_be_found() {
        let Some(p) = project() else { return };
        let sub = p.path().join("deep/sub");
        std::fs::create_dir_all(&sub).expect("mkdir");
        assert!(may_be_in_work_tree(&sub));
        assert!(root(&sub).is_some());
        // Without its `.git`, nothing above says "repository": no git is started.
        std::fs::rename(p.path().join(".git"), p.path().join("moved")).expect("rename");
        let above_has_git = p.path().ancestors().any(|d| d.join(".git").exists());
        if !above_has_git && std::env::var_os("GIT_DIR").is_none() {
            assert!(!may_be_in_work_tree(&sub));
            assert_eq!(root(&sub), None);
        }
    }

    #[test]
    fn facts_name_the_commit_branch_remote_and_user() {
        let Some(p) = project() else { return };
        let dir = p.path();
        assert!(git(
            dir,
            &["remote", "add", "origin", "git@gitlab.example.com:g/app.git"]
        ));
        assert!(git(dir, &["config", "user.name", "Ada L"]));
        assert!(git(dir, &["config", "user.email", "ada@example.com"]));
        // Asked from a subfolder: the facts are the work tree's.
        std::fs::create_dir_all(dir.join("sub")).expect("mkdir");
        let f = Facts::read(&dir.join("sub")).expect("facts");
        assert_eq!(
            f.root.canonicalize().expect("canon"),
            dir.canonicalize().expect("canon")
        );
        let head = f.head.clone().expect("a commit");
        assert_eq!(head.sha.len(), 40);
        assert_eq!(
            (head.title.as_str(), head.message.as_str()),
            ("second", "second\n\nits body")
        );
        assert_eq!(head.author, "t <t@example.com>");
        assert_eq!(f.branch.as_deref(), Some("main"));
        assert_eq!(f.tag, None);
        assert_eq!(f.origin_url.as_deref(), Some("git@gitlab.example.com:g/app.git"));
        assert_eq!(
            (f.user_name.as_deref(), f.user_email.as_deref()),
            (Some("Ada L"), Some("ada@example.com"))
        );
        let layout = f.layout.clone().expect("layout");
        assert!(layout.plain && !layout.shallow);
        assert!(
            layout
                .refs
                .iter()
                .any(|(n, o, cur)| n == "refs/heads/main" && *o == head.sha && *cur)
        );
        let vars = gitlab_variables(Some(&f));
        let var = |k: &str| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(var("CI_PROJECT_PATH"), Some("g/app"));
        assert_eq!(var("CI_SERVER_HOST"), Some("gitlab.example.com"));
        assert_eq!(var("CI_COMMIT_BRANCH"), Some("main"));
        assert_eq!(var("CI_COMMIT_TITLE"), Some("second"));
        assert_eq!(var("GITLAB_USER_LOGIN"), Some("ada"));
        assert_eq!(var("CI_DEFAULT_BRANCH"), Some("main"));
        assert_eq!(var("CI_COMMIT_TAG"), None);
    }

    #[test]
    fn a_detached_head_names_its_tag_annotated_first_and_origins_head_the_default_branch() {
        let Some(p) = project() else { return };
        let dir = p.path();
        assert!(git(dir, &["tag", "a-light"]));
        assert!(git(dir, &["tag", "-a", "z-annotated", "-m", "release"]));
        assert!(git(dir, &["update-ref", "refs/remotes/origin/trunk", "HEAD"]));
        assert!(git(
            dir,
            &["symbolic-ref", "refs/remotes/origin/HEAD", "refs/remotes/origin/trunk"]
        ));
        assert!(git(dir, &["checkout", "-q", "--detach"]));
        let f = Facts::read(dir).expect("facts");
        assert_eq!(f.branch, None);
        assert_eq!(f.tag.as_deref(), Some("z-annotated"));
        assert_eq!(f.default_branch, "trunk");
        let vars = gitlab_variables(Some(&f));
        assert!(
            vars.iter()
                .any(|(k, v)| k == "CI_COMMIT_REF_NAME" && v == "z-annotated")
        );
    }

    #[test]
    fn a_branchs_commit_reads_as_git_log_has_it() {
        let Some(p) = project() else { return };
        let dir = p.path();
        // Refs before and after the current branch, a message of many lines.
        assert!(git(dir, &["branch", "aaa"]));
        assert!(git(dir, &["tag", "-a", "v1", "-m", "a tag\nof two lines"]));
        std::fs::write(dir.join("c.txt"), "c").expect("write");
        assert!(git(dir, &["add", "-A"]));
        // Kept as written: blank lines first, white space at line ends, a CR.
        let message = "  \n\na title  \nthat wraps\t\r\n\nthe body  \n\n  indented\n";
        std::fs::write(dir.join(".git/msg"), message).expect("write");
        assert!(git(dir, &["commit", "-q", "--cleanup=verbatim", "-F", ".git/msg"]));
        assert!(git(dir, &["branch", "zzz"]));
        assert!(head_on_branch(dir));
        let refs = text(dir, &["for-each-ref", REF_FORMAT, "refs/heads", "refs/tags"]).expect("refs");
        let names: Vec<&str> = ref_lines(&refs, true).map(|r| r.name).collect();
        assert_eq!(
            names,
            ["refs/heads/aaa", "refs/heads/main", "refs/heads/zzz", "refs/tags/v1"]
        );
        let from_refs = ref_lines(&refs, true)
            .find_map(|r| r.commit)
            .and_then(|c| commit_of(c.into_iter()))
            .expect("the branch's commit");
        let log = bytes(dir, &["log", "-1", "-z", LOG_FORMAT]).expect("log");
        let from_log = logged_commit(&log).expect("the commit");
        assert_eq!(from_refs, from_log);
        // The title is `git log`'s `%s`, the message as written.
        assert_eq!(from_refs.title, said(dir, &["log", "-1", "--format=%s"]));
        assert_eq!(from_refs.title, "a title that wraps");
        assert_eq!(from_refs.message, message.trim_end_matches('\n'));
        assert_eq!(from_refs.author, "t <t@example.com>");
        // A git that knows no `%(if)` is asked without the commit: the same
        // refs, the branch still marked.
        let plain = text(dir, &["for-each-ref", PLAIN_REF_FORMAT, "refs/heads", "refs/tags"]).expect("refs");
        let plain: Vec<(&str, bool, bool)> = ref_lines(&plain, false)
            .map(|r| (r.name, r.current, r.commit.is_some()))
            .collect();
        assert_eq!(
            plain,
            [
                ("refs/heads/aaa", false, false),
                ("refs/heads/main", true, false),
                ("refs/heads/zzz", false, false),
                ("refs/tags/v1", false, false)
            ]
        );
        // The facts on the branch, and detached at the same commit (asked
        // of `git log` then), agree.
        let on_branch = Facts::read(dir).expect("facts").head;
        assert!(git(dir, &["checkout", "-q", "--detach"]));
        assert!(!head_on_branch(dir));
        assert_eq!(Facts::read(dir).expect("facts").head, on_branch);
        assert_eq!(on_branch, Some(from_log));
    }

    #[test]
    fn only_a_git_folder_whose_head_names_a_branch_is_guessed_on_one() {
        if std::env::var_os("GIT_DIR").is_some() {
            return; // (run from a git hook): git is asked, never guessed for
        }
        let dir = tempfile::tempdir().expect("tempdir");
        if !dir.path().ancestors().skip(1).any(|d| d.join(".git").exists()) {
            assert!(!head_on_branch(dir.path()), "no repository");
        }
        // A linked work tree's `.git` is a file: no guess, git is asked.
        std::fs::write(dir.path().join(".git"), "gitdir: /elsewhere\n").expect("write");
        assert!(!head_on_branch(dir.path()));
        std::fs::remove_file(dir.path().join(".git")).expect("rm");
        std::fs::create_dir(dir.path().join(".git")).expect("mkdir");
        std::fs::write(
            dir.path().join(".git/HEAD"),
            "0123456789abcdef0123456789abcdef01234567\n",
        )
        .expect("write");
        assert!(!head_on_branch(dir.path()), "detached");
        std::fs::write(dir.path().join(".git/HEAD"), "ref: refs/heads/main\n").expect("write");
        assert!(head_on_branch(&dir.path().join(".")), "on main");
    }

    #[test]
    fn before_the_first_commit_the_branch_is_still_known() {
        let dir = tempfile::tempdir().expect("tempdir");
        if !git(dir.path(), &["init", "-q", "-b", "trunk"]) {
            assert!(std::env::var_os("CI").is_none(), "CI must have git");
            return;
        }
        let f = Facts::read(dir.path()).expect("facts");
        assert_eq!(f.head, None);
        assert_eq!(f.branch.as_deref(), Some("trunk"));
        // Nothing to check out: no repository for jobs, and no error.
        let run = tempfile::tempdir().expect("tempdir");
        assert!(run_repository(dir.path(), &run.path().join("git"), Some(&f)).is_none());
    }

    /// What `git ARGS` prints in `dir`, trimmed.
    fn said(dir: &Path, args: &[&str]) -> String {
        text(dir, args).unwrap_or_default().trim().to_string()
    }

    /// A job's workspace named `name` under `run`, linked to `repo`.
    fn job(run: &Path, repo: &RunRepository, name: &str) -> PathBuf {
        let ws = run.join(name);
        std::fs::create_dir_all(&ws).expect("mkdir");
        std::fs::write(ws.join("a.txt"), "a").expect("write");
        std::fs::write(ws.join("b.txt"), "b").expect("write");
        link_git(&ws, repo).expect("link");
        ws
    }

    #[test]
    fn a_written_repository_works_as_a_clone_does() {
        let Some(p) = project() else { return };
        let dir = p.path();
        assert!(git(dir, &["tag", "-a", "v1.0", "-m", "release", "HEAD~1"]));
        assert!(git(dir, &["branch", "feature", "HEAD~1"]));
        let facts = Facts::read(dir).expect("facts");
        let run = tempfile::tempdir().expect("tempdir");
        let repo = run_repository(dir, &run.path().join("git"), Some(&facts)).expect("repository");
        // Written by hand, not cloned (a clone has the template's `description`).
        assert!(run.path().join("git/.git/objects/info/alternates").is_file());
        assert!(!run.path().join("git/.git/description").exists());
        let ws = job(run.path(), &repo, "ws");
        assert_eq!(said(&ws, &["status", "--porcelain"]), "");
        assert_eq!(
            said(&ws, &["describe", "--tags"]),
            format!("v1.0-1-g{}", &said(&ws, &["rev-parse", "--short=7", "HEAD"]))
        );
        assert_eq!(
            said(&ws, &["rev-parse", "origin/feature"]),
            said(dir, &["rev-parse", "feature"])
        );
        assert_eq!(said(&ws, &["log", "--format=%s"]), "second\nfirst");
        // No remote in the project: none in the jobs' repository either.
        assert_eq!(text(&ws, &["remote"]).as_deref(), Some(""));
        // The index is each job's own: staging in one leaves the other clean.
        let other = job(run.path(), &repo, "other");
        std::fs::write(ws.join("a.txt"), "changed").expect("write");
        assert!(git(&ws, &["add", "a.txt"]));
        assert_eq!(said(&ws, &["diff", "--cached", "--name-only"]), "a.txt");
        assert_eq!(said(&other, &["status", "--porcelain"]), "");
        // The run's repository keeps no entry for the jobs: pruning there
        // (as `git gc` in a job does) takes nothing from them.
        assert!(!run.path().join("git/.git/worktrees").exists());
        assert!(git(&run.path().join("git"), &["worktree", "prune"]));
        assert_eq!(said(&other, &["status", "--porcelain"]), "");
        assert_eq!(
            said(&other, &["rev-parse", "--show-toplevel"]),
            other.canonicalize().expect("canon").display().to_string()
        );
    }

    #[test]
    fn the_jobs_index_is_read_without_writing_to_the_project() {
        let Some(p) = project() else { return };
        let dir = p.path();
        // A project whose own index is split: the jobs' index is a whole
        // one, and nothing is written into the project's git folder.
        assert!(git(dir, &["config", "core.splitIndex", "true"]));
        assert!(git(dir, &["update-index", "--split-index"]));
        let listing = |d: &Path| {
            let mut names: Vec<(String, std::time::SystemTime)> = std::fs::read_dir(d)
                .expect("read")
                .filter_map(Result::ok)
                .map(|e| {
                    (
                        e.file_name().to_string_lossy().into_owned(),
                        e.metadata().and_then(|m| m.modified()).expect("mtime"),
                    )
                })
                .collect();
            names.sort();
            names
        };
        let before = listing(&dir.join(".git"));
        let facts = Facts::read(dir).expect("facts");
        let run = tempfile::tempdir().expect("tempdir");
        let repo = run_repository(dir, &run.path().join("git"), Some(&facts)).expect("repository");
        assert_eq!(
            listing(&dir.join(".git")),
            before,
            "the project's git folder is as it was"
        );
        let shared: Vec<String> = listing(&run.path().join("git/.git"))
            .into_iter()
            .map(|(n, _)| n)
            .filter(|n| n.starts_with("sharedindex"))
            .collect();
        assert_eq!(shared, Vec::<String>::new());
        let ws = job(run.path(), &repo, "ws");
        assert_eq!(said(&ws, &["status", "--porcelain"]), "");
        assert_eq!(said(&ws, &["ls-files"]), "a.txt\nb.txt");
    }

    #[test]
    fn the_projects_hooks_do_not_run_when_the_jobs_index_is_read() {
        use std::os::unix::fs::PermissionsExt;
        let Some(p) = project() else { return };
        let dir = p.path();
        // Git runs `post-index-change` after it writes an index.
        let marker = dir.join("hook-ran");
        let hook = dir.join(".git/hooks/post-index-change");
        std::fs::create_dir_all(hook.parent().expect("hooks")).expect("mkdir");
        std::fs::write(&hook, format!("#!/bin/sh\ntouch '{}'\n", marker.display())).expect("write");
        std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        // The hook works: an index written in the project runs it.
        assert!(git(dir, &["read-tree", "HEAD"]));
        let hooks_run = marker.exists();
        let _ = std::fs::remove_file(&marker);
        let facts = Facts::read(dir).expect("facts");
        let run = tempfile::tempdir().expect("tempdir");
        let repo = run_repository(dir, &run.path().join("git"), Some(&facts)).expect("repository");
        assert!(!marker.exists(), "the project's hook ran");
        let ws = job(run.path(), &repo, "ws");
        assert_eq!(said(&ws, &["status", "--porcelain"]), "");
        // (Were hooks not run by this git at all, the test would prove
        // nothing: it says so.)
        assert!(hooks_run, "this git ran no post-index-change hook to begin with");
    }

    #[test]
    fn a_shallow_project_gives_jobs_a_repository_that_works() {
        let Some(p) = project() else { return };
        let shallow = tempfile::tempdir().expect("tempdir");
        let url = format!("file://{}", p.path().display());
        assert!(git(shallow.path(), &["clone", "-q", "--depth", "1", &url, "s"]));
        let dir = shallow.path().join("s");
        let facts = Facts::read(&dir).expect("facts");
        assert!(facts.layout.as_ref().is_some_and(|l| l.shallow));
        let run = tempfile::tempdir().expect("tempdir");
        let repo = run_repository(&dir, &run.path().join("git"), Some(&facts)).expect("repository");
        let ws = job(run.path(), &repo, "ws");
        assert_eq!(said(&ws, &["log", "--format=%s"]), "second");
        assert_eq!(said(&ws, &["status", "--porcelain"]), "");
    }

    #[test]
    fn an_unusual_repository_is_cloned_instead() {
        let dir = tempfile::tempdir().expect("tempdir");
        // SHA-256 objects: not written by hand.
        if !git(dir.path(), &["init", "-q", "-b", "main", "--object-format=sha256"]) {
            assert!(std::env::var_os("CI").is_none(), "CI must have git");
            return;
        }
        std::fs::write(dir.path().join("a.txt"), "a").expect("write");
        std::fs::write(dir.path().join("b.txt"), "b").expect("write");
        assert!(git(dir.path(), &["add", "-A"]));
        assert!(git(dir.path(), &["commit", "-qm", "only"]));
        let facts = Facts::read(dir.path()).expect("facts");
        assert!(facts.layout.as_ref().is_some_and(|l| !l.plain));
        let run = tempfile::tempdir().expect("tempdir");
        let repo = run_repository(dir.path(), &run.path().join("git"), Some(&facts)).expect("repository");
        // `git clone` made it: a clone has the template's `description`.
        assert!(run.path().join("git/.git/description").is_file());
        let ws = job(run.path(), &repo, "ws");
        assert_eq!(said(&ws, &["log", "--format=%s"]), "only");
        assert_eq!(said(&ws, &["status", "--porcelain"]), "");
    }

    #[test]
    fn changed_files_on_the_default_branch_are_the_last_commits_and_the_work_trees() {
        let Some(p) = project() else { return };
        let dir = p.path();
        std::fs::write(dir.join("new.txt"), "n").expect("write");
        assert_eq!(
            changed_files(dir, Some("main"), "main"),
            Some(vec!["b.txt".to_string(), "new.txt".to_string()])
        );
        // A branch: since it forked from the default one.
        assert!(git(dir, &["checkout", "-q", "-b", "topic"]));
        std::fs::write(dir.join("c.txt"), "c").expect("write");
        assert!(git(dir, &["add", "c.txt"]));
        assert!(git(dir, &["commit", "-qm", "third"]));
        assert_eq!(
            changed_files(dir, Some("topic"), "main"),
            Some(vec!["c.txt".to_string(), "new.txt".to_string()])
        );
        assert_eq!(changed_since(dir, "no-such-ref"), None);
    }

    #[test]
    fn jobs_see_a_repository_that_is_not_the_projects() {
        let project = tempfile::tempdir().expect("tempdir");
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
        let repo = run_repository(project.path(), &run.path().join("git"), None).expect("clone");
        let job = |name: &str| {
            let ws = run.path().join(name);
            std::fs::create_dir_all(&ws).expect("mkdir");
            std::fs::write(ws.join("a.txt"), "a").expect("write");
            link_git(&ws, &repo).expect("link");
            ws
        };
        let (ws, other) = (job("ws"), job("other"));
        assert_eq!(text(&ws, &["log", "-1", "--format=%s"]).as_deref(), Some("first\n"));
        assert_eq!(text(&ws, &["status", "--porcelain"]).as_deref(), Some(""));
        // A commit in one job moves neither the other job's HEAD nor the project's.
        assert!(git(&ws, &["commit", "-q", "--allow-empty", "-m", "from a job"]));
        assert_eq!(text(&other, &["log", "-1", "--format=%s"]).as_deref(), Some("first\n"));
        assert_eq!(
            text(project.path(), &["log", "-1", "--format=%s"]).as_deref(),
            Some("first\n")
        );
        // origin is the project's remote, and pushing to it is refused.
        assert_eq!(
            text(&ws, &["remote", "get-url", "origin"]).as_deref(),
            Some("https://gitlab.example.com/g/p.git\n")
        );
        assert!(!git(&ws, &["push", "origin", "HEAD:refs/heads/x"]));
        let own = run.path().join("own");
        std::fs::create_dir_all(&own).expect("mkdir");
        own_repository(project.path(), &own).expect("own clone");
        assert!(own.join(".git").is_dir());
        assert_eq!(text(&own, &["log", "-1", "--format=%s"]).as_deref(), Some("first\n"));
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
        assert_eq!(Facts::read(dir.path()), None);
        let vars = gitlab_variables(None);
        assert!(vars.iter().any(|(k, v)| k == "CI_PIPELINE_SOURCE" && v == "push"));
        assert!(!vars.iter().any(|(k, _)| k == "CI_COMMIT_SHA"));
    }
}
