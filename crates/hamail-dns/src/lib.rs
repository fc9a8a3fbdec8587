//! Authoritative DNS for hamail: zone files in and out (BIND/NSD syntax,
//! through hickory's parser with the fixes it needs), and a server that
//! answers from a lock-free snapshot of the applied zones.

mod cache;
mod names;
mod negative;
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
