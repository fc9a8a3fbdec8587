//! Snapshot streams: every replicated table dumped from one consistent
//! RocksDB snapshot as framed records, ending in a SHA-256 of the content
//! (the same digest as [`Store::state_digest`]). Export and import stream
//! through `Write`/`Read`: the state is never held in memory at once.
//!
//! Layout: `HAMAILSNAP` `version:u8`, then records `table:u8 klen:u32 key
//! vlen:u32 value`, then `0xFF` and the 32-byte digest.

use std::collections::BTreeMap;
use std::io::{Read, Write};

use rocksdb::{IteratorMode, WriteBatch, WriteOptions};
use sha2::{Digest, Sha256};

use crate::db::CF_SM_META;
use crate::tables::Table;
use crate::{Result, Store, StoreError};

pub const SNAPSHOT_MAGIC: &[u8; 10] = b"HAMAILSNAP";
const SNAPSHOT_VERSION: u8 = 1;
const END_TAG: u8 = 0xFF;
/// Set while a snapshot is being loaded into the tables; if found at start,
/// the load is redone from the current snapshot file.
pub const INSTALLING_KEY: &str = "snapshot_installing";
const BATCH_BYTES: usize = 4 << 20;
const MAX_FIELD: u32 = 512 << 20;

fn werr(e: std::io::Error) -> StoreError {
    StoreError::io("snapshot write", e)
}

impl Store {
    /// Writes every table to `w` from one consistent point, and returns the
    /// state-machine metadata (last applied, membership) of that same point.
    pub fn export_state(&self, w: &mut impl Write) -> Result<BTreeMap<String, Vec<u8>>> {
        let snap = self.inner.db.snapshot();
        let mut meta = BTreeMap::new();
        for item in snap.iterator_cf(self.cf(CF_SM_META), IteratorMode::Start) {
            let (k, v) = item.map_err(|e| StoreError::io("snapshot meta scan", e))?;
            meta.insert(String::from_utf8_lossy(&k).into_owned(), v.into_vec());
        }
        w.write_all(SNAPSHOT_MAGIC).map_err(werr)?;
        w.write_all(&[SNAPSHOT_VERSION]).map_err(werr)?;
        let mut h = Sha256::new();
        for t in Table::ALL {
            h.update([t.id()]);
            for item in snap.iterator_cf(self.table_cf(t), IteratorMode::Start) {
                let (k, v) = item.map_err(|e| StoreError::io("snapshot scan", e))?;
                let klen = (k.len() as u32).to_be_bytes();
                let vlen = (v.len() as u32).to_be_bytes();
                h.update(klen);
                h.update(&k);
                h.update(vlen);
                h.update(&v);
                w.write_all(&[t.id()]).map_err(werr)?;
                w.write_all(&klen).map_err(werr)?;
                w.write_all(&k).map_err(werr)?;
                w.write_all(&vlen).map_err(werr)?;
                w.write_all(&v).map_err(werr)?;
            }
        }
        w.write_all(&[END_TAG]).map_err(werr)?;
        w.write_all(&h.finalize()).map_err(werr)?;
        w.flush().map_err(werr)?;
        Ok(meta)
    }

    /// Reads a whole stream and checks its framing and digest without
    /// touching the tables. Returns the digest.
    pub fn verify_snapshot(r: &mut impl Read) -> Result<String> {
        read_stream(r, |_, _, _| Ok(()))
    }

    /// Is a snapshot load unfinished (a crash during install)?
    pub fn snapshot_install_pending(&self) -> Result<bool> {
        Ok(self.sm_meta_get(INSTALLING_KEY)?.is_some())
    }

