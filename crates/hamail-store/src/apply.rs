//! Applying commands to the tables. An [`Applier`] collects the writes of one
//! or more raft entries in an overlay (so a later command in the same batch
//! sees an earlier one's writes) and commits them, with the state-machine
//! metadata, as one RocksDB WriteBatch. Apply is deterministic — time comes
//! from the entry — and a command that does not fit the state is answered
//! with a rejection, never a panic.

use std::collections::{BTreeMap, BTreeSet};

use hamail_types::{
    CaMaterial, CaPhase, CaState, Command, DomainKind, DomainName, MailAddress, NodeId, NodeInfo,
    Outcome,
};
use rocksdb::WriteBatch;

use crate::db::CF_SM_META;
use crate::tables::{
    AliasRecord, DomainRecord, NEXT_NODE_ID_KEY, NodeRecord, RecipientRecord, Table, TokenRecord,
    TransportRecord, ZONE_HISTORY, ZONES_VERSION_KEY, ZoneChange, ZoneState, address_key,
    domain_key, domain_prefix, node_key,
};
use crate::{Result, Store, StoreError, decode, encode};
use hamail_types::zone;

/// The key of the CA rotation state in `Table::Cluster`.
pub(crate) const CA_KEY: &[u8] = b"ca";

/// What apply knows of the entry a command came in: never a clock of its own.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApplyContext {
    pub time_ms: u64,
    pub proposer: NodeId,
    pub log_index: u64,
}

pub struct Applier<'a> {
    store: &'a Store,
    overlay: BTreeMap<(Table, Vec<u8>), Option<Vec<u8>>>,
    meta: BTreeMap<String, Vec<u8>>,
}

impl<'a> Applier<'a> {
    pub fn new(store: &'a Store) -> Self {
        Applier {
            store,
            overlay: BTreeMap::new(),
            meta: BTreeMap::new(),
        }
    }

    pub(crate) fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>> {
        match self.overlay.get(&(table, key.to_vec())) {
            Some(v) => Ok(v.clone()),
            None => self.store.get(table, key),
        }
    }

    pub(crate) fn get_typed<T: serde::de::DeserializeOwned>(
        &self,
        table: Table,
        key: &[u8],
        what: &'static str,
    ) -> Result<Option<T>> {
        self.get(table, key)?.map(|v| decode(what, &v)).transpose()
    }

    pub(crate) fn put<T: serde::Serialize>(&mut self, table: Table, key: Vec<u8>, value: &T) {
        self.overlay.insert((table, key), Some(encode(value)));
    }

    /// Writes bytes as they are (message bodies).
    pub(crate) fn put_raw(&mut self, table: Table, key: Vec<u8>, value: Vec<u8>) {
        self.overlay.insert((table, key), Some(value));
    }

    pub(crate) fn delete(&mut self, table: Table, key: Vec<u8>) {
        self.overlay.insert((table, key), None);
    }

    /// Number of rows under `prefix`, counting this batch's writes.
    fn count_prefix(&self, table: Table, prefix: &[u8]) -> Result<usize> {
        Ok(self.keys_with_prefix(table, prefix)?.len())
    }

    /// Keys under `prefix`, counting this batch's writes, in key order.
    pub(crate) fn keys_with_prefix(&self, table: Table, prefix: &[u8]) -> Result<Vec<Vec<u8>>> {
        let mut keys = BTreeSet::new();
        self.store.scan_prefix(table, prefix, |k, _| {
            keys.insert(k.to_vec());
            Ok(())
        })?;
        for ((t, k), v) in self.overlay.range((table, prefix.to_vec())..) {
            if *t != table || !k.starts_with(prefix) {
                break;
            }
            if v.is_some() {
                keys.insert(k.clone());
            } else {
                keys.remove(k);
            }
        }
        Ok(keys.into_iter().collect())
    }

    /// Records a state-machine metadata value (last applied, membership) to be
    /// written in the same batch as the data.
    pub fn set_meta(&mut self, key: &str, value: Vec<u8>) {
        self.meta.insert(key.to_string(), value);
    }

