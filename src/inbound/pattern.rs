//! The subset of EventBridge event-pattern matching that the agent's rules use, so that the
//! samples in `events/` can be checked against the patterns that route them.
//!
//! Supported: nested objects; lists of exact strings, numbers, booleans or null; and the
//! operators `prefix`, `anything-but` (list of values, one value, or `{"prefix": ..}`),
//! `exists` and `equals-ignore-case`. As in EventBridge, a list in the event matches when any
//! element matches, and arrays of objects are matched element by element.

use serde_json::Value;

/// Whether `event` matches `pattern`.
pub fn matches(pattern: &Value, event: &Value) -> bool {
    let Some(fields) = pattern.as_object() else {
        return false;
    };
    fields
        .iter()
        .all(|(key, rule)| field_matches(rule, event.get(key)))
}

fn field_matches(rule: &Value, value: Option<&Value>) -> bool {
    match rule {
        Value::Object(_) => match value {
            Some(Value::Object(_)) => matches(rule, value.unwrap_or(&Value::Null)),
            Some(Value::Array(items)) => items.iter().any(|i| i.is_object() && matches(rule, i)),
            _ => false,
        },
        Value::Array(alternatives) => alternatives
            .iter()
            .any(|alt| alternative_matches(alt, value)),
        // A bare scalar is not valid in a pattern.
        _ => false,
    }
}

/// The event's values at this field: a list is matched element by element.
fn leaves(value: Option<&Value>) -> Vec<&Value> {
    match value {
        Some(Value::Array(items)) => items.iter().collect(),
        Some(v) => vec![v],
        None => vec![],
    }
}

fn alternative_matches(alt: &Value, value: Option<&Value>) -> bool {
    let Value::Object(op) = alt else {
        return leaves(value).into_iter().any(|v| v == alt);
    };
    if let Some(Value::Bool(should_exist)) = op.get("exists") {
        return value.is_some() == *should_exist;
    }
    if let Some(Value::String(prefix)) = op.get("prefix") {
        return leaves(value)
            .into_iter()
            .any(|v| v.as_str().is_some_and(|s| s.starts_with(prefix.as_str())));
    }
    if let Some(Value::String(expected)) = op.get("equals-ignore-case") {
        return leaves(value)
            .into_iter()
            .any(|v| v.as_str().is_some_and(|s| s.eq_ignore_ascii_case(expected)));
    }
    if let Some(excluded) = op.get("anything-but") {
        let values = leaves(value);
        if values.is_empty() {
            return false;
        }
        return values.into_iter().any(|v| !excluded_by(excluded, v));
    }
    false
}

fn excluded_by(excluded: &Value, v: &Value) -> bool {
    match excluded {
        Value::Array(list) => list.contains(v),
        Value::Object(op) => match op.get("prefix") {
            Some(Value::String(p)) => v.as_str().is_some_and(|s| s.starts_with(p.as_str())),
            _ => false,
        },
        scalar => scalar == v,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn exact_values_match_any_listed_alternative() {
        let p = json!({"source": ["aws.rds"], "detail-type": ["A", "B"]});
        assert!(matches(
            &p,
            &json!({"source": "aws.rds", "detail-type": "B"})
        ));
        assert!(!matches(
            &p,
            &json!({"source": "aws.ec2", "detail-type": "B"})
        ));
        assert!(!matches(&p, &json!({"source": "aws.rds"})));
    }

    #[test]
    fn nested_arrays_of_objects_match_element_by_element() {
        let p = json!({"detail": {"tags": {"key": [{"prefix": "aurora-migration"}]}}});
        let yes = json!({"detail": {"tags": [{"key": "team"}, {"key": "aurora-migration:abort"}]}});
        let no = json!({"detail": {"tags": [{"key": "team"}]}});
        assert!(matches(&p, &yes));
        assert!(!matches(&p, &no));
    }

    #[test]
    fn anything_but_exists_and_ignore_case() {
        let p = json!({"a": [{"anything-but": {"prefix": "arn:role/agent"}}], "b": [{"exists": false}], "c": [{"equals-ignore-case": "RDS"}]});
        assert!(matches(&p, &json!({"a": "arn:role/person", "c": "rds"})));
        assert!(!matches(&p, &json!({"a": "arn:role/agent/x", "c": "rds"})));
        assert!(!matches(
            &p,
            &json!({"a": "arn:role/person", "b": 1, "c": "rds"})
        ));
    }
}
