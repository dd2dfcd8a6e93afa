//! The fleet readiness report (`aurora-migrator plan --all`, issue #17): one row per RDS for
//! PostgreSQL instance of the Region, from the same preflight `plan <instance>` prints, in a
//! shape a platform team can sort and filter.
//!
//! Contracts:
//! - A row's verdict is derived from the preflight report alone ([`Verdict::of`]): `blocked` when
//!   a failed check must be fixed (one the owners may not acknowledge), `needs-acknowledgement`
//!   when every failure left is one the owners may accept with `<prefix>:ack-<check>`, `ready`
//!   when nothing blocks (the preflight's own `passed`). `error` is a row whose preflight inputs
//!   could not be read; it carries the reason and never stops the report.
//! - The Aurora version and class are what the plan would take (`preflight::choose_aurora_version`
//!   and `preflight::map_instance_class`, the functions `preflight::run` plans with), also for an
//!   instance that is not ready, so a team sees where it is headed; no version when none fits.
//! - Renderers are pure and deterministic: every format lists the rows in the same order
//!   ([`sorted`]), so two runs over an unchanged fleet give identical files.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::observation::{PreflightInputs, SourceInstance};
use super::policy::Policy;
use super::preflight::{self, Outcome};

/// What a platform team does next with an instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// The preflight inputs could not be read (e.g. AccessDenied on one call): unknown, so a
    /// person looks first. Declared first: the derived order is the report's order.
    Error,
    /// A failed check must be fixed before a migration can start.
    Blocked,
    /// Only failures the owners may accept (`<prefix>:ack-<check>` = `true`) stand in the way.
    NeedsAcknowledgement,
    /// Nothing blocks: tagging it `start` begins the migration.
    Ready,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Error => "error",
            Verdict::Blocked => "blocked",
            Verdict::NeedsAcknowledgement => "needs-acknowledgement",
            Verdict::Ready => "ready",
        }
    }
}

/// Estimated time to build the Aurora read replica (CreateDBCluster with the source as
/// replication source, then its writer), in seconds, as a range.
///
/// The model is the project simulator's (`src/sim/world/rds.rs`, `create_replica_cluster`; README
/// *Guarantees and figures*: "replica creation 8 min + 6–12 s/GiB"), which reads AWS's
/// "several hours per terabyte" for the snapshot-and-migrate of an Aurora read replica
/// (`shared/reference/aws-mechanics.md`, [A1]) as 6–12 s per GiB (1.7–3.4 h per TiB) plus 8 min
/// of setup. It is applied to the *allocated* storage, which bounds the data from above: an
/// instance with much free space builds faster. A range, not a midpoint: AWS gives no closer
/// figure, and a team planning a window needs the long end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildEstimate {
    pub min_s: u64,
    pub max_s: u64,
}

impl BuildEstimate {
    /// Setup before the copy starts, seconds (the simulator's 8 min).
    const SETUP_S: u64 = 8 * 60;
    /// Copy rate, seconds per GiB of allocated storage (the simulator's 6–12).
    const PER_GIB_S: (u64, u64) = (6, 12);

    pub fn for_storage(gib: u32) -> BuildEstimate {
        let gib = u64::from(gib);
        BuildEstimate {
            min_s: Self::SETUP_S + gib * Self::PER_GIB_S.0,
            max_s: Self::SETUP_S + gib * Self::PER_GIB_S.1,
        }
    }

    /// `25 min – 40 min`, `1 h 48 min – 3 h 28 min`: whole minutes, rounded up (an estimate for
    /// a window should not promise less than the model).
    pub fn render(&self) -> String {
        format!("{} – {}", minutes(self.min_s), minutes(self.max_s))
    }
}

fn minutes(s: u64) -> String {
    let m = s.div_ceil(60);
    match (m / 60, m % 60) {
        (0, m) => format!("{m} min"),
        (h, 0) => format!("{h} h"),
        (h, m) => format!("{h} h {m} min"),
    }
}

/// One instance of the report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadinessRow {
    pub instance: String,
    pub verdict: Verdict,
    /// Failed checks that must be fixed (not acknowledgeable), in preflight order.
    pub blocking: Vec<String>,
    /// Failed checks the owners may accept with `<prefix>:ack-<check>` and have not.
    pub to_acknowledge: Vec<String>,
    /// Failed checks the owners accepted: they no longer block.
    pub acknowledged: Vec<String>,
    /// Checks that passed with a warning a person should read.
    pub warnings: Vec<String>,
    pub source_version: String,
    /// The Aurora PostgreSQL version the replica would get; `None` when none fits (or on error).
    pub aurora_version: Option<String>,
    /// The Aurora instance class of the writer.
    pub aurora_class: String,
    pub storage_gib: u32,
    pub replica_build: BuildEstimate,
    /// Why the preflight could not be read (`error` rows only).
    pub error: Option<String>,
}

