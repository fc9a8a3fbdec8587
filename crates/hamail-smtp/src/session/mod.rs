//! One SMTP session: the ESMTP state machine over any byte stream (a TCP
//! socket, a TLS stream after STARTTLS, or an in-memory pipe in tests).
//! This file holds the session, its run loop and the command dispatch; each
//! phase is an `impl Session` block of its own file.
//!
//! Commands are parsed by smtp-proto; DATA and BDAT bodies by our own
//! readers (data.rs). The reply to the end of a message is sent only after
//! the backend says the message is committed on a majority (body.rs).

mod auth;
mod body;
mod checks;
mod conn;
mod content;
mod dkim;
mod envelope;
mod milter;
mod reinject;
mod starttls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hamail_types::{MailAddress, QueueId};
use smtp_proto::{Error as ProtoError, Request};
use tokio_util::sync::CancellationToken;

use crate::{Backend, Settings};
use conn::{Conn, End, Line, Step};

pub use conn::IoStream;

/// Whether the session goes on after a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
enum Flow {
    Continue,
    /// The last reply is written and the session ends (QUIT, too many
    /// errors, a bare line ending).
    Close,
}

/// The envelope of the transaction under way.
#[derive(Default)]
struct Txn {
    sender: Option<MailAddress>,
    recipients: Vec<MailAddress>,
    queue_id: Option<QueueId>,
    smtputf8: bool,
    eight_bit: bool,
    /// The size the client declared at MAIL (SIZE=), 0 if none.
    declared_size: usize,
    /// The smallest per-domain message size limit of the accepted
    /// recipients' domains (`domain set --message-size-limit`).
    domain_size_limit: Option<u64>,
    /// BDAT chunks so far, and whether one was over the limit.
    bdat: Option<Vec<u8>>,
    bdat_too_big: bool,
}

/// Per-session counts for the `disconnect from` log line.
#[derive(Default)]
struct Counts {
    ehlo: u32,
    helo: u32,
    mail: u32,
    rcpt: u32,
    data: u32,
    bdat: u32,
    rset: u32,
    quit: u32,
    starttls: u32,
    auth: u32,
    other: u32,
    rejected: u32,
}

/// Who the client authenticated as, and how.
struct Authenticated {
    user: String,
    method: &'static str,
}

pub(crate) struct Session<B: Backend> {
    backend: Arc<B>,
    settings: Arc<Settings>,
    peer: SocketAddr,
    /// The client is in mynetworks: it may relay.
    trusted: bool,
    conn: Conn,
    helo: Option<String>,
    esmtp: bool,
    tls: bool,
    /// Set by a successful AUTH; for the rest of the session.
    authenticated: Option<Authenticated>,
    txn: Option<Txn>,
    errors: u32,
    counts: Counts,
}

fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// Control characters do not belong in a log line.
fn printable(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .take(512)
        .collect()
}

/// `BDAT 0 LAST` (any case, any run of spaces).
fn is_empty_last_chunk(line: &[u8]) -> bool {
    // Asked of every command line: most are not BDAT at all.
    if !line
        .get(..4)
        .is_some_and(|v| v.eq_ignore_ascii_case(b"BDAT"))
    {
        return false;
    }
    let text = String::from_utf8_lossy(line);
    let words: Vec<&str> = text.split_ascii_whitespace().collect();
    matches!(words.as_slice(), [verb, size, last]
        if verb.eq_ignore_ascii_case("BDAT")
            && size.bytes().all(|b| b == b'0')
            && last.eq_ignore_ascii_case("LAST"))
}

impl<B: Backend> Session<B> {
    pub(crate) fn new(
        backend: Arc<B>,
        settings: Arc<Settings>,
        io: Box<dyn IoStream>,
        peer: SocketAddr,
        cancel: CancellationToken,
        stressed: bool,
        tls: bool,
    ) -> Self {
        let trusted = crate::policy::in_networks(&settings.mynetworks, peer.ip());
        // Under stress, short timeouts like Postfix's
        // `smtpd_timeout = ${stress?10}${stress:300}`.
        let timeout = if stressed {
            settings.smtpd_timeout.min(Duration::from_secs(10))
        } else {
            settings.smtpd_timeout
        };
        Session {
            backend,
            settings,
            peer,
            trusted,
            conn: Conn::new(io, cancel, timeout),
            helo: None,
            esmtp: false,
            tls,
            authenticated: None,
            txn: None,
            errors: 0,
            counts: Counts::default(),
        }
    }

