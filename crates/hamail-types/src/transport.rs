//! Transport specs in Postfix's transport_maps syntax: `smtp:[host]:port`
//! (no MX lookup), `smtp:host` (MX lookup), `lmtp:host:port`,
//! `lmtp:unix:/path`, `maildir:/path`.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{DomainName, TypesError};

/// Where a transport connects to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NextHop {
    Domain(DomainName),
    Ip(IpAddr),
}

impl fmt::Display for NextHop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NextHop::Domain(d) => write!(f, "{d}"),
            NextHop::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
#[non_exhaustive]
pub enum TransportSpec {
    /// SMTP to `host`. `mx_lookup` is false for the bracketed form `[host]`.
    Smtp {
        host: NextHop,
        port: Option<u16>,
        mx_lookup: bool,
    },
    /// LMTP over TCP (e.g. Dovecot's LMTP listener).
    Lmtp { host: NextHop, port: u16 },
    /// LMTP over a Unix socket.
    LmtpUnix { path: String },
    /// Maildir delivery under a base directory.
    Maildir { path: String },
}

fn parse_host(input: &str, host: &str) -> Result<NextHop, TypesError> {
    let terr = |reason: String| TypesError::Transport {
        input: input.to_string(),
        reason,
    };
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(NextHop::Ip(ip));
    }
    DomainName::parse(host)
        .map(NextHop::Domain)
        .map_err(|e| terr(format!("host: {e}")))
}

fn parse_port(input: &str, port: &str) -> Result<u16, TypesError> {
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(TypesError::Transport {
            input: input.to_string(),
            reason: format!("port {port:?} is not a number from 1 to 65535"),
        }),
    }
}

/// Splits `[host]:port`, `[host]`, `host:port` or `host` (IPv6 only in brackets).
fn split_host_port<'a>(
    input: &str,
    rest: &'a str,
) -> Result<(&'a str, bool, Option<&'a str>), TypesError> {
    let terr = |reason: &str| TypesError::Transport {
        input: input.to_string(),
        reason: reason.to_string(),
    };
    if let Some(inner) = rest.strip_prefix('[') {
        let (host, after) = inner
            .split_once(']')
            .ok_or_else(|| terr("missing ']' after the host"))?;
        let host = host.strip_prefix("ipv6:").unwrap_or(host);
        match after {
            "" => Ok((host, true, None)),
            p => match p.strip_prefix(':') {
                Some(port) => Ok((host, true, Some(port))),
                None => Err(terr("expected ':port' after ']'")),
            },
        }
    } else {
        match rest.rsplit_once(':') {
            Some((h, _)) if h.contains(':') => Err(terr(
                "an IPv6 next hop must be written in brackets: [ipv6:addr]",
            )),
            Some((h, p)) => Ok((h, false, Some(p))),
            None => Ok((rest, false, None)),
        }
    }
}

