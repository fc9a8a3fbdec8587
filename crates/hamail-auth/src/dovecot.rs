//! A client of Dovecot's auth protocol (the `auth-client` socket, protocol
//! version 1), so hamail can authenticate SMTP clients against an existing
//! Dovecot instead of its own users.
//!
//! One connection per authentication: connect, handshake (`VERSION 1 2`,
//! `CPID`; the server's `VERSION`, `MECH`..., `SPID`, `CUID`, `COOKIE`,
//! `DONE`), one `AUTH` request with `nologin` (no login process will take
//! the session over), `service=smtp`, the client's `rip=` (Dovecot's own
//! failure penalty counts per remote IP) and `secured` when the client's
//! connection is TLS; then `CONT` rounds for LOGIN, and `OK` or `FAIL`. A
//! connection per call costs one Unix socket connect, which is small beside
//! the hash Dovecot computes, and leaves no shared connection state to get
//! wrong. Every line read is bounded (16,386 octets, Dovecot's
//! AUTH_CLIENT_MAX_LINE_LENGTH plus the line end), the handshake to 256
//! lines, and the whole exchange by a timeout (30 s by default: Dovecot
//! delays failures by 2 s and more under its auth penalty). Values are sent
//! and read with Dovecot's tab-escaping (`\x01` escapes NUL, `\x01`, TAB,
//! CR, LF).

use std::collections::VecDeque;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::AuthError;
use crate::sasl::Mechanism;

/// Default bound on one whole authentication exchange.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest line read from the server, line end included.
const MAX_LINE: usize = 16_384 + 2;
/// Most lines accepted before the handshake's `DONE`.
const MAX_HANDSHAKE_LINES: usize = 256;
/// Longest failure reason kept from a `FAIL` line, characters.
const MAX_REASON: usize = 200;
/// The id of the one request on a connection.
const REQUEST_ID: &str = "1";

/// Dovecot's answer to an authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DovecotVerdict {
    /// Authenticated; `user` is the name Dovecot settled on (its `user=`,
    /// possibly normalised), else the name given.
    Ok {
        /// The authenticated user.
        user: String,
    },
    /// Wrong credentials or unknown user (reply 535 5.7.8); `reason` is the
    /// server's `reason=` if it gave one (printable, at most 200 characters).
    Fail {
        /// Dovecot's reason text.
        reason: Option<String>,
    },
    /// Dovecot could not decide now (`FAIL ... temp`: a passdb backend is
    /// down); reply 454 4.7.0 and let the client retry.
    TempFail {
        /// Dovecot's reason text.
        reason: Option<String>,
    },
}

/// A Dovecot auth client socket, e.g. `/run/dovecot/auth-client`.
#[derive(Debug, Clone)]
pub struct DovecotAuth {
    path: PathBuf,
    timeout: Duration,
}

