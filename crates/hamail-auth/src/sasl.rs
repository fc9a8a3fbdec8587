//! SMTP AUTH (RFC 4954) decoding for the PLAIN (RFC 4616) and LOGIN
//! mechanisms: pure functions over the bytes of one client line, no IO. The
//! SMTP session sends the challenges and maps a [`SaslError`] to its reply.
//!
//! PLAIN: `AUTH PLAIN <initial>` or `AUTH PLAIN`, `334 ` (empty challenge),
//! then one line; decode it with [`decode_base64_line`], then [`parse_plain`].
//! LOGIN: `AUTH LOGIN [<user>]`, `334 VXNlcm5hbWU6` ("Username:") unless the
//! user came as initial response, `334 UGFzc3dvcmQ6` ("Password:"); decode
//! each line, then [`parse_login_user`] and [`login_credentials`].

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

/// The longest decoded response accepted, octets (RFC 4954 section 4: the
/// 12288-octet line limit of an AUTH exchange).
pub const MAX_RESPONSE_LEN: usize = 12_288;
/// The longest base64 text that can decode to at most [`MAX_RESPONSE_LEN`]
/// octets (4 characters per 3 octets).
const MAX_ENCODED_LEN: usize = MAX_RESPONSE_LEN.div_ceil(3) * 4;

/// Standard base64; padding may be present or not (clients differ).
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// LOGIN's first challenge, base64 of "Username:" (send as `334 ` + this).
pub const LOGIN_USERNAME_CHALLENGE: &str = "VXNlcm5hbWU6";
/// LOGIN's second challenge, base64 of "Password:" (send as `334 ` + this).
pub const LOGIN_PASSWORD_CHALLENGE: &str = "UGFzc3dvcmQ6";

/// The SASL mechanisms hamail's SMTP AUTH offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mechanism {
    /// RFC 4616 PLAIN.
    Plain,
    /// The LOGIN mechanism (draft-murchison-sasl-login).
    Login,
}

impl Mechanism {
    /// The name as advertised in `250-AUTH PLAIN LOGIN`.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::Login => "LOGIN",
        }
    }
}

impl fmt::Display for Mechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Mechanism {
    type Err = SaslError;

    /// Case-insensitive, as SASL mechanism names are.
    fn from_str(s: &str) -> Result<Self, SaslError> {
        if s.eq_ignore_ascii_case("PLAIN") {
            Ok(Mechanism::Plain)
        } else if s.eq_ignore_ascii_case("LOGIN") {
            Ok(Mechanism::Login)
        } else {
            Err(SaslError::UnknownMechanism(printable(s.as_bytes(), 40)))
        }
    }
}

/// One decoded client line of an AUTH exchange.
#[derive(Clone, PartialEq, Eq)]
pub enum Response {
    /// `*`: the client cancels the exchange.
    Cancel,
    /// The decoded octets (empty for `=` or an empty line).
    Data(Vec<u8>),
}

impl fmt::Debug for Response {
    /// Never prints the data: it may hold a password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Response::Cancel => f.write_str("Cancel"),
            Response::Data(d) => write!(f, "Data(<{} octets>)", d.len()),
        }
    }
}

/// A user name and password from PLAIN or LOGIN.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The authentication identity (authcid), UTF-8, no control characters.
    pub user: String,
    /// The password octets, never empty.
    pub password: Vec<u8>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Why an AUTH exchange fails. Each variant names the SMTP reply the
/// session sends for it ([`SaslError::smtp_reply`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SaslError {
    /// `AUTH <mech>` with a mechanism hamail does not offer (printable
    /// characters of the name, at most 40). Reply `504 5.5.4`.
    #[error("unsupported authentication mechanism '{0}'")]
    UnknownMechanism(String),
    /// The line is not base64. Reply `501 5.5.2`.
    #[error("the AUTH response is not valid base64")]
    Malformed,
    /// The client sent `*`. Reply `501 5.7.0 Authentication aborted`.
    #[error("the client cancelled the AUTH exchange")]
    Cancelled,
    /// The response would decode to more than [`MAX_RESPONSE_LEN`] octets.
    /// Reply `500 5.5.6`.
    #[error("the AUTH response is longer than {MAX_RESPONSE_LEN} octets")]
    TooLong,
    /// The decoded PLAIN or LOGIN message is not well formed (the reason
    /// says how). Reply `535 5.7.8`, as for wrong credentials.
    #[error("invalid {mechanism} response: {reason}")]
    Invalid {
        /// The mechanism whose message it was.
        mechanism: Mechanism,
        /// What is wrong (never quotes the password).
        reason: &'static str,
    },
    /// PLAIN with an authorization identity other than the authentication
    /// identity: acting as another user is not offered. Reply `535 5.7.8`.
    #[error("authorization identity differs from the authentication identity")]
    AuthzidMismatch,
}

