//! Header work on accepted messages: the `Received:` line we add (in
//! Postfix's shape), RFC 5322 dates, and the Message-ID for the logs.

/// `Wed, 2 Dec 2026 03:26:36 +0000` for a Unix time in seconds (UTC).
pub fn rfc5322_date(unix_secs: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = unix_secs / 86_400;
    let secs = unix_secs % 86_400;
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{}, {} {} {} {:02}:{:02}:{:02} +0000 (UTC)",
        DAYS[(days % 7) as usize],
        d,
        MONTHS[(m - 1) as usize],
        y,
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// `Wed Dec  2 03:26:36`, the arrival time as mailq shows it (UTC).
pub fn mailq_date(unix_secs: u64) -> String {
    let d = rfc5322_date(unix_secs);
    // "Wed, 2 Dec 2026 03:26:36 +0000 (UTC)" -> parts
    let p: Vec<&str> = d.split([' ', ',']).filter(|s| !s.is_empty()).collect();
    match p.as_slice() {
        [wd, day, mon, _year, time, ..] => format!("{wd} {mon} {day:>2} {time}"),
        _ => d,
    }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// What goes into our `Received:` header.
#[derive(Debug)]
pub struct Trace<'a> {
    pub helo: &'a str,
    pub client_ip: std::net::IpAddr,
    pub hostname: &'a str,
    /// `ESMTP`, `ESMTPS`, `ESMTPSA`, `UTF8SMTPS`, ... (RFC 3848).
    pub protocol: &'a str,
    pub queue_id: &'a str,
    /// Named with `for <...>` when the message has exactly one recipient.
    pub single_recipient: Option<&'a str>,
    /// The authenticated user, when it is to be named
    /// (`smtpd_sasl_authenticated_header`).
    pub authenticated_sender: Option<&'a str>,
    pub unix_secs: u64,
}

/// The `Received:` header, folded as Postfix folds it.
pub fn received_header(t: &Trace<'_>) -> String {
    let helo: String = t
        .helo
        .chars()
        .filter(|c| !c.is_control() && *c != '(' && *c != ')')
        .take(255)
        .collect();
    let mut h = format!("Received: from {helo} (unknown [{}])\r\n", t.client_ip);
    if let Some(user) = t.authenticated_sender {
        let user: String = user
            .chars()
            .filter(|c| !c.is_control() && *c != '(' && *c != ')')
            .take(255)
            .collect();
        h.push_str(&format!("\t(Authenticated sender: {user})\r\n"));
    }
    h.push_str(&format!(
        "\tby {} (hamail) with {} id {}",
        t.hostname, t.protocol, t.queue_id
    ));
    if let Some(r) = t.single_recipient {
        h.push_str(&format!("\r\n\tfor <{r}>"));
    }
    h.push_str(&format!("; {}\r\n", rfc5322_date(t.unix_secs)));
    h
}

/// The Date and Message-ID headers a submitted message lacks (RFC 6409
/// 8.2, 8.3), ready to go before its header section; empty if it has both.
pub fn missing_headers(body: &[u8], unix_secs: u64, queue_id: &str, hostname: &str) -> String {
    let (mut date, mut mid) = (false, false);
    for name in header_names(body) {
        date |= name.eq_ignore_ascii_case(b"date");
        mid |= name.eq_ignore_ascii_case(b"message-id");
    }
    let mut out = String::new();
    if !date {
        out.push_str(&format!("Date: {}\r\n", rfc5322_date(unix_secs)));
    }
    if !mid {
        out.push_str(&format!(
            "Message-ID: <{unix_secs}.{queue_id}@{hostname}>\r\n"
        ));
    }
    out
}

/// The Message-ID of a message, from its header section, for the log line
/// `<ID>: message-id=<...>`.
pub fn message_id(body: &[u8]) -> Option<String> {
    let mut lines = body.split(|b| *b == b'\n').peekable();
    while let Some(line) = lines.next() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            return None;
        }
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        if !line[..colon].eq_ignore_ascii_case(b"message-id") {
            continue;
        }
        let mut value = String::from_utf8_lossy(&line[colon + 1..]).into_owned();
        // A folded value continues on lines that start with white space.
        while let Some(next) = lines.peek() {
            if next.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
                let next = next.strip_suffix(b"\r").unwrap_or(next);
                value.push_str(&String::from_utf8_lossy(next));
                lines.next();
            } else {
                break;
            }
        }
        let v: String = value.trim().chars().filter(|c| !c.is_control()).collect();
        return Some(v.chars().take(998).collect());
    }
    None
}