    fn client(&self) -> String {
        format!("unknown[{}]", self.peer.ip())
    }

    fn idle_timeout(&self) -> Duration {
        self.conn.timeout
    }

    /// Runs the session to its end and closes the stream.
    pub(crate) async fn run(mut self) {
        let client = self.client();
        tracing::info!(target: "postfix/smtpd", "connect from {client}");
        let end = self.serve().await;
        match &end {
            Ok(()) | Err(End::Closed) => {}
            Err(End::Timeout) => {
                tracing::info!(target: "postfix/smtpd", "timeout after {} from {client}", self.last_state());
                let text = format!(
                    "421 4.4.2 {} Error: timeout exceeded",
                    self.settings.hostname
                );
                self.conn.reply(&text);
            }
            Err(End::Shutdown) => {
                let text = format!(
                    "421 4.3.2 {} Service shutting down, try another MX",
                    self.settings.hostname
                );
                self.conn.reply(&text);
            }
            Err(End::Io(e)) => {
                tracing::info!(target: "postfix/smtpd", "lost connection after {} from {client}: {e}", self.last_state());
            }
        }
        if matches!(end, Err(End::Closed)) {
            tracing::info!(target: "postfix/smtpd", "lost connection after {} from {client}", self.last_state());
        }
        // On shutdown the last 421 gets a second, so that SIGTERM finishes
        // promptly however many clients do not read.
        let limit = if self.conn.cancel.is_cancelled() {
            Duration::from_secs(1)
        } else {
            self.conn.timeout.min(Duration::from_secs(5))
        };
        self.conn.flush_final(limit).await;
        self.log_disconnect(&client);
    }

    /// Postfix's `disconnect from` line with the command counts.
    fn log_disconnect(&self, client: &str) {
        let c = &self.counts;
        let mut parts = Vec::new();
        for (name, n) in [
            ("ehlo", c.ehlo),
            ("helo", c.helo),
            ("starttls", c.starttls),
            ("auth", c.auth),
            ("mail", c.mail),
            ("rcpt", c.rcpt),
            ("data", c.data),
            ("bdat", c.bdat),
            ("rset", c.rset),
            ("quit", c.quit),
            ("unknown", c.other),
        ] {
            if n > 0 {
                parts.push(format!("{name}={n}"));
            }
        }
        let total = c.ehlo
            + c.helo
            + c.starttls
            + c.auth
            + c.mail
            + c.rcpt
            + c.data
            + c.bdat
            + c.rset
            + c.quit
            + c.other;
        tracing::info!(
            target: "postfix/smtpd",
            "disconnect from {client} {} commands={}/{}",
            parts.join(" "),
            total - c.rejected.min(total),
            total
        );
    }

