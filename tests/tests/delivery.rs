//! Delivery end to end: the setups of SCENARIOS.md on real processes.
//! Destinations are tests/support/mailsink.py servers on 127.0.0.3x (a
//! submission server with STARTTLS + AUTH, rejecting, tempfailing, LMTP),
//! MX records come from hamail's own DNS, and DSNs land in a Maildir.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use hamail_tests::smtp::{SmtpClient, queued_id};
use hamail_tests::{Node, form_cluster, wait_for};

/// A mailsink.py destination; stopped when dropped.
struct Sink {
    child: Child,
    dir: PathBuf,
}

impl Sink {
    fn start(listen: &str, dir: &Path, args: &[&str]) -> Sink {
        Self::start_in(None, listen, dir, args)
    }

    /// `start`, inside the network namespace `netns` when there is one.
    fn start_in(netns: Option<&str>, listen: &str, dir: &Path, args: &[&str]) -> Sink {
        let dir = dir.join(format!("sink-{}", listen.replace([':', '.'], "_")));
        std::fs::create_dir_all(&dir).unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("support/mailsink.py");
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "python3"]);
                c
            }
            None => Command::new("python3"),
        };
        let mut child = cmd
            .arg(script)
            .args(["--listen", listen, "--dir"])
            .arg(&dir)
            .args(args)
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

    fn count(&self) -> usize {
        self.messages().len()
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The queue id in our `Received:` header of a delivered message.
fn hamail_id(text: &str) -> Option<String> {
    text.split("(hamail) with ")
        .nth(1)?
        .split(" id ")
        .nth(1)?
        .split_whitespace()
        .next()
        .map(str::to_string)
}

fn send(addr: &str, from: &str, to: &[&str], subject: &str) -> String {
    let (mut c, g) = SmtpClient::connect(addr).unwrap();
    assert!(g.is(220), "{g:?}");
    assert!(c.cmd("EHLO client.example").unwrap().is(250));
    let r = c
        .send_mail(
            from,
            to,
            &format!(
                "Subject: {subject}\r\nMessage-ID: <{subject}@client.example>\r\n\r\n{subject}"
            ),
        )
        .unwrap();
    queued_id(&r).unwrap_or_else(|| panic!("not queued: {r:?}"))
}

fn queue_len(node: &Node) -> usize {
    node.queue().len()
}

/// Files in a Maildir's new/ directory.
fn maildir(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir.join("new"))
        .map(|d| {
            d.flatten()
                .map(|e| std::fs::read_to_string(e.path()).unwrap())
                .collect()
        })
        .unwrap_or_default()
}

const ZONE: &str = "$ORIGIN dest.example.\n$TTL 60\n\
@ IN SOA ns1 hostmaster 1 3600 600 86400 60\n\
@ IN NS ns1\nns1 IN A 127.0.0.11\n\
@ IN MX 10 mx1\n@ IN MX 10 mx2\nmx1 IN A 127.0.0.34\nmx2 IN A 127.0.0.35\n";

