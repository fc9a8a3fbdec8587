//! Header and body checks, the first content stage (Postfix's cleanup
//! header_checks/body_checks): the replicated tables, compiled once per
//! version by the backend, run over the message; the rules' actions become
//! the disposition, the hold, the rewritten message and Postfix-style log
//! lines (`QID: reject: header Subject: ... from unknown[ip]; from=<...>
//! to=<...> proto=ESMTP helo=<...>: 5.7.1 text`).

use hamail_checks::{Action, CheckKind, Event, Verdict, check_message};
use hamail_types::QueueId;

use super::Session;
use super::content::{Disposition, Pending};
use crate::Backend;

impl<B: Backend> Session<B> {
    pub(super) fn header_body_checks(
        &self,
        queue_id: &QueueId,
        pending: &mut Pending,
    ) -> Disposition {
        let checks = match self.backend.content_checks() {
            Ok(Some(c)) if !c.is_empty() => c,
            Ok(_) => return Disposition::Queue,
            Err(e) => {
                // Never a way around the rules: the client tries again.
                tracing::warn!(
                    target: "postfix/cleanup",
                    "{queue_id}: header/body checks unavailable: {e}"
                );
                return Disposition::Refuse(
                    "451 4.3.0 Error: content checks unavailable, try again later".into(),
                );
            }
        };
        let outcome = check_message(&checks, &pending.message);
        let context = format!(
            " from {}; from=<{}> to=<{}> proto={} helo=<{}>",
            self.client(),
            pending
                .sender
                .as_ref()
                .map(|s| s.to_string())
                .unwrap_or_default(),
            pending
                .recipients
                .first()
                .map(|r| r.to_string())
                .unwrap_or_default(),
            if self.esmtp { "ESMTP" } else { "SMTP" },
            super::printable(self.helo.as_deref().unwrap_or(""))
        );
        let describe = |e: &Event| {
            let text = e.text_for_log();
            format!(
                "{} {}{context}{}{text}",
                part(e.part),
                e.input_for_log(),
                if text.is_empty() { "" } else { ": " }
            )
        };
        for (i, e) in outcome.events.iter().enumerate() {
            let line = describe(e);
            match e.action {
                Action::Reject => {
                    if let Verdict::Reject { reply } = &outcome.verdict {
                        let status = reply.get(4..).unwrap_or("");
                        tracing::info!(
                            target: "postfix/cleanup",
                            "{queue_id}: reject: {} {}{context}: {status}",
                            part(e.part),
                            e.input_for_log()
                        );
                    }
                }
                Action::Warn => {
                    tracing::info!(target: "postfix/cleanup", "{queue_id}: warning: {line}")
                }
                Action::Info => {
                    tracing::info!(target: "postfix/cleanup", "{queue_id}: info: {line}")
                }
                Action::Replace => {
                    tracing::info!(target: "postfix/cleanup", "{queue_id}: replace: {line}")
                }
                Action::Prepend => {
                    tracing::info!(target: "postfix/cleanup", "{queue_id}: prepend: {line}")
                }
                // Logged by finish() (`hold:`) once the message is queued.
                Action::Hold if outcome.hold == Some(i) => pending.hold = Some(line),
                Action::Hold => {
                    tracing::info!(target: "postfix/cleanup", "{queue_id}: hold: {line}")
                }
                // Postfix logs neither; DISCARD is logged by finish().
                Action::Ignore | Action::Discard | Action::Dunno | Action::Ok => {}
            }
        }
        match outcome.verdict {
            Verdict::Reject { reply } => Disposition::Refuse(reply),
            Verdict::Discard => Disposition::Discard(
                outcome
                    .events
                    .last()
                    .map(describe)
                    .unwrap_or_else(|| "header/body checks".into()),
            ),
            Verdict::Accept => {
                if let Some(m) = outcome.message {
                    pending.message = m;
                }
                Disposition::Queue
            }
        }
    }
}

fn part(kind: CheckKind) -> &'static str {
    match kind {
        CheckKind::Header => "header",
        CheckKind::Body => "body",
    }
}
