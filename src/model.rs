//! The shapes the loop works with and the client traits it is generic over (`EventClient` /
//! `EventStream` / `CheckpointClient`, the same names as the Python protocols).

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::{Error, Result};
use crate::lanes::checkpoint::{StoredPosition, COMPLETED_KEY, CURSOR_KEY};
use crate::lanes::{LanesConfig, OnFailure};

/// One notification from the stream, normalized.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub event: String,
    pub kind: String,
    pub data: Bytes,
    pub cursor: Option<String>,
    /// Time of receipt (the wire carries no event time).
    pub received: SystemTime,
    /// Shards with the default key: the network thread's decision, taken while the payload
    /// is still in the cache (the driver decides itself when it is `Undecided`).
    pub shard: ShardMark,
}

/// Whether an event belongs to this shard, as decided where it was received
/// (`crate::shard`, default key only).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ShardMark {
    /// Not decided yet (one shard, a custom `key()`, a stream signal, an event built in Rust
    /// tests or given by a Python client).
    #[default]
    Undecided,
    /// Another shard's event: dropped before the processor.
    Foreign,
    /// This shard's event, with its default key (the lane key in concurrent mode).
    Own(Option<String>),
}

impl Event {
    /// True for connection-level signals (`kind == "stream"`), never business events.
    pub fn is_signal(&self) -> bool {
        self.kind == "stream"
    }

    /// The `reason` field of a signal's JSON payload, if any.
    pub fn reason(&self) -> Option<String> {
        self.payload_str("reason")
    }

    /// The `phase` field of a `phase` signal's payload, if any.
    pub fn phase(&self) -> Option<String> {
        self.payload_str("phase")
    }

    /// A string field of the JSON payload, if the payload is an object that has one.
    fn payload_str(&self, key: &str) -> Option<String> {
        let v: serde_json::Value = serde_json::from_slice(&self.data).ok()?;
        v.get(key).and_then(|r| r.as_str()).map(str::to_string)
    }
}

/// A stored processor checkpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    pub client_id: String,
    pub content_type: String,
    pub value: serde_json::Value,
    pub updated_at: Option<SystemTime>,
}

/// Which events the subscription may see.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Every user's events (needs the admin role).
    Admin,
    /// The caller's own events.
    User,
}

impl Scope {
    /// Parses `"admin"` / `"user"` (case-insensitive).
    pub fn parse(s: &str) -> Option<Scope> {
        match s.trim().to_ascii_lowercase().as_str() {
            "admin" => Some(Scope::Admin),
            "user" => Some(Scope::User),
            _ => None,
        }
    }
}

/// What to do when the stored position fell out of the server's retention window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StalePolicy {
    /// Stop with a `StaleCursor` error (default): a human decides.
    Fail,
    /// Resubscribe from the start of the retained window (`after_cursor = "start"`).
    Restart,
    /// Resubscribe without a cursor: live events only.
    Tail,
}

impl StalePolicy {
    pub fn parse(s: &str) -> Option<StalePolicy> {
        match s.trim().to_ascii_lowercase().as_str() {
            "fail" => Some(StalePolicy::Fail),
            "restart" => Some(StalePolicy::Restart),
            "tail" => Some(StalePolicy::Tail),
            _ => None,
        }
    }
}

/// A subscription request, transport-neutral.
#[derive(Clone, Debug, PartialEq)]
pub struct SubscribeRequest {
    pub kinds: Vec<String>,
    pub detail: Option<String>,
    pub after_cursor: Option<String>,
    pub scope: Scope,
    pub justification: Option<String>,
    pub conversation_ids: Vec<String>,
    pub entry_channels: Vec<String>,
    pub entry_content_types: Vec<String>,
    pub entry_roles: Vec<String>,
}

