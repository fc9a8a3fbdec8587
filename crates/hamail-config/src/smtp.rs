//! `[smtp]`: the MX (smtpd) — listeners, name, relay networks, and the
//! session limits, with Postfix's names and defaults.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::Invalid;

/// `[smtp]`: the MX (smtpd). Limits carry Postfix's names and defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpSection {
    /// Addresses to accept mail on; production uses port 25.
    pub listen: Vec<SocketAddr>,
    /// Submission listeners (587 in production, RFC 6409): STARTTLS is
    /// required before AUTH and before MAIL, and MAIL needs AUTH.
    pub submission_listen: Vec<SocketAddr>,
    /// Submission over implicit TLS (465 in production, RFC 8314): TLS from
    /// the first byte, then the same rules as `submission_listen`.
    pub submissions_listen: Vec<SocketAddr>,
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
    /// Offer AUTH on the MX listeners (`listen`) too (Postfix's
    /// `smtpd_sasl_auth_enable` on port 25). The submission listeners always
    /// offer it.
    pub smtpd_sasl_auth_enable: bool,
    /// AUTH only inside TLS: not advertised before STARTTLS, and refused
    /// with 538 5.7.11 if sent.
    pub smtpd_tls_auth_only: bool,
    /// Where passwords are checked: "cluster" (the replicated user table,
    /// `hamail user add`) or "dovecot" (an existing Dovecot's auth service
    /// at `dovecot_auth_socket`, Postfix's `smtpd_sasl_type = dovecot`).
    pub sasl_backend: SaslBackend,
    /// Dovecot's auth client socket, e.g. /var/spool/postfix/private/auth
    /// or /run/dovecot/auth-client.
    pub dovecot_auth_socket: String,
    /// Failed logins from one client address within
    /// `smtpd_auth_failure_window_secs` after which AUTH from it is refused
    /// (454 4.7.0) for `smtpd_auth_cooldown_secs`. Counted per node.
    pub smtpd_auth_failure_limit: u32,
    pub smtpd_auth_failure_window_secs: u64,
    pub smtpd_auth_cooldown_secs: u64,
    /// Name the authenticated user in the Received header (Postfix's
    /// `smtpd_sasl_authenticated_header`).
    pub smtpd_sasl_authenticated_header: bool,
    /// Seconds a successful password check is remembered (like Dovecot's
    /// auth_cache_ttl; only successes, keyed by the stored hash and the
    /// password). 0: no cache.
    pub auth_cache_ttl_secs: u64,
    /// Password checks run at once, off the async runtime. 0: one per core.
    pub auth_workers: usize,
    /// DNS blocklists checked at RCPT for clients outside `mynetworks`
    /// that have not authenticated (Postfix's `reject_rbl_client`):
    /// `"zen.spamhaus.org"`, or with the answers that count,
    /// `"bl.example=127.0.0.2"` / `"bl.example=127.0.0.[2..11]"`. Looked up
    /// through `[delivery] resolver`; answers are cached for their TTL.
    /// Empty: none.
    pub dnsbl: Vec<String>,
    /// Milters run on every message at the end of DATA, in order, each
    /// seeing the previous one's changes (Postfix's `smtpd_milters`):
    /// `inet:HOST:PORT` or `unix:/path`, e.g. rspamd's
    /// `inet:127.0.0.1:11332`. Empty: none.
    pub milters: Vec<String>,
    /// What a message gets when a milter fails (cannot be reached, times
    /// out, breaks the protocol): "tempfail" (451 4.7.1), "reject"
    /// (550 5.7.1) or "accept" (the milter is skipped).
    pub milter_default_action: MilterDefaultAction,
    /// Seconds to connect to a milter (`milter_connect_timeout`).
    pub milter_connect_timeout_secs: u64,
    /// Seconds for each milter reply to connect, HELO, MAIL, RCPT
    /// (`milter_command_timeout`).
    pub milter_command_timeout_secs: u64,
    /// Seconds for each milter reply to a header, a body chunk and the end
    /// of the message (`milter_content_timeout`).
    pub milter_content_timeout_secs: u64,
    /// After-queue content filter (Postfix's `content_filter`, e.g. amavis):
    /// `smtp:[127.0.0.1]:10024` or `lmtp:[127.0.0.1]:10024`. Every message
    /// taken on `listen`, `submission_listen` or `submissions_listen` is
    /// delivered there instead of to its recipients; the filter hands it
    /// back on `[smtp.reinject] listen`. Empty: no filter.
    pub content_filter: String,
    /// `[smtp.reinject]`: the listener a content filter re-injects into.
    pub reinject: ReinjectSection,
}

