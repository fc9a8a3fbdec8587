//! One real `hamail serve` process, driven through the real CLI: the embedded
//! defaults, restarts, signals, kill -9 during an import, and bad input of
//! every kind answered with a clear error that changes nothing.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;

use hamail_tests::{Node, stderr, stdout, wait_for, write_config};

#[test]
fn embedded_defaults_serve_write_restart_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::with_defaults(dir.path());
    node.start();
    assert!(dir.path().join("hamail-data").is_dir());
    let out = node.ok(&["domain", "add", "example.com"]);
    assert!(out.contains("example.com"), "{out}");
    node.ok(&["domain", "add", "relay.example.jp", "--kind", "relay"]);
    node.ok(&["recipient", "add", "user@relay.example.jp", "x"]);
    node.ok(&["alias", "add", "postmaster@example.com", "root@example.com"]);
    node.ok(&[
        "transport",
        "set",
        "relay.example.jp",
        "smtp:[primary.example.jp]:587",
        "--fallback",
        "smtp:[10.0.0.2]:25",
    ]);

    let status = node.stop();
    assert!(status.success(), "SIGTERM exit: {status}");

    node.start();
    let list = node.ok(&["domain", "list"]);
    assert!(
        list.contains("example.com") && list.contains("local"),
        "{list}"
    );
    let json = node.json(&["domain", "list", "--json"]);
    let names: Vec<&str> = json
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["domain"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["example.com", "relay.example.jp"]);
    assert_eq!(
        node.json(&["recipient", "list", "--json"])[0]["address"],
        "user@relay.example.jp"
    );
    assert_eq!(
        node.json(&["alias", "list", "--json"])[0]["targets"][0],
        "root@example.com"
    );
    let t = node.json(&["transport", "list", "--json"]);
    assert_eq!(t[0]["spec"], "smtp:[primary.example.jp]:587");
    assert_eq!(t[0]["fallback"][0], "smtp:[10.0.0.2]:25");
    let status = node.json(&["status", "--json"]);
    assert_eq!(status["raft"]["state"], "leader");
    assert_eq!(status["tables"]["domains"], 2);

    node.signal("INT");
    assert!(node.wait_exit().success(), "SIGINT exits 0");
}

#[test]
fn second_serve_on_same_data_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = Node::with_config(dir.path());
    first.start();
    let out = first.command().arg("serve").output().unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("in use by another hamail process")
            && err.contains(&dir.path().join("data").display().to_string()),
        "{err}"
    );
    assert!(
        err.contains(&first.pid().to_string()),
        "names the pid: {err}"
    );
    // The first keeps running and serving.
    first.ok(&["domain", "add", "still.example"]);
    assert!(first.stop().success());
}

