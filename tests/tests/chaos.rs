//! The short geo fault suite: three nodes whose cluster links run through
//! hamail-chaos (20 ms round trips), mail sent to all three nodes and zone
//! edits made on all three while a node is isolated, killed with -9,
//! paused with SIGSTOP, and cut off one way; then a checker that fails on
//! any acknowledged message not delivered, any acknowledged zone edit
//! missing, any SOA serial seen going backwards, and states that do not
//! converge. It reports duplicates and the recovery time after each fault.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hamail_tests::smtp::{SmtpClient, queued_id};
use hamail_tests::{Node, form_cluster_with, stderr, stdout, wait_for, workspace_bin};

const RPC: u16 = 17710;
const PROXY: u16 = RPC + 100;

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn proxy_addr(i: u8) -> String {
    format!("127.0.0.1{i}:{PROXY}")
}

/// One-way delay of every link: `HAMAIL_CHAOS_DELAY_MS` (bench/chaos uses
/// 40, an 80 ms round trip), else 10.
fn base_delay_ms() -> u64 {
    std::env::var("HAMAIL_CHAOS_DELAY_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10)
}

/// Base rules: every link the base delay each way, 2 ms jitter; plus
/// `extra` first.
fn set_rules(path: &Path, extra: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{extra}* * {} 2 pass\n", base_delay_ms())).unwrap();
    std::fs::rename(tmp, path).unwrap();
}

/// A fault of the suite, on sites numbered 1-3.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// Cut off from both peers, both ways.
    Isolate(u8),
    /// kill -9, restarted with its data after the pause.
    Kill(u8),
    /// SIGSTOP, SIGCONT after the pause.
    Pause(u8),
    /// The first cannot reach the second; the second still reaches it.
    OneWay(u8, u8),
    /// The site burns down: kill -9, `cluster remove` from a survivor, its
    /// data directory wiped, and after the pause a new node on the same
    /// address `cluster join`s (a new node id; the lost node's queue is
    /// handed to the survivors).
    Rebuild(u8),
    /// The site's wall clock steps by this many seconds (forward or back;
    /// its monotonic clock runs on), and steps back when the fault ends,
    /// as NTP would correct it. Through libfaketime.
    ClockJump(u8, i64),
}

/// A small deterministic generator (xorshift64*), so a schedule can be
/// replayed from its seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The schedule: the fixed short suite, or with `HAMAIL_CHAOS_SECS` a
/// random one from `HAMAIL_CHAOS_SEED` (printed) for that long.
/// Faults with how long each lasts.
type Schedule = Vec<(Fault, Duration)>;

fn schedule() -> (Schedule, Option<(u64, Duration)>) {
    let fixed = vec![
        (Fault::Isolate(1), Duration::from_secs(3)),
        (Fault::Kill(2), Duration::from_secs(2)),
        (Fault::Pause(3), Duration::from_secs(3)),
        (Fault::OneWay(2, 3), Duration::from_secs(3)),
        (Fault::Rebuild(1), Duration::from_secs(2)),
        (Fault::ClockJump(2, -7200), Duration::from_secs(3)),
        (Fault::ClockJump(3, 7200), Duration::from_secs(3)),
    ];
    let Some(secs) = std::env::var("HAMAIL_CHAOS_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
    else {
        return (fixed, None);
    };
    let seed = std::env::var("HAMAIL_CHAOS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos() as u64
                | 1
        });
    (Vec::new(), Some((seed, Duration::from_secs(secs))))
}

fn random_fault(rng: &mut Rng) -> (Fault, Duration) {
    let site = rng.below(3) as u8 + 1;
    let other = (site + rng.below(2) as u8) % 3 + 1;
    let fault = match rng.below(10) {
        0 | 1 => Fault::Isolate(site),
        2 | 3 => Fault::Kill(site),
        4 | 5 => Fault::Pause(site),
        6 | 7 => Fault::OneWay(site, other),
        8 => Fault::Rebuild(site),
        _ => {
            // Up to two hours either way.
            let secs = 60 + rng.below(7140) as i64;
            Fault::ClockJump(site, if rng.below(2) == 0 { secs } else { -secs })
        }
    };
    (fault, Duration::from_millis(1000 + rng.below(5000)))
}

