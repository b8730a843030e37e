//! Where a GitHub job runs in containers: `container:` (one container for
//! the whole job, its steps run in it), `services:` (sidecars reachable by
//! their id on the job's network, or on 127.0.0.1 through their published
//! ports when the job runs on the host), and `--platform LABEL=IMAGE` (a
//! `runs-on` label's jobs in a container, as act's `-P`). Their
//! `options:` are `docker create` flags; [`docker_options`] reads the ones
//! trackside applies and names the rest.

use std::time::Duration;

use super::{IN_JOB, Known, Workflow, get, join};
use crate::pipeline::model::{ContainerHealth, ContainerOptions, Service};
use crate::pipeline::yaml::{Node, Value};

/// Keys of `container:` and of each service.
const CONTAINER_KEYS: [&str; 6] = ["image", "credentials", "env", "ports", "volumes", "options"];
const SERVICE_KEYS: [&str; 8] = [
    "image",
    "credentials",
    "env",
    "ports",
    "volumes",
    "options",
    "command",
    "entrypoint",
];

/// How long a service may take to be ready (healthy, else running).
const SERVICE_READY: Duration = Duration::from_secs(300);

/// A mistake in an `options:` string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct OptionsError {
    pub message: String,
    pub hint: String,
}

fn bad(message: impl Into<String>, hint: impl Into<String>) -> OptionsError {
    OptionsError {
        message: message.into(),
        hint: hint.into(),
    }
}

/// The flags [`docker_options`] applies.
pub const SUPPORTED_FLAGS: &str = "--health-cmd, --health-interval, --health-timeout, --health-retries, \
--health-start-period, -e/--env, --entrypoint, -u/--user, --cpus, -m/--memory, --pids-limit, --privileged, \
--cap-add, --cap-drop, --read-only, --network-alias, -h/--hostname, --tmpfs, --shm-size, --rm";

