//! A client's request body on its way to a replica.
//!
//! Contract: [`ClientBody`] passes the body through unchanged while it is
//! well formed, at most `max_body` bytes long, and never idle for more
//! than `body_read_timeout` between bytes. Otherwise it fails, and records
//! why in its [`BodyWatch`] before the failure reaches anyone: framing the
//! client broke (a bad chunk size, a connection or stream cut mid-body) is
//! [`ClientFault::Malformed`], a stall is [`ClientFault::TimedOut`], too
//! many bytes is [`ClientFault::TooLarge`]. The proxy reads the watch when
//! an exchange with a replica fails: a fault recorded there is the
//! client's, answered 400, 408 or 413, never counted against the replica's
//! health and never retried. The watch also says when the body ended, so
//! the replica's response timeout starts only once it has the whole request.

use crate::errors::GatewayError;
use axum::body::Body;
use bytes::Bytes;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// Why a client's body failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientFault {
    /// Broken framing, or the body was cut short (400).
    Malformed,
    /// No bytes for `body_read_timeout` (408).
    TimedOut,
    /// More than `max_body` bytes (413).
    TooLarge,
}

impl ClientFault {
    fn code(self) -> u8 {
        match self {
            Self::Malformed => 1,
            Self::TimedOut => 2,
            Self::TooLarge => 3,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Self::Malformed),
            2 => Some(Self::TimedOut),
            3 => Some(Self::TooLarge),
            _ => None,
        }
    }
}

#[derive(Debug)]
struct BodyState {
    fault: AtomicU8,
    /// When the body ended, as nanoseconds after `created` plus one; 0
    /// while bytes are still due.
    ended: AtomicU64,
    created: Instant,
    max_body: u64,
    timeout: Duration,
}

/// What the proxy can learn about a client body it handed on: whether it
/// failed (and why), and when it ended. Cloning shares the same body.
#[derive(Debug, Clone)]
pub struct BodyWatch(Arc<BodyState>);

impl BodyWatch {
    /// The client's fault, once the body has failed.
    pub fn fault(&self) -> Option<ClientFault> {
        ClientFault::from_code(self.0.fault.load(Ordering::Acquire))
    }

    /// When the last byte arrived; `None` while the body is still due.
    pub fn ended_at(&self) -> Option<Instant> {
        match self.0.ended.load(Ordering::Acquire) {
            0 => None,
            n => Some(self.0.created + Duration::from_nanos(n - 1)),
        }
    }

    /// The answer to give once the body has failed: 400, 408 or 413.
    pub fn error(&self) -> Option<GatewayError> {
        Some(match self.fault()? {
            ClientFault::Malformed => GatewayError::BadRequest("malformed or incomplete request body".into()),
            ClientFault::TimedOut => GatewayError::RequestTimeout(self.0.timeout),
            ClientFault::TooLarge => GatewayError::PayloadTooLarge(self.0.max_body),
        })
    }

    fn record(&self, fault: ClientFault) -> ClientBodyError {
        // The first fault stands.
        let _ = self
            .0
            .fault
            .compare_exchange(0, fault.code(), Ordering::AcqRel, Ordering::Acquire);
        ClientBodyError(fault)
    }

    fn end(&self) {
        let nanos = u64::try_from(self.0.created.elapsed().as_nanos()).unwrap_or(u64::MAX - 1);
        let _ = self
            .0
            .ended
            .compare_exchange(0, nanos + 1, Ordering::AcqRel, Ordering::Acquire);
    }
}

/// The error a failed client body yields (its fault is also in the watch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("client request body failed: {0:?}")]
pub struct ClientBodyError(pub ClientFault);

/// The request body, bounded in size and in idle time (see the module
/// documentation).
#[derive(Debug)]
pub struct ClientBody {
    inner: Body,
    remaining: u64,
    /// Armed at the first wait for bytes; moved on after each arrival.
    timer: Option<Pin<Box<Sleep>>>,
    /// Bytes arrived since the timer was last set.
    progressed: bool,
    watch: BodyWatch,
}

impl ClientBody {
    /// Wraps `inner`; the watch reports on it.
    pub fn new(inner: Body, max_body: u64, timeout: Duration) -> (Self, BodyWatch) {
        let watch = BodyWatch(Arc::new(BodyState {
            fault: AtomicU8::new(0),
            ended: AtomicU64::new(0),
            created: Instant::now(),
            max_body,
            timeout,
        }));
        let body = Self {
            inner,
            remaining: max_body,
            timer: None,
            progressed: false,
            watch: watch.clone(),
        };
        (body, watch)
    }

    /// Waits for bytes at most `timeout` since the last ones arrived.
    fn poll_stall(&mut self, cx: &mut Context<'_>) -> Poll<ClientBodyError> {
        let deadline = Instant::now() + self.watch.0.timeout;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if std::mem::take(&mut self.progressed) {
            timer.as_mut().reset(deadline);
        }
        ready!(timer.as_mut().poll(cx));
        Poll::Ready(self.watch.record(ClientFault::TimedOut))
    }
}

