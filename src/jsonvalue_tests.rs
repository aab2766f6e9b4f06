use super::*;
use prost::Message;
use serde_json::json;

use crate::proto;

fn sample() -> Json {
    json!({
        "count": 42,
        "lastEventCursor": "1234",
        "ratio": 0.125,
        "neg": -7,
        "big": 9007199254740992u64,
        "unicode": "héllo ✓ 😀",
        "nothing": null,
        "": "empty key",
        "flags": [true, false, null, 1.5, "x", {"deep": [[]]}, ""],
        "empty": {},
    })
}

/// `{"a": {"a": ... 1}}`, `levels` objects deep.
fn nested(levels: usize) -> Json {
    let mut v = json!(1);
    for _ in 0..levels {
        v = json!({ "a": v });
    }
    v
}

fn nested_lists(levels: usize) -> Json {
    let mut v = json!("x");
    for _ in 0..levels {
        v = json!([v]);
    }
    v
}

/// What a client decodes from the server's answer carrying `value`.
fn echo(value: &Json) -> Result<Json, DecodeError> {
    let msg = proto::AdminCheckpoint {
        client_id: "c".into(),
        content_type: "t".into(),
        value: Some(json_to_value(value)),
        updated_at: None,
    };
    let bytes = msg.encode_to_vec();
    let back = proto::AdminCheckpoint::decode(bytes.as_slice())?;
    Ok(back.value.map(|v| value_to_json(&v)).unwrap_or(Json::Null))
}

/// The same value as prost's own `google.protobuf.Value`.
fn to_prost(json: &Json) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match json {
        Json::Null => Kind::NullValue(0),
        Json::Bool(b) => Kind::BoolValue(*b),
        Json::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(f64::NAN)),
        Json::String(s) => Kind::StringValue(s.clone()),
        Json::Array(items) => Kind::ListValue(prost_types::ListValue {
            values: items.iter().map(to_prost).collect(),
        }),
        Json::Object(map) => Kind::StructValue(prost_types::Struct {
            fields: map.iter().map(|(k, v)| (k.clone(), to_prost(v))).collect(),
        }),
    };
    prost_types::Value { kind: Some(kind) }
}

#[test]
fn round_trips_nested_values() {
    let v = sample();
    assert_eq!(echo(&v).unwrap(), v);
}

#[test]
fn the_wire_form_is_googles_value() {
    // What we encode, prost's own Value decodes to the same thing, and the other way round.
    let v = sample();
    let ours = WireValue(v.clone()).encode_to_vec();
    assert_eq!(ours.len(), WireValue(v.clone()).encoded_len());
    let theirs = prost_types::Value::decode(ours.as_slice()).unwrap();
    assert_eq!(theirs, to_prost(&v));
    let back = WireValue::decode(to_prost(&v).encode_to_vec().as_slice()).unwrap();
    assert_eq!(back.0, v);
}

#[test]
fn integers_beyond_2_pow_53_lose_precision_as_documented() {
    let v = json!(9007199254740993u64);
    let back = echo(&v).unwrap();
    assert_ne!(back, v);
    assert_eq!(back.as_f64(), Some(9007199254740992.0));
}

#[test]
fn an_unset_kind_reads_as_null() {
    assert_eq!(WireValue::decode(&[][..]).unwrap().0, Json::Null);
}

#[test]
fn prost_alone_stops_near_33_object_levels() {
    // The measurement behind MAX_DEPTH: prost's generic Value decoder (100 message levels, three
    // per JSON object level) cannot read what a Go server stores.
    let deep = to_prost(&nested(40)).encode_to_vec();
    assert!(prost_types::Value::decode(deep.as_slice()).is_err());
    let shallow = to_prost(&nested(32)).encode_to_vec();
    assert!(prost_types::Value::decode(shallow.as_slice()).is_ok());
}

