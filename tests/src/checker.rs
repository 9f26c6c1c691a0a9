//! Histories of client operations and the checks run on them.
//!
//! A [`History`] is what concurrent clients saw: every operation with the client that ran
//! it, its request id, when it was invoked and when it completed (nanoseconds on one clock),
//! and how it ended: `Ok` with its output and the response's Raft index, `Fail` (certainly
//! not applied), or `Unknown` (may or may not have taken effect).
//!
//! [`check`] runs every check on a history:
//!
//! - **Linearizability**, per key (P-compositionality), of a register with get, put, delete
//!   and compare-and-set, by a Wing-Gong search with Lowe's memoisation (the algorithm of
//!   porcupine): a stack of tentatively linearized operations, a cache of (set of linearized
//!   operations, register state) already explored, backtracking on a return that cannot be
//!   explained. An unknown operation returns "at infinity": it may be linearized anywhere
//!   after its invocation, including after everything else (as if never applied), and its
//!   output is not constrained. A search that runs past its time budget is a failure
//!   ([`Violation::CheckerTimeout`]), never a pass.
//! - **No value nobody wrote**: every value read was written by some put or compare-and-set
//!   of the same key (every write writes a value of its own).
//! - **No request applied twice**: every read of a value reports the same `modify_index`,
//!   and it is the index the write's own acknowledgement reported. A write applied a second
//!   time would show its value again at another index.
//! - **Indexes never go backwards**: for each client, the Raft index of each successful
//!   answer is at least that of its previous one (a client's operations are sequential).
//!
//! "No acknowledged write lost" is a linearizability check: the harness ends every history
//! with a read of every key after all faults are healed, and a lost acknowledged write makes
//! that read non-linearizable.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::time::{Duration, Instant};

/// A value written, identified by a number unique in the history (the harness encodes it in
/// the bytes it writes).
pub type ValueId = u32;

/// What an operation asks of one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// A linearizable read.
    Get,
    /// Set the key to a value.
    Put(ValueId),
    /// Remove the key.
    Delete,
    /// Set the key to `new` only if its value is `expected`.
    Cas {
        /// The value the key must hold.
        expected: ValueId,
        /// The value written if it does.
        new: ValueId,
    },
}

impl Input {
    /// Whether the operation may change the key.
    #[must_use]
    pub fn is_write(self) -> bool {
        !matches!(self, Input::Get)
    }

    /// The value this operation writes, if any.
    #[must_use]
    pub fn written(self) -> Option<ValueId> {
        match self {
            Input::Put(v) | Input::Cas { new: v, .. } => Some(v),
            Input::Get | Input::Delete => None,
        }
    }
}

/// What a successful operation answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// The value read (`None`: the key did not exist) and, when found, its `modify_index`.
    Get(Option<(ValueId, u64)>),
    /// A put was applied.
    Put,
    /// A delete was applied; whether it removed the key.
    Delete {
        /// The key existed.
        deleted: bool,
    },
    /// A compare-and-set was applied; whether the compare held.
    Cas {
        /// The value was `expected` and is now `new`.
        succeeded: bool,
    },
}

/// How an operation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Answered, with the response's Raft index.
    Ok {
        /// The answer.
        output: Output,
        /// `ResponseHeader.index`.
        index: u64,
    },
    /// Certainly not applied (the error says so).
    Fail(String),
    /// May or may not have taken effect.
    Unknown(String),
}

/// One operation of a history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    /// The client (one sequential session) that ran it.
    pub client: usize,
    /// The key.
    pub key: String,
    /// The request.
    pub input: Input,
    /// The request id of a write (empty for reads).
    pub request_id: String,
    /// Invocation time, nanoseconds since the history's start.
    pub invoke: u64,
    /// Completion time (for `Unknown`, when the client gave up).
    pub complete: u64,
    /// How it ended.
    pub outcome: Outcome,
}

/// Concurrent clients' operations, recorded on one clock.
#[derive(Debug)]
pub struct History {
    start: Instant,
    ops: std::sync::Mutex<Vec<Operation>>,
}

impl Default for History {
    fn default() -> Self {
        Self::new()
    }
}

