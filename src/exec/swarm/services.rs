//! A job's services on the swarm: each a one-replica service of its own on
//! an overlay network made for the job attempt, which the job's steps join
//! (as GitLab's FF_NETWORK_PER_BUILD and GitHub have it: two jobs'
//! `postgres` never share a name). The services may land on any node; the
//! overlay network carries their traffic between nodes.
//!
//! Ready means: the task runs, and an image or `health:` HEALTHCHECK
//! reports healthy (Swarm keeps a task `starting` until it does). trackside
//! cannot open a connection into an overlay network from its own machine,
//! so a service's `port:` is waited for by each of the job's steps before
//! its script, from inside the network ([`super::ship::wrapper`]).

use std::collections::HashMap;
use std::time::Duration;

use bollard::models::{
    EndpointSpec, EndpointSpecModeEnum, NetworkAttachmentConfig, NetworkCreateRequest, ServiceSpec, TaskSpec, TaskState,
};
use bollard::query_parameters::ListTasksOptions;
use tokio::sync::mpsc;

use super::super::docker::{
    HalfStarted, LABEL_ATTEMPT, LABEL_JOB, LABEL_PID, LABEL_RUN, auth, container_safe, with_causes,
};
use super::super::{OutputLine, ServicePorts, Services, ServicesRequest};
use super::{LABEL_HOST, SwarmExecutor, Workload, swarm_name};

/// How often a starting service's task is asked for.
const POLL: Duration = Duration::from_millis(250);
/// Between SIGTERM and SIGKILL when a service is removed.
const SERVICE_GRACE: Duration = Duration::from_secs(1);

/// Why a job's services could not be made ready on the swarm.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("cannot make the job's overlay network on the swarm: {0}")]
    Network(String),
    #[error(
        "service `{service}`: {what} cannot be honoured on the swarm executor (docs/swarm.md, \"Limits\"); leave it out or run this pipeline with --executor docker"
    )]
    Unsupported { service: String, what: &'static str },
    #[error("cannot create service `{service}` from `{image}` (the swarm manager refused it): {message}")]
    Create {
        service: String,
        image: String,
        message: String,
    },
    #[error("service `{service}` ({image}) {why}")]
    NotReady {
        service: String,
        image: String,
        why: String,
    },
    #[error("the swarm manager stopped answering about service `{service}`: {message}")]
    Api { service: String, message: String },
}

