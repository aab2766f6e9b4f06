//! Reading the ids an event is about from its JSON payload, whatever the detail mode.
//!
//! A Memory Service sends a `conversation` or `entry` event either as a summary (snake_case:
//! `conversation`, `conversation_group`, `entry`, `entry_channel`, `entry_role`, ...) or, with
//! `detail="full"`, as the stored entity (camelCase: `id`, `conversationId`,
//! `conversationGroupId`, `channel`, `content: [{"role": ...}]`, ...). [`Ids::parse`] reads
//! both in one pass over the bytes: only the top-level keys it needs are decoded (strings are
//! borrowed when they have no escapes), every other value is skipped without allocating, and
//! of `content` only the first item's `role` is looked at.
//!
//! [`default_key`] is the default concurrency key: the conversation, else the group, else
//! none (membership events are keyed by their group).

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// What an event payload says about the resources it concerns. Empty for a payload that is
/// not a JSON object.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ids<'a> {
    pub conversation: Option<Cow<'a, str>>,
    pub group: Option<Cow<'a, str>>,
    pub entry: Option<Cow<'a, str>>,
    /// Summary `entry_role`, else the first content item's `role` (trimmed, non-empty).
    pub role: Option<Cow<'a, str>>,
    pub channel: Option<Cow<'a, str>>,
    pub content_type: Option<Cow<'a, str>>,
}

/// The keys [`Ids::parse`] reads.
#[derive(Default)]
struct Raw<'a> {
    conversation: Option<Cow<'a, str>>,
    conversation_id: Option<Cow<'a, str>>,
    id: Option<Cow<'a, str>>,
    conversation_group: Option<Cow<'a, str>>,
    conversation_group_id: Option<Cow<'a, str>>,
    entry: Option<Cow<'a, str>>,
    entry_role: Option<Cow<'a, str>>,
    content_role: Option<Cow<'a, str>>,
    entry_channel: Option<Cow<'a, str>>,
    channel: Option<Cow<'a, str>>,
    entry_content_type: Option<Cow<'a, str>>,
    content_type: Option<Cow<'a, str>>,
}

impl<'a> Ids<'a> {
    /// Reads `data` (an `EventNotification.data`) of an event of `kind`.
    ///
    /// - conversation: summary `conversation`, full `conversationId`, and for a full
    ///   `conversation` event its `id`;
    /// - group: `conversation_group` / `conversationGroupId`;
    /// - entry (entry events): summary `entry`, full `id`;
    /// - role, channel, content type (entry events): `entry_role` / `content[0].role`,
    ///   `entry_channel` / `channel`, `entry_content_type` / `contentType`.
    pub fn parse(kind: &str, data: &'a [u8]) -> Ids<'a> {
        let mut de = serde_json::Deserializer::from_slice(data);
        let raw = match de.deserialize_any(RawVisitor) {
            Ok(Some(raw)) => raw,
            _ => return Ids::default(),
        };
        let full_id = |wanted: &str| if kind == wanted { raw.id.clone() } else { None };
        let is_entry = kind == "entry";
        let only_entry = |v: Option<Cow<'a, str>>| if is_entry { v } else { None };
        Ids {
            conversation: raw
                .conversation
                .clone()
                .or(raw.conversation_id.clone())
                .or_else(|| full_id("conversation")),
            group: raw
                .conversation_group
                .clone()
                .or(raw.conversation_group_id.clone()),
            entry: only_entry(raw.entry.clone().or_else(|| full_id("entry"))),
            role: only_entry(raw.entry_role.clone().or(raw.content_role.clone())),
            channel: only_entry(raw.entry_channel.clone().or(raw.channel.clone())),
            content_type: only_entry(raw.entry_content_type.clone().or(raw.content_type.clone())),
        }
    }

    /// The default concurrency key: the conversation, else the group, else `None`.
    pub fn key(&self) -> Option<&str> {
        self.conversation.as_deref().or(self.group.as_deref())
    }
}

/// The default concurrency key of an event: its conversation, else its group, else `None`.
pub fn default_key(kind: &str, data: &[u8]) -> Option<String> {
    Ids::parse(kind, data).key().map(str::to_string)
}

/// A JSON value kept only if it is a string (anything else is skipped).
struct MaybeStr<'a>(Option<Cow<'a, str>>);

