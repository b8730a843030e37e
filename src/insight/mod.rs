//! What history teaches: flakiness with evidence and uncertainty, and the
//! failure knowledge base. Pure functions over the store's history rows
//! (`store::history`) and over log lines the runner feeds: no I/O.

pub mod flaky;
pub mod knowledge;
pub mod signature;
