//! The built-in traffic router: a weighted HTTP reverse proxy (hyper).
//!
//! The canary's share is one atomic integer in tenths of a percent, so a
//! weight change is a single store that the next request sees, whatever
//! the replica counts; within a pool, replicas take turns. Requests can be
//! pinned: `X-Canary: always|never`, and (when sticky) a cookie that keeps
//! a client on the pool it first landed in. Each pool counts requests,
//! errors (5xx and connection failures; never a request the router refuses
//! as malformed, answered 400) and latency, both as a histogram
//! (p50/p95/p99 since the start) and as recent samples the judge reads.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use crate::protocol::view::{Pool, Totals, percent};

/// Full traffic, in tenths of a percent.
pub const FULL: u32 = 1000;

/// The sticky-session cookie.
pub const COOKIE: &str = "trackside_pool";
/// Recent samples kept per pool (about two minutes at 1,000 requests/s).
const RECENT: usize = 120_000;
/// Histogram buckets per doubling of latency: 32, so a bucket is 2.2% wide
/// and a quantile read from the histogram at most 2.2% above the truth.
const PER_DOUBLING: f64 = 32.0;
/// Histogram buckets: bucket i holds latencies below 10 µs * 2^(i/32), up to
/// about 80 s (slower ones count in the last bucket). About 6 KiB per pool.
const BUCKETS: usize = 23 * 32;

#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub at: Instant,
    pub latency_ms: f32,
    pub error: bool,
}

struct PoolStats {
    requests: AtomicU64,
    errors: AtomicU64,
    /// Sum of latencies in microseconds (for the Prometheus histogram's `_sum`).
    sum_us: AtomicU64,
    buckets: Vec<AtomicU64>,
    recent: Mutex<VecDeque<Sample>>,
}

impl PoolStats {
    fn new() -> Self {
        PoolStats {
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            recent: Mutex::new(VecDeque::new()),
        }
    }

    fn record(&self, s: Sample) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.sum_us
            .fetch_add((f64::from(s.latency_ms) * 1000.0) as u64, Ordering::Relaxed);
        if s.error {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.buckets[bucket_of(f64::from(s.latency_ms))].fetch_add(1, Ordering::Relaxed);
        let mut r = self.recent.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if r.len() == RECENT {
            r.pop_front();
        }
        r.push_back(s);
    }
}

fn bucket_upper_ms(i: usize) -> f64 {
    0.01 * 2f64.powf(i as f64 / PER_DOUBLING)
}

fn bucket_of(ms: f64) -> usize {
    if ms <= 0.01 {
        return 0;
    }
    (((ms / 0.01).log2() * PER_DOUBLING).ceil() as usize).min(BUCKETS - 1)
}

/// What a window of recent traffic to one pool looked like.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Window {
    pub latencies_ms: Vec<f64>,
    pub requests: u64,
    pub errors: u64,
}

pub struct Router {
    weight: AtomicU32,
    pools: [RwLock<Arc<Vec<SocketAddr>>>; 2],
    turn: AtomicUsize,
    stats: [PoolStats; 2],
    sticky: bool,
    /// Requests in flight per backend, for draining.
    in_flight: Mutex<std::collections::HashMap<SocketAddr, u32>>,
    /// Where each request's measurement also goes (a service process
    /// streams them to deploys).
    tap: std::sync::OnceLock<tokio::sync::broadcast::Sender<super::service::WireSample>>,
}

/// Where a request goes, and whether to pin the client there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice {
    pub pool: Pool,
    pub set_cookie: bool,
}

impl Router {
    pub fn new(sticky: bool) -> Arc<Router> {
        Arc::new(Router {
            weight: AtomicU32::new(0),
            pools: [RwLock::new(Arc::new(Vec::new())), RwLock::new(Arc::new(Vec::new()))],
            turn: AtomicUsize::new(0),
            stats: [PoolStats::new(), PoolStats::new()],
            sticky,
            in_flight: Mutex::new(std::collections::HashMap::new()),
            tap: std::sync::OnceLock::new(),
        })
    }

