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

mod plain;
#[cfg(test)]
mod tests;

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

use crate::answer::Handler;
use crate::cache::AnswerCache;
use crate::names::Class;
use crate::negative;
use plain::{Plain, plain_query};

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
