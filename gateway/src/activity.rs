//! What a connection's responses report back to it, so that it can tell
//! when it is idle (`idle_timeout`) and when a response has waited too long
//! for the client to take its bytes (`send_timeout`).
//!
//! A connection ([`Activity`]) counts the requests being answered and the
//! response bodies still being sent, and remembers when it was last busy.
//! An HTTP/2 stream ([`StreamWatch`]) remembers since when its response has
//! been waiting for the client's flow-control window.
//!
//! Contract: the server runs each connection (and `send_timeout` each
//! HTTP/2 stream) inside [`SendContext::enter`]; a response body made while
//! it runs picks the context up with [`SendContext::current`] and reports
//! through it until dropped. The context lives in a thread-local because
//! hyper builds and polls response bodies out of the server's reach; both
//! ends run on the same thread, within one poll.

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// One connection's activity.
#[derive(Debug)]
pub struct Activity {
    started: Instant,
    /// Requests whose response head is not out yet.
    requests: AtomicUsize,
    /// Response bodies still being sent.
    bodies: AtomicUsize,
    /// Requests ever started on the connection.
    started_total: AtomicU64,
    last_millis: AtomicU64,
}

impl Default for Activity {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            requests: AtomicUsize::new(0),
            bodies: AtomicUsize::new(0),
            started_total: AtomicU64::new(0),
            last_millis: AtomicU64::new(0),
        }
    }
}

impl Activity {
    /// A request arrived.
    pub fn request_started(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.started_total.fetch_add(1, Ordering::Relaxed);
    }

    /// Requests ever started on the connection.
    pub fn started_total(&self) -> u64 {
        self.started_total.load(Ordering::Relaxed)
    }

    /// Whether a request is being answered or a response sent.
    pub fn is_busy(&self) -> bool {
        self.requests.load(Ordering::Relaxed) != 0 || self.bodies.load(Ordering::Relaxed) != 0
    }

    /// A request's response head is out (or the request was dropped). Its
    /// body, which reports until it has been sent, marks the connection
    /// busy when it ends.
    pub fn request_answered(&self) {
        self.requests.fetch_sub(1, Ordering::Relaxed);
    }

    /// Marks the connection busy now.
    pub fn touch(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_millis.store(ms, Ordering::Relaxed);
    }

    /// When the connection becomes idle-expired if nothing happens.
    pub fn deadline(&self, idle: Duration) -> Instant {
        let last = Duration::from_millis(self.last_millis.load(Ordering::Relaxed));
        self.started + last + idle
    }

    /// Whether nothing is being answered or sent, and has not been for `idle`.
    pub fn is_idle(&self, idle: Duration) -> bool {
        !self.is_busy() && Instant::now() >= self.deadline(idle)
    }
}

/// Since when one HTTP/2 stream's response has been waiting for the
/// client to take bytes.
#[derive(Debug)]
pub struct StreamWatch {
    started: Instant,
    /// Nanoseconds after `started`, plus one, when the response body last
    /// handed over bytes without being asked for more since; 0 when it is
    /// not waiting on the client.
    waiting_since: AtomicU64,
}

impl Default for StreamWatch {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            waiting_since: AtomicU64::new(0),
        }
    }
}

impl StreamWatch {
    /// When the response started waiting on the client, if it is.
    pub fn waiting_since(&self) -> Option<Instant> {
        match self.waiting_since.load(Ordering::Relaxed) {
            0 => None,
            n => Some(self.started + Duration::from_nanos(n - 1)),
        }
    }

    fn handed_over(&self) {
        let n = u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX - 1);
        self.waiting_since.store(n + 1, Ordering::Relaxed);
    }

    fn asked_again(&self) {
        self.waiting_since.store(0, Ordering::Relaxed);
    }
}

/// Where a response body reports: its connection and, over HTTP/2, its
/// stream.
#[derive(Debug, Clone)]
pub struct SendContext {
    /// The connection.
    pub connection: Arc<Activity>,
    /// The HTTP/2 stream, if any.
    pub stream: Option<Arc<StreamWatch>>,
}

