//! Keyed concurrency bookkeeping (sans-IO, deterministic): which admitted events may start,
//! the contiguous watermark the checkpoint may cover, the completed set above it, retries
//! with backoff, and stop.
//!
//! The owner (the driver) admits events in stream order, each with a lane key and a cursor,
//! asks [`Lanes::start_ready`] for the events to start, and reports each start's outcome with
//! [`Lanes::completed`], [`Lanes::failed`] or [`Lanes::cancelled`]. Time is passed in, jitter
//! comes from a seeded generator: the same calls give the same answers.
//!
//! Rules:
//! - Per key, events start in stream order and never overlap; a key's event waiting for its
//!   retry holds back the later events of that key; other keys go on. `None` is one shared
//!   lane.
//! - At most `max_concurrency` events are in flight (a retry waiting for its delay is not).
//! - The completed set is bounded by [`LanesConfig::completed_limit`]
//!   (`max(64, 4 · max_concurrency)`): let `C` be the completed events above the watermark
//!   (including loaded ones not yet seen again) and `F` the started, unfinished events other
//!   than the head (the oldest unfinished event). A new event other than the head starts only
//!   while `C + F < limit`; every such event can add at most one to `C`, so `C ≤ limit` at
//!   all times once `C + F ≤ limit` holds (it holds from the start unless a checkpoint written
//!   with a larger limit was loaded; starts then wait until it holds). The head is exempt:
//!   its completion moves the watermark and never grows the set, so the run cannot deadlock.
//!   Retries of started events are exempt too (they are already counted in `F`). Events
//!   admitted as done add to `C` without starting, so [`Lanes::room`] also stops admission at
//!   the bound: the caller admits at most `room()` events before asking again. Events passed
//!   over ([`Lanes::admit_passed`]: another shard's) are done without being recorded: they
//!   move the watermark but never add to `C`.
//! - The watermark is the cursor of the last event of the completed prefix; events without a
//!   cursor complete like the others but never move it (nor enter the completed set).
//! - After a `stop` outcome (last try failed, `on_failure = stop`) the failed event never
//!   completes, so the watermark never passes it, and nothing more starts.
//! - After [`Lanes::stop`] nothing more starts; events cancelled in flight stay unfinished
//!   (redone on the next run).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::Instant;

use crate::error::{Error, Result};

pub mod checkpoint;
pub mod retry;
mod types;

use retry::{retry_delay, SplitMix64};
pub use types::{Admitted, Failure, LanesConfig, LanesStats, OnFailure, Start};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Not running: never started, or a retry whose delay has passed (`tries > 0`).
    Pending,
    InFlight,
    RetryWait,
    /// Last try failed with `skip`: waiting for the hook to run.
    Failing,
    /// Last try failed with `stop`: never completes.
    Failed,
    /// In flight when cancelled by a stop: never completes in this run.
    Cancelled,
    Done,
    /// Done without ever being this run's to handle (another shard's event): moves the
    /// watermark like `Done`, but is neither recorded in the completed set nor counted
    /// against its bound (a restart reads it again and passes it again).
    Passed,
}

struct Slot<T> {
    key: Option<String>,
    cursor: Option<String>,
    state: State,
    tries: u32,
    item: Option<T>,
    /// When the current try started (for the handler-duration stats).
    started: Option<Instant>,
}

/// The bookkeeping. `T` is whatever the owner wants kept with an event until it is done
/// (the event itself, or nothing).
pub struct Lanes<T> {
    cfg: LanesConfig,
    limit: usize,
    rng: SplitMix64,
    /// Admitted events above the watermark; `window[0]` has sequence number `base`, and is
    /// never done (done events at the front are popped as the watermark moves).
    window: VecDeque<Slot<T>>,
    base: u64,
    /// Unfinished events per key, in stream order (the front is the one that may run).
    lanes: HashMap<String, VecDeque<u64>>,
    shared: VecDeque<u64>,
    /// Lane fronts that may start now: new ones, and retries whose delay passed.
    ready_new: BTreeSet<u64>,
    ready_retry: BTreeSet<u64>,
    /// Retries waiting for their delay.
    waiting: BTreeSet<(Instant, u64)>,
    /// Loaded completed cursors not admitted yet, with their stored order.
    carried: HashMap<String, usize>,
    watermark: Option<String>,
    in_flight: usize,
    /// Started and unfinished (in flight, waiting or ready for a retry, failing).
    started_open: usize,
    done_above: usize,
    /// Events of the window passed over ([`Lanes::admit_passed`]).
    passed_above: usize,
    /// Events waiting for their skip hook.
    failing: usize,
    retries: u64,
    failed_events: u64,
    stopped: bool,
    halted: bool,
}

