//! The processor side of the loop as a state machine (sans-IO): it decides what the processor
//! must do next (handle a batch, flush, take a snapshot, wait, stop) and when a checkpoint is
//! due. Whoever owns the processor (the Python bridge, or a Rust test) executes the actions and
//! reports back. The network side runs in [`crate::stream_loop`], the writes in
//! [`crate::checkpoint_writer`].
//!
//! Two modes, chosen once from the configuration ([`LoopConfig::concurrent`]):
//! - sequential (the default: `max_concurrency = 1`, no retries, `on_failure = stop`): batches
//!   of events handled in stream order ([`Action::Handle`], then [`Driver::handled`]);
//! - concurrent (keyed lanes, retries or skip, see `driver_concurrent.rs`): events started as
//!   tasks ([`Action::Start`]), their outcomes reported in batches ([`Driver::report`]).
//!
//! In both, the stored `lastEventCursor` is the runtime's contiguous watermark (every event at
//! or before it completed), and the events completed above it are stored as
//! `completedAboveWatermark` (only when there are any): see `crate::lanes::checkpoint`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{info, warn};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::buffer::Buffer;
use crate::checkpoint_writer::CheckpointWriter;
use crate::error::{Error, Result};
use crate::lanes::Lanes;
use crate::model::{stored_position, Checkpoint, CheckpointClient, Event, EventClient, LoopConfig};
use crate::stats::Stats;
use crate::wake::Wake;

/// What the processor must do next.
#[derive(Debug)]
pub enum Action {
    /// Call `handle` on each event in order, then [`Driver::handled`].
    Handle(Vec<Event>),
    /// A connection-level signal for the optional `on_stream_event` hook (never `handle`).
    Signal(Event),
    /// Call `flush`, then [`Driver::flushed`].
    Flush,
    /// Call `snapshot`, then [`Driver::submit_snapshot`] with its JSON text.
    Snapshot,
    /// Nothing to do: wait for [`Driver::waker`] or until the instant, then ask again.
    Wait(Instant),
    /// Stopping: wait (bounded) for the last checkpoint write, then ask again.
    WaitWriter(Instant),
    /// The run is over: `Ok` after a stop, or the error that ended it.
    Done(Result<()>),
    /// Concurrent mode, custom `key()`: compute the key of each event, in order, and pass them
    /// to the next [`Driver::report`].
    Keys(Vec<Event>),
    /// Concurrent mode: start one task per `(seq, attempt, event)`; report each outcome under
    /// its `seq` with [`Driver::report`].
    Start(Vec<(u64, u32, Event)>),
    /// Concurrent mode, `on_failure = skip`: call the processor's `on_failure` hook for `seq`
    /// (with the error of its last try), then report `seq` done.
    OnFailure(u64),
    /// Concurrent mode, stop timeout passed: cancel these tasks, await them, and report each
    /// as done (it finished anyway) or cancelled.
    Cancel(Vec<u64>),
    /// Concurrent mode, `on_failure = stop`: event `seq` failed its last try. The run is over
    /// (nothing more is written): raise that event's error.
    Failed(u64),
}

/// The cursors of the batch handed out by the last [`Action::Handle`].
enum Outstanding {
    /// The last usable cursor of the batch (no loaded completed cursors to skip).
    Last(Option<String>),
    /// Every event's cursor in stream order, including events skipped because a previous run
    /// completed them (or because they belong to another shard).
    All(Vec<Option<String>>),
    /// Shards: the last handled cursor, and the last cursor of the batch (maybe foreign).
    Shard(Option<String>, Option<String>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Created,
    Running,
    /// Concurrent mode, stopping: nothing new starts; handlers in flight get until `until`.
    Draining,
    FinalFlush,
    FinalSnapshot,
    FinalWait,
    Done,
}

/// Handle to stop a run from any thread.
#[derive(Clone)]
pub struct StopHandle {
    token: CancellationToken,
    wake: Arc<Wake>,
}

impl StopHandle {
    /// Asks the run to finish the batch in hand, flush, write a final checkpoint and return.
    /// Idempotent.
    pub fn stop(&self) {
        self.token.cancel();
        self.wake.wake();
    }