/// Reads `docker create` flags (GitHub's `options:`) into container
/// settings. Flags that would take the container off the job's network
/// or out of trackside's hands (`--network`, `--name`) are refused, as
/// GitHub refuses `--network`; unknown ones are named.
pub fn docker_options(text: &str, into: &mut ContainerOptions) -> Result<(), OptionsError> {
    let words = shlex::split(text).ok_or_else(|| {
        bad(
            "`options` has an unterminated quote",
            "close the quote: `--health-cmd \"pg_isready -U postgres\"`",
        )
    })?;
    let mut words = words.into_iter();
    while let Some(word) = words.next() {
        let (flag, inline) = match word.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (word.clone(), None),
        };
        let switch = matches!(flag.as_str(), "--privileged" | "--read-only" | "--rm");
        if !flag.starts_with('-') {
            return Err(bad(
                format!("`options`: `{word}` is not a flag"),
                "options are `docker create` flags, such as `--health-cmd \"redis-cli ping\"`",
            ));
        }
        // Named before a value is taken: an unknown flag is never read as
        // the value of the one before it.
        refused(&flag)?;
        let value = if switch {
            inline.unwrap_or_else(|| "true".into())
        } else {
            match inline.or_else(|| words.next()) {
                Some(v) => v,
                None => {
                    return Err(bad(
                        format!("`options`: `{flag}` needs a value"),
                        format!("write `{flag} VALUE`"),
                    ));
                }
            }
        };
        let duration = |v: &str| {
            humantime::parse_duration(v).map_err(|_| {
                bad(
                    format!("`options`: `{flag} {v}` is not a duration"),
                    "write a duration such as `10s` or `1m30s`",
                )
            })
        };
        let number = |v: &str| {
            v.parse::<u64>().map_err(|_| {
                bad(
                    format!("`options`: `{flag} {v}` is not a whole number"),
                    "write a number such as `5`",
                )
            })
        };
        let truth = |v: &str| match v {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err(bad(
                format!("`options`: `{flag}={v}`"),
                format!("write `{flag}` or `{flag}=false`"),
            )),
        };
        let x = &mut into.extras;
        match flag.as_str() {
            "--health-cmd" => x.health.get_or_insert_with(empty_health).command = value,
            "--health-interval" => x.health.get_or_insert_with(empty_health).interval = Some(duration(&value)?),
            "--health-timeout" => x.health.get_or_insert_with(empty_health).timeout = Some(duration(&value)?),
            "--health-start-period" => x.health.get_or_insert_with(empty_health).start_period = Some(duration(&value)?),
            "--health-retries" => {
                let n = u32::try_from(number(&value)?).unwrap_or(u32::MAX);
                x.health.get_or_insert_with(empty_health).retries = Some(n);
            }
            "-e" | "--env" => match value.split_once('=') {
                Some((k, v)) if !k.is_empty() => x.env.push((k.to_string(), v.to_string())),
                _ => {
                    return Err(bad(
                        format!("`options`: `{flag} {value}` takes no value from this machine"),
                        "write `-e NAME=value`, or put it under `env:`",
                    ));
                }
            },
            "--network-alias" => x.network_aliases.push(value),
            "-h" | "--hostname" => x.hostname = Some(value),
            "--cap-add" => x.cap_add.push(value),
            "--tmpfs" => x.tmpfs.push(value),
            "--shm-size" => x.shm_size = Some(docker_bytes(&flag, &value)?),
            "--entrypoint" => into.entrypoint = Some(vec![value]),
            "-u" | "--user" => into.user = Some(value),
            "--cpus" => {
                let cpus: f64 = value
                    .parse()
                    .ok()
                    .filter(|c: &f64| c.is_finite() && *c > 0.0)
                    .ok_or_else(|| {
                        bad(
                            format!("`options`: `--cpus {value}`"),
                            "write a number of CPUs such as `1.5`",
                        )
                    })?;
                into.cpus = Some(cpus);
            }
            "-m" | "--memory" => into.memory = Some(docker_bytes(&flag, &value)?),
            "--pids-limit" => into.pids = Some(i64::try_from(number(&value)?).unwrap_or(i64::MAX)),
            "--cap-drop" => into.cap_drop.push(value),
            "--privileged" => into.privileged = truth(&value)?,
            "--read-only" => into.read_only_rootfs = truth(&value)?,
            // Containers trackside makes are always removed.
            "--rm" => {}
            other => refused(other)?,
        }
    }
    if into.extras.health.as_ref().is_some_and(|h| h.command.is_empty()) {
        return Err(bad(
            "`options`: `--health-*` timings without `--health-cmd`",
            "add `--health-cmd \"...\"`, the command that says the container is ready",
        ));
    }
    Ok(())
}

/// The flags [`docker_options`] applies.
const KNOWN_FLAGS: [&str; 24] = [
    "--health-cmd",
    "--health-interval",
    "--health-timeout",
    "--health-retries",
    "--health-start-period",
    "-e",
    "--env",
    "--entrypoint",
    "-u",
    "--user",
    "--cpus",
    "-m",
    "--memory",
    "--pids-limit",
    "--privileged",
    "--cap-add",
    "--cap-drop",
    "--read-only",
    "--network-alias",
    "-h",
    "--hostname",
    "--tmpfs",
    "--shm-size",
    "--rm",
];

/// Why a flag is not applied, unless it is one [`docker_options`] applies.
fn refused(flag: &str) -> Result<(), OptionsError> {
    if KNOWN_FLAGS.contains(&flag) {
        return Ok(());
    }
    Err(match flag {
        "--network" | "--net" => bad(
            "`options`: `--network` is not supported",
            "a job's containers share a network of their own, as on GitHub; reach services by their id",
        ),
        "--name" => bad(
            "`options`: `--name` is not supported",
            "trackside names its containers; reach a service by its id, or add `--network-alias`",
        ),
        "-v" | "--volume" | "--mount" => bad(
            format!("`options`: `{flag}` is not applied here"),
            "list the volumes under `volumes:` (`- /host/path:/path`)",
        ),
        "-p" | "--publish" => bad(
            format!("`options`: `{flag}` is not applied here"),
            "list the ports under `ports:` (`- 8080:80`)",
        ),
        "--env-file" => bad(
            "`options`: `--env-file` is not applied",
            "set the variables under `env:` (a file on this machine is not the workflow's)",
        ),
        other => bad(
            format!("`options`: trackside does not apply `{other}`"),
            format!("the flags it applies: {SUPPORTED_FLAGS}"),
        ),
    })
}

