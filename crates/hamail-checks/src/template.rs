//! The text after an action, with Postfix's regexp-table substitutions:
//! `$1`, `${1}` and `$(1)` are what the pattern's group matched, `$$` is a
//! dollar sign. A group the pattern does not have is refused when the
//! table is read, as Postfix refuses it.

use regex::bytes::Captures;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Literal(String),
    Group(usize),
}

/// A parsed text, ready to be filled in.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Template {
    pieces: Vec<Piece>,
}

impl Template {
    /// Parses `text`; `groups` is how many groups the pattern has (None
    /// for a negated pattern, which has nothing to refer to).
    pub(crate) fn parse(text: &str, groups: Option<usize>) -> Result<Template, String> {
        let mut pieces = Vec::new();
        let mut lit = String::new();
        let mut chars = text.char_indices().peekable();
        while let Some((_, c)) = chars.next() {
            if c != '$' {
                lit.push(c);
                continue;
            }
            let (close, first) = match chars.peek().map(|(_, c)| *c) {
                Some('$') => {
                    chars.next();
                    lit.push('$');
                    continue;
                }
                Some('{') => (Some('}'), None),
                Some('(') => (Some(')'), None),
                Some(d) if d.is_ascii_digit() => (None, Some(d)),
                _ => {
                    return Err(format!(
                        "invalid $ in the text {text:?}: write $$ for a dollar sign, $1 for what the first group matched"
                    ));
                }
            };
            chars.next();
            let mut digits = String::new();
            if let Some(d) = first {
                digits.push(d);
            }
            while let Some(&(_, d)) = chars.peek() {
                if d.is_ascii_digit() {
                    digits.push(d);
                    chars.next();
                } else {
                    break;
                }
            }
            if let Some(close) = close
                && chars.next().map(|(_, c)| c) != Some(close)
            {
                return Err(format!(
                    "invalid group reference in the text {text:?}: expected ${{N}} or $(N)"
                ));
            }
            let n: usize = digits.parse().map_err(|_| {
                format!("invalid group reference in the text {text:?}: no group number")
            })?;
            match groups {
                None => {
                    return Err(format!(
                        "${n} in the text of a negated pattern (!/.../): it has no groups to refer to"
                    ));
                }
                Some(g) if n == 0 || n > g => {
                    return Err(format!(
                        "${n} in the text refers to a group the pattern does not have (it has {g})"
                    ));
                }
                Some(_) => {}
            }
            if !lit.is_empty() {
                pieces.push(Piece::Literal(std::mem::take(&mut lit)));
            }
            pieces.push(Piece::Group(n));
        }
        if !lit.is_empty() {
            pieces.push(Piece::Literal(lit));
        }
        Ok(Template { pieces })
    }

    /// The text as written (for listings): groups as `$N`.
    pub(crate) fn literal_prefix(&self) -> &str {
        match self.pieces.first() {
            Some(Piece::Literal(s)) => s,
            _ => "",
        }
    }

    pub(crate) fn has_groups(&self) -> bool {
        self.pieces.iter().any(|p| matches!(p, Piece::Group(_)))
    }

    /// The text with the groups filled in (an unmatched group is empty).
    pub(crate) fn fill(&self, caps: Option<&Captures<'_>>) -> Vec<u8> {
        let mut out = Vec::new();
        for p in &self.pieces {
            match p {
                Piece::Literal(s) => out.extend_from_slice(s.as_bytes()),
                Piece::Group(n) => {
                    if let Some(m) = caps.and_then(|c| c.get(*n)) {
                        out.extend_from_slice(m.as_bytes());
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_and_dollars() {
        let re = regex::bytes::Regex::new("^Subject: (a+)(b*)").unwrap();
        let caps = re.captures(b"Subject: aab").unwrap();
        for (text, want) in [
            ("X: $1-$2", "X: aa-b"),
            ("X: ${1}$(2) $$5", "X: aab $5"),
            ("plain", "plain"),
        ] {
            let t = Template::parse(text, Some(2)).unwrap();
            assert_eq!(String::from_utf8(t.fill(Some(&caps))).unwrap(), want);
        }
    }

    #[test]
    fn bad_references_are_refused() {
        for (text, groups, what) in [
            ("$3", Some(2), "does not have"),
            ("$0", Some(2), "does not have"),
            ("$1", None, "negated"),
            ("cost $x", Some(1), "$$ for a dollar"),
            ("${1", Some(1), "expected"),
            ("${}", Some(1), "no group number"),
            ("trailing $", Some(1), "$$ for a dollar"),
        ] {
            let e = Template::parse(text, groups).unwrap_err();
            assert!(e.contains(what), "{text}: {e}");
        }
    }
}
