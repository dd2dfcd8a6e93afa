//! EC2: the quarantine security group (no egress; ingress only from declared CDC consumers).

use std::future::Future;

use aws_sdk_ec2::Client;
use aws_sdk_ec2::types::{
    Filter, IpPermission, ResourceType, SecurityGroup as Ec2Group, Tag, TagSpecification,
    UserIdGroupPair,
};

use super::CallCounter;
use super::call::{boxed, call, call_unless};
use super::classify::found;
use crate::core::action::QuarantineGroupSpec;
use crate::core::observation::{GroupLocation, Observed, SecurityGroup};
use crate::ports::{ErrorKind, Network, PortError, PortResult};

pub struct AwsNetwork {
    client: Client,
    calls: CallCounter,
}

/// Every source a rule admits: groups by id, ranges by CIDR, prefix lists by id.
fn sources(p: &IpPermission) -> Vec<String> {
    let mut out: Vec<String> = p
        .user_id_group_pairs()
        .iter()
        .filter_map(|g| g.group_id().map(str::to_string))
        .collect();
    out.extend(
        p.ip_ranges()
            .iter()
            .filter_map(|r| r.cidr_ip().map(str::to_string)),
    );
    out.extend(
        p.ipv6_ranges()
            .iter()
            .filter_map(|r| r.cidr_ipv6().map(str::to_string)),
    );
    out.extend(
        p.prefix_list_ids()
            .iter()
            .filter_map(|r| r.prefix_list_id().map(str::to_string)),
    );
    out
}

fn group_of(g: &Ec2Group) -> SecurityGroup {
    SecurityGroup {
        id: g.group_id().unwrap_or_default().to_string(),
        name: g.group_name().unwrap_or_default().to_string(),
        ingress_sources: g.ip_permissions().iter().flat_map(sources).collect(),
        egress_rules: g
            .ip_permissions_egress()
            .iter()
            .map(|p| sources(p).len().max(1))
            .sum(),
    }
}

impl AwsNetwork {
    pub fn new(client: Client, calls: CallCounter) -> Self {
        AwsNetwork { client, calls }
    }

    async fn find(&self, vpc_id: &str, name: &str) -> PortResult<Option<Ec2Group>> {
        let filters = vec![
            Filter::builder().name("vpc-id").values(vpc_id).build(),
            Filter::builder().name("group-name").values(name).build(),
        ];
        Ok(self.describe_groups(filters).await?.into_iter().next())
    }

    /// DescribeSecurityGroups with these filters.
    async fn describe_groups(&self, filters: Vec<Filter>) -> PortResult<Vec<Ec2Group>> {
        let request = self
            .client
            .describe_security_groups()
            .set_filters(Some(filters));
        let r = call(&self.calls, "ec2:DescribeSecurityGroups", request.send()).await?;
        Ok(r.security_groups.unwrap_or_default())
    }
}

impl Network for AwsNetwork {
    fn locate_groups(
        &self,
        ids: &[String],
    ) -> impl Future<Output = PortResult<Vec<GroupLocation>>> + Send {
        boxed(async move {
            if ids.is_empty() {
                return Ok(Vec::new());
            }
            // A `group-id` filter, not GroupIds: one missing id must not hide the others.
            let filter = Filter::builder()
                .name("group-id")
                .set_values(Some(ids.to_vec()))
                .build();
            Ok(self
                .describe_groups(vec![filter])
                .await?
                .iter()
                .map(|g| GroupLocation {
                    id: g.group_id().unwrap_or_default().to_string(),
                    vpc_id: g.vpc_id().unwrap_or_default().to_string(),
                    owner_id: g.owner_id().unwrap_or_default().to_string(),
                })
                .collect())
        })
    }

    fn describe_group(
        &self,
        vpc_id: &str,
        name: &str,
    ) -> impl Future<Output = PortResult<Observed<SecurityGroup>>> + Send {
        boxed(async move { Ok(self.find(vpc_id, name).await?.as_ref().map(group_of).into()) })
    }

