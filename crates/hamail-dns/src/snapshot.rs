//! What queries are answered from (NSD's namedb.c), built from the store's
//! zones when the applied log moves and swapped in whole (`ArcSwap`): a
//! query loads the current snapshot without a lock and never waits on raft
//! or RocksDB. Per zone: hickory's in-memory zone (positive answers), and
//! what we compile ourselves — the index of its names (NXDOMAIN / NODATA /
//! referral without a scan), the negative SOA, its delegation points with
//! glue, and its records for zone transfers.
//!
//! A zone that does not build keeps its previous version; a store that
//! cannot be read keeps the whole previous snapshot (`follow` retries).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use hamail_store::{Store, ZoneState};
use hamail_types::DomainName;
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordSet, RecordType, RrKey};
use hickory_proto::serialize::txt::Parser;
use hickory_server::net::runtime::TokioRuntimeProvider;
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneHandler, ZoneType};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::names::{Class, NameIndex, wire};
use crate::negative::NegativeSoa;

/// The zones served, as one immutable value swapped in whole.
pub(crate) struct Served {
    pub(crate) catalog: Catalog,
    /// By apex (zone transfers).
    pub(crate) zones: BTreeMap<LowerName, Arc<ZoneData>>,
    /// By the apex's lower-cased wire form (classification from packets).
    by_wire: HashMap<Box<[u8]>, Arc<ZoneData>>,
    /// Each zone's serial, by zone name (NOTIFY when it moves).
    pub(crate) serials: BTreeMap<String, u32>,
}

pub(crate) struct ZoneData {
    /// The SOA as the zone file has it (its own TTL).
    pub(crate) soa: Record,
    /// Every other record, in name order.
    pub(crate) records: Vec<Record>,
    /// Delegation points (NS below the apex).
    pub(crate) cuts: Vec<Cut>,
    pub(crate) names: NameIndex,
    pub(crate) negative: NegativeSoa,
    handler: Arc<dyn ZoneHandler>,
    /// The stored records this was built from (a zone whose records did
    /// not change is not built again).
    source: Vec<hamail_types::ZoneRecord>,
    serial: u32,
}

pub(crate) struct Cut {
    pub(crate) ns: Vec<Record>,
    /// A/AAAA of the NS targets that the zone holds.
    pub(crate) glue: Vec<Record>,
}

impl Served {
    pub(crate) fn empty() -> Self {
        Served {
            catalog: Catalog::new(),
            zones: BTreeMap::new(),
            by_wire: HashMap::new(),
            serials: BTreeMap::new(),
        }
    }

    /// Builds the snapshot for `zones` as read from the store, reusing the
    /// zones of `previous` whose records did not change, and keeping the
    /// previous version of a zone that does not build.
    pub(crate) fn build(zones: Vec<(DomainName, ZoneState)>, previous: &Served) -> Self {
        let mut next = Served::empty();
        for (zone, state) in zones {
            let apex = Name::from_ascii(format!("{zone}.")).map(|n| LowerName::new(&n));
            let old = apex.as_ref().ok().and_then(|a| previous.zones.get(a));
            let data = match old {
                Some(old) if old.source == state.records && old.serial == state.serial => {
                    Ok(old.clone())
                }
                _ => zone_data(&zone, &state).map(Arc::new),
            };
            let data = match (data, old) {
                (Ok(d), _) => d,
                (Err(e), Some(old)) => {
                    tracing::error!(%zone, error = %e, serial = old.serial, "dns: zone does not build; the previous version stays served");
                    old.clone()
                }
                (Err(e), None) => {
                    tracing::error!(%zone, error = %e, "dns: zone not served");
                    continue;
                }
            };
            let apex = LowerName::new(&data.soa.name);
            next.catalog
                .upsert(apex.clone(), vec![data.handler.clone()]);
            next.by_wire.insert(wire(&apex).into(), data.clone());
            next.serials.insert(zone.to_string(), data.serial);
            next.zones.insert(apex, data);
        }
        next
    }

    /// The deepest zone holding a name (lower-cased wire form), with the
    /// offset of the zone's apex inside the name.
    pub(crate) fn zone_of(&self, name: &[u8]) -> Option<(usize, &ZoneData)> {
        let mut o = 0usize;
        loop {
            let suffix = name.get(o..)?;
            if let Some(z) = self.by_wire.get(suffix) {
                return Some((o, z));
            }
            let len = *suffix.first()? as usize;
            if len == 0 || len > 63 {
                return None;
            }
            o = o.checked_add(len + 1)?;
        }
    }

    /// The zone of a query and what it gets (None: not ours).
    pub(crate) fn classify(
        &self,
        name: &[u8],
        qtype: RecordType,
    ) -> Option<(usize, &ZoneData, Class)> {
        let (o, z) = self.zone_of(name)?;
        Some((o, z, z.names.classify(name, qtype)))
    }
}

/// How soon a rebuild that could not read the store is tried again.
const REBUILD_RETRY: Duration = Duration::from_secs(1);

