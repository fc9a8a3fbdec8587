//! The SMTP and LMTP client: one transaction to one server, with STARTTLS
//! (per policy), SASL PLAIN/LOGIN (only inside TLS), PIPELINING when
//! offered, and one outcome per recipient. An outcome is a value; the
//! caller commits it and logs it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hamail_types::MailAddress;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use crate::IoStream;

/// STARTTLS policy (Postfix's `smtp_tls_security_level`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TlsLevel {
    /// Never.
    None,
    /// When offered; any certificate; a failed handshake is retried in
    /// the clear.
    May,
    /// Always; any certificate; no TLS means no delivery (deferred).
    Encrypt,
    /// Always, and the certificate must verify for the host name.
    Verify,
}

impl std::str::FromStr for TlsLevel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(TlsLevel::None),
            "may" => Ok(TlsLevel::May),
            "encrypt" => Ok(TlsLevel::Encrypt),
            "verify" | "secure" => Ok(TlsLevel::Verify),
            _ => Err(format!(
                "{s:?} is not a TLS level (none, may, encrypt, verify, secure)"
            )),
        }
    }
}

/// How to talk to one server.
#[derive(Clone)]
pub struct ClientOptions {
    /// Our name in EHLO/LHLO.
    pub helo_name: String,
    pub lmtp: bool,
    pub connect_timeout: Duration,
    /// For each reply (and for sending the message).
    pub command_timeout: Duration,
    pub tls: TlsLevel,
    /// TLS without certificate checks (may, encrypt) ...
    pub tls_any: Arc<rustls::ClientConfig>,
    /// ... and with them (verify).
    pub tls_verify: Arc<rustls::ClientConfig>,
    pub sasl: Option<(String, String)>,
}

/// The message to send.
#[derive(Debug)]
pub struct Envelope<'a> {
    pub sender: Option<&'a MailAddress>,
    pub recipients: &'a [MailAddress],
    /// CRLF lines (the smtpd refuses anything else).
    pub body: &'a [u8],
    pub eight_bit: bool,
    pub smtputf8: bool,
}

/// One recipient's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptOutcome {
    Sent(String),
    Temporary(String),
    Permanent(String),
}

/// Why no recipient got a result from this server.
#[derive(Debug, Clone)]
pub struct SessionError {
    pub reason: String,
    /// The whole session failed before the server took responsibility for
    /// anything: another MX may be tried.
    pub try_next: bool,
    pub permanent: bool,
    /// A TLS handshake failed under `may`: the caller retries in the clear.
    pub retry_plain: bool,
    /// A kept connection turned out closed before anything was accepted.
    pub stale: bool,
}

impl SessionError {
    fn temp(reason: impl Into<String>) -> Self {
        SessionError {
            reason: reason.into(),
            try_next: true,
            permanent: false,
            retry_plain: false,
            stale: false,
        }
    }
}

/// A server reply.
#[derive(Debug, Clone)]
struct Reply {
    code: u16,
    lines: Vec<String>,
}

impl Reply {
    fn text(&self) -> String {
        format!("{} {}", self.code, self.lines.join(" ").trim())
    }
    fn positive(&self) -> bool {
        (200..400).contains(&self.code)
    }
    fn permanent(&self) -> bool {
        self.code >= 500
    }
    fn has(&self, keyword: &str) -> bool {
        self.lines.iter().any(|l| {
            l.split_whitespace()
                .next()
                .is_some_and(|k| k.eq_ignore_ascii_case(keyword))
        })
    }
    fn keyword_args(&self, keyword: &str) -> Option<String> {
        self.lines.iter().find_map(|l| {
            let mut w = l.split_whitespace();
            w.next()
                .filter(|k| k.eq_ignore_ascii_case(keyword))
                .map(|_| w.collect::<Vec<_>>().join(" "))
        })
    }
}

struct Wire {
    io: Box<dyn IoStream>,
    buf: Vec<u8>,
    timeout: Duration,
}

const MAX_REPLY_LINES: usize = 200;
const MAX_LINE: usize = 4096;

