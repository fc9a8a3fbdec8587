//! DNS blocklists (Postfix's `reject_rbl_client`): is the client's address
//! listed in one of `[smtp] dnsbl`? The query name is the address reversed
//! (octets for IPv4, nibbles for IPv6) under the list's zone; an A answer
//! that the list's filter accepts is a listing, and the TXT record at the
//! same name, if any, is its text. Answers (listings and NXDOMAIN alike)
//! are cached for their TTL in a bounded cache shared by every session; a
//! timeout or SERVFAIL is no listing and is not cached (a warning is
//! logged): a list that is down must not stop mail.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hamail_types::DnsblSite;
use hickory_resolver::TokioResolver;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::rr::{RData, RecordType};

/// Cached answers, at most (client address, list) pairs; past it, expired
/// entries go, then the ones closest to expiry.
const CACHE_ENTRIES: usize = 50_000;
/// The longest an answer is kept, whatever its TTL says.
const MAX_TTL: Duration = Duration::from_secs(3600);
/// How long "not listed" is kept when the answer carries no SOA.
const DEFAULT_NEGATIVE_TTL: Duration = Duration::from_secs(300);

/// A client is listed: where, and the list's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    pub zone: String,
    pub text: Option<String>,
}

impl Listing {
    /// Postfix's reply for a listed client.
    pub fn reply(&self, ip: IpAddr) -> String {
        match &self.text {
            Some(t) => format!(
                "554 5.7.1 Service unavailable; Client host [{ip}] blocked using {}; {t}",
                self.zone
            ),
            None => format!(
                "554 5.7.1 Service unavailable; Client host [{ip}] blocked using {}",
                self.zone
            ),
        }
    }
}

/// The name to look up for `ip` in `zone`: `2.0.0.127.zone` for
/// 127.0.0.2, 32 nibbles for IPv6 (an IPv4-mapped address as IPv4).
pub fn query_name(ip: IpAddr, zone: &str) -> String {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    let mut out = String::new();
    match ip {
        IpAddr::V4(v4) => {
            for o in v4.octets().iter().rev() {
                out.push_str(&format!("{o}."));
            }
        }
        IpAddr::V6(v6) => {
            for b in v6.octets().iter().rev() {
                out.push_str(&format!("{:x}.{:x}.", b & 0xf, b >> 4));
            }
        }
    }
    out.push_str(zone.trim_end_matches('.'));
    out.push('.');
    out
}

struct Cached {
    until: Instant,
    listing: Option<Listing>,
}

/// The lists and their cache; one per smtpd, shared by its sessions.
pub struct Dnsbl {
    resolver: TokioResolver,
    sites: Vec<DnsblSite>,
    cache: Mutex<HashMap<(IpAddr, usize), Cached>>,
}

/// What one list said.
enum Answer {
    /// An answer, good for this long.
    Known(Option<Listing>, Duration),
    /// No answer (timeout, SERVFAIL, ...): no listing, not cached.
    Failed,
}

impl std::fmt::Debug for Dnsbl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sites: Vec<String> = self.sites.iter().map(|s| s.to_string()).collect();
        f.debug_struct("Dnsbl")
            .field("sites", &sites)
            .finish_non_exhaustive()
    }
}

impl Dnsbl {
    pub fn new(resolver: TokioResolver, sites: Vec<DnsblSite>) -> Self {
        Dnsbl {
            resolver,
            sites,
            cache: Mutex::new(HashMap::new()),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.sites.is_empty()
    }

    /// The first list (in configured order) that lists `ip`.
    pub async fn listed(&self, ip: IpAddr) -> Option<Listing> {
        for i in 0..self.sites.len() {
            if let Some(l) = self.site_listing(ip, i).await {
                return Some(l);
            }
        }
        None
    }

    async fn site_listing(&self, ip: IpAddr, i: usize) -> Option<Listing> {
        let now = Instant::now();
        {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(c) = cache.get(&(ip, i))
                && c.until > now
            {
                return c.listing.clone();
            }
        }
        match self.ask(ip, &self.sites[i]).await {
            Answer::Known(listing, ttl) => {
                self.remember(ip, i, listing.clone(), now + ttl.min(MAX_TTL));
                listing
            }
            Answer::Failed => None,
        }
    }

    fn remember(&self, ip: IpAddr, i: usize, listing: Option<Listing>, until: Instant) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= CACHE_ENTRIES && !cache.contains_key(&(ip, i)) {
            let now = Instant::now();
            cache.retain(|_, c| c.until > now);
            if cache.len() >= CACHE_ENTRIES {
                // Still full of live answers: drop the tenth closest to expiry.
                let mut untils: Vec<Instant> = cache.values().map(|c| c.until).collect();
                untils.sort_unstable();
                let cut = untils[CACHE_ENTRIES / 10];
                cache.retain(|_, c| c.until > cut);
            }
        }
        cache.insert((ip, i), Cached { until, listing });
    }

