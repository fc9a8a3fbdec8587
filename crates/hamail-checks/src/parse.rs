//! Logical lines into a compiled table. A line is a rule
//! (`/pattern/flags ACTION text` or `!/pattern/flags ACTION text`), an
//! `if /pattern/flags` (or `if !/pattern/flags`) opening a block, or the
//! `endif` closing one. The pattern is enclosed by any punctuation
//! character (`/` by custom; a backslash escapes it). Flags toggle
//! Postfix's defaults: `i` case-insensitive (on), `m` multi-line (off),
//! `x` extended syntax (on; off means POSIX basic syntax).

use regex::bytes::{Regex, RegexBuilder};
use regex_syntax::ast::ErrorKind as AstErrorKind;

use crate::lines::logical_lines;
use crate::table::{Node, Pattern, Rule, Table};
use crate::template::Template;
use crate::{
    Action, CheckKind, MAX_IF_DEPTH, MAX_RULES, MAX_SOURCE, ParseError, REGEX_DFA_SIZE_LIMIT,
    REGEX_SIZE_LIMIT,
};

pub(crate) fn parse_table(kind: CheckKind, source: &str) -> Result<Table, ParseError> {
    if source.len() > MAX_SOURCE {
        return Err(ParseError {
            line: 0,
            reason: format!("the table is larger than {MAX_SOURCE} bytes"),
        });
    }
    // Open `if` blocks: the opening line, its pattern, the nodes so far.
    let mut stack: Vec<(usize, Pattern, Vec<Node>)> = Vec::new();
    let mut top: Vec<Node> = Vec::new();
    let mut count = 0usize;
    let mut rules = 0usize;
    for l in logical_lines(source)? {
        let err = |reason: String| ParseError {
            line: l.line,
            reason,
        };
        count += 1;
        if count > MAX_RULES {
            return Err(err(format!("more than {MAX_RULES} rules in one table")));
        }
        let text = l.text.trim_end();
        match keyword(text) {
            Some(Keyword::If(rest)) => {
                let (pattern, after) = pattern(rest.trim_start()).map_err(err)?;
                if !after.trim().is_empty() {
                    return Err(err(format!(
                        "text after the pattern of an if: {:?}",
                        after.trim()
                    )));
                }
                if stack.len() >= MAX_IF_DEPTH {
                    return Err(err(format!("if blocks nested deeper than {MAX_IF_DEPTH}")));
                }
                stack.push((l.line, pattern, Vec::new()));
            }
            Some(Keyword::Endif(rest)) => {
                if !rest.trim().is_empty() {
                    return Err(err(format!("text after endif: {:?}", rest.trim())));
                }
                let Some((line, pattern, body)) = stack.pop() else {
                    return Err(err("endif without a matching if".into()));
                };
                let node = Node::If {
                    line,
                    pattern,
                    body,
                };
                match stack.last_mut() {
                    Some((_, _, b)) => b.push(node),
                    None => top.push(node),
                }
            }
            None => {
                let rule = rule(kind, l.line, text).map_err(err)?;
                rules += 1;
                match stack.last_mut() {
                    Some((_, _, b)) => b.push(Node::Rule(rule)),
                    None => top.push(Node::Rule(rule)),
                }
            }
        }
    }
    if let Some((line, pattern, _)) = stack.pop() {
        return Err(ParseError {
            line,
            reason: format!("if {} without endif", pattern.source),
        });
    }
    Ok(Table::new(kind, top, rules))
}

enum Keyword<'a> {
    If(&'a str),
    Endif(&'a str),
}

/// `if` or `endif` (any case) followed by a non-alphanumeric character.
fn keyword(text: &str) -> Option<Keyword<'_>> {
    let word_end = text
        .find(|c: char| !c.is_ascii_alphanumeric())
        .unwrap_or(text.len());
    let (word, rest) = text.split_at(word_end);
    if word.eq_ignore_ascii_case("if") {
        Some(Keyword::If(rest))
    } else if word.eq_ignore_ascii_case("endif") {
        Some(Keyword::Endif(rest))
    } else {
        None
    }
}

fn rule(kind: CheckKind, line: usize, text: &str) -> Result<Rule, String> {
    let (pattern, rest) = pattern(text)?;
    let rest = rest.trim();
    if rest.is_empty() {
        return Err(format!("no action after the pattern {}", pattern.source));
    }
    let word_end = rest.find([' ', '\t']).unwrap_or(rest.len());
    let (word, text) = rest.split_at(word_end);
    let text = text.trim_start();
    let action = action(word)?;
    if action.needs_text() && text.is_empty() {
        return Err(format!("{action} needs text (what to put in)"));
    }
    let groups = (!pattern.negated).then(|| pattern.regex.captures_len() - 1);
    let template = Template::parse(text, groups)?;
    if kind == CheckKind::Header && action.needs_text() {
        let prefix = template.literal_prefix();
        let name_ok = prefix.find(':').is_some_and(|i| {
            i > 0
                && prefix[..i]
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && b != b':')
        });
        if !name_ok {
            return Err(format!(
                "{action} needs a header, \"Name: value\" (the name written out, not from a group): {text:?}"
            ));
        }
    }
    Ok(Rule {
        line,
        pattern,
        action,
        text: text.to_string(),
        template,
    })
}