impl Wire {
    async fn send(&mut self, bytes: &[u8]) -> Result<(), SessionError> {
        match tokio::time::timeout(self.timeout, async {
            self.io.write_all(bytes).await?;
            self.io.flush().await
        })
        .await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(SessionError::temp(format!("lost connection: {e}"))),
            Err(_) => Err(SessionError::temp("timeout while sending")),
        }
    }

    async fn line(&mut self) -> Result<String, SessionError> {
        loop {
            if let Some(p) = self.buf.iter().position(|b| *b == b'\n') {
                let raw: Vec<u8> = self.buf.drain(..=p).collect();
                let s = String::from_utf8_lossy(&raw);
                return Ok(s.trim_end_matches(['\r', '\n']).to_string());
            }
            if self.buf.len() > MAX_LINE {
                return Err(SessionError::temp("reply line too long"));
            }
            let mut chunk = [0u8; 4096];
            let n = match tokio::time::timeout(self.timeout, self.io.read(&mut chunk)).await {
                Ok(Ok(0)) => return Err(SessionError::temp("lost connection")),
                Ok(Ok(n)) => n,
                Ok(Err(e)) => return Err(SessionError::temp(format!("lost connection: {e}"))),
                Err(_) => return Err(SessionError::temp("timeout waiting for a reply")),
            };
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    async fn reply(&mut self) -> Result<Reply, SessionError> {
        let mut lines = Vec::new();
        loop {
            let l = self.line().await?;
            let b = l.as_bytes();
            let code = l.get(..3).and_then(|c| c.parse::<u16>().ok());
            let (Some(code), true) = (code, b.len() == 3 || matches!(b.get(3), Some(b' ' | b'-')))
            else {
                return Err(SessionError::temp(format!(
                    "malformed reply {:?}",
                    l.chars().take(80).collect::<String>()
                )));
            };
            if !(200..600).contains(&code) {
                return Err(SessionError::temp(format!(
                    "reply code {code} out of range"
                )));
            }
            lines.push(l.get(4..).unwrap_or("").to_string());
            if lines.len() > MAX_REPLY_LINES {
                return Err(SessionError::temp("reply with too many lines"));
            }
            if b.get(3) != Some(&b'-') {
                return Ok(Reply { code, lines });
            }
        }
    }

    async fn cmd(&mut self, line: &str) -> Result<Reply, SessionError> {
        self.send(format!("{line}\r\n").as_bytes()).await?;
        self.reply().await
    }
}

fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        out.push(T[(n >> 18) as usize & 63] as char);
        out.push(T[(n >> 12) as usize & 63] as char);
        out.push(if c.len() > 1 {
            T[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if c.len() > 2 {
            T[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}

/// The end of the data: the body always ends in CRLF before it.
const FINAL_DOT: &[u8] = b".\r\n";

/// The body dot-stuffed, ending in `CRLF.CRLF`.
pub fn dot_stuffed(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 64);
    let mut at_start = true;
    for &b in body {
        if at_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_start = b == b'\n';
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(FINAL_DOT);
    out
}

/// Connections kept open after a transaction, for the next message to the
/// same server (Postfix's connection cache): at most `POOL_PER_SERVER` per
/// server and settings, each for at most `POOL_IDLE`.
#[derive(Default)]
pub struct Pool {
    idle: std::sync::Mutex<std::collections::HashMap<PoolKey, Vec<Idle>>>,
}

type PoolKey = (ServerAddr, TlsLevel, Option<String>, bool);

struct Idle {
    wire: Wire,
    ehlo: Reply,
    since: std::time::Instant,
}

const POOL_IDLE: Duration = Duration::from_secs(2);
const POOL_PER_SERVER: usize = 20;

impl Pool {
    fn key(addr: ServerAddr, opts: &ClientOptions) -> PoolKey {
        (
            addr,
            opts.tls,
            opts.sasl.as_ref().map(|(u, _)| u.clone()),
            opts.lmtp,
        )
    }

    fn take(&self, key: &PoolKey) -> Option<Idle> {
        let mut m = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = m.get_mut(key)?;
        while let Some(i) = list.pop() {
            if i.since.elapsed() < POOL_IDLE {
                return Some(i);
            }
        }
        None
    }

    fn put(&self, key: PoolKey, idle: Idle) {
        let mut m = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = m.entry(key).or_default();
        if list.len() < POOL_PER_SERVER {
            list.push(idle);
        }
    }

    /// Closes connections idle for too long.
    pub fn expire(&self) {
        let mut m = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        for list in m.values_mut() {
            list.retain(|i| i.since.elapsed() < POOL_IDLE);
        }
        m.retain(|_, l| !l.is_empty());
    }
}

/// Where a server listens: a TCP address (SMTP, LMTP) or a Unix socket
/// (LMTP, e.g. Dovecot's default listener).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ServerAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl From<SocketAddr> for ServerAddr {
    fn from(a: SocketAddr) -> Self {
        ServerAddr::Tcp(a)
    }
}

impl std::fmt::Display for ServerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServerAddr::Tcp(a) => write!(f, "{a}"),
            ServerAddr::Unix(p) => write!(f, "{}", p.display()),
        }
    }
}

/// A new connection to `addr` (called `host`), within the connect timeout.
async fn connect(
    addr: &ServerAddr,
    host: &str,
    opts: &ClientOptions,
) -> Result<Box<dyn IoStream>, SessionError> {
    let connected = tokio::time::timeout(opts.connect_timeout, async {
        Ok::<Box<dyn IoStream>, std::io::Error>(match addr {
            ServerAddr::Tcp(a) => {
                let s = TcpStream::connect(a).await?;
                let _ = s.set_nodelay(true);
                Box::new(s)
            }
            ServerAddr::Unix(p) => Box::new(UnixStream::connect(p).await?),
        })
    })
    .await;
    match connected {
        Ok(Ok(io)) => Ok(io),
        Ok(Err(e)) => Err(SessionError::temp(format!(
            "connect to {host}[{addr}]: {e}"
        ))),
        Err(_) => Err(SessionError::temp(format!(
            "connect to {host}[{addr}]: timed out"
        ))),
    }
}

/// One transaction with the server at `addr` (called `host`), over a kept
/// connection when there is one.
pub async fn deliver(
    addr: impl Into<ServerAddr>,
    host: &str,
    opts: &ClientOptions,
    env: &Envelope<'_>,
    pool: &Pool,
    lease: &(dyn Fn() -> bool + Sync),
) -> Result<Vec<RcptOutcome>, SessionError> {
    let addr = addr.into();
    let key = Pool::key(addr.clone(), opts);
    if let Some(mut idle) = pool.take(&key) {
        match transaction(&mut idle.wire, host, opts, env, &idle.ehlo, lease).await {
            Ok(out) => {
                idle.since = std::time::Instant::now();
                pool.put(key, idle);
                return Ok(out);
            }
            // The server closed the kept connection before MAIL was
            // answered: nothing was taken, a new connection is safe.
            Err(e) if e.stale => {}
            Err(e) => return Err(e),
        }
    }
    let mut w = Wire {
        io: connect(&addr, host, opts).await?,
        buf: Vec::new(),
        timeout: opts.command_timeout,
    };
    let r = match setup(&mut w, host, opts).await {
        Ok(ehlo) => transaction(&mut w, host, opts, env, &ehlo, lease)
            .await
            .map(|out| (out, ehlo)),
        Err(e) => Err(e),
    };
    match r {
        Ok((out, ehlo)) => {
            pool.put(
                key,
                Idle {
                    wire: w,
                    ehlo,
                    since: std::time::Instant::now(),
                },
            );
            Ok(out)
        }
        Err(e) => {
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                let _ = w.send(b"QUIT\r\n").await;
                let _ = w.io.shutdown().await;
            })
            .await;
            Err(e)
        }
    }
}

