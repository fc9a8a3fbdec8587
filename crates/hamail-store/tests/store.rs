//! hamail-store: apply is deterministic, rejections change nothing, and a
//! snapshot stream carries the state exactly.

use hamail_store::{Applier, ApplyContext, Store};
use hamail_types::{
    Command, DomainKind, DomainName, MailAddress, Outcome, PasswordHash, TransportSpec, ZoneRecord,
};
use proptest::prelude::*;

mod support;
use support::{a, apply_all, d, open};

fn arb_command() -> impl Strategy<Value = Command> {
    let domain = prop::sample::select(vec!["a.test", "b.test", "c.test"]).prop_map(d);
    let kind = prop::sample::select(vec![
        DomainKind::Local,
        DomainKind::Relay,
        DomainKind::Virtual,
    ]);
    let addr = (
        prop::sample::select(vec!["u1", "u2", "u3", "postmaster"]),
        prop::sample::select(vec!["a.test", "b.test", "c.test"]),
    )
        .prop_map(|(l, dm)| a(&format!("{l}@{dm}")));
    let hash = prop::sample::select(vec![
        "{SHA512-CRYPT}$6$salt$one",
        "{SHA256-CRYPT}$5$salt$two",
        "{ARGON2ID}$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA",
    ])
    .prop_map(|h| PasswordHash::parse(h).unwrap());
    prop_oneof![
        (domain.clone(), kind).prop_map(|(domain, kind)| Command::DomainAdd { domain, kind }),
        domain
            .clone()
            .prop_map(|domain| Command::DomainDel { domain }),
        (addr.clone(), "[a-z]{0,3}")
            .prop_map(|(address, value)| Command::RecipientAdd { address, value }),
        addr.clone()
            .prop_map(|address| Command::RecipientDel { address }),
        prop::collection::vec((addr.clone(), "[a-z]{0,2}"), 1..4)
            .prop_map(|entries| Command::RecipientImport { entries }),
        (addr.clone(), prop::collection::vec(addr.clone(), 0..3))
            .prop_map(|(address, targets)| Command::AliasAdd { address, targets }),
        (addr.clone(), prop::collection::vec(addr.clone(), 0..2))
            .prop_map(|(address, targets)| Command::AliasDel { address, targets }),
        domain.clone().prop_map(|domain| Command::TransportSet {
            domain,
            spec: TransportSpec::parse("smtp:[mx.example.net]:587").unwrap(),
            fallback: vec![],
        }),
        domain
            .clone()
            .prop_map(|domain| Command::TransportDel { domain }),
        domain.clone().prop_map(|zone| Command::ZoneCreate {
            records: base_zone(&zone),
            zone,
        }),
        (
            domain.clone(),
            prop::sample::select(vec!["www", "mail", "a.b"]),
            1u8..4
        )
            .prop_map(|(zone, label, last)| Command::RecordAdd {
                record: rec(&format!("{label}.{zone}"), "A", &format!("192.0.2.{last}")),
                zone,
            }),
        (domain.clone(), prop::sample::select(vec!["www", "mail"])).prop_map(|(zone, label)| {
            Command::RecordDelete {
                name: format!("{label}.{zone}"),
                zone,
                rtype: None,
                rdata: None,
            }
        }),
        domain.clone().prop_map(|zone| Command::ZoneDelete { zone }),
        (addr.clone(), hash.clone()).prop_map(|(address, hash)| Command::UserAdd { address, hash }),
        (addr.clone(), hash.clone())
            .prop_map(|(address, hash)| Command::UserPasswd { address, hash }),
        addr.clone()
            .prop_map(|address| Command::UserDel { address }),
        prop::collection::vec((addr.clone(), hash.clone()), 1..4)
            .prop_map(|users| Command::UserImport { users }),
        (addr.clone(), hash.clone(), hash).prop_map(|(address, old, new)| Command::UserRehash {
            address,
            old,
            new
        }),
        (addr.clone(), addr.clone())
            .prop_map(|(sender, user)| Command::SenderAllow { sender, user }),
        (addr.clone(), addr.clone())
            .prop_map(|(sender, user)| Command::SenderDeny { sender, user }),
        (addr.clone(), 1u64..5000)
            .prop_map(|(address, bytes)| Command::QuotaSet { address, bytes }),
        addr.prop_map(|address| Command::QuotaDel { address }),
        (domain.clone(), prop::option::of(1u64..5000)).prop_map(|(domain, message_size_limit)| {
            Command::DomainSet {
                domain,
                message_size_limit,
            }
        }),
        (
            prop::sample::select(vec![
                hamail_types::CheckKind::Header,
                hamail_types::CheckKind::Body
            ]),
            prop::sample::select(vec!["", "/a/ REJECT\n", "if /b/\n/c/ HOLD\nendif\n"])
        )
            .prop_map(|(kind, source)| Command::ChecksReplace {
                kind,
                source: source.into()
            }),
        (
            domain.clone(),
            prop::sample::select(vec!["s1", "s2"]),
            prop::sample::select(vec!["AAAA", "BBBB"])
        )
            .prop_map(|(domain, selector, p)| Command::DkimAdd {
                domain,
                keys: vec![hamail_types::DkimKey {
                    selector: selector.into(),
                    algorithm: hamail_types::DkimAlgorithm::Ed25519,
                    private_key: vec![1; 48],
                    public_key: p.into(),
                }],
            }),
        (
            domain,
            prop::sample::select(vec!["s1", "s2"]),
            any::<bool>()
        )
            .prop_map(|(domain, selector, last)| Command::DkimDel {
                domain,
                selector: selector.into(),
                last,
            }),
    ]
}

