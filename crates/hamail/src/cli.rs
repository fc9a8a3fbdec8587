//! The admin verbs: parse arguments (names are checked here, before anything
//! is sent), ask the local node over its admin socket, print for people or,
//! with --json, for scripts.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use hamail_admin::{
    AdminClient, AdminRequest, AliasRow, ClusterView, DomainRow, QueuedMessage, RecipientRow,
    SOCKET_NAME, StatusInfo, TokenResult, TransportRow, WriteResult, ZoneRow, ZoneText,
};
use hamail_config::Config;
use hamail_types::{
    DomainKind, DomainName, MailAddress, QueueEntry, QueueId, TransportSpec, parse_postfix_map,
};

use crate::Verb;

mod checks;
mod dkim;
mod quota;
mod users;
pub use checks::ChecksVerb;
pub use dkim::DkimVerb;
pub use quota::QuotaVerb;
pub use users::{SenderVerb, UserVerb};

#[derive(Debug, Subcommand)]
pub enum DomainVerb {
    /// Add a domain.
    Add {
        domain: DomainName,
        /// local (mailboxes/LMTP), relay (relayed to its transport), virtual (aliases only).
        #[arg(long, default_value = "local")]
        kind: DomainKind,
    },
    /// Delete a domain (it must have no recipients, aliases or users left).
    Del { domain: DomainName },
    /// List domains.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Change a domain's settings.
    Set {
        domain: DomainName,
        /// Largest message for the domain's recipients (20M, 10485760, ...),
        /// at most the global [smtp] message_size_limit; `global` removes it.
        #[arg(long, value_parser = quota::size_limit_arg, value_name = "SIZE")]
        message_size_limit: quota::SizeLimit,
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

#[derive(Debug, Subcommand)]
pub enum ZoneVerb {
    /// Add a zone: from a zone file, or an SOA and one NS per cluster node.
    Add {
        zone: DomainName,
        /// A BIND/NSD zone file with the zone's records.
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Delete a zone and all its records.
    Del { zone: DomainName },
    /// List zones with their serials.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Print a zone as a zone file.
    Show { zone: DomainName },
    /// Write a zone as a zone file (to FILE, or standard output).
    Export {
        zone: DomainName,
        file: Option<PathBuf>,
    },
    /// Replace a zone's records with a zone file's, atomically.
    Import { zone: DomainName, file: PathBuf },
    /// The committed changes of a zone: log index, time, proposer, serial.
    History {
        zone: DomainName,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum RecordVerb {
    /// Add a record: 'NAME TTL IN TYPE RDATA' (names relative to the zone).
    Add { zone: DomainName, record: String },
    /// Delete records: 'NAME [TYPE [RDATA]]'.
    Del { zone: DomainName, selector: String },
    /// Replace the rrset of NAME and TYPE with this record.
    Set { zone: DomainName, record: String },
}

#[derive(Debug, Subcommand)]
pub enum QueueVerb {
    /// The whole cluster's queue, like mailq: id (`!` when held), size,
    /// arrival, sender, recipients with their states.
    List {
        #[arg(long)]
        json: bool,
    },
    /// One queued message, envelope and content, like `postcat -q ID`.
    Show {
        id: QueueId,
        #[arg(long)]
        json: bool,
    },
    /// Delete messages (`postsuper -d`).
    Delete {
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        ids: Vec<QueueId>,
        #[arg(long)]
        all: bool,
    },
    /// Put messages on hold: not delivered until released (`postsuper -h`).
    Hold {
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        ids: Vec<QueueId>,
        #[arg(long)]
        all: bool,
    },
    /// Release held messages (`postsuper -H`).
    Release {
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        ids: Vec<QueueId>,
        #[arg(long)]
        all: bool,
    },
    /// Retry deferred mail now (`postqueue -f`), all of it or the named ids.
    Flush { ids: Vec<QueueId> },
}

#[derive(Debug, Subcommand)]
pub enum ClusterVerb {
    /// Create a cluster on this node: the cluster CA and a one-voter membership.
    Init,
    /// Print a single-use join token for a new node.
    Token {
        /// How long the token is valid: 90s, 30m, 1h, 2d (at most 30d).
        #[arg(long, default_value = "1h", value_parser = parse_ttl)]
        ttl: std::time::Duration,
    },
    /// Join the cluster of a member (its RPC address), with a token from `cluster token`.
    Join {
        /// A member's RPC address, host:port.
        address: String,
        #[arg(long)]
        token: String,
    },
    /// Every node: role, reachability, replication lag; term, commit and applied index.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Take this node out of the cluster (it stops afterwards).
    Leave,
    /// Remove a node (e.g. a dead one) by name or id.
    Remove { node: String },
    /// Replace the cluster CA and every member's certificate without
    /// downtime (trust both, switch, retire the old); run it again to
    /// continue a rotation that stopped.
    RotateCa {
        /// How long to wait at each phase for every member: 90s, 5m, ...
        #[arg(long, default_value = "2m", value_parser = parse_ttl)]
        wait: std::time::Duration,
    },
}

/// Parses `--ttl` and `--wait` values: `90s`, `30m`, `1h`, `2d` (seconds
/// without a unit), from 1s to 30d.
fn parse_ttl(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 90s, 30m, 1h, 2d"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => return Err(format!("invalid duration {s:?}: unit must be s, m, h or d")),
    };
    if secs == 0 || secs > 30 * 86400 {
        return Err(format!("invalid duration {s:?}: from 1s to 30d"));
    }
    Ok(std::time::Duration::from_secs(secs))
}

pub fn run(cfg: &Config, verb: Verb) -> anyhow::Result<()> {
    let export_to = match &verb {
        Verb::Zone(ZoneVerb::Export { file, .. }) => Some(file.clone()),
        _ => None,
    };
    if let Verb::Domain(DomainVerb::Set {
        domain,
        message_size_limit,
    }) = &verb
    {
        quota::check_domain_limit(cfg, domain, *message_size_limit)?;
    }
    // Read input files before connecting: a bad file never reaches the node.
    let (req, json) = request(verb)?;
    let socket = cfg.node.data_dir.join(SOCKET_NAME);
    let mut client = AdminClient::connect(&socket)?;
    let result = client.call(&req)?;
    if let Some(target) = export_to {
        let z: ZoneText = serde_json::from_value(result)?;
        return match target {
            Some(path) => std::fs::write(&path, z.text)
                .with_context(|| format!("cannot write {}", path.display())),
            None => {
                print!("{}", z.text);
                Ok(())
            }
        };
    }
    print_result(&req, result, json)
}

fn read_file(path: &std::path::Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
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
        Verb::Domain(DomainVerb::Set {
            domain,
            message_size_limit,
        }) => (
            AdminRequest::DomainSet {
                domain,
                message_size_limit: message_size_limit.0,
            },
            false,
        ),
        Verb::Quota(v) => quota::quota_request(v),
        Verb::Checks(v) => checks::checks_request(v)?,
        Verb::Dkim(v) => dkim::dkim_request(v),
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
        Verb::Zone(ZoneVerb::Add { zone, file }) => {
            let zone_file = file.as_deref().map(read_file).transpose()?;
            (AdminRequest::ZoneAdd { zone, zone_file }, false)
        }
        Verb::Zone(ZoneVerb::Del { zone }) => (AdminRequest::ZoneDel { zone }, false),
        Verb::Zone(ZoneVerb::List { json }) => (AdminRequest::ZoneList, json),
        Verb::Zone(ZoneVerb::Show { zone }) | Verb::Zone(ZoneVerb::Export { zone, .. }) => {
            (AdminRequest::ZoneShow { zone }, false)
        }
        Verb::Zone(ZoneVerb::Import { zone, file }) => (
            AdminRequest::ZoneImport {
                zone,
                zone_file: read_file(&file)?,
            },
            false,
        ),
        Verb::Zone(ZoneVerb::History { zone, json }) => (AdminRequest::ZoneHistory { zone }, json),
        Verb::Record(RecordVerb::Add { zone, record }) => {
            (AdminRequest::RecordAdd { zone, record }, false)
        }
        Verb::Record(RecordVerb::Del { zone, selector }) => {
            (AdminRequest::RecordDel { zone, selector }, false)
        }
        Verb::Record(RecordVerb::Set { zone, record }) => {
            (AdminRequest::RecordSet { zone, record }, false)
        }
        Verb::Queue(QueueVerb::List { json }) => (AdminRequest::QueueList, json),
        Verb::Queue(QueueVerb::Show { id, json }) => (AdminRequest::QueueShow { id }, json),
        Verb::Queue(QueueVerb::Delete { ids, all }) => {
            (AdminRequest::QueueDelete { ids, all }, false)
        }
        Verb::Queue(QueueVerb::Hold { ids, all }) => (AdminRequest::QueueHold { ids, all }, false),
        Verb::Queue(QueueVerb::Release { ids, all }) => {
            (AdminRequest::QueueRelease { ids, all }, false)
        }
        Verb::Queue(QueueVerb::Flush { ids }) => (AdminRequest::QueueFlush { ids }, false),
        Verb::User(v) => users::user_request(v)?,
        Verb::Sender(v) => users::sender_request(v),
        Verb::Cluster(ClusterVerb::Init) => (AdminRequest::ClusterInit, false),
        Verb::Cluster(ClusterVerb::Token { ttl }) => (
            AdminRequest::ClusterToken {
                ttl_secs: ttl.as_secs(),
            },
            false,
        ),
        Verb::Cluster(ClusterVerb::Join { address, token }) => {
            if !address.contains(':') {
                anyhow::bail!(
                    "invalid member address {address:?}: expected host:port, e.g. 192.0.2.10:7400"
                );
            }
            (AdminRequest::ClusterJoin { address, token }, false)
        }
        Verb::Cluster(ClusterVerb::Status { json }) => (AdminRequest::ClusterStatus, json),
        Verb::Cluster(ClusterVerb::Leave) => (AdminRequest::ClusterLeave, false),
        Verb::Cluster(ClusterVerb::Remove { node }) => {
            (AdminRequest::ClusterRemove { node }, false)
        }
        Verb::Cluster(ClusterVerb::RotateCa { wait }) => (
            AdminRequest::ClusterRotateCa {
                wait_secs: wait.as_secs(),
            },
            false,
        ),
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
        AdminRequest::ClusterToken { .. } => {
            let t: TokenResult = serde_json::from_value(result)?;
            println!("{}", t.token);
        }
        AdminRequest::ClusterStatus => print_cluster(serde_json::from_value(result)?),
        AdminRequest::ZoneList => {
            let rows: Vec<ZoneRow> = serde_json::from_value(result)?;
            let w = rows.iter().map(|r| r.zone.len()).max().unwrap_or(0);
            for r in rows {
                println!(
                    "{:w$}  serial {:<10}  {} records",
                    r.zone, r.serial, r.records
                );
            }
        }
        AdminRequest::ZoneShow { .. } => {
            let z: ZoneText = serde_json::from_value(result)?;
            print!("{}", z.text);
        }
        AdminRequest::ZoneHistory { .. } => {
            let rows: Vec<serde_json::Value> = serde_json::from_value(result)?;
            for r in rows {
                println!(
                    "index {:<8} time_ms {:<14} node {:<3} serial {:<10} {}",
                    r["log_index"],
                    r["time_ms"],
                    r["proposer"],
                    r["serial"],
                    r["change"].as_str().unwrap_or("")
                );
            }
        }
        AdminRequest::QueueList => print_mailq(serde_json::from_value(result)?),
        AdminRequest::QueueShow { .. } => print_postcat(serde_json::from_value(result)?),
        AdminRequest::DomainList => {
            let rows: Vec<DomainRow> = serde_json::from_value(result)?;
            let w = rows.iter().map(|r| r.domain.len()).max().unwrap_or(0);
            for r in rows {
                match r.message_size_limit {
                    Some(n) => println!(
                        "{:w$}  {:<8} message_size_limit {}",
                        r.domain,
                        r.kind,
                        hamail_types::format_byte_size(n)
                    ),
                    None => println!("{:w$}  {}", r.domain, r.kind),
                }
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
        AdminRequest::UserList { .. } => users::print_users(serde_json::from_value(result)?),
        AdminRequest::SenderList => users::print_senders(serde_json::from_value(result)?),
        AdminRequest::QuotaList { .. } => quota::print_quotas(serde_json::from_value(result)?),
        AdminRequest::ChecksList { .. } => checks::print_tables(serde_json::from_value(result)?),
        AdminRequest::ChecksTest { .. } => checks::print_test(serde_json::from_value(result)?),
        AdminRequest::DkimList => dkim::print_keys(serde_json::from_value(result)?),
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

/// `queue list` in mailq's layout.
fn print_mailq(entries: Vec<QueueEntry>) {
    if entries.is_empty() {
        println!("Mail queue is empty");
        return;
    }
    println!(
        "{:<17} {:>8} {:<20} -Sender/Recipient-------",
        "-Queue ID-", "--Size--", "----Arrival Time----"
    );
    let mut bytes = 0u64;
    for e in &entries {
        bytes += e.size;
        let id = format!("{}{}", e.queue_id, if e.held { "!" } else { "" });
        let sender = e.sender_str();
        println!(
            "{id:<17} {:>8} {:<20} {}",
            e.size,
            hamail_smtp::mailq_date(e.arrival_ms / 1000),
            if sender.is_empty() {
                "MAILER-DAEMON".to_string()
            } else {
                sender
            }
        );
        for r in &e.recipients {
            let why = match &r.status {
                hamail_types::RecipientStatus::Deferred { reason, .. } => {
                    format!("({reason})\n{:48}", "")
                }
                _ => String::new(),
            };
            println!("{:48}{why}{} ({})", "", r.address, r.status.name());
        }
        println!();
    }
    println!(
        "-- {} Kbytes in {} Request{}.",
        bytes.div_ceil(1024),
        entries.len(),
        if entries.len() == 1 { "" } else { "s" }
    );
}

/// `queue show` in postcat's layout.
fn print_postcat(m: QueuedMessage) {
    let e = &m.entry;
    let id = &e.queue_id;
    println!("*** ENVELOPE RECORDS {id} ***");
    println!("message_size: {}", e.size);
    println!(
        "message_arrival_time: {}",
        hamail_smtp::rfc5322_date(e.arrival_ms / 1000)
    );
    println!("owner_node: {} (lease epoch {})", e.owner, e.epoch);
    if e.held {
        println!("held: yes");
    }
    if let Some(filter) = &e.content_filter {
        println!("content_filter: {filter}");
    }
    println!("client: {} helo={}", e.client, e.helo);
    println!("sender: {}", e.sender_str());
    for r in &e.recipients {
        println!("recipient: {} ({})", r.address, r.status.name());
    }
    println!("*** MESSAGE CONTENTS {id} ***");
    print!("{}", m.message.replace("\r\n", "\n"));
    println!("*** MESSAGE FILE END {id} ***");
}

fn opt(v: Option<u64>) -> String {
    v.map(|x| x.to_string()).unwrap_or_else(|| "-".into())
}

fn print_cluster(v: ClusterView) {
    println!(
        "leader {}, term {}, last log {}, commit {}, applied {} (as seen by node {})",
        opt(v.leader),
        v.term,
        opt(v.last_log_index),
        opt(v.commit_index),
        opt(v.applied_index),
        v.reported_by
    );
    let smtp = "SMTP";
    println!(
        "{:>4}  {:<14} {:<10} {:<8} {:<9} {:>8} {:>7} {:>6}  {:<21} {:<21} {smtp}",
        "ID", "NAME", "SITE", "ROLE", "REACHABLE", "CONTACT", "MATCH", "LAG", "RPC", "DNS"
    );
    for m in v.members {
        println!(
            "{:>4}  {:<14} {:<10} {:<8} {:<9} {:>8} {:>7} {:>6}  {:<21} {:<21} {}",
            m.id,
            m.name,
            m.site,
            m.role,
            match m.reachable {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "?",
            },
            m.last_contact_ms
                .map(|x| format!("{x}ms"))
                .unwrap_or_else(|| "-".into()),
            opt(m.match_index),
            opt(m.lag),
            m.rpc_addr,
            m.dns_addr,
            m.smtp_addr
        );
    }
}

fn print_status(s: StatusInfo) {
    println!("node        {}, site {}", s.name, s.site);
    println!("version     {}", s.version);
    println!("data dir    {}", s.data_dir);
    let Some(r) = &s.raft else {
        println!("cluster     none yet: run `hamail cluster init` or `hamail cluster join`");
        return;
    };
    println!("node id     {}", r.node_id);
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
        println!("  {t:<14} {n}");
    }
    println!("state       {}", s.state_digest);
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::parse_ttl;

    #[test]
    fn ttl_units_and_bounds() {
        assert_eq!(parse_ttl("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_ttl("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_ttl(" 1h "), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_ttl("30d"), Ok(Duration::from_secs(30 * 86400)));
        assert!(parse_ttl("0s").is_err());
        assert!(parse_ttl("31d").is_err());
        assert!(parse_ttl("5w").is_err());
        assert!(parse_ttl("h").is_err());
    }
}
