//! How the runtime's position is stored inside the processor's checkpoint value.
//!
//! The stored value stays the processor's JSON object; the runtime owns two keys in it:
//!
//! - `lastEventCursor`: the contiguous watermark, the cursor of the last event of the
//!   completed prefix of the stream (every event at or before it has completed). Set whenever
//!   the runtime knows a position; when it knows none, a non-null value the processor put
//!   there is replaced by `null` (an absent key stays absent).
//! - `completedAboveWatermark`: the cursors of the events completed after the watermark, in
//!   stream order, without duplicates, e.g. `["1043", "1047"]`. Only present when non-empty,
//!   so a run that never completes out of order (`max_concurrency = 1`) stores exactly the
//!   format it always did. A reader that only knows `lastEventCursor` resumes after the
//!   watermark and redoes those events: duplicates, never loss.
//! - `shardLayout`: `{"index": i, "count": n}`, the share of the stream the position covers
//!   (`crate::shard`). Only present when `n > 1`; absent means shard 0 of 1, so an unsharded
//!   run stores exactly the format it always did. A run refuses a checkpoint of another layout.

use serde_json::{Map, Value};

use crate::shard::ShardLayout;

/// The key of the contiguous watermark.
pub const CURSOR_KEY: &str = "lastEventCursor";
/// The key of the completed set above the watermark.
pub const COMPLETED_KEY: &str = "completedAboveWatermark";

/// The runtime's position as a stored checkpoint describes it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoredPosition {
    /// Resume after this cursor (`None`: the configured first-run position).
    pub watermark: Option<String>,
    /// Events after the watermark that already completed: skipped when they come again.
    pub completed: Vec<String>,
}

/// Reads the position from a stored checkpoint value. Anything malformed counts as absent
/// (a non-string or empty cursor, a completed list that is not an array of strings): the
/// result is then at worst a redo, never a skip of unfinished work.
pub fn read_position(value: &Value) -> StoredPosition {
    let watermark = value
        .get(CURSOR_KEY)
        .and_then(Value::as_str)
        .filter(|c| !c.is_empty())
        .map(str::to_string);
    let completed = value
        .get(COMPLETED_KEY)
        .and_then(Value::as_array)
        .map(|a| {
            let mut seen = std::collections::HashSet::new();
            a.iter()
                .filter_map(Value::as_str)
                .filter(|c| !c.is_empty() && seen.insert(*c))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    StoredPosition {
        watermark,
        completed,
    }
}

/// The snapshot is not a JSON object, so the runtime's position cannot be stored in it.
#[derive(Debug, PartialEq, Eq)]
pub struct NotAnObject;

/// Writes the runtime's position into the processor's snapshot value (see the module doc).
pub fn write_position(
    value: &mut Value,
    watermark: Option<&str>,
    completed: &[String],
) -> Result<(), NotAnObject> {
    let obj: &mut Map<String, Value> = value.as_object_mut().ok_or(NotAnObject)?;
    match watermark {
        Some(w) => {
            obj.insert(CURSOR_KEY.to_string(), Value::String(w.to_string()));
        }
        None => {
            if let Some(v) = obj.get_mut(CURSOR_KEY) {
                *v = Value::Null;
            }
        }
    }
    if completed.is_empty() {
        obj.remove(COMPLETED_KEY);
    } else {
        obj.insert(
            COMPLETED_KEY.to_string(),
            Value::Array(completed.iter().cloned().map(Value::String).collect()),
        );
    }
    Ok(())
}

/// Writes the shard layout into the processor's snapshot value (see the module doc): the key
/// is set when there is more than one shard, removed otherwise.
pub fn write_layout(value: &mut Value, layout: ShardLayout) -> Result<(), NotAnObject> {
    layout.write(value.as_object_mut().ok_or(NotAnObject)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_empty_completed_set_keeps_today_s_format_byte_for_byte() {
        let mut v = json!({"count": 3, "lastEventCursor": "3"});
        write_position(&mut v, Some("3"), &[]).unwrap();
        assert_eq!(v.to_string(), r#"{"count":3,"lastEventCursor":"3"}"#);
        // A stale key from an older snapshot is dropped when the set becomes empty.
        let mut v = json!({"count": 3, "completedAboveWatermark": ["9"]});
        write_position(&mut v, Some("4"), &[]).unwrap();
        assert_eq!(v, json!({"count": 3, "lastEventCursor": "4"}));
    }

    #[test]
    fn the_runtime_s_watermark_overrides_the_processor_s_cursor() {
        let mut v = json!({"lastEventCursor": "1050", "n": 1});
        write_position(&mut v, Some("1042"), &["1043".into(), "1047".into()]).unwrap();
        assert_eq!(
            v,
            json!({"lastEventCursor": "1042", "n": 1, "completedAboveWatermark": ["1043", "1047"]})
        );
        let back = read_position(&v);
        assert_eq!(back.watermark.as_deref(), Some("1042"));
        assert_eq!(back.completed, vec!["1043".to_string(), "1047".to_string()]);
    }

    #[test]
    fn no_known_position_nulls_a_processor_cursor_but_adds_no_key() {
        let mut v = json!({"lastEventCursor": "77"});
        write_position(&mut v, None, &[]).unwrap();
        assert_eq!(v, json!({"lastEventCursor": null}));
        let mut v = json!({"n": 1});
        write_position(&mut v, None, &[]).unwrap();
        assert_eq!(v, json!({"n": 1}));
        let mut v = json!({"lastEventCursor": null});
        write_position(&mut v, None, &["5".into()]).unwrap();
        assert_eq!(
            v,
            json!({"lastEventCursor": null, "completedAboveWatermark": ["5"]})
        );
    }

    #[test]
    fn the_layout_sits_next_to_the_cursor_only_when_sharded() {
        let mut v = json!({"n": 1});
        write_position(&mut v, Some("7"), &[]).unwrap();
        write_layout(&mut v, ShardLayout { index: 1, count: 3 }).unwrap();
        assert_eq!(
            v,
            json!({"n": 1, "lastEventCursor": "7", "shardLayout": {"index": 1, "count": 3}})
        );
        write_layout(&mut v, ShardLayout::default()).unwrap();
        assert_eq!(v, json!({"n": 1, "lastEventCursor": "7"}));
        assert_eq!(
            write_layout(&mut json!(3), ShardLayout { index: 0, count: 2 }),
            Err(NotAnObject)
        );
    }

    #[test]
    fn non_objects_are_refused_and_malformed_fields_read_as_absent() {
        let mut v = json!([1, 2]);
        assert_eq!(write_position(&mut v, Some("1"), &[]), Err(NotAnObject));
        assert_eq!(read_position(&json!([1])), StoredPosition::default());
        assert_eq!(
            read_position(&json!({"lastEventCursor": "", "completedAboveWatermark": "5"})),
            StoredPosition::default()
        );
        let p = read_position(&json!({
            "lastEventCursor": 5,
            "completedAboveWatermark": ["7", 8, "", "7", "9"]
        }));
        assert_eq!(p.watermark, None);
        assert_eq!(p.completed, vec!["7".to_string(), "9".to_string()]);
    }
}
