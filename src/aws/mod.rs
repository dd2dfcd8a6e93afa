//! The real world: the ports implemented with the AWS SDK for Rust.
//!
//! One file per service (RDS a folder: [`rds`] says what each of its files holds), and beside
//! them the plumbing every adapter shares:
//!
//! - [`call`]: the one counted, classified call every SDK request goes through, the pagination
//!   loop, and `boxed`, with the reason every port future is boxed;
//! - [`classify`]: every SDK error becomes a classified [`crate::ports::PortError`] there;
//! - [`limit`]: the [`limit::RateLimiter`] RDS calls wait for (before their shared call), beside a
//!   short-lived fleet-wide describe cache ([`rds`]);
//! - here: [`CallCounter`], every call counted per operation and every failure by kind (the run
//!   summary, and the OTel `aurora_migrator.aws.*` counters), the SDK configuration and
//!   [`AwsWorld`], every port backed by AWS.
//!
//! [`router`] is the one adapter not on the SDK (HTTP webhooks); its port futures are boxed the
//! same way.

pub mod call;
pub mod classify;
pub mod cloudwatch;
pub mod dynamodb;
pub mod ec2;
pub mod kms;
pub mod limit;
pub mod rds;
pub mod rds_proxy;
pub mod route53;
pub mod router;
pub mod sns;
pub mod sqs;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use jiff::Timestamp;

use crate::config::Secret;
use crate::ports::{Clock, ErrorKind, World};
use crate::telemetry::Instruments;

/// Where the agent's AWS resources are and how hard it may call AWS.
#[derive(Clone, Debug)]
pub struct AwsSettings {
    /// `MIGRATOR_QUEUE_URL`
    pub queue_url: String,
    /// `MIGRATOR_TOPIC_ARN`
    pub topic_arn: String,
    /// `MIGRATOR_TABLE`
    pub table: String,
    /// `AWS_ENDPOINT_URL` (emulators); `None`: AWS's own endpoints.
    pub endpoint_url: Option<String>,
    /// `AWS_REGION`; `None`: the SDK's default chain.
    pub region: Option<String>,
    /// Static credentials (emulators, tests); `None`: the SDK's default chain (ECS task role).
    pub static_credentials: Option<(String, String)>,
    pub tag_prefix: String,
    /// RDS API requests per second the agent allows itself (the account's ~12/s is shared).
    pub rds_requests_per_second: f64,
    /// Burst on top of the rate.
    pub rds_burst: f64,
    /// How long one fleet-wide DescribeDBInstances/DescribeDBClusters answer serves describes.
    pub describe_cache_ttl: Duration,
    /// Data access layer webhook (a secret: it may embed a token); `None`: the SNS cutover
    /// notification is the route.
    pub webhook_url: Option<Secret>,
    /// Smoke test endpoint for Verifying (a secret, like the webhook's); `None`: no smoke test.
    pub smoke_test_url: Option<Secret>,
    /// Key of the signature of every webhook and smoke-test request; required with either URL.
    pub webhook_secret: Option<Secret>,
    /// `MIGRATOR_COMPANION_CA_FILE`'s certificates (PEM), trusted for the PgBouncer companions.
    pub companion_ca: Option<Vec<u8>>,
    /// Timeout of one webhook or smoke-test request.
    pub http_timeout: Duration,
    /// Tries of one webhook or smoke-test call (with exponential backoff between them).
    pub http_attempts: usize,
    /// CloudWatch namespace of the agent's own metrics (heartbeats, call counts).
    pub heartbeat_namespace: String,
    /// SDK standard retry: attempts per call, and the first backoff.
    pub sdk_max_attempts: u32,
    pub sdk_initial_backoff: Duration,
    /// Longest single attempt of an SDK call (the SQS long poll of 20 s must fit).
    pub sdk_attempt_timeout: Duration,
    /// Where the call counts also go (OTel); off by default.
    pub instruments: Instruments,
    /// Database access (`MIGRATOR_DATABASE_ACCESS`): how to connect; `None`: never connect.
    pub database: Option<crate::database::DatabaseSettings>,
}

impl AwsSettings {
    pub fn new(queue_url: &str, topic_arn: &str, table: &str) -> Self {
        AwsSettings {
            queue_url: queue_url.to_string(),
            topic_arn: topic_arn.to_string(),
            table: table.to_string(),
            endpoint_url: None,
            region: None,
            static_credentials: None,
            tag_prefix: crate::core::tags::DEFAULT_PREFIX.to_string(),
            rds_requests_per_second: 5.0,
            rds_burst: 5.0,
            describe_cache_ttl: Duration::from_secs(5),
            webhook_url: None,
            smoke_test_url: None,
            webhook_secret: None,
            companion_ca: None,
            http_timeout: Duration::from_secs(10),
            http_attempts: 4,
            heartbeat_namespace: "AuroraMigrator".to_string(),
            sdk_max_attempts: 4,
            sdk_initial_backoff: Duration::from_secs(1),
            sdk_attempt_timeout: Duration::from_secs(30),
            instruments: Instruments::default(),
            database: None,
        }
    }
}

