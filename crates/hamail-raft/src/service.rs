//! The RPC service every member runs: who may call (members with their
//! pinned keys), raft's own messages, forwarded writes and membership
//! changes, status, and the admission of a joining node by its token.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hamail_store::Store;
use hamail_types::{Command, NodeId, NodeInfo, Outcome};

use crate::RaftNode;
use crate::membership::{admin, leader_admin};
use crate::pki::JoinToken;
use crate::rpc::{AdminOp, JoinGrant, RpcHandler, RpcRequest, RpcResponse};
use crate::trust::PeerTls;
use crate::view::{local_view, members};

/// The RPC service of a member.
pub(crate) struct Service {
    pub(crate) node: Arc<RaftNode>,
    pub(crate) tls: Arc<PeerTls>,
    /// Members learned when this node joined (see `Cluster::seeds`).
    pub(crate) seeds: Arc<RwLock<BTreeMap<NodeId, NodeInfo>>>,
    pub(crate) cluster_name: String,
}

impl Service {
    fn is_member(&self, id: NodeId) -> bool {
        let m = self.node.raft.metrics();
        let m = m.borrow();
        let membership = m.membership_config.membership();
        let in_log = membership.get_node(&id).is_some();
        let configured = membership.voter_ids().next().is_some();
        in_log
            || (!configured
                && self
                    .seeds
                    .read()
                    .map(|s| s.contains_key(&id))
                    .unwrap_or(false))
    }
}

impl RpcHandler for Service {
    fn authorize(&self, id: NodeId, key_sha256: &str) -> Result<(), String> {
        if !self.is_member(id) {
            return Err(format!(
                "node {id} is not a member of this cluster (removed?)"
            ));
        }
        self.tls.pins.check(id, key_sha256)
    }

    fn is_member_ip(&self, ip: std::net::IpAddr) -> bool {
        let ip_of = |addr: &str| addr.parse::<std::net::SocketAddr>().ok().map(|a| a.ip());
        let in_log = members(&self.node)
            .values()
            .any(|n| ip_of(&n.rpc_addr) == Some(ip));
        in_log
            || self
                .seeds
                .read()
                .map(|s| s.values().any(|n| ip_of(&n.rpc_addr) == Some(ip)))
                .unwrap_or(false)
    }

    async fn handle(&self, _caller: Option<NodeId>, req: RpcRequest) -> RpcResponse {
        match req {
            RpcRequest::AppendEntries(r) => {
                let commit = r.leader_commit.map(|l| l.index);
                let resp = self.node.raft.append_entries(r).await;
                if matches!(&resp, Ok(a) if a.is_success() || a.is_conflict()) {
                    self.node.note_leader_contact(commit);
                }
                RpcResponse::AppendEntries(resp)
            }
            RpcRequest::Vote(r) => RpcResponse::Vote(self.node.raft.vote(r).await),
            RpcRequest::InstallSnapshot(r) => {
                RpcResponse::InstallSnapshot(self.node.raft.install_snapshot(r).await)
            }
            // One hop only: a forwarded write is not forwarded again.
            RpcRequest::Propose(cmds) => RpcResponse::Propose(
                self.node
                    .propose_local(cmds)
                    .await
                    .map_err(|e| e.to_string()),
            ),
            RpcRequest::Admin(op) => {
                if self.node.current_leader() != Some(self.node.node_id()) {
                    return RpcResponse::Admin(Err(
                        "this node is no longer the leader; retry".into()
                    ));
                }
                RpcResponse::Admin(leader_admin(&self.node, op).await)
            }
            RpcRequest::Status => RpcResponse::Status(Ok(local_view(&self.node))),
            RpcRequest::CaStatus => RpcResponse::CaStatus(self.tls.view()),
            RpcRequest::Join {
                token_secret,
                csr_pem,
                info,
            } => RpcResponse::Joined(self.admit(token_secret, csr_pem, info).await.map(Box::new)),
        }
    }
}

/// How long a follower waits for its log to show a join token it does not
/// have yet (one created a moment ago through another node).
const TOKEN_CATCH_UP: Duration = Duration::from_secs(2);

