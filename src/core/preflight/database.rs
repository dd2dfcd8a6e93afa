//! The checks the database answers itself, where the instance grants the agent access
//! (`<prefix>:database-access`), and the decision between the database-aware and the metric
//! cutover.
//!
//! Without access these questions go to the owners as acknowledgements (`unlogged-tables`); with
//! it the agent looks: what it finds is named, and what it does not find needs no tag. A
//! connection that fails is not a failed preflight: the migration takes the metric path, and the
//! `database-access` check says why.

use super::*;
use crate::core::database::{DatabaseAccess, SqlPreflight, access_for};
use crate::core::observation::EngineVersion;

/// Adds `database-access` and the SQL-answered checks; returns the access to plan with (`None`:
/// the metric path).
pub(super) fn database_checks(
    c: &mut Checks,
    source: &SourceInstance,
    inputs: &PreflightInputs,
    policy: &Policy,
    aurora_version: Option<&EngineVersion>,
) -> Option<DatabaseAccess> {
    let metric_path = "the cutover reboots the source and proves catch-up from CloudWatch";
    let unusable = match (access_for(source, policy), &inputs.database) {
        (Ok(None), _) => None,
        (Err(why), _) => Some(why),
        (Ok(Some(_)), Some(Err(e))) => Some(format!("the agent could not read the database: {e}")),
        (Ok(Some(_)), None) => Some("the database was not asked".to_string()),
        (Ok(Some(access)), Some(Ok(answer))) => {
            database_path_checks(
                c,
                &access,
                answer,
                aurora_version,
                inputs.aurora_extensions.as_deref(),
            );
            size_against_free_storage(c, answer.database_bytes, inputs.free_storage_bytes);
            return Some(access);
        }
    };
    if let Some(why) = unusable {
        c.add(
            "database-access",
            Outcome::Warn,
            format!("{why}; {metric_path}"),
        );
    }
    unlogged_by_acknowledgement(c);
    None
}

/// Access works: say so, and let the database answer.
fn database_path_checks(
    c: &mut Checks,
    access: &DatabaseAccess,
    answer: &SqlPreflight,
    aurora_version: Option<&EngineVersion>,
    aurora_extensions: Option<&[String]>,
) {
    c.add(
        "database-access",
        Outcome::Pass,
        format!(
            "connected with {} over verified TLS: the cutover ends client sessions instead of rebooting and promotes once Aurora has replayed a fence written after the last one",
            access.credentials
        ),
    );
    sql_checks(c, answer);
    extensions_check(c, &answer.extensions, aurora_version, aurora_extensions);
}

fn unlogged_by_acknowledgement(c: &mut Checks) {
    c.add(
        "unlogged-tables",
        Outcome::Fail,
        "unlogged tables are not replicated and the agent has no database access to look: confirm there are none (or that losing their content is fine), then acknowledge",
    );
}

/// Each finding named; a list is cut after a few names with the count of the rest.
fn sql_checks(c: &mut Checks, a: &SqlPreflight) {
    c.check(
        "unlogged-tables",
        a.unlogged_tables.is_empty(),
        "none (read from every database)",
        Outcome::Fail,
        || {
            format!(
                "{} are unlogged: their rows are not replicated and would be empty on Aurora. Make them logged (ALTER TABLE … SET LOGGED) or acknowledge that losing their content is fine",
                names(&a.unlogged_tables)
            )
        },
    );
    let writers: Vec<String> = a
        .cron_jobs
        .iter()
        .map(|j| format!("pg_cron job {j}"))
        .chain(
            a.background_workers
                .iter()
                .map(|w| format!("background worker {w}")),
        )
        .collect();
    // The quarantine keeps clients out, not what runs inside the server: these keep writing on
    // the fenced source, and would run on Aurora after promotion too.
    c.check(
        "database-writers",
        writers.is_empty(),
        "no active pg_cron job, no third-party background worker",
        Outcome::Fail,
        || {
            format!(
                "{} write inside the database, past the quarantine: pause them for the cutover (and decide where they run afterwards), then acknowledge",
                names(&writers)
            )
        },
    );
    let inactive: Vec<String> = a
        .logical_slots
        .iter()
        .filter(|s| !s.active)
        .map(|s| format!("{} ({} retained)", s.name, gib(s.retained_bytes as f64)))
        .collect();
    c.check(
        "replication-slots",
        inactive.is_empty(),
        if a.logical_slots.is_empty() {
            "no logical replication slot".to_string()
        } else {
            format!("{} logical slot(s), all active", a.logical_slots.len())
        },
        Outcome::Warn,
        || {
            format!(
                "inactive logical slots retain WAL on the source and are not carried to Aurora: {}",
                names(&inactive)
            )
        },
    );
    c.check(
        "prepared-transactions",
        a.prepared_transactions.is_empty(),
        "none",
        Outcome::Fail,
        || {
            format!(
                "prepared transactions {} hold locks and WAL until someone commits or rolls them back; end them first",
                names(&a.prepared_transactions)
            )
        },
    );
    c.check(
        "old-transactions",
        a.old_transactions.is_empty(),
        "none open for long",
        Outcome::Warn,
        || {
            let list: Vec<String> = a
                .old_transactions
                .iter()
                .map(|(pid, age)| format!("pid {pid} open {age} s"))
                .collect();
            format!(
                "{}: the cutover ends their sessions and they roll back",
                names(&list)
            )
        },
    );
}

