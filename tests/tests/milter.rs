//! Milters before the queue, against real peers: two instances of a
//! pymilter milter (tests/support/test_milter.py, the real libmilter) in a
//! chain on a three-node cluster, taking every action by Subject; rspamd in
//! milter mode (tests/support/rspamd.sh) rejecting GTUBE and tagging other
//! mail; and hostile milters (one that hangs, one that closes mid-message,
//! one that answers garbage) meeting each `milter_default_action`, the next
//! client served normally. swaks sends; `queue show` shows what was queued.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hamail_tests::{Node, form_cluster_with, stderr, stdout, wait_for};

/// Cluster RPC ports of this file's clusters (DNS +1000, SMTP +2000,
/// submission +3000, submissions +4000).
const PORT_PYMILTER: u16 = 18520;
const PORT_HOSTILE: u16 = 18521;
const PORT_RSPAMD: u16 = 18522;
/// The milters' own ports.
const MILTER_FIRST: u16 = 18530;
const MILTER_SECOND: u16 = 18531;
const MILTER_HANG: u16 = 18532;
const MILTER_CLOSE: u16 = 18533;
const MILTER_GARBAGE: u16 = 18534;
const MILTER_RSPAMD: u16 = 18535;

fn support(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("support")
        .join(name)
}

fn ensure_tools() {
    hamail_tests::ensure_tool("swaks", "swaks");
    hamail_tests::ensure_installed("/usr/bin/python3 -c 'import Milter'", "python3-milter");
}

/// A process killed when the test ends, however it ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The pymilter test milter NAME on 127.0.0.1:PORT, once it accepts.
fn test_milter(name: &str, port: u16, log: &Path) -> Killed {
    let log = std::fs::File::create(log).unwrap();
    let child = Command::new("/usr/bin/python3")
        .arg(support("test_milter.py"))
        .args([name, &format!("inet:{port}@127.0.0.1")])
        .env("BIGBODY", "300000")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("python3 runs");
    let m = Killed(child);
    wait_for("the test milter to listen", || {
        TcpStream::connect(("127.0.0.1", port)).ok().map(|_| ())
    });
    m
}

/// Adds lines to the `[smtp]` section of a node's config text.
fn smtp_lines(text: &mut String, lines: &str) {
    let at = text.find("[smtp]\n").expect("an [smtp] section") + "[smtp]\n".len();
    text.insert_str(at, lines);
}

/// swaks to `addr` with DATA as given (LF line ends; swaks sends CRLF).
fn swaks(addr: &str, to: &str, data: &str) -> (bool, String) {
    let out = Command::new("swaks")
        .args(["--timeout", "120", "--server", addr])
        .args([
            "--helo",
            "client.example",
            "--from",
            "sender@client.example",
        ])
        .args(["--to", to, "--data", data])
        .output()
        .expect("swaks runs");
    (
        out.status.success(),
        format!("{}{}", stdout(&out), stderr(&out)),
    )
}