impl History {
    /// An empty history whose clock starts now.
    #[must_use]
    pub fn new() -> Self {
        Self { start: Instant::now(), ops: std::sync::Mutex::new(Vec::new()) }
    }

    /// Nanoseconds since the start: take it just before sending and just after the answer.
    #[must_use]
    pub fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Records a completed operation.
    pub fn record(&self, op: Operation) {
        self.ops.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(op);
    }

    /// Every operation recorded so far.
    #[must_use]
    pub fn operations(&self) -> Vec<Operation> {
        self.ops.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
}

/// A property a history broke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// No order of the key's operations explains what the clients saw.
    NotLinearizable {
        /// The key.
        key: String,
        /// How many operations of the key were checked.
        ops: usize,
        /// The operations around the one that could not be explained.
        context: Vec<Operation>,
    },
    /// The search for the key ran past its budget (counts as a failure).
    CheckerTimeout {
        /// The key.
        key: String,
        /// How many operations of the key were checked.
        ops: usize,
    },
    /// A read returned a value no operation of that key writes.
    PhantomValue {
        /// The read.
        op: Box<Operation>,
    },
    /// A value was seen at two different indexes, or at another index than its write's
    /// acknowledgement: the write was applied more than once.
    AppliedTwice {
        /// The value.
        value: ValueId,
        /// The indexes it was seen at.
        indexes: Vec<u64>,
        /// The request id of its write.
        request_id: String,
    },
    /// A client saw an index lower than one it saw before.
    IndexWentBack {
        /// The client.
        client: usize,
        /// The higher index it saw first.
        before: u64,
        /// The operation answered with a lower one.
        op: Box<Operation>,
    },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::NotLinearizable { key, ops, context } => {
                writeln!(f, "key {key:?}: not linearizable ({ops} operations); around the first unexplained one:")?;
                for op in context {
                    writeln!(f, "    {op:?}")?;
                }
                Ok(())
            }
            Violation::CheckerTimeout { key, ops } => {
                write!(f, "key {key:?}: checker timed out on {ops} operations (counts as a failure)")
            }
            Violation::PhantomValue { op } => write!(f, "value nobody wrote: {op:?}"),
            Violation::AppliedTwice { value, indexes, request_id } => {
                write!(f, "value {value} (request id {request_id:?}) seen at indexes {indexes:?}: applied twice")
            }
            Violation::IndexWentBack { client, before, op } => {
                write!(f, "client {client}: index went back from {before}: {op:?}")
            }
        }
    }
}

/// What [`check`] found.
#[derive(Debug, Default)]
pub struct Report {
    /// Operations checked (every recorded one).
    pub operations: usize,
    /// Of those, answered `Ok`.
    pub ok: usize,
    /// Of those, `Unknown`.
    pub unknown: usize,
    /// Keys checked.
    pub keys: usize,
    /// Everything broken; empty when the history passes.
    pub violations: Vec<Violation>,
}

/// Runs every check on `ops`, giving the linearizability search of each key at most
/// `budget_per_key`.
#[must_use]
pub fn check(ops: &[Operation], budget_per_key: Duration) -> Report {
    let mut report = Report {
        operations: ops.len(),
        ok: ops.iter().filter(|o| matches!(o.outcome, Outcome::Ok { .. })).count(),
        unknown: ops.iter().filter(|o| matches!(o.outcome, Outcome::Unknown(_))).count(),
        ..Report::default()
    };
    check_values(ops, &mut report.violations);
    check_indexes(ops, &mut report.violations);
    let mut by_key: BTreeMap<&str, Vec<&Operation>> = BTreeMap::new();
    for op in ops {
        by_key.entry(op.key.as_str()).or_default().push(op);
    }
    report.keys = by_key.len();
    for (key, key_ops) in by_key {
        if let Err(v) = linearizable(key, &key_ops, budget_per_key) {
            report.violations.push(v);
        }
    }
    report
}

