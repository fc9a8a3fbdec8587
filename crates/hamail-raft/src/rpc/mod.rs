//! Cluster RPC: the wire types (requests, replies, the join grant, the
//! status views) and the limits both ends share.
//!
//! TLS 1.3 with mutual authentication by the cluster CA, frames of at most
//! `MAX_FRAME` (tokio-util's length-delimited codec), postcard-encoded
//! requests and replies, one request at a time per connection. Connections
//! are kept and reused; any error drops the connection and the next call
//! dials again.
//!
//! The server learns the caller's node id from its certificate (`node-<id>`)
//! and checks, on every connection, that the id is a member and that the
//! certificate's key is the one pinned for it: a removed node's certificate,
//! or one minted for another id, is refused. A caller without a certificate
//! may only ask to join, with one frame of a few KiB, a few times a second
//! per address, on a bounded number of connections (see `gate.rs`).
//!
//! Layout: `client.rs` dials and calls a peer, `server.rs` accepts and
//! answers, `gate.rs` limits callers that have shown no certificate yet.
//! The order of the variants of `RpcRequest` and `RpcResponse` is the wire
//! format (postcard numbers them): add new ones at the end.

mod client;
mod gate;
mod server;

pub use client::{RpcClient, set_source_ip};
pub use server::{RpcHandler, serve};

use std::collections::BTreeMap;
use std::time::Duration;

use hamail_types::{Command, NodeId, NodeInfo, Outcome};
use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};
use tokio_util::codec::LengthDelimitedCodec;

use crate::TypeConfig;
use crate::trust::CaView;

/// Largest frame between members. What it must hold: one raft entry (a
/// batch stops growing at 4 MiB; a single mail message may exceed that, up
/// to `smtp.message_size_limit` ≤ 64 MiB plus its envelope of at most
/// 10,000 recipients), an AppendEntries (the network cuts them at
/// `network::APPEND_BYTES` beyond their first entry), a snapshot chunk
/// (`SNAPSHOT_CHUNK`), or a forwarded proposal of the same bounds.
pub const MAX_FRAME: usize = 80 << 20;
/// Largest frame from a caller without a certificate: a `Join` (a secret, a
/// CSR of a few hundred bytes and the node's names and addresses).
pub const PREAUTH_MAX_FRAME: usize = 8 << 10;
/// openraft's snapshot chunk size (set in the raft config).
pub const SNAPSHOT_CHUNK: u64 = 4 << 20;
/// A TLS handshake, on either side.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Serialize, Deserialize)]
#[non_exhaustive]
pub enum RpcRequest {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<u64>),
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// Client writes forwarded to the leader.
    Propose(Vec<Command>),
    /// Membership changes forwarded to the leader.
    Admin(AdminOp),
    /// The leader's view of the cluster, for `cluster status`.
    Status,
    /// From a node without a certificate yet.
    Join {
        token_secret: String,
        csr_pem: String,
        info: NodeInfo,
    },
    /// Which CAs the node trusts and presents (`cluster rotate-ca`).
    CaStatus,
}

/// Leader-only membership operations.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[non_exhaustive]
pub enum AdminOp {
    /// Add an admitted node as a learner; promote it to voter once caught up.
    AddNode { node_id: NodeId, info: NodeInfo },
    /// Remove a node from the membership (and mark it removed).
    RemoveNode { node_id: NodeId },
}

/// What a joining node receives.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinGrant {
    pub node_id: NodeId,
    pub node_pem: String,
    pub ca_pem: String,
    pub ca_key_pem: String,
    pub cluster_name: String,
    /// Members at the time of the join: the joiner accepts RPCs from them
    /// before its own log tells it the membership.
    pub members: BTreeMap<NodeId, NodeInfo>,
    /// Their pinned certificate keys, for the same time.
    pub pins: BTreeMap<NodeId, String>,
    /// Every CA a member certificate may come from (PEM; `ca_pem` among
    /// them): two during a CA rotation.
    pub trusted: Vec<String>,
}

/// One member in `cluster status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberView {
    pub id: NodeId,
    pub name: String,
    pub site: String,
    pub rpc_addr: String,
    pub dns_addr: String,
    pub smtp_addr: String,
    /// leader, voter or learner.
    pub role: String,
    /// As the leader sees it (None when reported by a follower).
    pub reachable: Option<bool>,
    /// Milliseconds since the reporting node last heard from this one.
    pub last_contact_ms: Option<u64>,
    /// Highest log index known to match the leader's log.
    pub match_index: Option<u64>,
    /// Entries behind the leader's last log index.
    pub lag: Option<u64>,
}

/// The cluster as one node (preferably the leader) sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterView {
    pub reported_by: NodeId,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    /// Highest index known committed: the reporter's applied index (entries
    /// are applied as soon as they commit; openraft 0.9 does not export its
    /// commit index separately).
    pub commit_index: Option<u64>,
    pub applied_index: Option<u64>,
    pub members: Vec<MemberView>,
}

#[derive(Debug, Serialize, Deserialize)]
#[non_exhaustive]
pub enum RpcResponse {
    AppendEntries(Result<AppendEntriesResponse<u64>, RaftError<u64>>),
    Vote(Result<VoteResponse<u64>, RaftError<u64>>),
    InstallSnapshot(Result<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>>),
    Propose(Result<Vec<Outcome>, String>),
    Admin(Result<String, String>),
    Status(Result<ClusterView, String>),
    Joined(Result<Box<JoinGrant>, String>),
    /// The request was not allowed from this caller.
    Refused(String),
    CaStatus(CaView),
}

#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum RpcError {
    #[error("cannot reach {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("TLS with {addr} failed: {reason}")]
    Tls { addr: String, reason: String },
    #[error("{addr} did not answer within {timeout:?}")]
    Timeout { addr: String, timeout: Duration },
    #[error("connection to {addr} failed: {reason}")]
    Io { addr: String, reason: String },
    #[error("{addr} refused the request: {reason}")]
    Refused { addr: String, reason: String },
    #[error("{addr} sent a malformed reply: {reason}")]
    Protocol { addr: String, reason: String },
}

fn codec(max_frame: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(max_frame)
        .new_codec()
}
