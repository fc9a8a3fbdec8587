//! Cluster RPC: TLS 1.3 with mutual authentication by the cluster CA, frames
//! of at most 64 MiB (tokio-util's length-delimited codec), postcard-encoded
//! requests and replies, one request at a time per connection. Connections
//! are kept and reused; any error drops the connection and the next call
//! dials again.
//!
//! The server learns the caller's node id from its certificate (`node-<id>`)
//! and checks it against the current membership on every connection: a
//! removed node's certificate is refused. A caller without a certificate may
//! only ask to join.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hamail_types::{Command, NodeId, NodeInfo, Outcome};
use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_util::codec::{Framed, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;

use crate::TypeConfig;
use crate::pki::peer_node_id;

pub const MAX_FRAME: usize = 512 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection with no request for this long is closed by the server.
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, Serialize, Deserialize)]
#[non_exhaustive]
pub enum RpcRequest {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<u64>),
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// Client writes forwarded to the leader.
    Propose(Vec<Command>),
    /// Membership changes forwarded to the leader.
    Admin(AdminOp),
    /// The leader's view of the cluster, for `cluster status`.
    Status,
    /// From a node without a certificate yet.
    Join {
        token_secret: String,
        csr_pem: String,
        info: NodeInfo,
    },
}

/// Leader-only membership operations.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[non_exhaustive]
pub enum AdminOp {
    /// Add an admitted node as a learner; promote it to voter once caught up.
    AddNode { node_id: NodeId, info: NodeInfo },
    /// Remove a node from the membership (and mark it removed).
    RemoveNode { node_id: NodeId },
}

/// What a joining node receives.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinGrant {
    pub node_id: NodeId,
    pub node_pem: String,
    pub ca_pem: String,
    pub ca_key_pem: String,
    pub cluster_name: String,
    /// Members at the time of the join: the joiner accepts RPCs from them
    /// before its own log tells it the membership.
    pub members: BTreeMap<NodeId, NodeInfo>,
}

/// One member in `cluster status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberView {
    pub id: NodeId,
    pub name: String,
    pub site: String,
    pub rpc_addr: String,
    pub dns_addr: String,
    pub smtp_addr: String,
    /// leader, voter or learner.
    pub role: String,
    /// As the leader sees it (None when reported by a follower).
    pub reachable: Option<bool>,
    /// Milliseconds since the reporting node last heard from this one.
    pub last_contact_ms: Option<u64>,
    /// Highest log index known to match the leader's log.
    pub match_index: Option<u64>,
    /// Entries behind the leader's last log index.
    pub lag: Option<u64>,
}

/// The cluster as one node (preferably the leader) sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterView {
    pub reported_by: NodeId,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    /// Highest index known committed: the reporter's applied index (entries
    /// are applied as soon as they commit; openraft 0.9 does not export its
    /// commit index separately).
    pub commit_index: Option<u64>,
    pub applied_index: Option<u64>,
    pub members: Vec<MemberView>,
}

#[derive(Debug, Serialize, Deserialize)]
#[non_exhaustive]
pub enum RpcResponse {
    AppendEntries(Result<AppendEntriesResponse<u64>, RaftError<u64>>),
    Vote(Result<VoteResponse<u64>, RaftError<u64>>),
    InstallSnapshot(Result<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>>),
    Propose(Result<Vec<Outcome>, String>),
    Admin(Result<String, String>),
    Status(Result<ClusterView, String>),
    Joined(Result<Box<JoinGrant>, String>),
    /// The request was not allowed from this caller.
    Refused(String),
}

#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum RpcError {
    #[error("cannot reach {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("TLS with {addr} failed: {reason}")]
    Tls { addr: String, reason: String },
    #[error("{addr} did not answer within {timeout:?}")]
    Timeout { addr: String, timeout: Duration },
    #[error("connection to {addr} failed: {reason}")]
    Io { addr: String, reason: String },
    #[error("{addr} refused the request: {reason}")]
    Refused { addr: String, reason: String },
    #[error("{addr} sent a malformed reply: {reason}")]
    Protocol { addr: String, reason: String },
}

type ClientConn = Framed<tokio_rustls::client::TlsStream<TcpStream>, LengthDelimitedCodec>;

fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(MAX_FRAME)
        .new_codec()
}