impl<T> Lanes<T> {
    /// New, empty bookkeeping; `seed` feeds the retry jitter.
    pub fn new(cfg: LanesConfig, seed: u64) -> Result<Lanes<T>> {
        cfg.validate()?;
        Ok(Lanes {
            limit: cfg.completed_limit(),
            cfg,
            rng: SplitMix64::new(seed),
            window: VecDeque::new(),
            base: 0,
            lanes: HashMap::new(),
            shared: VecDeque::new(),
            ready_new: BTreeSet::new(),
            ready_retry: BTreeSet::new(),
            waiting: BTreeSet::new(),
            carried: HashMap::new(),
            watermark: None,
            in_flight: 0,
            started_open: 0,
            done_above: 0,
            passed_above: 0,
            failing: 0,
            retries: 0,
            failed_events: 0,
            stopped: false,
            halted: false,
        })
    }

    pub fn config(&self) -> &LanesConfig {
        &self.cfg
    }

    /// Restores the position of a loaded checkpoint: resume after `watermark`; the events
    /// whose cursors are in `completed` count as done when admitted. Only before admission.
    pub fn load(&mut self, watermark: Option<String>, completed: Vec<String>) -> Result<()> {
        if !self.window.is_empty() || self.base != 0 {
            return Err(Error::Invalid(
                "a checkpoint position can only be loaded before the first event".into(),
            ));
        }
        self.watermark = watermark;
        self.carried.clear();
        for (i, c) in completed.into_iter().enumerate() {
            self.carried.entry(c).or_insert(i);
        }
        Ok(())
    }

    /// Forgets the loaded completed cursors not seen yet: for when the stream was moved to
    /// another position (stale-cursor policy `restart` or `tail`), so they will not come.
    pub fn discard_carried(&mut self) {
        self.carried.clear();
    }

    /// How many events the caller may admit now (then ask again): bounded by the window, and
    /// by the completed-set bound, since each event admitted as done adds one to `C`. While
    /// the window is empty at least one is allowed, so a run whose loaded completed set is
    /// over the bound still advances (one event at a time until it is back under).
    pub fn room(&self) -> usize {
        let window_room = self.cfg.max_window.saturating_sub(self.window.len());
        let free = self
            .limit
            .saturating_sub(self.completed_count() + self.open_not_head());
        let bound_room = if self.window.is_empty() {
            free.max(1)
        } else {
            free
        };
        window_room.min(bound_room)
    }

    /// True while loaded completed cursors wait to be seen again.
    pub fn has_carried(&self) -> bool {
        !self.carried.is_empty()
    }

    /// True when the cursor is in the loaded completed set and not admitted yet; admitting it
    /// (with [`Lanes::admit`] or [`Lanes::admit_done`]) consumes it.
    pub fn is_loaded_completed(&self, cursor: &str) -> bool {
        self.carried.contains_key(cursor)
    }

