//! One milter conversation for one message: connect, negotiate, replay the
//! session (connect, HELO, MAIL, RCPT, DATA, headers, body) and read the
//! verdict and the changes at end of message. Every wait is bounded by one
//! of the three timeouts; any failure is a `MilterError`, and the caller
//! applies its default action.

use std::net::IpAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::message::{HeaderChange, Message, value_for_milter, value_from_milter};
use crate::wire::{self, Reply, action, cmd, proto};
use crate::{MilterAddress, MilterError};

/// Postfix's `milter_*_timeout`s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// `milter_connect_timeout`: to connect.
    pub connect: Duration,
    /// `milter_command_timeout`: each reply to connect, HELO, MAIL, RCPT,
    /// DATA and the negotiation.
    pub command: Duration,
    /// `milter_content_timeout`: each reply to a header, the end of the
    /// headers, a body chunk and the end of the message.
    pub content: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(30),
            command: Duration::from_secs(30),
            content: Duration::from_secs(300),
        }
    }
}

/// What the milter is told about the message and its session.
#[derive(Debug, Clone)]
pub struct Transaction<'a> {
    pub client_addr: IpAddr,
    pub client_port: u16,
    /// The HELO/EHLO name the client gave.
    pub helo: &'a str,
    /// The envelope sender, without angle brackets (empty: `<>`).
    pub sender: &'a str,
    /// The envelope recipients, without angle brackets.
    pub recipients: &'a [String],
    /// The whole message, headers and body, CRLF line ends.
    pub message: &'a [u8],
    /// Macro `i`.
    pub queue_id: &'a str,
    /// Macro `j` (`myhostname`).
    pub hostname: &'a str,
    /// Macro `{daemon_name}`.
    pub daemon_name: &'a str,
    /// Macros `{auth_type}` and `{auth_authen}`, for an authenticated client.
    pub auth: Option<(&'a str, &'a str)>,
}

/// The milter's decision on the message. Exhaustive on purpose: a new
/// verdict must be handled by the smtpd's stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Accept or continue: the message goes on, with the changes.
    Pass,
    /// Refuse with this SMTP reply (the milter's own, or `550 5.7.1 Command
    /// rejected`).
    Reject(String),
    /// Refuse for now with this reply (the milter's own, or `451 4.7.1
    /// Service unavailable - try again later`).
    Tempfail(String),
    /// Accept towards the client and drop the message.
    Discard,
}

/// The reply used when a milter rejects without text.
pub const REJECT_REPLY: &str = "550 5.7.1 Command rejected";
/// The reply used when a milter tempfails without text.
pub const TEMPFAIL_REPLY: &str = "451 4.7.1 Service unavailable - try again later";

/// A change to the message or its envelope, in the order the milter asked.
/// Exhaustive on purpose, like `Verdict`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Header(HeaderChange),
    /// A recipient to add (angle brackets removed; ESMTP arguments of
    /// SMFIR_ADDRCPT_PAR are not kept).
    AddRecipient(String),
    /// A recipient to remove (angle brackets removed).
    DeleteRecipient(String),
    /// The new envelope sender (angle brackets removed; empty: `<>`).
    ChangeSender(String),
}

/// What one milter said about one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub verdict: Verdict,
    /// Meaningful only with `Verdict::Pass`.
    pub changes: Vec<Change>,
    /// Why to put the message on hold (SMFIR_QUARANTINE).
    pub quarantine: Option<String>,
}

impl Outcome {
    fn ended(verdict: Verdict) -> Outcome {
        Outcome {
            verdict,
            changes: Vec::new(),
            quarantine: None,
        }
    }

    /// The message with the header and body changes applied; `None` when
    /// there are none.
    pub fn apply_to_message(&self, message: &[u8]) -> Option<Vec<u8>> {
        let mut edits = self.changes.iter().filter_map(|c| match c {
            Change::Header(h) => Some(h),
            _ => None,
        });
        let first = edits.next()?;
        let mut m = Message::parse(message);
        m.apply(first);
        for e in edits {
            m.apply(e);
        }
        Some(m.to_bytes())
    }
}

