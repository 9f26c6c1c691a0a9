//! Alarms: conditions a member raises through the log so that every node acts on them at
//! the same index (etcd's alarms, which are Raft entries too).

use serde::{Deserialize, Serialize};

use crate::NodeId;

/// What an alarm is about.
///
/// New kinds are only ever added at the end (postcard encodes a variant by its position).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum AlarmKind {
    /// A member's storage is at its quota or its filesystem is short of free space: the
    /// cluster refuses writes that add data until the alarm is cleared (etcd's `NOSPACE`).
    NoSpace,
}

impl AlarmKind {
    /// The name operators see (etcd's spelling).
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            AlarmKind::NoSpace => "NOSPACE",
        }
    }
}

impl std::fmt::Display for AlarmKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Raise or clear an alarm.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AlarmAction {
    /// Raise it, with what the member measured.
    Raise {
        /// One sentence: what is short, by how much.
        detail: String,
    },
    /// Clear it.
    Clear,
}

/// A change to the cluster's alarms, carried by the log ([`crate::Command::Alarm`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlarmCommand {
    /// The member the alarm is about.
    pub member: NodeId,
    /// Which alarm.
    pub kind: AlarmKind,
    /// Raise or clear.
    pub action: AlarmAction,
}

/// An active alarm, as the state machine keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alarm {
    /// The member the alarm is about.
    pub member: NodeId,
    /// Which alarm.
    pub kind: AlarmKind,
    /// What the member measured when it raised it.
    pub detail: String,
    /// The log index of the entry that raised it.
    pub index: u64,
}

/// Applies `cmd` (at log index `index`) to the active alarms `alarms`; returns whether they
/// changed. Raising an active alarm again keeps the first one.
pub fn apply_alarm(alarms: &mut Vec<Alarm>, cmd: &AlarmCommand, index: u64) -> bool {
    let position = alarms.iter().position(|a| a.member == cmd.member && a.kind == cmd.kind);
    match (&cmd.action, position) {
        (AlarmAction::Raise { detail }, None) => {
            alarms.push(Alarm { member: cmd.member.clone(), kind: cmd.kind, detail: detail.clone(), index });
            alarms.sort_by(|a, b| (&a.member, a.kind).cmp(&(&b.member, b.kind)));
            true
        }
        (AlarmAction::Clear, Some(i)) => {
            alarms.remove(i);
            true
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(member: &str, action: AlarmAction) -> AlarmCommand {
        AlarmCommand {
            member: NodeId::new(member).unwrap_or_else(|_| NodeId::from(1)),
            kind: AlarmKind::NoSpace,
            action,
        }
    }

    #[test]
    fn raise_is_idempotent_and_clear_removes() {
        let mut alarms = Vec::new();
        assert!(apply_alarm(&mut alarms, &cmd("b", AlarmAction::Raise { detail: "full".into() }), 5));
        assert!(!apply_alarm(&mut alarms, &cmd("b", AlarmAction::Raise { detail: "again".into() }), 6));
        assert!(apply_alarm(&mut alarms, &cmd("a", AlarmAction::Raise { detail: "x".into() }), 7));
        assert_eq!(alarms.iter().map(|a| (a.member.as_str(), a.index)).collect::<Vec<_>>(), [("a", 7), ("b", 5)]);
        assert_eq!(alarms[1].detail, "full");
        assert!(apply_alarm(&mut alarms, &cmd("b", AlarmAction::Clear), 8));
        assert!(!apply_alarm(&mut alarms, &cmd("b", AlarmAction::Clear), 9));
        assert_eq!(alarms.len(), 1);
        assert_eq!(AlarmKind::NoSpace.to_string(), "NOSPACE");
    }
}
