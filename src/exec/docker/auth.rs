//! Registry logins for the images trackside pulls.
//!
//! The Docker daemon keeps no login of its own: `docker login` writes the
//! client's `config.json`, and every client sends the credentials with
//! each pull. trackside does what the Docker CLI and GitLab Runner do, in
//! this order, the first that knows the image's registry winning:
//!
//! 1. the job's own credentials for that image (GitHub's `credentials:`);
//! 2. `DOCKER_AUTH_CONFIG` among the job's variables (GitLab's way: the
//!    contents of a `config.json`);
//! 3. `DOCKER_AUTH_CONFIG` in trackside's environment;
//! 4. the client configuration, `$DOCKER_CONFIG/config.json` or
//!    `~/.docker/config.json`.
//!
//! In a configuration, `credHelpers` (per registry) and `credsStore`
//! name a credential helper (`docker-credential-NAME get`, the registry
//! on its standard input), else `auths` holds the login (`auth` is
//! base64 of `user:password`; `identitytoken` an OAuth refresh token).
//! A configuration file or helper that another user can write to is not
//! trusted. No secret is logged, shown or put on a command line.

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The largest configuration read, and the most a helper may answer.
const MAX_CONFIG: u64 = 1 << 20;
const MAX_HELPER_ANSWER: u64 = 64 << 10;
/// How long a credential helper may take (it may ask a keychain).
const HELPER_TIMEOUT: Duration = Duration::from_secs(30);
/// Docker Hub's key in configurations and helpers.
const HUB_KEY: &str = "https://index.docker.io/v1/";

/// What a job says about logins for the images it pulls.
#[derive(Clone, Default, PartialEq)]
pub struct JobLogins {
    /// User and password for this image (GitHub's `credentials:`).
    pub credentials: Option<(String, String)>,
    /// The job's `DOCKER_AUTH_CONFIG` variable.
    pub auth_config: Option<String>,
}

impl std::fmt::Debug for JobLogins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobLogins")
            .field("credentials", &self.credentials.as_ref().map(|(u, _)| (u, "***")))
            .field("auth_config", &self.auth_config.as_ref().map(|_| "***"))
            .finish()
    }
}

/// Where logins come from besides the job: trackside's environment.
#[derive(Clone, Default)]
pub struct Sources {
    /// `DOCKER_AUTH_CONFIG` of trackside's environment.
    pub auth_config: Option<String>,
    /// The folder of the client's `config.json`.
    pub config_dir: Option<PathBuf>,
    /// Where credential helpers are looked for.
    pub path: Option<OsString>,
}

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sources")
            .field("auth_config", &self.auth_config.as_ref().map(|_| "***"))
            .field("config_dir", &self.config_dir)
            .finish()
    }
}

impl Sources {
    /// As the Docker CLI finds them: `DOCKER_CONFIG`, else `~/.docker`.
    pub fn from_env() -> Sources {
        let config_dir = std::env::var_os("DOCKER_CONFIG")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .or_else(|| directories::BaseDirs::new().map(|b| b.home_dir().join(".docker")));
        Sources {
            auth_config: std::env::var("DOCKER_AUTH_CONFIG")
                .ok()
                .filter(|c| !c.trim().is_empty()),
            config_dir,
            path: std::env::var_os("PATH"),
        }
    }
}

/// A login for one registry.
#[derive(Clone, PartialEq)]
pub struct Login {
    /// The registry as its helpers and the daemon know it
    /// (`https://index.docker.io/v1/` for Docker Hub, else `host[:port]`).
    pub server: String,
    pub username: String,
    pub secret: Secret,
    /// Where it came from, for messages (`~/.docker/config.json`, ...).
    pub source: String,
}

#[derive(Clone, PartialEq)]
pub enum Secret {
    Password(String),
    /// An OAuth refresh token (`identitytoken`, or a helper's `<token>` user).
    IdentityToken(String),
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Secret::Password(_) => f.write_str("Password(***)"),
            Secret::IdentityToken(_) => f.write_str("IdentityToken(***)"),
        }
    }
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.secret {
            Secret::Password(_) => "password",
            Secret::IdentityToken(_) => "identity token",
        };
        write!(
            f,
            "Login({} as {} with a {kind} from {})",
            self.server, self.username, self.source
        )
    }
}

