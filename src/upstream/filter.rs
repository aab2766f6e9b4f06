//! Subscription semantics of a Memory Service: the entry filters, the detail mode and how
//! `after_cursor` is read.

use super::{Kind, Notification};

/// Which payload shape a subscriber asked for (`SubscribeEventsRequest.detail`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detail {
    /// snake_case keys, ids only (the server default).
    Summary,
    /// `conversation` and `entry` payloads replaced by the stored entity (camelCase).
    Full,
}

impl Detail {
    /// Reads the request field: absent or `"summary"` → summary, `"full"` → full; anything
    /// else is rejected (a real server answers `INVALID_ARGUMENT`).
    pub fn parse(detail: Option<&str>) -> Result<Detail, String> {
        match detail {
            None | Some("summary") => Ok(Detail::Summary),
            Some("full") => Ok(Detail::Full),
            Some(other) => Err(format!(
                "detail must be \"summary\" or \"full\", got {other:?}"
            )),
        }
    }
}

/// Where a subscription starts, read from `after_cursor` the way upstream reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterCursor {
    /// No cursor: the live tail only.
    Tail,
    /// `"start"`: the oldest retained event.
    Start,
    /// A decimal cursor: replay the events after it (stale if it fell out of retention).
    After(u64),
    /// Not a cursor this server can read: answered like a cursor beyond retention.
    Stale,
}

impl AfterCursor {
    /// Parses the request field. Cursors are plain decimal strings; anything else is stale.
    pub fn parse(after_cursor: Option<&str>) -> AfterCursor {
        match after_cursor {
            None => AfterCursor::Tail,
            Some("start") => AfterCursor::Start,
            Some(c) if !c.is_empty() && c.bytes().all(|b| b.is_ascii_digit()) => c
                .parse()
                .map(AfterCursor::After)
                .unwrap_or(AfterCursor::Stale),
            Some(_) => AfterCursor::Stale,
        }
    }
}

/// The entry filters of a subscription: channels (default `["history"]`) and roles match
/// case-insensitively, content types exactly; blank values are ignored. Other kinds pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryFilter {
    channels: Vec<String>,
    content_types: Vec<String>,
    roles: Vec<String>,
}

impl Default for EntryFilter {
    fn default() -> Self {
        EntryFilter::new::<&str>(&[], &[], &[])
    }
}

impl EntryFilter {
    /// Builds the filter from the request's `entry_channels`, `entry_content_types` and
    /// `entry_roles`.
    pub fn new<S: AsRef<str>>(channels: &[S], content_types: &[S], roles: &[S]) -> EntryFilter {
        let set = |values: &[S], fold: bool| -> Vec<String> {
            values
                .iter()
                .map(|v| v.as_ref().trim())
                .filter(|v| !v.is_empty())
                .map(|v| {
                    if fold {
                        v.to_lowercase()
                    } else {
                        v.to_string()
                    }
                })
                .collect()
        };
        let mut channels = set(channels, true);
        if channels.is_empty() {
            channels.push("history".into());
        }
        EntryFilter {
            channels,
            content_types: set(content_types, false),
            roles: set(roles, true),
        }
    }

    /// Whether an entry with these attributes passes. An entry without a role never passes
    /// a role filter.
    pub fn matches_entry(&self, channel: &str, content_type: &str, role: Option<&str>) -> bool {
        let channel = channel.trim().to_lowercase();
        if !self.channels.contains(&channel) {
            return false;
        }
        if !self.content_types.is_empty()
            && !self.content_types.iter().any(|c| c == content_type.trim())
        {
            return false;
        }
        if !self.roles.is_empty() {
            let role = role.map(|r| r.trim().to_lowercase()).unwrap_or_default();
            if role.is_empty() || !self.roles.contains(&role) {
                return false;
            }
        }
        true
    }

    /// Whether a notification passes (non-entry kinds always do).
    pub fn matches(&self, n: &Notification) -> bool {
        if n.kind() != Kind::Entry {
            return true;
        }
        self.matches_entry(
            n.entry_channel().unwrap_or("history"),
            n.entry_content_type().unwrap_or(""),
            n.entry_role(),
        )
    }
}
