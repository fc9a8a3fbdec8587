//! Maildir delivery: one file per recipient, written to `tmp/`, fsynced,
//! then renamed into `new/` (and the directory fsynced), so a message is
//! either wholly in the mailbox or not at all. The mailbox of `user@domain`
//! under a transport `maildir:/base` is `/base/domain/user/`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use hamail_types::MailAddress;

static SEQ: AtomicU64 = AtomicU64::new(0);

/// The mailbox directory of a recipient under a base directory.
/// MailAddress refuses leading dots and `..` in local parts; a `/` (legal
/// in an atom) is replaced, so a recipient never escapes the base.
pub fn mailbox(base: &Path, rcpt: &MailAddress) -> PathBuf {
    let safe = |s: &str| s.replace('/', "_");
    base.join(safe(rcpt.domain().as_str()))
        .join(safe(rcpt.local()))
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Delivers `message` (with a `Delivered-To:` line on top) into the
/// recipient's Maildir; returns the file's path in `new/`.
pub fn deliver(
    base: &Path,
    rcpt: &MailAddress,
    queue_id: &str,
    hostname: &str,
    message: &[u8],
) -> std::io::Result<PathBuf> {
    let dir = mailbox(base, rcpt);
    for sub in ["tmp", "new", "cur"] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let name = format!(
        "{}.M{}P{}Q{}_{}.{}",
        now.as_secs(),
        now.subsec_micros(),
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed),
        queue_id,
        hostname.replace(['/', ':'], "_")
    );
    let tmp = dir.join("tmp").join(&name);
    let new = dir.join("new").join(&name);
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(format!("Delivered-To: {rcpt}\r\n").as_bytes())?;
        f.write_all(message)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &new)?;
        sync_dir(&dir.join("new"))
    };
    write().inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })?;
    Ok(new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_lands_in_new_and_nothing_stays_in_tmp() {
        let dir = tempfile::tempdir().unwrap();
        let rcpt = MailAddress::parse("user@example.jp").unwrap();
        let path = deliver(dir.path(), &rcpt, "ABC", "mx1", b"Subject: x\r\n\r\nhi\r\n").unwrap();
        assert!(path.starts_with(dir.path().join("example.jp/user/new")));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("Delivered-To: user@example.jp\r\nSubject: x"));
        let tmp = std::fs::read_dir(dir.path().join("example.jp/user/tmp")).unwrap();
        assert_eq!(tmp.count(), 0);
    }
}