fn empty_health() -> ContainerHealth {
    ContainerHealth {
        command: String::new(),
        interval: None,
        timeout: None,
        retries: None,
        start_period: None,
    }
}

/// Docker's sizes: a number with `b`, `k`, `m` or `g` (powers of 1024).
fn docker_bytes(flag: &str, value: &str) -> Result<u64, OptionsError> {
    let v = value.trim().to_ascii_lowercase();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let shift = match unit {
        "" | "b" => 0,
        "k" | "kb" => 10,
        "m" | "mb" => 20,
        "g" | "gb" => 30,
        _ => 64,
    };
    num.parse::<u64>()
        .ok()
        .filter(|_| shift < 64)
        .and_then(|n| n.checked_mul(1u64 << shift))
        .ok_or_else(|| {
            bad(
                format!("`options`: `{flag} {value}` is not a size"),
                "write a size such as `512m` or `2g`",
            )
        })
}

/// One container as the workflow describes it: its image and settings;
/// `None` image: an empty `image:` (no container, as GitHub has it).
struct Described {
    image: Option<String>,
    options: ContainerOptions,
    command: Option<Vec<String>>,
}

/// GitHub's default shell in a container: bash when the image has it,
/// else sh (the runner's fallback), both `-e`.
const DEFAULT_SHELL_IN_CONTAINER: [&str; 5] = [
    "sh",
    "-c",
    "if command -v bash >/dev/null 2>&1; then exec bash -e \"$1\"; else exec sh -e \"$1\"; fi",
    "sh",
    "{0}",
];

/// Puts a job's steps in its container (`boxed`: the image and settings):
/// its `run` steps run there, GitHub's default shell falling back to sh;
/// trackside's own steps (cache, artifacts) and JavaScript actions (on the
/// host's node) stay on the host, in the same workspace.
pub(super) fn in_container(
    mut steps: Vec<crate::pipeline::model::Step>,
    boxed: Option<(String, ContainerOptions)>,
) -> (Vec<crate::pipeline::model::Step>, ContainerOptions) {
    let Some((image, options)) = boxed else {
        return (steps, ContainerOptions::default());
    };
    let default_shell = ["bash", "-e", "{0}"];
    for step in steps.iter_mut().filter(|s| s.builtin.is_none() && !s.inputs_env) {
        step.image = Some(image.clone());
        if step.shell.as_ref().is_some_and(|s| s.iter().eq(default_shell.iter())) {
            step.shell = Some(DEFAULT_SHELL_IN_CONTAINER.iter().map(|s| s.to_string()).collect());
        }
    }
    (steps, options)
}

impl Workflow<'_, '_> {
    /// The `--platform` image for a job that `runs-on` these labels
    /// (`a, b` for a list): the first label that has one.
    pub(super) fn platform_for(&self, runs_on: &str) -> Option<String> {
        runs_on
            .split(", ")
            .find_map(|label| self.platforms.iter().find(|(l, _)| l == label.trim()))
            .map(|(_, image)| image.clone())
            // `-self-hosted` (an empty image): on this machine.
            .filter(|image| !image.is_empty())
    }

    /// `container:` — an image, or `{image, credentials, env, ports,
    /// volumes, options}`. `Some(None)`: no container (an empty image).
    pub(super) fn container(
        &mut self,
        node: &Node,
        path: &str,
        known: &Known,
    ) -> Option<Option<(String, ContainerOptions)>> {
        let d = self.described(node, path, known, &CONTAINER_KEYS, "`container`")?;
        let mut options = d.options;
        options.job_container = true;
        Some(d.image.map(|i| (i, options)))
    }

