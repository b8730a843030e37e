//! The container executor, on the Docker Engine API (bollard).
//!
//! Each step is one container: the job's workspace is bind-mounted at
//! [`WORKDIR`], so steps with different images share files. Nothing secret
//! reaches the daemon's view of a container: the script and the secret
//! variables travel in files mounted read-only (`docker inspect` shows their
//! paths, never their contents), and names and labels carry only run id, job
//! and attempt. Every container carries trackside's labels so that it is
//! removed when its step ends, whatever the outcome, and so that leftovers of
//! a crashed trackside can be found and reaped, and nothing else touched.

pub mod auth;
mod build;
pub(crate) mod job;
pub mod service;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, InspectContainerOptions, KillContainerOptions, ListContainersOptions,
    LogsOptions, RemoveContainerOptions, StartContainerOptions, StatsOptions, StopContainerOptions,
    WaitContainerOptions,
};
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{BoxFuture, ContainerStep, Executor, OutputLine, Services, ServicesRequest, StepEnd, StepSpec, Stream};
use crate::pipeline::model::PullPolicy;

/// Where the job's workspace appears inside its containers.
pub const WORKDIR: &str = "/workspace";
/// Where a container step's file variables are mounted, one file each.
pub const FILES_PATH: &str = "/run/trackside/files";
/// Where the step's script is mounted.
pub(crate) const SCRIPT_PATH: &str = "/run/trackside/step.sh";
/// Where the secret variables are mounted (sourced by the script).
pub(crate) const SECRETS_PATH: &str = "/run/trackside/secrets.env";

/// Labels on everything trackside creates.
pub const LABEL_RUN: &str = "dev.trackside.run";
pub const LABEL_JOB: &str = "dev.trackside.job";
pub const LABEL_ATTEMPT: &str = "dev.trackside.attempt";
/// The pid of the trackside that owns the container: a dead pid marks a leftover.
pub const LABEL_PID: &str = "dev.trackside.pid";
/// Set on containers of a `--keep-failed` run: once exited, they are kept.
pub const LABEL_KEEP: &str = "dev.trackside.keep";
/// On the replicas of a deploy: which state directory and service.
pub const LABEL_DEPLOY: &str = "dev.trackside.deploy";

/// A deploy replica's container, as [`DockerExecutor::create_replica`] makes it.
struct Replica<'a> {
    name: &'a str,
    image: &'a str,
    /// The port it serves on inside (its `PORT`).
    port: u16,
    /// Its loopback port on the host (empty: the daemon picks one).
    host_port: &'a str,
    env: &'a [(String, String)],
}

/// What a container step ran with, kept in the run folder
/// (`steps/<job>.<attempt>.<step>.json`) so `trackside shell` can make a
/// fresh container like it when the original is gone. No secret values.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct StepRecord {
    pub container: String,
    pub image: String,
    pub workspace: PathBuf,
    pub workdir: String,
    pub env: Vec<(String, String)>,
    pub secrets_file: Option<PathBuf>,
    pub user: Option<String>,
    /// File variables: host file, path inside.
    #[serde(default)]
    pub files: Vec<(PathBuf, String)>,
    /// Where the workspace is mounted ([`WORKDIR`] when unset): a job
    /// container's steps have GitHub's `/__w/<repo>/<repo>`.
    #[serde(default)]
    pub workspace_at: Option<String>,
}

/// How long a daemon that failed a call has to answer a ping.
const DAEMON_PING: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("cannot reach the Docker daemon at {address}: {message}; {hint}")]
    Unreachable {
        address: String,
        message: String,
        hint: String,
    },
}

/// What to check when the daemon cannot be reached: the TLS files when
/// DOCKER_TLS_VERIFY asks for TLS, the daemon itself otherwise.
fn unreachable_hint() -> String {
    if std::env::var_os("DOCKER_TLS_VERIFY").is_some_and(|v| !v.is_empty()) {
        let dir = std::env::var("DOCKER_CERT_PATH").unwrap_or_else(|_| "~/.docker".into());
        format!(
            "DOCKER_TLS_VERIFY is set: check DOCKER_CERT_PATH ({dir}): its ca.pem must have signed the daemon's certificate (for the host in DOCKER_HOST) and the daemon must trust its cert.pem/key.pem; or use --executor shell"
        )
    } else {
        "start dockerd or use --executor shell".into()
    }
}

/// An error with its causes: hyper and TLS errors keep the useful part
/// (a refused certificate, say) in their sources.
pub(crate) fn with_causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

/// Whether the trackside whose pid `labels` carry ([`LABEL_PID`]) is
/// still running on this machine.
pub(crate) fn owner_alive(labels: Option<&HashMap<String, String>>) -> bool {
    labels
        .and_then(|l| l.get(LABEL_PID))
        .and_then(|p| p.parse::<i32>().ok())
        .is_some_and(|p| nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), None).is_ok())
}

/// Where bollard will connect: DOCKER_HOST or the local socket.
pub fn daemon_address() -> String {
    std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into())
}

#[derive(Clone)]
pub struct DockerExecutor {
    docker: Docker,
    /// Where registry logins come from besides the job.
    logins: std::sync::Arc<auth::Sources>,
    /// Removals of what a job half started before it was cancelled: the
    /// run's end waits for them.
    cleanups: tokio_util::task::TaskTracker,
}

impl DockerExecutor {
    /// Connects (DOCKER_HOST honoured, tcp:// included), agrees on an API
    /// version with the daemon, and checks that it answers.
    pub async fn connect() -> Result<DockerExecutor, DockerError> {
        DockerExecutor::connect_to(&daemon_address()).await
    }

