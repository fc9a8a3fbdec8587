//! Negative answers (NXDOMAIN and NODATA) assembled from pieces prepared
//! when the snapshot is built, like NSD: the header, the client's question
//! bytes, the zone's SOA (negative TTL, RFC 2308) whose owner is a pointer
//! into the question, and the OPT record. No decoding, no allocation but
//! the output buffer.

use hickory_proto::rr::Record;
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder, NameEncoding};

/// The SOA of a zone as negative answers carry it.
pub(crate) struct NegativeSoa {
    /// The record (negative TTL), for answers built through hickory.
    pub(crate) record: Record,
    /// Type, class, TTL, RDLENGTH and RDATA in wire form (names
    /// uncompressed): everything of the record after its owner name.
    after_owner: Vec<u8>,
}

impl NegativeSoa {
    /// None if the record cannot be encoded (it was parsed, so it can).
    pub(crate) fn new(record: Record) -> Option<Self> {
        let mut bytes = Vec::with_capacity(128);
        let mut encoder = BinEncoder::new(&mut bytes);
        encoder.set_name_encoding(NameEncoding::Uncompressed);
        record.emit(&mut encoder).ok()?;
        let owner_len = record.name.to_bytes().ok()?.len();
        let after_owner = bytes.get(owner_len..)?.to_vec();
        Some(NegativeSoa {
            record,
            after_owner,
        })
    }
}

/// What the query said that the answer repeats.
pub(crate) struct Query<'p> {
    /// The packet as received.
    pub(crate) packet: &'p [u8],
    /// Length of the question section (it starts at byte 12).
    pub(crate) question_len: usize,
    /// Offset of the zone's apex inside the question name.
    pub(crate) apex_offset: usize,
    /// The OPT record's DO bit, if the query had an OPT record.
    pub(crate) edns_do: Option<bool>,
}

/// Writes the negative answer into `out`: NXDOMAIN or NODATA (`nxdomain`
/// false), authoritative, the SOA in authority. Returns false (and `out`
/// holds nothing usable) when it would not fit in `limit` bytes; the caller
/// then takes the full path, which truncates properly.
pub(crate) fn write(
    out: &mut Vec<u8>,
    q: &Query<'_>,
    soa: &NegativeSoa,
    nxdomain: bool,
    max_udp: u16,
    limit: usize,
) -> bool {
    out.clear();
    let p = q.packet;
    let question_end = 12 + q.question_len;
    let pointer = 12 + q.apex_offset;
    let opt_len = if q.edns_do.is_some() { 11 } else { 0 };
    let len = question_end + 2 + soa.after_owner.len() + opt_len;
    if p.len() < question_end || pointer > 0x3FFF || len > limit {
        return false;
    }
    // ID; QR, opcode QUERY, AA, RD copied; RA clear, CD copied, RCODE.
    out.extend_from_slice(&p[..2]);
    out.push(0x80 | 0x04 | (p[2] & 0x01));
    out.push((p[3] & 0x10) | if nxdomain { 3 } else { 0 });
    out.extend_from_slice(&[0, 1, 0, 0, 0, 1, 0, u8::from(q.edns_do.is_some())]);
    out.extend_from_slice(&p[12..question_end]);
    // The SOA's owner is the apex: a pointer into the question name.
    out.extend_from_slice(&(0xC000 | pointer as u16).to_be_bytes());
    out.extend_from_slice(&soa.after_owner);
    if let Some(dnssec_ok) = q.edns_do {
        // OPT: root, type 41, our payload size, version 0, DO copied (RFC 3225).
        out.extend_from_slice(&[0, 0, 41]);
        out.extend_from_slice(&max_udp.max(512).to_be_bytes());
        out.extend_from_slice(&[0, 0, if dnssec_ok { 0x80 } else { 0 }, 0, 0, 0]);
    }
    true
}
