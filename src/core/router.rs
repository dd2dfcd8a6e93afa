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
//!   CNAME the applications connect to).
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
        Err(format!(
            "unknown router {s:?}: expected `webhook` or `route53:<hosted zone id>:<record name>`"
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

/// Above this TTL preflight warns: clients that cached the source's address before `INSYNC`
/// keep connecting to the fenced source for up to the TTL more, and that is outage. AWS's
/// advice for a record re-pointed at cutover is a short TTL (60 s or less, set well before).
pub const ROUTE53_TTL_WARN_S: i64 = 60;

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
