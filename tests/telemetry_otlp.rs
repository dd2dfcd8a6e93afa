//! OpenTelemetry export, end to end: a loopback OTLP/HTTP collector (hand-parsed HTTP/1.1, 200
//! with an empty body) receives the agent's spans and metrics, and receives nothing when no
//! endpoint is set.
//!
//! The global subscriber can be set once per process, so the pipeline test uses a scoped
//! subscriber, and the tests of `telemetry::init` (global, as in `main`) run this test binary
//! again as a child process with the environment under test.

use std::collections::HashMap;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aurora_migrator::aws::CallCounter;
use aurora_migrator::config::TelemetryArgs;
use aurora_migrator::ports::ErrorKind;
use aurora_migrator::telemetry::otlp::EXPORT_TIMEOUT;
use aurora_migrator::telemetry::{
    self, LogFormat, MessageOutcome, Otlp, OtlpProtocol, OtlpSettings,
};
use serde_json::Value;
use tracing_subscriber::layer::SubscriberExt;

/// One request the collector received.
#[derive(Clone)]
struct Received {
    method: String,
    path: String,
    content_type: String,
    body: Vec<u8>,
}

impl std::fmt::Debug for Received {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} ({}, {} bytes)",
            self.method,
            self.path,
            self.content_type,
            self.body.len()
        )
    }
}

/// A one-thread runtime of its own (the tests' exporters block on theirs) with a listener on a
/// free port of 127.0.0.1, and the listener's `http://` URL.
fn loopback_server() -> (tokio::runtime::Runtime, tokio::net::TcpListener, String) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    (runtime, listener, url)
}

/// An OTLP/HTTP collector on 127.0.0.1: records every request, answers 200 with no body.
struct Collector {
    url: String,
    received: Arc<Mutex<Vec<Received>>>,
    _runtime: tokio::runtime::Runtime,
}

impl Collector {
    fn start() -> Collector {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (runtime, listener, url) = loopback_server();
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let seen = received.clone();
        runtime.spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 8192];
                    let request = loop {
                        let Ok(n) = sock.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                            continue;
                        };
                        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                        let header = |name: &str| {
                            head.lines().skip(1).find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.trim()
                                    .eq_ignore_ascii_case(name)
                                    .then(|| v.trim().to_string())
                            })
                        };
                        let len: usize = header("content-length")
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(0);
                        if buf.len() < head_end + 4 + len {
                            continue;
                        }
                        let mut request_line = head.lines().next().unwrap_or("").split(' ');
                        break Received {
                            method: request_line.next().unwrap_or("").to_string(),
                            path: request_line.next().unwrap_or("").to_string(),
                            content_type: header("content-type").unwrap_or_default(),
                            body: buf[head_end + 4..head_end + 4 + len].to_vec(),
                        };
                    };
                    seen.lock().unwrap().push(request);
                    let _ = sock
                        .write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                        )
                        .await;
                });
            }
        });
        Collector {
            url,
            received,
            _runtime: runtime,
        }
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// The JSON bodies POSTed to `path`.
    fn json_posts(&self, path: &str) -> Vec<Value> {
        self.received()
            .into_iter()
            .filter(|r| r.method == "POST" && r.path == path)
            .map(|r| {
                assert_eq!(r.content_type, "application/json", "{path}");
                serde_json::from_slice(&r.body).expect("an OTLP/JSON body")
            })
            .collect()
    }
}

/// Every span in OTLP/JSON trace exports: resourceSpans[].scopeSpans[].spans[].
fn spans(exports: &[Value]) -> Vec<Value> {
    exports
        .iter()
        .flat_map(|e| e["resourceSpans"].as_array().cloned().unwrap_or_default())
        .flat_map(|r| r["scopeSpans"].as_array().cloned().unwrap_or_default())
        .flat_map(|s| s["spans"].as_array().cloned().unwrap_or_default())
        .collect()
}

/// The data points of the metric `name` in OTLP/JSON metric exports, whatever its kind
/// (`sum`, `gauge`, `histogram` hold `dataPoints`).
fn data_points(exports: &[Value], name: &str) -> Vec<Value> {
    exports
        .iter()
        .flat_map(|e| e["resourceMetrics"].as_array().cloned().unwrap_or_default())
        .flat_map(|r| r["scopeMetrics"].as_array().cloned().unwrap_or_default())
        .flat_map(|s| s["metrics"].as_array().cloned().unwrap_or_default())
        .filter(|m| m["name"] == name)
        .flat_map(|m| {
            m.as_object()
                .into_iter()
                .flat_map(|o| o.values())
                .filter_map(|v| v["dataPoints"].as_array().cloned())
                .flatten()
                .collect::<Vec<_>>()
        })
        .collect()
}

