//! Mailbox quotas, per-domain message size limits and DNSBLs, the way an
//! operator of scenario 4 meets them: `hamail quota set` and a Maildir
//! delivery past it bounced with 5.2.2 (the DSN in the sender's mailbox)
//! or deferred with 4.2.2; `domain set --message-size-limit` refusing at
//! RCPT (SIZE=) and at the end of DATA; a client listed in a DNSBL zone
//! served by hamail's own DNS refused with Postfix's text.

use std::path::Path;
use std::process::Command;

use hamail_tests::smtp::SmtpClient;
use hamail_tests::{Node, form_cluster, form_cluster_with, stderr, wait_for};

/// Cluster RPC ports of this file's one-node clusters (DNS +1000, SMTP
/// +2000, submission +3000 and +4000).
const PORT_BOUNCE: u16 = 18560;
const PORT_DEFER: u16 = 18562;
const PORT_SIZE: u16 = 18564;
const PORT_DNSBL: u16 = 18566;

fn swaks(args: &[&str]) -> std::process::Output {
    Command::new("swaks")
        .args(["--timeout", "60"])
        .args(args)
        .output()
        .expect("swaks runs")
}

/// Messages in a Maildir's new/ directory.
fn maildir(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir.join("new"))
        .map(|d| {
            d.flatten()
                .map(|e| std::fs::read_to_string(e.path()).unwrap())
                .collect()
        })
        .unwrap_or_default()
}

/// A recipient's status in the queue (`deferred`, ...) with its reason.
fn status(node: &Node, id: &str) -> Option<String> {
    let q = node.queue();
    let e = q.iter().find(|e| e["queue_id"] == id)?;
    Some(e["recipients"][0]["status"].to_string())
}

/// One node with two local domains delivered to Maildirs under `mail`:
/// example.jp (box, full) and client.example (sender, who gets the DSNs).
fn mail_node(dir: &Path, port: u16, overquota: &str) -> (Node, std::path::PathBuf) {
    let extra = format!(
        "\n[delivery]\nresolver = \"127.0.0.1:9\"\nminimal_backoff_time_secs = 1\n\
         maximal_backoff_time_secs = 2\noverquota = \"{overquota}\"\n"
    );
    let mut nodes = form_cluster(dir, port, 1, &extra);
    let node = nodes.remove(0);
    let mail = dir.join("mail");
    for domain in ["example.jp", "client.example"] {
        node.ok(&["domain", "add", domain, "--kind", "local"]);
        node.ok(&[
            "transport",
            "set",
            domain,
            &format!("maildir:{}", mail.display()),
        ]);
    }
    for r in ["box@example.jp", "full@example.jp", "sender@client.example"] {
        node.ok(&["recipient", "add", r]);
    }
    (node, mail)
}

