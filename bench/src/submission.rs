//! bench/submission's load generator: concurrent SMTP submission sessions
//! (TLS by STARTTLS or from the first byte, AUTH PLAIN once, then N messages
//! by MAIL/RCPT/DATA, QUIT), every reply code checked. Prints one JSON line:
//! messages acknowledged with 250 and logins per second, and every failure
//! counted by what failed. `bench/submission.sh` runs it against Postfix +
//! Dovecot SASL and against hamail.
//!
//! The TLS client accepts any server certificate (the servers under test
//! use a self-signed one) but checks the handshake signatures; session
//! resumption is off, so each login pays a full handshake on both servers.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine as _;
use clap::{ArgGroup, Parser};
use rustls::client::Resumption;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// At most this many distinct failure texts are kept (the counts are all kept).
const MAX_FAILURE_KINDS: usize = 20;
/// A reply line longer than this is a protocol failure.
const MAX_LINE: usize = 4096;
/// A reply of more lines than this is a protocol failure.
const MAX_LINES: usize = 100;

#[derive(Parser, Debug)]
#[command(
    name = "submission-bench",
    about = "SMTP submission load: TLS + AUTH PLAIN + messages"
)]
#[command(group(ArgGroup::new("tls").required(true).args(["starttls", "implicit_tls"])))]
struct Args {
    /// Server address, HOST:PORT.
    #[arg(long)]
    addr: SocketAddr,
    /// Sessions open at once.
    #[arg(long, default_value_t = 50)]
    sessions: usize,
    /// Messages sent in each session, after its one AUTH.
    #[arg(long, default_value_t = 20)]
    messages_per_session: u64,
    /// Size of each message in bytes, headers included.
    #[arg(long, default_value_t = 4096)]
    size: usize,
    /// The user to authenticate as (also the envelope sender unless --from).
    #[arg(long)]
    user: String,
    /// File holding the password (one line; a trailing newline is dropped).
    #[arg(long)]
    password_file: PathBuf,
    /// Envelope and header sender (default: --user).
    #[arg(long)]
    from: Option<String>,
    /// Envelope and header recipient.
    #[arg(long)]
    rcpt: String,
    /// Plain connection, EHLO, STARTTLS, EHLO again (port 587).
    #[arg(long)]
    starttls: bool,
    /// TLS from the first byte (port 465).
    #[arg(long)]
    implicit_tls: bool,
    /// Sessions to run in all (default: --sessions when --duration is not given).
    #[arg(long)]
    total: Option<u64>,
    /// Start no new session after this many seconds.
    #[arg(long)]
    duration: Option<f64>,
    /// EHLO name.
    #[arg(long, default_value = "bench-client.invalid")]
    helo: String,
    /// Seconds to wait for each reply (and for connect and handshake).
    #[arg(long, default_value_t = 30)]
    timeout: u64,
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One SMTP reply: its code and last line's text.
struct Reply {
    code: u16,
    text: String,
}

/// Why a session stopped early.
struct Abort {
    stage: &'static str,
    reason: String,
}

/// Counters shared by the workers.
#[derive(Default)]
struct Tally {
    sessions_started: AtomicU64,
    sessions_ok: AtomicU64,
    logins: AtomicU64,
    sent: AtomicU64,
    failed: AtomicU64,
    session_errors: AtomicU64,
    failures: Mutex<BTreeMap<String, u64>>,
}

impl Tally {
    fn note(&self, what: String) {
        let mut m = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&what) {
            *n += 1;
        } else if m.len() < MAX_FAILURE_KINDS {
            m.insert(what, 1);
        } else {
            *m.entry("(other failures)".into()).or_insert(0) += 1;
        }
    }
}

/// What every session needs.
struct Plan {
    addr: SocketAddr,
    implicit_tls: bool,
    tls: TlsConnector,
    helo: String,
    auth_plain: String,
    from: String,
    rcpt: String,
    messages: u64,
    size: usize,
    timeout: Duration,
    total: Option<u64>,
    deadline: Option<Instant>,
}

