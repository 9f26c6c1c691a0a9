//! The retry rule of [`Client::run`](crate::Client), as a pure decision ([`decide`]) over a
//! failed call's status, and the endpoint order the loop walks ([`Attempts`]).
//!
//! The rule: a call that certainly never left this process (the connection could not be
//! remade) moves on to the next endpoint and is not counted as a retry. Otherwise it is
//! retried, up to the client's limit, only when that is safe: the server marked it
//! retryable (`x-raftkv-retryable: true`: certainly not applied), or it is a read and the
//! transport failed, or it is a write with a request id (applied at most once) and the
//! transport failed or its outcome is unknown. A retry goes to the leader when the status
//! names it (`x-raftkv-leader-addr`), else to the next endpoint.

use std::time::Duration;

use rpc::metadata::{LEADER_ADDR_HEADER, RETRYABLE_HEADER};

use crate::never_sent;

/// Whether the call may be retried after a failure that is not marked retryable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A read: retrying cannot change anything.
    Read,
    /// A write: retried only when the server says it was not applied.
    Write,
    /// A write with a request id: retrying it is safe, the server applies it at most once.
    IdempotentWrite,
}

/// What to do after a failed call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Decision {
    /// Drop the pooled channel to this endpoint (the transport failed), so the next call
    /// connects afresh.
    pub(crate) forget_channel: bool,
    /// Where to go next.
    pub(crate) next: Step,
}

/// Where the loop goes after a failed call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    /// Nothing was sent: try the next endpoint at once, as after a failed connect; not a retry.
    NextEndpoint,
    /// Retry after a backoff: at the leader's address when the status names it, else at
    /// the next endpoint.
    Retry {
        /// The leader's client address, from the status.
        leader: Option<String>,
    },
    /// Return the status to the caller.
    Fail,
}

/// The retry rule (see the module documentation): what to do after `status`, for a call of
/// `kind` that has been retried `retries` times of at most `max_retries`.
pub(crate) fn decide(kind: Kind, status: &tonic::Status, retries: u32, max_retries: u32) -> Decision {
    let marked = status.metadata().get(RETRYABLE_HEADER).map(|v| v.to_str().ok() == Some("true"));
    let transport = marked.is_none() && status.code() == tonic::Code::Unavailable;
    if marked.is_none() && never_sent(status) {
        return Decision { forget_channel: true, next: Step::NextEndpoint };
    }
    // With a request id, an unknown outcome is safe to retry too.
    let unknown = matches!(status.code(), tonic::Code::Unknown | tonic::Code::DeadlineExceeded);
    let may_retry = marked == Some(true)
        || (kind == Kind::Read && transport)
        || (kind == Kind::IdempotentWrite && (transport || unknown));
    let next =
        if may_retry && retries < max_retries { Step::Retry { leader: leader_hint(status) } } else { Step::Fail };
    Decision { forget_channel: transport, next }
}

fn leader_hint(status: &tonic::Status) -> Option<String> {
    status.metadata().get(LEADER_ADDR_HEADER).and_then(|v| v.to_str().ok()).map(String::from)
}

/// The endpoints one call walks: in order from the preferred one, restarting at the leader
/// when a status names it; with the retry count, the backoff and the last connect error.
#[derive(Debug)]
pub(crate) struct Attempts {
    pub(crate) endpoints: Vec<String>,
    order: Vec<usize>,
    cursor: usize,
    pub(crate) retries: u32,
    backoff: Duration,
    pub(crate) last_connect_error: String,
    /// How many endpoints of this round refused the connection at the TLS handshake
    /// because their certificate failed verification (which retrying cannot change).
    certificate_refusals: usize,
}

impl Attempts {
    /// The first backoff; it doubles after each use, up to [`MAX_BACKOFF`].
    const FIRST_BACKOFF: Duration = Duration::from_millis(50);

    /// Starts at `preferred` (modulo the count); `endpoints` must not be empty.
    pub(crate) fn new(endpoints: Vec<String>, preferred: usize) -> Self {
        let n = endpoints.len().max(1);
        let start = preferred % n;
        let order = (0..endpoints.len()).map(|i| (start + i) % n).collect();
        let backoff = Self::FIRST_BACKOFF;
        Self {
            endpoints,
            order,
            cursor: 0,
            retries: 0,
            backoff,
            last_connect_error: String::new(),
            certificate_refusals: 0,
        }
    }

    /// Whether every endpoint of this round was tried.
    pub(crate) fn round_done(&self) -> bool {
        self.cursor >= self.order.len()
    }