/// The loop's configuration (validated by the caller; [`LoopConfig::validate`] re-checks).
#[derive(Clone, Debug)]
pub struct LoopConfig {
    pub client_id: String,
    pub kinds: Vec<String>,
    pub conversation_ids: Vec<String>,
    pub entry_channels: Vec<String>,
    pub entry_content_types: Vec<String>,
    pub entry_roles: Vec<String>,
    pub scope: Scope,
    /// Where a first run starts: `None` = live tail only, `"start"` = the retained start.
    pub after_cursor: Option<String>,
    pub justification: Option<String>,
    /// Flush and save at least this often.
    pub checkpoint_interval: Duration,
    /// A write is due after this many handled events (1 = after every event).
    pub checkpoint_every: u64,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    pub stale_cursor: StalePolicy,
    /// Capacity of the buffer between the network and the processor, in events.
    pub buffer_size: usize,
    /// Capacity of that buffer in bytes (payloads plus a small per-event overhead); an event
    /// larger than this is still admitted alone.
    pub buffer_bytes: usize,
    /// Most events handed to the processor in one batch.
    pub max_batch: usize,
    /// Budget for the final flush + checkpoint write on stop (and for handlers in flight).
    pub stop_timeout: Duration,
    /// Read the stored checkpoint back now and then, and stop if another instance wrote it.
    pub detect_other_writers: bool,
    /// Most events handled at once (keyed lanes; `1` = one at a time).
    pub max_concurrency: usize,
    /// Tries per event (`1` = no retry).
    pub max_attempts: u32,
    /// Backoff between tries of one event.
    pub retry_min: Duration,
    pub retry_max: Duration,
    /// An event that failed its last try: stop the run or skip it after the hook.
    pub on_failure: OnFailure,
    /// The processor computes lane keys itself (`key()` overridden): the driver asks for them.
    pub custom_key: bool,
    /// Shards: this run handles the events whose key hashes to `shard_index` among
    /// `shard_count` (`crate::shard`); `1` handles every event and never reads a key for it.
    pub shard_count: u32,
    pub shard_index: u32,
}

impl Default for LoopConfig {
    fn default() -> Self {
        LoopConfig {
            client_id: String::new(),
            kinds: Vec::new(),
            conversation_ids: Vec::new(),
            entry_channels: Vec::new(),
            entry_content_types: Vec::new(),
            entry_roles: Vec::new(),
            scope: Scope::Admin,
            after_cursor: None,
            justification: None,
            checkpoint_interval: Duration::from_secs(5),
            checkpoint_every: 1,
            reconnect_min: Duration::from_secs(1),
            reconnect_max: Duration::from_secs(30),
            stale_cursor: StalePolicy::Fail,
            buffer_size: 4096,
            buffer_bytes: 64 * 1024 * 1024,
            max_batch: 512,
            stop_timeout: Duration::from_secs(5),
            detect_other_writers: true,
            max_concurrency: 1,
            max_attempts: 1,
            retry_min: Duration::from_secs(1),
            retry_max: Duration::from_secs(30),
            on_failure: OnFailure::Stop,
            custom_key: false,
            shard_count: 1,
            shard_index: 0,
        }
    }
}

impl LoopConfig {
    /// Refuses what the loop cannot run with (an empty client id, zero
    /// durations or sizes).
    pub fn validate(&self) -> Result<()> {
        use crate::error::Error::Config;
        if self.client_id.trim().is_empty() {
            return Err(Config("client_id must be a non-empty string".into()));
        }
        if self.checkpoint_interval.is_zero() {
            return Err(Config("checkpoint_interval must be positive".into()));
        }
        if self.checkpoint_every == 0 {
            return Err(Config("checkpoint_every must be at least 1".into()));
        }
        if self.reconnect_min.is_zero() || self.reconnect_max < self.reconnect_min {
            return Err(Config(
                "reconnect_min must be positive and reconnect_max at least reconnect_min".into(),
            ));
        }
        if self.buffer_size == 0 || self.max_batch == 0 || self.buffer_bytes == 0 {
            return Err(Config(
                "buffer_size, buffer_bytes and max_batch must be at least 1".into(),
            ));
        }
        self.shard_layout().validate()?;
        self.lanes_config().validate()
    }

    /// The share of the stream this run handles.
    pub fn shard_layout(&self) -> crate::shard::ShardLayout {
        crate::shard::ShardLayout {
            index: self.shard_index,
            count: self.shard_count,
        }
    }

    /// True when events run as tasks (keyed lanes, retries or skip); false for the default
    /// configuration, which handles batches in stream order.
    pub fn concurrent(&self) -> bool {
        self.max_concurrency > 1 || self.max_attempts > 1 || self.on_failure != OnFailure::Stop
    }

