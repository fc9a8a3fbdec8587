//! Committing a delivery attempt: each recipient's outcome becomes its new
//! state (sent, deferred with a back-off, bounced or expired), the failures
//! a bounce notice, all in one `QueueResult` under the attempt's epoch; the
//! Postfix log lines follow from what the state machine says it did.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use hamail_types::queue::ResultApplied;
use hamail_types::{
    Command, MailAddress, NewMessage, NodeId, Outcome, QueueEntry, QueueId, RecipientStatus,
};

use super::attempt::Tried;
use super::client::RcptOutcome;
use super::{DeliverySettings, QueueStore, dsn, now_ms};
use crate::BackendError;

/// What became of an attempt's record.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecordOutcome {
    /// Applied under the attempt's epoch: it counts.
    Counted(ResultApplied),
    /// Refused by the state machine (fenced: the message changed owner, or
    /// it is gone).
    Refused(String),
    /// Not committed; the attempt is made again once SETTLE has passed.
    NotCommitted(BackendError),
    /// The commit answered something a `QueueResult` never gives.
    Unexpected,
}

impl RecordOutcome {
    /// The outcome of committing one `QueueResult`.
    pub fn of(committed: Result<Vec<Outcome>, BackendError>) -> Self {
        match committed {
            Ok(outcomes) => match outcomes.into_iter().next() {
                Some(Outcome::ResultRecorded(done)) => RecordOutcome::Counted(done),
                Some(Outcome::Rejected { reason }) => RecordOutcome::Refused(reason),
                _ => RecordOutcome::Unexpected,
            },
            Err(e) => RecordOutcome::NotCommitted(e),
        }
    }
}

fn backoff(s: &DeliverySettings, attempts: u32) -> Duration {
    let factor = 1u32 << attempts.saturating_sub(1).min(16);
    (s.minimal_backoff * factor)
        .min(s.maximal_backoff)
        .max(s.minimal_backoff)
}