    /// Starts the next round from the first endpoint of the order.
    pub(crate) fn restart_round(&mut self) {
        self.cursor = 0;
        self.certificate_refusals = 0;
    }

    /// The current endpoint's certificate failed verification (`error`); go on to the next
    /// one.
    pub(crate) fn certificate_refused(&mut self, error: String) {
        self.certificate_refusals += 1;
        self.unreachable(error);
    }

    /// Whether every endpoint of this round failed certificate verification: another round
    /// would fail the same way.
    pub(crate) fn all_certificates_refused(&self) -> bool {
        self.round_done() && self.certificate_refusals >= self.order.len()
    }

    /// The endpoint to try now: its index and address. Only when the round is not done.
    pub(crate) fn current(&self) -> (usize, String) {
        let idx = self.order[self.cursor];
        (idx, self.endpoints[idx].clone())
    }

    /// The current endpoint could not be reached (`error`); go on to the next one.
    pub(crate) fn unreachable(&mut self, error: String) {
        self.last_connect_error = error;
        self.cursor += 1;
    }

    /// After a retryable failure: the next endpoint, wrapping round.
    pub(crate) fn next_endpoint(&mut self) {
        self.cursor += 1;
        if self.cursor >= self.order.len() {
            self.cursor = 0;
        }
    }

    /// After a failure that names the leader: go to `leader` first, then the others.
    /// Returns whether `leader` was not an endpoint yet (it is added).
    pub(crate) fn follow(&mut self, leader: String) -> bool {
        let known = self.endpoints.iter().position(|e| *e == leader);
        let pos = known.unwrap_or_else(|| {
            self.endpoints.push(leader);
            self.endpoints.len() - 1
        });
        self.order = std::iter::once(pos).chain((0..self.endpoints.len()).filter(|i| *i != pos)).collect();
        self.cursor = 0;
        known.is_none()
    }

    /// The pause before the next attempt; each one is twice the last, up to [`MAX_BACKOFF`].
    pub(crate) fn backoff(&mut self) -> Duration {
        let pause = self.backoff;
        self.backoff = (pause * 2).min(MAX_BACKOFF);
        pause
    }
}

