//! The replicated tables: their column families, key layouts and records.
//! Addresses are keyed `domain \0 local` so a domain's rows are one prefix
//! (and a future split into raft groups by domain is a key range).

use hamail_types::{
    DomainKind, DomainName, MailAddress, NodeId, NodeInfo, TransportSpec, ZoneRecord,
};
use serde::{Deserialize, Serialize};

/// A replicated table. The id is the table's tag in snapshot streams: never
/// renumber one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Table {
    Domains,
    Recipients,
    Aliases,
    Transports,
    Zones,
    Queue,
    Bodies,
    Nodes,
    Tokens,
    /// Cluster-wide settings that are one value each (key `ca`: the
    /// [`hamail_types::CaState`] of a CA rotation).
    Cluster,
    /// Submission users, keyed by address: [`hamail_types::UserRecord`].
    Users,
    /// Who may send as whom (`sender allow`), keyed `sender \0 user`
    /// (both address keys): [`SenderLoginRecord`].
    SenderLogins,
    /// Mailbox quotas, keyed by address: [`crate::QuotaRecord`].
    Quotas,
    /// Per-domain settings (`domain set`), keyed by domain:
    /// [`crate::DomainSettings`].
    DomainSettings,
    /// Header and body checks: key `header` or `body` holds a
    /// [`ChecksRecord`]; key `version` a u64 bumped by every change (the
    /// smtpd recompiles when it moves).
    Checks,
    /// DKIM keys, keyed `domain \0 selector`: [`DkimRecord`]; key
    /// `\0version` a u64 bumped by every change (the smtpd reloads its
    /// signers when it moves).
    Dkim,
}

impl Table {
    pub const ALL: [Table; 16] = [
        Table::Domains,
        Table::Recipients,
        Table::Aliases,
        Table::Transports,
        Table::Zones,
        Table::Queue,
        Table::Bodies,
        Table::Nodes,
        Table::Tokens,
        Table::Cluster,
        Table::Users,
        Table::SenderLogins,
        Table::Quotas,
        Table::DomainSettings,
        Table::Checks,
        Table::Dkim,
    ];

    pub fn cf_name(self) -> &'static str {
        match self {
            Table::Domains => "domains",
            Table::Recipients => "recipients",
            Table::Aliases => "aliases",
            Table::Transports => "transports",
            Table::Zones => "zones",
            Table::Queue => "queue",
            Table::Bodies => "bodies",
            Table::Nodes => "nodes",
            Table::Tokens => "tokens",
            Table::Cluster => "cluster",
            Table::Users => "users",
            Table::SenderLogins => "sender_logins",
            Table::Quotas => "quotas",
            Table::DomainSettings => "domain_settings",
            Table::Checks => "checks",
            Table::Dkim => "dkim",
        }
    }

    pub fn id(self) -> u8 {
        match self {
            Table::Domains => 1,
            Table::Recipients => 2,
            Table::Aliases => 3,
            Table::Transports => 4,
            Table::Zones => 5,
            Table::Queue => 6,
            Table::Bodies => 7,
            Table::Nodes => 8,
            Table::Tokens => 9,
            Table::Cluster => 10,
            Table::Users => 11,
            Table::SenderLogins => 12,
            Table::Quotas => 13,
            Table::DomainSettings => 14,
            Table::Checks => 15,
            Table::Dkim => 16,
        }
    }

    pub fn from_id(id: u8) -> Option<Table> {
        Table::ALL.into_iter().find(|t| t.id() == id)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainRecord {
    pub kind: DomainKind,
    /// Proposer's clock when the domain was added (ms since the Unix epoch).
    pub added_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecipientRecord {
    /// The map value as written (`user@example.jp x` keeps `x`).
    pub value: String,
    pub added_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AliasRecord {
    pub targets: Vec<MailAddress>,
    pub updated_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransportRecord {
    pub spec: TransportSpec,
    pub fallback: Vec<TransportSpec>,
    pub updated_ms: u64,
}

/// One `sender allow` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SenderLoginRecord {
    pub added_ms: u64,
}

/// A header_checks or body_checks table as imported: its text (every node
/// compiles the same rules from it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChecksRecord {
    pub source: String,
    pub changed_ms: u64,
}

/// A DKIM key of one of our domains (keyed `domain \0 selector`); its
/// TXT record was published in the same entry.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DkimRecord {
    pub algorithm: hamail_types::DkimAlgorithm,
    /// RSA: PKCS#1 DER; Ed25519: PKCS#8 DER. Never printed.
    #[serde(with = "serde_bytes")]
    pub private_key: Vec<u8>,
    /// The `p=` text published.
    pub public_key: String,
    /// The zone that holds the TXT record.
    pub zone: DomainName,
    pub created_ms: u64,
}

/// Never the private key.
impl std::fmt::Debug for DkimRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DkimRecord")
            .field("algorithm", &self.algorithm)
            .field("zone", &self.zone)
            .field("created_ms", &self.created_ms)
            .finish_non_exhaustive()
    }
}

