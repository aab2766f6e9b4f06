//! The driver's sequential mode (the default): batches of events handed to the processor in
//! stream order ([`Action::Handle`], then [`Driver::handled`]).
//!
//! Events the processor must not see keep their place in the position: events a previous run
//! completed (stored above its watermark) and, with shards, events of other shards
//! (docs/semantics.md, "Shards"). A batch left empty by them costs no Python call: the
//! position moves over it and the next batch is taken at once. With one shard (the default)
//! nothing here reads a key.

use std::time::{Duration, Instant};

use super::{Action, Driver, Outstanding};
use crate::buffer::Taken;
use crate::error::{Error, Result};
use crate::model::{Event, ShardMark};

/// The longest a sharded loop waits without looking at the buffer (see
/// [`Driver::bound_quiet_wait`]).
pub(super) const QUIET_WAIT: Duration = Duration::from_millis(50);
use crate::stats::Stats;

/// What [`Driver::hand_out`] made of a batch.
enum HandOut {
    /// Something for the processor.
    Action(Action),
    /// Nothing: every event of the batch (this many) was left out; its position was taken.
    Nothing(usize),
}

impl Driver {
    /// Running, sequential mode.
    pub(super) fn next_sequential(&mut self, now: Instant) -> Action {
        if self.pending_keys.is_some() {
            return Action::Done(Err(Error::Invalid(
                "keys were asked for (Action.Keys) but not reported".into(),
            )));
        }
        // Events left out by this call without a Python call: past a buffer's worth, return
        // to the event loop once (a zero wait) so other tasks run.
        let mut left_out = 0usize;
        loop {
            if let Some(a) = self.housekeeping(now) {
                return a;
            }
            let out = match self.keyed.take() {
                Some((batch, owned)) => self.hand_out_owned(batch, owned),
                None => match self.buffer.take(self.cfg.max_batch) {
                    Taken::Events(batch) => self.hand_out(batch),
                    Taken::Signal(ev) => return self.signal(ev),
                    // Nothing to handle. If a write is due, one is in flight and its completion
                    // wakes us; otherwise the next event or the flush deadline does.
                    Taken::Empty => return Action::Wait(self.next_flush),
                    Taken::Ended(err) => return self.ended(now, err),
                },
            };
            match out {
                HandOut::Action(a) => return a,
                HandOut::Nothing(n) => {
                    left_out += n;
                    if left_out >= self.cfg.buffer_size {
                        return Action::Wait(now);
                    }
                }
            }
        }
    }

    /// The events of the last [`Action::Keys`], checked against the keys reported for them.
    pub(super) fn keyed_events(&mut self, keys: &[Option<String>]) -> Result<Vec<Event>> {
        let Some(events) = self.pending_keys.take() else {
            return Err(Error::Invalid(
                "keys reported but none were asked for".into(),
            ));
        };
        if keys.len() != events.len() {
            return Err(Error::Invalid(format!(
                "{} keys reported for {} events",
                keys.len(),
                events.len()
            )));
        }
        Ok(events)
    }

    /// Shards with the default key: other shards' events do not wake the processor's loop one
    /// by one (`crate::buffer`), so its waits are bounded by [`QUIET_WAIT`]: the watermark
    /// moves over events that arrived quietly within that time.
    pub(super) fn bound_quiet_wait(&self, now: Instant, action: Action) -> Action {
        match action {
            Action::Wait(deadline) if self.cfg.shard_count > 1 && !self.cfg.custom_key => {
                Action::Wait(deadline.min(crate::backoff::deadline_after(now, QUIET_WAIT)))
            }
            other => other,
        }
    }

    /// Hands a batch to the processor (the default path: the whole batch, no key read).
    fn hand_out(&mut self, batch: Vec<Event>) -> HandOut {
        if self.cfg.shard_count > 1 {
            if self.cfg.custom_key {
                // The processor's key() decides; the answer comes with the next report.
                self.pending_keys = Some(batch.clone());
                return HandOut::Action(Action::Keys(batch));
            }
            let layout = self.cfg.shard_layout();
            let owned = batch
                .iter()
                .map(|e| match e.shard {
                    // Decided by the network thread while the payload was in the cache.
                    ShardMark::Own(_) => true,
                    ShardMark::Foreign => false,
                    ShardMark::Undecided => layout.owns_event(&e.kind, &e.data),
                })
                .collect();
            return self.hand_out_owned(batch, owned);
        }
        if !self.lanes.has_carried() {
            let last = batch
                .iter()
                .rev()
                .find_map(|e| e.cursor.as_ref().filter(|c| !c.is_empty()).cloned());
            self.outstanding = Some((batch.len(), self.batch_started(), Outstanding::Last(last)));
            return HandOut::Action(Action::Handle(batch));
        }
        let owned = vec![true; batch.len()];
        self.hand_out_owned(batch, owned)
    }

    /// Hands out the events of `batch` this shard owns (`owned`, one per event) that no
    /// previous run completed; the others keep their place in the position.
    fn hand_out_owned(&mut self, batch: Vec<Event>, owned: Vec<bool>) -> HandOut {
        let carried = self.lanes.has_carried();
        let total = batch.len();
        let cursor_of = |e: &Event| e.cursor.as_ref().filter(|c| !c.is_empty()).cloned();
        // One copy of the batch's last cursor (or, with loaded completed events, of each).
        let (last, cursors): (Option<String>, Vec<Option<String>>) = if carried {
            (None, batch.iter().map(cursor_of).collect())
        } else {
            (batch.iter().rev().find_map(cursor_of), Vec::new())
        };
        let mut foreign = 0u64;
        let lanes = &self.lanes;
        let kept: Vec<Event> = batch
            .into_iter()
            .zip(owned)
            .filter_map(|(e, own)| {
                if !own {
                    foreign += 1;
                    return None;
                }
                let done_before = carried
                    && e.cursor
                        .as_deref()
                        .is_some_and(|c| !c.is_empty() && lanes.is_loaded_completed(c));
                (!done_before).then_some(e)
            })
            .collect();
        let last_handled = kept.iter().rev().find_map(cursor_of);
        if foreign > 0 {
            Stats::add(&self.stats.events_foreign, foreign);
        }
        if kept.is_empty() {
            if carried {
                for c in cursors {
                    self.lanes.admit_done(c);
                }
            } else if last.is_some() {
                self.lanes.admit_done(last);
            }
            self.sync_watermark();
            return HandOut::Nothing(total);
        }
        let position = if carried {
            Outstanding::All(cursors)
        } else {
            Outstanding::Shard(last_handled, last)
        };
        self.outstanding = Some((kept.len(), self.batch_started(), position));
        HandOut::Action(Action::Handle(kept))
    }

    /// Sequential mode: the keys of the batch handed out by the last [`Action::Keys`] (shards
    /// with a custom `key()`); the owned events are handed out next.
    pub(super) fn sequential_keys(&mut self, keys: Option<Vec<Option<String>>>) -> Result<()> {
        let Some(keys) = keys else {
            return Err(Error::Invalid(
                "report() is only used when events run concurrently".into(),
            ));
        };
        let events = self.keyed_events(&keys)?;
        let layout = self.cfg.shard_layout();
        let owned = keys.iter().map(|k| layout.owns(k.as_deref())).collect();
        self.keyed = Some((events, owned));
        Ok(())
    }
}
