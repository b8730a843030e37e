//! The Swarm executor: each container step runs as a one-shot Swarm
//! service (one replica, restart condition `none`: trackside owns retries) on a cluster whose manager is the only thing
//! trackside reaches. Design and limits: docs/swarm.md.
//!
//! A step's life: its workspace travels in an image built on the manager
//! and pushed to the cluster's registry ([`ship`]); its script and wrapper
//! are Swarm configs, its secret variables and file variables Swarm
//! secrets (held encrypted by the managers, mounted in memory, never in an
//! image); the service carries trackside's labels, its job's placement
//! constraints ([`place`]) and its resources as reservations and limits.
//! trackside then watches the task: Swarm's reason when no node takes it,
//! the node it runs on, its log, the node's health (a node that goes down
//! loses the step, classed `infra`, so a retry runs it elsewhere), its
//! exit code. The step's files come back through its log; everything made
//! for the step is removed when it ends, whatever the outcome.

pub mod place;
pub mod services;
pub mod ship;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bollard::models::NetworkAttachmentConfig;
use bollard::models::{
    ConfigSpec, Limit, ResourceObject, SecretSpec, ServiceSpec, ServiceSpecMode, ServiceSpecModeReplicated, TaskSpec,
    TaskSpecContainerSpec, TaskSpecContainerSpecConfigs, TaskSpecContainerSpecFile, TaskSpecContainerSpecFile1,
    TaskSpecContainerSpecSecrets, TaskSpecPlacement, TaskSpecResources, TaskSpecRestartPolicy,
    TaskSpecRestartPolicyConditionEnum, TaskState,
};
use bollard::query_parameters::{ListNodesOptions, ListTasksOptions, LogsOptions, PushImageOptions};
use futures_util::StreamExt;
use tokio::sync::{OnceCell, mpsc};
use tokio_util::sync::CancellationToken;

use super::docker::{DockerExecutor, LABEL_PID, LABEL_RUN, auth, owner_alive};
use super::{BoxFuture, ContainerStep, Executor, OutputLine, StepEnd, StepSpec, Stream};
use place::NodeView;

/// On everything the Swarm executor creates: which machine's trackside
/// owns it (a pid means something only there).
pub const LABEL_HOST: &str = "dev.trackside.host";
/// On a step's service: its index in the job, the nonce framing what its
/// wrapper sends back, and the digest of what it runs ([`inputs_digest`]):
/// what a resumed run needs to take the step up.
const LABEL_STEP: &str = "dev.trackside.step";
const LABEL_NONCE: &str = "dev.trackside.nonce";
const LABEL_INPUTS: &str = "dev.trackside.inputs";

/// The most a Swarm secret holds (Docker's limit).
const MAX_SECRET: usize = 500 << 10;
/// How often the task's state is asked for: often at first (a short step
/// ends soon), then less (a hundred steps must not flood the manager).
const POLL: Duration = Duration::from_millis(250);
const POLL_LATER: Duration = Duration::from_secs(1);
/// How long the first, quicker polling lasts.
const POLL_QUICK_FOR: Duration = Duration::from_secs(10);
/// How often the node a task runs on is checked.
const NODE_CHECK: Duration = Duration::from_secs(1);
/// How long the log may lag behind the task's end before what it carries
/// (the step's last lines, its files) is given up.
const LOG_LAG: Duration = Duration::from_secs(20);

/// What `--executor swarm` runs with (flags, else `swarm:` of config.yml).
#[derive(Debug, Clone)]
pub struct Settings {
    /// The registry the manager pushes workspace images to and every node
    /// pulls from (`host:port`).
    pub registry: String,
    /// How long a task may wait for a node when no node could ever take it
    /// before the job is reported unschedulable.
    pub pending_limit: Duration,
    /// The most a workspace may hold to be shipped, in bytes.
    pub max_ship: u64,
    /// The most a step may send back, in bytes.
    pub max_return: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            registry: String::new(),
            pending_limit: Duration::from_secs(30),
            max_ship: 512 << 20,
            max_return: 512 << 20,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SwarmError {
    #[error(
        "cannot reach the swarm manager at {address}: {message}; check that a manager's daemon listens there, and the address: --swarm-manager, else `swarm: {{manager}}` of config.yml, else DOCKER_HOST (with TLS: DOCKER_TLS_VERIFY and DOCKER_CERT_PATH; docs/swarm.md)"
    )]
    Unreachable { address: String, message: String },
    #[error(
        "the Docker daemon at {address} is not a manager of an active swarm (its swarm state: {state}); point DOCKER_HOST or --swarm-manager at a manager (docs/swarm.md)"
    )]
    NotManager { address: String, state: String },
    #[error(
        "the swarm executor needs a registry every node can pull from: give --swarm-registry HOST:PORT or `swarm: {{registry: ...}}` in config.yml (docs/swarm.md)"
    )]
    NoRegistry,
    #[error("cannot ask the swarm manager at {address}: {message}")]
    Api { address: String, message: String },
}

/// A workspace image this process built and pushed (or failed to).
type Built = Arc<OnceCell<()>>;

/// Why a step could not be started on the swarm (its message is the
/// step's `SpawnFailed`, or for [`StepError::Ship`]'s budgets its class).
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// The job's image on the manager, as the Docker executor tells it.
    #[error("{0}")]
    Image(String),
    #[error(transparent)]
    Ship(#[from] ship::ShipError),
    #[error("packing the workspace failed: {0}")]
    Packing(String),
    #[error("building the workspace image on the manager failed: {0}")]
    Build(String),
    #[error(
        "pushing the workspace image to the registry {registry} failed: {message}; every node must reach it, and the manager must be allowed to push (docs/swarm.md)"
    )]
    Push { registry: String, message: String },
    #[error("cannot read {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} is over {limit_kib} KiB, the most a Swarm secret holds; the swarm executor cannot hand it to the step"
    )]
    SecretTooLarge { path: std::path::PathBuf, limit_kib: usize },
    #[error("cannot make {what} for the step: {message}")]
    Create { what: &'static str, message: String },
}

/// Runs container steps as Swarm services.
pub struct SwarmExecutor {
    docker: DockerExecutor,
    address: String,
    settings: Settings,
    /// Workspace images built and pushed by this process, by tag.
    images: std::sync::Mutex<HashMap<String, Built>>,
    host: String,
    /// The ports of services the steps on a network (a job's) wait for.
    waits: std::sync::Mutex<HashMap<String, Vec<ship::PortWait>>>,
    /// Steps a crashed run left on the swarm that its resumed run may take
    /// up, by (job, step index).
    adoptable: std::sync::Mutex<HashMap<(String, usize), Adoptable>>,
}

