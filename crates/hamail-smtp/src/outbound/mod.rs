//! The sending half of the MTA: a queue manager on every node delivers the
//! messages this node owns (and only those: the owner holds the lease),
//! and commits each attempt's per-recipient outcome with the lease epoch
//! it was made under.

pub mod client;
pub mod dsn;
pub mod maildir;
pub mod route;
pub mod tls_client;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hamail_types::{
    Command, DomainKind, DomainName, MailAddress, NewMessage, NodeId, Outcome, QueueEntry, QueueId,
    RecipientStatus, TransportSpec,
};
use hickory_resolver::TokioResolver;
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;

use client::{ClientOptions, Envelope, RcptOutcome, TlsLevel};

/// What the queue manager needs from the cluster.
pub trait QueueStore: Send + Sync + 'static {
    fn node_id(&self) -> NodeId;
    /// The lease holds: this node can commit (it reaches a majority).
    fn may_deliver(&self) -> bool;
    /// Messages owned by this node, not held, with a recipient not final
    /// (the queue manager decides which are due).
    fn owned(&self) -> Result<Vec<QueueEntry>, String>;
    fn body(&self, id: &QueueId) -> Result<Option<Vec<u8>>, String>;
    fn domain_kind(&self, d: &DomainName) -> Result<Option<DomainKind>, String>;
    fn transport(
        &self,
        d: &DomainName,
    ) -> Result<Option<(TransportSpec, Vec<TransportSpec>)>, String>;
    /// The lease for this message still holds: this node reaches a
    /// majority and its copy still names it the owner at `epoch`. Asked
    /// again just before the final dot, so a former owner cut off while it
    /// sent the body stops before the remote server takes the message.
    fn still_owner(&self, id: &QueueId, epoch: u64) -> bool;
    /// Every node's SMTP address: delivering there would be a loop.
    fn own_smtp_addrs(&self) -> Vec<SocketAddr>;
    fn commit(
        &self,
        commands: Vec<Command>,
    ) -> impl Future<Output = Result<Vec<Outcome>, String>> + Send;
}

/// Delivery settings, with Postfix's names.
#[derive(Clone)]
pub struct DeliverySettings {
    pub hostname: String,
    pub relayhost: Option<TransportSpec>,
    pub smtp_fallback_relay: Vec<TransportSpec>,
    /// Port for MX and relay delivery without an explicit one (25).
    pub smtp_port: u16,
    pub client: ClientOptions,
    /// Per destination (domain, host or `[host]:port`) TLS level.
    pub tls_policy: BTreeMap<String, TlsLevel>,
    /// `[host]:port` / `host` -> (user, password).
    pub sasl_passwords: HashMap<String, (String, String)>,
    pub destination_concurrency: usize,
    pub total_concurrency: usize,
    pub minimal_backoff: Duration,
    pub maximal_backoff: Duration,
    pub maximal_queue_lifetime: Duration,
    pub bounce_queue_lifetime: Duration,
    pub resolver: TokioResolver,
}

/// Parses a Postfix-style password map: `[host]:port user:password` lines,
/// `#` comments. The file must be mode 0600 (or stricter).
pub fn load_password_map(
    path: &std::path::Path,
) -> Result<HashMap<String, (String, String)>, String> {
    use std::os::unix::fs::PermissionsExt;
    let meta =
        std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "{} has mode {mode:04o}: a password map must not be readable by others (chmod 600 {})",
            path.display(),
            path.display()
        ));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut out = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.split_whitespace();
        let (Some(key), Some(cred), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(format!(
                "{} line {}: expected `[host]:port user:password`",
                path.display(),
                i + 1
            ));
        };
        let Some((user, pass)) = cred.split_once(':') else {
            return Err(format!(
                "{} line {}: expected user:password, got {cred:?}",
                path.display(),
                i + 1
            ));
        };
        out.insert(
            key.to_ascii_lowercase(),
            (user.to_string(), pass.to_string()),
        );
    }
    Ok(out)
}

