//! Routers: what re-points the applications at cutover (and back at a rollback), chosen per
//! instance, and how far a route has got.
//!
//! Contract:
//! - The choice is the instance's tag `<prefix>:router` when it has one, else the deployment's
//!   `MIGRATOR_ROUTER` (`Policy::router`). It is read once, at preflight, into the plan: a tag
//!   changed in the middle of a cutover does not send half of it somewhere else. A tag that does
//!   not parse fails the preflight's `router` check, naming the forms below.
//! - Forms: `webhook` (the signed webhook, or with none configured only the SNS "cutover"
//!   message, which is sent whatever the router); `route53:<hosted zone id>:<record name>` (a
//!   CNAME the applications connect to); `rds-proxy:<proxy name>` (an RDS Proxy whose default
//!   target group holds the source); `pgbouncer:<companion host>:<port>:<database>` (a PgBouncer
//!   database entry, re-pointed by the companion that runs next to PgBouncer, `crate::pgbouncer`).
//! - A route is observed, not assumed: the router answers a request with [`RouteProgress`], and
//!   a route still propagating is asked after (`Router::route_status`) until it is in effect.
//!   Only then does the cutover count traffic as moved (Verifying starts) or a rollback as done.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Which router a migration uses.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RouterChoice {
    /// The signed webhook (`MIGRATOR_WEBHOOK_URL`), in effect when it answers 2xx; without a
    /// URL, the SNS "cutover" notification is the route.
    #[default]
    Webhook,
    /// A Route 53 record the applications connect to: UPSERTed as a CNAME to the endpoint, in
    /// effect when `GetChange` reports `INSYNC` (every Route 53 DNS server answers the new
    /// value; clients that cached the old one keep it for up to the record's TTL).
    Route53 {
        /// The hosted zone's id (`Z…`, without `/hostedzone/`).
        hosted_zone: String,
        /// The record's name, without the trailing dot.
        record: String,
    },
    /// An RDS Proxy the applications connect to: its default target group moves from the
    /// source instance to the Aurora cluster (deregister, register), in effect when the
    /// cluster's writer target reports `AVAILABLE`.
    RdsProxy {
        /// The proxy's name (`DBProxyName`).
        proxy: String,
    },
    /// A PgBouncer the applications connect to: the companion next to it holds the clients
    /// (`PAUSE`) before the source is fenced, and at routing rewrites the database entry's
    /// host, `RELOAD`s and `RESUME`s; in effect when it answers.
    PgBouncer {
        /// `host:port` of the companion (`https://` unless the host is loopback).
        companion: String,
        /// The PgBouncer database entry the applications connect to.
        database: String,
    },
}

impl RouterChoice {
    /// The choice for an instance with these tags: its `<prefix>:router` tag, else `default`.
    pub fn for_instance(
        prefix: &str,
        tags: &std::collections::BTreeMap<String, String>,
        default: &RouterChoice,
    ) -> Result<RouterChoice, String> {
        match tags.get(&super::tags::key(prefix, "router")) {
            Some(v) => v
                .parse()
                .map_err(|e| format!("tag {prefix}:router = {v:?}: {e}")),
            None => Ok(default.clone()),
        }
    }
}

impl FromStr for RouterChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s == "webhook" {
            return Ok(RouterChoice::Webhook);
        }
        if let Some(rest) = s.strip_prefix("route53:") {
            let (zone, record) = rest.split_once(':').unwrap_or((rest, ""));
            let zone = zone.trim().trim_start_matches("/hostedzone/");
            let record = record.trim().trim_end_matches('.');
            let zone_ok = !zone.is_empty() && zone.chars().all(|c| c.is_ascii_alphanumeric());
            // A DNS name: labels of letters, digits, hyphens and underscores (at most 253
            // characters); a wildcard record is not a name an application connects to.
            let record_ok = !record.is_empty()
                && record.len() <= 253
                && record.split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && l.chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                });
            if zone_ok && record_ok {
                return Ok(RouterChoice::Route53 {
                    hosted_zone: zone.to_string(),
                    record: record.to_ascii_lowercase(),
                });
            }
            return Err(format!(
                "expected route53:<hosted zone id>:<record name>, e.g. route53:Z0123456789ABC:db.example.com, not {s:?}"
            ));
        }
        if let Some(proxy) = s.strip_prefix("rds-proxy:") {
            let proxy = proxy.trim();
            // RDS's rule for a proxy's name: a letter, then letters, digits and single hyphens,
            // at most 63 characters, not ending in a hyphen.
            let ok = proxy.len() <= 63
                && proxy.starts_with(|c: char| c.is_ascii_alphabetic())
                && !proxy.ends_with('-')
                && !proxy.contains("--")
                && proxy.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
            if ok {
                return Ok(RouterChoice::RdsProxy {
                    proxy: proxy.to_ascii_lowercase(),
                });
            }
            return Err(format!(
                "expected rds-proxy:<proxy name>, e.g. rds-proxy:orders-proxy, not {s:?}"
            ));
        }
        if let Some(rest) = s.strip_prefix("pgbouncer:") {
            let mut parts = rest.rsplitn(3, ':');
            let (database, port, host) = (parts.next(), parts.next(), parts.next());
            if let (Some(database), Some(port), Some(host)) = (database, port, host) {
                let host = host.trim().to_ascii_lowercase();
                let database = database.trim();
                let host_ok = !host.is_empty()
                    && host.len() <= 253
                    && host
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
                // A PgBouncer database name as the applications type it: no spaces, quotes or
                // `=` (the ini's separator).
                let database_ok = !database.is_empty()
                    && database.len() <= 63
                    && database
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.');
                if let (true, true, Ok(port)) = (host_ok, database_ok, port.trim().parse::<u16>())
                    && port != 0
                {
                    return Ok(RouterChoice::PgBouncer {
                        companion: format!("{host}:{port}"),
                        database: database.to_string(),
                    });
                }
            }
            return Err(format!(
                "expected pgbouncer:<companion host>:<companion port>:<database>, e.g. pgbouncer:pgbouncer-1.internal:6480:orders, not {s:?}"
            ));
        }
        Err(format!(
            "unknown router {s:?}: expected `webhook`, `route53:<hosted zone id>:<record name>`, `rds-proxy:<proxy name>` or `pgbouncer:<companion host>:<companion port>:<database>`"
        ))
    }
}

