//! The replicated command set. A command travels inside a raft entry, is
//! validated before it is proposed (`validate`), and is applied by the state
//! machine, which answers each one with an [`Outcome`].

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::queue::{NewMessage, QueueId, QueueSelector, RecipientStatus};
use crate::zone::{self, ZoneRecord};
use crate::{DomainName, MailAddress, NodeId, PasswordHash, TransportSpec, TypesError};

/// How mail for a domain is handled, in Postfix's address-class words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum DomainKind {
    /// Final destination: delivered to mailboxes (Maildir) or over LMTP.
    Local,
    /// Accepted for known recipients and relayed to the domain's transport.
    Relay,
    /// Aliases only; every address is rewritten to other addresses.
    Virtual,
}

impl fmt::Display for DomainKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DomainKind::Local => "local",
            DomainKind::Relay => "relay",
            DomainKind::Virtual => "virtual",
        })
    }
}

impl FromStr for DomainKind {
    type Err = TypesError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "local" => Ok(DomainKind::Local),
            "relay" => Ok(DomainKind::Relay),
            "virtual" => Ok(DomainKind::Virtual),
            _ => Err(TypesError::Kind {
                input: s.to_string(),
            }),
        }
    }
}

/// Largest number of targets one alias may have.
pub const MAX_ALIAS_TARGETS: usize = 1000;
/// Largest value kept for a recipient (the right-hand side of a map line).
pub const MAX_RECIPIENT_VALUE: usize = 1024;