fn message(subject: &str, extra_headers: &str, body: &str) -> String {
    format!(
        "From: <sender@client.example>\nTo: <user@example.com>\nSubject: {subject}\n{extra_headers}\n{body}\n"
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

/// `queue show ID` once the node has the message: envelope and contents.
fn show(node: &Node, id: &str) -> String {
    wait_for("the message in the queue", || {
        let o = node.cli(&["queue", "show", id]);
        o.status.success().then(|| stdout(&o))
    })
}

/// The message part of a `queue show`.
fn contents(shown: &str) -> &str {
    shown
        .split_once("*** MESSAGE CONTENTS")
        .and_then(|(_, rest)| rest.split_once("***\n"))
        .and_then(|(_, m)| m.split_once("*** MESSAGE FILE END"))
        .map(|(m, _)| m)
        .unwrap_or_else(|| panic!("no contents in:\n{shown}"))
}

#[test]
fn a_pymilter_chain_takes_every_action() {
    ensure_tools();
    let dir = tempfile::tempdir().unwrap();
    let _first = test_milter("first", MILTER_FIRST, &dir.path().join("first.log"));
    let _second = test_milter("second", MILTER_SECOND, &dir.path().join("second.log"));
    let nodes = form_cluster_with(dir.path(), PORT_PYMILTER, 3, "", |_, _, text| {
        smtp_lines(
            text,
            &format!(
                "milters = [\"inet:127.0.0.1:{MILTER_FIRST}\", \"inet:127.0.0.1:{MILTER_SECOND}\"]\n\
                 message_size_limit = 200000\n\
                 milter_content_timeout_secs = 3\n"
            ),
        )
    });
    nodes[0].ok(&["domain", "add", "example.com", "--kind", "local"]);
    for r in ["user", "other", "extra"] {
        nodes[0].ok(&["recipient", "add", &format!("{r}@example.com")]);
    }
    for n in &nodes {
        wait_for("the recipients on every node", || {
            n.ok(&["recipient", "list"])
                .contains("extra@example.com")
                .then_some(())
        });
    }
    let addr = |i: usize| Node::smtp_addr(i as u8 + 1, PORT_PYMILTER);

    for i in 0..3 {
        let node = &nodes[i];
        let smtp = addr(i);
        // Refusals: the milter's own text, or the default one; nothing
        // queued.
        let before = nodes[0].queue_ids();
        for (subject, reply) in [
            ("reject-code", "<** 550 5.7.1 Rejected by the test milter"),
            ("reject", "<** 550 5.7.1 Command rejected"),
            (
                "tempfail-code",
                "<** 451 4.7.0 Greylisted by the test milter",
            ),
            (
                "tempfail",
                "<** 451 4.7.1 Service unavailable - try again later",
            ),
        ] {
            let (ok, conv) = swaks(&smtp, "user@example.com", &message(subject, "", "hi"));
            assert!(!ok, "{subject}: {conv}");
            assert!(conv.contains(reply), "{subject}: {conv}");
        }
        assert_eq!(nodes[0].queue_ids(), before);
        let log = node.log_text();
        assert!(
            log.contains("milter-reject: END-OF-MESSAGE from unknown[")
                && log.contains(
                    "550 5.7.1 Rejected by the test milter (milter inet:127.0.0.1:18530)"
                ),
            "no milter-reject line in n{}:\n{log}",
            i + 1
        );

        // Passed: both milters saw it, the second after the first's header,
        // with the macros filled in.
        let (ok, conv) = swaks(&smtp, "user@example.com", &message("plain", "", "hi"));
        assert!(ok, "{conv}");
        let id = queued_id(&conv);
        let shown = show(node, &id);
        let m = contents(&shown);
        let first = m
            .lines()
            .find(|l| l.starts_with("X-Test-Milter-first: "))
            .unwrap_or_else(|| panic!("no first milter header:\n{shown}"));
        assert_eq!(
            first,
            format!(
                "X-Test-Milter-first: passed i={id} j=n{n} daemon=n{n} mail=sender@client.example rcpt=user@example.com auth=- saw=-",
                n = i + 1
            )
        );
        assert!(
            m.contains("X-Test-Milter-second: passed") && m.contains("saw=X-Test-Milter-first"),
            "{shown}"
        );

        // Discard: 250 towards the client, never queued.
        let (ok, conv) = swaks(&smtp, "user@example.com", &message("discard", "", "hi"));
        assert!(ok, "{conv}");
        let id = queued_id(&conv);
        assert!(!nodes[0].queue_ids().contains(&id));
        assert!(
            node.log_text()
                .contains(&format!("{id}: discard: milter inet:127.0.0.1:18530")),
            "no discard line"
        );

        // Quarantine: queued on hold.
        let (ok, conv) = swaks(&smtp, "user@example.com", &message("quarantine", "", "hi"));
        assert!(ok, "{conv}");
        let id = queued_id(&conv);
        assert!(show(node, &id).contains("held: yes"));
        assert!(
            node.log_text().contains(&format!(
                "{id}: hold: milter inet:127.0.0.1:18530: held by the test milter"
            )),
            "no hold line"
        );

        // Header changes: added, inserted on top, changed, deleted.
        let (ok, conv) = swaks(
            &smtp,
            "user@example.com",
            &message("headers", "X-Change-Me: original\nX-Remove-Me: bye\n", "hi"),
        );
        assert!(ok, "{conv}");
        let shown = show(node, &queued_id(&conv));
        let m = contents(&shown);
        assert!(m.starts_with("X-Milter-Top: first\n"), "{shown}");
        assert!(m.contains("\nX-Milter-Added: yes\n"), "{shown}");
        assert!(m.contains("\nX-Change-Me: changed\n"), "{shown}");
        assert!(
            !m.contains("X-Remove-Me") && !m.contains("original"),
            "{shown}"
        );

        // Body replaced.
        let (ok, conv) = swaks(&smtp, "user@example.com", &message("body", "", "old body"));
        assert!(ok, "{conv}");
        let shown = show(node, &queued_id(&conv));
        assert!(
            contents(&shown).ends_with("\n\nBody replaced by the test milter\n"),
            "{shown}"
        );

        // Recipients added and deleted, the sender changed.
        let (ok, conv) = swaks(&smtp, "user@example.com", &message("addrcpt", "", "hi"));
        assert!(ok, "{conv}");
        let shown = show(node, &queued_id(&conv));
        assert!(
            shown.contains("recipient: user@example.com")
                && shown.contains("recipient: extra@example.com"),
            "{shown}"
        );
        let (ok, conv) = swaks(
            &smtp,
            "user@example.com,other@example.com",
            &message("delrcpt", "", "hi"),
        );
        assert!(ok, "{conv}");
        let shown = show(node, &queued_id(&conv));
        assert!(
            shown.contains("recipient: user@example.com")
                && !shown.contains("recipient: other@example.com"),
            "{shown}"
        );
        let (ok, conv) = swaks(&smtp, "user@example.com", &message("chgfrom", "", "hi"));
        assert!(ok, "{conv}");
        let shown = show(node, &queued_id(&conv));
        assert!(shown.contains("sender: changed@client.example"), "{shown}");

        // Accept at the Subject header: the first milter changes nothing,
        // the second still runs.
        let (ok, conv) = swaks(
            &smtp,
            "user@example.com",
            &message("accept-first", "", "hi"),
        );
        assert!(ok, "{conv}");
        let shown = show(node, &queued_id(&conv));
        assert!(
            !shown.contains("X-Test-Milter-first") && shown.contains("X-Test-Milter-second"),
            "{shown}"
        );
    }

    // Progress: five seconds of SMFIR_PROGRESS against a 3 s content
    // timeout, then the message goes through.
    let started = Instant::now();
    let (ok, conv) = swaks(&addr(0), "user@example.com", &message("progress", "", "hi"));
    assert!(ok, "{conv}");
    assert!(started.elapsed() >= Duration::from_secs(5));
    show(&nodes[0], &queued_id(&conv));

    // A body replacement over message_size_limit (300 kB > 200 kB) is the
    // milter's failure: the default action, tempfail, and a warning.
    let (ok, conv) = swaks(&addr(1), "user@example.com", &message("bigbody", "", "hi"));
    assert!(!ok, "{conv}");
    assert!(
        conv.contains("<** 451 4.7.1 Service unavailable - try again later"),
        "{conv}"
    );
    let log = nodes[1].log_text();
    assert!(
        log.contains(
            "warning: milter inet:127.0.0.1:18530: body replacement larger than the message size limit (200000 bytes)"
        ),
        "{log}"
    );
    // And the next message is served as usual.
    let (ok, conv) = swaks(&addr(1), "user@example.com", &message("plain", "", "after"));
    assert!(ok, "{conv}");
}

/// How a hostile milter misbehaves on its odd connections (the even ones
/// are served properly: continue to everything, accept at the end).
#[derive(Clone, Copy)]
enum Hostile {
    /// Never answers the end of the message.
    Hang,
    /// Closes the connection at the first body chunk.
    CloseMidMessage,
    /// Answers the end of the message with bytes that are no packet.
    Garbage,
}

fn hostile_milter(port: u16, how: Hostile) {
    let l = TcpListener::bind(("127.0.0.1", port)).unwrap();
    std::thread::spawn(move || {
        for (n, conn) in l.incoming().enumerate() {
            let Ok(s) = conn else { continue };
            let bad = n % 2 == 0;
            std::thread::spawn(move || serve_hostile(s, if bad { Some(how) } else { None }));
        }
    });
}

fn packet(code: u8, data: &[u8]) -> Vec<u8> {
    let mut v = ((data.len() + 1) as u32).to_be_bytes().to_vec();
    v.push(code);
    v.extend_from_slice(data);
    v
}

fn serve_hostile(mut s: TcpStream, how: Option<Hostile>) {
    loop {
        let mut len = [0u8; 4];
        if s.read_exact(&mut len).is_err() {
            return;
        }
        let mut data = vec![0u8; u32::from_be_bytes(len) as usize];
        if s.read_exact(&mut data).is_err() {
            return;
        }
        let reply = match (data[0], how) {
            (b'O', _) => {
                let mut d = 6u32.to_be_bytes().to_vec();
                d.extend_from_slice(&0u32.to_be_bytes());
                d.extend_from_slice(&0u32.to_be_bytes());
                packet(b'O', &d)
            }
            (b'D', _) => continue,
            (b'Q', _) => return,
            (b'B', Some(Hostile::CloseMidMessage)) => return,
            (b'E', Some(Hostile::Hang)) => {
                // Longer than the content timeout; the test ends first.
                std::thread::sleep(Duration::from_secs(600));
                return;
            }
            (b'E', Some(Hostile::Garbage)) => b"HTTP/1.0 400 Bad Request\r\n\r\n".to_vec(),
            (b'E', _) => packet(b'a', b""),
            _ => packet(b'c', b""),
        };
        if s.write_all(&reply).is_err() {
            return;
        }
    }
}

#[test]
fn hostile_milters_meet_the_default_action_and_mail_goes_on() {
    ensure_tools();
    hostile_milter(MILTER_HANG, Hostile::Hang);
    hostile_milter(MILTER_CLOSE, Hostile::CloseMidMessage);
    hostile_milter(MILTER_GARBAGE, Hostile::Garbage);
    let dir = tempfile::tempdir().unwrap();
    // n1: a milter that hangs, tempfail; n2: one that closes, reject; n3:
    // one that answers garbage, accept.
    let setup = [
        (MILTER_HANG, "tempfail"),
        (MILTER_CLOSE, "reject"),
        (MILTER_GARBAGE, "accept"),
    ];
    let nodes = form_cluster_with(dir.path(), PORT_HOSTILE, 3, "", |i, _, text| {
        let (port, action) = setup[i as usize - 1];
        smtp_lines(
            text,
            &format!(
                "milters = [\"inet:127.0.0.1:{port}\"]\nmilter_default_action = \"{action}\"\n\
                 milter_command_timeout_secs = 2\nmilter_content_timeout_secs = 2\n"
            ),
        )
    });
    nodes[0].ok(&["domain", "add", "example.com", "--kind", "local"]);
    nodes[0].ok(&["recipient", "add", "user@example.com"]);
    for n in &nodes {
        wait_for("the recipient on every node", || {
            n.ok(&["recipient", "list"])
                .contains("user@example.com")
                .then_some(())
        });
    }
    let cases = [
        (
            "<** 451 4.7.1 Service unavailable - try again later",
            "warning: milter inet:127.0.0.1:18532: timed out after 2 s during SMFIC_BODYEOB",
        ),
        (
            "<** 550 5.7.1 Command rejected",
            "warning: milter inet:127.0.0.1:18533: ",
        ),
        (
            "queued as ",
            "warning: milter inet:127.0.0.1:18534: protocol error in the reply to SMFIC_BODYEOB: a packet of 1213486160 bytes",
        ),
    ];
    for (i, (reply, warning)) in cases.iter().enumerate() {
        let smtp = Node::smtp_addr(i as u8 + 1, PORT_HOSTILE);
        let (ok, conv) = swaks(&smtp, "user@example.com", &message("hostile", "", "hi"));
        assert_eq!(ok, reply.starts_with("queued"), "{conv}");
        assert!(conv.contains(reply), "{conv}");
        let log = nodes[i].log_text();
        assert!(log.contains(warning), "n{}: {warning}\n{log}", i + 1);
        // The next client: the milter behaves this time, the mail is queued.
        let (ok, conv) = swaks(&smtp, "user@example.com", &message("next", "", "hi"));
        assert!(ok, "{conv}");
        show(&nodes[i], &queued_id(&conv));
    }
    // The milter that closed mid-message: its warning names the cause.
    let log = nodes[1].log_text();
    assert!(
        log.contains("warning: milter inet:127.0.0.1:18533: connection closed while waiting for the reply to SMFIC_BODY")
            || log.contains("warning: milter inet:127.0.0.1:18533: can't"),
        "{log}"
    );
}

/// A private rspamd in milter mode, stopped when the test ends.
struct Rspamd(PathBuf);

impl Drop for Rspamd {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(support("rspamd.sh"))
            .args(["stop", self.0.to_str().unwrap()])
            .output();
    }
}

/// GTUBE, the Generic Test for Unsolicited Bulk Email.
const GTUBE: &str = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X";

#[test]
fn rspamd_rejects_gtube_and_tags_other_mail() {
    ensure_tools();
    let dir = tempfile::tempdir().unwrap();
    // rspamd's workers run as _rspamd: its directory must be reachable.
    let rspamd_dir = PathBuf::from(format!("/tmp/hamail-rspamd-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&rspamd_dir);
    let start = Command::new("bash")
        .arg(support("rspamd.sh"))
        .args([
            "start",
            rspamd_dir.to_str().unwrap(),
            &MILTER_RSPAMD.to_string(),
        ])
        .output()
        .unwrap();
    assert!(
        start.status.success(),
        "rspamd.sh: {}{}",
        stdout(&start),
        stderr(&start)
    );
    let rspamd = Rspamd(rspamd_dir.clone());
    let nodes = form_cluster_with(dir.path(), PORT_RSPAMD, 1, "", |_, _, text| {
        smtp_lines(
            text,
            &format!("milters = [\"inet:127.0.0.1:{MILTER_RSPAMD}\"]\n"),
        )
    });
    nodes[0].ok(&["domain", "add", "example.com", "--kind", "local"]);
    nodes[0].ok(&["recipient", "add", "user@example.com"]);
    let smtp = Node::smtp_addr(1, PORT_RSPAMD);

    let (ok, conv) = swaks(
        &smtp,
        "user@example.com",
        &message("test", "", &format!("This is spam.\n{GTUBE}\n")),
    );
    assert!(!ok, "{conv}");
    // rspamd's reply for GTUBE names the rule.
    assert!(conv.contains("<** 554 5.7.1 Gtube pattern"), "{conv}");
    assert!(
        nodes[0]
            .log_text()
            .contains("milter-reject: END-OF-MESSAGE from unknown["),
        "no milter-reject line"
    );

    let (ok, conv) = swaks(
        &smtp,
        "user@example.com",
        &message(
            "Lunch on Friday",
            "Message-ID: <lunch.1@client.example>\nDate: Sat, 5 Dec 2026 10:00:00 +0000\n",
            "Shall we meet at noon?",
        ),
    );
    assert!(ok, "{conv}");
    let shown = show(&nodes[0], &queued_id(&conv));
    let m = contents(&shown);
    for h in ["X-Spamd-Result: ", "X-Spam-Status: ", "X-Rspamd-Queue-Id: "] {
        assert!(m.contains(h), "no {h}in:\n{shown}");
    }
    drop(rspamd);
    let _ = std::fs::remove_dir_all(&rspamd_dir);
}
