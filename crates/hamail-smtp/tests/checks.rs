//! Header and body checks at the end of DATA, over an in-memory pipe with a
//! fake backend whose `Tables::content_checks` gives compiled tables: the
//! reply each action gives the client and what reaches the queue.

use std::sync::{Arc, Mutex};

use hamail_checks::{CheckKind, Checks, parse};
use hamail_smtp::{Backend, BackendError, EnqueueError, Settings, Tables, serve_stream};
use hamail_types::{DomainKind, DomainName, MailAddress, NewMessage, NodeId};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, DuplexStream, ReadHalf, WriteHalf};
use tokio_util::sync::CancellationToken;

struct Fake {
    queued: Mutex<Vec<NewMessage>>,
    checks: Result<Option<Arc<Checks>>, BackendError>,
}

impl Tables for Fake {
    fn domain_kind(&self, d: &DomainName) -> Result<Option<DomainKind>, BackendError> {
        Ok((d.as_str() == "example.jp").then_some(DomainKind::Relay))
    }
    fn recipient_known(&self, _: &MailAddress) -> Result<bool, BackendError> {
        Ok(true)
    }
    fn alias_targets(&self, _: &MailAddress) -> Result<Option<Vec<MailAddress>>, BackendError> {
        Ok(None)
    }
    fn user_hash(&self, _: &MailAddress) -> Result<Option<String>, BackendError> {
        Ok(None)
    }
    fn sender_logins(&self, _: &MailAddress) -> Result<Vec<MailAddress>, BackendError> {
        Ok(Vec::new())
    }
    fn content_checks(&self) -> Result<Option<Arc<Checks>>, BackendError> {
        self.checks.clone()
    }
}

impl Backend for Fake {
    fn node_id(&self) -> NodeId {
        7
    }
    fn has_quorum(&self) -> bool {
        true
    }
    async fn enqueue(&self, m: NewMessage) -> Result<(), EnqueueError> {
        self.queued.lock().unwrap().push(m);
        Ok(())
    }
    async fn rehash(&self, _: MailAddress, _: String, _: String) -> Result<(), BackendError> {
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

fn start(fake: Arc<Fake>) -> Client {
    let (ours, theirs) = tokio::io::duplex(1 << 16);
    tokio::spawn(serve_stream(
        fake,
        Arc::new(Settings::with_defaults("mx.test")),
        Box::new(theirs),
        "192.0.2.9:40000".parse().unwrap(),
        CancellationToken::new(),
    ));
    let (r, w) = tokio::io::split(ours);
    Client {
        r: BufReader::new(r),
        w,
    }
}

fn fake(header: &str, body: &str) -> Arc<Fake> {
    Arc::new(Fake {
        queued: Mutex::new(Vec::new()),
        checks: Ok(Some(Arc::new(Checks {
            header: Some(parse(CheckKind::Header, header).unwrap()),
            body: Some(parse(CheckKind::Body, body).unwrap()),
        }))),
    })
}

/// One transaction on a fresh session; the reply to the end of data.
async fn send(fake: &Arc<Fake>, message: &str) -> String {
    let mut c = start(fake.clone());
    assert!(c.reply().await.starts_with("220"));
    assert!(c.cmd("EHLO client.test").await.starts_with("250"));
    assert!(c.cmd("MAIL FROM:<a@client.test>").await.starts_with("250"));
    assert!(c.cmd("RCPT TO:<user@example.jp>").await.starts_with("250"));
    assert!(c.cmd("DATA").await.starts_with("354"));
    c.cmd(&format!("{message}\r\n.")).await
}

const HEADER: &str = "\
/^Subject:.*viagra/ REJECT no spam here
/^Subject:.*hold me/ HOLD
/^X-Mailer:/ IGNORE
/^Subject: \\[ext\\] (.*)/ REPLACE Subject: $1
/^From:/ PREPEND X-Seen: yes
";
const BODY: &str = "/^drop$/ DISCARD\n/^5\\.7\\.0 test$/ REJECT 5.7.0 own code\n";

#[tokio::test]
async fn each_action_answers_and_queues_as_postfix_does() {
    let f = fake(HEADER, BODY);
    let r = send(&f, "Subject: cheap viagra\r\n\r\nhi").await;
    assert_eq!(r, "550 5.7.1 no spam here\r\n");
    let r = send(&f, "Subject: x\r\n\r\n5.7.0 test").await;
    assert_eq!(r, "550 5.7.0 own code\r\n");
    let r = send(&f, "Subject: x\r\n\r\ndrop").await;
    assert!(r.starts_with("250 2.0.0 Ok: queued as "), "{r}");
    assert!(f.queued.lock().unwrap().is_empty());

    let r = send(&f, "Subject: please hold me\r\n\r\nhi").await;
    assert!(r.starts_with("250 2.0.0 Ok: queued as "), "{r}");
    let r = send(
        &f,
        "X-Mailer: bulk\r\n  continued\r\nSubject: [ext] hello\r\nFrom: a@client.test\r\n\r\nhi",
    )
    .await;
    assert!(r.starts_with("250 2.0.0 Ok: queued as "), "{r}");
    let q = f.queued.lock().unwrap();
    assert_eq!(q.len(), 2);
    assert!(q[0].held);
    assert!(!q[1].held);
    let body = String::from_utf8(q[1].body.clone()).unwrap();
    let after_received = body.split_once("\r\nSubject:").map(|(_, b)| b).unwrap();
    assert_eq!(
        after_received, " hello\r\nX-Seen: yes\r\nFrom: a@client.test\r\n\r\nhi\r\n",
        "{body}"
    );
    assert!(!body.contains("X-Mailer") && !body.contains("continued"));
}

#[tokio::test]
async fn unreadable_checks_defer_never_let_mail_through() {
    let f = Arc::new(Fake {
        queued: Mutex::new(Vec::new()),
        checks: Err(BackendError::Read("disk on fire".into())),
    });
    let r = send(&f, "Subject: x\r\n\r\nhi").await;
    assert!(r.starts_with("451 4.3.0 "), "{r}");
    assert!(f.queued.lock().unwrap().is_empty());
}

#[tokio::test]
async fn no_tables_change_nothing() {
    let f = Arc::new(Fake {
        queued: Mutex::new(Vec::new()),
        checks: Ok(None),
    });
    let r = send(&f, "Subject: cheap viagra\r\nX-Mailer: x\r\n\r\nhi").await;
    assert!(r.starts_with("250 "), "{r}");
    let body = String::from_utf8(f.queued.lock().unwrap()[0].body.clone()).unwrap();
    assert!(body.ends_with("Subject: cheap viagra\r\nX-Mailer: x\r\n\r\nhi\r\n"));
}
