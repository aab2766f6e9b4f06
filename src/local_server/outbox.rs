//! The event log: decimal cursors from 1, retention (`purge`), the live subscribers it fans
//! out to, and its on-disk form (`outbox.jsonl` + `outbox.base` under the data directory).
//!
//! The outbox lock is only ever held for memory operations: the files are read before the
//! server is built and written by the persistence thread ([`super::persist`]).

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;
use tonic::Status;

use super::filter::{EventKeys, Filter};
use crate::proto;
use crate::upstream::{AfterCursor, Detail, Notification, Upstream};

/// What an event's payload is.
pub(super) enum Payload {
    /// Published as bytes (`publish`): the same payload in both detail modes.
    Raw(Bytes),
    /// Emitted by a scenario operation: rendered per subscriber's detail mode when it is sent.
    Model(Notification),
}

/// One event of the log, with the payload keys its filters look at.
pub(super) struct StoredEvent {
    pub cursor: u64,
    pub kind: String,
    pub event: String,
    pub payload: Payload,
    pub keys: EventKeys,
}

impl StoredEvent {
    pub fn new(cursor: u64, kind: &str, event: &str, data: Bytes) -> StoredEvent {
        StoredEvent {
            cursor,
            keys: EventKeys::from_data(&data),
            kind: kind.to_string(),
            event: event.to_string(),
            payload: Payload::Raw(data),
        }
    }

    /// An event of the model: the filters read its summary payload.
    pub fn from_model(cursor: u64, note: Notification) -> StoredEvent {
        StoredEvent {
            cursor,
            keys: EventKeys::from_summary(note.summary()),
            kind: note.kind().as_str().to_string(),
            event: note.event().to_string(),
            payload: Payload::Model(note),
        }
    }

    /// Whether `filter` lets this event through.
    pub fn passes(&self, filter: &Filter) -> bool {
        filter.matches(&self.kind, &self.keys)
    }

    /// The notification as a subscriber in `detail` mode receives it, read from the model's
    /// current state; `None` when it is not delivered (full mode, the entity is gone).
    pub fn render(&self, model: &Upstream, detail: Detail) -> Option<proto::EventNotification> {
        let data = match &self.payload {
            Payload::Raw(b) => b.clone(),
            Payload::Model(n) => model.render_bytes(n, detail)?,
        };
        Some(proto::EventNotification {
            event: self.event.clone(),
            kind: self.kind.clone(),
            data,
            cursor: Some(self.cursor.to_string()),
        })
    }

    /// The event as one line of `outbox.jsonl`. A model event is stored with its summary
    /// payload: the model's entities are not persisted, so after a restart it is replayed
    /// with that payload in both detail modes.
    pub fn to_line(&self) -> String {
        let data = match &self.payload {
            Payload::Raw(b) => String::from_utf8_lossy(b).into_owned(),
            Payload::Model(n) => serde_json::Value::Object(n.summary().clone()).to_string(),
        };
        serde_json::json!({
            "c": self.cursor,
            "k": self.kind,
            "e": self.event,
            "d": data,
        })
        .to_string()
    }

    /// Parses a line of `outbox.jsonl`; `None` for a torn or foreign line.
    fn from_line(line: &str) -> Option<StoredEvent> {
        let v = serde_json::from_str::<serde_json::Value>(line).ok()?;
        let text = |key: &str| v.get(key).and_then(|x| x.as_str());
        let cursor = v.get("c").and_then(|c| c.as_u64())?;
        let (kind, event, data) = (text("k")?, text("e")?, text("d")?);
        Some(StoredEvent::new(
            cursor,
            kind,
            event,
            Bytes::from(data.to_string()),
        ))
    }
}

/// A message from the server to one open stream, besides its events.
pub(super) enum Ctl {
    Evict(String),
    Invalidate(String),
    Abort(Status),
}

/// An open stream in its live phase (or about to enter it).
pub(super) struct Subscriber {
    pub filter: Arc<Filter>,
    pub tx: mpsc::Sender<Arc<StoredEvent>>,
    pub ctl: mpsc::UnboundedSender<Ctl>,
}

