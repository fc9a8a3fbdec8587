//! The smtpd's DKIM signers: loaded from this node's applied dkim table
//! once per table version (the store's `dkim_version`, one small read per
//! message), never per message. A key that does not load here is logged
//! once for its version and left out; the domain's other keys still sign.

use std::sync::Arc;

use hamail_dkim::{Signers, SigningKeyRow};
use hamail_smtp::BackendError;
use hamail_store::Store;

use crate::versioned::Versioned;

type Loaded = Option<Arc<Signers>>;

#[derive(Default)]
pub struct DkimCache {
    current: Versioned<Loaded>,
}

impl DkimCache {
    pub fn get(&self, store: &Store) -> Result<Loaded, BackendError> {
        let version = store
            .dkim_version()
            .map_err(|e| BackendError::Read(e.to_string()))?;
        // A table that cannot be read is not kept: the next message tries again.
        self.current.get(version, || {
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
            Ok((!signers.is_empty()).then(|| Arc::new(signers)))
        })
    }
}