    /// Replaces every table with the stream's content. `final_meta` (last
    /// applied, membership) is written with the last batch, which also clears
    /// the in-progress marker; a crash before that leaves the marker set so
    /// the caller redoes the load.
    pub fn import_state(
        &self,
        r: &mut impl Read,
        final_meta: &[(&str, Vec<u8>)],
    ) -> Result<String> {
        self.sm_meta_put(INSTALLING_KEY, b"1")?;
        let db = &self.inner.db;
        // Clear the tables.
        for t in Table::ALL {
            let cf = self.table_cf(t);
            let mut batch = WriteBatch::default();
            for item in db.iterator_cf(cf, IteratorMode::Start) {
                let (k, _) = item.map_err(|e| StoreError::io("snapshot clear", e))?;
                batch.delete_cf(cf, k);
                if batch.size_in_bytes() > BATCH_BYTES {
                    db.write(std::mem::take(&mut batch))
                        .map_err(|e| StoreError::io("snapshot clear", e))?;
                }
            }
            db.write(batch)
                .map_err(|e| StoreError::io("snapshot clear", e))?;
        }
        let mut batch = WriteBatch::default();
        let digest = read_stream(r, |t, k, v| {
            batch.put_cf(self.table_cf(t), k, v);
            if batch.size_in_bytes() > BATCH_BYTES {
                db.write(std::mem::take(&mut batch))
                    .map_err(|e| StoreError::io("snapshot load", e))?;
            }
            Ok(())
        })?;
        let meta_cf = self.cf(CF_SM_META);
        for (k, v) in final_meta {
            batch.put_cf(meta_cf, k, v);
        }
        batch.delete_cf(meta_cf, INSTALLING_KEY);
        let mut sync = WriteOptions::default();
        sync.set_sync(true);
        db.write_opt(batch, &sync)
            .map_err(|e| StoreError::io("snapshot load", e))?;
        Ok(digest)
    }
}

fn read_exact(r: &mut impl Read, buf: &mut [u8], what: &str) -> Result<()> {
    r.read_exact(buf)
        .map_err(|e| StoreError::Snapshot(format!("reading {what}: {e}")))
}

fn read_field(r: &mut impl Read, what: &str) -> Result<Vec<u8>> {
    let mut len = [0u8; 4];
    read_exact(r, &mut len, what)?;
    let len = u32::from_be_bytes(len);
    if len > MAX_FIELD {
        return Err(StoreError::Snapshot(format!(
            "{what} of {len} bytes is too large"
        )));
    }
    let mut buf = vec![0u8; len as usize];
    read_exact(r, &mut buf, what)?;
    Ok(buf)
}

/// Parses a stream, calling `f` for each record; checks order and digest.
fn read_stream(
    r: &mut impl Read,
    mut f: impl FnMut(Table, &[u8], &[u8]) -> Result<()>,
) -> Result<String> {
    let mut magic = [0u8; 11];
    read_exact(r, &mut magic, "header")?;
    if &magic[..10] != SNAPSHOT_MAGIC {
        return Err(StoreError::Snapshot(
            "not a hamail snapshot (bad magic)".into(),
        ));
    }
    if magic[10] != SNAPSHOT_VERSION {
        return Err(StoreError::Snapshot(format!(
            "snapshot version {} is not supported (this build reads {SNAPSHOT_VERSION})",
            magic[10]
        )));
    }
    let mut h = Sha256::new();
    let mut tables = Table::ALL.into_iter().peekable();
    let mut current: Option<Table> = None;
    loop {
        let mut tag = [0u8; 1];
        read_exact(r, &mut tag, "record tag")?;
        if tag[0] == END_TAG {
            break;
        }
        let t = Table::from_id(tag[0])
            .ok_or_else(|| StoreError::Snapshot(format!("unknown table tag {}", tag[0])))?;
        // Hash each table's id once, in the fixed order, as state_digest does.
        while current != Some(t) {
            match tables.next() {
                Some(next) => {
                    h.update([next.id()]);
                    current = Some(next);
                }
                None => return Err(StoreError::Snapshot("tables out of order".into())),
            }
        }
        let k = read_field(r, "key")?;
        let v = read_field(r, "value")?;
        h.update((k.len() as u32).to_be_bytes());
        h.update(&k);
        h.update((v.len() as u32).to_be_bytes());
        h.update(&v);
        f(t, &k, &v)?;
    }
    for rest in tables {
        h.update([rest.id()]);
    }
    let mut want = [0u8; 32];
    read_exact(r, &mut want, "digest")?;
    let got = h.finalize();
    if got.as_slice() != want {
        return Err(StoreError::Snapshot(
            "digest mismatch: the snapshot is corrupt".into(),
        ));
    }
    Ok(hex::encode(got))
}
