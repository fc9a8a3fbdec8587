//! Authoritative DNS through the real binary, queried with kdig (Knot's
//! DNS client): zone files in, answers out, and an edit on one node of a
//! cluster answered with the new serial by all three.

use std::path::Path;
use std::process::Command;

use hamail_tests::{Node, form_cluster, stderr, wait_for};

/// kdig's full text answer for a query against `server:port`.
fn kdig(server: &str, port: u16, args: &[&str]) -> String {
    let out = Command::new("kdig")
        .arg(format!("@{server}"))
        .args(["-p", &port.to_string(), "+time=5", "+retry=1"])
        .args(args)
        .output()
        .expect("kdig is installed (scripts/test installs knot-dnsutils)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn status(answer: &str) -> &str {
    answer
        .split("status: ")
        .nth(1)
        .and_then(|s| s.split(';').next())
        .unwrap_or("?")
        .trim()
}

fn soa_serial(server: &str, port: u16, zone: &str) -> Option<u64> {
    let a = kdig(server, port, &[zone, "SOA", "+short"]);
    a.split_whitespace().nth(2)?.parse().ok()
}

const ZONE: &str = r#"$ORIGIN example.jp.
$TTL 1h
@   IN SOA ns1.example.jp. hostmaster.example.jp. (
        2026120201 ; serial
        3600 900 1209600 300 )
    IN NS ns1
    IN MX 10 mail
ns1 IN A 192.0.2.53
mail 300 IN A 192.0.2.25
www IN CNAME mail
txt IN TXT "v=spf1 mx -all"
"#;

fn single(dir: &Path, port: u16) -> Node {
    single_with(dir, port, "")
}

/// A one-node cluster serving DNS on `port`, AXFR allowed from 127.0.0.1,
/// with `extra` lines in `[dns]`.
fn single_with(dir: &Path, port: u16, extra: &str) -> Node {
    let mut node = Node::with_config(dir);
    let cfg = node.config.clone().unwrap();
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "[dns]\nlisten = [\"127.0.0.1:0\"]",
        &format!("[dns]\nlisten = [\"127.0.0.1:{port}\"]\nallow_axfr = [\"127.0.0.1\"]\n{extra}"),
    );
    std::fs::write(&cfg, text).unwrap();
    node.start();
    node
}

/// `single`, with example.jp loaded from ZONE.
fn single_with_zone(dir: &Path, port: u16, extra: &str) -> Node {
    let node = single_with(dir, port, extra);
    let file = dir.join("example.jp.zone");
    std::fs::write(&file, ZONE).unwrap();
    let out = node.ok(&[
        "zone",
        "add",
        "example.jp",
        "--file",
        file.to_str().unwrap(),
    ]);
    assert!(out.contains("serial 2026120201"), "{out}");
    node
}