impl Login {
    /// The credentials bollard sends with a pull (`X-Registry-Auth`).
    pub fn to_docker(&self) -> bollard::auth::DockerCredentials {
        let (password, identitytoken) = match &self.secret {
            Secret::Password(p) => (Some(p.clone()), None),
            Secret::IdentityToken(t) => (None, Some(t.clone())),
        };
        bollard::auth::DockerCredentials {
            username: (!self.username.is_empty()).then(|| self.username.clone()),
            password,
            identitytoken,
            serveraddress: Some(self.server.clone()),
            ..Default::default()
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(
        "{source_name} is not valid: {message}; it holds the contents of a Docker config.json, such as {{\"auths\": {{\"registry.example.com\": {{\"auth\": \"<base64 of user:password>\"}}}}}}"
    )]
    Config { source_name: String, message: String },
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{} is not trusted: {why}; fix its owner or mode (`chmod go-w`) or set DOCKER_CONFIG to a folder of your own", path.display())]
    Untrusted { path: PathBuf, why: String },
    #[error(
        "the login for {server} in {source_name} has an `auth` that is not base64 of `user:password`; run `docker login {server}` again"
    )]
    BadAuth { server: String, source_name: String },
    #[error("credential helper `docker-credential-{helper}` (named by {source_name}) {problem}")]
    Helper {
        helper: String,
        source_name: String,
        problem: String,
    },
}

/// The registry an image comes from, as Docker reads a reference:
/// `docker.io` unless the first path component looks like a host (has a
/// `.` or `:`, is `localhost`, or has capitals).
pub fn registry_of(image: &str) -> String {
    let image = image.strip_prefix("docker://").unwrap_or(image);
    match image.split_once('/') {
        Some((first, _))
            if first.contains(['.', ':']) || first == "localhost" || first.chars().any(|c| c.is_ascii_uppercase()) =>
        {
            if is_hub(first) {
                "docker.io".into()
            } else {
                first.to_string()
            }
        }
        _ => "docker.io".into(),
    }
}

fn is_hub(host: &str) -> bool {
    matches!(host, "docker.io" | "index.docker.io" | "registry-1.docker.io")
}

/// The host of a configuration key (`https://host/v1/` -> `host`), as
/// the Docker CLI compares them.
fn key_host(key: &str) -> &str {
    let k = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    k.split('/').next().unwrap_or(k)
}

fn same_registry(key: &str, registry: &str) -> bool {
    let host = key_host(key).to_ascii_lowercase();
    host == registry.to_ascii_lowercase() || (registry == "docker.io" && is_hub(&host))
}

/// How closely an `auths` key's scope holds the image: `None` when it is
/// another registry or another path, else the length of its path
/// (`registry.example.com/group-a` holds `registry.example.com/group-a/app`
/// with 7; a bare host holds every image of it with 0). Docker's API
/// suffixes (`/v1/`, `/v2/`) are no path.
fn key_scope_match(key: &str, want: &Want<'_>) -> Option<usize> {
    if !same_registry(key, want.registry) {
        return None;
    }
    let k = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let path = k.split_once('/').map_or("", |(_, p)| p).trim_matches('/');
    if path.is_empty() || path == "v1" || path == "v2" {
        return Some(0);
    }
    let image_path = want.repo.split_once('/').map_or("", |(_, p)| p);
    let inside = image_path == path || image_path.strip_prefix(path).is_some_and(|r| r.starts_with('/'));
    inside.then_some(path.len())
}

/// What the sources say for one image: the login, if one knows the
/// registry, and the sources that were passed over and why (a bad
/// configuration, a failing helper). A pull goes on without them, as
/// GitLab Runner's does; a pull that then fails says so.
#[derive(Debug, Default)]
pub struct Resolved {
    pub login: Option<Login>,
    pub ignored: Vec<String>,
}

