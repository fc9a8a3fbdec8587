//! The envelope phase: HELO/EHLO, MAIL FROM and RCPT TO (the recipient
//! check against the replicated tables, and the queue id at the first RCPT).

use std::borrow::Cow;

use hamail_types::{MailAddress, QueueId};
use smtp_proto::{MAIL_BODY_8BITMIME, MAIL_BODY_BINARYMIME, MAIL_SMTPUTF8};

use super::{Flow, Session, Txn, printable};
use crate::Backend;
use crate::policy::Verdict;

impl<B: Backend> Session<B> {
    pub(super) fn hello(&mut self, host: Cow<'_, str>, esmtp: bool) {
        let host = host.trim();
        if host.is_empty() {
            let verb = if esmtp { "EHLO" } else { "HELO" };
            // Counted, but the session goes on even past the error limit:
            // unlike every other error reply (kept as it was; a candidate
            // for a fix of its own).
            let _ = self.error(&format!("501 5.5.4 Syntax: {verb} hostname"));
            return;
        }
        self.helo = Some(printable(host));
        self.esmtp = esmtp;
        self.txn = None;
        if !esmtp {
            let t = format!("250 {}", self.settings.hostname);
            self.conn.reply(&t);
            return;
        }
        let mut lines = vec![
            self.settings.hostname.clone(),
            "PIPELINING".into(),
            format!("SIZE {}", self.settings.message_size_limit),
        ];
        if self.settings.tls.is_some() && !self.tls {
            lines.push("STARTTLS".into());
        }
        if let Some(auth) = &self.settings.auth
            && (self.tls || !auth.tls_only)
            && self.authenticated.is_none()
        {
            lines.push("AUTH PLAIN LOGIN".into());
        }
        lines.extend(["ENHANCEDSTATUSCODES", "8BITMIME", "SMTPUTF8", "CHUNKING"].map(String::from));
        let n = lines.len();
        for (i, l) in lines.iter().enumerate() {
            let sep = if i + 1 == n { ' ' } else { '-' };
            let t = format!("250{sep}{l}");
            self.conn.reply(&t);
        }
    }

    /// The address as the client wrote it between `<` and `>`, for the
    /// checks smtp-proto's parse does not keep (source routes).
    fn raw_path(line: &[u8]) -> String {
        let s = String::from_utf8_lossy(line);
        match (s.find('<'), s.rfind('>')) {
            (Some(a), Some(b)) if b > a => s[a + 1..b].to_string(),
            _ => s
                .split_once(':')
                .map(|(_, r)| r.split_whitespace().next().unwrap_or("").to_string())
                .unwrap_or_default(),
        }
    }

