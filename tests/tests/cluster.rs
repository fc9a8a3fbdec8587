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
