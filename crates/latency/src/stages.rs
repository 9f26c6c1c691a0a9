//! [`WriteStages`]: where the time of a write goes on the node that proposed it.
//!
//! A write passes six moments, in this order:
//! - **proposed**: the service calls openraft's `client_write` (the caller keeps this
//!   [`Stamp`]: the log index is not known yet);
//! - **appended**: the log store takes the entry into its in-memory log ([`WriteStages::appended`]);
//! - **durable**: the log writer's durable commit (fsync) holding it is done
//!   ([`WriteStages::durable`]);
//! - **committed**: openraft knows a quorum has it and saves the committed log id
//!   ([`WriteStages::committed`]);
//! - **applied**: the state machine's apply batch holding it is committed
//!   ([`WriteStages::applied`]);
//! - **answered**: `client_write` returned to the service ([`WriteStages::answered`]), which
//!   then records the write's five steps into the histograms.
//!
//! The four middle moments are kept per log index in a ring of [`CLOCK_SLOTS`] slots
//! allocated once (slot = index modulo the size), written with relaxed atomic stores by
//! whichever thread reaches the moment (RaftCore's task, the log writer thread, the apply
//! thread): no lock and no allocation on the write path. A slot is reused
//! [`CLOCK_SLOTS`] entries later; a write whose slot was reused before it was answered is
//! counted as unmatched and left out of the figures. Followers stamp the slots too; only
//! the node that proposes a write reads them.
//!
//! On the leader, a quorum can be the followers alone: a write may be committed (even
//! applied and answered) before the leader's own fsync ends. Each moment is then taken as no
//! later than the next one (its step counts zero) and the stage counts the write as
//! **overtaken**, so every write has all five steps and the cumulative times never go back.

use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicU64, Ordering, fence};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::histogram::{Histogram, Snapshot};

/// How many log indexes the clock keeps (a write must be answered before this many later
/// entries are appended, or its figures are lost): 8,192 slots of 40 bytes.
pub const CLOCK_SLOTS: usize = 8_192;

/// A stage of a write after it is proposed, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// In the leader's in-memory log.
    Appended,
    /// Fsynced in the leader's log.
    Durable,
    /// Known by openraft to be on a quorum.
    Committed,
    /// Applied to the state machine.
    Applied,
    /// `client_write` returned.
    Answered,
}

impl Stage {
    /// Every stage, in order.
    pub const ALL: [Stage; 5] = [Stage::Appended, Stage::Durable, Stage::Committed, Stage::Applied, Stage::Answered];

    /// Its name: `appended`, `durable`, `committed`, `applied`, `answered`.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Stage::Appended => "appended",
            Stage::Durable => "durable",
            Stage::Committed => "committed",
            Stage::Applied => "applied",
            Stage::Answered => "answered",
        }
    }
}

/// The number of stages (after proposed).
const STAGES: usize = Stage::ALL.len();
/// The stages kept per log index: all but answered.
const STAMPED: usize = STAGES - 1;
/// A slot's index while it is empty or being reset.
const EMPTY: u64 = u64::MAX;

/// A moment on the clock of one [`WriteStages`]: nanoseconds since it was made, plus one
/// (zero means "not reached").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Stamp(u64);

/// The moments of one log index.
#[derive(Debug)]
struct Slot {
    index: AtomicU64,
    at: [AtomicU64; STAMPED],
}

/// The figures of one stage: the step from the stage before (from proposed for the first)
/// and the total since proposed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageFigures {
    /// Which stage.
    pub stage: Stage,
    /// The time from the previous stage to this one.
    pub step: Snapshot,
    /// The time from proposed to this stage.
    pub total: Snapshot,
    /// Writes whose own moment for this stage came after the next stage's (or had not come
    /// when the write was answered); their step is counted as zero.
    pub overtaken: u64,
}

/// What a [`WriteStages`] measured over a period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Writes proposed on this node and answered in the period.
    pub writes: u64,
    /// Writes answered whose moments were lost (their clock slot reused first): not in the
    /// figures.
    pub unmatched: u64,
    /// One per stage, in order.
    pub stages: Vec<StageFigures>,
    /// The period's length: since the clock was made or last reset.
    pub period: Duration,
}

