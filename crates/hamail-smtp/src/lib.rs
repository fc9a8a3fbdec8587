//! hamail-smtp: the receiving half of the MTA. A smtpd that takes mail for
//! the cluster's domains (and from mynetworks for anywhere) and answers 250
//! only when the backend — the replicated queue — has it on a majority.
//!
//! The crate knows nothing of raft: the binary hands it a [`Backend`] (and
//! the queue manager an [`outbound::QueueStore`]).
//!
//! Layout, in the order a message meets it:
//! - `server.rs`: the listener (MX, submission, submission over implicit
//!   TLS, or a content filter's re-injection), connection limits, one task
//!   per session
//! - `session/`: one SMTP session by phase (`conn.rs` socket IO,
//!   `envelope.rs` HELO/MAIL/RCPT, `auth.rs` the AUTH exchange, `body.rs`
//!   DATA/BDAT and the 250 after the commit, `content.rs` the content
//!   stages at the end of DATA (`checks.rs` header/body checks, `milter.rs`
//!   milters through hamail-milter, `dkim.rs` DKIM signing through
//!   hamail-dkim), `starttls.rs`, `reinject.rs` the
//!   re-injection listener's rules), over `data.rs`
//!   (pure body readers), `policy.rs` (recipient checks, aliases, sender
//!   ownership), `auth.rs` (where passwords are checked, the brute-force
//!   limiter), `dnsbl.rs` (blocklist lookups at RCPT) and `headers.rs`
//! - `outbound/`: delivery of queued mail, by role (see its `mod.rs`)

mod auth;
mod data;
pub mod dnsbl;
mod headers;
pub mod outbound;
mod policy;
mod server;
mod session;
mod tls;

use std::future::Future;
use std::time::Duration;

use hamail_types::{MailAddress, NewMessage, NodeId};

pub use auth::{AuthService, PasswordSource};
pub use data::{DataEvent, DataReader};
pub use headers::{mailq_date, received_header, rfc5322_date};
pub use policy::{
    AliasError, Tables, Verdict, check_recipient, expand_aliases, in_networks, sender_owned,
};
pub use server::{Smtpd, serve_stream};
pub use session::IoStream;
pub use tls::{ensure_self_signed, server_config};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SmtpError {
    #[error("TLS: {0}")]
    Tls(String),
    #[error("cannot listen on {addr} (smtp.listen): {reason}")]
    Listen { addr: String, reason: String },
}

/// The replicated state could not be read or written through a [`Tables`]
/// or [`outbound::QueueStore`]. Its text is the operator's: shown in logs
/// (and, for an alias lookup, in the 550 reply) as the store gave it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// A table or the queue could not be read.
    #[error("{0}")]
    Read(String),
    /// This node has no raft node yet (before `cluster init` or `join`).
    #[error("this node is not in a cluster yet")]
    NotInCluster,
    /// A proposal did not commit.
    #[error("{0}")]
    Commit(String),
}

/// Why a message could not be queued. Either way the client hears 451 and
/// keeps the message: nothing that is not durable is answered 250.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum EnqueueError {
    /// No majority reachable (or it did not answer in time).
    #[error("no quorum: {0}")]
    NoQuorum(String),
    #[error("{0}")]
    Failed(String),
}

/// What the smtpd needs from the rest of hamail.
pub trait Backend: Tables + Send + Sync + 'static {
    fn node_id(&self) -> NodeId;
    /// Whether a write could be committed now (else new sessions get 421).
    fn has_quorum(&self) -> bool;
    /// Commits the message on a majority; returns only when it is durable.
    fn enqueue(&self, message: NewMessage)
    -> impl Future<Output = Result<(), EnqueueError>> + Send;
    /// Replaces a user's password hash with `new` if it is still `old` (the
    /// upgrade to Argon2id after a login with an imported hash). Best
    /// effort: the login has succeeded either way.
    fn rehash(
        &self,
        user: MailAddress,
        old: String,
        new: String,
    ) -> impl Future<Output = Result<(), BackendError>> + Send;
}