/// Postfix's `hopcount_limit`: a message with this many `Received:` and
/// `Delivered-To:` headers (ours included) is in a mail loop — a content
/// filter re-injecting into the MX, two hosts relaying to each other.
pub const HOPCOUNT_LIMIT: usize = 50;

/// The hop count of a message: its `Received:` and `Delivered-To:` headers
/// (the header section only).
pub fn hop_count(message: &[u8]) -> usize {
    header_names(message)
        .filter(|name| {
            name.eq_ignore_ascii_case(b"received") || name.eq_ignore_ascii_case(b"delivered-to")
        })
        .count()
}

/// The names of the header fields of a message's header section (up to the
/// first empty line), white space before the colon trimmed; continuation
/// lines and lines without a colon name nothing.
fn header_names(message: &[u8]) -> impl Iterator<Item = &[u8]> {
    message
        .split(|b| *b == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
        .take_while(|line| !line.is_empty())
        .filter_map(|line| {
            let colon = line.iter().position(|b| *b == b':')?;
            Some(line[..colon].trim_ascii_end())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hop_count_is_received_and_delivered_to_headers_of_the_header_section() {
        let m =
            b"Received: from a\r\n\tby b; x\r\nreceived : from c\r\nDelivered-To: u@example.jp\r\n\
                  Subject: Received: no\r\nX-Received: no\r\n\r\nReceived: in the body\r\n";
        assert_eq!(hop_count(m), 3);
        assert_eq!(hop_count(b""), 0);
        assert_eq!(hop_count(b"Received: x"), 1);
    }

    #[test]
    fn dates_are_rfc5322() {
        assert_eq!(rfc5322_date(0), "Thu, 1 Jan 1970 00:00:00 +0000 (UTC)");
        assert_eq!(
            rfc5322_date(1_796_182_000),
            "Wed, 2 Dec 2026 03:26:40 +0000 (UTC)"
        );
        assert_eq!(
            rfc5322_date(951_782_400),
            "Tue, 29 Feb 2000 00:00:00 +0000 (UTC)"
        );
    }

    #[test]
    fn mailq_dates() {
        assert_eq!(mailq_date(1_796_182_000), "Wed Dec  2 03:26:40");
    }

    #[test]
    fn received_header_has_postfix_shape() {
        let h = received_header(&Trace {
            helo: "client.example",
            client_ip: "127.0.0.1".parse().unwrap(),
            hostname: "mx1.example.jp",
            protocol: "ESMTP",
            queue_id: "0123456789ABC001",
            single_recipient: Some("u@example.jp"),
            authenticated_sender: None,
            unix_secs: 0,
        });
        assert_eq!(
            h,
            "Received: from client.example (unknown [127.0.0.1])\r\n\tby mx1.example.jp (hamail) with ESMTP id 0123456789ABC001\r\n\tfor <u@example.jp>; Thu, 1 Jan 1970 00:00:00 +0000 (UTC)\r\n"
        );
    }

    #[test]
    fn message_id_is_found_in_the_header_only() {
        assert_eq!(
            message_id(b"Subject: a\r\nMessage-ID:\r\n <x@y>\r\n\r\nMessage-ID: <no>\r\n")
                .as_deref(),
            Some("<x@y>")
        );
        assert_eq!(message_id(b"Subject: a\r\n\r\nMessage-ID: <no>\r\n"), None);
    }

    #[test]
    fn a_submitted_message_gets_the_date_and_message_id_it_lacks() {
        let added = missing_headers(b"Subject: x\r\n\r\nbody\r\n", 0, "0123", "mx.example");
        assert_eq!(
            added,
            "Date: Thu, 1 Jan 1970 00:00:00 +0000 (UTC)\r\nMessage-ID: <0.0123@mx.example>\r\n"
        );
        let full = b"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-Id: <a@b>\r\n\r\n";
        assert_eq!(missing_headers(full, 0, "0123", "mx.example"), "");
        // A "Date:" in the body is no header.
        let added = missing_headers(b"Message-ID: <a@b>\r\n\r\nDate: x\r\n", 0, "1", "h");
        assert!(added.starts_with("Date: "), "{added}");
    }

    #[test]
    fn the_authenticated_sender_is_named_when_asked() {
        let h = received_header(&Trace {
            helo: "client.example",
            client_ip: "127.0.0.1".parse().unwrap(),
            hostname: "mx1.example.jp",
            protocol: "ESMTPSA",
            queue_id: "0123456789ABC001",
            single_recipient: None,
            authenticated_sender: Some("user@example.jp (x)"),
            unix_secs: 0,
        });
        assert!(
            h.contains("\t(Authenticated sender: user@example.jp x)\r\n\tby mx1.example.jp (hamail) with ESMTPSA id"),
            "{h}"
        );
    }
}
