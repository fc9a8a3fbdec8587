//! The admin verbs: parse arguments (names are checked here, before anything
//! is sent), ask the local node over its admin socket, print for people or,
//! with --json, for scripts.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use hamail_admin::{
    AdminClient, AdminRequest, AliasRow, DomainRow, RecipientRow, SOCKET_NAME, StatusInfo,
    TransportRow, WriteResult,
};
use hamail_config::Config;
use hamail_types::{DomainKind, DomainName, MailAddress, TransportSpec, parse_postfix_map};

use crate::Verb;

#[derive(Debug, Subcommand)]
pub enum DomainVerb {
    /// Add a domain.
    Add {
        domain: DomainName,
        /// local (mailboxes/LMTP), relay (relayed to its transport), virtual (aliases only).
        #[arg(long, default_value = "local")]
        kind: DomainKind,
    },
    /// Delete a domain (it must have no recipients or aliases left).
    Del { domain: DomainName },
    /// List domains.
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum RecipientVerb {
    /// Add a recipient (its domain must exist and not be virtual).
    Add {
        address: MailAddress,
        /// The map value kept with it (Postfix's `address value`).
        #[arg(default_value = "")]
        value: String,
    },
    /// Delete a recipient.
    Del { address: MailAddress },
    /// List recipients.
    List {
        /// Only this domain's recipients.
        #[arg(long)]
        domain: Option<DomainName>,
        #[arg(long)]
        json: bool,
    },
    /// Import a Postfix map file (`address value` lines): all of it, or
    /// nothing if any line is bad.
    Import { file: PathBuf },
}

#[derive(Debug, Subcommand)]
pub enum AliasVerb {
    /// Add targets to an alias (created if new).
    Add {
        address: MailAddress,
        #[arg(required = true)]
        targets: Vec<MailAddress>,
    },
    /// Delete an alias, or only the given targets.
    Del {
        address: MailAddress,
        targets: Vec<MailAddress>,
    },
    /// List aliases.
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum TransportVerb {
    /// Route a domain: smtp:[host]:port, smtp:host (MX lookup), lmtp:host:port, maildir:/path.
    Set {
        domain: DomainName,
        spec: TransportSpec,
        /// Tried when the main transport fails; repeat for more.
        #[arg(long)]
        fallback: Vec<TransportSpec>,
    },
    /// Delete a domain's transport.
    Del { domain: DomainName },
    /// List transports.
    List {
        #[arg(long)]
        json: bool,
    },
}

pub fn run(cfg: &Config, verb: Verb) -> anyhow::Result<()> {
    // Read input files before connecting: a bad file never reaches the node.
    let (req, json) = request(verb)?;
    let socket = cfg.node.data_dir.join(SOCKET_NAME);
    let mut client = AdminClient::connect(&socket)?;
    let result = client.call(&req)?;
    print_result(&req, result, json)
}

fn request(verb: Verb) -> anyhow::Result<(AdminRequest, bool)> {
    Ok(match verb {
        Verb::Serve => unreachable_serve(),
        Verb::Status { json } => (AdminRequest::Status, json),
        Verb::Domain(DomainVerb::Add { domain, kind }) => {
            (AdminRequest::DomainAdd { domain, kind }, false)
        }
        Verb::Domain(DomainVerb::Del { domain }) => (AdminRequest::DomainDel { domain }, false),
        Verb::Domain(DomainVerb::List { json }) => (AdminRequest::DomainList, json),
        Verb::Recipient(RecipientVerb::Add { address, value }) => {
            (AdminRequest::RecipientAdd { address, value }, false)
        }
        Verb::Recipient(RecipientVerb::Del { address }) => {
            (AdminRequest::RecipientDel { address }, false)
        }
        Verb::Recipient(RecipientVerb::List { domain, json }) => {
            (AdminRequest::RecipientList { domain }, json)
        }
        Verb::Recipient(RecipientVerb::Import { file }) => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let entries = parse_postfix_map(&text)
                .with_context(|| format!("{}: nothing imported", file.display()))?;
            if entries.is_empty() {
                anyhow::bail!(
                    "{}: no recipients in the file, nothing imported",
                    file.display()
                );
            }
            let entries = entries.into_iter().map(|e| (e.address, e.value)).collect();
            (AdminRequest::RecipientImport { entries }, false)
        }
        Verb::Alias(AliasVerb::Add { address, targets }) => {
            (AdminRequest::AliasAdd { address, targets }, false)
        }
        Verb::Alias(AliasVerb::Del { address, targets }) => {
            (AdminRequest::AliasDel { address, targets }, false)
        }
        Verb::Alias(AliasVerb::List { json }) => (AdminRequest::AliasList, json),
        Verb::Transport(TransportVerb::Set {
            domain,
            spec,
            fallback,
        }) => (
            AdminRequest::TransportSet {
                domain,
                spec,
                fallback,
            },
            false,
        ),
        Verb::Transport(TransportVerb::Del { domain }) => {
            (AdminRequest::TransportDel { domain }, false)
        }
        Verb::Transport(TransportVerb::List { json }) => (AdminRequest::TransportList, json),
    })
}

fn unreachable_serve() -> ! {
    // main() dispatches Serve before calling into the CLI.
    eprintln!("hamail: internal error: serve reached the admin client");
    std::process::exit(70)
}

fn print_result(req: &AdminRequest, result: serde_json::Value, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(&result)?);
        return Ok(());
    }
    match req {
        AdminRequest::Status => print_status(serde_json::from_value(result)?),
        AdminRequest::DomainList => {
            let rows: Vec<DomainRow> = serde_json::from_value(result)?;
            let w = rows.iter().map(|r| r.domain.len()).max().unwrap_or(0);
            for r in rows {
                println!("{:w$}  {}", r.domain, r.kind);
            }
        }
        AdminRequest::RecipientList { .. } => {
            let rows: Vec<RecipientRow> = serde_json::from_value(result)?;
            for r in rows {
                if r.value.is_empty() {
                    println!("{}", r.address);
                } else {
                    println!("{} {}", r.address, r.value);
                }
            }
        }
        AdminRequest::AliasList => {
            let rows: Vec<AliasRow> = serde_json::from_value(result)?;
            for r in rows {
                println!("{} {}", r.address, r.targets.join(", "));
            }
        }
        AdminRequest::TransportList => {
            let rows: Vec<TransportRow> = serde_json::from_value(result)?;
            let w = rows.iter().map(|r| r.domain.len()).max().unwrap_or(0);
            for r in rows {
                if r.fallback.is_empty() {
                    println!("{:w$}  {}", r.domain, r.spec);
                } else {
                    println!(
                        "{:w$}  {}  (fallback {})",
                        r.domain,
                        r.spec,
                        r.fallback.join(", ")
                    );
                }
            }
        }
        _ => {
            let w: WriteResult = serde_json::from_value(result)?;
            for line in w.applied {
                println!("{line}");
            }
        }
    }
    Ok(())
}

fn print_status(s: StatusInfo) {
    let r = &s.raft;
    let opt = |v: Option<u64>| v.map(|x| x.to_string()).unwrap_or_else(|| "-".into());
    println!("node        {} (id {}), site {}", s.name, r.node_id, s.site);
    println!("version     {}", s.version);
    println!("data dir    {}", s.data_dir);
    println!(
        "raft        {} in term {}, leader {}",
        r.state,
        r.term,
        opt(r.leader)
    );
    println!(
        "log         last {}, applied {}, snapshot {}, purged {}",
        opt(r.last_log_index),
        opt(r.applied_index),
        opt(r.snapshot_index),
        opt(r.purged_index)
    );
    println!("members");
    for (id, n) in &r.nodes {
        let role = if r.voters.contains(id) {
            if r.leader == Some(*id) {
                "leader"
            } else {
                "voter"
            }
        } else {
            "learner"
        };
        println!(
            "  {id:>4}  {:<16} {:<12} {:<8} rpc {}",
            n.name, n.site, role, n.rpc_addr
        );
    }
    println!("tables");
    for (t, n) in &s.tables {
        println!("  {t:<12} {n}");
    }
    println!("state       {}", s.state_digest);
}