    /// [`DockerExecutor::connect`] to the daemon at `address` (`unix://`,
    /// `tcp://`, `https://`; DOCKER_TLS_VERIFY and DOCKER_CERT_PATH as usual).
    pub async fn connect_to(address: &str) -> Result<DockerExecutor, DockerError> {
        let unreachable = |message: String| DockerError::Unreachable {
            address: address.to_string(),
            message,
            hint: unreachable_hint(),
        };
        let no_answer = || unreachable("no answer within 10 s".into());
        let docker = Docker::connect_with_host(address).map_err(|e| unreachable(with_causes(&e)))?;
        let docker = tokio::time::timeout(Duration::from_secs(10), docker.negotiate_version())
            .await
            .map_err(|_| no_answer())?
            .map_err(|e| unreachable(with_causes(&e)))?;
        tokio::time::timeout(Duration::from_secs(10), docker.ping())
            .await
            .map_err(|_| no_answer())?
            .map_err(|e| unreachable(with_causes(&e)))?;
        Ok(DockerExecutor {
            docker,
            logins: std::sync::Arc::new(auth::Sources::from_env()),
            cleanups: tokio_util::task::TaskTracker::new(),
        })
    }

    pub fn client(&self) -> &Docker {
        &self.docker
    }

    /// Where removals run that must be done by the run's end (a task
    /// [`DockerExecutor::finish_run`] waits for).
    pub(crate) fn cleanups(&self) -> &tokio_util::task::TaskTracker {
        &self.cleanups
    }

    /// Waits for the removals under way.
    pub(crate) async fn cleanups_done(&self) {
        self.cleanups.close();
        self.cleanups.wait().await;
        self.cleanups.reopen();
    }

    /// Where registry logins come from besides the job.
    pub(crate) fn login_sources(&self) -> &auth::Sources {
        &self.logins
    }

    /// A bridge network of the run (`name`), created on first use.
    async fn ensure_network(&self, run_id: &str, name: String) -> Result<String, String> {
        use bollard::query_parameters::InspectNetworkOptions;
        if self
            .docker
            .inspect_network(&name, None::<InspectNetworkOptions>)
            .await
            .is_ok()
        {
            return Ok(name);
        }
        let labels = HashMap::from([
            (LABEL_RUN.to_string(), run_id.to_string()),
            (LABEL_PID.to_string(), std::process::id().to_string()),
        ]);
        let created = self
            .docker
            .create_network(bollard::models::NetworkCreateRequest {
                name: name.clone(),
                driver: Some("bridge".into()),
                labels: Some(labels),
                ..Default::default()
            })
            .await;
        match created {
            Ok(_) => Ok(name),
            // Another job of the run may have created it meanwhile.
            Err(e) => match self.docker.inspect_network(&name, None::<InspectNetworkOptions>).await {
                Ok(_) => Ok(name),
                Err(_) => Err(format!("cannot create the run's network: {e}")),
            },
        }
    }

    async fn start_services_impl(
        &self,
        req: ServicesRequest,
        out: mpsc::Sender<OutputLine>,
    ) -> Result<Services, String> {
        // One network per job attempt, as GitLab's FF_NETWORK_PER_BUILD and
        // GitHub have it: two jobs' `postgres` services never share a name.
        let name = format!(
            "trackside-{}-{}-{}",
            req.run_id,
            crate::store::file_safe(&req.job),
            req.attempt
        );
        let network = self.ensure_network(&req.run_id, name).await?;
        // Whatever is made from here on is removed if this is dropped half
        // way (the job was cancelled or timed out while a service started).
        let (d, dn) = (self.docker.clone(), self.docker.clone());
        let mut guard = HalfStarted::new(
            Services {
                containers: Vec::new(),
                network: Some(network.clone()),
                ports: Vec::new(),
            },
            &self.cleanups,
            move |id| {
                let d = d.clone();
                Box::pin(async move {
                    let force = RemoveContainerOptions {
                        force: true,
                        v: true,
                        ..Default::default()
                    };
                    let _ = d.remove_container(&id, Some(force)).await;
                })
            },
            move |net| {
                Box::pin(async move {
                    let _ = dn.remove_network(&net).await;
                })
            },
        );
        let result = match guard.services.as_mut() {
            Some(started) => self.start_each(&req, &network, &out, started).await,
            None => Ok(()),
        };
        let started = guard.services.take().unwrap_or_default();
        match result {
            Ok(()) => Ok(started),
            Err(e) => {
                self.stop_services_impl(started).await;
                Err(e)
            }
        }
    }

