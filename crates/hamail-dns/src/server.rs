//! The authoritative server. Queries are answered by hickory's catalog of
//! in-memory zones, held in an `ArcSwap`: a query loads the current snapshot
//! without a lock and never waits on raft or RocksDB. When the applied log
//! moves, the zones are rebuilt from the store and swapped in; zones whose
//! serial changed are announced to the configured secondaries (NOTIFY).
//!
//! In front of the catalog: only class IN is answered (CH `version.bind`
//! and friends get REFUSED), and zone transfers only over TCP to addresses
//! in the allow list.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hamail_store::Store;
use hickory_proto::op::{Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::{DNSClass, LowerName, Name, RData, Record, RecordSet, RecordType};
use hickory_proto::serialize::txt::Parser;
use hickory_server::Server;
use hickory_server::net::runtime::{Time, TokioRuntimeProvider};
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{
    AxfrPolicy, Catalog, MessageResponseBuilder, ZoneHandler, ZoneType,
};
use tokio::net::{TcpListener, UdpSocket};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::DnsError;

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

/// What queries are answered from: hickory's catalog, and per zone what we
/// answer ourselves — zone transfers (in as many messages as the zone
/// needs) and referrals below delegation points (with glue, AA clear).
pub(crate) struct Served {
    catalog: Catalog,
    zones: BTreeMap<LowerName, ZoneData>,
}

struct ZoneData {
    /// The SOA as the zone file has it (its own TTL).
    soa: Record,
    /// Every other record, in name order.
    records: Vec<Record>,
    /// Delegation points (NS below the apex), deepest first.
    cuts: Vec<Cut>,
}

struct Cut {
    name: LowerName,
    ns: Vec<Record>,
    /// A/AAAA of the NS targets that the zone holds.
    glue: Vec<Record>,
}

/// Records per AXFR message: well under 64 KiB for any record we hold.
const AXFR_RECORDS_PER_MESSAGE: usize = 100;

pub(crate) struct Handler {
    served: Arc<ArcSwap<Served>>,
    allow_axfr: Vec<IpAddr>,
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
            if let Some(cut) = served.cut_for(q.name(), q.query_type()) {
                return referral(request, response, cut).await;
            }
        }
        served
            .catalog
            .handle_request::<R, T>(request, response)
            .await
    }
}

