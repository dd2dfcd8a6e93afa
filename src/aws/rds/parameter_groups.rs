//! The migration's Aurora parameter groups (cluster and instance): whether they exist, and creating
//! and filling them.
//!
//! Guarantees: creating is idempotent (groups are named by content hash, so an existing group of
//! that name has this content and its creation conflict is success); parameters are set in chunks
//! of at most 20, the API's limit per call. Created groups carry the `<prefix>:source` tag
//! (`shared`), which the task role's IAM policy requires on creates.

use aws_sdk_rds::types::Parameter as SdkParameter;

use super::AwsRds;
use crate::aws::classify::found;
use crate::core::action::{ParameterGroupsSpec, TranslatedParameter};
use crate::core::observation::ParameterGroupsPresent;
use crate::ports::{ErrorKind, PortResult};

impl AwsRds {
    /// [`crate::ports::Rds::parameter_groups_present`]: whether each group exists.
    pub(super) async fn read_parameter_groups(
        &self,
        cluster_group: &str,
        instance_group: &str,
    ) -> PortResult<ParameterGroupsPresent> {
        let request = self
            .client
            .describe_db_cluster_parameter_groups()
            .db_cluster_parameter_group_name(cluster_group);
        let cluster = found(
            self.call("rds:DescribeDBClusterParameterGroups", request.send())
                .await,
        )?
        .is_some_and(|r| !r.db_cluster_parameter_groups().is_empty());
        let request = self
            .client
            .describe_db_parameter_groups()
            .db_parameter_group_name(instance_group);
        let instance = found(
            self.call("rds:DescribeDBParameterGroups", request.send())
                .await,
        )?
        .is_some_and(|r| !r.db_parameter_groups().is_empty());
        Ok(ParameterGroupsPresent { cluster, instance })
    }

    /// [`crate::ports::Rds::ensure_parameter_groups`]: creates each group unless it exists, then
    /// sets its parameters.
    pub(super) async fn ensure_groups(&self, spec: &ParameterGroupsSpec) -> PortResult<()> {
        // Groups are named by content hash: an existing group of that name has this content.
        let request = self
            .client
            .create_db_cluster_parameter_group()
            .db_cluster_parameter_group_name(&spec.cluster_group)
            .db_parameter_group_family(&spec.family)
            .description(&spec.description)
            .set_tags(Some(self.source_tag("shared")));
        existing_if_conflict(
            self.call("rds:CreateDBClusterParameterGroup", request.send())
                .await,
        )?;
        self.modify_parameters(&spec.cluster_group, true, &spec.cluster_parameters)
            .await?;
        let request = self
            .client
            .create_db_parameter_group()
            .db_parameter_group_name(&spec.instance_group)
            .db_parameter_group_family(&spec.family)
            .description(&spec.description)
            .set_tags(Some(self.source_tag("shared")));
        existing_if_conflict(
            self.call("rds:CreateDBParameterGroup", request.send())
                .await,
        )?;
        self.modify_parameters(&spec.instance_group, false, &spec.instance_parameters)
            .await
    }

    async fn modify_parameters(
        &self,
        group: &str,
        cluster: bool,
        params: &[TranslatedParameter],
    ) -> PortResult<()> {
        // ModifyDB(Cluster)ParameterGroup takes at most 20 parameters per call.
        for chunk in params.chunks(20) {
            let list: Vec<SdkParameter> = chunk
                .iter()
                .map(|p| {
                    SdkParameter::builder()
                        .parameter_name(&p.name)
                        .parameter_value(&p.value)
                        .apply_method(aws_sdk_rds::types::ApplyMethod::from(
                            p.apply_method.as_str(),
                        ))
                        .build()
                })
                .collect();
            if cluster {
                let request = self
                    .client
                    .modify_db_cluster_parameter_group()
                    .db_cluster_parameter_group_name(group)
                    .set_parameters(Some(list));
                self.call("rds:ModifyDBClusterParameterGroup", request.send())
                    .await?;
            } else {
                let request = self
                    .client
                    .modify_db_parameter_group()
                    .db_parameter_group_name(group)
                    .set_parameters(Some(list));
                self.call("rds:ModifyDBParameterGroup", request.send())
                    .await?;
            }
        }
        Ok(())
    }
}

/// A create whose conflict means the group exists (named by content: the same group).
fn existing_if_conflict<T>(created: PortResult<T>) -> PortResult<()> {
    match created {
        Err(e) if e.kind != ErrorKind::Conflict => Err(e),
        _ => Ok(()),
    }
}
