//! A job's own container (GitHub's `container:`): started once, kept
//! alive by `tail -f /dev/null` as GitHub's runner does, and each step run
//! in it with `docker exec`, so what one step installs is there for the
//! next. A step is stopped (timeout, cancel) by signalling every process
//! of the container but its first (`kill -1` from inside), which leaves
//! the container for the steps that run after a cancel (`always()`).
//! Also: the container settings GitHub's `options:`, `ports:` and
//! `volumes:` give, applied to any container trackside creates.

use std::collections::HashMap;
use std::time::Duration;

use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use bollard::models::{ContainerCreateBody, HealthConfig, HostConfig, PortBinding};
use bollard::query_parameters::{CreateContainerOptions, InspectContainerOptions, StartContainerOptions};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{DockerExecutor, LABEL_ATTEMPT, LABEL_JOB, LABEL_KEEP, LABEL_PID, LABEL_RUN, forward_logs};
use crate::exec::{ExecIn, JobBox, JobBoxRequest, OutputLine, StepEnd, StepSpec};
use crate::pipeline::model::ContainerOptions;

/// Applies `o`'s limits and extras (ports, volumes, health check, ...) to
/// a container being created. Published ports bind to 127.0.0.1 unless
/// the port says which address: a service is not offered to the network.
pub(super) fn apply_options(o: &ContainerOptions, body: &mut ContainerCreateBody, host: &mut HostConfig) {
    host.nano_cpus = o.cpus.map(|c| (c * 1e9) as i64);
    host.memory = o.memory.and_then(|m| i64::try_from(m).ok());
    // No swap beyond the limit, so a memory limit means an OOM kill.
    host.memory_swap = host.memory;
    host.pids_limit = o.pids;
    host.privileged = Some(o.privileged);
    host.cap_drop = (!o.cap_drop.is_empty()).then(|| o.cap_drop.clone());
    host.readonly_rootfs = Some(o.read_only_rootfs);
    let x = &o.extras;
    if !x.cap_add.is_empty() {
        host.cap_add = Some(x.cap_add.clone());
    }
    if !x.tmpfs.is_empty() {
        host.tmpfs = Some(
            x.tmpfs
                .iter()
                .map(|t| match t.split_once(':') {
                    Some((p, opts)) => (p.to_string(), opts.to_string()),
                    None => (t.clone(), String::new()),
                })
                .collect(),
        );
    }
    host.shm_size = x.shm_size.and_then(|s| i64::try_from(s).ok());
    if !x.volumes.is_empty() {
        host.binds
            .get_or_insert_with(Vec::new)
            .extend(x.volumes.iter().cloned());
    }
    if !x.env.is_empty() {
        body.env
            .get_or_insert_with(Vec::new)
            .extend(x.env.iter().map(|(k, v)| format!("{k}={v}")));
    }
    if let Some(h) = &x.hostname {
        body.hostname = Some(h.clone());
    }
    body.healthcheck = x.health.as_ref().map(health_config);
    let mut exposed = std::collections::BTreeSet::new();
    let mut bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
    for spec in &x.ports {
        for (ip, host_port, port) in port_pairs(spec) {
            exposed.insert(port.clone());
            bindings
                .entry(port)
                .or_insert_with(|| Some(Vec::new()))
                .get_or_insert_with(Vec::new)
                .push(PortBinding {
                    host_ip: Some(ip),
                    host_port: Some(host_port),
                });
        }
    }
    if !exposed.is_empty() {
        body.exposed_ports = Some(exposed.into_iter().collect());
        host.port_bindings = Some(bindings);
    }
}

/// A `--health-cmd` and its timings as Docker's health check.
pub(crate) fn health_config(h: &crate::pipeline::model::ContainerHealth) -> HealthConfig {
    let nanos = |d: Option<Duration>| d.map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
    HealthConfig {
        test: Some(vec!["CMD-SHELL".into(), h.command.clone()]),
        interval: nanos(h.interval),
        timeout: nanos(h.timeout),
        retries: h.retries.map(i64::from),
        start_period: nanos(h.start_period),
        ..Default::default()
    }
}

/// `[ip:][host:]container[/proto]` as (address, host port or "" for any,
/// `container/proto`), ranges taken apart.
fn port_pairs(spec: &str) -> Vec<(String, String, String)> {
    let (ports, proto) = spec.rsplit_once('/').unwrap_or((spec, "tcp"));
    let parts: Vec<&str> = ports.split(':').collect();
    let (ip, host, container) = match parts.as_slice() {
        [c] => ("127.0.0.1", "", *c),
        [h, c] => ("127.0.0.1", *h, *c),
        [ip, h, c] => (*ip, *h, *c),
        _ => return Vec::new(),
    };
    let range = |r: &str| -> Option<(u16, u16)> {
        match r.split_once('-') {
            Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
            None => r.parse().ok().map(|p| (p, p)),
        }
    };
    let Some((c0, c1)) = range(container) else {
        return Vec::new();
    };
    let hosts = if host.is_empty() { None } else { range(host) };
    (c0..=c1)
        .enumerate()
        .map(|(i, c)| {
            let h = hosts
                .and_then(|(h0, _)| h0.checked_add(u16::try_from(i).ok()?))
                .map_or(String::new(), |h| h.to_string());
            (ip.to_string(), h, format!("{c}/{proto}"))
        })
        .collect()
}

