//! Checks on what watchers saw, against the clients' history.
//!
//! A watcher's log ([`WatchLog`]) is every message its stream delivered, with a stream that
//! resumes on another node after a break (`client::watch::WatchStream`), plus the explicit
//! gaps: a start index the nodes had compacted ([`WatchRecord::Compacted`]) and a snapshot
//! that replaced the state ([`WatchRecord::Abandoned`]). [`check`] requires:
//!
//! - **Ordered, no duplicates**: each watcher's event indexes strictly increase, and no
//!   event arrives at or below an index the stream already covered (a `CREATED`, `PROGRESS`
//!   or earlier event said everything up to it was sent). A resumed stream starts where
//!   the last one stopped.
//! - **No gaps**: per key, each put's `version` is the previous one plus 1 (1, with
//!   `create_index == modify_index`, after a delete or at the start), and a delete follows
//!   a put. A lost event breaks the chain. An explicit compaction or abandon resets what
//!   the watcher knows (an abandon tells the restored state).
//! - **Every event matches a write**: a put's value was written to that key by some
//!   operation of the history, at the index the write's acknowledgement reported; a delete
//!   was asked for; the same change is never seen at two indexes, and every watcher that
//!   saw an index saw the same change there.
//! - **Nothing acknowledged is missing**: every acknowledged change (a put, a compare-and-set
//!   that succeeded, a delete that removed the key) to a watched key, at an index the
//!   watcher's stream covered without an explicit gap, was delivered.
//!
//! "Resumable after reconnecting" is checked by the harness: every watcher must catch up
//! with the final applied index after the faults are healed, whatever it went through.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use crate::checker::{Input, Operation, Outcome, Output, ValueId};

/// One change to one key, as a watch event tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The key after a put.
    Put {
        /// The value written.
        value: ValueId,
        /// The index that created the key.
        create_index: u64,
        /// The key's version after the put (1 for a new key).
        version: u64,
    },
    /// The key was deleted.
    Delete,
}

/// What a watcher's stream delivered, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchRecord {
    /// A stream (re)started: every change after `after` follows (`CREATED`).
    Created {
        /// The message's index.
        after: u64,
    },
    /// Every change at `index` to the watched keys (one or more `EVENTS` messages).
    Events {
        /// The index.
        index: u64,
        /// Key and change.
        events: Vec<(String, Change)>,
    },
    /// Every change up to `index` has been sent (`PROGRESS`).
    Progress {
        /// The node's applied index.
        index: u64,
    },
    /// A snapshot replaced the state at `index`: changes before it may never come; `kvs` is
    /// the watched keys' restored state (a watched key not in it does not exist).
    Abandoned {
        /// The snapshot's index.
        index: u64,
        /// The restored keys (always `Change::Put`).
        kvs: Vec<(String, Change)>,
    },
    /// No node still had the changes from `resume` on: the watch restarted from `oldest`,
    /// an explicit gap.
    Compacted {
        /// The index the stream should have resumed from.
        resume: u64,
        /// The oldest index a node could serve.
        oldest: u64,
    },
}

/// One watcher's log.
#[derive(Debug, Clone)]
pub struct WatchLog {
    /// Which watcher (for messages).
    pub watcher: usize,
    /// The key, or the prefix.
    pub key: String,
    /// Whether `key` is a prefix.
    pub prefix: bool,
    /// The first index asked for; the watched keys did not exist before it.
    pub start: u64,
    /// What the streams delivered.
    pub records: Vec<WatchRecord>,
    /// How often the stream broke and was resumed.
    pub reconnects: u32,
}

impl WatchLog {
    /// An empty log of a watch from `start`.
    #[must_use]
    pub fn new(watcher: usize, key: String, prefix: bool, start: u64) -> Self {
        Self { watcher, key, prefix, start, records: Vec::new(), reconnects: 0 }
    }

    fn watches(&self, key: &str) -> bool {
        if self.prefix { key.starts_with(&self.key) } else { key == self.key }
    }