/// The login for `image`'s registry, if any source has one.
pub async fn login_for(image: &str, job: &JobLogins, sources: &Sources) -> Resolved {
    let registry = registry_of(image);
    let repo = repository_of(image);
    let server = if registry == "docker.io" {
        HUB_KEY.to_string()
    } else {
        registry.clone()
    };
    let mut out = Resolved::default();
    // As GitHub's runner: credentials count only when both are given (a
    // secret missing in a fork or a local run leaves them empty).
    if let Some((user, password)) = job.credentials.as_ref().filter(|(u, p)| !u.is_empty() && !p.is_empty()) {
        out.login = Some(Login {
            server,
            username: user.clone(),
            secret: Secret::Password(password.clone()),
            source: "the job's `credentials`".into(),
        });
        return out;
    }
    let want = Want {
        registry: &registry,
        repo: &repo,
        server: &server,
    };
    let envs = [
        (
            job.auth_config.as_deref(),
            "the job's DOCKER_AUTH_CONFIG variable".to_string(),
        ),
        (
            sources.auth_config.as_deref(),
            "DOCKER_AUTH_CONFIG of trackside's environment".to_string(),
        ),
    ];
    let file = sources.config_dir.as_ref().map(|d| d.join("config.json"));
    let file_text = match file.as_deref().map(read_trusted) {
        Some(Ok(text)) => text,
        Some(Err(e)) => {
            out.ignored.push(e.to_string());
            None
        }
        None => None,
    };
    let file_name = file.map(|p| p.display().to_string()).unwrap_or_default();
    let all = envs
        .into_iter()
        .chain([(file_text.as_deref(), file_name)])
        .filter_map(|(text, name)| Some((text?, name)));
    for (text, name) in all {
        let found = match Config::parse(text, &name) {
            Ok(config) => config.login(&want, &name, sources).await,
            Err(e) => Err(e),
        };
        match found {
            Ok(Some(login)) => {
                out.login = Some(login);
                return out;
            }
            Ok(None) => {}
            Err(e) => out.ignored.push(e.to_string()),
        }
    }
    out
}

/// What one pull looks for in a configuration.
struct Want<'a> {
    /// `docker.io` or `host[:port]`.
    registry: &'a str,
    /// `host/path/name`, without tag or digest (`docker.io/library/busybox`).
    repo: &'a str,
    /// How helpers and the daemon name the registry.
    server: &'a str,
}

/// The repository an image names, with its registry and without its tag
/// or digest: `docker.io/library/busybox`, `ghcr.io/me/app`.
pub fn repository_of(image: &str) -> String {
    let image = image.strip_prefix("docker://").unwrap_or(image);
    let registry = registry_of(image);
    let rest = match image.split_once('/') {
        Some((first, rest)) if registry != "docker.io" || is_hub(first) => rest,
        _ => image,
    };
    let rest = rest.split('@').next().unwrap_or(rest);
    // A tag is after the last `:` that comes after the last `/`.
    let rest = match rest.rfind(':') {
        Some(at) if !rest[at..].contains('/') => &rest[..at],
        _ => rest,
    };
    let rest = if registry == "docker.io" && !rest.contains('/') {
        format!("library/{rest}")
    } else {
        rest.to_string()
    };
    format!("{registry}/{rest}")
}

/// A configuration file's text; `None` when there is none. Refused when
/// someone else owns it or may write to it (it names programs to run).
fn read_trusted(path: &Path) -> Result<Option<String>, AuthError> {
    let read_err = |source| AuthError::Read {
        path: path.to_path_buf(),
        source,
    };
    // What was opened is what is checked and read (not a file swapped in
    // between).
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(read_err(e)),
    };
    let meta = file.metadata().map_err(read_err)?;
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(AuthError::Untrusted {
            path: path.to_path_buf(),
            why: format!("it belongs to uid {}, not to you (uid {me})", meta.uid()),
        });
    }
    if meta.mode() & 0o022 != 0 {
        return Err(AuthError::Untrusted {
            path: path.to_path_buf(),
            why: "other users may write to it".into(),
        });
    }
    if meta.len() > MAX_CONFIG {
        return Err(read_err(std::io::Error::other(format!(
            "it is {} bytes, more than the {MAX_CONFIG} a configuration may be",
            meta.len()
        ))));
    }
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::io::Read::take(&mut file, MAX_CONFIG), &mut text).map_err(read_err)?;
    Ok(Some(text))
}

#[derive(Debug, Default, serde::Deserialize)]
struct Config {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: HashMap<String, String>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
}

#[derive(Default, serde::Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

