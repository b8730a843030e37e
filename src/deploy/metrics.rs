//! Where an analysis gets its numbers: the router's own samples (built-in),
//! or PromQL over a Prometheus server's HTTP API.
//!
//! Either way one analysis run gets, per pool and for the same window,
//! requests and errors (for the proportion test and `error_rate`), latency
//! samples (for the rank test) and the p50/p95/p99 (for thresholds). The
//! built-in source has every request's time; Prometheus has histograms, so
//! its latency samples are the latency query evaluated at steps across the
//! window, the way Kayenta compares time series.
//!
//! A provider that fails (Prometheus down, a query error) is an error, not
//! a zero: the analysis counts it against `consecutive_error_limit`.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::router::{Pool, Router, Window};
use crate::pipeline::model::{Prometheus, ThresholdMetric};

/// One pool over one window.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Measured {
    pub requests: u64,
    pub errors: u64,
    /// What the rank test compares.
    pub latencies_ms: Vec<f64>,
    /// p50, p95, p99 in ms (`None` without data).
    pub quantiles_ms: [Option<f64>; 3],
}

const QUANTILES: [f64; 3] = [0.50, 0.95, 0.99];

impl Measured {
    pub fn from_window(w: Window) -> Measured {
        let mut sorted = w.latencies_ms.clone();
        sorted.sort_by(f64::total_cmp);
        let q = |q: f64| {
            (!sorted.is_empty())
                .then(|| sorted.get(((sorted.len() as f64 - 1.0) * q).round() as usize).copied())
                .flatten()
        };
        Measured {
            requests: w.requests,
            errors: w.errors,
            quantiles_ms: QUANTILES.map(q),
            latencies_ms: w.latencies_ms,
        }
    }

    /// A threshold metric's value (`None` without requests).
    pub fn value(&self, m: ThresholdMetric) -> Option<f64> {
        if self.requests == 0 {
            return None;
        }
        match m {
            ThresholdMetric::ErrorRate => Some(self.errors as f64 / self.requests as f64),
            ThresholdMetric::P50Ms => self.quantiles_ms[0],
            ThresholdMetric::P95Ms => self.quantiles_ms[1],
            ThresholdMetric::P99Ms => self.quantiles_ms[2],
        }
    }
}

pub enum Source {
    Builtin,
    Prometheus(Box<PromClient>),
}

impl Source {
    pub fn name(&self) -> &'static str {
        match self {
            Source::Builtin => "the router",
            Source::Prometheus(_) => "Prometheus",
        }
    }

    /// Both pools (stable, canary) since `since`.
    pub async fn measure(&self, router: &Router, service: &str, since: Instant) -> Result<[Measured; 2], String> {
        match self {
            Source::Builtin => Ok([Pool::Stable, Pool::Canary].map(|p| Measured::from_window(router.window(p, since)))),
            Source::Prometheus(p) => {
                let window = since.elapsed();
                Ok([
                    p.measure(service, Pool::Stable, window).await?,
                    p.measure(service, Pool::Canary, window).await?,
                ])
            }
        }
    }
}

pub struct PromClient {
    pub spec: Prometheus,
    client: Client<HttpConnector, Empty<Bytes>>,
}

/// `$window` as Prometheus writes durations: whole seconds, at least 1.
fn prom_duration(d: Duration) -> String {
    format!("{}s", d.as_secs_f64().ceil().max(1.0) as u64)
}