impl ReadinessRow {
    /// Runs the preflight (`preflight::run`, the same judgement as `plan <instance>` and the
    /// agent's Preflight phase) and reads the row off its report.
    pub fn assess(source: &SourceInstance, inputs: &PreflightInputs, policy: &Policy) -> Self {
        let (report, plan) = preflight::run(source, inputs, policy);
        let names = |keep: &dyn Fn(&preflight::CheckResult) -> bool| -> Vec<String> {
            report
                .checks
                .iter()
                .filter(|c| keep(c))
                .map(|c| c.name.clone())
                .collect()
        };
        let failed = |c: &preflight::CheckResult| c.outcome == Outcome::Fail && !c.acknowledged;
        // A restored copy is acknowledged too, by a tag naming it (`preflight::RESTORED_COPY`).
        let may_ack = |c: &preflight::CheckResult| preflight::may_be_acknowledged(&c.name);
        let blocking = names(&|c| failed(c) && !may_ack(c));
        let to_acknowledge = names(&|c| failed(c) && may_ack(c));
        let verdict = Verdict::of(report.passed(), &blocking);
        let (aurora_version, aurora_class) = match plan {
            Some(p) => (Some(p.engine_version), p.instance_class),
            None => (
                preflight::choose_aurora_version(&source.engine_version, &inputs.aurora_versions)
                    .map(|v| v.version.clone()),
                preflight::map_instance_class(&source.instance_class).0,
            ),
        };
        ReadinessRow {
            verdict,
            blocking,
            to_acknowledge,
            acknowledged: names(&|c| c.acknowledged),
            warnings: names(&|c| c.outcome == Outcome::Warn),
            aurora_version,
            aurora_class,
            ..ReadinessRow::unassessed(source, None)
        }
    }

    /// The row of an instance whose preflight inputs could not be read: what the fleet describe
    /// already tells (class, storage, the build estimate) and the reason.
    pub fn error(source: &SourceInstance, reason: impl Into<String>) -> Self {
        ReadinessRow::unassessed(source, Some(reason.into()))
    }

    fn unassessed(source: &SourceInstance, error: Option<String>) -> Self {
        ReadinessRow {
            instance: source.identifier.clone(),
            verdict: Verdict::Error,
            blocking: Vec::new(),
            to_acknowledge: Vec::new(),
            acknowledged: Vec::new(),
            warnings: Vec::new(),
            source_version: source.engine_version.clone(),
            aurora_version: None,
            aurora_class: preflight::map_instance_class(&source.instance_class).0,
            storage_gib: source.allocated_storage_gib,
            replica_build: BuildEstimate::for_storage(source.allocated_storage_gib),
            error,
        }
    }
}

impl Verdict {
    /// From the preflight: `passed` (nothing unacknowledged fails) and the failures that are
    /// not acknowledgeable.
    pub fn of(passed: bool, must_fix: &[String]) -> Verdict {
        if passed {
            Verdict::Ready
        } else if must_fix.is_empty() {
            Verdict::NeedsAcknowledgement
        } else {
            Verdict::Blocked
        }
    }
}

/// The report's order: errors, then blocked, then needs-acknowledgement, then ready (what a
/// person must act on first comes first); within a verdict, by identifier.
pub fn sorted(rows: &[ReadinessRow]) -> Vec<&ReadinessRow> {
    let mut rows: Vec<&ReadinessRow> = rows.iter().collect();
    rows.sort_by(|a, b| (a.verdict, &a.instance).cmp(&(b.verdict, &b.instance)));
    rows
}

/// The output formats of `plan --all` (`markdown`, `csv`, `json`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    #[default]
    Markdown,
    Csv,
    Json,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "markdown" | "md" => Ok(Format::Markdown),
            "csv" => Ok(Format::Csv),
            "json" => Ok(Format::Json),
            other => Err(format!("`{other}` is not a format: markdown, csv or json")),
        }
    }
}

