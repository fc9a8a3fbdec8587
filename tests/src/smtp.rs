//! A small SMTP client for tests: raw lines in, replies (multi-line joined)
//! out, so a test can send exactly the bytes a hostile client would.

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

/// A reply: its code and its full text (all lines).
#[derive(Debug, Clone)]
pub struct Reply {
    pub code: u16,
    pub text: String,
}

impl Reply {
    pub fn is(&self, code: u16) -> bool {
        self.code == code
    }
}

pub struct SmtpClient {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
}

/// Reads stop waiting after this long (a hung server fails the test
/// rather than hanging it; no assertion depends on it).
const IO_TIMEOUT: Duration = Duration::from_secs(120);

impl SmtpClient {
    /// Connects and returns the client and the greeting.
    pub fn connect(addr: &str) -> std::io::Result<(SmtpClient, Reply)> {
        Self::wrap(TcpStream::connect(addr)?)
    }

    /// Connects from a given local address (a client outside mynetworks).
    pub fn connect_from(src: IpAddr, addr: &str) -> std::io::Result<(SmtpClient, Reply)> {
        let addr: SocketAddr = addr.parse().map_err(std::io::Error::other)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()?;
        let stream = rt.block_on(async {
            let sock = tokio::net::TcpSocket::new_v4()?;
            sock.bind(SocketAddr::new(src, 0))?;
            let s = sock.connect(addr).await?;
            s.into_std()
        })?;
        stream.set_nonblocking(false)?;
        Self::wrap(stream)
    }

    /// A session that was greeted with 220 and said EHLO as `helo`; None
    /// while the server is not taking mail (down, or 421 without quorum).
    pub fn greeted(addr: &str, helo: &str) -> Option<SmtpClient> {
        let (mut c, g) = Self::connect(addr).ok()?;
        (g.is(220) && c.cmd(&format!("EHLO {helo}")).ok()?.is(250)).then_some(c)
    }

    fn wrap(stream: TcpStream) -> std::io::Result<(SmtpClient, Reply)> {
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_nodelay(true)?;
        let mut c = SmtpClient {
            writer: stream.try_clone()?,
            reader: BufReader::new(stream),
        };
        let greeting = c.reply()?;
        Ok((c, greeting))
    }

    pub fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.writer.write_all(bytes)
    }

    /// Reads one reply (all its lines).
    pub fn reply(&mut self) -> std::io::Result<Reply> {
        let mut text = String::new();
        loop {
            let mut line = String::new();
            let n = self.reader.read_line(&mut line)?;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("connection closed (after {text:?})"),
                ));
            }
            text.push_str(&line);
            let b = line.as_bytes();
            if b.len() < 4 || b[3] != b'-' {
                let code = line.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
                return Ok(Reply { code, text });
            }
        }
    }

    /// Sends a command line (CRLF added) and reads its reply.
    pub fn cmd(&mut self, line: &str) -> std::io::Result<Reply> {
        self.send(format!("{line}\r\n").as_bytes())?;
        self.reply()
    }

    /// True once the server has closed the connection.
    pub fn closed(&mut self) -> bool {
        let mut line = String::new();
        matches!(self.reader.read_line(&mut line), Ok(0) | Err(_))
    }

    /// EHLO, MAIL, RCPT, DATA with `body` (CRLF lines, no final dot):
    /// the reply to the end of data.
    pub fn send_mail(&mut self, from: &str, to: &[&str], body: &str) -> std::io::Result<Reply> {
        let r = self.cmd(&format!("MAIL FROM:<{from}>"))?;
        if !r.is(250) {
            return Ok(r);
        }
        for t in to {
            let r = self.cmd(&format!("RCPT TO:<{t}>"))?;
            if !r.is(250) {
                return Ok(r);
            }
        }
        let r = self.cmd("DATA")?;
        if !r.is(354) {
            return Ok(r);
        }
        self.send(body.as_bytes())?;
        self.send(b"\r\n.\r\n")?;
        self.reply()
    }
}

/// The queue id in `250 2.0.0 Ok: queued as ID`.
pub fn queued_id(r: &Reply) -> Option<String> {
    r.text
        .split("queued as ")
        .nth(1)
        .map(|s| s.trim().to_string())
}
