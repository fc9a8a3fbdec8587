//! hamail's configuration: TOML, every key with a default and a doc comment,
//! unknown keys refused. `Config::default()` is the embedded single-node
//! default that `hamail serve` runs on without a file; the example file
//! `config/hamail.example.toml` states the same values (a test checks it).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use hamail_types::TlsLevel;
use serde::{Deserialize, Deserializer, Serialize};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("cannot read config file {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("config file {path}: key {key}: {reason}")]
    Invalid {
        path: String,
        key: &'static str,
        reason: String,
    },
}

/// The whole configuration file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub node: NodeSection,
    pub cluster: ClusterSection,
    pub rpc: RpcSection,
    pub dns: DnsSection,
    pub smtp: SmtpSection,
    pub delivery: DeliverySection,
    pub metrics: MetricsSection,
}

/// `[node]`: who this node is and where it keeps its data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeSection {
    /// Node name, unique in the cluster; also the DNS host name used for it.
    pub name: String,
    /// Site label (a data centre or city); shown by `cluster status`.
    pub site: String,
    /// Data directory: RocksDB, snapshots, the admin socket. Relative paths
    /// are relative to the working directory of `hamail serve`.
    pub data_dir: PathBuf,
    /// Log filter (tracing EnvFilter syntax); RUST_LOG overrides it.
    pub log: String,
}

impl Default for NodeSection {
    fn default() -> Self {
        NodeSection {
            name: "hamail".into(),
            site: "default".into(),
            data_dir: PathBuf::from("./hamail-data"),
            log: "info,openraft=warn".into(),
        }
    }
}

/// `[cluster]`: raft settings. Defaults hold at 150 ms round trips between
/// sites: a heartbeat every 250 ms, elections after 1.5–3 s of silence (six
/// missed heartbeats, ten round trips), so a slow link does not start
/// needless elections.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSection {
    /// Initialise this node as a one-node cluster on first start (what
    /// `hamail cluster init` does). True for the embedded default (no config
    /// file); a config file that does not set it means false, so nodes that
    /// will `hamail cluster join` never start a cluster of their own.
    pub bootstrap: bool,
    /// Cluster name; nodes of different clusters refuse each other.
    pub name: String,
    /// Leader heartbeat interval, ms.
    pub heartbeat_interval_ms: u64,
    /// Lower bound of the election timeout, ms.
    pub election_timeout_min_ms: u64,
    /// Upper bound of the election timeout, ms.
    pub election_timeout_max_ms: u64,
    /// Build a snapshot after this many log entries since the last one.
    pub snapshot_logs_since_last: u64,
    /// Log entries kept after a snapshot (so slow followers catch up from
    /// the log rather than a snapshot).
    pub max_logs_kept_after_snapshot: u64,
    /// A write not committed within this time fails with "no quorum" (the
    /// CLI exits 1; SMTP will answer 451).
    pub write_timeout_ms: u64,
    /// Raft entries the proposer keeps in flight at once. Fewer means
    /// bigger batches on one site; more hides long round trips between
    /// sites (bench/geo).
    pub proposals_in_flight: usize,
    /// Leave out the empty AppendEntries openraft sends to tell a follower
    /// of a new commit while that follower has entries waiting (they carry
    /// it): without this a write waits an extra round trip between sites.
    /// See hamail-raft's network.rs.
    pub elide_heartbeats: bool,
}

impl Default for ClusterSection {
    fn default() -> Self {
        ClusterSection {
            bootstrap: true,
            name: "hamail".into(),
            heartbeat_interval_ms: 250,
            election_timeout_min_ms: 1500,
            election_timeout_max_ms: 3000,
            snapshot_logs_since_last: 5000,
            max_logs_kept_after_snapshot: 1000,
            write_timeout_ms: 10_000,
            proposals_in_flight: 2,
            elide_heartbeats: true,
        }
    }
}

/// `[rpc]`: the cluster RPC listener (mTLS).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RpcSection {
    /// Address the cluster RPC listens on.
    pub listen: SocketAddr,
    /// Address other nodes dial (behind NAT, the public one). Empty: `listen`.
    pub advertise: String,
}

impl Default for RpcSection {
    fn default() -> Self {
        RpcSection {
            listen: SocketAddr::from(([127, 0, 0, 1], 7400)),
            advertise: String::new(),
        }
    }
}