impl Served {
    /// The delegation a query falls under, if any: the deepest cut at or
    /// above the name in the deepest zone holding it (a DS query at the cut
    /// itself is the parent's to answer).
    fn cut_for(&self, name: &LowerName, qtype: RecordType) -> Option<&Cut> {
        let zone = self
            .zones
            .iter()
            .filter(|(origin, _)| origin.zone_of(name))
            .max_by_key(|(origin, _)| origin.num_labels())?
            .1;
        zone.cuts
            .iter()
            .find(|c| c.name.zone_of(name) && !(c.name == *name && qtype == RecordType::DS))
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

/// The zone's records for AXFR and its delegation points, from the parsed
/// zone; and the catalog's copy of the records with the SOA's TTL lowered
/// to its MINIMUM, so negative answers carry the negative TTL of RFC 2308.
fn zone_data(
    origin: &Name,
    records: &mut BTreeMap<hickory_proto::rr::RrKey, RecordSet>,
) -> Option<ZoneData> {
    let apex = LowerName::new(origin);
    let mut soa = None;
    let mut rest = Vec::new();
    for set in records.values() {
        for r in set.records_without_rrsigs() {
            if r.record_type() == RecordType::SOA {
                soa = Some(r.clone());
            } else {
                rest.push(r.clone());
            }
        }
    }
    let soa = soa?;
    if let RData::SOA(s) = &soa.data {
        let negative = soa.ttl.min(s.minimum);
        for set in records.values_mut() {
            if set.record_type() == RecordType::SOA {
                set.set_ttl(negative);
            }
        }
    }
    let mut cuts: Vec<Cut> = Vec::new();
    for r in rest.iter().filter(|r| r.record_type() == RecordType::NS) {
        let name = LowerName::new(&r.name);
        if name == apex {
            continue;
        }
        match cuts.iter_mut().find(|c| c.name == name) {
            Some(c) => c.ns.push(r.clone()),
            None => cuts.push(Cut {
                name,
                ns: vec![r.clone()],
                glue: Vec::new(),
            }),
        }
    }
    for c in &mut cuts {
        let targets: Vec<LowerName> =
            c.ns.iter()
                .filter_map(|r| match &r.data {
                    RData::NS(ns) => Some(LowerName::new(&ns.0)),
                    _ => None,
                })
                .collect();
        c.glue = rest
            .iter()
            .filter(|r| matches!(r.record_type(), RecordType::A | RecordType::AAAA))
            .filter(|r| targets.contains(&LowerName::new(&r.name)))
            .cloned()
            .collect();
    }
    cuts.sort_by_key(|c| std::cmp::Reverse(c.name.num_labels()));
    Some(ZoneData {
        soa,
        records: rest,
        cuts,
    })
}

/// Builds what is served from the store; returns it with each zone's serial.
fn build(store: &Store) -> (Served, BTreeMap<String, u32>) {
    let mut catalog = Catalog::new();
    let mut zone_data_map = BTreeMap::new();
    let mut serials = BTreeMap::new();
    let zones = match store.zones() {
        Ok(z) => z,
        Err(e) => {
            tracing::error!(error = %e, "dns: cannot read zones");
            return (
                Served {
                    catalog,
                    zones: zone_data_map,
                },
                serials,
            );
        }
    };
    for (zone, state) in zones {
        let text = crate::zone_file_text(&zone, &state.records);
        let built = Parser::new(text, None, None)
            .parse()
            .map_err(|e| e.to_string())
            .and_then(|(origin, mut records)| {
                if let Some(d) = zone_data(&origin, &mut records) {
                    zone_data_map.insert(LowerName::new(&origin), d);
                }
                InMemoryZoneHandler::<TokioRuntimeProvider>::new(
                    origin.clone(),
                    records,
                    ZoneType::Primary,
                    AxfrPolicy::AllowAll,
                )
                .map(|h| (origin, h))
            });
        match built {
            Ok((origin, handler)) => {
                catalog.upsert(
                    LowerName::new(&origin),
                    vec![Arc::new(handler) as Arc<dyn ZoneHandler>],
                );
                serials.insert(zone.to_string(), state.serial);
            }
            Err(e) => tracing::error!(%zone, error = %e, "dns: zone not served"),
        }
    }
    (
        Served {
            catalog,
            zones: zone_data_map,
        },
        serials,
    )
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
        let mut serials = BTreeMap::new();
        let served = Arc::new(ArcSwap::from_pointee(Served {
            catalog: Catalog::new(),
            zones: BTreeMap::new(),
        }));
        let generation = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let udp_handler = Arc::new(Handler {
            served: served.clone(),
            allow_axfr: opts.allow_axfr.clone(),
        });
        let mut server = Server::new(Handler {
            served: served.clone(),
            allow_axfr: opts.allow_axfr.clone(),
        });
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
                    r = changes.changed() => {
                        if r.is_err() {
                            cancel.cancelled().await;
                            break;
                        }
                        // Most writes are not zone edits: rebuild only when a
                        // zone changed (a snapshot install moves this too).
                        let now = store.zones_version().ok().flatten();
                        if built && now == version {
                            continue;
                        }
                        built = true;
                        version = now;
                        let store = store.clone();
                        let Ok((next, next_serials)) = tokio::task::spawn_blocking(move || build(&store)).await else {
                            continue;
                        };
                        served.store(Arc::new(next));
                        // Workers drop their cached answers.
                        generation.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                        for (zone, serial) in &next_serials {
                            if serials.get(zone) != Some(serial) {
                                for target in &opts.notify {
                                    tokio::spawn(notify(*target, zone.clone()));
                                }
                            }
                        }
                        serials = next_serials;
                    }
                }
            }
            if let Err(e) = server.shutdown_gracefully().await {
                tracing::warn!(error = %e, "dns shutdown");
            }
        })
    }
}