    async fn start_each(
        &self,
        req: &ServicesRequest,
        network: &str,
        out: &mpsc::Sender<OutputLine>,
        started: &mut Services,
    ) -> Result<(), String> {
        for (svc, env) in &req.services {
            let own = svc.options.extras.credentials.clone().map(|c| auth::JobLogins {
                credentials: Some((c.0, c.1)),
                auth_config: None,
            });
            self.ensure_image(&svc.image, req.pull, own.as_ref().unwrap_or(&req.logins))
                .await?;
            // Docker names take letters, digits, `_`, `.` and `-` only.
            let name = format!(
                "trackside-{}-{}-{}-svc-{}",
                req.run_id,
                crate::store::file_safe(&req.job),
                req.attempt,
                container_safe(&svc.name)
            );
            let _ = self.remove(&name).await;
            let labels = HashMap::from([
                (LABEL_RUN.to_string(), req.run_id.clone()),
                (LABEL_JOB.to_string(), req.job.clone()),
                (LABEL_ATTEMPT.to_string(), req.attempt.to_string()),
                (LABEL_PID.to_string(), std::process::id().to_string()),
            ]);
            let endpoint = bollard::models::EndpointSettings {
                aliases: Some(
                    std::iter::once(svc.name.clone())
                        .chain(svc.aliases.iter().cloned())
                        .chain(svc.options.extras.network_aliases.iter().cloned())
                        .collect(),
                ),
                ..Default::default()
            };
            let mut body = ContainerCreateBody {
                image: Some(svc.image.clone()),
                cmd: svc.command.clone(),
                entrypoint: svc.entrypoint.clone(),
                env: Some(env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
                labels: Some(labels),
                user: svc.options.user.clone(),
                networking_config: Some(bollard::models::NetworkingConfig {
                    endpoints_config: Some(HashMap::from([(network.to_string(), endpoint)])),
                }),
                ..Default::default()
            };
            let mut host = HostConfig {
                network_mode: Some(network.to_string()),
                ..Default::default()
            };
            job::apply_options(&svc.options, &mut body, &mut host);
            body.host_config = Some(host);
            let options = CreateContainerOptions {
                name: Some(name.clone()),
                ..Default::default()
            };
            // By name, before: removed even if the daemon made it and the
            // answer was lost.
            started.containers.push(name.clone());
            self.docker
                .create_container(Some(options), body)
                .await
                .map_err(|e| format!("cannot create service `{}` from `{}`: {e}", svc.name, svc.image))?;
            self.docker
                .start_container(&name, None::<StartContainerOptions>)
                .await
                .map_err(|e| {
                    let taken = e.to_string().contains("port is already allocated");
                    let hint = if taken {
                        "; another job of the run (or another program) has that host port: publish the service's port alone (`ports: ['5432']`) and read the free one Docker picks from `job.services.<id>.ports['5432']`, or run with -j 1"
                    } else {
                        ""
                    };
                    format!("cannot start service `{}`: {e}{hint}", svc.name)
                })?;
            let logs = self.docker.logs(
                &name,
                Some(LogsOptions {
                    follow: true,
                    stdout: true,
                    stderr: true,
                    ..Default::default()
                }),
            );
            forward_service_log(logs, &svc.name, out);
            if let Err(why) = self.wait_ready(&name, network, svc.port, svc.ready_timeout).await {
                let tail = self.last_lines(&name, 20).await;
                let mut msg = format!("service `{}` ({}) {why}", svc.name, svc.image);
                if !tail.is_empty() {
                    msg.push_str(&format!("; its last log lines:\n{}", tail.join("\n")));
                }
                return Err(msg);
            }
            let ports = if svc.options.extras.ports.is_empty() {
                Vec::new()
            } else {
                let info = self
                    .docker
                    .inspect_container(&name, None::<InspectContainerOptions>)
                    .await
                    .map_err(|e| format!("service `{}` vanished: {e}", svc.name))?;
                job::published(&info)
            };
            started.ports.push(super::ServicePorts {
                service: svc.name.clone(),
                container: name.clone(),
                ports,
            });
        }
        Ok(())
    }

    /// Ready = healthy (image HEALTHCHECK), else its port accepts TCP, else running.
    async fn wait_ready(&self, name: &str, network: &str, port: Option<u16>, timeout: Duration) -> Result<(), String> {
        use bollard::models::HealthStatusEnum;
        let until = tokio::time::Instant::now() + timeout;
        loop {
            let info = self
                .docker
                .inspect_container(name, None::<InspectContainerOptions>)
                .await
                .map_err(|e| format!("vanished: {e}"))?;
            let state = info.state.clone().unwrap_or_default();
            if state.running != Some(true) {
                return Err(format!(
                    "exited with code {} before it was ready",
                    state.exit_code.unwrap_or(-1)
                ));
            }
            let health = state.health.as_ref().and_then(|h| h.status);
            match health {
                Some(HealthStatusEnum::HEALTHY) => return Ok(()),
                Some(HealthStatusEnum::UNHEALTHY) => return Err("reports unhealthy (its HEALTHCHECK failed)".into()),
                Some(HealthStatusEnum::STARTING) => {}
                _ => match port {
                    None => return Ok(()),
                    Some(p) => {
                        let ip = info
                            .network_settings
                            .as_ref()
                            .and_then(|n| n.networks.as_ref())
                            .and_then(|n| n.get(network))
                            .and_then(|e| e.ip_address.clone())
                            .filter(|ip| !ip.is_empty());
                        if let Some(ip) = ip {
                            let probe = tokio::net::TcpStream::connect((ip.as_str(), p));
                            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(300), probe).await {
                                return Ok(());
                            }
                        }
                    }
                },
            }
            if tokio::time::Instant::now() >= until {
                let what = match (health, port) {
                    (Some(HealthStatusEnum::STARTING), _) => "its HEALTHCHECK".to_string(),
                    (_, Some(p)) => format!("a TCP connection to port {p}"),
                    _ => "it".to_string(),
                };
                return Err(format!(
                    "was not ready within {}s (waited for {what})",
                    timeout.as_secs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn last_lines(&self, name: &str, n: usize) -> Vec<String> {
        let mut logs = self.docker.logs(
            name,
            Some(LogsOptions {
                follow: false,
                stdout: true,
                stderr: true,
                tail: n.to_string(),
                ..Default::default()
            }),
        );
        let mut text = Vec::new();
        while let Some(Ok(chunk)) = logs.next().await {
            text.extend_from_slice(&chunk.into_bytes());
        }
        String::from_utf8_lossy(&text).lines().map(str::to_string).collect()
    }

    async fn stop_services_impl(&self, services: Services) {
        for id in services.containers {
            self.remove(&id).await;
        }
        if let Some(net) = services.network {
            let _ = self.docker.remove_network(&net).await;
        }
    }

    /// Containers (running or not) carrying all of `labels` (`key` or `key=value`).
    async fn containers_with(&self, labels: Vec<String>) -> Vec<bollard::models::ContainerSummary> {
        let filters = HashMap::from([("label".to_string(), labels)]);
        self.docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filters),
                ..Default::default()
            }))
            .await
            .unwrap_or_default()
    }

    /// Removes the run's network and anything of the run still around.
    async fn finish_run_impl(&self, run_id: &str) {
        self.cleanups_done().await;
        for c in self.containers_with(vec![format!("{LABEL_RUN}={run_id}")]).await {
            if kept(&c) {
                continue;
            }
            if let Some(id) = c.id {
                self.remove(&id).await;
            }
        }
        let filters = HashMap::from([("label".to_string(), vec![format!("{LABEL_RUN}={run_id}")])]);
        let networks = self
            .docker
            .list_networks(Some(bollard::query_parameters::ListNetworksOptions {
                filters: Some(filters),
            }))
            .await
            .unwrap_or_default();
        for n in networks {
            if let Some(name) = n.name {
                let _ = self.docker.remove_network(&name).await;
            }
        }
    }

    /// Removes containers kept by `--keep-failed` for the runs in `runs`, and
    /// any kept container created more than `older_than` ago. Returns how many.
    pub async fn remove_kept(&self, runs: &[String], older_than: Duration) -> usize {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut removed = 0;
        for c in self.containers_with(vec![format!("{LABEL_KEEP}=1")]).await {
            let run = c
                .labels
                .as_ref()
                .and_then(|l| l.get(LABEL_RUN))
                .cloned()
                .unwrap_or_default();
            let age = now.saturating_sub(u64::try_from(c.created.unwrap_or(0)).unwrap_or(0));
            if (runs.contains(&run) || age > older_than.as_secs())
                && let Some(id) = &c.id
                && self.remove(id).await
            {
                removed += 1;
            }
        }
        removed
    }

    /// The newest container kept for a failed step of `job` in `run_id`.
    pub async fn kept_container(&self, run_id: &str, job: &str) -> Option<String> {
        let labels = vec![
            format!("{LABEL_RUN}={run_id}"),
            format!("{LABEL_JOB}={job}"),
            format!("{LABEL_KEEP}=1"),
        ];
        let mut list = self.containers_with(labels).await;
        list.sort_by_key(|c| c.created.unwrap_or(0));
        list.into_iter().rev().find(kept).and_then(|c| c.id)
    }

    /// Commits a container's filesystem to an image, for a debug shell in it.
    pub async fn snapshot(&self, container: &str) -> Result<String, String> {
        let repo = "trackside-debug";
        let tag: String = container.chars().filter(char::is_ascii_alphanumeric).take(60).collect();
        self.docker
            .commit_container(
                bollard::query_parameters::CommitContainerOptions {
                    container: Some(container.to_string()),
                    repo: Some(repo.to_string()),
                    tag: Some(tag.clone()),
                    ..Default::default()
                },
                bollard::models::ContainerConfig::default(),
            )
            .await
            .map_err(|e| format!("cannot snapshot container {container}: {e}"))?;
        Ok(format!("{repo}:{tag}"))
    }

    /// Removes containers left by trackside processes that no longer exist.
    /// Returns how many were removed. Anything without trackside's labels,
    /// or owned by a live trackside, is left alone.
    pub async fn reap_orphans(&self) -> usize {
        let list = self.containers_with(vec![LABEL_PID.to_string()]).await;
        let mut removed = 0;
        for c in list {
            if owner_alive(c.labels.as_ref()) || kept(&c) {
                continue;
            }
            if let Some(id) = c.id
                && self.remove(&id).await
            {
                tracing::info!(container = %id, "removed a container left by a crashed trackside");
                removed += 1;
            }
        }
        // Networks of crashed runs too.
        let filters = HashMap::from([("label".to_string(), vec![LABEL_PID.to_string()])]);
        let networks = self
            .docker
            .list_networks(Some(bollard::query_parameters::ListNetworksOptions {
                filters: Some(filters),
            }))
            .await
            .unwrap_or_default();
        for n in networks {
            if let (false, Some(name)) = (owner_alive(n.labels.as_ref()), n.name) {
                let _ = self.docker.remove_network(&name).await;
            }
        }
        removed
    }

    async fn remove(&self, id: &str) -> bool {
        self.docker
            .remove_container(
                id,
                Some(RemoveContainerOptions {
                    force: true,
                    v: true,
                    ..Default::default()
                }),
            )
            .await
            .is_ok()
    }

    /// Starts one replica of a deploy: `image` with `PORT` set to its inner
    /// `port`, published on a free loopback port the daemon picks. Returns
    /// the container's id and that host port. Its output goes to `out`.
    pub async fn start_replica(
        &self,
        name: &str,
        image: &str,
        port: u16,
        env: &[(String, String)],
        tag: &str,
        out: mpsc::Sender<OutputLine>,
    ) -> Result<(String, u16), String> {
        let key = format!("{port}/tcp");
        let labels = HashMap::from([
            (LABEL_DEPLOY.to_string(), tag.to_string()),
            (LABEL_PID.to_string(), std::process::id().to_string()),
        ]);
        let replica = Replica {
            name,
            image,
            port,
            host_port: "",
            env,
        };
        let id = self.create_replica(&replica, labels, None).await?;
        if let Err(e) = self.docker.start_container(&id, None::<StartContainerOptions>).await {
            self.remove(&id).await;
            return Err(format!("cannot start a container of `{image}`: {e}"));
        }
        let host_port = self
            .docker
            .inspect_container(&id, None::<InspectContainerOptions>)
            .await
            .ok()
            .and_then(|i| i.network_settings?.ports?.remove(&key)??.into_iter().next()?.host_port)
            .and_then(|p| p.parse::<u16>().ok());
        let Some(host_port) = host_port else {
            self.remove(&id).await;
            return Err(format!("the daemon published no host port for {key} of `{image}`"));
        };
        let logs = self.docker.logs(
            &id,
            Some(LogsOptions {
                follow: true,
                stdout: true,
                stderr: true,
                ..Default::default()
            }),
        );
        tokio::spawn(forward_logs(logs, out));
        Ok((id, host_port))
    }

    /// Creates (does not start) a deploy replica's container: `image` with
    /// `PORT` set to its inner port, published on loopback at `host_port`
    /// (empty: one the daemon picks), pulled first if the daemon lacks it.
    /// Returns its id.
    async fn create_replica(
        &self,
        r: &Replica<'_>,
        labels: HashMap<String, String>,
        restart_policy: Option<bollard::models::RestartPolicy>,
    ) -> Result<String, String> {
        self.ensure_image(r.image, PullPolicy::IfNotPresent, &auth::JobLogins::default())
            .await?;
        let key = format!("{}/tcp", r.port);
        let mut env: Vec<String> = r.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        env.push(format!("PORT={}", r.port));
        let body = ContainerCreateBody {
            image: Some(r.image.to_string()),
            env: Some(env),
            labels: Some(labels),
            exposed_ports: Some(vec![key.clone()]),
            host_config: Some(HostConfig {
                port_bindings: Some(HashMap::from([(
                    key,
                    Some(vec![bollard::models::PortBinding {
                        host_ip: Some("127.0.0.1".into()),
                        host_port: Some(r.host_port.to_string()),
                    }]),
                )])),
                restart_policy,
                ..Default::default()
            }),
            ..Default::default()
        };
        let created = self
            .docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(r.name.to_string()),
                    ..Default::default()
                }),
                body,
            )
            .await
            .map_err(|e| format!("cannot create a container of `{}`: {e}", r.image))?;
        Ok(created.id)
    }

    /// Stops a replica (SIGTERM, then SIGKILL after `grace`) and removes
    /// it; whether it is gone (removed now, or not there).
    pub async fn stop_replica(&self, id: &str, grace: Duration) -> bool {
        let t = i32::try_from(grace.as_secs()).unwrap_or(i32::MAX);
        let _ = self
            .docker
            .stop_container(
                id,
                Some(StopContainerOptions {
                    t: Some(t),
                    signal: None,
                }),
            )
            .await;
        self.remove(id).await
            || matches!(
                self.docker.inspect_container(id, None::<InspectContainerOptions>).await,
                Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. })
            )
    }

    /// Removes every container labelled with this deploy tag (replicas a
    /// killed trackside left behind); returns how many.
    pub async fn remove_replicas(&self, tag: &str) -> usize {
        let mut n = 0;
        for c in self.containers_with(vec![format!("{LABEL_DEPLOY}={tag}")]).await {
            if let Some(id) = c.id
                && self.remove(&id).await
            {
                n += 1;
            }
        }
        n
    }

    /// A Docker call failed with `message`: when the daemon no longer
    /// answers (a ping within 2 s), the failure is said as the daemon's,
    /// which the failure rules class as infrastructure on the Docker daemon
    /// (its circuit breaker; a retry once it answers again can pass).
    pub(crate) async fn explain(&self, message: String) -> String {
        let why = match tokio::time::timeout(DAEMON_PING, self.docker.ping()).await {
            Ok(Ok(_)) => return message,
            Ok(Err(e)) => with_causes(&e),
            Err(_) => format!("no answer within {} s", DAEMON_PING.as_secs()),
        };
        format!(
            "the Docker daemon at {} stopped answering ({why}): {message}",
            daemon_address()
        )
    }

    /// Takes registry logins from these sources instead of trackside's
    /// environment (`DOCKER_CONFIG`, `DOCKER_AUTH_CONFIG`, `PATH`).
    pub fn with_logins(mut self, sources: auth::Sources) -> DockerExecutor {
        self.logins = std::sync::Arc::new(sources);
        self
    }

    /// Makes the image available according to the pull policy, pulling
    /// with the registry login the job or this machine has for it.
    pub(crate) async fn ensure_image(
        &self,
        image: &str,
        pull: PullPolicy,
        logins: &auth::JobLogins,
    ) -> Result<(), String> {
        // Only a 404 says the image is not there; any other error (the
        // daemon gone) is said as itself.
        let present = match self.docker.inspect_image(image).await {
            Ok(_) => true,
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => false,
            Err(e) => return Err(format!("cannot inspect image `{image}`: {}", with_causes(&e))),
        };
        match (pull, present) {
            (PullPolicy::Never, false) => {
                return Err(format!(
                    "image `{image}` is not present and the pull policy is `never`; build or load it first (docker images lists what is there)"
                ));
            }
            (PullPolicy::Never, true) | (PullPolicy::IfNotPresent, true) => return Ok(()),
            _ => {}
        }
        let auth::Resolved { login, ignored } = auth::login_for(image, logins, &self.logins).await;
        let mut pull_stream = self.docker.create_image(
            Some(CreateImageOptions {
                from_image: Some(image.to_string()),
                ..Default::default()
            }),
            None,
            login.as_ref().map(auth::Login::to_docker),
        );
        while let Some(item) = pull_stream.next().await {
            if let Err(e) = item {
                let mut hint = match &login {
                    Some(l) => format!("pulled as `{}` with the login from {}", l.username, l.source),
                    None => format!(
                        "pulled without a login: no credentials for {} in the job, DOCKER_AUTH_CONFIG or the Docker configuration (`docker login {}`)",
                        auth::registry_of(image),
                        auth::registry_of(image)
                    ),
                };
                for why in &ignored {
                    hint.push_str(&format!("; passed over: {why}"));
                }
                return Err(format!(
                    "cannot pull image `{image}`: the daemon answered: {e} ({hint})"
                ));
            }
        }
        Ok(())
    }

    async fn run(&self, spec: StepSpec, out: mpsc::Sender<OutputLine>, cancel: CancellationToken) -> StepEnd {
        let Some(c) = spec.container.as_ref() else {
            return StepEnd::SpawnFailed("internal: a container step without container settings".into());
        };
        if let Some(exec) = &c.exec_in {
            return self
                .exec_step(&spec, exec, c.options.user.clone(), &c.workdir, out, cancel)
                .await;
        }
        if let Err(e) = self.ensure_image(&c.image, c.options.pull, &c.logins).await {
            return StepEnd::SpawnFailed(e);
        }
        let name = container_name(c);
        // A leftover of the same name (a crash mid-step) would block creation.
        let _ = self.remove(&name).await;
        let body = container_body(&spec, c);
        if let Err(e) = self
            .docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(name.clone()),
                    ..Default::default()
                }),
                body,
            )
            .await
        {
            return StepEnd::SpawnFailed(format!("cannot create a container from `{}`: {e}", c.image));
        }
        let end = self.start_and_wait(&name, &spec, out.clone(), cancel).await;
        let failed = !matches!(end, StepEnd::Exited(0) | StepEnd::Cancelled);
        if c.keep_on_failure && failed {
            let _ = out
                .send(OutputLine {
                    stream: Stream::Stderr,
                    text: format!(
                        "trackside: kept container {name}; `trackside shell {} {}` opens a shell in it",
                        c.run_id, c.job
                    ),
                    partial: false,
                    node: None,
                })
                .await;
        } else {
            self.remove(&name).await;
        }
        end
    }

    async fn start_and_wait(
        &self,
        name: &str,
        spec: &StepSpec,
        out: mpsc::Sender<OutputLine>,
        cancel: CancellationToken,
    ) -> StepEnd {
        if let Err(e) = self.docker.start_container(name, None::<StartContainerOptions>).await {
            return StepEnd::SpawnFailed(format!("cannot start the container: {e}"));
        }
        let logs = self.docker.logs(
            name,
            Some(LogsOptions {
                follow: true,
                stdout: true,
                stderr: true,
                ..Default::default()
            }),
        );
        let reader = tokio::spawn(forward_logs(logs, out));
        // Docker's stats about once a second: the peak the kernel kept
        // (`max_usage`, cgroup v1), else the highest use seen (cgroup v2
        // keeps no peak Docker reports).
        let mut stats = self.docker.stats(name, Some(StatsOptions::default()));
        let usage = spec.usage.clone();
        let cpu_ns = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let seen = cpu_ns.clone();
        let sampler = tokio::spawn(async move {
            while let Some(Ok(s)) = stats.next().await {
                // As the docker CLI shows it: without the page cache the
                // kernel can drop (`inactive_file`), which a job that writes
                // many files would otherwise learn as its need.
                if let Some(m) = s.memory_stats {
                    let cache = m.stats.as_ref().and_then(|st| {
                        st.get("inactive_file")
                            .or_else(|| st.get("total_inactive_file"))
                            .copied()
                    });
                    if let Some(bytes) = m.max_usage.or(m.usage) {
                        usage.record(bytes.saturating_sub(cache.unwrap_or(0)));
                    }
                }
                if let Some(ns) = s.cpu_stats.and_then(|c| c.cpu_usage).and_then(|u| u.total_usage) {
                    seen.fetch_max(ns, std::sync::atomic::Ordering::Relaxed);
                }
            }
        });
        let deadline = async {
            match spec.deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        let mut wait = self.docker.wait_container(
            name,
            Some(WaitContainerOptions {
                condition: "not-running".into(),
            }),
        );
        let end = tokio::select! {
            r = wait.next() => match r {
                Some(Ok(resp)) => StepEnd::Exited(i32::try_from(resp.status_code).unwrap_or(-1)),
                // bollard reports a non-zero exit as an error carrying the code.
                Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => {
                    StepEnd::Exited(i32::try_from(code).unwrap_or(-1))
                }
                Some(Err(e)) => StepEnd::SpawnFailed(format!("lost track of the container: {e}")),
                None => StepEnd::SpawnFailed("lost track of the container".into()),
            },
            () = deadline => {
                let grace = i32::try_from(spec.kill_grace.as_secs()).unwrap_or(i32::MAX).max(0);
                let _ = self.docker.stop_container(name, Some(StopContainerOptions { t: Some(grace), signal: None })).await;
                StepEnd::TimedOut
            }
            () = cancel.cancelled() => {
                let _ = self.docker.kill_container(name, Some(KillContainerOptions { signal: "SIGKILL".into() })).await;
                StepEnd::Cancelled
            }
        };
        sampler.abort();
        // Docker counts the container's CPU time from its start: the last
        // sample is the step's (a step shorter than a sample says none).
        spec.usage
            .add_cpu(cpu_ns.load(std::sync::atomic::Ordering::Relaxed) / 1_000_000);
        // The log stream ends when the container stops; bound the wait anyway.
        let abort = reader.abort_handle();
        if tokio::time::timeout(Duration::from_secs(5), reader).await.is_err() {
            abort.abort();
        }
        if let StepEnd::Exited(_) = end {
            let oom = self
                .docker
                .inspect_container(name, None::<InspectContainerOptions>)
                .await
                .ok()
                .and_then(|i| i.state)
                .and_then(|s| s.oom_killed)
                .unwrap_or(false);
            if oom {
                return StepEnd::OomKilled;
            }
        }
        end
    }
}

