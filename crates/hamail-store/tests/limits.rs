//! hamail-store: mailbox quotas only for mailboxes we host, per-domain
//! settings only for our domains; both leave with what they belong to.

use hamail_types::{Command, DomainKind, Outcome};

mod support;
use support::{a, apply_all, d, open};

fn setup() -> (tempfile::TempDir, hamail_store::Store) {
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
            Command::RecipientAdd {
                address: a("box@example.jp"),
                value: String::new(),
            },
            Command::RecipientAdd {
                address: a("r@relay.jp"),
                value: String::new(),
            },
            Command::AliasAdd {
                address: a("alias@example.jp"),
                targets: vec![a("box@example.jp")],
            },
        ],
        1,
    );
    assert!(o.iter().all(Outcome::is_applied), "{o:?}");
    (dir, s)
}

#[test]
fn a_quota_is_only_for_a_mailbox_we_host_and_a_refusal_changes_nothing() {
    let (_d, s) = setup();
    let before = s.state_digest().unwrap();
    for (address, why) in [
        ("box@elsewhere.jp", "not one of our domains"),
        ("nobody@example.jp", "no such recipient"),
        ("alias@example.jp", "no such recipient"),
        ("r@relay.jp", "relay domain"),
    ] {
        let o = apply_all(
            &s,
            &[Command::QuotaSet {
                address: a(address),
                bytes: 1000,
            }],
            1,
        );
        let Outcome::Rejected { reason } = &o[0] else {
            panic!("quota for {address} applied: {o:?}");
        };
        assert!(
            reason.contains("is not hosted here") && reason.contains(why),
            "{reason}"
        );
    }
    let o = apply_all(
        &s,
        &[
            Command::QuotaDel {
                address: a("box@example.jp"),
            },
            Command::QuotaSet {
                address: a("box@example.jp"),
                bytes: 0,
            },
        ],
        1,
    );
    assert!(o.iter().all(|o| !o.is_applied()), "{o:?}");
    assert_eq!(s.state_digest().unwrap(), before);

    let o = apply_all(
        &s,
        &[Command::QuotaSet {
            address: a("box@example.jp"),
            bytes: 100 << 20,
        }],
        1,
    );
    assert!(o[0].is_applied(), "{o:?}");
    assert_eq!(
        s.quota(&a("box@example.jp")).unwrap().unwrap().bytes,
        100 << 20
    );
    assert_eq!(s.quotas(None).unwrap().len(), 1);
    // The recipient goes, and its quota with it (in the same batch).
    let o = apply_all(
        &s,
        &[
            Command::RecipientDel {
                address: a("box@example.jp"),
            },
            Command::QuotaDel {
                address: a("box@example.jp"),
            },
        ],
        2,
    );
    assert!(o[0].is_applied() && !o[1].is_applied(), "{o:?}");
    assert!(s.quotas(None).unwrap().is_empty());
}

#[test]
fn domain_settings_are_for_our_domains_and_go_with_them() {
    let (_d, s) = setup();
    let o = apply_all(
        &s,
        &[Command::DomainSet {
            domain: d("nothere.jp"),
            message_size_limit: Some(1000),
        }],
        1,
    );
    assert!(!o[0].is_applied(), "{o:?}");
    assert_eq!(
        s.domain_settings(&d("relay.jp"))
            .unwrap()
            .message_size_limit,
        None
    );
    apply_all(
        &s,
        &[Command::DomainSet {
            domain: d("relay.jp"),
            message_size_limit: Some(20 << 20),
        }],
        1,
    );
    assert_eq!(
        s.domain_settings(&d("relay.jp"))
            .unwrap()
            .message_size_limit,
        Some(20 << 20)
    );
    let o = apply_all(
        &s,
        &[
            Command::RecipientDel {
                address: a("r@relay.jp"),
            },
            Command::DomainDel {
                domain: d("relay.jp"),
            },
        ],
        2,
    );
    assert!(o.iter().all(Outcome::is_applied), "{o:?}");
    assert!(s.all_domain_settings().unwrap().is_empty());
}
