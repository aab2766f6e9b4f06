//! A pure model of a Memory Service's state and of the events it emits.
//!
//! [`Upstream`] keeps conversations, entries, group memberships and responses the way the
//! real server does, and every operation returns the [`Notification`] the server would put in
//! its outbox. A notification is rendered per subscriber with [`Upstream::render`]:
//!
//! - [`Detail::Summary`]: snake_case ids (`conversation`, `conversation_group`, `entry`,
//!   `entry_channel`, `entry_content_type`, `entry_role`, `members`, `archived`, `recording`,
//!   `status`, `user`, `role`), fixed when the event happened;
//! - [`Detail::Full`]: `conversation` and `entry` payloads are the stored entity in camelCase
//!   plus `conversationGroupId`, read when the event is *delivered* (as a real server reads the
//!   entity when it sends): a replayed `created` shows the current title, and an event whose
//!   entity was hard-deleted renders as `None` (not delivered). `response` and `membership`
//!   keep the summary.
//!
//! No I/O: the local server owns an `Upstream` behind its lock and renders on send.

mod filter;
mod render;
pub mod time;
mod types;

#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

use serde_json::{json, Map, Value};

pub use filter::{AfterCursor, Detail, EntryFilter};
pub use render::entry_json;
pub use types::{
    binary_content, first_role, AccessRole, Channel, Conversation, Entry, Kind, NewEntry,
    Notification, ResponseStatus, Result, UpstreamError,
};
use types::{invalid, Subject};

/// An operation the model refuses, as a real server would (not found, bad argument, ...).
/// Where ids come from.
#[derive(Clone, Debug)]
enum Ids {
    /// Random version-4 UUIDs.
    Random,
    /// `00000000-0000-4000-8000-000000000001`, `...002`, ...: reproducible scenarios.
    Sequential(u64),
}

/// Where timestamps come from.
#[derive(Clone, Debug)]
enum Clock {
    System,
    /// Starts at `next` and advances by `step` on every read.
    Stepping {
        next: SystemTime,
        step: Duration,
    },
}

/// A Memory Service's state: conversations, entries, groups and their members, responses.
#[derive(Clone, Debug)]
pub struct Upstream {
    conversations: HashMap<String, Conversation>,
    entries: HashMap<String, Entry>,
    /// Group id → members in the order they joined (the owner first).
    groups: HashMap<String, Vec<(String, AccessRole)>>,
    responding: HashSet<String>,
    ids: Ids,
    clock: Clock,
}

impl Default for Upstream {
    fn default() -> Self {
        Upstream::new()
    }
}

fn random_uuid() -> String {
    let mut b = rand::random::<u128>().to_be_bytes();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    uuid_string(u128::from_be_bytes(b))
}

