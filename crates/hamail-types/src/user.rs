//! Submission users as the replicated tables hold them: a password hash in
//! Dovecot's `{SCHEME}hash` form, checked here for shape only (no crypto in
//! this crate: `hamail-auth` hashes and verifies), and the user record.
//! A plaintext password never passes this check, so it never reaches the log.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::TypesError;

/// Longest stored hash, prefix included (an Argon2id PHC string with a
/// large salt is under 200 bytes).
pub const MAX_PASSWORD_HASH: usize = 512;

/// The hash schemes hamail verifies: Argon2id for new passwords, the others
/// as imported from a Dovecot passwd-file (re-hashed at the next login).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum HashScheme {
    Argon2id,
    BlfCrypt,
    Sha512Crypt,
    Sha256Crypt,
    Ssha512,
}

impl HashScheme {
    pub const ALL: [HashScheme; 5] = [
        HashScheme::Argon2id,
        HashScheme::BlfCrypt,
        HashScheme::Sha512Crypt,
        HashScheme::Sha256Crypt,
        HashScheme::Ssha512,
    ];

    /// The Dovecot scheme name, as written between the braces.
    pub fn name(self) -> &'static str {
        match self {
            HashScheme::Argon2id => "ARGON2ID",
            HashScheme::BlfCrypt => "BLF-CRYPT",
            HashScheme::Sha512Crypt => "SHA512-CRYPT",
            HashScheme::Sha256Crypt => "SHA256-CRYPT",
            HashScheme::Ssha512 => "SSHA512",
        }
    }

    fn from_name(name: &str) -> Option<HashScheme> {
        HashScheme::ALL
            .into_iter()
            .find(|s| s.name().eq_ignore_ascii_case(name))
    }

    /// Does `body` (the text after `{SCHEME}`) look like this scheme's hash?
    fn shape_problem(self, body: &str) -> Option<&'static str> {
        let ok = match self {
            HashScheme::Argon2id => body.starts_with("$argon2id$"),
            HashScheme::BlfCrypt => ["$2a$", "$2b$", "$2x$", "$2y$"]
                .iter()
                .any(|p| body.starts_with(p)),
            HashScheme::Sha512Crypt => body.starts_with("$6$"),
            HashScheme::Sha256Crypt => body.starts_with("$5$"),
            // base64 of a 64-byte digest and a salt of at least one byte.
            HashScheme::Ssha512 => {
                body.len() >= 88
                    && body
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b))
            }
        };
        (!ok).then_some(match self {
            HashScheme::Argon2id => "an {ARGON2ID} hash is a PHC string starting with $argon2id$",
            HashScheme::BlfCrypt => "a {BLF-CRYPT} hash starts with $2a$, $2b$, $2x$ or $2y$",
            HashScheme::Sha512Crypt => "a {SHA512-CRYPT} hash starts with $6$",
            HashScheme::Sha256Crypt => "a {SHA256-CRYPT} hash starts with $5$",
            HashScheme::Ssha512 => {
                "an {SSHA512} hash is base64 of the digest and salt (at least 88 characters)"
            }
        })
    }
}

impl fmt::Display for HashScheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A stored password hash, `{SCHEME}hash`, with the scheme name in upper
/// case. Its `Debug` shows only the scheme; errors never quote the input
/// (it may be a password written where a hash belongs).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PasswordHash {
    text: String,
    scheme: HashScheme,
}

impl PasswordHash {
    pub fn parse(input: &str) -> Result<Self, TypesError> {
        let err = |reason: String| TypesError::PasswordHash { reason };
        if input.is_empty() {
            return Err(err("empty".into()));
        }
        if input.len() > MAX_PASSWORD_HASH {
            return Err(err(format!("longer than {MAX_PASSWORD_HASH} bytes")));
        }
        if input.bytes().any(|b| b.is_ascii_control() || !b.is_ascii()) {
            return Err(err(
                "control or non-ASCII characters (a hash is printable ASCII)".into(),
            ));
        }
        if input.contains(':') {
            return Err(err(
                "':' in the hash (it separates the fields of a passwd-file line)".into(),
            ));
        }
        if input.contains(' ') {
            return Err(err("a space in the hash".into()));
        }
        let Some((name, body)) = input
            .strip_prefix('{')
            .and_then(|rest| rest.split_once('}'))
        else {
            return Err(err(
                "no {SCHEME} prefix: write the scheme first, e.g. {ARGON2ID} or {SHA512-CRYPT}"
                    .into(),
            ));
        };
        let upper = name.to_ascii_uppercase();
        if matches!(upper.as_str(), "PLAIN" | "CLEAR" | "CLEARTEXT") || upper.starts_with("PLAIN-")
        {
            return Err(err(format!(
                "{{{upper}}} is a plaintext password, which hamail does not store; set it with `hamail user passwd` or hash it first (doveadm pw -s ARGON2ID)"
            )));
        }
        let Some(scheme) = HashScheme::from_name(name) else {
            return Err(err(format!(
                "scheme {{{upper}}} is not supported (expected one of {})",
                HashScheme::ALL.map(|s| format!("{{{s}}}")).join(", ")
            )));
        };
        if let Some(problem) = scheme.shape_problem(body) {
            return Err(err(problem.into()));
        }
        Ok(PasswordHash {
            text: format!("{{{}}}{body}", scheme.name()),
            scheme,
        })
    }

