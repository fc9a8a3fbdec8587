//! hamail's raft: the openraft type configuration, the log store and state
//! machine over hamail-store, snapshots as files, and the node that proposes
//! commands with group commit.
//!
//! Layout, in the order a write meets the files:
//! - `node.rs`: `RaftNode`, started from `NodeOptions` (the config's
//!   `[cluster]`); `propose` hands commands to
//! - `proposer.rs`: group commit, many writers' commands in one entry; on a
//!   follower the entry goes to the leader through `forward.rs`;
//! - `types.rs` (the entry), `log_store.rs`, `state_machine.rs` (apply, via
//!   hamail-store) and `snapshot_files.rs`;
//! - `network.rs`: openraft's messages over `rpc/` (wire types in
//!   `rpc/mod.rs`, `client.rs`, `server.rs`, the pre-auth `gate.rs`).
//!
//! Membership: `cluster.rs` (init, token, join, leave, remove, and starting
//! a member's tasks), `service.rs` (the RPC service and join admission),
//! `membership.rs` (changes on the leader), `promoter.rs` (learners become
//! voters), `view.rs` (`cluster status`). Certificates: `pki.rs`, `trust.rs`
//! (pins, the TLS of the moment), `rotate.rs` (`cluster rotate-ca`),
//! `join_token.rs` (the token and the joiner's CA-pinning verifier).

// openraft's storage traits fix the error type (`StorageError`, ~224 bytes);
// our helpers return the same type rather than box and unbox it at every call.
#![allow(clippy::result_large_err)]

mod cluster;
mod forward;
mod join_token;
mod log_store;
mod membership;
mod network;
mod node;
pub mod pki;
mod promoter;
mod proposer;
mod rotate;
pub mod rpc;
mod service;
mod snapshot_files;
mod state_machine;
mod trust;
mod types;
mod view;

pub use cluster::{Cluster, ClusterError, ClusterSettings};
pub use log_store::LogStore;
pub use network::{Contacts, Network};
pub use node::{NodeOptions, ProposeError, RaftNode, RaftStatus, StartError};
pub use proposer::ProposerStats;
pub use rpc::{ClusterView, MemberView, set_source_ip};
pub use state_machine::StateMachine;
pub use types::{NodeInfo, Request, Response, TypeConfig};

/// The raft handle of a hamail node.
pub type HamailRaft = openraft::Raft<TypeConfig>;

pub(crate) type StorageError = openraft::StorageError<u64>;

/// Wraps a store error for openraft.
pub(crate) fn storage_err(e: impl std::error::Error + 'static) -> StorageError {
    openraft::StorageIOError::<u64>::write(openraft::AnyError::new(&e)).into()
}

/// Opens the log store and state machine of a data directory, finishing a
/// snapshot install that a crash interrupted.
pub fn open_storage(
    store: hamail_store::Store,
    snapshot_dir: std::path::PathBuf,
) -> Result<(LogStore, StateMachine), StorageError> {
    let log = LogStore::new(store.clone());
    let sm = StateMachine::open(store, snapshot_dir)?;
    Ok((log, sm))
}
