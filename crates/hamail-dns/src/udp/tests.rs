//! The UDP worker against the full handler: answers from the fast paths
//! (cache, prepared negative answers) equal hickory's, copy the DO bit,
//! respect every payload size, and outlive a store that cannot be read.

use super::plain::tests::query;
use super::*;

use std::net::{IpAddr, Ipv4Addr};

use arc_swap::ArcSwap;
use hamail_store::ZoneState;
use hamail_types::DomainName;
use hickory_proto::op::Message;
use hickory_proto::rr::RData;
use hickory_proto::serialize::binary::BinDecodable;

use crate::snapshot::Served;

const ZONE: &str = "$ORIGIN ex.\n$TTL 3600\n\
    @ IN SOA ns1 hostmaster 7 3600 600 86400 300\n@ IN NS ns1\n\
    ns1 IN A 192.0.2.53\nwww IN A 192.0.2.80\na.b IN A 192.0.2.81\n\
    *.wild IN A 192.0.2.82\nsub IN NS ns.sub\nns.sub IN A 192.0.2.99\n";

fn zones(text: &str) -> Vec<(DomainName, ZoneState)> {
    let zone = DomainName::parse("ex").unwrap();
    let records = crate::parse_zone_file(&zone, text).unwrap();
    vec![(
        zone,
        ZoneState {
            records,
            serial: 7,
            history: Vec::new(),
        },
    )]
}

fn handler() -> Arc<Handler> {
    let served = Arc::new(ArcSwap::from_pointee(Served::empty()));
    assert!(crate::snapshot::refresh(&served, || Ok::<_, String>(zones(ZONE))).is_some());
    Arc::new(Handler {
        served,
        allow_axfr: Vec::new(),
        max_udp_payload: 1232,
    })
}

fn src() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 5353)
}

/// The answer through the worker, and through the full handler alone.
fn both(h: &Arc<Handler>, packet: &[u8]) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut w = Worker::new(h.clone(), 1232, 1 << 20);
        let fast = w.answer(packet, src()).await.map(<[u8]>::to_vec);
        let request = Request::from_bytes(packet.to_vec(), src(), Protocol::Udp).ok();
        let full = match request {
            Some(request) => {
                let capture = Capture {
                    limit: 1232,
                    out: Arc::new(std::sync::Mutex::new(None)),
                };
                h.handle_request::<Capture, TokioTime>(&request, capture.clone())
                    .await;
                capture.out.lock().unwrap().take()
            }
            None => None,
        };
        (fast, full)
    })
}

fn summary(bytes: &[u8]) -> String {
    let m = Message::from_bytes(bytes).unwrap();
    let edns = m
        .edns
        .as_ref()
        .map(|e| format!("do={} payload={}", e.flags().dnssec_ok, e.max_payload()));
    let section = |rs: &[hickory_proto::rr::Record]| {
        rs.iter()
            .map(|r| format!("{} {} {}", r.name, r.ttl, r.record_type()))
            .collect::<Vec<_>>()
    };
    format!(
        "id={} rcode={:?} aa={} rd={} cd={} q={:?} an={:?} ns={:?} edns={edns:?}",
        m.metadata.id,
        m.metadata.response_code,
        m.metadata.authoritative,
        m.metadata.recursion_desired,
        m.metadata.checking_disabled,
        m.queries.iter().map(|q| q.to_string()).collect::<Vec<_>>(),
        section(&m.answers),
        section(&m.authorities),
    )
}

#[test]
fn negative_answers_from_prepared_pieces_equal_the_full_path() {
    let h = handler();
    for (name, qtype, edns, rcode) in [
        (&["nope", "ex"][..], 1u16, false, "NXDomain"),
        (&["NoPe", "Ex"][..], 1, true, "NXDomain"),
        (&["deep", "nope", "ex"][..], 28, true, "NXDomain"),
        (&["www", "ex"][..], 28, false, "NoError"),
        (&["b", "ex"][..], 1, true, "NoError"),
        (&["ex"][..], 15, true, "NoError"),
        (&["x", "wild", "ex"][..], 15, true, "NoError"),
    ] {
        let mut p = query(name, qtype, edns);
        p[3] |= 0x10; // CD, copied back
        let (fast, full) = both(&h, &p);
        let (fast, full) = (summary(&fast.unwrap()), summary(&full.unwrap()));
        // The SOA's owner points into the question: the client's case.
        let (fast, full) = (fast.to_lowercase(), full.to_lowercase());
        assert_eq!(fast, full, "{name:?} {qtype}");
        assert!(
            fast.contains(&format!("rcode={}", rcode.to_lowercase())),
            "{fast}"
        );
        assert!(
            fast.contains("aa=true") && fast.contains("cd=true"),
            "{fast}"
        );
        assert!(
            fast.contains("ns=[\"ex. 300 soa\"]"),
            "negative TTL: {fast}"
        );
        assert!(fast.contains("an=[]"), "{fast}");
    }
    // Names with data, wildcards and referrals are the catalog's.
    let (fast, _) = both(&h, &query(&["any", "wild", "ex"], 1, false));
    assert!(summary(&fast.unwrap()).contains("an=[\"any.wild.ex. 3600 A\"]"));
    let (fast, _) = both(&h, &query(&["www", "sub", "ex"], 1, false));
    let m = Message::from_bytes(&fast.unwrap()).unwrap();
    assert!(!m.metadata.authoritative && m.answers.is_empty());
    assert!(matches!(m.authorities[0].data, RData::NS(_)), "referral");
}

