//! DKIM for hamail (RFC 6376, RFC 8463 for Ed25519). Pure: no IO.
//!
//! - `keys.rs`: key generation, done by the node that proposes `dkim add`
//!   (apply must stay deterministic, so no key is ever drawn there), and
//!   the selectors made from the date
//! - `from.rs`: the domain of a message's RFC 5322.From, whose keys sign it
//! - `sign.rs`: keys loaded once per table version ([`Signers`]) and the
//!   signing of one message with every key of its From domain
//!
//! Canonicalization and the signatures themselves are mail-auth's (its
//! pure-Rust `rsa` and `ed25519-dalek` backend).

mod from;
mod keys;
mod sign;

pub use from::from_domain;
pub use keys::{dated_selector, generate};
pub use sign::{SIGNED_HEADERS, Signed, Signers, SigningKeyRow, headers_to_sign};

/// Why a key could not be made or loaded, or a message not signed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DkimError {
    #[error("cannot generate a {algorithm} key: {reason}")]
    Generate { algorithm: String, reason: String },
    #[error("DKIM key {selector} of {domain} cannot be loaded: {reason}")]
    Load {
        domain: String,
        selector: String,
        reason: String,
    },
    #[error("signing with {selector} of {domain} failed: {reason}")]
    Sign {
        domain: String,
        selector: String,
        reason: String,
    },
}
