//! # agent-sandbox
//!
//! Run the commands an AI agent proposes in a box it cannot leave, so the
//! agent can run on auto-approve.
//!
//! Two walls: a hardened container (the filesystem jail) and an allowlist
//! proxy (the network gatekeeper) that is the container's only way out. This
//! crate holds the policy engine ([`policy`]) and the proxy ([`proxy`]); the
//! proxy can also run on its own (`agent-sandbox proxy`).
//!
//! # Examples
//! ```
//! use agent_sandbox::policy::Policy;
//! use agent_sandbox::proxy::{Listen, Proxy};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), agent_sandbox::Error> {
//! let policy = Policy::builder()
//!     .allow("registry.npmjs.org")
//!     .allow(".github.com")
//!     .build()?;
//! let proxy = Proxy::builder(policy)
//!     .on_event(|e| eprintln!("{}", e.to_json()))
//!     .start(&Listen::parse("127.0.0.1:0")?)
//!     .await?;
//! println!("HTTPS_PROXY=http://{}", proxy.local_addr());
//! proxy.shutdown().await;
//! # Ok(())
//! # }
//! ```

mod audit;
pub mod error;
pub mod policy;
mod pool;
pub mod proxy;
pub mod runtime;
mod sandbox;
pub mod session;
mod workspace;

pub use pool::Pool;
pub use session::{DirEntry, ExecOptions, Listing, Session};

pub use sandbox::{
    parse_size, CancelToken, Command, Output, Sandbox, SandboxBuilder, DEFAULT_IMAGE,
};

pub use error::Error;
