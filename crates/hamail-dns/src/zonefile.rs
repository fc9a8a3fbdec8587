//! Zone files (BIND/NSD syntax) to records and back. hickory's parser does
//! the record syntax; around it we split the text into logical entries
//! ourselves, so errors carry the line number, quoted strings inside
//! parentheses (DKIM TXT) keep their meaning, blank owners repeat the
//! previous owner, and `$INCLUDE`/`$GENERATE` are refused (a zone file from
//! an admin socket must not read other files).

use std::fmt::Write;
use std::net::IpAddr;

use hamail_types::{DomainName, ZoneRecord};
use hickory_proto::rr::rdata::TXT;
use hickory_proto::rr::{RData, Record};
use hickory_proto::serialize::txt::Parser;

use crate::DnsError;

const DEFAULT_TTL: u32 = 3600;

/// One logical entry: its first physical line and its text on one line,
/// comments removed, parentheses dissolved.
struct Entry {
    line: usize,
    text: String,
    /// The entry started with whitespace: it repeats the previous owner.
    blank_owner: bool,
}

fn split_entries(text: &str) -> Result<Vec<Entry>, DnsError> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut start = 0usize;
    let mut blank_owner = false;
    let mut depth = 0usize;
    let mut in_quote = false;
    let mut escape = false;
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        if depth == 0 && !in_quote {
            start = line_no;
            blank_owner = raw.starts_with([' ', '\t']);
        }
        let mut chars = raw.chars();
        while let Some(c) = chars.next() {
            if in_quote {
                cur.push(c);
                if escape {
                    escape = false;
                } else if c == '\\' {
                    escape = true;
                } else if c == '"' {
                    in_quote = false;
                }
                continue;
            }
            match c {
                ';' => break,
                '"' => {
                    in_quote = true;
                    cur.push(c);
                }
                '\\' => {
                    cur.push(c);
                    if let Some(n) = chars.next() {
                        cur.push(n);
                    }
                }
                '(' => {
                    depth += 1;
                    cur.push(' ');
                }
                ')' => {
                    if depth == 0 {
                        return Err(DnsError::ZoneFile {
                            line: line_no,
                            cause: "')' without '('".into(),
                        });
                    }
                    depth -= 1;
                    cur.push(' ');
                }
                c => cur.push(c),
            }
        }
        if in_quote {
            return Err(DnsError::ZoneFile {
                line: line_no,
                cause: "unclosed quoted string".into(),
            });
        }
        if depth > 0 {
            cur.push(' ');
            continue;
        }
        if !cur.trim().is_empty() {
            out.push(Entry {
                line: start,
                text: std::mem::take(&mut cur),
                blank_owner,
            });
        }
        cur.clear();
    }
    if depth > 0 {
        return Err(DnsError::ZoneFile {
            line: start,
            cause: "unclosed '(' (missing ')')".into(),
        });
    }
    Ok(out)
}

fn fqdn(name: &str) -> String {
    if name.ends_with('.') {
        name.to_string()
    } else {
        format!("{name}.")
    }
}

/// Presentation RDATA; TXT strings quoted (hickory's Display does not).
fn rdata_text(data: &RData) -> String {
    match data {
        RData::TXT(txt) => quote_txt(txt),
        other => other.to_string(),
    }
}

fn quote_txt(txt: &TXT) -> String {
    let mut out = String::new();
    for (i, s) in txt.txt_data.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push('"');
        for &b in s.iter() {
            match b {
                b'"' | b'\\' => {
                    out.push('\\');
                    out.push(b as char);
                }
                0x20..=0x7e => out.push(b as char),
                _ => {
                    let _ = write!(out, "\\{b:03}");
                }
            }
        }
        out.push('"');
    }
    out
}

fn to_zone_record(r: &Record) -> ZoneRecord {
    let name = r.name.to_ascii().to_ascii_lowercase();
    ZoneRecord {
        name: name.trim_end_matches('.').to_string(),
        ttl: r.ttl,
        rtype: r.record_type().to_string().to_ascii_uppercase(),
        rdata: rdata_text(&r.data),
    }
}

