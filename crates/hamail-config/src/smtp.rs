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

impl SmtpSection {
    pub(crate) fn validate(&self) -> Result<(), Invalid> {
        let m = self;
        if let Some(a) = m.submission_listen.first() {
            return Err(Invalid::new(
                "smtp.submission_listen",
                format!(
                    "{a}: submission (port 587, SMTP AUTH for mail clients) is not served by this version; \
                     remove the key or leave it empty (port 25 is smtp.listen)"
                ),
            ));
        }
        for n in &m.mynetworks {
            parse_network(n).map_err(|e| Invalid::new("smtp.mynetworks", e))?;
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
        if m.smtpd_tls_cert_file.is_empty() != m.smtpd_tls_key_file.is_empty() {
            return Err(Invalid::new(
                "smtp.smtpd_tls_cert_file",
                "set both smtpd_tls_cert_file and smtpd_tls_key_file, or neither".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::Config;

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
}
