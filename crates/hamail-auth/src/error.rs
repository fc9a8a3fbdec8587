//! The error type of hamail-auth: a stored hash that cannot be used, a hash
//! that could not be made, or a Dovecot auth server that failed us. A wrong
//! password is not an error (see [`crate::password::Verified`]).

use std::path::PathBuf;

use crate::password::Scheme;

/// Why a password could not be hashed or checked, or a Dovecot auth server
/// could not be asked. Messages never quote a password, and quote a stored
/// hash only by its `{SCHEME}` name.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The stored value does not start with a `{SCHEME}` prefix.
    #[error("stored password has no {{SCHEME}} prefix (expected e.g. {{ARGON2ID}}$argon2id$...)")]
    NoScheme,
    /// A `{SCHEME}` hamail does not accept, with the reason.
    #[error("password scheme {scheme} is refused: {reason}")]
    RefusedScheme {
        /// The scheme as written, braces included (at most 32 characters).
        scheme: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// The stored value contains a byte that cannot be in any hash and would
    /// break a passwd-file line (':', newline, control characters).
    #[error("stored password contains {what} at byte {offset}; a hash never does")]
    BadCharacter {
        /// What was found, e.g. "':'" or "a control character".
        what: &'static str,
        /// Byte offset in the stored value.
        offset: usize,
    },
    /// The scheme is accepted but the hash after it is not well formed.
    #[error("{scheme} hash is malformed: {reason}")]
    Malformed {
        /// The scheme the hash claims.
        scheme: Scheme,
        /// What is wrong with it.
        reason: String,
    },
    /// Hashing a new password failed (the system's random source, normally).
    #[error("hashing the password failed: {0}")]
    Hashing(String),
    /// The verification task was cancelled or panicked (runtime shutting down).
    #[error("password verification task failed: {0}")]
    Task(String),
    /// Connecting to, writing to or reading from a Dovecot auth socket failed.
    #[error("Dovecot auth socket {path}: {source}")]
    DovecotIo {
        /// The socket path.
        path: PathBuf,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// The Dovecot auth server said something we do not understand.
    #[error("Dovecot auth socket {path}: protocol error: {reason}")]
    DovecotProtocol {
        /// The socket path.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// The Dovecot auth server did not answer in time.
    #[error("Dovecot auth socket {path}: no answer within {seconds} s")]
    DovecotTimeout {
        /// The socket path.
        path: PathBuf,
        /// The timeout.
        seconds: u64,
    },
}
