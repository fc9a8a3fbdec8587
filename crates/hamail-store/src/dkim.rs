//! The dkim table: the signing keys of our domains, each added together
//! with its TXT record (`SELECTOR._domainkey.DOMAIN`) in the zone of ours
//! that holds the name, and removed together with it, so every node that
//! has a key also serves its record. A version counter moves with every
//! change, so the smtpd reloads its signers with one small read.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;

use hamail_types::dkim::{DKIM_RECORD_TTL, record_name};
use hamail_types::zone::{self, ZoneRecord};
use hamail_types::{DkimKey, DomainName, Outcome};

use crate::apply::{Applier, ApplyContext};
use crate::tables::{DkimRecord, DomainRecord, Table, domain_key, domain_prefix};
use crate::{Result, Store, decode};

/// The key of the version counter (domain keys never start with NUL).
const VERSION_KEY: &[u8] = b"\0version";

fn key(domain: &DomainName, selector: &str) -> Vec<u8> {
    let mut k = domain_prefix(domain);
    k.extend_from_slice(selector.as_bytes());
    k
}

fn from_key(k: &[u8]) -> Option<(DomainName, String)> {
    let pos = k.iter().position(|b| *b == 0)?;
    if pos == 0 {
        return None;
    }
    let domain = DomainName::parse(std::str::from_utf8(&k[..pos]).ok()?).ok()?;
    let selector = std::str::from_utf8(&k[pos + 1..]).ok()?.to_string();
    Some((domain, selector))
}

/// Does this zone record publish the key with `public_key` at `name`?
fn publishes(r: &ZoneRecord, name: &str, public_key: &str) -> bool {
    r.name == name
        && r.rtype == "TXT"
        && r.rdata
            .replace("\" \"", "")
            .contains(&format!("p={public_key}"))
}