/// What a listener is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// An MX (port 25): mail for our domains, relaying for mynetworks; AUTH
    /// only when `Settings::auth` is set (`smtpd_sasl_auth_enable`).
    Mx,
    /// Submission (587, RFC 6409): STARTTLS before AUTH and MAIL, and MAIL
    /// only once authenticated.
    Submission,
    /// Submission over implicit TLS (465, RFC 8314): TLS from the first
    /// byte, then the rules of `Submission`.
    Submissions,
    /// Where an after-queue content filter hands mail back (Postfix's
    /// `127.0.0.1:10025 ... smtpd -o content_filter=`): mynetworks only,
    /// no recipient checks, no content stages, no content filter
    /// (session/reinject.rs).
    Reinject,
}

impl Role {
    /// MAIL needs an authenticated client.
    pub fn is_submission(self) -> bool {
        matches!(self, Role::Submission | Role::Submissions)
    }

    /// The name in log lines (Postfix's service names).
    pub fn service(self) -> &'static str {
        match self {
            Role::Mx => "smtp",
            Role::Submission => "submission",
            Role::Submissions => "submissions",
            Role::Reinject => "reinject",
        }
    }
}

/// The smtpd's settings, with Postfix's names where Postfix has one.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `myhostname`: in the banner, EHLO and Received headers.
    pub hostname: String,
    pub message_size_limit: usize,
    pub smtpd_recipient_limit: usize,
    /// Longest command line accepted.
    pub line_length_limit: usize,
    /// Time a client has for each command line or body read.
    pub smtpd_timeout: Duration,
    /// Time a whole DATA or BDAT transfer may take.
    pub smtpd_data_time_limit: Duration,
    pub smtpd_client_connection_count_limit: usize,
    /// Sessions at once, all clients together.
    pub smtpd_max_connections: usize,
    pub smtpd_hard_error_limit: u32,
    pub mynetworks: Vec<ipnet::IpNet>,
    /// STARTTLS, when configured (it is by default); the whole session on
    /// a `Role::Submissions` listener.
    pub tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    /// What this listener is for.
    pub role: Role,
    /// SMTP AUTH: offered when set (always on submission listeners).
    pub auth: Option<std::sync::Arc<AuthService>>,
    /// DNS blocklists checked at RCPT (`reject_rbl_client`) for clients
    /// outside mynetworks that have not authenticated.
    pub dnsbl: Option<std::sync::Arc<dnsbl::Dnsbl>>,
    /// Milters run at the end of DATA, in order (`smtpd_milters`).
    pub milters: Vec<hamail_milter::MilterAddress>,
    /// What a message gets when a milter fails (`milter_default_action`).
    pub milter_default_action: hamail_milter::DefaultAction,
    /// `milter_connect_timeout`, `milter_command_timeout`,
    /// `milter_content_timeout`.
    pub milter_timeouts: hamail_milter::Timeouts,
    /// `content_filter`: where messages taken on this listener are
    /// delivered instead of to their recipients (marked on the queue entry
    /// at accept time). Never set on a `Role::Reinject` listener.
    pub content_filter: Option<hamail_types::TransportSpec>,
}

impl Settings {
    /// Postfix's defaults, for a host name.
    pub fn with_defaults(hostname: &str) -> Self {
        Settings {
            hostname: hostname.to_string(),
            message_size_limit: 10 << 20,
            smtpd_recipient_limit: 1000,
            line_length_limit: 2048,
            smtpd_timeout: Duration::from_secs(300),
            smtpd_data_time_limit: Duration::from_secs(600),
            smtpd_client_connection_count_limit: 50,
            smtpd_max_connections: 2048,
            smtpd_hard_error_limit: 20,
            mynetworks: vec![
                "127.0.0.1/32".parse().expect("literal network"),
                "::1/128".parse().expect("literal network"),
            ],
            tls: None,
            role: Role::Mx,
            auth: None,
            dnsbl: None,
            milters: Vec::new(),
            milter_default_action: hamail_milter::DefaultAction::Tempfail,
            milter_timeouts: hamail_milter::Timeouts::default(),
            content_filter: None,
        }
    }
}