/// `[dns]`: the authoritative name server of this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsSection {
    /// Addresses to answer DNS on (UDP and TCP); production uses port 53.
    pub listen: Vec<SocketAddr>,
    /// This node's name server host name, used for its NS record when a
    /// zone is created without a zone file. Empty: `<node name>.<zone>`,
    /// with the first listen address as glue.
    pub hostname: String,
    /// Addresses allowed to transfer zones (AXFR, over TCP), e.g. the
    /// secondaries. Everyone else is refused.
    pub allow_axfr: Vec<std::net::IpAddr>,
    /// Secondaries sent a NOTIFY (UDP) after every committed zone change.
    pub notify: Vec<SocketAddr>,
    /// Idle TCP connections are closed after this many seconds.
    pub tcp_idle_timeout_secs: u64,
    /// Largest UDP answer, whatever buffer a client's EDNS offers (the DNS
    /// flag day's 1232 avoids fragmentation); larger answers get TC=1.
    pub max_udp_payload: u16,
    /// UDP sockets (SO_REUSEPORT) and workers per listen address.
    pub udp_workers: usize,
}

impl Default for DnsSection {
    fn default() -> Self {
        DnsSection {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 1053))],
            hostname: String::new(),
            allow_axfr: Vec::new(),
            notify: Vec::new(),
            tcp_idle_timeout_secs: 10,
            max_udp_payload: 1232,
            udp_workers: 2,
        }
    }
}

/// `[smtp]`: the MX (smtpd). Limits carry Postfix's names and defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpSection {
    /// Addresses to accept mail on; production uses port 25.
    pub listen: Vec<SocketAddr>,
    /// Submission listeners (587 in production). The submission service
    /// is not built yet: until it is, any address here is refused (a
    /// listener that silently serves nothing would be worse). Empty.
    pub submission_listen: Vec<SocketAddr>,
    /// `myhostname`: the name in the banner, EHLO reply and Received
    /// headers. Empty: the node name.
    pub hostname: String,
    /// Clients that may relay to any domain (Postfix's `mynetworks`).
    pub mynetworks: Vec<String>,
    /// Largest message in bytes (SIZE= above it refused at MAIL).
    pub message_size_limit: usize,
    /// Recipients per message; more get 452 4.5.3.
    pub smtpd_recipient_limit: usize,
    /// Longest SMTP command line in bytes.
    pub line_length_limit: usize,
    /// Seconds a client has for each command line or body read.
    pub smtpd_timeout_secs: u64,
    /// Seconds a whole DATA or BDAT transfer may take.
    pub smtpd_data_time_limit_secs: u64,
    /// Sessions at once from one client address (mynetworks exempt).
    pub smtpd_client_connection_count_limit: usize,
    /// Sessions at once, all clients together; past 80 % of it idle
    /// clients get 10 s timeouts (Postfix's stress mode).
    pub smtpd_max_connections: usize,
    /// Error replies after which the session is closed.
    pub smtpd_hard_error_limit: u32,
    /// Offer STARTTLS.
    pub tls: bool,
    /// PEM certificate chain for STARTTLS. Empty: a self-signed certificate
    /// for `hostname`, made on first start in <data_dir>/smtp-tls/.
    pub smtpd_tls_cert_file: String,
    /// PEM private key for `smtpd_tls_cert_file`.
    pub smtpd_tls_key_file: String,
}

impl Default for SmtpSection {
    fn default() -> Self {
        SmtpSection {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 2525))],
            submission_listen: Vec::new(),
            hostname: String::new(),
            mynetworks: vec!["127.0.0.1/32".into(), "::1/128".into()],
            message_size_limit: 10 << 20,
            smtpd_recipient_limit: 1000,
            line_length_limit: 2048,
            smtpd_timeout_secs: 300,
            smtpd_data_time_limit_secs: 600,
            smtpd_client_connection_count_limit: 50,
            smtpd_max_connections: 2048,
            smtpd_hard_error_limit: 20,
            tls: true,
            smtpd_tls_cert_file: String::new(),
            smtpd_tls_key_file: String::new(),
        }
    }
}

impl SmtpSection {
    /// `mynetworks` as networks (validated at load, so this cannot fail on a
    /// loaded config).
    pub fn networks(&self) -> Vec<ipnet::IpNet> {
        self.mynetworks
            .iter()
            .filter_map(|n| parse_network(n).ok())
            .collect()
    }
}

