//! The client against a scripted milter on a real socket: each reply, each
//! change, the protocol flags, and the ways a milter can fail.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hamail_milter::wire::{self, action, proto};
use hamail_milter::{
    Change, HeaderChange, MilterAddress, MilterError, Outcome, Timeouts, Transaction, Verdict,
    check,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};

/// What the scripted milter does on a command.
enum Act {
    /// Write these bytes (whole packets, or anything at all).
    Send(Vec<u8>),
    /// Write nothing (macros, replies waived by a protocol flag).
    Silent,
    /// Never answer.
    Hang,
    /// Close the connection.
    Close,
}

fn pkt(code: u8, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    wire::packet(&mut out, code, data);
    out
}

fn optneg(actions: u32, protocol: u32) -> Act {
    Act::Send(pkt(b'O', &wire::optneg(6, actions, protocol)))
}

const ALL_ACTIONS: u32 = wire::OFFERED_ACTIONS;

type Seen = Arc<Mutex<Vec<(u8, Vec<u8>)>>>;

/// The commands the milter received, in order (macros included; the
/// closing QUIT, sent without waiting, left out).
fn codes(seen: &Seen) -> String {
    seen.lock()
        .unwrap()
        .iter()
        .map(|(c, _)| *c as char)
        .filter(|c| *c != 'Q')
        .collect()
}

async fn serve_one<S>(mut s: S, seen: Seen, mut script: impl FnMut(u8, &[u8]) -> Act)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        let mut len = [0u8; 4];
        if s.read_exact(&mut len).await.is_err() {
            return;
        }
        let mut data = vec![0u8; u32::from_be_bytes(len) as usize];
        if s.read_exact(&mut data).await.is_err() {
            return;
        }
        let (code, rest) = (data[0], &data[1..]);
        seen.lock().unwrap().push((code, rest.to_vec()));
        let act = match code {
            b'D' => Act::Silent,
            b'Q' => return,
            _ => script(code, rest),
        };
        match act {
            Act::Send(b) => {
                if s.write_all(&b).await.is_err() {
                    return;
                }
            }
            Act::Silent => {}
            Act::Hang => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                return;
            }
            Act::Close => return,
        }
    }
}

/// A scripted milter on 127.0.0.1, one connection.
async fn milter(script: impl FnMut(u8, &[u8]) -> Act + Send + 'static) -> (MilterAddress, Seen) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let seen: Seen = Arc::default();
    let s2 = seen.clone();
    tokio::spawn(async move {
        if let Ok((s, _)) = l.accept().await {
            serve_one(s, s2, script).await;
        }
    });
    let addr = MilterAddress::parse(&format!("inet:127.0.0.1:{port}")).unwrap();
    (addr, seen)
}

/// A milter that negotiates everything and says continue, with `at_eom`
/// sent at the end of the message.
fn continuing(at_eom: Vec<u8>) -> impl FnMut(u8, &[u8]) -> Act + Send + 'static {
    move |code, _| match code {
        b'O' => optneg(ALL_ACTIONS, 0),
        b'E' => Act::Send(at_eom.clone()),
        _ => Act::Send(pkt(b'c', b"")),
    }
}

const MESSAGE: &[u8] =
    b"Received: from client\r\n\tby us\r\nSubject: test\r\nX-Old: 1\r\n\r\nHello\r\n";

fn recipients() -> Vec<String> {
    vec!["a@example.com".into(), "b@example.com".into()]
}

fn short() -> Timeouts {
    Timeouts {
        connect: Duration::from_millis(500),
        command: Duration::from_millis(500),
        content: Duration::from_millis(500),
    }
}

