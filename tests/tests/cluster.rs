//! Three real `hamail serve` processes on 127.0.0.11–13 formed into a
//! cluster with the runbook's commands (`cluster init`, `cluster token`,
//! `cluster join`), then failures: kill -9 of the leader, a node kept down
//! past a log purge, hostile tokens and certificates, a dead node replaced,
//! and a node left without quorum.

use hamail_tests::{Node, form_cluster, stderr, wait_for};

fn domains(node: &Node) -> Vec<String> {
    node.json(&["domain", "list", "--json"])
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["domain"].as_str().unwrap().to_string())
        .collect()
}

fn leader_of(node: &Node) -> Option<u64> {
    node.status()?["raft"]["leader"].as_u64()
}

fn digest(node: &Node) -> Option<String> {
    Some(node.status()?["state_digest"].as_str()?.to_string())
}

fn wait_converged(nodes: &[&Node]) {
    wait_for("all nodes to hold the same state", || {
        let d: Vec<Option<String>> = nodes.iter().map(|n| digest(n)).collect();
        (d[0].is_some() && d.iter().all(|x| *x == d[0])).then_some(())
    });
}

#[test]
fn three_sites_replicate_and_survive_the_loss_of_the_leader() {
    let dir = tempfile::tempdir().unwrap();
    let port = 17410;
    let mut nodes = form_cluster(dir.path(), port, 3, "");

    // The leader's view, from a follower: everyone caught up and reachable.
    let view = wait_for("every member caught up and reachable", || {
        let v = nodes[2].json(&["cluster", "status", "--json"]);
        let ok = v["members"]
            .as_array()?
            .iter()
            .all(|m| m["lag"] == 0 && m["reachable"] == true);
        ok.then_some(v)
    });
    let members = view["members"].as_array().unwrap();
    assert_eq!(members.len(), 3, "{view}");
    let roles: Vec<&str> = members
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(
        roles.iter().filter(|r| **r == "leader").count(),
        1,
        "{view}"
    );
    assert_eq!(roles.iter().filter(|r| **r == "voter").count(), 2, "{view}");
    for m in members {
        for key in [
            "id",
            "name",
            "site",
            "rpc_addr",
            "role",
            "reachable",
            "last_contact_ms",
            "match_index",
            "lag",
        ] {
            assert!(m.get(key).is_some(), "member without {key}: {view}");
        }
    }
    for key in [
        "term",
        "leader",
        "commit_index",
        "applied_index",
        "last_log_index",
    ] {
        assert!(view.get(key).is_some(), "status without {key}: {view}");
    }
    let text = nodes[1].ok(&["cluster", "status"]);
    assert!(text.contains("site3") && text.contains("leader"), "{text}");

    // A write on a follower is committed through the leader and seen on all.
    let leader = leader_of(&nodes[0]).unwrap();
    let follower = (1..=3u64).find(|i| *i != leader).unwrap() as usize - 1;
    nodes[follower].ok(&["domain", "add", "example.jp", "--kind", "relay"]);
    nodes[follower].ok(&["recipient", "add", "user@example.jp"]);
    for n in &nodes {
        wait_for("the write on every node", || {
            domains(n).contains(&"example.jp".to_string()).then_some(())
        });
    }

    // kill -9 the leader: the other two elect a new one and keep writing.
    let li = leader as usize - 1;
    nodes[li].kill9();
    let others: Vec<usize> = (0..3).filter(|i| *i != li).collect();
    let new_leader = wait_for("a new leader", || {
        leader_of(&nodes[others[0]]).filter(|l| *l != leader)
    });
    assert_ne!(new_leader, leader);
    nodes[others[1]].ok(&["domain", "add", "after-failover.jp"]);
    wait_for("the write after failover on the other survivor", || {
        domains(&nodes[others[0]])
            .contains(&"after-failover.jp".to_string())
            .then_some(())
    });
    assert!(
        domains(&nodes[others[0]]).contains(&"example.jp".to_string()),
        "no committed write lost"
    );

    // The killed node comes back and catches up.
    nodes[li].start();
    wait_for("the restarted node to catch up", || {
        domains(&nodes[li])
            .contains(&"after-failover.jp".to_string())
            .then_some(())
    });
    wait_converged(&[&nodes[0], &nodes[1], &nodes[2]]);
    for n in nodes.iter_mut() {
        assert!(n.stop().success());
    }
}

