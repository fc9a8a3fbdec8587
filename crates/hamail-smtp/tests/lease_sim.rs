//! Deterministic simulation of delivery ownership: the lease, the hand-over
//! of a lost owner's messages and fencing by epoch.
//!
//! Real processes rarely hit the interleavings that matter here — a result
//! committed just after its message changed owner, a hand-over racing a
//! result, a node that still believes it holds the lease, a replica that
//! lags its leader — so a seeded scheduler plays them instead, in simulated
//! time, against the real code: hamail-store's apply on three replicas (each
//! its own RocksDB, each applying the committed log at its own pace) and the
//! queue manager's attempt record (`outbound::attempt_record`) and the
//! leader's lease rule (`outbound::lease::handovers`). What is
//! simulated is the rest: the network (cuts, a node that notices a cut only
//! after a while), processes (crashes), raft (a leader that commits what it
//! receives, in order) and remote SMTP servers (a delivery takes a random
//! time and is accepted, deferred or refused).
//!
//! Checked for every seed:
//! - the replicated queue follows an independent model of the ownership
//!   rules after every applied entry: a result counts only under the
//!   message's current epoch, a final recipient stays final, a hand-over
//!   raises the epoch, a bounce notice exists exactly when a counted result
//!   newly bounced someone (one notice per bounce, none for `<>`);
//! - every acknowledged message is finished (delivered or bounced) once the
//!   faults heal, and every recipient the queue calls delivered reached a
//!   destination;
//! - no node delivers a recipient again after its own result for it was
//!   applied (duplicates come only from attempts whose result did not
//!   count: fenced, or never committed);
//! - every replica gave the same outcome for every entry and the replicas'
//!   digests agree at the end.
//!
//! `HAMAIL_SIM_SEEDS=N` runs N seeds (default 24); `HAMAIL_SIM_SEED=S` runs
//! one. A failure prints the seed that replays it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use hamail_smtp::outbound::lease::{LeaderView, handovers};
use hamail_smtp::outbound::{Settle, attempt_record, dsn};
use hamail_store::{Applier, ApplyContext, Store};
use hamail_types::{
    Command, MailAddress, NewMessage, NodeId, Outcome, QueueEntry, QueueId, QueueRecipient,
    RecipientStatus,
};

const NODES: usize = 3;
/// Simulated time step.
const TICK: u64 = 10;
/// How long the faulty phase lasts; then everything heals.
const FAULTY_MS: u64 = 60_000;
/// Upper bound for the healed phase to empty the queue.
const HEAL_MS: u64 = 300_000;
const LEASE: u64 = 3_000;
const LEASE_CHECK: u64 = 1_000;
/// A node cut off keeps believing it has quorum for this long (the real
/// node: one election timeout without word from its leader).
const DETECT: u64 = 1_000;
const WRITE_TIMEOUT: u64 = 4_000;
const RETRY_MS: u64 = 500;

/// xorshift64*: small and reproducible.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

