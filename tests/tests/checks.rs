//! Header and body checks, replicated: a Postfix header_checks file like
//! scenario 4's imported on one node of three, then mail sent with swaks to
//! every node meets the same rules — REJECT refused with its text and
//! nothing queued, HOLD held in `queue list`, IGNORE/REPLACE/PREPEND seen in
//! the delivered message, DISCARD accepted and dropped — and a bad file is
//! refused naming its line, the table unchanged.

use std::path::Path;
use std::process::Command;

use hamail_tests::{Node, form_cluster, stderr, stdout, wait_for};

/// Cluster RPC port of this file's cluster (DNS +1000, SMTP +2000,
/// submission +3000, submissions +4000).
const PORT: u16 = 18500;

const HEADER_CHECKS: &str = "\
# /etc/postfix/header_checks, as scenario 4 keeps it
/^Subject:.*(viagra|cialis)/        REJECT Spam is not accepted here
/^Subject:.*please hold/            HOLD held for review
/^X-Mailer:/                        IGNORE
/^Subject: \\[ext\\] (.*)$/          REPLACE Subject: $1
if /^From:/
/@partner\\.example>?$/              PREPEND X-Partner: yes
endif
/^Subject:.*just warn/              WARN
  warned by rule
";

const BODY_CHECKS: &str = "\
/^drop this message$/   DISCARD dropped by body checks
/^secret: (.*)$/        REPLACE secret: [removed]
";

/// swaks to node `i`: the whole conversation as it printed it.
fn swaks(i: u8, from: &str, subject: &str, body: &str) -> (bool, String) {
    let out = Command::new("swaks")
        .args(["--timeout", "60", "--server"])
        .arg(Node::smtp_addr(i, PORT))
        .args(["--helo", "client.example", "--from", from])
        .args(["--to", "user@example.com", "--header"])
        .arg(format!("Subject: {subject}"))
        .args(["--body", body])
        .output()
        .expect("swaks runs");
    (
        out.status.success(),
        format!("{}{}", stdout(&out), stderr(&out)),
    )
}

fn queued_id(conversation: &str) -> String {
    conversation
        .split("queued as ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("not queued:\n{conversation}"))
        .to_string()
}

/// The messages in the Maildir's new/ directory.
fn maildir(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir.join("new"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .collect()
        })
        .unwrap_or_default()
}

fn headers(message: &str) -> Vec<&str> {
    message
        .split("\r\n\r\n")
        .next()
        .unwrap_or("")
        .lines()
        .collect()
}