/// Where a new subscription starts.
pub(super) struct ReplayRange {
    /// First cursor to replay.
    pub from: u64,
    /// Replay ends before this cursor; later events arrive live.
    pub to: u64,
    /// The requested cursor is beyond retention: `stream/invalidate`, then the end.
    pub stale: bool,
}

pub(super) struct Outbox {
    /// Cursor of `events[0]`; events before it were purged.
    pub base: u64,
    pub events: VecDeque<Arc<StoredEvent>>,
    pub subscribers: Vec<Subscriber>,
}

impl Outbox {
    pub fn new() -> Outbox {
        Outbox {
            base: 1,
            events: VecDeque::new(),
            subscribers: Vec::new(),
        }
    }

    /// Reads the log persisted in `dir` (missing files: an empty log).
    pub fn load(dir: &Path) -> Outbox {
        let mut ob = Outbox::new();
        if let Ok(text) = std::fs::read_to_string(dir.join("outbox.base")) {
            ob.base = text.trim().parse().unwrap_or(1);
        }
        if let Ok(text) = std::fs::read_to_string(dir.join("outbox.jsonl")) {
            for line in text.lines() {
                // A torn last line (crash mid-write) is skipped; every full line is an event.
                let Some(ev) = StoredEvent::from_line(line) else {
                    continue;
                };
                if ev.cursor < ob.base || (!ob.events.is_empty() && ev.cursor != ob.next_cursor()) {
                    continue;
                }
                if ob.events.is_empty() {
                    ob.base = ev.cursor;
                }
                ob.events.push_back(Arc::new(ev));
            }
        }
        ob
    }

    pub fn next_cursor(&self) -> u64 {
        self.base + self.events.len() as u64
    }

    /// Appends one event and hands it to every live subscriber whose filter it passes; a
    /// subscriber whose queue is full is evicted as a slow consumer.
    pub fn append(&mut self, kind: &str, event: &str, data: Bytes) -> Arc<StoredEvent> {
        let ev = StoredEvent::new(self.next_cursor(), kind, event, data);
        self.push(ev)
    }

    /// Appends a notification of the model (see [`Outbox::append`]).
    pub fn append_model(&mut self, note: Notification) -> Arc<StoredEvent> {
        let ev = StoredEvent::from_model(self.next_cursor(), note);
        self.push(ev)
    }

    fn push(&mut self, ev: StoredEvent) -> Arc<StoredEvent> {
        let ev = Arc::new(ev);
        self.events.push_back(ev.clone());
        self.subscribers.retain(|s| {
            if !ev.passes(&s.filter) {
                return true;
            }
            match s.tx.try_send(ev.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    let _ = s.ctl.send(Ctl::Evict("slow consumer".into()));
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
        ev
    }

    /// Drops events up to and including `through`; returns the new base if it moved.
    pub fn purge(&mut self, through: u64) -> Option<u64> {
        let new_base = through.saturating_add(1).min(self.next_cursor());
        if new_base <= self.base {
            return None;
        }
        while self.events.front().is_some_and(|e| e.cursor < new_base) {
            self.events.pop_front();
        }
        self.base = new_base;
        Some(new_base)
    }

    /// Where a subscription with `after_cursor` starts: `None` is the live tail, `"start"`
    /// the oldest retained event, a decimal cursor the event after it. A cursor that fell out
    /// of retention, or that is not a decimal cursor at all, is stale (as upstream reads it).
    pub fn replay_range(&self, after_cursor: Option<&str>) -> ReplayRange {
        let next = self.next_cursor();
        let (from, stale) = match AfterCursor::parse(after_cursor) {
            AfterCursor::Tail => (next, false),
            AfterCursor::Start => (self.base, false),
            AfterCursor::After(c) if c.saturating_add(1) < self.base => (next, true),
            AfterCursor::After(c) => (c.saturating_add(1).min(next), false),
            AfterCursor::Stale => (next, true),
        };
        ReplayRange {
            from,
            to: next,
            stale,
        }
    }

    /// Up to `max` retained events from cursor `from` (inclusive) to `to` (exclusive).
    pub fn chunk(&self, from: u64, to: u64, max: usize) -> Vec<Arc<StoredEvent>> {
        let start = from.saturating_sub(self.base) as usize;
        let len = (to.saturating_sub(from) as usize).min(max);
        self.events.iter().skip(start).take(len).cloned().collect()
    }
}
