//! Stored password hashes in Dovecot's `{SCHEME}hash` form: making new ones
//! (Argon2id), checking the shape of imported ones, and verifying a password.
//!
//! New hashes are `{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$<salt>$<hash>`:
//! 64 MiB, 3 passes, 1 lane, 16-byte random salt, 32-byte output. These are
//! the parameters Dovecot 2.3's `doveadm pw -s ARGON2ID` uses by default
//! (checked against doveadm 2.3.19.1), so a hash made by either verifies in
//! both without a rehash.
//!
//! Hashes imported from a Dovecot passwd-file may also be `{BLF-CRYPT}`
//! (bcrypt `$2y$`/`$2b$`/`$2a$`), `{SHA512-CRYPT}` (`$6$`), `{SHA256-CRYPT}`
//! (`$5$`) or `{SSHA512}` (base64 of SHA-512(password || salt) || salt). A
//! match against any of them, or against Argon2id with other parameters,
//! says `rehash: true` so the caller can replace it with a current hash.
//! Everything else is refused with the reason: plain text, unsalted digests,
//! MD5 crypt, `{CRYPT}` (whatever the C library makes of it).
//!
//! Costs are bounded (Argon2 memory at most 1 GiB, bcrypt cost at most 18,
//! SHA-crypt at most 10,000,000 rounds) so a stored hash cannot make one
//! login take minutes or exhaust memory.

use std::fmt;

use argon2::{Algorithm, Argon2, Params, PasswordHash, PasswordHasher, PasswordVerifier, Version};
use base64::Engine as _;
use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, NO_PAD, STANDARD};
use sha2::{Digest, Sha512};
use subtle::ConstantTimeEq;

use crate::AuthError;

/// Argon2 memory cost of new hashes, KiB (Dovecot's default: 64 MiB).
pub const ARGON2_M_COST: u32 = 65_536;
/// Argon2 passes of new hashes (Dovecot's default).
pub const ARGON2_T_COST: u32 = 3;
/// Argon2 lanes of new hashes (Dovecot's default).
pub const ARGON2_P_COST: u32 = 1;
/// Argon2 output length of new hashes, bytes.
const ARGON2_OUTPUT_LEN: usize = 32;

/// Largest Argon2 memory cost accepted in a stored hash, KiB (1 GiB, what
/// `doveadm pw -s ARGON2ID -r 5` makes).
const ARGON2_MAX_M_COST: u32 = 1 << 20;
/// Largest Argon2 pass count accepted in a stored hash.
const ARGON2_MAX_T_COST: u32 = 32;
/// Largest Argon2 lane count accepted in a stored hash.
const ARGON2_MAX_P_COST: u32 = 16;
/// Largest bcrypt cost accepted (2^18 rounds, seconds per login).
const BCRYPT_MAX_COST: u32 = 18;
/// Largest SHA-crypt round count accepted.
const SHA_CRYPT_MAX_ROUNDS: u32 = 10_000_000;
/// Smallest SHA-crypt round count (the algorithm's own minimum).
const SHA_CRYPT_MIN_ROUNDS: u32 = 1_000;
/// Longest `{SCHEME}` prefix looked for, braces included.
const MAX_SCHEME_LEN: usize = 32;

/// The schemes hamail accepts in a stored hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Scheme {
    /// `{ARGON2ID}$argon2id$v=19$...`: what hamail makes.
    Argon2id,
    /// `{BLF-CRYPT}$2y$...`: bcrypt.
    BlfCrypt,
    /// `{SHA512-CRYPT}$6$...`.
    Sha512Crypt,
    /// `{SHA256-CRYPT}$5$...`.
    Sha256Crypt,
    /// `{SSHA512}base64(sha512(password || salt) || salt)`.
    Ssha512,
}

impl Scheme {
    /// The scheme's name as Dovecot writes it, without braces.
    pub fn name(self) -> &'static str {
        match self {
            Scheme::Argon2id => "ARGON2ID",
            Scheme::BlfCrypt => "BLF-CRYPT",
            Scheme::Sha512Crypt => "SHA512-CRYPT",
            Scheme::Sha256Crypt => "SHA256-CRYPT",
            Scheme::Ssha512 => "SSHA512",
        }
    }

    fn from_name(name: &str) -> Option<Scheme> {
        [
            Scheme::Argon2id,
            Scheme::BlfCrypt,
            Scheme::Sha512Crypt,
            Scheme::Sha256Crypt,
            Scheme::Ssha512,
        ]
        .into_iter()
        .find(|s| s.name() == name)
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{{{}}}", self.name())
    }
}

