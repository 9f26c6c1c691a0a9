//! [`Histogram`]: a lock-free histogram of durations, and [`Snapshot`], what it held at one
//! moment.
//!
//! Recording is three relaxed atomic operations (a bucket's count, the sum, the maximum) on
//! memory allocated once: no lock, no allocation. Buckets are log-linear, as in an HDR
//! histogram: values (nanoseconds) below 16 have a bucket each; above, every power of two is
//! split into 16 buckets of equal width, so a bucket is at most 1/16 of its lower bound wide
//! and a quantile, read at the middle of its bucket, is within about 3 % of the recorded
//! value, from nanoseconds to centuries with 976 buckets.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// log2 of the number of buckets each power of two is split into.
const SUB_BITS: u32 = 4;
/// The number of buckets each power of two is split into.
const SUB: u64 = 1 << SUB_BITS;
/// The number of buckets: values 0 to 15 one each, then 16 for each power of two from 2^4 to
/// 2^63.
pub const BUCKETS: usize = (64 - SUB_BITS as usize + 1) * SUB as usize;

/// The bucket holding `ns`.
fn bucket_of(ns: u64) -> usize {
    if ns < SUB {
        return ns as usize;
    }
    let exp = 63 - ns.leading_zeros();
    let sub = (ns >> (exp - SUB_BITS)) & (SUB - 1);
    ((u64::from(exp - SUB_BITS) + 1) * SUB + sub) as usize
}

/// The lowest and highest values (inclusive) bucket `i` holds.
fn bounds(i: usize) -> (u64, u64) {
    let i = i as u64;
    if i < SUB {
        return (i, i);
    }
    let group = i / SUB;
    let sub = i % SUB;
    let low = (SUB + sub) << (group - 1);
    (low, low + ((1u64 << (group - 1)) - 1))
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A histogram of durations that many threads record into at once; see the module docs.
#[derive(Debug)]
pub struct Histogram {
    buckets: Box<[AtomicU64]>,
    sum_ns: AtomicU64,
    max_ns: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl Histogram {
    /// An empty histogram (its buckets are allocated here, once: about 8 KiB).
    #[must_use]
    pub fn new() -> Self {
        Self {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            sum_ns: AtomicU64::new(0),
            max_ns: AtomicU64::new(0),
        }
    }

    /// Records one duration.
    pub fn record(&self, d: Duration) {
        self.record_ns(nanos(d));
    }

    /// Records one duration given in nanoseconds.
    pub fn record_ns(&self, ns: u64) {
        self.buckets[bucket_of(ns)].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
        self.max_ns.fetch_max(ns, Ordering::Relaxed);
    }

    /// What the histogram holds now. Records made while it is taken may or may not be in it.
    #[must_use]
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            counts: self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect(),
            sum_ns: self.sum_ns.load(Ordering::Relaxed),
            max_ns: self.max_ns.load(Ordering::Relaxed),
        }
    }
}

/// A histogram's content at one moment, or the difference between two moments
/// ([`Snapshot::since`]). Counts only grow in a [`Histogram`], so exporters that want
/// monotonic counters (Prometheus) read [`Snapshot::buckets`] of plain snapshots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    counts: Vec<u64>,
    sum_ns: u64,
    max_ns: u64,
}

impl Default for Snapshot {
    fn default() -> Self {
        Self { counts: vec![0; BUCKETS], sum_ns: 0, max_ns: 0 }
    }
}

impl Snapshot {
    /// The number of durations recorded.
    #[must_use]
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Their sum.
    #[must_use]
    pub fn sum(&self) -> Duration {
        Duration::from_nanos(self.sum_ns)
    }

    /// The largest (for a difference: at most the upper bound of the highest bucket used).
    #[must_use]
    pub fn max(&self) -> Duration {
        Duration::from_nanos(self.max_ns)
    }

