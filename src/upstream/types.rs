//! The entities, enumerations and errors of the model, and the notification an operation
//! emits.

use std::time::SystemTime;

use serde_json::{Map, Value};

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    #[error("no conversation {0:?}")]
    NoSuchConversation(String),
    #[error("no entry {0:?}")]
    NoSuchEntry(String),
    #[error("conversation {0:?} is archived")]
    Archived(String),
    #[error("conversation {0:?} is not archived")]
    NotArchived(String),
    #[error("{user:?} is already a member of conversation {conversation:?}")]
    AlreadyMember { conversation: String, user: String },
    #[error("{user:?} is not a member of conversation {conversation:?}")]
    NotMember { conversation: String, user: String },
    #[error("the owner {0:?} keeps the owner role")]
    Owner(String),
    #[error("conversation {0:?} already has a response in progress")]
    ResponseInProgress(String),
    #[error("conversation {0:?} has no response in progress")]
    NoResponse(String),
    #[error("invalid {field}: {value:?} ({expected})")]
    Invalid {
        field: &'static str,
        value: String,
        expected: &'static str,
    },
}

pub type Result<T> = std::result::Result<T, UpstreamError>;

pub(super) fn invalid(field: &'static str, value: &str, expected: &'static str) -> UpstreamError {
    UpstreamError::Invalid {
        field,
        value: value.to_string(),
        expected,
    }
}

/// An entry channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Channel {
    History,
    Context,
    Journal,
}

impl Channel {
    /// `history` / `context` / `journal`, case-insensitive.
    pub fn parse(s: &str) -> Result<Channel> {
        match s.trim().to_ascii_lowercase().as_str() {
            "history" => Ok(Channel::History),
            "context" => Ok(Channel::Context),
            "journal" => Ok(Channel::Journal),
            _ => Err(invalid("channel", s, "history, context or journal")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Channel::History => "history",
            Channel::Context => "context",
            Channel::Journal => "journal",
        }
    }
}

/// A member's access role in a conversation group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AccessRole {
    Owner,
    Manager,
    Writer,
    Reader,
}

impl AccessRole {
    /// `owner` / `manager` / `writer` / `reader`, case-insensitive.
    pub fn parse(s: &str) -> Result<AccessRole> {
        match s.trim().to_ascii_lowercase().as_str() {
            "owner" => Ok(AccessRole::Owner),
            "manager" => Ok(AccessRole::Manager),
            "writer" => Ok(AccessRole::Writer),
            "reader" => Ok(AccessRole::Reader),
            _ => Err(invalid("role", s, "owner, manager, writer or reader")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AccessRole::Owner => "owner",
            AccessRole::Manager => "manager",
            AccessRole::Writer => "writer",
            AccessRole::Reader => "reader",
        }
    }
}

/// How a response ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseStatus {
    Completed,
    Failed,
}

impl ResponseStatus {
    /// `completed` / `failed`, case-insensitive.
    pub fn parse(s: &str) -> Result<ResponseStatus> {
        match s.trim().to_ascii_lowercase().as_str() {
            "completed" => Ok(ResponseStatus::Completed),
            "failed" => Ok(ResponseStatus::Failed),
            _ => Err(invalid("status", s, "completed or failed")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ResponseStatus::Completed => "completed",
            ResponseStatus::Failed => "failed",
        }
    }
}

/// The resource an event is about (`EventNotification.kind`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Conversation,
    Entry,
    Response,
    Membership,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Conversation => "conversation",
            Kind::Entry => "entry",
            Kind::Response => "response",
            Kind::Membership => "membership",
        }
    }
}

/// A stored conversation.
#[derive(Clone, Debug, PartialEq)]
pub struct Conversation {
    pub id: String,
    pub group_id: String,
    pub title: String,
    pub owner_user_id: String,
    pub agent_id: Option<String>,
    pub metadata: Map<String, Value>,
    pub forked_at_entry_id: Option<String>,
    pub forked_at_conversation_id: Option<String>,
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
    pub archived_at: Option<SystemTime>,
    /// Entry ids in append order.
    pub entries: Vec<String>,
}

/// A stored entry.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub id: String,
    pub conversation_id: String,
    pub group_id: String,
    pub user_id: Option<String>,
    pub client_id: Option<String>,
    pub agent_id: Option<String>,
    pub channel: Channel,
    pub epoch: Option<i64>,
    pub seq: Option<i64>,
    pub content_type: String,
    /// A JSON array of items (`{"role": "USER", "text": "..."}`), or `"b64:<base64>"` for
    /// content that is not JSON.
    pub content: Value,
    pub created_at: SystemTime,
}

impl Entry {
    /// The first content item's `role` (trimmed), as upstream derives `entry_role`.
    pub fn role(&self) -> Option<&str> {
        first_role(&self.content)
    }
}

/// The first item's `role` of an entry's content, if it is a non-blank string.
pub fn first_role(content: &Value) -> Option<&str> {
    let role = content.as_array()?.first()?.get("role")?.as_str()?.trim();
    (!role.is_empty()).then_some(role)
}

/// What to append: [`NewEntry::new`] gives a `history` entry of content type `history`.
#[derive(Clone, Debug, PartialEq)]
pub struct NewEntry {
    pub content: Value,
    pub channel: Channel,
    pub content_type: String,
    /// Defaults to the conversation's owner (the server stores the user on every entry).
    pub user_id: Option<String>,
    pub client_id: Option<String>,
    pub agent_id: Option<String>,
}

impl NewEntry {
    pub fn new(content: Value) -> NewEntry {
        NewEntry {
            content,
            channel: Channel::History,
            content_type: "history".into(),
            user_id: None,
            client_id: None,
            agent_id: None,
        }
    }
}

/// Content that is not JSON, as a server stores and sends it: `"b64:<base64>"`.
pub fn binary_content(bytes: &[u8]) -> Value {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(4 + bytes.len().div_ceil(3) * 4);
    out.push_str("b64:");
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> shift) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    Value::String(out)
}

/// What an event's full payload is read from at delivery time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Subject {
    Conversation(String),
    Entry(String),
    /// `response` / `membership`: the summary is the payload in both modes.
    Summary,
}

/// One event as the server emits it: kind, event, the summary payload fixed at emission, and
/// a reference to the entity the full payload is read from.
#[derive(Clone, Debug, PartialEq)]
pub struct Notification {
    pub(super) kind: Kind,
    pub(super) event: &'static str,
    pub(super) summary: Map<String, Value>,
    pub(super) subject: Subject,
}

impl Notification {
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// `created`, `updated` or `deleted`.
    pub fn event(&self) -> &'static str {
        self.event
    }

    /// The summary payload.
    pub fn summary(&self) -> &Map<String, Value> {
        &self.summary
    }

    fn field(&self, key: &str) -> Option<&str> {
        self.summary.get(key).and_then(Value::as_str)
    }

    /// The conversation the event is about (none for membership events).
    pub fn conversation_id(&self) -> Option<&str> {
        self.field("conversation")
    }

    pub fn group_id(&self) -> Option<&str> {
        self.field("conversation_group")
    }

    pub fn entry_id(&self) -> Option<&str> {
        self.field("entry")
    }

    pub fn entry_channel(&self) -> Option<&str> {
        self.field("entry_channel")
    }

    pub fn entry_content_type(&self) -> Option<&str> {
        self.field("entry_content_type")
    }

    pub fn entry_role(&self) -> Option<&str> {
        self.field("entry_role")
    }
}