async fn run_with(
    addr: &MilterAddress,
    message: &[u8],
    limit: usize,
) -> Result<Outcome, MilterError> {
    let rcpts = recipients();
    let txn = Transaction {
        client_addr: "192.0.2.7".parse().unwrap(),
        client_port: 40000,
        helo: "client.example",
        sender: "sender@example.org",
        recipients: &rcpts,
        message,
        queue_id: "4ABCDEF",
        hostname: "mx.example.com",
        daemon_name: "mx.example.com",
        auth: Some(("PLAIN", "user@example.com")),
    };
    check(addr, &short(), limit, &txn).await
}

async fn run(addr: &MilterAddress) -> Result<Outcome, MilterError> {
    run_with(addr, MESSAGE, 1 << 20).await
}

#[tokio::test]
async fn a_continuing_milter_sees_the_whole_session_and_its_macros() {
    let (addr, seen) = milter(continuing(pkt(b'a', b""))).await;
    let out = run(&addr).await.unwrap();
    assert_eq!(out.verdict, Verdict::Pass);
    assert!(out.changes.is_empty() && out.quarantine.is_none());
    assert_eq!(out.apply_to_message(MESSAGE), None);
    // optneg, macro+connect, helo, macro+mail, 2x macro+rcpt, macro+data,
    // 3 headers, eoh, body, macro+eom, quit.
    assert_eq!(codes(&seen), "ODCHDMDRDRDTLLLNBDE");
    let seen = seen.lock().unwrap();
    let find = |code: u8, n: usize| {
        seen.iter()
            .filter(|(c, _)| *c == code)
            .nth(n)
            .unwrap()
            .1
            .clone()
    };
    assert_eq!(find(b'C', 0), b"[192.0.2.7]\x004\x9c\x40192.0.2.7\0");
    assert_eq!(find(b'H', 0), b"client.example\0");
    assert_eq!(find(b'M', 0), b"<sender@example.org>\0");
    assert_eq!(find(b'R', 1), b"<b@example.com>\0");
    // The folded Received value reaches the milter joined by LF, without the
    // space after the colon.
    assert_eq!(find(b'L', 0), b"Received\0from client\n\tby us\0");
    assert_eq!(find(b'B', 0), b"Hello\r\n");
    let mail_macros = String::from_utf8(find(b'D', 1)).unwrap();
    assert!(mail_macros.starts_with('M'), "{mail_macros:?}");
    for m in [
        "i\x004ABCDEF\0",
        "{mail_addr}\0sender@example.org\0",
        "{auth_authen}\0user@example.com\0",
    ] {
        assert!(mail_macros.contains(m), "{mail_macros:?}");
    }
    let connect_macros = String::from_utf8(find(b'D', 0)).unwrap();
    assert!(connect_macros.contains("j\0mx.example.com\0"));
    assert!(connect_macros.contains("{daemon_name}\0mx.example.com\0"));
    assert!(
        String::from_utf8(find(b'D', 2))
            .unwrap()
            .contains("{rcpt_addr}\0a@example.com\0")
    );
    let opt = find(b'O', 0);
    assert_eq!(
        opt,
        wire::optneg(6, wire::OFFERED_ACTIONS, wire::OFFERED_PROTOCOL)
    );
}

