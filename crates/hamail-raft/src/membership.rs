//! Membership changes: add an admitted node as a learner, remove a node.
//! Run on the leader, one at a time (forwarded there from a follower).

use std::collections::BTreeSet;
use std::sync::Arc;

use hamail_types::Command;
use openraft::ChangeMembers;

use crate::cluster::ClusterError;
use crate::forward::leader_info;
use crate::rpc::{AdminOp, RpcRequest, RpcResponse};
use crate::{ProposeError, RaftNode};

/// Runs a membership operation on the leader (here, or forwarded).
pub(crate) async fn admin(node: &Arc<RaftNode>, op: AdminOp) -> Result<String, ClusterError> {
    let Some((leader, info)) = leader_info(&node.raft) else {
        return Err(ProposeError::NotLeader { leader: None }.into());
    };
    if leader == node.node_id() {
        return leader_admin(node, op).await.map_err(ClusterError::Refused);
    }
    match node
        .forward_call(leader, &info, RpcRequest::Admin(op))
        .await?
    {
        RpcResponse::Admin(Ok(msg)) => Ok(msg),
        RpcResponse::Admin(Err(e)) => Err(ClusterError::Refused(e)),
        _ => Err(ClusterError::Refused(
            "unexpected reply from the leader".into(),
        )),
    }
}

/// Membership changes, on the leader, one at a time.
pub(crate) async fn leader_admin(node: &Arc<RaftNode>, op: AdminOp) -> Result<String, String> {
    let _l = node.membership_lock.lock().await;
    match op {
        AdminOp::AddNode { node_id, info } => {
            node.raft
                .add_learner(node_id, info.clone(), false)
                .await
                .map_err(|e| format!("add learner {node_id}: {e}"))?;
            // The leader's promoter makes it a voter once it caught up.
            Ok(format!("node {node_id} ({}) added as a learner", info.name))
        }
        AdminOp::RemoveNode { node_id } => {
            let m = node.raft.metrics().borrow().clone();
            let membership = m.membership_config.membership();
            let voters: BTreeSet<u64> = membership.voter_ids().collect();
            let is_learner = membership.learner_ids().any(|l| l == node_id);
            if !voters.contains(&node_id) && !is_learner {
                return Err(format!("node {node_id} is not a member"));
            }
            if voters.contains(&node_id) && voters.len() == 1 {
                return Err(format!(
                    "node {node_id} is the last voter: removing it would end the cluster"
                ));
            }
            // Record the removal first (it frees the node's name for a
            // replacement), then change the membership.
            node.propose_local(vec![Command::NodeRemove { node_id }])
                .await
                .map_err(|e| format!("remove node {node_id}: {e}"))?;
            let change = if voters.contains(&node_id) {
                ChangeMembers::RemoveVoters(BTreeSet::from([node_id]))
            } else {
                ChangeMembers::RemoveNodes(BTreeSet::from([node_id]))
            };
            node.raft
                .change_membership(change, false)
                .await
                .map_err(|e| format!("remove node {node_id}: {e}"))?;
            Ok(format!("node {node_id} removed"))
        }
    }
}
