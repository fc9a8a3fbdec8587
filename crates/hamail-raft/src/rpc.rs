//! Cluster RPC: TLS 1.3 with mutual authentication by the cluster CA, frames
//! of at most `MAX_FRAME` (tokio-util's length-delimited codec),
//! postcard-encoded requests and replies, one request at a time per
//! connection. Connections are kept and reused; any error drops the
//! connection and the next call dials again.
//!
//! The server learns the caller's node id from its certificate (`node-<id>`)
//! and checks, on every connection, that the id is a member and that the
//! certificate's key is the one pinned for it: a removed node's certificate,
//! or one minted for another id, is refused. A caller without a certificate
//! may only ask to join, with one frame of a few KiB, a few times a second
//! per address, on a bounded number of connections (see `Gate`).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
use crate::pki::{key_sha256, peer_node_id, server_name};
use crate::trust::{CaView, PeerTls};

/// Largest frame between members. What it must hold: one raft entry (a
/// batch stops growing at 4 MiB; a single mail message may exceed that, up
/// to `smtp.message_size_limit` ≤ 64 MiB plus its envelope of at most
/// 10,000 recipients), an AppendEntries (the network cuts them at
/// `network::APPEND_BYTES` beyond their first entry), a snapshot chunk
/// (`SNAPSHOT_CHUNK`), or a forwarded proposal of the same bounds.
pub const MAX_FRAME: usize = 80 << 20;
/// Largest frame from a caller without a certificate: a `Join` (a secret, a
/// CSR of a few hundred bytes and the node's names and addresses).
pub const PREAUTH_MAX_FRAME: usize = 8 << 10;
/// openraft's snapshot chunk size (set in the raft config).
pub const SNAPSHOT_CHUNK: u64 = 4 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A reply the peer does not take within this time ends the connection.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
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
    /// Which CAs the node trusts and presents (`cluster rotate-ca`).
    CaStatus,
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
    /// Their pinned certificate keys, for the same time.
    pub pins: BTreeMap<NodeId, String>,
    /// Every CA a member certificate may come from (PEM; `ca_pem` among
    /// them): two during a CA rotation.
    pub trusted: Vec<String>,
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
    CaStatus(CaView),
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

fn codec(max_frame: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(max_frame)
        .new_codec()
}

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

/// What serves RPCs: implemented by the cluster.
pub trait RpcHandler: Send + Sync + 'static {
    /// May the caller whose certificate names `node_id` and carries the key
    /// `key_sha256` call us? It must be a member and its key the one pinned
    /// for that id (a certificate minted with the CA key by anyone else is
    /// refused). `Err` says why not.
    fn authorize(&self, node_id: NodeId, key_sha256: &str) -> Result<(), String>;
    /// Is `ip` the address of a member? Members are not counted against the
    /// limits on connections that have not shown a certificate yet, so a
    /// flood from elsewhere cannot keep them out.
    fn is_member_ip(&self, ip: IpAddr) -> bool;
    fn handle(
        &self,
        caller: Option<NodeId>,
        req: RpcRequest,
    ) -> impl std::future::Future<Output = RpcResponse> + Send;
}

/// Connections that have not (yet) shown a member certificate: the TLS
/// handshake and, without a certificate, the one `Join` frame. Limited in
/// number, per address and in total, and in time, so that nobody without a
/// certificate can hold more than a few KiB of our memory or our slots.
#[derive(Debug)]
struct Gate {
    state: std::sync::Mutex<GateState>,
}

#[derive(Debug, Default)]
struct GateState {
    total: usize,
    per_ip: HashMap<IpAddr, IpState>,
}

#[derive(Debug)]
struct IpState {
    conns: usize,
    /// Token bucket of requests without a certificate.
    tokens: f64,
    refilled: Instant,
}

