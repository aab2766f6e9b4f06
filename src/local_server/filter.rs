//! Subscription filters: which stored events a subscription receives.
//!
//! A request asks for `kinds`, `conversation_ids` and, for `entry` events, entry channels,
//! content types and roles; an empty list means "any", except `entry_channels`, which
//! defaults to `["history"]`. Kinds, channels and roles compare case-insensitively; content
//! types and conversation ids exactly (the entry rules are the model's
//! [`crate::upstream::EntryFilter`]). Entries are matched on their summary fields, whatever
//! the detail mode. The request's `detail` (kept for rendering) and `scope` are checked here
//! too (admin scope needs the admin role).

use bytes::Bytes;
use tonic::Status;

use serde_json::{Map, Value};

use super::Role;
use crate::proto;
use crate::upstream::{Detail, EntryFilter};

/// The payload fields a filter looks at, read once when the event is stored.
#[derive(Debug, Default)]
pub(super) struct EventKeys {
    pub conversation: Option<String>,
    pub channel: Option<String>,
    pub content_type: Option<String>,
    pub role: Option<String>,
}

impl EventKeys {
    /// Reads the summary keys of a JSON payload; anything else (not JSON, not an object,
    /// non-string values) leaves them unset.
    pub fn from_data(data: &Bytes) -> EventKeys {
        match serde_json::from_slice::<Value>(data) {
            Ok(Value::Object(m)) => EventKeys::from_summary(&m),
            _ => EventKeys::default(),
        }
    }

    /// Reads the summary keys of a payload object.
    pub fn from_summary(parsed: &Map<String, Value>) -> EventKeys {
        let field = |key: &str| parsed.get(key).and_then(|x| x.as_str()).map(str::to_string);
        EventKeys {
            conversation: field("conversation"),
            channel: field("entry_channel"),
            content_type: field("entry_content_type"),
            role: field("entry_role"),
        }
    }
}

/// What one subscription asked for.
#[derive(Debug)]
pub(super) struct Filter {
    kinds: Vec<String>,
    conversations: Vec<String>,
    entries: EntryFilter,
    /// The payload shape this subscription receives.
    pub detail: Detail,
}

impl Filter {
    /// Validates the request's `detail` and `scope` (for a caller with `role`) and builds
    /// its filter.
    pub fn from_request(r: &proto::SubscribeEventsRequest, role: Role) -> Result<Filter, Status> {
        let detail = Detail::parse(r.detail.as_deref()).map_err(Status::invalid_argument)?;
        let admin_scope = r.scope == Some(proto::EventScope::Admin as i32);
        if admin_scope && role != Role::Admin {
            return Err(Status::permission_denied(
                "admin scope requires the admin role",
            ));
        }
        let lower = |v: &Vec<String>| v.iter().map(|s| s.to_ascii_lowercase()).collect();
        Ok(Filter {
            kinds: lower(&r.kinds),
            conversations: r.conversation_ids.clone(),
            entries: EntryFilter::new(&r.entry_channels, &r.entry_content_types, &r.entry_roles),
            detail,
        })
    }

    /// Whether an event of `kind` with these payload keys goes to this subscription.
    pub fn matches(&self, kind: &str, keys: &EventKeys) -> bool {
        if !self.kinds.is_empty() && !self.kinds.iter().any(|k| k.eq_ignore_ascii_case(kind)) {
            return false;
        }
        if !self.conversations.is_empty() {
            match &keys.conversation {
                Some(c) if self.conversations.contains(c) => {}
                _ => return false,
            }
        }
        if kind == "entry" {
            // an entry without a channel is on the default "history" channel; one without a
            // content type matches no content-type filter
            let channel = keys.channel.as_deref().unwrap_or("history");
            if !self.entries.matches_entry(
                channel,
                keys.content_type.as_deref().unwrap_or(""),
                keys.role.as_deref(),
            ) {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(data: serde_json::Value) -> EventKeys {
        EventKeys::from_data(&Bytes::from(data.to_string()))
    }

    fn request() -> proto::SubscribeEventsRequest {
        proto::SubscribeEventsRequest::default()
    }

    #[test]
    fn entry_channels_default_to_history() {
        let f = Filter::from_request(&request(), Role::Admin).unwrap();
        assert!(f.matches("entry", &keys(serde_json::json!({}))));
        assert!(f.matches(
            "entry",
            &keys(serde_json::json!({"entry_channel": "HISTORY"}))
        ));
        assert!(!f.matches(
            "entry",
            &keys(serde_json::json!({"entry_channel": "context"}))
        ));
        // the channel filter is about entries only
        assert!(f.matches(
            "conversation",
            &keys(serde_json::json!({"entry_channel": "x"}))
        ));
    }

    #[test]
    fn every_list_is_an_and_of_ors() {
        let mut r = request();
        r.kinds = vec!["ENTRY".into()];
        r.conversation_ids = vec!["c1".into(), "c2".into()];
        r.entry_roles = vec!["ai".into()];
        r.entry_content_types = vec!["history".into()];
        let f = Filter::from_request(&r, Role::Admin).unwrap();
        let ok = serde_json::json!({"conversation": "c2", "entry_role": "AI", "entry_content_type": "history"});
        assert!(f.matches("entry", &keys(ok.clone())));
        // content types compare exactly, roles case-insensitively
        let other_type = serde_json::json!({"conversation": "c2", "entry_role": "ai", "entry_content_type": "History"});
        assert!(!f.matches("entry", &keys(other_type)));
        assert!(!f.matches("conversation", &keys(ok)));
        let other_conv = serde_json::json!({"conversation": "C2", "entry_role": "AI", "entry_content_type": "history"});
        assert!(!f.matches("entry", &keys(other_conv)));
        let no_role = serde_json::json!({"conversation": "c1", "entry_content_type": "history"});
        assert!(!f.matches("entry", &keys(no_role)));
    }

    #[test]
    fn non_object_payloads_have_no_keys() {
        let k = EventKeys::from_data(&Bytes::from_static(b"not json"));
        assert!(k.conversation.is_none() && k.role.is_none());
        let k = keys(serde_json::json!({"conversation": 7}));
        assert!(k.conversation.is_none());
    }

    #[test]
    fn detail_and_scope_are_checked() {
        let mut r = request();
        r.detail = Some("everything".into());
        let e = Filter::from_request(&r, Role::Admin).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        let mut r = request();
        r.scope = Some(proto::EventScope::Admin as i32);
        let e = Filter::from_request(&r, Role::User).unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(Filter::from_request(&r, Role::Admin).is_ok());
    }
}
