//! The default lane key of an event, computed natively so the default configuration needs no
//! call into Python per event. It must give exactly what the Python `EventProcessor.key`
//! default gives:
//!
//! 1. the conversation: `conversation` (summary payloads), else `conversationId` (full entry
//!    payloads), else `id` when the event's kind is `conversation` (full conversation
//!    payloads; an entry's `id` is the entry, not a conversation);
//! 2. else the conversation group: `conversation_group` (summary) or `conversationGroupId`
//!    (full);
//! 3. else `None` (the one shared lane).
//!
//! Only non-empty strings count; a payload that is not a JSON object has no key.

use serde_json::Value;

/// The default key of an event of `kind` with JSON payload `data`.
pub fn default_key(kind: &str, data: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(data).ok()?;
    let obj = v.as_object()?;
    let field = |name: &str| {
        obj.get(name)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    field("conversation")
        .or_else(|| field("conversationId"))
        .or_else(|| {
            if kind == "conversation" {
                field("id")
            } else {
                None
            }
        })
        .or_else(|| field("conversation_group"))
        .or_else(|| field("conversationGroupId"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(kind: &str, data: &str) -> Option<String> {
        default_key(kind, data.as_bytes())
    }

    #[test]
    fn summary_payloads_use_the_conversation_then_the_group() {
        assert_eq!(
            key(
                "entry",
                r#"{"conversation":"c1","conversation_group":"g1","entry":"e"}"#
            ),
            Some("c1".into())
        );
        assert_eq!(
            key(
                "response",
                r#"{"conversation":"c2","recording":"c2","status":"started"}"#
            ),
            Some("c2".into())
        );
        assert_eq!(
            key("membership", r#"{"conversation_group":"g1","user":"bob"}"#),
            Some("g1".into())
        );
    }

    #[test]
    fn full_payloads_use_conversation_id_or_the_conversation_s_own_id() {
        assert_eq!(
            key(
                "entry",
                r#"{"id":"e1","conversationId":"c1","conversationGroupId":"g"}"#
            ),
            Some("c1".into())
        );
        assert_eq!(
            key(
                "conversation",
                r#"{"id":"c9","title":"t","conversationGroupId":"g"}"#
            ),
            Some("c9".into())
        );
        // An entry's own id is never a conversation: fall back to the group.
        assert_eq!(
            key("entry", r#"{"id":"e1","conversationGroupId":"g2"}"#),
            Some("g2".into())
        );
    }

    #[test]
    fn no_usable_field_means_the_shared_lane() {
        assert_eq!(key("entry", r#"{"entry":"e"}"#), None);
        assert_eq!(key("entry", r#"{"conversation":""}"#), None);
        assert_eq!(key("entry", r#"{"conversation":42}"#), None);
        assert_eq!(key("entry", r#"["conversation"]"#), None);
        assert_eq!(key("entry", "b64:not json"), None);
        assert_eq!(key("stream", r#"{"phase":"live"}"#), None);
    }
}
