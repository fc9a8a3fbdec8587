//! hamail-store: a DKIM key and its TXT record are added and deleted
//! together, all or nothing; a key needs one of our domains and a zone of
//! ours holding its name; the last key goes only with `last`; no zone edit
//! takes a key's record away.

use hamail_types::{Command, DkimAlgorithm, DkimKey, DomainKind, Outcome, ZoneRecord};

mod support;
use support::{apply_all, d, open};

fn key(selector: &str, algorithm: DkimAlgorithm, p: &str) -> DkimKey {
    DkimKey {
        selector: selector.into(),
        algorithm,
        private_key: vec![1, 2, 3],
        public_key: p.into(),
    }
}

fn add(domain: &str, keys: Vec<DkimKey>) -> Command {
    Command::DkimAdd {
        domain: d(domain),
        keys,
    }
}

fn del(domain: &str, selector: &str, last: bool) -> Command {
    Command::DkimDel {
        domain: d(domain),
        selector: selector.into(),
        last,
    }
}

fn rejected(o: &Outcome) -> &str {
    match o {
        Outcome::Rejected { reason } => reason,
        other => panic!("applied: {other:?}"),
    }
}

fn r(name: &str, rtype: &str, rdata: &str) -> ZoneRecord {
    ZoneRecord {
        name: name.into(),
        ttl: 300,
        rtype: rtype.into(),
        rdata: rdata.into(),
    }
}

fn setup() -> (tempfile::TempDir, hamail_store::Store) {
    let (dir, s) = open();
    let o = apply_all(
        &s,
        &[
            Command::DomainAdd {
                domain: d("example.com"),
                kind: DomainKind::Local,
            },
            Command::DomainAdd {
                domain: d("nozone.example"),
                kind: DomainKind::Local,
            },
            Command::ZoneCreate {
                zone: d("example.com"),
                records: vec![
                    r(
                        "example.com",
                        "SOA",
                        "ns1.example.com. h.example.com. 1 3600 900 604800 300",
                    ),
                    r("example.com", "NS", "ns1.example.com."),
                ],
            },
        ],
        1,
    );
    assert!(o.iter().all(Outcome::is_applied), "{o:?}");
    (dir, s)
}

fn txts(s: &hamail_store::Store) -> Vec<ZoneRecord> {
    s.zone(&d("example.com"))
        .unwrap()
        .unwrap()
        .records
        .into_iter()
        .filter(|r| r.rtype == "TXT")
        .collect()
}

#[test]
fn keys_and_records_go_together() {
    let (_dir, s) = setup();
    let long = "A".repeat(392);
    let o = apply_all(
        &s,
        &[add(
            "example.com",
            vec![
                key("r1", DkimAlgorithm::Rsa, &long),
                key("e1", DkimAlgorithm::Ed25519, "BBBB"),
            ],
        )],
        1,
    );
    assert!(o[0].is_applied(), "{o:?}");
    let keys = s.dkim_keys().unwrap();
    assert_eq!(keys.len(), 2);
    assert_eq!(s.dkim_version().unwrap(), 1);
    let t = txts(&s);
    assert_eq!(t.len(), 2, "{t:?}");
    let rsa = t
        .iter()
        .find(|r| r.name == "r1._domainkey.example.com")
        .unwrap();
    assert!(
        rsa.rdata.starts_with("\"v=DKIM1; k=rsa; p=AAA"),
        "{}",
        rsa.rdata
    );
    assert_eq!(rsa.rdata.matches("\" \"").count(), 1, "two strings");
    assert_eq!(s.zone(&d("example.com")).unwrap().unwrap().serial, 2);

    // Refusals change nothing.
    let before = s.state_digest().unwrap();
    let o = apply_all(
        &s,
        &[
            add(
                "example.com",
                vec![key("e1", DkimAlgorithm::Ed25519, "CCCC")],
            ),
            add(
                "nozone.example",
                vec![key("e1", DkimAlgorithm::Ed25519, "CCCC")],
            ),
            add(
                "other.example",
                vec![key("e1", DkimAlgorithm::Ed25519, "CCCC")],
            ),
            // The second key's selector is taken: not even the first goes in.
            add(
                "example.com",
                vec![
                    key("e2", DkimAlgorithm::Ed25519, "DDDD"),
                    key("r1", DkimAlgorithm::Rsa, "EEEE"),
                ],
            ),
            Command::RecordDelete {
                zone: d("example.com"),
                name: "e1._domainkey.example.com".into(),
                rtype: Some("TXT".into()),
                rdata: None,
            },
            Command::ZoneDelete {
                zone: d("example.com"),
            },
            Command::DomainDel {
                domain: d("example.com"),
            },
        ],
        1,
    );
    assert!(rejected(&o[0]).contains("selector e1 of example.com exists already"));
    assert!(rejected(&o[1]).contains("no zone of ours holds e1._domainkey.nozone.example"));
    assert!(rejected(&o[2]).contains("other.example is not one of our domains"));
    assert!(rejected(&o[3]).contains("selector r1 of example.com exists already"));
    assert!(rejected(&o[4]).contains("publishes the DKIM key e1 of example.com"));
    assert!(rejected(&o[5]).contains("publishes the DKIM key"));
    assert!(rejected(&o[6]).contains("still has 2 DKIM keys"));
    assert_eq!(s.state_digest().unwrap(), before);

    // Delete: the record goes with the key; the last key only with `last`.
    let o = apply_all(
        &s,
        &[
            del("example.com", "r1", false),
            del("example.com", "e1", false),
            del("example.com", "nope", true),
        ],
        1,
    );
    assert!(o[0].is_applied(), "{o:?}");
    assert!(rejected(&o[1]).contains("e1 is the last DKIM key of example.com"));
    assert!(rejected(&o[2]).contains("no DKIM key with selector nope"));
    let t = txts(&s);
    assert_eq!(t.len(), 1);
    assert_eq!(t[0].name, "e1._domainkey.example.com");
    let o = apply_all(&s, &[del("example.com", "e1", true)], 1);
    assert!(o[0].is_applied(), "{o:?}");
    assert!(s.dkim_keys().unwrap().is_empty());
    assert!(txts(&s).is_empty());
    assert_eq!(s.dkim_version().unwrap(), 3);
}
