//! Per-event retry delays: exponential between `retry_min` and `retry_max`, with jitter drawn
//! from an injected, seeded generator (so tests are deterministic).

use std::time::Duration;

/// A small, fast, seedable generator (SplitMix64). Not for cryptography: it only spreads
/// retries apart.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `0..n` (`n > 0`; `0` for `n == 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }
}

/// The delay before retry number `retry` (1 = the first retry, after the first failed try).
///
/// `base = min(max, min · 2^(retry-1))`; the delay is drawn uniformly from
/// `[base, min(max, 2·base)]` using `unit` (a number in `[0, 1)`). So every delay lies within
/// `[min, max]`, the lower bound doubles with each retry, and two events failing together do
/// not retry in lock step.
pub fn retry_delay(min: Duration, max: Duration, retry: u32, unit: f64) -> Duration {
    let max = max.max(min);
    let shift = retry.saturating_sub(1);
    let factor = if shift < 32 {
        Some(1u32 << shift)
    } else {
        None
    };
    let base = factor
        .and_then(|f| min.checked_mul(f))
        .unwrap_or(max)
        .min(max);
    let top = base.saturating_mul(2).min(max);
    let span = top.saturating_sub(base);
    let unit = if unit.is_finite() {
        unit.clamp(0.0, 1.0)
    } else {
        0.0
    };
    (base + span.mul_f64(unit)).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_jitter_the_delay_doubles_up_to_max() {
        let min = Duration::from_millis(100);
        let max = Duration::from_millis(1000);
        let d: Vec<u128> = (1..=6)
            .map(|r| retry_delay(min, max, r, 0.0).as_millis())
            .collect();
        assert_eq!(d, vec![100, 200, 400, 800, 1000, 1000]);
        // The top of the jitter range is twice the base, capped.
        let d: Vec<u128> = (1..=5)
            .map(|r| retry_delay(min, max, r, 0.99).as_millis())
            .collect();
        assert_eq!(d, vec![199, 398, 796, 998, 1000]);
    }

    #[test]
    fn jittered_delays_stay_within_min_and_max() {
        let mut rng = SplitMix64::new(7);
        let min = Duration::from_millis(50);
        let max = Duration::from_secs(3);
        let mut seen_distinct = std::collections::HashSet::new();
        for retry in 1..=10u32 {
            let base = (min * (1 << (retry - 1))).min(max);
            for _ in 0..50 {
                let d = retry_delay(min, max, retry, rng.next_f64());
                assert!(d >= min && d <= max, "{d:?} out of bounds at retry {retry}");
                assert!(
                    d >= base && d <= (base * 2).min(max),
                    "{d:?} at retry {retry}"
                );
                seen_distinct.insert(d);
            }
        }
        assert!(seen_distinct.len() > 100, "jitter should spread delays");
    }

    #[test]
    fn huge_retry_numbers_and_odd_units_do_not_overflow() {
        let min = Duration::from_secs(1);
        let max = Duration::from_secs(30);
        assert_eq!(retry_delay(min, max, u32::MAX, 0.5), max);
        assert_eq!(retry_delay(min, max, 40, f64::NAN), max);
        assert_eq!(retry_delay(min, max, 1, -3.0), min);
        // max below min is treated as min.
        assert_eq!(retry_delay(min, Duration::ZERO, 3, 0.5), min);
    }

    #[test]
    fn generator_is_deterministic_and_uniform_enough() {
        let a: Vec<u64> = {
            let mut r = SplitMix64::new(42);
            (0..5).map(|_| r.next_u64()).collect()
        };
        let b: Vec<u64> = {
            let mut r = SplitMix64::new(42);
            (0..5).map(|_| r.next_u64()).collect()
        };
        assert_eq!(a, b);
        let mut r = SplitMix64::new(1);
        let mean = (0..10_000).map(|_| r.next_f64()).sum::<f64>() / 10_000.0;
        assert!((mean - 0.5).abs() < 0.02, "mean {mean}");
        assert!((0..1000).all(|_| r.below(10) < 10));
        assert_eq!(r.below(0), 0);
    }
}
