//! The database-aware cutover's vocabulary: where the agent connects, with which credentials,
//! and what it reads back (client sessions, WAL positions).
//!
//! Pure data. The adapter (`crate::database`) turns a [`DbTarget`] into a TLS connection with
//! credentials from Secrets Manager and runs the SQL; the phase machine only sees the answers.
//!
//! Why WAL positions: AWS's documented cutover for an Aurora read replica of an RDS instance is
//! "stop writes, read the source's WAL position, wait until the replica's
//! `pg_last_wal_replay_lsn()` has passed it, promote". The position the agent waits for is the
//! one of a durable barrier commit written after every client session has ended (see
//! `crate::ports::Database::write_fence`), never `pg_current_wal_lsn()` read alone: that is the
//! WAL *write* position, and an asynchronous commit (`synchronous_commit=off`) is acknowledged to
//! its client before its record is written, so it can lie past that position.

use std::fmt;
use std::str::FromStr;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// A PostgreSQL WAL position (`pg_lsn`), ordered as the server orders them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct Lsn(pub u64);

impl fmt::Display for Lsn {
    /// PostgreSQL's own text form, `XXXXXXXX/XXXXXXXX` without leading zeros.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl FromStr for Lsn {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("`{s}` is not a WAL position (expected hex `X/X`)");
        let (hi, lo) = s.split_once('/').ok_or_else(bad)?;
        let hi = u32::from_str_radix(hi, 16).map_err(|_| bad())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| bad())?;
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

impl From<Lsn> for String {
    fn from(l: Lsn) -> String {
        l.to_string()
    }
}

impl TryFrom<String> for Lsn {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

/// Where the credentials for a database come from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Credentials {
    /// A Secrets Manager secret (ARN or name) holding JSON with `username` and `password`: the
    /// instance's RDS-managed master secret (`MasterUserSecret`) or one an owner named by tag.
    Secret { secret_id: String },
    /// IAM database authentication as this database user (a token signed with the task role).
    IamUser { user: String },
}

impl fmt::Display for Credentials {
    /// Names the source of the credentials, never a credential.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Secret { secret_id } => write!(f, "secret {secret_id}"),
            Credentials::IamUser { user } => write!(f, "IAM database authentication as {user}"),
        }
    }
}

/// The agent's access to one migration's databases, decided in Preflight and kept in the plan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatabaseAccess {
    pub credentials: Credentials,
    /// The database to connect to (the instance's `DBName`, else `postgres`). Sessions are read
    /// server-wide from any database.
    pub database: String,
}

/// The tag suffix through which an instance's owners grant database access:
/// `<prefix>:database-access` = `master-secret` (the RDS-managed master secret,
/// `MasterUserSecret`), `secret:<name or ARN>` (a Secrets Manager secret with `username` and
/// `password`), or `iam:<database user>` (IAM database authentication).
pub const ACCESS_TAG: &str = "database-access";

/// The access an instance's tags grant, if the deployment allows database access at all
/// (`MIGRATOR_DATABASE_ACCESS`). `Ok(None)`: not asked for (the metric path, silently);
/// `Err`: asked for but unusable, with the reason (the metric path, and the preflight says why).
pub fn access_for(
    source: &super::observation::SourceInstance,
    policy: &super::policy::Policy,
) -> Result<Option<DatabaseAccess>, String> {
    let key = super::tags::key(&policy.tag_prefix, ACCESS_TAG);
    let Some(value) = source.tags.get(&key).map(|v| v.trim()) else {
        return Ok(None);
    };
    if !policy.database_access {
        return Err(format!(
            "{key} is set but this deployment does not allow database access (MIGRATOR_DATABASE_ACCESS)"
        ));
    }
    if policy.agent_security_group.is_none() {
        return Err(
            "MIGRATOR_AGENT_SECURITY_GROUP is not set: the quarantine could not admit the agent"
                .to_string(),
        );
    }
    let credentials = match value.split_once(':') {
        None if value == "master-secret" => match &source.master_user_secret_arn {
            Some(arn) => Credentials::Secret {
                secret_id: arn.clone(),
            },
            None => {
                return Err(format!(
                    "{key} = master-secret, but the instance has no RDS-managed master secret (MasterUserSecret)"
                ));
            }
        },
        Some(("secret", id)) if !id.trim().is_empty() => Credentials::Secret {
            secret_id: id.trim().to_string(),
        },
        Some(("iam", user)) if !user.trim().is_empty() => {
            if !source.iam_auth_enabled {
                return Err(format!(
                    "{key} = iam:{user}, but IAM database authentication is not enabled on the instance"
                ));
            }
            Credentials::IamUser {
                user: user.trim().to_string(),
            }
        }
        _ => {
            return Err(format!(
                "{key} = `{value}` is not one of `master-secret`, `secret:<name or ARN>`, `iam:<user>`"
            ));
        }
    };
    Ok(Some(DatabaseAccess {
        credentials,
        database: source
            .db_name
            .clone()
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| "postgres".to_string()),
    }))
}

