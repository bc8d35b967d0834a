//! The one tracing setup every binary calls at start-up.

use serde::{Deserialize, Serialize};
use std::io::{BufWriter, Stderr, Write};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

/// How log events are written to stderr.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines, for a terminal.
    #[default]
    Text,
    /// One JSON object per event, for production log shippers.
    Json,
}

/// Keeps the log buffer's flusher alive; dropping it (at exit) flushes
/// what is still buffered.
#[must_use = "dropping the guard stops the periodic flush"]
#[derive(Debug)]
pub struct Guard(Option<Buffered>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(b) = &self.0 {
            b.flush();
        }
    }
}

/// Stderr behind a 64 KiB buffer, flushed every [`FLUSH_EVERY`] and when
/// full (as nginx's `access_log ... buffer=64k flush=1s`): one event per
/// request must cost a memory copy, not a system call. Each event is one
/// write into the buffer under the lock, so lines never interleave.
#[derive(Debug, Clone)]
pub struct Buffered(Arc<Mutex<BufWriter<Stderr>>>);

/// How often buffered log lines reach stderr at the latest.
pub const FLUSH_EVERY: Duration = Duration::from_millis(500);

impl Buffered {
    fn new() -> Self {
        Self(Arc::new(Mutex::new(BufWriter::with_capacity(
            64 * 1024,
            std::io::stderr(),
        ))))
    }

    fn lock(&self) -> MutexGuard<'_, BufWriter<Stderr>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn flush(&self) {
        let _ = self.lock().flush();
    }
}

/// One event's access to the buffer.
#[derive(Debug)]
pub struct BufferedEvent<'a>(MutexGuard<'a, BufWriter<Stderr>>);

impl Write for BufferedEvent<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        // Flushing is the flusher's job; an event never waits for it.
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Buffered {
    type Writer = BufferedEvent<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        BufferedEvent(self.lock())
    }
}

/// The stream [`init`] installed and its format, for [`write_line`].
static STREAM: OnceLock<(Buffered, LogFormat)> = OnceLock::new();

/// The format of the log stream, once [`init`] has installed it.
pub fn stream_format() -> Option<LogFormat> {
    STREAM.get().map(|(_, format)| *format)
}

/// Writes one whole, already formatted line (ending in `\n`) to the log
/// stream, between events and never inside one. For a high-volume record
/// formatted by its owner (the gateway's access log); before [`init`], or
/// when another subscriber was installed first, the line is dropped.
pub fn write_line(line: &[u8]) {
    if let Some((buffered, _)) = STREAM.get() {
        let _ = buffered.lock().write_all(line);
    }
}

/// Installs the global subscriber: level filter from `RUST_LOG` (default
/// `info`), events in `format` on stderr through [`Buffered`]. Calling it
/// twice is harmless (the second call is ignored), so tests may call it
/// from every test.
pub fn init(format: LogFormat) -> Guard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let buffered = Buffered::new();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colour codes only for a terminal, never into a log file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(buffered.clone());
    let installed = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).try_init(),
    };
    if installed.is_err() {
        return Guard(None);
    }
    let _ = STREAM.set((buffered.clone(), format));
    let flusher = buffered.clone();
    let _ = std::thread::Builder::new().name("log-flush".into()).spawn(move || {
        loop {
            std::thread::sleep(FLUSH_EVERY);
            flusher.flush();
        }
    });
    Guard(Some(buffered))
}

/// For tests: logs only when `TEST_LOG` is set, so a passing suite stays quiet.
pub fn init_for_tests() {
    if std::env::var_os("TEST_LOG").is_some() {
        // Tests end abruptly; leak the guard so the writer lives as long as the process.
        std::mem::forget(init(LogFormat::Text));
    }
}
