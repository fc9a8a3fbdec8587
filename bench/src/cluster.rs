//! bench/cluster: committed commands per second and commit latency on three
//! nodes (real cluster RPC over TLS on 127.0.0.11–13, formed with init, token
//! and join) with 1 and 50 proposers, beside a single node in the same run.
//! All nodes run in this one process, sharing its cores, as three processes
//! on one machine would.
//!
//! Usage: cluster-bench [SECONDS] [BASE-PORT]

use std::sync::Arc;
use std::time::Duration;

use hamail_config::ClusterSection;
use hamail_raft::{Cluster, ClusterSettings, NodeInfo, RaftNode};
use hamail_store::Store;
use hamail_types::{Command, DomainKind, DomainName};
use tokio_util::sync::CancellationToken;

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
        info: NodeInfo {
            name: format!("n{i}"),
            site: format!("site{i}"),
            rpc_addr: addr,
            dns_addr: String::new(),
            smtp_addr: String::new(),
            dns_name: String::new(),
        },
        node: ClusterSection {
            name: "bench".into(),
            heartbeat_interval_ms: 100,
            election_timeout_min_ms: 500,
            election_timeout_max_ms: 1000,
            ..ClusterSection::default()
        },
    };
    Ok(Cluster::open(dir, settings, store, listener, false, cancel.child_token()).await?)
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
    let mut s1 = hamail_bench::proposer_load(node.clone(), 1, dur, "s1").await;
    s1.row("1 node, 1 proposer");
    let mut s50 = hamail_bench::proposer_load(node.clone(), 50, dur, "s50").await;
    s50.row("1 node, 50 proposers");
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
    let mut t1 = hamail_bench::proposer_load(leader.clone(), 1, dur, "t1").await;
    t1.row("3 nodes, 1 proposer (on the leader)");
    let e0 = leader
        .stats
        .entries
        .load(std::sync::atomic::Ordering::Relaxed);
    let mut t50 = hamail_bench::proposer_load(leader.clone(), 50, dur, "t50").await;
    let e1 = leader
        .stats
        .entries
        .load(std::sync::atomic::Ordering::Relaxed);
    t50.row("3 nodes, 50 proposers (on the leader)");
    println!(
        "3 nodes, 50 proposers: {:.1} commands per raft entry",
        t50.ops as f64 / (e1 - e0).max(1) as f64
    );
    let follower = nodes[1]
        .node()
        .await
        .ok_or_else(|| anyhow::anyhow!("no node"))?;
    let mut f50 = hamail_bench::proposer_load(follower, 50, dur, "f50").await;
    f50.row("3 nodes, 50 proposers (on a follower)");
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