impl SaslError {
    /// The SMTP reply line (without CRLF) the session sends for this error.
    pub fn smtp_reply(&self) -> &'static str {
        match self {
            SaslError::UnknownMechanism(_) => "504 5.5.4 Unrecognized authentication type",
            SaslError::Malformed => "501 5.5.2 Cannot decode the AUTH response",
            SaslError::Cancelled => "501 5.7.0 Authentication aborted",
            SaslError::TooLong => "500 5.5.6 Authentication exchange line is too long",
            SaslError::Invalid { .. } | SaslError::AuthzidMismatch => {
                "535 5.7.8 Authentication credentials invalid"
            }
        }
    }
}

/// Decodes one client line of an AUTH exchange (an initial response after
/// the mechanism name, or a line answering a `334` challenge). A trailing
/// CRLF or LF is ignored. `*` is [`Response::Cancel`]; `=` (RFC 4954's
/// empty initial response) and an empty line are empty data. Padding is
/// optional. The length is checked before anything is decoded.
pub fn decode_base64_line(line: &[u8]) -> Result<Response, SaslError> {
    let line = line
        .strip_suffix(b"\r\n")
        .or_else(|| line.strip_suffix(b"\n"))
        .unwrap_or(line);
    if line.len() > MAX_ENCODED_LEN {
        return Err(SaslError::TooLong);
    }
    match line {
        b"*" => return Ok(Response::Cancel),
        b"=" | b"" => return Ok(Response::Data(Vec::new())),
        _ => {}
    }
    let data = BASE64.decode(line).map_err(|_| SaslError::Malformed)?;
    // Unreachable by the encoded-length check, kept as the stated limit.
    if data.len() > MAX_RESPONSE_LEN {
        return Err(SaslError::TooLong);
    }
    Ok(Response::Data(data))
}

/// Parses a decoded PLAIN message, `authzid NUL authcid NUL passwd`
/// (RFC 4616): exactly two NULs, a non-empty UTF-8 authcid without control
/// characters, a non-empty password, and an authzid that is empty or equal
/// to the authcid.
pub fn parse_plain(data: &[u8]) -> Result<Credentials, SaslError> {
    let invalid = |reason| SaslError::Invalid {
        mechanism: Mechanism::Plain,
        reason,
    };
    let mut parts = data.split(|&b| b == 0);
    let (Some(authzid), Some(authcid), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid("expected authzid NUL authcid NUL password"));
    };
    let user = user_name(authcid).map_err(invalid)?;
    if password.is_empty() {
        return Err(invalid("empty password"));
    }
    if !authzid.is_empty() && authzid != authcid {
        return Err(SaslError::AuthzidMismatch);
    }
    Ok(Credentials {
        user,
        password: password.to_vec(),
    })
}

/// Parses LOGIN's decoded answer to the "Username:" challenge (or its
/// initial response).
pub fn parse_login_user(data: &[u8]) -> Result<String, SaslError> {
    user_name(data).map_err(|reason| SaslError::Invalid {
        mechanism: Mechanism::Login,
        reason,
    })
}

/// Completes LOGIN with the decoded answer to the "Password:" challenge.
pub fn login_credentials(user: String, password: Vec<u8>) -> Result<Credentials, SaslError> {
    if password.is_empty() {
        return Err(SaslError::Invalid {
            mechanism: Mechanism::Login,
            reason: "empty password",
        });
    }
    Ok(Credentials { user, password })
}

fn user_name(raw: &[u8]) -> Result<String, &'static str> {
    if raw.is_empty() {
        return Err("empty user name");
    }
    let user = std::str::from_utf8(raw).map_err(|_| "user name is not UTF-8")?;
    if user.chars().any(char::is_control) {
        return Err("user name contains a control character");
    }
    Ok(user.to_string())
}

/// The printable ASCII of `raw`, at most `max` characters, others as '?'.
fn printable(raw: &[u8], max: usize) -> String {
    raw.iter()
        .take(max)
        .map(|&b| {
            if b.is_ascii_graphic() {
                char::from(b)
            } else {
                '?'
            }
        })
        .collect()
}

#[cfg(test)]
#[path = "sasl_tests.rs"]
mod tests;
