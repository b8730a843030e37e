//! Notifications against a local HTTP server: a failed job (with the
//! knowledge base's hint and the `trackside logs` command), a waiting gate
//! and the run's end reach a webhook as Slack-compatible JSON and a command
//! on its standard input; a webhook that fails does not fail the run.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::sync::{Arc, Mutex};

/// A webhook on 127.0.0.1 (a free port): keeps each POST's body, answers 200.
fn webhook() -> (String, Arc<Mutex<Vec<serde_json::Value>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/hooks/T000/SECRET", listener.local_addr().expect("addr"));
    let got = Arc::new(Mutex::new(Vec::new()));
    let keep = got.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream);
            let mut len = 0usize;
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                if line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
                line.clear();
            }
            let mut body = vec![0; len];
            if reader.read_exact(&mut body).is_ok()
                && let Ok(v) = serde_json::from_slice(&body)
            {
                keep.lock().expect("lock").push(v);
            }
            let mut stream = reader.into_inner();
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
        }
    });
    (url, got)
}

const PIPELINE: &str = "name: shop\njobs:\n  test:\n    steps: [{script: ['echo \"dial tcp 127.0.0.1:5432: connect: connection refused\" >&2', 'exit 1']}]\n  deploy:\n    when: manual\n    steps: [{script: ['true']}]\n";

#[test]
fn a_failed_job_a_gate_and_the_end_reach_a_webhook_and_a_command() {
    let tmp = tempfile::tempdir().expect("tempdir");
    std::fs::write(tmp.path().join("p.yml"), PIPELINE).expect("write");
    let (url, got) = webhook();
    let notes = tmp.path().join("notes.jsonl");
    let out = Command::new(env!("CARGO_BIN_EXE_trackside"))
        .current_dir(tmp.path())
        .args(["run", "p.yml", "--notify", &url, "--notify-cmd"])
        .arg(format!(
            "cat >> {}; echo \"$TRACKSIDE_NOTICE\" >> {}.kinds",
            notes.display(),
            notes.display()
        ))
        .arg("--state-dir")
        .arg(tmp.path().join("state"))
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stdout));
    // The run waits for its notices before it exits.
    let hooks = got.lock().expect("lock").clone();
    let kinds: Vec<&str> = hooks.iter().filter_map(|h| h["trackside"]["event"].as_str()).collect();
    assert!(
        kinds.contains(&"job_failed") && kinds.contains(&"gate_waiting"),
        "{hooks:?}"
    );
    assert_eq!(kinds.last(), Some(&"run_finished"), "{hooks:?}");
    let failed = hooks
        .iter()
        .find(|h| h["trackside"]["event"] == "job_failed")
        .expect("job_failed");
    assert_eq!(failed["trackside"]["job"], "test");
    assert_eq!(failed["trackside"]["failure_class"], "network");
    assert_eq!(
        failed["trackside"]["runbook"],
        "docs/runbooks/network.md#connection-refused"
    );
    let text = failed["text"].as_str().expect("Slack's text");
    assert!(
        text.contains("test failed in shop") && text.contains("trackside logs"),
        "{text}"
    );
    let end = hooks.last().expect("run_finished");
    assert_eq!(end["trackside"]["result"], "failed");
    // The command got the same notices on its standard input.
    let kinds = std::fs::read_to_string(format!("{}.kinds", notes.display())).expect("kinds");
    assert_eq!(kinds.lines().last(), Some("run_finished"), "{kinds}");
    let lines = std::fs::read_to_string(&notes).expect("notes");
    assert_eq!(lines.lines().count(), hooks.len(), "{lines}");

    // A webhook nobody answers, and a command that fails: the run's result
    // is its own, and the failure is said once, without the URL's path.
    let out = Command::new(env!("CARGO_BIN_EXE_trackside"))
        .current_dir(tmp.path())
        .args([
            "run",
            "p.yml",
            "--notify",
            "http://127.0.0.1:9/hooks/SECRET",
            "--notify-cmd",
            "exit 3",
        ])
        .arg("--state-dir")
        .arg(tmp.path().join("state"))
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.matches("notification to http://127.0.0.1:9 failed").count(),
        1,
        "{err}"
    );
    assert!(err.contains("notification to `exit 3` failed: it exited with"), "{err}");
    assert!(!err.contains("SECRET"), "{err}");
}