pub fn render(rows: &[ReadinessRow], format: Format) -> String {
    match format {
        Format::Markdown => markdown(rows),
        Format::Csv => csv(rows),
        Format::Json => json(rows),
    }
}

/// A GitHub-flavoured Markdown table, a count per verdict after it. Acknowledged failures are
/// shown among the warnings, marked, since they no longer block but were accepted by someone.
pub fn markdown(rows: &[ReadinessRow]) -> String {
    let mut out = String::from(
        "| instance | verdict | blocking checks | to acknowledge | warnings | Aurora version | Aurora class | storage | replica build (est.) |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    for r in sorted(rows) {
        let warnings: Vec<String> = r
            .warnings
            .iter()
            .cloned()
            .chain(r.acknowledged.iter().map(|a| format!("{a} (acknowledged)")))
            .collect();
        let blocking = match &r.error {
            Some(e) => e.clone(),
            None => r.blocking.join(", "),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} GiB | {} |",
            cell(&r.instance),
            r.verdict.as_str(),
            cell(&blocking),
            cell(&r.to_acknowledge.join(", ")),
            cell(&warnings.join(", ")),
            match &r.aurora_version {
                Some(v) => format!("{} → {}", cell(&r.source_version), cell(v)),
                None => format!("{} → none", cell(&r.source_version)),
            },
            cell(&r.aurora_class),
            r.storage_gib,
            r.replica_build.render(),
        );
    }
    let count = |v: Verdict| rows.iter().filter(|r| r.verdict == v).count();
    let _ = writeln!(
        out,
        "\n{} instances: {} ready, {} need acknowledgement, {} blocked, {} could not be read",
        rows.len(),
        count(Verdict::Ready),
        count(Verdict::NeedsAcknowledgement),
        count(Verdict::Blocked),
        count(Verdict::Error),
    );
    out
}

/// A Markdown cell: `|` would end it and a newline the row; `-` for nothing.
fn cell(s: &str) -> String {
    if s.is_empty() {
        return "-".to_string();
    }
    s.replace('|', "\\|").replace(['\r', '\n'], " ")
}

/// The CSV columns, in order.
pub const CSV_HEADER: [&str; 13] = [
    "instance",
    "verdict",
    "blocking",
    "to_acknowledge",
    "acknowledged",
    "warnings",
    "source_version",
    "aurora_version",
    "aurora_class",
    "storage_gib",
    "replica_build_min_s",
    "replica_build_max_s",
    "error",
];

/// RFC 4180: CRLF line ends, a header, every field quoted when it holds a comma, a quote, CR or
/// LF, quotes doubled. Lists of check names are joined with a space (names have none).
pub fn csv(rows: &[ReadinessRow]) -> String {
    let mut out = String::new();
    line(&mut out, CSV_HEADER.iter().map(|h| h.to_string()));
    for r in sorted(rows) {
        line(
            &mut out,
            [
                r.instance.clone(),
                r.verdict.as_str().to_string(),
                r.blocking.join(" "),
                r.to_acknowledge.join(" "),
                r.acknowledged.join(" "),
                r.warnings.join(" "),
                r.source_version.clone(),
                r.aurora_version.clone().unwrap_or_default(),
                r.aurora_class.clone(),
                r.storage_gib.to_string(),
                r.replica_build.min_s.to_string(),
                r.replica_build.max_s.to_string(),
                r.error.clone().unwrap_or_default(),
            ],
        );
    }
    out
}

fn line(out: &mut String, fields: impl IntoIterator<Item = String>) {
    let fields: Vec<String> = fields.into_iter().map(|f| quote(&f)).collect();
    out.push_str(&fields.join(","));
    out.push_str("\r\n");
}

fn quote(field: &str) -> String {
    if field.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", field.replace('"', "\"\""))
    } else {
        field.to_string()
    }
}

