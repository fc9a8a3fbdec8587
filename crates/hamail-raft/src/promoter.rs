//! The promoter: on whichever node leads, learners that caught up become
//! voters (the last step of `cluster join`).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use hamail_types::NodeId;
use openraft::ChangeMembers;
use tokio_util::sync::CancellationToken;

use crate::RaftNode;

/// How far behind the leader's log a learner may be when it is promoted:
/// under a steady write load at geo distances it is never exactly level.
const PROMOTE_LAG: u64 = 64;

/// On whichever node leads: promotes every learner (a node that joined)
/// whose log is within `PROMOTE_LAG` entries of the leader's. A loop rather
/// than a task per join, so a join survives a change of leader.
pub(crate) async fn promoter(node: Arc<RaftNode>, cancel: CancellationToken) {
    let mut rx = node.raft.metrics();
    loop {
        let ready: Vec<NodeId> = {
            let m = rx.borrow_and_update();
            if m.state != openraft::ServerState::Leader {
                Vec::new()
            } else {
                let target = m.last_log_index.unwrap_or(0);
                m.membership_config
                    .membership()
                    .learner_ids()
                    .filter(|id| {
                        let matched = m
                            .replication
                            .as_ref()
                            .and_then(|r| r.get(id).cloned().flatten())
                            .map(|l| l.index);
                        matched.is_some_and(|i| i + PROMOTE_LAG >= target)
                    })
                    .collect()
            }
        };
        for id in ready {
            let _l = node.membership_lock.lock().await;
            // Still a learner (not removed meanwhile)?
            let learner = node
                .raft
                .metrics()
                .borrow()
                .membership_config
                .membership()
                .learner_ids()
                .any(|l| l == id);
            if !learner {
                continue;
            }
            match node
                .raft
                .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), true)
                .await
            {
                Ok(_) => tracing::info!(node_id = id, "learner caught up: now a voter"),
                Err(e) => tracing::warn!(node_id = id, error = %e, "promotion failed; retrying"),
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            r = rx.changed() => if r.is_err() { return },
        }
        // At most a few checks a second under a write load.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
