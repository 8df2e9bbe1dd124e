//! Logging: `tracing` with JSON output (or human-readable text for a terminal), filtered by
//! `RUST_LOG` (or a default the binary chooses).

use tracing_subscriber::EnvFilter;

/// Output format of the logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line, for collectors.
    Json,
    /// Human-readable, for a terminal.
    Text,
}

/// Installs the global subscriber, filtered by `RUST_LOG` or else `default_filter` (an
/// `EnvFilter` directive such as `info`). Call once, from a binary's `main`.
pub fn init(format: LogFormat, default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.compact().init(),
    }
}
