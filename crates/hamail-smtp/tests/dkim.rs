//! DKIM signing at the end of DATA, over an in-memory pipe with a fake
//! backend whose `Tables::dkim_signers` holds an Ed25519 key: mail from
//! mynetworks is queued with a DKIM-Signature of its From domain on top,
//! mail from an outside client is not signed, and keys that cannot be read
//! never cost a message (queued unsigned).

mod common;

use std::sync::Arc;

use common::Fake;
use hamail_dkim::{Signers, SigningKeyRow, generate};
use hamail_smtp::BackendError;
use hamail_types::{DkimAlgorithm, DomainName};

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
    common::send(fake, peer, "a@example.jp", message).await
}

const MESSAGE: &str = "From: A <a@example.jp>\r\nTo: user@example.jp\r\nSubject: hi\r\n\r\nhello";

#[tokio::test]
async fn mynetworks_mail_is_signed_and_outside_mail_is_not() {
    let f = Arc::new(Fake {
        signers: Ok(Some(signers())),
        ..Fake::default()
    });
    let r = send(&f, "127.0.0.1:40000", MESSAGE).await;
    assert!(r.starts_with("250 2.0.0 Ok: queued as "), "{r}");
    let r = send(&f, "192.0.2.9:40000", MESSAGE).await;
    assert!(r.starts_with("250 2.0.0 Ok: queued as "), "{r}");
    let q = f.queued_bodies();
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
        signers: Err(BackendError::Read("disk on fire".into())),
        ..Fake::default()
    });
    let r = send(&f, "127.0.0.1:40000", MESSAGE).await;
    assert!(r.starts_with("250 2.0.0 Ok: queued as "), "{r}");
    assert!(!f.queued_bodies()[0].contains("DKIM-Signature"));
}