    pub fn is_stopped(&self) -> bool {
        self.token.is_cancelled()
    }
}

pub struct Driver {
    cfg: Arc<LoopConfig>,
    events: Arc<dyn EventClient>,
    checkpoints: Arc<dyn CheckpointClient>,
    content_type: String,
    runtime: tokio::runtime::Handle,
    pub stats: Arc<Stats>,
    wake: Arc<Wake>,
    stop: CancellationToken,
    producer_cancel: CancellationToken,
    buffer: Arc<Buffer>,
    writer: Arc<CheckpointWriter>,
    phase: Phase,
    handled_total: u64,
    handled_at_snapshot: u64,
    snapshot_wanted: bool,
    last_saved: Option<String>,
    next_flush: Instant,
    outstanding: Option<(usize, Instant, Outstanding)>,
    stop_deadline: Option<Instant>,
    ending_error: Option<Error>,
    /// Watermark, completed set, lanes (both modes; only the watermark in sequential mode).
    lanes: Lanes<Event>,
    concurrent: bool,
    /// The stats' copy of the watermark is refreshed when this differs.
    stats_watermark: Option<String>,
    /// The last snapshot text the processor gave and the position stored with it.
    last_snapshot: Option<(String, Option<String>, Vec<String>)>,
    /// A `phase=live` signal was handed out (the loaded completed cursors not seen by then
    /// will not come).
    seen_live: bool,
    // Concurrent mode.
    pending_keys: Option<Vec<Event>>,
    /// Sequential mode, shards with a custom `key()`: a batch whose keys came back, with
    /// which of its events this shard owns.
    keyed: Option<(Vec<Event>, Vec<bool>)>,
    pending_hooks: std::collections::VecDeque<u64>,
    pending_signal: Option<Event>,
    failed_seq: Option<u64>,
    drain_until: Option<Instant>,
    cancel_sent: bool,
    starts: Vec<crate::lanes::Start>,
}

impl Driver {
    pub fn new(
        cfg: LoopConfig,
        events: Arc<dyn EventClient>,
        checkpoints: Arc<dyn CheckpointClient>,
        content_type: String,
        runtime: tokio::runtime::Handle,
    ) -> Result<Driver> {
        cfg.validate()?;
        let lanes = Lanes::new(cfg.lanes_config(), rand::random())?;
        let concurrent = cfg.concurrent();
        let cfg = Arc::new(cfg);
        let stats = Arc::new(Stats::default());
        let wake = Arc::new(Wake::new());
        let buffer = Arc::new(Buffer::with_byte_budget(
            cfg.buffer_size,
            cfg.buffer_bytes,
            wake.clone(),
        ));
        let writer = CheckpointWriter::new(
            checkpoints.clone(),
            &cfg,
            content_type.clone(),
            wake.clone(),
            stats.clone(),
            runtime.clone(),
        );
        Ok(Driver {
            next_flush: crate::backoff::deadline_after(Instant::now(), cfg.checkpoint_interval),
            cfg,
            events,
            checkpoints,
            content_type,
            runtime,
            stats,
            wake,
            stop: CancellationToken::new(),
            producer_cancel: CancellationToken::new(),
            buffer,
            writer,
            phase: Phase::Created,
            handled_total: 0,
            handled_at_snapshot: 0,
            snapshot_wanted: false,
            last_saved: None,
            outstanding: None,
            stop_deadline: None,
            ending_error: None,
            lanes,
            concurrent,
            stats_watermark: None,
            last_snapshot: None,
            seen_live: false,
            pending_keys: None,
            keyed: None,
            pending_hooks: std::collections::VecDeque::new(),
            pending_signal: None,
            failed_seq: None,
            drain_until: None,
            cancel_sent: false,
            starts: Vec::new(),
        })
    }

    pub fn config(&self) -> &LoopConfig {
        &self.cfg
    }

    pub fn stop_handle(&self) -> StopHandle {
        StopHandle {
            token: self.stop.clone(),
            wake: self.wake.clone(),
        }
    }

