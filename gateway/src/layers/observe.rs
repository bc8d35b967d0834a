//! Access log and metrics: an entry and the route's in-flight count start
//! with the request; the entry is completed from the final response
//! (errors included) and written, with the route's series, when the
//! response body ends or is dropped (bytes and time to the last byte). The
//! response body also reports to its connection (`activity`) and is handed
//! to HTTP/2 streams in pieces.

use super::request_id::AssignedId;
use crate::access_log;
use crate::activity::BodyReport;
use crate::metrics::{Metrics, RouteMetrics};
use crate::service::ClientInfo;
use axum::body::Body;
use axum::extract::Request;
use bytes::Bytes;
use http::{HeaderValue, Response};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

/// The rate-limit outcome of a request, for its access-log line.
#[derive(Debug)]
pub struct RateLimitNote {
    /// The policy's name.
    pub policy: Arc<str>,
    /// What it decided.
    pub outcome: &'static str,
}

/// Access-log fields gathered while the request runs; logged once, when
/// the response body ends or is dropped.
#[derive(Debug)]
pub struct AccessLog<P> {
    route: RouteMetrics,
    started: Instant,
    client: Option<ClientInfo>,
    method: http::Method,
    /// Shares the request's bytes (a clone is a reference count).
    target: Option<http::uri::PathAndQuery>,
    request_id: HeaderValue,
    status: u16,
    /// The replica whose response this is; the proxy fills it in.
    pub upstream: Option<std::net::SocketAddr>,
    /// The policy that applied and its outcome; the rate-limit layer fills it in.
    pub rate_limit: Option<RateLimitNote>,
    bytes: u64,
    /// What the request holds until its entry is written (its in-flight
    /// places), given back with it.
    pub places: Option<P>,
}

impl<P> Drop for AccessLog<P> {
    fn drop(&mut self) {
        let seconds = self.started.elapsed().as_secs_f64();
        self.route.finish(self.status, seconds);
        access_log::write(&access_log::Entry {
            client: self.client.map(|c| c.ip),
            method: self.method.as_str(),
            path: self.target.as_ref().map_or("/", http::uri::PathAndQuery::path),
            status: self.status,
            route: self.route.route(),
            upstream: self.upstream,
            latency_ms: seconds * 1000.0,
            bytes: self.bytes,
            rate_limit: self.rate_limit.as_ref().map(|n| (&*n.policy, n.outcome)),
            request_id: shared::request_id::text(&self.request_id),
        });
    }
}

/// The response body, counting bytes for the access log and reporting to
/// its connection (see `activity`): alive, asked for bytes, handed bytes.
/// Over HTTP/2 it hands data over in pieces of at most [`H2_PIECE`], so
/// that what waits in a stream for a client's flow-control window is one
/// piece, not a whole upstream read.
struct Observed<P> {
    inner: Body,
    log: AccessLog<P>,
    report: Option<BodyReport>,
    /// What is left of a data frame being handed over in pieces.
    rest: Option<Bytes>,
}

/// Largest data frame handed to an HTTP/2 stream (HTTP/2's default frame size).
const H2_PIECE: usize = 16 * 1024;

impl<P> Observed<P> {
    fn piece(&mut self, mut data: Bytes) -> Bytes {
        if data.len() > H2_PIECE && self.report.as_ref().is_some_and(BodyReport::is_stream) {
            self.rest = Some(data.split_off(H2_PIECE));
        }
        data
    }
}

impl<P: Unpin> http_body::Body for Observed<P> {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        if let Some(report) = &self.report {
            report.asked();
        }
        let polled = match self.rest.take() {
            Some(rest) => Poll::Ready(Some(Ok(http_body::Frame::data(self.piece(rest))))),
            None => match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        self.log.bytes += data.len() as u64;
                        Poll::Ready(Some(Ok(http_body::Frame::data(self.piece(data)))))
                    }
                    Err(frame) => Poll::Ready(Some(Ok(frame))),
                },
                other => other,
            },
        };
        if let (Poll::Ready(Some(Ok(_))), Some(report)) = (&polled, &self.report) {
            report.handed_over();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        let mut hint = self.inner.size_hint();
        if let Some(rest) = &self.rest {
            // Upper first: set_lower checks against it.
            let rest = rest.len() as u64;
            if let Some(upper) = hint.upper() {
                hint.set_upper(upper + rest);
            }
            hint.set_lower(hint.lower() + rest);
        }
        hint
    }
}

/// What the access log and metrics layer needs: each route's series,
/// longest prefix first, and the series of requests no route takes. Each
/// stack copy holds handles of its own.
#[derive(Debug)]
pub struct ObserveState {
    routes: Vec<RouteMetrics>,
    unrouted: RouteMetrics,
}

impl ObserveState {
    /// Handles on each route's series (longest prefix first) and on
    /// `unrouted`'s.
    pub fn new<'a>(metrics: &Metrics, prefixes: impl Iterator<Item = &'a str>, unrouted: &str) -> Self {
        Self {
            routes: prefixes.map(|p| metrics.route(p)).collect(),
            unrouted: metrics.route(unrouted),
        }
    }

    /// The series of the route `path` takes (as `Routes::find` picks it).
    fn series(&self, path: &str) -> &RouteMetrics {
        self.routes
            .iter()
            .find(|m| path.starts_with(m.route()))
            .unwrap_or(&self.unrouted)
    }
}

/// Starts the access-log entry and the in-flight count for a request.
pub fn observe_request<P>(state: &ObserveState, req: &Request, id: &AssignedId) -> AccessLog<P> {
    let route = state.series(req.uri().path()).clone();
    route.start();
    AccessLog {
        route,
        started: Instant::now(),
        client: req.extensions().get::<ClientInfo>().copied(),
        method: req.method().clone(),
        target: req.uri().path_and_query().cloned(),
        request_id: id.value.clone(),
        status: 0,
        upstream: None,
        rate_limit: None,
        bytes: 0,
        places: None,
    }
}

/// Completes the entry from the response; it is written when the response
/// body ends or is dropped.
pub fn observe_response<P: Send + Unpin + 'static>(mut log: AccessLog<P>, response: Response<Body>) -> Response<Body> {
    let (parts, body) = response.into_parts();
    log.status = parts.status.as_u16();
    let observed = Observed {
        inner: body,
        log,
        report: BodyReport::start(),
        rest: None,
    };
    Response::from_parts(parts, Body::new(observed))
}
