//! The raft state machine: applies entries to hamail-store's tables, builds
//! snapshots from a consistent RocksDB view into files, and installs received
//! snapshots (crash-safe: an interrupted install is redone at start).

use std::fs::File;
use std::io::{BufReader, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;

use hamail_store::{Applier, ApplyContext, Store, decode, encode};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta, StoredMembership,
};

use crate::snapshot_files::SnapshotFiles;
use crate::{NodeInfo, Response, StorageError, TypeConfig, storage_err};

const KEY_APPLIED: &str = "last_applied";
const KEY_MEMBERSHIP: &str = "last_membership";

#[derive(Clone)]
pub struct StateMachine {
    store: Store,
    files: Arc<SnapshotFiles>,
}

type Membership = StoredMembership<u64, NodeInfo>;

fn applied_from_meta(
    mut get: impl FnMut(&str) -> Option<Vec<u8>>,
) -> Result<(Option<LogId<u64>>, Membership), StorageError> {
    let applied = match get(KEY_APPLIED) {
        Some(v) => decode::<Option<LogId<u64>>>("last applied", &v).map_err(storage_err)?,
        None => None,
    };
    let membership = match get(KEY_MEMBERSHIP) {
        Some(v) => decode::<Membership>("membership", &v).map_err(storage_err)?,
        None => Membership::default(),
    };
    Ok((applied, membership))
}

impl StateMachine {
    /// Opens the state machine; finishes an install a crash interrupted.
    pub fn open(store: Store, snapshot_dir: PathBuf) -> Result<Self, StorageError> {
        let files = Arc::new(SnapshotFiles::open(snapshot_dir).map_err(storage_err)?);
        let sm = StateMachine { store, files };
        if sm.store.snapshot_install_pending().map_err(storage_err)? {
            tracing::warn!("an interrupted snapshot install is being redone");
            sm.load_current().map_err(storage_err)?;
        }
        Ok(sm)
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Loads `current.snap` into the tables.
    fn load_current(&self) -> std::io::Result<()> {
        let mut r = BufReader::new(File::open(self.files.current_path())?);
        let meta = SnapshotFiles::read_header(&mut r)?;
        let final_meta = [
            (KEY_APPLIED, encode(&meta.last_log_id)),
            (KEY_MEMBERSHIP, encode(&meta.last_membership)),
        ];
        self.store
            .import_state(&mut r, &final_meta)
            .map_err(std::io::Error::other)?;
        Ok(())
    }

    fn build(&self) -> std::io::Result<SnapshotMeta<u64, NodeInfo>> {
        let store = self.store.clone();
        let (meta, ()) = self.files.write_current(|mut w| {
            let sm_meta = store.export_state(&mut w).map_err(std::io::Error::other)?;
            let (last_log_id, last_membership) =
                applied_from_meta(|k| sm_meta.get(k).cloned()).map_err(std::io::Error::other)?;
            let snapshot_id = match &last_log_id {
                Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, std::process::id()),
                None => format!("empty-{}", std::process::id()),
            };
            Ok((
                SnapshotMeta {
                    last_log_id,
                    last_membership,
                    snapshot_id,
                },
                (),
            ))
        })?;
        Ok(meta)
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let this = self.clone();
        let meta = tokio::task::spawn_blocking(move || this.build())
            .await
            .map_err(storage_err)?
            .map_err(storage_err)?;
        tracing::info!(snapshot = %meta.snapshot_id, "snapshot built");
        let file = tokio::fs::File::open(self.files.current_path())
            .await
            .map_err(storage_err)?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(file),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> Result<(Option<LogId<u64>>, Membership), StorageError> {
        let store = &self.store;
        let mut err = None;
        let r = applied_from_meta(|k| match store.sm_meta_get(k) {
            Ok(v) => v,
            Err(e) => {
                err = Some(e);
                None
            }
        });
        if let Some(e) = err {
            return Err(storage_err(e));
        }
        r
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut ap = Applier::new(&self.store);
        let mut replies = Vec::new();
        let mut last = None;
        for entry in entries {
            last = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => replies.push(Response::default()),
                EntryPayload::Normal(req) => {
                    let mut outcomes = Vec::with_capacity(req.commands.len());
                    let ctx = ApplyContext {
                        time_ms: req.time_ms,
                        proposer: req.proposer,
                        log_index: entry.log_id.index,
                    };
                    for cmd in &req.commands {
                        outcomes.push(ap.apply(cmd, &ctx).map_err(storage_err)?);
                    }
                    for (cmd, o) in req.commands.iter().zip(&outcomes) {
                        if let hamail_types::Outcome::Rejected { reason } = o {
                            tracing::info!(index = entry.log_id.index, ?cmd, %reason, "command rejected");
                        }
                    }
                    replies.push(Response { outcomes });
                }
                EntryPayload::Membership(m) => {
                    ap.set_meta(
                        KEY_MEMBERSHIP,
                        encode(&StoredMembership::new(Some(entry.log_id), m)),
                    );
                    replies.push(Response::default());
                }
            }
        }
        if let Some(l) = last {
            ap.set_meta(KEY_APPLIED, encode(&Some(l)));
            ap.commit().map_err(storage_err)?;
        }
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        let f = self.files.create_incoming().map_err(storage_err)?;
        Ok(Box::new(tokio::fs::File::from_std(f)))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, NodeInfo>,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        let mut src = snapshot.into_std().await;
        let this = self.clone();
        let want = meta.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let path = this.files.copy_in(&mut src)?;
            drop(src);
            // Check the whole stream before it replaces anything.
            let mut r = BufReader::new(File::open(&path)?);
            let got = SnapshotFiles::read_header(&mut r)?;
            if got.last_log_id != want.last_log_id {
                return Err(std::io::Error::other(format!(
                    "snapshot file is for {:?}, expected {:?}",
                    got.last_log_id, want.last_log_id
                )));
            }
            Store::verify_snapshot(&mut r).map_err(std::io::Error::other)?;
            this.files.promote(&path)?;
            this.load_current()?;
            this.files.clean_scratch();
            Ok(())
        })
        .await
        .map_err(storage_err)?
        .map_err(storage_err)?;
        tracing::info!(snapshot = %meta.snapshot_id, "snapshot installed");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let Some(meta) = self.files.current_meta().map_err(storage_err)? else {
            return Ok(None);
        };
        let mut f = File::open(self.files.current_path()).map_err(storage_err)?;
        f.seek(SeekFrom::Start(0)).map_err(storage_err)?;
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(tokio::fs::File::from_std(f)),
        }))
    }
}
