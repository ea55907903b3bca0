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
    /// Other I/O.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl Error {
    /// A stable, machine-readable code (the same string in every language binding).
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            Error::Policy(_) => "policy",
            Error::Listen { .. } => "listen",
            Error::Bind { .. } | Error::SocketPathInUse { .. } => "bind",
            Error::Io(_) => "io",
        }
    }
}