/// The connection to a milter.
enum Io {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

impl Io {
    async fn open(addr: &MilterAddress) -> std::io::Result<Io> {
        match addr {
            MilterAddress::Inet { host, port } => {
                let s = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
                s.set_nodelay(true)?;
                Ok(Io::Tcp(s))
            }
            MilterAddress::Unix(path) => Ok(Io::Unix(tokio::net::UnixStream::connect(path).await?)),
        }
    }

    async fn write_all(&mut self, out: &[u8]) -> std::io::Result<()> {
        match self {
            Io::Tcp(s) => s.write_all(out).await,
            Io::Unix(s) => s.write_all(out).await,
        }
    }

    async fn read_exact(&mut self, buf: &mut [u8]) -> std::io::Result<()> {
        match self {
            Io::Tcp(s) => s.read_exact(buf).await.map(|_| ()),
            Io::Unix(s) => s.read_exact(buf).await.map(|_| ()),
        }
    }

    /// Acknowledges what the milter sends at once. A milter (libmilter)
    /// writes each reply packet on its own and leaves Nagle on: at the end
    /// of a message, a second packet (the verdict after a header change)
    /// would wait for our ACK of the first, which Linux delays by up to
    /// 40 ms. TCP_QUICKACK is not sticky, so it is set before each read.
    fn quick_ack(&self) {
        #[cfg(target_os = "linux")]
        if let Io::Tcp(s) = self {
            let _ = socket2::SockRef::from(s).set_tcp_quickack(true);
        }
    }
}

/// Runs one milter over one message. `body_limit` bounds a body
/// replacement (the message size limit): a larger one is a failure.
pub async fn check(
    addr: &MilterAddress,
    timeouts: &Timeouts,
    body_limit: usize,
    txn: &Transaction<'_>,
) -> Result<Outcome, MilterError> {
    let io = match tokio::time::timeout(timeouts.connect, Io::open(addr)).await {
        Ok(Ok(io)) => io,
        Ok(Err(e)) => return Err(MilterError::Connect(e)),
        Err(_) => return Err(MilterError::ConnectTimeout(timeouts.connect)),
    };
    let mut c = Conversation {
        io,
        actions: 0,
        protocol: 0,
        timeouts: *timeouts,
        body_limit,
    };
    let outcome = c.converse(txn).await?;
    // The verdict is in; a milter that does not take its QUIT changes
    // nothing.
    let mut quit = Vec::new();
    wire::packet(&mut quit, cmd::QUIT, b"");
    let _ = tokio::time::timeout(Duration::from_secs(1), c.io.write_all(&quit)).await;
    Ok(outcome)
}

/// What a step of the replay leads to.
enum Step {
    Next,
    /// SMFIR_SKIP to a body chunk: no more body.
    SkipBody,
    Stop(Verdict),
}

struct Conversation {
    io: Io,
    /// Actions and protocol flags as negotiated.
    actions: u32,
    protocol: u32,
    timeouts: Timeouts,
    body_limit: usize,
}

fn protocol_error(what: &'static str, reason: impl Into<String>) -> MilterError {
    MilterError::Protocol {
        what,
        reason: reason.into(),
    }
}

impl Conversation {
    async fn write(
        &mut self,
        out: &[u8],
        what: &'static str,
        t: Duration,
    ) -> Result<(), MilterError> {
        match tokio::time::timeout(t, self.io.write_all(out)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(MilterError::Io {
                what,
                source: e,
                reading: false,
            }),
            Err(_) => Err(MilterError::Timeout { what, after: t }),
        }
    }

    /// Reads one reply packet within `t`.
    async fn read(&mut self, what: &'static str, t: Duration) -> Result<Reply, MilterError> {
        self.io.quick_ack();
        let read = async {
            let mut len = [0u8; 4];
            self.io.read_exact(&mut len).await?;
            let len = u32::from_be_bytes(len) as usize;
            if len == 0 || len > wire::MAX_PACKET {
                return Ok(Err(format!(
                    "a packet of {len} bytes (the limit is {})",
                    wire::MAX_PACKET
                )));
            }
            let mut data = vec![0u8; len];
            self.io.read_exact(&mut data).await?;
            Ok::<_, std::io::Error>(Ok(data))
        };
        let data = match tokio::time::timeout(t, read).await {
            Ok(Ok(Ok(data))) => data,
            Ok(Ok(Err(reason))) => return Err(protocol_error(what, reason)),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Err(MilterError::Closed(what));
            }
            Ok(Err(e)) => {
                return Err(MilterError::Io {
                    what,
                    source: e,
                    reading: true,
                });
            }
            Err(_) => {
                return Err(MilterError::Timeout { what, after: t });
            }
        };
        wire::decode(data[0], &data[1..]).map_err(|r| protocol_error(what, r))
    }

