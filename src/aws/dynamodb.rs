//! DynamoDB: the migration records, every write conditional on the version read.
//!
//! Item layout: `pk` (S) = the source's `DbiResourceId`, `sk` (S) = `attempt#0001`, `version`
//! (N) for the condition, `record` (S) = the [`Migration`] as JSON, plus `phase`, `source` and
//! `updated_at` for people and listings. The fleet-wide pause is the item (`#fleet`, `pause`).

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType, TableStatus,
};

use super::call::{all_pages, boxed, call, call_unless};
use super::{CallCounter, ConnectError};
use crate::core::migration::{Migration, MigrationId};
use crate::ports::{ErrorKind, PortError, PortResult, StateStore, StoreError};

const FLEET_PK: &str = "#fleet";
const PAUSE_SK: &str = "pause";
const ATTEMPT_PREFIX: &str = "attempt#";

pub struct AwsStore {
    client: Client,
    calls: CallCounter,
    table: String,
}

pub fn sort_key(attempt: u32) -> String {
    format!("{ATTEMPT_PREFIX}{attempt:04}")
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

impl AwsStore {
    pub fn new(client: Client, calls: CallCounter, table: &str) -> Self {
        AwsStore {
            client,
            calls,
            table: table.to_string(),
        }
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    fn decode(&self, item: &HashMap<String, AttributeValue>) -> PortResult<Migration> {
        let bad = |why: String| {
            PortError::new(
                ErrorKind::Fatal,
                "dynamodb:decode",
                format!("a record in {} is unreadable: {why}", self.table),
            )
        };
        let record = item
            .get("record")
            .and_then(|v| v.as_s().ok())
            .ok_or_else(|| bad("no `record` attribute".into()))?;
        let mut m: Migration =
            serde_json::from_str(record).map_err(|e| bad(format!("record JSON: {e}")))?;
        if let Some(v) = item
            .get("version")
            .and_then(|v| v.as_n().ok())
            .and_then(|n| n.parse().ok())
        {
            m.version = v;
        }
        Ok(m)
    }

    /// A consistent read of one item.
    async fn get(
        &self,
        pk: AttributeValue,
        sk: AttributeValue,
    ) -> PortResult<Option<HashMap<String, AttributeValue>>> {
        let request = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", pk)
            .key("sk", sk)
            .consistent_read(true);
        Ok(call(&self.calls, "dynamodb:GetItem", request.send())
            .await?
            .item)
    }

    /// Start-up check: the table exists and can be read.
    pub async fn check_table(&self) -> Result<(), ConnectError> {
        let request = self.client.describe_table().table_name(&self.table);
        match call_unless(
            &self.calls,
            "dynamodb:DescribeTable",
            "ResourceNotFoundException",
            request.send(),
        )
        .await
        {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(ConnectError::NoTable(self.table.clone())),
            Err(error) => Err(ConnectError::Table {
                table: self.table.clone(),
                error,
            }),
        }
    }

    /// Creates the table (on-demand billing) if missing and waits until it is active.
    pub async fn create_table(&self) -> Result<(), ConnectError> {
        const OP: &str = "dynamodb:CreateTable";
        let key = |name: &str, kind: KeyType| {
            KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(kind)
                .build()
                .expect("name and type are set")
        };
        let attr = |name: &str| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .expect("name and type are set")
        };
        let request = self
            .client
            .create_table()
            .table_name(&self.table)
            .attribute_definitions(attr("pk"))
            .attribute_definitions(attr("sk"))
            .key_schema(key("pk", KeyType::Hash))
            .key_schema(key("sk", KeyType::Range))
            .billing_mode(BillingMode::PayPerRequest);
        let failed = |error| ConnectError::CreateTable {
            table: self.table.clone(),
            error,
        };
        // In use: it exists already.
        call_unless(&self.calls, OP, "ResourceInUseException", request.send())
            .await
            .map_err(failed)?;
        for _ in 0..60 {
            let request = self.client.describe_table().table_name(&self.table);
            let r = call(&self.calls, "dynamodb:DescribeTable", request.send())
                .await
                .map_err(failed)?;
            if r.table().and_then(|t| t.table_status()) == Some(&TableStatus::Active) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Err(failed(PortError::new(
            ErrorKind::Retryable,
            OP,
            "the table did not become ACTIVE within 30 s",
        )))
    }
}

impl StateStore for AwsStore {
    fn load(&self, id: &MigrationId) -> impl Future<Output = PortResult<Option<Migration>>> + Send {
        boxed(async move {
            let item = self
                .get(s(&id.resource_id), s(sort_key(id.attempt)))
                .await?;
            item.map(|i| self.decode(&i)).transpose()
        })
    }

    fn latest(
        &self,
        resource_id: &str,
    ) -> impl Future<Output = PortResult<Option<Migration>>> + Send {
        boxed(async move {
            let request = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk AND begins_with(sk, :a)")
                .expression_attribute_values(":pk", s(resource_id))
                .expression_attribute_values(":a", s(ATTEMPT_PREFIX))
                .scan_index_forward(false)
                .limit(1)
                .consistent_read(true);
            let r = call(&self.calls, "dynamodb:Query", request.send()).await?;
            r.items().first().map(|i| self.decode(i)).transpose()
        })
    }

    fn save(&self, m: &Migration) -> impl Future<Output = Result<u64, StoreError>> + Send {
        boxed(async move {
            const OP: &str = "dynamodb:PutItem";
            let new_version = m.version + 1;
            let mut record = m.clone();
            record.version = new_version;
            let json = serde_json::to_string(&record).map_err(|e| {
                PortError::new(
                    ErrorKind::Fatal,
                    OP,
                    format!("record does not serialize: {e}"),
                )
            })?;
            let mut request = self
                .client
                .put_item()
                .table_name(&self.table)
                .item("pk", s(&m.id.resource_id))
                .item("sk", s(sort_key(m.id.attempt)))
                .item("version", AttributeValue::N(new_version.to_string()))
                .item("record", s(json))
                .item("phase", s(m.phase.as_str()))
                .item("source", s(&m.source_identifier))
                .item("updated_at", s(jiff::Timestamp::now().to_string()));
            request = if m.version == 0 {
                request.condition_expression("attribute_not_exists(pk)")
            } else {
                request
                    .condition_expression("#v = :v")
                    .expression_attribute_names("#v", "version")
                    .expression_attribute_values(":v", AttributeValue::N(m.version.to_string()))
            };
            let answer = "ConditionalCheckFailedException";
            match call_unless(&self.calls, OP, answer, request.send()).await? {
                Some(_) => Ok(new_version),
                None => Err(StoreError::VersionConflict {
                    expected: m.version,
                }),
            }
        })
    }

    fn list(&self) -> impl Future<Output = PortResult<Vec<Migration>>> + Send {
        boxed(async move {
            // Each page decoded as it comes: an unreadable record stops the scan.
            all_pages(|start| {
                let request = self
                    .client
                    .scan()
                    .table_name(&self.table)
                    .filter_expression("begins_with(sk, :a)")
                    .expression_attribute_values(":a", s(ATTEMPT_PREFIX))
                    .consistent_read(true)
                    .set_exclusive_start_key(start);
                async move {
                    let r = call(&self.calls, "dynamodb:Scan", request.send()).await?;
                    let records = r.items().iter().map(|i| self.decode(i));
                    let records = records.collect::<PortResult<Vec<_>>>()?;
                    let next = r.last_evaluated_key.filter(|k| !k.is_empty());
                    Ok((records, next))
                }
            })
            .await
        })
    }

    fn fleet_paused(&self) -> impl Future<Output = PortResult<bool>> + Send {
        boxed(async move {
            let item = self.get(s(FLEET_PK), s(PAUSE_SK)).await?;
            Ok(item
                .as_ref()
                .and_then(|i| i.get("paused"))
                .and_then(|v| v.as_bool().ok())
                .copied()
                .unwrap_or(false))
        })
    }

    fn set_fleet_paused(&self, paused: bool) -> impl Future<Output = PortResult<()>> + Send {
        boxed(async move {
            let request = self
                .client
                .put_item()
                .table_name(&self.table)
                .item("pk", s(FLEET_PK))
                .item("sk", s(PAUSE_SK))
                .item("paused", AttributeValue::Bool(paused))
                .item("updated_at", s(jiff::Timestamp::now().to_string()));
            call(&self.calls, "dynamodb:PutItem", request.send())
                .await
                .map(drop)
        })
    }
}