#[test]
fn zones_from_files_are_served_authoritatively() {
    let dir = tempfile::tempdir().unwrap();
    let port = 18901;
    let node = single_with_zone(dir.path(), port, "");

    let a = wait_for("the zone to be served", || {
        let a = kdig("127.0.0.1", port, &["mail.example.jp", "A"]);
        a.contains("192.0.2.25").then_some(a)
    });
    let flags = a.lines().find(|l| l.contains("Flags:")).unwrap_or("");
    assert!(flags.contains(" aa"), "authoritative answer: {a}");
    assert!(!flags.contains(" ra"), "no recursion available: {a}");
    let a = kdig("127.0.0.1", port, &["www.example.jp", "A"]);
    assert!(
        a.contains("CNAME") && a.contains("192.0.2.25"),
        "CNAME followed: {a}"
    );
    let a = kdig("127.0.0.1", port, &["nope.example.jp", "A"]);
    assert_eq!(status(&a), "NXDOMAIN", "{a}");
    assert!(a.contains("SOA"), "SOA in authority: {a}");
    let a = kdig("127.0.0.1", port, &["mail.example.jp", "AAAA"]);
    assert_eq!(status(&a), "NOERROR", "NODATA: {a}");
    assert!(a.contains("SOA"), "{a}");
    assert_eq!(
        status(&kdig("127.0.0.1", port, &["example.org", "A"])),
        "REFUSED"
    );
    assert_eq!(
        status(&kdig("127.0.0.1", port, &["version.bind", "CH", "TXT"])),
        "REFUSED"
    );
    let a = kdig("127.0.0.1", port, &["example.jp", "MX"]);
    assert!(
        a.contains("ADDITIONAL") && a.contains("192.0.2.25"),
        "MX target's A in additional: {a}"
    );
    let a = kdig("127.0.0.1", port, &["txt.example.jp", "TXT", "+short"]);
    assert_eq!(a.trim(), "\"v=spf1 mx -all\"");

    // Zone transfer: TCP from the allow list only.
    let a = kdig("127.0.0.1", port, &["+tcp", "example.jp", "AXFR"]);
    assert!(a.matches("SOA").count() >= 2, "AXFR from 127.0.0.1: {a}");
    let a = kdig(
        "127.0.0.1",
        port,
        &["-b", "127.0.0.2", "+tcp", "example.jp", "AXFR"],
    );
    assert!(
        !a.contains("192.0.2.25"),
        "AXFR from 127.0.0.2 refused: {a}"
    );

    // Edits bump the serial, which the CLI reports.
    let out = node.ok(&["record", "add", "example.jp", "new 300 IN A 192.0.2.7"]);
    assert!(out.contains("serial 2026120202"), "{out}");
    wait_for("the edit to be served", || {
        (soa_serial("127.0.0.1", port, "example.jp") == Some(2026120202)).then_some(())
    });
    node.ok(&["record", "set", "example.jp", "new 600 IN A 192.0.2.8"]);
    node.ok(&["record", "del", "example.jp", "txt TXT"]);
    let shown = node.ok(&["zone", "show", "example.jp"]);
    assert!(
        shown.contains("new.example.jp. 600 IN A 192.0.2.8") && !shown.contains("spf1"),
        "{shown}"
    );
    let hist = node.json(&["zone", "history", "example.jp", "--json"]);
    let serials: Vec<u64> = hist
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["serial"].as_u64().unwrap())
        .collect();
    assert_eq!(serials, [2026120201, 2026120202, 2026120203, 2026120204]);

    // Big answers: TC over UDP past the client's EDNS buffer, whole over TCP.
    let big: Vec<String> = (0..12)
        .map(|i| format!("\"{}\"", format!("{i:02}").repeat(60)))
        .collect();
    node.ok(&[
        "record",
        "add",
        "example.jp",
        &format!("big 300 IN TXT {}", big.join(" ")),
    ]);
    let a = wait_for("the big TXT", || {
        let a = kdig(
            "127.0.0.1",
            port,
            &[
                "+notcp",
                "+ignore",
                "+bufsize=1232",
                "big.example.jp",
                "TXT",
            ],
        );
        a.contains("Flags:").then_some(a)
    });
    let flags = a.lines().find(|l| l.contains("Flags:")).unwrap_or("");
    assert!(flags.contains(" tc"), "truncated over UDP: {a}");
    let a = kdig(
        "127.0.0.1",
        port,
        &["+tcp", "big.example.jp", "TXT", "+short"],
    );
    assert_eq!(a.matches('"').count(), 24, "whole over TCP: {a}");
    // The question's case comes back as asked, also from the answer cache.
    // (dig, because kdig lower-cases the names it sends.)
    for _ in 0..2 {
        let out = Command::new("dig")
            .args([
                "@127.0.0.1",
                "-p",
                &port.to_string(),
                "MaIl.ExAmPlE.jP",
                "A",
            ])
            .output()
            .expect("dig is installed (scripts/test installs dnsutils)");
        let a = String::from_utf8_lossy(&out.stdout);
        assert!(a.contains("MaIl.ExAmPlE.jP"), "{a}");
        assert!(a.contains("192.0.2.25"), "{a}");
    }
    node.ok(&["record", "del", "example.jp", "big TXT"]);
    let shown = node.ok(&["zone", "show", "example.jp"]);

    // Export, then import the export: same records, a new serial.
    let exported = dir.path().join("export.zone");
    node.ok(&["zone", "export", "example.jp", exported.to_str().unwrap()]);
    let out = node.ok(&["zone", "import", "example.jp", exported.to_str().unwrap()]);
    assert!(out.contains("serial 2026120207"), "{out}");
    assert_eq!(
        node.ok(&["zone", "show", "example.jp"])
            .replace("2026120207", "X"),
        shown.replace("2026120206", "X")
    );
    // A restart never lowers a serial.
    let mut node = node;
    assert!(node.stop().success());
    node.start();
    wait_for("the zone after a restart", || {
        (soa_serial("127.0.0.1", port, "example.jp") == Some(2026120207)).then_some(())
    });
}

