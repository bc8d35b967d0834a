//! Deliberate shutdown: one signal, one token handed to every server and
//! background task, and a drain bounded by a deadline.

use std::future::Future;
use std::time::Duration;
pub use tokio_util::sync::CancellationToken;
pub use tokio_util::task::TaskTracker;

/// Resolves when the process receives SIGTERM (what orchestrators send) or
/// SIGINT (Ctrl-C). If a handler cannot be installed the error is logged and
/// that signal is simply never delivered.
pub async fn signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received, shutting down"),
        () = term => tracing::info!("SIGTERM received, shutting down"),
    }
}

/// Cancels `token` when `signal` resolves; returns the spawned task's handle.
pub fn cancel_on<F>(signal: F, token: CancellationToken) -> tokio::task::JoinHandle<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        signal.await;
        token.cancel();
    })
}

/// Outcome of [`drain`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drained {
    /// Every tracked task finished before the deadline.
    Complete,
    /// The deadline passed with tasks still running; they are abandoned.
    DeadlineExceeded,
}

/// Closes `tracker` and waits for its tasks, at most `deadline`.
pub async fn drain(tracker: &TaskTracker, deadline: Duration) -> Drained {
    tracker.close();
    match tokio::time::timeout(deadline, tracker.wait()).await {
        Ok(()) => Drained::Complete,
        Err(_) => {
            tracing::warn!(
                remaining = tracker.len(),
                ?deadline,
                "shutdown grace period over, abandoning in-flight work"
            );
            Drained::DeadlineExceeded
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn drain_waits_for_tasks_that_finish_in_time() {
        let tracker = TaskTracker::new();
        tracker.spawn(tokio::time::sleep(Duration::from_millis(20)));
        assert_eq!(drain(&tracker, Duration::from_secs(5)).await, Drained::Complete);
    }

    #[tokio::test]
    async fn drain_gives_up_at_the_deadline() {
        let tracker = TaskTracker::new();
        tracker.spawn(tokio::time::sleep(Duration::from_secs(60)));
        let started = std::time::Instant::now();
        assert_eq!(
            drain(&tracker, Duration::from_millis(50)).await,
            Drained::DeadlineExceeded
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn cancel_on_cancels_the_token_when_the_signal_fires() {
        let token = CancellationToken::new();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let handle = cancel_on(
            async move {
                let _ = rx.await;
            },
            token.clone(),
        );
        assert!(!token.is_cancelled());
        tx.send(()).expect("receiver alive");
        handle.await.expect("task ran");
        assert!(token.is_cancelled());
    }
}