/// How long a message tried here is left alone while this node's copy of
/// it has not changed yet (the result is normally applied within
/// milliseconds; a result that failed to commit is retried after this).
pub const SETTLE: Duration = Duration::from_secs(30);
/// Shortest time between two scans of the queue.
const SCAN_GAP: Duration = Duration::from_millis(50);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// Runs the queue manager until `cancel`: wakes when the applied log moves
/// (new mail, a flush) or every second, and delivers what is due.
pub async fn run_queue_manager<Q: QueueStore>(
    store: Arc<Q>,
    settings: Arc<DeliverySettings>,
    mut applied: watch::Receiver<u64>,
    cancel: CancellationToken,
) {
    let in_flight: Arc<Mutex<HashSet<QueueId>>> = Arc::default();
    // Messages whose result was committed but that this node may not have
    // applied yet (a follower applies a moment after the leader): left
    // alone until the local copy shows the record (see `Settle`), so a
    // delivered message is not delivered twice.
    let settling: Arc<Mutex<HashMap<QueueId, Settle>>> = Arc::default();
    let total = Arc::new(Semaphore::new(settings.total_concurrency.max(1)));
    let per_dest: Arc<Mutex<HashMap<String, Arc<Semaphore>>>> = Arc::default();
    let pool: Arc<client::Pool> = Arc::default();
    let mut tasks = tokio::task::JoinSet::new();
    let mut last_scan = Instant::now() - SCAN_GAP;
    let mut scan_cost = Duration::ZERO;
    loop {
        // Under load the log moves constantly: scan at most every SCAN_GAP,
        // and never spend more than a tenth of the time scanning a big queue.
        let gap = SCAN_GAP
            .max(scan_cost * 10)
            .saturating_sub(last_scan.elapsed());
        if !gap.is_zero() {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(gap) => {}
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            r = applied.changed() => if r.is_err() { break },
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
        }
        if !store.may_deliver() {
            continue;
        }
        last_scan = Instant::now();
        pool.expire();
        let now = now_ms();
        let due = store.owned();
        scan_cost = last_scan.elapsed();
        let due = match due {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the queue");
                continue;
            }
        };
        for entry in due {
            if due_recipients(&entry, now, &settings).is_empty() {
                continue;
            }
            {
                let mut st = settling.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(settle) = st.get(&entry.queue_id) {
                    if settle.holds(&entry, settle.at.elapsed()) {
                        continue;
                    }
                    st.remove(&entry.queue_id);
                }
                let mut f = in_flight.lock().unwrap_or_else(|p| p.into_inner());
                if !f.insert(entry.queue_id.clone()) {
                    continue;
                }
            }
            let Ok(permit) = total.clone().acquire_owned().await else {
                break;
            };
            let (store, settings, in_flight, per_dest, settling, pool) = (
                store.clone(),
                settings.clone(),
                in_flight.clone(),
                per_dest.clone(),
                settling.clone(),
                pool.clone(),
            );
            tasks.spawn(async move {
                let id = entry.queue_id.clone();
                let before = entry.clone();
                let recorded =
                    deliver_message(store.as_ref(), &settings, &per_dest, &pool, entry).await;
                settling.lock().unwrap_or_else(|p| p.into_inner()).insert(
                    id.clone(),
                    Settle {
                        before,
                        recorded,
                        at: Instant::now(),
                    },
                );
                in_flight
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&id);
                drop(permit);
            });
        }
    }
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
}

/// A message this node just tried, until its local copy shows the record
/// of the attempt (or SETTLE passes: the record may never have committed).
pub struct Settle {
    /// The message as the attempt saw it.
    pub before: QueueEntry,
    /// What the attempt recorded; empty if it recorded nothing.
    pub recorded: Vec<(MailAddress, RecipientStatus)>,
    pub at: Instant,
}

impl Settle {
    /// Whether `now` (the local copy) must still be left alone. Comparing
    /// with the record, not with the copy the attempt saw: the copy can
    /// change meanwhile for other reasons (an older record applied late)
    /// while this attempt's record is still on its way.
    pub fn holds(&self, now: &QueueEntry, elapsed: Duration) -> bool {
        if elapsed >= SETTLE {
            return false;
        }
        if self.recorded.is_empty() {
            return *now == self.before;
        }
        if now.epoch != self.before.epoch {
            // Handed over: the new owner decides.
            return false;
        }
        self.recorded.iter().any(|(addr, st)| {
            now.recipients
                .iter()
                .any(|r| &r.address == addr && !r.status.is_final() && &r.status != st)
        })
    }
}

