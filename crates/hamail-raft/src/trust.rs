//! Who a member trusts and how it proves itself, as it changes at run time:
//! the pinned keys of the members (`Pins`), and the node's TLS material
//! (`PeerTls`), swapped in place when the replicated CA state moves a
//! `cluster rotate-ca` forward — listeners and dialers pick up the new
//! configuration at their next handshake, no connection is dropped.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use arc_swap::ArcSwap;
use hamail_store::{NodeRecord, Store, Table, decode};
use hamail_types::NodeId;
use rustls::{ClientConfig, ServerConfig};
use serde::{Deserialize, Serialize};

use crate::pki::{Pki, PkiError};

/// The pinned certificate keys of the members: the replicated `nodes`
/// table, or, on a node that joined and has not applied it yet, what the
/// member that admitted it sent.
#[derive(Clone)]
pub(crate) struct Pins {
    store: Store,
    seeds: Arc<RwLock<BTreeMap<NodeId, String>>>,
}

impl Pins {
    pub(crate) fn new(store: Store, seeds: Arc<RwLock<BTreeMap<NodeId, String>>>) -> Pins {
        Pins { store, seeds }
    }

    /// The key pinned for `id`, if known.
    pub(crate) fn pinned(&self, id: NodeId) -> Option<String> {
        let stored = self
            .store
            .get(Table::Nodes, &id.to_be_bytes())
            .ok()
            .flatten()
            .and_then(|v| decode::<NodeRecord>("node", &v).ok())
            .filter(|r| !r.key_sha256.is_empty())
            .map(|r| r.key_sha256);
        stored.or_else(|| self.seeds.read().ok()?.get(&id).cloned())
    }

    /// Whether `key_sha256` is the key pinned for `id`.
    pub(crate) fn check(&self, id: NodeId, key_sha256: &str) -> Result<(), String> {
        match self.pinned(id) {
            Some(pin) if pin == key_sha256 => Ok(()),
            Some(_) => Err(format!(
                "the certificate for node {id} does not carry the key pinned for node {id} \
                 (a certificate minted for another node's id?)"
            )),
            None => Err(format!(
                "no key is pinned for node {id} on this node yet; retry once it applied the log"
            )),
        }
    }
}

/// Which CAs a node trusts and which one signed the certificate it
/// presents (fingerprints): what `cluster rotate-ca` waits on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaView {
    pub trusted: Vec<String>,
    pub presenting: String,
}

struct Material {
    pki: Pki,
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

impl Material {
    fn build(pki: Pki) -> Result<Material, PkiError> {
        Ok(Material {
            server: pki.server_config()?,
            client: pki.client_config()?,
            pki,
        })
    }
}

/// A member's TLS identity and trust, replaceable while it serves.
pub struct PeerTls {
    current: ArcSwap<Material>,
    /// Counts the swaps of `current`.
    generation: std::sync::atomic::AtomicU64,
    pub(crate) pins: Pins,
    /// Serialises `reconcile` (files and swap in one order).
    update: std::sync::Mutex<()>,
}

impl PeerTls {
    pub(crate) fn new(pki: Pki, pins: Pins) -> Result<Arc<PeerTls>, PkiError> {
        Ok(Arc::new(PeerTls {
            current: ArcSwap::from_pointee(Material::build(pki)?),
            generation: std::sync::atomic::AtomicU64::new(0),
            pins,
            update: std::sync::Mutex::new(()),
        }))
    }

    pub fn pki(&self) -> Pki {
        self.current.load().pki.clone()
    }

    /// Changes whenever the material is replaced.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    pub(crate) fn server_config(&self) -> Arc<ServerConfig> {
        self.current.load().server.clone()
    }

    pub(crate) fn client_config(&self) -> Arc<ClientConfig> {
        self.current.load().client.clone()
    }

    pub fn view(&self) -> CaView {
        let m = self.current.load();
        CaView {
            trusted: m.pki.trusted_fingerprints(),
            presenting: m.pki.presenting_fingerprint().unwrap_or_default(),
        }
    }

    /// Brings the node's PKI to what the replicated CA state says (files
    /// first, then the live configuration). Returns whether it changed.
    pub(crate) fn reconcile(&self, store: &Store) -> Result<bool, PkiError> {
        let Some(state) = store
            .ca_state()
            .map_err(|e| PkiError::Cert(format!("cannot read the CA state: {e}")))?
        else {
            return Ok(false);
        };
        let _g = self.update.lock().unwrap_or_else(|p| p.into_inner());
        let Some(next) = self.pki().for_ca_state(&state)? else {
            return Ok(false);
        };
        next.save()?;
        let material = Material::build(next)?;
        let view = (
            material.pki.trusted_fingerprints(),
            material.pki.presenting_fingerprint(),
        );
        self.current.store(Arc::new(material));
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        tracing::info!(
            phase = %state.phase,
            trusted = ?view.0,
            presenting = ?view.1,
            "cluster CA material updated"
        );
        Ok(true)
    }
}

/// Follows the applied log and reconciles the node's PKI whenever the CA
/// state may have changed, until `cancel`.
pub(crate) async fn follow_ca_state(
    tls: Arc<PeerTls>,
    store: Store,
    raft: crate::HamailRaft,
    cancel: tokio_util::sync::CancellationToken,
) {
    let mut rx = raft.metrics();
    let mut last_seen: Option<hamail_types::CaState> = None;
    loop {
        let state = store.ca_state().ok().flatten();
        if state.is_some() && state != last_seen {
            match tls.reconcile(&store) {
                Ok(_) => last_seen = state,
                Err(e) => tracing::error!(error = %e, "cannot take the cluster's CA state"),
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            r = rx.changed() => if r.is_err() { return },
        }
    }
}