fn rec(name: &str, rtype: &str, rdata: &str) -> ZoneRecord {
    ZoneRecord {
        name: name.into(),
        ttl: 300,
        rtype: rtype.into(),
        rdata: rdata.into(),
    }
}

fn base_zone(zone: &DomainName) -> Vec<ZoneRecord> {
    vec![
        rec(
            zone.as_str(),
            "SOA",
            &format!("ns1.{zone}. hostmaster.{zone}. 1 3600 900 604800 300"),
        ),
        rec(zone.as_str(), "NS", &format!("ns1.{zone}.")),
    ]
}

#[test]
fn zone_serial_grows_with_every_change_and_history_records_it() {
    let (_d, s) = open();
    let z = d("example.jp");
    let mut cmds = vec![Command::ZoneCreate {
        zone: z.clone(),
        records: base_zone(&z),
    }];
    cmds.push(Command::RecordAdd {
        zone: z.clone(),
        record: rec("www.example.jp", "A", "192.0.2.1"),
    });
    cmds.push(Command::RecordAdd {
        zone: z.clone(),
        record: rec("www.example.jp", "A", "192.0.2.1"),
    });
    cmds.push(Command::RecordSet {
        zone: z.clone(),
        record: rec("www.example.jp", "A", "192.0.2.9"),
    });
    cmds.push(Command::RecordAdd {
        zone: z.clone(),
        record: rec("other.example.com", "A", "192.0.2.1"),
    });
    cmds.push(Command::RecordDelete {
        zone: z.clone(),
        name: "example.jp".into(),
        rtype: Some("NS".into()),
        rdata: None,
    });
    let mut replaced = base_zone(&z);
    replaced[0] = rec(
        "example.jp",
        "SOA",
        "ns1.example.jp. hostmaster.example.jp. 2026120201 3600 900 604800 300",
    );
    cmds.push(Command::ZoneReplace {
        zone: z.clone(),
        records: replaced,
    });
    let o = apply_all(&s, &cmds, 1);
    let ok: Vec<bool> = o.iter().map(Outcome::is_applied).collect();
    assert_eq!(ok, [true, true, false, true, false, false, true], "{o:?}");
    let st = s.zone(&z).unwrap().unwrap();
    assert_eq!(st.serial, 2026120201, "an imported higher serial is taken");
    let serials: Vec<u32> = st.history.iter().map(|h| h.serial).collect();
    assert_eq!(serials, [1, 2, 3, 2026120201]);
    let soa = st.records.iter().find(|r| r.rtype == "SOA").unwrap();
    assert!(soa.rdata.contains(" 2026120201 "), "{soa:?}");
    // One more change: the serial moves on from the imported one.
    apply_all(
        &s,
        &[Command::RecordAdd {
            zone: z.clone(),
            record: rec("mx.example.jp", "A", "192.0.2.2"),
        }],
        1,
    );
    assert_eq!(s.zone(&z).unwrap().unwrap().serial, 2026120202);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    /// The same commands give byte-identical state on two stores, whatever
    /// the grouping into write batches.
    #[test]
    fn same_commands_same_digest(cmds in prop::collection::vec(arb_command(), 1..60), chunk in 1usize..8) {
        let (_d1, s1) = open();
        let (_d2, s2) = open();
        let o1 = apply_all(&s1, &cmds, 1);
        let o2 = apply_all(&s2, &cmds, chunk);
        prop_assert_eq!(o1, o2);
        prop_assert_eq!(s1.state_digest().unwrap(), s2.state_digest().unwrap());
    }
}