/// `192.0.2.0/24`, `::1/128`, or a bare address (a /32 or /128).
fn parse_network(s: &str) -> Result<ipnet::IpNet, String> {
    let s = s.trim();
    s.parse::<ipnet::IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("{s:?} is not a network (like 192.0.2.0/24) or an address"))
}

/// `[delivery]`: the queue manager and SMTP/LMTP client, with Postfix's
/// names and defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliverySection {
    /// Postfix's relayhost: `[host]:port` (no MX lookup) or `host` (MX
    /// lookup) for mail to domains without a transport. Empty: MX delivery.
    pub relayhost: String,
    /// Relays tried when a destination's SMTP servers fail (same syntax).
    pub smtp_fallback_relay: Vec<String>,
    /// Port for MX delivery and relays without a port (25; tests change it).
    pub smtp_port: u16,
    /// Name server for MX and address lookups, `ip:port`. Empty: the
    /// system's (/etc/resolv.conf).
    pub resolver: String,
    pub smtp_connect_timeout_secs: u64,
    /// Seconds for each reply of a remote server (and for sending the message).
    pub smtp_timeout_secs: u64,
    /// STARTTLS: none, may (opportunistic, any certificate), encrypt
    /// (required, any certificate), verify / secure (required, verified).
    #[serde(deserialize_with = "security_level")]
    pub smtp_tls_security_level: TlsLevel,
    /// Levels per destination (domain, host, or `[host]:port`).
    #[serde(deserialize_with = "tls_policy")]
    pub smtp_tls_policy: std::collections::BTreeMap<String, TlsLevel>,
    /// CA bundle for `verify`; empty: the system's.
    pub smtp_tls_ca_file: String,
    /// `[host]:port user:password` lines, mode 0600; empty: no SASL.
    pub smtp_sasl_password_maps: String,
    /// Deliveries at once to one destination.
    pub default_destination_concurrency_limit: usize,
    /// Deliveries at once in total.
    pub delivery_concurrency: usize,
    pub minimal_backoff_time_secs: u64,
    pub maximal_backoff_time_secs: u64,
    pub maximal_queue_lifetime_secs: u64,
    /// Lifetime of bounces (messages from `<>`).
    pub bounce_queue_lifetime_secs: u64,
    /// A node unreachable for this long loses its messages to live nodes
    /// (epoch + 1). Well above the election timeout, so a slow link or a
    /// short restart does not move mail (each move may duplicate what was
    /// in flight).
    pub lease_secs: u64,
    /// How often the leader looks for owners past their lease.
    pub lease_check_interval_secs: u64,
}

impl Default for DeliverySection {
    fn default() -> Self {
        DeliverySection {
            relayhost: String::new(),
            smtp_fallback_relay: Vec::new(),
            smtp_port: 25,
            resolver: String::new(),
            smtp_connect_timeout_secs: 30,
            smtp_timeout_secs: 300,
            smtp_tls_security_level: TlsLevel::May,
            smtp_tls_policy: Default::default(),
            smtp_tls_ca_file: String::new(),
            smtp_sasl_password_maps: String::new(),
            default_destination_concurrency_limit: 20,
            delivery_concurrency: 100,
            minimal_backoff_time_secs: 300,
            maximal_backoff_time_secs: 4000,
            maximal_queue_lifetime_secs: 5 * 86_400,
            bounce_queue_lifetime_secs: 5 * 86_400,
            lease_secs: 120,
            lease_check_interval_secs: 5,
        }
    }
}

/// `smtp_tls_security_level` as a [`TlsLevel`]; a bad value is refused while
/// the file is read, with the key and the line named.
fn security_level<'de, D: Deserializer<'de>>(d: D) -> Result<TlsLevel, D::Error> {
    let level = String::deserialize(d)?;
    level
        .parse()
        .map_err(|e| serde::de::Error::custom(format!("key delivery.smtp_tls_security_level: {e}")))
}

/// `smtp_tls_policy`'s levels as [`TlsLevel`]s; a bad one is refused while the
/// file is read, with the destination named.
fn tls_policy<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<std::collections::BTreeMap<String, TlsLevel>, D::Error> {
    std::collections::BTreeMap::<String, String>::deserialize(d)?
        .into_iter()
        .map(|(dest, level)| match level.parse() {
            Ok(level) => Ok((dest, level)),
            Err(e) => Err(serde::de::Error::custom(format!(
                "key delivery.smtp_tls_policy: {dest} = {e}"
            ))),
        })
        .collect()
}

