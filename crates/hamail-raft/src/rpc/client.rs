//! The calling side of cluster RPC: one `RpcClient` per peer, which dials
//! (from the node's RPC address), shakes hands, checks the server's pinned
//! key and keeps the connection for the next call.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hamail_types::NodeId;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_util::codec::{Framed, LengthDelimitedCodec};

use super::{HANDSHAKE_TIMEOUT, MAX_FRAME, RpcError, RpcRequest, RpcResponse, codec};
use crate::pki::{key_sha256, server_name};
use crate::trust::PeerTls;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

type ClientConn = Framed<tokio_rustls::client::TlsStream<TcpStream>, LengthDelimitedCodec>;

/// How a client proves itself and checks the server.
#[derive(Clone)]
enum ClientTls {
    /// A fixed configuration (a joiner: no certificate, the token's CA pin).
    Fixed(Arc<rustls::ClientConfig>),
    /// A member dialling member `node`: the member's current configuration
    /// (it changes during a CA rotation), and the server's certificate must
    /// carry the key pinned for `node`, whichever CA signed it.
    Member { tls: Arc<PeerTls>, node: NodeId },
}

/// A client for one peer; reuses its connection.
pub struct RpcClient {
    addr: String,
    server_name: rustls::pki_types::ServerName<'static>,
    tls: ClientTls,
    conn: Option<ClientConn>,
    /// The `PeerTls` generation `conn` was made with: a member's connection
    /// is made again when its TLS material changed (a CA rotation step), so
    /// each step is proven by fresh handshakes.
    conn_generation: u64,
    /// Overrides the process-wide source address (`set_source_ip`).
    source: Option<IpAddr>,
}

impl std::fmt::Debug for RpcClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcClient")
            .field("addr", &self.addr)
            .finish()
    }
}

/// The address outgoing cluster connections leave from: the node's RPC
/// listen address, so that a peer, a firewall or the fault-injecting proxy
/// of the chaos suite sees which node is dialling. Unset: the kernel picks.
static SOURCE_IP: std::sync::OnceLock<std::net::IpAddr> = std::sync::OnceLock::new();

/// Sets the source address of outgoing cluster connections (once).
pub fn set_source_ip(ip: std::net::IpAddr) {
    if !ip.is_unspecified() {
        let _ = SOURCE_IP.set(ip);
    }
}