thread_local! {
    static CURRENT: RefCell<Option<SendContext>> = const { RefCell::new(None) };
}

impl SendContext {
    /// Runs `f` with `context` current on this thread. The context is moved
    /// in for the call and back out after it (even if `f` unwinds), so a
    /// poll touches no reference count.
    pub fn enter<R>(context: &mut Option<SendContext>, f: impl FnOnce() -> R) -> R {
        struct Restore<'a> {
            slot: &'a mut Option<SendContext>,
            previous: Option<SendContext>,
        }
        impl Drop for Restore<'_> {
            fn drop(&mut self) {
                let previous = self.previous.take();
                *self.slot = CURRENT.with(|c| std::mem::replace(&mut *c.borrow_mut(), previous));
            }
        }
        let previous = CURRENT.with(|c| std::mem::replace(&mut *c.borrow_mut(), context.take()));
        let _restore = Restore {
            slot: context,
            previous,
        };
        f()
    }

    /// The context current on this thread, if any.
    pub fn current() -> Option<Self> {
        CURRENT.with(|c| c.borrow().clone())
    }
}

/// A response body's report to its context, from creation to drop.
#[derive(Debug)]
pub struct BodyReport(SendContext);

impl BodyReport {
    /// Starts reporting to the current context, if there is one.
    pub fn start() -> Option<Self> {
        let context = SendContext::current()?;
        context.connection.bodies.fetch_add(1, Ordering::Relaxed);
        Some(Self(context))
    }

    /// The body is being asked for more bytes.
    pub fn asked(&self) {
        if let Some(stream) = &self.0.stream {
            stream.asked_again();
        }
    }

    /// The body handed over bytes and now waits to be asked again.
    pub fn handed_over(&self) {
        if let Some(stream) = &self.0.stream {
            stream.handed_over();
        }
    }

    /// Whether this body is sent on an HTTP/2 stream.
    pub fn is_stream(&self) -> bool {
        self.0.stream.is_some()
    }
}

impl Drop for BodyReport {
    fn drop(&mut self) {
        self.0.connection.bodies.fetch_sub(1, Ordering::Relaxed);
        self.0.connection.touch();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_idle_only_with_no_request_and_no_body_in_progress() {
        let idle = Duration::from_secs(5);
        let connection = Arc::new(Activity::default());
        let mut context = Some(SendContext {
            connection: connection.clone(),
            stream: None,
        });
        connection.request_started();
        let body = SendContext::enter(&mut context, BodyReport::start).expect("a context is current");
        connection.request_answered();
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(!connection.is_idle(idle), "a body is still being sent");
        drop(body);
        assert!(!connection.is_idle(idle), "busy just now");
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(connection.is_idle(idle));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_waits_on_the_client_from_a_hand_over_until_it_is_asked_again() {
        let stream = Arc::new(StreamWatch::default());
        let mut context = Some(SendContext {
            connection: Arc::default(),
            stream: Some(stream.clone()),
        });
        let body = SendContext::enter(&mut context, BodyReport::start).expect("current");
        assert!(body.is_stream());
        assert_eq!(stream.waiting_since(), None);
        tokio::time::advance(Duration::from_secs(1)).await;
        body.handed_over();
        let since = stream.waiting_since().expect("waiting");
        assert_eq!(since, Instant::now());
        body.asked();
        assert_eq!(stream.waiting_since(), None);
    }

    #[test]
    fn the_context_is_current_only_inside_enter_and_comes_back_after() {
        assert!(SendContext::current().is_none());
        let mut context = Some(SendContext {
            connection: Arc::default(),
            stream: None,
        });
        SendContext::enter(&mut context, || assert!(SendContext::current().is_some()));
        assert!(SendContext::current().is_none());
        assert!(context.is_some(), "the context is back with its owner");
        let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            SendContext::enter(&mut context, || panic!("inside"));
        }));
        assert!(unwound.is_err());
        assert!(
            SendContext::current().is_none() && context.is_some(),
            "restored on unwind"
        );
    }
}
