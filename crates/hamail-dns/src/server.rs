//! The authoritative server. Queries are answered by hickory's catalog of
//! in-memory zones, held in an `ArcSwap`: a query loads the current snapshot
//! without a lock and never waits on raft or RocksDB. When the applied log
//! moves, the zones are rebuilt from the store and swapped in; zones whose
//! serial changed are announced to the configured secondaries (NOTIFY).
//!
//! In front of the catalog: only class IN is answered (CH `version.bind`
//! and friends get REFUSED), zone transfers only over TCP to addresses in
//! the allow list, and what the zone's name index decides without hickory
//! (referrals, NXDOMAIN, NODATA: see names.rs). The catalog answers the
//! rest, the names that hold data.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hamail_store::{Store, ZoneState};
use hamail_types::DomainName;
use hickory_proto::op::{Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, Record, RecordSet, RecordType};
use hickory_server::Server;
use hickory_server::net::NetError;
use hickory_server::net::runtime::{Time, TokioRuntimeProvider};
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::{MessageResponse, MessageResponseBuilder};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::DnsError;
use crate::names::Class;
use crate::snapshot::{Cut, Served, ZoneData};

/// Listener and policy settings, from `[dns]`.
#[derive(Debug, Clone)]
pub struct DnsOptions {
    pub listen: Vec<SocketAddr>,
    /// Addresses allowed to transfer zones (AXFR).
    pub allow_axfr: Vec<IpAddr>,
    /// Secondaries told of every new serial (NOTIFY).
    pub notify: Vec<SocketAddr>,
    pub tcp_idle_timeout: Duration,
    /// Largest UDP answer whatever the client's EDNS buffer (1232 by default).
    pub max_udp_payload: u16,
    /// UDP sockets (and workers) per listen address.
    pub udp_workers: usize,
}

pub struct DnsServer;

/// The bound DNS sockets, taken before anything else starts so that a busy
/// address is reported before the node changes anything.
pub struct DnsSockets(Vec<(SocketAddr, Vec<UdpSocket>, TcpListener)>);

/// Records per AXFR message: well under 64 KiB for any record we hold.
const AXFR_RECORDS_PER_MESSAGE: usize = 100;

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

async fn notify(target: SocketAddr, zone: String) {
    use hickory_server::net::client::{Client, ClientHandle};
    use hickory_server::net::udp::UdpClientStream;
    let Ok(name) = Name::from_ascii(format!("{zone}.")) else {
        return;
    };
    let stream = UdpClientStream::builder(target, TokioRuntimeProvider::default())
        .with_timeout(Some(Duration::from_secs(2)))
        .build();
    let (mut client, bg) = Client::<TokioRuntimeProvider>::from_sender(stream);
    tokio::spawn(bg);
    match client
        .notify(name, DNSClass::IN, RecordType::SOA, None::<RecordSet>)
        .await
    {
        Ok(r) => {
            tracing::info!(%zone, %target, rcode = ?r.metadata.response_code, "dns: NOTIFY sent")
        }
        Err(e) => tracing::warn!(%zone, %target, error = %e, "dns: NOTIFY failed"),
    }
}

impl DnsServer {
    /// Binds every listener: `workers` UDP sockets sharing each address,
    /// and TCP.
    pub async fn bind(listen: &[SocketAddr], workers: usize) -> Result<DnsSockets, DnsError> {
        let mut sockets = Vec::new();
        for addr in listen {
            let lerr = |e: std::io::Error| DnsError::Listen {
                addr: addr.to_string(),
                cause: e.to_string(),
            };
            // TCP first: with port 0 it picks the port the UDP sockets share.
            let tcp = TcpListener::bind(addr).await.map_err(lerr)?;
            let bound = tcp.local_addr().map_err(lerr)?;
            // A plain probe bind first, so an address in use by another
            // program (without SO_REUSEPORT) is reported, not shared.
            drop(std::net::UdpSocket::bind(bound).map_err(lerr)?);
            let mut udp = Vec::new();
            for _ in 0..workers.max(1) {
                udp.push(crate::udp::reuseport_socket(bound).map_err(lerr)?);
            }
            sockets.push((bound, udp, tcp));
        }
        Ok(DnsSockets(sockets))
    }

