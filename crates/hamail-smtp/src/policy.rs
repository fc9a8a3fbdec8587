//! Who may send mail to whom: Postfix's `permit_mynetworks,
//! reject_unauth_destination` plus `reject_unlisted_recipient`, decided on
//! the replicated tables. Pure: the tables come in through a trait.

use std::sync::Arc;

use hamail_types::{DomainKind, DomainName, MailAddress};
use ipnet::IpNet;

use crate::BackendError;

/// Read access to the replicated tables the recipient check needs.
pub trait Tables {
    fn domain_kind(&self, domain: &DomainName) -> Result<Option<DomainKind>, BackendError>;
    fn recipient_known(&self, address: &MailAddress) -> Result<bool, BackendError>;
    /// The targets of an alias (Postfix's virtual_alias_maps), if it is one.
    fn alias_targets(
        &self,
        address: &MailAddress,
    ) -> Result<Option<Vec<MailAddress>>, BackendError>;
    /// The stored password hash (`{SCHEME}...`) of a user of the replicated
    /// user table, if it is one.
    fn user_hash(&self, user: &MailAddress) -> Result<Option<String>, BackendError>;
    /// The users a `hamail sender allow` entry lets send as `sender`.
    fn sender_logins(&self, sender: &MailAddress) -> Result<Vec<MailAddress>, BackendError>;
    /// The domain's own message size limit (`hamail domain set
    /// --message-size-limit`), below the global one; `None`: the global.
    fn domain_message_size_limit(&self, _domain: &DomainName) -> Result<Option<u64>, BackendError> {
        Ok(None)
    }
    /// The header and body checks this node applies (the replicated
    /// tables, compiled once per table version by the implementor, never
    /// per message); `None` when there are none.
    fn content_checks(&self) -> Result<Option<Arc<hamail_checks::Checks>>, BackendError> {
        Ok(None)
    }
    /// The DKIM keys this node signs with (the replicated table, loaded
    /// once per table version by the implementor, never per message);
    /// `None` when there are none.
    fn dkim_signers(&self) -> Result<Option<Arc<hamail_dkim::Signers>>, BackendError> {
        Ok(None)
    }
}

/// Whether the user logged in as `login` may use `sender` as the envelope
/// sender (Postfix's `reject_sender_login_mismatch`): its own address, an
/// alias whose expansion reaches it, or a `sender allow` entry for it.
/// Compared without regard to case.
pub fn sender_owned(
    tables: &impl Tables,
    login: &str,
    sender: &MailAddress,
) -> Result<bool, BackendError> {
    let same = |a: &MailAddress| a.to_string().eq_ignore_ascii_case(login);
    if same(sender) {
        return Ok(true);
    }
    if tables.sender_logins(sender)?.iter().any(same) {
        return Ok(true);
    }
    match expand_aliases(tables, std::slice::from_ref(sender)) {
        Ok(targets) => Ok(targets.iter().any(same)),
        Err(AliasError::Table(e)) => Err(e),
        // An alias that expands too far or too deep owns nobody.
        Err(_) => Ok(false),
    }
}

/// Why aliases could not be expanded (the message is refused with 550 5.4.6).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AliasError {
    #[error(transparent)]
    Table(#[from] BackendError),
    #[error("alias {alias}: more than 10 levels of aliases")]
    TooDeep { alias: MailAddress },
    #[error("alias expansion gives more than {ALIAS_RECURSION_LIMIT} recipients")]
    TooMany,
}

/// How deep aliases may point at aliases (Postfix's virtual_alias_recursion_limit).
pub const ALIAS_RECURSION_LIMIT: usize = 1000;

