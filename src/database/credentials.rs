//! Who the agent is on a database: credentials from Secrets Manager, cached.
//!
//! Contract:
//! - [`Credentials::Secret`]: `GetSecretValue` on the secret; its `SecretString` is JSON with
//!   `username` and `password` (what RDS-managed master secrets hold; other keys are ignored).
//!   An answer is kept [`SECRET_TTL`] per secret id, so a cutover's many calls cost one request;
//!   [`CredentialCache::forget`] drops it when the server refuses the password (a rotation).
//! - [`Credentials::IamUser`]: IAM database authentication: a token signed with the task role's
//!   credentials (`rds-db:connect`, valid 15 minutes) is the password, made afresh for each
//!   connection (signing is local; the SDK caches the role's credentials).
//! - A password never appears in an error, a log line or a `Debug` output: it is held in a
//!   [`Sensitive`], and the JSON's parse errors are reworded (serde's would quote values).
//!
//! Where the secret comes from is a [`SecretSource`]: Secrets Manager in the agent, a fixed
//! map in tests.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::aws::CallCounter;
use crate::aws::call::call;
use crate::core::database::Credentials;
use crate::ports::{ErrorKind, PortError, PortResult};

/// How long a fetched secret is used before it is fetched again.
pub const SECRET_TTL: Duration = Duration::from_secs(5 * 60);

/// The operation name of a secret fetch, in errors and call counts.
pub const GET_SECRET: &str = "secretsmanager:GetSecretValue";

/// A secret text: shown as `***` by `Debug`, never `Display`ed; read with [`Sensitive::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Sensitive(String);

impl Sensitive {
    pub fn new(text: impl Into<String>) -> Sensitive {
        Sensitive(text.into())
    }

    /// The text itself, for the one place that needs it (the connection's password).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Sensitive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// A database login read from a secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Login {
    pub username: String,
    pub password: Sensitive,
}