/// A data point's string attributes.
fn attributes(point: &Value) -> HashMap<String, String> {
    point["attributes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| {
            Some((
                a["key"].as_str()?.to_string(),
                a["value"]["stringValue"].as_str()?.to_string(),
            ))
        })
        .collect()
}

/// `asInt` of a sum's point: protobuf JSON writes 64-bit integers as strings.
fn as_int(point: &Value) -> u64 {
    match &point["asInt"] {
        Value::String(s) => s.parse().unwrap(),
        v => v.as_u64().unwrap_or(0),
    }
}

/// The value of `aurora_migrator.aws.calls` for `operation`, if exported.
fn aws_calls(exports: &[Value], operation: &str) -> Option<u64> {
    data_points(exports, "aurora_migrator.aws.calls")
        .iter()
        .find(|p| attributes(p).get("operation").map(String::as_str) == Some(operation))
        .map(as_int)
}

#[test]
fn spans_and_metrics_reach_an_otlp_http_collector() {
    let collector = Collector::start();
    let otlp = Otlp::start(&OtlpSettings {
        endpoint: collector.url.clone(),
        protocol: OtlpProtocol::HttpJson,
        // Longer than the test: what arrives comes from the shutdown's flush.
        metrics_interval: Duration::from_secs(600),
    })
    .unwrap();

    let subscriber = tracing_subscriber::registry().with(otlp.layer());
    tracing::subscriber::with_default(subscriber, || {
        let message = tracing::info_span!("message", message_id = "m-1", receive_count = 1);
        let _in_message = message.enter();
        let reconcile =
            tracing::info_span!("reconcile", migration = "db-ABC/1", source = "orders-pg");
        let _in_reconcile = reconcile.enter();
        tracing::info!("phase changed");
    });
    let metrics = otlp.instruments();
    let calls = CallCounter::new(metrics.clone());
    calls.count("rds:DescribeDBInstances");
    calls.count("rds:DescribeDBInstances");
    calls.error("rds:DescribeDBInstances", ErrorKind::Throttled);
    metrics.message(MessageOutcome::Handled);
    otlp.shutdown().expect("both pipelines flushed");

    let traces = collector.json_posts("/v1/traces");
    assert!(
        !traces.is_empty(),
        "no POST /v1/traces: {:?}",
        collector.received()
    );
    let spans = spans(&traces);
    let named = |name: &str| {
        spans
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("no span `{name}` in {spans:?}"))
            .clone()
    };
    let (message, reconcile) = (named("message"), named("reconcile"));
    assert_eq!(reconcile["traceId"], message["traceId"]);
    assert_eq!(
        reconcile["parentSpanId"], message["spanId"],
        "reconcile is a child of message"
    );
    let resource = &traces[0]["resourceSpans"][0]["resource"];
    assert!(resource.to_string().contains("service.name"), "{resource}");
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        assert!(
            resource.to_string().contains("aurora-migrator"),
            "{resource}"
        );
    }

    let exported = collector.json_posts("/v1/metrics");
    assert!(
        !exported.is_empty(),
        "no POST /v1/metrics: {:?}",
        collector.received()
    );
    assert_eq!(aws_calls(&exported, "rds:DescribeDBInstances"), Some(2));
    let errors = data_points(&exported, "aurora_migrator.aws.errors");
    assert!(
        errors.iter().any(|p| {
            let a = attributes(p);
            a.get("operation").map(String::as_str) == Some("rds:DescribeDBInstances")
                && a.get("kind").map(String::as_str) == Some("throttled")
                && as_int(p) == 1
        }),
        "{errors:?}"
    );
    let messages = data_points(&exported, "aurora_migrator.messages");
    assert!(
        messages
            .iter()
            .any(|p| attributes(p).get("outcome").map(String::as_str) == Some("handled")),
        "{messages:?}"
    );
    // The gauge reports every phase, zeros included.
    let phases = data_points(&exported, "aurora_migrator.migrations");
    assert_eq!(phases.len(), 18, "{phases:?}");
}

/// A collector that accepts connections and reads, but never answers.
fn hanging_collector() -> (String, tokio::runtime::Runtime) {
    use tokio::io::AsyncReadExt;
    let (runtime, listener, url) = loopback_server();
    runtime.spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut sink = [0u8; 8192];
                while matches!(sock.read(&mut sink).await, Ok(n) if n > 0) {}
            });
        }
    });
    (url, runtime)
}