/// Rewrites recipients through the alias table, as Postfix's cleanup does
/// with virtual_alias_maps before a message is queued: an alias is replaced
/// by its targets (recursively, each address once), anything else stays.
pub fn expand_aliases(
    tables: &impl Tables,
    recipients: &[MailAddress],
) -> Result<Vec<MailAddress>, AliasError> {
    let mut out: Vec<MailAddress> = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    let mut todo: Vec<(MailAddress, usize)> =
        recipients.iter().rev().map(|r| (r.clone(), 0)).collect();
    while let Some((a, depth)) = todo.pop() {
        if !seen.insert(a.clone()) {
            continue;
        }
        match tables.alias_targets(&a)? {
            Some(targets) if depth < 10 => {
                todo.extend(targets.into_iter().rev().map(|t| (t, depth + 1)));
            }
            Some(_) => return Err(AliasError::TooDeep { alias: a }),
            None => out.push(a),
        }
        if out.len() + todo.len() > ALIAS_RECURSION_LIMIT {
            return Err(AliasError::TooMany);
        }
    }
    Ok(out)
}

/// The answer to one RCPT TO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    /// 550 5.1.1: a domain of ours, an address it does not have.
    Unknown {
        table: &'static str,
    },
    /// 554 5.7.1: not our domain and the client may not relay.
    RelayDenied,
    /// 451 4.3.0: the tables could not be read.
    TempFail(BackendError),
}

/// Local parts every domain of ours accepts (RFC 5321 4.5.1, RFC 2142).
const ROLE_ACCOUNTS: [&str; 2] = ["postmaster", "abuse"];

pub fn check_recipient(tables: &impl Tables, rcpt: &MailAddress, trusted: bool) -> Verdict {
    let kind = match tables.domain_kind(rcpt.domain()) {
        Ok(k) => k,
        Err(e) => return Verdict::TempFail(e),
    };
    let Some(kind) = kind else {
        // Not ours: only clients in mynetworks may relay.
        return if trusted {
            Verdict::Accept
        } else {
            Verdict::RelayDenied
        };
    };
    if ROLE_ACCOUNTS
        .iter()
        .any(|r| rcpt.local().eq_ignore_ascii_case(r))
    {
        return Verdict::Accept;
    }
    let known = match kind {
        DomainKind::Virtual => tables.alias_targets(rcpt).map(|t| t.is_some()),
        _ => tables
            .recipient_known(rcpt)
            .and_then(|k| Ok(k || tables.alias_targets(rcpt)?.is_some())),
    };
    match known {
        Ok(true) => Verdict::Accept,
        Ok(false) => Verdict::Unknown {
            table: match kind {
                DomainKind::Local => "local recipient table",
                DomainKind::Relay => "relay recipient table",
                _ => "virtual alias table",
            },
        },
        Err(e) => Verdict::TempFail(e),
    }
}

