//! How a query becomes an answer (NSD's answer.c): the RequestHandler that
//! every TCP query, and every UDP query the worker's fast paths cannot
//! answer, goes through.
//!
//! Only class IN is answered (CH `version.bind` and friends get REFUSED),
//! zone transfers only over TCP to addresses in the allow list, and what
//! the zone's name index decides without hickory (referrals, NXDOMAIN,
//! NODATA: see names.rs) is built here. hickory's catalog answers the rest,
//! the names that hold data. Every answer with an OPT record carries the
//! query's DO bit and our payload size.

use std::net::IpAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use hickory_proto::op::{Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::{DNSClass, Record, RecordType};
use hickory_server::net::NetError;
use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::{MessageResponse, MessageResponseBuilder};

use crate::names::Class;
use crate::snapshot::{Cut, Served, ZoneData};

/// Records per AXFR message: well under 64 KiB for any record we hold.
const AXFR_RECORDS_PER_MESSAGE: usize = 100;

/// Answers a query from the snapshot current when it arrives; one serves
/// the TCP listeners, one is shared by the UDP workers.
pub(crate) struct Handler {
    pub(crate) served: Arc<ArcSwap<Served>>,
    pub(crate) allow_axfr: Vec<IpAddr>,
    /// Offered in the OPT record of every answer.
    pub(crate) max_udp_payload: u16,
}

fn header_of(request: &Request, code: ResponseCode) -> Header {
    let mut metadata = Metadata::new(
        request.metadata.id,
        MessageType::Response,
        request.metadata.op_code,
    );
    metadata.response_code = code;
    Header {
        metadata,
        counts: HeaderCounts::default(),
    }
}

async fn refuse<R: ResponseHandler>(
    request: &Request,
    mut response: R,
    code: ResponseCode,
) -> ResponseInfo {
    let msg =
        MessageResponseBuilder::new(&request.queries, None).error_msg(&request.metadata, code);
    match response.send_response(msg).await {
        Ok(info) => info,
        Err(e) => {
            tracing::debug!(error = %e, "dns: sending a refusal failed");
            header_of(request, ResponseCode::ServFail).into()
        }
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response: R,
    ) -> ResponseInfo {
        let served = self.served.load_full();
        // Every answer with an OPT record copies the query's DO bit (RFC
        // 3225) and offers our own payload size.
        let response = EdnsReply {
            inner: response,
            dnssec_ok: request.edns.as_ref().is_some_and(|e| e.flags().dnssec_ok),
            max_payload: self.max_udp_payload.max(512),
        };
        if request.metadata.op_code == OpCode::Query
            && let Ok(info) = request.request_info()
        {
            let q = info.query;
            if q.query_class() != DNSClass::IN {
                return refuse(request, response, ResponseCode::Refused).await;
            }
            if matches!(q.query_type(), RecordType::AXFR | RecordType::IXFR) {
                if request.protocol() != Protocol::Tcp
                    || !self.allow_axfr.contains(&request.src().ip())
                {
                    tracing::info!(src = %request.src(), zone = %q.name(), "dns: zone transfer refused");
                    return refuse(request, response, ResponseCode::Refused).await;
                }
                return match served.zones.get(q.name()) {
                    // IXFR is answered with the whole zone (RFC 1995 4).
                    Some(z) => transfer(request, response, z).await,
                    None => refuse(request, response, ResponseCode::NotAuth).await,
                };
            }
            // EDNS versions we do not speak get BADVERS from the catalog.
            let edns_ok = request.edns.as_ref().is_none_or(|e| e.version() == 0);
            if edns_ok
                && let Some((_, zone, class)) =
                    served.classify(&crate::names::wire(q.name()), q.query_type())
            {
                match class {
                    Class::Answer => {}
                    Class::Referral(i) => {
                        if let Some(cut) = zone.cuts.get(i) {
                            return referral(request, response, cut).await;
                        }
                    }
                    Class::NoData => return negative(request, response, zone, false).await,
                    Class::NxDomain => return negative(request, response, zone, true).await,
                }
            }
        }
        served
            .catalog
            .handle_request::<EdnsReply<R>, T>(request, response)
            .await
    }
}

/// Sends what it is given with the response's OPT record (if any) carrying
/// the query's DO bit and our payload size: hickory's catalog copies DO
/// only when built with DNSSEC, and echoes the client's payload size.
#[derive(Clone)]
struct EdnsReply<R> {
    inner: R,
    dnssec_ok: bool,
    max_payload: u16,
}

#[async_trait::async_trait]
impl<R: ResponseHandler> ResponseHandler for EdnsReply<R> {
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
        let edns = response.edns().cloned().map(|mut e| {
            e.set_dnssec_ok(self.dnssec_ok);
            e.set_max_payload(self.max_payload);
            e
        });
        match &edns {
            Some(e) => {
                let mut response = response;
                response.set_edns(e);
                self.inner.send_response(response).await
            }
            None => self.inner.send_response(response).await,
        }
    }
}

