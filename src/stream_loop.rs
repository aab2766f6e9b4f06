//! The network side of the loop: subscribe, read, reconnect with backoff, apply the
//! stale-cursor policy, resume after eviction, and feed the bounded buffer.
//!
//! Resume position: the cursor of the last business event pushed into the buffer. Everything in
//! the buffer will be handled (the buffer survives reconnects), so resuming after it neither
//! skips nor repeats an event.
//!
//! Storms: the first immediate resume (eviction, invalidate, stale-cursor restart) is
//! immediate; another one within [`STORM_WINDOW`] without a business event in between waits for
//! the reconnect backoff, and the warnings about them are rate-limited. Only progress (a
//! business event) or a subscription that stayed up for [`HEALTHY_AFTER`] resets the backoff
//! (docs/semantics.md, sections 8 and 10).

use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, info, log, warn, Level};
use tokio_util::sync::CancellationToken;

use crate::backoff::{deadline_after, Backoff};
use crate::buffer::Buffer;
use crate::error::{Error, Result};
use crate::model::{EventClient, LoopConfig, ShardMark, StalePolicy};
use crate::stats::{Stats, StreamPhase};

/// Another immediate resume this soon after the last one, without progress, backs off.
pub const STORM_WINDOW: Duration = Duration::from_secs(10);

/// A subscription that stayed open this long resets the backoff even without events.
pub const HEALTHY_AFTER: Duration = Duration::from_secs(30);

/// Consecutive HTTP/2 protocol failures, without a business event in between, before the run
/// gives up: a status over the header limit or a proxy that breaks HTTP/2 does not heal.
pub const MAX_PROTOCOL_FAILURES: u32 = 5;

/// The same kind of warning at most once per this interval; the others go to DEBUG and are
/// counted in the next warning.
pub const WARN_INTERVAL: Duration = Duration::from_secs(5);

/// Rate limit of one kind of warning.
#[derive(Default)]
struct Limiter {
    last: Option<Instant>,
    suppressed: u64,
}