fn uuid_string(n: u128) -> String {
    let h = format!("{n:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

impl Upstream {
    /// Random UUIDs and the system clock.
    pub fn new() -> Upstream {
        Upstream {
            conversations: HashMap::new(),
            entries: HashMap::new(),
            groups: HashMap::new(),
            responding: HashSet::new(),
            ids: Ids::Random,
            clock: Clock::System,
        }
    }

    /// Sequential UUID-shaped ids and a clock that starts at `start` and advances by `step`
    /// on every timestamp: the same operations give byte-identical payloads.
    pub fn deterministic(start: SystemTime, step: Duration) -> Upstream {
        Upstream {
            ids: Ids::Sequential(0),
            clock: Clock::Stepping { next: start, step },
            ..Upstream::new()
        }
    }

    fn new_id(&mut self) -> String {
        match &mut self.ids {
            Ids::Random => random_uuid(),
            Ids::Sequential(n) => {
                *n += 1;
                uuid_string((0x4000u128 << 64) | (0x8000u128 << 48) | u128::from(*n))
            }
        }
    }

    fn now(&mut self) -> SystemTime {
        match &mut self.clock {
            Clock::System => SystemTime::now(),
            Clock::Stepping { next, step } => {
                let t = *next;
                *next = t + *step;
                t
            }
        }
    }

    pub fn conversation(&self, id: &str) -> Option<&Conversation> {
        self.conversations.get(id)
    }

    pub fn entry(&self, id: &str) -> Option<&Entry> {
        self.entries.get(id)
    }

    /// The group's members in the order they joined (empty for an unknown group).
    pub fn members(&self, group_id: &str) -> Vec<(String, AccessRole)> {
        self.groups.get(group_id).cloned().unwrap_or_default()
    }

    /// Whether a response is being recorded for the conversation.
    pub fn response_in_progress(&self, conversation_id: &str) -> bool {
        self.responding.contains(conversation_id)
    }

    fn conv(&self, id: &str) -> Result<&Conversation> {
        self.conversations
            .get(id)
            .ok_or_else(|| UpstreamError::NoSuchConversation(id.to_string()))
    }

    fn live_conv(&self, id: &str) -> Result<&Conversation> {
        let c = self.conv(id)?;
        if c.archived_at.is_some() {
            return Err(UpstreamError::Archived(id.to_string()));
        }
        Ok(c)
    }

    fn member_names(&self, group_id: &str) -> Vec<Value> {
        self.groups
            .get(group_id)
            .map(|m| m.iter().map(|(u, _)| Value::String(u.clone())).collect())
            .unwrap_or_default()
    }

    fn conv_note(&self, c: &Conversation, event: &'static str, extra: Value) -> Notification {
        let mut summary = Map::new();
        summary.insert("conversation".into(), Value::String(c.id.clone()));
        summary.insert(
            "conversation_group".into(),
            Value::String(c.group_id.clone()),
        );
        if let Value::Object(extra) = extra {
            summary.extend(extra);
        }
        Notification {
            kind: Kind::Conversation,
            event,
            summary,
            subject: Subject::Conversation(c.id.clone()),
        }
    }

    /// Creates a conversation in a new group whose only member is `owner` (role `owner`).
    /// Emits `conversation/created`.
    pub fn create_conversation(
        &mut self,
        owner: &str,
        title: &str,
        agent_id: Option<&str>,
        metadata: Option<Map<String, Value>>,
    ) -> Result<(String, Notification)> {
        if owner.trim().is_empty() {
            return Err(invalid("owner", owner, "a non-empty user id"));
        }
        let id = self.new_id();
        let group_id = self.new_id();
        let now = self.now();
        let c = Conversation {
            id: id.clone(),
            group_id: group_id.clone(),
            title: title.to_string(),
            owner_user_id: owner.to_string(),
            agent_id: agent_id.map(str::to_string),
            metadata: metadata.unwrap_or_default(),
            forked_at_entry_id: None,
            forked_at_conversation_id: None,
            created_at: now,
            updated_at: now,
            archived_at: None,
            entries: Vec::new(),
        };
        self.groups
            .insert(group_id, vec![(owner.to_string(), AccessRole::Owner)]);
        let note = self.conv_note(&c, "created", Value::Null);
        self.conversations.insert(id.clone(), c);
        Ok((id, note))
    }

    /// Forks `conversation_id` at `entry_id` (an entry of it): a new conversation in the same
    /// group, owned by `owner`. Emits `conversation/created`.
    pub fn fork_conversation(
        &mut self,
        conversation_id: &str,
        entry_id: &str,
        owner: &str,
        title: &str,
    ) -> Result<(String, Notification)> {
        let src = self.live_conv(conversation_id)?;
        if !src.entries.iter().any(|e| e == entry_id) {
            return Err(UpstreamError::NoSuchEntry(entry_id.to_string()));
        }
        if owner.trim().is_empty() {
            return Err(invalid("owner", owner, "a non-empty user id"));
        }
        let (group_id, agent_id, metadata) = (
            src.group_id.clone(),
            src.agent_id.clone(),
            src.metadata.clone(),
        );
        let id = self.new_id();
        let now = self.now();
        let c = Conversation {
            id: id.clone(),
            group_id,
            title: title.to_string(),
            owner_user_id: owner.to_string(),
            agent_id,
            metadata,
            forked_at_entry_id: Some(entry_id.to_string()),
            forked_at_conversation_id: Some(conversation_id.to_string()),
            created_at: now,
            updated_at: now,
            archived_at: None,
            entries: Vec::new(),
        };
        let note = self.conv_note(&c, "created", Value::Null);
        self.conversations.insert(id.clone(), c);
        Ok((id, note))
    }

    /// Changes the title and/or replaces the metadata. Emits `conversation/updated`.
    pub fn update_conversation(
        &mut self,
        id: &str,
        title: Option<&str>,
        metadata: Option<Map<String, Value>>,
    ) -> Result<Notification> {
        self.live_conv(id)?;
        let now = self.now();
        let c = self
            .conversations
            .get_mut(id)
            .ok_or_else(|| UpstreamError::NoSuchConversation(id.to_string()))?;
        if let Some(t) = title {
            c.title = t.to_string();
        }
        if let Some(m) = metadata {
            c.metadata = m;
        }
        c.updated_at = now;
        let c = c.clone();
        Ok(self.conv_note(&c, "updated", Value::Null))
    }

    fn set_archived(&mut self, id: &str, archived: bool) -> Result<Notification> {
        let c = self.conv(id)?;
        match (archived, c.archived_at.is_some()) {
            (true, true) => return Err(UpstreamError::Archived(id.to_string())),
            (false, false) => return Err(UpstreamError::NotArchived(id.to_string())),
            _ => {}
        }
        let now = self.now();
        let c = self
            .conversations
            .get_mut(id)
            .ok_or_else(|| UpstreamError::NoSuchConversation(id.to_string()))?;
        c.archived_at = archived.then_some(now);
        c.updated_at = now;
        let c = c.clone();
        let members = self.member_names(&c.group_id);
        Ok(self.conv_note(
            &c,
            "updated",
            json!({"members": members, "archived": archived}),
        ))
    }

    /// Archives (what a user's delete does). Emits `conversation/updated` with `members` and
    /// `archived: true`.
    pub fn archive_conversation(&mut self, id: &str) -> Result<Notification> {
        self.set_archived(id, true)
    }

    /// Emits `conversation/updated` with `members` and `archived: false`.
    pub fn unarchive_conversation(&mut self, id: &str) -> Result<Notification> {
        self.set_archived(id, false)
    }

    /// Hard delete (eviction, admin evict): the conversation and its entries are gone, and the
    /// group with its memberships when no conversation is left in it. Emits
    /// `conversation/deleted` with `members`; its full payload is never delivered.
    pub fn delete_conversation(&mut self, id: &str) -> Result<Notification> {
        let c = self
            .conversations
            .remove(id)
            .ok_or_else(|| UpstreamError::NoSuchConversation(id.to_string()))?;
        for e in &c.entries {
            self.entries.remove(e);
        }
        self.responding.remove(id);
        let members = self.member_names(&c.group_id);
        if !self
            .conversations
            .values()
            .any(|o| o.group_id == c.group_id)
        {
            self.groups.remove(&c.group_id);
        }
        Ok(self.conv_note(&c, "deleted", json!({"members": members})))
    }

    /// Appends an entry. Emits `entry/created`.
    pub fn append_entry(
        &mut self,
        conversation_id: &str,
        new: NewEntry,
    ) -> Result<(String, Notification)> {
        let c = self.live_conv(conversation_id)?;
        if new.content_type.trim().is_empty() {
            return Err(invalid(
                "content_type",
                &new.content_type,
                "a non-empty content type",
            ));
        }
        if !(new.content.is_array() || new.content.is_string()) {
            return Err(invalid(
                "content",
                &new.content.to_string(),
                "a list of content items or \"b64:...\"",
            ));
        }
        let (group_id, owner, seq) = (
            c.group_id.clone(),
            c.owner_user_id.clone(),
            c.entries.len() as i64 + 1,
        );
        let id = self.new_id();
        let now = self.now();
        let e = Entry {
            id: id.clone(),
            conversation_id: conversation_id.to_string(),
            group_id: group_id.clone(),
            user_id: Some(new.user_id.unwrap_or(owner)),
            client_id: new.client_id,
            agent_id: new.agent_id,
            channel: new.channel,
            epoch: Some(1),
            seq: Some(seq),
            content_type: new.content_type,
            content: new.content,
            created_at: now,
        };
        let mut summary = Map::new();
        summary.insert("conversation".into(), json!(conversation_id));
        summary.insert("conversation_group".into(), json!(group_id));
        summary.insert("entry".into(), json!(id));
        summary.insert("entry_channel".into(), json!(e.channel.as_str()));
        summary.insert("entry_content_type".into(), json!(e.content_type));
        if let Some(role) = e.role() {
            summary.insert("entry_role".into(), json!(role));
        }
        if let Some(c) = self.conversations.get_mut(conversation_id) {
            c.entries.push(id.clone());
            c.updated_at = now;
        }
        self.entries.insert(id.clone(), e);
        let note = Notification {
            kind: Kind::Entry,
            event: "created",
            summary,
            subject: Subject::Entry(id.clone()),
        };
        Ok((id, note))
    }

    fn membership_note(
        &self,
        event: &'static str,
        group_id: &str,
        user: &str,
        role: Option<AccessRole>,
    ) -> Notification {
        let mut summary = Map::new();
        summary.insert("conversation_group".into(), json!(group_id));
        summary.insert("user".into(), json!(user));
        if let Some(r) = role {
            summary.insert("role".into(), json!(r.as_str()));
        }
        Notification {
            kind: Kind::Membership,
            event,
            summary,
            subject: Subject::Summary,
        }
    }

    /// The group of a live conversation and the position of `user` among its members.
    fn membership(&self, conversation_id: &str, user: &str) -> Result<(String, Option<usize>)> {
        let c = self.live_conv(conversation_id)?;
        let pos = self
            .groups
            .get(&c.group_id)
            .and_then(|m| m.iter().position(|(u, _)| u == user));
        Ok((c.group_id.clone(), pos))
    }

    /// Shares the conversation's group with `user`. Emits `membership/created`.
    pub fn add_member(
        &mut self,
        conversation_id: &str,
        user: &str,
        role: AccessRole,
    ) -> Result<Notification> {
        if user.trim().is_empty() {
            return Err(invalid("user", user, "a non-empty user id"));
        }
        let (group, pos) = self.membership(conversation_id, user)?;
        if pos.is_some() {
            return Err(UpstreamError::AlreadyMember {
                conversation: conversation_id.into(),
                user: user.into(),
            });
        }
        self.groups
            .entry(group.clone())
            .or_default()
            .push((user.to_string(), role));
        Ok(self.membership_note("created", &group, user, Some(role)))
    }

    fn member_index(&self, conversation_id: &str, user: &str) -> Result<(String, usize)> {
        let (group, pos) = self.membership(conversation_id, user)?;
        let pos = pos.ok_or_else(|| UpstreamError::NotMember {
            conversation: conversation_id.into(),
            user: user.into(),
        })?;
        if self.conv(conversation_id)?.owner_user_id == user {
            return Err(UpstreamError::Owner(user.to_string()));
        }
        Ok((group, pos))
    }

    /// Changes a member's role (not the owner's). Emits `membership/updated`.
    pub fn update_member(
        &mut self,
        conversation_id: &str,
        user: &str,
        role: AccessRole,
    ) -> Result<Notification> {
        let (group, pos) = self.member_index(conversation_id, user)?;
        if let Some(m) = self.groups.get_mut(&group).and_then(|m| m.get_mut(pos)) {
            m.1 = role;
        }
        Ok(self.membership_note("updated", &group, user, Some(role)))
    }

    /// Removes a member (not the owner). Emits `membership/deleted`.
    pub fn remove_member(&mut self, conversation_id: &str, user: &str) -> Result<Notification> {
        let (group, pos) = self.member_index(conversation_id, user)?;
        if let Some(m) = self.groups.get_mut(&group) {
            m.remove(pos);
        }
        Ok(self.membership_note("deleted", &group, user, None))
    }

    fn response_note(&self, c: &Conversation, event: &'static str, status: &str) -> Notification {
        let mut summary = Map::new();
        summary.insert("conversation".into(), json!(c.id));
        summary.insert("conversation_group".into(), json!(c.group_id));
        summary.insert("recording".into(), json!(c.id));
        summary.insert("status".into(), json!(status));
        Notification {
            kind: Kind::Response,
            event,
            summary,
            subject: Subject::Summary,
        }
    }

    /// An agent starts recording a response. Emits `response/created` (`status: started`).
    pub fn start_response(&mut self, conversation_id: &str) -> Result<Notification> {
        let c = self.live_conv(conversation_id)?;
        if self.responding.contains(conversation_id) {
            return Err(UpstreamError::ResponseInProgress(conversation_id.into()));
        }
        let note = self.response_note(c, "created", "started");
        self.responding.insert(conversation_id.to_string());
        Ok(note)
    }

    /// The response ends. Emits `response/deleted` with `status` `completed` or `failed`.
    pub fn finish_response(
        &mut self,
        conversation_id: &str,
        status: ResponseStatus,
    ) -> Result<Notification> {
        let c = self.conv(conversation_id)?;
        if !self.responding.contains(conversation_id) {
            return Err(UpstreamError::NoResponse(conversation_id.into()));
        }
        let note = self.response_note(c, "deleted", status.as_str());
        self.responding.remove(conversation_id);
        Ok(note)
    }
}
