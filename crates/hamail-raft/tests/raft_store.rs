//! openraft's own storage test suite against hamail's log store and state
//! machine, plus snapshot build → install with real data.

use hamail_raft::{LogStore, Request, StateMachine, TypeConfig, open_storage};
use hamail_store::Store;
use hamail_types::{Command, DomainKind, DomainName, MailAddress};
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, StorageError};

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<u64>> {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("db")).expect("open store");
        let (log, sm) = open_storage(store, dir.path().join("snapshots"))?;
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    Suite::test_all(Builder).expect("openraft storage suite");
}

fn entry(index: u64, commands: Vec<Command>) -> Entry<TypeConfig> {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Request {
            time_ms: 1_700_000_000_000 + index,
            proposer: 1,
            commands,
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_build_install_gives_identical_state() {
    let (_g1, _l1, mut sm1) = Builder.build().await.unwrap();
    let (_g2, _l2, mut sm2) = Builder.build().await.unwrap();
    let domain = DomainName::parse("example.jp").unwrap();
    let entries = (0..3000)
        .map(|i| {
            (
                MailAddress::parse(&format!("u{i}@example.jp")).unwrap(),
                String::new(),
            )
        })
        .collect();
    let replies = sm1
        .apply([
            entry(
                1,
                vec![Command::DomainAdd {
                    domain,
                    kind: DomainKind::Relay,
                }],
            ),
            entry(2, vec![Command::RecipientImport { entries }]),
        ])
        .await
        .unwrap();
    assert!(
        replies
            .iter()
            .all(|r| r.outcomes.iter().all(|o| o.is_applied()))
    );

    let snap = sm1
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    assert_eq!(snap.meta.last_log_id.unwrap().index, 2);
    let mut incoming = sm2.begin_receiving_snapshot().await.unwrap();
    let mut src = snap.snapshot;
    tokio::io::copy(&mut src, &mut *incoming).await.unwrap();
    sm2.install_snapshot(&snap.meta, incoming).await.unwrap();

    assert_eq!(
        sm1.store().state_digest().unwrap(),
        sm2.store().state_digest().unwrap()
    );
    let (applied, _) = sm2.applied_state().await.unwrap();
    assert_eq!(applied.unwrap().index, 2);
    assert_eq!(sm2.store().recipients(None).unwrap().len(), 3000);
    let cur = sm2.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(cur.meta, snap.meta);
}