/// The outcome of checking a password against a stored hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verified {
    /// The password is right. `rehash` is true when the stored hash is not
    /// `{ARGON2ID}` with hamail's current parameters: store a new
    /// [`hash_password`] of this password.
    Match {
        /// The stored hash should be replaced by a current one.
        rehash: bool,
    },
    /// The password is wrong.
    Mismatch,
}

/// Hashes `password` as `{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$...` with a
/// fresh 16-byte salt from the operating system's random source.
pub fn hash_password(password: &[u8]) -> Result<String, AuthError> {
    let hash = current_argon2()?
        .hash_password(password)
        .map_err(|e| AuthError::Hashing(e.to_string()))?;
    Ok(format!("{}{hash}", Scheme::Argon2id))
}

fn current_argon2() -> Result<Argon2<'static>, AuthError> {
    let params = Params::new(
        ARGON2_M_COST,
        ARGON2_T_COST,
        ARGON2_P_COST,
        Some(ARGON2_OUTPUT_LEN),
    )
    .map_err(|e| AuthError::Hashing(e.to_string()))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// Checks the shape of a stored hash without computing anything: the
/// `{SCHEME}` must be one hamail accepts and the rest well formed for it.
pub fn check_stored(stored: &str) -> Result<Scheme, AuthError> {
    split_stored(stored).map(|(scheme, _)| scheme)
}

/// Checks `password` against `stored`. The comparison of the computed hash
/// with the stored one is constant-time for every scheme. A malformed or
/// refused stored hash is an error, not a mismatch.
pub fn verify(stored: &str, password: &[u8]) -> Result<Verified, AuthError> {
    let (scheme, rest) = split_stored(stored)?;
    let malformed = |reason: String| AuthError::Malformed { scheme, reason };
    let (ok, rehash) = match scheme {
        Scheme::Argon2id => {
            let hash = PasswordHash::new(rest).map_err(|e| malformed(e.to_string()))?;
            // The parameters come from the stored hash (the instance's own
            // are only a default), so this verifies any accepted Argon2id.
            match current_argon2()?.verify_password(password, &hash) {
                Ok(()) => (true, !argon2_is_current(&hash)),
                Err(argon2::password_hash::Error::PasswordInvalid) => (false, true),
                Err(e) => return Err(malformed(e.to_string())),
            }
        }
        Scheme::BlfCrypt => {
            let ok = bcrypt::verify(password, rest).map_err(|e| malformed(e.to_string()))?;
            (ok, true)
        }
        Scheme::Sha512Crypt | Scheme::Sha256Crypt => {
            match sha_crypt::ShaCrypt::default().verify_password(password, rest) {
                Ok(()) => (true, true),
                Err(sha_crypt::password_hash::Error::PasswordInvalid) => (false, true),
                Err(e) => return Err(malformed(e.to_string())),
            }
        }
        Scheme::Ssha512 => {
            let raw = STANDARD
                .decode(rest)
                .map_err(|e| malformed(e.to_string()))?;
            let (digest, salt) = raw.split_at(64.min(raw.len()));
            let mut hasher = Sha512::new();
            hasher.update(password);
            hasher.update(salt);
            let computed = hasher.finalize();
            (bool::from(computed.as_slice().ct_eq(digest)), true)
        }
    };
    Ok(if ok {
        Verified::Match { rehash }
    } else {
        Verified::Mismatch
    })
}

fn argon2_is_current(hash: &PasswordHash) -> bool {
    let Ok(params) = Params::try_from(hash) else {
        return false;
    };
    hash.version == Some(Version::V0x13.into())
        && params.m_cost() == ARGON2_M_COST
        && params.t_cost() == ARGON2_T_COST
        && params.p_cost() == ARGON2_P_COST
        && params.output_len() == Some(ARGON2_OUTPUT_LEN)
        && hash.salt.as_ref().is_some_and(|s| s.len() >= 16)
}