/// Phantom values and double application.
fn check_values(ops: &[Operation], violations: &mut Vec<Violation>) {
    // value → (key, request id, index its acknowledgement reported)
    let mut writes: HashMap<ValueId, (&str, &str, Option<u64>)> = HashMap::new();
    for op in ops {
        if let Some(v) = op.input.written() {
            let acked = match (&op.outcome, op.input) {
                (Outcome::Ok { index, .. }, Input::Put(_)) => Some(*index),
                (Outcome::Ok { index, output: Output::Cas { succeeded: true } }, Input::Cas { .. }) => Some(*index),
                _ => None,
            };
            writes.insert(v, (op.key.as_str(), op.request_id.as_str(), acked));
        }
    }
    let mut seen: BTreeMap<ValueId, Vec<u64>> = BTreeMap::new();
    for op in ops {
        if let Outcome::Ok { output: Output::Get(Some((v, modify_index))), .. } = op.outcome {
            match writes.get(&v) {
                Some((key, _, _)) if *key == op.key => seen.entry(v).or_default().push(modify_index),
                _ => violations.push(Violation::PhantomValue { op: Box::new(op.clone()) }),
            }
        }
    }
    for (v, mut indexes) in seen {
        let (_, request_id, acked) = writes[&v];
        indexes.extend(acked);
        indexes.sort_unstable();
        indexes.dedup();
        if indexes.len() > 1 {
            violations.push(Violation::AppliedTwice { value: v, indexes, request_id: request_id.to_string() });
        }
    }
}

/// Per client, an answer's index is at least that of every answer the client had before it
/// sent the request. (A client's operations are sequential, except a write of unknown outcome
/// that the harness resolved by sending it again at the end: it completes only then.)
fn check_indexes(ops: &[Operation], violations: &mut Vec<Violation>) {
    let mut by_client: BTreeMap<usize, Vec<&Operation>> = BTreeMap::new();
    for op in ops {
        by_client.entry(op.client).or_default().push(op);
    }
    for (client, client_ops) in by_client {
        let mut by_invoke = client_ops.clone();
        by_invoke.sort_by_key(|o| o.invoke);
        let mut by_complete: Vec<(u64, u64)> = client_ops
            .iter()
            .filter_map(|o| match o.outcome {
                Outcome::Ok { index, .. } => Some((o.complete, index)),
                _ => None,
            })
            .collect();
        by_complete.sort_unstable();
        let (mut done, mut highest) = (0, 0);
        for op in by_invoke {
            while done < by_complete.len() && by_complete[done].0 < op.invoke {
                highest = highest.max(by_complete[done].1);
                done += 1;
            }
            if let Outcome::Ok { index, .. } = op.outcome
                && index < highest
            {
                violations.push(Violation::IndexWentBack { client, before: highest, op: Box::new(op.clone()) });
            }
        }
    }
}

/// The register: the value the key holds, `None` when absent.
type State = Option<ValueId>;

/// Applies `input` to `state`; `None` if `output` (when known) cannot be its answer.
fn step(state: State, input: Input, output: Option<&Output>) -> Option<State> {
    match (input, output) {
        (Input::Get, Some(Output::Get(read))) => (read.map(|(v, _)| v) == state).then_some(state),
        (Input::Get, None) => Some(state),
        (Input::Put(v), None | Some(Output::Put)) => Some(Some(v)),
        (Input::Delete, None) => Some(None),
        (Input::Delete, Some(Output::Delete { deleted })) => (*deleted == state.is_some()).then_some(None),
        (Input::Cas { expected, new }, None) => Some(if state == Some(expected) { Some(new) } else { state }),
        (Input::Cas { expected, new }, Some(Output::Cas { succeeded })) => {
            let holds = state == Some(expected);
            (holds == *succeeded).then_some(if holds { Some(new) } else { state })
        }
        _ => None,
    }
}

/// A set of operations, as bits.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: usize) -> Self {
        Bits(vec![0; n.div_ceil(64)])
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
}

