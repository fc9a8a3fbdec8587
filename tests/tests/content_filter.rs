//! The after-queue content filter (amavis style) end to end: real hamail
//! nodes with `[smtp] content_filter` and `[smtp.reinject] listen`, the
//! filter tests/support/content_filter.py (adds `X-Filtered: yes`, re-injects
//! by SMTP), and the final destination a tests/support/mailsink.py.
//!
//! Ports 18540–18559: cluster RPC 18540 on 127.0.0.1{1,2,3} (SMTP on
//! 20540), the filter on 127.0.0.1:18545, the re-injection listeners on
//! 127.0.0.1{i}:18546, the destination on 127.0.0.39:18547; the single
//! node of the LMTP test on 18550–18553.

use std::io::{BufRead, BufReader};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use hamail_tests::smtp::{SmtpClient, queued_id};
use hamail_tests::{Node, form_cluster_with, wait_for};

const PORT: u16 = 18540;
const FILTER: &str = "127.0.0.1:18545";
const SINK: &str = "127.0.0.39:18547";

fn reinject_addr(i: u8) -> String {
    format!("127.0.0.1{i}:18546")
}

/// A content_filter.py; killed when dropped.
struct Filter {
    child: Child,
}

impl Filter {
    fn start(listen: &str, reinject: &[String], args: &[&str]) -> Filter {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("support/content_filter.py");
        let mut cmd = Command::new("python3");
        cmd.arg(script).args(["--listen", listen]);
        for r in reinject {
            cmd.args(["--reinject", r]);
        }
        let mut child = cmd
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 content_filter.py");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.starts_with("READY"), "filter on {listen}: {line:?}");
        Filter { child }
    }
}

impl Drop for Filter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A mailsink.py destination; killed when dropped.
struct Sink {
    child: Child,
    dir: PathBuf,
}