impl std::fmt::Debug for AuthEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuthEntry(***)")
    }
}

impl Config {
    fn parse(text: &str, name: &str) -> Result<Config, AuthError> {
        // Where and what kind, never serde's text: it quotes the value,
        // which may be a credential.
        serde_json::from_str(text).map_err(|e| AuthError::Config {
            source_name: name.to_string(),
            message: format!(
                "{} at line {} column {}",
                match e.classify() {
                    serde_json::error::Category::Data => "not the shape of a config.json",
                    serde_json::error::Category::Eof => "it ends early",
                    _ => "not JSON",
                },
                e.line(),
                e.column()
            ),
        })
    }

    async fn login(&self, want: &Want<'_>, name: &str, sources: &Sources) -> Result<Option<Login>, AuthError> {
        let server = want.server;
        // The exact key first, then any spelling of the same host.
        let helper = self
            .cred_helpers
            .get(server)
            .or_else(|| {
                self.cred_helpers
                    .iter()
                    .find(|(k, _)| same_registry(k, want.registry))
                    .map(|(_, h)| h)
            })
            .or(self.creds_store.as_ref())
            .filter(|h| !h.is_empty());
        if let Some(helper) = helper
            && let Some(login) = from_helper(helper, server, name, sources).await?
        {
            return Ok(Some(login));
        }
        // The key whose scope holds the image most closely (the exact key
        // first among equals): GitLab Runner's
        // `registry.example.com/group-a` takes `group-a`'s images only.
        let entry = self
            .auths
            .iter()
            .filter_map(|(k, e)| Some(((key_scope_match(k, want)?, k == server), k, e)))
            .max_by(|a, b| a.0.cmp(&b.0).then_with(|| b.1.cmp(a.1)))
            .map(|(_, _, e)| e);
        let Some(entry) = entry else { return Ok(None) };
        let mut username = entry.username.clone().unwrap_or_default();
        let mut password = entry.password.clone();
        if let Some(auth) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
            let bad = || AuthError::BadAuth {
                server: server.to_string(),
                source_name: name.to_string(),
            };
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .map_err(|_| bad())?;
            let text = String::from_utf8(bytes).map_err(|_| bad())?;
            let (u, p) = text.split_once(':').ok_or_else(bad)?;
            username = u.to_string();
            password = Some(p.to_string());
        }
        let secret = match (entry.identitytoken.as_deref().filter(|t| !t.is_empty()), password) {
            (Some(token), _) => Secret::IdentityToken(token.to_string()),
            (None, Some(p)) => Secret::Password(p),
            // An empty entry (what `credsStore` leaves in `auths`).
            (None, None) => return Ok(None),
        };
        Ok(Some(Login {
            server: server.to_string(),
            username,
            secret,
            source: name.to_string(),
        }))
    }
}

#[derive(serde::Deserialize)]
struct HelperAnswer {
    #[serde(rename = "Username", default)]
    username: String,
    #[serde(rename = "Secret", default)]
    secret: String,
}

