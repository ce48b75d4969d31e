//! Serving HTTP: the connection loop and the limits a production server needs.
//!
//! Every limit is a named constant here. A cache hit answered by the hot path is not limited:
//! it waits on nothing and takes microseconds, so shedding it would only turn away the
//! cheapest work; everything that reaches the router (misses, writes, listings) is.

use std::convert::Infallible;
use std::time::Duration;

use axum::BoxError;
use axum::body::Body;
use axum::error_handling::HandleErrorLayer;
use axum::extract::MatchedPath;
use axum::http::{Method, Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::{Service, ServiceBuilder, ServiceExt};

use crate::error::Error;
use crate::metrics::Metrics;

/// Longest a routed request may take, body upload included. A healthy request takes well
/// under the 50 ms p99 target, and a store call gives up after 1 s (after three failures the
/// circuit breaker answers at once), so only a stalled client upload or a pathological chain
/// of retries gets here; it then frees its slot and the client gets 503 with `Retry-After`.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Routed requests in progress at once; the next one is shed at once (503 `overloaded` with
/// `Retry-After`) rather than queued. Far above what one application pod sends (the
/// benchmark drives 64 connections), low enough that a stalled Redis cannot pile up an
/// unbounded number of waiting requests, each holding its body.
pub const MAX_IN_FLIGHT: usize = 1024;

/// Longest a client may take to send a request's headers before its connection is closed:
/// a slow or stuck client (slowloris) must not hold connections for ever. No real client
/// inside a cluster comes near it. Not armed on a loopback listener (the sidecar's): its
/// clients are the pod's own containers, and the timer, armed and dropped for every request on
/// a keep-alive connection, was the largest single cost of a cache hit beyond a bare server's
/// (about 650 instructions of 12 700, callgrind).
pub(crate) const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The router with the request limits: load shedding beyond [`MAX_IN_FLIGHT`], then the
/// [`REQUEST_TIMEOUT`]. Refused requests are counted by reason and recorded under their route
/// like every other answer, so the availability SLI sees them.
pub(crate) fn limited(router: axum::Router, metrics: &Metrics) -> axum::Router {
    let metrics = metrics.clone();
    let refuse = move |method: Method, route: Option<MatchedPath>, error: BoxError| {
        let metrics = metrics.clone();
        async move {
            let (reason, took, answer) = if error.is::<tower::timeout::error::Elapsed>() {
                ("timeout", REQUEST_TIMEOUT, Error::RequestTimeout)
            } else {
                ("overloaded", Duration::ZERO, Error::Overloaded)
            };
            metrics.requests_refused.with_label_values(&[reason]).inc();
            if let Some(route) = route {
                metrics.observe_request(route.as_str(), method.as_str(), "503", took);
            }
            answer
        }
    };
    router.layer(
        ServiceBuilder::new()
            .layer(HandleErrorLayer::new(refuse))
            .load_shed()
            .layer(GlobalConcurrencyLimitLayer::new(MAX_IN_FLIGHT))
            .timeout(REQUEST_TIMEOUT),
    )
}

/// Serves `app` on `listener` until `shutdown` turns true, then stops accepting, lets requests
/// in progress finish (each is bounded by [`REQUEST_TIMEOUT`]) and returns. `app` is a hyper
/// service: the application's hot path answers hits straight from the connection; a tower
/// router is served through [`tower_app`].
pub(crate) async fn serve<S>(listener: TcpListener, app: S, mut shutdown: watch::Receiver<bool>)
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let graceful = GracefulShutdown::new();
    let mut stop = std::pin::pin!(async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    let loopback = listener.local_addr().is_ok_and(|a| a.ip().is_loopback());
    if !loopback {
        http.timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT);
    }
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of file descriptors, or a connection reset before it was accepted:
                    // wait a little instead of spinning, and go on.
                    tracing::warn!(%error, "could not accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        // Small request/response exchanges: do not let Nagle's algorithm hold them back.
        let _ = stream.set_nodelay(true);
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), app.clone()));
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// A tower service (the admin router) as the hyper service [`serve`] takes.
pub(crate) fn tower_app<S>(
    app: S,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<Body>,
    Error = Infallible,
    Future: Send + 'static,
> + Clone
+ Send
+ 'static
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    TowerToHyperService::new(app.map_request(|req: Request<Incoming>| req.map(Body::new)))
}