    /// Writes everything collected as one WriteBatch. Not synced on its own:
    /// the raft log holds the entries, and the next log fsync (or a purge,
    /// which syncs first) makes this durable.
    pub fn commit(self) -> Result<()> {
        let mut batch = WriteBatch::default();
        for ((t, k), v) in &self.overlay {
            let cf = self.store.table_cf(*t);
            match v {
                Some(v) => batch.put_cf(cf, k, v),
                None => batch.delete_cf(cf, k),
            }
        }
        let meta_cf = self.store.cf(CF_SM_META);
        for (k, v) in &self.meta {
            batch.put_cf(meta_cf, k, v);
        }
        self.store
            .inner
            .db
            .write(batch)
            .map_err(|e| StoreError::io("apply", e))
    }

    /// Applies one command. `Err` only for a storage failure; a command that
    /// does not fit the state is an `Ok(Outcome::Rejected)` and changes nothing.
    pub fn apply(&mut self, cmd: &Command, ctx: &ApplyContext) -> Result<Outcome> {
        if let Err(e) = cmd.validate() {
            return Ok(Outcome::rejected(e.to_string()));
        }
        let time_ms = ctx.time_ms;
        match cmd {
            Command::DomainAdd { domain, kind } => self.domain_add(domain, *kind, time_ms),
            Command::DomainDel { domain } => self.domain_del(domain),
            Command::RecipientAdd { address, value } => {
                if let Some(reason) = self.recipient_domain_problem(address)? {
                    return Ok(Outcome::rejected(reason));
                }
                let existed = self
                    .get(Table::Recipients, &address_key(address))?
                    .is_some();
                self.put(
                    Table::Recipients,
                    address_key(address),
                    &RecipientRecord {
                        value: value.clone(),
                        added_ms: time_ms,
                    },
                );
                Ok(Outcome::applied(if existed {
                    format!("recipient {address} updated")
                } else {
                    format!("recipient {address} added")
                }))
            }
            Command::RecipientDel { address } => {
                let key = address_key(address);
                if self.get(Table::Recipients, &key)?.is_none() {
                    return Ok(Outcome::rejected(format!("no such recipient: {address}")));
                }
                self.delete(Table::Recipients, key);
                self.forget_quota(address)?;
                Ok(Outcome::applied(format!("recipient {address} deleted")))
            }
            Command::RecipientImport { entries } => self.recipient_import(entries, time_ms),
            Command::AliasAdd { address, targets } => self.alias_add(address, targets, time_ms),
            Command::AliasDel { address, targets } => self.alias_del(address, targets, time_ms),
            Command::TransportSet {
                domain,
                spec,
                fallback,
            } => {
                self.put(
                    Table::Transports,
                    domain_key(domain),
                    &TransportRecord {
                        spec: spec.clone(),
                        fallback: fallback.clone(),
                        updated_ms: time_ms,
                    },
                );
                Ok(Outcome::applied(format!(
                    "transport for {domain} set to {spec}"
                )))
            }
            Command::TransportDel { domain } => {
                if self.get(Table::Transports, &domain_key(domain))?.is_none() {
                    return Ok(Outcome::rejected(format!("no transport for {domain}")));
                }
                self.delete(Table::Transports, domain_key(domain));
                Ok(Outcome::applied(format!("transport for {domain} deleted")))
            }
            Command::TokenAdd { token_hash, ttl_ms } => {
                if self.get(Table::Tokens, token_hash.as_bytes())?.is_some() {
                    return Ok(Outcome::rejected("this join token exists already"));
                }
                self.put(
                    Table::Tokens,
                    token_hash.as_bytes().to_vec(),
                    &TokenRecord {
                        expires_ms: time_ms.saturating_add(*ttl_ms),
                        created_ms: time_ms,
                        used_by: None,
                    },
                );
                Ok(Outcome::applied("join token stored"))
            }
            Command::NodeAdmit {
                token_hash,
                info,
                key_sha256,
            } => self.node_admit(token_hash, info, key_sha256, time_ms),
            Command::NodeRegister {
                node_id,
                info,
                key_sha256,
            } => {
                if self.get(Table::Nodes, &node_key(*node_id))?.is_some() {
                    return Ok(Outcome::rejected(format!(
                        "node {node_id} is registered already"
                    )));
                }
                self.put_node(*node_id, info, key_sha256, time_ms)?;
                Ok(Outcome::applied(format!(
                    "node {node_id} ({}) registered",
                    info.name
                )))
            }
            Command::NodeRemove { node_id } => {
                let key = node_key(*node_id);
                let Some(mut rec) = self.get_typed::<NodeRecord>(Table::Nodes, &key, "node")?
                else {
                    return Ok(Outcome::rejected(format!("no such node: {node_id}")));
                };
                rec.removed = true;
                self.put(Table::Nodes, key, &rec);
                Ok(Outcome::applied(format!(
                    "node {node_id} ({}) removed",
                    rec.info.name
                )))
            }
            Command::CaRotate { old, new } => self.ca_rotate(old, new, time_ms),
            Command::CaSwitch { fingerprint } => self.ca_switch(fingerprint, time_ms),
            Command::CaRetire { fingerprint } => self.ca_retire(fingerprint, time_ms),
            Command::ZoneCreate { zone, records } => {
                if self.get(Table::Zones, zone.as_str().as_bytes())?.is_some() {
                    return Ok(Outcome::rejected(format!("zone {zone} exists already")));
                }
                if let Some(reason) = self.undelegated_child(zone)? {
                    return Ok(Outcome::rejected(reason));
                }
                self.zone_write(zone, None, records.clone(), ctx, "zone created".into())
            }
            Command::ZoneDelete { zone } => {
                if self.get(Table::Zones, zone.as_str().as_bytes())?.is_none() {
                    return Ok(Outcome::rejected(format!("no such zone: {zone}")));
                }
                if let Some(reason) = self.dkim_records_missing(zone, None)? {
                    return Ok(Outcome::rejected(reason));
                }
                self.delete(Table::Zones, zone.as_str().as_bytes().to_vec());
                self.put(Table::Zones, ZONES_VERSION_KEY.to_vec(), &ctx.log_index);
                Ok(Outcome::applied(format!("zone {zone} deleted")))
            }
            Command::ZoneReplace { zone, records } => {
                let Some(old) = self.zone_state(zone)? else {
                    return Ok(Outcome::rejected(format!(
                        "no such zone: {zone} (use `zone add --file`)"
                    )));
                };
                let n = records.len();
                self.zone_write(
                    zone,
                    Some(old),
                    records.clone(),
                    ctx,
                    format!("zone imported ({n} records)"),
                )
            }
            Command::RecordAdd { zone, record } => {
                let Some(old) = self.zone_state(zone)? else {
                    return Ok(Outcome::rejected(format!("no such zone: {zone}")));
                };
                if old.records.contains(record) {
                    return Ok(Outcome::rejected(format!("{record} exists already")));
                }
                let mut records = old.records.clone();
                records.push(record.clone());
                self.zone_write(zone, Some(old), records, ctx, format!("add {record}"))
            }
            Command::RecordSet { zone, record } => {
                let Some(old) = self.zone_state(zone)? else {
                    return Ok(Outcome::rejected(format!("no such zone: {zone}")));
                };
                let mut records: Vec<_> = old
                    .records
                    .iter()
                    .filter(|r| !(r.name == record.name && r.rtype == record.rtype))
                    .cloned()
                    .collect();
                records.push(record.clone());
                self.zone_write(zone, Some(old), records, ctx, format!("set {record}"))
            }
            Command::RecordDelete {
                zone,
                name,
                rtype,
                rdata,
            } => {
                let Some(old) = self.zone_state(zone)? else {
                    return Ok(Outcome::rejected(format!("no such zone: {zone}")));
                };
                let hit = |r: &hamail_types::ZoneRecord| {
                    r.name == *name
                        && rtype.as_ref().is_none_or(|t| *t == r.rtype)
                        && rdata.as_ref().is_none_or(|d| *d == r.rdata)
                        && r.rtype != "SOA"
                };
                let gone = old.records.iter().filter(|r| hit(r)).count();
                if gone == 0 {
                    return Ok(Outcome::rejected(format!("no matching record at {name}")));
                }
                let records: Vec<_> = old.records.iter().filter(|r| !hit(r)).cloned().collect();
                let what = format!(
                    "delete {name}{}{} ({gone} records)",
                    rtype.as_ref().map(|t| format!(" {t}")).unwrap_or_default(),
                    rdata.as_ref().map(|d| format!(" {d}")).unwrap_or_default()
                );
                self.zone_write(zone, Some(old), records, ctx, what)
            }
            Command::QueueInsert { message } => self.queue_insert(message, ctx),
            Command::QueueDelete { which } => self.queue_delete(which),
            Command::QueueHold { which, hold } => self.queue_hold(which, *hold),
            Command::QueueFlush { which } => self.queue_flush(which, time_ms),
            Command::QueueResult {
                queue_id,
                epoch,
                results,
                notice,
            } => self.queue_result(queue_id, *epoch, results, notice.as_deref(), ctx),
            Command::QueueReassign { from, to } => self.queue_reassign(*from, to),
            Command::UserAdd { address, hash } => self.user_add(address, hash, time_ms),
            Command::UserPasswd { address, hash } => self.user_passwd(address, hash, time_ms),
            Command::UserDel { address } => self.user_del(address),
            Command::UserImport { users } => self.user_import(users, time_ms),
            Command::UserRehash { address, old, new } => {
                self.user_rehash(address, old, new, time_ms)
            }
            Command::SenderAllow { sender, user } => self.sender_allow(sender, user, time_ms),
            Command::SenderDeny { sender, user } => self.sender_deny(sender, user),
            Command::QuotaSet { address, bytes } => self.quota_set(address, *bytes, time_ms),
            Command::QuotaDel { address } => self.quota_del(address),
            Command::DomainSet {
                domain,
                message_size_limit,
            } => self.domain_set(domain, *message_size_limit, time_ms),
            Command::ChecksReplace { kind, source } => self.checks_replace(*kind, source, time_ms),
            Command::DkimAdd { domain, keys } => self.dkim_add(domain, keys, ctx),
            Command::DkimDel {
                domain,
                selector,
                last,
            } => self.dkim_del(domain, selector, *last, ctx),
            other => Ok(Outcome::rejected(format!(
                "this node cannot apply {other:?}: upgrade it"
            ))),
        }
    }

