//! Logs: JSON lines (CloudWatch Logs indexes their fields) or text for a terminal. Every line
//! about a migration carries its id (the `migration` field of the event or of its span).
//!
//! Traces and metrics: OpenTelemetry over OTLP/HTTP ([`otlp`]), only when an endpoint is set.
//! Off, there is no exporter, no provider (global or not), no OTel layer and no instrument:
//! [`Instruments`] is a `None` and the subscriber is the log layer alone.

pub mod metrics;
pub mod otlp;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

pub use metrics::{Instruments, MessageOutcome};
pub use otlp::{Otlp, OtlpError, OtlpProtocol, OtlpSettings};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Json,
    Text,
}

/// Installs the global subscriber; `RUST_LOG` filters (default `default_level`). With `otlp`,
/// also starts the OTLP pipelines and adds their layer. Keep the guard until the end of `main`:
/// dropping it flushes what is left.
pub fn init(
    format: LogFormat,
    default_level: &str,
    otlp: Option<&OtlpSettings>,
) -> Result<TelemetryGuard, OtlpError> {
    let otlp = otlp.map(Otlp::start).transpose()?;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let logs = match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .compact()
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let traces = otlp.as_ref().map(|o| o.layer());
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(logs)
        .with(traces)
        .try_init();
    let instruments = otlp.as_ref().map(Otlp::instruments).unwrap_or_default();
    Ok(TelemetryGuard { otlp, instruments })
}

/// Holds the OTLP pipelines, if any, and flushes them when dropped (bounded by
/// [`otlp::EXPORT_TIMEOUT`]). Drop it outside the tokio runtime: the flush blocks.
#[derive(Debug)]
pub struct TelemetryGuard {
    otlp: Option<Otlp>,
    instruments: Instruments,
}

impl TelemetryGuard {
    /// Whether traces and metrics are exported.
    pub fn is_exporting(&self) -> bool {
        self.otlp.is_some()
    }

    /// The instruments (off when not exporting).
    pub fn instruments(&self) -> Instruments {
        self.instruments.clone()
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(otlp) = self.otlp.take()
            && let Err(e) = otlp.shutdown()
        {
            tracing::warn!(error = %e, "telemetry not flushed");
        }
    }
}
