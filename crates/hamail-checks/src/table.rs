//! A compiled table and its matcher: rules are tried in order and the
//! first that matches wins; an `if` block's rules are tried only when its
//! pattern matches (or, for `if !/.../`, does not). A header table is
//! indexed by the header name a rule's pattern starts with (`^Subject:`):
//! a header is tried only against the rules for its name and the rules
//! for any name, still in source order.

use std::collections::HashMap;

use regex::bytes::Regex;

use crate::template::Template;
use crate::{Action, CheckKind};

/// A compiled pattern and how it was written.
#[derive(Debug, Clone)]
pub(crate) struct Pattern {
    /// As written: `!/regex/flags`.
    pub source: String,
    pub negated: bool,
    pub regex: Regex,
    /// The only header name (lower case) the pattern can match, if it
    /// says so by starting with `^Name:`.
    pub header_name: Option<Vec<u8>>,
}

impl Pattern {
    fn matches(&self, input: &[u8]) -> bool {
        self.regex.is_match(input) != self.negated
    }
}

/// One rule of a table.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Where it starts in the source (1-based).
    pub line: usize,
    pub(crate) pattern: Pattern,
    pub action: Action,
    /// The text after the action, as written (`$1` not filled in).
    pub text: String,
    pub(crate) template: Template,
}

impl Rule {
    /// The pattern as written, with its delimiters, `!` and flags.
    pub fn pattern(&self) -> &str {
        &self.pattern.source
    }
}

#[derive(Debug, Clone)]
pub(crate) enum Node {
    Rule(Rule),
    If {
        line: usize,
        pattern: Pattern,
        body: Vec<Node>,
    },
}

/// A whole header_checks or body_checks table, compiled.
#[derive(Debug, Clone)]
pub struct Table {
    kind: CheckKind,
    nodes: Vec<Node>,
    rules: usize,
    /// For a header table: which top-level nodes to try for a header name.
    index: Option<Index>,
}

#[derive(Debug, Clone, Default)]
struct Index {
    /// Nodes (by position) that can match only headers of this name.
    by_name: HashMap<Vec<u8>, Vec<usize>>,
    /// Nodes that may match any header.
    any: Vec<usize>,
}

impl Index {
    fn new(nodes: &[Node]) -> Index {
        let mut ix = Index::default();
        for (i, n) in nodes.iter().enumerate() {
            let pattern = match n {
                Node::Rule(r) => &r.pattern,
                Node::If { pattern, .. } => pattern,
            };
            match &pattern.header_name {
                Some(name) => ix.by_name.entry(name.clone()).or_default().push(i),
                None => ix.any.push(i),
            }
        }
        ix
    }

    /// The nodes to try for `input`, in source order.
    fn candidates<'a>(&'a self, input: &[u8]) -> impl Iterator<Item = usize> + 'a {
        let named: &[usize] = input
            .iter()
            .position(|b| *b == b':')
            .and_then(|c| self.by_name.get(&input[..c].to_ascii_lowercase()))
            .map_or(&[], Vec::as_slice);
        let (mut a, mut b) = (named.iter().peekable(), self.any.iter().peekable());
        std::iter::from_fn(move || match (a.peek(), b.peek()) {
            (Some(x), Some(y)) if x < y => a.next().copied(),
            (Some(_), Some(_)) | (None, Some(_)) => b.next().copied(),
            (Some(_), None) => a.next().copied(),
            (None, None) => None,
        })
    }
}

/// The rule that matched an input, with its text filled in.
#[derive(Debug, Clone)]
pub struct Match<'a> {
    pub rule: &'a Rule,
    /// The action's text with `$N` replaced by what the groups matched.
    pub text: Vec<u8>,
    /// The `if` lines whose blocks enclose the rule, outermost first.
    pub within: Vec<usize>,
}

impl Table {
    pub(crate) fn new(kind: CheckKind, nodes: Vec<Node>, rules: usize) -> Table {
        let index = (kind == CheckKind::Header).then(|| Index::new(&nodes));
        Table {
            kind,
            nodes,
            rules,
            index,
        }
    }

    pub fn kind(&self) -> CheckKind {
        self.kind
    }

    /// How many rules (not counting `if`/`endif` lines).
    pub fn rules(&self) -> usize {
        self.rules
    }

    pub fn is_empty(&self) -> bool {
        self.rules == 0
    }

    /// Every rule in source order (for listings).
    pub fn all_rules(&self) -> Vec<&Rule> {
        fn walk<'a>(nodes: &'a [Node], out: &mut Vec<&'a Rule>) {
            for n in nodes {
                match n {
                    Node::Rule(r) => out.push(r),
                    Node::If { body, .. } => walk(body, out),
                }
            }
        }
        let mut out = Vec::with_capacity(self.rules);
        walk(&self.nodes, &mut out);
        out
    }

    /// The first rule that matches `input` (one logical header, unfolded,
    /// or one body line without its line break).
    pub fn find(&self, input: &[u8]) -> Option<Match<'_>> {
        let mut within = Vec::new();
        let rule = match &self.index {
            Some(ix) => ix
                .candidates(input)
                .find_map(|i| node_match(&self.nodes[i], input, &mut within))?,
            None => first_match(&self.nodes, input, &mut within)?,
        };
        let text = if rule.template.has_groups() {
            let caps = rule.pattern.regex.captures(input);
            rule.template.fill(caps.as_ref())
        } else {
            rule.template.fill(None)
        };
        Some(Match { rule, text, within })
    }
}