/// NXDOMAIN or NODATA through hickory's encoder (TCP, and UDP answers that
/// the prepared pieces do not fit): the zone's SOA in authority.
async fn negative<R: ResponseHandler>(
    request: &Request,
    mut response: R,
    zone: &ZoneData,
    nxdomain: bool,
) -> ResponseInfo {
    let mut metadata = Metadata::response_from_request(&request.metadata);
    metadata.authoritative = true;
    metadata.response_code = if nxdomain {
        ResponseCode::NXDomain
    } else {
        ResponseCode::NoError
    };
    let mut builder = MessageResponseBuilder::new(&request.queries, None);
    if let Some(edns) = &request.edns {
        builder.edns(edns);
    }
    let msg = builder.build(
        metadata,
        std::iter::empty(),
        std::iter::empty(),
        std::iter::once(&zone.negative.record),
        std::iter::empty(),
    );
    match response.send_response(msg).await {
        Ok(info) => info,
        Err(e) => {
            tracing::debug!(error = %e, "dns: sending a negative answer failed");
            header_of(request, ResponseCode::ServFail).into()
        }
    }
}

fn answer_header(request: &Request, authoritative: bool) -> Metadata {
    let mut m = Metadata::new(request.metadata.id, MessageType::Response, OpCode::Query);
    m.authoritative = authoritative;
    m.recursion_desired = request.metadata.recursion_desired;
    m.response_code = ResponseCode::NoError;
    m
}

/// A referral: the cut's NS in the authority section, glue in the
/// additional section, AA clear (RFC 1034 4.3.2).
async fn referral<R: ResponseHandler>(
    request: &Request,
    mut response: R,
    cut: &Cut,
) -> ResponseInfo {
    let mut builder = MessageResponseBuilder::new(&request.queries, None);
    if let Some(edns) = &request.edns {
        builder.edns(edns);
    }
    let msg = builder.build(
        answer_header(request, false),
        std::iter::empty(),
        cut.ns.iter(),
        std::iter::empty(),
        cut.glue.iter(),
    );
    match response.send_response(msg).await {
        Ok(info) => info,
        Err(e) => {
            tracing::debug!(error = %e, "dns: sending a referral failed");
            header_of(request, ResponseCode::ServFail).into()
        }
    }
}

/// A zone transfer: SOA, the records, SOA again, in as many messages as it
/// takes (RFC 5936), so zones of any size reach the secondaries.
async fn transfer<R: ResponseHandler>(
    request: &Request,
    mut response: R,
    z: &ZoneData,
) -> ResponseInfo {
    let mut all: Vec<&Record> = Vec::with_capacity(z.records.len() + 2);
    all.push(&z.soa);
    all.extend(z.records.iter());
    all.push(&z.soa);
    let mut last = None;
    for chunk in all.chunks(AXFR_RECORDS_PER_MESSAGE) {
        let msg = MessageResponseBuilder::new(&request.queries, None).build(
            answer_header(request, true),
            chunk.iter().copied(),
            std::iter::empty(),
            std::iter::empty(),
            std::iter::empty(),
        );
        match response.send_response(msg).await {
            Ok(info) => last = Some(info),
            Err(e) => {
                tracing::info!(src = %request.src(), error = %e, "dns: zone transfer aborted");
                break;
            }
        }
    }
    tracing::info!(src = %request.src(), zone = %z.soa.name, records = all.len(), "dns: zone transferred");
    last.unwrap_or_else(|| header_of(request, ResponseCode::ServFail).into())
}
