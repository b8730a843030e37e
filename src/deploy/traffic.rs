//! The router a rollout steers: the built-in proxy or HAProxy, behind one
//! small interface (weights, which replicas serve each pool, measurements).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::haproxy::Haproxy;
use super::router::{Pool, Router};
use super::service::{Client, Request};

pub enum Traffic {
    Builtin(Arc<Router>),
    Haproxy(Arc<Haproxy>),
    /// The router of a live service, in its service process: steered
    /// through its socket, measured from the samples it streams.
    Live(Box<Live>),
}

pub struct Live {
    pub client: Client,
    /// The service's samples, as the judge reads them.
    pub mirror: Arc<Router>,
    /// The service process routes through an HAProxy it runs.
    pub haproxy: bool,
}

impl Traffic {
    /// Where requests are measured: per-pool counters and samples.
    pub fn stats(&self) -> &Arc<Router> {
        match self {
            Traffic::Builtin(r) => r,
            Traffic::Haproxy(h) => &h.stats,
            Traffic::Live(l) => &l.mirror,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Traffic::Builtin(_) => "built-in router",
            Traffic::Haproxy(_) => "HAProxy",
            Traffic::Live(l) if l.haproxy => "HAProxy (service process)",
            Traffic::Live(_) => "built-in router (service process)",
        }
    }

    /// The canary's share, in tenths of a percent.
    pub async fn set_weight(&self, weight: u32) -> Result<(), String> {
        match self {
            Traffic::Builtin(r) => {
                r.set_weight(weight);
                Ok(())
            }
            Traffic::Haproxy(h) => h.set_weight(weight).await,
            Traffic::Live(l) => {
                l.client.call(&Request::Weight { weight }).await?;
                l.mirror.set_weight(weight);
                Ok(())
            }
        }
    }

    /// The share asked for.
    pub fn weight(&self) -> u32 {
        self.stats().weight()
    }

    /// The share the router really gives (HAProxy's integer weights round it).
    pub fn actual_weight(&self) -> u32 {
        match self {
            Traffic::Builtin(r) => r.weight(),
            Traffic::Haproxy(h) => h.actual_weight(),
            Traffic::Live(l) => l.mirror.weight(),
        }
    }

    pub async fn set_backends(&self, pool: Pool, addrs: &[SocketAddr]) -> Result<(), String> {
        match self {
            Traffic::Builtin(r) => {
                r.set_backends(pool, addrs.to_vec());
                Ok(())
            }
            Traffic::Haproxy(h) => h.set_backends(pool, addrs).await,
            Traffic::Live(l) => l
                .client
                .call(&Request::Route {
                    pool,
                    addrs: addrs.to_vec(),
                })
                .await
                .map(drop),
        }
    }

    /// Requests in flight to `addr` (0 when the router cannot say).
    pub async fn in_flight(&self, addr: SocketAddr) -> u64 {
        match self {
            Traffic::Builtin(r) => u64::from(r.in_flight(addr)),
            Traffic::Haproxy(h) => h.in_flight(addr).await.unwrap_or(0),
            Traffic::Live(l) => l
                .client
                .call(&Request::InFlight { addr })
                .await
                .ok()
                .and_then(|r| r.in_flight)
                .map_or(0, u64::from),
        }
    }

    /// After `addr` left its pool: waits until it has no request in flight,
    /// or `timeout`.
    pub async fn drain(&self, addr: SocketAddr, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.in_flight(addr).await == 0 {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn shutdown(&self) {
        if let Traffic::Haproxy(h) = self {
            h.shutdown().await;
        }
    }
}
