//! hamail-auth: everything about SMTP AUTH except the SMTP session itself.
//!
//! Layout:
//! - [`password`]: stored hashes in Dovecot's `{SCHEME}hash` form: making
//!   new Argon2id hashes, checking imported ones, verifying a password.
//! - [`sasl`]: pure decoding of the PLAIN and LOGIN exchanges of RFC 4954.
//! - [`passwd_file`]: parsing Dovecot passwd-files for user import.
//! - [`pool`]: [`VerifyPool`], verification on blocking threads, bounded in
//!   parallelism, with a positive cache.
//! - [`limiter`]: [`FailureLimiter`], per-node blocking of clients that fail
//!   to authenticate too often.
//! - [`dovecot`]: [`DovecotAuth`], a client of Dovecot's auth protocol,
//!   to authenticate against an existing Dovecot instead.
//! - [`error`]: [`AuthError`], the crate's error type.

pub mod dovecot;
pub mod error;
pub mod limiter;
pub mod passwd_file;
pub mod password;
pub mod pool;
pub mod sasl;

pub use dovecot::{DovecotAuth, DovecotVerdict};
pub use error::AuthError;
pub use limiter::FailureLimiter;
pub use passwd_file::{PasswdEntry, PasswdError};
pub use password::{Scheme, Verified, check_stored, hash_password, verify};
pub use pool::VerifyPool;
pub use sasl::{Credentials, Mechanism, Response, SaslError};