impl Limiter {
    /// The level for the next line of this kind, and how many were demoted since the last
    /// warning.
    fn level(&mut self, now: Instant) -> (Level, u64) {
        match self.last {
            Some(t) if now.saturating_duration_since(t) < WARN_INTERVAL => {
                self.suppressed += 1;
                (Level::Debug, 0)
            }
            _ => {
                self.last = Some(now);
                (Level::Warn, std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// What survives from one subscription to the next.
struct LoopState {
    backoff: Backoff,
    /// When the last immediate resume happened (cleared by progress).
    last_immediate: Option<Instant>,
    protocol_failures: u32,
    evicted_warnings: Limiter,
    invalidate_warnings: Limiter,
}

impl LoopState {
    /// A business event arrived: the connection works and the stream makes progress.
    fn progress(&mut self) {
        if self.backoff.attempts() > 0 {
            self.backoff.reset();
        }
        self.last_immediate = None;
        self.protocol_failures = 0;
    }

    /// Counts a transient failure; an error once HTTP/2 protocol failures repeat too often.
    fn transient(&mut self, e: &Error) -> Result<()> {
        if !e.is_protocol_failure() {
            return Ok(());
        }
        self.protocol_failures += 1;
        if self.protocol_failures >= MAX_PROTOCOL_FAILURES {
            return Err(Error::ServerStatus {
                method: "SubscribeEvents".into(),
                code: "INTERNAL".into(),
                message: format!(
                    "HTTP/2 protocol failure {} times in a row without an event ({e}); \
                     not retrying: a status message over the HTTP/2 header limit or a proxy \
                     that breaks HTTP/2 does not heal by itself",
                    self.protocol_failures
                ),
            });
        }
        Ok(())
    }
}

/// ` (N similar lines suppressed)` or nothing.
fn suppressed_text(n: u64) -> String {
    if n == 0 {
        String::new()
    } else {
        format!(" ({n} similar lines suppressed)")
    }
}

/// How one subscription ended.
enum StreamEnd {
    /// Stop was requested.
    Stopped,
    /// Resubscribe now (eviction, stale policy, mid-stream invalidate).
    ResumeNow,
    /// Resubscribe after the backoff (clean EOF, transient error).
    ResumeAfterBackoff,
}

/// Runs until `cancel` fires (Ok) or a fatal error (Err). Always calls `buffer.finish`.
pub async fn run(
    source: Arc<dyn EventClient>,
    cfg: Arc<LoopConfig>,
    start_cursor: Option<String>,
    buffer: Arc<Buffer>,
    stats: Arc<Stats>,
    cancel: CancellationToken,
) -> Result<()> {
    let result = run_inner(source, &cfg, start_cursor, &buffer, &stats, &cancel).await;
    stats.set_phase(StreamPhase::Stopped);
    buffer.finish(result.as_ref().err().cloned());
    result
}

async fn run_inner(
    source: Arc<dyn EventClient>,
    cfg: &LoopConfig,
    start_cursor: Option<String>,
    buffer: &Buffer,
    stats: &Stats,
    cancel: &CancellationToken,
) -> Result<()> {
    let mut cursor = start_cursor;
    let mut state = LoopState {
        backoff: Backoff::new(cfg.reconnect_min, cfg.reconnect_max),
        last_immediate: None,
        protocol_failures: 0,
        evicted_warnings: Limiter::default(),
        invalidate_warnings: Limiter::default(),
    };
    let mut first = true;
    loop {
        if cancel.is_cancelled() {
            return Ok(());
        }
        if !first {
            Stats::add(&stats.reconnects, 1);
        }
        first = false;
        stats.set_phase(StreamPhase::Connecting);
        let request = cfg.subscribe_request(cursor.clone());
        info!(
            client_id = cfg.client_id.as_str(),
            after_cursor = cursor.as_deref().unwrap_or_default();
            "subscribing client_id={} after_cursor={}",
            cfg.client_id,
            cursor.as_deref().unwrap_or("<tail>")
        );
        let subscribed = tokio::select! {
            r = source.subscribe(request) => r,
            _ = cancel.cancelled() => return Ok(()),
        };
        let end = match subscribed {
            Ok(mut stream) => {
                let opened = Instant::now();
                let end = consume(
                    &mut *stream,
                    cfg,
                    &mut cursor,
                    buffer,
                    stats,
                    cancel,
                    &mut state,
                )
                .await?;
                if opened.elapsed() >= HEALTHY_AFTER && state.backoff.attempts() > 0 {
                    state.backoff.reset();
                }
                end
            }
            Err(e) if e.is_transient() => {
                warn!(
                    client_id = cfg.client_id.as_str(), attempt = state.backoff.attempts() + 1;
                    "subscribe failed (attempt {}): {e}",
                    state.backoff.attempts() + 1
                );
                state.transient(&e)?;
                StreamEnd::ResumeAfterBackoff
            }
            Err(e) => return Err(e),
        };
        let end = match end {
            StreamEnd::ResumeNow => {
                let now = Instant::now();
                let repeated = state
                    .last_immediate
                    .is_some_and(|t| now.saturating_duration_since(t) < STORM_WINDOW);
                state.last_immediate = Some(now);
                if repeated {
                    StreamEnd::ResumeAfterBackoff
                } else {
                    StreamEnd::ResumeNow
                }
            }
            end => end,
        };
        let backoff = &mut state.backoff;
        match end {
            StreamEnd::Stopped => return Ok(()),
            StreamEnd::ResumeNow => {}
            StreamEnd::ResumeAfterBackoff => {
                let delay = backoff.next_delay();
                info!(
                    client_id = cfg.client_id.as_str(), attempt = backoff.attempts();
                    "reconnecting client_id={} in {:.3}s (attempt {})",
                    cfg.client_id,
                    delay.as_secs_f64(),
                    backoff.attempts()
                );
                tokio::select! {
                    _ = tokio::time::sleep_until(deadline_after(Instant::now(), delay).into()) => {}
                    _ = cancel.cancelled() => return Ok(()),
                }
            }
        }
    }
}

async fn consume(
    stream: &mut dyn crate::model::EventStream,
    cfg: &LoopConfig,
    cursor: &mut Option<String>,
    buffer: &Buffer,
    stats: &Stats,
    cancel: &CancellationToken,
    state: &mut LoopState,
) -> Result<StreamEnd> {
    let subscribed_with = cursor.clone();
    // Shards with the default key: decide each event's shard here, while its payload is in
    // the cache (docs/semantics.md, "Shards"); the driver drops the foreign ones.
    let shard_layout = (cfg.shard_count > 1 && !cfg.custom_key).then(|| cfg.shard_layout());
    let mut seen_live = false;
    let mut business_events = 0u64;
    let mut evicted = false;
    loop {
        let next = tokio::select! {
            r = stream.recv() => r,
            _ = cancel.cancelled() => return Ok(StreamEnd::Stopped),
        };
        let mut event = match next {
            Ok(Some(ev)) => ev,
            Ok(None) => {
                if evicted {
                    return Ok(StreamEnd::ResumeNow);
                }
                info!(
                    client_id = cfg.client_id.as_str(),
                    cursor = cursor.as_deref().unwrap_or_default();
                    "stream ended client_id={} cursor={}",
                    cfg.client_id,
                    cursor.as_deref().unwrap_or("<none>")
                );
                return Ok(StreamEnd::ResumeAfterBackoff);
            }
            Err(e) if e.is_transient() => {
                warn!(client_id = cfg.client_id.as_str(); "stream broke client_id={}: {e}", cfg.client_id);
                state.transient(&e)?;
                return Ok(StreamEnd::ResumeAfterBackoff);
            }
            Err(Error::Undecodable { method, message }) => {
                // Resubscribing would only receive the same bytes again: stop, and say where.
                return Err(Error::Undecodable {
                    method,
                    message: format!(
                        "cannot decode the event after cursor {} (client_id={}): {message}",
                        cursor.as_deref().unwrap_or("<none>"),
                        cfg.client_id
                    ),
                });
            }
            Err(e) => return Err(e),
        };
        Stats::add(&stats.events_received, 1);
        if event.is_signal() {
            match event.event.as_str() {
                "phase" => {
                    let phase = event.phase().unwrap_or_default();
                    if phase == "live" {
                        seen_live = true;
                        stats.set_phase(StreamPhase::Live);
                    } else if phase == "replay" {
                        stats.set_phase(StreamPhase::Replay);
                    }
                    info!(client_id = cfg.client_id.as_str(); "phase {phase} client_id={}", cfg.client_id);
                }
                "evicted" => {
                    let (level, suppressed) = state.evicted_warnings.level(Instant::now());
                    log!(
                        level,
                        client_id = cfg.client_id.as_str(),
                        reason = event.reason().unwrap_or_default().as_str(),
                        cursor = cursor.as_deref().unwrap_or_default();
                        "evicted client_id={} reason={} cursor={}: resuming after the last received event{}",
                        cfg.client_id,
                        event.reason().unwrap_or_default(),
                        cursor.as_deref().unwrap_or("<none>"),
                        suppressed_text(suppressed)
                    );
                    evicted = true;
                }
                "invalidate" => {
                    let reason = event.reason().unwrap_or_else(|| "invalidate".into());
                    let stale = subscribed_with.is_some() && !seen_live && business_events == 0;
                    let (level, suppressed) = state.invalidate_warnings.level(Instant::now());
                    let suppressed = suppressed_text(suppressed);
                    if stale {
                        let stale_cursor = subscribed_with.clone();
                        match cfg.stale_cursor {
                            StalePolicy::Fail => {
                                return Err(Error::StaleCursor {
                                    cursor: stale_cursor,
                                    reason,
                                })
                            }
                            StalePolicy::Restart => {
                                log!(
                                    level,
                                    client_id = cfg.client_id.as_str(), reason = reason.as_str(),
                                    cursor = stale_cursor.as_deref().unwrap_or_default();
                                    "stale cursor {:?} ({reason}) client_id={}: policy restart, resubscribing from the retained start{suppressed}",
                                    stale_cursor, cfg.client_id
                                );
                                *cursor = Some("start".into());
                            }
                            StalePolicy::Tail => {
                                log!(
                                    level,
                                    client_id = cfg.client_id.as_str(), reason = reason.as_str(),
                                    cursor = stale_cursor.as_deref().unwrap_or_default();
                                    "stale cursor {:?} ({reason}) client_id={}: policy tail, resubscribing at the live tail{suppressed}",
                                    stale_cursor, cfg.client_id
                                );
                                *cursor = None;
                            }
                        }
                        // Let the processor observe it, then resubscribe.
                        if !buffer.push(event, cancel).await {
                            return Ok(StreamEnd::Stopped);
                        }
                        return Ok(StreamEnd::ResumeNow);
                    }
                    log!(
                        level,
                        client_id = cfg.client_id.as_str(), reason = reason.as_str();
                        "invalidate mid-stream client_id={} reason={reason}: events may have been missed, resubscribing after cursor {}{suppressed}",
                        cfg.client_id,
                        cursor.as_deref().unwrap_or("<none>")
                    );
                    if !buffer.push(event, cancel).await {
                        return Ok(StreamEnd::Stopped);
                    }
                    if cursor.is_some() {
                        return Ok(StreamEnd::ResumeNow);
                    }
                    continue;
                }
                other => debug!(
                    client_id = cfg.client_id.as_str();
                    "stream signal {other} client_id={}",
                    cfg.client_id
                ),
            }
            if !buffer.push(event, cancel).await {
                return Ok(StreamEnd::Stopped);
            }
            continue;
        }
        business_events += 1;
        if let Some(layout) = &shard_layout {
            event.shard = match layout.own_default_key(&event.kind, &event.data) {
                Some(key) => ShardMark::Own(key),
                None => ShardMark::Foreign,
            };
        }
        state.progress();
        if business_events == 1 && stats.phase() == StreamPhase::Connecting {
            stats.set_phase(StreamPhase::Streaming);
        }
        // An event without a usable cursor never moves the resume position.
        if let Some(c) = event.cursor.as_ref().filter(|c| !c.is_empty()) {
            match cursor {
                Some(cur) => {
                    cur.clear();
                    cur.push_str(c);
                }
                None => *cursor = Some(c.clone()),
            }
        }
        if !buffer.push(event, cancel).await {
            return Ok(StreamEnd::Stopped);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warnings_of_one_kind_are_rate_limited_and_counted() {
        let mut l = Limiter::default();
        let t0 = Instant::now();
        assert_eq!(l.level(t0), (Level::Warn, 0));
        for i in 1..=5 {
            assert_eq!(l.level(t0 + Duration::from_millis(i)), (Level::Debug, 0));
        }
        assert_eq!(l.level(t0 + WARN_INTERVAL), (Level::Warn, 5));
    }

    #[test]
    fn repeated_protocol_failures_end_in_a_clear_error() {
        let mut state = LoopState {
            backoff: Backoff::new(Duration::from_millis(1), Duration::from_millis(2)),
            last_immediate: None,
            protocol_failures: 0,
            evicted_warnings: Limiter::default(),
            invalidate_warnings: Limiter::default(),
        };
        let h2 = Error::Transient(
            "SubscribeEvents: server answered INTERNAL: h2 protocol error: x".into(),
        );
        let other = Error::Transient("SubscribeEvents: server answered UNAVAILABLE: down".into());
        for _ in 0..10 {
            assert!(state.transient(&other).is_ok());
        }
        for _ in 1..MAX_PROTOCOL_FAILURES {
            assert!(state.transient(&h2).is_ok());
        }
        state.progress();
        for _ in 1..MAX_PROTOCOL_FAILURES {
            assert!(state.transient(&h2).is_ok());
        }
        let e = state
            .transient(&h2)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.contains("HTTP/2 protocol failure") && e.contains("not retrying"),
            "{e}"
        );
    }
}
