//! Admin requests and replies. JSON so that an operator can also talk to the
//! socket with `socat` in an emergency; typed fields so that a malformed
//! name is refused when the request is decoded, naming the field.

use std::collections::BTreeMap;

use hamail_raft::RaftStatus;
pub use hamail_raft::{ClusterView, MemberView};
use hamail_types::{
    DomainKind, DomainName, MailAddress, PasswordHash, QueueEntry, QueueId, TransportSpec,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum AdminRequest {
    Status,
    DomainAdd {
        domain: DomainName,
        kind: DomainKind,
    },
    DomainDel {
        domain: DomainName,
    },
    DomainList,
    RecipientAdd {
        address: MailAddress,
        #[serde(default)]
        value: String,
    },
    RecipientDel {
        address: MailAddress,
    },
    RecipientList {
        #[serde(default)]
        domain: Option<DomainName>,
    },
    RecipientImport {
        entries: Vec<(MailAddress, String)>,
    },
    AliasAdd {
        address: MailAddress,
        targets: Vec<MailAddress>,
    },
    AliasDel {
        address: MailAddress,
        #[serde(default)]
        targets: Vec<MailAddress>,
    },
    AliasList,
    TransportSet {
        domain: DomainName,
        spec: TransportSpec,
        #[serde(default)]
        fallback: Vec<TransportSpec>,
    },
    TransportDel {
        domain: DomainName,
    },
    TransportList,
    /// A new zone: from a zone file's text, or an SOA and one NS per node.
    ZoneAdd {
        zone: DomainName,
        #[serde(default)]
        zone_file: Option<String>,
    },
    ZoneDel {
        zone: DomainName,
    },
    ZoneList,
    /// The zone as zone-file text (also what `zone export` writes).
    ZoneShow {
        zone: DomainName,
    },
    /// Replace every record of a zone with a zone file's, atomically.
    ZoneImport {
        zone: DomainName,
        zone_file: String,
    },
    ZoneHistory {
        zone: DomainName,
    },
    /// `NAME TTL IN TYPE RDATA`, names relative to the zone.
    RecordAdd {
        zone: DomainName,
        record: String,
    },
    /// `NAME [TYPE [RDATA]]`.
    RecordDel {
        zone: DomainName,
        selector: String,
    },
    /// Replaces the rrset of the record's name and type.
    RecordSet {
        zone: DomainName,
        record: String,
    },
    /// Create the cluster on this (waiting) node.
    /// The whole cluster's queue, as this node has applied it.
    QueueList,
    QueueShow {
        id: QueueId,
    },
    /// Deletes the named messages, or every message with `all`.
    QueueDelete {
        #[serde(default)]
        ids: Vec<QueueId>,
        #[serde(default)]
        all: bool,
    },
    QueueHold {
        #[serde(default)]
        ids: Vec<QueueId>,
        #[serde(default)]
        all: bool,
    },
    QueueRelease {
        #[serde(default)]
        ids: Vec<QueueId>,
        #[serde(default)]
        all: bool,
    },
    /// Makes deferred mail due now (all of it when `ids` is empty).
    QueueFlush {
        #[serde(default)]
        ids: Vec<QueueId>,
    },
    ClusterInit,
    /// Issue a single-use join token valid for `ttl_secs`.
    ClusterToken {
        ttl_secs: u64,
    },
    /// Join the cluster that `address` (a member's RPC address) belongs to.
    ClusterJoin {
        address: String,
        token: String,
    },
    ClusterStatus,
    /// Remove this node from its cluster (this node then stops).
    ClusterLeave,
    /// Remove a node (by name or id), e.g. a dead one.
    ClusterRemove {
        node: String,
    },
    /// Rotate the cluster CA (or continue a rotation), waiting up to
    /// `wait_secs` for every member at each phase.
    ClusterRotateCa {
        wait_secs: u64,
    },
    /// A submission user with its password hash (the CLI hashes: a
    /// password never crosses this socket).
    UserAdd {
        address: MailAddress,
        hash: PasswordHash,
    },
    UserPasswd {
        address: MailAddress,
        hash: PasswordHash,
    },
    UserDel {
        address: MailAddress,
    },
    /// Users with scheme and dates; their hashes only with `hashes`.
    UserList {
        #[serde(default)]
        domain: Option<DomainName>,
        #[serde(default)]
        hashes: bool,
    },
    /// A whole passwd-file, all or nothing; existing users are replaced.
    UserImport {
        users: Vec<(MailAddress, PasswordHash)>,
    },
    /// Let `user` send with envelope sender `sender`.
    SenderAllow {
        sender: MailAddress,
        user: MailAddress,
    },
    SenderDeny {
        sender: MailAddress,
        user: MailAddress,
    },
    SenderList,
    /// A mailbox quota in bytes (the address must be a recipient of one
    /// of our local domains).
    QuotaSet {
        address: MailAddress,
        bytes: u64,
    },
    QuotaDel {
        address: MailAddress,
    },
    QuotaList {
        #[serde(default)]
        domain: Option<DomainName>,
    },
    /// A domain's settings; `message_size_limit: None` goes back to the
    /// global limit.
    DomainSet {
        domain: DomainName,
        #[serde(default)]
        message_size_limit: Option<u64>,
    },
    /// Replaces the header_checks or body_checks table with a Postfix
    /// regexp table's text: all of it, or nothing if a line is bad.
    ChecksImport {
        kind: hamail_types::CheckKind,
        source: String,
    },
    /// Removes a table.
    ChecksClear {
        kind: hamail_types::CheckKind,
    },
    /// The tables and their rules (both without `kind`).
    ChecksList {
        #[serde(default)]
        kind: Option<hamail_types::CheckKind>,
    },
    /// Which rule of this node's table matches `input`: a header as
    /// `Name: value`, or one body line.
    ChecksTest {
        kind: hamail_types::CheckKind,
        input: String,
    },
    /// Generates DKIM keys for one of our domains on this node and
    /// publishes them in one entry: one RSA-2048 and one Ed25519 key
    /// (selectors from today's date) unless an algorithm is given.
    DkimAdd {
        domain: DomainName,
        #[serde(default)]
        selector: Option<String>,
        #[serde(default)]
        algorithm: Option<hamail_types::DkimAlgorithm>,
    },
    /// Every key: domain, selector, algorithm, record; never the private key.
    DkimList,
    /// Removes a key and its record; the last key of a domain only with `last`.
    DkimDel {
        domain: DomainName,
        selector: String,
        #[serde(default)]
        last: bool,
    },
}

/// One reply line: `{"ok":true,"result":...}` or `{"ok":false,"error":"..."}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdminResponse {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default)]
    pub result: serde_json::Value,
}

