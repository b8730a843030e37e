//! Notifications: a run that finished, a job that failed after its retries,
//! a gate waiting for a person, a rollout's verdict, sent to webhooks
//! (Slack-compatible JSON) and commands, as they happen.
//!
//! The notifier is a front-end like the UI: it reads the run's events
//! through its [`Link`] and holds no run logic. Turning events into
//! notices is a pure function ([`Notices::take`]), tested without I/O;
//! delivery is bounded (a queue of [`QUEUE`] notices, [`SEND_WAIT`] per
//! delivery) and never fails the run: a webhook or command that fails is
//! reported on standard error (the webhook by its host only: its URL may
//! hold a token) and the run goes on.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use crate::protocol::{Delivery, EventKind, JobStatus, Link, RunResult};

/// Notices waiting to be delivered; more are dropped (and said so).
const QUEUE: usize = 64;
/// The longest one delivery (a webhook's answer, a command's run) may take.
const SEND_WAIT: Duration = Duration::from_secs(10);
/// How long the end of a run waits for deliveries still in hand.
const CLOSE_WAIT: Duration = Duration::from_secs(15);

/// Where notices go: `--notify URL`, `--notify-cmd CMD`, or `notify:` in
/// `<state>/config.yml`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    pub webhooks: Vec<String>,
    pub commands: Vec<String>,
}

impl Config {
    pub fn is_empty(&self) -> bool {
        self.webhooks.is_empty() && self.commands.is_empty()
    }
}

/// One notification.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Notice {
    /// `run_finished`, `job_failed`, `gate_waiting` or `rollout`.
    pub event: &'static str,
    pub run_id: String,
    pub pipeline: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// The run's result, or the rollout's (`promoted`, `rolled_back`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_class: Option<String>,
    /// What the failure knowledge base says of a failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runbook: Option<String>,
    /// The command that shows the job's log, or steers the gate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// The notice as one line, for people.
    pub text: String,
}

impl Notice {
    /// The body a webhook gets: Slack's `text`, and the notice itself under
    /// `trackside` for anything that reads more.
    pub fn payload(&self) -> serde_json::Value {
        serde_json::json!({ "text": self.text, "trackside": self })
    }
}

/// Turns a run's events into notices (pure).
#[derive(Debug, Default)]
pub struct Notices {
    run_id: String,
    pipeline: String,
    /// Jobs that reported a rollout: their end is a rollout verdict.
    rollouts: Vec<String>,
}

impl Notices {
    pub fn take(&mut self, kind: &EventKind) -> Option<Notice> {
        let notice = |event, job: Option<&str>, text: String| Notice {
            event,
            run_id: self.run_id.clone(),
            pipeline: self.pipeline.clone(),
            job: job.map(str::to_string),
            result: None,
            failure_class: None,
            title: None,
            hint: None,
            runbook: None,
            command: None,
            text,
        };
        match kind {
            EventKind::RunStarted { run_id, pipeline, .. } => {
                self.run_id = run_id.clone();
                self.pipeline = pipeline.clone();
                None
            }
            EventKind::Rollout { job, .. } => {
                if !self.rollouts.contains(job) {
                    self.rollouts.push(job.clone());
                }
                None
            }
            EventKind::JobFinished {
                job,
                status,
                failure_class,
                diagnosis,
                message,
                ..
            } if self.rollouts.contains(job) && *status != JobStatus::Cancelled => {
                let verdict = if *status == JobStatus::Succeeded {
                    "promoted"
                } else {
                    "rolled_back"
                };
                let why = message.as_deref().and_then(|m| m.lines().next()).unwrap_or("");
                let mut n = notice(
                    "rollout",
                    Some(job),
                    format!(
                        "trackside: rollout `{job}` of {} {}{}{why}",
                        self.pipeline,
                        verdict.replace('_', " "),
                        if why.is_empty() { "" } else { ": " }
                    ),
                );
                n.result = Some(verdict.to_string());
                n.failure_class = failure_class.map(|c| c.to_string());
                n.title = diagnosis.as_ref().map(|d| d.title.clone());
                Some(n)
            }
            EventKind::JobFinished {
                job,
                attempt,
                status: JobStatus::Failed,
                failure_class,
                exit_code,
                diagnosis,
                message,
                ..
            } => {
                let class = failure_class.map_or("failed".to_string(), |c| c.to_string());
                let exit = exit_code.map(|c| format!(", exit {c}")).unwrap_or_default();
                let why = match (diagnosis, message) {
                    (Some(d), _) => format!(": {}. {}", d.title, d.hint),
                    (None, Some(m)) => format!(": {}", m.lines().next().unwrap_or("")),
                    (None, None) => String::new(),
                };
                let command = format!("trackside logs {} {job}", self.run_id);
                let mut n = notice(
                    "job_failed",
                    Some(job),
                    format!(
                        "trackside: {job} failed in {} ({class}{exit}, attempt {attempt}){why} Log: `{command}`",
                        self.pipeline
                    ),
                );
                n.failure_class = failure_class.map(|c| c.to_string());
                n.title = diagnosis.as_ref().map(|d| d.title.clone());
                n.hint = diagnosis.as_ref().map(|d| d.hint.clone());
                n.runbook = diagnosis.as_ref().map(|d| d.runbook.clone());
                n.command = Some(command);
                Some(n)
            }
            EventKind::GateWaiting { job } => {
                let command = format!("trackside approve {} {job}", self.run_id);
                let mut n = notice(
                    "gate_waiting",
                    Some(job),
                    format!("trackside: {job} in {} waits for approval: `{command}`", self.pipeline),
                );
                n.command = Some(command);
                Some(n)
            }
            EventKind::RunFinished { summary } => {
                let result = match summary.result {
                    RunResult::Passed => "passed",
                    RunResult::Failed => "failed",
                    RunResult::Blocked => "blocked",
                    RunResult::Cancelled => "cancelled",
                };
                let mut n = notice(
                    "run_finished",
                    None,
                    format!(
                        "trackside: {} {result} in {:.1}s: {} (run {})",
                        self.pipeline,
                        summary.duration_ms as f64 / 1000.0,
                        summary.message,
                        self.run_id
                    ),
                );
                n.result = Some(result.to_string());
                Some(n)
            }
            _ => None,
        }
    }
}