    /// The notifier that ends a [`Action::Wait`] / [`Action::WaitWriter`] early.
    pub fn waker(&self) -> Arc<Wake> {
        self.wake.clone()
    }

    pub fn buffer_depth(&self) -> usize {
        self.buffer.len()
    }

    /// Loading the checkpoint, as a future that owns what it needs (no borrow of the driver):
    /// fetch the checkpoint, retrying transient errors with backoff; `None` on a first run;
    /// a content-type mismatch is an error.
    pub fn load_future(
        &self,
    ) -> impl std::future::Future<Output = Result<Option<Checkpoint>>> + Send + 'static {
        let store = self.checkpoints.clone();
        let cfg = self.cfg.clone();
        let want = self.content_type.clone();
        let stop = self.stop.clone();
        async move {
            let mut backoff = Backoff::new(cfg.reconnect_min, cfg.reconnect_max);
            loop {
                match store.get(&cfg.client_id).await {
                    Ok(cp) => {
                        if !cp.content_type.is_empty() && cp.content_type != want {
                            return Err(Error::ContentTypeMismatch {
                                got: cp.content_type,
                                want,
                            });
                        }
                        // A stored position that cannot be read, or one of another shard
                        // layout, fails here, before the processor loads the state.
                        stored_position(&cfg.client_id, &cp.value)?;
                        cfg.shard_layout().check_stored(&cfg.client_id, &cp.value)?;
                        return Ok(Some(cp));
                    }
                    Err(Error::CheckpointNotFound(_)) => return Ok(None),
                    Err(e) if crate::jsonvalue::is_decode_failure(&e.to_string()) => {
                        return Err(crate::checkpoint_writer::undecodable(&cfg.client_id, &e))
                    }
                    Err(e) if e.is_transient() => {
                        let delay = backoff.next_delay();
                        warn!(
                            client_id = cfg.client_id.as_str(), attempt = backoff.attempts();
                            "loading checkpoint failed client_id={} (attempt {}), retrying in {:.3}s: {e}",
                            cfg.client_id,
                            backoff.attempts(),
                            delay.as_secs_f64()
                        );
                        tokio::select! {
                            _ = tokio::time::sleep(delay) => {}
                            _ = stop.cancelled() => return Err(e),
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
        }
    }

    /// Starts the network side. `loaded` is the checkpoint the processor was loaded from
    /// (its JSON text is remembered so an unchanged snapshot is not written again).
    pub fn start(&mut self, loaded: Option<&Checkpoint>) -> Result<()> {
        if self.phase != Phase::Created {
            return Err(Error::Invalid("the loop was already started".into()));
        }
        let start_cursor = match loaded {
            Some(cp) => {
                self.last_saved = serde_json::to_string(&cp.value).ok();
                let pos = stored_position(&self.cfg.client_id, &cp.value)?;
                if !pos.completed.is_empty() {
                    info!(
                        client_id = self.cfg.client_id.as_str();
                        "client_id={}: {} events after the checkpoint cursor completed before the restart; they are skipped",
                        self.cfg.client_id,
                        pos.completed.len()
                    );
                }
                self.lanes.load(pos.watermark.clone(), pos.completed)?;
                self.stats_watermark.clone_from(&pos.watermark);
                self.stats.set_watermark(pos.watermark.as_deref());
                match pos.watermark {
                    Some(c) => {
                        info!(
                            client_id = self.cfg.client_id.as_str(), cursor = c.as_str();
                            "resuming client_id={} after checkpoint cursor {c}",
                            self.cfg.client_id
                        );
                        Some(c)
                    }
                    None => {
                        if self.cfg.after_cursor.is_none() {
                            warn!(
                                client_id = self.cfg.client_id.as_str();
                                "the checkpoint of client_id={} has no lastEventCursor and after_cursor is the live tail: events published while the processor was down are not replayed",
                                self.cfg.client_id
                            );
                        }
                        self.cfg.after_cursor.clone()
                    }
                }
            }
            None => {
                info!(
                    client_id = self.cfg.client_id.as_str(),
                    after_cursor = self.cfg.after_cursor.as_deref().unwrap_or_default();
                    "no checkpoint for client_id={}: first run from {}",
                    self.cfg.client_id,
                    self.cfg.after_cursor.as_deref().unwrap_or("<tail>")
                );
                self.cfg.after_cursor.clone()
            }
        };
        self.writer.expect(loaded.map(|cp| &cp.value));
        self.phase = Phase::Running;
        self.next_flush =
            crate::backoff::deadline_after(Instant::now(), self.cfg.checkpoint_interval);
        let fut = crate::stream_loop::run(
            self.events.clone(),
            self.cfg.clone(),
            start_cursor,
            self.buffer.clone(),
            self.stats.clone(),
            self.producer_cancel.clone(),
        );
        self.runtime.spawn(fut);
        Ok(())
    }

    fn write_due(&self) -> bool {
        self.snapshot_wanted
            || self.handled_total - self.handled_at_snapshot >= self.cfg.checkpoint_every
    }

    fn begin_stop(&mut self, now: Instant) {
        self.producer_cancel.cancel();
        self.writer.verify_before_next_write();
        self.stop_deadline = Some(crate::backoff::deadline_after(now, self.cfg.stop_timeout));
        if self.concurrent {
            self.lanes.stop();
            self.drain_until = Some(crate::backoff::deadline_after(now, self.cfg.stop_timeout));
            self.phase = Phase::Draining;
        } else {
            self.phase = Phase::FinalFlush;
        }
    }

    /// Running, both modes: a fatal write error, a stop, a due flush or snapshot.
    fn housekeeping(&mut self, now: Instant) -> Option<Action> {
        if let Some(e) = self.writer.fatal_error() {
            return Some(self.finish(Err(e)));
        }
        if self.stop.is_cancelled() {
            info!(
                client_id = self.cfg.client_id.as_str();
                "stopping client_id={}: final flush and checkpoint",
                self.cfg.client_id
            );
            self.begin_stop(now);
            return Some(self.next_action(now));
        }
        if now >= self.next_flush {
            // The next interval counts from the end of this flush (see `flushed`).
            self.next_flush = now + Duration::from_secs(86400 * 366);
            self.snapshot_wanted = true;
            return Some(Action::Flush);
        }
        if self.write_due() && self.writer.is_idle() {
            return Some(Action::Snapshot);
        }
        None
    }

    /// A signal taken from the buffer: count it; the first `phase=live` signal means the
    /// replay is over, so loaded completed cursors not seen by now will not come.
    fn signal(&mut self, ev: Event) -> Action {
        Stats::add(&self.stats.stream_signals, 1);
        if !self.seen_live && ev.event == "phase" && ev.phase().as_deref() == Some("live") {
            self.seen_live = true;
            self.lanes.discard_carried();
        }
        Action::Signal(ev)
    }

    /// The buffer ended by itself: keep what was handled (final flush + checkpoint), then
    /// report the error.
    fn ended(&mut self, now: Instant, err: Option<Error>) -> Action {
        self.ending_error = Some(
            err.unwrap_or_else(|| Error::Invalid("the event stream ended unexpectedly".into())),
        );
        self.begin_stop(now);
        self.next_action(now)
    }

    /// Copies the watermark into the stats when it moved.
    fn sync_watermark(&mut self) {
        if self.lanes.watermark() != self.stats_watermark.as_deref() {
            self.stats_watermark = self.lanes.watermark().map(str::to_string);
            self.stats.set_watermark(self.stats_watermark.as_deref());
        }
    }

    /// What to do next. `now` is passed in so tests control time.
    pub fn next_action(&mut self, now: Instant) -> Action {
        if self.outstanding.is_some() {
            return Action::Done(Err(Error::Invalid(
                "next_action called before the previous batch was acknowledged".into(),
            )));
        }
        match self.phase {
            Phase::Created => Action::Done(Err(Error::Invalid("the loop was not started".into()))),
            Phase::Done => Action::Done(Ok(())),
            Phase::Running if self.concurrent => {
                let action = self.next_concurrent(now);
                self.bound_quiet_wait(now, action)
            }
            Phase::Draining => self.next_draining(now),
            Phase::Running => {
                let action = self.next_sequential(now);
                self.bound_quiet_wait(now, action)
            }
            Phase::FinalFlush => {
                self.phase = Phase::FinalSnapshot;
                Action::Flush
            }
            Phase::FinalSnapshot => {
                self.phase = Phase::FinalWait;
                Action::Snapshot
            }
            Phase::FinalWait => {
                if let Some(e) = self.writer.fatal_error() {
                    return self.finish(Err(e));
                }
                if self.writer.is_idle() {
                    let r = match self.ending_error.take() {
                        Some(e) => Err(e),
                        None => Ok(()),
                    };
                    return self.finish(r);
                }
                let deadline = self.stop_deadline.unwrap_or(now);
                if now >= deadline {
                    warn!(
                        client_id = self.cfg.client_id.as_str();
                        "final checkpoint for client_id={} not confirmed within {:.1}s; the last completed write stands",
                        self.cfg.client_id,
                        self.cfg.stop_timeout.as_secs_f64()
                    );
                    self.writer.close();
                    let r = match self.ending_error.take() {
                        Some(e) => Err(e),
                        None => Ok(()),
                    };
                    return self.finish(r);
                }
                Action::WaitWriter(deadline)
            }
        }
    }

    fn finish(&mut self, r: Result<()>) -> Action {
        self.phase = Phase::Done;
        self.stats.stopped();
        self.producer_cancel.cancel();
        if r.is_err() {
            self.writer.close();
        }
        info!(client_id = self.cfg.client_id.as_str(); "stopped client_id={}", self.cfg.client_id);
        Action::Done(r)
    }

    /// The batch handed out by the last [`Action::Handle`] was handled entirely.
    pub fn handled(&mut self) {
        if let Some((n, started, cursors)) = self.outstanding.take() {
            self.handled_total += n as u64;
            Stats::add(&self.stats.events_handled, n as u64);
            self.stats
                .record_handle(n as u64, started.elapsed().as_nanos() as u64);
            match cursors {
                Outstanding::Last(Some(c)) => {
                    self.stats.set_last_cursor(&c);
                    self.lanes.admit_done(Some(c));
                }
                Outstanding::Last(None) => {}
                Outstanding::Shard(handled, last) => {
                    if let Some(c) = &handled {
                        self.stats.set_last_cursor(c);
                    }
                    if last.is_some() {
                        self.lanes.admit_done(last);
                    }
                }
                Outstanding::All(all) => {
                    for c in all {
                        if let Some(c) = &c {
                            self.stats.set_last_cursor(c);
                        }
                        self.lanes.admit_done(c);
                    }
                }
            }
            self.sync_watermark();
        }
    }

    /// `flush` returned. The next interval counts from now, so a flush slower than the
    /// interval never runs back to back with the next one.
    pub fn flushed(&mut self) {
        self.snapshot_wanted = true;
        self.next_flush =
            crate::backoff::deadline_after(Instant::now(), self.cfg.checkpoint_interval);
    }

    /// The processor failed: write nothing more, stop the network side.
    pub fn abort(&mut self) {
        self.stats.stopped();
        self.outstanding = None;
        self.writer.close();
        self.phase = Phase::Done;
        self.producer_cancel.cancel();
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.producer_cancel.cancel();
    }
}

/// Waits until woken or `deadline` (used for [`Action::Wait`] and [`Action::WaitWriter`]).
pub async fn wait(wake: Arc<Wake>, deadline: Instant) {
    let now = Instant::now();
    let timeout = deadline.saturating_duration_since(now);
    if timeout.is_zero() {
        return;
    }
    let _ = tokio::time::timeout(timeout.min(Duration::from_secs(3600)), wake.notified()).await;
}

#[path = "driver_concurrent.rs"]
mod concurrent;
#[path = "driver_sequential.rs"]
mod sequential;
#[path = "driver_snapshot.rs"]
mod snapshot;
pub use concurrent::Report;

#[cfg(test)]
#[path = "driver_tests.rs"]
mod tests;