#[tokio::test]
async fn every_verdict() {
    // (stage that answers, its reply, the verdict)
    let cases: Vec<(u8, Vec<u8>, Verdict)> = vec![
        (
            b'C',
            pkt(b'r', b""),
            Verdict::Reject("550 5.7.1 Command rejected".into()),
        ),
        (
            b'H',
            pkt(b't', b""),
            Verdict::Tempfail("451 4.7.1 Service unavailable - try again later".into()),
        ),
        (
            b'M',
            pkt(b'y', b"554 5.7.1 Go away\0"),
            Verdict::Reject("554 5.7.1 Go away".into()),
        ),
        (
            b'R',
            pkt(b'y', b"421 4.7.0 Later\0"),
            Verdict::Tempfail("421 4.7.0 Later".into()),
        ),
        (b'T', pkt(b'd', b""), Verdict::Discard),
        (b'L', pkt(b'a', b""), Verdict::Pass),
        (
            b'N',
            pkt(b'r', b""),
            Verdict::Reject("550 5.7.1 Command rejected".into()),
        ),
        (b'B', pkt(b'd', b""), Verdict::Discard),
        (
            b'E',
            pkt(b'y', b"550-5.7.1 first\r\n550 5.7.1 second\0"),
            Verdict::Reject("550-5.7.1 first\r\n550 5.7.1 second".into()),
        ),
        (b'E', pkt(b'c', b""), Verdict::Pass),
    ];
    for (stage, reply, verdict) in cases {
        let (addr, seen) = milter(move |code, _| match code {
            b'O' => optneg(ALL_ACTIONS, 0),
            c if c == stage => Act::Send(reply.clone()),
            _ => Act::Send(pkt(b'c', b"")),
        })
        .await;
        let out = run(&addr).await.unwrap();
        assert_eq!(out.verdict, verdict, "stage {}", stage as char);
        // Nothing after the stage that ended the conversation but QUIT.
        let c = codes(&seen);
        let last = c.chars().last().unwrap();
        assert_eq!(last, stage as char, "{c}");
    }
}

#[tokio::test]
async fn every_change_at_end_of_message() {
    let mut eom = Vec::new();
    eom.extend(pkt(b'p', b""));
    eom.extend(pkt(b'h', b"X-Added\0yes\0"));
    eom.extend(pkt(b'm', b"\0\0\0\x01X-Old\0changed\0"));
    eom.extend(pkt(b'm', b"\0\0\0\x01Subject\0\0"));
    eom.extend(pkt(b'i', b"\0\0\0\0X-First\0top\nfolded\0"));
    eom.extend(pkt(b'b', b"New body\n"));
    eom.extend(pkt(b'b', b"second chunk\r\n"));
    eom.extend(pkt(b'+', b"<c@example.com>\0"));
    eom.extend(pkt(b'2', b"<d@example.com>\0NOTIFY=NEVER\0"));
    eom.extend(pkt(b'-', b"<a@example.com>\0"));
    eom.extend(pkt(b'e', b"<new@example.org>\0"));
    eom.extend(pkt(b'q', b"looks odd\0"));
    eom.extend(pkt(b'a', b""));
    let (addr, _) = milter(continuing(eom)).await;
    let out = run(&addr).await.unwrap();
    assert_eq!(out.verdict, Verdict::Pass);
    assert_eq!(out.quarantine.as_deref(), Some("looks odd"));
    let rest: Vec<&Change> = out
        .changes
        .iter()
        .filter(|c| !matches!(c, Change::Header(_)))
        .collect();
    assert_eq!(
        rest,
        [
            &Change::AddRecipient("c@example.com".into()),
            &Change::AddRecipient("d@example.com".into()),
            &Change::DeleteRecipient("a@example.com".into()),
            &Change::ChangeSender("new@example.org".into()),
        ]
    );
    assert!(
        out.changes
            .contains(&Change::Header(HeaderChange::ReplaceBody(
                b"New body\nsecond chunk\r\n".to_vec()
            )))
    );
    let m = out.apply_to_message(MESSAGE).unwrap();
    assert_eq!(
        String::from_utf8(m).unwrap(),
        "X-First: top\r\nfolded\r\nReceived: from client\r\n\tby us\r\nX-Old: changed\r\nX-Added: yes\r\n\r\nNew body\r\nsecond chunk\r\n"
    );
}