/// A JSON array of rows (the [`ReadinessRow`] fields, verdicts in kebab-case), in report order.
pub fn json(rows: &[ReadinessRow]) -> String {
    let mut out = serde_json::to_string_pretty(&sorted(rows)).expect("rows serialize");
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(instance: &str, verdict: Verdict) -> ReadinessRow {
        ReadinessRow {
            instance: instance.to_string(),
            verdict,
            blocking: if verdict == Verdict::Blocked {
                vec!["automated-backups".into()]
            } else {
                vec![]
            },
            to_acknowledge: if verdict == Verdict::NeedsAcknowledgement {
                vec!["unlogged-tables".into()]
            } else {
                vec![]
            },
            acknowledged: vec![],
            warnings: vec!["encryption".into(), "storage-headroom".into()],
            source_version: "15.7".into(),
            aurora_version: Some("15.7".into()),
            aurora_class: "db.r6g.large".into(),
            storage_gib: 100,
            replica_build: BuildEstimate::for_storage(100),
            error: (verdict == Verdict::Error).then(|| "rds:X failed (fatal): AccessDenied".into()),
        }
    }

    fn fleet() -> Vec<ReadinessRow> {
        vec![
            row("b-ready", Verdict::Ready),
            row("z-blocked", Verdict::Blocked),
            row("a-ready", Verdict::Ready),
            row("m-ack", Verdict::NeedsAcknowledgement),
            row("c-blocked", Verdict::Blocked),
            row("q-error", Verdict::Error),
        ]
    }

    #[test]
    fn rows_sort_by_what_needs_a_person_first_then_by_identifier() {
        let rows = fleet();
        let order: Vec<&str> = sorted(&rows).iter().map(|r| r.instance.as_str()).collect();
        assert_eq!(
            order,
            [
                "q-error",
                "c-blocked",
                "z-blocked",
                "m-ack",
                "a-ready",
                "b-ready"
            ]
        );
        let md = markdown(&rows);
        let body: Vec<&str> = md
            .lines()
            .skip(2)
            .take_while(|l| l.starts_with('|'))
            .map(|l| l.split('|').nth(1).unwrap().trim())
            .collect();
        assert_eq!(body, order);
        assert!(md.contains(
            "| c-blocked | blocked | automated-backups | - | encryption, storage-headroom | 15.7 → 15.7 | db.r6g.large | 100 GiB | 18 min – 28 min |"
        ), "{md}");
        assert!(md.contains(
            "6 instances: 2 ready, 1 need acknowledgement, 2 blocked, 1 could not be read"
        ));
        // The error's reason stands where the blocking checks would.
        assert!(md.contains("| q-error | error | rds:X failed (fatal): AccessDenied |"));
    }

    #[test]
    fn markdown_cells_cannot_break_the_table() {
        let mut r = row("a", Verdict::Error);
        r.error = Some("denied | see\nlogs".into());
        r.aurora_version = None;
        let md = markdown(&[r]);
        assert!(
            md.contains("| a | error | denied \\| see logs | - |"),
            "{md}"
        );
        assert!(md.contains("| 15.7 → none |"), "{md}");
    }

    #[test]
    fn csv_quotes_as_rfc_4180() {
        // RDS identifiers cannot hold a comma or a quote, but the error text and the format can.
        let mut r = row(r#"orders, "eu""#, Verdict::Error);
        r.error = Some(r#"AccessDenied: "rds:DescribeDBParameters", for role x"#.into());
        let csv = csv(&[r]);
        let lines: Vec<&str> = csv.split("\r\n").collect();
        assert_eq!(
            lines.len(),
            3,
            "header, row, and the empty rest after the last CRLF"
        );
        assert_eq!(lines[0], CSV_HEADER.join(","));
        assert_eq!(
            lines[1],
            r#""orders, ""eu""",error,,,,encryption storage-headroom,15.7,15.7,db.r6g.large,100,1080,1680,"AccessDenied: ""rds:DescribeDBParameters"", for role x""#
        );
        assert_eq!(lines[2], "");
        assert_eq!(quote("plain"), "plain");
        assert_eq!(quote("a,b"), "\"a,b\"");
        assert_eq!(quote("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(quote("two\nlines"), "\"two\nlines\"");
    }

    #[test]
    fn json_is_an_array_of_rows_in_report_order_that_reads_back() {
        let rows = fleet();
        let text = json(&rows);
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        let first = &value[0];
        assert_eq!(first["instance"], "q-error");
        assert_eq!(first["verdict"], "error");
        assert_eq!(value[3]["verdict"], "needs-acknowledgement");
        assert_eq!(
            value[3]["to_acknowledge"],
            serde_json::json!(["unlogged-tables"])
        );
        assert_eq!(
            value[1]["replica_build"],
            serde_json::json!({"min_s": 1080, "max_s": 1680})
        );
        assert_eq!(value[4]["error"], serde_json::Value::Null);
        let back: Vec<ReadinessRow> = serde_json::from_str(&text).unwrap();
        let expected: Vec<ReadinessRow> = sorted(&rows).into_iter().cloned().collect();
        assert_eq!(back, expected);
    }

    #[test]
    fn the_build_estimate_is_the_simulators_model_on_allocated_storage() {
        // 8 min + 6–12 s/GiB.
        let e = BuildEstimate::for_storage(1024);
        assert_eq!((e.min_s, e.max_s), (480 + 6 * 1024, 480 + 12 * 1024));
        assert_eq!(e.render(), "1 h 51 min – 3 h 33 min");
        assert_eq!(BuildEstimate::for_storage(0).render(), "8 min – 8 min");
        assert_eq!(minutes(3600), "1 h");
        assert_eq!(minutes(61), "2 min");
    }

    fn source(tags: &[(&str, &str)]) -> SourceInstance {
        SourceInstance {
            identifier: "orders".into(),
            arn: "arn:aws:rds:us-east-1:123456789012:db:orders".into(),
            resource_id: "db-ORDERS".into(),
            engine: "postgres".into(),
            engine_version: "15.4".into(),
            status: "available".into(),
            instance_class: "db.m6g.large".into(),
            allocated_storage_gib: 200,
            parameter_group: crate::core::observation::ParameterGroupMembership {
                name: "default.postgres15".into(),
                apply_status: "in-sync".into(),
            },
            backup_retention_days: 7,
            security_groups: vec![crate::core::observation::GroupMembership {
                id: "sg-app".into(),
                status: "active".into(),
            }],
            vpc_id: "vpc-1".into(),
            subnet_group: "db-subnets".into(),
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..SourceInstance::default()
        }
    }

    fn inputs() -> PreflightInputs {
        PreflightInputs {
            aurora_versions: vec![crate::core::observation::EngineVersion {
                version: "15.6".into(),
                family: "aurora-postgresql15".into(),
            }],
            free_storage_bytes: Some(150.0 * 1024.0 * 1024.0 * 1024.0),
            ..PreflightInputs::default()
        }
    }

    #[test]
    fn a_row_reads_the_preflight_report() {
        let policy = Policy::default();
        let ack = [("aurora-migration:ack-unlogged-tables", "true")];
        let ready = ReadinessRow::assess(&source(&ack), &inputs(), &policy);
        assert_eq!(ready.verdict, Verdict::Ready, "{ready:?}");
        assert_eq!(ready.acknowledged, ["unlogged-tables"]);
        assert_eq!(ready.aurora_version.as_deref(), Some("15.6"));
        // The class the plan takes: Aurora has no db.m*.
        assert_eq!(ready.aurora_class, "db.r6g.large");
        assert!(ready.warnings.contains(&"instance-class".to_string()));
        assert_eq!(ready.storage_gib, 200);
        assert_eq!(ready.error, None);

        let unacknowledged = ReadinessRow::assess(&source(&[]), &inputs(), &policy);
        assert_eq!(unacknowledged.verdict, Verdict::NeedsAcknowledgement);
        assert_eq!(unacknowledged.to_acknowledge, ["unlogged-tables"]);
        assert!(unacknowledged.blocking.is_empty());

        let mut no_backups = source(&ack);
        no_backups.backup_retention_days = 0;
        no_backups.engine_version = "15.9".into();
        let blocked = ReadinessRow::assess(&no_backups, &inputs(), &policy);
        assert_eq!(blocked.verdict, Verdict::Blocked);
        assert_eq!(blocked.blocking, ["aurora-version", "automated-backups"]);
        assert_eq!(blocked.aurora_version, None);

        let error = ReadinessRow::error(&source(&[]), "rds:DescribeDBParameters failed");
        assert_eq!(error.verdict, Verdict::Error);
        assert_eq!(error.aurora_class, "db.r6g.large");
        assert_eq!(error.replica_build, BuildEstimate::for_storage(200));
    }

    #[test]
    fn formats_parse() {
        assert_eq!("CSV".parse::<Format>(), Ok(Format::Csv));
        assert_eq!("md".parse::<Format>(), Ok(Format::Markdown));
        assert!("xml".parse::<Format>().is_err());
    }

    #[test]
    fn verdicts_follow_the_preflight() {
        assert_eq!(Verdict::of(true, &[]), Verdict::Ready);
        assert_eq!(Verdict::of(false, &[]), Verdict::NeedsAcknowledgement);
        assert_eq!(
            Verdict::of(false, &["automated-backups".into()]),
            Verdict::Blocked
        );
    }
}
