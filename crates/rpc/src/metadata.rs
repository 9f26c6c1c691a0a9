//! The metadata keys raftkv sets and reads, declared once.

/// The id of the leader, on `UNAVAILABLE` answers from a non-leader.
pub const LEADER_ID_HEADER: &str = "x-raftkv-leader-id";
/// The gRPC address of the leader, on `UNAVAILABLE` answers from a non-leader.
pub const LEADER_ADDR_HEADER: &str = "x-raftkv-leader-addr";
/// A key's current `modify_index`, on a failed precondition (0: absent).
pub const CURRENT_INDEX_HEADER: &str = "x-raftkv-current-index";
/// `true` when the request was certainly not applied and may be retried as is; `false`
/// otherwise. Clients retry only on `true`.
pub const RETRYABLE_HEADER: &str = "x-raftkv-retryable";
/// The oldest index a watch can start from, on a "compacted" answer.
pub const OLDEST_INDEX_HEADER: &str = "x-raftkv-oldest-index";
/// The index a watch stream that ended should resume from (every change before it was
/// sent).
pub const RESUME_INDEX_HEADER: &str = "x-raftkv-resume-index";
/// Set on a forwarded request. A node that receives it never forwards again, so a request
/// is forwarded at most once and never bounces between nodes.
pub const FORWARDED_HEADER: &str = "x-raftkv-forwarded";
/// A client sets it to `true` to ask for no forwarding: a non-leader then answers
/// `UNAVAILABLE` with the leader's id and address.
pub const NO_FORWARD_HEADER: &str = "x-raftkv-no-forward";
/// The bearer token of an authenticated call (`Bearer <token>`), when the cluster has
/// authentication on. Never logged.
pub const AUTHORIZATION_HEADER: &str = "authorization";
