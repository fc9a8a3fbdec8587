//! DKIM signing at the end of DATA, over an in-memory pipe with a fake
//! backend whose `Tables::dkim_signers` holds an Ed25519 key: mail from
//! mynetworks is queued with a DKIM-Signature of its From domain on top,
//! mail from an outside client is not signed, and keys that cannot be read
//! never cost a message (queued unsigned).

use std::sync::{Arc, Mutex};

use hamail_dkim::{Signers, SigningKeyRow, generate};
use hamail_smtp::{Backend, BackendError, EnqueueError, Settings, Tables, serve_stream};
use hamail_types::{DkimAlgorithm, DomainKind, DomainName, MailAddress, NewMessage, NodeId};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio_util::sync::CancellationToken;

struct Fake {
    queued: Mutex<Vec<NewMessage>>,
    signers: Result<Option<Arc<Signers>>, BackendError>,
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

fn signers() -> Arc<Signers> {
    let d = DomainName::parse("example.jp").unwrap();
    let k = generate(DkimAlgorithm::Ed25519, "e1").unwrap();
    let (s, errors) = Signers::load([SigningKeyRow {
        domain: &d,
        selector: "e1",
        algorithm: k.algorithm,
        private_key: &k.private_key,
    }]);
    assert!(errors.is_empty(), "{errors:?}");
    Arc::new(s)
}

/// One message from `peer`; the reply to the end of data.
async fn send(fake: &Arc<Fake>, peer: &str, message: &str) -> String {
    let (ours, theirs) = tokio::io::duplex(1 << 16);
    tokio::spawn(serve_stream(
        fake.clone(),
        Arc::new(Settings::with_defaults("mx.test")),
        Box::new(theirs),
        peer.parse().unwrap(),
        CancellationToken::new(),
    ));
    let (r, mut w) = tokio::io::split(ours);
    let mut r = BufReader::new(r);
    let mut last = String::new();
    let data = format!("{message}\r\n.");
    for line in [
        "EHLO client.test",
        "MAIL FROM:<a@example.jp>",
        "RCPT TO:<user@example.jp>",
        "DATA",
        data.as_str(),
    ] {
        // The greeting or the previous reply, whole.
        loop {
            last.clear();
            r.read_line(&mut last).await.unwrap();
            if last.len() < 4 || last.as_bytes()[3] != b'-' {
                break;
            }
        }
        w.write_all(format!("{line}\r\n").as_bytes()).await.unwrap();
    }
    last.clear();
    r.read_line(&mut last).await.unwrap();
    last
}

const MESSAGE: &str = "From: A <a@example.jp>\r\nTo: user@example.jp\r\nSubject: hi\r\n\r\nhello";

fn queued_bodies(f: &Fake) -> Vec<String> {
    f.queued
        .lock()
        .unwrap()
        .iter()
        .map(|m| String::from_utf8(m.body.clone()).unwrap())
        .collect()
}

#[tokio::test]
async fn mynetworks_mail_is_signed_and_outside_mail_is_not() {
    let f = Arc::new(Fake {
        queued: Mutex::new(Vec::new()),
        signers: Ok(Some(signers())),
    });
    let r = send(&f, "127.0.0.1:40000", MESSAGE).await;
    assert!(r.starts_with("250 2.0.0 Ok: queued as "), "{r}");
    let r = send(&f, "192.0.2.9:40000", MESSAGE).await;
    assert!(r.starts_with("250 2.0.0 Ok: queued as "), "{r}");
    let q = queued_bodies(&f);
    assert!(q[0].starts_with("DKIM-Signature: "), "{}", q[0]);
    let sig: String = q[0]
        .split("\r\nReceived:")
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    for tag in [
        "d=example.jp;",
        "s=e1;",
        "a=ed25519-sha256;",
        "c=relaxed/relaxed;",
    ] {
        assert!(sig.contains(tag), "{tag} in {sig}");
    }
    assert_eq!(q[0].matches("DKIM-Signature").count(), 1);
    assert!(q[0].ends_with(&format!("{MESSAGE}\r\n")), "{}", q[0]);
    assert!(!q[1].contains("DKIM-Signature"), "{}", q[1]);
}

#[tokio::test]
async fn unreadable_keys_queue_the_message_unsigned() {
    let f = Arc::new(Fake {
        queued: Mutex::new(Vec::new()),
        signers: Err(BackendError::Read("disk on fire".into())),
    });
    let r = send(&f, "127.0.0.1:40000", MESSAGE).await;
    assert!(r.starts_with("250 2.0.0 Ok: queued as "), "{r}");
    assert!(!queued_bodies(&f)[0].contains("DKIM-Signature"));
}
