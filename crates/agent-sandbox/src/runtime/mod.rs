//! The container engine. Every bollard call in the crate lives in this module.
//!
//! Nothing here assumes the engine is local except the host paths of bind
//! mounts (which a remote engine would need to share): the engine is found
//! through `DOCKER_HOST`, as the Docker CLI finds it.

mod container;
mod gc;
mod gvisor;
mod image;

pub(crate) use container::Stream;
pub use container::{ContainerSpec, Mount, Resources, SECCOMP_PROFILE};
pub(crate) use gc::owner_dir_tag;
pub use gc::{gc, owner_label_value, GcReport};
pub(crate) use gvisor::mounted_identity;
pub use image::PullProgress;

use bollard::Docker;

use crate::Error;

/// The oldest engine API this crate trusts: Docker Engine 20.10 (API 1.41),
/// the first with cgroup v2 support and `no-new-privileges` applied to exec'd
/// processes as we rely on.
pub const MIN_API_VERSION: (u32, u32) = (1, 41);

/// Label keys put on every sandbox container.
pub mod labels {
    /// Present on every container this crate creates (value `1`).
    pub const MANAGED: &str = "agent-sandbox";
    /// The sandbox id.
    pub const ID: &str = "agent-sandbox.id";
    /// `host:pid:starttime` of the owning process, for garbage collection.
    pub const OWNER: &str = "agent-sandbox.owner";
}

/// A connection to a Docker engine.
#[derive(Debug, Clone)]
pub struct Engine {
    pub(crate) docker: Docker,
    host: String,
}

fn engine_host() -> String {
    std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into())
}

impl Engine {
    /// The engine's default OCI runtime (`runc` unless configured), asked
    /// once per process.
    pub(crate) async fn default_runtime(&self) -> String {
        static DEFAULT: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();
        DEFAULT
            .get_or_init(|| async {
                self.docker
                    .info()
                    .await
                    .ok()
                    .and_then(|i| i.default_runtime)
                    .unwrap_or_else(|| "runc".to_owned())
            })
            .await
            .clone()
    }

    /// Connects to the engine named by `DOCKER_HOST` (default: the local
    /// unix socket), negotiates the API version and checks the engine is
    /// recent enough.
    ///
    /// # Errors
    /// [`Error::DockerUnavailable`] if nothing answers, with what to do;
    /// [`Error::EngineTooOld`] below API 1.41 (Docker 20.10).
    pub async fn connect() -> Result<Engine, Error> {
        let host = engine_host();
        let unavailable = |reason: String| Error::DockerUnavailable {
            host: host.clone(),
            reason,
        };
        let docker = Docker::connect_with_defaults().map_err(|e| unavailable(e.to_string()))?;
        let docker = docker
            .negotiate_version()
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        // Negotiation asked the engine for its API version (one round trip)
        // and lowered ours to match; below 1.41 the engine is too old.
        let v = docker.client_version();
        if (v.major_version, v.minor_version)
            < (MIN_API_VERSION.0 as usize, MIN_API_VERSION.1 as usize)
        {
            return Err(Error::EngineTooOld {
                api: format!("{}.{}", v.major_version, v.minor_version),
            });
        }
        Ok(Engine { docker, host })
    }

    /// The `DOCKER_HOST` this engine was reached at.
    #[must_use]
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The local path of the engine's unix socket, if it is local.
    #[must_use]
    pub fn socket_path(&self) -> Option<std::path::PathBuf> {
        self.host
            .strip_prefix("unix://")
            .map(std::path::PathBuf::from)
    }
}

/// Maps an engine error during an operation to the crate's error.
pub(crate) fn engine_err(what: &str, e: bollard::errors::Error) -> Error {
    Error::Engine {
        what: what.to_owned(),
        reason: e.to_string(),
        source: Some(Box::new(e)),
    }
}

#[cfg(test)]
mod tests {
    /// An engine error keeps the client's error as its source (callers can
    /// walk the chain), and still says which operation failed.
    #[test]
    fn engine_errors_keep_their_source() {
        let e = super::engine_err(
            "start the container",
            bollard::errors::Error::RequestTimeoutError,
        );
        assert_eq!(e.code(), "engine");
        assert!(e
            .to_string()
            .starts_with("Docker failed to start the container: "));
        let source = std::error::Error::source(&e).expect("a source");
        assert_eq!(
            source.to_string(),
            bollard::errors::Error::RequestTimeoutError.to_string()
        );
    }
}
