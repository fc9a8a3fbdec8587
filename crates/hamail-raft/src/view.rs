//! `cluster status`: the cluster as the leader sees it (asked over RPC),
//! or as this node does when no leader answers.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use crate::NodeInfo;
use crate::RaftNode;
use crate::cluster::{Cluster, ClusterError};
use crate::forward::leader_info;
use crate::rpc::{ClusterView, MemberView, RpcRequest, RpcResponse};
use hamail_types::NodeId;

impl Cluster {
    pub async fn status(&self) -> Result<ClusterView, ClusterError> {
        let (node, _) = self.require_node().await?;
        if let Some((leader, info)) = leader_info(&node.raft)
            && leader != node.node_id()
            && let Ok(RpcResponse::Status(Ok(view))) =
                node.ask_leader(leader, &info, RpcRequest::Status).await
        {
            return Ok(view);
        }
        Ok(local_view(&node))
    }
}

/// Every member (voters and learners) of the membership this node holds,
/// with what it registered.
pub(crate) fn members(node: &RaftNode) -> BTreeMap<NodeId, NodeInfo> {
    node.raft
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .nodes()
        .map(|(id, n)| (*id, n.clone()))
        .collect()
}

/// This node's view: roles from its membership, replication progress and
/// reachability from its metrics (a follower knows no one's progress).
pub(crate) fn local_view(node: &Arc<RaftNode>) -> ClusterView {
    let m = node.raft.metrics().borrow().clone();
    let membership = m.membership_config.membership();
    let voters: BTreeSet<u64> = membership.voter_ids().collect();
    let me = node.node_id();
    let am_leader = m.current_leader == Some(me);
    let heartbeat_dead = Duration::from_millis(node.opts.election_timeout_max_ms);
    let members = membership
        .nodes()
        .map(|(id, info)| {
            let role = if m.current_leader == Some(*id) {
                "leader"
            } else if voters.contains(id) {
                "voter"
            } else {
                "learner"
            };
            let matched = m
                .replication
                .as_ref()
                .and_then(|r| r.get(id).cloned().flatten())
                .map(|l| l.index);
            let contact = if *id == me {
                Some(Duration::ZERO)
            } else {
                node.contacts().since(*id)
            };
            MemberView {
                id: *id,
                name: info.name.clone(),
                site: info.site.clone(),
                rpc_addr: info.rpc_addr.clone(),
                dns_addr: info.dns_addr.clone(),
                smtp_addr: info.smtp_addr.clone(),
                role: role.into(),
                reachable: if am_leader || *id == me {
                    Some(contact.is_some_and(|c| c < heartbeat_dead))
                } else {
                    None
                },
                last_contact_ms: contact.map(|c| c.as_millis() as u64),
                match_index: if *id == me { m.last_log_index } else { matched },
                lag: if *id == me {
                    Some(0)
                } else {
                    matched.map(|x| m.last_log_index.unwrap_or(0).saturating_sub(x))
                },
            }
        })
        .collect();
    ClusterView {
        reported_by: me,
        leader: m.current_leader,
        term: m.current_term,
        last_log_index: m.last_log_index,
        commit_index: m.last_applied.map(|l| l.index),
        applied_index: m.last_applied.map(|l| l.index),
        members,
    }
}
