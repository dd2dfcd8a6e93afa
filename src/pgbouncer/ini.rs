//! The `[databases]` entries of a `pgbouncer.ini`, read and re-pointed without disturbing the
//! rest of the file. Pure: text in, text out.
//!
//! The grammar is PgBouncer's (libusual's ini parser and `loader.c`'s connstring parser):
//! - a section header is `[name]`, compared case-insensitively;
//! - a line whose first non-blank character is `;` or `#` is a comment (there are no trailing
//!   comments: the value runs to the end of the line);
//! - an entry is `name = <connstring>`, blanks allowed around `=`; a name may be double-quoted;
//! - a connstring is blank-separated `key=value` pairs, blanks allowed around `=`; a value may be
//!   single-quoted, with `''` standing for one quote inside.
//!
//! [`repoint`] replaces the bytes of the `host` and `port` values of one entry (adding
//! ` port=<n>`, or ` host=<h>`, when the entry has none) and keeps every other byte of the file.
//! It never adds an entry: the team's file says which databases PgBouncer serves.

use std::ops::Range;

/// One `[databases]` entry as PgBouncer reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DbEntry {
    /// `host=`; `None` when absent (PgBouncer then uses its Unix socket directory).
    pub host: Option<String>,
    /// `port=`, 5432 when absent.
    pub port: u16,
    /// `dbname=`, the entry's own name when absent (PgBouncer's default).
    pub dbname: String,
    /// The connstring as written in the file.
    pub connstring: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IniError {
    #[error("pgbouncer.ini line {line}: {reason}")]
    Malformed { line: usize, reason: String },
    #[error("pgbouncer.ini has more than one [databases] entry named {0:?}")]
    Duplicate(String),
    #[error("pgbouncer.ini has no [databases] entry named {0:?}")]
    NotFound(String),
    #[error("{0:?} is not a host name or IP address")]
    BadHost(String),
    #[error("port 0 is not a port")]
    BadPort,
}

/// A `key=value` pair of a connstring, with byte ranges into the whole file.
struct Pair {
    key: String,
    value: String,
    /// The value as written (quotes included).
    value_span: Range<usize>,
}

/// The entry `database` of the `[databases]` section: its connstring's range and pairs.
struct Found {
    connstring: Range<usize>,
    pairs: Vec<Pair>,
}

/// The entry named `database`, if the `[databases]` section has it.
pub fn entry(text: &str, database: &str) -> Result<Option<DbEntry>, IniError> {
    let Some(found) = find(text, database)? else {
        return Ok(None);
    };
    let get = |k: &str| {
        found
            .pairs
            .iter()
            .find(|p| p.key.eq_ignore_ascii_case(k))
            .map(|p| p.value.clone())
    };
    let port = match get("port") {
        None => 5432,
        Some(p) => p.trim().parse::<u16>().map_err(|_| IniError::Malformed {
            line: line_of(text, found.connstring.start),
            reason: format!("port={p:?} is not a port number"),
        })?,
    };
    Ok(Some(DbEntry {
        host: get("host"),
        port,
        dbname: get("dbname").unwrap_or_else(|| database.to_string()),
        connstring: text[found.connstring].to_string(),
    }))
}

/// `text` with the entry `database`'s `host=` and `port=` set to `host` and `port`, every other
/// byte unchanged. An error when the entry is missing (it is never added) or `host` is not a
/// plain host name or IP address.
pub fn repoint(text: &str, database: &str, host: &str, port: u16) -> Result<String, IniError> {
    check_host(host)?;
    if port == 0 {
        return Err(IniError::BadPort);
    }
    let found = find(text, database)?.ok_or_else(|| IniError::NotFound(database.to_string()))?;
    let span = |k: &str| {
        found
            .pairs
            .iter()
            .find(|p| p.key.eq_ignore_ascii_case(k))
            .map(|p| p.value_span.clone())
    };
    // The insertions go at the connstring's end (host first), which is after every value:
    // inserting them first, then replacing values from the last, keeps each range valid.
    let mut tail = String::new();
    let mut replace: Vec<(Range<usize>, String)> = Vec::new();
    match span("host") {
        Some(r) => replace.push((r, host.to_string())),
        None => tail.push_str(&format!(" host={host}")),
    }
    match span("port") {
        Some(r) => replace.push((r, port.to_string())),
        None => tail.push_str(&format!(" port={port}")),
    }
    let mut out = text.to_string();
    out.insert_str(found.connstring.end, &tail);
    replace.sort_by_key(|(r, _)| std::cmp::Reverse(r.start));
    for (r, value) in replace {
        out.replace_range(r, &value);
    }
    Ok(out)
}