    /// The lanes' settings; the window is the buffer's capacity.
    pub fn lanes_config(&self) -> LanesConfig {
        LanesConfig {
            max_concurrency: self.max_concurrency,
            max_attempts: self.max_attempts,
            retry_min: self.retry_min,
            retry_max: self.retry_max,
            on_failure: self.on_failure,
            max_window: self.buffer_size.max(1),
        }
    }

    /// The subscription for a resume position.
    pub fn subscribe_request(&self, after_cursor: Option<String>) -> SubscribeRequest {
        SubscribeRequest {
            kinds: self.kinds.clone(),
            detail: Some("full".into()),
            after_cursor,
            scope: self.scope,
            justification: self.justification.clone(),
            conversation_ids: self.conversation_ids.clone(),
            entry_channels: self.entry_channels.clone(),
            entry_content_types: self.entry_content_types.clone(),
            entry_roles: self.entry_roles.clone(),
        }
    }
}

/// An open subscription.
#[async_trait]
pub trait EventStream: Send {
    /// The next notification; `Ok(None)` at a clean end of the stream.
    async fn recv(&mut self) -> Result<Option<Event>>;
}

/// Opens subscriptions (Python's `EventClient` protocol).
#[async_trait]
pub trait EventClient: Send + Sync {
    async fn subscribe(&self, request: SubscribeRequest) -> Result<Box<dyn EventStream>>;
}

/// Persists one checkpoint per client id (Python's `CheckpointClient` protocol).
#[async_trait]
pub trait CheckpointClient: Send + Sync {
    /// `Err(Error::CheckpointNotFound)` when none is stored.
    async fn get(&self, client_id: &str) -> Result<Checkpoint>;
    async fn put(
        &self,
        client_id: &str,
        content_type: &str,
        value: &serde_json::Value,
    ) -> Result<Checkpoint>;
    /// The largest message (bytes) this client reads back, when it has such a limit: a snapshot
    /// whose checkpoint message would exceed it is refused before it is sent.
    fn max_message_size(&self) -> Option<usize> {
        None
    }
}

/// The position a stored checkpoint resumes after: its `lastEventCursor`, when it is a
/// non-empty string (or an integer, read as its decimal text) in a JSON object.
pub fn resume_cursor(value: &serde_json::Value) -> Option<String> {
    match value.get(CURSOR_KEY) {
        Some(serde_json::Value::String(c)) if !c.is_empty() => Some(c.clone()),
        Some(serde_json::Value::Number(n)) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        _ => None,
    }
}

/// A stored value for an error message: its JSON, cut after 200 bytes.
pub fn shown_value(v: &serde_json::Value) -> String {
    let mut shown = v.to_string();
    if shown.len() > 200 {
        let mut end = 200;
        while !shown.is_char_boundary(end) {
            end -= 1;
        }
        shown.truncate(end);
        shown.push_str("...");
    }
    shown
}

/// The runtime's position stored in a loaded checkpoint of `client_id`. `lastEventCursor` may be
/// absent or null (no position), a non-empty string, or an integer (converted to its decimal
/// text); anything else is refused naming the value, since ignoring it would silently move the
/// run to `after_cursor`. `completedAboveWatermark` is read leniently (a malformed list only
/// causes redos). A value that is not an object has no position.
pub fn stored_position(client_id: &str, value: &serde_json::Value) -> Result<StoredPosition> {
    use serde_json::Value;
    let Some(obj) = value.as_object() else {
        return Ok(StoredPosition::default());
    };
    let watermark = match obj.get(CURSOR_KEY) {
        None | Some(Value::Null) => None,
        Some(v) => match resume_cursor(value) {
            Some(c) => Some(c),
            None => {
                let shown = shown_value(v);
                return Err(Error::Config(format!(
                    "the stored checkpoint of client_id={client_id} has {CURSOR_KEY} = {shown}: \
                     expected a non-empty string cursor (or an integer), null or no key; fix or \
                     delete the checkpoint"
                )));
            }
        },
    };
    let mut position = crate::lanes::checkpoint::read_position(value);
    position.watermark = watermark;
    if obj.get(COMPLETED_KEY).is_none() {
        position.completed.clear();
    }
    Ok(position)
}