    /// Sends every request's measurement to `tx` too (set once).
    pub fn tap(&self, tx: tokio::sync::broadcast::Sender<super::service::WireSample>) {
        let _ = self.tap.set(tx);
    }

    /// The canary's share, in tenths of a percent (clamped to 0..=1000).
    pub fn set_weight(&self, weight: u32) {
        self.weight.store(weight.min(FULL), Ordering::SeqCst);
    }

    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::SeqCst)
    }

    pub fn set_backends(&self, pool: Pool, addrs: Vec<SocketAddr>) {
        *self.pools[pool.index()]
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(addrs);
    }

    pub fn backends(&self, pool: Pool) -> Arc<Vec<SocketAddr>> {
        self.pools[pool.index()]
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The routing rule. `roll` is uniform in 0..1000 (injected for tests).
    pub fn choose(&self, header: Option<&str>, cookie: Option<Pool>, roll: u32) -> Choice {
        let weight = self.weight();
        let has_canary = !self.backends(Pool::Canary).is_empty();
        let has_stable = !self.backends(Pool::Stable).is_empty();
        let pool = match header.map(str::trim) {
            Some(h) if h.eq_ignore_ascii_case("always") && has_canary => Some(Pool::Canary),
            Some(h) if h.eq_ignore_ascii_case("never") && has_stable => Some(Pool::Stable),
            _ => None,
        };
        if let Some(pool) = pool {
            return Choice {
                pool,
                set_cookie: false,
            };
        }
        // A pinned client stays while its pool still takes traffic.
        if self.sticky
            && let Some(p) = cookie
        {
            let open = match p {
                Pool::Canary => weight > 0 && has_canary,
                Pool::Stable => weight < FULL && has_stable,
            };
            if open {
                return Choice {
                    pool: p,
                    set_cookie: false,
                };
            }
        }
        let pool = if roll < weight && has_canary || !has_stable {
            Pool::Canary
        } else {
            Pool::Stable
        };
        Choice {
            pool,
            set_cookie: self.sticky,
        }
    }

    pub fn totals(&self, pool: Pool) -> Totals {
        let s = &self.stats[pool.index()];
        let counts: Vec<u64> = s.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        let quantile = |q: f64| {
            if total == 0 {
                return 0.0;
            }
            let target = (q * total as f64).ceil() as u64;
            let mut seen = 0;
            for (i, c) in counts.iter().enumerate() {
                seen += c;
                if seen >= target {
                    return bucket_upper_ms(i);
                }
            }
            bucket_upper_ms(BUCKETS - 1)
        };
        Totals {
            requests: s.requests.load(Ordering::Relaxed),
            errors: s.errors.load(Ordering::Relaxed),
            p50_ms: quantile(0.50),
            p95_ms: quantile(0.95),
            p99_ms: quantile(0.99),
        }
    }

    /// The router's counters in Prometheus' text format (version 0.0.4),
    /// for a real Prometheus to scrape. Latency buckets are the standard
    /// ones; an internal bucket (2.2% wide) is counted under the first
    /// standard bound at or above its upper edge, so near a bound a request
    /// may land one bucket slower than its exact time: latency is
    /// over-estimated, never under-estimated.
    pub fn prometheus(&self, service: &str) -> String {
        const LE: [f64; 14] = [
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ];
        let service = service.replace('\\', "\\\\").replace('"', "\\\"");
        let mut out = String::new();
        out.push_str("# HELP trackside_requests_total Requests the router sent to a pool.\n");
        out.push_str("# TYPE trackside_requests_total counter\n");
        for pool in [Pool::Stable, Pool::Canary] {
            let n = self.stats[pool.index()].requests.load(Ordering::Relaxed);
            out.push_str(&format!(
                "trackside_requests_total{{service=\"{service}\",pool=\"{}\"}} {n}\n",
                pool.name()
            ));
        }
        out.push_str("# HELP trackside_errors_total Answers with status 5xx, and connection failures.\n");
        out.push_str("# TYPE trackside_errors_total counter\n");
        for pool in [Pool::Stable, Pool::Canary] {
            let n = self.stats[pool.index()].errors.load(Ordering::Relaxed);
            out.push_str(&format!(
                "trackside_errors_total{{service=\"{service}\",pool=\"{}\"}} {n}\n",
                pool.name()
            ));
        }
        out.push_str("# HELP trackside_request_duration_seconds Time to the backend's response headers.\n");
        out.push_str("# TYPE trackside_request_duration_seconds histogram\n");
        for pool in [Pool::Stable, Pool::Canary] {
            let st = &self.stats[pool.index()];
            let counts: Vec<u64> = st.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect();
            let labels = format!("service=\"{service}\",pool=\"{}\"", pool.name());
            for le in LE {
                let n: u64 = counts
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| bucket_upper_ms(*i) / 1000.0 <= le)
                    .map(|(_, c)| c)
                    .sum();
                out.push_str(&format!(
                    "trackside_request_duration_seconds_bucket{{{labels},le=\"{le}\"}} {n}\n"
                ));
            }
            let total: u64 = counts.iter().sum();
            out.push_str(&format!(
                "trackside_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {total}\n"
            ));
            let sum = st.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
            out.push_str(&format!("trackside_request_duration_seconds_sum{{{labels}}} {sum}\n"));
            out.push_str(&format!(
                "trackside_request_duration_seconds_count{{{labels}}} {total}\n"
            ));
        }
        out.push_str("# HELP trackside_canary_weight_ratio Share of traffic sent to the canary.\n");
        out.push_str("# TYPE trackside_canary_weight_ratio gauge\n");
        out.push_str(&format!(
            "trackside_canary_weight_ratio{{service=\"{service}\"}} {}\n",
            f64::from(self.weight()) / f64::from(FULL)
        ));
        out
    }

    /// Samples of one pool since `since`.
    pub fn window(&self, pool: Pool, since: Instant) -> Window {
        let r = self.stats[pool.index()]
            .recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut w = Window::default();
        for s in r.iter().rev().take_while(|s| s.at >= since) {
            w.requests += 1;
            w.errors += u64::from(s.error);
            w.latencies_ms.push(f64::from(s.latency_ms));
        }
        w
    }

    /// Requests to `addr` not answered yet.
    pub fn in_flight(&self, addr: SocketAddr) -> u32 {
        let m = self.in_flight.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        m.get(&addr).copied().unwrap_or(0)
    }

    fn track(&self, addr: SocketAddr, delta: i32) {
        let mut m = self.in_flight.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = m.entry(addr).or_insert(0);
        *n = n.saturating_add_signed(delta);
        if *n == 0 {
            m.remove(&addr);
        }
    }
}

