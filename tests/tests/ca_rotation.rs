//! The cluster CA, replaced on a running three-node cluster with
//! `hamail cluster rotate-ca` while clients keep sending mail and asking
//! for DNS answers; and the member's side of key pinning: a member does not
//! talk to a server whose certificate the CA signed but whose key is not
//! the one pinned for the node it dialled.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use hamail_tests::smtp::SmtpClient;
use hamail_tests::{Node, form_cluster, stderr, wait_for};

const RCPT: &str = "user@example.jp";

/// The answer section's A record of `name` from `server`, if it answered.
fn a_record(server: &str, port: u16, name: &str) -> Option<String> {
    let out = Command::new("kdig")
        .arg(format!("@{server}"))
        .args(["-p", &port.to_string(), "+time=5", "+retry=1", "+short"])
        .args([name, "A"])
        .output()
        .expect("kdig is installed (scripts/test installs knot-dnsutils)");
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!text.is_empty()).then_some(text)
}

fn fingerprint_of_pem_file(path: &std::path::Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    text.split("-----END CERTIFICATE-----")
        .filter(|b| b.contains("-----BEGIN CERTIFICATE-----"))
        .map(|b| {
            let pem = format!("{}-----END CERTIFICATE-----\n", b.trim_start());
            hamail_raft::pki::pem_fingerprint(&pem).unwrap()
        })
        .collect()
}

fn pinned_key(node: &Node, id: u64) -> String {
    let pki = hamail_raft::pki::Pki::load(&node.dir.join("data"), id).unwrap();
    pki.node_key_sha256().unwrap()
}

