//! Content policy at the end of DATA, between the last byte of a message and
//! its queue write (Postfix's cleanup and milter stages): each stage reads the
//! whole message, may rewrite it, add or drop recipients, put it on hold, or
//! end the transaction with a disposition. A message leaves this file either
//! queued as the stages left it, or not at all.

use hamail_types::{MailAddress, QueueId};

use super::Session;
use crate::Backend;

/// The message as the stages see and change it.
pub(super) struct Pending {
    /// Headers and body as they will be queued (our `Received:` first).
    pub message: Vec<u8>,
    pub sender: Option<MailAddress>,
    /// After alias expansion; a stage may add or remove recipients.
    pub recipients: Vec<MailAddress>,
    /// Why the message goes on hold, when a stage says so.
    pub hold: Option<String>,
}

/// What the content stages decided about a message.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Disposition {
    /// Queue the message (held if `Pending::hold` is set).
    Queue,
    /// Refuse it with this whole reply line (`550 5.7.1 ...`, `451 4.7.1 ...`);
    /// nothing is queued.
    Refuse(String),
    /// Accept it towards the client and drop it silently (DISCARD); the
    /// reason is logged.
    Discard(String),
}

impl<B: Backend> Session<B> {
    /// Runs every content stage in order; the first that does not say
    /// `Queue` ends the run.
    pub(super) async fn content_policy(
        &mut self,
        queue_id: &QueueId,
        pending: &mut Pending,
    ) -> Disposition {
        // What a content filter hands back was checked on its way in
        // (Postfix's `receive_override_options=no_header_body_checks,no_milters`).
        if self.settings.role == crate::Role::Reinject {
            return Disposition::Queue;
        }
        match self.header_body_checks(queue_id, pending) {
            Disposition::Queue => {}
            other => return other,
        }
        // Milters last: they see the message as the checks left it.
        match self.milters(queue_id, pending).await {
            Disposition::Queue => {}
            other => return other,
        }
        // Signing last, over the message as it will be queued. (Never on
        // the re-injection listener above: a content filter's mail was
        // signed, if it was ours, when the MX first took it.)
        self.dkim_sign(queue_id, pending);
        Disposition::Queue
    }
}
