//! EC2: the quarantine security group (no egress; ingress only from declared CDC consumers).

use aws_sdk_ec2::Client;
use aws_sdk_ec2::types::{
    Filter, IpPermission, ResourceType, SecurityGroup as Ec2Group, Tag, TagSpecification,
    UserIdGroupPair,
};

use super::CallCounter;
use super::classify::{absent_if_not_found, classify_counted, code};
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
        const OP: &str = "ec2:DescribeSecurityGroups";
        self.calls.count(OP);
        let r = self
            .client
            .describe_security_groups()
            .filters(Filter::builder().name("vpc-id").values(vpc_id).build())
            .filters(Filter::builder().name("group-name").values(name).build())
            .send()
            .await
            .map_err(|e| classify_counted(&self.calls, OP, &e))?;
        Ok(r.security_groups().first().cloned())
    }
}

impl Network for AwsNetwork {
    fn locate_groups(
        &self,
        ids: &[String],
    ) -> impl std::future::Future<Output = PortResult<Vec<GroupLocation>>> + Send {
        Box::pin(async move {
            const OP: &str = "ec2:DescribeSecurityGroups";
            if ids.is_empty() {
                return Ok(Vec::new());
            }
            self.calls.count(OP);
            // A `group-id` filter, not GroupIds: one missing id must not hide the others.
            let r = self
                .client
                .describe_security_groups()
                .filters(
                    Filter::builder()
                        .name("group-id")
                        .set_values(Some(ids.to_vec()))
                        .build(),
                )
                .send()
                .await
                .map_err(|e| classify_counted(&self.calls, OP, &e))?;
            Ok(r.security_groups()
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
    ) -> impl std::future::Future<Output = PortResult<Observed<SecurityGroup>>> + Send {
        Box::pin(async move { Ok(self.find(vpc_id, name).await?.as_ref().map(group_of).into()) })
    }

    fn ensure_quarantine_group(
        &self,
        spec: &QuarantineGroupSpec,
    ) -> impl std::future::Future<Output = PortResult<String>> + Send {
        Box::pin(async move {
            let group = match self.find(&spec.vpc_id, &spec.name).await? {
                Some(g) => g,
                None => {
                    const OP: &str = "ec2:CreateSecurityGroup";
                    self.calls.count(OP);
                    let tags: Vec<Tag> = spec
                        .tags
                        .iter()
                        .map(|(k, v)| Tag::builder().key(k).value(v).build())
                        .collect();
                    let r = self
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
                    )
                    .send()
                    .await;
                    match r {
                        Ok(_) => {}
                        Err(e) if code(&e) == Some("InvalidGroup.Duplicate") => {}
                        Err(e) => return Err(classify_counted(&self.calls, OP, &e)),
                    }
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
                const OP: &str = "ec2:RevokeSecurityGroupEgress";
                self.calls.count(OP);
                let r = self
                    .client
                    .revoke_security_group_egress()
                    .group_id(&gid)
                    .set_ip_permissions(Some(group.ip_permissions_egress().to_vec()))
                    .send()
                    .await;
                if let Err(e) = r {
                    let err = classify_counted(&self.calls, OP, &e);
                    if err.kind != ErrorKind::NotFound {
                        return Err(err);
                    }
                }
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
                const OP: &str = "ec2:RevokeSecurityGroupIngress";
                self.calls.count(OP);
                self.client
                    .revoke_security_group_ingress()
                    .group_id(&gid)
                    .set_ip_permissions(Some(unwanted))
                    .send()
                    .await
                    .map_err(|e| classify_counted(&self.calls, OP, &e))?;
            }
            let missing: Vec<UserIdGroupPair> = spec
                .allow_from
                .iter()
                .filter(|g| !present.contains(g))
                .map(|g| UserIdGroupPair::builder().group_id(g).build())
                .collect();
            if !missing.is_empty() {
                const OP: &str = "ec2:AuthorizeSecurityGroupIngress";
                self.calls.count(OP);
                let r = self
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
                    )
                    .send()
                    .await;
                match r {
                    Ok(_) => {}
                    Err(e) if code(&e) == Some("InvalidPermission.Duplicate") => {}
                    Err(e) => return Err(classify_counted(&self.calls, OP, &e)),
                }
            }
            Ok(gid)
        })
    }

    fn delete_group(
        &self,
        group_id: &str,
    ) -> impl std::future::Future<Output = PortResult<()>> + Send {
        Box::pin(async move {
            const OP: &str = "ec2:DeleteSecurityGroup";
            self.calls.count(OP);
            match self
                .client
                .delete_security_group()
                .group_id(group_id)
                .send()
                .await
            {
                Ok(_) => Ok(()),
                // Already gone: deleted.
                Err(e) => {
                    absent_if_not_found::<()>(classify_counted(&self.calls, OP, &e)).map(drop)
                }
            }
        })
    }
}