/// Injects a fault for `d`, then heals it.
fn inject(fault: Fault, d: Duration, rules: &Path, sink: &Path, nodes: &mut [Node]) {
    match fault {
        Fault::Isolate(i) => {
            set_rules(
                rules,
                &format!(
                    "127.0.0.1{i} * 0 0 blackhole\n* {} 0 0 blackhole\n",
                    proxy_addr(i)
                ),
            );
            std::thread::sleep(d);
            set_rules(rules, "");
        }
        Fault::Kill(i) => {
            nodes[i as usize - 1].kill9();
            std::thread::sleep(d);
            nodes[i as usize - 1].spawn();
        }
        Fault::Pause(i) => {
            nodes[i as usize - 1].signal("STOP");
            std::thread::sleep(d);
            nodes[i as usize - 1].signal("CONT");
        }
        Fault::OneWay(a, b) => {
            set_rules(
                rules,
                &format!("127.0.0.1{a} {} 0 0 blackhole\n", proxy_addr(b)),
            );
            std::thread::sleep(d);
            set_rules(rules, "");
        }
        Fault::Rebuild(i) => rebuild(i, d, nodes),
        Fault::ClockJump(i, secs) => {
            let t = Instant::now();
            set_clock(&nodes[i as usize - 1], secs);
            probe_clock(i, secs, sink);
            std::thread::sleep(d.saturating_sub(t.elapsed()));
            set_clock(&nodes[i as usize - 1], 0);
        }
    }
}

/// libfaketime, which the suite runs every node under (scripts/test
/// installs the `faketime` package).
fn libfaketime() -> String {
    let found = std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("faketime/libfaketime.so.1"))
        .chain([Path::new("/usr/lib/faketime/libfaketime.so.1").to_path_buf()])
        .find(|p| p.exists());
    match found {
        Some(p) => p.display().to_string(),
        None => panic!("libfaketime is missing: apt-get install -y faketime (scripts/test does)"),
    }
}

/// Waits until a message taken by site `i` carries its clock stepped by
/// `secs` in its `Received:` header: proof that the step reached the
/// process (libfaketime reads the offset again within a second).
fn probe_clock(i: u8, secs: i64, sink: &Path) {
    let mut n = 0;
    wait_for("the stepped clock in a Received header", || {
        n += 1;
        let token = format!("clock-{i}-{secs}-{n}");
        try_send(i, &token)?;
        let text = wait_for("the clock probe at the sink", || {
            std::fs::read_dir(sink)
                .ok()?
                .flatten()
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .find(|t| t.contains(&format!("Subject: {token}\r\n")))
        });
        // "Received: from ... ; Wed, 2 Dec 2026 07:10:00 +0000 (UTC)"
        let date = text
            .split("Received: ")
            .nth(1)?
            .split("\r\n\r\n")
            .next()?
            .split("; ")
            .nth(1)?
            .lines()
            .next()?
            .trim_end_matches(" (UTC)")
            .to_string();
        let out = Command::new("date")
            .args(["-d", &date, "+%s"])
            .output()
            .ok()?;
        let stamped: i64 = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_secs() as i64;
        ((stamped - now - secs).abs() < 120).then_some(())
    });
}

/// The file each node's libfaketime reads its wall-clock offset from.
fn clock_file(n: &Node) -> std::path::PathBuf {
    n.dir.join("faketime")
}

/// Steps a node's wall clock to `secs` from the real time.
fn set_clock(n: &Node, secs: i64) {
    let tmp = clock_file(n).with_extension("tmp");
    std::fs::write(&tmp, format!("{secs:+}\n")).unwrap();
    std::fs::rename(tmp, clock_file(n)).unwrap();
}

