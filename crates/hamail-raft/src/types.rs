//! The openraft type configuration and the payload of hamail's entries.

use hamail_types::{Command, NodeId, Outcome};
use serde::{Deserialize, Serialize};

/// What a raft entry carries: commands from one or more proposers, batched
/// (group commit), with the proposer's clock — apply never reads a clock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Proposer's wall clock, ms since the Unix epoch.
    pub time_ms: u64,
    pub proposer: NodeId,
    pub commands: Vec<Command>,
}

/// One outcome per command of the entry, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub outcomes: Vec<Outcome>,
}

/// What the cluster knows of a node: its name, site and the addresses the
/// others dial (advertised, not necessarily the listen addresses).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub name: String,
    pub site: String,
    pub rpc_addr: String,
    pub dns_addr: String,
    pub smtp_addr: String,
}

impl std::fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{} ({})", self.name, self.site, self.rpc_addr)
    }
}

openraft::declare_raft_types!(
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = u64,
        Node = NodeInfo,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
        AsyncRuntime = openraft::TokioRuntime,
);