/// One request counted in flight to a backend while this lives: until the
/// answer's body has been sent (or the client went away), since a replica
/// stopped after its headers but before its body would cut the answer short.
struct InFlight(Arc<Router>, SocketAddr);

impl InFlight {
    fn enter(r: &Arc<Router>, addr: SocketAddr) -> Self {
        r.track(addr, 1);
        InFlight(r.clone(), addr)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.track(self.1, -1);
    }
}

impl Router {
    pub fn record(&self, pool: Pool, latency: Duration, error: bool) {
        let latency_ms = latency.as_secs_f32() * 1000.0;
        self.stats[pool.index()].record(Sample {
            at: Instant::now(),
            latency_ms,
            error,
        });
        if let Some(tx) = self.tap.get()
            && tx.receiver_count() > 0
        {
            let _ = tx.send(super::service::WireSample {
                pool,
                latency_ms,
                error,
            });
        }
    }

    /// Serves until `stop` is cancelled.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, stop: CancellationToken) {
        let client: Client<HttpConnector, BoxBody<Bytes, hyper::Error>> =
            Client::builder(TokioExecutor::new()).build_http();
        super::http::serve(listener, super::http::Limits::default(), stop, move |req| {
            let (router, client) = (self.clone(), client.clone());
            async move { router.forward(&client, req).await }
        })
        .await;
    }

    async fn forward(
        self: &Arc<Self>,
        client: &Client<HttpConnector, BoxBody<Bytes, hyper::Error>>,
        req: Request<Incoming>,
    ) -> Response<BoxBody<Bytes, hyper::Error>> {
        // Only origin-form requests (`GET /path`) are proxied: `OPTIONS *`
        // or an absolute URI is the client's business, never a pool's error.
        if !req.uri().path().starts_with('/') || req.uri().authority().is_some() {
            return text(
                StatusCode::BAD_REQUEST,
                "the router takes requests for a path (`GET /...`)\n",
            );
        }
        // A request body that breaks (bad chunked encoding, a client gone
        // mid-upload) fails the forward too: it is told apart from a
        // backend failure by this flag, and never counted against a pool.
        let body_failed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = body_failed.clone();
        let mut req = req.map(move |b| {
            b.map_err(move |e| {
                flag.store(true, Ordering::Relaxed);
                e
            })
            .boxed()
        });
        let header = req
            .headers()
            .get("x-canary")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let cookie = req
            .headers()
            .get_all(hyper::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|kv| {
                let (k, v) = kv.trim().split_once('=')?;
                if k != COOKIE {
                    return None;
                }
                match v {
                    "canary" => Some(Pool::Canary),
                    "stable" => Some(Pool::Stable),
                    _ => None,
                }
            });
        let choice = self.choose(header.as_deref(), cookie, fastrand::u32(0..FULL));
        let backends = self.backends(choice.pool);
        if backends.is_empty() {
            return text(StatusCode::SERVICE_UNAVAILABLE, "no backend is serving\n");
        }
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        let mut addr = backends[turn % backends.len()];
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str()).to_string();
        let Ok(uri) = format!("http://{addr}{path}").parse::<hyper::Uri>() else {
            return text(StatusCode::BAD_REQUEST, "bad request path\n");
        };
        // A request without a body goes to another replica when this one
        // refuses the connection (it never saw the request) or, for an
        // idempotent method, drops it before answering: a replica that just
        // died costs no client an error.
        let idempotent = matches!(
            *req.method(),
            hyper::Method::GET | hyper::Method::HEAD | hyper::Method::OPTIONS
        );
        let again = (hyper::body::Body::is_end_stream(req.body()) && backends.len() > 1).then(|| {
            let mut r = Request::new(Full::new(Bytes::new()).map_err(|never| match never {}).boxed());
            *r.method_mut() = req.method().clone();
            *r.headers_mut() = req.headers().clone();
            *r.version_mut() = req.version();
            r
        });
        *req.uri_mut() = uri;
        let started = Instant::now();
        let mut busy = InFlight::enter(self, addr);
        let mut result = client.request(req).await;
        if let (Err(e), Some(mut retry)) = (&result, again)
            && (e.is_connect() || idempotent)
            && !body_failed.load(Ordering::Relaxed)
        {
            addr = backends[(turn + 1) % backends.len()];
            if let Ok(uri) = format!("http://{addr}{path}").parse::<hyper::Uri>() {
                *retry.uri_mut() = uri;
                busy = InFlight::enter(self, addr);
                result = client.request(retry).await;
            }
        }
        let latency = started.elapsed();
        let mut resp = match result {
            Ok(r) => {
                self.record(choice.pool, latency, r.status().is_server_error());
                // The body holds the count until it is sent or dropped.
                r.map(|b| {
                    b.map_frame(move |frame| {
                        let _ = &busy;
                        frame
                    })
                    .boxed()
                })
            }
            Err(_) if body_failed.load(Ordering::Relaxed) => {
                return text(StatusCode::BAD_REQUEST, "the request body could not be read\n");
            }
            Err(e) => {
                self.record(choice.pool, latency, true);
                text(
                    StatusCode::BAD_GATEWAY,
                    &format!("{} backend {addr}: {e}\n", choice.pool.name()),
                )
            }
        };
        if choice.set_cookie
            && let Ok(v) = hyper::header::HeaderValue::from_str(&format!("{COOKIE}={}; Path=/", choice.pool.name()))
        {
            resp.headers_mut().append(hyper::header::SET_COOKIE, v);
        }
        resp
    }
}

