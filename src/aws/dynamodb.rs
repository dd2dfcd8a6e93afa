//! DynamoDB: the migration records, every write conditional on the version read.
//!
//! Item layout: `pk` (S) = the source's `DbiResourceId`, `sk` (S) = `attempt#0001`, `version`
//! (N) for the condition, `record` (S) = the [`Migration`] as JSON, plus `phase`, `source` and
//! `updated_at` for people and listings. The fleet-wide pause is the item (`#fleet`, `pause`).
//!
//! The record's lease (`ports::Lease`) lives on the same item, outside the record: `lease_holder`
//! (S), `lease_token` (N), `lease_expires` (N, Unix milliseconds). Taking and renewing it are
//! `UpdateItem`s that touch only those; a save after the first is an `UpdateItem` of the record's
//! attributes conditional on the version *and* on the lease (holder and token), so a process
//! whose lease was taken cannot write, and no save undoes a renewal.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType, TableStatus,
};

use super::call::{all_pages, boxed, call, call_unless};
use super::{CallCounter, ConnectError};
use crate::core::migration::{Migration, MigrationId};
use crate::ports::{ErrorKind, Lease, LeaseError, PortError, PortResult, StateStore, StoreError};

const FLEET_PK: &str = "#fleet";
const PAUSE_SK: &str = "pause";
const ATTEMPT_PREFIX: &str = "attempt#";
/// The answer of a write whose condition did not hold.
const CONDITION_FAILED: &str = "ConditionalCheckFailedException";

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

fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn number<T: std::str::FromStr>(item: &HashMap<String, AttributeValue>, name: &str) -> Option<T> {
    item.get(name)?.as_n().ok()?.parse().ok()
}

/// A lease as the item holds it, if it holds one.
fn lease_on(id: &MigrationId, item: &HashMap<String, AttributeValue>) -> Option<Lease> {
    Some(Lease {
        id: id.clone(),
        holder: item.get("lease_holder")?.as_s().ok()?.clone(),
        token: number(item, "lease_token")?,
        expires_at: jiff::Timestamp::from_millisecond(number(item, "lease_expires")?).ok()?,
        taken_from: None,
    })
}

