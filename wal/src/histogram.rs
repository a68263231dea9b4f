//! [`Histogram`]: a lock-free, fixed-size distribution of `u64` samples in log-linear
//! buckets, for latencies (in microseconds) and sizes. Recording is a handful of
//! relaxed atomic adds; reading takes a [`HistogramSnapshot`].
//!
//! Each power of two is cut into [`Histogram::SUB_BUCKETS`] (8) buckets of equal
//! width; the values below 8 have a bucket each:
//!
//! ```text
//!  bucket  0  1 ... 7 | 8  9 ... 15 | 16     17     ... 23      | 24     ... | 495
//!  values  0  1 ... 7 | 8  9 ... 15 | 16..17 18..19 ... 30..31  | 32..35 ... | 15*2^60..=u64::MAX
//! ```
//!
//! A quantile is reported as the largest value of the bucket that holds it (capped at
//! the largest sample): never less than the true value, and less than 1/8 (12.5 %)
//! above it, since a bucket of values from `2^e` up is `2^(e-3)` wide.
//!
//! Elsewhere (the client protocol's status record) a snapshot travels at the coarser
//! resolution of one bucket per power of two ([`HistogramSnapshot::buckets`],
//! [`HistogramSnapshot::from_parts`]): each log-linear bucket lies inside one of those,
//! so the folding is exact, and a snapshot rebuilt from them reports what a
//! power-of-two histogram did (at most twice the true value, never less).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Power-of-two buckets (the wire's resolution): one for zero and one per bit position.
const BUCKETS: usize = 65;

/// log2 of the buckets each power of two is cut into.
const SUB_BITS: u32 = 3;
/// Buckets per power of two (and the values below it, one bucket each).
const SUB: usize = 1 << SUB_BITS;
/// Log-linear buckets: `SUB` exact ones below `SUB`, then `SUB` per power of two from
/// `2^SUB_BITS` to `2^63`.
const FINE: usize = SUB + (u64::BITS - SUB_BITS) as usize * SUB;

/// The power-of-two bucket of `value`: 0 for 0, else one more than the index of its
/// highest set bit.
fn bucket_of(value: u64) -> usize {
    (u64::BITS - value.leading_zeros()) as usize
}

/// The largest value power-of-two bucket `i` holds.
fn bucket_max(i: usize) -> u64 {
    match i {
        0 => 0,
        64.. => u64::MAX,
        _ => (1u64 << i) - 1,
    }
}

/// The log-linear bucket of `value`.
fn fine_of(value: u64) -> usize {
    if value < SUB as u64 {
        return value as usize;
    }
    let exponent = u64::BITS - 1 - value.leading_zeros(); // >= SUB_BITS
    let shift = exponent - SUB_BITS;
    let sub = ((value >> shift) as usize) & (SUB - 1);
    SUB + shift as usize * SUB + sub
}

/// The smallest and the largest value of log-linear bucket `i` (`i < FINE`).
fn fine_range(i: usize) -> (u64, u64) {
    if i < SUB {
        return (i as u64, i as u64);
    }
    let shift = (i - SUB) / SUB;
    let sub = ((i - SUB) % SUB) as u64;
    let low = (SUB as u64 + sub) << shift;
    (low, low + ((1u64 << shift) - 1))
}

const _: () = assert!(BUCKETS == u64::BITS as usize + 1, "a bucket per bit, and one for 0");
const _: () = assert!(FINE == 496, "8 exact buckets, then 8 for each of 61 powers of two");

/// A concurrent histogram of `u64` samples in log-linear buckets (see the module
/// doc). Any number of threads may record at once; nothing locks or allocates after
/// construction.
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
/// assert!(s.quantile(0.5) >= 5 && s.quantile(0.5) * 8 <= 5 * 9);
/// ```
#[derive(Debug)]
pub struct Histogram {
    buckets: [AtomicU64; FINE],
    sum: AtomicU64,
    max: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram::new()
    }
}