/// An exited container of a `--keep-failed` run.
fn kept(c: &bollard::models::ContainerSummary) -> bool {
    let keep = c
        .labels
        .as_ref()
        .and_then(|l| l.get(LABEL_KEEP))
        .is_some_and(|v| v == "1");
    keep && c.state == Some(bollard::models::ContainerSummaryStateEnum::EXITED)
}

/// `docker run -it --rm` of a shell like the step's container: its image (or
/// a snapshot of the failed container), workspace, working directory,
/// environment and secrets file. The docker CLI owns the terminal.
pub fn shell_command(image: &str, rec: &StepRecord, workspace: &std::path::Path) -> std::process::Command {
    let mut cmd = std::process::Command::new("docker");
    cmd.args(["run", "--rm", "-it", "--entrypoint", "sh"]);
    let at = rec.workspace_at.as_deref().unwrap_or(WORKDIR);
    cmd.arg("-v").arg(format!("{}:{at}", workspace.display()));
    if let Some(s) = rec.secrets_file.as_ref().filter(|s| s.exists()) {
        cmd.arg("-v").arg(format!("{}:{SECRETS_PATH}:ro", s.display()));
    }
    for (host, inside) in rec.files.iter().filter(|(h, _)| h.exists()) {
        cmd.arg("-v").arg(format!("{}:{inside}:ro", host.display()));
    }
    cmd.args(["-w", &rec.workdir]);
    if let Some(u) = &rec.user {
        cmd.args(["-u", u]);
    }
    for (k, v) in &rec.env {
        cmd.arg("-e").arg(format!("{k}={v}"));
    }
    // Its own labels over those a snapshot inherits from the failed
    // container (a dead trackside's pid, "kept"): another trackside
    // reaping a crashed one's leftovers must not take a live shell.
    cmd.args(["--label", &format!("{LABEL_RUN}=shell")]);
    cmd.args(["--label", &format!("{LABEL_PID}={}", std::process::id())]);
    cmd.args(["--label", &format!("{LABEL_KEEP}=0")]);
    cmd.arg(image);
    cmd.args([
        "-c",
        "[ -r /run/trackside/secrets.env ] && . /run/trackside/secrets.env; exec sh",
    ]);
    cmd
}

