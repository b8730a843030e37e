//! What history teaches: flakiness with evidence and uncertainty. Pure
//! functions over the store's history rows (`store::history`): no I/O.

pub mod flaky;
pub mod signature;
