//! hamail's durable store: one RocksDB with a column family per replicated
//! table plus the raft log and metadata. Callers see typed tables, byte
//! payloads for raft, and [`StoreError`]; no RocksDB type leaves this crate.

mod apply;
mod checks;
mod codec;
mod db;
mod dkim;
mod limits;
mod queue;
mod snapshot;
mod tables;
mod users;

pub use apply::{Applier, ApplyContext};
pub use codec::{FORMAT_VERSION, decode, encode};
pub use db::Store;
pub use dkim::DkimEntry;
pub use limits::{DomainSettings, QuotaRecord};
pub use snapshot::SNAPSHOT_MAGIC;
pub use tables::{
    AliasRecord, ChecksRecord, DkimRecord, DomainRecord, NodeRecord, RecipientRecord,
    SenderLoginRecord, Table, TokenRecord, TransportRecord, ZONE_HISTORY, ZoneChange, ZoneState,
};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("cannot open the store in {path}: {reason}")]
    Open { path: String, reason: String },
    #[error("store IO failed ({op}): {reason}")]
    Io { op: &'static str, reason: String },
    #[error("cannot decode {what}: {reason}")]
    Decode { what: &'static str, reason: String },
    #[error("snapshot stream is invalid: {0}")]
    Snapshot(String),
}

impl StoreError {
    pub(crate) fn io(op: &'static str, e: impl std::fmt::Display) -> Self {
        StoreError::Io {
            op,
            reason: e.to_string(),
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;
