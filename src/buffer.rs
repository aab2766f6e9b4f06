//! The bounded buffer between the network task and the processor thread.
//!
//! The producer pushes one event at a time (waiting when full: backpressure); the consumer
//! takes whatever is ready, up to a bound, under one lock. The consumer is only woken when it
//! said it is waiting, so a busy consumer costs the producer no wake-ups at all.

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

struct Inner {
    queue: VecDeque<Event>,
    consumer_waiting: bool,
    producer_waiting: bool,
    ended: Option<Option<Error>>,
}

pub struct Buffer {
    inner: Mutex<Inner>,
    capacity: usize,
    space: Notify,
    wake: Arc<Wake>,
}

impl Buffer {
    /// `wake` is the consumer's wake-up (shared with the writer and stop).
    pub fn new(capacity: usize, wake: Arc<Wake>) -> Buffer {
        Buffer {
            inner: Mutex::new(Inner {
                queue: VecDeque::with_capacity(capacity.min(65_536)),
                consumer_waiting: false,
                producer_waiting: false,
                ended: None,
            }),
            capacity: capacity.max(1),
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
        let mut event = Some(event);
        loop {
            {
                let mut inner = self.lock();
                if inner.queue.len() < self.capacity {
                    if let Some(ev) = event.take() {
                        inner.queue.push_back(ev);
                    }
                    if inner.consumer_waiting {
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
                Some(ev) => Taken::Signal(ev),
                None => Taken::Empty,
            },
            Some(_) => {
                let n = inner
                    .queue
                    .iter()
                    .take(max.max(1))
                    .position(Event::is_signal)
                    .unwrap_or_else(|| inner.queue.len().min(max.max(1)));
                Taken::Events(inner.queue.drain(..n).collect())
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
        }
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

    #[tokio::test]
    async fn cancel_releases_a_blocked_producer() {
        let buf = Arc::new(Buffer::new(1, Arc::new(Wake::new())));
        let c = CancellationToken::new();
        assert!(buf.push(ev("entry", "1"), &c).await);
        c.cancel();
        assert!(!buf.push(ev("entry", "2"), &c).await);
    }
}
