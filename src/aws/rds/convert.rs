//! Conversions from the SDK's RDS types to the core's: the source instance, the target cluster,
//! tags, and whether an SDK resource is the one a name (identifier or ARN) designates.
//!
//! Pure functions, no I/O: a missing SDK field becomes the empty string (`opt`), zero or `false`,
//! never an error, so a partial answer is still observed (the core decides what a missing field
//! means); identifiers match case-insensitively (RDS ignores their case), ARNs exactly.

use std::collections::BTreeMap;

use aws_sdk_rds::types::{
    DbCluster, DbInstance, Parameter as SdkParameter, Tag, VpcSecurityGroupMembership,
};

use crate::core::observation::{
    ClusterMember, Endpoint, GroupMembership, ParameterGroupMembership, SourceInstance,
    TargetCluster,
};

pub(super) fn opt(s: Option<&str>) -> String {
    s.unwrap_or_default().to_string()
}

pub(super) fn tags_of(list: &[Tag]) -> BTreeMap<String, String> {
    list.iter()
        .filter_map(|t| Some((t.key()?.to_string(), opt(t.value()))))
        .collect()
}

pub(super) fn sdk_tags(tags: &BTreeMap<String, String>) -> Vec<Tag> {
    tags.iter()
        .map(|(k, v)| Tag::builder().key(k).value(v).build())
        .collect()
}

/// An instance's or a cluster's security groups.
fn memberships(groups: &[VpcSecurityGroupMembership]) -> Vec<GroupMembership> {
    groups
        .iter()
        .map(|g| GroupMembership {
            id: opt(g.vpc_security_group_id()),
            status: opt(g.status()),
        })
        .collect()
}

/// The SDK's instance as the core's source.
pub fn source_of(i: &DbInstance) -> SourceInstance {
    let pending = i
        .pending_modified_values()
        .is_some_and(|p| *p != aws_sdk_rds::types::PendingModifiedValues::builder().build());
    let pg = i.db_parameter_groups().first();
    SourceInstance {
        identifier: opt(i.db_instance_identifier()),
        arn: opt(i.db_instance_arn()),
        resource_id: opt(i.dbi_resource_id()),
        engine: opt(i.engine()),
        engine_version: opt(i.engine_version()),
        status: opt(i.db_instance_status()),
        instance_class: opt(i.db_instance_class()),
        allocated_storage_gib: i.allocated_storage().unwrap_or(0).max(0) as u32,
        has_pending_modifications: pending,
        parameter_group: ParameterGroupMembership {
            name: opt(pg.and_then(|g| g.db_parameter_group_name())),
            apply_status: opt(pg.and_then(|g| g.parameter_apply_status())),
        },
        backup_retention_days: i.backup_retention_period().unwrap_or(0).max(0) as u32,
        read_replicas: i.read_replica_db_instance_identifiers().to_vec(),
        aurora_replica_clusters: i.read_replica_db_cluster_identifiers().to_vec(),
        storage_encrypted: i.storage_encrypted().unwrap_or(false),
        kms_key_id: i.kms_key_id().map(str::to_string),
        iam_auth_enabled: i.iam_database_authentication_enabled().unwrap_or(false),
        master_user_secret_arn: i
            .master_user_secret()
            .and_then(|s| s.secret_arn())
            .map(str::to_string),
        db_name: i.db_name().map(str::to_string),
        deletion_protection: i.deletion_protection().unwrap_or(false),
        auto_minor_version_upgrade: i.auto_minor_version_upgrade().unwrap_or(false),
        security_groups: memberships(i.vpc_security_groups()),
        vpc_id: opt(i.db_subnet_group().and_then(|g| g.vpc_id())),
        subnet_group: opt(i.db_subnet_group().and_then(|g| g.db_subnet_group_name())),
        endpoint: i.endpoint().and_then(|e| {
            Some(Endpoint {
                address: e.address()?.to_string(),
                port: e.port().unwrap_or(5432) as u16,
            })
        }),
        multi_az: i.multi_az().unwrap_or(false),
        tags: tags_of(i.tag_list()),
    }
}