/// The rebuilt-site fault: see `Fault::Rebuild`.
fn rebuild(i: u8, d: Duration, nodes: &mut [Node]) {
    let k = i as usize - 1;
    nodes[k].kill9();
    let s = (k + 1) % 3;
    let name = format!("n{i}");
    wait_for("the lost node removed by a survivor", || {
        let out = nodes[s].cli(&["cluster", "remove", &name]);
        // A retry after a remove that committed but timed out finds no node.
        (out.status.success() || stderr(&out).contains("no node")).then_some(())
    });
    std::fs::remove_dir_all(nodes[k].dir.join("data")).unwrap();
    std::thread::sleep(d);
    let token = wait_for("a join token from a survivor", || {
        let out = nodes[s].cli(&["cluster", "token", "--ttl", "10m"]);
        out.status
            .success()
            .then(|| stdout(&out).trim().to_string())
    });
    nodes[k].start_waiting();
    let out = nodes[k].cli(&[
        "cluster",
        "join",
        &proxy_addr(s as u8 + 1),
        "--token",
        &token,
    ]);
    assert!(
        out.status.success() && stdout(&out).contains("now a voter"),
        "the rebuilt site could not join: {}{}",
        stdout(&out),
        stderr(&out)
    );
}

fn soa(i: u8, dns: u16) -> Option<u64> {
    let out = Command::new("kdig")
        .args([
            &format!("@127.0.0.1{i}"),
            "-p",
            &dns.to_string(),
            "+time=1",
            "+retry=0",
        ])
        .args(["chaos.example", "SOA", "+short"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(2)?
        .parse()
        .ok()
}

fn try_send(i: u8, token: &str) -> Option<String> {
    let mut c = SmtpClient::greeted(&Node::smtp_addr(i, RPC), "chaos.client")?;
    let r = c
        .send_mail(
            "sender@client.example",
            &["user@example.jp"],
            &format!("Subject: {token}\r\n\r\n{token}"),
        )
        .ok()?;
    queued_id(&r)
}

#[test]
fn acknowledged_mail_and_zone_edits_survive_site_faults() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let dns = Node::dns_port(RPC);
    let rules = d.join("rules");
    set_rules(&rules, "");
    let mut proxy = Command::new(workspace_bin("hamail-chaos"));
    proxy.arg("proxy").arg("--rules").arg(&rules);
    for i in 1..=3u8 {
        proxy
            .arg("--map")
            .arg(format!("{}=127.0.0.1{i}:{RPC}", proxy_addr(i)));
    }
    let mut child = proxy.stdout(Stdio::piped()).spawn().unwrap();
    let mut ready = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    assert_eq!(ready.trim(), "READY");
    let _proxy = Killed(child);

    // Each node advertises its proxy: every cluster link goes through it.
    // Across sites (bench/chaos: 40 ms each way) raft needs geo timing: an
    // AppendEntries must come back within a heartbeat interval.
    let geo = base_delay_ms() >= 20;
    let lease = if geo { 8 } else { 3 };
    let extra = format!(
        "\n[delivery]\nresolver = \"127.0.0.1:9\"\nminimal_backoff_time_secs = 1\n\
         maximal_backoff_time_secs = 2\nlease_secs = {lease}\nlease_check_interval_secs = 1\n"
    );
    // Every node runs under libfaketime: only its wall clock can be
    // stepped (the monotonic clock, which raft's timers and the lease use,
    // stays real). The offset file is read again at most once a second.
    let faketime = libfaketime();
    let mut nodes = form_cluster_with(d, RPC, 3, &extra, |i, node, text| {
        set_clock(node, 0);
        node.env = vec![
            ("LD_PRELOAD".into(), faketime.clone()),
            (
                "FAKETIME_TIMESTAMP_FILE".into(),
                clock_file(node).display().to_string(),
            ),
            ("FAKETIME_CACHE_DURATION".into(), "1".into()),
            ("DONT_FAKE_MONOTONIC".into(), "1".into()),
        ];
        if geo {
            *text = text
                .replace("heartbeat_interval_ms = 100", "heartbeat_interval_ms = 250")
                .replace(
                    "election_timeout_min_ms = 500",
                    "election_timeout_min_ms = 1500",
                )
                .replace(
                    "election_timeout_max_ms = 1000",
                    "election_timeout_max_ms = 3000",
                )
                .replace("write_timeout_ms = 4000", "write_timeout_ms = 10000");
        }
        *text = text.replace(
            &format!("[rpc]\nlisten = \"127.0.0.1{i}:{RPC}\"\n"),
            &format!(
                "[rpc]\nlisten = \"127.0.0.1{i}:{RPC}\"\nadvertise = \"{}\"\n",
                proxy_addr(i)
            ),
        );
    });
    let n1 = &nodes[0];
    n1.ok(&["domain", "add", "example.jp", "--kind", "relay"]);
    n1.ok(&["recipient", "add", "user@example.jp"]);
    n1.ok(&["transport", "set", "example.jp", "smtp:[127.0.0.75]:2627"]);
    n1.ok(&["zone", "add", "chaos.example"]);
    for n in &nodes {
        wait_for("setup on every node", || {
            n.ok(&["transport", "list"])
                .contains("127.0.0.75")
                .then_some(())
        });
    }
    let sink_dir = d.join("sink");
    std::fs::create_dir_all(&sink_dir).unwrap();
    let mut sink = Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("support/mailsink.py"))
        .args(["--listen", "127.0.0.75:2627", "--dir"])
        .arg(&sink_dir)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(sink.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _sink = Killed(sink);

    // The workload: mail to every node, zone edits on every node, and the
    // SOA serial of every node watched.
    let stop = Arc::new(AtomicBool::new(false));
    let acked_mail: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
    let acked_edits: Arc<Mutex<Vec<String>>> = Arc::default();
    let regressions: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut workers = Vec::new();
    {
        let (stop, acked) = (stop.clone(), acked_mail.clone());
        workers.push(std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for i in 1..=3u8 {
                    n += 1;
                    let token = format!("tok-{n}-via-{i}");
                    if let Some(id) = try_send(i, &token) {
                        acked.lock().unwrap().insert(token, id);
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }));
    }
    {
        let (stop, acked) = (stop.clone(), acked_edits.clone());
        let configs: Vec<_> = nodes.iter().map(|n| n.config.clone().unwrap()).collect();
        let dirs: Vec<_> = nodes.iter().map(|n| n.dir.clone()).collect();
        workers.push(std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for k in 0..3 {
                    n += 1;
                    let name = format!("e{n}");
                    let out = Command::new(hamail_tests::hamail_bin())
                        .current_dir(&dirs[k])
                        .arg("--config")
                        .arg(&configs[k])
                        .args([
                            "record",
                            "add",
                            "chaos.example",
                            &format!("{name} 60 IN A 192.0.2.1"),
                        ])
                        .output()
                        .unwrap();
                    if out.status.success() {
                        acked.lock().unwrap().push(name);
                    }
                }
            }
        }));
    }
    {
        let (stop, regressions) = (stop.clone(), regressions.clone());
        workers.push(std::thread::spawn(move || {
            let mut last: BTreeMap<u8, u64> = BTreeMap::new();
            while !stop.load(Ordering::Relaxed) {
                for i in 1..=3u8 {
                    if let Some(s) = soa(i, dns) {
                        if let Some(prev) = last.get(&i)
                            && s < *prev
                        {
                            regressions
                                .lock()
                                .unwrap()
                                .push(format!("node {i}: {prev} -> {s}"));
                        }
                        last.insert(i, s);
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }));
    }

    // The faults; after each, the time until every node takes mail again.
    let recovered = |nodes: &[Node]| -> Duration {
        let t = Instant::now();
        for i in 1..=3u8 {
            wait_for("every node to take mail again", || {
                try_send(i, &format!("probe-{i}-{}", t.elapsed().as_nanos())).map(|_| ())
            });
        }
        let _ = nodes;
        t.elapsed()
    };
    let mut report: Vec<(String, Duration)> = Vec::new();
    // Faults start once mail and zone edits both flow, and the workload
    // stops only after both made progress past the last fault.
    let progress = || {
        (
            acked_mail.lock().unwrap().len(),
            acked_edits.lock().unwrap().len(),
        )
    };
    let progressed_from = |(m0, e0): (usize, usize)| {
        wait_for("the workload to make progress", || {
            let (m, e) = progress();
            (m > m0 && e > e0).then_some(())
        })
    };
    progressed_from((0, 0));
    let (fixed, random) = schedule();
    let mut run = |fault: Fault, d: Duration, nodes: &mut Vec<Node>| {
        inject(fault, d, &rules, &sink_dir, nodes);
        let what = format!("{fault:?} for {} ms", d.as_millis());
        let t = recovered(nodes);
        eprintln!(
            "chaos: fault {} done: {what}, recovered in {} ms",
            report.len() + 1,
            t.as_millis()
        );
        report.push((what, t));
    };
    for (fault, d) in fixed {
        run(fault, d, &mut nodes);
    }
    if let Some((seed, total)) = random {
        eprintln!("chaos: random schedule, seed {seed} (HAMAIL_CHAOS_SEED={seed} replays it)");
        let mut rng = Rng(seed);
        let started = Instant::now();
        while started.elapsed() < total {
            let (fault, d) = random_fault(&mut rng);
            run(fault, d, &mut nodes);
            std::thread::sleep(Duration::from_millis(500 + rng.below(2000)));
        }
    }
    progressed_from(progress());
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }

    // The checker.
    let acked = acked_mail.lock().unwrap().clone();
    wait_for("every acknowledged message delivered", || {
        let got: BTreeSet<String> = std::fs::read_dir(&sink_dir)
            .ok()?
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "eml"))
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
            .filter_map(|t| {
                t.split("Subject: ")
                    .nth(1)
                    .map(|s| s.lines().next().unwrap_or("").to_string())
            })
            .collect();
        acked.keys().all(|t| got.contains(t)).then_some(())
    });
    let mut per_token: BTreeMap<String, usize> = BTreeMap::new();
    for e in std::fs::read_dir(&sink_dir).unwrap().flatten() {
        if e.path().extension().is_some_and(|x| x == "eml")
            && let Ok(t) = std::fs::read_to_string(e.path())
            && let Some(s) = t.split("Subject: ").nth(1)
        {
            *per_token
                .entry(s.lines().next().unwrap_or("").to_string())
                .or_default() += 1;
        }
    }
    let duplicates: usize = acked
        .keys()
        .map(|t| per_token.get(t).copied().unwrap_or(1) - 1)
        .sum();
    let edits = acked_edits.lock().unwrap().clone();
    for n in &nodes {
        let zone = wait_for("every acknowledged zone edit on every node", || {
            let z = n.ok(&["zone", "show", "chaos.example"]);
            edits
                .iter()
                .all(|e| {
                    let owner = format!("{e}.chaos.example.");
                    z.lines()
                        .any(|l| l.split_whitespace().next() == Some(owner.as_str()))
                })
                .then_some(z)
        });
        assert!(!zone.is_empty());
    }
    let digest = |n: &Node| {
        n.status()
            .and_then(|s| s["state_digest"].as_str().map(str::to_string))
    };
    wait_for("the states to converge", || {
        let q: usize = nodes.iter().map(|n| n.queue().len()).sum();
        let ds: Vec<Option<String>> = nodes.iter().map(digest).collect();
        (q == 0 && ds[0].is_some() && ds.iter().all(|x| *x == ds[0])).then_some(())
    });
    let regressions = regressions.lock().unwrap().clone();
    eprintln!(
        "chaos: {} messages acknowledged, 0 lost, {duplicates} duplicates; {} zone edits acknowledged, 0 lost; {} serial regressions",
        acked.len(),
        edits.len(),
        regressions.len()
    );
    for (fault, t) in &report {
        eprintln!(
            "chaos: {fault}: every node took mail again {} ms after the fault ended",
            t.as_millis()
        );
    }
    assert!(
        regressions.is_empty(),
        "SOA serial went backwards: {regressions:?}"
    );
    assert!(
        !acked.is_empty() && !edits.is_empty(),
        "the workload made progress"
    );
}