fn send(smtp: &str, to: &str, subject: &str) -> String {
    let out = swaks(&[
        "--server",
        smtp,
        "--from",
        "sender@client.example",
        "--to",
        to,
        "--header",
        &format!("Subject: {subject}"),
    ]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{text}");
    text.split("queued as ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_else(|| panic!("no queue id in {text}"))
        .to_string()
}

#[test]
fn a_delivery_past_the_quota_bounces_with_5_2_2_and_unhosted_quotas_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (node, mail) = mail_node(dir.path(), PORT_BOUNCE, "bounce");
    let smtp = Node::smtp_addr(1, PORT_BOUNCE);

    // Quotas only for mailboxes we host; a refusal changes nothing.
    node.ok(&["quota", "set", "box@example.jp", "1M"]);
    node.ok(&["quota", "set", "full@example.jp", "1K"]);
    for (address, why) in [
        ("nobody@example.jp", "no such recipient"),
        ("someone@elsewhere.example", "not one of our domains"),
    ] {
        let out = node.cli(&["quota", "set", address, "1M"]);
        assert!(!out.status.success());
        let e = stderr(&out);
        assert!(e.contains("is not hosted here") && e.contains(why), "{e}");
    }
    let out = node.cli(&["quota", "set", "box@example.jp", "10X"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("unknown unit"), "{}", stderr(&out));
    let list = node.json(&["quota", "list", "--json"]);
    let rows: Vec<(String, u64)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["address"].as_str().unwrap().to_string(),
                r["bytes"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("box@example.jp".to_string(), 1 << 20),
            ("full@example.jp".to_string(), 1024)
        ]
    );
    assert!(node.ok(&["quota", "list"]).contains("full@example.jp"));

    // full@ has a Maildir++ maildirsize saying 1000 bytes are used.
    let full = mail.join("example.jp/full");
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(full.join(sub)).unwrap();
    }
    std::fs::write(full.join("maildirsize"), "1024S\n1000 1\n").unwrap();

    let ok_id = send(&smtp, "box@example.jp", "fits");
    let over_id = send(&smtp, "full@example.jp", "too-big");
    wait_for("the queue to empty", || {
        node.queue().is_empty().then_some(())
    });

    let boxed = maildir(&mail.join("example.jp/box"));
    assert_eq!(boxed.len(), 1, "{boxed:?}");
    assert!(boxed[0].contains("Subject: fits"));
    assert!(
        !mail.join("example.jp/box/maildirsize").exists(),
        "no maildirsize is made where there was none"
    );
    assert!(maildir(&full).is_empty(), "nothing written past the quota");
    assert_eq!(
        std::fs::read_to_string(full.join("maildirsize")).unwrap(),
        "1024S\n1000 1\n"
    );
    let dsns = maildir(&mail.join("client.example/sender"));
    assert_eq!(
        dsns.len(),
        1,
        "one DSN, for the over-quota message: {dsns:#?}"
    );
    let dsn = &dsns[0];
    assert!(
        dsn.contains(&format!("X-Hamail-Queue-ID: {over_id}")),
        "{dsn}"
    );
    assert!(
        dsn.contains("Final-Recipient: rfc822; full@example.jp"),
        "{dsn}"
    );
    assert!(dsn.contains("Status: 5.2.2"), "{dsn}");
    assert!(
        dsn.contains("Sorry, the user's maildir has overdrawn his diskspace quota"),
        "{dsn}"
    );
    let log = node.log_text();
    assert!(
        log.contains(&format!("{over_id}: to=<full@example.jp>, relay=maildir"))
            && log.contains("dsn=5.2.2, status=bounced"),
        "{log}"
    );
    assert!(
        log.contains(&format!("{ok_id}: to=<box@example.jp>")),
        "{log}"
    );

    // Room again (the quota raised): the next message goes in, and the
    // maildirsize gets its line.
    node.ok(&["quota", "set", "full@example.jp", "100K"]);
    send(&smtp, "full@example.jp", "fits-now");
    wait_for("the queue to empty", || {
        node.queue().is_empty().then_some(())
    });
    assert_eq!(maildir(&full).len(), 1);
    let sizes = std::fs::read_to_string(full.join("maildirsize")).unwrap();
    assert!(
        sizes.starts_with("1024S\n1000 1\n") && sizes.lines().count() == 3,
        "{sizes}"
    );
    // Deleting the recipient deletes its quota.
    node.ok(&["quota", "del", "box@example.jp"]);
    node.ok(&["recipient", "del", "full@example.jp"]);
    assert_eq!(
        node.json(&["quota", "list", "--json"]),
        serde_json::json!([])
    );
}

#[test]
fn in_defer_mode_a_delivery_past_the_quota_stays_queued_with_4_2_2() {
    let dir = tempfile::tempdir().unwrap();
    let (node, mail) = mail_node(dir.path(), PORT_DEFER, "defer");
    let smtp = Node::smtp_addr(1, PORT_DEFER);
    node.ok(&["quota", "set", "full@example.jp", "100"]);
    let id = send(&smtp, "full@example.jp", "waits");
    let why = wait_for("a deferral", || {
        status(&node, &id).filter(|s| s.contains("deferred") && s.contains("4.2.2"))
    });
    assert!(why.contains("overdrawn his diskspace quota"), "{why}");
    assert!(maildir(&mail.join("example.jp/full")).is_empty());
    assert!(
        maildir(&mail.join("client.example/sender")).is_empty(),
        "no bounce"
    );
    // The mailbox gets room: the next try delivers it.
    node.ok(&["quota", "set", "full@example.jp", "1M"]);
    node.ok(&["queue", "flush"]);
    wait_for("the queue to empty", || {
        node.queue().is_empty().then_some(())
    });
    assert_eq!(maildir(&mail.join("example.jp/full")).len(), 1);
}