impl Executor for DockerExecutor {
    fn name(&self) -> &'static str {
        "docker"
    }

    fn image_id<'a>(
        &'a self,
        image: &'a str,
        pull: PullPolicy,
        logins: &'a auth::JobLogins,
    ) -> BoxFuture<'a, Result<String, String>> {
        Box::pin(async move {
            let id = async {
                self.ensure_image(image, pull, logins).await?;
                let info = self
                    .docker
                    .inspect_image(image)
                    .await
                    .map_err(|e| format!("cannot inspect image `{image}`: {e}"))?;
                info.id
                    .ok_or_else(|| format!("the daemon reported no ID for image `{image}`"))
            };
            match id.await {
                Err(m) => Err(self.explain(m).await),
                ok => ok,
            }
        })
    }

    fn run_step(
        &self,
        spec: StepSpec,
        out: mpsc::Sender<OutputLine>,
        cancel: CancellationToken,
    ) -> BoxFuture<'_, StepEnd> {
        Box::pin(async move {
            match self.run(spec, out, cancel).await {
                StepEnd::SpawnFailed(m) => StepEnd::SpawnFailed(self.explain(m).await),
                end => end,
            }
        })
    }

    fn start_services(
        &self,
        req: ServicesRequest,
        out: mpsc::Sender<OutputLine>,
    ) -> BoxFuture<'_, Result<Services, String>> {
        Box::pin(async move {
            match self.start_services_impl(req, out).await {
                Err(m) => Err(self.explain(m).await),
                ok => ok,
            }
        })
    }

    fn start_job_box(&self, req: super::JobBoxRequest) -> BoxFuture<'_, Result<super::JobBox, String>> {
        Box::pin(async move {
            match self.start_job_box_impl(req).await {
                Err(m) => Err(self.explain(m).await),
                ok => ok,
            }
        })
    }

    fn stop_job_box(&self, job_box: super::JobBox, keep: bool) -> BoxFuture<'_, ()> {
        Box::pin(self.stop_job_box_impl(job_box, keep))
    }

    fn build_image(
        &self,
        req: super::ImageBuild,
        out: mpsc::Sender<OutputLine>,
    ) -> BoxFuture<'_, Result<String, String>> {
        Box::pin(async move {
            match self.build_image_impl(req, out).await {
                Err(m) => Err(self.explain(m).await),
                ok => ok,
            }
        })
    }

    fn stop_services(&self, services: Services) -> BoxFuture<'_, ()> {
        Box::pin(self.stop_services_impl(services))
    }

    fn finish_run<'a>(&'a self, run_id: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(self.finish_run_impl(run_id))
    }
}

