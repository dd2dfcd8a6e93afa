//! The router's own preflight (`core::router`): what each router will change must be what
//! sends this instance's traffic today, checked before writes stop. The webhook needs nothing
//! here (its settings are checked at start-up).

use super::Outcome;
use crate::core::observation::{PreflightInputs, SourceInstance};
use crate::core::router::{PROXY_OPT_IN, ROUTE53_TTL_WARN_S, RouterChoice, RouterView};

/// The `router` check's outcome and text for `router`.
pub(super) fn check(
    router: &RouterChoice,
    source: &SourceInstance,
    inputs: &PreflightInputs,
    budget_s: i64,
    prefix: &str,
) -> (Outcome, String) {
    match router {
        RouterChoice::Webhook => (
            Outcome::Pass,
            "the signed webhook (when configured) and the SNS cutover message".to_string(),
        ),
        RouterChoice::Route53 {
            hosted_zone,
            record,
        } => route53(hosted_zone, record, source, inputs),
        RouterChoice::RdsProxy { proxy } => rds_proxy(proxy, source, inputs, prefix),
        RouterChoice::PgBouncer {
            companion,
            database,
        } => pgbouncer(companion, database, source, inputs, budget_s),
    }
}

/// Route 53: the record must exist, be a simple CNAME to this instance's endpoint (or
/// re-pointing it would move someone else's traffic), and should have a short TTL.
fn route53(
    zone: &str,
    name: &str,
    source: &SourceInstance,
    inputs: &PreflightInputs,
) -> (Outcome, String) {
    let endpoint = source
        .endpoint
        .as_ref()
        .map(|e| e.address.trim_end_matches('.').to_ascii_lowercase());
    let record = match &inputs.router_view {
        None => return (Outcome::Fail, format!("the record {name} was not read")),
        Some(Err(e)) => {
            return (
                Outcome::Fail,
                format!(
                    "the record {name} in zone {zone} could not be read ({e}): the task role needs route53:ListResourceRecordSets on the zone (infra: Route53HostedZoneId, Route53RecordNames)"
                ),
            );
        }
        Some(Ok(None)) => {
            return (
                Outcome::Fail,
                format!(
                    "zone {zone} has no record {name}: create it as a CNAME to the source's endpoint{}; the agent re-points it, never creates it",
                    endpoint
                        .as_deref()
                        .map(|e| format!(" ({e})"))
                        .unwrap_or_default()
                ),
            );
        }
        Some(Ok(Some(RouterView::Dns(r)))) => r,
        Some(Ok(Some(other))) => {
            return (
                Outcome::Fail,
                format!("expected a DNS record, read {other:?}"),
            );
        }
    };
    if record.kind != "CNAME" {
        return (
            Outcome::Fail,
            format!(
                "{name} is a {} record, not a CNAME: the agent re-points CNAMEs only",
                record.kind
            ),
        );
    }
    if let Some(what) = &record.special {
        return (
            Outcome::Fail,
            format!("{name} is {what}: the agent re-points simple CNAMEs only"),
        );
    }
    if endpoint.is_none() || record.values.first() != endpoint.as_ref() {
        return (
            Outcome::Fail,
            format!(
                "{name} points at {}, not at this instance's endpoint {}: re-pointing it would move traffic that does not reach this instance",
                record.values.join(", "),
                endpoint.as_deref().unwrap_or("(none)")
            ),
        );
    }
    match record.ttl {
        Some(ttl) if ttl > ROUTE53_TTL_WARN_S => (
            Outcome::Warn,
            format!(
                "{name} is a CNAME to the source with TTL {ttl} s: clients that cached it keep connecting to the fenced source for up to {ttl} s after Route 53 is in sync; lower it to {ROUTE53_TTL_WARN_S} s or less, at least {ttl} s before the cutover"
            ),
        ),
        ttl => (
            Outcome::Pass,
            format!(
                "Route 53: {name} (a CNAME to the source, TTL {} s) becomes a CNAME to the Aurora writer endpoint; traffic counts as moved when Route 53 reports INSYNC",
                ttl.unwrap_or_default()
            ),
        ),
    }
}

/// The view read for a router, or the check's failure when there is none.
fn read<'a>(
    inputs: &'a PreflightInputs,
    what: &str,
    permission: &str,
) -> Result<Option<&'a RouterView>, (Outcome, String)> {
    match &inputs.router_view {
        None => Err((Outcome::Fail, format!("{what} was not read"))),
        Some(Err(e)) => Err((
            Outcome::Fail,
            format!("{what} could not be read ({e}): {permission}"),
        )),
        Some(Ok(view)) => Ok(view.as_ref()),
    }
}

