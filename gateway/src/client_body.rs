//! A client's request body on its way to a replica.
//!
//! Contract: [`ClientBody`] passes the body through unchanged while it is
//! well formed, at most `max_body` bytes long, and, whenever it is asked
//! for bytes, never waits for the client more than `body_read_timeout`.
//! Otherwise it fails, and records why in its [`BodyWatch`] before the
//! failure reaches anyone: framing the client broke (a bad chunk size, a
//! connection or stream cut mid-body) is [`ClientFault::Malformed`], a
//! stall is [`ClientFault::TimedOut`], too many bytes is
//! [`ClientFault::TooLarge`]. The proxy reads the watch when an exchange
//! with a replica fails: a fault recorded there is the client's, answered
//! 400, 408 or 413, never counted against the replica's health and never
//! retried. The watch also says when the body ended, and since when bytes
//! handed on wait for the replica to take them (see `body_watch`).

use crate::body_watch::{BodyWatch, ClientFault};
use axum::body::Body;
use bytes::Bytes;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// Records `fault` in the watch; the error the body fails with.
fn record(watch: &BodyWatch, fault: ClientFault) -> ClientBodyError {
    watch.record(fault);
    ClientBodyError(fault)
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
        let watch = BodyWatch::new(max_body, timeout);
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
        let deadline = Instant::now() + self.watch.timeout();
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if std::mem::take(&mut self.progressed) {
            timer.as_mut().reset(deadline);
        }
        ready!(timer.as_mut().poll(cx));
        Poll::Ready(record(&self.watch, ClientFault::TimedOut))
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
        this.watch.asked();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let len = frame.data_ref().map_or(0, |d| d.len() as u64);
                if len > this.remaining {
                    return Poll::Ready(Some(Err(record(&this.watch, ClientFault::TooLarge))));
                }
                this.remaining -= len;
                this.progressed = true;
                if this.inner.is_end_stream() {
                    this.watch.end();
                } else {
                    this.watch.handed_over();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => {
                tracing::debug!(%error, "client request body failed");
                Poll::Ready(Some(Err(record(&this.watch, ClientFault::Malformed))))
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

/// The longest an early-answered HTTP/2 body is drained.
pub const LINGER_TIME: Duration = Duration::from_secs(30);

/// An HTTP/2 request body that, dropped before its end (the answer came
/// first: a 413, a 429, a replica that did not read it), is drained in the
/// background instead: read and discarded, so the client can finish
/// sending and then read the answer, as nginx does. Dropping it unread
/// would make HTTP/2 reset the stream as soon as the answer is out, and
/// clients that are still sending (curl among them) then lose the answer.
/// Draining stops at the body's end, after `timeout` without bytes, after
/// `cap` bytes, or after [`LINGER_TIME`] in all (nginx's `lingering_time`);
/// then the stream is reset.
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
            let until = Instant::now() + LINGER_TIME;
            let mut drained = 0u64;
            while drained <= cap {
                let wait = until.min(Instant::now() + timeout);
                match tokio::time::timeout_at(wait, body.frame()).await {
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
