//! hamail-auth: everything about SMTP AUTH except the SMTP session itself.
//!
//! Layout:
//! - [`password`]: stored hashes in Dovecot's `{SCHEME}hash` form: making
//!   new Argon2id hashes, checking imported ones, verifying a password.
//! - [`sasl`]: pure decoding of the PLAIN and LOGIN exchanges of RFC 4954.
//! - [`error`]: [`AuthError`], the crate's error type.

pub mod error;
pub mod password;
pub mod sasl;

pub use error::AuthError;
pub use password::{Scheme, Verified, check_stored, hash_password, verify};
pub use sasl::{Credentials, Mechanism, Response, SaslError};
