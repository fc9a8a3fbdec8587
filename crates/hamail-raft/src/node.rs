//! A running raft node: openraft over our storage and network, the propose
//! API (writes go through the group-commit proposer, `proposer.rs`), calls
//! to the leader, and what the node tells of itself (quorum, caught up,
//! `hamail status`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hamail_config::ClusterSection;
use hamail_store::Store;
use hamail_types::{Command, NodeId, Outcome};
use openraft::{Config, Raft, ServerState, SnapshotPolicy};
use tokio::sync::{mpsc, oneshot};

use crate::forward::Forwarder;
use crate::network::{Contacts, Network};
use crate::proposer::{IfFollower, Proposal, ProposerStats};
use crate::rpc::{RpcRequest, RpcResponse};
use crate::{HamailRaft, NodeInfo, open_storage};

/// Raft timing, snapshot policy and write limits: the config's `[cluster]`
/// section itself, which holds their defaults and validation (one place).
pub type NodeOptions = ClusterSection;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    #[error("invalid raft settings: {0}")]
    Config(String),
    #[error("cannot open the raft storage: {0}")]
    Storage(String),
    #[error("raft failed to start: {0}")]
    Raft(String),
}

#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ProposeError {
    #[error("this node is not the leader{}", .leader.as_ref().map(|(id, n)| format!(" (the leader is node {id}, {n})")).unwrap_or_else(|| "; no leader is known (no quorum?)".into()))]
    NotLeader { leader: Option<(NodeId, NodeInfo)> },
    #[error(
        "the write was not committed within {0} ms: no quorum? (a majority of the cluster must be reachable; the write may still be applied if the cluster recovers)"
    )]
    NoQuorum(u64),
    #[error(
        "forwarding to the leader failed: {0} (if a majority of the cluster is unreachable there is no quorum; otherwise retry once a new leader is elected)"
    )]
    Forward(String),
    #[error("raft stopped: {0}")]
    Stopped(String),
    #[error("write failed: {0}")]
    Failed(String),
}

pub struct RaftNode {
    pub raft: HamailRaft,
    node_id: NodeId,
    store: Store,
    /// The proposer's queue.
    tx: mpsc::Sender<Proposal>,
    pub stats: Arc<ProposerStats>,
    write_timeout: Duration,
    network: Network,
    forwarder: Arc<Forwarder>,
    /// Membership changes, one at a time.
    pub(crate) membership_lock: tokio::sync::Mutex<()>,
    pub(crate) opts: NodeOptions,
    /// When this node last heard from a leader (ms since `started`).
    leader_contact_ms: AtomicU64,
    started: std::time::Instant,
    /// Set once this node's applied state is a full member's (see
    /// `is_caught_up`); never cleared while the process runs.
    caught_up: std::sync::atomic::AtomicBool,
    /// See `tables_current`.
    catch_up_to: AtomicU64,
}

/// What `hamail status` shows of raft.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RaftStatus {
    pub node_id: NodeId,
    pub state: String,
    pub term: u64,
    pub leader: Option<NodeId>,
    pub last_log_index: Option<u64>,
    pub millis_since_quorum_ack: Option<u64>,
    pub applied_index: Option<u64>,
    pub snapshot_index: Option<u64>,
    pub purged_index: Option<u64>,
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
    pub nodes: BTreeMap<NodeId, NodeInfo>,
    /// Empty AppendEntries left out as redundant (see `network::Elision`).
    #[serde(default)]
    pub heartbeats_elided: u64,
}