/// Wing-Gong with memoisation over one key's operations.
fn linearizable(key: &str, ops: &[&Operation], budget: Duration) -> Result<(), Violation> {
    // Reads that failed or whose outcome is unknown tell nothing; failed writes were not
    // applied. Everything else takes part.
    let ops: Vec<&Operation> = ops
        .iter()
        .copied()
        .filter(|o| match o.outcome {
            Outcome::Ok { .. } => true,
            Outcome::Unknown(_) => o.input.is_write(),
            Outcome::Fail(_) => false,
        })
        .collect();
    let n = ops.len();
    let output = |i: usize| match &ops[i].outcome {
        Outcome::Ok { output, .. } => Some(output),
        _ => None,
    };
    // Entries: a call and a return per operation, by time; unknown operations return at
    // infinity. At equal times calls come first (the operations overlap).
    let mut entries: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * n);
    for (i, op) in ops.iter().enumerate() {
        let ret = if output(i).is_some() { op.complete } else { u64::MAX };
        entries.push((op.invoke, true, i));
        entries.push((ret, false, i));
    }
    entries.sort_by_key(|&(t, is_call, i)| (t, !is_call, i));
    // A doubly linked list over entries; node 0 is the head, entry k is node k + 1.
    let len = entries.len() + 1;
    let mut next: Vec<usize> = (1..=len).collect();
    let mut prev: Vec<usize> = (0..len).map(|k| k.wrapping_sub(1)).collect();
    next[len - 1] = usize::MAX;
    let mut call_node = vec![0; n];
    let mut ret_node = vec![0; n];
    for (k, &(_, is_call, i)) in entries.iter().enumerate() {
        if is_call {
            call_node[i] = k + 1;
        } else {
            ret_node[i] = k + 1;
        }
    }
    let unlink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, node: usize| {
        let (p, q) = (prev[node], next[node]);
        next[p] = q;
        if q != usize::MAX {
            prev[q] = p;
        }
    };
    let relink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, node: usize| {
        let (p, q) = (prev[node], next[node]);
        next[p] = node;
        if q != usize::MAX {
            prev[q] = node;
        }
    };

    let started = Instant::now();
    let mut state: State = None;
    let mut linearized = Bits::new(n);
    let mut cache: HashSet<(Bits, State)> = HashSet::new();
    let mut stack: Vec<(usize, State)> = Vec::new();
    let mut deepest = (0usize, usize::MAX);
    let mut node = next[0];
    let mut steps = 0u64;
    while next[0] != usize::MAX {
        steps += 1;
        if steps.is_multiple_of(4096) && started.elapsed() > budget {
            return Err(Violation::CheckerTimeout { key: key.to_string(), ops: n });
        }
        let (_, is_call, i) = entries[node - 1];
        if is_call {
            let mut moved = false;
            if let Some(new_state) = step(state, ops[i].input, output(i)) {
                let mut bits = linearized.clone();
                bits.set(i);
                if cache.insert((bits.clone(), new_state)) {
                    stack.push((i, state));
                    state = new_state;
                    linearized = bits;
                    unlink(&mut next, &mut prev, call_node[i]);
                    unlink(&mut next, &mut prev, ret_node[i]);
                    node = next[0];
                    moved = true;
                }
            }
            if !moved {
                node = next[node];
            }
        } else {
            // A return whose call is still in the list: nothing explains it here; backtrack.
            if stack.len() >= deepest.0 || deepest.1 == usize::MAX {
                deepest = (stack.len(), i);
            }
            let Some((j, old_state)) = stack.pop() else {
                return Err(not_linearizable(key, &ops, deepest.1));
            };
            state = old_state;
            linearized.clear(j);
            relink(&mut next, &mut prev, ret_node[j]);
            relink(&mut next, &mut prev, call_node[j]);
            node = next[call_node[j]];
        }
    }
    Ok(())
}