pub(super) fn matches_instance(i: &DbInstance, name: &str) -> bool {
    i.db_instance_identifier()
        .is_some_and(|id| id.eq_ignore_ascii_case(name))
        || i.db_instance_arn() == Some(name)
}

pub(super) fn matches_cluster(c: &DbCluster, name: &str) -> bool {
    c.db_cluster_identifier()
        .is_some_and(|id| id.eq_ignore_ascii_case(name))
        || c.db_cluster_arn() == Some(name)
}

/// The SDK's cluster as the core's target, with its members' statuses as described.
pub(super) fn target_from(c: &DbCluster, members: Vec<ClusterMember>) -> TargetCluster {
    TargetCluster {
        identifier: opt(c.db_cluster_identifier()),
        arn: opt(c.db_cluster_arn()),
        status: opt(c.status()),
        replication_source: c
            .replication_source_identifier()
            .filter(|s| !s.is_empty())
            .map(str::to_string),
        tags: tags_of(c.tag_list()),
        writer_endpoint: c.endpoint().map(|a| Endpoint {
            address: a.to_string(),
            port: c.port().unwrap_or(5432) as u16,
        }),
        security_groups: memberships(c.vpc_security_groups()),
        members,
    }
}

/// The extensions a parameter group family offers: the `AllowedValues` of its
/// `rds.allowed_extensions` parameter, comma-separated (spaces around a name ignored, empty
/// items dropped). `None` when the parameter or its `AllowedValues` is absent.
pub(super) fn allowed_extensions(parameters: &[SdkParameter]) -> Option<Vec<String>> {
    let allowed = parameters
        .iter()
        .find(|p| p.parameter_name() == Some("rds.allowed_extensions"))?
        .allowed_values()?;
    Some(
        allowed
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(str::to_string)
            .collect(),
    )
}

/// The fleet snapshot keeps describing an instance the agent changed directly while RDS shows
/// the change still being applied (`cache::Settles`).
impl super::cache::Settles for DbInstance {
    fn is_named(&self, key: &str) -> bool {
        matches_instance(self, key)
    }
    fn settling(&self) -> bool {
        let groups = self
            .vpc_security_groups()
            .iter()
            .map(|g| g.status().unwrap_or_default());
        let status = self.db_instance_status().unwrap_or_default();
        super::cache::settling(status, &super::cache::INSTANCE_SETTLING, groups)
    }
}

/// As for instances: a cluster being promoted or modified, or its groups being changed.
impl super::cache::Settles for DbCluster {
    fn is_named(&self, key: &str) -> bool {
        matches_cluster(self, key)
    }
    fn settling(&self) -> bool {
        let groups = self
            .vpc_security_groups()
            .iter()
            .map(|g| g.status().unwrap_or_default());
        let status = self.status().unwrap_or_default();
        super::cache::settling(status, &super::cache::CLUSTER_SETTLING, groups)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parameter(name: &str, allowed: Option<&str>) -> SdkParameter {
        SdkParameter::builder()
            .parameter_name(name)
            .set_allowed_values(allowed.map(str::to_string))
            .build()
    }

    #[test]
    fn allowed_extensions_are_the_comma_separated_allowed_values() {
        let ps = [
            parameter("work_mem", Some("64-2147483647")),
            parameter(
                "rds.allowed_extensions",
                Some("plpgsql, pg_stat_statements,postgis ,  pgvector,,"),
            ),
        ];
        assert_eq!(
            allowed_extensions(&ps),
            Some(vec![
                "plpgsql".to_string(),
                "pg_stat_statements".to_string(),
                "postgis".to_string(),
                "pgvector".to_string(),
            ])
        );
    }

    #[test]
    fn no_parameter_or_no_allowed_values_is_none() {
        assert_eq!(
            allowed_extensions(&[parameter("work_mem", Some("1-2"))]),
            None
        );
        assert_eq!(
            allowed_extensions(&[parameter("rds.allowed_extensions", None)]),
            None
        );
    }
}
