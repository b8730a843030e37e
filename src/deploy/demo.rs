//! A small HTTP service to deploy in demos and tests
//! (`trackside demo-service`), and a load generator (`traffic: {rps}`), so
//! a canary has something to serve and someone to serve it to without
//! anything else installed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
pub struct DemoService {
    pub version: String,
    /// Share of requests answered with 500 (0.0..=1.0).
    pub error_rate: f64,
    /// Typical latency; each answer takes 80..120% of it.
    pub latency: Duration,
}

impl DemoService {
    fn answer(&self, path: &str, roll: f64) -> (StatusCode, String) {
        if path == "/healthz" {
            return (StatusCode::OK, format!("ok {}\n", self.version));
        }
        if roll < self.error_rate {
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!(
                    "version {} failed (demo error rate {})\n",
                    self.version, self.error_rate
                ),
            )
        } else {
            (StatusCode::OK, format!("version {}\n", self.version))
        }
    }

    /// Serves until `stop` is cancelled.
    pub async fn serve(self, listener: TcpListener, stop: CancellationToken) {
        let me = Arc::new(self);
        super::http::serve(
            listener,
            super::http::Limits::default(),
            stop,
            move |req: Request<hyper::body::Incoming>| {
                let me = me.clone();
                async move {
                    let (status, body) = me.answer(req.uri().path(), fastrand::f64());
                    // Health checks answer at once; a zero latency skips the timer.
                    if req.uri().path() != "/healthz" && !me.latency.is_zero() {
                        let factor = 0.8 + 0.4 * fastrand::f64();
                        tokio::time::sleep(me.latency.mul_f64(factor)).await;
                    }
                    let mut r = Response::new(Full::new(Bytes::from(body)));
                    *r.status_mut() = status;
                    r
                }
            },
        )
        .await;
    }
}

/// Counts of what the load generator sent and got back, and how it pins
/// requests to a pool.
#[derive(Debug, Default)]
pub struct TrafficCounts {
    pub sent: AtomicU64,
    pub ok: AtomicU64,
    pub failed: AtomicU64,
    /// Every other request carries `X-Canary: always` (1) or `never` (2);
    /// 0 sends none. Blue-green uses it to measure the pool that gets no
    /// production traffic: green before the switch, blue after it.
    pub pin: std::sync::atomic::AtomicU8,
}

/// Sends `rps` GET requests per second to `target` until `stop`; at most
/// 256 in flight (beyond that a tick is skipped rather than queued).
pub async fn generate(target: SocketAddr, rps: u32, stop: CancellationToken, counts: Arc<TrafficCounts>) {
    if rps == 0 {
        return;
    }
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let limit = Arc::new(tokio::sync::Semaphore::new(256));
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rps)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let Ok(uri) = format!("http://{target}/").parse::<hyper::Uri>() else {
        return;
    };
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            continue;
        };
        let (client, uri, counts) = (client.clone(), uri.clone(), counts.clone());
        let n = counts.sent.fetch_add(1, Ordering::Relaxed);
        let pin = match counts.pin.load(Ordering::Relaxed) {
            1 if n % 2 == 0 => Some("always"),
            2 if n % 2 == 0 => Some("never"),
            _ => None,
        };
        let mut req = hyper::Request::get(uri);
        if let Some(p) = pin {
            req = req.header("x-canary", p);
        }
        let Ok(req) = req.body(Empty::new()) else {
            continue;
        };
        tokio::spawn(async move {
            let ok = match client.request(req).await {
                Ok(r) => {
                    let good = r.status().is_success();
                    let _ = r.into_body().collect().await;
                    good
                }
                Err(_) => false,
            };
            let c = if ok { &counts.ok } else { &counts.failed };
            c.fetch_add(1, Ordering::Relaxed);
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_follow_the_rate_and_health_is_always_ok() {
        let s = DemoService {
            version: "v2".into(),
            error_rate: 0.2,
            latency: Duration::ZERO,
        };
        assert_eq!(s.answer("/", 0.19).0, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(s.answer("/", 0.2).0, StatusCode::OK);
        assert_eq!(s.answer("/healthz", 0.0).0, StatusCode::OK);
        assert!(s.answer("/", 0.5).1.contains("v2"));
    }
}
