//! The MX, driven like a sending MTA and like a hostile client would: swaks
//! and raw sockets against one node; three nodes with kill -9 of the node
//! that just answered 250, and SIGSTOP of two nodes.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use hamail_tests::smtp::{SmtpClient, queued_id};
use hamail_tests::{Node, form_cluster, wait_for};

/// A one-node cluster with SMTP on `port` and `smtp_extra` in `[smtp]`, a
/// relay domain example.jp whose recipients come from a Postfix
/// `relay_recipient_maps` file.
fn mx(dir: &Path, port: u16, smtp_extra: &str) -> Node {
    let mut node = Node::with_config_extra(
        dir,
        &format!("[smtp]\nlisten = [\"127.0.0.1:{port}\"]\n{smtp_extra}\n"),
    );
    node.start();
    node.ok(&["domain", "add", "example.jp", "--kind", "relay"]);
    let map = dir.join("passwd-2ndmx");
    std::fs::write(
        &map,
        "# relay_recipient_maps, built from the primary\nuser@example.jp x\ninfo@example.jp x\n",
    )
    .unwrap();
    node.ok(&["recipient", "import", map.to_str().unwrap()]);
    node
}

/// Postfix's test clients (smtp-source), without a system Postfix.
fn ensure_postfix_tools() {
    if std::path::Path::new("/usr/sbin/smtp-source").exists() {
        return;
    }
    let mut p = Command::new("debconf-set-selections")
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    p.stdin
        .take()
        .unwrap()
        .write_all(b"postfix postfix/main_mailer_type select No configuration\n")
        .unwrap();
    p.wait().unwrap();
    hamail_tests::ensure_tool("smtp-source", "postfix");
}

fn session(addr: &str) -> SmtpClient {
    let (mut c, greeting) = SmtpClient::connect(addr).unwrap();
    assert!(greeting.is(220), "{greeting:?}");
    assert!(c.cmd("EHLO client.example").unwrap().is(250));
    c
}

