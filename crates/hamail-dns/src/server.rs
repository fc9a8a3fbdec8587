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
use hickory_proto::rr::{DNSClass, LowerName, Name, RecordSet, RecordType};
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

pub(crate) struct Handler {
    catalog: Arc<ArcSwap<Catalog>>,
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
        if request.metadata.op_code == OpCode::Query
            && let Ok(info) = request.request_info()
        {
            let q = info.query;
            if q.query_class() != DNSClass::IN {
                return refuse(request, response, ResponseCode::Refused).await;
            }
            if matches!(q.query_type(), RecordType::AXFR | RecordType::IXFR)
                && (request.protocol() != Protocol::Tcp
                    || !self.allow_axfr.contains(&request.src().ip()))
            {
                tracing::info!(src = %request.src(), zone = %q.name(), "dns: zone transfer refused");
                return refuse(request, response, ResponseCode::Refused).await;
            }
        }
        let catalog = self.catalog.load_full();
        catalog.handle_request::<R, T>(request, response).await
    }
}

/// Builds the catalog from the store; returns it with each zone's serial.
fn build(store: &Store) -> (Catalog, BTreeMap<String, u32>) {
    let mut catalog = Catalog::new();
    let mut serials = BTreeMap::new();
    let zones = match store.zones() {
        Ok(z) => z,
        Err(e) => {
            tracing::error!(error = %e, "dns: cannot read zones");
            return (catalog, serials);
        }
    };
    for (zone, state) in zones {
        let text = crate::zone_file_text(&zone, &state.records);
        let built = Parser::new(text, None, None)
            .parse()
            .map_err(|e| e.to_string())
            .and_then(|(origin, records)| {
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
    (catalog, serials)
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
        let mut version = store.zones_version().ok().flatten();
        let (catalog, mut serials) = build(&store);
        let catalog = Arc::new(ArcSwap::from_pointee(catalog));
        let generation = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let udp_handler = Arc::new(Handler {
            catalog: catalog.clone(),
            allow_axfr: opts.allow_axfr.clone(),
        });
        let mut server = Server::new(Handler {
            catalog: catalog.clone(),
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
        tracing::info!(listen = ?opts.listen, zones = serials.len(), "dns serving");
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
                        if now == version {
                            continue;
                        }
                        version = now;
                        let store = store.clone();
                        let Ok((next, next_serials)) = tokio::task::spawn_blocking(move || build(&store)).await else {
                            continue;
                        };
                        catalog.store(Arc::new(next));
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