/// One server to connect to: an endpoint and the access that opens it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DbTarget {
    pub host: String,
    pub port: u16,
    pub access: DatabaseAccess,
}

/// A client session on the server (`pg_stat_activity`, `backend_type = 'client backend'`),
/// other than the agent's own connection and RDS's (`rdsadmin`). Replication connections
/// (walsenders: the Aurora replica, CDC consumers) are not client sessions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientSession {
    pub pid: i32,
    pub user: String,
    pub application: String,
    /// The client's address (`None` for a Unix-socket session: something on the server itself).
    pub client_addr: Option<String>,
    pub backend_start: Option<Timestamp>,
}

impl fmt::Display for ClientSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pid {} ({} from {}",
            self.pid,
            self.user,
            self.client_addr.as_deref().unwrap_or("local socket")
        )?;
        if !self.application.is_empty() {
            write!(f, ", {}", self.application)?;
        }
        write!(f, ")")
    }
}

/// What the database itself says in Preflight (each list empty when there is nothing to say).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SqlPreflight {
    /// The server's `server_version_num` (e.g. 150007).
    pub server_version_num: u32,
    /// Unlogged tables (`database.schema.table`), in every database the agent can connect to: their
    /// rows are not in the WAL, so the replica has them empty.
    pub unlogged_tables: Vec<String>,
    /// Installed extensions (name, version), from every database.
    pub extensions: Vec<(String, String)>,
    /// pg_cron jobs that are active (`jobid: schedule command`, shortened): writers inside the
    /// database that the quarantine does not stop.
    pub cron_jobs: Vec<String>,
    /// Background workers that are not PostgreSQL's or RDS's own (`backend_type`).
    pub background_workers: Vec<String>,
    pub logical_slots: Vec<LogicalSlot>,
    /// Prepared transactions (`gid`): they hold locks and WAL, and commit only when asked.
    pub prepared_transactions: Vec<String>,
    /// Open transactions older than the threshold the adapter was asked about (pid, age s).
    pub old_transactions: Vec<(i32, u64)>,
    /// Sum of `pg_database_size` over every database, bytes.
    pub database_bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogicalSlot {
    pub name: String,
    pub plugin: String,
    pub active: bool,
    /// WAL retained for the slot (`pg_current_wal_lsn() - restart_lsn`), bytes.
    pub retained_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_parses_and_prints_like_postgres_and_orders_by_position() {
        let a: Lsn = "0/16B3748".parse().unwrap();
        let b: Lsn = "1/0".parse().unwrap();
        assert_eq!(a.0, 0x16B_3748);
        assert_eq!(b.0, 1 << 32);
        assert!(a < b);
        assert_eq!(a.to_string(), "0/16B3748");
        assert_eq!(b.to_string(), "1/0");
        assert!("16B3748".parse::<Lsn>().is_err());
        assert!("0/xyz".parse::<Lsn>().is_err());
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(json, "\"0/16B3748\"");
        assert_eq!(serde_json::from_str::<Lsn>(&json).unwrap(), a);
    }
}
