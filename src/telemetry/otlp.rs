//! OpenTelemetry traces and metrics over OTLP/HTTP, for an ADOT or collector sidecar.
//!
//! [`Otlp::start`] builds both pipelines: a tracer provider with the SDK's batch span processor
//! and a meter provider with its periodic reader. Both export from their own threads, outside
//! tokio, with the reqwest 0.12 blocking client (the one reqwest of the project, rustls with
//! ring; opentelemetry-otlp's own clients are reqwest 0.13). Nothing here sets a global
//! provider: the tracing layer holds the tracer, and [`Instruments`] holds the instruments.
//!
//! Export is bounded: one request times out after [`EXPORT_TIMEOUT`], and [`Otlp::shutdown`]
//! gives both pipelines that long in all to flush, so an unreachable collector adds at most that
//! to the SIGTERM path.

use std::fmt;
use std::io::Read;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use opentelemetry::KeyValue;
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{
    MetricExporter, Protocol, SpanExporter, WithExportConfig, WithHttpConfig,
};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Subscriber;
use tracing_subscriber::Layer;
use tracing_subscriber::registry::LookupSpan;

use super::metrics::Instruments;

/// `service.name` unless `OTEL_SERVICE_NAME` or `OTEL_RESOURCE_ATTRIBUTES` names the service.
pub const SERVICE_NAME: &str = "aurora-migrator";

/// Longest single export request, and longest flush at shutdown.
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(3);

/// Largest collector response read (OTLP answers are a few bytes; a partial-success message at
/// most).
const MAX_RESPONSE_BYTES: u64 = 64 * 1024;

/// Targets the OTel layer never sees: the exporter's own HTTP stack and the SDK's internal logs.
/// A span they open while exporting would otherwise become a span to export, and so on.
const EXPORTER_TARGETS: &[&str] = &[
    "reqwest",
    "hyper",
    "hyper_util",
    "h2",
    "tower",
    "rustls",
    "opentelemetry",
    "opentelemetry_sdk",
    "opentelemetry_otlp",
    "opentelemetry-otlp",
    "opentelemetry_http",
];

/// The OTLP/HTTP encodings (`MIGRATOR_OTLP_PROTOCOL`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// `http/protobuf`: what collectors expect by default.
    HttpProtobuf,
    /// `http/json`: readable on the wire.
    HttpJson,
}

impl OtlpProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            OtlpProtocol::HttpProtobuf => "http/protobuf",
            OtlpProtocol::HttpJson => "http/json",
        }
    }
}

impl FromStr for OtlpProtocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "http/protobuf" => Ok(OtlpProtocol::HttpProtobuf),
            "http/json" => Ok(OtlpProtocol::HttpJson),
            "grpc" => Err(
                "`grpc` is not supported: use `http/protobuf` (port 4318 on a collector)".into(),
            ),
            other => Err(format!(
                "`{other}` is not an OTLP protocol (use `http/protobuf` or `http/json`)"
            )),
        }
    }
}

/// Where and how to export; validated by [`crate::config::TelemetryArgs`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OtlpSettings {
    /// Base URL of the collector (`http://localhost:4318`); `/v1/traces` and `/v1/metrics` are
    /// appended.
    pub endpoint: String,
    pub protocol: OtlpProtocol,
    /// Period of the metric export.
    pub metrics_interval: Duration,
}

