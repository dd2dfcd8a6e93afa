//! EC2: the quarantine security group (`Network` port).

use super::*;

impl Network for SimPort {
    /// The simulated fleet declares no CDC consumers: nothing to locate.
    async fn locate_groups(&self, _ids: &[String]) -> PortResult<Vec<GroupLocation>> {
        self.call("ec2:DescribeSecurityGroups", false, |_| Ok(Vec::new()))
            .await
    }

    async fn describe_group(
        &self,
        vpc_id: &str,
        name: &str,
    ) -> PortResult<Observed<SecurityGroup>> {
        self.call("ec2:DescribeSecurityGroups", false, |s| {
            Ok(s.groups
                .values()
                .find(|g| g.vpc == vpc_id && g.view.name == name)
                .map_or(Observed::Absent, |g| Observed::Present(g.view.clone())))
        })
        .await
    }

    async fn ensure_quarantine_group(&self, spec: &QuarantineGroupSpec) -> PortResult<String> {
        let existing = self
            .call("ec2:CreateSecurityGroup", true, |s| {
                if let Some(g) = s
                    .groups
                    .values()
                    .find(|g| g.vpc == spec.vpc_id && g.view.name == spec.name)
                {
                    return Ok(g.view.id.clone());
                }
                let id = format!("sg-q{:05}", s.next_group);
                s.next_group += 1;
                s.groups.insert(
                    id.clone(),
                    Group {
                        view: SecurityGroup {
                            id: id.clone(),
                            name: spec.name.clone(),
                            ingress_sources: Vec::new(),
                            // A new group allows all egress until it is revoked.
                            egress_rules: 1,
                        },
                        vpc: spec.vpc_id.clone(),
                    },
                );
                Ok(id)
            })
            .await?;
        self.call("ec2:RevokeSecurityGroupEgress", true, |s| {
            if let Some(g) = s.groups.get_mut(&existing) {
                g.view.egress_rules = 0;
                g.view.ingress_sources = spec.allow_from.clone();
            }
            Ok(existing.clone())
        })
        .await
    }

    async fn delete_group(&self, group_id: &str) -> PortResult<()> {
        self.call("ec2:DeleteSecurityGroup", true, |s| {
            let in_use = s.sources.values().any(|src| {
                src.deleted_at.is_none()
                    && src.view.security_groups.iter().any(|g| g.id == group_id)
            }) || s
                .clusters
                .values()
                .any(|c| c.view.security_groups.iter().any(|g| g.id == group_id));
            if in_use {
                return Err(PortError::new(
                    ErrorKind::Conflict,
                    "ec2:DeleteSecurityGroup",
                    "DependencyViolation",
                ));
            }
            match s.groups.remove(group_id) {
                Some(_) => Ok(()),
                None => Err(PortError::new(
                    ErrorKind::NotFound,
                    "ec2:DeleteSecurityGroup",
                    "InvalidGroup.NotFound",
                )),
            }
        })
        .await
    }
}