#[test]
fn a_domain_size_limit_refuses_at_rcpt_and_at_the_end_of_data_and_queues_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (node, _mail) = mail_node(dir.path(), PORT_SIZE, "bounce");
    let smtp = Node::smtp_addr(1, PORT_SIZE);

    // Above the global message_size_limit (10 MiB by default): refused.
    let out = node.cli(&["domain", "set", "example.jp", "--message-size-limit", "20M"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("above the global"),
        "{}",
        stderr(&out)
    );
    let out = node.cli(&[
        "domain",
        "set",
        "nothere.example",
        "--message-size-limit",
        "1M",
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no such domain"), "{}", stderr(&out));
    assert!(!node.ok(&["domain", "list"]).contains("message_size_limit"));
    node.ok(&["domain", "set", "example.jp", "--message-size-limit", "2K"]);
    assert!(
        node.ok(&["domain", "list"])
            .contains("message_size_limit 2K"),
        "{}",
        node.ok(&["domain", "list"])
    );

    // SIZE= above the domain's limit: 552 at RCPT for that domain only.
    let (mut c, g) = SmtpClient::connect(&smtp).unwrap();
    assert!(g.is(220), "{g:?}");
    assert!(c.cmd("EHLO client.example").unwrap().is(250));
    let r = c
        .cmd("MAIL FROM:<sender@client.example> SIZE=5000")
        .unwrap();
    assert!(r.is(250), "{r:?}");
    let r = c.cmd("RCPT TO:<box@example.jp>").unwrap();
    assert!(
        r.text
            .starts_with("552 5.3.4 Message size exceeds fixed limit"),
        "{r:?}"
    );
    let r = c.cmd("RCPT TO:<sender@client.example>").unwrap();
    assert!(r.is(250), "{r:?}");
    assert!(c.cmd("RSET").unwrap().is(250));
    // Within the limit declared: accepted at RCPT...
    let r = c
        .cmd("MAIL FROM:<sender@client.example> SIZE=1000")
        .unwrap();
    assert!(r.is(250), "{r:?}");
    assert!(c.cmd("RCPT TO:<box@example.jp>").unwrap().is(250));
    assert!(c.cmd("RCPT TO:<sender@client.example>").unwrap().is(250));
    assert!(c.cmd("DATA").unwrap().is(354));
    // ...and refused at the end of DATA when the message is larger.
    let big = format!("Subject: big\r\n\r\n{}\r\n", "x".repeat(4000));
    c.send(big.as_bytes()).unwrap();
    c.send(b".\r\n").unwrap();
    let r = c.reply().unwrap();
    assert!(
        r.text
            .starts_with("552 5.3.4 Message size exceeds fixed limit"),
        "{r:?}"
    );
    assert!(node.queue().is_empty(), "nothing queued");

    // swaks without SIZE: the same at the end of DATA; a small message
    // and mail for the other domain pass.
    let out = swaks(&[
        "--server",
        &smtp,
        "--from",
        "sender@client.example",
        "--to",
        "box@example.jp",
        "--body",
        &"y".repeat(3000),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("<** 552 5.3.4 Message size exceeds fixed limit"),
        "{text}"
    );
    assert!(node.queue().is_empty(), "nothing queued");
    let small = send(&smtp, "box@example.jp", "small");
    let other = swaks(&[
        "--server",
        &smtp,
        "--from",
        "sender@client.example",
        "--to",
        "sender@client.example",
        "--body",
        &"y".repeat(3000),
    ]);
    assert!(
        other.status.success(),
        "{}",
        String::from_utf8_lossy(&other.stdout)
    );
    assert!(!small.is_empty());
    // Back to the global limit.
    node.ok(&[
        "domain",
        "set",
        "example.jp",
        "--message-size-limit",
        "global",
    ]);
    let out = swaks(&[
        "--server",
        &smtp,
        "--from",
        "sender@client.example",
        "--to",
        "box@example.jp",
        "--body",
        &"y".repeat(3000),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// swaks from a given loopback address; its output.
fn swaks_from(src: &str, smtp: &str, to: &str) -> (bool, String) {
    let out = swaks(&[
        "--server",
        smtp,
        "--local-interface",
        src,
        "--from",
        "sender@client.example",
        "--to",
        to,
    ]);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
    )
}

#[test]
fn a_client_listed_in_a_dnsbl_is_refused_with_the_list_s_text() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let dns = Node::dns_port(PORT_DNSBL);
    // The node resolves through its own DNS, which serves the lists. The
    // first list is not served at all (REFUSED: no answer), the second
    // answers 127.0.0.1 for 127.0.0.3, outside its filter.
    let extra = format!("\n[delivery]\nresolver = \"127.0.0.11:{dns}\"\n");
    let mut nodes = form_cluster_with(d, PORT_DNSBL, 1, &extra, |_, _, text| {
        *text = text.replacen(
            "[smtp]\n",
            "[smtp]\ndnsbl = [\"down.example.test\", \"bl.example.test=127.0.0.[2..11]\", \"zen.example.test\"]\n",
            1,
        );
    });
    let node = nodes.remove(0);
    let smtp = Node::smtp_addr(1, PORT_DNSBL);
    node.ok(&["zone", "add", "zen.example.test"]);
    node.ok(&[
        "record",
        "add",
        "zen.example.test",
        "2.0.0.127 60 IN A 127.0.0.2",
    ]);
    node.ok(&[
        "record",
        "add",
        "zen.example.test",
        "2.0.0.127 60 IN TXT \"Listed by zen, see https://zen.example.test/?127.0.0.2\"",
    ]);
    node.ok(&["zone", "add", "bl.example.test"]);
    node.ok(&[
        "record",
        "add",
        "bl.example.test",
        "3.0.0.127 60 IN A 127.0.0.1",
    ]);
    node.ok(&["domain", "add", "example.jp", "--kind", "local"]);
    node.ok(&[
        "transport",
        "set",
        "example.jp",
        &format!("maildir:{}", d.join("mail").display()),
    ]);
    node.ok(&["recipient", "add", "box@example.jp"]);
    // DNS rebuilds its zones after the edits are applied: wait until it
    // serves the last record of each list.
    for (name, rtype) in [
        ("2.0.0.127.zen.example.test", "TXT"),
        ("3.0.0.127.bl.example.test", "A"),
    ] {
        wait_for("the lists served by our DNS", || {
            let out = Command::new("dig")
                .args(["@127.0.0.11", "-p", &dns.to_string(), "+short", name, rtype])
                .output()
                .ok()?;
            (!out.stdout.is_empty()).then_some(())
        });
    }

    let (ok, text) = swaks_from("127.0.0.2", &smtp, "box@example.jp");
    assert!(!ok, "{text}");
    assert!(
        text.contains(
            "<** 554 5.7.1 Service unavailable; Client host [127.0.0.2] blocked using zen.example.test; Listed by zen, see https://zen.example.test/?127.0.0.2"
        ),
        "{text}"
    );
    // Not listed (NXDOMAIN in zen, an answer outside bl's filter): accepted.
    let (ok, text) = swaks_from("127.0.0.3", &smtp, "box@example.jp");
    assert!(ok, "{text}");
    // mynetworks is never looked up.
    let (ok, text) = swaks_from("127.0.0.1", &smtp, "box@example.jp");
    assert!(ok, "{text}");
    // Asked again: the same answer (from the cache).
    let (ok, text) = swaks_from("127.0.0.2", &smtp, "box@example.jp");
    assert!(
        !ok && text.contains("blocked using zen.example.test"),
        "{text}"
    );
    // An unknown recipient is refused as unknown first (Postfix's order).
    let (ok, text) = swaks_from("127.0.0.2", &smtp, "nobody@example.jp");
    assert!(!ok && text.contains("<** 550 5.1.1"), "{text}");

    let log = node.log_text();
    assert!(
        log.contains("NOQUEUE: reject: RCPT from")
            && log.contains("554 5.7.1 Service unavailable; Client host [127.0.0.2] blocked using zen.example.test;"),
        "{log}"
    );
    assert!(
        log.contains("DNSBL lookup failed") && log.contains("down.example.test"),
        "a list without an answer is logged: {log}"
    );
    wait_for("the accepted mail delivered", || {
        node.queue().is_empty().then_some(())
    });
    assert_eq!(maildir(&d.join("mail/example.jp/box")).len(), 2);
}
