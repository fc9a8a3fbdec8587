//! Mailbox quotas for Maildir delivery (Postfix's virtual_mailbox_limit
//! with `virtual_overquota_bounce`): a mailbox's usage is read from its
//! Maildir++ `maildirsize` file when it has one (the sum of its lines after
//! the first), else from the sizes of the files in `cur/` and `new/` of the
//! mailbox and its `.Folder`s. A delivery that would take the usage past
//! the quota is not written; after one that is, `maildirsize` (if present)
//! gets the message's line, as Dovecot and Courier expect.
//!
//! Two deliveries to one mailbox at the same moment may both fit alone and
//! together exceed the quota by one message; Postfix's virtual has the same
//! allowance, and Dovecot's `maildirsize` recalculation corrects it.

use std::io::Write;
use std::path::{Path, PathBuf};

use hamail_types::MailAddress;

use super::maildir;

/// What a Maildir delivery with a quota did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MaildirDelivery {
    /// Written; the file's path in `new/`.
    Delivered(PathBuf),
    /// Not written: `usage + size` would pass `quota` (bytes).
    OverQuota { usage: u64, size: u64, quota: u64 },
}

/// What a bounced or deferred over-quota delivery says (Postfix's text,
/// with the enhanced code first so the DSN and the log carry it).
pub fn over_quota_reason(permanent: bool, usage: u64, size: u64, quota: u64) -> String {
    let code = if permanent { "552 5.2.2" } else { "452 4.2.2" };
    format!(
        "{code} maildir delivery failed: Sorry, the user's maildir has overdrawn his diskspace quota, please try again later. (mailbox {usage} bytes + message {size} bytes > quota {quota} bytes)"
    )
}

/// The bytes a message takes in the mailbox: what `maildir::deliver`
/// writes, its `Delivered-To:` line and the message.
pub fn delivered_size(rcpt: &MailAddress, message: &[u8]) -> u64 {
    (format!("Delivered-To: {rcpt}\r\n").len() + message.len()) as u64
}

/// The usage a `maildirsize` file records: the sum of the sizes on every
/// line after the first (the quota definition, which we do not use: the
/// quota is the replicated one). `None` if a line is not `bytes count`.
pub fn maildirsize_usage(text: &str) -> Option<u64> {
    let mut total: i64 = 0;
    for line in text.lines().skip(1) {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let mut parts = line.split_whitespace();
        let bytes: i64 = parts.next()?.parse().ok()?;
        let _count: i64 = parts.next()?.parse().ok()?;
        if parts.next().is_some() {
            return None;
        }
        total = total.saturating_add(bytes);
    }
    Some(total.max(0) as u64)
}

/// A file's size in a Maildir: the `,S=` of its name (Maildir++), else
/// what the file system says.
fn file_size(entry: &std::fs::DirEntry) -> u64 {
    let name = entry.file_name();
    let name = name.to_string_lossy();
    let base = name.split(':').next().unwrap_or("");
    if let Some(n) = base
        .split(',')
        .skip(1)
        .find_map(|p| p.strip_prefix("S="))
        .and_then(|n| n.parse().ok())
    {
        return n;
    }
    entry.metadata().map(|m| m.len()).unwrap_or(0)
}

fn sum_dir(dir: &Path) -> std::io::Result<u64> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut total = 0u64;
    for entry in rd.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_file()) {
            total = total.saturating_add(file_size(&entry));
        }
    }
    Ok(total)
}

