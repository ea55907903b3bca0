//! Where the proxy listens: a TCP address or a unix socket path.

use std::fmt;
use std::net::SocketAddr;
use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;

use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};

use crate::Error;

/// A listen address, as given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// `127.0.0.1:8888` (port 0 picks a free port).
    Tcp(SocketAddr),
    /// `unix:/path/to/socket`.
    Unix(PathBuf),
}

impl Listen {
    /// Parses `HOST:PORT` (an IP address, not a name) or `unix:/path`.
    ///
    /// # Errors
    /// [`Error::Listen`] naming what is wrong.
    ///
    /// # Examples
    /// ```
    /// use agent_sandbox::proxy::Listen;
    /// assert!(matches!(Listen::parse("unix:/tmp/p.sock").unwrap(), Listen::Unix(_)));
    /// assert!(Listen::parse("localhost:8888").is_err());
    /// ```
    pub fn parse(s: &str) -> Result<Listen, Error> {
        let bad = |reason: &str| Error::Listen {
            addr: s.to_owned(),
            reason: reason.to_owned(),
        };
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(bad("empty socket path"));
            }
            return Ok(Listen::Unix(PathBuf::from(path)));
        }
        s.parse::<SocketAddr>()
            .map(Listen::Tcp)
            .map_err(|_| bad("expected IP:PORT (e.g. 127.0.0.1:8888) or unix:/path"))
    }

    pub(crate) async fn bind(&self) -> Result<Listener, Error> {
        match self {
            Listen::Tcp(addr) => {
                TcpListener::bind(addr)
                    .await
                    .map(Listener::Tcp)
                    .map_err(|source| Error::Bind {
                        addr: addr.to_string(),
                        source,
                    })
            }
            Listen::Unix(path) => {
                if let Ok(meta) = std::fs::symlink_metadata(path) {
                    if !meta.file_type().is_socket() {
                        return Err(Error::SocketPathInUse { path: path.clone() });
                    }
                    if UnixStream::connect(path).await.is_ok() {
                        return Err(Error::Bind {
                            addr: format!("unix:{}", path.display()),
                            source: std::io::Error::new(
                                std::io::ErrorKind::AddrInUse,
                                "another process is listening on this socket",
                            ),
                        });
                    }
                    // A stale socket left by a process that died.
                    let _ = std::fs::remove_file(path);
                }
                UnixListener::bind(path)
                    .map(|l| Listener::Unix(l, path.clone()))
                    .map_err(|source| Error::Bind {
                        addr: format!("unix:{}", path.display()),
                        source,
                    })
            }
        }
    }
}

/// The bound address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// A TCP address with the real port.
    Tcp(SocketAddr),
    /// A unix socket path.
    Unix(PathBuf),
}

impl ListenAddr {
    /// The TCP address, if this is one.
    #[must_use]
    pub fn tcp(&self) -> Option<SocketAddr> {
        match self {
            ListenAddr::Tcp(a) => Some(*a),
            ListenAddr::Unix(_) => None,
        }
    }

    pub(crate) fn cleanup(&self) {
        if let ListenAddr::Unix(p) = self {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "{a}"),
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

pub(crate) enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

pub(crate) enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Listener {
    pub(crate) fn local_addr(&self) -> std::io::Result<ListenAddr> {
        match self {
            Listener::Tcp(l) => l.local_addr().map(ListenAddr::Tcp),
            Listener::Unix(_, p) => Ok(ListenAddr::Unix(p.clone())),
        }
    }

    pub(crate) async fn accept(&self) -> std::io::Result<Stream> {
        match self {
            Listener::Tcp(l) => {
                let (s, _) = l.accept().await?;
                let _ = s.set_nodelay(true);
                Ok(Stream::Tcp(s))
            }
            Listener::Unix(l, _) => l.accept().await.map(|(s, _)| Stream::Unix(s)),
        }
    }
}
