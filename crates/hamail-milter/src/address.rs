//! Where a milter listens, in Postfix's notation (`inet:HOST:PORT`,
//! `unix:/path`): parsed once, when the configuration is loaded.

use std::fmt;
use std::path::PathBuf;

/// A milter's socket.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MilterAddress {
    /// `inet:HOST:PORT` (an IPv6 address in brackets: `inet:[::1]:11332`).
    Inet { host: String, port: u16 },
    /// `unix:/path` (also Sendmail's `local:/path`).
    Unix(PathBuf),
}

/// A milter address that does not parse; the text names the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("milter address {input:?}: {reason}")]
pub struct AddressError {
    pub input: String,
    pub reason: String,
}

impl MilterAddress {
    /// Parses `inet:HOST:PORT`, `unix:/path` or `local:/path`.
    pub fn parse(input: &str) -> Result<Self, AddressError> {
        let err = |reason: &str| AddressError {
            input: input.to_string(),
            reason: reason.to_string(),
        };
        let s = input.trim();
        let Some((kind, rest)) = s.split_once(':') else {
            return Err(err("expected inet:HOST:PORT or unix:/path"));
        };
        match kind.to_ascii_lowercase().as_str() {
            "inet" => {
                let Some((host, port)) = rest.rsplit_once(':') else {
                    return Err(err("expected inet:HOST:PORT (the port is missing)"));
                };
                let port: u16 = port
                    .parse()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| err("the port must be a number from 1 to 65535"))?;
                let host = match host.strip_prefix('[') {
                    Some(h) => h
                        .strip_suffix(']')
                        .ok_or_else(|| err("an opening [ without a closing ]"))?,
                    None => host,
                };
                if host.is_empty() {
                    return Err(err("the host is missing"));
                }
                let is_ip = host.parse::<std::net::IpAddr>().is_ok();
                let is_name = host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
                if !is_ip && !is_name {
                    return Err(err(
                        "the host must be an IP address (IPv6 in brackets) or a host name",
                    ));
                }
                Ok(MilterAddress::Inet {
                    host: host.to_string(),
                    port,
                })
            }
            "unix" | "local" => {
                if !rest.starts_with('/') {
                    return Err(err("the socket path must be absolute (unix:/path)"));
                }
                // Unix socket paths are limited to 107 bytes (sun_path).
                if rest.len() > 107 {
                    return Err(err("the socket path is longer than 107 bytes"));
                }
                Ok(MilterAddress::Unix(PathBuf::from(rest)))
            }
            _ => Err(err("expected inet:HOST:PORT or unix:/path")),
        }
    }
}

impl fmt::Display for MilterAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MilterAddress::Inet { host, port } if host.contains(':') => {
                write!(f, "inet:[{host}]:{port}")
            }
            MilterAddress::Inet { host, port } => write!(f, "inet:{host}:{port}"),
            MilterAddress::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

impl std::str::FromStr for MilterAddress {
    type Err = AddressError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        MilterAddress::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_that_parse() {
        let a = MilterAddress::parse("inet:127.0.0.1:11332").unwrap();
        assert_eq!(
            a,
            MilterAddress::Inet {
                host: "127.0.0.1".into(),
                port: 11332
            }
        );
        assert_eq!(a.to_string(), "inet:127.0.0.1:11332");
        let a = MilterAddress::parse("inet:[::1]:8891").unwrap();
        assert_eq!(a.to_string(), "inet:[::1]:8891");
        let a = MilterAddress::parse("inet:localhost:8891").unwrap();
        assert_eq!(a.to_string(), "inet:localhost:8891");
        let a = MilterAddress::parse("unix:/run/rspamd/milter.sock").unwrap();
        assert_eq!(a, MilterAddress::Unix("/run/rspamd/milter.sock".into()));
        assert_eq!(a.to_string(), "unix:/run/rspamd/milter.sock");
        assert!(MilterAddress::parse("local:/x.sock").is_ok());
    }

    #[test]
    fn bad_forms_say_why() {
        for (input, says) in [
            ("127.0.0.1:11332", "expected inet:HOST:PORT"),
            ("tcp:127.0.0.1:1", "expected inet:HOST:PORT"),
            ("inet:127.0.0.1", "port"),
            ("inet:127.0.0.1:0", "port"),
            ("inet:127.0.0.1:99999", "port"),
            ("inet::11332", "host is missing"),
            ("inet:[::1:11332", "closing ]"),
            ("inet:ex ample:25", "host"),
            ("unix:relative.sock", "absolute"),
            ("", "expected"),
        ] {
            let e = MilterAddress::parse(input).unwrap_err().to_string();
            assert!(e.contains(says), "{input}: {e}");
            assert!(e.contains(&format!("{input:?}")), "{e}");
        }
        let long = format!("unix:/{}", "a".repeat(120));
        assert!(MilterAddress::parse(&long).is_err());
    }
}