    /// Every change before this index has been delivered or explicitly skipped.
    #[must_use]
    pub fn resume_index(&self) -> u64 {
        let mut through = self.start.saturating_sub(1);
        for r in &self.records {
            through = match *r {
                WatchRecord::Created { after } => through.max(after),
                WatchRecord::Events { index, .. }
                | WatchRecord::Progress { index }
                | WatchRecord::Abandoned { index, .. } => through.max(index),
                WatchRecord::Compacted { oldest, .. } => through.max(oldest.saturating_sub(1)),
            };
        }
        through + 1
    }
}

/// A property a watcher's log broke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchViolation {
    /// An event at or below an index the stream had already covered, or a stream that
    /// restarted somewhere else than asked.
    OutOfOrder {
        /// The watcher.
        watcher: usize,
        /// What happened.
        detail: String,
    },
    /// A key's changes do not follow each other: an event was lost.
    Gap {
        /// The watcher.
        watcher: usize,
        /// The key.
        key: String,
        /// The index of the event that shows the gap.
        index: u64,
        /// What was expected.
        detail: String,
    },
    /// An event that no write of the history explains, or that disagrees with the write's
    /// acknowledgement or with another watcher.
    Unexplained {
        /// The watcher.
        watcher: usize,
        /// The key.
        key: String,
        /// The index.
        index: u64,
        /// Why.
        detail: String,
    },
    /// An acknowledged change the watcher's stream covered but never delivered.
    Missed {
        /// The watcher.
        watcher: usize,
        /// The key.
        key: String,
        /// The index of the acknowledged change.
        index: u64,
        /// The change.
        change: String,
    },
}

impl fmt::Display for WatchViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WatchViolation::OutOfOrder { watcher, detail } => write!(f, "watcher w{watcher}: out of order: {detail}"),
            WatchViolation::Gap { watcher, key, index, detail } => {
                write!(f, "watcher w{watcher}: gap in {key} at index {index}: {detail}")
            }
            WatchViolation::Unexplained { watcher, key, index, detail } => {
                write!(f, "watcher w{watcher}: event on {key} at index {index}: {detail}")
            }
            WatchViolation::Missed { watcher, key, index, change } => {
                write!(f, "watcher w{watcher}: the acknowledged {change} of {key} at index {index} never arrived")
            }
        }
    }
}

/// What [`check`] found.
#[derive(Debug, Default)]
pub struct WatchReport {
    /// Events delivered, over every watcher.
    pub events: usize,
    /// Stream breaks resumed.
    pub reconnects: u32,
    /// Explicit gaps: compacted restarts.
    pub compactions: usize,
    /// Explicit gaps: snapshots that replaced the state.
    pub abandons: usize,
    /// Every violation.
    pub violations: Vec<WatchViolation>,
}

/// What the watcher knows of one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Known {
    Unknown,
    Absent,
    Present { version: u64, create_index: u64 },
}

/// The changes a history acknowledged, by (key, index).
fn acknowledged(ops: &[Operation]) -> HashMap<(&str, u64), Change> {
    let mut acked = HashMap::new();
    for op in ops {
        let Outcome::Ok { output, index } = op.outcome else { continue };
        let change = match (op.input, output) {
            (Input::Put(value), Output::Put) | (Input::Cas { new: value, .. }, Output::Cas { succeeded: true }) => {
                // create_index and version are not known from the answer: matched on value.
                Change::Put { value, create_index: 0, version: 0 }
            }
            (Input::Delete, Output::Delete { deleted: true }) => Change::Delete,
            _ => continue,
        };
        acked.insert((op.key.as_str(), index), change);
    }
    acked
}

fn same_change(acked: Change, seen: Change) -> bool {
    match (acked, seen) {
        (Change::Put { value: a, .. }, Change::Put { value: b, .. }) => a == b,
        (Change::Delete, Change::Delete) => true,
        _ => false,
    }
}

fn describe(change: Change) -> String {
    match change {
        Change::Put { value, .. } => format!("put of v{value}"),
        Change::Delete => "delete".into(),
    }
}