    pub fn scheme(&self) -> HashScheme {
        self.scheme
    }

    /// The whole `{SCHEME}hash` text.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PasswordHash({{{}}}…)", self.scheme)
    }
}

impl TryFrom<String> for PasswordHash {
    type Error = TypesError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<PasswordHash> for String {
    fn from(h: PasswordHash) -> String {
        h.text
    }
}

/// A submission user (keyed by its address). Times are log times, ms since
/// the Unix epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    pub hash: PasswordHash,
    pub created_ms: u64,
    /// The last change of the hash (`user passwd`, an import, a re-hash).
    pub changed_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    const ARGON: &str = "{ARGON2ID}$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo";

    #[test]
    fn accepts_the_supported_schemes() {
        let h = PasswordHash::parse(ARGON).unwrap();
        assert_eq!(h.scheme(), HashScheme::Argon2id);
        assert_eq!(h.as_str(), ARGON);
        let s = PasswordHash::parse("{sha512-crypt}$6$salt$abcdef").unwrap();
        assert_eq!(s.scheme(), HashScheme::Sha512Crypt);
        assert_eq!(
            s.as_str(),
            "{SHA512-CRYPT}$6$salt$abcdef",
            "scheme name normalised"
        );
        assert!(PasswordHash::parse("{SHA256-CRYPT}$5$salt$abc").is_ok());
        assert!(PasswordHash::parse("{BLF-CRYPT}$2y$05$abcdefghijklmnopqrstuv").is_ok());
        let ssha = format!("{{SSHA512}}{}", "A".repeat(88));
        assert!(PasswordHash::parse(&ssha).is_ok());
        // Deserialising goes through the same check.
        assert_eq!(h, PasswordHash::try_from(ARGON.to_string()).unwrap());
        assert!(PasswordHash::try_from("{PLAIN}x".to_string()).is_err());
    }

    #[test]
    fn refuses_plaintext_unknown_and_malformed_without_quoting_them() {
        for (bad, why) in [
            ("{PLAIN}secret", "plaintext"),
            ("{plain}secret", "plaintext"),
            ("{CLEARTEXT}secret", "plaintext"),
            ("{PLAIN-MD5}5ebe2294ecd0e0f08eab7690d2a6ee69", "plaintext"),
            ("{MD5-CRYPT}$1$salt$x", "not supported"),
            ("{CRYPT}abc", "not supported"),
            ("$6$salt$abc", "no {SCHEME} prefix"),
            ("secret", "no {SCHEME} prefix"),
            ("{SHA512-CRYPT}$5$salt$abc", "starts with $6$"),
            ("{ARGON2ID}$argon2i$v=19$x", "$argon2id$"),
            ("{SSHA512}short", "base64"),
            ("{SHA512-CRYPT}$6$salt$abc:1000:1000", "':'"),
            ("{SHA512-CRYPT}$6$salt$a\nb", "control"),
            ("{SHA512-CRYPT}$6$salt$a b", "space"),
            ("", "empty"),
        ] {
            let e = PasswordHash::parse(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad:?}: {e}");
            if bad.len() > 6 {
                assert!(!e.contains(bad), "the error quotes the input: {e}");
            }
        }
        let long = format!("{{SHA512-CRYPT}}$6${}", "a".repeat(MAX_PASSWORD_HASH));
        assert!(PasswordHash::parse(&long).is_err());
        assert!(
            !format!("{:?}", PasswordHash::parse(ARGON).unwrap()).contains("argon2id$"),
            "Debug shows only the scheme"
        );
    }
}
