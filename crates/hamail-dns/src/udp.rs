//! The UDP side of the name server. Several sockets share each address
//! (SO_REUSEPORT), one worker each. A worker answers a plain query (one
//! question, opcode QUERY, optional OPT) from its own cache of encoded
//! answers when it can: the cached wire answer with the query's id and
//! question bytes patched in. A query for a name the zone does not hold
//! (NXDOMAIN) or of a type it does not hold there (NODATA) is answered from
//! the zone's prepared negative answer, not cached (a random-name flood
//! leaves the cache alone). Otherwise the query goes through the full
//! handler (hickory's catalog and our policy) and a cacheable answer is
//! kept. Each worker owns its cache (no lock on the query path, bounded by
//! bytes) and drops it when the zone snapshot changes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{DNSClass, Record, RecordType};
use hickory_proto::serialize::binary::BinEncoder;
use hickory_server::net::NetError;
use hickory_server::net::runtime::TokioTime;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponse;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use crate::cache::AnswerCache;
use crate::names::Class;
use crate::negative;
use crate::server::Handler;

/// Makes a UDP socket that shares its address with the other workers.
pub(crate) fn reuseport_socket(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let domain = if addr.is_ipv4() {
        socket2::Domain::IPV4
    } else {
        socket2::Domain::IPV6
    };
    let s = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    let _ = s.set_recv_buffer_size(4 << 20);
    s.bind(&addr.into())?;
    UdpSocket::from_std(s.into())
}

/// A plain query: one question, opcode QUERY, at most an OPT record
/// without options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Plain {
    /// Length of the question section (it starts at byte 12).
    question_len: usize,
    /// The OPT record's payload size and DO bit.
    edns: Option<(u16, bool)>,
}

impl Plain {
    /// The largest answer the client takes: its EDNS payload size (at
    /// least 512) up to ours; 512 without EDNS (RFC 6891 6.2.5).
    fn limit(&self, max_udp: u16) -> u16 {
        self.edns
            .map_or(512, |(payload, _)| payload.clamp(512, max_udp.max(512)))
    }
}

/// Writes the cache key of a plain query into `key` (RD/CD flags, question
/// name lower-cased, type and class, and the OPT payload size and DO bit);
/// None for anything that is not a plain query. Every count and length
/// read from the packet only indexes through `get`, never sums past it.
fn plain_query(p: &[u8], key: &mut Vec<u8>) -> Option<Plain> {
    key.clear();
    if p.len() < 17 {
        return None;
    }
    let flags = p[2];
    // QR=0, opcode QUERY, not truncated.
    if flags & 0x80 != 0 || (flags >> 3) & 0x0F != 0 || flags & 0x02 != 0 {
        return None;
    }
    let count = |i: usize| u16::from_be_bytes([p[i], p[i + 1]]);
    let (qd, an, ns, ar) = (count(4), count(6), count(8), count(10));
    if qd != 1 || an != 0 || ns != 0 || ar > 1 {
        return None;
    }
    key.push(p[2] & 0x01);
    key.push(p[3] & 0x10);
    // The question name: plain labels only, no compression.
    let mut i = 12;
    let mut name_len = 0usize;
    loop {
        let len = *p.get(i)? as usize;
        if len == 0 {
            key.push(0);
            i += 1;
            break;
        }
        name_len += len + 1;
        if len > 63 || name_len + 1 > 255 {
            return None;
        }
        let label = p.get(i + 1..i + 1 + len)?;
        key.push(len as u8);
        key.extend(label.iter().map(|b| b.to_ascii_lowercase()));
        i += 1 + len;
    }
    let tail = p.get(i..i + 4)?;
    let qtype = u16::from_be_bytes([tail[0], tail[1]]);
    // Transfers, ANY and meta types always take the full path.
    if matches!(qtype, 0 | 251 | 252 | 255) {
        return None;
    }
    key.extend_from_slice(tail);
    let qend = i + 4;
    let mut edns = None;
    if ar == 1 {
        // OPT: root name, type 41, class = payload, ttl, rdlen, no options.
        let o = p.get(qend..qend + 11)?;
        if o[0] != 0 || u16::from_be_bytes([o[1], o[2]]) != 41 {
            return None;
        }
        let version = o[6];
        let rdlen = u16::from_be_bytes([o[9], o[10]]);
        if version != 0 || rdlen != 0 || p.len() != qend + 11 {
            return None;
        }
        key.extend_from_slice(&[1, o[3], o[4], o[7] & 0x80]);
        edns = Some((u16::from_be_bytes([o[3], o[4]]), o[7] & 0x80 != 0));
    } else if p.len() != qend {
        return None;
    }
    Some(Plain {
        question_len: qend - 12,
        edns,
    })
}

