//! Physical lines into logical lines, as Postfix's table readers do: blank
//! lines and lines whose first non-blank character is `#` are skipped, and
//! a line that starts with white space continues the logical line before
//! it (its text is appended as it is, the line break dropped).

use crate::ParseError;

/// One logical line and the number of its first physical line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Logical {
    pub line: usize,
    pub text: String,
}

pub(crate) fn logical_lines(source: &str) -> Result<Vec<Logical>, ParseError> {
    let mut out: Vec<Logical> = Vec::new();
    for (i, raw) in source.split('\n').enumerate() {
        let number = i + 1;
        let raw = raw.strip_suffix('\r').unwrap_or(raw);
        let trimmed = raw.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if let Some(c) = raw.chars().find(|c| c.is_control() && *c != '\t') {
            return Err(ParseError {
                line: number,
                reason: format!("control character {:?} in the line", c),
            });
        }
        if raw.starts_with([' ', '\t']) {
            match out.last_mut() {
                Some(prev) => prev.text.push_str(raw),
                None => {
                    return Err(ParseError {
                        line: number,
                        reason:
                            "a continuation line (starting with white space) with no line before it"
                                .into(),
                    });
                }
            }
        } else {
            out.push(Logical {
                line: number,
                text: raw.to_string(),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_blank_and_continuation_lines() {
        let src =
            "# a comment\n\n/a/ REJECT one\n   # indented comment\n  two\n\t three\r\n/b/ DUNNO\n";
        let l = logical_lines(src).unwrap();
        assert_eq!(
            l,
            vec![
                Logical {
                    line: 3,
                    text: "/a/ REJECT one  two\t three".into()
                },
                Logical {
                    line: 7,
                    text: "/b/ DUNNO".into()
                },
            ]
        );
    }

    #[test]
    fn a_continuation_first_is_an_error() {
        let e = logical_lines("# c\n  /a/ REJECT\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.reason.contains("continuation"), "{e}");
    }

    #[test]
    fn control_characters_are_refused() {
        let e = logical_lines("/a/ REJECT x\u{0}y\n").unwrap_err();
        assert_eq!(e.line, 1);
    }
}
