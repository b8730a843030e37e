//! Builds tiny test images from scratch with a static busybox through the
//! Engine API's build endpoint: no registry needed. Shared by the Docker
//! tests and the container benchmark.

use bollard::query_parameters::BuildImageOptions;
use futures_util::StreamExt;

/// The label holding a hash of what a test image was made from.
const RECIPE: &str = "dev.trackside.test-recipe";

/// Builds `tag` (busybox + `/image-name` holding the tag) unless it exists.
pub async fn busybox_image(docker: &bollard::Docker, tag: &str) {
    busybox_image_with(docker, tag, "").await;
}

/// The same with extra Dockerfile lines (e.g. a HEALTHCHECK). An image of
/// that tag made from other lines (an older test's) is made again.
pub async fn busybox_image_with(docker: &bollard::Docker, tag: &str, extra: &str) {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(format!("{tag}\n{extra}"));
    let recipe: String = digest.iter().take(12).map(|b| format!("{b:02x}")).collect();
    let made = docker.inspect_image(tag).await.ok().and_then(|i| {
        let labels = i.config?.labels?;
        labels.get(RECIPE).cloned()
    });
    if made.as_deref() == Some(recipe.as_str()) {
        return;
    }
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .find_map(|p| std::fs::read(p).ok())
        .expect("a static busybox (apt-get install busybox-static)");
    let dockerfile = format!(
        "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\nRUN echo {tag} > /image-name\nENV PATH=/bin\nLABEL {RECIPE}={recipe}\n{extra}CMD [\"sh\"]\n"
    );
    let mut tar = tar::Builder::new(Vec::new());
    for (name, data, mode) in [
        ("Dockerfile", dockerfile.as_bytes(), 0o644),
        ("busybox", busybox.as_slice(), 0o755),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(mode);
        header.set_cksum();
        tar.append_data(&mut header, name, data).expect("tar");
    }
    let body = tar.into_inner().expect("tar");
    let mut build = docker.build_image(
        BuildImageOptions {
            t: Some(tag.to_string()),
            rm: true,
            ..Default::default()
        },
        None,
        Some(bollard::body_full(body.into())),
    );
    while let Some(item) = build.next().await {
        if let Err(e) = item {
            panic!("building {tag}: {e}");
        }
    }
}
