//! Route 53 plumbing for the Route 53 router (`core::router::RouterChoice::Route53`): read the
//! team's record, UPSERT it as a CNAME to an endpoint, ask after the change.
//!
//! What it will and will not change: one record, named by the migration's router choice, that
//! is already a simple CNAME (no alias, no weighted/latency/failover routing policy: those are a
//! team's own traffic design, and rewriting one as a plain CNAME would break it). Its TTL is
//! kept. Route 53's answer to the UPSERT is a change that is `PENDING` until every Route 53 DNS
//! server serves the new value (`INSYNC`): the route is in effect then, and clients that cached
//! the old answer keep it for up to the TTL more.

use std::future::Future;

use aws_sdk_route53::Client;
use aws_sdk_route53::types::{
    Change, ChangeAction, ChangeBatch, ChangeInfo, ChangeStatus, ResourceRecord, ResourceRecordSet,
    RrType,
};

use super::CallCounter;
use super::call::{boxed, call};
use crate::core::router::{DnsRecord, RouteProgress};
use crate::ports::{ErrorKind, PortError, PortResult};

pub struct Route53 {
    client: Client,
    calls: CallCounter,
}

/// `Z…` from `/hostedzone/Z…`, `C…` from `/change/C…`: Route 53 hands ids out with the prefix
/// and takes them without it in request paths.
fn bare(id: &str) -> &str {
    id.rsplit('/').next().unwrap_or(id)
}

fn normal(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// A change's progress from Route 53's answer (`ChangeInfo`): `INSYNC` is in effect.
fn progress(op: &str, info: Option<&ChangeInfo>) -> PortResult<RouteProgress> {
    let info = info.ok_or_else(|| {
        PortError::new(
            ErrorKind::Retryable,
            op,
            "Route 53 answered without ChangeInfo",
        )
    })?;
    Ok(match info.status() {
        ChangeStatus::Insync => RouteProgress::InEffect,
        _ => RouteProgress::Propagating {
            change: bare(info.id()).to_string(),
        },
    })
}

impl Route53 {
    pub fn new(client: Client, calls: CallCounter) -> Self {
        Route53 { client, calls }
    }

    /// The record `name` in `zone`, of any type (`None`: the zone has no record by that name).
    pub fn record(
        &self,
        zone: &str,
        name: &str,
    ) -> impl Future<Output = PortResult<Option<DnsRecord>>> + Send {
        let (zone, name) = (bare(zone).to_string(), normal(name));
        boxed(async move {
            // Records are listed in name order from `start_record_name`: the first is ours or
            // there is none by that name.
            let page = call(
                &self.calls,
                "route53:ListResourceRecordSets",
                self.client
                    .list_resource_record_sets()
                    .hosted_zone_id(&zone)
                    .start_record_name(&name)
                    .max_items(1)
                    .send(),
            )
            .await?;
            Ok(page
                .resource_record_sets()
                .iter()
                .find(|r| normal(r.name()) == name)
                .map(|r| DnsRecord {
                    name: normal(r.name()),
                    kind: r.r#type().as_str().to_string(),
                    values: r
                        .resource_records()
                        .iter()
                        .map(|v| normal(v.value()))
                        .collect(),
                    ttl: r.ttl(),
                    special: if r.alias_target().is_some() {
                        Some("an alias record".to_string())
                    } else {
                        r.set_identifier()
                            .map(|id| format!("a routing policy (set identifier {id:?})"))
                    },
                }))
        })
    }

    /// Points the CNAME `name` in `zone` at `target`, keeping its TTL. Refuses (Fatal, nothing
    /// changed) a record that is missing, not a CNAME, or not a simple one.
    pub fn point(
        &self,
        zone: &str,
        name: &str,
        target: &str,
    ) -> impl Future<Output = PortResult<RouteProgress>> + Send {
        let (zone, name, target) = (bare(zone).to_string(), normal(name), normal(target));
        boxed(async move {
            let op = "route53:ChangeResourceRecordSets";
            let refuse = |why: String| Err(PortError::new(ErrorKind::Fatal, op, why));
            let record = match self.record(&zone, &name).await? {
                None => {
                    return refuse(format!(
                        "the hosted zone {zone} has no record {name}: create it as a CNAME to the source's endpoint; the agent changes it, never creates it"
                    ));
                }
                Some(r) if r.kind != "CNAME" => {
                    return refuse(format!(
                        "{name} in {zone} is a {} record, not a CNAME: the agent re-points CNAMEs only",
                        r.kind
                    ));
                }
                Some(DnsRecord {
                    special: Some(what),
                    ..
                }) => {
                    return refuse(format!(
                        "{name} in {zone} is {what}: the agent re-points simple CNAMEs only"
                    ));
                }
                Some(r) => r,
            };
            let built = |e: aws_sdk_route53::error::BuildError| {
                PortError::new(ErrorKind::Fatal, op, format!("request: {e}"))
            };
            let set = ResourceRecordSet::builder()
                .name(&name)
                .r#type(RrType::Cname)
                .ttl(record.ttl.unwrap_or(60))
                .resource_records(
                    ResourceRecord::builder()
                        .value(&target)
                        .build()
                        .map_err(built)?,
                )
                .build()
                .map_err(built)?;
            let batch = ChangeBatch::builder()
                .comment("aurora-migrator: route")
                .changes(
                    Change::builder()
                        .action(ChangeAction::Upsert)
                        .resource_record_set(set)
                        .build()
                        .map_err(built)?,
                )
                .build()
                .map_err(built)?;
            let answer = call(
                &self.calls,
                op,
                self.client
                    .change_resource_record_sets()
                    .hosted_zone_id(&zone)
                    .change_batch(batch)
                    .send(),
            )
            .await?;
            progress(op, answer.change_info())
        })
    }

    /// Whether change `change` has reached every Route 53 DNS server.
    pub fn change(&self, change: &str) -> impl Future<Output = PortResult<RouteProgress>> + Send {
        let change = bare(change).to_string();
        boxed(async move {
            let op = "route53:GetChange";
            let answer = call(&self.calls, op, self.client.get_change().id(&change).send()).await?;
            progress(op, answer.change_info())
        })
    }
}