    /// A zone below one we serve needs a delegation (NS at its name) in
    /// the parent, as a secondary name server would see it.
    fn undelegated_child(&self, zone: &DomainName) -> Result<Option<String>> {
        let mut parent = zone.as_str();
        while let Some((_, rest)) = parent.split_once('.') {
            parent = rest;
            let Ok(p) = DomainName::parse(parent) else {
                continue;
            };
            if let Some(state) = self.zone_state(&p)? {
                let delegated = state
                    .records
                    .iter()
                    .any(|r| r.name == zone.as_str() && r.rtype == "NS");
                return Ok((!delegated).then(|| {
                    format!(
                        "zone {zone} is inside zone {p}, which has no delegation (NS records for {zone}); add them to {p} first"
                    )
                }));
            }
        }
        Ok(None)
    }

    pub(crate) fn zone_state(&self, zone: &DomainName) -> Result<Option<ZoneState>> {
        self.get_typed(Table::Zones, zone.as_str().as_bytes(), "zone")
    }

    /// Writes a zone's new records with the next serial, after checking the
    /// zone as a whole; the answer names the new serial.
    pub(crate) fn zone_write(
        &mut self,
        zone: &DomainName,
        old: Option<ZoneState>,
        mut records: Vec<hamail_types::ZoneRecord>,
        ctx: &ApplyContext,
        change: String,
    ) -> Result<Outcome> {
        if let Err(e) = zone::check_zone(zone, &records) {
            return Ok(Outcome::rejected(e.to_string()));
        }
        if let Some(reason) = self.dkim_records_missing(zone, Some(records.as_slice()))? {
            return Ok(Outcome::rejected(reason));
        }
        let given = records
            .iter()
            .find(|r| r.rtype == "SOA")
            .and_then(|r| zone::soa_serial(&r.rdata));
        let (serial, mut history) = match old {
            Some(o) => (zone::next_serial(o.serial, given), o.history),
            None => (given.unwrap_or(1), Vec::new()),
        };
        for r in records.iter_mut().filter(|r| r.rtype == "SOA") {
            r.rdata = zone::with_soa_serial(&r.rdata, serial);
        }
        records.sort();
        records.dedup();
        history.push(ZoneChange {
            log_index: ctx.log_index,
            time_ms: ctx.time_ms,
            proposer: ctx.proposer,
            serial,
            change: change.clone(),
        });
        if history.len() > ZONE_HISTORY {
            let extra = history.len() - ZONE_HISTORY;
            history.drain(..extra);
        }
        self.put(
            Table::Zones,
            zone.as_str().as_bytes().to_vec(),
            &ZoneState {
                records,
                serial,
                history,
            },
        );
        self.put(Table::Zones, ZONES_VERSION_KEY.to_vec(), &ctx.log_index);
        Ok(Outcome::applied(format!(
            "zone {zone}: {change}; serial {serial}"
        )))
    }