/// The host ports Docker gave a container's published ports, as
/// (`5432`, `49153`) (the protocol left out for `tcp`, as GitHub's
/// `job.services.<id>.ports` has them).
pub(super) fn published(info: &bollard::models::ContainerInspectResponse) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = info
        .network_settings
        .as_ref()
        .and_then(|n| n.ports.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|(port, bound)| {
            let host = bound.as_ref()?.iter().find_map(|b| b.host_port.clone())?;
            let port = port.strip_suffix("/tcp").unwrap_or(port).to_string();
            Some((port, host))
        })
        .collect();
    out.sort();
    out
}

impl DockerExecutor {
    pub(super) async fn start_job_box_impl(&self, req: JobBoxRequest) -> Result<JobBox, String> {
        self.ensure_image(&req.image, req.options.pull, &req.logins).await?;
        let name = format!(
            "trackside-{}-{}-{}-job",
            req.run_id,
            crate::store::file_safe(&req.job),
            req.attempt
        );
        let _ = self.remove(&name).await;
        let mut labels = HashMap::from([
            (LABEL_RUN.to_string(), req.run_id.clone()),
            (LABEL_JOB.to_string(), req.job.clone()),
            (LABEL_ATTEMPT.to_string(), req.attempt.to_string()),
            (LABEL_PID.to_string(), std::process::id().to_string()),
        ]);
        if req.keep_on_failure {
            labels.insert(LABEL_KEEP.to_string(), "1".to_string());
        }
        let mut host = HostConfig {
            binds: Some(
                req.mounts
                    .iter()
                    .map(|m| {
                        let mode = if m.read_only { ":ro" } else { "" };
                        format!("{}:{}{mode}", m.host.display(), m.inside)
                    })
                    .collect(),
            ),
            ..Default::default()
        };
        let mut body = ContainerCreateBody {
            image: Some(req.image.clone()),
            // Kept alive for the steps, as GitHub's runner keeps it.
            entrypoint: Some(vec!["tail".into()]),
            cmd: Some(vec!["-f".into(), "/dev/null".into()]),
            working_dir: Some(req.workdir.clone()),
            user: req.options.user.clone(),
            labels: Some(labels),
            ..Default::default()
        };
        apply_options(&req.options, &mut body, &mut host);
        if let Some(net) = &req.network {
            host.network_mode = Some(net.clone());
            let endpoint = bollard::models::EndpointSettings {
                aliases: (!req.options.extras.network_aliases.is_empty())
                    .then(|| req.options.extras.network_aliases.clone()),
                ..Default::default()
            };
            body.networking_config = Some(bollard::models::NetworkingConfig {
                endpoints_config: Some(HashMap::from([(net.clone(), endpoint)])),
            });
        }
        body.host_config = Some(host);
        self.docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(name.clone()),
                    ..Default::default()
                }),
                body,
            )
            .await
            .map_err(|e| format!("cannot create the job's container from `{}`: {e}", req.image))?;
        let started = self.docker.start_container(&name, None::<StartContainerOptions>).await;
        let info = self
            .docker
            .inspect_container(&name, None::<InspectContainerOptions>)
            .await;
        let running = info
            .as_ref()
            .ok()
            .and_then(|i| i.state.as_ref())
            .and_then(|s| s.running)
            .unwrap_or(false);
        let info = match (started, info) {
            (Ok(()), Ok(info)) if running => info,
            (Err(e), _) => {
                self.remove(&name).await;
                return Err(format!("cannot start the job's container (`{}`): {e}", req.image));
            }
            _ => {
                let tail = self.last_lines(&name, 5).await;
                self.remove(&name).await;
                return Err(format!(
                    "the job's container (`{}`) stopped at once: it needs `tail` to stay up, as on GitHub{}",
                    req.image,
                    if tail.is_empty() {
                        String::new()
                    } else {
                        format!("; it said:\n{}", tail.join("\n"))
                    }
                ));
            }
        };
        let path = info
            .config
            .as_ref()
            .and_then(|c| c.env.as_ref())
            .and_then(|env| env.iter().find_map(|e| e.strip_prefix("PATH=").map(str::to_string)));
        Ok(JobBox {
            ports: published(&info),
            id: name,
            image: req.image,
            network: req.network,
            mounts: req.mounts,
            path,
        })
    }

    pub(super) async fn stop_job_box_impl(&self, job_box: JobBox, keep: bool) {
        if keep {
            // `tail` as PID 1 ignores SIGTERM: nothing to wait for.
            let options = bollard::query_parameters::KillContainerOptions {
                signal: "SIGKILL".into(),
            };
            let _ = self.docker.kill_container(&job_box.id, Some(options)).await;
        } else {
            self.remove(&job_box.id).await;
        }
    }

    /// Runs a step in the job's container.
    pub(super) async fn exec_step(
        &self,
        spec: &StepSpec,
        exec: &ExecIn,
        user: Option<String>,
        workdir: &str,
        out: mpsc::Sender<OutputLine>,
        cancel: CancellationToken,
    ) -> StepEnd {
        let config = CreateExecOptions {
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            cmd: Some(spec.command_line(&exec.script)),
            // Not part of the container's configuration: `docker inspect`
            // does not show an exec's environment.
            env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            working_dir: Some(workdir.to_string()),
            user,
            ..Default::default()
        };
        let created = match self.docker.create_exec(&exec.container, config).await {
            Ok(c) => c,
            Err(e) => return StepEnd::SpawnFailed(format!("cannot run the step in the job's container: {e}")),
        };
        let started = self
            .docker
            .start_exec(
                &created.id,
                Some(StartExecOptions {
                    detach: false,
                    tty: false,
                    output_capacity: None,
                }),
            )
            .await;
        let output = match started {
            Ok(StartExecResults::Attached { output, .. }) => output,
            Ok(StartExecResults::Detached) => return StepEnd::SpawnFailed("the step's exec detached".into()),
            Err(e) => return StepEnd::SpawnFailed(format!("cannot start the step in the job's container: {e}")),
        };
        let mut reader = tokio::spawn(forward_logs(output, out.clone()));
        let deadline = async {
            match spec.deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        let stopped = tokio::select! {
            _ = &mut reader => None,
            () = deadline => {
                self.signal_all(&exec.container, "TERM").await;
                if tokio::time::timeout(spec.kill_grace, &mut reader).await.is_err() {
                    self.signal_all(&exec.container, "KILL").await;
                }
                Some(StepEnd::TimedOut)
            }
            () = cancel.cancelled() => {
                self.signal_all(&exec.container, "KILL").await;
                Some(StepEnd::Cancelled)
            }
        };
        // The output ends with the step's processes; bound the wait anyway.
        if !reader.is_finished() {
            let abort = reader.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), reader).await.is_err() {
                abort.abort();
            }
        }
        if let Some(end) = stopped {
            return end;
        }
        // The exit code is there once the output has ended; ask a few times.
        for _ in 0..50 {
            match self.docker.inspect_exec(&created.id).await {
                Ok(i) if i.running == Some(true) => tokio::time::sleep(Duration::from_millis(20)).await,
                Ok(i) => return StepEnd::Exited(i.exit_code.and_then(|c| i32::try_from(c).ok()).unwrap_or(-1)),
                Err(e) => return StepEnd::SpawnFailed(format!("lost track of the step: {e}")),
            }
        }
        StepEnd::SpawnFailed("the step's output ended but it did not".into())
    }

    /// Signals every process in `container` but its first, as root.
    async fn signal_all(&self, container: &str, signal: &str) {
        let config = CreateExecOptions {
            cmd: Some(vec!["sh".to_string(), "-c".into(), format!("kill -s {signal} -1")]),
            user: Some("0".into()),
            ..Default::default()
        };
        if let Ok(c) = self.docker.create_exec(container, config).await {
            let detached = StartExecOptions {
                detach: true,
                tty: false,
                output_capacity: None,
            };
            let _ = self.docker.start_exec(&c.id, Some(detached)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_published_on_loopback_unless_an_address_is_given() {
        assert_eq!(
            port_pairs("5432"),
            vec![("127.0.0.1".into(), "".into(), "5432/tcp".into())]
        );
        assert_eq!(
            port_pairs("8080:80"),
            vec![("127.0.0.1".into(), "8080".into(), "80/tcp".into())]
        );
        assert_eq!(
            port_pairs("0.0.0.0:53:53/udp"),
            vec![("0.0.0.0".into(), "53".into(), "53/udp".into())]
        );
        assert_eq!(
            port_pairs("9000-9001:7000-7001"),
            vec![
                ("127.0.0.1".into(), "9000".into(), "7000/tcp".into()),
                ("127.0.0.1".into(), "9001".into(), "7001/tcp".into())
            ]
        );
        assert!(port_pairs("x").is_empty());
    }

    #[test]
    fn a_container_step_sees_host_paths_through_the_deepest_mount() {
        use crate::exec::{Mount, inside};
        let m = |h: &str, i: &str| Mount {
            host: h.into(),
            inside: i.into(),
            read_only: false,
        };
        let mounts = [
            m("/run/files/job.1", "/__w/_trackside"),
            m("/run/files/job.1/temp", "/__w/_temp"),
        ];
        assert_eq!(
            inside(&mounts, "/run/files/job.1/temp/x".as_ref()).as_deref(),
            Some("/__w/_temp/x")
        );
        assert_eq!(
            inside(&mounts, "/run/files/job.1/github/env.0".as_ref()).as_deref(),
            Some("/__w/_trackside/github/env.0")
        );
        assert_eq!(inside(&mounts, "/elsewhere".as_ref()), None);
    }
}