#[test]
fn answers_copy_the_do_bit() {
    let h = handler();
    for name in [
        &["www", "ex"][..],
        &["nope", "ex"][..],
        &["www", "sub", "ex"][..],
    ] {
        for dnssec_ok in [true, false] {
            let mut p = query(name, 1, true);
            let at = p.len() - 4;
            p[at] = if dnssec_ok { 0x80 } else { 0 };
            let (fast, full) = both(&h, &p);
            for a in [fast.unwrap(), full.unwrap()] {
                let m = Message::from_bytes(&a).unwrap();
                let e = m.edns.expect("an OPT record answers an OPT record");
                assert_eq!(e.flags().dnssec_ok, dnssec_ok, "{name:?}");
                assert_eq!(e.max_payload(), 1232, "our payload size");
            }
        }
    }
    // Without OPT, no OPT.
    let (fast, _) = both(&h, &query(&["nope", "ex"], 1, false));
    assert!(Message::from_bytes(&fast.unwrap()).unwrap().edns.is_none());
}

/// Client-supplied numbers at their edges: section counts (u16) and
/// the EDNS payload size (u16). Every packet gets an answer or
/// silence, never a panic; answers respect the size limit.
#[test]
fn edge_values_of_counts_and_payload_sizes() {
    let h = handler();
    let edges: [u16; 9] = [0, 1, 2, 511, 512, 1232, 1233, 0x8000, u16::MAX];
    for field in [4usize, 6, 8, 10] {
        for v in edges.into_iter().chain([u16::MAX - 1]) {
            for edns in [false, true] {
                let mut p = query(&["nope", "ex"], 1, edns);
                p[field..field + 2].copy_from_slice(&v.to_be_bytes());
                let (fast, _) = both(&h, &p);
                if let Some(a) = fast {
                    assert!(a.len() >= 12 && a.len() <= 1232, "{field} {v}");
                    assert_eq!(&a[..2], &p[..2]);
                }
            }
        }
    }
    for payload in edges.into_iter().chain([u16::MAX - 1]) {
        for name in [&["nope", "ex"][..], &["www", "ex"][..]] {
            let mut p = query(name, 1, true);
            let at = p.len() - 8;
            p[at..at + 2].copy_from_slice(&payload.to_be_bytes());
            let (fast, full) = both(&h, &p);
            let limit = usize::from(payload.clamp(512, 1232));
            for a in [fast.unwrap(), full.unwrap()] {
                assert!(a.len() <= limit, "{payload}");
                assert_eq!(
                    Message::from_bytes(&a).unwrap().metadata.response_code,
                    if name[0] == "www" {
                        ResponseCode::NoError
                    } else {
                        ResponseCode::NXDomain
                    }
                );
            }
        }
    }
    // A big answer against the smallest payloads: truncated, not overflowed.
    let mut zone = ZONE.to_string();
    for i in 0..100 {
        zone.push_str(&format!("many IN A 10.0.0.{i}\n"));
    }
    let served = Arc::new(ArcSwap::from_pointee(Served::empty()));
    crate::snapshot::refresh(&served, || Ok::<_, String>(zones(&zone)));
    let h = Arc::new(Handler {
        served,
        allow_axfr: Vec::new(),
        max_udp_payload: 1232,
    });
    for payload in [0u16, 1, 512, 1233, u16::MAX] {
        let mut p = query(&["many", "ex"], 1, true);
        let at = p.len() - 8;
        p[at..at + 2].copy_from_slice(&payload.to_be_bytes());
        let a = both(&h, &p).0.unwrap();
        let limit = usize::from(payload.clamp(512, 1232));
        assert!(a.len() <= limit, "{payload}: {}", a.len());
        if payload < 1233 && limit < 1700 {
            assert!(a[2] & 0x02 != 0 || a.len() > 512, "TC when cut: {payload}");
        }
    }
}

#[test]
fn a_store_read_error_keeps_the_previous_zones() {
    let h = handler();
    let before = both(&h, &query(&["www", "ex"], 1, false)).0.unwrap();
    assert!(crate::snapshot::refresh(&h.served, || Err("io error: disk gone")).is_none());
    let after = both(&h, &query(&["www", "ex"], 1, false)).0.unwrap();
    assert_eq!(before, after);
    assert_eq!(after[3] & 0x0F, 0, "still NOERROR, not REFUSED");
    // A zone that does not build keeps its previous version.
    let mut broken = zones(ZONE);
    broken[0].1.serial = 8;
    broken[0].1.records.retain(|r| r.rtype != "SOA");
    assert!(crate::snapshot::refresh(&h.served, || Ok::<_, String>(broken)).is_some());
    let again = both(&h, &query(&["www", "ex"], 1, false)).0.unwrap();
    assert_eq!(before, again);
}