/// The longest pause between two attempts.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use tonic::Code;
    use tonic::metadata::MetadataValue;

    use super::*;

    const ALL: [Kind; 3] = [Kind::Read, Kind::Write, Kind::IdempotentWrite];

    fn status(
        code: Code,
        message: &str,
        retryable: Option<&'static str>,
        leader: Option<&'static str>,
    ) -> tonic::Status {
        let mut s = tonic::Status::new(code, message);
        if let Some(r) = retryable {
            s.metadata_mut().insert(RETRYABLE_HEADER, MetadataValue::from_static(r));
        }
        if let Some(l) = leader {
            s.metadata_mut().insert(LEADER_ADDR_HEADER, MetadataValue::from_static(l));
        }
        s
    }

    fn retry(leader: Option<&str>) -> Step {
        Step::Retry { leader: leader.map(String::from) }
    }

    #[test]
    fn a_round_of_certificate_refusals_ends_the_retries_and_any_other_failure_does_not() {
        let mut at = Attempts::new(vec!["a:1".into(), "b:2".into()], 0);
        at.certificate_refused("a:1: invalid peer certificate".into());
        assert!(!at.all_certificates_refused(), "the round is not done");
        at.certificate_refused("b:2: invalid peer certificate".into());
        assert!(at.all_certificates_refused());
        at.restart_round();
        at.certificate_refused("a:1: invalid peer certificate".into());
        at.unreachable("b:2: connection refused".into());
        assert!(at.round_done() && !at.all_certificates_refused(), "b may come back");
    }

    #[test]
    fn not_leader_with_an_address_is_retried_at_the_leader_for_every_kind() {
        let s = status(Code::FailedPrecondition, "not the leader", Some("true"), Some("10.0.0.2:40051"));
        for kind in ALL {
            let d = decide(kind, &s, 0, 8);
            assert_eq!(d, Decision { forget_channel: false, next: retry(Some("10.0.0.2:40051")) }, "{kind:?}");
        }
    }

    #[test]
    fn not_leader_without_an_address_is_retried_at_the_next_endpoint() {
        let s = status(Code::Unavailable, "no leader known", Some("true"), None);
        for kind in ALL {
            // Marked by the server, so not a transport failure: the channel is kept.
            assert_eq!(decide(kind, &s, 3, 8), Decision { forget_channel: false, next: retry(None) }, "{kind:?}");
        }
    }

    #[test]
    fn a_transport_failure_is_retried_for_reads_and_writes_with_an_id_only() {
        let s = status(Code::Unavailable, "connection reset", None, None);
        let expect = |next| Decision { forget_channel: true, next };
        assert_eq!(decide(Kind::Read, &s, 0, 8), expect(retry(None)));
        assert_eq!(decide(Kind::IdempotentWrite, &s, 0, 8), expect(retry(None)));
        assert_eq!(decide(Kind::Write, &s, 0, 8), expect(Step::Fail), "a write's outcome is unknown");
    }

    #[test]
    fn an_unknown_outcome_is_retried_only_with_a_request_id() {
        for code in [Code::DeadlineExceeded, Code::Unknown] {
            let s = status(code, "deadline", None, None);
            let expect = |next| Decision { forget_channel: false, next };
            assert_eq!(decide(Kind::IdempotentWrite, &s, 0, 8), expect(retry(None)), "{code:?}");
            assert_eq!(decide(Kind::Write, &s, 0, 8), expect(Step::Fail), "{code:?}");
            assert_eq!(decide(Kind::Read, &s, 0, 8), expect(Step::Fail), "{code:?}: a read past its deadline");
        }
    }

    #[test]
    fn a_call_never_sent_moves_on_without_counting_a_retry() {
        let mut refused = status(Code::Unavailable, "transport error", None, None);
        refused.set_source(std::sync::Arc::new(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)));
        let cancelled = status(Code::Cancelled, "operation was canceled: connection closed", None, None);
        for s in [&refused, &cancelled] {
            for kind in ALL {
                // Even with no retries left: nothing was sent, so another endpoint is safe.
                let d = decide(kind, s, 8, 8);
                assert_eq!(d, Decision { forget_channel: true, next: Step::NextEndpoint }, "{kind:?} {s:?}");
            }
        }
    }

    #[test]
    fn a_marked_status_is_not_read_as_a_transport_failure() {
        // A server's answer that says "not retryable" is final, whatever the code or text.
        let s = status(Code::Unavailable, "tcp connect error", Some("false"), None);
        for kind in ALL {
            assert_eq!(decide(kind, &s, 0, 8), Decision { forget_channel: false, next: Step::Fail }, "{kind:?}");
        }
    }

    #[test]
    fn other_errors_are_returned() {
        for code in [Code::InvalidArgument, Code::NotFound, Code::FailedPrecondition, Code::ResourceExhausted] {
            let s = status(code, "no", None, None);
            for kind in ALL {
                assert_eq!(decide(kind, &s, 0, 8).next, Step::Fail, "{code:?} {kind:?}");
            }
        }
    }

    #[test]
    fn retries_stop_at_the_limit() {
        let s = status(Code::Unavailable, "not leader", Some("true"), Some("h:1"));
        assert_eq!(decide(Kind::Read, &s, 7, 8).next, retry(Some("h:1")));
        assert_eq!(decide(Kind::Read, &s, 8, 8).next, Step::Fail);
        assert_eq!(decide(Kind::Read, &s, 0, 0).next, Step::Fail, "max_retries 0: never retried");
    }

    fn names(a: &Attempts) -> Vec<String> {
        let mut a = Attempts { order: a.order.clone(), endpoints: a.endpoints.clone(), ..Attempts::new(vec![], 0) };
        let mut seen = Vec::new();
        while !a.round_done() {
            seen.push(a.current().1);
            a.unreachable(String::new());
        }
        seen
    }

    #[test]
    fn attempts_start_at_the_preferred_endpoint_and_follow_the_leader() {
        let eps = || vec!["a:1".to_string(), "b:1".to_string(), "c:1".to_string()];
        assert_eq!(names(&Attempts::new(eps(), 4)), ["b:1", "c:1", "a:1"]);
        let mut a = Attempts::new(eps(), 0);
        assert!(!a.follow("c:1".into()), "a known endpoint");
        assert_eq!(names(&a), ["c:1", "a:1", "b:1"]);
        assert!(a.follow("d:1".into()), "a new endpoint is added");
        assert_eq!(names(&a), ["d:1", "a:1", "b:1", "c:1"]);
        a.next_endpoint();
        a.next_endpoint();
        a.next_endpoint();
        a.next_endpoint();
        assert_eq!(a.current().1, "d:1", "next_endpoint wraps round");
    }

    #[test]
    fn the_backoff_doubles_up_to_a_second() {
        let mut a = Attempts::new(vec!["a:1".into()], 0);
        let pauses: Vec<u128> = (0..7).map(|_| a.backoff().as_millis()).collect();
        assert_eq!(pauses, [50, 100, 200, 400, 800, 1000, 1000]);
    }
}