#[test]
fn bad_zone_input_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let port = 18902;
    let node = single(dir.path(), port);
    node.ok(&["zone", "add", "example.jp"]);
    let before = node.ok(&["zone", "show", "example.jp"]);
    let bad = dir.path().join("bad.zone");
    for (text, needle) in [
        (
            "$TTL 300\n@ SOA ns1 h 1 2 3 4 5\n@ NS ns1\nwww A 300.1.2.3\n",
            "line 4",
        ),
        (
            "$TTL 300\n@ SOA ns1 h 1 2 3 4 5\n@ NS ns1\nx.example.com. A 192.0.2.1\n",
            "outside",
        ),
        ("$INCLUDE /etc/passwd\n", "INCLUDE"),
        ("$TTL 300\n@ NS ns1\n", "no SOA"),
        ("$TTL 300\n@ SOA ns1 h ( 1 2 3 4 5\n", "line 2"),
    ] {
        std::fs::write(&bad, text).unwrap();
        let out = node.cli(&["zone", "import", "example.jp", bad.to_str().unwrap()]);
        assert!(!out.status.success(), "{text}");
        assert!(stderr(&out).contains(needle), "{text}: {}", stderr(&out));
    }
    for (rec, needle) in [
        ("www 300 IN A 1.2.3", "1.2.3"),
        ("www 300 IN BOGUS x", "BOGUS"),
        ("other.example.com. 300 IN A 192.0.2.1", "outside"),
        ("@ 300 IN SOA a. b. 1 2 3 4 5", "SOA"),
    ] {
        let out = node.cli(&["record", "add", "example.jp", rec]);
        assert!(!out.status.success(), "{rec}");
        assert!(stderr(&out).contains(needle), "{rec}: {}", stderr(&out));
    }
    let out = node.cli(&["record", "add", "example.jp", "www 300 IN CNAME mail"]);
    assert!(out.status.success());
    let out = node.cli(&["record", "add", "example.jp", "www 300 IN A 192.0.2.1"]);
    assert!(stderr(&out).contains("CNAME"), "{}", stderr(&out));
    let out = node.cli(&["zone", "add", "sub.example.jp"]);
    assert!(stderr(&out).contains("delegation"), "{}", stderr(&out));
    let out = node.cli(&["zone", "add", "bad_zone.jp"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let out = node.cli(&["zone", "show", "nothere.jp"]);
    assert!(stderr(&out).contains("no such zone"), "{}", stderr(&out));
    node.ok(&["record", "del", "example.jp", "www"]);
    assert_eq!(
        node.ok(&["zone", "show", "example.jp"])
            .lines()
            .skip(2)
            .collect::<Vec<_>>(),
        before.lines().skip(2).collect::<Vec<_>>(),
        "only the serial moved"
    );
}

#[test]
fn an_edit_on_any_node_is_answered_by_all_three() {
    let dir = tempfile::tempdir().unwrap();
    let rpc = 17470;
    let dns = Node::dns_port(rpc);
    let mut nodes: Vec<Node> = (1..=3)
        .map(|i| Node::cluster_member(dir.path(), i, rpc, ""))
        .collect();
    nodes[0].start_waiting();
    nodes[0].ok(&["cluster", "init"]);
    nodes[0].wait_ready();
    for i in 1..3 {
        let token = nodes[0].ok(&["cluster", "token"]).trim().to_string();
        nodes[i].start_waiting();
        nodes[i].ok(&[
            "cluster",
            "join",
            &Node::rpc_addr(1, rpc),
            "--token",
            &token,
        ]);
    }
    // One NS per node, named after the node.
    nodes[1].ok(&["zone", "add", "example.jp"]);
    let ns = wait_for("node 1 to serve the new zone", || {
        let ns = kdig("127.0.0.11", dns, &["example.jp", "NS", "+short"]);
        (ns.lines().count() == 3).then_some(ns)
    });
    for i in 1..=3 {
        assert!(ns.contains(&format!("n{i}.example.jp.")), "{ns}");
    }
    let out = nodes[2].ok(&["record", "add", "example.jp", "www 300 IN A 192.0.2.80"]);
    let edited = std::time::Instant::now();
    let serial: u64 = out
        .rsplit("serial ")
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    for i in 1..=3u8 {
        wait_for("every node to answer the new serial", || {
            (soa_serial(&format!("127.0.0.1{i}"), dns, "example.jp") == Some(serial)).then_some(())
        });
        let a = kdig(
            &format!("127.0.0.1{i}"),
            dns,
            &["www.example.jp", "A", "+short"],
        );
        assert_eq!(a.trim(), "192.0.2.80");
    }
    // Reported, not asserted (shared machines): the issue asks for < 1 s.
    eprintln!(
        "edit visible on all three nodes {} ms after the CLI returned (includes the kdig runs)",
        edited.elapsed().as_millis()
    );
    // A node cut off from the others still answers from its own state, and
    // refuses edits it cannot commit.
    nodes[0].kill9();
    nodes[1].kill9();
    let a = kdig("127.0.0.13", dns, &["www.example.jp", "A", "+short"]);
    assert_eq!(a.trim(), "192.0.2.80");
    let out = nodes[2].cli(&["record", "add", "example.jp", "lost 300 IN A 192.0.2.9"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("quorum"), "{}", stderr(&out));
    assert_eq!(soa_serial("127.0.0.13", dns, "example.jp"), Some(serial));
}

/// Zones bigger than one DNS message transfer in several (NSD, BIND and
/// Knot accept that); names below a delegation get a referral with glue;
/// negative answers carry the SOA's MINIMUM as their TTL.
#[test]
fn big_zones_delegations_and_negative_ttls() {
    let dir = tempfile::tempdir().unwrap();
    let port = 18905;
    let node = single(dir.path(), port);
    let mut zone = String::from(
        "$ORIGIN big.example.\n$TTL 3600\n@ IN SOA ns1 hostmaster 7 3600 600 86400 300\n\
         @ IN NS ns1\nns1 IN A 192.0.2.53\nsub IN NS ns.sub\nsub IN NS ns.elsewhere.example.\n\
         ns.sub IN A 192.0.2.99\n",
    );
    for i in 0..3000 {
        zone.push_str(&format!("host{i} IN A 10.0.{}.{}\n", i / 256, i % 256));
    }
    let file = dir.path().join("big.zone");
    std::fs::write(&file, zone).unwrap();
    node.ok(&[
        "zone",
        "add",
        "big.example",
        "--file",
        file.to_str().unwrap(),
    ]);
    wait_for("the zone served", || {
        soa_serial("127.0.0.1", port, "big.example").filter(|s| *s == 7)
    });

    let axfr = kdig("127.0.0.1", port, &["big.example", "AXFR"]);
    let records = axfr.lines().filter(|l| l.contains("\tIN\t")).count();
    assert_eq!(records, 3000 + 5 + 2, "every record and the SOA twice");
    let messages: usize = axfr
        .split("Received ")
        .nth(1)
        .and_then(|s| s.split('(').nth(1))
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        messages > 1,
        "one 64 KiB message cannot hold it: {messages}"
    );

    let r = kdig("127.0.0.1", port, &["www.sub.big.example", "A"]);
    assert_eq!(status(&r), "NOERROR");
    assert!(
        !r.contains("Flags: qr aa"),
        "a referral is not authoritative: {r}"
    );
    assert!(
        r.contains("sub.big.example.") && r.contains("NS\tns.sub.big.example."),
        "{r}"
    );
    assert!(
        r.contains("ns.sub.big.example.") && r.contains("192.0.2.99"),
        "glue: {r}"
    );

    let r = kdig("127.0.0.1", port, &["nothere.big.example", "A"]);
    assert_eq!(status(&r), "NXDOMAIN");
    let soa_line = r.lines().find(|l| l.contains("\tSOA\t")).unwrap_or("");
    let ttl: u32 = soa_line
        .split_whitespace()
        .nth(1)
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    assert_eq!(ttl, 300, "negative TTL = min(SOA TTL, MINIMUM): {soa_line}");
}

/// A DNS header: id, flags, then the four section counts.
fn header(qd: u16, an: u16, ns: u16, ar: u16) -> Vec<u8> {
    let mut h = vec![0x12, 0x34, 0x01, 0x00];
    for c in [qd, an, ns, ar] {
        h.extend_from_slice(&c.to_be_bytes());
    }
    h
}

fn question(name_wire: &[u8]) -> Vec<u8> {
    let mut q = name_wire.to_vec();
    q.extend_from_slice(&[0, 1, 0, 1]); // A, IN
    q
}

fn wire_name(labels: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for l in labels {
        out.push(l.len() as u8);
        out.extend_from_slice(l);
    }
    out.push(0);
    out
}

#[test]
fn hostile_packets_leave_the_server_answering() {
    use std::io::Write;
    use std::net::{TcpStream, UdpSocket};
    let dir = tempfile::tempdir().unwrap();
    let port = 18903;
    let _node = single_with_zone(dir.path(), port, "");
    let answers =
        || kdig("127.0.0.1", port, &["mail.example.jp", "A", "+short"]).trim() == "192.0.2.25";
    wait_for("the zone to be served", || answers().then_some(()));

    let long_label = vec![b'a'; 64];
    let l63 = vec![b'b'; 63];
    let mut packets: Vec<(&str, Vec<u8>)> = vec![
        ("truncated header", vec![0x12, 0x34, 0x01]),
        ("empty packet", vec![]),
        (
            "compression loop",
            [header(1, 0, 0, 0), vec![0xC0, 12, 0, 1, 0, 1]].concat(),
        ),
        (
            "forward pointer",
            [header(1, 0, 0, 0), vec![0xC0, 40, 0, 1, 0, 1]].concat(),
        ),
        (
            "label over 63",
            [
                header(1, 0, 0, 0),
                question(&wire_name(&[&long_label, b"jp"])),
            ]
            .concat(),
        ),
        (
            "name over 255",
            [
                header(1, 0, 0, 0),
                question(&wire_name(&[&l63, &l63, &l63, &l63, b"jp"])),
            ]
            .concat(),
        ),
        (
            "section counts beyond the packet",
            [
                header(1, 5, 5, 5),
                question(&wire_name(&[b"mail", b"example", b"jp"])),
            ]
            .concat(),
        ),
        ("question count without a question", header(20, 0, 0, 0)),
    ];
    // An OPT record whose option claims more bytes than there are.
    let mut opt = [
        header(1, 0, 0, 1),
        question(&wire_name(&[b"mail", b"example", b"jp"])),
    ]
    .concat();
    opt.extend_from_slice(&[
        0, 0, 41, 0x04, 0xD0, 0, 0, 0, 0, 0, 8, 0, 10, 0x01, 0x00, 1, 2, 3, 4,
    ]);
    packets.push(("EDNS option with a bad length", opt));
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    for (what, p) in &packets {
        udp.send_to(p, ("127.0.0.1", port)).unwrap();
        assert!(answers(), "no answer after: {what}");
    }
    // The same over TCP, each on its own connection.
    for (what, p) in &packets {
        let mut t = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let _ = t.write_all(&(p.len() as u16).to_be_bytes());
        let _ = t.write_all(p);
        assert!(answers(), "no answer after TCP: {what}");
    }
    // A length prefix of 65535 with nothing behind it, and a client that
    // sends one byte and then nothing: held open while others are served.
    let mut stalled = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stalled.write_all(&[0xFF, 0xFF]).unwrap();
    let mut slow = TcpStream::connect(("127.0.0.1", port)).unwrap();
    slow.write_all(&[0x00]).unwrap();
    assert!(answers(), "no answer with stalled TCP clients");
    // Hundreds of idle TCP connections.
    let idle: Vec<TcpStream> = (0..500)
        .filter_map(|_| TcpStream::connect(("127.0.0.1", port)).ok())
        .collect();
    assert!(
        idle.len() > 400,
        "connections refused early: {}",
        idle.len()
    );
    assert!(
        answers(),
        "no UDP answer with {} idle TCP connections",
        idle.len()
    );
    let a = kdig(
        "127.0.0.1",
        port,
        &["+tcp", "mail.example.jp", "A", "+short"],
    );
    assert_eq!(
        a.trim(),
        "192.0.2.25",
        "TCP answer with idle connections open"
    );
    drop(idle);
    drop(stalled);
    drop(slow);
    assert!(answers());
}

/// NSD, run in the foreground as a child; killed when dropped.
struct Nsd(std::process::Child);

impl Drop for Nsd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn nsd_follows_a_hamail_zone_as_secondary() {
    let dir = tempfile::tempdir().unwrap();
    let (port, nsd_port) = (18904, 18954);
    let node = single_with_zone(
        dir.path(),
        port,
        &format!("notify = [\"127.0.0.1:{nsd_port}\"]"),
    );

    let nsd_dir = dir.path().join("nsd");
    std::fs::create_dir_all(nsd_dir.join("xfr")).unwrap();
    let d = nsd_dir.display();
    let conf = nsd_dir.join("nsd.conf");
    std::fs::write(
        &conf,
        format!(
            "server:\n  port: {nsd_port}\n  ip-address: 127.0.0.1\n  username: \"\"\n  chroot: \"\"\n  \
             database: \"\"\n  zonesdir: \"{d}\"\n  pidfile: \"{d}/nsd.pid\"\n  xfrdfile: \"{d}/xfrd.state\"\n  \
             xfrdir: \"{d}/xfr\"\n  zonelistfile: \"{d}/zone.list\"\n  logfile: \"{d}/nsd.log\"\n  \
             verbosity: 2\nremote-control:\n  control-enable: no\n\
             zone:\n  name: example.jp\n  zonefile: \"{d}/example.jp.zone\"\n  \
             request-xfr: AXFR 127.0.0.1@{port} NOKEY\n  allow-notify: 127.0.0.1 NOKEY\n"
        ),
    )
    .unwrap();
    let _nsd = Nsd(Command::new("nsd")
        .args(["-d", "-c", conf.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("nsd is installed (scripts/test installs it)"));
    // NSD transfers the zone from hamail...
    wait_for("NSD to serve the zone", || {
        (soa_serial("127.0.0.1", nsd_port, "example.jp") == Some(2026120201)).then_some(())
    });
    assert_eq!(
        kdig("127.0.0.1", nsd_port, &["mail.example.jp", "A", "+short"]).trim(),
        "192.0.2.25"
    );
    // ... and follows every edit: NOTIFY, then AXFR of the new serial.
    let out = node.ok(&["record", "add", "example.jp", "new 300 IN A 192.0.2.7"]);
    assert!(out.contains("serial 2026120202"), "{out}");
    wait_for("NSD to follow the edit", || {
        (soa_serial("127.0.0.1", nsd_port, "example.jp") == Some(2026120202)).then_some(())
    });
    assert_eq!(
        kdig("127.0.0.1", nsd_port, &["new.example.jp", "A", "+short"]).trim(),
        "192.0.2.7"
    );
}

/// Cached answers never outlive an edit: a name asked often enough to sit
/// in every UDP worker's cache on every node (and a name that did not
/// exist, answered NXDOMAIN) answer the new data on all three nodes once
/// `record set` / `record add` returns, from every worker.
#[test]
fn cached_answers_follow_record_set_on_every_node() {
    let dir = tempfile::tempdir().unwrap();
    let rpc = 18110;
    let dns = Node::dns_port(rpc);
    let nodes = form_cluster(dir.path(), rpc, 3, "");
    nodes[0].ok(&["zone", "add", "example.jp"]);
    nodes[0].ok(&["record", "add", "example.jp", "hot 300 IN A 192.0.2.1"]);
    let servers: Vec<String> = (1..=3).map(|i| format!("127.0.0.1{i}")).collect();
    for s in &servers {
        wait_for("every node to answer the hot name", || {
            (kdig(s, dns, &["hot.example.jp", "A", "+short"]).trim() == "192.0.2.1").then_some(())
        });
        // kdig takes a new source port each time: SO_REUSEPORT spreads the
        // queries over the workers, each of which caches the answer.
        for _ in 0..8 {
            assert_eq!(
                kdig(s, dns, &["hot.example.jp", "A", "+short"]).trim(),
                "192.0.2.1"
            );
            assert_eq!(
                kdig(s, dns, &["hot.example.jp", "A", "+dnssec", "+short"]).trim(),
                "192.0.2.1"
            );
            assert_eq!(status(&kdig(s, dns, &["new.example.jp", "A"])), "NXDOMAIN");
        }
    }
    nodes[1].ok(&["record", "set", "example.jp", "hot 300 IN A 192.0.2.2"]);
    nodes[2].ok(&["record", "add", "example.jp", "new 300 IN A 192.0.2.3"]);
    let edited = std::time::Instant::now();
    for s in &servers {
        wait_for("the new data on every node", || {
            (kdig(s, dns, &["hot.example.jp", "A", "+short"]).trim() == "192.0.2.2"
                && kdig(s, dns, &["new.example.jp", "A", "+short"]).trim() == "192.0.2.3")
                .then_some(())
        });
    }
    // Reported, not asserted (shared machines): the issue asks for < 1 s.
    eprintln!(
        "record set visible on all three nodes {} ms after the CLI returned (includes the kdig runs)",
        edited.elapsed().as_millis()
    );
    // Every worker of every node, plain and DO: nothing stale left anywhere.
    for s in &servers {
        for _ in 0..8 {
            assert_eq!(
                kdig(s, dns, &["hot.example.jp", "A", "+short"]).trim(),
                "192.0.2.2"
            );
            assert_eq!(
                kdig(s, dns, &["hot.example.jp", "A", "+dnssec", "+short"]).trim(),
                "192.0.2.2"
            );
            assert_eq!(
                kdig(s, dns, &["new.example.jp", "A", "+short"]).trim(),
                "192.0.2.3"
            );
        }
    }
}
