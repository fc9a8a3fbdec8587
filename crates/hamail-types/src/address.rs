//! Mail addresses (RFC 5321 mailbox, RFC 6531 UTF-8 local parts) in the one
//! form hamail stores: `local@domain`, lower-cased like Postfix's lookups.
//! Forms that have been used to sneak mail through relays — quoted local
//! parts, `%` and `!` routing, source routes, a second `@` — are refused here,
//! once, for every caller.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{DomainName, TypesError};

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MailAddress {
    local: String,
    domain: DomainName,
}

const ATEXT_SPECIALS: &str = "#$&'*+-/=?^_`{|}~";

impl MailAddress {
    pub fn parse(input: &str) -> Result<Self, TypesError> {
        let err = |reason: &str| TypesError::Address {
            input: input.to_string(),
            reason: reason.to_string(),
        };
        if input.is_empty() {
            return Err(err("empty address"));
        }
        if input.starts_with('@') || input.starts_with('<') {
            return Err(err("source routes and angle brackets are not allowed"));
        }
        if input.contains('"') || input.contains('\\') {
            return Err(err("quoted local parts are not allowed"));
        }
        let (local, domain) = input
            .rsplit_once('@')
            .ok_or_else(|| err("missing '@domain'"))?;
        if local.contains('@') {
            return Err(err("more than one '@'"));
        }
        if local.is_empty() {
            return Err(err("empty local part"));
        }
        if local.len() > 64 {
            return Err(err("local part longer than 64 octets"));
        }
        if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
            return Err(err("local part has a leading, trailing or double dot"));
        }
        if let Some(c) = local.chars().find(|c| *c == '%' || *c == '!') {
            return Err(err(&format!(
                "{c:?} routing in the local part is not allowed"
            )));
        }
        if let Some(c) = local.chars().find(|&c| {
            !(c.is_ascii_alphanumeric() || c == '.' || ATEXT_SPECIALS.contains(c) || !c.is_ascii())
        }) {
            return Err(err(&format!(
                "character {c:?} is not allowed in the local part"
            )));
        }
        if local.chars().any(char::is_control) {
            return Err(err("control character in the local part"));
        }
        let domain = DomainName::parse(domain).map_err(|e| match e {
            TypesError::Domain { reason, .. } => err(&format!("domain: {reason}")),
            other => other,
        })?;
        if input.len() > 254 {
            return Err(err("longer than 254 octets"));
        }
        Ok(MailAddress {
            local: local.to_lowercase(),
            domain,
        })
    }

    pub fn local(&self) -> &str {
        &self.local
    }

    pub fn domain(&self) -> &DomainName {
        &self.domain
    }
}

impl fmt::Display for MailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.local, self.domain)
    }
}

impl FromStr for MailAddress {
    type Err = TypesError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for MailAddress {
    type Error = TypesError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<MailAddress> for String {
    fn from(a: MailAddress) -> String {
        a.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_normalises() {
        let a = MailAddress::parse("John.Doe+tag@Example.COM").unwrap();
        assert_eq!(a.to_string(), "john.doe+tag@example.com");
        assert_eq!(a.domain().as_str(), "example.com");
        assert!(MailAddress::parse("postmaster@localhost").is_ok());
        assert!(MailAddress::parse("用户@例子.广告").is_ok());
    }

    #[test]
    fn refuses_relay_tricks_and_garbage() {
        for bad in [
            "",
            "user",
            "@example.com",
            "user@",
            "a@b@example.com",
            "\"a b\"@example.com",
            "user%other@example.com",
            "host!user@example.com",
            "@route:user@example.com",
            "<user@example.com>",
            ".user@example.com",
            "us..er@example.com",
            "user.@example.com",
            "us er@example.com",
            "user@exa mple.com",
            "user@[127.0.0.1]",
            "us(er@example.com",
        ] {
            assert!(MailAddress::parse(bad).is_err(), "{bad:?} accepted");
        }
        let long = format!("{}@example.com", "a".repeat(65));
        assert!(MailAddress::parse(&long).is_err());
    }
}
