//! The raft network of a node that has no peers. A one-node cluster never
//! sends a raft RPC; the mTLS cluster RPC replaces this when a node joins
//! others. Any attempt is answered as an unreachable peer, which openraft
//! retries with backoff, so nothing is lost by it.

use openraft::error::{InstallSnapshotError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};

use crate::{NodeInfo, TypeConfig};

#[derive(Debug, Clone, Default)]
pub struct NoPeers;

fn unreachable<E: std::error::Error>(target: u64) -> RPCError<u64, NodeInfo, E> {
    let e = std::io::Error::other(format!(
        "node {target}: this build of hamail has no cluster RPC; a single node needs none"
    ));
    RPCError::Unreachable(Unreachable::new(&e))
}

impl RaftNetworkFactory<TypeConfig> for NoPeers {
    type Network = NoPeerClient;
    async fn new_client(&mut self, target: u64, _node: &NodeInfo) -> Self::Network {
        NoPeerClient { target }
    }
}

#[derive(Debug)]
pub struct NoPeerClient {
    target: u64,
}

impl RaftNetwork<TypeConfig> for NoPeerClient {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, NodeInfo, RaftError<u64>>> {
        Err(unreachable(self.target))
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, NodeInfo, RaftError<u64, InstallSnapshotError>>,
    > {
        Err(unreachable(self.target))
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<u64>,
        _option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, NodeInfo, RaftError<u64>>> {
        Err(unreachable(self.target))
    }
}
