//! The driver's concurrent mode: events run as tasks in keyed lanes (`crate::lanes`), their
//! outcomes come back in batches, retries wait for their backoff, a stop drains the tasks in
//! flight (then cancels what is left), and the checkpoint stores the contiguous watermark and
//! the completed set above it.
//!
//! One [`Driver::report`] per loop iteration carries everything that happened since the last
//! one (completions, failures, cancellations, computed keys), so the boundary is crossed per
//! iteration, never per event.

use std::time::Instant;

use log::{info, warn};

use super::{Action, Driver, Phase};
use crate::buffer::Taken;
use crate::error::Result;
use crate::lanes::{Admitted, Failure};
use crate::payload::default_key;
use crate::stats::Stats;

/// What happened to the started events since the last report (concurrent mode).
#[derive(Debug, Default)]
pub struct Report {
    /// Handlers that returned (and `on_failure` hooks that returned, for skipped events).
    pub done: Vec<u64>,
    /// Handlers that raised.
    pub failed: Vec<u64>,
    /// Handlers cancelled after [`Action::Cancel`].
    pub cancelled: Vec<u64>,
    /// The keys asked for by the last [`Action::Keys`], one per event, in order.
    pub keys: Option<Vec<Option<String>>>,
}

impl Report {
    pub fn is_empty(&self) -> bool {
        self.done.is_empty()
            && self.failed.is_empty()
            && self.cancelled.is_empty()
            && self.keys.is_none()
    }
}

impl Driver {
    /// Sequential mode: a batch is handed out now (`busy_seconds` counts from here).
    pub(super) fn batch_started(&self) -> Instant {
        self.stats.batch_started()
    }

    /// The lanes' gauges for `stats()`: handlers in progress and admitted events not done.
    fn store_lane_gauges(&self) {
        let relaxed = std::sync::atomic::Ordering::Relaxed;
        self.stats
            .in_flight
            .store(self.lanes.in_flight() as u64, relaxed);
        self.stats
            .events_pending
            .store(self.lanes.unfinished() as u64, relaxed);
    }

    /// One handler call returned after `nanos`: the handle-time stats count each call
    /// (`handle_seconds_max` is then the slowest call).
    fn record_call(&self, nanos: u64) {
        let relaxed = std::sync::atomic::Ordering::Relaxed;
        self.stats.handle_ns_total.fetch_add(nanos, relaxed);
        self.stats.handle_ns_max.fetch_max(nanos, relaxed);
    }

    /// True when events run as tasks ([`Action::Start`]) rather than in batches.
    pub fn is_concurrent(&self) -> bool {
        self.concurrent
    }

