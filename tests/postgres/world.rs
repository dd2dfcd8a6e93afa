//! A `World` whose RDS is a real PostgreSQL primary (the RDS instance) and a real streaming
//! standby (the Aurora replica), and whose other ports are small in-memory fakes. RDS is in
//! `rds.rs`, CloudWatch in `metrics.rs`, the fakes in `fakes.rs`; this file holds what they
//! share and the world itself.
//!
//! | RDS / AWS                         | here                                                   |
//! |-----------------------------------|--------------------------------------------------------|
//! | DescribeDBInstances (source)      | the primary: `SHOW server_version`, modelled groups    |
//! | CreateDBCluster (replica)         | a physical slot + `pg_basebackup -R -S <slot>`         |
//! | CreateDBInstance (writer)         | `pg_ctl start` of the standby                          |
//! | ModifyDBInstance groups           | pg_hba.conf rewritten + `pg_reload_conf()`             |
//! | ModifyDBCluster groups (Aurora)   | the same on the standby (open sessions survive)        |
//! | RebootDBInstance (source)         | `pg_ctl restart -m fast` + a "restarted" event         |
//! | RebootDBInstance (Aurora writer)  | the same on the standby; its events kept apart         |
//! | PromoteReadReplicaDBCluster       | `pg_ctl promote`                                       |
//! | DeleteDBCluster (rollback)        | stop the standby, drop its slot on the primary         |
//! | CreateDBSnapshot (final)          | `pg_dump --data-only` of the writes table              |
//! | DeleteDBInstance (source)         | `pg_ctl stop` of the primary                           |
//! | CloudWatch                        | sampled from the servers at the time of the read       |
//!
//! Metrics simplification: CloudWatch returns minute periods; this world samples the servers
//! when the agent reads and returns one datapoint with `start` = the sampling time and
//! `period_s` = 1, so "a period that starts after the restart" means "a sample taken after the
//! restart event was recorded" (the event is recorded once `pg_ctl restart` has returned).
//! `WriteIOPS` of the Aurora writer is the exception: it is read from history (see
//! `PgMetrics::target_writes`), one datapoint per `period_s` from the query's start.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use aurora_migrator::core::action::ReplicaClusterSpec;
use aurora_migrator::core::observation::{InstanceEvent, SecurityGroup};
use aurora_migrator::database::{AgentDatabase, DatabaseSettings, PgDatabase, RdsTls};
use aurora_migrator::ports::{ErrorKind, PortError, PortResult, World};
use jiff::Timestamp;

use super::access::{FixedSecrets, make_certs};
use super::server::{Bins, HbaMode, PgServer, RunAs, TempRoot, connect};

pub use super::fakes::{MemNetwork, MemNotifier, MemQueue, MemRouter, MemStore, RealClock};
pub use super::metrics::PgMetrics;
pub use super::rds::PgRds;

pub const SOURCE_ID: &str = "orders-pg";
pub const SOURCE_ARN: &str = "arn:aws:rds:us-east-1:123456789012:db:orders-pg";
pub const RESOURCE_ID: &str = "db-ORDERSPG0123456789";
pub const APP_GROUP: &str = "sg-app";
pub(super) const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// The agent's way in with database access: its security group and the database role its
/// secret logs in as.
#[derive(Clone, Debug)]
pub struct AgentLogin {
    pub group: String,
    pub role: String,
}

/// The database role, password and secret of the agent in a world with database access.
pub const AGENT_ROLE: &str = "agent";
pub const AGENT_PASSWORD: &str = "agent-Pw-3c1e9";
pub const AGENT_SECRET: &str = "orders-pg-agent";
pub const AGENT_GROUP: &str = "sg-agent";
/// The application's role (not a superuser, so the agent may end its sessions).
pub const APP_ROLE: &str = "app";

/// What the agent did, in order, for the assertions.
#[derive(Clone, Debug, PartialEq)]
pub struct Mutation {
    pub at: Timestamp,
    pub what: String,
}