#[tokio::test]
async fn protocol_flags_are_honoured() {
    let flags = proto::NOCONNECT
        | proto::NOHELO
        | proto::NR_MAIL
        | proto::NORCPT
        | proto::NODATA
        | proto::NR_HDR
        | proto::NR_EOH
        | proto::SKIP
        | proto::HDR_LEADSPC;
    let body = vec![b'x'; 3 * 65535];
    let mut message = b"Subject:  two spaces\r\n\r\n".to_vec();
    message.extend_from_slice(&body);
    let (addr, seen) = milter(move |code, _| match code {
        b'O' => optneg(action::ADDHDRS, flags),
        // Replies waived: the client must not wait for them.
        b'M' | b'L' | b'N' => Act::Silent,
        b'B' => Act::Send(pkt(b's', b"")),
        b'E' => {
            let mut v = pkt(b'h', b"X-Lead\0 kept as is\0");
            v.extend(pkt(b'c', b""));
            Act::Send(v)
        }
        _ => Act::Send(pkt(b'c', b"")),
    })
    .await;
    let out = run_with(&addr, &message, 1 << 20).await.unwrap();
    // No connect, helo, rcpt, data; one body chunk only (skip).
    assert_eq!(codes(&seen), "ODMLNBDE");
    let seen = seen.lock().unwrap();
    let header = &seen.iter().find(|(c, _)| *c == b'L').unwrap().1;
    assert_eq!(header, b"Subject\0  two spaces\0");
    assert_eq!(
        seen.iter().find(|(c, _)| *c == b'B').unwrap().1.len(),
        65535
    );
    assert_eq!(
        out.changes,
        [Change::Header(HeaderChange::Add {
            name: "X-Lead".into(),
            value: b" kept as is".to_vec()
        })]
    );
}

#[tokio::test]
async fn progress_extends_the_timeout() {
    // Five progress packets 200 ms apart (a second in all, twice the
    // 500 ms content timeout), then a reject: each progress restarts it.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        loop {
            let mut len = [0u8; 4];
            if s.read_exact(&mut len).await.is_err() {
                return;
            }
            let mut data = vec![0u8; u32::from_be_bytes(len) as usize];
            s.read_exact(&mut data).await.unwrap();
            match data[0] {
                b'O' => s
                    .write_all(&pkt(b'O', &wire::optneg(6, ALL_ACTIONS, 0)))
                    .await
                    .unwrap(),
                b'D' => {}
                b'Q' => return,
                b'E' => {
                    for _ in 0..5 {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        s.write_all(&pkt(b'p', b"")).await.unwrap();
                    }
                    s.write_all(&pkt(b'r', b"")).await.unwrap();
                }
                _ => s.write_all(&pkt(b'c', b"")).await.unwrap(),
            }
        }
    });
    let addr = MilterAddress::parse(&format!("inet:127.0.0.1:{port}")).unwrap();
    let out = run(&addr).await.unwrap();
    assert_eq!(
        out.verdict,
        Verdict::Reject("550 5.7.1 Command rejected".into())
    );
}

#[tokio::test]
async fn a_body_replacement_above_the_limit_fails() {
    let mut eom = Vec::new();
    for _ in 0..3 {
        eom.extend(pkt(b'b', &vec![b'y'; 60_000]));
    }
    eom.extend(pkt(b'c', b""));
    let (addr, _) = milter(continuing(eom)).await;
    let e = run_with(&addr, MESSAGE, 150_000).await.unwrap_err();
    assert!(matches!(e, MilterError::ReplacementTooBig(150_000)), "{e}");
    assert!(
        e.to_string().contains("larger than the message size limit"),
        "{e}"
    );
}

#[tokio::test]
async fn endless_header_additions_are_bounded() {
    let mut eom = Vec::new();
    for _ in 0..100 {
        eom.extend(pkt(
            b'h',
            &[&b"X-Flood\0"[..], &vec![b'f'; 4000], b"\0"].concat(),
        ));
    }
    eom.extend(pkt(b'c', b""));
    let (addr, _) = milter(continuing(eom)).await;
    let e = run_with(&addr, MESSAGE, 100_000).await.unwrap_err();
    assert!(matches!(e, MilterError::ChangesTooBig(100_000)), "{e}");
}