#[test]
fn a_node_down_past_a_log_purge_catches_up_by_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let port = 17420;
    let extra = "snapshot_logs_since_last = 20\nmax_logs_kept_after_snapshot = 5\n";
    let mut nodes = form_cluster(dir.path(), port, 3, extra);
    nodes[0].ok(&["domain", "add", "example.jp"]);
    let leader = leader_of(&nodes[0]).unwrap() as usize - 1;
    let down = (leader + 1) % 3;
    let up = 3 - leader - down;
    let down_last = nodes[down].status().unwrap()["raft"]["last_log_index"]
        .as_u64()
        .unwrap();
    nodes[down].kill9();
    for i in 0..60 {
        nodes[up].ok(&["recipient", "add", &format!("u{i}@example.jp")]);
    }
    wait_for("a log purge on the leader", || {
        let s = nodes[leader].status()?;
        (s["raft"]["purged_index"].as_u64()? > down_last).then_some(())
    });
    nodes[down].start();
    wait_for("the node to catch up", || {
        let n = nodes[down].json(&["recipient", "list", "--json"]);
        (n.as_array()?.len() == 60).then_some(())
    });
    wait_converged(&[&nodes[0], &nodes[1], &nodes[2]]);
    let s = nodes[down].status().unwrap();
    assert!(
        s["raft"]["snapshot_index"].as_u64().is_some(),
        "caught up by a snapshot: {s}"
    );
}