    /// Admits the next event of the stream. An event whose cursor is in the loaded completed
    /// set counts as done at once ([`Admitted::AlreadyDone`]; `item` is dropped).
    pub fn admit(&mut self, key: Option<String>, cursor: Option<String>, item: T) -> Admitted {
        if let Some(c) = &cursor {
            if self.carried.contains_key(c.as_str()) {
                return Admitted::AlreadyDone(self.admit_done(cursor));
            }
        }
        let seq = self.base + self.window.len() as u64;
        let lane = match &key {
            None => &mut self.shared,
            Some(k) => match self.lanes.get_mut(k.as_str()) {
                Some(l) => l,
                None => self.lanes.entry(k.clone()).or_default(),
            },
        };
        lane.push_back(seq);
        if lane.len() == 1 {
            self.ready_new.insert(seq);
        }
        self.window.push_back(Slot {
            key,
            cursor,
            state: State::Pending,
            tries: 0,
            item: Some(item),
            started: None,
        });
        Admitted::Queued(seq)
    }

    /// Admits the next event of the stream as done already: one the processor never sees
    /// (a filtered event, one completed before a restart). It moves the watermark when the
    /// prefix before it is done. Stream signals need not be admitted at all; if they are,
    /// pass `None` as the cursor so the watermark stays the last handled event's.
    pub fn admit_done(&mut self, cursor: Option<String>) -> u64 {
        self.push_done(cursor, State::Done)
    }

    /// Admits the next event of the stream as one this run passes over without handling it
    /// (an event of another shard): done at once, so the watermark moves over it when the
    /// prefix before it is done, but it is not recorded in the completed set above the
    /// watermark and does not count against that set's bound. Only the window
    /// (`max_window`) bounds how many wait behind an unfinished event.
    pub fn admit_passed(&mut self, cursor: Option<String>) -> u64 {
        self.push_done(cursor, State::Passed)
    }

    /// Appends an event that is `Done` or `Passed` from the start, then moves the watermark.
    fn push_done(&mut self, cursor: Option<String>, state: State) -> u64 {
        let seq = self.base + self.window.len() as u64;
        if let Some(c) = &cursor {
            self.carried.remove(c.as_str());
        }
        self.window.push_back(Slot {
            key: None,
            cursor,
            state,
            tries: 0,
            item: None,
            started: None,
        });
        if state == State::Passed {
            self.passed_above += 1;
        } else {
            self.done_above += 1;
        }
        self.advance();
        seq
    }

    /// The item kept with an unfinished event.
    pub fn item(&self, seq: u64) -> Option<&T> {
        self.slot(seq).and_then(|s| s.item.as_ref())
    }

    /// When the try in flight of `seq` started (`None` unless it is in flight).
    pub fn started_at(&self, seq: u64) -> Option<Instant> {
        self.slot(seq)
            .filter(|s| s.state == State::InFlight)
            .and_then(|s| s.started)
    }

    /// Handlers in progress.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Events given up on and skipped after their last try, so far.
    pub fn failed_events(&self) -> u64 {
        self.failed_events
    }

    /// Admitted events not done yet (every slot of the window that is not done).
    pub fn unfinished(&self) -> usize {
        self.window.len() - self.done_above - self.passed_above
    }

    fn index(&self, seq: u64) -> Option<usize> {
        let i = usize::try_from(seq.checked_sub(self.base)?).ok()?;
        (i < self.window.len()).then_some(i)
    }

    fn slot(&self, seq: u64) -> Option<&Slot<T>> {
        self.window.get(self.index(seq)?)
    }

    /// Started, unfinished events other than the head.
    fn open_not_head(&self) -> usize {
        let head_open = self
            .window
            .front()
            .is_some_and(|s| s.tries > 0 && !matches!(s.state, State::Done | State::Passed));
        self.started_open - usize::from(head_open)
    }

    fn completed_count(&self) -> usize {
        self.done_above + self.carried.len()
    }

    /// Moves retries whose delay has passed to the ready set.
    fn promote_due(&mut self, now: Instant) {
        while let Some(&(due, seq)) = self.waiting.first() {
            if due > now {
                break;
            }
            self.waiting.pop_first();
            if let Some(i) = self.index(seq) {
                if self.window[i].state == State::RetryWait {
                    self.window[i].state = State::Pending;
                    self.ready_retry.insert(seq);
                }
            }
        }
    }

