//! Postfix lookup-table source files (`relay_recipient_maps`, `virtual`):
//! `key value` per line, `#` comments, blank lines, any whitespace. The whole
//! file is checked before anything is used; the first bad line is reported.

use crate::MailAddress;

/// One line of a map file: the address and the value, kept as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapEntry {
    pub line: usize,
    pub address: MailAddress,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {cause}")]
pub struct MapError {
    pub line: usize,
    pub cause: String,
}

/// Parses a whole map file; the first bad line is the error.
pub fn parse_postfix_map(text: &str) -> Result<Vec<MapEntry>, MapError> {
    let mut entries = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let content = raw.trim();
        if content.is_empty() || content.starts_with('#') {
            continue;
        }
        // Postfix continues a logical line on lines that start with whitespace.
        if raw.starts_with([' ', '\t']) {
            return Err(MapError {
                line,
                cause: "continuation lines (starting with whitespace) are not supported".into(),
            });
        }
        let (key, value) = match content.split_once(char::is_whitespace) {
            Some((k, v)) => (k, v.trim()),
            None => (content, ""),
        };
        if key.starts_with('@') {
            return Err(MapError {
                line,
                cause: format!(
                    "catch-all key {key:?} is not supported: list the recipients one per line"
                ),
            });
        }
        let address = MailAddress::parse(key).map_err(|e| MapError {
            line,
            cause: e.to_string(),
        })?;
        if value.len() > crate::command::MAX_RECIPIENT_VALUE {
            return Err(MapError {
                line,
                cause: "value longer than 1024 bytes".into(),
            });
        }
        entries.push(MapEntry {
            line,
            address,
            value: value.to_string(),
        });
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_postfix_files() {
        let text = "# relay recipients\n\nuser1@example.jp\tx\n  \nUser2@Example.jp   OK extra\npostmaster@example.jp\n";
        let e = parse_postfix_map(text).unwrap();
        assert_eq!(e.len(), 3);
        assert_eq!(e[1].address.to_string(), "user2@example.jp");
        assert_eq!(e[1].value, "OK extra");
        assert_eq!(e[1].line, 5);
        assert_eq!(e[2].value, "");
    }

    #[test]
    fn reports_first_bad_line() {
        let text = "a@example.jp x\nbad@@example.jp x\nworse x\n";
        let err = parse_postfix_map(text).unwrap_err();
        assert_eq!(err.line, 2);
        assert!(err.to_string().starts_with("line 2: "), "{err}");
        assert!(parse_postfix_map("@example.jp x").is_err());
    }
}