impl SwarmExecutor {
    pub(super) async fn start_services_impl(
        &self,
        req: ServicesRequest,
        out: mpsc::Sender<OutputLine>,
    ) -> Result<Services, ServiceError> {
        let labels = self.labels(&req.run_id, &req.job, req.attempt);
        let network = swarm_name(&format!(
            "trackside-{}-{}-{}-net",
            req.run_id,
            crate::store::file_safe(&req.job),
            req.attempt
        ));
        // Whatever is made from here on is removed if this is dropped
        // half way (the job was cancelled or timed out meanwhile).
        let (c, cn) = (self.docker.client().clone(), self.docker.client().clone());
        let mut guard = HalfStarted::new(
            Services {
                containers: Vec::new(),
                network: Some(network.clone()),
                ports: Vec::new(),
            },
            self.docker.cleanups(),
            move |id| {
                let c = c.clone();
                Box::pin(async move {
                    let _ = c.delete_service(&id).await;
                })
            },
            move |net| Box::pin(async move { remove_network(&cn, &net).await }),
        );
        let made = self
            .docker
            .client()
            .create_network(NetworkCreateRequest {
                name: network.clone(),
                driver: Some("overlay".into()),
                labels: Some(labels.clone()),
                ..Default::default()
            })
            .await
            .map_err(|e| ServiceError::Network(with_causes(&e)));
        let result = match made {
            Ok(_) => match guard.services.as_mut() {
                Some(started) => self.start_each(&req, &network, &labels, &out, started).await,
                None => Ok(()),
            },
            Err(e) => Err(e),
        };
        let started = guard.services.take().unwrap_or_default();
        match result {
            Ok(()) => {
                let waits = req
                    .services
                    .iter()
                    .filter_map(|(svc, _)| {
                        Some(super::ship::PortWait {
                            host: svc.name.clone(),
                            port: svc.port?,
                            seconds: svc.ready_timeout.as_secs(),
                        })
                    })
                    .collect();
                let mut all = self.waits.lock().unwrap_or_else(|e| e.into_inner());
                all.insert(network, waits);
                Ok(started)
            }
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
        labels: &HashMap<String, String>,
        out: &mpsc::Sender<OutputLine>,
        started: &mut Services,
    ) -> Result<(), ServiceError> {
        let client = self.docker.client();
        for (svc, env) in &req.services {
            let o = &svc.options;
            if let Some(what) = super::unsupported(o, Workload::Service) {
                return Err(ServiceError::Unsupported {
                    service: svc.name.clone(),
                    what,
                });
            }
            if !o.extras.ports.is_empty() {
                super::note(
                    out,
                    format!(
                        "trackside: service `{}`: its `ports:` are not published on the swarm; the job's steps reach it as `{}` on the job's network",
                        svc.name, svc.name
                    ),
                )
                .await;
            }
            let name = swarm_name(&format!(
                "trackside-{}-{}-{}-svc-{}",
                req.run_id,
                crate::store::file_safe(&req.job),
                req.attempt,
                container_safe(&svc.name)
            ));
            // On the nodes the job may run on, unless it says where itself.
            let mut placed = o.clone();
            if placed.node_labels.is_empty() {
                placed.node_labels = req.node_labels.clone();
            }
            let mut container = super::container_spec(o, Workload::Service);
            container.image = Some(svc.image.clone());
            container.labels = Some(labels.clone());
            // As the Docker executor: the service's entrypoint and command replace the image's.
            container.command = svc.entrypoint.clone();
            container.args = svc.command.clone();
            // Thrown away with the job, as the Docker executor's forced removal does.
            container.stop_grace_period = Some(SERVICE_GRACE.as_nanos() as i64);
            container
                .env
                .get_or_insert_with(Vec::new)
                .splice(0..0, env.iter().map(|(k, v)| format!("{k}={v}")));
            let aliases: Vec<String> = std::iter::once(svc.name.clone())
                .chain(svc.aliases.iter().cloned())
                .chain(o.extras.network_aliases.iter().cloned())
                .collect();
            let spec = ServiceSpec {
                name: Some(name.clone()),
                labels: Some(labels.clone()),
                task_template: Some(TaskSpec {
                    container_spec: Some(container),
                    networks: Some(vec![NetworkAttachmentConfig {
                        target: Some(network.to_string()),
                        aliases: Some(aliases),
                        driver_opts: None,
                    }]),
                    ..super::one_shot_task(&placed)
                }),
                mode: Some(super::one_replica()),
                // Its name resolves to its task's own address: one task needs
                // no virtual IP, which takes IPVS in every node's kernel.
                endpoint_spec: Some(EndpointSpec {
                    mode: Some(EndpointSpecModeEnum::DNSRR),
                    ports: None,
                }),
                ..Default::default()
            };
            let own = o.extras.credentials.clone().map(|c| auth::JobLogins {
                credentials: Some((c.0, c.1)),
                auth_config: None,
            });
            let login = auth::login_for(
                &svc.image,
                own.as_ref().unwrap_or(&req.logins),
                self.docker.login_sources(),
            )
            .await
            .login;
            // By name: removed even if the manager made it and its answer was lost.
            started.containers.push(name.clone());
            client
                .create_service(spec, login.as_ref().map(auth::Login::to_docker))
                .await
                .map_err(|e| ServiceError::Create {
                    service: svc.name.clone(),
                    image: svc.image.clone(),
                    message: with_causes(&e),
                })?;

            let (task, node) = self.wait_running(&name, svc).await?;
            if let Some(n) = node
                && let Ok(n) = client.inspect_node(&n).await
            {
                let v = super::place::NodeView::of(&n);
                super::note(
                    out,
                    format!("trackside: service `{}` runs on swarm node {}", svc.name, v.describe()),
                )
                .await;
            }
            // Its output joins the job's log, marked with the service's name.
            super::super::docker::forward_service_log(Box::pin(super::task_log(client, &task)), &svc.name, out);
            started.ports.push(ServicePorts {
                service: svc.name.clone(),
                container: name,
                ports: Vec::new(),
            });
        }
        Ok(())
    }

    /// Waits until the service's task runs (and is healthy, if it has a
    /// health check): its task's id and node's id; [`ServiceError::NotReady`]
    /// when it ended or did not get there within its `ready_timeout`.
    async fn wait_running(
        &self,
        service: &str,
        svc: &crate::pipeline::model::Service,
    ) -> Result<(String, Option<String>), ServiceError> {
        let not_ready = |why: String| ServiceError::NotReady {
            service: svc.name.clone(),
            image: svc.image.clone(),
            why,
        };
        let (shown, timeout) = (&svc.name, svc.ready_timeout);
        let client = self.docker.client();
        let filters = HashMap::from([("service".to_string(), vec![service.to_string()])]);
        let until = tokio::time::Instant::now() + timeout;
        let mut last = "it was not scheduled".to_string();
        loop {
            let tasks = client
                .list_tasks(Some(ListTasksOptions {
                    filters: Some(filters.clone()),
                }))
                .await
                .map_err(|e| ServiceError::Api {
                    service: shown.to_string(),
                    message: with_causes(&e),
                })?;
            if let Some(task) = tasks
                .into_iter()
                .max_by_key(|t| t.created_at.clone().map(|d| d.to_string()))
            {
                let status = task.status.clone().unwrap_or_default();
                let state = status.state.unwrap_or(TaskState::NEW);
                let err = status.err.clone().filter(|e| !e.is_empty());
                match state {
                    TaskState::RUNNING => {
                        if let Some(id) = task.id {
                            return Ok((id, task.node_id));
                        }
                    }
                    TaskState::COMPLETE | TaskState::FAILED | TaskState::REJECTED | TaskState::SHUTDOWN => {
                        let code = status.container_status.and_then(|c| c.exit_code);
                        let why = match (err, code) {
                            (Some(e), _) => e,
                            (None, Some(c)) => format!("exited with code {c}"),
                            (None, None) => state.to_string(),
                        };
                        return Err(not_ready(format!("ended before it was ready: {why}")));
                    }
                    TaskState::STARTING => last = "its HEALTHCHECK".into(),
                    _ => {
                        last = match err {
                            Some(e) => format!("a node to take it ({e})"),
                            None => "its task to start".into(),
                        }
                    }
                }
            }
            if tokio::time::Instant::now() >= until {
                return Err(not_ready(format!(
                    "was not ready within {}s (waited for {last})",
                    timeout.as_secs()
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Removes the services, then their network (refused while a task on
    /// it is still stopping: tried again for a while).
    pub(super) async fn stop_services_impl(&self, services: Services) {
        let client = self.docker.client();
        for id in &services.containers {
            let _ = client.delete_service(id).await;
        }
        if let Some(net) = services.network {
            self.waits.lock().unwrap_or_else(|e| e.into_inner()).remove(&net);
            self.remove_network(&net).await;
        }
    }

    /// Removes a network once nothing uses it, trying for up to 30 s.
    pub(super) async fn remove_network(&self, id: &str) {
        remove_network(self.docker.client(), id).await
    }

    /// trackside's labels on what it makes for a job attempt.
    pub(super) fn labels(&self, run_id: &str, job: &str, attempt: u32) -> HashMap<String, String> {
        HashMap::from([
            (LABEL_RUN.to_string(), run_id.to_string()),
            (LABEL_JOB.to_string(), job.to_string()),
            (LABEL_ATTEMPT.to_string(), attempt.to_string()),
            (LABEL_PID.to_string(), std::process::id().to_string()),
            (LABEL_HOST.to_string(), self.host.clone()),
        ])
    }
}

/// Removes a network once nothing uses it, trying for up to 30 s.
async fn remove_network(client: &bollard::Docker, id: &str) {
    let until = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match client.remove_network(id).await {
            Ok(()) | Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => return,
            Err(e) if tokio::time::Instant::now() >= until => {
                tracing::warn!(network = %id, why = %with_causes(&e), "cannot remove a swarm network");
                return;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}