impl fmt::Display for RouterChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RouterChoice::Webhook => f.write_str("webhook"),
            RouterChoice::Route53 {
                hosted_zone,
                record,
            } => write!(f, "route53:{hosted_zone}:{record}"),
            RouterChoice::RdsProxy { proxy } => write!(f, "rds-proxy:{proxy}"),
            RouterChoice::PgBouncer {
                companion,
                database,
            } => write!(f, "pgbouncer:{companion}:{database}"),
        }
    }
}

/// A DNS record as the router reads it (preflight checks the team's record before writes stop).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsRecord {
    /// Lower case, without the trailing dot.
    pub name: String,
    /// `CNAME`, `A`, …
    pub kind: String,
    /// The values, lower case without the trailing dot (a CNAME has one; an alias none).
    pub values: Vec<String>,
    pub ttl: Option<i64>,
    /// An alias target or a routing policy (set identifier): not a simple record.
    pub special: Option<String>,
}

/// What a router currently sends where, as preflight reads it before writes stop.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RouterView {
    /// Route 53: the team's record.
    Dns(DnsRecord),
    /// RDS Proxy: the proxy and its default target group's targets.
    Proxy(ProxyView),
    /// PgBouncer: the database entry, as its companion reads it.
    Pooler(PoolerEntry),
}

/// An RDS Proxy as `DescribeDBProxies` and `DescribeDBProxyTargets` show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyView {
    pub name: String,
    /// `POSTGRESQL`, `MYSQL`, `SQLSERVER`.
    pub engine_family: String,
    /// `available`, `modifying`, …
    pub status: String,
    pub vpc_id: Option<String>,
    /// How many secrets the proxy authenticates with (`Auth`).
    pub auth_secrets: usize,
    /// The proxy's tags: its owners opt it in with `<prefix>:router` = `allow` (the task role
    /// may move the targets of tagged proxies only).
    #[serde(default)]
    pub tags: std::collections::BTreeMap<String, String>,
    /// The default target group's targets.
    pub targets: Vec<ProxyTarget>,
}

/// One target of a proxy's target group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyTarget {
    /// `RDS_INSTANCE`, `TRACKED_CLUSTER` (a cluster registered as a whole; its members are
    /// `RDS_INSTANCE` targets with `cluster` set).
    pub kind: String,
    /// `RdsResourceId`: the instance's or the cluster's identifier.
    pub id: String,
    /// `TrackedClusterId`, for a cluster and its members.
    pub cluster: Option<String>,
    /// `READ_WRITE`, `READ_ONLY`.
    pub role: Option<String>,
    /// `TargetHealth.State`: `REGISTERING`, `AVAILABLE`, `UNAVAILABLE`, `UNUSED`.
    pub health: String,
    /// `TargetHealth.Reason` and `Description`, when not available.
    pub reason: Option<String>,
}

impl ProxyView {
    /// The proxy sends traffic to `cluster`'s writer: the cluster is registered and its
    /// `READ_WRITE` member target is `AVAILABLE`.
    pub fn serves_cluster(&self, cluster: &str) -> bool {
        self.targets.iter().any(|t| {
            t.kind == "RDS_INSTANCE"
                && t.cluster.as_deref() == Some(cluster)
                && t.role.as_deref() == Some("READ_WRITE")
                && t.health == "AVAILABLE"
        })
    }

    /// The proxy sends traffic to the instance `id`: it is registered and `AVAILABLE`.
    pub fn serves_instance(&self, id: &str) -> bool {
        self.targets.iter().any(|t| {
            t.kind == "RDS_INSTANCE" && t.cluster.is_none() && t.id == id && t.health == "AVAILABLE"
        })
    }

