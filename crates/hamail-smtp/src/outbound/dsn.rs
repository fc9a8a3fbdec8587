//! Delivery status notifications (RFC 3464): one multipart/report message
//! to the sender, from `<>`, naming every recipient that failed for good,
//! with the original message's headers. Pure: builds bytes.

use hamail_types::{MailAddress, QueueEntry};

use crate::headers::rfc5322_date;

/// A recipient that failed for good, and why (the remote reply or ours).
#[derive(Debug, Clone)]
pub struct Failure {
    pub recipient: MailAddress,
    /// Enhanced status code, e.g. `5.1.1`.
    pub status: String,
    /// The remote MTA, when there was one.
    pub remote_mta: Option<String>,
    pub diagnostic: String,
}

/// The enhanced status code at the start of a reply text, or a default for
/// the reply class.
pub fn status_of(reply: &str, permanent: bool) -> String {
    let rest = reply.get(4..).unwrap_or("");
    let first = rest.split_whitespace().next().unwrap_or("");
    let parts: Vec<&str> = first.split('.').collect();
    if parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    {
        return first.to_string();
    }
    if permanent {
        "5.0.0".into()
    } else {
        "4.0.0".into()
    }
}

/// The header section of a message (up to the first empty line).
fn headers(body: &[u8]) -> &[u8] {
    let mut i = 0;
    while i < body.len() {
        let end = body[i..]
            .iter()
            .position(|b| *b == b'\n')
            .map_or(body.len(), |p| i + p + 1);
        let line = &body[i..end];
        if line == b"\r\n" || line == b"\n" {
            return &body[..i];
        }
        i = end;
    }
    body
}

/// The DSN for `entry` (whose sender must not be `<>`), as message bytes.
pub fn build(
    entry: &QueueEntry,
    body: &[u8],
    failures: &[Failure],
    hostname: &str,
    unix_secs: u64,
) -> Vec<u8> {
    let sender = entry.sender_str();
    let boundary = format!("{}.{}/{}", entry.queue_id, unix_secs, hostname);
    let mut m = String::new();
    m.push_str(&format!(
        "From: MAILER-DAEMON@{hostname} (Mail Delivery System)\r\n"
    ));
    m.push_str(&format!("To: {sender}\r\n"));
    m.push_str("Subject: Undelivered Mail Returned to Sender\r\n");
    m.push_str(&format!("Date: {}\r\n", rfc5322_date(unix_secs)));
    m.push_str(&format!(
        "Message-Id: <{}.{}@{hostname}>\r\n",
        entry.queue_id, unix_secs
    ));
    m.push_str("Auto-Submitted: auto-replied\r\n");
    m.push_str("MIME-Version: 1.0\r\n");
    m.push_str(&format!(
        "Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\"\r\n"
    ));
    m.push_str("Content-Transfer-Encoding: 8bit\r\n\r\n");
    m.push_str("This is a MIME-encapsulated message.\r\n\r\n");
    m.push_str(&format!("--{boundary}\r\nContent-Description: Notification\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"));
    m.push_str(&format!(
        "This is the mail system at host {hostname}.\r\n\r\nI'm sorry to have to inform you that your message could not\r\nbe delivered to one or more recipients. It's attached below.\r\n\r\n"
    ));
    for f in failures {
        m.push_str(&format!(
            "<{}>: {}\r\n",
            f.recipient,
            one_line(&f.diagnostic)
        ));
    }
    m.push_str(&format!(
        "\r\n--{boundary}\r\nContent-Description: Delivery report\r\nContent-Type: message/delivery-status\r\n\r\n"
    ));
    m.push_str(&format!("Reporting-MTA: dns; {hostname}\r\n"));
    m.push_str(&format!("X-Hamail-Queue-ID: {}\r\n", entry.queue_id));
    m.push_str(&format!("X-Hamail-Sender: rfc822; {sender}\r\n"));
    m.push_str(&format!(
        "Arrival-Date: {}\r\n",
        rfc5322_date(entry.arrival_ms / 1000)
    ));
    for f in failures {
        m.push_str("\r\n");
        m.push_str(&format!("Final-Recipient: rfc822; {}\r\n", f.recipient));
        m.push_str(&format!("Original-Recipient: rfc822; {}\r\n", f.recipient));
        m.push_str("Action: failed\r\n");
        m.push_str(&format!("Status: {}\r\n", f.status));
        if let Some(mta) = &f.remote_mta {
            m.push_str(&format!("Remote-MTA: dns; {mta}\r\n"));
        }
        m.push_str(&format!(
            "Diagnostic-Code: smtp; {}\r\n",
            one_line(&f.diagnostic)
        ));
    }
    m.push_str(&format!(
        "\r\n--{boundary}\r\nContent-Description: Undelivered Message Headers\r\nContent-Type: text/rfc822-headers\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    ));
    let mut out = m.into_bytes();
    out.extend_from_slice(headers(body));
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    out
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use hamail_types::{QueueId, QueueRecipient, RecipientStatus};

    #[test]
    fn a_dsn_is_a_multipart_report_with_the_original_headers() {
        let entry = QueueEntry {
            queue_id: QueueId::new(1, 1),
            sender: Some(MailAddress::parse("s@example.net").unwrap()),
            recipients: vec![QueueRecipient {
                address: MailAddress::parse("u@example.jp").unwrap(),
                status: RecipientStatus::Pending,
            }],
            arrival_ms: 0,
            size: 10,
            owner: 1,
            epoch: 1,
            held: false,
            content_filter: None,
            client: String::new(),
            helo: String::new(),
            smtputf8: false,
            eight_bit: false,
        };
        let dsn = build(
            &entry,
            b"Subject: hi\r\nFrom: s@example.net\r\n\r\nsecret body\r\n",
            &[Failure {
                recipient: MailAddress::parse("u@example.jp").unwrap(),
                status: status_of("550 5.1.1 <u@example.jp>: unknown", true),
                remote_mta: Some("mx.example.jp".into()),
                diagnostic: "550 5.1.1 <u@example.jp>: unknown".into(),
            }],
            "mx1.test",
            0,
        );
        let t = String::from_utf8(dsn).unwrap();
        assert!(t.contains("Content-Type: multipart/report; report-type=delivery-status"));
        assert!(t.contains("Content-Type: message/delivery-status"));
        assert!(t.contains("Final-Recipient: rfc822; u@example.jp\r\nOriginal-Recipient: rfc822; u@example.jp\r\nAction: failed\r\nStatus: 5.1.1"));
        assert!(t.contains("Subject: hi\r\nFrom: s@example.net\r\n"));
        assert!(!t.contains("secret body"));
        assert_eq!(status_of("451 try later", false), "4.0.0");
    }
}