/// `[smtp.reinject]`: Postfix's `127.0.0.1:10025 inet ... smtpd -o
/// content_filter= -o smtpd_client_restrictions=permit_mynetworks,reject
/// -o receive_override_options=no_header_body_checks,no_milters`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReinjectSection {
    /// Where the content filter hands mail back, e.g. `127.0.0.1:10025`:
    /// mail only from `mynetworks` (554 5.7.1 for anyone else), no recipient
    /// checks, no header/body checks or milters, no content filter. Unset:
    /// no such listener.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
}

/// `[smtp] milter_default_action`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MilterDefaultAction {
    /// 451 4.7.1: the client tries again later (Postfix's default).
    #[default]
    Tempfail,
    /// Go on without the failed milter.
    Accept,
    /// 550 5.7.1.
    Reject,
}

/// `[smtp] sasl_backend`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SaslBackend {
    /// The replicated user table.
    #[default]
    Cluster,
    /// A Dovecot auth service (`dovecot_auth_socket`).
    Dovecot,
}

impl Default for SmtpSection {
    fn default() -> Self {
        SmtpSection {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 2525))],
            submission_listen: vec![SocketAddr::from(([127, 0, 0, 1], 1587))],
            submissions_listen: vec![SocketAddr::from(([127, 0, 0, 1], 1465))],
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
            smtpd_sasl_auth_enable: false,
            smtpd_tls_auth_only: true,
            sasl_backend: SaslBackend::Cluster,
            dovecot_auth_socket: String::new(),
            smtpd_auth_failure_limit: 10,
            smtpd_auth_failure_window_secs: 600,
            smtpd_auth_cooldown_secs: 600,
            smtpd_sasl_authenticated_header: false,
            auth_cache_ttl_secs: 60,
            auth_workers: 0,
            dnsbl: Vec::new(),
            milters: Vec::new(),
            milter_default_action: MilterDefaultAction::Tempfail,
            milter_connect_timeout_secs: 30,
            milter_command_timeout_secs: 30,
            milter_content_timeout_secs: 300,
            content_filter: String::new(),
            reinject: ReinjectSection::default(),
        }
    }
}

impl SmtpSection {
    /// `content_filter` as a transport: `None` when empty (validated at
    /// load, so a loaded config never gives a bad one).
    pub fn content_filter(&self) -> Option<hamail_types::TransportSpec> {
        parse_content_filter(&self.content_filter).ok().flatten()
    }

    /// `milters` parsed (validated at load, so this cannot fail on a loaded
    /// config).
    pub fn milter_addresses(&self) -> Vec<hamail_milter::MilterAddress> {
        self.milters
            .iter()
            .filter_map(|m| hamail_milter::MilterAddress::parse(m).ok())
            .collect()
    }

    /// The milter settings are usable: every address parses, every timeout
    /// is above 0.
    fn validate_milters(&self) -> Result<(), Invalid> {
        for m in &self.milters {
            hamail_milter::MilterAddress::parse(m)
                .map_err(|e| Invalid::new("smtp.milters", e.to_string()))?;
        }
        for (key, v) in [
            (
                "smtp.milter_connect_timeout_secs",
                self.milter_connect_timeout_secs,
            ),
            (
                "smtp.milter_command_timeout_secs",
                self.milter_command_timeout_secs,
            ),
            (
                "smtp.milter_content_timeout_secs",
                self.milter_content_timeout_secs,
            ),
        ] {
            if v == 0 || v > 3600 {
                return Err(Invalid::new(key, format!("{v} must be from 1 to 3600")));
            }
        }
        Ok(())
    }

    /// `dnsbl` parsed (validated at load, so this cannot fail on a loaded
    /// config).
    pub fn dnsbl_sites(&self) -> Vec<hamail_types::DnsblSite> {
        self.dnsbl.iter().filter_map(|d| d.parse().ok()).collect()
    }

    /// `mynetworks` as networks (validated at load, so this cannot fail on a
    /// loaded config).
    pub fn networks(&self) -> Vec<ipnet::IpNet> {
        self.mynetworks
            .iter()
            .filter_map(|n| parse_network(n).ok())
            .collect()
    }
}

