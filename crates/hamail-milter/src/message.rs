//! A message split into headers and body the way a milter sees it, and the
//! header and body changes a milter asks for applied to it. Pure: no IO.

/// One header: its name and everything after the colon up to the line end
/// (folded lines keep their CRLF).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub name: Vec<u8>,
    pub value: Vec<u8>,
}

/// A message as headers and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub headers: Vec<Header>,
    pub body: Vec<u8>,
}

/// A header or body change, as the milter gave it (`value` as it will stand
/// after the colon, with CRLF line ends).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderChange {
    /// `smfi_addheader`: at the end of the headers.
    Add { name: String, value: Vec<u8> },
    /// `smfi_insheader`: at position `index` (0: first) or at the end.
    Insert {
        index: u32,
        name: String,
        value: Vec<u8>,
    },
    /// `smfi_chgheader`: the `index`-th (1-based) header of that name; an
    /// empty value removes it, a missing one is added.
    Change {
        index: u32,
        name: String,
        value: Vec<u8>,
    },
    /// `smfi_replacebody`: the whole new body.
    ReplaceBody(Vec<u8>),
}

impl Message {
    /// Splits a message at the end of its headers: the first empty line, or
    /// the first line that is neither a header nor a continuation.
    pub fn parse(message: &[u8]) -> Message {
        let mut headers: Vec<Header> = Vec::new();
        let mut pos = 0;
        while pos < message.len() {
            let end = message[pos..]
                .iter()
                .position(|b| *b == b'\n')
                .map_or(message.len(), |i| pos + i + 1);
            let line = &message[pos..end];
            let content = strip_eol(line);
            if content.is_empty() {
                pos = end;
                break;
            }
            if matches!(content[0], b' ' | b'\t') {
                match headers.last_mut() {
                    Some(h) => {
                        h.value.extend_from_slice(b"\r\n");
                        h.value.extend_from_slice(content);
                        pos = end;
                        continue;
                    }
                    None => break,
                }
            }
            let Some(colon) = content.iter().position(|b| *b == b':') else {
                break;
            };
            let name = &content[..colon];
            if name.is_empty() || !name.iter().all(|b| b.is_ascii_graphic()) {
                break;
            }
            headers.push(Header {
                name: name.to_vec(),
                value: content[colon + 1..].to_vec(),
            });
            pos = end;
        }
        Message {
            headers,
            body: message[pos..].to_vec(),
        }
    }

    /// The message as bytes: headers, an empty line, the body.
    pub fn to_bytes(&self) -> Vec<u8> {
        let size = self
            .headers
            .iter()
            .map(|h| h.name.len() + h.value.len() + 3)
            .sum::<usize>()
            + 2
            + self.body.len();
        let mut out = Vec::with_capacity(size);
        for h in &self.headers {
            out.extend_from_slice(&h.name);
            out.push(b':');
            out.extend_from_slice(&h.value);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body);
        out
    }

    /// Applies one change.
    pub fn apply(&mut self, change: &HeaderChange) {
        match change {
            HeaderChange::Add { name, value } => self.headers.push(Header {
                name: name.as_bytes().to_vec(),
                value: value.clone(),
            }),
            HeaderChange::Insert { index, name, value } => {
                let at = (*index as usize).min(self.headers.len());
                self.headers.insert(
                    at,
                    Header {
                        name: name.as_bytes().to_vec(),
                        value: value.clone(),
                    },
                );
            }
            HeaderChange::Change { index, name, value } => {
                let nth = (*index).max(1) as usize;
                let found = self
                    .headers
                    .iter()
                    .enumerate()
                    .filter(|(_, h)| h.name.eq_ignore_ascii_case(name.as_bytes()))
                    .nth(nth - 1)
                    .map(|(i, _)| i);
                let empty = value.iter().all(|b| b.is_ascii_whitespace());
                match (found, empty) {
                    (Some(i), true) => {
                        self.headers.remove(i);
                    }
                    (Some(i), false) => self.headers[i].value = value.clone(),
                    (None, true) => {}
                    (None, false) => self.headers.push(Header {
                        name: name.as_bytes().to_vec(),
                        value: value.clone(),
                    }),
                }
            }
            HeaderChange::ReplaceBody(body) => self.body = crlf(body),
        }
    }
}

