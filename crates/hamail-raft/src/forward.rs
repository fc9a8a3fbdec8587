//! Calls to the leader from a follower: kept connections (one per batch in
//! flight, and one more) for forwarded writes, membership changes and status.

use std::sync::Arc;
use std::time::Duration;

use hamail_types::NodeId;

use crate::rpc::{RpcClient, RpcError, RpcRequest, RpcResponse};
use crate::trust::PeerTls;
use crate::{HamailRaft, NodeInfo, ProposeError};

/// Connections to the leader, one per batch in flight.
pub(crate) struct Forwarder {
    tls: Arc<PeerTls>,
    timeout: Duration,
    slots: Vec<tokio::sync::Mutex<Option<(NodeId, RpcClient)>>>,
}

impl Forwarder {
    pub(crate) fn new(tls: Arc<PeerTls>, timeout: Duration, in_flight: usize) -> Self {
        Forwarder {
            tls,
            timeout,
            slots: (0..in_flight + 1)
                .map(|_| tokio::sync::Mutex::new(None))
                .collect(),
        }
    }

    /// One RPC to the leader over a kept connection.
    pub(crate) async fn call(
        &self,
        leader: NodeId,
        info: &NodeInfo,
        req: RpcRequest,
    ) -> Result<RpcResponse, ProposeError> {
        self.call_within(leader, info, req, self.timeout).await
    }

    /// Like `call`, with its own deadline (a status query need not wait
    /// as long as a write).
    pub(crate) async fn call_within(
        &self,
        leader: NodeId,
        info: &NodeInfo,
        req: RpcRequest,
        timeout: Duration,
    ) -> Result<RpcResponse, ProposeError> {
        let mut slot = None;
        for s in &self.slots {
            if let Ok(g) = s.try_lock() {
                slot = Some(g);
                break;
            }
        }
        let mut slot = match slot {
            Some(g) => g,
            None => self.slots[0].lock().await,
        };
        if slot
            .as_ref()
            .map(|(id, c)| *id != leader || c.addr() != info.rpc_addr)
            != Some(false)
        {
            *slot = Some((
                leader,
                RpcClient::to_member(info.rpc_addr.clone(), self.tls.clone(), leader),
            ));
        }
        let Some((_, client)) = slot.as_mut() else {
            return Err(ProposeError::Forward("no connection".into()));
        };
        client.call(&req, timeout).await.map_err(|e| match e {
            RpcError::Timeout { .. } => ProposeError::NoQuorum(timeout.as_millis() as u64),
            other => ProposeError::Forward(format!("leader node {leader}: {other}")),
        })
    }
}

/// The leader this node knows of, with its address.
pub(crate) fn leader_info(raft: &HamailRaft) -> Option<(NodeId, NodeInfo)> {
    let m = raft.metrics().borrow().clone();
    m.current_leader.and_then(|l| {
        m.membership_config
            .membership()
            .get_node(&l)
            .map(|n| (l, n.clone()))
    })
}