/// `smtp:[host]:port` or `lmtp:[host]:port`, as Postfix's `content_filter`
/// names a filter: an explicit host (no MX lookup) and port.
fn parse_content_filter(s: &str) -> Result<Option<hamail_types::TransportSpec>, String> {
    use hamail_types::TransportSpec;
    let s = s.trim();
    if s.is_empty() {
        return Ok(None);
    }
    let shape = "expected smtp:[host]:port or lmtp:[host]:port, e.g. smtp:[127.0.0.1]:10024";
    let spec = TransportSpec::parse(s).map_err(|e| format!("{e}; {shape}"))?;
    let explicit = s
        .split_once(':')
        .is_some_and(|(_, rest)| rest.starts_with('[') && rest.contains("]:"));
    match spec {
        TransportSpec::Smtp { .. } | TransportSpec::Lmtp { .. } if explicit => Ok(Some(spec)),
        _ => Err(format!("{s:?}: {shape}")),
    }
}

/// `192.0.2.0/24`, `::1/128`, or a bare address (a /32 or /128).
fn parse_network(s: &str) -> Result<ipnet::IpNet, String> {
    let s = s.trim();
    s.parse::<ipnet::IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("{s:?} is not a network (like 192.0.2.0/24) or an address"))
}

impl SmtpSection {
    pub(crate) fn validate(&self) -> Result<(), Invalid> {
        let m = self;
        let submission = !m.submission_listen.is_empty() || !m.submissions_listen.is_empty();
        if submission && !m.tls {
            return Err(Invalid::new(
                "smtp.submission_listen",
                "submission needs TLS (smtp.tls = true): passwords never cross in the clear; \
                 set submission_listen = [] and submissions_listen = [] to serve no submission"
                    .into(),
            ));
        }
        if m.smtpd_sasl_auth_enable && !m.tls && m.smtpd_tls_auth_only {
            return Err(Invalid::new(
                "smtp.smtpd_sasl_auth_enable",
                "AUTH only inside TLS (smtpd_tls_auth_only) needs smtp.tls = true".into(),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        let reinject: Vec<SocketAddr> = m.reinject.listen.into_iter().collect();
        for (key, list) in [
            ("smtp.listen", &m.listen),
            ("smtp.submission_listen", &m.submission_listen),
            ("smtp.submissions_listen", &m.submissions_listen),
            ("smtp.reinject.listen", &reinject),
        ] {
            // Port 0 asks the kernel for a fresh port each time: never a clash.
            for a in list.iter().filter(|a| a.port() != 0) {
                if !seen.insert(*a) {
                    return Err(Invalid::new(
                        key,
                        format!("{a} is named twice among the SMTP listeners"),
                    ));
                }
            }
        }
        m.validate_content_filter()?;
        if m.sasl_backend == SaslBackend::Dovecot && m.dovecot_auth_socket.is_empty() {
            return Err(Invalid::new(
                "smtp.dovecot_auth_socket",
                "sasl_backend = \"dovecot\" needs the path of Dovecot's auth socket".into(),
            ));
        }
        if m.smtpd_auth_failure_limit == 0
            || m.smtpd_auth_failure_window_secs == 0
            || m.smtpd_auth_cooldown_secs == 0
        {
            return Err(Invalid::new(
                "smtp.smtpd_auth_failure_limit",
                "smtpd_auth_failure_limit, smtpd_auth_failure_window_secs and \
                 smtpd_auth_cooldown_secs must be above 0"
                    .into(),
            ));
        }
        if m.auth_workers > 1024 {
            return Err(Invalid::new(
                "smtp.auth_workers",
                format!("{} is above 1024", m.auth_workers),
            ));
        }
        for n in &m.mynetworks {
            parse_network(n).map_err(|e| Invalid::new("smtp.mynetworks", e))?;
        }
        for d in &m.dnsbl {
            d.parse::<hamail_types::DnsblSite>()
                .map_err(|e| Invalid::new("smtp.dnsbl", e.to_string()))?;
        }
        if !m.hostname.is_empty() && hamail_types::DomainName::parse(&m.hostname).is_err() {
            return Err(Invalid::new(
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
                return Err(Invalid::new(key, format!("{v} must be at least {min}")));
            }
        }
        if m.message_size_limit > 64 << 20 {
            return Err(Invalid::new(
                "smtp.message_size_limit",
                format!(
                    "{} is above the 64 MiB a queue entry may hold",
                    m.message_size_limit
                ),
            ));
        }
        if m.smtpd_recipient_limit > 10_000 {
            return Err(Invalid::new(
                "smtp.smtpd_recipient_limit",
                format!("{} is above 10000", m.smtpd_recipient_limit),
            ));
        }
        if m.smtpd_timeout_secs == 0
            || m.smtpd_data_time_limit_secs == 0
            || m.smtpd_hard_error_limit == 0
        {
            return Err(Invalid::new(
                "smtp.smtpd_timeout_secs",
                "smtpd_timeout_secs, smtpd_data_time_limit_secs and smtpd_hard_error_limit must be above 0".into(),
            ));
        }
        m.validate_milters()?;
        if m.smtpd_tls_cert_file.is_empty() != m.smtpd_tls_key_file.is_empty() {
            return Err(Invalid::new(
                "smtp.smtpd_tls_cert_file",
                "set both smtpd_tls_cert_file and smtpd_tls_key_file, or neither".into(),
            ));
        }
        Ok(())
    }
}

impl SmtpSection {
    /// `content_filter` parses, and does not point at one of our own
    /// listeners: the MX ones would loop the message through the filter
    /// stage for ever, the reinject one would skip the filter.
    fn validate_content_filter(&self) -> Result<(), Invalid> {
        let key = "smtp.content_filter";
        let spec = parse_content_filter(&self.content_filter).map_err(|e| Invalid::new(key, e))?;
        let Some(spec) = spec else {
            return Ok(());
        };
        let (host, port) = match &spec {
            hamail_types::TransportSpec::Smtp {
                host,
                port: Some(port),
                ..
            } => (host, *port),
            hamail_types::TransportSpec::Lmtp { host, port } => (host, *port),
            _ => return Ok(()),
        };
        let hamail_types::NextHop::Ip(ip) = host else {
            return Ok(());
        };
        let target = SocketAddr::new(*ip, port);
        let hits = |addrs: &[SocketAddr]| {
            addrs
                .iter()
                .any(|a| a.port() == port && (a.ip() == target.ip() || a.ip().is_unspecified()))
        };
        if hits(&self.listen) || hits(&self.submission_listen) || hits(&self.submissions_listen) {
            return Err(Invalid::new(
                key,
                format!(
                    "{target} is one of this node's own SMTP listeners: mail would loop through the filter stage; point it at the filter (e.g. amavis on 127.0.0.1:10024)"
                ),
            ));
        }
        if self.reinject.listen.is_some_and(|r| hits(&[r])) {
            return Err(Invalid::new(
                key,
                format!(
                    "{target} is smtp.reinject.listen: mail would skip the filter; point content_filter at the filter, which re-injects on {target}"
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::Config;

    #[test]
    fn milters_and_their_timeouts() {
        let err = |text: &str| Config::parse(text, "t.toml").unwrap_err().to_string();
        let cfg = Config::default();
        assert!(cfg.smtp.milters.is_empty());
        assert_eq!(
            cfg.smtp.milter_default_action,
            super::MilterDefaultAction::Tempfail
        );
        assert_eq!(cfg.smtp.milter_content_timeout_secs, 300);
        let cfg = Config::parse(
            "[smtp]\nmilters = [\"inet:127.0.0.1:11332\", \"unix:/run/m.sock\"]\n\
             milter_default_action = \"accept\"\nmilter_command_timeout_secs = 5\n",
            "t.toml",
        )
        .unwrap();
        assert_eq!(cfg.smtp.milter_addresses().len(), 2);
        assert_eq!(
            cfg.smtp.milter_addresses()[1].to_string(),
            "unix:/run/m.sock"
        );
        assert_eq!(
            cfg.smtp.milter_default_action,
            super::MilterDefaultAction::Accept
        );
        let msg = err("[smtp]\nmilters = [\"127.0.0.1:11332\"]\n");
        assert!(
            msg.contains("smtp.milters") && msg.contains("inet:HOST:PORT"),
            "{msg}"
        );
        let msg = err("[smtp]\nmilters = [\"unix:milter.sock\"]\n");
        assert!(msg.contains("absolute"), "{msg}");
        let msg = err("[smtp]\nmilter_default_action = \"bounce\"\n");
        assert!(msg.contains("bounce"), "{msg}");
        let msg = err("[smtp]\nmilter_content_timeout_secs = 0\n");
        assert!(msg.contains("smtp.milter_content_timeout_secs"), "{msg}");
    }

    #[test]
    fn a_content_filter_is_smtp_or_lmtp_to_an_explicit_host_and_port() {
        let err = |text: &str| Config::parse(text, "t.toml").unwrap_err().to_string();
        let cfg = Config::parse(
            "[smtp]\ncontent_filter = \"smtp:[127.0.0.1]:10024\"\n[smtp.reinject]\nlisten = \"127.0.0.1:10025\"\n",
            "t.toml",
        )
        .unwrap();
        assert_eq!(
            cfg.smtp.content_filter().unwrap().to_string(),
            "smtp:[127.0.0.1]:10024"
        );
        assert_eq!(
            cfg.smtp.reinject.listen,
            Some("127.0.0.1:10025".parse().unwrap())
        );
        let cfg = Config::parse(
            "[smtp]\ncontent_filter = \"lmtp:[localhost]:10024\"\n",
            "t.toml",
        )
        .unwrap();
        assert_eq!(
            cfg.smtp.content_filter().unwrap().to_string(),
            "lmtp:localhost:10024"
        );
        assert_eq!(Config::default().smtp.content_filter(), None);
        assert_eq!(Config::default().smtp.reinject.listen, None);
        for bad in [
            "amavis:[127.0.0.1]:10024",
            "smtp:127.0.0.1:10024",
            "smtp:[127.0.0.1]",
            "smtp:filter.example",
            "lmtp:unix:/run/amavis.sock",
            "maildir:/var/mail",
            "smtp:[127.0.0.1]:0",
            "127.0.0.1:10024",
        ] {
            let msg = err(&format!("[smtp]\ncontent_filter = {bad:?}\n"));
            assert!(
                msg.contains("smtp.content_filter") && msg.contains("smtp:[host]:port"),
                "{bad}: {msg}"
            );
        }
        let msg = err("[smtp]\ncontent_filter = \"smtp:[127.0.0.1]:2525\"\n");
        assert!(msg.contains("loop"), "{msg}");
        let msg = err(
            "[smtp]\ncontent_filter = \"smtp:[127.0.0.1]:10025\"\n[smtp.reinject]\nlisten = \"127.0.0.1:10025\"\n",
        );
        assert!(msg.contains("skip the filter"), "{msg}");
        let msg = err("[smtp.reinject]\nlisten = \"127.0.0.1:2525\"\n");
        assert!(
            msg.contains("smtp.reinject.listen") && msg.contains("twice"),
            "{msg}"
        );
        let msg = err("[smtp.reinject]\nlisten = \"127.0.0.1:10025\"\ncolour = 1\n");
        assert!(msg.contains("colour"), "{msg}");
    }

    #[test]
    fn submission_needs_tls_distinct_listeners_and_a_dovecot_socket() {
        let err = |text: &str| Config::parse(text, "t.toml").unwrap_err().to_string();
        let msg = err("[smtp]\ntls = false\n");
        assert!(
            msg.contains("smtp.submission_listen") && msg.contains("TLS"),
            "{msg}"
        );
        let cfg = Config::parse(
            "[smtp]\ntls = false\nsubmission_listen = []\nsubmissions_listen = []\n",
            "t.toml",
        )
        .unwrap();
        assert!(cfg.smtp.submission_listen.is_empty());
        let msg = err("[smtp]\nsubmissions_listen = [\"127.0.0.1:1587\"]\n");
        assert!(
            msg.contains("127.0.0.1:1587") && msg.contains("twice"),
            "{msg}"
        );
        let msg = err("[smtp]\nsasl_backend = \"dovecot\"\n");
        assert!(msg.contains("smtp.dovecot_auth_socket"), "{msg}");
        let msg = err("[smtp]\nsasl_backend = \"ldap\"\n");
        assert!(
            msg.contains("sasl_backend") || msg.contains("ldap"),
            "{msg}"
        );
        let cfg = Config::default();
        assert_eq!(cfg.smtp.submission_listen[0].port(), 1587);
        assert_eq!(cfg.smtp.submissions_listen[0].port(), 1465);
    }
}
