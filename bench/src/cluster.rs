//! bench/cluster: committed commands per second and commit latency on three
//! nodes (real cluster RPC over TLS on 127.0.0.11–13, formed with init, token
//! and join) with 1 and 50 proposers, beside a single node in the same run.
//! All nodes run in this one process, sharing its cores, as three processes
//! on one machine would.
//!
//! Usage: cluster-bench [SECONDS] [BASE-PORT]

use std::sync::Arc;
use std::time::{Duration, Instant};

use hamail_raft::{Cluster, ClusterSettings, NodeInfo, NodeOptions, RaftNode};
use hamail_store::Store;
use hamail_types::{Command, DomainKind, DomainName, MailAddress};
use tokio_util::sync::CancellationToken;

struct Run {
    ops: u64,
    secs: f64,
    lat_us: Vec<u64>,
}

impl Run {
    fn pct(&mut self, p: f64) -> f64 {
        if self.lat_us.is_empty() {
            return 0.0;
        }
        self.lat_us.sort_unstable();
        let i = ((self.lat_us.len() - 1) as f64 * p).round() as usize;
        self.lat_us[i] as f64 / 1000.0
    }
    fn rate(&self) -> f64 {
        self.ops as f64 / self.secs
    }
}

async fn load(node: Arc<RaftNode>, proposers: usize, dur: Duration, tag: &str) -> Run {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for p in 0..proposers {
        let node = node.clone();
        let tag = tag.to_string();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut i = 0u64;
            while start.elapsed() < dur && lat.len() < 1_000_000 {
                let address = MailAddress::parse(&format!("{tag}-{p}-{i}@bench.example")).unwrap();
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
    Run {
        ops: lat.len() as u64,
        secs: start.elapsed().as_secs_f64(),
        lat_us: lat,
    }
}

async fn member(
    base: &std::path::Path,
    i: u8,
    port: u16,
    cancel: &CancellationToken,
) -> anyhow::Result<Arc<Cluster>> {
    let dir = base.join(format!("n{i}"));
    let addr = format!("127.0.0.1{i}:{port}");
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    let store = Store::open(&dir.join("db"))?;
    let settings = ClusterSettings {
        cluster_name: "bench".into(),
        info: NodeInfo {
            name: format!("n{i}"),
            site: format!("site{i}"),
            rpc_addr: addr,
            dns_addr: String::new(),
            smtp_addr: String::new(),
        },
        node: NodeOptions {
            heartbeat_interval_ms: 100,
            election_timeout_min_ms: 500,
            election_timeout_max_ms: 1000,
            ..NodeOptions::default()
        },
    };
    Ok(Cluster::open(dir, settings, store, listener, false, cancel.child_token()).await?)
}

fn row(name: &str, r: &mut Run) {
    println!(
        "{name:<40} {:>9.0} /s   p50 {:>6.2} ms   p99 {:>6.2} ms   ({} ops)",
        r.rate(),
        r.pct(0.5),
        r.pct(0.99),
        r.ops
    );
}

async fn prepare(node: &Arc<RaftNode>) -> anyhow::Result<()> {
    node.propose(vec![Command::DomainAdd {
        domain: DomainName::parse("bench.example")?,
        kind: DomainKind::Relay,
    }])
    .await?;
    Ok(())
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let secs: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(5);
    let port: u16 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(17600);
    let dur = Duration::from_secs(secs);
    let tmp = tempfile::tempdir_in("/var/tmp")?;
    let cancel = CancellationToken::new();
    println!(
        "bench/cluster: {secs} s per run, data in {}",
        tmp.path().display()
    );

    // One node.
    let single = member(&tmp.path().join("single"), 1, port + 1, &cancel).await?;
    single.init().await?;
    let node = single
        .node()
        .await
        .ok_or_else(|| anyhow::anyhow!("no node"))?;
    prepare(&node).await?;
    let mut s1 = load(node.clone(), 1, dur, "s1").await;
    row("1 node, 1 proposer", &mut s1);
    let mut s50 = load(node.clone(), 50, dur, "s50").await;
    row("1 node, 50 proposers", &mut s50);
    single.shutdown().await;

    // Three nodes.
    let base = tmp.path().join("three");
    let mut nodes = Vec::new();
    for i in 1..=3u8 {
        nodes.push(member(&base, i, port, &cancel).await?);
    }
    nodes[0].init().await?;
    for n in &nodes[1..] {
        let token = nodes[0].token(Duration::from_secs(600)).await?;
        n.join(&format!("127.0.0.11:{port}"), &token).await?;
    }
    let leader = nodes[0]
        .node()
        .await
        .ok_or_else(|| anyhow::anyhow!("no node"))?;
    prepare(&leader).await?;
    let mut t1 = load(leader.clone(), 1, dur, "t1").await;
    row("3 nodes, 1 proposer (on the leader)", &mut t1);
    let e0 = leader
        .stats
        .entries
        .load(std::sync::atomic::Ordering::Relaxed);
    let mut t50 = load(leader.clone(), 50, dur, "t50").await;
    let e1 = leader
        .stats
        .entries
        .load(std::sync::atomic::Ordering::Relaxed);
    row("3 nodes, 50 proposers (on the leader)", &mut t50);
    println!(
        "3 nodes, 50 proposers: {:.1} commands per raft entry",
        t50.ops as f64 / (e1 - e0).max(1) as f64
    );
    let follower = nodes[1]
        .node()
        .await
        .ok_or_else(|| anyhow::anyhow!("no node"))?;
    let mut f50 = load(follower, 50, dur, "f50").await;
    row("3 nodes, 50 proposers (on a follower)", &mut f50);
    println!(
        "ratios 3 nodes / 1 node: 1 proposer {:.2}, 50 proposers {:.2} (goal >= 0.5), via a follower {:.2}",
        t1.rate() / s1.rate(),
        t50.rate() / s50.rate(),
        f50.rate() / s50.rate()
    );
    for n in &nodes {
        n.shutdown().await;
    }
    Ok(())
}