    pub(super) fn mail(&mut self, line: &[u8], from: smtp_proto::MailFrom<Cow<'_, str>>) -> Flow {
        if self.helo.is_none() {
            return self.error("503 5.5.1 Error: send HELO/EHLO first");
        }
        if self.txn.is_some() {
            return self.error("503 5.5.1 Error: nested MAIL command");
        }
        if self.settings.role.is_submission() {
            if !self.tls {
                return self.error("530 5.7.0 Must issue a STARTTLS command first");
            }
            if self.authenticated.is_none() {
                tracing::info!(target: "postfix/smtpd", "NOQUEUE: reject: MAIL from {}: 530 5.7.0 Authentication required; proto=ESMTP helo=<{}>", self.client(), self.helo.as_deref().unwrap_or(""));
                return self.error("530 5.7.0 Authentication required");
            }
        }
        let limit = self.settings.message_size_limit;
        if from.size > limit {
            tracing::info!(target: "postfix/smtpd", "NOQUEUE: reject: MAIL from {}: 552 5.3.4 Message size exceeds fixed limit; proto=ESMTP helo=<{}>", self.client(), self.helo.as_deref().unwrap_or(""));
            return self.error("552 5.3.4 Message size exceeds fixed limit");
        }
        if from.flags & MAIL_BODY_BINARYMIME != 0 {
            return self.error("555 5.5.4 Unsupported option: BODY=BINARYMIME");
        }
        let raw = Self::raw_path(line);
        let sender = if from.address.is_empty() {
            None
        } else {
            match MailAddress::parse(&raw).or_else(|_| MailAddress::parse(&from.address)) {
                Ok(a) if !raw.starts_with('@') => Some(a),
                _ => {
                    return self.error(&format!(
                        "501 5.1.7 <{}>: Sender address rejected: bad address syntax",
                        printable(&raw)
                    ));
                }
            }
        };
        if !raw.is_ascii() && from.flags & MAIL_SMTPUTF8 == 0 {
            return self.error("553 5.6.7 Must declare SMTPUTF8 to send a UTF-8 address");
        }
        if let (Some(auth), Some(sender)) = (&self.authenticated, &sender) {
            match crate::policy::sender_owned(self.backend.as_ref(), &auth.user, sender) {
                Ok(true) => {}
                Ok(false) => {
                    let text = format!(
                        "553 5.7.1 <{}>: Sender address rejected: not owned by user {}",
                        printable(&raw),
                        printable(&auth.user)
                    );
                    tracing::info!(target: "postfix/smtpd", "NOQUEUE: reject: MAIL from {}: {text}; proto=ESMTP helo=<{}>", self.client(), self.helo.as_deref().unwrap_or(""));
                    return self.error(&text);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "sender ownership lookup failed");
                    return self.error(&format!(
                        "451 4.3.0 <{}>: Temporary lookup failure",
                        printable(&raw)
                    ));
                }
            }
        }
        if !self.backend.has_quorum() {
            return self.error(
                "451 4.3.0 Error: this site cannot reach a majority of the cluster, try again later",
            );
        }
        self.txn = Some(Txn {
            sender,
            smtputf8: from.flags & MAIL_SMTPUTF8 != 0,
            eight_bit: from.flags & MAIL_BODY_8BITMIME != 0,
            declared_size: from.size,
            ..Txn::default()
        });
        self.conn.reply("250 2.1.0 Ok");
        Flow::Continue
    }

    /// The client's listing in a DNSBL, looked up only when it matters:
    /// a transaction is open and the client is neither in mynetworks nor
    /// authenticated (`permit_mynetworks, permit_sasl_authenticated` come
    /// first in Postfix's restrictions).
    /// The future owns what it needs: the session is not held across the
    /// lookup.
    pub(super) fn dnsbl_listing(
        &self,
    ) -> impl std::future::Future<Output = Option<crate::dnsbl::Listing>> + Send + 'static {
        let ask = self
            .settings
            .dnsbl
            .clone()
            .filter(|lists| {
                !lists.is_empty()
                    && self.txn.is_some()
                    && !self.trusted
                    && self.authenticated.is_none()
            })
            .map(|lists| (lists, self.peer.ip()));
        async move {
            match ask {
                Some((lists, ip)) => lists.listed(ip).await,
                None => None,
            }
        }
    }

    /// `listed`: the client's DNSBL listing, looked up by the caller (see
    /// `dnsbl_listing`), refused after the recipient checks as Postfix's
    /// `reject_unauth_destination, reject_rbl_client` order does.
    pub(super) fn rcpt(
        &mut self,
        line: &[u8],
        address: Cow<'_, str>,
        listed: Option<crate::dnsbl::Listing>,
    ) -> Flow {
        let Some(txn) = &self.txn else {
            return self.error("503 5.5.1 Error: need MAIL command");
        };
        if txn.recipients.len() >= self.settings.smtpd_recipient_limit {
            return self.error("452 4.5.3 Error: too many recipients");
        }
        let raw = Self::raw_path(line);
        if !raw.is_ascii() && !txn.smtputf8 {
            return self.error("553 5.6.7 Must declare SMTPUTF8 to send a UTF-8 address");
        }
        let shown = printable(&raw);
        let from = txn
            .sender
            .as_ref()
            .map(|s| s.to_string())
            .unwrap_or_default();
        let reject = |s: &mut Self, text: String| {
            tracing::info!(
                target: "postfix/smtpd",
                "NOQUEUE: reject: RCPT from {}: {text}; from=<{from}> to=<{shown}> proto={} helo=<{}>",
                s.client(),
                if s.esmtp { "ESMTP" } else { "SMTP" },
                s.helo.as_deref().unwrap_or("")
            );
            s.error(&text)
        };
        // Source routes, `%` and `!` routing, quoted local parts and a
        // second `@` never pass: MailAddress refuses them all.
        let rcpt = match MailAddress::parse(&raw) {
            Ok(a) if !raw.starts_with('@') && !address.is_empty() => a,
            _ => {
                let looks_routed = raw.starts_with('@')
                    || raw.contains('%')
                    || raw.contains('!')
                    || raw.contains('"')
                    || raw.matches('@').count() > 1;
                let text = if looks_routed {
                    format!("554 5.7.1 <{shown}>: Relay access denied")
                } else {
                    format!("501 5.1.3 <{shown}>: Recipient address rejected: bad address syntax")
                };
                return reject(self, text);
            }
        };
        if let Some(text) = self.reinject_refusal() {
            return reject(self, text);
        }
        // An authenticated user may send anywhere (permit_sasl_authenticated).
        let may_relay = self.trusted || self.authenticated.is_some();
        match self.recipient_verdict(&rcpt, may_relay) {
            Verdict::Accept => {}
            Verdict::Unknown { table } => {
                return reject(
                    self,
                    format!(
                        "550 5.1.1 <{shown}>: Recipient address rejected: User unknown in {table}"
                    ),
                );
            }
            Verdict::RelayDenied => {
                return reject(self, format!("554 5.7.1 <{shown}>: Relay access denied"));
            }
            Verdict::TempFail(e) => {
                tracing::warn!(error = %e, "recipient lookup failed");
                return reject(
                    self,
                    format!("451 4.3.0 <{shown}>: Temporary lookup failure"),
                );
            }
        }
        if let Some(l) = listed {
            let text = l.reply(self.peer.ip());
            return reject(self, text);
        }
        // A domain's own size limit (Postfix has one per transport; ours is
        // per domain): a declared SIZE above it is refused here, the
        // message itself at the end of DATA.
        let domain_limit = match self.backend.domain_message_size_limit(rcpt.domain()) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "domain settings lookup failed");
                return reject(
                    self,
                    format!("451 4.3.0 <{shown}>: Temporary lookup failure"),
                );
            }
        };
        if let (Some(limit), Some(txn)) = (domain_limit, &self.txn)
            && txn.declared_size as u64 > limit
        {
            return reject(self, "552 5.3.4 Message size exceeds fixed limit".into());
        }
        let node = self.backend.node_id();
        let client = match &self.authenticated {
            Some(a) => format!(
                "{}, sasl_method={}, sasl_username={}",
                self.client(),
                a.method,
                printable(&a.user)
            ),
            None => self.client(),
        };
        let Some(txn) = self.txn.as_mut() else {
            return Flow::Continue;
        };
        if txn.queue_id.is_none() {
            let id = QueueId::new_for(node);
            tracing::info!(target: "postfix/smtpd", "{id}: client={client}");
            txn.queue_id = Some(id);
        }
        if let Some(limit) = domain_limit {
            txn.domain_size_limit = Some(txn.domain_size_limit.map_or(limit, |l| l.min(limit)));
        }
        if !txn.recipients.contains(&rcpt) {
            txn.recipients.push(rcpt);
        }
        self.conn.reply("250 2.1.5 Ok");
        Flow::Continue
    }
}
