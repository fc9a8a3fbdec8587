//! The body phase: DATA and BDAT read through the pure readers of data.rs,
//! then `finish`, which hands the message to the backend and answers 250
//! only once it is committed on a majority.

use hamail_types::NewMessage;
use tokio::time::Instant;

use super::conn::Step;
use super::content::{Disposition, Pending};
use super::{Flow, Session, printable, unix_now};
use crate::data::{DataEvent, DataReader, bare_line_ending};
use crate::headers::{Trace, message_id, missing_headers, received_header};
use crate::{Backend, EnqueueError};

impl<B: Backend> Session<B> {
    /// Checks that a transaction may send its body; the error text if not.
    fn body_allowed(&self) -> Result<(), &'static str> {
        self.have_recipients()?;
        match &self.txn {
            Some(t) if t.bdat.is_some() => Err("503 5.5.1 Error: DATA during BDAT transfer"),
            _ => Ok(()),
        }
    }

    /// A transaction with at least one accepted recipient is under way.
    fn have_recipients(&self) -> Result<(), &'static str> {
        match &self.txn {
            Some(t) if !t.recipients.is_empty() => Ok(()),
            _ => Err("503 5.5.1 Error: need RCPT command"),
        }
    }

    pub(super) async fn data(&mut self) -> Step<Flow> {
        if let Err(text) = self.body_allowed() {
            return Ok(self.error(text));
        }
        self.conn.reply("354 End data with <CR><LF>.<CR><LF>");
        let mut reader = DataReader::new(self.settings.message_size_limit);
        let total_deadline = Instant::now() + self.settings.smtpd_data_time_limit;
        loop {
            let (n, ev) = reader.feed(self.conn.buffered());
            self.conn.consume(n);
            match ev {
                DataEvent::More => {
                    let deadline = (Instant::now() + self.idle_timeout()).min(total_deadline);
                    self.conn.fill(deadline).await?;
                }
                DataEvent::Done => break,
                DataEvent::BareLf | DataEvent::BareCr => {
                    let what = if ev == DataEvent::BareLf {
                        "<LF>"
                    } else {
                        "<CR>"
                    };
                    tracing::info!(
                        target: "postfix/smtpd",
                        "disconnect: bare {what} received from {} after DATA",
                        self.client()
                    );
                    let t = format!(
                        "521 5.5.2 {} Error: bare {what} received",
                        self.settings.hostname
                    );
                    self.conn.reply(&t);
                    self.txn = None;
                    return Ok(Flow::Close);
                }
            }
        }
        if reader.too_big() {
            self.txn = None;
            return Ok(self.error("552 5.3.4 Message size exceeds fixed limit"));
        }
        let body = reader.into_body();
        self.finish(body).await
    }

    pub(super) async fn bdat(&mut self, size: usize, last: bool) -> Step<Flow> {
        // The chunk is read whatever happens: it is not a command.
        let allowed = self.have_recipients();
        let limit = self.settings.message_size_limit;
        let have = self
            .txn
            .as_ref()
            .and_then(|t| t.bdat.as_ref())
            .map_or(0, |b| b.len());
        // A client chooses `size` (up to u64::MAX): never add it unchecked.
        let keep = allowed.is_ok() && have.checked_add(size).is_some_and(|t| t <= limit);
        let mut chunk = Vec::with_capacity(if keep { size.min(1 << 20) } else { 0 });
        let mut left = size;
        let total_deadline = Instant::now() + self.settings.smtpd_data_time_limit;
        while left > 0 {
            if self.conn.buffered().is_empty() {
                let deadline = (Instant::now() + self.idle_timeout()).min(total_deadline);
                self.conn.fill(deadline).await?;
            }
            let buf = self.conn.buffered();
            let take = buf.len().min(left);
            if keep {
                chunk.extend_from_slice(&buf[..take]);
            }
            self.conn.consume(take);
            left -= take;
        }
        if let Err(text) = allowed {
            self.txn = None;
            return Ok(self.error(text));
        }
        let Some(txn) = self.txn.as_mut() else {
            return Ok(Flow::Continue);
        };
        let body = txn.bdat.get_or_insert_with(Vec::new);
        if keep {
            body.extend_from_slice(&chunk);
        } else {
            txn.bdat_too_big = true;
        }
        if !last {
            let t = format!("250 2.0.0 Ok: {size} octets received");
            self.conn.reply(&t);
            return Ok(Flow::Continue);
        }
        let too_big = txn.bdat_too_big;
        let body = txn.bdat.take().unwrap_or_default();
        if too_big {
            self.txn = None;
            return Ok(self.error("552 5.3.4 Message size exceeds fixed limit"));
        }
        if let Some(ev) = bare_line_ending(&body) {
            self.txn = None;
            let what = if ev == DataEvent::BareLf {
                "<LF>"
            } else {
                "<CR>"
            };
            return Ok(self.error(&format!("550 5.6.0 Error: message contains a bare {what}")));
        }
        self.finish(body).await
    }

    /// Hands a complete message to the cluster and answers with the outcome.
    async fn finish(&mut self, body: Vec<u8>) -> Step<Flow> {
        let Some(txn) = self.txn.take() else {
            return Ok(Flow::Continue);
        };
        let Some(queue_id) = txn.queue_id.clone() else {
            return Ok(self.error("503 5.5.1 Error: need RCPT command"));
        };
        // The smallest limit of the recipients' domains (below the global
        // one, which the reader enforced): nothing is queued past it.
        if let Some(limit) = txn.domain_size_limit
            && body.len() as u64 > limit
        {
            tracing::info!(target: "postfix/cleanup", "{queue_id}: reject: message size {} exceeds the limit {limit} of a recipient's domain", body.len());
            return Ok(self.error("552 5.3.4 Message size exceeds fixed limit"));
        }
        // A mail loop (e.g. a content filter re-injecting into the MX, where
        // the message is marked for the filter again): with our Received
        // header it would reach Postfix's hopcount_limit.
        let hops = crate::headers::hop_count(&body) + 1;
        if hops >= crate::headers::HOPCOUNT_LIMIT {
            tracing::info!(target: "postfix/cleanup", "{queue_id}: reject: {hops} Received/Delivered-To headers: too many hops (mail loop?)");
            return Ok(self.error("554 5.4.0 Error: too many hops"));
        }
        let now = unix_now();
        // RFC 3848 (and 6531): S for TLS, A for an authenticated client.
        let base = match (txn.smtputf8, self.esmtp) {
            (true, _) => "UTF8SMTP",
            (false, true) => "ESMTP",
            (false, false) => "SMTP",
        };
        let protocol = format!(
            "{base}{}{}",
            if self.tls { "S" } else { "" },
            if self.authenticated.is_some() {
                "A"
            } else {
                ""
            }
        );
        // Aliases are rewritten now, as Postfix's cleanup does, so the queue
        // holds the final recipients and each is delivered exactly once.
        let recipients = match crate::policy::expand_aliases(self.backend.as_ref(), &txn.recipients)
        {
            Ok(r) if !r.is_empty() => r,
            Ok(_) => {
                return Ok(
                    self.error("550 5.1.0 Error: the aliases of every recipient lead nowhere")
                );
            }
            Err(e) => {
                tracing::warn!(target: "postfix/cleanup", "{queue_id}: {e}");
                return Ok(self.error(&format!("550 5.4.6 Error: {}", printable(&e.to_string()))));
            }
        };
        let single = (txn.recipients.len() == 1).then(|| txn.recipients[0].to_string());
        let helo = self.helo.clone().unwrap_or_default();
        let named_user = match (&self.authenticated, &self.settings.auth) {
            (Some(a), Some(s)) if s.authenticated_header => Some(a.user.as_str()),
            _ => None,
        };
        let received = received_header(&Trace {
            helo: &helo,
            client_ip: self.peer.ip(),
            hostname: &self.settings.hostname,
            protocol: &protocol,
            authenticated_sender: named_user,
            queue_id: queue_id.as_str(),
            single_recipient: single.as_deref(),
            unix_secs: now.as_secs(),
        });
        // RFC 6409 8.2, 8.3: a submission server adds what a client left out.
        let added = if self.authenticated.is_some() {
            missing_headers(
                &body,
                now.as_secs(),
                queue_id.as_str(),
                &self.settings.hostname,
            )
        } else {
            String::new()
        };
        let mut full = Vec::with_capacity(received.len() + added.len() + body.len());
        full.extend_from_slice(received.as_bytes());
        full.extend_from_slice(added.as_bytes());
        full.extend_from_slice(&body);
        drop(body);
        let mut pending = Pending {
            message: full,
            sender: txn.sender,
            recipients,
            hold: None,
        };
        match self.content_policy(&queue_id, &mut pending).await {
            Disposition::Queue => {}
            Disposition::Refuse(reply) => return Ok(self.error(&reply)),
            Disposition::Discard(reason) => {
                tracing::info!(target: "postfix/cleanup", "{queue_id}: discard: {reason}");
                self.conn
                    .reply(&format!("250 2.0.0 Ok: queued as {queue_id}"));
                return Ok(Flow::Continue);
            }
        }
        let Pending {
            message: full,
            sender: envelope_sender,
            recipients,
            hold,
        } = pending;
        if recipients.is_empty() {
            return Ok(
                self.error("550 5.1.0 Error: no recipients are left after the content policy")
            );
        }
        if let Some(reason) = &hold {
            tracing::info!(target: "postfix/cleanup", "{queue_id}: hold: {reason}");
        }
        let eight_bit = txn.eight_bit || full.iter().any(|b| *b >= 0x80);
        self.log_original_queue_id(&queue_id, &full);
        if let Some(mid) = message_id(&full) {
            tracing::info!(target: "postfix/cleanup", "{queue_id}: message-id={mid}");
        }
        let size = full.len();
        let nrcpt = recipients.len();
        let sender = envelope_sender
            .as_ref()
            .map(|s| s.to_string())
            .unwrap_or_default();
        let message = NewMessage {
            queue_id: queue_id.clone(),
            sender: envelope_sender,
            recipients,
            owner: self.backend.node_id(),
            client: self.client(),
            helo,
            smtputf8: txn.smtputf8,
            eight_bit,
            held: hold.is_some(),
            content_filter: self.settings.content_filter.clone(),
            body: full,
        };
        // Replies queued so far go out now; the client waits for this one.
        self.conn.flush().await?;
        let started = Instant::now();
        let result = tokio::select! {
            r = self.backend.enqueue(message) => r,
            _ = self.conn.cancel.cancelled() => Err(EnqueueError::NoQuorum("server shutting down".into())),
        };
        let waited = started.elapsed();
        match result {
            Ok(()) => {
                tracing::info!(
                    target: "postfix/qmgr",
                    "{queue_id}: from=<{sender}>, size={size}, nrcpt={nrcpt} (queue active)"
                );
                tracing::debug!(%queue_id, commit_ms = waited.as_secs_f64() * 1000.0, "queued");
                let t = format!("250 2.0.0 Ok: queued as {queue_id}");
                self.conn.reply(&t);
                Ok(Flow::Continue)
            }
            Err(e) => {
                tracing::warn!(target: "postfix/smtpd", "{queue_id}: not queued: {e}");
                let text = match &e {
                    EnqueueError::NoQuorum(_) => {
                        "451 4.3.0 Error: the message could not be made durable on a majority of the cluster, try again later".to_string()
                    }
                    EnqueueError::Failed(reason) => {
                        format!("451 4.3.0 Error: queue write failed: {}", printable(reason))
                    }
                };
                Ok(self.error(&text))
            }
        }
    }
}