/// Turns the attempt into recipient states, commits them (with a DSN for
/// new bounces) under the message's epoch, and logs Postfix's lines.
pub(super) async fn commit_outcomes<Q: QueueStore>(
    store: &Q,
    s: &DeliverySettings,
    entry: &QueueEntry,
    body: &[u8],
    attempts: &HashMap<MailAddress, u32>,
    tried: Vec<Tried>,
    started: Instant,
) -> Vec<(MailAddress, RecipientStatus)> {
    if tried.is_empty() {
        return Vec::new();
    }
    let now = now_ms();
    let age = Duration::from_millis(now.saturating_sub(entry.arrival_ms));
    let lifetime = if entry.sender.is_none() {
        s.bounce_queue_lifetime
    } else {
        s.maximal_queue_lifetime
    };
    let mut results = Vec::new();
    let mut failures = Vec::new();
    let mut lines = Vec::new();
    for t in tried {
        let (status, dsn, word, text) = match t.outcome {
            RcptOutcome::Sent(reply) => (
                RecipientStatus::Delivered {
                    reply: reply.clone(),
                    time_ms: now,
                },
                dsn::status_of(&reply, false).replace("4.0.0", "2.0.0"),
                "sent",
                reply,
            ),
            RcptOutcome::Permanent(reason) => {
                let code = dsn::status_of(reason.rsplit("said: ").next().unwrap_or(&reason), true);
                failures.push(dsn::Failure {
                    recipient: t.rcpt.clone(),
                    status: code.clone(),
                    remote_mta: (t.relay != "none").then(|| t.relay.clone()),
                    diagnostic: reason.clone(),
                });
                (
                    RecipientStatus::Bounced {
                        reason: reason.clone(),
                        time_ms: now,
                    },
                    code,
                    "bounced",
                    reason,
                )
            }
            RcptOutcome::Temporary(reason) if age >= lifetime => {
                let why = format!(
                    "message expired after {} s in the queue: {reason}",
                    age.as_secs()
                );
                failures.push(dsn::Failure {
                    recipient: t.rcpt.clone(),
                    status: "4.4.7".into(),
                    remote_mta: None,
                    diagnostic: why.clone(),
                });
                (
                    RecipientStatus::Bounced {
                        reason: why.clone(),
                        time_ms: now,
                    },
                    "4.4.7".into(),
                    "expired",
                    why,
                )
            }
            RcptOutcome::Temporary(reason) => {
                let n = attempts.get(&t.rcpt).copied().unwrap_or(0) + 1;
                let code = dsn::status_of(reason.rsplit("said: ").next().unwrap_or(&reason), false);
                (
                    RecipientStatus::Deferred {
                        reason: reason.clone(),
                        next_try_ms: now + backoff(s, n).as_millis() as u64,
                        attempts: n,
                    },
                    code,
                    "deferred",
                    reason,
                )
            }
        };
        let delay = age.as_secs_f64();
        let queued = delay - started.elapsed().as_secs_f64();
        lines.push(format!(
            "{}: to=<{}>, relay={}, delay={:.2}, delays={:.2}/0/0/{:.2}, dsn={dsn}, status={word} ({})",
            entry.queue_id,
            t.rcpt,
            t.relay,
            delay,
            queued.max(0.0),
            started.elapsed().as_secs_f64(),
            text.split_whitespace().collect::<Vec<_>>().join(" ")
        ));
        results.push((t.rcpt, status));
    }
    let recorded = results.clone();
    let (command, _notice) = attempt_record(
        entry,
        body,
        results,
        &failures,
        store.node_id(),
        &s.hostname,
        now,
    );
    let outcome = RecordOutcome::of(store.commit(vec![command]).await);
    match &outcome {
        RecordOutcome::Counted(done) => {
            for l in &lines {
                tracing::info!(target: "postfix/smtp", "{l}");
            }
            // The state machine queued the notice only if this result
            // newly bounced someone.
            if let Some(id) = &done.notice {
                tracing::info!(target: "postfix/bounce", "{}: sender non-delivery notification: {id}", entry.queue_id);
            }
            if done.removed {
                tracing::info!(target: "postfix/qmgr", "{}: removed", entry.queue_id);
            }
        }
        RecordOutcome::Refused(reason) => {
            // Fenced: another node owns the message now; what we did
            // is a duplicate at worst.
            tracing::warn!(target: "postfix/qmgr", "{}: delivery result refused: {reason}", entry.queue_id);
        }
        RecordOutcome::NotCommitted(e) => {
            tracing::warn!(target: "postfix/qmgr", "{}: cannot commit the delivery result (it will be tried again): {e}", entry.queue_id);
        }
        RecordOutcome::Unexpected => {}
    }
    recorded
}

/// What one delivery attempt commits: the recipients' results under the
/// lease epoch the attempt ran with, carrying a bounce notice (RFC 3464) to
/// the sender for the failures (never for a `<>` sender), which the state
/// machine queues only if the result counts. Returns the command and the
/// notice's queue id.
pub fn attempt_record(
    entry: &QueueEntry,
    body: &[u8],
    results: Vec<(MailAddress, RecipientStatus)>,
    failures: &[dsn::Failure],
    node: NodeId,
    hostname: &str,
    now_ms: u64,
) -> (Command, Option<QueueId>) {
    let mut notice = None;
    let mut dsn_id = None;
    if let (false, Some(sender)) = (failures.is_empty(), &entry.sender) {
        let id = QueueId::new_for(node);
        notice = Some(Box::new(NewMessage {
            queue_id: id.clone(),
            sender: None,
            recipients: vec![sender.clone()],
            owner: node,
            client: "local".into(),
            helo: hostname.to_string(),
            smtputf8: false,
            eight_bit: true,
            held: false,
            content_filter: None,
            body: dsn::build(entry, body, failures, hostname, now_ms / 1000),
        }));
        dsn_id = Some(id);
    }
    let command = Command::QueueResult {
        queue_id: entry.queue_id.clone(),
        epoch: entry.epoch,
        results,
        notice,
    };
    (command, dsn_id)
}
