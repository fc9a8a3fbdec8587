//! The group-commit proposer: turns concurrent client writes into few raft
//! entries, and hands each writer the outcomes of its own commands.
//!
//! Proposals queue on a channel. The proposer takes the first, waits for a
//! free in-flight slot, then drains everything else that arrived meanwhile
//! into the same entry. Under load, entries grow; alone, a write goes out at
//! once. This is where the batching comes from: openraft 0.9 waits for each
//! append's flush before it hands the log the next one, so each raft entry
//! costs one fsync and concurrent writers share it by sharing the entry.
//! A few entries may be in flight (one replicates while the next fills).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use hamail_types::{Command, NodeId, Outcome};
use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::forward::{Forwarder, leader_info};
use crate::rpc::{RpcRequest, RpcResponse};
use crate::{HamailRaft, NodeInfo, ProposeError, Request};

const MAX_BATCH_COMMANDS: usize = 8192;
/// An entry stops growing past this many bytes (mail bodies), so that one
/// replication message stays bounded; a single larger message still goes
/// out alone.
const MAX_BATCH_BYTES: usize = 4 << 20;

/// Where a proposal's outcomes go.
pub(crate) type Reply = oneshot::Sender<Result<Vec<Outcome>, ProposeError>>;

/// What a follower does with a proposal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IfFollower {
    /// Send it to the leader.
    Forward,
    /// Answer `NotLeader`: it was forwarded here already (one hop only).
    Refuse,
}

/// One writer's commands, waiting for an entry.
pub(crate) struct Proposal {
    pub(crate) commands: Vec<Command>,
    pub(crate) reply: Reply,
    pub(crate) if_follower: IfFollower,
}

impl Proposal {
    fn bytes(&self) -> usize {
        self.commands.iter().map(Command::approx_size).sum()
    }
}

/// Counters for benchmarks and `/metrics`.
#[derive(Debug, Default)]
pub struct ProposerStats {
    pub proposals: AtomicU64,
    pub entries: AtomicU64,
}

/// The proposer task: batches what arrives on `rx` into entries, at most
/// `in_flight` at once, until the channel closes.
pub(crate) async fn run(
    raft: HamailRaft,
    node_id: NodeId,
    mut rx: mpsc::Receiver<Proposal>,
    stats: Arc<ProposerStats>,
    forwarder: Arc<Forwarder>,
    in_flight: usize,
) {
    let slots = Arc::new(Semaphore::new(in_flight));
    // A proposal that did not fit the previous entry opens the next one.
    let mut carry: Option<Proposal> = None;
    loop {
        let first = match carry.take() {
            Some(p) => p,
            None => match rx.recv().await {
                Some(p) => p,
                None => break,
            },
        };
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        let batch;
        (batch, carry) = fill_batch(first, &mut rx);
        stats
            .proposals
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        stats.entries.fetch_add(1, Ordering::Relaxed);
        let raft = raft.clone();
        let forwarder = forwarder.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match leader_info(&raft) {
                Some((leader, info)) if leader != node_id => {
                    forward_batch(&forwarder, leader, info, batch).await
                }
                _ => write_batch(&raft, node_id, batch).await,
            }
        });
    }
}

/// `first` and whatever else is already waiting, up to the batch limits;
/// also the proposal that would have crossed the byte limit, if one did.
fn fill_batch(
    first: Proposal,
    rx: &mut mpsc::Receiver<Proposal>,
) -> (Vec<Proposal>, Option<Proposal>) {
    let mut n = first.commands.len();
    let mut bytes = first.bytes();
    let mut batch = vec![first];
    while n < MAX_BATCH_COMMANDS && bytes < MAX_BATCH_BYTES {
        match rx.try_recv() {
            Ok(p) => {
                let size = p.bytes();
                if bytes + size > MAX_BATCH_BYTES {
                    return (batch, Some(p));
                }
                n += p.commands.len();
                bytes += size;
                batch.push(p);
            }
            Err(_) => break,
        }
    }
    (batch, None)
}

