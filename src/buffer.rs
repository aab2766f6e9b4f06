//! The bounded buffer between the network task and the processor thread.
//!
//! The producer pushes one event at a time (waiting when full: backpressure); the consumer
//! takes whatever is ready, up to a bound, under one lock. The consumer is only woken when it
//! said it is waiting, so a busy consumer costs the producer no wake-ups at all.
//!
//! The buffer is bounded twice: in events (`buffer_size`) and in bytes (`buffer_bytes`, the sum
//! of the payloads plus a fixed per-event overhead). The producer waits when either bound is
//! reached, except that an empty buffer always admits one event, however large, so an event
//! bigger than the whole byte budget still gets through (alone) and progress never stops
//! (docs/semantics.md, section 9).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use crate::wake::Wake;
use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::model::Event;

/// What the consumer found.
pub enum Taken {
    /// Business events, in order (never empty).
    Events(Vec<Event>),
    /// A connection-level signal (`kind == "stream"`).
    Signal(Event),
    /// Nothing ready; the consumer is now registered as waiting.
    Empty,
    /// The producer has ended (only after everything before it was taken).
    Ended(Option<Error>),
}

/// What one buffered event is counted as, besides its payload: the struct, its strings and the
/// queue slot, roughly.
const EVENT_OVERHEAD: usize = 128;

/// The bytes one event holds while buffered.
pub fn event_bytes(ev: &Event) -> usize {
    EVENT_OVERHEAD
        .saturating_add(ev.data.len())
        .saturating_add(ev.event.len())
        .saturating_add(ev.kind.len())
        .saturating_add(ev.cursor.as_ref().map_or(0, String::len))
}

struct Inner {
    queue: VecDeque<Event>,
    /// Sum of [`event_bytes`] over `queue`.
    bytes: usize,
    consumer_waiting: bool,
    producer_waiting: bool,
    ended: Option<Option<Error>>,
}

pub struct Buffer {
    inner: Mutex<Inner>,
    capacity: usize,
    max_bytes: usize,
    space: Notify,
    wake: Arc<Wake>,
}

impl Buffer {
    /// `wake` is the consumer's wake-up (shared with the writer and stop). Bounded in events
    /// only; see [`Buffer::with_byte_budget`].
    pub fn new(capacity: usize, wake: Arc<Wake>) -> Buffer {
        Self::with_byte_budget(capacity, usize::MAX, wake)
    }

