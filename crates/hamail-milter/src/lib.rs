//! hamail-milter: the MTA side of the Sendmail milter protocol (version 6),
//! so that rspamd, OpenDKIM or any libmilter filter can judge and change a
//! message before it is queued. No hamail dependency: the smtpd
//! (hamail-smtp, session/milter.rs) calls it at the end of DATA.
//!
//! Layout, in the order a conversation meets it:
//! - `address.rs`: `inet:HOST:PORT` and `unix:/path`, parsed at config load
//! - `client.rs`: one conversation per message and milter, with Postfix's
//!   three timeouts; its `Outcome` (verdict, changes, quarantine)
//! - `wire.rs`: the packets (pure encode/decode, bounded lengths)
//! - `message.rs`: headers and body as a milter indexes them, and the
//!   header/body changes applied (pure)

mod address;
mod client;
mod message;
pub mod wire;

pub use address::{AddressError, MilterAddress};
pub use client::{
    Change, Outcome, REJECT_REPLY, TEMPFAIL_REPLY, Timeouts, Transaction, Verdict, check,
};
pub use message::{Header, HeaderChange, Message};

/// What to do with a message when a milter fails (cannot be reached, times
/// out, breaks the protocol): Postfix's `milter_default_action`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DefaultAction {
    /// `451 4.7.1 Service unavailable - try again later` (Postfix's default).
    #[default]
    Tempfail,
    /// Go on as if the milter were not configured.
    Accept,
    /// `550 5.7.1 Command rejected`.
    Reject,
}

/// Why a milter conversation failed. The text follows Postfix's warnings;
/// the caller prefixes `milter ADDRESS: `.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MilterError {
    #[error("can't connect: {0}")]
    Connect(std::io::Error),
    #[error("can't connect: timed out after {}", human(*.0))]
    ConnectTimeout(std::time::Duration),
    #[error("timed out after {} during {what}", human(*after))]
    Timeout {
        what: &'static str,
        after: std::time::Duration,
    },
    #[error("can't {} {what}: {source}", if *reading { "read the reply to" } else { "send" })]
    Io {
        what: &'static str,
        reading: bool,
        source: std::io::Error,
    },
    #[error("connection closed while waiting for the reply to {0}")]
    Closed(&'static str),
    #[error("protocol error in the reply to {what}: {reason}")]
    Protocol { what: &'static str, reason: String },
    #[error("body replacement larger than the message size limit ({0} bytes)")]
    ReplacementTooBig(usize),
    #[error("header and recipient changes larger than the message size limit ({0} bytes)")]
    ChangesTooBig(usize),
}

/// `30 s`, or `500 ms` below a second.
fn human(d: std::time::Duration) -> String {
    if d.subsec_millis() == 0 && d.as_secs() > 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{} ms", d.as_millis())
    }
}
