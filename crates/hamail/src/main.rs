//! The `hamail` binary: `hamail serve` runs a node; every other verb is a
//! client of the local node's admin socket. This crate only wires the
//! library crates together.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod checks_cache;
mod cli;
mod dkim_cache;
mod metrics;
mod queue_backend;
mod serve;
mod versioned;

#[derive(Debug, Parser)]
#[command(
    name = "hamail",
    version,
    about = "Geo-replicated authoritative DNS server and MTA"
)]
struct Args {
    /// Config file. Without one, the embedded defaults (data in ./hamail-data).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Data directory of the node (overrides the config's node.data_dir).
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Verb,
}

#[derive(Debug, Subcommand)]
enum Verb {
    /// Run this node: raft, admin socket, metrics (and DNS and SMTP as they land).
    Serve,
    /// Show this node's raft state, membership and table sizes.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Mail domains and their kind (local, relay, virtual).
    #[command(subcommand)]
    Domain(cli::DomainVerb),
    /// Known recipients (the relay_recipient_maps of every site).
    #[command(subcommand)]
    Recipient(cli::RecipientVerb),
    /// Aliases: an address rewritten to one or more others.
    #[command(subcommand)]
    Alias(cli::AliasVerb),
    /// Per-domain transports (Postfix transport_maps syntax).
    #[command(subcommand)]
    Transport(cli::TransportVerb),
    /// Zones this cluster serves (authoritative DNS).
    #[command(subcommand)]
    Zone(cli::ZoneVerb),
    /// Records of a zone.
    #[command(subcommand)]
    Record(cli::RecordVerb),
    /// Cluster membership: init, token, join, status, leave, remove.
    #[command(subcommand)]
    Cluster(cli::ClusterVerb),
    /// The mail queue of the whole cluster (any node).
    #[command(subcommand)]
    Queue(cli::QueueVerb),
    /// Submission users (SASL AUTH): add, passwd, del, list, import.
    #[command(subcommand)]
    User(cli::UserVerb),
    /// Who may send as whom: `sender allow ADDRESS USER`.
    #[command(subcommand)]
    Sender(cli::SenderVerb),
    /// Mailbox quotas for Maildir delivery: set, del, list.
    #[command(subcommand)]
    Quota(cli::QuotaVerb),
    /// Header and body checks (Postfix regexp tables): import, list, test, clear.
    #[command(subcommand)]
    Checks(cli::ChecksVerb),
    /// DKIM signing keys, published in our zones: add, list, del.
    #[command(subcommand)]
    Dkim(cli::DkimVerb),
}

fn main() -> ExitCode {
    let args = Args::parse();
    let cfg = match load_config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hamail: error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let result = match args.command {
        Verb::Serve => serve::run(cfg),
        other => cli::run(&cfg, other),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hamail: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(args: &Args) -> anyhow::Result<hamail_config::Config> {
    let mut cfg = match &args.config {
        Some(path) => hamail_config::Config::load(path)?,
        None => hamail_config::Config::default(),
    };
    if let Some(dir) = &args.data_dir {
        cfg.node.data_dir = dir.clone();
    }
    Ok(cfg)
}
