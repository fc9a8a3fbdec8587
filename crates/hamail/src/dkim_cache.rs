//! The smtpd's DKIM signers: loaded from this node's applied dkim table
//! once per table version (the store's `dkim_version`, one small read per
//! message), never per message. A key that does not load here is logged
//! once for its version and left out; the domain's other keys still sign.

use std::sync::{Arc, Mutex};

use hamail_dkim::{Signers, SigningKeyRow};
use hamail_smtp::BackendError;
use hamail_store::Store;

type Loaded = Option<Arc<Signers>>;

#[derive(Default)]
pub struct DkimCache {
    current: Mutex<Option<(u64, Loaded)>>,
}

impl DkimCache {
    pub fn get(&self, store: &Store) -> Result<Loaded, BackendError> {
        let version = store
            .dkim_version()
            .map_err(|e| BackendError::Read(e.to_string()))?;
        let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((v, loaded)) = cur.as_ref()
            && *v == version
        {
            return Ok(loaded.clone());
        }
        let started = std::time::Instant::now();
        let entries = store
            .dkim_keys()
            .map_err(|e| BackendError::Read(e.to_string()))?;
        let (signers, errors) = Signers::load(entries.iter().map(|e| SigningKeyRow {
            domain: &e.domain,
            selector: &e.selector,
            algorithm: e.record.algorithm,
            private_key: &e.record.private_key,
        }));
        for e in &errors {
            tracing::error!(version, "{e}");
        }
        tracing::info!(
            version,
            keys = signers.keys(),
            load_ms = started.elapsed().as_secs_f64() * 1000.0,
            "DKIM keys loaded"
        );
        let loaded = (!signers.is_empty()).then(|| Arc::new(signers));
        *cur = Some((version, loaded.clone()));
        Ok(loaded)
    }
}
