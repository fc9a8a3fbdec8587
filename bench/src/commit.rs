//! bench/commit: committed commands per second on one node, with 1 and with
//! 50 concurrent proposers, beside this disk's own fsync limit measured in
//! the same run. Prints one table; `bench/commit.sh` runs it.
//!
//! Usage: commit-bench [DIR] [SECONDS]   (DIR on the disk to measure)

use std::fs::OpenOptions;
use std::io::Write;
use std::time::{Duration, Instant};

use hamail_bench::Run;
use hamail_config::ClusterSection;
use hamail_raft::{Cluster, ClusterSettings, NodeInfo};
use hamail_store::Store;
use hamail_types::{Command, DomainKind, DomainName};

/// The disk alone: small writes, each followed by fdatasync, one at a time.
fn disk_fsync_loop(dir: &std::path::Path, dur: Duration) -> anyhow::Result<Run> {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("fsync-probe"))?;
    let start = Instant::now();
    let mut lat = Vec::new();
    while start.elapsed() < dur && lat.len() < 1_000_000 {
        let t = Instant::now();
        f.write_all(&[7u8; 128])?;
        f.sync_data()?;
        lat.push(t.elapsed().as_micros() as u64);
    }
    Ok(Run::new(start, lat))
}

/// The disk with group commit: `threads` writers doing synced RocksDB writes
/// (RocksDB joins concurrent synced writes into one WAL fsync).
fn disk_group_commit(dir: &std::path::Path, threads: usize, dur: Duration) -> anyhow::Result<Run> {
    let store = Store::open(&dir.join("gc-probe"))?;
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                let mut lat = Vec::new();
                let mut i = 0u64;
                while start.elapsed() < dur && lat.len() < 1_000_000 {
                    let key = (t as u64) << 40 | i;
                    let tt = Instant::now();
                    if store.log_append([(key, &[7u8; 128][..])], true).is_err() {
                        break;
                    }
                    lat.push(tt.elapsed().as_micros() as u64);
                    i += 1;
                }
                lat
            })
        })
        .collect();
    let mut lat = Vec::new();
    for h in handles {
        lat.extend(h.join().unwrap_or_default());
    }
    Ok(Run::new(start, lat))
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let base = args.get(1).map(std::path::PathBuf::from);
    let secs: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(5);
    let dur = Duration::from_secs(secs);
    let tmp = match &base {
        Some(b) => tempfile::tempdir_in(b)?,
        None => tempfile::tempdir()?,
    };
    let dir = tmp.path();
    println!("bench/commit: {secs} s per run, data in {}", dir.display());

    let mut disk1 = disk_fsync_loop(dir, dur)?;
    disk1.row("disk: write+fdatasync loop (1 writer)");
    let mut disk50 = tokio::task::spawn_blocking({
        let d = dir.to_path_buf();
        move || disk_group_commit(&d, 50, dur)
    })
    .await??;
    disk50.row("disk: synced RocksDB writes, 50 writers");

    let node_dir = dir.join("node");
    let store = Store::open(&node_dir.join("db"))?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let settings = ClusterSettings {
        info: NodeInfo {
            name: "bench".into(),
            site: "local".into(),
            rpc_addr: listener.local_addr()?.to_string(),
            dns_addr: String::new(),
            smtp_addr: String::new(),
            dns_name: String::new(),
        },
        node: ClusterSection {
            name: "bench".into(),
            ..ClusterSection::default()
        },
    };
    let cancel = tokio_util::sync::CancellationToken::new();
    let cluster = Cluster::open(node_dir, settings, store, listener, true, cancel).await?;
    let node = cluster
        .node()
        .await
        .ok_or_else(|| anyhow::anyhow!("no node"))?;
    node.propose(vec![Command::DomainAdd {
        domain: DomainName::parse("bench.example")?,
        kind: DomainKind::Relay,
    }])
    .await?;

    let mut h1 = hamail_bench::proposer_load(node.clone(), 1, dur, "one").await;
    h1.row("hamail: committed commands, 1 proposer");
    let e0 = node
        .stats
        .entries
        .load(std::sync::atomic::Ordering::Relaxed);
    let mut h50 = hamail_bench::proposer_load(node.clone(), 50, dur, "fifty").await;
    let e1 = node
        .stats
        .entries
        .load(std::sync::atomic::Ordering::Relaxed);
    h50.row("hamail: committed commands, 50 proposers");
    println!(
        "hamail with 50 proposers: {:.1} commands per raft entry",
        h50.ops as f64 / (e1 - e0).max(1) as f64
    );
    println!(
        "ratios: 1 proposer / disk fsync loop = {:.2}; 50 proposers / disk fsync loop = {:.1}; 50 proposers / disk group commit = {:.2}",
        h1.rate() / disk1.rate(),
        h50.rate() / disk1.rate(),
        h50.rate() / disk50.rate()
    );
    cluster.shutdown().await;
    Ok(())
}
