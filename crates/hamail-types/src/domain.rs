//! Domain names as mail and DNS operators write them: case-insensitive,
//! trailing dot optional, internationalised names stored as A-labels.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::TypesError;

/// A validated, normalised (lower-case A-label, no trailing dot) domain name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DomainName(String);

impl DomainName {
    /// Parses and normalises a domain name given by a user or a peer.
    pub fn parse(input: &str) -> Result<Self, TypesError> {
        let err = |reason: &str| TypesError::Domain {
            input: input.to_string(),
            reason: reason.to_string(),
        };
        let trimmed = input.strip_suffix('.').unwrap_or(input);
        if trimmed.is_empty() {
            return Err(err("empty name"));
        }
        if trimmed.starts_with('[') || trimmed.parse::<std::net::IpAddr>().is_ok() {
            return Err(err("an address literal is not a domain name"));
        }
        let ascii = if trimmed.is_ascii() {
            trimmed.to_ascii_lowercase()
        } else {
            idna::domain_to_ascii(trimmed)
                .map_err(|_| err("not a valid internationalised domain name"))?
        };
        if ascii.len() > 253 {
            return Err(err("longer than 253 characters"));
        }
        let labels: Vec<&str> = ascii.split('.').collect();
        for label in &labels {
            if label.is_empty() {
                return Err(err("empty label (two dots in a row, or a leading dot)"));
            }
            if label.len() > 63 {
                return Err(err("a label is longer than 63 characters"));
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(err("a label starts or ends with '-'"));
            }
            if let Some(c) = label
                .chars()
                .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
            {
                return Err(err(&format!(
                    "character {c:?} is not allowed (letters, digits and '-' only)"
                )));
            }
        }
        if labels
            .last()
            .is_some_and(|tld| tld.chars().all(|c| c.is_ascii_digit()))
        {
            return Err(err("the last label is all digits"));
        }
        Ok(DomainName(ascii))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DomainName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for DomainName {
    type Err = TypesError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for DomainName {
    type Error = TypesError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<DomainName> for String {
    fn from(d: DomainName) -> String {
        d.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises() {
        assert_eq!(
            DomainName::parse("Example.COM.").unwrap().as_str(),
            "example.com"
        );
        assert_eq!(
            DomainName::parse("bücher.de").unwrap().as_str(),
            "xn--bcher-kva.de"
        );
        assert_eq!(
            DomainName::parse("localhost").unwrap().as_str(),
            "localhost"
        );
    }

    #[test]
    fn refuses_bad_names() {
        for bad in [
            "",
            ".",
            "a..b",
            ".a",
            "-a.com",
            "a-.com",
            "a_b.com",
            "a b.com",
            "1.2.3.4",
            "[1.2.3.4]",
            "example.123",
            "a@b.com",
        ] {
            assert!(DomainName::parse(bad).is_err(), "{bad:?} accepted");
        }
        let long = format!("{}.com", "a".repeat(64));
        assert!(DomainName::parse(&long).is_err());
        let err = DomainName::parse("a_b.com").unwrap_err().to_string();
        assert!(err.contains("a_b.com") && err.contains("'_'"), "{err}");
    }
}
