//! What the proxy and the upstream client can learn about a client's
//! request body they handed on (see `client_body`, which fills it in):
//! whether it failed, and whose fault that was; when it ended; and, while
//! it has not, since when bytes it handed on have been waiting for the
//! replica to ask for more.
//!
//! Contract: a replica's response timeout runs from the body's end; before
//! that, only while the replica leaves bytes untaken (a replica that stops
//! reading is late, a client slow to send is not: its own body timeout
//! bounds that).

use crate::errors::GatewayError;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;

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
    /// When bytes were last handed on without being asked for more since,
    /// in the same form; 0 when the body is being asked (or has ended).
    handed: AtomicU64,
    created: Instant,
    max_body: u64,
    timeout: Duration,
}

/// A client body's state, shared by the body and whoever watches it.
#[derive(Debug, Clone)]
pub struct BodyWatch(Arc<BodyState>);

impl BodyWatch {
    /// A watch for a body of at most `max_body` bytes, `timeout` between them.
    pub fn new(max_body: u64, timeout: Duration) -> Self {
        Self(Arc::new(BodyState {
            fault: AtomicU8::new(0),
            ended: AtomicU64::new(0),
            handed: AtomicU64::new(0),
            created: Instant::now(),
            max_body,
            timeout,
        }))
    }

    /// The client's fault, once the body has failed.
    pub fn fault(&self) -> Option<ClientFault> {
        ClientFault::from_code(self.0.fault.load(Ordering::Acquire))
    }

    /// When the last byte arrived; `None` while the body is still due.
    pub fn ended_at(&self) -> Option<Instant> {
        self.instant(&self.0.ended)
    }

    /// Since when bytes handed on have waited for the replica to ask for
    /// more; `None` while the body waits for the client (or has ended).
    pub fn handed_at(&self) -> Option<Instant> {
        self.instant(&self.0.handed)
    }

    /// The longest wait for the client's next bytes.
    pub fn timeout(&self) -> Duration {
        self.0.timeout
    }

    /// The answer to give once the body has failed: 400, 408 or 413.
    pub fn error(&self) -> Option<GatewayError> {
        Some(match self.fault()? {
            ClientFault::Malformed => GatewayError::BadRequest("malformed or incomplete request body".into()),
            ClientFault::TimedOut => GatewayError::RequestTimeout(self.0.timeout),
            ClientFault::TooLarge => GatewayError::PayloadTooLarge(self.0.max_body),
        })
    }

    /// Records the client's fault (the first one stands).
    pub fn record(&self, fault: ClientFault) {
        let _ = self
            .0
            .fault
            .compare_exchange(0, fault.code(), Ordering::AcqRel, Ordering::Acquire);
    }

    /// The body has ended.
    pub fn end(&self) {
        self.0.handed.store(0, Ordering::Release);
        let _ = self
            .0
            .ended
            .compare_exchange(0, self.now_code(), Ordering::AcqRel, Ordering::Acquire);
    }

    /// The body is asked for bytes.
    pub fn asked(&self) {
        self.0.handed.store(0, Ordering::Release);
    }

    /// The body handed bytes on and waits to be asked again.
    pub fn handed_over(&self) {
        self.0.handed.store(self.now_code(), Ordering::Release);
    }

    fn now_code(&self) -> u64 {
        u64::try_from(self.0.created.elapsed().as_nanos()).unwrap_or(u64::MAX - 1) + 1
    }

    fn instant(&self, cell: &AtomicU64) -> Option<Instant> {
        match cell.load(Ordering::Acquire) {
            0 => None,
            n => Some(self.0.created + Duration::from_nanos(n - 1)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_body_is_waiting_on_the_replica_from_a_hand_over_until_it_is_asked_again() {
        let watch = BodyWatch::new(10, Duration::from_secs(1));
        assert_eq!(watch.handed_at(), None);
        tokio::time::advance(Duration::from_secs(2)).await;
        watch.handed_over();
        assert_eq!(watch.handed_at(), Some(Instant::now()));
        watch.asked();
        assert_eq!(watch.handed_at(), None);
        watch.handed_over();
        watch.end();
        assert_eq!((watch.handed_at(), watch.ended_at()), (None, Some(Instant::now())));
    }

    #[test]
    fn the_first_fault_stands() {
        let watch = BodyWatch::new(10, Duration::from_secs(1));
        watch.record(ClientFault::TimedOut);
        watch.record(ClientFault::Malformed);
        assert_eq!(watch.fault(), Some(ClientFault::TimedOut));
        assert_eq!(
            watch.error().map(|e| e.status()),
            Some(http::StatusCode::REQUEST_TIMEOUT)
        );
    }
}