impl Sink {
    fn start(listen: &str, dir: &Path) -> Sink {
        let dir = dir.join("sink");
        std::fs::create_dir_all(&dir).unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("support/mailsink.py");
        let mut child = Command::new("python3")
            .arg(script)
            .args(["--listen", listen, "--dir"])
            .arg(&dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 mailsink.py");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.starts_with("READY"), "sink on {listen}: {line:?}");
        Sink { child, dir }
    }

    /// Every message received: (sidecar JSON, message text).
    fn messages(&self) -> Vec<(serde_json::Value, String)> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(&self.dir).unwrap().flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "json") {
                let meta: serde_json::Value =
                    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
                let text = std::fs::read_to_string(p.with_extension("eml")).unwrap_or_default();
                out.push((meta, text));
            }
        }
        out
    }

    /// The message whose Subject is `subject`, once it has arrived.
    fn find(&self, subject: &str) -> Option<(serde_json::Value, String)> {
        let header = format!("Subject: {subject}\r\n");
        self.messages()
            .into_iter()
            .find(|(_, text)| text.contains(&header))
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The queue ids of our `Received:` headers in a delivered message, top
/// first.
fn hamail_ids(text: &str) -> Vec<String> {
    text.split("(hamail) with ")
        .skip(1)
        .filter_map(|part| {
            part.split(" id ")
                .nth(1)?
                .split(|c: char| c.is_whitespace() || c == ';')
                .next()
                .map(str::to_string)
        })
        .collect()
}

fn send(addr: &str, to: &[&str], subject: &str) -> String {
    let (mut c, g) = SmtpClient::connect(addr).unwrap();
    assert!(g.is(220), "{g:?}");
    assert!(c.cmd("EHLO client.example").unwrap().is(250));
    let r = c
        .send_mail(
            "sender@client.example",
            to,
            &format!(
                "Subject: {subject}\r\nMessage-ID: <{subject}@client.example>\r\n\r\n{subject}"
            ),
        )
        .unwrap();
    queued_id(&r).unwrap_or_else(|| panic!("not queued: {r:?}"))
}

/// The queue entry `id` as `node` has it (`queue list --json`).
fn entry(node: &Node, id: &str) -> Option<serde_json::Value> {
    node.queue()
        .into_iter()
        .find(|e| e["queue_id"].as_str() == Some(id))
}

/// How many attempts the first recipient of a deferred entry has had.
fn deferred_attempts(e: &serde_json::Value) -> Option<u64> {
    e["recipients"][0]["status"]["deferred"]["attempts"].as_u64()
}

fn logs(nodes: &[Node]) -> String {
    nodes.iter().map(Node::log_text).collect()
}

/// Three nodes, each with the filter on 127.0.0.1:18545 (as each site has
/// its own amavis on localhost) and a re-injection listener. Mail taken by
/// any node goes through the filter and arrives filtered; the filter's
/// way back takes only mynetworks and checks no recipients; with the filter
/// answering 4xx or down the message stays queued — also on the node that
/// takes it over after its owner is killed — and arrives filtered once the
/// filter is back; a 5xx from the filter bounces it.
#[test]
fn every_message_goes_through_the_filter_and_none_around_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let extra = "\n[delivery]\nresolver = \"127.0.0.1:9\"\nlease_secs = 3\nlease_check_interval_secs = 1\n\
                 minimal_backoff_time_secs = 1\nmaximal_backoff_time_secs = 2\nsmtp_connect_timeout_secs = 5\n";
    let mut nodes = form_cluster_with(d, PORT, 3, extra, |i, _, text| {
        *text = text.replacen(
            "[smtp]\n",
            "[smtp]\ncontent_filter = \"smtp:[127.0.0.1]:18545\"\n",
            1,
        );
        text.push_str(&format!(
            "\n[smtp.reinject]\nlisten = \"{}\"\n",
            reinject_addr(i)
        ));
    });
    nodes[0].ok(&["domain", "add", "example.jp", "--kind", "relay"]);
    nodes[0].ok(&["recipient", "add", "user@example.jp"]);
    nodes[0].ok(&["transport", "set", "example.jp", "smtp:[127.0.0.39]:18547"]);
    for n in &nodes {
        wait_for("the transport on every node", || {
            n.ok(&["transport", "list"])
                .contains("127.0.0.39")
                .then_some(())
        });
    }
    let sink = Sink::start(SINK, d);
    let all_reinject: Vec<String> = (1..=3).map(reinject_addr).collect();

    // 1. The filter passes: mail taken by each node arrives filtered, once.
    let filter = Filter::start(FILTER, &all_reinject, &[]);
    let mut originals = Vec::new();
    for i in 1..=3u8 {
        let subject = format!("through-node-{i}");
        let id = send(&Node::smtp_addr(i, PORT), &["user@example.jp"], &subject);
        originals.push((id, subject));
    }
    for (orig, subject) in &originals {
        let (meta, text) = wait_for("the filtered message at the destination", || {
            sink.find(subject)
        });
        assert_eq!(
            text.matches("X-Filtered: yes").count(),
            1,
            "filtered once: {text}"
        );
        assert_eq!(meta["rcpt_to"], serde_json::json!(["user@example.jp"]));
        // Our Received headers: the re-injection's on top, the original's
        // below the filter's header.
        let ids = hamail_ids(&text);
        assert_eq!(ids.len(), 2, "{text}");
        assert_eq!(&ids[1], orig, "{text}");
        let reinjected = &ids[0];
        wait_for(
            "the original's result and the re-injection's log line",
            || {
                let log = logs(&nodes);
                (log.contains(&format!("{reinjected}: orig_queue_id={orig}"))
                && log.contains(&format!(
                    "{orig}: to=<user@example.jp>, relay=127.0.0.1[127.0.0.1]:18545"
                ))
                && log.contains("status=sent (250 2.0.0 from MTA(smtp:[127.0.0.11]:18546): 250 2.0.0 Ok: queued as"))
            .then_some(())
            },
        );
    }
    wait_for("an empty queue", || {
        nodes[1].queue().is_empty().then_some(())
    });

    // 2. The way back checks no recipients (an unknown user passes) and
    // puts no mark (nothing goes to the filter again).
    let (mut c, g) = SmtpClient::connect(&Node::smtp_addr(2, PORT)).unwrap();
    assert!(g.is(220));
    assert!(c.cmd("EHLO client.example").unwrap().is(250));
    let r = c
        .send_mail(
            "sender@client.example",
            &["nobody@example.jp"],
            "Subject: x\r\n\r\nx",
        )
        .unwrap();
    assert!(
        r.is(550) && r.text.contains("5.1.1"),
        "the MX checks recipients: {r:?}"
    );
    let direct = send(&reinject_addr(2), &["nobody@example.jp"], "direct-reinject");
    let (meta, text) = wait_for("the re-injected message at the destination", || {
        sink.find("direct-reinject")
    });
    assert!(
        !text.contains("X-Filtered"),
        "not sent to the filter: {text}"
    );
    assert_eq!(meta["rcpt_to"], serde_json::json!(["nobody@example.jp"]));
    assert!(logs(&nodes).contains(&format!("{direct}: orig_queue_id=none")));

    // 3. A client outside mynetworks gets nothing through the way back.
    let outsider: IpAddr = "127.0.0.99".parse().unwrap();
    let (mut c, g) = SmtpClient::connect_from(outsider, &reinject_addr(2)).unwrap();
    assert!(g.is(220), "{g:?}");
    assert!(c.cmd("EHLO outsider.example").unwrap().is(250));
    assert!(c.cmd("MAIL FROM:<x@outsider.example>").unwrap().is(250));
    let r = c.cmd("RCPT TO:<user@example.jp>").unwrap();
    assert!(
        r.is(554) && r.text.contains("5.7.1") && r.text.contains("Client host rejected"),
        "{r:?}"
    );
    let r = c.cmd("DATA").unwrap();
    assert!(r.is(503), "{r:?}");
    assert!(c.cmd("QUIT").unwrap().is(221));

    // 4. The filter answers 4xx: deferred, kept, never delivered around it.
    drop(filter);
    let filter = Filter::start(FILTER, &all_reinject, &["--mode", "tempfail"]);
    let held_back = send(
        &Node::smtp_addr(1, PORT),
        &["user@example.jp"],
        "while-filter-is-down",
    );
    let e = wait_for("a 4xx from the filter to defer the message", || {
        let e = entry(&nodes[1], &held_back)?;
        let reason = e["recipients"][0]["status"]["deferred"]["reason"].as_str()?;
        reason.contains("451 4.5.0").then_some(e)
    });
    assert_eq!(e["content_filter"], "smtp:[127.0.0.1]:18545", "{e}");
    let mailq = nodes[1].ok(&["queue", "list"]);
    assert!(
        mailq.contains(&held_back) && mailq.contains("(deferred)"),
        "{mailq}"
    );

    // 5. The filter down: still deferred (connection refused).
    drop(filter);
    let before = deferred_attempts(&entry(&nodes[1], &held_back).unwrap()).unwrap();
    wait_for("more attempts with the filter down", || {
        let e = entry(&nodes[1], &held_back)?;
        (deferred_attempts(&e)? >= before + 2).then_some(())
    });

    // 6. Its owner dies: a survivor takes it over, and sends it to the
    // filter too (deferred again while the filter is down).
    nodes[0].kill9();
    let survivors = &nodes[1..];
    wait_for("a survivor to own and try the message", || {
        let e = entry(&survivors[0], &held_back)?;
        let owner = e["owner"].as_u64()?;
        (owner != 1
            && survivors.iter().any(|n| {
                n.log_text().contains(&format!(
                    "{held_back}: to=<user@example.jp>, relay=127.0.0.1[127.0.0.1]:18545"
                ))
            }))
        .then_some(())
    });
    assert!(
        sink.find("while-filter-is-down").is_none(),
        "nothing reaches the destination unfiltered"
    );

    // 7. The filter is back: delivered, filtered.
    let filter = Filter::start(FILTER, &all_reinject, &[]);
    let (_, text) = wait_for("the held-back message, filtered", || {
        sink.find("while-filter-is-down")
    });
    assert_eq!(text.matches("X-Filtered: yes").count(), 1, "{text}");
    let ids = hamail_ids(&text);
    assert_eq!(ids.get(1), Some(&held_back), "{text}");
    wait_for("the survivors' log to name the original", || {
        logs(survivors)
            .contains(&format!("{}: orig_queue_id={held_back}", ids[0]))
            .then_some(())
    });
    wait_for("the original to leave the queue", || {
        entry(&survivors[0], &held_back).is_none().then_some(())
    });

    // 8. The filter answers 5xx: bounced as Postfix would, never delivered.
    drop(filter);
    let _filter = Filter::start(FILTER, &all_reinject, &["--mode", "reject"]);
    let rejected = send(
        &Node::smtp_addr(2, PORT),
        &["user@example.jp"],
        "filter-rejects",
    );
    wait_for("the bounce", || {
        let log = logs(survivors);
        (log.contains(&format!(
            "{rejected}: to=<user@example.jp>, relay=127.0.0.1[127.0.0.1]:18545"
        )) && log.contains("status=bounced")
            && log.contains("554 5.7.0 Rejected by content filter")
            && entry(&survivors[0], &rejected).is_none())
        .then_some(())
    });
    assert!(sink.find("filter-rejects").is_none());
}

