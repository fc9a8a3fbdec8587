//! hamail's raft: the openraft type configuration, the log store and state
//! machine over hamail-store, snapshots as files, and the node that proposes
//! commands with group commit.

// openraft's storage traits fix the error type (`StorageError`, ~224 bytes);
// our helpers return the same type rather than box and unbox it at every call.
#![allow(clippy::result_large_err)]

mod cluster;
mod log_store;
mod network;
mod node;
pub mod pki;
mod rotate;
pub mod rpc;
mod snapshot_files;
mod state_machine;
mod trust;
mod types;

pub use cluster::{Cluster, ClusterError, ClusterSettings, parse_ttl};
pub use log_store::LogStore;
pub use network::{Contacts, Network};
pub use node::{NodeOptions, ProposeError, RaftNode, RaftStatus, StartError};
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