    fn last_state(&self) -> &'static str {
        match &self.txn {
            None if self.helo.is_none() => "CONNECT",
            None => "EHLO",
            Some(t) if t.recipients.is_empty() => "MAIL",
            Some(_) => "RCPT",
        }
    }

    async fn serve(&mut self) -> Step<()> {
        if !self.backend.has_quorum() {
            tracing::info!(target: "postfix/smtpd", "NOQUEUE: reject: CONNECT from {}: 421 4.3.2 no quorum", self.client());
            let text = format!(
                "421 4.3.2 {} Service not available: this site cannot reach a majority of the cluster, try another MX",
                self.settings.hostname
            );
            self.conn.reply(&text);
            return Ok(());
        }
        let banner = format!("220 {} ESMTP", self.settings.hostname);
        self.conn.reply(&banner);
        // AUTH lines may be longer than other commands (RFC 4954).
        let limit = self.settings.line_length_limit;
        let read_limit = limit.max(auth::AUTH_LINE_LIMIT);
        loop {
            let flow = match self.conn.read_line(read_limit).await? {
                Line::Ok(line) if line.len() <= limit || auth::is_auth(&line) => {
                    self.command(line).await?
                }
                Line::TooLong { head } if auth::is_auth(&head) => self.error(auth::TOO_LONG),
                Line::Ok(_) | Line::TooLong { .. } => self.error("500 5.5.2 Error: line too long"),
            };
            if flow == Flow::Close {
                return Ok(());
            }
        }
    }

    /// Replies with an error and counts it; `Close` when the client has had
    /// too many (Postfix's `smtpd_hard_error_limit`).
    fn error(&mut self, text: &str) -> Flow {
        self.conn.reply(text);
        self.errors += 1;
        self.counts.rejected += 1;
        if self.errors >= self.settings.smtpd_hard_error_limit {
            tracing::info!(target: "postfix/smtpd", "too many errors after {} from {}", self.last_state(), self.client());
            let t = format!(
                "421 4.7.0 {} Error: too many errors",
                self.settings.hostname
            );
            self.conn.reply(&t);
            return Flow::Close;
        }
        Flow::Continue
    }

    /// Handles one command line.
    async fn command(&mut self, line: Vec<u8>) -> Step<Flow> {
        if line.contains(&0) {
            return Ok(self.error("500 5.5.2 Error: bad syntax (NUL byte)"));
        }
        // Ours to parse: smtp-proto knows only the mechanisms it names and
        // would not let us tell the client which part was wrong.
        if auth::is_auth(&line) {
            self.counts.auth += 1;
            return self.auth(&line).await;
        }
        // RFC 3030 allows an empty last chunk; smtp-proto refuses size 0.
        if is_empty_last_chunk(&line) {
            self.counts.bdat += 1;
            return self.bdat(0, true).await;
        }
        let parsed = Request::parse(&mut line.iter());
        let req = match parsed {
            Ok(r) => r,
            Err(e) => return Ok(self.parse_error(&line, e)),
        };
        match req {
            Request::Ehlo { host } => {
                self.counts.ehlo += 1;
                self.hello(host, true);
            }
            Request::Helo { host } => {
                self.counts.helo += 1;
                self.hello(host, false);
            }
            Request::Mail { from } => {
                self.counts.mail += 1;
                return Ok(self.mail(&line, from));
            }
            Request::Rcpt { to } => {
                self.counts.rcpt += 1;
                let listed = self.dnsbl_listing().await;
                return Ok(self.rcpt(&line, to.address, listed));
            }
            Request::Data => {
                self.counts.data += 1;
                return self.data().await;
            }
            Request::Bdat {
                chunk_size,
                is_last,
            } => {
                self.counts.bdat += 1;
                return self.bdat(chunk_size, is_last).await;
            }
            Request::Rset => {
                self.counts.rset += 1;
                self.txn = None;
                self.conn.reply("250 2.0.0 Ok");
            }
            Request::Noop { .. } => self.conn.reply("250 2.0.0 Ok"),
            Request::Quit => {
                self.counts.quit += 1;
                self.conn.reply("221 2.0.0 Bye");
                return Ok(Flow::Close);
            }
            Request::StartTls => {
                self.counts.starttls += 1;
                return self.starttls().await;
            }
            Request::Vrfy { .. } => {
                self.counts.other += 1;
                return Ok(self.error("502 5.5.1 VRFY command is disabled"));
            }
            Request::Help { .. } => self.conn.reply("214 2.0.0 See RFC 5321"),
            _ => {
                self.counts.other += 1;
                return Ok(self.error("502 5.5.2 Error: command not recognized"));
            }
        }
        Ok(Flow::Continue)
    }

    fn parse_error(&mut self, line: &[u8], e: ProtoError) -> Flow {
        let verb: String = String::from_utf8_lossy(line)
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_ascii_uppercase();
        let text = match e {
            ProtoError::UnknownCommand => {
                self.counts.other += 1;
                "502 5.5.2 Error: command not recognized".to_string()
            }
            ProtoError::InvalidSenderAddress => "501 5.1.7 Bad sender address syntax".into(),
            ProtoError::InvalidRecipientAddress => "501 5.1.3 Bad recipient address syntax".into(),
            ProtoError::SyntaxError { syntax } => format!("501 5.5.4 Syntax: {syntax}"),
            ProtoError::InvalidParameter { param } => {
                format!("501 5.5.4 Bad {param} parameter syntax")
            }
            ProtoError::UnsupportedParameter { param } => {
                format!("555 5.5.4 Unsupported option: {}", printable(&param))
            }
            _ => "500 5.5.2 Error: bad syntax".into(),
        };
        let text = if verb == "EXPN" {
            "502 5.5.2 Error: command not recognized".to_string()
        } else {
            text
        };
        self.error(&text)
    }
}
