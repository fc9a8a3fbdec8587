//! Header and body checks at the end of DATA, over an in-memory pipe with a
//! fake backend whose `Tables::content_checks` gives compiled tables: the
//! reply each action gives the client and what reaches the queue.

mod common;

use std::sync::Arc;

use common::Fake;
use hamail_checks::{CheckKind, Checks, parse};
use hamail_smtp::BackendError;

fn fake(header: &str, body: &str) -> Arc<Fake> {
    Arc::new(Fake {
        checks: Ok(Some(Arc::new(Checks {
            header: Some(parse(CheckKind::Header, header).unwrap()),
            body: Some(parse(CheckKind::Body, body).unwrap()),
        }))),
        ..Fake::default()
    })
}

/// One transaction from an outside client; the reply to the end of data.
async fn send(fake: &Arc<Fake>, message: &str) -> String {
    common::send(fake, "192.0.2.9:40000", "a@client.test", message).await
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
        checks: Err(BackendError::Read("disk on fire".into())),
        ..Fake::default()
    });
    let r = send(&f, "Subject: x\r\n\r\nhi").await;
    assert!(r.starts_with("451 4.3.0 "), "{r}");
    assert!(f.queued.lock().unwrap().is_empty());
}

#[tokio::test]
async fn no_tables_change_nothing() {
    let f = Arc::new(Fake::default());
    let r = send(&f, "Subject: cheap viagra\r\nX-Mailer: x\r\n\r\nhi").await;
    assert!(r.starts_with("250 "), "{r}");
    let body = String::from_utf8(f.queued.lock().unwrap()[0].body.clone()).unwrap();
    assert!(body.ends_with("Subject: cheap viagra\r\nX-Mailer: x\r\n\r\nhi\r\n"));
}
