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

/// The servers for an SMTP or LMTP transport, best first, without any of
/// `ourselves` (the cluster's own MX addresses): MX hosts at or below our
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
    let is_us = |a: &SocketAddr| {
        ourselves
            .iter()
            .any(|o| o.port() == a.port() && (o.ip() == a.ip() || (o.ip().is_unspecified())))
    };
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
