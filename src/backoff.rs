//! Exponential reconnect delays between `min` and `max`, with jitter (built on `backon`).

use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// `now + d` for a timer, never a panic: when the sum overflows the platform's `Instant`, a
/// far-future instant instead (about 30 years, else one year, else `now`).
pub fn deadline_after(now: Instant, d: Duration) -> Instant {
    const YEAR: Duration = Duration::from_secs(365 * 86_400);
    now.checked_add(d)
        .or_else(|| now.checked_add(YEAR * 30))
        .or_else(|| now.checked_add(YEAR))
        .unwrap_or(now)
}

pub struct Backoff {
    min: Duration,
    max: Duration,
    jitter: bool,
    inner: ExponentialBackoff,
    attempts: u32,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Self::with_jitter(min, max, true)
    }

    pub fn with_jitter(min: Duration, max: Duration, jitter: bool) -> Backoff {
        Backoff {
            min,
            max,
            jitter,
            inner: Self::build(min, max, jitter),
            attempts: 0,
        }
    }

    fn build(min: Duration, max: Duration, jitter: bool) -> ExponentialBackoff {
        let b = ExponentialBuilder::default()
            .with_min_delay(min)
            .with_max_delay(max.max(min))
            .with_factor(2.0)
            .without_max_times();
        if jitter {
            b.with_jitter().build()
        } else {
            b.build()
        }
    }

    /// The next delay: `min`, then doubling, capped at `max` (jitter never exceeds `max`).
    pub fn next_delay(&mut self) -> Duration {
        self.attempts += 1;
        self.inner
            .next()
            .unwrap_or(self.max)
            .min(self.max)
            .max(self.min)
    }

    /// How many delays were handed out since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Back to `min` (after a healthy stream).
    pub fn reset(&mut self) {
        self.inner = Self::build(self.min, self.max, self.jitter);
        self.attempts = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_max_and_resets() {
        let mut b = Backoff::with_jitter(
            Duration::from_millis(100),
            Duration::from_millis(500),
            false,
        );
        let d: Vec<u128> = (0..5).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(d, vec![100, 200, 400, 500, 500]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(100));
    }

    #[test]
    fn deadlines_never_overflow() {
        let now = Instant::now();
        assert_eq!(
            deadline_after(now, Duration::from_secs(5)),
            now + Duration::from_secs(5)
        );
        let far = deadline_after(now, Duration::MAX);
        assert!(far > now + Duration::from_secs(86_400 * 300), "{far:?}");
        let d = Duration::try_from_secs_f64(1.5e19).unwrap_or(Duration::MAX);
        assert!(deadline_after(now, d) >= now);
    }

    #[test]
    fn jitter_stays_within_bounds() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        for _ in 0..50 {
            let d = b.next_delay();
            assert!(d >= Duration::from_millis(100) && d <= Duration::from_millis(1000));
        }
    }
}