    /// A buffer of at most `capacity` events and `max_bytes` bytes (an event larger than
    /// `max_bytes` is still admitted into an empty buffer).
    pub fn with_byte_budget(capacity: usize, max_bytes: usize, wake: Arc<Wake>) -> Buffer {
        Buffer {
            inner: Mutex::new(Inner {
                queue: VecDeque::with_capacity(capacity.min(65_536)),
                bytes: 0,
                consumer_waiting: false,
                producer_waiting: false,
                ended: None,
            }),
            capacity: capacity.max(1),
            max_bytes: max_bytes.max(1),
            space: Notify::new(),
            wake,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A poisoned lock only means another thread panicked while holding it; the queue
        // itself is still consistent (every mutation is a single push or drain).
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds an event, waiting while the buffer is full. Returns false if cancelled first.
    pub async fn push(&self, event: Event, cancel: &CancellationToken) -> bool {
        let size = event_bytes(&event);
        // Another shard's event (decided by the network thread) needs no prompt attention:
        // it wakes the consumer only once the buffer is half full, so the consumer drops
        // them in large batches instead of waking per event; the consumer's waits are
        // bounded meanwhile (`Driver::bound_quiet_wait`).
        let quiet = event.shard == crate::model::ShardMark::Foreign;
        let mut event = Some(event);
        loop {
            {
                let mut inner = self.lock();
                let fits = inner.queue.is_empty()
                    || (inner.queue.len() < self.capacity
                        && inner.bytes.saturating_add(size) <= self.max_bytes);
                if fits {
                    if let Some(ev) = event.take() {
                        inner.queue.push_back(ev);
                        inner.bytes = inner.bytes.saturating_add(size);
                    }
                    let half_full = inner.queue.len().saturating_mul(2) >= self.capacity
                        || inner.bytes.saturating_mul(2) >= self.max_bytes;
                    if inner.consumer_waiting && (!quiet || half_full) {
                        inner.consumer_waiting = false;
                        drop(inner);
                        self.wake.wake();
                    }
                    return true;
                }
                inner.producer_waiting = true;
            }
            tokio::select! {
                _ = self.space.notified() => {}
                _ = cancel.cancelled() => return false,
            }
        }
    }

    /// The producer is done: `None` after a stop, `Some(error)` when it failed.
    pub fn finish(&self, error: Option<Error>) {
        let mut inner = self.lock();
        if inner.ended.is_none() {
            inner.ended = Some(error);
        }
        inner.consumer_waiting = false;
        drop(inner);
        self.wake.wake();
    }

    /// Takes up to `max` business events, or one signal, or reports empty / ended.
    pub fn take(&self, max: usize) -> Taken {
        let mut inner = self.lock();
        let taken = match inner.queue.front() {
            None => {
                return match &inner.ended {
                    Some(e) => Taken::Ended(e.clone()),
                    None => {
                        inner.consumer_waiting = true;
                        Taken::Empty
                    }
                };
            }
            Some(front) if front.is_signal() => match inner.queue.pop_front() {
                Some(ev) => {
                    inner.bytes = inner.bytes.saturating_sub(event_bytes(&ev));
                    Taken::Signal(ev)
                }
                None => Taken::Empty,
            },
            Some(_) => {
                let n = inner
                    .queue
                    .iter()
                    .take(max.max(1))
                    .position(Event::is_signal)
                    .unwrap_or_else(|| inner.queue.len().min(max.max(1)));
                let batch: Vec<Event> = inner.queue.drain(..n).collect();
                let freed = batch
                    .iter()
                    .map(event_bytes)
                    .fold(0usize, usize::saturating_add);
                inner.bytes = inner.bytes.saturating_sub(freed);
                Taken::Events(batch)
            }
        };
        if inner.producer_waiting {
            inner.producer_waiting = false;
            drop(inner);
            self.space.notify_one();
        }
        taken
    }

    pub fn len(&self) -> usize {
        self.lock().queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes held (payloads plus the per-event overhead).
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::time::SystemTime;

    fn ev(kind: &str, cursor: &str) -> Event {
        Event {
            event: "created".into(),
            kind: kind.into(),
            data: Bytes::from_static(b"{}"),
            cursor: Some(cursor.into()),
            received: SystemTime::now(),
            shard: crate::model::ShardMark::Undecided,
        }
    }

    /// Other shards' events (marked by the network thread) wake a waiting consumer only
    /// once the buffer is half full; any other event wakes it at once.
    #[tokio::test]
    async fn foreign_events_wake_the_consumer_only_at_half_capacity() {
        let wake = Arc::new(Wake::new());
        let buf = Buffer::new(10, wake.clone());
        let c = CancellationToken::new();
        let woken = |wake: Arc<Wake>| async move {
            tokio::time::timeout(std::time::Duration::from_millis(30), wake.notified())
                .await
                .is_ok()
        };
        let foreign = |cursor: &str| Event {
            shard: crate::model::ShardMark::Foreign,
            ..ev("entry", cursor)
        };
        assert!(matches!(buf.take(10), Taken::Empty)); // the consumer waits
        for i in 0..4 {
            assert!(buf.push(foreign(&i.to_string()), &c).await);
        }
        assert!(!woken(wake.clone()).await, "4 of 10: no wake-up yet");
        assert!(buf.push(foreign("4"), &c).await);
        assert!(woken(wake.clone()).await, "half full: woken");
        match buf.take(10) {
            Taken::Events(v) => assert_eq!(v.len(), 5),
            _ => panic!("expected events"),
        }
        assert!(matches!(buf.take(10), Taken::Empty));
        assert!(buf.push(ev("entry", "5"), &c).await);
        assert!(woken(wake).await, "an event of this shard wakes at once");
    }

    #[tokio::test]
    async fn batches_stop_at_signals_and_respect_max() {
        let buf = Buffer::new(100, Arc::new(Wake::new()));
        let c = CancellationToken::new();
        for i in 0..5 {
            assert!(buf.push(ev("entry", &i.to_string()), &c).await);
        }
        assert!(buf.push(ev("stream", "x"), &c).await);
        assert!(buf.push(ev("entry", "9"), &c).await);
        match buf.take(3) {
            Taken::Events(v) => assert_eq!(v.len(), 3),
            _ => panic!("expected events"),
        }
        match buf.take(10) {
            Taken::Events(v) => assert_eq!(v.len(), 2),
            _ => panic!("expected events"),
        }
        assert!(matches!(buf.take(10), Taken::Signal(_)));
        assert!(matches!(buf.take(10), Taken::Events(v) if v.len() == 1));
        assert!(matches!(buf.take(10), Taken::Empty));
        buf.finish(None);
        assert!(matches!(buf.take(10), Taken::Ended(None)));
    }

    #[tokio::test]
    async fn a_full_buffer_blocks_the_producer_until_taken() {
        let buf = Arc::new(Buffer::new(2, Arc::new(Wake::new())));
        let c = CancellationToken::new();
        assert!(buf.push(ev("entry", "1"), &c).await);
        assert!(buf.push(ev("entry", "2"), &c).await);
        let b2 = buf.clone();
        let c2 = c.clone();
        let pushing = tokio::spawn(async move { b2.push(ev("entry", "3"), &c2).await });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!pushing.is_finished());
        assert_eq!(buf.len(), 2);
        assert!(matches!(buf.take(1), Taken::Events(_)));
        assert!(pushing.await.unwrap_or(false));
        assert_eq!(buf.len(), 2);
    }

    fn big(cursor: &str, size: usize) -> Event {
        Event {
            data: Bytes::from(vec![b'x'; size]),
            ..ev("entry", cursor)
        }
    }

    #[tokio::test]
    async fn the_byte_budget_blocks_the_producer_until_taken() {
        // Room for two 1000-byte events, not three, although the event bound is 100.
        let buf = Arc::new(Buffer::with_byte_budget(
            100,
            2 * event_bytes(&big("1", 1000)),
            Arc::new(Wake::new()),
        ));
        let c = CancellationToken::new();
        assert!(buf.push(big("1", 1000), &c).await);
        assert!(buf.push(big("2", 1000), &c).await);
        let b2 = buf.clone();
        let c2 = c.clone();
        let pushing = tokio::spawn(async move { b2.push(big("3", 1000), &c2).await });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!pushing.is_finished(), "the byte budget did not hold");
        assert_eq!(buf.len(), 2);
        assert!(matches!(buf.take(1), Taken::Events(_)));
        assert!(pushing.await.unwrap_or(false));
        assert_eq!(buf.len(), 2);
        assert!(matches!(buf.take(10), Taken::Events(v) if v.len() == 2));
        assert_eq!(buf.bytes(), 0);
    }

    #[tokio::test]
    async fn an_event_larger_than_the_budget_is_admitted_alone() {
        let buf = Arc::new(Buffer::with_byte_budget(100, 500, Arc::new(Wake::new())));
        let c = CancellationToken::new();
        assert!(
            buf.push(big("1", 10_000), &c).await,
            "an empty buffer admits any event"
        );
        let b2 = buf.clone();
        let c2 = c.clone();
        let pushing = tokio::spawn(async move { b2.push(big("2", 10), &c2).await });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(
            !pushing.is_finished(),
            "nothing may join an over-budget event"
        );
        assert!(matches!(buf.take(10), Taken::Events(v) if v.len() == 1));
        assert!(pushing.await.unwrap_or(false));
    }

    #[tokio::test]
    async fn cancel_releases_a_blocked_producer() {
        let buf = Arc::new(Buffer::new(1, Arc::new(Wake::new())));
        let c = CancellationToken::new();
        assert!(buf.push(ev("entry", "1"), &c).await);
        c.cancel();
        assert!(!buf.push(ev("entry", "2"), &c).await);
    }
}