/// A step's service a dead trackside left running (or ended, unread).
#[derive(Debug, Clone)]
struct Adoptable {
    id: String,
    name: String,
    nonce: String,
    inputs: String,
    attempt: String,
}

/// One of trackside's services as listed.
struct Listed {
    id: String,
    name: String,
    labels: HashMap<String, String>,
    /// It is attached to a network (its job has services).
    networked: bool,
}

impl SwarmExecutor {
    /// Connects to the manager at `address` and checks that it is one.
    /// (The caller checks that `settings` name a registry before a run.)
    pub async fn connect(address: &str, settings: Settings) -> Result<SwarmExecutor, SwarmError> {
        let docker = DockerExecutor::connect_to(address).await.map_err(|e| match e {
            super::docker::DockerError::Unreachable { address, message, .. } => {
                SwarmError::Unreachable { address, message }
            }
        })?;
        let info = docker.client().info().await.map_err(|e| SwarmError::Api {
            address: address.to_string(),
            message: super::docker::with_causes(&e),
        })?;
        let swarm = info.swarm.unwrap_or_default();
        let state = swarm
            .local_node_state
            .map(|s| s.to_string())
            .unwrap_or_else(|| "unknown".into());
        if state != "active" || swarm.control_available != Some(true) {
            let state = if state == "active" {
                "active, but a worker".to_string()
            } else {
                state
            };
            return Err(SwarmError::NotManager {
                address: address.to_string(),
                state,
            });
        }
        Ok(SwarmExecutor {
            docker,
            address: address.to_string(),
            settings,
            images: std::sync::Mutex::new(HashMap::new()),
            host: host_id(),
            waits: std::sync::Mutex::new(HashMap::new()),
            adoptable: std::sync::Mutex::new(HashMap::new()),
        })
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    /// The swarm's nodes.
    pub async fn nodes(&self) -> Result<Vec<NodeView>, SwarmError> {
        let nodes = self
            .docker
            .client()
            .list_nodes(None::<ListNodesOptions>)
            .await
            .map_err(|e| SwarmError::Api {
                address: self.address.clone(),
                message: format!("cannot list the swarm's nodes: {}", super::docker::with_causes(&e)),
            })?;
        Ok(nodes.iter().map(NodeView::of).collect())
    }

    /// The swarm's nodes with trackside's tasks on each, by address.
    pub async fn cluster_nodes(&self) -> Result<Vec<crate::protocol::view::ClusterNode>, SwarmError> {
        let mut nodes = self.nodes().await?;
        nodes.sort_by(|a, b| (&a.addr, &a.hostname, &a.id).cmp(&(&b.addr, &b.hostname, &b.id)));
        let load = self.load().await;
        Ok(nodes
            .into_iter()
            .map(|n| crate::protocol::view::ClusterNode {
                trackside_tasks: load.get(&n.id).copied().unwrap_or(0),
                active: n.active,
                cpus: n.nano_cpus as f64 / 1e9,
                memory: n.memory.max(0) as u64,
                id: n.id,
                addr: n.addr,
                hostname: n.hostname,
                state: n.state,
                availability: n.availability,
                manager: n.manager,
                labels: n.labels,
            })
            .collect())
    }

    /// Running tasks of trackside's services, by node id.
    pub async fn load(&self) -> HashMap<String, usize> {
        // Running, and meant to: a removed service's task stops within its grace.
        let filters = HashMap::from([("desired-state".to_string(), vec!["running".to_string()])]);
        let tasks = self
            .docker
            .client()
            .list_tasks(Some(ListTasksOptions { filters: Some(filters) }))
            .await
            .unwrap_or_default();
        let mut load = HashMap::new();
        for t in tasks {
            let ours = t
                .spec
                .as_ref()
                .and_then(|s| s.container_spec.as_ref())
                .and_then(|c| c.labels.as_ref())
                .is_some_and(|l| l.contains_key(LABEL_RUN))
                && t.status.as_ref().and_then(|s| s.state) == Some(TaskState::RUNNING)
                && t.desired_state == Some(TaskState::RUNNING);
            if let (true, Some(node)) = (ours, t.node_id) {
                *load.entry(node).or_insert(0) += 1;
            }
        }
        load
    }

    /// Removes services (with their configs and secrets) that a crashed
    /// trackside of this machine left on the swarm. Returns how many.
    pub async fn reap_orphans(&self) -> usize {
        let mut removed = 0;
        let kept: Vec<String> = {
            let a = self.adoptable.lock().unwrap_or_else(|e| e.into_inner());
            a.values().map(|a| a.id.clone()).collect()
        };
        for Listed { labels, id, .. } in self
            .labelled(vec![LABEL_PID.to_string(), format!("{LABEL_HOST}={}", self.host)])
            .await
        {
            if owner_alive(Some(&labels)) || kept.contains(&id) {
                continue;
            }
            if self.docker.client().delete_service(&id).await.is_ok() {
                tracing::info!(service = %id, "removed a swarm service left by a crashed trackside");
                removed += 1;
            }
        }
        self.remove_leftover_objects(vec![LABEL_PID.to_string(), format!("{LABEL_HOST}={}", self.host)], true)
            .await;
        removed
    }

    /// For `trackside resume`: keeps, rather than reaps, the step services
    /// the dead run left for the last attempt of each interrupted job,
    /// while their task runs or has ended unread, so that the resumed
    /// attempt takes each up when it comes to that step with the same
    /// inputs ([`SwarmExecutor::run`]). Returns how many. A step of a job
    /// with services is not kept: they are gone with the dead run.
    pub async fn keep_for_adoption(
        &self,
        run_id: &str,
        interrupted: &[String],
        attempts: &std::collections::BTreeMap<String, u32>,
    ) -> usize {
        let mut kept = HashMap::new();
        let ours = vec![format!("{LABEL_RUN}={run_id}"), format!("{LABEL_HOST}={}", self.host)];
        for s in self.labelled(ours).await {
            let get = |k: &str| s.labels.get(k).cloned();
            let (Some(job), Some(attempt), Some(step), Some(nonce), Some(inputs)) = (
                get(super::docker::LABEL_JOB),
                get(super::docker::LABEL_ATTEMPT),
                get(LABEL_STEP).and_then(|n| n.parse::<usize>().ok()),
                // Framing the step's own output can never match by chance.
                get(LABEL_NONCE).filter(|n| {
                    n.strip_prefix("@@trackside-")
                        .is_some_and(|h| h.len() == 32 && h.bytes().all(|b| b.is_ascii_hexdigit()))
                }),
                get(LABEL_INPUTS),
            ) else {
                continue;
            };
            let last = attempts.get(&job).map(u32::to_string);
            if owner_alive(Some(&s.labels))
                || s.networked
                || !interrupted.contains(&job)
                || last.as_deref() != Some(attempt.as_str())
                || !self.task_usable(&s.id).await
                || !self.own(&s.id).await
            {
                continue;
            }
            kept.insert(
                (job, step),
                Adoptable {
                    id: s.id,
                    name: s.name,
                    nonce,
                    inputs,
                    attempt,
                },
            );
        }
        let n = kept.len();
        *self.adoptable.lock().unwrap_or_else(|e| e.into_inner()) = kept;
        n
    }

    /// Makes a service this process's (its pid label): another trackside
    /// of this machine starting meanwhile must not reap a kept step. A
    /// change of the service's own labels leaves its task running.
    async fn own(&self, service: &str) -> bool {
        let client = self.docker.client();
        let Ok(s) = client
            .inspect_service(service, None::<bollard::query_parameters::InspectServiceOptions>)
            .await
        else {
            return false;
        };
        let (Some(mut spec), Some(version)) = (s.spec, s.version.and_then(|v| v.index)) else {
            return false;
        };
        spec.labels
            .get_or_insert_with(HashMap::new)
            .insert(LABEL_PID.to_string(), std::process::id().to_string());
        let Ok(version) = i32::try_from(version) else {
            return false;
        };
        client
            .update_service(
                service,
                spec,
                bollard::query_parameters::UpdateServiceOptions {
                    version,
                    ..Default::default()
                },
                None,
            )
            .await
            .is_ok()
    }

    /// The service's task runs, or has ended (its log is read when the
    /// step is taken up; a log gone by then makes the step lost).
    async fn task_usable(&self, service: &str) -> bool {
        let filters = HashMap::from([("service".to_string(), vec![service.to_string()])]);
        let tasks = self
            .docker
            .client()
            .list_tasks(Some(ListTasksOptions { filters: Some(filters) }))
            .await
            .unwrap_or_default();
        tasks
            .into_iter()
            .max_by_key(|t| t.created_at.clone().map(|d| d.to_string()))
            .and_then(|t| t.status.and_then(|s| s.state))
            .is_some_and(|s| {
                matches!(
                    s,
                    TaskState::ASSIGNED
                        | TaskState::ACCEPTED
                        | TaskState::PREPARING
                        | TaskState::READY
                        | TaskState::STARTING
                        | TaskState::RUNNING
                        | TaskState::COMPLETE
                        | TaskState::FAILED
                )
            })
    }

    /// trackside's services carrying all of `labels`.
    async fn labelled(&self, labels: Vec<String>) -> Vec<Listed> {
        let filters = HashMap::from([("label".to_string(), labels)]);
        let services = self
            .docker
            .client()
            .list_services(Some(bollard::query_parameters::ListServicesOptions {
                filters: Some(filters),
                status: None,
            }))
            .await
            .unwrap_or_default();
        services
            .into_iter()
            .filter_map(|s| {
                let spec = s.spec.as_ref()?;
                Some(Listed {
                    labels: spec.labels.clone().unwrap_or_default(),
                    name: spec.name.clone().unwrap_or_default(),
                    networked: spec
                        .task_template
                        .as_ref()
                        .and_then(|t| t.networks.as_ref())
                        .is_some_and(|n| !n.is_empty()),
                    id: s.id?,
                })
            })
            .collect()
    }

    /// Configs, secrets and networks carrying all of `labels`; with
    /// `dead_only`, only those whose owner pid is dead. (Services first:
    /// what a service uses cannot be removed before it.)
    async fn remove_leftover_objects(&self, labels: Vec<String>, dead_only: bool) {
        let filters = HashMap::from([("label".to_string(), labels)]);
        let dead = |l: &Option<HashMap<String, String>>| !dead_only || !owner_alive(l.as_ref());
        let client = self.docker.client();
        let networks = client
            .list_networks(Some(bollard::query_parameters::ListNetworksOptions {
                filters: Some(filters.clone()),
            }))
            .await
            .unwrap_or_default();
        for n in networks {
            if dead(&n.labels.map(|l| l.into_iter().collect()))
                && let Some(id) = n.id
            {
                self.remove_network(&id).await;
            }
        }
        let (configs, secrets) = self.configs_and_secrets(filters).await;
        for (id, labels) in configs {
            if dead(&labels) {
                let _ = client.delete_config(&id).await;
            }
        }
        for (id, labels) in secrets {
            if dead(&labels) {
                let _ = client.delete_secret(&id).await;
            }
        }
    }

    /// The configs and secrets these filters select, as (id, labels).
    async fn configs_and_secrets(
        &self,
        filters: HashMap<String, Vec<String>>,
    ) -> (
        Vec<(String, Option<HashMap<String, String>>)>,
        Vec<(String, Option<HashMap<String, String>>)>,
    ) {
        let client = self.docker.client();
        let configs = client
            .list_configs(Some(bollard::query_parameters::ListConfigsOptions {
                filters: Some(filters.clone()),
            }))
            .await
            .unwrap_or_default()
            .into_iter()
            .filter_map(|c| Some((c.id?, c.spec.and_then(|s| s.labels))))
            .collect();
        let secrets = client
            .list_secrets(Some(bollard::query_parameters::ListSecretsOptions {
                filters: Some(filters),
            }))
            .await
            .unwrap_or_default()
            .into_iter()
            .filter_map(|s| Some((s.id?, s.spec.and_then(|s| s.labels))))
            .collect();
        (configs, secrets)
    }

    /// Removes every service, config and secret of the run.
    async fn finish_run_impl(&self, run_id: &str) {
        self.docker.cleanups_done().await;
        // This machine's run: another machine's run of the same id is not ours.
        let ours = vec![format!("{LABEL_RUN}={run_id}"), format!("{LABEL_HOST}={}", self.host)];
        for Listed { id, .. } in self.labelled(ours.clone()).await {
            let _ = self.docker.client().delete_service(&id).await;
        }
        self.remove_leftover_objects(ours, false).await;
    }

    /// The image holding the step's workspace, built on the manager and
    /// pushed to the registry unless this process did so already.
    async fn workspace_image(
        &self,
        c: &ContainerStep,
        out: &mpsc::Sender<OutputLine>,
    ) -> Result<(String, Vec<String>), StepError> {
        // The job's image on the manager first: the build starts from it.
        self.docker
            .ensure_image(&c.image, c.options.pull, &c.logins)
            .await
            .map_err(StepError::Image)?;
        let (image, user, ws, budget) = (
            c.image.clone(),
            c.options.user.clone(),
            c.workspace.clone(),
            self.settings.max_ship,
        );
        let packed = tokio::task::spawn_blocking(move || ship::pack(&image, user.as_deref(), &ws, budget))
            .await
            .map_err(|e| StepError::Packing(e.to_string()))??;
        let ship::Packed {
            context,
            digest,
            paths,
            bytes,
        } = packed;
        let repo = format!("{}/trackside-workspace", self.settings.registry.trim_end_matches('/'));
        let tag: String = digest.chars().take(32).collect();
        let full = format!("{repo}:{tag}");
        let cell = {
            let mut images = self.images.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            images.entry(full.clone()).or_default().clone()
        };
        // A failure is not kept: a retry builds and pushes again.
        let files = paths.len();
        cell.get_or_try_init(|| async {
            let size = super::preflight::gib(bytes);
            note(
                out,
                format!("trackside: shipping the workspace ({files} files, {size}) as {full}"),
            )
            .await;
            self.build_and_push(&repo, &tag, context).await
        })
        .await?;
        Ok((full, paths))
    }

    async fn build_and_push(&self, repo: &str, tag: &str, context: Vec<u8>) -> Result<(), StepError> {
        let full = format!("{repo}:{tag}");
        let client = self.docker.client();
        self.docker
            .build_context(&full, "Dockerfile", context, None)
            .await
            .map_err(|e| StepError::Build(e.0))?;
        let login = auth::login_for(&full, &auth::JobLogins::default(), self.docker.login_sources())
            .await
            .login;
        let mut push = client.push_image(
            repo,
            Some(PushImageOptions {
                tag: Some(tag.to_string()),
                ..Default::default()
            }),
            login.as_ref().map(auth::Login::to_docker),
        );
        while let Some(item) = push.next().await {
            if let Err(e) = item {
                return Err(StepError::Push {
                    registry: self.settings.registry.clone(),
                    message: super::docker::with_causes(&e),
                });
            }
        }
        Ok(())
    }

    async fn run(&self, spec: StepSpec, out: mpsc::Sender<OutputLine>, cancel: CancellationToken) -> StepEnd {
        let Some(c) = spec.container.as_ref() else {
            return StepEnd::SpawnFailed("internal: a container step without container settings".into());
        };
        // What the swarm can never run as written: not retried.
        if c.exec_in.is_some() || c.entrypoint_run.is_some() {
            return StepEnd::Unschedulable(
                "job containers and Docker actions do not run on the swarm executor yet (docs/swarm.md, \"Limits\"); run this pipeline with --executor docker".into(),
            );
        }
        if let Some(what) = unsupported(&c.options, Workload::Step) {
            return StepEnd::Unschedulable(format!(
                "{what} cannot be honoured on the swarm executor (docs/swarm.md, \"Limits\"); leave it out or run this pipeline with --executor docker"
            ));
        }
        // Shipping counts against the step's time like the rest of it.
        let deadline = async {
            match spec.deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        let (image, shipped) = tokio::select! {
            r = self.workspace_image(c, &out) => match r {
                Ok(x) => x,
                // A workspace over `max_ship` stays over it: not retried.
                Err(e @ StepError::Ship(ship::ShipError::TooBig { .. })) => return StepEnd::Unschedulable(e.to_string()),
                Err(e) => return StepEnd::SpawnFailed(e.to_string()),
            },
            _ = cancel.cancelled() => return StepEnd::Cancelled,
            _ = deadline => return StepEnd::TimedOut,
        };
        let script = match std::fs::read(&c.script_file) {
            Ok(s) => s,
            Err(e) => return StepEnd::SpawnFailed(format!("cannot read {}: {e}", c.script_file.display())),
        };
        let inputs = inputs_digest(
            &image,
            &spec.command_line(super::docker::SCRIPT_PATH),
            &script,
            &spec.env,
            c,
        );
        // A resumed run takes up the step its dead run left on the swarm.
        if let Some(end) = self.adopt(&spec, c, &inputs, &shipped, &out, &cancel).await {
            return end;
        }
        let name = service_name(c);
        let nonce = format!("@@trackside-{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
        let mut made = Made::default();
        let end = match self.launch(&spec, c, &image, &name, &nonce, &inputs, &mut made).await {
            Err(e) => StepEnd::SpawnFailed(e.to_string()),
            Ok(()) => self.watch(&spec, c, &name, &nonce, &shipped, &out, &cancel).await,
        };
        if let Some(left) = self.remove(made).await {
            note(&out, format!("trackside: {left}")).await;
        }
        end
    }

    /// Takes up the step's service a dead trackside left, kept by
    /// [`SwarmExecutor::keep_for_adoption`], when it runs what this step
    /// would (the same inputs digest): follows it to its end as if it had
    /// started it. `None`: there is none, or it ran something else (then
    /// it is removed, and the step starts anew).
    async fn adopt(
        &self,
        spec: &StepSpec,
        c: &ContainerStep,
        inputs: &str,
        shipped: &[String],
        out: &mpsc::Sender<OutputLine>,
        cancel: &CancellationToken,
    ) -> Option<StepEnd> {
        let a = {
            let mut all = self.adoptable.lock().unwrap_or_else(|e| e.into_inner());
            all.remove(&(c.job.clone(), c.step_index))?
        };
        let client = self.docker.client();
        if a.inputs != inputs {
            note(
                out,
                format!(
                    "trackside: the step the interrupted run left on the swarm ({}) ran other inputs (the workspace, image or script changed since): it is removed, and the step starts again",
                    a.name
                ),
            )
            .await;
            let _ = client.delete_service(&a.id).await;
            return None;
        }
        note(
            out,
            format!(
                "trackside: taking up the step the interrupted run (attempt {}) left on the swarm: service {}",
                a.attempt, a.name
            ),
        )
        .await;
        // Its configs and secrets go with it.
        let old = vec![
            format!("{LABEL_RUN}={}", c.run_id),
            format!("{}={}", super::docker::LABEL_JOB, c.job),
            format!("{}={}", super::docker::LABEL_ATTEMPT, a.attempt),
            format!("{LABEL_HOST}={}", self.host),
        ];
        let end = self.watch(spec, c, &a.name, &a.nonce, shipped, out, cancel).await;
        let (configs, secrets) = self
            .configs_and_secrets(HashMap::from([("label".to_string(), old)]))
            .await;
        let made = Made {
            service: Some(a.id),
            configs: configs.into_iter().map(|(id, _)| id).collect(),
            secrets: secrets.into_iter().map(|(id, _)| id).collect(),
        };
        if let Some(left) = self.remove(made).await {
            note(out, format!("trackside: {left}")).await;
        }
        Some(end)
    }

    /// Creates the step's configs, secrets and service.
    #[allow(clippy::too_many_arguments)]
    async fn launch(
        &self,
        spec: &StepSpec,
        c: &ContainerStep,
        image: &str,
        name: &str,
        nonce: &str,
        inputs: &str,
        made: &mut Made,
    ) -> Result<(), StepError> {
        let labels = self.labels(&c.run_id, &c.job, c.attempt);
        // On the service only: what a resumed run needs to take the step up.
        let mut service_labels = labels.clone();
        service_labels.extend([
            (LABEL_STEP.to_string(), c.step_index.to_string()),
            (LABEL_NONCE.to_string(), nonce.to_string()),
            (LABEL_INPUTS.to_string(), inputs.to_string()),
        ]);
        let client = self.docker.client();
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|source| StepError::Read {
                path: p.to_path_buf(),
                source,
            })
        };
        let b64 = |data: &[u8]| base64::engine::general_purpose::STANDARD.encode(data);
        let command = spec.command_line(super::docker::SCRIPT_PATH);
        // Names of its own (Swarm takes at most 64 characters), from the nonce.
        let short = format!("trackside-{}", &nonce.trim_start_matches("@@trackside-")[..16]);
        // The script may hold a secret a `${{ }}` put in it, the secret
        // variables and file variables are secrets: all go as Swarm secrets.
        let mut files: Vec<(String, std::path::PathBuf)> =
            vec![(super::docker::SCRIPT_PATH.to_string(), c.script_file.clone())];
        if let Some(s) = &c.secrets_file {
            files.push((super::docker::SECRETS_PATH.to_string(), s.clone()));
        }
        for (host, inside) in &c.files {
            files.push((inside.clone(), host.clone()));
        }
        let mut secrets = Vec::new();
        let mut empty = Vec::new();
        for (i, (target, host)) in files.iter().enumerate() {
            let data = read(host)?;
            if data.is_empty() {
                empty.push(target.clone()); // Swarm takes no empty secret: the wrapper makes it
                continue;
            }
            if data.len() > MAX_SECRET {
                return Err(StepError::SecretTooLarge {
                    path: host.clone(),
                    limit_kib: MAX_SECRET >> 10,
                });
            }
            let sname = format!("{short}-{i}");
            let created = client
                .create_secret(SecretSpec {
                    name: Some(sname.clone()),
                    labels: Some(labels.clone()),
                    data: Some(b64(&data)),
                    ..Default::default()
                })
                .await
                .map_err(|e| StepError::Create {
                    what: "a swarm secret",
                    message: super::docker::with_causes(&e),
                })?;
            made.secrets.push(created.id.clone());
            secrets.push(TaskSpecContainerSpecSecrets {
                file: Some(TaskSpecContainerSpecFile {
                    name: Some(target.clone()),
                    uid: Some("0".into()),
                    gid: Some("0".into()),
                    mode: Some(0o444),
                }),
                secret_id: Some(created.id),
                secret_name: Some(sname),
            });
        }
        // The wrapper holds nothing secret: a config.
        let cname = format!("{short}-wrapper");
        let created = client
            .create_config(ConfigSpec {
                name: Some(cname.clone()),
                labels: Some(labels.clone()),
                data: Some(b64(ship::wrapper(
                    &command,
                    nonce,
                    &empty,
                    &self.waits_on(c.network.as_deref()),
                )
                .as_bytes())),
                ..Default::default()
            })
            .await
            .map_err(|e| StepError::Create {
                what: "the wrapper's swarm config",
                message: super::docker::with_causes(&e),
            })?;
        made.configs.push(created.id.clone());
        let configs = vec![TaskSpecContainerSpecConfigs {
            file: Some(TaskSpecContainerSpecFile1 {
                name: Some(ship::WRAPPER_PATH.to_string()),
                uid: Some("0".into()),
                gid: Some("0".into()),
                mode: Some(0o444),
            }),
            config_id: Some(created.id),
            config_name: Some(cname),
            ..Default::default()
        }];
        let o = &c.options;
        let run_wrapper = vec!["sh".to_string(), ship::WRAPPER_PATH.to_string()];
        // As the Docker executor: the image's entrypoint unless the job
        // sets one; an empty one runs the wrapper itself.
        let (command, args) = match &o.entrypoint {
            None => (None, Some(run_wrapper)),
            Some(e) if e.is_empty() => (Some(run_wrapper), None),
            Some(e) => (Some(e.clone()), Some(run_wrapper)),
        };
        let mut container = container_spec(o, Workload::Step);
        container
            .env
            .get_or_insert_with(Vec::new)
            .splice(0..0, spec.env.iter().map(|(k, v)| format!("{k}={v}")));
        let spec = ServiceSpec {
            name: Some(name.to_string()),
            labels: Some(service_labels),
            task_template: Some(TaskSpec {
                container_spec: Some(TaskSpecContainerSpec {
                    image: Some(image.to_string()),
                    labels: Some(labels.clone()),
                    command,
                    args,
                    dir: Some(c.workdir.clone()),
                    configs: Some(configs),
                    secrets: Some(secrets),
                    // SIGTERM, then SIGKILL after the step's grace, as on one machine.
                    stop_grace_period: Some(spec.kill_grace.as_nanos().min(i64::MAX as u128) as i64),
                    ..container
                }),
                // The job's services' network, when it has services.
                networks: c.network.as_ref().map(|n| {
                    vec![NetworkAttachmentConfig {
                        target: Some(n.clone()),
                        ..Default::default()
                    }]
                }),
                ..one_shot_task(o)
            }),
            mode: Some(one_replica()),
            ..Default::default()
        };
        // Nodes pull the workspace image with the login this machine has for the registry.
        let login = auth::login_for(image, &auth::JobLogins::default(), self.docker.login_sources())
            .await
            .login;
        let created = client
            .create_service(spec, login.as_ref().map(auth::Login::to_docker))
            .await
            .map_err(|e| StepError::Create {
                what: "the service (the swarm manager refused it)",
                message: super::docker::with_causes(&e),
            })?;
        made.service = created.id.or_else(|| Some(name.to_string()));
        Ok(())
    }

    /// Follows the step's task to its end.
    #[allow(clippy::too_many_arguments)]
    async fn watch(
        &self,
        spec: &StepSpec,
        c: &ContainerStep,
        name: &str,
        nonce: &str,
        shipped: &[String],
        out: &mpsc::Sender<OutputLine>,
        cancel: &CancellationToken,
    ) -> StepEnd {
        let client = self.docker.client();
        let deadline = spec.deadline;
        let mut pending_since: Option<tokio::time::Instant> = None;
        let mut node: Option<NodeView> = None;
        let mut last_node_check = tokio::time::Instant::now();
        let mut follower: Option<Follower> = None;
        let filters = HashMap::from([("service".to_string(), vec![name.to_string()])]);
        let watching = tokio::time::Instant::now();
        let finished = loop {
            let every = if watching.elapsed() < POLL_QUICK_FOR {
                POLL
            } else {
                POLL_LATER
            };
            let sleep = tokio::time::sleep(every);
            tokio::select! {
                _ = cancel.cancelled() => return StepEnd::Cancelled,
                _ = async { match deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => {
                    return StepEnd::TimedOut;
                }
                _ = sleep => {}
            }
            let tasks = match client
                .list_tasks(Some(ListTasksOptions {
                    filters: Some(filters.clone()),
                }))
                .await
            {
                Ok(t) => t,
                Err(e) => {
                    return StepEnd::Lost(format!(
                        "the swarm manager at {} stopped answering about the step: {}",
                        self.address,
                        super::docker::with_causes(&e)
                    ));
                }
            };
            // The newest task (a job service makes one; a lost node's may be replaced).
            let Some(task) = tasks
                .into_iter()
                .max_by_key(|t| t.created_at.clone().map(|d| d.to_string()))
            else {
                continue;
            };
            let status = task.status.clone().unwrap_or_default();
            let state = status.state.unwrap_or(TaskState::NEW);
            let err = status.err.clone().filter(|e| !e.is_empty());
            match state {
                TaskState::NEW | TaskState::ALLOCATED | TaskState::PENDING => {
                    let Some(why) = err else { continue };
                    let since = *pending_since.get_or_insert_with(tokio::time::Instant::now);
                    if since.elapsed() < self.settings.pending_limit {
                        continue;
                    }
                    // Waiting is right while a node could take it once it has room.
                    let nodes = self.nodes().await.unwrap_or_default();
                    let nano = c.options.cpus.map_or(0, |x| (x * 1e9) as i64);
                    let mem = c.options.memory.map_or(0, |m| m.min(i64::MAX as u64) as i64);
                    if let Some(never) = place::never_fits(&nodes, &c.options.node_labels, nano, mem) {
                        return StepEnd::Unschedulable(format!(
                            "the swarm has no node for the job: {why}; {never} (waited {} s)",
                            self.settings.pending_limit.as_secs()
                        ));
                    }
                }
                TaskState::REJECTED => {
                    let on = node
                        .as_ref()
                        .map(|n| format!(" on node {}", n.describe()))
                        .unwrap_or_default();
                    return StepEnd::SpawnFailed(format!(
                        "the swarm could not start the step{on}: {}",
                        err.or(status.message).unwrap_or_else(|| "rejected".into())
                    ));
                }
                TaskState::SHUTDOWN | TaskState::ORPHANED | TaskState::REMOVE => {
                    let on = node
                        .as_ref()
                        .map(|n| format!(" on node {}", n.describe()))
                        .unwrap_or_default();
                    return StepEnd::Lost(format!(
                        "the swarm stopped the step's task{on} ({})",
                        err.or(status.message).unwrap_or_else(|| state.to_string())
                    ));
                }
                _ => {}
            }
            let running_or_done = matches!(state, TaskState::RUNNING | TaskState::COMPLETE | TaskState::FAILED);
            if node.is_none()
                && let Some(id) = task.node_id.as_deref()
                && let Ok(n) = client.inspect_node(id).await
            {
                let v = NodeView::of(&n);
                let line = OutputLine {
                    stream: Stream::Stderr,
                    text: format!("trackside: running on swarm node {}", v.describe()),
                    partial: false,
                    node: Some(v.describe()),
                };
                let _ = out.send(line).await;
                node = Some(v);
            }
            if running_or_done
                && follower.is_none()
                && let Some(id) = task.id.as_deref()
            {
                follower = Some(Follower::start(
                    client.clone(),
                    id,
                    nonce,
                    self.settings.max_return,
                    out.clone(),
                ));
            }
            if matches!(state, TaskState::COMPLETE | TaskState::FAILED) {
                break (status, node.clone());
            }
            // The node: Swarm may leave a lost node's task `running` for a long time.
            if last_node_check.elapsed() >= NODE_CHECK
                && let Some(n) = &node
            {
                last_node_check = tokio::time::Instant::now();
                if let Ok(now) = client.inspect_node(&n.id).await {
                    let v = NodeView::of(&now);
                    // `unknown` is what a manager that just started says of every node.
                    if matches!(v.state.as_str(), "down" | "disconnected") {
                        return StepEnd::Lost(format!(
                            "swarm node {} went {} while the step ran on it",
                            n.describe(),
                            v.state
                        ));
                    }
                }
            }
        };
        let (status, node) = finished;
        let code = status
            .container_status
            .as_ref()
            .and_then(|s| s.exit_code)
            .map(|c| c as i32);
        let where_ = node.map(|n| n.describe()).unwrap_or_else(|| "its node".into());
        let (oom_seen, frames) = match follower {
            Some(f) => match f.finish(LOG_LAG).await {
                Some((oom, r)) => (oom, Some(r)),
                None => (false, None),
            },
            None => (false, None),
        };
        let rc = code.or(frames.as_ref().and_then(|f| f.as_ref().ok()).and_then(|r| r.rc));
        let Some(rc) = rc else {
            return StepEnd::Lost(format!("the swarm reported no exit code for the step on {where_}"));
        };
        let failed_anyway = rc != 0;
        // The wrapper saw the OOM killer at work in the step's container.
        let oom = failed_anyway && oom_seen;
        let problem = match frames {
            None => Some(format!("the step's log on {where_} could not be read")),
            Some(Err(e)) => Some(e.to_string()),
            Some(Ok(back)) if back.missing_tools => {
                note(
                    out,
                    format!(
                        "trackside: the image `{}` has no `tar`, `base64` or {}: files the step wrote stayed on the node (docs/swarm.md)",
                        c.image,
                        ship::WORKDIR
                    ),
                )
                .await;
                None
            }
            Some(Ok(back)) if !back.complete => Some(format!(
                "the step's log from {where_} stopped before its files came back (nothing new for {} s)",
                LOG_LAG.as_secs()
            )),
            Some(Ok(back)) => {
                let ws = c.workspace.clone();
                let shipped = shipped.to_vec();
                match tokio::task::spawn_blocking(move || ship::apply(&ws, &shipped, &back)).await {
                    Ok(Ok(_)) => None,
                    Ok(Err(e)) => Some(e.to_string()),
                    Err(e) => Some(format!("writing the step's files back failed: {e}")),
                }
            }
        };
        match problem {
            Some(p) if !failed_anyway => StepEnd::Lost(p),
            Some(p) => {
                note(out, format!("trackside: {p}")).await;
                if oom { StepEnd::OomKilled } else { StepEnd::Exited(rc) }
            }
            None if oom => StepEnd::OomKilled,
            None => StepEnd::Exited(rc),
        }
    }

    /// The service ports a step on `network` waits for.
    fn waits_on(&self, network: Option<&str>) -> Vec<ship::PortWait> {
        let Some(n) = network else { return Vec::new() };
        let waits = self.waits.lock().unwrap_or_else(|e| e.into_inner());
        waits.get(n).cloned().unwrap_or_default()
    }

    /// Removes what [`SwarmExecutor::launch`] made; says what it could not.
    async fn remove(&self, made: Made) -> Option<String> {
        let client = self.docker.client();
        let mut kept = None;
        if let Some(s) = &made.service {
            // A 404 is a service already gone; anything else is tried again.
            let mut last = None;
            for _ in 0..3 {
                match client.delete_service(s).await {
                    Ok(()) | Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => {
                        last = None;
                        break;
                    }
                    Err(e) => last = Some(super::docker::with_causes(&e)),
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            if let Some(why) = last {
                tracing::warn!(service = %s, %why, "cannot remove a swarm service");
                kept = Some(format!(
                    "could not remove the step's swarm service {s} ({why}); the run's end tries again, and `docker service rm {s}` on a manager removes it"
                ));
                // Its configs and secrets stay in use while it does.
                return kept;
            }
        }
        // A config or secret in use by a service being removed is refused
        // until its task is gone: tried again for a while.
        let until = tokio::time::Instant::now() + Duration::from_secs(30);
        let mut configs = made.configs;
        let mut secrets = made.secrets;
        while !(configs.is_empty() && secrets.is_empty()) && tokio::time::Instant::now() < until {
            let mut left = Vec::new();
            for id in configs {
                if client.delete_config(&id).await.is_err() {
                    left.push(id);
                }
            }
            configs = left;
            let mut left = Vec::new();
            for id in secrets {
                if client.delete_secret(&id).await.is_err() {
                    left.push(id);
                }
            }
            secrets = left;
            if !(configs.is_empty() && secrets.is_empty()) {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        kept
    }
}

/// What a swarm service is made for: a job's step, or one of its services.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    Step,
    Service,
}

/// What a step's service runs, as a digest: its workspace image (itself a
/// digest of the job's image and every file), its command line, working
/// directory, user, resources, variables and script. Left out: the
/// variables that differ from attempt to attempt by design (the attempt's
/// number, trackside's own), and what goes as Swarm secrets (secret and
/// file variables: a digest in a label is no place for them).
fn inputs_digest(
    image: &str,
    command: &[String],
    script: &[u8],
    env: &std::collections::BTreeMap<String, String>,
    c: &ContainerStep,
) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    let resources = format!("{:?} {:?} {:?}", c.options.cpus, c.options.memory, c.options.pids);
    for part in [
        image.as_bytes(),
        command.join("\0").as_bytes(),
        c.workdir.as_bytes(),
        resources.as_bytes(),
    ] {
        h.update(part);
        h.update([0]);
    }
    let per_attempt = |k: &str| k.starts_with("TRACKSIDE_") || k.ends_with("_ATTEMPT");
    for (k, v) in env.iter().filter(|(k, _)| !per_attempt(k)) {
        h.update(k.as_bytes());
        h.update([b'=']);
        h.update(v.as_bytes());
        h.update([0]);
    }
    h.update(c.options.user.as_deref().unwrap_or("").as_bytes());
    h.update([0]);
    h.update(script);
    h.finalize().iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// The first container setting that a swarm service cannot have as the
/// Docker executor gives it.
pub fn unsupported(o: &crate::pipeline::model::ContainerOptions, w: Workload) -> Option<&'static str> {
    let x = &o.extras;
    if o.privileged {
        Some("`privileged: true`")
    } else if o.docker_socket {
        Some("`docker_socket: true`")
    } else if o.read_only_rootfs && w == Workload::Step {
        // The workspace is in the image's layers: a read-only root is a read-only workspace.
        Some("`read_only_rootfs: true`")
    } else if !x.volumes.is_empty() {
        // A named volume is one node's; a host path another machine's.
        Some("a container's `volumes:`")
    } else if !x.tmpfs.is_empty() || x.shm_size.is_some() {
        Some("`--tmpfs` or `--shm-size` in a container's `options:`")
    } else if !x.ports.is_empty() && w == Workload::Step {
        Some("a container's `ports:`")
    } else {
        None
    }
}

/// The container settings a step's or a service's task gets from its
/// options: user, capabilities, environment (`env:`), host name and
/// health check. The caller adds its image, command, labels and the rest.
fn container_spec(o: &crate::pipeline::model::ContainerOptions, w: Workload) -> TaskSpecContainerSpec {
    let x = &o.extras;
    TaskSpecContainerSpec {
        user: o.user.clone(),
        capability_drop: (!o.cap_drop.is_empty()).then(|| o.cap_drop.clone()),
        capability_add: (!x.cap_add.is_empty()).then(|| x.cap_add.clone()),
        env: Some(x.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        hostname: x.hostname.clone(),
        read_only: (w == Workload::Service && o.read_only_rootfs).then_some(true),
        // Swarm keeps the task `starting` until it reports healthy.
        health_check: x.health.as_ref().map(super::docker::job::health_config),
        ..Default::default()
    }
}

/// A task that runs once and is never restarted (trackside owns retries),
/// with the options' resources as reservations and limits and their node
/// labels as placement constraints.
fn one_shot_task(o: &crate::pipeline::model::ContainerOptions) -> TaskSpec {
    let nano_cpus = o.cpus.map(|c| (c * 1e9) as i64);
    let memory = o.memory.map(|m| m.min(i64::MAX as u64) as i64);
    TaskSpec {
        resources: Some(TaskSpecResources {
            limits: Some(Limit {
                nano_cpus,
                memory_bytes: memory,
                pids: o.pids,
            }),
            reservations: Some(ResourceObject {
                nano_cpus,
                memory_bytes: memory,
                ..Default::default()
            }),
            ..Default::default()
        }),
        restart_policy: Some(TaskSpecRestartPolicy {
            condition: Some(TaskSpecRestartPolicyConditionEnum::NONE),
            max_attempts: Some(0),
            ..Default::default()
        }),
        placement: Some(TaskSpecPlacement {
            constraints: Some(o.node_labels.iter().map(|l| place::constraint(l)).collect()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// One replica, not a `replicated-job`: Docker 20.10's swarm leaves a
/// job's running task alive when its service is removed, and cancel must
/// stop it (docs/swarm.md).
fn one_replica() -> ServiceSpecMode {
    ServiceSpecMode {
        replicated: Some(ServiceSpecModeReplicated { replicas: Some(1) }),
        ..Default::default()
    }
}

/// What one step made on the swarm.
#[derive(Default)]
struct Made {
    service: Option<String>,
    configs: Vec<String>,
    secrets: Vec<String>,
}

/// Reads a task's log: standard output through [`ship::Frames`] (the
/// step's lines go on to `out`, what the wrapper sends back is kept),
/// standard error straight on. Dropped, it stops reading: a lost node's
/// log never ends, and the step's output channel must close.
struct Follower {
    lines: tokio::task::JoinHandle<()>,
    /// What came back, and whether the wrapper saw an OOM kill (kept even
    /// when what came back is damaged or too big).
    frames: Option<tokio::task::JoinHandle<(bool, Result<ship::Returned, ship::ShipError>)>>,
    /// Lines read so far: a log still coming is waited for.
    read: Arc<std::sync::atomic::AtomicU64>,
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.lines.abort();
        if let Some(f) = &self.frames {
            f.abort();
        }
    }
}

impl Follower {
    fn start(client: bollard::Docker, task: &str, nonce: &str, budget: u64, out: mpsc::Sender<OutputLine>) -> Follower {
        let logs = task_log(&client, task);
        let (tx, mut rx) = mpsc::channel::<OutputLine>(256);
        let lines = tokio::spawn(async move {
            super::docker::forward_logs(Box::pin(logs), tx).await;
        });
        let mut frames = ship::Frames::new(nonce, budget);
        let read = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counted = read.clone();
        let frames = tokio::spawn(async move {
            while let Some(line) = rx.recv().await {
                counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let shown = match line.stream {
                    Stream::Stdout => frames.line(&line.text).map(|text| OutputLine { text, ..line }),
                    Stream::Stderr => Some(line),
                };
                if let Some(l) = shown {
                    let _ = out.send(l).await;
                }
                if frames.done() {
                    break;
                }
            }
            (frames.oom_killed(), frames.finish())
        });
        Follower {
            lines,
            frames: Some(frames),
            read,
        }
    }

    /// What came back, once the log has caught up: given up when `lag`
    /// passes with no new line (a large return streams for as long as it
    /// keeps coming); `None` then.
    async fn finish(mut self, lag: Duration) -> Option<(bool, Result<ship::Returned, ship::ShipError>)> {
        let mut frames = self.frames.take()?;
        let mut seen = self.read.load(std::sync::atomic::Ordering::Relaxed);
        loop {
            match tokio::time::timeout(lag, &mut frames).await {
                Ok(Ok(r)) => return Some(r),
                Ok(Err(_)) => return None,
                Err(_) => {
                    let now = self.read.load(std::sync::atomic::Ordering::Relaxed);
                    if now == seen {
                        frames.abort();
                        return None;
                    }
                    seen = now;
                }
            }
        }
    }
}

/// A task's standard output and error, followed to their end.
fn task_log(
    client: &bollard::Docker,
    task: &str,
) -> impl futures_util::Stream<Item = Result<bollard::container::LogOutput, bollard::errors::Error>> + use<> {
    client.task_logs(
        task,
        Some(LogsOptions {
            follow: true,
            stdout: true,
            stderr: true,
            ..Default::default()
        }),
    )
}

async fn note(out: &mpsc::Sender<OutputLine>, text: String) {
    let _ = out
        .send(OutputLine {
            stream: Stream::Stderr,
            text,
            partial: false,
            node: None,
        })
        .await;
}

/// A Swarm service name for the step: `trackside-<run>-<job>-<attempt>-<step>`
/// in letters, digits and `-`, at most 63 characters (a digest of the whole
/// replaces the end of a longer one).
pub fn service_name(c: &ContainerStep) -> String {
    swarm_name(&super::docker::container_name(c))
}

/// `full` as a Swarm object name: letters, digits and `-`, at most 63
/// characters (a digest of the whole replaces the end of a longer one).
fn swarm_name(full: &str) -> String {
    let full: String = full
        .chars()
        .map(|ch| {
            if ch.is_ascii_alphanumeric() || ch == '-' {
                ch
            } else {
                '-'
            }
        })
        .collect();
    if full.len() <= 63 {
        return full;
    }
    use sha2::Digest;
    let digest: String = sha2::Sha256::digest(full.as_bytes())
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{}-{digest}", &full[..50])
}

/// This machine, as the owner label says it: `/etc/machine-id`, else the host name.
fn host_id() -> String {
    std::fs::read_to_string("/etc/machine-id")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

impl Executor for SwarmExecutor {
    fn name(&self) -> &'static str {
        "swarm"
    }

    fn run_step(
        &self,
        spec: StepSpec,
        out: mpsc::Sender<OutputLine>,
        cancel: CancellationToken,
    ) -> BoxFuture<'_, StepEnd> {
        Box::pin(async move {
            match self.run(spec, out, cancel).await {
                StepEnd::SpawnFailed(m) => StepEnd::SpawnFailed(self.docker.explain(m).await),
                end => end,
            }
        })
    }

    fn start_services(
        &self,
        req: super::ServicesRequest,
        out: mpsc::Sender<OutputLine>,
    ) -> BoxFuture<'_, Result<super::Services, String>> {
        Box::pin(async move { self.start_services_impl(req, out).await.map_err(|e| e.to_string()) })
    }

    fn stop_services(&self, services: super::Services) -> BoxFuture<'_, ()> {
        Box::pin(self.stop_services_impl(services))
    }

    fn finish_run<'a>(&'a self, run_id: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(self.finish_run_impl(run_id))
    }

    fn cluster(&self) -> BoxFuture<'_, Option<Vec<crate::protocol::view::ClusterNode>>> {
        Box::pin(async move { self.cluster_nodes().await.ok() })
    }

    fn image_id<'a>(
        &'a self,
        image: &'a str,
        pull: crate::pipeline::model::PullPolicy,
        logins: &'a auth::JobLogins,
    ) -> BoxFuture<'a, Result<String, String>> {
        self.docker.image_id(image, pull, logins)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(job: &str) -> ContainerStep {
        ContainerStep {
            image: "busybox".into(),
            options: Default::default(),
            logins: Default::default(),
            run_id: "20261206-120000-abcd".into(),
            job: job.into(),
            attempt: 2,
            step_index: 1,
            workspace: "/tmp/ws".into(),
            script_file: "/tmp/s".into(),
            secrets_file: None,
            files: Vec::new(),
            workdir: "/workspace".into(),
            network: None,
            keep_on_failure: false,
            exec_in: None,
            entrypoint_run: None,
        }
    }

    #[test]
    fn service_names_are_valid_and_unique_for_long_jobs() {
        assert_eq!(
            service_name(&step("build: [linux, amd64]")),
            "trackside-20261206-120000-abcd-build---linux--amd64--2-1"
        );
        let a = service_name(&step(&"x".repeat(80)));
        let b = service_name(&step(&format!("{}y", "x".repeat(79))));
        assert_eq!(a.len(), 63);
        assert_ne!(a, b);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    }
}