fn id_of(n: usize) -> NodeId {
    n as NodeId + 1
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fate {
    Delivered,
    Deferred,
    Bounced,
}

/// What a proposal was for, so its fate can be booked.
enum Purpose {
    /// A client's message: acknowledged (250) if its proposer sees it commit.
    Insert(QueueId),
    /// An attempt's record.
    Result(usize),
    Reassign,
}

struct Proposal {
    from: usize,
    commands: Vec<Command>,
    purpose: Purpose,
    /// When the leader has it committed (None: lost with a leader change).
    commit_at: Option<u64>,
    /// When the proposer gives up waiting (a 451 / a failed commit).
    give_up_at: u64,
}

struct Attempt {
    node: usize,
    seen: QueueEntry,
    done_at: u64,
    fates: Vec<(MailAddress, Fate)>,
    /// Set when it finished: the proposal of its record is in flight.
    proposed: bool,
    /// Recipients it handed to a destination.
    delivered: Vec<MailAddress>,
    /// What it recorded.
    recorded: Vec<(MailAddress, RecipientStatus)>,
    /// Whether its record was applied with the epoch it ran under.
    counted: bool,
    /// Its node's process (crashes so far) when it started.
    incarnation: u32,
    started: u64,
}

struct Node {
    store: Store,
    applied: usize,
    up: bool,
    /// Cut off from the others until then.
    cut_until: u64,
    cut_since: u64,
    leader_since: Option<u64>,
    next_lease_check: u64,
    crashes: u32,
    /// Last time this node heard from each peer.
    heard: [Option<u64>; NODES],
    in_flight: BTreeSet<QueueId>,
    /// The replica's queue, read again only when it applied something.
    queue: Vec<QueueEntry>,
    queue_at: usize,
    /// The queue manager's settle records, with when they were made.
    settling: BTreeMap<QueueId, (Settle, u64)>,
    _dir: tempfile::TempDir,
}

impl Node {
    fn connected(&self, now: u64) -> bool {
        self.up && now >= self.cut_until
    }
    /// The queue manager's `may_deliver`: it believes it reaches a majority.
    fn may_deliver(&self, now: u64) -> bool {
        self.up && (now >= self.cut_until || now < self.cut_since + DETECT)
    }
}

/// The ownership rules, written independently of the store.
#[derive(Default)]
struct Model {
    entries: BTreeMap<QueueId, QueueEntry>,
    /// Bounce notices queued per (message, recipient).
    notices: BTreeMap<(QueueId, MailAddress), usize>,
}

impl Model {
    fn insert(&mut self, m: &NewMessage, time_ms: u64) {
        self.entries.insert(
            m.queue_id.clone(),
            QueueEntry {
                queue_id: m.queue_id.clone(),
                sender: m.sender.clone(),
                recipients: m
                    .recipients
                    .iter()
                    .map(|a| QueueRecipient {
                        address: a.clone(),
                        status: RecipientStatus::Pending,
                    })
                    .collect(),
                arrival_ms: time_ms,
                size: m.body.len() as u64,
                owner: m.owner,
                epoch: 1,
                held: m.held,
                content_filter: m.content_filter.clone(),
                client: m.client.clone(),
                helo: m.helo.clone(),
                smtputf8: m.smtputf8,
                eight_bit: m.eight_bit,
            },
        );
    }

    /// Applies one log entry the way the rules say; returns whether each
    /// command counted.
    fn apply(&mut self, commands: &[Command], time_ms: u64) -> Vec<bool> {
        let mut counted = Vec::new();
        for cmd in commands {
            match cmd {
                Command::QueueInsert { message } => {
                    self.insert(message, time_ms);
                    counted.push(true);
                }
                Command::QueueResult {
                    queue_id,
                    epoch,
                    results,
                    notice,
                } => {
                    let Some(e) = self.entries.get_mut(queue_id) else {
                        counted.push(false);
                        continue;
                    };
                    if e.epoch != *epoch {
                        counted.push(false);
                        continue;
                    }
                    let mut bounced = Vec::new();
                    for (addr, status) in results {
                        if let Some(r) = e
                            .recipients
                            .iter_mut()
                            .find(|r| &r.address == addr && !r.status.is_final())
                        {
                            if matches!(status, RecipientStatus::Bounced { .. }) {
                                bounced.push(addr.clone());
                            }
                            r.status = status.clone();
                        }
                    }
                    // A notice only for a counted result that newly bounced
                    // someone, and never to `<>`.
                    let to_sender = e.sender.is_some();
                    if e.recipients.iter().all(|r| r.status.is_final()) {
                        self.entries.remove(queue_id);
                    }
                    if let Some(n) = notice
                        && !bounced.is_empty()
                        && to_sender
                    {
                        for r in bounced {
                            *self.notices.entry((queue_id.clone(), r)).or_default() += 1;
                        }
                        self.insert(n, time_ms);
                    }
                    counted.push(true);
                }
                Command::QueueReassign { from, to } => {
                    let mut k = 0;
                    for e in self.entries.values_mut() {
                        if e.owner == *from {
                            e.owner = to[k % to.len()];
                            e.epoch += 1;
                            k += 1;
                        }
                    }
                    counted.push(true);
                }
                other => panic!("the simulation proposes no {other:?}"),
            }
        }
        counted
    }
}

struct Sim {
    rng: Rng,
    now: u64,
    nodes: Vec<Node>,
    log: Vec<(u64, NodeId, Vec<Command>)>,
    /// The outcomes of each entry, from the first replica that applied it.
    outcomes: Vec<Option<Vec<Outcome>>>,
    model: Model,
    proposals: Vec<Proposal>,
    attempts: Vec<Attempt>,
    acked: BTreeSet<QueueId>,
    /// Deliveries that reached a destination, per (message, recipient).
    sink: BTreeMap<(QueueId, MailAddress), usize>,
    /// (message, recipient) -> log length at which a counted result of
    /// that node made it final, per node: after applying past it, that
    /// node must not deliver it again.
    finalized_by: BTreeMap<(QueueId, MailAddress), (usize, usize)>,
    next_msg: u64,
    /// Chance per tick (percent) that a client sends a message.
    client_percent: u64,
}

impl Sim {
    fn new(seed: u64, client_percent: u64) -> Sim {
        let nodes = (0..NODES)
            .map(|_| {
                let dir = tempfile::tempdir().expect("tempdir");
                Node {
                    store: Store::open(&dir.path().join("db")).expect("open store"),
                    applied: 0,
                    up: true,
                    cut_until: 0,
                    cut_since: 0,
                    leader_since: None,
                    next_lease_check: 0,
                    crashes: 0,
                    heard: [None; NODES],
                    in_flight: BTreeSet::new(),
                    queue: Vec::new(),
                    queue_at: 0,
                    settling: BTreeMap::new(),
                    _dir: dir,
                }
            })
            .collect();
        Sim {
            rng: Rng(seed | 1),
            now: 0,
            nodes,
            log: Vec::new(),
            outcomes: Vec::new(),
            model: Model::default(),
            proposals: Vec::new(),
            attempts: Vec::new(),
            acked: BTreeSet::new(),
            sink: BTreeMap::new(),
            finalized_by: BTreeMap::new(),
            next_msg: 1,
            client_percent,
        }
    }

    /// The leader: the first node up and connected, if a majority is.
    fn leader(&self) -> Option<usize> {
        let live: Vec<usize> = (0..NODES)
            .filter(|&n| self.nodes[n].connected(self.now))
            .collect();
        (live.len() * 2 > NODES).then(|| live[0])
    }

    fn propose(&mut self, from: usize, commands: Vec<Command>, purpose: Purpose) {
        let reaches = self.nodes[from].connected(self.now) && self.leader().is_some();
        let commit_at = reaches.then(|| self.now + 20 + self.rng.below(180));
        self.proposals.push(Proposal {
            from,
            commands,
            purpose,
            commit_at,
            give_up_at: self.now + WRITE_TIMEOUT,
        });
    }

    /// Applies entries on node `n` up to `upto`, checking determinism and
    /// (on the first replica to apply an entry) the model.
    fn apply_on(&mut self, n: usize, upto: usize) {
        while self.nodes[n].applied < upto {
            let idx = self.nodes[n].applied;
            let (time_ms, proposer, commands) = &self.log[idx];
            let store = self.nodes[n].store.clone();
            let mut ap = Applier::new(&store);
            let ctx = ApplyContext {
                time_ms: *time_ms,
                proposer: *proposer,
                log_index: idx as u64 + 1,
            };
            let outs: Vec<Outcome> = commands
                .iter()
                .map(|c| ap.apply(c, &ctx).expect("apply"))
                .collect();
            ap.commit().expect("commit");
            self.nodes[n].applied += 1;
            match &self.outcomes[idx] {
                Some(first) => assert_eq!(
                    first, &outs,
                    "replica {n} gave other outcomes for entry {idx}"
                ),
                None => {
                    let commands = commands.clone();
                    let counted = self.model.apply(&commands, *time_ms);
                    for (o, m) in outs.iter().zip(&counted) {
                        assert_eq!(
                            o.is_applied(),
                            *m,
                            "entry {idx}: the store says {o:?}, the rules say counted={m}"
                        );
                    }
                    let real: Vec<QueueEntry> = store.queue_entries().expect("queue");
                    let model: Vec<QueueEntry> = self.model.entries.values().cloned().collect();
                    if real != model {
                        let ids = |v: &[QueueEntry]| {
                            v.iter()
                                .map(|e| format!("{}/{}/e{}", e.queue_id, e.owner, e.epoch))
                                .collect::<Vec<_>>()
                        };
                        panic!(
                            "entry {idx}: the queue differs from the rules: store {:?}, rules {:?}",
                            ids(&real),
                            ids(&model)
                        );
                    }
                    self.outcomes[idx] = Some(outs);
                }
            }
        }
    }

    fn faults(&mut self) {
        // At most one site is faulty at a time: a majority stays possible.
        let healthy = (0..NODES).all(|n| self.nodes[n].connected(self.now));
        if !healthy || !self.rng.chance(1) {
            return;
        }
        let n = self.rng.below(NODES as u64) as usize;
        let len = 200 + self.rng.below(8_000);
        if self.rng.chance(50) {
            self.nodes[n].cut_since = self.now;
            self.nodes[n].cut_until = self.now + len;
        } else {
            self.crash(n, self.now + len);
        }
    }

    /// A crash of node `n` until `until`: its queue manager's memory is
    /// gone; attempts in flight may have reached their destination.
    fn crash(&mut self, n: usize, until: u64) {
        let node = &mut self.nodes[n];
        node.up = false;
        node.crashes += 1;
        node.in_flight.clear();
        node.settling.clear();
        node.leader_since = None;
        node.cut_since = self.now;
        node.cut_until = until;
        for a in self
            .attempts
            .iter_mut()
            .filter(|a| a.node == n && !a.proposed)
        {
            a.proposed = true;
            if self.rng.chance(50) {
                for (r, f) in &a.fates {
                    if *f == Fate::Delivered {
                        *self
                            .sink
                            .entry((a.seen.queue_id.clone(), r.clone()))
                            .or_default() += 1;
                        a.delivered.push(r.clone());
                    }
                }
            }
        }
    }

    fn clients(&mut self, faulty: bool) {
        if !faulty || !self.rng.chance(self.client_percent) {
            return;
        }
        let n = self.rng.below(NODES as u64) as usize;
        // The smtpd: 421 unless it believes it has quorum.
        if !self.nodes[n].may_deliver(self.now) {
            return;
        }
        let rcpts: Vec<MailAddress> = (0..1 + self.rng.below(3))
            .map(|k| MailAddress::parse(&format!("u{k}@example.jp")).unwrap())
            .collect();
        let id = QueueId::new(self.next_msg, id_of(n));
        self.next_msg += 1;
        // One message in ten from `<>` (it must never get a bounce notice).
        let sender = if self.rng.chance(10) {
            None
        } else {
            Some(MailAddress::parse("sender@client.example").unwrap())
        };
        let m = NewMessage {
            queue_id: id.clone(),
            sender,
            recipients: rcpts,
            owner: id_of(n),
            client: "client.example[192.0.2.1]".into(),
            helo: "client.example".into(),
            smtputf8: false,
            eight_bit: false,
            held: false,
            content_filter: None,
            body: format!("Subject: {id}\r\n\r\nbody\r\n").into_bytes(),
        };
        self.propose(
            n,
            vec![Command::QueueInsert {
                message: Box::new(m),
            }],
            Purpose::Insert(id),
        );
    }

    fn commits(&mut self) {
        let leader = self.leader();
        let mut k = 0;
        while k < self.proposals.len() {
            let p = &self.proposals[k];
            let due = p.commit_at.is_some_and(|t| t <= self.now);
            if due && leader.is_none() {
                // The leader went before committing it: lost or kept.
                if self.rng.chance(50) {
                    self.proposals[k].commit_at = None;
                }
                k += 1;
                continue;
            }
            if due {
                let p = self.proposals.remove(k);
                let proposer = id_of(p.from);
                self.log.push((self.now, proposer, p.commands));
                self.outcomes.push(None);
                let l = leader.expect("checked");
                let end = self.log.len();
                self.apply_on(l, end);
                let idx = end - 1;
                let seen = self.now <= p.give_up_at && self.nodes[p.from].connected(self.now);
                self.book(p.from, p.purpose, Some(idx), seen);
                continue;
            }
            if self.now >= p.give_up_at {
                // The proposer gives up; the leader may still commit it.
                let from = p.from;
                if self.proposals[k].commit_at.is_none() {
                    let p = self.proposals.remove(k);
                    self.book(from, p.purpose, None, false);
                    continue;
                }
                if let Purpose::Result(a) = self.proposals[k].purpose {
                    self.resolve_attempt(a);
                }
            }
            k += 1;
        }
    }

    /// Books a proposal's end: committed as entry `idx` or not, and
    /// whether the proposer saw it.
    fn book(&mut self, from: usize, purpose: Purpose, idx: Option<usize>, seen: bool) {
        match purpose {
            Purpose::Insert(id) => {
                if seen && idx.is_some() {
                    self.acked.insert(id);
                }
            }
            Purpose::Result(a) => {
                if let Some(idx) = idx {
                    let counted = self.outcomes[idx]
                        .as_ref()
                        .and_then(|o| o.first())
                        .is_some_and(Outcome::is_applied);
                    self.attempts[a].counted = counted;
                    if counted {
                        let q = self.attempts[a].seen.queue_id.clone();
                        for (r, f) in self.attempts[a].fates.clone() {
                            if f != Fate::Deferred {
                                self.finalized_by
                                    .entry((q.clone(), r))
                                    .or_insert((from, idx + 1));
                            }
                        }
                    }
                }
                self.resolve_attempt(a);
            }
            Purpose::Reassign => {}
        }
    }

    /// The queue manager is done with an attempt: it settles.
    fn resolve_attempt(&mut self, a: usize) {
        let n = self.attempts[a].node;
        let q = self.attempts[a].seen.queue_id.clone();
        let node = &mut self.nodes[n];
        if node.up && node.in_flight.remove(&q) {
            let settle = Settle {
                before: self.attempts[a].seen.clone(),
                recorded: self.attempts[a].recorded.clone(),
                at: std::time::Instant::now(),
            };
            node.settling.insert(q, (settle, self.now));
        }
    }

    fn replicate(&mut self) {
        let end = self.log.len();
        for n in 0..NODES {
            if self.nodes[n].connected(self.now) {
                let lag = self.rng.below(4) as usize;
                let upto = (self.nodes[n].applied + lag).min(end);
                self.apply_on(n, upto);
            }
        }
        for a in 0..NODES {
            for b in 0..NODES {
                if a != b && self.nodes[a].connected(self.now) && self.nodes[b].connected(self.now)
                {
                    self.nodes[a].heard[b] = Some(self.now);
                }
            }
        }
    }

    /// The lease keeper, on the leader: the timer and the leader's view are
    /// simulated, the decision is the library's (`outbound::lease`), as the
    /// binary's timer loop (crates/hamail/src/queue_backend.rs) calls it.
    fn lease_keeper(&mut self) {
        let Some(l) = self.leader() else {
            for node in &mut self.nodes {
                node.leader_since = None;
            }
            return;
        };
        for (n, node) in self.nodes.iter_mut().enumerate() {
            if n != l {
                node.leader_since = None;
            }
        }
        let now = self.now;
        let node = &mut self.nodes[l];
        let since = *node.leader_since.get_or_insert(now);
        if now < node.next_lease_check {
            return;
        }
        node.next_lease_check = now + LEASE_CHECK;
        let heard = node.heard;
        let owners: BTreeSet<NodeId> = node
            .store
            .queue_entries()
            .expect("queue")
            .iter()
            .map(|e| e.owner)
            .collect();
        let voters: Vec<NodeId> = (0..NODES).map(id_of).collect();
        let silent_for =
            |id: NodeId| heard[id as usize - 1].map(|t| Duration::from_millis(now - t));
        let view = LeaderView {
            me: id_of(l),
            leader_for: Duration::from_millis(now - since),
            voters: &voters,
            is_member: &|id| (1..=NODES as NodeId).contains(&id),
            silent_for: &silent_for,
        };
        for h in handovers(&view, &owners, Duration::from_millis(LEASE)) {
            self.propose(l, vec![h.command()], Purpose::Reassign);
        }
    }

    /// Each node's queue manager: starts attempts for what it owns.
    fn queue_managers(&mut self) {
        for n in 0..NODES {
            if !self.nodes[n].may_deliver(self.now) {
                continue;
            }
            let node = &mut self.nodes[n];
            if node.queue_at != node.applied {
                node.queue = node.store.queue_entries().expect("queue");
                node.queue_at = node.applied;
            }
            for e in node.queue.clone() {
                let due: Vec<MailAddress> = e
                    .recipients
                    .iter()
                    .filter(|r| r.status.is_due(self.now, 8 * RETRY_MS))
                    .map(|r| r.address.clone())
                    .collect();
                if e.owner != id_of(n) || e.held || due.is_empty() {
                    continue;
                }
                let node = &mut self.nodes[n];
                if let Some((settle, at)) = node.settling.get(&e.queue_id) {
                    let elapsed = std::time::Duration::from_millis(self.now - at);
                    if settle.holds(&e, elapsed) {
                        continue;
                    }
                    node.settling.remove(&e.queue_id);
                }
                if !node.in_flight.insert(e.queue_id.clone()) {
                    continue;
                }
                // No node delivers again what its own counted result
                // finished, once it applied that result.
                for r in &due {
                    if let Some((by, at)) = self.finalized_by.get(&(e.queue_id.clone(), r.clone()))
                    {
                        assert!(
                            !(*by == n && self.nodes[n].applied >= *at),
                            "node {} tries {} of {} again after applying its own final result",
                            id_of(n),
                            r,
                            e.queue_id
                        );
                    }
                }
                let long = self.rng.chance(5);
                let took = if long {
                    2_000 + self.rng.below(6_000)
                } else {
                    20 + self.rng.below(400)
                };
                let fates = due
                    .into_iter()
                    .map(|r| {
                        let f = match self.rng.below(10) {
                            0..=6 => Fate::Delivered,
                            7 | 8 => Fate::Deferred,
                            _ => Fate::Bounced,
                        };
                        (r, f)
                    })
                    .collect();
                self.attempts.push(Attempt {
                    node: n,
                    seen: e,
                    done_at: self.now + took,
                    fates,
                    proposed: false,
                    delivered: Vec::new(),
                    recorded: Vec::new(),
                    counted: false,
                    incarnation: self.nodes[n].crashes,
                    started: self.now,
                });
            }
        }
    }

    /// Attempts that end now: the destination has the message, and the
    /// node commits the record of the attempt.
    fn finish_attempts(&mut self) {
        for a in 0..self.attempts.len() {
            let at = &self.attempts[a];
            if at.proposed || at.done_at > self.now || !self.nodes[at.node].up {
                continue;
            }
            let n = at.node;
            let seen = at.seen.clone();
            let fates = at.fates.clone();
            let mut results = Vec::new();
            let mut failures = Vec::new();
            for (r, f) in &fates {
                let status = match f {
                    Fate::Delivered => {
                        *self
                            .sink
                            .entry((seen.queue_id.clone(), r.clone()))
                            .or_default() += 1;
                        self.attempts[a].delivered.push(r.clone());
                        RecipientStatus::Delivered {
                            reply: "250 2.0.0 Ok".into(),
                            time_ms: self.now,
                        }
                    }
                    Fate::Deferred => RecipientStatus::Deferred {
                        reason: "451 4.3.0 try later".into(),
                        next_try_ms: self.now + RETRY_MS,
                        attempts: 1,
                    },
                    Fate::Bounced => {
                        failures.push(dsn::Failure {
                            recipient: r.clone(),
                            status: "5.1.1".into(),
                            remote_mta: Some("dest.example".into()),
                            diagnostic: "550 5.1.1 no such user".into(),
                        });
                        RecipientStatus::Bounced {
                            reason: "550 5.1.1 no such user".into(),
                            time_ms: self.now,
                        }
                    }
                };
                results.push((r.clone(), status));
            }
            self.attempts[a].recorded = results.clone();
            let body = format!("Subject: {}\r\n\r\nbody\r\n", seen.queue_id).into_bytes();
            let (command, _) = attempt_record(
                &seen,
                &body,
                results,
                &failures,
                id_of(n),
                "sim.example",
                self.now,
            );
            self.attempts[a].proposed = true;
            self.propose(n, vec![command], Purpose::Result(a));
        }
    }

    fn restarts(&mut self) {
        for node in &mut self.nodes {
            if !node.up && self.now >= node.cut_until {
                node.up = true;
            }
        }
    }

    fn step(&mut self, faulty: bool) {
        self.now += TICK;
        self.restarts();
        if faulty {
            self.faults();
        }
        self.clients(faulty);
        self.replicate();
        self.lease_keeper();
        self.commits();
        self.finish_attempts();
        self.queue_managers();
    }

    fn settled(&self) -> bool {
        self.proposals.is_empty()
            && self.attempts.iter().all(|a| a.proposed)
            && self
                .nodes
                .iter()
                .filter(|n| n.cut_until != BURNT)
                .all(|n| n.applied == self.log.len() && n.in_flight.is_empty())
            && self.model.entries.is_empty()
    }
}

/// The attempts at one message, for a failure report.
fn history(sim: &Sim, id: &QueueId) -> String {
    sim.attempts
        .iter()
        .filter(|x| &x.seen.queue_id == id)
        .map(|x| {
            format!(
                "  node {} process {} epoch {} ran {}-{} ms counted {} saw {:?} fates {:?}\n",
                id_of(x.node),
                x.incarnation,
                x.seen.epoch,
                x.started,
                x.done_at,
                x.counted,
                x.seen
                    .recipients
                    .iter()
                    .map(|r| format!(
                        "{}:{}",
                        r.address,
                        if r.status.is_final() { "final" } else { "open" }
                    ))
                    .collect::<Vec<_>>(),
                x.fates
                    .iter()
                    .map(|(r, f)| format!("{r}:{f:?}"))
                    .collect::<Vec<_>>()
            )
        })
        .collect()
}

/// One simulated run; returns (acked messages, duplicates) or panics with
/// what broke.
/// How the faulty phase ends.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// Every fault heals.
    Heal,
    /// One site burns down for good as the others heal: its mail is
    /// finished only if the lease rule hands it over.
    BurnOne,
}

