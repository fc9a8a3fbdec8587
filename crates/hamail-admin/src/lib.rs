//! The admin API: what the CLI asks a local node over the admin socket
//! (`<data_dir>/admin.sock`, mode 0600, one JSON object per line each way),
//! the client the CLI uses, and the server `hamail serve` runs.

mod checks;
mod client;
mod dkim;
mod limits;
mod protocol;
mod server;
mod users;

pub use checks::{ChecksRuleRow, ChecksTableView, ChecksTestResult};
pub use client::AdminClient;
pub use dkim::DkimRow;
pub use protocol::{
    AdminRequest, AdminResponse, AliasRow, ClusterView, DomainRow, MemberView, QueuedMessage,
    QuotaRow, RecipientRow, SenderRow, StatusInfo, TokenResult, TransportRow, UserRow, WriteResult,
    ZoneRow, ZoneText,
};
pub use server::{AdminContext, SOCKET_NAME, serve};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    #[error(
        "cannot reach hamail at {path}: {reason} (is `hamail serve` running with this data directory?)"
    )]
    Connect { path: String, reason: String },
    #[error("admin socket {path}: {reason}")]
    Io { path: String, reason: String },
    #[error("malformed reply from the server: {0}")]
    Reply(String),
    /// The server refused or failed the request; the message says why.
    #[error("{0}")]
    Server(String),
    #[error("cannot listen on the admin socket {path}: {reason}")]
    Listen { path: String, reason: String },
}