/// Not the leader: the whole batch goes there in one RPC (but for writes
/// that were forwarded here, which are refused).
async fn forward_batch(
    forwarder: &Forwarder,
    leader: NodeId,
    info: NodeInfo,
    batch: Vec<Proposal>,
) {
    let (fwd, here): (Vec<Proposal>, Vec<Proposal>) = batch
        .into_iter()
        .partition(|p| p.if_follower == IfFollower::Forward);
    for p in here {
        let _ = p.reply.send(Err(ProposeError::NotLeader {
            leader: Some((leader, info.clone())),
        }));
    }
    if fwd.is_empty() {
        return;
    }
    let (commands, waiting) = concat_commands(fwd);
    let r = forwarder
        .call(leader, &info, RpcRequest::Propose(commands))
        .await
        .and_then(|resp| match resp {
            RpcResponse::Propose(Ok(outcomes)) => Ok(outcomes),
            RpcResponse::Propose(Err(e)) => Err(ProposeError::Failed(e)),
            _ => Err(ProposeError::Forward(
                "unexpected reply from the leader".into(),
            )),
        });
    reply_to_proposers(r, waiting);
}

/// The leader (or no leader known: openraft says who is): one entry,
/// stamped with this node's clock.
async fn write_batch(raft: &HamailRaft, node_id: NodeId, batch: Vec<Proposal>) {
    let (commands, waiting) = concat_commands(batch);
    let req = Request {
        time_ms: now_ms(),
        proposer: node_id,
        commands,
    };
    let r = raft
        .client_write(req)
        .await
        .map(|resp| resp.data.outcomes)
        .map_err(|e| match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => ProposeError::NotLeader {
                leader: f.leader_id.zip(f.leader_node),
            },
            RaftError::Fatal(f) => ProposeError::Stopped(f.to_string()),
            other => ProposeError::Failed(other.to_string()),
        });
    reply_to_proposers(r, waiting);
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The proposers of one entry, in the order of their commands: each one's
/// reply and how many commands it put in.
type Waiting = Vec<(Reply, usize)>;

/// Concatenates a batch's commands into one entry's, remembering whose are
/// whose.
fn concat_commands(batch: Vec<Proposal>) -> (Vec<Command>, Waiting) {
    let mut commands = Vec::new();
    let mut waiting = Vec::with_capacity(batch.len());
    for p in batch {
        waiting.push((p.reply, p.commands.len()));
        commands.extend(p.commands);
    }
    (commands, waiting)
}

/// Hands each proposer its own outcomes, or the entry's error.
fn reply_to_proposers(r: Result<Vec<Outcome>, ProposeError>, waiting: Waiting) {
    match r {
        Ok(outcomes) => {
            let mut outcomes = outcomes.into_iter();
            for (reply, count) in waiting {
                let mine: Vec<Outcome> = outcomes.by_ref().take(count).collect();
                let r = if mine.len() == count {
                    Ok(mine)
                } else {
                    Err(ProposeError::Failed(
                        "the state machine returned too few outcomes".into(),
                    ))
                };
                let _ = reply.send(r);
            }
        }
        Err(e) => {
            for (reply, _) in waiting {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proposal(
        n: usize,
    ) -> (
        Proposal,
        oneshot::Receiver<Result<Vec<Outcome>, ProposeError>>,
    ) {
        let (reply, rx) = oneshot::channel();
        let commands = (0..n)
            .map(|i| Command::TokenAdd {
                token_hash: format!("{i:064x}"),
                ttl_ms: 1,
            })
            .collect();
        let p = Proposal {
            commands,
            reply,
            if_follower: IfFollower::Forward,
        };
        (p, rx)
    }

    #[test]
    fn each_proposer_gets_its_own_outcomes() {
        let (a, mut ra) = proposal(2);
        let (b, mut rb) = proposal(1);
        let (commands, waiting) = concat_commands(vec![a, b]);
        assert_eq!(commands.len(), 3);
        let outcomes = (0..3).map(|i| Outcome::applied(i.to_string())).collect();
        reply_to_proposers(Ok(outcomes), waiting);
        let details = |r: Vec<Outcome>| -> Vec<String> {
            r.into_iter()
                .map(|o| match o {
                    Outcome::Applied { detail } => detail,
                    other => panic!("{other:?}"),
                })
                .collect()
        };
        assert_eq!(details(ra.try_recv().unwrap().unwrap()), ["0", "1"]);
        assert_eq!(details(rb.try_recv().unwrap().unwrap()), ["2"]);
    }

    #[test]
    fn too_few_outcomes_fail_the_proposer_left_short() {
        let (a, mut ra) = proposal(1);
        let (b, mut rb) = proposal(2);
        let (_, waiting) = concat_commands(vec![a, b]);
        reply_to_proposers(
            Ok(vec![Outcome::applied("x"), Outcome::applied("y")]),
            waiting,
        );
        assert!(ra.try_recv().unwrap().is_ok());
        assert!(matches!(
            rb.try_recv().unwrap(),
            Err(ProposeError::Failed(_))
        ));
    }
}