/// AWS calls per operation (`rds:DescribeDBInstances`), and their failures by kind. Every
/// adapter counts here, so this is also the one place that feeds the OTel counters.
#[derive(Clone, Debug, Default)]
pub struct CallCounter {
    inner: Arc<Mutex<Counts>>,
    instruments: Instruments,
}

#[derive(Debug, Default)]
struct Counts {
    calls: BTreeMap<String, u64>,
    errors: BTreeMap<(String, ErrorKind), u64>,
}

impl CallCounter {
    /// A counter that also records into `instruments`.
    pub fn new(instruments: Instruments) -> CallCounter {
        CallCounter {
            inner: Arc::default(),
            instruments,
        }
    }

    pub fn count(&self, operation: &str) {
        {
            let mut c = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            *c.calls.entry(operation.to_string()).or_default() += 1;
        }
        self.instruments.aws_call(operation);
    }

    pub fn error(&self, operation: &str, kind: ErrorKind) {
        {
            let mut c = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            *c.errors.entry((operation.to_string(), kind)).or_default() += 1;
        }
        self.instruments.aws_error(operation, kind);
    }

    /// Calls per operation so far.
    pub fn calls(&self) -> BTreeMap<String, u64> {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .calls
            .clone()
    }

    /// Failed calls (after the SDK's retries) per operation and kind.
    pub fn errors(&self) -> BTreeMap<(String, ErrorKind), u64> {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .errors
            .clone()
    }

    pub fn total(&self) -> u64 {
        self.calls().values().sum()
    }

    /// One line per operation, busiest first: for logs and the summary.
    pub fn render(&self) -> String {
        let mut rows: Vec<(String, u64)> = self.calls().into_iter().collect();
        rows.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        rows.iter()
            .map(|(op, n)| format!("{n:>7}  {op}\n"))
            .collect()
    }
}

/// Wall-clock time.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
    fn sleep(&self, d: Duration) -> impl Future<Output = ()> + Send {
        tokio::time::sleep(d)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(
        "MIGRATOR_TABLE (--table): the DynamoDB table `{0}` does not exist (create it with the CloudFormation template, or pass --create-table for local use)"
    )]
    NoTable(String),
    #[error("MIGRATOR_TABLE (--table): cannot read the DynamoDB table `{table}`: {error}")]
    Table {
        table: String,
        error: crate::ports::PortError,
    },
    #[error("cannot create the DynamoDB table `{table}`: {error}")]
    CreateTable {
        table: String,
        error: crate::ports::PortError,
    },
    #[error("invalid setting: {0}")]
    Setting(String),
}

/// The SDK configuration: lean rustls/ring HTTP client, standard retries, timeouts, and the
/// endpoint, Region and credentials from the settings where given.
pub async fn sdk_config(s: &AwsSettings) -> SdkConfig {
    use aws_smithy_http_client::{Builder, tls};
    let http = Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .http_client(http)
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(s.sdk_max_attempts.max(1))
                .with_initial_backoff(s.sdk_initial_backoff),
        )
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                .operation_attempt_timeout(s.sdk_attempt_timeout)
                .build(),
        );
    if let Some(ep) = &s.endpoint_url {
        loader = loader.endpoint_url(ep);
    }
    if let Some(r) = &s.region {
        loader = loader.region(Region::new(r.clone()));
    }
    if let Some((key, secret)) = &s.static_credentials {
        loader = loader.credentials_provider(aws_credential_types::Credentials::new(
            key, secret, None, None, "static",
        ));
    }
    loader.load().await
}

/// Every port, backed by AWS.
pub struct AwsWorld {
    pub rds: rds::AwsRds,
    pub network: ec2::AwsNetwork,
    pub metrics: cloudwatch::AwsMetrics,
    pub notifier: sns::AwsNotifier,
    pub queue: sqs::AwsQueue,
    pub store: dynamodb::AwsStore,
    pub router: router::AwsRouter,
    pub database: crate::database::AgentDatabase,
    pub clock: SystemClock,
    pub calls: CallCounter,
    /// The Region the clients call (the SDK configuration's: `AWS_REGION` or its default chain).
    pub region: Option<String>,
}

