//! The processor side of the loop as a state machine (sans-IO): it decides what the processor
//! must do next (handle a batch, flush, take a snapshot, wait, stop) and when a checkpoint is
//! due. Whoever owns the processor (the Python bridge, or a Rust test) executes the actions and
//! reports back. The network side runs in [`crate::stream_loop`], the writes in
//! [`crate::checkpoint_writer`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{info, warn};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::buffer::{Buffer, Taken};
use crate::checkpoint_writer::CheckpointWriter;
use crate::error::{Error, Result};
use crate::model::{resume_cursor, Checkpoint, CheckpointClient, Event, EventClient, LoopConfig};
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
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Created,
    Running,
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
    outstanding: Option<(usize, Instant, Option<String>)>,
    stop_deadline: Option<Instant>,
    ending_error: Option<Error>,
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
            next_flush: Instant::now() + cfg.checkpoint_interval,
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
                        return Ok(Some(cp));
                    }
                    Err(Error::CheckpointNotFound(_)) => return Ok(None),
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
                match resume_cursor(&cp.value) {
                    Some(c) => {
                        info!(
                            client_id = self.cfg.client_id.as_str(), cursor = c.as_str();
                            "resuming client_id={} after checkpoint cursor {c}",
                            self.cfg.client_id
                        );
                        Some(c)
                    }
                    None => self.cfg.after_cursor.clone(),
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
        self.phase = Phase::Running;
        self.next_flush = Instant::now() + self.cfg.checkpoint_interval;
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
        self.stop_deadline = Some(now + self.cfg.stop_timeout);
        self.phase = Phase::FinalFlush;
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
            Phase::Running => {
                if let Some(e) = self.writer.fatal_error() {
                    return self.finish(Err(e));
                }
                if self.stop.is_cancelled() {
                    info!(
                        client_id = self.cfg.client_id.as_str();
                        "stopping client_id={}: final flush and checkpoint",
                        self.cfg.client_id
                    );
                    self.begin_stop(now);
                    return self.next_action(now);
                }
                if now >= self.next_flush {
                    self.next_flush = now + self.cfg.checkpoint_interval;
                    self.snapshot_wanted = true;
                    return Action::Flush;
                }
                if self.write_due() && self.writer.is_idle() {
                    return Action::Snapshot;
                }
                match self.buffer.take(self.cfg.max_batch) {
                    Taken::Events(batch) => {
                        let last = batch.iter().rev().find_map(|e| e.cursor.clone());
                        self.outstanding = Some((batch.len(), Instant::now(), last));
                        Action::Handle(batch)
                    }
                    Taken::Signal(ev) => {
                        Stats::add(&self.stats.stream_signals, 1);
                        Action::Signal(ev)
                    }
                    // Nothing to handle. If a write is due, one is in flight and its completion
                    // wakes us; otherwise the next event or the flush deadline does.
                    Taken::Empty => Action::Wait(self.next_flush),
                    Taken::Ended(err) => {
                        // The network side stopped by itself: only on a fatal error. Keep what
                        // was handled (final flush + checkpoint), then report the error.
                        self.ending_error = Some(err.unwrap_or_else(|| {
                            Error::Invalid("the event stream ended unexpectedly".into())
                        }));
                        self.begin_stop(now);
                        self.next_action(now)
                    }
                }
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
        self.stats.set_phase(crate::stats::StreamPhase::Stopped);
        self.producer_cancel.cancel();
        if r.is_err() {
            self.writer.close();
        }
        info!(client_id = self.cfg.client_id.as_str(); "stopped client_id={}", self.cfg.client_id);
        Action::Done(r)
    }

    /// The batch handed out by the last [`Action::Handle`] was handled entirely.
    pub fn handled(&mut self) {
        if let Some((n, started, cursor)) = self.outstanding.take() {
            self.handled_total += n as u64;
            Stats::add(&self.stats.events_handled, n as u64);
            self.stats
                .record_handle(n as u64, started.elapsed().as_nanos() as u64);
            if let Some(c) = cursor {
                self.stats.set_last_cursor(&c);
            }
        }
    }

    /// `flush` returned.
    pub fn flushed(&mut self) {
        self.snapshot_wanted = true;
    }

    /// The processor's snapshot, as JSON text. Skipped when byte-identical to the last one
    /// saved; otherwise handed to the writer (never waits).
    pub fn submit_snapshot(&mut self, json: String) -> Result<()> {
        self.snapshot_wanted = false;
        self.handled_at_snapshot = self.handled_total;
        if self.last_saved.as_deref() == Some(json.as_str()) {
            Stats::add(&self.stats.checkpoints_skipped, 1);
            return Ok(());
        }
        let value: serde_json::Value = serde_json::from_str(&json)
            .map_err(|e| Error::Invalid(format!("snapshot is not valid JSON: {e}")))?;
        self.writer.submit(value);
        self.last_saved = Some(json);
        Ok(())
    }

    /// The processor failed: write nothing more, stop the network side.
    pub fn abort(&mut self) {
        self.stats.set_phase(crate::stats::StreamPhase::Stopped);
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

#[cfg(test)]
#[path = "driver_tests.rs"]
mod tests;