/// The recipients of a message that are due now, with their attempts so
/// far.
fn due_recipients(e: &QueueEntry, now: u64, s: &DeliverySettings) -> Vec<(MailAddress, u32)> {
    let max_wait = s.maximal_backoff.as_millis() as u64;
    e.recipients
        .iter()
        .filter(|r| r.status.is_due(now, max_wait))
        .map(|r| match &r.status {
            RecipientStatus::Deferred { attempts, .. } => (r.address.clone(), *attempts),
            _ => (r.address.clone(), 0),
        })
        .collect()
}

/// One attempt's result for one recipient, with where it went.
struct Tried {
    rcpt: MailAddress,
    outcome: RcptOutcome,
    relay: String,
}

/// Tries a message's due recipients; returns what it recorded.
async fn deliver_message<Q: QueueStore>(
    store: &Q,
    s: &DeliverySettings,
    per_dest: &Mutex<HashMap<String, Arc<Semaphore>>>,
    pool: &client::Pool,
    entry: QueueEntry,
) -> Vec<(MailAddress, RecipientStatus)> {
    let id = entry.queue_id.clone();
    let started = Instant::now();
    let now = now_ms();
    let body = match store.body(&id) {
        Ok(Some(b)) => b,
        Ok(None) => return Vec::new(),
        Err(e) => {
            tracing::warn!(queue_id = %id, error = %e, "cannot read the body");
            return Vec::new();
        }
    };
    let due = due_recipients(&entry, now, s);
    let attempts: HashMap<MailAddress, u32> = due.iter().cloned().collect();
    // Recipients of one message to the same next hop: one transaction.
    let mut groups: BTreeMap<String, (Vec<TransportSpec>, Vec<MailAddress>)> = BTreeMap::new();
    let mut tried: Vec<Tried> = Vec::new();
    for (rcpt, _) in &due {
        let domain = rcpt.domain();
        let kind = store.domain_kind(domain).unwrap_or(None);
        let transport = match store.transport(domain) {
            Ok(t) => t,
            Err(e) => {
                tried.push(Tried {
                    rcpt: rcpt.clone(),
                    outcome: RcptOutcome::Temporary(format!("transport lookup failed: {e}")),
                    relay: "none".into(),
                });
                continue;
            }
        };
        match route::transports(
            domain,
            kind,
            transport,
            s.relayhost.as_ref(),
            &s.smtp_fallback_relay,
        ) {
            Ok(specs) => {
                let key = specs
                    .iter()
                    .map(|t| t.to_string())
                    .collect::<Vec<_>>()
                    .join(",");
                groups
                    .entry(key)
                    .or_insert_with(|| (specs, Vec::new()))
                    .1
                    .push(rcpt.clone());
            }
            Err(e) => tried.push(Tried {
                rcpt: rcpt.clone(),
                outcome: if e.permanent {
                    RcptOutcome::Permanent(e.reason)
                } else {
                    RcptOutcome::Temporary(e.reason)
                },
                relay: "none".into(),
            }),
        }
    }
    for (key, (specs, rcpts)) in groups {
        let sem = {
            let mut m = per_dest.lock().unwrap_or_else(|p| p.into_inner());
            m.entry(key)
                .or_insert_with(|| Arc::new(Semaphore::new(s.destination_concurrency.max(1))))
                .clone()
        };
        let Ok(_permit) = sem.acquire_owned().await else {
            return Vec::new();
        };
        tried.extend(deliver_group(store, s, pool, &entry, &body, &specs, &rcpts).await);
    }
    commit_outcomes(store, s, &entry, &body, &attempts, tried, started).await
}