/// Parses one entry (already on one line) with `origin` and `ttl`.
fn parse_entry(text: &str, origin: &str, ttl: u32) -> Result<Vec<ZoneRecord>, String> {
    let zone = format!("$ORIGIN {origin}\n$TTL {ttl}\n{text}\n");
    let (_, map) = Parser::new(zone, None, None)
        .parse()
        .map_err(|e| e.to_string())?;
    let records: Vec<ZoneRecord> = map
        .values()
        .flat_map(|s| s.records_without_rrsigs())
        .map(to_zone_record)
        .collect();
    if records.is_empty() {
        return Err("no record on this line (owner name without type and data?)".into());
    }
    Ok(records)
}

fn parse_ttl(s: &str) -> Option<u32> {
    let mut total: u64 = 0;
    let mut num: u64 = 0;
    let mut seen = false;
    for c in s.chars() {
        if let Some(d) = c.to_digit(10) {
            num = num * 10 + d as u64;
            seen = true;
            continue;
        }
        let mult = match c.to_ascii_lowercase() {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            'w' => 604800,
            _ => return None,
        };
        total += num * mult;
        num = 0;
    }
    if !seen {
        return None;
    }
    u32::try_from(total + num).ok()
}

/// Parses a whole zone file for `zone`; the first bad line is the error.
pub fn parse_zone_file(zone: &DomainName, text: &str) -> Result<Vec<ZoneRecord>, DnsError> {
    let mut origin = fqdn(zone.as_str());
    let mut ttl = DEFAULT_TTL;
    let mut last_owner: Option<String> = None;
    let mut records = Vec::new();
    for e in split_entries(text)? {
        let err = |cause: String| DnsError::ZoneFile {
            line: e.line,
            cause,
        };
        let trimmed = e.text.trim();
        if let Some(rest) = trimmed.strip_prefix('$') {
            let mut words = rest.split_whitespace();
            let directive = words.next().unwrap_or("").to_ascii_uppercase();
            let arg = words.next();
            match (directive.as_str(), arg) {
                ("ORIGIN", Some(o)) => {
                    origin = if o.ends_with('.') {
                        o.to_string()
                    } else {
                        format!("{o}.{origin}")
                    }
                }
                ("TTL", Some(t)) => {
                    ttl = parse_ttl(t).ok_or_else(|| err(format!("invalid $TTL {t:?}")))?
                }
                ("INCLUDE", _) | ("GENERATE", _) => {
                    return Err(err(format!(
                        "${directive} is not supported; send the records themselves"
                    )));
                }
                (d, _) => return Err(err(format!("unknown or incomplete directive ${d}"))),
            }
            continue;
        }
        let text = if e.blank_owner {
            let owner = last_owner
                .clone()
                .ok_or_else(|| err("a record without an owner name before any owner".into()))?;
            format!("{owner} {trimmed}")
        } else {
            let first = trimmed.split_whitespace().next().unwrap_or("");
            last_owner = Some(match first {
                "@" => origin.clone(),
                f if f.ends_with('.') => f.to_string(),
                f => format!("{f}.{origin}"),
            });
            trimmed.to_string()
        };
        let parsed = parse_entry(&text, &origin, ttl).map_err(err)?;
        for r in &parsed {
            if !hamail_types::zone::in_zone(&r.name, zone) {
                return Err(err(format!("{} is outside the zone {zone}", r.name)));
            }
        }
        records.extend(parsed);
    }
    if records.is_empty() {
        return Err(DnsError::ZoneFile {
            line: 0,
            cause: "the zone file holds no records".into(),
        });
    }
    hamail_types::zone::check_zone(zone, &records).map_err(|e| DnsError::ZoneFile {
        line: 0,
        cause: e.to_string(),
    })?;
    Ok(records)
}

/// Parses `NAME [TTL] [IN] TYPE RDATA`, names relative to `zone`.
pub fn parse_record_line(zone: &DomainName, line: &str) -> Result<ZoneRecord, DnsError> {
    let rerr = |cause: String| DnsError::Record {
        input: line.to_string(),
        cause,
    };
    if line.trim_start().starts_with('$') || line.contains('\n') {
        return Err(rerr("one record, on one line".into()));
    }
    let entries = split_entries(line).map_err(|e| rerr(e.to_string()))?;
    let [entry] = entries.as_slice() else {
        return Err(rerr("expected one record".into()));
    };
    let mut parsed =
        parse_entry(entry.text.trim(), &fqdn(zone.as_str()), DEFAULT_TTL).map_err(rerr)?;
    if parsed.len() != 1 {
        return Err(rerr("expected one record".into()));
    }
    let r = parsed.remove(0);
    if !hamail_types::zone::in_zone(&r.name, zone) {
        return Err(rerr(format!("{} is outside the zone {zone}", r.name)));
    }
    Ok(r)
}

