//! Where a recipient's mail goes: the transport table, then `relayhost`,
//! then the recipient domain's MX — with `smtp_fallback_relay` behind every
//! SMTP route — and which addresses that means (MX by preference, equal
//! preferences shuffled, A/AAAA when there is no MX, null MX refused,
//! never ourselves).

use std::net::{IpAddr, SocketAddr};

use hamail_types::{DomainKind, DomainName, NextHop, TransportSpec};
use hickory_resolver::TokioResolver;

/// Why a route could not be found or resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteError {
    pub reason: String,
    pub permanent: bool,
}

impl RouteError {
    fn temp(reason: String) -> Self {
        RouteError {
            reason,
            permanent: false,
        }
    }
    fn perm(reason: String) -> Self {
        RouteError {
            reason,
            permanent: true,
        }
    }
}

/// The transports to try for a recipient domain, in order.
pub fn transports(
    domain: &DomainName,
    kind: Option<DomainKind>,
    transport: Option<(TransportSpec, Vec<TransportSpec>)>,
    relayhost: Option<&TransportSpec>,
    fallback_relays: &[TransportSpec],
) -> Result<Vec<TransportSpec>, RouteError> {
    let mut out = match transport {
        Some((spec, fallback)) => {
            let mut v = vec![spec];
            v.extend(fallback);
            v
        }
        None => match kind {
            Some(DomainKind::Local) | Some(DomainKind::Virtual) => {
                return Err(RouteError::temp(format!(
                    "no transport for local domain {domain}: set one with `hamail transport set {domain} maildir:/PATH` (or lmtp:HOST:PORT)"
                )));
            }
            _ => match relayhost {
                Some(r) => vec![r.clone()],
                None => vec![TransportSpec::Smtp {
                    host: NextHop::Domain(domain.clone()),
                    port: None,
                    mx_lookup: true,
                }],
            },
        },
    };
    if out.iter().any(|t| matches!(t, TransportSpec::Smtp { .. })) {
        for f in fallback_relays {
            if !out.contains(f) {
                out.push(f.clone());
            }
        }
    }
    Ok(out)
}

/// One server to try: its name and address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub host: String,
    pub addr: SocketAddr,
}

fn is_nxdomain(e: &hickory_resolver::net::NetError) -> bool {
    e.is_nx_domain()
}

async fn addresses(resolver: &TokioResolver, host: &str) -> Result<Vec<IpAddr>, RouteError> {
    match resolver
        .lookup_ip(format!("{}.", host.trim_end_matches('.')))
        .await
    {
        Ok(ips) => Ok(ips.iter().collect()),
        Err(e) if is_nxdomain(&e) => Err(RouteError::perm(format!(
            "Host or domain name not found. Name service error for name={host} type=A: Host not found"
        ))),
        Err(e) if e.is_no_records_found() => Err(RouteError::perm(format!(
            "Host or domain name not found. Name service error for name={host} type=AAAA: No address associated with hostname"
        ))),
        Err(e) => Err(RouteError::temp(format!(
            "Host or domain name not found. Name service error for name={host}: {e}"
        ))),
    }
}

/// This node's own SMTP addresses, for the loop check: each listener, with
/// a wildcard listener (`0.0.0.0`, `::`) standing for every address of this
/// host's interfaces (`interface_ips`) on its port — never for "any address
/// with that port", which would make every remote MX on 25 "ourselves" —
/// and then the peers' advertised SMTP addresses (see `peer_smtp_addr`).
/// A `::` listener takes IPv4 addresses too (Linux binds it dual-stack).
pub fn own_addresses(
    listeners: &[SocketAddr],
    interface_ips: &[IpAddr],
    peers: &[SocketAddr],
) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = Vec::new();
    let mut add = |a: SocketAddr| {
        let a = SocketAddr::new(a.ip().to_canonical(), a.port());
        if !out.contains(&a) {
            out.push(a);
        }
    };
    for l in listeners {
        match l.ip() {
            IpAddr::V4(v4) if v4.is_unspecified() => interface_ips
                .iter()
                .map(|ip| ip.to_canonical())
                .filter(IpAddr::is_ipv4)
                .for_each(|ip| add(SocketAddr::new(ip, l.port()))),
            IpAddr::V6(v6) if v6.is_unspecified() => interface_ips
                .iter()
                .for_each(|ip| add(SocketAddr::new(*ip, l.port()))),
            _ => add(*l),
        }
    }
    // A peer's wildcard says nothing about where the peer is.
    peers
        .iter()
        .filter(|p| !p.ip().is_unspecified())
        .for_each(|p| add(*p));
    out
}

/// A peer's SMTP address as it advertises it (`smtp_addr`, its first SMTP
/// listener); when that is a wildcard, the IP of its cluster RPC address
/// (`rpc_addr`, where the cluster reaches it) on the SMTP port. None when
/// neither names an address.
pub fn peer_smtp_addr(smtp_addr: &str, rpc_addr: &str) -> Option<SocketAddr> {
    let smtp: SocketAddr = smtp_addr.parse().ok()?;
    if !smtp.ip().is_unspecified() {
        return Some(smtp);
    }
    let rpc: SocketAddr = rpc_addr.parse().ok()?;
    (!rpc.ip().is_unspecified()).then(|| SocketAddr::new(rpc.ip(), smtp.port()))
}

