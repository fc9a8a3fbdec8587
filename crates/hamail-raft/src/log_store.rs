//! The raft log on hamail-store. Appends go to RocksDB at once (readable) and
//! a single flusher thread makes them durable: it syncs the WAL and reports
//! the appends waiting for it flushed, in order. openraft 0.9 waits for each
//! flush before it appends again, so in practice one append waits at a time:
//! writers share an fsync by sharing a raft entry (the proposer in proposer.rs),
//! not here. The thread keeps the fsync off openraft's runtime.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use hamail_store::{Store, decode, encode};
use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, RaftLogId, Vote};

use crate::{StorageError, TypeConfig, storage_err};

const KEY_VOTE: &str = "vote";
const KEY_PURGED: &str = "last_purged";
const KEY_COMMITTED: &str = "committed";

#[derive(Clone)]
pub struct LogStore {
    store: Store,
    flusher: Arc<Flusher>,
}

/// The flusher thread and the way to it. Dropped with the last LogStore
/// clone: it closes the channel and joins the thread, so the thread's store
/// handle is gone before the drop returns. A detached thread dropping the
/// last handle would close RocksDB concurrently with process exit, and
/// RocksDB aborts ("pthread lock: Invalid argument") when its statics are
/// torn down under a closing DB.
struct Flusher {
    tx: Mutex<Option<mpsc::Sender<LogFlushed<TypeConfig>>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Drop for Flusher {
    fn drop(&mut self) {
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
        let thread = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(t) = thread
            && t.thread().id() != std::thread::current().id()
        {
            let _ = t.join();
        }
    }
}

impl LogStore {
    pub fn new(store: Store) -> Self {
        let (tx, rx) = mpsc::channel::<LogFlushed<TypeConfig>>();
        let s = store.clone();
        // The thread ends when the channel closes (see Flusher's drop).
        let thread = std::thread::Builder::new()
            .name("hamail-log-sync".into())
            .spawn(move || flusher(s, rx))
            .map_err(|e| tracing::error!(error = %e, "cannot start the log flusher"))
            .ok();
        LogStore {
            store,
            flusher: Arc::new(Flusher {
                tx: Mutex::new(Some(tx)),
                thread: Mutex::new(thread),
            }),
        }
    }

    fn get_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
        what: &'static str,
    ) -> Result<Option<T>, StorageError> {
        match self.store.raft_meta_get(key).map_err(storage_err)? {
            Some(v) => Ok(Some(decode(what, &v).map_err(storage_err)?)),
            None => Ok(None),
        }
    }
}

fn flusher(store: Store, rx: mpsc::Receiver<LogFlushed<TypeConfig>>) {
    while let Ok(first) = rx.recv() {
        let mut waiting = vec![first];
        while let Ok(more) = rx.try_recv() {
            waiting.push(more);
        }
        let result = store.sync_wal();
        for cb in waiting {
            let r = match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(std::io::Error::other(e.to_string())),
            };
            cb.log_io_completed(r);
        }
    }
}

fn range_to_bounds(range: impl RangeBounds<u64>) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(x) => *x,
        Bound::Excluded(x) => x.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(x) => x.saturating_add(1),
        Bound::Excluded(x) => *x,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError> {
        let (start, end) = range_to_bounds(range);
        let rows = self.store.log_range(start, end).map_err(storage_err)?;
        rows.into_iter()
            .map(|(_, bytes)| decode("log entry", &bytes).map_err(storage_err))
            .collect()
    }

    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError> {
        // Keep one replication message to a bounded size.
        const MAX_BYTES: usize = 16 << 20;
        let rows = self.store.log_range(start, end).map_err(storage_err)?;
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for (_, raw) in rows {
            bytes += raw.len();
            out.push(decode("log entry", &raw).map_err(storage_err)?);
            if bytes >= MAX_BYTES {
                break;
            }
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged: Option<LogId<u64>> = self.get_meta(KEY_PURGED, "purged log id")?;
        let last = match self.store.log_last().map_err(storage_err)? {
            Some((_, bytes)) => {
                let e: Entry<TypeConfig> = decode("log entry", &bytes).map_err(storage_err)?;
                Some(*e.get_log_id())
            }
            None => last_purged,
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError> {
        self.store
            .raft_meta_put(KEY_VOTE, &encode(vote), true)
            .map_err(storage_err)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError> {
        self.get_meta(KEY_VOTE, "vote")
    }

    async fn save_committed(&mut self, committed: Option<LogId<u64>>) -> Result<(), StorageError> {
        // Not synced on its own: it is a hint for restart, carried by the next fsync.
        self.store
            .raft_meta_put(KEY_COMMITTED, &encode(&committed), false)
            .map_err(storage_err)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<u64>>, StorageError> {
        Ok(self
            .get_meta::<Option<LogId<u64>>>(KEY_COMMITTED, "committed log id")?
            .flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let encoded: Vec<(u64, Vec<u8>)> = entries
            .into_iter()
            .map(|e| (e.get_log_id().index, encode(&e)))
            .collect();
        self.store
            .log_append(encoded.iter().map(|(i, b)| (*i, b.as_slice())), false)
            .map_err(storage_err)?;
        let sender = self
            .flusher
            .tx
            .lock()
            .map_err(|_| storage_err(std::io::Error::other("log flusher lock poisoned")))?;
        let sent = match sender.as_ref() {
            Some(tx) => tx.send(callback).map_err(|mpsc::SendError(cb)| cb),
            None => Err(callback),
        };
        if let Err(cb) = sent {
            // The flusher thread is gone: sync here instead.
            let r = self
                .store
                .sync_wal()
                .map_err(|e| std::io::Error::other(e.to_string()));
            cb.log_io_completed(r);
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<(), StorageError> {
        self.store
            .log_truncate_from(log_id.index)
            .map_err(storage_err)
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), StorageError> {
        self.store
            .log_purge_upto(log_id.index, KEY_PURGED, &encode(&log_id))
            .map_err(storage_err)
    }
}
