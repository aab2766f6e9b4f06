//! Shards: several processes split one event stream by key (docs/semantics.md, "Shards").
//!
//! Every shard reads the whole stream and keeps the events whose key maps to its index; the
//! others ("foreign" events) are dropped in the driver before they cross into Python, and the
//! shard's watermark moves over them. The mapping is part of the stored format (a checkpoint
//! records its layout, and other languages must be able to compute the same shards), so it is
//! fixed forever:
//!
//! `shard = fnv1a64(utf8(key)) % shard_count`, where `fnv1a64` is plain 64-bit FNV-1a over the
//! bytes (offset basis `0xcbf29ce484222325`, prime `0x100000001b3`, for each byte: xor, then
//! wrapping multiply; no terminator, no length prefix). An event whose key is `None` belongs
//! to shard 0.

mod scan;

use std::borrow::Cow;

use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::payload::Ids;

/// FNV-1a 64-bit offset basis.
pub const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
/// FNV-1a 64-bit prime.
pub const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
/// The largest `shard_count`.
pub const MAX_SHARD_COUNT: u32 = 1024;
/// The key of the layout in a stored checkpoint value.
pub const LAYOUT_KEY: &str = "shardLayout";

/// Plain FNV-1a, 64 bits, over `bytes`.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash = FNV_OFFSET_BASIS;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    hash
}

/// The shard of an event with `key` among `count` shards (`count` >= 1; `0` is read as 1).
pub fn shard_of(key: Option<&str>, count: u64) -> u64 {
    match key {
        None => 0,
        Some(k) => fnv1a64(k.as_bytes()) % count.max(1),
    }
}

/// Which share of the stream a run handles: shard `index` of `count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardLayout {
    pub index: u32,
    pub count: u32,
}

impl Default for ShardLayout {
    /// One shard: the whole stream (what a checkpoint without a layout means).
    fn default() -> Self {
        ShardLayout { index: 0, count: 1 }
    }
}

impl std::fmt::Display for ShardLayout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "shard {} of {}", self.index, self.count)
    }
}

impl ShardLayout {
    /// Refuses a count outside 1..=1024 or an index outside 0..count, naming the fields.
    pub fn validate(&self) -> Result<()> {
        if self.count == 0 || self.count > MAX_SHARD_COUNT {
            return Err(Error::Config(format!(
                "shard_count must be between 1 and {MAX_SHARD_COUNT}, got {}",
                self.count
            )));
        }
        if self.index >= self.count {
            return Err(Error::Config(format!(
                "shard_index ({}) must be less than shard_count ({}): shards are numbered 0 to {}",
                self.index,
                self.count,
                self.count - 1
            )));
        }
        Ok(())
    }

    /// True when the run handles every event (no filtering at all).
    pub fn is_whole(&self) -> bool {
        self.count <= 1
    }

    /// True when events with `key` belong to this shard.
    pub fn owns(&self, key: Option<&str>) -> bool {
        shard_of(key, u64::from(self.count)) == u64::from(self.index)
    }

    /// The default key of an event (see `crate::payload::default_key`), read and hashed
    /// without copying it: `Some(key)` when the event belongs to this shard (the key the lane
    /// needs), `None` when it is foreign.
    pub fn own_default_key(&self, kind: &str, data: &[u8]) -> Option<Option<String>> {
        let key = default_key_of(kind, data);
        if self.owns(key.as_deref()) {
            Some(key.map(Cow::into_owned))
        } else {
            None
        }
    }

    /// True when the event (default key) belongs to this shard.
    pub fn owns_event(&self, kind: &str, data: &[u8]) -> bool {
        self.owns(default_key_of(kind, data).as_deref())
    }

    /// The layout recorded in a stored checkpoint value: `shardLayout: {"index": i, "count":
    /// n}`; absent (or a value that is not an object) means shard 0 of 1. A `shardLayout` that
    /// cannot be read is an error naming the client id.
    pub fn stored(client_id: &str, value: &Value) -> Result<ShardLayout> {
        let Some(raw) = value.as_object().and_then(|o| o.get(LAYOUT_KEY)) else {
            return Ok(ShardLayout::default());
        };
        let field = |name: &str| {
            raw.get(name)
                .and_then(Value::as_u64)
                .and_then(|n| u32::try_from(n).ok())
        };
        match (field("index"), field("count")) {
            (Some(index), Some(count)) if count >= 1 && index < count => {
                Ok(ShardLayout { index, count })
            }
            _ => {
                let shown = crate::model::shown_value(raw);
                Err(Error::Config(format!(
                    "the stored checkpoint of client_id={client_id} has {LAYOUT_KEY} = {shown}: \
                     expected {{\"index\": i, \"count\": n}} with 0 <= i < n; fix or delete the \
                     checkpoint"
                )))
            }
        }
    }

    /// Refuses to resume `client_id` from a checkpoint written under another layout: its
    /// position covers another share of the stream, so resuming would skip or redo events.
    pub fn check_stored(&self, client_id: &str, value: &Value) -> Result<()> {
        let stored = ShardLayout::stored(client_id, value)?;
        if stored == *self {
            return Ok(());
        }
        Err(Error::Config(format!(
            "the checkpoint of client_id={client_id} was written as {stored} \
             (shard_index={}, shard_count={}) but this run is configured as {self} \
             (shard_index={}, shard_count={}): its position covers another share of the \
             stream, so it cannot be resumed. To reshard: stop every shard of the old layout, \
             start the new layout under new client ids, with after_cursor set to the smallest \
             lastEventCursor of the old shards (see the README, \"Scaling out\"); or use the \
             old layout again",
            stored.index, stored.count, self.index, self.count
        )))
    }

    /// Records the layout in a snapshot value (an object) when there is more than one shard;
    /// with one shard the key is removed, so the stored format is the unsharded one.
    pub fn write(&self, obj: &mut Map<String, Value>) {
        if self.is_whole() {
            obj.remove(LAYOUT_KEY);
        } else {
            let mut layout = Map::new();
            layout.insert("index".into(), Value::from(self.index));
            layout.insert("count".into(), Value::from(self.count));
            obj.insert(LAYOUT_KEY.into(), Value::Object(layout));
        }
    }
}

/// The default key of an event, exactly as `crate::payload::default_key` reads it (the
/// conversation: `conversation`, else `conversationId`, else a `conversation` event's `id`;
/// else the group: `conversation_group`, else `conversationGroupId`; only string values count,
/// the last of duplicate keys wins, a payload that is not a JSON object has none). A
/// hand-written scanner of the top-level object answers when it is sure (plain keys and key
/// values, the usual payloads: see `scan`); anything else is read by `payload::Ids::parse`
/// itself. Borrowed unless the key has escapes.
pub fn default_key_of<'a>(kind: &str, data: &'a [u8]) -> Option<Cow<'a, str>> {
    match scan::default_key(kind, data) {
        Some(key) => key.map(Cow::Borrowed),
        None => {
            let ids = Ids::parse(kind, data);
            ids.conversation.or(ids.group)
        }
    }
}

#[cfg(test)]
#[path = "shard_tests.rs"]
mod tests;
