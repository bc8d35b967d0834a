//! The one tracing setup every binary calls at start-up.

use serde::Deserialize;
use tracing_subscriber::EnvFilter;

/// How log events are written to stderr.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines, for a terminal.
    #[default]
    Text,
    /// One JSON object per event, for production log shippers.
    Json,
}

/// Keeps the background log writer alive; drop it last, at exit, so
/// buffered events are flushed.
#[must_use = "dropping the guard stops the log writer"]
#[derive(Debug)]
pub struct Guard(#[allow(dead_code, reason = "held for its Drop")] Option<tracing_appender::non_blocking::WorkerGuard>);

/// Installs the global subscriber: level filter from `RUST_LOG` (default
/// `info`), events in `format` on stderr through a buffered background
/// writer (one event per request must not cost a blocking write on the
/// request path). Calling it twice is harmless (the second call is
/// ignored), so tests may call it from every test.
pub fn init(format: LogFormat) -> Guard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .finish(std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer);
    let installed = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).try_init(),
    };
    Guard(installed.ok().map(|()| guard))
}

/// For tests: logs only when `TEST_LOG` is set, so a passing suite stays quiet.
pub fn init_for_tests() {
    if std::env::var_os("TEST_LOG").is_some() {
        // Tests end abruptly; leak the guard so the writer lives as long as the process.
        std::mem::forget(init(LogFormat::Text));
    }
}
