//! Dovecot passwd-file parsing, for importing users: one
//! `user:{SCHEME}hash[:uid:gid:gecos:home:shell:extra]` line per user, `#`
//! comments and blank lines skipped. Only the user and the hash are kept;
//! the hash must pass [`check_stored`]. All or nothing: the first bad line
//! is the error and no entry is returned.
//!
//! User names are not validated as addresses here (the state machine does
//! that when the import is applied); they must only be non-empty and free
//! of spaces and control characters. Two lines for one user (compared
//! ASCII case-insensitively, as mail domains are) are an error on the
//! second.

use std::collections::HashMap;
use std::fmt;

use crate::password::check_stored;

/// One user of a passwd-file.
#[derive(Clone, PartialEq, Eq)]
pub struct PasswdEntry {
    /// The user name as written (normally an address).
    pub user: String,
    /// The stored hash, `{SCHEME}...`, accepted by [`check_stored`].
    pub hash: String,
}

impl fmt::Debug for PasswdEntry {
    /// Shows the scheme, not the hash: hashes stay out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = self.hash.split_inclusive('}').next().unwrap_or("");
        f.debug_struct("PasswdEntry")
            .field("user", &self.user)
            .field("hash", &format_args!("{scheme}..."))
            .finish()
    }
}

/// The first bad line of a passwd-file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct PasswdError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong with it (never quotes a hash beyond its scheme).
    pub reason: String,
}

/// Parses a whole passwd-file; see the module doc for the rules.
pub fn parse(text: &str) -> Result<Vec<PasswdEntry>, PasswdError> {
    let mut entries = Vec::new();
    // Lowercased user -> line it was first seen on.
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (index, raw) in text.split('\n').enumerate() {
        let line = index + 1;
        let err = |reason: String| PasswdError { line, reason };
        let content = raw.strip_suffix('\r').unwrap_or(raw);
        let trimmed = content.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let mut fields = content.split(':');
        let user = fields.next().unwrap_or("");
        let Some(hash) = fields.next() else {
            return Err(err(
                "no ':' after the user name (expected user:{SCHEME}hash)".into(),
            ));
        };
        check_user(user).map_err(|reason| err(reason.into()))?;
        if hash.is_empty() {
            return Err(err(format!(
                "{user}: no password hash (a line without a password cannot log in)"
            )));
        }
        check_stored(hash).map_err(|e| err(format!("{user}: {e}")))?;
        if let Some(first) = seen.insert(user.to_ascii_lowercase(), line) {
            return Err(err(format!(
                "{user}: duplicate user (first on line {first})"
            )));
        }
        entries.push(PasswdEntry {
            user: user.to_string(),
            hash: hash.to_string(),
        });
    }
    Ok(entries)
}

fn check_user(user: &str) -> Result<(), &'static str> {
    if user.is_empty() {
        return Err("empty user name");
    }
    if user.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("the user name contains a space or control character");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA512: &str = "{SHA512-CRYPT}$6$j/VLdUa0IMh7Hyox$Eg0nwF3j7xKLKxSw7SYuz4bCFb2qgwJQJrALT4Ljpd4k1W5bCsrjn0jSCk2ClivXM.5tNKEbKj1kZEQm4NDXD0";
    const BLF: &str = "{BLF-CRYPT}$2y$05$AtFvXyB0DwuD2.s1yS4SGewh98yk5yzd7HB1/Hp59EQs5/qNRWOAG";

    #[test]
    fn parses_users_and_hashes_skipping_comments_and_extra_fields() {
        let text = format!(
            "# users of example.com\n\
             \n\
             user@example.com:{SHA512}:1000:1000::/home/user::userdb_quota_rule=*:storage=1G\r\n\
             \t  \n\
             other@example.org:{BLF}\n\
             #disabled@example.com:{BLF}\n\
             third:{BLF}::::::"
        );
        let entries = parse(&text).unwrap();
        assert_eq!(
            entries,
            vec![
                PasswdEntry {
                    user: "user@example.com".into(),
                    hash: SHA512.into()
                },
                PasswdEntry {
                    user: "other@example.org".into(),
                    hash: BLF.into()
                },
                PasswdEntry {
                    user: "third".into(),
                    hash: BLF.into()
                },
            ]
        );
        assert_eq!(parse("").unwrap(), vec![]);
        assert_eq!(parse("# only a comment\n\n").unwrap(), vec![]);
    }

    #[test]
    fn first_bad_line_is_the_error() {
        let cases: Vec<(String, usize, &str)> = vec![
            (
                format!("a@x:{BLF}\nb@x:{{PLAIN}}secret\nc@x:nothing"),
                2,
                "line 2: b@x: password scheme {PLAIN} is refused: it stores the password itself; hamail stores only hashes",
            ),
            (
                format!("a@x:{BLF}\nb@x\n"),
                2,
                "line 2: no ':' after the user name (expected user:{SCHEME}hash)",
            ),
            (format!("# c\n:{BLF}\n"), 2, "line 2: empty user name"),
            (
                "a@x::1000:1000::/home/a::\n".into(),
                1,
                "line 1: a@x: no password hash (a line without a password cannot log in)",
            ),
            (
                format!("a b@x:{BLF}\n"),
                1,
                "line 1: the user name contains a space or control character",
            ),
            (
                format!("a@x:{BLF}\n\nA@X:{SHA512}\n"),
                3,
                "line 3: A@X: duplicate user (first on line 1)",
            ),
            (
                "a@x:$6$salt$hash\n".into(),
                1,
                "line 1: a@x: stored password has no {SCHEME} prefix (expected e.g. {ARGON2ID}$argon2id$...)",
            ),
            (
                "a@x:{SHA512-CRYPT}$6$abc$tooshort\n".into(),
                1,
                "line 1: a@x: {SHA512-CRYPT} hash is malformed: the hash is not 86 characters of [./0-9A-Za-z]",
            ),
        ];
        for (text, line, msg) in cases {
            let err = parse(&text).unwrap_err();
            assert_eq!(err.line, line, "{text}");
            assert_eq!(err.to_string(), msg, "{text}");
            assert!(!err.to_string().contains("secret"));
        }
    }

    #[test]
    fn debug_hides_the_hash() {
        let entries = parse(&format!("u@x:{SHA512}")).unwrap();
        let shown = format!("{:?}", entries[0]);
        assert!(shown.contains("{SHA512-CRYPT}..."), "{shown}");
        assert!(!shown.contains("j/VLdUa0"), "{shown}");
    }
}
