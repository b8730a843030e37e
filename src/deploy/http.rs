//! The one HTTP/1 accept loop of the router, its metrics endpoint and the
//! demo service.
//!
//! It is bounded: at most [`Limits::max_connections`] connections at once
//! (further clients wait in the listen backlog), a client has
//! [`Limits::header_timeout`] to send its request head (slowloris), and
//! running out of file descriptors backs off instead of spinning
//! ([`crate::net::accept_loop`]).

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// How much one listener takes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once.
    pub max_connections: usize,
    /// Time a client has to send a request's head, on a new or kept-alive connection.
    pub header_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 1024,
            header_timeout: Duration::from_secs(10),
        }
    }
}

/// Accepts connections until `stop`, answering every request with `handle`.
/// At `stop`, open connections finish the request they are on and close:
/// a kept-alive client (a Prometheus scraping, a browser) must not go on
/// talking to a router whose deploy is over.
pub async fn serve<F, Fut, B>(listener: TcpListener, limits: Limits, stop: CancellationToken, handle: F)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let what = listener
        .local_addr()
        .map_or_else(|_| "http listener".to_string(), |a| format!("http listener {a}"));
    let l = &listener;
    let accept = move || async move { l.accept().await.map(|(s, _)| s) };
    crate::net::accept_loop(&what, limits.max_connections, &stop, accept, |stream, slot| {
        let _ = stream.set_nodelay(true);
        let (handle, stop) = (handle.clone(), stop.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |req| {
                let handle = handle.clone();
                async move { Ok::<_, Infallible>(handle(req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                () = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    })
    .await;
}
