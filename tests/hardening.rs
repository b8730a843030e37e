//! Cases found by attacking trackside (issue 11): each one broke or fooled
//! it once. Pipelines that exhaust memory, bytes YAML forbids, secrets in
//! the process table, unbounded artifacts, crash leftovers.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        Env {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }
    fn file(&self, name: &str, text: &[u8]) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).expect("write");
        p
    }
    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }
    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_trackside"))
            .env("TRACKSIDE_STATE_DIR", self.state())
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .args(args)
            .output()
            .expect("run trackside")
    }
    fn validate(&self, path: &Path) -> (i32, String) {
        let o = self.run(&["validate", &path.to_string_lossy()]);
        let out = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(!out.contains("panicked"), "{out}");
        (o.status.code().unwrap_or(-1), out)
    }
}

#[test]
fn an_expansion_bomb_is_a_diagnostic_not_an_abort() {
    let e = Env::new();
    let a = "a".repeat(1000);
    let yaml = format!(
        "name: bomb\nglobal_env:\n  A: {a}\n  B: \"${{A//a/${{A}}}}\"\n  C: \"${{B//a/${{B}}}}\"\njobs:\n  a:\n    steps:\n      - script: echo $C\n"
    );
    assert!(yaml.len() < 1200);
    let (code, out) = e.validate(&e.file("bomb.yml", yaml.as_bytes()));
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains(":5:7") && out.contains("expanded value is longer than"),
        "{out}"
    );
}

#[test]
fn a_nul_byte_is_reported_where_it_is_and_nothing_after_it_is_lost() {
    let e = Env::new();
    let (code, out) = e.validate(&e.file(
        "nul.yml",
        b"name: nul\njobs:\n  a:\n    steps:\n      - script: echo a\0\n  b:\n    steps:\n      - script: echo b\n",
    ));
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains(":5:23") && out.contains("a NUL byte is not allowed"),
        "{out}"
    );
}

#[test]
fn a_byte_order_mark_is_accepted() {
    let e = Env::new();
    let (code, out) = e.validate(&e.file(
        "bom.yml",
        "\u{feff}name: bom\njobs:\n  a:\n    steps:\n      - script: echo a\n".as_bytes(),
    ));
    assert_eq!(code, 0, "{out}");
}

#[test]
fn a_comment_only_file_says_so() {
    let e = Env::new();
    let (code, out) = e.validate(&e.file("comments.yml", b"# name: x\n# jobs: {}\n"));
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("only comments"), "{out}");
    assert!(!out.contains("see the messages above"), "{out}");
}