impl AdminResponse {
    pub fn ok(result: impl Serialize) -> Self {
        match serde_json::to_value(result) {
            Ok(v) => AdminResponse {
                ok: true,
                error: None,
                result: v,
            },
            Err(e) => AdminResponse::error(format!("cannot encode the reply: {e}")),
        }
    }

    pub fn error(message: impl Into<String>) -> Self {
        AdminResponse {
            ok: false,
            error: Some(message.into()),
            result: serde_json::Value::Null,
        }
    }
}

/// The result of a committed write (or of a cluster operation).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WriteResult {
    pub applied: Vec<String>,
}

/// `cluster token`: the token to pass to `cluster join`.
/// `queue show`: the entry and its message text.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueuedMessage {
    pub entry: QueueEntry,
    /// The message as stored (invalid UTF-8 shown as U+FFFD).
    pub message: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenResult {
    pub token: String,
    pub expires_in_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusInfo {
    pub version: String,
    pub name: String,
    pub site: String,
    pub data_dir: String,
    /// None while the node waits for `cluster init` / `cluster join`.
    pub raft: Option<RaftStatus>,
    pub tables: BTreeMap<String, u64>,
    pub state_digest: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DomainRow {
    pub domain: String,
    pub kind: DomainKind,
    pub added_ms: u64,
    /// The domain's own message size limit (`domain set`), if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_size_limit: Option<u64>,
}

/// `quota list`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QuotaRow {
    pub address: String,
    pub bytes: u64,
    pub updated_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecipientRow {
    pub address: String,
    pub value: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AliasRow {
    pub address: String,
    pub targets: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TransportRow {
    pub domain: String,
    pub spec: String,
    pub fallback: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ZoneRow {
    pub zone: String,
    pub serial: u32,
    pub records: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ZoneText {
    pub zone: String,
    pub serial: u32,
    pub text: String,
}

/// `user list`: never the hash unless asked for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserRow {
    pub address: String,
    /// The hash scheme, as Dovecot names it (ARGON2ID, SHA512-CRYPT, ...).
    pub scheme: String,
    pub created_ms: u64,
    pub changed_ms: u64,
    /// `{SCHEME}hash`, only with `user list --show-hashes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
}

/// `sender list`: `user` may send as `sender`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SenderRow {
    pub sender: String,
    pub user: String,
}
