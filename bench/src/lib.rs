//! What the bench binaries share: a run's figures and the proposer load.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hamail_raft::RaftNode;
use hamail_types::{Command, MailAddress};

/// One measured run: operations, wall time, per-operation latency.
pub struct Run {
    pub ops: u64,
    pub secs: f64,
    pub lat_us: Vec<u64>,
}

impl Run {
    pub fn new(start: Instant, lat_us: Vec<u64>) -> Run {
        Run {
            ops: lat_us.len() as u64,
            secs: start.elapsed().as_secs_f64(),
            lat_us,
        }
    }

    pub fn rate(&self) -> f64 {
        self.ops as f64 / self.secs
    }

    /// Latency percentile in ms (`p` from 0 to 1).
    pub fn pct(&mut self, p: f64) -> f64 {
        if self.lat_us.is_empty() {
            return 0.0;
        }
        self.lat_us.sort_unstable();
        let i = ((self.lat_us.len() - 1) as f64 * p).round() as usize;
        self.lat_us[i] as f64 / 1000.0
    }

    /// Prints one result line.
    pub fn row(&mut self, name: &str) {
        println!(
            "{name:<44} {:>10.0} /s   p50 {:>7.2} ms   p99 {:>7.2} ms   ({} ops)",
            self.rate(),
            self.pct(0.50),
            self.pct(0.99),
            self.ops
        );
    }
}

/// `proposers` tasks, each proposing one small command (a new recipient in
/// bench.example) at a time and waiting until it is committed and applied.
pub async fn proposer_load(node: Arc<RaftNode>, proposers: usize, dur: Duration, tag: &str) -> Run {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for p in 0..proposers {
        let node = node.clone();
        let tag = tag.to_string();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut i = 0u64;
            while start.elapsed() < dur && lat.len() < 1_000_000 {
                let Ok(address) = MailAddress::parse(&format!("{tag}-p{p}-{i}@bench.example"))
                else {
                    break;
                };
                let t = Instant::now();
                match node
                    .propose(vec![Command::RecipientAdd {
                        address,
                        value: String::new(),
                    }])
                    .await
                {
                    Ok(o) if o.iter().all(|o| o.is_applied()) => {}
                    other => panic!("write failed: {other:?}"),
                }
                lat.push(t.elapsed().as_micros() as u64);
                i += 1;
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap_or_default());
    }
    Run::new(start, lat)
}