    fn put_node(&mut self, id: NodeId, info: &NodeInfo, key_sha256: &str, t: u64) -> Result<()> {
        self.put(
            Table::Nodes,
            node_key(id),
            &NodeRecord {
                info: info.clone(),
                joined_ms: t,
                removed: false,
                key_sha256: key_sha256.to_string(),
            },
        );
        let next = self
            .get_typed::<u64>(Table::Nodes, NEXT_NODE_ID_KEY, "next node id")?
            .unwrap_or(1);
        self.put(Table::Nodes, NEXT_NODE_ID_KEY.to_vec(), &next.max(id + 1));
        Ok(())
    }

    fn node_admit(
        &mut self,
        token_hash: &str,
        info: &NodeInfo,
        key_sha256: &str,
        t: u64,
    ) -> Result<Outcome> {
        let Some(mut token) =
            self.get_typed::<TokenRecord>(Table::Tokens, token_hash.as_bytes(), "token")?
        else {
            return Ok(Outcome::rejected(
                "the join token is not valid for this cluster",
            ));
        };
        if let Some(by) = token.used_by {
            return Ok(Outcome::rejected(format!(
                "the join token was already used (by node {by})"
            )));
        }
        if token.expires_ms <= t {
            return Ok(Outcome::rejected(format!(
                "the join token expired {} s ago",
                (t - token.expires_ms) / 1000
            )));
        }
        // Through this batch's writes: a follower applies a `NodeRemove`
        // and the next `NodeAdmit` of the same name in one batch, the
        // leader in two; both must see the removal (else the follower
        // rejects the admission, and its next node id falls behind).
        let mut live_names = Vec::new();
        let mut highest = 0u64;
        for k in self.keys_with_prefix(Table::Nodes, b"")? {
            if let Ok(id) = <[u8; 8]>::try_from(k.as_slice()) {
                highest = highest.max(u64::from_be_bytes(id));
            }
            if k.len() == 8
                && let Some(rec) = self.get_typed::<NodeRecord>(Table::Nodes, &k, "node")?
                && !rec.removed
            {
                live_names.push(rec.info.name);
            }
        }
        if live_names.contains(&info.name) {
            return Ok(Outcome::rejected(format!(
                "a node named {} is already in the cluster; give the new node another [node] name",
                info.name
            )));
        }
        // Never an id a node holds or held, even on a store whose counter
        // fell behind (see the name check above).
        let id = self
            .get_typed::<u64>(Table::Nodes, NEXT_NODE_ID_KEY, "next node id")?
            .unwrap_or(1)
            .max(highest + 1);
        self.put_node(id, info, key_sha256, t)?;
        token.used_by = Some(id);
        self.put(Table::Tokens, token_hash.as_bytes().to_vec(), &token);
        Ok(Outcome::Admitted { node_id: id })
    }