/// Connections without a proven certificate at once, in all.
const PREAUTH_TOTAL: usize = 128;
/// ... and from one address.
const PREAUTH_PER_IP: usize = 8;
/// From TCP accept to the end of the first frame, for a caller without a
/// certificate (a joiner sends one small frame right after the handshake).
const PREAUTH_DEADLINE: Duration = Duration::from_secs(10);
/// Requests without a certificate per address: a burst, then per second.
const PREAUTH_BURST: f64 = 8.0;
const PREAUTH_PER_SEC: f64 = 2.0;
/// Addresses remembered by the rate limit before idle ones are forgotten.
const GATE_MAX_ADDRS: usize = 4096;

/// A slot held by a connection without a proven certificate.
struct PreAuth<'a> {
    gate: &'a Gate,
    ip: IpAddr,
}

impl Drop for PreAuth<'_> {
    fn drop(&mut self) {
        if let Ok(mut g) = self.gate.state.lock() {
            g.total = g.total.saturating_sub(1);
            if let Some(s) = g.per_ip.get_mut(&self.ip) {
                s.conns = s.conns.saturating_sub(1);
            }
        }
    }
}

impl Gate {
    fn new() -> Gate {
        Gate {
            state: std::sync::Mutex::new(GateState::default()),
        }
    }

    /// A slot for a new connection from `ip`, or why not.
    fn enter(&self, ip: IpAddr) -> Result<PreAuth<'_>, &'static str> {
        let mut g = self.state.lock().map_err(|_| "gate poisoned")?;
        if g.total >= PREAUTH_TOTAL {
            return Err("too many connections without a certificate");
        }
        if g.per_ip.len() >= GATE_MAX_ADDRS {
            let now = Instant::now();
            g.per_ip.retain(|_, s| {
                s.conns > 0 || now.duration_since(s.refilled) < Duration::from_secs(10)
            });
        }
        let s = g.per_ip.entry(ip).or_insert_with(|| IpState {
            conns: 0,
            tokens: PREAUTH_BURST,
            refilled: Instant::now(),
        });
        if s.conns >= PREAUTH_PER_IP {
            return Err("too many connections without a certificate from this address");
        }
        s.conns += 1;
        g.total += 1;
        Ok(PreAuth { gate: self, ip })
    }

