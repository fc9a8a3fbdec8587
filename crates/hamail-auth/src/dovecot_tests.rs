//! Unit tests of dovecot.rs against a scripted fake server on a Unix socket
//! (the real Dovecot is in tests/dovecot.rs).

use super::*;
use tokio::io::AsyncBufReadExt;
use tokio::net::UnixListener;
use tokio::task::JoinHandle;

const HANDSHAKE: &str = "VERSION\t1\t2\nMECH\tPLAIN\tplaintext\nMECH\tLOGIN\tplaintext\n\
                         SPID\t42\nCUID\t7\nCOOKIE\t0123abcd\nDONE\n";

struct Fake {
    _dir: tempfile::TempDir,
    path: PathBuf,
    listener: Option<UnixListener>,
}

fn fake() -> Fake {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("auth-client");
    let listener = UnixListener::bind(&path).unwrap();
    Fake {
        _dir: dir,
        path,
        listener: Some(listener),
    }
}

impl Fake {
    /// Accepts one client, sends `greeting` (and closes its side if that
    /// does not end with a line end), then answers each AUTH or CONT
    /// line with the next of `replies`; returns the lines the client sent.
    fn serve(&mut self, greeting: &str, replies: &[&str]) -> JoinHandle<Vec<String>> {
        let listener = self.listener.take().unwrap();
        let greeting = greeting.to_string();
        let mut replies: VecDeque<String> = replies.iter().map(|r| r.to_string()).collect();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (read, mut write) = stream.into_split();
            write.write_all(greeting.as_bytes()).await.unwrap();
            // A greeting cut short ends the server's side of the connection.
            if !greeting.ends_with('\n') {
                write.shutdown().await.unwrap();
            }
            let mut lines = BufReader::new(read).lines();
            let mut seen = Vec::new();
            while let Ok(Some(line)) = lines.next_line().await {
                if (line.starts_with("AUTH\t") || line.starts_with("CONT\t"))
                    && let Some(reply) = replies.pop_front()
                {
                    // The client may be gone already (it gave up).
                    let _ = write.write_all(reply.as_bytes()).await;
                }
                seen.push(line);
            }
            seen
        })
    }

    fn client(&self) -> DovecotAuth {
        DovecotAuth::new(&self.path).with_timeout(Duration::from_secs(5))
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[tokio::test]
async fn plain_ok_sends_the_request_dovecot_expects() {
    let mut f = fake();
    let server = f.serve(HANDSHAKE, &["OK\t1\tuser=User@Example.com\n"]);
    let verdict = f
        .client()
        .authenticate(
            Mechanism::Plain,
            "user@example.com",
            b"secret",
            ip("192.0.2.7"),
            true,
        )
        .await
        .unwrap();
    assert_eq!(
        verdict,
        DovecotVerdict::Ok {
            user: "User@Example.com".into()
        }
    );
    let seen = server.await.unwrap();
    assert_eq!(seen[0], "VERSION\t1\t2");
    assert_eq!(seen[1], format!("CPID\t{}", std::process::id()));
    assert_eq!(
        seen[2],
        format!(
            "AUTH\t1\tPLAIN\tservice=smtp\tnologin\trip=192.0.2.7\tsecured\tresp={}",
            STANDARD.encode(b"\0user@example.com\0secret")
        )
    );
    assert_eq!(seen.len(), 3);
}

#[tokio::test]
async fn login_answers_two_challenges() {
    let mut f = fake();
    let server = f.serve(
        HANDSHAKE,
        &[
            "CONT\t1\tVXNlcm5hbWU6\n",
            "CONT\t1\tUGFzc3dvcmQ6\n",
            "OK\t1\n",
        ],
    );
    let verdict = f
        .client()
        .authenticate(Mechanism::Login, "u@x.org", b"pw", ip("2001:db8::1"), false)
        .await
        .unwrap();
    // No user= in the OK: the name given.
    assert_eq!(
        verdict,
        DovecotVerdict::Ok {
            user: "u@x.org".into()
        }
    );
    let seen = server.await.unwrap();
    assert_eq!(
        seen[2],
        "AUTH\t1\tLOGIN\tservice=smtp\tnologin\trip=2001:db8::1"
    );
    assert_eq!(seen[3], format!("CONT\t1\t{}", STANDARD.encode("u@x.org")));
    assert_eq!(seen[4], format!("CONT\t1\t{}", STANDARD.encode("pw")));
}

#[tokio::test]
async fn fail_and_temporary_fail() {
    let mut f = fake();
    let server = f.serve(
        HANDSHAKE,
        &["FAIL\t1\tuser=u@x.org\treason=Password\x01texpired\x01n\n"],
    );
    let verdict = f
        .client()
        .authenticate(Mechanism::Plain, "u@x.org", b"pw", ip("192.0.2.1"), true)
        .await
        .unwrap();
    assert_eq!(
        verdict,
        DovecotVerdict::Fail {
            // Unescaped, control characters shown as '?'.
            reason: Some("Password?expired?".into())
        }
    );
    server.await.unwrap();

    let mut f = fake();
    let server = f.serve(HANDSHAKE, &["FAIL\t1\ttemp\n"]);
    let verdict = f
        .client()
        .authenticate(Mechanism::Plain, "u@x.org", b"pw", ip("192.0.2.1"), true)
        .await
        .unwrap();
    assert_eq!(verdict, DovecotVerdict::TempFail { reason: None });
    server.await.unwrap();
}

#[tokio::test]
async fn nul_in_credentials_fails_without_asking() {
    let dovecot = DovecotAuth::new("/nonexistent/auth-client");
    for (mech, user, pw) in [
        (Mechanism::Plain, "u", &b"a\0b"[..]),
        (Mechanism::Login, "u\0v", b"ab"),
    ] {
        let verdict = dovecot
            .authenticate(mech, user, pw, ip("192.0.2.1"), true)
            .await
            .unwrap();
        assert!(
            matches!(verdict, DovecotVerdict::Fail { .. }),
            "{verdict:?}"
        );
    }
}

async fn protocol_error(greeting: &str, replies: &[&str]) -> String {
    let mut f = fake();
    let server = f.serve(greeting, replies);
    let err = f
        .client()
        .authenticate(Mechanism::Plain, "u@x.org", b"pw", ip("192.0.2.1"), true)
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, AuthError::DovecotProtocol { .. }), "{msg}");
    assert!(msg.contains(&f.path.display().to_string()), "{msg}");
    drop(f);
    server.abort();
    msg
}