#[test]
fn rejected_commands_change_nothing() {
    let (_d, s) = open();
    apply_all(
        &s,
        &[
            Command::DomainAdd {
                domain: d("example.jp"),
                kind: DomainKind::Relay,
            },
            Command::RecipientAdd {
                address: a("user@example.jp"),
                value: "x".into(),
            },
            Command::DomainAdd {
                domain: d("virt.jp"),
                kind: DomainKind::Virtual,
            },
        ],
        1,
    );
    let before = s.state_digest().unwrap();
    let bad = [
        Command::RecipientAdd {
            address: a("user@unknown.jp"),
            value: String::new(),
        },
        Command::RecipientAdd {
            address: a("user@virt.jp"),
            value: String::new(),
        },
        Command::DomainDel {
            domain: d("example.jp"),
        },
        Command::DomainDel {
            domain: d("nothere.jp"),
        },
        Command::DomainAdd {
            domain: d("example.jp"),
            kind: DomainKind::Local,
        },
        Command::RecipientDel {
            address: a("nobody@example.jp"),
        },
        Command::RecipientImport {
            entries: vec![
                (a("ok1@example.jp"), String::new()),
                (a("bad@unknown.jp"), String::new()),
            ],
        },
        Command::AliasAdd {
            address: a("x@unknown.jp"),
            targets: vec![a("y@example.jp")],
        },
        Command::AliasAdd {
            address: a("x@example.jp"),
            targets: vec![a("x@example.jp")],
        },
        Command::AliasDel {
            address: a("x@example.jp"),
            targets: vec![],
        },
        Command::TransportDel {
            domain: d("example.jp"),
        },
    ];
    for cmd in &bad {
        let o = apply_all(&s, std::slice::from_ref(cmd), 1);
        assert!(
            matches!(o[0], Outcome::Rejected { .. }),
            "{cmd:?} gave {o:?}"
        );
    }
    assert_eq!(s.state_digest().unwrap(), before);
    let o = apply_all(&s, &bad[..1], 1);
    let Outcome::Rejected { reason } = &o[0] else {
        unreachable!()
    };
    assert!(reason.contains("unknown.jp"), "{reason}");
}

#[test]
fn later_command_in_a_batch_sees_earlier_ones() {
    let (_d, s) = open();
    let o = apply_all(
        &s,
        &[
            Command::DomainAdd {
                domain: d("example.jp"),
                kind: DomainKind::Local,
            },
            Command::RecipientAdd {
                address: a("u@example.jp"),
                value: String::new(),
            },
            Command::DomainDel {
                domain: d("example.jp"),
            },
            Command::RecipientDel {
                address: a("u@example.jp"),
            },
            Command::DomainDel {
                domain: d("example.jp"),
            },
        ],
        5,
    );
    let applied: Vec<bool> = o.iter().map(Outcome::is_applied).collect();
    assert_eq!(applied, [true, true, false, true, true]);
    assert!(s.domains().unwrap().is_empty());
}