/// Asks `docker-credential-<helper> get` for `server`'s login. `None`
/// when it has none.
async fn from_helper(helper: &str, server: &str, name: &str, sources: &Sources) -> Result<Option<Login>, AuthError> {
    let fail = |problem: String| AuthError::Helper {
        helper: helper.to_string(),
        source_name: name.to_string(),
        problem,
    };
    if !helper
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(fail("is not a helper name (letters, digits, `-`, `_` and `.`)".into()));
    }
    let program = format!("docker-credential-{helper}");
    let Some(exe) = crate::process::find_program(&program, sources.path.as_deref()) else {
        return Err(fail(
            "is not on PATH; install it, or remove it from the configuration and run `docker login`".into(),
        ));
    };
    // The program and the folders it is found in and lives in (through
    // any link) must be its user's or root's, and closed to other writers.
    let real = std::fs::canonicalize(&exe).map_err(|e| fail(format!("cannot be read: {e}")))?;
    let me = nix::unistd::geteuid().as_raw();
    let guarded =
        |p: &Path| std::fs::metadata(p).is_ok_and(|m| (m.uid() == me || m.uid() == 0) && m.mode() & 0o022 == 0);
    let places = [Some(real.as_path()), real.parent(), exe.parent()];
    if let Some(open) = places.into_iter().flatten().find(|p| !guarded(p)) {
        return Err(fail(format!(
            "at {} is not trusted: other users may write to {}",
            exe.display(),
            open.display()
        )));
    }
    let mut child = tokio::process::Command::new(&real)
        .arg("get")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| fail(format!("cannot start: {e}")))?;
    let (Some(mut stdin), Some(stdout), Some(stderr)) = (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err(fail("started without its pipes".into()));
    };
    let talk = async {
        // A helper that exits without reading gives a broken pipe: its
        // exit status then says what happened.
        let _ = stdin.write_all(server.as_bytes()).await;
        drop(stdin);
        let mut out = Vec::new();
        let mut err = Vec::new();
        let (mut stdout, mut stderr) = (stdout.take(MAX_HELPER_ANSWER), stderr.take(MAX_HELPER_ANSWER));
        let (a, b) = tokio::join!(stdout.read_to_end(&mut out), stderr.read_to_end(&mut err));
        a.and(b)?;
        let status = child.wait().await?;
        Ok::<_, std::io::Error>((status, out, err))
    };
    let (status, out, err) = tokio::time::timeout(HELPER_TIMEOUT, talk)
        .await
        .map_err(|_| fail(format!("did not answer within {} s", HELPER_TIMEOUT.as_secs())))?
        .map_err(|e| fail(format!("failed: {e}")))?;
    let said = |bytes: &[u8]| {
        let text = String::from_utf8_lossy(bytes);
        let text = text.trim();
        text.chars().take(300).collect::<String>()
    };
    if !status.success() {
        let message = [said(&out), said(&err)].join(" ");
        // What every helper says for a registry it holds nothing for.
        if message.contains("credentials not found") {
            return Ok(None);
        }
        return Err(fail(format!("failed ({status}): {}", message.trim())));
    }
    let answer: HelperAnswer =
        serde_json::from_slice(&out).map_err(|e| fail(format!("answered something that is not its JSON: {e}")))?;
    if answer.secret.is_empty() {
        return Ok(None);
    }
    let (username, secret) = if answer.username == "<token>" {
        (String::new(), Secret::IdentityToken(answer.secret))
    } else {
        (answer.username, Secret::Password(answer.secret))
    };
    Ok(Some(Login {
        server: server.to_string(),
        username,
        secret,
        source: format!("{name} (docker-credential-{helper})"),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    fn sources(dir: &Path) -> Sources {
        Sources {
            auth_config: None,
            config_dir: Some(dir.to_path_buf()),
            path: Some(dir.as_os_str().to_owned()),
        }
    }

    fn write_private(path: &Path, text: &str) {
        std::fs::write(path, text).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    fn password(l: &Login) -> &str {
        match &l.secret {
            Secret::Password(p) => p,
            Secret::IdentityToken(t) => t,
        }
    }

    #[test]
    fn registries_are_read_from_references_as_docker_reads_them() {
        for (image, registry) in [
            ("busybox", "docker.io"),
            ("library/busybox:1", "docker.io"),
            ("me/app@sha256:abc", "docker.io"),
            ("docker.io/me/app", "docker.io"),
            ("index.docker.io/me/app", "docker.io"),
            ("ghcr.io/me/app:1", "ghcr.io"),
            ("localhost/app", "localhost"),
            ("127.0.0.1:5000/app:1", "127.0.0.1:5000"),
            ("registry:5000/app", "registry:5000"),
            ("docker://ghcr.io/x/y", "ghcr.io"),
        ] {
            assert_eq!(registry_of(image), registry, "{image}");
        }
    }

    #[tokio::test]
    async fn a_login_is_found_under_any_spelling_of_its_registry() {
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            r#"{{"auths": {{
                "https://index.docker.io/v1/": {{"auth": "{}"}},
                "https://ghcr.io/v2/": {{"username": "gh", "password": "p2"}},
                "reg.local:5000": {{"identitytoken": "tok"}},
                "empty.example": {{}}
            }}}}"#,
            b64("hub:p:1")
        );
        write_private(&dir.path().join("config.json"), &config);
        let s = sources(dir.path());
        let none = JobLogins::default();
        let hub = login_for("busybox", &none, &s).await.login.unwrap();
        assert_eq!(
            (hub.server.as_str(), hub.username.as_str(), password(&hub)),
            (HUB_KEY, "hub", "p:1")
        );
        let gh = login_for("ghcr.io/me/app", &none, &s).await.login.unwrap();
        assert_eq!(
            (gh.server.as_str(), gh.username.as_str(), password(&gh)),
            ("ghcr.io", "gh", "p2")
        );
        let tok = login_for("reg.local:5000/app", &none, &s).await.login.unwrap();
        assert_eq!(tok.secret, Secret::IdentityToken("tok".into()));
        assert_eq!(tok.to_docker().identitytoken.as_deref(), Some("tok"));
        assert!(login_for("empty.example/app", &none, &s).await.login.is_none());
        assert!(login_for("quay.io/app", &none, &s).await.login.is_none());
        // Nothing secret in what Debug shows.
        let shown = format!(
            "{hub:?} {:?}",
            JobLogins {
                credentials: Some(("u".into(), "hunter2".into())),
                auth_config: Some("x".into())
            }
        );
        assert!(!shown.contains("p:1") && !shown.contains("hunter2"), "{shown}");
    }

    #[tokio::test]
    async fn the_job_comes_first_then_its_auth_config_then_trackside_s_then_the_file() {
        let dir = tempfile::tempdir().unwrap();
        write_private(
            &dir.path().join("config.json"),
            &format!(r#"{{"auths": {{"r.io": {{"auth": "{}"}}}}}}"#, b64("file:f")),
        );
        let mut s = sources(dir.path());
        s.auth_config = Some(format!(r#"{{"auths": {{"r.io": {{"auth": "{}"}}}}}}"#, b64("env:e")));
        let job_config = format!(r#"{{"auths": {{"https://r.io": {{"auth": "{}"}}}}}}"#, b64("var:v"));
        let user = async |job: &JobLogins, s: &Sources| login_for("r.io/a", job, s).await.login.unwrap().username;
        let explicit = JobLogins {
            credentials: Some(("gh".into(), "x".into())),
            auth_config: Some(job_config.clone()),
        };
        assert_eq!(user(&explicit, &s).await, "gh");
        let var = JobLogins {
            credentials: None,
            auth_config: Some(job_config),
        };
        assert_eq!(user(&var, &s).await, "var");
        assert_eq!(user(&JobLogins::default(), &s).await, "env");
        s.auth_config = None;
        assert_eq!(user(&JobLogins::default(), &s).await, "file");
        // A variable for another registry leaves the next source to answer.
        let other = JobLogins {
            credentials: None,
            auth_config: Some(r#"{"auths": {"elsewhere.io": {"username": "o", "password": "p"}}}"#.into()),
        };
        assert_eq!(user(&other, &s).await, "file");
    }

    #[tokio::test]
    async fn bad_configurations_say_where_and_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let s = sources(dir.path());
        let job = JobLogins {
            credentials: None,
            auth_config: Some("{\"auths\": [".into()),
        };
        let e = login_for("r.io/a", &job, &s).await.ignored.join("; ");
        assert!(
            e.contains("the job's DOCKER_AUTH_CONFIG variable is not valid") && e.contains("line 1"),
            "{e}"
        );
        let path = dir.path().join("config.json");
        write_private(&path, r#"{"auths": {"r.io": {"auth": "bm90LWEtcGFpcg=="}}}"#);
        let e = login_for("r.io/a", &JobLogins::default(), &s).await.ignored.join("; ");
        assert!(
            e.contains("not base64 of `user:password`") && e.contains("docker login r.io"),
            "{e}"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        let e = login_for("r.io/a", &JobLogins::default(), &s).await.ignored.join("; ");
        assert!(e.contains("is not trusted: other users may write to it"), "{e}");
        // What was wrong never quotes the value (it may be a credential).
        let job = JobLogins {
            credentials: None,
            auth_config: Some(r#"{"auths": {"r.io": "dXNlcjpzM2NyZXQ="}}"#.into()),
        };
        let found = login_for("r.io/a", &job, &s).await;
        let e = found.ignored.join("; ");
        assert!(
            found.login.is_none() && e.contains("not the shape of a config.json at line 1"),
            "{e}"
        );
        assert!(!e.contains("dXNlcjpzM2NyZXQ="), "{e}");
        // Empty credentials (a secret not given) are no login at all.
        let empty = JobLogins {
            credentials: Some((String::new(), String::new())),
            auth_config: None,
        };
        assert!(login_for("r.io/a", &empty, &sources(dir.path())).await.login.is_none());
    }

    #[tokio::test]
    async fn a_key_scoped_to_a_path_takes_only_that_paths_images_the_closest_winning() {
        let dir = tempfile::tempdir().unwrap();
        let s = sources(dir.path());
        let config = format!(
            r#"{{"auths": {{
                "registry.example.com": {{"auth": "{}"}},
                "registry.example.com/group-a": {{"auth": "{}"}},
                "https://registry.example.com/group-a/team": {{"auth": "{}"}}
            }}}}"#,
            b64("any:1"),
            b64("a:2"),
            b64("team:3")
        );
        let job = JobLogins {
            credentials: None,
            auth_config: Some(config),
        };
        let user = async |image: &str| login_for(image, &job, &s).await.login.unwrap().username;
        assert_eq!(user("registry.example.com/group-a/app:1").await, "a");
        assert_eq!(user("registry.example.com/group-a/team/app@sha256:ab").await, "team");
        assert_eq!(user("registry.example.com/group-b/app").await, "any");
        assert_eq!(
            user("REGISTRY.example.com/group-ab/app").await,
            "any",
            "a path is a whole segment"
        );
        assert_eq!(repository_of("busybox:1"), "docker.io/library/busybox");
        assert_eq!(repository_of("localhost:5000/a/b:2"), "localhost:5000/a/b");
    }

    #[tokio::test]
    async fn credential_helpers_are_asked_with_the_registry_on_their_input() {
        let dir = tempfile::tempdir().unwrap();
        let helper = dir.path().join("docker-credential-fake");
        // Answers for r.io and a token for t.io; "not found" otherwise.
        write_private(
            &helper,
            r#"#!/bin/sh
[ "$1" = get ] || exit 3
read -r server || true
case "$server" in
  r.io) echo '{"ServerURL":"r.io","Username":"helped","Secret":"s3"}' ;;
  t.io) echo '{"ServerURL":"t.io","Username":"<token>","Secret":"refresh"}' ;;
  https://index.docker.io/v1/) echo '{"Username":"hubby","Secret":"h"}' ;;
  broken.io) echo 'keychain locked' >&2; exit 1 ;;
  *) echo 'credentials not found in native keychain'; exit 1 ;;
esac
"#,
        );
        std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o700)).unwrap();
        write_private(
            &dir.path().join("config.json"),
            &format!(
                r#"{{"credsStore": "fake", "credHelpers": {{"h.io": "missing"}},
                     "auths": {{"r.io": {{}}, "fallback.io": {{"auth": "{}"}}}}}}"#,
                b64("fb:p")
            ),
        );
        let s = sources(dir.path());
        let none = JobLogins::default();
        let r = login_for("r.io/a", &none, &s).await.login.unwrap();
        assert_eq!((r.username.as_str(), password(&r)), ("helped", "s3"));
        assert!(r.source.contains("docker-credential-fake"), "{}", r.source);
        let t = login_for("t.io/a", &none, &s).await.login.unwrap();
        assert_eq!(t.secret, Secret::IdentityToken("refresh".into()));
        let hub = login_for("busybox", &none, &s).await.login.unwrap();
        assert_eq!(hub.username, "hubby");
        // Not in the store: the `auths` entry answers.
        let fb = login_for("fallback.io/a", &none, &s).await.login.unwrap();
        assert_eq!(fb.username, "fb");
        assert!(login_for("nowhere.io/a", &none, &s).await.login.is_none());
        let e = login_for("broken.io/a", &none, &s).await.ignored.join("; ");
        assert!(
            e.contains("docker-credential-fake") && e.contains("keychain locked"),
            "{e}"
        );
        let e = login_for("h.io/a", &none, &s).await.ignored.join("; ");
        assert!(
            e.contains("docker-credential-missing") && e.contains("is not on PATH"),
            "{e}"
        );
        std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = login_for("r.io/a", &none, &s).await.ignored.join("; ");
        assert!(e.contains("is not trusted"), "{e}");
    }
}
