//! Images: use the local one, or pull it with progress.

use bollard::query_parameters::CreateImageOptions;
use futures_util::StreamExt;

use super::Engine;
use crate::Error;

/// One progress line of a pull, as the engine reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullProgress {
    /// The layer id, if the line is about a layer.
    pub layer: Option<String>,
    /// `Downloading`, `Extracting`, `Pull complete`, ...
    pub status: String,
    /// Bytes done and total for this layer, when known.
    pub current: Option<i64>,
    /// See `current`.
    pub total: Option<i64>,
}

impl Engine {
    /// Makes sure `image` is present: uses the local copy if there is one,
    /// otherwise pulls it, calling `progress` for every status line.
    /// Returns the image's ID (its content hash, `sha256:...`).
    ///
    /// # Errors
    /// [`Error::ImageNotFound`] if it is not local and cannot be pulled.
    pub async fn ensure_image(
        &self,
        image: &str,
        progress: Option<&(dyn Fn(&PullProgress) + Send + Sync)>,
    ) -> Result<String, Error> {
        if let Ok(found) = self.docker.inspect_image(image).await {
            return Ok(found.id.unwrap_or_default());
        }
        let (name, tag) = split_tag(image);
        let opts = CreateImageOptions {
            from_image: Some(name.to_owned()),
            tag: Some(tag.to_owned()),
            ..Default::default()
        };
        let mut stream = self.docker.create_image(Some(opts), None, None);
        while let Some(item) = stream.next().await {
            match item {
                Ok(info) => {
                    if let Some(err) = info.error_detail.and_then(|d| d.message) {
                        return Err(Error::ImageNotFound {
                            image: image.to_owned(),
                            reason: err,
                        });
                    }
                    if let (Some(cb), Some(status)) = (progress, info.status) {
                        let detail = info.progress_detail.unwrap_or_default();
                        cb(&PullProgress {
                            layer: info.id,
                            status,
                            current: detail.current,
                            total: detail.total,
                        });
                    }
                }
                Err(e) => {
                    return Err(Error::ImageNotFound {
                        image: image.to_owned(),
                        reason: e.to_string(),
                    })
                }
            }
        }
        // A pull that "succeeds" without producing the image is still a miss.
        self.docker
            .inspect_image(image)
            .await
            .map(|found| found.id.unwrap_or_default())
            .map_err(|e| Error::ImageNotFound {
                image: image.to_owned(),
                reason: e.to_string(),
            })
    }
}

/// `repo/name:tag` or `host:port/name` (no tag: `latest`); digests pass as the tag.
fn split_tag(image: &str) -> (&str, &str) {
    if let Some((name, digest)) = image.split_once('@') {
        return (name, digest);
    }
    match image.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name, tag),
        _ => (image, "latest"),
    }
}

#[cfg(test)]
mod tests {
    use super::split_tag;

    #[test]
    fn image_references_split_into_name_and_tag() {
        assert_eq!(split_tag("debian:bookworm"), ("debian", "bookworm"));
        assert_eq!(split_tag("debian"), ("debian", "latest"));
        assert_eq!(
            split_tag("localhost:5000/x/y"),
            ("localhost:5000/x/y", "latest")
        );
        assert_eq!(
            split_tag("localhost:5000/x/y:1"),
            ("localhost:5000/x/y", "1")
        );
        assert_eq!(split_tag("a/b@sha256:abc"), ("a/b", "sha256:abc"));
    }
}