    fn ca_state(&self) -> Result<Option<CaState>> {
        self.get_typed::<CaState>(Table::Cluster, CA_KEY, "CA state")
    }

    fn ca_rotate(&mut self, old: &CaMaterial, new: &CaMaterial, t: u64) -> Result<Outcome> {
        if let Some(s) = self.ca_state()? {
            if s.phase != CaPhase::Done {
                return Ok(Outcome::rejected(format!(
                    "a CA rotation is under way (phase {}); `hamail cluster rotate-ca` continues it",
                    s.phase
                )));
            }
            if s.signing != old.fingerprint {
                return Ok(Outcome::rejected(format!(
                    "the cluster's CA is {}, not {}: the CA changed meanwhile",
                    s.signing, old.fingerprint
                )));
            }
        }
        let state = CaState {
            trusted: vec![old.clone(), new.clone()],
            signing: old.fingerprint.clone(),
            phase: CaPhase::Trust,
            changed_ms: t,
        };
        self.put(Table::Cluster, CA_KEY.to_vec(), &state);
        Ok(Outcome::applied(format!(
            "CA rotation begun: CA {} trusted beside {}",
            new.fingerprint, old.fingerprint
        )))
    }

    fn ca_switch(&mut self, fingerprint: &str, t: u64) -> Result<Outcome> {
        let Some(mut s) = self.ca_state()? else {
            return Ok(Outcome::rejected("no CA rotation is under way"));
        };
        if s.phase != CaPhase::Trust {
            return Ok(Outcome::rejected(format!(
                "the CA rotation is in phase {}, not trust",
                s.phase
            )));
        }
        if s.signing == fingerprint || !s.trusted.iter().any(|c| c.fingerprint == fingerprint) {
            return Ok(Outcome::rejected(format!(
                "CA {fingerprint} is not the CA being rotated in"
            )));
        }
        s.signing = fingerprint.to_string();
        s.phase = CaPhase::Switch;
        s.changed_ms = t;
        self.put(Table::Cluster, CA_KEY.to_vec(), &s);
        Ok(Outcome::applied(format!("CA {fingerprint} signs")))
    }