#[test]
fn snapshot_stream_round_trips_and_detects_corruption() {
    let (_d1, s1) = open();
    let mut cmds = vec![Command::DomainAdd {
        domain: d("example.jp"),
        kind: DomainKind::Relay,
    }];
    let entries = (0..5000)
        .map(|i| (a(&format!("user{i}@example.jp")), "x".to_string()))
        .collect();
    cmds.push(Command::RecipientImport { entries });
    apply_all(&s1, &cmds, 2);
    let mut buf = Vec::new();
    let meta = s1.export_state(&mut buf).unwrap();
    assert!(meta.contains_key("last_applied"));

    let (_d2, s2) = open();
    // s2 holds other data first: the install must replace it.
    apply_all(
        &s2,
        &[Command::DomainAdd {
            domain: d("other.jp"),
            kind: DomainKind::Local,
        }],
        1,
    );
    let digest = s2
        .import_state(&mut buf.as_slice(), &[("last_applied", vec![9])])
        .unwrap();
    assert_eq!(digest, s1.state_digest().unwrap());
    assert_eq!(s2.state_digest().unwrap(), s1.state_digest().unwrap());
    assert_eq!(s2.sm_meta_get("last_applied").unwrap(), Some(vec![9]));
    assert!(!s2.snapshot_install_pending().unwrap());

    let mut bad = buf.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x55;
    assert!(Store::verify_snapshot(&mut bad.as_slice()).is_err());
    assert!(Store::verify_snapshot(&mut &buf[..buf.len() - 3]).is_err());
    assert!(Store::verify_snapshot(&mut &b"garbage"[..]).is_err());
}

#[test]
fn log_append_range_truncate_purge() {
    let (_d, s) = open();
    let rows: Vec<(u64, Vec<u8>)> = (1..=10).map(|i| (i, vec![i as u8; 3])).collect();
    s.log_append(rows.iter().map(|(i, b)| (*i, b.as_slice())), true)
        .unwrap();
    assert_eq!(s.log_range(3, 6).unwrap().len(), 3);
    assert_eq!(s.log_last().unwrap().unwrap().0, 10);
    s.log_truncate_from(8).unwrap();
    assert_eq!(s.log_last().unwrap().unwrap().0, 7);
    s.log_purge_upto(4, "purged", b"p").unwrap();
    assert_eq!(s.log_range(0, 100).unwrap().first().unwrap().0, 5);
    assert_eq!(s.raft_meta_get("purged").unwrap(), Some(b"p".to_vec()));
}

#[test]
fn queue_entries_round_trip_and_queue_commands_apply() {
    use hamail_types::{NewMessage, QueueId, QueueSelector, RecipientStatus};
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let id = QueueId::new(1_700_000_000_000_000, 2);
    let msg = NewMessage {
        queue_id: id.clone(),
        sender: None,
        recipients: vec![MailAddress::parse("u@example.jp").unwrap()],
        owner: 2,
        client: "unknown[127.0.0.1]".into(),
        helo: "h".into(),
        smtputf8: false,
        eight_bit: false,
        held: false,
        content_filter: None,
        body: b"Subject: x\r\n\r\nbody\r\n".to_vec(),
    };
    let ctx = ApplyContext {
        time_ms: 42,
        proposer: 1,
        log_index: 7,
    };
    let insert = Command::QueueInsert {
        message: Box::new(msg),
    };
    let mut ap = Applier::new(&store);
    assert!(ap.apply(&insert, &ctx).unwrap().is_applied());
    // A second insert with the same id, even in the same batch, is refused.
    assert!(!ap.apply(&insert, &ctx).unwrap().is_applied());
    ap.commit().unwrap();
    let e = store.queue_entry(&id).unwrap().unwrap();
    assert_eq!((e.owner, e.epoch, e.arrival_ms, e.held), (2, 1, 42, false));
    assert_eq!(e.recipients[0].status, RecipientStatus::Pending);
    assert_eq!(
        store.queue_body(&id).unwrap().unwrap(),
        b"Subject: x\r\n\r\nbody\r\n"
    );
    let mut ap = Applier::new(&store);
    let hold = Command::QueueHold {
        which: QueueSelector::Ids(vec![id.clone()]),
        hold: true,
    };
    assert!(ap.apply(&hold, &ctx).unwrap().is_applied());
    ap.commit().unwrap();
    assert!(store.queue_entry(&id).unwrap().unwrap().held);
    let mut ap = Applier::new(&store);
    let other = QueueId::new(5, 1);
    let missing = Command::QueueDelete {
        which: QueueSelector::Ids(vec![other]),
    };
    assert!(!ap.apply(&missing, &ctx).unwrap().is_applied());
    let all = Command::QueueDelete {
        which: QueueSelector::All,
    };
    assert!(ap.apply(&all, &ctx).unwrap().is_applied());
    ap.commit().unwrap();
    assert!(store.queue_entries().unwrap().is_empty());
    assert!(store.queue_body(&id).unwrap().is_none());
}