    /// The events to start now, in stream order, appended to `out`: lane fronts that are
    /// new or whose retry is due, while fewer than `max_concurrency` are in flight and the
    /// completed-set bound allows (see the module doc). Nothing after a stop.
    pub fn start_ready(&mut self, now: Instant, out: &mut Vec<Start>) {
        if self.stopped || self.halted {
            return;
        }
        self.promote_due(now);
        let mut new_blocked = false;
        while self.in_flight < self.cfg.max_concurrency {
            let new = if new_blocked {
                None
            } else {
                self.ready_new.first().copied()
            };
            let retry = self.ready_retry.first().copied();
            let seq = match (new, retry) {
                (Some(n), Some(r)) if r < n => r,
                (Some(n), _) => {
                    if n != self.base && self.completed_count() + self.open_not_head() >= self.limit
                    {
                        new_blocked = true;
                        continue;
                    }
                    n
                }
                (None, Some(r)) => r,
                (None, None) => break,
            };
            self.ready_new.remove(&seq);
            self.ready_retry.remove(&seq);
            let Some(i) = self.index(seq) else { continue };
            let slot = &mut self.window[i];
            if slot.tries == 0 {
                self.started_open += 1;
            }
            slot.tries += 1;
            slot.state = State::InFlight;
            slot.started = Some(now);
            self.in_flight += 1;
            out.push(Start {
                seq,
                attempt: slot.tries,
            });
        }
    }

    fn expect(&self, seq: u64, states: &[State], what: &str) -> Result<usize> {
        match self.index(seq) {
            Some(i) if states.contains(&self.window[i].state) => Ok(i),
            Some(i) => Err(Error::Invalid(format!(
                "event #{seq} reported {what} while {:?}",
                self.window[i].state
            ))),
            None => Err(Error::Invalid(format!(
                "event #{seq} reported {what} but it is not an open event"
            ))),
        }
    }

    /// The event finished (its handler returned; or, after [`Failure::Skip`], its
    /// `on_failure` hook returned). Reports may come in any order.
    pub fn completed(&mut self, seq: u64) -> Result<()> {
        let i = self.expect(seq, &[State::InFlight, State::Failing], "completed")?;
        let slot = &mut self.window[i];
        if slot.state == State::InFlight {
            self.in_flight -= 1;
        } else {
            self.failing -= 1;
            self.failed_events += 1;
        }
        slot.state = State::Done;
        slot.item = None;
        let key = slot.key.take();
        self.started_open -= 1;
        self.done_above += 1;
        self.pop_lane(key, seq)?;
        self.advance();
        Ok(())
    }

    /// Removes `seq` (the lane's front) from its lane; the next event of the lane may start.
    fn pop_lane(&mut self, key: Option<String>, seq: u64) -> Result<()> {
        let lane = match &key {
            None => Some(&mut self.shared),
            Some(k) => self.lanes.get_mut(k.as_str()),
        };
        let Some(lane) = lane else {
            return Err(Error::Invalid(format!("event #{seq} has no lane")));
        };
        if lane.front() != Some(&seq) {
            return Err(Error::Invalid(format!(
                "event #{seq} finished but is not its lane's front"
            )));
        }
        lane.pop_front();
        match lane.front().copied() {
            Some(next) => {
                self.ready_new.insert(next);
            }
            None => {
                if let Some(k) = key {
                    self.lanes.remove(k.as_str());
                }
            }
        }
        Ok(())
    }

    /// Pops the done prefix of the window, moving the watermark.
    fn advance(&mut self) {
        while self
            .window
            .front()
            .is_some_and(|s| matches!(s.state, State::Done | State::Passed))
        {
            if let Some(slot) = self.window.pop_front() {
                self.base += 1;
                if slot.state == State::Passed {
                    self.passed_above -= 1;
                } else {
                    self.done_above -= 1;
                }
                if slot.cursor.is_some() {
                    self.watermark = slot.cursor;
                }
            }
        }
    }