impl Service {
    /// Whether the token is one this cluster issued, unused and not expired,
    /// judged on this node's applied state, before anything is proposed:
    /// a forged join costs a read, never a raft entry. Apply checks again
    /// (the authority on single use and expiry).
    async fn token_usable(&self, hash: &str) -> Result<(), String> {
        let read = |store: &Store| {
            store
                .token(hash)
                .map_err(|e| format!("cannot read the join tokens: {e}"))
        };
        let mut found = read(self.node.store())?;
        if found.is_none() && self.node.current_leader() != Some(self.node.node_id()) {
            // A follower may not have applied a token just issued elsewhere:
            // give the leader's commit index a heartbeat or two to arrive
            // and what it covers to be applied.
            let deadline = tokio::time::Instant::now() + TOKEN_CATCH_UP;
            tokio::time::sleep(Duration::from_millis(
                2 * self.node.opts.heartbeat_interval_ms,
            ))
            .await;
            let mut rx = self.node.raft.metrics();
            loop {
                let behind = {
                    let m = rx.borrow_and_update();
                    m.last_applied.map(|l| l.index) < m.last_log_index
                };
                if !behind {
                    break;
                }
                tokio::select! {
                    r = rx.changed() => if r.is_err() { break },
                    _ = tokio::time::sleep_until(deadline) => break,
                }
            }
            found = read(self.node.store())?;
        }
        let Some(token) = found else {
            return Err("the join token is not valid for this cluster".into());
        };
        if let Some(by) = token.used_by {
            return Err(format!("the join token was already used (by node {by})"));
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        if token.expires_ms <= now {
            return Err(format!(
                "the join token expired {} s ago",
                (now - token.expires_ms) / 1000
            ));
        }
        Ok(())
    }

    async fn admit(
        &self,
        secret: String,
        csr_pem: String,
        info: NodeInfo,
    ) -> Result<JoinGrant, String> {
        // Everything that can be judged here is, before raft hears of it.
        if secret.len() != 48 || !secret.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("the join token is not valid for this cluster".into());
        }
        let hash = JoinToken {
            secret: secret.to_ascii_lowercase(),
            ca_fingerprint: String::new(),
        }
        .hash();
        self.token_usable(&hash).await?;
        // A bad request must not spend the token; its key is what gets
        // pinned for the new node id.
        let key_sha256 = crate::pki::csr_key_sha256(&csr_pem).map_err(|e| e.to_string())?;
        let admit = Command::NodeAdmit {
            token_hash: hash,
            info: info.clone(),
            key_sha256: key_sha256.clone(),
        };
        admit.validate().map_err(|e| e.to_string())?;
        let outcome = self
            .node
            .propose(vec![admit])
            .await
            .map_err(|e| e.to_string())?;
        let node_id = match outcome.into_iter().next() {
            Some(Outcome::Admitted { node_id }) => node_id,
            Some(Outcome::Rejected { reason }) => return Err(reason),
            other => return Err(format!("unexpected outcome {other:?}")),
        };
        let pki = self.tls.pki();
        let node_pem = pki.issue(node_id, &csr_pem).map_err(|e| e.to_string())?;
        // The certificate carries the key that was pinned (same request).
        if crate::pki::pem_key_sha256(&node_pem).map_err(|e| e.to_string())? != key_sha256 {
            return Err("the issued certificate does not carry the pinned key".into());
        }
        let members = members(&self.node);
        let pins = members
            .keys()
            .filter_map(|id| Some((*id, self.tls.pins.pinned(*id)?)))
            .collect();
        admin(
            &self.node,
            AdminOp::AddNode {
                node_id,
                info: info.clone(),
            },
        )
        .await
        .map_err(|e| e.to_string())?;
        tracing::info!(node_id, name = %info.name, "admitted a node");
        Ok(JoinGrant {
            node_id,
            node_pem,
            ca_pem: pki.ca_pem().to_string(),
            ca_key_pem: pki.ca_key_pem().to_string(),
            cluster_name: self.cluster_name.clone(),
            members,
            pins,
            trusted: pki.trusted_pems().to_vec(),
        })
    }
}