fn first_match<'a>(nodes: &'a [Node], input: &[u8], within: &mut Vec<usize>) -> Option<&'a Rule> {
    nodes.iter().find_map(|n| node_match(n, input, within))
}

fn node_match<'a>(node: &'a Node, input: &[u8], within: &mut Vec<usize>) -> Option<&'a Rule> {
    match node {
        Node::Rule(r) => r.pattern.matches(input).then_some(r),
        Node::If {
            line,
            pattern,
            body,
        } => {
            if !pattern.matches(input) {
                return None;
            }
            within.push(*line);
            let found = first_match(body, input, within);
            if found.is_none() {
                within.pop();
            }
            found
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::{Action, CheckKind, parse};

    fn table(src: &str) -> crate::Table {
        parse(CheckKind::Header, src).unwrap()
    }

    fn hit(t: &crate::Table, input: &str) -> Option<(usize, Action, String)> {
        t.find(input.as_bytes()).map(|m| {
            (
                m.rule.line,
                m.rule.action,
                String::from_utf8(m.text).unwrap(),
            )
        })
    }

    #[test]
    fn first_match_wins_and_case_is_ignored_by_default() {
        let t = table(
            "/^Subject:.*viagra/ REJECT no spam\n/^Subject:/ WARN any subject\n/^X-Case: A$/i HOLD case\n",
        );
        assert_eq!(
            hit(&t, "SUBJECT: Buy VIAGRA"),
            Some((1, Action::Reject, "no spam".into()))
        );
        assert_eq!(
            hit(&t, "Subject: hello"),
            Some((2, Action::Warn, "any subject".into()))
        );
        // `i` toggles case-insensitivity off.
        assert_eq!(hit(&t, "X-Case: a"), None);
        assert_eq!(hit(&t, "X-Case: A"), Some((3, Action::Hold, "case".into())));
        assert_eq!(hit(&t, "From: a@b"), None);
    }

    #[test]
    fn negated_patterns_and_nested_ifs() {
        let t = table(concat!(
            "if /^Subject:/\n",
            "  # inside the first block\n",
            "if !/urgent/\n",
            "/money/ REJECT money without urgency\n",
            "endif\n",
            "/money/ DISCARD urgent money\n",
            "endif\n",
            "!/^(Subject|From|To|Received|Date):/ IGNORE\n",
        ));
        assert_eq!(
            hit(&t, "Subject: money"),
            Some((4, Action::Reject, "money without urgency".into()))
        );
        assert_eq!(
            hit(&t, "Subject: urgent money"),
            Some((6, Action::Discard, "urgent money".into()))
        );
        assert_eq!(hit(&t, "Subject: hello"), None);
        assert_eq!(hit(&t, "From: money@example.com"), None);
        assert_eq!(
            hit(&t, "X-Mailer: money"),
            Some((8, Action::Ignore, String::new()))
        );
        let m = t.find(b"Subject: money").unwrap();
        assert_eq!(m.within, vec![1, 3]);
        assert_eq!(t.rules(), 3);
        assert_eq!(
            t.all_rules().iter().map(|r| r.line).collect::<Vec<_>>(),
            vec![4, 6, 8]
        );
    }

    #[test]
    fn the_name_index_keeps_source_order() {
        let t = table(concat!(
            "/^Subject:.*a/ WARN named first\n",
            "/bb/ INFO any\n",
            "/^SUBJECT:.*bb/ HOLD named after any\n",
            "/^From:/ DUNNO\n",
            "if /^Subject:/\n/: c/ REJECT in if\nendif\n",
            "!/^Subject:/ IGNORE\n",
        ));
        assert_eq!(hit(&t, "Subject: a bb").map(|h| h.0), Some(1));
        assert_eq!(hit(&t, "subject: bb").map(|h| h.0), Some(2));
        assert_eq!(hit(&t, "Subject: c").map(|h| h.0), Some(6));
        assert_eq!(hit(&t, "From: c").map(|h| h.0), Some(4));
        assert_eq!(hit(&t, "To: c").map(|h| h.0), Some(8));
        assert_eq!(hit(&t, "Subject: d"), None);
        assert_eq!(hit(&t, "no colon at all").map(|h| h.0), Some(8));
    }

    #[test]
    fn groups_fill_the_text() {
        let t = table("/^Subject: (.*)\\[SPAM\\](.*)$/ REPLACE Subject: ${1}$2 (was spam)\n");
        assert_eq!(
            hit(&t, "Subject: hi [SPAM] there"),
            Some((1, Action::Replace, "Subject: hi  there (was spam)".into()))
        );
    }

    #[test]
    fn multi_line_and_basic_syntax_flags() {
        let t = table("/^b$/m INFO multi\n/^x(y)+$/x WARN basic\n");
        assert!(hit(&t, "a\nb\nc").is_some());
        // Basic syntax: ( ) + are literals.
        assert!(hit(&t, "x(y)+").is_some());
        assert!(hit(&t, "xyy").is_none());
    }

    #[test]
    fn bytes_that_are_not_utf8_match() {
        let t = table("/^Subject: .*caf. / REJECT latin-1\n/^Subject: 未承諾/ REJECT japanese\n");
        assert!(t.find(b"Subject: caf\xe9 au lait").is_some());
        assert!(t.find("Subject: 未承諾広告".as_bytes()).is_some());
    }

    #[test]
    fn other_delimiters_and_escaped_delimiters() {
        let t = table("%^Subject: a/b% REJECT percent\n/^To: a\\/b/ REJECT slash\n");
        assert!(hit(&t, "Subject: a/b").is_some());
        assert_eq!(hit(&t, "To: a/b").map(|h| h.0), Some(2));
    }
}
