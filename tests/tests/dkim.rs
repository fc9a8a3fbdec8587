//! DKIM signing with keys published atomically, checked by an independent
//! verifier: `hamail dkim add` on a node whose zone holds the domain makes
//! `dig` see both TXT records, mail from mynetworks is delivered with an
//! RSA and an Ed25519 signature that dkimpy (Debian's python3-dkim, its key
//! lookups answered by the hamail node) verifies, mail relayed for an
//! outside client is not signed (mail from an authenticated submission
//! user is), bad input is refused naming its cause
//! with the key list unchanged, and `dkim del` takes the record away and
//! stops signing with the key. On three nodes, a key added on node 1 is
//! served and signed with by node 3.

use std::path::{Path, PathBuf};
use std::process::Command;

use hamail_tests::{Node, form_cluster, stderr, stdout, wait_for};

/// Cluster RPC ports of this file's clusters (DNS +1000, SMTP +2000,
/// submission +3000 and +4000).
const PORT_ONE: u16 = 18600;
const PORT_THREE: u16 = 18610;

fn support(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("support")
        .join(name)
}

fn ensure_tools() {
    let have = |cmd: &str| {
        Command::new("sh")
            .args(["-c", cmd])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    for (check, packages) in [
        ("command -v swaks", &["swaks"][..]),
        ("command -v dig", &["dnsutils"][..]),
        (
            "/usr/bin/python3 -c 'import dkim, nacl, dns.query'",
            &["python3-dkim", "python3-dnspython", "python3-nacl"][..],
        ),
    ] {
        if have(check) {
            continue;
        }
        let ok = Command::new("apt-get")
            .args(["install", "-y", "-q"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "cannot install {packages:?}");
    }
}

/// swaks from `src` to node `smtp`: success and the conversation.
fn send(smtp: &str, src: &str, from: &str, subject: &str) -> String {
    let out = Command::new("swaks")
        .args([
            "--timeout",
            "60",
            "--server",
            smtp,
            "--local-interface",
            src,
        ])
        .args(["--from", from, "--to", "user@example.com"])
        .args(["--header", &format!("Subject: {subject}")])
        .args(["--body", "A message to sign.\n\n-- \nsomeone\n"])
        .output()
        .expect("swaks runs");
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert!(out.status.success(), "{text}");
    text
}

/// The delivered message with this subject (waits for it).
fn delivered(mail: &Path, subject: &str) -> String {
    let dir = mail.join("example.com/user/new");
    wait_for("the message in the Maildir", || {
        std::fs::read_dir(&dir)
            .ok()?
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
            .find(|m| m.contains(&format!("\r\nSubject: {subject}\r\n")))
    })
}

/// dkimpy's verdicts on a message, its keys looked up at `dns`.
fn dkimpy(dir: &Path, dns_ip: &str, dns_port: u16, message: &str) -> (bool, String) {
    let file = dir.join(format!("verify-{}.eml", message.len()));
    std::fs::write(&file, message).unwrap();
    let out = Command::new("/usr/bin/python3")
        .arg(support("dkim_verify.py"))
        .args(["--server", dns_ip, "--port", &dns_port.to_string()])
        .arg(&file)
        .output()
        .expect("python3 runs");
    (
        out.status.success(),
        format!("{}{}", stdout(&out), stderr(&out)),
    )
}

/// `dig +short NAME TXT` at a node's DNS.
fn dig_txt(ip: &str, port: u16, name: &str) -> String {
    let out = Command::new("dig")
        .args([&format!("@{ip}"), "-p", &port.to_string(), "+tcp", "+short"])
        .args([name, "TXT"])
        .output()
        .expect("dig runs");
    stdout(&out)
}

/// (selector, algorithm, record) of each key in `dkim list --json`.
fn keys(node: &Node) -> Vec<(String, String, String)> {
    let list = node.json(&["dkim", "list", "--json"]);
    let text = list.to_string();
    assert!(
        !text.contains("private") && !text.contains("MII"),
        "no key material in the listing: {text}"
    );
    list.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["selector"].as_str().unwrap().to_string(),
                r["algorithm"].as_str().unwrap().to_string(),
                r["record"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// One node serving example.com (zone, local domain, a Maildir user).
fn setup(node: &Node, mail: &Path) {
    node.ok(&["zone", "add", "example.com"]);
    node.ok(&["domain", "add", "example.com", "--kind", "local"]);
    node.ok(&[
        "transport",
        "set",
        "example.com",
        &format!("maildir:{}", mail.display()),
    ]);
    node.ok(&["recipient", "add", "user@example.com"]);
}

#[test]
fn keys_are_published_with_the_zone_and_dkimpy_verifies_both_signatures() {
    ensure_tools();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mail = d.join("mail");
    let extra = "\n[delivery]\nresolver = \"127.0.0.1:9\"\n";
    let mut nodes = form_cluster(d, PORT_ONE, 1, extra);
    let node = nodes.remove(0);
    let (ip, dns) = ("127.0.0.11", Node::dns_port(PORT_ONE));
    let smtp = Node::smtp_addr(1, PORT_ONE);
    setup(&node, &mail);
    node.ok(&["domain", "add", "nozone.example", "--kind", "local"]);

    let started = std::time::Instant::now();
    let out = node.ok(&["dkim", "add", "example.com"]);
    eprintln!("dkim add (RSA-2048 + Ed25519): {:?}", started.elapsed());
    let k = keys(&node);
    assert_eq!(k.len(), 2, "{k:?}");
    let rsa = k.iter().find(|k| k.1 == "rsa").expect("an RSA key").clone();
    let ed = k
        .iter()
        .find(|k| k.1 == "ed25519")
        .expect("an Ed25519 key")
        .clone();
    assert!(rsa.0.starts_with('r') && ed.0.starts_with('e'), "{k:?}");
    assert_eq!(rsa.2, format!("{}._domainkey.example.com", rsa.0));
    for (_, _, record) in &k {
        assert!(
            out.contains(&format!("published {record} TXT")),
            "the output names each record: {out}"
        );
    }
    let human = node.ok(&["dkim", "list"]);
    assert!(
        human.contains(&rsa.2) && human.contains("ed25519"),
        "{human}"
    );

    // Both records served (the zone snapshot is rebuilt after apply).
    for (_, alg, record) in [&rsa, &ed] {
        let txt = wait_for("the key record served", || {
            let t = dig_txt(ip, dns, record);
            t.contains("v=DKIM1").then_some(t)
        });
        assert!(txt.contains(&format!("k={alg}; p=")), "{txt}");
    }
    // The RSA key needs two character-strings.
    assert!(dig_txt(ip, dns, &rsa.2).contains("\" \""));

    // From mynetworks: signed with both keys; dkimpy verifies both.
    send(&smtp, "127.0.0.1", "sender@example.com", "signed twice");
    let m = delivered(&mail, "signed twice");
    assert_eq!(m.matches("DKIM-Signature:").count(), 2, "{m}");
    let (ok, verdict) = dkimpy(d, ip, dns, &m);
    assert!(ok, "{verdict}\n{m}");
    assert!(
        verdict.contains(&format!("s={} a=rsa-sha256 pass", rsa.0))
            && verdict.contains(&format!("s={} a=ed25519-sha256 pass", ed.0))
            && verdict.contains("signatures=2"),
        "{verdict}"
    );
    assert!(m.contains("c=relaxed/relaxed"), "{m}");
    let log = node.log_text();
    assert!(
        log.contains("DKIM-Signature field added") && log.contains("d=example.com"),
        "{log}"
    );

    // An authenticated user on submission, from outside mynetworks: signed.
    let password = d.join("password");
    std::fs::write(&password, "correct horse\n").unwrap();
    node.ok(&[
        "user",
        "add",
        "sender@example.com",
        "--password-file",
        password.to_str().unwrap(),
    ]);
    let out = Command::new("swaks")
        .args(["--timeout", "60", "--tls", "--server"])
        .arg(format!("{ip}:{}", Node::submission_port(PORT_ONE)))
        .args(["--local-interface", "127.0.0.2", "--auth", "PLAIN"])
        .args(["--auth-user", "sender@example.com"])
        .args(["--auth-password", "correct horse"])
        .args(["--from", "sender@example.com", "--to", "user@example.com"])
        .args(["--header", "Subject: submitted"])
        .output()
        .expect("swaks runs");
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let m = delivered(&mail, "submitted");
    let (ok, verdict) = dkimpy(d, ip, dns, &m);
    assert!(ok && verdict.contains("signatures=2"), "{verdict}\n{m}");

    // Relayed for an outside client (127.0.0.2 is not in mynetworks, not
    // authenticated): not signed, even with our domain in From.
    send(&smtp, "127.0.0.2", "sender@example.com", "from outside");
    let m = delivered(&mail, "from outside");
    assert!(!m.contains("DKIM-Signature"), "{m}");
    // Another domain's mail from mynetworks: no key, no signature.
    send(
        &smtp,
        "127.0.0.1",
        "someone@elsewhere.example",
        "not our domain",
    );
    let m = delivered(&mail, "not our domain");
    assert!(!m.contains("DKIM-Signature"), "{m}");

    // Bad input: each refused naming its cause, nothing changes.
    let before = node.json(&["dkim", "list", "--json"]);
    for (args, cause) in [
        (
            vec![
                "dkim",
                "add",
                "example.com",
                "--selector",
                "Bad_Sel",
                "--algorithm",
                "rsa",
            ],
            "invalid DKIM selector",
        ),
        (
            vec![
                "dkim",
                "add",
                "example.com",
                "--selector",
                "-s",
                "--algorithm",
                "rsa",
            ],
            "",
        ),
        (
            vec!["dkim", "add", "example.com", "--algorithm", "dsa"],
            "unknown DKIM algorithm \"dsa\"",
        ),
        (
            vec!["dkim", "add", "nozone.example"],
            "no zone of ours holds",
        ),
        (
            vec!["dkim", "add", "other.example"],
            "other.example is not one of our domains",
        ),
        (
            vec![
                "dkim",
                "add",
                "example.com",
                "--selector",
                ed.0.as_str(),
                "--algorithm",
                "ed25519",
            ],
            "exists already",
        ),
        (
            vec!["dkim", "del", "example.com", "nosuch"],
            "no DKIM key with selector nosuch",
        ),
    ] {
        let out = node.cli(&args);
        assert!(
            !out.status.success(),
            "{args:?} succeeded: {}",
            stdout(&out)
        );
        assert!(stderr(&out).contains(cause), "{args:?}: {}", stderr(&out));
    }
    assert_eq!(node.json(&["dkim", "list", "--json"]), before);

    // Delete the RSA key: its record goes, mail is signed with Ed25519 only.
    let out = node.ok(&["dkim", "del", "example.com", &rsa.0]);
    assert!(out.contains("TXT removed"), "{out}");
    wait_for("the RSA record gone", || {
        dig_txt(ip, dns, &rsa.2).trim().is_empty().then_some(())
    });
    assert!(dig_txt(ip, dns, &ed.2).contains("k=ed25519"));
    send(&smtp, "127.0.0.1", "sender@example.com", "ed25519 only");
    let m = delivered(&mail, "ed25519 only");
    let (ok, verdict) = dkimpy(d, ip, dns, &m);
    assert!(
        ok && verdict.contains("signatures=1") && verdict.contains(&format!("s={}", ed.0)),
        "{verdict}"
    );

    // The last key only with --last; then nothing is signed.
    let out = node.cli(&["dkim", "del", "example.com", &ed.0]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("is the last DKIM key of example.com")
            && stderr(&out).contains("--last"),
        "{}",
        stderr(&out)
    );
    assert_eq!(keys(&node).len(), 1);
    node.ok(&["dkim", "del", "example.com", &ed.0, "--last"]);
    assert!(keys(&node).is_empty());
    wait_for("the Ed25519 record gone", || {
        dig_txt(ip, dns, &ed.2).trim().is_empty().then_some(())
    });
    send(&smtp, "127.0.0.1", "sender@example.com", "unsigned again");
    let m = delivered(&mail, "unsigned again");
    assert!(!m.contains("DKIM-Signature"), "{m}");
}

#[test]
fn a_key_added_on_node_1_is_served_and_signed_with_by_node_3() {
    ensure_tools();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mail = d.join("mail");
    let extra = "\n[delivery]\nresolver = \"127.0.0.1:9\"\n";
    let nodes = form_cluster(d, PORT_THREE, 3, extra);
    setup(&nodes[0], &mail);
    nodes[0].ok(&["dkim", "add", "example.com", "--algorithm", "ed25519"]);
    let k = keys(&nodes[0]);
    assert_eq!(k.len(), 1, "{k:?}");
    let dns = Node::dns_port(PORT_THREE);
    wait_for("node 3 to serve the record", || {
        dig_txt("127.0.0.13", dns, &k[0].2)
            .contains("k=ed25519")
            .then_some(())
    });
    wait_for("node 3 to list the key", || {
        (keys(&nodes[2]) == k).then_some(())
    });
    send(
        &Node::smtp_addr(3, PORT_THREE),
        "127.0.0.1",
        "sender@example.com",
        "via node 3",
    );
    let m = delivered(&mail, "via node 3");
    let (ok, verdict) = dkimpy(d, "127.0.0.13", dns, &m);
    assert!(ok && verdict.contains("signatures=1"), "{verdict}\n{m}");
    assert!(
        nodes[2].log_text().contains("DKIM-Signature field added"),
        "node 3 signed"
    );
}