    /// Why the proxy is not (yet) serving what was asked, for the record's `last_error`.
    pub fn health_text(&self) -> String {
        let parts: Vec<String> = self
            .targets
            .iter()
            .map(|t| match &t.reason {
                Some(r) => format!("{} {} {} ({r})", t.kind, t.id, t.health),
                None => format!("{} {} {}", t.kind, t.id, t.health),
            })
            .collect();
        if parts.is_empty() {
            "no target registered".to_string()
        } else {
            parts.join("; ")
        }
    }
}

/// A PgBouncer database entry, as the companion reads it from PgBouncer's configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolerEntry {
    pub database: String,
    pub host: String,
    pub port: u16,
    /// PgBouncer holds this database's clients (`PAUSE`) now.
    pub paused: bool,
    /// PgBouncer's `query_wait_timeout`: a client held longer than this gets an error.
    pub query_wait_timeout_s: Option<u64>,
}

/// Above this TTL preflight warns: clients that cached the source's address before `INSYNC`
/// keep connecting to the fenced source for up to the TTL more, and that is outage. AWS's
/// advice for a record re-pointed at cutover is a short TTL (60 s or less, set well before).
pub const ROUTE53_TTL_WARN_S: i64 = 60;

/// The value of the `<prefix>:router` tag by which a proxy's owners let the agent move it.
pub const PROXY_OPT_IN: &str = "allow";

/// How far a route has got.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum RouteProgress {
    /// Traffic goes where it was sent.
    InEffect,
    /// Accepted, not yet in effect everywhere: asked after with `change`.
    Propagating { change: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route53_parses_with_or_without_the_zone_prefix_and_trailing_dot() {
        for s in [
            "route53:Z0123ABC:db.example.com",
            "route53:/hostedzone/Z0123ABC:db.example.com.",
            " route53:Z0123ABC:DB.Example.com ",
        ] {
            assert_eq!(
                s.parse::<RouterChoice>(),
                Ok(RouterChoice::Route53 {
                    hosted_zone: "Z0123ABC".into(),
                    record: "db.example.com".into()
                }),
                "{s}"
            );
        }
        assert_eq!("webhook".parse(), Ok(RouterChoice::Webhook));
    }

    #[test]
    fn rds_proxy_and_pgbouncer_parse_and_print_back() {
        for (s, want) in [
            (
                "rds-proxy:Orders-Proxy",
                RouterChoice::RdsProxy {
                    proxy: "orders-proxy".into(),
                },
            ),
            (
                "pgbouncer:PgBouncer-1.internal:6480:orders_app",
                RouterChoice::PgBouncer {
                    companion: "pgbouncer-1.internal:6480".into(),
                    database: "orders_app".into(),
                },
            ),
        ] {
            let got: RouterChoice = s.parse().unwrap();
            assert_eq!(got, want, "{s}");
            assert_eq!(got.to_string().parse::<RouterChoice>(), Ok(got), "{s}");
        }
        for (s, form) in [
            ("rds-proxy:", "rds-proxy:<proxy name>"),
            ("rds-proxy:1proxy", "rds-proxy:<proxy name>"),
            ("rds-proxy:a--b", "rds-proxy:<proxy name>"),
            ("rds-proxy:orders-", "rds-proxy:<proxy name>"),
            ("pgbouncer:host:6480", "pgbouncer:<companion host>"),
            ("pgbouncer:host:0:orders", "pgbouncer:<companion host>"),
            ("pgbouncer:host:port:orders", "pgbouncer:<companion host>"),
            ("pgbouncer:ho st:6480:orders", "pgbouncer:<companion host>"),
            ("pgbouncer:host:6480:or=ders", "pgbouncer:<companion host>"),
        ] {
            let e = s.parse::<RouterChoice>().unwrap_err();
            assert!(e.contains(form), "{s}: {e}");
        }
    }

    #[test]
    fn malformed_choices_are_refused_naming_the_forms() {
        for s in [
            "",
            "route53",
            "route53:",
            "route53:Z1",
            "route53::db.example.com",
            "route53:Z1:*.example.com",
            "route53:Z1:db..example.com",
            "route53:Z 1:db.example.com",
            "pgbouncer",
        ] {
            let e = s.parse::<RouterChoice>().unwrap_err();
            assert!(
                e.contains("route53:<hosted zone id>:<record name>"),
                "{s}: {e}"
            );
        }
    }

    #[test]
    fn the_tag_wins_over_the_deployment_default() {
        let mut tags = std::collections::BTreeMap::new();
        let default = RouterChoice::Webhook;
        assert_eq!(
            RouterChoice::for_instance("am", &tags, &default),
            Ok(default.clone())
        );
        tags.insert(
            "am:router".to_string(),
            "route53:Z1:db.example.com".to_string(),
        );
        assert_eq!(
            RouterChoice::for_instance("am", &tags, &default)
                .unwrap()
                .to_string(),
            "route53:Z1:db.example.com"
        );
        tags.insert("am:router".to_string(), "dns".to_string());
        let e = RouterChoice::for_instance("am", &tags, &default).unwrap_err();
        assert!(e.starts_with("tag am:router = \"dns\""), "{e}");
    }
}
