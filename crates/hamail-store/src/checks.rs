//! The checks table: the header_checks and body_checks sources as imported
//! (`checks import`), and a version counter every change bumps, so a reader
//! (the smtpd) knows with one small read whether to compile them again.

use hamail_types::{CheckKind, Outcome};

use crate::apply::Applier;
use crate::tables::{ChecksRecord, Table};
use crate::{Result, Store, decode};

/// The key of the version counter (table keys are `header` and `body`).
const VERSION_KEY: &[u8] = b"version";

fn key(kind: CheckKind) -> &'static [u8] {
    kind.as_str().as_bytes()
}

impl Applier<'_> {
    /// Replaces a table (the source was parsed by `Command::validate`);
    /// an empty source removes it.
    pub(crate) fn checks_replace(
        &mut self,
        kind: CheckKind,
        source: &str,
        t: u64,
    ) -> Result<Outcome> {
        let version = self
            .get_typed::<u64>(Table::Checks, VERSION_KEY, "checks version")?
            .unwrap_or(0);
        let detail = if source.trim().is_empty() {
            if self.get(Table::Checks, key(kind))?.is_none() {
                return Ok(Outcome::applied(format!(
                    "no {kind}_checks table, unchanged"
                )));
            }
            self.delete(Table::Checks, key(kind).to_vec());
            format!("{kind}_checks table cleared")
        } else {
            self.put(
                Table::Checks,
                key(kind).to_vec(),
                &ChecksRecord {
                    source: source.to_string(),
                    changed_ms: t,
                },
            );
            format!("{kind}_checks table replaced ({} bytes)", source.len())
        };
        self.put(Table::Checks, VERSION_KEY.to_vec(), &(version + 1));
        Ok(Outcome::applied(detail))
    }
}

impl Store {
    /// A table as imported, if there is one.
    pub fn checks(&self, kind: CheckKind) -> Result<Option<ChecksRecord>> {
        self.get(Table::Checks, key(kind))?
            .map(|v| decode("checks", &v))
            .transpose()
    }

    /// Moves with every change to either table (0: never changed).
    pub fn checks_version(&self) -> Result<u64> {
        Ok(self
            .get(Table::Checks, VERSION_KEY)?
            .map(|v| decode::<u64>("checks version", &v))
            .transpose()?
            .unwrap_or(0))
    }
}