impl RaftNode {
    /// Starts raft on an opened store. `data_dir` holds the snapshot files.
    pub async fn start(
        node_id: NodeId,
        store: Store,
        data_dir: PathBuf,
        opts: &NodeOptions,
        network: Network,
    ) -> Result<Arc<RaftNode>, StartError> {
        if opts.proposals_in_flight == 0 {
            // No slot would ever free: every write would wait forever.
            return Err(StartError::Config(
                "proposals_in_flight must be at least 1".into(),
            ));
        }
        let config = Config {
            cluster_name: opts.name.clone(),
            heartbeat_interval: opts.heartbeat_interval_ms,
            election_timeout_min: opts.election_timeout_min_ms,
            election_timeout_max: opts.election_timeout_max_ms,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(opts.snapshot_logs_since_last),
            max_in_snapshot_log_to_keep: opts.max_logs_kept_after_snapshot,
            // Snapshot chunks cross TLS and, in production, long links.
            install_snapshot_timeout: 10_000,
            // Entries carry mail bodies (up to 4 MiB of batch, or one whole
            // message): a bounded count keeps one AppendEntries well under
            // the RPC frame limit.
            max_payload_entries: 16,
            // Bounded explicitly: the RPC frame limit is sized for it.
            snapshot_max_chunk_size: crate::rpc::SNAPSHOT_CHUNK,
            ..Default::default()
        };
        let config = Arc::new(
            config
                .validate()
                .map_err(|e| StartError::Config(e.to_string()))?,
        );
        let (log, sm) = open_storage(store.clone(), data_dir.join("snapshots"))
            .map_err(|e| StartError::Storage(e.to_string()))?;
        let raft = Raft::new(node_id, config, network.clone(), log, sm)
            .await
            .map_err(|e| StartError::Raft(e.to_string()))?;
        let _ = network.elision.metrics.set(raft.metrics());
        let (tx, rx) = mpsc::channel(16384);
        let stats = Arc::new(ProposerStats::default());
        let write_timeout = Duration::from_millis(opts.write_timeout_ms);
        let in_flight = opts.proposals_in_flight;
        let forwarder = Arc::new(Forwarder::new(
            network.tls.clone(),
            write_timeout,
            in_flight,
        ));
        tokio::spawn(crate::proposer::run(
            raft.clone(),
            node_id,
            rx,
            stats.clone(),
            forwarder.clone(),
            in_flight,
        ));
        let node = Arc::new(RaftNode {
            raft,
            node_id,
            store,
            tx,
            stats,
            write_timeout,
            network,
            forwarder,
            membership_lock: tokio::sync::Mutex::new(()),
            opts: opts.clone(),
            leader_contact_ms: AtomicU64::new(0),
            started: std::time::Instant::now(),
            caught_up: std::sync::atomic::AtomicBool::new(false),
            catch_up_to: AtomicU64::new(0),
        });
        node.elect_if_sole_voter().await;
        Ok(node)
    }

    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// A leader's AppendEntries (heartbeat or data) reached this node,
    /// telling it the leader's commit index. The first contact after a start
    /// or after a gap longer than an election timeout sets what this node
    /// must apply before its tables count as current (`tables_current`).
    pub(crate) fn note_leader_contact(&self, leader_commit: Option<u64>) {
        let now = (self.started.elapsed().as_millis() as u64).max(1);
        let prev = self.leader_contact_ms.fetch_max(now, Ordering::Relaxed);
        if prev == 0 || now.saturating_sub(prev) > self.opts.election_timeout_max_ms {
            self.catch_up_to
                .fetch_max(leader_commit.unwrap_or(0), Ordering::Relaxed);
        }
    }

    /// Whether this node's replicated tables (recipients, domains) are
    /// current enough to judge by: a leader's are; a follower's once it has
    /// applied what was committed when it (re)gained its leader. A node
    /// back from a restart or a partition would otherwise refuse with 550
    /// a recipient added while it was away, until its log caught up.
    pub fn tables_current(&self) -> bool {
        let rx = self.raft.metrics();
        let m = rx.borrow();
        if m.state == ServerState::Leader {
            return true;
        }
        let applied = m.last_applied.map(|l| l.index).unwrap_or(0);
        applied >= self.catch_up_to.load(Ordering::Relaxed)
    }

    /// Whether this node can currently get a write committed: a leader
    /// that heard from a majority recently, or a follower that heard from
    /// its leader recently. "Recently" is one maximal election timeout. The
    /// smtpd asks this before it takes a message (`421` otherwise), so that
    /// senders go to the next MX at once rather than wait for a timeout.
    pub fn has_quorum(&self) -> bool {
        // Asked per SMTP session and per MAIL: read the metrics in place.
        let rx = self.raft.metrics();
        let m = rx.borrow();
        let window = self.opts.election_timeout_max_ms;
        match m.state {
            ServerState::Leader => {
                let mut voters = m.membership_config.membership().voter_ids();
                let sole = voters.next() == Some(self.node_id) && voters.next().is_none();
                sole || m.millis_since_quorum_ack.is_some_and(|ms| ms <= window)
            }
            ServerState::Follower | ServerState::Learner => {
                let last = self.leader_contact_ms.load(Ordering::Relaxed);
                m.current_leader.is_some()
                    && last > 0
                    && (self.started.elapsed().as_millis() as u64).saturating_sub(last) <= window
            }
            _ => false,
        }
    }