fn tls_connector() -> anyhow::Result<TlsConnector> {
    // Every session pays a full handshake, as a new client would.
    let mut config = hamail_smtp::outbound::tls_client::any_certificate_config()?;
    config.resumption = Resumption::disabled();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// A message of `size` bytes (at least its headers), lines of at most 78
/// characters, none starting with a dot.
fn message(p: &Plan, id: &str) -> String {
    let mut m = format!(
        "From: <{from}>\r\nTo: <{rcpt}>\r\nSubject: submission bench {id}\r\n\
         Date: Thu, 01 Jan 2026 00:00:00 +0000\r\nMessage-ID: <{id}@bench-client.invalid>\r\n\r\n",
        from = p.from,
        rcpt = p.rcpt,
    );
    let line = "x".repeat(76);
    while m.len() + 78 <= p.size {
        m.push_str(&line);
        m.push_str("\r\n");
    }
    let rest = p.size.saturating_sub(m.len());
    if rest > 2 {
        m.push_str(&"y".repeat(rest - 2));
        m.push_str("\r\n");
    }
    m
}

struct Conn<S> {
    io: BufReader<S>,
    timeout: Duration,
}

impl<S: Io> Conn<S> {
    async fn send(&mut self, stage: &'static str, data: &[u8]) -> Result<(), Abort> {
        let w = self.io.get_mut();
        let r = tokio::time::timeout(self.timeout, async {
            w.write_all(data).await?;
            w.flush().await
        })
        .await;
        match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(abort(stage, format!("write: {e}"))),
            Err(_) => Err(abort(stage, "write timed out".into())),
        }
    }

    /// Reads one reply, multi-line ones whole; a malformed reply is an abort.
    async fn reply(&mut self, stage: &'static str) -> Result<Reply, Abort> {
        let mut lines = 0;
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = match tokio::time::timeout(self.timeout, read_line(&mut self.io, &mut line))
                .await
            {
                Ok(Ok(n)) => n,
                Ok(Err(e)) => return Err(abort(stage, format!("read: {e}"))),
                Err(_) => return Err(abort(stage, "no reply within the timeout".into())),
            };
            if n == 0 {
                return Err(abort(stage, "connection closed".into()));
            }
            lines += 1;
            let text = String::from_utf8_lossy(&line);
            let text = text.trim_end_matches(['\r', '\n']);
            let code = text
                .get(..3)
                .filter(|c| c.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|c| c.parse::<u16>().ok());
            let Some(code) = code else {
                return Err(abort(stage, format!("malformed reply line {text:?}")));
            };
            match text.as_bytes().get(3) {
                Some(b'-') if lines < MAX_LINES => continue,
                Some(b'-') => return Err(abort(stage, "reply of too many lines".into())),
                None | Some(b' ') => {
                    return Ok(Reply {
                        code,
                        text: text.to_string(),
                    });
                }
                Some(_) => return Err(abort(stage, format!("malformed reply line {text:?}"))),
            }
        }
    }

    /// Sends `cmd` and reads its reply; a code other than `want` aborts.
    async fn command(&mut self, stage: &'static str, cmd: &str, want: u16) -> Result<(), Abort> {
        self.send(stage, cmd.as_bytes()).await?;
        self.expect(stage, want).await
    }

    async fn expect(&mut self, stage: &'static str, want: u16) -> Result<(), Abort> {
        let r = self.reply(stage).await?;
        if r.code == want {
            Ok(())
        } else {
            Err(abort(stage, r.text))
        }
    }
}