    /// The event's try failed. Schedules a retry (jittered backoff from `now`), or says
    /// what to do after the last try.
    pub fn failed(&mut self, seq: u64, now: Instant) -> Result<Failure> {
        let i = self.expect(seq, &[State::InFlight], "failed")?;
        self.in_flight -= 1;
        let tries = self.window[i].tries;
        if tries < self.cfg.max_attempts {
            let unit = self.rng.next_f64();
            let due = now + retry_delay(self.cfg.retry_min, self.cfg.retry_max, tries, unit);
            self.window[i].state = State::RetryWait;
            self.waiting.insert((due, seq));
            self.retries += 1;
            return Ok(Failure::Retry {
                attempt: tries + 1,
                due,
            });
        }
        match self.cfg.on_failure {
            OnFailure::Skip => {
                self.window[i].state = State::Failing;
                self.failing += 1;
                Ok(Failure::Skip)
            }
            OnFailure::Stop => {
                self.window[i].state = State::Failed;
                self.halted = true;
                Ok(Failure::Stop)
            }
        }
    }

    /// The event's handler was cancelled (stop timeout): it stays unfinished, so the
    /// watermark never passes it and the next run redoes it.
    pub fn cancelled(&mut self, seq: u64) -> Result<()> {
        let i = self.expect(seq, &[State::InFlight], "cancelled")?;
        self.in_flight -= 1;
        self.window[i].state = State::Cancelled;
        Ok(())
    }

    /// Starts nothing more. Returns the events in flight (to await up to the stop timeout,
    /// then cancel and report with [`Lanes::cancelled`]).
    pub fn stop(&mut self) -> Vec<u64> {
        self.stopped = true;
        self.in_flight_seqs()
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// True after a [`Failure::Stop`].
    pub fn is_halted(&self) -> bool {
        self.halted
    }

    /// The events in flight, in stream order.
    pub fn in_flight_seqs(&self) -> Vec<u64> {
        (self.base..)
            .zip(self.window.iter())
            .filter(|(_, s)| s.state == State::InFlight)
            .map(|(seq, _)| seq)
            .collect()
    }

    /// Nothing in flight and no skip hook outstanding.
    pub fn is_quiet(&self) -> bool {
        self.in_flight == 0 && self.failing == 0
    }

    /// The earliest instant a waiting retry becomes due (`None`: none waiting, or stopped).
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.stopped || self.halted {
            return None;
        }
        self.waiting.first().map(|&(due, _)| due)
    }

    /// The cursor of the last event of the completed prefix (the resume position).
    pub fn watermark(&self) -> Option<&str> {
        self.watermark.as_deref()
    }

    /// The cursors completed above the watermark, in stream order, without duplicates:
    /// those admitted in this run, then the loaded ones not seen again yet.
    pub fn completed_above_watermark(&self) -> Vec<String> {
        let mut seen = std::collections::HashSet::new();
        let mut out: Vec<String> = self
            .window
            .iter()
            .filter(|s| s.state == State::Done)
            .filter_map(|s| s.cursor.as_deref())
            .filter(|c| seen.insert(*c))
            .map(str::to_string)
            .collect();
        let mut carried: Vec<(&String, &usize)> = self.carried.iter().collect();
        carried.sort_by_key(|(_, i)| **i);
        out.extend(
            carried
                .into_iter()
                .filter(|(c, _)| seen.insert(c.as_str()))
                .map(|(c, _)| c.clone()),
        );
        out
    }

    /// The position to store with a snapshot taken now.
    pub fn position(&self) -> checkpoint::StoredPosition {
        checkpoint::StoredPosition {
            watermark: self.watermark.clone(),
            completed: self.completed_above_watermark(),
        }
    }

    pub fn stats(&self) -> LanesStats {
        LanesStats {
            in_flight: self.in_flight,
            retries: self.retries,
            failed_events: self.failed_events,
            watermark: self.watermark.clone(),
            completed_above: self.completed_count(),
            window: self.window.len(),
            waiting_retry: self.waiting.len(),
            unfinished: self.unfinished(),
        }
    }
}

#[cfg(test)]
mod sim_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod throughput_tests;