#[test]
fn the_scenarios_deliver_as_a_postfix_operator_expects() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let rpc = 17610;
    let dns = Node::dns_port(rpc);
    let sasl = d.join("sasl_passwd");
    std::fs::write(&sasl, "[primary.example.jp]:2628 u:secret\n").unwrap();
    std::fs::set_permissions(&sasl, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let extra = format!(
        "\n[delivery]\nresolver = \"127.0.0.11:{dns}\"\nsmtp_port = 2627\n\
         minimal_backoff_time_secs = 1\nmaximal_backoff_time_secs = 2\n\
         smtp_connect_timeout_secs = 5\nsmtp_timeout_secs = 20\n\
         smtp_sasl_password_maps = \"{}\"\n\
         smtp_tls_policy = {{ \"[primary.example.jp]:2628\" = \"encrypt\" }}\n",
        sasl.display()
    );
    // Three sites; mail comes in at all three, and each delivers its own.
    let nodes = form_cluster(d, rpc, 3, &extra);
    let n = &nodes[0];
    let smtp = Node::smtp_addr(1, rpc);
    let site = |i: usize| Node::smtp_addr((i % 3) as u8 + 1, rpc);

    // The primary MX: submission with STARTTLS and AUTH required (587 in
    // production; 2628 here), like Postfix with smtpd_tls_auth_only.
    let cert = d.join("primary.pem");
    let primary = Sink::start(
        "127.0.0.31:2628",
        d,
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--require-tls",
            "--auth",
            "u:secret",
            "--name",
            "primary.example.jp",
        ],
    );
    let fallback = Sink::start("127.0.0.33:2627", d, &[]);
    let mx1 = Sink::start("127.0.0.34:2627", d, &[]);
    let mx2 = Sink::start("127.0.0.35:2627", d, &[]);
    let reject = Sink::start("127.0.0.36:2627", d, &["--reject-rcpt", "550"]);
    let tempfail = Sink::start("127.0.0.37:2627", d, &["--tempfail-data", "1"]);
    let lmtp = Sink::start(
        "127.0.0.39:2627",
        d,
        &["--lmtp", "--lmtp-fail-rcpt", "550:gone@lmtp.example"],
    );

    // DNS: primary.example.jp, dest.example with two equal MXes, a null MX.
    let z = d.join("dest.zone");
    std::fs::write(&z, ZONE).unwrap();
    n.ok(&["zone", "add", "dest.example", "--file", z.to_str().unwrap()]);
    n.ok(&["zone", "add", "example.jp"]);
    n.ok(&["record", "add", "example.jp", "primary 60 IN A 127.0.0.31"]);
    n.ok(&["zone", "add", "nullmx.example"]);
    n.ok(&["record", "add", "nullmx.example", "@ 60 IN MX 0 ."]);

    // Tables: the backup-MX relay domain and its route with SASL; others.
    let mailboxes = d.join("mail");
    for (domain, kind, transport) in [
        (
            "example.jp",
            "relay",
            "smtp:[primary.example.jp]:2628".to_string(),
        ),
        (
            "client.example",
            "local",
            format!("maildir:{}", mailboxes.display()),
        ),
        ("relay.example", "relay", "smtp:[127.0.0.32]:2627".into()),
        ("reject.example", "relay", "smtp:[127.0.0.36]:2627".into()),
        ("tempfail.example", "relay", "smtp:[127.0.0.37]:2627".into()),
        ("lmtp.example", "local", "lmtp:127.0.0.39:2627".into()),
    ] {
        n.ok(&["domain", "add", domain, "--kind", kind]);
        let mut args = vec!["transport", "set", domain, transport.as_str()];
        if domain == "relay.example" {
            // The primary route is down: the fallback takes it.
            args.extend(["--fallback", "smtp:[127.0.0.33]:2627"]);
        }
        n.ok(&args);
    }
    for r in [
        "user@example.jp",
        "sender@client.example",
        "a@relay.example",
        "u@reject.example",
        "u@tempfail.example",
        "box@lmtp.example",
        "gone@lmtp.example",
    ] {
        n.ok(&["recipient", "add", r]);
    }

    let from = "sender@client.example";
    for node in &nodes {
        wait_for("the tables on every node", || {
            node.ok(&["recipient", "list"])
                .contains("gone@lmtp.example")
                .then_some(())
        });
    }
    let sasl_id = send(&site(1), from, &["user@example.jp"], "to-primary");
    let fb_id = send(&site(2), from, &["a@relay.example"], "to-fallback");
    let mx_ids: Vec<String> = (0..20)
        .map(|i| send(&site(i), from, &["x@dest.example"], &format!("mx-{i}")))
        .collect();
    let bounce_id = send(&smtp, from, &["u@reject.example"], "to-reject");
    let retry_id = send(&smtp, from, &["u@tempfail.example"], "to-tempfail");
    let null_id = send(&smtp, from, &["u@nullmx.example"], "to-nullmx");
    let lmtp_id = send(
        &smtp,
        from,
        &["box@lmtp.example", "gone@lmtp.example"],
        "to-lmtp",
    );
    // A bounce of a bounce is never made.
    let (mut c, _) = SmtpClient::connect(&smtp).unwrap();
    c.cmd("EHLO client.example").unwrap();
    let r = c
        .send_mail("", &["u@reject.example"], "Subject: null-sender\r\n\r\nx")
        .unwrap();
    assert!(queued_id(&r).is_some(), "{r:?}");

    for node in &nodes {
        wait_for("the queue to empty", || {
            (queue_len(node) == 0).then_some(())
        });
    }

    // 1. Backup MX -> primary over "587" with STARTTLS and SASL.
    let got = primary.messages();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].0["tls"], true);
    assert_eq!(got[0].0["auth_user"], "u");
    assert_eq!(got[0].0["rcpt_to"][0], "user@example.jp");
    assert_eq!(hamail_id(&got[0].1).as_deref(), Some(sasl_id.as_str()));
    // 2. Primary route down: the fallback relay gets it.
    assert_eq!(fallback.count(), 1);
    assert_eq!(
        hamail_id(&fallback.messages()[0].1).as_deref(),
        Some(fb_id.as_str())
    );
    // 3. Equal-preference MXes share the load.
    let (a, b) = (mx1.count(), mx2.count());
    assert_eq!(a + b, mx_ids.len());
    assert!(a > 0 && b > 0, "MX 10 mx1 / MX 10 mx2 got {a} / {b}");
    // 5. 451 at the end of DATA: deferred, then delivered on the retry.
    assert_eq!(tempfail.count(), 1);
    // LMTP: one status per recipient.
    let l = lmtp.messages();
    assert_eq!(l.len(), 1);
    assert_eq!(reject.count(), 0);

    // 4 and 6: one DSN per bounced message, to the sender, from <>.
    let dsns = maildir(&mailboxes.join("client.example/sender"));
    assert_eq!(dsns.len(), 3, "DSNs for reject, nullmx and lmtp: {dsns:#?}");
    let find = |id: &str| {
        dsns.iter()
            .find(|m| m.contains(&format!("X-Hamail-Queue-ID: {id}")))
            .unwrap_or_else(|| panic!("no DSN for {id}"))
            .clone()
    };
    let dsn = find(&bounce_id);
    assert!(dsn.contains("Content-Type: multipart/report; report-type=delivery-status"));
    assert!(dsn.contains("Final-Recipient: rfc822; u@reject.example"));
    assert!(dsn.contains("Status: 5.1.1"));
    assert!(
        dsn.contains("Subject: to-reject"),
        "original headers: {dsn}"
    );
    assert!(find(&null_id).contains("nullMX"));
    let dsn = find(&lmtp_id);
    assert!(dsn.contains("Final-Recipient: rfc822; gone@lmtp.example"));
    assert!(!dsn.contains("Final-Recipient: rfc822; box@lmtp.example"));

    let log: String = nodes.iter().map(|n| n.log_text()).collect();
    for want in [
        format!("{sasl_id}: to=<user@example.jp>, relay=primary.example.jp[127.0.0.31]:2628"),
        format!("{retry_id}: to=<u@tempfail.example>, relay=127.0.0.37[127.0.0.37]:2627"),
        format!("{sasl_id}: removed"),
        format!("{bounce_id}: sender non-delivery notification:"),
    ] {
        assert!(log.contains(&want), "log lacks {want:?}");
    }
    assert!(
        log.contains("dsn=4.3.0, status=deferred"),
        "the 451 was deferred"
    );
    assert!(log.contains("status=bounced"), "bounces are logged");
}

