//! The RocksDB handle and its raw operations: the raft log (fsynced appends),
//! raft metadata (fsynced), state-machine metadata, table reads and digests.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use hamail_types::{DomainName, MailAddress};
use rocksdb::{
    ColumnFamily, ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options, WriteBatch,
    WriteOptions,
};
use sha2::{Digest, Sha256};

use crate::tables::{
    AliasRecord, DomainRecord, RecipientRecord, Table, TransportRecord, address_from_key,
    domain_from_key, domain_prefix,
};
use crate::{Result, StoreError, decode};

pub(crate) const CF_RAFT_LOG: &str = "raft_log";
pub(crate) const CF_RAFT_META: &str = "raft_meta";
pub(crate) const CF_SM_META: &str = "sm_meta";

/// A cheap, clonable handle to the store.
#[derive(Clone)]
pub struct Store {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) db: DB,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.inner.path)
            .finish()
    }
}

fn synced() -> WriteOptions {
    let mut w = WriteOptions::default();
    w.set_sync(true);
    w
}

impl Store {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Store> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_keep_log_file_num(4);
        opts.set_max_total_wal_size(256 << 20);
        let mut cfs: Vec<ColumnFamilyDescriptor> = Table::ALL
            .iter()
            .map(|t| ColumnFamilyDescriptor::new(t.cf_name(), Options::default()))
            .collect();
        for name in [CF_RAFT_LOG, CF_RAFT_META, CF_SM_META] {
            cfs.push(ColumnFamilyDescriptor::new(name, Options::default()));
        }
        let db = DB::open_cf_descriptors(&opts, dir, cfs).map_err(|e| StoreError::Open {
            path: dir.display().to_string(),
            reason: e.to_string(),
        })?;
        Ok(Store {
            inner: Arc::new(Inner {
                db,
                path: dir.to_path_buf(),
            }),
        })
    }

    /// Stops RocksDB's flushes and compactions and waits for them: called
    /// last at shutdown, so the process never exits with a background job
    /// running (RocksDB aborts in its static destructors then). The data is
    /// safe without them: the WAL holds every write.
    pub fn stop_background_work(&self) {
        self.inner.db.cancel_all_background_work(true);
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    pub(crate) fn cf(&self, name: &str) -> &ColumnFamily {
        // Every column family is created in `open`; a missing one is a bug in
        // this crate, caught by every test that opens a store.
        self.inner
            .db
            .cf_handle(name)
            .unwrap_or_else(|| panic!("column family {name} was created at open"))
    }

    pub(crate) fn table_cf(&self, t: Table) -> &ColumnFamily {
        self.cf(t.cf_name())
    }

    // ---- raft log -------------------------------------------------------

    /// Appends log entries `(index, bytes)`. With `sync`, returns only once
    /// they are on disk.
    pub fn log_append<'a>(
        &self,
        entries: impl IntoIterator<Item = (u64, &'a [u8])>,
        sync: bool,
    ) -> Result<()> {
        let cf = self.cf(CF_RAFT_LOG);
        let mut batch = WriteBatch::default();
        for (index, bytes) in entries {
            batch.put_cf(cf, index.to_be_bytes(), bytes);
        }
        let opts = if sync {
            synced()
        } else {
            WriteOptions::default()
        };
        self.inner
            .db
            .write_opt(batch, &opts)
            .map_err(|e| StoreError::io("log append", e))
    }

    /// Makes everything written so far durable (one fsync of the WAL): the
    /// raft log's flusher calls it for the appends waiting for it.
    pub fn sync_wal(&self) -> Result<()> {
        self.inner
            .db
            .flush_wal(true)
            .map_err(|e| StoreError::io("wal sync", e))
    }

    /// Entries with `start <= index < end`, in order.
    pub fn log_range(&self, start: u64, end: u64) -> Result<Vec<(u64, Vec<u8>)>> {
        let cf = self.cf(CF_RAFT_LOG);
        let mut out = Vec::new();
        if start >= end {
            return Ok(out);
        }
        let from = start.to_be_bytes();
        for item in self
            .inner
            .db
            .iterator_cf(cf, IteratorMode::From(&from, Direction::Forward))
        {
            let (k, v) = item.map_err(|e| StoreError::io("log read", e))?;
            let index = log_index(&k)?;
            if index >= end {
                break;
            }
            out.push((index, v.into_vec()));
        }
        Ok(out)
    }

    pub fn log_last(&self) -> Result<Option<(u64, Vec<u8>)>> {
        let cf = self.cf(CF_RAFT_LOG);
        match self.inner.db.iterator_cf(cf, IteratorMode::End).next() {
            None => Ok(None),
            Some(item) => {
                let (k, v) = item.map_err(|e| StoreError::io("log read", e))?;
                Ok(Some((log_index(&k)?, v.into_vec())))
            }
        }
    }

    /// Deletes entries with `index >= from` (conflicting suffix).
    pub fn log_truncate_from(&self, from: u64) -> Result<()> {
        let cf = self.cf(CF_RAFT_LOG);
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(cf, from.to_be_bytes(), u64::MAX.to_be_bytes());
        batch.delete_cf(cf, u64::MAX.to_be_bytes());
        self.inner
            .db
            .write_opt(batch, &synced())
            .map_err(|e| StoreError::io("log truncate", e))
    }

    /// Deletes entries with `index <= upto` and records `meta` (the purged log
    /// id) in the same synced batch. State written before is synced first, so
    /// a purge never outruns the durable state machine.
    pub fn log_purge_upto(&self, upto: u64, meta_key: &str, meta: &[u8]) -> Result<()> {
        self.sync_wal()?;
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(
            self.cf(CF_RAFT_LOG),
            0u64.to_be_bytes(),
            upto.saturating_add(1).to_be_bytes(),
        );
        batch.put_cf(self.cf(CF_RAFT_META), meta_key, meta);
        self.inner
            .db
            .write_opt(batch, &synced())
            .map_err(|e| StoreError::io("log purge", e))
    }

    // ---- metadata -------------------------------------------------------

    pub fn raft_meta_get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.inner
            .db
            .get_cf(self.cf(CF_RAFT_META), key)
            .map_err(|e| StoreError::io("raft meta read", e))
    }

    /// Writes raft metadata (vote, node id). With `sync`, returns once it is
    /// on disk; without, the next log fsync carries it.
    pub fn raft_meta_put(&self, key: &str, value: &[u8], sync: bool) -> Result<()> {
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(CF_RAFT_META), key, value);
        let opts = if sync {
            synced()
        } else {
            WriteOptions::default()
        };
        self.inner
            .db
            .write_opt(batch, &opts)
            .map_err(|e| StoreError::io("raft meta write", e))
    }

    pub fn sm_meta_get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.inner
            .db
            .get_cf(self.cf(CF_SM_META), key)
            .map_err(|e| StoreError::io("state meta read", e))
    }

    /// Writes state-machine metadata durably (used by snapshot install).
    pub fn sm_meta_put(&self, key: &str, value: &[u8]) -> Result<()> {
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(CF_SM_META), key, value);
        self.inner
            .db
            .write_opt(batch, &synced())
            .map_err(|e| StoreError::io("state meta write", e))
    }

    // ---- tables ---------------------------------------------------------

    pub fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.inner
            .db
            .get_cf(self.table_cf(table), key)
            .map_err(|e| StoreError::io("table read", e))
    }

    /// Calls `f` for every row whose key starts with `prefix`, in key order.
    pub fn scan_prefix(
        &self,
        table: Table,
        prefix: &[u8],
        mut f: impl FnMut(&[u8], &[u8]) -> Result<()>,
    ) -> Result<()> {
        let cf = self.table_cf(table);
        for item in self
            .inner
            .db
            .iterator_cf(cf, IteratorMode::From(prefix, Direction::Forward))
        {
            let (k, v) = item.map_err(|e| StoreError::io("table scan", e))?;
            if !k.starts_with(prefix) {
                break;
            }
            f(&k, &v)?;
        }
        Ok(())
    }

    pub fn domain(&self, d: &DomainName) -> Result<Option<DomainRecord>> {
        self.get(Table::Domains, d.as_str().as_bytes())?
            .map(|v| decode("domain", &v))
            .transpose()
    }

    pub fn domains(&self) -> Result<Vec<(DomainName, DomainRecord)>> {
        self.keyed_rows(Table::Domains, b"", domain_from_key, "domain")
    }

    pub fn recipients(
        &self,
        domain: Option<&DomainName>,
    ) -> Result<Vec<(MailAddress, RecipientRecord)>> {
        self.address_rows(Table::Recipients, domain, "recipient")
    }

    pub fn recipient(&self, a: &MailAddress) -> Result<Option<RecipientRecord>> {
        self.get(Table::Recipients, &crate::tables::address_key(a))?
            .map(|v| decode("recipient", &v))
            .transpose()
    }

    pub fn alias(&self, a: &MailAddress) -> Result<Option<AliasRecord>> {
        self.get(Table::Aliases, &crate::tables::address_key(a))?
            .map(|v| decode("alias", &v))
            .transpose()
    }

    pub fn aliases(&self, domain: Option<&DomainName>) -> Result<Vec<(MailAddress, AliasRecord)>> {
        self.address_rows(Table::Aliases, domain, "alias")
    }

    pub(crate) fn address_rows<T: serde::de::DeserializeOwned>(
        &self,
        table: Table,
        domain: Option<&DomainName>,
        what: &'static str,
    ) -> Result<Vec<(MailAddress, T)>> {
        let prefix = domain.map(domain_prefix).unwrap_or_default();
        self.keyed_rows(table, &prefix, address_from_key, what)
    }

    /// Decoded rows under `prefix` whose key `key` understands (others, like
    /// counters kept in the same table, are skipped).
    pub(crate) fn keyed_rows<K, T: serde::de::DeserializeOwned>(
        &self,
        table: Table,
        prefix: &[u8],
        key: impl Fn(&[u8]) -> Option<K>,
        what: &'static str,
    ) -> Result<Vec<(K, T)>> {
        let mut out = Vec::new();
        self.scan_prefix(table, prefix, |k, v| {
            if let Some(key) = key(k) {
                out.push((key, decode(what, v)?));
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// Every node the cluster has admitted, removed ones included.
    pub fn nodes(&self) -> Result<Vec<(u64, crate::NodeRecord)>> {
        let id = |k: &[u8]| <[u8; 8]>::try_from(k).ok().map(u64::from_be_bytes);
        self.keyed_rows(Table::Nodes, b"", id, "node")
    }

    pub fn zone(&self, zone: &DomainName) -> Result<Option<crate::ZoneState>> {
        self.get(Table::Zones, zone.as_str().as_bytes())?
            .map(|v| decode("zone", &v))
            .transpose()
    }

    /// The log index of the last change to any zone (None: never changed).
    pub fn zones_version(&self) -> Result<Option<u64>> {
        self.get(Table::Zones, crate::tables::ZONES_VERSION_KEY)?
            .map(|v| decode("zones version", &v))
            .transpose()
    }

    pub fn zones(&self) -> Result<Vec<(DomainName, crate::ZoneState)>> {
        self.keyed_rows(Table::Zones, b"", domain_from_key, "zone")
    }

    pub fn token(&self, hash: &str) -> Result<Option<crate::TokenRecord>> {
        self.get(Table::Tokens, hash.as_bytes())?
            .map(|v| decode("token", &v))
            .transpose()
    }

    /// The CA rotation state, once a rotation has begun.
    pub fn ca_state(&self) -> Result<Option<hamail_types::CaState>> {
        self.get(Table::Cluster, crate::apply::CA_KEY)?
            .map(|v| decode("CA state", &v))
            .transpose()
    }

    pub fn transport(&self, d: &DomainName) -> Result<Option<TransportRecord>> {
        self.get(Table::Transports, d.as_str().as_bytes())?
            .map(|v| decode("transport", &v))
            .transpose()
    }

    pub fn transports(&self) -> Result<Vec<(DomainName, TransportRecord)>> {
        self.keyed_rows(Table::Transports, b"", domain_from_key, "transport")
    }

    /// Rows per table, for `hamail status`.
    pub fn table_counts(&self) -> Result<Vec<(Table, u64)>> {
        let mut out = Vec::new();
        for t in Table::ALL {
            let mut n = 0u64;
            self.scan_prefix(t, b"", |_, _| {
                n += 1;
                Ok(())
            })?;
            out.push((t, n));
        }
        Ok(out)
    }

    /// SHA-256 over every replicated table (names, keys and values in order),
    /// read from one consistent RocksDB snapshot. Two nodes that applied the
    /// same log have the same digest.
    pub fn state_digest(&self) -> Result<String> {
        let snap = self.inner.db.snapshot();
        let mut h = Sha256::new();
        for t in Table::ALL {
            h.update([t.id()]);
            for item in snap.iterator_cf(self.table_cf(t), IteratorMode::Start) {
                let (k, v) = item.map_err(|e| StoreError::io("digest scan", e))?;
                h.update((k.len() as u32).to_be_bytes());
                h.update(&k);
                h.update((v.len() as u32).to_be_bytes());
                h.update(&v);
            }
        }
        Ok(hex::encode(h.finalize()))
    }
}

fn log_index(key: &[u8]) -> Result<u64> {
    let arr: [u8; 8] = key.try_into().map_err(|_| StoreError::Decode {
        what: "log key",
        reason: format!("{} bytes, expected 8", key.len()),
    })?;
    Ok(u64::from_be_bytes(arr))
}
