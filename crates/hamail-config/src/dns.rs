//! `[dns]`: the authoritative name server of this node — listeners, zone
//! transfers and NOTIFY, UDP limits and workers.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::Invalid;

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

impl DnsSection {
    pub(crate) fn validate(&self) -> Result<(), Invalid> {
        if !self.hostname.is_empty() && hamail_types::DomainName::parse(&self.hostname).is_err() {
            return Err(Invalid::new(
                "dns.hostname",
                format!("{:?} is not a host name", self.hostname),
            ));
        }
        if !(512..=4096).contains(&self.max_udp_payload) {
            return Err(Invalid::new(
                "dns.max_udp_payload",
                format!("{} must be from 512 to 4096", self.max_udp_payload),
            ));
        }
        if !(1..=64).contains(&self.udp_workers) {
            return Err(Invalid::new(
                "dns.udp_workers",
                format!("{} must be from 1 to 64", self.udp_workers),
            ));
        }
        if self.tcp_idle_timeout_secs == 0 {
            return Err(Invalid::new(
                "dns.tcp_idle_timeout_secs",
                "must be above 0".into(),
            ));
        }
        Ok(())
    }
}
