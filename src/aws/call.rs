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

/// How many times in all one page is asked for. A page that fails with a passing fault
/// (throttled, or a 5xx or timeout after the SDK's own retries) is asked again from its own
/// marker, up to this many times, instead of failing the whole read: a fleet snapshot is ten
/// pages, and failing it for one page threw the pages already read away and failed every look
/// waiting for it. In the simulator's 500-migration fleet (2 % throttling and 2 % server errors
/// per call) half the snapshot pages requested were for snapshots that then failed. For RDS
/// each attempt waits its turn at the rate limiter (the caller's `page` does), which spaces
/// them.
pub const PAGE_ATTEMPTS: u32 = 3;

/// Every page of a paginated read: `page(marker)` asks for one (the first with `None`) and
/// answers its items and the next page's marker, `None` after the last. A page that fails
/// with a passing fault is asked again ([`PAGE_ATTEMPTS`]); any other failure ends the read.
pub async fn all_pages<K: Clone, T, Fut>(
    mut page: impl FnMut(Option<K>) -> Fut,
) -> PortResult<Vec<T>>
where
    Fut: Future<Output = PortResult<(Vec<T>, Option<K>)>>,
{
    let mut out = Vec::new();
    let mut marker = None;
    loop {
        let mut attempt = 1;
        let (items, next) = loop {
            match page(marker.clone()).await {
                Ok(answer) => break answer,
                Err(e) if attempt < PAGE_ATTEMPTS && e.kind.is_transient() => attempt += 1,
                Err(e) => return Err(e),
            }
        };
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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::core::ErrorKind;

    /// Three pages (markers None, 1, 2) of two items each. `faults` are the answers of the
    /// first asks, in order (`None`: the page answers); every ask after them answers. Returns
    /// the read and every marker asked for.
    async fn read(faults: Vec<Option<ErrorKind>>) -> (PortResult<Vec<u32>>, Vec<Option<u32>>) {
        let faults = Mutex::new(faults.into_iter());
        let asked = Mutex::new(Vec::new());
        let r = all_pages(|marker: Option<u32>| {
            asked.lock().unwrap().push(marker);
            let fault = faults.lock().unwrap().next().flatten();
            async move {
                if let Some(kind) = fault {
                    return Err(PortError::new(kind, "rds:DescribeDBInstances", "injected"));
                }
                let page = marker.unwrap_or(0);
                Ok((
                    vec![page * 10, page * 10 + 1],
                    (page < 2).then_some(page + 1),
                ))
            }
        })
        .await;
        (r, asked.into_inner().unwrap())
    }

    #[tokio::test]
    async fn a_page_that_fails_with_a_passing_fault_is_asked_again_from_its_marker() {
        // Page 1 throttled, then a 5xx, then answered.
        let (r, asked) = read(vec![
            None,
            Some(ErrorKind::Throttled),
            Some(ErrorKind::Retryable),
        ])
        .await;
        assert_eq!(
            r.unwrap(),
            vec![0, 1, 10, 11, 20, 21],
            "no page lost or repeated"
        );
        assert_eq!(
            asked,
            vec![None, Some(1), Some(1), Some(1), Some(2)],
            "the failed page, and only it, asked again"
        );
    }

    #[tokio::test]
    async fn a_page_is_asked_at_most_page_attempts_times_and_a_lasting_failure_ends_the_read() {
        let (r, asked) = read(vec![Some(ErrorKind::Throttled); PAGE_ATTEMPTS as usize]).await;
        assert_eq!(r.unwrap_err().kind, ErrorKind::Throttled);
        assert_eq!(asked, vec![None; PAGE_ATTEMPTS as usize]);

        for kind in [ErrorKind::Fatal, ErrorKind::NotFound, ErrorKind::Conflict] {
            let (r, asked) = read(vec![Some(kind)]).await;
            assert_eq!(r.unwrap_err().kind, kind);
            assert_eq!(asked, vec![None], "{kind:?} is not asked again");
        }
    }
}
