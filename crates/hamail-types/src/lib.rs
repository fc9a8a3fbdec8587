//! Types shared by every hamail crate: domain names, mail addresses, transports,
//! and the replicated command set. Pure data and validation; no IO here, so all
//! of it can be unit-tested and fuzzed.

mod address;
pub mod command;
pub mod dkim;
mod dnsbl;
mod domain;
mod map;
pub mod queue;
mod size;
mod tls_level;
mod transport;
pub mod user;
pub mod zone;

pub use address::MailAddress;
pub use command::{CaMaterial, CaPhase, CaState, Command, DomainKind, NodeInfo, Outcome};
pub use dkim::{DkimAlgorithm, DkimKey};
pub use dnsbl::{AnswerFilter, DnsblSite};
pub use domain::DomainName;
/// Which content-check table (header_checks or body_checks).
pub use hamail_checks::CheckKind;
pub use map::{MapEntry, MapError, parse_postfix_map};
pub use queue::{NewMessage, QueueEntry, QueueId, QueueRecipient, QueueSelector, RecipientStatus};
pub use size::{MAX_BYTE_SIZE, format_byte_size, parse_byte_size};
pub use tls_level::TlsLevel;
pub use transport::{NextHop, TransportSpec};
pub use user::{HashScheme, PasswordHash, UserRecord};
pub use zone::ZoneRecord;

/// A raft node id. Ids are handed out by the cluster and never reused.
pub type NodeId = u64;

/// Why a name, address or spec was refused. Every variant names the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TypesError {
    #[error("invalid domain name {input:?}: {reason}")]
    Domain { input: String, reason: String },
    #[error("invalid mail address {input:?}: {reason}")]
    Address { input: String, reason: String },
    #[error("invalid transport {input:?}: {reason}")]
    Transport { input: String, reason: String },
    #[error("invalid domain kind {input:?}: expected local, relay or virtual")]
    Kind { input: String },
    #[error("invalid TLS level {input:?}: expected none, may, encrypt, verify or secure")]
    TlsLevel { input: String },
    /// Never quotes the input: it may be a password typed where a hash belongs.
    #[error("invalid password hash: {reason}")]
    PasswordHash { reason: String },
    #[error("invalid command: {0}")]
    Command(String),
    #[error("invalid size {input:?}: {reason}")]
    Size { input: String, reason: String },
    #[error("invalid DNSBL {input:?}: {reason}")]
    Dnsbl { input: String, reason: String },
}
