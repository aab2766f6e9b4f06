//! Payload rendering per detail mode, read from the current state at delivery time.

use bytes::Bytes;
use serde_json::{json, Map, Value};

use super::time::rfc3339_millis;
use super::{Conversation, Detail, Entry, Notification, Subject, Upstream};

fn put_opt(m: &mut Map<String, Value>, key: &str, v: &Option<String>) {
    if let Some(v) = v.as_deref().filter(|v| !v.is_empty()) {
        m.insert(key.into(), json!(v));
    }
}

impl Upstream {
    /// The payload `n` has for a subscriber in `detail` mode, or `None` when it is not
    /// delivered (full mode, entity gone: a hard-deleted conversation or its entries).
    pub fn render(&self, n: &Notification, detail: Detail) -> Option<Value> {
        match (detail, &n.subject) {
            (Detail::Summary, _) | (_, Subject::Summary) => Some(Value::Object(n.summary.clone())),
            (Detail::Full, Subject::Conversation(id)) => {
                self.conversation(id).map(|c| self.conversation_json(c))
            }
            (Detail::Full, Subject::Entry(id)) => self.entry(id).map(entry_json),
        }
    }

    /// [`Upstream::render`] as the JSON bytes of `EventNotification.data`.
    pub fn render_bytes(&self, n: &Notification, detail: Detail) -> Option<Bytes> {
        self.render(n, detail)
            .map(|v| Bytes::from(serde_json::to_vec(&v).unwrap_or_default()))
    }

    /// A conversation as the admin API shows it (camelCase, optional fields omitted when
    /// empty), plus `conversationGroupId`.
    pub fn conversation_json(&self, c: &Conversation) -> Value {
        let mut m = Map::new();
        m.insert("id".into(), json!(c.id));
        m.insert("title".into(), json!(c.title));
        m.insert("ownerUserId".into(), json!(c.owner_user_id));
        put_opt(&mut m, "agentId", &c.agent_id);
        m.insert("metadata".into(), Value::Object(c.metadata.clone()));
        put_opt(&mut m, "forkedAtEntryId", &c.forked_at_entry_id);
        put_opt(
            &mut m,
            "forkedAtConversationId",
            &c.forked_at_conversation_id,
        );
        m.insert("createdAt".into(), json!(rfc3339_millis(c.created_at)));
        m.insert("updatedAt".into(), json!(rfc3339_millis(c.updated_at)));
        if let Some(t) = c.archived_at {
            m.insert("archivedAt".into(), json!(rfc3339_millis(t)));
        }
        m.insert("accessLevel".into(), json!("owner"));
        if self.response_in_progress(&c.id) {
            m.insert("hasResponseInProgress".into(), json!(true));
        }
        m.insert("conversationGroupId".into(), json!(c.group_id));
        Value::Object(m)
    }
}

/// An entry as the admin API shows it (camelCase, optional fields omitted when empty), plus
/// `conversationGroupId`.
pub fn entry_json(e: &Entry) -> Value {
    let mut m = Map::new();
    m.insert("id".into(), json!(e.id));
    m.insert("conversationId".into(), json!(e.conversation_id));
    put_opt(&mut m, "userId", &e.user_id);
    put_opt(&mut m, "clientId", &e.client_id);
    put_opt(&mut m, "agentId", &e.agent_id);
    m.insert("channel".into(), json!(e.channel.as_str()));
    if let Some(epoch) = e.epoch {
        m.insert("epoch".into(), json!(epoch));
    }
    if let Some(seq) = e.seq {
        m.insert("seq".into(), json!(seq));
    }
    m.insert("contentType".into(), json!(e.content_type));
    m.insert("content".into(), e.content.clone());
    m.insert("createdAt".into(), json!(rfc3339_millis(e.created_at)));
    m.insert("conversationGroupId".into(), json!(e.group_id));
    Value::Object(m)
}
