//! A DNS blocklist as Postfix's `reject_rbl_client` names it: a zone, and
//! optionally the answers that count as a listing (`zone=127.0.0.2`,
//! `zone=127.0.0.[2..11]`, `zone=127.0.[0;1].[2;4..7]`); without a filter
//! any A record is a listing. Pure parsing and matching.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use crate::{DomainName, TypesError};

/// One `[smtp] dnsbl` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsblSite {
    pub zone: DomainName,
    /// The answers that count; `None`: any.
    pub filter: Option<AnswerFilter>,
}

/// A pattern of four octets, each a set of values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnswerFilter {
    octets: [Vec<(u8, u8)>; 4],
    text: String,
}

impl AnswerFilter {
    pub fn matches(&self, a: Ipv4Addr) -> bool {
        a.octets()
            .iter()
            .zip(&self.octets)
            .all(|(o, set)| set.iter().any(|(lo, hi)| (*lo..=*hi).contains(o)))
    }
}

impl DnsblSite {
    /// Whether an answer (an A record of the list) is a listing.
    pub fn lists(&self, answer: Ipv4Addr) -> bool {
        self.filter.as_ref().is_none_or(|f| f.matches(answer))
    }
}

fn octet(input: &str, part: &str) -> Result<u8, TypesError> {
    let bad = || TypesError::Dnsbl {
        input: input.to_string(),
        reason: format!("{part:?} is not a number from 0 to 255"),
    };
    if part.is_empty() || part.len() > 3 || !part.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    part.parse().map_err(|_| bad())
}

fn octet_set(input: &str, part: &str) -> Result<Vec<(u8, u8)>, TypesError> {
    let Some(inner) = part.strip_prefix('[').and_then(|p| p.strip_suffix(']')) else {
        let n = octet(input, part)?;
        return Ok(vec![(n, n)]);
    };
    let mut out = Vec::new();
    for item in inner.split(';') {
        match item.split_once("..") {
            Some((lo, hi)) => {
                let (lo, hi) = (octet(input, lo)?, octet(input, hi)?);
                if lo > hi {
                    return Err(TypesError::Dnsbl {
                        input: input.to_string(),
                        reason: format!("the range {item} goes down"),
                    });
                }
                out.push((lo, hi));
            }
            None => {
                let n = octet(input, item)?;
                out.push((n, n));
            }
        }
    }
    Ok(out)
}

/// Splits `127.0.0.[2..11]` at the dots outside brackets.
fn split_octets(f: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in f.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            '.' if depth == 0 => {
                parts.push(&f[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&f[start..]);
    parts
}

impl FromStr for DnsblSite {
    type Err = TypesError;
    fn from_str(input: &str) -> Result<Self, TypesError> {
        let (zone, filter) = match input.split_once('=') {
            Some((z, f)) => (z, Some(f)),
            None => (input, None),
        };
        let zone = DomainName::parse(zone.trim().trim_end_matches('.')).map_err(|e| {
            TypesError::Dnsbl {
                input: input.to_string(),
                reason: e.to_string(),
            }
        })?;
        let filter = match filter {
            None => None,
            Some(f) => {
                let parts = split_octets(f.trim());
                if parts.len() != 4 {
                    return Err(TypesError::Dnsbl {
                        input: input.to_string(),
                        reason:
                            "the answer filter needs four octets, e.g. 127.0.0.2 or 127.0.0.[2..11]"
                                .into(),
                    });
                }
                let mut octets: [Vec<(u8, u8)>; 4] = Default::default();
                for (slot, part) in octets.iter_mut().zip(&parts) {
                    *slot = octet_set(input, part)?;
                }
                Some(AnswerFilter {
                    octets,
                    text: f.trim().to_string(),
                })
            }
        };
        Ok(DnsblSite { zone, filter })
    }
}

impl fmt::Display for DnsblSite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.filter {
            Some(filter) => write!(f, "{}={}", self.zone, filter.text),
            None => write!(f, "{}", self.zone),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn sites_parse_with_and_without_answer_filters() {
        let s: DnsblSite = "zen.example.test".parse().unwrap();
        assert_eq!(s.zone.as_str(), "zen.example.test");
        assert!(s.lists(ip("127.0.0.2")) && s.lists(ip("127.0.0.255")));
        let s: DnsblSite = "bl.example.test=127.0.0.2".parse().unwrap();
        assert!(s.lists(ip("127.0.0.2")));
        assert!(!s.lists(ip("127.0.0.3")));
        let s: DnsblSite = "bl.example.test=127.0.0.[2..11]".parse().unwrap();
        assert!(s.lists(ip("127.0.0.2")) && s.lists(ip("127.0.0.11")));
        assert!(!s.lists(ip("127.0.0.1")) && !s.lists(ip("127.0.0.12")));
        assert!(!s.lists(ip("127.0.1.2")));
        let s: DnsblSite = "bl.example.test=127.0.[0;1].[2;4..7]".parse().unwrap();
        assert!(s.lists(ip("127.0.1.5")) && s.lists(ip("127.0.0.2")));
        assert!(!s.lists(ip("127.0.0.3")) && !s.lists(ip("127.0.2.2")));
        assert_eq!(s.to_string(), "bl.example.test=127.0.[0;1].[2;4..7]");
    }

    #[test]
    fn bad_sites_are_refused_naming_the_entry() {
        for bad in [
            "",
            "zen..example",
            "zen.example.test=",
            "zen.example.test=127.0.0",
            "zen.example.test=127.0.0.256",
            "zen.example.test=127.0.0.[11..2]",
            "zen.example.test=127.0.0.[2..]",
            "zen.example.test=127.0.0.[2",
            "zen.example.test=127.0.0.x",
            "zen.example.test=127.0.0.2.1",
        ] {
            let e = bad.parse::<DnsblSite>().unwrap_err().to_string();
            assert!(e.contains(&format!("{bad:?}")), "{bad}: {e}");
        }
    }
}