/// Captures the encoded answer instead of sending it.
#[derive(Clone)]
struct Capture {
    /// The largest answer the client takes.
    limit: u16,
    out: Arc<std::sync::Mutex<Option<Vec<u8>>>>,
}

#[async_trait::async_trait]
impl ResponseHandler for Capture {
    async fn send_response<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, NetError> {
        let mut bytes = Vec::with_capacity(512);
        let mut encoder = BinEncoder::new(&mut bytes);
        encoder.set_max_size(self.limit);
        let info = response
            .destructive_emit(&mut encoder)
            .map_err(|e| NetError::from(std::io::Error::other(e.to_string())))?;
        if let Ok(mut o) = self.out.lock() {
            *o = Some(bytes);
        }
        Ok(info)
    }
}

/// A header-only FORMERR for a packet we could not decode (if it has a header).
fn formerr(p: &[u8]) -> Option<Vec<u8>> {
    if p.len() < 12 || p[2] & 0x80 != 0 {
        return None;
    }
    let mut h = vec![0u8; 12];
    h[0] = p[0];
    h[1] = p[1];
    h[2] = 0x80 | (p[2] & 0x79); // QR, opcode and RD kept
    h[3] = ResponseCode::FormErr.low();
    Some(h)
}

/// What one UDP worker owns: its cache and its buffers.
pub(crate) struct Worker {
    handler: Arc<Handler>,
    cache: AnswerCache,
    max_udp: u16,
    key: Vec<u8>,
    out: Vec<u8>,
}

impl Worker {
    pub(crate) fn new(handler: Arc<Handler>, max_udp: u16, cache_bytes: usize) -> Self {
        Worker {
            handler,
            cache: AnswerCache::new(cache_bytes),
            max_udp,
            key: Vec::with_capacity(300),
            out: Vec::with_capacity(1500),
        }
    }

    /// The answer to one packet (None: nothing to send). In order: the
    /// cache; a negative answer from prepared pieces; the full handler,
    /// whose complete authoritative answers are kept in the cache.
    pub(crate) async fn answer(&mut self, packet: &[u8], src: SocketAddr) -> Option<&[u8]> {
        let plain = plain_query(packet, &mut self.key);
        if let Some(q) = plain {
            let qlen = q.question_len;
            if let Some(answer) = self.cache.get(&self.key) {
                self.out.clear();
                self.out.extend_from_slice(answer);
                self.out[0] = packet[0];
                self.out[1] = packet[1];
                // The question as the client wrote it (0x20 case and all).
                self.out[12..12 + qlen].copy_from_slice(&packet[12..12 + qlen]);
                return Some(&self.out);
            }
            if self.negative(packet, q) {
                return Some(&self.out);
            }
        }
        let request = match Request::from_bytes(packet.to_vec(), src, Protocol::Udp) {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(%src, error = %e, "dns: malformed packet");
                self.out = formerr(packet)?;
                return Some(&self.out);
            }
        };
        let limit = request
            .edns
            .as_ref()
            .map_or(512, |e| e.max_payload().clamp(512, self.max_udp.max(512)));
        let capture = Capture {
            limit,
            out: Arc::new(std::sync::Mutex::new(None)),
        };
        self.handler
            .handle_request::<Capture, TokioTime>(&request, capture.clone())
            .await;
        let answer = capture.out.lock().ok().and_then(|mut o| o.take())?;
        // Keep complete authoritative answers (NOERROR or NXDOMAIN, not truncated).
        if plain.is_some()
            && answer.len() >= 12
            && answer[2] & 0x04 != 0
            && answer[2] & 0x02 == 0
            && matches!(answer[3] & 0x0F, 0 | 3)
        {
            self.cache.insert(&self.key, answer.clone());
        }
        self.out = answer;
        Some(&self.out)
    }

    /// NXDOMAIN or NODATA for a plain query, written into `out` from the
    /// zone's prepared pieces; false if the name has data (or is not ours,
    /// or the answer would not fit), for the full path to answer.
    fn negative(&mut self, packet: &[u8], q: Plain) -> bool {
        // The key: RD, CD, then the question as the packet has it, lower-cased.
        let Some(question) = self.key.get(2..2 + q.question_len) else {
            return false;
        };
        let (name, tail) = question.split_at(q.question_len - 4);
        let qtype = RecordType::from(u16::from_be_bytes([tail[0], tail[1]]));
        if u16::from_be_bytes([tail[2], tail[3]]) != u16::from(DNSClass::IN) {
            return false;
        }
        let served = self.handler.served.load();
        let Some((apex_offset, zone, class)) = served.classify(name, qtype) else {
            return false;
        };
        let nxdomain = match class {
            Class::NxDomain => true,
            Class::NoData => false,
            Class::Answer | Class::Referral(_) => return false,
        };
        let query = negative::Query {
            packet,
            question_len: q.question_len,
            apex_offset,
            edns_do: q.edns.map(|(_, dnssec_ok)| dnssec_ok),
        };
        negative::write(
            &mut self.out,
            &query,
            &zone.negative,
            nxdomain,
            self.max_udp,
            q.limit(self.max_udp).into(),
        )
    }

    /// Drops every cached answer (the zones changed).
    fn clear(&mut self) {
        self.cache.clear();
    }
}

