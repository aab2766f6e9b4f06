//! Counters and gauges of a running loop, readable from any thread without locks on the hot path.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::SystemTime;

/// Where the subscription is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum StreamPhase {
    Connecting = 0,
    Replay = 1,
    Live = 2,
    Stopped = 3,
    /// Receiving events from a source that sends no phase signals.
    Streaming = 4,
}

impl StreamPhase {
    pub fn name(self) -> &'static str {
        match self {
            StreamPhase::Connecting => "connecting",
            StreamPhase::Replay => "replay",
            StreamPhase::Live => "live",
            StreamPhase::Stopped => "stopped",
            StreamPhase::Streaming => "streaming",
        }
    }
}

#[derive(Default)]
pub struct Stats {
    pub events_received: AtomicU64,
    pub events_handled: AtomicU64,
    pub stream_signals: AtomicU64,
    pub checkpoints_written: AtomicU64,
    pub checkpoints_failed: AtomicU64,
    pub checkpoints_skipped: AtomicU64,
    pub reconnects: AtomicU64,
    pub batches: AtomicU64,
    /// Total handle time, and the slowest batch's mean time per event, in nanoseconds.
    pub handle_ns_total: AtomicU64,
    pub handle_ns_max: AtomicU64,
    /// Keyed concurrency: handlers in progress, retries scheduled, events skipped after their
    /// last try, and the contiguous watermark (the cursor the checkpoint may cover).
    pub in_flight: AtomicU64,
    /// Keyed concurrency: admitted events not done yet (queued in their lanes, in flight, or
    /// waiting for a retry).
    pub events_pending: AtomicU64,
    pub retries: AtomicU64,
    pub failed_events: AtomicU64,
    /// Shards: events of other shards, dropped before the processor.
    pub events_foreign: AtomicU64,
    pub watermark: Mutex<Option<String>>,
    phase: AtomicU8,
    pub last_cursor: Mutex<Option<String>>,
    pub last_checkpoint_at: Mutex<Option<SystemTime>>,
}

impl Stats {
    pub fn set_phase(&self, p: StreamPhase) {
        self.phase.store(p as u8, Relaxed);
    }

    pub fn phase(&self) -> StreamPhase {
        match self.phase.load(Relaxed) {
            1 => StreamPhase::Replay,
            2 => StreamPhase::Live,
            3 => StreamPhase::Stopped,
            4 => StreamPhase::Streaming,
            _ => StreamPhase::Connecting,
        }
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Relaxed)
    }

    pub fn record_handle(&self, events: u64, nanos: u64) {
        if events == 0 {
            return;
        }
        self.handle_ns_total.fetch_add(nanos, Relaxed);
        self.handle_ns_max
            .fetch_max(nanos.div_ceil(events), Relaxed);
        self.batches.fetch_add(1, Relaxed);
    }

    pub fn set_last_cursor(&self, cursor: &str) {
        if let Ok(mut c) = self.last_cursor.lock() {
            match c.as_mut() {
                Some(s) => {
                    s.clear();
                    s.push_str(cursor);
                }
                None => *c = Some(cursor.to_string()),
            }
        }
    }

    /// Stores the watermark (only called when it changed).
    pub fn set_watermark(&self, cursor: Option<&str>) {
        if let Ok(mut c) = self.watermark.lock() {
            match (c.as_mut(), cursor) {
                (Some(s), Some(w)) => {
                    s.clear();
                    s.push_str(w);
                }
                (_, w) => *c = w.map(str::to_string),
            }
        }
    }

    pub fn mark_checkpoint(&self) {
        if let Ok(mut t) = self.last_checkpoint_at.lock() {
            *t = Some(SystemTime::now());
        }
        self.checkpoints_written.fetch_add(1, Relaxed);
    }
}
