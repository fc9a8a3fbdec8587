//! The lease rule: which messages move to which node when their owner has
//! been silent too long. A pure function of what the leader knows, called
//! by the binary's lease timer and by the lease simulation (tests/lease_sim.rs).

use std::collections::BTreeSet;
use std::time::Duration;

use hamail_types::{Command, NodeId};

/// What the leader knows when it checks the leases.
pub struct LeaderView<'a> {
    /// The leader itself.
    pub me: NodeId,
    /// How long it has been the leader.
    pub leader_for: Duration,
    /// The voters: the nodes messages may be handed to.
    pub voters: &'a [NodeId],
    /// Whether a node is in the membership (a removed node's messages move
    /// at once).
    pub is_member: &'a dyn Fn(NodeId) -> bool,
    /// How long ago the leader last heard from a node, if ever.
    pub silent_for: &'a dyn Fn(NodeId) -> Option<Duration>,
}

/// One hand-over: every message of `from` goes to the nodes `to` (in turn),
/// each with its lease epoch + 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handover {
    pub from: NodeId,
    pub to: Vec<NodeId>,
}

impl Handover {
    pub fn command(&self) -> Command {
        Command::QueueReassign {
            from: self.from,
            to: self.to.clone(),
        }
    }
}

/// A node counts as alive (a receiver of messages) when the leader heard
/// from it within this long: a tenth of the lease, at least 3 s.
pub fn alive_window(lease: Duration) -> Duration {
    Duration::from_millis(3000).max(lease / 10)
}

/// The hand-overs due now, for the owners of queued messages `owners`.
///
/// A new leader waits a whole lease first (it has not watched anyone for
/// that long). An owner is lost when it is no longer a member, or the
/// leader has not heard from it for `lease`; its messages go to the voters
/// heard from within [`alive_window`] (the leader included), if any.
pub fn handovers(
    view: &LeaderView<'_>,
    owners: &BTreeSet<NodeId>,
    lease: Duration,
) -> Vec<Handover> {
    if view.leader_for < lease {
        return Vec::new();
    }
    let me = view.me;
    let alive =
        |id: NodeId| id == me || (view.silent_for)(id).is_some_and(|s| s < alive_window(lease));
    let lost = |id: NodeId| {
        id != me && (!(view.is_member)(id) || (view.silent_for)(id).is_none_or(|s| s >= lease))
    };
    let live: Vec<NodeId> = view
        .voters
        .iter()
        .copied()
        .filter(|id| alive(*id))
        .collect();
    owners
        .iter()
        .copied()
        .filter(|o| lost(*o))
        .filter_map(|from| {
            let to: Vec<NodeId> = live.iter().copied().filter(|n| *n != from).collect();
            (!to.is_empty()).then_some(Handover { from, to })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(30);

    fn view<'a>(
        leader_for: Duration,
        members: &'a dyn Fn(NodeId) -> bool,
        silent: &'a dyn Fn(NodeId) -> Option<Duration>,
    ) -> LeaderView<'a> {
        LeaderView {
            me: 1,
            leader_for,
            voters: &[1, 2, 3],
            is_member: members,
            silent_for: silent,
        }
    }

    #[test]
    fn a_silent_owner_hands_its_messages_to_the_live_voters() {
        let silent = |id: NodeId| match id {
            2 => Some(Duration::from_secs(31)),
            3 => Some(Duration::from_secs(1)),
            _ => None,
        };
        let all = |_: NodeId| true;
        let owners = BTreeSet::from([1, 2, 3]);
        let v = view(LEASE, &all, &silent);
        assert_eq!(
            handovers(&v, &owners, LEASE),
            vec![Handover {
                from: 2,
                to: vec![1, 3]
            }]
        );
        // A new leader waits a lease first.
        let v = view(LEASE / 2, &all, &silent);
        assert!(handovers(&v, &owners, LEASE).is_empty());
    }

    #[test]
    fn a_removed_owner_moves_at_once_and_a_never_heard_one_after_the_lease() {
        let silent = |id: NodeId| (id == 3).then_some(Duration::from_secs(1));
        let members = |id: NodeId| id != 9;
        let owners = BTreeSet::from([2, 9]);
        let v = view(LEASE, &members, &silent);
        assert_eq!(
            handovers(&v, &owners, LEASE),
            vec![
                Handover {
                    from: 2,
                    to: vec![1, 3]
                },
                Handover {
                    from: 9,
                    to: vec![1, 3]
                }
            ]
        );
    }
}
