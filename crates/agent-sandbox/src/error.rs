//! The one error type of the library.

use std::path::PathBuf;

use crate::policy::RuleError;

/// Everything that can go wrong, each with a stable [`code`](Error::code).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A policy rule is malformed; the message names the rule.
    #[error(transparent)]
    Policy(#[from] RuleError),
    /// A policy file holds something invalid: the file, the line and the
    /// entry (when one entry is at fault) say where.
    #[error("{}:{line}: {}{reason}", path.display(), rule.as_ref().map(|r| format!("{r:?}: ")).unwrap_or_default())]
    PolicyFile {
        /// The file.
        path: PathBuf,
        /// The line (1-based).
        line: usize,
        /// The entry as written, when one is at fault.
        rule: Option<String>,
        /// What is wrong and what to write instead.
        reason: String,
    },
    /// A listen address is malformed.
    #[error("invalid listen address {addr:?}: {reason}")]
    Listen {
        /// The address as given.
        addr: String,
        /// What is wrong.
        reason: String,
    },
    /// The proxy could not bind its listener (port busy, no permission, ...).
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address or socket path.
        addr: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A unix socket path exists and is not a stale socket.
    #[error("cannot listen on {}: the path exists and is not a socket; remove it or choose another path", path.display())]
    SocketPathInUse {
        /// The path.
        path: PathBuf,
    },
    /// No Docker engine answers at `DOCKER_HOST` (or the default socket).
    #[error("Docker is not reachable at {host}: {reason}. Start the engine (`sudo systemctl start docker`, or `sudo dockerd &`), or point DOCKER_HOST at one")]
    DockerUnavailable {
        /// Where it was looked for.
        host: String,
        /// What the client said.
        reason: String,
    },
    /// The engine is older than Docker 20.10 (API 1.41).
    #[error("the Docker engine is too old to sandbox safely (API {api}); agent-sandbox needs Docker 20.10 (API 1.41) or later")]
    EngineTooOld {
        /// The engine's API version.
        api: String,
    },
    /// The image is not present locally and could not be pulled.
    #[error("image {image:?} is not available: {reason}. Check the name, `docker pull` it, or build it locally (see `make image`)")]
    ImageNotFound {
        /// The image reference.
        image: String,
        /// What the engine said.
        reason: String,
    },
    /// The workspace (or an extra mount) cannot be used.
    #[error("workspace {}: {reason}", path.display())]
    Workspace {
        /// The path as given.
        path: PathBuf,
        /// Why it is refused, and what to do.
        reason: String,
    },
    /// An argument is invalid (an env name, a size, a limit).
    #[error("invalid {what}: {reason}")]
    InvalidArgument {
        /// Which argument.
        what: String,
        /// Why.
        reason: String,
    },
    /// The engine failed during an operation.
    #[error("{engine} failed to {what}: {reason}")]
    Engine {
        /// The engine (`Docker 20.10.24`, `Podman 4.3.1 at unix://...`).
        engine: String,
        /// The operation.
        what: String,
        /// What the engine said.
        reason: String,
        /// The engine client's error, when there is one (its whole chain).
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// A file operation of a session was refused or failed.
    #[error("{op} {path:?}: {reason}")]
    File {
        /// `read_file`, `write_file`, `list`, `remove`, `upload`, `download`.
        op: &'static str,
        /// The path as given.
        path: String,
        /// Why.
        reason: String,
    },
    /// The session is closed (by `close`, its idle timeout, or a failure).
    #[error("the session is closed; start a new one")]
    SessionClosed,
    /// The pool is closed.
    #[error("the pool is closed; start a new one")]
    PoolClosed,
    /// The run was cancelled by the caller; its container was removed.
    #[error("the run was cancelled; its container was removed")]
    Cancelled,
    /// A file or socket operation on the host failed.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// What was being done (`create`, `write`, `open`, ...).
        op: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// A stable, machine-readable code (the same string in every language binding).
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            Error::Policy(_) | Error::PolicyFile { .. } => "policy",
            Error::Listen { .. } => "listen",
            Error::Bind { .. } | Error::SocketPathInUse { .. } => "bind",
            Error::DockerUnavailable { .. } => "docker_unavailable",
            Error::EngineTooOld { .. } => "engine_too_old",
            Error::ImageNotFound { .. } => "image_not_found",
            Error::Workspace { .. } => "workspace",
            Error::InvalidArgument { .. } => "invalid_argument",
            Error::Engine { .. } => "engine",
            Error::Cancelled => "cancelled",
            Error::File { .. } => "file",
            Error::SessionClosed => "session_closed",
            Error::PoolClosed => "pool_closed",
            Error::Io { .. } => "io",
        }
    }

    /// An [`Error::Engine`] with no underlying client error.
    pub(crate) fn engine(what: impl Into<String>, reason: impl Into<String>) -> Error {
        Error::Engine {
            engine: "Docker".to_owned(),
            what: what.into(),
            reason: reason.into(),
            source: None,
        }
    }

    /// An [`Error::Io`]: `op` on `path` failed.
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// An [`Error::InvalidArgument`].
    pub(crate) fn invalid(what: impl Into<String>, reason: impl Into<String>) -> Error {
        Error::InvalidArgument {
            what: what.into(),
            reason: reason.into(),
        }
    }
}