/// `trackside-<run>-<job>-<attempt>-<step>`: unique per step, no secrets.
pub fn container_name(c: &ContainerStep) -> String {
    format!(
        "trackside-{}-{}-{}-{}",
        c.run_id,
        container_safe(&c.job),
        c.attempt,
        c.step_index
    )
}

/// `name` with what Docker's container and network names do not take
/// (anything but letters, digits, `_`, `.` and `-`) as `_`.
pub fn container_safe(name: &str) -> String {
    name.chars()
        .map(|ch| {
            if ch.is_ascii_alphanumeric() || ch == '-' || ch == '_' || ch == '.' {
                ch
            } else {
                '_'
            }
        })
        .collect()
}

fn container_body(spec: &StepSpec, c: &ContainerStep) -> ContainerCreateBody {
    let o = &c.options;
    let mut binds = match &c.entrypoint_run {
        Some(run) => run
            .mounts
            .iter()
            .map(|m| {
                format!(
                    "{}:{}{}",
                    m.host.display(),
                    m.inside,
                    if m.read_only { ":ro" } else { "" }
                )
            })
            .collect(),
        None => vec![
            format!("{}:{WORKDIR}", c.workspace.display()),
            format!("{}:{SCRIPT_PATH}:ro", c.script_file.display()),
        ],
    };
    if let Some(s) = &c.secrets_file {
        binds.push(format!("{}:{SECRETS_PATH}:ro", s.display()));
    }
    for (host, inside) in &c.files {
        binds.push(format!("{}:{inside}:ro", host.display()));
    }
    // Never mounted unless the job asks for it (`docker_socket: true`).
    if o.docker_socket {
        binds.push("/var/run/docker.sock:/var/run/docker.sock".into());
    }
    let mut labels = HashMap::from([
        (LABEL_RUN.to_string(), c.run_id.clone()),
        (LABEL_JOB.to_string(), c.job.clone()),
        (LABEL_ATTEMPT.to_string(), c.attempt.to_string()),
        (LABEL_PID.to_string(), std::process::id().to_string()),
    ]);
    if c.keep_on_failure {
        labels.insert(LABEL_KEEP.to_string(), "1".to_string());
    }
    let mut host = HostConfig {
        binds: Some(binds),
        ..Default::default()
    };
    let networking = c.network.as_ref().map(|net| {
        host.network_mode = Some(net.clone());
        bollard::models::NetworkingConfig {
            endpoints_config: Some(HashMap::from([(
                net.clone(),
                bollard::models::EndpointSettings::default(),
            )])),
        }
    });
    let mut body = ContainerCreateBody {
        image: Some(c.image.clone()),
        networking_config: networking,
        // The script is a mounted file: nothing of it shows in `docker inspect`.
        cmd: match &c.entrypoint_run {
            Some(run) => run.args.clone(),
            None => Some(spec.command_line(SCRIPT_PATH)),
        },
        entrypoint: o.entrypoint.clone(),
        env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        working_dir: Some(c.workdir.clone()),
        user: o.user.clone(),
        labels: Some(labels),
        ..Default::default()
    };
    job::apply_options(o, &mut body, &mut host);
    body.host_config = Some(host);
    body
}

