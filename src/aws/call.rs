//! The one way an adapter calls AWS: counted, classified, paginated, boxed.
//!
//! - [`call`]: counts the operation in the [`CallCounter`], awaits the SDK's answer, and turns a
//!   failure into a [`PortError`] with [`classify`], counting it by kind. Every SDK request of
//!   every adapter goes through it (RDS's after its rate limiter: `rds/mod.rs`), so the call
//!   counts, the run summary and the OTel counters see every request the same way.
//! - [`call_unless`]: the same, for a request whose refusal with one error code is an answer the
//!   caller expects ("already exists" after a lost answer, a failed write condition, no such
//!   table): `Ok(None)`. The refusal is still a failed call and counted as one, by kind.
//! - [`all_pages`]: every page of a paginated read, following its marker (`Marker`,
//!   `NextToken`, `LastEvaluatedKey`).
//! - [`boxed`]: how every port method wraps its future, for the reason below.
//!
//! # Why port futures are boxed
//!
//! The driver's future (one inbound message: observe, step, persist, act) awaits the ports'
//! futures, and an `async fn`'s state machine holds the state machines of everything it awaits:
//! unboxed, the driver's future would nest every adapter's future, and each of those the SDK's
//! request futures, which are large. In a debug build (unoptimised) the whole came to more than
//! a worker thread's stack (tokio's 2 MiB) and the agent overflowed it (commit 3c88ab0). Boxing
//! each port future keeps it out of the driver's, which holds a pointer per port call instead,
//! for the price of one allocation per call: nothing next to a network round trip. So every
//! port method of every adapter returns `boxed(…)` of its future; the runtime boxes the
//! driver's future too (`runtime.rs`).

use std::future::Future;
use std::pin::Pin;

use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_runtime_api::http::Response;

use super::CallCounter;
use super::classify::{ServiceError, classify, code};
use crate::ports::{PortError, PortResult};

/// What an SDK request's `send()` answers.
pub type SdkResult<T, E> = Result<T, SdkError<E, Response>>;

/// Counts `operation` (e.g. `rds:CreateDBCluster`), awaits `request`, and classifies a failure,
/// counting it by kind.
pub async fn call<T, E: ServiceError>(
    calls: &CallCounter,
    operation: &str,
    request: impl Future<Output = SdkResult<T, E>>,
) -> PortResult<T> {
    not_past_the_lease(operation, jiff::Timestamp::now())?;
    calls.count(operation);
    request.await.map_err(|e| failed(calls, operation, &e))
}

/// [`call`], where a refusal with the error code `answer` is what the caller expects: `Ok(None)`
/// (counted as a failed call all the same).
pub async fn call_unless<T, E: ServiceError>(
    calls: &CallCounter,
    operation: &str,
    answer: &str,
    request: impl Future<Output = SdkResult<T, E>>,
) -> PortResult<Option<T>> {
    not_past_the_lease(operation, jiff::Timestamp::now())?;
    calls.count(operation);
    match request.await {
        Ok(r) => Ok(Some(r)),
        Err(e) => {
            let err = failed(calls, operation, &e);
            if code(&e) == Some(answer) {
                Ok(None)
            } else {
                Err(err)
            }
        }
    }
}

/// Refuses to send a request that changes something from a step's actions whose lease lapsed
/// (`agent::lease`): another agent may be stepping the migration now. Reads, and the agent's
/// own table and queue (whose writes are fenced or harmless), are always sent.
pub fn not_past_the_lease(operation: &str, now: jiff::Timestamp) -> PortResult<()> {
    let own = operation.starts_with("dynamodb:") || operation.starts_with("sqs:");
    let read = operation.split_once(':').is_some_and(|(_, op)| {
        ["Describe", "List", "Get"]
            .iter()
            .any(|r| op.starts_with(r))
    });
    if own || read || !crate::agent::lease::lapsed_for_this_step(now) {
        return Ok(());
    }
    Err(PortError::new(
        crate::ports::ErrorKind::Retryable,
        operation,
        "not sent: this agent's lease on the migration lapsed (another agent may step it now)",
    ))
}

/// Classifies a failed call and counts it by kind.
fn failed<E: ServiceError>(
    calls: &CallCounter,
    operation: &str,
    e: &SdkError<E, Response>,
) -> PortError {
    let err = classify(operation, e);
    calls.error(operation, err.kind);
    err
}

/// Every page of a paginated read: `page(marker)` asks for one (the first with `None`) and
/// answers its items and the next page's marker, `None` after the last.
pub async fn all_pages<K, T, Fut>(mut page: impl FnMut(Option<K>) -> Fut) -> PortResult<Vec<T>>
where
    Fut: Future<Output = PortResult<(Vec<T>, Option<K>)>>,
{
    let mut out = Vec::new();
    let mut marker = None;
    loop {
        let (items, next) = page(marker).await?;
        out.extend(items);
        match next {
            Some(m) => marker = Some(m),
            None => return Ok(out),
        }
    }
}

/// A port method's future, on the heap (see the module doc for why).
pub fn boxed<F: Future>(f: F) -> Pin<Box<F>> {
    Box::pin(f)
}
