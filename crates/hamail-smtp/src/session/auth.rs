//! The AUTH command (RFC 4954): PLAIN and LOGIN, with or without an initial
//! response, `*` to cancel; the checks before it (TLS, EHLO, once, not in a
//! transaction, the client not blocked), and Postfix's log lines, which
//! fail2ban's stock postfix filter reads.

use hamail_auth::sasl::{
    LOGIN_PASSWORD_CHALLENGE, LOGIN_USERNAME_CHALLENGE, Mechanism, Response, SaslError,
    decode_base64_line, login_credentials, parse_login_user, parse_plain,
};

use super::conn::{Line, Step};
use super::{Authenticated, Flow, Session, printable};
use crate::Backend;
use crate::auth::Login;
use hamail_auth::sasl::Credentials;

/// Longest line of an AUTH exchange: RFC 4954's 12288 octets of response
/// plus the command.
pub(super) const AUTH_LINE_LIMIT: usize = 12288 + 64;

/// Whether a command line is an AUTH command.
pub(super) fn is_auth(line: &[u8]) -> bool {
    line.len() >= 4
        && line[..4].eq_ignore_ascii_case(b"AUTH")
        && line.get(4).is_none_or(|b| b.is_ascii_whitespace())
}

/// How an exchange ended before a password could be checked.
enum Abort {
    /// The reply to send (counted as an error).
    Reply(&'static str),
    /// A malformed or refused response, counted as a failed login.
    Failed(String),
}

impl From<SaslError> for Abort {
    fn from(e: SaslError) -> Self {
        match e {
            SaslError::Invalid { .. } | SaslError::AuthzidMismatch => Abort::Failed(e.to_string()),
            other => Abort::Reply(other.smtp_reply()),
        }
    }
}

impl<B: Backend> Session<B> {
    pub(super) async fn auth(&mut self, line: &[u8]) -> Step<Flow> {
        let Some(service) = self.settings.auth.clone() else {
            return Ok(self.error("503 5.5.1 Error: authentication not enabled"));
        };
        if self.helo.is_none() {
            return Ok(self.error("503 5.5.1 Error: send HELO/EHLO first"));
        }
        if service.tls_only && !self.tls {
            return Ok(
                self.error("538 5.7.11 Encryption required for requested authentication mechanism")
            );
        }
        if self.authenticated.is_some() {
            return Ok(self.error("503 5.5.1 Error: already authenticated"));
        }
        if self.txn.is_some() {
            return Ok(self.error("503 5.5.1 Error: MAIL transaction in progress"));
        }
        let text = String::from_utf8_lossy(line);
        let words: Vec<&str> = text.split_ascii_whitespace().collect();
        let (mechanism, initial) = match words.as_slice() {
            [_, m] => (*m, None),
            [_, m, i] => (*m, Some(*i)),
            _ => return Ok(self.error("501 5.5.4 Syntax: AUTH mechanism [initial-response]")),
        };
        let mechanism = match mechanism.parse::<Mechanism>() {
            Ok(m) => m,
            Err(e) => return Ok(self.error(e.smtp_reply())),
        };
        let method = mechanism.name();
        let client = self.client();
        if let Some(left) = service.blocked(self.peer.ip()) {
            tracing::warn!(
                target: "postfix/smtpd",
                "warning: {client}: SASL {method} authentication failed: too many failed logins from this address, refused for {} s",
                left.as_secs().max(1)
            );
            return Ok(self.error("454 4.7.0 Temporary authentication failure: too many failed logins from your address, try again later"));
        }
        let credentials = match self.exchange(mechanism, initial).await? {
            Ok(c) => c,
            Err(Abort::Reply(text)) => return Ok(self.error(text)),
            Err(Abort::Failed(why)) => {
                service.count_failure(self.peer.ip());
                return Ok(self.failed(method, &printable(&why)));
            }
        };
        match service
            .check(
                &self.backend,
                mechanism,
                &credentials.user,
                &credentials.password,
                self.peer.ip(),
                self.tls,
            )
            .await
        {
            Login::Ok { user } => {
                tracing::info!(target: "postfix/smtpd", "{client}: sasl_method={method}, sasl_username={}", printable(&user));
                self.authenticated = Some(Authenticated { user, method });
                self.conn.reply("235 2.7.0 Authentication successful");
                Ok(Flow::Continue)
            }
            Login::Failed => Ok(self.failed(method, "authentication failure")),
            Login::Unavailable(e) => {
                tracing::warn!(target: "postfix/smtpd", "warning: {client}: SASL {method} authentication failed: Connection lost to authentication server ({})", printable(&e));
                Ok(self.error("454 4.7.0 Temporary authentication failure"))
            }
        }
    }

    /// A failed login: Postfix's warning (the line fail2ban matches) and 535.
    fn failed(&mut self, method: &str, why: &str) -> Flow {
        tracing::warn!(target: "postfix/smtpd", "warning: {}: SASL {method} authentication failed: {why}", self.client());
        self.error(&format!("535 5.7.8 Error: authentication failed: {why}"))
    }

    /// The challenge-response part: the user and password, or how it ended.
    async fn exchange(
        &mut self,
        mechanism: Mechanism,
        initial: Option<&str>,
    ) -> Step<Result<Credentials, Abort>> {
        let first = match initial {
            Some(i) => decode(i.as_bytes()),
            None => {
                let prompt = match mechanism {
                    Mechanism::Plain => "334 ".to_string(),
                    Mechanism::Login => format!("334 {LOGIN_USERNAME_CHALLENGE}"),
                };
                self.challenge(&prompt).await?
            }
        };
        let first = match first {
            Ok(d) => d,
            Err(a) => return Ok(Err(a)),
        };
        Ok(match mechanism {
            Mechanism::Plain => parse_plain(&first).map_err(Abort::from),
            Mechanism::Login => {
                let user = match parse_login_user(&first) {
                    Ok(u) => u,
                    Err(e) => return Ok(Err(e.into())),
                };
                let prompt = format!("334 {LOGIN_PASSWORD_CHALLENGE}");
                match self.challenge(&prompt).await? {
                    Ok(password) => login_credentials(user, password).map_err(Abort::from),
                    Err(a) => Err(a),
                }
            }
        })
    }

    /// Sends a 334 challenge and reads the client's one-line response.
    async fn challenge(&mut self, prompt: &str) -> Step<Result<Vec<u8>, Abort>> {
        self.conn.reply(prompt);
        Ok(match self.conn.read_line(AUTH_LINE_LIMIT).await? {
            Line::Ok(line) => decode(&line),
            Line::TooLong { .. } => Err(Abort::Reply(TOO_LONG)),
        })
    }
}

/// The reply to an AUTH line or response over the limit (RFC 4954).
pub(super) const TOO_LONG: &str = "500 5.5.6 Authentication exchange line is too long";

/// A response line (CRLF and all) as bytes, or how the exchange ends.
fn decode(line: &[u8]) -> Result<Vec<u8>, Abort> {
    match decode_base64_line(line)? {
        Response::Data(d) => Ok(d),
        Response::Cancel => Err(SaslError::Cancelled.into()),
    }
}