#[test]
fn a_password_map_readable_by_others_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let map = dir.path().join("sasl_passwd");
    std::fs::write(&map, "[relay.example]:587 u:p\n").unwrap();
    std::fs::set_permissions(&map, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let node = Node::with_config_extra(
        dir.path(),
        &format!(
            "[delivery]\nsmtp_sasl_password_maps = \"{}\"\n",
            map.display()
        ),
    );
    let out = node.command().arg("serve").output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("smtp_sasl_password_maps") && err.contains("chmod 600"),
        "{err}"
    );
}

/// Three nodes; 1,000 messages accepted by node 1 for a destination that
/// is down; node 1 is killed; the destination comes up: the survivors take
/// over node 1's messages (after the lease) and deliver every one.
#[test]
fn the_queue_of_a_killed_node_is_delivered_by_the_survivors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let rpc = 17630;
    let extra = "\n[delivery]\nresolver = \"127.0.0.1:9\"\nlease_secs = 3\nlease_check_interval_secs = 1\n\
                 minimal_backoff_time_secs = 1\nmaximal_backoff_time_secs = 2\nsmtp_connect_timeout_secs = 5\n";
    let mut nodes = form_cluster(d, rpc, 3, extra);
    nodes[0].ok(&["domain", "add", "example.jp", "--kind", "relay"]);
    nodes[0].ok(&["recipient", "add", "user@example.jp"]);
    nodes[0].ok(&["transport", "set", "example.jp", "smtp:[127.0.0.38]:2627"]);
    for n in &nodes {
        wait_for("the transport on every node", || {
            n.ok(&["transport", "list"])
                .contains("127.0.0.38")
                .then_some(())
        });
    }
    let target = Node::smtp_addr(1, rpc);
    wait_for("node 1 to take mail", || {
        let (_, g) = SmtpClient::connect(&target).ok()?;
        g.is(220).then_some(())
    });
    let status = Command::new("/usr/sbin/smtp-source")
        .args(["-s", "20", "-m", "1000", "-l", "1024"])
        .args(["-f", "sender@client.example", "-t", "user@example.jp"])
        .arg(&target)
        .status()
        .unwrap();
    assert!(status.success());
    // All 1,000 known to node 2, owned by node 1, tried and deferred.
    let owned_by_1 = |n: &Node| n.queue().iter().filter(|e| e["owner"] == 1).count();
    wait_for("1,000 messages of node 1 on node 2", || {
        (owned_by_1(&nodes[1]) == 1000).then_some(())
    });
    wait_for("node 1 to have tried them", || {
        nodes[0]
            .log_text()
            .contains("status=deferred")
            .then_some(())
    });
    nodes[0].kill9();

    let sink = Sink::start("127.0.0.38:2627", d, &[]);
    wait_for("the survivors to deliver everything", || {
        (queue_len(&nodes[1]) == 0 && sink.count() >= 1000).then_some(())
    });
    let mut per_id: BTreeMap<String, usize> = BTreeMap::new();
    for (_, text) in sink.messages() {
        *per_id
            .entry(hamail_id(&text).expect("our Received header"))
            .or_default() += 1;
    }
    let duplicates: usize = per_id.values().map(|n| n - 1).sum();
    eprintln!(
        "survivors delivered {} distinct messages of the killed node, {duplicates} duplicates",
        per_id.len()
    );
    assert_eq!(per_id.len(), 1000, "lost messages");
    assert_eq!(duplicates, 0, "nothing was in flight when node 1 died");
    let log = format!("{}{}", nodes[1].log_text(), nodes[2].log_text());
    assert!(
        log.contains("node 1 unreachable for over 3 s"),
        "a hand-over was logged"
    );
}

