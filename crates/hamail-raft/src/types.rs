//! The openraft type configuration and the payload of hamail's entries.

pub use hamail_types::NodeInfo;
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