    /// May `ip` send one more request without a certificate now?
    fn allow_request(&self, ip: IpAddr) -> bool {
        let Ok(mut g) = self.state.lock() else {
            return false;
        };
        let now = Instant::now();
        // A member's address holds no slot, so it may have no entry yet.
        let s = g.per_ip.entry(ip).or_insert_with(|| IpState {
            conns: 0,
            tokens: PREAUTH_BURST,
            refilled: now,
        });
        let dt = now.duration_since(s.refilled).as_secs_f64();
        s.tokens = (s.tokens + dt * PREAUTH_PER_SEC).min(PREAUTH_BURST);
        s.refilled = now;
        if s.tokens >= 1.0 {
            s.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Accepts RPC connections until `cancel`.
pub async fn serve<H: RpcHandler>(
    listener: TcpListener,
    tls: Arc<PeerTls>,
    handler: Arc<H>,
    cancel: CancellationToken,
) {
    let gate = Arc::new(Gate::new());
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let _ = tcp.set_nodelay(true);
                    // The configuration of the moment: a CA rotation
                    // changes it for the next handshake.
                    let acceptor = TlsAcceptor::from(tls.server_config());
                    let handler = handler.clone();
                    let cancel = cancel.clone();
                    let gate = gate.clone();
                    conns.spawn(async move {
                        if let Err(e) = connection(tcp, peer, acceptor, handler, &gate, cancel).await {
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

type ServerConn = Framed<tokio_rustls::server::TlsStream<TcpStream>, LengthDelimitedCodec>;

async fn connection<H: RpcHandler>(
    tcp: TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    handler: Arc<H>,
    gate: &Gate,
    cancel: CancellationToken,
) -> Result<(), String> {
    let ip = peer.ip();
    let member_ip = handler.is_member_ip(ip);
    // Members' addresses skip the count (a flood must not lock them out);
    // the handshake deadline holds for everyone.
    let mut slot = if member_ip {
        None
    } else {
        Some(
            gate.enter(ip)
                .map_err(|e| format!("dropped at accept: {e}"))?,
        )
    };
    let preauth_deadline = tokio::time::Instant::now() + PREAUTH_DEADLINE;
    let tls = tokio::select! {
        _ = cancel.cancelled() => return Ok(()),
        r = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)) => r
            .map_err(|_| "TLS handshake timed out".to_string())?
            .map_err(|e| format!("TLS handshake: {e}"))?,
    };
    let caller = match tls.get_ref().1.peer_certificates().and_then(|c| c.first()) {
        None => None,
        Some(cert) => {
            let id = peer_node_id(cert).ok_or("peer certificate names no node")?;
            let key = key_sha256(cert.as_ref()).ok_or("unparsable peer certificate")?;
            Some((id, key))
        }
    };
    let Some((id, key)) = caller else {
        return unauthenticated(tls, ip, handler, gate, slot, preauth_deadline, cancel).await;
    };
    // A proven member certificate: the connection leaves the pre-auth count.
    slot.take();
    let mut framed = Framed::new(tls, codec(MAX_FRAME));
    if let Err(reason) = handler.authorize(id, &key) {
        tracing::warn!(node_id = id, %peer, %reason, "refused a cluster peer");
        let r = RpcResponse::Refused(reason.clone());
        let _ = send(&mut framed, &r, &cancel).await;
        return Err(format!("refused node {id}: {reason}"));
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
            Ok(req) => tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                r = handler.handle(Some(id), req) => r,
            },
        };
        drop(frame);
        let refused = matches!(resp, RpcResponse::Refused(_));
        send(&mut framed, &resp, &cancel).await?;
        if refused {
            // A refused caller gets no second try on this connection.
            return Ok(());
        }
    }
}

/// A caller without a certificate: one small frame, which must be a `Join`,
/// within the pre-auth deadline and the address's rate; one answer; closed.
async fn unauthenticated<H: RpcHandler>(
    tls: tokio_rustls::server::TlsStream<TcpStream>,
    ip: IpAddr,
    handler: Arc<H>,
    gate: &Gate,
    _slot: Option<PreAuth<'_>>,
    deadline: tokio::time::Instant,
    cancel: CancellationToken,
) -> Result<(), String> {
    // The cap applies to the announced length: a larger announcement ends
    // the connection before anything is buffered.
    let mut framed = Framed::new(tls, codec(PREAUTH_MAX_FRAME));
    let frame = tokio::select! {
        _ = cancel.cancelled() => return Ok(()),
        f = tokio::time::timeout_at(deadline, framed.next()) => match f {
            Err(_) => return Err("no request within the deadline for callers without a certificate".into()),
            Ok(None) => return Ok(()),
            Ok(Some(Err(e))) => return Err(format!("without a certificate: {e}")),
            Ok(Some(Ok(f))) => f,
        },
    };
    let resp = if !gate.allow_request(ip) {
        RpcResponse::Refused(format!(
            "too many requests without a certificate from {ip}; retry in a few seconds"
        ))
    } else {
        match postcard::from_bytes::<RpcRequest>(&frame) {
            Err(e) => RpcResponse::Refused(format!("malformed request: {e}")),
            Ok(req @ RpcRequest::Join { .. }) => tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                r = handler.handle(None, req) => r,
            },
            Ok(_) => {
                RpcResponse::Refused("a client certificate of this cluster is required".into())
            }
        }
    };
    send(&mut framed, &resp, &cancel).await
}

/// One reply, within `WRITE_TIMEOUT` and never past shutdown: a peer that
/// does not read its replies loses its connection, not our task.
async fn send(
    framed: &mut ServerConn,
    resp: &RpcResponse,
    cancel: &CancellationToken,
) -> Result<(), String> {
    let bytes = postcard::to_allocvec(resp).map_err(|e| e.to_string())?;
    tokio::select! {
        _ = cancel.cancelled() => Err("shutting down".into()),
        r = tokio::time::timeout(WRITE_TIMEOUT, framed.send(tokio_util::bytes::Bytes::from(bytes))) => match r {
            Err(_) => Err(format!("the peer did not take our reply within {WRITE_TIMEOUT:?}")),
            Ok(r) => r.map_err(|e: std::io::Error| e.to_string()),
        },
    }
}