/// A running notifier; [`Notifier::close`] lets it deliver what it holds.
pub struct Notifier {
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Notifier {
    /// Waits (at most [`CLOSE_WAIT`]) for the run's last notices to go out.
    pub async fn close(mut self) {
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(CLOSE_WAIT, task).await;
        }
    }
}

/// Starts notifying: reads the run's events from the start until it ends.
pub fn serve<L: Link + 'static>(link: L, cfg: Config) -> Notifier {
    if cfg.is_empty() {
        return Notifier { task: None };
    }
    let task = tokio::spawn(async move {
        let Ok(mut events) = link.subscribe(0).await else {
            return;
        };
        let (tx, rx) = mpsc::channel::<Notice>(QUEUE);
        let sender = tokio::spawn(deliver(rx, cfg));
        let mut notices = Notices::default();
        let mut dropped = false;
        while let Some(d) = events.next().await {
            let Delivery::Event(ev) = d else { continue };
            let finished = matches!(ev.kind, EventKind::RunFinished { .. });
            if let Some(n) = notices.take(&ev.kind)
                && tx.try_send(n).is_err()
                && !dropped
            {
                dropped = true;
                eprintln!("trackside: notifications are not keeping up; some are dropped");
            }
            if finished {
                break;
            }
        }
        drop(tx);
        let _ = sender.await;
    });
    Notifier { task: Some(task) }
}

/// Why one delivery failed (said on standard error; the run goes on).
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("no TLS root certificates: {0}")]
    Roots(std::io::Error),
    #[error("not a URL: {0}")]
    Url(hyper::http::Error),
    #[error("no answer within {}s", SEND_WAIT.as_secs())]
    NoAnswer,
    #[error("{0}")]
    Http(hyper_util::client::legacy::Error),
    #[error("it answered {0}")]
    Status(hyper::StatusCode),
    #[error("cannot start it: {0}")]
    Spawn(std::io::Error),
    #[error("it exited with {0}")]
    Exit(std::process::ExitStatus),
    #[error("{0}")]
    Wait(std::io::Error),
    #[error("it ran longer than {}s and was stopped", SEND_WAIT.as_secs())]
    Slow,
}

/// Where a webhook goes, without what may be a secret in its path.
fn host_of(url: &str) -> String {
    url.parse::<hyper::Uri>()
        .ok()
        .and_then(|u| Some(format!("{}://{}", u.scheme_str()?, u.authority()?)))
        .unwrap_or_else(|| "a webhook".into())
}

async fn deliver(mut rx: mpsc::Receiver<Notice>, cfg: Config) {
    let client = match https_client() {
        Ok(c) => Some(c),
        Err(e) => {
            eprintln!("trackside: webhooks cannot be sent: {e}");
            None
        }
    };
    let mut failed_once: Vec<String> = Vec::new();
    let mut report = |what: String, e: NotifyError| {
        if !failed_once.contains(&what) {
            eprintln!("trackside: notification to {what} failed: {e} (the run goes on)");
            failed_once.push(what);
        }
    };
    while let Some(n) = rx.recv().await {
        let body = n.payload().to_string();
        for url in &cfg.webhooks {
            let Some(client) = &client else { break };
            if let Err(e) = post(client, url, body.clone()).await {
                report(host_of(url), e);
            }
        }
        for cmd in &cfg.commands {
            if let Err(e) = run_command(cmd, &n, &body).await {
                report(format!("`{cmd}`"), e);
            }
        }
    }
}

type Client = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
>;

fn https_client() -> Result<Client, NotifyError> {
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_native_roots(rustls::crypto::ring::default_provider())
        .map_err(NotifyError::Roots)?
        .https_or_http()
        .enable_http1()
        .build();
    Ok(hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector))
}

