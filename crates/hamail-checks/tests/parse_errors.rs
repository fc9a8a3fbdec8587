//! Every way a table is refused: the first bad line is named, with a
//! reason an operator can act on.

use hamail_checks::{CheckKind, parse};

fn refused(src: &str) -> (usize, String) {
    let e = parse(CheckKind::Header, src).unwrap_err();
    (e.line, e.to_string())
}

#[test]
fn each_error_names_its_line_and_cause() {
    let cases: &[(&str, usize, &str)] = &[
        (
            "/ok/ DUNNO\n/a(/ REJECT x\n",
            2,
            "invalid regular expression",
        ),
        (
            "/ok/ DUNNO\n\n/a/ FROBNICATE x\n",
            3,
            "unknown action \"FROBNICATE\"",
        ),
        ("/a/ REDIRECT x@example.com\n", 1, "not supported by hamail"),
        ("# c\nif /^Subject:/\n/a/ REJECT\n", 2, "without endif"),
        ("/a/ REJECT\nendif\n", 2, "endif without a matching if"),
        ("if /a/\nif /b/\n/c/ WARN\nendif\n", 1, "without endif"),
        ("/(?=x)a/ REJECT\n", 1, "look-ahead and look-behind"),
        ("/(?<!x)a/ REJECT\n", 1, "look-ahead and look-behind"),
        ("/(a)\\1/ REJECT\n", 1, "backreferences"),
        (
            "/a/ REJECT\n/unterminated REJECT\n",
            2,
            "unterminated pattern",
        ),
        ("/a/q REJECT\n", 1, "unknown flag 'q'"),
        ("/a/\n", 1, "no action"),
        ("REJECT everything\n", 1, "expected a pattern"),
        ("/a/ REPLACE\n", 1, "REPLACE needs text"),
        ("/a/ PREPEND no colon here\n", 1, "needs a header"),
        ("/(a)/ REPLACE $1: x\n", 1, "needs a header"),
        ("/(a)/ REJECT $2\n", 1, "does not have"),
        ("!/a/ REJECT $1\n", 1, "negated"),
        (
            "if /a/ REJECT\nendif\n",
            1,
            "text after the pattern of an if",
        ),
        ("if /a/\nendif now\n", 2, "text after endif"),
        ("  /a/ REJECT\n", 1, "continuation"),
        ("//  REJECT\n", 1, "empty pattern"),
        ("/a{1000}{1000}/ REJECT\n", 1, "larger than the limit"),
    ];
    for (src, line, what) in cases {
        let (l, e) = refused(src);
        assert_eq!(l, *line, "{src:?}: {e}");
        assert!(e.contains(what), "{src:?}: {e} (wanted {what:?})");
        assert!(e.starts_with(&format!("line {line}: ")), "{e}");
    }
}

#[test]
fn a_multi_line_rule_is_named_by_its_first_line() {
    let (l, e) = refused("/a/ DUNNO\n/b(/\n  REJECT x\n");
    assert_eq!(l, 2, "{e}");
}

#[test]
fn a_scenario_4_style_table_is_accepted_as_it_is() {
    let src = "\
# /etc/postfix/header_checks
/^Subject:.*(viagra|cialis)/        REJECT Spam is not accepted here
/^Subject: *$/                      WARN empty subject
/^X-Mailer: .*(Mass|Bulk) Mailer/   HOLD
/^Received: from .*\\.example\\.invalid/
        DISCARD forged relay
/^X-Originating-IP:/                IGNORE
/^Subject: \\[SPAM\\] (.*)/          REPLACE Subject: $1
/^From: .*@partner\\.example/        PREPEND X-Partner: yes
if /^To:/
!/@example\\.(jp|com)>?$/           INFO outside recipient
endif
/^Content-Type: .*name=.*\\.(exe|scr|pif)/  REJECT 5.7.1 attachment type not allowed
";
    let t = parse(CheckKind::Header, src).unwrap();
    assert_eq!(t.rules(), 9);
    let lines: Vec<usize> = t.all_rules().iter().map(|r| r.line).collect();
    assert_eq!(lines, vec![2, 3, 4, 5, 7, 8, 9, 11, 13]);
    assert_eq!(t.all_rules()[3].text, "forged relay");
    assert_eq!(
        t.all_rules()[3].pattern(),
        "/^Received: from .*\\.example\\.invalid/"
    );
}

#[test]
fn an_empty_table_parses() {
    let t = parse(CheckKind::Body, "# nothing yet\n\n").unwrap();
    assert!(t.is_empty());
}