#[tokio::test]
async fn hostile_and_broken_milters_fail_with_a_reason() {
    // (script at end of message, what the error says)
    let cases: Vec<(Act, &str)> = vec![
        (
            Act::Send(b"\xff\xff\xff\xffa".to_vec()),
            "a packet of 4294967295 bytes",
        ),
        (Act::Send(b"\0\0\0\0".to_vec()), "a packet of 0 bytes"),
        (Act::Send(pkt(b'Z', b"")), "unknown reply code 0x5a"),
        (Act::Send(pkt(b'y', b"250 fine\0")), "not a 4xx or 5xx"),
        (
            Act::Send(pkt(b's', b"")),
            "SMFIR_SKIP is not a reply to SMFIC_BODYEOB",
        ),
        (Act::Hang, "timed out after 500 ms during SMFIC_BODYEOB"),
        (
            Act::Close,
            "connection closed while waiting for the reply to SMFIC_BODYEOB",
        ),
        (Act::Send(b"\0\0\0\x10c".to_vec()), "timed out after 500 ms"),
    ];
    for (act, says) in cases {
        let mut act = Some(act);
        let (addr, _) = milter(move |code, _| match code {
            b'O' => optneg(ALL_ACTIONS, 0),
            b'E' => act.take().unwrap_or(Act::Close),
            _ => Act::Send(pkt(b'c', b"")),
        })
        .await;
        let e = run(&addr).await.unwrap_err().to_string();
        assert!(e.contains(says), "{e} (wanted {says})");
    }
}

#[tokio::test]
async fn unnegotiated_actions_and_bad_negotiation_fail() {
    let (addr, _) = milter(|code, _| match code {
        b'O' => optneg(action::ADDHDRS, 0),
        b'E' => Act::Send(pkt(b'+', b"<x@example.com>\0")),
        _ => Act::Send(pkt(b'c', b"")),
    })
    .await;
    let e = run(&addr).await.unwrap_err().to_string();
    assert!(
        e.contains("SMFIR_ADDRCPT without having negotiated it"),
        "{e}"
    );

    let (addr, _) = milter(|code, _| match code {
        b'O' => Act::Send(pkt(b'O', &wire::optneg(7, 0, 0))),
        _ => Act::Send(pkt(b'c', b"")),
    })
    .await;
    let e = run(&addr).await.unwrap_err().to_string();
    assert!(e.contains("protocol version 7"), "{e}");

    let (addr, _) = milter(|_, _| Act::Send(pkt(b'c', b""))).await;
    let e = run(&addr).await.unwrap_err().to_string();
    assert!(
        e.contains("SMFIR_CONTINUE instead of the negotiation"),
        "{e}"
    );

    // A hang at the negotiation is bounded by the command timeout.
    let (addr, _) = milter(|_, _| Act::Hang).await;
    let e = run(&addr).await.unwrap_err().to_string();
    assert!(e.contains("during SMFIC_OPTNEG"), "{e}");
}

#[tokio::test]
async fn connect_failures() {
    // A port nothing listens on: bound, then released.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let addr = MilterAddress::parse(&format!("inet:127.0.0.1:{port}")).unwrap();
    let e = run(&addr).await.unwrap_err();
    assert!(matches!(e, MilterError::Connect(_)), "{e}");
    assert!(e.to_string().starts_with("can't connect: "), "{e}");
    let addr = MilterAddress::parse("unix:/nonexistent/milter.sock").unwrap();
    assert!(matches!(
        run(&addr).await.unwrap_err(),
        MilterError::Connect(_)
    ));
}

#[tokio::test]
async fn over_a_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.sock");
    let l = UnixListener::bind(&path).unwrap();
    let seen: Seen = Arc::default();
    let s2 = seen.clone();
    tokio::spawn(async move {
        let (s, _) = l.accept().await.unwrap();
        serve_one(s, s2, continuing(pkt(b'd', b""))).await;
    });
    let addr = MilterAddress::parse(&format!("unix:{}", path.display())).unwrap();
    assert_eq!(run(&addr).await.unwrap().verdict, Verdict::Discard);
    assert!(codes(&seen).ends_with("DE"));
}
