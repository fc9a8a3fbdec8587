//! The client's side of the wire: reading multi-line replies (bounded in
//! lines, length and time), sending commands, and the byte-level encodings
//! of a transaction (dot-stuffing, base64 for AUTH).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::client::SessionError;
use crate::IoStream;

/// A server reply.
#[derive(Debug, Clone)]
pub(super) struct Reply {
    pub(super) code: u16,
    pub(super) lines: Vec<String>,
}

impl Reply {
    pub(super) fn text(&self) -> String {
        format!("{} {}", self.code, self.lines.join(" ").trim())
    }
    pub(super) fn positive(&self) -> bool {
        (200..400).contains(&self.code)
    }
    pub(super) fn permanent(&self) -> bool {
        self.code >= 500
    }
    pub(super) fn has(&self, keyword: &str) -> bool {
        self.lines.iter().any(|l| {
            l.split_whitespace()
                .next()
                .is_some_and(|k| k.eq_ignore_ascii_case(keyword))
        })
    }
    pub(super) fn keyword_args(&self, keyword: &str) -> Option<String> {
        self.lines.iter().find_map(|l| {
            let mut w = l.split_whitespace();
            w.next()
                .filter(|k| k.eq_ignore_ascii_case(keyword))
                .map(|_| w.collect::<Vec<_>>().join(" "))
        })
    }
}

pub(super) struct Wire {
    pub(super) io: Box<dyn IoStream>,
    pub(super) buf: Vec<u8>,
    pub(super) timeout: Duration,
}

const MAX_REPLY_LINES: usize = 200;
const MAX_LINE: usize = 4096;

impl Wire {
    pub(super) async fn send(&mut self, bytes: &[u8]) -> Result<(), SessionError> {
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

    pub(super) async fn line(&mut self) -> Result<String, SessionError> {
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

    pub(super) async fn reply(&mut self) -> Result<Reply, SessionError> {
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

    pub(super) async fn cmd(&mut self, line: &str) -> Result<Reply, SessionError> {
        self.send(format!("{line}\r\n").as_bytes()).await?;
        self.reply().await
    }
}

pub(super) fn base64(data: &[u8]) -> String {
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
pub(super) const FINAL_DOT: &[u8] = b".\r\n";

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
}
