//! Drives a program in a real terminal: a private tmux server, keys in,
//! screen out, bounded waits (polling the screen, never fixed sleeps).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

pub const LIMIT: Duration = Duration::from_secs(30);

pub struct Tmux {
    socket: String,
}

impl Tmux {
    pub fn cmd(&self) -> Command {
        let mut c = Command::new("tmux");
        c.args(["-u", "-L", &self.socket]);
        c
    }

    /// A tmux server of its own (`name` keeps parallel tests apart).
    pub fn start(name: &str, dir: &Path, command: &str) -> Option<Tmux> {
        Tmux::start_sized(name, dir, command, (120, 32))
    }

    /// The same on a terminal of `(columns, rows)`.
    pub fn start_sized(name: &str, dir: &Path, command: &str, (cols, rows): (u16, u16)) -> Option<Tmux> {
        let available = Command::new("tmux")
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success());
        if !available {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must have tmux (.ci/run installs it)"
            );
            eprintln!("SKIPPED tmux end-to-end test: tmux is not installed (apt-get install tmux)");
            return None;
        }
        let t = Tmux {
            socket: format!("trackside-test-{}-{name}", std::process::id()),
        };
        let ok = t
            .cmd()
            .args([
                "new-session",
                "-d",
                "-s",
                "e2e",
                "-x",
                &cols.to_string(),
                "-y",
                &rows.to_string(),
                "-c",
            ])
            .arg(dir)
            .arg(command)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "tmux new-session failed");
        Some(t)
    }

    pub fn screen(&self) -> String {
        self.screen_of("e2e")
    }

    pub fn keys(&self, keys: &[&str]) {
        self.keys_to("e2e", keys);
    }

    /// Another window of the session, `e2e:NAME`, running `command` in `dir`
    /// (the first one is `e2e`).
    pub fn window(&self, name: &str, dir: &Path, command: &str) -> String {
        let ok = self
            .cmd()
            .args(["new-window", "-d", "-t", "e2e", "-n", name, "-c"])
            .arg(dir)
            .arg(command)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "tmux new-window failed");
        format!("e2e:{name}")
    }

    pub fn screen_of(&self, target: &str) -> String {
        let out = self
            .cmd()
            .args(["capture-pane", "-p", "-t", target])
            .output()
            .expect("capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn keys_to(&self, target: &str, keys: &[&str]) {
        for k in keys {
            let ok = self
                .cmd()
                .args(["send-keys", "-t", target, k])
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "send-keys {k}");
        }
    }

    /// Waits until `target`'s screen shows all of `texts`.
    pub fn wait_in(&self, target: &str, texts: &[&str]) -> String {
        let start = Instant::now();
        loop {
            let s = self.screen_of(target);
            if texts.iter().all(|t| s.contains(t)) {
                return s;
            }
            assert!(
                start.elapsed() < LIMIT,
                "waited {LIMIT:?} in {target} for {texts:?}; screen:\n{s}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends `text` as it is (`send-keys -l`): words with spaces, or the
    /// bytes a terminal sends for a mouse event.
    pub fn literal(&self, text: &str) {
        let ok = self
            .cmd()
            .args(["send-keys", "-t", "e2e", "-l", text])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "send-keys -l {text:?}");
    }

    /// Types a command line until the screen shows `expect` (at most 3 tries,
    /// 5 s each). `docker run -it` may discard typed-ahead input while it puts
    /// the terminal into raw mode after the prompt is already visible.
    pub fn type_until(&self, line: &str, expect: &[&str]) -> String {
        for _ in 0..3 {
            self.keys(&[line, "Enter"]);
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(5) {
                let s = self.screen();
                if expect.iter().all(|t| s.contains(t)) {
                    return s;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!(
            "typed `{line}` three times, never saw {expect:?}; screen:\n{}",
            self.screen()
        );
    }

    /// Waits until the screen shows all of `texts`.
    pub fn wait_for(&self, texts: &[&str]) -> String {
        self.wait_in("e2e", texts)
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").status();
    }
}

pub fn wait_file(path: &Path) -> String {
    let start = Instant::now();
    loop {
        if let Ok(s) = std::fs::read_to_string(path)
            && s.ends_with('\n')
        {
            return s;
        }
        assert!(start.elapsed() < LIMIT, "no {}", path.display());
        std::thread::sleep(Duration::from_millis(50));
    }
}
