//! The milter protocol's packets (Sendmail's libmilter, version 6): a
//! 4-byte big-endian length, a command byte, the data. Pure encoding and
//! decoding; the conversation that uses them is client.rs.

/// The protocol version hamail speaks.
pub const VERSION: u32 = 6;

/// The largest packet accepted from a milter (a body replacement chunk is
/// at most 1 MiB even with Sendmail's largest SMFIP_MDS_1M): a hostile
/// length is refused before anything is allocated for it.
pub const MAX_PACKET: usize = (1 << 20) + 4096;

/// A body chunk sent to a milter (libmilter's MILTER_CHUNK_SIZE).
pub const BODY_CHUNK: usize = 65535;

/// Commands (MTA to milter).
pub mod cmd {
    pub const ABORT: u8 = b'A';
    pub const BODY: u8 = b'B';
    pub const CONNECT: u8 = b'C';
    pub const MACRO: u8 = b'D';
    pub const BODYEOB: u8 = b'E';
    pub const HELO: u8 = b'H';
    pub const HEADER: u8 = b'L';
    pub const MAIL: u8 = b'M';
    pub const EOH: u8 = b'N';
    pub const OPTNEG: u8 = b'O';
    pub const QUIT: u8 = b'Q';
    pub const RCPT: u8 = b'R';
    pub const DATA: u8 = b'T';
}

/// Actions a milter may take at end of message (SMFIF_*).
pub mod action {
    pub const ADDHDRS: u32 = 0x01;
    pub const CHGBODY: u32 = 0x02;
    pub const ADDRCPT: u32 = 0x04;
    pub const DELRCPT: u32 = 0x08;
    pub const CHGHDRS: u32 = 0x10;
    pub const QUARANTINE: u32 = 0x20;
    pub const CHGFROM: u32 = 0x40;
    pub const ADDRCPT_PAR: u32 = 0x80;
}

/// Protocol flags (SMFIP_*): steps a milter does not want, replies it will
/// not send.
pub mod proto {
    pub const NOCONNECT: u32 = 0x01;
    pub const NOHELO: u32 = 0x02;
    pub const NOMAIL: u32 = 0x04;
    pub const NORCPT: u32 = 0x08;
    pub const NOBODY: u32 = 0x10;
    pub const NOHDRS: u32 = 0x20;
    pub const NOEOH: u32 = 0x40;
    pub const NR_HDR: u32 = 0x80;
    pub const NOUNKNOWN: u32 = 0x100;
    pub const NODATA: u32 = 0x200;
    pub const SKIP: u32 = 0x400;
    pub const RCPT_REJ: u32 = 0x800;
    pub const NR_CONN: u32 = 0x1000;
    pub const NR_HELO: u32 = 0x2000;
    pub const NR_MAIL: u32 = 0x4000;
    pub const NR_RCPT: u32 = 0x8000;
    pub const NR_DATA: u32 = 0x10000;
    pub const NR_UNKN: u32 = 0x20000;
    pub const NR_EOH: u32 = 0x40000;
    pub const NR_BODY: u32 = 0x80000;
    pub const HDR_LEADSPC: u32 = 0x100000;
}

/// The actions hamail lets a milter take.
pub const OFFERED_ACTIONS: u32 = action::ADDHDRS
    | action::CHGBODY
    | action::ADDRCPT
    | action::DELRCPT
    | action::CHGHDRS
    | action::QUARANTINE
    | action::CHGFROM
    | action::ADDRCPT_PAR;

/// The protocol flags hamail honours (every step may be left out, every
/// reply but the end of message's may be waived).
pub const OFFERED_PROTOCOL: u32 = proto::NOCONNECT
    | proto::NOHELO
    | proto::NOMAIL
    | proto::NORCPT
    | proto::NOBODY
    | proto::NOHDRS
    | proto::NOEOH
    | proto::NR_HDR
    | proto::NOUNKNOWN
    | proto::NODATA
    | proto::SKIP
    | proto::RCPT_REJ
    | proto::NR_CONN
    | proto::NR_HELO
    | proto::NR_MAIL
    | proto::NR_RCPT
    | proto::NR_DATA
    | proto::NR_UNKN
    | proto::NR_EOH
    | proto::NR_BODY
    | proto::HDR_LEADSPC;

