//! Sessions over an in-memory pipe with a fake backend: what the smtpd
//! answers and what it hands to the queue, without sockets or raft.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use hamail_smtp::{Backend, BackendError, EnqueueError, Settings, Tables, serve_stream};
use hamail_types::{DomainKind, DomainName, MailAddress, NewMessage, NodeId};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, DuplexStream, ReadHalf, WriteHalf};
use tokio_util::sync::CancellationToken;

#[derive(Default)]
struct Fake {
    queued: Mutex<Vec<NewMessage>>,
    no_quorum: AtomicBool,
    fail_enqueue: AtomicBool,
}

impl Tables for Fake {
    fn domain_kind(&self, d: &DomainName) -> Result<Option<DomainKind>, BackendError> {
        Ok((d.as_str() == "example.jp").then_some(DomainKind::Relay))
    }
    fn recipient_known(&self, a: &MailAddress) -> Result<bool, BackendError> {
        Ok(a.local() == "user" || a.local() == "ユーザー")
    }
    fn alias_targets(&self, a: &MailAddress) -> Result<Option<Vec<MailAddress>>, BackendError> {
        Ok((a.local() == "info").then(|| vec![MailAddress::parse("user@example.jp").unwrap()]))
    }
}

impl Backend for Fake {
    fn node_id(&self) -> NodeId {
        7
    }
    fn has_quorum(&self) -> bool {
        !self.no_quorum.load(Ordering::Relaxed)
    }
    async fn enqueue(&self, m: NewMessage) -> Result<(), EnqueueError> {
        if self.fail_enqueue.load(Ordering::Relaxed) {
            return Err(EnqueueError::NoQuorum("test".into()));
        }
        self.queued.lock().unwrap().push(m);
        Ok(())
    }
}

struct Client {
    r: BufReader<ReadHalf<DuplexStream>>,
    w: WriteHalf<DuplexStream>,
}

impl Client {
    async fn reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let mut l = String::new();
            if self.r.read_line(&mut l).await.unwrap() == 0 {
                return all;
            }
            all.push_str(&l);
            if l.len() < 4 || l.as_bytes()[3] != b'-' {
                return all;
            }
        }
    }
    async fn cmd(&mut self, line: &str) -> String {
        self.w
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .unwrap();
        self.reply().await
    }
}

fn test_settings() -> Settings {
    let mut settings = Settings::with_defaults("mx.test");
    settings.message_size_limit = 4096;
    settings
}

fn start(fake: Arc<Fake>) -> Client {
    start_with(fake, test_settings(), CancellationToken::new()).0
}

/// A session over a pipe; its task's handle tells whether it ended (and
/// whether it panicked).
fn start_with(
    fake: Arc<Fake>,
    settings: Settings,
    cancel: CancellationToken,
) -> (Client, tokio::task::JoinHandle<()>) {
    let (ours, theirs) = tokio::io::duplex(1 << 16);
    let session = tokio::spawn(serve_stream(
        fake,
        Arc::new(settings),
        Box::new(theirs),
        "192.0.2.9:40000".parse().unwrap(),
        cancel,
    ));
    let (r, w) = tokio::io::split(ours);
    (
        Client {
            r: BufReader::new(r),
            w,
        },
        session,
    )
}

/// Generous bound for a session to end: a test that hangs here has found a
/// session that outlives its deadlines.
const PATIENCE: std::time::Duration = std::time::Duration::from_secs(120);

/// The numbers a client may write, at their edges (4096 is the size limit).
const EDGES: [&str; 11] = [
    "0",
    "1",
    "4091",
    "4096",
    "4097",
    "2147483648",
    "9223372036854775808",
    "18446744073709551614",
    "18446744073709551615",
    "18446744073709551616",
    "99999999999999999999999999",
];

#[tokio::test]
async fn bdat_sizes_at_their_edges_never_panic_or_overflow() {
    for size in EDGES {
        let fake = Arc::new(Fake::default());
        let (mut c, session) = start_with(fake.clone(), test_settings(), CancellationToken::new());
        c.reply().await;
        c.cmd("EHLO client.test").await;
        c.cmd("MAIL FROM:<>").await;
        c.cmd("RCPT TO:<user@example.jp>").await;
        c.w.write_all(b"BDAT 5\r\nhello").await.unwrap();
        let r = c.reply().await;
        assert!(r.starts_with("250"), "first chunk: {r}");
        c.w.write_all(format!("BDAT {size} LAST\r\n").as_bytes())
            .await
            .unwrap();
        // Send the chunk when it is small enough to send; a huge announced
        // chunk is cut short by closing the connection.
        let n: u64 = size.parse().unwrap_or(u64::MAX);
        if n <= 4097 {
            let chunk = vec![b'x'; n as usize];
            c.w.write_all(&chunk).await.unwrap();
            let r = c.reply().await;
            let want = if n + 5 <= 4096 { "250" } else { "552 5.3.4" };
            assert!(r.starts_with(want), "BDAT {size}: {r}");
        } else {
            c.w.write_all(b"xxxx").await.unwrap();
        }
        drop(c);
        let ended = tokio::time::timeout(PATIENCE, session).await;
        assert!(
            matches!(ended, Ok(Ok(()))),
            "BDAT {size}: the session panicked or hung: {ended:?}"
        );
        let queued = fake.queued.lock().unwrap().len();
        assert_eq!(
            queued,
            usize::from(n.saturating_add(5) <= 4096),
            "BDAT {size}"
        );
    }
}