/// A client for one peer; reuses its connection.
pub struct RpcClient {
    addr: String,
    server_name: rustls::pki_types::ServerName<'static>,
    connector: TlsConnector,
    conn: Option<ClientConn>,
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

async fn dial(addr: &str) -> std::io::Result<TcpStream> {
    let Some(src) = SOURCE_IP.get().copied() else {
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
    pub fn new(
        addr: String,
        server_name: rustls::pki_types::ServerName<'static>,
        config: Arc<rustls::ClientConfig>,
    ) -> Self {
        RpcClient {
            addr,
            server_name,
            connector: TlsConnector::from(config),
            conn: None,
        }
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    async fn connect(&mut self) -> Result<ClientConn, RpcError> {
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, dial(&self.addr))
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
        let tls = tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            self.connector.connect(self.server_name.clone(), tcp),
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
        Ok(Framed::new(tls, codec()))
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

/// What serves RPCs: implemented by the cluster.
pub trait RpcHandler: Send + Sync + 'static {
    /// Is `node_id` (from a peer certificate) allowed to call us?
    fn is_member(&self, node_id: NodeId) -> bool;
    fn handle(
        &self,
        caller: Option<NodeId>,
        req: RpcRequest,
    ) -> impl std::future::Future<Output = RpcResponse> + Send;
}

/// Accepts RPC connections until `cancel`.
pub async fn serve<H: RpcHandler>(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    handler: Arc<H>,
    cancel: CancellationToken,
) {
    let acceptor = TlsAcceptor::from(config);
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let _ = tcp.set_nodelay(true);
                    let acceptor = acceptor.clone();
                    let handler = handler.clone();
                    let cancel = cancel.clone();
                    conns.spawn(async move {
                        if let Err(e) = connection(tcp, acceptor, handler, cancel).await {
                            tracing::debug!(%peer, error = %e, "rpc connection ended");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "rpc accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    conns.shutdown().await;
}

async fn connection<H: RpcHandler>(
    tcp: TcpStream,
    acceptor: TlsAcceptor,
    handler: Arc<H>,
    cancel: CancellationToken,
) -> Result<(), String> {
    let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
        .await
        .map_err(|_| "TLS handshake timed out".to_string())?
        .map_err(|e| format!("TLS handshake: {e}"))?;
    let caller = match tls.get_ref().1.peer_certificates().and_then(|c| c.first()) {
        None => None,
        Some(cert) => Some(peer_node_id(cert).ok_or("peer certificate names no node")?),
    };
    let mut framed = Framed::new(tls, codec());
    if let Some(id) = caller
        && !handler.is_member(id)
    {
        let r = RpcResponse::Refused(format!(
            "node {id} is not a member of this cluster (removed?)"
        ));
        let _ = send(&mut framed, &r).await;
        return Err(format!("refused node {id}: not a member"));
    }
    loop {
        let frame = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            f = tokio::time::timeout(IDLE_TIMEOUT, framed.next()) => match f {
                Err(_) => return Ok(()),
                Ok(None) => return Ok(()),
                Ok(Some(Err(e))) => return Err(e.to_string()),
                Ok(Some(Ok(f))) => f,
            },
        };
        let resp = match postcard::from_bytes::<RpcRequest>(&frame) {
            Err(e) => RpcResponse::Refused(format!("malformed request: {e}")),
            Ok(req) => {
                if caller.is_none() && !matches!(req, RpcRequest::Join { .. }) {
                    RpcResponse::Refused("a client certificate of this cluster is required".into())
                } else {
                    handler.handle(caller, req).await
                }
            }
        };
        let refused = matches!(resp, RpcResponse::Refused(_));
        send(&mut framed, &resp).await?;
        if refused || caller.is_none() {
            // A joiner gets one answer; a refused caller gets no second try.
            return Ok(());
        }
    }
}

async fn send(
    framed: &mut Framed<tokio_rustls::server::TlsStream<TcpStream>, LengthDelimitedCodec>,
    resp: &RpcResponse,
) -> Result<(), String> {
    let bytes = postcard::to_allocvec(resp).map_err(|e| e.to_string())?;
    framed
        .send(tokio_util::bytes::Bytes::from(bytes))
        .await
        .map_err(|e: std::io::Error| e.to_string())
}