/// A private server started by a tests/support script; stopped on drop.
struct Peer {
    script: PathBuf,
    dir: PathBuf,
}

impl Peer {
    fn start(script: &str, dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Peer {
        let script = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("support")
            .join(script);
        // Output to a file, not a pipe: the daemon it starts keeps its
        // descriptors, and a pipe would never close.
        let log = dir.with_extension("start.log");
        let file = std::fs::File::create(&log).unwrap();
        let status = Command::new("bash")
            .arg(&script)
            .arg("start")
            .arg(dir)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .status()
            .unwrap();
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(
            status.success() && text.contains("READY"),
            "{} failed: {text}",
            script.display()
        );
        Peer {
            script,
            dir: dir.to_path_buf(),
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(&self.script)
            .arg("stop")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Real peers: Dovecot's LMTP (one status per recipient) and Postfix
/// itself as the final destinations.
#[test]
fn dovecot_lmtp_and_postfix_take_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Dovecot and Postfix deliver as unprivileged users.
    std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let dovecot = Peer::start(
        "dovecot-lmtp.sh",
        &d.join("dc"),
        &["127.0.0.52:2425"],
        &[("LMTP_USERS", "box@lmtp.example other@lmtp.example")],
    );
    let postfix = Peer::start(
        "postfix-dest.sh",
        &d.join("pf"),
        &["127.0.0.62:2526", "dest2.example"],
        &[],
    );
    let rpc = 17650;
    let extra = "\n[delivery]\nresolver = \"127.0.0.1:9\"\nminimal_backoff_time_secs = 1\n\
                 maximal_backoff_time_secs = 2\nsmtp_connect_timeout_secs = 5\n";
    let nodes = form_cluster(d, rpc, 1, extra);
    let n = &nodes[0];
    let mailboxes = d.join("mail");
    for (domain, kind, transport) in [
        ("lmtp.example", "local", "lmtp:127.0.0.52:2425".to_string()),
        ("dest2.example", "relay", "smtp:[127.0.0.62]:2526".into()),
        (
            "client.example",
            "local",
            format!("maildir:{}", mailboxes.display()),
        ),
    ] {
        n.ok(&["domain", "add", domain, "--kind", kind]);
        n.ok(&["transport", "set", domain, &transport]);
    }
    for r in [
        "box@lmtp.example",
        "nosuchuser@lmtp.example",
        "anyone@dest2.example",
        "sender@client.example",
    ] {
        n.ok(&["recipient", "add", r]);
    }
    let smtp = Node::smtp_addr(1, rpc);
    let lmtp_id = send(
        &smtp,
        "sender@client.example",
        &["box@lmtp.example", "nosuchuser@lmtp.example"],
        "to-dovecot",
    );
    let pf_id = send(
        &smtp,
        "sender@client.example",
        &["anyone@dest2.example"],
        "to-postfix",
    );
    wait_for("the queue to empty", || (queue_len(n) == 0).then_some(()));

    let in_dovecot = maildir(&dovecot.dir.join("mail/lmtp.example/box"));
    assert_eq!(in_dovecot.len(), 1);
    assert!(in_dovecot[0].contains(&format!("id {lmtp_id}")));
    let in_postfix = maildir(&postfix.dir.join("mail/dest2.example/all"));
    assert_eq!(in_postfix.len(), 1);
    assert!(in_postfix[0].contains(&format!("id {pf_id}")));
    // Dovecot refused nosuchuser: one DSN, for that recipient only.
    let dsns = maildir(&mailboxes.join("client.example/sender"));
    assert_eq!(dsns.len(), 1, "{dsns:#?}");
    assert!(dsns[0].contains("Final-Recipient: rfc822; nosuchuser@lmtp.example"));
    assert!(dsns[0].contains("Status: 5.1.1"));
}

/// The status name of each recipient of a queued message (None: gone).
fn states(node: &Node, id: &str) -> Option<Vec<String>> {
    let q = node.queue();
    let e = q.iter().find(|e| e["queue_id"] == id)?;
    Some(
        e["recipients"]
            .as_array()?
            .iter()
            .map(|r| match &r["status"] {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Object(o) => o.keys().next().cloned().unwrap_or_default(),
                _ => String::new(),
            })
            .collect(),
    )
}

/// Broken remote servers: each is bounded by a timeout and deferred (or,
/// for STARTTLS under `may`, retried in the clear); MX records pointing at
/// ourselves, at nothing, or through a CNAME.
#[test]
fn broken_destinations_are_deferred_never_lost() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let rpc = 17670;
    let dns = Node::dns_port(rpc);
    let our_smtp = Node::smtp_port(rpc);
    let extra = format!(
        "\n[delivery]\nresolver = \"127.0.0.11:{dns}\"\nsmtp_port = {our_smtp}\n\
         minimal_backoff_time_secs = 1\nmaximal_backoff_time_secs = 2\n\
         smtp_connect_timeout_secs = 2\nsmtp_timeout_secs = 2\n\
         smtp_tls_policy = {{ \"[127.0.0.47]:2701\" = \"encrypt\" }}\n"
    );
    let nodes = form_cluster(d, rpc, 1, &extra);
    let n = &nodes[0];
    let sinks: Vec<Sink> = [
        ("127.0.0.41:2701", vec!["--hang-greeting"]),
        ("127.0.0.42:2701", vec!["--hang-after-data"]),
        ("127.0.0.43:2701", vec!["--drop-after-data"]),
        (
            "127.0.0.44:2701",
            vec!["--garbage-reply", "ehlo", "--garbage-style", "multiline"],
        ),
        ("127.0.0.45:2701", vec!["--garbage-reply", "greeting"]),
        ("127.0.0.46:2701", vec!["--bad-starttls"]),
        ("127.0.0.47:2701", vec!["--bad-starttls"]),
        ("127.0.0.49:2701", vec!["--no-8bitmime"]),
    ]
    .iter()
    .map(|(l, a)| Sink::start(l, d, a))
    .collect();
    let cname_sink = Sink::start(&format!("127.0.0.48:{our_smtp}"), d, &[]);

    let zone = "$ORIGIN t.example.\n$TTL 60\n@ IN SOA ns1 hostmaster 1 3600 600 86400 60\n\
         @ IN NS ns1\nns1 IN A 127.0.0.11\n\
         loop IN MX 10 mx.loop\nmx.loop IN A 127.0.0.11\n\
         nowhere IN MX 10 nothing.nowhere\n\
         cname IN MX 10 alias.cname\nalias.cname IN CNAME real.cname\nreal.cname IN A 127.0.0.48\n";
    let z = d.join("t.zone");
    std::fs::write(&z, zone).unwrap();
    n.ok(&["zone", "add", "t.example", "--file", z.to_str().unwrap()]);
    let routes = [
        ("hang.example", "127.0.0.41"),
        ("hangdata.example", "127.0.0.42"),
        ("drop.example", "127.0.0.43"),
        ("junk.example", "127.0.0.44"),
        ("junkgreet.example", "127.0.0.45"),
        ("tlsmay.example", "127.0.0.46"),
        ("tlsmust.example", "127.0.0.47"),
        ("seven.example", "127.0.0.49"),
    ];
    let mut ids = BTreeMap::new();
    let smtp = Node::smtp_addr(1, rpc);
    for (domain, ip) in routes {
        n.ok(&["domain", "add", domain, "--kind", "relay"]);
        n.ok(&["transport", "set", domain, &format!("smtp:[{ip}]:2701")]);
        n.ok(&["recipient", "add", &format!("u@{domain}")]);
    }
    for (domain, _) in routes {
        // The server without 8BITMIME gets an 8-bit message.
        let subject = if domain == "seven.example" {
            "seven-\u{e9}"
        } else {
            domain
        };
        ids.insert(
            domain,
            send(
                &smtp,
                "s@client.example",
                &[&format!("u@{domain}")],
                subject,
            ),
        );
    }
    // Foreign domains, relayed for mynetworks by MX lookup.
    for domain in ["loop.t.example", "nowhere.t.example", "cname.t.example"] {
        ids.insert(
            domain,
            send(&smtp, "s@client.example", &[&format!("u@{domain}")], domain),
        );
    }

    // Delivered: STARTTLS failed under `may`, retried in the clear; MX
    // through a CNAME.
    for domain in ["tlsmay.example", "cname.t.example"] {
        wait_for("delivery", || {
            states(n, &ids[domain]).is_none().then_some(())
        });
    }
    let m = sinks[5].messages();
    assert_eq!(m.len(), 1, "127.0.0.46 got it in the clear");
    assert_eq!(m[0].0["tls"], false);
    assert_eq!(cname_sink.count(), 1);
    // Bounced: 8-bit to a server without 8BITMIME (no conversion).
    wait_for("the 8-bit message to bounce", || {
        states(n, &ids["seven.example"]).is_none().then_some(())
    });
    assert_eq!(sinks[7].count(), 0, "{:?}", sinks[7].messages());
    // Bounced at once: an MX host without an address.
    wait_for("the MX to nowhere to bounce", || {
        states(n, &ids["nowhere.t.example"]).is_none().then_some(())
    });
    // Deferred, and tried again: every broken server, TLS required but
    // failing, and the MX that is ourselves.
    for domain in [
        "hang.example",
        "hangdata.example",
        "drop.example",
        "junk.example",
        "junkgreet.example",
        "tlsmust.example",
        "loop.t.example",
    ] {
        wait_for("a deferral", || {
            (states(n, &ids[domain])? == ["deferred"]).then_some(())
        });
    }
    let log = n.log_text();
    for want in [
        "timeout waiting for a reply",
        "outcome unknown",
        "malformed reply",
        "retrying without TLS",
        "loops back to myself",
        "Host or domain name not found",
        "dsn=5.6.3, status=bounced",
    ] {
        assert!(log.contains(want), "log lacks {want:?}");
    }
    assert_eq!(sinks[6].count(), 0, "TLS required: never sent in the clear");
}

/// Scenario 2: `relayhost = [relay1]` is down, `smtp_fallback_relay =
/// [relay2]` takes the mail.
#[test]
fn a_dead_relayhost_hands_mail_to_the_fallback_relay() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let rpc = 17690;
    let extra = "\n[delivery]\nresolver = \"127.0.0.1:9\"\nrelayhost = \"[127.0.0.71]:2627\"\n\
                 smtp_fallback_relay = [\"[127.0.0.72]:2627\"]\nsmtp_connect_timeout_secs = 5\n";
    let nodes = form_cluster(d, rpc, 1, extra);
    let relay2 = Sink::start("127.0.0.72:2627", d, &[]);
    let smtp = Node::smtp_addr(1, rpc);
    let id = send(
        &smtp,
        "app@internal.example",
        &["someone@provider.example"],
        "outbound",
    );
    wait_for("the fallback relay to get it", || {
        (relay2.count() == 1).then_some(())
    });
    assert_eq!(
        hamail_id(&relay2.messages()[0].1).as_deref(),
        Some(id.as_str())
    );
    wait_for("the queue to empty", || {
        (queue_len(&nodes[0]) == 0).then_some(())
    });
    assert!(nodes[0].log_text().contains(&format!(
        "{id}: to=<someone@provider.example>, relay=127.0.0.72[127.0.0.72]:2627"
    )));
}

/// Two network namespaces joined by a veth pair, `a` at 10.213.X.1/30 and
/// `b` at 10.213.X.2/30, loopback up in both: two hosts that can reach
/// each other and nothing else. Removed when dropped (deleting a namespace
/// deletes its end of the pair), also when the test fails.
struct NetnsPair {
    a: String,
    b: String,
    a_ip: String,
    b_ip: String,
}

impl NetnsPair {
    fn create() -> NetnsPair {
        let pid = std::process::id();
        let x = pid % 250;
        let pair = NetnsPair {
            a: format!("hamail-mx-{pid}"),
            b: format!("hamail-far-{pid}"),
            a_ip: format!("10.213.{x}.1"),
            b_ip: format!("10.213.{x}.2"),
        };
        // Interface names: at most 15 bytes.
        let (va, vb) = (format!("hma{pid}"), format!("hmb{pid}"));
        let run = |args: &[&str]| {
            let out = Command::new("ip").args(args).output().expect("run ip");
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(&["netns", "add", &pair.a]);
        run(&["netns", "add", &pair.b]);
        run(&["link", "add", &va, "type", "veth", "peer", "name", &vb]);
        run(&["link", "set", &va, "netns", &pair.a]);
        run(&["link", "set", &vb, "netns", &pair.b]);
        for (ns, dev, ip) in [(&pair.a, &va, &pair.a_ip), (&pair.b, &vb, &pair.b_ip)] {
            run(&["-n", ns, "addr", "add", &format!("{ip}/30"), "dev", dev]);
            run(&["-n", ns, "link", "set", dev, "up"]);
            run(&["-n", ns, "link", "set", "lo", "up"]);
        }
        pair
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
        // A veth pair created before its ends were moved.
        let pid = std::process::id();
        let _ = Command::new("ip")
            .args(["link", "del", &format!("hma{pid}")])
            .stderr(Stdio::null())
            .status();
    }
}

/// A process started by the test; killed when dropped.
struct Spawned(Child);

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Sends one message from inside `netns` to `server` with Python's smtplib
/// (the test process cannot reach a namespace's addresses); returns the
/// queue id of the 250 reply.
fn send_in(netns: &str, server: &str, from: &str, to: &str, subject: &str) -> String {
    let (host, port) = server.rsplit_once(':').unwrap();
    let script = format!(
        "import smtplib\n\
         s = smtplib.SMTP({host:?}, {port}, local_hostname='client.example', timeout=60)\n\
         s.ehlo()\n\
         s.mail({from:?})\n\
         code, msg = s.rcpt({to:?})\n\
         assert code == 250, (code, msg)\n\
         code, msg = s.data(b'Subject: {subject}\\r\\nMessage-ID: <{subject}@client.example>\\r\\n\\r\\n{subject}\\r\\n')\n\
         print(code, msg.decode())\n\
         s.quit()\n"
    );
    let out = Command::new("ip")
        .args(["netns", "exec", netns, "python3", "-c", &script])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && text.starts_with("250"),
        "send in {netns}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text.split("queued as ")
        .nth(1)
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| panic!("not queued: {text}"))
}

/// A node whose SMTP listens on a wildcard address (`0.0.0.0:25`, as
/// cluster/single-node.toml ships) delivers to an MX on port 25 of another
/// host, and still refuses to deliver to its own address: "ourselves" is
/// this host's interface addresses on the listener's port, not every
/// address with that port. The node runs in a network namespace of its
/// own, the MX in another, joined by a veth pair.
#[test]
fn a_wildcard_listener_delivers_to_a_remote_mx_on_port_25() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let net = NetnsPair::create();
    let mx = Sink::start_in(Some(&net.b), &format!("{}:25", net.b_ip), d, &[]);

