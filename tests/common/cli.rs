//! The `trackside` binary run as a user would, in a temp dir of its own:
//! files to give it, a state directory, the output of a run.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

pub struct Env {
    pub dir: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Env {
        Env {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }
    pub fn file(&self, name: &str, text: impl AsRef<[u8]>) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).expect("write");
        p
    }
    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_trackside"));
        c.env("TRACKSIDE_STATE_DIR", self.state())
            .env_remove("NO_COLOR")
            .stdin(Stdio::null());
        c
    }
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("run trackside")
    }
}

/// `trackside run --json --no-watch ARGS FILE` in the background, its
/// events arriving on a channel as they are printed.
pub struct Live {
    pub child: Child,
    events: mpsc::Receiver<Value>,
    /// Every event received so far.
    pub seen: Vec<Value>,
}

impl Live {
    pub fn start(env: &Env, file: &Path, args: &[&str]) -> Live {
        Live::start_with(env.cmd(), file, args)
    }

    /// The same with a command of the caller's (its environment set).
    pub fn start_with(mut cmd: Command, file: &Path, args: &[&str]) -> Live {
        let mut child = cmd
            .args(["run", "--json", "--no-watch"])
            .args(args)
            .arg(file)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn trackside");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, events) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Ok(ev) = serde_json::from_str::<Value>(&line)
                    && tx.send(ev).is_err()
                {
                    break;
                }
            }
        });
        Live {
            child,
            events,
            seen: Vec::new(),
        }
    }

    /// Waits (at most `within`) for an event `want` says yes to.
    pub fn wait_within(&mut self, within: Duration, what: &str, want: impl Fn(&Value) -> bool) -> Value {
        if let Some(ev) = self.seen.iter().find(|e| want(e)) {
            return ev.clone();
        }
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(ev) => {
                    self.seen.push(ev.clone());
                    if want(&ev) {
                        return ev;
                    }
                }
                Err(_) => panic!("no {what} within {within:?}; events: {:#?}", self.seen),
            }
        }
    }

    /// Waits (at most a minute) for an event `want` says yes to.
    pub fn wait_for(&mut self, what: &str, want: impl Fn(&Value) -> bool) -> Value {
        self.wait_within(Duration::from_secs(60), what, want)
    }

    pub fn run_id(&mut self) -> String {
        let ev = self.wait_for("run_started", |e| e["type"] == "run_started");
        ev["run_id"].as_str().unwrap_or_default().to_string()
    }

    /// Waits for the end (at most `within`) and returns the exit code
    /// with every event.
    pub fn finish_within(mut self, within: Duration) -> (i32, Vec<Value>) {
        self.wait_within(within, "run_finished", |e| e["type"] == "run_finished");
        let status = self.child.wait().expect("wait");
        while let Ok(ev) = self.events.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(ev);
        }
        (status.code().unwrap_or(-1), std::mem::take(&mut self.seen))
    }

    pub fn finish(self) -> (i32, Vec<Value>) {
        self.finish_within(Duration::from_secs(60))
    }
}

impl Drop for Live {
    /// A test that failed half-way leaves no trackside behind.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
