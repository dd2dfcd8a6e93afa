//! The agent's OpenTelemetry instruments, behind one cheap handle.
//!
//! [`Instruments::default`] is "off": every method is one branch on `None`, with no clock read, no
//! attribute built and no lock taken. [`Instruments::new`] creates the instruments on a meter of the
//! OTLP pipeline ([`super::otlp::Otlp::instruments`]). The handle is passed explicitly (to
//! [`crate::aws::CallCounter`], the [`crate::agent::Agent`] and through it the runtime) rather
//! than read from a global meter provider, so tests build and read their own.
//!
//! | name | instrument | attributes |
//! |---|---|---|
//! | `aurora_migrator.messages` | counter | `outcome` ([`MessageOutcome`]) |
//! | `aurora_migrator.step.duration` | histogram, s | `phase`: the phase the step started in |
//! | `aurora_migrator.aws.calls` | counter | `operation` (`rds:DescribeDBInstances`) |
//! | `aurora_migrator.aws.errors` | counter | `operation`, `kind` ([`ErrorKind::as_str`]) |
//! | `aurora_migrator.migrations` | gauge | `phase`: every phase, zeros included |

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, Meter, ObservableGauge};
use tokio::time::Instant;

use crate::core::{MigrationId, Phase};
use crate::ports::ErrorKind;

/// What became of one queue message, as the runtime saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageOutcome {
    /// Handled (or nothing to do) and deleted.
    Handled,
    /// A kind the agent does not know: logged and deleted.
    Unknown,
    /// A tick that is not the record's current one: deleted without observing.
    Stale,
    /// An event from another account or Region than the agent's own: deleted unhandled.
    Foreign,
    /// Malformed, or its step failed: left for redelivery (after the queue's
    /// `maxReceiveCount`, the DLQ).
    Left,
    /// Still running when the shutdown budget ran out; it reappears after its visibility
    /// timeout.
    Abandoned,
}

impl MessageOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            MessageOutcome::Handled => "handled",
            MessageOutcome::Unknown => "unknown",
            MessageOutcome::Stale => "stale",
            MessageOutcome::Foreign => "foreign",
            MessageOutcome::Left => "left",
            MessageOutcome::Abandoned => "abandoned",
        }
    }
}

/// The instruments, or nothing. Cloning shares them.
#[derive(Clone, Default)]
pub struct Instruments {
    inner: Option<Arc<Meters>>,
}

/// The OTel instruments themselves, created once per meter.
struct Meters {
    messages: Counter<u64>,
    step_duration: Histogram<f64>,
    aws_calls: Counter<u64>,
    aws_errors: Counter<u64>,
    /// Each migration's phase as last seen; the gauge's callback counts it per phase.
    phases: Arc<Mutex<HashMap<MigrationId, Phase>>>,
    /// Held so that the callback lives as long as the handle.
    _migrations: ObservableGauge<u64>,
}

/// Bucket bounds of the step histogram, in seconds: a step is one to a few AWS calls, and a
/// slow one waits on the RDS rate limiter (the SDK's default bounds are for milliseconds).
const STEP_BOUNDS_S: [f64; 12] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

impl Instruments {
    /// The instruments, on `meter`.
    pub fn new(meter: &Meter) -> Instruments {
        let phases: Arc<Mutex<HashMap<MigrationId, Phase>>> = Arc::default();
        let seen = phases.clone();
        let migrations = meter
            .u64_observable_gauge("aurora_migrator.migrations")
            .with_description(
                "Migrations by phase, as this agent last saw them: the whole table at each resync, \
                 and each migration after each of its steps",
            )
            .with_callback(move |observer| {
                let mut per_phase: HashMap<Phase, u64> = HashMap::new();
                for phase in seen.lock().unwrap_or_else(|p| p.into_inner()).values() {
                    *per_phase.entry(*phase).or_default() += 1;
                }
                // Every phase, zeros included: a phase that empties shows 0, not a stale value.
                for phase in Phase::ALL {
                    let n = per_phase.get(&phase).copied().unwrap_or(0);
                    observer.observe(n, &[KeyValue::new("phase", phase.as_str())]);
                }
            })
            .build();
        Instruments {
            inner: Some(Arc::new(Meters {
                messages: meter
                    .u64_counter("aurora_migrator.messages")
                    .with_description("Queue messages handled, by outcome")
                    .build(),
                step_duration: meter
                    .f64_histogram("aurora_migrator.step.duration")
                    .with_description(
                        "Time of one reconcile step (observe, decide, persist, act), by the phase it started in",
                    )
                    .with_unit("s")
                    .with_boundaries(STEP_BOUNDS_S.to_vec())
                    .build(),
                aws_calls: meter
                    .u64_counter("aurora_migrator.aws.calls")
                    .with_description("AWS API calls, by operation")
                    .build(),
                aws_errors: meter
                    .u64_counter("aurora_migrator.aws.errors")
                    .with_description(
                        "AWS API calls that failed after the SDK's retries, by operation and kind",
                    )
                    .build(),
                phases,
                _migrations: migrations,
            })),
        }
    }

    /// Whether anything is recorded.
    pub fn is_on(&self) -> bool {
        self.inner.is_some()
    }

    pub fn message(&self, outcome: MessageOutcome) {
        self.messages(outcome, 1);
    }

    pub fn messages(&self, outcome: MessageOutcome, n: u64) {
        if let Some(i) = &self.inner {
            i.messages
                .add(n, &[KeyValue::new("outcome", outcome.as_str())]);
        }
    }

    /// The start of a step, for [`Instruments::step_done`]; `None` (no clock read) when off.
    pub fn step_started(&self) -> Option<Instant> {
        self.inner.as_ref().map(|_| Instant::now())
    }

    pub fn step_done(&self, started: Option<Instant>, phase: Phase) {
        if let (Some(i), Some(t)) = (&self.inner, started) {
            i.step_duration.record(
                t.elapsed().as_secs_f64(),
                &[KeyValue::new("phase", phase.as_str())],
            );
        }
    }

    pub fn aws_call(&self, operation: &str) {
        if let Some(i) = &self.inner {
            i.aws_calls
                .add(1, &[KeyValue::new("operation", operation.to_string())]);
        }
    }

    pub fn aws_error(&self, operation: &str, kind: ErrorKind) {
        if let Some(i) = &self.inner {
            i.aws_errors.add(
                1,
                &[
                    KeyValue::new("operation", operation.to_string()),
                    KeyValue::new("kind", kind.as_str()),
                ],
            );
        }
    }

    /// A migration was seen in `phase` (after a step persisted it).
    pub fn migration_in(&self, id: &MigrationId, phase: Phase) {
        if let Some(i) = &self.inner {
            i.phases
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id.clone(), phase);
        }
    }

    /// The whole table was read: it replaces what was seen before (records deleted from the
    /// table stop counting).
    pub fn migrations_listed<'a>(&self, all: impl IntoIterator<Item = (&'a MigrationId, Phase)>) {
        if let Some(i) = &self.inner {
            let fresh: HashMap<MigrationId, Phase> =
                all.into_iter().map(|(id, p)| (id.clone(), p)).collect();
            *i.phases.lock().unwrap_or_else(|p| p.into_inner()) = fresh;
        }
    }
}

impl fmt::Debug for Instruments {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Instruments")
            .field("on", &self.is_on())
            .finish()
    }
}
