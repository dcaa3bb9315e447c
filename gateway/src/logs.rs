//! The service's log: `tracing` events to standard error, as text or JSON lines, filtered by `RUST_LOG`.
//!
//! | variable | values | default |
//! | --- | --- | --- |
//! | `RUST_LOG` | a `tracing` filter such as `info` or `keymeter=debug,info` | `info` |
//! | `KEYMETER_LOG_FORMAT` | `text` or `json` | `text` |
//!
//! Every 5xx, every reservation billed without a usage, every settle above its reservation, every rate limiter
//! failing open or closed and every dependency outage is one line at `warn` or above, with the request id where
//! there is one and never a secret (keymeter's errors name what was wrong, never the value).

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::FmtSpan;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// Human-readable lines (the default).
    #[default]
    Text,
    /// One JSON object a line, for log collectors.
    Json,
}

impl std::str::FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(Format::Text),
            "json" => Ok(Format::Json),
            other => Err(format!("log format {other:?}: use text or json")),
        }
    }
}

/// Installs the process's `tracing` subscriber: `RUST_LOG`'s filter (default `info`), lines in `format` on
/// standard error.
///
/// # Errors
/// A `RUST_LOG` that does not parse, or a subscriber already installed.
pub fn init(format: Format) -> Result<(), String> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => {
            EnvFilter::try_new(&spec).map_err(|e| format!("RUST_LOG {spec:?}: {e}"))?
        }
        _ => EnvFilter::new("info"),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_span_events(FmtSpan::NONE);
    let installed = match format {
        Format::Text => builder.with_ansi(false).try_init(),
        Format::Json => builder.json().try_init(),
    };
    installed.map_err(|e| format!("cannot install the log subscriber: {e}"))
}