/// Parses `NAME [TYPE [RDATA]]` for `record del`.
pub fn parse_record_selector(
    zone: &DomainName,
    spec: &str,
) -> Result<(String, Option<String>, Option<String>), DnsError> {
    let rerr = |cause: String| DnsError::Record {
        input: spec.to_string(),
        cause,
    };
    let mut words = spec.split_whitespace();
    let name = words.next().ok_or_else(|| rerr("missing name".into()))?;
    let origin = fqdn(zone.as_str());
    let abs = match name {
        "@" => origin.clone(),
        n if n.ends_with('.') => n.to_string(),
        n => format!("{n}.{origin}"),
    };
    let abs = abs.trim_end_matches('.').to_ascii_lowercase();
    if !hamail_types::zone::in_zone(&abs, zone) {
        return Err(rerr(format!("{abs} is outside the zone {zone}")));
    }
    let rest: Vec<&str> = words.collect();
    let Some((rtype, rdata)) = rest.split_first() else {
        return Ok((abs, None, None));
    };
    let rtype = rtype.to_ascii_uppercase();
    if rdata.is_empty() {
        if rtype.parse::<hickory_proto::rr::RecordType>().is_err() {
            return Err(rerr(format!("unknown record type {rtype}")));
        }
        return Ok((abs, Some(rtype), None));
    }
    // Normalise the RDATA through the parser so it matches what is stored.
    let r = parse_record_line(zone, &format!("{name} 0 IN {rtype} {}", rdata.join(" ")))?;
    Ok((abs, Some(r.rtype), Some(r.rdata)))
}

/// The zone as zone-file text (`zone show`, `zone export`).
pub fn zone_file_text(zone: &DomainName, records: &[ZoneRecord]) -> String {
    let mut out = format!("$ORIGIN {zone}.\n");
    let mut sorted: Vec<&ZoneRecord> = records.iter().collect();
    // SOA first, then by name and type.
    sorted.sort_by_key(|r| {
        (
            r.rtype != "SOA",
            r.name.clone(),
            r.rtype.clone(),
            r.rdata.clone(),
        )
    });
    for r in sorted {
        let _ = writeln!(out, "{}. {} IN {} {}", r.name, r.ttl, r.rtype, r.rdata);
    }
    out
}

/// A new zone's records: an SOA, and one NS per name server (with its
/// address as glue when it lies inside the zone).
pub fn default_zone(
    zone: &DomainName,
    nameservers: &[(String, Option<IpAddr>)],
) -> Vec<ZoneRecord> {
    let mut records = Vec::new();
    let primary = nameservers
        .first()
        .map(|(n, _)| fqdn(n))
        .unwrap_or_else(|| format!("ns1.{zone}."));
    records.push(ZoneRecord {
        name: zone.to_string(),
        ttl: DEFAULT_TTL,
        rtype: "SOA".into(),
        rdata: format!("{primary} hostmaster.{zone}. 1 3600 900 1209600 300"),
    });
    for (ns, addr) in nameservers {
        let host = fqdn(ns);
        records.push(ZoneRecord {
            name: zone.to_string(),
            ttl: DEFAULT_TTL,
            rtype: "NS".into(),
            rdata: host.clone(),
        });
        let host_name = host.trim_end_matches('.').to_string();
        if let Some(ip) = addr
            && hamail_types::zone::in_zone(&host_name, zone)
            && !ip.is_unspecified()
        {
            records.push(ZoneRecord {
                name: host_name,
                ttl: DEFAULT_TTL,
                rtype: if ip.is_ipv4() { "A" } else { "AAAA" }.into(),
                rdata: ip.to_string(),
            });
        }
    }
    records
}

#[cfg(test)]
mod tests {
    use super::*;

    fn z() -> DomainName {
        DomainName::parse("example.jp").unwrap()
    }