#[test]
fn hostile_tokens_and_joins_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let port = 17430;
    let mut nodes = form_cluster(dir.path(), port, 1, "");
    let seed = Node::rpc_addr(1, port);
    let mut n2 = Node::cluster_member(dir.path(), 2, port, "");
    n2.start_waiting();
    // The last voter cannot be removed.
    let out = nodes[0].cli(&["cluster", "remove", "n1"]);
    assert!(stderr(&out).contains("last voter"), "{}", stderr(&out));
    // A node outside any cluster says so for cluster verbs and writes.
    let out = n2.cli(&["domain", "add", "example.jp"]);
    assert!(
        stderr(&out).contains("not in a cluster"),
        "{}",
        stderr(&out)
    );

    let token = nodes[0].ok(&["cluster", "token"]).trim().to_string();
    let fp = token.rsplit('.').next().unwrap().to_string();
    let cases = [
        (
            format!("hamail1.{}.{fp}", "ab".repeat(24)),
            "not valid for this cluster",
        ),
        (
            format!("hamail1.{}.{}", "ab".repeat(24), "00".repeat(32)),
            "not the cluster this token is for",
        ),
        ("not-a-token".to_string(), "hamail1."),
    ];
    for (bad, needle) in &cases {
        let out = n2.cli(&["cluster", "join", &seed, "--token", bad]);
        assert!(!out.status.success());
        assert!(stderr(&out).contains(needle), "{bad}: {}", stderr(&out));
    }
    // Nothing listens there.
    let out = n2.cli(&["cluster", "join", "127.0.0.1:9", "--token", &token]);
    assert!(stderr(&out).contains("cannot reach"), "{}", stderr(&out));
    // An expired token.
    let short = nodes[0]
        .ok(&["cluster", "token", "--ttl", "1s"])
        .trim()
        .to_string();
    let issued = std::time::Instant::now();
    wait_for("the short token's second to pass", || {
        (issued.elapsed() > std::time::Duration::from_millis(1500)).then_some(())
    });
    let out = n2.cli(&["cluster", "join", &seed, "--token", &short]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("expired"), "{}", stderr(&out));
    // None of that left state behind: n2 is still outside, the cluster has one node.
    assert!(n2.status().unwrap()["raft"].is_null());
    assert_eq!(
        nodes[0].json(&["cluster", "status", "--json"])["members"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // The real token works once; its reuse is refused.
    n2.ok(&["cluster", "join", &seed, "--token", &token]);
    let mut n3 = Node::cluster_member(dir.path(), 3, port, "");
    n3.start_waiting();
    let out = n3.cli(&["cluster", "join", &seed, "--token", &token]);
    assert!(stderr(&out).contains("already used"), "{}", stderr(&out));
    // A node that holds a cluster refuses to join again.
    let t2 = nodes[0].ok(&["cluster", "token"]).trim().to_string();
    let out = n2.cli(&["cluster", "join", &seed, "--token", &t2]);
    assert!(
        stderr(&out).contains("already holds a cluster"),
        "{}",
        stderr(&out)
    );
    // Removing an unknown node, or the last voter, is refused.
    let out = nodes[0].cli(&["cluster", "remove", "nosuchnode"]);
    assert!(stderr(&out).contains("no node"), "{}", stderr(&out));
    nodes.push(n2);
    nodes.push(n3);
}

#[test]
fn peers_without_a_valid_certificate_are_refused() {
    use hamail_raft::rpc::{RpcClient, RpcError, RpcRequest};
    let dir = tempfile::tempdir().unwrap();
    let port = 17440;
    let mut nodes = form_cluster(dir.path(), port, 3, "");
    let addr = Node::rpc_addr(1, port);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let timeout = std::time::Duration::from_secs(10);

    // No client certificate (trusting the server by the CA pin).
    let token = nodes[0].ok(&["cluster", "token"]).trim().to_string();
    let fp = token.rsplit('.').next().unwrap();
    let cfg = hamail_raft::pki::join_client_config(fp).unwrap();
    let mut c = RpcClient::new(addr.clone(), hamail_raft::pki::server_name(1), cfg);
    let r = rt.block_on(c.call(&RpcRequest::Propose(vec![]), timeout));
    assert!(matches!(r, Err(RpcError::Refused { .. })), "{r:?}");

    // A certificate from another CA: refused at the handshake.
    let other = tempfile::tempdir().unwrap();
    let rogue = hamail_raft::pki::Pki::create(other.path(), "rogue", 2).unwrap();
    let mut c = RpcClient::new(
        addr.clone(),
        hamail_raft::pki::server_name(1),
        rogue.client_config().unwrap(),
    );
    let r = rt.block_on(c.call(&RpcRequest::Status, timeout));
    assert!(r.is_err(), "rogue CA accepted: {r:?}");

    // A removed node's certificate: refused from then on.
    let n3_data = nodes[2].dir.join("data");
    nodes[2].kill9();
    nodes[0].ok(&["cluster", "remove", "n3"]);
    let removed = hamail_raft::pki::Pki::load(&n3_data, 3).unwrap();
    let removed_cfg = removed.client_config().unwrap();
    wait_for("the removed node's certificate to be refused", || {
        let mut c = RpcClient::new(
            addr.clone(),
            hamail_raft::pki::server_name(1),
            removed_cfg.clone(),
        );
        match rt.block_on(c.call(&RpcRequest::Status, timeout)) {
            Err(RpcError::Refused { reason, .. }) if reason.contains("not a member") => Some(()),
            _ => None,
        }
    });
    // A fresh node joins in the dead one's place.
    let token = nodes[0].ok(&["cluster", "token"]).trim().to_string();
    let mut n4 = Node::cluster_member(dir.path(), 4, port, "");
    n4.start_waiting();
    n4.ok(&[
        "cluster",
        "join",
        &Node::rpc_addr(1, port),
        "--token",
        &token,
    ]);
    let view = nodes[0].json(&["cluster", "status", "--json"]);
    let ids: Vec<u64> = view["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [1, 2, 4], "ids are never reused: {view}");
    nodes.push(n4);
}

#[test]
fn a_node_without_quorum_refuses_writes_and_still_reads() {
    let dir = tempfile::tempdir().unwrap();
    let port = 17450;
    let nodes = form_cluster(dir.path(), port, 3, "");
    nodes[0].ok(&["domain", "add", "example.jp"]);
    for n in &nodes {
        wait_for("the domain everywhere", || {
            domains(n).contains(&"example.jp".to_string()).then_some(())
        });
    }
    nodes[1].signal("STOP");
    nodes[2].signal("STOP");
    let out = nodes[0].cli(&["domain", "add", "lonely.jp"]);
    nodes[1].signal("CONT");
    nodes[2].signal("CONT");
    assert!(!out.status.success(), "a write without quorum succeeded");
    let err = stderr(&out);
    assert!(err.contains("quorum"), "{err}");
    assert!(
        domains(&nodes[0]).contains(&"example.jp".to_string()),
        "reads keep working"
    );
    // Healed: writes work again.
    wait_for("writes after healing", || {
        nodes[0]
            .cli(&["domain", "add", "healed.jp"])
            .status
            .success()
            .then_some(())
    });
}

/// Resident memory of a process, in KiB (`VmRSS` of /proc/<pid>/status).
fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Bytes that arrived on connections to local `port` and that the process
/// has not read yet (the receive queues in /proc/net/tcp).
fn unread_bytes_at(port: u16) -> u64 {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let local_port = u16::from_str_radix(f.get(1)?.rsplit(':').next()?, 16).ok()?;
            let listening = *f.get(3)? == "0A";
            let rx = u64::from_str_radix(f.get(4)?.rsplit(':').next()?, 16).ok()?;
            (local_port == port && !listening).then_some(rx)
        })
        .sum()
}

