//! DKIM keys as the replicated state carries them: the selector, the
//! algorithm, the private key (DER) and the public key's `p=` text, and the
//! TXT record (`SELECTOR._domainkey.DOMAIN`) that publishes it. Keys are
//! generated before a command is proposed (apply never draws randomness);
//! here are only the checks and the record text, identical on every node.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{DomainName, TypesError};

/// A signing algorithm (RFC 6376 `rsa-sha256`, RFC 8463 `ed25519-sha256`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum DkimAlgorithm {
    Rsa,
    Ed25519,
}

impl DkimAlgorithm {
    pub const ALL: [DkimAlgorithm; 2] = [DkimAlgorithm::Rsa, DkimAlgorithm::Ed25519];

    /// The `k=` tag of the key record.
    pub fn as_str(self) -> &'static str {
        match self {
            DkimAlgorithm::Rsa => "rsa",
            DkimAlgorithm::Ed25519 => "ed25519",
        }
    }

    /// The letter that starts a generated selector (`r20261206`).
    pub fn selector_prefix(self) -> char {
        match self {
            DkimAlgorithm::Rsa => 'r',
            DkimAlgorithm::Ed25519 => 'e',
        }
    }
}

impl fmt::Display for DkimAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DkimAlgorithm {
    type Err = TypesError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "rsa" | "rsa-sha256" => Ok(DkimAlgorithm::Rsa),
            "ed25519" | "ed25519-sha256" => Ok(DkimAlgorithm::Ed25519),
            _ => Err(TypesError::Command(format!(
                "unknown DKIM algorithm {s:?}: expected rsa or ed25519"
            ))),
        }
    }
}

/// Largest private key carried (an RSA-4096 PKCS#1 key is about 2.4 kB).
pub const MAX_DKIM_PRIVATE_KEY: usize = 8 << 10;
/// Largest `p=` text (RSA-4096 SubjectPublicKeyInfo in base64: ~740).
pub const MAX_DKIM_PUBLIC_KEY: usize = 2 << 10;
/// Keys one `dkim add` may publish at once.
pub const MAX_DKIM_KEYS_PER_ADD: usize = 4;
/// TTL of the published key records: what a verifier may cache, and so
/// how long a deleted key's signatures may still verify elsewhere.
pub const DKIM_RECORD_TTL: u32 = 3600;

/// One generated key, as `Command::DkimAdd` carries it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DkimKey {
    pub selector: String,
    pub algorithm: DkimAlgorithm,
    /// RSA: PKCS#1 `RSAPrivateKey` DER; Ed25519: PKCS#8 DER.
    #[serde(with = "serde_bytes")]
    pub private_key: Vec<u8>,
    /// The base64 of the `p=` tag: RSA SubjectPublicKeyInfo DER, Ed25519
    /// the raw 32-byte key (RFC 8463).
    pub public_key: String,
}

/// Never the private key, in logs or `{:?}`.
impl fmt::Debug for DkimKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DkimKey")
            .field("selector", &self.selector)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl DkimKey {
    /// What can be checked without the state: the selector, the sizes,
    /// and that the public key is base64.
    pub fn validate(&self) -> Result<(), TypesError> {
        check_selector(&self.selector)?;
        let bad = |m: String| Err(TypesError::Command(m));
        if self.private_key.is_empty() || self.private_key.len() > MAX_DKIM_PRIVATE_KEY {
            return bad(format!(
                "DKIM key {}: the private key must be 1 to {MAX_DKIM_PRIVATE_KEY} bytes",
                self.selector
            ));
        }
        if self.public_key.is_empty()
            || self.public_key.len() > MAX_DKIM_PUBLIC_KEY
            || !self
                .public_key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=')
        {
            return bad(format!(
                "DKIM key {}: the public key must be base64 of at most {MAX_DKIM_PUBLIC_KEY} characters",
                self.selector
            ));
        }
        Ok(())
    }

    /// The TXT RDATA in presentation form (quoted character-strings).
    pub fn txt_rdata(&self) -> String {
        txt_rdata(self.algorithm, &self.public_key)
    }
}

/// A selector is one DNS label of `[a-z0-9-]`, 1 to 63 characters, not
/// starting or ending with `-` (lower case: the record's owner name is
/// kept lower-case, and `s=` must name it exactly).
pub fn check_selector(selector: &str) -> Result<(), TypesError> {
    let bad = |why: &str| {
        Err(TypesError::Command(format!(
            "invalid DKIM selector {selector:?}: {why}"
        )))
    };
    if selector.is_empty() || selector.len() > 63 {
        return bad("a selector is 1 to 63 characters");
    }
    if let Some(c) = selector
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return bad(&format!(
            "{c:?} is not allowed (only a-z, 0-9 and '-', one DNS label)"
        ));
    }
    if selector.starts_with('-') || selector.ends_with('-') {
        return bad("a selector must not start or end with '-'");
    }
    Ok(())
}

/// `SELECTOR._domainkey.DOMAIN`, the key record's owner name.
pub fn record_name(selector: &str, domain: &DomainName) -> String {
    format!("{selector}._domainkey.{}", domain.as_str())
}

/// `v=DKIM1; k=ALG; p=KEY` as quoted character-strings of at most 255
/// bytes each (a DNS character-string's limit; an RSA-2048 key needs two).
/// A verifier joins them without a separator (RFC 6376 3.6.2.2).
pub fn txt_rdata(algorithm: DkimAlgorithm, public_key: &str) -> String {
    let text = format!("v=DKIM1; k={algorithm}; p={public_key}");
    // ASCII only (base64 and the tags), so byte chunks are char chunks.
    text.as_bytes()
        .chunks(255)
        .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors() {
        let long = "a".repeat(63);
        for ok in ["r20261206", "e20261206", "a", "mail-2026", long.as_str()] {
            assert!(check_selector(ok).is_ok(), "{ok}");
        }
        let longer = "a".repeat(64);
        for (bad, why) in [
            ("", "1 to 63"),
            (longer.as_str(), "1 to 63"),
            ("-a", "start or end"),
            ("a-", "start or end"),
            ("a.b", "'.' is not allowed"),
            ("A1", "'A' is not allowed"),
            ("a_b", "'_' is not allowed"),
        ] {
            let e = check_selector(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn algorithms_and_records() {
        assert_eq!("RSA".parse::<DkimAlgorithm>().unwrap(), DkimAlgorithm::Rsa);
        assert_eq!(
            "ed25519".parse::<DkimAlgorithm>().unwrap(),
            DkimAlgorithm::Ed25519
        );
        let e = "dsa".parse::<DkimAlgorithm>().unwrap_err().to_string();
        assert!(e.contains("unknown DKIM algorithm \"dsa\""), "{e}");
        let d = DomainName::parse("example.com").unwrap();
        assert_eq!(record_name("e1", &d), "e1._domainkey.example.com");
        assert_eq!(
            txt_rdata(DkimAlgorithm::Ed25519, "AAAA"),
            "\"v=DKIM1; k=ed25519; p=AAAA\""
        );
        let long = "B".repeat(400);
        let r = txt_rdata(DkimAlgorithm::Rsa, &long);
        let parts: Vec<&str> = r.split("\" \"").collect();
        assert_eq!(parts.len(), 2, "{r}");
        assert_eq!(parts[0].len(), 256, "the quote and 255 bytes");
        assert_eq!(
            r.replace("\" \"", "").trim_matches('"'),
            format!("v=DKIM1; k=rsa; p={long}")
        );
    }
}