impl DovecotAuth {
    /// Talks to the auth client socket at `path`, with [`DEFAULT_TIMEOUT`].
    pub fn new(path: impl Into<PathBuf>) -> DovecotAuth {
        DovecotAuth {
            path: path.into(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// The same socket with another bound on each exchange.
    pub fn with_timeout(mut self, timeout: Duration) -> DovecotAuth {
        self.timeout = timeout;
        self
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Asks Dovecot whether `user` with `password` may log in, using `mech`
    /// towards Dovecot (so its logs and policies see the client's
    /// mechanism). `client_ip` is the SMTP client's address; `secured` says
    /// whether its connection is TLS. A NUL in the user name or a PLAIN
    /// password cannot be sent and fails without asking.
    pub async fn authenticate(
        &self,
        mech: Mechanism,
        user: &str,
        password: &[u8],
        client_ip: IpAddr,
        secured: bool,
    ) -> Result<DovecotVerdict, AuthError> {
        if user.contains('\0') || (mech == Mechanism::Plain && password.contains(&0)) {
            return Ok(DovecotVerdict::Fail {
                reason: Some("NUL in the user name or password".into()),
            });
        }
        let exchange = self.exchange(mech, user, password, client_ip, secured);
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(AuthError::DovecotTimeout {
                path: self.path.clone(),
                seconds: self.timeout.as_secs(),
            }),
        }
    }

    async fn exchange(
        &self,
        mech: Mechanism,
        user: &str,
        password: &[u8],
        client_ip: IpAddr,
        secured: bool,
    ) -> Result<DovecotVerdict, AuthError> {
        let io = |source| AuthError::DovecotIo {
            path: self.path.clone(),
            source,
        };
        let stream = UnixStream::connect(&self.path).await.map_err(io)?;
        let (read, mut write) = stream.into_split();
        let mut read = BufReader::new(read);
        let hello = format!("VERSION\t1\t2\nCPID\t{}\n", std::process::id());
        write.write_all(hello.as_bytes()).await.map_err(io)?;

        let mechs = self.handshake(&mut read).await?;
        if !mechs.iter().any(|m| m.eq_ignore_ascii_case(mech.name())) {
            return Err(self.protocol(format!(
                "the server does not offer {mech} (offers {})",
                mechs.join(" ")
            )));
        }

        let mut request = format!(
            "AUTH\t{REQUEST_ID}\t{}\tservice=smtp\tnologin\trip={}",
            mech.name(),
            tab_escape(&client_ip.to_string())
        );
        if secured {
            request.push_str("\tsecured");
        }
        // PLAIN goes as the initial response; LOGIN answers two CONTs.
        let mut answers: VecDeque<Vec<u8>> = VecDeque::new();
        match mech {
            Mechanism::Plain => {
                let mut resp = Vec::with_capacity(user.len() + password.len() + 2);
                resp.push(0);
                resp.extend_from_slice(user.as_bytes());
                resp.push(0);
                resp.extend_from_slice(password);
                request.push_str("\tresp=");
                request.push_str(&STANDARD.encode(resp));
            }
            Mechanism::Login => {
                answers.push_back(user.as_bytes().to_vec());
                answers.push_back(password.to_vec());
            }
        }
        request.push('\n');
        write.write_all(request.as_bytes()).await.map_err(io)?;

        loop {
            let line = self.read_line(&mut read).await?;
            let fields: Vec<&str> = line.split('\t').collect();
            let (command, id, params) = match fields.as_slice() {
                [command, id, params @ ..] => (*command, *id, params),
                _ => return Err(self.protocol(format!("unexpected line '{}'", shown(&line)))),
            };
            if id != REQUEST_ID {
                return Err(self.protocol(format!(
                    "{command} for request id '{}', not {REQUEST_ID}",
                    shown(id)
                )));
            }
            match command {
                "OK" => {
                    let user = param(params, "user").unwrap_or_else(|| user.to_string());
                    return Ok(DovecotVerdict::Ok { user });
                }
                "FAIL" => {
                    let reason = param(params, "reason").map(|r| shown(&r));
                    return Ok(if params.contains(&"temp") {
                        DovecotVerdict::TempFail { reason }
                    } else {
                        DovecotVerdict::Fail { reason }
                    });
                }
                "CONT" => {
                    let Some(answer) = answers.pop_front() else {
                        return Err(
                            self.protocol(format!("a CONT challenge {mech} has no answer for"))
                        );
                    };
                    let cont = format!("CONT\t{REQUEST_ID}\t{}\n", STANDARD.encode(answer));
                    write.write_all(cont.as_bytes()).await.map_err(io)?;
                }
                other => {
                    return Err(self.protocol(format!("unexpected reply '{}'", shown(other))));
                }
            }
        }
    }

    /// Reads the server's handshake up to `DONE`; returns the mechanisms.
    async fn handshake<R>(&self, read: &mut R) -> Result<Vec<String>, AuthError>
    where
        R: tokio::io::AsyncBufRead + Unpin,
    {
        let version = self.read_line(read).await?;
        let mut fields = version.split('\t');
        match (fields.next(), fields.next()) {
            (Some("VERSION"), Some("1")) => {}
            (Some("VERSION"), Some(major)) => {
                return Err(self.protocol(format!(
                    "server speaks auth protocol version {}, not 1",
                    shown(major)
                )));
            }
            _ => {
                return Err(self.protocol(format!("expected VERSION, got '{}'", shown(&version))));
            }
        }
        let mut mechs = Vec::new();
        for _ in 0..MAX_HANDSHAKE_LINES {
            let line = self.read_line(read).await?;
            let mut fields = line.split('\t');
            match fields.next() {
                Some("DONE") => return Ok(mechs),
                Some("MECH") => {
                    if let Some(name) = fields.next() {
                        mechs.push(tab_unescape(name));
                    }
                }
                // SPID, CUID, COOKIE and anything newer: not needed here.
                _ => {}
            }
        }
        Err(self.protocol(format!(
            "no DONE within {MAX_HANDSHAKE_LINES} handshake lines"
        )))
    }

    /// One line without its LF, at most [`MAX_LINE`] octets, UTF-8.
    async fn read_line<R>(&self, read: &mut R) -> Result<String, AuthError>
    where
        R: tokio::io::AsyncBufRead + Unpin,
    {
        let mut buf = Vec::new();
        (&mut *read)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut buf)
            .await
            .map_err(|source| AuthError::DovecotIo {
                path: self.path.clone(),
                source,
            })?;
        if buf.last() != Some(&b'\n') {
            return Err(self.protocol(if buf.len() >= MAX_LINE {
                format!("a line longer than {MAX_LINE} octets")
            } else {
                "the server closed the connection".to_string()
            }));
        }
        buf.pop();
        String::from_utf8(buf).map_err(|_| self.protocol("a line that is not UTF-8".into()))
    }

    fn protocol(&self, reason: String) -> AuthError {
        AuthError::DovecotProtocol {
            path: self.path.clone(),
            reason,
        }
    }
}

/// The unescaped value of `name=value` among `params`.
fn param(params: &[&str], name: &str) -> Option<String> {
    params.iter().find_map(|p| {
        p.strip_prefix(name)
            .and_then(|rest| rest.strip_prefix('='))
            .map(tab_unescape)
    })
}

/// Dovecot's tab-escaping (str_tabescape): `\x01` -> `\x01 1`, NUL -> `\x01 0`,
/// TAB -> `\x01 t`, CR -> `\x01 r`, LF -> `\x01 n`.
pub fn tab_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\x01' => out.push_str("\x011"),
            '\0' => out.push_str("\x010"),
            '\t' => out.push_str("\x01t"),
            '\r' => out.push_str("\x01r"),
            '\n' => out.push_str("\x01n"),
            c => out.push(c),
        }
    }
    out
}

/// The inverse of [`tab_escape`]; `\x01 l` is LF too (newer Dovecot), any
/// other escaped character stands for itself, a trailing `\x01` is dropped.
pub fn tab_unescape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c != '\x01' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('0') => out.push('\0'),
            Some('1') => out.push('\x01'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some('n' | 'l') => out.push('\n'),
            Some(other) => out.push(other),
            None => {}
        }
    }
    out
}

/// Printable form of server text for errors and reasons: control
/// characters as '?', at most [`MAX_REASON`] characters.
fn shown(text: &str) -> String {
    text.chars()
        .take(MAX_REASON)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[cfg(test)]
#[path = "dovecot_tests.rs"]
mod tests;
