//! Deployments: rolling a new version of a service out behind a traffic
//! router and judging it against the stable one.
//!
//! Built so far (issue 6 is in progress): the judge ([`judge`]) and the
//! canary rollout rules as a pure state machine ([`canary`]). Both are plain
//! functions of their inputs, tested without I/O; the parts that touch the
//! world (targets, router, health checks, metrics) perform their effects.

pub mod canary;
pub mod demo;
pub mod http;
pub mod judge;
pub mod rollout;
pub mod router;