    fn ensure_quarantine_group(
        &self,
        spec: &QuarantineGroupSpec,
    ) -> impl Future<Output = PortResult<String>> + Send {
        boxed(async move {
            let group = match self.find(&spec.vpc_id, &spec.name).await? {
                Some(g) => g,
                None => {
                    const OP: &str = "ec2:CreateSecurityGroup";
                    let tags: Vec<Tag> = spec
                        .tags
                        .iter()
                        .map(|(k, v)| Tag::builder().key(k).value(v).build())
                        .collect();
                    let request = self
                    .client
                    .create_security_group()
                    .group_name(&spec.name)
                    .vpc_id(&spec.vpc_id)
                    .description("aurora-migrator quarantine: no egress, ingress only from declared CDC consumers")
                    .tag_specifications(
                        TagSpecification::builder()
                            .resource_type(ResourceType::SecurityGroup)
                            .set_tags(Some(tags))
                            .build(),
                    );
                    // A duplicate: created by a repeat or a concurrent step; found below.
                    call_unless(&self.calls, OP, "InvalidGroup.Duplicate", request.send()).await?;
                    self.find(&spec.vpc_id, &spec.name).await?.ok_or_else(|| {
                        PortError::new(
                            ErrorKind::Retryable,
                            OP,
                            format!("group {} not visible after creation", spec.name),
                        )
                    })?
                }
            };
            let gid = group.group_id().unwrap_or_default().to_string();
            // Ours only if it carries our tags (the migration id).
            let have: std::collections::BTreeMap<&str, &str> = group
                .tags()
                .iter()
                .filter_map(|t| Some((t.key()?, t.value().unwrap_or_default())))
                .collect();
            let ours = spec
                .tags
                .iter()
                .all(|(k, v)| have.get(k.as_str()) == Some(&v.as_str()));
            if !ours {
                return Err(PortError::new(
                    ErrorKind::Conflict,
                    "ec2:CreateSecurityGroup",
                    format!(
                        "a security group named {} exists in {} and is not this migration's",
                        spec.name, spec.vpc_id
                    ),
                ));
            }
            // No egress at all.
            if !group.ip_permissions_egress().is_empty() {
                let request = self
                    .client
                    .revoke_security_group_egress()
                    .group_id(&gid)
                    .set_ip_permissions(Some(group.ip_permissions_egress().to_vec()));
                found(call(&self.calls, "ec2:RevokeSecurityGroupEgress", request.send()).await)?;
            }
            // Ingress exactly from the consumers, on the database port.
            let port = i32::from(spec.port);
            let mut present = Vec::new();
            let mut unwanted = Vec::new();
            for p in group.ip_permissions() {
                let exact = p.ip_protocol() == Some("tcp")
                    && p.from_port() == Some(port)
                    && p.to_port() == Some(port)
                    && p.ip_ranges().is_empty()
                    && p.ipv6_ranges().is_empty()
                    && p.prefix_list_ids().is_empty()
                    && p.user_id_group_pairs().iter().all(|g| {
                        g.group_id()
                            .is_some_and(|id| spec.allow_from.iter().any(|a| a == id))
                    });
                if exact {
                    present.extend(sources(p));
                } else {
                    unwanted.push(p.clone());
                }
            }
            if !unwanted.is_empty() {
                let request = self
                    .client
                    .revoke_security_group_ingress()
                    .group_id(&gid)
                    .set_ip_permissions(Some(unwanted));
                call(
                    &self.calls,
                    "ec2:RevokeSecurityGroupIngress",
                    request.send(),
                )
                .await?;
            }
            let missing: Vec<UserIdGroupPair> = spec
                .allow_from
                .iter()
                .filter(|g| !present.contains(g))
                .map(|g| UserIdGroupPair::builder().group_id(g).build())
                .collect();
            if !missing.is_empty() {
                let request = self
                    .client
                    .authorize_security_group_ingress()
                    .group_id(&gid)
                    .ip_permissions(
                        IpPermission::builder()
                            .ip_protocol("tcp")
                            .from_port(port)
                            .to_port(port)
                            .set_user_id_group_pairs(Some(missing))
                            .build(),
                    );
                // Already allowed (a repeat): what we asked for.
                call_unless(
                    &self.calls,
                    "ec2:AuthorizeSecurityGroupIngress",
                    "InvalidPermission.Duplicate",
                    request.send(),
                )
                .await?;
            }
            Ok(gid)
        })
    }

    fn delete_group(&self, group_id: &str) -> impl Future<Output = PortResult<()>> + Send {
        boxed(async move {
            let request = self.client.delete_security_group().group_id(group_id);
            // Already gone: deleted.
            found(call(&self.calls, "ec2:DeleteSecurityGroup", request.send()).await).map(drop)
        })
    }
}