    /// Sends one command (with its macros) unless the milter asked not to
    /// get it, and reads the reply unless the milter waived it.
    #[allow(clippy::too_many_arguments)]
    async fn step(
        &mut self,
        code: u8,
        what: &'static str,
        macros: &[(&str, String)],
        data: &[u8],
        no: u32,
        no_reply: u32,
        t: Duration,
    ) -> Result<Step, MilterError> {
        if self.protocol & no != 0 {
            return Ok(Step::Next);
        }
        let mut out = Vec::with_capacity(data.len() + 64);
        if !macros.is_empty() {
            wire::packet(&mut out, cmd::MACRO, &wire::macros(code, macros));
        }
        wire::packet(&mut out, code, data);
        self.write(&out, what, t).await?;
        if self.protocol & no_reply != 0 {
            return Ok(Step::Next);
        }
        loop {
            let reply = self.read(what, t).await?;
            return Ok(match reply {
                Reply::Progress => continue,
                Reply::Continue => Step::Next,
                Reply::Skip if code == cmd::BODY => Step::SkipBody,
                other => match final_verdict(other) {
                    Ok(v) => Step::Stop(v),
                    Err(r) => {
                        return Err(protocol_error(
                            what,
                            format!("{} is not a reply to {what}", r.name()),
                        ));
                    }
                },
            });
        }
    }