/// A store, an apply context and two recipients for the queue tests.
fn queue_fixture() -> (
    tempfile::TempDir,
    Store,
    ApplyContext,
    MailAddress,
    MailAddress,
) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let ctx = ApplyContext {
        time_ms: 1,
        proposer: 1,
        log_index: 1,
    };
    let a = MailAddress::parse("a@example.jp").unwrap();
    let b = MailAddress::parse("b@example.jp").unwrap();
    (dir, store, ctx, a, b)
}

#[test]
fn delivery_results_are_fenced_by_the_lease_epoch() {
    use hamail_types::{NewMessage, QueueId, RecipientStatus};
    let (_dir, store, ctx, a, b) = queue_fixture();
    let mut ap = Applier::new(&store);
    let ids: Vec<QueueId> = (0..3).map(|i| QueueId::new(100 + i, 1)).collect();
    for id in &ids {
        let m = NewMessage {
            queue_id: id.clone(),
            sender: None,
            recipients: vec![a.clone(), b.clone()],
            owner: 1,
            client: String::new(),
            helo: String::new(),
            smtputf8: false,
            eight_bit: false,
            held: false,
            content_filter: None,
            body: b"x\r\n".to_vec(),
        };
        let cmd = Command::QueueInsert {
            message: Box::new(m),
        };
        assert!(ap.apply(&cmd, &ctx).unwrap().is_applied());
    }
    // Node 1 is lost: its messages go to nodes 2 and 3, epoch 2.
    let cmd = Command::QueueReassign {
        from: 1,
        to: vec![2, 3],
    };
    assert!(ap.apply(&cmd, &ctx).unwrap().is_applied());
    ap.commit().unwrap();
    let owners: Vec<(u64, u64)> = store
        .queue_entries()
        .unwrap()
        .iter()
        .map(|e| (e.owner, e.epoch))
        .collect();
    assert_eq!(owners, [(2, 2), (3, 2), (2, 2)]);

    let delivered = RecipientStatus::Delivered {
        reply: "250 ok".into(),
        time_ms: 2,
    };
    let result = |epoch, rcpt: &MailAddress| Command::QueueResult {
        queue_id: ids[0].clone(),
        epoch,
        results: vec![(rcpt.clone(), delivered.clone())],
        notice: None,
    };
    let mut ap = Applier::new(&store);
    // The old owner's late result: refused, nothing changes.
    let o = ap.apply(&result(1, &a), &ctx).unwrap();
    assert!(!o.is_applied(), "{o:?}");
    // The new owner's: applied; the message stays until b is final too.
    assert!(ap.apply(&result(2, &a), &ctx).unwrap().is_applied());
    ap.commit().unwrap();
    let e = store.queue_entry(&ids[0]).unwrap().unwrap();
    assert!(e.recipients[0].status.is_final() && !e.recipients[1].status.is_final());
    let mut ap = Applier::new(&store);
    let o = ap.apply(&result(2, &b), &ctx).unwrap();
    assert_eq!(
        o,
        Outcome::ResultRecorded(hamail_types::queue::ResultApplied {
            queue_id: ids[0].clone(),
            removed: true,
            notice: None,
        })
    );
    ap.commit().unwrap();
    assert!(store.queue_entry(&ids[0]).unwrap().is_none());
    assert!(store.queue_body(&ids[0]).unwrap().is_none());
}