/// Delivering to `addr` reaches one of `ourselves` (from `own_addresses`):
/// the same IP and port. A connection to the unspecified address goes to
/// this host's loopback, and is judged as one to 127.0.0.1 (or `::1`).
pub fn is_us(addr: &SocketAddr, ourselves: &[SocketAddr]) -> bool {
    let ip = match addr.ip().to_canonical() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    ourselves
        .iter()
        .any(|o| o.port() == addr.port() && o.ip().to_canonical() == ip)
}

/// The servers for an SMTP or LMTP transport, best first, without any of
/// `ourselves` (the cluster's own MX addresses, from `own_addresses`): MX hosts at or below our
/// own preference are dropped, as Postfix does, and if nothing is left the
/// mail "loops back to myself".
pub async fn candidates(
    resolver: &TokioResolver,
    spec: &TransportSpec,
    default_port: u16,
    ourselves: &[SocketAddr],
) -> Result<Vec<Candidate>, RouteError> {
    let (host, port, mx) = match spec {
        TransportSpec::Smtp {
            host,
            port,
            mx_lookup,
        } => (host, port.unwrap_or(default_port), *mx_lookup),
        TransportSpec::Lmtp { host, port } => (host, *port, false),
        other => {
            return Err(RouteError::temp(format!(
                "transport {other} has no network address"
            )));
        }
    };
    let is_us = |a: &SocketAddr| is_us(a, ourselves);
    let name = match host {
        NextHop::Ip(ip) => {
            let addr = SocketAddr::new(*ip, port);
            if is_us(&addr) {
                return Err(RouteError::temp(format!(
                    "mail for {ip} loops back to myself"
                )));
            }
            return Ok(vec![Candidate {
                host: ip.to_string(),
                addr,
            }]);
        }
        NextHop::Domain(d) => d.as_str().to_string(),
    };
    // (preference, host) in the order to try.
    let mut hosts: Vec<(u16, String)> = Vec::new();
    if mx {
        match resolver.mx_lookup(format!("{name}.")).await {
            Ok(lookup) => {
                for r in lookup.answers() {
                    if let hickory_resolver::proto::rr::RData::MX(m) = &r.data {
                        let exchange = m.exchange.to_utf8();
                        let exchange = exchange.trim_end_matches('.').to_string();
                        hosts.push((m.preference, exchange));
                    }
                }
                if hosts.len() == 1 && hosts[0].1.is_empty() {
                    return Err(RouteError::perm(format!(
                        "domain {name} does not accept mail (nullMX)"
                    )));
                }
                hosts.retain(|(_, h)| !h.is_empty());
            }
            Err(e) if is_nxdomain(&e) => {
                return Err(RouteError::perm(format!(
                    "Host or domain name not found. Name service error for name={name} type=MX: Host not found"
                )));
            }
            Err(e) if e.is_no_records_found() => {}
            Err(e) => {
                return Err(RouteError::temp(format!(
                    "Host or domain name not found. Name service error for name={name} type=MX: {e}"
                )));
            }
        }
    }
    if hosts.is_empty() {
        // No MX (or a bracketed host): the name's own addresses.
        hosts.push((0, name.clone()));
    }
    hosts.sort_by_key(|(p, _)| *p);
    shuffle_equal_preferences(&mut hosts);
    let mut out: Vec<(u16, Candidate)> = Vec::new();
    let mut last_err = None;
    for (pref, h) in &hosts {
        match addresses(resolver, h).await {
            Ok(ips) => {
                for ip in ips {
                    out.push((
                        *pref,
                        Candidate {
                            host: h.clone(),
                            addr: SocketAddr::new(ip, port),
                        },
                    ));
                }
            }
            Err(e) => last_err = Some(e),
        }
    }
    if let Some(own) = out
        .iter()
        .filter(|(_, c)| is_us(&c.addr))
        .map(|(p, _)| *p)
        .min()
    {
        out.retain(|(p, _)| *p < own);
        if out.is_empty() {
            return Err(RouteError::temp(format!(
                "mail for {name} loops back to myself"
            )));
        }
    }
    if out.is_empty() {
        return Err(last_err.unwrap_or_else(|| RouteError::temp(format!("no address for {name}"))));
    }
    Ok(out.into_iter().map(|(_, c)| c).collect())
}

/// Postfix's `smtp_randomize_addresses`: hosts of equal preference in a
/// random order, so equal MXes share the load.
fn shuffle_equal_preferences(hosts: &mut [(u16, String)]) {
    let mut start = 0;
    while start < hosts.len() {
        let end = hosts[start..]
            .iter()
            .position(|(p, _)| *p != hosts[start].0)
            .map_or(hosts.len(), |n| start + n);
        let group = &mut hosts[start..end];
        for i in (1..group.len()).rev() {
            let j = (random_u64() % (i as u64 + 1)) as usize;
            group.swap(i, j);
        }
        start = end;
    }
}

fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> DomainName {
        DomainName::parse(s).unwrap()
    }

    #[test]
    fn transport_table_then_relayhost_then_mx() {
        let t: TransportSpec = "smtp:[primary.example.jp]:587".parse().unwrap();
        let fb: TransportSpec = "smtp:[relay2.example.jp]".parse().unwrap();
        let rh: TransportSpec = "smtp:[relay1.example.jp]".parse().unwrap();
        let r = transports(
            &d("example.jp"),
            Some(DomainKind::Relay),
            Some((t.clone(), vec![])),
            Some(&rh),
            std::slice::from_ref(&fb),
        )
        .unwrap();
        assert_eq!(r, vec![t, fb.clone()]);
        let r = transports(
            &d("other.example"),
            None,
            None,
            Some(&rh),
            std::slice::from_ref(&fb),
        )
        .unwrap();
        assert_eq!(r, vec![rh, fb]);
        let r = transports(&d("other.example"), None, None, None, &[]).unwrap();
        assert_eq!(r[0].to_string(), "smtp:other.example");
        assert!(
            transports(
                &d("local.example"),
                Some(DomainKind::Local),
                None,
                None,
                &[]
            )
            .is_err()
        );
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_wildcard_listener_is_us_only_on_this_hosts_addresses() {
        let ifaces = [
            ip("127.0.0.1"),
            ip("10.213.7.1"),
            ip("::1"),
            ip("2001:db8::5"),
        ];
        let peers = [sa("192.0.2.20:25"), sa("0.0.0.0:25")];
        let ours = own_addresses(&[sa("0.0.0.0:25")], &ifaces, &peers);
        // Our interfaces on the listener's port, and the peer.
        assert!(is_us(&sa("10.213.7.1:25"), &ours));
        assert!(is_us(&sa("127.0.0.1:25"), &ours));
        assert!(is_us(&sa("192.0.2.20:25"), &ours));
        assert!(is_us(&sa("[::ffff:10.213.7.1]:25"), &ours), "v4-mapped");
        assert!(is_us(&sa("0.0.0.0:25"), &ours), "0.0.0.0 is loopback");
        // A remote MX on the same port is not us (the bug: every :25 was).
        assert!(!is_us(&sa("10.213.7.2:25"), &ours));
        assert!(!is_us(&sa("198.51.100.1:25"), &ours));
        // Nor our address on another port, nor v6 under a v4 wildcard,
        // nor anything because a peer listens on a wildcard.
        assert!(!is_us(&sa("10.213.7.1:2525"), &ours));
        assert!(!is_us(&sa("[2001:db8::5]:25"), &ours));
        assert!(!is_us(&sa("[::]:25"), &ours));

        // `::` is dual-stack: every interface address.
        let ours = own_addresses(&[sa("[::]:25")], &ifaces, &[]);
        assert!(is_us(&sa("[2001:db8::5]:25"), &ours));
        assert!(is_us(&sa("10.213.7.1:25"), &ours));
        assert!(is_us(&sa("[::]:25"), &ours));
        assert!(!is_us(&sa("[2001:db8::6]:25"), &ours));

        // A specific listener is itself only.
        let ours = own_addresses(&[sa("127.0.0.11:2525")], &ifaces, &[]);
        assert_eq!(ours, vec![sa("127.0.0.11:2525")]);
        assert!(!is_us(&sa("127.0.0.12:2525"), &ours));
        assert!(!is_us(&sa("127.0.0.1:2525"), &ours));
    }

    #[test]
    fn a_peer_on_a_wildcard_is_known_by_its_cluster_address() {
        assert_eq!(
            peer_smtp_addr("127.0.0.12:2525", "127.0.0.12:7400"),
            Some(sa("127.0.0.12:2525"))
        );
        assert_eq!(
            peer_smtp_addr("0.0.0.0:25", "192.0.2.7:7400"),
            Some(sa("192.0.2.7:25"))
        );
        assert_eq!(peer_smtp_addr("0.0.0.0:25", "node2.example:7400"), None);
        assert_eq!(peer_smtp_addr("[::]:25", "0.0.0.0:7400"), None);
        assert_eq!(peer_smtp_addr("", "192.0.2.7:7400"), None);
    }

    #[test]
    fn equal_preferences_are_shuffled_but_stay_in_order_of_preference() {
        let mut seen_first = std::collections::BTreeSet::new();
        for _ in 0..200 {
            let mut h = vec![(10, "a".to_string()), (10, "b".into()), (20, "c".into())];
            shuffle_equal_preferences(&mut h);
            assert_eq!(h[2].1, "c");
            seen_first.insert(h[0].1.clone());
        }
        assert_eq!(seen_first.len(), 2, "both equal MXes come first sometimes");
    }
}