/// One node, the filter reached by LMTP: a message for two recipients goes
/// to the filter in one transaction (one reply per recipient) and arrives
/// once, filtered, for both. A filter that never answers leaves the message
/// deferred until it does; one that answers 250 and never re-injects has
/// taken the message (as in Postfix), which the missing `orig_queue_id`
/// line shows.
#[test]
fn an_lmtp_filter_takes_all_recipients_in_one_transaction_and_a_stuck_one_defers() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut node = Node::with_config_extra(
        d,
        "[smtp]\nlisten = [\"127.0.0.1:18550\"]\ncontent_filter = \"lmtp:[127.0.0.1]:18551\"\n\n\
         [smtp.reinject]\nlisten = \"127.0.0.1:18552\"\n\n\
         [delivery]\nresolver = \"127.0.0.1:9\"\nminimal_backoff_time_secs = 1\nmaximal_backoff_time_secs = 2\n\
         smtp_timeout_secs = 2\n",
    );
    node.start();
    node.ok(&["domain", "add", "example.jp", "--kind", "relay"]);
    node.ok(&["recipient", "add", "a@example.jp"]);
    node.ok(&["recipient", "add", "b@example.jp"]);
    node.ok(&["transport", "set", "example.jp", "smtp:[127.0.0.39]:18553"]);
    // Header checks apply where mail comes in, not on the filter's way
    // back (`no_header_body_checks`): the filter's own header would be
    // refused there.
    let checks = d.join("header_checks");
    std::fs::write(
        &checks,
        "/^X-Filtered: yes/ REJECT checked twice\n/^Subject: blocked-on-the-way-in/ REJECT no thanks\n",
    )
    .unwrap();
    node.ok(&["checks", "import", "header", checks.to_str().unwrap()]);
    let sink = Sink::start("127.0.0.39:18553", d);
    let reinject = ["127.0.0.1:18552".to_string()];
    let filter = Filter::start("127.0.0.1:18551", &reinject, &["--lmtp"]);
    let id = send(
        "127.0.0.1:18550",
        &["a@example.jp", "b@example.jp"],
        "two-recipients",
    );
    let (meta, text) = wait_for("the filtered message", || sink.find("two-recipients"));
    assert!(text.contains("X-Filtered: yes"), "{text}");
    assert!(!node.log_text().contains("checked twice"));
    assert_eq!(
        meta["rcpt_to"],
        serde_json::json!(["a@example.jp", "b@example.jp"])
    );
    wait_for("both recipients sent to the filter", || {
        let log = node.log_text();
        ["a@example.jp", "b@example.jp"]
            .iter()
            .all(|r| log.contains(&format!("{id}: to=<{r}>, relay=127.0.0.1[127.0.0.1]:18551")))
            .then_some(())
    });
    assert_eq!(
        sink.messages().len(),
        1,
        "one message, not one per recipient"
    );

    // The same checks: enforced on the MX, not on the way back.
    let (mut c, g) = SmtpClient::connect("127.0.0.1:18550").unwrap();
    assert!(g.is(220));
    assert!(c.cmd("EHLO client.example").unwrap().is(250));
    let r = c
        .send_mail(
            "sender@client.example",
            &["a@example.jp"],
            "Subject: blocked-on-the-way-in\r\n\r\nx",
        )
        .unwrap();
    assert!(r.is(550) && r.text.contains("no thanks"), "{r:?}");
    send(
        "127.0.0.1:18552",
        &["a@example.jp"],
        "blocked-on-the-way-in",
    );
    wait_for("the re-injected message, unchecked", || {
        sink.find("blocked-on-the-way-in")
    });

    // A filter stuck on the message: deferred after smtp_timeout_secs,
    // delivered filtered once it answers again.
    drop(filter);
    let filter = Filter::start("127.0.0.1:18551", &reinject, &["--lmtp", "--mode", "hang"]);
    let stuck = send("127.0.0.1:18550", &["a@example.jp"], "filter-hangs");
    wait_for("the stuck filter to defer the message", || {
        let e = entry(&node, &stuck)?;
        let reason = e["recipients"][0]["status"]["deferred"]["reason"].as_str()?;
        reason.contains("timeout").then_some(())
    });
    assert!(sink.find("filter-hangs").is_none());
    drop(filter);
    let filter = Filter::start("127.0.0.1:18551", &reinject, &["--lmtp"]);
    let (_, text) = wait_for("the message once the filter answers", || {
        sink.find("filter-hangs")
    });
    assert_eq!(text.matches("X-Filtered: yes").count(), 1, "{text}");
    wait_for("the original to leave the queue", || {
        entry(&node, &stuck).is_none().then_some(())
    });

    // A filter that takes the message and never re-injects it: the
    // original is done (sent to the filter), nothing comes back.
    drop(filter);
    let _filter = Filter::start("127.0.0.1:18551", &reinject, &["--lmtp", "--mode", "drop"]);
    let dropped = send("127.0.0.1:18550", &["b@example.jp"], "filter-drops");
    wait_for("the filter's 250 to complete the original", || {
        let log = node.log_text();
        (log.contains(&format!(
            "{dropped}: to=<b@example.jp>, relay=127.0.0.1[127.0.0.1]:18551"
        )) && log.contains("status=sent (250 2.0.0 Ok, discarded)")
            && entry(&node, &dropped).is_none())
        .then_some(())
    });
    assert!(
        !node
            .log_text()
            .contains(&format!("orig_queue_id={dropped}"))
    );
    assert!(sink.find("filter-drops").is_none());
}

