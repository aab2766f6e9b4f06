//! Lossless conversion between JSON (`serde_json::Value`) and `google.protobuf.Value`.
//!
//! Objects, arrays, strings, bools and nulls round-trip exactly. Numbers travel as 64-bit
//! floats (the wire type): integers up to 2^53 come back as integers, larger ones lose
//! precision, and non-finite floats cannot be represented in JSON at all.

use prost_types::value::Kind;
use prost_types::{ListValue, Struct, Value};

/// Largest integer a double holds exactly.
const MAX_SAFE_INTEGER: f64 = 9_007_199_254_740_992.0;

/// JSON → protobuf Value.
pub fn json_to_value(json: &serde_json::Value) -> Value {
    let kind = match json {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(*b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(f64::NAN)),
        serde_json::Value::String(s) => Kind::StringValue(s.clone()),
        serde_json::Value::Array(items) => Kind::ListValue(ListValue {
            values: items.iter().map(json_to_value).collect(),
        }),
        serde_json::Value::Object(map) => Kind::StructValue(Struct {
            fields: map
                .iter()
                .map(|(k, v)| (k.clone(), json_to_value(v)))
                .collect(),
        }),
    };
    Value { kind: Some(kind) }
}

/// protobuf Value → JSON. An unset kind is read as null, like protojson does.
pub fn value_to_json(value: &Value) -> serde_json::Value {
    match &value.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::BoolValue(b)) => serde_json::Value::Bool(*b),
        Some(Kind::NumberValue(n)) => number_to_json(*n),
        Some(Kind::StringValue(s)) => serde_json::Value::String(s.clone()),
        Some(Kind::ListValue(list)) => {
            serde_json::Value::Array(list.values.iter().map(value_to_json).collect())
        }
        Some(Kind::StructValue(st)) => serde_json::Value::Object(
            st.fields
                .iter()
                .map(|(k, v)| (k.clone(), value_to_json(v)))
                .collect(),
        ),
    }
}

fn number_to_json(n: f64) -> serde_json::Value {
    if n.is_finite() && n.fract() == 0.0 && n.abs() <= MAX_SAFE_INTEGER {
        // Exact: |n| <= 2^53 fits an i64 without rounding.
        serde_json::Value::Number(serde_json::Number::from(n as i64))
    } else {
        serde_json::Number::from_f64(n)
            .map(serde_json::Value::Number)
            .unwrap_or(serde_json::Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn round_trips_nested_values() {
        let v = json!({
            "count": 42,
            "lastEventCursor": "1234",
            "ratio": 0.125,
            "neg": -7,
            "big": 9007199254740992u64,
            "unicode": "héllo ✓ 😀",
            "nothing": null,
            "flags": [true, false, null, 1.5, "x", {"deep": [[]]}],
            "empty": {},
        });
        assert_eq!(value_to_json(&json_to_value(&v)), v);
    }

    #[test]
    fn integers_beyond_2_pow_53_lose_precision_as_documented() {
        let v = json!(9007199254740993u64);
        let back = value_to_json(&json_to_value(&v));
        assert_ne!(back, v);
        assert_eq!(back.as_f64(), Some(9007199254740992.0));
    }

    #[test]
    fn unset_kind_reads_as_null() {
        assert_eq!(
            value_to_json(&Value { kind: None }),
            serde_json::Value::Null
        );
    }
}
