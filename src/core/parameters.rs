//! Translation of the source's parameter group into Aurora cluster and instance groups.
//!
//! Only parameters the owners set (`Source = user`) are carried over; everything else keeps the
//! Aurora family's default. A parameter the Aurora family does not know is dropped and reported
//! by preflight. The translated content is hashed so that identical translations share a group
//! (50 cluster parameter groups per account, not adjustable).

use serde::{Deserialize, Serialize};

use super::action::TranslatedParameter;
use super::naming::fnv1a64;
use super::observation::Parameter;

/// Parameters never copied: the agent owns them (logical replication follows the CDC
/// declaration), or they describe the RDS instance's own storage and replication.
const NEVER_COPIED: [&str; 3] = [
    "rds.logical_replication",
    "wal_keep_size",
    "max_slot_wal_keep_size",
];

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Translation {
    pub cluster: Vec<TranslatedParameter>,
    pub instance: Vec<TranslatedParameter>,
    /// Parameters with no Aurora equivalent, dropped.
    pub dropped: Vec<String>,
    pub cluster_hash: u64,
    pub instance_hash: u64,
}

pub struct AuroraFamily<'a> {
    pub family: &'a str,
    pub cluster_parameters: &'a [String],
    pub instance_parameters: &'a [String],
    pub static_parameters: &'a [String],
}

pub fn translate(source: &[Parameter], aurora: &AuroraFamily<'_>, cdc: bool) -> Translation {
    let apply = |name: &str| {
        if aurora.static_parameters.iter().any(|s| s == name) {
            "pending-reboot"
        } else {
            "immediate"
        }
    };
    let mut cluster = Vec::new();
    let mut instance = Vec::new();
    let mut dropped = Vec::new();
    for p in source {
        if NEVER_COPIED.contains(&p.name.as_str()) {
            continue;
        }
        let param = TranslatedParameter {
            name: p.name.clone(),
            value: p.value.clone(),
            apply_method: apply(&p.name).to_string(),
        };
        // Cluster level first: a value there applies to every instance, today's and tomorrow's.
        if aurora.cluster_parameters.contains(&p.name) {
            cluster.push(param);
        } else if aurora.instance_parameters.contains(&p.name) {
            instance.push(param);
        } else {
            dropped.push(p.name.clone());
        }
    }
    if cdc {
        // Static: it must be in the group when the cluster is created.
        cluster.push(TranslatedParameter {
            name: "rds.logical_replication".to_string(),
            value: "1".to_string(),
            apply_method: "pending-reboot".to_string(),
        });
    }
    cluster.sort_by(|a, b| a.name.cmp(&b.name));
    instance.sort_by(|a, b| a.name.cmp(&b.name));
    dropped.sort();
    dropped.dedup();
    Translation {
        cluster_hash: content_hash(aurora.family, &cluster),
        instance_hash: content_hash(aurora.family, &instance),
        cluster,
        instance,
        dropped,
    }
}

fn content_hash(family: &str, params: &[TranslatedParameter]) -> u64 {
    let mut text = String::from(family);
    for p in params {
        text.push('\n');
        text.push_str(&p.name);
        text.push('=');
        text.push_str(&p.value);
        text.push('@');
        text.push_str(&p.apply_method);
    }
    fnv1a64(text.as_bytes())
}