    /// Whether this node's applied state may be served: it is a voter and
    /// has applied the membership entry that made it one. A node rebuilt
    /// from an empty data directory joins as a learner and is promoted only
    /// once it caught up, so until then it holds a partial copy (no
    /// recipients, old zones): it must neither answer DNS from it (a serial
    /// older than the one the site served before) nor judge recipients by
    /// it (a 550 for a valid address). A node restarted with its data is a
    /// voter whose own log holds that entry, so it serves again at once, cut
    /// off or not. Sticky: once true it stays true.
    pub fn is_caught_up(&self) -> bool {
        if self.caught_up.load(Ordering::Relaxed) {
            return true;
        }
        let rx = self.raft.metrics();
        let m = rx.borrow();
        let voter = m
            .membership_config
            .membership()
            .voter_ids()
            .any(|v| v == self.node_id);
        let entry = m.membership_config.log_id().map(|l| l.index).unwrap_or(0);
        let applied = m.last_applied.map(|l| l.index).unwrap_or(0);
        let ready = voter && applied >= entry;
        if ready {
            self.caught_up.store(true, Ordering::Relaxed);
        }
        ready
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// A sole voter need not wait out an election timeout after a restart.
    async fn elect_if_sole_voter(&self) {
        let m = self.raft.metrics().borrow().clone();
        let voters: Vec<u64> = m.membership_config.membership().voter_ids().collect();
        if voters == [self.node_id] {
            let _ = self.raft.trigger().elect().await;
        }
    }

    /// Waits until this node knows a leader (or `timeout` passes).
    pub async fn wait_for_leader(&self, timeout: Duration) -> Option<NodeId> {
        let mut rx = self.raft.metrics();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(l) = rx.borrow().current_leader {
                return Some(l);
            }
            tokio::select! {
                r = rx.changed() => if r.is_err() { return None },
                _ = tokio::time::sleep_until(deadline) => return None,
            }
        }
    }

    pub fn contacts(&self) -> &Arc<Contacts> {
        &self.network.contacts
    }

    pub fn current_leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow().current_leader
    }

    /// Proposes commands; returns once they are committed and applied, with
    /// one outcome per command. On a follower the batch goes to the leader.
    pub async fn propose(&self, commands: Vec<Command>) -> Result<Vec<Outcome>, ProposeError> {
        self.submit(commands, IfFollower::Forward).await
    }

    /// Proposes without forwarding (the leader's side of a forward).
    pub async fn propose_local(
        &self,
        commands: Vec<Command>,
    ) -> Result<Vec<Outcome>, ProposeError> {
        self.submit(commands, IfFollower::Refuse).await
    }

    async fn submit(
        &self,
        commands: Vec<Command>,
        if_follower: IfFollower,
    ) -> Result<Vec<Outcome>, ProposeError> {
        let ms = self.write_timeout.as_millis() as u64;
        let (reply, rx) = oneshot::channel();
        let go = async {
            self.tx
                .send(Proposal {
                    commands,
                    reply,
                    if_follower,
                })
                .await
                .map_err(|_| ProposeError::Stopped("the proposer has stopped".into()))?;
            rx.await
                .map_err(|_| ProposeError::Stopped("the proposer dropped the write".into()))?
        };
        match tokio::time::timeout(self.write_timeout, go).await {
            Ok(r) => r,
            Err(_) => Err(ProposeError::NoQuorum(ms)),
        }
    }

    /// One RPC to the leader (membership changes, status).
    pub(crate) async fn forward_call(
        &self,
        leader: NodeId,
        info: &NodeInfo,
        req: RpcRequest,
    ) -> Result<RpcResponse, ProposeError> {
        self.forwarder.call(leader, info, req).await
    }

    /// One RPC to the leader with a short deadline, for read-only questions.
    pub(crate) async fn ask_leader(
        &self,
        leader: NodeId,
        info: &NodeInfo,
        req: RpcRequest,
    ) -> Result<RpcResponse, ProposeError> {
        self.forwarder
            .call_within(leader, info, req, Duration::from_secs(2))
            .await
    }

    pub fn status(&self) -> RaftStatus {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: Vec<u64> = membership.voter_ids().collect();
        let learners: Vec<u64> = membership.learner_ids().collect();
        let nodes = membership.nodes().map(|(id, n)| (*id, n.clone())).collect();
        RaftStatus {
            node_id: self.node_id,
            state: match m.state {
                ServerState::Leader => "leader",
                ServerState::Follower => "follower",
                ServerState::Candidate => "candidate",
                ServerState::Learner => "learner",
                ServerState::Shutdown => "shutdown",
            }
            .into(),
            term: m.current_term,
            leader: m.current_leader,
            last_log_index: m.last_log_index,
            millis_since_quorum_ack: m.millis_since_quorum_ack,
            applied_index: m.last_applied.map(|l| l.index),
            snapshot_index: m.snapshot.map(|l| l.index),
            purged_index: m.purged.map(|l| l.index),
            voters,
            learners,
            heartbeats_elided: self
                .network
                .elision
                .elided
                .load(std::sync::atomic::Ordering::Relaxed),
            nodes,
        }
    }

    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
    }
}
