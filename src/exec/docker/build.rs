//! Building a Docker action's image from its folder (`runs.image:
//! Dockerfile`). The image is tagged by a digest of the folder's files, so
//! a folder built once is not built again until a file of it changes.

use std::path::{Path, PathBuf};

use bollard::query_parameters::BuildImageOptions;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::DockerExecutor;
use crate::exec::{ImageBuild, OutputLine, Stream};

/// The most a build folder may hold (checked before reading it).
const MAX_BYTES: u64 = 256 << 20;
const MAX_FILES: usize = 20_000;

/// The folder's files (no `.git`), sorted, with their sizes; an error when
/// it is over the budget or a file cannot be read.
fn files_of(dir: &Path) -> Result<Vec<(PathBuf, u64, bool)>, String> {
    let mut out = Vec::new();
    let mut total = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).map_err(|e| format!("cannot read {}: {e}", d.display()))?;
        for entry in entries {
            let entry = entry.map_err(|e| format!("cannot read {}: {e}", d.display()))?;
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            if meta.is_dir() {
                if entry.file_name() != ".git" {
                    stack.push(path);
                }
                continue;
            }
            if !meta.is_file() {
                continue;
            }
            total = total.saturating_add(meta.len());
            if total > MAX_BYTES || out.len() >= MAX_FILES {
                return Err(format!(
                    "the action's folder {} is over {} MiB or {MAX_FILES} files; trackside does not build it",
                    dir.display(),
                    MAX_BYTES >> 20
                ));
            }
            let rel = path.strip_prefix(dir).unwrap_or(&path).to_path_buf();
            use std::os::unix::fs::PermissionsExt;
            out.push((rel, meta.len(), meta.permissions().mode() & 0o111 != 0));
        }
    }
    out.sort();
    Ok(out)
}

/// The folder as a tar archive for the daemon, and the tag its digest
/// gives (`trackside-action:<16 hex>`).
fn context(req: &ImageBuild) -> Result<(Vec<u8>, String), String> {
    let files = files_of(&req.dir)?;
    let mut digest = Sha256::new();
    digest.update(req.dockerfile.as_bytes());
    let mut tar = tar::Builder::new(Vec::new());
    for (rel, _, exec) in &files {
        let data = std::fs::read(req.dir.join(rel)).map_err(|e| format!("cannot read {}: {e}", rel.display()))?;
        digest.update(rel.to_string_lossy().as_bytes());
        digest.update([0, u8::from(*exec)]);
        digest.update((data.len() as u64).to_le_bytes());
        digest.update(&data);
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(if *exec { 0o755 } else { 0o644 });
        header.set_cksum();
        tar.append_data(&mut header, rel, data.as_slice())
            .map_err(|e| format!("cannot pack {}: {e}", rel.display()))?;
    }
    let body = tar
        .into_inner()
        .map_err(|e| format!("cannot pack the action's folder: {e}"))?;
    let hex: String = digest.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect();
    Ok((body, format!("trackside-action:{hex}")))
}

/// Why the daemon did not build an image: its own words.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BuildFailed(pub String);

impl DockerExecutor {
    /// Builds (unless built already) the image of `req`; returns its tag.
    /// The daemon's build output goes to `out`.
    pub(super) async fn build_image_impl(
        &self,
        req: ImageBuild,
        out: mpsc::Sender<OutputLine>,
    ) -> Result<String, String> {
        let dir = req.dir.clone();
        let packed = tokio::task::spawn_blocking(move || context(&req).map(|(b, t)| (b, t, req.dockerfile)))
            .await
            .map_err(|e| format!("cannot pack the action's folder: {e}"))??;
        let (body, tag, dockerfile) = packed;
        if !dir.join(&dockerfile).is_file() {
            return Err(format!("the action has no {dockerfile} in {}", dir.display()));
        }
        if self.docker.inspect_image(&tag).await.is_ok() {
            return Ok(tag);
        }
        self.build_context(&tag, &dockerfile, body, Some(&out))
            .await
            .map_err(|e| format!("building the action's image ({dockerfile}) failed: {e}"))?;
        Ok(tag)
    }

    /// Builds the tar `context` (holding `dockerfile`) as `tag` on the
    /// daemon; its build output goes to `out` when given. `Err`: the
    /// daemon's reason.
    pub(crate) async fn build_context(
        &self,
        tag: &str,
        dockerfile: &str,
        context: Vec<u8>,
        out: Option<&mpsc::Sender<OutputLine>>,
    ) -> Result<(), BuildFailed> {
        let mut build = self.docker.build_image(
            BuildImageOptions {
                t: Some(tag.to_string()),
                dockerfile: dockerfile.to_string(),
                rm: true,
                forcerm: true,
                ..Default::default()
            },
            None,
            Some(bollard::body_full(context.into())),
        );
        while let Some(item) = build.next().await {
            let info = item.map_err(|e| BuildFailed(super::with_causes(&e)))?;
            if let Some(e) = info.error_detail.and_then(|d| d.message) {
                return Err(BuildFailed(e));
            }
            let Some(out) = out else { continue };
            for line in info.stream.unwrap_or_default().lines().filter(|l| !l.trim().is_empty()) {
                let line = OutputLine {
                    stream: Stream::Stdout,
                    text: line.to_string(),
                    partial: false,
                    node: None,
                };
                let _ = out.send(line).await;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tag_follows_the_folders_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("Dockerfile"), "FROM scratch\n").unwrap();
        std::fs::create_dir(dir.path().join(".git")).unwrap();
        std::fs::write(dir.path().join(".git/HEAD"), "x").unwrap();
        let req = |f: &str| ImageBuild {
            dir: dir.path().to_path_buf(),
            dockerfile: f.into(),
        };
        let (_, a) = context(&req("Dockerfile")).unwrap();
        assert!(a.starts_with("trackside-action:"));
        assert_eq!(
            context(&req("Dockerfile")).unwrap().1,
            a,
            "the same files, the same tag"
        );
        std::fs::write(dir.path().join(".git/HEAD"), "y").unwrap();
        assert_eq!(context(&req("Dockerfile")).unwrap().1, a, ".git is left out");
        std::fs::write(dir.path().join("entrypoint.sh"), "echo\n").unwrap();
        assert_ne!(context(&req("Dockerfile")).unwrap().1, a);
    }
}