/// More metrics for the endpoint, made at each scrape (the pipeline's, from
/// history): blocking work, run off the async threads.
pub type ExtraMetrics = Arc<dyn Fn() -> String + Send + Sync>;

/// Serves `GET /metrics` (Prometheus text format) until `stop`: the
/// service's traffic, then `extra`'s.
pub async fn serve_metrics(
    router: Arc<Router>,
    service: String,
    listener: TcpListener,
    stop: CancellationToken,
    extra: Option<ExtraMetrics>,
) {
    super::http::serve(
        listener,
        super::http::Limits::default(),
        stop,
        move |req: Request<Incoming>| {
            let (router, service, extra) = (router.clone(), service.clone(), extra.clone());
            async move {
                let mut r = if req.uri().path() == "/metrics" {
                    let mut body = router.prometheus(&service);
                    if let Some(extra) = extra
                        && let Ok(more) = tokio::task::spawn_blocking(move || extra()).await
                    {
                        body.push_str(&more);
                    }
                    text(StatusCode::OK, &body)
                } else {
                    text(StatusCode::NOT_FOUND, "trackside serves /metrics here\n")
                };
                if let Ok(v) = hyper::header::HeaderValue::from_str("text/plain; version=0.0.4") {
                    r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
                }
                r
            }
        },
    )
    .await;
}

