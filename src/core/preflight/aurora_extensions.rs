//! Which extensions each Aurora PostgreSQL major version offers: AWS's published table, shipped
//! as data (`aurora_extensions.csv`, read into the binary), and the judgement of the extensions
//! installed on a source against it.
//!
//! The data says how much of each major's table it holds: only a `complete` table can say that
//! Aurora lacks an extension; with a `partial` or `unread` one, what it does not list is
//! unconfirmed (a warning), never a failure made of missing data.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::LazyLock;

/// The data shipped with the agent (format in its header).
const SHIPPED_TEXT: &str = include_str!("aurora_extensions.csv");

/// [`SHIPPED_TEXT`], parsed once. A malformed file is a unit-test failure
/// (`the_shipped_data_parses`); were one shipped anyway, the check warns with the reason.
pub(super) static SHIPPED: LazyLock<Result<Tables, String>> = LazyLock::new(|| parse(SHIPPED_TEXT));

/// Extensions every database has from its creation: nothing to move, nothing to check.
pub(super) const ALWAYS_PRESENT: [&str; 1] = ["plpgsql"];

/// How much of one major version's table the data holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Completeness {
    /// Every row: an extension not listed is not offered.
    Complete,
    /// Some rows: an extension listed is offered; one not listed is unknown.
    Partial,
    /// No row read.
    Unread,
}

impl Completeness {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "complete" => Some(Self::Complete),
            "partial" => Some(Self::Partial),
            "unread" => Some(Self::Unread),
            _ => None,
        }
    }
}

/// One major version's table: extension name → newest version listed (empty when the table
/// gives none).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    pub completeness: Completeness,
    pub offers: BTreeMap<String, String>,
}

/// The whole data: where it comes from, when it was read, and a table per major version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tables {
    pub source: String,
    /// `YYYY-MM-DD`.
    pub read: String,
    pub majors: BTreeMap<u32, Table>,
}

/// Parses the data; the error names the line (1-based) and what is wrong with it.
pub fn parse(text: &str) -> Result<Tables, String> {
    let mut source = None;
    let mut read = None;
    let mut majors: BTreeMap<u32, Table> = BTreeMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = |why: String| format!("line {}: {why}: `{line}`", i + 1);
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        match fields.as_slice() {
            ["source", url] => {
                if !url.starts_with("https://") {
                    return Err(at("the source is not an https URL".into()));
                }
                if source.replace(url.to_string()).is_some() {
                    return Err(at("a second `source`".into()));
                }
            }
            ["read", date] => {
                if !is_date(date) {
                    return Err(at("the date is not YYYY-MM-DD".into()));
                }
                if read.replace(date.to_string()).is_some() {
                    return Err(at("a second `read`".into()));
                }
            }
            ["table", major, completeness] => {
                let major = parse_major(major).map_err(&at)?;
                let completeness = Completeness::parse(completeness).ok_or_else(|| {
                    at("completeness is not `complete`, `partial` or `unread`".into())
                })?;
                let table = Table {
                    completeness,
                    offers: BTreeMap::new(),
                };
                if majors.insert(major, table).is_some() {
                    return Err(at(format!("a second table for {major}")));
                }
            }
            ["offers", major, name, version] => {
                let major = parse_major(major).map_err(&at)?;
                if !is_extension_name(name) {
                    return Err(at(format!("`{name}` is not an extension name")));
                }
                let table = majors
                    .get_mut(&major)
                    .ok_or_else(|| at(format!("no `table,{major},…` line before it")))?;
                if table.completeness == Completeness::Unread {
                    return Err(at(format!("the table for {major} is marked unread")));
                }
                if table
                    .offers
                    .insert(name.to_string(), version.to_string())
                    .is_some()
                {
                    return Err(at(format!("`{name}` listed twice for {major}")));
                }
            }
            _ => return Err(at("not a `source`, `read`, `table` or `offers` line".into())),
        }
    }
    for (major, table) in &majors {
        if table.completeness != Completeness::Unread && table.offers.is_empty() {
            return Err(format!(
                "the table for {major} is marked read but lists nothing"
            ));
        }
    }
    Ok(Tables {
        source: source.ok_or("no `source` line")?,
        read: read.ok_or("no `read` line")?,
        majors,
    })
}