#[test]
fn a_postfix_header_checks_file_applies_on_every_node() {
    hamail_tests::ensure_tool("swaks", "swaks");
    let dir = tempfile::tempdir().unwrap();
    let mailboxes = dir.path().join("mailboxes");
    let nodes = form_cluster(dir.path(), PORT, 3, "");
    nodes[0].ok(&["domain", "add", "example.com", "--kind", "local"]);
    nodes[0].ok(&["recipient", "add", "user@example.com"]);
    nodes[0].ok(&[
        "transport",
        "set",
        "example.com",
        &format!("maildir:{}", mailboxes.display()),
    ]);
    let header_file = dir.path().join("header_checks");
    std::fs::write(&header_file, HEADER_CHECKS).unwrap();
    let body_file = dir.path().join("body_checks");
    std::fs::write(&body_file, BODY_CHECKS).unwrap();
    let out = nodes[0].ok(&["checks", "import", "header", header_file.to_str().unwrap()]);
    assert!(out.contains("header_checks table replaced"), "{out}");
    let out = nodes[1].ok(&["checks", "import", "body", body_file.to_str().unwrap()]);
    assert!(out.contains("body_checks table replaced"), "{out}");

    // Every node has both tables, the same rules, once it has applied them.
    let listing = nodes[0].json(&["checks", "list", "--json"]);
    assert_eq!(listing.as_array().map(Vec::len), Some(2), "{listing}");
    assert_eq!(listing[0]["source"], HEADER_CHECKS);
    let rules: Vec<u64> = listing[0]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["line"].as_u64().unwrap())
        .collect();
    assert_eq!(rules, vec![2, 3, 4, 5, 7, 9], "{listing}");
    for n in &nodes[1..] {
        wait_for("the checks on every node", || {
            (n.json(&["checks", "list", "--json"]) == listing).then_some(())
        });
        wait_for("the transport on every node", || {
            n.ok(&["transport", "list"])
                .contains("example.com")
                .then_some(())
        });
    }
    let list = nodes[2].ok(&["checks", "list", "header"]);
    assert!(
        list.contains("line 2: /^Subject:.*(viagra|cialis)/ REJECT Spam is not accepted here"),
        "{list}"
    );

    // checks test names the rule, or says there is none.
    let t = nodes[1].ok(&["checks", "test", "header", "Subject: cheap VIAGRA"]);
    assert!(
        t.contains("line 2: /^Subject:.*(viagra|cialis)/ REJECT Spam is not accepted here"),
        "{t}"
    );
    let t = nodes[2].ok(&["checks", "test", "header", "Subject: [ext] hello there"]);
    assert!(
        t.contains("line 5:") && t.contains("text: Subject: hello there"),
        "{t}"
    );
    let t = nodes[2].ok(&["checks", "test", "header", "From: <a@partner.example>"]);
    assert!(
        t.contains("line 7:") && t.contains("inside the if on line 6"),
        "{t}"
    );
    let t = nodes[0].ok(&["checks", "test", "header", "Subject: hello"]);
    assert_eq!(t.trim(), "no match");
    let t = nodes[0].ok(&["checks", "test", "body", "secret: 1234"]);
    assert!(t.contains("line 2:") && t.contains("REPLACE"), "{t}");

    // A bad file: refused, its line named, nothing changed anywhere.
    let bad = dir.path().join("bad_checks");
    std::fs::write(
        &bad,
        "/^Subject: ok/ DUNNO\n# fine so far\n/^Subject: (x/ REJECT broken\n",
    )
    .unwrap();
    let o = nodes[2].cli(&["checks", "import", "header", bad.to_str().unwrap()]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("line 3") && e.contains("nothing imported") && e.contains("bad_checks"),
        "{e}"
    );
    std::fs::write(&bad, "/^Subject: ok/ DUNNO\nif /^From:/\n/x/ WARN\n").unwrap();
    let e = stderr(&nodes[0].cli(&["checks", "import", "header", bad.to_str().unwrap()]));
    assert!(e.contains("line 2") && e.contains("without endif"), "{e}");
    std::fs::write(&bad, "/^Subject:/ FROBNICATE\n").unwrap();
    let e = stderr(&nodes[1].cli(&["checks", "import", "header", bad.to_str().unwrap()]));
    assert!(e.contains("line 1") && e.contains("unknown action"), "{e}");
    std::fs::write(&bad, "/(?<=x)a/ REJECT\n").unwrap();
    let e = stderr(&nodes[1].cli(&["checks", "import", "body", bad.to_str().unwrap()]));
    assert!(e.contains("line 1") && e.contains("look-ahead"), "{e}");
    for n in &nodes {
        assert_eq!(n.json(&["checks", "list", "--json"]), listing);
    }

    let inbox = mailboxes.join("example.com/user");
    let mut delivered = 0;
    for i in 1..=3u8 {
        // REJECT: 550 5.7.1 with the text; nothing queued, nothing delivered.
        let before = nodes[0].queue_ids();
        let (ok, conv) = swaks(i, "a@client.example", &format!("cheap viagra {i}"), "hi");
        assert!(!ok, "{conv}");
        assert!(
            conv.contains("<** 550 5.7.1 Spam is not accepted here"),
            "{conv}"
        );
        assert_eq!(nodes[0].queue_ids(), before);
        let log = nodes[i as usize - 1].log_text();
        let line = format!("reject: header Subject: cheap viagra {i} from unknown[127.0.0.1");
        let logged = log
            .lines()
            .find(|l| l.contains(&line))
            .unwrap_or_else(|| panic!("no reject line in the log of n{i}:\n{log}"));
        assert!(
            logged.contains(
                "; from=<a@client.example> to=<user@example.com> proto=ESMTP helo=<client.example>: 5.7.1 Spam is not accepted here"
            ),
            "{logged}"
        );

        // HOLD: queued on hold, on every node's view of the queue.
        let (ok, conv) = swaks(i, "a@client.example", &format!("please hold {i}"), "hi");
        assert!(ok, "{conv}");
        let id = queued_id(&conv);
        for n in &nodes {
            wait_for("the held message in every queue", || {
                n.queue()
                    .into_iter()
                    .find(|e| e["queue_id"] == id.as_str())
                    .map(|e| assert_eq!(e["held"], true, "{e}"))
            });
        }
        let mailq = nodes[0].ok(&["queue", "list"]);
        assert!(mailq.contains(&format!("{id}!")), "{mailq}");
        assert!(
            nodes[i as usize - 1].log_text().contains(&format!(
                "{id}: hold: header Subject: please hold {i} from unknown["
            )),
            "no hold line"
        );

        // IGNORE, REPLACE, PREPEND, a body REPLACE: in the delivered message.
        let (ok, conv) = swaks(
            i,
            "b@partner.example",
            &format!("[ext] rewritten {i}"),
            "line one\nsecret: 1234\nline three",
        );
        assert!(ok, "{conv}");
        let id = queued_id(&conv);
        delivered += 1;
        let messages = wait_for("the rewritten message delivered", || {
            let m = maildir(&inbox);
            (m.len() == delivered).then_some(m)
        });
        let m = messages
            .iter()
            .find(|m| m.contains(&id))
            .unwrap_or_else(|| panic!("{id} not in the mailbox: {messages:?}"));
        let h = headers(m);
        assert!(
            h.contains(&format!("Subject: rewritten {i}").as_str()),
            "{m}"
        );
        assert!(!m.contains("[ext]"), "{m}");
        assert!(!m.to_ascii_lowercase().contains("x-mailer:"), "{m}");
        let partner = h.iter().position(|l| *l == "X-Partner: yes");
        let from = h.iter().position(|l| l.starts_with("From: "));
        assert!(
            partner.is_some() && partner.map(|p| p + 1) == from,
            "X-Partner not just before From: {m}"
        );
        assert!(
            m.contains("\r\nsecret: [removed]\r\n") && !m.contains("1234"),
            "{m}"
        );

        // WARN: delivered as it is, a warning logged.
        let (ok, conv) = swaks(i, "a@client.example", &format!("just warn {i}"), "hi");
        assert!(ok, "{conv}");
        delivered += 1;
        wait_for("the warned message delivered", || {
            (maildir(&inbox).len() == delivered).then_some(())
        });
        let log = nodes[i as usize - 1].log_text();
        assert!(
            log.contains(&format!(
                "warning: header Subject: just warn {i} from unknown[127.0.0.1]"
            )) && log.contains("helo=<client.example>: warned by rule"),
            "no warning line in the log of n{i}:\n{log}"
        );

        // DISCARD: 250 towards the client, never queued nor delivered.
        let (ok, conv) = swaks(i, "a@client.example", "to drop", "drop this message");
        assert!(ok, "{conv}");
        let id = queued_id(&conv);
        assert!(!nodes[0].queue_ids().contains(&id));
        assert!(
            nodes[i as usize - 1].log_text().contains(&format!(
                "{id}: discard: body drop this message from unknown["
            )),
            "no discard line"
        );
    }
    // Nothing else arrived (the discarded and held messages stay out).
    let held = nodes[0]
        .queue()
        .iter()
        .filter(|e| e["held"] == true)
        .count();
    assert_eq!(held, 3);
    assert_eq!(maildir(&inbox).len(), delivered);

    // Cleared on one node: the rules are gone everywhere.
    nodes[2].ok(&["checks", "clear", "header"]);
    for n in &nodes {
        wait_for("the header table gone on every node", || {
            let l = n.json(&["checks", "list", "--json"]);
            (l.as_array()?.len() == 1 && l[0]["kind"] == "body").then_some(())
        });
    }
    let (ok, conv) = swaks(2, "a@client.example", "cheap viagra again", "hi");
    assert!(ok, "{conv}");
}