/// One change to the replicated tables. Commands are keyed by domain so that the
/// tables can later be split into several raft groups without changing them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Command {
    DomainAdd {
        domain: DomainName,
        kind: DomainKind,
    },
    DomainDel {
        domain: DomainName,
    },
    RecipientAdd {
        address: MailAddress,
        /// The map value (`address value`): kept, not interpreted yet.
        value: String,
    },
    RecipientDel {
        address: MailAddress,
    },
    /// A whole map file: applied all at once or not at all.
    RecipientImport {
        entries: Vec<(MailAddress, String)>,
    },
    AliasAdd {
        address: MailAddress,
        targets: Vec<MailAddress>,
    },
    /// Deletes the given targets, or the whole alias when `targets` is empty.
    AliasDel {
        address: MailAddress,
        targets: Vec<MailAddress>,
    },
    TransportSet {
        domain: DomainName,
        spec: TransportSpec,
        fallback: Vec<TransportSpec>,
    },
    TransportDel {
        domain: DomainName,
    },
    /// A join token, stored hashed (SHA-256 of the secret, hex). It expires
    /// `ttl_ms` after the entry's time stamp: one clock (the log's) both
    /// starts and checks it, whatever the minting node's clock says.
    TokenAdd {
        token_hash: String,
        ttl_ms: u64,
    },
    /// Consumes a join token and admits a new node under a fresh id (answered
    /// with [`Outcome::Admitted`]). Ids are never reused. `key_sha256` pins
    /// the public key of the certificate the node gets (SHA-256 of its
    /// SubjectPublicKeyInfo, hex): a certificate for that id with another
    /// key is refused, whoever signed it.
    NodeAdmit {
        token_hash: String,
        info: NodeInfo,
        key_sha256: String,
    },
    /// Records the node that initialised the cluster, with its pinned key.
    NodeRegister {
        node_id: NodeId,
        info: NodeInfo,
        key_sha256: String,
    },
    /// Marks a node removed; its id stays taken.
    NodeRemove {
        node_id: NodeId,
    },
    /// Starts a rotation of the cluster CA (`cluster rotate-ca`, phase
    /// "trust"): every node trusts `old` and `new`; `old` still signs.
    CaRotate {
        old: CaMaterial,
        new: CaMaterial,
    },
    /// Phase "switch": every node presents a certificate (its own key,
    /// re-signed) from the trusted CA with this fingerprint, which signs
    /// from now on. Both CAs stay trusted.
    CaSwitch {
        fingerprint: String,
    },
    /// Phase "done": the CA with this fingerprint is no longer trusted.
    CaRetire {
        fingerprint: String,
    },
    /// A new zone with its records (SOA and apex NS included).
    ZoneCreate {
        zone: DomainName,
        records: Vec<ZoneRecord>,
    },
    ZoneDelete {
        zone: DomainName,
    },
    /// Replaces all records of a zone at once (`zone import`).
    ZoneReplace {
        zone: DomainName,
        records: Vec<ZoneRecord>,
    },
    RecordAdd {
        zone: DomainName,
        record: ZoneRecord,
    },
    /// Deletes the records at `name`, of `rtype` if given, with `rdata` if given.
    RecordDelete {
        zone: DomainName,
        name: String,
        rtype: Option<String>,
        rdata: Option<String>,
    },
    /// Replaces the rrset (name and type) with this record.
    RecordSet {
        zone: DomainName,
        record: ZoneRecord,
    },
    /// A message accepted by a smtpd: envelope and body, one entry.
    QueueInsert {
        message: Box<NewMessage>,
    },
    /// Removes messages and their bodies (`queue delete`).
    QueueDelete {
        which: QueueSelector,
    },
    /// Puts messages on hold, or releases them (`queue hold` / `release`).
    QueueHold {
        which: QueueSelector,
        hold: bool,
    },
    /// Makes deferred recipients due now (`queue flush`).
    QueueFlush {
        which: QueueSelector,
    },
    /// The outcome of a delivery attempt, made under lease `epoch`: refused
    /// if the message has since been given to another owner (fencing). When
    /// every recipient is final the message and its body leave the queue.
    /// `notice` is the bounce notice (DSN) for the attempt's failures: it
    /// is queued only if the result counts and newly bounces a recipient,
    /// so a fenced or repeated result never sends a second one.
    QueueResult {
        queue_id: QueueId,
        epoch: u64,
        results: Vec<(MailAddress, RecipientStatus)>,
        notice: Option<Box<NewMessage>>,
    },
    /// Gives the unfinished messages owned by `from` (gone longer than the
    /// lease) to the nodes `to`, round robin in queue order, epoch + 1.
    QueueReassign {
        from: NodeId,
        to: Vec<NodeId>,
    },
    /// A new submission user; refused if the address is a user already.
    UserAdd {
        address: MailAddress,
        hash: PasswordHash,
    },
    /// A user's new password hash; refused for an unknown user.
    UserPasswd {
        address: MailAddress,
        hash: PasswordHash,
    },
    /// Deletes a user and the sender-allow entries naming it.
    UserDel {
        address: MailAddress,
    },
    /// A whole passwd-file: applied all at once or not at all. Existing
    /// users get the imported hash.
    UserImport {
        users: Vec<(MailAddress, PasswordHash)>,
    },
    /// The smtpd's upgrade of a verified hash (to Argon2id) after a login:
    /// compare-and-set, applied only if the stored hash is still `old`, so
    /// a `user passwd` committed meanwhile wins. Otherwise an applied
    /// no-op ("unchanged"), never a rejection.
    UserRehash {
        address: MailAddress,
        old: PasswordHash,
        new: PasswordHash,
    },
    /// Lets `user` send with the envelope sender `sender` (Postfix's
    /// smtpd_sender_login_maps entry); the user must exist.
    SenderAllow {
        sender: MailAddress,
        user: MailAddress,
    },
    SenderDeny {
        sender: MailAddress,
        user: MailAddress,
    },
    /// A mailbox quota in bytes for a mailbox we host (a recipient of one
    /// of our local domains); replaces the one it has.
    QuotaSet {
        address: MailAddress,
        bytes: u64,
    },
    QuotaDel {
        address: MailAddress,
    },
    /// Per-domain settings of one of our domains: the largest message its
    /// recipients take (`None`: the global `message_size_limit`).
    DomainSet {
        domain: DomainName,
        message_size_limit: Option<u64>,
    },
    /// Replaces the header_checks or body_checks table with this source
    /// (Postfix regexp-table text, validated by parsing it; empty: no
    /// table). The text travels, not compiled rules, so every node
    /// compiles the same rules from it.
    ChecksReplace {
        kind: hamail_checks::CheckKind,
        source: String,
    },
    /// Stores DKIM keys of one of our domains and publishes each one's
    /// TXT record (`SELECTOR._domainkey.DOMAIN`) in the zone of ours that
    /// holds that name, in this one entry: a node signs with a key only
    /// once its record is served. All keys or none.
    DkimAdd {
        domain: DomainName,
        keys: Vec<crate::DkimKey>,
    },
    /// Removes a key and its TXT record in one entry. The last key of a
    /// domain only with `last` (signing for the domain stops).
    DkimDel {
        domain: DomainName,
        selector: String,
        last: bool,
    },
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
    /// The node's name server host name (`[dns] hostname`), may be empty.
    pub dns_name: String,
}