/// `cut_until` of a node that never comes back.
const BURNT: u64 = u64::MAX;

fn run_ending(seed: u64, client_percent: u64, ending: Ending) -> (usize, usize) {
    let mut sim = Sim::new(seed, client_percent);
    while sim.now < FAULTY_MS {
        sim.step(true);
    }
    if ending == Ending::BurnOne {
        sim.crash(seed as usize % NODES, BURNT);
    }
    let healed_at = sim.now;
    while !sim.settled() {
        assert!(
            sim.now < healed_at + HEAL_MS,
            "not settled {} s after healing: {} queued, {} proposals, {} attempts open",
            HEAL_MS / 1000,
            sim.model.entries.len(),
            sim.proposals.len(),
            sim.attempts.iter().filter(|a| !a.proposed).count()
        );
        sim.step(false);
    }
    // Every acknowledged message is finished: the queue is empty and each
    // recipient the record calls delivered reached a destination.
    for a in sim.attempts.iter().filter(|a| a.counted) {
        for (r, f) in &a.fates {
            if *f == Fate::Delivered {
                assert!(
                    sim.sink.contains_key(&(a.seen.queue_id.clone(), r.clone())),
                    "{r} of {} is recorded delivered but never reached a destination",
                    a.seen.queue_id
                );
            }
        }
    }
    for id in &sim.acked {
        assert!(
            sim.log.iter().any(|(_, _, cmds)| cmds
                .iter()
                .any(|c| matches!(c, Command::QueueInsert { message } if &message.queue_id == id))),
            "acknowledged {id} is not in the log"
        );
    }
    // Exactly one bounce notice per bounced recipient of a real sender.
    for ((q, r), k) in &sim.model.notices {
        assert_eq!(*k, 1, "{k} bounce notices for {r} of {q}");
    }
    let digests: BTreeSet<String> = sim
        .nodes
        .iter()
        .filter(|n| n.cut_until != BURNT)
        .map(|n| n.store.state_digest().expect("digest"))
        .collect();
    assert_eq!(digests.len(), 1, "replicas differ after settling");
    // A process delivers a recipient once: a duplicate comes only from an
    // attempt whose record did not count (fenced, never committed), or from
    // an owner that crashed before it applied its own record (the message
    // was in flight when it died) and tried again after its restart.
    let mut counted: BTreeMap<(QueueId, MailAddress), (usize, u32)> = BTreeMap::new();
    for a in sim.attempts.iter().filter(|a| a.counted) {
        for r in &a.delivered {
            let by = (a.node, a.incarnation);
            if let Some(first) = counted.insert((a.seen.queue_id.clone(), r.clone()), by) {
                assert!(
                    first.0 == by.0 && first.1 < by.1,
                    "{r} of {} delivered twice by counted attempts of node {} (process {}) and node {} (process {}); its attempts:\n{}",
                    a.seen.queue_id,
                    id_of(first.0),
                    first.1,
                    id_of(by.0),
                    by.1,
                    history(&sim, &a.seen.queue_id)
                );
            }
        }
    }
    let duplicates = sim.sink.values().map(|k| k.saturating_sub(1)).sum();
    (sim.acked.len(), duplicates)
}