#[test]
fn a_bounce_notice_is_queued_once_and_only_for_a_counted_result() {
    use hamail_types::{NewMessage, QueueId, RecipientStatus};
    let (_dir, store, ctx, a, b) = queue_fixture();
    let sender = MailAddress::parse("s@client.example").unwrap();
    let message = |id: QueueId, sender: Option<MailAddress>, rcpts: Vec<MailAddress>| NewMessage {
        queue_id: id,
        sender,
        recipients: rcpts,
        owner: 1,
        client: "local".into(),
        helo: String::new(),
        smtputf8: false,
        eight_bit: false,
        held: false,
        content_filter: None,
        body: b"x\r\n".to_vec(),
    };
    let bounced = RecipientStatus::Bounced {
        reason: "550 5.1.1 no such user".into(),
        time_ms: 2,
    };
    let queued = |id: &QueueId| store.queue_entry(id).unwrap().is_some();
    let id = QueueId::new(500, 1);
    let mut ap = Applier::new(&store);
    let insert = Command::QueueInsert {
        message: Box::new(message(
            id.clone(),
            Some(sender.clone()),
            vec![a.clone(), b.clone()],
        )),
    };
    assert!(ap.apply(&insert, &ctx).unwrap().is_applied());
    ap.commit().unwrap();
    let result = |epoch, n: u64| Command::QueueResult {
        queue_id: id.clone(),
        epoch,
        results: vec![(a.clone(), bounced.clone())],
        notice: Some(Box::new(message(
            QueueId::new(600 + n, 1),
            None,
            vec![sender.clone()],
        ))),
    };
    // A stale epoch: refused, and its notice is not queued.
    let mut ap = Applier::new(&store);
    assert!(!ap.apply(&result(7, 1), &ctx).unwrap().is_applied());
    ap.commit().unwrap();
    assert!(!queued(&QueueId::new(601, 1)));
    // The owner's: a is bounced, the notice is queued.
    let mut ap = Applier::new(&store);
    assert!(ap.apply(&result(1, 2), &ctx).unwrap().is_applied());
    ap.commit().unwrap();
    assert!(queued(&QueueId::new(602, 1)));
    // The same result again (a retried commit): a was already final, no
    // second notice.
    let mut ap = Applier::new(&store);
    assert!(ap.apply(&result(1, 3), &ctx).unwrap().is_applied());
    ap.commit().unwrap();
    assert!(!queued(&QueueId::new(603, 1)));
    // A notice's own bounce (sender <>) gets none.
    let mut ap = Applier::new(&store);
    let notice_id = QueueId::new(602, 1);
    let cmd = Command::QueueResult {
        queue_id: notice_id.clone(),
        epoch: 1,
        results: vec![(sender.clone(), bounced.clone())],
        notice: Some(Box::new(message(
            QueueId::new(604, 1),
            None,
            vec![sender.clone()],
        ))),
    };
    assert!(ap.apply(&cmd, &ctx).unwrap().is_applied());
    ap.commit().unwrap();
    assert!(!queued(&notice_id) && !queued(&QueueId::new(604, 1)));
}