/// One line (up to and including '\n'), at most MAX_LINE bytes.
async fn read_line<S: Io>(io: &mut BufReader<S>, out: &mut Vec<u8>) -> std::io::Result<usize> {
    loop {
        let buf = io.fill_buf().await?;
        if buf.is_empty() {
            return Ok(out.len());
        }
        let (take, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        out.extend_from_slice(&buf[..take]);
        io.consume(take);
        if done {
            return Ok(out.len());
        }
        if out.len() > MAX_LINE {
            return Err(std::io::Error::other("reply line over 4096 bytes"));
        }
    }
}

fn abort(stage: &'static str, reason: String) -> Abort {
    Abort { stage, reason }
}

/// Connects, secures, authenticates: the session ready for MAIL.
async fn open(p: &Plan) -> Result<Conn<Box<dyn Io>>, Abort> {
    let tcp = match tokio::time::timeout(p.timeout, TcpStream::connect(p.addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(abort("connect", e.to_string())),
        Err(_) => return Err(abort("connect", "timed out".into())),
    };
    let _ = tcp.set_nodelay(true);
    let ehlo = format!("EHLO {}\r\n", p.helo);
    let tcp = if p.implicit_tls {
        tcp
    } else {
        let mut c = Conn {
            io: BufReader::new(tcp),
            timeout: p.timeout,
        };
        c.expect("greeting", 220).await?;
        c.command("ehlo", &ehlo, 250).await?;
        c.command("starttls", "STARTTLS\r\n", 220).await?;
        if !c.io.buffer().is_empty() {
            return Err(abort("starttls", "data after the 220 before TLS".into()));
        }
        c.io.into_inner()
    };
    let name = ServerName::IpAddress(p.addr.ip().into());
    let tls = match tokio::time::timeout(p.timeout, p.tls.connect(name, tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(abort("tls", e.to_string())),
        Err(_) => return Err(abort("tls", "handshake timed out".into())),
    };
    let mut c = Conn {
        io: BufReader::new(Box::new(tls) as Box<dyn Io>),
        timeout: p.timeout,
    };
    if p.implicit_tls {
        c.expect("greeting", 220).await?;
    }
    c.command("ehlo-tls", &ehlo, 250).await?;
    c.command("auth", &p.auth_plain, 235).await?;
    Ok(c)
}

/// One session; `handled` counts its messages answered (250 or refused),
/// so that the caller counts the rest as failed when it aborts.
async fn session(p: &Plan, t: &Tally, n: u64, handled: &mut u64) -> Result<(), Abort> {
    let mut c = open(p).await?;
    t.logins.fetch_add(1, Ordering::Relaxed);
    let mail = format!("MAIL FROM:<{}>\r\n", p.from);
    let rcpt = format!("RCPT TO:<{}>\r\n", p.rcpt);
    for i in 0..p.messages {
        let id = format!("{}.{n}.{i}", std::process::id());
        let steps: [(&'static str, &str, u16); 3] = [
            ("mail", &mail, 250),
            ("rcpt", &rcpt, 250),
            ("data", "DATA\r\n", 354),
        ];
        let mut refused = None;
        for (stage, cmd, want) in steps {
            c.send(stage, cmd.as_bytes()).await?;
            let r = c.reply(stage).await?;
            let ok = if want == 250 {
                r.code / 100 == 2
            } else {
                r.code == want
            };
            if !ok {
                refused = Some((stage, r));
                break;
            }
        }
        let refused = match refused {
            Some(r) => r,
            None => {
                let mut body = message(p, &id);
                body.push_str(".\r\n");
                c.send("message", body.as_bytes()).await?;
                let r = c.reply("message").await?;
                if r.code == 250 {
                    t.sent.fetch_add(1, Ordering::Relaxed);
                    *handled += 1;
                    continue;
                }
                ("message", r)
            }
        };
        let (stage, r) = refused;
        t.failed.fetch_add(1, Ordering::Relaxed);
        *handled += 1;
        t.note(format!("{stage}: {}", r.text));
        if r.code == 421 {
            return Err(abort(stage, "421: the server closed the session".into()));
        }
        c.command("rset", "RSET\r\n", 250).await?;
    }
    c.command("quit", "QUIT\r\n", 221).await
}

async fn worker(p: Arc<Plan>, t: Arc<Tally>) {
    loop {
        if p.deadline.is_some_and(|d| Instant::now() >= d) {
            return;
        }
        let n = t.sessions_started.fetch_add(1, Ordering::Relaxed);
        if p.total.is_some_and(|total| n >= total) {
            return;
        }
        let mut handled = 0;
        match session(&p, &t, n, &mut handled).await {
            Ok(()) => {
                t.sessions_ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(a) => {
                // Messages the session never got to are failures too.
                t.failed.fetch_add(p.messages - handled, Ordering::Relaxed);
                t.session_errors.fetch_add(1, Ordering::Relaxed);
                t.note(format!("{}: {}", a.stage, a.reason));
            }
        }
    }
}

fn plan(a: &Args) -> anyhow::Result<Plan> {
    if a.sessions == 0 || a.sessions > 10_000 {
        bail!("--sessions must be 1 to 10000, not {}", a.sessions);
    }
    if a.messages_per_session > 100_000 {
        bail!("--messages-per-session must be at most 100000");
    }
    if !(256..=10 << 20).contains(&a.size) {
        bail!("--size must be 256 to 10485760 bytes, not {}", a.size);
    }
    if let Some(d) = a.duration
        && !(d > 0.0 && d <= 3600.0)
    {
        bail!("--duration must be above 0 and at most 3600 seconds");
    }
    if a.total.is_some_and(|t| t == 0 || t > 10_000_000) {
        bail!("--total must be 1 to 10000000 sessions");
    }
    if !(1..=600).contains(&a.timeout) {
        bail!("--timeout must be 1 to 600 seconds");
    }
    let from = a.from.clone().unwrap_or_else(|| a.user.clone());
    for (what, v) in [
        ("--user", &a.user),
        ("--from", &from),
        ("--rcpt", &a.rcpt),
        ("--helo", &a.helo),
    ] {
        if v.is_empty()
            || v.bytes()
                .any(|b| b.is_ascii_control() || b == b' ' || b == b'<' || b == b'>')
        {
            bail!("{what} {v:?} is empty or holds spaces, angle brackets or control characters");
        }
    }
    let raw = std::fs::read_to_string(&a.password_file)
        .with_context(|| format!("cannot read --password-file {}", a.password_file.display()))?;
    let password = raw.strip_suffix('\n').unwrap_or(&raw);
    let password = password.strip_suffix('\r').unwrap_or(password);
    if password.is_empty() || password.contains(['\0', '\n']) {
        bail!(
            "--password-file {}: the password is empty or holds NUL or more than one line",
            a.password_file.display()
        );
    }
    let plain = format!("\0{}\0{password}", a.user);
    let auth_plain = format!(
        "AUTH PLAIN {}\r\n",
        base64::engine::general_purpose::STANDARD.encode(plain)
    );
    let total = match (a.total, a.duration) {
        (None, None) => Some(a.sessions as u64),
        (t, _) => t,
    };
    Ok(Plan {
        addr: a.addr,
        implicit_tls: a.implicit_tls,
        tls: tls_connector()?,
        helo: a.helo.clone(),
        auth_plain,
        from,
        rcpt: a.rcpt.clone(),
        messages: a.messages_per_session,
        size: a.size,
        timeout: Duration::from_secs(a.timeout),
        total,
        deadline: None,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut p = plan(&args)?;
    let start = Instant::now();
    p.deadline = args.duration.map(|d| start + Duration::from_secs_f64(d));
    let p = Arc::new(p);
    let t = Arc::new(Tally::default());
    let workers: Vec<_> = (0..args.sessions)
        .map(|_| tokio::spawn(worker(p.clone(), t.clone())))
        .collect();
    for w in workers {
        w.await.context("a worker task panicked")?;
    }
    let secs = start.elapsed().as_secs_f64();
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let started = load(&t.sessions_started).min(p.total.unwrap_or(u64::MAX));
    let (sent, failed, logins) = (load(&t.sent), load(&t.failed), load(&t.logins));
    let session_errors = load(&t.session_errors);
    let failures = t.failures.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let out = serde_json::json!({
        "addr": p.addr.to_string(),
        "tls": if p.implicit_tls { "implicit" } else { "starttls" },
        "concurrency": args.sessions,
        "messages_per_session": p.messages,
        "size": p.size,
        "sessions": started,
        "sessions_ok": load(&t.sessions_ok),
        "session_errors": session_errors,
        "logins": logins,
        "sent": sent,
        "failed": failed,
        "seconds": (secs * 1000.0).round() / 1000.0,
        "msgs_per_s": (sent as f64 / secs * 10.0).round() / 10.0,
        "logins_per_s": (logins as f64 / secs * 10.0).round() / 10.0,
        "failures": failures,
    });
    println!("{out}");
    if failed > 0 || session_errors > 0 {
        std::process::exit(1);
    }
    Ok(())
}
