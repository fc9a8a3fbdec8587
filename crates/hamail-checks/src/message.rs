//! A whole message through the header and body tables, as Postfix's
//! cleanup runs them: each logical header of the top-level header block
//! (unfolded: its line breaks removed, the white space kept) through
//! header_checks, then each line of the rest (MIME part headers and
//! boundaries included; nothing decoded) through body_checks, up to
//! [`BODY_CHECKS_SIZE_LIMIT`] bytes of body. For each header or line the
//! first matching rule acts; REJECT or DISCARD ends the run.

use crate::{Action, CheckKind, Table};

/// How much of the body is checked (Postfix's body_checks_size_limit).
pub const BODY_CHECKS_SIZE_LIMIT: usize = 51_200;

/// The compiled tables a node applies; either may be absent.
#[derive(Debug, Clone, Default)]
pub struct Checks {
    pub header: Option<Table>,
    pub body: Option<Table>,
}

impl Checks {
    pub fn is_empty(&self) -> bool {
        self.header.as_ref().is_none_or(Table::is_empty)
            && self.body.as_ref().is_none_or(Table::is_empty)
    }
}

/// One rule that acted, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub part: CheckKind,
    pub action: Action,
    /// The rule's line in its table.
    pub rule_line: usize,
    /// The header (unfolded) or body line that matched.
    pub input: Vec<u8>,
    /// The action's text, groups filled in.
    pub text: Vec<u8>,
}

impl Event {
    /// The matched header or line for a log line: printable, at most 200
    /// characters (as Postfix shortens it).
    pub fn input_for_log(&self) -> String {
        printable(&self.input, 200)
    }

    pub fn text_for_log(&self) -> String {
        printable(&self.text, 400)
    }
}

/// What the tables decided about the message as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Queue it (on hold if [`Outcome::hold`] says so).
    Accept,
    /// Refuse it with this reply line (`550 5.7.1 ...`).
    Reject { reply: String },
    /// Accept it towards the client and drop it.
    Discard,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub verdict: Verdict,
    /// The index in `events` of the first HOLD, if a rule said HOLD.
    pub hold: Option<usize>,
    /// Every rule that acted, in message order (DUNNO and OK are not
    /// events); the REJECT or DISCARD that ended the run is the last.
    pub events: Vec<Event>,
    /// The message as IGNORE, REPLACE and PREPEND left it, when they
    /// changed it.
    pub message: Option<Vec<u8>>,
}

/// Runs the tables over `message` (headers, an empty line, the body).
pub fn check_message(checks: &Checks, message: &[u8]) -> Outcome {
    let mut run = Run {
        events: Vec::new(),
        edits: Vec::new(),
        hold: None,
    };
    let (headers, body_start) = header_block(message);
    if let Some(table) = checks.header.as_ref().filter(|t| !t.is_empty()) {
        for (start, end) in headers {
            let raw = &message[start..end];
            let unfolded: Vec<u8> = raw
                .iter()
                .copied()
                .filter(|b| *b != b'\r' && *b != b'\n')
                .collect();
            let eol = line_ending(raw);
            if let Some(v) = run.one(table, CheckKind::Header, &unfolded, start, end, eol) {
                return run.finish(v, message);
            }
        }
    }
    if let (Some(table), Some(body_start)) =
        (checks.body.as_ref().filter(|t| !t.is_empty()), body_start)
    {
        let mut at = body_start;
        while at < message.len() && at - body_start < BODY_CHECKS_SIZE_LIMIT {
            let end = message[at..]
                .iter()
                .position(|b| *b == b'\n')
                .map_or(message.len(), |p| at + p + 1);
            let raw = &message[at..end];
            let eol = line_ending(raw);
            let line = &raw[..raw.len() - eol.len()];
            if let Some(v) = run.one(table, CheckKind::Body, line, at, end, eol) {
                return run.finish(v, message);
            }
            at = end;
        }
    }
    run.finish(Verdict::Accept, message)
}

struct Run {
    events: Vec<Event>,
    /// Replace `message[start..end]` with the bytes, in message order.
    edits: Vec<(usize, usize, Vec<u8>)>,
    hold: Option<usize>,
}