    /// Applies the outcomes of started events (concurrent mode). Misuse (an unknown or
    /// double-reported `seq`, keys that were not asked for) is an error.
    pub fn report(&mut self, now: Instant, report: Report) -> Result<()> {
        if report.is_empty() {
            return Ok(());
        }
        if !self.concurrent {
            if !(report.done.is_empty() && report.failed.is_empty() && report.cancelled.is_empty())
            {
                return self.sequential_keys(None);
            }
            return self.sequential_keys(report.keys);
        }
        let ended = report.done.iter().chain(&report.failed);
        self.stats.tasks_ended(ended.chain(&report.cancelled));
        let failed_before = self.lanes.failed_events();
        let mut last_cursor = None;
        for &seq in &report.done {
            if let Some(c) = self.lanes.item(seq).and_then(|e| e.cursor.clone()) {
                last_cursor = Some(c);
            }
            let started = self.lanes.started_at(seq);
            self.lanes.completed(seq)?;
            if let Some(t) = started {
                let nanos = u64::try_from(now.saturating_duration_since(t).as_nanos());
                self.record_call(nanos.unwrap_or(u64::MAX));
            }
        }
        for &seq in &report.cancelled {
            self.lanes.cancelled(seq)?;
        }
        for &seq in &report.failed {
            match self.lanes.failed(seq, now)? {
                Failure::Retry { attempt, due } => {
                    Stats::add(&self.stats.retries, 1);
                    info!(
                        client_id = self.cfg.client_id.as_str(), attempt = attempt;
                        "client_id={}: event #{seq} failed, try {attempt} in {:.3}s",
                        self.cfg.client_id,
                        due.saturating_duration_since(now).as_secs_f64()
                    );
                }
                Failure::Skip => self.pending_hooks.push_back(seq),
                Failure::Stop => {
                    if self.failed_seq.is_none() {
                        self.failed_seq = Some(seq);
                    }
                }
            }
        }
        if let Some(keys) = report.keys {
            let events = self.keyed_events(&keys)?;
            let layout = self.cfg.shard_layout();
            let mut foreign = 0;
            for (key, event) in keys.into_iter().zip(events) {
                if layout.is_whole() || layout.owns(key.as_deref()) {
                    self.admit(key, event);
                } else {
                    foreign += 1;
                    self.lanes
                        .admit_passed(event.cursor.filter(|c| !c.is_empty()));
                }
            }
            Stats::add(&self.stats.events_foreign, foreign);
        }
        let failed_now = self.lanes.failed_events() - failed_before;
        let handled = (report.done.len() as u64).saturating_sub(failed_now);
        self.handled_total += handled;
        Stats::add(&self.stats.events_handled, handled);
        Stats::add(&self.stats.failed_events, failed_now);
        if let Some(c) = last_cursor {
            self.stats.set_last_cursor(&c);
        }
        self.store_lane_gauges();
        self.sync_watermark();
        Ok(())
    }

    /// One handler returned (concurrent mode), reported as soon as it returns rather than with
    /// the next [`Driver::next_action`]: applies it, then hands out the events that may start
    /// now (the lanes' rules decide, exactly as in `next_action`). While anything else is
    /// pending (a stop, a failed event to raise, skip hooks, keys to compute) it only applies
    /// the completion and starts nothing; `next_action` takes over. It never admits events
    /// from the buffer nor takes a snapshot: the owner still calls `next_action` afterwards
    /// for those.
    pub fn complete(&mut self, now: Instant, seq: u64) -> Result<Option<Action>> {
        self.report(
            now,
            Report {
                done: vec![seq],
                ..Report::default()
            },
        )?;
        let quiet = self.phase == Phase::Running
            && self.failed_seq.is_none()
            && self.pending_hooks.is_empty()
            && self.pending_keys.is_none()
            && !self.stop.is_cancelled();
        Ok(if quiet { self.start_now(now) } else { None })
    }

    /// Admits one event into its lane (dropped when a previous run completed it).
    fn admit(&mut self, key: Option<String>, event: Event) {
        let cursor = event.cursor.clone().filter(|c| !c.is_empty());
        if let Admitted::AlreadyDone(_) = self.lanes.admit(key, cursor, event) {
            self.sync_watermark();
        }
    }

    /// Shards, default key: admits the events of this shard (the key is read and hashed in
    /// Rust, usually already by the network thread: `Event::shard`); an event of another shard
    /// counts as done at once, so the watermark moves over it (docs/semantics.md, "Shards").
    fn admit_sharded(&mut self, batch: Vec<Event>) {
        let layout = self.cfg.shard_layout();
        let mut foreign = 0;
        for mut e in batch {
            let decided = match std::mem::take(&mut e.shard) {
                ShardMark::Own(key) => Some(key),
                ShardMark::Foreign => None,
                ShardMark::Undecided => layout.own_default_key(&e.kind, &e.data),
            };
            match decided {
                Some(key) => self.admit(key, e),
                None => {
                    foreign += 1;
                    self.lanes.admit_passed(e.cursor.filter(|c| !c.is_empty()));
                }
            }
        }
        if foreign > 0 {
            Stats::add(&self.stats.events_foreign, foreign);
            self.sync_watermark();
        }
    }

