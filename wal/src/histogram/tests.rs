//! Tests of the log-linear histogram: the bucket layout, the relative error bound of
//! its quantiles (a property test), and the power-of-two folding the wire uses.

use proptest::prelude::*;

use super::*;

/// The exact `q` quantile of `values` (sorted), by the rank `quantile` uses.
fn exact_quantile(sorted: &[u64], q: f64) -> u64 {
    #[expect(clippy::cast_precision_loss, clippy::cast_sign_loss, reason = "test ranks")]
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Samples spread over many orders of magnitude: a random bit width, then a value.
fn spread_value() -> impl Strategy<Value = u64> {
    (0u32..=64).prop_flat_map(|bits| match bits {
        0 => Just(0u64).boxed(),
        64 => (1u64 << 63..=u64::MAX).boxed(),
        b => (1u64 << (b - 1)..1u64 << b).boxed(),
    })
}

#[test]
fn buckets_tile_the_u64_range_in_order() {
    assert_eq!(fine_range(0), (0, 0));
    assert_eq!(fine_range(FINE - 1).1, u64::MAX);
    for i in 0..FINE {
        let (low, high) = fine_range(i);
        assert!(low <= high, "bucket {i}");
        assert_eq!((fine_of(low), fine_of(high)), (i, i), "bucket {i} holds its own range");
        if i + 1 < FINE {
            assert_eq!(fine_range(i + 1).0, high + 1, "bucket {} follows bucket {i}", i + 1);
        }
        // Each lies inside one power-of-two bucket: folding them is exact.
        assert_eq!(bucket_of(low), bucket_of(high), "bucket {i} crosses a power of two");
        // Width at most 1/8 of its smallest value (one value each below 16).
        assert!(high - low <= low / SUB as u64, "bucket {i}: {low}..={high}");
    }
}

#[test]
fn power_of_two_buckets_are_powers_of_two() {
    assert_eq!(bucket_of(0), 0);
    assert_eq!(bucket_of(1), 1);
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
    assert_eq!(s.buckets().count(), 0);
}

#[test]
fn quantiles_bound_the_true_value_within_an_eighth() {
    let h = Histogram::new();
    for v in 1..=1000u64 {
        h.record(v);
    }
    let s = h.snapshot();
    assert_eq!((s.count(), s.sum(), s.max()), (1000, 500_500, 1000));
    for (q, exact) in [(0.5, 500u64), (0.99, 990), (0.0, 1), (1.0, 1000)] {
        let got = s.quantile(q);
        assert!(got >= exact && got * 8 < exact * 9, "q {q}: {got} vs {exact}");
    }
    assert_eq!(s.quantile(1.0), 1000, "capped at the largest sample");
    // 500 is in 480..=511, the bucket a power-of-two histogram reported as 511 for
    // 300 as well; 300 is in 288..=319 here.
    let h = Histogram::new();
    for v in 1..=600u64 {
        h.record(v);
    }
    assert_eq!(h.snapshot().p50(), 319);
    assert_eq!(h.snapshot().coarse().p50(), 511);
}

proptest! {
    #[test]
    fn every_quantile_is_within_an_eighth_above_the_true_one(
        mut values in prop::collection::vec(spread_value(), 1..400),
        q in 0.0f64..=1.0,
    ) {
        let h = Histogram::new();
        for &v in &values {
            h.record(v);
        }
        values.sort_unstable();
        let s = h.snapshot();
        for q in [q, 0.5, 0.99] {
            let (got, exact) = (s.quantile(q), exact_quantile(&values, q));
            prop_assert!(got >= exact, "q {}: {} below the true {}", q, got, exact);
            prop_assert!(
                u128::from(got) * 8 <= u128::from(exact) * 9,
                "q {}: {} more than 12.5 % above the true {}", q, got, exact
            );
        }
    }

    #[test]
    fn count_below_a_bucket_start_is_exact(
        values in prop::collection::vec(spread_value(), 0..200),
        edge in spread_value(),
    ) {
        let h = Histogram::new();
        for &v in &values {
            h.record(v);
        }
        let start = fine_range(fine_of(edge)).0;
        prop_assert!(Histogram::is_bucket_start(start));
        let below = values.iter().filter(|&&v| v < start).count() as u64;
        prop_assert_eq!(h.snapshot().count_below(start), below);
    }

    #[test]
    fn the_power_of_two_folding_reports_what_a_power_of_two_histogram_did(
        values in prop::collection::vec(spread_value(), 1..200),
    ) {
        let h = Histogram::new();
        let mut coarse = [0u64; BUCKETS];
        for &v in &values {
            h.record(v);
            coarse[bucket_of(v)] += 1;
        }
        let s = h.snapshot();
        let want: Vec<_> = coarse.iter().copied().enumerate().filter(|&(_, n)| n > 0).collect();
        prop_assert_eq!(s.buckets().collect::<Vec<_>>(), want);
        let c = s.coarse();
        prop_assert_eq!(c.coarse(), c);
        prop_assert_eq!((c.count(), c.sum(), c.max()), (s.count(), s.sum(), s.max()));
        for q in [0.0, 0.5, 0.99, 1.0] {
            let rank_bucket = bucket_of(s.quantile(q));
            prop_assert_eq!(c.quantile(q), bucket_max(rank_bucket).min(s.max()));
        }
    }
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
    assert_eq!(copy, s.coarse());
    assert_eq!(copy.buckets().collect::<Vec<_>>(), s.buckets().collect::<Vec<_>>());
    assert_eq!(copy.p99(), 300, "511 capped at the largest sample");
    let mut twice = s;
    twice.merge(&s);
    assert_eq!(twice.count(), 8);
    assert_eq!(twice.sum(), 2 * 314);
    assert_eq!(twice.max(), 300);
    assert_eq!(twice.fine_buckets().collect::<Vec<_>>(), [(0, 0, 2), (7, 7, 4), (288, 319, 2)]);
}
