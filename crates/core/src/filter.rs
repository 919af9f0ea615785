//! Record filters of the JSON job spec (`"filter": [{"field": "amount",
//! "op": "ge", "value": 500}]`): stateless, applied where each record is
//! read, in the source task (chained: no exchange, no state). A record
//! passes when every filter holds; a field that is missing or of another
//! type does not hold (as SQL's `WHERE` with `NULL`).

use serde::{Deserialize, Serialize};

/// One condition on a field of the input events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    pub field: String,
    pub op: FilterOp,
    pub value: FilterValue,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FilterOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// What a field is compared with: an integer, or a string (`eq` / `ne`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum FilterValue {
    Int(i64),
    Str(String),
}

impl From<i64> for FilterValue {
    fn from(v: i64) -> Self {
        FilterValue::Int(v)
    }
}

impl From<&str> for FilterValue {
    fn from(v: &str) -> Self {
        FilterValue::Str(v.into())
    }
}

impl Filter {
    /// `field op value`.
    pub fn new(field: &str, op: FilterOp, value: impl Into<FilterValue>) -> Self {
        Self {
            field: field.into(),
            op,
            value: value.into(),
        }
    }

    /// Whether an integer field's value `v` passes.
    #[inline]
    pub fn holds_for_int(&self, v: i64) -> bool {
        match self.value {
            FilterValue::Int(x) => self.op.holds(v.cmp(&x)),
            FilterValue::Str(_) => false,
        }
    }

    /// Whether a JSON field (absent: `None`) passes.
    pub fn holds_for_json(&self, v: Option<&serde_json::Value>) -> bool {
        match (v, &self.value) {
            (Some(v), FilterValue::Int(_)) => v.as_i64().is_some_and(|v| self.holds_for_int(v)),
            (Some(serde_json::Value::String(s)), FilterValue::Str(x)) => {
                self.op.holds(s.as_str().cmp(x.as_str()))
            }
            _ => false,
        }
    }

    /// Why this filter cannot be used, if it cannot.
    pub fn problem(&self) -> Option<String> {
        if self.field.is_empty() {
            return Some("filter.field must name a field".into());
        }
        match (&self.value, self.op) {
            (FilterValue::Str(_), FilterOp::Eq | FilterOp::Ne) | (FilterValue::Int(_), _) => None,
            (FilterValue::Str(_), op) => Some(format!(
                "filter on {:?}: a string compares with eq or ne only, not {op:?}",
                self.field
            )),
        }
    }
}

impl FilterOp {
    fn holds(self, ord: std::cmp::Ordering) -> bool {
        use std::cmp::Ordering::*;
        match self {
            FilterOp::Eq => ord == Equal,
            FilterOp::Ne => ord != Equal,
            FilterOp::Lt => ord == Less,
            FilterOp::Le => ord != Greater,
            FilterOp::Gt => ord == Greater,
            FilterOp::Ge => ord != Less,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn f(op: &str, value: serde_json::Value) -> Filter {
        serde_json::from_value(json!({"field": "x", "op": op, "value": value})).unwrap()
    }

    #[test]
    fn integer_comparisons() {
        let cases = [
            ("eq", 5, 5, true),
            ("eq", 5, 6, false),
            ("ne", 5, 6, true),
            ("lt", 5, 4, true),
            ("lt", 5, 5, false),
            ("le", 5, 5, true),
            ("gt", 5, 6, true),
            ("gt", 5, 5, false),
            ("ge", 5, 5, true),
            ("ge", 5, 4, false),
        ];
        for (op, x, v, want) in cases {
            assert_eq!(f(op, json!(x)).holds_for_int(v), want, "{v} {op} {x}");
            assert_eq!(f(op, json!(x)).holds_for_json(Some(&json!(v))), want);
        }
    }

    #[test]
    fn strings_missing_fields_and_other_types() {
        let eq = f("eq", json!("de"));
        assert!(eq.holds_for_json(Some(&json!("de"))));
        assert!(!eq.holds_for_json(Some(&json!("fr"))));
        assert!(f("ne", json!("de")).holds_for_json(Some(&json!("fr"))));
        assert!(!eq.holds_for_json(None), "a missing field does not hold");
        assert!(!eq.holds_for_json(Some(&json!(3))), "nor another type");
        assert!(!f("ge", json!(3)).holds_for_json(Some(&json!("3"))));
        assert!(!eq.holds_for_int(3));
        assert!(f("lt", json!("de")).problem().unwrap().contains("eq or ne"));
        assert!(f("lt", json!(1)).problem().is_none());
    }
}