/// The raw counters at one moment.
#[derive(Debug, Clone)]
struct Counters {
    at: Instant,
    writes: u64,
    unmatched: u64,
    steps: Vec<Snapshot>,
    totals: Vec<Snapshot>,
    overtaken: Vec<u64>,
}

/// The per-stage clock and histograms of the writes of one node; see the module docs. One
/// per node, shared (in an `Arc`) by the log store, the state machine and the service.
#[derive(Debug)]
pub struct WriteStages {
    epoch: Instant,
    slots: Box<[Slot]>,
    /// Every index below this one has its committed moment stamped.
    committed_upto: AtomicU64,
    steps: [Histogram; STAGES],
    totals: [Histogram; STAGES],
    overtaken: [AtomicU64; STAGES],
    writes: AtomicU64,
    unmatched: AtomicU64,
    /// The counters at the start of the period (all zero at `epoch`, until a reset).
    /// Touched only by [`WriteStages::report`], never on the write path.
    baseline: Mutex<Counters>,
}

impl Default for WriteStages {
    fn default() -> Self {
        Self::new()
    }
}

/// The last [`CLOCK_SLOTS`] indexes of `range`: older ones would only be overwritten.
fn recent(range: RangeInclusive<u64>) -> RangeInclusive<u64> {
    let (start, end) = range.into_inner();
    let floor = end.saturating_sub(CLOCK_SLOTS as u64 - 1);
    start.max(floor)..=end
}

impl WriteStages {
    /// A clock with empty slots and histograms (about 400 KiB, allocated here once).
    #[must_use]
    pub fn new() -> Self {
        let epoch = Instant::now();
        let zero = Counters {
            at: epoch,
            writes: 0,
            unmatched: 0,
            steps: vec![Snapshot::default(); STAGES],
            totals: vec![Snapshot::default(); STAGES],
            overtaken: vec![0; STAGES],
        };
        Self {
            epoch,
            slots: (0..CLOCK_SLOTS)
                .map(|_| Slot { index: AtomicU64::new(EMPTY), at: std::array::from_fn(|_| AtomicU64::new(0)) })
                .collect(),
            committed_upto: AtomicU64::new(0),
            steps: std::array::from_fn(|_| Histogram::new()),
            totals: std::array::from_fn(|_| Histogram::new()),
            overtaken: std::array::from_fn(|_| AtomicU64::new(0)),
            writes: AtomicU64::new(0),
            unmatched: AtomicU64::new(0),
            baseline: Mutex::new(zero),
        }
    }