    /// Running, concurrent mode.
    pub(super) fn next_concurrent(&mut self, now: Instant) -> Action {
        if let Some(seq) = self.failed_seq.take() {
            self.abort();
            return Action::Failed(seq);
        }
        if let Some(a) = self.housekeeping(now) {
            return a;
        }
        if let Some(seq) = self.pending_hooks.pop_front() {
            return Action::OnFailure(seq);
        }
        if let Some(ev) = self.pending_signal.take() {
            return self.signal(ev);
        }
        // Admit what the lanes have room for (several buffer batches if need be), then start
        // what may start: one crossing admits and starts a whole batch.
        let mut signal = None;
        if self.pending_keys.is_none() {
            loop {
                let room = self.lanes.room();
                if room == 0 {
                    break;
                }
                match self.buffer.take(room.min(self.cfg.max_batch)) {
                    Taken::Events(batch) => {
                        if self.cfg.custom_key {
                            self.pending_keys = Some(batch.clone());
                            return Action::Keys(batch);
                        }
                        if self.cfg.shard_count > 1 {
                            self.admit_sharded(batch);
                            continue;
                        }
                        for e in batch {
                            let key = default_key(&e.kind, &e.data);
                            self.admit(key, e);
                        }
                    }
                    Taken::Signal(ev) => {
                        signal = Some(ev);
                        break;
                    }
                    Taken::Empty => break,
                    Taken::Ended(err) => return self.ended(now, err),
                }
            }
        }
        match self.start_now(now) {
            Some(start) => {
                self.pending_signal = signal;
                start
            }
            None => match signal {
                Some(ev) => self.signal(ev),
                None => Action::Wait(match self.lanes.next_deadline() {
                    Some(due) => due.min(self.next_flush),
                    None => self.next_flush,
                }),
            },
        }
    }

    /// The events that may start now, as one action.
    fn start_now(&mut self, now: Instant) -> Option<Action> {
        self.starts.clear();
        self.lanes.start_ready(now, &mut self.starts);
        if self.starts.is_empty() {
            return None;
        }
        self.stats
            .tasks_started(now, self.starts.iter().map(|s| s.seq));
        let mut out = Vec::with_capacity(self.starts.len());
        for s in &self.starts {
            if let Some(e) = self.lanes.item(s.seq) {
                out.push((s.seq, s.attempt, e.clone()));
            }
        }
        self.store_lane_gauges();
        Some(Action::Start(out))
    }

    /// Stopping, concurrent mode: wait for the handlers in flight (and skip hooks) up to the
    /// stop timeout, then cancel what is left; then the final flush and checkpoint.
    pub(super) fn next_draining(&mut self, now: Instant) -> Action {
        if let Some(seq) = self.failed_seq.take() {
            self.abort();
            return Action::Failed(seq);
        }
        if let Some(e) = self.writer.fatal_error() {
            return self.finish(Err(e));
        }
        if let Some(seq) = self.pending_hooks.pop_front() {
            return Action::OnFailure(seq);
        }
        if self.lanes.is_quiet() {
            // The final write gets its own budget.
            self.stop_deadline = Some(crate::backoff::deadline_after(now, self.cfg.stop_timeout));
            self.phase = Phase::FinalFlush;
            return self.next_action(now);
        }
        let until = self.drain_until.unwrap_or(now);
        if now >= until && !self.cancel_sent {
            self.cancel_sent = true;
            let seqs = self.lanes.in_flight_seqs();
            warn!(
                client_id = self.cfg.client_id.as_str();
                "client_id={}: {} handlers still running after stop_timeout {:.1}s: cancelling them (they are redone next run)",
                self.cfg.client_id,
                seqs.len(),
                self.cfg.stop_timeout.as_secs_f64()
            );
            return Action::Cancel(seqs);
        }
        if self.cancel_sent {
            // Everything in flight was cancelled; the owner reports the outcomes next.
            return Action::Wait(now + std::time::Duration::from_millis(10));
        }
        Action::Wait(until)
    }
}

use crate::model::{Event, ShardMark};
