//! trackside: run and steer CI/CD pipelines from a terminal.
//!
//! Dependencies point one way: front-ends ([`headless`], [`ui`], and
//! [`control`] for steering from another shell) talk to
//! the [`engine`] through its handle and events; the engine uses
//! [`pipeline`], [`exec`] and [`store`]. `pipeline` depends on nothing else
//! in the crate.

pub mod attach;
pub mod control;
pub mod deploy;
pub mod engine;
pub mod exec;
pub mod headless;
pub mod net;
pub mod pipeline;
pub mod process;
pub mod protocol;
pub mod store;
pub mod ui;