async fn hello(w: &mut Wire, opts: &ClientOptions) -> Result<Reply, SessionError> {
    let verb = if opts.lmtp { "LHLO" } else { "EHLO" };
    let r = w.cmd(&format!("{verb} {}", opts.helo_name)).await?;
    if r.positive() {
        return Ok(r);
    }
    if !opts.lmtp && r.permanent() {
        // An old server: plain SMTP.
        let h = w.cmd(&format!("HELO {}", opts.helo_name)).await?;
        if h.positive() {
            return Ok(Reply {
                code: h.code,
                lines: vec![],
            });
        }
    }
    Err(SessionError {
        reason: format!("{verb} refused: {}", r.text()),
        try_next: true,
        permanent: r.permanent(),
        retry_plain: false,
        stale: false,
    })
}

/// Greeting, EHLO, STARTTLS and AUTH: the EHLO reply the transaction uses.
async fn setup(w: &mut Wire, host: &str, opts: &ClientOptions) -> Result<Reply, SessionError> {
    let greeting = w.reply().await?;
    if !greeting.positive() {
        return Err(SessionError {
            reason: format!("host {host} refused to talk to me: {}", greeting.text()),
            try_next: true,
            permanent: greeting.permanent(),
            retry_plain: false,
            stale: false,
        });
    }
    let mut ehlo = hello(w, opts).await?;
    let mut tls_active = false;
    if opts.tls != TlsLevel::None {
        if ehlo.has("STARTTLS") {
            let r = w.cmd("STARTTLS").await?;
            if r.code == 220 {
                // Nothing the server sent before the handshake is kept.
                w.buf.clear();
                let plain = std::mem::replace(
                    &mut w.io,
                    Box::new(tokio::io::join(tokio::io::empty(), tokio::io::sink())),
                );
                let cfg = if opts.tls == TlsLevel::Verify {
                    opts.tls_verify.clone()
                } else {
                    opts.tls_any.clone()
                };
                let name = rustls::pki_types::ServerName::try_from(host.to_string())
                    .map_err(|e| SessionError::temp(format!("TLS server name {host}: {e}")))?;
                let connector = tokio_rustls::TlsConnector::from(cfg);
                match tokio::time::timeout(opts.command_timeout, connector.connect(name, plain))
                    .await
                {
                    Ok(Ok(s)) => {
                        w.io = Box::new(s);
                        tls_active = true;
                    }
                    Ok(Err(e)) => {
                        return Err(SessionError {
                            reason: format!("TLS handshake with {host} failed: {e}"),
                            try_next: true,
                            permanent: false,
                            retry_plain: opts.tls == TlsLevel::May,
                            stale: false,
                        });
                    }
                    Err(_) => {
                        return Err(SessionError {
                            reason: format!("TLS handshake with {host} timed out"),
                            try_next: true,
                            permanent: false,
                            retry_plain: opts.tls == TlsLevel::May,
                            stale: false,
                        });
                    }
                }
                ehlo = hello(w, opts).await?;
            } else if opts.tls >= TlsLevel::Encrypt {
                return Err(SessionError::temp(format!(
                    "TLS is required, but {host} refused STARTTLS: {}",
                    r.text()
                )));
            }
        } else if opts.tls >= TlsLevel::Encrypt {
            return Err(SessionError::temp(format!(
                "TLS is required, but was not offered by host {host}"
            )));
        }
    }
    if let Some((user, pass)) = &opts.sasl {
        if !tls_active {
            return Err(SessionError::temp(format!(
                "SASL credentials for {host}, but no TLS: not sent in the clear"
            )));
        }
        let mechs = ehlo
            .keyword_args("AUTH")
            .unwrap_or_default()
            .to_ascii_uppercase();
        let ok = if mechs.split_whitespace().any(|m| m == "PLAIN") {
            let token = base64(format!("\0{user}\0{pass}").as_bytes());
            w.cmd(&format!("AUTH PLAIN {token}")).await?
        } else if mechs.split_whitespace().any(|m| m == "LOGIN") {
            let r = w.cmd("AUTH LOGIN").await?;
            if r.code != 334 {
                r
            } else {
                let r = w.cmd(&base64(user.as_bytes())).await?;
                if r.code != 334 {
                    r
                } else {
                    w.cmd(&base64(pass.as_bytes())).await?
                }
            }
        } else {
            return Err(SessionError::temp(format!(
                "{host} offers no SASL mechanism we use (PLAIN, LOGIN): {mechs:?}"
            )));
        };
        if ok.code != 235 {
            return Err(SessionError {
                reason: format!("SASL authentication failed at {host}: {}", ok.text()),
                try_next: false,
                permanent: false,
                retry_plain: false,
                stale: false,
            });
        }
    }
    Ok(ehlo)
}

