//! The answering side of cluster RPC: the accept loop, a member's
//! connection (authorized once, then request after request) and a caller
//! without a certificate (one `Join`, within the gate's limits).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hamail_types::NodeId;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_util::codec::{Framed, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;

use super::gate::{Gate, PREAUTH_DEADLINE, PreAuth};
use super::{HANDSHAKE_TIMEOUT, MAX_FRAME, PREAUTH_MAX_FRAME, RpcRequest, RpcResponse, codec};
use crate::pki::{key_sha256, peer_node_id};
use crate::trust::PeerTls;

/// A reply the peer does not take within this time ends the connection.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// A connection with no request for this long is closed by the server.
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

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