/// Keeps `served` following the store until `cancel`: whenever `changes`
/// moves and a zone changed, builds the next snapshot and swaps it in, bumps
/// `generation` (the UDP workers drop their cached answers) and NOTIFYs
/// `notify` of the zones whose serial moved.
pub(crate) async fn follow(
    store: Store,
    served: Arc<ArcSwap<Served>>,
    generation: Arc<AtomicU64>,
    mut changes: watch::Receiver<u64>,
    notify: Vec<SocketAddr>,
    cancel: CancellationToken,
) {
    // Nothing is served until `changes` first moves: the node sends it
    // only once its applied state is a full member's (a rebuilt node's
    // partial copy would answer older serials than the site did before).
    // Like BIND at start, the first build NOTIFYs every zone.
    let mut version = None;
    let mut built = false;
    // A store read failed: the previous snapshot stays, try again soon.
    let mut retry = false;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(REBUILD_RETRY), if retry => {}
            r = changes.changed() => {
                if r.is_err() {
                    cancel.cancelled().await;
                    break;
                }
            }
        }
        // Most writes are not zone edits: rebuild only when a zone
        // changed (a snapshot install moves this too).
        let now = store.zones_version();
        if built && !retry && now.as_ref().ok() == Some(&version) {
            continue;
        }
        let reader = store.clone();
        let target = served.clone();
        let Ok(swapped) = tokio::task::spawn_blocking(move || {
            refresh(&target, || reader.zones().map_err(|e| e.to_string()))
        })
        .await
        else {
            retry = true;
            continue;
        };
        let Some(previous) = swapped else {
            retry = true;
            continue;
        };
        retry = false;
        built = true;
        version = now.ok().flatten();
        // Workers drop their cached answers.
        generation.fetch_add(1, Ordering::AcqRel);
        crate::notify::announce(&previous.serials, &served.load().serials, &notify);
    }
}

/// Builds the next snapshot from what `read` returns and swaps it in;
/// returns the one it replaced. When the zones cannot be read, nothing is
/// swapped (None): the previous snapshot keeps answering, rather than an
/// empty one that would REFUSE every query.
pub(crate) fn refresh<E: std::fmt::Display>(
    served: &ArcSwap<Served>,
    read: impl FnOnce() -> Result<Vec<(DomainName, ZoneState)>, E>,
) -> Option<Arc<Served>> {
    match read() {
        Ok(zones) => {
            let previous = served.load_full();
            Some(served.swap(Arc::new(Served::build(zones, &previous))))
        }
        Err(e) => {
            tracing::error!(error = %e, "dns: cannot read the zones; the previous ones stay served");
            None
        }
    }
}

/// Builds one zone from its stored records.
fn zone_data(zone: &DomainName, state: &ZoneState) -> Result<ZoneData, String> {
    let text = crate::zone_file_text(zone, &state.records);
    let (origin, mut records) = Parser::new(text, None, None)
        .parse()
        .map_err(|e| e.to_string())?;
    let (soa, rest, cuts, cut_names) = split(&origin, &mut records).ok_or("no SOA record")?;
    let negative = NegativeSoa::new(
        records
            .get(&RrKey::new(LowerName::new(&origin), RecordType::SOA))
            .and_then(|s| s.records_without_rrsigs().next().cloned())
            .ok_or("no SOA record")?,
    )
    .ok_or("the SOA cannot be encoded")?;
    let names = NameIndex::new(
        &LowerName::new(&origin),
        rest.iter().chain([&soa]),
        &cut_names,
    );
    let handler = InMemoryZoneHandler::<TokioRuntimeProvider>::new(
        origin,
        records,
        ZoneType::Primary,
        AxfrPolicy::AllowAll,
    )?;
    Ok(ZoneData {
        soa,
        records: rest,
        cuts,
        names,
        negative,
        handler: Arc::new(handler),
        source: state.records.clone(),
        serial: state.serial,
    })
}

/// The zone's SOA and other records, its delegation points (with their
/// names, in the same order); lowers the served SOA's TTL to its MINIMUM so
/// negative answers carry the negative TTL of RFC 2308.
#[allow(clippy::type_complexity)]
fn split(
    origin: &Name,
    records: &mut BTreeMap<RrKey, RecordSet>,
) -> Option<(Record, Vec<Record>, Vec<Cut>, Vec<LowerName>)> {
    let apex = LowerName::new(origin);
    let mut soa = None;
    let mut rest = Vec::new();
    for set in records.values() {
        for r in set.records_without_rrsigs() {
            if r.record_type() == RecordType::SOA {
                soa = Some(r.clone());
            } else {
                rest.push(r.clone());
            }
        }
    }
    let soa = soa?;
    if let RData::SOA(s) = &soa.data {
        let negative = soa.ttl.min(s.minimum);
        for set in records.values_mut() {
            if set.record_type() == RecordType::SOA {
                set.set_ttl(negative);
            }
        }
    }
    let mut names: Vec<LowerName> = Vec::new();
    let mut cuts: Vec<Cut> = Vec::new();
    for r in rest.iter().filter(|r| r.record_type() == RecordType::NS) {
        let name = LowerName::new(&r.name);
        if name == apex {
            continue;
        }
        match names.iter().position(|c| *c == name) {
            Some(i) => cuts[i].ns.push(r.clone()),
            None => {
                names.push(name);
                cuts.push(Cut {
                    ns: vec![r.clone()],
                    glue: Vec::new(),
                });
            }
        }
    }
    // Glue: A/AAAA records named by a cut's NS targets.
    let mut addresses: HashMap<LowerName, Vec<&Record>> = HashMap::new();
    for r in rest
        .iter()
        .filter(|r| matches!(r.record_type(), RecordType::A | RecordType::AAAA))
    {
        addresses
            .entry(LowerName::new(&r.name))
            .or_default()
            .push(r);
    }
    for c in &mut cuts {
        for ns in &c.ns {
            if let RData::NS(target) = &ns.data
                && let Some(a) = addresses.get(&LowerName::new(&target.0))
            {
                for r in a {
                    if !c.glue.contains(r) {
                        c.glue.push((*r).clone());
                    }
                }
            }
        }
    }
    Some((soa, rest, cuts, names))
}