    /// Now, on this clock.
    #[must_use]
    pub fn now(&self) -> Stamp {
        Stamp(u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX - 1) + 1)
    }

    fn slot(&self, index: u64) -> &Slot {
        &self.slots[(index % CLOCK_SLOTS as u64) as usize]
    }

    /// The entries `indexes` are in the in-memory log (an append; a re-append after a
    /// truncation starts the index's moments afresh).
    pub fn appended(&self, indexes: RangeInclusive<u64>) {
        let Stamp(now) = self.now();
        for index in recent(indexes) {
            let slot = self.slot(index);
            // A seqlock's write: readers that see EMPTY, or another index after reading,
            // discard what they read.
            slot.index.store(EMPTY, Ordering::Relaxed);
            fence(Ordering::Release);
            for at in &slot.at[1..] {
                at.store(0, Ordering::Relaxed);
            }
            slot.at[0].store(now, Ordering::Relaxed);
            slot.index.store(index, Ordering::Release);
        }
    }

    fn mark(&self, stage: Stage, indexes: RangeInclusive<u64>) {
        let Stamp(now) = self.now();
        let k = stage as usize;
        for index in recent(indexes) {
            let slot = self.slot(index);
            if slot.index.load(Ordering::Acquire) == index {
                slot.at[k].store(now, Ordering::Relaxed);
            }
        }
    }

    /// The log writer's durable commit holding the entries `indexes` is done.
    pub fn durable(&self, indexes: RangeInclusive<u64>) {
        self.mark(Stage::Durable, indexes);
    }

    /// openraft committed every entry up to `index` (inclusive); only those not reported
    /// committed before are stamped.
    pub fn committed(&self, index: u64) {
        let next = index.saturating_add(1);
        let from = self.committed_upto.fetch_max(next, Ordering::Relaxed);
        if from < next {
            self.mark(Stage::Committed, from..=index);
        }
    }

    /// The apply batch holding the entries `indexes` is committed.
    pub fn applied(&self, indexes: RangeInclusive<u64>) {
        self.mark(Stage::Applied, indexes);
    }

    /// The moments of `index`, if its slot still holds it (zero: not reached).
    fn read(&self, index: u64) -> Option<[u64; STAMPED]> {
        let slot = self.slot(index);
        if slot.index.load(Ordering::Acquire) != index {
            return None;
        }
        let at: [u64; STAMPED] = std::array::from_fn(|k| slot.at[k].load(Ordering::Relaxed));
        fence(Ordering::Acquire);
        (slot.index.load(Ordering::Relaxed) == index && at[0] != 0).then_some(at)
    }

    /// The write proposed at `proposed` was answered now, with log index `index`: records
    /// its five steps.
    pub fn answered(&self, index: u64, proposed: Stamp) {
        let Stamp(answered) = self.now();
        let Some(at) = self.read(index) else {
            self.unmatched.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let mut times = [at[0], at[1], at[2], at[3], answered];
        // Backwards: no moment later than the next one.
        for k in (0..STAMPED).rev() {
            let next = times[k + 1];
            if times[k] == 0 || times[k] > next {
                self.overtaken[k].fetch_add(1, Ordering::Relaxed);
                times[k] = next;
            }
        }
        let Stamp(proposed) = proposed;
        let mut prev = proposed;
        for (k, t) in times.into_iter().enumerate() {
            let t = t.max(prev);
            self.steps[k].record_ns(t - prev);
            self.totals[k].record_ns(t - proposed);
            prev = t;
        }
        self.writes.fetch_add(1, Ordering::Relaxed);
    }

    fn counters(&self) -> Counters {
        Counters {
            at: Instant::now(),
            writes: self.writes.load(Ordering::Relaxed),
            unmatched: self.unmatched.load(Ordering::Relaxed),
            steps: self.steps.iter().map(Histogram::snapshot).collect(),
            totals: self.totals.iter().map(Histogram::snapshot).collect(),
            overtaken: self.overtaken.iter().map(|o| o.load(Ordering::Relaxed)).collect(),
        }
    }

    /// The figures since the clock was made or since the last reset; with `reset`, this
    /// call starts a new period (the histograms themselves only grow, for exporters).
    pub fn report(&self, reset: bool) -> Report {
        let now = self.counters();
        let mut base = self.baseline.lock().unwrap_or_else(PoisonError::into_inner);
        let report = Report {
            writes: now.writes - base.writes,
            unmatched: now.unmatched - base.unmatched,
            stages: Stage::ALL
                .iter()
                .enumerate()
                .map(|(k, stage)| StageFigures {
                    stage: *stage,
                    step: now.steps[k].since(&base.steps[k]),
                    total: now.totals[k].since(&base.totals[k]),
                    overtaken: now.overtaken[k] - base.overtaken[k],
                })
                .collect(),
            period: now.at.duration_since(base.at),
        };
        if reset {
            *base = now;
        }
        report
    }

    /// The histograms themselves (never reset): for each stage, the step and the total.
    pub fn histograms(&self) -> impl Iterator<Item = (Stage, &Histogram, &Histogram)> {
        Stage::ALL.iter().enumerate().map(|(k, s)| (*s, &self.steps[k], &self.totals[k]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A clock on which `index` reached its stages at these offsets from `proposed`, in µs
    /// (stamped by hand: the moments are set directly).
    fn stamped(clock: &WriteStages, index: u64, offsets_us: [Option<u64>; STAMPED]) -> Stamp {
        let proposed = clock.now();
        clock.appended(index..=index);
        let slot = clock.slot(index);
        for (k, off) in offsets_us.iter().enumerate() {
            let v = off.map_or(0, |us| proposed.0 + us * 1_000);
            slot.at[k].store(v, Ordering::Relaxed);
        }
        proposed
    }

    #[test]
    fn each_write_gets_five_ordered_steps() {
        let clock = WriteStages::new();
        for index in 1..=20 {
            let proposed = clock.now();
            clock.appended(index..=index);
            clock.durable(index..=index);
            clock.committed(index);
            clock.applied(index..=index);
            clock.answered(index, proposed);
        }
        let r = clock.report(false);
        assert_eq!((r.writes, r.unmatched), (20, 0));
        let names: Vec<&str> = r.stages.iter().map(|s| s.stage.name()).collect();
        assert_eq!(names, ["appended", "durable", "committed", "applied", "answered"]);
        let mut last = Duration::ZERO;
        for s in &r.stages {
            assert_eq!((s.step.count(), s.total.count(), s.overtaken), (20, 20, 0), "{}", s.stage.name());
            assert!(s.total.max() >= last, "{}: the totals grow", s.stage.name());
            last = s.total.max();
        }
    }

    #[test]
    fn a_stage_later_than_the_next_is_overtaken_and_counts_zero() {
        let clock = WriteStages::new();
        // Durable at 900 µs, after committed at 500 µs: the leader's own fsync was last.
        let proposed = stamped(&clock, 7, [Some(10), Some(900), Some(500), Some(600)]);
        // Answered well after everything.
        std::thread::sleep(Duration::from_millis(2));
        clock.answered(7, proposed);
        let r = clock.report(false);
        let durable = &r.stages[Stage::Durable as usize];
        assert_eq!(durable.overtaken, 1);
        let committed = &r.stages[Stage::Committed as usize];
        assert_eq!(committed.step.max(), Duration::ZERO, "durable was taken at committed's moment");
        assert!(durable.step.max() >= Duration::from_micros(480) && durable.step.max() <= Duration::from_micros(500));
        // Not reached at all when answered (the durable stamp had not come yet): the same.
        let proposed = stamped(&clock, 8, [Some(10), None, Some(500), Some(600)]);
        clock.answered(8, proposed);
        assert_eq!(clock.report(false).stages[Stage::Durable as usize].overtaken, 2);
    }

    #[test]
    fn a_reused_slot_is_unmatched_and_left_out() {
        let clock = WriteStages::new();
        let proposed = stamped(&clock, 3, [Some(1), Some(2), Some(3), Some(4)]);
        clock.appended(3 + CLOCK_SLOTS as u64..=3 + CLOCK_SLOTS as u64);
        clock.answered(3, proposed);
        let r = clock.report(false);
        assert_eq!((r.writes, r.unmatched), (0, 1));
        assert!(r.stages.iter().all(|s| s.total.count() == 0));
    }

    #[test]
    fn committed_stamps_only_what_is_new_and_at_most_the_ring() {
        let clock = WriteStages::new();
        clock.appended(1..=5);
        clock.committed(3);
        let at = |i: u64| clock.read(i).map(|a| a[Stage::Committed as usize]);
        let first = at(3);
        assert!(first.is_some_and(|t| t > 0));
        assert_eq!(at(4), Some(0));
        std::thread::sleep(Duration::from_millis(1));
        clock.committed(5);
        assert_eq!(at(3), first, "an index already committed keeps its moment");
        assert!(at(5).is_some_and(|t| t > first.unwrap_or(0)));
        // A jump far ahead (a restart, a new leader) touches at most the ring.
        clock.committed(u64::MAX - 1);
        assert_eq!(recent(0..=u64::MAX - 1).count(), CLOCK_SLOTS);
    }

    #[test]
    fn a_reset_starts_a_new_period() {
        let clock = WriteStages::new();
        let proposed = stamped(&clock, 1, [Some(1), Some(2), Some(3), Some(4)]);
        clock.answered(1, proposed);
        assert_eq!(clock.report(true).writes, 1);
        assert_eq!(clock.report(false).writes, 0);
        let proposed = stamped(&clock, 2, [Some(1), Some(2), Some(3), Some(4)]);
        clock.answered(2, proposed);
        let r = clock.report(false);
        assert_eq!(r.writes, 1);
        assert!(r.stages.iter().all(|s| s.step.count() == 1));
        // The histograms themselves still hold both.
        assert!(
            clock.histograms().all(|(_, step, total)| step.snapshot().count() == 2 && total.snapshot().count() == 2)
        );
    }
}