/// Whether a client address is in `mynetworks`. IPv4-mapped IPv6 clients
/// are matched as the IPv4 address they are.
pub fn in_networks(nets: &[IpNet], ip: std::net::IpAddr) -> bool {
    let ip = match ip {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map(std::net::IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    nets.iter().any(|n| n.contains(&ip))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    struct T {
        domains: Vec<(&'static str, DomainKind)>,
        recipients: BTreeSet<&'static str>,
        aliases: BTreeSet<&'static str>,
    }

    impl Tables for T {
        fn domain_kind(&self, d: &DomainName) -> Result<Option<DomainKind>, BackendError> {
            Ok(self
                .domains
                .iter()
                .find(|(n, _)| *n == d.as_str())
                .map(|(_, k)| *k))
        }
        fn recipient_known(&self, a: &MailAddress) -> Result<bool, BackendError> {
            Ok(self.recipients.contains(a.to_string().as_str()))
        }
        fn alias_targets(&self, a: &MailAddress) -> Result<Option<Vec<MailAddress>>, BackendError> {
            Ok(match a.to_string().as_str() {
                "loop1@example.jp" => Some(vec![MailAddress::parse("loop2@example.jp").unwrap()]),
                "loop2@example.jp" => Some(vec![MailAddress::parse("loop1@example.jp").unwrap()]),
                s if self.aliases.contains(s) => Some(vec![
                    MailAddress::parse("user@example.jp").unwrap(),
                    MailAddress::parse("x@elsewhere.example").unwrap(),
                ]),
                _ => None,
            })
        }
        fn user_hash(&self, _: &MailAddress) -> Result<Option<String>, BackendError> {
            Ok(None)
        }
        fn sender_logins(&self, s: &MailAddress) -> Result<Vec<MailAddress>, BackendError> {
            Ok(match s.to_string().as_str() {
                "shared@example.jp" => vec![a("user@example.jp")],
                _ => Vec::new(),
            })
        }
    }

    #[test]
    fn a_login_owns_its_address_its_aliases_and_allowed_senders() {
        let t = T {
            domains: vec![("example.jp", DomainKind::Local)],
            recipients: ["user@example.jp"].into(),
            aliases: ["info@example.jp"].into(),
        };
        let owned = |login: &str, sender: &str| sender_owned(&t, login, &a(sender)).unwrap();
        assert!(owned("user@example.jp", "user@example.jp"));
        assert!(owned("User@Example.JP", "user@example.jp"));
        // info@ expands to user@ (and an outside address).
        assert!(owned("user@example.jp", "info@example.jp"));
        assert!(owned("user@example.jp", "shared@example.jp"));
        assert!(!owned("other@example.jp", "info@example.jp"));
        assert!(!owned("other@example.jp", "user@example.jp"));
        assert!(!owned("other@example.jp", "shared@example.jp"));
        // An alias loop owns nobody (and is no error).
        assert!(!owned("user@example.jp", "loop1@example.jp"));
    }

    fn a(s: &str) -> MailAddress {
        MailAddress::parse(s).unwrap()
    }

    #[test]
    fn recipients_are_checked_like_postfix() {
        let t = T {
            domains: vec![
                ("example.jp", DomainKind::Relay),
                ("v.example", DomainKind::Virtual),
            ],
            recipients: ["user@example.jp"].into(),
            aliases: ["info@example.jp", "sales@v.example"].into(),
        };
        assert_eq!(
            check_recipient(&t, &a("user@example.jp"), false),
            Verdict::Accept
        );
        assert_eq!(
            check_recipient(&t, &a("info@example.jp"), false),
            Verdict::Accept
        );
        assert_eq!(
            check_recipient(&t, &a("Postmaster@example.jp"), false),
            Verdict::Accept
        );
        assert_eq!(
            check_recipient(&t, &a("abuse@v.example"), false),
            Verdict::Accept
        );
        assert_eq!(
            check_recipient(&t, &a("sales@v.example"), false),
            Verdict::Accept
        );
        assert!(matches!(
            check_recipient(&t, &a("nobody@example.jp"), true),
            Verdict::Unknown { .. }
        ));
        assert_eq!(
            check_recipient(&t, &a("x@elsewhere.example"), false),
            Verdict::RelayDenied
        );
        assert_eq!(
            check_recipient(&t, &a("x@elsewhere.example"), true),
            Verdict::Accept
        );
    }

    #[test]
    fn aliases_expand_recursively_once_per_address() {
        let t = T {
            domains: vec![("example.jp", DomainKind::Relay)],
            recipients: ["user@example.jp"].into(),
            aliases: ["info@example.jp", "sales@example.jp"].into(),
        };
        let got = expand_aliases(
            &t,
            &[
                a("info@example.jp"),
                a("sales@example.jp"),
                a("user@example.jp"),
            ],
        )
        .unwrap();
        assert_eq!(got, vec![a("user@example.jp"), a("x@elsewhere.example")]);
        // A loop ends: each address is expanded once.
        assert_eq!(
            expand_aliases(&t, &[a("loop1@example.jp")]).unwrap(),
            vec![]
        );
    }

    #[test]
    fn mynetworks_match_mapped_addresses() {
        let nets: Vec<IpNet> = vec!["127.0.0.1/32".parse().unwrap(), "::1/128".parse().unwrap()];
        assert!(in_networks(&nets, "127.0.0.1".parse().unwrap()));
        assert!(in_networks(&nets, "::ffff:127.0.0.1".parse().unwrap()));
        assert!(in_networks(&nets, "::1".parse().unwrap()));
        assert!(!in_networks(&nets, "127.0.0.2".parse().unwrap()));
    }
}