#[test]
fn ca_rotation_moves_through_its_phases_in_order_only() {
    use hamail_types::{CaMaterial, CaPhase};
    let (_d, s) = open();
    let ca = |c: char| CaMaterial {
        fingerprint: std::iter::repeat_n(c, 64).collect(),
        cert_pem: "-----BEGIN CERTIFICATE-----\n".into(),
        key_pem: "-----BEGIN PRIVATE KEY-----\n".into(),
    };
    let fp = |c: char| -> String { std::iter::repeat_n(c, 64).collect() };
    let rotate = |o: char, n: char| Command::CaRotate {
        old: ca(o),
        new: ca(n),
    };
    let out = apply_all(
        &s,
        &[
            // Out of order before any rotation.
            Command::CaSwitch {
                fingerprint: fp('b'),
            },
            Command::CaRetire {
                fingerprint: fp('a'),
            },
            rotate('a', 'b'),
            // A second rotation while one is under way.
            rotate('a', 'c'),
            // Retire before switch; switch to an unknown CA.
            Command::CaRetire {
                fingerprint: fp('a'),
            },
            Command::CaSwitch {
                fingerprint: fp('c'),
            },
            Command::CaSwitch {
                fingerprint: fp('b'),
            },
            // The signing CA cannot be retired.
            Command::CaRetire {
                fingerprint: fp('b'),
            },
            Command::CaRetire {
                fingerprint: fp('a'),
            },
            // The next rotation starts from the CA that signs now.
            rotate('a', 'c'),
        ],
        1,
    );
    let applied: Vec<bool> = out.iter().map(|o| o.is_applied()).collect();
    assert_eq!(
        applied,
        [
            false, false, true, false, false, false, true, false, true, false
        ],
        "{out:?}"
    );
    let st = s.ca_state().unwrap().unwrap();
    assert_eq!(st.phase, CaPhase::Done);
    assert_eq!(st.signing, fp('b'));
    assert_eq!(st.trusted.len(), 1);
    assert!(
        Command::CaRotate {
            old: ca('a'),
            new: ca('a')
        }
        .validate()
        .is_err()
    );
}

/// A site rebuilt under its old name: `NodeRemove` then a `NodeAdmit` of the
/// same name. A leader applies them in two batches, a follower catching up
/// in one; both must admit the node under the same new id (a follower that
/// refused it kept a lower next id and, once leader, handed a member's own
/// id to the next joiner).
#[test]
fn a_rebuilt_name_is_admitted_the_same_in_any_batching() {
    let info = |name: &str| hamail_types::NodeInfo {
        name: name.into(),
        site: "s".into(),
        rpc_addr: "127.0.0.1:7400".into(),
        ..Default::default()
    };
    let key = || "ab".repeat(32);
    let token = |c: char| std::iter::repeat_n(c, 64).collect::<String>();
    let cmds = vec![
        Command::NodeRegister {
            node_id: 1,
            info: info("n1"),
            key_sha256: key(),
        },
        Command::TokenAdd {
            token_hash: token('a'),
            ttl_ms: 60_000,
        },
        Command::NodeAdmit {
            token_hash: token('a'),
            info: info("n2"),
            key_sha256: key(),
        },
        Command::NodeRemove { node_id: 2 },
        Command::TokenAdd {
            token_hash: token('b'),
            ttl_ms: 60_000,
        },
        Command::NodeAdmit {
            token_hash: token('b'),
            info: info("n2"),
            key_sha256: key(),
        },
        Command::TokenAdd {
            token_hash: token('c'),
            ttl_ms: 60_000,
        },
        Command::NodeAdmit {
            token_hash: token('c'),
            info: info("n4"),
            key_sha256: key(),
        },
    ];
    let (_d1, one_by_one) = open();
    let (_d2, together) = open();
    let a = apply_all(&one_by_one, &cmds, 1);
    // The follower: n2's first admission committed earlier, then the
    // removal and the new admission in one batch.
    let mut b = Vec::new();
    for group in [&cmds[..3], &cmds[3..]] {
        let mut ap = Applier::new(&together);
        for c in group {
            let ctx = ApplyContext {
                time_ms: 1_000 + b.len() as u64,
                proposer: 1,
                log_index: b.len() as u64,
            };
            b.push(ap.apply(c, &ctx).unwrap());
        }
        ap.commit().unwrap();
    }
    assert_eq!(a, b);
    assert_eq!(a[5], Outcome::Admitted { node_id: 3 }, "{a:?}");
    assert_eq!(a[7], Outcome::Admitted { node_id: 4 }, "{a:?}");
    assert_eq!(
        one_by_one.state_digest().unwrap(),
        together.state_digest().unwrap()
    );
}
