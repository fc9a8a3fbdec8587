//! Submission (587 with STARTTLS, 465 with implicit TLS) with SASL AUTH, the
//! way mail clients and hostile clients use it: swaks and Python's smtplib
//! against three nodes sharing a replicated user; fail2ban's stock postfix
//! filter over the log; a real Dovecot as the password backend.

use std::path::Path;
use std::process::Command;

use hamail_tests::{Node, form_cluster_with, stderr, stdout, wait_for};

/// Cluster RPC ports of this file's clusters (DNS +1000, SMTP +2000,
/// submission +3000, submissions +4000).
const PORT: u16 = 18460;
const DOVECOT_PORT: u16 = 18470;

fn support(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("support")
        .join(name)
}

fn swaks(args: &[&str]) -> std::process::Output {
    Command::new("swaks")
        .args(["--timeout", "60"])
        .args(args)
        .output()
        .expect("swaks runs")
}

/// The reply starts with `code` (and its enhanced status code) and a space.
fn has_code(reply: &serde_json::Value, code: &str) -> bool {
    reply
        .as_str()
        .and_then(|r| r.strip_prefix(code))
        .is_some_and(|rest| rest.starts_with(' '))
}

#[test]
fn users_submit_through_any_node_and_every_refusal_has_its_code() {
    hamail_tests::ensure_tool("swaks", "swaks");
    hamail_tests::ensure_tool("fail2ban-regex", "fail2ban");
    let dir = tempfile::tempdir().unwrap();
    let nodes = form_cluster_with(dir.path(), PORT, 3, "", |_, _, text| {
        *text = text.replacen(
            "[smtp]\n",
            "[smtp]\nsmtpd_auth_failure_limit = 100\nsmtpd_sasl_authenticated_header = true\n",
            1,
        );
    });
    nodes[0].ok(&["domain", "add", "example.com", "--kind", "local"]);
    let password = dir.path().join("password");
    std::fs::write(&password, "correct horse\n").unwrap();
    let out = nodes[0].ok(&[
        "user",
        "add",
        "user@example.com",
        "--password-file",
        password.to_str().unwrap(),
    ]);
    assert!(out.contains("user@example.com"), "{out}");
    // Every node serves it once it has applied the entry.
    for n in &nodes {
        wait_for("the user on every node", || {
            let list = n.json(&["user", "list", "--json"]);
            (list.as_array()?.len() == 1).then_some(())
        });
    }
    let host = |i: u8| format!("127.0.0.1{i}");
    let sub = |i: u8| format!("{}:{}", host(i), Node::submission_port(PORT));
    let subs = |i: u8| format!("{}:{}", host(i), Node::submission_port(PORT) + 1000);

    // swaks: 587 with STARTTLS on node 2, 465 on node 3, AUTH PLAIN and LOGIN.
    for (server, tls, auth) in [
        (sub(2), "--tls", "PLAIN"),
        (subs(3), "--tls-on-connect", "LOGIN"),
        (sub(1), "--tls", "LOGIN"),
    ] {
        let out = swaks(&[
            "--server",
            &server,
            tls,
            "--auth",
            auth,
            "--auth-user",
            "user@example.com",
            "--auth-password",
            "correct horse",
            "--from",
            "user@example.com",
            "--to",
            "someone@elsewhere.example",
        ]);
        let text = stdout(&out);
        assert!(
            out.status.success() && text.contains("250 2.0.0 Ok: queued as"),
            "{server} {tls} {auth}: {text}{}",
            stderr(&out)
        );
        assert!(text.contains("235 2.7.0"), "{text}");
    }
    // A wrong password through swaks: 535, nothing sent.
    let out = swaks(&[
        "--server",
        &sub(2),
        "--tls",
        "--auth",
        "PLAIN",
        "--auth-user",
        "user@example.com",
        "--auth-password",
        "wrong",
        "--from",
        "user@example.com",
        "--to",
        "someone@elsewhere.example",
    ]);
    assert!(!out.status.success());
    assert!(stdout(&out).contains("535 5.7.8"), "{}", stdout(&out));

    // Python's smtplib, on node 2: each refusal, and the next client served.
    let probe = Command::new("python3")
        .arg(support("submission_probe.py"))
        .args([
            &host(2),
            &Node::submission_port(PORT).to_string(),
            &(Node::submission_port(PORT) + 1000).to_string(),
            &Node::smtp_port(PORT).to_string(),
            "user@example.com",
            "correct horse",
        ])
        .output()
        .unwrap();
    assert!(probe.status.success(), "probe: {}", stderr(&probe));
    let r: serde_json::Value = serde_json::from_str(&stdout(&probe)).unwrap();
    let features = |k: &str| r[k].to_string().to_lowercase();
    assert!(!features("features_before_tls").contains("\"auth\""), "{r}");
    assert!(features("features_before_tls").contains("starttls"), "{r}");
    assert!(features("features_after_tls").contains("\"auth\""), "{r}");
    assert!(features("features_465").contains("\"auth\""), "{r}");
    assert!(!features("features_mx").contains("\"auth\""), "{r}");
    for (check, code) in [
        ("auth_before_tls", "538 5.7.11"),
        ("mail_before_tls", "530 5.7.0"),
        ("auth_before_ehlo", "503 5.5.1"),
        ("mail_without_auth", "530 5.7.0"),
        ("wrong_password", "535 5.7.8"),
        ("unknown_user", "535 5.7.8"),
        ("unknown_mechanism", "504 5.5.4"),
        ("malformed_base64", "501 5.5.2"),
        ("huge_initial_response", "500 5.5.6"),
        ("nul_in_wrong_place", "535 5.7.8"),
        ("empty_password", "535 5.7.8"),
        ("empty_user", "535 5.7.8"),
        ("other_authzid", "535 5.7.8"),
        ("cancel", "501 5.7.0"),
        ("auth_ok", "235 2.7.0"),
        ("auth_twice", "503 5.5.1"),
        ("mail_not_owned", "553 5.7.1"),
        ("mail_owned", "250 2.1.0"),
        ("auth_in_transaction", "503 5.5.1"),
        ("rcpt_anywhere", "250 2.1.5"),
        ("data", "354"),
        ("end_of_data", "250 2.0.0"),
        ("auth_on_mx", "503 5.5.1"),
    ] {
        assert!(has_code(&r[check], code), "{check} not {code}: {r}");
    }
    assert!(
        r["mail_not_owned"]
            .as_str()
            .unwrap()
            .contains("not owned by user user@example.com"),
        "{r}"
    );
    for check in [
        "wrong_password",
        "unknown_user",
        "unknown_mechanism",
        "malformed_base64",
        "huge_initial_response",
        "nul_in_wrong_place",
        "empty_password",
        "empty_user",
        "other_authzid",
    ] {
        assert!(
            has_code(&r[format!("{check}_then").as_str()], "235 2.7.0"),
            "{check}: {r}"
        );
    }
    assert_eq!(r["login_465"], "235", "{r}");
    assert_eq!(r["sendmail_465"], "250", "{r}");

    // The submitted messages are queued with what RFC 6409 asks for.
    let queued = nodes[1].queue();
    let id = queued
        .iter()
        .find(|m| m["sender"] == "user@example.com")
        .and_then(|m| m["queue_id"].as_str())
        .expect("a queued submission")
        .to_string();
    let shown = nodes[1].ok(&["queue", "show", &id]);
    assert!(shown.contains("ESMTPSA"), "{shown}");
    assert!(
        shown.contains("Authenticated sender: user@example.com"),
        "{shown}"
    );
    assert!(
        shown.contains("Message-ID: <") || shown.contains("Message-Id: <"),
        "{shown}"
    );

    // fail2ban's stock postfix filter (the postfix-sasl jail's mode) counts
    // every failed login in node 2's log: swaks' wrong password and the
    // probe's six (wrong password, unknown user, NUL misplaced, empty
    // password, empty user, another authorization identity).
    let out = Command::new("fail2ban-regex")
        .args([
            nodes[1].log.to_str().unwrap(),
            "/etc/fail2ban/filter.d/postfix.conf[mode=auth]",
        ])
        .output()
        .unwrap();
    let text = stdout(&out);
    let matched = text
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Failregex: ")?
                .split_whitespace()
                .next()?
                .parse::<u32>()
                .ok()
        })
        .unwrap_or_else(|| panic!("fail2ban-regex output: {text}{}", stderr(&out)));
    assert_eq!(matched, 7, "{text}");
}