/// MAIL, RCPT, DATA on a set-up connection.
async fn transaction(
    w: &mut Wire,
    host: &str,
    opts: &ClientOptions,
    env: &Envelope<'_>,
    ehlo: &Reply,
    lease: &(dyn Fn() -> bool + Sync),
) -> Result<Vec<RcptOutcome>, SessionError> {
    if env.smtputf8 && !ehlo.has("SMTPUTF8") {
        return Err(SessionError {
            reason: format!("553 5.6.7 SMTPUTF8 is required, but was not offered by host {host}"),
            try_next: false,
            permanent: true,
            retry_plain: false,
            stale: false,
        });
    }
    if env.eight_bit && !ehlo.has("8BITMIME") && !opts.lmtp {
        return Err(SessionError {
            reason: format!(
                "554 5.6.3 8-bit message, and host {host} does not announce 8BITMIME (no conversion to 7 bit)"
            ),
            try_next: false,
            permanent: true,
            retry_plain: false,
            stale: false,
        });
    }
    let mut mail = format!(
        "MAIL FROM:<{}>",
        env.sender.map(|s| s.to_string()).unwrap_or_default()
    );
    if env.eight_bit && ehlo.has("8BITMIME") {
        mail.push_str(" BODY=8BITMIME");
    }
    if env.smtputf8 {
        mail.push_str(" SMTPUTF8");
    }
    if ehlo.has("SIZE") {
        mail.push_str(&format!(" SIZE={}", env.body.len()));
    }
    // With PIPELINING, MAIL and every RCPT go in one write.
    let pipelining = ehlo.has("PIPELINING") || opts.lmtp;
    let rcpt_lines: Vec<String> = env
        .recipients
        .iter()
        .map(|r| format!("RCPT TO:<{r}>\r\n"))
        .collect();
    let stale = |e: SessionError| SessionError { stale: true, ..e };
    let (mail_reply, rcpt_replies) = if pipelining {
        let mut batch = format!("{mail}\r\n");
        for l in &rcpt_lines {
            batch.push_str(l);
        }
        w.send(batch.as_bytes()).await.map_err(stale)?;
        let m = w.reply().await.map_err(stale)?;
        let mut rs = Vec::new();
        for _ in &rcpt_lines {
            rs.push(w.reply().await?);
        }
        (m, rs)
    } else {
        let m = w.cmd(&mail).await.map_err(stale)?;
        let mut rs = Vec::new();
        if m.positive() {
            for l in &rcpt_lines {
                w.send(l.as_bytes()).await?;
                rs.push(w.reply().await?);
            }
        }
        (m, rs)
    };
    if !mail_reply.positive() {
        return Err(SessionError {
            reason: format!(
                "host {host} said: {} (in reply to MAIL FROM)",
                mail_reply.text()
            ),
            try_next: false,
            permanent: mail_reply.permanent(),
            retry_plain: false,
            stale: false,
        });
    }
    let mut out: Vec<Option<RcptOutcome>> = rcpt_replies
        .iter()
        .map(|r| {
            if r.positive() {
                None
            } else if r.permanent() {
                Some(RcptOutcome::Permanent(format!(
                    "host {host} said: {} (in reply to RCPT TO)",
                    r.text()
                )))
            } else {
                Some(RcptOutcome::Temporary(format!(
                    "host {host} said: {} (in reply to RCPT TO)",
                    r.text()
                )))
            }
        })
        .collect();
    let accepted: Vec<usize> = (0..out.len()).filter(|i| out[*i].is_none()).collect();
    if accepted.is_empty() {
        let _ = w.cmd("RSET").await;
        return Ok(out.into_iter().flatten().collect());
    }
    let r = w.cmd("DATA").await?;
    if r.code != 354 {
        let reason = format!("host {host} said: {} (in reply to DATA)", r.text());
        for i in &accepted {
            out[*i] = Some(if r.permanent() {
                RcptOutcome::Permanent(reason.clone())
            } else {
                RcptOutcome::Temporary(reason.clone())
            });
        }
        return Ok(out.into_iter().flatten().collect());
    }
    let data = dot_stuffed(env.body);
    let (text, dot) = data.split_at(data.len() - FINAL_DOT.len());
    w.send(text).await.map_err(|e| SessionError {
        try_next: false,
        ..e
    })?;
    // The body may have taken long to send: if the lease moved meanwhile
    // (this node was cut off and the message handed over), the new owner
    // delivers it. Closing without the final dot makes the server discard
    // what it got, so the recipients are not delivered twice.
    if !lease() {
        let _ = tokio::time::timeout(Duration::from_secs(2), w.io.shutdown()).await;
        return Err(SessionError {
            reason: format!("delivery lease lost before end of data to {host}: not sent"),
            try_next: false,
            ..SessionError::temp("")
        });
    }
    w.send(dot).await.map_err(|e| SessionError {
        try_next: false,
        ..e
    })?;
    // After the final dot the server may have taken the message even if
    // we never see its reply: such recipients are deferred (tried again),
    // never lost; a duplicate is possible, as with every MTA.
    let replies = if opts.lmtp { accepted.len() } else { 1 };
    for k in 0..replies {
        let r = w.reply().await.map_err(|e| SessionError {
            reason: format!("{} after end of data: outcome unknown", e.reason),
            try_next: false,
            ..e
        })?;
        let text = r.text();
        let targets: Vec<usize> = if opts.lmtp {
            vec![accepted[k]]
        } else {
            accepted.clone()
        };
        for i in targets {
            out[i] = Some(if r.positive() {
                RcptOutcome::Sent(text.clone())
            } else if r.permanent() {
                RcptOutcome::Permanent(format!(
                    "host {host} said: {text} (in reply to end of DATA command)"
                ))
            } else {
                RcptOutcome::Temporary(format!(
                    "host {host} said: {text} (in reply to end of DATA command)"
                ))
            });
        }
    }
    Ok(out.into_iter().flatten().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_stuffing_and_base64() {
        assert_eq!(
            dot_stuffed(b".a\r\nb\r\n..\r\n"),
            b"..a\r\nb\r\n...\r\n.\r\n"
        );
        assert_eq!(dot_stuffed(b"x"), b"x\r\n.\r\n");
        assert_eq!(base64(b"\0user\0pass"), "AHVzZXIAcGFzcw==");
        assert_eq!(base64(b"ab"), "YWI=");
    }

    /// A scripted SMTP server: answers every command, takes DATA, and
    /// reports whether the final dot arrived before the connection closed.
    async fn one_transaction_server(listener: tokio::net::TcpListener) -> bool {
        let (mut s, _) = listener.accept().await.unwrap();
        s.write_all(b"220 sink ESMTP\r\n").await.unwrap();
        let mut got = Vec::new();
        let mut in_data = false;
        let mut chunk = [0u8; 4096];
        loop {
            let n = s.read(&mut chunk).await.unwrap_or(0);
            if n == 0 {
                return false;
            }
            got.extend_from_slice(&chunk[..n]);
            while let Some(pos) = got.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = got.drain(..pos + 2).collect();
                let reply: &[u8] = if in_data {
                    if line != b".\r\n" {
                        continue;
                    }
                    in_data = false;
                    b"250 2.0.0 Ok: queued\r\n"
                } else if line.starts_with(b"EHLO") {
                    b"250-sink\r\n250 PIPELINING\r\n"
                } else if line.starts_with(b"DATA") {
                    in_data = true;
                    b"354 go ahead\r\n"
                } else if line.starts_with(b"QUIT") {
                    let _ = s.write_all(b"221 bye\r\n").await;
                    return true;
                } else {
                    b"250 2.0.0 Ok\r\n"
                };
                if s.write_all(reply).await.is_err() {
                    return false;
                }
                if reply.starts_with(b"250 2.0.0 Ok: queued") {
                    return true;
                }
            }
        }
    }

    async fn deliver_with_lease(holds: bool) -> (Result<Vec<RcptOutcome>, SessionError>, bool) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(one_transaction_server(listener));
        let (tls_any, tls_verify) = crate::outbound::tls_client::client_configs("").unwrap();
        let opts = ClientOptions {
            helo_name: "mx1.example".into(),
            lmtp: false,
            connect_timeout: Duration::from_secs(30),
            command_timeout: Duration::from_secs(30),
            tls: TlsLevel::None,
            tls_any,
            tls_verify,
            sasl: None,
        };
        let rcpt = MailAddress::parse("bob@example.net").unwrap();
        let env = Envelope {
            sender: None,
            recipients: std::slice::from_ref(&rcpt),
            body: b"Subject: t\r\n\r\nhello\r\n",
            eight_bit: false,
            smtputf8: false,
        };
        let lease = move || holds;
        let r = deliver(addr, "sink", &opts, &env, &Pool::default(), &lease).await;
        (r, server.await.unwrap())
    }

    #[tokio::test]
    async fn a_lost_lease_stops_before_the_final_dot() {
        let (r, dot_seen) = deliver_with_lease(true).await;
        assert!(matches!(r.as_deref(), Ok([RcptOutcome::Sent(_)])), "{r:?}");
        assert!(dot_seen, "with the lease held the message is sent");
        let (r, dot_seen) = deliver_with_lease(false).await;
        assert!(
            !dot_seen,
            "the server got the final dot after the lease moved"
        );
        let e = r.expect_err("a lost lease is no delivery");
        assert!(e.reason.contains("lease lost") && !e.permanent, "{e:?}");
    }
}
