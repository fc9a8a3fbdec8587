//! The UDP side of the name server. Several sockets share each address
//! (SO_REUSEPORT), one worker each. A worker answers a plain query (one
//! question, opcode QUERY, optional OPT) from its own cache of encoded
//! answers when it can: the cached wire answer with the query's id and
//! question bytes patched in. Otherwise the query goes through the full
//! handler (hickory's catalog and our policy) and a cacheable answer is
//! kept. Each worker owns its cache (no lock on the query path) and drops
//! it when the zone snapshot changes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::Record;
use hickory_proto::serialize::binary::BinEncoder;
use hickory_server::net::NetError;
use hickory_server::net::runtime::TokioTime;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponse;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use crate::server::Handler;

/// Entries per worker cache before it is emptied.
const CACHE_LIMIT: usize = 200_000;

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

/// Writes the cache key of a plain query into `key` (question name
/// lower-cased, type and class, RD/CD flags, and the OPT payload size and
/// DO bit) and returns the length of the question section; None for
/// anything that is not a plain query.
fn plain_query(p: &[u8], key: &mut Vec<u8>) -> Option<usize> {
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
    } else if p.len() != qend {
        return None;
    }
    Some(qend - 12)
}

/// Captures the encoded answer instead of sending it.
#[derive(Clone)]
struct Capture {
    max_udp: u16,
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
        let limit = match response.edns() {
            Some(e) => e.max_payload().clamp(512, self.max_udp.max(512)),
            None => 512,
        };
        let mut bytes = Vec::with_capacity(512);
        let mut encoder = BinEncoder::new(&mut bytes);
        encoder.set_max_size(limit);
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

pub(crate) async fn worker(
    socket: UdpSocket,
    handler: Arc<Handler>,
    generation: Arc<AtomicU64>,
    max_udp: u16,
    cancel: CancellationToken,
) {
    let mut cache: HashMap<Box<[u8]>, Vec<u8>> = HashMap::new();
    let mut seen = generation.load(Ordering::Acquire);
    let mut buf = vec![0u8; 4096];
    let mut key = Vec::with_capacity(300);
    let mut out = Vec::with_capacity(1500);
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
            cache.clear();
            seen = now;
        }
        let packet = &buf[..n];
        let qlen = plain_query(packet, &mut key);
        if let Some(qlen) = qlen
            && let Some(answer) = cache.get(key.as_slice())
        {
            out.clear();
            out.extend_from_slice(answer);
            out[0] = packet[0];
            out[1] = packet[1];
            // The question as the client wrote it (0x20 case and all).
            out[12..12 + qlen].copy_from_slice(&packet[12..12 + qlen]);
            let _ = socket.send_to(&out, src).await;
            continue;
        }
        let request = match Request::from_bytes(packet.to_vec(), src, Protocol::Udp) {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(%src, error = %e, "dns: malformed packet");
                if let Some(r) = formerr(packet) {
                    let _ = socket.send_to(&r, src).await;
                }
                continue;
            }
        };
        let capture = Capture {
            max_udp,
            out: Arc::new(std::sync::Mutex::new(None)),
        };
        handler
            .handle_request::<Capture, TokioTime>(&request, capture.clone())
            .await;
        let Some(answer) = capture.out.lock().ok().and_then(|mut o| o.take()) else {
            continue;
        };
        let _ = socket.send_to(&answer, src).await;
        // Keep complete authoritative answers (NOERROR or NXDOMAIN, not truncated).
        if qlen.is_some()
            && answer.len() >= 12
            && answer[2] & 0x04 != 0
            && answer[2] & 0x02 == 0
            && matches!(answer[3] & 0x0F, 0 | 3)
        {
            if cache.len() >= CACHE_LIMIT {
                cache.clear();
            }
            cache.insert(key.as_slice().into(), answer);
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
        plain_query(p, &mut k).map(|q| (k, q))
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
