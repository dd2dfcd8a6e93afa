//! Every PostgreSQL failure becomes a [`PortError`] here, and nowhere else (Secrets Manager's
//! are classified by `aws::classify`, like every AWS call's).
//!
//! | failure | kind |
//! |---|---|
//! | connection refused, reset, closed, timed out; any other I/O error | Retryable |
//! | SQLSTATE class 08 (connection), 53 (resources: too many connections), 57P0x (shutting down, starting up), 57014 (statement timeout), class 40 (serialization, deadlock), 55P03 (lock not available) | Retryable |
//! | SQLSTATE class 28 (authentication), 42501 (insufficient privilege) | Fatal |
//! | the server's certificate refused, a server without TLS, an invalid host name | Fatal |
//! | any other SQLSTATE (a statement the server refuses) | Fatal |
//!
//! Messages are the server's and the client library's words, which carry user and host names
//! but never a password (the client sends it only inside the authentication exchange).

use std::error::Error as StdError;
use std::io;

use crate::ports::{ErrorKind, PortError};

/// SQLSTATEs of a refused login: `invalid_password`, `invalid_authorization_specification`
/// (no such role, no pg_hba entry). After one of these the secret is fetched again once.
pub fn is_auth_failure(e: &tokio_postgres::Error) -> bool {
    e.code()
        .is_some_and(|c| matches!(c.code(), "28P01" | "28000"))
}

/// The kind of a failure with a SQLSTATE.
pub fn kind_of_sqlstate(code: &str) -> ErrorKind {
    let retryable_class = ["08", "53", "40"];
    let retryable = ["57P01", "57P02", "57P03", "57P05", "57014", "55P03"];
    if retryable_class.iter().any(|c| code.starts_with(c)) || retryable.contains(&code) {
        ErrorKind::Retryable
    } else {
        // Class 28 and 42501 are the ones this exists for; the rest (a syntax error, an
        // undefined function on an old server) will not pass by trying again either.
        ErrorKind::Fatal
    }
}

/// The kind of a failure without a SQLSTATE, from its causes: a TLS verdict is Fatal (the
/// bundle or the server's certificate must change), any other I/O error Retryable; `None`
/// when no cause says.
pub fn kind_of_cause(err: &(dyn StdError + 'static)) -> Option<ErrorKind> {
    let mut io_seen = false;
    let mut cause: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = cause {
        if e.downcast_ref::<rustls::Error>().is_some()
            || e.downcast_ref::<rustls::pki_types::InvalidDnsNameError>()
                .is_some()
        {
            return Some(ErrorKind::Fatal);
        }
        if let Some(io) = e.downcast_ref::<io::Error>() {
            // tokio-rustls wraps the handshake's verdict in an io::Error, whose `source()`
            // skips the wrapped error itself.
            if io
                .get_ref()
                .is_some_and(|inner| inner.is::<rustls::Error>())
            {
                return Some(ErrorKind::Fatal);
            }
            io_seen = true;
        }
        cause = e.source();
    }
    io_seen.then_some(ErrorKind::Retryable)
}

/// Classifies a tokio-postgres failure of `operation` on `target` (`host:port/database`).
pub fn classify(operation: &str, target: &str, e: &tokio_postgres::Error) -> PortError {
    let kind = if let Some(code) = e.code() {
        kind_of_sqlstate(code.code())
    } else if let Some(kind) = kind_of_cause(e) {
        kind
    } else if e.is_closed() {
        ErrorKind::Retryable
    } else if e.to_string().contains("TLS") {
        // "server does not support TLS": no plaintext fallback, and RDS always has TLS.
        ErrorKind::Fatal
    } else {
        ErrorKind::Retryable
    };
    PortError::new(kind, operation, format!("{target}: {}", describe(e)))
}

/// No connection (TCP, TLS and authentication) within the connect timeout.
pub fn connect_timed_out(operation: &str, target: &str, after: std::time::Duration) -> PortError {
    PortError::new(
        ErrorKind::Retryable,
        operation,
        format!("{target}: no connection within {}s", after.as_secs_f64()),
    )
}

/// A statement that did not answer within the client's own bound (the server's
/// `statement_timeout` would have answered first unless the network is gone).
pub fn statement_timed_out(operation: &str, target: &str, after: std::time::Duration) -> PortError {
    PortError::new(
        ErrorKind::Retryable,
        operation,
        format!("{target}: no answer within {}s", after.as_secs_f64()),
    )
}

/// The error and its causes, each once: tokio-postgres's `Display` already shows the first
/// cause (the server's message, the I/O error).
fn describe(e: &tokio_postgres::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        if let Some(inner) = c.downcast_ref::<io::Error>().and_then(|io| io.get_ref()) {
            let inner = inner.to_string();
            if !text.contains(&inner) {
                text.push_str(": ");
                text.push_str(&inner);
            }
        }
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::classify::kind_of;

    #[test]
    fn sqlstates_map_to_kinds() {
        for (code, kind) in [
            ("28P01", ErrorKind::Fatal),
            ("28000", ErrorKind::Fatal),
            ("42501", ErrorKind::Fatal),
            ("42601", ErrorKind::Fatal),
            ("42883", ErrorKind::Fatal),
            ("08006", ErrorKind::Retryable),
            ("08001", ErrorKind::Retryable),
            ("53300", ErrorKind::Retryable),
            ("57P01", ErrorKind::Retryable),
            ("57P03", ErrorKind::Retryable),
            ("57014", ErrorKind::Retryable),
            ("40001", ErrorKind::Retryable),
            ("40P01", ErrorKind::Retryable),
        ] {
            assert_eq!(kind_of_sqlstate(code), kind, "{code}");
        }
    }

    #[test]
    fn io_failures_are_retryable_and_tls_verdicts_fatal() {
        for k in [
            io::ErrorKind::ConnectionRefused,
            io::ErrorKind::ConnectionReset,
            io::ErrorKind::TimedOut,
            io::ErrorKind::UnexpectedEof,
        ] {
            let e = io::Error::from(k);
            assert_eq!(kind_of_cause(&e), Some(ErrorKind::Retryable), "{k:?}");
        }
        let refused = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        assert_eq!(kind_of_cause(&refused), Some(ErrorKind::Fatal));
        let name = rustls::pki_types::ServerName::try_from("not a host name").unwrap_err();
        assert_eq!(kind_of_cause(&name), Some(ErrorKind::Fatal));
        assert_eq!(kind_of_cause(&std::fmt::Error), None);
    }

    #[test]
    fn secrets_manager_codes_map_to_kinds() {
        // GetSecretValue's errors go through the agent's one AWS classification.
        for (code, status, kind) in [
            ("ResourceNotFoundException", 400, ErrorKind::NotFound),
            ("AccessDeniedException", 400, ErrorKind::Fatal),
            ("DecryptionFailure", 400, ErrorKind::Fatal),
            ("ThrottlingException", 400, ErrorKind::Throttled),
            ("InternalServiceError", 500, ErrorKind::Retryable),
        ] {
            assert_eq!(kind_of(Some(code), Some(status)), kind, "{code}");
        }
    }
}
