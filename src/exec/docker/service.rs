//! The containers of a live service (docs/deployments.md, "Live services").
//!
//! Unlike a step's container or a rehearsal's replica, a live replica is
//! meant to outlive the trackside that started it: it runs detached with
//! the restart policy `unless-stopped` (the daemon starts it again when it
//! exits, and after the daemon itself restarts), on a loopback port chosen
//! once so its address never changes, and it carries no owner pid (the
//! sweep of a crashed trackside's containers leaves it alone). Its labels
//! name the service (state directory and name), the revision and the
//! replica, so the service process finds what is its own.

use std::collections::HashMap;

use bollard::models::{RestartPolicy, RestartPolicyNameEnum};
use bollard::query_parameters::{InspectContainerOptions, LogsOptions, StartContainerOptions};
use tokio::sync::mpsc;

use super::{DockerExecutor, OutputLine, PullPolicy, auth, forward_logs};

/// On a live service's replicas: `<state directory>:<service>`.
pub const LABEL_SERVICE: &str = "dev.trackside.service";
/// The revision (version) a live replica runs.
pub const LABEL_REVISION: &str = "dev.trackside.revision";
/// The replica's name in its service (`v2#1.3f0a`).
pub const LABEL_REPLICA: &str = "dev.trackside.replica";

/// A live replica to create.
pub struct LiveContainer<'a> {
    /// The container's name.
    pub name: &'a str,
    pub image: &'a str,
    /// The port the image serves on inside (its `PORT`).
    pub port: u16,
    /// The loopback port it is published on.
    pub host_port: u16,
    pub env: &'a [(String, String)],
    /// `<state directory>:<service>`.
    pub service: &'a str,
    pub revision: &'a str,
    pub replica: &'a str,
}

/// What the daemon says of a live replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Running {
    /// Its main process on this machine (0 while it is not running).
    pub pid: u32,
    pub running: bool,
    /// The daemon is about to start it again (its restart policy).
    pub restarting: bool,
}

impl DockerExecutor {
    /// Creates and starts a live replica; returns the container's id.
    pub async fn start_live(&self, c: &LiveContainer<'_>) -> Result<String, String> {
        let labels = HashMap::from([
            (LABEL_SERVICE.to_string(), c.service.to_string()),
            (LABEL_REVISION.to_string(), c.revision.to_string()),
            (LABEL_REPLICA.to_string(), c.replica.to_string()),
        ]);
        let host_port = c.host_port.to_string();
        let replica = super::Replica {
            name: c.name,
            image: c.image,
            port: c.port,
            host_port: &host_port,
            env: c.env,
        };
        let restart = RestartPolicy {
            name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
            maximum_retry_count: None,
        };
        let id = self.create_replica(&replica, labels, Some(restart)).await?;
        if let Err(e) = self.start_existing(&id).await {
            self.remove(&id).await;
            return Err(e);
        }
        Ok(id)
    }

    /// Pulls `image` unless the daemon has it (before a live replica of it
    /// is made: a pull may take minutes).
    pub async fn pull_if_missing(&self, image: &str) -> Result<(), String> {
        self.ensure_image(image, PullPolicy::IfNotPresent, &auth::JobLogins::default())
            .await
    }

    /// Starts a live replica's container that is there but not running
    /// (stopped by hand, or given up on by the daemon).
    pub async fn start_existing(&self, id: &str) -> Result<(), String> {
        let started =
            tokio::time::timeout(ANSWER, self.docker.start_container(id, None::<StartContainerOptions>)).await;
        match started {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(self.explain(format!("cannot start container {}: {e}", short(id))).await),
            Err(_) => Err(not_answered("start", id)),
        }
    }

    /// A live replica's state; `Ok(None)` when its container is gone.
    pub async fn running(&self, id: &str) -> Result<Option<Running>, String> {
        let inspected = tokio::time::timeout(
            ANSWER,
            self.docker.inspect_container(id, None::<InspectContainerOptions>),
        )
        .await
        .map_err(|_| not_answered("inspect", id))?;
        match inspected {
            Ok(i) => {
                let s = i.state.unwrap_or_default();
                Ok(Some(Running {
                    pid: s.pid.and_then(|p| u32::try_from(p).ok()).unwrap_or(0),
                    running: s.running.unwrap_or(false),
                    restarting: s.restarting.unwrap_or(false),
                }))
            }
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => Ok(None),
            Err(e) => Err(self
                .explain(format!("cannot inspect container {}: {e}", short(id)))
                .await),
        }
    }

    /// Follows a container's output from `since` (seconds since the epoch;
    /// 0: from its start) into `out`, until the container stops.
    pub fn follow(&self, id: &str, since: i32, out: mpsc::Sender<OutputLine>) {
        let logs = self.docker.logs(
            id,
            Some(LogsOptions {
                follow: true,
                stdout: true,
                stderr: true,
                since,
                ..Default::default()
            }),
        );
        tokio::spawn(forward_logs(logs, out));
    }

    /// The live replicas of `service` (`<state directory>:<service>`):
    /// (container id, replica name).
    pub async fn live_replicas(&self, service: &str) -> Vec<(String, String)> {
        self.containers_with(vec![format!("{LABEL_SERVICE}={service}")])
            .await
            .into_iter()
            .filter_map(|c| {
                let name = c.labels.as_ref()?.get(LABEL_REPLICA)?.clone();
                Some((c.id?, name))
            })
            .collect()
    }
}

/// How long the service process waits for the daemon to answer a look at,
/// or a start of, one of its containers (it holds the service meanwhile).
const ANSWER: std::time::Duration = std::time::Duration::from_secs(10);

fn not_answered(what: &str, id: &str) -> String {
    format!(
        "the Docker daemon did not answer a {what} of container {} within {} s",
        short(id),
        ANSWER.as_secs()
    )
}

/// A container id as people read it.
pub fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}
