//! Sessions over an in-memory pipe with a fake backend: what the smtpd
//! answers and what it hands to the queue, without sockets or raft.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use common::Client;
use hamail_smtp::{Backend, BackendError, EnqueueError, Settings, Tables, serve_stream};
use hamail_types::{DomainKind, DomainName, MailAddress, NewMessage, NodeId};
use tokio::io::{AsyncWriteExt, DuplexStream};
use tokio_util::sync::CancellationToken;

#[derive(Default)]
struct Fake {
    queued: Mutex<Vec<NewMessage>>,
    no_quorum: AtomicBool,
    fail_enqueue: AtomicBool,
    /// user -> stored hash.
    users: Mutex<std::collections::HashMap<String, String>>,
    /// (user, old, new) of every rehash asked.
    rehashed: Mutex<Vec<(String, String, String)>>,
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
    fn user_hash(&self, user: &MailAddress) -> Result<Option<String>, BackendError> {
        Ok(self.users.lock().unwrap().get(&user.to_string()).cloned())
    }
    fn sender_logins(&self, sender: &MailAddress) -> Result<Vec<MailAddress>, BackendError> {
        Ok(match sender.to_string().as_str() {
            "team@example.jp" => vec![MailAddress::parse("user@example.jp").unwrap()],
            _ => Vec::new(),
        })
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
    async fn rehash(
        &self,
        user: MailAddress,
        old: String,
        new: String,
    ) -> Result<(), BackendError> {
        self.rehashed
            .lock()
            .unwrap()
            .push((user.to_string(), old, new));
        Ok(())
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
    (Client::new(ours), session)
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

// ---------------------------------------------------------------- AUTH

fn b64(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// A submission session (AUTH allowed without TLS here: the pipe is no
/// socket; TLS itself is tested with real clients in tests/tests/smtp.rs).
fn submission(fake: Arc<Fake>, limit: u32) -> Client {
    use hamail_auth::limiter::FailureLimiter;
    use hamail_auth::pool::VerifyPool;
    use hamail_smtp::{AuthService, PasswordSource, Role};
    let mut settings = test_settings();
    settings.role = Role::Mx;
    let service = AuthService::new(
        PasswordSource::Cluster(VerifyPool::new(2, std::time::Duration::from_secs(60))),
        FailureLimiter::new(
            limit,
            std::time::Duration::from_secs(600),
            std::time::Duration::from_secs(600),
        ),
        false,
        true,
    )
    .unwrap();
    settings.auth = Some(Arc::new(service));
    start_with(fake, settings, CancellationToken::new()).0
}

fn with_user(user: &str, password: &str) -> Arc<Fake> {
    let fake = Arc::new(Fake::default());
    let hash = hamail_auth::password::hash_password(password.as_bytes()).unwrap();
    fake.users.lock().unwrap().insert(user.into(), hash);
    fake
}

#[tokio::test]
async fn auth_plain_and_login_then_only_owned_senders() {
    let fake = with_user("user@example.jp", "s3cret");
    let mut c = submission(fake.clone(), 10);
    c.reply().await;
    let r = c.cmd("AUTH PLAIN AHVzZXJAZXhhbXBsZS5qcABzM2NyZXQ=").await;
    assert!(r.starts_with("503 5.5.1"), "AUTH before EHLO: {r}");
    let ehlo = c.cmd("EHLO client.test").await;
    assert!(ehlo.contains("AUTH PLAIN LOGIN"), "{ehlo}");
    let r = c
        .cmd(&format!("AUTH PLAIN {}", b64(b"\0user@example.jp\0wrong")))
        .await;
    assert!(r.starts_with("535 5.7.8"), "wrong password: {r}");
    let r = c
        .cmd(&format!("AUTH PLAIN {}", b64(b"\0user@example.jp\0s3cret")))
        .await;
    assert!(r.starts_with("235 2.7.0"), "{r}");
    let r = c
        .cmd(&format!("AUTH PLAIN {}", b64(b"\0user@example.jp\0s3cret")))
        .await;
    assert!(
        r.starts_with("503 5.5.1") && r.contains("already"),
        "twice: {r}"
    );
    // Not its address: refused; its own, its alias and an allowed one pass.
    let r = c.cmd("MAIL FROM:<boss@example.jp>").await;
    assert!(
        r.starts_with("553 5.7.1") && r.contains("not owned by user user@example.jp"),
        "{r}"
    );
    for sender in ["user@example.jp", "info@example.jp", "team@example.jp", ""] {
        let r = c.cmd(&format!("MAIL FROM:<{sender}>")).await;
        assert!(r.starts_with("250"), "{sender}: {r}");
        // Authenticated: relays anywhere.
        let r = c.cmd("RCPT TO:<someone@elsewhere.example>").await;
        assert!(r.starts_with("250"), "{r}");
        c.cmd("RSET").await;
    }
    c.cmd("MAIL FROM:<user@example.jp>").await;
    c.cmd("RCPT TO:<someone@elsewhere.example>").await;
    let r = c.cmd("AUTH LOGIN").await;
    assert!(r.starts_with("503"), "AUTH during a transaction: {r}");
    c.cmd("DATA").await;
    let r = c.cmd("Subject: no date\r\n\r\nhello\r\n.").await;
    assert!(r.starts_with("250"), "{r}");
    let body = String::from_utf8(fake.queued.lock().unwrap()[0].body.clone()).unwrap();
    assert!(body.contains("with ESMTPA id"), "{body}");
    assert!(
        body.contains("(Authenticated sender: user@example.jp)"),
        "{body}"
    );
    assert!(
        body.contains("\r\nDate: ") && body.contains("\r\nMessage-ID: <"),
        "{body}"
    );

    // LOGIN, step by step, on a second session.
    let mut c = submission(fake.clone(), 10);
    c.reply().await;
    c.cmd("EHLO client.test").await;
    assert_eq!(c.cmd("AUTH LOGIN").await.trim_end(), "334 VXNlcm5hbWU6");
    assert_eq!(
        c.cmd(&b64(b"user@example.jp")).await.trim_end(),
        "334 UGFzc3dvcmQ6"
    );
    let r = c.cmd(&b64(b"s3cret")).await;
    assert!(r.starts_with("235"), "{r}");
}

#[tokio::test]
async fn hostile_auth_gets_clear_errors_and_the_next_client_is_served() {
    let fake = with_user("user@example.jp", "s3cret");
    let mut c = submission(fake.clone(), 100);
    c.reply().await;
    c.cmd("EHLO client.test").await;
    for (line, code) in [
        ("AUTH CRAM-MD5", "504 5.5.4"),
        ("AUTH", "501 5.5.4"),
        ("AUTH PLAIN !!!notbase64", "501 5.5.2"),
        ("AUTH PLAIN *", "501 5.7.0"),
        // user NUL password, one NUL missing.
        ("AUTH PLAIN dXNlckBleGFtcGxlLmpwAHMzY3JldA==", "535 5.7.8"),
        // empty password
        ("AUTH PLAIN AHVzZXJAZXhhbXBsZS5qcAA=", "535 5.7.8"),
        // another authorization identity
        (
            "AUTH PLAIN Ym9zc0BleGFtcGxlLmpwAHVzZXJAZXhhbXBsZS5qcABzM2NyZXQ=",
            "535 5.7.8",
        ),
    ] {
        let r = c.cmd(line).await;
        assert!(r.starts_with(code), "{line}: {r}");
    }
    // Cancel in the middle of LOGIN.
    assert!(c.cmd("AUTH LOGIN").await.starts_with("334"));
    let r = c.cmd("*").await;
    assert!(r.starts_with("501 5.7.0"), "{r}");
    // An initial response of 20 KB.
    let big = format!("AUTH PLAIN {}", "A".repeat(20 * 1024));
    let r = c.cmd(&big).await;
    assert!(r.starts_with("500 5.5.6"), "{r}");
    // Nothing above authenticated; the right password still works.
    let r = c.cmd("MAIL FROM:<user@example.jp>").await;
    assert!(
        r.starts_with("250"),
        "Mx role: MAIL without AUTH is fine: {r}"
    );
    c.cmd("RSET").await;
    let r = c
        .cmd(&format!(
            "AUTH PLAIN {}",
            b64(b"user@example.jp\0user@example.jp\0s3cret")
        ))
        .await;
    assert!(r.starts_with("235"), "authzid = user is fine: {r}");
}

#[tokio::test]
async fn failures_block_the_address_even_for_the_right_password() {
    let fake = with_user("user@example.jp", "s3cret");
    // One service (one limiter) for all the sessions from one address.
    use hamail_auth::limiter::FailureLimiter;
    use hamail_auth::pool::VerifyPool;
    use hamail_smtp::{AuthService, PasswordSource};
    let service = Arc::new(
        AuthService::new(
            PasswordSource::Cluster(VerifyPool::new(2, std::time::Duration::from_secs(60))),
            FailureLimiter::new(
                3,
                std::time::Duration::from_secs(600),
                std::time::Duration::from_secs(600),
            ),
            false,
            false,
        )
        .unwrap(),
    );
    let mut settings = test_settings();
    settings.auth = Some(service);
    let (mut c, _) = start_with(fake.clone(), settings.clone(), CancellationToken::new());
    c.reply().await;
    c.cmd("EHLO client.test").await;
    for _ in 0..3 {
        let r = c
            .cmd(&format!("AUTH PLAIN {}", b64(b"\0user@example.jp\0bad")))
            .await;
        assert!(r.starts_with("535"), "{r}");
    }
    let r = c
        .cmd(&format!("AUTH PLAIN {}", b64(b"\0user@example.jp\0s3cret")))
        .await;
    assert!(r.starts_with("454 4.7.0"), "blocked: {r}");
    // A new session from the same address: still blocked.
    let (mut c, _) = start_with(fake.clone(), settings, CancellationToken::new());
    c.reply().await;
    c.cmd("EHLO client.test").await;
    let r = c
        .cmd(&format!("AUTH PLAIN {}", b64(b"\0user@example.jp\0s3cret")))
        .await;
    assert!(r.starts_with("454 4.7.0"), "blocked: {r}");
}

#[tokio::test]
async fn an_imported_hash_is_upgraded_after_a_login() {
    let fake = Arc::new(Fake::default());
    // {SHA512-CRYPT} of "secret" (`openssl passwd -6 -salt saltsalt secret`).
    let old = "{SHA512-CRYPT}$6$saltsalt$TVLlQcbpFVof5W3Yz4DTP6gRstiNuHwwTt6GLc1E5n0U0aDehy0S5knV8wiOQSpT0Y77vwPZN.Pq.H91p5hVO1".to_string();
    fake.users
        .lock()
        .unwrap()
        .insert("user@example.jp".into(), old.clone());
    let mut c = submission(fake.clone(), 10);
    c.reply().await;
    c.cmd("EHLO client.test").await;
    let r = c
        .cmd(&format!("AUTH PLAIN {}", b64(b"\0user@example.jp\0secret")))
        .await;
    assert!(r.starts_with("235"), "{r}");
    let rehashed = hamail_tests_poll(|| fake.rehashed.lock().unwrap().first().cloned()).await;
    assert_eq!(rehashed.0, "user@example.jp");
    assert_eq!(rehashed.1, old);
    assert!(
        rehashed.2.starts_with("{ARGON2ID}$argon2id$"),
        "{}",
        rehashed.2
    );
}

/// Polls `f` until it gives a value (bounded by PATIENCE).
async fn hamail_tests_poll<T>(f: impl Fn() -> Option<T>) -> T {
    let end = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(tokio::time::Instant::now() < end, "gave up waiting");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The content filter's mark is set on the queued message by the listener
/// that took it; the re-injection listener sets none, checks no
/// recipients for mynetworks, and refuses everyone else at RCPT.
#[tokio::test]
async fn the_content_filter_mark_and_the_reinjection_listener() {
    let filter: hamail_types::TransportSpec = "smtp:[127.0.0.1]:10024".parse().unwrap();
    let session = |settings: Settings, fake: Arc<Fake>| {
        start_with(fake, settings, CancellationToken::new()).0
    };
    let send = |rcpt: &'static str| {
        move |mut c: Client| async move {
            c.reply().await;
            c.cmd("EHLO filter.test").await;
            assert!(c.cmd("MAIL FROM:<a@client.test>").await.starts_with("250"));
            let r = c.cmd(&format!("RCPT TO:<{rcpt}>")).await;
            if !r.starts_with("250") {
                return r;
            }
            c.cmd("DATA").await;
            c.cmd("Subject: x\r\n\r\nx\r\n.").await
        }
    };

    // The MX marks what it takes.
    let fake = Arc::new(Fake::default());
    let mut mx = test_settings();
    mx.content_filter = Some(filter.clone());
    let r = send("user@example.jp")(session(mx, fake.clone())).await;
    assert!(r.starts_with("250"), "{r}");
    assert_eq!(fake.queued.lock().unwrap()[0].content_filter, Some(filter));

    // The way back, from mynetworks: any recipient, no mark.
    let fake = Arc::new(Fake::default());
    let mut back = test_settings();
    back.role = hamail_smtp::Role::Reinject;
    back.mynetworks = vec!["192.0.2.9/32".parse().unwrap()];
    let r = send("nobody@example.jp")(session(back.clone(), fake.clone())).await;
    assert!(r.starts_with("250"), "{r}");
    let relayed = send("someone@elsewhere.test")(session(back, fake.clone())).await;
    assert!(relayed.starts_with("250"), "{relayed}");
    let marks: Vec<_> = fake
        .queued
        .lock()
        .unwrap()
        .iter()
        .map(|m| m.content_filter.clone())
        .collect();
    assert_eq!(marks, vec![None, None]);

    // From anywhere else: refused at RCPT, nothing queued.
    let fake = Arc::new(Fake::default());
    let mut outside = test_settings();
    outside.role = hamail_smtp::Role::Reinject;
    let r = send("user@example.jp")(session(outside, fake.clone())).await;
    assert!(
        r.starts_with("554 5.7.1 <unknown[192.0.2.9]>: Client host rejected"),
        "{r}"
    );
    assert!(fake.queued.lock().unwrap().is_empty());
}

/// A message that has passed 49 hosts gets our Received header as its 50th
/// and is refused (Postfix's hopcount_limit): a content filter re-injecting
/// into the MX ends there instead of looping for ever.
#[tokio::test]
async fn a_message_in_a_mail_loop_is_refused_at_the_hop_limit() {
    for (hops, want) in [(48, "250"), (49, "554 5.4.0 Error: too many hops")] {
        let fake = Arc::new(Fake::default());
        let mut c = start(fake.clone());
        c.reply().await;
        c.cmd("EHLO client.test").await;
        c.cmd("MAIL FROM:<a@client.test>").await;
        c.cmd("RCPT TO:<user@example.jp>").await;
        c.cmd("DATA").await;
        let received = "Received: from a by b; x\r\n".repeat(hops);
        let r = c.cmd(&format!("{received}Subject: x\r\n\r\nx\r\n.")).await;
        assert!(r.starts_with(want), "{hops} hops: {r}");
        assert_eq!(fake.queued.lock().unwrap().len(), usize::from(hops == 48));
    }
}
