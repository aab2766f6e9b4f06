//! Counters and gauges of a running loop, readable from any thread without locks on the hot path.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

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
    /// Sequential mode: when the batch in hand was handed out, as nanoseconds after `epoch`
    /// plus one (0: no batch in hand). Two stores per batch, nothing per event.
    batch_since: AtomicU64,
    /// Concurrent mode: when each handler call in progress started, by event sequence number
    /// (a few entries, at most `max_concurrency`; read only by `busy_seconds`).
    tasks_since: Mutex<HashMap<u64, Instant>>,
    epoch: Epoch,
}

/// The instant `batch_since` counts from.
struct Epoch(Instant);

impl Default for Epoch {
    fn default() -> Self {
        Epoch(Instant::now())
    }
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

    /// The batch in hand was handled: `events` events in `nanos` (no batch in hand now).
    pub fn record_handle(&self, events: u64, nanos: u64) {
        self.batch_since.store(0, Relaxed);
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

    /// A batch is handed to the processor now (sequential mode); returns the instant.
    pub fn batch_started(&self) -> Instant {
        let now = Instant::now();
        let nanos = now.saturating_duration_since(self.epoch.0).as_nanos();
        let stored = u64::try_from(nanos)
            .unwrap_or(u64::MAX - 1)
            .saturating_add(1);
        self.batch_since.store(stored, Relaxed);
        now
    }

    /// Handler calls started at `now` (concurrent mode), by event sequence number.
    pub fn tasks_started(&self, now: Instant, seqs: impl Iterator<Item = u64>) {
        if let Ok(mut t) = self.tasks_since.lock() {
            t.extend(seqs.map(|s| (s, now)));
        }
    }

    /// Handler calls that ended (returned, raised or were cancelled), by sequence number;
    /// numbers not in progress are ignored.
    pub fn tasks_ended<'a>(&self, seqs: impl Iterator<Item = &'a u64>) {
        if let Ok(mut t) = self.tasks_since.lock() {
            for s in seqs {
                t.remove(s);
            }
        }
    }

    /// The run is over (or failed): no handler call counts as in progress any more.
    pub fn stopped(&self) {
        self.set_phase(StreamPhase::Stopped);
        self.batch_since.store(0, Relaxed);
        if let Ok(mut t) = self.tasks_since.lock() {
            t.clear();
        }
    }

    /// How long the oldest handler call in progress has been running, in seconds (0 when
    /// none): the batch in hand (sequential mode) or the oldest task (concurrent mode).
    pub fn busy_seconds(&self) -> f64 {
        let now = Instant::now();
        let mut oldest = match self.batch_since.load(Relaxed) {
            0 => None,
            v => self.epoch.0.checked_add(Duration::from_nanos(v - 1)),
        };
        if let Ok(t) = self.tasks_since.lock() {
            if let Some(first) = t.values().min() {
                oldest = Some(oldest.map_or(*first, |o| o.min(*first)));
            }
        }
        oldest.map_or(0.0, |o| now.saturating_duration_since(o).as_secs_f64())
    }

    pub fn mark_checkpoint(&self) {
        if let Ok(mut t) = self.last_checkpoint_at.lock() {
            *t = Some(SystemTime::now());
        }
        self.checkpoints_written.fetch_add(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_seconds_follows_the_batch_in_hand() {
        let st = Stats::default();
        assert_eq!(st.busy_seconds(), 0.0);
        let started = st.batch_started();
        std::thread::sleep(Duration::from_millis(20));
        let busy = st.busy_seconds();
        assert!((0.02..5.0).contains(&busy), "{busy}");
        st.record_handle(3, started.elapsed().as_nanos() as u64);
        assert_eq!(st.busy_seconds(), 0.0);
        st.batch_started();
        st.stopped();
        assert_eq!(st.busy_seconds(), 0.0);
        assert_eq!(st.phase(), StreamPhase::Stopped);
    }

    #[test]
    fn busy_seconds_is_the_oldest_task_in_progress() {
        let st = Stats::default();
        let early = Instant::now() - Duration::from_secs(30);
        st.tasks_started(early, [1, 2].into_iter());
        st.tasks_started(Instant::now(), [3].into_iter());
        assert!(st.busy_seconds() >= 30.0);
        // Ending one of the two oldest keeps the other; unknown numbers are ignored.
        st.tasks_ended([1, 99].iter());
        assert!(st.busy_seconds() >= 30.0);
        st.tasks_ended([2].iter());
        assert!(st.busy_seconds() < 30.0);
        st.tasks_ended([3].iter());
        assert_eq!(st.busy_seconds(), 0.0);
        st.tasks_started(early, [4].into_iter());
        st.stopped();
        assert_eq!(st.busy_seconds(), 0.0);
    }
}
