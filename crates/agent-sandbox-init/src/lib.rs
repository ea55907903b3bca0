//! What the host library and `agent-sandbox-init` share, std only: the
//! wire contract (re-exported at the root) and init's DNS answers (in
//! [`dns`], here so that they are tested once, with the library).

pub mod dns;
mod wire;

pub use wire::*;
