//! `[cluster]`: the raft timings and limits every node of the cluster runs
//! with, and the checks that keep them consistent with each other.

use serde::{Deserialize, Serialize};

use crate::Invalid;

/// `[cluster]`: raft settings. Defaults hold at 150 ms round trips between
/// sites: a heartbeat every 250 ms, elections after 1.5–3 s of silence (six
/// missed heartbeats, ten round trips), so a slow link does not start
/// needless elections.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSection {
    /// Initialise this node as a one-node cluster on first start (what
    /// `hamail cluster init` does). True for the embedded default (no config
    /// file); a config file that does not set it means false, so nodes that
    /// will `hamail cluster join` never start a cluster of their own.
    pub bootstrap: bool,
    /// Cluster name; nodes of different clusters refuse each other.
    pub name: String,
    /// Leader heartbeat interval, ms.
    pub heartbeat_interval_ms: u64,
    /// Lower bound of the election timeout, ms.
    pub election_timeout_min_ms: u64,
    /// Upper bound of the election timeout, ms.
    pub election_timeout_max_ms: u64,
    /// Build a snapshot after this many log entries since the last one.
    pub snapshot_logs_since_last: u64,
    /// Log entries kept after a snapshot (so slow followers catch up from
    /// the log rather than a snapshot).
    pub max_logs_kept_after_snapshot: u64,
    /// A write not committed within this time fails with "no quorum" (the
    /// CLI exits 1; SMTP will answer 451).
    pub write_timeout_ms: u64,
    /// Raft entries the proposer keeps in flight at once. Fewer means
    /// bigger batches on one site; more hides long round trips between
    /// sites (bench/geo).
    pub proposals_in_flight: usize,
    /// Leave out the empty AppendEntries openraft sends to tell a follower
    /// of a new commit while that follower has entries waiting (they carry
    /// it): without this a write waits an extra round trip between sites.
    /// See hamail-raft's network.rs.
    pub elide_heartbeats: bool,
}

impl Default for ClusterSection {
    fn default() -> Self {
        ClusterSection {
            bootstrap: true,
            name: "hamail".into(),
            heartbeat_interval_ms: 250,
            election_timeout_min_ms: 1500,
            election_timeout_max_ms: 3000,
            snapshot_logs_since_last: 5000,
            max_logs_kept_after_snapshot: 1000,
            write_timeout_ms: 10_000,
            // Fewer means bigger batches: on one node, 1, 2, 4 and 8 in
            // flight gave 43k, 38k, 20k and 13k commits/s with 50 proposers
            // (docs/benchmarks.md). Two keeps most of the batching and still
            // lets one entry replicate while the next fills, which matters
            // across sites.
            proposals_in_flight: 2,
            elide_heartbeats: true,
        }
    }
}

impl ClusterSection {
    pub(crate) fn validate(&self) -> Result<(), Invalid> {
        let c = self;
        if c.heartbeat_interval_ms == 0 {
            return Err(Invalid::new(
                "cluster.heartbeat_interval_ms",
                "must be above 0".into(),
            ));
        }
        if c.election_timeout_min_ms <= c.heartbeat_interval_ms * 2 {
            return Err(Invalid::new(
                "cluster.election_timeout_min_ms",
                format!(
                    "{} must be more than twice cluster.heartbeat_interval_ms ({})",
                    c.election_timeout_min_ms, c.heartbeat_interval_ms
                ),
            ));
        }
        if c.election_timeout_max_ms <= c.election_timeout_min_ms {
            return Err(Invalid::new(
                "cluster.election_timeout_max_ms",
                format!(
                    "{} must be above cluster.election_timeout_min_ms ({})",
                    c.election_timeout_max_ms, c.election_timeout_min_ms
                ),
            ));
        }
        if c.snapshot_logs_since_last == 0 {
            return Err(Invalid::new(
                "cluster.snapshot_logs_since_last",
                "must be above 0".into(),
            ));
        }
        if c.write_timeout_ms < c.election_timeout_max_ms {
            return Err(Invalid::new(
                "cluster.write_timeout_ms",
                format!(
                    "{} must be at least cluster.election_timeout_max_ms ({}), or writes fail during a normal election",
                    c.write_timeout_ms, c.election_timeout_max_ms
                ),
            ));
        }
        if !(1..=64).contains(&c.proposals_in_flight) {
            return Err(Invalid::new(
                "cluster.proposals_in_flight",
                format!("{} must be from 1 to 64", c.proposals_in_flight),
            ));
        }
        if c.name.is_empty() {
            return Err(Invalid::new("cluster.name", "must not be empty".into()));
        }
        Ok(())
    }
}
