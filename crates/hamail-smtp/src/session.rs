//! One SMTP session: the ESMTP state machine over any byte stream (a TCP
//! socket, a TLS stream after STARTTLS, or an in-memory pipe in tests).
//!
//! Commands are parsed by smtp-proto; DATA and BDAT bodies by our own
//! readers (data.rs). Replies are buffered and written when the input
//! buffer runs dry, so a pipelining client gets its replies in one write.
//! The reply to the end of a message is sent only after the backend says
//! the message is committed on a majority.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hamail_types::{MailAddress, NewMessage, QueueId};
use smtp_proto::{
    Error as ProtoError, MAIL_BODY_8BITMIME, MAIL_BODY_BINARYMIME, MAIL_SMTPUTF8, Request,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::data::{DataEvent, DataReader, bare_line_ending};
use crate::headers::{Trace, message_id, received_header};
use crate::policy::{Verdict, check_recipient};
use crate::{Backend, EnqueueError, Settings};

/// A byte stream a session runs over.
pub trait IoStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> IoStream for T {}

/// Why a session ended early (each is logged; none is an error of ours).
#[derive(Debug)]
enum End {
    Closed,
    Timeout,
    Io(std::io::Error),
    Shutdown,
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::Closed => f.write_str("lost connection"),
            End::Timeout => f.write_str("timeout"),
            End::Io(e) => write!(f, "{e}"),
            End::Shutdown => f.write_str("server shutting down"),
        }
    }
}

type Step<T> = Result<T, End>;

/// The socket side: a read buffer, a reply buffer, and deadlines.
struct Conn {
    io: Box<dyn IoStream>,
    rbuf: Vec<u8>,
    rpos: usize,
    out: Vec<u8>,
    cancel: CancellationToken,
    /// The session's smtpd_timeout: how long a read of a command or a write
    /// of replies may take.
    timeout: Duration,
}

const READ_CHUNK: usize = 64 * 1024;

impl Conn {
    fn buffered(&self) -> &[u8] {
        &self.rbuf[self.rpos..]
    }

    fn consume(&mut self, n: usize) {
        self.rpos += n;
        if self.rpos == self.rbuf.len() {
            self.rbuf.clear();
            self.rpos = 0;
        }
    }

