//! Zone records as the replicated state keeps them: owner name (absolute,
//! lower-case, no trailing dot), TTL, class IN, type and RDATA in
//! presentation form. Parsing zone files and checking RDATA belongs to
//! hamail-dns (hickory); here are only the checks apply needs: names inside
//! the zone, the SOA's fields, and the serial.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{DomainName, TypesError};

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ZoneRecord {
    /// Absolute owner name, lower-case, without the trailing dot.
    pub name: String,
    pub ttl: u32,
    /// Upper-case type mnemonic: A, AAAA, MX, ...
    pub rtype: String,
    /// RDATA in presentation form, names absolute with a trailing dot.
    pub rdata: String,
}

impl fmt::Display for ZoneRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}. {} IN {} {}",
            self.name, self.ttl, self.rtype, self.rdata
        )
    }
}

/// Is `name` at or below `zone`?
pub fn in_zone(name: &str, zone: &DomainName) -> bool {
    let z = zone.as_str();
    name == z
        || (name.len() > z.len()
            && name.ends_with(z)
            && name.as_bytes()[name.len() - z.len() - 1] == b'.')
}

/// The serial of an SOA's RDATA (`mname rname serial refresh retry expire minimum`).
pub fn soa_serial(rdata: &str) -> Option<u32> {
    let f: Vec<&str> = rdata.split_whitespace().collect();
    if f.len() != 7 {
        return None;
    }
    f[2].parse().ok()
}

/// The SOA RDATA with another serial.
pub fn with_soa_serial(rdata: &str, serial: u32) -> String {
    let mut f: Vec<String> = rdata.split_whitespace().map(str::to_string).collect();
    if f.len() == 7 {
        f[2] = serial.to_string();
    }
    f.join(" ")
}

/// The next serial after `old`, never lower than `wanted` (a serial an
/// imported file brings) in RFC 1982 terms.
pub fn next_serial(old: u32, wanted: Option<u32>) -> u32 {
    let bumped = old.wrapping_add(1);
    match wanted {
        Some(w) if serial_gt(w, old) => w,
        _ => bumped,
    }
}

/// RFC 1982 serial number comparison: is `a` after `b`?
pub fn serial_gt(a: u32, b: u32) -> bool {
    a != b && a.wrapping_sub(b) < (1 << 31)
}

/// Checks a zone's records as a whole: exactly one SOA at the apex, at
/// least one NS at the apex, every owner inside the zone, and no CNAME
/// beside other data at the same name.
pub fn check_zone(zone: &DomainName, records: &[ZoneRecord]) -> Result<(), TypesError> {
    let bad = |m: String| Err(TypesError::Command(format!("zone {zone}: {m}")));
    if let Some(r) = records.iter().find(|r| !in_zone(&r.name, zone)) {
        return bad(format!("{} is outside the zone", r.name));
    }
    let soas: Vec<&ZoneRecord> = records.iter().filter(|r| r.rtype == "SOA").collect();
    match soas.as_slice() {
        [soa] if soa.name == zone.as_str() => {
            if soa_serial(&soa.rdata).is_none() {
                return bad(format!("malformed SOA {:?}", soa.rdata));
            }
        }
        [] => return bad("no SOA record".into()),
        [soa] => return bad(format!("the SOA is at {}, not at the apex", soa.name)),
        _ => return bad("more than one SOA record".into()),
    }
    if !records
        .iter()
        .any(|r| r.rtype == "NS" && r.name == zone.as_str())
    {
        return bad("no NS record at the apex".into());
    }
    for c in records.iter().filter(|r| r.rtype == "CNAME") {
        if c.name == zone.as_str() {
            return bad("a CNAME at the apex is not allowed".into());
        }
        if records.iter().any(|r| {
            r.name == c.name && r.rtype != "CNAME" && r.rtype != "RRSIG" && r.rtype != "NSEC"
        }) {
            return bad(format!("{} has a CNAME and other data", c.name));
        }
        if records
            .iter()
            .filter(|r| r.name == c.name && r.rtype == "CNAME")
            .count()
            > 1
        {
            return bad(format!("{} has more than one CNAME", c.name));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(name: &str, rtype: &str, rdata: &str) -> ZoneRecord {
        ZoneRecord {
            name: name.into(),
            ttl: 300,
            rtype: rtype.into(),
            rdata: rdata.into(),
        }
    }

    #[test]
    fn serials_move_forward() {
        assert_eq!(next_serial(5, None), 6);
        assert_eq!(next_serial(5, Some(2026120201)), 2026120201);
        assert_eq!(next_serial(2026120201, Some(3)), 2026120202);
        assert_eq!(next_serial(u32::MAX, None), 0);
        assert!(serial_gt(0, u32::MAX));
        assert_eq!(
            with_soa_serial("ns1.example.jp. host.example.jp. 1 3600 900 604800 300", 9),
            "ns1.example.jp. host.example.jp. 9 3600 900 604800 300"
        );
    }

    #[test]
    fn zone_checks() {
        let z = DomainName::parse("example.jp").unwrap();
        let soa = r(
            "example.jp",
            "SOA",
            "ns1.example.jp. h.example.jp. 1 3600 900 604800 300",
        );
        let ns = r("example.jp", "NS", "ns1.example.jp.");
        assert!(check_zone(&z, &[soa.clone(), ns.clone()]).is_ok());
        assert!(check_zone(&z, std::slice::from_ref(&ns)).is_err());
        assert!(check_zone(&z, std::slice::from_ref(&soa)).is_err());
        assert!(
            check_zone(
                &z,
                &[soa.clone(), ns.clone(), r("example.com", "A", "192.0.2.1")]
            )
            .is_err()
        );
        assert!(
            check_zone(
                &z,
                &[
                    soa.clone(),
                    ns.clone(),
                    r("www.example.jp", "CNAME", "a.example.jp."),
                    r("www.example.jp", "A", "192.0.2.1")
                ]
            )
            .is_err()
        );
        assert!(in_zone("a.b.example.jp", &z) && !in_zone("badexample.jp", &z));
    }
}
