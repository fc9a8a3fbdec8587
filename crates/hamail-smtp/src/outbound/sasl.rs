//! SMTP AUTH credentials for relays: Postfix's smtp_sasl_password_maps file
//! (read once at start) and the look-up of the entry for a next hop.

use std::collections::HashMap;

use hamail_types::TransportSpec;

use super::DeliverySettings;
use super::attempt::destination;
use super::route::Candidate;

/// A login at a relay. The password never appears in a log line.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// Parses a Postfix-style password map: `[host]:port user:password` lines,
/// `#` comments. The file must be mode 0600 (or stricter).
pub fn load_password_map(path: &std::path::Path) -> Result<HashMap<String, Credentials>, String> {
    use std::os::unix::fs::PermissionsExt;
    let meta =
        std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "{} has mode {mode:04o}: a password map must not be readable by others (chmod 600 {})",
            path.display(),
            path.display()
        ));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut out = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.split_whitespace();
        let (Some(key), Some(cred), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(format!(
                "{} line {}: expected `[host]:port user:password`",
                path.display(),
                i + 1
            ));
        };
        let Some((user, pass)) = cred.split_once(':') else {
            return Err(format!(
                "{} line {}: expected user:password, got {cred:?}",
                path.display(),
                i + 1
            ));
        };
        out.insert(
            key.to_ascii_lowercase(),
            Credentials {
                user: user.to_string(),
                password: pass.to_string(),
            },
        );
    }
    Ok(out)
}

/// The credentials for a next hop: by transport destination, then by the
/// host's `[host]:port`, `[host]`, `host:port` and `host` entries.
pub(super) fn sasl_for(
    s: &DeliverySettings,
    spec: &TransportSpec,
    c: &Candidate,
) -> Option<Credentials> {
    if s.sasl_passwords.is_empty() {
        return None;
    }
    let host = c.host.to_ascii_lowercase();
    let port = c.addr.port();
    [
        destination(spec),
        format!("[{host}]:{port}"),
        format!("[{host}]"),
        format!("{host}:{port}"),
        host,
    ]
    .iter()
    .find_map(|k| s.sasl_passwords.get(k).cloned())
}