    async fn ask(&self, ip: IpAddr, site: &DnsblSite) -> Answer {
        let zone = site.zone.as_str();
        let name = query_name(ip, zone);
        let lookup = match self.resolver.lookup(name.as_str(), RecordType::A).await {
            Ok(l) => l,
            Err(e) => return failed_or_unlisted(&e, &name),
        };
        let mut ttl = MAX_TTL;
        let mut hit = false;
        for r in lookup.answers() {
            if let RData::A(a) = &r.data {
                ttl = ttl.min(Duration::from_secs(r.ttl.into()));
                hit |= site.lists(a.0);
            }
        }
        if !hit {
            return Answer::Known(None, ttl);
        }
        let text = match self.resolver.lookup(name.as_str(), RecordType::TXT).await {
            Ok(l) => l.answers().iter().find_map(|r| match &r.data {
                RData::TXT(t) => Some(
                    t.txt_data
                        .iter()
                        .map(|s| String::from_utf8_lossy(s).into_owned())
                        .collect::<String>(),
                ),
                _ => None,
            }),
            Err(_) => None,
        };
        let text = text.map(|t| printable(&t));
        Answer::Known(
            Some(Listing {
                zone: zone.to_string(),
                text,
            }),
            ttl,
        )
    }
}

/// A list's text goes into a reply line: no control characters, bounded.
fn printable(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(400)
        .collect()
}

/// NXDOMAIN or no A record: not listed, for the negative TTL. Anything
/// else (timeout, SERVFAIL, refused): no answer.
fn failed_or_unlisted(e: &NetError, name: &str) -> Answer {
    if let NetError::Dns(DnsError::NoRecordsFound(nr)) = e {
        let ttl = nr
            .negative_ttl
            .map_or(DEFAULT_NEGATIVE_TTL, |t| Duration::from_secs(t.into()));
        return Answer::Known(None, ttl);
    }
    tracing::warn!(query = name, error = %e, "DNSBL lookup failed; the client is taken as not listed");
    Answer::Failed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_names_reverse_octets_and_nibbles() {
        let ip: IpAddr = "127.0.0.2".parse().unwrap();
        assert_eq!(
            query_name(ip, "zen.example.test"),
            "2.0.0.127.zen.example.test."
        );
        let mapped: IpAddr = "::ffff:192.0.2.99".parse().unwrap();
        assert_eq!(query_name(mapped, "bl.test."), "99.2.0.192.bl.test.");
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(
            query_name(v6, "bl.test"),
            "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.bl.test."
        );
    }

    #[test]
    fn the_reply_is_postfix_s() {
        let ip: IpAddr = "127.0.0.2".parse().unwrap();
        let l = Listing {
            zone: "zen.example.test".into(),
            text: Some("listed, see https://example.test/q?ip=127.0.0.2".into()),
        };
        assert_eq!(
            l.reply(ip),
            "554 5.7.1 Service unavailable; Client host [127.0.0.2] blocked using zen.example.test; listed, see https://example.test/q?ip=127.0.0.2"
        );
        let l = Listing { text: None, ..l };
        assert_eq!(
            l.reply(ip),
            "554 5.7.1 Service unavailable; Client host [127.0.0.2] blocked using zen.example.test"
        );
    }
}