/// Appends one packet: length, command, data.
pub fn packet(out: &mut Vec<u8>, command: u8, data: &[u8]) {
    // Our packets are bounded by BODY_CHUNK and header sizes: far below 4 GiB.
    let len = u32::try_from(data.len() + 1).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.push(command);
    out.extend_from_slice(data);
}

/// A C string for the wire: a NUL inside would cut it short, so it becomes
/// a space.
pub fn push_cstr(out: &mut Vec<u8>, s: &[u8]) {
    out.extend(s.iter().map(|b| if *b == 0 { b' ' } else { *b }));
    out.push(0);
}

/// SMFIC_OPTNEG data.
pub fn optneg(version: u32, actions: u32, protocol: u32) -> Vec<u8> {
    let mut d = Vec::with_capacity(12);
    d.extend_from_slice(&version.to_be_bytes());
    d.extend_from_slice(&actions.to_be_bytes());
    d.extend_from_slice(&protocol.to_be_bytes());
    d
}

/// SMFIC_MACRO data: the command the macros are for, then name/value pairs.
pub fn macros(for_command: u8, pairs: &[(&str, String)]) -> Vec<u8> {
    let mut d = vec![for_command];
    for (name, value) in pairs {
        push_cstr(&mut d, name.as_bytes());
        push_cstr(&mut d, value.as_bytes());
    }
    d
}

/// SMFIC_CONNECT data.
pub fn connect(hostname: &str, addr: std::net::IpAddr, port: u16) -> Vec<u8> {
    let mut d = Vec::new();
    push_cstr(&mut d, hostname.as_bytes());
    d.push(if addr.is_ipv4() { b'4' } else { b'6' });
    d.extend_from_slice(&port.to_be_bytes());
    push_cstr(&mut d, addr.to_string().as_bytes());
    d
}

/// A reply from the milter (SMFIR_*), decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    OptNeg {
        version: u32,
        actions: u32,
        protocol: u32,
    },
    Accept,
    Continue,
    Reject,
    Tempfail,
    Discard,
    Skip,
    Progress,
    /// `SMFIR_REPLYCODE`: the whole SMTP reply, `5xx`/`4xx` first.
    ReplyCode(String),
    Quarantine(String),
    AddHeader {
        name: String,
        value: Vec<u8>,
    },
    InsertHeader {
        index: u32,
        name: String,
        value: Vec<u8>,
    },
    ChangeHeader {
        index: u32,
        name: String,
        value: Vec<u8>,
    },
    ReplaceBody(Vec<u8>),
    AddRecipient(String),
    /// `SMFIR_ADDRCPT_PAR`: the recipient and its ESMTP arguments.
    AddRecipientPar(String, String),
    DeleteRecipient(String),
    ChangeSender(String, String),
}

impl Reply {
    /// The name in logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Reply::OptNeg { .. } => "SMFIC_OPTNEG",
            Reply::Accept => "SMFIR_ACCEPT",
            Reply::Continue => "SMFIR_CONTINUE",
            Reply::Reject => "SMFIR_REJECT",
            Reply::Tempfail => "SMFIR_TEMPFAIL",
            Reply::Discard => "SMFIR_DISCARD",
            Reply::Skip => "SMFIR_SKIP",
            Reply::Progress => "SMFIR_PROGRESS",
            Reply::ReplyCode(_) => "SMFIR_REPLYCODE",
            Reply::Quarantine(_) => "SMFIR_QUARANTINE",
            Reply::AddHeader { .. } => "SMFIR_ADDHEADER",
            Reply::InsertHeader { .. } => "SMFIR_INSHEADER",
            Reply::ChangeHeader { .. } => "SMFIR_CHGHEADER",
            Reply::ReplaceBody(_) => "SMFIR_REPLBODY",
            Reply::AddRecipient(_) => "SMFIR_ADDRCPT",
            Reply::AddRecipientPar(..) => "SMFIR_ADDRCPT_PAR",
            Reply::DeleteRecipient(_) => "SMFIR_DELRCPT",
            Reply::ChangeSender(..) => "SMFIR_CHGFROM",
        }
    }
}