impl<'de> de::Deserialize<'de> for MaybeStr<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrVisitor).map(MaybeStr)
    }
}

struct StrVisitor;

/// Accepts any JSON value; yields the string, or `None` for every other type.
macro_rules! ignore_scalars {
    ($($name:ident: $t:ty),*) => {
        $(fn $name<E: de::Error>(self, _: $t) -> Result<Self::Value, E> { Ok(None) })*
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> { Ok(None) }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> { Ok(None) }
    };
}

impl<'de> Visitor<'de> for StrVisitor {
    type Value = Option<Cow<'de, str>>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    ignore_scalars!(visit_bool: bool, visit_i64: i64, visit_u64: u64, visit_f64: f64);

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Some(Cow::Borrowed(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Some(Cow::Owned(v.to_string())))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Some(Cow::Owned(v)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(None)
    }
}

/// The top-level object: the wanted keys, every other value skipped. `None` if the payload is
/// not an object.
struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = Option<Raw<'de>>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    ignore_scalars!(visit_bool: bool, visit_i64: i64, visit_u64: u64, visit_f64: f64,
                    visit_str: &str);

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut raw = Raw::default();
        while let Some(key) = map.next_key::<MaybeStr<'de>>()? {
            let slot = match key.0.as_deref() {
                Some("conversation") => &mut raw.conversation,
                Some("conversationId") => &mut raw.conversation_id,
                Some("id") => &mut raw.id,
                Some("conversation_group") => &mut raw.conversation_group,
                Some("conversationGroupId") => &mut raw.conversation_group_id,
                Some("entry") => &mut raw.entry,
                Some("entry_role") => &mut raw.entry_role,
                Some("entry_channel") => &mut raw.entry_channel,
                Some("channel") => &mut raw.channel,
                Some("entry_content_type") => &mut raw.entry_content_type,
                Some("contentType") => &mut raw.content_type,
                Some("content") => {
                    raw.content_role = map.next_value_seed(FirstRole)?;
                    continue;
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            *slot = map.next_value::<MaybeStr<'de>>()?.0;
        }
        Ok(Some(raw))
    }
}

fn trimmed(role: Cow<'_, str>) -> Option<Cow<'_, str>> {
    match role {
        Cow::Borrowed(r) => Some(Cow::Borrowed(r.trim())),
        Cow::Owned(r) => Some(Cow::Owned(r.trim().to_string())),
    }
    .filter(|r| !r.is_empty())
}

/// `content`: the first item's `role` if `content` is an array whose first item is an object
/// with a string `role`; the rest is skipped.
struct FirstRole;

impl<'de> DeserializeSeed<'de> for FirstRole {
    type Value = Option<Cow<'de, str>>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for FirstRole {
    type Value = Option<Cow<'de, str>>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("entry content")
    }

    ignore_scalars!(visit_bool: bool, visit_i64: i64, visit_u64: u64, visit_f64: f64,
                    visit_str: &str);

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let role = seq.next_element_seed(RoleOf)?.flatten();
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(role.and_then(trimmed))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(None)
    }
}

/// A content item: its `role` if it is an object with a string `role`.
struct RoleOf;

impl<'de> DeserializeSeed<'de> for RoleOf {
    type Value = Option<Cow<'de, str>>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for RoleOf {
    type Value = Option<Cow<'de, str>>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a content item")
    }

    ignore_scalars!(visit_bool: bool, visit_i64: i64, visit_u64: u64, visit_f64: f64,
                    visit_str: &str);

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut role = None;
        while let Some(key) = map.next_key::<MaybeStr<'de>>()? {
            if key.0.as_deref() == Some("role") && role.is_none() {
                role = map.next_value::<MaybeStr<'de>>()?.0;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(role)
    }
}

#[cfg(test)]
#[path = "payload_tests.rs"]
mod tests;