#[test]
fn a_dovecot_checks_the_passwords_when_configured() {
    hamail_tests::ensure_tool("swaks", "swaks");
    let dir = tempfile::tempdir().unwrap();
    let dovecot_dir = dir.path().join("dovecot");
    let start = Command::new("bash")
        .arg(support("dovecot-auth.sh"))
        .args(["start", dovecot_dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        start.status.success(),
        "dovecot-auth.sh: {}{}",
        stdout(&start),
        stderr(&start)
    );
    let socket = stdout(&start)
        .lines()
        .find_map(|l| l.strip_prefix("SOCKET ").map(str::to_string))
        .expect("the auth socket");
    struct Stop(std::path::PathBuf);
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = Command::new("bash")
                .arg(support("dovecot-auth.sh"))
                .args(["stop", self.0.to_str().unwrap()])
                .output();
        }
    }
    let _stop = Stop(dovecot_dir.clone());
    let sub_port = DOVECOT_PORT + 3000;
    let mut node = Node::with_config_extra(
        dir.path(),
        &format!(
            "[smtp]\nlisten = [\"127.0.0.1:0\"]\n\
             submission_listen = [\"127.0.0.1:{sub_port}\"]\n\
             sasl_backend = \"dovecot\"\ndovecot_auth_socket = \"{socket}\"\n"
        ),
    );
    node.start();
    node.ok(&["domain", "add", "example.com", "--kind", "local"]);
    let server = format!("127.0.0.1:{sub_port}");
    let send = |password: &str| {
        swaks(&[
            "--server",
            &server,
            "--tls",
            "--auth",
            "PLAIN",
            "--auth-user",
            "user@example.com",
            "--auth-password",
            password,
            "--from",
            "user@example.com",
            "--to",
            "someone@elsewhere.example",
        ])
    };
    let ok = send("secret");
    assert!(
        ok.status.success() && stdout(&ok).contains("250 2.0.0 Ok: queued as"),
        "{}",
        stdout(&ok)
    );
    let bad = send("not the password");
    assert!(stdout(&bad).contains("535 5.7.8"), "{}", stdout(&bad));
    // The cluster's own table is not asked: it has no users at all.
    assert_eq!(
        node.json(&["user", "list", "--json"]),
        serde_json::json!([])
    );
}