#[tokio::test]
async fn mail_size_at_its_edges_is_answered_never_panics() {
    for size in EDGES {
        let fake = Arc::new(Fake::default());
        let (mut c, session) = start_with(fake, test_settings(), CancellationToken::new());
        c.reply().await;
        c.cmd("EHLO client.test").await;
        let r = c.cmd(&format!("MAIL FROM:<a@b.example> SIZE={size}")).await;
        let fits = size.parse::<u64>().is_ok_and(|n| n <= 4096);
        let want = if fits { "250" } else { "5" };
        assert!(r.starts_with(want), "SIZE={size}: {r}");
        assert!(c.cmd("QUIT").await.starts_with("221"));
        drop(c);
        let ended = tokio::time::timeout(PATIENCE, session).await;
        assert!(matches!(ended, Ok(Ok(()))), "SIZE={size}: {ended:?}");
    }
}

/// A client that pipelines commands and never reads a reply: the session's
/// writes block once the pipe is full. `blocked` is told when a write of
/// the client cannot proceed: the session stopped reading, which it only
/// does while it waits to write its replies.
fn flood_without_reading(
    mut w: tokio::io::WriteHalf<DuplexStream>,
    blocked: Arc<tokio::sync::Notify>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let lines = "NOOP\r\n".repeat(1000);
        let bytes = lines.as_bytes();
        for _ in 0..1000 {
            let mut off = 0;
            while off < bytes.len() {
                // A zero timeout polls the write once: Err means it is
                // pending (and took nothing), so the pipe is full.
                let now = tokio::time::timeout(std::time::Duration::ZERO, w.write(&bytes[off..]));
                let written = match now.await {
                    Ok(r) => r,
                    Err(_) => {
                        blocked.notify_one();
                        w.write(&bytes[off..]).await
                    }
                };
                match written {
                    Ok(n) if n > 0 => off += n,
                    _ => return,
                }
            }
        }
    })
}

#[tokio::test]
async fn a_client_that_never_reads_is_dropped_at_the_timeout() {
    let mut settings = test_settings();
    settings.smtpd_timeout = std::time::Duration::from_secs(1);
    let (c, session) = start_with(
        Arc::new(Fake::default()),
        settings,
        CancellationToken::new(),
    );
    let Client { r, w } = c;
    let flood = flood_without_reading(w, Arc::new(tokio::sync::Notify::new()));
    let ended = tokio::time::timeout(PATIENCE, session).await;
    assert!(
        matches!(ended, Ok(Ok(()))),
        "the session outlived its timeout: {ended:?}"
    );
    drop(r);
    flood.abort();
}

#[tokio::test]
async fn shutdown_ends_a_session_whose_client_never_reads() {
    // The timeout is far away: only the shutdown token can end it.
    let cancel = CancellationToken::new();
    let (c, session) = start_with(Arc::new(Fake::default()), test_settings(), cancel.clone());
    let Client { r, w } = c;
    let blocked = Arc::new(tokio::sync::Notify::new());
    let flood = flood_without_reading(w, blocked.clone());
    // Shut down only once the session is blocked in a write.
    blocked.notified().await;
    cancel.cancel();
    let ended = tokio::time::timeout(PATIENCE, session).await;
    assert!(
        matches!(ended, Ok(Ok(()))),
        "shutdown waited on a stuck client: {ended:?}"
    );
    drop(r);
    flood.abort();
}

