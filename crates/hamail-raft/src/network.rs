//! openraft's network over the cluster RPC. Each replication stream (one per
//! peer) and each vote round gets its own client with its own connection.
//! A peer that cannot be reached is reported `Unreachable`, so openraft backs
//! off; a remote raft error comes back as a remote error (a snapshot stream
//! that the receiver lost restarts from the beginning).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::LogId;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable,
};
use openraft::network::{RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};

use crate::rpc::{RpcClient, RpcError, RpcRequest, RpcResponse};
use crate::{NodeInfo, TypeConfig};

/// When each peer last answered an RPC (for `cluster status`).
#[derive(Debug, Default)]
pub struct Contacts {
    last: Mutex<HashMap<u64, Instant>>,
}

impl Contacts {
    fn touch(&self, id: u64) {
        if let Ok(mut m) = self.last.lock() {
            m.insert(id, Instant::now());
        }
    }

    pub fn since(&self, id: u64) -> Option<Duration> {
        self.last.lock().ok()?.get(&id).map(|t| t.elapsed())
    }
}

#[derive(Clone)]
pub struct Network {
    pub(crate) me: u64,
    pub(crate) tls: Arc<crate::trust::PeerTls>,
    pub(crate) contacts: Arc<Contacts>,
    /// This node's raft metrics, once raft runs (see `Elision`).
    pub(crate) elision: Arc<Elision>,
}

/// openraft 0.9 keeps one AppendEntries in flight per follower, and when
/// the commit index moves it sends an empty one (a heartbeat) to tell each
/// follower, at once if that follower's stream is idle. After a commit the
/// other follower's stream usually is idle for an instant — its new
/// entries are handed to it a moment later — so the heartbeat takes the
/// slot and the entries wait a whole round trip behind it: at 80 ms between
/// sites, writes took about twice the round trips they need.
///
/// An empty AppendEntries is elided (answered as accepted without being
/// sent) when it is redundant: the follower has entries waiting (they will
/// carry the commit index within the round trip anyway) and it answered a
/// real request within the last heartbeat interval (so the acknowledgement
/// the leader takes from the answer is at most that old). Heartbeats of an
/// idle cluster, and any to a follower that has gone quiet, are sent as
/// usual; safety never rests on them (commits come only from answers to
/// requests that carry entries).
#[derive(Default)]
pub struct Elision {
    pub(crate) metrics:
        std::sync::OnceLock<tokio::sync::watch::Receiver<openraft::RaftMetrics<u64, NodeInfo>>>,
    pub(crate) window: Duration,
    pub(crate) enabled: bool,
    /// Heartbeats elided so far.
    pub elided: std::sync::atomic::AtomicU64,
}

impl Elision {
    pub(crate) fn new(window: Duration, enabled: bool) -> Elision {
        Elision {
            window,
            enabled,
            ..Elision::default()
        }
    }