impl OtlpSettings {
    /// One signal's URL: the base with its path, as `OTEL_EXPORTER_OTLP_ENDPOINT` is read.
    fn signal_url(&self, path: &str) -> String {
        format!("{}/{path}", self.endpoint.trim_end_matches('/'))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    #[error("cannot build the OTLP HTTP client: {0}")]
    Client(String),
    #[error("cannot build the OTLP {signal} exporter: {error}")]
    Exporter {
        signal: &'static str,
        error: opentelemetry_otlp::ExporterBuildError,
    },
}

/// Both pipelines, exporting.
pub struct Otlp {
    tracer: SdkTracerProvider,
    meter: SdkMeterProvider,
}

impl Otlp {
    /// Builds the exporters and providers. Sends nothing until there is something to send.
    pub fn start(settings: &OtlpSettings) -> Result<Otlp, OtlpError> {
        let client: Arc<dyn HttpClient> = Arc::new(BlockingClient::new()?);
        let protocol = match settings.protocol {
            OtlpProtocol::HttpProtobuf => Protocol::HttpBinary,
            OtlpProtocol::HttpJson => Protocol::HttpJson,
        };
        let spans = SpanExporter::builder()
            .with_http()
            .with_shared_http_client(client.clone())
            .with_endpoint(settings.signal_url("v1/traces"))
            .with_protocol(protocol)
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|error| OtlpError::Exporter {
                signal: "trace",
                error,
            })?;
        let metrics = MetricExporter::builder()
            .with_http()
            .with_shared_http_client(client)
            .with_endpoint(settings.signal_url("v1/metrics"))
            .with_protocol(protocol)
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|error| OtlpError::Exporter {
                signal: "metric",
                error,
            })?;
        let resource = resource();
        let tracer = SdkTracerProvider::builder()
            .with_resource(resource.clone())
            .with_batch_exporter(spans)
            .build();
        let reader = PeriodicReader::builder(metrics)
            .with_interval(settings.metrics_interval)
            .build();
        let meter = SdkMeterProvider::builder()
            .with_resource(resource)
            .with_reader(reader)
            .build();
        Ok(Otlp { tracer, meter })
    }

    /// The tracing layer that turns spans (and the events in them) into OTel spans. It ignores
    /// the exporter's own targets whatever `RUST_LOG` lets through.
    pub fn layer<S>(&self) -> impl Layer<S> + use<S>
    where
        S: Subscriber + for<'span> LookupSpan<'span>,
    {
        tracing_opentelemetry::layer()
            .with_tracer(self.tracer.tracer(SERVICE_NAME))
            .with_filter(tracing_subscriber::filter::filter_fn(|meta| {
                !is_exporter_target(meta.target())
            }))
    }

    /// The agent's instruments, on this pipeline's meter.
    pub fn instruments(&self) -> Instruments {
        Instruments::new(&self.meter.meter(SERVICE_NAME))
    }

    /// Flushes and stops both pipelines, in parallel, within [`EXPORT_TIMEOUT`]. Blocking: call
    /// it outside any tokio runtime (the SDK's threads do the export). What is not flushed by
    /// then is lost; the error says which pipeline did not finish, or how it failed.
    pub fn shutdown(self) -> Result<(), String> {
        let deadline = Instant::now() + EXPORT_TIMEOUT;
        let (done, finished) = mpsc::channel();
        let Otlp { tracer, meter } = self;
        let spawned = [
            spawn_shutdown("traces", done.clone(), move || {
                tracer.shutdown_with_timeout(EXPORT_TIMEOUT)
            }),
            spawn_shutdown("metrics", done, move || {
                meter.shutdown_with_timeout(EXPORT_TIMEOUT)
            }),
        ];
        let mut waiting: Vec<&str> = spawned.into_iter().flatten().collect();
        let mut failures = Vec::new();
        while !waiting.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            match finished.recv_timeout(left) {
                Ok((signal, result)) => {
                    waiting.retain(|s| *s != signal);
                    if let Err(e) = result {
                        failures.push(format!("{signal}: {e}"));
                    }
                }
                // Out of time: the threads are left to the process's exit.
                Err(_) => break,
            }
        }
        failures.extend(
            waiting
                .iter()
                .map(|s| format!("{s}: not flushed within {EXPORT_TIMEOUT:?}")),
        );
        if failures.is_empty() {
            Ok(())
        } else {
            Err(failures.join("; "))
        }
    }
}

impl fmt::Debug for Otlp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Otlp").finish_non_exhaustive()
    }
}

