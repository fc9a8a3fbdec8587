//! The smtpd's compiled header and body checks: compiled from this node's
//! applied tables once per table version (the store's `checks_version`,
//! one small read per message), never per message. A table that does not
//! compile here (it was validated where it was imported, so only a regex
//! that differs between versions could do it) is an error each message
//! sees, remembered for its version: mail is deferred, never let through
//! unchecked.

use std::sync::Arc;

use hamail_checks::Checks;
use hamail_smtp::BackendError;
use hamail_store::Store;
use hamail_types::CheckKind;

use crate::versioned::Versioned;

type Compiled = Result<Option<Arc<Checks>>, BackendError>;

#[derive(Default)]
pub struct ChecksCache {
    current: Versioned<Compiled>,
}

impl ChecksCache {
    pub fn get(&self, store: &Store) -> Compiled {
        let version = store
            .checks_version()
            .map_err(|e| BackendError::Read(e.to_string()))?;
        // A table that does not compile is kept as such for its version.
        let built: Result<Compiled, std::convert::Infallible> = self.current.get(version, || {
            let started = std::time::Instant::now();
            let compiled = compile(store);
            match &compiled {
                Ok(c) => tracing::info!(
                    version,
                    header_rules = c
                        .as_ref()
                        .and_then(|c| c.header.as_ref())
                        .map_or(0, |t| t.rules()),
                    body_rules = c
                        .as_ref()
                        .and_then(|c| c.body.as_ref())
                        .map_or(0, |t| t.rules()),
                    compile_ms = started.elapsed().as_secs_f64() * 1000.0,
                    "header/body checks compiled"
                ),
                Err(e) => tracing::error!(version, "header/body checks do not compile here: {e}"),
            }
            Ok(compiled)
        });
        let Ok(compiled) = built;
        compiled
    }
}

fn compile(store: &Store) -> Compiled {
    let mut checks = Checks::default();
    for kind in CheckKind::ALL {
        let Some(rec) = store
            .checks(kind)
            .map_err(|e| BackendError::Read(e.to_string()))?
        else {
            continue;
        };
        let table = hamail_checks::parse(kind, &rec.source)
            .map_err(|e| BackendError::Read(format!("{kind}_checks {e}")))?;
        match kind {
            CheckKind::Header => checks.header = Some(table),
            CheckKind::Body => checks.body = Some(table),
        }
    }
    Ok((!checks.is_empty()).then(|| Arc::new(checks)))
}