/// Runs the seeds; panics naming the one that failed.
fn run_seeds(seeds: &[u64], client_percent: u64) -> (usize, usize) {
    run_seeds_ending(seeds, client_percent, Ending::Heal)
}

fn run_seeds_ending(seeds: &[u64], client_percent: u64, ending: Ending) -> (usize, usize) {
    let (mut acked, mut dups) = (0, 0);
    for seed in seeds {
        match std::panic::catch_unwind(|| run_ending(*seed, client_percent, ending)) {
            Ok((a, d)) => {
                acked += a;
                dups += d;
            }
            Err(e) => {
                let what = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                panic!("seed {seed} (HAMAIL_SIM_SEED={seed} replays it): {what}");
            }
        }
    }
    (acked, dups)
}

#[test]
fn ownership_survives_every_interleaving() {
    let seeds: Vec<u64> = match std::env::var("HAMAIL_SIM_SEED") {
        Ok(s) => vec![s.parse().expect("HAMAIL_SIM_SEED is a number")],
        Err(_) => {
            let n: u64 = std::env::var("HAMAIL_SIM_SEEDS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(24);
            (1..=n)
                .map(|k| k.wrapping_mul(0x9E37_79B9_7F4A_7C15))
                .collect()
        }
    };
    let (acked, dups) = run_seeds(&seeds, 8);
    eprintln!(
        "lease simulation: {} seeds, {acked} messages acknowledged, all finished; {dups} duplicate deliveries (fenced or uncommitted attempts, or an owner that crashed)",
        seeds.len()
    );
    assert!(acked > 0, "the simulation acknowledged mail");
}

/// Seeds that found bugs, replayed with the client rate they ran with
/// (each was checked to fail when its bug is put back):
/// - 13064056694810536062 (rate 8): a result refused as stale (its message
///   had been handed over) still queued its bounce notice, so the sender
///   got two. The bug was first seen by seed 11400714819323198485 (rate
///   20) as a second notice for a repeated result. Fixed: the notice
///   travels inside the result and is queued only if the result counts
///   and newly bounces someone.
/// - 8709371129873690708 (rate 20): the queue manager left a tried message
///   alone only while its local copy equalled the one the attempt saw; an
///   older record applied late changed the copy, and the message was tried
///   again before this attempt's record arrived (a recipient delivered
///   twice by one process). Fixed: it waits until the copy shows this
///   attempt's record (`outbound::Settle`).
#[test]
fn seeds_that_found_bugs_stay_fixed() {
    run_seeds(&[13064056694810536062], 8);
    run_seeds(&[8709371129873690708], 20);
}

/// A site that never comes back: its messages are finished by the others
/// only through the lease rule's hand-over (a rule that hands over nothing,
/// or only to the dead node, leaves them queued and fails here).
#[test]
fn a_burnt_site_hands_its_mail_over() {
    let seeds: Vec<u64> = (1..=6u64)
        .map(|k| k.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .collect();
    let (acked, _) = run_seeds_ending(&seeds, 8, Ending::BurnOne);
    assert!(acked > 0, "the simulation acknowledged mail");
}