    fn ca_retire(&mut self, fingerprint: &str, t: u64) -> Result<Outcome> {
        let Some(mut s) = self.ca_state()? else {
            return Ok(Outcome::rejected("no CA rotation is under way"));
        };
        if s.phase != CaPhase::Switch {
            return Ok(Outcome::rejected(format!(
                "the CA rotation is in phase {}, not switch",
                s.phase
            )));
        }
        if s.signing == fingerprint || !s.trusted.iter().any(|c| c.fingerprint == fingerprint) {
            return Ok(Outcome::rejected(format!(
                "CA {fingerprint} is not the CA being retired"
            )));
        }
        s.trusted.retain(|c| c.fingerprint != fingerprint);
        s.phase = CaPhase::Done;
        s.changed_ms = t;
        self.put(Table::Cluster, CA_KEY.to_vec(), &s);
        Ok(Outcome::applied(format!("CA {fingerprint} retired")))
    }

    fn domain_add(&mut self, domain: &DomainName, kind: DomainKind, t: u64) -> Result<Outcome> {
        if let Some(existing) =
            self.get_typed::<DomainRecord>(Table::Domains, &domain_key(domain), "domain")?
        {
            return Ok(if existing.kind == kind {
                Outcome::applied(format!(
                    "domain {domain} already exists ({kind}), unchanged"
                ))
            } else {
                Outcome::rejected(format!(
                    "domain {domain} already exists with kind {}; delete it first to make it {kind}",
                    existing.kind
                ))
            });
        }
        if kind == DomainKind::Virtual {
            let n = self.count_prefix(Table::Recipients, &domain_prefix(domain))?;
            if n > 0 {
                return Ok(Outcome::rejected(format!(
                    "domain {domain} cannot be virtual: it has {n} recipients"
                )));
            }
        }
        self.put(
            Table::Domains,
            domain_key(domain),
            &DomainRecord { kind, added_ms: t },
        );
        Ok(Outcome::applied(format!("domain {domain} added ({kind})")))
    }

    fn domain_del(&mut self, domain: &DomainName) -> Result<Outcome> {
        if self.get(Table::Domains, &domain_key(domain))?.is_none() {
            return Ok(Outcome::rejected(format!("no such domain: {domain}")));
        }
        let recipients = self.count_prefix(Table::Recipients, &domain_prefix(domain))?;
        let aliases = self.count_prefix(Table::Aliases, &domain_prefix(domain))?;
        let users = self.count_users(domain)?;
        let dkim = self.dkim_key_count(domain)?;
        if dkim > 0 {
            return Ok(Outcome::rejected(format!(
                "domain {domain} still has {dkim} DKIM keys; delete them first (hamail dkim del)"
            )));
        }
        if recipients + aliases + users > 0 {
            return Ok(Outcome::rejected(format!(
                "domain {domain} still has {recipients} recipients, {aliases} aliases and {users} users; delete them first"
            )));
        }
        self.delete(Table::Domains, domain_key(domain));
        self.forget_domain_settings(domain)?;
        Ok(Outcome::applied(format!("domain {domain} deleted")))
    }