impl DeliverySection {
    /// `relayhost` as a transport (validated at load).
    pub fn relay(&self, value: &str) -> Option<hamail_types::TransportSpec> {
        if value.is_empty() {
            return None;
        }
        format!("smtp:{value}").parse().ok()
    }
}

/// `[metrics]`: HTTP `/health` and `/metrics` (Prometheus text).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    /// Address of the metrics and health endpoint.
    pub listen: SocketAddr,
}

impl Default for MetricsSection {
    fn default() -> Self {
        MetricsSection {
            listen: SocketAddr::from(([127, 0, 0, 1], 9400)),
        }
    }
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Config::parse(&text, &path.display().to_string())
    }

    /// Parses and validates config text; `origin` names it in errors.
    ///
    /// A config file that does not set `[cluster] bootstrap` waits for
    /// `hamail cluster init` or `hamail cluster join`: only the embedded
    /// default (no file at all) bootstraps on its own. A node that is meant
    /// to join must never make a cluster of its own by accident.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let mut cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let table: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let bootstrap_set = table
            .get("cluster")
            .and_then(|c| c.as_table())
            .is_some_and(|c| c.contains_key("bootstrap"));
        if !bootstrap_set {
            cfg.cluster.bootstrap = false;
        }
        cfg.validate(origin)?;
        Ok(cfg)
    }

    /// Checks values that the types alone do not.
    pub fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let bad = |key: &'static str, reason: String| ConfigError::Invalid {
            path: origin.to_string(),
            key,
            reason,
        };
        let label_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 63
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        };
        if !label_ok(&self.node.name) {
            return Err(bad(
                "node.name",
                format!(
                    "{:?} must be 1-63 letters, digits, '-' or '.'",
                    self.node.name
                ),
            ));
        }
        if !label_ok(&self.node.site) {
            return Err(bad(
                "node.site",
                format!(
                    "{:?} must be 1-63 letters, digits, '-' or '.'",
                    self.node.site
                ),
            ));
        }
        if self.node.data_dir.as_os_str().is_empty() {
            return Err(bad("node.data_dir", "must not be empty".into()));
        }
        let c = &self.cluster;
        if c.heartbeat_interval_ms == 0 {
            return Err(bad(
                "cluster.heartbeat_interval_ms",
                "must be above 0".into(),
            ));
        }
        if c.election_timeout_min_ms <= c.heartbeat_interval_ms * 2 {
            return Err(bad(
                "cluster.election_timeout_min_ms",
                format!(
                    "{} must be more than twice cluster.heartbeat_interval_ms ({})",
                    c.election_timeout_min_ms, c.heartbeat_interval_ms
                ),
            ));
        }
        if c.election_timeout_max_ms <= c.election_timeout_min_ms {
            return Err(bad(
                "cluster.election_timeout_max_ms",
                format!(
                    "{} must be above cluster.election_timeout_min_ms ({})",
                    c.election_timeout_max_ms, c.election_timeout_min_ms
                ),
            ));
        }
        if c.snapshot_logs_since_last == 0 {
            return Err(bad(
                "cluster.snapshot_logs_since_last",
                "must be above 0".into(),
            ));
        }
        if c.write_timeout_ms < c.election_timeout_max_ms {
            return Err(bad(
                "cluster.write_timeout_ms",
                format!(
                    "{} must be at least cluster.election_timeout_max_ms ({}), or writes fail during a normal election",
                    c.write_timeout_ms, c.election_timeout_max_ms
                ),
            ));
        }
        if !(1..=64).contains(&c.proposals_in_flight) {
            return Err(bad(
                "cluster.proposals_in_flight",
                format!("{} must be from 1 to 64", c.proposals_in_flight),
            ));
        }
        if c.name.is_empty() {
            return Err(bad("cluster.name", "must not be empty".into()));
        }
        if !self.dns.hostname.is_empty()
            && hamail_types::DomainName::parse(&self.dns.hostname).is_err()
        {
            return Err(bad(
                "dns.hostname",
                format!("{:?} is not a host name", self.dns.hostname),
            ));
        }
        if !(512..=4096).contains(&self.dns.max_udp_payload) {
            return Err(bad(
                "dns.max_udp_payload",
                format!("{} must be from 512 to 4096", self.dns.max_udp_payload),
            ));
        }
        if !(1..=64).contains(&self.dns.udp_workers) {
            return Err(bad(
                "dns.udp_workers",
                format!("{} must be from 1 to 64", self.dns.udp_workers),
            ));
        }
        if self.dns.tcp_idle_timeout_secs == 0 {
            return Err(bad("dns.tcp_idle_timeout_secs", "must be above 0".into()));
        }
        let d = &self.delivery;
        for (key, v) in std::iter::once(("delivery.relayhost", &d.relayhost)).chain(
            d.smtp_fallback_relay
                .iter()
                .map(|v| ("delivery.smtp_fallback_relay", v)),
        ) {
            if !v.is_empty()
                && format!("smtp:{v}")
                    .parse::<hamail_types::TransportSpec>()
                    .is_err()
            {
                return Err(bad(
                    key,
                    format!(
                        "{v:?} is not a relay: expected [host]:port, [host], host or host:port"
                    ),
                ));
            }
        }
        if !d.resolver.is_empty() && d.resolver.parse::<SocketAddr>().is_err() {
            return Err(bad(
                "delivery.resolver",
                format!("{:?} must be ip:port", d.resolver),
            ));
        }
        if d.minimal_backoff_time_secs == 0
            || d.minimal_backoff_time_secs > d.maximal_backoff_time_secs
        {
            return Err(bad(
                "delivery.minimal_backoff_time_secs",
                format!(
                    "{} must be above 0 and at most maximal_backoff_time_secs ({})",
                    d.minimal_backoff_time_secs, d.maximal_backoff_time_secs
                ),
            ));
        }
        if d.lease_secs * 1000 < 2 * self.cluster.election_timeout_max_ms {
            return Err(bad(
                "delivery.lease_secs",
                format!(
                    "{} s must be at least twice cluster.election_timeout_max_ms ({} ms)",
                    d.lease_secs, self.cluster.election_timeout_max_ms
                ),
            ));
        }
        for (key, v) in [
            ("delivery.smtp_port", u64::from(d.smtp_port)),
            (
                "delivery.smtp_connect_timeout_secs",
                d.smtp_connect_timeout_secs,
            ),
            ("delivery.smtp_timeout_secs", d.smtp_timeout_secs),
            (
                "delivery.default_destination_concurrency_limit",
                d.default_destination_concurrency_limit as u64,
            ),
            (
                "delivery.delivery_concurrency",
                d.delivery_concurrency as u64,
            ),
            (
                "delivery.lease_check_interval_secs",
                d.lease_check_interval_secs,
            ),
            (
                "delivery.maximal_queue_lifetime_secs",
                d.maximal_queue_lifetime_secs,
            ),
            (
                "delivery.bounce_queue_lifetime_secs",
                d.bounce_queue_lifetime_secs,
            ),
        ] {
            if v == 0 {
                return Err(bad(key, "must be above 0".into()));
            }
        }
        let m = &self.smtp;
        if let Some(a) = m.submission_listen.first() {
            return Err(bad(
                "smtp.submission_listen",
                format!(
                    "{a}: submission (port 587, SMTP AUTH for mail clients) is not served by this version; \
                     remove the key or leave it empty (port 25 is smtp.listen)"
                ),
            ));
        }
        for n in &m.mynetworks {
            parse_network(n).map_err(|e| bad("smtp.mynetworks", e))?;
        }
        if !m.hostname.is_empty() && hamail_types::DomainName::parse(&m.hostname).is_err() {
            return Err(bad(
                "smtp.hostname",
                format!("{:?} is not a host name", m.hostname),
            ));
        }
        for (key, v, min) in [
            ("smtp.message_size_limit", m.message_size_limit, 1024),
            ("smtp.smtpd_recipient_limit", m.smtpd_recipient_limit, 1),
            ("smtp.line_length_limit", m.line_length_limit, 512),
            (
                "smtp.smtpd_client_connection_count_limit",
                m.smtpd_client_connection_count_limit,
                1,
            ),
            ("smtp.smtpd_max_connections", m.smtpd_max_connections, 1),
        ] {
            if v < min {
                return Err(bad(key, format!("{v} must be at least {min}")));
            }
        }
        if m.message_size_limit > 64 << 20 {
            return Err(bad(
                "smtp.message_size_limit",
                format!(
                    "{} is above the 64 MiB a queue entry may hold",
                    m.message_size_limit
                ),
            ));
        }
        if m.smtpd_recipient_limit > 10_000 {
            return Err(bad(
                "smtp.smtpd_recipient_limit",
                format!("{} is above 10000", m.smtpd_recipient_limit),
            ));
        }
        if m.smtpd_timeout_secs == 0
            || m.smtpd_data_time_limit_secs == 0
            || m.smtpd_hard_error_limit == 0
        {
            return Err(bad(
                "smtp.smtpd_timeout_secs",
                "smtpd_timeout_secs, smtpd_data_time_limit_secs and smtpd_hard_error_limit must be above 0".into(),
            ));
        }
        if m.smtpd_tls_cert_file.is_empty() != m.smtpd_tls_key_file.is_empty() {
            return Err(bad(
                "smtp.smtpd_tls_cert_file",
                "set both smtpd_tls_cert_file and smtpd_tls_key_file, or neither".into(),
            ));
        }
        if !self.rpc.advertise.is_empty() && !self.rpc.advertise.contains(':') {
            return Err(bad(
                "rpc.advertise",
                format!("{:?} must be host:port", self.rpc.advertise),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let err = Config::parse("[node]\nname = \"a\"\ncolour = \"red\"\n", "t.toml").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("t.toml") && msg.contains("colour") && msg.contains("line 3"),
            "{msg}"
        );
    }

    #[test]
    fn wrong_type_is_named() {
        let msg = Config::parse("[cluster]\nbootstrap = \"yes\"\n", "t.toml")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("line 2") && msg.contains("bool"), "{msg}");
        let msg = Config::parse("[metrics]\nlisten = \"nowhere\"\n", "t.toml")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("line 2"), "{msg}");
    }

    #[test]
    fn bad_values_name_the_key() {
        let msg = Config::parse("[cluster]\nelection_timeout_min_ms = 100\n", "t.toml")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("cluster.election_timeout_min_ms"), "{msg}");
        let msg = Config::parse("[node]\nname = \"a b\"\n", "t.toml")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("node.name"), "{msg}");
    }

    #[test]
    fn a_bad_tls_level_is_refused_while_loading_with_its_key() {
        let msg = Config::parse(
            "[delivery]\nsmtp_tls_security_level = \"maybe\"\n",
            "t.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            msg.contains("delivery.smtp_tls_security_level")
                && msg.contains("\"maybe\"")
                && msg.contains("line 2"),
            "{msg}"
        );
        let msg = Config::parse(
            "[delivery]\nsmtp_tls_policy = { \"[mx.example.jp]:25\" = \"strict\" }\n",
            "t.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            msg.contains("delivery.smtp_tls_policy")
                && msg.contains("[mx.example.jp]:25")
                && msg.contains("\"strict\""),
            "{msg}"
        );
        let cfg = Config::parse(
            "[delivery]\nsmtp_tls_security_level = \"secure\"\nsmtp_tls_policy = { \"a.example\" = \"none\" }\n",
            "t.toml",
        )
        .unwrap();
        assert_eq!(cfg.delivery.smtp_tls_security_level, TlsLevel::Secure);
        assert_eq!(cfg.delivery.smtp_tls_policy["a.example"], TlsLevel::None);
    }

    #[test]
    fn a_submission_listener_is_refused_until_submission_is_served() {
        let msg = Config::parse("[smtp]\nsubmission_listen = [\"0.0.0.0:587\"]\n", "t.toml")
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("smtp.submission_listen")
                && msg.contains("0.0.0.0:587")
                && msg.contains("not served"),
            "{msg}"
        );
        let cfg = Config::parse("[smtp]\nsubmission_listen = []\n", "t.toml").unwrap();
        assert!(cfg.smtp.submission_listen.is_empty());
    }

    #[test]
    fn empty_file_is_the_default_but_waits_for_init_or_join() {
        let mut want = Config::default();
        want.cluster.bootstrap = false;
        assert_eq!(Config::parse("", "t").unwrap(), want);
        assert!(
            Config::parse("[cluster]\nbootstrap = true\n", "t")
                .unwrap()
                .cluster
                .bootstrap
        );
        assert!(
            Config::default().cluster.bootstrap,
            "the embedded default bootstraps"
        );
    }
}