fn last_log_index(node: &Node) -> u64 {
    node.json(&["cluster", "status", "--json"])["last_log_index"]
        .as_u64()
        .unwrap()
}

/// A TLS connection without a client certificate (as a joiner has), from
/// `source`, that announces a 500 MiB frame and then trickles 1 MiB of it.
/// Returns the stream so the caller holds it open (None: refused early).
async fn announce_huge_frame(
    addr: std::net::SocketAddr,
    source: std::net::IpAddr,
    fp: String,
) -> Option<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    use tokio::io::AsyncWriteExt;
    let sock = tokio::net::TcpSocket::new_v4().ok()?;
    sock.bind(std::net::SocketAddr::new(source, 0)).ok()?;
    let tcp = sock.connect(addr).await.ok()?;
    let cfg = hamail_raft::pki::join_client_config(&fp).ok()?;
    let mut tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(hamail_raft::pki::server_name(0), tcp)
        .await
        .ok()?;
    tls.write_all(&(500u32 << 20).to_be_bytes()).await.ok()?;
    let chunk = vec![0x5au8; 16 << 10];
    for _ in 0..64 {
        tls.write_all(&chunk).await.ok()?;
        tls.flush().await.ok()?;
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    Some(tls)
}

#[test]
fn announced_huge_frames_without_a_certificate_cost_little() {
    let dir = tempfile::tempdir().unwrap();
    let port = 17800;
    let nodes = form_cluster(dir.path(), port, 3, "");
    let token = nodes[0].ok(&["cluster", "token"]).trim().to_string();
    let fp = token.rsplit('.').next().unwrap().to_string();
    let addr: std::net::SocketAddr = Node::rpc_addr(1, port).parse().unwrap();
    let pid = nodes[0].pid();
    let before = rss_kib(pid);

    // 200 connections from 25 addresses, all held open while we measure.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (held, after) = rt.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..200u32 {
            let src = std::net::IpAddr::from([127, 0, 2, (1 + i % 25) as u8]);
            tasks.spawn(announce_huge_frame(addr, src, fp.clone()));
        }
        let mut held = Vec::new();
        while let Some(r) = tasks.join_next().await {
            if let Some(s) = r.unwrap() {
                held.push(s);
            }
        }
        // Measure once the node has taken in everything that was sent (or
        // closed the connection on it).
        wait_for("node 1 to read what the hostile connections sent", || {
            (unread_bytes_at(port) == 0).then_some(())
        });
        let after = rss_kib(pid);
        (held, after)
    });
    let grown_mib = after.saturating_sub(before) / 1024;
    eprintln!(
        "RSS of node 1: {before} KiB before, {after} KiB with 200 hostile connections \
         (+{grown_mib} MiB); {} of them got their whole 1 MiB through",
        held.len()
    );
    assert!(
        grown_mib < 64,
        "200 unauthenticated connections grew the node by {grown_mib} MiB"
    );
    // The cluster keeps serving, writes and cluster RPC included.
    nodes[2].ok(&["domain", "add", "flooded.jp"]);
    for n in &nodes {
        wait_for("the write everywhere", || {
            domains(n).contains(&"flooded.jp".to_string()).then_some(())
        });
    }
    drop(held);
}