fn parse_major(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(m) if m > 0 => Ok(m),
        _ => Err(format!("`{s}` is not a major version")),
    }
}

fn is_date(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 10
        && b.iter().enumerate().all(|(i, c)| {
            if i == 4 || i == 7 {
                *c == b'-'
            } else {
                c.is_ascii_digit()
            }
        })
}

/// What `pg_extension.extname` holds for the extensions AWS lists: lower-case letters,
/// digits, `_` and `-` (`uuid-ossp`).
fn is_extension_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-')
}

/// The installed extensions judged against one major version's table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing installed besides what every database has.
    NothingToCheck,
    /// Every installed extension is in the table (how many).
    AllOffered(usize),
    /// The table is complete and lacks these (`name version`).
    Missing(Vec<String>),
    /// The table is partial, unread or absent (`None`), and does not list these.
    Unconfirmed(Option<Completeness>, Vec<String>),
}

/// Judges `installed` (name, version; from every database, so a name may repeat with different
/// versions) against `major`'s table.
pub fn judge(tables: &Tables, major: u32, installed: &[(String, String)]) -> Verdict {
    let installed: BTreeSet<&(String, String)> = installed
        .iter()
        .filter(|(name, _)| !ALWAYS_PRESENT.contains(&name.as_str()))
        .collect();
    if installed.is_empty() {
        return Verdict::NothingToCheck;
    }
    let table = tables.majors.get(&major);
    let absent: Vec<String> = installed
        .iter()
        .filter(|(name, _)| !table.is_some_and(|t| t.offers.contains_key(name)))
        .map(|(name, version)| format!("{name} {version}"))
        .collect();
    match table.map(|t| t.completeness) {
        _ if absent.is_empty() => {
            let names: BTreeSet<&String> = installed.iter().map(|(name, _)| name).collect();
            Verdict::AllOffered(names.len())
        }
        Some(Completeness::Complete) => Verdict::Missing(absent),
        completeness => Verdict::Unconfirmed(completeness, absent),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str = "# a comment\nsource,https://example.com/page\nread,2026-12-04\n";

    fn data(body: &str) -> Result<Tables, String> {
        parse(&format!("{HEAD}{body}"))
    }

    fn installed(names: &[&str]) -> Vec<(String, String)> {
        names
            .iter()
            .map(|n| (n.to_string(), "1.0".to_string()))
            .collect()
    }

    #[test]
    fn the_shipped_data_parses_and_says_where_it_comes_from() {
        let tables = SHIPPED.as_ref().expect("aurora_extensions.csv parses");
        assert_eq!(
            tables.source,
            "https://docs.aws.amazon.com/AmazonRDS/latest/AuroraPostgreSQLReleaseNotes/AuroraPostgreSQL.Extensions.html"
        );
        assert!(is_date(&tables.read));
        for major in 13..=18 {
            assert!(
                tables.majors.contains_key(&major),
                "Aurora PostgreSQL {major} has a line in the data, even if unread"
            );
        }
    }

    #[test]
    fn the_parser_reads_tables_rows_and_empty_versions() {
        let t = data("\ntable,16,complete\noffers,16,vector,0.8.0\noffers,16,auto_explain,\noffers,16,uuid-ossp,1.1\ntable,13,unread\n")
            .unwrap();
        assert_eq!(t.source, "https://example.com/page");
        assert_eq!(t.read, "2026-12-04");
        let t16 = &t.majors[&16];
        assert_eq!(t16.completeness, Completeness::Complete);
        assert_eq!(t16.offers["vector"], "0.8.0");
        assert_eq!(t16.offers["auto_explain"], "");
        assert!(t16.offers.contains_key("uuid-ossp"));
        assert_eq!(t.majors[&13].completeness, Completeness::Unread);
        assert!(t.majors[&13].offers.is_empty());
    }

    #[test]
    fn a_malformed_line_is_an_error_naming_it() {
        for (body, why) in [
            ("table,16,complete\noffers,16,vector\n", "line 5"),
            ("table,16,done\n", "completeness"),
            ("table,x,complete\n", "major version"),
            ("offers,16,vector,0.8.0\n", "no `table,16"),
            ("table,16,unread\noffers,16,vector,0.8.0\n", "unread"),
            (
                "table,16,complete\noffers,16,Vector,0.8.0\n",
                "extension name",
            ),
            (
                "table,16,complete\noffers,16,vector,0.8.0\noffers,16,vector,0.7.0\n",
                "twice",
            ),
            ("table,16,complete\ntable,16,partial\n", "second table"),
            ("table,16,partial\n", "lists nothing"),
            ("extension,16,vector\n", "not a `source`"),
            ("source,https://other.example\n", "second `source`"),
        ] {
            let err = data(body).expect_err(body);
            assert!(err.contains(why), "{body:?}: {err}");
        }
        assert!(parse("read,2026-12-04\n").unwrap_err().contains("source"));
        assert!(
            parse("source,https://a.example\nread,4.12.2026\n")
                .unwrap_err()
                .contains("YYYY-MM-DD")
        );
        assert!(
            parse("source,http://a.example\n")
                .unwrap_err()
                .contains("https")
        );
    }

    #[test]
    fn a_complete_table_names_what_it_lacks() {
        let t =
            data("table,15,complete\noffers,15,postgis,3.4.2\noffers,15,pg_cron,1.6\n").unwrap();
        assert_eq!(
            judge(&t, 15, &installed(&["plpgsql", "postgis", "pg_cron"])),
            Verdict::AllOffered(2)
        );
        assert_eq!(
            judge(
                &t,
                15,
                &installed(&["plpgsql", "postgis", "timescaledb", "age"])
            ),
            Verdict::Missing(vec!["age 1.0".into(), "timescaledb 1.0".into()])
        );
        assert_eq!(
            judge(&t, 15, &installed(&["plpgsql"])),
            Verdict::NothingToCheck
        );
        assert_eq!(judge(&t, 15, &[]), Verdict::NothingToCheck);
    }

    #[test]
    fn a_partial_unread_or_absent_table_only_leaves_things_unconfirmed() {
        let t = data("table,17,partial\noffers,17,citext,1.6\ntable,16,unread\n").unwrap();
        assert_eq!(
            judge(&t, 17, &installed(&["citext"])),
            Verdict::AllOffered(1)
        );
        assert_eq!(
            judge(&t, 17, &installed(&["citext", "timescaledb"])),
            Verdict::Unconfirmed(Some(Completeness::Partial), vec!["timescaledb 1.0".into()])
        );
        assert_eq!(
            judge(&t, 16, &installed(&["citext"])),
            Verdict::Unconfirmed(Some(Completeness::Unread), vec!["citext 1.0".into()])
        );
        assert_eq!(
            judge(&t, 19, &installed(&["citext"])),
            Verdict::Unconfirmed(None, vec!["citext 1.0".into()])
        );
    }

    #[test]
    fn one_extension_in_two_databases_at_two_versions_is_named_with_both() {
        let t = data("table,15,complete\noffers,15,postgis,3.4.2\n").unwrap();
        let installed = vec![
            ("hll".to_string(), "2.17".to_string()),
            ("hll".to_string(), "2.18".to_string()),
            ("hll".to_string(), "2.18".to_string()),
        ];
        assert_eq!(
            judge(&t, 15, &installed),
            Verdict::Missing(vec!["hll 2.17".into(), "hll 2.18".into()])
        );
    }
}
