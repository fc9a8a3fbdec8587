//! The sending half of the MTA: a queue manager on every node delivers the
//! messages this node owns (and only those: the owner holds the lease),
//! and commits each attempt's per-recipient outcome with the lease epoch
//! it was made under. This file holds what the rest of hamail provides (the
//! [`QueueStore`]) and the settings; the work is in the files below.
//!
//! - `queue_manager.rs`: the loop that finds due messages, and the settle rule
//! - `attempt.rs`: one delivery attempt of one message (routes, transports)
//! - `client.rs`: the SMTP/LMTP dialogue with one server, over `wire.rs`
//!   (replies, encodings) and `connection.rs` (connect, connection cache)
//! - `record.rs`: turning an attempt into recipient states and committing them
//! - `lease.rs`: which messages move to which node when an owner is silent
//! - `route.rs`, `tls_client.rs`, `sasl.rs`, `maildir.rs`, `dsn.rs`: helpers

mod attempt;
pub mod client;
mod connection;
pub mod dsn;
pub mod lease;
pub mod maildir;
pub mod maildir_quota;
mod queue_manager;
mod record;
pub mod route;
mod sasl;
pub mod tls_client;
mod wire;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hamail_types::{
    Command, DomainKind, DomainName, NodeId, Outcome, QueueEntry, QueueId, TlsLevel, TransportSpec,
};
use hickory_resolver::TokioResolver;

use crate::BackendError;
use client::ClientOptions;

pub use queue_manager::{SETTLE, Settle, run_queue_manager};
pub use record::{RecordOutcome, attempt_record};
pub use sasl::{Credentials, load_password_map};

/// What the queue manager needs from the cluster.
pub trait QueueStore: Send + Sync + 'static {
    fn node_id(&self) -> NodeId;
    /// The lease holds: this node can commit (it reaches a majority).
    fn may_deliver(&self) -> bool;
    /// Messages owned by this node, not held, with a recipient not final
    /// (the queue manager decides which are due).
    fn owned(&self) -> Result<Vec<QueueEntry>, BackendError>;
    fn body(&self, id: &QueueId) -> Result<Option<Vec<u8>>, BackendError>;
    fn domain_kind(&self, d: &DomainName) -> Result<Option<DomainKind>, BackendError>;
    fn transport(
        &self,
        d: &DomainName,
    ) -> Result<Option<(TransportSpec, Vec<TransportSpec>)>, BackendError>;
    /// A mailbox's quota in bytes (`hamail quota set`), for Maildir
    /// delivery; `None`: no quota.
    fn mailbox_quota(
        &self,
        _rcpt: &hamail_types::MailAddress,
    ) -> Result<Option<u64>, BackendError> {
        Ok(None)
    }
    /// The lease for this message still holds: this node reaches a
    /// majority and its copy still names it the owner at `epoch`. Asked
    /// again just before the final dot, so a former owner cut off while it
    /// sent the body stops before the remote server takes the message.
    fn still_owner(&self, id: &QueueId, epoch: u64) -> bool;
    /// Every node's SMTP address: delivering there would be a loop.
    fn own_smtp_addrs(&self) -> Vec<SocketAddr>;
    fn commit(
        &self,
        commands: Vec<Command>,
    ) -> impl Future<Output = Result<Vec<Outcome>, BackendError>> + Send;
}

/// Delivery settings, with Postfix's names.
#[derive(Clone)]
pub struct DeliverySettings {
    pub hostname: String,
    pub relayhost: Option<TransportSpec>,
    pub smtp_fallback_relay: Vec<TransportSpec>,
    /// Port for MX and relay delivery without an explicit one (25).
    pub smtp_port: u16,
    pub client: ClientOptions,
    /// Per destination (domain, host or `[host]:port`) TLS level.
    pub tls_policy: BTreeMap<String, TlsLevel>,
    /// `[host]:port` / `host` -> the login there (smtp_sasl_password_maps).
    pub sasl_passwords: HashMap<String, Credentials>,
    pub destination_concurrency: usize,
    pub total_concurrency: usize,
    pub minimal_backoff: Duration,
    pub maximal_backoff: Duration,
    pub maximal_queue_lifetime: Duration,
    pub bounce_queue_lifetime: Duration,
    pub resolver: TokioResolver,
    /// A Maildir delivery past the mailbox's quota: bounced (5.2.2) or
    /// deferred (4.2.2).
    pub overquota: Overquota,
}

/// What becomes of a Maildir delivery past the quota (Postfix's
/// `virtual_overquota_bounce`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Overquota {
    /// Bounced with 5.2.2 (`virtual_overquota_bounce = yes`).
    #[default]
    Bounce,
    /// Deferred with 4.2.2, tried again until the queue lifetime ends.
    Defer,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}