    /// `services:` — each id (its host name on the job's network) with an
    /// image or the same mapping as `container:`. A service whose image is
    /// empty is not started.
    pub(super) fn services(&mut self, node: &Node, path: &str, known: &Known) -> Option<Vec<Service>> {
        let Value::Map(items) = &node.value else {
            self.cx.err(
                node,
                path,
                format!("`services` must be a mapping, found {}", node.type_name()),
                "write `services: {redis: {image: redis:7}}`",
            );
            return None;
        };
        let mut out = Vec::new();
        let mut ok = true;
        for (k, v) in items {
            let id = k.key_text();
            let spath = join(path, &id);
            let valid = id.starts_with(|c: char| c.is_ascii_alphanumeric())
                && id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
            if !valid {
                self.cx.err(
                    k,
                    &spath,
                    format!("invalid service id `{id}`"),
                    "a service id is its host name: letters, digits, `-`, `_` and `.`",
                );
                ok = false;
                continue;
            }
            let Some(d) = self.described(v, &spath, known, &SERVICE_KEYS, &format!("service `{id}`")) else {
                ok = false;
                continue;
            };
            let Some(image) = d.image else { continue };
            let mut options = d.options;
            let environment = std::mem::take(&mut options.extras.env)
                .into_iter()
                .map(|(name, value)| crate::pipeline::model::EnvVar {
                    name,
                    // Literal: a service's values are not expanded (but
                    // for the `${{ }}` the run evaluates).
                    value: value.replace('$', "$$").replace("$${{", "${{"),
                    pos: v.pos,
                })
                .collect();
            let entrypoint = options.entrypoint.take();
            out.push(Service {
                name: id,
                aliases: Vec::new(),
                image,
                entrypoint,
                // Ready once healthy (`--health-cmd`), else once running.
                port: None,
                environment,
                command: d.command,
                ready_timeout: SERVICE_READY,
                options,
            });
        }
        ok.then_some(out)
    }