fn millis(t: jiff::Timestamp) -> i64 {
    t.as_millisecond()
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

    /// The record as the item's `record` attribute holds it.
    fn encode(&self, record: &Migration, op: &str) -> PortResult<String> {
        serde_json::to_string(record).map_err(|e| {
            PortError::new(
                ErrorKind::Fatal,
                op,
                format!("record does not serialize: {e}"),
            )
        })
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

    /// A consistent read of `id`'s record item.
    async fn get_record(
        &self,
        id: &MigrationId,
    ) -> PortResult<Option<HashMap<String, AttributeValue>>> {
        self.get(s(&id.resource_id), s(sort_key(id.attempt))).await
    }

    /// An `UpdateItem` of `id`'s record item: the save and every lease write start here.
    fn update_record(&self, id: &MigrationId) -> UpdateItemFluentBuilder {
        self.client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(&id.resource_id))
            .key("sk", s(sort_key(id.attempt)))
    }

    /// Writes `expires_at` as `lease`'s expiry if the item still holds `lease` (its holder and
    /// token): renewing (a later expiry) and releasing (the Unix epoch) are this one write, so
    /// neither can move a lease another agent has taken since. The condition is
    /// [`Lease::set_expiry`]'s rule ([`Lease::is_same_taking`]), which the in-memory stores run.
    async fn set_lease_expires(
        &self,
        lease: &Lease,
        expires_at: jiff::Timestamp,
    ) -> Result<(), LeaseError> {
        const OP: &str = "dynamodb:UpdateItem";
        let request = self
            .update_record(&lease.id)
            .update_expression("SET lease_expires = :e")
            .condition_expression("lease_holder = :h AND lease_token = :t")
            .expression_attribute_values(":h", s(&lease.holder))
            .expression_attribute_values(":t", n(lease.token))
            .expression_attribute_values(":e", n(millis(expires_at)));
        match call_unless(&self.calls, OP, CONDITION_FAILED, request.send()).await? {
            Some(_) => Ok(()),
            None => Err(LeaseError::Lost),
        }
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
            let item = self.get_record(id).await?;
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

    fn create(&self, m: &Migration) -> impl Future<Output = Result<u64, StoreError>> + Send {
        boxed(async move {
            const OP: &str = "dynamodb:PutItem";
            assert_eq!(m.version, 0, "create writes a new record only");
            let mut record = m.clone();
            record.version = 1;
            let request = self
                .client
                .put_item()
                .table_name(&self.table)
                .item("pk", s(&m.id.resource_id))
                .item("sk", s(sort_key(m.id.attempt)))
                .item("version", n(1))
                .item("record", s(self.encode(&record, OP)?))
                .item("phase", s(m.phase.as_str()))
                .item("source", s(&m.source_identifier))
                .item("updated_at", s(jiff::Timestamp::now().to_string()))
                .condition_expression("attribute_not_exists(pk)");
            match call_unless(&self.calls, OP, CONDITION_FAILED, request.send()).await? {
                Some(_) => Ok(1),
                None => Err(StoreError::VersionConflict { expected: 0 }),
            }
        })
    }

    fn save(
        &self,
        m: &Migration,
        lease: &Lease,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send {
        boxed(async move {
            const OP: &str = "dynamodb:UpdateItem";
            assert!(m.version > 0, "a new record is created, not saved");
            assert_eq!(lease.id, m.id, "a save is fenced by its own record's lease");
            let new_version = m.version + 1;
            let mut record = m.clone();
            record.version = new_version;
            let request = self
                .update_record(&m.id)
                .update_expression("SET #v = :nv, #r = :r, #p = :p, #s = :s, updated_at = :u")
                // The version's condition, and the fence: `Lease::is_same_taking`.
                .condition_expression("#v = :v AND lease_holder = :h AND lease_token = :t")
                .expression_attribute_names("#v", "version")
                .expression_attribute_names("#r", "record")
                .expression_attribute_names("#p", "phase")
                .expression_attribute_names("#s", "source")
                .expression_attribute_values(":nv", n(new_version))
                .expression_attribute_values(":v", n(m.version))
                .expression_attribute_values(":r", s(self.encode(&record, OP)?))
                .expression_attribute_values(":p", s(m.phase.as_str()))
                .expression_attribute_values(":s", s(&m.source_identifier))
                .expression_attribute_values(":u", s(jiff::Timestamp::now().to_string()))
                .expression_attribute_values(":h", s(&lease.holder))
                .expression_attribute_values(":t", n(lease.token));
            if call_unless(&self.calls, OP, CONDITION_FAILED, request.send())
                .await?
                .is_some()
            {
                return Ok(new_version);
            }
            // Which condition failed: the lease's is the one that stops this process.
            let item = self.get_record(&m.id).await?;
            let ours = item
                .as_ref()
                .and_then(|i| lease_on(&m.id, i))
                .is_some_and(|l| l.holder == lease.holder && l.token == lease.token);
            if ours {
                Err(StoreError::VersionConflict {
                    expected: m.version,
                })
            } else {
                Err(StoreError::LeaseLost)
            }
        })
    }

    fn acquire_lease(
        &self,
        id: &MigrationId,
        holder: &str,
        now: jiff::Timestamp,
        ttl: jiff::SignedDuration,
    ) -> impl Future<Output = Result<Lease, LeaseError>> + Send {
        boxed(async move {
            const OP: &str = "dynamodb:UpdateItem";
            let expires_at = now + ttl;
            // The condition and the token's `+ 1` are `Lease::take`'s rule (free, lapsed or
            // this holder's), which the in-memory stores run: keep the two the same.
            let request = self
                .update_record(id)
                .update_expression(
                    "SET lease_holder = :h, lease_expires = :e, lease_token = if_not_exists(lease_token, :zero) + :one",
                )
                .condition_expression(
                    "attribute_exists(pk) AND (attribute_not_exists(lease_holder) OR lease_expires < :now OR lease_holder = :h)",
                )
                .expression_attribute_values(":h", s(holder))
                .expression_attribute_values(":e", n(millis(expires_at)))
                .expression_attribute_values(":now", n(millis(now)))
                .expression_attribute_values(":zero", n(0))
                .expression_attribute_values(":one", n(1))
                // The item as it was: its token (ours is one more) and whom it is taken from.
                .return_values(aws_sdk_dynamodb::types::ReturnValue::AllOld);
            if let Some(r) = call_unless(&self.calls, OP, CONDITION_FAILED, request.send()).await? {
                let old = r.attributes.unwrap_or_default();
                let token = number::<u64>(&old, "lease_token").unwrap_or(0) + 1;
                let taken_from = old
                    .get("lease_holder")
                    .and_then(|v| v.as_s().ok())
                    .filter(|h| *h != holder)
                    .cloned();
                return Ok(Lease {
                    id: id.clone(),
                    holder: holder.to_string(),
                    token,
                    expires_at,
                    taken_from,
                });
            }
            let item = self.get_record(id).await?;
            match item {
                None => Err(LeaseError::NoRecord),
                Some(i) => match lease_on(id, &i) {
                    Some(l) => Err(LeaseError::Held {
                        holder: l.holder,
                        until: l.expires_at,
                    }),
                    // Taken and then gone between the two calls: a race; asked again later.
                    None => Err(LeaseError::Port(PortError::new(
                        ErrorKind::Retryable,
                        OP,
                        "the lease changed while it was taken",
                    ))),
                },
            }
        })
    }

    fn release_lease(&self, lease: &Lease) -> impl Future<Output = Result<(), LeaseError>> + Send {
        boxed(self.set_lease_expires(lease, jiff::Timestamp::UNIX_EPOCH))
    }

    fn renew_lease(
        &self,
        lease: &Lease,
        now: jiff::Timestamp,
        ttl: jiff::SignedDuration,
    ) -> impl Future<Output = Result<Lease, LeaseError>> + Send {
        boxed(async move {
            let expires_at = now + ttl;
            self.set_lease_expires(lease, expires_at).await?;
            Ok(Lease {
                expires_at,
                taken_from: None,
                ..lease.clone()
            })
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
