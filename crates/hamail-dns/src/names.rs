//! The owner names of a zone, compiled when the snapshot is built, so that a
//! query is classified (answer, NODATA, NXDOMAIN, referral) with a few hash
//! look-ups of the query name's suffixes, whatever the size of the zone.
//! hickory's in-memory zone scans every record of the zone to tell NXDOMAIN
//! from NODATA; a random-subdomain flood must not cost that.
//!
//! Names are keyed by their lower-cased wire form, so the UDP worker looks
//! them up straight from the packet's question bytes, without decoding it.

use std::collections::HashMap;

use hickory_proto::rr::{LowerName, Record, RecordType};
use hickory_proto::serialize::binary::BinEncodable;

/// What a query for a name in a zone gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// The zone holds data for it (or a CNAME, or a wildcard that does):
    /// the catalog answers.
    Answer,
    /// The name exists (an owner or an empty non-terminal) without data of
    /// that type: NOERROR, no answer, the SOA in authority.
    NoData,
    /// No such name and no wildcard that covers it: NXDOMAIN, the SOA in
    /// authority.
    NxDomain,
    /// At or below a delegation point: the referral of cut number `n` of
    /// the zone.
    Referral(usize),
}

/// What one existing name holds.
#[derive(Debug, Default)]
struct Owner {
    /// The types of its records; empty for an empty non-terminal.
    types: Vec<RecordType>,
    /// Index of the zone cut at this name (NS below the apex).
    cut: Option<usize>,
    /// The types held by `*.<this name>`, if that wildcard exists.
    wildcard: Option<Vec<RecordType>>,
}

/// Every name of one zone that exists, by lower-cased wire form.
#[derive(Debug, Default)]
pub(crate) struct NameIndex {
    names: HashMap<Box<[u8]>, Owner>,
    /// Length of the apex in wire form.
    apex_len: usize,
}

/// The lower-cased wire form of a name.
pub(crate) fn wire(name: &LowerName) -> Vec<u8> {
    // A name we hold always encodes; an empty key only misses.
    name.to_bytes().unwrap_or_default()
}

/// Offsets of every label of a wire name, from the full name to the root.
/// None for a name that is not well formed.
fn suffixes(name: &[u8]) -> Option<impl Iterator<Item = usize> + '_> {
    let mut at = Some(0usize);
    let mut check = 0usize;
    // Validate first so the iterator cannot run off the end.
    loop {
        let len = *name.get(check)? as usize;
        if len == 0 {
            if check + 1 != name.len() {
                return None;
            }
            break;
        }
        if len > 63 {
            return None;
        }
        check = check.checked_add(len + 1)?;
    }
    Some(std::iter::from_fn(move || {
        let o = at?;
        let len = name[o] as usize;
        at = (len != 0).then(|| o + len + 1);
        Some(o)
    }))
}

fn answers(types: &[RecordType], qtype: RecordType) -> bool {
    types.iter().any(|t| {
        *t == qtype
            || *t == RecordType::CNAME
            || (*t == RecordType::ANAME && matches!(qtype, RecordType::A | RecordType::AAAA))
    }) || (qtype == RecordType::ANY && !types.is_empty())
}

