//! `limits.send_timeout`: how long a response may wait for the client to
//! take its bytes.
//!
//! - [`TimedIo`] wraps a client connection's socket: a write (or flush)
//!   that stays blocked for the timeout fails, which ends the connection
//!   (HTTP/1.1 responses, and HTTP/2 connections whose socket is not read).
//! - [`StreamExecutor`] runs each HTTP/2 stream under a watch: a stream
//!   whose response has waited for flow-control window for the timeout is
//!   dropped, which resets it (`RST_STREAM`), while the connection's other
//!   streams go on.
//!
//! Either way the response body is dropped, so its upstream connection is
//! closed and its in-flight places given back. Timeouts are counted as
//! `gateway_request_errors_total{origin="client",reason="send_timeout"}`.

use crate::activity::{SendContext, StreamWatch};
use crate::errors::ConnectionFault;
use crate::metrics::Metrics;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// The error a blocked write ends with.
#[derive(Debug, thiserror::Error)]
#[error("the client did not take the response's bytes within the send timeout")]
pub struct SendTimedOut;

/// Whether `error` (or one of its sources) is a [`SendTimedOut`].
pub fn is_send_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            if io.get_ref().is_some_and(|inner| inner.is::<SendTimedOut>()) {
                return true;
            }
        }
        current = e.source();
    }
    false
}

/// A connection whose writes may stay blocked for at most `timeout`.
#[derive(Debug)]
pub struct TimedIo<I> {
    inner: I,
    timeout: Duration,
    /// Armed while a write is blocked (allocated only then).
    blocked: Option<Pin<Box<Sleep>>>,
}

impl<I> TimedIo<I> {
    /// Wraps `inner`.
    pub fn new(inner: I, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            blocked: None,
        }
    }

    /// The wrapped connection.
    pub fn get_ref(&self) -> &I {
        &self.inner
    }

    /// Passes on a write's result, timing how long it stays blocked.
    fn watch<T>(&mut self, cx: &mut Context<'_>, polled: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.blocked = None;
            return polled;
        }
        let timeout = self.timeout;
        let timer = self
            .blocked
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, SendTimedOut))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for TimedIo<I> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for TimedIo<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.watch(cx, polled)
    }
}

/// hyper's executor for HTTP/2 streams: spawns each on the current
/// runtime under a [`Watched`] send timeout.
#[derive(Debug, Clone)]
pub struct StreamExecutor {
    timeout: Duration,
    metrics: Arc<Metrics>,
}

impl StreamExecutor {
    /// Streams whose responses may wait at most `timeout` on the client.
    pub fn new(timeout: Duration, metrics: Arc<Metrics>) -> Self {
        Self { timeout, metrics }
    }
}

impl<F> hyper::rt::Executor<F> for StreamExecutor
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, fut: F) {
        // hyper spawns a stream while polling its connection, so the
        // connection's context is current here.
        let Some(connection) = SendContext::current().map(|c| c.connection) else {
            tokio::spawn(fut);
            return;
        };
        let stream = Arc::new(StreamWatch::default());
        let context = SendContext {
            connection,
            stream: Some(stream.clone()),
        };
        tokio::spawn(Watched {
            inner: Box::pin(fut),
            context: Some(context),
            stream,
            timer: None,
            timeout: self.timeout,
            metrics: self.metrics.clone(),
        });
    }
}

/// One HTTP/2 stream, dropped (and so reset) once its response has waited
/// `timeout` for the client's window.
struct Watched<F> {
    inner: Pin<Box<F>>,
    /// Current while the stream is polled.
    context: Option<SendContext>,
    stream: Arc<StreamWatch>,
    timer: Option<Pin<Box<Sleep>>>,
    timeout: Duration,
    metrics: Arc<Metrics>,
}

impl<F: Future<Output = ()>> Future for Watched<F> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        let inner = &mut this.inner;
        if SendContext::enter(&mut this.context, || inner.as_mut().poll(cx)).is_ready() {
            return Poll::Ready(());
        }
        let Some(since) = this.stream.waiting_since() else {
            return Poll::Pending;
        };
        let deadline = since + this.timeout;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        if timer.as_mut().poll(cx).is_pending() && Instant::now() < deadline {
            return Poll::Pending;
        }
        tracing::debug!("HTTP/2 stream reset: the client took no bytes within the send timeout");
        ConnectionFault::SendTimeout.count(&this.metrics);
        Poll::Ready(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn a_write_blocked_past_the_timeout_fails_and_one_that_moves_does_not() {
        // A pipe whose reader takes nothing: writes block once it is full.
        let (writer, mut reader) = tokio::io::duplex(16);
        let mut timed = TimedIo::new(writer, Duration::from_millis(100));
        timed.write_all(b"0123456789").await.expect("fits");
        let started = std::time::Instant::now();
        let error = timed.write_all(&[0u8; 64]).await.expect_err("blocked");
        assert!(is_send_timeout(&error), "{error}");
        assert!(started.elapsed() >= Duration::from_millis(100));

        // A reader that keeps taking bytes, slowly, never trips it.
        let (writer, mut slow) = tokio::io::duplex(16);
        let mut timed = TimedIo::new(writer, Duration::from_millis(100));
        let drain = tokio::spawn(async move {
            let mut buf = [0u8; 8];
            let mut total = 0;
            while total < 256 {
                tokio::time::sleep(Duration::from_millis(20)).await;
                total += tokio::io::AsyncReadExt::read(&mut slow, &mut buf).await.expect("read");
            }
        });
        timed
            .write_all(&[1u8; 256])
            .await
            .expect("a slow reader is not a stalled one");
        drain.await.expect("drained");
        let mut rest = [0u8; 16];
        let _ = tokio::io::AsyncReadExt::read(&mut reader, &mut rest).await;
    }
}
