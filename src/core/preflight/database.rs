//! The checks the database answers itself, where the instance grants the agent access
//! (`<prefix>:database-access`), and the decision between the database-aware and the metric
//! cutover.
//!
//! Without access these questions go to the owners as acknowledgements (`unlogged-tables`); with
//! it the agent looks: what it finds is named, and what it does not find needs no tag. A
//! connection that fails is not a failed preflight: the migration takes the metric path, and the
//! `database-access` check says why.

use super::aurora_extensions::{self, Completeness, Tables, Verdict};
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
    let (access, answer) = match (access_for(source, policy), &inputs.database) {
        (Ok(None), _) => {
            unlogged_by_acknowledgement(c);
            return None;
        }
        (Err(why), _) => {
            c.add(
                "database-access",
                Outcome::Warn,
                format!("{why}; {metric_path}"),
            );
            unlogged_by_acknowledgement(c);
            return None;
        }
        (Ok(Some(_)), None | Some(Err(_))) => {
            let why = match &inputs.database {
                Some(Err(e)) => format!("the agent could not read the database: {e}"),
                _ => "the database was not asked".to_string(),
            };
            c.add(
                "database-access",
                Outcome::Warn,
                format!("{why}; {metric_path}"),
            );
            unlogged_by_acknowledgement(c);
            return None;
        }
        (Ok(Some(access)), Some(Ok(answer))) => (access, answer),
    };
    c.add(
        "database-access",
        Outcome::Pass,
        format!(
            "connected with {} over verified TLS: the cutover ends client sessions instead of rebooting and promotes once Aurora has replayed a fence written after the last one",
            access.credentials
        ),
    );
    sql_checks(c, answer);
    let given = inputs
        .aurora_extension_data
        .as_deref()
        .map(aurora_extensions::parse);
    let tables = match &given {
        Some(parsed) => parsed.as_ref(),
        None => aurora_extensions::SHIPPED.as_ref(),
    };
    extensions_check(
        c,
        &answer.extensions,
        aurora_version,
        tables.map_err(String::as_str),
    );
    Some(access)
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

/// Every installed extension (but `plpgsql`) must be one the chosen Aurora version offers, as
/// AWS's published table says (`aurora_extensions.csv`). Only a table the data holds whole can
/// fail the check; where it holds part of it, or none, what it does not list is a warning.
fn extensions_check(
    c: &mut Checks,
    installed: &[(String, String)],
    aurora_version: Option<&EngineVersion>,
    tables: Result<&Tables, &str>,
) {
    let listed = |names: &[String]| {
        names
            .iter()
            .map(|n| format!("`{n}`"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let others: Vec<String> = installed
        .iter()
        .filter(|(name, _)| !aurora_extensions::ALWAYS_PRESENT.contains(&name.as_str()))
        .map(|(name, version)| format!("{name} {version}"))
        .collect();
    if others.is_empty() {
        c.add(
            "extensions",
            Outcome::Pass,
            "none installed besides plpgsql",
        );
        return;
    }
    let Some((version, major)) =
        aurora_version.and_then(|v| parse_version(&v.version).map(|(major, _)| (v, major)))
    else {
        c.add(
            "extensions",
            Outcome::Warn,
            format!(
                "no Aurora version was chosen (see `aurora-version`), so {} could not be compared with what Aurora offers",
                listed(&others)
            ),
        );
        return;
    };
    let tables = match tables {
        Ok(t) => t,
        Err(why) => {
            c.add(
                "extensions",
                Outcome::Warn,
                format!(
                    "the agent's table of the extensions Aurora offers could not be read ({why}): check {} for Aurora PostgreSQL {major} on AWS's page yourself",
                    listed(&others)
                ),
            );
            return;
        }
    };
    let data = format!("AWS's table ({}, read {})", tables.source, tables.read);
    match aurora_extensions::judge(tables, major, installed) {
        Verdict::NothingToCheck => {
            c.add("extensions", Outcome::Pass, "none installed besides plpgsql")
        }
        Verdict::AllOffered(n) => c.add(
            "extensions",
            Outcome::Pass,
            format!(
                "{n} installed, all offered by Aurora PostgreSQL {major} according to {data}"
            ),
        ),
        Verdict::Missing(missing) => c.add(
            "extensions",
            Outcome::Fail,
            format!(
                "{} installed on the source, not offered by Aurora PostgreSQL {} according to {data}: the replica cannot have them, and what uses them would fail on Aurora. Drop them from every database (DROP EXTENSION), or acknowledge if the table is out of date",
                listed(&missing),
                version.version
            ),
        ),
        Verdict::Unconfirmed(completeness, unconfirmed) => {
            let held = match completeness {
                Some(Completeness::Partial) => "only part of",
                _ => "none of",
            };
            c.add(
                "extensions",
                Outcome::Warn,
                format!(
                    "{} not confirmed for Aurora PostgreSQL {major}: the agent's copy of {data} holds {held} that version's table; check them on the page before the cutover",
                    listed(&unconfirmed)
                ),
            );
        }
    }
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