    /// Writes pending replies by the write deadline, or ends the session on
    /// shutdown: a client that pipelines and never reads its replies fills
    /// the socket buffer and must not hold the session (or shutdown) forever.
    async fn flush(&mut self) -> Step<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let deadline = Instant::now() + self.timeout;
        let Conn {
            io, out, cancel, ..
        } = self;
        tokio::select! {
            r = write_out(io, out) => r.map_err(End::Io)?,
            _ = tokio::time::sleep_until(deadline) => return Err(End::Timeout),
            _ = cancel.cancelled() => return Err(End::Shutdown),
        }
        self.out.clear();
        Ok(())
    }

    /// The last words of a session (a 421 on timeout or shutdown), bounded by
    /// `limit` but not by the shutdown token, so they get a chance to leave.
    async fn flush_final(&mut self, limit: Duration) {
        let Conn { io, out, .. } = self;
        let _ = tokio::time::timeout(limit, async {
            let _ = write_out(io, out).await;
            let _ = io.shutdown().await;
        })
        .await;
        self.out.clear();
    }

    /// Writes pending replies, then reads more input (by `deadline`).
    async fn fill(&mut self, deadline: Instant) -> Step<()> {
        self.flush().await?;
        if self.rpos > 0 {
            self.rbuf.drain(..self.rpos);
            self.rpos = 0;
        }
        let start = self.rbuf.len();
        self.rbuf.resize(start + READ_CHUNK, 0);
        let read = tokio::select! {
            r = self.io.read(&mut self.rbuf[start..]) => r,
            _ = tokio::time::sleep_until(deadline) => {
                self.rbuf.truncate(start);
                return Err(End::Timeout);
            }
            _ = self.cancel.cancelled() => {
                self.rbuf.truncate(start);
                return Err(End::Shutdown);
            }
        };
        match read {
            Ok(0) => {
                self.rbuf.truncate(start);
                Err(End::Closed)
            }
            Ok(n) => {
                self.rbuf.truncate(start + n);
                Ok(())
            }
            Err(e) => {
                self.rbuf.truncate(start);
                Err(End::Io(e))
            }
        }
    }

    fn reply(&mut self, text: &str) {
        self.out.extend_from_slice(text.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }
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

async fn write_out(io: &mut Box<dyn IoStream>, out: &[u8]) -> std::io::Result<()> {
    io.write_all(out).await?;
    io.flush().await
}

/// A command line as read.
enum Line {
    /// The line, CRLF (or LF) included.
    Ok(Vec<u8>),
    /// Longer than the limit; the rest up to the LF was discarded.
    TooLong,
}

/// The envelope of the transaction under way.
#[derive(Default)]
struct Txn {
    sender: Option<MailAddress>,
    recipients: Vec<MailAddress>,
    queue_id: Option<QueueId>,
    smtputf8: bool,
    eight_bit: bool,
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
    other: u32,
    rejected: u32,
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

impl<B: Backend> Session<B> {
    pub(crate) fn new(
        backend: Arc<B>,
        settings: Arc<Settings>,
        io: Box<dyn IoStream>,
        peer: SocketAddr,
        cancel: CancellationToken,
        stressed: bool,
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
            conn: Conn {
                io,
                rbuf: Vec::with_capacity(READ_CHUNK),
                rpos: 0,
                out: Vec::with_capacity(1024),
                cancel,
                timeout,
            },
            helo: None,
            esmtp: false,
            tls: false,
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
        let c = &self.counts;
        let mut parts = Vec::new();
        for (name, n) in [
            ("ehlo", c.ehlo),
            ("helo", c.helo),
            ("starttls", c.starttls),
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
        loop {
            let line = match self.read_command().await? {
                Line::Ok(l) => l,
                Line::TooLong => {
                    if self.error("500 5.5.2 Error: line too long") {
                        return Ok(());
                    }
                    continue;
                }
            };
            if !self.command(line).await? {
                return Ok(());
            }
        }
    }

    /// Counts an error reply; true when the client has had too many and the
    /// session must end (Postfix's `smtpd_hard_error_limit`).
    fn error(&mut self, text: &str) -> bool {
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
            return true;
        }
        false
    }

    /// One command line, by the command deadline: a client that sends a
    /// byte now and then cannot hold the session beyond it (slowloris).
    async fn read_command(&mut self) -> Step<Line> {
        let deadline = Instant::now() + self.idle_timeout();
        let limit = self.settings.line_length_limit;
        let mut skipping = false;
        loop {
            let buf = self.conn.buffered();
            if let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                let line = buf[..=pos].to_vec();
                self.conn.consume(pos + 1);
                if skipping || line.len() > limit {
                    return Ok(Line::TooLong);
                }
                return Ok(Line::Ok(line));
            }
            if buf.len() > limit {
                let n = buf.len();
                self.conn.consume(n);
                skipping = true;
            }
            self.conn.fill(deadline).await?;
        }
    }

    /// Handles one command; false ends the session.
    async fn command(&mut self, line: Vec<u8>) -> Step<bool> {
        if line.contains(&0) {
            return Ok(!self.error("500 5.5.2 Error: bad syntax (NUL byte)"));
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
                return Ok(self.rcpt(&line, to.address));
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
                return Ok(false);
            }
            Request::StartTls => {
                self.counts.starttls += 1;
                return self.starttls().await;
            }
            Request::Vrfy { .. } => {
                self.counts.other += 1;
                return Ok(!self.error("502 5.5.1 VRFY command is disabled"));
            }
            Request::Help { .. } => self.conn.reply("214 2.0.0 See RFC 5321"),
            Request::Auth { .. } => {
                self.counts.other += 1;
                return Ok(!self.error("503 5.5.1 Error: authentication not enabled"));
            }
            _ => {
                self.counts.other += 1;
                return Ok(!self.error("502 5.5.2 Error: command not recognized"));
            }
        }
        Ok(true)
    }

    fn parse_error(&mut self, line: &[u8], e: ProtoError) -> bool {
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
        !self.error(&text)
    }

    fn hello(&mut self, host: Cow<'_, str>, esmtp: bool) {
        let host = host.trim();
        if host.is_empty() {
            let verb = if esmtp { "EHLO" } else { "HELO" };
            self.error(&format!("501 5.5.4 Syntax: {verb} hostname"));
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

    fn mail(&mut self, line: &[u8], from: smtp_proto::MailFrom<Cow<'_, str>>) -> bool {
        if self.helo.is_none() {
            return !self.error("503 5.5.1 Error: send HELO/EHLO first");
        }
        if self.txn.is_some() {
            return !self.error("503 5.5.1 Error: nested MAIL command");
        }
        let limit = self.settings.message_size_limit;
        if from.size > limit {
            tracing::info!(target: "postfix/smtpd", "NOQUEUE: reject: MAIL from {}: 552 5.3.4 Message size exceeds fixed limit; proto=ESMTP helo=<{}>", self.client(), self.helo.as_deref().unwrap_or(""));
            return !self.error("552 5.3.4 Message size exceeds fixed limit");
        }
        if from.flags & MAIL_BODY_BINARYMIME != 0 {
            return !self.error("555 5.5.4 Unsupported option: BODY=BINARYMIME");
        }
        let raw = Self::raw_path(line);
        let sender = if from.address.is_empty() {
            None
        } else {
            match MailAddress::parse(&raw).or_else(|_| MailAddress::parse(&from.address)) {
                Ok(a) if !raw.starts_with('@') => Some(a),
                _ => {
                    return !self.error(&format!(
                        "501 5.1.7 <{}>: Sender address rejected: bad address syntax",
                        printable(&raw)
                    ));
                }
            }
        };
        if !raw.is_ascii() && from.flags & MAIL_SMTPUTF8 == 0 {
            return !self.error("553 5.6.7 Must declare SMTPUTF8 to send a UTF-8 address");
        }
        if !self.backend.has_quorum() {
            return !self.error(
                "451 4.3.0 Error: this site cannot reach a majority of the cluster, try again later",
            );
        }
        self.txn = Some(Txn {
            sender,
            smtputf8: from.flags & MAIL_SMTPUTF8 != 0,
            eight_bit: from.flags & MAIL_BODY_8BITMIME != 0,
            ..Txn::default()
        });
        self.conn.reply("250 2.1.0 Ok");
        true
    }

    fn rcpt(&mut self, line: &[u8], address: Cow<'_, str>) -> bool {
        let Some(txn) = &self.txn else {
            return !self.error("503 5.5.1 Error: need MAIL command");
        };
        if txn.recipients.len() >= self.settings.smtpd_recipient_limit {
            return !self.error("452 4.5.3 Error: too many recipients");
        }
        let raw = Self::raw_path(line);
        if !raw.is_ascii() && !txn.smtputf8 {
            return !self.error("553 5.6.7 Must declare SMTPUTF8 to send a UTF-8 address");
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
            !s.error(&text)
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
        match check_recipient(self.backend.as_ref(), &rcpt, self.trusted) {
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
        let node = self.backend.node_id();
        let client = self.client();
        let Some(txn) = self.txn.as_mut() else {
            return true;
        };
        if txn.queue_id.is_none() {
            let id = crate::next_queue_id(node);
            tracing::info!(target: "postfix/smtpd", "{id}: client={client}");
            txn.queue_id = Some(id);
        }
        if !txn.recipients.contains(&rcpt) {
            txn.recipients.push(rcpt);
        }
        self.conn.reply("250 2.1.5 Ok");
        true
    }

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

    async fn data(&mut self) -> Step<bool> {
        if let Err(text) = self.body_allowed() {
            return Ok(!self.error(text));
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
                    return Ok(false);
                }
            }
        }
        if reader.too_big() {
            self.txn = None;
            return Ok(!self.error("552 5.3.4 Message size exceeds fixed limit"));
        }
        let body = reader.into_body();
        self.finish(body).await
    }

    async fn bdat(&mut self, size: usize, last: bool) -> Step<bool> {
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
            return Ok(!self.error(text));
        }
        let Some(txn) = self.txn.as_mut() else {
            return Ok(true);
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
            return Ok(true);
        }
        let too_big = txn.bdat_too_big;
        let body = txn.bdat.take().unwrap_or_default();
        if too_big {
            self.txn = None;
            return Ok(!self.error("552 5.3.4 Message size exceeds fixed limit"));
        }
        if let Some(ev) = bare_line_ending(&body) {
            self.txn = None;
            let what = if ev == DataEvent::BareLf {
                "<LF>"
            } else {
                "<CR>"
            };
            return Ok(!self.error(&format!("550 5.6.0 Error: message contains a bare {what}")));
        }
        self.finish(body).await
    }

    /// Hands a complete message to the cluster and answers with the outcome.
    async fn finish(&mut self, body: Vec<u8>) -> Step<bool> {
        let Some(txn) = self.txn.take() else {
            return Ok(true);
        };
        let Some(queue_id) = txn.queue_id.clone() else {
            return Ok(!self.error("503 5.5.1 Error: need RCPT command"));
        };
        let now = unix_now();
        let protocol = match (txn.smtputf8, self.esmtp, self.tls) {
            (true, _, true) => "UTF8SMTPS",
            (true, _, false) => "UTF8SMTP",
            (false, true, true) => "ESMTPS",
            (false, true, false) => "ESMTP",
            (false, false, true) => "SMTPS",
            (false, false, false) => "SMTP",
        };
        // Aliases are rewritten now, as Postfix's cleanup does, so the queue
        // holds the final recipients and each is delivered exactly once.
        let recipients = match crate::policy::expand_aliases(self.backend.as_ref(), &txn.recipients)
        {
            Ok(r) if !r.is_empty() => r,
            Ok(_) => {
                return Ok(
                    !self.error("550 5.1.0 Error: the aliases of every recipient lead nowhere")
                );
            }
            Err(e) => {
                tracing::warn!(target: "postfix/cleanup", "{queue_id}: {e}");
                return Ok(!self.error(&format!("550 5.4.6 Error: {}", printable(&e))));
            }
        };
        let single = (txn.recipients.len() == 1).then(|| txn.recipients[0].to_string());
        let helo = self.helo.clone().unwrap_or_default();
        let received = received_header(&Trace {
            helo: &helo,
            client_ip: self.peer.ip(),
            hostname: &self.settings.hostname,
            protocol,
            queue_id: queue_id.as_str(),
            single_recipient: single.as_deref(),
            unix_secs: now.as_secs(),
        });
        let mut full = Vec::with_capacity(received.len() + body.len());
        full.extend_from_slice(received.as_bytes());
        full.extend_from_slice(&body);
        let eight_bit = txn.eight_bit || body.iter().any(|b| *b >= 0x80);
        if let Some(mid) = message_id(&body) {
            tracing::info!(target: "postfix/cleanup", "{queue_id}: message-id={mid}");
        }
        let size = full.len();
        let nrcpt = recipients.len();
        let sender = txn
            .sender
            .as_ref()
            .map(|s| s.to_string())
            .unwrap_or_default();
        let message = NewMessage {
            queue_id: queue_id.clone(),
            sender: txn.sender,
            recipients,
            owner: self.backend.node_id(),
            client: self.client(),
            helo,
            smtputf8: txn.smtputf8,
            eight_bit,
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
                Ok(true)
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
                Ok(!self.error(&text))
            }
        }
    }

    async fn starttls(&mut self) -> Step<bool> {
        let Some(tls) = self.settings.tls.clone() else {
            return Ok(!self.error("502 5.5.1 Error: command not implemented"));
        };
        if self.tls {
            return Ok(!self.error("554 5.5.1 Error: TLS already active"));
        }
        if self.txn.is_some() {
            return Ok(!self.error("503 5.5.1 Error: MAIL transaction in progress"));
        }
        // Whatever the client pipelined after STARTTLS was sent in the
        // clear: it is dropped, never read as if it came inside TLS.
        let extra = self.conn.buffered().len();
        if extra > 0 {
            tracing::info!(target: "postfix/smtpd", "{} bytes pipelined after STARTTLS from {} discarded", extra, self.client());
            self.conn.consume(extra);
        }
        self.conn.reply("220 2.0.0 Ready to start TLS");
        self.conn.flush().await?;
        let plain = std::mem::replace(
            &mut self.conn.io,
            Box::new(tokio::io::join(tokio::io::empty(), tokio::io::sink())),
        );
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        let handshake = tokio::time::timeout(self.idle_timeout(), acceptor.accept(plain)).await;
        match handshake {
            Ok(Ok(stream)) => {
                self.conn.io = Box::new(stream);
                self.tls = true;
                // RFC 3207: the client starts over with EHLO.
                self.helo = None;
                self.txn = None;
                Ok(true)
            }
            Ok(Err(e)) => {
                tracing::info!(target: "postfix/smtpd", "SSL_accept error from {}: {e}", self.client());
                Err(End::Closed)
            }
            Err(_) => Err(End::Timeout),
        }
    }
}