/// RDS Proxy: the proxy must be a PostgreSQL proxy, available, in the source's VPC (the Aurora
/// cluster is built in the source's subnet group with the source's security groups, so a proxy
/// that reaches the source reaches the cluster by the same path), with its secrets (the cluster
/// has the source's roles and passwords: the same secrets log in), and its default target group
/// must hold this instance and nothing else, reachable today.
fn rds_proxy(
    proxy: &str,
    source: &SourceInstance,
    inputs: &PreflightInputs,
    prefix: &str,
) -> (Outcome, String) {
    let what = format!("the RDS Proxy {proxy}");
    let view = match read(
        inputs,
        &what,
        "the task role needs rds:DescribeDBProxies and rds:DescribeDBProxyTargets (infra: RdsProxyNames)",
    ) {
        Ok(Some(RouterView::Proxy(p))) => p,
        Ok(None) => {
            return (
                Outcome::Fail,
                format!("there is no RDS Proxy named {proxy} in this account and Region"),
            );
        }
        Ok(Some(other)) => return (Outcome::Fail, format!("expected a proxy, read {other:?}")),
        Err(failed) => return failed,
    };
    // The owners' consent, and what the task role's policy requires to move its targets.
    let opt_in = crate::core::tags::key(prefix, "router");
    if view.tags.get(&opt_in).map(String::as_str) != Some(PROXY_OPT_IN) {
        return (
            Outcome::Fail,
            format!(
                "{what} is not tagged {opt_in}={PROXY_OPT_IN}: its owners opt it in with that tag, and the agent may move the targets of tagged proxies only"
            ),
        );
    }
    if view.engine_family != "POSTGRESQL" {
        return (
            Outcome::Fail,
            format!("{what} is a {} proxy, not POSTGRESQL", view.engine_family),
        );
    }
    if view.status != "available" {
        return (
            Outcome::Fail,
            format!("{what} is {}, not available", view.status),
        );
    }
    if view.vpc_id.as_deref() != Some(source.vpc_id.as_str()) {
        return (
            Outcome::Fail,
            format!(
                "{what} is in {}, the source (and the Aurora cluster built beside it) in {}: the proxy could not reach the cluster",
                view.vpc_id.as_deref().unwrap_or("no VPC"),
                source.vpc_id
            ),
        );
    }
    if view.auth_secrets == 0 {
        return (
            Outcome::Fail,
            format!("{what} has no authentication secrets"),
        );
    }
    let others: Vec<String> = view
        .targets
        .iter()
        .filter(|t| t.id != source.identifier || t.kind != "RDS_INSTANCE")
        .map(|t| format!("{} {}", t.kind, t.id))
        .collect();
    if !others.is_empty() || view.targets.is_empty() {
        return (
            Outcome::Fail,
            format!(
                "{what}'s default target group holds {}, not this instance alone: moving it would move traffic that does not reach this instance",
                if others.is_empty() {
                    "nothing".to_string()
                } else {
                    others.join(", ")
                }
            ),
        );
    }
    if !view.serves_instance(&source.identifier) {
        return (
            Outcome::Fail,
            format!(
                "{what} cannot reach this instance today ({}): it would not reach the cluster either",
                view.health_text()
            ),
        );
    }
    (
        Outcome::Pass,
        format!(
            "{what} ({} secret(s), {}): its default target group moves from this instance to the Aurora cluster; traffic counts as moved when the cluster's writer target is AVAILABLE; clients see connection errors from the fence until then",
            view.auth_secrets,
            view.vpc_id.as_deref().unwrap_or_default()
        ),
    )
}

/// PgBouncer: the companion must answer, and the database entry must point at this instance
/// (else re-pointing it would move someone else's traffic) and not be paused already (a person
/// or another tool is working on it). A `query_wait_timeout` shorter than the write budget
/// warns: a client held longer gets an error instead of a late answer.
fn pgbouncer(
    companion: &str,
    database: &str,
    source: &SourceInstance,
    inputs: &PreflightInputs,
    budget_s: i64,
) -> (Outcome, String) {
    let what = format!("the PgBouncer entry {database} (companion {companion})");
    let entry = match read(
        inputs,
        &what,
        "the companion must be reachable from the agent and share MIGRATOR_WEBHOOK_SECRET",
    ) {
        Ok(Some(RouterView::Pooler(e))) => e,
        Ok(None) => {
            return (
                Outcome::Fail,
                format!(
                    "PgBouncer has no database entry {database}: the agent re-points an entry, never creates one"
                ),
            );
        }
        Ok(Some(other)) => {
            return (
                Outcome::Fail,
                format!("expected a PgBouncer entry, read {other:?}"),
            );
        }
        Err(failed) => return failed,
    };
    let endpoint = source.endpoint.as_ref();
    let points_here = endpoint.is_some_and(|e| {
        e.address
            .trim_end_matches('.')
            .eq_ignore_ascii_case(&entry.host)
            && e.port == entry.port
    });
    if !points_here {
        return (
            Outcome::Fail,
            format!(
                "{what} points at {}:{}, not at this instance's endpoint {}: re-pointing it would move traffic that does not reach this instance",
                entry.host,
                entry.port,
                endpoint.map_or("(none)".to_string(), |e| format!(
                    "{}:{}",
                    e.address, e.port
                ))
            ),
        );
    }
    if entry.paused {
        return (
            Outcome::Fail,
            format!("{what} is paused now: someone else is holding its clients"),
        );
    }
    if let Some(wait) = entry.query_wait_timeout_s
        && wait > 0
        && i64::try_from(wait).unwrap_or(i64::MAX) < budget_s
    {
        return (
            Outcome::Warn,
            format!(
                "{what}: PgBouncer's query_wait_timeout ({wait} s) is shorter than the write budget ({budget_s} s): a client held longer than {wait} s gets an error instead of a late answer; raise it (0 = wait for ever) before the cutover"
            ),
        );
    }
    (
        Outcome::Pass,
        format!(
            "{what}: clients are held (PAUSE) from the quarantine until the entry points at the Aurora writer (RELOAD, RESUME); PgBouncer's query_wait_timeout is {}",
            entry
                .query_wait_timeout_s
                .map_or("unknown".to_string(), |s| format!("{s} s"))
        ),
    )
}
