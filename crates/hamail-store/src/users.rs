//! The users and sender-logins tables: applying the user and sender-allow
//! commands and reading them back for the CLI and the submission smtpd.
//! A user's address is in one of our domains; a sender-allow entry names a
//! user that exists (deleting the user deletes its entries).

use hamail_types::{DomainName, MailAddress, Outcome, PasswordHash, UserRecord};

use crate::apply::Applier;
use crate::tables::{
    DomainRecord, SenderLoginRecord, Table, address_key, domain_key, sender_login_from_key,
    sender_login_key, sender_prefix,
};
use crate::{Result, Store, decode};

impl Applier<'_> {
    /// Why `address` cannot be a user, if it cannot: its domain must be one
    /// of ours (any kind).
    fn user_domain_problem(&self, address: &MailAddress) -> Result<Option<String>> {
        let known = self
            .get_typed::<DomainRecord>(Table::Domains, &domain_key(address.domain()), "domain")?
            .is_some();
        Ok(
            (!known)
                .then(|| format!("{address} is not in one of our domains (hamail domain list)")),
        )
    }

    fn user_record(&self, address: &MailAddress) -> Result<Option<UserRecord>> {
        self.get_typed(Table::Users, &address_key(address), "user")
    }

    pub(crate) fn user_add(
        &mut self,
        address: &MailAddress,
        hash: &PasswordHash,
        t: u64,
    ) -> Result<Outcome> {
        if let Some(reason) = self.user_domain_problem(address)? {
            return Ok(Outcome::rejected(reason));
        }
        if self.user_record(address)?.is_some() {
            return Ok(Outcome::rejected(format!(
                "user {address} exists; use user passwd"
            )));
        }
        self.put(
            Table::Users,
            address_key(address),
            &UserRecord {
                hash: hash.clone(),
                created_ms: t,
                changed_ms: t,
            },
        );
        Ok(Outcome::applied(format!(
            "user {address} added ({})",
            hash.scheme()
        )))
    }

    pub(crate) fn user_passwd(
        &mut self,
        address: &MailAddress,
        hash: &PasswordHash,
        t: u64,
    ) -> Result<Outcome> {
        let Some(mut rec) = self.user_record(address)? else {
            return Ok(Outcome::rejected(format!(
                "no such user: {address} (add it with `hamail user add`)"
            )));
        };
        rec.hash = hash.clone();
        rec.changed_ms = t;
        self.put(Table::Users, address_key(address), &rec);
        Ok(Outcome::applied(format!(
            "password of {address} changed ({})",
            hash.scheme()
        )))
    }

    pub(crate) fn user_del(&mut self, address: &MailAddress) -> Result<Outcome> {
        if self.user_record(address)?.is_none() {
            return Ok(Outcome::rejected(format!("no such user: {address}")));
        }
        self.delete(Table::Users, address_key(address));
        // The sender-allow entries naming this user as the one who may send.
        let mut gone = 0usize;
        for key in self.keys_with_prefix(Table::SenderLogins, b"")? {
            if sender_login_from_key(&key).is_some_and(|(_, user)| user == *address) {
                self.delete(Table::SenderLogins, key);
                gone += 1;
            }
        }
        Ok(Outcome::applied(if gone == 0 {
            format!("user {address} deleted")
        } else {
            format!("user {address} deleted, with its {gone} sender-allow entries")
        }))
    }

    pub(crate) fn user_import(
        &mut self,
        users: &[(MailAddress, PasswordHash)],
        t: u64,
    ) -> Result<Outcome> {
        // All or nothing: every address is checked before anything is written.
        for (address, _) in users {
            if let Some(reason) = self.user_domain_problem(address)? {
                return Ok(Outcome::rejected(format!(
                    "import refused, nothing imported: {reason}"
                )));
            }
        }
        let mut replaced = 0usize;
        for (address, hash) in users {
            let created_ms = match self.user_record(address)? {
                Some(old) => {
                    replaced += 1;
                    old.created_ms
                }
                None => t,
            };
            self.put(
                Table::Users,
                address_key(address),
                &UserRecord {
                    hash: hash.clone(),
                    created_ms,
                    changed_ms: t,
                },
            );
        }
        Ok(Outcome::applied(format!(
            "imported {} users ({} new, {replaced} replaced)",
            users.len(),
            users.len() - replaced
        )))
    }

    pub(crate) fn user_rehash(
        &mut self,
        address: &MailAddress,
        old: &PasswordHash,
        new: &PasswordHash,
        t: u64,
    ) -> Result<Outcome> {
        let Some(mut rec) = self.user_record(address)? else {
            return Ok(Outcome::applied(format!(
                "user {address} unchanged (deleted meanwhile)"
            )));
        };
        if rec.hash != *old {
            return Ok(Outcome::applied(format!(
                "user {address} unchanged (its password changed meanwhile)"
            )));
        }
        rec.hash = new.clone();
        rec.changed_ms = t;
        self.put(Table::Users, address_key(address), &rec);
        Ok(Outcome::applied(format!(
            "password hash of {address} upgraded to {}",
            new.scheme()
        )))
    }

    pub(crate) fn sender_allow(
        &mut self,
        sender: &MailAddress,
        user: &MailAddress,
        t: u64,
    ) -> Result<Outcome> {
        if self.user_record(user)?.is_none() {
            return Ok(Outcome::rejected(format!(
                "no such user: {user} (add it with `hamail user add`)"
            )));
        }
        let key = sender_login_key(sender, user);
        if self.get(Table::SenderLogins, &key)?.is_some() {
            return Ok(Outcome::applied(format!(
                "{user} may already send as {sender}, unchanged"
            )));
        }
        self.put(Table::SenderLogins, key, &SenderLoginRecord { added_ms: t });
        Ok(Outcome::applied(format!("{user} may send as {sender}")))
    }

    pub(crate) fn sender_deny(
        &mut self,
        sender: &MailAddress,
        user: &MailAddress,
    ) -> Result<Outcome> {
        let key = sender_login_key(sender, user);
        if self.get(Table::SenderLogins, &key)?.is_none() {
            return Ok(Outcome::rejected(format!(
                "no sender-allow entry lets {user} send as {sender}"
            )));
        }
        self.delete(Table::SenderLogins, key);
        Ok(Outcome::applied(format!(
            "{user} may no longer send as {sender}"
        )))
    }

    /// Users in `domain`, counting this batch's writes (for `domain del`).
    pub(crate) fn count_users(&self, domain: &DomainName) -> Result<usize> {
        Ok(self
            .keys_with_prefix(Table::Users, &crate::tables::domain_prefix(domain))?
            .len())
    }
}

