//! The `user` and `sender` verbs. A password is read here — from a file or
//! standard input, never from the command line — and hashed (Argon2id) in
//! this process, so only the hash crosses the admin socket. A passwd-file
//! is checked whole before anything is sent; the first bad line is named.

use std::io::{BufRead, IsTerminal};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Subcommand;
use hamail_admin::{AdminRequest, SenderRow, UserRow};
use hamail_types::{DomainName, MailAddress, PasswordHash};

#[derive(Debug, Subcommand)]
pub enum UserVerb {
    /// Add a submission user (password from --password-file or standard input).
    ///
    /// The password is the first line of --password-file, or one line of
    /// standard input (asked twice, without echo, on a terminal); never an
    /// argument. Only its Argon2id hash leaves this process.
    Add {
        address: MailAddress,
        /// A file whose first line is the password.
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
    },
    /// Change a user's password (read as for `user add`).
    Passwd {
        address: MailAddress,
        /// A file whose first line is the password.
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
    },
    /// Delete a user and the `sender allow` entries naming it.
    Del { address: MailAddress },
    /// List users: address, hash scheme, created and changed (UTC).
    List {
        /// Only this domain's users.
        #[arg(long)]
        domain: Option<DomainName>,
        /// Also print each user's {SCHEME}hash.
        #[arg(long)]
        show_hashes: bool,
        #[arg(long)]
        json: bool,
    },
    /// Import a Dovecot passwd-file, all or nothing; existing users are replaced.
    ///
    /// Lines are `user@domain:{SCHEME}hash[:...]`. If any line is bad, the
    /// first one is named and nothing is imported. Users that exist
    /// already are replaced (they get the file's hash). Schemes: ARGON2ID,
    /// BLF-CRYPT, SHA512-CRYPT, SHA256-CRYPT, SSHA512; {PLAIN} is refused.
    Import {
        /// The passwd-file.
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum SenderVerb {
    /// Let USER send with envelope sender ADDRESS (USER must exist).
    ///
    /// Besides this, a user may send as its own address and as the
    /// addresses aliased to it.
    Allow {
        address: MailAddress,
        user: MailAddress,
    },
    /// Withdraw a `sender allow` entry.
    Deny {
        address: MailAddress,
        user: MailAddress,
    },
    /// List the `sender allow` entries: sender, then the user.
    List {
        #[arg(long)]
        json: bool,
    },
}

/// Longest password accepted (SASL clients send far less).
const MAX_PASSWORD: usize = 1024;

pub(super) fn user_request(verb: UserVerb) -> anyhow::Result<(AdminRequest, bool)> {
    Ok(match verb {
        UserVerb::Add {
            address,
            password_file,
        } => {
            let hash = hashed_password(&address, password_file.as_deref())?;
            (AdminRequest::UserAdd { address, hash }, false)
        }
        UserVerb::Passwd {
            address,
            password_file,
        } => {
            let hash = hashed_password(&address, password_file.as_deref())?;
            (AdminRequest::UserPasswd { address, hash }, false)
        }
        UserVerb::Del { address } => (AdminRequest::UserDel { address }, false),
        UserVerb::List {
            domain,
            show_hashes,
            json,
        } => (
            AdminRequest::UserList {
                domain,
                hashes: show_hashes,
            },
            json,
        ),
        UserVerb::Import { file } => (
            AdminRequest::UserImport {
                users: read_passwd_file(&file)?,
            },
            false,
        ),
    })
}

pub(super) fn sender_request(verb: SenderVerb) -> (AdminRequest, bool) {
    match verb {
        SenderVerb::Allow { address, user } => (
            AdminRequest::SenderAllow {
                sender: address,
                user,
            },
            false,
        ),
        SenderVerb::Deny { address, user } => (
            AdminRequest::SenderDeny {
                sender: address,
                user,
            },
            false,
        ),
        SenderVerb::List { json } => (AdminRequest::SenderList, json),
    }
}

/// Reads the password and hashes it with Argon2id.
fn hashed_password(address: &MailAddress, file: Option<&Path>) -> anyhow::Result<PasswordHash> {
    let password = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let first = text.lines().next().unwrap_or("");
            check_password(first).with_context(|| format!("{}: first line", path.display()))?;
            first.to_string()
        }
        None if std::io::stdin().is_terminal() => {
            let first = prompt(&format!("Password for {address}: "))?;
            check_password(&first)?;
            if prompt("Again: ")? != first {
                bail!("the two passwords differ; nothing changed");
            }
            first
        }
        None => {
            let mut line = String::new();
            let n = std::io::stdin()
                .lock()
                .read_line(&mut line)
                .context("cannot read the password from standard input")?;
            if n == 0 {
                bail!("no password on standard input: pipe one line, or give --password-file FILE");
            }
            let line = line.strip_suffix('\n').unwrap_or(&line);
            let line = line.strip_suffix('\r').unwrap_or(line);
            check_password(line).context("standard input")?;
            line.to_string()
        }
    };
    let hash = hamail_auth::password::hash_password(password.as_bytes())
        .context("cannot hash the password")?;
    PasswordHash::parse(&hash).context("the new hash")
}