/// A host the companion will write: a DNS name or an IP address, nothing that could change
/// the connstring's meaning (blanks, quotes, `=`, …).
pub fn check_host(host: &str) -> Result<(), IniError> {
    let ok = !host.is_empty()
        && host.len() <= 253
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'))
        && !host.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(IniError::BadHost(host.to_string()))
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset].matches('\n').count() + 1
}

/// Finds the entry; an error if it appears twice or its connstring does not parse.
fn find(text: &str, database: &str) -> Result<Option<Found>, IniError> {
    let mut in_databases = false;
    let mut found: Option<Found> = None;
    let mut offset = 0;
    for (index, raw) in text.split_inclusive('\n').enumerate() {
        let start = offset;
        offset += raw.len();
        let line = raw.trim_end_matches(['\n', '\r']);
        let body = line.trim_start();
        let lead = line.len() - body.len();
        let body = body.trim_end();
        if body.is_empty() || body.starts_with(';') || body.starts_with('#') {
            continue;
        }
        if let Some(rest) = body.strip_prefix('[') {
            let name = rest.strip_suffix(']').ok_or_else(|| IniError::Malformed {
                line: index + 1,
                reason: "a section header without its closing `]`".into(),
            })?;
            in_databases = name.trim().eq_ignore_ascii_case("databases");
            continue;
        }
        if !in_databases {
            continue;
        }
        let Some(eq) = body.find('=') else {
            return Err(IniError::Malformed {
                line: index + 1,
                reason: "an entry without `=`".into(),
            });
        };
        let key = body[..eq].trim();
        let key = key
            .strip_prefix('"')
            .and_then(|k| k.strip_suffix('"'))
            .unwrap_or(key);
        if key != database {
            continue;
        }
        if found.is_some() {
            return Err(IniError::Duplicate(database.to_string()));
        }
        let value_start = start + lead + eq + 1;
        let value_text = &text[value_start..start + lead + body.len()];
        let skipped = value_text.len() - value_text.trim_start().len();
        let cs_start = value_start + skipped;
        let cs_end = start + lead + body.len();
        let pairs = parse_connstring(&text[cs_start..cs_end], cs_start).map_err(|reason| {
            IniError::Malformed {
                line: index + 1,
                reason,
            }
        })?;
        found = Some(Found {
            connstring: cs_start..cs_end,
            pairs,
        });
    }
    Ok(found)
}