impl PromClient {
    pub fn new(spec: Prometheus) -> PromClient {
        PromClient {
            spec,
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    fn fill(query: &str, service: &str, pool: Pool, window: Duration, quantile: f64) -> String {
        query
            .replace("$service", service)
            .replace("$pool", pool.name())
            .replace("$window", &prom_duration(window))
            .replace("$quantile", &quantile.to_string())
    }

    /// GETs an API path and returns `data.result` of a successful answer.
    async fn api(&self, path: &str, params: &[(&str, String)]) -> Result<Vec<serde_json::Value>, String> {
        let query: String = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(params.iter().map(|(k, v)| (*k, v.as_str())))
            .finish();
        let url = format!("{}{path}?{query}", self.spec.url);
        let uri: hyper::Uri = url.parse().map_err(|e| format!("bad Prometheus URL {url}: {e}"))?;
        let ask = async {
            let resp = self.client.get(uri).await.map_err(|e| e.to_string())?;
            let status = resp.status();
            let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
            let v: serde_json::Value = serde_json::from_slice(&body)
                .map_err(|_| format!("HTTP {status}: {}", String::from_utf8_lossy(&body).trim()))?;
            if v["status"] != "success" {
                return Err(format!(
                    "{} {}",
                    v["errorType"].as_str().unwrap_or("error"),
                    v["error"].as_str().unwrap_or("(no message)")
                ));
            }
            Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
        };
        match tokio::time::timeout(Duration::from_secs(10), ask).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(format!("Prometheus at {}: {e}", self.spec.url)),
            Err(_) => Err(format!("Prometheus at {} did not answer in 10 s", self.spec.url)),
        }
    }

    /// An instant query reduced to one number: the first series' value;
    /// `None` for no series or NaN (no data).
    pub async fn scalar(&self, query: &str) -> Result<Option<f64>, String> {
        let r = self.api("/api/v1/query", &[("query", query.to_string())]).await?;
        Ok(r.first().and_then(|s| sample_value(&s["value"])))
    }

    /// A range query's first series, as values.
    pub async fn series(&self, query: &str, window: Duration, step: Duration) -> Result<Vec<f64>, String> {
        let end = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        let r = self
            .api(
                "/api/v1/query_range",
                &[
                    ("query", query.to_string()),
                    ("start", format!("{:.3}", end - window.as_secs_f64())),
                    ("end", format!("{end:.3}")),
                    ("step", format!("{:.3}", step.as_secs_f64())),
                ],
            )
            .await?;
        Ok(r.first()
            .and_then(|s| s["values"].as_array())
            .map(|vs| vs.iter().filter_map(sample_value).collect())
            .unwrap_or_default())
    }

    async fn measure(&self, service: &str, pool: Pool, window: Duration) -> Result<Measured, String> {
        let q = |query: &str, w: Duration, quantile: f64| Self::fill(query, service, pool, w, quantile);
        let count = |v: Option<f64>| v.map_or(0, |v| v.round().max(0.0) as u64);
        let requests = count(self.scalar(&q(&self.spec.requests, window, 0.0)).await?);
        let errors = count(self.scalar(&q(&self.spec.errors, window, 0.0)).await?);
        let mut quantiles_ms = [None; 3];
        for (slot, quantile) in quantiles_ms.iter_mut().zip(QUANTILES) {
            *slot = self.scalar(&q(&self.spec.latency, window, quantile)).await?;
        }
        // Samples: the median latency every `step` across the window, each
        // over a short range of its own.
        let step = (window / 20).max(Duration::from_secs(1));
        let latencies_ms = self
            .series(
                &q(&self.spec.latency, (step * 4).max(Duration::from_secs(5)), 0.5),
                window,
                step,
            )
            .await?;
        Ok(Measured {
            requests,
            errors,
            latencies_ms,
            quantiles_ms,
        })
    }
}

/// `[ts, "value"]` as a finite number.
fn sample_value(v: &serde_json::Value) -> Option<f64> {
    v.get(1)?.as_str()?.parse::<f64>().ok().filter(|f| f.is_finite())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_give_counts_quantiles_and_threshold_values() {
        let w = Window {
            latencies_ms: (1..=100).map(f64::from).collect(),
            requests: 100,
            errors: 5,
        };
        let m = Measured::from_window(w);
        assert_eq!(m.value(ThresholdMetric::ErrorRate), Some(0.05));
        assert_eq!(m.value(ThresholdMetric::P50Ms), Some(51.0));
        assert_eq!(m.value(ThresholdMetric::P95Ms), Some(95.0));
        assert_eq!(m.value(ThresholdMetric::P99Ms), Some(99.0));
        let empty = Measured::from_window(Window::default());
        assert_eq!(empty.value(ThresholdMetric::ErrorRate), None);
        assert_eq!(empty.value(ThresholdMetric::P95Ms), None);
    }

    #[test]
    fn queries_get_their_placeholders() {
        let q = PromClient::fill(
            crate::pipeline::model::PROM_LATENCY,
            "web",
            Pool::Canary,
            Duration::from_millis(2500),
            0.95,
        );
        assert!(q.starts_with("1000 * histogram_quantile(0.95,"), "{q}");
        assert!(q.contains(r#"{service="web",pool="canary"}[3s]"#), "{q}");
        assert_eq!(sample_value(&serde_json::json!([1.0, "NaN"])), None);
        assert_eq!(sample_value(&serde_json::json!([1.0, "2.5"])), Some(2.5));
    }
}