    fn described(&mut self, node: &Node, path: &str, known: &Known, keys: &[&str], what: &str) -> Option<Described> {
        let mut d = Described {
            image: None,
            options: ContainerOptions::default(),
            command: None,
        };
        let image_node = match &node.value {
            Value::Map(_) => {
                if !self.cx.mapping(node, path, keys, what) {
                    return None;
                }
                match get(node, "image") {
                    Some(n) => n,
                    None => {
                        self.cx.err(
                            node,
                            path,
                            format!("{what} has no `image`"),
                            "write `image: node:20` (an empty image runs nothing in a container)",
                        );
                        return None;
                    }
                }
            }
            Value::Str(_) => node,
            _ => {
                self.cx.err(
                    node,
                    path,
                    format!("{what} must be an image or a mapping, found {}", node.type_name()),
                    "write `node:20`, or `{image: node:20, options: --cpus 1}`",
                );
                return None;
            }
        };
        let ipath = if matches!(node.value, Value::Map(_)) {
            join(path, "image")
        } else {
            path.to_string()
        };
        let raw = self.cx.string(image_node, &ipath)?;
        let image = self.value(&raw, image_node, &ipath, known, IN_JOB)?;
        let image = image.trim();
        // `docker://` is how GitHub's docs sometimes write an image.
        let image = image.strip_prefix("docker://").unwrap_or(image);
        d.image = (!image.is_empty()).then(|| image.to_string());
        let mut ok = true;
        if let Some(n) = get(node, "env").filter(|_| matches!(node.value, Value::Map(_))) {
            // What the run knows (`secrets`, `needs`) stays `${{ }}` for it.
            let vars = self.env(n, &join(path, "env"), known, IN_JOB);
            for v in vars {
                d.options.extras.env.push((v.name, v.value.replace("$$", "$")));
            }
        }
        let Value::Map(_) = &node.value else {
            return ok.then_some(d);
        };
        for (key, list) in [("ports", 0), ("volumes", 1)] {
            let Some(n) = get(node, key) else { continue };
            let kpath = join(path, key);
            for (text, item) in self.cx.string_seq(n, &kpath) {
                let Some(text) = self.value(&text, &item, &kpath, known, IN_JOB) else {
                    ok = false;
                    continue;
                };
                let valid = if list == 0 {
                    valid_port(&text)
                } else {
                    valid_volume(&text)
                };
                if let Err(hint) = valid {
                    self.cx
                        .err(&item, &kpath, format!("invalid {key} entry `{text}`"), hint);
                    ok = false;
                    continue;
                }
                let x = &mut d.options.extras;
                if list == 0 {
                    x.ports.push(text);
                } else {
                    x.volumes.push(text);
                }
            }
        }
        if let Some(n) = get(node, "options") {
            let opath = join(path, "options");
            if let Some(text) = self.cx.string(n, &opath)
                && let Some(text) = self.value(&text, n, &opath, known, IN_JOB)
            {
                let mut env_before = std::mem::take(&mut d.options.extras.env);
                if let Err(e) = docker_options(&text, &mut d.options) {
                    self.cx.err(n, &opath, e.message, e.hint);
                    ok = false;
                }
                // `env:` wins over `-e` of the options.
                let from_options = std::mem::take(&mut d.options.extras.env);
                for (k, v) in from_options {
                    if !env_before.iter().any(|(e, _)| *e == k) {
                        env_before.push((k, v));
                    }
                }
                d.options.extras.env = env_before;
            } else {
                ok = false;
            }
        }
        for (key, is_command) in [("command", true), ("entrypoint", false)] {
            let Some(n) = get(node, key) else { continue };
            let kpath = join(path, key);
            let Some(text) = self
                .cx
                .string(n, &kpath)
                .and_then(|t| self.value(&t, n, &kpath, known, IN_JOB))
            else {
                ok = false;
                continue;
            };
            match shlex::split(&text) {
                Some(words) if !words.is_empty() => {
                    if is_command {
                        d.command = Some(words);
                    } else {
                        d.options.entrypoint = Some(words);
                    }
                }
                _ => {
                    self.cx.err(
                        n,
                        &kpath,
                        format!("invalid `{key}`: `{text}`"),
                        "write the command line, quotes closed",
                    );
                    ok = false;
                }
            }
        }
        if let Some(n) = get(node, "credentials") {
            match self.credentials(n, &join(path, "credentials"), known) {
                Some((user, password)) => {
                    d.options.extras.credentials = Some(crate::pipeline::model::Credentials(user, password))
                }
                None => ok = false,
            }
        }
        ok.then_some(d)
    }

    /// `credentials: {username, password}` for pulling the image; a
    /// `${{ secrets.X }}` in them is read as the job starts.
    fn credentials(&mut self, node: &Node, path: &str, known: &Known) -> Option<(String, String)> {
        if !self.cx.mapping(node, path, &["username", "password"], "`credentials`") {
            return None;
        }
        let mut field = |key: &str| {
            let kpath = join(path, key);
            let Some(n) = get(node, key) else {
                self.cx.err(
                    node,
                    path,
                    format!("`credentials` has no `{key}`"),
                    "write `credentials: {username: ${{ github.actor }}, password: ${{ secrets.REGISTRY_TOKEN }}}`",
                );
                return None;
            };
            let raw = self.cx.string(n, &kpath)?;
            self.text_with(&raw, n, &kpath, known, IN_JOB, false)
        };
        let username = field("username");
        let password = field("password");
        Some((username?, password?))
    }
}

/// `[ip:][host:]container[/tcp|udp]`, each port a number (ranges too).
fn valid_port(text: &str) -> Result<(), String> {
    let (ports, proto) = match text.rsplit_once('/') {
        Some((p, proto)) => (p, Some(proto)),
        None => (text, None),
    };
    let proto_ok = matches!(proto, None | Some("tcp") | Some("udp") | Some("sctp"));
    let parts: Vec<&str> = ports.split(':').collect();
    let nums = match parts.as_slice() {
        [c] => vec![*c],
        [h, c] => vec![*h, *c],
        [_ip, h, c] => vec![*h, *c],
        _ => Vec::new(),
    };
    let number = |p: &str| p.is_empty() || p.split('-').all(|n| n.parse::<u16>().is_ok_and(|n| n > 0));
    let last_ok = nums.last().is_some_and(|c| !c.is_empty() && number(c));
    if proto_ok && last_ok && nums.iter().all(|n| number(n)) {
        Ok(())
    } else {
        Err("write `5432` (a free host port is picked) or `8080:80` (host:container)".into())
    }
}

