//! [`Histogram`]: a lock-free, fixed-size distribution of `u64` samples in power-of-two
//! buckets, for latencies (in microseconds) and sizes. Recording is a handful of
//! relaxed atomic adds; reading takes a [`HistogramSnapshot`].
//!
//! ```text
//!  bucket  0     1     2       3       4        ...  64
//!  values  0     1     2..=3   4..=7   8..=15   ...  2^63..=u64::MAX
//! ```
//!
//! A quantile is reported as the upper bound of the bucket that holds it (never more
//! than the largest sample): at most twice the true value, never less.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Number of buckets: one for zero and one per bit position.
const BUCKETS: usize = 65;

/// The bucket of `value`: 0 for 0, else one more than the index of its highest set bit.
fn bucket_of(value: u64) -> usize {
    (u64::BITS - value.leading_zeros()) as usize
}

/// The largest value bucket `i` holds.
fn bucket_max(i: usize) -> u64 {
    match i {
        0 => 0,
        64.. => u64::MAX,
        _ => (1u64 << i) - 1,
    }
}

const _: () = assert!(BUCKETS == u64::BITS as usize + 1, "a bucket per bit, and one for 0");

/// A concurrent histogram of `u64` samples in power-of-two buckets. Any number of
/// threads may record at once; nothing locks or allocates after construction.
///
/// ```
/// use std::time::Duration;
/// use regionkv_wal::Histogram;
///
/// let h = Histogram::new();
/// for us in [3, 5, 90, 1200] {
///     h.record_duration(Duration::from_micros(us));
/// }
/// let s = h.snapshot();
/// assert_eq!(s.count(), 4);
/// assert_eq!(s.max(), 1200);
/// assert!(s.quantile(0.5) >= 5 && s.quantile(0.5) <= 2 * 5);
/// ```
#[derive(Debug)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS],
    sum: AtomicU64,
    max: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram::new()
    }
}

impl Histogram {
    /// Number of buckets: one for zero and one per bit position of a `u64`.
    pub const BUCKETS: usize = BUCKETS;

    /// An empty histogram.
    pub fn new() -> Histogram {
        Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum: AtomicU64::new(0),
            max: AtomicU64::new(0),
        }
    }

    /// Records one sample.
    pub fn record(&self, value: u64) {
        self.buckets[bucket_of(value)].fetch_add(1, Ordering::Relaxed);
        // Wrapping: a sum that overflows u64 is past any useful mean anyway.
        self.sum.fetch_add(value, Ordering::Relaxed);
        self.max.fetch_max(value, Ordering::Relaxed);
    }

    /// Records a duration in whole microseconds (saturating at `u64::MAX`).
    pub fn record_duration(&self, elapsed: Duration) {
        self.record(u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX));
    }

    /// The samples so far. Taken bucket by bucket while others may record, so a
    /// snapshot may miss samples recorded during it, but its count always equals the
    /// sum of its buckets.
    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            buckets: std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed)),
            sum: self.sum.load(Ordering::Relaxed),
            max: self.max.load(Ordering::Relaxed),
        }
    }
}

/// A copy of a [`Histogram`]'s samples at one moment. Its `Debug` output is the
/// summary (count, mean, p50, p99, max), not the buckets.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct HistogramSnapshot {
    buckets: [u64; BUCKETS],
    sum: u64,
    max: u64,
}

impl Default for HistogramSnapshot {
    fn default() -> Self {
        HistogramSnapshot { buckets: [0; BUCKETS], sum: 0, max: 0 }
    }
}

impl std::fmt::Debug for HistogramSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HistogramSnapshot")
            .field("count", &self.count())
            .field("mean", &self.mean())
            .field("p50", &self.p50())
            .field("p99", &self.p99())
            .field("max", &self.max)
            .finish_non_exhaustive()
    }
}

impl HistogramSnapshot {
    /// A snapshot from its parts (as decoded from elsewhere): `buckets` are
    /// `(bucket index, samples)`; indexes past the last bucket are ignored.
    pub fn from_parts(buckets: impl IntoIterator<Item = (usize, u64)>, sum: u64, max: u64) -> Self {
        let mut s = HistogramSnapshot { sum, max, ..HistogramSnapshot::default() };
        for (i, n) in buckets {
            if let Some(b) = s.buckets.get_mut(i) {
                *b = b.saturating_add(n);
            }
        }
        s
    }

