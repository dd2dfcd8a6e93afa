//! KMS: whether RDS can use an encrypted source's key for the replica (preflight only).
//!
//! An Aurora replica of an encrypted instance must be encrypted with the same key in the same
//! Region; a disabled key, one pending deletion or one the agent may not describe would fail
//! CreateDBCluster after the whole preflight had passed. Asking first turns that into a named
//! preflight failure a person can act on.

use aws_sdk_kms::Client;
use aws_sdk_kms::types::{KeyState, KeyUsageType};

use super::CallCounter;
use super::call::call;
use crate::core::observation::KeyCheck;
use crate::ports::{ErrorKind, PortResult};

pub struct AwsKeys {
    client: Client,
    calls: CallCounter,
}

impl AwsKeys {
    pub fn new(client: Client, calls: CallCounter) -> Self {
        AwsKeys { client, calls }
    }

    /// DescribeKey on the source's key (its ARN, as RDS reports it).
    pub async fn check(&self, key_id: &str) -> PortResult<KeyCheck> {
        let request = self.client.describe_key().key_id(key_id);
        let r = match call(&self.calls, "kms:DescribeKey", request.send()).await {
            Ok(r) => r,
            Err(e) => {
                return match e.kind {
                    ErrorKind::NotFound => Ok(KeyCheck::Unusable("the key does not exist".into())),
                    // AccessDenied: the role cannot see it, so RDS acting for it cannot use it.
                    ErrorKind::Fatal => Ok(KeyCheck::Unusable(format!(
                        "the agent may not describe it ({})",
                        e.message
                    ))),
                    _ => Err(e),
                };
            }
        };
        let Some(meta) = r.key_metadata() else {
            return Ok(KeyCheck::Unusable(
                "DescribeKey returned no metadata".into(),
            ));
        };
        Ok(match (meta.key_state(), meta.key_usage()) {
            (Some(KeyState::Enabled), Some(KeyUsageType::EncryptDecrypt) | None) => {
                KeyCheck::Usable
            }
            (Some(KeyState::Enabled), Some(usage)) => {
                KeyCheck::Unusable(format!("its usage is {}", usage.as_str()))
            }
            (Some(state), _) => KeyCheck::Unusable(format!("the key is {}", state.as_str())),
            (None, _) => KeyCheck::Unusable("DescribeKey returned no key state".into()),
        })
    }
}