/// Tries the transports in order for one group of recipients.
async fn deliver_group<Q: QueueStore>(
    store: &Q,
    s: &DeliverySettings,
    pool: &client::Pool,
    entry: &QueueEntry,
    body: &[u8],
    specs: &[TransportSpec],
    rcpts: &[MailAddress],
) -> Vec<Tried> {
    let mut last = (String::from("no transport"), false, String::from("none"));
    let env = Envelope {
        sender: entry.sender.as_ref(),
        recipients: rcpts,
        body,
        eight_bit: entry.eight_bit,
        smtputf8: entry.smtputf8,
    };
    let lease = || store.still_owner(&entry.queue_id, entry.epoch);
    for spec in specs {
        match spec {
            TransportSpec::Maildir { path } => {
                return deliver_maildir(s, entry, body, &PathBuf::from(path), rcpts).await;
            }
            TransportSpec::LmtpUnix { path } => {
                // A local socket: no TLS (no name to verify, nothing on
                // the wire) and no SASL. Named like Postfix: host[socket].
                let host = format!("{}[{path}]", s.hostname);
                let mut opts = s.client.clone();
                opts.lmtp = true;
                opts.helo_name = s.hostname.clone();
                opts.tls = TlsLevel::None;
                opts.sasl = None;
                let server = client::ServerAddr::Unix(PathBuf::from(path));
                match client::deliver(server, &host, &opts, &env, pool, &lease).await {
                    Ok(outcomes) => return tried_at(rcpts, outcomes, &host),
                    Err(e) => {
                        last = (e.reason, e.permanent, host);
                        if !e.try_next {
                            return fail_all(rcpts, &last);
                        }
                    }
                }
            }
            TransportSpec::Smtp { .. } | TransportSpec::Lmtp { .. } => {
                let lmtp = matches!(spec, TransportSpec::Lmtp { .. });
                let ourselves = store.own_smtp_addrs();
                let cands =
                    match route::candidates(&s.resolver, spec, s.smtp_port, &ourselves).await {
                        Ok(c) => c,
                        Err(e) => {
                            last = (e.reason, e.permanent, "none".into());
                            if e.permanent && specs.len() == 1 {
                                break;
                            }
                            continue;
                        }
                    };
                for c in cands {
                    let relay = format!("{}[{}]:{}", c.host, c.addr.ip(), c.addr.port());
                    let mut opts = s.client.clone();
                    opts.lmtp = lmtp;
                    opts.helo_name = s.hostname.clone();
                    opts.tls = tls_level(s, spec, &c, rcpts);
                    opts.sasl = sasl_for(s, spec, &c);
                    let mut r = client::deliver(c.addr, &c.host, &opts, &env, pool, &lease).await;
                    if let Err(e) = &r
                        && e.retry_plain
                    {
                        tracing::info!(target: "postfix/smtp", "{}: {}; retrying without TLS", entry.queue_id, e.reason);
                        opts.tls = TlsLevel::None;
                        r = client::deliver(c.addr, &c.host, &opts, &env, pool, &lease).await;
                    }
                    match r {
                        Ok(outcomes) => return tried_at(rcpts, outcomes, &relay),
                        Err(e) => {
                            last = (e.reason, e.permanent, relay);
                            if !e.try_next {
                                return fail_all(rcpts, &last);
                            }
                        }
                    }
                }
            }
            other => {
                last = (
                    format!("transport {other} is not supported"),
                    false,
                    "none".into(),
                );
            }
        }
    }
    fail_all(rcpts, &last)
}

/// Each recipient's outcome from the server at `relay`.
fn tried_at(rcpts: &[MailAddress], outcomes: Vec<RcptOutcome>, relay: &str) -> Vec<Tried> {
    rcpts
        .iter()
        .cloned()
        .zip(outcomes)
        .map(|(rcpt, outcome)| Tried {
            rcpt,
            outcome,
            relay: relay.to_string(),
        })
        .collect()
}

fn fail_all(rcpts: &[MailAddress], last: &(String, bool, String)) -> Vec<Tried> {
    rcpts
        .iter()
        .map(|r| Tried {
            rcpt: r.clone(),
            outcome: if last.1 {
                RcptOutcome::Permanent(last.0.clone())
            } else {
                RcptOutcome::Temporary(last.0.clone())
            },
            relay: last.2.clone(),
        })
        .collect()
}

/// A transport's destination as policy and password maps name it:
/// `[host]:port`, `host`, ... (the spec without its `smtp:`/`lmtp:`).
fn destination(spec: &TransportSpec) -> String {
    let text = spec.to_string();
    text.split_once(':')
        .map_or(text.as_str(), |(_, d)| d)
        .to_ascii_lowercase()
}