#[test]
fn rotate_ca_keeps_mail_and_dns_up_and_retires_the_old_ca() {
    let dir = tempfile::tempdir().unwrap();
    let port = 17830;
    let dns_port = Node::dns_port(port);
    let mut nodes = form_cluster(dir.path(), port, 3, "");
    nodes[0].ok(&["domain", "add", "example.jp", "--kind", "relay"]);
    nodes[0].ok(&["recipient", "add", RCPT]);
    nodes[0].ok(&["zone", "add", "example.jp"]);
    nodes[0].ok(&["record", "add", "example.jp", "www 60 IN A 192.0.2.1"]);
    for (i, n) in nodes.iter().enumerate() {
        wait_for("the recipient on every node", || {
            n.ok(&["recipient", "list"]).contains(RCPT).then_some(())
        });
        let host = format!("127.0.0.1{}", i + 1);
        wait_for("the zone on every node", || {
            a_record(&host, dns_port, "www.example.jp").filter(|a| a == "192.0.2.1")
        });
    }
    let old_ca = fingerprint_of_pem_file(&nodes[0].dir.join("data/pki/ca.pem"));
    let keys_before: Vec<String> = (1..=3)
        .map(|i| pinned_key(&nodes[i - 1], i as u64))
        .collect();
    let old_token = nodes[0].ok(&["cluster", "token"]).trim().to_string();

    // Clients of every site, all through the rotation: each message must be
    // taken (250, which needs a majority of sites) and each query answered.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let answered = Arc::new(AtomicU64::new(0));
    let load = {
        let (stop, sent, answered) = (stop.clone(), sent.clone(), answered.clone());
        std::thread::spawn(move || {
            let mut failures = Vec::new();
            // Bounded: the rotation ends long before this many rounds.
            for round in 0..100_000u64 {
                if stop.load(Ordering::Relaxed) && round > 3 {
                    break;
                }
                let i = (round % 3) as u8 + 1;
                let addr = Node::smtp_addr(i, port);
                let r = SmtpClient::greeted(&addr, "rotation.example")
                    .ok_or_else(|| "no 220/250 greeting".to_string())
                    .and_then(|mut c| {
                        c.send_mail(
                            "sender@client.example",
                            &[RCPT],
                            &format!("Subject: rotation {round}\r\n\r\nbody\r\n"),
                        )
                        .map_err(|e| e.to_string())
                    });
                match r {
                    Ok(reply) if reply.is(250) => {
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(reply) => failures.push(format!("mail via n{i}: {}", reply.text.trim())),
                    Err(e) => failures.push(format!("mail via n{i}: {e}")),
                }
                match a_record(&format!("127.0.0.1{i}"), dns_port, "www.example.jp") {
                    Some(a) if a == "192.0.2.1" => {
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                    other => failures.push(format!("dns via n{i}: {other:?}")),
                }
            }
            failures
        })
    };
    wait_for("the load to run", || {
        (sent.load(Ordering::Relaxed) >= 3).then_some(())
    });

    let out = nodes[1].ok(&["cluster", "rotate-ca"]);
    eprintln!("rotate-ca:\n{out}");
    assert!(out.contains("trust:"), "{out}");
    assert!(out.contains("switch:"), "{out}");
    assert!(out.contains("done:"), "{out}");
    assert!(out.contains("trusts the new CA only"), "{out}");

    // A zone edit and mail after the rotation, through the new certificates.
    nodes[2].ok(&["record", "set", "example.jp", "www 60 IN A 192.0.2.2"]);
    for i in 1..=3u8 {
        wait_for("the edit on every node", || {
            a_record(&format!("127.0.0.1{i}"), dns_port, "www.example.jp")
                .filter(|a| a == "192.0.2.2")
        });
    }
    stop.store(true, Ordering::Relaxed);
    let failures = load.join().unwrap();
    let (s, a) = (
        sent.load(Ordering::Relaxed),
        answered.load(Ordering::Relaxed),
    );
    // The load's DNS check expects the first address; queries that raced
    // the later edit are the only answers allowed to differ.
    let failures: Vec<&String> = failures
        .iter()
        .filter(|f| !f.contains("192.0.2.2"))
        .collect();
    assert!(
        failures.is_empty(),
        "{s} mails and {a} answers; failures: {failures:?}"
    );
    assert!(s >= 6, "only {s} messages went through during the rotation");
    eprintln!("{s} messages taken and {a} DNS answers during the rotation");

    // Every node: one CA, the new one, which signed its certificate; its
    // key (the pin) unchanged.
    let mut new_ca = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        let pki = n.dir.join("data/pki");
        let trusted = fingerprint_of_pem_file(&pki.join("trusted.pem"));
        let ca = fingerprint_of_pem_file(&pki.join("ca.pem"));
        assert_eq!(trusted, ca, "node {} trusts exactly its signing CA", i + 1);
        assert_ne!(ca, old_ca, "node {} has a new CA", i + 1);
        new_ca.push(ca);
        assert_eq!(pinned_key(n, i as u64 + 1), keys_before[i], "same key");
        let loaded = hamail_raft::pki::Pki::load(&n.dir.join("data"), i as u64 + 1).unwrap();
        assert_eq!(
            loaded.presenting_fingerprint().as_deref(),
            Some(new_ca[i][0].as_str())
        );
    }
    assert!(new_ca.iter().all(|c| *c == new_ca[0]), "{new_ca:?}");
    let status = nodes[0].json(&["cluster", "status", "--json"]);
    let members = status["members"].as_array().unwrap();
    assert_eq!(members.len(), 3, "{status}");
    assert!(members.iter().all(|m| m["role"] != "learner"), "{status}");

    // A node restarted after the rotation comes back with its new files.
    nodes[2].stop();
    nodes[2].start();
    nodes[0].ok(&["domain", "add", "after-restart.example"]);
    wait_for("the restarted node to catch up", || {
        nodes[2]
            .ok(&["domain", "list"])
            .contains("after-restart.example")
            .then_some(())
    });

    // A token minted before the rotation pins the retired CA: refused; a
    // new one admits a node.
    let mut n4 = Node::cluster_member(dir.path(), 4, port, "");
    n4.start_waiting();
    let out = n4.cli(&[
        "cluster",
        "join",
        &Node::rpc_addr(1, port),
        "--token",
        &old_token,
    ]);
    assert!(!out.status.success(), "old token accepted");
    assert!(
        stderr(&out).contains("not the cluster this token is for"),
        "{}",
        stderr(&out)
    );
    let token = nodes[0].ok(&["cluster", "token"]).trim().to_string();
    assert!(token.ends_with(&new_ca[0][0]), "{token}");
    let out = n4.ok(&[
        "cluster",
        "join",
        &Node::rpc_addr(1, port),
        "--token",
        &token,
    ]);
    assert!(out.contains("now a voter"), "{out}");

    // Running it again starts a second rotation, which also completes.
    let out = nodes[0].ok(&["cluster", "rotate-ca"]);
    assert!(out.contains("done:"), "{out}");
}

/// A TLS server on `addr` presenting `config`'s certificate that records
/// how many handshakes completed and how many bytes arrived after them.
fn impostor(
    addr: &str,
    config: Arc<tokio_rustls::rustls::ServerConfig>,
) -> (Arc<AtomicU64>, Arc<AtomicU64>, tokio::runtime::Runtime) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let handshakes = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(addr))
        .expect("the impostor binds the removed node's address");
    let (h, b) = (handshakes.clone(), bytes.clone());
    rt.spawn(async move {
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        // Bounded: the test stops after a few handshakes.
        for _ in 0..1000 {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, h, b) = (acceptor.clone(), h.clone(), b.clone());
            tokio::spawn(async move {
                use tokio::io::AsyncReadExt;
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                h.fetch_add(1, Ordering::Relaxed);
                let mut buf = [0u8; 4096];
                while let Ok(Ok(n)) =
                    tokio::time::timeout(std::time::Duration::from_secs(5), tls.read(&mut buf))
                        .await
                {
                    if n == 0 {
                        break;
                    }
                    b.fetch_add(n as u64, Ordering::Relaxed);
                }
            });
        }
    });
    (handshakes, bytes, rt)
}

