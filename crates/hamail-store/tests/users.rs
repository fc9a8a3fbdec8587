//! hamail-store: the users and sender-logins tables. A user lives in one of
//! our domains, an import is all or nothing, a re-hash is compare-and-set,
//! and a sender-allow entry needs its user.

use hamail_types::{Command, DomainKind, Outcome, PasswordHash};

mod support;
use support::{a, apply_all, d, open};

fn h(s: &str) -> PasswordHash {
    PasswordHash::parse(s).unwrap()
}

const H1: &str = "{SHA512-CRYPT}$6$salt$one";
const H2: &str = "{SHA256-CRYPT}$5$salt$two";
const ARGON: &str = "{ARGON2ID}$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA";

fn with_domains() -> (tempfile::TempDir, hamail_store::Store) {
    let (dir, s) = open();
    let o = apply_all(
        &s,
        &[
            Command::DomainAdd {
                domain: d("example.jp"),
                kind: DomainKind::Local,
            },
            Command::DomainAdd {
                domain: d("relay.jp"),
                kind: DomainKind::Relay,
            },
        ],
        1,
    );
    assert!(o.iter().all(Outcome::is_applied), "{o:?}");
    (dir, s)
}

fn reason(o: &Outcome) -> &str {
    match o {
        Outcome::Rejected { reason } => reason,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

fn detail(o: &Outcome) -> &str {
    match o {
        Outcome::Applied { detail } => detail,
        other => panic!("expected applied, got {other:?}"),
    }
}

#[test]
fn add_passwd_del() {
    let (_d, s) = with_domains();
    let u = a("alice@example.jp");
    let o = apply_all(
        &s,
        &[Command::UserAdd {
            address: u.clone(),
            hash: h(H1),
        }],
        1,
    );
    assert!(
        detail(&o[0]).contains("user alice@example.jp added"),
        "{o:?}"
    );
    let rec = s.user(&u).unwrap().unwrap();
    assert_eq!(rec.hash, h(H1));
    assert_eq!(rec.created_ms, rec.changed_ms);

    let before = s.state_digest().unwrap();
    let o = apply_all(
        &s,
        &[
            Command::UserAdd {
                address: u.clone(),
                hash: h(H2),
            },
            Command::UserPasswd {
                address: a("bob@example.jp"),
                hash: h(H2),
            },
            Command::UserDel {
                address: a("bob@example.jp"),
            },
        ],
        1,
    );
    assert_eq!(
        reason(&o[0]),
        "user alice@example.jp exists; use user passwd"
    );
    assert!(reason(&o[1]).contains("no such user: bob@example.jp"));
    assert!(reason(&o[2]).contains("no such user: bob@example.jp"));
    assert_eq!(
        s.state_digest().unwrap(),
        before,
        "rejections change nothing"
    );

    // A later entry: the change carries its time.
    let mut ap = hamail_store::Applier::new(&s);
    let ctx = hamail_store::ApplyContext {
        time_ms: 5_000,
        proposer: 1,
        log_index: 9,
    };
    let cmd = Command::UserPasswd {
        address: u.clone(),
        hash: h(ARGON),
    };
    assert!(ap.apply(&cmd, &ctx).unwrap().is_applied());
    ap.commit().unwrap();
    let changed = s.user(&u).unwrap().unwrap();
    assert_eq!(changed.hash, h(ARGON));
    assert_eq!(changed.created_ms, rec.created_ms, "creation time kept");
    assert_eq!(changed.changed_ms, 5_000);

    let o = apply_all(&s, &[Command::UserDel { address: u.clone() }], 1);
    assert!(o[0].is_applied(), "{o:?}");
    assert!(s.user(&u).unwrap().is_none());
    assert!(s.users(None).unwrap().is_empty());
}

#[test]
fn a_user_must_be_in_one_of_our_domains_of_any_kind() {
    let (_d, s) = with_domains();
    let o = apply_all(
        &s,
        &[
            Command::UserAdd {
                address: a("carol@elsewhere.jp"),
                hash: h(H1),
            },
            Command::UserAdd {
                address: a("carol@relay.jp"),
                hash: h(H1),
            },
        ],
        2,
    );
    assert_eq!(
        reason(&o[0]),
        "carol@elsewhere.jp is not in one of our domains (hamail domain list)"
    );
    assert!(o[1].is_applied(), "a relay domain is one of ours: {o:?}");
    let listed: Vec<String> = s
        .users(Some(&d("relay.jp")))
        .unwrap()
        .into_iter()
        .map(|(a, _)| a.to_string())
        .collect();
    assert_eq!(listed, ["carol@relay.jp"]);
    assert!(s.users(Some(&d("example.jp"))).unwrap().is_empty());
}

#[test]
fn import_is_all_or_nothing_and_names_the_first_bad_entry() {
    let (_d, s) = with_domains();
    apply_all(
        &s,
        &[Command::UserAdd {
            address: a("old@example.jp"),
            hash: h(H1),
        }],
        1,
    );
    let created = s.user(&a("old@example.jp")).unwrap().unwrap().created_ms;
    let before = s.state_digest().unwrap();
    let o = apply_all(
        &s,
        &[Command::UserImport {
            users: vec![
                (a("new@example.jp"), h(H1)),
                (a("x@nowhere.jp"), h(H1)),
                (a("y@nowhere2.jp"), h(H1)),
            ],
        }],
        1,
    );
    assert_eq!(
        reason(&o[0]),
        "import refused, nothing imported: x@nowhere.jp is not in one of our domains (hamail domain list)"
    );
    assert_eq!(s.state_digest().unwrap(), before);

    let o = apply_all(
        &s,
        &[Command::UserImport {
            users: vec![(a("dup@example.jp"), h(H1)), (a("dup@example.jp"), h(H2))],
        }],
        1,
    );
    assert!(
        reason(&o[0]).contains("dup@example.jp appears twice"),
        "{o:?}"
    );
    assert_eq!(s.state_digest().unwrap(), before);

    let o = apply_all(
        &s,
        &[Command::UserImport {
            users: vec![(a("new@example.jp"), h(H1)), (a("old@example.jp"), h(H2))],
        }],
        1,
    );
    assert_eq!(detail(&o[0]), "imported 2 users (1 new, 1 replaced)");
    let old = s.user(&a("old@example.jp")).unwrap().unwrap();
    assert_eq!(old.hash, h(H2), "an existing user is replaced");
    assert_eq!(old.created_ms, created);
    assert_eq!(s.users(None).unwrap().len(), 2);
}

#[test]
fn rehash_is_compare_and_set() {
    let (_d, s) = with_domains();
    let u = a("dave@example.jp");
    let o = apply_all(
        &s,
        &[
            Command::UserAdd {
                address: u.clone(),
                hash: h(H1),
            },
            // The operator changes the password after the smtpd verified H1...
            Command::UserPasswd {
                address: u.clone(),
                hash: h(H2),
            },
            // ...so the smtpd's upgrade of H1 must not undo it.
            Command::UserRehash {
                address: u.clone(),
                old: h(H1),
                new: h(ARGON),
            },
        ],
        3,
    );
    assert!(
        detail(&o[2]).contains("unchanged (its password changed meanwhile)"),
        "{o:?}"
    );
    assert_eq!(s.user(&u).unwrap().unwrap().hash, h(H2));

    let o = apply_all(
        &s,
        &[
            Command::UserRehash {
                address: u.clone(),
                old: h(H2),
                new: h(ARGON),
            },
            Command::UserRehash {
                address: a("gone@example.jp"),
                old: h(H2),
                new: h(ARGON),
            },
        ],
        1,
    );
    assert!(detail(&o[0]).contains("upgraded to ARGON2ID"), "{o:?}");
    assert!(detail(&o[1]).contains("unchanged"), "{o:?}");
    assert_eq!(s.user(&u).unwrap().unwrap().hash, h(ARGON));
    assert!(s.user(&a("gone@example.jp")).unwrap().is_none());
}

#[test]
fn sender_allow_needs_the_user_and_goes_with_it() {
    let (_d, s) = with_domains();
    let (u, v) = (a("erin@example.jp"), a("frank@example.jp"));
    let shared = a("sales@example.jp");
    let outside = a("erin@gmail.example");
    let o = apply_all(
        &s,
        &[Command::SenderAllow {
            sender: shared.clone(),
            user: u.clone(),
        }],
        1,
    );
    assert!(
        reason(&o[0]).contains("no such user: erin@example.jp"),
        "{o:?}"
    );
    assert!(s.sender_allows().unwrap().is_empty());

    let allow = |sender: &hamail_types::MailAddress, user: &hamail_types::MailAddress| {
        Command::SenderAllow {
            sender: sender.clone(),
            user: user.clone(),
        }
    };
    let o = apply_all(
        &s,
        &[
            Command::UserAdd {
                address: u.clone(),
                hash: h(H1),
            },
            Command::UserAdd {
                address: v.clone(),
                hash: h(H1),
            },
            allow(&shared, &u),
            allow(&shared, &v),
            allow(&outside, &u),
            allow(&shared, &u),
        ],
        2,
    );
    assert!(o.iter().all(Outcome::is_applied), "{o:?}");
    assert!(detail(&o[5]).contains("unchanged"), "{o:?}");
    assert_eq!(
        s.sender_allowed_users(&shared).unwrap(),
        [u.clone(), v.clone()]
    );
    assert_eq!(
        s.sender_allowed_users(&outside).unwrap(),
        std::slice::from_ref(&u)
    );
    assert!(s.sender_allowed_users(&u).unwrap().is_empty());
    assert_eq!(s.sender_allows().unwrap().len(), 3);

    let o = apply_all(
        &s,
        &[
            Command::SenderDeny {
                sender: shared.clone(),
                user: v.clone(),
            },
            Command::SenderDeny {
                sender: shared.clone(),
                user: v.clone(),
            },
        ],
        1,
    );
    assert!(o[0].is_applied());
    assert!(
        reason(&o[1])
            .contains("no sender-allow entry lets frank@example.jp send as sales@example.jp")
    );
    assert_eq!(
        s.sender_allowed_users(&shared).unwrap(),
        std::slice::from_ref(&u)
    );

    // Deleting erin deletes the entries that let erin send; the others stay.
    apply_all(&s, &[allow(&shared, &v)], 1);
    let o = apply_all(&s, &[Command::UserDel { address: u.clone() }], 1);
    assert!(
        detail(&o[0]).contains("with its 2 sender-allow entries"),
        "{o:?}"
    );
    assert_eq!(s.sender_allows().unwrap(), [(shared.clone(), v.clone())]);
}

#[test]
fn a_domain_with_users_is_not_deleted() {
    let (_d, s) = with_domains();
    let o = apply_all(
        &s,
        &[
            Command::UserAdd {
                address: a("gina@relay.jp"),
                hash: h(H1),
            },
            Command::DomainDel {
                domain: d("relay.jp"),
            },
        ],
        2,
    );
    assert_eq!(
        reason(&o[1]),
        "domain relay.jp still has 0 recipients, 0 aliases and 1 users; delete them first"
    );
    let o = apply_all(
        &s,
        &[
            Command::UserDel {
                address: a("gina@relay.jp"),
            },
            Command::DomainDel {
                domain: d("relay.jp"),
            },
        ],
        2,
    );
    assert!(o.iter().all(Outcome::is_applied), "{o:?}");
}

#[test]
fn users_and_sender_allows_travel_in_a_snapshot() {
    let (_d1, s1) = with_domains();
    apply_all(
        &s1,
        &[
            Command::UserAdd {
                address: a("hal@example.jp"),
                hash: h(ARGON),
            },
            Command::SenderAllow {
                sender: a("info@example.jp"),
                user: a("hal@example.jp"),
            },
        ],
        1,
    );
    let mut buf = Vec::new();
    s1.export_state(&mut buf).unwrap();
    let (_d2, s2) = open();
    s2.import_state(&mut buf.as_slice(), &[]).unwrap();
    assert_eq!(s2.state_digest().unwrap(), s1.state_digest().unwrap());
    assert_eq!(
        s2.user(&a("hal@example.jp")).unwrap().unwrap().hash,
        h(ARGON)
    );
    assert_eq!(
        s2.sender_allowed_users(&a("info@example.jp")).unwrap(),
        [a("hal@example.jp")]
    );
}