impl Run {
    /// Checks one header or line (at `start..end` in the message); a
    /// verdict that ends the run, if the rule gave one.
    fn one(
        &mut self,
        table: &Table,
        part: CheckKind,
        input: &[u8],
        start: usize,
        end: usize,
        eol: &[u8],
    ) -> Option<Verdict> {
        let m = table.find(input)?;
        let action = m.rule.action;
        if matches!(action, Action::Dunno | Action::Ok) {
            return None;
        }
        let with_eol = |t: &[u8]| {
            let mut v = t.to_vec();
            v.extend_from_slice(if eol.is_empty() { b"\r\n" } else { eol });
            v
        };
        match action {
            Action::Ignore => self.edits.push((start, end, Vec::new())),
            Action::Replace => self.edits.push((start, end, with_eol(&m.text))),
            Action::Prepend => self.edits.push((start, start, with_eol(&m.text))),
            Action::Hold if self.hold.is_none() => self.hold = Some(self.events.len()),
            _ => {}
        }
        let verdict = match action {
            Action::Reject => Some(Verdict::Reject {
                reply: reject_reply(&m.text),
            }),
            Action::Discard => Some(Verdict::Discard),
            _ => None,
        };
        self.events.push(Event {
            part,
            action,
            rule_line: m.rule.line,
            input: input.to_vec(),
            text: m.text,
        });
        verdict
    }

    fn finish(self, verdict: Verdict, message: &[u8]) -> Outcome {
        let rewritten = if self.edits.is_empty() || verdict != Verdict::Accept {
            None
        } else {
            let mut out = Vec::with_capacity(message.len() + 256);
            let mut at = 0;
            for (start, end, new) in &self.edits {
                out.extend_from_slice(&message[at..*start]);
                out.extend_from_slice(new);
                at = *end;
            }
            out.extend_from_slice(&message[at..]);
            Some(out)
        };
        Outcome {
            verdict,
            hold: self.hold,
            events: self.events,
            message: rewritten,
        }
    }
}

/// The logical headers of the top-level header block (each `start..end`,
/// line breaks included), and where the body starts (after the empty
/// line), if there is one.
fn header_block(message: &[u8]) -> (Vec<(usize, usize)>, Option<usize>) {
    let mut headers: Vec<(usize, usize)> = Vec::new();
    let mut at = 0;
    while at < message.len() {
        let end = message[at..]
            .iter()
            .position(|b| *b == b'\n')
            .map_or(message.len(), |p| at + p + 1);
        let line = &message[at..end];
        if line == b"\r\n" || line == b"\n" {
            return (headers, Some(end));
        }
        match headers.last_mut() {
            Some(last) if line[0] == b' ' || line[0] == b'\t' => last.1 = end,
            // A line that is no header ends the headers: it is the body's
            // first line (as Postfix's cleanup decides).
            _ if !is_header_start(line) => return (headers, Some(at)),
            _ => headers.push((at, end)),
        }
        at = end;
    }
    (headers, None)
}

/// `Name:` at the start of a line (printable ASCII but `:` in the name,
/// white space allowed before the colon, as obsolete syntax has it).
fn is_header_start(line: &[u8]) -> bool {
    let Some(colon) = line.iter().position(|b| *b == b':') else {
        return false;
    };
    let name = line[..colon].trim_ascii_end();
    !name.is_empty() && name.iter().all(|b| b.is_ascii_graphic())
}

fn line_ending(raw: &[u8]) -> &[u8] {
    if raw.ends_with(b"\r\n") {
        b"\r\n"
    } else if raw.ends_with(b"\n") {
        b"\n"
    } else {
        b""
    }
}

/// `550 5.7.1 text`; a text that starts with its own 5.X.Y code keeps it.
fn reject_reply(text: &[u8]) -> String {
    let t = printable(text, 400);
    if t.is_empty() {
        return "550 5.7.1 Message content rejected".into();
    }
    let code = t.split(' ').next().unwrap_or("");
    let parts: Vec<&str> = code.split('.').collect();
    let enhanced = parts.len() == 3
        && parts[0] == "5"
        && parts[1..]
            .iter()
            .all(|p| (1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()));
    if enhanced {
        format!("550 {t}")
    } else {
        format!("550 5.7.1 {t}")
    }
}