impl fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at {} ({})", self.name, self.site, self.rpc_addr)
    }
}

/// A CA certificate and its private key (PEM), with the SHA-256 of the
/// certificate (DER, hex) that join tokens pin. Every member holds the
/// signing CA's key (any surviving site admits replacement nodes).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaMaterial {
    pub fingerprint: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl fmt::Debug for CaMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaMaterial")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

/// Where a CA rotation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CaPhase {
    /// Both CAs trusted, the old one signs.
    Trust,
    /// Both CAs trusted, the new one signs.
    Switch,
    /// One CA, trusted and signing.
    Done,
}

impl fmt::Display for CaPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CaPhase::Trust => "trust",
            CaPhase::Switch => "switch",
            CaPhase::Done => "done",
        })
    }
}

/// The replicated CA state, present once a rotation has begun (before
/// that, the CA of each node's `pki/` directory is the only one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaState {
    /// Every CA a member certificate may come from.
    pub trusted: Vec<CaMaterial>,
    /// The fingerprint of the CA that signs (one of `trusted`).
    pub signing: String,
    pub phase: CaPhase,
    /// Log time of the last phase change (ms since the Unix epoch).
    pub changed_ms: u64,
}

impl CaState {
    pub fn signing_ca(&self) -> Option<&CaMaterial> {
        self.trusted.iter().find(|c| c.fingerprint == self.signing)
    }
}

/// Largest PEM text of a CA certificate or key carried in a command.
const MAX_CA_PEM: usize = 16 << 10;

