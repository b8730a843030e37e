//! trackside: run and steer CI/CD pipelines from a terminal.
//!
//! Dependencies point one way: front-ends ([`headless`], [`ui`], [`control`]
//! for a rollout steered from another shell, and [`attach`]'s client) hold
//! a [`protocol::Link`] and read [`protocol`] events; the [`engine`] (whose
//! handle is the in-process link) uses [`pipeline`], [`exec`], [`store`]
//! and [`deploy`]. `protocol` and `pipeline` depend on nothing else in the
//! crate but each other's vocabulary (the model names the protocol's
//! failure classes).

pub mod access;
pub mod attach;
pub mod control;
pub mod deploy;
pub mod engine;
pub mod exec;
pub mod headless;
pub mod insight;
pub mod net;
pub mod notify;
pub mod pipeline;
pub mod process;
pub mod protocol;
pub mod store;
pub mod ui;
