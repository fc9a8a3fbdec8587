//! The re-injection listener of an after-queue content filter (Postfix's
//! `127.0.0.1:10025 ... smtpd -o content_filter= -o
//! smtpd_client_restrictions=permit_mynetworks,reject`): who may send there,
//! and which queued message a re-injected one came from, for the log.

use hamail_types::{MailAddress, QueueId};

use super::Session;
use crate::policy::{Verdict, check_recipient};
use crate::{Backend, Role};

impl<B: Backend> Session<B> {
    /// On a re-injection listener, the RCPT reply for a client outside
    /// mynetworks (Postfix rejects `smtpd_client_restrictions` at RCPT by
    /// default, `smtpd_delay_reject = yes`). `None` elsewhere, and for a
    /// client in mynetworks.
    pub(super) fn reinject_refusal(&self) -> Option<String> {
        (self.settings.role == Role::Reinject && !self.trusted).then(|| {
            format!(
                "554 5.7.1 <{}>: Client host rejected: Access denied",
                self.client()
            )
        })
    }

    /// The recipient check of this listener: none on a re-injection
    /// listener (the filter hands back what was checked when it was first
    /// received; Postfix's `-o local_recipient_maps= -o
    /// relay_recipient_maps=`), the replicated tables elsewhere.
    pub(super) fn recipient_verdict(&self, rcpt: &MailAddress, may_relay: bool) -> Verdict {
        if self.settings.role == Role::Reinject {
            return Verdict::Accept;
        }
        check_recipient(self.backend.as_ref(), rcpt, may_relay)
    }

    /// Logs `QID: orig_queue_id=QID0` for a message re-injected by a
    /// content filter, so that an operator follows it from its first queue
    /// id to its delivery.
    pub(super) fn log_original_queue_id(&self, queue_id: &QueueId, message: &[u8]) {
        if self.settings.role != Role::Reinject {
            return;
        }
        match original_queue_id(message, queue_id) {
            Some(orig) => {
                tracing::info!(target: "postfix/smtpd", "{queue_id}: orig_queue_id={orig}")
            }
            None => tracing::info!(
                target: "postfix/smtpd",
                "{queue_id}: orig_queue_id=none (no Received header of ours)"
            ),
        }
    }
}

/// The queue id in the topmost `Received:` header a hamail node wrote
/// (`by HOST (hamail) with ESMTP id QID`), other than `own` (the header
/// this listener just added). Only the header section is read.
pub(crate) fn original_queue_id(message: &[u8], own: &QueueId) -> Option<QueueId> {
    let mut current: Option<String> = None;
    for line in message.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let text = String::from_utf8_lossy(line);
        let folded = line.first().is_some_and(|b| *b == b' ' || *b == b'\t');
        if folded {
            if let Some(h) = current.as_mut() {
                h.push(' ');
                h.push_str(text.trim());
            }
            continue;
        }
        if let Some(found) = current.take().and_then(|h| hamail_id(&h, own)) {
            return Some(found);
        }
        if line.is_empty() {
            return None;
        }
        let is_received = text
            .split_once(':')
            .is_some_and(|(name, _)| name.trim_end().eq_ignore_ascii_case("received"));
        if is_received {
            current = Some(text.into_owned());
        }
    }
    current.and_then(|h| hamail_id(&h, own))
}

/// The `id` of one unfolded `Received:` header if a hamail node wrote it.
fn hamail_id(header: &str, own: &QueueId) -> Option<QueueId> {
    let words: Vec<&str> = header.split_ascii_whitespace().collect();
    if !words.contains(&"(hamail)") {
        return None;
    }
    let at = words.iter().position(|w| *w == "id")?;
    let id = words.get(at + 1)?.trim_end_matches(';');
    QueueId::parse(id).ok().filter(|id| id != own)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_original_queue_id_is_the_topmost_hamail_received_below_our_own() {
        let own = QueueId::new(2_000, 1);
        let orig = QueueId::new(1_000, 2);
        let message = format!(
            "Received: from localhost (unknown [127.0.0.1])\r\n\tby mx1.example.jp (hamail) with ESMTP id {own}; Sat, 5 Dec 2026 00:00:00 +0000 (UTC)\r\n\
             Received: from localhost (localhost [127.0.0.1])\r\n\tby filter.example (amavis) with ESMTP id AbC123xyz; Sat, 5 Dec 2026\r\n\
             X-Filtered: yes\r\n\
             Received: from client.example (unknown [192.0.2.1])\r\n\tby mx2.example.jp (hamail) with ESMTPS id {orig}\r\n\tfor <u@example.jp>; Sat, 5 Dec 2026 00:00:00 +0000 (UTC)\r\n\
             Received: from old (unknown [192.0.2.9])\r\n\tby mx3.example.jp (hamail) with ESMTP id {}; x\r\n\
             Subject: hi\r\n\r\nReceived: by body (hamail) with ESMTP id {}\r\n",
            QueueId::new(500, 3),
            QueueId::new(600, 3)
        );
        assert_eq!(original_queue_id(message.as_bytes(), &own), Some(orig));
    }

    #[test]
    fn no_hamail_received_header_means_no_original() {
        let own = QueueId::new(2_000, 1);
        let only_ours = format!(
            "Received: from x (unknown [127.0.0.1])\r\n\tby h (hamail) with SMTP id {own}; d\r\n\r\nbody\r\n"
        );
        assert_eq!(original_queue_id(only_ours.as_bytes(), &own), None);
        let in_body = format!(
            "Subject: x\r\n\r\nReceived: by h (hamail) with SMTP id {}; d\r\n",
            QueueId::new(1, 1)
        );
        assert_eq!(original_queue_id(in_body.as_bytes(), &own), None);
        // Not a queue id of ours, or a header without "(hamail)".
        let foreign = "Received: by h (hamail) with SMTP id 4F2A9C1E07; d\r\n\
                       Received: by h (Postfix) with ESMTP id 0123456789ABCDEF; d\r\n\r\n";
        assert_eq!(original_queue_id(foreign.as_bytes(), &own), None);
        assert_eq!(original_queue_id(b"", &own), None);
        // A header section that runs to the end of the message.
        let unterminated = format!(
            "Received: by h (hamail) with SMTP id {}",
            QueueId::new(7, 1)
        );
        assert_eq!(
            original_queue_id(unterminated.as_bytes(), &own),
            Some(QueueId::new(7, 1))
        );
    }
}