/// Reads NUL-terminated strings from a packet's data.
struct Fields<'a> {
    data: &'a [u8],
}

impl<'a> Fields<'a> {
    fn u32(&mut self) -> Result<u32, String> {
        let (head, rest) = self
            .data
            .split_first_chunk::<4>()
            .ok_or("the packet ends inside a 32-bit number")?;
        self.data = rest;
        Ok(u32::from_be_bytes(*head))
    }

    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let end = self
            .data
            .iter()
            .position(|b| *b == 0)
            .ok_or("a string without its terminating NUL")?;
        let s = &self.data[..end];
        self.data = &self.data[end + 1..];
        Ok(s)
    }

    fn text(&mut self) -> Result<String, String> {
        let b = self.bytes()?;
        String::from_utf8(b.to_vec()).map_err(|_| "a string that is not UTF-8".to_string())
    }

    /// A string that may be missing (libmilter leaves optional arguments
    /// out).
    fn optional_text(&mut self) -> Result<String, String> {
        if self.data.is_empty() {
            return Ok(String::new());
        }
        self.text()
    }

    fn header_name(&mut self) -> Result<String, String> {
        let name = self.text()?;
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
            return Err(format!("{name:?} is not a header name"));
        }
        Ok(name)
    }
}

/// A reply packet's command byte and data, decoded; the error says what is
/// wrong with it.
pub fn decode(command: u8, data: &[u8]) -> Result<Reply, String> {
    let mut f = Fields { data };
    let no_data = |r: Reply| {
        if data.is_empty() {
            Ok(r)
        } else {
            Err(format!("{} with {} bytes of data", r.name(), data.len()))
        }
    };
    match command {
        b'O' => {
            let version = f.u32()?;
            let actions = f.u32()?;
            let protocol = f.u32()?;
            // A SETSYMLIST list may follow (only when offered: never).
            Ok(Reply::OptNeg {
                version,
                actions,
                protocol,
            })
        }
        b'a' => no_data(Reply::Accept),
        b'c' => no_data(Reply::Continue),
        b'r' => no_data(Reply::Reject),
        b't' => no_data(Reply::Tempfail),
        b'd' => no_data(Reply::Discard),
        b's' => no_data(Reply::Skip),
        b'p' => no_data(Reply::Progress),
        b'y' => Ok(Reply::ReplyCode(reply_code(f.bytes()?)?)),
        b'q' => Ok(Reply::Quarantine(printable(f.bytes()?))),
        b'h' => Ok(Reply::AddHeader {
            name: f.header_name()?,
            value: f.bytes()?.to_vec(),
        }),
        b'i' => Ok(Reply::InsertHeader {
            index: f.u32()?,
            name: f.header_name()?,
            value: f.bytes()?.to_vec(),
        }),
        b'm' => Ok(Reply::ChangeHeader {
            index: f.u32()?,
            name: f.header_name()?,
            value: f.bytes()?.to_vec(),
        }),
        b'b' => Ok(Reply::ReplaceBody(data.to_vec())),
        b'+' => Ok(Reply::AddRecipient(f.text()?)),
        b'2' => Ok(Reply::AddRecipientPar(f.text()?, f.optional_text()?)),
        b'-' => Ok(Reply::DeleteRecipient(f.text()?)),
        b'e' => Ok(Reply::ChangeSender(f.text()?, f.optional_text()?)),
        other => Err(format!("unknown reply code 0x{other:02x}")),
    }
}

/// Control characters do not belong in a log line or a reply.
fn printable(b: &[u8]) -> String {
    String::from_utf8_lossy(b)
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .take(512)
        .collect()
}

