//! What history teaches: flakiness with evidence and uncertainty, the
//! failure knowledge base, and completion forecasts. Pure functions over the store's history rows
//! (`store::history`) and over log lines the runner feeds: no I/O.

pub mod flaky;
pub mod forecast;
pub mod knowledge;
pub mod metrics;
pub mod signature;