/// What a job's services start has made so far. Dropped with `services`
/// still in it (the start was cancelled or timed out half way), it takes
/// them away in the executor's cleanups, which the run's end waits for:
/// each service twice, a second apart (a create still on its way when the
/// start was dropped lands after the first pass), then their network.
pub(crate) struct HalfStarted {
    pub services: Option<Services>,
    cleanups: tokio_util::task::TaskTracker,
    remove: std::sync::Arc<dyn Fn(String) -> super::BoxFuture<'static, ()> + Send + Sync>,
    remove_network: Option<Box<dyn FnOnce(String) -> super::BoxFuture<'static, ()> + Send>>,
}

impl HalfStarted {
    pub(crate) fn new(
        services: Services,
        cleanups: &tokio_util::task::TaskTracker,
        remove: impl Fn(String) -> super::BoxFuture<'static, ()> + Send + Sync + 'static,
        remove_network: impl FnOnce(String) -> super::BoxFuture<'static, ()> + Send + 'static,
    ) -> HalfStarted {
        HalfStarted {
            services: Some(services),
            cleanups: cleanups.clone(),
            remove: std::sync::Arc::new(remove),
            remove_network: Some(Box::new(remove_network)),
        }
    }
}

impl Drop for HalfStarted {
    fn drop(&mut self) {
        let (Some(s), Some(remove_network)) = (self.services.take(), self.remove_network.take()) else {
            return;
        };
        let remove = self.remove.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            self.cleanups.spawn_on(
                async move {
                    for pass in 0..2 {
                        if pass > 0 {
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                        for id in &s.containers {
                            remove(id.clone()).await;
                        }
                    }
                    if let Some(net) = s.network {
                        remove_network(net).await;
                    }
                },
                &rt,
            );
        }
    }
}

