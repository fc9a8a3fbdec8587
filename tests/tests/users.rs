//! Submission users and sender-allow entries through the real CLI against
//! one `hamail serve`: passwords from a file or standard input (never an
//! argument), hashes never in a plain listing, a passwd-file import that is
//! all or nothing and names the first bad line.

use std::io::Write;
use std::process::{Output, Stdio};

use hamail_tests::{Node, stderr, stdout};

/// Real hashes (openssl passwd -6 / -5), as a Dovecot passwd-file holds them.
const SHA512: &str = "{SHA512-CRYPT}$6$saltsalt$8iYtNHxjWRl.NF6oNZ5tF.iKFlQREaXBLlSmZKP6dy9l5z3vsooWNW0/GZ6Nej73/TFug6pIPSqbJoCT6dfnj.";
const SHA256: &str = "{SHA256-CRYPT}$5$saltsalt$ZI/6D8IUtprIPT0oSEShQnlsdN7tuxxKSSObpb/Yq89";

/// Runs a verb with `input` on its standard input.
fn with_stdin(node: &Node, args: &[&str], input: &str) -> Output {
    let mut child = node
        .command()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run hamail");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn fails(out: &Output, want: &str) {
    assert!(
        !out.status.success(),
        "succeeded: {}{}",
        stdout(out),
        stderr(out)
    );
    assert!(
        stderr(out).contains(want),
        "wanted {want:?} in: {}",
        stderr(out)
    );
}

fn digest(node: &Node) -> String {
    node.json(&["status", "--json"])["state_digest"]
        .as_str()
        .unwrap()
        .to_string()
}

fn users(node: &Node) -> Vec<serde_json::Value> {
    node.json(&["user", "list", "--json"])
        .as_array()
        .unwrap()
        .clone()
}

fn hash_of(node: &Node, address: &str) -> String {
    let all = node.json(&["user", "list", "--show-hashes", "--json"]);
    all.as_array()
        .unwrap()
        .iter()
        .find(|u| u["address"] == address)
        .and_then(|u| u["hash"].as_str())
        .unwrap_or_else(|| panic!("no hash for {address}: {all}"))
        .to_string()
}

#[test]
fn users_from_file_and_stdin_listed_without_hashes() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::with_config(dir.path());
    node.start();
    node.ok(&["domain", "add", "example.jp"]);

    let pw = dir.path().join("pw");
    std::fs::write(&pw, "correct horse\nsecond line ignored\n").unwrap();
    let out = node.ok(&[
        "user",
        "add",
        "alice@example.jp",
        "--password-file",
        pw.to_str().unwrap(),
    ]);
    assert!(
        out.contains("user alice@example.jp added (ARGON2ID)"),
        "{out}"
    );
    let out = with_stdin(&node, &["user", "add", "Bob@Example.JP"], "hunter2\n");
    assert!(out.status.success(), "{}", stderr(&out));

    let list = users(&node);
    let names: Vec<&str> = list
        .iter()
        .map(|u| u["address"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["alice@example.jp", "bob@example.jp"]);
    for u in &list {
        assert_eq!(u["scheme"], "ARGON2ID", "{u}");
        assert!(u.get("hash").is_none(), "a plain listing shows a hash: {u}");
        assert!(u["created_ms"].as_u64().unwrap() > 0);
    }
    let text = node.ok(&["user", "list"]);
    assert!(
        text.contains("alice@example.jp") && text.contains("ARGON2ID") && !text.contains('$'),
        "{text}"
    );
    let alice = hash_of(&node, "alice@example.jp");
    assert!(alice.starts_with("{ARGON2ID}$argon2id$"), "{alice}");
    assert!(!alice.contains("correct horse"));

    // Adding again is refused; passwd changes the hash.
    let again = with_stdin(&node, &["user", "add", "alice@example.jp"], "x\n");
    fails(&again, "user alice@example.jp exists; use user passwd");
    let out = with_stdin(
        &node,
        &["user", "passwd", "alice@example.jp"],
        "battery staple\n",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_ne!(hash_of(&node, "alice@example.jp"), alice);
    fails(
        &with_stdin(&node, &["user", "passwd", "carol@example.jp"], "pw\n"),
        "no such user: carol@example.jp",
    );

    // Bad passwords and a user outside our domains change nothing.
    let before = digest(&node);
    fails(
        &node.cli(&["user", "add", "carol@example.jp"]),
        "no password on standard input",
    );
    fails(
        &with_stdin(&node, &["user", "add", "carol@example.jp"], "\n"),
        "empty password is refused",
    );
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "\nsecret\n").unwrap();
    fails(
        &node.cli(&[
            "user",
            "add",
            "carol@example.jp",
            "--password-file",
            empty.to_str().unwrap(),
        ]),
        "first line",
    );
    fails(
        &with_stdin(&node, &["user", "add", "carol@elsewhere.jp"], "pw\n"),
        "carol@elsewhere.jp is not in one of our domains (hamail domain list)",
    );
    assert_eq!(digest(&node), before);

    // A domain with users is not deleted; deleting the user frees it.
    fails(
        &node.cli(&["domain", "del", "example.jp"]),
        "2 users; delete them first",
    );
    node.ok(&["user", "del", "bob@example.jp"]);
    fails(
        &node.cli(&["user", "del", "bob@example.jp"]),
        "no such user: bob@example.jp",
    );
    assert_eq!(users(&node).len(), 1);
}

