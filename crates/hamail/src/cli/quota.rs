//! The `quota` verbs (mailbox quotas for Maildir delivery) and the check
//! behind `domain set --message-size-limit`. Sizes are read here
//! (`100M`, `2G`, bytes), so a bad one never reaches the node.

use anyhow::bail;
use clap::Subcommand;
use hamail_admin::{AdminRequest, QuotaRow};
use hamail_config::Config;
use hamail_types::{DomainName, MailAddress, format_byte_size, parse_byte_size};

#[derive(Debug, Subcommand)]
pub enum QuotaVerb {
    /// Set the quota of a mailbox we host (a recipient of a local domain).
    ///
    /// A Maildir delivery that would take the mailbox past it is bounced
    /// (5.2.2) or deferred (4.2.2), per `[delivery] overquota`.
    Set {
        address: MailAddress,
        /// Bytes, or with a binary suffix: 512K, 100M, 2G, 1T.
        #[arg(value_parser = size_arg)]
        bytes: u64,
    },
    /// Delete a mailbox's quota (no limit then).
    Del { address: MailAddress },
    /// List quotas: address, quota (bytes).
    List {
        /// Only this domain's quotas.
        #[arg(long)]
        domain: Option<DomainName>,
        #[arg(long)]
        json: bool,
    },
}

/// A size argument (`100M`, `2G`, `10485760`).
pub fn size_arg(s: &str) -> Result<u64, String> {
    parse_byte_size(s).map_err(|e| e.to_string())
}

/// `--message-size-limit`: a size, or `global` to go back to the global
/// `message_size_limit`.
pub fn size_limit_arg(s: &str) -> Result<SizeLimit, String> {
    if s.eq_ignore_ascii_case("global") {
        return Ok(SizeLimit(None));
    }
    size_arg(s).map(|n| SizeLimit(Some(n)))
}

/// A per-domain limit, or none (the global one).
#[derive(Debug, Clone, Copy)]
pub struct SizeLimit(pub Option<u64>);

/// A domain's limit must be below this node's global `message_size_limit`
/// (above it, the global limit would refuse the message first anyway, and
/// the setting would only mislead).
pub fn check_domain_limit(
    cfg: &Config,
    domain: &DomainName,
    limit: SizeLimit,
) -> anyhow::Result<()> {
    let global = cfg.smtp.message_size_limit as u64;
    if let Some(n) = limit.0
        && n > global
    {
        bail!(
            "message size limit {} ({n} bytes) for {domain} is above the global [smtp] message_size_limit of {global} bytes; nothing changed",
            format_byte_size(n)
        );
    }
    Ok(())
}

pub(super) fn quota_request(verb: QuotaVerb) -> (AdminRequest, bool) {
    match verb {
        QuotaVerb::Set { address, bytes } => (AdminRequest::QuotaSet { address, bytes }, false),
        QuotaVerb::Del { address } => (AdminRequest::QuotaDel { address }, false),
        QuotaVerb::List { domain, json } => (AdminRequest::QuotaList { domain }, json),
    }
}

pub(super) fn print_quotas(rows: Vec<QuotaRow>) {
    let w = rows.iter().map(|r| r.address.len()).max().unwrap_or(0);
    for r in rows {
        println!(
            "{:w$}  {:>8}  ({} bytes)",
            r.address,
            format_byte_size(r.bytes),
            r.bytes
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_domain_limit_above_the_global_one_is_refused() {
        let cfg = Config::default();
        let d = DomainName::parse("example.jp").unwrap();
        let global = cfg.smtp.message_size_limit as u64;
        assert!(check_domain_limit(&cfg, &d, SizeLimit(Some(global))).is_ok());
        assert!(check_domain_limit(&cfg, &d, SizeLimit(None)).is_ok());
        let e = check_domain_limit(&cfg, &d, SizeLimit(Some(global + 1)))
            .unwrap_err()
            .to_string();
        assert!(e.contains("above the global"), "{e}");
        assert!(size_limit_arg("global").unwrap().0.is_none());
        assert_eq!(size_limit_arg("20M").unwrap().0, Some(20 << 20));
        assert!(size_limit_arg("20X").is_err());
    }
}