    /// Why `address` cannot be a recipient, if it cannot.
    fn recipient_domain_problem(&self, address: &MailAddress) -> Result<Option<String>> {
        let domain = address.domain();
        Ok(
            match self.get_typed::<DomainRecord>(Table::Domains, &domain_key(domain), "domain")? {
                None => Some(format!(
                    "{address}: domain {domain} is not a hamail domain (add it with `hamail domain add {domain}`)"
                )),
                Some(d) if d.kind == DomainKind::Virtual => Some(format!(
                    "{address}: domain {domain} is virtual (aliases only); use `hamail alias add`"
                )),
                Some(_) => None,
            },
        )
    }

    fn recipient_import(&mut self, entries: &[(MailAddress, String)], t: u64) -> Result<Outcome> {
        // All or nothing: check every domain first, then write.
        let mut checked: BTreeMap<&DomainName, Option<String>> = BTreeMap::new();
        for (address, _) in entries {
            let problem = match checked.get(address.domain()) {
                Some(p) => p.clone(),
                None => {
                    let p = self.recipient_domain_problem(address)?;
                    checked.insert(address.domain(), p.clone());
                    p
                }
            };
            if let Some(reason) = problem {
                return Ok(Outcome::rejected(format!(
                    "import refused, nothing imported: {reason}"
                )));
            }
        }
        let mut new = 0usize;
        for (address, value) in entries {
            let key = address_key(address);
            if self.get(Table::Recipients, &key)?.is_none() {
                new += 1;
            }
            self.put(
                Table::Recipients,
                key,
                &RecipientRecord {
                    value: value.clone(),
                    added_ms: t,
                },
            );
        }
        Ok(Outcome::applied(format!(
            "imported {} recipients ({new} new)",
            entries.len()
        )))
    }

    fn alias_add(
        &mut self,
        address: &MailAddress,
        targets: &[MailAddress],
        t: u64,
    ) -> Result<Outcome> {
        let domain = address.domain();
        if self.get(Table::Domains, &domain_key(domain))?.is_none() {
            return Ok(Outcome::rejected(format!(
                "{address}: domain {domain} is not a hamail domain (add it with `hamail domain add {domain}`)"
            )));
        }
        let key = address_key(address);
        let mut record = self
            .get_typed::<AliasRecord>(Table::Aliases, &key, "alias")?
            .unwrap_or(AliasRecord {
                targets: Vec::new(),
                updated_ms: t,
            });
        for target in targets {
            if !record.targets.contains(target) {
                record.targets.push(target.clone());
            }
        }
        if record.targets.len() > hamail_types::command::MAX_ALIAS_TARGETS {
            return Ok(Outcome::rejected(format!(
                "alias {address} would have more than {} targets",
                hamail_types::command::MAX_ALIAS_TARGETS
            )));
        }
        record.updated_ms = t;
        let n = record.targets.len();
        self.put(Table::Aliases, key, &record);
        Ok(Outcome::applied(format!(
            "alias {address} now has {n} targets"
        )))
    }

    fn alias_del(
        &mut self,
        address: &MailAddress,
        targets: &[MailAddress],
        t: u64,
    ) -> Result<Outcome> {
        let key = address_key(address);
        let Some(mut record) = self.get_typed::<AliasRecord>(Table::Aliases, &key, "alias")? else {
            return Ok(Outcome::rejected(format!("no such alias: {address}")));
        };
        if targets.is_empty() {
            self.delete(Table::Aliases, key);
            return Ok(Outcome::applied(format!("alias {address} deleted")));
        }
        if let Some(missing) = targets.iter().find(|t| !record.targets.contains(t)) {
            return Ok(Outcome::rejected(format!(
                "alias {address} has no target {missing}"
            )));
        }
        record.targets.retain(|x| !targets.contains(x));
        if record.targets.is_empty() {
            self.delete(Table::Aliases, key);
            return Ok(Outcome::applied(format!(
                "alias {address} deleted (no targets left)"
            )));
        }
        record.updated_ms = t;
        let n = record.targets.len();
        self.put(Table::Aliases, key, &record);
        Ok(Outcome::applied(format!(
            "alias {address} now has {n} targets"
        )))
    }
}