#[test]
fn a_password_is_never_an_argument() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::with_config(dir.path());
    node.start();
    node.ok(&["domain", "add", "example.jp"]);
    for args in [
        &["user", "add", "eve@example.jp", "--password", "secret"][..],
        &["user", "add", "eve@example.jp", "secret"],
        &["user", "passwd", "eve@example.jp", "-p", "secret"],
    ] {
        let out = with_stdin(&node, args, "pw\n");
        fails(&out, "unexpected argument");
    }
    assert!(users(&node).is_empty());
}

#[test]
fn import_is_all_or_nothing_and_names_the_first_bad_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::with_config(dir.path());
    node.start();
    node.ok(&["domain", "add", "example.jp"]);
    node.ok(&["domain", "add", "relay.example.jp", "--kind", "relay"]);
    with_stdin(&node, &["user", "add", "old@example.jp"], "pw\n");
    let before = digest(&node);
    let file = dir.path().join("passwd");
    let import = |text: String| {
        std::fs::write(&file, text).unwrap();
        node.cli(&["user", "import", file.to_str().unwrap()])
    };

    let plain = import(format!(
        "# users\nann@example.jp:{SHA512}::::::\n\nben@example.jp:{{PLAIN}}secret\ncid@example.jp:{SHA256}\n"
    ));
    fails(&plain, "line 4");
    assert!(!stderr(&plain).contains("secret"), "{}", stderr(&plain));
    let bad_address = import(format!(
        "ann@example.jp:{SHA512}\nnot an address:{SHA256}\n"
    ));
    fails(&bad_address, "line 2");
    let dup = import(format!(
        "ann@example.jp:{SHA512}\nann@example.jp:{SHA256}\n"
    ));
    fails(&dup, "line 2");
    let outside = import(format!(
        "ann@example.jp:{SHA512}\ndan@elsewhere.jp:{SHA256}\n"
    ));
    fails(
        &outside,
        "dan@elsewhere.jp is not in one of our domains (hamail domain list)",
    );
    assert_eq!(digest(&node), before, "a refused import changed the state");

    let out = import(format!(
        "ann@example.jp:{SHA512}:1000:1000::/home/ann::\nold@example.jp:{SHA256}\nrex@relay.example.jp:{SHA512}\n"
    ));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("imported 3 users (2 new, 1 replaced)"),
        "{}",
        stdout(&out)
    );
    assert_eq!(hash_of(&node, "old@example.jp"), SHA256, "replaced");
    assert_eq!(hash_of(&node, "ann@example.jp"), SHA512);
    let relay = node.json(&["user", "list", "--domain", "relay.example.jp", "--json"]);
    assert_eq!(relay.as_array().unwrap().len(), 1, "{relay}");
    assert_eq!(relay[0]["scheme"], "SHA512-CRYPT");
}

#[test]
fn sender_allow_needs_an_existing_user() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::with_config(dir.path());
    node.start();
    node.ok(&["domain", "add", "example.jp"]);
    fails(
        &node.cli(&["sender", "allow", "sales@example.jp", "fay@example.jp"]),
        "no such user: fay@example.jp",
    );
    with_stdin(&node, &["user", "add", "fay@example.jp"], "pw\n");
    node.ok(&["sender", "allow", "sales@example.jp", "fay@example.jp"]);
    node.ok(&["sender", "allow", "fay@other.example", "fay@example.jp"]);
    let list = node.json(&["sender", "list", "--json"]);
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
    assert_eq!(list[0]["sender"], "sales@example.jp");
    assert_eq!(list[0]["user"], "fay@example.jp");
    let text = node.ok(&["sender", "list"]);
    assert!(
        text.lines().any(|l| l
            .split_whitespace()
            .eq(["sales@example.jp", "fay@example.jp"])),
        "{text}"
    );

    node.ok(&["sender", "deny", "fay@other.example", "fay@example.jp"]);
    fails(
        &node.cli(&["sender", "deny", "fay@other.example", "fay@example.jp"]),
        "no sender-allow entry",
    );
    let out = node.ok(&["user", "del", "fay@example.jp"]);
    assert!(out.contains("with its 1 sender-allow entries"), "{out}");
    assert_eq!(
        node.json(&["sender", "list", "--json"]),
        serde_json::json!([])
    );
}