/// The scheme and the hash after `{SCHEME}`, once both are checked.
fn split_stored(stored: &str) -> Result<(Scheme, &str), AuthError> {
    check_characters(stored)?;
    let Some(close) = stored
        .strip_prefix('{')
        .and_then(|s| s.get(..MAX_SCHEME_LEN.min(s.len())))
        .and_then(|s| s.find('}'))
    else {
        return Err(AuthError::NoScheme);
    };
    let written = &stored[..close + 2];
    let name = written[1..written.len() - 1].to_ascii_uppercase();
    let rest = &stored[close + 2..];
    let refuse = |reason| AuthError::RefusedScheme {
        scheme: written.to_string(),
        reason,
    };
    // Dovecot allows an encoding suffix (`{SHA512.HEX}`); judge the base
    // scheme so `{PLAIN.b64}` gets the plain-text reason.
    let (base, suffix) = match name.split_once('.') {
        Some((base, _)) => (base, true),
        None => (name.as_str(), false),
    };
    let Some(scheme) = Scheme::from_name(base) else {
        return Err(refuse(refusal_reason(base)));
    };
    if suffix {
        return Err(refuse(
            "an encoding suffix is not supported; store the scheme's default encoding",
        ));
    }
    if rest.is_empty() {
        return Err(AuthError::Malformed {
            scheme,
            reason: "nothing after the scheme".into(),
        });
    }
    let malformed = |reason: String| AuthError::Malformed { scheme, reason };
    match scheme {
        Scheme::Argon2id => check_argon2id(rest).map_err(malformed)?,
        Scheme::BlfCrypt => check_bcrypt(rest).map_err(malformed)?,
        Scheme::Sha512Crypt => check_sha_crypt(rest, "6", 86).map_err(malformed)?,
        Scheme::Sha256Crypt => check_sha_crypt(rest, "5", 43).map_err(malformed)?,
        Scheme::Ssha512 => check_ssha512(rest).map_err(malformed)?,
    }
    Ok((scheme, rest))
}

fn refusal_reason(base: &str) -> &'static str {
    match base {
        "PLAIN" | "CLEAR" | "CLEARTEXT" | "PLAIN-TRUNC" => {
            "it stores the password itself; hamail stores only hashes"
        }
        "SHA" | "SHA1" | "SHA256" | "SHA512" | "MD5" | "PLAIN-MD5" | "PLAIN-MD4" | "LDAP-MD5" => {
            "an unsalted fast digest, guessed at billions of tries per second; use {ARGON2ID}"
        }
        "SSHA" | "SSHA256" | "SMD5" => {
            "a salted single SHA-1/SHA-256/MD5 digest; of this kind hamail accepts only {SSHA512}"
        }
        "MD5-CRYPT" => "MD5-based crypt, too fast to resist guessing; use {ARGON2ID}",
        "CRYPT" | "DES-CRYPT" => {
            "{CRYPT} leaves the algorithm to the C library (often DES, 8 characters); \
             store the hash under its own scheme, e.g. {SHA512-CRYPT}"
        }
        "ARGON2I" => "Argon2i; hamail verifies Argon2id ({ARGON2ID})",
        "CRAM-MD5" | "DIGEST-MD5" | "SCRAM-SHA-1" | "SCRAM-SHA-256" | "NTLM" | "LANMAN" | "RPA"
        | "OTP" => "a SASL mechanism's credential, not a login hash hamail can verify",
        _ => {
            "unknown to hamail (accepted: {ARGON2ID}, {BLF-CRYPT}, {SHA512-CRYPT}, \
             {SHA256-CRYPT}, {SSHA512})"
        }
    }
}

fn check_characters(stored: &str) -> Result<(), AuthError> {
    for (offset, b) in stored.bytes().enumerate() {
        let what = match b {
            b':' => "':'",
            b'\n' | b'\r' => "a line break",
            0..=0x1f | 0x7f => "a control character",
            0x80.. => "a non-ASCII character",
            b' ' => "a space",
            _ => continue,
        };
        return Err(AuthError::BadCharacter { what, offset });
    }
    Ok(())
}