#[test]
fn forged_joins_never_reach_the_raft_log() {
    use hamail_raft::rpc::{RpcClient, RpcError, RpcRequest, RpcResponse};
    let dir = tempfile::tempdir().unwrap();
    let port = 17810;
    let nodes = form_cluster(dir.path(), port, 1, "");
    let token = nodes[0].ok(&["cluster", "token"]).trim().to_string();
    let fp = token.rsplit('.').next().unwrap().to_string();
    let addr = Node::rpc_addr(1, port);
    let (csr_pem, _) = hamail_raft::pki::make_csr().unwrap();
    let before = last_log_index(&nodes[0]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let timeout = std::time::Duration::from_secs(30);
    let join = |i: u32| RpcRequest::Join {
        token_secret: format!("{:048x}", 0xdead_0000u64 + u64::from(i)),
        csr_pem: csr_pem.clone(),
        info: hamail_raft::NodeInfo {
            name: format!("forger{i}"),
            site: "x".into(),
            rpc_addr: "127.0.0.1:9".into(),
            ..Default::default()
        },
    };
    // 1,000 forged joins, each from its own address (so that the rate limit
    // per address does not hide what a forged token costs), ten at a time.
    let outcomes: Vec<String> = rt.block_on(async {
        let mut out = Vec::new();
        for batch in 0..100u32 {
            let mut tasks = tokio::task::JoinSet::new();
            for j in 0..10u32 {
                let i = batch * 10 + j;
                let src = std::net::IpAddr::from([127, 3, (i / 250) as u8, (1 + i % 250) as u8]);
                let cfg = hamail_raft::pki::join_client_config(&fp).unwrap();
                let mut c = RpcClient::new(addr.clone(), hamail_raft::pki::server_name(0), cfg)
                    .with_source(src);
                let req = join(i);
                tasks.spawn(async move {
                    match c.call(&req, timeout).await {
                        Ok(RpcResponse::Joined(Err(e))) => e,
                        Err(RpcError::Refused { reason, .. }) => reason,
                        other => format!("unexpected: {other:?}"),
                    }
                });
            }
            while let Some(r) = tasks.join_next().await {
                out.push(r.unwrap());
            }
        }
        out
    });
    let not_valid = outcomes
        .iter()
        .filter(|o| o.contains("not valid for this cluster"))
        .count();
    assert_eq!(not_valid, 1000, "{:?}", &outcomes[..5]);
    let after = last_log_index(&nodes[0]);
    eprintln!("raft log: {before} before, {after} after 1,000 forged joins");
    assert!(
        after - before < 10,
        "forged joins grew the log by {}",
        after - before
    );

    // From one address, a burst beyond a few is refused outright.
    let limited = rt.block_on(async {
        let mut n = 0;
        for i in 0..30u32 {
            let cfg = hamail_raft::pki::join_client_config(&fp).unwrap();
            let mut c = RpcClient::new(addr.clone(), hamail_raft::pki::server_name(0), cfg)
                .with_source(std::net::IpAddr::from([127, 4, 0, 1]));
            if let Err(RpcError::Refused { reason, .. }) = c.call(&join(i), timeout).await
                && reason.contains("too many requests")
            {
                n += 1;
            }
        }
        n
    });
    assert!(
        limited > 0,
        "30 joins from one address at once were all served"
    );
    // The real token still works.
    let mut n2 = Node::cluster_member(dir.path(), 2, port, "");
    n2.start_waiting();
    n2.ok(&["cluster", "join", &addr, "--token", &token]);
    let _keep = (nodes, n2);
}

#[test]
fn a_certificate_minted_for_another_node_is_refused() {
    use hamail_raft::rpc::{RpcClient, RpcError, RpcRequest, RpcResponse};
    let dir = tempfile::tempdir().unwrap();
    let port = 17820;
    let mut nodes = form_cluster(dir.path(), port, 3, "");
    let addr = Node::rpc_addr(1, port);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let timeout = std::time::Duration::from_secs(10);

    // Node 3 is removed; its data directory (CA key included) is stolen.
    let n3_data = nodes[2].dir.join("data");
    nodes[2].kill9();
    nodes[0].ok(&["cluster", "remove", "n3"]);
    let stolen = hamail_raft::pki::Pki::load(&n3_data, 3).unwrap();
    // With the real CA key it mints a certificate for node 2, on its own key.
    let forged_dir = tempfile::tempdir().unwrap();
    let forged = hamail_tests::forge_member_pki(&stolen, 2, forged_dir.path());
    let mut c = RpcClient::new(
        addr.clone(),
        hamail_raft::pki::server_name(1),
        forged.client_config().unwrap(),
    );
    let r = rt.block_on(c.call(&RpcRequest::Status, timeout));
    match &r {
        Err(RpcError::Refused { reason, .. }) => {
            assert!(reason.contains("pinned"), "{reason}")
        }
        other => panic!("a certificate minted for node 2 was accepted: {other:?}"),
    }
    // The real node 2 is still served, with its own certificate.
    let real = hamail_raft::pki::Pki::load(&nodes[1].dir.join("data"), 2).unwrap();
    let mut c = RpcClient::new(
        addr.clone(),
        hamail_raft::pki::server_name(1),
        real.client_config().unwrap(),
    );
    let r = rt.block_on(c.call(&RpcRequest::Status, timeout));
    assert!(matches!(r, Ok(RpcResponse::Status(Ok(_)))), "{r:?}");
    nodes[0].ok(&["domain", "add", "still-serving.jp"]);
}