/// A join token (keyed by the SHA-256 of its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub expires_ms: u64,
    pub created_ms: u64,
    /// The node admitted with it; a token is single-use.
    pub used_by: Option<NodeId>,
}

/// A cluster node (keyed by id, big-endian). Removed nodes stay, marked, so
/// their ids and names are never reused by accident.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub info: NodeInfo,
    pub joined_ms: u64,
    pub removed: bool,
    /// SHA-256 (hex) of the public key of the node's certificate, pinned
    /// when it joined: the cluster RPC accepts this node id only with it.
    pub key_sha256: String,
}

/// A zone: its records (sorted, SOA serial kept current), its serial, and
/// the recent history of changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZoneState {
    pub records: Vec<ZoneRecord>,
    pub serial: u32,
    pub history: Vec<ZoneChange>,
}

/// One committed change to a zone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZoneChange {
    pub log_index: u64,
    /// The proposer's clock, ms since the Unix epoch.
    pub time_ms: u64,
    pub proposer: NodeId,
    pub serial: u32,
    pub change: String,
}

/// Key, in the zones table, of the log index of the last change to any
/// zone: DNS rebuilds its zones only when it moves. (Zone names never start
/// with a NUL byte.)
pub(crate) const ZONES_VERSION_KEY: &[u8] = b"\0zones_version";

/// Changes kept per zone in `zone history`.
pub const ZONE_HISTORY: usize = 200;

/// Key of the next node id counter in the nodes table (node keys are 8 bytes).
pub(crate) const NEXT_NODE_ID_KEY: &[u8] = b"next_node_id";

pub(crate) fn node_key(id: NodeId) -> Vec<u8> {
    id.to_be_bytes().to_vec()
}

pub(crate) fn domain_key(d: &DomainName) -> Vec<u8> {
    d.as_str().as_bytes().to_vec()
}

pub(crate) fn domain_prefix(d: &DomainName) -> Vec<u8> {
    let mut k = d.as_str().as_bytes().to_vec();
    k.push(0);
    k
}

pub(crate) fn address_key(a: &MailAddress) -> Vec<u8> {
    let mut k = domain_prefix(a.domain());
    k.extend_from_slice(a.local().as_bytes());
    k
}

pub(crate) fn address_from_key(key: &[u8]) -> Option<MailAddress> {
    let pos = key.iter().position(|b| *b == 0)?;
    let domain = std::str::from_utf8(&key[..pos]).ok()?;
    let local = std::str::from_utf8(&key[pos + 1..]).ok()?;
    MailAddress::parse(&format!("{local}@{domain}")).ok()
}

/// `sender \0 user`: a sender's entries are the prefix
/// [`sender_prefix`]. Neither part holds a NUL byte (addresses refuse
/// control characters), so the split is unambiguous.
pub(crate) fn sender_login_key(sender: &MailAddress, user: &MailAddress) -> Vec<u8> {
    let mut k = sender_prefix(sender);
    k.extend_from_slice(&address_key(user));
    k
}

pub(crate) fn sender_prefix(sender: &MailAddress) -> Vec<u8> {
    let mut k = address_key(sender);
    k.push(0);
    k
}

pub(crate) fn sender_login_from_key(key: &[u8]) -> Option<(MailAddress, MailAddress)> {
    let mut parts = key.splitn(3, |b| *b == 0);
    let (sd, sl) = (parts.next()?, parts.next()?);
    let rest = parts.next()?;
    let mut sender = sd.to_vec();
    sender.push(0);
    sender.extend_from_slice(sl);
    Some((address_from_key(&sender)?, address_from_key(rest)?))
}

pub(crate) fn domain_from_key(key: &[u8]) -> Option<DomainName> {
    DomainName::parse(std::str::from_utf8(key).ok()?).ok()
}