fn prompt(text: &str) -> anyhow::Result<String> {
    eprint!("{text}");
    rpassword::read_password().context("cannot read the password from the terminal")
}

fn check_password(p: &str) -> anyhow::Result<()> {
    if p.is_empty() {
        bail!("the password is empty; an empty password is refused");
    }
    if p.len() > MAX_PASSWORD {
        bail!("the password is longer than {MAX_PASSWORD} bytes");
    }
    if p.contains('\0') {
        bail!("the password holds a NUL byte, which SASL PLAIN cannot carry");
    }
    Ok(())
}

/// A Dovecot passwd-file as (address, hash) pairs; the first bad line is
/// the error, naming the file and line.
fn read_passwd_file(file: &Path) -> anyhow::Result<Vec<(MailAddress, PasswordHash)>> {
    let name = file.display();
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {name}"))?;
    let entries = hamail_auth::passwd_file::parse(&text)
        .with_context(|| format!("{name}: nothing imported"))?;
    let mut lines = entry_lines(&text);
    let mut users: Vec<(MailAddress, PasswordHash)> = Vec::with_capacity(entries.len());
    let mut first_line = std::collections::BTreeMap::new();
    for (i, e) in entries.into_iter().enumerate() {
        let line = lines.next();
        let at = |cause: String| match line {
            Some(n) => anyhow::anyhow!("{name}: line {n}: {cause}; nothing imported"),
            None => anyhow::anyhow!(
                "{name}: user {} (entry {}): {cause}; nothing imported",
                e.user,
                i + 1
            ),
        };
        let address = MailAddress::parse(&e.user).map_err(|err| at(err.to_string()))?;
        let hash = PasswordHash::parse(&e.hash).map_err(|err| at(err.to_string()))?;
        if let Some(first) = first_line.insert(address.clone(), line) {
            let first = first
                .map(|n| format!(" (first on line {n})"))
                .unwrap_or_default();
            return Err(at(format!("user {address} appears twice{first}")));
        }
        users.push((address, hash));
    }
    if users.is_empty() {
        bail!("{name}: no users in the file, nothing imported");
    }
    Ok(users)
}

/// The line numbers of a passwd-file's entries, in order: every line but
/// blank ones and `#` comments, which is what `passwd_file::parse` skips
/// (it returns one entry per other line, or an error).
fn entry_lines(text: &str) -> impl Iterator<Item = usize> + '_ {
    text.split('\n').enumerate().filter_map(|(i, raw)| {
        let t = raw.trim();
        (!t.is_empty() && !t.starts_with('#')).then_some(i + 1)
    })
}

/// `YYYY-MM-DD HH:MM` (UTC) of a log time.
fn date(ms: u64) -> String {
    match time::OffsetDateTime::from_unix_timestamp((ms / 1000) as i64) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02}",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute()
        ),
        Err(_) => format!("{ms} ms"),
    }
}

pub(super) fn print_users(rows: Vec<UserRow>) {
    let w = rows.iter().map(|r| r.address.len()).max().unwrap_or(0);
    for r in rows {
        let line = format!(
            "{:w$}  {:<12}  created {}  changed {}",
            r.address,
            r.scheme,
            date(r.created_ms),
            date(r.changed_ms)
        );
        match r.hash {
            Some(h) => println!("{line}  {h}"),
            None => println!("{line}"),
        }
    }
}

pub(super) fn print_senders(rows: Vec<SenderRow>) {
    let w = rows.iter().map(|r| r.sender.len()).max().unwrap_or(0);
    for r in rows {
        println!("{:w$}  {}", r.sender, r.user);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_checked() {
        assert!(check_password("correct horse").is_ok());
        assert!(check_password("").is_err());
        assert!(check_password("a\0b").is_err());
        assert!(check_password(&"x".repeat(MAX_PASSWORD + 1)).is_err());
    }

    #[test]
    fn entry_lines_skip_blanks_and_comments() {
        let text = "# users\n\na@x:{H}\r\n  \n  # off\nb@x:{H}\nc@x:{H}";
        assert_eq!(entry_lines(text).collect::<Vec<_>>(), [3, 6, 7]);
    }

    #[test]
    fn dates_are_utc() {
        assert_eq!(date(0), "1970-01-01 00:00");
        assert_eq!(date(1_764_892_800_000), "2025-12-05 00:00");
    }
}