    let node_dir = d.join("mx");
    std::fs::create_dir_all(&node_dir).unwrap();
    // DNS, RPC and metrics on the namespace's own loopback; the CLI reaches
    // the node through the admin socket in its data directory.
    let node = Node::with_config_extra(
        &node_dir,
        "[smtp]\nlisten = [\"0.0.0.0:25\"]\n\n\
         [delivery]\nresolver = \"127.0.0.1:9\"\nminimal_backoff_time_secs = 1\n\
         maximal_backoff_time_secs = 2\nsmtp_connect_timeout_secs = 5\n",
    );
    let log = std::fs::File::create(&node.log).unwrap();
    let mut serve = Spawned(
        Command::new("ip")
            .args(["netns", "exec", &net.a])
            .arg(hamail_tests::hamail_bin())
            .arg("--config")
            .arg(node.config.as_ref().unwrap())
            .arg("serve")
            .current_dir(&node.dir)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("ip netns exec hamail serve"),
    );
    wait_for("hamail serve in its namespace to have a leader", || {
        if let Ok(Some(st)) = serve.0.try_wait() {
            panic!("hamail serve exited ({st}): {}", node.log_text());
        }
        node.status()?["raft"]["leader"].as_u64().map(|_| ())
    });
    for (domain, ip) in [("far.example", &net.b_ip), ("self.example", &net.a_ip)] {
        node.ok(&["domain", "add", domain, "--kind", "relay"]);
        node.ok(&["transport", "set", domain, &format!("smtp:[{ip}]:25")]);
        node.ok(&["recipient", "add", &format!("u@{domain}")]);
    }
    let far = send_in(
        &net.a,
        "127.0.0.1:25",
        "s@client.example",
        "u@far.example",
        "to-far",
    );
    let own = send_in(
        &net.a,
        "127.0.0.1:25",
        "s@client.example",
        "u@self.example",
        "to-self",
    );

