//! Which executor runs a step: containers for steps with an image (on a
//! swarm with `--executor swarm`), the shell for the rest. Apart from the executors it routes to, so the trait
//! and its types (the parent module) depend on neither.

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{BoxFuture, Executor, OutputLine, Services, ServicesRequest, StepEnd, StepSpec, docker, shell, swarm};

/// Runs container steps with Docker and the rest with the shell.
pub struct Executors {
    pub shell: shell::ShellExecutor,
    /// `None` when no step needs containers (the daemon is not contacted).
    pub docker: Option<docker::DockerExecutor>,
    /// `--executor swarm`: container steps run as Swarm services.
    pub swarm: Option<swarm::SwarmExecutor>,
}

/// What the swarm executor does not run yet (docs/swarm.md, "Limits").
const NOT_ON_SWARM: &str =
    "does not run on the swarm executor yet (docs/swarm.md, \"Limits\"); run this pipeline with --executor docker";

impl Executor for Executors {
    fn name(&self) -> &'static str {
        "auto"
    }

    fn run_step(
        &self,
        spec: StepSpec,
        out: mpsc::Sender<OutputLine>,
        cancel: CancellationToken,
    ) -> BoxFuture<'_, StepEnd> {
        if let (Some(_), Some(s)) = (&spec.container, &self.swarm) {
            return s.run_step(spec, out, cancel);
        }
        match (&spec.container, &self.docker) {
            (None, _) => self.shell.run_step(spec, out, cancel),
            (Some(_), Some(d)) => d.run_step(spec, out, cancel),
            (Some(c), None) => {
                let msg = format!("step needs image `{}` but no Docker daemon was connected", c.image);
                Box::pin(async move { StepEnd::SpawnFailed(msg) })
            }
        }
    }

    fn start_services(
        &self,
        req: ServicesRequest,
        out: mpsc::Sender<OutputLine>,
    ) -> BoxFuture<'_, Result<Services, String>> {
        if let Some(s) = &self.swarm {
            return s.start_services(req, out);
        }
        match &self.docker {
            Some(d) => d.start_services(req, out),
            None => Box::pin(async { Err("services need a Docker daemon, and none was connected".to_string()) }),
        }
    }

    fn stop_services(&self, services: Services) -> BoxFuture<'_, ()> {
        if let Some(s) = &self.swarm {
            return s.stop_services(services);
        }
        match &self.docker {
            Some(d) => d.stop_services(services),
            None => Box::pin(async {}),
        }
    }

    fn start_job_box(&self, req: super::JobBoxRequest) -> BoxFuture<'_, Result<super::JobBox, String>> {
        if self.swarm.is_some() {
            return Box::pin(async { Err(format!("a job container (`container:`) {NOT_ON_SWARM}")) });
        }
        match &self.docker {
            Some(d) => d.start_job_box(req),
            None => {
                Box::pin(async { Err("a job container needs a Docker daemon, and none was connected".to_string()) })
            }
        }
    }

    fn build_image(
        &self,
        req: super::ImageBuild,
        out: mpsc::Sender<OutputLine>,
    ) -> BoxFuture<'_, Result<String, String>> {
        if self.swarm.is_some() {
            return Box::pin(async { Err(format!("a Docker action {NOT_ON_SWARM}")) });
        }
        match &self.docker {
            Some(d) => d.build_image(req, out),
            None => {
                Box::pin(async { Err("a Docker action needs a Docker daemon, and none was connected".to_string()) })
            }
        }
    }

    fn stop_job_box(&self, job_box: super::JobBox, keep: bool) -> BoxFuture<'_, ()> {
        match &self.docker {
            Some(d) => d.stop_job_box(job_box, keep),
            None => Box::pin(async {}),
        }
    }

    fn cluster(&self) -> BoxFuture<'_, Option<Vec<crate::protocol::view::ClusterNode>>> {
        match &self.swarm {
            Some(s) => s.cluster(),
            None => Box::pin(async { None }),
        }
    }

    fn finish_run<'a>(&'a self, run_id: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if let Some(s) = &self.swarm {
                s.finish_run(run_id).await;
            }
            if let Some(d) = &self.docker {
                d.finish_run(run_id).await;
            }
        })
    }

    fn image_id<'a>(
        &'a self,
        image: &'a str,
        pull: crate::pipeline::model::PullPolicy,
        logins: &'a crate::exec::JobLogins,
    ) -> BoxFuture<'a, Result<String, String>> {
        if let Some(s) = &self.swarm {
            return s.image_id(image, pull, logins);
        }
        match &self.docker {
            Some(d) => d.image_id(image, pull, logins),
            None => {
                Box::pin(async move { Err(format!("image `{image}` needs a Docker daemon, and none was connected")) })
            }
        }
    }
}
