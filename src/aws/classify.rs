//! Every SDK error becomes a [`PortError`] here, and nowhere else.
//!
//! The SDK's standard retry mode has already retried transient failures (throttling, 5xx,
//! timeouts) by the time an error reaches this point, so the classification only tells the
//! driver what kind of failure is left: retry later, back off harder, not there, in the way, or
//! hopeless.

use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_runtime_api::http::Response;
use aws_smithy_types::error::display::DisplayErrorContext;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

use crate::ports::{ErrorKind, PortError, PortResult};

/// Error codes that mean "slow down", across the services the agent calls.
const THROTTLING: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottledException",
    "RequestThrottled",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "ProvisionedThroughputExceededException",
    "RequestLimitExceededException",
    "SlowDown",
    "PriorRequestNotComplete",
    "BandwidthLimitExceeded",
    "EC2ThrottledException",
    "TransactionInProgressException",
];

/// Error codes of transient server-side failures.
const TRANSIENT: &[&str] = &[
    "InternalFailure",
    "InternalError",
    "InternalServerError",
    "InternalServerErrorException",
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "RequestTimeout",
    "RequestTimeoutException",
    "Unavailable",
    "KMS.KMSInternalException",
];

/// Codes of "the thing is not there".
const NOT_FOUND: &[&str] = &[
    "ResourceNotFoundException",
    "QueueDoesNotExist",
    "AWS.SimpleQueueService.NonExistentQueue",
    "NotFound",
    "NotFoundException",
    "ResourceNotFound",
    "NoSuchHostedZone",
    "NoSuchChange",
];

/// Endings of "not found" codes (`DBInstanceNotFound`, `DBClusterNotFoundFault`,
/// `InvalidGroup.NotFound`, …).
const NOT_FOUND_SUFFIXES: &[&str] = &[
    "NotFound",
    "NotFoundFault",
    ".NotFound",
    "NotFoundException",
];

/// Beginnings of RDS's "in a state that refuses the call" codes.
const CONFLICT_PREFIXES: &[&str] = &[
    "InvalidDBInstanceState",
    "InvalidDBClusterState",
    "InvalidDBSnapshotState",
    "InvalidDBParameterGroupState",
    "InvalidDBSubnetGroupState",
];

/// Codes of "already exists" or "in a state that refuses the call".
const CONFLICT: &[&str] = &[
    "InvalidGroup.Duplicate",
    "DependencyViolation",
    "ConditionalCheckFailedException",
    "TransactionConflictException",
    "ResourceInUseException",
    "InvalidPermission.Duplicate",
    "IncorrectState",
    "OptInRequired",
];

/// Classifies an error code (and HTTP status, if any) into the driver's kinds.
pub fn kind_of(code: Option<&str>, status: Option<u16>) -> ErrorKind {
    if let Some(code) = code {
        if THROTTLING.contains(&code) {
            return ErrorKind::Throttled;
        }
        if TRANSIENT.contains(&code) {
            return ErrorKind::Retryable;
        }
        if NOT_FOUND.contains(&code) || NOT_FOUND_SUFFIXES.iter().any(|s| code.ends_with(s)) {
            return ErrorKind::NotFound;
        }
        if CONFLICT.contains(&code)
            || code.contains("AlreadyExists")
            || CONFLICT_PREFIXES.iter().any(|p| code.starts_with(p))
            || code.ends_with(".InUse")
        {
            return ErrorKind::Conflict;
        }
    }
    match status {
        Some(429) => ErrorKind::Throttled,
        Some(s) if s >= 500 => ErrorKind::Retryable,
        Some(404) if code.is_none() => ErrorKind::NotFound,
        _ => ErrorKind::Fatal,
    }
}

/// The error code of an SDK error, when the service sent one.
pub fn code<E: ProvideErrorMetadata>(err: &SdkError<E, Response>) -> Option<&str> {
    match err {
        SdkError::ServiceError(ctx) => ctx.err().code(),
        _ => None,
    }
}

/// "Not found" is an answer, not a failure: a describe by name finds nothing (`None`), a
/// delete finds the thing already gone. Any other error stays one.
pub fn found<T>(answer: PortResult<T>) -> PortResult<Option<T>> {
    match answer {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// A service's error type, as the SDK declares it (what [`classify`] reads).
pub trait ServiceError: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static {}

impl<E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static> ServiceError for E {}

/// Turns any SDK error into a classified [`PortError`] for `operation` (e.g.
/// `rds:CreateDBCluster`).
pub fn classify<E: ServiceError>(operation: &str, err: &SdkError<E, Response>) -> PortError {
    let kind = match err {
        SdkError::ConstructionFailure(_) => ErrorKind::Fatal,
        // Connection refused, reset, DNS, a timed-out attempt: all worth another try later.
        SdkError::TimeoutError(_) => ErrorKind::Retryable,
        SdkError::DispatchFailure(d) if d.is_user() => ErrorKind::Fatal,
        SdkError::DispatchFailure(_) => ErrorKind::Retryable,
        // A response that could not be read (truncated, or an HTML error page).
        SdkError::ResponseError(r) => {
            kind_of(None, Some(r.raw().status().as_u16())).max_retryable()
        }
        SdkError::ServiceError(ctx) => kind_of(ctx.err().code(), Some(ctx.raw().status().as_u16())),
        _ => ErrorKind::Retryable,
    };
    let message = match err {
        SdkError::ServiceError(ctx) => match (ctx.err().code(), ctx.err().message()) {
            (Some(c), Some(m)) => format!("{c}: {m}"),
            (Some(c), None) => c.to_string(),
            _ => DisplayErrorContext(err).to_string(),
        },
        _ => DisplayErrorContext(err).to_string(),
    };
    PortError::new(kind, operation, message)
}

trait MaxRetryable {
    fn max_retryable(self) -> ErrorKind;
}

impl MaxRetryable for ErrorKind {
    /// An unreadable answer is never "not found" or "conflict": at worst a transient glitch.
    fn max_retryable(self) -> ErrorKind {
        match self {
            ErrorKind::Throttled => ErrorKind::Throttled,
            _ => ErrorKind::Retryable,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_to_kinds() {
        for (code, status, kind) in [
            ("Throttling", 400, ErrorKind::Throttled),
            ("RequestLimitExceeded", 503, ErrorKind::Throttled),
            (
                "ProvisionedThroughputExceededException",
                400,
                ErrorKind::Throttled,
            ),
            ("DBInstanceNotFound", 404, ErrorKind::NotFound),
            ("DBClusterNotFoundFault", 404, ErrorKind::NotFound),
            ("InvalidGroup.NotFound", 400, ErrorKind::NotFound),
            ("QueueDoesNotExist", 400, ErrorKind::NotFound),
            ("DBClusterAlreadyExistsFault", 400, ErrorKind::Conflict),
            ("InvalidDBClusterStateFault", 400, ErrorKind::Conflict),
            ("InvalidDBInstanceState", 400, ErrorKind::Conflict),
            ("ConditionalCheckFailedException", 400, ErrorKind::Conflict),
            ("InternalFailure", 500, ErrorKind::Retryable),
            ("SomethingElse", 502, ErrorKind::Retryable),
            ("AccessDenied", 403, ErrorKind::Fatal),
            ("InvalidParameterValue", 400, ErrorKind::Fatal),
        ] {
            assert_eq!(kind_of(Some(code), Some(status)), kind, "{code} {status}");
        }
        assert_eq!(kind_of(None, Some(429)), ErrorKind::Throttled);
        assert_eq!(kind_of(None, None), ErrorKind::Fatal);
    }
}