#[test]
fn a_member_does_not_talk_to_a_server_without_the_pinned_key() {
    let dir = tempfile::tempdir().unwrap();
    let port = 17850;
    let mut nodes = form_cluster(dir.path(), port, 3, "");

    // Node 2 is down; an impostor holding the CA key (a stolen data
    // directory) serves node 2's address with a certificate for node 2 on
    // its own key. Every CA check passes; only the pin tells them apart.
    let stolen = hamail_raft::pki::Pki::load(&nodes[2].dir.join("data"), 3).unwrap();
    nodes[1].kill9();
    let forged_dir = tempfile::tempdir().unwrap();
    let forged = hamail_tests::forge_member_pki(&stolen, 2, forged_dir.path());
    let (handshakes, bytes, _rt) =
        impostor(&Node::rpc_addr(2, port), forged.server_config().unwrap());

    // The leader keeps dialling node 2 (replication, heartbeats); every
    // write still commits on nodes 1 and 3.
    for i in 0..3 {
        nodes[0].ok(&["domain", "add", &format!("pinned{i}.example")]);
    }
    wait_for("the members to dial the impostor", || {
        (handshakes.load(Ordering::Relaxed) >= 3).then_some(())
    });
    assert_eq!(
        bytes.load(Ordering::Relaxed),
        0,
        "a member sent requests to a server whose key is not pinned for node 2"
    );
    let log = nodes[0].log_text() + &nodes[2].log_text();
    assert!(log.contains("pinned for node 2"), "the refusal is logged");
}

#[test]
fn a_rotation_waits_for_a_member_that_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let port = 17840;
    let mut nodes = form_cluster(dir.path(), port, 3, "");
    nodes[0].ok(&["domain", "add", "example.jp", "--kind", "relay"]);
    nodes[0].ok(&["recipient", "add", RCPT]);
    let old_ca = fingerprint_of_pem_file(&nodes[0].dir.join("data/pki/ca.pem"));

    // Node 3 is down: the rotation may make both CAs trusted, but switching
    // would leave node 3 unable to verify anyone when it comes back.
    nodes[2].kill9();
    let out = nodes[0].cli(&["cluster", "rotate-ca", "--wait", "3s"]);
    assert!(!out.status.success(), "rotated with a member down");
    let err = stderr(&out);
    assert!(err.contains("node 3 (n3) did not answer"), "{err}");
    assert!(err.contains("stays in phase trust"), "{err}");
    for n in &nodes[..2] {
        let pki = n.dir.join("data/pki");
        assert_eq!(
            fingerprint_of_pem_file(&pki.join("ca.pem")),
            old_ca,
            "old CA signs"
        );
        assert_eq!(fingerprint_of_pem_file(&pki.join("trusted.pem")).len(), 2);
    }
    // Mail is taken meanwhile, by the two live sites.
    let mut c = SmtpClient::greeted(&Node::smtp_addr(1, port), "rotation.example").unwrap();
    let r = c
        .send_mail("a@client.example", &[RCPT], "Subject: x\r\n\r\nbody\r\n")
        .unwrap();
    assert!(r.is(250), "{r:?}");

    // Node 3 comes back, takes the trust phase from the log; running the
    // command again finishes the rotation, and node 3 keeps up after it.
    nodes[2].start();
    let out = nodes[0].ok(&["cluster", "rotate-ca"]);
    assert!(
        out.contains("continuing the CA rotation in phase trust"),
        "{out}"
    );
    assert!(out.contains("trusts the new CA only"), "{out}");
    nodes[0].ok(&["domain", "add", "after-rotation.example"]);
    wait_for("node 3 to catch up after the rotation", || {
        nodes[2]
            .ok(&["domain", "list"])
            .contains("after-rotation.example")
            .then_some(())
    });
    let n3 = fingerprint_of_pem_file(&nodes[2].dir.join("data/pki/trusted.pem"));
    assert_eq!(n3.len(), 1);
    assert_ne!(n3, old_ca);
}