fn valid_token_hash(h: &str) -> bool {
    h.len() == 64
        && h.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

impl Command {
    /// Checks what can be checked without the replicated state. Run before a
    /// command is proposed; apply checks the rest against the state.
    pub fn validate(&self) -> Result<(), TypesError> {
        let bad = |m: String| Err(TypesError::Command(m));
        match self {
            Command::RecipientAdd { value, .. } if value.len() > MAX_RECIPIENT_VALUE => bad(
                format!("recipient value longer than {MAX_RECIPIENT_VALUE} bytes"),
            ),
            Command::RecipientImport { entries } => {
                if entries.is_empty() {
                    return bad("the import holds no recipients".into());
                }
                if let Some((a, _)) = entries.iter().find(|(_, v)| v.len() > MAX_RECIPIENT_VALUE) {
                    return bad(format!(
                        "value of {a} longer than {MAX_RECIPIENT_VALUE} bytes"
                    ));
                }
                Ok(())
            }
            Command::AliasAdd { address, targets } => {
                if targets.is_empty() {
                    return bad(format!("alias {address} needs at least one target"));
                }
                if targets.len() > MAX_ALIAS_TARGETS {
                    return bad(format!(
                        "alias {address} has more than {MAX_ALIAS_TARGETS} targets"
                    ));
                }
                if targets.contains(address) {
                    return bad(format!("alias {address} must not point at itself"));
                }
                Ok(())
            }
            Command::TransportSet { fallback, .. } if fallback.len() > 8 => {
                bad("at most 8 fallback transports".into())
            }
            Command::TokenAdd { token_hash, .. } | Command::NodeAdmit { token_hash, .. }
                if !valid_token_hash(token_hash) =>
            {
                bad("a token hash is 64 lower-case hex digits".into())
            }
            Command::NodeAdmit { key_sha256, .. } | Command::NodeRegister { key_sha256, .. }
                if !valid_token_hash(key_sha256) =>
            {
                bad("a pinned key hash is 64 lower-case hex digits".into())
            }
            Command::ZoneCreate { zone, records } | Command::ZoneReplace { zone, records } => {
                zone::check_zone(zone, records)
            }
            Command::RecordAdd { zone, record } | Command::RecordSet { zone, record }
                if !zone::in_zone(&record.name, zone) =>
            {
                bad(format!("{} is outside the zone {zone}", record.name))
            }
            Command::RecordAdd { record, .. } if record.rtype == "SOA" => {
                bad("a zone has one SOA: use `record set` to change it".into())
            }
            Command::RecordDelete { zone, name, .. } if !zone::in_zone(name, zone) => {
                bad(format!("{name} is outside the zone {zone}"))
            }
            Command::RecordDelete { rtype, .. } if rtype.as_deref() == Some("SOA") => {
                bad("the SOA cannot be deleted (delete the zone instead)".into())
            }
            Command::QueueInsert { message } => message.validate(),
            Command::QueueResult { results, .. } if results.is_empty() => {
                bad("a delivery result names no recipient".into())
            }
            Command::QueueResult {
                notice: Some(m), ..
            } => m.validate(),
            Command::UserImport { users } => {
                if users.is_empty() {
                    return bad("the import holds no users".into());
                }
                let mut seen = std::collections::BTreeSet::new();
                if let Some((a, _)) = users.iter().find(|(a, _)| !seen.insert(a)) {
                    return bad(format!("user {a} appears twice in the import"));
                }
                Ok(())
            }
            Command::QueueReassign { from, to } if to.is_empty() || to.contains(from) => {
                bad(format!("messages of node {from} need other nodes to go to"))
            }
            Command::CaRotate { old, new } => {
                for ca in [old, new] {
                    if !valid_token_hash(&ca.fingerprint) {
                        return bad("a CA fingerprint is 64 lower-case hex digits".into());
                    }
                    if !ca.cert_pem.starts_with("-----BEGIN CERTIFICATE-----")
                        || ca.cert_pem.len() > MAX_CA_PEM
                        || !ca.key_pem.starts_with("-----BEGIN ")
                        || ca.key_pem.len() > MAX_CA_PEM
                    {
                        return bad(format!(
                            "CA {} needs a PEM certificate and key of at most {MAX_CA_PEM} bytes",
                            ca.fingerprint
                        ));
                    }
                }
                if old.fingerprint == new.fingerprint {
                    return bad("the new CA is the old one".into());
                }
                Ok(())
            }
            Command::CaSwitch { fingerprint } | Command::CaRetire { fingerprint }
                if !valid_token_hash(fingerprint) =>
            {
                bad("a CA fingerprint is 64 lower-case hex digits".into())
            }
            Command::QuotaSet { address, bytes }
                if *bytes == 0 || *bytes > crate::MAX_BYTE_SIZE =>
            {
                bad(format!(
                    "the quota of {address} must be from 1 byte to 1 PiB"
                ))
            }
            Command::DomainSet {
                domain,
                message_size_limit: Some(limit),
            } if *limit == 0 || *limit > crate::MAX_BYTE_SIZE => bad(format!(
                "the message size limit of {domain} must be from 1 byte to 1 PiB"
            )),
            Command::ChecksReplace { kind, source } => hamail_checks::parse(*kind, source)
                .map(|_| ())
                .map_err(|e| TypesError::Command(format!("{kind}_checks {e}"))),
            Command::DkimAdd { domain, keys } => {
                if keys.is_empty() || keys.len() > crate::dkim::MAX_DKIM_KEYS_PER_ADD {
                    return bad(format!(
                        "dkim add {domain}: 1 to {} keys at once",
                        crate::dkim::MAX_DKIM_KEYS_PER_ADD
                    ));
                }
                let mut seen = std::collections::BTreeSet::new();
                for k in keys {
                    k.validate()?;
                    if !seen.insert(k.selector.as_str()) {
                        return bad(format!("DKIM selector {} appears twice", k.selector));
                    }
                }
                Ok(())
            }
            Command::DkimDel { selector, .. } => crate::dkim::check_selector(selector),
            Command::NodeAdmit { info, .. } | Command::NodeRegister { info, .. }
                if info.name.is_empty() || info.name.len() > 63 || info.rpc_addr.is_empty() =>
            {
                bad("a node needs a name (1-63 characters) and an RPC address".into())
            }
            _ => Ok(()),
        }
    }

    /// About how many bytes the command takes in a raft entry: the proposer
    /// keeps entries (and so replication messages) bounded by it.
    pub fn approx_size(&self) -> usize {
        match self {
            Command::QueueInsert { message } => {
                message.body.len() + 64 * (message.recipients.len() + 4)
            }
            Command::RecipientImport { entries } => 64 * entries.len(),
            Command::UserImport { users } => 192 * users.len(),
            Command::ChecksReplace { source, .. } => 128 + source.len(),
            Command::DkimAdd { keys, .. } => keys
                .iter()
                .map(|k| 128 + k.private_key.len() + k.public_key.len())
                .sum(),
            Command::CaRotate { old, new } => {
                old.cert_pem.len() + old.key_pem.len() + new.cert_pem.len() + new.key_pem.len()
            }
            Command::ZoneCreate { records, .. } | Command::ZoneReplace { records, .. } => {
                96 * records.len()
            }
            _ => 128,
        }
    }

    /// The domain a command belongs to (the future raft-group key).
    pub fn shard_key(&self) -> Option<&DomainName> {
        match self {
            Command::DomainAdd { domain, .. }
            | Command::DomainDel { domain }
            | Command::TransportSet { domain, .. }
            | Command::TransportDel { domain } => Some(domain),
            Command::ZoneCreate { zone, .. }
            | Command::ZoneDelete { zone }
            | Command::ZoneReplace { zone, .. }
            | Command::RecordAdd { zone, .. }
            | Command::RecordDelete { zone, .. }
            | Command::RecordSet { zone, .. } => Some(zone),
            Command::RecipientAdd { address, .. }
            | Command::RecipientDel { address }
            | Command::AliasAdd { address, .. }
            | Command::AliasDel { address, .. }
            | Command::UserAdd { address, .. }
            | Command::UserPasswd { address, .. }
            | Command::UserDel { address }
            | Command::UserRehash { address, .. }
            | Command::QuotaSet { address, .. }
            | Command::QuotaDel { address } => Some(address.domain()),
            Command::DomainSet { domain, .. }
            | Command::DkimAdd { domain, .. }
            | Command::DkimDel { domain, .. } => Some(domain),
            // A sender-allow entry links two addresses, maybe of two
            // domains; an import spans domains: cluster-wide, like tokens.
            Command::SenderAllow { .. }
            | Command::SenderDeny { .. }
            | Command::UserImport { .. } => None,
            // The content checks apply to every domain's mail.
            Command::ChecksReplace { .. } => None,
            Command::RecipientImport { .. }
            | Command::TokenAdd { .. }
            | Command::NodeAdmit { .. }
            | Command::NodeRegister { .. }
            | Command::NodeRemove { .. }
            | Command::CaRotate { .. }
            | Command::CaSwitch { .. }
            | Command::CaRetire { .. }
            | Command::QueueInsert { .. }
            | Command::QueueDelete { .. }
            | Command::QueueHold { .. }
            | Command::QueueFlush { .. }
            | Command::QueueResult { .. }
            | Command::QueueReassign { .. } => None,
        }
    }
}

/// What applying one command did. A rejection changed nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Outcome {
    Applied {
        detail: String,
    },
    Rejected {
        reason: String,
    },
    /// A node was admitted under this id.
    Admitted {
        node_id: NodeId,
    },
    /// A delivery result counted (applied under the message's epoch):
    /// what it did to the message, as data for the queue manager.
    ResultRecorded(crate::queue::ResultApplied),
}

