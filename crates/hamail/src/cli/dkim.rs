//! The `dkim` verbs: signing keys of our domains, each published as
//! `SELECTOR._domainkey.DOMAIN TXT` in our zone in the same raft entry.
//! Selectors and algorithms are checked here; the node generates the keys
//! (see hamail-admin's dkim.rs for why there).

use clap::Subcommand;
use hamail_admin::{AdminRequest, DkimRow};
use hamail_types::{DkimAlgorithm, DomainName, TypesError};

#[derive(Debug, Subcommand)]
pub enum DkimVerb {
    /// Generate keys for one of our domains and publish them in its zone.
    ///
    /// Without options: one RSA-2048 and one Ed25519 key (dual signing),
    /// selectors r<DATE> and e<DATE>. Every node signs the domain's mail
    /// from authenticated users and mynetworks with them once the entry is
    /// applied, which is also when the records are served.
    Add {
        domain: DomainName,
        /// The selector of a single key (a-z, 0-9, '-'); needs --algorithm.
        #[arg(long, value_parser = selector_arg)]
        selector: Option<String>,
        /// Only a key of this algorithm: rsa or ed25519.
        #[arg(long, value_parser = algorithm_arg)]
        algorithm: Option<DkimAlgorithm>,
    },
    /// List the keys: domain, selector, algorithm, created, TXT record.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Delete a key and its TXT record.
    Del {
        domain: DomainName,
        #[arg(value_parser = selector_arg)]
        selector: String,
        /// Allow deleting the domain's last key: its mail is no longer signed.
        #[arg(long)]
        last: bool,
    },
}

fn message(e: TypesError) -> String {
    match e {
        TypesError::Command(m) => m,
        other => other.to_string(),
    }
}

fn selector_arg(s: &str) -> Result<String, String> {
    hamail_types::dkim::check_selector(s).map_err(message)?;
    Ok(s.to_string())
}

fn algorithm_arg(s: &str) -> Result<DkimAlgorithm, String> {
    s.parse().map_err(message)
}

pub(super) fn dkim_request(verb: DkimVerb) -> (AdminRequest, bool) {
    match verb {
        DkimVerb::Add {
            domain,
            selector,
            algorithm,
        } => (
            AdminRequest::DkimAdd {
                domain,
                selector,
                algorithm,
            },
            false,
        ),
        DkimVerb::List { json } => (AdminRequest::DkimList, json),
        DkimVerb::Del {
            domain,
            selector,
            last,
        } => (
            AdminRequest::DkimDel {
                domain,
                selector,
                last,
            },
            false,
        ),
    }
}

pub(super) fn print_keys(rows: Vec<DkimRow>) {
    if rows.is_empty() {
        println!("no DKIM keys");
        return;
    }
    let wd = rows.iter().map(|r| r.domain.len()).max().unwrap_or(0);
    let ws = rows.iter().map(|r| r.selector.len()).max().unwrap_or(0);
    for r in rows {
        println!(
            "{:wd$}  {:ws$}  {:<7}  {} UTC  {} TXT (zone {})",
            r.domain,
            r.selector,
            r.algorithm.to_string(),
            hamail_smtp::mailq_date(r.created_ms / 1000),
            r.record,
            r.zone
        );
    }
}
