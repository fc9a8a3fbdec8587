//! The replicated mail queue: queue ids, the message a smtpd proposes, and
//! the queue entry the state machine keeps (envelope, per-recipient state,
//! owner node and lease epoch for delivery).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::{MailAddress, NodeId, TransportSpec, TypesError};

/// A queue id in Postfix's style: upper-case hex. Made of the accepting
/// node's clock (µs, kept strictly increasing per process) and its node id,
/// so two nodes never make the same id; apply refuses a duplicate anyway.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct QueueId(String);

/// Hex digits of a queue id: 13 for the time, 3 for the node.
pub const QUEUE_ID_LEN: usize = 16;

impl QueueId {
    pub fn new(time_us: u64, node: NodeId) -> Self {
        QueueId(format!(
            "{:013X}{:03X}",
            time_us & ((1 << 52) - 1),
            node & 0xFFF
        ))
    }

    /// A new queue id for a message accepted (or a notice made) on `node`
    /// now: this node's clock in µs, kept strictly increasing in this
    /// process, and the node id.
    pub fn new_for(node: NodeId) -> Self {
        static LAST_US: AtomicU64 = AtomicU64::new(0);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_micros() as u64;
        let mut prev = LAST_US.load(Ordering::Relaxed);
        loop {
            let next = now.max(prev + 1);
            match LAST_US.compare_exchange_weak(prev, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return QueueId::new(next, node),
                Err(p) => prev = p,
            }
        }
    }

    pub fn parse(s: &str) -> Result<Self, TypesError> {
        let s = s.trim();
        if s.len() != QUEUE_ID_LEN || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(TypesError::Command(format!(
                "invalid queue id {s:?}: expected {QUEUE_ID_LEN} hex digits"
            )));
        }
        Ok(QueueId(s.to_ascii_uppercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What a counted delivery result did to its message (a `QueueResult`
/// applied under the message's epoch). The state machine answers it as
/// [`crate::Outcome::ResultRecorded`]; `Display` is the text an operator
/// sees (`<id>: removed, bounce notice <id>`), never read back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultApplied {
    pub queue_id: QueueId,
    /// Every recipient is final now: the message left the queue.
    pub removed: bool,
    /// The bounce notice the result queued (it newly bounced someone).
    pub notice: Option<QueueId>,
}

impl fmt::Display for ResultApplied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = if self.removed { "removed" } else { "updated" };
        write!(f, "{}: {what}", self.queue_id)?;
        if let Some(n) = &self.notice {
            write!(f, ", bounce notice {n}")?;
        }
        Ok(())
    }
}

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for QueueId {
    type Err = TypesError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        QueueId::parse(s)
    }
}

impl TryFrom<String> for QueueId {
    type Error = TypesError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        QueueId::parse(&s)
    }
}

impl From<QueueId> for String {
    fn from(q: QueueId) -> String {
        q.0
    }
}

/// A message as a smtpd hands it to the cluster: envelope and body (with
/// our `Received:` header already on top).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewMessage {
    pub queue_id: QueueId,
    /// `None` for the null sender `<>` (bounces).
    pub sender: Option<MailAddress>,
    pub recipients: Vec<MailAddress>,
    /// The node whose smtpd accepted it: it delivers it while its lease holds.
    pub owner: NodeId,
    /// `name[ip]` of the SMTP client, as Postfix logs it.
    pub client: String,
    pub helo: String,
    pub smtputf8: bool,
    pub eight_bit: bool,
    /// Queued on hold (a HOLD check or a milter's quarantine): kept, listed
    /// by `queue list`, not delivered until `queue release`.
    #[serde(default)]
    pub held: bool,
    /// The after-queue content filter this message goes to instead of its
    /// recipients' destinations (`[smtp] content_filter` of the listener
    /// that took it, decided at accept time so that every node delivers it
    /// the same way); `None` once re-injected, and for bounce notices.
    #[serde(default)]
    pub content_filter: Option<TransportSpec>,
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
}

/// Largest number of recipients one queue entry may carry.
pub const MAX_QUEUE_RECIPIENTS: usize = 10_000;

impl NewMessage {
    pub fn validate(&self) -> Result<(), TypesError> {
        if self.recipients.is_empty() {
            return Err(TypesError::Command(format!(
                "message {} has no recipients",
                self.queue_id
            )));
        }
        if self.recipients.len() > MAX_QUEUE_RECIPIENTS {
            return Err(TypesError::Command(format!(
                "message {} has more than {MAX_QUEUE_RECIPIENTS} recipients",
                self.queue_id
            )));
        }
        Ok(())
    }
}

/// Where one recipient of a queued message stands. (Stored with postcard:
/// no internally tagged or flattened serde forms here.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum RecipientStatus {
    /// Not tried yet.
    Pending,
    /// Tried and failed temporarily; tried again at `next_try_ms`.
    Deferred {
        reason: String,
        next_try_ms: u64,
        attempts: u32,
    },
    Delivered {
        reply: String,
        time_ms: u64,
    },
    Bounced {
        reason: String,
        time_ms: u64,
    },
}