fn action(word: &str) -> Result<Action, String> {
    Ok(match word.to_ascii_uppercase().as_str() {
        "REJECT" => Action::Reject,
        "DISCARD" => Action::Discard,
        "HOLD" => Action::Hold,
        "WARN" => Action::Warn,
        "INFO" => Action::Info,
        "IGNORE" => Action::Ignore,
        "REPLACE" => Action::Replace,
        "PREPEND" => Action::Prepend,
        "DUNNO" => Action::Dunno,
        "OK" => Action::Ok,
        "BCC" | "FILTER" | "REDIRECT" | "STRIP" | "PASS" => {
            return Err(format!(
                "action {word} is not supported by hamail (supported: REJECT, DISCARD, HOLD, WARN, INFO, IGNORE, REPLACE, PREPEND, DUNNO, OK)"
            ));
        }
        _ => {
            return Err(format!(
                "unknown action {word:?} (expected REJECT, DISCARD, HOLD, WARN, INFO, IGNORE, REPLACE, PREPEND, DUNNO or OK)"
            ));
        }
    })
}

/// `[!]<d>pattern<d>flags` at the start of `text`; the pattern and the rest.
fn pattern(text: &str) -> Result<(Pattern, &str), String> {
    let (negated, body) = match text.strip_prefix('!') {
        Some(b) => (true, b),
        None => (false, text),
    };
    let Some(delim) = body.chars().next() else {
        return Err("expected a pattern, /regex/".into());
    };
    if !delim.is_ascii_punctuation() || delim == '\\' {
        return Err(format!(
            "expected a pattern, /regex/, at {:?}",
            text.chars().take(40).collect::<String>()
        ));
    }
    let inner = &body[delim.len_utf8()..];
    let mut end = None;
    let mut escaped = false;
    for (i, c) in inner.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == delim {
            end = Some(i);
            break;
        }
    }
    let Some(end) = end else {
        return Err(format!("unterminated pattern: no closing {delim}"));
    };
    let regex_text = &inner[..end];
    if regex_text.is_empty() {
        return Err("empty pattern".into());
    }
    let after = &inner[end + delim.len_utf8()..];
    let flags_end = after.find([' ', '\t']).unwrap_or(after.len());
    let (flags, rest) = after.split_at(flags_end);
    let (mut ci, mut multi, mut extended) = (true, false, true);
    for f in flags.chars() {
        match f {
            'i' => ci = !ci,
            'm' => multi = !multi,
            'x' => extended = !extended,
            other => {
                return Err(format!(
                    "unknown flag {other:?} after the pattern (expected i, m or x)"
                ));
            }
        }
    }
    let source = format!(
        "{}{delim}{regex_text}{delim}{flags}",
        if negated { "!" } else { "" }
    );
    let syntax = if extended {
        regex_text.to_string()
    } else {
        basic_to_extended(regex_text)
    };
    let regex = compile(&syntax, ci, multi).map_err(|e| format!("pattern {source}: {e}"))?;
    let header_name = if negated {
        None
    } else {
        header_name(&syntax, multi)
    };
    // The same pattern for a RegexSet, its flags written inline (a set
    // shares one builder): the group cannot change what it matches, the
    // whole pattern parsed above.
    let set_syntax = format!(
        "(?{}{}:{syntax})",
        if ci { "i" } else { "" },
        if multi { "m" } else { "" }
    );
    Ok((
        Pattern {
            source,
            negated,
            regex,
            header_name,
            set_syntax,
            set_index: 0,
        },
        rest,
    ))
}

/// Compiles a pattern with the limits; look-around and backreferences
/// (PCRE's, which need backtracking) are named as such.
fn compile(syntax: &str, ci: bool, multi: bool) -> Result<Regex, String> {
    if let Err(e) = regex_syntax::ast::parse::Parser::new().parse(syntax) {
        return Err(match e.kind() {
            AstErrorKind::UnsupportedLookAround => {
                "look-ahead and look-behind are PCRE features hamail refuses (it matches without backtracking)".to_string()
            }
            AstErrorKind::UnsupportedBackreference => {
                "backreferences are a PCRE feature hamail refuses (it matches without backtracking)".to_string()
            }
            _ => format!("invalid regular expression: {}", one_line(&e.to_string())),
        });
    }
    RegexBuilder::new(syntax)
        .case_insensitive(ci)
        .multi_line(multi)
        // Bytes, as Postfix in the C locale: `.` is any byte, case folds
        // ASCII only; a message need not be UTF-8.
        .unicode(false)
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_DFA_SIZE_LIMIT)
        .build()
        .map_err(|e| match e {
            regex::Error::CompiledTooBig(limit) => {
                format!("the compiled pattern is larger than the limit of {limit} bytes")
            }
            other => format!(
                "invalid regular expression: {}",
                one_line(&other.to_string())
            ),
        })
}