impl AwsWorld {
    /// Builds the clients and checks that the table exists (a clear error naming
    /// `MIGRATOR_TABLE` otherwise).
    pub async fn connect(s: &AwsSettings) -> Result<AwsWorld, ConnectError> {
        let config = sdk_config(s).await;
        let world = AwsWorld::from_config(s, &config)?;
        world.store.check_table().await?;
        Ok(world)
    }

    /// Builds the clients from a ready SDK configuration, without any call.
    pub fn from_config(s: &AwsSettings, config: &SdkConfig) -> Result<AwsWorld, ConnectError> {
        let calls = CallCounter::new(s.instruments.clone());
        let cw = aws_sdk_cloudwatch::Client::new(config);
        let metrics = cloudwatch::AwsMetrics::new(cw.clone(), calls.clone(), s);
        let rds = rds::AwsRds::new(
            aws_sdk_rds::Client::new(config),
            kms::AwsKeys::new(aws_sdk_kms::Client::new(config), calls.clone()),
            metrics.clone(),
            calls.clone(),
            s,
        );
        let rds_proxy = rds_proxy::RdsProxy::new(
            aws_sdk_rds::Client::new(config),
            calls.clone(),
            rds.limiter(),
            &s.tag_prefix,
        );
        Ok(AwsWorld {
            rds,
            network: ec2::AwsNetwork::new(aws_sdk_ec2::Client::new(config), calls.clone()),
            metrics,
            notifier: sns::AwsNotifier::new(
                aws_sdk_sns::Client::new(config),
                calls.clone(),
                &s.topic_arn,
            ),
            queue: sqs::AwsQueue::new(
                aws_sdk_sqs::Client::new(config),
                calls.clone(),
                &s.queue_url,
            ),
            store: dynamodb::AwsStore::new(
                aws_sdk_dynamodb::Client::new(config),
                calls.clone(),
                &s.table,
            ),
            router: router::AwsRouter {
                webhook: router::HttpRouter::new(s).map_err(ConnectError::Setting)?,
                route53: route53::Route53::new(aws_sdk_route53::Client::new(config), calls.clone()),
                rds_proxy,
                pgbouncer: crate::pgbouncer::router::PgBouncerRouter::new(
                    s.webhook_secret.clone(),
                    s.http_timeout.max(std::time::Duration::from_secs(30)),
                )
                .trusting(s.companion_ca.clone()),
            },
            database: match &s.database {
                Some(settings) => crate::database::AgentDatabase::On(Box::new(
                    crate::database::PgDatabase::new(settings.clone(), config, calls.clone()),
                )),
                None => crate::database::AgentDatabase::Off,
            },
            clock: SystemClock,
            calls,
            region: config.region().map(|r| r.to_string()),
        })
    }
}

/// Creates the migration table if it does not exist (local use: `run --create-table`).
pub async fn create_table(s: &AwsSettings) -> Result<(), ConnectError> {
    let config = sdk_config(s).await;
    let store = dynamodb::AwsStore::new(
        aws_sdk_dynamodb::Client::new(&config),
        CallCounter::default(),
        &s.table,
    );
    store.create_table().await
}

impl World for AwsWorld {
    type Rds = rds::AwsRds;
    type Network = ec2::AwsNetwork;
    type Metrics = cloudwatch::AwsMetrics;
    type Notifier = sns::AwsNotifier;
    type Queue = sqs::AwsQueue;
    type Store = dynamodb::AwsStore;
    type Router = router::AwsRouter;
    type Database = crate::database::AgentDatabase;
    type Clock = SystemClock;
    fn rds(&self) -> &Self::Rds {
        &self.rds
    }
    fn network(&self) -> &Self::Network {
        &self.network
    }
    fn metrics(&self) -> &Self::Metrics {
        &self.metrics
    }
    fn notifier(&self) -> &Self::Notifier {
        &self.notifier
    }
    fn queue(&self) -> &Self::Queue {
        &self.queue
    }
    fn store(&self) -> &Self::Store {
        &self.store
    }
    fn router(&self) -> &Self::Router {
        &self.router
    }
    fn database(&self) -> &Self::Database {
        &self.database
    }
    fn clock(&self) -> &Self::Clock {
        &self.clock
    }
}

/// Converts an SDK timestamp.
pub(crate) fn ts(dt: &aws_smithy_types::DateTime) -> Timestamp {
    Timestamp::new(dt.secs(), dt.subsec_nanos() as i32).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// Converts to an SDK timestamp.
pub(crate) fn sdk_ts(t: Timestamp) -> aws_smithy_types::DateTime {
    aws_smithy_types::DateTime::from_secs_and_nanos(t.as_second(), t.subsec_nanosecond() as u32)
}
