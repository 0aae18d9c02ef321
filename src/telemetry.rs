//! Logging: a tracing subscriber writing text or JSON to the writer given (stderr in the
//! binary), filtered by `RUST_LOG` (default `info`): comma-separated `target=level` directives
//! and a bare default level, e.g. `allot=debug,info`.

use tracing::level_filters::LevelFilter;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, fmt};

use crate::config::LogFormat;

/// Reads the filter from `spec` (`RUST_LOG`); `info` when unset. A spec that does not parse is
/// reported on stderr and `info` used, rather than logging nothing.
fn filter(spec: Option<&str>) -> Targets {
    let default = Targets::new().with_default(LevelFilter::INFO);
    match spec.map(str::trim) {
        Some(spec) if !spec.is_empty() => spec.parse().unwrap_or_else(|e| {
            eprintln!("allot: ignoring RUST_LOG={spec:?} ({e}); logging at info");
            default
        }),
        _ => default,
    }
}

/// Installs the global subscriber; a second call (tests) leaves the first in place. `ansi`
/// colours text logs (for a terminal, not a file).
pub fn init<W>(format: LogFormat, ansi: bool, writer: W)
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = filter(std::env::var("RUST_LOG").ok().as_deref());
    let layer = fmt::layer()
        .with_ansi(ansi && format == LogFormat::Text)
        .with_writer(writer);
    let registry = tracing_subscriber::registry();
    // Err only when a subscriber is already installed, which is fine.
    let _ = match format {
        LogFormat::Text => registry.with(layer.with_filter(filter)).try_init(),
        LogFormat::Json => registry.with(layer.json().with_filter(filter)).try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_log_takes_targets_and_a_default_level() {
        let on = |f: &Targets, target: &str, level: tracing::Level| f.would_enable(target, &level);
        let f = filter(Some("allot=debug,warn"));
        assert!(on(&f, "allot::ipam", tracing::Level::DEBUG));
        assert!(!on(&f, "hyper::proto", tracing::Level::INFO));
        assert!(on(&f, "hyper::proto", tracing::Level::WARN));
        let default = filter(None);
        assert!(on(&default, "allot", tracing::Level::INFO));
        assert!(!on(&default, "allot", tracing::Level::DEBUG));
        // Unparsable: info, not silence.
        let bad = filter(Some("allot=loud"));
        assert!(on(&bad, "allot", tracing::Level::INFO));
    }
}
