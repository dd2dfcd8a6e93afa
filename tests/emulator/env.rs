//! The emulator's set-up: the SDK pointed at the shim, the AWS resources the agent needs (queue +
//! DLQ, topic with a subscribed queue, table, VPC, subnet group, security group, parameter group)
//! and the source instances to migrate.

use aurora_migrator::aws::{self, AwsSettings};
use aurora_migrator::core::naming::{TargetNames, target_names};
use aws_sdk_sqs::types::QueueAttributeName;
use std::time::Duration;

use super::shim::Shim;

pub const REGION: &str = "us-east-1";

/// Clients for the test's own calls (playing AWS's part and reading state back).
pub struct Clients {
    pub rds: aws_sdk_rds::Client,
    pub ec2: aws_sdk_ec2::Client,
    pub sqs: aws_sdk_sqs::Client,
    pub sns: aws_sdk_sns::Client,
    pub cw: aws_sdk_cloudwatch::Client,
    pub ddb: aws_sdk_dynamodb::Client,
    pub r53: aws_sdk_route53::Client,
}

pub struct Env {
    pub shim: Shim,
    pub aws: Clients,
    pub settings: AwsSettings,
    pub queue_url: String,
    pub dlq_url: String,
    pub notes_url: String,
    pub vpc_id: String,
    pub app_sg: String,
}

/// A source instance and the names the agent derives for its first attempt.
pub struct Source {
    pub arn: String,
    /// The instance's `DbiResourceId`.
    pub rid: String,
    pub names: TargetNames,
}

impl Env {
    pub async fn new() -> Env {
        Env::with_visibility(6).await
    }

    pub async fn with_visibility(visibility_s: u32) -> Env {
        Env::with_queue(visibility_s, 2).await
    }

