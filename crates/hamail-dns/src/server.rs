//! The name server's listeners: binds the UDP sockets (several per address,
//! SO_REUSEPORT, one worker each: udp.rs) and the TCP listener (hickory's
//! server), and runs them with the snapshot follower (snapshot.rs) until
//! cancelled. Answers are built in answer.rs.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hamail_store::Store;
use hickory_server::Server;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::DnsError;
use crate::answer::Handler;
use crate::snapshot::Served;

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

/// Makes a UDP socket that shares its address with the other workers.
fn reuseport_socket(addr: SocketAddr) -> std::io::Result<UdpSocket> {
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
                udp.push(reuseport_socket(bound).map_err(lerr)?);
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
        changes: watch::Receiver<u64>,
        cancel: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
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
            crate::snapshot::follow(store, served, generation, changes, opts.notify, cancel).await;
            if let Err(e) = server.shutdown_gracefully().await {
                tracing::warn!(error = %e, "dns shutdown");
            }
        })
    }
}
