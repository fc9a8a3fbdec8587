//! The signing domain of a message: the domain of its RFC 5322.From
//! address (the author domain DMARC aligns with). A message with no From,
//! several From headers, a From with several mailboxes or without a usable
//! address has no signing domain and is not signed.

use hamail_types::DomainName;

/// The unfolded values of the header fields named `name` (header section only).
pub(crate) fn header_values(message: &[u8], name: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut current: Option<String> = None;
    for line in message.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break;
        }
        if line[0] == b' ' || line[0] == b'\t' {
            if let Some(v) = current.as_mut() {
                v.push_str(&String::from_utf8_lossy(line));
            }
            continue;
        }
        if let Some(v) = current.take() {
            out.push(v);
        }
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        if line[..colon]
            .trim_ascii_end()
            .eq_ignore_ascii_case(name.as_bytes())
        {
            current = Some(String::from_utf8_lossy(&line[colon + 1..]).into_owned());
        }
    }
    if let Some(v) = current {
        out.push(v);
    }
    out
}

/// The value without comments `( ... )` and with quoted strings blanked
/// (so a `,` or `@` inside a display name counts for nothing).
fn strip_comments_and_quotes(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let (mut depth, mut quoted, mut escaped) = (0usize, false, false);
    for c in value.chars() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if quoted || depth > 0 => escaped = true,
            '"' if depth == 0 => {
                quoted = !quoted;
                out.push(' ');
            }
            '(' if !quoted => depth += 1,
            ')' if !quoted && depth > 0 => depth -= 1,
            _ if quoted || depth > 0 => {}
            c => out.push(c),
        }
    }
    out
}

/// The domain of the single mailbox of the single From header.
pub fn from_domain(message: &[u8]) -> Option<DomainName> {
    let values = header_values(message, "from");
    let [value] = values.as_slice() else {
        return None;
    };
    let plain = strip_comments_and_quotes(value);
    // Group syntax or a second mailbox: no single author.
    if plain.contains(',') || plain.contains(';') {
        return None;
    }
    let address = match (plain.find('<'), plain.rfind('>')) {
        (Some(open), Some(close)) if open < close => &plain[open + 1..close],
        (None, None) => plain.as_str(),
        _ => return None,
    };
    let (_, domain) = address.trim().rsplit_once('@')?;
    let domain = domain.trim();
    if domain.is_empty() || domain.starts_with('[') {
        return None;
    }
    DomainName::parse(domain).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(m: &str) -> Option<String> {
        from_domain(m.as_bytes()).map(|d| d.to_string())
    }

    #[test]
    fn the_from_domain() {
        assert_eq!(
            d("From: a@Example.COM\r\n\r\nbody"),
            Some("example.com".into())
        );
        assert_eq!(
            d("Subject: x\r\nFrom: \"Doe, John @ home\" <john@example.com> (work)\r\n\r\n"),
            Some("example.com".into())
        );
        assert_eq!(
            d("From: John\r\n <john@mail.example.jp>\r\nTo: b@c.example\r\n\r\n"),
            Some("mail.example.jp".into())
        );
        // No usable author: not signed.
        assert_eq!(d("To: a@example.com\r\n\r\n"), None);
        assert_eq!(
            d("From: a@example.com\r\nFrom: b@example.com\r\n\r\n"),
            None
        );
        assert_eq!(d("From: a@example.com, b@example.com\r\n\r\n"), None);
        assert_eq!(d("From: undisclosed:;\r\n\r\n"), None);
        assert_eq!(d("From: nobody\r\n\r\n"), None);
        assert_eq!(d("From: a@[192.0.2.1]\r\n\r\n"), None);
        // The body is not the header section.
        assert_eq!(d("Subject: x\r\n\r\nFrom: a@example.com\r\n"), None);
    }
}
