//! Logging and tracing setup.
//!
//! Log lines are written by a thread of their own, not by the runtime's workers: a request's
//! line ("finished processing request", `http::request_log`) is written as its response ends,
//! and a slow or full stderr (a pipe to a log collector) must not hold up a reply or the next
//! one on the same worker. When that thread falls
//! 16,384 lines behind, new lines are dropped and counted (`redial_log_lines_dropped_total`)
//! rather than waited for.

use std::sync::OnceLock;

use tracing_appender::non_blocking::{ErrorCounter, NonBlocking, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Lines queued for the writer thread at most. The queue's slots are allocated up front (32 bytes
/// each): tracing-appender's default of 128,000 made 5 MB of a 16 MB idle process. 16,384 lines
/// are half a minute of a busy instance's request lines.
const QUEUED_LINES: usize = 16_384;

/// The writer thread's count of dropped lines, once logging is installed.
static DROPPED: OnceLock<ErrorCounter> = OnceLock::new();

/// Keeps the log writer thread running; dropping it writes out what is queued (at the end of
/// `main`).
#[derive(Debug)]
#[must_use = "logs queued when the guard drops unheld are lost"]
pub struct LogGuard {
    _writer: WorkerGuard,
}

/// Installs the global subscriber: `RUST_LOG` filters (default `info`), output as configured,
/// written to stderr by a thread of its own. Returns `None` when a subscriber was already
/// installed (calling it twice is harmless).
pub fn init(format: LogFormat) -> Option<LogGuard> {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,hyper=warn,tower_http=info"));
    let (writer, guard): (NonBlocking, WorkerGuard) = NonBlockingBuilder::default()
        .buffered_lines_limit(QUEUED_LINES)
        .lossy(true)
        .finish(std::io::stderr());
    let dropped = writer.error_counter();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let installed = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
    installed.ok()?;
    let _ = DROPPED.set(dropped);
    Some(LogGuard { _writer: guard })
}

/// Log lines dropped so far because the writer thread was too far behind.
pub fn dropped_lines() -> usize {
    DROPPED.get().map_or(0, ErrorCounter::dropped_lines)
}
