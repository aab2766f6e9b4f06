//! The lanes' configuration and the shapes of their answers.

use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// What to do with an event whose last try failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnFailure {
    /// End the run with the event's error; nothing past the watermark is stored.
    Stop,
    /// Run the processor's `on_failure` hook once, then count the event as done.
    Skip,
}

impl OnFailure {
    /// Parses `"stop"` / `"skip"` (case-insensitive).
    pub fn parse(s: &str) -> Option<OnFailure> {
        match s.trim().to_ascii_lowercase().as_str() {
            "stop" => Some(OnFailure::Stop),
            "skip" => Some(OnFailure::Skip),
            _ => None,
        }
    }
}

/// Concurrency settings.
#[derive(Clone, Debug)]
pub struct LanesConfig {
    /// Most events in flight at once (`1` = one at a time, in stream order).
    pub max_concurrency: usize,
    /// Tries per event (`1` = no retry).
    pub max_attempts: u32,
    /// Delay before the first retry; doubles per retry (with jitter) up to `retry_max`.
    pub retry_min: Duration,
    pub retry_max: Duration,
    pub on_failure: OnFailure,
    /// Most admitted events above the watermark (unfinished or completed) before
    /// [`Lanes::room`](super::Lanes::room) says stop admitting: the bound on memory and look-ahead.
    pub max_window: usize,
}

impl Default for LanesConfig {
    fn default() -> Self {
        LanesConfig {
            max_concurrency: 1,
            max_attempts: 1,
            retry_min: Duration::from_secs(1),
            retry_max: Duration::from_secs(30),
            on_failure: OnFailure::Stop,
            max_window: 4096,
        }
    }
}

impl LanesConfig {
    /// Refuses settings the lanes cannot run with, naming the field.
    pub fn validate(&self) -> Result<()> {
        if self.max_concurrency == 0 {
            return Err(Error::Config("max_concurrency must be at least 1".into()));
        }
        if self.max_attempts == 0 {
            return Err(Error::Config("max_attempts must be at least 1".into()));
        }
        if self.retry_min.is_zero() || self.retry_max < self.retry_min {
            return Err(Error::Config(
                "retry_min must be positive and retry_max at least retry_min".into(),
            ));
        }
        if self.max_window == 0 {
            return Err(Error::Config("max_window must be at least 1".into()));
        }
        Ok(())
    }

    /// The bound on the completed set above the watermark: `max(64, 4 · max_concurrency)`.
    pub fn completed_limit(&self) -> usize {
        self.max_concurrency.saturating_mul(4).max(64)
    }
}

/// The answer to [`Lanes::admit`](super::Lanes::admit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admitted {
    /// Queued in its lane under this sequence number.
    Queued(u64),
    /// Its cursor is in the loaded completed set: it counts as done and must not be handled.
    AlreadyDone(u64),
}

/// One event to start: call the handler, then report under `seq`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Start {
    pub seq: u64,
    /// 1 for the first try, 2 for the first retry, ...
    pub attempt: u32,
}

/// The answer to [`Lanes::failed`](super::Lanes::failed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// Tried again (try number `attempt`) once `due` has passed; later events of the key wait.
    Retry { attempt: u32, due: Instant },
    /// Last try failed, `on_failure = skip`: run the hook once, then report
    /// [`Lanes::completed`](super::Lanes::completed) for the event (or end the run if the hook fails).
    Skip,
    /// Last try failed, `on_failure = stop`: end the run with the event's error.
    Stop,
}

/// Counters and gauges for stats.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LanesStats {
    pub in_flight: usize,
    /// Retries scheduled so far.
    pub retries: u64,
    /// Events given up on and skipped after their last try.
    pub failed_events: u64,
    pub watermark: Option<String>,
    /// Size of the completed set above the watermark (as it would be stored).
    pub completed_above: usize,
    /// Admitted events above the watermark.
    pub window: usize,
    /// Events waiting for a retry delay.
    pub waiting_retry: usize,
    /// Admitted events not done yet (pending, in flight, waiting for a retry or a hook).
    pub unfinished: usize,
}
