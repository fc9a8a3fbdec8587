//! A node's place in the cluster: `cluster init` (a CA and a one-voter
//! membership), `cluster token`, `cluster join` (verify the cluster by the
//! token's CA fingerprint, get a certificate and a node id, catch up as a
//! learner, become a voter), `cluster status`, `leave` and `remove`; and the
//! RPC service every member runs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hamail_store::{Store, decode, encode};
use hamail_types::{Command, NodeId, NodeInfo, Outcome};
use openraft::ChangeMembers;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::network::{Contacts, Network};
use crate::node::leader_info;
use crate::pki::{JoinToken, Pki, join_client_config, pem_fingerprint, server_name};
use crate::rpc::{
    AdminOp, ClusterView, JoinGrant, MemberView, RpcClient, RpcHandler, RpcRequest, RpcResponse,
};
use crate::trust::{PeerTls, Pins};
use crate::{NodeOptions, ProposeError, RaftNode};

const KEY_NODE_ID: &str = "node_id";
const KEY_SEEDS: &str = "seed_members";
/// The pinned keys of the seed members (see `JoinGrant::pins`).
const KEY_SEED_PINS: &str = "seed_pins";
const KEY_LEFT: &str = "left_cluster";
/// How long a learner may take to catch up before promotion is abandoned.
const PROMOTE_PATIENCE: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    #[error(
        "this node is not in a cluster yet: run `hamail cluster init` here, or `hamail cluster join ADDRESS --token TOKEN`"
    )]
    NotInCluster,
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Propose(#[from] ProposeError),
    #[error(transparent)]
    Pki(#[from] crate::pki::PkiError),
    #[error(transparent)]
    Store(#[from] hamail_store::StoreError),
    #[error(transparent)]
    Start(#[from] crate::StartError),
    #[error("{0}")]
    Rpc(#[from] crate::rpc::RpcError),
}

/// What a node says about itself, from its config.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    pub cluster_name: String,
    pub info: NodeInfo,
    pub node: NodeOptions,
}

struct Running {
    node: Arc<RaftNode>,
    tls: Arc<PeerTls>,
}

pub struct Cluster {
    data_dir: PathBuf,
    settings: ClusterSettings,
    store: Store,
    running: tokio::sync::RwLock<Option<Running>>,
    /// The RPC listener, bound at start, served once the node is a member.
    listener: std::sync::Mutex<Option<TcpListener>>,
    /// Members learned when joining, accepted until the log says more.
    seeds: Arc<RwLock<BTreeMap<NodeId, NodeInfo>>>,
    /// Their pinned keys, used until this node's applied state has them.
    seed_pins: Arc<RwLock<BTreeMap<NodeId, String>>>,
    cancel: CancellationToken,
    tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
    /// Serialises init / join / leave on this node.
    lifecycle: tokio::sync::Mutex<()>,
}

impl Cluster {
    /// Opens the node's cluster state: resumes membership, bootstraps a new
    /// one-node cluster if asked to, or waits for `init` / `join`.
    pub async fn open(
        data_dir: PathBuf,
        settings: ClusterSettings,
        store: Store,
        listener: TcpListener,
        bootstrap: bool,
        cancel: CancellationToken,
    ) -> Result<Arc<Cluster>, ClusterError> {
        if store.raft_meta_get(KEY_LEFT)?.is_some() {
            return Err(ClusterError::Refused(format!(
                "this node left its cluster; wipe {} before it serves again",
                data_dir.display()
            )));
        }
        let seeds = match store.raft_meta_get(KEY_SEEDS)? {
            Some(v) => decode("seed members", &v)?,
            None => BTreeMap::new(),
        };
        let seed_pins = match store.raft_meta_get(KEY_SEED_PINS)? {
            Some(v) => decode("seed pins", &v)?,
            None => BTreeMap::new(),
        };
        let cluster = Arc::new(Cluster {
            data_dir,
            settings,
            store,
            running: tokio::sync::RwLock::new(None),
            listener: std::sync::Mutex::new(Some(listener)),
            seeds: Arc::new(RwLock::new(seeds)),
            seed_pins: Arc::new(RwLock::new(seed_pins)),
            cancel,
            tasks: std::sync::Mutex::new(Vec::new()),
            lifecycle: tokio::sync::Mutex::new(()),
        });
        match cluster.stored_node_id()? {
            Some(id) => {
                let pki = if Pki::exists(&cluster.data_dir) {
                    Pki::load(&cluster.data_dir, id)?
                } else if id == 1 {
                    // A one-node cluster from before the cluster PKI existed.
                    Pki::create(&cluster.data_dir, &cluster.settings.cluster_name, id)?
                } else {
                    return Err(ClusterError::Refused(format!(
                        "node {id} has no certificates in {}",
                        Pki::dir_of(&cluster.data_dir).display()
                    )));
                };
                cluster.start(id, pki).await?;
            }
            None if bootstrap => {
                cluster.init().await?;
            }
            None => {
                tracing::info!(
                    "not in a cluster: waiting for `hamail cluster init` or `hamail cluster join`"
                );
            }
        }
        Ok(cluster)
    }

    fn stored_node_id(&self) -> Result<Option<NodeId>, ClusterError> {
        Ok(match self.store.raft_meta_get(KEY_NODE_ID)? {
            Some(v) => Some(decode::<u64>("node id", &v)?),
            None => None,
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub async fn node(&self) -> Option<Arc<RaftNode>> {
        self.running.read().await.as_ref().map(|r| r.node.clone())
    }

    /// The raft node if there is one and the membership is not being
    /// changed at this instant (never waits).
    pub fn node_now(&self) -> Option<Arc<RaftNode>> {
        self.running
            .try_read()
            .ok()?
            .as_ref()
            .map(|r| r.node.clone())
    }

    pub(crate) fn settings(&self) -> &ClusterSettings {
        &self.settings
    }

    /// Serialises init, join, leave and CA rotation on this node.
    pub(crate) async fn lifecycle_lock(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.lifecycle.lock().await
    }

    pub(crate) async fn require_node(&self) -> Result<(Arc<RaftNode>, Arc<PeerTls>), ClusterError> {
        let r = self.running.read().await;
        let r = r.as_ref().ok_or(ClusterError::NotInCluster)?;
        Ok((r.node.clone(), r.tls.clone()))
    }

    /// Starts raft and the RPC service as node `id`.
    async fn start(&self, id: NodeId, pki: Pki) -> Result<Arc<RaftNode>, ClusterError> {
        let tls = PeerTls::new(pki, Pins::new(self.store.clone(), self.seed_pins.clone()))?;
        // A rotation step applied before a crash or a stop: take it now,
        // before the first handshake.
        if let Err(e) = tls.reconcile(&self.store) {
            tracing::error!(error = %e, "cannot take the cluster's CA state");
        }
        let network = Network {
            me: id,
            tls: tls.clone(),
            contacts: Arc::new(Contacts::default()),
            elision: Arc::new(crate::network::Elision::new(
                Duration::from_millis(self.settings.node.heartbeat_interval_ms),
                self.settings.node.elide_heartbeats,
            )),
        };
        let node = RaftNode::start(
            id,
            self.store.clone(),
            self.data_dir.clone(),
            &self.settings.node,
            network,
        )
        .await?;
        let listener = self
            .listener
            .lock()
            .ok()
            .and_then(|mut l| l.take())
            .ok_or_else(|| ClusterError::Refused("the RPC listener is already in use".into()))?;
        let service = Arc::new(Service {
            node: node.clone(),
            tls: tls.clone(),
            seeds: self.seeds.clone(),
            cluster_name: self.settings.cluster_name.clone(),
        });
        let task = tokio::spawn(crate::rpc::serve(
            listener,
            tls.clone(),
            service,
            self.cancel.child_token(),
        ));
        let promote = tokio::spawn(promoter(node.clone(), self.cancel.child_token()));
        let follow = tokio::spawn(crate::trust::follow_ca_state(
            tls.clone(),
            self.store.clone(),
            node.raft.clone(),
            self.cancel.child_token(),
        ));
        if let Ok(mut t) = self.tasks.lock() {
            t.push(task);
            t.push(promote);
            t.push(follow);
        }
        *self.running.write().await = Some(Running {
            node: node.clone(),
            tls,
        });
        tracing::info!(node_id = id, "raft and cluster RPC started");
        Ok(node)
    }

    /// Creates the cluster: CA, this node's certificate, one-voter membership.
    pub async fn init(&self) -> Result<String, ClusterError> {
        let _l = self.lifecycle.lock().await;
        if let Some(id) = self.stored_node_id()? {
            // Init twice on the same first node is a no-op, so scripts may
            // repeat it; anything else is a real conflict.
            let sole_first = id == 1
                && self.node().await.is_some_and(|n| {
                    let voters: Vec<u64> = n
                        .raft
                        .metrics()
                        .borrow()
                        .membership_config
                        .membership()
                        .voter_ids()
                        .collect();
                    voters == [1]
                });
            if sole_first {
                return Ok(format!(
                    "already initialized: this node is node 1 of cluster {}",
                    self.settings.cluster_name
                ));
            }
            return Err(ClusterError::Refused(format!(
                "this node is already node {id} of a cluster with other members; nothing to initialize"
            )));
        }
        let id: NodeId = 1;
        let pki = Pki::create(&self.data_dir, &self.settings.cluster_name, id)?;
        self.store.raft_meta_put(KEY_NODE_ID, &encode(&id), true)?;
        let key_sha256 = pki.node_key_sha256()?;
        let node = self.start(id, pki).await?;
        let members = BTreeMap::from([(id, self.settings.info.clone())]);
        node.raft
            .initialize(members)
            .await
            .map_err(|e| ClusterError::Refused(format!("raft initialize: {e}")))?;
        node.wait_for_leader(Duration::from_secs(30)).await;
        node.propose(vec![Command::NodeRegister {
            node_id: id,
            info: self.settings.info.clone(),
            key_sha256,
        }])
        .await?;
        tracing::info!(node_id = id, "initialized a one-node cluster");
        Ok(format!(
            "initialized cluster {} with node {id} ({}); add nodes with `hamail cluster token`",
            self.settings.cluster_name, self.settings.info.name
        ))
    }

    /// A single-use join token, valid for `ttl`.
    pub async fn token(&self, ttl: Duration) -> Result<String, ClusterError> {
        let (node, tls) = self.require_node().await?;
        let token = JoinToken::generate(tls.pki().ca_fingerprint()?)?;
        let outcome = node
            .propose(vec![Command::TokenAdd {
                token_hash: token.hash(),
                ttl_ms: ttl.as_millis() as u64,
            }])
            .await?;
        match outcome.into_iter().next() {
            Some(Outcome::Applied { .. }) => Ok(token.to_string()),
            Some(Outcome::Rejected { reason }) => Err(ClusterError::Refused(reason)),
            other => Err(ClusterError::Refused(format!(
                "unexpected outcome {other:?}"
            ))),
        }
    }

    /// Joins the cluster a member at `addr` belongs to.
    pub async fn join(&self, addr: &str, token: &str) -> Result<String, ClusterError> {
        let _l = self.lifecycle.lock().await;
        if let Some(id) = self.stored_node_id()? {
            return Err(ClusterError::Refused(format!(
                "this node's data directory {} already holds a cluster (it is node {id}); \
                 a node joins only with a fresh data directory",
                self.data_dir.display()
            )));
        }
        let token = JoinToken::parse(token)?;
        let (csr_pem, key_pem) = crate::pki::make_csr()?;
        let mut client = RpcClient::new(
            addr.to_string(),
            server_name(0),
            join_client_config(&token.ca_fingerprint)?,
        );
        let req = RpcRequest::Join {
            token_secret: token.secret.clone(),
            csr_pem,
            info: self.settings.info.clone(),
        };
        let grant = match client.call(&req, Duration::from_secs(30)).await {
            Ok(RpcResponse::Joined(Ok(g))) => *g,
            Ok(RpcResponse::Joined(Err(reason))) => return Err(ClusterError::Refused(reason)),
            Ok(_) => {
                return Err(ClusterError::Refused(format!(
                    "{addr} sent an unexpected reply"
                )));
            }
            Err(crate::rpc::RpcError::Tls { reason, .. }) => {
                return Err(ClusterError::Refused(format!(
                    "{addr} is not the cluster this token is for (its CA does not match the token's fingerprint): {reason}"
                )));
            }
            Err(e) => return Err(e.into()),
        };
        // The token pins one CA the cluster trusts: the signing one, or,
        // during a CA rotation, the other.
        let mut sent = vec![pem_fingerprint(&grant.ca_pem)?];
        for t in &grant.trusted {
            sent.push(pem_fingerprint(t)?);
        }
        if !sent.contains(&token.ca_fingerprint) {
            return Err(ClusterError::Refused(
                "the cluster sent a CA that does not match the token".into(),
            ));
        }
        let id = grant.node_id;
        let pki = Pki::from_join(
            &self.data_dir,
            id,
            grant.ca_pem,
            grant.ca_key_pem,
            grant.trusted,
            grant.node_pem,
            key_pem,
        )?;
        if let Ok(mut s) = self.seeds.write() {
            *s = grant.members.clone();
        }
        if let Ok(mut s) = self.seed_pins.write() {
            *s = grant.pins.clone();
        }
        self.store
            .raft_meta_put(KEY_SEEDS, &encode(&grant.members), true)?;
        self.store
            .raft_meta_put(KEY_SEED_PINS, &encode(&grant.pins), true)?;
        self.store.raft_meta_put(KEY_NODE_ID, &encode(&id), true)?;
        let node = self.start(id, pki).await?;
        // Wait to become a voter: the leader promotes us once we caught up.
        let deadline = tokio::time::Instant::now() + PROMOTE_PATIENCE;
        let mut rx = node.raft.metrics();
        loop {
            let voter = rx
                .borrow()
                .membership_config
                .membership()
                .voter_ids()
                .any(|v| v == id);
            if voter {
                break;
            }
            tokio::select! {
                r = rx.changed() => if r.is_err() {
                    return Err(ClusterError::Refused("raft stopped while joining".into()));
                },
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(ClusterError::Refused(format!(
                        "joined as node {id} but not promoted to voter within {PROMOTE_PATIENCE:?}; see `hamail cluster status`"
                    )));
                }
            }
        }
        Ok(format!(
            "joined cluster {} as node {id} ({}), now a voter",
            grant.cluster_name, self.settings.info.name
        ))
    }

    pub async fn status(&self) -> Result<ClusterView, ClusterError> {
        let (node, _) = self.require_node().await?;
        if let Some((leader, info)) = leader_info(&node.raft)
            && leader != node.node_id()
            && let Ok(RpcResponse::Status(Ok(view))) =
                node.ask_leader(leader, &info, RpcRequest::Status).await
        {
            return Ok(view);
        }
        Ok(local_view(&node))
    }

    /// Removes this node from the cluster; then this process stops.
    pub async fn leave(&self) -> Result<String, ClusterError> {
        let _l = self.lifecycle.lock().await;
        let (node, _) = self.require_node().await?;
        let id = node.node_id();
        let msg = admin(&node, AdminOp::RemoveNode { node_id: id }).await?;
        self.store.raft_meta_put(KEY_LEFT, b"1", true)?;
        tracing::info!(node_id = id, "left the cluster; stopping");
        self.cancel.cancel();
        Ok(format!(
            "{msg}; this node stops now (wipe its data directory before reusing it)"
        ))
    }

    /// Removes another node, by name or id.
    pub async fn remove(&self, which: &str) -> Result<String, ClusterError> {
        let (node, _) = self.require_node().await?;
        let m = node.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let found = membership
            .nodes()
            .find(|(id, n)| n.name == which || id.to_string() == which)
            .map(|(id, _)| *id);
        let Some(id) = found else {
            return Err(ClusterError::Refused(format!(
                "no node {which:?} in the cluster (see `hamail cluster status`)"
            )));
        };
        admin(&node, AdminOp::RemoveNode { node_id: id }).await
    }

    /// Stops raft and the RPC service.
    pub async fn shutdown(&self) {
        self.cancel.cancel();
        if let Some(r) = self.running.read().await.as_ref() {
            r.node.shutdown().await;
        }
        let tasks: Vec<_> = self
            .tasks
            .lock()
            .map(|mut t| t.drain(..).collect())
            .unwrap_or_default();
        for t in tasks {
            let _ = t.await;
        }
    }
}

/// Runs a membership operation on the leader (here, or forwarded).
async fn admin(node: &Arc<RaftNode>, op: AdminOp) -> Result<String, ClusterError> {
    let Some((leader, info)) = leader_info(&node.raft) else {
        return Err(ProposeError::NotLeader { leader: None }.into());
    };
    if leader == node.node_id() {
        return leader_admin(node, op).await.map_err(ClusterError::Refused);
    }
    match node
        .forward_call(leader, &info, RpcRequest::Admin(op))
        .await?
    {
        RpcResponse::Admin(Ok(msg)) => Ok(msg),
        RpcResponse::Admin(Err(e)) => Err(ClusterError::Refused(e)),
        _ => Err(ClusterError::Refused(
            "unexpected reply from the leader".into(),
        )),
    }
}

/// Membership changes, on the leader, one at a time.
async fn leader_admin(node: &Arc<RaftNode>, op: AdminOp) -> Result<String, String> {
    let _l = node.membership_lock.lock().await;
    match op {
        AdminOp::AddNode { node_id, info } => {
            node.raft
                .add_learner(node_id, info.clone(), false)
                .await
                .map_err(|e| format!("add learner {node_id}: {e}"))?;
            // The leader's promoter makes it a voter once it caught up.
            Ok(format!("node {node_id} ({}) added as a learner", info.name))
        }
        AdminOp::RemoveNode { node_id } => {
            let m = node.raft.metrics().borrow().clone();
            let membership = m.membership_config.membership();
            let voters: BTreeSet<u64> = membership.voter_ids().collect();
            let is_learner = membership.learner_ids().any(|l| l == node_id);
            if !voters.contains(&node_id) && !is_learner {
                return Err(format!("node {node_id} is not a member"));
            }
            if voters.contains(&node_id) && voters.len() == 1 {
                return Err(format!(
                    "node {node_id} is the last voter: removing it would end the cluster"
                ));
            }
            // Record the removal first (it frees the node's name for a
            // replacement), then change the membership.
            node.propose_local(vec![Command::NodeRemove { node_id }])
                .await
                .map_err(|e| format!("remove node {node_id}: {e}"))?;
            let change = if voters.contains(&node_id) {
                ChangeMembers::RemoveVoters(BTreeSet::from([node_id]))
            } else {
                ChangeMembers::RemoveNodes(BTreeSet::from([node_id]))
            };
            node.raft
                .change_membership(change, false)
                .await
                .map_err(|e| format!("remove node {node_id}: {e}"))?;
            Ok(format!("node {node_id} removed"))
        }
    }
}

/// How far behind the leader's log a learner may be when it is promoted:
/// under a steady write load at geo distances it is never exactly level.
const PROMOTE_LAG: u64 = 64;

/// On whichever node leads: promotes every learner (a node that joined)
/// whose log is within `PROMOTE_LAG` entries of the leader's. A loop rather
/// than a task per join, so a join survives a change of leader.
async fn promoter(node: Arc<RaftNode>, cancel: CancellationToken) {
    let mut rx = node.raft.metrics();
    loop {
        let ready: Vec<NodeId> = {
            let m = rx.borrow_and_update();
            if m.state != openraft::ServerState::Leader {
                Vec::new()
            } else {
                let target = m.last_log_index.unwrap_or(0);
                m.membership_config
                    .membership()
                    .learner_ids()
                    .filter(|id| {
                        let matched = m
                            .replication
                            .as_ref()
                            .and_then(|r| r.get(id).cloned().flatten())
                            .map(|l| l.index);
                        matched.is_some_and(|i| i + PROMOTE_LAG >= target)
                    })
                    .collect()
            }
        };
        for id in ready {
            let _l = node.membership_lock.lock().await;
            // Still a learner (not removed meanwhile)?
            let learner = node
                .raft
                .metrics()
                .borrow()
                .membership_config
                .membership()
                .learner_ids()
                .any(|l| l == id);
            if !learner {
                continue;
            }
            match node
                .raft
                .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), true)
                .await
            {
                Ok(_) => tracing::info!(node_id = id, "learner caught up: now a voter"),
                Err(e) => tracing::warn!(node_id = id, error = %e, "promotion failed; retrying"),
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            r = rx.changed() => if r.is_err() { return },
        }
        // At most a few checks a second under a write load.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn local_view(node: &Arc<RaftNode>) -> ClusterView {
    let m = node.raft.metrics().borrow().clone();
    let membership = m.membership_config.membership();
    let voters: BTreeSet<u64> = membership.voter_ids().collect();
    let me = node.node_id();
    let am_leader = m.current_leader == Some(me);
    let heartbeat_dead = Duration::from_millis(node.opts.election_timeout_max_ms);
    let members = membership
        .nodes()
        .map(|(id, info)| {
            let role = if m.current_leader == Some(*id) {
                "leader"
            } else if voters.contains(id) {
                "voter"
            } else {
                "learner"
            };
            let matched = m
                .replication
                .as_ref()
                .and_then(|r| r.get(id).cloned().flatten())
                .map(|l| l.index);
            let contact = if *id == me {
                Some(Duration::ZERO)
            } else {
                node.contacts().since(*id)
            };
            MemberView {
                id: *id,
                name: info.name.clone(),
                site: info.site.clone(),
                rpc_addr: info.rpc_addr.clone(),
                dns_addr: info.dns_addr.clone(),
                smtp_addr: info.smtp_addr.clone(),
                role: role.into(),
                reachable: if am_leader || *id == me {
                    Some(contact.is_some_and(|c| c < heartbeat_dead))
                } else {
                    None
                },
                last_contact_ms: contact.map(|c| c.as_millis() as u64),
                match_index: if *id == me { m.last_log_index } else { matched },
                lag: if *id == me {
                    Some(0)
                } else {
                    matched.map(|x| m.last_log_index.unwrap_or(0).saturating_sub(x))
                },
            }
        })
        .collect();
    ClusterView {
        reported_by: me,
        leader: m.current_leader,
        term: m.current_term,
        last_log_index: m.last_log_index,
        commit_index: m.last_applied.map(|l| l.index),
        applied_index: m.last_applied.map(|l| l.index),
        members,
    }
}

/// The RPC service of a member.
struct Service {
    node: Arc<RaftNode>,
    tls: Arc<PeerTls>,
    seeds: Arc<RwLock<BTreeMap<NodeId, NodeInfo>>>,
    cluster_name: String,
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
        let m = self.node.raft.metrics();
        let m = m.borrow();
        let in_log = m
            .membership_config
            .membership()
            .nodes()
            .any(|(_, n)| ip_of(&n.rpc_addr) == Some(ip));
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
            } => RpcResponse::Joined(self.join(token_secret, csr_pem, info).await.map(Box::new)),
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

    async fn join(
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
        let members: BTreeMap<NodeId, NodeInfo> = self
            .node
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .nodes()
            .map(|(id, n)| (*id, n.clone()))
            .collect();
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

/// Parses `--ttl` values: `90s`, `30m`, `1h`, `2d` (seconds without a unit).
pub fn parse_ttl(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 90s, 30m, 1h, 2d"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => return Err(format!("invalid duration {s:?}: unit must be s, m, h or d")),
    };
    if secs == 0 || secs > 30 * 86400 {
        return Err(format!("invalid duration {s:?}: from 1s to 30d"));
    }
    Ok(Duration::from_secs(secs))
}