/// A filter that re-injects into the MX instead of the re-injection
/// listener (a misconfiguration): each pass is marked for the filter again,
/// until the message carries 50 Received headers and the MX refuses it
/// (554 5.4.0 too many hops, Postfix's hopcount_limit); the filter passes
/// the 5xx on and the last copy bounces. The loop ends, nothing is
/// delivered around the filter.
#[test]
fn a_filter_that_reinjects_into_the_mx_ends_at_the_hop_limit() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut node = Node::with_config_extra(
        d,
        "[smtp]\nlisten = [\"127.0.0.1:18557\"]\ncontent_filter = \"smtp:[127.0.0.1]:18558\"\n\n\
         [delivery]\nresolver = \"127.0.0.1:9\"\n",
    );
    node.start();
    node.ok(&["domain", "add", "example.jp", "--kind", "relay"]);
    node.ok(&["recipient", "add", "user@example.jp"]);
    node.ok(&["transport", "set", "example.jp", "smtp:[127.0.0.39]:18559"]);
    let sink = Sink::start("127.0.0.39:18559", d);
    let _filter = Filter::start("127.0.0.1:18558", &["127.0.0.1:18557".to_string()], &[]);
    send("127.0.0.1:18557", &["user@example.jp"], "looping");
    wait_for("the loop to end in a bounce", || {
        let log = node.log_text();
        let queue = node.queue();
        (log.contains("too many hops")
            && log.contains("status=bounced")
            && log.contains("554 5.4.0 Error: too many hops")
            && !queue.is_empty()
            && queue.iter().all(|e| e["sender"].is_null()))
        .then_some(())
    });
    let log = node.log_text();
    let passes = log.matches("relay=127.0.0.1[127.0.0.1]:18558").count();
    assert_eq!(passes, 49, "one pass per hop below the limit");
    assert!(
        sink.find("looping").is_none(),
        "nothing delivered around the filter"
    );
}

/// A content filter Postfix's way but with a transport hamail does not
/// have, or pointing at our own MX, is refused at start with the key named.
#[test]
fn a_bad_content_filter_is_refused_with_its_key() {
    let dir = tempfile::tempdir().unwrap();
    for (i, (value, words)) in [
        ("amavis:[127.0.0.1]:10026", "smtp:[host]:port"),
        ("smtp:[127.0.0.1]", "smtp:[host]:port"),
        ("smtp:[127.0.0.1]:18556", "loop"),
    ]
    .iter()
    .enumerate()
    {
        let d = dir.path().join(format!("c{i}"));
        std::fs::create_dir_all(&d).unwrap();
        let node = Node::with_config_extra(
            &d,
            &format!("[smtp]\nlisten = [\"127.0.0.1:18556\"]\ncontent_filter = \"{value}\"\n"),
        );
        let out = node.command().arg("serve").output().unwrap();
        assert!(!out.status.success(), "{value} accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("smtp.content_filter") && err.contains(words),
            "{value}: {err}"
        );
    }
}