/// Reads `{"username": …, "password": …}`. The error names what is wrong, never a value.
pub fn parse_login(secret: &Sensitive) -> Result<Login, String> {
    let value: serde_json::Value = serde_json::from_str(secret.expose()).map_err(|e| {
        format!(
            "the secret is not JSON ({:?} error at line {} column {})",
            e.classify(),
            e.line(),
            e.column()
        )
    })?;
    let field = |name: &str| match value.get(name) {
        Some(serde_json::Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(serde_json::Value::String(_)) => Err(format!("the secret's `{name}` is empty")),
        Some(_) => Err(format!("the secret's `{name}` is not a string")),
        None if value.is_object() => Err(format!("the secret has no `{name}`")),
        None => Err("the secret is not a JSON object".to_string()),
    };
    Ok(Login {
        username: field("username")?,
        password: Sensitive::new(field("password")?),
    })
}

/// Where secret texts come from.
pub trait SecretSource: Send + Sync {
    /// The secret's current text (`SecretString`); errors are classified `PortError`s.
    fn secret_string(&self, secret_id: &str) -> impl Future<Output = PortResult<Sensitive>> + Send;

    /// An IAM database authentication token for `user` at `host:port`, to be sent as the
    /// password. Sources without AWS credentials refuse.
    fn iam_token(
        &self,
        host: &str,
        port: u16,
        user: &str,
    ) -> impl Future<Output = PortResult<Sensitive>> + Send {
        let _ = (host, port);
        std::future::ready(Err(PortError::new(
            ErrorKind::Fatal,
            IAM_CONNECT,
            format!(
                "IAM database authentication (as {user}) needs AWS credentials this source does not have"
            ),
        )))
    }
}

/// The operation name of an IAM database authentication token.
const IAM_CONNECT: &str = "rds-db:connect";

/// Secrets Manager, through the counted, classified call every AWS request takes
/// (`ResourceNotFoundException` → NotFound, `AccessDeniedException` → Fatal, throttling →
/// Throttled: `aws::classify`).
pub struct SecretsManagerSource {
    client: aws_sdk_secretsmanager::Client,
    calls: CallCounter,
    /// The SDK configuration whose credentials and Region sign IAM authentication tokens.
    sdk: aws_config::SdkConfig,
}

impl SecretsManagerSource {
    pub fn new(sdk: &aws_config::SdkConfig, calls: CallCounter) -> Self {
        SecretsManagerSource {
            client: aws_sdk_secretsmanager::Client::new(sdk),
            calls,
            sdk: sdk.clone(),
        }
    }
}

impl SecretSource for SecretsManagerSource {
    fn iam_token(
        &self,
        host: &str,
        port: u16,
        user: &str,
    ) -> impl Future<Output = PortResult<Sensitive>> + Send {
        let config = aws_sdk_rds::auth_token::Config::builder()
            .hostname(host)
            .port(u64::from(port))
            .username(user)
            .build();
        async move {
            let fatal = |e: String| PortError::new(ErrorKind::Fatal, IAM_CONNECT, e);
            let generator = aws_sdk_rds::auth_token::AuthTokenGenerator::new(
                config.map_err(|e| fatal(e.to_string()))?,
            );
            // Signing fails only without credentials or a clock: nothing a retry mends.
            let token = generator
                .auth_token(&self.sdk)
                .await
                .map_err(|e| fatal(format!("could not sign an IAM authentication token: {e}")))?;
            Ok(Sensitive::new(token.as_str()))
        }
    }

    fn secret_string(&self, secret_id: &str) -> impl Future<Output = PortResult<Sensitive>> + Send {
        let request = self.client.get_secret_value().secret_id(secret_id);
        let secret_id = secret_id.to_string();
        async move {
            let answer = call(&self.calls, GET_SECRET, request.send()).await?;
            match answer.secret_string() {
                Some(text) => Ok(Sensitive::new(text)),
                None => Err(PortError::new(
                    ErrorKind::Fatal,
                    GET_SECRET,
                    format!("secret {secret_id} has no SecretString (a binary secret?)"),
                )),
            }
        }
    }
}

/// Logins per secret id, each kept [`SECRET_TTL`] (or what [`CredentialCache::with_ttl`] says).
pub struct CredentialCache<S> {
    source: S,
    ttl: Duration,
    entries: Mutex<HashMap<String, (Instant, Arc<Login>)>>,
}

impl<S: SecretSource> CredentialCache<S> {
    pub fn new(source: S) -> Self {
        CredentialCache::with_ttl(source, SECRET_TTL)
    }

    pub fn with_ttl(source: S, ttl: Duration) -> Self {
        CredentialCache {
            source,
            ttl,
            entries: Mutex::default(),
        }
    }

    /// The login for `credentials` at `host:port`: for a secret, a cached one while fresh, else
    /// a fetched one; for IAM authentication, a token made now.
    pub async fn login(
        &self,
        credentials: &Credentials,
        host: &str,
        port: u16,
    ) -> PortResult<Arc<Login>> {
        let secret_id = match credentials {
            Credentials::Secret { secret_id } => secret_id,
            Credentials::IamUser { user } => {
                let token = self.source.iam_token(host, port, user).await?;
                return Ok(Arc::new(Login {
                    username: user.clone(),
                    password: token,
                }));
            }
        };
        if let Some((at, login)) = self.lock().get(secret_id)
            && at.elapsed() < self.ttl
        {
            return Ok(login.clone());
        }
        let text = self.source.secret_string(secret_id).await?;
        let login = parse_login(&text).map_err(|e| {
            PortError::new(
                ErrorKind::Fatal,
                GET_SECRET,
                format!("secret {secret_id}: {e}"),
            )
        })?;
        let login = Arc::new(login);
        self.lock()
            .insert(secret_id.clone(), (Instant::now(), login.clone()));
        Ok(login)
    }

    /// Drops the cached login of `credentials` (the server refused it: the secret may have
    /// been rotated).
    pub fn forget(&self, credentials: &Credentials) {
        if let Credentials::Secret { secret_id } = credentials {
            self.lock().remove(secret_id);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, Arc<Login>)>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn parse(text: &str) -> Result<Login, String> {
        parse_login(&Sensitive::new(text))
    }

    #[test]
    fn an_rds_master_secret_parses_and_other_keys_are_ignored() {
        let login = parse(
            r#"{"username":"postgres","password":"s3cr\"et","engine":"postgres","host":"db","port":5432}"#,
        )
        .unwrap();
        assert_eq!(login.username, "postgres");
        assert_eq!(login.password.expose(), "s3cr\"et");
    }

    #[test]
    fn a_bad_secret_is_described_without_its_values() {
        for (text, expected) in [
            (r#"{"username":"u"}"#, "the secret has no `password`"),
            (r#"{"password":"hunter2"}"#, "the secret has no `username`"),
            (
                r#"{"username":"u","password":12345}"#,
                "the secret's `password` is not a string",
            ),
            (
                r#"{"username":"u","password":""}"#,
                "the secret's `password` is empty",
            ),
            (r#"["hunter2"]"#, "the secret is not a JSON object"),
            (
                "hunter2",
                "the secret is not JSON (Syntax error at line 1 column 1)",
            ),
            (
                r#"{"username":"u","password":"hunter2""#,
                "the secret is not JSON (Eof error at line 1 column 36)",
            ),
        ] {
            let e = parse(text).unwrap_err();
            assert_eq!(e, expected, "{text}");
            assert!(!e.contains("hunter2") && !e.contains("12345"));
        }
    }

    #[test]
    fn debug_output_hides_the_password() {
        let login = parse(r#"{"username":"agent","password":"hunter2"}"#).unwrap();
        let shown = format!("{login:?}");
        assert!(shown.contains("agent") && shown.contains("***"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    struct Counting {
        fetches: AtomicU32,
        text: &'static str,
    }

    impl SecretSource for Counting {
        fn secret_string(&self, _: &str) -> impl Future<Output = PortResult<Sensitive>> + Send {
            self.fetches.fetch_add(1, Ordering::SeqCst);
            std::future::ready(Ok(Sensitive::new(self.text)))
        }
    }

    #[tokio::test]
    async fn secrets_are_cached_until_forgotten_and_iam_needs_aws_credentials() {
        let cache = CredentialCache::new(Counting {
            fetches: AtomicU32::new(0),
            text: r#"{"username":"agent","password":"pw"}"#,
        });
        let secret = Credentials::Secret {
            secret_id: "arn:aws:secretsmanager:eu-west-1:1:secret:db".into(),
        };
        cache.login(&secret, "db.example", 5432).await.unwrap();
        cache.login(&secret, "db.example", 5432).await.unwrap();
        assert_eq!(cache.source.fetches.load(Ordering::SeqCst), 1);
        cache.forget(&secret);
        assert_eq!(
            cache
                .login(&secret, "db.example", 5432)
                .await
                .unwrap()
                .username,
            "agent"
        );
        assert_eq!(cache.source.fetches.load(Ordering::SeqCst), 2);

        // A source without AWS credentials cannot sign an IAM token.
        let e = cache
            .login(
                &Credentials::IamUser {
                    user: "migrator".into(),
                },
                "db.example",
                5432,
            )
            .await
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Fatal);
        assert!(e.message.contains("needs AWS credentials"), "{e}");
    }

    #[tokio::test]
    async fn iam_authentication_signs_a_connect_token_for_the_host_port_and_user() {
        let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("eu-west-1"))
            .credentials_provider(aws_credential_types::Credentials::new(
                "AKIDEXAMPLE",
                "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
                None,
                None,
                "test",
            ))
            .load()
            .await;
        let cache = CredentialCache::new(SecretsManagerSource::new(&sdk, CallCounter::default()));
        let login = cache
            .login(
                &Credentials::IamUser {
                    user: "migrator".into(),
                },
                "orders.abc.eu-west-1.rds.amazonaws.com",
                5432,
            )
            .await
            .unwrap();
        assert_eq!(login.username, "migrator");
        let token = login.password.expose();
        // The form RDS expects as the password: host:port/?Action=connect&DBUser=… signed for
        // rds-db in the Region, valid 15 minutes, the signature in the query.
        assert!(
            token.starts_with(
                "orders.abc.eu-west-1.rds.amazonaws.com:5432/?Action=connect&DBUser=migrator&"
            ),
            "{token}"
        );
        for part in [
            "X-Amz-Algorithm=AWS4-HMAC-SHA256",
            "%2Feu-west-1%2Frds-db%2Faws4_request",
            "X-Amz-Expires=900",
            "X-Amz-Signature=",
        ] {
            assert!(token.contains(part), "{part} missing in {token}");
        }
        assert!(
            !format!("{login:?}").contains("X-Amz-Signature"),
            "the token is redacted"
        );
    }

    #[tokio::test]
    async fn an_expired_secret_is_fetched_again() {
        let cache = CredentialCache::with_ttl(
            Counting {
                fetches: AtomicU32::new(0),
                text: r#"{"username":"agent","password":"pw"}"#,
            },
            Duration::ZERO,
        );
        let secret = Credentials::Secret {
            secret_id: "db".into(),
        };
        cache.login(&secret, "db.example", 5432).await.unwrap();
        cache.login(&secret, "db.example", 5432).await.unwrap();
        assert_eq!(cache.source.fetches.load(Ordering::SeqCst), 2);
    }
}
