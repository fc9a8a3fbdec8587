//! One delivery attempt of one message: its due recipients grouped by next
//! hop (route.rs), each group tried on its transports in order (the SMTP or
//! LMTP client, or a maildir), and the results handed to record.rs.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use hamail_types::{MailAddress, QueueEntry, RecipientStatus, TlsLevel, TransportSpec};
use tokio::sync::Semaphore;

use super::client::{self, Envelope, Pool, RcptOutcome, ServerAddr};
use super::maildir_quota::{self, MaildirDelivery};
use super::queue_manager::due_recipients;
use super::{DeliverySettings, Overquota, QueueStore, now_ms, record, route, sasl};

/// One attempt's result for one recipient, with where it went.
pub(super) struct Tried {
    pub(super) rcpt: MailAddress,
    pub(super) outcome: RcptOutcome,
    pub(super) relay: String,
}

/// Why the last transport tried for a group of recipients did not take
/// them: what every recipient of the group gets if no later one does.
struct LastFailure {
    reason: String,
    permanent: bool,
    /// Where it happened (`host[ip]:port`), or "none".
    relay: String,
}

impl LastFailure {
    fn new(reason: String, permanent: bool, relay: String) -> Self {
        LastFailure {
            reason,
            permanent,
            relay,
        }
    }
}

/// Tries a message's due recipients; returns what it recorded.
pub(super) async fn deliver_message<Q: QueueStore>(
    store: &Q,
    s: &DeliverySettings,
    per_dest: &Mutex<HashMap<String, Arc<Semaphore>>>,
    pool: &Pool,
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
        // A message marked for the content filter goes there whole, in one
        // transaction, whatever its recipients' routes (never around it).
        if let Some(filter) = &entry.content_filter {
            groups
                .entry(format!("content_filter {filter}"))
                .or_insert_with(|| (vec![filter.clone()], Vec::new()))
                .1
                .push(rcpt.clone());
            continue;
        }
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
    record::commit_outcomes(store, s, &entry, &body, &attempts, tried, started).await
}

/// Tries the transports in order for one group of recipients.
async fn deliver_group<Q: QueueStore>(
    store: &Q,
    s: &DeliverySettings,
    pool: &Pool,
    entry: &QueueEntry,
    body: &[u8],
    specs: &[TransportSpec],
    rcpts: &[MailAddress],
) -> Vec<Tried> {
    let mut last = LastFailure::new("no transport".into(), false, "none".into());
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
                return deliver_maildir(store, s, entry, body, &PathBuf::from(path), rcpts).await;
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
                let server = ServerAddr::Unix(PathBuf::from(path));
                match client::deliver(server, &host, &opts, &env, pool, &lease).await {
                    Ok(outcomes) => return tried_at(rcpts, outcomes, &host),
                    Err(e) => {
                        last = LastFailure::new(e.reason, e.permanent, host);
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
                            last = LastFailure::new(e.reason, e.permanent, "none".into());
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
                    if entry.content_filter.is_some() {
                        opts.tls = filter_tls_level(s, spec);
                        opts.sasl = None;
                    } else {
                        opts.tls = tls_level(s, spec, &c, rcpts);
                        opts.sasl = sasl::sasl_for(s, spec, &c);
                    }
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
                            last = LastFailure::new(e.reason, e.permanent, relay);
                            if !e.try_next {
                                return fail_all(rcpts, &last);
                            }
                        }
                    }
                }
            }
            other => {
                last = LastFailure::new(
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

fn fail_all(rcpts: &[MailAddress], last: &LastFailure) -> Vec<Tried> {
    rcpts
        .iter()
        .map(|r| Tried {
            rcpt: r.clone(),
            outcome: if last.permanent {
                RcptOutcome::Permanent(last.reason.clone())
            } else {
                RcptOutcome::Temporary(last.reason.clone())
            },
            relay: last.relay.clone(),
        })
        .collect()
}

/// A transport's destination as policy and password maps name it:
/// `[host]:port`, `host`, ... (the spec without its `smtp:`/`lmtp:`).
pub(super) fn destination(spec: &TransportSpec) -> String {
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

/// A content filter listens next to us (amavis on localhost): no TLS
/// unless `smtp_tls_policy` names its `[host]:port`, whatever the default
/// level for the Internet.
fn filter_tls_level(s: &DeliverySettings, spec: &TransportSpec) -> TlsLevel {
    s.tls_policy
        .get(&destination(spec))
        .copied()
        .unwrap_or(TlsLevel::None)
}

async fn deliver_maildir<Q: QueueStore>(
    store: &Q,
    s: &DeliverySettings,
    entry: &QueueEntry,
    body: &[u8],
    base: &std::path::Path,
    rcpts: &[MailAddress],
) -> Vec<Tried> {
    let mut out = Vec::new();
    for rcpt in rcpts {
        let quota = match store.mailbox_quota(rcpt) {
            Ok(q) => q,
            Err(e) => {
                out.push(Tried {
                    rcpt: rcpt.clone(),
                    outcome: RcptOutcome::Temporary(format!("quota lookup failed: {e}")),
                    relay: "maildir".into(),
                });
                continue;
            }
        };
        let (base, rcpt2, id, host, body) = (
            base.to_path_buf(),
            rcpt.clone(),
            entry.queue_id.to_string(),
            s.hostname.clone(),
            body.to_vec(),
        );
        let r = tokio::task::spawn_blocking(move || {
            maildir_quota::deliver_within_quota(&base, &rcpt2, quota, &id, &host, &body)
        })
        .await;
        let outcome = match r {
            Ok(Ok(MaildirDelivery::Delivered(path))) => {
                RcptOutcome::Sent(format!("delivered to maildir {}", path.display()))
            }
            Ok(Ok(MaildirDelivery::OverQuota { usage, size, quota })) => {
                let bounce = s.overquota == Overquota::Bounce;
                let reason = maildir_quota::over_quota_reason(bounce, usage, size, quota);
                if bounce {
                    RcptOutcome::Permanent(reason)
                } else {
                    RcptOutcome::Temporary(reason)
                }
            }
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