    /// The agent's queue with this visibility timeout and redrive after `max_receive` receives.
    pub async fn with_queue(visibility_s: u32, max_receive: u32) -> Env {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                    tracing_subscriber::EnvFilter::new("warn,aurora_migrator=info")
                }),
            )
            .with_test_writer()
            .try_init();
        let shim = Shim::start().await;
        let mut settings = AwsSettings::new("", "", "migrations");
        settings.endpoint_url = Some(shim.endpoint.clone());
        settings.region = Some(REGION.to_string());
        settings.static_credentials = Some(("test".into(), "test".into()));
        settings.sdk_initial_backoff = Duration::from_millis(20);
        settings.sdk_max_attempts = 4;
        settings.describe_cache_ttl = Duration::from_millis(800);
        settings.rds_requests_per_second = 50.0;
        settings.rds_burst = 20.0;
        let conf = aws::sdk_config(&settings).await;
        let aws = Clients {
            rds: aws_sdk_rds::Client::new(&conf),
            ec2: aws_sdk_ec2::Client::new(&conf),
            sqs: aws_sdk_sqs::Client::new(&conf),
            sns: aws_sdk_sns::Client::new(&conf),
            cw: aws_sdk_cloudwatch::Client::new(&conf),
            ddb: aws_sdk_dynamodb::Client::new(&conf),
            r53: aws_sdk_route53::Client::new(&conf),
        };
        // Queue + DLQ
        let dlq_url = create_queue(&aws.sqs, "agent-dlq", &[]).await;
        let dlq_arn = queue_arn(&aws.sqs, &dlq_url).await;
        let redrive =
            serde_json::json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": max_receive});
        let queue_url = create_queue(
            &aws.sqs,
            "agent",
            &[
                (
                    QueueAttributeName::VisibilityTimeout,
                    visibility_s.to_string(),
                ),
                (QueueAttributeName::RedrivePolicy, redrive.to_string()),
            ],
        )
        .await;
        // Topic + subscribed queue
        let topic_arn = aws
            .sns
            .create_topic()
            .name("migrations")
            .send()
            .await
            .unwrap()
            .topic_arn()
            .unwrap()
            .to_string();
        let notes_url = create_queue(&aws.sqs, "notes", &[]).await;
        let notes_arn = queue_arn(&aws.sqs, &notes_url).await;
        aws.sns
            .subscribe()
            .topic_arn(&topic_arn)
            .protocol("sqs")
            .endpoint(notes_arn)
            .send()
            .await
            .unwrap();
        settings.queue_url = queue_url.clone();
        settings.topic_arn = topic_arn;
        aws::create_table(&settings).await.unwrap();
        // Network
        let default_vpc = aws.ec2.describe_vpcs().filters(filter("isDefault", "true"));
        let vpcs = default_vpc.send().await.unwrap();
        let vpc_id = vpcs.vpcs()[0].vpc_id().unwrap().to_string();
        let in_vpc = aws
            .ec2
            .describe_subnets()
            .filters(filter("vpc-id", &vpc_id));
        let subnets = in_vpc.send().await.unwrap();
        let subnet_ids: Vec<String> = subnets
            .subnets()
            .iter()
            .filter_map(|s| s.subnet_id().map(str::to_string))
            .collect();
        let app_sg = create_group(&aws.ec2, &vpc_id, "app-db", "application access").await;
        aws.rds
            .create_db_subnet_group()
            .db_subnet_group_name("db-subnets")
            .db_subnet_group_description("test")
            .set_subnet_ids(Some(subnet_ids))
            .send()
            .await
            .unwrap();
        aws.rds
            .create_db_parameter_group()
            .db_parameter_group_name("src-pg15")
            .db_parameter_group_family("postgres15")
            .description("source")
            .send()
            .await
            .unwrap();
        aws.rds
            .modify_db_parameter_group()
            .db_parameter_group_name("src-pg15")
            .parameters(
                aws_sdk_rds::types::Parameter::builder()
                    .parameter_name("work_mem")
                    .parameter_value("65536")
                    .apply_method(aws_sdk_rds::types::ApplyMethod::Immediate)
                    .build(),
            )
            .send()
            .await
            .unwrap();
        Env {
            shim,
            aws,
            settings,
            queue_url,
            dlq_url,
            notes_url,
            vpc_id,
            app_sg,
        }
    }

    /// A source RDS PostgreSQL instance; `start` tags it for migration.
    pub async fn source(&self, id: &str, start: bool) -> String {
        self.source_encrypted_with(id, start, None).await
    }

    /// A source encrypted with the KMS key `kms_key` (an ARN), when given.
    pub async fn source_encrypted_with(
        &self,
        id: &str,
        start: bool,
        kms_key: Option<&str>,
    ) -> String {
        let mut tags = vec![tag("team", "orders")];
        if start {
            tags.push(tag("aurora-migration", "start"));
            tags.push(tag("aurora-migration:ack-unlogged-tables", "true"));
        }
        let r = self
            .aws
            .rds
            .create_db_instance()
            .db_instance_identifier(id)
            .engine("postgres")
            .engine_version("15.7")
            .db_instance_class("db.r6g.large")
            .allocated_storage(100)
            .master_username("postgres")
            .master_user_password("not-a-secret-1")
            .backup_retention_period(7)
            .db_subnet_group_name("db-subnets")
            .vpc_security_group_ids(&self.app_sg)
            .db_parameter_group_name("src-pg15")
            .auto_minor_version_upgrade(false)
            .storage_encrypted(kms_key.is_some())
            .set_kms_key_id(kms_key.map(str::to_string))
            .set_tags(Some(tags))
            .send()
            .await
            .unwrap();
        r.db_instance()
            .unwrap()
            .db_instance_arn()
            .unwrap()
            .to_string()
    }

    /// A source (tagged to start when `start`) with its resource id and its first attempt's
    /// target names: the set-up every single-migration test begins with.
    pub async fn migration_source(&self, id: &str, start: bool) -> Source {
        let arn = self.source(id, start).await;
        let rid = self.resource_id(id).await;
        let names = target_names(id, &rid, 1);
        Source { arn, rid, names }
    }

    /// The instance's `DbiResourceId`.
    pub async fn resource_id(&self, id: &str) -> String {
        self.instance(id)
            .await
            .unwrap()
            .dbi_resource_id()
            .unwrap()
            .to_string()
    }
}

/// A security group in the VPC; its id.
pub async fn create_group(ec2: &aws_sdk_ec2::Client, vpc: &str, name: &str, what: &str) -> String {
    ec2.create_security_group()
        .group_name(name)
        .description(what)
        .vpc_id(vpc)
        .send()
        .await
        .unwrap()
        .group_id()
        .unwrap()
        .to_string()
}

pub fn tag(k: &str, v: &str) -> aws_sdk_rds::types::Tag {
    aws_sdk_rds::types::Tag::builder().key(k).value(v).build()
}

/// An EC2 filter on one value.
pub fn filter(name: &str, value: &str) -> aws_sdk_ec2::types::Filter {
    aws_sdk_ec2::types::Filter::builder()
        .name(name)
        .values(value)
        .build()
}

/// A queue with these attributes; its URL.
async fn create_queue(
    sqs: &aws_sdk_sqs::Client,
    name: &str,
    attributes: &[(QueueAttributeName, String)],
) -> String {
    let mut create = sqs.create_queue().queue_name(name);
    for (k, v) in attributes {
        create = create.attributes(k.clone(), v);
    }
    let created = create.send().await.unwrap();
    created.queue_url().unwrap().to_string()
}

async fn queue_arn(sqs: &aws_sdk_sqs::Client, url: &str) -> String {
    sqs.get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes()
        .unwrap()
        .get(&QueueAttributeName::QueueArn)
        .unwrap()
        .clone()
}