impl RecipientStatus {
    /// Delivered or bounced: nothing more will happen to this recipient.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            RecipientStatus::Delivered { .. } | RecipientStatus::Bounced { .. }
        )
    }

    /// Whether the recipient is to be tried at `now_ms`: pending, or
    /// deferred until then. A retry time more than `max_wait_ms` ahead
    /// (the longest backoff) means the clock was stepped back since it was
    /// set: the recipient is due rather than stuck until the clock catches
    /// up again.
    pub fn is_due(&self, now_ms: u64, max_wait_ms: u64) -> bool {
        match self {
            RecipientStatus::Pending => true,
            RecipientStatus::Deferred { next_try_ms, .. } => {
                *next_try_ms <= now_ms || *next_try_ms > now_ms.saturating_add(max_wait_ms)
            }
            _ => false,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            RecipientStatus::Pending => "pending",
            RecipientStatus::Deferred { .. } => "deferred",
            RecipientStatus::Delivered { .. } => "delivered",
            RecipientStatus::Bounced { .. } => "bounced",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueRecipient {
    pub address: MailAddress,
    pub status: RecipientStatus,
}

/// A queued message as the queue table keeps it (the body is in the bodies
/// table under the same id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueEntry {
    pub queue_id: QueueId,
    pub sender: Option<MailAddress>,
    pub recipients: Vec<QueueRecipient>,
    /// The proposer's clock when the message was committed (ms, Unix epoch).
    pub arrival_ms: u64,
    /// Body size in bytes, `Received:` header included.
    pub size: u64,
    pub owner: NodeId,
    /// Raised each time the message is handed to another owner; an outcome
    /// reported under an older epoch is refused (fencing).
    pub epoch: u64,
    /// On hold (`queue hold`): not delivered until released.
    pub held: bool,
    /// Delivered to this content filter, all recipients in one transaction,
    /// rather than to their own destinations (see `NewMessage`).
    #[serde(default)]
    pub content_filter: Option<TransportSpec>,
    pub client: String,
    pub helo: String,
    pub smtputf8: bool,
    pub eight_bit: bool,
}

impl QueueEntry {
    /// The sender as Postfix writes it in logs and mailq (`` for `<>`).
    pub fn sender_str(&self) -> String {
        self.sender
            .as_ref()
            .map(|s| s.to_string())
            .unwrap_or_default()
    }
}

/// Which queued messages a queue command is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum QueueSelector {
    All,
    Ids(Vec<QueueId>),
}

impl QueueSelector {
    pub fn matches(&self, id: &QueueId) -> bool {
        match self {
            QueueSelector::All => true,
            QueueSelector::Ids(ids) => ids.contains(id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_result_shows_what_it_did_to_the_message() {
        let id = QueueId::new(1_700_000_000_000_000, 1);
        let notice = QueueId::new(1_700_000_000_000_001, 2);
        let removed = ResultApplied {
            queue_id: id.clone(),
            removed: true,
            notice: None,
        };
        assert_eq!(removed.to_string(), format!("{id}: removed"));
        let bounced = ResultApplied {
            queue_id: id.clone(),
            removed: false,
            notice: Some(notice.clone()),
        };
        assert_eq!(
            bounced.to_string(),
            format!("{id}: updated, bounce notice {notice}")
        );
    }

    #[test]
    fn queue_ids_are_hex_ordered_and_parse_back() {
        let a = QueueId::new(1_700_000_000_000_000, 1);
        let b = QueueId::new(1_700_000_000_000_001, 1);
        assert_eq!(a.as_str().len(), QUEUE_ID_LEN);
        assert!(a < b);
        assert_eq!(QueueId::parse(&a.as_str().to_lowercase()).unwrap(), a);
        assert!(QueueId::parse("XYZ").is_err());
        assert!(QueueId::parse("0123456789ABCDEFA").is_err());
    }

    #[test]
    fn deferred_recipients_are_due_at_their_time_or_after_a_clock_step_back() {
        let deferred = |next_try_ms| RecipientStatus::Deferred {
            reason: "451".into(),
            next_try_ms,
            attempts: 1,
        };
        let max_wait = 4_000_000;
        assert!(RecipientStatus::Pending.is_due(0, max_wait));
        assert!(!deferred(10_000_300).is_due(10_000_000, max_wait));
        assert!(deferred(10_000_300).is_due(10_000_300, max_wait));
        // Set 2 h ahead by a clock since stepped back: due now.
        assert!(deferred(10_000_000 + 7_200_000).is_due(10_000_000, max_wait));
        let done = RecipientStatus::Delivered {
            reply: "250".into(),
            time_ms: 1,
        };
        assert!(!done.is_due(u64::MAX, max_wait));
    }
}
