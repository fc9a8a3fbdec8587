//! The quotas and domain-settings tables: mailbox quotas (`quota set`),
//! read by the delivery to Maildir, and per-domain settings (`domain set`:
//! the message size limit), read by the smtpd.
//!
//! A quota is only for a mailbox we host: a recipient (`recipient add`) of
//! one of our local domains, the only addresses delivered to a mailbox.
//! An alias, a relay recipient or an address of a domain not ours is
//! refused, so a typo never sits in the table unnoticed. Deleting the
//! recipient deletes its quota; deleting the domain deletes its settings.

use hamail_types::{DomainKind, DomainName, MailAddress, Outcome, format_byte_size};
use serde::{Deserialize, Serialize};

use crate::apply::Applier;
use crate::tables::{DomainRecord, Table, address_key, domain_from_key, domain_key};
use crate::{Result, Store, decode};

/// One mailbox's quota.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaRecord {
    pub bytes: u64,
    pub updated_ms: u64,
}

/// A domain's settings (`domain set`); a domain without a row has the
/// defaults (every field `None`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainSettings {
    /// The largest message for this domain's recipients, below the
    /// global `message_size_limit`.
    pub message_size_limit: Option<u64>,
    pub updated_ms: u64,
}

impl Applier<'_> {
    /// Why `address` cannot have a quota, if it cannot.
    fn quota_problem(&self, address: &MailAddress) -> Result<Option<String>> {
        let domain = address.domain();
        let kind = self
            .get_typed::<DomainRecord>(Table::Domains, &domain_key(domain), "domain")?
            .map(|d| d.kind);
        Ok(match kind {
            None => Some(format!(
                "{address} is not hosted here: {domain} is not one of our domains (hamail domain list)"
            )),
            Some(DomainKind::Local) => {
                if self
                    .get(Table::Recipients, &address_key(address))?
                    .is_some()
                {
                    None
                } else {
                    Some(format!(
                        "{address} is not hosted here: no such recipient in {domain} (add it with `hamail recipient add {address}`)"
                    ))
                }
            }
            Some(kind) => Some(format!(
                "{address} is not hosted here: {domain} is a {kind} domain, without mailboxes"
            )),
        })
    }

    pub(crate) fn quota_set(
        &mut self,
        address: &MailAddress,
        bytes: u64,
        t: u64,
    ) -> Result<Outcome> {
        if let Some(reason) = self.quota_problem(address)? {
            return Ok(Outcome::rejected(reason));
        }
        self.put(
            Table::Quotas,
            address_key(address),
            &QuotaRecord {
                bytes,
                updated_ms: t,
            },
        );
        Ok(Outcome::applied(format!(
            "quota of {address} set to {} ({bytes} bytes)",
            format_byte_size(bytes)
        )))
    }

    pub(crate) fn quota_del(&mut self, address: &MailAddress) -> Result<Outcome> {
        let key = address_key(address);
        if self.get(Table::Quotas, &key)?.is_none() {
            return Ok(Outcome::rejected(format!("{address} has no quota")));
        }
        self.delete(Table::Quotas, key);
        Ok(Outcome::applied(format!("quota of {address} deleted")))
    }

    /// A deleted recipient's mailbox has no quota left (a recipient added
    /// again later starts without one).
    pub(crate) fn forget_quota(&mut self, address: &MailAddress) -> Result<()> {
        let key = address_key(address);
        if self.get(Table::Quotas, &key)?.is_some() {
            self.delete(Table::Quotas, key);
        }
        Ok(())
    }

    /// A deleted domain's settings go with it.
    pub(crate) fn forget_domain_settings(&mut self, domain: &DomainName) -> Result<()> {
        let key = domain_key(domain);
        if self.get(Table::DomainSettings, &key)?.is_some() {
            self.delete(Table::DomainSettings, key);
        }
        Ok(())
    }

    pub(crate) fn domain_set(
        &mut self,
        domain: &DomainName,
        message_size_limit: Option<u64>,
        t: u64,
    ) -> Result<Outcome> {
        if self.get(Table::Domains, &domain_key(domain))?.is_none() {
            return Ok(Outcome::rejected(format!(
                "no such domain: {domain} (add it with `hamail domain add {domain}`)"
            )));
        }
        let settings = DomainSettings {
            message_size_limit,
            updated_ms: t,
        };
        if settings.message_size_limit.is_none() {
            self.delete(Table::DomainSettings, domain_key(domain));
        } else {
            self.put(Table::DomainSettings, domain_key(domain), &settings);
        }
        Ok(Outcome::applied(match message_size_limit {
            Some(n) => format!(
                "message size limit of {domain} set to {} ({n} bytes)",
                format_byte_size(n)
            ),
            None => format!("message size limit of {domain} is the global one"),
        }))
    }
}

impl Store {
    pub fn quota(&self, address: &MailAddress) -> Result<Option<QuotaRecord>> {
        self.get(Table::Quotas, &address_key(address))?
            .map(|v| decode("quota", &v))
            .transpose()
    }

    /// Every quota, or one domain's, in address-key order.
    pub fn quotas(&self, domain: Option<&DomainName>) -> Result<Vec<(MailAddress, QuotaRecord)>> {
        self.address_rows(Table::Quotas, domain, "quota")
    }

    /// A domain's settings (the defaults if it has none).
    pub fn domain_settings(&self, domain: &DomainName) -> Result<DomainSettings> {
        Ok(self
            .get(Table::DomainSettings, &domain_key(domain))?
            .map(|v| decode("domain settings", &v))
            .transpose()?
            .unwrap_or_default())
    }

    /// Every domain with settings of its own.
    pub fn all_domain_settings(&self) -> Result<Vec<(DomainName, DomainSettings)>> {
        self.keyed_rows(
            Table::DomainSettings,
            b"",
            domain_from_key,
            "domain settings",
        )
    }
}