    /// The `q` quantile (0 to 1): the middle of the bucket that holds it, never above
    /// [`Snapshot::max`]; zero when nothing was recorded.
    #[must_use]
    pub fn quantile(&self, q: f64) -> Duration {
        let count = self.count();
        if count == 0 {
            return Duration::ZERO;
        }
        // The rank of the quantile, 1-based: at least the first, at most the last.
        let rank = ((q.clamp(0.0, 1.0) * count as f64).ceil() as u64).clamp(1, count);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let (low, high) = bounds(i);
                let mid = low + (high - low) / 2;
                return Duration::from_nanos(mid.min(self.max_ns));
            }
        }
        self.max()
    }

    /// The buckets that hold something, lowest first: each one's highest value (inclusive)
    /// and its count.
    pub fn buckets(&self) -> impl Iterator<Item = (Duration, u64)> + '_ {
        self.counts.iter().enumerate().filter(|(_, c)| **c > 0).map(|(i, c)| (Duration::from_nanos(bounds(i).1), *c))
    }

    /// What was recorded after `earlier` (a snapshot of the same histogram taken before).
    #[must_use]
    pub fn since(&self, earlier: &Snapshot) -> Snapshot {
        let counts: Vec<u64> = self.counts.iter().zip(&earlier.counts).map(|(a, b)| a.saturating_sub(*b)).collect();
        let highest = counts.iter().rposition(|c| *c > 0).map_or(0, |i| bounds(i).1);
        Snapshot { counts, sum_ns: self.sum_ns.wrapping_sub(earlier.sum_ns), max_ns: highest.min(self.max_ns) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_falls_in_the_bucket_whose_bounds_hold_it() {
        let mut values: Vec<u64> = (0..5_000).collect();
        for shift in 0..64 {
            let p = 1u64 << shift;
            values.extend([p - 1, p, p + 1, p + p / 3]);
        }
        values.push(u64::MAX);
        for v in values {
            let i = bucket_of(v);
            assert!(i < BUCKETS, "{v}: bucket {i}");
            let (low, high) = bounds(i);
            assert!(low <= v && v <= high, "{v} not in bucket {i} [{low}, {high}]");
            // A bucket is never wider than a sixteenth of its lower bound (or one value).
            assert!(high - low <= low / SUB, "bucket {i} [{low}, {high}] too wide");
        }
        // Buckets tile the line: each starts right after the previous one.
        for i in 1..BUCKETS {
            assert_eq!(bounds(i).0, bounds(i - 1).1 + 1, "gap before bucket {i}");
        }
        assert_eq!(bounds(BUCKETS - 1).1, u64::MAX);
    }

    #[test]
    fn quantiles_are_within_a_few_percent() {
        let h = Histogram::new();
        // 1 µs to 10 ms, one each.
        for us in 1..=10_000u64 {
            h.record(Duration::from_micros(us));
        }
        let s = h.snapshot();
        assert_eq!(s.count(), 10_000);
        for (q, want_us) in [(0.5, 5_000.0), (0.99, 9_900.0), (0.01, 100.0)] {
            let got = s.quantile(q).as_secs_f64() * 1e6;
            assert!((got - want_us).abs() / want_us < 0.04, "q{q}: {got} µs, want about {want_us}");
        }
        assert_eq!(s.quantile(1.0), Duration::from_millis(10), "the top quantile is the maximum, not past it");
        assert_eq!(s.max(), Duration::from_millis(10));
        assert_eq!(s.sum(), Duration::from_micros(10_000 * 10_001 / 2));
        assert_eq!(Snapshot::default().quantile(0.5), Duration::ZERO);
    }

    #[test]
    fn a_difference_holds_only_what_came_after() {
        let h = Histogram::new();
        for _ in 0..100 {
            h.record(Duration::from_secs(1));
        }
        let before = h.snapshot();
        for _ in 0..10 {
            h.record(Duration::from_micros(50));
        }
        let after = h.snapshot().since(&before);
        assert_eq!(after.count(), 10);
        assert_eq!(after.sum(), Duration::from_micros(500));
        let p99 = after.quantile(0.99).as_secs_f64() * 1e6;
        assert!((p99 - 50.0).abs() < 2.0, "{p99}");
        assert!(after.max() < Duration::from_micros(53), "the difference's maximum is its own: {:?}", after.max());
        let buckets: Vec<(Duration, u64)> = after.buckets().collect();
        assert_eq!(buckets.len(), 1);
        assert_eq!(buckets[0].1, 10);
        assert!(buckets[0].0 >= Duration::from_micros(50));
    }
}