fn tls_level(
    s: &DeliverySettings,
    spec: &TransportSpec,
    c: &route::Candidate,
    rcpts: &[MailAddress],
) -> TlsLevel {
    let keys = [
        destination(spec),
        c.host.to_ascii_lowercase(),
        rcpts
            .first()
            .map(|r| r.domain().as_str().to_string())
            .unwrap_or_default(),
    ];
    keys.iter()
        .find_map(|k| s.tls_policy.get(k).copied())
        .unwrap_or(s.client.tls)
}

fn sasl_for(
    s: &DeliverySettings,
    spec: &TransportSpec,
    c: &route::Candidate,
) -> Option<(String, String)> {
    if s.sasl_passwords.is_empty() {
        return None;
    }
    let host = c.host.to_ascii_lowercase();
    let port = c.addr.port();
    [
        destination(spec),
        format!("[{host}]:{port}"),
        format!("[{host}]"),
        format!("{host}:{port}"),
        host,
    ]
    .iter()
    .find_map(|k| s.sasl_passwords.get(k).cloned())
}

async fn deliver_maildir(
    s: &DeliverySettings,
    entry: &QueueEntry,
    body: &[u8],
    base: &std::path::Path,
    rcpts: &[MailAddress],
) -> Vec<Tried> {
    let mut out = Vec::new();
    for rcpt in rcpts {
        let (base, rcpt2, id, host, body) = (
            base.to_path_buf(),
            rcpt.clone(),
            entry.queue_id.to_string(),
            s.hostname.clone(),
            body.to_vec(),
        );
        let r =
            tokio::task::spawn_blocking(move || maildir::deliver(&base, &rcpt2, &id, &host, &body))
                .await;
        let outcome = match r {
            Ok(Ok(path)) => RcptOutcome::Sent(format!("delivered to maildir {}", path.display())),
            Ok(Err(e)) => RcptOutcome::Temporary(format!("maildir delivery failed: {e}")),
            Err(e) => RcptOutcome::Temporary(format!("maildir delivery failed: {e}")),
        };
        out.push(Tried {
            rcpt: rcpt.clone(),
            outcome,
            relay: "maildir".into(),
        });
    }
    out
}

fn backoff(s: &DeliverySettings, attempts: u32) -> Duration {
    let factor = 1u32 << attempts.saturating_sub(1).min(16);
    (s.minimal_backoff * factor)
        .min(s.maximal_backoff)
        .max(s.minimal_backoff)
}