    /// `acked`: the last entry the target acknowledged to this stream. Its
    /// own count, not raft's metrics: those are published a moment late, and
    /// a heartbeat right after the last entry of a burst — the only word of
    /// its commit a follower gets — would look redundant. `prev`: the
    /// heartbeat's `prev_log_id`. We answer for the follower only when it is
    /// exactly what the follower acknowledged: then the answer is the one
    /// the follower would give (its log holds `prev`). Any other `prev`
    /// (openraft probing after a conflict, a new leader's first round) is
    /// sent, whatever else holds.
    fn redundant(
        &self,
        target: u64,
        prev: Option<&LogId<u64>>,
        acked: Option<&LogId<u64>>,
        contacts: &Contacts,
    ) -> bool {
        if !self.enabled {
            return false;
        }
        let (Some(prev), Some(acked)) = (prev, acked) else {
            return false;
        };
        if prev != acked {
            return false;
        }
        let Some(rx) = self.metrics.get() else {
            return false;
        };
        let pending = rx.borrow().last_log_index.unwrap_or(0) > acked.index;
        pending && contacts.since(target).is_some_and(|d| d < self.window)
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;
    async fn new_client(&mut self, target: u64, node: &NodeInfo) -> Self::Network {
        PeerClient {
            me: self.me,
            target,
            rpc: RpcClient::to_member(node.rpc_addr.clone(), self.tls.clone(), target),
            contacts: self.contacts.clone(),
            elision: self.elision.clone(),
            acked: None,
        }
    }
}

pub struct PeerClient {
    me: u64,
    target: u64,
    rpc: RpcClient,
    contacts: Arc<Contacts>,
    elision: Arc<Elision>,
    /// The last log id the target acknowledged on this stream (None after a
    /// conflict or an error: nothing is known to match).
    acked: Option<LogId<u64>>,
}

/// An AppendEntries carries entries up to this many bytes (estimated from
/// the commands) beyond its first entry; the rest go in the next request
/// (answered to openraft as a partial success). With the entry bound of the
/// proposer this keeps every request under `rpc::MAX_FRAME`.
pub const APPEND_BYTES: usize = 8 << 20;

fn entry_bytes(e: &openraft::Entry<TypeConfig>) -> usize {
    match &e.payload {
        openraft::EntryPayload::Normal(r) => {
            64 + r
                .commands
                .iter()
                .map(hamail_types::Command::approx_size)
                .sum::<usize>()
        }
        _ => 1024,
    }
}

fn to_rpc_error<E: std::error::Error>(
    me: u64,
    target: u64,
    action: RPCTypes,
    e: RpcError,
) -> RPCError<u64, NodeInfo, E> {
    match e {
        RpcError::Timeout { timeout, .. } => RPCError::Timeout(Timeout {
            action,
            id: me,
            target,
            timeout,
        }),
        RpcError::Io { .. } | RpcError::Protocol { .. } => RPCError::Network(NetworkError::new(&e)),
        other => RPCError::Unreachable(Unreachable::new(&other)),
    }
}

fn unexpected<E: std::error::Error>(what: &str) -> RPCError<u64, NodeInfo, E> {
    RPCError::Network(NetworkError::new(&std::io::Error::other(format!(
        "unexpected reply to {what}"
    ))))
}

impl PeerClient {
    async fn call(&mut self, req: RpcRequest, ttl: Duration) -> Result<RpcResponse, RpcError> {
        let r = self.rpc.call(&req, ttl).await;
        if r.is_ok() {
            self.contacts.touch(self.target);
        }
        r
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, NodeInfo, RaftError<u64>>> {
        if rpc.entries.is_empty()
            && self.elision.redundant(
                self.target,
                rpc.prev_log_id.as_ref(),
                self.acked.as_ref(),
                &self.contacts,
            )
        {
            self.elision
                .elided
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Ok(AppendEntriesResponse::Success);
        }
        // Cut a long request: the first entry always goes, then entries
        // while they fit APPEND_BYTES.
        let mut bytes = 0usize;
        let keep = rpc
            .entries
            .iter()
            .enumerate()
            .take_while(|(i, e)| {
                bytes = bytes.saturating_add(entry_bytes(e));
                *i == 0 || bytes <= APPEND_BYTES
            })
            .count();
        let cut = keep < rpc.entries.len();
        rpc.entries.truncate(keep);
        let prev = rpc.prev_log_id;
        let last = rpc.entries.last().map(|e| e.log_id).or(prev);
        match self
            .call(RpcRequest::AppendEntries(rpc), option.hard_ttl())
            .await
        {
            Ok(RpcResponse::AppendEntries(Ok(r))) => {
                self.acked = match &r {
                    AppendEntriesResponse::Success => last,
                    AppendEntriesResponse::PartialSuccess(m) => *m,
                    _ => None,
                };
                Ok(match r {
                    AppendEntriesResponse::Success if cut => {
                        AppendEntriesResponse::PartialSuccess(last)
                    }
                    other => other,
                })
            }
            Ok(RpcResponse::AppendEntries(Err(e))) => {
                self.acked = None;
                Err(RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            Ok(_) => Err(unexpected("append entries")),
            Err(e) => {
                self.acked = None;
                Err(to_rpc_error(
                    self.me,
                    self.target,
                    RPCTypes::AppendEntries,
                    e,
                ))
            }
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, NodeInfo, RaftError<u64, InstallSnapshotError>>,
    > {
        match self
            .call(RpcRequest::InstallSnapshot(rpc), option.hard_ttl())
            .await
        {
            Ok(RpcResponse::InstallSnapshot(Ok(r))) => Ok(r),
            Ok(RpcResponse::InstallSnapshot(Err(e))) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            Ok(_) => Err(unexpected("install snapshot")),
            Err(e) => Err(to_rpc_error(
                self.me,
                self.target,
                RPCTypes::InstallSnapshot,
                e,
            )),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, NodeInfo, RaftError<u64>>> {
        match self.call(RpcRequest::Vote(rpc), option.hard_ttl()).await {
            Ok(RpcResponse::Vote(Ok(r))) => Ok(r),
            Ok(RpcResponse::Vote(Err(e))) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            Ok(_) => Err(unexpected("vote")),
            Err(e) => Err(to_rpc_error(self.me, self.target, RPCTypes::Vote, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::CommittedLeaderId;

    fn log_id(term: u64, index: u64) -> LogId<u64> {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    /// A heartbeat is answered for the follower only when its prev_log_id
    /// is exactly what that follower acknowledged.
    #[test]
    fn elision_needs_the_acknowledged_prev_log_id() {
        let elision = Elision::new(Duration::from_secs(60), true);
        let mut m = openraft::RaftMetrics::<u64, NodeInfo>::new_initial(1);
        m.last_log_index = Some(10);
        let (_tx, rx) = tokio::sync::watch::channel(m);
        let _ = elision.metrics.set(rx);
        let contacts = Contacts::default();
        contacts.touch(2);
        let acked = log_id(3, 7);
        // Entries waiting, recent contact, prev == acked: redundant.
        assert!(elision.redundant(2, Some(&acked), Some(&acked), &contacts));
        // Another prev (a probe after a conflict, another term): sent.
        assert!(!elision.redundant(2, Some(&log_id(3, 5)), Some(&acked), &contacts));
        assert!(!elision.redundant(2, Some(&log_id(2, 7)), Some(&acked), &contacts));
        assert!(!elision.redundant(2, None, Some(&acked), &contacts));
        // Nothing acknowledged on this stream: sent.
        assert!(!elision.redundant(2, Some(&acked), None, &contacts));
    }
}