/// `/path`, `name:/path` or `/host/path:/path`, with `:ro`/`:rw`.
fn valid_volume(text: &str) -> Result<(), String> {
    let parts: Vec<&str> = text.split(':').collect();
    let dest = match parts.as_slice() {
        [d] => Some(*d),
        [_, d] => Some(*d),
        [_, d, mode] if matches!(*mode, "ro" | "rw" | "z" | "Z") => Some(*d),
        _ => None,
    };
    match dest {
        Some(d) if d.starts_with('/') => Ok(()),
        _ => Err("write `/path` (a new volume), `NAME:/path` or `/host/path:/path[:ro]`".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_flags_and_limits_are_read_as_docker_reads_them() {
        let mut o = ContainerOptions::default();
        docker_options(
            "--health-cmd \"pg_isready -U postgres\" --health-interval=10s --health-timeout 5s --health-retries 5 \
             --cpus 1.5 -m 512m -e A=1 --env=B=two --user 1000:1000 --privileged --rm --network-alias db",
            &mut o,
        )
        .unwrap();
        let h = o.extras.health.as_ref().unwrap();
        assert_eq!(h.command, "pg_isready -U postgres");
        assert_eq!(h.interval, Some(Duration::from_secs(10)));
        assert_eq!(h.timeout, Some(Duration::from_secs(5)));
        assert_eq!(h.retries, Some(5));
        assert_eq!(o.cpus, Some(1.5));
        assert_eq!(o.memory, Some(512 << 20));
        assert_eq!(o.extras.env, vec![("A".into(), "1".into()), ("B".into(), "two".into())]);
        assert_eq!(o.user.as_deref(), Some("1000:1000"));
        assert!(o.privileged);
        assert_eq!(o.extras.network_aliases, vec!["db".to_string()]);
    }

    #[test]
    fn options_trackside_does_not_apply_are_named() {
        let err = |t: &str| {
            let mut o = ContainerOptions::default();
            docker_options(t, &mut o).unwrap_err().message
        };
        assert!(err("--network host").contains("--network"));
        assert!(err("--name db").contains("--name"));
        assert!(err("--device /dev/kvm").contains("`--device`"));
        assert!(
            err("--cpus 1 --init").contains("does not apply `--init`"),
            "not read as a value"
        );
        assert!(err("--health-cmd x --health-interval abc").contains("is not a duration"));
        assert!(err("-v /a:/b").contains("`-v` is not applied here"));
        assert!(err("--health-cmd").contains("needs a value"));
        assert!(err("--health-cmd 'unterminated").contains("unterminated"));
        assert!(err("--health-retries many").contains("whole number"));
        assert!(err("--health-interval 10s").contains("without `--health-cmd`"));
        assert!(err("-e HOME").contains("takes no value"));
        assert!(err("-m lots").contains("size"));
        assert!(err("postgres").contains("not a flag"));
    }

    #[test]
    fn ports_and_volumes_are_checked_as_docker_writes_them() {
        for ok in [
            "5432",
            "8080:80",
            "127.0.0.1:8080:80",
            "53/udp",
            "9000-9002:9000-9002",
            ":80",
        ] {
            assert!(valid_port(ok).is_ok(), "{ok}");
        }
        for bad in ["http", "80:", "0", "8080:80/icmp", "1:2:3:4"] {
            assert!(valid_port(bad).is_err(), "{bad}");
        }
        for ok in ["/data", "cache:/root/.cache", "/src:/src:ro"] {
            assert!(valid_volume(ok).is_ok(), "{ok}");
        }
        for bad in ["data", "cache:rel", "/a:/b:sometimes"] {
            assert!(valid_volume(bad).is_err(), "{bad}");
        }
    }
}