/// A service's output joins the job's log, each line marked with its name
/// (`service db | ...`), until the log ends.
pub(crate) fn forward_service_log(
    logs: impl futures_util::Stream<Item = Result<bollard::container::LogOutput, bollard::errors::Error>>
    + Unpin
    + Send
    + 'static,
    name: &str,
    out: &mpsc::Sender<OutputLine>,
) {
    let (tx, mut rx) = mpsc::channel::<OutputLine>(256);
    let prefix = format!("service {name} | ");
    let forward = out.clone();
    tokio::spawn(forward_logs(logs, tx));
    tokio::spawn(async move {
        while let Some(mut line) = rx.recv().await {
            line.text = format!("{prefix}{}", line.text);
            if forward.send(line).await.is_err() {
                break;
            }
        }
    });
}

/// Splits the daemon's log chunks into lines per stream.
pub(crate) async fn forward_logs(
    mut logs: impl futures_util::Stream<Item = Result<bollard::container::LogOutput, bollard::errors::Error>> + Unpin,
    out: mpsc::Sender<OutputLine>,
) {
    let mut lines: [super::lines::Lines; 2] = Default::default();
    let mut done = Vec::new();
    while let Some(Ok(chunk)) = logs.next().await {
        let (idx, stream, bytes) = match chunk {
            bollard::container::LogOutput::StdOut { message } => (0, Stream::Stdout, message),
            bollard::container::LogOutput::StdErr { message } => (1, Stream::Stderr, message),
            bollard::container::LogOutput::Console { message } => (0, Stream::Stdout, message),
            bollard::container::LogOutput::StdIn { .. } => continue,
        };
        lines[idx].push(&bytes, |text, partial| done.push((text, partial)));
        super::lines::send(&out, stream, std::mem::take(&mut done)).await;
    }
    for (i, stream) in [(0, Stream::Stdout), (1, Stream::Stderr)] {
        lines[i].finish(|text, partial| done.push((text, partial)));
        super::lines::send(&out, stream, std::mem::take(&mut done)).await;
    }
}

/// Prepares `trackside shell RUN JOB`: the failed container of the job when
/// `--keep-failed` kept one (its filesystem, via a snapshot), otherwise a
/// fresh container of the step's image with the job's workspace (a fresh copy
/// of the project if the workspace is gone) and environment. Returns the
/// command to run and a sentence saying what it opens.
pub async fn debug_shell(
    docker: &DockerExecutor,
    run_dir: &std::path::Path,
    job: &str,
    attempt: Option<u32>,
) -> Result<(std::process::Command, String), String> {
    let run_id = run_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Step records, newest attempt and last step first.
    let mut records: Vec<(u32, usize, StepRecord)> = std::fs::read_dir(run_dir.join("steps"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let rest = name
                .strip_prefix(&format!("{}.", crate::store::file_safe(job)))?
                .strip_suffix(".json")?;
            let (a, i) = rest.split_once('.')?;
            let text = std::fs::read_to_string(e.path()).ok()?;
            Some((a.parse().ok()?, i.parse().ok()?, serde_json::from_str(&text).ok()?))
        })
        .filter(|(a, _, _)| attempt.is_none_or(|want| *a == want))
        .collect();
    records.sort_by_key(|(a, i, _)| std::cmp::Reverse((*a, *i)));
    let Some((_, _, newest)) = records.first().cloned() else {
        return Err(format!(
            "job `{job}` of run {run_id} ran no container step{}; a shell needs a container job",
            attempt.map(|a| format!(" in attempt {a}")).unwrap_or_default()
        ));
    };
    let kept = docker.kept_container(&run_id, job).await;
    let (image, rec, what) = match kept {
        // The newest record is the failed step: later steps do not run after a failure.
        Some(id) => {
            let image = docker.snapshot(&id).await?;
            (
                image,
                newest,
                "the failed container (a snapshot of its filesystem)".to_string(),
            )
        }
        None => {
            let what = format!(
                "a fresh `{}` container (the failed one was not kept; run with --keep-failed to keep it)",
                newest.image
            );
            (newest.image.clone(), newest, what)
        }
    };
    let workspace = if rec.workspace.exists() {
        rec.workspace.clone()
    } else {
        let meta: crate::store::RunMeta = std::fs::read_to_string(run_dir.join("meta.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .ok_or_else(|| format!("run {run_id} has no readable meta.json"))?;
        let dest = run_dir
            .join("work")
            .join(format!("{}.shell", crate::store::file_safe(job)));
        // runs/<id> is two levels under the state directory.
        let state = run_dir.parent().and_then(std::path::Path::parent).unwrap_or(run_dir);
        let files = super::workspace::project_files(&meta.project_dir, state)
            .map_err(|e| format!("cannot list {}: {e}", meta.project_dir.display()))?;
        super::workspace::copy_files(&meta.project_dir, &files, &dest)
            .map_err(|e| format!("cannot copy the project: {e}"))?;
        dest
    };
    Ok((
        shell_command(&image, &rec, &workspace),
        format!("{what}, workspace {}", workspace.display()),
    ))
}