fn not_linearizable(key: &str, ops: &[&Operation], blocked: usize) -> Violation {
    let mut sorted: Vec<&Operation> = ops.to_vec();
    sorted.sort_by_key(|o| o.invoke);
    let at = if blocked == usize::MAX { 0 } else { sorted.iter().position(|o| *o == ops[blocked]).unwrap_or(0) };
    let context = sorted[at.saturating_sub(6)..(at + 3).min(sorted.len())].iter().map(|o| (*o).clone()).collect();
    Violation::NotLinearizable { key: key.to_string(), ops: ops.len(), context }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUDGET: Duration = Duration::from_secs(10);

    /// An operation of client `c` on key "k" from `invoke` to `complete`.
    fn op(c: usize, invoke: u64, complete: u64, input: Input, outcome: Outcome) -> Operation {
        let request_id = if input.is_write() { format!("c{c}-{invoke}") } else { String::new() };
        Operation { client: c, key: "k".into(), input, request_id, invoke, complete, outcome }
    }
    fn ok(output: Output, index: u64) -> Outcome {
        Outcome::Ok { output, index }
    }
    fn unknown() -> Outcome {
        Outcome::Unknown("timeout".into())
    }
    fn read(v: Option<(ValueId, u64)>, index: u64) -> Outcome {
        ok(Output::Get(v), index)
    }
    fn linear(ops: &[Operation]) -> bool {
        let r = check(ops, BUDGET);
        assert!(
            !r.violations.iter().any(|v| matches!(v, Violation::CheckerTimeout { .. })),
            "timed out: {:?}",
            r.violations
        );
        r.violations.is_empty()
    }

    #[test]
    fn sequential_history_is_linearizable() {
        let h = [
            op(0, 0, 10, Input::Put(1), ok(Output::Put, 5)),
            op(0, 20, 30, Input::Get, read(Some((1, 5)), 5)),
            op(0, 40, 50, Input::Cas { expected: 1, new: 2 }, ok(Output::Cas { succeeded: true }, 6)),
            op(0, 60, 70, Input::Cas { expected: 1, new: 3 }, ok(Output::Cas { succeeded: false }, 7)),
            op(0, 80, 90, Input::Get, read(Some((2, 6)), 7)),
            op(0, 100, 110, Input::Delete, ok(Output::Delete { deleted: true }, 8)),
            op(0, 120, 130, Input::Get, read(None, 8)),
            op(0, 140, 150, Input::Delete, ok(Output::Delete { deleted: false }, 9)),
        ];
        assert!(linear(&h));
    }

    #[test]
    fn concurrent_operations_may_take_effect_in_either_order() {
        // Two overlapping puts; readers after both see the one ordered last, both agree.
        let h = [
            op(0, 0, 100, Input::Put(1), ok(Output::Put, 6)),
            op(1, 10, 90, Input::Put(2), ok(Output::Put, 5)),
            op(2, 20, 30, Input::Get, read(Some((2, 5)), 5)),
            op(2, 200, 210, Input::Get, read(Some((1, 6)), 6)),
            op(3, 220, 230, Input::Get, read(Some((1, 6)), 6)),
        ];
        assert!(linear(&h));
    }

    #[test]
    fn stale_read_is_caught() {
        // A read that starts after a put was acknowledged must see it.
        let h = [
            op(0, 0, 10, Input::Put(1), ok(Output::Put, 5)),
            op(0, 20, 30, Input::Put(2), ok(Output::Put, 6)),
            op(1, 40, 50, Input::Get, read(Some((1, 5)), 6)),
        ];
        assert!(!linear(&h));
        // The same read overlapping the second put is fine.
        let h = [
            op(0, 0, 10, Input::Put(1), ok(Output::Put, 5)),
            op(0, 20, 45, Input::Put(2), ok(Output::Put, 6)),
            op(1, 40, 50, Input::Get, read(Some((1, 5)), 6)),
        ];
        assert!(linear(&h));
    }

    #[test]
    fn lost_acknowledged_write_is_caught() {
        let h = [
            op(0, 0, 10, Input::Put(1), ok(Output::Put, 5)),
            op(1, 5, 15, Input::Put(2), ok(Output::Put, 6)),
            // the final read after everything: absent, though two puts were acknowledged
            op(9, 100, 110, Input::Get, read(None, 9)),
        ];
        assert!(!linear(&h));
    }

    #[test]
    fn reads_going_back_in_time_are_caught() {
        // Two sequential reads: new value, then old value again.
        let h = [
            op(0, 0, 100, Input::Put(1), ok(Output::Put, 5)),
            op(0, 110, 300, Input::Put(2), ok(Output::Put, 6)),
            op(1, 120, 130, Input::Get, read(Some((2, 6)), 6)),
            op(1, 140, 150, Input::Get, read(Some((1, 5)), 6)),
        ];
        assert!(!linear(&h));
    }

    #[test]
    fn unknown_writes_may_or_may_not_take_effect() {
        // Taken effect: a later read sees it.
        let h = [
            op(0, 0, 10, Input::Put(1), ok(Output::Put, 5)),
            op(1, 20, 30, Input::Put(2), unknown()),
            op(2, 40, 50, Input::Get, read(Some((2, 6)), 6)),
        ];
        assert!(linear(&h));
        // Not taken effect: later reads never see it.
        let h = [
            op(0, 0, 10, Input::Put(1), ok(Output::Put, 5)),
            op(1, 20, 30, Input::Put(2), unknown()),
            op(2, 40, 50, Input::Get, read(Some((1, 5)), 6)),
        ];
        assert!(linear(&h));
        // But it cannot take effect before it was invoked.
        let h = [
            op(0, 0, 10, Input::Put(1), ok(Output::Put, 5)),
            op(2, 12, 15, Input::Get, read(Some((2, 6)), 6)),
            op(1, 20, 30, Input::Put(2), unknown()),
        ];
        assert!(!linear(&h));
        // Nor flicker: seen, then gone, then seen again.
        let h = [
            op(0, 0, 10, Input::Put(1), ok(Output::Put, 5)),
            op(1, 20, 30, Input::Put(2), unknown()),
            op(2, 40, 50, Input::Get, read(Some((2, 6)), 6)),
            op(2, 60, 70, Input::Get, read(Some((1, 5)), 6)),
        ];
        assert!(!linear(&h));
    }

    #[test]
    fn failed_writes_never_take_effect() {
        let h = [
            op(0, 0, 10, Input::Put(1), ok(Output::Put, 5)),
            op(1, 20, 30, Input::Put(2), Outcome::Fail("not leader".into())),
            op(2, 40, 50, Input::Get, read(Some((2, 6)), 6)),
        ];
        assert!(!linear(&h));
    }

    #[test]
    fn compare_and_set_outcomes_are_checked() {
        // Both CAS from 1 succeed: impossible, the second must see 2 or 3.
        let h = [
            op(0, 0, 10, Input::Put(1), ok(Output::Put, 5)),
            op(1, 20, 30, Input::Cas { expected: 1, new: 2 }, ok(Output::Cas { succeeded: true }, 6)),
            op(2, 25, 35, Input::Cas { expected: 1, new: 3 }, ok(Output::Cas { succeeded: true }, 7)),
        ];
        assert!(!linear(&h));
        // A CAS that failed although the key held its expected value.
        let h = [
            op(0, 0, 10, Input::Put(1), ok(Output::Put, 5)),
            op(1, 20, 30, Input::Cas { expected: 1, new: 2 }, ok(Output::Cas { succeeded: false }, 6)),
        ];
        assert!(!linear(&h));
        // A delete that says it deleted nothing although the key existed.
        let h = [
            op(0, 0, 10, Input::Put(1), ok(Output::Put, 5)),
            op(1, 20, 30, Input::Delete, ok(Output::Delete { deleted: false }, 6)),
        ];
        assert!(!linear(&h));
    }

    #[test]
    fn phantom_value_is_caught() {
        let h = [op(0, 0, 10, Input::Put(1), ok(Output::Put, 5)), op(1, 20, 30, Input::Get, read(Some((7, 5)), 5))];
        let r = check(&h, BUDGET);
        assert!(r.violations.iter().any(|v| matches!(v, Violation::PhantomValue { .. })), "{:?}", r.violations);
    }

    #[test]
    fn double_application_is_caught() {
        // The put's value is read at its own index and later at another one: it was applied
        // again (say, a retry with the same request id that was not deduplicated).
        let h = [
            op(0, 0, 10, Input::Put(1), ok(Output::Put, 5)),
            op(1, 20, 30, Input::Get, read(Some((1, 5)), 5)),
            op(1, 40, 50, Input::Get, read(Some((1, 9)), 9)),
        ];
        let r = check(&h, BUDGET);
        assert!(r.violations.iter().any(|v| matches!(v, Violation::AppliedTwice { .. })), "{:?}", r.violations);
    }

    #[test]
    fn index_going_back_is_caught() {
        let h = [op(0, 0, 10, Input::Put(1), ok(Output::Put, 9)), op(0, 20, 30, Input::Get, read(Some((1, 9)), 7))];
        let r = check(&h, BUDGET);
        assert!(r.violations.iter().any(|v| matches!(v, Violation::IndexWentBack { .. })), "{:?}", r.violations);
    }

    #[test]
    fn a_search_past_its_budget_fails() {
        // Many concurrent unknown puts and reads that force a deep search; with no time at
        // all the checker must report a time-out, not a pass.
        let mut h = Vec::new();
        for c in 0..40u32 {
            h.push(op(c as usize, 0, 0, Input::Put(c + 1), unknown()));
        }
        for c in 0..40u32 {
            h.push(op(100 + c as usize, 10, 20, Input::Get, read(Some((c + 1, 5)), 5)));
        }
        let r = check(&h, Duration::ZERO);
        assert!(r.violations.iter().any(|v| matches!(v, Violation::CheckerTimeout { .. })), "{:?}", r.violations);
    }

    /// A tiny deterministic generator, so the tests need no dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// Brute force: tries every order of the operations consistent with real time.
    fn brute_force(ops: &[Operation]) -> bool {
        fn go(ops: &[Operation], done: &mut Vec<bool>, state: State) -> bool {
            if done.iter().all(|d| *d) {
                return true;
            }
            let pending: Vec<usize> = (0..ops.len()).filter(|i| !done[*i]).collect();
            for &i in &pending {
                // i may go next only if no pending op completed before i was invoked.
                let ret = |j: usize| match ops[j].outcome {
                    Outcome::Ok { .. } => ops[j].complete,
                    _ => u64::MAX,
                };
                if pending.iter().any(|&j| j != i && ret(j) < ops[i].invoke) {
                    continue;
                }
                let out = match &ops[i].outcome {
                    Outcome::Ok { output, .. } => Some(output),
                    _ => None,
                };
                if let Some(s) = step(state, ops[i].input, out) {
                    done[i] = true;
                    if go(ops, done, s) {
                        return true;
                    }
                    done[i] = false;
                }
            }
            false
        }
        let ops: Vec<Operation> = ops
            .iter()
            .filter(|o| {
                matches!(o.outcome, Outcome::Ok { .. })
                    || (matches!(o.outcome, Outcome::Unknown(_)) && o.input.is_write())
            })
            .cloned()
            .collect();
        go(&ops, &mut vec![false; ops.len()], None)
    }

    #[test]
    fn agrees_with_brute_force_on_random_small_histories() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let (mut linear_seen, mut violating_seen) = (0, 0);
        for _ in 0..3000 {
            let n = 1 + rng.below(7) as usize;
            let mut h = Vec::new();
            let mut next_value = 1;
            for c in 0..n {
                let invoke = rng.below(50);
                let complete = invoke + rng.below(30);
                let known_value = |rng: &mut Rng| {
                    let v = rng.below(next_value as u64 + 1) as ValueId;
                    if v == 0 { None } else { Some((v, 0)) }
                };
                let (input, outcome) = match rng.below(4) {
                    0 => (Input::Get, read(known_value(&mut rng), 0)),
                    1 => {
                        next_value += 1;
                        (Input::Put(next_value - 1), if rng.below(4) == 0 { unknown() } else { ok(Output::Put, 0) })
                    }
                    2 => (Input::Delete, ok(Output::Delete { deleted: rng.below(2) == 0 }, 0)),
                    _ => {
                        next_value += 1;
                        let expected = 1 + rng.below(next_value as u64) as ValueId;
                        (
                            Input::Cas { expected, new: next_value - 1 },
                            if rng.below(4) == 0 {
                                unknown()
                            } else {
                                ok(Output::Cas { succeeded: rng.below(2) == 0 }, 0)
                            },
                        )
                    }
                };
                h.push(op(c, invoke, complete, input, outcome));
            }
            let mut by_lin = Vec::new();
            let refs: Vec<&Operation> = h.iter().collect();
            by_lin.push(linearizable("k", &refs, BUDGET).is_ok());
            let expected = brute_force(&h);
            assert_eq!(by_lin[0], expected, "disagreement on {h:#?}");
            if expected {
                linear_seen += 1;
            } else {
                violating_seen += 1;
            }
        }
        assert!(linear_seen > 300 && violating_seen > 300, "{linear_seen} linearizable, {violating_seen} not");
    }
}