/// Printable ASCII only (anything else as `?`), at most `max` characters.
fn printable(b: &[u8], max: usize) -> String {
    String::from_utf8_lossy(b)
        .chars()
        .map(|c| {
            if c == ' ' || c.is_ascii_graphic() {
                c
            } else {
                '?'
            }
        })
        .take(max)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse;

    fn checks(header: &str, body: &str) -> Checks {
        Checks {
            header: Some(parse(CheckKind::Header, header).unwrap()),
            body: Some(parse(CheckKind::Body, body).unwrap()),
        }
    }

    const MSG: &[u8] = b"Received: from x\r\n\tby y; Sat, 5 Dec 2026\r\nSubject: hello\r\n world\r\nX-Mailer: spammer 1.0\r\nFrom: a@example.com\r\n\r\nline one\r\nbuy viagra now\r\nline three\r\n";

    #[test]
    fn headers_are_unfolded_and_rewritten() {
        let c = checks(
            concat!(
                "/^Subject: hello world$/ REPLACE Subject: [checked] hello world\n",
                "/^X-Mailer:/ IGNORE\n",
                "/^From: (.*)/ PREPEND X-Original-From: $1\n",
                "/^Received: from x\\tby y;/ WARN our received\n",
            ),
            "/nothing/ REJECT\n",
        );
        let o = check_message(&c, MSG);
        assert_eq!(o.verdict, Verdict::Accept);
        let m = String::from_utf8(o.message.unwrap()).unwrap();
        assert_eq!(
            m,
            "Received: from x\r\n\tby y; Sat, 5 Dec 2026\r\nSubject: [checked] hello world\r\nX-Original-From: a@example.com\r\nFrom: a@example.com\r\n\r\nline one\r\nbuy viagra now\r\nline three\r\n"
        );
        let actions: Vec<Action> = o.events.iter().map(|e| e.action).collect();
        assert_eq!(
            actions,
            vec![
                Action::Warn,
                Action::Replace,
                Action::Ignore,
                Action::Prepend
            ]
        );
        assert_eq!(
            o.events[0].input_for_log(),
            "Received: from x?by y; Sat, 5 Dec 2026"
        );
    }

    #[test]
    fn reject_stops_and_changes_nothing() {
        let c = checks(
            "/^X-Mailer:/ IGNORE\n/^From:/ REJECT 5.7.0 no such sender\n/^Subject:/ HOLD never reached\n",
            "/viagra/ REJECT body spam\n",
        );
        let o = check_message(&c, MSG);
        assert_eq!(
            o.verdict,
            Verdict::Reject {
                reply: "550 5.7.0 no such sender".into()
            }
        );
        assert!(o.message.is_none());
        assert_eq!(o.events.last().unwrap().rule_line, 2);
    }

    #[test]
    fn body_lines_hold_discard_and_default_reply() {
        let c = checks(
            "/^Subject:/ HOLD held $$ subject\n",
            "/^buy (viagra)/ REPLACE buy [$1]\n/^line one$/ PREPEND before\n/three/ REJECT\n",
        );
        let o = check_message(&c, MSG);
        assert_eq!(
            o.verdict,
            Verdict::Reject {
                reply: "550 5.7.1 Message content rejected".into()
            }
        );
        assert_eq!(o.hold, Some(0));
        assert_eq!(o.events[0].text_for_log(), "held $ subject");
        let c = checks(
            "/^Subject:/ HOLD\n",
            "/^buy (viagra)/ REPLACE buy [$1]\n/^line one$/ PREPEND before\n/three/ DISCARD\n",
        );
        assert_eq!(check_message(&c, MSG).verdict, Verdict::Discard);
        let c = checks(
            "/^Subject:/ HOLD\n",
            "/^buy (viagra)/ REPLACE buy [$1]\n/^line one$/ PREPEND before\n/three/ IGNORE\n",
        );
        let o = check_message(&c, MSG);
        assert_eq!(o.verdict, Verdict::Accept);
        assert!(o.hold.is_some());
        assert!(
            o.message
                .unwrap()
                .ends_with(b"\r\n\r\nbefore\r\nline one\r\nbuy [viagra]\r\n")
        );
    }

    #[test]
    fn body_checks_stop_at_the_size_limit_and_headers_only_messages_work() {
        let mut m = b"Subject: x\r\n\r\n".to_vec();
        for _ in 0..BODY_CHECKS_SIZE_LIMIT / 10 + 1 {
            m.extend_from_slice(b"aaaaaaaa\r\n");
        }
        m.extend_from_slice(b"late spam\r\n");
        let c = checks("/^Nothing:/ DUNNO\n", "/spam/ REJECT\n");
        assert_eq!(check_message(&c, &m).verdict, Verdict::Accept);
        let c = checks("/^Subject: x/ REJECT bare\n", "/x/ REJECT\n");
        assert_eq!(
            check_message(&c, b"Subject: x").verdict,
            Verdict::Reject {
                reply: "550 5.7.1 bare".into()
            }
        );
        assert!(Checks::default().is_empty());
    }

    #[test]
    fn a_line_that_is_no_header_starts_the_body() {
        let m = b"Subject: x\r\nthis is no header\r\nFrom: not a header now\r\n";
        let c = checks("/^From:/ REJECT header\n", "/^From:/ REJECT body\n");
        assert_eq!(
            check_message(&c, m).verdict,
            Verdict::Reject {
                reply: "550 5.7.1 body".into()
            }
        );
    }
}
