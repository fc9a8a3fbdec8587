//! A node's place in the cluster: `cluster init` (a CA and a one-voter
//! membership), `cluster token`, `cluster join` (verify the cluster by the
//! token's CA fingerprint, get a certificate and a node id, catch up as a
//! learner, become a voter), `leave` and `remove`; and starting raft with the
//! tasks every member runs (RPC service, promoter, CA follower).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hamail_store::{Store, decode, encode};
use hamail_types::{Command, NodeId, NodeInfo, Outcome};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::membership::admin;
use crate::network::{Contacts, Network};
use crate::pki::{JoinToken, Pki, join_client_config, pem_fingerprint, server_name};
use crate::promoter::promoter;
use crate::rpc::{AdminOp, RpcClient, RpcRequest, RpcResponse};
use crate::service::Service;
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
    pub info: NodeInfo,
    /// `[cluster]`: the cluster's name, raft timing and write limits.
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
                    Pki::create(&cluster.data_dir, &cluster.settings.node.name, id)?
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
            cluster_name: self.settings.node.name.clone(),
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
                    self.settings.node.name
                ));
            }
            return Err(ClusterError::Refused(format!(
                "this node is already node {id} of a cluster with other members; nothing to initialize"
            )));
        }
        let id: NodeId = 1;
        let pki = Pki::create(&self.data_dir, &self.settings.node.name, id)?;
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
            self.settings.node.name, self.settings.info.name
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
