//! Recognises a plain query in a UDP packet (one question, opcode QUERY, at
//! most an OPT record without options) and writes its cache key, straight
//! from the bytes without decoding the message: the UDP worker's fast path.

/// A plain query: one question, opcode QUERY, at most an OPT record
/// without options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Plain {
    /// Length of the question section (it starts at byte 12).
    pub(super) question_len: usize,
    /// The OPT record's payload size and DO bit.
    pub(super) edns: Option<(u16, bool)>,
}

impl Plain {
    /// The largest answer the client takes: its EDNS payload size (at
    /// least 512) up to ours; 512 without EDNS (RFC 6891 6.2.5).
    pub(super) fn limit(&self, max_udp: u16) -> u16 {
        self.edns
            .map_or(512, |(payload, _)| payload.clamp(512, max_udp.max(512)))
    }
}

/// Writes the cache key of a plain query into `key` (RD/CD flags, question
/// name lower-cased, type and class, and the OPT payload size and DO bit);
/// None for anything that is not a plain query. Every count and length
/// read from the packet only indexes through `get`, never sums past it.
pub(super) fn plain_query(p: &[u8], key: &mut Vec<u8>) -> Option<Plain> {
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

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A query packet for `name` (labels), id 0xABCD, RD set; with `edns`,
    /// an OPT record offering 1232 bytes with the DO bit.
    pub(in crate::udp) fn query(name: &[&str], qtype: u16, edns: bool) -> Vec<u8> {
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
}
