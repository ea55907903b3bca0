//! # agent-sandbox
//!
//! Run the commands an AI agent proposes in a box it cannot leave, so the
//! agent can run on auto-approve. Two walls: a hardened container (the
//! filesystem jail: read-only root, one read-write workspace, the caller's
//! uid, no capabilities) and an allowlist proxy (the network gatekeeper)
//! that is the container's only way out.
//!
//! Three ways to run commands, all configured by one [`SandboxBuilder`]:
//!
//! ```no_run
//! use agent_sandbox::{ExecOptions, Sandbox};
//!
//! # async fn demo() -> Result<(), agent_sandbox::Error> {
//! let sandbox = Sandbox::builder()
//!     .workspace("./repo")
//!     .allow("pypi.org")
//!     .allow("files.pythonhosted.org");
//!
//! // One command in a fresh sandbox, removed afterwards.
//! let out = sandbox.run("pip download requests -d /tmp/dl").await?;
//! println!("exit {} in {:?}: {}", out.exit_code, out.duration, out.stdout_str());
//! for e in &out.events {
//!     println!("{:?} {}:{}", e.verdict, e.host, e.port);
//! }
//!
//! // A warm sandbox for many commands (an exec costs milliseconds).
//! let session = sandbox.start().await?;
//! session.write_file("notes.txt", "hello").await?;
//! let out = session.exec_with("cat notes.txt", ExecOptions::new().env("CI", "1")).await?;
//! assert_eq!(out.stdout_str(), "hello");
//! session.close().await?;
//!
//! // Fresh sandboxes started ahead of time: one-shot isolation at exec speed.
//! let pool = sandbox.pool(2).await?;
//! let out = pool.run(["python3", "-c", "print(1)"]).await?;
//! pool.close().await?;
//! # Ok(())
//! # }
//! ```
//!
//! Options can also come as data ([`options::SandboxOptions`], the same
//! names in Python, Node, the CLI and `serve --stdio`), and the proxy runs
//! on its own too:
//!
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
//!
//! The map of the modules, the data flow of a run, a session and a pool,
//! and the invariants each layer keeps are in `ARCHITECTURE.md`.

pub mod ask;
mod audit;
mod builder;
mod command;
mod config;
pub mod error;
mod gateway;
pub mod intercept;
mod launch;
pub mod options;
pub mod policy;
mod pool;
pub mod proxy;
mod run;
pub mod runtime;
pub mod session;
mod workspace;
mod workspace_sync;

pub use builder::{Sandbox, SandboxBuilder};
pub use command::{CancelToken, Command, Output};
pub use config::DEFAULT_IMAGE;
pub use error::Error;
pub use options::{parse_size, ExecOptions, SandboxOptions};
pub use pool::Pool;
pub use session::{Chunk, DirEntry, Listing, NewOutput, Pipe, Process, Session};
pub use workspace_sync::SyncReport;
