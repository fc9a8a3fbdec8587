//! STARTTLS levels for outbound SMTP, with Postfix's `smtp_tls_security_level`
//! names: parsed once (from the config) into an enum that delivery matches on.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::TypesError;

/// How much TLS a delivery demands of the next hop (Postfix's
/// `smtp_tls_security_level` values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "&'static str")]
#[non_exhaustive]
pub enum TlsLevel {
    /// Never use TLS.
    None,
    /// STARTTLS when offered, any certificate; a failed handshake is retried
    /// in the clear (opportunistic).
    May,
    /// STARTTLS required, any certificate; without TLS the mail is deferred.
    Encrypt,
    /// STARTTLS required and the certificate must verify for the host name.
    Verify,
    /// Postfix's `secure`: required and verified, as `verify` here.
    Secure,
}

impl TlsLevel {
    /// The level's name as written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsLevel::None => "none",
            TlsLevel::May => "may",
            TlsLevel::Encrypt => "encrypt",
            TlsLevel::Verify => "verify",
            TlsLevel::Secure => "secure",
        }
    }
}

impl fmt::Display for TlsLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TlsLevel {
    type Err = TypesError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(TlsLevel::None),
            "may" => Ok(TlsLevel::May),
            "encrypt" => Ok(TlsLevel::Encrypt),
            "verify" => Ok(TlsLevel::Verify),
            "secure" => Ok(TlsLevel::Secure),
            _ => Err(TypesError::TlsLevel {
                input: s.to_string(),
            }),
        }
    }
}

impl TryFrom<String> for TlsLevel {
    type Error = TypesError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<TlsLevel> for &'static str {
    fn from(level: TlsLevel) -> &'static str {
        level.as_str()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_level_round_trips_through_its_name() {
        for level in [
            TlsLevel::None,
            TlsLevel::May,
            TlsLevel::Encrypt,
            TlsLevel::Verify,
            TlsLevel::Secure,
        ] {
            assert_eq!(level.to_string().parse::<TlsLevel>().unwrap(), level);
        }
        assert_eq!("may".parse::<TlsLevel>().unwrap(), TlsLevel::May);
    }

    #[test]
    fn a_bad_level_is_named_in_the_error() {
        let err = "maybe".parse::<TlsLevel>().unwrap_err().to_string();
        assert!(
            err.contains("\"maybe\"") && err.contains("none, may, encrypt, verify or secure"),
            "{err}"
        );
        assert!(
            "MAY".parse::<TlsLevel>().is_err(),
            "names are lower case, as in Postfix"
        );
    }
}
