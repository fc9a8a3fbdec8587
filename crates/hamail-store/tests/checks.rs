//! hamail-store: the checks table is replaced whole, cleared by an empty
//! source, a bad source changes nothing, and every change moves the
//! version the smtpd compiles by.

use hamail_types::{CheckKind, Command, Outcome};

mod support;
use support::{apply_all, open};

fn replace(kind: CheckKind, source: &str) -> Command {
    Command::ChecksReplace {
        kind,
        source: source.into(),
    }
}

#[test]
fn replace_clear_and_refuse() {
    let (_d, s) = open();
    assert_eq!(s.checks_version().unwrap(), 0);
    assert!(s.checks(CheckKind::Header).unwrap().is_none());
    let o = apply_all(
        &s,
        &[
            replace(CheckKind::Header, "/^Subject: a/ REJECT\n"),
            replace(CheckKind::Body, "/spam/ DISCARD\n"),
            replace(CheckKind::Header, "/^Subject: b/ HOLD\n"),
        ],
        2,
    );
    assert!(o.iter().all(Outcome::is_applied), "{o:?}");
    assert_eq!(s.checks_version().unwrap(), 3);
    let h = s.checks(CheckKind::Header).unwrap().unwrap();
    assert_eq!(h.source, "/^Subject: b/ HOLD\n");
    assert_eq!(
        s.checks(CheckKind::Body).unwrap().unwrap().source,
        "/spam/ DISCARD\n"
    );

    // A bad table is refused whole, naming its line; nothing moves.
    let before = s.state_digest().unwrap();
    let o = apply_all(
        &s,
        &[replace(CheckKind::Header, "/ok/ DUNNO\n/bad(/ REJECT\n")],
        1,
    );
    match &o[0] {
        Outcome::Rejected { reason } => {
            assert!(reason.contains("header_checks line 2"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(s.state_digest().unwrap(), before);
    assert_eq!(s.checks_version().unwrap(), 3);

    // Empty clears; clearing nothing is a no-op.
    let o = apply_all(
        &s,
        &[
            replace(CheckKind::Body, ""),
            replace(CheckKind::Body, " \n"),
        ],
        1,
    );
    assert!(o.iter().all(Outcome::is_applied), "{o:?}");
    assert!(s.checks(CheckKind::Body).unwrap().is_none());
    assert_eq!(s.checks_version().unwrap(), 4);
}
