//! Authoritative DNS for hamail: zone files in and out (BIND/NSD syntax,
//! through hickory's parser with the fixes it needs), and a server that
//! answers from a lock-free snapshot of the applied zones.
//!
//! Layout, in the order a zone edit reaches an answer:
//! - `zonefile`: zone file text to stored records and back (the CLI and admin);
//! - `snapshot`: the served zones, built from the store when the applied log
//!   moves, with `names` (the name index) and `negative` (prepared
//!   NXDOMAIN/NODATA pieces) compiled into it; `notify` tells secondaries;
//! - `answer`: how a query becomes an answer (policy, referrals, negative
//!   answers, transfers; hickory's catalog for the rest);
//! - `udp`: the UDP workers' fast path (`udp/plain`: a plain query's cache
//!   key, `cache`: their answer cache) in front of `answer`;
//! - `server`: binds the listeners and runs them with the snapshot follower.

mod answer;
mod cache;
mod names;
mod negative;
mod notify;
mod server;
mod snapshot;
mod udp;
mod zonefile;

pub use server::{DnsOptions, DnsServer, DnsSockets};
pub use zonefile::{
    default_zone, parse_record_line, parse_record_selector, parse_zone_file, zone_file_text,
};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DnsError {
    #[error("line {line}: {cause}")]
    ZoneFile { line: usize, cause: String },
    #[error("invalid record {input:?}: {cause}")]
    Record { input: String, cause: String },
    #[error("cannot listen on {addr} (dns.listen): {cause}")]
    Listen { addr: String, cause: String },
    #[error("zone {zone}: {cause}")]
    Zone { zone: String, cause: String },
}
