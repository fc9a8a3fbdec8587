//! The DATA and BDAT body readers: pure state machines over bytes, no IO.
//!
//! DATA ends only at `<CRLF>.<CRLF>`. A bare LF or a bare CR anywhere in the
//! body is refused outright (the session answers 521 and closes), so no
//! variant of SMTP smuggling (`\n.\n`, `\r.\r\n`, `\n.\r\n`, ...) can end a
//! message early here or be passed on to a server that reads it differently.
//! smtp-proto's DataReceiver keeps bare LFs in the body, which is why this
//! layer is ours.

/// What the DATA reader found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataEvent {
    /// Everything given was consumed; more is needed.
    More,
    /// The end `<CRLF>.<CRLF>` was read; bytes after it are not consumed.
    Done,
    /// A LF not preceded by CR.
    BareLf,
    /// A CR not followed by LF.
    BareCr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    LineStart,
    Mid,
    /// A CR was read; only LF may follow. `dot` if the line is the lone dot.
    Cr {
        dot: bool,
    },
    /// A dot at the start of a line.
    Dot,
}

/// Collects a DATA body: lines with CRLF, dots unstuffed, the final
/// `.<CRLF>` removed. Stops storing (but keeps reading to the end) once the
/// body is over `limit`, so an oversize message is answered 552 in step.
#[derive(Debug)]
pub struct DataReader {
    state: State,
    body: Vec<u8>,
    limit: usize,
    size: usize,
}

impl DataReader {
    pub fn new(limit: usize) -> Self {
        DataReader {
            state: State::LineStart,
            body: Vec::new(),
            limit,
            size: 0,
        }
    }

    /// Bytes the body has (would have) without the size limit.
    pub fn size(&self) -> usize {
        self.size
    }

    pub fn too_big(&self) -> bool {
        self.size > self.limit
    }

    pub fn into_body(self) -> Vec<u8> {
        self.body
    }

    fn emit(&mut self, bytes: &[u8]) {
        self.size += bytes.len();
        if self.size <= self.limit {
            self.body.extend_from_slice(bytes);
        }
    }

    /// Feeds bytes; returns how many were consumed and what was found.
    pub fn feed(&mut self, input: &[u8]) -> (usize, DataEvent) {
        let mut i = 0;
        while i < input.len() {
            match self.state {
                State::Mid => {
                    // The common case: copy up to the next CR or LF at once.
                    let rest = &input[i..];
                    match rest.iter().position(|&b| b == b'\r' || b == b'\n') {
                        None => {
                            self.emit(rest);
                            return (input.len(), DataEvent::More);
                        }
                        Some(p) => {
                            self.emit(&rest[..p]);
                            i += p;
                            if rest[p] == b'\n' {
                                return (i + 1, DataEvent::BareLf);
                            }
                            self.state = State::Cr { dot: false };
                            i += 1;
                        }
                    }
                }
                State::LineStart => {
                    match input[i] {
                        b'.' => self.state = State::Dot,
                        b'\r' => self.state = State::Cr { dot: false },
                        b'\n' => return (i + 1, DataEvent::BareLf),
                        _ => self.state = State::Mid,
                    }
                    if self.state != State::Mid {
                        i += 1;
                    }
                }
                State::Dot => match input[i] {
                    b'\r' => {
                        self.state = State::Cr { dot: true };
                        i += 1;
                    }
                    b'\n' => return (i + 1, DataEvent::BareLf),
                    // Dot-stuffing: the leading dot goes, the rest stays.
                    _ => self.state = State::Mid,
                },
                State::Cr { dot } => {
                    if input[i] != b'\n' {
                        return (i, DataEvent::BareCr);
                    }
                    i += 1;
                    if dot {
                        return (i, DataEvent::Done);
                    }
                    self.emit(b"\r\n");
                    self.state = State::LineStart;
                }
            }
        }
        (input.len(), DataEvent::More)
    }
}

/// Checks a BDAT body (length-delimited, so smuggling cannot end it early)
/// for bare CR or LF all the same: the message is relayed later with DATA.
pub fn bare_line_ending(body: &[u8]) -> Option<DataEvent> {
    let mut prev = 0u8;
    for (i, &b) in body.iter().enumerate() {
        if b == b'\n' && prev != b'\r' {
            return Some(DataEvent::BareLf);
        }
        if prev == b'\r' && b != b'\n' {
            return Some(DataEvent::BareCr);
        }
        prev = b;
        if i + 1 == body.len() && b == b'\r' {
            return Some(DataEvent::BareCr);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(input: &[u8]) -> (DataEvent, Vec<u8>, usize) {
        let mut r = DataReader::new(1 << 20);
        let (n, ev) = r.feed(input);
        (ev, r.into_body(), n)
    }

    #[test]
    fn ends_only_at_crlf_dot_crlf() {
        let (ev, body, n) = run(b"Subject: x\r\n\r\nhello\r\n..dot\r\n.\r\nMAIL FROM:<a@b>\r\n");
        assert_eq!(ev, DataEvent::Done);
        assert_eq!(body, b"Subject: x\r\n\r\nhello\r\n.dot\r\n");
        assert_eq!(n, 31);
    }

    #[test]
    fn every_smuggling_variant_is_refused() {
        for bad in [
            &b"a\n.\nMAIL FROM:<x@y>\r\n"[..],
            b"a\r\n.\nMAIL FROM:<x@y>\r\n",
            b"a\n.\r\nMAIL FROM:<x@y>\r\n",
            b"a\r.\r\nMAIL FROM:<x@y>\r\n",
            b"a\r\n.\r.\r\n",
            b"a\r\n.\rMAIL\r\n",
            b"a\rb\r\n.\r\n",
            b"\n.\r\n",
        ] {
            let (ev, _, _) = run(bad);
            assert!(
                matches!(ev, DataEvent::BareLf | DataEvent::BareCr),
                "{:?} gave {ev:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn split_anywhere_gives_the_same_result() {
        let input = b"l1\r\n.x\r\n..\r\n\r\n.\r\n";
        let (_, whole, _) = run(input);
        for cut in 0..input.len() {
            let mut r = DataReader::new(1 << 20);
            let (a, ev) = r.feed(&input[..cut]);
            assert_eq!((a, ev), (cut, DataEvent::More));
            let (_, ev) = r.feed(&input[cut..]);
            assert_eq!(ev, DataEvent::Done);
            assert_eq!(r.into_body(), whole);
        }
    }

    #[test]
    fn over_the_limit_is_read_to_the_end_but_not_kept() {
        let mut r = DataReader::new(10);
        let (_, ev) = r.feed(b"0123456789abcdef\r\n.\r\n");
        assert_eq!(ev, DataEvent::Done);
        assert!(r.too_big());
        assert_eq!(r.size(), 18);
    }

    #[test]
    fn bdat_bodies_are_checked_for_bare_endings() {
        assert_eq!(bare_line_ending(b"a\r\nb\r\n"), None);
        assert_eq!(bare_line_ending(b"a\nb"), Some(DataEvent::BareLf));
        assert_eq!(bare_line_ending(b"a\rb"), Some(DataEvent::BareCr));
        assert_eq!(bare_line_ending(b"a\r"), Some(DataEvent::BareCr));
    }
}
