//! The SMTP and LMTP client: one transaction to one server, with STARTTLS
//! (per policy), SASL PLAIN/LOGIN (only inside TLS), PIPELINING when
//! offered, and one outcome per recipient. An outcome is a value; the
//! caller commits it and logs it. The wire and the connections are in
//! wire.rs and connection.rs; this file is the dialogue (about 470 lines,
//! with its tests a little over 500: one concern, kept whole).

use std::sync::Arc;
use std::time::Duration;

use hamail_types::{MailAddress, TlsLevel};
use tokio::io::AsyncWriteExt;

use super::Credentials;
use super::connection::{Idle, connect};
use super::wire::{FINAL_DOT, Reply, Wire, base64, dot_stuffed};

pub use super::connection::{Pool, ServerAddr};

/// TLS is required: without it the mail is deferred, never sent in the
/// clear.
fn tls_required(level: TlsLevel) -> bool {
    matches!(
        level,
        TlsLevel::Encrypt | TlsLevel::Verify | TlsLevel::Secure
    )
}

/// The certificate must verify for the host name (Postfix's `secure` is
/// `verify` here).
fn tls_verified(level: TlsLevel) -> bool {
    matches!(level, TlsLevel::Verify | TlsLevel::Secure)
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
    pub sasl: Option<Credentials>,
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
    pub(super) fn temp(reason: impl Into<String>) -> Self {
        SessionError {
            reason: reason.into(),
            try_next: true,
            permanent: false,
            retry_plain: false,
            stale: false,
        }
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
                let cfg = if tls_verified(opts.tls) {
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
            } else if tls_required(opts.tls) {
                return Err(SessionError::temp(format!(
                    "TLS is required, but {host} refused STARTTLS: {}",
                    r.text()
                )));
            }
        } else if tls_required(opts.tls) {
            return Err(SessionError::temp(format!(
                "TLS is required, but was not offered by host {host}"
            )));
        }
    }
    if let Some(Credentials {
        user,
        password: pass,
    }) = &opts.sasl
    {
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
    use tokio::io::AsyncReadExt;

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