impl NameIndex {
    /// Compiles the index of a zone from its records; `cuts` are its
    /// delegation points, in the order their index names them.
    pub(crate) fn new<'a>(
        apex: &LowerName,
        records: impl Iterator<Item = &'a Record>,
        cuts: &[LowerName],
    ) -> Self {
        let apex_wire = wire(apex);
        let mut index = NameIndex {
            names: HashMap::new(),
            apex_len: apex_wire.len(),
        };
        index
            .names
            .insert(apex_wire.clone().into(), Owner::default());
        let mut wildcards: Vec<(Vec<u8>, RecordType)> = Vec::new();
        for r in records {
            let name = LowerName::new(&r.name);
            let w = wire(&name);
            if !w.ends_with(&apex_wire) {
                continue;
            }
            if name.is_wildcard() {
                wildcards.push((w.clone(), r.record_type()));
            }
            // The name and every ancestor up to the apex exist.
            if let Some(offsets) = suffixes(&w) {
                for o in offsets {
                    let suffix = &w[o..];
                    if suffix.len() < apex_wire.len() {
                        break;
                    }
                    if !index.names.contains_key(suffix) {
                        index.names.insert(suffix.into(), Owner::default());
                    }
                }
            }
            if let Some(owner) = index.names.get_mut(w.as_slice())
                && !owner.types.contains(&r.record_type())
            {
                owner.types.push(r.record_type());
            }
        }
        for (w, t) in wildcards {
            // `*.parent`: the label `*` is two bytes of wire form.
            if let Some(parent) = index.names.get_mut(&w[2..]) {
                let types = parent.wildcard.get_or_insert_with(Vec::new);
                if !types.contains(&t) {
                    types.push(t);
                }
            }
        }
        for (i, cut) in cuts.iter().enumerate() {
            if let Some(owner) = index.names.get_mut(wire(cut).as_slice()) {
                owner.cut = Some(i);
            }
        }
        index
    }

    /// How many names exist in the zone (owners and empty non-terminals).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.names.len()
    }

    /// Classifies a query for `name` (lower-cased wire form, inside this
    /// zone) of type `qtype`: a few hash look-ups, one per label.
    pub(crate) fn classify(&self, name: &[u8], qtype: RecordType) -> Class {
        let Some(offsets) = suffixes(name) else {
            return Class::NxDomain;
        };
        // The closest encloser: the longest existing suffix (RFC 4592).
        let mut closest: Option<(usize, &Owner)> = None;
        for o in offsets {
            let suffix = &name[o..];
            if suffix.len() < self.apex_len {
                break;
            }
            let Some(owner) = self.names.get(suffix) else {
                continue;
            };
            if let Some(cut) = owner.cut {
                // A DS query at the cut itself is the parent's to answer.
                if !(o == 0 && qtype == RecordType::DS) {
                    return Class::Referral(cut);
                }
            }
            if closest.is_none() {
                closest = Some((o, owner));
            }
        }
        match closest {
            None => Class::NxDomain,
            Some((0, owner)) if answers(&owner.types, qtype) => Class::Answer,
            Some((0, _)) => Class::NoData,
            Some((_, owner)) => match &owner.wildcard {
                Some(types) if answers(types, qtype) => Class::Answer,
                Some(_) => Class::NoData,
                None => Class::NxDomain,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::Name;
    use hickory_proto::serialize::txt::Parser;

    const ZONE: &str = "$ORIGIN ex.\n$TTL 300\n\
        @ IN SOA ns1 host 1 3600 600 86400 300\n@ IN NS ns1\nns1 IN A 192.0.2.1\n\
        www IN CNAME ns1\na.b.c IN A 192.0.2.2\n*.wild IN A 192.0.2.3\n\
        x.wild IN TXT \"x\"\nsub IN NS ns.sub\nns.sub IN A 192.0.2.4\n";

    fn index() -> NameIndex {
        let (origin, records) = Parser::new(ZONE, None, None).parse().unwrap();
        let all: Vec<Record> = records
            .values()
            .flat_map(|s| s.records_without_rrsigs().cloned())
            .collect();
        let sub = LowerName::new(&Name::from_ascii("sub.ex.").unwrap());
        NameIndex::new(&LowerName::new(&origin), all.iter(), &[sub])
    }

    fn class(i: &NameIndex, name: &str, t: RecordType) -> Class {
        let n = LowerName::new(&Name::from_ascii(name).unwrap());
        i.classify(&wire(&n), t)
    }

    #[test]
    fn tells_answers_nodata_nxdomain_and_referrals_apart() {
        let i = index();
        use Class::*;
        use RecordType::*;
        assert_eq!(class(&i, "ns1.ex.", A), Answer);
        assert_eq!(class(&i, "NS1.EX.", A), Answer, "LowerName lower-cases");
        assert_eq!(class(&i, "ns1.ex.", AAAA), NoData);
        assert_eq!(class(&i, "ex.", SOA), Answer);
        assert_eq!(class(&i, "ex.", MX), NoData);
        assert_eq!(class(&i, "ex.", ANY), Answer);
        assert_eq!(class(&i, "www.ex.", MX), Answer, "a CNAME answers any type");
        assert_eq!(class(&i, "nope.ex.", A), NxDomain);
        assert_eq!(class(&i, "deep.nope.ex.", A), NxDomain);
        // Empty non-terminals exist (RFC 4592 2.2.2).
        assert_eq!(class(&i, "b.c.ex.", A), NoData);
        assert_eq!(class(&i, "c.ex.", A), NoData);
        assert_eq!(class(&i, "c.ex.", ANY), NoData);
        assert_eq!(class(&i, "z.b.c.ex.", A), NxDomain);
        // Wildcards answer for names that do not exist below their parent.
        assert_eq!(class(&i, "random.wild.ex.", A), Answer);
        assert_eq!(class(&i, "two.labels.wild.ex.", A), Answer);
        assert_eq!(class(&i, "random.wild.ex.", MX), NoData);
        // ... but not for a name that exists.
        assert_eq!(class(&i, "x.wild.ex.", A), NoData);
        assert_eq!(class(&i, "below.x.wild.ex.", A), NxDomain);
        // Delegations: referral at and below the cut, DS at the cut is ours.
        assert_eq!(class(&i, "sub.ex.", A), Referral(0));
        assert_eq!(class(&i, "www.sub.ex.", A), Referral(0));
        assert_eq!(class(&i, "ns.sub.ex.", A), Referral(0));
        assert_eq!(class(&i, "sub.ex.", DS), NoData);
        assert_eq!(class(&i, "www.sub.ex.", DS), Referral(0));
        // Malformed wire names classify as absent, never panic.
        assert_eq!(i.classify(&[], A), NxDomain);
        assert_eq!(i.classify(&[3, b'a'], A), NxDomain);
        assert_eq!(i.classify(&[64, 0], A), NxDomain);
        assert_eq!(i.classify(&[0, 0], A), NxDomain);
        // Owners and empty non-terminals: ex, ns1, www, c, b.c, a.b.c, wild,
        // *.wild, x.wild, sub, ns.sub.
        assert_eq!(i.len(), 11);
    }
}
