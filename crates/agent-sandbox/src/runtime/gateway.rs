//! The engine's half of a gateway (see `crate::gateway`): its image, made
//! from the embedded init binary without a registry; volumes; the
//! attach stream with stdin; workspace copies through the archive API.

use std::pin::Pin;

use bollard::container::LogOutput;
use bollard::models::VolumeCreateRequest;
use bollard::query_parameters::{
    CreateImageOptions, DownloadFromContainerOptions, RemoveVolumeOptions, UploadToContainerOptions,
};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::io::AsyncWrite;

use super::Engine;
use crate::Error;

/// The gateway container's attach stream: what the library writes to its
/// stdin, and its stdout (stderr is dropped: the gateway says nothing there
/// unless it fails to start).
pub(crate) struct GatewayIo {
    pub(crate) input: Pin<Box<dyn AsyncWrite + Send>>,
    pub(crate) output: Pin<Box<dyn Stream<Item = Bytes> + Send>>,
}

/// Where the gateway image keeps the binary.
pub(crate) const GATEWAY_BINARY: &str = "/agent-sandbox-init";

impl Engine {
    /// The gateway image for `binary` (`agent-sandbox/gateway:<hash>`),
    /// imported from a tar made here when the engine does not have it:
    /// the binary, the shared directory (mode 1733: the gateway, not
    /// root, writes in the volume made from it; nobody lists it) and
    /// `/workspace` (1777, for the workspace volume).
    pub(crate) async fn gateway_image(&self, binary: &[u8]) -> Result<String, Error> {
        use sha2::Digest as _;
        let digest = sha2::Sha256::digest(binary);
        let tag: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        let name = format!("agent-sandbox/gateway:{tag}");
        if self.docker.inspect_image(&name).await.is_ok() {
            return Ok(name);
        }
        let tar = image_tar(binary).map_err(|e| Error::io("build", "the gateway image", e))?;
        let opts = CreateImageOptions {
            from_src: Some("-".into()),
            repo: Some("agent-sandbox/gateway".into()),
            tag: Some(tag),
            ..Default::default()
        };
        let mut progress =
            self.docker
                .create_image(Some(opts), Some(bollard::body_full(tar.into())), None);
        while let Some(step) = progress.next().await {
            let step = step.map_err(|e| self.err("import the gateway image", e))?;
            if let Some(e) = step.error_detail.and_then(|d| d.message) {
                return Err(Error::engine("import the gateway image", e));
            }
        }
        Ok(name)
    }

    /// Creates a volume with our labels (for garbage collection).
    pub(crate) async fn create_volume(
        &self,
        name: &str,
        labels: &std::collections::HashMap<String, String>,
    ) -> Result<(), Error> {
        let req = VolumeCreateRequest {
            name: Some(name.to_owned()),
            labels: Some(labels.clone()),
            ..Default::default()
        };
        self.again(|| self.docker.create_volume(req.clone()))
            .await
            .map_err(|e| self.err("create a volume", e))?;
        Ok(())
    }

    /// Removes a volume (gone already is fine), waiting up to 10 s for a
    /// container that still uses it to go.
    pub(crate) async fn remove_volume(&self, name: &str) {
        for _ in 0..100 {
            let opts = RemoveVolumeOptions { force: true };
            match self
                .again(|| self.docker.remove_volume(name, Some(opts.clone())))
                .await
            {
                Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 409, ..
                }) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
                _ => return,
            }
        }
    }

    /// Attaches to a created container's stdin and stdout, then starts it.
    pub(crate) async fn start_attached(&self, id: &str) -> Result<GatewayIo, Error> {
        let attached = self.attach_and_start(id, true, "gateway").await?;
        let output = attached.output.filter_map(|chunk| async move {
            match chunk {
                Ok(LogOutput::StdOut { message } | LogOutput::Console { message }) => Some(message),
                Ok(LogOutput::StdErr { message }) => {
                    // Only a gateway that cannot start writes here.
                    eprintln!(
                        "agent-sandbox gateway: {}",
                        String::from_utf8_lossy(&message).trim_end()
                    );
                    None
                }
                _ => None,
            }
        });
        Ok(GatewayIo {
            input: attached.input,
            output: Box::pin(output),
        })
    }

    /// Extracts `tar` at `path` in container `id` (a volume mounted there).
    pub(crate) async fn upload(&self, id: &str, path: &str, tar: Vec<u8>) -> Result<(), Error> {
        let opts = UploadToContainerOptions {
            path: path.to_owned(),
            ..Default::default()
        };
        let tar = bytes::Bytes::from(tar);
        self.again(|| {
            self.docker
                .upload_to_container(id, Some(opts.clone()), bollard::body_full(tar.clone()))
        })
        .await
        .map_err(|e| self.err(&format!("copy files to {path}"), e))
    }

    /// `path` in container `id` as a tar, at most `limit` bytes.
    pub(crate) async fn download(
        &self,
        id: &str,
        path: &str,
        limit: usize,
    ) -> Result<Vec<u8>, Error> {
        let opts = DownloadFromContainerOptions {
            path: path.to_owned(),
        };
        let mut stream = self.docker.download_from_container(id, Some(opts));
        let mut tar = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.err(&format!("copy files from {path}"), e))?;
            if tar.len() + chunk.len() > limit {
                return Err(Error::engine(
                    format!("copy files from {path}"),
                    format!("more than {limit} bytes"),
                ));
            }
            tar.extend_from_slice(&chunk);
        }
        Ok(tar)
    }
}

/// The gateway image's root file system as a tar.
fn image_tar(binary: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    let entry = |path: &str, kind: tar::EntryType, mode: u32, size: u64| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_size(size);
        h.set_mtime(0);
        let _ = h.set_path(path);
        h.set_cksum();
        h
    };
    for (dir, mode) in [
        (".agent-sandbox/", 0o755),
        (".agent-sandbox/net/", 0o1733),
        ("workspace/", 0o1777),
        ("tmp/", 0o1777),
    ] {
        b.append(
            &entry(dir, tar::EntryType::Directory, mode, 0),
            std::io::empty(),
        )?;
    }
    let name = GATEWAY_BINARY.trim_start_matches('/');
    let h = entry(name, tar::EntryType::Regular, 0o555, binary.len() as u64);
    b.append(&h, binary)?;
    b.into_inner()
}

/// A gateway's labels: the sandbox's, with its id under
/// [`labels::GATEWAY`](super::labels::GATEWAY) instead of
/// [`labels::ID`](super::labels::ID) (a sandbox id names one container;
/// the owner label still lets garbage collection find it).
pub(crate) fn gateway_labels(
    sandbox: &std::collections::HashMap<String, String>,
) -> std::collections::HashMap<String, String> {
    let mut l = sandbox.clone();
    if let Some(id) = l.remove(super::labels::ID) {
        l.insert(super::labels::GATEWAY.to_owned(), id);
    }
    l
}