#[derive(Clone, Debug)]
pub struct TargetState {
    pub spec: ReplicaClusterSpec,
    pub status: String,
    pub writer: Option<(String, String)>,
    pub tags: BTreeMap<String, String>,
    pub groups: Vec<String>,
    pub promoted: bool,
    pub slot: String,
}

#[derive(Debug)]
pub struct RdsState {
    pub source_status: String,
    pub source_deleted: bool,
    pub source_groups: Vec<String>,
    pub source_tags: BTreeMap<String, String>,
    pub engine_version: String,
    /// Events of the source instance.
    pub events: Vec<InstanceEvent>,
    /// Events of the Aurora writer (the standby), kept apart from the source's.
    pub writer_events: Vec<InstanceEvent>,
    pub target: Option<TargetState>,
    pub parameter_groups: BTreeSet<String>,
    pub snapshots: BTreeMap<String, (String, PathBuf, Timestamp)>,
    pub log: Vec<Mutation>,
    /// Roles that still reach the quarantined source over TCP (the negative test's leak).
    pub leaks: Vec<String>,
}

/// Everything the PostgreSQL-backed adapters share. Fields are public for the assertions.
pub struct Shared {
    pub bins: Bins,
    pub run_as: RunAs,
    pub primary: PgServer,
    pub standby: Mutex<Option<Arc<PgServer>>>,
    pub state: Mutex<RdsState>,
    /// The previous WAL position sample of the source, for TransactionLogsGeneration.
    pub(super) wal_sample: Mutex<Option<(Instant, f64)>>,
    /// A broken world for the negative test: RebootDBInstance of the Aurora writer answers
    /// success but does nothing (no restart, no event).
    pub skip_writer_reboot: std::sync::atomic::AtomicBool,
    /// The security groups as the fake EC2 holds them (shared with `MemNetwork`): the
    /// quarantine lets in the roles of the groups it admits.
    pub network_groups: Arc<Mutex<BTreeMap<String, SecurityGroup>>>,
    /// With database access: the agent's group and its database role.
    pub agent: Option<AgentLogin>,
    // Declared last: dropped after the servers, so their directories still exist when killed.
    pub root: TempRoot,
}

impl Shared {
    pub fn log(&self, what: impl Into<String>) {
        self.state.lock().unwrap().log.push(Mutation {
            at: Timestamp::now(),
            what: what.into(),
        });
    }

    pub fn standby(&self) -> Option<Arc<PgServer>> {
        self.standby.lock().unwrap().clone()
    }

    pub fn mutations(&self, prefix: &str) -> Vec<Mutation> {
        self.state
            .lock()
            .unwrap()
            .log
            .iter()
            .filter(|m| m.what.starts_with(prefix))
            .cloned()
            .collect()
    }

    /// The Aurora writer's instance name, once it was asked for.
    pub fn writer_name(&self) -> Option<String> {
        let s = self.state.lock().unwrap();
        s.target.as_ref()?.writer.as_ref().map(|(id, _)| id.clone())
    }

    /// Rewrites a server's pg_hba.conf for its security groups and reloads it: new TCP
    /// connections follow the file, sessions already open are not touched (as with a security
    /// group change).
    pub(super) async fn apply_groups(
        &self,
        server: &PgServer,
        mode: &HbaMode,
        op: &str,
    ) -> PortResult<()> {
        server.write_hba(mode);
        // While the server restarts, the file is read at start anyway.
        if server.pid().is_some()
            && let Ok(client) = connect(&server.local()).await
        {
            client
                .execute("SELECT pg_reload_conf()", &[])
                .await
                .map_err(|e| err(ErrorKind::Retryable, op, e.to_string()))?;
        }
        Ok(())
    }

    /// The database roles a quarantine of `group_ids` lets in: the agent's, when one of the
    /// groups admits the agent's group (the quarantine group with database access).
    pub(super) fn admitted_by(&self, group_ids: &[String]) -> Vec<String> {
        let Some(agent) = &self.agent else {
            return vec![];
        };
        let groups = self.network_groups.lock().unwrap();
        let admits = groups
            .values()
            .filter(|g| group_ids.contains(&g.id))
            .any(|g| g.ingress_sources.contains(&agent.group));
        if admits {
            vec![agent.role.clone()]
        } else {
            vec![]
        }
    }

