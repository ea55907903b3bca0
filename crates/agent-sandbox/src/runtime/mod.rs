//! The container engine. Every bollard call in the crate lives in this module.
//!
//! Nothing here assumes the engine is local except the host paths of bind
//! mounts (which a remote engine would need to share): the engine is found
//! through `DOCKER_HOST`, as the Docker CLI finds it.

mod container;
mod gateway;
mod gc;
mod gvisor;
mod image;
mod transport;

pub(crate) use container::Stream;
pub use container::{ContainerSpec, Mount, Resources, VolumeMount, SECCOMP_PROFILE};
pub(crate) use gateway::{gateway_labels, GatewayIo, GATEWAY_BINARY};
pub(crate) use gc::owner_dir_tag;
pub use gc::{gc, owner_label_value, GcReport};
pub(crate) use gvisor::mounted_identity;
pub use image::PullProgress;

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

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
    /// On a gateway container: the id of the sandbox it serves.
    pub const GATEWAY: &str = "agent-sandbox.gateway";
}

/// A connection to a container engine: Docker (local or remote) or
/// Podman through its Docker-compatible API.
#[derive(Debug, Clone)]
pub struct Engine {
    pub(crate) docker: Docker,
    host: String,
    kind: EngineKind,
    version: String,
    local: bool,
    default_runtime: String,
}

/// What an endpoint's engine is, asked once per process (see
/// [`Engine::connect_to`]).
#[derive(Clone)]
struct Known {
    api: (usize, usize),
    kind: EngineKind,
    version: String,
    local: bool,
    default_runtime: String,
}

/// Which engine answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineKind {
    /// Docker Engine (or Docker Desktop).
    Docker,
    /// Podman's Docker-compatible API (`podman system service`).
    Podman,
}

/// Where the engine is, as the Docker CLI finds it: `DOCKER_HOST`, else
/// the current docker context (`DOCKER_CONTEXT` or `currentContext` in
/// `~/.docker/config.json`), else the local socket. With the endpoint's
/// TLS files when a context names them.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Endpoint {
    host: String,
    /// A context's `ca.pem`, `cert.pem`, `key.pem` directory.
    tls_dir: Option<std::path::PathBuf>,
}

const DEFAULT_HOST: &str = "unix:///var/run/docker.sock";

fn endpoint() -> Endpoint {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    if let Some(host) = var("DOCKER_HOST") {
        return Endpoint {
            host,
            tls_dir: None,
        };
    }
    let config = var("DOCKER_CONFIG")
        .map(std::path::PathBuf::from)
        .or_else(|| var("HOME").map(|h| std::path::Path::new(&h).join(".docker")));
    let context = var("DOCKER_CONTEXT").or_else(|| {
        let text = std::fs::read_to_string(config.as_ref()?.join("config.json")).ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        v.get("currentContext")?.as_str().map(str::to_owned)
    });
    match (context, config) {
        (Some(name), Some(config)) if name != "default" => context_endpoint(&config, &name),
        _ => None,
    }
    .unwrap_or(Endpoint {
        host: DEFAULT_HOST.into(),
        tls_dir: None,
    })
}

