//! The socket side of a session: a read buffer, a reply buffer written when
//! the input runs dry (one write for a pipelining client), and deadlines.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// A byte stream a session runs over.
pub trait IoStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> IoStream for T {}

/// Why a session ended early (each is logged; none is an error of ours).
#[derive(Debug)]
pub(super) enum End {
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

pub(super) type Step<T> = Result<T, End>;

/// A command line as read.
pub(super) enum Line {
    /// The line, CRLF (or LF) included.
    Ok(Vec<u8>),
    /// Longer than the limit; the rest up to the LF was discarded.
    /// `head`: its first bytes (at most 16), to tell what it was.
    TooLong { head: Vec<u8> },
}

/// The socket side: a read buffer, a reply buffer, and deadlines.
pub(super) struct Conn {
    pub(super) io: Box<dyn IoStream>,
    rbuf: Vec<u8>,
    rpos: usize,
    out: Vec<u8>,
    pub(super) cancel: CancellationToken,
    /// The session's smtpd_timeout: how long a read of a command or a write
    /// of replies may take.
    pub(super) timeout: Duration,
}

const READ_CHUNK: usize = 64 * 1024;

impl Conn {
    pub(super) fn new(io: Box<dyn IoStream>, cancel: CancellationToken, timeout: Duration) -> Self {
        Conn {
            io,
            rbuf: Vec::with_capacity(READ_CHUNK),
            rpos: 0,
            out: Vec::with_capacity(1024),
            cancel,
            timeout,
        }
    }

    pub(super) fn buffered(&self) -> &[u8] {
        &self.rbuf[self.rpos..]
    }

    pub(super) fn consume(&mut self, n: usize) {
        self.rpos += n;
        if self.rpos == self.rbuf.len() {
            self.rbuf.clear();
            self.rpos = 0;
        }
    }

    /// Writes pending replies by the write deadline, or ends the session on
    /// shutdown: a client that pipelines and never reads its replies fills
    /// the socket buffer and must not hold the session (or shutdown) forever.
    pub(super) async fn flush(&mut self) -> Step<()> {
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
    pub(super) async fn flush_final(&mut self, limit: Duration) {
        let Conn { io, out, .. } = self;
        let _ = tokio::time::timeout(limit, async {
            let _ = write_out(io, out).await;
            let _ = io.shutdown().await;
        })
        .await;
        self.out.clear();
    }

    /// Writes pending replies, then reads more input (by `deadline`).
    pub(super) async fn fill(&mut self, deadline: Instant) -> Step<()> {
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

    /// One command line of at most `limit` bytes, by the command deadline: a
    /// client that sends a byte now and then cannot hold the session beyond
    /// it (slowloris).
    pub(super) async fn read_line(&mut self, limit: usize) -> Step<Line> {
        let deadline = Instant::now() + self.timeout;
        let mut skipped: Option<Vec<u8>> = None;
        loop {
            let buf = self.buffered();
            if let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                let line = buf[..=pos].to_vec();
                self.consume(pos + 1);
                if let Some(head) = skipped {
                    return Ok(Line::TooLong { head });
                }
                if line.len() > limit {
                    let head = line[..16.min(line.len())].to_vec();
                    return Ok(Line::TooLong { head });
                }
                return Ok(Line::Ok(line));
            }
            if buf.len() > limit {
                let n = buf.len();
                if skipped.is_none() {
                    skipped = Some(buf[..16.min(n)].to_vec());
                }
                self.consume(n);
            }
            self.fill(deadline).await?;
        }
    }

    pub(super) fn reply(&mut self, text: &str) {
        self.out.extend_from_slice(text.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }
}

async fn write_out(io: &mut Box<dyn IoStream>, out: &[u8]) -> std::io::Result<()> {
    io.write_all(out).await?;
    io.flush().await
}