    async fn converse(&mut self, txn: &Transaction<'_>) -> Result<Outcome, MilterError> {
        let command = self.timeouts.command;
        let content = self.timeouts.content;
        let mut out = Vec::new();
        wire::packet(
            &mut out,
            cmd::OPTNEG,
            &wire::optneg(wire::VERSION, wire::OFFERED_ACTIONS, wire::OFFERED_PROTOCOL),
        );
        self.write(&out, "SMFIC_OPTNEG", command).await?;
        match self.read("SMFIC_OPTNEG", command).await? {
            Reply::OptNeg {
                version,
                actions,
                protocol,
            } => {
                if !(2..=wire::VERSION).contains(&version) {
                    return Err(protocol_error(
                        "SMFIC_OPTNEG",
                        format!("protocol version {version} (hamail speaks 2 to 6)"),
                    ));
                }
                // What we did not offer, the milter does not get; a milter
                // that then uses it is refused at that point.
                self.actions = actions & wire::OFFERED_ACTIONS;
                self.protocol = protocol & wire::OFFERED_PROTOCOL;
            }
            other => {
                return Err(protocol_error(
                    "SMFIC_OPTNEG",
                    format!("{} instead of the negotiation", other.name()),
                ));
            }
        }
        let lead = self.protocol & proto::HDR_LEADSPC != 0;
        let client_name = format!("[{}]", txn.client_addr);

        let macros = [
            ("j", txn.hostname.to_string()),
            ("{daemon_name}", txn.daemon_name.to_string()),
            ("v", "hamail".to_string()),
            ("{client_addr}", txn.client_addr.to_string()),
            ("{client_name}", client_name.clone()),
        ];
        let data = wire::connect(&client_name, txn.client_addr, txn.client_port);
        let s = self
            .step(
                cmd::CONNECT,
                "SMFIC_CONNECT",
                &macros,
                &data,
                proto::NOCONNECT,
                proto::NR_CONN,
                command,
            )
            .await?;
        if let Step::Stop(v) = s {
            return Ok(Outcome::ended(v));
        }

        let mut data = Vec::new();
        wire::push_cstr(&mut data, txn.helo.as_bytes());
        let s = self
            .step(
                cmd::HELO,
                "SMFIC_HELO",
                &[],
                &data,
                proto::NOHELO,
                proto::NR_HELO,
                command,
            )
            .await?;
        if let Step::Stop(v) = s {
            return Ok(Outcome::ended(v));
        }

        let mut macros = vec![
            ("i", txn.queue_id.to_string()),
            ("{mail_addr}", txn.sender.to_string()),
        ];
        if let Some((kind, user)) = txn.auth {
            macros.push(("{auth_type}", kind.to_string()));
            macros.push(("{auth_authen}", user.to_string()));
        }
        let mut data = Vec::new();
        wire::push_cstr(&mut data, format!("<{}>", txn.sender).as_bytes());
        let s = self
            .step(
                cmd::MAIL,
                "SMFIC_MAIL",
                &macros,
                &data,
                proto::NOMAIL,
                proto::NR_MAIL,
                command,
            )
            .await?;
        if let Step::Stop(v) = s {
            return Ok(Outcome::ended(v));
        }

        for rcpt in txn.recipients {
            let macros = [("{rcpt_addr}", rcpt.clone())];
            let mut data = Vec::new();
            wire::push_cstr(&mut data, format!("<{rcpt}>").as_bytes());
            let s = self
                .step(
                    cmd::RCPT,
                    "SMFIC_RCPT",
                    &macros,
                    &data,
                    proto::NORCPT,
                    proto::NR_RCPT,
                    command,
                )
                .await?;
            // A recipient refused now refuses the message: the client was
            // told 250 for it long ago (see docs/smtp.md, Milters).
            if let Step::Stop(v) = s {
                return Ok(Outcome::ended(v));
            }
        }

        let macros = [("i", txn.queue_id.to_string())];
        let s = self
            .step(
                cmd::DATA,
                "SMFIC_DATA",
                &macros,
                b"",
                proto::NODATA,
                proto::NR_DATA,
                command,
            )
            .await?;
        if let Step::Stop(v) = s {
            return Ok(Outcome::ended(v));
        }

        let message = Message::parse(txn.message);
        for h in &message.headers {
            let mut data = Vec::with_capacity(h.name.len() + h.value.len() + 2);
            wire::push_cstr(&mut data, &h.name);
            wire::push_cstr(&mut data, &value_for_milter(&h.value, lead));
            let s = self
                .step(
                    cmd::HEADER,
                    "SMFIC_HEADER",
                    &[],
                    &data,
                    proto::NOHDRS,
                    proto::NR_HDR,
                    content,
                )
                .await?;
            if let Step::Stop(v) = s {
                return Ok(Outcome::ended(v));
            }
        }
        let s = self
            .step(
                cmd::EOH,
                "SMFIC_EOH",
                &[],
                b"",
                proto::NOEOH,
                proto::NR_EOH,
                content,
            )
            .await?;
        if let Step::Stop(v) = s {
            return Ok(Outcome::ended(v));
        }

        for chunk in message.body.chunks(wire::BODY_CHUNK) {
            match self
                .step(
                    cmd::BODY,
                    "SMFIC_BODY",
                    &[],
                    chunk,
                    proto::NOBODY,
                    proto::NR_BODY,
                    content,
                )
                .await?
            {
                Step::Next => {}
                Step::SkipBody => break,
                Step::Stop(v) => return Ok(Outcome::ended(v)),
            }
        }

        let macros = [
            ("i", txn.queue_id.to_string()),
            ("{msg_size}", txn.message.len().to_string()),
        ];
        let mut out = Vec::new();
        wire::packet(&mut out, cmd::MACRO, &wire::macros(cmd::BODYEOB, &macros));
        wire::packet(&mut out, cmd::BODYEOB, b"");
        self.write(&out, "SMFIC_BODYEOB", content).await?;
        self.end_of_message(lead).await
    }

