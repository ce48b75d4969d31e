//! The hot path in front of the router: a cached `GET /v1/sessions/{id}` is answered before
//! routing, extractors and middleware run.
//!
//! Routing and the per-route middleware cost about as much CPU as the rest of a cache hit
//! together (measured in the benchmark), so a hit whose answer needs nothing from them is
//! served here: in sidecar mode (no auth to check), without correlation headers to echo. The
//! same request counters and latency histogram are recorded as on the routed path, and the
//! answer is made by the same read path (`api::lookup`). Anything else — a miss, a fill in
//! progress, server mode, any other route — goes through the router unchanged.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use axum::http::{HeaderName, Method, Request};
use axum::response::Response;
use tower::Service;

use super::auth::Auth;
use super::{Shared, lookup};

const PREFIX: &str = "/v1/sessions/";
/// The headers that send a lookup through the router (their values are echoed or traced
/// there). Compared in one pass over the request's few headers: a lookup by name hashes it,
/// and by a `&str` parses it first, on every request.
const CORRELATION_ID: HeaderName = HeaderName::from_static("x-correlation-id");
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// The router with the hot path in front.
#[derive(Clone)]
pub struct HotPath<S> {
    inner: S,
    state: Shared,
}

impl<S> HotPath<S> {
    pub(crate) fn new(inner: S, state: Shared) -> Self {
        Self { inner, state }
    }

    /// The cached answer to `req`, when it can be given without the router (the body is
    /// never read: a lookup has none).
    fn answer<B>(&self, req: &Request<B>) -> Option<Response> {
        if req.method() != Method::GET || !matches!(self.state.auth, Auth::TrustPod) {
            return None;
        }
        let id = req.uri().path().strip_prefix(PREFIX)?;
        let plain = !id.is_empty()
            && !id.bytes().any(|b| b == b'/' || b == b'%')
            && req.uri().query().is_none();
        let headers = req.headers();
        let traced = headers
            .keys()
            .any(|name| *name == CORRELATION_ID || *name == TRACEPARENT);
        if !plain || traced {
            return None;
        }
        let started = Instant::now();
        let entry = lookup::cached(&self.state, id)?;
        let found = entry.found;
        let response = lookup::respond(entry);
        self.state.metrics.observe_hot_hit(found, started.elapsed());
        Some(response)
    }
}

/// Either the hot path's answer or the router's future.
pub enum HotFuture<F> {
    Ready(Option<Response>),
    Routed(Pin<Box<F>>),
}

impl<F: Future<Output = Result<Response, Infallible>>> Future for HotFuture<F> {
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            HotFuture::Ready(response) => Poll::Ready(Ok(response.take().unwrap_or_default())),
            HotFuture::Routed(future) => future.as_mut().poll(cx),
        }
    }
}

impl<S> Service<Request<Body>> for HotPath<S>
where
    S: Service<Request<Body>, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = HotFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        match self.answer(&req) {
            Some(response) => HotFuture::Ready(Some(response)),
            None => HotFuture::Routed(Box::pin(self.inner.call(req))),
        }
    }
}

/// As hyper serves it: a hit is answered straight from the connection's request, without
/// cloning the router or boxing the body; anything else goes to the router as in
/// [`Service::call`].
impl<S> hyper::service::Service<Request<hyper::body::Incoming>> for HotPath<S>
where
    S: Service<Request<Body>, Response = Response, Error = Infallible> + Clone,
{
    type Response = Response;
    type Error = Infallible;
    type Future = HotFuture<tower::util::Oneshot<S, Request<Body>>>;

    fn call(&self, req: Request<hyper::body::Incoming>) -> Self::Future {
        match self.answer(&req) {
            Some(response) => HotFuture::Ready(Some(response)),
            None => HotFuture::Routed(Box::pin(tower::ServiceExt::oneshot(
                self.inner.clone(),
                req.map(Body::new),
            ))),
        }
    }
}