    /// The non-empty buckets as `(bucket index, samples)`, lowest first. Bucket `i`
    /// holds the values whose highest set bit is bit `i - 1` (bucket 0 holds 0).
    pub fn buckets(&self) -> impl Iterator<Item = (usize, u64)> + '_ {
        self.buckets.iter().copied().enumerate().filter(|&(_, n)| n > 0)
    }

    /// Samples recorded.
    pub fn count(&self) -> u64 {
        self.buckets.iter().fold(0u64, |a, &n| a.saturating_add(n))
    }

    /// Sum of the samples (wrapping on overflow).
    pub fn sum(&self) -> u64 {
        self.sum
    }

    /// The largest sample, 0 if none.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// The mean sample, 0 if none.
    pub fn mean(&self) -> u64 {
        self.sum.checked_div(self.count()).unwrap_or(0)
    }

    /// An upper bound of the `q` quantile (`q` in `[0, 1]`, clamped): the largest
    /// value of the bucket holding the sample of that rank, capped at [`Self::max`];
    /// 0 if there are no samples.
    pub fn quantile(&self, q: f64) -> u64 {
        let count = self.count();
        if count == 0 {
            return 0;
        }
        // The rank (1-based) of the sample at q: ceil(q * count), at least 1.
        #[expect(
            clippy::cast_precision_loss,
            clippy::cast_sign_loss,
            reason = "a rank within [1, count]; precision past 2^53 samples does not matter"
        )]
        let rank = ((q.clamp(0.0, 1.0) * count as f64).ceil() as u64).clamp(1, count);
        let mut seen = 0u64;
        for (i, &n) in self.buckets.iter().enumerate() {
            seen = seen.saturating_add(n);
            if seen >= rank {
                return bucket_max(i).min(self.max);
            }
        }
        self.max
    }

    /// The median's upper bound; see [`Self::quantile`].
    pub fn p50(&self) -> u64 {
        self.quantile(0.5)
    }

    /// The 99th percentile's upper bound; see [`Self::quantile`].
    pub fn p99(&self) -> u64 {
        self.quantile(0.99)
    }

    /// Adds `other`'s samples to these (for totals over several sources).
    pub fn merge(&mut self, other: &HistogramSnapshot) {
        for (a, b) in self.buckets.iter_mut().zip(other.buckets.iter()) {
            *a = a.saturating_add(*b);
        }
        self.sum = self.sum.wrapping_add(other.sum);
        self.max = self.max.max(other.max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_powers_of_two() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(1), 1);
        assert_eq!(bucket_of(2), 2);
        assert_eq!(bucket_of(3), 2);
        assert_eq!(bucket_of(4), 3);
        assert_eq!(bucket_of(u64::MAX), 64);
        for i in 0..BUCKETS {
            assert_eq!(bucket_of(bucket_max(i)), i, "bucket {i}'s largest value is in it");
        }
    }

    #[test]
    fn empty_histogram_reports_zeros() {
        let s = Histogram::new().snapshot();
        assert_eq!((s.count(), s.sum(), s.max(), s.mean(), s.p50(), s.p99()), (0, 0, 0, 0, 0, 0));
    }

    #[test]
    fn quantiles_bound_the_true_value_within_a_factor_of_two() {
        let h = Histogram::new();
        for v in 1..=1000u64 {
            h.record(v);
        }
        let s = h.snapshot();
        assert_eq!(s.count(), 1000);
        assert_eq!(s.sum(), 500_500);
        assert_eq!(s.max(), 1000);
        for (q, exact) in [(0.5, 500u64), (0.99, 990), (0.0, 1), (1.0, 1000)] {
            let got = s.quantile(q);
            assert!(got >= exact && got <= 2 * exact, "q {q}: {got} vs {exact}");
        }
        assert_eq!(s.quantile(1.0), 1000, "capped at the largest sample");
    }

    #[test]
    fn concurrent_recorders_lose_no_sample() {
        let h = std::sync::Arc::new(Histogram::new());
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let h = h.clone();
                std::thread::spawn(move || {
                    for v in 0..10_000u64 {
                        h.record(v * t);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let s = h.snapshot();
        assert_eq!(s.count(), 40_000);
        assert_eq!(s.max(), 9_999 * 3);
    }

    #[test]
    fn parts_and_merge_round_trip() {
        let h = Histogram::new();
        for v in [0, 7, 7, 300] {
            h.record(v);
        }
        let s = h.snapshot();
        let copy = HistogramSnapshot::from_parts(s.buckets(), s.sum(), s.max());
        assert_eq!(copy, s);
        let mut twice = s;
        twice.merge(&s);
        assert_eq!(twice.count(), 8);
        assert_eq!(twice.sum(), 2 * 314);
        assert_eq!(twice.max(), 300);
    }
}
