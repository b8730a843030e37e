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
    let stdout = super::git::bytes(
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
    // Files come sorted, so a folder's files come together: it is made once.
    let mut made: Option<&Path> = None;
    for rel in files {
        let from = project.join(rel);
        let to = dest.join(rel);
        let meta = match std::fs::symlink_metadata(&from) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let parent = rel.parent().filter(|p| !p.as_os_str().is_empty());
        if let Some(parent) = parent
            && made != Some(parent)
        {
            std::fs::create_dir_all(dest.join(parent))?;
            made = Some(parent);
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
    use std::process::Command;

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
    fn nested_folders_are_made_whatever_order_their_files_come_in() {
        let src = tempfile::tempdir().expect("tempdir");
        let files = ["a/b/sub/y", "a/b/x", "a/c/z", "top", "a/b/w"];
        for f in files {
            let p = src.path().join(f);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(&p, f).expect("write");
        }
        let dst = tempfile::tempdir().expect("tempdir");
        let list: Vec<PathBuf> = files.iter().map(PathBuf::from).collect();
        copy_files(src.path(), &list, &dst.path().join("w")).expect("copy");
        for f in files {
            assert_eq!(std::fs::read_to_string(dst.path().join("w").join(f)).expect("read"), f);
        }
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
