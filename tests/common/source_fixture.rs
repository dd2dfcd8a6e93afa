//! The one healthy RDS for PostgreSQL source the test worlds start from (the table tests' model
//! and the real-PostgreSQL world): each world overrides what it models itself (status, groups,
//! endpoint, tags, encryption) with struct update syntax.

use aurora_migrator::core::observation::{
    Endpoint, GroupMembership, ParameterGroupMembership, SourceInstance,
};

/// `orders-pg`: PostgreSQL 15.4 on db.r6g.large, 200 GiB, 7 days of backups, in-sync
/// parameter group, no replicas, in `vpc-1` behind `sg-app`, no tags.
pub fn healthy_source(identifier: &str, arn: &str, resource_id: &str) -> SourceInstance {
    SourceInstance {
        identifier: identifier.into(),
        arn: arn.into(),
        resource_id: resource_id.into(),
        engine: "postgres".into(),
        engine_version: "15.4".into(),
        status: "available".into(),
        instance_class: "db.r6g.large".into(),
        allocated_storage_gib: 200,
        has_pending_modifications: false,
        parameter_group: ParameterGroupMembership {
            name: "orders-pg15".into(),
            apply_status: "in-sync".into(),
        },
        backup_retention_days: 7,
        read_replicas: vec![],
        aurora_replica_clusters: vec![],
        storage_encrypted: false,
        kms_key_id: None,
        iam_auth_enabled: false,
        master_user_secret_arn: None,
        db_name: None,
        deletion_protection: false,
        auto_minor_version_upgrade: false,
        security_groups: vec![GroupMembership {
            id: "sg-app".into(),
            status: "active".into(),
        }],
        vpc_id: "vpc-1".into(),
        subnet_group: "db-subnets".into(),
        endpoint: Some(Endpoint {
            address: format!("{identifier}.abc.us-east-1.rds.amazonaws.com"),
            port: 5432,
        }),
        multi_az: false,
        tags: Default::default(),
    }
}
