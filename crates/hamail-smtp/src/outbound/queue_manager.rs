//! The queue manager: a loop that scans this node's messages, starts an
//! attempt for each that is due (within the concurrency limits), and the
//! settle rule that keeps a message alone until its last record shows up
//! in this node's copy, so a delivered message is not delivered twice.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hamail_types::{MailAddress, QueueEntry, QueueId, RecipientStatus};
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;

use super::client::Pool;
use super::{DeliverySettings, QueueStore, attempt, now_ms};

/// How long a message tried here is left alone while this node's copy of
/// it has not changed yet (the result is normally applied within
/// milliseconds; a result that failed to commit is retried after this).
pub const SETTLE: Duration = Duration::from_secs(30);
/// Shortest time between two scans of the queue.
const SCAN_GAP: Duration = Duration::from_millis(50);

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
    let pool: Arc<Pool> = Arc::default();
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
                    attempt::deliver_message(store.as_ref(), &settings, &per_dest, &pool, entry)
                        .await;
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
pub(super) fn due_recipients(
    e: &QueueEntry,
    now: u64,
    s: &DeliverySettings,
) -> Vec<(MailAddress, u32)> {
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