    const ZONE: &str = r#"$ORIGIN example.jp.
$TTL 1h
@   IN SOA ns1.example.jp. hostmaster.example.jp. (
        2026120201 ; serial
        3600 900 1209600 300 )
    IN NS ns1
    IN NS ns2.example.net.
    IN MX 10 mail
ns1 IN A 192.0.2.53
mail 300 IN A 192.0.2.25
www IN CNAME mail
txt IN TXT "v=spf1 mx -all" "second; string"
sel._domainkey IN TXT ( "v=DKIM1; k=rsa; "
        "p=MIIBIjANBg" )
"#;

    #[test]
    fn parses_bind_syntax() {
        let r = parse_zone_file(&z(), ZONE).unwrap();
        let find = |n: &str, t: &str| r.iter().find(|x| x.name == n && x.rtype == t).unwrap();
        assert_eq!(find("example.jp", "SOA").ttl, 3600);
        assert!(find("example.jp", "SOA").rdata.contains("2026120201"));
        assert_eq!(r.iter().filter(|x| x.rtype == "NS").count(), 2);
        assert_eq!(find("mail.example.jp", "A").ttl, 300);
        assert_eq!(find("www.example.jp", "CNAME").rdata, "mail.example.jp.");
        assert_eq!(
            find("txt.example.jp", "TXT").rdata,
            "\"v=spf1 mx -all\" \"second; string\""
        );
        assert_eq!(
            find("sel._domainkey.example.jp", "TXT").rdata,
            "\"v=DKIM1; k=rsa; \" \"p=MIIBIjANBg\""
        );
        // Export and parse again: the same records.
        let text = zone_file_text(&z(), &r);
        let mut again = parse_zone_file(&z(), &text).unwrap();
        let mut first = r.clone();
        again.sort();
        first.sort();
        assert_eq!(again, first);
    }

    #[test]
    fn errors_name_the_line() {
        let bad = "$TTL 300\n@ SOA ns1 h 1 2 3 4 5\n@ NS ns1\nwww A 300.1.2.3\n";
        let e = parse_zone_file(&z(), bad).unwrap_err().to_string();
        assert!(e.starts_with("line 4:"), "{e}");
        let e = parse_zone_file(&z(), "$INCLUDE /etc/passwd\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 1") && e.contains("INCLUDE"), "{e}");
        let e = parse_zone_file(
            &z(),
            "$TTL 1\n@ SOA ns1 h 1 2 3 4 5\n@ NS ns1\nx.example.com. A 192.0.2.1\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("line 4") && e.contains("outside"), "{e}");
        let e = parse_zone_file(&z(), "@ SOA ns1 h ( 1 2 3 4 5\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 1"), "{e}");
        assert!(
            parse_zone_file(&z(), "$TTL 1\n@ NS ns1\n").is_err(),
            "no SOA"
        );
    }

    #[test]
    fn single_records_and_selectors() {
        let r = parse_record_line(&z(), "www 300 IN A 192.0.2.1").unwrap();
        assert_eq!(
            (r.name.as_str(), r.ttl, r.rtype.as_str(), r.rdata.as_str()),
            ("www.example.jp", 300, "A", "192.0.2.1")
        );
        let r = parse_record_line(&z(), "@ MX 10 mail").unwrap();
        assert_eq!(r.rdata, "10 mail.example.jp.");
        for bad in [
            "www 300 IN A 1.2.3",
            "www 300 IN BOGUS x",
            "x.example.com. 300 IN A 192.0.2.1",
            "www",
            "$TTL 5",
        ] {
            assert!(parse_record_line(&z(), bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_record_selector(&z(), "www A 192.0.2.1").unwrap(),
            (
                "www.example.jp".into(),
                Some("A".into()),
                Some("192.0.2.1".into())
            )
        );
        assert_eq!(parse_record_selector(&z(), "@").unwrap().0, "example.jp");
        let d = default_zone(
            &z(),
            &[
                ("ns1.example.jp".into(), Some("192.0.2.1".parse().unwrap())),
                ("ns2.example.net".into(), None),
            ],
        );
        assert!(hamail_types::zone::check_zone(&z(), &d).is_ok());
        assert_eq!(d.len(), 4);
    }
}
