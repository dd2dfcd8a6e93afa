//! TLS for every PostgreSQL connection the agent opens: rustls on the ring provider, verifying
//! the server's certificate against the configured RDS CA bundle and its host name
//! (libpq's `sslmode=verify-full`).
//!
//! Contract:
//! - Only the certificates of the bundle are trusted (no system roots): a server certificate
//!   must chain to one of them and name the host the agent connected to (a DNS name, or an IP
//!   address in the certificate's IP SANs).
//! - There is no plaintext path: [`crate::database`] sets `sslmode=require`, so a server that
//!   refuses TLS is a failed connection, and any verification failure fails the handshake.
//! - No channel binding (`tls-server-end-point`): SCRAM then runs without it, which
//!   tokio-postgres allows by default. The verified certificate is what authenticates the
//!   server; binding would also need the certificate's signature hash, parsed from its DER.
//!
//! tokio-postgres's two TLS traits are implemented here for any stream, so this works for its
//! `Socket` (TCP) as for a `TcpStream`.

use std::fmt;
use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, InvalidDnsNameError, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

/// The verifying TLS client configuration, cheap to clone (one per agent).
#[derive(Clone)]
pub struct RdsTls {
    config: Arc<ClientConfig>,
    roots: usize,
}

impl fmt::Debug for RdsTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RdsTls {{ trusted certificates: {} }}", self.roots)
    }
}

impl RdsTls {
    /// Trusts the certificates of a PEM bundle file (the RDS CA bundle). The error says why the
    /// file cannot be used; the caller names the setting.
    pub fn from_bundle_file(path: &Path) -> Result<RdsTls, String> {
        let pem =
            std::fs::read(path).map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
        RdsTls::from_pem(&pem).map_err(|e| format!("`{}` {e}", path.display()))
    }

    /// Trusts the certificates in `pem` (other PEM sections are ignored); at least one is needed.
    pub fn from_pem(pem: &[u8]) -> Result<RdsTls, String> {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| format!("is not a PEM certificate bundle: {e}"))?;
            roots
                .add(cert)
                .map_err(|e| format!("holds a certificate that cannot be trusted: {e}"))?;
        }
        if roots.is_empty() {
            return Err("holds no certificate".to_string());
        }
        let count = roots.len();
        // ring, explicitly: the process-wide default provider is not relied on (and aws-lc is
        // not built at all).
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("cannot be used with the TLS provider: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(RdsTls {
            config: Arc::new(config),
            roots: count,
        })
    }
}

impl<S> MakeTlsConnect<S> for RdsTls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RdsTlsStream<S>;
    type TlsConnect = RdsTlsConnect;
    type Error = InvalidDnsNameError;

    /// `host` is the host the connection was asked for: the name the certificate must carry.
    fn make_tls_connect(&mut self, host: &str) -> Result<RdsTlsConnect, InvalidDnsNameError> {
        Ok(RdsTlsConnect {
            connector: tokio_rustls::TlsConnector::from(self.config.clone()),
            name: ServerName::try_from(host.to_string())?,
        })
    }
}

/// One connection's handshake, for one server name.
pub struct RdsTlsConnect {
    connector: tokio_rustls::TlsConnector,
    name: ServerName<'static>,
}

impl<S> TlsConnect<S> for RdsTlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RdsTlsStream<S>;
    /// tokio-rustls reports a refused certificate as an `io::Error` wrapping the
    /// `rustls::Error` (what `database::errors` looks for).
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RdsTlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let tls = self.connector.connect(self.name, stream).await?;
            Ok(RdsTlsStream(tls))
        })
    }
}

/// An established TLS stream.
pub struct RdsTlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for RdsTlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RdsTlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RdsTlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bundle_without_a_certificate_is_refused() {
        assert_eq!(RdsTls::from_pem(b"").unwrap_err(), "holds no certificate");
        let key_only =
            b"-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----\n";
        assert_eq!(
            RdsTls::from_pem(key_only).unwrap_err(),
            "holds no certificate"
        );
        let missing = RdsTls::from_bundle_file(Path::new("/nonexistent/rds-ca.pem")).unwrap_err();
        assert!(
            missing.contains("cannot read `/nonexistent/rds-ca.pem`"),
            "{missing}"
        );
    }
}