fn text(status: StatusCode, body: &str) -> Response<BoxBody<Bytes, hyper::Error>> {
    let mut r = Response::new(
        Full::new(Bytes::from(body.to_string()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn router(sticky: bool) -> Arc<Router> {
        let r = Router::new(sticky);
        r.set_backends(Pool::Stable, vec![addr(1), addr(2), addr(3)]);
        r.set_backends(Pool::Canary, vec![addr(4)]);
        r
    }

    /// A replica drained before it is stopped must not cut an answer whose
    /// headers came but whose body is still on its way: the request counts
    /// in flight until its body has been sent.
    #[tokio::test]
    async fn a_request_is_in_flight_until_its_body_has_been_sent() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let backend = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let backend_addr = backend.local_addr().expect("addr");
        let (rest_tx, rest_rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let (mut s, _) = backend.accept().await.expect("accept");
            let mut buf = vec![0u8; 4096];
            let mut got = Vec::new();
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).await.expect("read");
                assert!(n > 0, "the request ended early");
                got.extend_from_slice(&buf[..n]);
            }
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nfir")
                .await
                .expect("head");
            s.flush().await.expect("flush");
            let _ = rest_rx.await;
            s.write_all(b"st\n").await.expect("rest");
        });
        let r = Router::new(false);
        r.set_backends(Pool::Stable, vec![backend_addr]);
        let front = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let front_addr = front.local_addr().expect("addr");
        let stop = CancellationToken::new();
        tokio::spawn(r.clone().serve(front, stop.clone()));

        let mut c = tokio::net::TcpStream::connect(front_addr).await.expect("connect");
        c.write_all(b"GET / HTTP/1.0\r\nHost: web\r\n\r\n").await.expect("send");
        let mut text = Vec::new();
        let mut buf = vec![0u8; 4096];
        while !text.windows(3).any(|w| w == b"fir") {
            let n = c.read(&mut buf).await.expect("read");
            assert!(n > 0, "the answer ended early: {}", String::from_utf8_lossy(&text));
            text.extend_from_slice(&buf[..n]);
        }
        // The headers and part of the body reached the client: still in flight.
        assert_eq!(r.in_flight(backend_addr), 1);
        rest_tx.send(()).expect("backend waits");
        c.read_to_end(&mut text).await.expect("read the rest");
        assert!(String::from_utf8_lossy(&text).ends_with("\r\n\r\nfirst\n"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while r.in_flight(backend_addr) != 0 {
            assert!(Instant::now() < deadline, "still counted in flight after the body");
            tokio::task::yield_now().await;
        }
        stop.cancel();
    }

    #[test]
    fn weights_have_a_tenth_of_a_percent_resolution_whatever_the_replicas() {
        let r = router(false);
        r.set_weight(1); // 0.1%
        let canary = (0..FULL)
            .filter(|&roll| r.choose(None, None, roll).pool == Pool::Canary)
            .count();
        assert_eq!(canary, 1, "exactly one roll in a thousand");
        r.set_weight(333);
        let canary = (0..FULL)
            .filter(|&roll| r.choose(None, None, roll).pool == Pool::Canary)
            .count();
        assert_eq!(canary, 333);
        r.set_weight(5000);
        assert_eq!(r.weight(), FULL, "clamped");
    }

    #[test]
    fn headers_pin_and_cookies_stick_until_their_pool_closes() {
        let r = router(true);
        r.set_weight(0);
        assert_eq!(r.choose(Some("always"), None, 999).pool, Pool::Canary);
        r.set_weight(FULL);
        assert_eq!(r.choose(Some("never"), None, 0).pool, Pool::Stable);
        r.set_weight(100);
        let first = r.choose(None, None, 50);
        assert_eq!(
            first,
            Choice {
                pool: Pool::Canary,
                set_cookie: true
            }
        );
        assert_eq!(r.choose(None, Some(Pool::Canary), 900).pool, Pool::Canary, "sticky");
        r.set_weight(0); // aborted
        assert_eq!(
            r.choose(None, Some(Pool::Canary), 0).pool,
            Pool::Stable,
            "abort beats stickiness"
        );
    }

    #[test]
    fn prometheus_text_has_counters_a_cumulative_histogram_and_the_weight() {
        let r = router(false);
        r.set_weight(250);
        r.record(Pool::Canary, Duration::from_micros(300), false);
        r.record(Pool::Canary, Duration::from_millis(30), true);
        let text = r.prometheus("web");
        let value = |prefix: &str| -> f64 {
            text.lines()
                .find(|l| l.starts_with(prefix))
                .and_then(|l| l.rsplit(' ').next()?.parse().ok())
                .unwrap_or_else(|| panic!("{prefix} missing:\n{text}"))
        };
        assert_eq!(value("trackside_requests_total{service=\"web\",pool=\"canary\"}"), 2.0);
        assert_eq!(value("trackside_errors_total{service=\"web\",pool=\"canary\"}"), 1.0);
        assert_eq!(value("trackside_requests_total{service=\"web\",pool=\"stable\"}"), 0.0);
        let bucket = |le: &str| {
            value(&format!(
                "trackside_request_duration_seconds_bucket{{service=\"web\",pool=\"canary\",le=\"{le}\"}}"
            ))
        };
        assert_eq!(bucket("0.0005"), 1.0, "0.3 ms is under 0.5 ms");
        assert_eq!(bucket("0.025"), 1.0, "30 ms is not under 25 ms");
        assert_eq!(bucket("0.05"), 2.0);
        assert_eq!(bucket("+Inf"), 2.0);
        let sum = value("trackside_request_duration_seconds_sum{service=\"web\",pool=\"canary\"}");
        assert!((sum - 0.0303).abs() < 1e-6, "{sum}");
        assert_eq!(value("trackside_canary_weight_ratio{service=\"web\"}"), 0.25);
        // Every sample line is `name{labels} value`: nothing else.
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(l.split(' ').count() == 2 && l.contains('{'), "{l}");
        }
    }

    #[test]
    fn quantiles_come_from_the_histogram() {
        let r = router(false);
        for ms in 1..=100 {
            r.record(Pool::Stable, Duration::from_millis(ms), ms > 98);
        }
        let t = r.totals(Pool::Stable);
        assert_eq!((t.requests, t.errors), (100, 2));
        // Buckets are 2.2% wide: a quantile is at most one bucket above the truth.
        assert!((50.0..=51.1).contains(&t.p50_ms), "{t:?}");
        assert!((95.0..=97.1).contains(&t.p95_ms), "{t:?}");
        assert!((99.0..=101.2).contains(&t.p99_ms), "{t:?}");
        // Beyond the last bucket: counted there, not lost.
        r.record(Pool::Canary, Duration::from_secs(600), false);
        assert!(r.totals(Pool::Canary).p50_ms > 80_000.0);
        let w = r.window(Pool::Stable, Instant::now() - Duration::from_secs(60));
        assert_eq!(w.requests, 100);
        assert_eq!(r.window(Pool::Canary, Instant::now()).requests, 0);
    }
}