/// Cached answers per worker, in bytes (keys, answers and bookkeeping).
const CACHE_BYTES: usize = 32 << 20;

pub(crate) async fn worker(
    socket: UdpSocket,
    handler: Arc<Handler>,
    generation: Arc<AtomicU64>,
    max_udp: u16,
    cancel: CancellationToken,
) {
    let mut worker = Worker::new(handler, max_udp, CACHE_BYTES);
    let mut seen = generation.load(Ordering::Acquire);
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, src) = tokio::select! {
            _ = cancel.cancelled() => return,
            r = socket.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!(error = %e, "dns: udp receive failed");
                    continue;
                }
            },
        };
        let now = generation.load(Ordering::Acquire);
        if now != seen {
            worker.clear();
            seen = now;
        }
        if let Some(answer) = worker.answer(&buf[..n], src).await {
            let _ = socket.send_to(answer, src).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &[&str], qtype: u16, edns: bool) -> Vec<u8> {
        let mut p = vec![0xAB, 0xCD, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, u8::from(edns)];
        for l in name {
            p.push(l.len() as u8);
            p.extend_from_slice(l.as_bytes());
        }
        p.push(0);
        p.extend_from_slice(&qtype.to_be_bytes());
        p.extend_from_slice(&[0, 1]);
        if edns {
            p.extend_from_slice(&[0, 0, 41, 0x04, 0xD0, 0, 0, 0x80, 0, 0, 0]);
        }
        p
    }

    fn key_of(p: &[u8]) -> Option<(Vec<u8>, usize)> {
        let mut k = Vec::new();
        plain_query(p, &mut k).map(|q| (k, q.question_len))
    }

    #[test]
    fn keys_plain_queries_case_insensitively() {
        let (a, qa) = key_of(&query(&["WWW", "example", "jp"], 1, false)).unwrap();
        let (b, qb) = key_of(&query(&["www", "EXAMPLE", "jp"], 1, false)).unwrap();
        assert!(a == b && qa == qb);
        let (c, _) = key_of(&query(&["www", "example", "jp"], 1, true)).unwrap();
        assert!(c != a && c.ends_with(&[1, 0x04, 0xD0, 0x80]));
        assert!(
            key_of(&query(&["www"], 252, false)).is_none(),
            "AXFR takes the full path"
        );
        assert!(key_of(&[0u8; 5]).is_none());
        let mut trailing = query(&["www"], 1, false);
        trailing.push(0);
        assert!(key_of(&trailing).is_none());
        let mut pointer = query(&["www"], 1, false);
        pointer[12] = 0xC0;
        assert!(key_of(&pointer).is_none());
    }

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
        assert!(crate::server::refresh(&served, || Ok::<_, String>(zones(ZONE))).is_some());
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
        crate::server::refresh(&served, || Ok::<_, String>(zones(&zone)));
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
        assert!(crate::server::refresh(&h.served, || Err("io error: disk gone")).is_none());
        let after = both(&h, &query(&["www", "ex"], 1, false)).0.unwrap();
        assert_eq!(before, after);
        assert_eq!(after[3] & 0x0F, 0, "still NOERROR, not REFUSED");
        // A zone that does not build keeps its previous version.
        let mut broken = zones(ZONE);
        broken[0].1.serial = 8;
        broken[0].1.records.retain(|r| r.rtype != "SOA");
        assert!(crate::server::refresh(&h.served, || Ok::<_, String>(broken)).is_some());
        let again = both(&h, &query(&["www", "ex"], 1, false)).0.unwrap();
        assert_eq!(before, again);
    }
}