    /// Serves on `sockets` until `cancel`, rebuilding the zones whenever
    /// `changes` moves.
    pub fn start(
        sockets: DnsSockets,
        opts: DnsOptions,
        store: Store,
        mut changes: watch::Receiver<u64>,
        cancel: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        // Nothing is served until `changes` first moves: the node sends it
        // only once its applied state is a full member's (a rebuilt node's
        // partial copy would answer older serials than the site did before).
        // Like BIND at start, the first build NOTIFYs every zone.
        let mut version = None;
        let mut built = false;
        // A store read failed: the previous snapshot stays, try again soon.
        let mut retry = false;
        let served = Arc::new(ArcSwap::from_pointee(Served::empty()));
        let generation = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let handler = || Handler {
            served: served.clone(),
            allow_axfr: opts.allow_axfr.clone(),
            max_udp_payload: opts.max_udp_payload,
        };
        let udp_handler = Arc::new(handler());
        let mut server = Server::new(handler());
        for (_, udp, tcp) in sockets.0 {
            for socket in udp {
                tokio::spawn(crate::udp::worker(
                    socket,
                    udp_handler.clone(),
                    generation.clone(),
                    opts.max_udp_payload,
                    cancel.clone(),
                ));
            }
            server.register_listener(tcp, opts.tcp_idle_timeout, 64);
        }
        tracing::info!(listen = ?opts.listen, "dns serving");
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(REBUILD_RETRY), if retry => {}
                    r = changes.changed() => {
                        if r.is_err() {
                            cancel.cancelled().await;
                            break;
                        }
                    }
                }
                // Most writes are not zone edits: rebuild only when a zone
                // changed (a snapshot install moves this too).
                let now = store.zones_version();
                if built && !retry && now.as_ref().ok() == Some(&version) {
                    continue;
                }
                let reader = store.clone();
                let target = served.clone();
                let Ok(swapped) = tokio::task::spawn_blocking(move || {
                    refresh(&target, || reader.zones().map_err(|e| e.to_string()))
                })
                .await
                else {
                    retry = true;
                    continue;
                };
                let Some(previous) = swapped else {
                    retry = true;
                    continue;
                };
                retry = false;
                built = true;
                version = now.ok().flatten();
                // Workers drop their cached answers.
                generation.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                for (zone, serial) in &served.load().serials {
                    if previous.serials.get(zone) != Some(serial) {
                        for target in &opts.notify {
                            tokio::spawn(notify(*target, zone.clone()));
                        }
                    }
                }
            }
            if let Err(e) = server.shutdown_gracefully().await {
                tracing::warn!(error = %e, "dns shutdown");
            }
        })
    }
}

/// How soon a rebuild that could not read the store is tried again.
const REBUILD_RETRY: Duration = Duration::from_secs(1);

/// Builds the next snapshot from what `read` returns and swaps it in;
/// returns the one it replaced. When the zones cannot be read, nothing is
/// swapped (None): the previous snapshot keeps answering, rather than an
/// empty one that would REFUSE every query.
pub(crate) fn refresh<E: std::fmt::Display>(
    served: &ArcSwap<Served>,
    read: impl FnOnce() -> Result<Vec<(DomainName, ZoneState)>, E>,
) -> Option<Arc<Served>> {
    match read() {
        Ok(zones) => {
            let previous = served.load_full();
            Some(served.swap(Arc::new(Served::build(zones, &previous))))
        }
        Err(e) => {
            tracing::error!(error = %e, "dns: cannot read the zones; the previous ones stay served");
            None
        }
    }
}