/// Turns the attempt into recipient states, commits them (with a DSN for
/// new bounces) under the message's epoch, and logs Postfix's lines.
async fn commit_outcomes<Q: QueueStore>(
    store: &Q,
    s: &DeliverySettings,
    entry: &QueueEntry,
    body: &[u8],
    attempts: &HashMap<MailAddress, u32>,
    tried: Vec<Tried>,
    started: Instant,
) -> Vec<(MailAddress, RecipientStatus)> {
    if tried.is_empty() {
        return Vec::new();
    }
    let now = now_ms();
    let age = Duration::from_millis(now.saturating_sub(entry.arrival_ms));
    let lifetime = if entry.sender.is_none() {
        s.bounce_queue_lifetime
    } else {
        s.maximal_queue_lifetime
    };
    let mut results = Vec::new();
    let mut failures = Vec::new();
    let mut lines = Vec::new();
    for t in tried {
        let (status, dsn, word, text) = match t.outcome {
            RcptOutcome::Sent(reply) => (
                RecipientStatus::Delivered {
                    reply: reply.clone(),
                    time_ms: now,
                },
                dsn::status_of(&reply, false).replace("4.0.0", "2.0.0"),
                "sent",
                reply,
            ),
            RcptOutcome::Permanent(reason) => {
                let code = dsn::status_of(reason.rsplit("said: ").next().unwrap_or(&reason), true);
                failures.push(dsn::Failure {
                    recipient: t.rcpt.clone(),
                    status: code.clone(),
                    remote_mta: (t.relay != "none").then(|| t.relay.clone()),
                    diagnostic: reason.clone(),
                });
                (
                    RecipientStatus::Bounced {
                        reason: reason.clone(),
                        time_ms: now,
                    },
                    code,
                    "bounced",
                    reason,
                )
            }
            RcptOutcome::Temporary(reason) if age >= lifetime => {
                let why = format!(
                    "message expired after {} s in the queue: {reason}",
                    age.as_secs()
                );
                failures.push(dsn::Failure {
                    recipient: t.rcpt.clone(),
                    status: "4.4.7".into(),
                    remote_mta: None,
                    diagnostic: why.clone(),
                });
                (
                    RecipientStatus::Bounced {
                        reason: why.clone(),
                        time_ms: now,
                    },
                    "4.4.7".into(),
                    "expired",
                    why,
                )
            }
            RcptOutcome::Temporary(reason) => {
                let n = attempts.get(&t.rcpt).copied().unwrap_or(0) + 1;
                let code = dsn::status_of(reason.rsplit("said: ").next().unwrap_or(&reason), false);
                (
                    RecipientStatus::Deferred {
                        reason: reason.clone(),
                        next_try_ms: now + backoff(s, n).as_millis() as u64,
                        attempts: n,
                    },
                    code,
                    "deferred",
                    reason,
                )
            }
        };
        let delay = age.as_secs_f64();
        let queued = delay - started.elapsed().as_secs_f64();
        lines.push(format!(
            "{}: to=<{}>, relay={}, delay={:.2}, delays={:.2}/0/0/{:.2}, dsn={dsn}, status={word} ({})",
            entry.queue_id,
            t.rcpt,
            t.relay,
            delay,
            queued.max(0.0),
            started.elapsed().as_secs_f64(),
            text.split_whitespace().collect::<Vec<_>>().join(" ")
        ));
        results.push((t.rcpt, status));
    }
    let recorded = results.clone();
    let (command, dsn_id) = attempt_record(
        entry,
        body,
        results,
        &failures,
        store.node_id(),
        &s.hostname,
        now,
    );
    match store.commit(vec![command]).await {
        Ok(outcomes) => match outcomes.first() {
            Some(Outcome::Applied { detail }) => {
                for l in &lines {
                    tracing::info!(target: "postfix/smtp", "{l}");
                }
                // The state machine queued the notice only if this result
                // newly bounced someone.
                if let Some(id) = dsn_id.filter(|id| detail.contains(id.as_str())) {
                    tracing::info!(target: "postfix/bounce", "{}: sender non-delivery notification: {id}", entry.queue_id);
                }
                if detail.contains(": removed") {
                    tracing::info!(target: "postfix/qmgr", "{}: removed", entry.queue_id);
                }
            }
            Some(Outcome::Rejected { reason }) => {
                // Fenced: another node owns the message now; what we did
                // is a duplicate at worst.
                tracing::warn!(target: "postfix/qmgr", "{}: delivery result refused: {reason}", entry.queue_id);
            }
            _ => {}
        },
        Err(e) => {
            tracing::warn!(target: "postfix/qmgr", "{}: cannot commit the delivery result (it will be tried again): {e}", entry.queue_id);
        }
    }
    recorded
}

/// What one delivery attempt commits: the recipients' results under the
/// lease epoch the attempt ran with, carrying a bounce notice (RFC 3464) to
/// the sender for the failures (never for a `<>` sender), which the state
/// machine queues only if the result counts. Returns the command and the
/// notice's queue id.
pub fn attempt_record(
    entry: &QueueEntry,
    body: &[u8],
    results: Vec<(MailAddress, RecipientStatus)>,
    failures: &[dsn::Failure],
    node: NodeId,
    hostname: &str,
    now_ms: u64,
) -> (Command, Option<QueueId>) {
    let mut notice = None;
    let mut dsn_id = None;
    if let (false, Some(sender)) = (failures.is_empty(), &entry.sender) {
        let id = QueueId::new_for(node);
        notice = Some(Box::new(NewMessage {
            queue_id: id.clone(),
            sender: None,
            recipients: vec![sender.clone()],
            owner: node,
            client: "local".into(),
            helo: hostname.to_string(),
            smtputf8: false,
            eight_bit: true,
            body: dsn::build(entry, body, failures, hostname, now_ms / 1000),
        }));
        dsn_id = Some(id);
    }
    let command = Command::QueueResult {
        queue_id: entry.queue_id.clone(),
        epoch: entry.epoch,
        results,
        notice,
    };
    (command, dsn_id)
}