impl TransportSpec {
    pub fn parse(input: &str) -> Result<Self, TypesError> {
        let terr = |reason: &str| TypesError::Transport {
            input: input.to_string(),
            reason: reason.to_string(),
        };
        let (kind, rest) = input
            .split_once(':')
            .ok_or_else(|| terr("expected TRANSPORT:NEXTHOP, e.g. smtp:[mx.example.com]:25"))?;
        if rest.is_empty() {
            return Err(terr("missing next hop"));
        }
        if rest.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(terr("whitespace in the next hop"));
        }
        match kind.to_ascii_lowercase().as_str() {
            "smtp" | "relay" => {
                let (host, bracketed, port) = split_host_port(input, rest)?;
                let port = port.map(|p| parse_port(input, p)).transpose()?;
                let host = parse_host(input, host)?;
                if matches!(host, NextHop::Ip(_)) && !bracketed {
                    return Err(terr(
                        "an IP next hop must be bracketed: smtp:[192.0.2.1]:25",
                    ));
                }
                Ok(TransportSpec::Smtp {
                    host,
                    port,
                    mx_lookup: !bracketed,
                })
            }
            "lmtp" => {
                if let Some(path) = rest.strip_prefix("unix:") {
                    if !path.starts_with('/') {
                        return Err(terr("the LMTP socket path must be absolute"));
                    }
                    return Ok(TransportSpec::LmtpUnix {
                        path: path.to_string(),
                    });
                }
                let (host, _, port) = split_host_port(input, rest)?;
                let port = port
                    .map(|p| parse_port(input, p))
                    .transpose()?
                    .unwrap_or(24);
                Ok(TransportSpec::Lmtp {
                    host: parse_host(input, host)?,
                    port,
                })
            }
            "maildir" => {
                if !rest.starts_with('/') {
                    return Err(terr("the maildir path must be absolute"));
                }
                if rest.split('/').any(|c| c == "..") {
                    return Err(terr("the maildir path must not contain '..'"));
                }
                Ok(TransportSpec::Maildir {
                    path: rest.to_string(),
                })
            }
            other => Err(terr(&format!(
                "unknown transport {other:?} (smtp, relay, lmtp or maildir)"
            ))),
        }
    }
}

fn fmt_host(host: &NextHop) -> String {
    match host {
        NextHop::Ip(IpAddr::V6(ip)) => format!("ipv6:{ip}"),
        other => other.to_string(),
    }
}

impl fmt::Display for TransportSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TransportSpec::Smtp {
                host,
                port,
                mx_lookup,
            } => {
                let h = fmt_host(host);
                let h = if *mx_lookup { h } else { format!("[{h}]") };
                match port {
                    Some(p) => write!(f, "smtp:{h}:{p}"),
                    None => write!(f, "smtp:{h}"),
                }
            }
            TransportSpec::Lmtp { host, port } => write!(f, "lmtp:{}:{port}", fmt_host(host)),
            TransportSpec::LmtpUnix { path } => write!(f, "lmtp:unix:{path}"),
            TransportSpec::Maildir { path } => write!(f, "maildir:{path}"),
        }
    }
}

impl FromStr for TransportSpec {
    type Err = TypesError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for TransportSpec {
    type Error = TypesError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<TransportSpec> for String {
    fn from(t: TransportSpec) -> String {
        t.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_postfix_syntax() {
        for (input, shown) in [
            (
                "smtp:[primary.example.jp]:587",
                "smtp:[primary.example.jp]:587",
            ),
            ("smtp:example.jp", "smtp:example.jp"),
            ("relay:[10.0.0.1]", "smtp:[10.0.0.1]"),
            ("smtp:[ipv6:2001:db8::1]:25", "smtp:[ipv6:2001:db8::1]:25"),
            ("lmtp:127.0.0.1:24", "lmtp:127.0.0.1:24"),
            ("lmtp:unix:/run/dovecot/lmtp", "lmtp:unix:/run/dovecot/lmtp"),
            ("maildir:/var/mail/vhosts", "maildir:/var/mail/vhosts"),
        ] {
            let t = TransportSpec::parse(input).unwrap();
            assert_eq!(t.to_string(), shown);
            assert_eq!(TransportSpec::parse(shown).unwrap(), t);
        }
        assert!(matches!(
            TransportSpec::parse("smtp:example.jp").unwrap(),
            TransportSpec::Smtp {
                mx_lookup: true,
                ..
            }
        ));
    }

    #[test]
    fn refuses_bad_specs() {
        for bad in [
            "",
            "smtp",
            "smtp:",
            "smtp:[host",
            "smtp:[host]x",
            "smtp:host:0",
            "smtp:host:99999",
            "smtp:host:x",
            "smtp:1.2.3.4",
            "pipe:foo",
            "maildir:relative/path",
            "maildir:/a/../b",
            "lmtp:unix:sock",
            "smtp:bad_host",
            "smtp:a b",
        ] {
            assert!(TransportSpec::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
