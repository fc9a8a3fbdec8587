//! What the session tests share: a client over an in-memory pipe (every
//! file), and for the content-stage tests (checks.rs, dkim.rs) a fake
//! backend for one relay domain, example.jp, whose every recipient is
//! known, with the compiled checks and DKIM signers a test gives it.
#![allow(dead_code)] // each test file uses its own part

use std::sync::{Arc, Mutex};

use hamail_checks::Checks;
use hamail_dkim::Signers;
use hamail_smtp::{Backend, BackendError, EnqueueError, Settings, Tables, serve_stream};
use hamail_types::{DomainKind, DomainName, MailAddress, NewMessage, NodeId};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, DuplexStream, ReadHalf, WriteHalf};
use tokio_util::sync::CancellationToken;

pub struct Fake {
    pub queued: Mutex<Vec<NewMessage>>,
    pub checks: Result<Option<Arc<Checks>>, BackendError>,
    pub signers: Result<Option<Arc<Signers>>, BackendError>,
}

impl Default for Fake {
    fn default() -> Self {
        Fake {
            queued: Mutex::new(Vec::new()),
            checks: Ok(None),
            signers: Ok(None),
        }
    }
}

impl Fake {
    /// The bodies queued so far, as text.
    pub fn queued_bodies(&self) -> Vec<String> {
        self.queued
            .lock()
            .unwrap()
            .iter()
            .map(|m| String::from_utf8(m.body.clone()).unwrap())
            .collect()
    }
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
    fn dkim_signers(&self) -> Result<Option<Arc<Signers>>, BackendError> {
        self.signers.clone()
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

pub struct Client {
    pub r: BufReader<ReadHalf<DuplexStream>>,
    pub w: WriteHalf<DuplexStream>,
}

impl Client {
    /// The client end of the pipe whose other end a session serves.
    pub fn new(ours: DuplexStream) -> Client {
        let (r, w) = tokio::io::split(ours);
        Client {
            r: BufReader::new(r),
            w,
        }
    }

    /// One reply, all its lines.
    pub async fn reply(&mut self) -> String {
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

    pub async fn cmd(&mut self, line: &str) -> String {
        self.w
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .unwrap();
        self.reply().await
    }
}

/// A session with the default settings for a client at `peer`.
pub fn start(fake: Arc<Fake>, peer: &str) -> Client {
    let (ours, theirs) = tokio::io::duplex(1 << 16);
    tokio::spawn(serve_stream(
        fake,
        Arc::new(Settings::with_defaults("mx.test")),
        Box::new(theirs),
        peer.parse().unwrap(),
        CancellationToken::new(),
    ));
    Client::new(ours)
}

/// One transaction from `sender` to user@example.jp on a fresh session
/// from `peer`; the reply to the end of data.
pub async fn send(fake: &Arc<Fake>, peer: &str, sender: &str, message: &str) -> String {
    let mut c = start(fake.clone(), peer);
    assert!(c.reply().await.starts_with("220"));
    assert!(c.cmd("EHLO client.test").await.starts_with("250"));
    let r = c.cmd(&format!("MAIL FROM:<{sender}>")).await;
    assert!(r.starts_with("250"), "{r}");
    assert!(c.cmd("RCPT TO:<user@example.jp>").await.starts_with("250"));
    assert!(c.cmd("DATA").await.starts_with("354"));
    c.cmd(&format!("{message}\r\n.")).await
}