async fn post(client: &Client, url: &str, body: String) -> Result<(), NotifyError> {
    let req = hyper::Request::post(url)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(
            hyper::header::USER_AGENT,
            concat!("trackside/", env!("CARGO_PKG_VERSION")),
        )
        .body(Full::new(Bytes::from(body)))
        .map_err(NotifyError::Url)?;
    let resp = tokio::time::timeout(SEND_WAIT, client.request(req))
        .await
        .map_err(|_| NotifyError::NoAnswer)?
        .map_err(NotifyError::Http)?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(NotifyError::Status(resp.status()))
    }
}

/// Runs `cmd` with `sh -c`, the notice's JSON on its standard input and
/// `TRACKSIDE_NOTICE` (the event) and `TRACKSIDE_RUN` set.
async fn run_command(cmd: &str, n: &Notice, body: &str) -> Result<(), NotifyError> {
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .env("TRACKSIDE_NOTICE", n.event)
        .env("TRACKSIDE_RUN", &n.run_id)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(NotifyError::Spawn)?;
    let run = async {
        if let Some(mut stdin) = child.stdin.take() {
            // A command that does not read its input is fine.
            let _ = stdin.write_all(body.as_bytes()).await;
            let _ = stdin.write_all(b"\n").await;
        }
        child.wait().await
    };
    match tokio::time::timeout(SEND_WAIT, run).await {
        Ok(Ok(st)) if st.success() => Ok(()),
        Ok(Ok(st)) => Err(NotifyError::Exit(st)),
        Ok(Err(e)) => Err(NotifyError::Wait(e)),
        Err(_) => Err(NotifyError::Slow),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Diagnosis, FailureClass, RunSummary};

    fn started() -> EventKind {
        EventKind::RunStarted {
            run_id: "r1".into(),
            pipeline: "shop".into(),
            jobs: vec!["test".into()],
            max_parallel: 2,
        }
    }

    fn finished(job: &str, status: JobStatus, diagnosis: Option<Diagnosis>) -> EventKind {
        EventKind::JobFinished {
            job: job.into(),
            attempt: 2,
            status,
            exit_code: Some(7),
            failure_class: (status == JobStatus::Failed).then_some(FailureClass::Network),
            duration_ms: 1_000,
            flaky: false,
            message: Some("step `main` exited with 7".into()),
            cached: None,
            diagnosis: diagnosis.map(Box::new),
        }
    }

    #[test]
    fn a_failed_job_a_gate_and_the_end_are_noticed() {
        let mut n = Notices::default();
        assert_eq!(n.take(&started()), None);
        let d = Diagnosis {
            rule: "connection-refused".into(),
            title: "connection refused".into(),
            class: FailureClass::Network,
            hint: "nothing was listening".into(),
            runbook: "docs/runbooks/network.md#connection-refused".into(),
            retryable: true,
            lines: Vec::new(),
            dependency: None,
        };
        let f = n.take(&finished("test", JobStatus::Failed, Some(d))).expect("a notice");
        assert_eq!(f.event, "job_failed");
        assert_eq!(f.hint.as_deref(), Some("nothing was listening"));
        assert_eq!(f.command.as_deref(), Some("trackside logs r1 test"));
        assert!(
            f.text.contains(
                "test failed in shop (network, exit 7, attempt 2): connection refused. nothing was listening"
            ),
            "{}",
            f.text
        );
        assert_eq!(f.payload()["text"], f.text);
        assert_eq!(
            f.payload()["trackside"]["runbook"],
            "docs/runbooks/network.md#connection-refused"
        );
        assert_eq!(n.take(&finished("build", JobStatus::Succeeded, None)), None);
        let g = n
            .take(&EventKind::GateWaiting { job: "deploy".into() })
            .expect("a notice");
        assert_eq!(g.command.as_deref(), Some("trackside approve r1 deploy"));
        let s = RunSummary {
            run_id: "r1".into(),
            pipeline: "shop".into(),
            result: RunResult::Failed,
            exit_code: 1,
            duration_ms: 2_500,
            jobs: Vec::new(),
            message: "1 of 2 jobs failed: test".into(),
            repeat: None,
        };
        let r = n.take(&EventKind::RunFinished { summary: s }).expect("a notice");
        assert_eq!(r.result.as_deref(), Some("failed"));
        assert!(
            r.text
                .contains("shop failed in 2.5s: 1 of 2 jobs failed: test (run r1)"),
            "{}",
            r.text
        );
    }

    #[test]
    fn a_deploy_job_s_end_is_a_rollout_verdict() {
        let mut n = Notices::default();
        n.take(&started());
        n.rollouts.push("deploy".into());
        let v = n.take(&finished("deploy", JobStatus::Failed, None)).expect("a notice");
        assert_eq!((v.event, v.result.as_deref()), ("rollout", Some("rolled_back")));
        let v = n
            .take(&finished("deploy", JobStatus::Succeeded, None))
            .expect("a notice");
        assert_eq!(v.result.as_deref(), Some("promoted"));
    }

    #[test]
    fn a_webhook_is_named_by_its_host_only() {
        assert_eq!(
            host_of("https://hooks.slack.com/services/T000/B000/XXXXSECRET"),
            "https://hooks.slack.com"
        );
        assert_eq!(host_of("not a url"), "a webhook");
    }
}