    pub(super) fn target_arn(cluster: &str) -> String {
        format!("arn:aws:rds:us-east-1:123456789012:cluster:{cluster}")
    }
}

pub(super) fn err(kind: ErrorKind, op: &str, msg: impl Into<String>) -> PortError {
    PortError::new(kind, op, msg)
}

/// Runs blocking server commands off the async workers.
pub(super) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("blocking task panicked")
}

pub(super) async fn query_f64(server: &PgServer, sql: &str) -> Result<Option<f64>, String> {
    let client = connect(&server.local()).await?;
    let row = client
        .query_one(sql, &[])
        .await
        .map_err(|e| e.to_string())?;
    row.try_get::<_, Option<f64>>(0).map_err(|e| e.to_string())
}

pub struct PgWorld {
    pub shared: Arc<Shared>,
    pub rds: PgRds,
    pub network: MemNetwork,
    pub metrics: PgMetrics,
    pub notifier: MemNotifier,
    pub queue: MemQueue,
    pub store: MemStore,
    pub router: MemRouter,
    pub database: AgentDatabase<FixedSecrets>,
    pub clock: RealClock,
}

impl PgWorld {
    /// Starts a primary with the writes table, tagged for migration. `leaks` are roles that the
    /// quarantine will not stop (created on the primary).
    pub async fn start(label: &str, leaks: &[&str]) -> PgWorld {
        PgWorld::start_with(label, leaks, false).await
    }

    /// As [`PgWorld::start`], and the source grants the agent database access: TLS on the
    /// servers (a test CA the agent's bundle trusts), the agent's role with `pg_signal_backend`
    /// and `pg_read_all_stats` (what RDS's master user has for the agent's SQL) and its password
    /// in a secret, the instance tagged `database-access=secret:<id>`, and the quarantine
    /// letting in the agent's role when the quarantine group admits the agent's group. The
    /// `leaks` roles and the application's role `app` are ordinary roles the agent may end.
    pub async fn start_with_database(label: &str, leaks: &[&str]) -> PgWorld {
        PgWorld::start_with(label, leaks, true).await
    }