async fn dial(addr: &str, source: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let Some(src) = source.or_else(|| SOURCE_IP.get().copied()) else {
        return TcpStream::connect(addr).await;
    };
    let mut last = None;
    for target in tokio::net::lookup_host(addr).await? {
        if target.is_ipv4() != src.is_ipv4() {
            continue;
        }
        let sock = if src.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        sock.bind(std::net::SocketAddr::new(src, 0))?;
        match sock.connect(target).await {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    match last {
        Some(e) => Err(e),
        None => TcpStream::connect(addr).await,
    }
}

impl RpcClient {
    /// A client with a fixed TLS configuration, checking the server's
    /// certificate for `server_name`.
    pub fn new(
        addr: String,
        server_name: rustls::pki_types::ServerName<'static>,
        config: Arc<rustls::ClientConfig>,
    ) -> Self {
        RpcClient {
            addr,
            server_name,
            tls: ClientTls::Fixed(config),
            conn: None,
            conn_generation: 0,
            source: None,
        }
    }

    /// A member's client for member `node`: the member's TLS of the moment,
    /// and the server must hold the key pinned for `node`.
    pub fn to_member(addr: String, tls: Arc<PeerTls>, node: NodeId) -> Self {
        RpcClient {
            addr,
            server_name: server_name(node),
            tls: ClientTls::Member { tls, node },
            conn: None,
            conn_generation: 0,
            source: None,
        }
    }

    /// Dials from `ip` instead of the process-wide source address.
    pub fn with_source(mut self, ip: IpAddr) -> Self {
        self.source = Some(ip);
        self
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    async fn connect(&mut self) -> Result<ClientConn, RpcError> {
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, dial(&self.addr, self.source))
            .await
            .map_err(|_| RpcError::Connect {
                addr: self.addr.clone(),
                reason: format!("no connection within {CONNECT_TIMEOUT:?}"),
            })?
            .map_err(|e| RpcError::Connect {
                addr: self.addr.clone(),
                reason: e.to_string(),
            })?;
        let _ = tcp.set_nodelay(true);
        let connector = TlsConnector::from(match &self.tls {
            ClientTls::Fixed(c) => c.clone(),
            ClientTls::Member { tls, .. } => tls.client_config(),
        });
        let tls = tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            connector.connect(self.server_name.clone(), tcp),
        )
        .await
        .map_err(|_| RpcError::Tls {
            addr: self.addr.clone(),
            reason: "handshake timed out".into(),
        })?
        .map_err(|e| RpcError::Tls {
            addr: self.addr.clone(),
            reason: e.to_string(),
        })?;
        if let ClientTls::Member { tls: peer, node } = &self.tls {
            // The CA says the server is node-<id>; the pin says it holds
            // that node's key (a CA key in the wrong hands cannot mint it).
            let key = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| key_sha256(c.as_ref()))
                .ok_or_else(|| RpcError::Tls {
                    addr: self.addr.clone(),
                    reason: "the server presented no certificate".into(),
                })?;
            peer.pins
                .check(*node, &key)
                .map_err(|reason| RpcError::Tls {
                    addr: self.addr.clone(),
                    reason,
                })?;
        }
        Ok(Framed::new(tls, codec(MAX_FRAME)))
    }

    /// Sends one request and waits up to `timeout` for its reply.
    pub async fn call(
        &mut self,
        req: &RpcRequest,
        timeout: Duration,
    ) -> Result<RpcResponse, RpcError> {
        let addr = self.addr.clone();
        let r = tokio::time::timeout(timeout, self.call_inner(req)).await;
        match r {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => {
                self.conn = None;
                Err(e)
            }
            Err(_) => {
                // A half-written or half-read frame: the connection is unusable.
                self.conn = None;
                Err(RpcError::Timeout { addr, timeout })
            }
        }
    }

    async fn call_inner(&mut self, req: &RpcRequest) -> Result<RpcResponse, RpcError> {
        let generation = match &self.tls {
            ClientTls::Fixed(_) => 0,
            ClientTls::Member { tls, .. } => tls.generation(),
        };
        if generation != self.conn_generation {
            self.conn = None;
            self.conn_generation = generation;
        }
        let mut conn = match self.conn.take() {
            Some(c) => c,
            None => self.connect().await?,
        };
        let io = |e: std::io::Error| RpcError::Io {
            addr: self.addr.clone(),
            reason: e.to_string(),
        };
        let bytes = postcard::to_allocvec(req).map_err(|e| RpcError::Protocol {
            addr: self.addr.clone(),
            reason: e.to_string(),
        })?;
        conn.send(tokio_util::bytes::Bytes::from(bytes))
            .await
            .map_err(io)?;
        let frame = match conn.next().await {
            Some(Ok(f)) => f,
            Some(Err(e)) => return Err(io(e)),
            None => {
                return Err(RpcError::Io {
                    addr: self.addr.clone(),
                    reason: "connection closed (a TLS 1.3 server that refuses our certificate closes here)".into(),
                });
            }
        };
        let resp: RpcResponse = postcard::from_bytes(&frame).map_err(|e| RpcError::Protocol {
            addr: self.addr.clone(),
            reason: e.to_string(),
        })?;
        if let RpcResponse::Refused(reason) = resp {
            return Err(RpcError::Refused {
                addr: self.addr.clone(),
                reason,
            });
        }
        self.conn = Some(conn);
        Ok(resp)
    }
}
