//! Support for multi-process tests: start real `hamail serve` processes on
//! their own data directories, drive them with the real CLI, stop them with
//! real signals. Waits poll a condition with a bound on the count, never a
//! fixed sleep.

pub mod smtp;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// Upper bound for any wait: generous, because CI machines are shared.
pub const PATIENCE: Duration = Duration::from_secs(120);

/// The hamail binary: `$HAMAIL_BIN`, else `target/<profile>/hamail` next to
/// this test executable (built by `cargo build` before the tests run).
pub fn hamail_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("HAMAIL_BIN") {
        return PathBuf::from(p);
    }
    workspace_bin("hamail")
}

/// A binary of the workspace, built next to this test executable.
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps");
    let bin = profile_dir.join(name);
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build` (or scripts/test) before the tests",
        bin.display()
    );
    bin
}

/// Polls `cond` until it returns Some, or panics with `what` after PATIENCE.
pub fn wait_for<T>(what: &str, mut cond: impl FnMut() -> Option<T>) -> T {
    match poll(|| cond().ok_or(())) {
        Ok(v) => v,
        Err(()) => panic!("gave up waiting for {what}"),
    }
}

/// Polls `cond` until it returns Ok, or returns its last Err after
/// PATIENCE (for a test that reports what was still wrong).
pub fn poll<T, E>(mut cond: impl FnMut() -> Result<T, E>) -> Result<T, E> {
    let start = Instant::now();
    let mut delay = Duration::from_millis(5);
    loop {
        match cond() {
            Ok(v) => return Ok(v),
            Err(e) if start.elapsed() >= PATIENCE => return Err(e),
            Err(_) => {}
        }
        std::thread::park_timeout(delay);
        delay = (delay * 2).min(Duration::from_millis(200));
    }
}

/// What a thief holding a member's data directory (`stolen`, CA key
/// included) can make: a CA-signed certificate for node `id` on a key of its
/// own, stored in `dir`.
pub fn forge_member_pki(
    stolen: &hamail_raft::pki::Pki,
    id: u64,
    dir: &Path,
) -> hamail_raft::pki::Pki {
    let (csr, key) = hamail_raft::pki::make_csr().unwrap();
    let minted = stolen.issue(id, &csr).unwrap();
    hamail_raft::pki::Pki::from_join(
        dir,
        id,
        stolen.ca_pem().to_string(),
        stolen.ca_key_pem().to_string(),
        vec![],
        minted,
        key,
    )
    .unwrap()
}

/// A `hamail serve` process and the directory it runs in.
pub struct Node {
    pub dir: PathBuf,
    /// `--config FILE` passed to serve and the CLI; None for embedded defaults.
    pub config: Option<PathBuf>,
    child: Option<Child>,
    pub log: PathBuf,
    /// Extra environment for `hamail serve` (not for the CLI).
    pub env: Vec<(String, String)>,
}

/// Delivery for tests that are not about it: every route ends at a closed
/// loopback port (deferred, retried in 300 s), and no lookup ever leaves
/// the machine.
pub const NO_DELIVERY: &str =
    "[delivery]\nresolver = \"127.0.0.1:9\"\nrelayhost = \"[127.0.0.1]:9\"\n\n";

/// Submission listeners on ephemeral loopback ports in the `[smtp]`
/// section `extra` has, unless it names them itself.
fn with_ephemeral_submission(extra: &str) -> String {
    let mut keys = String::new();
    for key in ["submission_listen", "submissions_listen"] {
        if !extra.contains(&format!("{key} =")) {
            keys.push_str(&format!("{key} = [\"127.0.0.1:0\"]\n"));
        }
    }
    match extra.find("[smtp]\n") {
        Some(at) => {
            let after = at + "[smtp]\n".len();
            format!("{}{keys}{}", &extra[..after], &extra[after..])
        }
        None => extra.to_string(),
    }
}

/// A test config: data in `dir/data`, metrics on an ephemeral port, fast
/// raft timing for a single node.
pub fn write_config(dir: &Path, extra: &str) -> PathBuf {
    let path = dir.join("hamail.toml");
    // SMTP on an ephemeral port unless the test names its own; submission
    // on ephemeral ports unless the test names them (the defaults, 1587 and
    // 1465, would collide between tests running at once).
    let extra = with_ephemeral_submission(extra);
    let extra = extra.as_str();
    let smtp = if extra.contains("[smtp]") {
        ""
    } else {
        "[smtp]\nlisten = [\"127.0.0.1:0\"]\nsubmission_listen = [\"127.0.0.1:0\"]\n\
         submissions_listen = [\"127.0.0.1:0\"]\n\n"
    };
    let delivery = if extra.contains("[delivery]") {
        ""
    } else {
        NO_DELIVERY
    };
    let text = format!(
        "[node]\nname = \"n1\"\nsite = \"test\"\ndata_dir = \"{}\"\n\n[cluster]\nbootstrap = true\n\n[metrics]\nlisten = \"127.0.0.1:0\"\n\n[rpc]\nlisten = \"127.0.0.1:0\"\n\n[dns]\nlisten = [\"127.0.0.1:0\"]\n\n{smtp}{delivery}{extra}",
        dir.join("data").display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

impl Node {
    /// A node with a test config in a fresh directory under `dir`.
    pub fn with_config(dir: &Path) -> Node {
        Self::with_config_extra(dir, "")
    }

    /// Like `with_config`, with more TOML at the end of the file.
    pub fn with_config_extra(dir: &Path, extra: &str) -> Node {
        let config = write_config(dir, extra);
        Node {
            dir: dir.to_path_buf(),
            config: Some(config),
            child: None,
            log: dir.join("serve.log"),
            env: Vec::new(),
        }
    }

    /// Node `i` (1-based) of a test cluster: host 127.0.0.1<i>, cluster RPC on
    /// `rpc_port`, fast raft timing. The config does not set `bootstrap`, so
    /// the node waits for `cluster init` / `join`.
    pub fn cluster_member(dir: &Path, i: u8, rpc_port: u16, extra: &str) -> Node {
        let dir = dir.join(format!("n{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("hamail.toml");
        let text = format!(
            "[node]\nname = \"n{i}\"\nsite = \"site{i}\"\ndata_dir = \"{data}\"\n\n\
             [cluster]\nheartbeat_interval_ms = 100\n\
             election_timeout_min_ms = 500\nelection_timeout_max_ms = 1000\n\
             write_timeout_ms = 4000\n{extra}\n\
             [rpc]\nlisten = \"127.0.0.1{i}:{rpc_port}\"\n\n\
             [dns]\nlisten = [\"127.0.0.1{i}:{dns_port}\"]\n\n\
             [smtp]\nlisten = [\"127.0.0.1{i}:{smtp_port}\"]\n\
             submission_listen = [\"127.0.0.1{i}:{submission_port}\"]\n\
             submissions_listen = [\"127.0.0.1{i}:{submissions_port}\"]\n\n\
             [metrics]\nlisten = \"127.0.0.1{i}:0\"\n\n{delivery}",
            data = dir.join("data").display(),
            dns_port = Self::dns_port(rpc_port),
            smtp_port = Self::smtp_port(rpc_port),
            submission_port = Self::submission_port(rpc_port),
            submissions_port = Self::submission_port(rpc_port) + 1000,
            delivery = if extra.contains("[delivery]") {
                ""
            } else {
                NO_DELIVERY
            },
        );
        std::fs::write(&path, text).unwrap();
        Node {
            dir: dir.clone(),
            config: Some(path),
            child: None,
            log: dir.join("serve.log"),
            env: Vec::new(),
        }
    }

    /// The DNS port of the members of a test cluster with this RPC port.
    pub fn dns_port(rpc_port: u16) -> u16 {
        rpc_port + 1000
    }

    /// The SMTP port of the members of a test cluster with this RPC port.
    pub fn smtp_port(rpc_port: u16) -> u16 {
        rpc_port + 2000
    }

    /// The submission (STARTTLS) port of the members of a test cluster with
    /// this RPC port; implicit TLS (465's role) is on the port 1000 above.
    pub fn submission_port(rpc_port: u16) -> u16 {
        rpc_port + 3000
    }

    /// The SMTP address of a cluster member made by `cluster_member`.
    pub fn smtp_addr(i: u8, rpc_port: u16) -> String {
        format!("127.0.0.1{i}:{}", Self::smtp_port(rpc_port))
    }

    /// The RPC address of a cluster member made by `cluster_member`.
    pub fn rpc_addr(i: u8, rpc_port: u16) -> String {
        format!("127.0.0.1{i}:{rpc_port}")
    }

    /// Starts a node that is in no cluster yet and waits until it answers.
    pub fn start_waiting(&mut self) {
        self.spawn();
        wait_for("hamail serve to answer status", || {
            self.assert_running();
            self.cli(&["status", "--json"])
                .status
                .success()
                .then_some(())
        });
    }

    /// Panics with the server's log if it has exited.
    fn assert_running(&mut self) {
        if let Some(child) = self.child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            panic!(
                "hamail serve exited early ({status}); log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }

    /// `status --json` if the node answers.
    pub fn status(&self) -> Option<serde_json::Value> {
        let out = self.cli(&["status", "--json"]);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// A node on the embedded defaults, run from `dir` (data in dir/hamail-data).
    pub fn with_defaults(dir: &Path) -> Node {
        Node {
            dir: dir.to_path_buf(),
            config: None,
            child: None,
            log: dir.join("serve.log"),
            env: Vec::new(),
        }
    }

    pub fn command(&self) -> Command {
        let mut c = Command::new(hamail_bin());
        c.current_dir(&self.dir);
        if let Some(cfg) = &self.config {
            c.arg("--config").arg(cfg);
        }
        c
    }

    /// Spawns `hamail serve` without waiting for it.
    pub fn spawn(&mut self) -> &mut Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = self
            .command()
            .arg("serve")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn hamail serve");
        self.child = Some(child);
        self.child.as_mut().unwrap()
    }

    /// Starts the node and waits until it answers `status` with a leader.
    pub fn start(&mut self) {
        self.spawn();
        self.wait_ready();
    }

    pub fn wait_ready(&mut self) {
        wait_for("hamail serve to answer status with a leader", || {
            self.assert_running();
            let out = self.cli(&["status", "--json"]);
            if !out.status.success() {
                return None;
            }
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            v["raft"]["leader"].as_u64().map(|_| ())
        });
    }

    /// Runs a CLI verb against this node.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.command().args(args).output().expect("run hamail")
    }

    /// Runs a CLI verb that must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "hamail {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        serde_json::from_str(&self.ok(args)).expect("json output")
    }

    /// The cluster's queue as this node has applied it (`queue list --json`).
    pub fn queue(&self) -> Vec<serde_json::Value> {
        match self.json(&["queue", "list", "--json"]) {
            serde_json::Value::Array(entries) => entries,
            other => panic!("queue list --json gave {other}"),
        }
    }

    /// The ids of the queued messages.
    pub fn queue_ids(&self) -> std::collections::BTreeSet<String> {
        self.queue()
            .iter()
            .map(|e| e["queue_id"].as_str().expect("a queue id").to_string())
            .collect()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{sig} failed");
    }

    /// Waits for the process to exit and returns its status.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let child = self.child.as_mut().expect("running");
        let status = wait_for("hamail serve to exit", || child.try_wait().unwrap());
        self.child = None;
        status
    }

    /// SIGTERM, then wait for the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        self.signal("TERM");
        self.wait_exit()
    }

    /// kill -9: no chance to flush or clean up.
    pub fn kill9(&mut self) {
        self.signal("KILL");
        self.wait_exit();
    }

    pub fn log_text(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Forms a cluster: node 1 `cluster init`, the others `cluster join`.
pub fn form_cluster(dir: &Path, port: u16, n: u8, extra: &str) -> Vec<Node> {
    form_cluster_with(dir, port, n, extra, |_, _, _| {})
}

/// `form_cluster`, with `prepare(i, node, config_text)` applied to each
/// node before it starts: it may change the config file's text (e.g. an
/// `advertise` address) and the node's environment.
pub fn form_cluster_with(
    dir: &Path,
    port: u16,
    n: u8,
    extra: &str,
    prepare: impl Fn(u8, &mut Node, &mut String),
) -> Vec<Node> {
    let mut nodes: Vec<Node> = (1..=n)
        .map(|i| {
            let mut node = Node::cluster_member(dir, i, port, extra);
            let cfg = node.config.clone().expect("a config file");
            let mut text = std::fs::read_to_string(&cfg).unwrap();
            prepare(i, &mut node, &mut text);
            std::fs::write(&cfg, text).unwrap();
            node
        })
        .collect();
    nodes[0].start_waiting();
    assert!(
        nodes[0].status().unwrap()["raft"].is_null(),
        "waits for init"
    );
    let out = nodes[0].ok(&["cluster", "init"]);
    assert!(out.contains("initialized cluster"), "{out}");
    nodes[0].wait_ready();
    // Init again is a no-op.
    let out = nodes[0].ok(&["cluster", "init"]);
    assert!(out.contains("already initialized"), "{out}");
    let seed = Node::rpc_addr(1, port);
    let first = nodes[0].command();
    for node in nodes.iter_mut().skip(1) {
        let token = token_via(first.get_program(), &first);
        node.start_waiting();
        let out = node.ok(&["cluster", "join", &seed, "--token", &token]);
        assert!(out.contains("now a voter"), "{out}");
        node.wait_ready();
    }
    nodes
}

/// A fresh join token from the node whose CLI command `base` is.
fn token_via(program: &std::ffi::OsStr, base: &Command) -> String {
    let mut c = Command::new(program);
    c.args(base.get_args());
    if let Some(d) = base.get_current_dir() {
        c.current_dir(d);
    }
    let out = c
        .args(["cluster", "token", "--ttl", "10m"])
        .output()
        .unwrap();
    assert!(out.status.success(), "cluster token: {}", stderr(&out));
    stdout(&out).trim().to_string()
}

/// Output helpers.
/// Makes sure a tool a test drives is installed: when the shell command
/// `check` fails (e.g. `command -v swaks`), installs the Debian `package`
/// (waiting for dpkg's lock: tests running at once may install together).
pub fn ensure_installed(check: &str, package: &str) {
    let have = || {
        Command::new("sh")
            .args(["-c", check])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if have() {
        return;
    }
    let ok = Command::new("apt-get")
        .args([
            "-o",
            "DPkg::Lock::Timeout=600",
            "install",
            "-y",
            "-q",
            package,
        ])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok && have(), "cannot install {package} (for `{check}`)");
}

/// `ensure_installed` for a program on the PATH.
pub fn ensure_tool(bin: &str, package: &str) {
    ensure_installed(&format!("command -v {bin}"), package);
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