/// A docker context's endpoint: `contexts/meta/<sha256 of name>/meta.json`.
fn context_endpoint(config: &std::path::Path, name: &str) -> Option<Endpoint> {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(name.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    let meta = std::fs::read_to_string(config.join("contexts/meta").join(&hex).join("meta.json"));
    let v: serde_json::Value = serde_json::from_str(&meta.ok()?).ok()?;
    let host = v.pointer("/Endpoints/docker/Host")?.as_str()?.to_owned();
    let tls = config.join("contexts/tls").join(&hex).join("docker");
    Some(Endpoint {
        host,
        tls_dir: tls.join("ca.pem").exists().then_some(tls),
    })
}

/// Whether a call failed on the way (a connection that closed as the
/// request went out, hyper's "connection closed before message completed"),
/// not by the engine's answer.
fn transient(e: &bollard::errors::Error) -> bool {
    use bollard::errors::Error as E;
    matches!(
        e,
        E::HyperLegacyError { .. } | E::HyperResponseError { .. } | E::IOError { .. }
    )
}

impl Engine {
    /// `call`, sent once more if it failed on the way: for calls whose
    /// repetition does no harm (inspect, start, kill, remove, volumes,
    /// archive upload). `create` has its own retry (by name).
    pub(crate) async fn again<T, F, Fut>(&self, mut call: F) -> Result<T, bollard::errors::Error>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, bollard::errors::Error>>,
    {
        match call().await {
            Err(e) if transient(&e) => call().await,
            done => done,
        }
    }

    /// The engine's default OCI runtime (`runc` unless configured).
    pub(crate) fn default_runtime(&self) -> &str {
        &self.default_runtime
    }

    /// Connects to the engine the Docker CLI would use (`DOCKER_HOST`,
    /// with TLS when `DOCKER_TLS_VERIFY` is set and the files in
    /// `DOCKER_CERT_PATH`; else the current docker context; else the
    /// local socket), negotiates the API version, checks the engine is
    /// recent enough, and learns which engine it is and whether it shares
    /// this machine's files.
    ///
    /// # Errors
    /// [`Error::DockerUnavailable`] if nothing answers, with what to do;
    /// [`Error::EngineTooOld`] below API 1.41 (Docker 20.10).
    pub async fn connect() -> Result<Engine, Error> {
        Engine::connect_to(&endpoint()).await
    }

    async fn connect_to(at: &Endpoint) -> Result<Engine, Error> {
        let host = at.host.clone();
        let unavailable = |reason: String| Error::DockerUnavailable {
            host: host.clone(),
            reason,
        };
        // What the engine is (its API version, kind, version, whether it is
        // local, its default runtime), asked once per endpoint and process;
        // a new client each time (a client's pooled connections belong to
        // the runtime that made them), made at the known API version
        // without asking again. Podman answers `/version` by running its
        // package manager on conmon, which took minutes now and then.
        static KNOWN: OnceLock<Mutex<HashMap<String, Known>>> = OnceLock::new();
        let known = KNOWN.get_or_init(Default::default);
        let cached = known.lock().ok().and_then(|k| k.get(&host).cloned());
        let api =
            cached
                .as_ref()
                .map_or(*bollard::API_DEFAULT_VERSION, |k| bollard::ClientVersion {
                    major_version: k.api.0,
                    minor_version: k.api.1,
                });
        let docker = match &at.tls_dir {
            _ if host.starts_with("ssh://") => {
                return Err(unavailable(
                    "ssh:// engines are not supported yet; forward the engine's socket (`ssh -nNT -L /tmp/engine.sock:/var/run/docker.sock HOST`) and set DOCKER_HOST=unix:///tmp/engine.sock".into(),
                ))
            }
            _ if host.starts_with("unix://") => {
                Docker::connect_with_unix(&host, transport::TIMEOUT_SECS, &api)
                    .map_err(|e| e.to_string())
            }
            _ if !["tcp://", "http://", "https://"].iter().any(|s| host.starts_with(s)) => {
                return Err(unavailable(
                    "unsupported address: DOCKER_HOST takes unix://PATH, tcp://HOST:PORT, http(s)://HOST:PORT".into(),
                ))
            }
            Some(dir) => transport::connect(&host, Some(dir), &api),
            None => transport::connect(&host, transport::env_tls_dir(&host).as_deref(), &api),
        }
        .map_err(unavailable)?;
        if let Some(k) = cached {
            return Ok(Engine {
                docker,
                host,
                kind: k.kind,
                version: k.version,
                local: k.local,
                default_runtime: k.default_runtime,
            });
        }
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
        let api = (v.major_version, v.minor_version);
        let version = docker
            .version()
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        let podman = version
            .components
            .iter()
            .flatten()
            .any(|c| c.name.to_ascii_lowercase().contains("podman"));
        let info = docker
            .info()
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        let kind = if podman {
            EngineKind::Podman
        } else {
            EngineKind::Docker
        };
        // The engine sees this machine's files when it is reached through a
        // unix socket and runs under this machine's name (a forwarded
        // socket, or Docker Desktop's VM, does not).
        let this_host = gc::hostname();
        let local = host.starts_with("unix://")
            && info.name.as_deref() == Some(this_host.as_str())
            && info.operating_system.as_deref() != Some("Docker Desktop");
        let engine = Engine {
            docker,
            host,
            kind,
            version: version.version.unwrap_or_default(),
            local,
            default_runtime: info.default_runtime.unwrap_or_else(|| "runc".to_owned()),
        };
        if let Ok(mut k) = known.lock() {
            let e = &engine;
            k.insert(
                e.host.clone(),
                Known {
                    api,
                    kind: e.kind,
                    version: e.version.clone(),
                    local: e.local,
                    default_runtime: e.default_runtime.clone(),
                },
            );
        }
        Ok(engine)
    }

    /// The `DOCKER_HOST` (or context endpoint) this engine was reached at.
    #[must_use]
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Docker or Podman.
    #[must_use]
    pub fn kind(&self) -> EngineKind {
        self.kind
    }

    /// Whether the engine shares this machine's files (so bind mounts of
    /// host paths work): a unix socket to an engine of this host name.
    #[must_use]
    pub fn is_local(&self) -> bool {
        self.local
    }

    /// Whether sandboxes on this engine go through a gateway: when it does
    /// not share this machine's files, unless `AGENT_SANDBOX_GATEWAY`
    /// says `always` or `never` (an error if it says anything else).
    pub fn through_gateway(&self) -> Result<bool, Error> {
        crate::gateway::wanted(self)
    }

    /// The engine as errors name it: `Docker 20.10.24`, `Podman 4.3.1 at
    /// unix:///run/podman/podman.sock`, `Docker 24.0.7 at tcp://...`.
    #[must_use]
    pub fn name(&self) -> String {
        let kind = match self.kind {
            EngineKind::Docker => "Docker",
            EngineKind::Podman => "Podman",
        };
        if self.host == DEFAULT_HOST {
            format!("{kind} {}", self.version)
        } else {
            format!("{kind} {} at {}", self.version, self.host)
        }
    }

    /// The local path of the engine's unix socket, if it is local.
    #[must_use]
    pub fn socket_path(&self) -> Option<std::path::PathBuf> {
        self.host
            .strip_prefix("unix://")
            .map(std::path::PathBuf::from)
    }

    /// An engine error during `what`, naming this engine.
    pub(crate) fn err(&self, what: &str, e: bollard::errors::Error) -> Error {
        Error::Engine {
            engine: self.name(),
            what: what.to_owned(),
            reason: e.to_string(),
            source: Some(Box::new(e)),
        }
    }

    /// An [`Error::Engine`] naming this engine, for a refusal of ours.
    pub(crate) fn err_msg(&self, what: &str, reason: impl Into<String>) -> Error {
        Error::Engine {
            engine: self.name(),
            what: what.to_owned(),
            reason: reason.into(),
            source: None,
        }
    }
}

#[cfg(test)]
mod tests {
    /// An engine error keeps the client's error as its source (callers can
    /// walk the chain), and still says which operation failed.
    #[test]
    fn engine_errors_keep_their_source() {
        let e = crate::Error::Engine {
            engine: "Docker".into(),
            what: "start the container".into(),
            reason: bollard::errors::Error::RequestTimeoutError.to_string(),
            source: Some(Box::new(bollard::errors::Error::RequestTimeoutError)),
        };
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