/// Checks every watcher's log against the history `ops` (unknown writes resolved where the
/// harness could). See the module docs.
#[must_use]
pub fn check(logs: &[WatchLog], ops: &[Operation]) -> WatchReport {
    let mut report = WatchReport::default();
    let acked = acknowledged(ops);
    // Every operation that may have written (key, value): its acknowledged index, if any.
    let mut writers: HashMap<(&str, ValueId), Option<u64>> = HashMap::new();
    let mut deleters: HashMap<&str, Vec<&Operation>> = HashMap::new();
    for op in ops {
        if matches!(op.outcome, Outcome::Fail(_)) {
            continue;
        }
        if let Some(v) = op.input.written() {
            let index = match op.outcome {
                Outcome::Ok { output: Output::Put | Output::Cas { succeeded: true }, index } => Some(index),
                _ => None,
            };
            writers.insert((op.key.as_str(), v), index);
        }
        if op.input == Input::Delete {
            deleters.entry(op.key.as_str()).or_default().push(op);
        }
    }
    // (key, index) -> (change, first watcher that saw it); value -> index it was seen at.
    let mut seen: HashMap<(String, u64), (Change, usize)> = HashMap::new();
    let mut seen_value: HashMap<(String, ValueId), u64> = HashMap::new();

    for log in logs {
        let w = log.watcher;
        report.reconnects += log.reconnects;
        let mut known: BTreeMap<String, Known> = BTreeMap::new();
        let mut through = log.start.saturating_sub(1);
        // Index ranges the stream skipped explicitly: (first, last) inclusive.
        let mut gaps: Vec<(u64, u64)> = Vec::new();
        // Whether keys never mentioned are known absent (true until a compaction).
        let mut absent_by_default = true;
        let mut delivered: std::collections::HashSet<(String, u64)> = std::collections::HashSet::new();
        for record in &log.records {
            match record {
                WatchRecord::Created { after } => {
                    if *after != through {
                        report.violations.push(WatchViolation::OutOfOrder {
                            watcher: w,
                            detail: format!(
                                "a stream asked to start at index {} started after index {after}",
                                through + 1
                            ),
                        });
                    }
                    through = through.max(*after);
                }
                WatchRecord::Progress { index } => through = through.max(*index),
                WatchRecord::Compacted { resume, oldest } => {
                    report.compactions += 1;
                    if *oldest > *resume {
                        gaps.push((*resume, oldest - 1));
                    }
                    through = through.max(oldest.saturating_sub(1));
                    known.clear();
                    absent_by_default = false;
                }
                WatchRecord::Abandoned { index, kvs } => {
                    report.abandons += 1;
                    if *index < through {
                        report.violations.push(WatchViolation::OutOfOrder {
                            watcher: w,
                            detail: format!(
                                "a restored state at index {index} after the stream had covered every index up to {through}"
                            ),
                        });
                    }
                    if *index > through {
                        gaps.push((through + 1, *index));
                    }
                    through = through.max(*index);
                    known.clear();
                    absent_by_default = true;
                    for (key, change) in kvs {
                        if let Change::Put { version, create_index, .. } = *change {
                            known.insert(key.clone(), Known::Present { version, create_index });
                        }
                    }
                }
                WatchRecord::Events { index, events } => {
                    let index = *index;
                    if index <= through {
                        report.violations.push(WatchViolation::OutOfOrder {
                            watcher: w,
                            detail: format!(
                                "an event at index {index} after the stream had covered every index up to {through}"
                            ),
                        });
                    }
                    through = through.max(index);
                    for (key, change) in events {
                        report.events += 1;
                        let gap = |detail: String| WatchViolation::Gap { watcher: w, key: key.clone(), index, detail };
                        let unexplained = |detail: String| WatchViolation::Unexplained {
                            watcher: w,
                            key: key.clone(),
                            index,
                            detail,
                        };
                        if !log.watches(key) {
                            report.violations.push(unexplained("the watcher does not watch this key".into()));
                        }
                        if !delivered.insert((key.clone(), index)) {
                            report.violations.push(WatchViolation::OutOfOrder {
                                watcher: w,
                                detail: format!("two events on {key} at index {index}"),
                            });
                        }
                        // The chain of this key's changes.
                        let before = match known.get(key.as_str()) {
                            Some(k) => *k,
                            None if absent_by_default => Known::Absent,
                            None => Known::Unknown,
                        };
                        let after = match *change {
                            Change::Put { version, create_index, .. } => {
                                match before {
                                    Known::Absent if version != 1 || create_index != index => {
                                        report.violations.push(gap(format!(
                                            "the key did not exist, but the put has version {version} and create_index {create_index}"
                                        )));
                                    }
                                    Known::Present { version: v, create_index: c }
                                        if version != v + 1 || create_index != c =>
                                    {
                                        report.violations.push(gap(format!(
                                            "after version {v} (created at {c}) came version {version} (created at {create_index})"
                                        )));
                                    }
                                    _ => {}
                                }
                                Known::Present { version, create_index }
                            }
                            Change::Delete => {
                                if before == Known::Absent {
                                    report.violations.push(gap("a delete of a key that did not exist".into()));
                                }
                                Known::Absent
                            }
                        };
                        known.insert(key.clone(), after);
                        // The write that explains it.
                        match (acked.get(&(key.as_str(), index)), *change) {
                            (Some(a), c) if !same_change(*a, c) => report.violations.push(unexplained(format!(
                                "the {} acknowledged at this index was seen as a {}",
                                describe(*a),
                                describe(c)
                            ))),
                            (_, Change::Put { value, .. }) => match writers.get(&(key.as_str(), value)) {
                                None => report.violations.push(unexplained(format!("nobody wrote v{value} to it"))),
                                Some(Some(at)) if *at != index => report
                                    .violations
                                    .push(unexplained(format!("v{value} was acknowledged at index {at}"))),
                                Some(_) => {}
                            },
                            (None, Change::Delete) => {
                                let asked = deleters.get(key.as_str()).is_some_and(|ds| {
                                    ds.iter().any(|d| match d.outcome {
                                        Outcome::Unknown(_) => true,
                                        Outcome::Ok { output: Output::Delete { deleted: true }, index: i } => {
                                            i == index
                                        }
                                        _ => false,
                                    })
                                });
                                if !asked {
                                    report.violations.push(unexplained("no delete of the key explains it".into()));
                                }
                            }
                            _ => {}
                        }
                        if let Change::Put { value, .. } = *change {
                            match seen_value.get(&(key.clone(), value)) {
                                Some(at) if *at != index => report
                                    .violations
                                    .push(unexplained(format!("v{value} was also seen at index {at}: applied twice"))),
                                _ => {
                                    seen_value.insert((key.clone(), value), index);
                                }
                            }
                        }
                        match seen.get(&(key.clone(), index)) {
                            Some((other, by)) if *other != *change => report.violations.push(unexplained(format!(
                                "watcher w{by} saw a {} here, this one a {}",
                                describe(*other),
                                describe(*change)
                            ))),
                            Some(_) => {}
                            None => {
                                seen.insert((key.clone(), index), (*change, w));
                            }
                        }
                    }
                }
            }
        }
        // Every acknowledged change in the covered range arrived.
        let covered = |i: u64| i >= log.start && i <= through && !gaps.iter().any(|(a, b)| (*a..=*b).contains(&i));
        let mut missed: Vec<_> = acked
            .iter()
            .filter(|((key, index), _)| {
                log.watches(key) && covered(*index) && !delivered.contains(&((*key).to_string(), *index))
            })
            .collect();
        missed.sort_by_key(|((key, index), _)| (*index, *key));
        for ((key, index), change) in missed {
            report.violations.push(WatchViolation::Missed {
                watcher: w,
                key: (*key).to_string(),
                index: *index,
                change: describe(*change),
            });
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(key: &str, input: Input, outcome: Outcome) -> Operation {
        Operation { client: 0, key: key.into(), input, request_id: String::new(), invoke: 0, complete: 1, outcome }
    }

    fn put_ok(key: &str, v: ValueId, index: u64) -> Operation {
        op(key, Input::Put(v), Outcome::Ok { output: Output::Put, index })
    }

    fn put(v: ValueId, create_index: u64, version: u64) -> Change {
        Change::Put { value: v, create_index, version }
    }

    fn events(index: u64, key: &str, change: Change) -> WatchRecord {
        WatchRecord::Events { index, events: vec![(key.into(), change)] }
    }

    /// Writes to k: v1 at 10 (created), v2 at 12, delete at 15, v3 at 20 (created again).
    fn history() -> Vec<Operation> {
        vec![
            put_ok("k", 1, 10),
            put_ok("k", 2, 12),
            op("k", Input::Delete, Outcome::Ok { output: Output::Delete { deleted: true }, index: 15 }),
            op("k", Input::Delete, Outcome::Ok { output: Output::Delete { deleted: false }, index: 16 }),
            op("k", Input::Put(3), Outcome::Unknown("timeout".into())),
        ]
    }

    fn full_log() -> WatchLog {
        let mut log = WatchLog::new(0, "k".into(), false, 5);
        log.records = vec![
            WatchRecord::Created { after: 4 },
            events(10, "k", put(1, 10, 1)),
            WatchRecord::Progress { index: 11 },
            events(12, "k", put(2, 10, 2)),
            events(15, "k", Change::Delete),
            events(20, "k", put(3, 20, 1)),
            WatchRecord::Progress { index: 25 },
        ];
        log
    }

    #[test]
    fn a_complete_log_passes() {
        let r = check(&[full_log()], &history());
        assert!(r.violations.is_empty(), "{:?}", r.violations);
        assert_eq!(r.events, 4);
        assert_eq!(full_log().resume_index(), 26);
    }

    #[test]
    fn an_event_lost_before_a_delete_is_still_missed() {
        let mut log = full_log();
        log.records.remove(3); // the put at 12: the delete after it hides it from the chain
        let r = check(&[log], &history());
        assert!(r.violations.contains(&WatchViolation::Missed {
            watcher: 0,
            key: "k".into(),
            index: 12,
            change: "put of v2".into()
        }));
    }

    #[test]
    fn a_lost_put_breaks_the_chain() {
        let ops = vec![put_ok("k", 1, 10), put_ok("k", 2, 12), put_ok("k", 3, 14)];
        let mut log = WatchLog::new(0, "k".into(), false, 1);
        // The put at 12 lost, and the stream covered only through 11 before (no miss to see).
        log.records = vec![events(10, "k", put(1, 10, 1)), events(14, "k", put(3, 10, 3))];
        let r = check(&[log], &ops);
        assert!(r.violations.iter().any(|v| matches!(v, WatchViolation::Gap { index: 14, .. })), "{:?}", r.violations);
    }

    #[test]
    fn a_lost_delete_breaks_the_chain() {
        let mut log = full_log();
        log.records.remove(4); // the delete at 15
        let r = check(&[log], &history());
        assert!(r.violations.iter().any(|v| matches!(v, WatchViolation::Gap { index: 20, .. })), "{:?}", r.violations);
    }

    #[test]
    fn duplicates_and_time_travel_are_out_of_order() {
        let mut log = full_log();
        log.records.insert(4, events(12, "k", put(2, 10, 2)));
        let r = check(&[log], &history());
        assert!(r.violations.iter().any(|v| matches!(v, WatchViolation::OutOfOrder { .. })), "{:?}", r.violations);

        let mut log = full_log();
        log.records.insert(3, WatchRecord::Progress { index: 13 }); // then the event at 12
        let r = check(&[log], &history());
        assert!(r.violations.iter().any(|v| matches!(v, WatchViolation::OutOfOrder { .. })), "{:?}", r.violations);

        let mut log = full_log();
        log.records.insert(2, WatchRecord::Created { after: 11 }); // resumed past 10
        log.records.insert(2, WatchRecord::Created { after: 3 });
        let r = check(&[log], &history());
        assert!(r.violations.iter().any(|v| matches!(v, WatchViolation::OutOfOrder { .. })), "{:?}", r.violations);
    }

    #[test]
    fn events_must_match_writes() {
        // A value nobody wrote.
        let mut log = full_log();
        log.records[5] = events(20, "k", put(99, 20, 1));
        let r = check(&[log], &history());
        assert!(r.violations.iter().any(|v| matches!(v, WatchViolation::Unexplained { index: 20, .. })));
        // An acknowledged value at the wrong index (applied twice, or time travel).
        let mut log = full_log();
        log.records.push(events(30, "k", put(1, 20, 2)));
        let r = check(&[log], &history());
        assert!(r.violations.iter().any(|v| matches!(v, WatchViolation::Unexplained { index: 30, .. })));
        // A delete nobody asked for at that index.
        let mut log = full_log();
        log.records.push(events(31, "k", Change::Delete));
        let r = check(&[log], &history());
        assert!(r.violations.iter().any(|v| matches!(v, WatchViolation::Unexplained { index: 31, .. })));
        // Two watchers disagree about an index.
        let mut other = full_log();
        other.watcher = 1;
        other.records[5] = events(20, "k", put(2, 20, 1));
        let r = check(&[full_log(), other], &history());
        assert!(r.violations.iter().any(|v| matches!(v, WatchViolation::Unexplained { watcher: 1, index: 20, .. })));
    }

    #[test]
    fn explicit_gaps_excuse_what_they_skip() {
        // Compacted from 11 to 16: the put at 12 and the delete at 15 are skipped, and the
        // chain restarts from nothing known.
        let mut log = full_log();
        log.records
            .splice(2..5, [WatchRecord::Compacted { resume: 11, oldest: 17 }, WatchRecord::Created { after: 16 }]);
        let r = check(&[log], &history());
        assert!(r.violations.is_empty(), "{:?}", r.violations);
        assert_eq!(r.compactions, 1);

        // Abandoned at 14 with the restored state: the put at 12 is skipped, the delete at
        // 15 follows the restored version.
        let mut log = full_log();
        log.records.splice(2..4, [WatchRecord::Abandoned { index: 14, kvs: vec![("k".into(), put(2, 10, 2))] }]);
        let r = check(&[log.clone()], &history());
        assert!(r.violations.is_empty(), "{:?}", r.violations);
        assert_eq!(r.abandons, 1);
        // A restored state that the next event does not follow is a gap.
        log.records[2] = WatchRecord::Abandoned { index: 14, kvs: vec![] };
        let r = check(&[log], &history());
        assert!(r.violations.iter().any(|v| matches!(v, WatchViolation::Gap { index: 15, .. })), "{:?}", r.violations);
    }

    #[test]
    fn a_restored_state_older_than_the_stream_is_out_of_order() {
        // After the put at 12 was delivered, a stream reports the state as of index 11: the
        // watcher would go back in time (seed 15 with frequent snapshots found a node doing so).
        let mut log = full_log();
        log.records.insert(4, WatchRecord::Abandoned { index: 11, kvs: vec![("k".into(), put(1, 10, 1))] });
        let r = check(&[log], &history());
        assert!(
            r.violations.iter().any(|v| matches!(v, WatchViolation::OutOfOrder { detail, .. } if detail.contains("restored state at index 11"))),
            "{:?}",
            r.violations
        );
    }

    #[test]
    fn a_prefix_watch_follows_each_key() {
        let ops = vec![put_ok("p/a", 1, 10), put_ok("p/b", 2, 11), put_ok("p/a", 3, 12), put_ok("q", 4, 13)];
        let mut log = WatchLog::new(2, "p/".into(), true, 1);
        log.records = vec![
            WatchRecord::Created { after: 0 },
            events(10, "p/a", put(1, 10, 1)),
            events(11, "p/b", put(2, 11, 1)),
            events(12, "p/a", put(3, 10, 2)),
        ];
        let r = check(&[log.clone()], &ops);
        assert!(r.violations.is_empty(), "{:?}", r.violations);
        log.records.push(events(13, "q", put(4, 13, 1)));
        let r = check(&[log], &ops);
        assert!(r.violations.iter().any(|v| matches!(v, WatchViolation::Unexplained { index: 13, .. })));
    }
}