/// The header name (lower case) a pattern can only match, when it starts
/// with `^Name:` written out (`^Subject:.*x`, not `^(Subject|From):` nor
/// `^Subject:|x`): the matcher then tries it only on headers of that name.
fn header_name(syntax: &str, multi: bool) -> Option<Vec<u8>> {
    use regex_syntax::hir::{HirKind, Look};
    let hir = regex_syntax::ParserBuilder::new()
        .unicode(false)
        .utf8(false)
        .multi_line(multi)
        .build()
        .parse(syntax)
        .ok()?;
    let HirKind::Concat(parts) = hir.kind() else {
        return None;
    };
    match parts.first().map(|h| h.kind()) {
        Some(HirKind::Look(Look::Start)) => {}
        _ => return None,
    }
    let HirKind::Literal(lit) = parts.get(1)?.kind() else {
        return None;
    };
    let colon = lit.0.iter().position(|b| *b == b':')?;
    let name = &lit.0[..colon];
    let field_char = |b: &u8| b.is_ascii_graphic() && *b != b':';
    (!name.is_empty() && name.iter().all(field_char)).then(|| name.to_ascii_lowercase())
}

/// regex's errors draw the pattern over several lines; one line for ours.
fn one_line(s: &str) -> String {
    let last = s.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or(s);
    last.trim().trim_start_matches("error:").trim().to_string()
}

/// POSIX basic syntax (the `x` flag toggled off) into extended: `\(`,
/// `\)`, `\{`, `\}`, `\|`, `\+`, `\?` are the operators, the bare
/// characters literals. Bracket expressions are copied as they are.
fn basic_to_extended(basic: &str) -> String {
    let mut out = String::with_capacity(basic.len() + 8);
    let chars: Vec<char> = basic.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '\\' if i + 1 < chars.len() => {
                let n = chars[i + 1];
                if "(){}|+?".contains(n) {
                    out.push(n);
                } else {
                    out.push('\\');
                    out.push(n);
                }
                i += 2;
            }
            '(' | ')' | '{' | '}' | '|' | '+' | '?' => {
                out.push('\\');
                out.push(c);
                i += 1;
            }
            '[' => {
                // Up to the closing ']' (a ']' first, or after '^', is literal).
                let start = i;
                i += 1;
                if i < chars.len() && chars[i] == '^' {
                    i += 1;
                }
                if i < chars.len() && chars[i] == ']' {
                    i += 1;
                }
                while i < chars.len() && chars[i] != ']' {
                    if chars[i] == '[' && i + 1 < chars.len() && ":.=".contains(chars[i + 1]) {
                        let close = chars[i + 1];
                        i += 2;
                        while i + 1 < chars.len() && !(chars[i] == close && chars[i + 1] == ']') {
                            i += 1;
                        }
                        i += 2;
                    } else {
                        i += 1;
                    }
                }
                i = (i + 1).min(chars.len());
                out.extend(&chars[start..i]);
            }
            _ => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_syntax_is_translated() {
        assert_eq!(basic_to_extended(r"a\(b\)c+"), r"a(b)c\+");
        assert_eq!(basic_to_extended(r"x\{2,3\}(y)"), r"x{2,3}\(y\)");
        assert_eq!(basic_to_extended(r"[(|)]a|b"), r"[(|)]a\|b");
        assert_eq!(basic_to_extended(r"[[:alpha:]+]\+"), r"[[:alpha:]+]+");
    }

    #[test]
    fn header_names_are_found_only_where_they_are_certain() {
        let name = |p: &str| header_name(p, false).map(|n| String::from_utf8(n).unwrap());
        assert_eq!(name("^Subject:.*viagra"), Some("subject".into()));
        assert_eq!(name("^X-Spam-Flag: YES$"), Some("x-spam-flag".into()));
        assert_eq!(name("^subject:"), Some("subject".into()));
        assert_eq!(name("^(Subject|From):"), None);
        assert_eq!(name("^Subject:|viagra"), None);
        assert_eq!(name("Subject:"), None);
        assert_eq!(name("^Subject *:"), None);
        assert_eq!(name("^(?i)Subject:"), None);
        assert_eq!(header_name("^Subject:", true), None);
    }

    #[test]
    fn keywords_need_a_word_boundary() {
        assert!(matches!(keyword("if /a/"), Some(Keyword::If(_))));
        assert!(matches!(keyword("IF!/a/"), Some(Keyword::If(_))));
        assert!(matches!(keyword("endif"), Some(Keyword::Endif(""))));
        assert!(keyword("iffy /a/").is_none());
        assert!(keyword("/if/ REJECT").is_none());
    }
}