#[test]
fn max_depth_round_trips_through_a_checkpoint_message_and_one_more_level_does_not() {
    const { assert!(MAX_DEPTH >= 64) };
    for v in [nested(MAX_DEPTH), nested_lists(MAX_DEPTH)] {
        assert_eq!(depth(&v), MAX_DEPTH);
        assert_eq!(echo(&v).unwrap(), v);
    }
    for v in [nested(MAX_DEPTH + 1), nested_lists(MAX_DEPTH + 1)] {
        let err = echo(&v).unwrap_err().to_string();
        assert!(is_decode_failure(&err), "{err}");
        assert!(
            err.contains(&format!("more than {MAX_DEPTH} levels")),
            "{err}"
        );
    }
}

#[test]
fn a_hostile_depth_is_refused_without_recursing() {
    // 100,000 nested lists: refused at level MAX_DEPTH + 1, never decoded further.
    let mut bytes = Vec::new();
    for _ in 0..100_000 {
        let mut outer = Vec::new();
        encode_key(6, WireType::LengthDelimited, &mut outer);
        let mut list = Vec::new();
        put_bytes(1, &bytes, &mut list);
        encode_varint(list.len() as u64, &mut outer);
        outer.extend_from_slice(&list);
        bytes = outer;
        if bytes.len() > 4_000_000 {
            break;
        }
    }
    let err = WireValue::decode(bytes.as_slice()).unwrap_err().to_string();
    assert!(err.contains("levels deep"), "{err}");
}

#[test]
fn invalid_utf8_is_a_decode_error_that_says_so() {
    for bytes in [
        vec![0x1a, 0x02, 0xff, 0xfe],                         // string_value
        vec![0x2a, 0x06, 0x0a, 0x04, 0x0a, 0x02, 0xc3, 0x28], // a struct key
    ] {
        let err = WireValue::decode(bytes.as_slice()).unwrap_err().to_string();
        assert!(err.contains("not valid UTF-8"), "{err}");
    }
}

#[test]
fn truncated_input_is_an_error_not_a_panic() {
    let full = WireValue(sample()).encode_to_vec();
    for n in 0..full.len() {
        let _ = WireValue::decode(&full[..n]);
    }
}

#[test]
fn snapshot_limits_name_the_limit() {
    let text = |v: &Json| v.to_string();
    assert_eq!(
        snapshot_value(&text(&sample()), "c", "t", None).unwrap(),
        sample()
    );
    assert!(snapshot_value(&text(&nested(MAX_DEPTH)), "c", "t", None).is_ok());
    let err = snapshot_value(&text(&nested(MAX_DEPTH + 1)), "c", "t", None).unwrap_err();
    assert!(
        err.contains("101 levels") && err.contains("at most 100"),
        "{err}"
    );
    let err = snapshot_value(&text(&nested(200)), "c", "t", None).unwrap_err();
    assert!(err.contains("at most 100 levels"), "{err}");
    assert!(!err.contains("not valid JSON"), "{err}");
    let huge = format!("1{}", "0".repeat(400));
    let err = snapshot_value(&huge, "c", "t", None).unwrap_err();
    assert!(err.contains("64-bit float"), "{err}");
    assert!(!err.contains("not valid JSON"), "{err}");
    let err = snapshot_value("{", "c", "t", None).unwrap_err();
    assert!(err.contains("not valid JSON"), "{err}");
}

#[test]
fn the_size_check_bounds_the_real_echo() {
    let v = json!({"blob": "x".repeat(10_000), "list": [1, 2.5, null, {"k": "v"}]});
    let real = proto::AdminCheckpoint {
        client_id: "client".into(),
        content_type: "type/x".into(),
        value: Some(json_to_value(&v)),
        updated_at: Some(prost_types::Timestamp {
            seconds: i64::MAX,
            nanos: 999_999_999,
        }),
    }
    .encoded_len();
    let bound = message_len(&v, "client", "type/x");
    assert!(bound >= real && bound < real + 64, "{bound} vs {real}");
    let text = v.to_string();
    assert!(snapshot_value(&text, "client", "type/x", Some(bound)).is_ok());
    let err = snapshot_value(&text, "client", "type/x", Some(bound - 1)).unwrap_err();
    assert!(err.contains("max_message_size"), "{err}");
}