/// A line without its CRLF or LF.
fn strip_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Text with every line ending as CRLF (a milter written in a scripting
/// language often sends bare LF).
pub fn crlf(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + text.len() / 32);
    let mut prev = 0u8;
    for (i, &b) in text.iter().enumerate() {
        match b {
            b'\n' if prev != b'\r' => out.extend_from_slice(b"\r\n"),
            b'\r' if text.get(i + 1) != Some(&b'\n') => out.extend_from_slice(b"\r\n"),
            _ => out.push(b),
        }
        prev = b;
    }
    out
}

/// A header value for the milter: folded lines joined by LF, as Sendmail
/// and Postfix send them; the space after the colon left out unless the
/// milter asked for it (SMFIP_HDR_LEADSPC).
pub fn value_for_milter(value: &[u8], leading_space: bool) -> Vec<u8> {
    let v = if leading_space {
        value
    } else {
        value.strip_prefix(b" ").unwrap_or(value)
    };
    let mut out = Vec::with_capacity(v.len());
    let mut i = 0;
    while i < v.len() {
        if v[i] == b'\r' && v.get(i + 1) == Some(&b'\n') {
            i += 1;
            continue;
        }
        out.push(v[i]);
        i += 1;
    }
    out
}

/// A header value from the milter as it will stand after the colon: CRLF
/// line ends, and the space after the colon added back unless the milter
/// gives it itself (SMFIP_HDR_LEADSPC).
pub fn value_from_milter(value: &[u8], leading_space: bool) -> Vec<u8> {
    let v = crlf(value);
    if leading_space || v.is_empty() {
        v
    } else {
        let mut out = Vec::with_capacity(v.len() + 1);
        out.push(b' ');
        out.extend_from_slice(&v);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: &[u8] =
        b"Received: from x\r\n\tby y\r\nSubject: hi\r\nX-A: 1\r\nx-a: 2\r\n\r\nbody\r\n";

    #[test]
    fn parse_and_rebuild_unchanged() {
        let m = Message::parse(MSG);
        assert_eq!(m.headers.len(), 4);
        assert_eq!(m.headers[0].value, b" from x\r\n\tby y");
        assert_eq!(m.body, b"body\r\n");
        assert_eq!(m.to_bytes(), MSG);
        let m = Message::parse(b"no header line\r\nmore\r\n");
        assert!(m.headers.is_empty());
        assert_eq!(m.body, b"no header line\r\nmore\r\n");
        let m = Message::parse(b"Subject: only headers\r\n");
        assert_eq!(m.headers.len(), 1);
        assert!(m.body.is_empty());
    }

    #[test]
    fn changes() {
        let mut m = Message::parse(MSG);
        m.apply(&HeaderChange::Change {
            index: 2,
            name: "X-A".into(),
            value: b" two".to_vec(),
        });
        m.apply(&HeaderChange::Change {
            index: 1,
            name: "subject".into(),
            value: Vec::new(),
        });
        m.apply(&HeaderChange::Change {
            index: 1,
            name: "X-New".into(),
            value: b" n".to_vec(),
        });
        m.apply(&HeaderChange::Insert {
            index: 0,
            name: "X-Top".into(),
            value: b" t".to_vec(),
        });
        m.apply(&HeaderChange::Insert {
            index: 99,
            name: "X-End".into(),
            value: b" e".to_vec(),
        });
        m.apply(&HeaderChange::Add {
            name: "X-Add".into(),
            value: b" a".to_vec(),
        });
        m.apply(&HeaderChange::ReplaceBody(b"new\nbody\n".to_vec()));
        assert_eq!(
            m.to_bytes(),
            b"X-Top: t\r\nReceived: from x\r\n\tby y\r\nX-A: 1\r\nx-a: two\r\nX-New: n\r\nX-End: e\r\nX-Add: a\r\n\r\nnew\r\nbody\r\n"
        );
    }

    #[test]
    fn values_both_ways() {
        assert_eq!(value_for_milter(b" a\r\n\tb", false), b"a\n\tb");
        assert_eq!(value_for_milter(b" a", true), b" a");
        assert_eq!(value_from_milter(b"a\n\tb", false), b" a\r\n\tb");
        assert_eq!(value_from_milter(b" a", true), b" a");
        assert_eq!(crlf(b"a\rb\r\nc\n"), b"a\r\nb\r\nc\r\n");
    }
}