/// The mailbox's usage in bytes (0 for a mailbox not made yet).
pub fn usage(mailbox: &Path) -> std::io::Result<u64> {
    match std::fs::read_to_string(mailbox.join("maildirsize")) {
        Ok(text) => {
            if let Some(n) = maildirsize_usage(&text) {
                return Ok(n);
            }
            tracing::warn!(mailbox = %mailbox.display(), "maildirsize is malformed; counting the files");
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut total = sum_dir(&mailbox.join("cur"))?.saturating_add(sum_dir(&mailbox.join("new"))?);
    let folders = match std::fs::read_dir(mailbox) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    for entry in folders.flatten() {
        let is_folder = entry.file_name().to_string_lossy().starts_with('.')
            && entry.file_type().is_ok_and(|t| t.is_dir());
        if is_folder {
            let f = entry.path();
            total = total
                .saturating_add(sum_dir(&f.join("cur"))?)
                .saturating_add(sum_dir(&f.join("new"))?);
        }
    }
    Ok(total)
}

/// Appends a delivery to `maildirsize` if the mailbox has one (one short
/// write with O_APPEND, as Maildir++ writers do).
fn record_in_maildirsize(mailbox: &Path, size: u64) -> std::io::Result<()> {
    let path = mailbox.join("maildirsize");
    let mut f = match std::fs::OpenOptions::new().append(true).open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    f.write_all(format!("{size} 1\n").as_bytes())
}

/// Delivers into the recipient's Maildir under `base` unless the message
/// would take it past `quota` (bytes; `None`: no quota).
pub fn deliver_within_quota(
    base: &Path,
    rcpt: &MailAddress,
    quota: Option<u64>,
    queue_id: &str,
    hostname: &str,
    message: &[u8],
) -> std::io::Result<MaildirDelivery> {
    let mailbox = maildir::mailbox(base, rcpt);
    let size = delivered_size(rcpt, message);
    if let Some(quota) = quota {
        let usage = usage(&mailbox)?;
        if usage.saturating_add(size) > quota {
            return Ok(MaildirDelivery::OverQuota { usage, size, quota });
        }
    }
    let path = maildir::deliver(base, rcpt, queue_id, hostname, message)?;
    // The message is in: a maildirsize we cannot update is for Dovecot to
    // recalculate, not a reason to deliver it twice.
    if let Err(e) = record_in_maildirsize(&mailbox, size) {
        tracing::warn!(mailbox = %mailbox.display(), error = %e, "cannot update maildirsize");
    }
    Ok(MaildirDelivery::Delivered(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maildirsize_lines_are_summed_after_the_quota_line() {
        assert_eq!(
            maildirsize_usage("1000000S,1000C\n300 2\n-100 -1\n52 1\n"),
            Some(252)
        );
        assert_eq!(maildirsize_usage("1000000S\n"), Some(0));
        assert_eq!(maildirsize_usage("\n"), Some(0));
        assert_eq!(maildirsize_usage("1000S\n-500 -1\n"), Some(0));
        assert_eq!(maildirsize_usage("1000S\nabc 1\n"), None);
        assert_eq!(maildirsize_usage("1000S\n12\n"), None);
        assert_eq!(maildirsize_usage("1000S\n12 1 3\n"), None);
    }

    #[test]
    fn usage_counts_files_and_maildir_plus_plus_sizes_without_maildirsize() {
        let dir = tempfile::tempdir().unwrap();
        let mb = dir.path().join("box");
        assert_eq!(usage(&mb).unwrap(), 0, "a mailbox not made yet is empty");
        for sub in ["cur", "new", "tmp", ".Sent/cur", ".Sent/new"] {
            std::fs::create_dir_all(mb.join(sub)).unwrap();
        }
        std::fs::write(mb.join("new/1.a.host"), vec![b'x'; 100]).unwrap();
        std::fs::write(mb.join("cur/2.b.host,S=5000:2,S"), b"short").unwrap();
        std::fs::write(mb.join(".Sent/cur/3.c.host"), vec![b'x'; 40]).unwrap();
        std::fs::write(mb.join("tmp/4.d.host"), vec![b'x'; 9999]).unwrap();
        assert_eq!(usage(&mb).unwrap(), 100 + 5000 + 40);
        // With a maildirsize, it is what counts.
        std::fs::write(mb.join("maildirsize"), "1000S\n700 3\n").unwrap();
        assert_eq!(usage(&mb).unwrap(), 700);
    }

    #[test]
    fn a_delivery_past_the_quota_writes_nothing_and_one_within_updates_maildirsize() {
        let dir = tempfile::tempdir().unwrap();
        let rcpt = MailAddress::parse("user@example.jp").unwrap();
        let msg = b"Subject: x\r\n\r\nhello\r\n";
        let size = delivered_size(&rcpt, msg);
        let mb = maildir::mailbox(dir.path(), &rcpt);
        // No quota, no maildirsize: delivered, nothing else written.
        let r = deliver_within_quota(dir.path(), &rcpt, None, "Q1", "mx", msg).unwrap();
        assert!(matches!(r, MaildirDelivery::Delivered(_)), "{r:?}");
        assert!(!mb.join("maildirsize").exists());
        assert_eq!(usage(&mb).unwrap(), size);
        // Exactly full fits; one byte less does not.
        let r = deliver_within_quota(dir.path(), &rcpt, Some(2 * size), "Q2", "mx", msg).unwrap();
        assert!(matches!(r, MaildirDelivery::Delivered(_)), "{r:?}");
        let r =
            deliver_within_quota(dir.path(), &rcpt, Some(3 * size - 1), "Q3", "mx", msg).unwrap();
        assert_eq!(
            r,
            MaildirDelivery::OverQuota {
                usage: 2 * size,
                size,
                quota: 3 * size - 1
            }
        );
        assert_eq!(std::fs::read_dir(mb.join("new")).unwrap().count(), 2);
        // A maildirsize is read and kept up to date.
        std::fs::write(mb.join("maildirsize"), "100000S\n10 1\n").unwrap();
        let r = deliver_within_quota(dir.path(), &rcpt, Some(10 + size), "Q4", "mx", msg).unwrap();
        assert!(matches!(r, MaildirDelivery::Delivered(_)), "{r:?}");
        let text = std::fs::read_to_string(mb.join("maildirsize")).unwrap();
        assert_eq!(text, format!("100000S\n10 1\n{size} 1\n"));
        assert_eq!(usage(&mb).unwrap(), 10 + size);
        let r = deliver_within_quota(dir.path(), &rcpt, Some(10 + size), "Q5", "mx", msg).unwrap();
        assert!(matches!(r, MaildirDelivery::OverQuota { .. }), "{r:?}");
        assert!(over_quota_reason(true, 1, 2, 3).starts_with("552 5.2.2 maildir delivery failed"));
        assert!(over_quota_reason(false, 1, 2, 3).starts_with("452 4.2.2 "));
    }
}
