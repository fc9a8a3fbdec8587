//! `[delivery]`: the queue manager and the SMTP/LMTP client — relays, TLS
//! levels, concurrency, retry and lifetimes, the delivery lease — with
//! Postfix's names and defaults.

use std::net::SocketAddr;

use hamail_types::TlsLevel;
use serde::{Deserialize, Deserializer, Serialize};

use crate::Invalid;

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
    /// A Maildir delivery that would take a mailbox past its quota
    /// (`hamail quota set`): "bounce" (5.2.2, Postfix's
    /// `virtual_overquota_bounce = yes`) or "defer" (4.2.2, tried again
    /// until the queue lifetime ends).
    pub overquota: Overquota,
}

/// `[delivery] overquota`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Overquota {
    #[default]
    Bounce,
    Defer,
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
            overquota: Overquota::Bounce,
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

    /// `lease_secs` is checked against the cluster's election timeout.
    pub(crate) fn validate(&self, cluster: &crate::ClusterSection) -> Result<(), Invalid> {
        let d = self;
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
                return Err(Invalid::new(
                    key,
                    format!(
                        "{v:?} is not a relay: expected [host]:port, [host], host or host:port"
                    ),
                ));
            }
        }
        if !d.resolver.is_empty() && d.resolver.parse::<SocketAddr>().is_err() {
            return Err(Invalid::new(
                "delivery.resolver",
                format!("{:?} must be ip:port", d.resolver),
            ));
        }
        if d.minimal_backoff_time_secs == 0
            || d.minimal_backoff_time_secs > d.maximal_backoff_time_secs
        {
            return Err(Invalid::new(
                "delivery.minimal_backoff_time_secs",
                format!(
                    "{} must be above 0 and at most maximal_backoff_time_secs ({})",
                    d.minimal_backoff_time_secs, d.maximal_backoff_time_secs
                ),
            ));
        }
        if d.lease_secs * 1000 < 2 * cluster.election_timeout_max_ms {
            return Err(Invalid::new(
                "delivery.lease_secs",
                format!(
                    "{} s must be at least twice cluster.election_timeout_max_ms ({} ms)",
                    d.lease_secs, cluster.election_timeout_max_ms
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
                return Err(Invalid::new(key, "must be above 0".into()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use hamail_types::TlsLevel;

    use crate::Config;

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
}