    wait_for("the MX on port 25 to get the message", || {
        let log = node.log_text();
        if let Some(l) = log
            .lines()
            .find(|l| l.contains(&format!("{far}: to=")) && l.contains("loops back to myself"))
        {
            panic!("the remote MX was taken for this node: {l}");
        }
        (mx.count() == 1).then_some(())
    });
    assert_eq!(
        hamail_id(&mx.messages()[0].1).as_deref(),
        Some(far.as_str())
    );
    wait_for("the delivered message to leave the queue", || {
        states(&node, &far).is_none().then_some(())
    });
    // Its own veth address on 25 is itself: deferred, never sent.
    let loop_line = format!("{own}: to=<u@self.example>, relay=none");
    wait_for("the mail to itself to be deferred as a loop", || {
        node.log_text()
            .lines()
            .any(|l| {
                l.contains(&loop_line)
                    && l.contains("status=deferred")
                    && l.contains(&format!("mail for {} loops back to myself", net.a_ip))
            })
            .then_some(())
    });
    assert_eq!(
        states(&node, &own).as_deref(),
        Some(&["deferred".to_string()][..])
    );
    assert_eq!(mx.count(), 1);
    drop(serve);
    drop(mx);
}

/// Dovecot's default LMTP listener, its Unix socket (`lmtp:unix:/path`):
/// one status per recipient, as over TCP.
#[test]
fn dovecot_lmtp_over_a_unix_socket_takes_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Dovecot delivers as an unprivileged user.
    std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let dovecot = Peer::start(
        "dovecot-lmtp.sh",
        &d.join("dc"),
        &["127.0.0.53:18001"],
        &[("LMTP_USERS", "box@lmtp.example other@lmtp.example")],
    );
    let socket = dovecot.dir.join("run/lmtp");
    assert!(
        socket.exists(),
        "Dovecot's LMTP socket {}",
        socket.display()
    );
    let rpc = 18010;
    let extra = "\n[delivery]\nresolver = \"127.0.0.1:9\"\nminimal_backoff_time_secs = 1\n\
                 maximal_backoff_time_secs = 2\nsmtp_connect_timeout_secs = 5\n";
    let nodes = form_cluster(d, rpc, 1, extra);
    let n = &nodes[0];
    let mailboxes = d.join("mail");
    for (domain, transport) in [
        ("lmtp.example", format!("lmtp:unix:{}", socket.display())),
        ("client.example", format!("maildir:{}", mailboxes.display())),
    ] {
        n.ok(&["domain", "add", domain, "--kind", "local"]);
        n.ok(&["transport", "set", domain, &transport]);
    }
    for r in [
        "box@lmtp.example",
        "other@lmtp.example",
        "nosuchuser@lmtp.example",
        "sender@client.example",
    ] {
        n.ok(&["recipient", "add", r]);
    }
    let smtp = Node::smtp_addr(1, rpc);
    let id = send(
        &smtp,
        "sender@client.example",
        &[
            "box@lmtp.example",
            "nosuchuser@lmtp.example",
            "other@lmtp.example",
        ],
        "to-dovecot-unix",
    );
    wait_for("the queue to empty", || {
        let log = n.log_text();
        if let Some(l) = log
            .lines()
            .find(|l| l.contains(&format!("{id}: to=")) && l.contains("status=deferred"))
        {
            panic!("deferred: {l}");
        }
        (queue_len(n) == 0).then_some(())
    });

    for user in ["box", "other"] {
        let got = maildir(&dovecot.dir.join(format!("mail/lmtp.example/{user}")));
        assert_eq!(got.len(), 1, "{user}");
        assert!(got[0].contains(&format!("id {id}")));
    }
    // Dovecot refused nosuchuser: one DSN, for that recipient only.
    let dsns = maildir(&mailboxes.join("client.example/sender"));
    assert_eq!(dsns.len(), 1, "{dsns:#?}");
    assert!(dsns[0].contains("Final-Recipient: rfc822; nosuchuser@lmtp.example"));
    assert!(dsns[0].contains("Status: 5.1.1"));
    assert!(
        n.log_text().contains(&format!(
            "{id}: to=<box@lmtp.example>, relay=n1[{}]",
            socket.display()
        )),
        "{}",
        n.log_text()
    );
}