    async fn start_with(label: &str, leaks: &[&str], database: bool) -> PgWorld {
        let bins = Bins::locate();
        let run_as = RunAs::get();
        let root = TempRoot::new(label, run_as);
        let certs = database.then(|| make_certs(&root.path, run_as));
        let tls_conf: Vec<String> = certs
            .iter()
            .map(|c| {
                format!(
                    "ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\npassword_encryption = 'scram-sha-256'",
                    c.cert.display(),
                    c.key.display()
                )
            })
            .collect();
        let primary = blocking({
            let (dir, bins) = (root.path.clone(), bins.clone());
            move || {
                let mut primary = PgServer::init_primary(&dir, "primary", &bins, run_as);
                let lines: Vec<&str> = tls_conf.iter().map(String::as_str).collect();
                primary.append_conf(&lines);
                if let Err(e) = primary.start_on_a_free_port() {
                    panic!("the primary did not start: {e}\n{}", primary.log_tail());
                }
                primary
            }
        })
        .await;
        let client = connect(&primary.local()).await.expect("connect to primary");
        let version: String = client
            .query_one("SHOW server_version", &[])
            .await
            .expect("server_version")
            .get(0);
        // `15.18 (Debian 15.18-0+deb12u1)` → `15.18`
        let version = version
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string();
        client
            .batch_execute(&format!(
                "CREATE TABLE {} (seq bigint PRIMARY KEY, writer text NOT NULL, \
                 server_port int DEFAULT inet_server_port(), at timestamptz DEFAULT clock_timestamp())",
                super::server::TABLE
            ))
            .await
            .expect("create table");
        // With database access the agent ends client sessions, which it may do only for roles
        // that are not superusers (as on RDS, where only `rdsadmin` is one).
        let grant = format!("GRANT INSERT, SELECT ON {} TO", super::server::TABLE);
        for role in leaks {
            let sql = if database {
                format!("CREATE ROLE {role} LOGIN; {grant} {role}")
            } else {
                format!("CREATE ROLE {role} LOGIN SUPERUSER")
            };
            client.batch_execute(&sql).await.expect("create role");
        }
        let mut tags = BTreeMap::new();
        tags.insert("aurora-migration".to_string(), "start".to_string());
        let secrets = FixedSecrets::default();
        if database {
            client
                .batch_execute(&format!(
                    "CREATE ROLE {AGENT_ROLE} LOGIN PASSWORD '{AGENT_PASSWORD}'; \
                     GRANT pg_signal_backend, pg_read_all_stats TO {AGENT_ROLE}; \
                     CREATE ROLE {APP_ROLE} LOGIN; {grant} {APP_ROLE}"
                ))
                .await
                .expect("create the agent's and the application's roles");
            secrets.set(AGENT_SECRET, AGENT_ROLE, AGENT_PASSWORD);
            tags.insert(
                "aurora-migration:database-access".to_string(),
                format!("secret:{AGENT_SECRET}"),
            );
        } else {
            // Without access nobody can look: the owners acknowledge.
            tags.insert(
                "aurora-migration:ack-unlogged-tables".to_string(),
                "true".to_string(),
            );
        }
        let port = primary.port;
        let network = MemNetwork::default();
        let shared = Arc::new(Shared {
            bins,
            run_as,
            primary,
            standby: Mutex::new(None),
            state: Mutex::new(RdsState {
                source_status: "available".into(),
                source_deleted: false,
                source_groups: vec![APP_GROUP.to_string()],
                source_tags: tags,
                engine_version: version,
                events: vec![],
                writer_events: vec![],
                target: None,
                parameter_groups: BTreeSet::new(),
                snapshots: BTreeMap::new(),
                log: vec![],
                leaks: leaks.iter().map(|s| s.to_string()).collect(),
            }),
            wal_sample: Mutex::new(None),
            skip_writer_reboot: Default::default(),
            network_groups: network.groups.clone(),
            agent: database.then(|| AgentLogin {
                group: AGENT_GROUP.to_string(),
                role: AGENT_ROLE.to_string(),
            }),
            root,
        });
        let database = match &certs {
            Some(c) => {
                let tls = RdsTls::from_bundle_file(&c.ca).expect("the test CA bundle");
                AgentDatabase::On(Box::new(PgDatabase::with_source(
                    DatabaseSettings::new(tls),
                    secrets,
                )))
            }
            None => AgentDatabase::Off,
        };
        PgWorld {
            rds: PgRds(shared.clone()),
            metrics: PgMetrics {
                shared: shared.clone(),
                heartbeats: Arc::default(),
            },
            router: MemRouter {
                shared: shared.clone(),
                endpoint: Arc::new(Mutex::new(("127.0.0.1".to_string(), port))),
                routes: Arc::default(),
                pgbouncer: None,
            },
            shared,
            network,
            database,
            notifier: MemNotifier::default(),
            queue: MemQueue::default(),
            store: MemStore::default(),
            clock: RealClock,
        }
    }
}

impl World for PgWorld {
    type Rds = PgRds;
    type Network = MemNetwork;
    type Metrics = PgMetrics;
    type Notifier = MemNotifier;
    type Queue = MemQueue;
    type Store = MemStore;
    type Router = MemRouter;
    type Database = AgentDatabase<FixedSecrets>;
    type Clock = RealClock;
    fn rds(&self) -> &PgRds {
        &self.rds
    }
    fn network(&self) -> &MemNetwork {
        &self.network
    }
    fn metrics(&self) -> &PgMetrics {
        &self.metrics
    }
    fn notifier(&self) -> &MemNotifier {
        &self.notifier
    }
    fn queue(&self) -> &MemQueue {
        &self.queue
    }
    fn store(&self) -> &MemStore {
        &self.store
    }
    fn router(&self) -> &MemRouter {
        &self.router
    }
    fn database(&self) -> &AgentDatabase<FixedSecrets> {
        &self.database
    }
    fn clock(&self) -> &RealClock {
        &self.clock
    }
}