type ShutdownResult = (&'static str, opentelemetry_sdk::error::OTelSdkResult);

/// Runs one pipeline's shutdown on its own thread; `None` (and nothing to wait for) if the
/// thread cannot start.
fn spawn_shutdown(
    signal: &'static str,
    done: mpsc::Sender<ShutdownResult>,
    shutdown: impl FnOnce() -> opentelemetry_sdk::error::OTelSdkResult + Send + 'static,
) -> Option<&'static str> {
    std::thread::Builder::new()
        .name(format!("otel-shutdown-{signal}"))
        .spawn(move || {
            let _ = done.send((signal, shutdown()));
        })
        .ok()
        .map(|_| signal)
}

fn is_exporter_target(target: &str) -> bool {
    EXPORTER_TARGETS.iter().any(|t| {
        target
            .strip_prefix(t)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
    })
}

/// `service.name` = [`SERVICE_NAME`] unless the environment names the service; the SDK's
/// detectors add `OTEL_RESOURCE_ATTRIBUTES` and the SDK's own attributes.
fn resource() -> Resource {
    let named_by_env = std::env::var("OTEL_SERVICE_NAME").is_ok_and(|s| !s.trim().is_empty())
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|s| s.contains("service.name="));
    let builder = Resource::builder();
    if named_by_env {
        builder.build()
    } else {
        builder
            .with_attribute(KeyValue::new("service.name", SERVICE_NAME))
            .build()
    }
}

/// The exporters' HTTP client: reqwest 0.12's blocking client. The SDK's processor and reader
/// threads poll the export future with a plain executor, so a blocking call there is the
/// intended use; it must not run on a tokio thread (reqwest panics there in debug builds).
#[derive(Debug)]
struct BlockingClient(reqwest::blocking::Client);

impl BlockingClient {
    fn new() -> Result<BlockingClient, OtlpError> {
        // Built on a thread of its own: reqwest refuses to build (and wait on) its client's
        // runtime from within another runtime.
        std::thread::spawn(|| {
            reqwest::blocking::Client::builder()
                .timeout(EXPORT_TIMEOUT)
                .build()
        })
        .join()
        .map_err(|_| OtlpError::Client("the thread building it panicked".into()))?
        .map(BlockingClient)
        .map_err(|e| OtlpError::Client(e.to_string()))
    }
}

#[async_trait::async_trait]
impl HttpClient for BlockingClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let request: reqwest::blocking::Request = request.try_into()?;
        let mut response = self.0.execute(request)?;
        let status = response.status();
        let headers = std::mem::take(response.headers_mut());
        let mut body = Vec::new();
        response.take(MAX_RESPONSE_BYTES).read_to_end(&mut body)?;
        let mut answer = Response::builder().status(status).body(Bytes::from(body))?;
        *answer.headers_mut() = headers;
        Ok(answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exporter_stack_is_recognised_by_target_prefix() {
        assert!(is_exporter_target("hyper_util::client::legacy"));
        assert!(is_exporter_target("reqwest"));
        assert!(is_exporter_target("opentelemetry_sdk"));
        assert!(!is_exporter_target("aurora_migrator::agent"));
        assert!(!is_exporter_target("hyperion"));
    }

    #[test]
    fn protocols_parse_and_grpc_is_refused_with_a_reason() {
        assert_eq!("http/json".parse(), Ok(OtlpProtocol::HttpJson));
        assert_eq!("http/protobuf".parse(), Ok(OtlpProtocol::HttpProtobuf));
        assert!("grpc".parse::<OtlpProtocol>().unwrap_err().contains("4318"));
        assert!("http".parse::<OtlpProtocol>().is_err());
    }

    #[test]
    fn signal_urls_append_the_path_once() {
        let s = OtlpSettings {
            endpoint: "http://localhost:4318/".into(),
            protocol: OtlpProtocol::HttpProtobuf,
            metrics_interval: Duration::from_secs(60),
        };
        assert_eq!(s.signal_url("v1/traces"), "http://localhost:4318/v1/traces");
    }
}
