//! Containers in the native format: `image:` and its options, and
//! `services:` with their readiness checks.

use std::time::Duration;

use crate::pipeline::diag::suggestion_hint;
use crate::pipeline::model::*;
use crate::pipeline::read::*;
use crate::pipeline::yaml::{Node, Value};

impl Cx<'_> {
    pub(crate) fn services(&mut self, node: &Node, path: &str) -> Vec<Service> {
        let spath = join(path, "services");
        let Value::Seq(items) = &node.value else {
            self.err(
                node,
                &spath,
                format!("`services` must be a list, found {}", node.type_name()),
                "write one `- name: ...` entry per service",
            );
            return Vec::new();
        };
        let keys = [
            "name",
            "image",
            "port",
            "environment",
            "command",
            "ready_timeout",
            "node_labels",
        ];
        let mut out: Vec<Service> = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let ipath = format!("{spath}[{i}]");
            if !self.mapping(item, &ipath, &keys, "a service") {
                continue;
            }
            let name = get(item, "name").and_then(|n| self.string(n, &join(&ipath, "name")));
            let image = get(item, "image").and_then(|n| self.string(n, &join(&ipath, "image")));
            let (Some(name), Some(image)) = (name, image) else {
                self.err(
                    item,
                    &ipath,
                    "a service needs `name` and `image`",
                    "e.g. `- {name: db, image: postgres:16, port: 5432}`",
                );
                continue;
            };
            let valid = !name.is_empty()
                && name.len() <= 63
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !name.starts_with('-');
            if !valid {
                let n = get(item, "name").unwrap_or(item);
                self.err(
                    n,
                    &join(&ipath, "name"),
                    format!("`{name}` is not a valid service name"),
                    "use lowercase letters, digits and `-`: it becomes a host name",
                );
                continue;
            }
            if out.iter().any(|s| s.name == name) {
                let n = get(item, "name").unwrap_or(item);
                self.err(
                    n,
                    &join(&ipath, "name"),
                    format!("duplicate service `{name}`"),
                    "service names must be unique within a job",
                );
                continue;
            }
            let port = get(item, "port")
                .and_then(|n| self.int_in(n, &join(&ipath, "port"), 1, 65535))
                .and_then(|p| u16::try_from(p).ok());
            let environment = get(item, "environment")
                .map(|n| self.env_map(n, &join(&ipath, "environment")))
                .unwrap_or_default();
            let command = get(item, "command").map(|n| {
                self.string_list(n, &join(&ipath, "command"))
                    .into_iter()
                    .map(|(s, _)| s)
                    .collect()
            });
            let ready_timeout = get(item, "ready_timeout")
                .and_then(|n| self.seconds_in(n, &join(&ipath, "ready_timeout"), 1.0, 3600.0))
                .unwrap_or(Duration::from_secs(60));
            // Where it may run on a swarm (the job's own labels when unset).
            let node_labels = get(item, "node_labels")
                .map(|n| {
                    self.string_list(n, &join(&ipath, "node_labels"))
                        .into_iter()
                        .map(|(s, _)| s)
                        .collect()
                })
                .unwrap_or_default();
            out.push(Service {
                name,
                aliases: Vec::new(),
                image,
                entrypoint: None,
                port,
                environment,
                command,
                ready_timeout,
                options: ContainerOptions {
                    node_labels,
                    ..Default::default()
                },
            });
        }
        out
    }

    pub(crate) fn container(&mut self, node: &Node, path: &str) -> ContainerOptions {
        let mut c = ContainerOptions {
            user: get(node, "user").and_then(|n| self.string(n, &join(path, "user"))),
            ..ContainerOptions::default()
        };
        if let Some(n) = get(node, "entrypoint") {
            c.entrypoint = Some(match &n.value {
                Value::Seq(items) if items.is_empty() => Vec::new(),
                _ => self
                    .string_list(n, &join(path, "entrypoint"))
                    .into_iter()
                    .map(|(s, _)| s)
                    .collect(),
            });
        }
        if let Some(n) = get(node, "pull") {
            let ppath = join(path, "pull");
            if let Some(s) = self.string(n, &ppath) {
                match PullPolicy::ALL.iter().find(|(k, _)| *k == s) {
                    Some((_, p)) => c.pull = *p,
                    None => {
                        let names: Vec<&str> = PullPolicy::ALL.iter().map(|(k, _)| *k).collect();
                        self.err(
                            n,
                            &ppath,
                            format!("unknown pull policy `{s}`"),
                            suggestion_hint(&s, &names, "policies"),
                        );
                    }
                }
            }
        }
        if let Some(r) = get(node, "resources") {
            let rpath = join(path, "resources");
            if self.mapping(r, &rpath, &["cpu", "cpus", "memory", "pids"], "resources") {
                if let (Some(_), Some(n)) = (get(r, "cpu"), get(r, "cpus")) {
                    self.err(
                        n,
                        &join(&rpath, "cpus"),
                        "`cpu` and `cpus` are the same setting",
                        "keep one of them",
                    );
                }
                for key in ["cpu", "cpus"] {
                    let Some(n) = get(r, key) else { continue };
                    match n.value {
                        Value::Int(i) if (1..=1024).contains(&i) => c.cpus = Some(i as f64),
                        Value::Float(f) if (0.01..=1024.0).contains(&f) => c.cpus = Some(f),
                        _ => self.err(
                            n,
                            &join(&rpath, key),
                            format!("`{key}` must be a number from 0.01 to 1024"),
                            format!("e.g. `{key}: 1.5`"),
                        ),
                    }
                }
                if let Some(n) = get(r, "memory") {
                    match parse_bytes(n) {
                        Some(b) if b >= 6 << 20 => c.memory = Some(b),
                        _ => self.err(
                            n,
                            &join(&rpath, "memory"),
                            "`memory` must be a size of at least 6MiB",
                            "write bytes or a size with a unit: `512MiB`, `2GiB`, `256M`",
                        ),
                    }
                }
                if let Some(n) = get(r, "pids") {
                    c.pids = self.int_in(n, &join(&rpath, "pids"), 1, 1 << 22).map(i64::from);
                }
            }
        }
        if let Some(n) = get(node, "privileged") {
            c.privileged = self.boolean(n, &join(path, "privileged")).unwrap_or(false);
            if c.privileged {
                self.warn(
                    n,
                    &join(path, "privileged"),
                    "this job's containers run privileged",
                    "a privileged container can take over the host; drop it unless the job really needs it",
                );
            }
        }
        if let Some(n) = get(node, "node_labels") {
            c.node_labels = self
                .string_list(n, &join(path, "node_labels"))
                .into_iter()
                .map(|(s, _)| s)
                .collect();
        }
        if let Some(n) = get(node, "cap_drop") {
            c.cap_drop = self
                .string_list(n, &join(path, "cap_drop"))
                .into_iter()
                .map(|(s, _)| s)
                .collect();
        }
        if let Some(n) = get(node, "read_only_rootfs") {
            c.read_only_rootfs = self.boolean(n, &join(path, "read_only_rootfs")).unwrap_or(false);
        }
        if let Some(n) = get(node, "docker_socket") {
            c.docker_socket = self.boolean(n, &join(path, "docker_socket")).unwrap_or(false);
            if c.docker_socket {
                self.warn(
                    n,
                    &join(path, "docker_socket"),
                    "this job gets the host's Docker socket",
                    "whoever controls the job controls the host's Docker daemon",
                );
            }
        }
        c
    }
}