impl Histogram {
    /// Number of power-of-two buckets (one for zero and one per bit position of a
    /// `u64`): the resolution of [`HistogramSnapshot::buckets`] and
    /// [`HistogramSnapshot::from_parts`].
    pub const BUCKETS: usize = BUCKETS;

    /// Buckets each power of two is cut into: a reported quantile is less than
    /// `1 / SUB_BUCKETS` above the true value.
    pub const SUB_BUCKETS: usize = SUB;

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
        self.buckets[fine_of(value)].fetch_add(1, Ordering::Relaxed);
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

    /// True if `value` is the smallest value of a bucket: then
    /// [`HistogramSnapshot::count_below`] of it is exact.
    pub fn is_bucket_start(value: u64) -> bool {
        fine_range(fine_of(value)).0 == value
    }
}

/// A copy of a [`Histogram`]'s samples at one moment. Its `Debug` output is the
/// summary (count, mean, p50, p99, max), not the buckets.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct HistogramSnapshot {
    buckets: [u64; FINE],
    sum: u64,
    max: u64,
}

impl Default for HistogramSnapshot {
    fn default() -> Self {
        HistogramSnapshot { buckets: [0; FINE], sum: 0, max: 0 }
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
    /// A snapshot from its power-of-two buckets (as decoded from elsewhere):
    /// `buckets` are `(bucket index, samples)` as [`Self::buckets`] gives them;
    /// indexes past the last bucket are ignored. Each bucket's samples are taken to
    /// be its largest value, so the quantiles are those of a power-of-two histogram
    /// (at most twice the true value, never less).
    pub fn from_parts(buckets: impl IntoIterator<Item = (usize, u64)>, sum: u64, max: u64) -> Self {
        let mut s = HistogramSnapshot { sum, max, ..HistogramSnapshot::default() };
        for (i, n) in buckets.into_iter().filter(|&(i, _)| i < BUCKETS) {
            let b = &mut s.buckets[fine_of(bucket_max(i))];
            *b = b.saturating_add(n);
        }
        s
    }

    /// The non-empty power-of-two buckets as `(bucket index, samples)`, lowest first.
    /// Bucket `i` holds the values whose highest set bit is bit `i - 1` (bucket 0
    /// holds 0). This is the resolution the client protocol carries.
    pub fn buckets(&self) -> impl Iterator<Item = (usize, u64)> + '_ {
        let mut coarse = [0u64; BUCKETS];
        for (i, &n) in self.buckets.iter().enumerate() {
            let c = &mut coarse[bucket_of(fine_range(i).0)];
            *c = c.saturating_add(n);
        }
        coarse.into_iter().enumerate().filter(|&(_, n)| n > 0)
    }

    /// The non-empty log-linear buckets as `(smallest value, largest value, samples)`,
    /// lowest first.
    pub fn fine_buckets(&self) -> impl Iterator<Item = (u64, u64, u64)> + '_ {
        self.buckets.iter().enumerate().filter(|&(_, &n)| n > 0).map(|(i, &n)| {
            let (low, high) = fine_range(i);
            (low, high, n)
        })
    }

    /// This snapshot at the resolution of one bucket per power of two, as
    /// [`Self::from_parts`] rebuilds it from [`Self::buckets`] (what a reader of the
    /// client protocol gets).
    #[must_use]
    pub fn coarse(&self) -> HistogramSnapshot {
        HistogramSnapshot::from_parts(self.buckets(), self.sum, self.max)
    }

    /// Samples in the buckets whose values are all below `edge`: exactly the samples
    /// below `edge` if it starts a bucket ([`Histogram::is_bucket_start`]) and this
    /// snapshot was taken here (not rebuilt by [`Self::from_parts`]).
    pub fn count_below(&self, edge: u64) -> u64 {
        self.buckets
            .iter()
            .enumerate()
            .take_while(|&(i, _)| fine_range(i).1 < edge)
            .fold(0u64, |a, (_, &n)| a.saturating_add(n))
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
    /// 0 if there are no samples. Less than 12.5 % above the true value (twice it
    /// for a snapshot rebuilt by [`Self::from_parts`]), never below it.
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
                return fine_range(i).1.min(self.max);
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
mod tests;