fn check_argon2id(rest: &str) -> Result<(), String> {
    let hash = PasswordHash::new(rest).map_err(|e| format!("not a PHC string: {e}"))?;
    if hash.algorithm.as_str() != "argon2id" {
        return Err(format!(
            "algorithm is {}, not argon2id",
            hash.algorithm.as_str()
        ));
    }
    if hash.version != Some(Version::V0x13.into()) {
        return Err("version is not v=19".into());
    }
    let params = Params::try_from(&hash).map_err(|e| format!("bad parameters: {e}"))?;
    if params.m_cost() > ARGON2_MAX_M_COST {
        return Err(format!(
            "m={} KiB exceeds the limit {ARGON2_MAX_M_COST}",
            params.m_cost()
        ));
    }
    if params.t_cost() > ARGON2_MAX_T_COST {
        return Err(format!(
            "t={} exceeds the limit {ARGON2_MAX_T_COST}",
            params.t_cost()
        ));
    }
    if params.p_cost() > ARGON2_MAX_P_COST {
        return Err(format!(
            "p={} exceeds the limit {ARGON2_MAX_P_COST}",
            params.p_cost()
        ));
    }
    if hash.salt.is_none() || hash.hash.is_none() {
        return Err("salt or hash missing".into());
    }
    Ok(())
}

fn check_bcrypt(rest: &str) -> Result<(), String> {
    let (version, tail) = rest
        .strip_prefix('$')
        .and_then(|r| r.split_once('$'))
        .ok_or("expected $2y$NN$...")?;
    match version {
        "2y" | "2b" | "2a" => {}
        "2x" => return Err("$2x$ marks hashes of the buggy crypt_blowfish; rehash them".into()),
        _ => return Err("expected a $2y$, $2b$ or $2a$ prefix".into()),
    }
    let (cost, body) = tail.split_once('$').ok_or("expected $2y$NN$...")?;
    if cost.len() != 2 || !cost.bytes().all(|b| b.is_ascii_digit()) {
        return Err("the cost is not two digits".into());
    }
    let cost: u32 = cost.parse().map_err(|_| "the cost is not a number")?;
    if !(4..=BCRYPT_MAX_COST).contains(&cost) {
        return Err(format!("cost {cost} is outside 4..={BCRYPT_MAX_COST}"));
    }
    if body.len() != 53 {
        return Err(format!(
            "salt and hash are {} characters, not 53",
            body.len()
        ));
    }
    let engine = GeneralPurpose::new(&alphabet::BCRYPT, NO_PAD);
    let (salt, hash) = body.split_at(22);
    let salt_ok = engine.decode(salt).is_ok_and(|s| s.len() == 16);
    let hash_ok = engine.decode(hash).is_ok_and(|h| h.len() == 23);
    if !salt_ok || !hash_ok {
        return Err("salt or hash is not bcrypt base64".into());
    }
    Ok(())
}

fn is_crypt_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'.' || b == b'/'
}

fn check_sha_crypt(rest: &str, id: &str, hash_len: usize) -> Result<(), String> {
    let tail = rest
        .strip_prefix('$')
        .and_then(|r| r.strip_prefix(id))
        .and_then(|r| r.strip_prefix('$'))
        .ok_or_else(|| format!("expected ${id}$..."))?;
    let tail = match tail.strip_prefix("rounds=") {
        Some(r) => {
            let (rounds, after) = r.split_once('$').ok_or("rounds= without salt")?;
            let rounds: u32 = rounds
                .parse()
                .map_err(|_| format!("rounds={rounds} is not a number"))?;
            if !(SHA_CRYPT_MIN_ROUNDS..=SHA_CRYPT_MAX_ROUNDS).contains(&rounds) {
                return Err(format!(
                    "rounds={rounds} is outside {SHA_CRYPT_MIN_ROUNDS}..={SHA_CRYPT_MAX_ROUNDS}"
                ));
            }
            after
        }
        None => tail,
    };
    let (salt, hash) = tail.split_once('$').ok_or("no '$' between salt and hash")?;
    if salt.is_empty() || salt.len() > 16 || !salt.bytes().all(is_crypt_char) {
        return Err("the salt is not 1 to 16 characters of [./0-9A-Za-z]".into());
    }
    if hash.len() != hash_len || !hash.bytes().all(is_crypt_char) {
        return Err(format!(
            "the hash is not {hash_len} characters of [./0-9A-Za-z]"
        ));
    }
    Ok(())
}

fn check_ssha512(rest: &str) -> Result<(), String> {
    let raw = STANDARD
        .decode(rest)
        .map_err(|e| format!("not base64: {e}"))?;
    if raw.len() <= 64 {
        return Err(format!(
            "{} bytes decoded; a 64-byte digest and a salt expected",
            raw.len()
        ));
    }
    Ok(())
}

#[cfg(test)]
#[path = "password_tests.rs"]
mod tests;