impl Store {
    pub fn user(&self, address: &MailAddress) -> Result<Option<UserRecord>> {
        self.get(Table::Users, &address_key(address))?
            .map(|v| decode("user", &v))
            .transpose()
    }

    /// Every user, or one domain's, in address-key order (domain, then local part).
    pub fn users(&self, domain: Option<&DomainName>) -> Result<Vec<(MailAddress, UserRecord)>> {
        self.address_rows(Table::Users, domain, "user")
    }

    /// The users a `sender allow` entry lets send with envelope sender
    /// `sender` (a user's own address and its aliases are the caller's
    /// concern).
    pub fn sender_allowed_users(&self, sender: &MailAddress) -> Result<Vec<MailAddress>> {
        let mut out = Vec::new();
        self.scan_prefix(Table::SenderLogins, &sender_prefix(sender), |k, _| {
            if let Some((_, user)) = sender_login_from_key(k) {
                out.push(user);
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// Every `sender allow` entry as (sender, user), in sender order.
    pub fn sender_allows(&self) -> Result<Vec<(MailAddress, MailAddress)>> {
        let mut out = Vec::new();
        self.scan_prefix(Table::SenderLogins, b"", |k, _| {
            if let Some(pair) = sender_login_from_key(k) {
                out.push(pair);
            }
            Ok(())
        })?;
        Ok(out)
    }
}
