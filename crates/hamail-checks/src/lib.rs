//! hamail-checks: Postfix's `header_checks` and `body_checks` regexp tables
//! (regexp_table(5), header_checks(5)), read as Postfix reads them and
//! matched without backtracking. Pure: no IO, no clock.
//!
//! Layout, in the order a table meets it:
//! - `lines.rs`: the file's physical lines into logical lines (comments,
//!   blank lines, continuation lines), each with its first line number
//! - `parse.rs`: a logical line into a rule, an `if` or an `endif`:
//!   `/pattern/flags`, `!/pattern/`, the flags i, m, x, the regex compiled
//!   with size limits (PCRE-only features refused, naming the line)
//! - `template.rs`: the action's text with `$1`, `${1}`, `$(1)`, `$$`
//! - `table.rs`: the compiled table and its matcher (first match wins,
//!   `if` blocks nested)
//! - `message.rs`: a whole message through the header and body tables: the
//!   verdict, the events to log, the rewritten message

mod lines;
mod message;
mod parse;
mod table;
mod template;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use message::{BODY_CHECKS_SIZE_LIMIT, Checks, Event, Outcome, Verdict, check_message};
pub use table::{Match, Rule, Table};

/// Which table: header_checks or body_checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    Header,
    Body,
}

impl CheckKind {
    pub const ALL: [CheckKind; 2] = [CheckKind::Header, CheckKind::Body];

    pub fn as_str(self) -> &'static str {
        match self {
            CheckKind::Header => "header",
            CheckKind::Body => "body",
        }
    }
}

impl fmt::Display for CheckKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CheckKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "header" | "header_checks" => Ok(CheckKind::Header),
            "body" | "body_checks" => Ok(CheckKind::Body),
            _ => Err(format!(
                "invalid check table {s:?}: expected header or body"
            )),
        }
    }
}

/// What a matching rule does (header_checks(5)). The actions Postfix has
/// and hamail does not (BCC, FILTER, REDIRECT, STRIP, PASS) are refused
/// when the table is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Action {
    /// 550 5.7.1 with the text; nothing is queued.
    Reject,
    /// Accepted towards the client, then dropped.
    Discard,
    /// Queued on hold.
    Hold,
    /// A log line only.
    Warn,
    /// A log line only.
    Info,
    /// The header (or body line) is removed.
    Ignore,
    /// The header (or body line) is replaced by the text.
    Replace,
    /// The text is inserted before the header (or body line).
    Prepend,
    /// Stop: no action for this header or line.
    Dunno,
    /// Stop: no action for this header or line.
    Ok,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Reject => "REJECT",
            Action::Discard => "DISCARD",
            Action::Hold => "HOLD",
            Action::Warn => "WARN",
            Action::Info => "INFO",
            Action::Ignore => "IGNORE",
            Action::Replace => "REPLACE",
            Action::Prepend => "PREPEND",
            Action::Dunno => "DUNNO",
            Action::Ok => "OK",
        }
    }

    /// Whether the action needs text (REPLACE and PREPEND do).
    pub fn needs_text(self) -> bool {
        matches!(self, Action::Replace | Action::Prepend)
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a table was refused: the first bad line, by number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct ParseError {
    /// 1-based number of the (first physical line of the) bad line.
    pub line: usize,
    pub reason: String,
}

/// Largest table source accepted (bytes).
pub const MAX_SOURCE: usize = 4 << 20;
/// Most rules (and `if` lines) in one table.
pub const MAX_RULES: usize = 20_000;
/// Deepest nesting of `if` blocks.
pub const MAX_IF_DEPTH: usize = 64;
/// Compiled size limit of one pattern (regex's `size_limit`).
pub const REGEX_SIZE_LIMIT: usize = 1 << 20;
/// Lazy-DFA cache limit of one pattern (regex's `dfa_size_limit`).
pub const REGEX_DFA_SIZE_LIMIT: usize = 1 << 20;

/// Parses and compiles a table. The whole source is checked: any bad line
/// refuses all of it, naming the first.
pub fn parse(kind: CheckKind, source: &str) -> Result<Table, ParseError> {
    parse::parse_table(kind, source)
}
