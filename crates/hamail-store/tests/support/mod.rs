//! Helpers shared by the store's test files: a store in a temporary
//! directory, and applying commands in write batches as raft would.

#![allow(dead_code)]

use hamail_store::{Applier, ApplyContext, Store};
use hamail_types::{Command, DomainName, MailAddress, Outcome};

pub fn open() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    (dir, store)
}

/// Applies `cmds` in batches of `chunk` commands, each committed as one
/// write batch; each command gets its own log time and index.
pub fn apply_all(store: &Store, cmds: &[Command], chunk: usize) -> Vec<Outcome> {
    let mut out = Vec::new();
    for (i, group) in cmds.chunks(chunk.max(1)).enumerate() {
        let mut ap = Applier::new(store);
        for c in group {
            // Time travels with each command, as in a raft entry.
            let ctx = ApplyContext {
                time_ms: 1_000 + out.len() as u64,
                proposer: 1,
                log_index: out.len() as u64,
            };
            out.push(ap.apply(c, &ctx).unwrap());
        }
        ap.set_meta("last_applied", vec![i as u8]);
        ap.commit().unwrap();
    }
    out
}

pub fn d(s: &str) -> DomainName {
    DomainName::parse(s).unwrap()
}

pub fn a(s: &str) -> MailAddress {
    MailAddress::parse(s).unwrap()
}