impl Applier<'_> {
    /// The zone of ours that holds `name` (the longest one), if any.
    fn zone_holding(&self, name: &str) -> Result<Option<DomainName>> {
        let mut rest = name;
        loop {
            if let Ok(z) = DomainName::parse(rest)
                && self.get(Table::Zones, z.as_str().as_bytes())?.is_some()
            {
                return Ok(Some(z));
            }
            match rest.split_once('.') {
                Some((_, parent)) => rest = parent,
                None => return Ok(None),
            }
        }
    }

    fn bump_dkim_version(&mut self) -> Result<()> {
        let v = self
            .get_typed::<u64>(Table::Dkim, VERSION_KEY, "dkim version")?
            .unwrap_or(0);
        self.put(Table::Dkim, VERSION_KEY.to_vec(), &(v + 1));
        Ok(())
    }

    pub(crate) fn dkim_add(
        &mut self,
        domain: &DomainName,
        keys: &[DkimKey],
        ctx: &ApplyContext,
    ) -> Result<Outcome> {
        if self
            .get_typed::<DomainRecord>(Table::Domains, &domain_key(domain), "domain")?
            .is_none()
        {
            return Ok(Outcome::rejected(format!(
                "{domain} is not one of our domains (add it with `hamail domain add {domain}`)"
            )));
        }
        // Every check first: a rejection must leave nothing written.
        let mut zones: BTreeMap<DomainName, Vec<ZoneRecord>> = BTreeMap::new();
        let mut published = Vec::new();
        for k in keys {
            if self.get(Table::Dkim, &key(domain, &k.selector))?.is_some() {
                return Ok(Outcome::rejected(format!(
                    "DKIM selector {} of {domain} exists already (hamail dkim list)",
                    k.selector
                )));
            }
            let name = record_name(&k.selector, domain);
            let Some(z) = self.zone_holding(&name)? else {
                return Ok(Outcome::rejected(format!(
                    "no zone of ours holds {name}: create the zone of {domain} first (hamail zone add {domain})"
                )));
            };
            let records = match zones.entry(z.clone()) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(e) => {
                    e.insert(self.zone_state(&z)?.map(|s| s.records).unwrap_or_default())
                }
            };
            if let Some(cut) = records.iter().find(|r| {
                r.rtype == "NS"
                    && r.name != z.as_str()
                    && DomainName::parse(&r.name).is_ok_and(|n| zone::in_zone(&name, &n))
            }) {
                return Ok(Outcome::rejected(format!(
                    "{name} is delegated away from zone {z} (NS at {}): publish the key where it is served",
                    cut.name
                )));
            }
            if records.iter().any(|r| r.name == name && r.rtype == "TXT") {
                return Ok(Outcome::rejected(format!(
                    "{name} has a TXT record already in zone {z}; delete it first (hamail record del {z} {name} TXT)"
                )));
            }
            records.push(ZoneRecord {
                name: name.clone(),
                ttl: DKIM_RECORD_TTL,
                rtype: "TXT".into(),
                rdata: k.txt_rdata(),
            });
            published.push((k, name, z));
        }
        for (z, records) in &zones {
            if let Err(e) = zone::check_zone(z, records) {
                return Ok(Outcome::rejected(e.to_string()));
            }
            if let Some(reason) = self.dkim_records_missing(z, Some(records.as_slice()))? {
                return Ok(Outcome::rejected(reason));
            }
        }
        for (k, _, z) in &published {
            self.put(
                Table::Dkim,
                key(domain, &k.selector),
                &DkimRecord {
                    algorithm: k.algorithm,
                    private_key: k.private_key.clone(),
                    public_key: k.public_key.clone(),
                    zone: z.clone(),
                    created_ms: ctx.time_ms,
                },
            );
        }
        let mut details = Vec::new();
        for (z, records) in zones {
            let old = self.zone_state(&z)?;
            let names: Vec<&str> = published
                .iter()
                .filter(|(_, _, pz)| *pz == z)
                .map(|(_, n, _)| n.as_str())
                .collect();
            let change = format!("dkim add {}", names.join(", "));
            match self.zone_write(&z, old, records, ctx, change)? {
                Outcome::Applied { detail } => details.push(detail),
                // Checked above; never half an add.
                other => return Ok(other),
            }
        }
        self.bump_dkim_version()?;
        let keys: Vec<String> = published
            .iter()
            .map(|(k, n, _)| format!("published {n} TXT ({} key)", k.algorithm))
            .collect();
        Ok(Outcome::applied(format!(
            "{}; {domain} is signed with them from now on ({})",
            keys.join("; "),
            details.join("; ")
        )))
    }

    pub(crate) fn dkim_del(
        &mut self,
        domain: &DomainName,
        selector: &str,
        last: bool,
        ctx: &ApplyContext,
    ) -> Result<Outcome> {
        let k = key(domain, selector);
        let Some(rec) = self.get_typed::<DkimRecord>(Table::Dkim, &k, "dkim key")? else {
            return Ok(Outcome::rejected(format!(
                "{domain} has no DKIM key with selector {selector} (hamail dkim list)"
            )));
        };
        let left = self
            .keys_with_prefix(Table::Dkim, &domain_prefix(domain))?
            .len();
        if left <= 1 && !last {
            return Ok(Outcome::rejected(format!(
                "{selector} is the last DKIM key of {domain}: deleting it stops signing for {domain}; add --last to do so"
            )));
        }
        // The row goes first, so the zone check below no longer asks for
        // its record.
        self.delete(Table::Dkim, k);
        let name = record_name(selector, domain);
        let mut detail = format!("DKIM key {selector} of {domain} deleted");
        if let Some(old) = self.zone_state(&rec.zone)? {
            let before = old.records.len();
            let records: Vec<ZoneRecord> = old
                .records
                .iter()
                .filter(|r| !publishes(r, &name, &rec.public_key))
                .cloned()
                .collect();
            if records.len() < before {
                match self.zone_write(
                    &rec.zone,
                    Some(old),
                    records,
                    ctx,
                    format!("dkim del {name}"),
                )? {
                    Outcome::Applied { detail: d } => {
                        detail = format!("{detail}; {name} TXT removed ({d})")
                    }
                    other => return Ok(other),
                }
            }
        }
        self.bump_dkim_version()?;
        if left <= 1 {
            detail.push_str(&format!("; {domain} is no longer signed"));
        }
        Ok(Outcome::applied(detail))
    }

    /// Why these records of `zone` cannot be written, if a DKIM key of
    /// ours would lose its record (use `dkim del` for that).
    pub(crate) fn dkim_records_missing(
        &self,
        zone: &DomainName,
        records: Option<&[ZoneRecord]>,
    ) -> Result<Option<String>> {
        for k in self.keys_with_prefix(Table::Dkim, b"")? {
            let Some((domain, selector)) = from_key(&k) else {
                continue;
            };
            let Some(rec) = self.get_typed::<DkimRecord>(Table::Dkim, &k, "dkim key")? else {
                continue;
            };
            if rec.zone != *zone {
                continue;
            }
            let name = record_name(&selector, &domain);
            let kept =
                records.is_some_and(|rs| rs.iter().any(|r| publishes(r, &name, &rec.public_key)));
            if !kept {
                return Ok(Some(format!(
                    "zone {zone} publishes the DKIM key {selector} of {domain} at {name}; remove it with `hamail dkim del {domain} {selector}` first"
                )));
            }
        }
        Ok(None)
    }

    /// Keys of a domain (for `domain del`).
    pub(crate) fn dkim_key_count(&self, domain: &DomainName) -> Result<usize> {
        Ok(self
            .keys_with_prefix(Table::Dkim, &domain_prefix(domain))?
            .len())
    }
}

/// One key as `dkim list` and the smtpd read it.
#[derive(Debug, Clone)]
pub struct DkimEntry {
    pub domain: DomainName,
    pub selector: String,
    pub record: DkimRecord,
}

impl Store {
    /// Every DKIM key, by domain then selector.
    pub fn dkim_keys(&self) -> Result<Vec<DkimEntry>> {
        Ok(self
            .keyed_rows::<_, DkimRecord>(Table::Dkim, b"", from_key, "dkim key")?
            .into_iter()
            .map(|((domain, selector), record)| DkimEntry {
                domain,
                selector,
                record,
            })
            .collect())
    }

    /// Moves with every change to the keys (0: never changed).
    pub fn dkim_version(&self) -> Result<u64> {
        Ok(self
            .get(Table::Dkim, VERSION_KEY)?
            .map(|v| decode::<u64>("dkim version", &v))
            .transpose()?
            .unwrap_or(0))
    }
}
