//! SMTP AUTH apart from the wire: where a password is checked (the
//! replicated user table through the backend, or an existing Dovecot), the
//! per-node brute-force limiter, and the upgrade of an imported hash to
//! Argon2id after a successful login. The exchange itself is
//! `session/auth.rs`.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hamail_auth::dovecot::{DovecotAuth, DovecotVerdict};
use hamail_auth::limiter::FailureLimiter;
use hamail_auth::password::{Verified, hash_password};
use hamail_auth::pool::VerifyPool;
use hamail_auth::sasl::Mechanism;
use hamail_types::MailAddress;

use crate::Backend;

/// Where passwords are checked (`[smtp] sasl_backend`).
pub enum PasswordSource {
    /// The replicated user table, hashes checked here off the runtime.
    Cluster(VerifyPool),
    /// An existing Dovecot's auth service (`smtpd_sasl_type = dovecot`).
    Dovecot(DovecotAuth),
}

/// The AUTH service every listener of a node shares (one limiter per node).
pub struct AuthService {
    source: PasswordSource,
    limiter: FailureLimiter,
    /// AUTH only inside TLS (`smtpd_tls_auth_only`).
    pub tls_only: bool,
    /// Name the user in the Received header
    /// (`smtpd_sasl_authenticated_header`).
    pub authenticated_header: bool,
    /// Checked when the user is unknown, so that an unknown user costs what
    /// a wrong password does (no user enumeration by timing).
    decoy: String,
}

impl std::fmt::Debug for AuthService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthService")
            .field("tls_only", &self.tls_only)
            .field("authenticated_header", &self.authenticated_header)
            .finish_non_exhaustive()
    }
}

/// What a login attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Login {
    /// Authenticated as this user (an address for the cluster's users).
    Ok { user: String },
    /// Wrong user or password.
    Failed,
    /// The password could not be checked now (store or Dovecot
    /// unreachable): 454, not counted against the client.
    Unavailable(String),
}

impl AuthService {
    pub fn new(
        source: PasswordSource,
        limiter: FailureLimiter,
        tls_only: bool,
        authenticated_header: bool,
    ) -> Result<Self, hamail_auth::AuthError> {
        let mut secret = [0u8; 16];
        getrandom::fill(&mut secret)
            .map_err(|e| hamail_auth::AuthError::Hashing(format!("no randomness: {e}")))?;
        Ok(AuthService {
            source,
            limiter,
            tls_only,
            authenticated_header,
            decoy: hash_password(&secret)?,
        })
    }

    /// How long AUTH from `ip` stays refused, if it is.
    pub(crate) fn blocked(&self, ip: IpAddr) -> Option<Duration> {
        self.limiter.blocked(ip, Instant::now())
    }

    /// Counts a failed login that never reached a password check (a
    /// malformed response).
    pub(crate) fn count_failure(&self, ip: IpAddr) {
        self.limiter.record_failure(ip, Instant::now());
    }

    /// Checks a user's password and counts a failure against the client.
    pub(crate) async fn check<B: Backend>(
        &self,
        backend: &Arc<B>,
        mechanism: Mechanism,
        user: &str,
        password: &[u8],
        client: IpAddr,
        secured: bool,
    ) -> Login {
        let login = match &self.source {
            PasswordSource::Cluster(pool) => self.check_table(pool, backend, user, password).await,
            PasswordSource::Dovecot(d) => {
                match d
                    .authenticate(mechanism, user, password, client, secured)
                    .await
                {
                    Ok(DovecotVerdict::Ok { user }) => Login::Ok { user },
                    Ok(DovecotVerdict::Fail { .. }) => Login::Failed,
                    Ok(DovecotVerdict::TempFail { reason }) => {
                        Login::Unavailable(reason.unwrap_or_else(|| "temporary failure".into()))
                    }
                    Err(e) => Login::Unavailable(e.to_string()),
                }
            }
        };
        match &login {
            Login::Ok { .. } => self.limiter.record_success(client, Instant::now()),
            Login::Failed => self.limiter.record_failure(client, Instant::now()),
            Login::Unavailable(_) => {}
        }
        login
    }

    async fn check_table<B: Backend>(
        &self,
        pool: &VerifyPool,
        backend: &Arc<B>,
        user: &str,
        password: &[u8],
    ) -> Login {
        let address = MailAddress::parse(user).ok();
        let stored = match address.as_ref().map(|a| backend.user_hash(a)) {
            Some(Ok(s)) => s,
            Some(Err(e)) => return Login::Unavailable(e.to_string()),
            None => None,
        };
        let (Some(address), Some(stored)) = (address, stored) else {
            // The same work as a real check, and the same answer.
            let _ = pool.verify(&self.decoy, password).await;
            return Login::Failed;
        };
        match pool.verify(&stored, password).await {
            Ok(Verified::Match { rehash }) => {
                if rehash {
                    upgrade(backend.clone(), address.clone(), stored, password.to_vec());
                }
                Login::Ok {
                    user: address.to_string(),
                }
            }
            Ok(Verified::Mismatch) => Login::Failed,
            Err(e) => {
                // A stored hash this build cannot read: the operator's to
                // fix (`hamail user passwd`); the client just fails.
                tracing::warn!(%address, error = %e, "stored password hash unusable");
                Login::Failed
            }
        }
    }
}

/// Re-hashes a password that verified against an imported scheme with
/// Argon2id and commits it (compare-and-set on the old hash), in the
/// background: the login does not wait for it.
fn upgrade<B: Backend>(backend: Arc<B>, user: MailAddress, old: String, password: Vec<u8>) {
    tokio::spawn(async move {
        let new = match tokio::task::spawn_blocking(move || hash_password(&password)).await {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => {
                tracing::warn!(%user, error = %e, "cannot re-hash the password");
                return;
            }
            Err(e) => {
                tracing::warn!(%user, error = %e, "re-hash task failed");
                return;
            }
        };
        match backend.rehash(user.clone(), old, new).await {
            Ok(()) => tracing::info!(%user, "password hash upgraded to Argon2id"),
            Err(e) => tracing::warn!(%user, error = %e, "password hash not upgraded"),
        }
    });
}