impl http_body::Body for ClientBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, ClientBodyError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let len = frame.data_ref().map_or(0, |d| d.len() as u64);
                if len > this.remaining {
                    return Poll::Ready(Some(Err(this.watch.record(ClientFault::TooLarge))));
                }
                this.remaining -= len;
                this.progressed = true;
                if this.inner.is_end_stream() {
                    this.watch.end();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => {
                tracing::debug!(%error, "client request body failed");
                Poll::Ready(Some(Err(this.watch.record(ClientFault::Malformed))))
            }
            Poll::Ready(None) => {
                this.watch.end();
                Poll::Ready(None)
            }
            Poll::Pending => this.poll_stall(cx).map(|e| Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// An HTTP/2 request body that, dropped before its end (the answer came
/// first: a 413, a 429, a replica that did not read it), is drained in the
/// background instead: read and discarded, so the client can finish
/// sending and then read the answer, as nginx does. Dropping it unread
/// would make HTTP/2 reset the stream as soon as the answer is out, and
/// clients that are still sending (curl among them) then lose the answer.
/// Draining stops at the body's end, after `timeout` without bytes, or
/// after `cap` bytes; then the stream is reset.
#[derive(Debug)]
pub struct Lingering {
    inner: Option<Body>,
    timeout: Duration,
    cap: u64,
}

impl Lingering {
    /// Wraps `inner`.
    pub fn new(inner: Body, timeout: Duration, cap: u64) -> Self {
        Self {
            inner: Some(inner),
            timeout,
            cap,
        }
    }
}

impl http_body::Body for Lingering {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        match self.inner.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(http_body::Body::is_end_stream)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.as_ref().map(http_body::Body::size_hint).unwrap_or_default()
    }
}

impl Drop for Lingering {
    fn drop(&mut self) {
        let Some(mut body) = self.inner.take().filter(|b| !http_body::Body::is_end_stream(b)) else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (timeout, cap) = (self.timeout, self.cap);
        runtime.spawn(async move {
            use http_body_util::BodyExt;
            let mut drained = 0u64;
            while drained <= cap {
                match tokio::time::timeout(timeout, body.frame()).await {
                    Ok(Some(Ok(frame))) => drained += frame.data_ref().map_or(0, |d| d.len() as u64),
                    _ => break,
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn chunks(parts: Vec<Result<&'static [u8], std::io::Error>>) -> Body {
        Body::from_stream(futures::stream::iter(parts))
    }

    #[tokio::test]
    async fn a_whole_body_passes_unchanged_and_its_end_is_recorded() {
        let (body, watch) = ClientBody::new(chunks(vec![Ok(b"ab"), Ok(b"cd")]), 4, Duration::from_secs(1));
        assert_eq!(watch.ended_at(), None);
        let bytes = body.collect().await.expect("body").to_bytes();
        assert_eq!(&bytes[..], b"abcd");
        assert!(watch.ended_at().is_some());
        assert_eq!(watch.fault(), None);
    }

    #[tokio::test]
    async fn a_body_over_the_cap_is_too_large() {
        let (body, watch) = ClientBody::new(chunks(vec![Ok(b"ab"), Ok(b"cde")]), 4, Duration::from_secs(1));
        let error = body.collect().await.expect_err("too large");
        assert_eq!(error, ClientBodyError(ClientFault::TooLarge));
        assert_eq!(watch.fault(), Some(ClientFault::TooLarge));
        assert_eq!(
            watch.error().map(|e| e.status()),
            Some(http::StatusCode::PAYLOAD_TOO_LARGE)
        );
    }

    #[tokio::test]
    async fn a_broken_body_is_the_clients_fault() {
        let broken = chunks(vec![Ok(b"ab"), Err(std::io::Error::other("bad chunk size"))]);
        let (body, watch) = ClientBody::new(broken, 100, Duration::from_secs(1));
        body.collect().await.expect_err("broken");
        assert_eq!(watch.fault(), Some(ClientFault::Malformed));
        assert_eq!(watch.error().map(|e| e.status()), Some(http::StatusCode::BAD_REQUEST));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stall_between_bytes_times_out_but_steady_bytes_do_not() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
        let stream = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
        let (body, watch) = ClientBody::new(Body::from_stream(stream), 100, Duration::from_secs(10));
        let reader = tokio::spawn(body.collect());
        // Bytes every 8 s: each wait is under the timeout, the total is not.
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_secs(8)).await;
            tx.send(Ok(Bytes::from_static(b"x"))).await.expect("send");
        }
        assert_eq!(watch.fault(), None);
        // Then silence.
        let error = reader.await.expect("task").expect_err("stalled");
        assert_eq!(error, ClientBodyError(ClientFault::TimedOut));
        assert_eq!(
            watch.error().map(|e| e.status()),
            Some(http::StatusCode::REQUEST_TIMEOUT)
        );
        drop(tx);
    }
}