    /// Reads the changes and the verdict that end the message.
    async fn end_of_message(&mut self, lead: bool) -> Result<Outcome, MilterError> {
        const WHAT: &str = "SMFIC_BODYEOB";
        let mut changes = Vec::new();
        let mut body: Option<Vec<u8>> = None;
        let mut quarantine = None;
        // Header and recipient changes are bounded like a body replacement:
        // a milter sending SMFIR_ADDHEADER for ever must not fill memory.
        let mut change_bytes = 0usize;
        loop {
            let reply = self.read(WHAT, self.timeouts.content).await?;
            change_bytes += match &reply {
                Reply::AddHeader { name, value }
                | Reply::InsertHeader { name, value, .. }
                | Reply::ChangeHeader { name, value, .. } => name.len() + value.len() + 4,
                Reply::AddRecipient(r)
                | Reply::AddRecipientPar(r, _)
                | Reply::DeleteRecipient(r)
                | Reply::ChangeSender(r, _) => r.len() + 4,
                _ => 0,
            };
            if change_bytes > self.body_limit {
                return Err(MilterError::ChangesTooBig(self.body_limit));
            }
            let needs = match &reply {
                Reply::AddHeader { .. } | Reply::InsertHeader { .. } => action::ADDHDRS,
                Reply::ChangeHeader { .. } => action::CHGHDRS,
                Reply::ReplaceBody(_) => action::CHGBODY,
                Reply::AddRecipient(_) => action::ADDRCPT,
                Reply::AddRecipientPar(..) => action::ADDRCPT_PAR,
                Reply::DeleteRecipient(_) => action::DELRCPT,
                Reply::ChangeSender(..) => action::CHGFROM,
                Reply::Quarantine(_) => action::QUARANTINE,
                _ => 0,
            };
            if self.actions & needs != needs {
                return Err(protocol_error(
                    WHAT,
                    format!("{} without having negotiated it", reply.name()),
                ));
            }
            match reply {
                Reply::Progress => {}
                Reply::AddHeader { name, value } => {
                    changes.push(Change::Header(HeaderChange::Add {
                        name,
                        value: value_from_milter(&value, lead),
                    }))
                }
                Reply::InsertHeader { index, name, value } => {
                    changes.push(Change::Header(HeaderChange::Insert {
                        index,
                        name,
                        value: value_from_milter(&value, lead),
                    }))
                }
                Reply::ChangeHeader { index, name, value } => {
                    let value = if value.is_empty() {
                        value
                    } else {
                        value_from_milter(&value, lead)
                    };
                    changes.push(Change::Header(HeaderChange::Change { index, name, value }))
                }
                Reply::ReplaceBody(chunk) => {
                    let b = body.get_or_insert_with(Vec::new);
                    if b.len() + chunk.len() > self.body_limit {
                        return Err(MilterError::ReplacementTooBig(self.body_limit));
                    }
                    b.extend_from_slice(&chunk);
                }
                Reply::AddRecipient(r) | Reply::AddRecipientPar(r, _) => {
                    changes.push(Change::AddRecipient(strip_brackets(&r)))
                }
                Reply::DeleteRecipient(r) => {
                    changes.push(Change::DeleteRecipient(strip_brackets(&r)))
                }
                Reply::ChangeSender(s, _) => changes.push(Change::ChangeSender(strip_brackets(&s))),
                Reply::Quarantine(reason) => quarantine = Some(reason),
                other => {
                    let verdict = final_verdict(other).map_err(|r| {
                        protocol_error(WHAT, format!("{} is not a reply to {WHAT}", r.name()))
                    })?;
                    if let Some(b) = body {
                        changes.push(Change::Header(HeaderChange::ReplaceBody(b)));
                    }
                    return Ok(Outcome {
                        verdict,
                        changes,
                        quarantine,
                    });
                }
            }
        }
    }
}

/// A reply that ends the milter's say on the message; the reply back if
/// it is not one.
fn final_verdict(reply: Reply) -> Result<Verdict, Reply> {
    Ok(match reply {
        Reply::Accept | Reply::Continue => Verdict::Pass,
        Reply::Reject => Verdict::Reject(REJECT_REPLY.into()),
        Reply::Tempfail => Verdict::Tempfail(TEMPFAIL_REPLY.into()),
        Reply::Discard => Verdict::Discard,
        Reply::ReplyCode(text) if text.starts_with('4') => Verdict::Tempfail(text),
        Reply::ReplyCode(text) => Verdict::Reject(text),
        other => return Err(other),
    })
}

fn strip_brackets(s: &str) -> String {
    let s = s.trim();
    s.strip_prefix('<')
        .and_then(|s| s.strip_suffix('>'))
        .unwrap_or(s)
        .to_string()
}
