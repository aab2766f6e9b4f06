//! The network side of the loop: subscribe, read, reconnect with backoff, apply the
//! stale-cursor policy, resume after eviction, and feed the bounded buffer.
//!
//! Resume position: the cursor of the last business event pushed into the buffer. Everything in
//! the buffer will be handled (the buffer survives reconnects), so resuming after it neither
//! skips nor repeats an event.

use std::sync::Arc;

use log::{debug, info, warn};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::buffer::Buffer;
use crate::error::{Error, Result};
use crate::model::{EventClient, LoopConfig, StalePolicy};
use crate::stats::{Stats, StreamPhase};

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
    let mut backoff = Backoff::new(cfg.reconnect_min, cfg.reconnect_max);
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
                consume(
                    &mut *stream,
                    cfg,
                    &mut cursor,
                    buffer,
                    stats,
                    cancel,
                    &mut backoff,
                )
                .await?
            }
            Err(e) if e.is_transient() => {
                warn!(
                    client_id = cfg.client_id.as_str(), attempt = backoff.attempts() + 1;
                    "subscribe failed (attempt {}): {e}",
                    backoff.attempts() + 1
                );
                StreamEnd::ResumeAfterBackoff
            }
            Err(e) => return Err(e),
        };
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
                    _ = tokio::time::sleep(delay) => {}
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
    backoff: &mut Backoff,
) -> Result<StreamEnd> {
    let subscribed_with = cursor.clone();
    let mut seen_live = false;
    let mut business_events = 0u64;
    let mut evicted = false;
    loop {
        let next = tokio::select! {
            r = stream.recv() => r,
            _ = cancel.cancelled() => return Ok(StreamEnd::Stopped),
        };
        let event = match next {
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
                return Ok(StreamEnd::ResumeAfterBackoff);
            }
            Err(e) => return Err(e),
        };
        Stats::add(&stats.events_received, 1);
        // Any message means the connection works: the next failure starts from `min` again.
        if backoff.attempts() > 0 {
            backoff.reset();
        }
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
                    warn!(
                        client_id = cfg.client_id.as_str(),
                        reason = event.reason().unwrap_or_default().as_str(),
                        cursor = cursor.as_deref().unwrap_or_default();
                        "evicted client_id={} reason={} cursor={}: resuming after the last received event",
                        cfg.client_id,
                        event.reason().unwrap_or_default(),
                        cursor.as_deref().unwrap_or("<none>")
                    );
                    evicted = true;
                }
                "invalidate" => {
                    let reason = event.reason().unwrap_or_else(|| "invalidate".into());
                    let stale = subscribed_with.is_some() && !seen_live && business_events == 0;
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
                                warn!(
                                    client_id = cfg.client_id.as_str(), reason = reason.as_str(),
                                    cursor = stale_cursor.as_deref().unwrap_or_default();
                                    "stale cursor {:?} ({reason}) client_id={}: policy restart, resubscribing from the retained start",
                                    stale_cursor, cfg.client_id
                                );
                                *cursor = Some("start".into());
                            }
                            StalePolicy::Tail => {
                                warn!(
                                    client_id = cfg.client_id.as_str(), reason = reason.as_str(),
                                    cursor = stale_cursor.as_deref().unwrap_or_default();
                                    "stale cursor {:?} ({reason}) client_id={}: policy tail, resubscribing at the live tail",
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
                    warn!(
                        client_id = cfg.client_id.as_str(), reason = reason.as_str();
                        "invalidate mid-stream client_id={} reason={reason}: events may have been missed, resubscribing after cursor {}",
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