/// Checks an SMFIR_REPLYCODE text: one or more lines `4xx`/`5xx` (all the
/// same code), `-` between continued lines, printable text. Returns it with
/// CRLF between lines.
fn reply_code(b: &[u8]) -> Result<String, String> {
    let text = std::str::from_utf8(b).map_err(|_| "a reply code that is not UTF-8".to_string())?;
    let bad = || format!("{:?} is not a 4xx or 5xx SMTP reply", printable(b));
    let lines: Vec<&str> = text
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .filter(|l| !l.is_empty())
        .collect();
    let first = lines.first().ok_or_else(bad)?;
    let code = first.get(..3).ok_or_else(bad)?;
    if !matches!(code.as_bytes(), [b'4' | b'5', b'0'..=b'9', b'0'..=b'9']) {
        return Err(bad());
    }
    for (i, line) in lines.iter().enumerate() {
        let last = i + 1 == lines.len();
        let sep = line.as_bytes().get(3).copied();
        let sep_ok = match sep {
            None => last,
            Some(b' ') => last,
            Some(b'-') => !last,
            _ => false,
        };
        if !line.starts_with(code) || !sep_ok || line.chars().any(|c| c.is_control()) {
            return Err(bad());
        }
    }
    Ok(lines.join("\r\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_and_macros_encode() {
        let mut out = Vec::new();
        packet(&mut out, cmd::HELO, b"client.example\0");
        assert_eq!(out, b"\0\0\0\x10Hclient.example\0");
        let d = macros(
            cmd::MAIL,
            &[("i", "ABC".into()), ("{mail_addr}", "a@b".into())],
        );
        assert_eq!(d, b"Mi\0ABC\0{mail_addr}\0a@b\0");
        let d = connect("[192.0.2.1]", "192.0.2.1".parse().unwrap(), 4242);
        assert_eq!(
            d,
            b"[192.0.2.1]\0"
                .iter()
                .chain(b"4\x10\x92192.0.2.1\0")
                .copied()
                .collect::<Vec<u8>>()
        );
        let mut s = Vec::new();
        push_cstr(&mut s, b"a\0b");
        assert_eq!(s, b"a b\0");
    }

    #[test]
    fn replies_decode() {
        assert_eq!(decode(b'a', b""), Ok(Reply::Accept));
        assert_eq!(
            decode(b'y', b"550 5.7.1 no thanks\0"),
            Ok(Reply::ReplyCode("550 5.7.1 no thanks".into()))
        );
        assert_eq!(
            decode(b'y', b"550-5.7.1 one\r\n550 5.7.1 two\0"),
            Ok(Reply::ReplyCode("550-5.7.1 one\r\n550 5.7.1 two".into()))
        );
        assert_eq!(
            decode(b'i', b"\0\0\0\x02X-A\0 v\0"),
            Ok(Reply::InsertHeader {
                index: 2,
                name: "X-A".into(),
                value: b" v".to_vec()
            })
        );
        assert_eq!(
            decode(b'2', b"<a@b>\0"),
            Ok(Reply::AddRecipientPar("<a@b>".into(), String::new()))
        );
        assert_eq!(
            decode(b'q', b"spam\0"),
            Ok(Reply::Quarantine("spam".into()))
        );
    }

    #[test]
    fn garbage_is_refused() {
        for (code, data) in [
            (b'Z', &b""[..]),
            (b'a', b"x"),
            (b'y', b"250 ok\0"),
            (b'y', b"55 short\0"),
            (b'y', b"550-first only\0"),
            (b'y', b"550 5.7.1 no nul"),
            (b'h', b"Bad Name\0v\0"),
            (b'h', b"X-A\0"),
            (b'm', b"\0\0"),
            (b'O', b"\0\0\0\x06"),
            (b'+', b"\xff\0"),
        ] {
            assert!(decode(code, data).is_err(), "{} {:?}", code as char, data);
        }
    }
}