#[test]
fn the_flush_gives_up_within_the_export_timeout_when_the_collector_hangs() {
    let (url, _collector) = hanging_collector();
    let otlp = Otlp::start(&OtlpSettings {
        endpoint: url,
        protocol: OtlpProtocol::HttpProtobuf,
        metrics_interval: Duration::from_secs(600),
    })
    .unwrap();
    let subscriber = tracing_subscriber::registry().with(otlp.layer());
    tracing::subscriber::with_default(subscriber, || {
        tracing::info_span!("message", message_id = "m-1").in_scope(|| {});
    });
    CallCounter::new(otlp.instruments()).count("sqs:ReceiveMessage");
    let started = std::time::Instant::now();
    let flushed = otlp.shutdown();
    let took = started.elapsed();
    assert!(
        flushed.is_err(),
        "a hanging collector cannot have acknowledged"
    );
    assert!(
        took < EXPORT_TIMEOUT + Duration::from_secs(1),
        "the flush took {took:?}"
    );
}

/// Set by the tests below for the child process they start; a plain run skips the child.
const CHILD: &str = "AURORA_MIGRATOR_TELEMETRY_CHILD";

/// The child: settings from its environment and `telemetry::init`, as `main` does for `run`;
/// reports what it found on stdout, then drops the guard (the flush) and exits.
#[test]
fn child_process_emits_through_init() {
    use clap::Parser;
    use opentelemetry::trace::{Span, Tracer};
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    #[derive(Parser)]
    struct Args {
        #[command(flatten)]
        telemetry: TelemetryArgs,
    }
    let otlp = Args::parse_from(["child"]).telemetry.otlp().unwrap();
    let guard = telemetry::init(LogFormat::Text, "info", otlp.as_ref()).unwrap();
    {
        let message = tracing::info_span!("message", message_id = "m-1", receive_count = 1);
        let _in_message = message.enter();
        let reconcile = tracing::info_span!("reconcile", migration = "db-ABC/1");
        let _in_reconcile = reconcile.enter();
        tracing::info!("phase changed");
    }
    CallCounter::new(guard.instruments()).count("rds:DescribeDBInstances");
    let global_span = opentelemetry::global::tracer("probe").start("probe");
    println!("exporting={}", guard.is_exporting());
    println!("metrics_on={}", guard.instruments().is_on());
    println!(
        "global_tracer_records={}",
        global_span.span_context().is_valid()
    );
    drop(guard);
}

/// Runs the child with `env` set and the endpoint variables cleared; returns its stdout.
fn run_child(env: &[(&str, String)]) -> String {
    let mut child = Command::new(std::env::current_exe().unwrap());
    child
        .args([
            "child_process_emits_through_init",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .env_remove("RUST_LOG")
        .env_remove("MIGRATOR_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT");
    for (k, v) in env {
        child.env(k, v);
    }
    let out = child.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "child failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn without_an_endpoint_nothing_is_installed_or_sent() {
    let collector = Collector::start();
    // The per-signal variables point at the collector: an exporter built by mistake (the SDK
    // reads them when no endpoint is given) would send there.
    let stdout = run_child(&[
        (
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            format!("{}/v1/traces", collector.url),
        ),
        (
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
            format!("{}/v1/metrics", collector.url),
        ),
        ("MIGRATOR_OTLP_PROTOCOL", "http/json".into()),
    ]);
    assert!(stdout.contains("exporting=false"), "{stdout}");
    assert!(stdout.contains("metrics_on=false"), "{stdout}");
    assert!(stdout.contains("global_tracer_records=false"), "{stdout}");
    assert!(
        collector.received().is_empty(),
        "{:?}",
        collector.received()
    );
}

/// The control for the test above: the same child, with the standard endpoint variable set,
/// does send (and still installs no global provider).
#[test]
fn the_standard_endpoint_variable_turns_export_on() {
    let collector = Collector::start();
    let stdout = run_child(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url.clone()),
        ("MIGRATOR_OTLP_PROTOCOL", "http/json".into()),
    ]);
    assert!(stdout.contains("exporting=true"), "{stdout}");
    assert!(stdout.contains("metrics_on=true"), "{stdout}");
    assert!(stdout.contains("global_tracer_records=false"), "{stdout}");
    let names: Vec<Value> = spans(&collector.json_posts("/v1/traces"))
        .iter()
        .map(|s| s["name"].clone())
        .collect();
    assert!(names.contains(&Value::from("message")), "{names:?}");
    assert!(names.contains(&Value::from("reconcile")), "{names:?}");
    assert_eq!(
        aws_calls(
            &collector.json_posts("/v1/metrics"),
            "rds:DescribeDBInstances"
        ),
        Some(1)
    );
}