#[tokio::test]
async fn protocol_errors_are_named() {
    assert!(
        protocol_error("VERSION\t2\t0\nDONE\n", &[])
            .await
            .contains("version 2, not 1")
    );
    assert!(
        protocol_error("HELLO\n", &[])
            .await
            .contains("expected VERSION")
    );
    assert!(
        protocol_error("VERSION\t1\t2\nMECH\tLOGIN\nDONE\n", &[])
            .await
            .contains("does not offer PLAIN (offers LOGIN)")
    );
    assert!(
        protocol_error(HANDSHAKE, &["OK\t2\tuser=x\n"])
            .await
            .contains("request id '2'")
    );
    assert!(
        protocol_error(HANDSHAKE, &["CONT\t1\t\n"])
            .await
            .contains("CONT challenge PLAIN has no answer")
    );
    assert!(
        protocol_error(HANDSHAKE, &["BOGUS\t1\n"])
            .await
            .contains("unexpected reply 'BOGUS'")
    );
    assert!(
        protocol_error(HANDSHAKE, &["OK\n"])
            .await
            .contains("unexpected line 'OK'")
    );
    let long = format!("VERSION\t1\t2\nMECH\t{}\n", "A".repeat(20_000));
    assert!(
        protocol_error(&long, &[])
            .await
            .contains("longer than 16386")
    );
    // Closed mid-handshake.
    assert!(
        protocol_error("VERSION\t1\t2\nMECH\tPLAIN", &[])
            .await
            .contains("closed the connection")
    );
    let endless = "VERSION\t1\t2\n".to_string() + &"SPID\t1\n".repeat(300);
    assert!(
        protocol_error(&endless, &[])
            .await
            .contains("no DONE within 256")
    );
}

#[tokio::test]
async fn silence_times_out_and_a_missing_socket_is_an_io_error() {
    let mut f = fake();
    // Handshake, then no answer to AUTH.
    let server = f.serve(HANDSHAKE, &[]);
    let err = f
        .client()
        .with_timeout(Duration::from_millis(300))
        .authenticate(Mechanism::Plain, "u@x.org", b"pw", ip("192.0.2.1"), true)
        .await
        .unwrap_err();
    assert!(matches!(err, AuthError::DovecotTimeout { .. }), "{err}");
    server.abort();

    let err = DovecotAuth::new("/nonexistent/auth-client")
        .authenticate(Mechanism::Plain, "u", b"p", ip("192.0.2.1"), true)
        .await
        .unwrap_err();
    assert!(matches!(err, AuthError::DovecotIo { .. }), "{err}");
    assert!(
        err.to_string()
            .starts_with("Dovecot auth socket /nonexistent/auth-client: ")
    );
}

#[test]
fn tab_escaping_round_trips() {
    let raw = "a\tb\nc\rd\0e\x01f";
    let escaped = tab_escape(raw);
    assert_eq!(escaped, "a\x01tb\x01nc\x01rd\x010e\x011f");
    assert!(!escaped.contains(['\t', '\n', '\r', '\0']));
    assert_eq!(tab_unescape(&escaped), raw);
    assert_eq!(tab_unescape("x\x01ly\x01q\x01"), "x\nyq");
    assert_eq!(tab_escape("192.0.2.1"), "192.0.2.1");
}