/// Extensions every database has from its creation: nothing to move, nothing to check.
const ALWAYS_PRESENT: [&str; 1] = ["plpgsql"];

/// Every installed extension (but `plpgsql`) must be one the Aurora family offers, as RDS says
/// in the family's `rds.allowed_extensions` (its `AllowedValues`). Without that list the
/// extensions cannot be compared: a warning, never a failure made of missing data.
fn extensions_check(
    c: &mut Checks,
    installed: &[(String, String)],
    aurora_version: Option<&EngineVersion>,
    offered: Option<&[String]>,
) {
    let others: Vec<&(String, String)> = installed
        .iter()
        .filter(|(name, _)| !ALWAYS_PRESENT.contains(&name.as_str()))
        .collect();
    if others.is_empty() {
        c.add(
            "extensions",
            Outcome::Pass,
            "none installed besides plpgsql",
        );
        return;
    }
    let family = aurora_version
        .map(|v| v.family.as_str())
        .filter(|f| !f.is_empty())
        .map_or_else(|| "the Aurora family".to_string(), |f| format!("`{f}`"));
    let Some(offered) = offered else {
        let list: Vec<String> = others.iter().map(|(n, v)| format!("{n} {v}")).collect();
        c.add(
            "extensions",
            Outcome::Warn,
            format!(
                "could not read the Aurora family's allowed extensions (RDS's `rds.allowed_extensions` for {family} gave no AllowedValues): check {} yourself before the cutover",
                names(&list)
            ),
        );
        return;
    };
    let missing: Vec<String> = others
        .iter()
        .filter(|(name, _)| !offered.iter().any(|o| o.eq_ignore_ascii_case(name)))
        .map(|(name, version)| format!("{name} {version}"))
        .collect();
    if missing.is_empty() {
        c.add(
            "extensions",
            Outcome::Pass,
            format!(
                "{} installed, all in RDS's `rds.allowed_extensions` for {family}",
                others.len()
            ),
        );
        return;
    }
    let listed = missing
        .iter()
        .map(|m| format!("`{m}`"))
        .collect::<Vec<_>>()
        .join(", ");
    c.add(
        "extensions",
        Outcome::Fail,
        format!(
            "{listed} installed on the source, not offered by Aurora: not in the extensions RDS allows for {family} (the AllowedValues of its `rds.allowed_extensions`). The replica cannot have them, and what uses them would fail on Aurora. Drop them from every database (DROP EXTENSION), or acknowledge"
        ),
    );
}

/// Up to five names, then how many more.
fn names(items: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut s = items
        .iter()
        .take(SHOWN)
        .map(|i| format!("`{i}`"))
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > SHOWN {
        s.push_str(&format!(" and {} more", items.len() - SHOWN));
    }
    s
}

/// AWS quotes "several hours per TiB" for the replica's initial copy, and the source keeps every
/// WAL segment written meanwhile (its slot holds them). The WAL rate is not known here, so the
/// rule is a coarse one, said as such: less free space than data is worth a warning (the agent
/// still deletes the replica, releasing the WAL, if free space falls below its floor).
fn size_against_free_storage(c: &mut Checks, database_bytes: u64, free_bytes: Option<f64>) {
    let size = database_bytes as f64;
    // Hours of copy at AWS's "several hours per TiB", read as 3 h per TiB.
    const TIB: f64 = 1024.0 * 1024.0 * 1024.0 * 1024.0;
    let hours = (size / TIB * 3.0).max(0.1);
    match free_bytes {
        Some(free) if free < size => c.add(
            "database-size",
            Outcome::Warn,
            format!(
                "{} of data, {} free: the initial copy takes about {hours:.1} h, and all WAL written meanwhile stays on the source; at a busy write rate the free space may not last (the agent deletes the replica below its floor, losslessly)",
                gib(size),
                gib(free)
            ),
        ),
        Some(free) => c.add(
            "database-size",
            Outcome::Pass,
            format!(
                "{} of data, {} free; the initial copy takes about {hours:.1} h",
                gib(size),
                gib(free)
            ),
        ),
        None => c.add(
            "database-size",
            Outcome::Warn,
            format!(
                "{} of data; free storage unknown (FreeStorageSpace has no recent datapoint)",
                gib(size)
            ),
        ),
    }
}