#[test]
fn known_recipients_are_queued_unknown_refused_and_relay_only_from_mynetworks() {
    hamail_tests::ensure_tool("swaks", "swaks");
    let dir = tempfile::tempdir().unwrap();
    let node = mx(dir.path(), 19601, "");
    let addr = "127.0.0.1:19601";

    // A real client: swaks, the way an operator checks an MX.
    let out = Command::new("swaks")
        .args([
            "--server",
            addr,
            "--from",
            "sender@client.example",
            "--to",
            "user@example.jp",
            "--header",
            "Subject: swaks test",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let id = text
        .split("queued as ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_else(|| panic!("no queue id in {text}"))
        .to_string();
    assert!(node.queue_ids().contains(&id));
    let show = node.ok(&["queue", "show", &id]);
    assert!(
        show.contains(&format!("by n1 (hamail) with ESMTP id {id}")),
        "{show}"
    );
    assert!(show.contains("for <user@example.jp>"), "{show}");
    assert!(show.contains("Subject: swaks test"), "{show}");
    let list = node.ok(&["queue", "list"]);
    assert!(
        list.contains(&id) && list.contains("sender@client.example"),
        "{list}"
    );

    // Banner: host name, no version. VRFY and EXPN off. HELO first.
    let (mut c, greeting) = SmtpClient::connect(addr).unwrap();
    assert_eq!(greeting.text.trim_end(), "220 n1 ESMTP");
    assert!(c.cmd("MAIL FROM:<a@client.example>").unwrap().is(503));
    let ehlo = c.cmd("EHLO client.example").unwrap().text;
    for kw in [
        "PIPELINING",
        "SIZE 10485760",
        "STARTTLS",
        "ENHANCEDSTATUSCODES",
        "8BITMIME",
        "SMTPUTF8",
        "CHUNKING",
    ] {
        assert!(ehlo.contains(kw), "{kw} missing from {ehlo}");
    }
    assert!(!ehlo.contains("VRFY"), "{ehlo}");
    assert!(c.cmd("VRFY user").unwrap().is(502));
    assert!(c.cmd("EXPN staff").unwrap().is(502));

    // Unknown recipient of our domain: 550 5.1.1 at RCPT, even from
    // mynetworks (no backscatter).
    assert!(c.cmd("MAIL FROM:<a@client.example>").unwrap().is(250));
    let r = c.cmd("RCPT TO:<nobody@example.jp>").unwrap();
    assert!(r.text.starts_with("550 5.1.1"), "{r:?}");
    // From mynetworks (127.0.0.1) relaying elsewhere is allowed ...
    assert!(c.cmd("RCPT TO:<friend@elsewhere.example>").unwrap().is(250));
    // ... but never through routing tricks.
    for bad in [
        "<user%elsewhere.example@example.jp>",
        "<elsewhere.example!user@example.jp>",
        "<@example.jp:user@elsewhere.example>",
        "<\"user@elsewhere.example\"@example.jp>",
        "<user@elsewhere.example@example.jp>",
    ] {
        let r = c.cmd(&format!("RCPT TO:{bad}")).unwrap();
        assert!(r.code >= 500, "{bad} got {r:?}");
    }
    assert!(c.cmd("QUIT").unwrap().is(221));

    // A client outside mynetworks: our recipients yes, relaying no.
    let outside: std::net::IpAddr = "127.0.0.5".parse().unwrap();
    let (mut c, greeting) = SmtpClient::connect_from(outside, addr).unwrap();
    assert!(greeting.is(220));
    assert!(c.cmd("EHLO outside.example").unwrap().is(250));
    assert!(c.cmd("MAIL FROM:<a@outside.example>").unwrap().is(250));
    let r = c.cmd("RCPT TO:<victim@elsewhere.example>").unwrap();
    assert!(r.text.starts_with("554 5.7.1"), "{r:?}");
    let r = c.cmd("RCPT TO:<nobody@example.jp>").unwrap();
    assert!(r.text.starts_with("550 5.1.1"), "{r:?}");
    assert!(c.cmd("RCPT TO:<postmaster@example.jp>").unwrap().is(250));
    assert!(c.cmd("RCPT TO:<abuse@example.jp>").unwrap().is(250));
    assert!(c.cmd("RCPT TO:<info@example.jp>").unwrap().is(250));
    assert!(c.cmd("DATA").unwrap().is(354));
    c.send(b"Subject: from outside\r\n\r\nhello\r\n.\r\n")
        .unwrap();
    let r = c.reply().unwrap();
    let outside_id = queued_id(&r).unwrap_or_else(|| panic!("{r:?}"));
    let e = node.json(&["queue", "show", &outside_id, "--json"]);
    let rcpts: Vec<&str> = e["entry"]["recipients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["address"].as_str().unwrap())
        .collect();
    assert_eq!(
        rcpts,
        [
            "postmaster@example.jp",
            "abuse@example.jp",
            "info@example.jp"
        ]
    );

    // Postfix-style log lines for pflogsumm and grep.
    let log = node.log_text();
    for want in [
        "connect from unknown[127.0.0.1]".to_string(),
        format!("{id}: client=unknown[127.0.0.1]"),
        format!("{id}: from=<sender@client.example>, size="),
        format!("{id}: message-id=<"),
        "NOQUEUE: reject: RCPT from unknown[127.0.0.5]: 554 5.7.1 <victim@elsewhere.example>: Relay access denied".to_string(),
        "NOQUEUE: reject: RCPT from unknown[127.0.0.1]: 550 5.1.1 <nobody@example.jp>: Recipient address rejected: User unknown in relay recipient table".to_string(),
    ] {
        assert!(log.contains(&want), "log lacks {want:?}");
    }

    // Queue tools.
    assert!(node.ok(&["queue", "hold", &id]).contains("held 1"));
    assert!(node.ok(&["queue", "list"]).contains(&format!("{id}!")));
    assert!(node.ok(&["queue", "release", &id]).contains("released 1"));
    node.ok(&["queue", "flush"]);
    assert!(node.ok(&["queue", "delete", &id]).contains("deleted 1"));
    assert!(!node.queue_ids().contains(&id));
    let r = node.cli(&["queue", "delete", &id]);
    assert!(!r.status.success());
    assert!(hamail_tests::stderr(&r).contains("no such message"));
    let r = node.cli(&["queue", "show", "not-an-id"]);
    assert!(hamail_tests::stderr(&r).contains("invalid queue id"));
    node.ok(&["queue", "delete", "--all"]);
    assert!(node.queue_ids().is_empty());
}

#[test]
fn hostile_clients_get_errors_and_nothing_is_queued_by_them() {
    let dir = tempfile::tempdir().unwrap();
    let node = mx(
        dir.path(),
        19602,
        "message_size_limit = 100000\nsmtpd_timeout_secs = 3\n",
    );
    let addr = "127.0.0.1:19602";

    // SMTP smuggling: every bare-LF / bare-CR end-of-data variant ends
    // the session with 521, and the smuggled message is never queued.
    for variant in [
        &b"\n.\n"[..],
        b"\n.\r\n",
        b"\r.\r\n",
        b"\r\n.\n",
        b"\r\n.\r",
        b"\r.\n",
        b"\n..\n.\n",
    ] {
        let mut c = session(addr);
        assert!(c.cmd("MAIL FROM:<a@client.example>").unwrap().is(250));
        assert!(c.cmd("RCPT TO:<user@example.jp>").unwrap().is(250));
        assert!(c.cmd("DATA").unwrap().is(354));
        let mut payload = b"Subject: innocent\r\n\r\nhello".to_vec();
        payload.extend_from_slice(variant);
        payload.extend_from_slice(
            b"MAIL FROM:<evil@client.example>\r\nRCPT TO:<info@example.jp>\r\nDATA\r\nSubject: smuggled\r\n\r\nx\r\n.\r\n",
        );
        c.send(&payload).unwrap();
        let r = c.reply().unwrap();
        assert!(
            r.text.starts_with("521 5.5.2"),
            "{:?} got {r:?}",
            String::from_utf8_lossy(variant)
        );
        assert!(c.closed());
    }
    assert!(node.queue_ids().is_empty(), "a smuggled message was queued");

    // NUL bytes, an overlong line, commands out of order.
    let mut c = session(addr);
    c.send(b"NOOP a\0b\r\n").unwrap();
    assert!(c.reply().unwrap().is(500));
    let long = format!("NOOP {}\r\n", "x".repeat(5000));
    c.send(long.as_bytes()).unwrap();
    assert!(c.reply().unwrap().text.starts_with("500 5.5.2"));
    assert!(c.cmd("NOOP").unwrap().is(250), "the session goes on");
    assert!(c.cmd("DATA").unwrap().is(503));
    assert!(c.cmd("RCPT TO:<user@example.jp>").unwrap().is(503));
    c.send(b"BDAT 3 LAST\r\nabc").unwrap();
    assert!(c.reply().unwrap().is(503));

    // SIZE over the limit at MAIL; an oversize body after DATA.
    let mut c = session(addr);
    let r = c.cmd("MAIL FROM:<a@client.example> SIZE=200000").unwrap();
    assert!(r.text.starts_with("552 5.3.4"), "{r:?}");
    let big = format!("Subject: big\r\n\r\n{}", "0123456789\r\n".repeat(10_000));
    let r = c
        .send_mail("a@client.example", &["user@example.jp"], &big)
        .unwrap();
    assert!(r.text.starts_with("552 5.3.4"), "{r:?}");

    // 1,001 recipients pipelined in one write: the last gets 452 4.5.3.
    let mut burst = String::from("MAIL FROM:<a@client.example>\r\n");
    for i in 0..1001 {
        burst.push_str(&format!("RCPT TO:<r{i}@elsewhere.example>\r\n"));
    }
    c.send(burst.as_bytes()).unwrap();
    assert!(c.reply().unwrap().is(250));
    for i in 0..1000 {
        assert!(c.reply().unwrap().is(250), "recipient {i}");
    }
    let r = c.reply().unwrap();
    assert!(r.text.starts_with("452 4.5.3"), "{r:?}");
    assert!(c.cmd("DATA").unwrap().is(354));
    c.send(b"Subject: many\r\n\r\nx\r\n.\r\n").unwrap();
    let r = c.reply().unwrap();
    let many = queued_id(&r).unwrap_or_else(|| panic!("{r:?}"));
    let e = node.json(&["queue", "show", &many, "--json"]);
    assert_eq!(e["entry"]["recipients"].as_array().unwrap().len(), 1000);

    // Pipelining: a whole transaction in one write, replies in order.
    let mut c = session(addr);
    c.send(b"MAIL FROM:<a@client.example>\r\nRCPT TO:<user@example.jp>\r\nRCPT TO:<nobody@example.jp>\r\nDATA\r\n")
        .unwrap();
    let codes: Vec<u16> = (0..4).map(|_| c.reply().unwrap().code).collect();
    assert_eq!(codes, [250, 250, 550, 354]);
    c.send(b"Subject: piped\r\n\r\nx\r\n.\r\nRSET\r\nNOOP\r\n")
        .unwrap();
    assert!(queued_id(&c.reply().unwrap()).is_some());
    assert!(c.reply().unwrap().is(250));
    assert!(c.reply().unwrap().is(250));

    // CHUNKING: BDAT in two chunks; a bare LF inside BDAT is refused.
    let mut c = session(addr);
    assert!(c.cmd("MAIL FROM:<a@client.example>").unwrap().is(250));
    assert!(c.cmd("RCPT TO:<user@example.jp>").unwrap().is(250));
    c.send(b"BDAT 17\r\nSubject: bdat\r\n\r\n").unwrap();
    assert!(c.reply().unwrap().is(250));
    c.send(b"BDAT 3 LAST\r\nx\r\n").unwrap();
    let r = c.reply().unwrap();
    assert!(queued_id(&r).is_some(), "{r:?}");
    assert!(c.cmd("MAIL FROM:<a@client.example>").unwrap().is(250));
    assert!(c.cmd("RCPT TO:<user@example.jp>").unwrap().is(250));
    c.send(b"BDAT 5 LAST\r\na\nb\r\n").unwrap();
    assert!(c.reply().unwrap().text.starts_with("550 5.6.0"));

    // A client that disconnects mid-DATA leaves nothing behind.
    let before = node.queue_ids();
    let mut c = session(addr);
    assert!(c.cmd("MAIL FROM:<a@client.example>").unwrap().is(250));
    assert!(c.cmd("RCPT TO:<user@example.jp>").unwrap().is(250));
    assert!(c.cmd("DATA").unwrap().is(354));
    c.send(b"Subject: cut\r\n\r\nhalf a mess").unwrap();
    drop(c);

    // Too many errors: the session is closed with 421.
    let mut c = session(addr);
    let mut last = None;
    for _ in 0..25 {
        match c.cmd("BOGUS") {
            Ok(r) => last = Some(r),
            Err(_) => break,
        }
        if last.as_ref().is_some_and(|r| r.is(421)) {
            break;
        }
    }
    let last = last.unwrap();
    assert!(
        last.text.contains("421 4.7.0"),
        "no 421 after many errors: {last:?}"
    );

    // Slowloris: a byte a second does not keep a command alive past
    // smtpd_timeout_secs, and other clients are served meanwhile.
    let (mut slow, _) = SmtpClient::connect(addr).unwrap();
    let slow_thread = std::thread::spawn(move || {
        for b in b"EHLO slowly-slowly-slowly-slowly-slowly.example".iter() {
            if slow.send(&[*b]).is_err() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
        slow.reply()
    });
    let mut c = session(addr);
    let r = c
        .send_mail(
            "a@client.example",
            &["user@example.jp"],
            "Subject: meanwhile\r\n\r\nx",
        )
        .unwrap();
    assert!(queued_id(&r).is_some(), "{r:?}");
    let r = slow_thread.join().unwrap().unwrap();
    assert!(r.text.starts_with("421 4.4.2"), "{r:?}");

    // A thousand idle connections do not stop a real client.
    let idle: Vec<std::net::TcpStream> = (0..1000)
        .map(|_| std::net::TcpStream::connect(addr).unwrap())
        .collect();
    let mut c = session(addr);
    let r = c
        .send_mail(
            "a@client.example",
            &["user@example.jp"],
            "Subject: busy\r\n\r\nx",
        )
        .unwrap();
    assert!(queued_id(&r).is_some(), "{r:?}");
    drop(idle);

    // STARTTLS command injection: what was pipelined after STARTTLS in the
    // clear must not be executed inside TLS.
    let script = r#"
import socket, ssl, sys
s = socket.create_connection(("127.0.0.1", 19602))
f = s.makefile("rb")
def reply(f):
    lines = []
    while True:
        l = f.readline().decode()
        lines.append(l)
        if len(l) < 4 or l[3] != "-":
            return "".join(lines)
reply(f)
s.sendall(b"EHLO x\r\n"); reply(f)
s.sendall(b"STARTTLS\r\nRSET\r\nMAIL FROM:<injected@client.example>\r\n")
r = reply(f)
assert r.startswith("220"), r
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
t = ctx.wrap_socket(s, server_hostname="n1")
g = t.makefile("rb")
t.sendall(b"EHLO x\r\n")
print(reply(g).splitlines()[0])
t.sendall(b"MAIL FROM:<a@client.example>\r\n")
print(reply(g).strip())
"#;
    let out = Command::new("python3")
        .args(["-c", script])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        lines[0], "250-n1",
        "injected commands ran inside TLS: {text}"
    );
    assert!(lines[1].starts_with("250 2.1.0"), "{text}");

    // Nothing from the cut DATA session was queued; the server still serves.
    let after: BTreeSet<String> = node.queue_ids();
    assert_eq!(after.len(), before.len() + 2, "only the two good messages");
    let mut c = session(addr);
    assert!(c.cmd("QUIT").unwrap().is(221));
}

/// Three nodes; each round one node takes a message and is killed with
/// SIGKILL right after its 250, then restarted. Every acknowledged queue id
/// must be listed by every node at the end.
#[test]
fn every_250_survives_kill9_of_the_node_that_gave_it() {
    let rounds: usize = std::env::var("HAMAIL_KILL_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let dir = tempfile::tempdir().unwrap();
    let rpc = 17510;
    let mut nodes = form_cluster(dir.path(), rpc, 3, "");
    nodes[0].ok(&["domain", "add", "example.jp", "--kind", "relay"]);
    nodes[0].ok(&["recipient", "add", "user@example.jp"]);
    for n in &nodes {
        wait_for("the recipient on every node", || {
            n.ok(&["recipient", "list"])
                .contains("user@example.jp")
                .then_some(())
        });
    }
    let mut acked: Vec<String> = Vec::new();
    let mut round = 0;
    let mut attempts = 0;
    while acked.len() < rounds {
        attempts += 1;
        assert!(attempts < rounds * 5, "too many refused attempts");
        let k = round % 3;
        let addr = Node::smtp_addr(k as u8 + 1, rpc);
        let token = format!("token-{round}");
        let Ok((mut c, greeting)) = SmtpClient::connect(&addr) else {
            continue;
        };
        if !greeting.is(220) {
            // 421 while the node has no quorum yet after a restart.
            continue;
        }
        let r = c.cmd("EHLO kill.example").and_then(|_| {
            c.send_mail(
                "sender@client.example",
                &["user@example.jp"],
                &format!("Subject: {token}\r\n\r\n{token}"),
            )
        });
        let Some(id) = r.ok().as_ref().and_then(queued_id) else {
            continue;
        };
        // Right after the 250: no chance to flush anything more.
        nodes[k].kill9();
        acked.push(id);
        nodes[k].spawn();
        nodes[k].wait_ready();
        round += 1;
    }
    for (i, n) in nodes.iter().enumerate() {
        let missing = wait_for("every acknowledged message on every node", || {
            let have = n.queue_ids();
            let missing: Vec<&String> = acked.iter().filter(|id| !have.contains(*id)).collect();
            missing.is_empty().then_some(missing)
        });
        assert!(missing.is_empty(), "node {} lost {missing:?}", i + 1);
    }
    eprintln!(
        "{} messages acknowledged, each followed by kill -9 of its node; none lost ({attempts} attempts)",
        acked.len()
    );
}

/// Two nodes stopped (SIGSTOP): the third has no majority and says 421 to
/// new sessions, so senders go to the next MX; a transaction under way when
/// quorum goes gets 451, never 250.
#[test]
fn a_node_without_quorum_answers_421_and_queues_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let rpc = 17530;
    let nodes = form_cluster(dir.path(), rpc, 3, "");
    nodes[0].ok(&["domain", "add", "example.jp", "--kind", "relay"]);
    nodes[0].ok(&["recipient", "add", "user@example.jp"]);
    let addr = Node::smtp_addr(1, rpc);
    wait_for("the recipient on node 1", || {
        nodes[0]
            .ok(&["recipient", "list"])
            .contains("user@example.jp")
            .then_some(())
    });
    // Postfix's smtp-source against all three nodes at once: every message
    // ends up in the queue of every node.
    ensure_postfix_tools();
    let sources: Vec<std::process::Child> = (1..=3)
        .map(|i| {
            let target = Node::smtp_addr(i, rpc);
            wait_for("the node to take mail", || {
                SmtpClient::greeted(&target, "client.example")
            });
            Command::new("/usr/sbin/smtp-source")
                .args(["-s", "5", "-m", "100", "-l", "2048"])
                .args(["-f", "sender@client.example", "-t", "user@example.jp"])
                .arg(&target)
                .spawn()
                .unwrap()
        })
        .collect();
    for mut s in sources {
        assert!(s.wait().unwrap().success(), "smtp-source failed");
    }
    for n in &nodes {
        wait_for("300 messages on every node", || {
            (n.queue_ids().len() >= 300).then_some(())
        });
    }

    let mut open = wait_for("node 1 to take mail", || {
        SmtpClient::greeted(&addr, "client.example")
    });
    assert!(open.cmd("MAIL FROM:<a@client.example>").unwrap().is(250));
    assert!(open.cmd("RCPT TO:<user@example.jp>").unwrap().is(250));
    let before = nodes[0].queue_ids();

    nodes[1].signal("STOP");
    nodes[2].signal("STOP");
    let r = open.cmd("DATA").unwrap();
    let r = if r.is(354) {
        open.send(b"Subject: during the partition\r\n\r\nx\r\n.\r\n")
            .unwrap();
        open.reply().unwrap()
    } else {
        r
    };
    assert!(r.text.starts_with("451 4.3.0"), "{r:?}");

    let greeting = wait_for("node 1 to refuse new sessions with 421", || {
        let (_, g) = SmtpClient::connect(&addr).ok()?;
        g.is(421).then_some(g)
    });
    assert!(greeting.text.contains("try another MX"), "{greeting:?}");
    for _ in 0..5 {
        let (_, g) = SmtpClient::connect(&addr).unwrap();
        assert!(g.is(421), "{g:?}");
    }
    nodes[1].signal("CONT");
    nodes[2].signal("CONT");
    let mut c = wait_for("node 1 to take mail again", || {
        SmtpClient::greeted(&addr, "back.example")
    });
    let r = c
        .send_mail(
            "a@client.example",
            &["user@example.jp"],
            "Subject: healed\r\n\r\nx",
        )
        .unwrap();
    let healed = queued_id(&r).unwrap_or_else(|| panic!("{r:?}"));
    // Node 1 may be a follower that applies a moment after the leader.
    let after = wait_for("the healed message on node 1", || {
        let q = nodes[0].queue_ids();
        q.contains(&healed).then_some(q)
    });
    // The healed message, and at most the one answered 451 (raft may still
    // commit an entry it could not confirm in time: a possible duplicate,
    // never a loss). Nothing from the 421 sessions.
    let new: Vec<&String> = after.difference(&before).collect();
    assert!(new.contains(&&healed));
    assert!(new.len() <= 2, "{new:?}");
}

/// A site back from downtime (here: killed, then restarted with its data)
/// must not refuse with 550 a recipient added while it was away: it takes
/// mail only once it has applied what was committed when it got its leader
/// back. Before that it says 421 (try another MX), which senders retry.
#[test]
fn a_site_back_from_downtime_knows_recipients_added_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    let rpc = 17550;
    let mut nodes = form_cluster(dir.path(), rpc, 3, "");
    nodes[0].ok(&["domain", "add", "example.jp", "--kind", "relay"]);
    nodes[0].ok(&["recipient", "add", "old@example.jp"]);
    wait_for("the domain on node 3", || {
        nodes[2]
            .ok(&["recipient", "list"])
            .contains("old@example.jp")
            .then_some(())
    });
    for round in 0..3 {
        nodes[2].kill9();
        // Many writes while it is down (more than one AppendEntries carries),
        // the new recipient last.
        for k in 0..200 {
            nodes[0].ok(&["recipient", "add", &format!("filler{round}-{k}@example.jp")]);
        }
        let new = format!("new{round}@example.jp");
        nodes[0].ok(&["recipient", "add", &new]);
        nodes[2].spawn();
        // From the first 220 on, the new recipient is known.
        let verdict = wait_for("node 3 to take mail again", || {
            let (mut c, greeting) = SmtpClient::connect(&Node::smtp_addr(3, rpc)).ok()?;
            if !greeting.is(220) {
                return None;
            }
            c.cmd("EHLO back.example").ok()?;
            c.cmd("MAIL FROM:<sender@client.example>").ok()?;
            let r = c.cmd(&format!("RCPT TO:<{new}>")).ok()?;
            // A 421/451 (quorum lost again) is retried; anything else is
            // the verdict.
            (!(r.is(421) || r.is(451))).then_some(r)
        });
        assert!(
            verdict.is(250),
            "round {round}: node 3 answered {verdict:?} for a recipient added while it was down; node 3: {:?}; node 1: {:?}; log: {}",
            nodes[2].status().map(|s| s["raft"].clone()),
            nodes[0]
                .status()
                .map(|s| s["raft"]["last_log_index"].clone()),
            nodes[2]
                .log_text()
                .lines()
                .rev()
                .take(15)
                .collect::<Vec<_>>()
                .join("\n")
        );
        nodes[2].wait_ready();
    }
}

/// A client that pipelines NOOPs and never reads a reply, on its own
/// thread; `blocked` turns true once its writes stall (the server stopped
/// reading because its own replies cannot leave), and the thread ends when
/// the server drops the connection.
struct DeafClient {
    blocked: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

fn deaf_client(addr: &str) -> DeafClient {
    use std::io::Write;
    use std::sync::atomic::Ordering;
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_write_timeout(Some(std::time::Duration::from_millis(500)))
        .unwrap();
    let blocked = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = blocked.clone();
    let thread = std::thread::spawn(move || {
        let lines = "NOOP\r\n".repeat(1000);
        // Bounded: 20,000 rounds is far more than any socket buffers.
        for _ in 0..20_000 {
            match s.write(lines.as_bytes()) {
                Ok(_) => {}
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    flag.store(true, Ordering::SeqCst);
                }
                Err(_) => return,
            }
        }
        panic!("wrote 120 MB of NOOPs and the server never stopped reading");
    });
    DeafClient { blocked, thread }
}

#[test]
fn clients_that_never_read_their_replies_are_dropped_at_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let node = mx(
        dir.path(),
        18210,
        "smtpd_timeout_secs = 2\nsmtpd_client_connection_count_limit = 100\n",
    );
    let clients: Vec<DeafClient> = (0..50).map(|_| deaf_client("127.0.0.1:18210")).collect();
    // Each thread ends when the server drops its connection.
    wait_for("the server to drop 50 clients that never read", || {
        clients.iter().all(|c| c.thread.is_finished()).then_some(())
    });
    for c in clients {
        assert!(c.thread.join().is_ok(), "a client was never dropped");
    }
    // The slots are free again: a well-behaved client is served.
    let mut c = session("127.0.0.1:18210");
    assert!(c.cmd("QUIT").unwrap().is(221));
    let log = node.log_text();
    assert!(log.contains("timeout after"), "no timeout logged:\n{log}");
}

#[test]
fn sigterm_is_not_held_by_clients_that_never_read() {
    let dir = tempfile::tempdir().unwrap();
    // The timeout is far away: only shutdown can end these sessions.
    let mut node = mx(
        dir.path(),
        18220,
        "smtpd_timeout_secs = 300\nsmtpd_client_connection_count_limit = 100\n",
    );
    let clients: Vec<DeafClient> = (0..50).map(|_| deaf_client("127.0.0.1:18220")).collect();
    wait_for("50 clients to fill their connections", || {
        clients
            .iter()
            .all(|c| c.blocked.load(std::sync::atomic::Ordering::SeqCst))
            .then_some(())
    });
    let started = std::time::Instant::now();
    let status = node.stop();
    // Reported, not asserted (shared machines are noisy); the issue asks
    // for well under 10 s, and without deadlines this never returns.
    eprintln!(
        "SIGTERM with 50 deaf clients: exited in {:?}",
        started.elapsed()
    );
    assert!(status.success(), "{status:?}");
    for c in clients {
        let _ = c.thread.join();
    }
}
