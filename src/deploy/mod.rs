//! Deployments: rolling a new version of a service out behind a traffic
//! router and judging it against the stable one.
//!
//! The rules are pure and tested without I/O: the judge ([`judge`]), the
//! canary and blue-green rollout ([`canary`]) and the rolling update
//! ([`rolling`]) as state machines returning effects. [`rollout`] performs
//! those effects with the parts that touch the world: replicas
//! ([`replica`]: processes or containers, health), the router ([`traffic`]
//! over [`router`] or [`haproxy`]), measurements ([`metrics`]) and what is
//! remembered per service ([`revision`]).

pub mod canary;
pub mod demo;
pub mod haproxy;
pub mod http;
pub mod judge;
pub mod metrics;
pub mod replica;
pub mod revision;
pub mod rolling;
pub mod rollout;
pub mod router;
pub mod service;
pub mod traffic;
