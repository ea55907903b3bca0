//! The crate's one integration test binary (`cargo test --test it`).
//!
//! - `ask`: asking on a miss in the in-process proxy
//! - `capture`: DNS and transparent capture with real clients (the clients image)
//! - `docker`: the jail against a real engine (hardening read back, escapes tried)
//! - `session`: sessions against a real engine
//! - `pool`: pools against a real engine
//! - `intercept`: TLS interception (secrets, HTTP rules) in the in-process proxy
//! - `policy`: the pure policy engine
//! - `presets`: pip, npm and git with the pypi, npm and github presets (the clients image)
//! - `proxy`: the in-process proxy against local canaries
//! - `secrets`: secrets and HTTP rules with real clients (the clients image)
//! - `support`: the canaries, the proxy harness and the Docker helpers
//!
//! The Docker-backed modules share one engine lock (`support::docker`): the
//! pool tests count this process's containers, so they run alone.

mod support;

mod ask;
mod capture;
mod docker;
mod intercept;
mod policy;
mod pool;
mod presets;
mod proxy;
mod secrets;
mod session;
mod spawn;