impl Outcome {
    pub fn applied(detail: impl Into<String>) -> Self {
        Outcome::Applied {
            detail: detail.into(),
        }
    }
    pub fn rejected(reason: impl Into<String>) -> Self {
        Outcome::Rejected {
            reason: reason.into(),
        }
    }
    pub fn is_applied(&self) -> bool {
        !matches!(self, Outcome::Rejected { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_refuses_self_alias_and_empty_import() {
        let a = MailAddress::parse("a@example.com").unwrap();
        let cmd = Command::AliasAdd {
            address: a.clone(),
            targets: vec![a.clone()],
        };
        assert!(cmd.validate().is_err());
        assert!(
            Command::RecipientImport { entries: vec![] }
                .validate()
                .is_err()
        );
        assert_eq!("Relay".parse::<DomainKind>().unwrap(), DomainKind::Relay);
        assert!("mailbox".parse::<DomainKind>().is_err());
    }

    #[test]
    fn validate_refuses_empty_and_duplicate_user_imports() {
        let h = PasswordHash::parse("{SHA512-CRYPT}$6$salt$abc").unwrap();
        let a = MailAddress::parse("a@example.com").unwrap();
        let b = MailAddress::parse("b@example.com").unwrap();
        assert!(Command::UserImport { users: vec![] }.validate().is_err());
        let dup = Command::UserImport {
            users: vec![(a.clone(), h.clone()), (b, h.clone()), (a, h)],
        };
        let e = dup.validate().unwrap_err().to_string();
        assert!(e.contains("user a@example.com appears twice"), "{e}");
    }
}
