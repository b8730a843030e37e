//! What GitLab's reader asks of the project's files: which exist (for
//! `include:local` wildcards and `rules:exists`) and which changed (for
//! `rules:changes`), matched with GitLab's glob rules (`*` stays within a
//! folder, `**` crosses folders, `{a,b}` alternatives, dot files match).

use std::path::Path;

use globset::{Glob, GlobBuilder, GlobMatcher};

/// Most files listed from a project (GitLab's own `exists` stops at 10,000
/// comparisons; a work tree with more is still listed this far).
pub const MAX_FILES: usize = 200_000;

/// The project's files, relative, with `/` separators, sorted; `.git` and
/// symbolic links to folders are not entered. `truncated` when the project
/// has more than [`MAX_FILES`].
pub struct ProjectFiles {
    pub files: Vec<String>,
    pub truncated: bool,
}

impl ProjectFiles {
    pub fn list(root: &Path) -> ProjectFiles {
        let mut files = Vec::new();
        let mut truncated = false;
        let mut stack = vec![(root.to_path_buf(), String::new())];
        while let Some((dir, rel)) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if rel.is_empty() && name == ".git" {
                    continue;
                }
                let path = if rel.is_empty() { name } else { format!("{rel}/{name}") };
                let Ok(kind) = entry.file_type() else { continue };
                if kind.is_dir() {
                    stack.push((entry.path(), path));
                } else if files.len() < MAX_FILES {
                    files.push(path);
                } else {
                    truncated = true;
                }
            }
        }
        files.sort();
        ProjectFiles { files, truncated }
    }

    /// The files `pattern` matches, in order.
    pub fn matching<'a>(&'a self, pattern: &GlobMatcher) -> impl Iterator<Item = &'a String> + 'a {
        let pattern = pattern.clone();
        self.files.iter().filter(move |f| pattern.is_match(f.as_str()))
    }
}

/// A GitLab path pattern as a matcher: relative to the project (a leading
/// `/` is dropped), `*` within one folder.
pub fn glob(pattern: &str) -> Result<GlobMatcher, globset::Error> {
    let p = pattern.trim_start_matches('/');
    let p = p.strip_prefix("./").unwrap_or(p);
    // GitLab's `configs/**.yml` is every .yml below configs, at any depth.
    let p = regex::Regex::new(r"\*\*([^/*])")
        .map(|re| re.replace_all(p, "**/*$1").into_owned())
        .unwrap_or_else(|_| p.to_string());
    GlobBuilder::new(&p)
        .literal_separator(true)
        .build()
        .map(|g: Glob| g.compile_matcher())
}

/// Whether a pattern has glob characters at all.
pub fn is_pattern(text: &str) -> bool {
    text.contains(['*', '?', '[', '{'])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_follow_gitlabs_rules() {
        let m = |p: &str, f: &str| glob(p).expect("glob").is_match(f);
        assert!(m("configs/*.yml", "configs/a.yml"));
        assert!(!m("configs/*.yml", "configs/sub/a.yml"));
        assert!(m("configs/**/*.yml", "configs/sub/deep/a.yml"));
        assert!(m("configs/**.yml", "configs/a.yml"));
        assert!(m("configs/**.yml", "configs/deep/er/a.yml"));
        assert!(m("/src/{api,web}/*.go", "src/web/main.go"));
        assert!(m("*.md", ".hidden.md"));
        assert!(!m("docs/*", "src/x"));
    }

    #[test]
    fn listing_skips_git_and_is_sorted() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join(".git/objects")).expect("mkdir");
        std::fs::write(dir.path().join(".git/HEAD"), "x").expect("write");
        std::fs::create_dir_all(dir.path().join("b/c")).expect("mkdir");
        std::fs::write(dir.path().join("b/c/z.yml"), "").expect("write");
        std::fs::write(dir.path().join("a.yml"), "").expect("write");
        let list = ProjectFiles::list(dir.path());
        assert_eq!(list.files, vec!["a.yml".to_string(), "b/c/z.yml".to_string()]);
        assert!(!list.truncated);
    }
}