#[test]
fn bad_names_are_refused_by_the_cli_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::with_config(dir.path());
    node.start();
    for (args, needle) in [
        (vec!["domain", "add", "bad_domain.com"], "bad_domain.com"),
        (
            vec!["domain", "add", "example.com", "--kind", "mailbox"],
            "mailbox",
        ),
        (vec!["recipient", "add", "no-at-sign"], "no-at-sign"),
        (
            vec!["recipient", "add", "a%b@example.com"],
            "a%b@example.com",
        ),
        (
            vec!["alias", "add", "a@example.com", "\"quoted\"@example.com"],
            "quoted",
        ),
        (
            vec!["transport", "set", "example.com", "smtp:[host"],
            "smtp:[host",
        ),
        (vec!["transport", "set", "example.com", "pipe:foo"], "pipe"),
    ] {
        let out = node.cli(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(needle), "{args:?}: {}", stderr(&out));
    }
    // Refused by the replicated state: a clear reason, exit 1.
    let out = node.cli(&["recipient", "add", "user@unknown.example"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("unknown.example"), "{}", stderr(&out));
    let out = node.cli(&["domain", "del", "nothere.example"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no such domain"), "{}", stderr(&out));
    let status = node.json(&["status", "--json"]);
    for table in ["domains", "recipients", "aliases", "transports"] {
        assert_eq!(status["tables"][table], 0, "{status}");
    }
}

#[test]
fn recipient_import_is_all_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::with_config(dir.path());
    node.start();
    node.ok(&["domain", "add", "example.jp", "--kind", "relay"]);

    let bad = dir.path().join("bad.map");
    std::fs::write(&bad, "# passwd-2ndmx\nuser1@example.jp x\n\nuser2@example.jp\tx\nnot an address\nuser3@example.jp x\n").unwrap();
    let out = node.cli(&["recipient", "import", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("line 5") && err.contains("nothing imported"),
        "{err}"
    );
    assert_eq!(
        node.json(&["recipient", "list", "--json"])
            .as_array()
            .unwrap()
            .len(),
        0
    );

    // A file naming a domain the cluster does not serve: refused whole.
    let foreign = dir.path().join("foreign.map");
    std::fs::write(&foreign, "user1@example.jp x\nuser@elsewhere.example x\n").unwrap();
    let out = node.cli(&["recipient", "import", foreign.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("elsewhere.example"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        node.json(&["recipient", "list", "--json"])
            .as_array()
            .unwrap()
            .len(),
        0
    );

    let good = dir.path().join("good.map");
    std::fs::write(
        &good,
        "user1@example.jp x\nUser2@Example.JP   OK\npostmaster@example.jp x\n",
    )
    .unwrap();
    let out = node.ok(&["recipient", "import", good.to_str().unwrap()]);
    assert!(out.contains("imported 3"), "{out}");
    let list = node.ok(&["recipient", "list"]);
    assert!(list.contains("user2@example.jp OK"), "{list}");
    assert!(
        node.cli(&["recipient", "import", "/nonexistent/file"])
            .status
            .code()
            == Some(1)
    );
}

#[test]
fn kill_9_during_a_large_import_leaves_all_or_none() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::with_config(dir.path());
    node.start();
    node.ok(&["domain", "add", "example.jp", "--kind", "relay"]);
    let n = 200_000usize;
    let map = dir.path().join("big.map");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&map).unwrap());
    for i in 0..n {
        writeln!(f, "user{i}@example.jp x").unwrap();
    }
    f.flush().unwrap();
    drop(f);

    let mut import = node
        .command()
        .args(["recipient", "import", map.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill the server as soon as the import request has reached it.
    wait_for("the import to reach the server", || {
        node.log_text()
            .contains("recipient import received")
            .then_some(())
    });
    node.kill9();
    let _ = import.wait();

    node.start();
    let count = node
        .json(&["recipient", "list", "--json"])
        .as_array()
        .unwrap()
        .len();
    assert!(
        count == 0 || count == n,
        "partial import visible: {count} of {n}"
    );
    eprintln!("after kill -9 during the import: {count} of {n} recipients visible");
    // The store is healthy and takes writes after the crash.
    node.ok(&["recipient", "add", "after@example.jp"]);
    assert!(node.stop().success());
}

#[test]
fn config_errors_name_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    for (text, needles) in [
        (
            "[node]\nname = \"a\"\ncolour = \"red\"\n",
            vec!["colour", "line 3"],
        ),
        (
            "[cluster]\nbootstrap = \"yes\"\n",
            vec!["bootstrap", "line 2"],
        ),
        ("[metrics]\nlisten = \"not an address\"\n", vec!["line 2"]),
        (
            "[cluster]\nelection_timeout_min_ms = 10\n",
            vec!["cluster.election_timeout_min_ms"],
        ),
        ("[smtpd]\nx = 1\n", vec!["smtpd"]),
    ] {
        std::fs::write(&cfg, text).unwrap();
        let out = std::process::Command::new(hamail_tests::hamail_bin())
            .current_dir(dir.path())
            .args(["--config", cfg.to_str().unwrap(), "serve"])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{text}");
        let err = stderr(&out);
        assert!(err.contains("bad.toml"), "{err}");
        for n in needles {
            assert!(err.contains(n), "{text}: {err}");
        }
    }
    assert!(
        !dir.path().join("hamail-data").exists(),
        "a bad config created nothing"
    );
}

#[test]
fn unusable_data_dir_and_busy_port_are_named() {
    let dir = tempfile::tempdir().unwrap();
    // A data directory that is a file.
    let file = dir.path().join("file");
    std::fs::write(&file, "").unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[node]\ndata_dir = \"{}\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n",
            file.display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(hamail_tests::hamail_bin())
        .args(["--config", cfg.to_str().unwrap(), "serve"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("not a directory")
            && stderr(&out).contains(&file.display().to_string()),
        "{}",
        stderr(&out)
    );

    // A data directory under a file cannot be created.
    let under = file.join("data");
    let out = std::process::Command::new(hamail_tests::hamail_bin())
        .args([
            "--data-dir",
            under.to_str().unwrap(),
            "--config",
            cfg.to_str().unwrap(),
            "serve",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(&under.display().to_string()),
        "{}",
        stderr(&out)
    );

    // A listen address already in use.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap();
    let sub = dir.path().join("n");
    std::fs::create_dir(&sub).unwrap();
    let cfg = write_config(&sub, "");
    // Only the metrics listener takes the busy port: every listener would
    // be refused first as named twice.
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "[metrics]\nlisten = \"127.0.0.1:0\"",
        &format!("[metrics]\nlisten = \"{addr}\""),
    );
    std::fs::write(&cfg, text).unwrap();
    let out = std::process::Command::new(hamail_tests::hamail_bin())
        .args(["--config", cfg.to_str().unwrap(), "serve"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&addr.to_string()) && err.contains("metrics.listen"),
        "{err}"
    );
    assert!(
        !sub.join("data").join("db").exists(),
        "nothing was created in the store"
    );
}

fn mode_of(path: &std::path::Path) -> u32 {
    std::fs::metadata(path)
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()))
        .unwrap()
        & 0o777
}

#[test]
fn malformed_admin_requests_get_errors_and_the_connection_survives() {
    let dir = tempfile::tempdir().unwrap();
    // An operator made the data directory world-readable: serve makes it
    // private, whoever created it.
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut node = Node::with_config(dir.path());
    node.start();
    assert_eq!(mode_of(&data), 0o700, "data directory mode");
    let sock = data.join("admin.sock");
    assert_eq!(mode_of(&sock), 0o600, "admin socket mode");
    let leftovers: Vec<_> = std::fs::read_dir(&data)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".admin-bind"))
        .collect();
    assert!(leftovers.is_empty(), "staging left behind: {leftovers:?}");
    let stream = UnixStream::connect(&sock).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut w = stream;
    let mut ask = |line: &str| -> serde_json::Value {
        w.write_all(line.as_bytes()).unwrap();
        w.write_all(b"\n").unwrap();
        let mut reply = String::new();
        reader.read_line(&mut reply).unwrap();
        serde_json::from_str(&reply).unwrap()
    };
    for bad in [
        "this is not json",
        "{\"op\":\"no_such_op\"}",
        "{\"op\":\"domain_add\",\"domain\":\"bad_domain\",\"kind\":\"local\"}",
        "{\"op\":\"domain_add\",\"domain\":\"ok.example\",\"kind\":\"nope\"}",
        "{\"op\":\"recipient_add\",\"address\":\"a@@b\"}",
        "[1,2,3]",
        "\u{0}\u{1}\u{2}",
    ] {
        let r = ask(bad);
        assert_eq!(r["ok"], false, "{bad}");
        assert!(
            r["error"].as_str().unwrap().contains("malformed request"),
            "{bad}: {r}"
        );
    }
    let r = ask("{\"op\":\"status\"}");
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["result"]["tables"]["domains"], 0);
    let out = node.cli(&["status"]);
    assert!(stdout(&out).contains("leader"), "{}", stdout(&out));
}

#[test]
fn acknowledged_writes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::with_config(dir.path());
    node.start();
    node.ok(&["domain", "add", "example.jp", "--kind", "relay"]);
    for i in 0..20 {
        node.ok(&["recipient", "add", &format!("user{i}@example.jp"), "x"]);
    }
    node.ok(&["alias", "add", "postmaster@example.jp", "root@example.jp"]);
    let before = node.json(&["status", "--json"])["state_digest"].clone();
    // No clean shutdown: every write above was acknowledged, so it must be
    // on disk already.
    node.kill9();
    node.start();
    assert_eq!(
        node.json(&["recipient", "list", "--json"])
            .as_array()
            .unwrap()
            .len(),
        20
    );
    assert_eq!(node.json(&["status", "--json"])["state_digest"], before);
    assert!(node.stop().success());
}
