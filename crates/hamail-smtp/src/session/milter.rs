//! The milter stage of the content policy: each configured milter hears the
//! session replayed at the end of DATA (hamail-milter speaks the protocol)
//! and its verdict and changes are applied to the pending message; a
//! milter that fails gets `milter_default_action`. Why the end of DATA and
//! not each command as it comes: docs/smtp.md, "Milters".

use hamail_milter::{Change, DefaultAction, MilterAddress, Outcome, Verdict};
use hamail_types::{MailAddress, QueueId};

use super::content::{Disposition, Pending};
use super::{Session, printable};
use crate::Backend;

/// What the stage does with one milter's outcome.
enum Applied {
    /// Changes made (or none); on to the next milter.
    Next,
    /// The message is refused or discarded.
    End(Disposition),
}

impl<B: Backend> Session<B> {
    /// Runs every milter in order, each on the message as the previous one
    /// left it. (`&mut self` only because a shared `&Session` is not `Send`
    /// across the await.)
    pub(super) async fn milters(
        &mut self,
        queue_id: &QueueId,
        pending: &mut Pending,
    ) -> Disposition {
        let settings = self.settings.clone();
        for addr in &settings.milters {
            let recipients: Vec<String> =
                pending.recipients.iter().map(|r| r.to_string()).collect();
            let sender = pending
                .sender
                .as_ref()
                .map(|s| s.to_string())
                .unwrap_or_default();
            let auth = self
                .authenticated
                .as_ref()
                .map(|a| (a.method, a.user.as_str()));
            let txn = hamail_milter::Transaction {
                client_addr: self.peer.ip(),
                client_port: self.peer.port(),
                helo: self.helo.as_deref().unwrap_or_default(),
                sender: &sender,
                recipients: &recipients,
                message: &pending.message,
                queue_id: queue_id.as_str(),
                hostname: &settings.hostname,
                daemon_name: &settings.hostname,
                auth,
            };
            let result = hamail_milter::check(
                addr,
                &settings.milter_timeouts,
                settings.message_size_limit,
                &txn,
            )
            .await;
            let failure = match result {
                Ok(outcome) => match self.apply_milter(queue_id, addr, outcome, pending) {
                    Ok(Applied::Next) => continue,
                    Ok(Applied::End(d)) => return d,
                    Err(reason) => reason,
                },
                Err(e) => e.to_string(),
            };
            tracing::warn!(
                target: "postfix/cleanup",
                "warning: milter {addr}: {}",
                printable(&failure)
            );
            match settings.milter_default_action {
                DefaultAction::Accept => {}
                DefaultAction::Tempfail => {
                    return self.milter_refusal(
                        queue_id,
                        addr,
                        hamail_milter::TEMPFAIL_REPLY.into(),
                    );
                }
                DefaultAction::Reject => {
                    return self.milter_refusal(queue_id, addr, hamail_milter::REJECT_REPLY.into());
                }
            }
        }
        Disposition::Queue
    }

    /// Applies one milter's outcome to the pending message, all or nothing:
    /// a change that cannot be made (a recipient that is no address) is the
    /// milter's failure, and nothing of it is kept.
    fn apply_milter(
        &self,
        queue_id: &QueueId,
        addr: &MilterAddress,
        outcome: Outcome,
        pending: &mut Pending,
    ) -> Result<Applied, String> {
        match outcome.verdict {
            Verdict::Pass => {}
            Verdict::Reject(reply) | Verdict::Tempfail(reply) => {
                return Ok(Applied::End(self.milter_refusal(queue_id, addr, reply)));
            }
            Verdict::Discard => {
                return Ok(Applied::End(Disposition::Discard(format!(
                    "milter {addr}: END-OF-MESSAGE from {}",
                    self.client()
                ))));
            }
        }
        let mut sender = pending.sender.clone();
        let mut recipients = pending.recipients.clone();
        for change in &outcome.changes {
            match change {
                Change::Header(_) => {}
                Change::AddRecipient(r) => {
                    let r = MailAddress::parse(r)
                        .map_err(|e| format!("cannot add a recipient: {e}"))?;
                    if !recipients.contains(&r) {
                        recipients.push(r);
                    }
                }
                Change::DeleteRecipient(r) => {
                    // Compared as stored: lower-cased like every address.
                    let r = MailAddress::parse(r)
                        .map_err(|e| format!("cannot delete a recipient: {e}"))?;
                    recipients.retain(|x| *x != r);
                }
                Change::ChangeSender(s) if s.is_empty() => sender = None,
                Change::ChangeSender(s) => {
                    sender = Some(
                        MailAddress::parse(s)
                            .map_err(|e| format!("cannot change the sender: {e}"))?,
                    );
                }
            }
        }
        if recipients.len() > self.settings.smtpd_recipient_limit {
            return Err(format!(
                "{} recipients after its changes, above smtpd_recipient_limit ({})",
                recipients.len(),
                self.settings.smtpd_recipient_limit
            ));
        }
        if let Some(message) = outcome.apply_to_message(&pending.message) {
            pending.message = message;
        }
        pending.sender = sender;
        pending.recipients = recipients;
        // The first reason to hold is the one logged (a header check's, or
        // an earlier milter's).
        if let Some(reason) = outcome.quarantine
            && pending.hold.is_none()
        {
            pending.hold = Some(format!("milter {addr}: {reason}"));
        }
        Ok(Applied::Next)
    }

    /// Logs a refusal like Postfix's `milter-reject` line and returns it.
    fn milter_refusal(
        &self,
        queue_id: &QueueId,
        addr: &MilterAddress,
        reply: String,
    ) -> Disposition {
        tracing::info!(
            target: "postfix/cleanup",
            "{queue_id}: milter-reject: END-OF-MESSAGE from {}: {} (milter {addr}); helo=<{}>",
            self.client(),
            printable(&reply.replace("\r\n", " ")),
            printable(self.helo.as_deref().unwrap_or_default())
        );
        Disposition::Refuse(reply)
    }
}