#[tokio::test]
async fn a_message_reaches_the_queue_with_envelope_and_received_header() {
    let fake = Arc::new(Fake::default());
    let mut c = start(fake.clone());
    assert_eq!(c.reply().await, "220 mx.test ESMTP\r\n");
    assert!(c.cmd("EHLO client.test").await.starts_with("250-mx.test"));
    assert!(c.cmd("MAIL FROM:<>").await.starts_with("250"));
    assert!(c.cmd("RCPT TO:<user@example.jp>").await.starts_with("250"));
    // Outside mynetworks (192.0.2.9): no relaying.
    assert!(
        c.cmd("RCPT TO:<x@other.test>")
            .await
            .starts_with("554 5.7.1")
    );
    assert!(c.cmd("DATA").await.starts_with("354"));
    let r = c.cmd("Subject: t\r\n\r\n..dot\r\n.").await;
    assert!(r.starts_with("250 2.0.0 Ok: queued as "), "{r}");
    let q = fake.queued.lock().unwrap();
    let m = &q[0];
    assert_eq!(m.sender, None);
    assert_eq!(m.owner, 7);
    assert_eq!(m.client, "unknown[192.0.2.9]");
    assert!(r.contains(m.queue_id.as_str()));
    let body = String::from_utf8(m.body.clone()).unwrap();
    assert!(body.starts_with(
        "Received: from client.test (unknown [192.0.2.9])\r\n\tby mx.test (hamail) with ESMTP id "
    ));
    assert!(body.ends_with("Subject: t\r\n\r\n.dot\r\n"), "{body:?}");
}

#[tokio::test]
async fn utf8_addresses_need_smtputf8() {
    let fake = Arc::new(Fake::default());
    let mut c = start(fake.clone());
    c.reply().await;
    c.cmd("EHLO client.test").await;
    assert!(
        c.cmd("MAIL FROM:<送信者@例え.jp>")
            .await
            .starts_with("553 5.6.7")
    );
    assert!(c.cmd("MAIL FROM:<a@client.test>").await.starts_with("250"));
    assert!(
        c.cmd("RCPT TO:<ユーザー@example.jp>")
            .await
            .starts_with("553 5.6.7")
    );
    c.cmd("RSET").await;
    assert!(
        c.cmd("MAIL FROM:<a@client.test> SMTPUTF8")
            .await
            .starts_with("250")
    );
    assert!(
        c.cmd("RCPT TO:<ユーザー@example.jp>")
            .await
            .starts_with("250")
    );
}

#[tokio::test]
async fn no_quorum_means_421_and_a_failed_commit_means_451() {
    let fake = Arc::new(Fake::default());
    fake.no_quorum.store(true, Ordering::Relaxed);
    let mut c = start(fake.clone());
    assert!(c.reply().await.starts_with("421 4.3.2"));
    assert_eq!(c.reply().await, "", "closed after 421");

    fake.no_quorum.store(false, Ordering::Relaxed);
    fake.fail_enqueue.store(true, Ordering::Relaxed);
    let mut c = start(fake.clone());
    c.reply().await;
    c.cmd("EHLO client.test").await;
    c.cmd("MAIL FROM:<a@client.test>").await;
    c.cmd("RCPT TO:<user@example.jp>").await;
    c.cmd("DATA").await;
    assert!(c.cmd("x\r\n.").await.starts_with("451 4.3.0"));
    assert!(fake.queued.lock().unwrap().is_empty());
}

#[tokio::test]
async fn oversize_and_smuggled_bodies_are_not_queued() {
    let fake = Arc::new(Fake::default());
    let mut c = start(fake.clone());
    c.reply().await;
    c.cmd("EHLO client.test").await;
    assert!(
        c.cmd("MAIL FROM:<a@client.test> SIZE=5000")
            .await
            .starts_with("552 5.3.4")
    );
    c.cmd("MAIL FROM:<a@client.test>").await;
    c.cmd("RCPT TO:<user@example.jp>").await;
    c.cmd("DATA").await;
    let big = "x".repeat(5000);
    assert!(c.cmd(&format!("{big}\r\n.")).await.starts_with("552 5.3.4"));
    c.cmd("MAIL FROM:<a@client.test>").await;
    c.cmd("RCPT TO:<user@example.jp>").await;
    c.cmd("DATA").await;
    c.w.write_all(b"a\n.\nMAIL FROM:<evil@x.test>\r\n")
        .await
        .unwrap();
    assert!(c.reply().await.starts_with("521 5.5.2"));
    assert!(fake.queued.lock().unwrap().is_empty());
}

#[tokio::test]
async fn aliases_are_expanded_before_the_message_is_queued() {
    let fake = Arc::new(Fake::default());
    let mut c = start(fake.clone());
    c.reply().await;
    c.cmd("EHLO client.test").await;
    c.cmd("MAIL FROM:<a@client.test>").await;
    assert!(c.cmd("RCPT TO:<info@example.jp>").await.starts_with("250"));
    assert!(c.cmd("RCPT TO:<user@example.jp>").await.starts_with("250"));
    c.cmd("DATA").await;
    assert!(c.cmd("x\r\n.").await.starts_with("250"));
    let q = fake.queued.lock().unwrap();
    let rcpts: Vec<String> = q[0].recipients.iter().map(|r| r.to_string()).collect();
    assert_eq!(rcpts, ["user@example.jp"], "once, as its alias's target");
}