/// `key=value` pairs; ranges are offset by `base`.
fn parse_connstring(s: &str, base: usize) -> Result<Vec<Pair>, String> {
    let b = s.as_bytes();
    let mut i = 0;
    let mut pairs = Vec::new();
    let blank = |c: u8| c == b' ' || c == b'\t';
    loop {
        while i < b.len() && blank(b[i]) {
            i += 1;
        }
        if i >= b.len() {
            return Ok(pairs);
        }
        let k0 = i;
        while i < b.len() && !blank(b[i]) && b[i] != b'=' {
            i += 1;
        }
        let key = s[k0..i].to_string();
        while i < b.len() && blank(b[i]) {
            i += 1;
        }
        if i >= b.len() || b[i] != b'=' {
            // The word itself is not repeated: it may be part of a password (`password=a b`),
            // and this text reaches the agent's record and notifications.
            return Err(format!(
                "a connstring word at byte {k0} has no `=` (a value with spaces must be quoted)"
            ));
        }
        i += 1;
        while i < b.len() && blank(b[i]) {
            i += 1;
        }
        let v0 = i;
        let mut value = String::new();
        if i < b.len() && b[i] == b'\'' {
            i += 1;
            loop {
                if i >= b.len() {
                    return Err(format!("connstring value of {key:?} has no closing quote"));
                }
                if b[i] == b'\'' {
                    if i + 1 < b.len() && b[i + 1] == b'\'' {
                        value.push('\'');
                        i += 2;
                        continue;
                    }
                    i += 1;
                    break;
                }
                let c = s[i..].chars().next().expect("in bounds");
                value.push(c);
                i += c.len_utf8();
            }
        } else {
            while i < b.len() && !blank(b[i]) {
                i += 1;
            }
            value.push_str(&s[v0..i]);
        }
        pairs.push(Pair {
            key,
            value,
            value_span: base + v0..base + i,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INI: &str = "; the team's file\n\
        [DataBases]\n\
        # orders\n\
        orders = host=orders-pg.abc.rds.amazonaws.com port=5432 dbname=orders\n\
        app=host = 10.0.0.5   dbname='my ''app''' pool_size=20\r\n\
        \"quoted\" = dbname=q\n\
        nohost = dbname=x\n\
        \n\
        [pgbouncer]\n\
        app = not-a-database\n\
        listen_port = 6432\n";

    #[test]
    fn reads_entries_with_defaults_and_quotes() {
        let e = entry(INI, "orders").unwrap().unwrap();
        assert_eq!(e.host.as_deref(), Some("orders-pg.abc.rds.amazonaws.com"));
        assert_eq!(e.port, 5432);
        assert_eq!(e.dbname, "orders");
        let e = entry(INI, "app").unwrap().unwrap();
        assert_eq!(e.host.as_deref(), Some("10.0.0.5"));
        assert_eq!(e.port, 5432, "the default port");
        assert_eq!(e.dbname, "my 'app'");
        assert_eq!(
            e.connstring,
            "host = 10.0.0.5   dbname='my ''app''' pool_size=20"
        );
        let e = entry(INI, "quoted").unwrap().unwrap();
        assert_eq!((e.host, e.dbname.as_str()), (None, "q"));
        assert_eq!(entry(INI, "nohost").unwrap().unwrap().dbname, "x");
        assert_eq!(entry(INI, "listen_port").unwrap(), None, "other sections");
        assert_eq!(entry(INI, "missing").unwrap(), None);
        assert_eq!(
            entry(INI, "Orders").unwrap(),
            None,
            "names are case-sensitive"
        );
    }

    #[test]
    fn repoint_changes_only_host_and_port_of_one_entry() {
        let out = repoint(INI, "orders", "aurora.cluster-x.rds.amazonaws.com", 5433).unwrap();
        assert_eq!(
            out,
            INI.replace(
                "host=orders-pg.abc.rds.amazonaws.com port=5432",
                "host=aurora.cluster-x.rds.amazonaws.com port=5433"
            )
        );
        let e = entry(&out, "orders").unwrap().unwrap();
        assert_eq!(
            (e.host.as_deref(), e.port, e.dbname.as_str()),
            (Some("aurora.cluster-x.rds.amazonaws.com"), 5433, "orders")
        );
    }

    #[test]
    fn repoint_adds_a_missing_port_and_keeps_crlf() {
        let out = repoint(INI, "app", "10.0.0.9", 6543).unwrap();
        assert_eq!(
            out,
            INI.replace(
                "app=host = 10.0.0.5   dbname='my ''app''' pool_size=20\r\n",
                "app=host = 10.0.0.9   dbname='my ''app''' pool_size=20 port=6543\r\n"
            )
        );
        let out = repoint(INI, "nohost", "h1", 1).unwrap();
        assert!(out.contains("nohost = dbname=x host=h1 port=1\n"), "{out}");
        assert_eq!(entry(&out, "nohost").unwrap().unwrap().port, 1);
    }

    #[test]
    fn repoint_is_idempotent() {
        let once = repoint(INI, "orders", "h", 5432).unwrap();
        assert_eq!(repoint(&once, "orders", "h", 5432).unwrap(), once);
    }

    #[test]
    fn refusals() {
        assert_eq!(
            repoint(INI, "missing", "h", 1),
            Err(IniError::NotFound("missing".into()))
        );
        for bad in ["", "a b", "h'x", "h=1", "-h", "a\nb"] {
            assert!(
                matches!(repoint(INI, "orders", bad, 1), Err(IniError::BadHost(_))),
                "{bad:?}"
            );
        }
        assert_eq!(repoint(INI, "orders", "h", 0), Err(IniError::BadPort));
        let dup = "[databases]\na = host=x\na = host=y\n";
        assert_eq!(entry(dup, "a"), Err(IniError::Duplicate("a".into())));
        let unclosed = "[databases]\na = host='x\n";
        assert!(matches!(
            entry(unclosed, "a"),
            Err(IniError::Malformed { line: 2, .. })
        ));
        let bad_port = "[databases]\na = port=x\n";
        assert!(matches!(
            entry(bad_port, "a"),
            Err(IniError::Malformed { .. })
        ));
    }
}
