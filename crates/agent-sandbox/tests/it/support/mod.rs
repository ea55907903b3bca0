//! Helpers shared by the test modules: the canary servers (`canary`), the
//! in-process proxy harness (`proxy`) and the Docker helpers (`docker`).

pub mod canary;
pub mod clients;
pub mod docker;
pub mod proxy;
